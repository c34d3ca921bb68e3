"""HTTP/1.0 and HTTP/1.1 (and tolerated HTTP/0.9), both directions, sans-I/O.

The module has two layers, so that another framing (HTTP/2 over decrypted TLS)
can reuse the second one unchanged:

1. :class:`HttpDissector` — HTTP/1 framing: request and status lines, header
   blocks, Content-Length, chunked transfer coding with trailers, bodies read
   until close, bodiless responses (HEAD, 1xx, 204, 304), ``Expect:
   100-continue`` interim responses, keep-alive and pipelining (responses are
   paired with requests in order), CONNECT and Upgrade (parsing stops, the
   switch is recorded), gaps (a body with a known length keeps its framing;
   otherwise the parser resynchronises on the next request or status line).

2. :class:`HttpMessage`, :class:`Body`, :class:`Exchange` and
   :class:`ExchangeProcessor` — version-neutral: a message head plus a body
   decoded incrementally (Content-Encoding gzip, deflate, br, zstd within the
   decompression limits), hashed, and kept for parsing only when it is small
   enough and of a kind worth parsing (forms, JSON, messages). A completed
   request/response exchange becomes records: one :class:`~maildissect.model.HttpRequest`,
   one :class:`~maildissect.model.Command`, credentials (Basic, Bearer, Digest,
   login forms) and whatever :mod:`maildissect.protocols.webmail` recognises
   in it (JMAP calls, compose forms, raw messages).

Nothing here raises on peer input; everything unusual is an ``http_*``
anomaly, and every buffer is bounded by a :class:`~maildissect.config.Limits`
field (docs/protocols/http.md lists them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from collections import deque

from ..model import Attachment, Command, Credential, HttpRequest, Message
from .base import CLIENT, OVERLONG, SERVER, Dissector, StreamBuffer
from .forms import (MultipartParser, decode_text, header_params, is_message_type, load_json,
                    login_fields, parse_urlencoded)

__all__ = [
    "ANOMALIES", "HttpDissector", "looks_like_http", "Headers", "Body", "ContentDecoder",
    "HttpMessage", "Exchange", "ExchangeProcessor", "METHODS",
]

ANOMALIES = {
    "http_bad_request_line": "a client line where a request line was expected is not one; the parser skips to the next request line",
    "http_bad_status_line": "a server line where a status line was expected is not one; the parser skips to the next status line",
    "http_line_too_long": "a request, status, header or chunk-size line longer than limits.max_line (skipped)",
    "http_header_too_large": "a header block beyond limits.max_http_header_bytes or limits.max_headers; further fields are skipped",
    "http_bad_header_line": "a header line without a colon (skipped)",
    "http_folded_header": "obsolete line folding: a header field continued on the next line",
    "http_bad_content_length": "Content-Length that is not a number, or several different values (the first valid one is used)",
    "http_te_and_cl": "both Transfer-Encoding and Content-Length (a request-smuggling vector); Transfer-Encoding wins",
    "http_bad_transfer_encoding": "Transfer-Encoding whose last coding is not chunked; the body is read until the connection closes",
    "http_bad_chunk_size": "a chunk-size line that is not hexadecimal; the body ends there and the parser resynchronises",
    "http_chunk_missing_crlf": "chunk data not followed by CRLF",
    "http_unknown_content_encoding": "Content-Encoding other than gzip, deflate, br, zstd or identity; the body is kept encoded and not parsed",
    "http_decoding_error": "a Content-Encoding stream that fails to decode; decoding stops and the body is marked incomplete",
    "http_decompression_bomb": "decoded body beyond limits.max_decompressed or limits.max_decompression_ratio; decoding stops",
    "http_body_too_large": "a body beyond limits.max_http_body: still counted and hashed, not kept for parsing",
    "http_body_gap": "bytes missing inside a body of known length; the framing holds, the body is marked incomplete",
    "http_gap_resync": "bytes missing where the framing cannot be recovered; the parser skips to the next request/status line",
    "http_truncated": "the connection ended inside a header block or a body of known length",
    "http_response_without_request": "a response with no request left to pair it with",
    "http_too_many_pending": "more pipelined requests awaiting a response than limits.max_pending_commands; the oldest is given up",
    "http_upgrade_overflow": "client data sent while an Upgrade/CONNECT awaited its answer exceeded limits.max_http_header_bytes; taken as switched",
    "http_09_response": "a response without status line to an HTTP/0.9 request: read until the connection closes",
    "http_basic_auth_invalid": "an Authorization: Basic value that is not base64 of user:password",
    "http_form_invalid": "an urlencoded body that cannot be parsed",
    "http_form_too_many_fields": "an urlencoded body with more fields than limits.max_headers (the rest is ignored)",
    "http_form_part_too_large": "multipart part data beyond the body limit: hashed, not kept",
    "http_multipart_bad": "a multipart body without boundary, with over-long part headers, too many parts or too deep nesting",
    "http_multipart_unterminated": "a multipart body that ended without its closing delimiter",
    "http_json_invalid": "a JSON body that does not parse",
    "http_json_too_deep": "a JSON body nested deeper than limits.max_nesting",
}

#: Request methods recognised when sniffing a connection or resynchronising
#: after a gap (RFC 9110, WebDAV, CalDAV, PATCH, and the HTTP/2 preface).
METHODS = frozenset({
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PROPFIND",
    "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH", "MKCALENDAR",
    "ACL", "BIND", "UNBIND", "REBIND", "MKACTIVITY", "CHECKOUT", "MERGE", "PRI",
})

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb")[ \t]+(.+?)[ \t]+(HTTP/\d+\.\d+)[ \t]*")
_REQUEST_09 = re.compile(rb"(GET)[ \t]+(\S+)[ \t]*")
_STATUS_LINE = re.compile(rb"(HTTP/\d+\.\d+)[ \t]+(\d{3})(?:[ \t]+(.*?))?[ \t]*")
#: the first word of a header line, and the words that make a field a carrier of
#: credentials (Authorization, Proxy-Authorization, Cookie, Set-Cookie, X-Auth-Token...)
_FIELD_WORD = re.compile(rb"[ \t]*([A-Za-z0-9_-]+)")
_SECRET_FIELD_WORDS = (b"auth", b"cookie", b"token", b"key", b"secret", b"sess", b"pass", b"pwd", b"csrf",
                       b"xsrf", b"ticket", b"signature", b"jwt", b"credential")
_CHUNK_SIZE = re.compile(rb"[ \t]*([0-9A-Fa-f]+)[ \t]*(?:;.*)?")

# Parser states of one direction.
_LINE, _HEADERS, _LENGTH, _CHUNK_SIZE_ST, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, \
    _TUNNEL, _WAIT = range(10)

#: Content types whose decoded body is kept (within limits.max_http_body) for
#: parsing: forms, JSON, messages and opaque blobs that may be messages.
_KEEP_TYPES = ("", "application/x-www-form-urlencoded", "application/json", "text/plain",
               "application/octet-stream", "application/jmap+json", "text/json", "text/x-json")

#: Bodies decoded past this size are checked against the decompression ratio;
#: below it a tiny but very compressible body (a page of spaces) is no bomb.
RATIO_FLOOR = 1024 * 1024


def looks_like_http(client_first: bytes, server_first: bytes) -> bool:
    """True when the first bytes of a connection are HTTP/1.x (or HTTP/0.9).

    ``client_first``/``server_first`` are whatever has been buffered of each
    side (either may be empty). A server that speaks first, before the client
    said anything, with anything but a status line (an SMTP, IMAP or POP3
    greeting) rules HTTP out; otherwise the client's first line decides.
    """
    if server_first:
        if server_first[:5] == b"HTTP/":
            return True
        if not client_first:
            return False
    if not client_first:
        return False
    head = client_first.lstrip(b"\r\n")
    sp = head.find(b" ")
    if sp <= 0 or sp > 12:
        return False
    try:
        method = head[:sp].decode("ascii")
    except UnicodeDecodeError:
        return False
    if method not in METHODS:
        return False
    nl = head.find(b"\n")
    if nl < 0:
        target = head[sp + 1:sp + 2]
        return target in (b"/", b"*", b"h", b"H") or (method == "CONNECT" and bool(target))
    line = head[:nl].rstrip(b"\r")
    return bool(_REQUEST_LINE.fullmatch(line) or _REQUEST_09.fullmatch(line))


class Headers:
    """Header fields in arrival order with case-insensitive lookup."""

    __slots__ = ("items", "_map")

    def __init__(self, items=None):
        self.items: list[tuple[str, str]] = list(items or [])
        self._map: dict[str, list[str]] | None = None

    def add(self, name: str, value: str) -> None:
        self.items.append((name, value))
        self._map = None

    def _index(self) -> dict[str, list[str]]:
        if self._map is None:
            m: dict[str, list[str]] = {}
            for k, v in self.items:
                m.setdefault(k.lower(), []).append(v)
            self._map = m
        return self._map

    def get(self, name: str, default=None):
        vals = self._index().get(name.lower())
        return vals[0] if vals else default

    def get_all(self, name: str) -> list[str]:
        return list(self._index().get(name.lower(), ()))

    def tokens(self, name: str) -> list[str]:
        """Comma-separated tokens of every ``name`` field, lower-cased."""
        out = []
        for v in self._index().get(name.lower(), ()):
            out.extend(t.strip().lower() for t in v.split(",") if t.strip())
        return out

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._index()

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


# -- content decoding -------------------------------------------------------

class _Bomb(Exception):
    pass


class _ZlibStage:
    """gzip (every member) or deflate (zlib-wrapped, or raw as some servers send)."""

    def __init__(self, gzip: bool):
        self.gzip = gzip
        self.d = None
        self.members = 0
        self.done = False  # bytes after the last gzip member / the deflate stream are ignored

    def run(self, data: bytes, cap: int) -> bytes:
        out = []
        n = 0
        while data and not self.done:
            if self.d is None:
                if self.gzip:
                    if self.members and data[:1] != b"\x1f":
                        self.done = True  # padding after a member, as some servers send
                        break
                    self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
                    self.d = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
            chunk = self.d.decompress(data, cap - n + 1)
            n += len(chunk)
            out.append(chunk)
            if n > cap or self.d.unconsumed_tail:
                raise _Bomb()
            if self.d.eof:
                data = self.d.unused_data
                self.d = None
                self.members += 1
                if not self.gzip:
                    self.done = True
            else:
                data = b""
        return b"".join(out)

    def truncated(self) -> bool:
        """The stream stopped inside a member."""
        return self.d is not None or (self.members == 0 and not self.done)


class _BrotliStage:
    def __init__(self):
        import brotli
        self.d = brotli.Decompressor()
        self.error = brotli.error

    def run(self, data: bytes, cap: int) -> bytes:
        if self.d.is_finished():
            return b""
        try:
            out = self.d.process(data, output_buffer_limit=cap + 1)
        except TypeError:  # brotli < 1.2 has no output limit: feed small slices
            parts, n = [], 0
            for i in range(0, len(data), 256):
                piece = self.d.process(data[i:i + 256])
                n += len(piece)
                parts.append(piece)
                if n > cap:
                    raise _Bomb() from None
            out = b"".join(parts)
        if len(out) > cap:
            raise _Bomb()
        return out


class _ZstdStage:
    # RFC 9659: HTTP zstd windows are at most 8 MiB; a larger frame window is
    # refused instead of allocated.
    SLICE = 256  # a zstd RLE block turns 4 bytes into 128 KiB: bound each step

    def __init__(self):
        import zstandard
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << 23)
        try:
            self.d = dctx.decompressobj(read_across_frames=True)
        except TypeError:
            self.d = dctx.decompressobj()

    def run(self, data: bytes, cap: int) -> bytes:
        parts, n = [], 0
        for i in range(0, len(data), self.SLICE):
            piece = self.d.decompress(data[i:i + self.SLICE])
            n += len(piece)
            parts.append(piece)
            if n > cap:
                raise _Bomb()
        return b"".join(parts)


class ContentDecoder:
    """Incremental Content-Encoding decoder with the decompression limits.

    ``codings`` are the encodings in the order the sender applied them
    (``Content-Encoding: gzip, br`` means gzip first); they are undone in
    reverse. Input is decoded in fixed steps of :attr:`STEP` bytes, whatever
    the sizes of the pieces fed, so that where a limit stops decoding does not
    depend on how the stream was segmented. After :attr:`failed` is set no
    more output comes.
    """

    STEP = 16384
    SUPPORTED = ("gzip", "x-gzip", "deflate", "br", "zstd")

    def __init__(self, codings: list[str], max_decompressed: int, max_ratio: int):
        self.stages = []
        for c in reversed(codings):
            if c in ("gzip", "x-gzip"):
                self.stages.append(_ZlibStage(True))
            elif c == "deflate":
                self.stages.append(_ZlibStage(False))
            elif c == "br":
                self.stages.append(_BrotliStage())
            elif c == "zstd":
                self.stages.append(_ZstdStage())
        self.max_out = max_decompressed
        self.max_ratio = max_ratio
        self._pending = bytearray()
        self.consumed = 0
        self.produced = 0
        self.failed: tuple[str, str] | None = None

    def feed(self, data) -> bytes:
        if self.failed:
            return b""
        self._pending += data
        if len(self._pending) < self.STEP:
            return b""
        out = []
        whole = len(self._pending) - len(self._pending) % self.STEP
        for i in range(0, whole, self.STEP):
            out.append(self._step(bytes(self._pending[i:i + self.STEP])))
            if self.failed:
                break
        del self._pending[:whole]
        return b"".join(out)

    def finish(self) -> bytes:
        """Decode what is left; a compressed stream cut short sets :attr:`failed`."""
        if self.failed:
            self._pending = bytearray()
            return b""
        out = self._step(bytes(self._pending)) if self._pending else b""
        self._pending = bytearray()
        if not self.failed and self.consumed and any(
                isinstance(st, _ZlibStage) and st.truncated() for st in self.stages):
            self.failed = ("http_decoding_error", "compressed stream ends early")
        return out

    def _step(self, block: bytes) -> bytes:
        self.consumed += len(block)
        room = self.max_out - self.produced
        data = block
        try:
            for stage in self.stages:
                data = stage.run(data, room)
        except _Bomb:
            # The whole step's output is dropped: steps are fixed-size, so the
            # stopping point does not depend on segmentation.
            self.failed = ("http_decompression_bomb", f"decoded output passed limits.max_decompressed ({self.max_out})")
            return b""
        except Exception as exc:  # zlib.error, brotli.error, zstd.ZstdError...
            self.failed = ("http_decoding_error", f"{type(exc).__name__}: {str(exc)[:120]}")
            return b""
        self.produced += len(data)
        if self.produced > RATIO_FLOOR and self.produced > self.max_ratio * self.consumed:
            self.failed = ("http_decompression_bomb",
                           f"ratio {self.produced // max(1, self.consumed)} above limits.max_decompression_ratio ({self.max_ratio})")
            self.produced -= len(data)
            return b""
        return data


# -- bodies and messages ----------------------------------------------------

class Body:
    """The content of one HTTP message, fed transfer-decoded bytes.

    Counts the bytes (``wire_size`` before, ``size`` after content decoding),
    hashes the decoded bytes (md5, sha256), keeps them in ``data`` when asked
    and while they fit in limits.max_http_body, and streams them through a
    :class:`~maildissect.protocols.forms.MultipartParser` for multipart bodies.
    Problems are queued in ``issues`` as ``(name, detail)`` pairs.
    """

    __slots__ = ("content_type", "params", "codings", "decoder", "wire_size", "size", "_md5", "_sha1",
                 "_sha256", "data", "limit", "multipart", "complete", "missing", "opaque",
                 "issues", "finished", "disposition", "filename")

    def __init__(self, headers: Headers, config, *, keep: bool, keep_part=None, md5: bool = True,
                 sha1: bool = False):
        limits = config.limits
        self.issues: list[tuple[str, str]] = []
        self.content_type, self.params = header_params(headers.get("content-type"), self.issues)
        disp, dparams = header_params(headers.get("content-disposition"), self.issues)
        self.disposition = disp or None
        self.filename = dparams.get("filename")
        self.codings = [c for c in headers.tokens("content-encoding") if c != "identity"]
        self.decoder = None
        self.opaque = False  # an encoding we cannot undo: counted, not parsed
        if self.codings:
            if all(c in ContentDecoder.SUPPORTED for c in self.codings):
                try:
                    self.decoder = ContentDecoder(self.codings, limits.max_decompressed,
                                                  limits.max_decompression_ratio)
                except ImportError as exc:
                    self.opaque = True
                    self.issues.append(("http_unknown_content_encoding", f"{','.join(self.codings)}: {exc}"))
            else:
                self.opaque = True
                self.issues.append(("http_unknown_content_encoding", ",".join(self.codings)))
        self.wire_size = 0
        self.size = 0
        # sha256 always; md5 for responses (Zeek's files.log has it); sha1 for blobs
        # that become attachments (a JMAP upload)
        self._md5 = hashlib.md5() if md5 else None
        self._sha1 = hashlib.sha1() if sha1 else None
        self._sha256 = hashlib.sha256()
        self.limit = limits.max_http_body
        self.multipart = None
        if self.content_type.startswith("multipart/") and self.content_type != "multipart/byteranges" \
                and not self.opaque:
            boundary = self.params.get("boundary")
            if boundary:
                self.multipart = MultipartParser(
                    boundary, budget=limits.max_http_body, max_parts=limits.max_mime_parts,
                    max_header_bytes=limits.max_header_bytes, keep=keep_part,
                    max_depth=limits.max_mime_depth)
            else:
                self.issues.append(("http_multipart_bad", f"{self.content_type} without boundary"))
        self.data: bytearray | None = bytearray() if keep and self.multipart is None and not self.opaque else None
        self.complete = True
        self.missing = 0
        self.finished = False

    def write(self, chunk) -> None:
        """Transfer-decoded bytes of the body."""
        if not chunk:
            return
        self.wire_size += len(chunk)
        if self.decoder is None:
            self._decoded(chunk)
            return
        if self.decoder.failed:
            return
        out = self.decoder.feed(chunk)
        if out:
            self._decoded(out)
        if self.decoder.failed:
            self._decode_failed()

    def _decode_failed(self) -> None:
        self.issues.append(self.decoder.failed)
        self.complete = False
        self.data = None

    def _decoded(self, data) -> None:
        n = len(data)
        self.size += n
        if self._md5 is not None:
            self._md5.update(data)
        if self._sha1 is not None:
            self._sha1.update(data)
        self._sha256.update(data)
        if self.data is not None:
            if len(self.data) + n <= self.limit:
                self.data += data
            else:
                self.data = None
                self.issues.append(("http_body_too_large", f"body beyond limits.max_http_body ({self.limit})"))
        if self.multipart is not None:
            self.multipart.feed(data)

    def gap(self, length: int) -> None:
        """``length`` body bytes were never seen."""
        self.wire_size += length
        self.missing += length
        self.complete = False
        if self.decoder is not None and not self.decoder.failed:
            # a compressed stream cannot continue across a hole
            self.decoder.failed = ("http_decoding_error", "gap inside a content-encoded body")
        if self.multipart is not None:
            part = self.multipart._part
            if part is not None:
                part.complete = False

    def finish(self) -> None:
        """End of body: flush the decoder and the multipart parser."""
        if self.finished:
            return
        self.finished = True
        if self.decoder is not None and not self.decoder.failed:
            out = self.decoder.finish()
            if out:
                self._decoded(out)
            if self.decoder.failed:
                self._decode_failed()
        if self.multipart is not None:
            if self.size or self.wire_size:
                self.multipart.close()
                self.issues.extend(self.multipart.issues)
                self.multipart.issues = []

    @property
    def usable(self) -> bool:
        """Seen and decoded completely: its size and hashes stand for the whole
        body (an unknown Content-Encoding leaves it encoded but still whole)."""
        return self.complete and (self.decoder is None or not self.decoder.failed)

    @property
    def sha256(self) -> str | None:
        return self._sha256.hexdigest() if self.size and self.usable else None

    @property
    def md5(self) -> str | None:
        return self._md5.hexdigest() if self._md5 is not None and self.size and self.usable else None

    @property
    def sha1(self) -> str | None:
        return self._sha1.hexdigest() if self._sha1 is not None and self.size and self.usable else None

    def bytes(self) -> bytes | None:
        """The kept decoded body, or None when it was not kept."""
        return bytes(self.data) if self.data is not None else None


class HttpMessage:
    """A request or a response: head plus body, independent of the framing.

    Requests carry ``method``, ``uri``; responses ``status``, ``reason``. ``ts``
    is when the first byte of the head was seen, ``end_ts`` when the body
    ended. ``complete`` is False when a gap, a truncation or a limit cut it.
    """

    __slots__ = ("is_request", "ts", "end_ts", "method", "uri", "version", "status", "reason",
                 "headers", "body", "complete", "trailers")

    def __init__(self, is_request: bool, ts: float, *, method: str = "", uri: str = "",
                 version: str = "", status: int | None = None, reason: str | None = None,
                 headers: Headers | None = None):
        self.is_request = is_request
        self.ts = ts
        self.end_ts = ts
        self.method = method
        self.uri = uri
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else Headers()
        self.body: Body | None = None
        self.complete = True
        self.trailers: Headers | None = None

    def settle(self, report) -> None:
        """At the end of a message whose body is finished: the body's problems go to
        ``report(name, detail)``, an incomplete body makes the message incomplete,
        and the trailer fields join the header fields."""
        body = self.body
        for name, detail in body.issues:
            report(name, detail)
        body.issues.clear()
        if not body.complete:
            self.complete = False
        self.merge_trailers()

    def merge_trailers(self) -> None:
        """Trailer fields join the header fields (once)."""
        if self.trailers:
            for k, v in self.trailers.items:
                self.headers.add(k, v)
        self.trailers = None


class Exchange:
    """One request and its final response (either may be missing).

    The input of every exchange-level analysis: credentials and
    :mod:`~maildissect.protocols.webmail` recognition look only at this, never
    at the framing, so HTTP/1 and HTTP/2 front ends share them. Parsed views of
    the bodies are computed once on demand; their problems are queued in
    ``issues`` as ``(side, name, detail)``.
    """

    __slots__ = ("request", "response", "interim", "upgrade", "want_upgrade", "issues", "req_done",
                 "resp_done", "_cache", "limits")

    def __init__(self, request: HttpMessage | None, limits):
        self.request = request
        self.response: HttpMessage | None = None
        self.interim: list[int] = []  # 1xx statuses seen before the final response
        self.upgrade: str | None = None  # what the connection switched to
        self.want_upgrade: str | None = None  # asked for (CONNECT, Upgrade:), verdict pending
        self.issues: list[tuple[int, str, str]] = []
        self.req_done = request is None
        self.resp_done = False
        self._cache: dict = {}
        self.limits = limits

    # request views -----------------------------------------------------
    @property
    def method(self) -> str:
        return self.request.method if self.request else ""

    @property
    def uri(self) -> str:
        return self.request.uri if self.request else ""

    @property
    def status(self) -> int | None:
        return self.response.status if self.response else None

    @property
    def path(self) -> str:
        """The URI's path, percent-escapes left as sent."""
        if "path" not in self._cache:
            uri = self.uri
            if "://" in uri[:10]:
                rest = uri.split("://", 1)[1]
                uri = rest[rest.find("/"):] if "/" in rest else "/"
            self._cache["path"] = uri.split("?", 1)[0].split("#", 1)[0]
        return self._cache["path"]

    @property
    def query(self) -> dict[str, str]:
        """Query parameters (first value of each)."""
        if "query" not in self._cache:
            q: dict[str, str] = {}
            if "?" in self.uri:
                # a URL's query is percent-decoded from the UTF-8 of its text, as WHATWG URLs are
                fields, issues = parse_urlencoded(self.uri.split("?", 1)[1].split("#", 1)[0].encode("utf-8"),
                                                  self.limits.max_headers)
                self.issues.extend((CLIENT, n, d.replace("form field", "query parameter", 1)) for n, d in issues
                                   if n.startswith("text_"))
                for k, v in fields:
                    q.setdefault(k, v)
            self._cache["query"] = q
        return self._cache["query"]

    def form(self) -> list[tuple[str, str]]:
        """Fields of an urlencoded or multipart request body, in order."""
        if "form" in self._cache:
            return self._cache["form"]
        fields: list[tuple[str, str]] = []
        req = self.request
        body = req.body if req else None
        if body is not None and body.size:
            if body.multipart is not None:
                for part in body.multipart.all_parts():
                    if part.filename is None and part.name is not None:
                        fields.append((part.name, part.text()))
            elif body.content_type == "application/x-www-form-urlencoded" and body.data is not None \
                    and body.usable:
                fields, issues = parse_urlencoded(bytes(body.data), self.limits.max_headers)
                self.issues.extend((CLIENT, n, d) for n, d in issues)
        self._cache["form"] = fields
        return fields

    def field(self, name: str) -> str | None:
        """First value of form field ``name``, else of query parameter ``name``."""
        for k, v in self.form():
            if k == name:
                return v
        return self.query.get(name)

    def files(self) -> list:
        """File parts (:class:`~maildissect.protocols.forms.FormPart`) of a multipart request."""
        req = self.request
        body = req.body if req else None
        if body is None or body.multipart is None:
            return []
        return [p for p in body.multipart.all_parts()
                if p.filename is not None and (p.filename or p.size)]

    def _json(self, side: int):
        key = ("json", side)
        if key in self._cache:
            return self._cache[key]
        msg = self.request if side == CLIENT else self.response
        value = None
        body = msg.body if msg else None
        if body is not None and body.data is not None and body.size and body.usable:
            ct = body.content_type
            data = bytes(body.data)
            if "json" in ct or (ct in ("", "text/plain", "application/octet-stream")
                                and data.lstrip()[:1] in (b"{", b"[")):
                value, issue = load_json(data, self.limits.max_nesting)
                if issue and ("json" in ct or value is not None):
                    self.issues.append((side,) + issue)
        self._cache[key] = value
        return value

    def request_json(self):
        """The request body as parsed JSON, or None."""
        return self._json(CLIENT)

    def response_json(self):
        """The response body as parsed JSON, or None."""
        return self._json(SERVER)

    def response_text(self, limit: int = 1 << 20) -> str:
        """Up to ``limit`` characters of the kept response body as text."""
        resp = self.response
        if resp is None or resp.body is None or resp.body.data is None:
            return ""
        return decode_text(bytes(resp.body.data[:limit]))


