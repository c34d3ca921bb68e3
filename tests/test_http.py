"""HTTP/1.x framing, bodies, decoding, credentials and gaps, on crafted transcripts.

Every transcript goes through ``run_all_ways`` (whole, byte by byte, random
chunks): the records must not depend on segmentation.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import zlib

import brotli
import pytest
import zstandard

from maildissect.config import Config, Limits
from maildissect.model import Anomaly, Command, Credential, HttpRequest
from maildissect.protocols.http import ANOMALIES, HttpDissector, looks_like_http
from maildissect.redact import redact_record
from tests.helpers import C, S, feed, new_session, of_type, run_all_ways


def run(transcript, config=None):
    records, sess = run_all_ways(HttpDissector, transcript, config=config)
    names = {a.name for a in of_type(records, Anomaly)}
    assert names <= set(ANOMALIES), names - set(ANOMALIES)
    return records, sess


def http(records):
    return of_type(records, HttpRequest)


def anomalies(records):
    return [a.name for a in of_type(records, Anomaly)]


def resp(body: bytes, ctype=b"text/plain", extra=b"", status=b"200 OK") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# -- framing ---------------------------------------------------------------------

def test_simple_exchange_fields_and_command():
    recs, sess = run([
        (C, b"GET /inbox?x=1 HTTP/1.1\r\nHost: mail.example\r\nUser-Agent: UA/1\r\nReferer: http://r/\r\n\r\n"),
        (S, resp(b"hello", extra=b"Server: Srv/2\r\n")),
    ])
    (h,) = http(recs)
    assert (h.method, h.uri, h.version, h.host, h.status, h.reason) == \
        ("GET", "/inbox?x=1", "HTTP/1.1", "mail.example", 200, "OK")
    assert h.response_size == 5 and h.response_sha256 == sha(b"hello")
    assert h.response_md5 == hashlib.md5(b"hello").hexdigest()
    assert h.response_content_type == "text/plain" and h.request_size == 0 and h.request_sha256 is None
    assert (h.user_agent, h.referer, h.ts, h.response_ts, h.latency) == ("UA/1", "http://r/", 0.0, 1.0, 1.0)
    assert h.complete
    (cmd,) = of_type(recs, Command)
    assert (cmd.command, cmd.argument, cmd.reply_code, cmd.reply_text, cmd.latency) == \
        ("GET", "/inbox?x=1", "200", "OK", 1.0)
    assert sess.client_software == "UA/1" and sess.server_software == "Srv/2"
    assert not anomalies(recs)


def test_pipelined_requests_paired_in_order():
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(4))
    resps = b"".join(resp(b"body%d" % i, status=b"%d X" % (200 + i)) for i in range(4))
    recs, _ = run([(C, reqs), (S, resps)])
    got = [(h.uri, h.status, h.response_size) for h in http(recs)]
    assert got == [("/%d" % i, 200 + i, 5) for i in range(4)]


def test_keep_alive_interleaved():
    t = []
    for i in range(3):
        t += [(C, b"GET /k%d HTTP/1.1\r\nHost: h\r\n\r\n" % i), (S, resp(b"x" * i))]
    recs, _ = run(t)
    assert [(h.uri, h.response_size, h.ts, h.response_ts) for h in http(recs)] == \
        [("/k0", 0, 0.0, 1.0), ("/k1", 1, 2.0, 3.0), ("/k2", 2, 4.0, 5.0)]


def test_headers_repeated_folded_odd_case():
    recs, sess = run([
        (C, b"GET / HTTP/1.1\r\nhOsT: a.example\r\nX-A: 1\r\nX-A: 2\r\nuser-AGENT: folded\r\n  agent\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH:3\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nabc"),
    ])
    (h,) = http(recs)
    assert h.host == "a.example" and h.user_agent == "folded agent" and h.response_size == 3
    assert anomalies(recs) == ["http_folded_header"]


def test_chunked_with_trailers():
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: yes\r\n\r\n"
    recs, _ = run([
        (C, b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n" + body),
        (C, b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(b"ok")),
    ])
    first, second = http(recs)
    assert first.response_size == len(b"Wikipedia in\r\n\r\nchunks.")
    assert first.response_sha256 == sha(b"Wikipedia in\r\n\r\nchunks.")
    assert second.uri == "/after" and second.response_size == 2
    assert not anomalies(recs)


def test_chunked_split_at_every_position():
    payload = bytes(range(256)) * 3
    chunks = b"".join(b"%x\r\n" % len(payload[i:i + 100]) + payload[i:i + 100] + b"\r\n"
                      for i in range(0, len(payload), 100))
    stream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n" + resp(b"next")
    req = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    want = None
    for cut in range(1, len(stream)):
        d = HttpDissector(new_session("http"), Config())
        out = d.feed(C, req, 0.0) + d.feed(S, stream[:cut], 1.0) + d.feed(S, stream[cut:], 1.0)
        out += d.close(2.0, "fin")
        got = [(h.uri, h.response_size, h.response_sha256) for h in http(out)]
        assert not anomalies(out), cut
        want = want or got
        assert got == want == [("/1", len(payload), sha(payload)), ("/2", 4, sha(b"next"))], cut


def test_read_until_close_body():
    recs, _ = run([
        (C, b"GET /old HTTP/1.0\r\n\r\n"),
        (S, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this"),
        (S, b" until close"),
    ])
    (h,) = http(recs)
    assert h.response_size == len(b"all of this until close") and h.complete


def test_bodiless_responses():
    recs, _ = run([
        (C, b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /n HTTP/1.1\r\nHost: h\r\n\r\nGET /m HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"),
        (C, b"GET /last HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(b"z")),
    ])
    assert [(h.uri, h.status, h.response_size) for h in http(recs)] == \
        [("/h", 200, 0), ("/n", 204, 0), ("/m", 304, 0), ("/last", 200, 1)]


def test_expect_100_continue():
    recs, _ = run([
        (C, b"POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n"
            b"Content-Type: text/plain\r\n\r\n"),
        (S, b"HTTP/1.1 100 Continue\r\n\r\n"),
        (C, b"data"),
        (S, b"HTTP/1.1 102 Processing\r\n\r\n" + resp(b"done", status=b"201 Created")),
    ])
    (h,) = http(recs)
    assert (h.status, h.request_size, h.response_size, h.latency) == (201, 4, 4, 3.0)


def test_response_before_request_body_ends():
    recs, _ = run([
        (C, b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n12345"),
        (S, resp(b"", status=b"413 Too Large")),
        (C, b"67890"),
        (C, b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(b"n")),
    ])
    assert [(h.uri, h.status, h.request_size) for h in http(recs)] == [("/big", 413, 10), ("/next", 200, 0)]


def test_connect_tunnel_stops_parsing():
    recs, _ = run([
        (C, b"CONNECT mail.example:443 HTTP/1.1\r\nHost: mail.example:443\r\n\r\n"),
        (S, b"HTTP/1.1 200 Connection established\r\n\r\n"),
        (C, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200)),
        (S, b"\x16\x03\x03\x00\x5a\x02" + bytes(100)),
    ])
    (h,) = http(recs)
    assert (h.method, h.uri, h.status, h.upgrade) == ("CONNECT", "mail.example:443", 200, "connect")
    assert not anomalies(recs)


def test_upgrade_websocket_and_declined_upgrade():
    recs, _ = run([
        (C, b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        (S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        (C, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"),
    ])
    (h,) = http(recs)
    assert (h.status, h.upgrade) == (101, "websocket")
    recs, _ = run([
        (C, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
            b"GET /y HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(b"plain") + resp(b"again")),
    ])
    assert [(h.uri, h.upgrade, h.response_size) for h in http(recs)] == [("/x", None, 5), ("/y", None, 5)]


def test_http2_prior_knowledge_preface():
    recs, _ = run([(C, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00"),
                   (S, b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")])
    (h,) = http(recs)
    assert (h.method, h.upgrade) == ("PRI", "h2")
    assert not anomalies(recs)


def test_http09():
    recs, _ = run([(C, b"GET /ancient\r\n"), (S, b"<html>raw body</html>")])
    (h,) = http(recs)
    assert (h.method, h.uri, h.version, h.status, h.response_size) == ("GET", "/ancient", "HTTP/0.9", None, 21)
    assert anomalies(recs) == ["http_09_response"]


def test_leading_blank_lines_and_bare_lf():
    recs, _ = run([(C, b"\r\n\r\nGET /lf HTTP/1.1\nHost: h\n\n"), (S, b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")])
    (h,) = http(recs)
    assert (h.uri, h.host, h.response_size) == ("/lf", "h", 2)
    assert not anomalies(recs)


# -- content decoding ------------------------------------------------------------------

PAGE = b"".join(b"<p>line %d of a compressible page</p>\n" % i for i in range(2000))


@pytest.mark.parametrize("coding,encode", [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda d: zlib.compress(d)[2:-4]),  # raw deflate, as old servers send
    ("br", brotli.compress),
    ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
    ("gzip, br", lambda d: brotli.compress(gzip.compress(d))),
])
def test_content_encodings(coding, encode):
    enc = encode(PAGE)
    recs, _ = run([
        (C, b"GET /page HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip, br, zstd\r\n\r\n"),
        (S, resp(enc, ctype=b"text/plain", extra=b"Content-Encoding: " + coding.encode() + b"\r\n")),
    ])
    (h,) = http(recs)
    assert h.response_size == len(PAGE) and h.response_sha256 == sha(PAGE) and h.complete
    assert not anomalies(recs)


def test_gzip_members_and_chunked_gzip():
    enc = gzip.compress(PAGE[:5000]) + gzip.compress(PAGE[5000:])
    chunked = b"".join(b"%x\r\n" % len(enc[i:i + 999]) + enc[i:i + 999] + b"\r\n" for i in range(0, len(enc), 999))
    recs, _ = run([
        (C, b"GET /g HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n" + chunked + b"0\r\n\r\n"),
    ])
    (h,) = http(recs)
    assert h.response_size == len(PAGE) and h.response_sha256 == sha(PAGE)


def test_unknown_and_broken_encodings():
    recs, _ = run([
        (C, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(b"compressed?", extra=b"Content-Encoding: compress\r\n")
            + resp(b"not gzip at all", extra=b"Content-Encoding: gzip\r\n")
            + resp(gzip.compress(PAGE)[:300], extra=b"Content-Encoding: gzip\r\n")),
    ])
    a, b, c = http(recs)
    assert a.response_size == 11 and a.complete  # kept encoded, whole
    assert not b.complete and b.response_sha256 is None
    assert not c.complete and c.response_sha256 is None and c.response_size > 0
    assert anomalies(recs) == ["http_unknown_content_encoding", "http_decoding_error", "http_decoding_error"]


BOMB_LIMIT = 1 << 20


@pytest.mark.parametrize("coding,encode", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("br", lambda d: brotli.compress(d, quality=5)),
    ("zstd", lambda d: zstandard.ZstdCompressor(level=19).compress(d)),
])
def test_decompression_bomb(coding, encode):
    bomb = encode(bytes(64 * 1024 * 1024))  # 64 MiB of zeros in a few KiB
    config = Config(limits=Limits(max_decompressed=BOMB_LIMIT))
    recs, _ = run([
        (C, b"GET /bomb HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(bomb, ctype=b"application/json", extra=b"Content-Encoding: " + coding.encode() + b"\r\n")),
        (C, b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(b"{}", ctype=b"application/json")),
    ], config=config)
    first, after = http(recs)
    assert "http_decompression_bomb" in anomalies(recs)
    assert first.response_size <= BOMB_LIMIT and not first.complete and first.response_sha256 is None
    assert after.uri == "/after" and after.response_size == 2 and after.complete


def test_decompression_ratio_limit():
    bomb = gzip.compress(bytes(8 * 1024 * 1024))
    config = Config(limits=Limits(max_decompression_ratio=100))
    recs, _ = run([(C, b"GET /r HTTP/1.1\r\nHost: h\r\n\r\n"),
                   (S, resp(bomb, extra=b"Content-Encoding: gzip\r\n"))], config=config)
    (h,) = http(recs)
    assert anomalies(recs) == ["http_decompression_bomb"]
    assert h.response_size <= 2 * 1024 * 1024 and not h.complete


def test_body_beyond_limit_is_hashed_not_kept():
    data = b"{" + b'"k": "v", ' * 5000 + b'"end": 1}'
    config = Config(limits=Limits(max_http_body=1000))
    d = HttpDissector(new_session("http"), config)
    recs, _ = run([(C, b"POST /api HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(data) + data), (S, resp(b"ok"))], config=config)
    (h,) = http(recs)
    assert h.request_size == len(data) and h.request_sha256 == sha(data) and h.complete
    assert anomalies(recs) == ["http_body_too_large"]
    assert d is not None


# -- anomalies and resynchronisation --------------------------------------------------

def test_bad_request_line_resyncs():
    recs, _ = run([
        (C, b"\x00\x01garbage line\r\nmore junk\r\nGET /ok HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(b"fine")),
    ])
    (h,) = http(recs)
    assert h.uri == "/ok" and h.status == 200
    assert anomalies(recs) == ["http_bad_request_line"]


def test_the_reply_to_a_bad_request_line_is_not_given_to_the_next_request():
    """A server answers a line that is no request (``=GET /x``, hostile-content suite's
    csv-formulas capture) before the next request is sent: that reply is the bad line's, not the
    next request's (which showed a reply before its request: a negative latency)."""
    recs, _ = run([
        (C, b"=GET /x HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(b"no", status=b"400 Bad Request")),
        (C, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(b"fine")),
    ])
    pairs = [(h.uri, h.status) for h in http(recs)]
    assert pairs == [("", 400), ("/ok", 200)], pairs
    assert anomalies(recs) == ["http_bad_request_line", "http_response_without_request"]
    assert all(h.latency is None or h.latency >= 0 for h in http(recs))


def test_bad_status_line_resyncs():
    recs, _ = run([
        (C, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, b"JUNK 200\r\n" + resp(b"one")),
    ])
    (h,) = http(recs)
    assert (h.uri, h.status, h.response_size) == ("/1", 200, 3)
    assert anomalies(recs) == ["http_bad_status_line"]


def test_te_and_cl_smuggling_and_bad_length():
    recs, _ = run([
        (C, b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
            b"POST /t HTTP/1.1\r\nHost: h\r\nContent-Length: 2, 3\r\n\r\nxy"),
        (S, resp(b"1") + resp(b"2")),
    ])
    assert [(h.uri, h.request_size) for h in http(recs)] == [("/s", 3), ("/t", 2)]
    assert anomalies(recs) == ["http_te_and_cl", "http_bad_content_length"]


def test_limits_on_lines_and_header_blocks():
    config = Config(limits=Limits(max_line=200, max_http_header_bytes=1000))
    recs, _ = run([
        (C, b"GET /l HTTP/1.1\r\nHost: h\r\nX-Long: " + b"a" * 500 + b"\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 50) for i in range(40)) + b"\r\n"),
        (S, resp(b"ok")),
    ], config=config)
    (h,) = http(recs)
    assert h.host == "h" and h.status == 200
    assert anomalies(recs) == ["http_line_too_long", "http_header_too_large"]


def test_too_many_pending_requests():
    config = Config(limits=Limits(max_pending_commands=3))
    recs, _ = run([(C, b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5)))], config=config)
    assert [h.uri for h in http(recs)] == ["/0", "/1", "/2", "/3", "/4"]
    assert anomalies(recs) == ["http_too_many_pending"] * 2


