"""HTTP/2 (RFC 9113) seen from the wire, both directions, sans-I/O.

Decrypted HTTPS webmail is mostly HTTP/2. This dissector reads the binary
framing of both directions of one connection and turns every stream into the
version-neutral objects of the exchange layer, :mod:`maildissect.protocols.exchange`
(:class:`~maildissect.protocols.exchange.HttpMessage`,
:class:`~maildissect.protocols.http_body.Body`,
:class:`~maildissect.protocols.exchange.Exchange`), handing each finished stream to
:meth:`ExchangeProcessor.complete`, so HTTP records, credentials and the webmail
recognition are exactly those of HTTP/1.

Why not the ``h2`` library's ``H2Connection``: it is one endpoint of a
connection. It validates what it receives against what it sent (stream states,
flow-control windows, SETTINGS acknowledgements) and refuses, by design, input
that a correct peer would not send. A passive observer holds neither end: it
must read both directions, accept whatever was on the wire and say what was
odd without stopping. So this module uses the two sans-I/O building blocks the
h2 project is made of: ``hyperframe`` parses frame bodies, and ``hpack``
decodes header blocks — one decoder per direction, since each side's encoder
keeps its own dynamic table, bounded by the table size the *receiving* side
announced in its SETTINGS (SETTINGS_HEADER_TABLE_SIZE).

What is handled:

* the client connection preface (checked; a capture that starts later is read
  from its first frame), SETTINGS (header table size, maximum frame size),
* HEADERS with CONTINUATION, padding and priority; trailers; 1xx interim
  responses; pseudo-headers mapped to method, path, status and ``Host``
  (``:authority``); split ``cookie`` fields joined as RFC 9113 8.2.3 says,
* DATA (padding removed) streamed into the body without holding the frame,
* interleaved streams, RST_STREAM, GOAWAY, PUSH_PROMISE (a pushed response is
  an exchange whose request is the promised one), unknown extension frames
  (skipped).

Limits: a frame other than DATA, and a header block with its CONTINUATION
frames, are held whole up to ``limits.max_http_header_bytes``; the decoded
header list is bounded by the same limit; the HPACK dynamic table by the same
limit too; open streams by ``limits.max_pending_commands``. Bodies follow the
HTTP body limits of :class:`~maildissect.protocols.http_body.Body`. Anything beyond
becomes an ``http2_*`` anomaly, never an exception.

Gaps: a hole inside a DATA payload keeps the framing (the body is marked
incomplete). Anywhere else the framing and the HPACK state of that direction
are lost for good: that direction is no longer parsed (the other one goes on —
its decoder is independent), and its unfinished messages are incomplete.
"""

from __future__ import annotations

import re
import struct
from collections import deque

from hpack import Decoder
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import FRAMES

from ..anomalies import StrictError
from .base import CLIENT, SERVER, Dissector
from .forms import decode_text
from .exchange import Exchange, ExchangeProcessor, Headers, HttpMessage

__all__ = ["ANOMALIES", "Http2Dissector", "PREFACE", "looks_like_h2"]

