"""Property tests: generated HTTP/1.1 conversations, valid and mutated.

Valid conversations must parse to exactly their requests, whatever the
segmentation; mutated ones (flipped, inserted, deleted bytes, gaps, cuts) must
never raise and must stay within the configured limits (the approach of
mitmproxy's HTTP fuzz tests).
"""

from __future__ import annotations

import gzip
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maildissect.anomalies import registry
from maildissect.config import Config, Limits
from maildissect.model import Anomaly, Command, Credential, HttpRequest, MailboxEvent, Message
from maildissect.protocols.http import HttpDissector, _WAIT
from tests.helpers import C, S, new_session

LIMITS = Limits(max_line=256, max_http_header_bytes=1024, max_http_body=2048, max_decompressed=4096,
                max_pending_commands=8, max_headers=40, max_nesting=20)
CONFIG = Config(limits=LIMITS)
KNOWN = set(registry())  # message bodies met in HTTP also bring MIME anomalies
RECORDS = (Anomaly, Command, Credential, HttpRequest, MailboxEvent, Message)

tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip)
bodies = st.binary(max_size=600)


@st.composite
def exchange(draw):
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS"]))
    uri = "/" + draw(tokens) + draw(st.sampled_from(["", "?a=1&b=2", "?_task=mail&_action=list"]))
    headers = [(draw(tokens), draw(values)) for _ in range(draw(st.integers(0, 4)))]
    body = draw(bodies) if method in ("POST", "PUT") else b""
    req_framing = draw(st.sampled_from(["length", "chunked"])) if body else "none"
    ctype = draw(st.sampled_from([b"application/x-www-form-urlencoded", b"application/json", b"text/plain",
                                  b"multipart/form-data; boundary=zz", b"message/rfc822"]))
    status = draw(st.sampled_from([200, 201, 204, 301, 304, 401, 404, 500]))
    resp_body = b"" if status in (204, 304) or method == "HEAD" else draw(bodies)
    resp_framing = draw(st.sampled_from(["length", "chunked"]))
    encoding = draw(st.sampled_from([None, "gzip"]))
    return method, uri, headers, body, req_framing, ctype, status, resp_body, resp_framing, encoding


def chunked(body: bytes, rng: random.Random) -> bytes:
    out, i = b"", 0
    while i < len(body):
        n = rng.randint(1, 200)
        out += b"%x\r\n" % len(body[i:i + n]) + body[i:i + n] + b"\r\n"
        i += n
    return out + b"0\r\n\r\n"


def render(ex, rng: random.Random):
    method, uri, headers, body, req_framing, ctype, status, resp_body, resp_framing, encoding = ex
    head = f"{method} {uri} HTTP/1.1\r\nHost: fuzz.example\r\n".encode()
    for k, v in headers:
        head += f"X-{k}: {v}\r\n".encode()
    if body:
        head += b"Content-Type: " + ctype + b"\r\n"
        if req_framing == "length":
            req = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        else:
            req = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, rng)
    else:
        req = head + b"\r\n"
    wire = gzip.compress(resp_body, mtime=0) if encoding and resp_body else resp_body
    rhead = b"HTTP/1.1 %d Reason\r\nContent-Type: application/octet-stream\r\n" % status
    if encoding and resp_body:
        rhead += b"Content-Encoding: gzip\r\n"
    if status in (204, 304) or method == "HEAD":
        resp = rhead + (b"Content-Length: 10\r\n" if method == "HEAD" else b"") + b"\r\n"
    elif resp_framing == "length":
        resp = rhead + b"Content-Length: %d\r\n\r\n" % len(wire) + wire
    else:
        resp = rhead + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(wire, rng)
    return req, resp


def transcript(exchanges, seed: int, pipelined: bool):
    rng = random.Random(seed)
    pairs = [render(ex, rng) for ex in exchanges]
    if pipelined:
        return [(C, b"".join(r for r, _ in pairs)), (S, b"".join(s for _, s in pairs))]
    items = []
    for r, s in pairs:
        items += [(C, r), (S, s)]
    return items