def test_response_without_request_and_truncation():
    recs, _ = run([(S, resp(b"orphan")), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")])
    a, b = http(recs)
    assert (a.method, a.status, a.response_size) == ("", 200, 6)
    assert (b.status, b.response_size, b.complete) == (200, 5, False)
    assert anomalies(recs) == ["http_response_without_request", "http_response_without_request",
                               "http_truncated"]


def test_unanswered_request_at_close():
    recs, _ = run([(C, b"GET /gone HTTP/1.1\r\nHost: h\r\n\r\n")])
    (h,) = http(recs)
    (cmd,) = of_type(recs, Command)
    assert h.status is None and h.latency is None and cmd.reply_code is None


# -- gaps ----------------------------------------------------------------------------

def test_gap_inside_body_keeps_framing():
    body = b"0123456789" * 10
    recs, _ = run([
        (C, b"GET /g HTTP/1.1\r\nHost: h\r\n\r\nGET /h HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + body[:30]),
        (S, "gap", 40),
        (S, body[70:] + resp(b"next")),
    ])
    a, b = http(recs)
    assert (a.response_size, a.complete, a.response_sha256) == (60, False, None)
    assert (b.uri, b.response_size, b.complete) == ("/h", 4, True)
    assert anomalies(recs) == ["http_body_gap"]


def test_gap_in_headers_resyncs_on_next_request():
    recs, _ = run([
        (C, b"GET /a HTTP/1.1\r\nHost: h\r\nX-Par"),
        (C, "gap", 50),
        (C, b"tial: rest\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, resp(b"A") + resp(b"B")),
    ])
    a, b = http(recs)
    assert (a.uri, a.complete, a.status) == ("/a", False, 200)
    assert (b.uri, b.complete, b.status) == ("/b", True, 200)
    assert anomalies(recs) == ["http_gap_resync"]


def test_gap_spanning_chunked_body_resyncs_server():
    recs, _ = run([
        (C, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
        (S, "gap", 500),
        (S, b"xx lost tail\r\n0\r\n\r\n" + resp(b"second")),
    ])
    a, b = http(recs)
    assert (a.complete, a.response_size) == (False, 2)
    assert (b.uri, b.response_size, b.complete) == ("/2", 6, True)
    assert anomalies(recs) == ["http_gap_resync"]


def test_gap_in_read_until_close():
    recs, _ = run([(C, b"GET / HTTP/1.0\r\n\r\n"), (S, b"HTTP/1.0 200 OK\r\n\r\nabc"), (S, "gap", 10), (S, b"def")])
    (h,) = http(recs)
    assert (h.response_size, h.complete) == (6, False)


# -- credentials ----------------------------------------------------------------------

def test_basic_auth_once_per_session_with_verdict():
    auth = b"Authorization: Basic " + base64.b64encode(b"alice:wonder land") + b"\r\n"
    bad = b"Authorization: Basic " + base64.b64encode(b"alice:wrong") + b"\r\n"
    recs, sess = run([
        (C, b"GET /a HTTP/1.1\r\nHost: h\r\n" + bad + b"\r\n"),
        (S, resp(b"no", status=b"401 Unauthorized")),
        (C, b"GET /a HTTP/1.1\r\nHost: h\r\n" + auth + b"\r\n"),
        (S, resp(b"yes")),
        (C, b"GET /b HTTP/1.1\r\nHost: h\r\n" + auth + b"\r\n"),
        (S, resp(b"yes")),
    ])
    creds = [(c.mechanism, c.user, c.secret, c.success) for c in of_type(recs, Credential)]
    assert creds == [("BASIC", "alice", "wrong", False), ("BASIC", "alice", "wonder land", True)]
    assert (sess.auth_user, sess.auth_mechanism) == ("alice", "BASIC")


def test_bearer_digest_and_invalid_basic():
    recs, _ = run([
        (C, b"GET /a HTTP/1.1\r\nAuthorization: Bearer tok.en\r\n\r\n"
            b"GET /b HTTP/1.1\r\nAuthorization: Digest username=\"bob\", realm=\"r\", nonce=\"n\", "
            b"uri=\"/b\", response=\"6629fae49393a05397450978507c4ef1\"\r\n\r\n"
            b"GET /c HTTP/1.1\r\nAuthorization: Basic !!!notbase64\r\n\r\n"),
        (S, resp(b"1") + resp(b"2") + resp(b"3")),
    ])
    creds = [(c.mechanism, c.user, c.secret, c.success) for c in of_type(recs, Credential)]
    assert creds == [("BEARER", None, "tok.en", True),
                     ("DIGEST", "bob", "6629fae49393a05397450978507c4ef1", True)]
    assert anomalies(recs) == ["http_basic_auth_invalid"]


def form_post(uri: bytes, body: bytes, ctype=b"application/x-www-form-urlencoded") -> bytes:
    return (b"POST " + uri + b" HTTP/1.1\r\nHost: h\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def test_login_form_verdicts():
    page_again = b"<form><input name=user><input type='password' name=pass></form>"
    recs, sess = run([
        (C, form_post(b"/login", b"user=eve&pass=bad1")),
        (S, resp(b"", status=b"401 Unauthorized")),
        (C, form_post(b"/login", b"user=eve&pass=bad2")),
        (S, resp(page_again, ctype=b"text/html")),
        (C, form_post(b"/login", b"user=eve&pass=bad3")),
        (S, b"HTTP/1.1 302 Found\r\nLocation: /login?error=1\r\nContent-Length: 0\r\n\r\n"),
        (C, form_post(b"/login", b"user=eve%40example.org&pass=good+one")),
        (S, b"HTTP/1.1 302 Found\r\nLocation: /mail/inbox\r\nSet-Cookie: s=1\r\nContent-Length: 0\r\n\r\n"),
        (C, form_post(b"/api/login", b'{"email": "x@y", "password": "j"}', b"application/json")),
        (S, resp(b'{"ok": true}', ctype=b"application/json")),
    ])
    creds = [(c.mechanism, c.user, c.secret, c.success) for c in of_type(recs, Credential)]
    assert creds == [("FORM", "eve", "bad1", False), ("FORM", "eve", "bad2", False),
                     ("FORM", "eve", "bad3", False), ("FORM", "eve@example.org", "good one", True),
                     ("FORM", "x@y", "j", True)]
    assert [h.mail_action for h in http(recs)] == ["login"] * 5
    assert sess.auth_user == "eve@example.org" and sess.auth_mechanism == "FORM"


def test_password_in_query_is_masked():
    recs, _ = run([(C, b"GET /login?user=a&password=b HTTP/1.1\r\nHost: h\r\n\r\n"), (S, resp(b""))])
    (cmd,) = of_type(recs, Command)
    assert redact_record(cmd).argument == "/login?user=a&password=********"
    (cred,) = of_type(recs, Credential)
    assert (cred.user, cred.secret) == ("a", "b")


# -- forms -----------------------------------------------------------------------------

BOUNDARY = b"----WebKitFormBoundaryX3"


def multipart(parts) -> bytes:
    out = b""
    for headers, data in parts:
        out += b"--" + BOUNDARY + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n"


FILE_A = bytes(range(256)) * 40
FILE_B = "naïve ünïcode text\r\n".encode() * 30
FORM = multipart([
    (b'Content-Disposition: form-data; name="title"', b"hello"),
    (b'Content-Disposition: form-data; name="doc"; filename="a.bin"\r\nContent-Type: application/octet-stream', FILE_A),
    (b"Content-Disposition: form-data; name=\"doc\"; filename*=UTF-8''na%C3%AFve.txt\r\nContent-Type: text/plain", FILE_B),
    (b'Content-Disposition: form-data; name="empty"; filename=""\r\nContent-Type: application/octet-stream', b""),
])


def test_multipart_files_names_types_sizes_hashes():
    recs, _ = run([
        (C, form_post(b"/upload", FORM, b"multipart/form-data; boundary=" + BOUNDARY)),
        (S, resp(b"ok")),
    ])
    (h,) = http(recs)
    assert h.request_size == len(FORM) and h.request_content_type == "multipart/form-data"
    got = [(f.filename, f.content_type, f.size, f.md5, f.sha1, f.sha256) for f in h.files]
    assert got == [
        ("a.bin", "application/octet-stream", len(FILE_A), hashlib.md5(FILE_A).hexdigest(),
         hashlib.sha1(FILE_A).hexdigest(), sha(FILE_A)),
        ("naïve.txt", "text/plain", len(FILE_B), hashlib.md5(FILE_B).hexdigest(),
         hashlib.sha1(FILE_B).hexdigest(), sha(FILE_B)),
    ]
    assert all(f.data is None for f in h.files)
    assert not anomalies(recs)


def test_multipart_split_at_every_position():
    req = form_post(b"/upload", FORM, b"multipart/form-data; boundary=" + BOUNDARY)
    start = req.index(b"\r\n\r\n") + 4
    want = None
    for cut in range(start, len(req), 7):
        d = HttpDissector(new_session("http"), Config())
        out = d.feed(C, req[:cut], 0.0) + d.feed(C, req[cut:], 0.0) + d.feed(S, resp(b"k"), 1.0)
        out += d.close(2.0, "fin")
        (h,) = http(out)
        got = [(f.filename, f.size, f.sha256) for f in h.files]
        want = want or got
        assert got == want and len(got) == 2, cut


def test_keep_bodies_keeps_file_data():
    recs, _ = run([(C, form_post(b"/upload", FORM, b"multipart/form-data; boundary=" + BOUNDARY)),
                   (S, resp(b"ok"))], config=Config(keep_bodies=True))
    (h,) = http(recs)
    assert [f.data for f in h.files] == [FILE_A, FILE_B]


def test_multipart_unterminated_and_without_boundary():
    body = FORM[:-(len(BOUNDARY) + 6)]
    recs, _ = run([
        (C, form_post(b"/u", body, b"multipart/form-data; boundary=" + BOUNDARY)
            + form_post(b"/v", b"whatever", b"multipart/form-data")),
        (S, resp(b"1") + resp(b"2")),
    ])
    u, v = http(recs)
    assert [f.filename for f in u.files][:2] == ["a.bin", "naïve.txt"]
    assert u.files[1].sha256 == sha(FILE_B)
    assert anomalies(recs) == ["http_multipart_unterminated", "http_multipart_bad"]


def test_json_bodies_bounded():
    deep = b"[" * 500 + b"]" * 500
    recs, _ = run([
        (C, form_post(b"/j", deep, b"application/json") + form_post(b"/k", b"{not json", b"application/json")),
        (S, resp(b"1") + resp(b"2")),
    ], config=Config(limits=Limits(max_nesting=100)))
    assert anomalies(recs) == ["http_json_too_deep", "http_json_invalid"]


# -- detection --------------------------------------------------------------------------

@pytest.mark.parametrize("client,server,expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", True),
    (b"POST /upload HTTP/1.0\r\n", b"", True),
    (b"GET /", b"", True),
    (b"CONNECT host:443 HTTP/1.1\r\n", b"", True),
    (b"PROPFIND /dav HTTP/1.1\r\n", b"", True),
    (b"GET /ancient\r\n", b"", True),
    (b"", b"HTTP/1.1 200 OK\r\n", True),
    (b"", b"220 mx.example ESMTP\r\n", False),
    (b"EHLO client\r\n", b"220 mx ESMTP\r\n", False),
    (b"a1 LOGIN user pass\r\n", b"", False),
    (b"USER bob\r\n", b"", False),
    (b"GETX / HTTP/1.1\r\n", b"", False),
    (b"\x16\x03\x01\x02\x00", b"", False),
    (b"", b"", False),
])
def test_looks_like_http(client, server, expected):
    assert looks_like_http(client, server) is expected


def test_never_raises_on_close_in_any_state():
    stream = (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Type: multipart/form-data; "
              b"boundary=" + BOUNDARY + b"\r\n\r\n" + b"%x\r\n" % len(FORM) + FORM + b"\r\n0\r\n\r\n")
    for cut in range(0, len(stream), 5):
        d = HttpDissector(new_session("http"), Config())
        out = d.feed(C, stream[:cut], 0.0) + d.close(1.0, "fin")
        assert len(http(out)) == (1 if cut > stream.index(b"\r\n") else 0), cut


def test_feed_helper_roundtrip_with_strict_off():
    out = feed(HttpDissector(new_session("http"), Config()), [(C, b"GET / HTTP/1.1\r\n\r\n"), (S, resp(b"x"))])
    assert len(http(out)) == 1


def test_exchange_layer_without_http1_framing():
    """What an HTTP/2 front end does: heads and DATA frames in, the same records out."""
    from maildissect.model import Message
    from maildissect.protocols.http import Exchange, ExchangeProcessor, Headers, HttpMessage
    sess = new_session("http")
    made = []
    proc = ExchangeProcessor(sess, Config(), lambda ts, side, name, detail="": made.append(name))
    req = HttpMessage(True, 5.0, method="POST", uri="/upload", version="HTTP/2",
                      headers=Headers([("host", "webmail.example"), ("content-type", "multipart/form-data; boundary=" + BOUNDARY.decode()),
                                       ("user-agent", "h2-client")]))
    req.body = proc.new_body(req)
    for i in range(0, len(FORM), 1000):  # DATA frames
        req.body.write(FORM[i:i + 1000])
    req.body.finish()
    resp = HttpMessage(False, 6.0, version="HTTP/2", status=200,
                       headers=Headers([("content-type", "application/json"), ("content-encoding", "gzip")]))
    resp.body = proc.new_body(resp, req)
    resp.body.write(gzip.compress(b'{"ok": true}'))
    resp.body.finish()
    ex = Exchange(req, Config().limits)
    ex.response = resp
    recs = proc.complete(ex)
    (h,) = http(recs)
    assert (h.method, h.uri, h.version, h.host, h.status, h.latency, h.response_size) == \
        ("POST", "/upload", "HTTP/2", "webmail.example", 200, 1.0, 12)
    assert [f.filename for f in h.files] == ["a.bin", "naïve.txt"]
    assert sess.client_software == "h2-client" and not made and not of_type(recs, Message)
