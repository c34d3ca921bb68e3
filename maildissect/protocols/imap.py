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

docs/protocols/imap.md describes the records, the anomalies and the limits.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections import OrderedDict

from ..anomalies import StrictError
from ..model import CLIENT, SERVER, Command, Credential, MailboxEvent, Message
from ..text import decode_mailbox, decode_words, wire
from .base import OVERLONG, Dissector, StreamBuffer, TlsStart
from .sasl import SaslExchange

__all__ = ["ImapDissector", "looks_like_imap", "tokenize", "Literal", "decode_mailbox_name",
           "ANOMALIES"]

ANOMALIES = {
    "imap_literal_too_large": "a literal larger than max_literal: hashed and counted, only a prefix kept",
    "imap_line_too_long": "a command or response line (or one item's text) longer than max_line; the item is skipped",
    "imap_nesting_too_deep": "parenthesised lists nested deeper than max_nesting; the deeper levels are skipped",
    "imap_too_many_in_flight": "more than max_commands_in_flight tagged commands awaiting completion; the oldest is closed without reply",
    "imap_syntax_error": "a command or response that does not follow the IMAP grammar (unbalanced parentheses, unterminated string, missing tag)",
    "imap_unknown_command": "a client command verb that is not a known IMAP command or extension",
    "imap_bad_tag": "a client command whose tag is '*' or '+' or contains characters a tag cannot hold",
    "imap_unmatched_tag": "a tagged completion from the server for a tag no command in flight carries",
    "imap_unexpected_response": "a server response that cannot occur here (continuation with nothing to continue, untagged data before the greeting)",
    "imap_resync": "after a gap or an unparseable line, bytes skipped until the next recognisable command or response",
    "imap_compress_error": "the COMPRESS=DEFLATE stream could not be inflated (corrupt, or cut by a gap); the direction is no longer parsed",
    "imap_decompression_bomb": "the inflated COMPRESS stream grew more than max_decompression_ratio times its compressed size; the direction is no longer parsed",
    "imap_sasl_malformed": "an AUTHENTICATE response that does not decode for its mechanism",
    "imap_message_parse_error": "the message parser failed on a fetched or appended message; size and hash recorded without header fields",
    "imap_partial_mismatch": "a partial fetch piece that does not continue the previous piece of the same section",
}

# ---------------------------------------------------------------------------
# Tokenizer

_LITERAL_AT_END = re.compile(rb"(~?)\{(\d+)(\+)?\}$")
_ATOM = re.compile(rb'[^\x00-\x20()"\[\x7f]+')
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.S)
_UNESCAPE = re.compile(rb"\\(.)", re.S)
#: Status responses carry resp-text, which never holds a literal: a trailing
#: "{5}" in a greeting or completion text is text, not a literal announcement.
_STATUS_LINE = re.compile(rb"^(?:\*|[^\s*+]+) +(?:OK|NO|BAD|BYE|PREAUTH)(?:[ \[]|$)", re.I)
_STATUS_PARTS = re.compile(rb"^(\S+) +(OK|NO|BAD|BYE|PREAUTH)(?: +(.*))?$", re.I | re.S)
#: Literal sizes beyond this many digits are treated as "the rest of the stream".
_MAX_SIZE_DIGITS = 30
_HUGE = 10 ** _MAX_SIZE_DIGITS


class Literal:
    """One literal: its declared size, the bytes kept and what was lost.

    Bytes are appended as chunks and joined once. When the literal is larger
    than the keep budget, only a prefix is kept and the whole literal is
    hashed as it streams past, so ``size`` and :meth:`sha256` stay exact.
    ``missing`` counts bytes never seen (a capture gap, or the connection
    ending inside the literal).
    """

    __slots__ = ("size", "remaining", "chunks", "kept", "keep", "hasher", "missing", "binary",
                 "sync", "_data")

    def __init__(self, size: int, keep: int, binary: bool = False, sync: bool = True):
        self.size = size
        self.remaining = size
        self.chunks: list[bytes] = []
        self.kept = 0
        self.keep = keep
        self.hasher = hashlib.sha256() if size > keep and keep >= 0 else None
        self.missing = 0
        self.binary = binary  # literal8 (~{n})
        self.sync = sync  # synchronising: the client waits for "+" before sending it
        self._data: bytes | None = None

    def add(self, chunk: bytes) -> None:
        """Bytes of the literal, in order."""
        self.remaining -= len(chunk)
        if self.hasher is not None:
            self.hasher.update(chunk)
        room = self.keep - self.kept
        if room > 0:
            if len(chunk) > room:
                chunk = chunk[:room]
            self.chunks.append(chunk)
            self.kept += len(chunk)

    def lose(self, n: int) -> None:
        """``n`` bytes of the literal will never be seen."""
        n = min(n, self.remaining)
        self.remaining -= n
        self.missing += n

    @property
    def data(self) -> bytes:
        """The bytes kept (all of them unless truncated or lost)."""
        if self._data is None:
            self._data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
            self.chunks = [self._data] if self._data else []
        return self._data

    @property
    def truncated(self) -> bool:
        """Seen bytes were not all kept (literal over the keep budget)."""
        return self.kept < self.size - self.missing - self.remaining

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and self.missing == 0 and not self.truncated

    def sha256(self) -> str | None:
        """Hash of the whole literal, or None when bytes were lost."""
        if self.missing or self.remaining:
            return None
        if self.hasher is not None:
            return self.hasher.hexdigest()
        return hashlib.sha256(self.data).hexdigest()

    def __eq__(self, other):
        return (isinstance(other, Literal) and self.size == other.size and self.missing == other.missing
                and self.data == other.data)

    def __repr__(self):
        return f"Literal({self.size}, kept={self.kept}, missing={self.missing})"


def _bracket_end(text: bytes, j: int) -> int:
    """Index just past the ``]`` matching ``text[j] == '['`` (quotes respected)."""
    depth = 0
    n = len(text)
    while j < n:
        c = text[j]
        if c == 0x5B:
            depth += 1
        elif c == 0x5D:
            depth -= 1
            if depth == 0:
                return j + 1
        elif c == 0x22:
            m = _QUOTED.match(text, j)
            if m:
                j = m.end()
                continue
        j += 1
    return n


def tokenize(parts: list[bytes], lits: list, max_nesting: int = 100) -> tuple[list, list[str]]:
    """Tokens of one item whose text ``parts`` are separated by literals ``lits``.

    Returns ``(tokens, problems)``: atoms as ``str`` (``BODY[HEADER.FIELDS
    (FROM)]<0>`` is one atom), strings as ``bytes``, NIL as ``None``,
    literals as given, parenthesised lists as ``list``. ``problems`` names
    what was wrong (unbalanced parentheses, unterminated string, nesting
    beyond ``max_nesting`` -- deeper levels are dropped); never raises.
    """
    root: list = []
    stack = [root]
    cur = root
    skip = 0  # depth of levels being dropped beyond max_nesting
    problems: list[str] = []
    nlits = len(lits)
    for idx, text in enumerate(parts):
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if c == 0x20 or c == 0x09:
                i += 1
                continue
            if c == 0x28:  # (
                i += 1
                if skip or len(stack) > max_nesting:
                    if not skip:
                        problems.append("nesting")
                    skip += 1
                    continue
                new: list = []
                cur.append(new)
                stack.append(new)
                cur = new
                continue
            if c == 0x29:  # )
                i += 1
                if skip:
                    skip -= 1
                elif len(stack) > 1:
                    stack.pop()
                    cur = stack[-1]
                elif "unbalanced parentheses" not in problems:
                    problems.append("unbalanced parentheses")
                continue
            if c == 0x22:  # "
                m = _QUOTED.match(text, i)
                if m:
                    val = m.group(1)
                    if b"\\" in val:
                        val = _UNESCAPE.sub(rb"\1", val)
                    i = m.end()
                else:
                    val = text[i + 1:]
                    i = n
                    problems.append("unterminated string")
                if not skip:
                    cur.append(val)
                continue
            j = i
            while True:
                m = _ATOM.match(text, j)
                if m:
                    j = m.end()
                if j < n and text[j] == 0x5B:  # [section] belongs to the atom
                    j = _bracket_end(text, j)
                    continue
                break
            if j == i:  # a control character: skip it
                i += 1
                continue
            tok = wire(text[i:j])
            i = j
            if not skip:
                cur.append(None if len(tok) == 3 and tok.upper() == "NIL" else tok)
        if idx < nlits and not skip:
            cur.append(lits[idx])
    if len(stack) > 1 and "unbalanced parentheses" not in problems:
        problems.append("unbalanced parentheses")
    return root, problems


