"""The skeleton the line protocols share (SMTP, IMAP, POP3), sans-I/O.

Each direction of a connection is a :class:`Direction`: its bytes awaiting
parsing (a bounded :class:`~.base.StreamBuffer`), its mode, and whether it is
resynchronising after a gap. :class:`LineDissector` owns both directions and
the drain loop; a protocol subclass supplies

- ``client_line(line, ts, out)`` and ``server_line(line, ts, out)``: one
  complete line (terminator included) of each side;
- ``is_sync_line(side, line)``: after a gap, the first line the parser may
  start from again (a well-formed command or reply);
- ``bulk(d, data, ts, out) -> rest``: the readers of byte-counted or
  terminator-delimited bulk (SMTP DATA and BDAT, IMAP literals, POP3
  multi-line replies), which take bytes straight from the segment while the
  direction is in ``BULK`` mode and return what follows the bulk;
- ``overlong(d, ts, out)``, ``bulk_gap(d, length, ts, out)``, ``lost_sync(d,
  ts, out)``, ``hold_overflow(ts, out)``, ``restart(ts, out)`` and
  ``give_up(entry, ts, out)`` where the protocol's rules differ.

Modes of a direction: ``LINE`` (lines to the subclass), ``BULK`` (bytes to its
bulk reader), ``HOLD`` (the client waits for the verdict on STARTTLS, STLS or
COMPRESS; its bytes are kept, not parsed), ``TLS`` (switched: the router's
from here, see :class:`~.base.TlsStart`) and ``DEAD`` (no longer parsed).

Commands awaiting their reply wait in one queue, ``pending``, bounded by
``limits.max_pending_commands``: past it the oldest is given up (emitted
without reply) and the anomaly ``too_many_pending_commands`` is reported once
until the queue empties.

Nothing here catches exceptions: a bug in a dissector reaches the router,
which records ``dissector_error`` (maildissect.pipeline) and stops that one
session; peer input never raises.
"""

from __future__ import annotations

from collections import deque

from ..model import CLIENT, SERVER
from .base import OVERLONG, Dissector, StreamBuffer, TlsStart

__all__ = ["LineDissector", "Direction", "LINE", "BULK", "HOLD", "TLS", "DEAD", "ANOMALIES"]

ANOMALIES = {
    "too_many_pending_commands": "more SMTP, IMAP or POP3 commands awaiting a reply than limits.max_pending_commands: "
                                 "the oldest is given up, emitted without reply; reported once until the queue empties",
}

LINE, BULK, HOLD, TLS, DEAD = range(5)


class Direction:
    """Parsing state of one direction: buffer, mode, resynchronisation."""

    __slots__ = ("side", "buf", "mode", "resync", "skipped", "before_tls")

    def __init__(self, side: int, max_line: int):
        self.side = side
        self.buf = StreamBuffer(max_line)
        self.mode = LINE
        self.resync = False  # after a gap: lines are skipped until is_sync_line()
        self.skipped = 0  # bytes skipped while resynchronising
        self.before_tls = LINE  # the mode to go back to if decrypted plaintext follows a switch


