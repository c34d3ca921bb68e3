"""Test helpers shared by the dissector tests.

``run_all_ways`` feeds a transcript to a fresh dissector whole, one byte at a
time and in random chunks, and asserts that the records are the same each way
(the chunking-invariance rule of DESIGN.md). It returns the records of the
whole feed.
"""

from __future__ import annotations

import random

from maildissect.config import Config
from maildissect.model import CLIENT, SERVER, Session
from maildissect.protocols.base import TlsStart
from maildissect.protocols.tls import SwitchedSides

C, S = CLIENT, SERVER


def new_session(protocol: str, session_id: int = 1) -> Session:
    return Session(session_id=session_id, protocol=protocol, client_ip="10.0.0.1", client_port=40000,
                   server_ip="10.0.0.2", server_port=25, start=0.0)


def feed(dissector, transcript, split=None, close=True, decrypted=False):
    """Feed ``[(side, bytes), ...]`` (or ``(side, "gap", n)``); item i gets ts=i.

    ``split(data)`` returns the chunks to feed for one item (default: whole).
    A :class:`TlsStart` the dissector returns is handled as the router does
    (maildissect.pipeline.SessionRouter): the switched sides' bytes are TLS,
    counted and not fed any more; with ``decrypted`` they are plaintext for the
    same dissector after its ``resume`` (as when a key log decrypted them).
    The event itself is not among the records returned.
    """
    out = []
    switched = SwitchedSides(dissector.session)

    def take(records, ts):
        switch = None
        for r in records:
            if isinstance(r, TlsStart):
                switch = r
            else:
                out.append(r)
        if switch is None:
            return
        if not decrypted:
            switched.switch(switch)
            return
        dissector.session.tls = True
        take(dissector.resume(ts), ts)
        for side in (CLIENT, SERVER):
            if switch.held[side]:
                take(dissector.feed(side, switch.held[side], ts), ts)

    for i, item in enumerate(transcript):
        ts = float(i)
        if len(item) == 3:
            side, _, n = item
            if not switched.sides[side]:
                take(dissector.gap(side, n, ts), ts)
            continue
        side, data = item
        for chunk in (split(data) if split else [data]):
            if not chunk:
                continue
            if switched.sides[side]:
                switched.tap(side, chunk)
            else:
                take(dissector.feed(side, chunk, ts), ts)
    if close:
        take(dissector.close(float(len(transcript)), "fin"), float(len(transcript)))
    return out


def byte_split(data):
    return [data[i:i + 1] for i in range(len(data))]


def random_splitter(seed):
    rng = random.Random(seed)

    def split(data):
        chunks, i = [], 0
        while i < len(data):
            n = rng.randint(1, 17)
            chunks.append(data[i:i + n])
            i += n
        return chunks
    return split


def run_all_ways(factory, transcript, seeds=(1, 2, 3), config=None, protocol=None, decrypted=False):
    """Feed ``transcript`` whole, byte by byte and randomly chunked; assert equal records.

    ``factory(session, config)`` builds a dissector (usually the class itself).
    Returns ``(records, session)`` from the whole feed. ``decrypted``: see :func:`feed`.
    """
    config = config or Config()
    proto = protocol or getattr(factory, "protocol", "x")
    sess = new_session(proto)
    whole = feed(factory(sess, config), transcript, decrypted=decrypted)
    splitters = [byte_split] + [random_splitter(s) for s in seeds]
    for split in splitters:
        other_sess = new_session(proto)
        other = feed(factory(other_sess, config), transcript, split, decrypted=decrypted)
        assert other == whole, f"records differ when split by {getattr(split, '__name__', split)}"
        assert other_sess == sess, "session fields differ with chunking"
    return whole, sess


def of_type(records, cls):
    return [r for r in records if isinstance(r, cls)]
