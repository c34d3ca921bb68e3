"""IMAP4 (RFC 3501, RFC 9051 and common extensions), both directions, sans-I/O.

The dissector frames each direction into *items*: one command or one
response, i.e. a line plus the literals (``{n}``, ``{n+}``, ``~{n}``) that
continue it. Literal bytes are counted down and consumed in bulk, never
scanned line by line; a literal larger than ``max_literal`` is hashed while
it streams past and only a prefix is kept. Complete items are tokenized into
atoms (``str``), strings (``bytes``), ``None`` for NIL, :class:`Literal` and
nested ``list`` and then interpreted:

* each tagged command becomes a :class:`~maildissect.model.Command`, completed
  by its tagged OK/NO/BAD (pipelined commands are matched by tag, first in
  first out, so clients that reuse one tag work too); the greeting is a
  Command with ``command=""``;
* LOGIN and AUTHENTICATE (PLAIN, LOGIN, CRAM-MD5, XOAUTH2, OAUTHBEARER, SCRAM
  user names; SASL-IR) become :class:`~maildissect.model.Credential` records
  with the server's verdict;
* FETCH responses carrying a message (BODY[], RFC822, BINARY[], HEADER plus
  TEXT, partial fetches reassembled) become retrieved
  :class:`~maildissect.model.Message` records; header-only, text-only,
  single-part and partial fetches become incomplete messages; APPEND becomes
  an appended message;
* what the exchange reveals about mailboxes (SELECT, EXISTS, each UID with
  flags, size and Message-ID, STORE, COPY/MOVE, EXPUNGE, APPEND, LIST,
  STATUS...) becomes a time-ordered stream of
  :class:`~maildissect.model.MailboxEvent`;
* an accepted STARTTLS is returned as a
  :class:`~maildissect.protocols.base.TlsStart` event: what follows is the
  router's (TLS bytes counted, or decrypted plaintext handed back after
  :meth:`ImapDissector.resume`); COMPRESS=DEFLATE is inflated in both
  directions and parsing goes on.

The module is the session state machine on the line skeleton
(:class:`~.lines.LineDissector`): framing into items, commands in flight and
their completions, authentication, STARTTLS and COMPRESS. The grammar is
:mod:`.imap_grammar`, the mailbox events :mod:`.imap_mailbox`, the messages
:mod:`.imap_fetch`. docs/protocols/imap.md describes the records, the
anomalies and the limits.
"""

from __future__ import annotations

import json
import zlib

from ..model import CLIENT, SERVER, Command, Credential, Message
from ..text import wire
from .imap_fetch import FetchMessages
from .imap_grammar import (CLIENT_SYNC, HUGE, KNOWN_COMMANDS, LITERAL_AT_END, MAX_SIZE_DIGITS, SEARCH_VERBS,
                           SELECT_VERBS, SERVER_SYNC, STATUS_LINE, STATUS_PARTS, TAG_OK, Literal, after_first_argument,
                           as_bytes, as_int, as_text, bracket_end, decode_mailbox_name, json_safe, looks_like_imap,
                           tokenize)
from .imap_mailbox import MailboxEvents
from .lines import BULK, DEAD, HOLD, LINE, TLS, Direction, LineDissector
from .sasl import SaslExchange

__all__ = ["ImapDissector", "looks_like_imap", "tokenize", "Literal", "decode_mailbox_name",
           "ANOMALIES", "KNOWN_COMMANDS"]

ANOMALIES = {
    "imap_literal_too_large": "a literal larger than max_literal: hashed and counted, only a prefix kept",
    "imap_line_too_long": "a command or response line (or one item's text) longer than max_line; the item is skipped",
    "imap_nesting_too_deep": "parenthesised lists nested deeper than max_nesting; the deeper levels are skipped",
    "imap_syntax_error": "a command or response that does not follow the IMAP grammar (unbalanced parentheses, unterminated string, missing tag)",
    "imap_unknown_command": "a client command verb that is not a known IMAP command or extension",
    "imap_bad_tag": "a client command whose tag is '*' or '+' or contains characters a tag cannot hold",
    "imap_unmatched_tag": "a tagged completion from the server for a tag no command in flight carries",
    "imap_unexpected_response": "a server response that cannot occur here (continuation with nothing to continue, untagged data before the greeting)",
    "imap_resync": "after a gap or an unparseable line, bytes skipped until the next recognisable command or response",
    "imap_compress_error": "the COMPRESS=DEFLATE stream could not be inflated (corrupt, or cut by a gap); the direction is no longer parsed",
    "imap_decompression_bomb": "the inflated COMPRESS stream grew more than max_decompression_ratio times its compressed size; the direction is no longer parsed",
    "imap_sasl_malformed": "an AUTHENTICATE response that does not decode for its mechanism",
    "imap_partial_mismatch": "a partial fetch piece that does not continue the previous piece of the same section",
}