class LineDissector(Dissector):
    """Base of the line protocols (see the module docstring)."""

    #: the class of the two directions (a subclass of Direction may add its own state)
    direction_class = Direction
    #: anomaly naming the bytes skipped to resynchronise (None: skipped silently)
    resync_anomaly: str | None = None
    #: anomaly for plaintext the client sent after STARTTLS before the go-ahead (None: not reported)
    pipelined_anomaly: str | None = None
    pipelined_detail = "{count} bytes"

    def __init__(self, session, config=None):
        super().__init__(session, config)
        max_line = self.limits.max_line
        self.dirs = (self.direction_class(CLIENT, max_line), self.direction_class(SERVER, max_line))
        self.pending: deque = deque()
        self.pending_overflow = False

    # -- the dissector interface ----------------------------------------------------
    def feed(self, side: int, data: bytes, ts: float) -> list:
        out: list = []
        if data:
            self.take(self.dirs[side], data, ts, out)
        return out

    def gap(self, side: int, length: int, ts: float) -> list:
        out: list = []
        self.session.complete = False
        self.lose(self.dirs[side], length, ts, out)
        return out

    # -- bytes in ----------------------------------------------------------------------
    def take(self, d: Direction, data: bytes, ts: float, out: list) -> None:
        """Bytes of ``d`` in order: bulk straight from the segment, the rest through the buffer."""
        while data:
            mode = d.mode
            if mode == BULK and not len(d.buf):
                data = self.bulk(d, data, ts, out)
                continue
            if mode >= TLS:  # the router's after a TlsStart, or no longer parsed
                return
            d.buf.append(data)
            self.drain(d, ts, out)
            return

    def drain(self, d: Direction, ts: float, out: list) -> None:
        """Parse what the buffer of ``d`` holds, as far as its mode allows."""
        buf = d.buf
        side = d.side
        while True:
            mode = d.mode
            if mode == LINE:
                line = buf.readline()
                if line is None:
                    return
                if line is OVERLONG:
                    self.overlong(d, ts, out)
                    continue
                if d.resync:
                    if not self.is_sync_line(side, line):
                        d.skipped += len(line)
                        continue
                    self.synced(d, ts, out)
                if side == CLIENT:
                    self.client_line(line, ts, out)
                else:
                    self.server_line(line, ts, out)
            elif mode == BULK:
                if not len(buf):
                    return
                rest = self.bulk(d, buf.read_all(), ts, out)
                if rest:
                    buf.append(rest)
            elif mode == HOLD:
                if len(buf) > self.limits.max_line:
                    # the client talked on without a verdict: the subclass decides
                    self.hold_overflow(ts, out)
                    continue
                return
            else:  # TLS, DEAD
                buf.clear()
                return

    # -- gaps ----------------------------------------------------------------------------
    def lose(self, d: Direction, length: int, ts: float, out: list) -> None:
        """``length`` bytes of ``d`` were never captured."""
        mode = d.mode
        if mode >= TLS:
            return
        if mode == HOLD:
            d.buf.clear()
            return
        if mode == BULK and self.bulk_gap(d, length, ts, out):
            return  # a byte count or terminator keeps the framing
        d.buf.clear()
        self.resynchronise(d, ts, out)

    def resynchronise(self, d: Direction, ts: float, out: list) -> None:
        """Skip ``d``'s lines until the next one :meth:`is_sync_line` accepts."""
        if d.mode != DEAD:
            d.mode = LINE
        d.resync = True
        d.skipped = 0
        self.lost_sync(d, ts, out)

    def synced(self, d: Direction, ts: float, out: list) -> None:
        """``d`` found a line to start from again: say how much was skipped."""
        d.resync = False
        if d.skipped:
            if self.resync_anomaly is not None:
                out.append(self.anomaly(ts, d.side, self.resync_anomaly, f"skipped {d.skipped} bytes"))
            d.skipped = 0

    # -- the pending-command queue ----------------------------------------------------------
    def push(self, entry, ts: float, out: list) -> None:
        """Queue a command awaiting its reply; past the limit the oldest is given up."""
        pending = self.pending
        if not pending:
            self.pending_overflow = False
        if len(pending) >= self.limits.max_pending_commands:
            if not self.pending_overflow:
                self.pending_overflow = True
                out.append(self.anomaly(ts, CLIENT, "too_many_pending_commands",
                                        f"over {self.limits.max_pending_commands} commands awaiting a reply"))
            self.give_up(pending.popleft(), ts, out)
        pending.append(entry)

    # -- STARTTLS: hold, then switch ------------------------------------------------------
    def hold(self) -> None:
        """The client waits for the server's verdict (STARTTLS, STLS, COMPRESS): keep its bytes."""
        self.dirs[CLIENT].mode = HOLD

    def release(self, ts: float, out: list) -> None:
        """The verdict was no: the client's held bytes are commands after all."""
        c = self.dirs[CLIENT]
        if c.mode == HOLD:
            c.mode = LINE
            self.drain(c, ts, out)

    def start_tls(self, ts: float, out: list, sides=(CLIENT, SERVER), assumed: bool = False) -> None:
        """TLS starts on ``sides``: return the :class:`TlsStart` event with the bytes each
        side had buffered past the switch; nothing more of them is parsed here.

        ``assumed``: the client talked on past ``max_line`` bytes without a verdict.
        """
        held = [b"", b""]
        for side in sides:
            d = self.dirs[side]
            held[side] = d.buf.read_all()
            d.buf.clear()
            d.before_tls = LINE if d.mode == HOLD else d.mode
            d.mode = TLS
        first = held[CLIENT]
        if self.pipelined_anomaly is not None and first and first[:1] != b"\x16":
            # an assumed switch happens once max_line bytes are held; how many more the
            # last chunk brought depends on the segmentation, so it is not reported
            count = f"over {self.limits.max_line}" if assumed else str(len(first))
            out.append(self.anomaly(ts, CLIENT, self.pipelined_anomaly, self.pipelined_detail.format(count=count)))
        out.append(TlsStart(ts, tuple(sides), (held[CLIENT], held[SERVER])))

    def resume(self, ts: float) -> list:
        """Decrypted plaintext follows the switch: parse on, from the state a fresh TLS
        session starts in (:meth:`restart`)."""
        for d in self.dirs:
            if d.mode == TLS:
                d.mode = d.before_tls
        out: list = []
        self.restart(ts, out)
        return out

    # -- what a protocol supplies --------------------------------------------------------------
    def client_line(self, line: bytes, ts: float, out: list) -> None:
        raise NotImplementedError

    def server_line(self, line: bytes, ts: float, out: list) -> None:
        raise NotImplementedError

    def is_sync_line(self, side: int, line: bytes) -> bool:
        """After a gap: may parsing start again at ``line``?"""
        raise NotImplementedError

    def bulk(self, d: Direction, data: bytes, ts: float, out: list) -> bytes:
        """Bulk bytes of ``d``; returns what follows the bulk (after switching the mode back)."""
        raise NotImplementedError

    def overlong(self, d: Direction, ts: float, out: list) -> None:
        """A line of ``d`` passed ``max_line`` (the buffer skips the rest of it)."""

    def bulk_gap(self, d: Direction, length: int, ts: float, out: list) -> bool:
        """A gap inside bulk: True when the framing holds (no resynchronisation)."""
        return False

    def lost_sync(self, d: Direction, ts: float, out: list) -> None:
        """A gap made ``d`` resynchronise: forget what depended on the lost bytes."""

    def hold_overflow(self, ts: float, out: list) -> None:
        """The client sent more than ``max_line`` bytes while held."""
        self.start_tls(ts, out, assumed=True)

    def restart(self, ts: float, out: list) -> None:
        """The protocol's state at the start of decrypted plaintext after a switch."""

    def give_up(self, entry, ts: float, out: list) -> None:
        """A pending command pushed out of the queue: emit it without reply."""
