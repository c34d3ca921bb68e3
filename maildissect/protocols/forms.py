"""Request and response body formats met in web mail: forms, multipart, JSON.

Pure functions and small streaming parsers over bytes, shared by the HTTP/1
dissector and any other front end that produces HTTP messages:

- :func:`header_params` splits ``type/subtype; name="value"`` header values
  (RFC 9110 parameters, with RFC 2231 ``name*=`` extended values and
  continuations decoded);
- :func:`parse_urlencoded` reads ``application/x-www-form-urlencoded``;
- :class:`MultipartParser` reads ``multipart/form-data`` (and any other
  multipart body) incrementally: each part is hashed as it streams by and only
  the parts worth parsing (form fields, attached messages) are kept, within a
  byte budget;
- :func:`load_json` parses JSON with a nesting bound;
- :func:`login_fields` picks the user and password fields out of a form.

Nothing here raises on peer input: problems come back as ``(name, detail)``
issue pairs for the caller to turn into anomalies. Text is decoded by
:mod:`maildissect.text` (charsets as the WHATWG Encoding Standard resolves
them; forms and URLs as its urlencoded parser reads them).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import unquote_to_bytes

from .. import text as _text

__all__ = [
    "header_params", "parse_urlencoded", "MultipartParser", "FormPart", "load_json",
    "login_fields", "is_message_type", "decode_text",
]

# A parameter: ;name=token or ;name="quoted \" string". Values of quoted strings
# may hold ';' and '=', hence a small scanner instead of str.split.
_PARAM = re.compile(r';\s*([^\s=;]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"?|[^;]*))?', re.S)


def decode_text(raw: bytes) -> str:
    """Header or field bytes as text: UTF-8 when valid (browsers send raw UTF-8
    file names), else windows-1252 (every byte maps, nothing is lost)."""
    return _text.wire(raw)


def _issue(kind: str, where: str, label: str | None = None) -> tuple[str, str]:
    """A decoding problem of :mod:`maildissect.text` as an issue pair."""
    where = where[:80]
    return _text.anomaly_name(kind), (f"{where}: {label[:60]}" if label else where)


def header_params(value: str | None, issues: list | None = None) -> tuple[str, dict[str, str]]:
    """``("type/subtype", {param: value})`` from a Content-Type-like header.

    The main value is lower-cased and stripped; parameter names are
    lower-cased; quoted values are unquoted; RFC 2231 extended parameters
    (``filename*=UTF-8''na%C3%AFve.txt``, continuations ``name*0``) are decoded
    and take precedence over the plain form, as RFC 6266 asks. A charset that
    names no text encoding, or bytes invalid in theirs, add an issue pair to
    ``issues`` when it is given.
    """
    if not value:
        return "", {}
    main, sep, rest = value.partition(";")
    pairs: list[tuple[str, str]] = []
    if sep:
        for m in _PARAM.finditer(";" + rest):
            name, val = m.group(1).lower(), (m.group(2) or "").strip()
            if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
                val = re.sub(r"\\(.)", r"\1", val[1:-1])
            elif val.startswith('"'):
                val = val[1:]
            pairs.append((name, val))
    params: dict[str, str] = {}
    extended: dict[str, list[tuple[int, bool, str]]] = {}
    for name, val in pairs:
        if "*" not in name:
            params.setdefault(name, val)
            continue
        # RFC 2231: name*=charset'lang'%XX, or continuations name*0, name*1*, ...
        base, _, rest = name.partition("*")
        encoded = rest.endswith("*") or rest == ""
        index = rest.rstrip("*")
        # isascii: str.isdigit() accepts '²' (Latin-1 0xB2), which int() refuses
        extended.setdefault(base, []).append((int(index) if index.isascii() and index.isdigit() else 0,
                                              encoded, val))
    for base, pieces in extended.items():
        pieces.sort(key=lambda p: p[0])
        charset = "utf-8"
        raw = bytearray()
        for i, (_, encoded, val) in enumerate(pieces):
            if encoded:
                if i == 0 and val.count("'") >= 2:
                    charset, _, val = val.split("'", 2)
                raw += unquote_to_bytes(val)
            else:
                raw += val.encode("utf-8", "replace")
        params[base], problem = _text.decode(bytes(raw), charset or "utf-8")
        if problem is not None and issues is not None:
            issues.append(_issue(problem, f"parameter {base}*", charset or "utf-8"))
    return main.strip().lower(), params


def is_message_type(content_type: str | None, filename: str | None = None) -> bool:
    """True for a whole Internet message: ``message/rfc822``, ``message/global``
    or a file named ``*.eml``."""
    if content_type and content_type.split(";", 1)[0].strip().lower() in ("message/rfc822", "message/global"):
        return True
    return bool(filename) and filename.lower().rstrip().endswith(".eml")


def parse_urlencoded(data: bytes, max_fields: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Fields of an urlencoded body (or URL query), in order, and issues.

    Read as the WHATWG application/x-www-form-urlencoded parser reads it:
    split at ``&``, ``+`` is a space, percent-escapes are bytes, and the bytes
    are UTF-8 (invalid ones replaced, with a ``text_charset_error`` issue that
    names the first such field). More than ``max_fields`` fields: the first
    ones are kept.
    """
    issues: list[tuple[str, str]] = []
    pieces = bytes(data).split(b"&")
    if len(pieces) > max_fields:
        issues.append(("http_form_too_many_fields", f"more than {max_fields} fields"))
        pieces = pieces[:max_fields]
    fields: list[tuple[str, str]] = []
    bad: list[str] = []
    for piece in pieces:
        if not piece:
            continue
        name, _, value = piece.partition(b"=")
        name_text, p1 = _text.percent_decode(name, plus=True)
        value_text, p2 = _text.percent_decode(value, plus=True)
        if p1 or p2:
            bad.append(name_text)
        fields.append((name_text, value_text))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        issues.append(("text_charset_error", f"form field {bad[0][:60]}: invalid UTF-8{more}"))
    return fields, issues


