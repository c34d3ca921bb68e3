"""--redact masks every secret in every output; the HTML report masks them by default.

A crafted capture carries one distinct secret per way a secret travels:
SMTP AUTH PLAIN, LOGIN and XOAUTH2, IMAP LOGIN and AUTHENTICATE PLAIN, POP3
PASS, HTTP Basic and Bearer authorization, a webmail login form and a token
in a URL query. Every table in every format, every export format (including
the Zeek logs), the timeline, the journeys, the summary, the live-mode record
printer and the report are searched for each secret, in plain text and in
the base64 form it had on the wire. The bundled lab captures are checked the
same way with the secrets they carry.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from maildissect import analyze
from maildissect.cli import cli
from maildissect.redact import is_secret_name, redact_text
from tests.malformed.packets import Capture, Conversation

ROOT = Path(__file__).resolve().parent.parent
SECRETS = ["Smtp-Plain-Pw1", "Smtp-Login-Pw2", "Smtp-Oauth-Tok3", "Imap-Login-Pw4", "Imap-Plain-Pw5",
           "Pop3-Pass-Pw6", "Http-Basic-Pw7", "Form-Pass-Pw8", "Http-Bearer-Tok9", "Query-Tok10"]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


WIRE_FORMS = [b64(b"\0alice\0Smtp-Plain-Pw1"), b64(b"Smtp-Login-Pw2"),
              b64(b"user=carol\x01auth=Bearer Smtp-Oauth-Tok3\x01\x01"), b64(b"\0frank\0Imap-Plain-Pw5"),
              b64(b"ivan:Http-Basic-Pw7")]


def build(path: Path) -> None:
    cap = Capture()
    Conversation(cap, cport=40001, sport=587).open().dialogue(
        b"220 mx ESMTP\r\n", b"EHLO c\r\n", b"250-mx\r\n250 AUTH PLAIN LOGIN XOAUTH2\r\n",
        b"AUTH PLAIN " + WIRE_FORMS[0] + b"\r\n", b"235 ok\r\n", b"MAIL FROM:<alice@x.org>\r\n", b"250 ok\r\n",
        b"RCPT TO:<bob@y.org>\r\n", b"250 ok\r\n", b"DATA\r\n", b"354 go\r\n",
        b"Subject: hi\r\nMessage-ID: <m1@x.org>\r\n\r\nbody\r\n.\r\n", b"250 ok\r\n").close()
    Conversation(cap, cport=40002, sport=587).open().dialogue(
        b"220 mx ESMTP\r\n", b"EHLO c\r\n", b"250 AUTH LOGIN\r\n", b"AUTH LOGIN\r\n", b"334 VXNlcm5hbWU6\r\n",
        b64(b"bob") + b"\r\n", b"334 UGFzc3dvcmQ6\r\n", WIRE_FORMS[1] + b"\r\n", b"235 ok\r\n",
        b"AUTH XOAUTH2 " + WIRE_FORMS[2] + b"\r\n", b"235 ok\r\n").close()
    Conversation(cap, cport=40003, sport=143).open().dialogue(
        b"* OK ready\r\n", b'a1 LOGIN erin "Imap-Login-Pw4"\r\n', b"a1 OK\r\n",
        b"a2 AUTHENTICATE PLAIN " + WIRE_FORMS[3] + b"\r\n", b"a2 OK\r\n").close()
    Conversation(cap, cport=40004, sport=110).open().dialogue(
        b"+OK ready\r\n", b"USER gina\r\n", b"+OK\r\n", b"PASS Pop3-Pass-Pw6\r\n", b"+OK\r\n", b"QUIT\r\n", b"+OK\r\n"
    ).close()
    web = Conversation(cap, cport=40005, sport=80).open()
    form = b"_user=judy&_pass=Form-Pass-Pw8&_task=login"
    web.client(b"GET /mail/?_task=mail&access_token=Query-Tok10 HTTP/1.1\r\nHost: webmail.x.org\r\n"
               b"Authorization: Basic " + WIRE_FORMS[4] + b"\r\n\r\n")
    web.server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    web.client(b"POST /?_task=login HTTP/1.1\r\nHost: webmail.x.org\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(form) + form)
    web.server(b"HTTP/1.1 302 Found\r\nLocation: /?_task=mail\r\nContent-Length: 0\r\n\r\n")
    web.client(b"POST /jmap/ HTTP/1.1\r\nHost: webmail.x.org\r\nAuthorization: Bearer Http-Bearer-Tok9\r\n"
               b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    web.server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    web.close()
    path.write_bytes(cap.pcap())


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("redact") / "secrets.pcap"
    build(path)
    return path


def run(*args) -> str:
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def leaks(text: str, secrets=SECRETS) -> list[str]:
    found = [s for s in secrets if s in text]
    found += [w.decode() for w in WIRE_FORMS if w.decode() in text]
    return found


def directory_text(directory: Path) -> str:
    parts = []
    for p in sorted(directory.rglob("*")):
        if p.suffix == ".parquet":
            parts.append(pd.read_parquet(p).astype(str).to_csv())
        elif p.is_file():
            parts.append(p.read_text(errors="replace"))
    return "\n".join(parts)


def test_the_capture_carries_every_secret(capture):
    """Without --redact the secrets are there (so the checks below can fail)."""
    creds = run("credentials", capture, "-f", "jsonl", "-q", "-j", "1")
    assert set(leaks(creds)) >= set(SECRETS) - {"Query-Tok10"}
    assert "Query-Tok10" in run("http", capture, "-f", "jsonl", "-q", "-j", "1")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "table"])
def test_every_table_is_masked(capture, tmp_path, fmt):
    from maildissect.cli import TABLE_HELP
    for table in TABLE_HELP:
        out = tmp_path / f"{table}.{fmt}"
        run(table, capture, "--redact", "-q", "-j", "1", "-f", fmt, "-o", out)
        assert not leaks(out.read_text()), (table, fmt)
    assert "********" in (tmp_path / f"credentials.{fmt}").read_text()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "zeek", "zeek-json"])
def test_every_export_is_masked(capture, tmp_path, fmt):
    run("export", capture, "--redact", "-q", "-j", "1", "-f", fmt, "-o", tmp_path / "x")
    text = directory_text(tmp_path / "x")
    assert text and not leaks(text)


def test_timeline_journeys_summary_are_masked(capture):
    for args in (["timeline", "-f", "jsonl"], ["timeline"], ["journeys", "-f", "jsonl"], ["journeys"],
                 ["journeys", "--summary", "-f", "csv"], ["analyze"]):
        assert not leaks(run(args[0], capture, "--redact", "-q", "-j", "1", *args[1:])), args


def test_report_masks_by_default(capture, tmp_path):
    run("report", capture, "-q", "-j", "1", "-o", tmp_path / "r.html")
    assert not leaks((tmp_path / "r.html").read_text())
    run("report", capture, "-q", "-j", "1", "--redact", "--show-secrets", "-o", tmp_path / "r2.html")
    assert not leaks((tmp_path / "r2.html").read_text())  # --redact wins over --show-secrets
    run("report", capture, "-q", "-j", "1", "--show-secrets", "-o", tmp_path / "r3.html")
    assert "Http-Basic-Pw7" in (tmp_path / "r3.html").read_text()  # asked for: shown


def test_api_records_are_masked(capture):
    result = analyze(str(capture), redact=True)
    everything = repr(vars(result.records)) + repr(result.event_records) + repr(result.journey_records.hops)
    assert not leaks(everything)
    assert {c.secret for c in result.records.credentials} == {"********"}


def test_live_printer_masks(capture):
    """live prints records as they complete; with --redact they go through the same masking."""
    from maildissect.output.livelines import record_json as _record_json
    from maildissect.redact import redact_record
    result = analyze(str(capture))
    lines = [_record_json(t, redact_record(r)) for t in ("credentials", "commands", "http")
             for r in getattr(result.records, t)]
    assert not leaks("\n".join(lines))


@pytest.mark.parametrize("capture_name", ["journey.pcap", "webmail.pcap", "imap.pcap", "pop3.pcap"])
def test_bundled_captures(capture_name, tmp_path):
    path = ROOT / "captures" / capture_name
    secrets = {c.secret for c in analyze(str(path)).records.credentials if c.secret and len(c.secret) > 3}
    assert secrets
    run("export", path, "--redact", "-q", "-j", "1", "-f", "jsonl", "-o", tmp_path / "x")
    assert not leaks(directory_text(tmp_path / "x"), secrets)


@pytest.mark.parametrize("text,expected", [
    ("GET /a?access_token=abc&x=1 HTTP/1.1", "GET /a?access_token=******** &x=1 HTTP/1.1".replace(" &", "&")),
    ("/login?user=bob&password=hunter2", "/login?user=bob&password=********"),
    ("/x?PHPSESSID=1;jsessionid=2", "/x?PHPSESSID=********;jsessionid=********"),
    ("/search?q=compass&keyword=pass", "/search?q=compass&keyword=pass"),
    ("/oauth/cb?code=4/0Ab&state=x", "/oauth/cb?code=********&state=x"),
    ("/x?apiKey=", "/x?apiKey="),
    ("no query at all", "no query at all"),
])
def test_redact_text(text, expected):
    assert redact_text(text) == expected


def test_secret_names():
    assert all(map(is_secret_name, ["_pass", "access_token", "apiKey", "X-Auth", "sessid", "refreshToken"]))
    assert not any(map(is_secret_name, ["compass", "keyword", "q", "state", "zipcode", "passage"]))
