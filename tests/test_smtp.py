"""SMTP dissector: crafted transcripts for every feature, fed whole, byte by byte and in random chunks."""

from __future__ import annotations

import base64
import hashlib

import pytest

from maildissect.config import Config, Limits
from maildissect.model import Anomaly, Command, Credential, Message
from maildissect.protocols import dissector_class
from maildissect.protocols.smtp import ANOMALIES, SmtpDissector, looks_like_smtp
from tests.helpers import C, S, feed, new_session, of_type, run_all_ways

KEEP = Config(keep_bodies=True)

GREETING = (S, b"220 mx.example.net ESMTP Postfix (Debian/GNU)\r\n")
EHLO = [
    (C, b"EHLO client.example.org\r\n"),
    (S, b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n"
        b"250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 8BITMIME\r\n"),
]
START = [GREETING, *EHLO]


def run(transcript, config=KEEP, factory=SmtpDissector, decrypted=False):
    return run_all_ways(factory, transcript, config=config, protocol="smtp", decrypted=decrypted)


def commands(records):
    return [(c.command, c.argument, c.reply_code) for c in of_type(records, Command)]


def anomalies(records):
    return [a.name for a in of_type(records, Anomaly)]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def message(subject="hi", body="Hello Bob.") -> bytes:
    return (f"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@example.org>\r\nDate: Tue, 12 Dec 2023 17:37:16 +0100\r\n\r\n{body}\r\n").encode()


# --------------------------------------------------------------------------- the basic dialogue


