"""Text is always writable: hostile text by every decoding route, end to end.

One small capture (built here with scapy) carries text crafted to become a
lone surrogate, or to pick a Python codec that is not a character set, by
each route a decoder takes: RFC 2047 words (utf-7, unicode_escape) in Subject
and in From/To display names, RFC 2231 file names, a text part in
unicode_escape, raw 8-bit header bytes, IMAP mailbox names in broken modified
UTF-7 and ENVELOPE words, SASL user names, URL queries and forms with
%ED%A0%80, multipart file names, and JMAP JSON with ``\\ud800`` escapes. Every
string of every record must encode as UTF-8, each repair must be an anomaly,
and every command of the command line must end normally, writing through
strict UTF-8 streams, on that capture.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from maildissect import analyze
from maildissect.config import Config
from maildissect.model import Anomaly, Command
from maildissect.pipeline import Pipeline
from tests.pcaps import conversation, write_pcap

ROOT = Path(__file__).resolve().parent.parent


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


MESSAGE = crlf("""\
From: =?utf-7?q?Eve+2D0-?= <eve@example.org>
To: =?unicode_escape?q?Bob\\ud800?= <bob@example.org>, =?utf-7?b?KzJEMC0=?= <carol@example.org>
Subject: =?utf-7?q?hi+2D0-there?=
Message-ID: <hostile-1@example.org>
Date: Mon, 1 Jan 2024 12:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain; charset=unicode_escape

body \\ud800 text
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename*=unicode_escape''a%5Cud800.txt

x
--b
Content-Type: application/octet-stream; name*=utf-7''%2B2D0-.bin

