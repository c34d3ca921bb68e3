"""Golden tests: Zeek's HTTP traces against the values Zeek's baselines report.

The traces and expected values live in tests/captures/zeek/ (README.md there
gives their provenance). Each capture runs through the whole pipeline
(:func:`maildissect.analyze`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import maildissect
from maildissect.model import HttpRequest

HERE = Path(__file__).parent / "captures" / "zeek"
EXPECTED = json.loads((HERE / "expected.json").read_text())["captures"]
HTTP_CAPTURES = sorted(name for name in EXPECTED if name.startswith("http-"))

# expected.json field name -> HttpRequest attribute
FIELDS = {"method": "method", "uri": "uri", "host": "host", "user_agent": "user_agent", "referer": "referer",
          "request_body_len": "request_size", "response_body_len": "response_size", "status": "status",
          "reason": "reason", "response_md5": "response_md5"}


def analyze(name: str):
    return maildissect.analyze([str(HERE / EXPECTED[name]["file"])])


@pytest.fixture(scope="module", params=HTTP_CAPTURES)
def capture(request):
    return request.param, analyze(request.param)


def test_trace_is_the_one_described(capture):
    name, _ = capture
    entry = EXPECTED[name]
    assert hashlib.sha256((HERE / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]


def test_runs_cleanly_without_http_anomalies(capture):
    _, a = capture
    assert not [x for x in a.records.anomalies if x.name.startswith("http_")]
    assert len(a.records.http) >= 1
    assert all(h.complete for h in a.records.http)


def test_requests_match_zeek_http_log(capture):
    name, a = capture
    want = EXPECTED[name].get("http", [])
    got: list[HttpRequest] = sorted(a.records.http, key=lambda h: h.ts)
    if not want:
        pytest.skip("Zeek reports no per-request values for this trace")
    assert len(got) == len(want)
    for h, entry in zip(got, want):
        hints = entry["hints"]
        sess = next(s for s in a.records.sessions if s.session_id == h.session_id)
        assert (sess.client_ip, sess.client_port, sess.server_ip, sess.server_port) == \
            (hints["client_ip"], hints["client_port"], hints["server_ip"], hints["server_port"])
        for field, spec in entry["fields"].items():
            value = getattr(h, FIELDS[field])
            assert value == spec["value"], (h.uri, field)
        files = entry.get("files", [])
        assert [f.filename for f in h.files] == [x["filename"]["value"] for x in files]
        assert [f.content_type for f in h.files] == [x["mime_type"]["value"] for x in files]


def test_multipart_upload_file_hashes():
    a = analyze("http-multipart-form-data")
    (h,) = a.records.http
    (f,) = h.files
    # the part's bytes, cut out of the request body by hand
    body = b"\n".join(b"%d " % i + b"a" * 70 for i in range(1, 9)) + b"\n"
    assert (f.filename, f.size) == ("test.txt", 584)
    assert f.md5 == hashlib.md5(body).hexdigest() == "c91bb64d0cc7146dd191ab9c39434feb"
    assert f.sha256 == hashlib.sha256(body).hexdigest()
    assert h.status is None and h.user_agent.startswith("Mozilla/5.0 (X11; Linux x86_64)")


def test_gzip_response_decodes_to_json():
    a = analyze("http-get-gzip")
    (h,) = a.records.http
    assert (h.method, h.uri, h.host, h.status, h.response_content_type) == \
        ("GET", "/gzip", "httpbin.org", 200, "application/json")
    # 165 gzip bytes on the wire (Content-Length) decode to httpbin's JSON echo
    assert h.response_size > 165 and h.response_sha256 is not None
    sess = a.records.sessions[0]
    assert (sess.client_software, sess.server_software) == ("curl/7.29.0", "gunicorn/0.16.1")


def test_post_form_and_json_answer():
    a = analyze("http-post")
    (h,) = a.records.http
    assert (h.method, h.uri, h.status, h.request_size, h.request_content_type, h.response_size) == \
        ("POST", "/post", 200, 11, "application/x-www-form-urlencoded", 366)
    assert h.request_sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert not a.records.credentials and not a.records.messages


def test_pipelined_commands_table():
    a = analyze("http-pipelined-requests")
    cmds = a.commands
    assert list(cmds["command"]) == ["GET"] * 5
    assert list(cmds["reply_code"]) == ["200"] * 5
    assert (cmds["latency"] >= 0).all()
    # two of the responses are gzip-encoded with a scrambled "ntCoent-Length" beside the real one
    assert not [x for x in a.records.anomalies if x.name.startswith("http_")]