_FIRST_ARGUMENT = re.compile(r'[ \t]*(?:"(?:[^"\\]|\\.)*"|~?\{\d+\+?\}|[^\x00-\x20()"\[\x7f{]+)[ \t]*', re.S)


def _after_first_argument(argtext: str) -> int:
    """Where the arguments after the first (an atom, quoted string or literal marker) begin
    in a command's argument text; 0 when the first cannot be told apart (all is secret then)."""
    m = _FIRST_ARGUMENT.match(argtext)
    return m.end() if m else 0


def as_text(tok) -> str | None:
    """An atom, string or literal as text (UTF-8, invalid bytes replaced)."""
    if tok is None or isinstance(tok, str):
        return tok
    if isinstance(tok, bytes):
        return wire(tok)
    if isinstance(tok, Literal):
        return wire(tok.data)
    return None


def as_bytes(tok) -> bytes | None:
    if isinstance(tok, bytes):
        return tok
    if isinstance(tok, Literal):
        return tok.data
    if isinstance(tok, str):
        return tok.encode("utf-8")
    return None


def as_int(tok) -> int | None:
    if isinstance(tok, str) and tok.isdigit() and len(tok) <= 20:
        return int(tok)
    return None


def decode_mailbox_name(name: str | None) -> str | None:
    """Decode IMAP's modified UTF-7 (``&AOQ-`` -> ``ä``, ``&-`` -> ``&``).

    Names that are not valid modified UTF-7 are returned unchanged
    (:func:`maildissect.text.decode_mailbox`).
    """
    if not name or "&" not in name:
        return name
    return decode_mailbox(name)[0]


# ---------------------------------------------------------------------------
# Detection

_CLIENT_FIRST = re.compile(
    rb"^[A-Za-z0-9.\-_]{1,32} +(?:CAPABILITY|LOGIN|AUTHENTICATE|STARTTLS|ID|NOOP|LOGOUT|SELECT|EXAMINE|"
    rb"LIST|LSUB|NAMESPACE|ENABLE|COMPRESS|STATUS)\b", re.I)


def looks_like_imap(client_first: bytes, server_first: bytes) -> bool:
    """True when the first bytes look like IMAP.

    The server greets with ``* OK``, ``* PREAUTH`` or ``* BYE``; the client's
    first command is tagged (``a1 CAPABILITY``, ``. LOGIN u p``...).
    """
    s = server_first[:64].upper()
    if s.startswith((b"* OK", b"* PREAUTH", b"* BYE")):
        return True
    return bool(client_first and _CLIENT_FIRST.match(client_first[:256]))


# ---------------------------------------------------------------------------
# Command table

#: Commands of RFC 3501/9051 and registered extensions (the UID forms are
#: recorded as "UID FETCH" etc.).
KNOWN_COMMANDS = frozenset(w.replace("_", " ") for w in """
CAPABILITY NOOP LOGOUT STARTTLS AUTHENTICATE LOGIN SELECT EXAMINE CREATE DELETE RENAME SUBSCRIBE
UNSUBSCRIBE LIST LSUB XLIST STATUS APPEND CHECK CLOSE UNSELECT EXPUNGE SEARCH FETCH STORE COPY MOVE
IDLE ENABLE ID NAMESPACE COMPRESS GETQUOTA GETQUOTAROOT SETQUOTA GETACL SETACL DELETEACL LISTRIGHTS
MYRIGHTS GETMETADATA SETMETADATA SORT THREAD REPLACE UNAUTHENTICATE NOTIFY LANGUAGE GENURLAUTH
RESETKEY URLFETCH ESEARCH CONVERT GETJMAPACCESS XAPPLEPUSHSERVICE
UID_FETCH UID_STORE UID_COPY UID_MOVE UID_SEARCH UID_EXPUNGE UID_SORT UID_THREAD UID_REPLACE
""".split())

_FETCH_VERBS = ("FETCH", "UID FETCH")
_STORE_VERBS = ("STORE", "UID STORE")
_SEARCH_VERBS = ("SEARCH", "UID SEARCH", "SORT", "UID SORT", "ESEARCH")
_SELECT_VERBS = ("SELECT", "EXAMINE")

_CLIENT_SYNC = re.compile(rb"^([^\s(){}\"%*+\\]{1,64}) +(UID +)?([A-Za-z][A-Za-z0-9-]*)")
_SERVER_SYNC = re.compile(
    rb"^(?:\* +(?:OK|NO|BAD|BYE|PREAUTH|CAPABILITY|LIST|LSUB|XLIST|STATUS|SEARCH|ESEARCH|FLAGS|ID|"
    rb"NAMESPACE|ENABLED|VANISHED|\d+ +(?:EXISTS|RECENT|EXPUNGE|FETCH +\())|([^\s*+]+) +(?:OK|NO|BAD)\b)",
    re.I)
_TAG_OK = re.compile(rb"^[^\x00-\x20(){}\"%*+\\\x7f]+$")
_SECTION = re.compile(r"^(BODY|BINARY)(?:\.PEEK)?\[(.*)\](?:<(\d+)(?:\.(\d+))?>)?$", re.S)
_PART_SPEC = re.compile(r"^((?:\d+\.)*\d+)(?:\.(.*))?$", re.S)

#: Server greeting words -> software name, used when the server sends no ID.
_GREETING_SOFTWARE = (
    ("dovecot", "Dovecot"), ("cyrus", "Cyrus IMAP"), ("courier", "Courier-IMAP"),
    ("zimbra", "Zimbra"), ("microsoft exchange", "Microsoft Exchange"), ("hmailserver", "hMailServer"),
    ("gimap", "Gmail"), ("twisted", "Twisted"), ("uw imap", "UW IMAP"), ("imapd", None),
)

_LINE, _LITERAL, _HOLD, _TLS, _DEAD = range(5)

#: Cached per-message facts (size, body structure) for part and partial fetches:
#: at most this many messages, each with at most _KNOWN_PARTS parts.
_KNOWN_CACHE = 1_000
_KNOWN_PARTS = 64
#: Partial-fetch reassemblies under way at once.
_PARTIALS = 64
#: Longest MailboxEvent.detail before optional parts are dropped.
_DETAIL_MAX = 65_536
#: Inflate output piece size (bounded work per call).
_INFLATE_PIECE = 65_536


class _Side:
    """Framing state of one direction."""

    __slots__ = ("buf", "mode", "parts", "lits", "markers", "item_ts", "item_len", "item_kept", "lit",
                 "discard", "resync", "skipped", "inflater", "comp_in", "comp_out", "hold_for")

    def __init__(self, max_line: int):
        self.buf = StreamBuffer(max_line)
        self.mode = _LINE
        self.parts: list[bytes] = []
        self.lits: list[Literal] = []
        self.markers: list[bytes] = []
        self.item_ts = 0.0
        self.item_len = 0
        self.item_kept = 0
        self.lit: Literal | None = None
        self.discard = False  # the current item is being skipped (over-long)
        self.resync = False  # skipping until a recognisable line
        self.skipped = 0
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


class _Partial:
    """Pieces of one section fetched with <origin.octets>, being reassembled."""

    __slots__ = ("chunks", "next", "ts", "source", "complete", "command_seq")

    def __init__(self, ts, source, command_seq=None):
        self.chunks: list[bytes] = []
        self.next = 0  # origin the next piece must have
        self.ts = ts
        self.source = source
        self.complete = True
        self.command_seq = command_seq  # the FETCH that brought the first piece (Message.command_seq)


#: MIME anomalies that only say a message was cut short; for a message already
#: marked incomplete (a header-only, partial or truncated fetch) they repeat
#: what ``complete=False`` says and are dropped.
_TRUNCATION_ANOMALIES = frozenset({"mime_missing_closing_boundary", "mime_boundary_not_found",
                                   "mime_missing_header_separator"})