#: Server greeting words -> software name, used when the server sends no ID.
_GREETING_SOFTWARE = (
    ("dovecot", "Dovecot"), ("cyrus", "Cyrus IMAP"), ("courier", "Courier-IMAP"),
    ("zimbra", "Zimbra"), ("microsoft exchange", "Microsoft Exchange"), ("hmailserver", "hMailServer"),
    ("gimap", "Gmail"), ("twisted", "Twisted"), ("uw imap", "UW IMAP"), ("imapd", None),
)

#: Longest MailboxEvent.detail before optional parts are dropped.
_DETAIL_MAX = 65_536
#: Inflate output piece size (bounded work per call).
_INFLATE_PIECE = 65_536


class _Side(Direction):
    """One direction: the line skeleton's state, the item being framed (its text
    parts, the literals between them), and COMPRESS inflation. ``BULK`` mode
    is a literal's bytes."""

    __slots__ = ("parts", "lits", "markers", "item_ts", "item_len", "item_kept", "lit",
                 "discard", "inflater", "comp_in", "comp_out", "hold_for")

    def __init__(self, side: int, max_line: int):
        super().__init__(side, max_line)
        self.parts: list[bytes] = []
        self.lits: list[Literal] = []
        self.markers: list[bytes] = []
        self.item_ts = 0.0
        self.item_len = 0
        self.item_kept = 0
        self.lit: Literal | None = None
        self.discard = False  # the current item is being skipped (over-long)
        self.inflater = None
        self.comp_in = 0
        self.comp_out = 0
        self.hold_for = None  # the STARTTLS/COMPRESS command the client waits on

    def reset_item(self):
        self.parts = []
        self.lits = []
        self.markers = []
        self.item_len = 0
        self.item_kept = 0
        self.discard = False


class _Pending:
    """A tagged command awaiting its completion, with what it gathered."""

    __slots__ = ("cmd", "verb", "tag", "args", "argtext", "messages", "held", "cred", "sasl", "mailbox",
                 "select", "partial_req", "results", "appends", "extra")

    def __init__(self, cmd: Command, verb: str, tag: str, args: list, argtext: str):
        self.cmd = cmd
        self.verb = verb
        self.tag = tag
        self.args = args
        self.argtext = argtext
        self.messages: list[Message] = []
        self.held = 0  # bytes of the messages held until the completion
        self.cred: Credential | None = None
        self.sasl: SaslExchange | None = None
        self.mailbox: str | None = None
        self.select: dict | None = None
        self.partial_req: dict | None = None
        self.results: list | None = None
        self.appends: list | None = None  # (message, flags) of APPEND
        self.extra: dict = {}


