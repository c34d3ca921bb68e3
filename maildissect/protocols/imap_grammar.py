"""IMAP's grammar, as pure functions of bytes and tokens (RFC 3501, RFC 9051).

The tokenizer turns one item -- a command or response line with the literals
that continue it -- into atoms (``str``), strings (``bytes``), ``None`` for NIL,
:class:`Literal` and nested lists; ENVELOPE and BODYSTRUCTURE lists become
dicts; FETCH section specs are classified; sequence sets are expanded; the
first bytes of a connection are tested for IMAP. No state: the dissector
(:mod:`.imap`) keeps that.
"""

from __future__ import annotations

import hashlib
import re

from ..text import decode_mailbox, decode_words, wire

__all__ = ["Literal", "tokenize", "after_first_argument", "as_text", "as_bytes", "as_int", "decode_mailbox_name", "looks_like_imap",
           "KNOWN_COMMANDS", "parse_envelope", "flatten_bodystructure", "Section", "section_kind", "norm_section",
           "compact_part", "mime_header_for", "value_len", "value_data", "expand_set", "json_safe"]

# ---------------------------------------------------------------------------
# Tokenizer

LITERAL_AT_END = re.compile(rb"(~?)\{(\d+)(\+)?\}$")
_ATOM = re.compile(rb'[^\x00-\x20()"\[\x7f]+')
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.S)
_UNESCAPE = re.compile(rb"\\(.)", re.S)
#: Status responses carry resp-text, which never holds a literal: a trailing
#: "{5}" in a greeting or completion text is text, not a literal announcement.
STATUS_LINE = re.compile(rb"^(?:\*|[^\s*+]+) +(?:OK|NO|BAD|BYE|PREAUTH)(?:[ \[]|$)", re.I)
STATUS_PARTS = re.compile(rb"^(\S+) +(OK|NO|BAD|BYE|PREAUTH)(?: +(.*))?$", re.I | re.S)
#: Literal sizes beyond this many digits are treated as "the rest of the stream".
MAX_SIZE_DIGITS = 30
HUGE = 10 ** MAX_SIZE_DIGITS


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


def bracket_end(text: bytes, j: int) -> int:
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
                    j = bracket_end(text, j)
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


def after_first_argument(argtext: str) -> int:
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

FETCH_VERBS = ("FETCH", "UID FETCH")
STORE_VERBS = ("STORE", "UID STORE")
SEARCH_VERBS = ("SEARCH", "UID SEARCH", "SORT", "UID SORT", "ESEARCH")
SELECT_VERBS = ("SELECT", "EXAMINE")

CLIENT_SYNC = re.compile(rb"^([^\s(){}\"%*+\\]{1,64}) +(UID +)?([A-Za-z][A-Za-z0-9-]*)")
SERVER_SYNC = re.compile(
    rb"^(?:\* +(?:OK|NO|BAD|BYE|PREAUTH|CAPABILITY|LIST|LSUB|XLIST|STATUS|SEARCH|ESEARCH|FLAGS|ID|"
    rb"NAMESPACE|ENABLED|VANISHED|\d+ +(?:EXISTS|RECENT|EXPUNGE|FETCH +\())|([^\s*+]+) +(?:OK|NO|BAD)\b)",
    re.I)
TAG_OK = re.compile(rb"^[^\x00-\x20(){}\"%*+\\\x7f]+$")
SECTION = re.compile(r"^(BODY|BINARY)(?:\.PEEK)?\[(.*)\](?:<(\d+)(?:\.(\d+))?>)?$", re.S)
_PART_SPEC = re.compile(r"^((?:\d+\.)*\d+)(?:\.(.*))?$", re.S)


def json_safe(value, depth=0):
    """A token tree as JSON-able values (strings for bytes and literals)."""
    if depth > 64:
        return None
    if isinstance(value, list):
        return [json_safe(v, depth + 1) for v in value]
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


def compact_part(entry: dict) -> dict:
    """What a part's header needs (see mime_header_for), with bounded values."""
    out = {}
    for key in ("part", "type", "encoding", "disposition", "id"):
        if entry.get(key):
            out[key] = str(entry[key])[:256]
    for key in ("params", "disposition_params"):
        if entry.get(key):
            out[key] = {str(k)[:64]: (str(v)[:256] if v is not None else None)
                        for k, v in list(entry[key].items())[:8]}
    return out


def mime_header_for(part: dict, binary: bool) -> bytes:
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


def section_kind(section: str) -> tuple[str, str]:
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


def norm_section(section: str) -> str:
    return " ".join(section.upper().split())


class Section:
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


def value_len(value) -> int:
    if isinstance(value, Literal):
        return value.size
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    return 0


def value_data(value) -> bytes:
    if isinstance(value, Literal):
        return value.data
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return b""


def expand_set(text: str, cap: int) -> list[int] | None:
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
