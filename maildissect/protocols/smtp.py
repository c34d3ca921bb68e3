"""SMTP dissector (RFC 5321 and its extensions), sans-I/O, both sides.

Fed the client and server byte streams of one connection, it returns
:class:`~maildissect.model.Command` records (one per command and its reply; the
server greeting is a Command with ``command=""``; the end of DATA is
``command="."``; each client line of a SASL exchange is ``AUTH-RESPONSE``),
:class:`~maildissect.model.Credential` records for AUTH,
:class:`~maildissect.model.Message` records (direction ``sent``) with the
envelope and everything :func:`maildissect.mime.fill_message` finds in the
message, and :class:`~maildissect.model.Anomaly` records named ``smtp_*``.

How it follows the dialogue (docs/protocols/smtp.md has the full story):

* Replies are matched in order to the commands still waiting for one
  (PIPELINING), so every RCPT gets its own outcome and every command row its
  code, text and latency.
* After ``DATA`` the client's bytes are message data at once (as Zeek does),
  without waiting for the 354: a one-sided capture still yields the message.
  If the server refuses DATA instead, the bytes taken for data are read again
  as commands. Data is scanned in bulk for ``CRLF.CRLF`` across any split and
  dot-unstuffed; only ``CRLF.CRLF`` ends it (a bare-LF look-alike is the
  anomaly ``smtp_bare_lf_dot``, an SMTP smuggling attempt).
* ``BDAT n [LAST]`` takes exactly n bytes, binary or not, pipelined or not.
* A message is emitted on the final reply to its data (or at a gap or the
  connection's end when no reply comes) with the reply code, text and the
  queue id the server announced.
* ``STARTTLS`` answered by 220: the dissector returns a
  :class:`~maildissect.protocols.base.TlsStart` event and parses nothing more;
  the router counts the rest as TLS, or, when a key log decrypted it, hands
  the plaintext back after :meth:`SmtpDissector.resume` (RFC 3207: both sides
  start over from the state after the greeting).
* Gaps: a message hit by one is kept with ``complete=False`` and
  ``missing_bytes``; the client side resynchronises on the next well-formed
  command line (or on an unexpected 354), the server side on the next reply
  line. Inside a BDAT chunk the byte count keeps the stream aligned, so no
  resynchronisation is needed.

Memory is bounded by the limits ``max_line``, ``max_pending_commands``,
``max_recipients`` and ``max_message_size``; each has its anomaly.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque

from .. import mime
from ..config import Config
from ..text import wire
from ..model import CLIENT, SERVER, Command, Credential, Message, Session
from .base import OVERLONG, Dissector, StreamBuffer, TlsStart
from .sasl import SaslExchange

__all__ = ["SmtpDissector", "looks_like_smtp", "ANOMALIES"]

ANOMALIES = {
    "smtp_unknown_command": "a client command that is not an SMTP verb (still recorded as a command)",
    "smtp_line_too_long": "a command or reply line longer than max_line (skipped)",
    "smtp_too_many_pending_commands": "more than max_pending_commands commands awaiting a reply (the oldest is given up)",
    "smtp_too_many_recipients": "more than max_recipients RCPT TO in one transaction (the rest are not listed)",
    "smtp_message_too_large": "a message larger than max_message_size (hashed in full, parsed from its beginning only)",
    "smtp_bare_lf_dot": "a line '.' ended by a bare LF inside DATA ('\\n.\\n', '\\n.\\r\\n' or '\\r\\n.\\n'): an SMTP smuggling attempt, not an end of data",
    "smtp_bad_reply_line": "a server line that is not a 3-digit reply",
    "smtp_reply_code_mismatch": "a multi-line reply whose lines carry different codes",
    "smtp_reply_too_long": "a multi-line reply longer than max_line in total (the rest of its text is dropped)",
    "smtp_unmatched_reply": "a server reply with no command waiting for it",
    "smtp_reply_during_data": "the server replied while the client was still sending DATA (the message is closed there)",
    "smtp_data_unterminated": "the connection ended inside DATA, before CRLF.CRLF",
    "smtp_bdat_unterminated": "the connection ended before a BDAT chunk or its LAST chunk was complete",
    "smtp_bad_bdat": "a BDAT command without a valid chunk size",
    "smtp_bad_address": "a MAIL FROM or RCPT TO argument that is not a valid path",
    "smtp_bad_auth_response": "a SASL response that does not decode as its mechanism requires",
    "smtp_incomplete_line": "the connection ended in the middle of a command line",
}

# client modes
_CMD, _DATA, _BDAT, _HOLD, _TLS, _RESYNC = range(6)
_LINE_MODES = (_CMD, _RESYNC)

_REPLY = re.compile(rb"(\d{3})(?:([ -])(.*)|[ \t]*)", re.S)
_BDAT_ARG = re.compile(r"\s*(\d{1,20})(?:\s+(LAST))?\s*", re.I)
_BDAT_LINE = re.compile(rb"\d{1,20}(?:[ \t]+LAST)?", re.I)
#: an AUTH command up to its initial response (what follows is secret)
_AUTH_INITIAL = re.compile(rb"[ \t]*AUTH[ \t]+\S+[ \t]+", re.I)

_VERBS = frozenset(
    "HELO EHLO LHLO MAIL RCPT DATA BDAT RSET NOOP VRFY EXPN HELP QUIT STARTTLS AUTH "
    "XCLIENT XFORWARD ETRN ATRN TURN SEND SOML SAML VERB ONEX XEXCH50 X-EXPS "
    "X-ANONYMOUSTLS XUSR XSHADOW XSHADOWREQUEST".split())
_NO_ARG_VERBS = (b"DATA", b"QUIT", b"RSET", b"STARTTLS", b"TURN")
_ARG_VERBS = (b"EHLO", b"HELO", b"LHLO", b"AUTH", b"VRFY", b"EXPN", b"ETRN", b"XCLIENT", b"XFORWARD")

#: "queued as" and its cousins in final replies, tried in order on each line
_QUEUE_ID = tuple(re.compile(p, re.I) for p in (
    r"\bqueued as:?\s+([^\s,;]+)",                       # Postfix "Ok: queued as 4Q2X3", many others
    r"\bqueued with id\s+([^\s,;]+)",
    r"\bid=([^\s,;]+)",                                  # Exim "OK id=1Mugho-0003Dg-Un"
    r"\[InternalId=(\d+)",                               # Exchange
    r"^(?:\d\.\d{1,3}\.\d{1,3}\s+)?(<[^<>\s]+>|[^\s<>]+)\s+Message accepted",  # Sendmail, "<id> Message accepted"
    r"^(?:\d\.\d{1,3}\.\d{1,3}\s+)?OK\s+\d+\s+(\S+)\s+-\s+gsmtp",               # Gmail
    r"\bqp\s+(\d+)",                                     # qmail "ok 1234567890 qp 12345"
))

#: server software recognisable in a greeting
_SOFTWARE = tuple(re.compile(p) for p in (
    r"\bPostfix\b(?: \([^)]*\))?",
    r"\bExim [\d.]+\w*",
    r"\bSendmail [\w./-]*\w",
    r"\bMicrosoft ESMTP MAIL Service(?:, Version: [\d.]+)?",
    r"\bPython SMTP [\d.]+\w*",  # aiosmtpd
    r"\bSubEthaSMTP\b(?: \d[\w.]*)?",
    r"\bOpenSMTPD\b",
    r"\bHaraka(?:/[\d.]+)?",
    r"\bqmail\b",
    r"\bCourier(?:-MTA)?\b",
    r"\bMDaemon(?: [\d.]+)?",
    r"\bhMailServer\b",
    r"\bMailEnable\b",
    r"\bZimbra\b",
    r"\bCommuniGate Pro(?: [\d.]+)?",
    r"\bIceWarp(?: [\d.]+)?",
    r"\bKerio Connect(?: [\d.]+)?",
    r"\bMercury/32(?: v[\d.]+)?",
    r"\bAxigen\b",
    r"\bApache JAMES\b",
    r"\bgsmtp\b",
))

#: most SASL client responses kept per exchange (each bounded by max_line)
_MAX_SASL_LINES = 32


def _text(data: bytes) -> str:
    """Protocol bytes as text: UTF-8 (SMTPUTF8) where valid, else windows-1252."""
    return wire(data)


def _is_command_line(line: bytes) -> bool:
    """A strictly well-formed SMTP command line (used to resynchronise after a
    gap and to tell a command from a SASL response)."""
    verb, _, arg = line.partition(b" ")
    verb = verb.upper()
    if verb in _NO_ARG_VERBS:
        return not arg.strip()
    if verb == b"MAIL":
        return arg[:5].upper() == b"FROM:"
    if verb == b"RCPT":
        return arg[:3].upper() == b"TO:"
    if verb == b"BDAT":
        return _BDAT_LINE.fullmatch(arg.strip()) is not None
    if verb in _ARG_VERBS:
        return bool(arg.strip())
    return verb in (b"NOOP", b"HELP")


def _starts_with_verb(line: bytes) -> bool:
    """The line's first word is an SMTP verb (however well-formed the rest)."""
    words = line.split(None, 1)
    return bool(words) and words[0][:16].upper().decode("latin-1") in _VERBS