def load_json(data: bytes, max_depth: int):
    """``(value, issue)``: the parsed JSON document, or None and an issue pair.

    The C scanner recurses per nesting level and raises RecursionError on very
    deep input; the depth is then checked iteratively against ``max_depth``
    (only when the bracket count makes it possible to exceed it). Strings are
    writable (:func:`maildissect.text.load_json`): a document whose ``\\ud800``
    escapes or invalid UTF-8 had to be repaired comes with its value and a
    ``text_invalid_unicode`` / ``text_charset_error`` issue.
    """
    try:
        value, problems = _text.load_json(data)
    except RecursionError:
        return None, ("http_json_too_deep", f"nesting beyond {max_depth}")
    except ValueError as exc:
        return None, ("http_json_invalid", str(exc)[:200])
    if (data.count(b"[") + data.count(b"{") > max_depth) and _depth(value, max_depth) > max_depth:
        return None, ("http_json_too_deep", f"nesting beyond {max_depth}")
    if problems:
        # the surrogate repair (the last problem) names the fields; a charset error is mentioned with it
        kind, detail = problems[-1]
        if len(problems) > 1:
            detail += "; invalid UTF-8 replaced"
        return value, (_text.anomaly_name(kind), f"JSON body: {detail}")
    return value, None


def _depth(value, limit: int) -> int:
    """Nesting depth of a parsed JSON value, stopping once past ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if d > deepest:
            deepest = d
            if deepest > limit:
                return deepest
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


# -- login forms -------------------------------------------------------------

_USER_WORDS = {
    "user", "username", "login", "email", "mail", "uname", "userid", "account", "log", "name",
    "uid", "loginname", "usr", "emailaddress", "loginid", "nick", "principal", "identifier",
    "usermail", "useremail",
}
_PASS_WORDS = {"pass", "password", "passwd", "pwd", "pw", "passphrase", "pin", "secret", "passcode",
               "userpass", "loginpass", "userpassword", "loginpassword"}


def _words(name: str) -> list[str]:
    """``_user`` -> [user]; ``j_password`` -> [j, password]; ``userPassword`` -> [user, password]."""
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])", name) if w]


def is_password_field(name: str) -> bool:
    """A form field name that holds a password (``_pass``, ``password``, ``j_password``,
    ``userPassword``, ``pwd``...), judged word by word so that ``compass`` is not one."""
    return any(w in _PASS_WORDS or w.startswith("password") for w in _words(name))


def is_user_field(name: str) -> bool:
    """A form field name that holds a login name (``_user``, ``username``, ``email``...)."""
    return any(w in _USER_WORDS or w.startswith(("user", "login", "email")) for w in _words(name))


def login_fields(fields) -> tuple[str, str | None, str, str] | None:
    """``(user_field, user, password_field, password)`` when ``fields`` (pairs of
    name and value) look like a login form: a non-empty password-like field,
    with the first user-like field if there is one."""
    pw_name = pw = None
    user_name, user = "", None
    for name, value in fields:
        if not isinstance(value, str):
            continue
        if pw_name is None and value and is_password_field(name):
            pw_name, pw = name, value
        elif user is None and value and is_user_field(name) and not is_password_field(name):
            user_name, user = name, value
    if pw_name is None:
        return None
    return user_name, user, pw_name, pw


# -- multipart ---------------------------------------------------------------

class FormPart:
    """One part of a multipart body, hashed as it streamed by.

    ``data`` holds the part's bytes when they were kept (form fields, attached
    messages, or every part when the caller asked to keep files), else None;
    ``truncated`` says the keep budget ran out inside this part.
    """

    __slots__ = ("index", "headers", "name", "filename", "content_type", "disposition",
                 "encoding", "content_id", "size", "_md5", "_sha1", "_sha256", "data",
                 "truncated", "complete", "parts")

    def __init__(self, index: int, headers: list[tuple[str, str]], issues: list | None = None):
        self.index = index
        self.headers = headers
        hmap = {}
        for k, v in headers:
            hmap.setdefault(k.lower(), v)
        disp, dparams = header_params(hmap.get("content-disposition"), issues)
        ctype, cparams = header_params(hmap.get("content-type"), issues)
        self.disposition = disp or None
        self.name = dparams.get("name")
        self.filename = dparams.get("filename")
        self.content_type = ctype or ("application/octet-stream" if self.filename is not None else "text/plain")
        cte = hmap.get("content-transfer-encoding")
        self.encoding = cte.strip().lower() if cte else None
        cid = hmap.get("content-id")
        self.content_id = cid.strip() if cid else None
        self.size = 0
        self._md5 = hashlib.md5()
        self._sha1 = hashlib.sha1()
        self._sha256 = hashlib.sha256()
        self.data: bytearray | None = None
        self.truncated = False
        self.complete = True
        self.parts: list[FormPart] = []  # nested multipart/mixed (RFC 2388 multiple files)

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    @property
    def sha1(self) -> str:
        return self._sha1.hexdigest()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def text(self) -> str:
        """The kept value as text (empty when not kept)."""
        return decode_text(bytes(self.data)) if self.data is not None else ""


_BLANK_LINE = re.compile(rb"\r\n\r\n|\n\n")


class MultipartParser:
    """Incremental multipart body parser (RFC 2046 / RFC 7578).

    Feed body bytes in any chunks; parts come out in ``parts`` with sizes and
    md5/sha1/sha256 computed on the fly. Part data is kept when ``keep(part)``
    says so and while the shared ``budget`` lasts, so memory stays bounded by
    the budget plus one delimiter length whatever the body size.

    A virtual CRLF is put before the first byte so that the first delimiter,
    which RFC 2046 lets start the body, is found by the same search as the
    others.
    """

    PREAMBLE, AFTER_DELIM, HEADERS, BODY, EPILOGUE, FAILED = range(6)

    def __init__(self, boundary: str, *, budget: int, max_parts: int, max_header_bytes: int,
                 keep=None, depth: int = 0, max_depth: int = 50):
        self.delim = b"\r\n--" + boundary.encode("latin-1", "replace")
        self._buf = bytearray(b"\r\n")
        self._pos = 0
        self.state = self.PREAMBLE
        self.budget = budget
        self.max_parts = max_parts
        self.max_header_bytes = max_header_bytes
        self.keep = keep or (lambda part: part.filename is None)
        self.depth = depth
        self.max_depth = max_depth
        self.parts: list[FormPart] = []
        self.issues: list[tuple[str, str]] = []
        self._part: FormPart | None = None
        self._keeping = False
        self.closed = False  # the closing delimiter was seen

    # The delimiter search keeps len(delim)-1 bytes back so a delimiter split
    # across feeds is still found; everything before that is part content.
    def feed(self, data) -> None:
        if self.state in (self.EPILOGUE, self.FAILED) or not data:
            return
        self._buf += data
        self._run()
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0

    def _run(self) -> None:
        buf, dl = self._buf, len(self.delim)
        while True:
            st = self.state
            if st == self.BODY or st == self.PREAMBLE:
                i = buf.find(self.delim, self._pos)
                if i < 0:
                    safe = len(buf) - (dl - 1)
                    if safe > self._pos:
                        if st == self.BODY:
                            self._content(memoryview(buf)[self._pos:safe])
                        self._pos = safe
                    return
                if st == self.BODY:
                    self._content(memoryview(buf)[self._pos:i])
                    self._end_part()
                self._pos = i + dl
                self.state = self.AFTER_DELIM
            elif st == self.AFTER_DELIM:
                if len(buf) - self._pos < 2:
                    return
                if buf[self._pos:self._pos + 2] == b"--":
                    self.closed = True
                    self.state = self.EPILOGUE
                    self._pos = len(buf)
                    return
                lf = buf.find(b"\n", self._pos)
                if lf < 0:
                    if len(buf) - self._pos > 1024:  # transport padding is a few blanks
                        self._fail("http_multipart_bad", "garbage after a boundary delimiter")
                    return
                self._pos = lf + 1
                self.state = self.HEADERS
            elif st == self.HEADERS:
                # One search for the first blank line of either kind, stopping at it: two
                # searches (CRLF CRLF, then LF LF) each ran to the end of the body when one
                # kind was absent, for every part (9 s for 20,000 CRLF parts). A block longer
                # than max_header_bytes fails below, so the search stops there too.
                m = _BLANK_LINE.search(buf, self._pos, self._pos + self.max_header_bytes + 4)
                end, skip = (m.start(), m.end() - m.start()) if m else (-1, 4)
                if self._pos < len(buf) and buf[self._pos] in (0x0A, 0x0D):
                    # no header fields at all: the blank line comes first
                    nl = buf.find(b"\n", self._pos)
                    if nl >= 0 and not buf[self._pos:nl].strip():
                        end, skip = self._pos, nl + 1 - self._pos
                if end < 0:
                    if len(buf) - self._pos > self.max_header_bytes:
                        self._fail("http_multipart_bad", f"part header block beyond {self.max_header_bytes} bytes")
                    return
                if len(self.parts) >= self.max_parts:
                    self._fail("http_multipart_bad", f"more than {self.max_parts} parts")
                    return
                self._start_part(bytes(buf[self._pos:end]))
                self._pos = end + skip
                self.state = self.BODY
            else:
                return

    def _fail(self, name: str, detail: str) -> None:
        self.issues.append((name, detail))
        if self._part is not None:
            self._part.complete = False
            self._end_part()
        self.state = self.FAILED
        self._pos = len(self._buf)

    def _start_part(self, block: bytes) -> None:
        headers: list[tuple[str, str]] = []
        for line in block.replace(b"\r\n", b"\n").split(b"\n"):
            if line[:1] in (b" ", b"\t") and headers:
                k, v = headers[-1]
                headers[-1] = (k, v + " " + decode_text(line.strip()))
                continue
            k, sep, v = line.partition(b":")
            if sep:
                headers.append((decode_text(k.strip()), decode_text(v.strip())))
        part = FormPart(len(self.parts), headers, self.issues)
        self.parts.append(part)
        self._part = part
        self._keeping = bool(self.keep(part)) or part.content_type.startswith("multipart/")
        if self._keeping:
            part.data = bytearray()

    def _content(self, chunk) -> None:
        part = self._part
        if part is None or not len(chunk):
            return
        part.size += len(chunk)
        part._md5.update(chunk)
        part._sha1.update(chunk)
        part._sha256.update(chunk)
        if self._keeping:
            room = self.budget
            if len(chunk) <= room:
                part.data += chunk
                self.budget -= len(chunk)
            else:
                part.data += chunk[:room]
                self.budget = 0
                part.truncated = True
                self._keeping = False
                self.issues.append(("http_form_part_too_large",
                                    f"part {part.index} ({part.name or part.filename or ''}) not kept past the body limit"))

    def _end_part(self) -> None:
        part = self._part
        self._part = None
        if part is None:
            return
        ctype, params = header_params(part.content_type)
        if (ctype.startswith("multipart/") and part.data is not None and not part.truncated
                and params.get("boundary")):
            if self.depth + 1 >= self.max_depth:
                self.issues.append(("http_multipart_bad", "multipart nesting too deep"))
                return
            inner = MultipartParser(params["boundary"], budget=self.budget, max_parts=self.max_parts,
                                    max_header_bytes=self.max_header_bytes, keep=self.keep,
                                    depth=self.depth + 1, max_depth=self.max_depth)
            inner.feed(bytes(part.data))
            inner.close()
            self.budget = inner.budget
            for sub in inner.parts:
                # RFC 2388 multiple files: the inner parts belong to the outer field.
                if sub.name is None:
                    sub.name = part.name
            part.parts = inner.parts
            self.issues.extend(inner.issues)

    def close(self) -> None:
        """End of body: flush the held-back tail and finish an open part."""
        if self.state == self.BODY:
            tail = memoryview(self._buf)[self._pos:]
            self._content(tail)
            self._pos = len(self._buf)
            if self._part is not None:
                self._part.complete = False
            self._end_part()
        if not self.closed and self.state != self.FAILED:
            if self.parts or self.state != self.PREAMBLE:
                self.issues.append(("http_multipart_unterminated", "body ended without the closing delimiter"))
            else:
                self.issues.append(("http_multipart_bad", "no boundary delimiter in the body"))
        self.state = self.EPILOGUE
        self._buf = bytearray()
        self._pos = 0

    def all_parts(self) -> list[FormPart]:
        """Parts in order with nested multipart parts flattened in place."""
        out: list[FormPart] = []
        for p in self.parts:
            if p.parts:
                out.extend(p.parts)
            else:
                out.append(p)
        return out