def test_basic_session():
    wire = message(body="Hello Bob.\r\n..a line that starts with a dot\r\n..")
    records, sess = run([
        *START,
        (C, b"MAIL FROM:<alice@example.org> SIZE=180 BODY=8BITMIME\r\n"),
        (S, b"250 2.1.0 Ok\r\n"),
        (C, b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net\r\n"),
        (S, b"250 2.1.5 Ok\r\n"),
        (C, b"DATA\r\n"),
        (S, b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        (C, wire + b".\r\n"),
        (S, b"250 2.0.0 Ok: queued as 4QabcD1234\r\n"),
        (C, b"QUIT\r\n"),
        (S, b"221 2.0.0 Bye\r\n"),
    ])
    assert commands(records) == [
        ("", "", "220"),
        ("EHLO", "client.example.org", "250"),
        ("MAIL", "FROM:<alice@example.org> SIZE=180 BODY=8BITMIME", "250"),
        ("RCPT", "TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net", "250"),
        ("DATA", "", "354"),
        (".", "", "250"),
        ("QUIT", "", "221"),
    ]
    greeting, ehlo, mail = of_type(records, Command)[:3]
    assert greeting.ts == 0.0 and greeting.reply_text == "mx.example.net ESMTP Postfix (Debian/GNU)"
    assert ehlo.ts == 1.0 and ehlo.reply_ts == 2.0 and ehlo.latency == 1.0
    assert ehlo.reply_text == "mx.example.net"
    assert mail.reply_text == "2.1.0 Ok"  # enhanced status code kept in the text
    assert sess.helo == "client.example.org"
    assert sess.banner == "mx.example.net ESMTP Postfix (Debian/GNU)"
    assert sess.server_software == "Postfix (Debian/GNU)"
    assert sess.extensions == ["PIPELINING", "SIZE 10240000", "AUTH PLAIN LOGIN CRAM-MD5", "STARTTLS",
                               "ENHANCEDSTATUSCODES", "CHUNKING", "8BITMIME"]
    (msg,) = of_type(records, Message)
    assert (msg.protocol, msg.direction, msg.source, msg.kind, msg.session_id) == ("smtp", "sent", "DATA", "data", 1)
    assert msg.ts == 7.0  # the DATA command
    assert msg.mail_from == "alice@example.org" and msg.rcpt_to == ["bob@example.net"] and msg.rcpt_rejected == []
    assert msg.helo == "client.example.org" and msg.tls is False
    assert (msg.reply_code, msg.reply_text, msg.queue_id) == ("250", "2.0.0 Ok: queued as 4QabcD1234", "4QabcD1234")
    unstuffed = message(body="Hello Bob.\r\n.a line that starts with a dot\r\n.")
    assert msg.raw == unstuffed and msg.size == len(unstuffed)
    assert msg.sha256 == hashlib.sha256(unstuffed).hexdigest()
    assert msg.subject == "hi" and msg.from_ == "Alice <alice@example.org>" and msg.to == ["Bob <bob@example.net>"]
    assert msg.complete is True and msg.missing_bytes == 0
    assert anomalies(records) == []


def test_greeting_latency_is_the_greeting_delay():
    sess = new_session("smtp")
    sess.start = 10.0
    d = SmtpDissector(sess, Config())
    (greeting,) = d.feed(S, b"220-first line\r\n220 second line\r\n", 10.25)
    assert (greeting.command, greeting.ts, greeting.reply_ts, greeting.latency) == ("", 10.0, 10.25, 0.25)
    assert greeting.reply_text == "first line"
    assert sess.banner == "first line\nsecond line"


def test_pipelining_recipient_outcomes():
    records, _ = run([
        *START,
        (C, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<ok@example.net>\r\nRCPT TO:<nouser@example.net>\r\n"
            b"RCPT TO:<later@example.net>\r\nRCPT TO:<fwd@example.net>\r\nDATA\r\n"),
        (S, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <nouser@example.net>: Recipient address rejected\r\n"
            b"450 4.2.0 <later@example.net>: Greylisted\r\n251 2.1.5 User not local; will forward\r\n354 go ahead\r\n"),
        (C, message() + b".\r\n"),
        (S, b"250 2.0.0 Ok: queued as Q1\r\n"),
    ])
    rcpts = [(c.argument, c.reply_code, c.reply_text) for c in of_type(records, Command) if c.command == "RCPT"]
    assert rcpts == [
        ("TO:<ok@example.net>", "250", "2.1.5 Ok"),
        ("TO:<nouser@example.net>", "550", "5.1.1 <nouser@example.net>: Recipient address rejected"),
        ("TO:<later@example.net>", "450", "4.2.0 <later@example.net>: Greylisted"),
        ("TO:<fwd@example.net>", "251", "2.1.5 User not local; will forward"),
    ]
    (msg,) = of_type(records, Message)
    assert msg.rcpt_to == ["ok@example.net", "fwd@example.net"]
    assert msg.rcpt_rejected == ["nouser@example.net", "later@example.net"]
    assert anomalies(records) == []


def test_several_transactions_rset_and_pipelined_next_mail():
    records, _ = run([
        *START,
        (C, b"MAIL FROM:<aborted@example.org>\r\n"), (S, b"250 Ok\r\n"),
        (C, b"RCPT TO:<x@example.net>\r\n"), (S, b"250 Ok\r\n"),
        (C, b"RSET\r\n"), (S, b"250 2.0.0 Ok\r\n"),
        (C, b"MAIL FROM:<one@example.org>\r\n"), (S, b"250 Ok\r\n"),
        (C, b"RCPT TO:<r1@example.net>\r\n"), (S, b"250 Ok\r\n"),
        (C, b"DATA\r\n"), (S, b"354 go\r\n"),
        # the next transaction is pipelined behind the end of data
        (C, message("first") + b".\r\nMAIL FROM:<two@example.org>\r\nRCPT TO:<r2@example.net>\r\nDATA\r\n"),
        (S, b"250 Ok: queued as A1\r\n250 Ok\r\n250 Ok\r\n354 go\r\n"),
        (C, message("second") + b".\r\nQUIT\r\n"),
        (S, b"250 Ok: queued as B2\r\n221 Bye\r\n"),
    ])
    aborted, first, second = of_type(records, Message)
    assert (aborted.kind, aborted.outcome, aborted.mail_from, aborted.rcpt_to) == \
        ("envelope", "aborted", "aborted@example.org", ["x@example.net"])
    assert (first.mail_from, first.rcpt_to, first.subject, first.queue_id) == ("one@example.org", ["r1@example.net"], "first", "A1")
    assert (second.mail_from, second.rcpt_to, second.subject, second.queue_id) == ("two@example.org", ["r2@example.net"], "second", "B2")
    assert [c.command for c in of_type(records, Command)][-3:] == ["DATA", ".", "QUIT"]
    assert anomalies(records) == []


def test_null_sender_source_route_and_loose_syntax():
    records, _ = run([
        *START,
        (C, b"mail from: <>\r\n"), (S, b"250 Ok\r\n"),
        (C, b"RCPT TO:<@relay.example.com:bob@example.net>\r\n"), (S, b"250 Ok\r\n"),
        (C, b"RCPT TO: carol@example.net\r\n"), (S, b"250 Ok\r\n"),
        (C, b'RCPT TO:<"john doe>x"@example.net>\r\n'), (S, b"250 Ok\r\n"),
        (C, b"RCPT TO:<broken@example.net\r\n"), (S, b"501 5.1.3 Bad recipient address syntax\r\n"),
        (C, b"DATA\r\n"), (S, b"354 go\r\n"), (C, message() + b".\r\n"), (S, b"250 Ok\r\n"),
    ])
    (msg,) = of_type(records, Message)
    assert msg.mail_from == ""  # the null reverse-path of bounces
    assert msg.rcpt_to == ["bob@example.net", "carol@example.net", '"john doe>x"@example.net']
    assert msg.rcpt_rejected == ["broken@example.net"]
    assert of_type(records, Command)[2].command == "MAIL"  # verbs are upper-cased
    assert anomalies(records) == ["smtp_bad_address"]


@pytest.mark.parametrize("reply, queue_id", [
    (b"250 2.0.0 Ok: queued as 4QabcD1234", "4QabcD1234"),
    (b"250 OK id=1Mugho-0003Dg-Un", "1Mugho-0003Dg-Un"),
    (b"250 2.0.0 tB8LU1sU014630 Message accepted for delivery", "tB8LU1sU014630"),
    (b"250 <20240101.abc@example.org> Message accepted", "<20240101.abc@example.org>"),
    (b"250 2.6.0 <m@x> [InternalId=97779625, Hostname=EX1] Queued mail for delivery", "97779625"),
    (b"250 2.0.0 OK  1446740342 l66si8937373wmb.26 - gsmtp", "l66si8937373wmb.26"),
    (b"250 ok 1446740342 qp 12345", "12345"),
    (b"250- 4404 byte chunk, total 4404\r\n250 OK id=1lHkUh-008hPw-NY", "1lHkUh-008hPw-NY"),
    (b"250 OK: message queued", None),
])
def test_queue_id_variants(reply, queue_id):
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\n"), (S, b"250 ok\r\n"), (C, b"RCPT TO:<b@y.org>\r\n"),
                      (S, b"250 ok\r\n"), (C, b"DATA\r\n"), (S, b"354 go\r\n"), (C, message() + b".\r\n"),
                      (S, reply + b"\r\n")])
    (msg,) = of_type(records, Message)
    assert msg.queue_id == queue_id
    assert msg.reply_text == reply.rsplit(b"\r\n", 1)[-1][4:].decode()  # the last line of the final reply


