"""A port's claim, checked (protocols/claim.py): a session on a mail port that breaks the
port's protocol from its first bytes loses its dissector, and is read as what it is."""

from __future__ import annotations

import collections

import pytest

import maildissect
from tests.pcaps import conversation, write_pcap

REDIS = []
for _ in range(25):
    REDIS += [("c", b"*1\r\n$4\r\nPING\r\n"), ("s", b"+PONG\r\n")]
REDIS += [("c", b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"), ("s", b"+OK\r\n")]

SMTP = [("s", b"220 mx.example ESMTP\r\n"), ("c", b"EHLO client.example\r\n"), ("s", b"250 mx.example\r\n"),
        ("c", b"MAIL FROM:<a@example.org>\r\n"), ("s", b"250 ok\r\n"), ("c", b"RCPT TO:<b@example.net>\r\n"),
        ("s", b"250 ok\r\n"), ("c", b"DATA\r\n"), ("s", b"354 go\r\n"),
        ("c", b"Subject: hi\r\nMessage-ID: <1@example.org>\r\n\r\nhello\r\n.\r\n"), ("s", b"250 queued as X1\r\n"),
        ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]


def analyse(tmp_path, exchanges, port, name="x", **kw):
    opts = {k: kw.pop(k) for k in ("limits",) if k in kw}
    frames, _, _ = conversation(server=("10.0.0.2", port), exchanges=exchanges, **kw)
    path = tmp_path / f"{name}.pcap"
    write_pcap(path, frames)
    return maildissect.analyze(str(path), **opts)


@pytest.mark.parametrize("port", [110, 25, 143, 80])
def test_redis_on_a_mail_port_is_given_up(tmp_path, port):
    a = analyse(tmp_path, REDIS, port)
    assert not a.records.sessions and not a.records.commands and not a.records.credentials
    assert [x.name for x in a.records.anomalies] == ["protocol_mismatch"]
    detail = a.records.anomalies[0].detail
    assert f"port {port} names" in detail and "no mail protocol recognised" in detail
    assert "*1\\r\\n$4\\r\\nPING" in detail
    assert [f.protocol for f in a.records.flows] == [""]


@pytest.mark.parametrize("mss", [1, 5, 1460])
def test_smtp_on_the_pop3_port_is_read_as_smtp(tmp_path, mss):
    a = analyse(tmp_path, SMTP, 110, mss=mss)
    assert [s.protocol for s in a.records.sessions] == ["smtp"]
    assert [f.protocol for f in a.records.flows] == ["smtp"]
    assert [c.command for c in a.records.commands] == ["", "EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]
    assert [(m.mail_from, m.subject) for m in a.records.messages] == [("a@example.org", "hi")]
    # no record of the wrong dissector; one anomaly saying what happened
    assert [x.name for x in a.records.anomalies] == ["protocol_mismatch"]
    assert "read as smtp" in a.records.anomalies[0].detail
    assert a.records.sessions[0].anomalies == 1


def test_http_on_the_smtp_port_is_read_as_http(tmp_path):
    ex = [("c", b"GET /index.html HTTP/1.1\r\nHost: mx\r\n\r\n"),
          ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")]
    a = analyse(tmp_path, ex, 25)
    assert [(h.method, h.uri, h.status) for h in a.records.http] == [("GET", "/index.html", 200)]
    assert [s.protocol for s in a.records.sessions] == ["http"]
    assert [x.name for x in a.records.anomalies] == ["protocol_mismatch"]


def test_a_real_session_with_bad_lines_keeps_its_dissector(tmp_path):
    """The greeting confirms the port's protocol: later violations are only anomalies."""
    ex = [("s", b"+OK POP3 ready\r\n"), ("c", b"*1\r\n$4\r\nPING\r\n"), ("s", b"-ERR unknown\r\n"),
          ("c", b"USER bob\r\n"), ("s", b"+OK\r\n"), ("c", b"PASS secret\r\n"), ("s", b"+OK\r\n"),
          ("c", b"QUIT\r\n"), ("s", b"+OK bye\r\n")]
    a = analyse(tmp_path, ex, 110)
    assert [s.protocol for s in a.records.sessions] == ["pop3"]
    names = collections.Counter(x.name for x in a.records.anomalies)
    assert names["pop3_unknown_command"] == 3 and "protocol_mismatch" not in names
    assert [(c.user, c.secret) for c in a.records.credentials] == [("bob", "secret")]


def test_a_one_sided_capture_of_valid_commands_stands(tmp_path):
    a = analyse(tmp_path, [x for x in SMTP if x[0] == "c"], 25)
    assert [s.protocol for s in a.records.sessions] == ["smtp"]
    assert "protocol_mismatch" not in {x.name for x in a.records.anomalies}
    assert [m.subject for m in a.records.messages] == ["hi"]


def test_a_session_picked_up_in_its_middle_is_not_judged(tmp_path):
    """Without the connection's start there is no start to check: the port's word stands."""
    a = analyse(tmp_path, REDIS[:4], 110, handshake=False)
    assert [s.protocol for s in a.records.sessions] == ["pop3"]
    assert "protocol_mismatch" not in {x.name for x in a.records.anomalies}


def test_the_check_can_be_turned_off(tmp_path):
    a = analyse(tmp_path, REDIS[:4], 110, limits={"max_start_violations": 0})
    assert [s.protocol for s in a.records.sessions] == ["pop3"]
    assert "protocol_mismatch" not in {x.name for x in a.records.anomalies}


def test_long_unanswered_start_is_confirmed_by_default(tmp_path):
    """Past max_claim_bytes without enough violations, the held records go on."""
    body = b"".join(b"X-Filler-%d: " % i + b"y" * 60 + b"\r\n" for i in range(200))
    ex = [("c", b"EHLO a\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"),
          ("c", b"Subject: long\r\n" + body + b"\r\nhello\r\n.\r\nQUIT\r\n")]
    a = analyse(tmp_path, ex, 25)
    assert [m.subject for m in a.records.messages] == ["long"]
    assert [c.command for c in a.records.commands] == ["EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]