ANOMALIES = {
    "http2_bad_preface": "the client did not open with the HTTP/2 connection preface; its bytes are read as frames",
    "http2_bad_frame": "a frame that does not parse (a length wrong for its type, padding longer than the frame, "
                       "a stream id where none belongs or none where one must be); skipped",
    "http2_frame_too_large": "a frame longer than the receiver's SETTINGS_MAX_FRAME_SIZE (read anyway; said once "
                             "per direction), or a frame other than DATA beyond limits.max_http_header_bytes "
                             "(skipped)",
    "http2_continuation_expected": "another frame interrupted a header block awaiting CONTINUATION; the block is "
                                   "dropped and this direction's header compression state is lost",
    "http2_unexpected_continuation": "a CONTINUATION frame with no header block in progress on its stream; skipped",
    "http2_header_too_large": "a header block (HEADERS/PUSH_PROMISE with its CONTINUATION frames) beyond "
                              "limits.max_http_header_bytes; dropped, and this direction's header compression "
                              "state is lost",
    "http2_hpack_error": "a header block HPACK cannot decode (or decoding to more than limits.max_http_header_bytes); "
                         "this direction's later header blocks are not decoded (their dynamic table is unknown)",
    "http2_missing_pseudo_header": "a request without :method or :path, or a response without a valid :status",
    "http2_data_without_headers": "DATA on a stream whose HEADERS were not seen (a capture started mid-stream, "
                                  "or headers that could not be decoded)",
    "http2_frame_on_closed_stream": "HEADERS or DATA on a stream that had already ended",
    "http2_stream_error": "RST_STREAM with an error code other than NO_ERROR, REFUSED_STREAM or CANCEL",
    "http2_goaway_error": "GOAWAY with an error code (the peer saw a connection error)",
    "http2_too_many_streams": "more open streams than limits.max_pending_commands; the oldest is given up",
    "http2_body_gap": "bytes missing inside a DATA payload; the framing holds, the body is marked incomplete",
    "http2_gap": "bytes missing outside a DATA payload: HTTP/2 framing and header compression of that direction "
                 "cannot be recovered, so it is no longer parsed",
    "http2_truncated": "the connection ended inside a frame, or with messages of open streams unfinished",
}

#: The client connection preface (RFC 9113 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6) and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_MAX_FRAME_SIZE = 0x5
DEFAULT_MAX_FRAME = 16384
MAX_FRAME = (1 << 24) - 1

#: RST_STREAM codes that are ordinary flow: NO_ERROR, REFUSED_STREAM, CANCEL.
QUIET_RESETS = (0x0, 0x7, 0x8)

ERROR_NAMES = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
               0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM",
               0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM",
               0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED"}

#: Streams remembered after they end (to tell late frames from new streams).
CLOSED_MEMORY = 4096

_HEADER = struct.Struct("!HBBBL")
_MEMORY = re.compile(r"<memory at 0x[0-9a-f]+>")

# States of one direction's frame reader.
_PREFACE, _HEAD, _BODY, _PAD_LENGTH, _DATA, _PADDING, _SKIP, _DEAD = range(8)


def looks_like_h2(client_first: bytes, server_first: bytes = b"") -> bool | None:
    """Whether a connection's first bytes are HTTP/2: True, False, or None (not yet known).

    The client's preface decides; before the client has spoken, a server whose
    first frame is a SETTINGS frame on stream 0 (which an HTTP/2 server sends
    at once, possibly before the client's preface is seen) decides too.
    """
    if client_first:
        n = min(len(client_first), len(PREFACE))
        if client_first[:n] != PREFACE[:n]:
            return False
        return True if n == len(PREFACE) else None
    if server_first:
        if server_first[:5] == b"HTTP/"[: len(server_first[:5])]:
            return False if len(server_first) >= 5 else None
        if len(server_first) < 9:
            return None
        length = int.from_bytes(server_first[:3], "big")
        sid = int.from_bytes(server_first[5:9], "big") & 0x7FFFFFFF
        return server_first[3] == SETTINGS and sid == 0 and length % 6 == 0 and length <= DEFAULT_MAX_FRAME
    return None


class _Stream:
    """One HTTP/2 stream: an exchange and where each side stands."""

    __slots__ = ("sid", "ex", "ended", "data_noted", "reset")

    def __init__(self, sid: int, limits):
        self.sid = sid
        self.ex = Exchange(None, limits)
        self.ex.req_done = False
        self.ended = [False, False]  # END_STREAM (or given up) per side
        self.data_noted = False
        self.reset = False

    def msg(self, side: int) -> HttpMessage | None:
        return self.ex.request if side == CLIENT else self.ex.response