y
--b--
""")
RAW_8BIT = b"From: Mallory <m@example.org>\r\nSubject: it\x92s \x93quoted\x94\r\nMessage-ID: <hostile-2@example.org>\r\n\r\nhi\r\n"


def smtp_exchanges():
    plain = base64.b64encode(b"\x00us\xe9r\xed\xa0\x80\x00pw").decode()
    return [
        ("s", b"220 mx.example.org ESMTP\r\n"),
        ("c", b"EHLO cli\xe9nt.example\r\n"), ("s", b"250-mx\r\n250 AUTH PLAIN\r\n"),
        ("c", f"AUTH PLAIN {plain}\r\n".encode()), ("s", b"235 ok\r\n"),
        ("c", b"MAIL FROM:<eve@example.org>\r\n"), ("s", b"250 ok\r\n"),
        ("c", b"RCPT TO:<bob@example.org>\r\n"), ("s", b"250 ok\r\n"),
        ("c", b"DATA\r\n"), ("s", b"354 go\r\n"),
        ("c", MESSAGE + b".\r\n"), ("s", b"250 queued as Q1\r\n"),
        ("c", b"MAIL FROM:<m@example.org>\r\n"), ("s", b"250 ok\r\n"),
        ("c", b"RCPT TO:<bob@example.org>\r\n"), ("s", b"250 ok\r\n"),
        ("c", b"DATA\r\n"), ("s", b"354 go\r\n"),
        ("c", RAW_8BIT + b".\r\n"), ("s", b"250 queued as Q2\r\n"),
        ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n"),
    ]


def imap_exchanges():
    envelope = (b'("Mon, 1 Jan 2024 12:00:00 +0000" "=?utf-7?q?x+2D0-?= it\x92s" '
                b'(("=?unicode_escape?q?C\\\\ud800?=" NIL "carol" "example.net")) NIL NIL '
                b'((NIL NIL "bob" "example.com")) NIL NIL NIL "<hostile-3@example.net>")')
    return [
        ("s", b"* OK IMAP ready\r\n"),
        ("c", b'a1 LOGIN "us\xe9r" "pw"\r\n'), ("s", b"a1 OK logged in\r\n"),
        ("c", b'a2 LIST "" "*"\r\n'),
        ("s", b'* LIST () "/" "&2AA-"\r\n* LIST () "/" "&2D3YPQ-x"\r\n* LIST () "/" "bad&zz"\r\n'
              b'* LIST () "/" "Entw&APw-rfe"\r\n* LIST () "/" "&*&-"\r\na2 OK\r\n'),
        ("c", b"a3 SELECT &2AA-\r\n"), ("s", b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\na3 OK [READ-WRITE] selected\r\n"),
        ("c", b"a4 FETCH 1 (ENVELOPE)\r\n"),
        ("s", b"* 1 FETCH (ENVELOPE " + envelope + b")\r\na4 OK\r\n"),
        ("c", b"a5 FETCH 1 (BODY[])\r\n"),
        ("s", b"* 1 FETCH (BODY[] {%d}\r\n" % len(MESSAGE) + MESSAGE + b")\r\na5 OK\r\n"),
        ("c", b"a6 LOGOUT\r\n"), ("s", b"* BYE\r\na6 OK\r\n"),
    ]


def pop3_exchanges():
    return [
        ("s", b"+OK POP3 ready\r\n"),
        ("c", b"USER us\xe9r\xed\xa0\x80\r\n"), ("s", b"+OK\r\n"),
        ("c", b"PASS pw\r\n"), ("s", b"+OK logged in\r\n"),
        ("c", b"RETR 1\r\n"), ("s", b"+OK\r\n" + RAW_8BIT + b".\r\n"),
        ("c", b"QUIT\r\n"), ("s", b"+OK bye\r\n"),
    ]


def http_request(method: bytes, path: bytes, body: bytes = b"", ctype: bytes | None = None,
                 extra: bytes = b"") -> bytes:
    head = method + b" " + path + b" HTTP/1.1\r\nHost: webmail.example.org\r\n" + extra
    if ctype is not None:
        head += b"Content-Type: " + ctype + b"\r\n"
    if method == b"POST":
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def http_response(body: bytes = b"", ctype: bytes = b"text/html", status: bytes = b"200 OK",
                  extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def jmap(calls) -> bytes:
    # json.dumps writes the lone surrogates of these strings as \ud800 escapes
    return json.dumps({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
                       "methodCalls": calls}).encode()


def http_exchanges():
    auth = b"Authorization: Basic " + base64.b64encode(b"al\xe9ce:pw") + b"\r\n"
    session = {"capabilities": {"urn:ietf:params:jmap:core": {}, "urn:ietf:params:jmap:mail": {}},
               "accounts": {"A\ud800": {"name": "al\ud800ce@example.org"}}, "username": "al\ud800ce",
               "primaryAccounts": {"urn:ietf:params:jmap:mail": "A\ud800"},
               "apiUrl": "http://webmail.example.org/jmap/api/", "state": "s1"}
    create = {"k1": {"from": [{"name": "Eve\ud800", "email": "eve@example.org"}],
                     "to": [{"name": "B\udc00b", "email": "bob@example.net"}],
                     "subject": "hi \ud83d there", "bodyValues": {"t": {"value": "text \udfff"}},
                     "textBody": [{"partId": "t", "type": "text/plain"}],
                     "attachments": [{"blobId": "G1", "type": "application/pdf", "name": "r\ud800.pdf"}]}}
    mailboxes = {"methodResponses": [["Mailbox/get", {"accountId": "A", "list": [
        {"id": "m1", "name": "In\ud800box", "role": "inbox", "totalEmails": 1}]}, "0"]], "sessionState": "s1"}
    form_parts = (b"--fb\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nbob@example.net\r\n"
                  b"--fb\r\nContent-Disposition: form-data; name=\"subject\"\r\n\r\nsub\xed\xa0\x80ject\r\n"
                  b"--fb\r\nContent-Disposition: form-data; name=\"attachment\"; filename*=utf-7''%2B2D0-.pdf\r\n"
                  b"Content-Type: application/pdf\r\n\r\n%PDF-1.4\r\n--fb--\r\n")
    return [
        ("c", http_request(b"POST", b"/login", b"user=%ED%A0%80al&pass=p%ED%A0%80w",
                           b"application/x-www-form-urlencoded")),
        ("s", http_response(b"", status=b"302 Found", extra=b"Location: /mail\r\nSet-Cookie: s=1\r\n")),
        ("c", http_request(b"GET", b"/mail/search?q=%ED%A0%80&folder=In%C0box")),
        ("s", http_response(b"<ul></ul>")),
        ("c", http_request(b"GET", b"/jmap/session", extra=auth)),
        ("s", http_response(json.dumps(session).encode(), b"application/json")),
        ("c", http_request(b"POST", b"/jmap/api/", jmap([["Mailbox/get", {"accountId": "A"}, "0"]]),
                           b"application/json", auth)),
        ("s", http_response(json.dumps(mailboxes).encode(), b"application/json")),
        ("c", http_request(b"POST", b"/jmap/api/", jmap([["Email/set", {"accountId": "A", "create": create}, "0"]]),
                           b"application/json", auth)),
        ("s", http_response(json.dumps({"methodResponses": [["Email/set", {"created": {"k1": {"id": "M\ud800"}}},
                                                                              "0"]]}).encode(), b"application/json")),
        ("c", http_request(b"POST", b"/compose/send", form_parts, b"multipart/form-data; boundary=fb")),
        ("s", http_response(b"", status=b"303 See Other", extra=b"Location: /sent\r\n")),
        ("c", http_request(b"GET", b"/download/1")),
        ("s", http_response(b"x", b"application/octet-stream",
                            extra=b"Content-Disposition: attachment; filename*=raw_unicode_escape''d%5Cudfff.bin\r\n")),
    ]


def build(path: Path) -> Path:
    frames = []
    for i, (port, exchanges) in enumerate([(25, smtp_exchanges()), (143, imap_exchanges()),
                                           (110, pop3_exchanges()), (80, http_exchanges())]):
        f, _, _ = conversation(client=("10.0.0.1", 40000 + i), server=("10.0.0.2", port),
                               exchanges=exchanges, t0=1_700_000_000.0 + 10 * i)
        frames += f
    write_pcap(path, sorted(frames, key=lambda fr: fr[0]))
    return path


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return build(tmp_path_factory.mktemp("writable") / "hostile-text.pcap")


def strings(value, path="record"):
    """Every string inside a record (fields, list elements, tuples, nested records)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item, path)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k, path)
            yield from strings(v, f"{path}.{k}")
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from strings(getattr(value, f.name), f"{path}.{f.name}")