def _fill(msg: Message, raw: bytes, config) -> list:
    """Fill ``msg`` from ``raw`` with the shared MIME parser; its anomalies."""
    from .. import mime  # imported on use: the MIME layer is optional for framing
    found = mime.fill_message(msg, raw, config)
    if not msg.complete:
        found = [a for a in found if a.name not in _TRUNCATION_ANOMALIES]
    return found


def _json_safe(value, depth=0):
    """A token tree as JSON-able values (strings for bytes and literals)."""
    if depth > 64:
        return None
    if isinstance(value, list):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, (bytes, Literal)):
        return as_text(value)
    return value


def _address_list(tok) -> list[str]:
    """ENVELOPE address list -> ["Name <mailbox@host>", ...] (groups flattened)."""
    out: list[str] = []
    if not isinstance(tok, list):
        return out
    for addr in tok:
        if not isinstance(addr, list) or len(addr) < 4:
            continue
        name, _adl, mailbox, host = (as_text(x) for x in addr[:4])
        if host is None:  # group syntax markers (RFC 3501 7.4.2)
            continue
        email = f"{mailbox or ''}@{host}"
        out.append(f"{_decode_words(name)} <{email}>" if name else email)
    return out


def _decode_words(value: str | None) -> str | None:
    """Decode RFC 2047 encoded words in an ENVELOPE string (charsets as WHATWG
    resolves them; an unknown one reads as UTF-8, a bad word stays as written)."""
    if not value or "=?" not in value:
        return value
    return decode_words(value)[0]


def parse_envelope(tok) -> dict | None:
    """An ENVELOPE list as a dict (RFC 3501 7.4.2), or None when malformed."""
    if not isinstance(tok, list) or len(tok) < 10:
        return None
    env = {
        "date": as_text(tok[0]),
        "subject": _decode_words(as_text(tok[1])),
        "from": _address_list(tok[2]),
        "sender": _address_list(tok[3]),
        "reply_to": _address_list(tok[4]),
        "to": _address_list(tok[5]),
        "cc": _address_list(tok[6]),
        "bcc": _address_list(tok[7]),
        "in_reply_to": as_text(tok[8]),
        "message_id": as_text(tok[9]),
    }
    return {k: v for k, v in env.items() if v not in (None, [])}


def _params(tok) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(tok, list):
        for i in range(0, len(tok) - 1, 2):
            k, v = as_text(tok[i]), as_text(tok[i + 1])
            if k:
                out[k.lower()] = _decode_words(v) if v else v
    return out


def flatten_bodystructure(tok, path: str = "", out: list | None = None, depth: int = 0,
                          label: str | None = None) -> list[dict]:
    """A BODYSTRUCTURE (or BODY) list as a flat list of parts.

    Each part is a dict with ``part`` (IMAP part number, "" for a multipart
    root), ``type`` (``text/plain``), and where present ``params``, ``id``,
    ``description``, ``encoding``, ``size``, ``lines``, ``md5``,
    ``disposition``, ``filename``, ``language``, ``location``.
    """
    if out is None:
        out = []
    if not isinstance(tok, list) or not tok or depth > 64:
        return out
    if isinstance(tok[0], list):  # multipart: (part part ... subtype [ext])
        i = 0
        children = []
        while i < len(tok) and isinstance(tok[i], list):
            children.append(tok[i])
            i += 1
        subtype = (as_text(tok[i]) or "mixed").lower() if i < len(tok) else "mixed"
        entry = {"part": path if label is None else label, "type": f"multipart/{subtype}"}
        ext = tok[i + 1:]
        if ext:
            if ext[0] is not None:
                entry["params"] = _params(ext[0])
            if len(ext) > 1 and isinstance(ext[1], list) and ext[1]:
                entry["disposition"] = (as_text(ext[1][0]) or "").lower()
        out.append(entry)
        for n, child in enumerate(children, 1):
            flatten_bodystructure(child, f"{path}.{n}" if path else str(n), out, depth + 1)
        return out
    # single part: type subtype params id description encoding size [...]
    part = path or "1"
    f = tok + [None] * max(0, 7 - len(tok))
    mtype = f"{(as_text(f[0]) or 'text').lower()}/{(as_text(f[1]) or 'plain').lower()}"
    entry: dict = {"part": part, "type": mtype}
    params = _params(f[2])
    if params:
        entry["params"] = params
    for key, idx in (("id", 3), ("description", 4)):
        v = as_text(f[idx]) if not isinstance(f[idx], list) else None
        if v:
            entry[key] = v
    enc = as_text(f[5]) if not isinstance(f[5], list) else None
    if enc:
        entry["encoding"] = enc.lower()
    size = as_int(f[6])
    if size is not None:
        entry["size"] = size
    rest = tok[7:]
    nested = None
    if mtype == "message/rfc822" and len(rest) >= 3:
        env = parse_envelope(rest[0])
        if env:
            entry["envelope"] = env
        nested = rest[1]
        lines = as_int(rest[2])
        if lines is not None:
            entry["lines"] = lines
        rest = rest[3:]
    elif mtype.startswith("text/") and rest:
        lines = as_int(rest[0])
        if lines is not None:
            entry["lines"] = lines
        rest = rest[1:]
    # extension data: md5 disposition language location
    if rest:
        md5 = as_text(rest[0]) if not isinstance(rest[0], list) else None
        if md5:
            entry["md5"] = md5
    if len(rest) > 1 and isinstance(rest[1], list) and rest[1]:
        entry["disposition"] = (as_text(rest[1][0]) or "").lower()
        dparams = _params(rest[1][1]) if len(rest[1]) > 1 else {}
        if dparams:
            entry["disposition_params"] = dparams
    if len(rest) > 2 and rest[2] is not None:
        lang = rest[2]
        entry["language"] = [as_text(x) for x in lang] if isinstance(lang, list) else as_text(lang)
    if len(rest) > 3 and rest[3] is not None and not isinstance(rest[3], list):
        entry["location"] = as_text(rest[3])
    filename = (entry.get("disposition_params") or {}).get("filename") or params.get("name")
    if filename:
        entry["filename"] = filename
    out.append(entry)
    if isinstance(nested, list) and nested:
        if isinstance(nested[0], list):
            # an encapsulated multipart: its parts are numbered 2.1, 2.2...; the
            # multipart itself is what BODY[2.TEXT] returns
            flatten_bodystructure(nested, part, out, depth + 1, label=f"{part}.TEXT")
        else:
            flatten_bodystructure(nested, f"{part}.1", out, depth + 1)
    return out


def _compact_part(entry: dict) -> dict:
    """What a part's header needs (see _mime_header_for), with bounded values."""
    out = {}
    for key in ("part", "type", "encoding", "disposition", "id"):
        if entry.get(key):
            out[key] = str(entry[key])[:256]
    for key in ("params", "disposition_params"):
        if entry.get(key):
            out[key] = {str(k)[:64]: (str(v)[:256] if v is not None else None)
                        for k, v in list(entry[key].items())[:8]}
    return out


def _mime_header_for(part: dict, binary: bool) -> bytes:
    """A MIME header block describing ``part`` (from BODYSTRUCTURE).

    Lets the MIME parser decode a single part fetched without its header
    (BODY[2]) as the attachment it is.
    """
    def q(v):
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    ctype = part.get("type", "application/octet-stream")
    params = "".join(f"; {k}={q(v)}" for k, v in (part.get("params") or {}).items() if v is not None)
    lines = [f"Content-Type: {ctype}{params}"]
    if part.get("encoding") and not binary:
        lines.append(f"Content-Transfer-Encoding: {part['encoding']}")
    if part.get("disposition"):
        dparams = "".join(f"; {k}={q(v)}" for k, v in (part.get("disposition_params") or {}).items()
                          if v is not None)
        lines.append(f"Content-Disposition: {part['disposition']}{dparams}")
    if part.get("id"):
        lines.append(f"Content-ID: {part['id']}")
    # Values come from the server: keep any CR/LF they carry out of the header.
    text = "\r\n".join(line.replace("\r", " ").replace("\n", " ") for line in lines)
    return text.encode("utf-8", "replace") + b"\r\n\r\n"


