"""RFC 5322 / MIME messages: headers, bodies and attachments of a Message.

One module for every protocol: the SMTP, IMAP, POP3 and HTTP dissectors hand
the exact bytes of a message to :func:`fill_message`, which fills the header
fields, the text preview and the attachment list of a :class:`~maildissect.model.Message`
and returns the anomalies it found. It never raises on peer input and stays
within ``config.limits`` (``max_mime_depth``, ``max_mime_parts``,
``max_headers``, ``max_header_bytes``, ``preview_chars``).

Why a hand-written walker: the stdlib feed parser reads about 55 MB/s here,
line by line. This walker finds boundaries with ``bytes.find`` over whole
bodies, decodes with :mod:`binascii` and hashes with :mod:`hashlib`, which
keeps large base64 attachments well above 100 MB/s
(``benchmarks/bench_mime.py``). The stdlib ``email`` package still does what
it does well: address lists (:func:`email.utils.getaddresses`), dates
(:func:`email.utils.parsedate_to_datetime`) and the assembly of RFC 2231
parameter continuations (:func:`email.utils.decode_params`). Text is decoded by
:mod:`maildissect.text` (charsets resolved as the WHATWG Encoding Standard
does, RFC 2047 encoded words, the 8-bit rule for raw header bytes).

Representation choices (docs/mime.md has the full story):

* ``to``, ``cc``, ``bcc``: one string per address, ``Display Name <addr>``
  with the display name RFC 2047-decoded (quoted only when it contains RFC 5322
  specials), or the bare ``addr`` when there is no display name. Group syntax
  is flattened to its members.
* ``from_``, ``reply_to``, ``sender``, ``subject`` and every entry of
  ``headers``: the header value as written, unfolded, with encoded words
  decoded in place.
* Attachments: a leaf part is an attachment when its Content-Disposition is
  ``attachment``, when it carries a file name (``filename`` or ``name``
  parameter), or when it is not ``text/*``. A ``message/rfc822`` part is
  listed only by disposition or file name, and is always walked into: the
  attachments of a forwarded message are listed with part paths below it
  (``2.1``, ``2.2``...). Part paths follow IMAP numbering.
"""

from __future__ import annotations

import binascii
import hashlib
import html
import os
import re
from concurrent.futures import ThreadPoolExecutor

try:  # optional accelerator; binascii does the same work more slowly
    from pybase64 import b64decode as _fast_b64decode
except ImportError:  # pragma: no cover - depends on the installation
    _fast_b64decode = None
from email.utils import decode_params, getaddresses, parsedate_to_datetime, unquote

from .anomalies import make as make_anomaly
from .config import Config
from .model import Anomaly, Attachment, Message, Received
from .text import BAD_ENCODED_WORD, UNKNOWN_CHARSET, decode, decode_8bit, decode_words

__all__ = ["fill_message", "place_entities", "ANOMALIES", "side_of"]

ANOMALIES = {
    "mime_bad_base64": "a base64 body has characters outside the alphabet, data after padding or a truncated quantum (decoded leniently)",
    "mime_bad_qp": "a quoted-printable body has '=' not followed by two hex digits or a line end",
    "mime_bad_uuencode": "an x-uuencode body could not be fully decoded",
    "mime_unknown_transfer_encoding": "a Content-Transfer-Encoding that is not 7bit, 8bit, binary, base64, quoted-printable or x-uuencode (body kept as is)",
    "mime_missing_closing_boundary": "a multipart body ends without its closing --boundary-- line (last part runs to the end)",
    "mime_boundary_not_found": "a multipart body contains no delimiter line for its boundary (no parts)",
    "mime_multipart_without_boundary": "a multipart Content-Type without a boundary parameter (treated as text/plain)",
    "mime_bad_content_type": "a Content-Type that is not type/subtype (treated as the default type)",
    "mime_bad_parameter": "RFC 2231 parameter continuations that could not be assembled",
    "mime_unknown_charset": "a charset label that names no text encoding of the WHATWG Encoding Standard (utf-7, "
                            "unicode_escape, an unknown name): the text was read as UTF-8 with replacement",
    "mime_charset_error": "text that is not valid in its declared charset (decoded with replacement)",
    "mime_bad_encoded_word": "an RFC 2047 encoded word that could not be decoded (kept as written)",
    "mime_header_not_utf8": "8-bit header bytes that are not UTF-8 (decoded as windows-1252)",
    "mime_missing_header_separator": "a header block that ends with a line that is not a header instead of an empty line",
    "mime_header_block_too_large": "a header block larger than max_header_bytes (the rest of the block is skipped)",
    "mime_too_many_headers": "more header fields than max_headers in one block (the rest are skipped)",
    "mime_too_deep": "multipart / message nesting deeper than max_mime_depth (the deeper parts are skipped)",
    "mime_too_many_parts": "more MIME entities than max_mime_parts (the rest are skipped)",
    "mime_bad_date": "a Date header that cannot be parsed",
    "mime_encoded_composite": "a multipart or message entity declares base64 or quoted-printable, which RFC 2045 "
                              "forbids: the body is decoded and parsed, as mail clients do (or read as written "
                              "when it is plainly not encoded)",
}