def test_every_string_of_every_record_encodes_as_utf8(capture):
    a = analyze([str(capture)])
    rec = a.records
    tables = {name: getattr(rec, name) for name in ("flows", "sessions", "commands", "messages", "credentials",
                                                      "anomalies", "http", "mailboxes")}
    assert {s.protocol for s in tables["sessions"]} == {"smtp", "imap", "pop3", "http"}
    count = 0
    for name, records in tables.items():
        for r in records:
            for where, s in strings(r, name):
                count += 1
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError:
                    pytest.fail(f"{where} is not writable: {s!a}")
    assert count > 500
    msgs = {m.message_id: m for m in tables["messages"] if m.protocol == "smtp"}
    hostile = msgs["<hostile-1@example.org>"]
    assert hostile.subject == "hi+2D0-there" and hostile.from_ == "Eve+2D0- <eve@example.org>"
    assert hostile.to == ['"Bob\\\\ud800" <bob@example.org>', "+2D0- <carol@example.org>"]  # quoted: a special
    assert [x.filename for x in hostile.attachments] == ["a\\ud800.txt", "+2D0-.bin"]
    assert msgs["<hostile-2@example.org>"].subject == "it\u2019s \u201cquoted\u201d"  # windows-1252, as readers show it
    smtp = next(s for s in tables["sessions"] if s.protocol == "smtp")
    assert smtp.helo == "cli\u00e9nt.example"
    names = {(an.name, an.session_id) for an in tables["anomalies"]}
    by_proto = {s.session_id: s.protocol for s in tables["sessions"]}
    found = {(n, by_proto.get(sid)) for n, sid in names}
    for expected in [("mime_unknown_charset", "smtp"), ("mime_header_not_utf8", "smtp"),
                     ("mime_unknown_charset", "imap"), ("mime_header_not_utf8", "pop3"),
                     ("text_invalid_unicode", "http"), ("text_charset_error", "http"),
                     ("text_unknown_charset", "http")]:
        assert expected in found, expected
    details = " | ".join(an.detail for an in tables["anomalies"] if an.name == "text_invalid_unicode")
    assert "$.methodCalls[0][1].create.k1.subject" in details  # the field is named
    boxes = [e.mailbox for e in tables["mailboxes"] if e.protocol == "imap" and e.mailbox]
    assert "&2AA-" in boxes and "Entwürfe" in boxes  # broken modified UTF-7 is kept as written
    # SASL, USER and Basic names: the 8-bit rule; form fields: UTF-8 with replacement, as WHATWG reads forms
    users = {(c.protocol, c.user) for c in tables["credentials"]}
    assert users == {("smtp", "us\u00e9r\u00ed\xa0\u20ac"), ("imap", "us\u00e9r"), ("pop3", "us\u00e9r\u00ed\xa0\u20ac"),
                     ("http", "\ufffd\ufffd\ufffdal"), ("http", "al\u00e9ce")}