# --------------------------------------------------------------------------- DATA framing


def test_dot_unstuffing_and_terminator_across_items():
    records, _ = run([
        *START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"), (S, b"250 ok\r\n250 ok\r\n354 go\r\n"),
        (C, b"Subject: dots\r\n\r\n..first\r\nmid..dle\r\n."), (C, b".second\r\n..\r\n"),
        (C, b".single dot\r\nend\r"), (C, b"\n."), (C, b"\r"), (C, b"\nQUIT\r\n"),
        (S, b"250 ok\r\n221 bye\r\n"),
    ])
    (msg,) = of_type(records, Message)
    # the first dot of every line that starts with one goes (RFC 5321 4.5.2), doubled or not
    assert msg.raw == b"Subject: dots\r\n\r\n.first\r\nmid..dle\r\n.second\r\n.\r\nsingle dot\r\nend\r\n"
    assert commands(records)[-1] == ("QUIT", "", "221")


def test_empty_message_and_message_without_final_crlf_line():
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"),
                      (S, b"250 ok\r\n250 ok\r\n354 go\r\n"), (C, b".\r\n"), (S, b"250 ok\r\n")])
    (msg,) = of_type(records, Message)
    assert msg.raw == b"" and msg.size == 0 and msg.complete


def test_bare_lf_dot_is_not_an_end():
    body = b"Subject: smuggle\r\n\r\nA\r\n.\nMAIL FROM:<evil@x.org>\r\n\n.\r\nB\r\n.\n\r\nC\r\n"
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"),
                      (S, b"250 ok\r\n250 ok\r\n354 go\r\n"), (C, body + b".\r\n"), (S, b"250 ok\r\n")])
    (msg,) = of_type(records, Message)
    # nothing after a bare-LF dot became a command; a line that starts with a
    # dot (up to its CRLF) still loses that dot
    assert msg.raw == body.replace(b"\r\n.", b"\r\n")
    assert anomalies(records) == ["smtp_bare_lf_dot"]  # once per message
    assert [c.command for c in of_type(records, Command)][-2:] == ["DATA", "."]


def test_data_refused_without_body():
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\n"), (S, b"250 ok\r\n"), (C, b"RCPT TO:<b@y.org>\r\n"),
                      (S, b"550 5.1.1 no such user\r\n"), (C, b"DATA\r\n"), (S, b"554 5.5.1 Error: no valid recipients\r\n"),
                      (C, b"QUIT\r\n"), (S, b"221 bye\r\n")])
    # no message: the transaction is a row of its own, no recipient accepted
    assert [(m.kind, m.outcome, m.rcpt_rejected, m.reply_code, m.size) for m in of_type(records, Message)] == \
        [("envelope", "no_recipients", ["b@y.org"], "554", 0)]
    assert commands(records)[-2:] == [("DATA", "", "554"), ("QUIT", "", "221")]
    assert anomalies(records) == []


def test_data_refused_after_the_client_went_on():
    # the client did not wait for the 354: what it sent is read again as commands
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\nNOOP\r\nQUIT\r\n"),
                      (S, b"250 ok\r\n550 no\r\n554 no valid recipients\r\n250 ok\r\n221 bye\r\n")])
    assert [(m.kind, m.outcome) for m in of_type(records, Message)] == [("envelope", "no_recipients")]
    assert commands(records)[-3:] == [("DATA", "", "554"), ("NOOP", "", "250"), ("QUIT", "", "221")]
    assert anomalies(records) == []


def test_reply_during_data_closes_the_message():
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"),
                      (S, b"250 ok\r\n250 ok\r\n354 go\r\n"), (C, b"Subject: slow\r\n\r\npart"),
                      (S, b"421 4.4.2 mx.example.net Error: timeout exceeded\r\n")])
    (msg,) = of_type(records, Message)
    assert (msg.reply_code, msg.complete, msg.raw) == ("421", False, b"Subject: slow\r\n\r\npart")
    assert anomalies(records) == ["smtp_reply_during_data"]