class ExchangeProcessor:
    """Turns completed exchanges into records; one per session.

    Shared by every HTTP front end: it decides which bodies to keep
    (:meth:`new_body`), extracts credentials, asks the webmail recogniser for
    mail actions and messages, and fills the session's software fields.
    ``anomaly(ts, side, name, detail)`` is the dissector's anomaly factory.
    """

    def __init__(self, session, config, anomaly):
        from .webmail import WebmailContext  # webmail builds on this module's types
        self.session = session
        self.config = config
        self.limits = config.limits
        self.anomaly = anomaly
        self.webmail = WebmailContext(self)
        self._creds_seen: set = set()
        self._seq = 0  # exchanges completed so far (HttpRequest.seq)

    # bodies --------------------------------------------------------------
    def new_body(self, msg: HttpMessage, request: HttpMessage | None = None) -> Body:
        """A :class:`Body` for ``msg`` with the keep policy applied.

        Kept: forms, JSON, plain text, messages, opaque blobs (a JMAP blob may
        be a message), anything named ``*.eml``, HTML answering a POST (to
        judge a login) and HTML pages that show a message. Not kept: images,
        scripts, styles, media, archives: they are counted and hashed only.
        """
        ct, _ = header_params(msg.headers.get("content-type"))
        _, dparams = header_params(msg.headers.get("content-disposition"))
        keep = (ct in _KEEP_TYPES or ct.endswith("+json") or ct.startswith("message/")
                or is_message_type(ct, dparams.get("filename"))
                or (ct == "text/html" and request is not None
                    and (request.method == "POST" or self.webmail.wants_page(request))))
        keep_files = self.config.keep_bodies
        # a message's file downloaded through webmail: hashed as attachments are, kept for extraction
        file = not msg.is_request and request is not None and self.webmail.wants_file(request)
        keep = keep or (file and keep_files)

        def keep_part(part) -> bool:
            return (part.filename is None or keep_files
                    or is_message_type(part.content_type, part.filename))
        blob = msg.is_request and self.webmail.is_blob_upload(msg)
        return Body(msg.headers, self.config, keep=keep, keep_part=keep_part, md5=blob or not msg.is_request,
                    sha1=blob or file)

    # records -------------------------------------------------------------
    def complete(self, ex: Exchange) -> list:
        """Records for a finished (or abandoned) exchange."""
        out: list = []
        req, resp = ex.request, ex.response
        sess = self.session
        if req is not None:
            ua = req.headers.get("user-agent")
            if ua and not sess.client_software:
                sess.client_software = ua[:500]
        if resp is not None:
            server = resp.headers.get("server")
            if server and not sess.server_software:
                sess.server_software = server[:500]
        creds, login = self._credentials(ex) if req is not None else ([], None)
        action, extra = self.webmail.recognise(ex, login)
        command = self._command(ex) if req is not None else None  # parses the query: its issues come first
        for side, name, detail in ex.issues:
            msg = req if side == CLIENT else resp
            out.append(self.anomaly(msg.ts if msg else None, side, name, detail))
        ex.issues = []
        self._seq += 1
        record = self._http_record(ex, action)
        record.seq = self._seq
        out.append(record)
        if command is not None:
            command.seq, command.user = self._seq, sess.auth_user
            out.append(command)
        out.extend(creds)
        for r in extra:  # the messages of this exchange are keyed to it
            if type(r) is Message and r.command_seq is None:
                r.command_seq = self._seq
                r.user = sess.auth_user
        out.extend(extra)
        return out

    def _http_record(self, ex: Exchange, action: str | None) -> HttpRequest:
        req, resp = ex.request, ex.response
        rb = req.body if req else None
        sb = resp.body if resp else None
        head = req if req is not None else resp
        host = req.headers.get("host") if req else None
        if host is None and req is not None and "://" in req.uri[:10]:
            host = req.uri.split("://", 1)[1].split("/", 1)[0] or None
        files = []
        for part in ex.files():
            files.append(Attachment(
                filename=part.filename, content_type=part.content_type, size=part.size,
                md5=part.md5, sha1=part.sha1, sha256=part.sha256, disposition=part.disposition,
                part=str(part.index + 1), encoding=part.encoding, content_id=part.content_id,
                data=bytes(part.data) if self.config.keep_bodies and part.data is not None
                and not part.truncated else None))
        complete = ((req is None or req.complete) and (resp is None or resp.complete)
                    and (rb is None or rb.usable) and (sb is None or sb.usable))
        mailbox, uid, part = self.webmail.roundcube.reference(ex) if req is not None else (None, None, None)
        return HttpRequest(
            session_id=self.session.session_id,
            ts=head.ts if head else 0.0,
            method=req.method if req else "",
            uri=req.uri if req else "",
            version=(req.version if req else (resp.version if resp else "")),
            host=host,
            status=resp.status if resp else None,
            reason=resp.reason if resp else None,
            request_content_type=(rb.content_type or None) if rb else None,
            request_size=rb.size if rb else 0,
            response_content_type=(sb.content_type or None) if sb else None,
            response_size=sb.size if sb else 0,
            user_agent=req.headers.get("user-agent") if req else None,
            referer=req.headers.get("referer") if req else None,
            response_ts=resp.ts if resp else None,
            latency=(resp.ts - req.ts) if (resp is not None and req is not None) else None,
            request_sha256=rb.sha256 if rb else None,
            response_sha256=sb.sha256 if sb else None,
            mail_action=action,
            files=files,
            response_md5=sb.md5 if sb else None,
            response_filename=sb.filename if sb else None,
            upgrade=ex.upgrade,
            complete=complete,
            mailbox=mailbox,
            uid=uid,
            part=part,
        )

    def _command(self, ex: Exchange) -> Command:
        req, resp = ex.request, ex.response
        return Command(
            session_id=self.session.session_id, protocol="http", ts=req.ts,
            command=req.method, argument=req.uri,
            reply_code=str(resp.status) if resp is not None and resp.status is not None else None,
            reply_text=resp.reason if resp is not None else None,
            reply_ts=resp.ts if resp is not None else None,
            latency=(resp.ts - req.ts) if resp is not None else None)

    # credentials ---------------------------------------------------------
    def _credentials(self, ex: Exchange):
        """Credentials of the request and the login form found, if any.

        Header schemes are judged by the status (401/407/403 refused, other
        statuses below 400 accepted); login forms by :meth:`form_verdict`.
        A credential repeated on every request of a session is reported once.
        """
        req = ex.request
        found: list[tuple[str, str | None, str | None, bool | None, str]] = []
        status = ex.status
        header_ok = None
        if status is not None:
            header_ok = False if status in (401, 403, 407) else (True if status < 400 else None)
        for hname in ("authorization", "proxy-authorization"):
            for value in req.headers.get_all(hname):
                scheme, _, rest = value.strip().partition(" ")
                s = scheme.lower()
                rest = rest.strip()
                if s == "basic":
                    try:
                        raw = base64.b64decode(rest, validate=True)
                        user, sep, pw = decode_text(raw).partition(":")
                        if not sep:
                            raise ValueError("no colon")
                    except (binascii.Error, ValueError) as exc:
                        ex.issues.append((CLIENT, "http_basic_auth_invalid", str(exc)[:100]))
                        continue
                    found.append(("BASIC", user, pw, header_ok, hname))
                elif s == "bearer":
                    found.append(("BEARER", None, rest, header_ok, hname))
                elif s == "digest":
                    _, params = header_params("digest;" + rest.replace(",", ";"))
                    found.append(("DIGEST", params.get("username"), params.get("response"), header_ok,
                                  f"realm={params.get('realm', '')}"))
                elif s in ("ntlm", "negotiate"):
                    found.append((s.upper(), None, rest, header_ok, hname))
        login = None
        fields = list(ex.form())
        body_json = ex.request_json()
        if isinstance(body_json, dict):
            fields += [(k, v) for k, v in body_json.items() if isinstance(v, str)]
        fields += list(ex.query.items())
        lf = login_fields(fields)
        if lf is not None:
            user_field, user, pw_field, pw = lf
            login = (user, pw)
            found.append(("FORM", user, pw, self.form_verdict(ex),
                          f"fields {user_field or '-'},{pw_field}"))
        out = []
        for mech, user, secret, ok, detail in found:
            key = (mech, user, secret, ok)
            if key in self._creds_seen:
                continue
            if len(self._creds_seen) < 1024:
                self._creds_seen.add(key)
            out.append(Credential(session_id=self.session.session_id, protocol="http", ts=req.ts,
                                  mechanism=mech, user=user, secret=secret, success=ok, detail=detail))
            if ok is not False and user and not self.session.auth_user:
                self.session.auth_user = user
                self.session.auth_mechanism = mech
        return out, login

    _FAIL_WORDS = re.compile(r"login|signin|sign-in|logon|auth|error|fail|denied|invalid", re.I)
    _PASSWORD_INPUT = re.compile(r"""type\s*=\s*["']?password""", re.I)

    def form_verdict(self, ex: Exchange) -> bool | None:
        """Guess whether a login form succeeded, from its response.

        401/403 → refused. A redirect (3xx) → accepted, unless its Location
        points back to a login, sign-in or error page. A 2xx page that shows a
        password input again → refused; a 2xx JSON answer with ``ok``/
        ``success`` true or a token → accepted, false or an ``error`` member →
        refused; any other 2xx that sets a cookie → accepted. Otherwise no
        verdict (None).
        """
        status = ex.status
        if status is None:
            return None
        resp = ex.response
        if status in (401, 403):
            return False
        if 300 <= status < 400:
            loc = resp.headers.get("location") or ""
            path = loc.split("?", 1)[0]
            if self._FAIL_WORDS.search(path) or re.search(r"[?&](_?error|_?fail)", loc, re.I):
                return False
            return True
        if 200 <= status < 300:
            js = ex.response_json()
            if isinstance(js, dict):
                for key in ("ok", "success", "authenticated", "loggedIn"):
                    if isinstance(js.get(key), bool):
                        return js[key]
                if "error" in js or "errors" in js:
                    return False
                if any(k in js for k in ("token", "access_token", "session", "sessionId")):
                    return True
            text = ex.response_text()
            if text and self._PASSWORD_INPUT.search(text):
                return False
            if resp.headers.get("set-cookie"):
                return True
            return None
        return False if status >= 400 else None