def _parse_path(arg: str, keyword: str) -> tuple[str | None, bool]:
    """``FROM:<a@b> SIZE=1`` -> (address without brackets, well-formed).

    Tolerates a space after the colon and a missing pair of angle brackets;
    drops an RFC 5321 source route (``<@relay:user@host>``). The null reverse
    path ``<>`` gives "".
    """
    if arg[:len(keyword)].upper() != keyword:
        return None, False
    rest = arg[len(keyword):].lstrip()
    ok = True
    if rest.startswith("<"):
        i, quoted, n = 1, False, len(rest)
        while i < n:
            ch = rest[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                quoted = not quoted
            elif ch == ">" and not quoted:
                break
            i += 1
        if i >= n:
            ok = False
        addr = rest[1:i]
    else:
        addr = rest.split(None, 1)[0] if rest.strip() else ""
        ok = bool(addr)
    if addr.startswith("@") and ":" in addr:
        addr = addr.split(":", 1)[1]
    return addr.strip(), ok


def _queue_id(lines: list[str]) -> str | None:
    for line in reversed(lines):
        for pattern in _QUEUE_ID:
            m = pattern.search(line)
            if m:
                return m.group(1)
    return None


def _server_software(banner: str) -> str | None:
    for pattern in _SOFTWARE:
        m = pattern.search(banner)
        if m:
            return m.group(0)
    return None


_GREETING = re.compile(rb"220(?:[ -]|\r?\n)")
_HELLO = re.compile(rb"(?:EHLO|HELO|LHLO)(?:[ \t]|\r?\n)", re.I)


def looks_like_smtp(client_first: bytes, server_first: bytes) -> bool:
    """Whether a connection's first bytes are SMTP.

    A ``220`` greeting answered by EHLO/HELO; when only one side has spoken,
    that side alone (a lone 220 greeting must not mention FTP, whose greeting
    is also 220).
    """
    server_ok = bool(server_first) and _GREETING.match(server_first) is not None
    if server_ok and not client_first:
        first_line = server_first.split(b"\n", 1)[0]
        return b"FTP" not in first_line.upper()
    client_ok = bool(client_first) and _HELLO.match(client_first) is not None
    if client_first and server_first:
        return server_ok and client_ok
    return client_ok


class _Body:
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


class _Txn:
    """One mail transaction: envelope, recipients' outcomes, message body."""

    __slots__ = ("mail_from", "rcpts", "rcpt_overflow", "body", "data_ts", "source", "gap",
                 "tls", "body_done", "reply", "reply_seen", "emitted", "number", "data_seq")

    def __init__(self, mail_from: str | None = None, gap: bool = False, number: int = 0):
        self.mail_from = mail_from
        self.number = number  # ordinal in the session (Command.transaction, Message.transaction)
        self.data_seq: int | None = None  # Command.seq of the DATA / first BDAT carrying the message
        self.rcpts: list[list] = []  # [address, True accepted / False refused / None no reply]
        self.rcpt_overflow = False
        self.body: _Body | None = None
        self.data_ts = 0.0
        self.source = ""
        self.gap = gap  # a gap touched the transaction
        self.tls = False
        self.body_done = False
        self.reply: tuple[str, list[str], float] | None = None
        self.reply_seen = False  # final reply received or given up on
        self.emitted = False


class _Auth:
    """One AUTH exchange."""

    __slots__ = ("exchange", "ts", "outstanding", "awaiting", "emitted", "lines", "unseen")

    def __init__(self, exchange: SaslExchange, ts: float):
        self.exchange = exchange
        self.ts = ts
        self.unseen = False  # its AUTH command was not captured: no credential to report
        self.outstanding = 0  # pending entries (AUTH, AUTH-RESPONSE) awaiting a reply
        self.awaiting = 0  # 334 challenges not yet answered by the client
        self.emitted = False
        self.lines = 0


class _Pending:
    """A client command awaiting its reply."""

    __slots__ = ("kind", "cmd", "txn", "rcpt", "auth", "last", "epoch")

    def __init__(self, kind: str, cmd: Command | None = None, txn: _Txn | None = None,
                 rcpt: list | None = None, auth: _Auth | None = None, last: bool = False):
        self.kind = kind
        self.cmd = cmd
        self.txn = txn
        self.rcpt = rcpt
        self.auth = auth
        self.last = last
        self.epoch = 0  # gaps seen before the command was sent


class SmtpDissector(Dissector):
    """SMTP state machine over one connection (see the module docstring)."""

    protocol = "smtp"

    def __init__(self, session: Session, config: Config | None = None):
        super().__init__(session, config)
        lim = self.limits
        self._cbuf = StreamBuffer(lim.max_line)
        self._sbuf = StreamBuffer(lim.max_line)
        self._cmode = _CMD
        self._server_tls = False
        self._pending: deque[_Pending] = deque([_Pending("greeting")])
        self._pending_overflow = False
        self._txn: _Txn | None = None
        self._txns = 0  # transactions begun so far
        self._auth: _Auth | None = None  # exchange whose responses the client may still send
        self._auths: list[_Auth] = []  # exchanges whose credential is not emitted yet
        self._closed = False
        self._recovering = False  # after a gap: replies without a command are expected
        self._epoch = 0  # number of gaps so far
        self._server_resync = False  # after a server gap: skip until a reply line
        self._bad_reply_noted = False
        # reply being assembled
        self._rcode: str | None = None
        self._rlines: list[str] = []
        self._rbytes = 0
        self._rtoo_long = False
        # DATA scanning
        self._data_txn: _Txn | None = None
        self._hold = b""  # last wire bytes, not yet committed (a CRLF.CRLF may straddle)
        self._virt = 0  # leading bytes of _hold that are the DATA line's own CRLF
        self._ctx = b""  # last 2 committed wire bytes (dot-unstuffing context)
        self._acked = False  # 354 seen for the current DATA
        self._bare_noted = False
        self._wire_head: list[bytes] | None = None  # first wire bytes, to re-read if DATA is refused
        self._wire_len = 0
        self._data_wire = 0  # bytes of the current DATA as sent
        # BDAT
        self._bdat_txn: _Txn | None = None
        self._bdat_left = 0
        self._bdat_last = False
        # STARTTLS: client bytes held until the reply says whether they are TLS
        self._held: list[bytes] = []
        self._held_len = 0
        self._mode_before_tls = _CMD

    # ------------------------------------------------------------------ API

    def feed(self, side: int, data: bytes, ts: float) -> list:
        """Bytes from ``side`` in order; returns the records they complete."""
        if self._closed or not data:
            return []
        if not isinstance(data, bytes):
            data = bytes(data)
        out: list = []
        if side == CLIENT:
            self._client(data, ts, out)
        else:
            self._server(data, ts, out)
        return out

    def gap(self, side: int, length: int, ts: float) -> list:
        """``length`` bytes from ``side`` were not captured."""
        if self._closed or length <= 0:
            return []
        out: list = []
        self.session.complete = False
        self._recovering = True
        self._epoch += 1
        if side == CLIENT:
            self._client_gap(length, ts, out)
        else:
            self._server_gap(ts, out)
        return out

    def close(self, ts: float, reason: str) -> list:
        """End of the connection: flush what is still open."""
        if self._closed:
            return []
        out: list = []
        # the server's last reply may lack its line end
        if not self._server_tls and len(self._sbuf) and not self._sbuf.discarding:
            rest = bytes(self._sbuf)
            self._sbuf.clear()
            if _REPLY.fullmatch(rest.rstrip(b"\r\n")):
                self._reply_line(rest, ts, out)
        if self._rcode is not None:
            self._complete_reply(ts, out)
        mode = self._cmode
        if mode == _HOLD:
            self._resolve_hold(ts, out)
            mode = self._cmode
        if mode in _LINE_MODES and len(self._cbuf) and not self._cbuf.discarding:
            rest = bytes(self._cbuf)
            self._cbuf.clear()
            if rest.strip():
                self._incomplete_line(rest, ts, out)
        while self._pending:
            self._flush(self._pending.popleft(), ts, out)
        if mode == _DATA and self._data_txn is not None:
            txn = self._data_txn
            self._commit_hold(ts, out)
            out.append(self.anomaly(ts, CLIENT, "smtp_data_unterminated", f"{txn.body.size} bytes"))
            self._data_txn = None
            txn.body_done = txn.reply_seen = True
            self._finalize(txn, ts, out)
        elif mode == _BDAT and self._bdat_txn is not None:
            txn = self._bdat_txn
            out.append(self.anomaly(ts, CLIENT, "smtp_bdat_unterminated", f"{self._bdat_left} bytes of the chunk missing"))
            txn.body_done = txn.reply_seen = True
            self._finalize(txn, ts, out)
        txn = self._txn
        if txn is not None and txn.body is not None and not txn.emitted:
            if txn.source == "BDAT" and not txn.body.terminated:
                out.append(self.anomaly(ts, CLIENT, "smtp_bdat_unterminated", "no LAST chunk"))
            txn.body_done = txn.reply_seen = True
            self._finalize(txn, ts, out)
        for auth in list(self._auths):
            self._emit_credential(auth, None, ts, out)
        self._closed = True
        return out

    def buffered(self) -> int:
        """Bytes held for parsing right now (line buffers, message bodies,
        STARTTLS hold, reply text): bounded by the limits whatever the input."""
        total = len(self._cbuf) + len(self._sbuf) + len(self._hold) + self._held_len + self._rbytes
        seen = set()
        for txn in [self._txn, self._data_txn, self._bdat_txn] + [p.txn for p in self._pending]:
            if txn is not None and txn.body is not None and id(txn) not in seen:
                seen.add(id(txn))
                total += txn.body.kept
        return total

    # ------------------------------------------------------------------ client side

    def _client(self, data: bytes, ts: float, out: list) -> None:
        while data:
            mode = self._cmode
            if mode == _TLS:
                return  # the router's: TlsStart was returned
            if mode == _HOLD:
                self._held.append(data)
                self._held_len += len(data)
                if self._held_len > self.limits.max_line:
                    self._resolve_hold(ts, out)
                return
            if mode == _DATA:
                data = self._data_bytes(data, ts, out)
                continue
            if mode == _BDAT:
                data = self._bdat_bytes(data, ts, out)
                continue
            buf = self._cbuf
            buf.append(data)
            data = b""
            while self._cmode in _LINE_MODES:
                line = buf.readline()
                if line is None:
                    break
                if line is OVERLONG:
                    self._client_overlong(buf.overlong_head, ts, out)
                    continue
                self._client_line(line, ts, out)
            if self._cmode not in _LINE_MODES and len(buf):
                data = buf.read_all()

    def _client_overlong(self, head: bytes, ts: float, out: list) -> None:
        auth = self._auth
        if auth is not None:
            # a SASL response (or what the exchange takes for one): its head is secret
            prefix = f"SASL response line over {self.limits.max_line} bytes: "
            out.append(self.anomaly(ts, CLIENT, "smtp_line_too_long", prefix + repr(_text(head[:32])),
                                    secret_at=len(prefix)))
        else:
            verb = _text(head.split(b" ", 1)[0][:32]).upper()
            out.append(self.anomaly(ts, CLIENT, "smtp_line_too_long",
                                    f"command line over {self.limits.max_line} bytes ({verb[:32]!r})"))
        if self._cmode == _RESYNC:
            return
        # the server answers it (with an error, most likely): keep the order
        if auth is not None:
            auth.outstanding += 1
            self._push(_Pending("authresp", auth=auth), ts, out)
        else:
            self._push(_Pending("other"), ts, out)

    def _client_line(self, line: bytes, ts: float, out: list) -> None:
        raw = line.rstrip(b"\r\n")
        auth = self._auth
        if auth is not None:
            # a line that is no command is a response; once the mechanism has had all it
            # needs, so is one that does not even start with an SMTP verb (SASL data, secret)
            if auth.awaiting > 0 or (not _is_command_line(raw) and (
                    not auth.exchange.done or not _starts_with_verb(raw))):
                self._auth_response(auth, raw, ts, out)
                return
            # the client moved on: no more responses belong to this exchange
            self._auth = None
            if auth.outstanding == 0:
                self._emit_credential(auth, None, ts, out)
        if self._cmode == _RESYNC:
            if not _is_command_line(raw):
                return
            self._cmode = _CMD
        self._command(raw, ts, out)

    def _command(self, raw: bytes, ts: float, out: list) -> None:
        text = _text(raw)
        parts = text.split(None, 1)
        if not parts:
            out.append(self.anomaly(ts, CLIENT, "smtp_unknown_command", "empty line"))
            self._push(_Pending("other"), ts, out)
            return
        verb = parts[0].upper()
        arg = parts[1].strip() if len(parts) > 1 else ""
        cmd = Command(self.session.session_id, "smtp", ts, verb[:64], arg, seq=self.next_seq())
        if verb in ("EHLO", "HELO", "LHLO"):
            self.session.helo = arg or None
            self._end_txn(ts, out)
            self._push(_Pending("ehlo" if verb != "HELO" else "helo", cmd), ts, out)
        elif verb == "MAIL":
            addr, ok = _parse_path(arg, "FROM:")
            if not ok:
                out.append(self.anomaly(ts, CLIENT, "smtp_bad_address", f"MAIL {arg[:80]}"))
            self._end_txn(ts, out)
            self._txn = self._new_txn(addr)
            self._push(_Pending("mail", cmd, self._txn), ts, out)
        elif verb == "RCPT":
            addr, ok = _parse_path(arg, "TO:")
            if not ok:
                out.append(self.anomaly(ts, CLIENT, "smtp_bad_address", f"RCPT {arg[:80]}"))
            txn = self._current_txn()
            rcpt = None
            if addr is not None:
                if len(txn.rcpts) < self.limits.max_recipients:
                    rcpt = [addr, None]
                    txn.rcpts.append(rcpt)
                elif not txn.rcpt_overflow:
                    txn.rcpt_overflow = True
                    out.append(self.anomaly(ts, CLIENT, "smtp_too_many_recipients",
                                            f"over {self.limits.max_recipients} recipients"))
            self._push(_Pending("rcpt", cmd, txn, rcpt=rcpt), ts, out)
        elif verb == "DATA":
            txn = self._current_txn()
            self._close_open_body(txn, ts, out)
            self._begin_data(txn, ts)
            txn.data_seq = cmd.seq
            self._push(_Pending("data", cmd, txn), ts, out)
        elif verb == "BDAT":
            self._bdat(cmd, arg, ts, out)
        elif verb in ("RSET", "QUIT"):
            self._end_txn(ts, out)
            self._push(_Pending(verb.lower(), cmd), ts, out)
        elif verb == "STARTTLS":
            self._push(_Pending("starttls", cmd), ts, out)
            self._cmode = _HOLD
        elif verb == "AUTH":
            self._auth_command(cmd, arg, ts, out)
        else:
            if verb not in _VERBS:
                out.append(self.anomaly(ts, CLIENT, "smtp_unknown_command", repr(verb[:40])))
            self._push(_Pending("other", cmd), ts, out)

    def _push(self, entry: _Pending, ts: float, out: list) -> None:
        pending = self._pending
        if len(pending) >= self.limits.max_pending_commands:
            if not self._pending_overflow:
                self._pending_overflow = True
                out.append(self.anomaly(ts, CLIENT, "smtp_too_many_pending_commands",
                                        f"over {self.limits.max_pending_commands} commands without reply"))
            self._flush(pending.popleft(), ts, out)
        entry.epoch = self._epoch
        if entry.txn is not None and entry.cmd is not None:
            entry.cmd.transaction = entry.txn.number
        pending.append(entry)

    def _current_txn(self) -> _Txn:
        """The open transaction, or an implicit one when MAIL was not seen
        (lost in a gap, or a client that skipped it)."""
        if self._txn is None:
            self._txn = self._new_txn(None, gap=self._recovering)
            self._txn.tls = self.session.tls
        return self._txn

    def _new_txn(self, mail_from: str | None, gap: bool = False) -> _Txn:
        self._txns += 1
        return _Txn(mail_from, gap, self._txns)

    def _end_txn(self, ts: float, out: list) -> None:
        """A command that ends the transaction (MAIL, RSET, QUIT, EHLO)."""
        txn = self._txn
        if txn is not None:
            self._close_open_body(txn, ts, out)
        self._txn = None

    def _close_open_body(self, txn: _Txn, ts: float, out: list) -> None:
        """A BDAT message without its LAST chunk is over: emit it incomplete."""
        if txn.body is not None and not txn.emitted and txn.source == "BDAT" and not txn.body.terminated:
            if self._bdat_txn is txn:
                return  # still inside a chunk
            txn.body_done = txn.reply_seen = True
            self._finalize(txn, ts, out)
            txn.body = None
            txn.emitted = False

    # -- DATA

    def _begin_data(self, txn: _Txn, ts: float) -> None:
        txn.body = _Body(self.limits.max_message_size)
        txn.data_ts = ts
        txn.source = "DATA"
        txn.tls = self.session.tls
        txn.body_done = txn.reply_seen = txn.emitted = False
        txn.reply = None
        txn.data_seq = None  # the DATA command sets it (a DATA lost in a gap leaves none)
        self._data_txn = txn
        self._hold = b"\r\n"  # the DATA line's CRLF: ".\r\n" right away is an empty message
        self._virt = 2
        self._ctx = b"\r\n"
        self._acked = False
        self._bare_noted = False
        self._wire_head = []
        self._wire_len = 0
        self._data_wire = 0
        self._cmode = _DATA

    def _data_bytes(self, data: bytes, ts: float, out: list) -> bytes:
        """Message data: find CRLF.CRLF, unstuff, store; return what follows it."""
        if self._wire_head is not None:
            if self._wire_len + len(data) <= self.limits.max_line:
                self._wire_head.append(data)
                self._wire_len += len(data)
            else:
                self._wire_head = None
        self._data_wire += len(data)
        buf = self._hold + data if self._hold else data
        virt = self._virt
        ctx = self._ctx
        if b"\n." not in buf and b"\n." not in ctx + buf[:2]:
            # the usual chunk: no line starts with a dot, so no end, no
            # stuffing and no bare-LF dot can be in it (they all contain "\n.")
            n = len(buf)
            cut = n - 4 if n > 4 else 0
            if cut > virt:
                seg = buf[virt:cut]
                self._ctx = seg[-2:] if len(seg) >= 2 else (ctx + seg)[-2:]
                if self._data_txn.body.add(seg):
                    out.append(self.anomaly(ts, CLIENT, "smtp_message_too_large",
                                            f"over {self.limits.max_message_size} bytes: kept for hashing only"))
            self._virt = virt - cut if virt > cut else 0
            self._hold = buf[cut:]
            return b""
        end = buf.find(b"\r\n.\r\n")
        if not self._bare_noted:
            virt = self._check_bare_lf(buf, len(buf) if end < 0 else end, virt, ts, out)
        if end >= 0:
            if end + 2 > virt:
                self._commit(buf[virt:end + 2], ts, out)
            rest = buf[end + 5:]
            self._end_data(ts, out)
            return rest
        cut = len(buf) - 4 if len(buf) > 4 else 0
        if cut > virt:
            self._commit(buf[virt:cut], ts, out)
        self._virt = virt - cut if virt > cut else 0
        self._hold = buf[cut:]
        return b""

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
            self._bare_noted = True
            # offset in the data as sent, independent of how it was split
            offset = self._data_wire - len(buf) + i + 1
            variant = "\\n.\\n" if i == a else "\\n.\\r\\n"
            out.append(self.anomaly(ts, CLIENT, "smtp_bare_lf_dot", f"{variant} at byte {offset} of the data"))
        return virt

    def _commit(self, seg: bytes, ts: float, out: list) -> None:
        """Dot-unstuff wire bytes (with the last committed bytes as context) and store them.

        RFC 5321 4.5.2: the first character of a line that starts with a dot
        is removed, doubled or not (as Postfix and Zeek do).
        """
        ctx = self._ctx
        joined = ctx + seg
        if b"\n." in joined:
            # with 2 bytes of context the removed dot (3rd byte of a match) is
            # always in seg: a match inside ctx was handled with the bytes before
            seg = joined.replace(b"\r\n.", b"\r\n")[len(ctx):]
        self._ctx = joined[-2:]
        txn = self._data_txn
        if txn.body.add(seg):
            out.append(self.anomaly(ts, CLIENT, "smtp_message_too_large",
                                    f"over {self.limits.max_message_size} bytes: kept for hashing only"))

    def _end_data_on_reply(self, txn, code: str, lines, ts: float, out: list) -> None:
        """The data of ``txn`` ends at a reply that did not follow a terminator the
        dissector could read again: keep what was held as the message, record the
        reply, and find the commands after it (resynchronising)."""
        self._commit_hold(ts, out)
        self._data_txn = None
        self._wire_head = None
        if self._txn is txn:
            self._txn = None
        txn.body_done = True
        txn.reply = (code, lines, ts)
        txn.reply_seen = True
        self._finalize(txn, ts, out)
        self._cmode = _RESYNC

    def _commit_hold(self, ts: float, out: list) -> None:
        """Store the held bytes (end of data without terminator, or a gap)."""
        if self._data_txn is not None and len(self._hold) > self._virt:
            self._commit(self._hold[self._virt:], ts, out)
        self._hold = b""
        self._virt = 0

    def _end_data(self, ts: float, out: list) -> None:
        txn = self._data_txn
        txn.body.terminated = True
        txn.body_done = True
        self._data_txn = None
        self._wire_head = None
        self._hold = b""
        self._virt = 0
        self._cmode = _CMD
        if self._txn is txn:
            self._txn = None  # the transaction ends with its data (RFC 5321 4.1.1.4)
        if txn.reply_seen:  # the server spoke first (a gap, or a reply during data)
            self._finalize(txn, ts, out)
        else:
            self._push(_Pending("eod", Command(self.session.session_id, "smtp", ts, ".", "", seq=self.next_seq()),
                                txn), ts, out)

    def _data_refused(self, txn: _Txn, code: str, lines: list[str], ts: float, out: list) -> None:
        """The server refused DATA: the bytes taken as data were commands."""
        if self._data_txn is not txn:
            # the data was complete already (the client did not wait): keep the
            # message with the refusal as its reply
            if not txn.emitted and txn.body_done:
                txn.reply = (code, lines, ts)
                txn.reply_seen = True
                for i, p in enumerate(self._pending):
                    if p.kind == "eod" and p.txn is txn:
                        del self._pending[i]
                        if p.cmd is not None:
                            p.cmd.user = self.session.auth_user
                            out.append(p.cmd)
                        break
                self._finalize(txn, ts, out)
            return
        wire = None if self._wire_head is None else b"".join(self._wire_head)
        self._wire_head = None
        if wire is None:
            # too much to read again as commands: keep what was sent as a
            # message the server refused, and find the commands after it
            self._end_data_on_reply(txn, code, lines, ts, out)
            return
        self._data_txn = None
        self._hold = b""
        self._virt = 0
        txn.body = None
        self._cmode = _CMD
        if wire:
            self._client(wire, ts, out)

    # -- BDAT

    def _bdat(self, cmd: Command, arg: str, ts: float, out: list) -> None:
        m = _BDAT_ARG.fullmatch(arg)
        if m is None:
            out.append(self.anomaly(ts, CLIENT, "smtp_bad_bdat", arg[:60]))
            self._push(_Pending("other", cmd), ts, out)
            return
        size = int(m.group(1))
        last = m.group(2) is not None
        txn = self._current_txn()
        if txn.body is None or txn.source != "BDAT" or txn.emitted:
            txn.body = _Body(self.limits.max_message_size)
            txn.data_ts = ts
            txn.source = "BDAT"
            txn.tls = self.session.tls
            txn.body_done = txn.reply_seen = txn.emitted = False
            txn.reply = None
            txn.data_seq = cmd.seq
        self._push(_Pending("bdat", cmd, txn, last=last), ts, out)
        self._bdat_txn = txn
        self._bdat_left = size
        self._bdat_last = last
        if last and self._txn is txn:
            self._txn = None
        if size:
            self._cmode = _BDAT
        else:
            self._bdat_done(ts, out)

    def _bdat_bytes(self, data: bytes, ts: float, out: list) -> bytes:
        n = self._bdat_left
        chunk = data if len(data) <= n else data[:n]
        if chunk:
            self._bdat_left -= len(chunk)
            if self._bdat_txn.body.add(chunk):
                out.append(self.anomaly(ts, CLIENT, "smtp_message_too_large",
                                        f"over {self.limits.max_message_size} bytes: kept for hashing only"))
        if self._bdat_left == 0:
            self._cmode = _CMD
            self._bdat_done(ts, out)
        return data[len(chunk):] if len(data) > len(chunk) else b""

    def _bdat_done(self, ts: float, out: list) -> None:
        txn = self._bdat_txn
        self._bdat_txn = None
        if self._bdat_last:
            txn.body.terminated = True
            txn.body_done = True
            if txn.reply_seen:
                self._finalize(txn, ts, out)

    # -- STARTTLS

    def _resolve_hold(self, ts: float, out: list) -> None:
        """Client bytes after STARTTLS with no verdict yet: TLS if they look
        like a TLS record, otherwise commands."""
        held = b"".join(self._held)
        self._held = []
        self._held_len = 0
        if held[:1] == b"\x16":
            self._mode_before_tls = _CMD
            self._cmode = _TLS
            out.append(TlsStart(ts, (CLIENT,), (held, b"")))
        else:
            self._cmode = _CMD
            if held:
                self._client(held, ts, out)

    def _start_tls(self, ts: float, out: list) -> None:
        """STARTTLS accepted: both directions are the router's from here (TlsStart)."""
        held = b"".join(self._held)
        self._held = []
        self._held_len = 0
        self._server_tls = True
        rest = self._sbuf.read_all()  # server bytes after the 220 line
        self._sbuf.clear()
        if self._cmode != _TLS:
            self._mode_before_tls = _CMD if self._cmode == _HOLD else self._cmode
            self._cmode = _TLS
            held += self._cbuf.read_all()
            self._cbuf.clear()
            out.append(TlsStart(ts, (CLIENT, SERVER), (held, rest)))
        else:  # the client switched already (its bytes began with a TLS record)
            out.append(TlsStart(ts, (SERVER,), (b"", rest)))

    def resume(self, ts: float) -> list:
        """Decrypted plaintext follows the switch: RFC 3207 says both sides start
        over from the state after the greeting."""
        out: list = []
        self._server_tls = False
        if self._cmode == _TLS:
            self._cmode = self._mode_before_tls
        self._end_txn(ts, out)
        self.session.extensions = []
        return out

    def _incomplete_line(self, rest: bytes, ts: float, out: list) -> None:
        """The connection ended inside a client line: quote its start, marking
        what belongs to an authentication (a SASL response, or the initial
        response of an AUTH command) as secret."""
        head = rest[:60]
        detail = repr(head)
        secret_at = None
        auth = self._auth
        if auth is not None and (auth.awaiting > 0 or not auth.exchange.done
                                 or not _is_command_line(rest.rstrip(b"\r\n"))):
            secret_at = 0  # the line would have been a SASL response
        else:
            m = _AUTH_INITIAL.match(head)
            if m:
                shown = repr(head[:m.end()])
                # the quote repr chose for the prefix may differ from the whole's: then mask all
                secret_at = len(shown) - 1 if detail.startswith(shown[:-1]) else 0
        out.append(self.anomaly(ts, CLIENT, "smtp_incomplete_line", detail, secret_at=secret_at))

    # -- AUTH

    def _auth_command(self, cmd: Command, arg: str, ts: float, out: list) -> None:
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        initial = initial.strip()
        if self._auth is not None:
            prev = self._auth
            self._auth = None
            if prev.outstanding == 0:
                self._emit_credential(prev, None, ts, out)
        exchange = SaslExchange(mech, initial if initial else None)
        auth = _Auth(exchange, ts)
        if initial:
            if initial != "=":
                cmd.secret_at = len(arg) - len(initial)  # the initial response, to the end
            auth.lines = 1
        self._auth = auth
        self._auths.append(auth)
        auth.outstanding += 1
        self._push(_Pending("auth", cmd, auth=auth), ts, out)

    def _auth_response(self, auth: _Auth, raw: bytes, ts: float, out: list) -> None:
        text = _text(raw).strip()
        if auth.lines < _MAX_SASL_LINES:
            auth.lines += 1
            auth.exchange.client(text)
        if auth.awaiting:
            auth.awaiting -= 1
        cmd = Command(self.session.session_id, "smtp", ts, "AUTH-RESPONSE", text,
                      secret_at=None if text == "*" else 0, seq=self.next_seq())
        auth.outstanding += 1
        self._push(_Pending("authresp", cmd, auth=auth), ts, out)

    def _auth_unseen(self, ts: float) -> None:
        """A 334 challenge that no AUTH command asked for: the capture began (or a gap fell)
        inside an exchange. The client's next line is a SASL response, secret like any other."""
        if self._auth is None:
            self._auth = _Auth(SaslExchange(""), ts)
            self._auth.unseen = True
        self._auth.awaiting += 1

    def _emit_credential(self, auth: _Auth, success: bool | None, ts: float, out: list) -> None:
        if auth.emitted:
            return
        auth.emitted = True
        if auth in self._auths:
            self._auths.remove(auth)
        if self._auth is auth:
            self._auth = None
        if auth.unseen:
            return
        ex = auth.exchange
        if ex.malformed:
            out.append(self.anomaly(ts, CLIENT, "smtp_bad_auth_response", ex.mechanism[:40]))
        detail = ex.detail
        if ex.cancelled:
            detail = (detail + "; " if detail else "") + "cancelled by the client"
        out.append(Credential(self.session.session_id, "smtp", auth.ts, ex.mechanism, ex.user, ex.secret,
                              success, detail))
        if success:
            self.session.auth_user = ex.user
            self.session.auth_mechanism = ex.mechanism

    # -- gaps

    def _client_gap(self, length: int, ts: float, out: list) -> None:
        mode = self._cmode
        if mode in (_TLS, _HOLD):
            return
        if mode == _DATA:
            txn = self._data_txn
            self._commit_hold(ts, out)
            self._ctx = b""  # no unstuffing across the hole
            txn.body.missing += length
            txn.gap = True
            self._wire_head = None
            return
        if mode == _BDAT:
            txn = self._bdat_txn
            txn.gap = True
            left = self._bdat_left
            lost = min(length, left)
            txn.body.missing += lost
            self._bdat_left -= lost
            if self._bdat_left == 0:
                self._cmode = _CMD if length == left else _RESYNC
                self._bdat_done(ts, out)
            return
        self._cbuf.clear()
        if self._txn is not None:
            self._txn.gap = True
        self._cmode = _RESYNC

    def _server_gap(self, ts: float, out: list) -> None:
        self._sbuf.clear()
        self._rcode = None
        self._rlines = []
        self._rbytes = 0
        if self._server_tls:
            return
        self._server_resync = True
        # the replies lost in the gap answered some of the waiting commands;
        # which ones is unknowable, so none of them gets a reply
        while self._pending:
            self._flush(self._pending.popleft(), ts, out)
        self._pending_overflow = False

    def _flush(self, entry: _Pending, ts: float, out: list) -> None:
        """A waiting command that will get no reply (gap, overflow, close)."""
        if entry.cmd is not None:
            entry.cmd.user = self.session.auth_user
            out.append(entry.cmd)
        kind = entry.kind
        txn = entry.txn
        if kind == "eod" or (kind == "bdat" and entry.last):
            txn.reply_seen = True
            if txn.body_done:
                self._finalize(txn, ts, out)
        elif kind == "data":
            if self._data_txn is txn:
                self._acked = True  # the client goes on sending: take the data as accepted
        elif kind == "starttls":
            if self._cmode == _HOLD:
                self._resolve_hold(ts, out)
        elif entry.auth is not None:
            auth = entry.auth
            auth.outstanding -= 1
            if auth.outstanding <= 0 and self._auth is not auth:
                self._emit_credential(auth, None, ts, out)

    # ------------------------------------------------------------------ server side

    def _server(self, data: bytes, ts: float, out: list) -> None:
        if self._server_tls:
            return  # the router's: TlsStart was returned
        buf = self._sbuf
        buf.append(data)
        while not self._server_tls:
            head = buf.peek(4)
            line = buf.readline()
            if line is None:
                break
            if line is OVERLONG:
                out.append(self.anomaly(ts, SERVER, "smtp_line_too_long", f"reply line over {self.limits.max_line} bytes"))
                # keep the reply structure: its code and whether it continues
                self._reply_line(head, ts, out)
                continue
            self._reply_line(line, ts, out)

    def _reply_line(self, raw: bytes, ts: float, out: list) -> None:
        line = raw.rstrip(b"\r\n")
        m = _REPLY.fullmatch(line)
        if m is None:
            if not self._server_resync and not self._bad_reply_noted:
                self._bad_reply_noted = True
                out.append(self.anomaly(ts, SERVER, "smtp_bad_reply_line", repr(line[:60])))
            return
        self._server_resync = False
        self._bad_reply_noted = False
        code = m.group(1).decode("ascii")
        more = m.group(2) == b"-"
        text = _text(m.group(3)).strip() if m.group(3) is not None else ""
        if self._rcode is not None and code != self._rcode:
            out.append(self.anomaly(ts, SERVER, "smtp_reply_code_mismatch", f"{self._rcode} then {code}"))
            self._complete_reply(ts, out)
        if self._rcode is None:
            self._rcode = code
            self._rlines = []
            self._rbytes = 0
            self._rtoo_long = False
        if self._rbytes + len(text) <= self.limits.max_line:
            self._rlines.append(text)
            self._rbytes += len(text)
        elif not self._rtoo_long:
            self._rtoo_long = True
            out.append(self.anomaly(ts, SERVER, "smtp_reply_too_long", f"reply {code} over {self.limits.max_line} bytes"))
        if not more:
            self._complete_reply(ts, out)

    def _complete_reply(self, ts: float, out: list) -> None:
        code, lines = self._rcode, self._rlines
        self._rcode = None
        self._rlines = []
        self._rbytes = 0
        self._on_reply(code, lines, ts, out)

    def _on_reply(self, code: str, lines: list[str], ts: float, out: list) -> None:
        pending = self._pending
        if not pending:
            self._unexpected_reply(code, lines, ts, out)
            return
        entry = pending.popleft()
        if not pending:
            self._pending_overflow = False
        kind = entry.kind
        text = lines[0] if lines else ""
        if kind == "greeting":
            if code not in ("220", "421", "554") and pending:
                # the capture began after the greeting: this answers a command
                self._on_reply(code, lines, ts, out)
                return
            if code == "334":  # the capture began inside an AUTH exchange
                self._auth_unseen(ts)
                return
            self.session.banner = "\n".join(lines)
            if self.session.server_software is None:
                self.session.server_software = _server_software(self.session.banner)
            # the greeting's "command" is the connection itself: its latency
            # is the server's greeting delay when the connection start is known
            start = self.session.start
            known = start is not None and start <= ts
            entry.cmd = Command(self.session.session_id, "smtp", start if known else ts, "", seq=0)
        cmd = entry.cmd
        if cmd is not None:
            cmd.reply_code = code
            cmd.reply_text = text
            cmd.reply_ts = ts
            if kind != "greeting" or known:
                cmd.latency = ts - cmd.ts
            out.append(cmd)
        if entry.epoch == self._epoch:
            # a command sent after the last gap got its reply: back in step
            self._recovering = False
        positive = code[:1] == "2"
        txn = entry.txn
        if kind == "ehlo":
            if positive:
                self.session.extensions = [line for line in lines[1:] if line]
        elif kind == "rcpt":
            if entry.rcpt is not None:
                entry.rcpt[1] = positive
        elif kind == "data":
            if code == "354":
                if self._data_txn is txn:
                    self._acked = True
            else:
                self._data_refused(txn, code, lines, ts, out)
        elif kind == "eod" or (kind == "bdat" and entry.last):
            txn.reply = (code, lines, ts)
            txn.reply_seen = True
            if txn.body_done:
                self._finalize(txn, ts, out)
        elif kind == "starttls":
            if code == "220":
                self._start_tls(ts, out)
            elif self._cmode == _HOLD:
                held = b"".join(self._held)
                self._held = []
                self._held_len = 0
                self._cmode = _CMD
                if held:
                    self._client(held, ts, out)
        elif entry.auth is not None:
            auth = entry.auth
            auth.outstanding -= 1
            if code == "334":
                auth.awaiting += 1
                auth.exchange.server(text)
            else:
                self._emit_credential(auth, positive, ts, out)
        elif code == "334":  # a challenge, though the command it answers was not seen as AUTH
            self._auth_unseen(ts)
        if cmd is not None:  # after the reply's effect: an accepted AUTH names its user
            cmd.user = self.session.auth_user

    def _unexpected_reply(self, code: str, lines: list[str], ts: float, out: list) -> None:
        """A reply no command waits for."""
        text = lines[0] if lines else ""
        if self._cmode == _DATA and self._data_txn is not None and self._acked:
            # the server ended the data: its terminator was lost in a gap,
            # or the server gave up on the client (timeout, shutdown)
            txn = self._data_txn
            if not txn.gap:
                out.append(self.anomaly(ts, SERVER, "smtp_reply_during_data", f"{code} {text[:60]}"))
            self._end_data_on_reply(txn, code, lines, ts, out)
            return
        if code == "354" and self._cmode == _RESYNC:
            # a DATA lost in a client gap was accepted: what follows is data
            txn = self._current_txn()
            txn.gap = True
            self._close_open_body(txn, ts, out)
            self._cbuf.clear()
            self._begin_data(txn, ts)
            self._acked = True
            return
        if code == "334":
            self._auth_unseen(ts)
        if not self._recovering:
            out.append(self.anomaly(ts, SERVER, "smtp_unmatched_reply", f"{code} {text[:60]}"))

    # ------------------------------------------------------------------ messages

    def _finalize(self, txn: _Txn, ts: float, out: list) -> None:
        """Emit the message of ``txn`` (once its data and reply are settled)."""
        body = txn.body
        if txn.emitted or body is None:
            return
        txn.emitted = True
        raw = b"".join(body.chunks)
        body.chunks = []  # the joined copy is all that is needed from here
        accepted = [a for a, ok in txn.rcpts if ok is not False]
        refused = [a for a, ok in txn.rcpts if ok is False]
        msg = Message(protocol="smtp", session_id=self.session.session_id, ts=txn.data_ts,
                      direction="sent", mail_from=txn.mail_from, rcpt_to=accepted,
                      rcpt_rejected=refused, helo=self.session.helo, tls=txn.tls, source=txn.source,
                      kind=txn.source.lower(), command_seq=txn.data_seq, transaction=txn.number,
                      user=self.session.auth_user)
        if txn.reply is not None:
            code, lines, _ = txn.reply
            msg.reply_code = code
            msg.reply_text = lines[-1] if lines else ""
            msg.queue_id = _queue_id(lines)
        found = mime.fill_message(msg, raw, self.config)
        self.session.anomalies += len(found)
        if body.hasher is not None:
            # only the beginning was kept: size and hash are of everything
            msg.size = body.size
            msg.sha256 = body.hasher.hexdigest()
            msg.body_sha256 = None
        msg.missing_bytes = body.missing
        msg.complete = not (txn.gap or body.missing or body.hasher is not None or not body.terminated)
        out.append(msg)
        out.extend(found)
        body.kept = 0
