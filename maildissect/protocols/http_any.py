"""The dissector of an HTTP connection: HTTP/1.x or HTTP/2, told apart by its first bytes.

This is what the registry names for ``http`` (maildissect.protocols.DISSECTORS):
it holds the first bytes (:class:`~.sniff.Sniffer`) until they decide, then
hands the connection to :class:`~.http.HttpDissector` or
:class:`~.http2.Http2Dissector`.
"""

from __future__ import annotations

from .base import Dissector
from .http import HttpDissector
from .http2 import PREFACE, Http2Dissector, looks_like_h2
from .sniff import Sniffer

__all__ = ["HttpAnyDissector"]


class HttpAnyDissector(Dissector):
    """HTTP/1.x or HTTP/2 on one connection, told apart by its first bytes.

    A client that opens with the HTTP/2 preface (prior knowledge, h2c, or
    ``h2`` negotiated by TLS ALPN) gets :class:`Http2Dissector`, anything else
    :class:`~maildissect.protocols.http.HttpDissector`. Until the first bytes
    decide (at most a preface's length of the client, or a frame header of a
    server that speaks first) they are held (:class:`~.sniff.Sniffer`); then the
    chosen dissector's ``feed``/``gap``/``close`` replace this object's own, so
    the choice costs nothing per segment afterwards.
    """

    protocol = "http"

    #: Bytes held before giving up on HTTP/2 and reading HTTP/1 (a safety net:
    #: the first 24 client or 9 server bytes always decide).
    MAX_HELD = 4096

    def __init__(self, session, config=None):
        super().__init__(session, config)
        self.inner: Dissector | None = None
        self._sniffer = Sniffer(_h2_verdict, len(PREFACE), self.MAX_HELD)
        if session.alpn == "h2":
            self._choose(Http2Dissector)

    def _choose(self, cls) -> list:
        inner = self.inner = cls(self.session, self.config)
        inner._seq = self._seq  # (numbered on from a proxy's commands inside a tunnel)
        self.feed, self.gap, self.close = inner.feed, inner.gap, inner.close
        out: list = []
        self._sniffer.replay(lambda side, data, ts: out.extend(inner.feed(side, data, ts)),
                             lambda side, length, ts: out.extend(inner.gap(side, length, ts)))
        return out

    def _decided(self, verdict) -> list:
        if verdict is None:
            return []
        return self._choose(Http2Dissector if verdict else HttpDissector)

    def feed(self, side: int, data: bytes, ts: float) -> list:
        if not data:
            return []
        return self._decided(self._sniffer.data(side, data, ts))

    def gap(self, side: int, length: int, ts: float) -> list:
        self._sniffer.gap(side, length, ts)
        return self._decided(self._sniffer.decide(final=True))

    def close(self, ts: float, reason: str) -> list:
        out = self._decided(self._sniffer.decide(final=True))
        return out + self.inner.close(ts, reason)


def _h2_verdict(client_first: bytes, server_first: bytes, final: bool):
    """HTTP/2 (True), HTTP/1 (False) or undecided (None) from the first bytes."""
    verdict = looks_like_h2(client_first, server_first)
    if verdict is None and final:
        return False
    return verdict