def test_connection_ends_inside_data():
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"),
                      (S, b"250 ok\r\n250 ok\r\n354 go\r\n"), (C, b"Subject: cut\r\n\r\nno end\r\n")])
    (msg,) = of_type(records, Message)
    assert msg.complete is False and msg.reply_code is None and msg.subject == "cut"
    assert msg.raw == b"Subject: cut\r\n\r\nno end\r\n"
    assert anomalies(records) == ["smtp_data_unterminated"]


# --------------------------------------------------------------------------- BDAT


def test_bdat_chunks_binary_and_last():
    head = b"Subject: chunked\r\nContent-Type: application/octet-stream; name=b.bin\r\n\r\n"
    binary = b"\r\n.\r\n\x00\xff binary with a fake end\r\n.\r\n"
    records, _ = run([
        *START, (C, b"MAIL FROM:<a@x.org> BODY=BINARYMIME\r\n"), (S, b"250 ok\r\n"),
        (C, b"RCPT TO:<b@y.org>\r\n"), (S, b"250 ok\r\n"),
        (C, b"BDAT %d\r\n" % len(head) + head), (S, b"250 2.0.0 Ok: %d bytes\r\n" % len(head)),
        (C, b"BDAT %d LAST\r\n" % len(binary) + binary), (S, b"250 2.0.0 Ok: queued as CH1\r\n"),
        (C, b"QUIT\r\n"), (S, b"221 bye\r\n"),
    ])
    (msg,) = of_type(records, Message)
    assert msg.raw == head + binary and (msg.source, msg.kind, msg.ts) == ("BDAT", "bdat", 7.0)
    assert (msg.queue_id, msg.complete) == ("CH1", True)
    assert msg.attachments[0].sha256 == hashlib.sha256(binary).hexdigest()
    assert [c.argument for c in of_type(records, Command) if c.command == "BDAT"] == [str(len(head)), f"{len(binary)} LAST"]
    assert anomalies(records) == []


def test_bdat_zero_last_and_pipelined_chunks():
    m = message("pipelined")
    records, _ = run([
        *START,
        (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nBDAT 10\r\n" + m[:10] + b"BDAT %d\r\n" % (len(m) - 10)
            + m[10:] + b"BDAT 0 LAST\r\nMAIL FROM:<c@x.org>\r\nRCPT TO:<d@y.org>\r\nBDAT 12 LAST\r\nSubject: "),
        (C, b"2\r\nQUIT\r\n"),
        (S, b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok: queued as P1\r\n250 ok\r\n250 ok\r\n"
            b"250 ok: queued as P2\r\n221 bye\r\n"),
    ])
    first, second = of_type(records, Message)
    assert (first.raw, first.subject, first.queue_id, first.rcpt_to) == (m, "pipelined", "P1", ["b@y.org"])
    assert (second.raw, second.queue_id, second.mail_from) == (b"Subject: 2\r\n", "P2", "c@x.org")
    assert anomalies(records) == []
    assert [c.reply_code for c in of_type(records, Command)][-1] == "221"


def test_bad_bdat():
    records, _ = run([*START, (C, b"BDAT lots\r\n"), (S, b"501 5.5.4 Syntax: BDAT count [LAST]\r\n"),
                      (C, b"QUIT\r\n"), (S, b"221 bye\r\n")])
    assert anomalies(records) == ["smtp_bad_bdat"]
    assert commands(records)[-2:] == [("BDAT", "lots", "501"), ("QUIT", "", "221")]


def test_bdat_without_last_is_incomplete_at_close():
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nBDAT 4\r\nSubj"),
                      (S, b"250 ok\r\n250 ok\r\n250 ok\r\n")])
    (msg,) = of_type(records, Message)
    assert msg.raw == b"Subj" and msg.complete is False
    assert "smtp_bdat_unterminated" in anomalies(records)


# --------------------------------------------------------------------------- AUTH


def creds(records):
    return [(c.mechanism, c.user, c.secret, c.success) for c in of_type(records, Credential)]


def test_auth_plain_initial_response():
    ir = b64(b"\x00alice\x00s3cret")
    records, sess = run([*START, (C, b"AUTH PLAIN " + ir + b"\r\n"), (S, b"235 2.7.0 Authentication successful\r\n")])
    assert creds(records) == [("PLAIN", "alice", "s3cret", True)]
    auth = [c for c in of_type(records, Command) if c.command == "AUTH"][0]
    assert auth.argument == "PLAIN " + ir.decode() and auth.secret_at == len("PLAIN ")
    assert (sess.auth_user, sess.auth_mechanism) == ("alice", "PLAIN")
    assert of_type(records, Credential)[0].ts == 3.0


def test_auth_plain_after_challenge():
    records, sess = run([*START, (C, b"AUTH PLAIN\r\n"), (S, b"334 \r\n"), (C, b64(b"admin\x00bob\x00pw") + b"\r\n"),
                         (S, b"235 ok\r\n")])
    assert creds(records) == [("PLAIN", "bob", "pw", True)]
    assert [(c.command, c.secret_at) for c in of_type(records, Command)][-2:] == [("AUTH", None), ("AUTH-RESPONSE", 0)]


