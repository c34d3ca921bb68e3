"""POP3 dissector: crafted transcripts per feature, fed whole, byte by byte and in random chunks."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest

from maildissect.anomalies import StrictError
from maildissect.config import Config, Limits
from maildissect.model import Anomaly, Command, Credential, MailboxEvent, Message
from maildissect.protocols import pop3 as pop3_mod
from maildissect.protocols.pop3 import Pop3Dissector, looks_like_pop3
from maildissect.redact import redact_record
from tests.helpers import C, S, feed, new_session, of_type, run_all_ways

GREETING = (S, b"+OK Dovecot (Debian) ready. <1896.697170952@dbc.mtview.ca.us>\r\n")
ATTACHMENT = bytes(range(256)) * 3
MSG1 = (b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: Dots\r\n"
        b"Message-ID: <dots-1@example.org>\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nnot the end\r\n"
        b"last line\r\n")
MSG2 = (b"From: carol@example.net\r\nSubject: Report\r\nMessage-ID: <report-2@example.net>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee.\r\n"
        b"--b1\r\nContent-Type: application/octet-stream; name=\"d.bin\"\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=\"d.bin\"\r\n\r\n"
        + base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n") + b"--b1--\r\n")


def stuff(msg: bytes) -> bytes:
    """Dot-stuff and terminate a message as a POP3 server sends it."""
    return (b"\r\n" + msg).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def names(records):
    return [r.name for r in of_type(records, Anomaly)]


def commands(records):
    return of_type(records, Command)


def events(records, action=None):
    return [e for e in of_type(records, MailboxEvent) if action is None or e.action == action]


def run(transcript, **kw):
    return run_all_ways(Pop3Dissector, transcript, **kw)


LOGIN = [(C, b"USER bob\r\n"), (S, b"+OK\r\n"), (C, b"PASS s3cret\r\n"), (S, b"+OK Logged in.\r\n")]


def test_looks_like_pop3():
    assert looks_like_pop3(b"", b"+OK POP3 ready\r\n")
    assert looks_like_pop3(b"USER bob\r\n", b"")
    assert looks_like_pop3(b"CAPA\r\n", b"")
    assert not looks_like_pop3(b"EHLO x\r\n", b"220 mx\r\n")
    assert not looks_like_pop3(b"a1 LOGIN x y\r\n", b"* OK IMAP\r\n")
    assert not looks_like_pop3(b"GET / HTTP/1.1\r\n", b"")


def test_full_session_user_pass_stat_list_uidl_retr_top_dele_quit():
    t = [GREETING, (C, b"CAPA\r\n"),
         (S, b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n"),
         *LOGIN,
         (C, b"STAT\r\n"), (S, b"+OK 2 %d\r\n" % (len(MSG1) + len(MSG2))),
         (C, b"LIST\r\n"), (S, b"+OK 2 messages:\r\n1 %d\r\n2 %d\r\n.\r\n" % (len(MSG1), len(MSG2))),
         (C, b"UIDL\r\n"), (S, b"+OK\r\n1 00000001a\r\n2 00000002b\r\n.\r\n"),
         (C, b"LIST 2\r\n"), (S, b"+OK 2 %d\r\n" % len(MSG2)),
         (C, b"UIDL 1\r\n"), (S, b"+OK 1 00000001a\r\n"),
         (C, b"RETR 1\r\n"), (S, b"+OK %d octets\r\n" % len(MSG1) + stuff(MSG1)),
         (C, b"TOP 2 0\r\n"), (S, b"+OK\r\n" + stuff(MSG2.split(b"\r\n\r\n")[0] + b"\r\n\r\n")),
         (C, b"RETR 2\r\n"), (S, b"+OK\r\n" + stuff(MSG2)),
         (C, b"DELE 1\r\n"), (S, b"+OK Marked to be deleted.\r\n"),
         (C, b"NOOP\r\n"), (S, b"+OK\r\n"),
         (C, b"QUIT\r\n"), (S, b"+OK Logging out, messages deleted.\r\n")]
    recs, sess = run(t)
    assert names(recs) == []
    cmds = commands(recs)
    assert [(c.command, c.argument, c.reply_code) for c in cmds] == [
        ("", "", "+OK"), ("CAPA", "", "+OK"), ("USER", "bob", "+OK"), ("PASS", "s3cret", "+OK"), ("STAT", "", "+OK"),
        ("LIST", "", "+OK"), ("UIDL", "", "+OK"), ("LIST", "2", "+OK"), ("UIDL", "1", "+OK"), ("RETR", "1", "+OK"),
        ("TOP", "2 0", "+OK"), ("RETR", "2", "+OK"), ("DELE", "1", "+OK"), ("NOOP", "", "+OK"), ("QUIT", "", "+OK")]
    assert cmds[3].secret_at == 0 and cmds[2].secret_at is None
    assert cmds[5].reply_text == "2 messages:" and cmds[9].reply_text == "%d octets" % len(MSG1)
    assert sess.extensions[:2] == ["CAPA", "TOP"] and "SASL PLAIN LOGIN" in sess.extensions
    assert sess.banner.startswith("Dovecot") and sess.server_software == "Dovecot"
    assert (sess.auth_user, sess.auth_mechanism) == ("bob", "USER/PASS")
    (cred,) = of_type(recs, Credential)
    assert (cred.mechanism, cred.user, cred.secret, cred.success) == ("USER/PASS", "bob", "s3cret", True)
    msgs = of_type(recs, Message)
    assert [(m.kind, m.complete, m.source) for m in msgs] == [
        ("body", True, "RETR 1"), ("top", False, "TOP 2 0"), ("body", True, "RETR 2")]
    assert msgs[0].sha256 == sha(MSG1) and msgs[0].size == len(MSG1) and msgs[0].subject == "Dots"
    assert msgs[2].sha256 == sha(MSG2) and [(a.filename, a.sha256) for a in msgs[2].attachments] == [
        ("d.bin", sha(ATTACHMENT))]
    assert msgs[1].subject == "Report" and msgs[1].message_id == "<report-2@example.net>"
    assert all(m.reply_code == "+OK" and m.direction == "retrieved" for m in msgs)
    acts = [(e.action, e.seq, e.size, e.count) for e in events(recs)]
    assert acts == [
        ("stat", None, len(MSG1) + len(MSG2), 2), ("list", 1, len(MSG1), None), ("list", 2, len(MSG2), None),
        ("uidl", 1, None, None), ("uidl", 2, None, None), ("list", 2, len(MSG2), None), ("uidl", 1, None, None),
        ("retr", 1, len(MSG1), None), ("top", 2, msgs[1].size, None), ("retr", 2, len(MSG2), None),
        ("dele", 1, None, None), ("expunge", 1, None, None)]
    ev = events(recs)
    assert ev[7].message_id == "<dots-1@example.org>" and ev[7].detail == "uidl 00000001a"
    assert ev[-1].detail == "uidl 00000001a" and all(e.user == "bob" and e.mailbox == "INBOX" for e in ev)


def test_terminator_split_at_every_position():
    server = b"+OK\r\n" + stuff(MSG1) + b"+OK bye\r\n"
    base = [GREETING, *LOGIN, (C, b"RETR 1\r\nQUIT\r\n")]

    def go(chunks):
        d = Pop3Dissector(new_session("pop3"), Config())
        out = []
        for i, (side, data) in enumerate(base):
            out += d.feed(side, data, float(i))
        for c in chunks:
            out += d.feed(S, c, 9.0)
        return out + d.close(10.0, "fin")

    reference = go([server])
    assert of_type(reference, Message)[0].sha256 == sha(MSG1)
    for k in range(1, len(server)):
        assert go([server[:k], server[k:]]) == reference, f"split at {k}"
    for k in range(1, len(server) - 3, 3):
        assert go([server[:k], server[k:k + 2], server[k + 2:k + 3], server[k + 3:]]) == reference


def test_empty_multiline_and_dot_only_lines():
    t = [GREETING, *LOGIN, (C, b"LIST\r\n"), (S, b"+OK 0 messages\r\n.\r\n"),
         (C, b"RETR 1\r\n"), (S, b"+OK\r\n..\r\n...\r\n.\r\n")]
    recs, _ = run(t)
    (msg,) = of_type(recs, Message)
    assert msg.size == len(b".\r\n..\r\n") and msg.sha256 == sha(b".\r\n..\r\n")
    assert events(recs, "list") == []


@pytest.mark.parametrize("transcript,mech,user,secret,ok", [
    ([(C, b"AUTH PLAIN\r\n"), (S, b"+ \r\n"), (C, base64.b64encode(b"\0bob\0pw") + b"\r\n"), (S, b"+OK\r\n")],
     "PLAIN", "bob", "pw", True),
    ([(C, b"AUTH PLAIN " + base64.b64encode(b"\0bob\0pw") + b"\r\n"), (S, b"-ERR [AUTH] failed\r\n")],
     "PLAIN", "bob", "pw", False),
    ([(C, b"AUTH LOGIN\r\n"), (S, b"+ VXNlcm5hbWU6\r\n"), (C, b"Ym9i\r\n"), (S, b"+ UGFzc3dvcmQ6\r\n"),
      (C, b"cHc=\r\n"), (S, b"+OK\r\n")], "LOGIN", "bob", "pw", True),
    ([(C, b"AUTH CRAM-MD5\r\n"), (S, b"+ PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+\r\n"),
      (C, base64.b64encode(b"bob 0123456789abcdef0123456789abcdef") + b"\r\n"), (S, b"+OK\r\n")],
     "CRAM-MD5", "bob", "0123456789abcdef0123456789abcdef", True),
    ([(C, b"AUTH XOAUTH2 " + base64.b64encode(b"user=bob\x01auth=Bearer tk\x01\x01") + b"\r\n"), (S, b"+OK\r\n")],
     "XOAUTH2", "bob", "tk", True),
    ([(C, b"APOP bob c4c9334bac560ecc979e58001b3e22fb\r\n"), (S, b"+OK maildrop has 0 messages\r\n")],
     "APOP", "bob", "c4c9334bac560ecc979e58001b3e22fb", True),
])
def test_authentication(transcript, mech, user, secret, ok):
    recs, sess = run([GREETING, *transcript, (C, b"STAT\r\n"), (S, b"+OK 0 0\r\n")])
    (cred,) = of_type(recs, Credential)
    assert (cred.mechanism, cred.user, cred.secret, cred.success) == (mech, user, secret, ok)
    assert [c.command for c in commands(recs)] == ["", transcript[0][1].split()[0].decode(), "STAT"]
    cmd = commands(recs)[1]  # an initial response or a digest is marked secret, the mechanism or user not
    assert redact_record(cmd).argument == (cmd.argument.split()[0] + " ********" if " " in cmd.argument
                                           else cmd.argument)
    assert sess.auth_user == (user if ok else None)
    if mech == "APOP":
        assert cred.detail == "timestamp <1896.697170952@dbc.mtview.ca.us>"
    assert names(recs) == []


def test_auth_without_mechanism_lists_mechanisms_or_fails():
    t = [GREETING, (C, b"AUTH\r\n"), (S, b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"), (C, b"AUTH\r\n"),
         (S, b"-ERR 1 argument required\r\n"), (C, b"QUIT\r\n"), (S, b"+OK\r\n")]
    recs, _ = run(t)
    assert [(c.command, c.reply_code) for c in commands(recs)] == [
        ("", "+OK"), ("AUTH", "+OK"), ("AUTH", "-ERR"), ("QUIT", "+OK")]
    assert of_type(recs, Credential) == [] and names(recs) == []


def test_pipelined_commands():
    t = [GREETING, (C, b"USER bob\r\nPASS pw\r\nSTAT\r\nLIST\r\nRETR 1\r\nQUIT\r\n"),
         (S, b"+OK\r\n+OK\r\n+OK 1 %d\r\n+OK\r\n1 %d\r\n.\r\n+OK\r\n" % (len(MSG1), len(MSG1)) + stuff(MSG1)
          + b"+OK bye\r\n")]
    recs, _ = run(t)
    assert [c.command for c in commands(recs)] == ["", "USER", "PASS", "STAT", "LIST", "RETR", "QUIT"]
    assert of_type(recs, Message)[0].sha256 == sha(MSG1)
    assert names(recs) == []


def test_errors_unknown_commands_and_rset():
    t = [GREETING, *LOGIN, (C, b"RETR 9\r\n"), (S, b"-ERR There's no message 9.\r\n"),
         (C, b"XYZZY\r\n"), (S, b"-ERR Unknown command\r\n"), (C, b"FOO bar\r\n"), (S, b"-ERR Unknown\r\n"),
         (C, b"DELE 1\r\n"), (S, b"+OK\r\n"), (C, b"RSET\r\n"), (S, b"+OK\r\n"), (C, b"QUIT\r\n"), (S, b"+OK\r\n")]
    recs, _ = run(t)
    assert names(recs) == ["pop3_unknown_command"]
    assert [(c.command, c.reply_code) for c in commands(recs)][3:6] == [
        ("RETR", "-ERR"), ("XYZZY", "-ERR"), ("FOO", "-ERR")]
    assert of_type(recs, Message) == []
    assert [e.action for e in events(recs)] == ["dele", "rset"]


def test_failed_login():
    recs, sess = run([GREETING, (C, b"USER bob\r\n"), (S, b"+OK\r\n"), (C, b"PASS nope\r\n"),
                      (S, b"-ERR [AUTH] Authentication failed.\r\n")])
    (cred,) = of_type(recs, Credential)
    assert cred.success is False and sess.auth_user is None


def test_stls_switches_to_tls():
    hello = b"\x16\x03\x01\x00\x05hello"
    recs, sess = run([GREETING, (C, b"STLS\r\n"), (S, b"+OK Begin TLS negotiation now.\r\n"), (C, hello),
                      (S, b"\x16\x03\x03\x00\x01x"), (C, b"USER bob\r\n")])
    assert sess.tls and sess.tls_bytes_client == len(hello) + 10 and sess.tls_bytes_server == 6
    assert [c.command for c in commands(recs)] == ["", "STLS"]
    recs, sess = run([GREETING, (C, b"STLS\r\nUSER bob\r\n"), (S, b"+OK go\r\n")])
    assert names(recs) == ["pop3_stls_pipelined"]
    recs, sess = run([GREETING, (C, b"STLS\r\n"), (S, b"-ERR no\r\n"), (C, b"USER bob\r\n"), (S, b"+OK\r\n")])
    assert not sess.tls and [c.command for c in commands(recs)] == ["", "STLS", "USER"]


def test_stls_with_decrypted_plaintext():
    recs, sess = run_all_ways(Pop3Dissector, [GREETING, (C, b"STLS\r\n"), (S, b"+OK\r\n"), *LOGIN], decrypted=True)
    assert sess.tls and sess.auth_user == "bob"


def test_unexpected_multiline_after_single_line_ok():
    t = [GREETING, *LOGIN, (C, b"XTND XLST\r\n"), (S, b"+OK\r\nline one\r\nline two\r\n.\r\n"), (C, b"STAT\r\n"),
         (S, b"+OK 0 0\r\n")]
    recs, _ = run(t)
    assert names(recs) == ["pop3_unexpected_multiline"]
    assert [c.command for c in commands(recs)][-1] == "STAT" and commands(recs)[-1].reply_text == "0 0"


def test_unsolicited_and_bad_replies():
    recs, _ = run([GREETING, (S, b"+OK what\r\n"), (S, b"garbage\r\nmore garbage\r\n")])
    assert names(recs) == ["pop3_unexpected_reply", "pop3_bad_reply"]


def test_message_over_max_message_size_is_hashed():
    cfg = Config(limits=Limits(max_message_size=100))
    t = [GREETING, *LOGIN, (C, b"RETR 2\r\n"), (S, b"+OK\r\n" + stuff(MSG2)), (C, b"QUIT\r\n"), (S, b"+OK\r\n")]
    recs, _ = run(t, config=cfg)
    assert names(recs) == ["pop3_message_too_large"]
    (msg,) = of_type(recs, Message)
    assert msg.size == len(MSG2) and msg.sha256 == sha(MSG2) and not msg.complete and msg.subject == "Report"
    assert commands(recs)[-1].reply_code == "+OK"


def test_unterminated_multiline_at_close():
    recs, _ = run([GREETING, *LOGIN, (C, b"RETR 1\r\n"), (S, b"+OK\r\n" + MSG1[:60])])
    assert names(recs) == ["pop3_unterminated_multiline"]
    (msg,) = of_type(recs, Message)
    assert not msg.complete and msg.size == 60


def test_gap_inside_retr_and_resync():
    body = stuff(MSG2)
    t = [GREETING, *LOGIN, (C, b"RETR 2\r\n"), (S, b"+OK\r\n" + body[:120]), (S, "gap", 50),
         (S, body[170:] + b"+OK bye\r\n"), (C, b"QUIT\r\n")]
    recs, sess = run(t)
    (msg,) = of_type(recs, Message)
    assert not msg.complete and msg.missing_bytes == 50 and msg.sha256 is None and msg.subject == "Report"
    assert not sess.complete
    t = [GREETING, *LOGIN, (C, b"STAT\r\n"), (S, b"+OK 1 "), (S, "gap", 20), (S, b"junk\r\n+OK 1 2\r\n"),
         (C, b"LIS"), (C, "gap", 3), (C, b"xx\r\nNOOP\r\n"), (S, b"+OK\r\n")]
    recs, _ = run(t)
    assert names(recs) == ["pop3_resync", "pop3_resync"]


def test_line_too_long_and_too_many_pending():
    cfg = Config(limits=Limits(max_line=100, max_pending_commands=2))
    t = [GREETING, (C, b"USER " + b"x" * 300 + b"\r\n"), (C, b"NOOP\r\nNOOP\r\nNOOP\r\n"), (S, b"+OK\r\n")]
    recs, _ = run(t, config=cfg)
    assert names(recs) == ["pop3_line_too_long", "too_many_pending_commands"]


def test_strict_mode_raises():
    with pytest.raises(StrictError):
        feed(Pop3Dissector(new_session("pop3"), Config(strict=True)), [GREETING, (C, b"BOGUS\r\n")])


def test_large_retr_is_fast():
    body = (b"Subject: big\r\n\r\n" + (b"0123456789abcdef" * 4 + b"\r\n") * 80000)  # ~5 MB
    server = b"+OK\r\n" + stuff(body)
    d = Pop3Dissector(new_session("pop3"), Config())
    out = d.feed(S, GREETING[1], 0.0) + d.feed(C, b"RETR 1\r\n", 1.0)
    start = time.perf_counter()
    for i in range(0, len(server), 1448):
        out += d.feed(S, server[i:i + 1448], 2.0)
    elapsed = time.perf_counter() - start
    (msg,) = of_type(out, Message)
    assert msg.sha256 == sha(body)
    assert elapsed < 2.0, elapsed


def test_every_anomaly_name_is_declared():
    from maildissect.anomalies import registry
    declared = registry()
    for name in pop3_mod.ANOMALIES:
        assert name.startswith("pop3_") and name in declared