def _section_kind(section: str) -> tuple[str, str]:
    """Classify a section spec -> (kind, part path).

    kind is "full" (""), "header" (HEADER, HEADER.FIELDS..., n.HEADER...),
    "text" (TEXT, n.TEXT), "part" (n), "mime" (n.MIME) or "other".
    """
    s = section.strip().upper()
    if not s:
        return "full", ""
    m = _PART_SPEC.match(s)
    if m:
        path, rest = m.group(1), m.group(2)
        if rest is None:
            return "part", path
        if rest == "MIME":
            return "mime", path
        if rest.startswith("HEADER"):
            return "header", path
        if rest == "TEXT":
            return "text", path
        return "other", path
    if s.startswith("HEADER"):
        return "header", ""
    if s == "TEXT":
        return "text", ""
    return "other", ""


def _norm_section(section: str) -> str:
    return " ".join(section.upper().split())


class _Section:
    """One body section of a FETCH response."""

    __slots__ = ("att", "base", "section", "kind", "path", "origin", "value")

    def __init__(self, att, base, section, kind, path, origin, value):
        self.att = att  # as the server wrote it: BODY[HEADER]<0>
        self.base = base  # BODY | BINARY
        self.section = section  # normalised section text
        self.kind = kind
        self.path = path
        self.origin = origin
        self.value = value  # Literal | bytes | None


def _value_len(value) -> int:
    if isinstance(value, Literal):
        return value.size
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    return 0


def _value_data(value) -> bytes:
    if isinstance(value, Literal):
        return value.data
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return b""