def test_auth_login_failure_then_success():
    records, sess = run([
        *START,
        (C, b"AUTH LOGIN\r\n"), (S, b"334 VXNlcm5hbWU6\r\n"), (C, b64(b"bob") + b"\r\n"),
        (S, b"334 UGFzc3dvcmQ6\r\n"), (C, b64(b"wrong") + b"\r\n"), (S, b"535 5.7.8 Error: authentication failed\r\n"),
        (C, b"AUTH LOGIN " + b64(b"bob") + b"\r\n"), (S, b"334 UGFzc3dvcmQ6\r\n"), (C, b64(b"right") + b"\r\n"),
        (S, b"235 2.7.0 Authentication successful\r\n"),
        (C, b"MAIL FROM:<bob@x.org>\r\n"), (S, b"250 ok\r\n"),
    ])
    assert creds(records) == [("LOGIN", "bob", "wrong", False), ("LOGIN", "bob", "right", True)]
    assert (sess.auth_user, sess.auth_mechanism) == ("bob", "LOGIN")
    assert commands(records)[-1] == ("MAIL", "FROM:<bob@x.org>", "250")
    assert anomalies(records) == []


def test_auth_cram_md5():
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    records, sess = run([*START, (C, b"AUTH CRAM-MD5\r\n"), (S, b"334 " + b64(challenge) + b"\r\n"),
                         (C, b64(b"tim b913a602c7eda7a495b4e6e7334d3890") + b"\r\n"), (S, b"235 ok\r\n")])
    (cred,) = of_type(records, Credential)
    assert (cred.user, cred.secret, cred.success) == ("tim", "b913a602c7eda7a495b4e6e7334d3890", True)
    assert challenge.decode() in cred.detail


