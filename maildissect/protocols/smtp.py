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

The state machine sits on the line skeleton (:class:`~.lines.LineDissector`:
both directions' buffers, the pending-command queue, gap resynchronisation,
STARTTLS hold-and-switch); the syntax of lines, paths and replies is
:mod:`.smtp_syntax`, the message bytes after DATA :mod:`.smtp_data`, a transaction and
the messages-table row it becomes :mod:`.smtp_txn`.
"""

from __future__ import annotations

from ..config import Config
from ..model import CLIENT, SERVER, Command, Credential, Session
from .lines import BULK, HOLD, LINE, TLS, LineDissector
from .sasl import SaslExchange
from .smtp_data import Body, DataReader
from .smtp_syntax import AUTH_INITIAL as _AUTH_INITIAL
from .smtp_syntax import BDAT_ARG as _BDAT_ARG
from .smtp_syntax import REPLY as _REPLY
from .smtp_syntax import VERBS as _VERBS
from .smtp_syntax import is_command_line as _is_command_line
from .smtp_syntax import looks_like_smtp
from .smtp_syntax import parse_path as _parse_path
from .smtp_syntax import server_software as _server_software
from .smtp_syntax import starts_with_verb as _starts_with_verb
from .smtp_syntax import text as _text
from .smtp_txn import Txn as _Txn
from .smtp_txn import envelope_of, message_of

__all__ = ["SmtpDissector", "looks_like_smtp", "ANOMALIES"]

ANOMALIES = {
    "smtp_unknown_command": "a client command that is not an SMTP verb (still recorded as a command)",
    "smtp_line_too_long": "a command or reply line longer than max_line (skipped)",
    "smtp_too_many_recipients": "more than max_recipients RCPT TO in one transaction (the rest are not listed)",
    "smtp_message_too_large": "a message larger than max_message_size (hashed in full, parsed from its beginning only)",
    "smtp_bare_lf_dot": "a line '.' ended by a bare LF inside DATA ('\\n.\\n', '\\n.\\r\\n' or '\\r\\n.\\n'): an SMTP smuggling attempt, not an end of data",
    "smtp_bad_reply_line": "a server line that is not a 3-digit reply",
    "smtp_reply_code_mismatch": "a multi-line reply whose lines carry different codes",
    "smtp_reply_too_long": "a multi-line reply longer than max_line in total (the rest of its text is dropped)",
    "smtp_reply_lines_capped": "a multi-line reply of more than max_reply_lines lines: the first are kept on its command",
    "smtp_unmatched_reply": "a server reply with no command waiting for it",
    "smtp_reply_during_data": "the server replied while the client was still sending DATA (the message is closed there)",
    "smtp_data_unterminated": "the connection ended inside DATA, before CRLF.CRLF",
    "smtp_bdat_unterminated": "the connection ended before a BDAT chunk or its LAST chunk was complete",
    "smtp_bad_bdat": "a BDAT command without a valid chunk size (missing, negative, not a number, over 64 bits): "
                     "its transaction goes on, and the client's side resynchronises on the next command line",
    "smtp_bad_address": "a MAIL FROM or RCPT TO argument that is not a valid path",
    "smtp_bad_auth_response": "a SASL response that does not decode as its mechanism requires",
    "smtp_incomplete_line": "the connection ended in the middle of a command line",
}

#: most SASL client responses kept per exchange (each bounded by max_line)
_MAX_SASL_LINES = 32

#: the largest BDAT chunk size (RFC 3030: a 64-bit count); beyond it the command is bad
_MAX_CHUNK = 2 ** 64 - 1

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


class SmtpDissector(LineDissector):
    """SMTP state machine over one connection (see the module docstring).

    The client's direction is in ``BULK`` mode inside DATA (scanned for its
    terminator) and inside a BDAT chunk (counted); ``_data_txn`` or
    ``_bdat_txn`` says which.
    """

    protocol = "smtp"

    def __init__(self, session: Session, config: Config | None = None):
        super().__init__(session, config)
        self.pending.append(_Pending("greeting"))
        self._txn: _Txn | None = None
        self._txns = 0  # transactions begun so far
        self._ending: list[_Txn] = []  # ended before a message, awaiting their commands' replies
        self._helo_ok: str | None = None  # the last HELO/EHLO the server accepted
        self._auth: _Auth | None = None  # exchange whose responses the client may still send
        self._auths: list[_Auth] = []  # exchanges whose credential is not emitted yet
        self._closed = False
        self._recovering = False  # after a gap: replies without a command are expected
        self._epoch = 0  # number of gaps so far
        self._bad_reply_noted = False
        # reply being assembled
        self._rcode: str | None = None
        self._rlines: list[str] = []
        self._rbytes = 0
        self._rtoo_long = False
        # DATA
        self._data_txn: _Txn | None = None
        self._data: DataReader | None = None  # its bytes up to CRLF.CRLF
        self._acked = False  # 354 seen for the current DATA
        # BDAT
        self._bdat_txn: _Txn | None = None
        self._bdat_left = 0
        self._bdat_last = False

    # ------------------------------------------------------------------ API

    def feed(self, side: int, data: bytes, ts: float) -> list:
        """Bytes from ``side`` in order; returns the records they complete."""
        if self._closed or not data:
            return []
        if not isinstance(data, bytes):
            data = bytes(data)
        return super().feed(side, data, ts)

    def gap(self, side: int, length: int, ts: float) -> list:
        """``length`` bytes from ``side`` were not captured."""
        if self._closed or length <= 0:
            return []
        self._recovering = True
        self._epoch += 1
        return super().gap(side, length, ts)

    def close(self, ts: float, reason: str) -> list:
        """End of the connection: flush what is still open."""
        if self._closed:
            return []
        out: list = []
        c, s = self.dirs
        # the server's last reply may lack its line end
        if s.mode != TLS and len(s.buf) and not s.buf.discarding:
            rest = bytes(s.buf)
            s.buf.clear()
            if _REPLY.fullmatch(rest.rstrip(b"\r\n")):
                s.resync = False
                self.server_line(rest, ts, out)
        if self._rcode is not None:
            self._complete_reply(ts, out)
        if c.mode == HOLD:
            self._resolve_hold(ts, out)
        mode = c.mode
        if mode == LINE and len(c.buf) and not c.buf.discarding:
            rest = bytes(c.buf)
            c.buf.clear()
            if rest.strip():
                self._incomplete_line(rest, ts, out)
        while self.pending:
            self._flush(self.pending.popleft(), ts, out)
        if mode == BULK and self._data_txn is not None:
            txn = self._data_txn
            self._commit_hold(ts, out)
            out.append(self.anomaly(ts, CLIENT, "smtp_data_unterminated", f"{txn.body.size} bytes"))
            self._data_txn = None
            txn.body_done = txn.reply_seen = True
            self._finalize(txn, ts, out)
        elif mode == BULK and self._bdat_txn is not None:
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
        self._end_txn(ts, out)  # the connection's end ends the open transaction (unterminated)
        for txn in self._ending:  # (every reply is in or given up by now)
            self._envelope(txn, out)
        self._ending = []
        for auth in list(self._auths):
            self._emit_credential(auth, None, ts, out)
        self._closed = True
        return out

    def buffered(self) -> int:
        """Bytes held for parsing right now (line buffers, message bodies,
        STARTTLS hold, reply text): bounded by the limits whatever the input."""
        total = len(self.dirs[CLIENT].buf) + len(self.dirs[SERVER].buf) + self._rbytes
        if self._data is not None:
            total += len(self._data.hold)
        seen = set()
        for txn in [self._txn, self._data_txn, self._bdat_txn] + [p.txn for p in self.pending]:
            if txn is not None and txn.body is not None and id(txn) not in seen:
                seen.add(id(txn))
                total += txn.body.kept
        return total

    # ------------------------------------------------------------------ the line skeleton's hooks

    def is_sync_line(self, side: int, line: bytes) -> bool:
        raw = line.rstrip(b"\r\n")
        if side == SERVER:
            return _REPLY.fullmatch(raw) is not None
        auth = self._auth
        if auth is not None and (auth.awaiting > 0 or (not _is_command_line(raw) and (
                not auth.exchange.done or not _starts_with_verb(raw)))):
            return True  # a response of the AUTH exchange under way
        return _is_command_line(raw)

    def overlong(self, d, ts: float, out: list) -> None:
        head = d.buf.overlong_head
        if d.side == CLIENT:
            self._client_overlong(head, ts, out)
            return
        out.append(self.anomaly(ts, SERVER, "smtp_line_too_long", f"reply line over {self.limits.max_line} bytes"))
        # keep the reply structure: its code and whether it continues
        head = head[:4]
        if d.resync:
            if not self.is_sync_line(SERVER, head):
                return
            self.synced(d, ts, out)
        self.server_line(head, ts, out)

    def bulk(self, d, data: bytes, ts: float, out: list) -> bytes:
        if self._data_txn is not None:
            return self._data_bytes(data, ts, out)
        return self._bdat_bytes(data, ts, out)

    def bulk_gap(self, d, length: int, ts: float, out: list) -> bool:
        if self._data_txn is not None:
            self._data.lost(length, ts, out)
            self._data_txn.gap = True
            return True
        # inside a BDAT chunk the byte count keeps the stream aligned
        txn = self._bdat_txn
        txn.gap = True
        left = self._bdat_left
        lost = min(length, left)
        txn.body.missing += lost
        self._bdat_left -= lost
        if self._bdat_left:
            return True
        if length == left:
            d.mode = LINE
            self._bdat_done(ts, out)
            return True
        self._bdat_done(ts, out)
        return False  # the gap went on past the chunk: find the next command

    def lost_sync(self, d, ts: float, out: list) -> None:
        if d.side == CLIENT:
            if self._txn is not None:
                self._txn.gap = True
            return
        self._rcode = None
        self._rlines = []
        self._rbytes = 0
        # the replies lost in the gap answered some of the waiting commands;
        # which ones is unknowable, so none of them gets a reply
        while self.pending:
            self._flush(self.pending.popleft(), ts, out)

    def hold_overflow(self, ts: float, out: list) -> None:
        self._resolve_hold(ts, out)

    def give_up(self, entry, ts: float, out: list) -> None:
        self._flush(entry, ts, out)

    def restart(self, ts: float, out: list) -> None:
        """Decrypted plaintext follows the switch: RFC 3207 says both sides start
        over from the state after the greeting."""
        self._end_txn(ts, out)
        self.session.extensions = []

    # ------------------------------------------------------------------ client side

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
        if self.dirs[CLIENT].resync:
            return
        # the server answers it (with an error, most likely): keep the order
        if auth is not None:
            auth.outstanding += 1
            self._push(_Pending("authresp", auth=auth), ts, out)
        else:
            self._push(_Pending("other"), ts, out)

    def client_line(self, line: bytes, ts: float, out: list) -> None:
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
            # the client's word until the server answers (a refusal brings back the accepted one)
            self.session.helo = arg or None
            self._end_txn(ts, out, "helo" if verb == "HELO" else "ehlo")
            self._push(_Pending("ehlo" if verb != "HELO" else "helo", cmd), ts, out)
        elif verb == "MAIL":
            addr, ok = _parse_path(arg, "FROM:")
            if not ok:
                out.append(self.anomaly(ts, CLIENT, "smtp_bad_address", f"MAIL {arg[:80]}"))
            self._end_txn(ts, out, "mail")
            self._txn = self._new_txn(addr, ts=ts)
            self._txn.mail_seq = cmd.seq
            self._push(_Pending("mail", cmd, self._txn), ts, out)
        elif verb == "RCPT":
            addr, ok = _parse_path(arg, "TO:")
            if not ok:
                out.append(self.anomaly(ts, CLIENT, "smtp_bad_address", f"RCPT {arg[:80]}"))
            txn = self._current_txn(ts)
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
            txn = self._current_txn(ts)
            self._close_open_body(txn, ts, out)
            self._begin_data(txn, ts)
            txn.data_seq = cmd.seq
            self._push(_Pending("data", cmd, txn), ts, out)
        elif verb == "BDAT":
            self._bdat(cmd, arg, ts, out)
        elif verb in ("RSET", "QUIT"):
            self._end_txn(ts, out, verb.lower())
            self._push(_Pending(verb.lower(), cmd), ts, out)
        elif verb == "STARTTLS":
            self._end_txn(ts, out, "starttls")  # RFC 3207: TLS starts a fresh session
            self._push(_Pending("starttls", cmd), ts, out)
            self.hold()
        elif verb == "AUTH":
            self._auth_command(cmd, arg, ts, out)
        else:
            if verb not in _VERBS:
                out.append(self.anomaly(ts, CLIENT, "smtp_unknown_command", repr(verb[:40])))
            self._push(_Pending("other", cmd), ts, out)

    def _push(self, entry: _Pending, ts: float, out: list) -> None:
        entry.epoch = self._epoch
        if entry.txn is not None:
            entry.txn.outstanding += 1
            if entry.cmd is not None:
                entry.cmd.transaction = entry.txn.number
        self.push(entry, ts, out)

    def _current_txn(self, ts: float = 0.0) -> _Txn:
        """The open transaction, or an implicit one when MAIL was not seen
        (lost in a gap, or a client that skipped it)."""
        if self._txn is None:
            self._txn = self._new_txn(None, gap=self._recovering, ts=ts)
        return self._txn

    def _new_txn(self, mail_from: str | None, gap: bool = False, ts: float = 0.0) -> _Txn:
        self._txns += 1
        txn = _Txn(mail_from, gap, self._txns, ts)
        txn.tls = self.session.tls
        return txn

    def _end_txn(self, ts: float, out: list, reason: str = "") -> None:
        """A command that ends the transaction (MAIL, RSET, QUIT, HELO/EHLO, STARTTLS)."""
        txn = self._txn
        if txn is not None:
            if txn.ended is None:
                txn.ended = reason or None
            self._close_open_body(txn, ts, out)
            if txn.messages == 0:
                # no message: the transaction is a row of its own once its replies are in
                self._ending.append(txn)
        self._txn = None
        self._settle(ts, out)

    def _settle(self, ts: float, out: list) -> None:
        """Emit the rows of ended transactions whose commands have all been answered (or given up)."""
        if not self._ending:
            return
        waiting = []
        for txn in self._ending:
            if txn.outstanding > 0:
                waiting.append(txn)
            else:
                self._envelope(txn, out)
        self._ending = waiting

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
        txn.body = Body(self.limits.max_message_size)
        txn.data_ts = ts
        txn.source = "DATA"
        txn.tls = self.session.tls
        txn.body_done = txn.reply_seen = txn.emitted = False
        txn.reply = None
        txn.data_seq = None  # the DATA command sets it (a DATA lost in a gap leaves none)
        self._data_txn = txn
        self._data = DataReader(txn.body, self.limits.max_line, self._data_anomaly)
        self._acked = False
        self.dirs[CLIENT].mode = BULK

    def _data_anomaly(self, ts: float, out: list, name: str, detail: str) -> None:
        out.append(self.anomaly(ts, CLIENT, name, detail))

    def _data_bytes(self, data: bytes, ts: float, out: list) -> bytes:
        """Message data; returns what follows its CRLF.CRLF."""
        rest = self._data.feed(data, ts, out)
        if rest is None:
            return b""
        self._end_data(ts, out)
        return rest

    def _end_data_on_reply(self, txn, code: str, lines, ts: float, out: list) -> None:
        """The data of ``txn`` ends at a reply that did not follow a terminator the
        dissector could read again: keep what was held as the message, record the
        reply, and find the commands after it (resynchronising)."""
        self._commit_hold(ts, out)
        self._data_txn = None
        if self._txn is txn:
            self._txn = None
        txn.body_done = True
        txn.reply = (code, lines, ts)
        txn.reply_seen = True
        self._finalize(txn, ts, out)
        c = self.dirs[CLIENT]
        c.mode = LINE
        c.resync = True
        c.skipped = 0

    def _commit_hold(self, ts: float, out: list) -> None:
        """The data ends without its terminator: store the bytes held back."""
        if self._data is not None:
            self._data.flush(ts, out)
            self._data = None

    def _end_data(self, ts: float, out: list) -> None:
        txn = self._data_txn
        txn.body.terminated = True
        txn.body_done = True
        self._data_txn = None
        self._data = None
        self.dirs[CLIENT].mode = LINE
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
                for i, p in enumerate(self.pending):
                    if p.kind == "eod" and p.txn is txn:
                        del self.pending[i]
                        if p.cmd is not None:
                            p.cmd.user = self.session.auth_user
                            out.append(p.cmd)
                        break
                self._finalize(txn, ts, out)
            return
        wire = self._data.sent()
        if wire is None:
            # too much to read again as commands: keep what was sent as a
            # message the server refused, and find the commands after it
            self._end_data_on_reply(txn, code, lines, ts, out)
            return
        self._data_txn = None
        self._data = None
        txn.body = None
        c = self.dirs[CLIENT]
        c.mode = LINE
        if wire:
            self.take(c, wire, ts, out)

    # -- BDAT

    def _bdat(self, cmd: Command, arg: str, ts: float, out: list) -> None:
        m = _BDAT_ARG.fullmatch(arg)
        size = int(m.group(1)) if m is not None else -1
        if m is None or size > _MAX_CHUNK:
            # no size to count the chunk by: the transaction stays (its outcome comes from the
            # replies), and the client's side finds the next command line again
            out.append(self.anomaly(ts, CLIENT, "smtp_bad_bdat", repr(arg[:60])))
            self._push(_Pending("badbdat", cmd, self._current_txn(ts)), ts, out)
            c = self.dirs[CLIENT]
            c.resync = True
            c.skipped = 0
            return
        last = m.group(2) is not None
        txn = self._current_txn(ts)
        if txn.body is None or txn.source != "BDAT" or txn.emitted:
            txn.body = Body(self.limits.max_message_size)
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
            self.dirs[CLIENT].mode = BULK
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
            self.dirs[CLIENT].mode = LINE
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
        c = self.dirs[CLIENT]
        if c.buf.peek(1) == b"\x16":
            self.start_tls(ts, out, sides=(CLIENT,))
        else:
            self.release(ts, out)

    def _start_tls(self, ts: float, out: list) -> None:
        """STARTTLS accepted: both directions are the router's from here (TlsStart)."""
        if self.dirs[CLIENT].mode != TLS:
            self.start_tls(ts, out)
        else:  # the client switched already (its bytes began with a TLS record)
            self.start_tls(ts, out, sides=(SERVER,))

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

    # -- commands without reply

    def _flush(self, entry: _Pending, ts: float, out: list) -> None:
        """A waiting command that will get no reply (gap, overflow, close)."""
        if entry.cmd is not None:
            entry.cmd.user = self.session.auth_user
            out.append(entry.cmd)
        kind = entry.kind
        txn = entry.txn
        if txn is not None:
            txn.outstanding -= 1
        if kind == "eod" or (kind == "bdat" and entry.last):
            txn.reply_seen = True
            if txn.body_done:
                self._finalize(txn, ts, out)
        elif kind == "data":
            if self._data_txn is txn:
                self._acked = True  # the client goes on sending: take the data as accepted
        elif kind == "starttls":
            if self.dirs[CLIENT].mode == HOLD:
                self._resolve_hold(ts, out)
        elif entry.auth is not None:
            auth = entry.auth
            auth.outstanding -= 1
            if auth.outstanding <= 0 and self._auth is not auth:
                self._emit_credential(auth, None, ts, out)
        self._settle(ts, out)

    # ------------------------------------------------------------------ server side

    def server_line(self, raw: bytes, ts: float, out: list) -> None:
        """One reply line (the line skeleton's hook)."""
        line = raw.rstrip(b"\r\n")
        m = _REPLY.fullmatch(line)
        if m is None:
            if not self._bad_reply_noted:
                self._bad_reply_noted = True
                out.append(self.anomaly(ts, SERVER, "smtp_bad_reply_line", repr(line[:60])))
            return
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
        pending = self.pending
        if not pending:
            self._unexpected_reply(code, lines, ts, out)
            return
        entry = pending.popleft()
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
            if len(lines) > 1:
                self._reply_lines(cmd, lines, ts, out)
            if kind != "greeting" or known:
                cmd.latency = ts - cmd.ts
            out.append(cmd)
        if entry.epoch == self._epoch:
            # a command sent after the last gap got its reply: back in step
            self._recovering = False
        positive = code[:1] == "2"
        txn = entry.txn
        if txn is not None:
            txn.outstanding -= 1
            txn.last = (code, text)
        if kind in ("ehlo", "helo"):
            if positive:
                self._helo_ok = cmd.argument or None
            elif self._helo_ok is not None:
                # a refused HELO/EHLO leaves the one the server accepted in force
                self.session.helo = self._helo_ok
        if kind == "ehlo":
            if positive:
                self.session.extensions = [line for line in lines[1:] if line]
        elif kind == "mail":
            txn.mail_ok = positive
        elif kind == "badbdat":
            if not positive:
                txn.refused = (code, text)
        elif kind == "rcpt":
            if entry.rcpt is not None:
                entry.rcpt[1] = positive
        elif kind == "data":
            if code == "354":
                if self._data_txn is txn:
                    self._acked = True
            else:
                txn.refused = (code, text)
                self._data_refused(txn, code, lines, ts, out)
        elif kind == "eod" or (kind == "bdat" and entry.last):
            txn.reply = (code, lines, ts)
            txn.reply_seen = True
            if txn.body_done:
                self._finalize(txn, ts, out)
        elif kind == "starttls":
            if code == "220":
                self._start_tls(ts, out)
            else:
                self.release(ts, out)
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
        if txn is not None:
            self._settle(ts, out)

    def _reply_lines(self, cmd: Command, lines: list[str], ts: float, out: list) -> None:
        """The lines of a multi-line reply after its first (EHLO's extensions...) kept on its
        command, as Suricata logs a reply's data lines; at most max_reply_lines."""
        cap = self.limits.max_reply_lines
        more = lines[1:]
        if len(more) > cap:
            out.append(self.anomaly(ts, SERVER, "smtp_reply_lines_capped",
                                    f"{cmd.command or 'greeting'}: {len(more)} lines, the first {cap} kept"))
            more = more[:cap]
        cmd.reply_lines = more

    def _unexpected_reply(self, code: str, lines: list[str], ts: float, out: list) -> None:
        """A reply no command waits for."""
        text = lines[0] if lines else ""
        c = self.dirs[CLIENT]
        if c.mode == BULK and self._data_txn is not None and self._acked:
            # the server ended the data: its terminator was lost in a gap,
            # or the server gave up on the client (timeout, shutdown)
            txn = self._data_txn
            if not txn.gap:
                out.append(self.anomaly(ts, SERVER, "smtp_reply_during_data", f"{code} {text[:60]}"))
            self._end_data_on_reply(txn, code, lines, ts, out)
            return
        if code == "354" and c.mode == LINE and c.resync:
            # a DATA lost in a client gap was accepted: what follows is data
            txn = self._current_txn()
            txn.gap = True
            self._close_open_body(txn, ts, out)
            c.buf.clear()
            c.resync = False
            c.skipped = 0
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
        if txn.emitted or txn.body is None:
            return
        message_of(txn, self.session, self.config, out)

    def _envelope(self, txn: _Txn, out: list) -> None:
        """The row of a transaction that ended before any message."""
        envelope_of(txn, self.session, out)
