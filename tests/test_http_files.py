"""Files carried over HTTP: uploads, downloads and webmail downloads in the files table,
Zeek's files.log and extract, checked against ground truth recorded with real tools."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os

import pandas as pd
import pytest

import maildissect
from maildissect.output import zeek
from tests.pcaps import conversation, write_pcap
from tests.test_journeys import cli_run

HERE = os.path.dirname(os.path.abspath(__file__))
HTTP_FILES = os.path.join(HERE, "captures", "http_files")
PCAP = os.path.join(HTTP_FILES, "http-files.pcap")
MANIFEST = json.load(open(os.path.join(HTTP_FILES, "manifest.json"), encoding="utf-8"))
ROUNDCUBE = os.path.join(HERE, "captures", "roundcube")
ZEEK = os.path.join(HERE, "captures", "zeek")


def _value(x):
    return None if pd.isna(x) else x


@pytest.fixture(scope="module")
def curl():
    return maildissect.analyze(PCAP)


def test_curl_uploads_and_downloads_are_files(curl):
    """`curl -F`, a Content-Disposition download, a plain binary download, a request body named by
    its Content-Disposition and a `curl -T` PUT: each a row with the hashes of the bytes sent."""
    files = curl.files
    want = MANIFEST["files"]
    assert len(files) == len(want)
    for w, row in zip(want, files.itertuples()):
        where = w["uri"]
        assert (row.source, row.protocol, row.direction, row.method, row.uri) == (
            "http", "http", w["direction"], w["method"], w["uri"]), where
        assert (row.host, row.server_ip, row.server_port, row.client_ip) == (
            "127.0.0.61:8061", "127.0.0.61", 8061, "127.0.0.62"), where
        assert (_value(row.filename), _value(row.content_type)) == (w["filename"], w["content_type"]), where
        assert (row.size, row.md5, row.sha1, row.sha256) == (w["size"], w["md5"], w["sha1"], w["sha256"]), where
        assert row.complete and row.status in (200, 201), where
    # pages, data and code are not files: the directory page, the script, the style sheet, the JSON answers
    assert not {x["uri"] for x in MANIFEST["not_files"]} - {"/upload", "/api/media"} & set(files["uri"])
    assert list(files[files["uri"] == "/upload"]["direction"]) == ["uploaded"]
    # the http table says the same of the response bodies
    big = curl.http[curl.http["uri"] == "/static/big.bin"].iloc[0]
    assert big["response_sha256"] == want[-1]["sha256"] and big["response_md5"] == want[-1]["md5"]


def test_curl_files_in_zeek_files_log(curl, tmp_path):
    rows = zeek.files_rows(curl.records)
    assert [(r["source"], r["is_orig"], r["seen_bytes"], r["sha1"]) for r in rows] == [
        ("HTTP", w["direction"] == "uploaded", w["size"], w["sha1"]) for w in MANIFEST["files"]]
    conn = {r["uid"] for r in zeek.conn_rows(curl.records)}
    assert {r["uid"] for r in rows} <= conn and len({r["fuid"] for r in rows}) == len(rows)


def test_curl_files_are_extracted(tmp_path):
    out = tmp_path / "x"
    code, _, err = cli_run(["extract", PCAP, "-o", str(out), "-q"])
    assert code == 0, err
    rows = [r for r in csv.DictReader(open(out / "index.csv", encoding="utf-8"))]
    assert [r["kind"] for r in rows] == ["http"] * len(MANIFEST["files"])
    for w, r in zip(MANIFEST["files"], rows):
        data = (out / r["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (w["size"], w["sha256"]), w["uri"]
        assert (r["md5"], r["sha1"], r["method"], r["uri"], r["source"]) == (
            w["md5"], w["sha1"], w["method"], w["uri"], "http")
    assert [r["path"] for r in rows] == ["files/logo.png", "files/Résumé Q3.pdf", "files/upload.bin",
                                        "files/photo.jpg", "files/notes.txt", "files/big.bin"]
    # a limit on what is kept: the big download is hashed whole but not written
    small = tmp_path / "small"
    code, _, err = cli_run(["extract", PCAP, "-o", str(small), "-q", "--limit", "max_extract_size=100K"])
    assert code == 0, err
    rows = {r["uri"]: r for r in csv.DictReader(open(small / "index.csv", encoding="utf-8"))}
    big = rows["/static/big.bin"]
    assert big["path"] == "" and "max_extract_size" in big["note"]
    assert big["sha256"] == MANIFEST["files"][-1]["sha256"] and not (small / "files" / "big.bin").exists()
    assert (small / "files" / "upload.bin").is_file()


def test_files_command_finds_an_upload_by_hash():
    upload = MANIFEST["files"][2]
    code, out, err = cli_run(["files", PCAP, "--hash", upload["sha1"][:10], "-q", "-f", "jsonl"])
    assert code == 0, err
    (row,) = [json.loads(x) for x in out.splitlines()]
    assert (row["method"], row["uri"], row["filename"], row["direction"], row["client_ip"]) == (
        "POST", "/upload", "upload.bin", "uploaded", "127.0.0.62")


def test_zeek_http_traces_files_match_zeeks_md5():
    """Zeek's baselines: the md5 of the two PNG bodies of pipelined-requests (http-mime-and-md5) and
    the form file of multipart-form-data."""
    expected = json.load(open(os.path.join(ZEEK, "expected.json")))["captures"]
    a = maildissect.analyze(os.path.join(ZEEK, "http-pipelined-requests.pcap"))
    md5 = {x["fields"]["uri"]["value"]: x["fields"]["response_md5"]["value"]
           for x in expected["http-pipelined-requests"]["http"] if "response_md5" in x["fields"]}
    got = dict(zip(a.files["uri"], a.files["md5"]))
    assert md5 and all(got[uri] == value for uri, value in md5.items())
    assert "/style/enhanced.css" not in got and "/script/urchin.js" not in got  # style and script
    b = maildissect.analyze(os.path.join(ZEEK, "http-multipart-form-data.pcap"))
    want = expected["http-multipart-form-data"]["http"][0]["files"][0]
    assert list(zip(b.files["filename"], b.files["content_type"], b.files["direction"])) == [
        (want["filename"]["value"], want["mime_type"]["value"], "uploaded")]


# -- built exchanges: codings, chunking, gaps -------------------------------------------------------

BLOB = bytes((i * 31 + 7) % 251 for i in range(70000))


def _exchange(response_head: bytes, body: bytes, request=b"GET /data/blob.bin HTTP/1.1\r\nHost: files.test\r\n\r\n"):
    return [("c", request), ("s", response_head + body)]


def _analyze(tmp_path, exchanges, name="x.pcap", **kw):
    frames, _, _ = conversation(server=("10.0.0.2", 80), exchanges=exchanges, **kw)
    path = tmp_path / name
    write_pcap(path, frames)
    return maildissect.analyze(str(path))


def _chunked(data: bytes, size: int = 5000) -> bytes:
    return b"".join(b"%x\r\n" % len(data[i:i + size]) + data[i:i + size] + b"\r\n"
                    for i in range(0, len(data), size)) + b"0\r\n\r\n"


def test_gzip_chunked_download_is_hashed_over_the_decoded_bytes(tmp_path):
    packed = gzip.compress(BLOB, mtime=0)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Encoding: gzip\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    whole = _analyze(tmp_path, _exchange(head, _chunked(packed)))
    (row,) = whole.files.itertuples()
    assert (row.size, row.sha256, row.encoding, row.complete) == (len(BLOB), hashlib.sha256(BLOB).hexdigest(),
                                                                  "gzip", True)
    # the same whatever the segmentation
    small = _analyze(tmp_path, _exchange(head, _chunked(packed)), "small.pcap", mss=97)
    assert list(small.files["sha256"]) == [row.sha256]


def test_a_gap_leaves_a_download_incomplete_without_hashes(tmp_path):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: %d\r\n\r\n" % len(BLOB)
    frames, _, _ = conversation(server=("10.0.0.2", 80), exchanges=_exchange(head, BLOB), mss=1000)
    # drop one server segment from the middle of the body
    mid = [i for i, (_, f) in enumerate(frames) if len(f) > 1000][30]
    path = tmp_path / "gap.pcap"
    write_pcap(path, frames[:mid] + frames[mid + 1:])
    a = maildissect.analyze(str(path))
    (row,) = a.files.itertuples()
    assert (row.size, row.complete, row.sha256) == (len(BLOB) - 1000, False, "")


def test_json_html_and_unnamed_request_bodies_are_not_files(tmp_path):
    exchanges = []
    for ctype, body in ((b"application/json", b'{"a": 1}'), (b"text/html; charset=utf-8", b"<p>hi</p>"),
                        (b"application/vnd.api+json", b"{}"), (b"text/css", b"p{}")):
        exchanges += [("c", b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"),
                      ("s", b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n"
                       % len(body) + body)]
    exchanges += [("c", b"POST /api HTTP/1.1\r\nHost: h\r\nContent-Type: image/png\r\nContent-Length: 4\r\n\r\n"
                        b"\x89PNG"), ("s", b"HTTP/1.1 204 No Content\r\n\r\n")]
    a = _analyze(tmp_path, exchanges)
    assert len(a.files) == 0 and len(a.http) == 5


# -- webmail downloads linked to their message ------------------------------------------------------

def test_roundcube_downloads_are_files_of_their_messages():
    manifest = json.load(open(os.path.join(ROUNDCUBE, "manifest.json"), encoding="utf-8"))
    a = maildissect.analyze(os.path.join(ROUNDCUBE, "roundcube.pcap"))
    files = a.files
    for d in manifest["downloads"]:
        rows = files[(files["sha256"] == d["sha256"]) & (files["uri"] == d["uri"])]
        assert len(rows) == 1, d["uri"]  # listed once: with its message (or, for the .eml, as a file)
        row = rows.iloc[0]
        assert (row["mailbox"], row["uid"], row["message_id"]) == (d["mailbox"], d["uid"],
                                                                  d["message"]["message_id"]), d["uri"]
        assert row["direction"] == "downloaded" and row["method"] == "GET"
        if d["kind"] == "attachment":
            assert (row["source"], row["part"], row["filename"], row["is_attachment"]) == (
                "message", d["part"], d["filename"], True)
        else:  # viewsource&_save=1: the whole message, a file of its own beside the entities read from it
            assert row["source"] == "http" and row["filename"].endswith(".eml") and row["size"] == d["size"]
    # attachments a page only names are listed (the attachments table keeps them) without bytes
    named = files[(files["direction"] == "retrieved") & (files["protocol"] == "http")]
    assert len(named) and not named["complete"].any() and (named["size"] == 0).all()
    # downloads appear in the attachments table and in the journeys of their messages
    att = a.attachments
    for d in (x for x in manifest["downloads"] if x["kind"] == "attachment"):
        assert d["sha256"] in set(att["sha256"])
        hops = a.hops[a.hops["message_id"] == d["message"]["message_id"]]
        assert "downloaded" in set(hops["direction"]), d["uri"]


def test_roundcube_downloads_are_extracted_with_their_message(tmp_path):
    out = tmp_path / "rc"
    code, _, err = cli_run(["extract", os.path.join(ROUNDCUBE, "roundcube.pcap"), "-o", str(out), "-q"])
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "index.csv", encoding="utf-8")))
    got = [r for r in rows if r["kind"] == "attachment" and r["direction"] == "downloaded"]
    assert {(r["filename"], r["mailbox"], r["uid"], r["part"]) for r in got} >= {
        ("figures-q3.csv", "INBOX", "1", "2"), ("Übersicht.txt", "INBOX", "2", "3"), ("budget.csv", "INBOX", "3", "3")}
    for r in got:
        assert r["message_id"] and hashlib.sha256((out / r["path"]).read_bytes()).hexdigest() == r["sha256"]
    eml = [r for r in rows if r["kind"] == "http"]
    assert [r["filename"] for r in eml] == ["Project plan \u2014 draft 2.eml"] and eml[0]["message_id"]
