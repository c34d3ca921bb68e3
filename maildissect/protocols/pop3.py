"""POP3 (RFC 1939, RFC 2449 CAPA, RFC 5034 SASL, RFC 2595 STLS), both directions, sans-I/O.

Client commands are queued as they arrive (pipelining, RFC 2449) and paired
first in, first out with the server's ``+OK`` / ``-ERR`` replies. Whether a
reply is multi-line follows from the command it answers (CAPA, LIST and UIDL
without argument, RETR, TOP, AUTH without argument); the multi-line body is
scanned for its ``CRLF.CRLF`` terminator in bulk -- never line by line -- and
dot-unstuffed on the way, whatever the segment boundaries.

Records: one :class:`~maildissect.model.Command` per command plus the greeting
(``command=""``); :class:`~maildissect.model.Credential` for USER/PASS, APOP
and AUTH (PLAIN, LOGIN, CRAM-MD5, XOAUTH2, OAUTHBEARER...); a retrieved
:class:`~maildissect.model.Message` for RETR (``kind="body"``) and TOP
(``kind="top"``, ``complete=False``); :class:`~maildissect.model.MailboxEvent`
for STAT, LIST, UIDL, RETR, TOP, DELE, RSET and the deletions QUIT commits.
An accepted STLS is returned as a :class:`~maildissect.protocols.base.TlsStart`
event: what follows is the router's (TLS bytes counted, or decrypted plaintext
handed back after :meth:`Pop3Dissector.resume`). docs/protocols/pop3.md has the
details.
"""

from __future__ import annotations

import hashlib
import re

from ..model import CLIENT, SERVER, Command, Credential, MailboxEvent, Message
from ..text import wire
from .base import fill_message
from .lines import BULK, HOLD, LINE, LineDissector
from .sasl import SaslExchange

__all__ = ["Pop3Dissector", "looks_like_pop3", "ANOMALIES", "KNOWN_COMMANDS"]

ANOMALIES = {
    "pop3_line_too_long": "a command or reply line longer than max_line (skipped)",
    "pop3_message_too_large": "a multi-line reply longer than max_message_size: hashed and counted, only a prefix kept",
    "pop3_unknown_command": "a client command that is not a POP3 command or known extension",
    "pop3_unexpected_reply": "a +OK/-ERR reply with no command awaiting one",
    "pop3_bad_reply": "a server line that is neither +OK, -ERR, a continuation nor part of a multi-line reply",
    "pop3_unexpected_multiline": "lines after a +OK the dissector took for single-line: read as a multi-line reply up to its terminator",
    "pop3_unterminated_multiline": "the connection ended inside a multi-line reply",
    "pop3_reply_lines_capped": "a LIST, UIDL, CAPA or AUTH listing of more than max_reply_lines lines: the first are "
                               "kept on its command (commands.reply_lines)",
    "pop3_sasl_malformed": "an AUTH response that does not decode for its mechanism",
    "pop3_resync": "after a gap, bytes skipped until the next recognisable command or reply",
    "pop3_stls_pipelined": "plaintext bytes sent by the client after STLS before the server's go-ahead",
}

#: RFC 1939, 2449, 5034, 6856 (UTF8, LANG) and historical extensions.
KNOWN_COMMANDS = frozenset(
    "USER PASS APOP AUTH CAPA STLS STAT LIST UIDL RETR TOP DELE RSET NOOP QUIT LAST XTND UTF8 LANG "
    "XOAUTH2 RPOP".split())

_KNOWN_BYTES = frozenset(w.encode() for w in KNOWN_COMMANDS)
#: Commands of the TRANSACTION state: they act on the maildrop (the INBOX of mailbox events).
_MAILDROP_VERBS = frozenset("STAT LIST UIDL RETR TOP DELE RSET LAST".split())
_TERMINATOR = b"\r\n.\r\n"
_STATUS = re.compile(rb"^([+-])(OK|ERR)\b ?(.*)$", re.I | re.S)
_APOP_STAMP = re.compile(rb"<[^<>\s]+@[^<>\s]+>")
_CLIENT_VERB = re.compile(rb"^([A-Za-z][A-Za-z0-9]{1,7})(?:[ \r\n]|$)")
_SOFTWARE = (("dovecot", "Dovecot"), ("courier", "Courier"), ("cyrus", "Cyrus"), ("qpopper", "Qpopper"),
             ("popa3d", "popa3d"), ("twisted", "Twisted"), ("microsoft exchange", "Microsoft Exchange"),
             ("gpop", "Gmail"), ("hmailserver", "hMailServer"), ("zimbra", "Zimbra"))