class _Dir:
    """The frame reader of one direction."""

    __slots__ = ("side", "buf", "state", "remaining", "ftype", "flags", "sid", "length", "ts", "pad",
                 "stream", "decoder", "hpack_ok", "block", "block_sid", "block_kind", "block_flags",
                 "block_promised", "block_ts", "max_frame", "preface_left", "big_noted")

    def __init__(self, side: int, limits):
        self.side = side
        self.buf = bytearray()
        self.state = _PREFACE if side == CLIENT else _HEAD
        self.preface_left = len(PREFACE) if side == CLIENT else 0
        self.remaining = 0
        self.ftype = self.flags = self.sid = self.length = 0
        self.ts = 0.0
        self.pad = 0
        self.stream: _Stream | None = None
        # Header blocks this side sends are decoded by the peer's decoder; this
        # is our copy of it. Its table is bounded by the peer's SETTINGS.
        self.decoder = Decoder(max_header_list_size=limits.max_http_header_bytes)
        self.hpack_ok = True
        self.block: bytearray | None = None  # a header block awaiting CONTINUATION
        self.block_sid = 0
        self.block_kind = HEADERS
        self.block_flags = 0
        self.block_promised = 0
        self.block_ts = 0.0
        self.max_frame = DEFAULT_MAX_FRAME  # what the peer allows this side to send
        self.big_noted = False  # frames over max_frame are reported once (SETTINGS may predate the capture)


