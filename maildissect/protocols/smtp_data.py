"""The bytes of one SMTP message: what follows DATA up to its CRLF.CRLF, and the
store both DATA and BDAT write into (bounded by ``max_message_size``).

:class:`DataReader` is the bulk reader of :class:`~.smtp.SmtpDissector` for
DATA: it scans the bytes in bulk for the terminator across any split,
dot-unstuffs them (RFC 5321 4.5.2), notices a '.' line ended by a bare LF
(``smtp_bare_lf_dot``, the SMTP smuggling pattern) and keeps the first bytes
as sent, so that a DATA the server refuses can be read again as commands.
"""

from __future__ import annotations

import hashlib

__all__ = ["Body", "DataReader"]


class Body:
    """The bytes of one message as they arrive, bounded by max_message_size.

    Past the limit the bytes are no longer kept, only hashed, so that size and
    sha256 still describe the whole message.
    """

    __slots__ = ("chunks", "kept", "size", "limit", "hasher", "missing", "terminated")

    def __init__(self, limit: int):
        self.chunks: list[bytes] = []
        self.kept = 0
        self.size = 0
        self.limit = limit
        self.hasher = None  # sha256 of everything, once past the limit
        self.missing = 0  # bytes lost in gaps
        self.terminated = False  # CRLF.CRLF or the LAST chunk seen

    def add(self, data: bytes) -> bool:
        """Append; True when this call crossed the size limit."""
        self.size += len(data)
        if self.hasher is not None:
            self.hasher.update(data)
            return False
        if self.kept + len(data) <= self.limit:
            self.chunks.append(data)
            self.kept += len(data)
            return False
        hasher = hashlib.sha256()
        for chunk in self.chunks:
            hasher.update(chunk)
        hasher.update(data)
        self.hasher = hasher
        room = self.limit - self.kept
        if room > 0:
            self.chunks.append(data[:room])
            self.kept = self.limit
        return True


class DataReader:
    """The bytes after one DATA command, into ``body``, up to CRLF.CRLF.

    ``note(ts, out, name, detail)`` records an anomaly (the dissector's).
    """

    __slots__ = ("body", "note", "hold", "virt", "ctx", "bare_noted", "wire_head", "wire_len", "wire",
                 "max_line")

    def __init__(self, body: Body, max_line: int, note):
        self.body = body
        self.note = note
        self.hold = b"\r\n"  # last wire bytes, not yet committed (a CRLF.CRLF may straddle)
        self.virt = 2  # leading bytes of hold that are the DATA line's own CRLF (".\r\n" at once: empty)
        self.ctx = b"\r\n"  # last 2 committed wire bytes (dot-unstuffing context)
        self.bare_noted = False
        self.wire_head: list[bytes] | None = []  # first wire bytes, to re-read if DATA is refused
        self.wire_len = 0
        self.wire = 0  # bytes of this DATA as sent
        self.max_line = max_line

    def feed(self, data: bytes, ts: float, out: list) -> bytes | None:
        """Bytes of the data; None while it goes on, else what follows its CRLF.CRLF."""
        if self.wire_head is not None:
            if self.wire_len + len(data) <= self.max_line:
                self.wire_head.append(data)
                self.wire_len += len(data)
            else:
                self.wire_head = None
        self.wire += len(data)
        buf = self.hold + data if self.hold else data
        virt = self.virt
        ctx = self.ctx
        if b"\n." not in buf and b"\n." not in ctx + buf[:2]:
            # the usual chunk: no line starts with a dot, so no end, no
            # stuffing and no bare-LF dot can be in it (they all contain "\n.")
            n = len(buf)
            cut = n - 4 if n > 4 else 0
            if cut > virt:
                seg = buf[virt:cut]
                self.ctx = seg[-2:] if len(seg) >= 2 else (ctx + seg)[-2:]
                if self.body.add(seg):
                    self._too_large(ts, out)
            self.virt = virt - cut if virt > cut else 0
            self.hold = buf[cut:]
            return None
        end = buf.find(b"\r\n.\r\n")
        if not self.bare_noted:
            virt = self._check_bare_lf(buf, len(buf) if end < 0 else end, virt, ts, out)
        if end >= 0:
            if end + 2 > virt:
                self._commit(buf[virt:end + 2], ts, out)
            self.hold = b""
            self.virt = 0
            return buf[end + 5:]
        cut = len(buf) - 4 if len(buf) > 4 else 0
        if cut > virt:
            self._commit(buf[virt:cut], ts, out)
        self.virt = virt - cut if virt > cut else 0
        self.hold = buf[cut:]
        return None

    def flush(self, ts: float, out: list) -> None:
        """Store the bytes held back (the data ends without its terminator, or a gap)."""
        if len(self.hold) > self.virt:
            self._commit(self.hold[self.virt:], ts, out)
        self.hold = b""
        self.virt = 0

    def lost(self, length: int, ts: float, out: list) -> None:
        """``length`` bytes of the data were never captured."""
        self.flush(ts, out)
        self.ctx = b""  # no unstuffing across the hole
        self.body.missing += length
        self.wire_head = None

    def sent(self) -> bytes | None:
        """The bytes as sent so far, or None when they were more than max_line (or a gap cut them)."""
        return None if self.wire_head is None else b"".join(self.wire_head)

    def _too_large(self, ts: float, out: list) -> None:
        self.note(ts, out, "smtp_message_too_large", f"over {self.body.limit} bytes: kept for hashing only")

    def _check_bare_lf(self, buf: bytes, last: int, virt: int, ts: float, out: list) -> int:
        """Note a '.' line ended by a bare LF (the first one of the message)
        starting at or before ``last`` (the end of data, if found).

        The bytes before it are committed first, so that a size limit they
        cross is reported before it whatever the chunking; returns how many
        bytes of ``buf`` are now committed (``virt`` if none were).
        """
        stop = last + 5
        a = buf.find(b"\n.\n", 0, stop)
        # "\n.\r\n" whose LF has no CR before it (with one, it would be the end)
        b = buf.find(b"\n.\r\n", 1, stop)
        hits = [i for i in (a, b) if 0 <= i <= last]
        if hits:
            i = min(hits)
            if i > virt:
                self._commit(buf[virt:i], ts, out)
                virt = i
            self.bare_noted = True
            # offset in the data as sent, independent of how it was split
            offset = self.wire - len(buf) + i + 1
            variant = "\\n.\\n" if i == a else "\\n.\\r\\n"
            self.note(ts, out, "smtp_bare_lf_dot", f"{variant} at byte {offset} of the data")
        return virt

    def _commit(self, seg: bytes, ts: float, out: list) -> None:
        """Dot-unstuff wire bytes (with the last committed bytes as context) and store them.

        RFC 5321 4.5.2: the first character of a line that starts with a dot
        is removed, doubled or not (as Postfix and Zeek do).
        """
        ctx = self.ctx
        joined = ctx + seg
        if b"\n." in joined:
            # with 2 bytes of context the removed dot (3rd byte of a match) is
            # always in seg: a match inside ctx was handled with the bytes before
            seg = joined.replace(b"\r\n.", b"\r\n")[len(ctx):]
        self.ctx = joined[-2:]
        if self.body.add(seg):
            self._too_large(ts, out)