def feed_checked(transcript, seed: int, config=CONFIG):
    """Feed in random chunks; check invariants after every step; return the records."""
    rng = random.Random(seed)
    d = HttpDissector(new_session("http"), config)
    out = []
    for i, item in enumerate(transcript):
        if len(item) == 3:
            out += d.gap(item[0], item[2], float(i))
            continue
        side, data = item
        pos = 0
        while pos < len(data):
            n = rng.randint(1, 300)
            chunk = data[pos:pos + n]
            pos += n
            out += d.feed(side, chunk, float(i))
            check_bounds(d, config.limits, len(chunk))
    out += d.close(float(len(transcript)), "fin")
    for r in out:
        assert isinstance(r, RECORDS)
        if isinstance(r, Anomaly):
            assert r.name in KNOWN, r.name
            assert r.name != "http_internal_error", r.detail
        if isinstance(r, HttpRequest):
            assert r.response_size <= max(config.limits.max_decompressed, 1 << 20) or r.response_md5
    return out


def check_bounds(d: HttpDissector, limits: Limits, last: int) -> None:
    for st_ in (d._c, d._s):
        bound = (limits.max_http_header_bytes if st_.state == _WAIT else limits.max_line) + last + 16
        assert len(st_.buf) <= max(bound, ContentStep), (st_.side, st_.state, len(st_.buf))
        msg = st_.msg
        if msg is not None and msg.body is not None:
            body = msg.body
            if body.data is not None:
                assert len(body.data) <= limits.max_http_body
            if body.decoder is not None:
                assert body.decoder.produced <= limits.max_decompressed
                assert len(body.decoder._pending) < body.decoder.STEP
    assert len(d._order) <= limits.max_pending_commands


ContentStep = 0  # no extra allowance: the line buffer never holds body bytes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(exchange(), min_size=1, max_size=5), st.integers(0, 2 ** 16), st.booleans())
def test_valid_conversations_parse_exactly(exchanges, seed, pipelined):
    t = transcript(exchanges, seed, pipelined)
    whole = []
    d = HttpDissector(new_session("http"), CONFIG)
    for i, (side, data) in enumerate(t):
        whole += d.feed(side, data, float(i))
    whole += d.close(float(len(t)), "fin")
    chunked_out = feed_checked(t, seed)
    key = [(h.method, h.uri, h.status, h.request_size, h.response_size, h.request_sha256, h.response_sha256)
           for h in whole if isinstance(h, HttpRequest)]
    assert key == [(h.method, h.uri, h.status, h.request_size, h.response_size, h.request_sha256,
                    h.response_sha256) for h in chunked_out if isinstance(h, HttpRequest)]
    assert [(m, u, s) for m, u, s, *_ in key] == [(e[0], e[1], e[6]) for e in exchanges]
    for (method, uri, _, body, *_rest), h in zip(exchanges, [r for r in whole if isinstance(r, HttpRequest)]):
        assert h.request_size == len(body)
        resp_body = _rest[3]
        assert h.response_size == len(resp_body)
    names = [a.name for a in whole if isinstance(a, Anomaly) and not a.name.startswith("mime_")]
    assert set(names) <= {"http_multipart_bad", "http_multipart_unterminated", "http_json_invalid",
                          "http_body_too_large", "http_json_too_deep", "http_form_too_many_fields",
                          "text_charset_error", "text_invalid_unicode"}  # random bytes in forms and JSON


@st.composite
def mutated(draw):
    exchanges = draw(st.lists(exchange(), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2 ** 16))
    t = transcript(exchanges, seed, draw(st.booleans()))
    out = []
    for side, data in t:
        data = bytearray(data)
        for _ in range(draw(st.integers(0, 4))):
            op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "gap", "crlf"]))
            if not data:
                break
            at = draw(st.integers(0, len(data) - 1))
            if op == "flip":
                data[at] ^= draw(st.integers(1, 255))
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=40))
            elif op == "delete":
                del data[at:at + draw(st.integers(1, 40))]
            elif op == "crlf":
                data[at:at] = b"\r\n"
            elif op == "cut":
                del data[at:]
            elif op == "gap":
                n = draw(st.integers(1, 300))
                out.append((side, bytes(data[:at])))
                out.append((side, "gap", n))
                data = data[at + n:]
        out.append((side, bytes(data)))
    return out, seed


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_conversations_never_raise(case):
    t, seed = case
    chunked_out = feed_checked(t, seed)
    # and even broken input gives the same records however it is segmented
    d = HttpDissector(new_session("http"), CONFIG)
    whole = []
    for i, item in enumerate(t):
        whole += d.gap(item[0], item[2], float(i)) if len(item) == 3 else d.feed(item[0], item[1], float(i))
    whole += d.close(float(len(t)), "fin")
    assert whole == chunked_out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([C, S]), st.binary(max_size=300)), max_size=8), st.integers(0, 99))
def test_random_bytes_never_raise(items, seed):
    feed_checked(items, seed)