class Http2Dissector(Dissector):
    """HTTP/2 over one connection, both directions (see the module docstring)."""

    protocol = "http"

    def __init__(self, session, config=None):
        super().__init__(session, config)
        lim = self.limits
        self.proc = ExchangeProcessor(self.session, self.config, self.anomaly)
        self.dirs = (_Dir(CLIENT, lim), _Dir(SERVER, lim))
        self.streams: dict[int, _Stream] = {}  # open streams, oldest first
        self.closed: dict[int, bool] = {}  # recently ended stream id -> it was reset
        self._closed_order: deque[int] = deque()
        self.frame_cap = lim.max_http_header_bytes
        self._out: list = []
        self._truncated_noted = False

    # interface -------------------------------------------------------------
    def feed(self, side: int, data: bytes, ts: float) -> list:
        out = self._out = []
        if not data:
            return out
        self._feed(self.dirs[side], data, ts)
        return out

    def gap(self, side: int, length: int, ts: float) -> list:
        out = self._out = []
        if length <= 0:
            return out
        self._gap(self.dirs[side], length, ts)
        return out

    def close(self, ts: float, reason: str) -> list:
        out = self._out = []
        self._close(ts)
        return out

    # framing -----------------------------------------------------------------
    def _feed(self, d: _Dir, data: bytes, ts: float) -> None:
        if d.state == _DEAD:
            return
        if d.buf:
            d.buf += data
            pos = self._parse(d, d.buf, ts)
            del d.buf[:pos]
        else:
            # Nothing held: parse straight from the segment and keep only the rest.
            pos = self._parse(d, data, ts)
            if pos < len(data):
                d.buf += data[pos:]

    def _parse(self, d: _Dir, src, ts: float) -> int:
        """Consume frames from ``src``; returns how many bytes were used."""
        pos = 0
        end = len(src)
        copy = isinstance(src, bytearray)  # slices of a buffer we will resize are copied
        while pos < end and d.state != _DEAD:
            state = d.state
            if state == _HEAD:
                if end - pos < 9:
                    break
                hi, lo, ftype, flags, sid = _HEADER.unpack_from(src, pos)
                pos += 9
                self._frame_start(d, (hi << 8) | lo, ftype, flags, sid & 0x7FFFFFFF, ts)
            elif state == _DATA:
                n = min(end - pos, d.remaining)
                chunk = src[pos:pos + n] if copy else memoryview(src)[pos:pos + n]
                pos += n
                d.remaining -= n
                self._data(d, chunk, ts)
                if d.remaining == 0:
                    self._data_payload_done(d, ts)
            elif state == _BODY:
                if end - pos < d.remaining:
                    break
                body = bytes(src[pos:pos + d.remaining])
                pos += d.remaining
                d.state = _HEAD
                self._frame(d, body, ts)
            elif state == _PAD_LENGTH:
                d.pad = src[pos]
                pos += 1
                if d.pad > d.length - 1:
                    self._issue(d, ts, "http2_bad_frame", f"DATA padding {d.pad} in a {d.length}-byte frame")
                    d.remaining = d.length - 1
                    d.state = _SKIP
                else:
                    d.remaining = d.length - 1 - d.pad
                    d.state = _DATA
                    if d.remaining == 0:
                        self._data_payload_done(d, ts)
            elif state == _PADDING or state == _SKIP:
                n = min(end - pos, d.remaining)
                pos += n
                d.remaining -= n
                if d.remaining == 0:
                    d.state = _HEAD
                    if state == _PADDING:
                        self._data_frame_done(d, ts)
            else:  # _PREFACE
                pos = self._preface(d, src, pos, end, ts)
        return pos

    def _preface(self, d: _Dir, src, pos: int, end: int, ts: float) -> int:
        done = len(PREFACE) - d.preface_left
        n = min(end - pos, d.preface_left)
        if bytes(src[pos:pos + n]) != PREFACE[done:done + n]:
            # Not a preface (a capture that starts after it): these bytes are frames.
            self._issue(d, ts, "http2_bad_preface", f"first byte 0x{src[pos]:02x}")
            d.state = _HEAD
            d.preface_left = 0
            if done:
                # the matched start was frame bytes as well; they are lost with the preface guess
                d.state = _DEAD
                self._lose_direction(d, ts, "http2_gap", "connection preface broken off")
            return pos
        d.preface_left -= n
        if d.preface_left == 0:
            d.state = _HEAD
        return pos + n

    def _frame_start(self, d: _Dir, length: int, ftype: int, flags: int, sid: int, ts: float) -> None:
        d.length, d.ftype, d.flags, d.sid, d.ts = length, ftype, flags, sid, ts
        if d.block is not None and not (ftype == CONTINUATION and sid == d.block_sid):
            self._issue(d, ts, "http2_continuation_expected",
                        f"frame type {ftype} on stream {sid} inside the header block of stream {d.block_sid}")
            self._drop_block(d, ts)
        if length > d.max_frame and not d.big_noted:
            d.big_noted = True
            self._issue(d, ts, "http2_frame_too_large", f"{length} bytes (type {ftype}), allowed {d.max_frame}")
        if ftype == DATA:
            if sid == 0:
                self._issue(d, ts, "http2_bad_frame", "DATA on stream 0")
                self._skip(d, length)
                return
            d.stream = self._data_stream(d, sid, ts)
            if flags & PADDED:
                if length == 0:
                    self._issue(d, ts, "http2_bad_frame", "padded DATA without a pad length")
                    d.state = _HEAD
                    return
                d.state = _PAD_LENGTH
                return
            d.pad = 0
            d.remaining = length
            d.state = _DATA
            if length == 0:
                self._data_payload_done(d, ts)
            return
        if length > self.frame_cap:
            self._issue(d, ts, "http2_frame_too_large",
                        f"{length}-byte frame of type {ftype} beyond limits.max_http_header_bytes: skipped")
            if ftype in (HEADERS, CONTINUATION, PUSH_PROMISE):
                self._hpack_lost(d, ts, None)
                if ftype == CONTINUATION and d.block is not None:
                    d.block = None
            self._skip(d, length)
            return
        d.remaining = length
        d.state = _BODY
        if length == 0:
            d.state = _HEAD
            self._frame(d, b"", ts)

    def _skip(self, d: _Dir, length: int) -> None:
        d.remaining = length
        d.state = _SKIP if length else _HEAD

    def _frame(self, d: _Dir, body: bytes, ts: float) -> None:
        """A whole frame other than DATA."""
        ftype, sid = d.ftype, d.sid
        cls = FRAMES.get(ftype)
        if cls is None:
            return  # an extension frame (ALTSVC, ORIGIN...): nothing of ours in it
        try:
            frame = cls(sid)
            frame.parse_flags(d.flags)
            frame.parse_body(memoryview(body))
        except HyperframeError as exc:
            self._issue(d, ts, "http2_bad_frame", f"type {ftype} on stream {sid}: {exc}"[:200])
            if ftype in (HEADERS, CONTINUATION, PUSH_PROMISE):
                # a header block we cannot read still changed the peer's table
                self._hpack_lost(d, ts, sid)
                d.block = None
            return
        if ftype == HEADERS:
            self._block_start(d, HEADERS, sid, frame.data, d.flags, 0, ts)
        elif ftype == CONTINUATION:
            if d.block is None:
                self._issue(d, ts, "http2_unexpected_continuation", f"stream {sid}")
                return
            self._block_more(d, frame.data, d.flags, ts)
        elif ftype == PUSH_PROMISE:
            self._block_start(d, PUSH_PROMISE, sid, frame.data, d.flags, frame.promised_stream_id, ts)
        elif ftype == SETTINGS:
            if not d.flags & ACK:
                self._settings(d, frame.settings, ts)
        elif ftype == RST_STREAM:
            self._reset(d, sid, frame.error_code, ts)
        elif ftype == GOAWAY:
            if frame.error_code:
                extra = decode_text(bytes(frame.additional_data[:80]))
                self._issue(d, ts, "http2_goaway_error",
                            f"{ERROR_NAMES.get(frame.error_code, hex(frame.error_code))}, last stream "
                            f"{frame.last_stream_id}{': ' + extra if extra else ''}")
        # PING, PRIORITY, WINDOW_UPDATE: nothing a reader of the exchanges needs.

    def _settings(self, d: _Dir, settings: dict, ts: float) -> None:
        """SETTINGS from ``d``'s side: they bind what the *other* side sends."""
        other = self.dirs[1 - d.side]
        for key, value in settings.items():
            if key == SETTINGS_HEADER_TABLE_SIZE:
                dec = other.decoder
                # Never below the table's current size: the peer shrinks it only once it has
                # seen these settings, and a block sent before that is still valid.
                dec.max_allowed_table_size = max(min(value, self.frame_cap), dec.header_table_size)
            elif key == SETTINGS_MAX_FRAME_SIZE and DEFAULT_MAX_FRAME <= value <= MAX_FRAME:
                other.max_frame = value

    # header blocks -------------------------------------------------------------
    def _block_start(self, d: _Dir, kind: int, sid: int, fragment: bytes, flags: int, promised: int,
                     ts: float) -> None:
        d.block = bytearray(fragment)
        d.block_kind, d.block_sid, d.block_flags, d.block_promised, d.block_ts = kind, sid, flags, promised, ts
        if flags & END_HEADERS:
            self._block_done(d)
        else:
            self._check_block_size(d, ts)

    def _block_more(self, d: _Dir, fragment: bytes, flags: int, ts: float) -> None:
        d.block += fragment
        if not self._check_block_size(d, ts):
            return
        if flags & END_HEADERS:
            self._block_done(d)

    def _check_block_size(self, d: _Dir, ts: float) -> bool:
        if len(d.block) <= self.frame_cap:
            return True
        self._issue(d, ts, "http2_header_too_large", f"stream {d.block_sid}: over {self.frame_cap} bytes")
        self._drop_block(d, ts)
        return False

    def _drop_block(self, d: _Dir, ts: float) -> None:
        """Abandon the header block in progress: its stream gets no headers and the
        direction's HPACK state is unknown from here."""
        sid = d.block_sid
        d.block = None
        self._hpack_lost(d, ts, sid)

    def _hpack_lost(self, d: _Dir, ts: float, sid: int | None) -> None:
        d.hpack_ok = False
        if sid:
            st = self.streams.get(sid)
            if st is not None:
                msg = st.msg(d.side)
                if msg is not None:
                    msg.complete = False

    def _block_done(self, d: _Dir) -> None:
        block, d.block = d.block, None
        ts = d.block_ts
        fields = self._decode(d, block, ts)
        if d.block_kind == PUSH_PROMISE:
            self._push_promise(d, d.block_sid, d.block_promised, fields, ts)
        else:
            self._headers(d, d.block_sid, fields, bool(d.block_flags & END_STREAM), ts)

    def _decode(self, d: _Dir, block: bytearray, ts: float) -> list[tuple[str, str]] | None:
        """The header list of a block, or None when it cannot be trusted."""
        if not d.hpack_ok:
            return None
        try:
            raw = d.decoder.decode(bytes(block), raw=True)
        except Exception as exc:  # noqa: BLE001 - hpack raises HPACKError, and worse on garbage
            if isinstance(exc, StrictError):
                raise
            d.hpack_ok = False
            text = _MEMORY.sub("the block", str(exc))  # hpack names a memoryview by its address
            self._issue(d, ts, "http2_hpack_error", f"stream {d.block_sid}: {type(exc).__name__}: {text}"[:200])
            return None
        return [(decode_text(n), decode_text(v)) for n, v in raw[: self.limits.max_headers]]

    @staticmethod
    def _split(fields) -> tuple[dict[str, str], Headers]:
        """Pseudo-headers (first of each) and regular fields; split cookies joined."""
        pseudo: dict[str, str] = {}
        regular = Headers()
        cookies = []
        for name, value in fields:
            if name[:1] == ":":
                pseudo.setdefault(name, value)
            elif name == "cookie":
                cookies.append(value)
            else:
                regular.add(name, value)
        if cookies:
            regular.add("cookie", "; ".join(cookies))
        return pseudo, regular

    def _request_message(self, d: _Dir, sid: int, fields, ts: float) -> HttpMessage:
        if fields is None:
            msg = HttpMessage(True, ts, version="HTTP/2")
            msg.complete = False
            return msg
        pseudo, headers = self._split(fields)
        method = pseudo.get(":method", "")
        authority = pseudo.get(":authority")
        path = pseudo.get(":path") or (authority or "" if method == "CONNECT" else "")
        if not method or not path:
            self._issue(d, ts, "http2_missing_pseudo_header", f"stream {sid}: request without :method or :path")
        if authority and "host" not in headers:
            headers.items.insert(0, ("host", authority))
            headers._map = None
        return HttpMessage(True, ts, method=method, uri=path, version="HTTP/2", headers=headers)

    def _headers(self, d: _Dir, sid: int, fields, end_stream: bool, ts: float) -> None:
        if sid == 0:
            return  # hyperframe refuses it; kept for safety
        side = d.side
        st = self.streams.get(sid)
        if st is None:
            if sid in self.closed:
                if not self.closed[sid]:
                    self._issue(d, ts, "http2_frame_on_closed_stream", f"HEADERS on stream {sid}")
                return
            st = self._open(sid, ts)
        ex = st.ex
        msg = st.msg(side)
        if side == CLIENT:
            if msg is None:
                msg = ex.request = self._request_message(d, sid, fields, ts)
                msg.body = self.proc.new_body(msg)
            else:
                self._trailers(msg, fields)
        else:
            status = None
            pseudo, headers = self._split(fields) if fields is not None else ({}, Headers())
            text = pseudo.get(":status", "")
            if text.isascii() and text.isdigit() and len(text) == 3:  # (isdigit alone accepts '²')
                status = int(text)
            if msg is None:
                if status is not None and 100 <= status < 200:
                    ex.interim.append(status)  # 100 Continue, 103 Early Hints: the final answer follows
                    return
                if fields is not None and status is None:
                    self._issue(d, ts, "http2_missing_pseudo_header", f"stream {sid}: response without :status")
                msg = ex.response = HttpMessage(False, ts, status=status, version="HTTP/2", headers=headers)
                if fields is None:
                    msg.complete = False
                msg.body = self.proc.new_body(msg, ex.request)
            else:
                self._trailers(msg, fields)
        if end_stream:
            self._end(st, side, ts)

    @staticmethod
    def _trailers(msg: HttpMessage, fields) -> None:
        if fields is None:
            msg.complete = False
            return
        trailers = Headers((n, v) for n, v in fields if n[:1] != ":")
        if msg.trailers is None:
            msg.trailers = trailers
        else:
            msg.trailers.items.extend(trailers.items)

    def _push_promise(self, d: _Dir, sid: int, promised: int, fields, ts: float) -> None:
        """A server promised a response to a request of its own making."""
        if d.side != SERVER or promised == 0:
            self._issue(d, ts, "http2_bad_frame", f"PUSH_PROMISE from the client or for stream 0 (stream {sid})")
            return
        if promised in self.streams or promised in self.closed:
            self._issue(d, ts, "http2_bad_frame", f"PUSH_PROMISE for stream {promised}, already used")
            return
        st = self._open(promised, ts)
        # The promised request's header block was encoded by the server: decoded by
        # the server direction's decoder (done above); its other checks are the client's.
        msg = st.ex.request = self._request_message(d, promised, fields, ts)
        msg.body = self.proc.new_body(msg)
        self._end(st, CLIENT, ts)

    # streams -----------------------------------------------------------------
    def _open(self, sid: int, ts: float) -> _Stream:
        if len(self.streams) >= self.limits.max_pending_commands:
            old = next(iter(self.streams.values()))
            self._issue_at(ts, None, "http2_too_many_streams",
                           f"over {self.limits.max_pending_commands} open streams; stream {old.sid} given up")
            self._finish(old, ts)
        st = self.streams[sid] = _Stream(sid, self.limits)
        return st

    def _data_stream(self, d: _Dir, sid: int, ts: float) -> _Stream | None:
        st = self.streams.get(sid)
        if st is not None:
            return st
        if sid in self.closed:
            if not self.closed[sid]:
                self._issue(d, ts, "http2_frame_on_closed_stream", f"DATA on stream {sid}")
            return None
        return self._open(sid, ts)

    def _data(self, d: _Dir, chunk, ts: float) -> None:
        st = d.stream
        if st is None or st.ended[d.side]:
            return
        msg = st.msg(d.side)
        if msg is None:
            if not st.data_noted:
                st.data_noted = True
                self._issue(d, ts, "http2_data_without_headers", f"stream {st.sid}")
            msg = HttpMessage(d.side == CLIENT, ts, version="HTTP/2")
            msg.complete = False
            if d.side == CLIENT:
                st.ex.request = msg
                msg.body = self.proc.new_body(msg)
            else:
                st.ex.response = msg
                msg.body = self.proc.new_body(msg, st.ex.request)
        body = msg.body
        body.write(chunk)
        if body.issues:
            for name, detail in body.issues:
                self._issue(d, ts, name, detail)
            body.issues.clear()

    def _data_payload_done(self, d: _Dir, ts: float) -> None:
        if d.pad:
            d.remaining = d.pad
            d.state = _PADDING
        else:
            d.state = _HEAD
            self._data_frame_done(d, ts)

    def _data_frame_done(self, d: _Dir, ts: float) -> None:
        st, d.stream = d.stream, None
        if st is not None and d.flags & END_STREAM and not st.ended[d.side]:
            if st.msg(d.side) is None:
                self._data(d, b"", ts)  # an empty DATA frame with END_STREAM still ends a message
            self._end(st, d.side, ts)

    def _end(self, st: _Stream, side: int, ts: float, complete: bool = True) -> None:
        """One side of a stream has ended (END_STREAM, reset or given up)."""
        if st.ended[side]:
            return
        st.ended[side] = True
        msg = st.msg(side)
        if msg is not None:
            msg.end_ts = ts
            if not complete:
                msg.complete = False
            if msg.body is None:
                msg.body = self.proc.new_body(msg, st.ex.request if side == SERVER else None)
            else:
                msg.body.finish()
            msg.settle(lambda name, detail: self._issue_at(ts, side, name, detail))
        if side == CLIENT:
            st.ex.req_done = True
        else:
            st.ex.resp_done = True
        other = 1 - side
        if st.ended[other] or self.dirs[other].state == _DEAD:
            self._finish(st, ts)

    def _finish(self, st: _Stream, ts: float) -> None:
        """The stream is over: its exchange becomes records."""
        if self.streams.get(st.sid) is not st:
            return
        del self.streams[st.sid]
        for side in (CLIENT, SERVER):
            if not st.ended[side] and st.msg(side) is not None:
                self._end_quietly(st, side, ts)
        self._remember(st.sid, st.reset)
        ex = st.ex
        if ex.request is None and ex.response is None:
            return
        for d in self.dirs:
            if d.stream is st:
                d.stream = None
        self._out.extend(self.proc.complete(ex))

    def _end_quietly(self, st: _Stream, side: int, ts: float) -> None:
        """A message cut short (reset, close, limit): incomplete, no further checks."""
        st.ended[side] = True
        msg = st.msg(side)
        msg.complete = False
        msg.end_ts = ts
        if msg.body is None:
            msg.body = self.proc.new_body(msg, st.ex.request if side == SERVER else None)
        else:
            msg.body.complete = False
            msg.body.finish()
            msg.body.issues.clear()
        msg.merge_trailers()

    def _remember(self, sid: int, reset: bool) -> None:
        self.closed[sid] = reset
        self._closed_order.append(sid)
        if len(self._closed_order) > CLOSED_MEMORY:
            self.closed.pop(self._closed_order.popleft(), None)

    def _reset(self, d: _Dir, sid: int, code: int, ts: float) -> None:
        if code not in QUIET_RESETS:
            self._issue(d, ts, "http2_stream_error", f"stream {sid}: {ERROR_NAMES.get(code, hex(code))}")
        st = self.streams.get(sid)
        if st is None:
            if sid in self.closed:
                self.closed[sid] = True  # late frames of a reset stream are expected
            return
        st.reset = True
        self._finish(st, ts)

    # gaps and close ------------------------------------------------------------
    def _gap(self, d: _Dir, length: int, ts: float) -> None:
        if d.state == _DEAD:
            return
        if not d.buf and d.state == _DATA and length <= d.remaining:
            st = d.stream
            msg = st.msg(d.side) if st is not None else None
            if msg is not None and msg.body is not None and not st.ended[d.side]:
                msg.body.gap(length)
                msg.complete = False
            self._issue(d, ts, "http2_body_gap", f"{length} bytes")
            d.remaining -= length
            if d.remaining == 0:
                self._data_payload_done(d, ts)
            return
        if not d.buf and d.state in (_PADDING, _SKIP) and length <= d.remaining:
            d.remaining -= length
            if d.remaining == 0:
                state, d.state = d.state, _HEAD
                if state == _PADDING:
                    self._data_frame_done(d, ts)
            return
        self._lose_direction(d, ts, "http2_gap", f"{length} bytes")

    def _lose_direction(self, d: _Dir, ts: float, name: str, detail: str) -> None:
        """Stop reading one direction for good; its unfinished messages are incomplete."""
        self._issue(d, ts, name, detail)
        d.state = _DEAD
        d.buf = bytearray()
        d.block = None
        d.stream = None
        for st in list(self.streams.values()):
            msg = st.msg(d.side)
            if msg is not None and not st.ended[d.side]:
                self._end(st, d.side, ts, complete=False)
            elif st.ended[1 - d.side]:
                self._finish(st, ts)

    def _close(self, ts: float) -> None:
        for d in self.dirs:
            if d.state != _DEAD and (d.buf or d.state not in (_HEAD, _PREFACE) or d.block is not None):
                self._note_truncated(d.side, ts, "inside a frame")
        for st in list(self.streams.values()):
            for side in (CLIENT, SERVER):
                msg = st.msg(side)
                if msg is not None and not st.ended[side] and self.dirs[side].state != _DEAD:
                    self._note_truncated(side, ts, f"stream {st.sid} unfinished")
            self._finish(st, ts)

    def _note_truncated(self, side: int, ts: float, detail: str) -> None:
        if not self._truncated_noted:
            self._truncated_noted = True
            self._issue_at(ts, side, "http2_truncated", f"connection closed {detail}")

    # anomalies -----------------------------------------------------------------
    def _issue(self, d: _Dir, ts: float, name: str, detail: str) -> None:
        self._out.append(self.anomaly(ts, d.side, name, detail))

    def _issue_at(self, ts: float, side: int | None, name: str, detail: str) -> None:
        self._out.append(self.anomaly(ts, side, name, detail))