class ImapDissector(FetchMessages, MailboxEvents, LineDissector):
    """IMAP4rev1/IMAP4rev2 dissector for one connection (see the module docstring)."""

    protocol = "imap"
    direction_class = _Side
    resync_anomaly = "imap_resync"
    pipelined_anomaly = "imap_unexpected_response"
    pipelined_detail = "{count} plaintext bytes sent after STARTTLS before the go-ahead"

    def __init__(self, session, config=None):
        super().__init__(session, config)
        self.greeted = False
        self.user: str | None = None
        self.mailbox: str | None = None
        self.uidvalidity: int | None = None
        self.exists: int | None = None
        self.uids: list = []  # sequence number - 1 -> UID (None when unknown)
        self.auth: _Pending | None = None  # AUTHENTICATE awaiting completion
        self.sasl_unseen = False  # a "+" continuation came with nothing in flight
        self.idle: _Pending | None = None
        self.utf8 = False  # UTF8=ACCEPT enabled: mailbox names are UTF-8, not modified UTF-7
        self._init_fetch()

    # -- interface -----------------------------------------------------------

    def feed(self, side: int, data: bytes, ts: float) -> list:
        out: list = []
        s = self.dirs[side]
        if not data or s.mode >= TLS:  # TLS: the router's (TlsStart was returned)
            return out
        if s.inflater is not None:
            self._inflate(side, data, ts, out)
        else:
            self.take(s, data, ts, out)
        return out

    def close(self, ts: float, reason: str) -> list:
        out: list = []
        self._close(ts, out)
        return out

    # -- the line skeleton's hooks -----------------------------------------------

    def client_line(self, line, ts, out):
        self._line(CLIENT, line, ts, out)

    def server_line(self, line, ts, out):
        self._line(SERVER, line, ts, out)

    def overlong(self, s, ts, out):
        if not s.resync:
            out.append(self.anomaly(ts, s.side, "imap_line_too_long", f"line longer than {self.limits.max_line} bytes"))
        # The rest of the line is discarded; a literal it may have announced
        # would be read as lines, so look for a clean start.
        s.reset_item()
        s.resync = True

    def bulk(self, s, data, ts, out):
        """Bytes of a literal."""
        lit = s.lit
        take = lit.remaining
        if take >= len(data):
            lit.add(data)
            data = b""
        else:
            lit.add(data[:take])
            data = data[take:]
        if lit.remaining == 0:
            s.mode = LINE
        return data

    def lose(self, s, length, ts, out):
        if s.mode < TLS and s.inflater is not None:
            out.append(self.anomaly(ts, s.side, "imap_compress_error",
                                    f"gap of {length} bytes inside the compressed stream"))
            self._kill(s.side)
            return
        super().lose(s, length, ts, out)

    def bulk_gap(self, s, length, ts, out):
        lit = s.lit
        if not len(s.buf) and length <= lit.remaining:
            lit.lose(length)
            if lit.remaining == 0:
                s.mode = LINE
            return True  # the literal's byte count keeps the framing
        lit.lose(lit.remaining)
        s.mode = LINE
        self._item_done(s.side, ts, out, cut=True)
        return False

    def lost_sync(self, s, ts, out):
        if s.parts:
            self._item_done(s.side, ts, out, cut=True)
        s.reset_item()

    def hold_overflow(self, ts, out):
        # The client went on talking without a verdict: it has switched.
        self._switch(self.dirs[CLIENT].hold_for, ts, out, assumed=True)

    def give_up(self, p, ts, out):
        self._forget(p)
        self._emit_pending(p, out)

    def restart(self, ts, out):
        """Decrypted plaintext follows STARTTLS: a fresh start of the command/response stream."""
        for s in self.dirs:
            s.reset_item()

    def is_sync_line(self, side, line) -> bool:
        return self._is_sync_line(side, line)

    # -- framing -------------------------------------------------------------

    def _inflate(self, side, data, ts, out):
        s = self.dirs[side]
        d = s.inflater
        s.comp_in += len(data)
        lim = self.limits
        while data and s.mode < TLS:
            backup = d.copy()
            try:
                piece = d.decompress(data, _INFLATE_PIECE)
            except zlib.error as exc:
                # zlib drops the output of a call that fails; inflate again byte
                # by byte up to the bad byte, so that what precedes the damage
                # is parsed however the stream was segmented.
                good = []
                for k in range(len(data)):
                    try:
                        good.append(backup.decompress(data[k:k + 1]))
                    except zlib.error:
                        break
                piece = b"".join(good)
                if piece:
                    self.take(s, piece, ts, out)
                out.append(self.anomaly(ts, side, "imap_compress_error", str(exc)))
                self._kill(side)
                return
            data = d.unconsumed_tail
            s.comp_out += len(piece)
            if s.comp_out > lim.max_decompression_ratio * s.comp_in + lim.max_line:
                out.append(self.anomaly(ts, side, "imap_decompression_bomb",
                                        f"{s.comp_out} bytes from {s.comp_in}"))
                self._kill(side)
                return
            if piece:
                self.take(s, piece, ts, out)
            if d.eof:
                break

    def _kill(self, side):
        s = self.dirs[side]
        s.mode = DEAD
        s.buf.clear()
        s.reset_item()

    def _line(self, side, line, ts, out):
        s = self.dirs[side]
        text = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        detect_literal = True
        if not s.parts:
            s.item_ts = ts
            if side == CLIENT:
                stripped = text.strip()
                if self.auth is not None and b" " not in stripped and stripped.upper() != b"DONE":
                    self._sasl_line(stripped, ts, out)
                    return
                if self.sasl_unseen:
                    # the capture began inside an AUTHENTICATE: a single token after the
                    # continuation is a SASL response (secret, not recorded)
                    self.sasl_unseen = False
                    if stripped and b" " not in stripped and stripped.upper() != b"DONE":
                        return
                if stripped.upper() == b"DONE":
                    self._done(ts, out)
                    return
                if not stripped:
                    return
            else:
                if not text.strip():
                    return
                if text[:1] == b"+" or STATUS_LINE.match(text):
                    detect_literal = False
        s.item_len += len(text)
        if s.item_len > self.limits.max_line and not s.discard:
            out.append(self.anomaly(ts, side, "imap_line_too_long",
                                    f"item text longer than {self.limits.max_line} bytes"))
            s.discard = True
            s.parts, s.lits, s.markers = [], [], []
        m = LITERAL_AT_END.search(text) if detect_literal and text.endswith(b"}") else None
        if m:
            digits = m.group(2)
            size = int(digits) if len(digits) <= MAX_SIZE_DIGITS else HUGE
            lit = self._new_literal(side, size, bool(m.group(1)), not m.group(3), ts, out)
            if not s.discard:
                s.parts.append(text[:m.start()])
                s.markers.append(m.group(0))
                s.lits.append(lit)
            s.lit = lit
            if size:
                s.mode = BULK
            return
        if s.discard:
            s.reset_item()
            return
        s.parts.append(text)
        self._item_done(side, ts, out)

    def _new_literal(self, side, size, binary, sync, ts, out) -> Literal:
        s = self.dirs[side]
        lim = self.limits
        if s.discard:
            return Literal(size, 0, binary, sync)
        budget = lim.max_literal - s.item_kept
        if size <= budget:
            keep = size
        else:
            keep = max(0, min(lim.max_header_bytes, budget))
            out.append(self.anomaly(ts, side, "imap_literal_too_large",
                                    f"{size} bytes > max_literal {lim.max_literal}; {keep} kept, hashed"))
        s.item_kept += keep
        return Literal(size, keep, binary, sync)

    def _item_done(self, side, ts, out, cut=False):
        s = self.dirs[side]
        parts, lits, markers, item_ts = s.parts, s.lits, s.markers, s.item_ts
        s.reset_item()
        if not parts:
            return
        if side == CLIENT:
            self._client_item(parts, lits, markers, item_ts, out, cut)
        else:
            self._server_item(parts, lits, item_ts, ts, out, cut)

    def _is_sync_line(self, side, line) -> bool:
        if side == CLIENT:
            m = CLIENT_SYNC.match(line)
            if not m:
                return line.strip().upper() == b"DONE" and self.idle is not None
            verb = m.group(3).decode("ascii", "replace").upper()
            if m.group(2):
                verb = "UID " + verb
            return verb in KNOWN_COMMANDS
        m = SERVER_SYNC.match(line)
        if not m:
            return False
        tag = m.group(1)
        if tag is None:
            return True
        tag = wire(tag)
        return any(p.tag == tag for p in self.pending)

    # -- the end -------------------------------------------------------------

    def _close(self, ts, out):
        for side in (CLIENT, SERVER):
            s = self.dirs[side]
            if s.mode == BULK and s.lit is not None:
                s.lit.lose(s.lit.remaining)
                s.mode = LINE
                if s.parts:
                    self._item_done(side, ts, out, cut=True)
            elif s.parts:
                self._item_done(side, ts, out, cut=True)
            s.reset_item()
        for key in list(self._partials):
            self._flush_partial(key, out)
        for p in self.pending:
            self._emit_pending(p, out)
        self.pending.clear()
        self.auth = self.idle = None

    # -- client side ---------------------------------------------------------

    def _sasl_line(self, text, ts, out):
        p = self.auth
        sasl = p.sasl
        before = sasl.malformed
        sasl.client(text)
        if sasl.malformed and not before:
            out.append(self.anomaly(ts, CLIENT, "imap_sasl_malformed",
                                    f"{sasl.mechanism} response does not decode"))

    def _done(self, ts, out):
        # DONE ends IDLE; the IDLE command completes with the tagged reply that follows.
        if self.idle is None:
            out.append(self.anomaly(ts, CLIENT, "imap_unknown_command", "DONE without IDLE"))

    def _argtext(self, parts, markers, words) -> str:
        pieces = []
        for i, part in enumerate(parts):
            pieces.append(part)
            if i < len(markers):
                pieces.append(markers[i])
        full = b"".join(pieces)
        split = full.split(None, words)
        return wire(split[words]) if len(split) > words else ""

    def _mailbox_name(self, tok) -> str | None:
        name = as_text(tok)
        return name if self.utf8 else decode_mailbox_name(name)

    def _client_item(self, parts, lits, markers, ts, out, cut):
        tokens, problems = tokenize(parts, lits, self.limits.max_nesting)
        if problems and not cut:
            self._problems(problems, ts, CLIENT, out)
        if not tokens or not isinstance(tokens[0], str):
            out.append(self.anomaly(ts, CLIENT, "imap_syntax_error", "command without a tag"))
            return
        tag = tokens[0]
        if len(tokens) < 2 or not isinstance(tokens[1], str):
            out.append(self.anomaly(ts, CLIENT, "imap_syntax_error", f"tag {tag[:40]!r} without a command"))
            return
        if tag in ("*", "+") or not TAG_OK.match(tag.encode("utf-8", "replace")):
            out.append(self.anomaly(ts, CLIENT, "imap_bad_tag", tag[:80]))
        verb = tokens[1].upper()
        args = tokens[2:]
        words = 2
        if verb == "UID" and args and isinstance(args[0], str):
            verb = "UID " + args[0].upper()
            args = args[1:]
            words = 3
        if verb not in KNOWN_COMMANDS and not verb.startswith("X"):
            out.append(self.anomaly(ts, CLIENT, "imap_unknown_command", verb[:80]))
        argtext = self._argtext(parts, markers, words)
        cmd = Command(self.session.session_id, "imap", ts, verb[:200], argtext, tag=tag, seq=self.next_seq())
        p = _Pending(cmd, verb, tag, args, argtext)
        handler = getattr(self, "_cmd_" + verb.replace(" ", "_").replace("-", "_"), None)
        if handler is not None:
            handler(p, args, ts, out)
        self.push(p, ts, out)

    def _problems(self, problems, ts, side, out):
        for prob in dict.fromkeys(problems):
            if prob == "nesting":
                out.append(self.anomaly(ts, side, "imap_nesting_too_deep",
                                        f"deeper than {self.limits.max_nesting}"))
            else:
                out.append(self.anomaly(ts, side, "imap_syntax_error", prob))

    def _cmd_LOGIN(self, p, args, ts, out):
        p.cmd.secret_at = after_first_argument(p.cmd.argument)  # the password, atom, string or literal
        user = as_text(args[0]) if args else None
        secret = as_text(args[1]) if len(args) > 1 else None
        p.cred = Credential(self.session.session_id, "imap", ts, "LOGIN", user, secret, None, "LOGIN command")

    def _cmd_AUTHENTICATE(self, p, args, ts, out):
        mech = (as_text(args[0]) or "").upper() if args else ""
        ir = as_bytes(args[1]) if len(args) > 1 else None
        if ir is not None:
            p.cmd.secret_at = after_first_argument(p.cmd.argument)  # the initial response
        p.sasl = SaslExchange(mech, ir)
        if p.sasl.malformed:
            out.append(self.anomaly(ts, CLIENT, "imap_sasl_malformed", f"{mech} initial response does not decode"))
        self.auth = p

    def _cmd_STARTTLS(self, p, args, ts, out):
        self._hold(p)

    def _cmd_COMPRESS(self, p, args, ts, out):
        self._hold(p)

    def _hold(self, p):
        self.hold()
        self.dirs[CLIENT].hold_for = p

    def _cmd_IDLE(self, p, args, ts, out):
        self.idle = p

    def _cmd_ENABLE(self, p, args, ts, out):
        p.extra["caps"] = [as_text(a).upper() for a in args if isinstance(a, str)]

    def _cmd_ID(self, p, args, ts, out):
        software = self._id_software(args[0] if args else None)
        if software:
            self.session.client_software = software

    @staticmethod
    def _id_software(tok) -> str | None:
        if not isinstance(tok, list):
            return None
        fields: dict[str, str] = {}
        for i in range(0, len(tok) - 1, 2):
            k, v = as_text(tok[i]), as_text(tok[i + 1])
            if k and v:
                fields.setdefault(k.lower(), v)
        name = fields.get("name")
        if name:
            version = fields.get("version")
            return f"{name} {version}" if version else name
        if fields:
            return ", ".join(f"{k}={v}" for k, v in fields.items())[:200]
        return None

    # -- server side ---------------------------------------------------------

    def _server_item(self, parts, lits, item_ts, ts, out, cut):
        first = parts[0]
        if first[:1] == b"+":
            self._continuation(first[1:].strip(), ts, out)
            self.greeted = True
            return
        if not lits:
            m = STATUS_PARTS.match(first)
            if m:
                tag = wire(m.group(1))
                status = m.group(2).decode("ascii").upper()
                rest = m.group(3) or b""
                self._status(tag, status, rest, item_ts, ts, out)
                return
        tokens, problems = tokenize(parts, lits, self.limits.max_nesting)
        if problems and not cut:
            self._problems(problems, ts, SERVER, out)
        if not tokens:
            return
        if tokens[0] != "*":
            out.append(self.anomaly(ts, SERVER, "imap_syntax_error",
                                    f"response line not tagged or untagged: {as_text(first[:60])!r}"))
            return
        self.greeted = True
        self._untagged(tokens, item_ts, ts, out, cut)

    def _continuation(self, text, ts, out):
        if self.auth is not None:
            self.auth.sasl.server(text)
            return
        c = self.dirs[CLIENT]
        if not self.pending and not c.parts and c.mode != BULK:
            # "+" answers a command in flight or a synchronising literal being sent
            out.append(self.anomaly(ts, SERVER, "imap_unexpected_response", "continuation with no command in flight"))
            self.sasl_unseen = True

    def _resp_code(self, rest: bytes):
        """Split resp-text into (code name, code tokens, text)."""
        if rest[:1] != b"[":
            return None, [], wire(rest)
        end = bracket_end(rest, 0)
        inner = rest[1:end - 1] if rest[end - 1:end] == b"]" else rest[1:end]
        tokens, _ = tokenize([inner], [], self.limits.max_nesting)
        name = tokens[0].upper() if tokens and isinstance(tokens[0], str) else None
        return name, tokens[1:], wire(rest[end:].strip())

    def _status(self, tag, status, rest, item_ts, ts, out):
        code, code_args, text = self._resp_code(rest)
        if tag == "*":
            if not self.greeted and status in ("OK", "PREAUTH", "BYE"):
                self.greeted = True
                self._greeting(status, rest, code, code_args, text, ts, out)
                return
            self.greeted = True
            self._apply_code(code, code_args, None, ts, out)
            return
        self._tagged(tag, status, rest, code, code_args, ts, out)

    def _greeting(self, status, rest, code, code_args, text, ts, out):
        sess = self.session
        cmd = Command(sess.session_id, "imap", ts, "", "", None, status, wire(rest), ts, None,
                      seq=0)
        out.append(cmd)
        sess.banner = text
        if status == "PREAUTH":
            sess.auth_mechanism = sess.auth_mechanism or "PREAUTH"
        self._apply_code(code, code_args, None, ts, out)
        if not sess.server_software:
            low = text.lower()
            for word, name in _GREETING_SOFTWARE:
                if word in low:
                    if name:
                        sess.server_software = name
                    break

    def _apply_code(self, code, args, p, ts, out):
        """Act on a response code, for completion ``p`` or untagged (p None)."""
        if code is None:
            return
        if code == "CAPABILITY":
            self._capabilities(args)
            return
        sel = p.select if p is not None else None
        if sel is None:
            sp = self._find(SELECT_VERBS)
            sel = sp.select if sp is not None else None
        if code == "UIDVALIDITY":
            v = as_int(args[0]) if args else None
            if sel is not None:
                sel["uidvalidity"] = v
            elif v is not None:
                self.uidvalidity = v
        elif code in ("UIDNEXT", "HIGHESTMODSEQ", "UNSEEN"):
            if sel is not None and args:
                sel[code.lower()] = as_int(args[0])
        elif code == "PERMANENTFLAGS":
            if sel is not None and args and isinstance(args[0], list):
                sel["permanentflags"] = [as_text(f) for f in args[0] if isinstance(f, str)]
        elif code in ("READ-WRITE", "READ-ONLY"):
            if sel is not None:
                sel["access"] = code
        elif code == "APPENDUID" and p is not None:
            p.extra["appenduid"] = (as_int(args[0]) if args else None, as_text(args[1]) if len(args) > 1 else None)
        elif code == "COPYUID" and p is not None:
            p.extra["copyuid"] = tuple(as_text(a) for a in args[:3])
        elif code == "CLOSED":
            # RFC 7162: the previous mailbox is closed, a new SELECT is under way
            pass

    def _capabilities(self, caps):
        names = [c for c in (as_text(t) for t in caps if isinstance(t, str)) if c]
        if names:
            self.session.extensions = names[:1000]

    def _find(self, verbs, tag=None) -> _Pending | None:
        for p in self.pending:
            if p.verb in verbs and (tag is None or p.tag == tag):
                return p
        return None

    def _forget(self, p):
        if self.auth is p:
            self.auth = None
        if self.idle is p:
            self.idle = None
        c = self.dirs[CLIENT]
        if c.hold_for is p:
            c.hold_for = None
            if c.mode == HOLD:
                c.mode = LINE

    def _tagged(self, tag, status, rest, code, code_args, ts, out):
        self.greeted = True
        c = self.dirs[CLIENT]
        if (status in ("NO", "BAD") and c.mode == BULK and c.lit is not None and c.lit.sync
                and c.lit.remaining == c.lit.size and not c.lit.missing and c.parts
                and c.parts[0].split(None, 1)[:1] == [tag.encode("utf-8", "replace")]):
            # The server refused a synchronising literal before the client sent
            # it: the command ends here and the client's next bytes are a new line.
            if c.lits and c.lits[-1] is c.lit:
                c.lits.pop()
            c.mode = LINE
            c.lit = None
            self._item_done(CLIENT, ts, out)
        p = None
        for cand in self.pending:
            if cand.tag == tag:
                p = cand
                break
        if p is None:
            out.append(self.anomaly(ts, SERVER, "imap_unmatched_tag", f"{tag[:60]} {status}"))
            return
        self.pending.remove(p)
        self._forget(p)
        cmd = p.cmd
        cmd.reply_code = status
        cmd.reply_text = wire(rest)
        cmd.reply_ts = ts
        cmd.latency = ts - cmd.ts
        self._apply_code(code, code_args, p, ts, out)
        selected = self.mailbox
        done = getattr(self, "_done_" + p.verb.replace(" ", "_"), None)
        if done is not None:
            done(p, status, ts, out)
        # the mailbox the command ran in: the one it selected, else the one it closed
        cmd.mailbox = self.mailbox if self.mailbox is not None else selected
        self._emit_pending(p, out)
        if p.verb in ("STARTTLS", "COMPRESS"):
            if status == "OK":
                self._switch(p, ts, out)
            else:
                self.drain(self.dirs[CLIENT], ts, out)

    def _emit_pending(self, p, out):
        """Emit a finished (or abandoned) command with what it gathered."""
        cmd = p.cmd
        cmd.user = self.user
        if cmd.mailbox is None:
            cmd.mailbox = self.mailbox
        out.append(cmd)
        if p.sasl is not None and p.cred is None:
            sasl = p.sasl
            p.cred = Credential(self.session.session_id, "imap", cmd.ts, sasl.mechanism, sasl.user, sasl.secret,
                                None, "; ".join(x for x in ("AUTHENTICATE", sasl.detail,
                                                            "cancelled" if sasl.cancelled else "") if x))
        if p.cred is not None:
            if cmd.reply_code is not None:
                p.cred.success = cmd.reply_code == "OK"
            out.append(p.cred)
        for msg in p.messages:
            msg.reply_code = cmd.reply_code
            msg.reply_text = cmd.reply_text
            out.append(msg)
        p.messages = []

    def _switch(self, p, ts, out, assumed=False):
        """STARTTLS or COMPRESS accepted: both directions change from here."""
        c = self.dirs[CLIENT]
        srv = self.dirs[SERVER]
        c.hold_for = None
        if c.mode == HOLD:
            c.mode = LINE
        if p is None:
            c.buf.clear()
            return
        if p.verb == "STARTTLS":
            self.start_tls(ts, out, assumed=assumed)
            return
        # COMPRESS DEFLATE (RFC 4978): raw deflate in both directions.
        held = c.buf.read_all()
        c.buf.clear()
        c.inflater = zlib.decompressobj(-15)
        rest = srv.buf.read_all()
        srv.buf.clear()
        srv.inflater = zlib.decompressobj(-15)
        if held:
            self._inflate(CLIENT, held, ts, out)
        if rest:
            self._inflate(SERVER, rest, ts, out)

    # -- untagged data -------------------------------------------------------

    def _untagged(self, tokens, item_ts, ts, out, cut):
        if len(tokens) < 2:
            return
        head = tokens[1]
        n = as_int(head)
        if n is not None:
            what = tokens[2].upper() if len(tokens) > 2 and isinstance(tokens[2], str) else ""
            if what == "FETCH":
                items = tokens[3] if len(tokens) > 3 and isinstance(tokens[3], list) else []
                self._fetch(n, items, item_ts, ts, out, cut)
            elif what == "EXISTS":
                self._exists(n, ts, out)
            elif what == "EXPUNGE":
                self._expunge(n, ts, out)
            elif what == "RECENT":
                sp = self._find(SELECT_VERBS)
                if sp is not None:
                    sp.select["recent"] = n
            return
        if not isinstance(head, str):
            return
        kw = head.upper()
        args = tokens[2:]
        if kw == "CAPABILITY":
            self._capabilities(args)
        elif kw in ("LIST", "LSUB", "XLIST"):
            self._list(kw, args, ts, out)
        elif kw == "STATUS":
            self._status_data(args, ts, out)
        elif kw in ("SEARCH", "SORT"):
            p = self._find(SEARCH_VERBS)
            if p is not None and p.results is not None:
                p.results.extend(a for a in args if isinstance(a, str) and a.isdigit())
                if len(args) and isinstance(args[-1], list):  # (MODSEQ n)
                    p.extra["modseq"] = as_text(args[-1][-1]) if args[-1] else None
        elif kw == "ESEARCH":
            self._esearch(args)
        elif kw == "FLAGS":
            sp = self._find(SELECT_VERBS)
            flags = [as_text(f) for f in args[0] if isinstance(f, str)] if args and isinstance(args[0], list) else []
            if sp is not None:
                sp.select["flags"] = flags
        elif kw == "ID":
            software = self._id_software(args[0] if args else None)
            if software:
                self.session.server_software = software
        elif kw == "ENABLED":
            if any(isinstance(a, str) and a.upper() in ("UTF8=ACCEPT", "UTF8=ONLY", "IMAP4REV2") for a in args):
                self.utf8 = True
        elif kw == "NAMESPACE":
            self._event(ts, "namespace", out, mailbox=None, detail=json.dumps(json_safe(args))[:_DETAIL_MAX])
        elif kw == "VANISHED":
            self._vanished(args, ts, out)
        elif kw == "BYE":
            pass

    # -- completions ---------------------------------------------------------

    def _done_LOGIN(self, p, status, ts, out):
        if status == "OK" and p.cred is not None:
            self.user = p.cred.user
            self.session.auth_user = p.cred.user
            self.session.auth_mechanism = "LOGIN"

    def _done_AUTHENTICATE(self, p, status, ts, out):
        if status == "OK" and p.sasl is not None:
            if p.sasl.user:
                self.user = p.sasl.user
                self.session.auth_user = p.sasl.user
            self.session.auth_mechanism = p.sasl.mechanism

    def _done_ENABLE(self, p, status, ts, out):
        if status == "OK" and any(c in ("UTF8=ACCEPT", "UTF8=ONLY", "IMAP4REV2") for c in p.extra.get("caps", [])):
            self.utf8 = True

    def _done_LOGOUT(self, p, status, ts, out):
        self._deselect()