# ---------------------------------------------------------------------------
# byte-level helpers

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# what a well-formed base64 body may contain besides the alphabet
_B64_ALLOWED = _B64_ALPHABET + b"= \t\r\n"
# every byte that is neither alphabet nor padding: deleted when salvaging
_B64_NOT_DATA = bytes(b for b in range(256) if b not in _B64_ALPHABET + b"=")
_B64_PAD_RUNS = re.compile(rb"=+")
_BAD_QP = re.compile(rb"=(?![0-9A-Fa-f]{2}|[ \t]*\r?\n|[ \t]*\Z)")
_FIELD_NAME = re.compile(rb"[!-9;-~]+")
_MSGID = re.compile(r"<[^<>]*>")
_WS = re.compile(r"\s+")
_HTML_DROP = re.compile(r"(?is)<(script|style|head|title)\b.*?</\1\s*>|<!--.*?-->")
_HTML_TAG = re.compile(r"(?s)<[^>]*>")
_SPECIALS = frozenset('()<>@,;:\\".[]')
_TEXT_CTE = (None, "", "7bit", "8bit", "binary")
_UU_ENCODINGS = ("x-uuencode", "uuencode", "x-uue", "uue")
_MESSAGE_TYPES = ("message/rfc822", "message/global")

#: how much of a text part is looked at for the preview (bounds regex work)
_PREVIEW_SCAN = 256 * 1024
#: directions whose message bytes come from the client
_OUTGOING_SIDES = {"sent": "client", "appended": "client", "uploaded": "client"}

# Hashing large buffers on worker threads: hashlib releases the GIL while it
# hashes, binascii does not while it decodes, so the digests of one
# attachment (and of the whole message) are computed while the next part is
# being decoded. Small buffers are hashed inline: a thread hop costs more.
_THREAD_MIN = 1 << 20
_pool_state: list = [None, None]  # [executor, pid that created it]


def _executor() -> ThreadPoolExecutor:
    pid = os.getpid()
    if _pool_state[0] is None or _pool_state[1] != pid:  # none yet, or a forked child
        _pool_state[0] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="maildissect-hash")
        _pool_state[1] = pid
    return _pool_state[0]


def _b64decode(data: bytes) -> bytes:
    """Base64 to bytes, ignoring characters outside the alphabet (line breaks).

    pybase64 (SIMD) decodes about 2.5 times faster than binascii here; it is
    used only for data whose padding is at the end, where both give the same
    bytes, and binascii takes over when it refuses something binascii accepts.
    """
    if _fast_b64decode is not None:
        try:
            return _fast_b64decode(data, validate=False)
        except (binascii.Error, ValueError):
            pass
    return binascii.a2b_base64(data)


def _file_digests(data) -> tuple[str, str, str]:
    return (hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest(),
            hashlib.sha256(data).hexdigest())


def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def _later(fn, data):
    """``fn(data)`` now for small data, else on a worker; returns a getter."""
    if len(data) >= _THREAD_MIN:
        try:
            return _executor().submit(fn, data).result
        except RuntimeError:  # interpreter shutting down
            pass
    value = fn(data)
    return lambda: value


