"""HTTP/2 dissection: frames built with hyperframe, headers with hpack, fed every way.

Each transcript goes through ``run_all_ways`` (whole, byte by byte, random
chunks). The webmail session of test_webmail is replayed in HTTP/2 and must give
the same messages, credentials and mail actions as over HTTP/1.1.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import random

import pytest
from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              PushPromiseFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

import maildissect
from maildissect.config import Config, Limits
from maildissect.model import Anomaly, Command, Credential, HttpRequest, Message
from maildissect.protocols import dissector_class
from maildissect.protocols.http import HttpDissector
from maildissect.protocols.http2 import ANOMALIES, PREFACE, Http2Dissector, looks_like_h2
from maildissect.protocols.http_any import HttpAnyDissector
from tests.helpers import C, S, feed, new_session, of_type, run_all_ways
from tests.pcaps import conversation, write_pcap
from tests.test_webmail import make_message, multipart


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class H2:
    """Builds both directions of an HTTP/2 connection with real encoders."""

    def __init__(self, host="webmail.example.org"):
        self.cenc = Encoder()
        self.senc = Encoder()
        self.host = host

    @staticmethod
    def headers_frame(sid, block, end_stream=False, split=None, pad=0, priority=False) -> bytes:
        pieces = [block] if not split else [block[i:i + split] for i in range(0, len(block), split)]
        f = HeadersFrame(sid)
        f.data = pieces[0]
        if pad:
            f.flags.add("PADDED")
            f.pad_length = pad
        if priority:
            f.flags.add("PRIORITY")
            f.depends_on, f.stream_weight = 0, 15
        if end_stream:
            f.flags.add("END_STREAM")
        out = b""
        if len(pieces) == 1:
            f.flags.add("END_HEADERS")
            return f.serialize()
        out += f.serialize()
        for i, piece in enumerate(pieces[1:], 1):
            c = ContinuationFrame(sid)
            c.data = piece
            if i == len(pieces) - 1:
                c.flags.add("END_HEADERS")
            out += c.serialize()
        return out

    @staticmethod
    def data(sid, payload, end_stream=True, pad=0, size=16384) -> bytes:
        out = b""
        chunks = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
        for i, chunk in enumerate(chunks):
            f = DataFrame(sid)
            f.data = chunk
            if pad:
                f.flags.add("PADDED")
                f.pad_length = pad
            if end_stream and i == len(chunks) - 1:
                f.flags.add("END_STREAM")
            out += f.serialize()
        return out

    def request(self, sid, method, path, headers=(), body=b"", **kw) -> bytes:
        fields = [(":method", method), (":scheme", "https"), (":authority", self.host), (":path", path)]
        fields += [(k.lower(), v) for k, v in headers]
        out = self.headers_frame(sid, self.cenc.encode(fields), end_stream=not body, **kw)
        if body:
            out += self.data(sid, body)
        return out

    def response(self, sid, status, headers=(), body=b"", **kw) -> bytes:
        fields = [(":status", str(status))] + [(k.lower(), v) for k, v in headers]
        out = self.headers_frame(sid, self.senc.encode(fields), end_stream=not body, **kw)
        if body:
            out += self.data(sid, body)
        return out


def settings(**values) -> bytes:
    f = SettingsFrame(0)
    f.settings = {getattr(SettingsFrame, k.upper()): v for k, v in values.items()}
    return f.serialize()


def settings_ack() -> bytes:
    f = SettingsFrame(0)
    f.flags.add("ACK")
    return f.serialize()


def run(transcript, config=None, factory=Http2Dissector):
    records, sess = run_all_ways(factory, transcript, config=config, protocol="http")
    names = {a.name for a in of_type(records, Anomaly)}
    assert names <= set(ANOMALIES) | set(maildissect.anomalies.registry()), names
    return records, sess


def anomalies(records):
    return [a.name for a in of_type(records, Anomaly)]


def opening(h=None):
    return [(C, PREFACE + settings(initial_window_size=65535)), (S, settings(max_concurrent_streams=100)),
            (C, settings_ack()), (S, settings_ack())]


# --------------------------------------------------------------------------
# framing

def test_interleaved_streams_login_and_page():
    h = H2()
    form = b"_token=T0k&_task=login&_action=login&_user=bob&_pass=s3cret"
    page = b"<html><table id=\"messagelist\"></table></html>" * 20
    resp1 = h.response(1, 200, [("content-type", "text/html; charset=utf-8"), ("server", "hypercorn-h2")], page)
    # stream 1's response is cut into its HEADERS and two DATA frames, stream 3 in between
    head1 = resp1[:resp1.index(page[:20]) - 9]
    records, sess = run(opening() + [
        (C, h.request(1, "GET", "/?_task=mail&_mbox=INBOX", [("user-agent", "lab-browser/1.0")])),
        (C, h.request(3, "POST", "/?_task=login", [("content-type", "application/x-www-form-urlencoded")],
                      form)),
        (S, head1 + h.data(1, page[:300], end_stream=False)),
        (S, h.response(3, 302, [("location", "./?_task=mail"), ("set-cookie", "sid=1; HttpOnly")])),
        (S, h.data(1, page[300:])),
        (C, WindowUpdateFrame(0, window_increment=1000).serialize() + PingFrame(0).serialize()),
    ])
    assert not anomalies(records)
    login, page_req = of_type(records, HttpRequest)
    assert (login.method, login.uri, login.version, login.status, login.mail_action) == \
        ("POST", "/?_task=login", "HTTP/2", 302, "login")
    assert login.host == "webmail.example.org" and login.request_sha256 == sha(form)
    assert (page_req.method, page_req.status, page_req.mail_action, page_req.response_size) == \
        ("GET", 200, "list", len(page))
    assert page_req.response_sha256 == sha(page) and page_req.user_agent == "lab-browser/1.0"
    assert page_req.complete and login.complete
    (cred,) = of_type(records, Credential)
    assert (cred.mechanism, cred.user, cred.secret, cred.success) == ("FORM", "bob", "s3cret", True)
    assert [c.command for c in of_type(records, Command)] == ["POST", "GET"]
    assert sess.server_software == "hypercorn-h2" and sess.client_software == "lab-browser/1.0"


def test_continuation_padding_priority_and_trailers():
    h = H2()
    big = [("x-custom-%d" % i, "v" * 40) for i in range(60)]
    body = os.urandom(5000)
    head = h.headers_frame(1, h.senc.encode([(":status", "200"), ("content-type", "application/octet-stream")]),
                           pad=3)
    trailers = h.headers_frame(1, h.senc.encode([("x-checksum", "abc123")]), end_stream=True, split=4)
    records, _ = run(opening() + [
        (C, h.request(1, "GET", "/blob", big, split=300, pad=7, priority=True)),
        (S, head + h.data(1, body, end_stream=False, pad=11, size=1000) + trailers),
    ])
    assert not anomalies(records)
    (req,) = of_type(records, HttpRequest)
    assert (req.uri, req.status, req.response_size, req.response_sha256) == ("/blob", 200, 5000, sha(body))
    assert req.complete


def test_interim_response_then_final():
    h = H2()
    body = b'{"ok": true}'
    records, _ = run(opening() + [
        (C, h.headers_frame(1, h.cenc.encode([(":method", "POST"), (":scheme", "https"), (":authority", "h"),
                                              (":path", "/api"), ("expect", "100-continue"),
                                              ("content-type", "application/json")]))),
        (S, h.headers_frame(1, h.senc.encode([(":status", "100")]))),
        (C, h.data(1, b'{"q": 1}')),
        (S, h.response(1, 200, [("content-type", "application/json")], body)),
    ])
    (req,) = of_type(records, HttpRequest)
    assert (req.status, req.request_size, req.response_size) == (200, 8, len(body))
    assert not anomalies(records)


def test_dynamic_table_and_table_size_settings():
    h = H2()
    # the server allows a larger table, then shrinks it to nothing; the client's
    # encoder follows both (size updates at the start of its next blocks)
    h.cenc.header_table_size = 8192
    ua = [("user-agent", "Mozilla/5.0 " + "x" * 300), ("cookie", "a=1"), ("cookie", "b=2")]
    first = h.request(1, "GET", "/one", ua)
    again = h.request(3, "GET", "/two", ua)  # mostly indexed references now
    shrink = settings(header_table_size=0)
    h.cenc.header_table_size = 0
    third = h.request(5, "GET", "/three", ua)
    records, _ = run([(C, PREFACE + settings()), (S, settings(header_table_size=8192)), (C, settings_ack()),
                      (C, first), (S, h.response(1, 204)), (C, again), (S, h.response(3, 204)),
                      (S, shrink), (C, settings_ack() + third), (S, h.response(5, 204))])
    assert not anomalies(records)
    reqs = of_type(records, HttpRequest)
    assert [r.uri for r in reqs] == ["/one", "/two", "/three"]
    assert {r.user_agent for r in reqs} == {ua[0][1]}
    assert len(again) < len(first) // 4


def test_cookies_joined_and_host_from_authority():
    h = H2()
    dis = Http2Dissector(new_session("http"))
    out = []
    for side, data in opening() + [(C, h.request(1, "GET", "/", [("cookie", "a=1"), ("cookie", "b=2")])),
                                   (S, h.response(1, 204))]:
        out += dis.feed(side, data, 0.0)
    assert [r.host for r in of_type(out, HttpRequest)] == ["webmail.example.org"]


def test_reset_streams_and_goaway():
    h = H2()
    records, _ = run(opening() + [
        (C, h.request(1, "GET", "/cancelled")),
        (C, RstStreamFrame(1, error_code=8).serialize()),  # CANCEL: ordinary
        (S, RstStreamFrame(1, error_code=8).serialize()),  # late frame on a reset stream: quiet
        (C, h.request(3, "GET", "/broken")),
        (S, h.headers_frame(3, h.senc.encode([(":status", "200"), ("content-type", "text/plain")]))
         + h.data(3, b"x" * 40, end_stream=False)),
        (S, RstStreamFrame(3, error_code=2).serialize()),  # INTERNAL_ERROR
        (C, h.request(5, "GET", "/after")),
        (S, h.response(5, 200, [("content-type", "text/plain")], b"fine")),
        (S, GoAwayFrame(0, last_stream_id=5, error_code=1, additional_data=b"bye").serialize()),
    ])
    assert anomalies(records) == ["http2_stream_error", "http2_goaway_error"]
    cancelled, broken, after = of_type(records, HttpRequest)
    assert (cancelled.uri, cancelled.status) == ("/cancelled", None)
    assert (broken.status, broken.complete) == (200, False)
    assert (after.status, after.complete, after.response_size) == (200, True, 4)


def test_push_promise_is_an_exchange_of_its_own():
    h = H2()
    css = b"body { color: red }"
    promise = PushPromiseFrame(1, promised_stream_id=2)
    promise.data = h.senc.encode([(":method", "GET"), (":scheme", "https"), (":authority", "h"),
                                  (":path", "/style.css")])
    promise.flags.add("END_HEADERS")
    records, _ = run(opening() + [
        (C, h.request(1, "GET", "/")),
        (S, promise.serialize()),
        (S, h.response(1, 200, [("content-type", "text/html")], b"<html></html>")),
        (S, h.response(2, 200, [("content-type", "text/css")], css)),
    ])
    assert not anomalies(records)
    page, pushed = of_type(records, HttpRequest)
    assert (pushed.method, pushed.uri, pushed.status, pushed.response_sha256) == ("GET", "/style.css", 200, sha(css))
    assert page.uri == "/"


def test_gzip_body_and_large_data_over_many_frames():
    h = H2()
    raw = make_message(3, [("big.bin", os.urandom(40000))])
    records, _ = run(opening() + [
        (C, h.request(1, "GET", "/?_task=mail&_uid=3&_mbox=INBOX&_action=viewsource&_save=1")),
        (S, h.response(1, 200, [("content-type", "message/rfc822"), ("content-encoding", "gzip"),
                                ("content-disposition", 'attachment; filename="m.eml"')],
                       gzip.compress(raw))),
    ])
    (msg,) = of_type(records, Message)
    assert (msg.direction, msg.kind, msg.sha256, msg.size) == ("downloaded", "rfc822", sha(raw), len(raw))
    assert msg.message_id == "<msg-3@example.org>"


def test_capture_without_preface_reads_frames():
    h = H2()  # (a capture that starts later also misses the header tables' entries: not here)
    records, _ = run([(C, h.request(3, "GET", "/seen")), (S, h.response(3, 200, [], b"ok"))])
    assert anomalies(records) == ["http2_bad_preface"]
    (req,) = of_type(records, HttpRequest)
    assert (req.uri, req.status) == ("/seen", 200)


def test_gap_inside_data_keeps_the_framing():
    h = H2()
    body = bytes(range(256)) * 8
    resp = h.response(1, 200, [("content-type", "application/octet-stream")], body)
    cut = len(resp) - len(body) + 100
    records, _ = run(opening() + [
        (C, h.request(1, "GET", "/a")),
        (S, resp[:cut]), (S, "gap", 500), (S, resp[cut + 500:]),
        (C, h.request(3, "GET", "/b")),
        (S, h.response(3, 200, [], b"next")),
    ])
    assert anomalies(records) == ["http2_body_gap"]
    a, b = of_type(records, HttpRequest)
    assert (a.complete, a.response_size, a.response_sha256) == (False, len(body) - 500, None)
    assert (b.complete, b.response_size) == (True, 4)


def test_gap_outside_data_loses_one_direction_only():
    h = H2()
    first = [(C, h.request(1, "GET", "/first")), (S, h.response(1, 200, [], b"one"))]
    req = h.request(3, "GET", "/lost")
    records, _ = run(opening() + first + [
        (C, req[:5]), (C, "gap", len(req) - 5),
        (S, h.response(3, 200, [("content-type", "text/plain")], b"answer to a lost request")),
    ])
    assert "http2_gap" in anomalies(records)
    first, orphan = of_type(records, HttpRequest)
    assert (first.uri, first.complete) == ("/first", True)
    assert (orphan.method, orphan.status, orphan.response_size) == ("", 200, 24)


def test_connection_closed_mid_stream():
    h = H2()
    resp = h.response(1, 200, [("content-type", "text/plain")], b"y" * 1000)
    records, _ = run(opening() + [(C, h.request(1, "GET", "/cut")), (S, resp[:-400])])
    assert anomalies(records) == ["http2_truncated"]
    (req,) = of_type(records, HttpRequest)
    assert (req.status, req.complete) == (200, False)


def test_limits_become_anomalies():
    h = H2()
    config = Config(limits=Limits(max_http_header_bytes=2048, max_pending_commands=2))
    huge = h.request(1, "GET", "/", [("x-big", "z" * 5000)], split=1000)
    records, _ = run([(C, PREFACE), (C, huge), (S, h.response(1, 204))], config=config)
    assert "http2_header_too_large" in anomalies(records)

    h = H2()
    reqs = b"".join(h.request(sid, "GET", f"/{sid}") for sid in (1, 3, 5))
    records, _ = run([(C, PREFACE + reqs)], config=config)
    assert anomalies(records)[0] == "http2_too_many_streams"
    assert [r.uri for r in of_type(records, HttpRequest)] == ["/1", "/3", "/5"]


def test_malformed_frames_and_hpack_garbage():
    h = H2()
    bad_pad = b"\x00\x00\x05\x00\x09\x00\x00\x00\x01" + b"\x09" + b"abcd"  # pad 9 in a 5-byte DATA frame
    garbage_block = b"\x00\x00\x04\x01\x05\x00\x00\x00\x03" + b"\xff\xff\xff\xff"  # index out of any table
    records, _ = run([
        (C, PREFACE + h.headers_frame(1, h.cenc.encode([(":method", "POST"), (":scheme", "https"), (":authority", "h"),
                                             (":path", "/x")]))),
        (C, bad_pad + h.data(1, b"ok")),
        (C, garbage_block),
        (C, b"\x00\x00\x08\x04\x00\x00\x00\x00\x01" + b"\x00" * 8),  # SETTINGS on a stream
        (C, b"\x00\x00\x03\x2a\x00\x00\x00\x00\x00abc"),  # an unknown extension frame: skipped
        (S, h.response(1, 204)),
    ])
    names = anomalies(records)
    assert names.count("http2_bad_frame") == 2 and "http2_hpack_error" in names
    req, unreadable = of_type(records, HttpRequest)
    assert (req.uri, req.request_size, req.status, req.complete) == ("/x", 2, 204, True)
    # stream 3 was opened by a header block that could not be decoded: a request without a head
    assert (unreadable.method, unreadable.status, unreadable.complete) == ("", None, False)


@pytest.mark.parametrize("seed", range(40))
def test_mutated_transcripts_never_raise(seed):
    rng = random.Random(seed)
    h = H2()
    transcript = opening() + [
        (C, h.request(1, "POST", "/?_task=login", [("content-type", "application/x-www-form-urlencoded")],
                      b"_user=a&_pass=b")),
        (S, h.response(1, 302, [("location", "/")])),
        (C, h.request(3, "GET", "/?_task=mail&_uid=1&_action=viewsource")),
        (S, h.response(3, 200, [("content-type", "message/rfc822")], make_message(1))),
    ]
    mutated = []
    for side, data in transcript:
        data = bytearray(data)
        for _ in range(rng.randint(0, 3)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data) + 1)]
        mutated.append((side, bytes(data)))
    for dis in (Http2Dissector(new_session("http")), HttpAnyDissector(new_session("http"))):
        records = feed(dis, mutated)
        assert all(isinstance(r, (Anomaly, HttpRequest, Command, Credential, Message)) for r in records)


# --------------------------------------------------------------------------
# the same webmail session over HTTP/1.1 and HTTP/2

def _webmail_exchanges():
    login = "_token=T0k&_task=login&_action=login&_timezone=Europe%2FBerlin&_url=&_user=alice%40example.org" \
            "&_pass=s%C3%A9cret"
    pdf = bytes(range(256)) * 30
    upload = multipart(b"bnd1", [("_id", "cmp42")], [("_attachments[]", "report.pdf", "application/pdf", pdf)])
    send = multipart(b"bnd2", [("_token", "T0k"), ("_task", "mail"), ("_action", "send"), ("_id", "cmp42"),
                               ("_from", "alice@example.org"), ("_to", "Bob <bob@example.net>"),
                               ("_cc", ""), ("_bcc", ""), ("_subject", "Quarterly report"),
                               ("_message", "Hi Bob,\r\nthe report.\r\n")], [])
    raw = make_message(5)
    html = "text/html; charset=utf-8"
    return [
        ("GET", "/", [], b"", 200, [("content-type", html)],
         b'<form><input name="_user"><input name="_pass" type="password"></form>'),
        ("POST", "/?_task=login", [("content-type", "application/x-www-form-urlencoded")], login.encode(),
         302, [("location", "./?_task=mail&_mbox=INBOX"), ("set-cookie", "sid=abc")], b""),
        ("GET", "/?_task=mail&_mbox=INBOX&_uid=5&_action=show", [], b"", 200, [("content-type", html)],
         b'<pre id="messagebody">body</pre>'),
        ("GET", "/?_task=mail&_uid=5&_mbox=INBOX&_action=viewsource&_save=1", [], b"", 200,
         [("content-type", "message/rfc822"), ("content-disposition", 'attachment; filename="message-5.eml"')],
         raw),
        ("POST", "/?_task=mail&_action=upload&_id=cmp42", [("content-type", "multipart/form-data; boundary=bnd1")],
         upload, 200, [("content-type", "application/json")], b'{"ok": true}'),
        ("POST", "/?_task=mail&_action=send", [("content-type", "multipart/form-data; boundary=bnd2")], send,
         200, [("content-type", html)],
         b'<p>Message sent.</p><code id="message-id">&lt;webmail-7@example.org&gt;</code>'),
    ]


def _http1(exchanges):
    out = []
    for method, path, rh, rbody, status, sh, sbody in exchanges:
        head = f"{method} {path} HTTP/1.1\r\nHost: webmail.example.org\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in rh)
        if rbody:
            head += f"Content-Length: {len(rbody)}\r\n"
        out.append((C, head.encode() + b"\r\n" + rbody))
        shead = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sh)
        shead += f"Content-Length: {len(sbody)}\r\n"
        out.append((S, shead.encode() + b"\r\n" + sbody))
    return out


def _http2(exchanges):
    h = H2()
    out = []
    for i, (method, path, rh, rbody, status, sh, sbody) in enumerate(exchanges):
        sid = 2 * i + 1
        out.append((C, (PREFACE + settings() if i == 0 else b"") + h.request(sid, method, path, rh, rbody)))
        out.append((S, (settings() if i == 0 else b"") + h.response(sid, status, sh, sbody)))
    return out


def test_webmail_recognition_is_the_same_over_http2():
    ex = _webmail_exchanges()
    r1, s1 = run_all_ways(HttpDissector, _http1(ex), protocol="http")
    r2, s2 = run(_http2(ex))
    assert not anomalies(r2)
    # HTTP/2 has no reason phrase: the only field allowed to differ
    assert of_type(r2, Message) == [dataclasses.replace(m, reply_text=None) for m in of_type(r1, Message)]
    assert of_type(r2, Credential) == of_type(r1, Credential)
    h1, h2 = of_type(r1, HttpRequest), of_type(r2, HttpRequest)
    assert [h.mail_action for h in h2] == [h.mail_action for h in h1] == \
        [None, "login", "read", "download", "upload", "send"]
    assert [(h.request_sha256, h.response_sha256, h.files) for h in h2] == \
        [(h.request_sha256, h.response_sha256, h.files) for h in h1]
    assert {h.version for h in h2} == {"HTTP/2"}
    assert (s2.auth_user, s2.auth_mechanism) == (s1.auth_user, s1.auth_mechanism) == ("alice@example.org", "FORM")
    assert [(m.direction, m.kind) for m in of_type(r2, Message)] == \
        [("downloaded", "rfc822"), ("uploaded", "form"), ("sent", "form")]


# --------------------------------------------------------------------------
# choosing HTTP/1 or HTTP/2

def test_http_connections_choose_their_version():
    assert dissector_class("http") is HttpAnyDissector
    ex = _webmail_exchanges()[:2]
    r1, _ = run(_http1(ex), factory=HttpAnyDissector)
    assert {h.version for h in of_type(r1, HttpRequest)} == {"HTTP/1.1"}
    r2, _ = run(_http2(ex), factory=HttpAnyDissector)
    assert {h.version for h in of_type(r2, HttpRequest)} == {"HTTP/2"}
    # an HTTP/2 server may speak first (its SETTINGS), before the client's preface is seen
    t = _http2(ex)
    t = [(S, settings())] + [(C, t[0][1])] + [(S, t[1][1][len(settings()):])] + t[2:]
    r3, _ = run(t, factory=HttpAnyDissector)
    assert [h.status for h in of_type(r3, HttpRequest)] == [200, 302]


def test_alpn_h2_decides_at_once():
    sess = new_session("http")
    sess.alpn = "h2"
    dis = HttpAnyDissector(sess)
    assert isinstance(dis.inner, Http2Dissector)
    assert looks_like_h2(PREFACE[:10]) is None and looks_like_h2(b"GET / HTTP/1.1") is False
    assert looks_like_h2(b"", b"HTTP/1.1 200 OK") is False and looks_like_h2(b"", settings()) is True


def test_h2c_prior_knowledge_on_port_80(tmp_path):
    ex = _webmail_exchanges()[:4]
    t = _http2(ex)
    frames, _, _ = conversation(server=("10.0.0.2", 80), exchanges=[("c" if s == C else "s", d) for s, d in t])
    path = tmp_path / "h2c.pcap"
    write_pcap(path, frames)
    a = maildissect.analyze(str(path))
    assert list(a.http["version"]) == ["HTTP/2"] * 4
    assert list(a.http["mail_action"].fillna("")) == ["", "login", "read", "download"]
    (msg,) = [m for m in a.records.messages if m.kind == "rfc822"]
    assert msg.sha256 == sha(make_message(5))
    assert a.sessions.loc[0, "auth_user"] == "alice@example.org"
    assert not len(a.anomalies)