def test_auth_xoauth2_failure_and_oauthbearer():
    xo = b64(b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01")
    ob = b64(b"n,a=user@example.com,\x01host=server.example.com\x01port=587\x01auth=Bearer vF9dft4qmTc2Nvb3\x01\x01")
    records, sess = run([
        *START,
        (C, b"AUTH XOAUTH2 " + xo + b"\r\n"), (S, b"334 " + b64(b'{"status":"401","schemes":"bearer"}') + b"\r\n"),
        (C, b"\r\n"), (S, b"535 5.7.8 Username and Password not accepted\r\n"),
        (C, b"AUTH OAUTHBEARER " + ob + b"\r\n"), (S, b"235 2.7.0 Accepted\r\n"),
    ])
    assert creds(records) == [
        ("XOAUTH2", "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg", False),
        ("OAUTHBEARER", "user@example.com", "vF9dft4qmTc2Nvb3", True),
    ]
    assert sess.auth_mechanism == "OAUTHBEARER"


def test_auth_cancelled():
    records, sess = run([*START, (C, b"AUTH LOGIN\r\n"), (S, b"334 VXNlcm5hbWU6\r\n"), (C, b"*\r\n"),
                         (S, b"501 5.7.0 Authentication aborted\r\n"), (C, b"QUIT\r\n"), (S, b"221 bye\r\n")])
    (cred,) = of_type(records, Credential)
    assert cred.success is False and "cancelled" in cred.detail and sess.auth_user is None
    assert [(c.command, c.secret_at) for c in of_type(records, Command)][-2:] == [("AUTH-RESPONSE", None), ("QUIT", None)]


def test_one_sided_client_capture():
    # no server side at all (asymmetric routing): everything the client said is still there
    records, sess = run([
        (C, b"EHLO c.example.org\r\nAUTH LOGIN\r\n" + b64(b"bob") + b"\r\n" + b64(b"pw") + b"\r\n"),
        (C, b"MAIL FROM:<bob@x.org>\r\nRCPT TO:<r@y.org>\r\nDATA\r\n" + message() + b".\r\nQUIT\r\n"),
    ])
    assert creds(records) == [("LOGIN", "bob", "pw", None)]
    (msg,) = of_type(records, Message)
    assert (msg.mail_from, msg.rcpt_to, msg.reply_code, msg.subject) == ("bob@x.org", ["r@y.org"], None, "hi")
    assert msg.complete is True
    assert [c.command for c in of_type(records, Command)] == ["EHLO", "AUTH", "AUTH-RESPONSE", "AUTH-RESPONSE",
                                                                "MAIL", "RCPT", "DATA", ".", "QUIT"]
    assert all(c.reply_code is None for c in of_type(records, Command))
    assert sess.auth_user is None and anomalies(records) == []


# --------------------------------------------------------------------------- STARTTLS


def test_starttls_counts_tls_bytes_and_stops():
    client_hello = b"\x16\x03\x01\x00\x05hello"
    records, sess = run([*START, (C, b"STARTTLS\r\n" + client_hello), (S, b"220 2.0.0 Ready to start TLS\r\n"),
                         (S, b"\x16\x03\x03\x00\x02hi"), (C, b"\x17\x03\x03\x00\x10" + b"EHLO x\r\nMAIL FROM:"),
                         (S, b"\x17\x03\x03\x00\x03250")])
    assert sess.tls is True
    assert sess.tls_bytes_client == len(client_hello) + 5 + 18
    assert sess.tls_bytes_server == 7 + 8
    assert commands(records)[-1] == ("STARTTLS", "", "220")
    assert anomalies(records) == []


def test_starttls_refused_goes_on():
    records, sess = run([*START, (C, b"STARTTLS\r\n"), (S, b"454 4.7.0 TLS not available\r\n"),
                         (C, b"MAIL FROM:<a@x.org>\r\n"), (S, b"250 ok\r\n")])
    assert sess.tls is False and sess.tls_bytes_client == 0
    assert commands(records)[-2:] == [("STARTTLS", "", "454"), ("MAIL", "FROM:<a@x.org>", "250")]


def test_starttls_decrypted_keeps_parsing():
    records, sess = run(decrypted=True, transcript=[
        *START, (C, b"STARTTLS\r\n"), (S, b"220 2.0.0 Ready\r\n"),
        (C, b"EHLO again.example.org\r\n"), (S, b"250-mx\r\n250 AUTH PLAIN\r\n"),
        (C, b"AUTH PLAIN " + b64(b"\x00u\x00p") + b"\r\n"), (S, b"235 ok\r\n"),
        (C, b"MAIL FROM:<u@x.org>\r\nRCPT TO:<r@y.org>\r\nDATA\r\n"), (S, b"250 ok\r\n250 ok\r\n354 go\r\n"),
        (C, message() + b".\r\n"), (S, b"250 ok\r\n"),
    ])
    (msg,) = of_type(records, Message)
    assert msg.tls is True and msg.helo == "again.example.org"
    assert sess.tls is True and sess.tls_bytes_client == 0 and sess.extensions == ["AUTH PLAIN"]
    assert sess.auth_user == "u"


# --------------------------------------------------------------------------- other commands


def test_other_and_unknown_commands():
    records, _ = run([
        *START,
        (C, b"VRFY bob\r\n"), (S, b"252 2.0.0 bob\r\n"),
        (C, b"EXPN staff\r\n"), (S, b"502 5.5.1 EXPN not available\r\n"),
        (C, b"HELP\r\n"), (S, b"214-2.0.0 Commands:\r\n214 2.0.0 end\r\n"),
        (C, b"NOOP\r\n"), (S, b"250 2.0.0 Ok\r\n"),
        (C, b"XCLIENT ADDR=192.0.2.1 NAME=spike.porcupine.org\r\n"), (S, b"220 mx ESMTP\r\n"),
        (C, b"XFORWARD HELO=x.example.org\r\n"), (S, b"250 Ok\r\n"),
        (C, b"FOO bar baz\r\n"), (S, b"502 5.5.2 Error: command not recognized\r\n"),
        (C, b"\r\n"), (S, b"500 5.5.2 Error: bad syntax\r\n"),
        (C, b"helo old.example.org\r\n"), (S, b"250 mx\r\n"),
    ])
    assert commands(records)[2:] == [
        ("VRFY", "bob", "252"), ("EXPN", "staff", "502"), ("HELP", "", "214"), ("NOOP", "", "250"),
        ("XCLIENT", "ADDR=192.0.2.1 NAME=spike.porcupine.org", "220"), ("XFORWARD", "HELO=x.example.org", "250"),
        ("FOO", "bar baz", "502"), ("HELO", "old.example.org", "250"),
    ]
    assert anomalies(records) == ["smtp_unknown_command", "smtp_unknown_command"]


def test_capture_started_after_the_greeting():
    records, _ = run([(C, b"RCPT TO:<b@y.org>\r\n"), (S, b"250 2.1.5 Ok\r\n"), (C, b"DATA\r\n"), (S, b"354 go\r\n"),
                      (C, message() + b".\r\n"), (S, b"250 ok\r\n")])
    assert commands(records) == [("RCPT", "TO:<b@y.org>", "250"), ("DATA", "", "354"), (".", "", "250")]
    (msg,) = of_type(records, Message)
    assert msg.mail_from is None and msg.rcpt_to == ["b@y.org"]


def test_unmatched_reply_and_bad_reply_lines():
    records, _ = run([*START, (S, b"250 spontaneous\r\n"), (S, b"hello there\r\n"), (S, b"250-a\r\n251 b\r\n")])
    assert anomalies(records) == ["smtp_unmatched_reply", "smtp_bad_reply_line", "smtp_reply_code_mismatch",
                                  "smtp_unmatched_reply", "smtp_unmatched_reply"]


# --------------------------------------------------------------------------- gaps


def test_gap_inside_data():
    records, sess = run([
        *START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"), (S, b"250 ok\r\n250 ok\r\n354 go\r\n"),
        (C, b"Subject: g\r\n\r\nfirst part\r\n"), (C, "gap", 500), (C, b"second part\r\n.\r\n"),
        (S, b"250 Ok: queued as G1\r\n"), (C, b"QUIT\r\n"), (S, b"221 bye\r\n"),
    ])
    (msg,) = of_type(records, Message)
    assert (msg.complete, msg.missing_bytes, msg.queue_id) == (False, 500, "G1")
    assert msg.raw == b"Subject: g\r\n\r\nfirst part\r\nsecond part\r\n"
    assert sess.complete is False
    assert commands(records)[-1] == ("QUIT", "", "221")


def test_gap_swallows_the_end_of_data():
    records, _ = run([
        *START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"), (S, b"250 ok\r\n250 ok\r\n354 go\r\n"),
        (C, b"Subject: lost end\r\n\r\nbody"), (C, "gap", 50), (S, b"250 Ok: queued as H1\r\n"),
        (C, b"tail of a line\r\nQUIT\r\n"), (S, b"221 bye\r\n"),
    ])
    (msg,) = of_type(records, Message)
    assert (msg.complete, msg.missing_bytes, msg.queue_id, msg.reply_code) == (False, 50, "H1", "250")
    assert commands(records)[-1] == ("QUIT", "", "221")
    assert anomalies(records) == []


def test_gap_in_commands_resynchronises():
    records, _ = run([
        *START, (C, b"MAIL FROM:<a@x.org>\r\n"), (S, b"250 ok\r\n"),
        (C, b"RCPT TO:<lo"), (C, "gap", 30), (C, b"st@y.org>\r\n"), (S, b"250 ok\r\n"),
        (C, b"RCPT TO:<c@y.org>\r\n"), (S, b"250 ok\r\n"),
        (C, b"DATA\r\n"), (S, b"354 go\r\n"), (C, message() + b".\r\n"), (S, b"250 ok\r\n"),
    ])
    (msg,) = of_type(records, Message)
    assert msg.rcpt_to == ["c@y.org"] and msg.complete is False and msg.missing_bytes == 0
    # the cut RCPT is gone; the partial line after the gap and the reply to the
    # lost command are expected after a gap, not anomalies
    assert [c.command for c in of_type(records, Command)][-4:] == ["MAIL", "RCPT", "DATA", "."]
    assert anomalies(records) == []


def test_server_gap_leaves_commands_unanswered():
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\n"), (S, b"25"), (S, "gap", 20), (S, b"0 ok\r\n"),
                      (C, b"RCPT TO:<b@y.org>\r\n"), (S, b"250 2.1.5 ok\r\n")])
    assert commands(records)[-2:] == [("MAIL", "FROM:<a@x.org>", None), ("RCPT", "TO:<b@y.org>", "250")]
    assert anomalies(records) == []