def test_the_last_check_repairs_and_names_the_field():
    """A record that still holds a lone surrogate (a decoder bug) is repaired where it is kept."""
    pipe = Pipeline(Config())
    from maildissect.model import Session
    sess = Session(7, "smtp", start=1.0)
    pipe.emit(sess, [Command(7, "smtp", 2.0, "HELO", "h\ud800st"), Anomaly(2.0, 7, "client", "x_y", "d\udfff")])
    cmd = pipe.collector.commands[0]
    assert cmd.argument == "h\ufffdst"
    repairs = [a for a in pipe.collector.anomalies if a.name == "text_invalid_unicode"]
    assert [(a.session_id, a.detail) for a in repairs] == [(7, "commands.argument"), (7, "anomalies.detail")]
    assert sess.anomalies == 2


# Each command writes through strict UTF-8 streams, as a terminal or a pipe does (io.StringIO,
# which click's test runner uses, would accept lone surrogates and hide the failure).
DRIVER = r"""
import io, json, os, sys, traceback
from maildissect.cli import cli
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.BytesIO(), io.BytesIO()
    sys.stdout = io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True)
    sys.stderr = io.TextIOWrapper(err, encoding="utf-8", errors="strict", write_through=True)
    status, tb = 0, ""
    try:
        cli.main(args, prog_name="maildissect", standalone_mode=True)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        status, tb = -1, traceback.format_exc()
    sys.stdout.flush(); sys.stderr.flush()
    results.append({"args": args, "status": status, "traceback": tb,
                    "stderr": err.getvalue().decode("utf-8", "replace"), "stdout": len(out.getvalue())})
sys.__stdout__.write(json.dumps(results))
"""


def test_every_command_ends_normally(capture, tmp_path):
    cap = str(capture)
    commands = [["analyze", cap], ["messages", cap], ["messages", cap, "-f", "jsonl"],
                ["messages", cap, "-f", "csv"], ["attachments", cap], ["attachments", cap, "-f", "csv"],
                ["sessions", cap], ["commands", cap], ["credentials", cap], ["anomalies", cap], ["http", cap],
                ["mailboxes", cap], ["timeline", cap], ["journeys", cap],
                ["report", cap, "-o", str(tmp_path / "report.html")],
                ["extract", cap, "-o", str(tmp_path / "extract")]]
    for fmt in ("parquet", "csv", "jsonl", "zeek", "zeek-json"):
        commands.append(["export", cap, "-f", fmt, "-o", str(tmp_path / f"export-{fmt}")])
    commands = [c + ["-q", "-j", "1"] for c in commands]
    res = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], capture_output=True, text=True,
                         cwd=ROOT, env={**__import__("os").environ, "COLUMNS": "200"}, timeout=600)
    assert res.returncode == 0, res.stderr
    for r in json.loads(res.stdout):
        assert r["traceback"] == "" and r["status"] == 0 and "internal error" not in r["stderr"], r
        assert r["stdout"] > 0 or "-o" in r["args"], r
    report = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "hi+2D0-there" in report
    index = (tmp_path / "extract" / "index.csv").read_text(encoding="utf-8")
    assert "hostile-1@example.org" in index