def looks_like_pop3(client_first: bytes, server_first: bytes) -> bool:
    """True when the first bytes look like POP3.

    The server greets with ``+OK`` (or refuses with ``-ERR``); the client
    speaks first with a POP3 verb (``USER``, ``CAPA``, ``APOP``, ``STLS``...)
    only when the server said nothing yet or said ``+OK``.
    """
    s = server_first[:8].upper()
    if s.startswith(b"+OK"):
        return True
    if server_first and not s.startswith(b"-ERR"):
        return False
    m = _CLIENT_VERB.match(client_first[:64])
    if not m:
        return False
    return m.group(1).upper().decode("ascii") in ("USER", "APOP", "CAPA", "STLS", "UIDL", "STAT", "RETR")


class _Pending:
    __slots__ = ("cmd", "verb", "arg", "cred", "sasl", "multi", "challenges")

    def __init__(self, cmd, verb, arg):
        self.cmd = cmd
        self.verb = verb
        self.arg = arg
        self.cred: Credential | None = None
        self.sasl: SaslExchange | None = None
        self.multi = False
        self.challenges = 0  # "+ " challenges not yet answered


class _Multi:
    """A multi-line reply being received: bulk terminator search and dot-unstuffing."""

    __slots__ = ("p", "lead", "carry", "chunks", "kept", "size", "hasher", "keep", "missing", "ts")

    def __init__(self, p, keep, ts):
        self.p = p
        self.lead = b"\r\n"  # the last two raw bytes before what is committed next
        self.carry = b""  # raw bytes that may begin the terminator
        self.chunks: list[bytes] = []
        self.kept = 0
        self.size = 0  # unstuffed bytes
        self.hasher = None
        self.keep = keep
        self.missing = 0
        self.ts = ts

    def commit(self, raw: bytes) -> bool:
        """Unstuff and keep ``raw``; True when the keep limit was just passed."""
        if not raw:
            return False
        joined = self.lead + raw
        # A dot that starts a line was doubled by the sender (RFC 1939 3.); the
        # two bytes of context make this right across any split.
        data = joined.replace(b"\r\n.", b"\r\n")[2:]
        self.lead = joined[-2:]
        self.size += len(data)
        passed = False
        if self.hasher is None and self.kept + len(data) > self.keep:
            self.hasher = hashlib.sha256()
            for c in self.chunks:
                self.hasher.update(c)
            passed = True
        if self.hasher is not None:
            self.hasher.update(data)
            room = self.keep - self.kept
            if room > 0:
                self.chunks.append(data[:room])
                self.kept += min(room, len(data))
        else:
            self.chunks.append(data)
            self.kept += len(data)
        return passed

    def data(self) -> bytes:
        return b"".join(self.chunks)