def test_gap_inside_bdat_chunk_stays_aligned():
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nBDAT 20 LAST\r\nSubje"),
                      (C, "gap", 10), (C, b"67890QUIT\r\n"), (S, b"250 ok\r\n250 ok\r\n250 ok: queued as Z\r\n221 bye\r\n")])
    (msg,) = of_type(records, Message)
    assert (msg.raw, msg.missing_bytes, msg.complete, msg.queue_id) == (b"Subje67890", 10, False, "Z")
    assert commands(records)[-1] == ("QUIT", "", "221")


def test_gap_past_a_bdat_chunk_then_data():
    # the shape of Zeek's smtp-bdat-gap trace: a BDAT chunk cut by a gap, then DATA
    records, _ = run([
        *START, (C, b"MAIL FROM:<sender@example.com>\r\n"), (S, b"250 OK\r\n"),
        (C, b"RCPT TO:<recipient@example.com>\r\n"), (S, b"250 OK\r\n"),
        (C, b"BDAT 200\r\n" + b"A" * 100), (C, "gap", 1000), (S, b"250 OK\r\n250 OK\r\n250 OK\r\n"),
        (C, b"DATA\r\n"), (S, b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        (C, b"From: sender@example.com\r\nSubject: Test\r\n\r\nHello!\r\n.\r\n"), (S, b"250 OK: message queued\r\n"),
        (C, b"QUIT\r\n"), (S, b"221 Bye\r\n"),
    ])
    chunked, data = of_type(records, Message)
    assert (chunked.source, chunked.raw, chunked.missing_bytes, chunked.complete) == ("BDAT", b"A" * 100, 100, False)
    assert (data.source, data.subject, data.complete, data.reply_text) == ("DATA", "Test", False, "OK: message queued")
    for msg in (chunked, data):
        assert (msg.mail_from, msg.rcpt_to, msg.helo) == ("sender@example.com", ["recipient@example.com"], "client.example.org")
    assert anomalies(records) == ["mime_missing_header_separator"]  # the chunk is just "AAA..."


def test_unexpected_354_after_a_gap_starts_data():
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\n"), (S, b"250 ok\r\n"), (C, "gap", 40),
                      (S, b"250 ok\r\n354 go\r\n"), (C, message("after gap") + b".\r\n"), (S, b"250 ok\r\n")])
    (msg,) = of_type(records, Message)
    assert (msg.subject, msg.mail_from, msg.complete, msg.reply_code) == ("after gap", "a@x.org", False, "250")