def _param_bytes(value: str) -> bytes:
    """The bytes of an RFC 2231 value as :func:`email.utils.decode_params` leaves
    it: percent-escapes became Latin-1 characters; characters beyond Latin-1
    (from an unescaped continuation of a UTF-8 header) are taken as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return b"".join(c.encode("latin-1") if ord(c) < 256 else c.encode("utf-8", "replace") for c in value)


def side_of(direction: str) -> str:
    """The side whose bytes a message of ``direction`` is: client for sent,
    appended and uploaded messages, server for retrieved and downloaded ones."""
    return _OUTGOING_SIDES.get(direction, "server")


def _split_params(value: str) -> list[str]:
    """Split ``type/sub; a=b; c="d;e"`` at semicolons outside quoted strings."""
    if '"' not in value:
        return value.split(";")
    out, cur, quoted, escaped = [], [], False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


def _quote_name(name: str) -> str:
    if any(ch in _SPECIALS for ch in name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def _comment_tokens(text: str) -> list[tuple[bool, str]]:
    """Tokens of a structured header: (is_comment, text); comments may nest."""
    tokens: list[tuple[bool, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "(":
            depth, j = 0, i
            while j < n:
                c = text[j]
                if c == "\\":
                    j += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            tokens.append((True, text[i:j + 1]))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] != "(":
                j += 1
            tokens.append((False, text[i:j]))
            i = j
    return tokens


def _epoch(value: str) -> float | None:
    """RFC 5322 date -> UTC epoch seconds; a zone-less date is taken as UTC."""
    try:
        dt = parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    try:
        if dt.tzinfo is None:
            from datetime import timezone
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


# ---------------------------------------------------------------------------
# the parser


class _Parser:
    """Walks one message; collects fields, attachments and anomalies."""

    def __init__(self, msg: Message, raw: bytes, config: Config):
        self.msg = msg
        self.raw = raw
        self.config = config
        self.limits = config.limits
        self.found: dict[str, list] = {}  # anomaly name -> [first detail, count]
        self.parts = 0
        self.stopped = False  # too many parts: walk abandoned
        self.plain: str | None = None
        self.html: str | None = None
        self.digests: list = []  # (Attachment, getter of its digests)

    # -- anomalies -----------------------------------------------------------

    def note(self, name: str, detail: str) -> None:
        entry = self.found.get(name)
        if entry is None:
            self.found[name] = [detail, 1]
        else:
            entry[1] += 1

    def anomalies(self) -> list[Anomaly]:
        msg = self.msg
        side = side_of(msg.direction)
        out = []
        for name, (detail, count) in self.found.items():
            if count > 1:
                detail = f"{detail} (and {count - 1} more)"
            out.append(make_anomaly(msg.ts, msg.session_id, side, name, detail, self.config.strict))
        return out

    # -- text ------------------------------------------------------------------

    def text(self, data: bytes) -> str:
        """Header bytes as text: UTF-8 (RFC 6532), else windows-1252 with a note."""
        text, utf8 = decode_8bit(data)
        if not utf8:
            self.note("mime_header_not_utf8", repr(data[:60]))
        return text

    def decode_charset(self, data: bytes, charset: str | None, where: str) -> str:
        """Bytes in a declared charset -> str, noting unknown charsets and bad bytes.

        An undeclared charset is us-ascii (RFC 2045), read by the 8-bit rule of
        :func:`maildissect.text.decode` (UTF-8 when valid, else windows-1252).
        """
        text, problem = decode(data, charset or "us-ascii", bom=True)
        if problem is not None:
            self.problem(problem, where, (charset or "us-ascii").strip().strip('"').lower())
        return text

    def problem(self, kind: str, where: str, label: str) -> None:
        """Note a decoding problem of :mod:`maildissect.text` as a mime_* anomaly."""
        label = label[:60]
        if kind == UNKNOWN_CHARSET:
            self.note("mime_unknown_charset", f"{where}: {label}")
        elif kind == BAD_ENCODED_WORD:
            self.note("mime_bad_encoded_word", f"{where}: {label}")
        elif label in ("us-ascii", "ascii", "ansi_x3.4-1968"):
            self.note("mime_charset_error", f"{where}: 8-bit text declared {label}")
        else:
            self.note("mime_charset_error", f"{where}: invalid {label}")

    def decode_words(self, value: str, where: str = "encoded word") -> str:
        """Decode RFC 2047 encoded words in place (:func:`maildissect.text.decode_words`)."""
        if "=?" not in value:
            return value
        text, problems = decode_words(value)
        for kind, detail in problems:
            self.problem(kind, where, detail)
        return text

    # -- header blocks -----------------------------------------------------------

    def header_block(self, buf: bytes, start: int, end: int, where: str):
        """Parse the header block at ``buf[start:end]``.

        Returns ``(fields, body_start, separated)``: fields as
        ``[(name, raw value str)]`` unfolded, the offset where the body begins,
        and whether an empty line ended the block (False for a headers-only or
        truncated message, or one whose headers run straight into a non-header
        line).
        """
        limits = self.limits
        max_bytes = limits.max_header_bytes
        max_fields = limits.max_headers
        fields: list[tuple[str, str]] = []
        name: str | None = None
        value: list[bytes] = []
        dropping = False  # past max_headers: keep scanning, stop storing
        pos = start
        first = True
        while pos < end:
            if pos - start >= max_bytes:
                self.note("mime_header_block_too_large", f"{where}: over {max_bytes} bytes")
                if name is not None and not dropping:
                    fields.append((name, self.text(b"".join(value))))
                return fields, *self._skip_to_body(buf, pos, end)
            nl = buf.find(b"\n", pos, end)
            nxt = end if nl < 0 else nl + 1
            line_end = end if nl < 0 else nl
            if line_end > pos and buf[line_end - 1] == 13:
                line_end -= 1
            if line_end == pos:
                if name is not None and not dropping:
                    fields.append((name, self.text(b"".join(value))))
                return fields, nxt, True
            c = buf[pos]
            if c == 32 or c == 9:
                if name is not None:
                    value.append(buf[pos:line_end])
                pos = nxt
                first = False
                continue
            colon = buf.find(b":", pos, line_end)
            field_name = buf[pos:colon].rstrip(b" \t") if colon > pos else b""
            if not field_name or not _FIELD_NAME.fullmatch(field_name):
                if first and buf.startswith(b"From ", pos):
                    pos = nxt  # an mbox "From " separator line
                    first = False
                    continue
                if name is not None and not dropping:
                    fields.append((name, self.text(b"".join(value))))
                self.note("mime_missing_header_separator", f"{where}: {bytes(buf[pos:min(line_end, pos + 60)])!r}")
                return fields, pos, False
            if name is not None and not dropping:
                fields.append((name, self.text(b"".join(value))))
            if len(fields) >= max_fields and not dropping:
                self.note("mime_too_many_headers", f"{where}: over {max_fields} fields")
                dropping = True
            name = field_name.decode("ascii")
            value = [buf[colon + 1:line_end]]
            first = False
            pos = nxt
        if name is not None and not dropping:
            fields.append((name, self.text(b"".join(value))))
        return fields, end, False

    @staticmethod
    def _skip_to_body(buf: bytes, pos: int, end: int) -> tuple[int, bool]:
        """Offset of the body after an over-long header block (its empty line)."""
        best = -1
        for sep in (b"\n\n", b"\n\r\n"):
            i = buf.find(sep, max(pos - 1, 0), end)
            if i >= 0 and (best < 0 or i < best):
                best, size = i, len(sep)
        if best < 0:
            return end, False
        return best + size, True

    # -- parameters ----------------------------------------------------------------

    def params(self, value: str | None, where: str) -> tuple[str, dict[str, str]]:
        """``main; k=v; k*0*=...`` -> (main lower-cased, {k: decoded value})."""
        if not value:
            return "", {}
        items = _split_params(value)
        main = items[0].strip().lower()
        pairs = []
        for item in items[1:]:
            key, eq, val = item.partition("=")
            key = key.strip().lower()
            if key and eq:
                pairs.append((key, val.strip()))
        if not pairs:
            return main, {}
        try:
            decoded = decode_params([(main, "")] + pairs)
        except (TypeError, ValueError, IndexError, LookupError, UnicodeError):
            self.note("mime_bad_parameter", f"{where}: {value[:80]}")
            decoded = [(main, "")] + pairs
        out: dict[str, str] = {}
        for key, val in decoded[1:]:
            if isinstance(val, tuple):  # (charset, language, quoted value): RFC 2231
                label = val[0] or None
                text, problem = decode(_param_bytes(unquote(val[2])), label)
                if problem is not None:
                    self.problem(problem, f"{where} {key}", label or "us-ascii")
            else:
                text = unquote(val)
            out.setdefault(key, text)
        return main, out

    def content_type(self, value: str | None, default: str, where: str) -> tuple[str, dict[str, str]]:
        main, params = self.params(value, where)
        if not main:
            return default, params
        kind, slash, sub = main.partition("/")
        if not slash or not kind.strip() or not sub.strip() or " " in kind.strip() or " " in sub.strip():
            self.note("mime_bad_content_type", f"{where}: {main[:60]}")
            return default, params
        return f"{kind.strip()}/{sub.strip()}", params

    def filename(self, dparams: dict[str, str], cparams: dict[str, str]) -> str | None:
        name = dparams.get("filename") or cparams.get("name")
        if name is None:
            return None
        # RFC 2047 inside parameters is not standard but is what many MUAs send
        name = self.decode_words(name, "file name").strip()
        return name or None

    # -- bodies ----------------------------------------------------------------------

    def decode_body(self, data: bytes, cte: str | None, where: str) -> bytes:
        if cte in _TEXT_CTE:
            return data
        if cte == "base64":
            return self.base64(data, where)
        if cte == "quoted-printable":
            if _BAD_QP.search(data):
                self.note("mime_bad_qp", where)
            return binascii.a2b_qp(data)
        if cte in _UU_ENCODINGS:
            return self.uudecode(data, where)
        self.note("mime_unknown_transfer_encoding", f"{where}: {cte[:40]}")
        return data

    def base64(self, data: bytes, where: str) -> bytes:
        bad = bool(data.translate(None, _B64_ALLOWED))
        out = None
        pad = data.find(b"=")
        # a2b_base64 silently stops at padding: data after it (concatenated
        # base64 blocks) must be salvaged piece by piece
        if pad >= 0 and data[pad:].translate(None, b"= \t\r\n"):
            bad = True
        else:
            try:
                out = _b64decode(data)
            except (binascii.Error, ValueError):
                bad = True
        if out is None:
            out = b"".join(self._b64_pieces(data))
        if bad:
            self.note("mime_bad_base64", where)
        return out

    @staticmethod
    def _b64_pieces(data: bytes):
        clean = data.translate(None, _B64_NOT_DATA)
        for piece in _B64_PAD_RUNS.split(clean):
            if len(piece) % 4 == 1:
                piece = piece[:-1]
            if piece:
                try:
                    yield binascii.a2b_base64(piece + b"=" * (-len(piece) % 4))
                except (binascii.Error, ValueError):
                    continue

    def uudecode(self, data: bytes, where: str) -> bytes:
        out = []
        started = False
        bad = False
        for line in data.splitlines():
            if not started:
                if line.startswith(b"begin "):
                    started = True
                continue
            if line.strip() in (b"end", b"`", b""):
                if line.strip() == b"end":
                    break
                continue
            try:
                out.append(binascii.a2b_uu(line))
            except binascii.Error:
                # a common encoder bug: lines with garbage after the data
                try:
                    nbytes = (((line[0] - 32) & 63) * 4 + 5) // 3
                    out.append(binascii.a2b_uu(line[:nbytes]))
                except (binascii.Error, IndexError):
                    bad = True
        if bad or not started:
            self.note("mime_bad_uuencode", where)
        return b"".join(out)

    # -- the walk ----------------------------------------------------------------------

    def split_multipart(self, buf: bytes, start: int, end: int, boundary: str, where: str):
        """Body ranges of the parts of a multipart body between start and end:
        ``(start, end, closed)``, closed False for a last part that runs to the end
        because the closing delimiter is missing."""
        delim = b"--" + boundary.encode("utf-8", "surrogateescape")
        dlen = len(delim)
        parts: list[tuple[int, int]] = []
        cur = -1  # start of the part being read, -1 before the first delimiter
        pos = start
        closed = False
        find = buf.find
        while True:
            i = find(delim, pos, end)
            if i < 0:
                break
            if i != start and buf[i - 1] != 10:
                pos = i + 1  # not at a line start
                continue
            j = i + dlen
            is_close = buf[j:j + 2] == b"--"
            k = j + 2 if is_close else j
            nl = find(b"\n", k, end)
            line_end = end if nl < 0 else nl + 1
            if buf[k:line_end].strip(b" \t\r\n"):
                pos = j  # "--boundaryXYZ": a longer boundary, not ours
                continue
            if cur >= 0:
                pe = i
                if pe > cur and buf[pe - 1] == 10:
                    pe -= 1
                    if pe > cur and buf[pe - 1] == 13:
                        pe -= 1
                parts.append((cur, pe, True))
            if is_close:
                closed = True
                break
            cur = pos = line_end
        if cur < 0:
            self.note("mime_boundary_not_found", where)
        elif not closed:
            self.note("mime_missing_closing_boundary", where)
            parts.append((cur, end, False))
        return parts

    def walk(self, raw: bytes, top_fields, body_start: int) -> None:
        limits = self.limits
        max_depth = limits.max_mime_depth
        max_parts = limits.max_mime_parts
        keep = self.config.keep_bodies
        msg = self.msg
        # (buffer, start, end, path, depth, is_message_root, default type, pre-parsed fields,
        #  closed: the entity's bytes end at a delimiter or with its message, not where a
        #  multipart without its closing boundary ran out)
        stack = [(raw, 0, len(raw), "", 0, True, "text/plain", (top_fields, body_start), True)]
        while stack:
            buf, start, end, path, depth, root, default, parsed, closed = stack.pop()
            self.parts += 1
            if self.parts > max_parts:
                self.note("mime_too_many_parts", f"over {max_parts} entities")
                return
            where = f"part {path or '1'}" if not root or path else "message"
            if parsed is not None:
                fields, bstart = parsed
            else:
                fields, bstart, _ = self.header_block(buf, start, end, where)
            hdr: dict[str, str] = {}
            for name, value in fields:
                hdr.setdefault(name.lower(), value)
            ctype, cparams = self.content_type(hdr.get("content-type"), default, where)
            cte = hdr.get("content-transfer-encoding")
            cte = cte.strip().lower().split(None, 1)[0] if cte and cte.strip() else None
            if ctype.startswith("multipart/"):
                boundary = cparams.get("boundary")
                if not boundary:
                    self.note("mime_multipart_without_boundary", where)
                    ctype = "text/plain"
                elif depth >= max_depth:
                    self.note("mime_too_deep", f"{where}: depth {depth}")
                    continue
                else:
                    if cte not in _TEXT_CTE:
                        buf, bstart, end = self.composite_body(buf, bstart, end, cte, ctype, boundary, where)
                    children = self.split_multipart(buf, bstart, end, boundary, where)
                    child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
                    last = len(children)
                    for index in range(last, 0, -1):
                        s, e, child_closed = children[index - 1]
                        child_path = f"{path}.{index}" if path else str(index)
                        stack.append((buf, s, e, child_path, depth + 1, False, child_default, None,
                                      closed and child_closed))
                    continue
            own_path = (f"{path}.1" if path else "1") if root else path
            where = f"part {own_path}"
            disposition, dparams = self.params(hdr.get("content-disposition"), where)
            disposition = disposition or None
            filename = self.filename(dparams, cparams)
            is_message = ctype in _MESSAGE_TYPES
            if is_message:
                is_attachment = disposition == "attachment" or filename is not None
            else:
                is_attachment = (disposition == "attachment" or filename is not None
                                 or not ctype.startswith("text/"))
            whole = not bstart and end == len(buf)
            identity = cte in _TEXT_CTE
            if is_message and not identity and not self.encoded_message(buf, bstart, end, cte, where):
                identity = True  # declared encoded but written plain: read as written
            if identity:
                # no copy: a view for hashing, offsets for walking into a message
                body = buf if whole else memoryview(buf)[bstart:end]
            else:
                body = self.decode_body(buf if whole else buf[bstart:end], cte, where)
            if is_attachment or (not is_message and len(body)):
                # a file: every leaf entity, and a forwarded message that is an attachment (an
                # empty body part is none: a header-only fetch has one; Zeek logs no file for it)
                cid = hdr.get("content-id")
                charset = cparams.get("charset")
                entity = Attachment(
                    filename=filename, content_type=ctype, size=len(body), md5="", sha1="",
                    sha256="", disposition=disposition, part=own_path, encoding=cte,
                    content_id=cid.strip() if cid else None,
                    data=bytes(body) if keep and len(body) <= limits.max_extract_size else None,
                    charset=charset.strip()[:100] if charset else None, is_attachment=is_attachment,
                    complete=closed, index=self.parts)
                msg.entities.append(entity)
                if is_attachment:
                    msg.attachments.append(entity)
                self.digests.append((entity, _later(_file_digests, body)))
            if is_message:
                if depth >= max_depth:
                    self.note("mime_too_deep", f"{where}: depth {depth}")
                elif identity:
                    # nested 7bit messages share the outer buffer: copying each
                    # level would hold depth x size bytes
                    stack.append((buf, bstart, end, own_path, depth + 1, True, "text/plain", None, closed))
                else:
                    stack.append((body, 0, len(body), own_path, depth + 1, True, "text/plain", None, closed))
                continue
            if is_attachment or not ctype.startswith("text/"):
                continue
            charset = cparams.get("charset")
            if ctype == "text/html":
                msg.has_html = True
                if self.html is None:
                    self.html = self.decode_charset(bytes(body[:_PREVIEW_SCAN]), charset, where)
                else:
                    self.decode_charset(bytes(body), charset, where)
            elif ctype == "text/plain" and self.plain is None:
                self.plain = self.decode_charset(bytes(body[:_PREVIEW_SCAN]), charset, where)
            else:
                self.decode_charset(bytes(body), charset, where)

    # -- encoded composites -----------------------------------------------------------------
    #
    # RFC 2045 6.4 allows only 7bit, 8bit and binary on multipart and message entities, but
    # senders do encode them and mail clients decode an encoded message/rfc822 (Thunderbird
    # does); a reader that does not is blind to what the encoding hides (docs/mime.md). The
    # body is read as written when it is plainly not encoded (a multipart whose delimiters are
    # in the clear, a message whose "base64" holds header lines), else decoded and parsed.

    def composite_body(self, buf: bytes, bstart: int, end: int, cte: str, ctype: str, boundary: str,
                       where: str) -> tuple[bytes, int, int]:
        """The bytes to split a multipart with a declared transfer encoding: decoded when its
        delimiters are only found after decoding."""
        if cte not in ("base64", "quoted-printable") and cte not in _UU_ENCODINGS:
            return buf, bstart, end  # an unknown encoding on a composite: read as written
        delim = b"--" + boundary.encode("utf-8", "surrogateescape")
        i = buf.find(delim, bstart, end)
        if i >= 0 and (i == bstart or buf[i - 1] == 10):
            self.note("mime_encoded_composite", f"{where}: {ctype} declared {cte}, written plain (read as written)")
            return buf, bstart, end
        decoded = self.decode_body(buf[bstart:end], cte, where)
        self.note("mime_encoded_composite", f"{where}: {ctype} encoded {cte} (decoded and parsed)")
        return decoded, 0, len(decoded)

    def encoded_message(self, buf: bytes, bstart: int, end: int, cte: str, where: str) -> bool:
        """Whether a message/* entity declared with transfer encoding ``cte`` is to be decoded
        (noted as ``mime_encoded_composite`` either way)."""
        if cte == "base64" and memoryview(buf)[bstart:min(end, bstart + 4096)].tobytes().translate(
                None, _B64_ALLOWED):
            self.note("mime_encoded_composite", f"{where}: message declared base64, written plain (read as written)")
            return False
        if cte not in ("base64", "quoted-printable") and cte not in _UU_ENCODINGS:
            self.note("mime_unknown_transfer_encoding", f"{where}: {cte[:40]}")
            return False
        self.note("mime_encoded_composite", f"{where}: message encoded {cte} (decoded and parsed)")
        return True

    # -- top level ------------------------------------------------------------------------

    def run(self) -> None:
        msg, raw = self.msg, self.raw
        msg.size = len(raw)
        whole = _later(_sha256, raw)
        if self.config.keep_bodies:
            msg.raw = raw
        fields, body_start, separated = self.header_block(raw, 0, len(raw), "message")
        body = _later(_sha256, memoryview(raw)[body_start:]) if separated else None
        try:
            self.header_fields(fields)
            self.walk(raw, fields, body_start)
            msg.text_preview = self.preview()
        finally:
            msg.sha256 = whole()
            msg.body_sha256 = body() if body is not None else None
            for att, digests in self.digests:
                att.md5, att.sha1, att.sha256 = digests()

    def header_fields(self, fields: list[tuple[str, str]]) -> None:
        msg = self.msg
        by_name: dict[str, list[str]] = {}
        headers = []
        for name, value in fields:
            value = value.strip()
            lname = name.lower()
            by_name.setdefault(lname, []).append(value)
            headers.append((name, self.decode_words(value, name)))
        msg.headers = headers

        def first(key: str) -> str | None:
            values = by_name.get(key)
            return values[0] if values else None

        def decoded(key: str) -> str | None:
            value = first(key)
            return None if value is None else self.decode_words(value, key)

        msg.from_ = decoded("from")
        msg.to = self.addresses(by_name.get("to"), "to")
        msg.cc = self.addresses(by_name.get("cc"), "cc")
        msg.bcc = self.addresses(by_name.get("bcc"), "bcc")
        msg.reply_to = decoded("reply-to")
        msg.sender = decoded("sender")
        msg.subject = decoded("subject")
        msg.message_id = first("message-id") or None
        msg.in_reply_to = first("in-reply-to") or None
        refs = " ".join(by_name.get("references", ()))
        msg.references = _MSGID.findall(refs) or refs.split()
        date = decoded("date")
        msg.date_raw = date
        if date is not None:
            msg.date = _epoch(date)
            if msg.date is None:
                self.note("mime_bad_date", date[:80])
        msg.user_agent = decoded("user-agent") or decoded("x-mailer")
        msg.return_path = first("return-path") or None
        xip = first("x-originating-ip")
        msg.x_originating_ip = xip.strip("[] \t") or None if xip is not None else None
        msg.received = [self.received(v) for v in by_name.get("received", ())]
        msg.dkim_signed = "dkim-signature" in by_name
        msg.authentication_results = decoded("authentication-results")

    def addresses(self, values: list[str] | None, where: str) -> list[str]:
        """Address header values -> ``Name <addr>`` / ``addr`` strings."""
        if not values:
            return []
        try:
            pairs = getaddresses(values)
        except (ValueError, IndexError, TypeError, AttributeError):
            pairs = [("", v.strip()) for value in values for v in value.split(",")]
        out = []
        for name, addr in pairs:
            if not addr:
                continue
            name = self.decode_words(name, where).strip() if name else ""
            out.append(f"{_quote_name(name)} <{addr}>" if name else addr)
        return out

    def received(self, value: str) -> Received:
        """One Received: header -> Received (from, by, with, id, for, date)."""
        text = _WS.sub(" ", self.decode_words(value, "received")).strip()
        head, sep, when = text.rpartition(";")
        if not sep:
            head, when = text, ""
        rec = Received(raw=text, date=_epoch(when.strip()) if when.strip() else None)
        tokens = _comment_tokens(head)
        i, n = 0, len(tokens)
        while i < n:
            is_comment, word = tokens[i]
            key = word.lower() if not is_comment else ""
            if key in ("from", "by", "with", "id", "for", "via") and i + 1 < n and not tokens[i + 1][0]:
                val = tokens[i + 1][1]
                i += 2
                if key == "from":
                    # the comment after the host name carries the connecting
                    # address, the most useful part of the clause
                    while i < n and tokens[i][0]:
                        val += " " + tokens[i][1]
                        i += 1
                    if rec.from_ is None:
                        rec.from_ = val
                elif key == "by" and rec.by is None:
                    rec.by = val
                elif key == "with" and rec.with_ is None:
                    rec.with_ = val
                elif key == "id" and rec.id is None:
                    rec.id = val.rstrip(";")
                elif key == "for" and rec.for_ is None:
                    rec.for_ = val.strip("<>;")
                continue
            i += 1
        return rec

    def preview(self) -> str | None:
        limit = self.limits.preview_chars
        if limit <= 0:
            return None
        text = self.plain
        if text is None and self.html is not None:
            text = html.unescape(_HTML_TAG.sub(" ", _HTML_DROP.sub(" ", self.html)))
        if text is None:
            return None
        words = []
        size = 0
        # collapse whitespace on a prefix only: a preview needs a few hundred characters
        for word in text[: max(limit * 8, 4096)].split():
            words.append(word)
            size += len(word) + 1
            if size > limit:
                break
        out = " ".join(words)[:limit]
        return out or None


_MULTIPART_HEADER = re.compile(rb"(?im)^content-type:[ \t]*multipart/")


def place_entities(msg: Message, path: str, header: bytes, text: bool = False) -> None:
    """Give the entities of a message parsed from one fetched section (IMAP ``BODY[2]``, whose
    ``header`` is that part's MIME header; ``text``: ``BODY[2.TEXT]``, the body of the message in
    part 2) the part paths they have in the whole message."""
    if not path:
        return
    prefix = text or bool(_MULTIPART_HEADER.search(header))
    for a in msg.entities if msg.entities else msg.attachments:
        p = a.part or "1"
        if prefix:  # the section's children: 1, 2... are path.1, path.2...
            a.part = f"{path}.{p}"
        else:  # the section itself is entity 1 (a leaf, or a message whose entities are 1.x)
            a.part = path + p[1:] if p == "1" or p.startswith("1.") else f"{path}.{p}"


def fill_message(msg: Message, raw: bytes, config: Config) -> list[Anomaly]:
    """Fill ``msg`` from the RFC 5322 / MIME bytes ``raw``; return anomalies.

    ``msg`` already carries protocol, session_id, ts and direction (and the
    envelope for SMTP). ``raw`` is the message exactly as transferred (CRLF or
    LF line endings; headers-only or truncated messages are fine). Sets size,
    sha256, body_sha256, the header fields, received hops, attachments, the
    text preview and has_html; ``raw`` and attachment ``data`` only when
    ``config.keep_bodies``. Anomalies are named ``mime_*`` (see
    :data:`ANOMALIES`), one per name and message with a count of repeats; their
    side is the sender's (:func:`side_of`). Raises on no input (an exception
    is a bug; in ``config.strict`` mode an anomaly raises
    :class:`~maildissect.anomalies.StrictError`).
    """
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    parser = _Parser(msg, raw, config)
    # No catch-all here: an exception is a bug, and the router contains it
    # (dissector_error, maildissect.pipeline) rather than letting it pass for input.
    parser.run()
    return parser.anomalies()