class Pop3Dissector(LineDissector):
    """POP3 dissector for one connection (see the module docstring).

    The server's direction is in ``BULK`` mode while a multi-line reply streams in.
    """

    protocol = "pop3"
    resync_anomaly = "pop3_resync"
    pipelined_anomaly = "pop3_stls_pipelined"

    def __init__(self, session, config=None):
        super().__init__(session, config)
        self.greeted = False
        self.apop_stamp: str | None = None
        self.user_arg: str | None = None  # USER argument awaiting PASS
        self.user: str | None = None  # authenticated user
        self.auth: _Pending | None = None
        self.sasl_unseen = False  # a "+" challenge came with no AUTH in progress
        self.stls: _Pending | None = None
        self.multi: _Multi | None = None
        self.last_ok: _Pending | None = None  # last single-line +OK, in case it was multi-line after all
        self.bad_run = False
        self.uidl: dict[int, str] = {}
        self.deleted: list[int] = []

    def close(self, ts: float, reason: str) -> list:
        out: list = []
        if self.multi is not None:
            m = self.multi
            m.commit(m.carry)
            m.carry = b""
            out.append(self.anomaly(ts, SERVER, "pop3_unterminated_multiline",
                                    f"{m.p.verb} {m.p.arg}".strip()))
            self._finish_multi(ts, out, terminated=False)
        for p in self.pending:
            self._emit(p, out)
        self.pending.clear()
        return out

    # -- the line skeleton's hooks ---------------------------------------------

    def client_line(self, line, ts, out):
        self._client_line(line[:-2] if line.endswith(b"\r\n") else line[:-1], ts, out)

    def server_line(self, line, ts, out):
        self._server_line(line, line[:-2] if line.endswith(b"\r\n") else line[:-1], ts, out)

    def overlong(self, d, ts, out):
        if not d.resync:
            out.append(self.anomaly(ts, d.side, "pop3_line_too_long", f"line longer than {self.limits.max_line} bytes"))

    def bulk(self, d, data, ts, out):
        """Bytes of a multi-line reply (the server's direction only)."""
        return self._multi_data(data, ts, out) or b""

    def bulk_gap(self, d, length, ts, out):
        """Bytes of a multi-line reply were lost; its terminator may follow later."""
        m = self.multi
        buf = d.buf
        if len(buf):
            m_rest = buf.read_all()
            buf.clear()
            self._multi_data(m_rest, ts, out)
        if self.multi is m:
            m.commit(m.carry)
            m.carry = b""
            m.missing += length
            m.lead = b"\x00\x00"  # unknown context: the next byte does not start a line
        return True

    def hold_overflow(self, ts, out):
        self._switch_tls(ts, out, assumed=True)

    def give_up(self, p, ts, out):
        self._forget(p)
        self._emit(p, out)

    def is_sync_line(self, side, line) -> bool:
        return self._is_sync_line(side, line[:-2] if line.endswith(b"\r\n") else line[:-1])

    def _is_sync_line(self, side, text) -> bool:
        if side == SERVER:
            return bool(_STATUS.match(text))
        m = _CLIENT_VERB.match(text)
        return bool(m) and m.group(1).upper().decode("ascii") in KNOWN_COMMANDS

    # -- client --------------------------------------------------------------

    def _client_line(self, text, ts, out):
        if self.sasl_unseen:
            # the capture began inside an AUTH exchange: a single word that is no command,
            # after the challenge, is a SASL response (secret, not recorded)
            self.sasl_unseen = False
            stripped = text.strip()
            if stripped and b" " not in stripped and stripped.upper() not in _KNOWN_BYTES:
                return
        a = self.auth
        if a is not None:
            stripped = text.strip()
            word = stripped.upper()
            # A response answers a "+ " challenge; one sent before the challenge
            # arrived is recognised by being a single word that is no command.
            if a.challenges > 0 or (b" " not in stripped and word not in _KNOWN_BYTES):
                a.challenges = max(0, a.challenges - 1)
                before = a.sasl.malformed
                a.sasl.client(stripped)
                if a.sasl.malformed and not before:
                    out.append(self.anomaly(ts, CLIENT, "pop3_sasl_malformed",
                                            f"{a.sasl.mechanism} response does not decode"))
                return
        if not text.strip():
            return
        verb_b, _, arg_b = text.strip().partition(b" ")
        verb = wire(verb_b).upper()[:40]
        arg = wire(arg_b).strip()
        if verb not in KNOWN_COMMANDS and not verb.startswith("X"):
            out.append(self.anomaly(ts, CLIENT, "pop3_unknown_command", verb))
        cmd = Command(self.session.session_id, "pop3", ts, verb, arg, seq=self.next_seq())
        p = _Pending(cmd, verb, arg)
        sid = self.session.session_id
        if verb == "USER":
            self.user_arg = arg
        elif verb in ("PASS", "XOAUTH2"):
            cmd.secret_at = 0  # the whole argument, spaces included
            if verb == "PASS":
                p.cred = Credential(sid, "pop3", ts, "USER/PASS", self.user_arg, arg)
        elif verb == "APOP":
            name, _, digest = arg.rpartition(" ")
            cmd.secret_at = len(name) + 1 if name else 0  # the digest
            p.cred = Credential(sid, "pop3", ts, "APOP", name or None, digest or None, None,
                                f"timestamp {self.apop_stamp}" if self.apop_stamp else "")
        elif verb == "AUTH":
            if arg:
                mech, _, ir = arg.partition(" ")
                ir = ir.strip()
                if ir:
                    cmd.secret_at = len(arg) - len(ir)  # the initial response
                p.sasl = SaslExchange(mech, ir if ir else None)
                if p.sasl.malformed:
                    out.append(self.anomaly(ts, CLIENT, "pop3_sasl_malformed",
                                            f"{p.sasl.mechanism} initial response does not decode"))
                self.auth = p
            else:
                p.multi = True  # lists the mechanisms when answered +OK
        elif verb == "STLS":
            self.stls = p
            self.hold()
        elif verb == "CAPA":
            p.multi = True
        elif verb in ("LIST", "UIDL") and not arg:
            p.multi = True
        elif verb in ("RETR", "TOP"):
            p.multi = True
        self.push(p, ts, out)

    def _forget(self, p):
        if self.auth is p:
            self.auth = None
        if self.stls is p:
            self.stls = None
            c = self.dirs[CLIENT]
            if c.mode == HOLD:
                c.mode = LINE

    # -- server --------------------------------------------------------------

    def _server_line(self, line, text, ts, out):
        m = _STATUS.match(text)
        if m is None:
            if text[:1] == b"+" and (len(text) == 1 or text[1:2] == b" "):
                self._challenge(text[2:].strip(), ts, out)
                return
            if self.last_ok is not None:
                p = self.last_ok
                self.last_ok = None
                out.append(self.anomaly(ts, SERVER, "pop3_unexpected_multiline", f"after {p.verb} +OK"))
                self.multi = _Multi(p, self.limits.max_message_size, ts)
                self.dirs[SERVER].mode = BULK
                rest = self._multi_data(line, ts, out)
                if rest:  # cannot happen for a single line, but stay exact
                    self.dirs[SERVER].buf.append(rest)
                return
            if not text.strip():
                return
            if not self.bad_run:
                out.append(self.anomaly(ts, SERVER, "pop3_bad_reply", wire(text[:80])))
                self.bad_run = True
            return
        self.bad_run = False
        self.last_ok = None
        code = "+OK" if m.group(1) == b"+" else "-ERR"
        rest = wire(m.group(3)).strip()
        if not self.greeted:
            self.greeted = True
            if not self.pending:
                self._greeting(code, rest, m.group(3), ts, out)
                return
        if not self.pending:
            out.append(self.anomaly(ts, SERVER, "pop3_unexpected_reply", f"{code} {rest[:60]}"))
            return
        p = self.pending.popleft()
        cmd = p.cmd
        cmd.reply_code = code
        cmd.reply_text = rest
        cmd.reply_ts = ts
        cmd.latency = ts - cmd.ts
        if code == "+OK" and p.multi:
            self.multi = _Multi(p, self.limits.max_message_size, ts)
            self.dirs[SERVER].mode = BULK
            return
        self._forget(p)
        self._single(p, code, rest, ts, out)
        self._emit(p, out)
        if code == "+OK" and not p.multi and p.verb not in ("QUIT", "STLS"):
            self.last_ok = p
        if p.verb == "STLS":
            if code == "+OK":
                self._switch_tls(ts, out, p)
            else:
                self.drain(self.dirs[CLIENT], ts, out)

    def _challenge(self, text, ts, out):
        a = self.auth
        if a is None:
            out.append(self.anomaly(ts, SERVER, "pop3_bad_reply", "continuation outside AUTH"))
            self.sasl_unseen = True
            return
        a.challenges += 1
        a.sasl.server(text)

    def _greeting(self, code, rest, raw_rest, ts, out):
        sess = self.session
        out.append(Command(sess.session_id, "pop3", ts, "", "", None, code, rest, ts, None, seq=0))
        sess.banner = rest
        stamp = _APOP_STAMP.search(raw_rest)
        if stamp:
            self.apop_stamp = wire(stamp.group(0))
        low = rest.lower()
        if not sess.server_software:
            for word, name in _SOFTWARE:
                if word in low:
                    sess.server_software = name
                    break

    def _event(self, ts, action, out, **kw):
        out.append(MailboxEvent(self.session.session_id, ts, "pop3", self.user or self.user_arg, "INBOX",
                                action, **kw))

    def _single(self, p, code, rest, ts, out):
        """Act on a single-line reply to ``p``."""
        verb = p.verb
        ok = code == "+OK"
        if verb in ("PASS", "APOP") and ok and p.cred is not None:
            self.user = p.cred.user
            self.session.auth_user = p.cred.user
            self.session.auth_mechanism = p.cred.mechanism
        elif verb == "AUTH" and p.sasl is not None and ok:
            self.user = p.sasl.user or self.user
            if p.sasl.user:
                self.session.auth_user = p.sasl.user
            self.session.auth_mechanism = p.sasl.mechanism
        if not ok:
            return
        words = rest.split()
        if verb == "STAT" and len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
            self._event(ts, "stat", out, count=int(words[0]), size=int(words[1]))
        elif verb == "LIST" and p.arg and len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
            self._event(ts, "list", out, seq=int(words[0]), size=int(words[1]))
        elif verb == "UIDL" and p.arg and len(words) >= 2 and words[0].isdigit():
            self.uidl[int(words[0])] = words[1]
            self._event(ts, "uidl", out, seq=int(words[0]), detail=f"uidl {words[1]}")
        elif verb == "DELE" and p.arg.isdigit():
            seq = int(p.arg)
            self.deleted.append(seq)
            self._event(ts, "dele", out, seq=seq, detail=self._uidl_detail(seq))
        elif verb == "RSET":
            self.deleted = []
            self._event(ts, "rset", out)
        elif verb == "QUIT" and self.user is not None:
            # The UPDATE state: deletions marked by DELE take effect now.
            for seq in self.deleted:
                self._event(ts, "expunge", out, seq=seq, detail=self._uidl_detail(seq))
            self.deleted = []

    def _uidl_detail(self, seq):
        uid = self.uidl.get(seq)
        return f"uidl {uid}" if uid else ""

    def _emit(self, p, out):
        cmd = p.cmd
        cmd.user = self.user
        if self.user is not None or p.verb in _MAILDROP_VERBS:
            cmd.mailbox = "INBOX"  # the maildrop is open
        out.append(cmd)
        if p.sasl is not None and p.cred is None:
            sasl = p.sasl
            p.cred = Credential(self.session.session_id, "pop3", cmd.ts, sasl.mechanism, sasl.user, sasl.secret,
                                None, "; ".join(x for x in ("AUTH", sasl.detail,
                                                            "cancelled" if sasl.cancelled else "") if x))
        if p.cred is not None:
            if cmd.reply_code is not None:
                p.cred.success = cmd.reply_code == "+OK"
            out.append(p.cred)

    def _switch_tls(self, ts, out, p=None, assumed=False):
        """STLS accepted (or ``assumed``: the client talked on past max_line): the rest of
        both directions is the router's (TlsStart)."""
        self.stls = None
        self.start_tls(ts, out, assumed=assumed)

    # -- multi-line replies --------------------------------------------------

    def _multi_data(self, data: bytes, ts, out) -> bytes | None:
        """Consume multi-line reply bytes; returns what follows the terminator."""
        m = self.multi
        buf = m.carry + data if m.carry else data
        # The terminator may start in the two bytes before buf (lead): look
        # there first, then in buf itself, without copying buf.
        i = (m.lead + buf[:4]).find(_TERMINATOR)
        if i < 0:
            j = buf.find(_TERMINATOR)
            i = j + 2 if j >= 0 else -1
        if i >= 0:
            # In buf coordinates the body ends at i (its last CRLF included)
            # and ".\r\n" occupies buf[i:i + 3].
            if m.commit(buf[:i]) and m.p is not None:
                self._too_large(m, ts, out)
            m.carry = b""
            self._finish_multi(ts, out, terminated=True)
            return buf[i + 3:]
        cut = len(buf) - 4
        if cut > 0:
            if m.commit(buf[:cut]):
                self._too_large(m, ts, out)
            m.carry = buf[cut:]
        else:
            m.carry = buf
        return None

    def _too_large(self, m, ts, out):
        out.append(self.anomaly(ts, SERVER, "pop3_message_too_large",
                                f"{m.p.verb} {m.p.arg}: over max_message_size {self.limits.max_message_size}"))

    def _finish_multi(self, ts, out, terminated):
        m = self.multi
        self.multi = None
        self.dirs[SERVER].mode = LINE
        p = m.p
        self._forget(p)
        verb = p.verb
        complete = terminated and not m.missing and m.hasher is None
        msg = None
        if verb in ("RETR", "TOP"):
            msg = self._message(p, m, complete, out)
        else:
            body = m.data()
            self._reply_lines(p, body, ts, out)
            if verb == "CAPA":
                caps = [c.strip() for c in wire(body).split("\n") if c.strip()]
                if caps:
                    self.session.extensions = caps[:1000]
                for c in caps:
                    if c.upper().startswith("IMPLEMENTATION ") and not self.session.server_software:
                        self.session.server_software = c[15:].strip()
            elif verb in ("LIST", "UIDL"):
                for line in body.split(b"\n"):
                    words = line.split()
                    if len(words) < 2 or not words[0].isdigit():
                        continue
                    seq = int(words[0])
                    if verb == "LIST":
                        if words[1].isdigit():
                            self._event(m.ts, "list", out, seq=seq, size=int(words[1]))
                    else:
                        uid = wire(words[1])
                        self.uidl[seq] = uid
                        self._event(m.ts, "uidl", out, seq=seq, detail=f"uidl {uid}")
        self._emit(p, out)
        if msg is not None:
            out.append(msg)

    def _reply_lines(self, p, body: bytes, ts, out) -> None:
        """The lines of a LIST, UIDL, CAPA or AUTH listing, kept on its command as Suricata logs a
        reply's data; at most max_reply_lines, each at most max_line characters."""
        cap = self.limits.max_reply_lines
        width = self.limits.max_line
        lines = []
        count = 0
        for raw in body.split(b"\n"):
            raw = raw.rstrip(b"\r")
            if not raw:
                continue
            count += 1
            if len(lines) < cap:
                lines.append(wire(raw[:width]))
        if count > cap:
            out.append(self.anomaly(ts, SERVER, "pop3_reply_lines_capped",
                                    f"{p.verb}: {count} lines, the first {cap} kept"))
        p.cmd.reply_lines = lines

    def _message(self, p, m, complete, out) -> Message:
        body = m.data()
        verb = p.verb
        kind = "body" if verb == "RETR" else "top"
        msg = Message(protocol="pop3", session_id=self.session.session_id, ts=m.ts, direction="retrieved",
                      complete=complete and verb == "RETR", missing_bytes=m.missing, kind=kind,
                      source=f"{verb} {p.arg}".strip()[:200], command_seq=p.cmd.seq, user=self.user,
                      mailbox="INBOX")
        out.extend(fill_message(msg, body, self.config))
        if m.hasher is not None or m.missing:
            msg.size = m.size + m.missing
            msg.sha256 = m.hasher.hexdigest() if m.hasher is not None and not m.missing else None
            msg.body_sha256 = None
        msg.reply_code = p.cmd.reply_code
        msg.reply_text = p.cmd.reply_text
        words = p.arg.split()
        seq = int(words[0]) if words and words[0].isdigit() else None
        self._event(m.ts, "retr" if verb == "RETR" else "top", out, seq=seq, size=msg.size,
                    message_id=msg.message_id, detail=self._uidl_detail(seq) if seq is not None else "")
        return msg
