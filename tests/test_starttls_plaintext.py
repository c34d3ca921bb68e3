"""STARTTLS (or STLS) accepted, then plaintext: the capture of a TLS-inspecting proxy or a
decrypting load balancer holds the dialogue in clear after the go-ahead. It is parsed on,
with the anomaly starttls_plaintext; a real TLS handshake is still TLS."""

from __future__ import annotations

import pytest

import maildissect
from maildissect.pipeline import after_starttls
from tests.pcaps import conversation, write_pcap

MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: in clear after all\r\n"
           b"Message-ID: <p1@example.org>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename=report.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"JVBERi0xLjQK\r\n--b--\r\n")

SMTP = [("s", b"220 mx.example.net ESMTP\r\n"), ("c", b"EHLO client.example.org\r\n"),
        ("s", b"250-mx.example.net\r\n250 STARTTLS\r\n"), ("c", b"STARTTLS\r\n"), ("s", b"220 Ready to start TLS\r\n"),
        ("c", b"EHLO client.example.org\r\n"), ("s", b"250-mx.example.net\r\n250 AUTH PLAIN\r\n"),
        ("c", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"), ("s", b"235 ok\r\n"),
        ("c", b"MAIL FROM:<alice@example.org>\r\n"), ("s", b"250 ok\r\n"),
        ("c", b"RCPT TO:<bob@example.net>\r\n"), ("s", b"250 ok\r\n"), ("c", b"DATA\r\n"), ("s", b"354 go\r\n"),
        ("c", MESSAGE + b".\r\n"), ("s", b"250 queued as Q1\r\n"), ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]

IMAP = [("s", b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"), ("c", b"a1 STARTTLS\r\n"),
        ("s", b"a1 OK Begin TLS negotiation now\r\n"), ("c", b"a2 LOGIN bob secret\r\n"), ("s", b"a2 OK done\r\n"),
        ("c", b"a3 SELECT INBOX\r\n"), ("s", b"* 1 EXISTS\r\na3 OK [READ-WRITE] done\r\n"),
        ("c", b"a4 UID FETCH 7 BODY.PEEK[]\r\n"),
        ("s", b"* 1 FETCH (UID 7 BODY[] {%d}\r\n" % len(MESSAGE) + MESSAGE + b")\r\na4 OK done\r\n"),
        ("c", b"a5 LOGOUT\r\n"), ("s", b"* BYE\r\na5 OK bye\r\n")]

POP3 = [("s", b"+OK POP3 ready\r\n"), ("c", b"STLS\r\n"), ("s", b"+OK Begin TLS\r\n"), ("c", b"USER bob\r\n"),
        ("s", b"+OK\r\n"), ("c", b"PASS secret\r\n"), ("s", b"+OK logged in\r\n"), ("c", b"RETR 1\r\n"),
        ("s", b"+OK message follows\r\n" + MESSAGE + b".\r\n"), ("c", b"QUIT\r\n"), ("s", b"+OK bye\r\n")]


def analyse(tmp_path, exchanges, port, name, mss=1460):
    frames, _, _ = conversation(server=("10.0.0.2", port), exchanges=exchanges, mss=mss)
    path = tmp_path / f"{name}.pcap"
    write_pcap(path, frames)
    return maildissect.analyze(str(path))


def check(a, protocol, commands_after, credential):
    (sess,) = a.records.sessions
    assert (sess.protocol, sess.tls, sess.decrypted, sess.tls_bytes_client, sess.tls_bytes_server) == \
        (protocol, True, False, 0, 0)
    assert [x.name for x in a.records.anomalies] == ["starttls_plaintext"]
    assert sess.anomalies == 1
    cmds = [c.command for c in a.records.commands]
    assert cmds[-len(commands_after):] == commands_after
    (msg,) = a.records.messages
    assert (msg.subject, msg.message_id, msg.tls, msg.decrypted, msg.complete) == \
        ("in clear after all", "<p1@example.org>", True, False, True)
    assert [x.filename for x in msg.attachments] == ["report.pdf"]
    assert [(c.user, c.secret) for c in a.records.credentials] == [credential]


@pytest.mark.parametrize("mss", [1460, 7])
def test_smtp(tmp_path, mss):
    a = analyse(tmp_path, SMTP, 25, "smtp", mss)
    check(a, "smtp", ["EHLO", "AUTH", "MAIL", "RCPT", "DATA", ".", "QUIT"], ("alice", "secret"))
    (msg,) = a.records.messages
    assert (msg.mail_from, msg.rcpt_to, msg.queue_id) == ("alice@example.org", ["bob@example.net"], "Q1")
    assert a.records.anomalies[0].detail == "first bytes after the go-ahead: b'EHLO '"
    assert a.records.sessions[0].extensions == ["AUTH PLAIN"]  # what the server said after the switch


def test_imap(tmp_path):
    check(analyse(tmp_path, IMAP, 143, "imap"), "imap", ["LOGIN", "SELECT", "UID FETCH", "LOGOUT"], ("bob", "secret"))


def test_pop3(tmp_path):
    check(analyse(tmp_path, POP3, 110, "pop3"), "pop3", ["USER", "PASS", "RETR", "QUIT"], ("bob", "secret"))


def test_a_real_handshake_stays_tls(tmp_path):
    hello = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03"
    a = analyse(tmp_path, SMTP[:5] + [("c", hello), ("s", b"\x16\x03\x03\x00\x05\x02\x00\x00\x01\x03")], 25, "tls")
    (sess,) = a.records.sessions
    assert sess.tls and sess.tls_bytes_client == len(hello)
    assert "starttls_plaintext" not in {x.name for x in a.records.anomalies}
    assert [c.command for c in a.records.commands] == ["", "EHLO", "STARTTLS"]


def test_the_verdict():
    assert after_starttls(b"\x16\x03\x01", b"", False) == "tls"
    assert after_starttls(b"\x17\x03", b"", False) == "tls"
    assert after_starttls(b"EHLO", b"", False) == "plain"
    assert after_starttls(b"\x16\x02", b"", False) == "plain"
    assert after_starttls(b"\x16", b"", False) is None
    assert after_starttls(b"\x16", b"", True) == "tls"
    assert after_starttls(b"", b"250 ok", False) == "plain"
    assert after_starttls(b"", b"", False) is None and after_starttls(b"", b"", True) == "tls"