class ImapDissector(Dissector):
    """IMAP4rev1/IMAP4rev2 dissector for one connection (see the module docstring)."""

    protocol = "imap"

    def __init__(self, session, config=None):
        super().__init__(session, config)
        lim = self.limits
        self.sides = (_Side(lim.max_line), _Side(lim.max_line))
        self.pending: list[_Pending] = []
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
        self._known: OrderedDict = OrderedDict()  # (mailbox, uidvalidity, id) -> {size, parts}
        self._partials: OrderedDict = OrderedDict()
        self._partial_bytes = 0  # bytes held by all reassemblies
        self._modes_before_tls = (_LINE, _LINE)

    # -- interface -----------------------------------------------------------

    def feed(self, side: int, data: bytes, ts: float) -> list:
        out: list = []
        if not data:
            return out
        try:
            self._feed_side(side, data, ts, out)
        except StrictError:
            raise
        except Exception as exc:  # pragma: no cover - a bug; keep the pipeline alive and say so
            self._internal_error(side, ts, exc, out)
        return out

    def gap(self, side: int, length: int, ts: float) -> list:
        out: list = []
        try:
            self._gap(side, length, ts, out)
        except StrictError:
            raise
        except Exception as exc:  # pragma: no cover
            self._internal_error(side, ts, exc, out)
        return out

    def close(self, ts: float, reason: str) -> list:
        out: list = []
        try:
            self._close(ts, out)
        except StrictError:
            raise
        except Exception as exc:  # pragma: no cover
            out.append(self.anomaly(ts, None, "imap_syntax_error", f"internal error at close: {exc!r}"))
        return out

    def _internal_error(self, side, ts, exc, out):
        out.append(self.anomaly(ts, side, "imap_syntax_error", f"internal error: {exc!r}"))
        s = self.sides[side]
        s.buf.clear()
        s.reset_item()
        s.mode = _LINE if s.mode in (_LITERAL, _LINE) else s.mode
        s.resync = True

    # -- framing -------------------------------------------------------------

    def _feed_side(self, side, data, ts, out):
        s = self.sides[side]
        mode = s.mode
        if mode == _TLS or mode == _DEAD:  # TLS: the router's (TlsStart was returned)
            return
        if s.inflater is not None:
            self._inflate(side, data, ts, out)
        else:
            self._parse(side, data, ts, out)

    def _inflate(self, side, data, ts, out):
        s = self.sides[side]
        d = s.inflater
        s.comp_in += len(data)
        lim = self.limits
        while data and s.mode not in (_DEAD, _TLS):
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
                    self._parse(side, piece, ts, out)
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
                self._parse(side, piece, ts, out)
            if d.eof:
                break

    def _kill(self, side):
        s = self.sides[side]
        s.mode = _DEAD
        s.buf.clear()
        s.reset_item()

    def _parse(self, side, data, ts, out):
        s = self.sides[side]
        if s.mode == _LITERAL and not len(s.buf):
            # Literal bytes straight from the segment: no copy into the buffer.
            lit = s.lit
            take = lit.remaining
            if take >= len(data):
                lit.add(data)
                data = b""
            else:
                lit.add(data[:take])
                data = data[take:]
            if lit.remaining == 0:
                s.mode = _LINE
            if not data:
                return
        s.buf.append(data)
        self._drain(side, ts, out)

    def _drain(self, side, ts, out):
        s = self.sides[side]
        buf = s.buf
        while True:
            mode = s.mode
            if mode == _LITERAL:
                n = len(buf)
                if not n:
                    return
                lit = s.lit
                lit.add(buf.read(min(lit.remaining, n)))
                if lit.remaining == 0:
                    s.mode = _LINE
                continue
            if mode == _LINE:
                line = buf.readline()
                if line is None:
                    return
                if line is OVERLONG:
                    if not s.resync:
                        out.append(self.anomaly(ts, side, "imap_line_too_long",
                                                f"line longer than {self.limits.max_line} bytes"))
                    # The rest of the line is discarded; a literal it may have
                    # announced would be read as lines, so look for a clean start.
                    s.reset_item()
                    s.resync = True
                    continue
                self._line(side, line, ts, out)
                continue
            if mode == _HOLD:
                if len(buf) > self.limits.max_line:
                    # The client went on talking without a verdict: it has switched.
                    self._switch(s.hold_for, ts, out, assumed=True)
                    continue
                return
            if mode == _TLS:
                buf.clear()
                return
            if mode == _DEAD:
                buf.clear()
                return
            return

    def _line(self, side, line, ts, out):
        s = self.sides[side]
        if s.resync:
            if not self._is_sync_line(side, line):
                s.skipped += len(line)
                return
            s.resync = False
            if s.skipped:
                out.append(self.anomaly(ts, side, "imap_resync", f"skipped {s.skipped} bytes"))
                s.skipped = 0
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
                if text[:1] == b"+" or _STATUS_LINE.match(text):
                    detect_literal = False
        s.item_len += len(text)
        if s.item_len > self.limits.max_line and not s.discard:
            out.append(self.anomaly(ts, side, "imap_line_too_long",
                                    f"item text longer than {self.limits.max_line} bytes"))
            s.discard = True
            s.parts, s.lits, s.markers = [], [], []
        m = _LITERAL_AT_END.search(text) if detect_literal and text.endswith(b"}") else None
        if m:
            digits = m.group(2)
            size = int(digits) if len(digits) <= _MAX_SIZE_DIGITS else _HUGE
            lit = self._new_literal(side, size, bool(m.group(1)), not m.group(3), ts, out)
            if not s.discard:
                s.parts.append(text[:m.start()])
                s.markers.append(m.group(0))
                s.lits.append(lit)
            s.lit = lit
            if size:
                s.mode = _LITERAL
            return
        if s.discard:
            s.reset_item()
            return
        s.parts.append(text)
        self._item_done(side, ts, out)

    def _new_literal(self, side, size, binary, sync, ts, out) -> Literal:
        s = self.sides[side]
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
        s = self.sides[side]
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
            m = _CLIENT_SYNC.match(line)
            if not m:
                return line.strip().upper() == b"DONE" and self.idle is not None
            verb = m.group(3).decode("ascii", "replace").upper()
            if m.group(2):
                verb = "UID " + verb
            return verb in KNOWN_COMMANDS
        m = _SERVER_SYNC.match(line)
        if not m:
            return False
        tag = m.group(1)
        if tag is None:
            return True
        tag = wire(tag)
        return any(p.tag == tag for p in self.pending)

    # -- gaps and the end ----------------------------------------------------

    def _gap(self, side, length, ts, out):
        self.session.complete = False
        s = self.sides[side]
        if s.mode in (_TLS, _DEAD):
            return
        if s.inflater is not None:
            out.append(self.anomaly(ts, side, "imap_compress_error",
                                    f"gap of {length} bytes inside the compressed stream"))
            self._kill(side)
            return
        if s.mode == _HOLD:
            s.buf.clear()
            return
        if s.mode == _LITERAL and not len(s.buf):
            lit = s.lit
            if length <= lit.remaining:
                lit.lose(length)
                if lit.remaining == 0:
                    s.mode = _LINE
                return
            lit.lose(lit.remaining)
            s.mode = _LINE
            self._item_done(side, ts, out, cut=True)
        elif s.parts:
            if s.mode == _LITERAL:
                s.lit.lose(s.lit.remaining)
                s.mode = _LINE
            self._item_done(side, ts, out, cut=True)
        s.buf.clear()
        s.reset_item()
        s.mode = _LINE
        s.resync = True
        s.skipped = 0

    def _close(self, ts, out):
        for side in (CLIENT, SERVER):
            s = self.sides[side]
            if s.mode == _LITERAL and s.lit is not None:
                s.lit.lose(s.lit.remaining)
                s.mode = _LINE
                if s.parts:
                    self._item_done(side, ts, out, cut=True)
            elif s.parts:
                self._item_done(side, ts, out, cut=True)
            s.reset_item()
        for key in list(self._partials):
            self._flush_partial(key, out)
        for p in self.pending:
            self._emit_pending(p, out)
        self.pending = []
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
        if tag in ("*", "+") or not _TAG_OK.match(tag.encode("utf-8", "replace")):
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
        self.pending.append(p)
        if len(self.pending) > self.limits.max_commands_in_flight:
            old = self.pending.pop(0)
            out.append(self.anomaly(ts, CLIENT, "imap_too_many_in_flight",
                                    f"{old.verb} {old.tag} closed without reply"))
            self._forget(old)
            self._emit_pending(old, out)

    def _problems(self, problems, ts, side, out):
        for prob in dict.fromkeys(problems):
            if prob == "nesting":
                out.append(self.anomaly(ts, side, "imap_nesting_too_deep",
                                        f"deeper than {self.limits.max_nesting}"))
            else:
                out.append(self.anomaly(ts, side, "imap_syntax_error", prob))

    def _cmd_LOGIN(self, p, args, ts, out):
        p.cmd.secret_at = _after_first_argument(p.cmd.argument)  # the password, atom, string or literal
        user = as_text(args[0]) if args else None
        secret = as_text(args[1]) if len(args) > 1 else None
        p.cred = Credential(self.session.session_id, "imap", ts, "LOGIN", user, secret, None, "LOGIN command")

    def _cmd_AUTHENTICATE(self, p, args, ts, out):
        mech = (as_text(args[0]) or "").upper() if args else ""
        ir = as_bytes(args[1]) if len(args) > 1 else None
        if ir is not None:
            p.cmd.secret_at = _after_first_argument(p.cmd.argument)  # the initial response
        p.sasl = SaslExchange(mech, ir)
        if p.sasl.malformed:
            out.append(self.anomaly(ts, CLIENT, "imap_sasl_malformed", f"{mech} initial response does not decode"))
        self.auth = p

    def _cmd_STARTTLS(self, p, args, ts, out):
        self._hold(p)

    def _cmd_COMPRESS(self, p, args, ts, out):
        self._hold(p)

    def _hold(self, p):
        c = self.sides[CLIENT]
        c.mode = _HOLD
        c.hold_for = p

    def _cmd_IDLE(self, p, args, ts, out):
        self.idle = p

    def _cmd_SELECT(self, p, args, ts, out):
        p.mailbox = self._mailbox_name(args[0]) if args else None
        p.select = {"flags": [], "exists": None, "uidvalidity": None, "uidnext": None, "recent": None,
                    "access": "READ-ONLY" if p.verb == "EXAMINE" else "READ-WRITE", "highestmodseq": None}

    _cmd_EXAMINE = _cmd_SELECT

    def _cmd_STATUS(self, p, args, ts, out):
        p.mailbox = self._mailbox_name(args[0]) if args else None

    def _cmd_CREATE(self, p, args, ts, out):
        p.mailbox = self._mailbox_name(args[0]) if args else None

    _cmd_DELETE = _cmd_SUBSCRIBE = _cmd_UNSUBSCRIBE = _cmd_CREATE

    def _cmd_RENAME(self, p, args, ts, out):
        p.mailbox = self._mailbox_name(args[0]) if args else None
        p.extra["to"] = self._mailbox_name(args[1]) if len(args) > 1 else None

    def _cmd_COPY(self, p, args, ts, out):
        p.extra["set"] = as_text(args[0]) if args else None
        p.extra["to"] = self._mailbox_name(args[1]) if len(args) > 1 else None

    _cmd_MOVE = _cmd_UID_COPY = _cmd_UID_MOVE = _cmd_COPY

    def _cmd_SEARCH(self, p, args, ts, out):
        p.results = []

    _cmd_UID_SEARCH = _cmd_SORT = _cmd_UID_SORT = _cmd_SEARCH

    def _cmd_FETCH(self, p, args, ts, out):
        req: dict = {}
        atts = args[1] if len(args) > 1 else None
        for att in (atts if isinstance(atts, list) else [atts]):
            if not isinstance(att, str):
                continue
            m = _SECTION.match(att.upper())
            if m and m.group(3) is not None and m.group(4) is not None:
                req[(m.group(1), _norm_section(m.group(2)), int(m.group(3)))] = int(m.group(4))
        p.partial_req = req

    _cmd_UID_FETCH = _cmd_FETCH

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

    def _cmd_APPEND(self, p, args, ts, out):
        mailbox = self._mailbox_name(args[0]) if args else None
        p.mailbox = mailbox
        p.appends = []
        flags: list[str] = []
        date = None
        i = 1
        while i < len(args):
            tok = args[i]
            if isinstance(tok, list):
                flags = [as_text(f) for f in tok if isinstance(f, str)]
            elif isinstance(tok, bytes):
                date = as_text(tok)
            elif isinstance(tok, Literal):
                self._append_message(p, [tok], flags, date, ts, out, complete=True)
                flags, date = [], None
            elif isinstance(tok, str) and tok.upper() in ("UTF8", "CATENATE") and i + 1 < len(args) \
                    and isinstance(args[i + 1], list):
                body = args[i + 1]
                if tok.upper() == "UTF8":
                    pieces = [t for t in body if isinstance(t, Literal)][:1]
                    complete = True
                else:  # CATENATE (TEXT lit URL "...") : only TEXT parts travel in this command
                    pieces, complete = [], True
                    for j in range(0, len(body) - 1, 2):
                        kind = as_text(body[j]) if isinstance(body[j], str) else ""
                        if kind and kind.upper() == "TEXT" and isinstance(body[j + 1], (Literal, bytes)):
                            pieces.append(body[j + 1])
                        else:
                            complete = False
                if pieces:
                    self._append_message(p, pieces, flags, date, ts, out, complete)
                flags, date = [], None
                i += 1
            i += 1

    def _append_message(self, p, pieces, flags, date, ts, out, complete):
        msg = self._make_message("appended", ts, pieces, "body", f"APPEND {p.mailbox}", complete, out)
        msg.command_seq, msg.user, msg.mailbox = p.cmd.seq, self.user, p.mailbox
        p.messages.append(msg)
        p.appends.append((msg, flags, date))

    # -- server side ---------------------------------------------------------

    def _server_item(self, parts, lits, item_ts, ts, out, cut):
        first = parts[0]
        if first[:1] == b"+":
            self._continuation(first[1:].strip(), ts, out)
            self.greeted = True
            return
        if not lits:
            m = _STATUS_PARTS.match(first)
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
        c = self.sides[CLIENT]
        if not self.pending and not c.parts and c.mode != _LITERAL:
            # "+" answers a command in flight or a synchronising literal being sent
            out.append(self.anomaly(ts, SERVER, "imap_unexpected_response", "continuation with no command in flight"))
            self.sasl_unseen = True

    def _resp_code(self, rest: bytes):
        """Split resp-text into (code name, code tokens, text)."""
        if rest[:1] != b"[":
            return None, [], wire(rest)
        end = _bracket_end(rest, 0)
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
            sp = self._find(_SELECT_VERBS)
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
        c = self.sides[CLIENT]
        if c.hold_for is p:
            c.hold_for = None
            if c.mode == _HOLD:
                c.mode = _LINE

    def _tagged(self, tag, status, rest, code, code_args, ts, out):
        self.greeted = True
        c = self.sides[CLIENT]
        if (status in ("NO", "BAD") and c.mode == _LITERAL and c.lit is not None and c.lit.sync
                and c.lit.remaining == c.lit.size and not c.lit.missing and c.parts
                and c.parts[0].split(None, 1)[:1] == [tag.encode("utf-8", "replace")]):
            # The server refused a synchronising literal before the client sent
            # it: the command ends here and the client's next bytes are a new line.
            if c.lits and c.lits[-1] is c.lit:
                c.lits.pop()
            c.mode = _LINE
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
                self._drain(CLIENT, ts, out)

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
        c = self.sides[CLIENT]
        srv = self.sides[SERVER]
        c.hold_for = None
        held = c.buf.read_all()
        c.buf.clear()
        if c.mode == _HOLD:
            c.mode = _LINE
        if p is None:
            return
        if p.verb == "STARTTLS":
            if held and held[:1] != b"\x16":
                # an assumed switch happens once max_line bytes are held, how many more
                # the last chunk brought depends on the segmentation: not reported
                count = f"over {self.limits.max_line}" if assumed else str(len(held))
                out.append(self.anomaly(ts, CLIENT, "imap_unexpected_response",
                                        f"{count} plaintext bytes sent after STARTTLS before the go-ahead"))
            self._modes_before_tls = (c.mode, srv.mode)
            c.mode = _TLS
            srv.mode = _TLS
            rest = srv.buf.read_all()
            srv.buf.clear()
            out.append(TlsStart(ts, (CLIENT, SERVER), (held, rest)))
            return
        # COMPRESS DEFLATE (RFC 4978): raw deflate in both directions.
        c.inflater = zlib.decompressobj(-15)
        rest = srv.buf.read_all()
        srv.buf.clear()
        srv.inflater = zlib.decompressobj(-15)
        if held:
            self._inflate(CLIENT, held, ts, out)
        if rest:
            self._inflate(SERVER, rest, ts, out)

    def resume(self, ts: float) -> list:
        """Decrypted plaintext follows the switch: parse on, as a fresh start of the
        command/response stream."""
        for side in (CLIENT, SERVER):
            s = self.sides[side]
            s.mode = self._modes_before_tls[side]
            s.reset_item()
        return []

    # -- untagged data -------------------------------------------------------

    def _event(self, ts, action, out, mailbox=False, **kw):
        out.append(MailboxEvent(self.session.session_id, ts, "imap", self.user,
                                self.mailbox if mailbox is False else mailbox, action, **kw))

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
                sp = self._find(_SELECT_VERBS)
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
            p = self._find(_SEARCH_VERBS)
            if p is not None and p.results is not None:
                p.results.extend(a for a in args if isinstance(a, str) and a.isdigit())
                if len(args) and isinstance(args[-1], list):  # (MODSEQ n)
                    p.extra["modseq"] = as_text(args[-1][-1]) if args[-1] else None
        elif kw == "ESEARCH":
            self._esearch(args)
        elif kw == "FLAGS":
            sp = self._find(_SELECT_VERBS)
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
            self._event(ts, "namespace", out, mailbox=None, detail=json.dumps(_json_safe(args))[:_DETAIL_MAX])
        elif kw == "VANISHED":
            self._vanished(args, ts, out)
        elif kw == "BYE":
            pass

    def _list(self, kw, args, ts, out):
        if len(args) < 3:
            return
        attrs = [as_text(a) for a in args[0]] if isinstance(args[0], list) else []
        delim = as_text(args[1])
        name = self._mailbox_name(args[2])
        detail = f"delimiter {delim}" if delim else "flat"
        if len(args) > 3 and isinstance(args[3], list):
            detail += " " + json.dumps(_json_safe(args[3]))[:1000]
        self._event(ts, "lsub" if kw == "LSUB" else "list", out, mailbox=name,
                    flags=[a for a in attrs if a], detail=detail)

    def _status_data(self, args, ts, out):
        if len(args) < 2 or not isinstance(args[1], list):
            return
        name = self._mailbox_name(args[0])
        items = args[1]
        values = {}
        for i in range(0, len(items) - 1, 2):
            k = as_text(items[i])
            if k:
                values[k.upper()] = as_int(items[i + 1])
        detail = " ".join(f"{k}={v}" for k, v in values.items() if k not in ("MESSAGES", "UIDVALIDITY"))
        self._event(ts, "status", out, mailbox=name, count=values.get("MESSAGES"),
                    uidvalidity=values.get("UIDVALIDITY"), detail=detail)

    def _esearch(self, args):
        tag = None
        rest = args
        if rest and isinstance(rest[0], list) and len(rest[0]) >= 2 and as_text(rest[0][0] or "").upper() == "TAG":
            tag = as_text(rest[0][1])
            rest = rest[1:]
        p = None
        for cand in self.pending:
            if cand.results is not None and (tag is None or cand.tag == tag):
                p = cand
                break
        if p is None:
            return
        if rest and isinstance(rest[0], str) and rest[0].upper() == "UID":
            rest = rest[1:]
        for i in range(0, len(rest) - 1, 2):
            k = as_text(rest[i]) if isinstance(rest[i], str) else None
            if k:
                p.extra.setdefault("esearch", {})[k.upper()] = as_text(rest[i + 1]) if not isinstance(
                    rest[i + 1], list) else json.dumps(_json_safe(rest[i + 1]))

    def _exists(self, n, ts, out):
        sp = self._find(_SELECT_VERBS)
        if sp is not None:
            sp.select["exists"] = n
            return
        self.exists = n
        self._grow(n)
        if self.mailbox is not None:
            self._event(ts, "exists", out, count=n)

    def _grow(self, n):
        if len(self.uids) < n <= self.limits.max_mailbox_messages:
            self.uids.extend([None] * (n - len(self.uids)))

    def _uid_of(self, seq):
        if 0 < seq <= len(self.uids):
            return self.uids[seq - 1]
        return None

    def _expunge(self, seq, ts, out):
        uid = self._uid_of(seq)
        if 0 < seq <= len(self.uids):
            del self.uids[seq - 1]
        if self.exists:
            self.exists -= 1
        self._event(ts, "expunge", out, uidvalidity=self.uidvalidity, uid=uid, seq=seq)

    def _vanished(self, args, ts, out):
        earlier = bool(args and isinstance(args[0], list))
        uidset = as_text(args[-1]) if args else None
        if not uidset:
            return
        uids = _expand_set(uidset, 10_000)
        if uids is not None and not earlier:
            gone = set(uids)
            self.uids = [u for u in self.uids if u not in gone]
        if uids is not None and len(uids) <= 1000:
            for u in uids:
                self._event(ts, "expunge", out, uidvalidity=self.uidvalidity, uid=u,
                            detail="VANISHED (EARLIER)" if earlier else "VANISHED")
        else:
            self._event(ts, "expunge", out, uidvalidity=self.uidvalidity,
                        detail=f"{'VANISHED (EARLIER)' if earlier else 'VANISHED'} {uidset[:1000]}")

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

    def _done_SELECT(self, p, status, ts, out):
        if status != "OK":
            self._deselect()
            return
        sel = p.select or {}
        self.mailbox = p.mailbox
        self.uidvalidity = sel.get("uidvalidity")
        self.exists = sel.get("exists")
        self.uids = []
        if self.exists:
            self._grow(self.exists)
        detail = " ".join(f"{k}={v}" for k, v in (
            ("access", sel.get("access")), ("uidnext", sel.get("uidnext")), ("recent", sel.get("recent")),
            ("unseen", sel.get("unseen")), ("highestmodseq", sel.get("highestmodseq"))) if v is not None)
        self._event(ts, "select" if p.verb == "SELECT" else "examine", out, uidvalidity=self.uidvalidity,
                    count=self.exists, flags=sel.get("flags") or [], detail=detail)

    _done_EXAMINE = _done_SELECT

    def _deselect(self):
        self.mailbox = None
        self.uidvalidity = None
        self.exists = None
        self.uids = []

    def _done_CLOSE(self, p, status, ts, out):
        if status == "OK":
            # CLOSE silently expunges \Deleted messages of a read-write mailbox
            self._event(ts, "close" if p.verb == "CLOSE" else "unselect", out, uidvalidity=self.uidvalidity)
            self._deselect()

    _done_UNSELECT = _done_CLOSE

    def _done_STORE(self, p, status, ts, out):
        if status == "OK":
            target = as_text(p.args[0]) if p.args else None
            uid = as_int(target) if p.verb == "UID STORE" else None
            seq = as_int(target) if p.verb == "STORE" else None
            if seq is not None:
                uid = self._uid_of(seq)
            flags = []
            if p.args and isinstance(p.args[-1], list):
                flags = [as_text(f) for f in p.args[-1] if isinstance(f, str)]
            self._event(ts, "store", out, uidvalidity=self.uidvalidity, uid=uid, seq=seq, flags=flags,
                        detail=p.argtext[:1000])

    _done_UID_STORE = _done_STORE

    def _done_COPY(self, p, status, ts, out):
        if status != "OK":
            return
        target = p.extra.get("set")
        uid = as_int(target) if p.verb.startswith("UID") else None
        seq = as_int(target) if not p.verb.startswith("UID") else None
        if seq is not None:
            uid = self._uid_of(seq)
        detail = f"{target} -> {p.extra.get('to')}"
        cu = p.extra.get("copyuid")
        if cu:
            detail += f" COPYUID uidvalidity={cu[0]} {cu[1]} -> {cu[2] if len(cu) > 2 else ''}"
        action = "move" if "MOVE" in p.verb else "copy"
        self._event(ts, action, out, uidvalidity=self.uidvalidity, uid=uid, seq=seq, detail=detail[:1000])

    _done_MOVE = _done_UID_COPY = _done_UID_MOVE = _done_COPY

    def _done_APPEND(self, p, status, ts, out):
        if status != "OK" or not p.appends:
            return
        au = p.extra.get("appenduid")
        uidvalidity, uids = (au[0], _expand_set(au[1] or "", 10_000)) if au else (None, None)
        for i, (msg, flags, date) in enumerate(p.appends):
            uid = uids[i] if uids and i < len(uids) else None
            msg.mailbox, msg.uid = p.mailbox, uid
            self._event(ts, "append", out, mailbox=p.mailbox, uidvalidity=uidvalidity, uid=uid, flags=flags,
                        size=msg.size, message_id=msg.message_id, detail=f"date {date}" if date else "")

    def _done_SEARCH(self, p, status, ts, out):
        if status != "OK":
            return
        results = p.results or []
        es = p.extra.get("esearch")
        count = len(results)
        shown = " ".join(results[:200]) + (" ..." if len(results) > 200 else "")
        if es:
            count = as_int(es.get("COUNT")) if es.get("COUNT") else count
            shown = " ".join(f"{k} {v}" for k, v in es.items())[:2000]
        self._event(ts, "search", out, uidvalidity=self.uidvalidity, count=count,
                    detail=f"{p.verb} {p.argtext[:500]} -> {shown}".strip())

    _done_UID_SEARCH = _done_SORT = _done_UID_SORT = _done_SEARCH

    def _done_CREATE(self, p, status, ts, out):
        if status == "OK":
            self._event(ts, p.verb.lower(), out, mailbox=p.mailbox)

    _done_DELETE = _done_SUBSCRIBE = _done_UNSUBSCRIBE = _done_CREATE

    def _done_RENAME(self, p, status, ts, out):
        if status == "OK":
            self._event(ts, "rename", out, mailbox=p.mailbox, detail=f"-> {p.extra.get('to')}")

    def _done_ENABLE(self, p, status, ts, out):
        if status == "OK" and any(c in ("UTF8=ACCEPT", "UTF8=ONLY", "IMAP4REV2") for c in p.extra.get("caps", [])):
            self.utf8 = True

    def _done_LOGOUT(self, p, status, ts, out):
        self._deselect()

    # -- FETCH ---------------------------------------------------------------

    def _fetch(self, seq, items, item_ts, ts, out, cut):
        uid = flags = size = envelope = parts = internaldate = modseq = None
        sections: list[_Section] = []
        other: dict = {}
        i = 0
        n = len(items)
        while i < n:
            name = items[i]
            value = items[i + 1] if i + 1 < n else None
            i += 2
            if not isinstance(name, str):
                if not cut:
                    out.append(self.anomaly(ts, SERVER, "imap_syntax_error", "FETCH item name is not an atom"))
                break
            up = name.upper()
            if up == "UID":
                uid = as_int(value)
            elif up == "FLAGS":
                flags = [as_text(f) for f in value if isinstance(f, str)] if isinstance(value, list) else []
            elif up == "RFC822.SIZE":
                size = as_int(value)
            elif up == "INTERNALDATE":
                internaldate = as_text(value)
            elif up == "ENVELOPE":
                envelope = parse_envelope(value)
            elif up in ("BODYSTRUCTURE", "BODY") and isinstance(value, list):
                parts = flatten_bodystructure(value)
            elif up == "MODSEQ":
                modseq = as_int(value[0]) if isinstance(value, list) and value else as_int(value)
            elif up in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
                if isinstance(value, str):
                    value = value.encode("utf-8")
                elif isinstance(value, list):
                    value = None
                kind = {"RFC822": "full", "RFC822.HEADER": "header", "RFC822.TEXT": "text"}[up]
                sections.append(_Section(up, "BODY", {"full": "", "header": "HEADER", "text": "TEXT"}[kind],
                                         kind, "", None, value))
            elif up.startswith(("BODY[", "BINARY[")):
                if isinstance(value, str):  # an atom where an nstring belongs: take its bytes
                    value = value.encode("utf-8")
                elif isinstance(value, list):
                    value = None
                m = _SECTION.match(up)
                if m:
                    sec = _norm_section(m.group(2))
                    kind, path = _section_kind(sec)
                    origin = int(m.group(3)) if m.group(3) is not None else None
                    sections.append(_Section(name, m.group(1), sec, kind, path, origin, value))
            elif not isinstance(value, list) and len(other) < 32:
                other[up] = as_text(value) if not isinstance(value, Literal) else f"{{{value.size}}}"
        p = None
        if sections or envelope or parts or size is not None:
            p = self._find(_FETCH_VERBS)
        if p is None:
            p = self._find(_STORE_VERBS) or self._find(_FETCH_VERBS)
        action = "fetch" if p is not None and p.verb in _FETCH_VERBS else "flags"
        if uid is None:
            uid = self._uid_of(seq)
        elif seq <= self.limits.max_mailbox_messages:
            self._grow(seq)
            if 0 < seq <= len(self.uids):  # ("* 0 FETCH" would write the last entry, or raise)
                self.uids[seq - 1] = uid
        key = (self.mailbox, self.uidvalidity, ("uid", uid) if uid is not None else ("seq", seq))
        known = self._known.get(key)
        if size is not None or parts is not None:
            if known is None:
                known = self._known[key] = {}
                if len(self._known) > _KNOWN_CACHE:
                    self._known.popitem(last=False)
            if size is not None:
                known["size"] = size
            if parts is not None:
                known["parts"] = [_compact_part(e) for e in parts[:_KNOWN_PARTS]]
        cmdname = p.verb if p is not None and p.verb in _FETCH_VERBS else "FETCH"
        ident = uid if cmdname == "UID FETCH" and uid is not None else seq
        prefix = f"{cmdname} {ident}"
        msgs = self._fetch_messages(sections, p, key, known, prefix, item_ts, out) if sections else []
        for msg in msgs:  # keys; mailbox and UID are what webmail pages and downloads join on
            if msg.command_seq is None:  # a reassembled piece keeps the command that began it
                msg.command_seq = p.cmd.seq if p is not None else None
            msg.user, msg.mailbox, msg.uid = self.user, self.mailbox, uid
        message_id = (envelope or {}).get("message_id")
        msg_size = size
        for msg in msgs:
            message_id = message_id or msg.message_id
            if msg_size is None and msg.kind == "body" and msg.complete:
                msg_size = msg.size
        detail: dict = {}
        if internaldate:
            detail["internaldate"] = internaldate
        if modseq is not None:
            detail["modseq"] = modseq
        if envelope:
            detail["envelope"] = envelope
        if parts:
            detail["bodystructure"] = parts
        if sections:
            detail["sections"] = [f"{s.att} {_value_len(s.value) if s.value is not None else 'NIL'}"
                                  for s in sections]
        if other:
            detail["other"] = other
        text = json.dumps(detail, ensure_ascii=False) if detail else ""
        if len(text) > _DETAIL_MAX:
            detail.pop("bodystructure", None)
            detail["bodystructure_dropped"] = True
            text = json.dumps(detail, ensure_ascii=False)[:_DETAIL_MAX]
        self._event(item_ts, action, out, uidvalidity=self.uidvalidity, uid=uid, seq=seq,
                    flags=flags if flags is not None else [], size=msg_size, message_id=message_id, detail=text)
        if p is not None:
            p.messages.extend(msgs)
            p.held += sum(m.size for m in msgs)
            if p.held > self.limits.max_message_size:
                # A FETCH returning more than max_message_size of messages: emit
                # those held so far now (without the reply code still to come).
                out.extend(p.messages)
                p.messages = []
                p.held = 0
        else:
            out.extend(msgs)

    def _fetch_messages(self, sections, p, key, known, prefix, ts, out) -> list[Message]:
        msgs: list[Message] = []
        used: set[int] = set()
        # Whole messages.
        for i, sec in enumerate(sections):
            if sec.kind == "full" and sec.origin is None and sec.value is not None:
                msgs.append(self._make_message("retrieved", ts, [sec.value], "body", f"{prefix} {sec.att}",
                                               True, out))
                used.add(i)
        # HEADER and TEXT of the same message in one response make the whole message.
        if not msgs:
            hdr = next((i for i, s in enumerate(sections) if s.kind == "header" and not s.path
                        and s.section == "HEADER" and s.origin is None and s.value is not None), None)
            txt = next((i for i, s in enumerate(sections) if s.kind == "text" and not s.path
                        and s.origin is None and s.value is not None), None)
            if hdr is not None and txt is not None:
                h, t = sections[hdr], sections[txt]
                msgs.append(self._make_message("retrieved", ts, [h.value, t.value], "body",
                                               f"{prefix} {h.att} {t.att}", True, out))
                used.update((hdr, txt))
        mime_of = {s.path: i for i, s in enumerate(sections) if s.kind == "mime" and s.origin is None
                   and s.value is not None}
        part_info = {e.get("part"): e for e in (known or {}).get("parts") or []}
        for i, sec in enumerate(sections):
            if i in used or sec.value is None:
                continue
            if sec.origin is not None:
                if sec.kind == "full":
                    msg = self._partial_piece(sec, p, key, known, prefix, ts, out)
                    if msg is not None:
                        msgs.append(msg)
                else:
                    msgs.append(self._make_message("retrieved", ts, [sec.value], "partial",
                                                   f"{prefix} {sec.att}", False, out))
                continue
            if sec.kind == "header":
                msgs.append(self._make_message("retrieved", ts, [sec.value], "header", f"{prefix} {sec.att}",
                                               False, out))
            elif sec.kind == "text":
                # the body's own entry: "" or "1" at the top, "n.TEXT" (multipart)
                # or "n.1" inside an encapsulated message n
                if sec.path:
                    root = part_info.get(sec.path + ".TEXT") or part_info.get(sec.path + ".1")
                else:
                    root = part_info.get("") or part_info.get("1")
                header = _mime_header_for(root, False) if root else b"\r\n"
                msgs.append(self._make_message("retrieved", ts, [sec.value], "text", f"{prefix} {sec.att}",
                                               False, out, header=header))
            elif sec.kind == "part":
                mi = mime_of.get(sec.path)
                if mi is not None:
                    header = _value_data(sections[mi].value)
                    used.add(mi)
                elif sec.path in part_info:
                    header = _mime_header_for(part_info[sec.path], sec.base == "BINARY")
                else:
                    header = b"\r\n"
                msgs.append(self._make_message("retrieved", ts, [sec.value], "part", f"{prefix} {sec.att}",
                                               False, out, header=header))
        return msgs

    def _partial_piece(self, sec, p, key, known, prefix, ts, out) -> Message | None:
        """One <origin> piece of a whole-message section: reassemble across responses."""
        pkey = key + (sec.base + "[]",)
        origin = sec.origin
        asm = self._partials.get(pkey)
        if origin == 0:
            if asm is not None:
                self._flush_partial(pkey, out)
            asm = _Partial(ts, f"{prefix} {sec.att}", p.cmd.seq if p is not None else None)
            self._partials[pkey] = asm
            if len(self._partials) > _PARTIALS:
                self._flush_partial(next(iter(self._partials)), out)
        elif asm is None or origin != asm.next:
            if asm is not None:
                out.append(self.anomaly(ts, SERVER, "imap_partial_mismatch",
                                        f"{sec.att}: expected origin {asm.next}"))
            return self._make_message("retrieved", ts, [sec.value], "partial", f"{prefix} {sec.att}", False, out)
        value = sec.value
        length = _value_len(value)
        if isinstance(value, Literal) and not value.complete:
            asm.complete = False
        asm.chunks.append(_value_data(value))
        asm.next += length
        self._partial_bytes += len(asm.chunks[-1])
        requested = (p.partial_req or {}).get((sec.base, sec.section, origin)) if p is not None else None
        total = (known or {}).get("size")
        last = (requested is not None and length < requested) or (total is not None and asm.next >= total)
        if asm.next > self.limits.max_message_size:
            asm.complete = False
            last = True
        while self._partial_bytes > self.limits.max_message_size and next(iter(self._partials)) != pkey:
            self._flush_partial(next(iter(self._partials)), out)
        if not last:
            return None
        del self._partials[pkey]
        self._partial_bytes -= sum(len(c) for c in asm.chunks)
        source = asm.source if origin == 0 else f"{asm.source}..<{origin}>"
        msg = self._make_message("retrieved", asm.ts, [b"".join(asm.chunks)], "body" if asm.complete else "partial",
                                 source, asm.complete, out)
        msg.command_seq = asm.command_seq  # dated, and keyed, by the command that began it
        return msg

    def _flush_partial(self, pkey, out):
        asm = self._partials.pop(pkey, None)
        if asm is None:
            return
        self._partial_bytes -= sum(len(c) for c in asm.chunks)
        msg = self._make_message("retrieved", asm.ts, [b"".join(asm.chunks)], "partial", asm.source, False, out)
        msg.command_seq, msg.user, msg.mailbox = asm.command_seq, self.user, self.mailbox
        out.append(msg)

    def _make_message(self, direction, ts, pieces, kind, source, complete, out, header=b"") -> Message:
        """A Message from literal/string pieces, filled by the MIME parser.

        ``header`` is a MIME header block put in front of the bytes for the
        parser's sake only (a part or body text fetched without its header);
        size and hashes remain those of the bytes transferred.
        """
        datas = []
        size = missing = 0
        truncated = False
        for v in pieces:
            if isinstance(v, Literal):
                datas.append(v.data)
                size += v.size
                missing += v.missing + v.remaining
                truncated = truncated or v.truncated
            else:
                datas.append(bytes(v))
                size += len(v)
        body = datas[0] if len(datas) == 1 else b"".join(datas)
        complete = complete and not missing and not truncated
        msg = Message(protocol="imap", session_id=self.session.session_id, ts=ts, direction=direction,
                      complete=complete, missing_bytes=missing, kind=kind, source=source[:500])
        raw = header + body if header else body
        try:
            out.extend(_fill(msg, raw, self.config))
        except StrictError:
            raise
        except Exception as exc:
            out.append(self.anomaly(ts, SERVER if direction == "retrieved" else CLIENT, "imap_message_parse_error",
                                    repr(exc)[:300]))
        if header or truncated or missing:
            msg.size = size
            if missing:
                msg.sha256 = None
            elif truncated:
                msg.sha256 = pieces[0].sha256() if len(pieces) == 1 and isinstance(pieces[0], Literal) else None
            else:
                msg.sha256 = hashlib.sha256(body).hexdigest()
            msg.body_sha256 = None if (truncated or missing or header) else msg.body_sha256
            if header and msg.raw is not None:
                msg.raw = body
        return msg


def _expand_set(text: str, cap: int) -> list[int] | None:
    """Expand a sequence/UID set ("1:3,7") to numbers; None if "*" or over ``cap``."""
    out: list[int] = []
    for item in text.split(","):
        a, sep, b = item.partition(":")
        if not a.isdigit() or (sep and not b.isdigit()) or len(a) > 12 or len(b) > 12:
            return None
        lo, hi = int(a), int(b) if sep else int(a)
        if lo > hi:
            lo, hi = hi, lo
        if len(out) + hi - lo + 1 > cap:
            return None
        out.extend(range(lo, hi + 1))
    return out
