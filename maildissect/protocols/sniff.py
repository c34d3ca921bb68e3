"""Sniff, then replay: hold a stream's first events until its first bytes say what it is.

Three places need this: the router choosing a connection's protocol by its
first bytes (maildissect.pipeline), the router choosing the protocol inside an
implicit-TLS connection a key log decrypted (by its first plaintext), and the
HTTP front end telling HTTP/1 from HTTP/2 (:mod:`.http_any`). Each gives a
test of the first bytes of both sides; :class:`Sniffer` holds the data and gap
events in arrival order, bounded, and hands them back once the test decides, so
that the chosen consumer sees the stream exactly as if it had been there from
the first byte.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["Sniffer"]

#: held event kinds
DATA, GAP = 0, 1


class Sniffer:
    """The first events of a stream, held until ``test`` decides.

    ``test(client_first, server_first, final)`` returns None while undecided,
    else a verdict (which may be falsy: "" for "no protocol", False for "not
    HTTP/2"); with ``final`` it must decide. ``head`` first bytes of each side
    are kept for the test; once more than ``limit`` data bytes are held the test
    is asked with ``final=True``.
    """

    __slots__ = ("test", "head", "limit", "first", "events", "held")

    def __init__(self, test: Callable, head: int, limit: int):
        self.test = test
        self.head = head
        self.limit = limit
        self.first = [b"", b""]
        self.events: list[tuple] = []
        self.held = 0  # data bytes held

    def data(self, side: int, data: bytes, ts: float):
        """Hold ``data``; the verdict if it is now decided, else None."""
        self.events.append((DATA, side, data, ts))
        self.held += len(data)
        first = self.first[side]
        if len(first) < self.head:
            self.first[side] = first + data[: self.head - len(first)]
        return self.decide(self.held > self.limit)

    def gap(self, side: int, length: int, ts: float) -> None:
        """Hold a gap (the test is not asked: a gap says nothing about the protocol)."""
        self.events.append((GAP, side, length, ts))

    def decide(self, final: bool = False):
        """The verdict on the bytes seen so far (None while undecided and not ``final``)."""
        return self.test(self.first[0], self.first[1], final)

    def replay(self, on_data: Callable, on_gap: Callable) -> None:
        """Hand the held events, in order, to ``on_data(side, data, ts)`` and
        ``on_gap(side, length, ts)``; nothing is held afterwards."""
        events, self.events = self.events, []
        self.first = [b"", b""]
        self.held = 0
        for kind, side, value, ts in events:
            if kind == DATA:
                on_data(side, value, ts)
            else:
                on_gap(side, value, ts)