# --------------------------------------------------------------------------- limits


def test_line_too_long_keeps_replies_aligned():
    cfg = Config(limits=Limits(max_line=100))
    records, _ = run([GREETING, (C, b"HELO " + b"x" * 500 + b"\r\n"), (S, b"501 5.5.2 line too long\r\n"),
                      (C, b"EHLO ok\r\n"), (S, b"250-" + b"y" * 300 + b"\r\n250 SIZE 1\r\n")], config=cfg)
    assert anomalies(records) == ["smtp_line_too_long", "smtp_line_too_long"]
    assert commands(records) == [("", "", "220"), ("EHLO", "ok", "250")]


def test_too_many_pending_commands():
    cfg = Config(limits=Limits(max_pending_commands=5))
    records, _ = run([*START, (C, b"NOOP\r\n" * 12), (S, b"250 ok\r\n" * 5)], config=cfg)
    noops = [c for c in of_type(records, Command) if c.command == "NOOP"]
    assert len(noops) == 12
    assert sum(c.reply_code is None for c in noops) == 7  # the oldest were given up to stay bounded
    assert anomalies(records) == ["too_many_pending_commands"]


def test_too_many_recipients():
    cfg = Config(limits=Limits(max_recipients=3))
    rcpts = b"".join(b"RCPT TO:<r%d@y.org>\r\n" % i for i in range(6))
    records, _ = run([*START, (C, b"MAIL FROM:<a@x.org>\r\n" + rcpts + b"DATA\r\n"),
                      (S, b"250 ok\r\n" * 7 + b"354 go\r\n"), (C, message() + b".\r\n"), (S, b"250 ok\r\n")], config=cfg)
    (msg,) = of_type(records, Message)
    assert msg.rcpt_to == ["r0@y.org", "r1@y.org", "r2@y.org"]
    assert sum(c.command == "RCPT" for c in of_type(records, Command)) == 6
    assert anomalies(records) == ["smtp_too_many_recipients"]


def test_message_too_large_is_hashed_in_full():
    cfg = Config(keep_bodies=True, limits=Limits(max_message_size=1000))
    body = message(body="x" * 70 + "\r\n" + ("..dotted line\r\n" + "y" * 60 + "\r\n") * 80)
    unstuffed = body.replace(b"\r\n..", b"\r\n.")
    transcript = [*START, (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"), (S, b"250 ok\r\n250 ok\r\n354 go\r\n"),
                  (C, body + b".\r\n"), (S, b"250 ok\r\n")]
    records, _ = run(transcript, config=cfg)
    (msg,) = of_type(records, Message)
    assert msg.size == len(unstuffed) and msg.sha256 == hashlib.sha256(unstuffed).hexdigest()
    assert msg.raw == unstuffed[:1000] and msg.complete is False and msg.subject == "hi"
    assert msg.body_sha256 is None
    assert anomalies(records) == ["smtp_message_too_large"]
    # memory stays bounded while the message streams in
    d = SmtpDissector(new_session("smtp"), cfg)
    for side, data in transcript[:-2]:
        d.feed(side, data, 0.0)
    for i in range(0, len(body), 7):
        d.feed(C, body[i:i + 7], 0.0)
        assert d.buffered() <= 1000 + 2 * cfg.limits.max_line


# --------------------------------------------------------------------------- detection and registry


@pytest.mark.parametrize("client, server, expected", [
    (b"EHLO x.example.org\r\n", b"220 mx.example.net ESMTP\r\n", True),
    (b"helo x\r\n", b"220-mx.example.net ESMTP\r\n220 more\r\n", True),
    (b"", b"220 mx.example.net ESMTP Postfix\r\n", True),
    (b"EHLO x\r\n", b"", True),
    (b"", b"220 ProFTPD Server (FTP) ready\r\n", False),
    (b"USER anonymous\r\n", b"220 mail ESMTP\r\n", False),
    (b"EH", b"", False),
    (b"", b"* OK IMAP4rev1 ready\r\n", False),
    (b"", b"+OK POP3 ready\r\n", False),
    (b"GET / HTTP/1.1\r\n", b"", False),
])
def test_looks_like_smtp(client, server, expected):
    assert looks_like_smtp(client, server) is expected


def test_registered_and_documented():
    from maildissect import anomalies as registry
    assert dissector_class("smtp") is SmtpDissector
    assert set(ANOMALIES) <= set(registry.registry())
    assert all(name.startswith("smtp_") for name in ANOMALIES)


def test_nothing_after_close():
    d = SmtpDissector(new_session("smtp"), Config())
    records = feed(d, [GREETING, (C, b"QUIT\r\n"), (S, b"221 bye\r\n")])
    assert commands(records)[-1] == ("QUIT", "", "221")
    assert d.feed(C, b"NOOP\r\n", 9.0) == [] and d.close(9.0, "fin") == [] and d.gap(C, 5, 9.0) == []
