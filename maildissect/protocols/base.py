"""The sans-I/O dissector interface and the bounded buffer dissectors read from.

A dissector is a state machine over one TCP connection. The reassembler feeds it
ordered bytes per side, tells it about bytes it will never see (gaps) and about
the end of the connection; it returns records (:mod:`maildissect.model`). It
never touches sockets, files or clocks, accepts data split at any byte, and an
exception escaping it on peer input is a bug: bad input becomes an Anomaly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..anomalies import make as make_anomaly
from ..config import Config
from ..model import CLIENT, SERVER, SIDE_NAMES, Anomaly, Message, Session

__all__ = ["Dissector", "StreamBuffer", "OVERLONG", "CLIENT", "SERVER", "SIDE_NAMES", "TlsStart", "TunnelStart",
           "fill_message", "place_entities", "TRUNCATION_ANOMALIES"]


@dataclass(eq=True)
class TlsStart:
    """Event a dissector returns among its records: TLS starts here (STARTTLS or STLS accepted).

    From this point the dissector parses nothing more of ``sides`` (both, or the
    client alone when its first bytes after STARTTLS were a TLS record and no
    verdict came). ``held`` are the bytes of each side it had received past the
    switch. What those and the following bytes are is the router's decision
    (maildissect.pipeline): TLS metadata, decrypted plaintext handed back to the
    same dissector after :meth:`Dissector.resume`, or plaintext after a switch
    that did not happen. (How many bytes were held depends on how the stream was
    segmented, so two events are equal whatever they held.)
    """

    ts: float
    sides: tuple = (CLIENT, SERVER)
    held: tuple = field(default=(b"", b""), compare=False)


@dataclass(eq=True)
class TunnelStart:
    """Event a dissector returns among its records: a tunnel is up here (an HTTP CONNECT
    answered 2xx, a SOCKS request granted).

    ``kind`` is ``http-connect``, ``socks4`` or ``socks5``; ``target`` the
    ``host:port`` the client asked for, as it asked (None when the request was not
    seen). From this point the dissector parses nothing more; ``held`` are the bytes of
    each side it had received past the tunnel's start. The router (maildissect.pipeline)
    detects the protocol inside and dissects it as the session's own.
    """

    ts: float
    kind: str
    target: str | None
    held: tuple = field(default=(b"", b""), compare=False)


class Dissector(ABC):
    """Base class: subclasses override feed/gap/close.

    ``session`` is the Session record this dissector fills in (helo, auth,
    tls, ...); ``config`` carries limits and options.
    """

    protocol = ""

    def __init__(self, session: Session, config: Config | None = None):
        self.session = session
        self.config = config or Config()
        self.limits = self.config.limits
        self._seq = 0  # the last command's Command.seq in this session

    def next_seq(self) -> int:
        """The sequence number of the next client command of this session (1, 2...;
        the server greeting is 0). Downstream code joins records on it, never on times."""
        self._seq += 1
        return self._seq

    @abstractmethod
    def feed(self, side: int, data: bytes, ts: float) -> list:
        """Bytes ``data`` arrived in order from ``side`` (CLIENT or SERVER)."""

    @abstractmethod
    def gap(self, side: int, length: int, ts: float) -> list:
        """``length`` bytes from ``side`` were never captured."""

    @abstractmethod
    def close(self, ts: float, reason: str) -> list:
        """The connection ended (``fin``, ``rst``, ``timeout`` or ``eof``)."""

    def resume(self, ts: float) -> list:
        """The bytes after this dissector's :class:`TlsStart` are plaintext after all (a key
        log decrypted them): parse on from the state a fresh TLS session starts in."""
        return []

    def anomaly(self, ts: float | None, side: int | None, name: str, detail: str = "",
                secret_at: int | None = None) -> Anomaly:
        """A named anomaly for this session (raises in strict mode).

        ``secret_at``: where ``detail`` starts quoting secret bytes (see :class:`Anomaly`).
        """
        self.session.anomalies += 1
        side_name = SIDE_NAMES[side] if side is not None else ""
        return make_anomaly(ts, self.session.session_id, side_name, name, detail, self.config.strict, secret_at)


#: MIME anomalies that only say a message was cut short; for a message already
#: marked incomplete (a header-only, partial or truncated fetch) they repeat
#: what ``complete=False`` says and are dropped.
TRUNCATION_ANOMALIES = frozenset({"mime_missing_closing_boundary", "mime_boundary_not_found",
                                  "mime_missing_header_separator"})


def fill_message(msg: Message, raw: bytes, config: Config) -> list:
    """Fill ``msg`` from ``raw`` with the shared MIME parser; returns its anomalies
    (without those that only repeat that an incomplete message is incomplete)."""
    from .. import mime  # imported on use: framing alone (detection, flows) does not need it
    found = mime.fill_message(msg, raw, config)
    if not msg.complete:
        found = [a for a in found if a.name not in TRUNCATION_ANOMALIES]
    return found


def place_entities(msg: Message, path: str, header: bytes, text: bool = False) -> None:
    """The entities of a section fetched alone, at their paths in the whole message
    (:func:`maildissect.mime.place_entities`)."""
    from .. import mime
    mime.place_entities(msg, path, header, text)


#: Returned by :meth:`StreamBuffer.readline` when a line exceeded the limit.
OVERLONG = object()


class StreamBuffer:
    """Bytes of one direction awaiting parsing, with bounded line extraction.

    ``readline`` returns a complete line (terminator included), ``None`` when no
    full line is buffered yet, or :data:`OVERLONG` once when the pending line
    passed ``max_line``; the rest of that line is then discarded up to its LF,
    so memory never exceeds ``max_line`` plus one feed. Modelled on h11's
    receive buffer: a read offset instead of re-slicing on every line, and a
    remembered search start so a long line is scanned once.
    """

    __slots__ = ("_buf", "_pos", "_scan", "max_line", "discarding", "discarded", "overlong_head")

    def __init__(self, max_line: int = 65536):
        self._buf = bytearray()
        self._pos = 0
        self._scan = 0
        self.max_line = max_line
        self.discarding = False  # inside an over-long line
        self.discarded = 0  # bytes dropped from over-long lines, in total
        # the first bytes of the last line reported OVERLONG (for the anomaly's detail);
        # taken at the line's start, so they do not depend on how the bytes were chunked
        self.overlong_head = b""

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def __bytes__(self) -> bytes:
        return bytes(self._buf[self._pos:])

    def append(self, data: bytes) -> None:
        if self._pos and self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0
        self._buf += data

    def clear(self) -> None:
        self._buf.clear()
        self._pos = self._scan = 0
        self.discarding = False

    def readline(self):
        buf = self._buf
        start = max(self._scan, self._pos)
        i = buf.find(b"\n", start)
        if i < 0:
            pending = len(buf) - self._pos
            if self.discarding:
                self.discarded += pending
                self._pos = self._scan = len(buf)
                return None
            if pending > self.max_line:
                self.overlong_head = bytes(buf[self._pos:self._pos + min(64, self.max_line + 1)])
                self.discarding = True
                self.discarded += pending
                self._pos = self._scan = len(buf)
                return OVERLONG
            self._scan = len(buf)
            return None
        end = i + 1
        if self.discarding:
            self.discarded += end - self._pos
            self._pos = self._scan = end
            self.discarding = False
            return self.readline()
        if end - self._pos > self.max_line:
            self.overlong_head = bytes(buf[self._pos:self._pos + min(64, self.max_line + 1)])
            self.discarded += end - self._pos
            self._pos = self._scan = end
            return OVERLONG
        line = bytes(buf[self._pos:end])
        self._pos = self._scan = end
        return line

    def read(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes (fewer when fewer are buffered)."""
        end = min(self._pos + n, len(self._buf))
        data = bytes(self._buf[self._pos:end])
        self._pos = end
        if self._scan < end:
            self._scan = end
        return data

    def read_all(self) -> bytes:
        return self.read(len(self))

    def find(self, sub: bytes, start: int = 0) -> int:
        """Offset of ``sub`` relative to the unread data, or -1."""
        i = self._buf.find(sub, self._pos + start)
        return -1 if i < 0 else i - self._pos

    def peek(self, n: int) -> bytes:
        return bytes(self._buf[self._pos:self._pos + n])

    def skip(self, n: int) -> None:
        self._pos = min(self._pos + n, len(self._buf))
        if self._scan < self._pos:
            self._scan = self._pos