# -- the HTTP/1 framing ----------------------------------------------------

class _Side:
    """Parser state of one direction."""

    __slots__ = ("side", "buf", "state", "msg", "remaining", "resync", "head_bytes", "head_over",
                 "ex", "waiting")

    def __init__(self, side: int, max_line: int):
        self.side = side
        self.buf = StreamBuffer(max_line)
        self.state = _LINE
        self.msg: HttpMessage | None = None  # message being parsed
        self.ex: Exchange | None = None  # its exchange
        self.remaining = 0  # bytes left in a Content-Length body or a chunk
        self.resync = False  # skipping lines until a start line
        self.head_bytes = 0
        self.head_over = False
        self.waiting: HttpMessage | None = None  # server: parsed head awaiting its request


class HttpDissector(Dissector):
    """HTTP/1.x dissector over one TCP connection (see the module docstring).

    Each direction is parsed on its own; they meet in two queues: exchanges
    not yet emitted (request order) and exchanges still awaiting their final
    response. A response head that finds no request waits (bounded by
    limits.max_http_header_bytes of buffered data) for one to be parsed, and a
    client that asked to switch protocols waits for the server's verdict
    before its next bytes are parsed as HTTP. When one side unblocks the other,
    the other is parsed at once (never re-entered while its own loop runs).
    """

    protocol = "http"

    def __init__(self, session, config=None):
        super().__init__(session, config)
        self.proc = ExchangeProcessor(self.session, self.config, self.anomaly)
        self._c = _Side(CLIENT, self.limits.max_line)
        self._s = _Side(SERVER, self.limits.max_line)
        self._order: deque[Exchange] = deque()  # not yet emitted, in request order
        self._unanswered: deque[Exchange] = deque()  # awaiting a final response
        self._out: list = []
        self._active: set[int] = set()  # sides whose parse loop is on the stack
        self._tunnel = False

    # interface -------------------------------------------------------------
    def feed(self, side: int, data: bytes, ts: float) -> list:
        out = self._out = []
        if self._tunnel or not data:
            return out
        self._feed(self._c if side == CLIENT else self._s, data, ts)
        return out

    def gap(self, side: int, length: int, ts: float) -> list:
        out = self._out = []
        if self._tunnel or length <= 0:
            return out
        self._gap(self._c if side == CLIENT else self._s, length, ts)
        return out

    def close(self, ts: float, reason: str) -> list:
        out = self._out = []
        self._close(ts)
        return out

    def _feed(self, st: _Side, data: bytes, ts: float) -> None:
        if st.state == _TUNNEL:
            return
        # Fast path: a body with nothing buffered is consumed straight from
        # the segment, without a copy through the line buffer.
        if not len(st.buf):
            if st.state == _LENGTH or st.state == _CHUNK_DATA:
                n = min(st.remaining, len(data))
                st.msg.body.write(memoryview(data)[:n] if n < len(data) else data)
                st.remaining -= n
                self._drain_body(st, ts)
                if st.remaining == 0:
                    self._body_part_done(st, ts)
                data = data[n:]
            elif st.state == _UNTIL_CLOSE:
                st.msg.body.write(data)
                self._drain_body(st, ts)
                data = b""
        if data and st.state != _TUNNEL:
            st.buf.append(data)
            self._run(st, ts)

    def _kick(self, st: _Side, ts: float) -> None:
        """The other side can go on: parse it now, at this byte of this side, so
        that the order of records does not depend on segmentation. A side whose
        loop is already running picks the change up by itself."""
        if st.side not in self._active and not self._tunnel:
            self._run(st, ts)

    # parsing ---------------------------------------------------------------
    def _run(self, st: _Side, ts: float) -> None:
        self._active.add(st.side)
        try:
            self._parse(st, ts)
        finally:
            self._active.discard(st.side)

    def _parse(self, st: _Side, ts: float) -> None:
        buf = st.buf
        while True:
            state = st.state
            if state == _LINE:
                if st.side == SERVER and not self._server_line_ready(st, ts):
                    return
                if st.state != _LINE:
                    continue
                line = buf.readline()
                if line is None:
                    return
                if line is OVERLONG:
                    self._bad_line(st, ts, "http_line_too_long", f"start line over {self.limits.max_line} bytes")
                    continue
                if not line.strip():
                    continue  # RFC 9112 2.2: empty lines before a start line are ignored
                if st.side == CLIENT:
                    self._request_line(st, line, ts)
                else:
                    self._status_line(st, line, ts)
            elif state == _HEADERS or state == _TRAILERS:
                line = buf.readline()
                if line is None:
                    return
                if line is OVERLONG:
                    self._issue(st, ts, "http_line_too_long", f"header line over {self.limits.max_line} bytes")
                    continue
                if line == b"\r\n" or line == b"\n":
                    if state == _HEADERS:
                        self._head_done(st, ts)
                    else:
                        self._message_done(st, ts)
                    continue
                self._header_line(st, line, ts, st.msg.trailers if state == _TRAILERS else st.msg.headers)
            elif state == _LENGTH or state == _CHUNK_DATA:
                n = len(buf)
                if not n:
                    return
                take = min(n, st.remaining)
                st.msg.body.write(buf.read(take))
                st.remaining -= take
                self._drain_body(st, ts)
                if st.remaining == 0:
                    self._body_part_done(st, ts)
            elif state == _CHUNK_SIZE_ST:
                line = buf.readline()
                if line is None:
                    return
                if line is OVERLONG:
                    self._issue(st, ts, "http_line_too_long", "chunk-size line")
                    self._lose_sync(st, ts)
                    continue
                self._chunk_size(st, line, ts)
            elif state == _CHUNK_CRLF:
                if len(buf) < 2 and buf.peek(1) != b"\n":
                    return
                if buf.peek(2) == b"\r\n":
                    buf.skip(2)
                elif buf.peek(1) == b"\n":
                    buf.skip(1)
                else:
                    # data ran past the chunk: read the line as the next chunk size
                    self._issue(st, ts, "http_chunk_missing_crlf", "")
                st.state = _CHUNK_SIZE_ST
            elif state == _UNTIL_CLOSE:
                if len(buf):
                    st.msg.body.write(buf.read_all())
                    self._drain_body(st, ts)
                return
            elif state == _WAIT:
                if st.side == SERVER:
                    self._server_waiting(st, ts)
                    if st.state == _WAIT:
                        return
                    continue
                if len(buf) > self.limits.max_http_header_bytes:
                    self._issue(st, ts, "http_upgrade_overflow", f"{len(buf)} bytes while awaiting the switch")
                    self._enter_tunnel(st.ex, st.ex.want_upgrade or "upgrade")
                return
            else:  # _TUNNEL
                buf.clear()
                return

    # start lines -------------------------------------------------------
    def _bad_line(self, st: _Side, ts: float, name: str, detail: str) -> None:
        if not st.resync:
            self._issue(st, ts, name, detail)
            st.resync = True

    def _request_line(self, st: _Side, line: bytes, ts: float) -> None:
        text = line.rstrip(b"\r\n")
        m = _REQUEST_LINE.fullmatch(text)
        http09 = False
        if m is None and not st.resync:
            m = _REQUEST_09.fullmatch(text)
            http09 = m is not None
        if m is None or (st.resync and m.group(1).decode("ascii") not in METHODS):
            self._bad_line(st, ts, "http_bad_request_line", repr(text[:80])[2:-1])
            return
        st.resync = False
        method = m.group(1).decode("ascii")
        uri = decode_text(m.group(2))
        version = "HTTP/0.9" if http09 else m.group(3).decode("ascii")
        msg = HttpMessage(True, ts, method=method, uri=uri, version=version)
        ex = Exchange(msg, self.limits)
        self._queue(ex, ts)
        st.msg, st.ex = msg, ex
        if http09 or (method == "PRI" and uri == "*" and version == "HTTP/2.0"):
            msg.body = self.proc.new_body(msg)
            if not http09:
                # HTTP/2 with prior knowledge: the rest is binary framing.
                self._enter_tunnel(ex, "h2")
            self._message_done(st, ts)
            return
        st.state = _HEADERS
        st.head_bytes = len(line)
        st.head_over = False

    def _server_line_ready(self, st: _Side, ts: float) -> bool:
        """Before a status line: an HTTP/0.9 request is answered by a bare body."""
        ex = self._unanswered[0] if self._unanswered else None
        if ex is None or ex.request is None or ex.request.version != "HTTP/0.9":
            return True
        head = st.buf.peek(5)
        if head == b"HTTP/"[:len(head)]:
            return len(head) == 5  # may still become a status line
        msg = HttpMessage(False, ts, version="HTTP/0.9")
        self._issue(st, ts, "http_09_response", "")
        self._attach_response(st, ex, msg)
        msg.body = self.proc.new_body(msg, ex.request)
        st.state = _UNTIL_CLOSE
        return True

    def _status_line(self, st: _Side, line: bytes, ts: float) -> None:
        text = line.rstrip(b"\r\n")
        m = _STATUS_LINE.fullmatch(text)
        if m is None:
            self._bad_line(st, ts, "http_bad_status_line", repr(text[:80])[2:-1])
            return
        st.resync = False
        reason = m.group(3)
        st.msg = HttpMessage(False, ts, version=m.group(1).decode("ascii"), status=int(m.group(2)),
                             reason=decode_text(reason) if reason is not None else None)
        st.ex = None
        st.state = _HEADERS
        st.head_bytes = len(line)
        st.head_over = False

    # header blocks ----------------------------------------------------------
    def _header_line(self, st: _Side, line: bytes, ts: float, headers: Headers) -> None:
        st.head_bytes += len(line)
        if st.head_over:
            return
        if st.head_bytes > self.limits.max_http_header_bytes or len(headers) >= self.limits.max_headers:
            st.head_over = True
            self._issue(st, ts, "http_header_too_large",
                        f"over {self.limits.max_http_header_bytes} bytes or {self.limits.max_headers} fields")
            return
        if line[:1] in (b" ", b"\t"):
            if headers.items:
                name, value = headers.items[-1]
                headers.items[-1] = (name, (value + " " + decode_text(line.strip())).strip())
                headers._map = None
                self._issue(st, ts, "http_folded_header", name)
            else:
                self._issue(st, ts, "http_bad_header_line", "continuation line first")
            return
        name, sep, value = line.partition(b":")
        name = name.strip()
        if not sep or not name:
            self._bad_header_line(st, ts, line)
            return
        headers.add(decode_text(name), decode_text(value.strip()))

    def _bad_header_line(self, st: _Side, ts: float, line: bytes) -> None:
        """A header line without a colon, quoted; when it names a field that carries
        credentials (``Authorization Basic ...``), what follows the name is secret."""
        shown = line[:80].rstrip(b"\r\n")
        detail = repr(shown)[2:-1]
        secret_at = None
        m = _FIELD_WORD.match(shown)
        if m and any(w in m.group(1).lower() for w in _SECRET_FIELD_WORDS):
            head = repr(shown[:m.end()])[2:-1]
            secret_at = len(head) if detail.startswith(head) and m.end() < len(shown) else 0
        self._out.append(self.anomaly(ts, st.side, "http_bad_header_line", detail, secret_at=secret_at))

    def _head_done(self, st: _Side, ts: float) -> None:
        if st.side == CLIENT:
            self._request_head_done(st, ts)
        elif self._unanswered:
            self._response_head(st, self._unanswered[0], st.msg, ts)
        else:
            # No request to pair with yet: hold the head until one is parsed.
            st.waiting, st.msg = st.msg, None
            st.state = _WAIT
            self._server_waiting(st, ts)

    def _request_head_done(self, st: _Side, ts: float) -> None:
        msg, ex = st.msg, st.ex
        msg.body = self.proc.new_body(msg)
        hdrs = msg.headers
        if msg.method == "CONNECT":
            ex.want_upgrade = "connect"
        elif "upgrade" in hdrs.tokens("connection") and hdrs.get("upgrade"):
            ex.want_upgrade = hdrs.get("upgrade").split(",")[0].strip().lower() or "upgrade"
        self._start_body(st, self._framing(st, msg, ts, request=True), ts)

    def _framing(self, st: _Side, msg: HttpMessage, ts: float, request: bool):
        """RFC 9112 6.3: ``("length", n)``, ``("chunked",)``, ``("close",)`` or ``("none",)``."""
        hdrs = msg.headers
        te = hdrs.tokens("transfer-encoding")
        cls = hdrs.get_all("content-length")
        if te:
            if cls:
                self._issue(st, ts, "http_te_and_cl", "")
            if te[-1] == "chunked":
                return ("chunked",)
            self._issue(st, ts, "http_bad_transfer_encoding", ",".join(te)[:100])
            return ("close",)
        if cls:
            values = []
            bad = False
            for v in cls:
                for item in v.split(","):
                    item = item.strip()
                    # isascii: str.isdigit() accepts '²' (Latin-1 0xB2), which int() refuses
                    if item.isascii() and item.isdigit() and len(item) <= 18:
                        values.append(int(item))
                    else:
                        bad = True
            if bad or len(set(values)) > 1:
                self._issue(st, ts, "http_bad_content_length", ",".join(cls)[:100])
            if values:
                return ("length", values[0]) if values[0] else ("none",)
        return ("none",) if request else ("close",)

    def _start_body(self, st: _Side, framing, ts: float) -> None:
        kind = framing[0]
        if kind == "length":
            st.state = _LENGTH
            st.remaining = framing[1]
        elif kind == "chunked":
            st.state = _CHUNK_SIZE_ST
        elif kind == "close":
            st.state = _UNTIL_CLOSE
        else:
            self._message_done(st, ts)

    def _response_head(self, st: _Side, ex: Exchange, msg: HttpMessage, ts: float) -> None:
        status = msg.status or 0
        if 100 <= status < 200 and status != 101:
            ex.interim.append(status)  # 100 Continue, 102, 103: the final answer follows
            st.msg = None
            st.state = _LINE
            return
        self._attach_response(st, ex, msg)
        req = ex.request
        msg.body = self.proc.new_body(msg, req)
        want, ex.want_upgrade = ex.want_upgrade, None
        if want is not None:
            if status == 101 or (want == "connect" and 200 <= status < 300):
                upgrade = want if want == "connect" else (msg.headers.get("upgrade") or want).strip().lower()
                self._enter_tunnel(ex, upgrade)
                self._message_done(st, ts)
                return
            # The server declined the switch: the client's held bytes are HTTP again.
            if self._c.state == _WAIT and self._c.ex is ex:
                self._c.state = _LINE
                self._c.ex = None
                self._kick(self._c, ts)
        elif status == 101:
            self._enter_tunnel(ex, (msg.headers.get("upgrade") or "upgrade").strip().lower())
            self._message_done(st, ts)
            return
        method = req.method if req is not None else ""
        if method == "HEAD" or status in (204, 304) or (method == "CONNECT" and 200 <= status < 300):
            self._message_done(st, ts)
            return
        self._start_body(st, self._framing(st, msg, ts, request=False), ts)

    def _attach_response(self, st: _Side, ex: Exchange, msg: HttpMessage) -> None:
        if self._unanswered and self._unanswered[0] is ex:
            self._unanswered.popleft()
        ex.response = msg
        st.msg, st.ex = msg, ex

    def _server_waiting(self, st: _Side, ts: float) -> None:
        """A response head is parsed but no request is known yet."""
        if self._unanswered:
            msg, st.waiting = st.waiting, None
            st.state = _LINE
            self._response_head(st, self._unanswered[0], msg, ts)
        elif len(st.buf) > self.limits.max_http_header_bytes:
            self._orphan(st, ts)
            self._start_orphan_body(st, ts)

    def _orphan(self, st: _Side, ts: float) -> None:
        """Give up waiting: the held response gets an exchange of its own."""
        msg, st.waiting = st.waiting, None
        self._issue_at(msg.ts, SERVER, "http_response_without_request", f"status {msg.status}")
        ex = Exchange(None, self.limits)
        self._order.append(ex)
        ex.response = msg
        st.msg, st.ex = msg, ex
        st.state = _LINE
        msg.body = self.proc.new_body(msg)

    def _start_orphan_body(self, st: _Side, ts: float) -> None:
        status = st.msg.status or 0
        if status in (204, 304) or status < 200:
            self._message_done(st, ts)
        else:
            self._start_body(st, self._framing(st, st.msg, ts, request=False), ts)

    def _bind_head(self, st: _Side, ts: float) -> None:
        """A head cut short (gap, close): give it an exchange and a body."""
        msg = st.msg
        if st.side == SERVER and st.ex is None:
            if self._unanswered:
                self._attach_response(st, self._unanswered[0], msg)
            else:
                st.waiting = msg
                self._orphan(st, ts)
        if msg.body is None:
            msg.body = self.proc.new_body(msg, st.ex.request if st.ex is not None else None)

    # bodies ---------------------------------------------------------------
    def _chunk_size(self, st: _Side, line: bytes, ts: float) -> None:
        m = _CHUNK_SIZE.fullmatch(line.rstrip(b"\r\n"))
        if m is None or len(m.group(1)) > 15:
            if not line.strip():
                return  # a stray blank line between chunks
            self._issue(st, ts, "http_bad_chunk_size", repr(line[:40])[2:-1])
            st.msg.complete = False
            st.msg.body.complete = False
            self._message_done(st, ts)
            st.state = _LINE
            st.resync = True
            return
        size = int(m.group(1), 16)
        if size == 0:
            st.msg.trailers = Headers()
            st.state = _TRAILERS
        else:
            st.remaining = size
            st.state = _CHUNK_DATA

    def _body_part_done(self, st: _Side, ts: float) -> None:
        if st.state == _LENGTH:
            self._message_done(st, ts)
        elif st.state == _CHUNK_DATA:
            st.state = _CHUNK_CRLF

    def _drain_body(self, st: _Side, ts: float) -> None:
        body = st.msg.body
        if body.issues:
            for name, detail in body.issues:
                self._issue(st, ts, name, detail)
            body.issues.clear()

    def _message_done(self, st: _Side, ts: float) -> None:
        msg, ex = st.msg, st.ex
        st.msg = None
        st.ex = None
        if st.state != _TUNNEL:
            st.state = _LINE
        if msg is None:
            return
        msg.end_ts = ts
        msg.body.finish()
        msg.settle(lambda name, detail: self._issue(st, ts, name, detail))
        if st.side == CLIENT:
            ex.req_done = True
            if ex.want_upgrade is not None and ex.response is None and st.state == _LINE:
                st.state = _WAIT  # the next client bytes may not be HTTP: await the verdict
                st.ex = ex
        else:
            ex.resp_done = True
        self._emit_ready()

    # pairing -------------------------------------------------------------
    def _queue(self, ex: Exchange, ts: float) -> None:
        if len(self._order) >= self.limits.max_pending_commands:
            old = self._order.popleft()
            if old in self._unanswered:
                self._unanswered.remove(old)
            self._issue_at(ts, CLIENT, "http_too_many_pending", f"over {self.limits.max_pending_commands} requests in flight")
            self._finish_exchange(old)
        self._order.append(ex)
        self._unanswered.append(ex)
        if self._s.state == _WAIT:
            self._kick(self._s, ts)

    def _emit_ready(self) -> None:
        order = self._order
        while order and order[0].req_done and order[0].resp_done:
            self._finish_exchange(order.popleft())

    def _finish_exchange(self, ex: Exchange) -> None:
        for msg in (ex.request, ex.response):
            if msg is not None and msg.body is None:
                msg.body = self.proc.new_body(msg)
                msg.complete = False
        self._out.extend(self.proc.complete(ex))

    def _enter_tunnel(self, ex: Exchange, what: str) -> None:
        ex.upgrade = what
        self._tunnel = True
        for st in (self._c, self._s):
            st.buf.clear()
            st.state = _TUNNEL

    # gaps and close -----------------------------------------------------------
    def _gap(self, st: _Side, length: int, ts: float) -> None:
        if st.state == _TUNNEL:
            return
        if st.state in (_LENGTH, _CHUNK_DATA) and not len(st.buf) and length <= st.remaining:
            self._issue(st, ts, "http_body_gap", f"{length} bytes")
            st.msg.body.gap(length)
            st.msg.complete = False
            st.remaining -= length
            if st.remaining == 0:
                self._body_part_done(st, ts)
            return
        if st.state == _UNTIL_CLOSE:
            if len(st.buf):
                st.msg.body.write(st.buf.read_all())
            self._issue(st, ts, "http_body_gap", f"{length} bytes")
            st.msg.body.gap(length)
            st.msg.complete = False
            self._drain_body(st, ts)
            return
        self._issue(st, ts, "http_gap_resync", f"{length} bytes")
        missing = min(length, st.remaining) if st.state in (_LENGTH, _CHUNK_DATA) else length
        self._lose_sync(st, ts, missing)

    def _lose_sync(self, st: _Side, ts: float, missing: int = 0) -> None:
        """Abandon the message in progress and skip to the next start line."""
        st.buf.clear()
        if st.state == _WAIT:
            if st.side == CLIENT:
                st.resync = True  # the held bytes are gone; the verdict still decides
                return
            if st.waiting is not None:
                self._orphan(st, ts)
        if st.msg is not None:
            self._bind_head(st, ts)
            st.msg.complete = False
            st.msg.body.gap(missing)
            self._drain_body(st, ts)
            self._message_done(st, ts)
        st.state = _LINE
        st.resync = True

    def _close(self, ts: float) -> None:
        if not self._tunnel:
            for st in (self._c, self._s):
                # responses still waiting for a request will not get one now
                while st.state == _WAIT and st.side == SERVER and st.waiting is not None:
                    self._orphan(st, ts)
                    self._start_orphan_body(st, ts)
                    if len(st.buf) and st.state != _TUNNEL:
                        self._run(st, ts)
                if st.state == _UNTIL_CLOSE:
                    if len(st.buf):
                        st.msg.body.write(st.buf.read_all())
                        self._drain_body(st, ts)
                    self._message_done(st, ts)
                elif st.msg is not None and st.state in (_HEADERS, _LENGTH, _CHUNK_SIZE_ST, _CHUNK_DATA,
                                                         _CHUNK_CRLF, _TRAILERS):
                    if st.state == _CHUNK_CRLF or (st.state == _TRAILERS and not len(st.buf)):
                        self._message_done(st, ts)  # only the last CRLF is missing
                        continue
                    self._issue(st, ts, "http_truncated", "connection closed inside a message")
                    self._bind_head(st, ts)
                    st.msg.complete = False
                    st.msg.body.complete = False
                    self._message_done(st, ts)
        while self._order:
            self._finish_exchange(self._order.popleft())
        self._unanswered.clear()

    # anomalies -----------------------------------------------------------------
    def _issue(self, st: _Side, ts: float, name: str, detail: str) -> None:
        self._out.append(self.anomaly(ts, st.side, name, detail))

    def _issue_at(self, ts: float, side: int, name: str, detail: str) -> None:
        self._out.append(self.anomaly(ts, side, name, detail))

