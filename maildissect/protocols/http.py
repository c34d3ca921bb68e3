"""HTTP/1.0 and HTTP/1.1 (and tolerated HTTP/0.9), both directions, sans-I/O: the framing.

:class:`HttpDissector` reads request and status lines, header blocks,
Content-Length, chunked transfer coding with trailers, bodies read until
close, bodiless responses (HEAD, 1xx, 204, 304), ``Expect: 100-continue``
interim responses, keep-alive and pipelining (responses are paired with
requests in order), CONNECT and Upgrade (parsing stops, the switch is
recorded), gaps (a body with a known length keeps its framing; otherwise the
parser resynchronises on the next request or status line).

What a message and an exchange are, independent of the framing, is shared
with HTTP/2 (:mod:`.http2`): bodies and their content decoding in
:mod:`.http_body`, messages, exchanges and the records they become
(HTTP requests, commands, credentials, webmail) in :mod:`.exchange`. The
``http_*`` anomalies of all three are declared here (:data:`ANOMALIES`).

Nothing here raises on peer input; everything unusual is an ``http_*``
anomaly, and every buffer is bounded by a :class:`~maildissect.config.Limits`
field (docs/protocols/http.md lists them).
"""

from __future__ import annotations

import re
from collections import deque

from .base import CLIENT, OVERLONG, SERVER, Dissector, StreamBuffer, TunnelStart
from .exchange import Exchange, ExchangeProcessor, Headers, HttpMessage
from .forms import decode_text
from .http_body import Body, ContentDecoder

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
                # the bytes each side sent past the switch: the tunnel's first bytes
                held = (bytes(self._c.buf), bytes(self._s.buf))
                self._enter_tunnel(ex, upgrade)
                self._message_done(st, ts)
                if want == "connect":
                    # what flows in the tunnel is the router's to dissect (maildissect.pipeline)
                    # the authority asked for (a client may add more after a space: "host:25 /")
                    words = ex.request.uri.split() if ex.request is not None else []
                    self._out.append(TunnelStart(ts, "http-connect", words[0] if words else None, held))
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
        elif self._c.resync or len(st.buf) > self.limits.max_http_header_bytes:
            # (after http_bad_request_line the response answers that line, not the next request,
            # which it precedes: held for the next one it showed a reply before its request)
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

