"""IMAP dissector: crafted transcripts per feature, fed whole, byte by byte and in random chunks."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib

import pytest

from maildissect.anomalies import StrictError
from maildissect.config import Config, Limits
from maildissect.model import Anomaly, Command, Credential, MailboxEvent, Message
from maildissect.protocols import imap as imap_mod
from maildissect.protocols.imap import ImapDissector, Literal, decode_mailbox_name, looks_like_imap, tokenize
from maildissect.redact import redact_record
from tests.helpers import C, S, feed, new_session, of_type, run_all_ways

GREETING = (S, b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE AUTH=PLAIN] Dovecot (Debian) ready.\r\n")

MSG1 = (b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: Lunch\r\n"
        b"Message-ID: <lunch-1@example.org>\r\nDate: Mon, 1 Jan 2024 12:00:00 +0000\r\n\r\n"
        b"Shall we meet at noon?\r\n")
ATTACHMENT = bytes(range(256)) * 4
MSG2 = (b"From: carol@example.net\r\nTo: bob@example.com\r\nSubject: Report\r\n"
        b"Message-ID: <report-2@example.net>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        b"--b1\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n"
        b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n\r\n"
        + base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n")
        + b"--b1--\r\n")
ATTACHMENT_B64 = base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lit(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def names(records):
    return [r.name for r in of_type(records, Anomaly)]


def commands(records):
    return of_type(records, Command)


def events(records, action=None):
    evs = of_type(records, MailboxEvent)
    return [e for e in evs if action is None or e.action == action]


def login(tag=b"a1", user=b"bob", password=b"pw"):
    return [(C, tag + b" LOGIN " + user + b" " + password + b"\r\n"), (S, tag + b" OK Logged in\r\n")]


SELECT = [(C, b"a2 SELECT INBOX\r\n"),
          (S, b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 2 EXISTS\r\n* 0 RECENT\r\n"
              b"* OK [UIDVALIDITY 1700000000] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
              b"a2 OK [READ-WRITE] Select completed.\r\n")]


def run(transcript, **kw):
    return run_all_ways(ImapDissector, transcript, **kw)


# ---------------------------------------------------------------------------
# tokenizer and helpers


def test_tokenize_atoms_strings_nil_lists():
    toks, problems = tokenize([b'* 1 FETCH (FLAGS (\\Seen $Junk) X "a \\"q\\" \\\\ b" NIL nil ())'], [])
    assert problems == []
    assert toks == ["*", "1", "FETCH", ["FLAGS", ["\\Seen", "$Junk"], "X", b'a "q" \\ b', None, None, []]]


def test_tokenize_section_atoms_keep_brackets_and_partial():
    toks, _ = tokenize([b'(BODY[HEADER.FIELDS (FROM "To")]<0.100> BINARY.PEEK[1.2]<5> BODY[])'], [])
    assert toks == [["BODY[HEADER.FIELDS (FROM \"To\")]<0.100>", "BINARY.PEEK[1.2]<5>", "BODY[]"]]


def test_tokenize_literals_between_parts():
    a, b = Literal(3, 3), Literal(0, 0)
    a.add(b"abc")
    toks, problems = tokenize([b"* 1 FETCH (BODY[1] ", b" BODY[2] ", b")"], [a, b])
    assert problems == []
    assert toks == ["*", "1", "FETCH", ["BODY[1]", a, "BODY[2]", b]]


def test_tokenize_reports_problems_and_bounds_nesting():
    toks, problems = tokenize([b'(a (b "unterminated'], [])
    assert "unterminated string" in problems and "unbalanced parentheses" in problems
    toks, problems = tokenize([b"(" * 10 + b"x" + b")" * 10 + b" y"], [], max_nesting=3)
    assert "nesting" in problems
    assert toks[-1] == "y"
    depth, node = 0, toks[0]
    while isinstance(node, list) and node:
        depth, node = depth + 1, node[0]
    assert depth <= 3


def test_decode_mailbox_name_modified_utf7():
    assert decode_mailbox_name("Entw&APw-rfe") == "Entwürfe"
    assert decode_mailbox_name("A&-B") == "A&B"
    assert decode_mailbox_name("&ZeVnLIqe-") == "日本語"
    assert decode_mailbox_name("bad&zz") == "bad&zz"
    assert decode_mailbox_name("INBOX") == "INBOX"


def test_looks_like_imap():
    assert looks_like_imap(b"", b"* OK IMAP4rev1 ready\r\n")
    assert looks_like_imap(b"", b"* PREAUTH hi\r\n")
    assert looks_like_imap(b"a1 CAPABILITY\r\n", b"")
    assert looks_like_imap(b". LOGIN bob pw\r\n", b"")
    assert not looks_like_imap(b"EHLO x\r\n", b"220 mx ESMTP\r\n")
    assert not looks_like_imap(b"USER bob\r\n", b"+OK POP3\r\n")
    assert not looks_like_imap(b"GET / HTTP/1.1\r\n", b"")


# ---------------------------------------------------------------------------
# a whole session


def test_login_select_fetch_full_body():
    t = [GREETING, *login(), *SELECT,
         (C, b"a3 UID FETCH 2 (UID FLAGS RFC822.SIZE BODY.PEEK[])\r\n"),
         (S, b"* 2 FETCH (UID 2 FLAGS (\\Seen) RFC822.SIZE %d BODY[] " % len(MSG1) + lit(MSG1)
          + b")\r\na3 OK Fetch completed.\r\n"),
         (C, b"a4 LOGOUT\r\n"), (S, b"* BYE Logging out\r\na4 OK Logout completed.\r\n")]
    recs, sess = run(t)
    assert names(recs) == []
    cmds = commands(recs)
    assert [(c.tag, c.command, c.reply_code) for c in cmds] == [
        (None, "", "OK"), ("a1", "LOGIN", "OK"), ("a2", "SELECT", "OK"), ("a3", "UID FETCH", "OK"),
        ("a4", "LOGOUT", "OK")]
    assert cmds[0].reply_text.endswith("Dovecot (Debian) ready.")
    assert cmds[1].secret_at == len("bob ") and cmds[1].argument == "bob pw"
    assert cmds[3].argument == "2 (UID FLAGS RFC822.SIZE BODY.PEEK[])"
    assert cmds[3].latency == 1.0 and cmds[3].reply_text == "Fetch completed."
    assert sess.banner == "Dovecot (Debian) ready." and sess.server_software == "Dovecot"
    assert "SASL-IR" in sess.extensions and sess.auth_user == "bob" and sess.auth_mechanism == "LOGIN"
    (cred,) = of_type(recs, Credential)
    assert (cred.mechanism, cred.user, cred.secret, cred.success) == ("LOGIN", "bob", "pw", True)
    (msg,) = of_type(recs, Message)
    assert msg.direction == "retrieved" and msg.complete and msg.kind == "body"
    assert msg.size == len(MSG1) and msg.sha256 == sha(MSG1)
    assert msg.subject == "Lunch" and msg.message_id == "<lunch-1@example.org>"
    assert msg.source == "UID FETCH 2 BODY[]" and msg.reply_code == "OK" and msg.ts == 6.0
    (sel,) = events(recs, "select")
    assert (sel.user, sel.mailbox, sel.uidvalidity, sel.count) == ("bob", "INBOX", 1700000000, 2)
    assert "\\Seen" in sel.flags and "access=READ-WRITE" in sel.detail and "uidnext=3" in sel.detail
    (fe,) = events(recs, "fetch")
    assert (fe.uid, fe.seq, fe.flags, fe.size, fe.message_id) == (2, 2, ["\\Seen"], len(MSG1), "<lunch-1@example.org>")
    assert fe.uidvalidity == 1700000000


def test_greeting_preauth_and_bye():
    recs, sess = run([(S, b"* PREAUTH [CAPABILITY IMAP4rev2] welcome back\r\n")])
    (g,) = commands(recs)
    assert g.command == "" and g.reply_code == "PREAUTH" and sess.extensions == ["IMAP4rev2"]
    recs, _ = run([(S, b"* BYE too busy\r\n")])
    assert commands(recs)[0].reply_code == "BYE"


def test_rfc822_forms_and_binary_literal8():
    head, body = MSG1.split(b"\r\n\r\n", 1)
    t = [GREETING, *login(), *SELECT,
         (C, b"a3 FETCH 1 (RFC822)\r\n"),
         (S, b"* 1 FETCH (RFC822 " + lit(MSG1) + b")\r\na3 OK\r\n"),
         (C, b"a4 FETCH 1 (RFC822.HEADER)\r\n"),
         (S, b"* 1 FETCH (RFC822.HEADER " + lit(head + b"\r\n\r\n") + b")\r\na4 OK\r\n"),
         (C, b"a5 FETCH 1 (BINARY.PEEK[])\r\n"),
         (S, b"* 1 FETCH (BINARY[] ~" + lit(MSG1) + b")\r\na5 OK\r\n")]
    recs, _ = run(t)
    msgs = of_type(recs, Message)
    assert [(m.kind, m.complete, m.source) for m in msgs] == [
        ("body", True, "FETCH 1 RFC822"), ("header", False, "FETCH 1 RFC822.HEADER"),
        ("body", True, "FETCH 1 BINARY[]")]
    assert msgs[0].sha256 == msgs[2].sha256 == sha(MSG1)
    assert msgs[1].subject == "Lunch"
    assert names(recs) == []


def test_header_fields_text_and_header_plus_text():
    head, body = MSG1.split(b"\r\n\r\n", 1)
    head += b"\r\n\r\n"
    fields = b"Subject: Lunch\r\nFrom: Alice <alice@example.org>\r\n\r\n"
    t = [GREETING, *login(), *SELECT,
         (C, b"a3 UID FETCH 1:2 (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])\r\n"),
         (S, b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (FROM SUBJECT)] " + lit(fields) + b")\r\n"
             b"* 2 FETCH (UID 2 BODY[HEADER.FIELDS (FROM SUBJECT)] NIL)\r\na3 OK\r\n"),
         (C, b"a4 UID FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[TEXT])\r\n"),
         (S, b"* 1 FETCH (UID 1 BODY[HEADER] " + lit(head) + b" BODY[TEXT] " + lit(body) + b")\r\na4 OK\r\n"),
         (C, b"a5 UID FETCH 1 (BODY.PEEK[TEXT])\r\n"),
         (S, b"* 1 FETCH (UID 1 BODY[TEXT] " + lit(body) + b")\r\na5 OK\r\n")]
    recs, _ = run(t)
    msgs = of_type(recs, Message)
    assert [(m.kind, m.complete) for m in msgs] == [("header", False), ("body", True), ("text", False)]
    assert msgs[0].subject == "Lunch" and msgs[0].from_ and "alice@example.org" in msgs[0].from_
    assert msgs[0].source == "UID FETCH 1 BODY[HEADER.FIELDS (FROM SUBJECT)]"
    assert msgs[1].sha256 == sha(MSG1) and msgs[1].message_id == "<lunch-1@example.org>"
    assert msgs[2].size == len(body) and msgs[2].sha256 == sha(body)
    assert len(events(recs, "fetch")) == 4


def test_several_literals_in_one_response_and_parts_with_mime():
    mime_hdr = (b"Content-Type: application/octet-stream; name=\"data.bin\"\r\n"
                b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n\r\n")
    t = [GREETING, *login(), *SELECT,
         (C, b"a3 UID FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[2])\r\n"),
         (S, b"* 2 FETCH (UID 2 BODY[1] " + lit(b"See attached.\r\n") + b" BODY[2.MIME] " + lit(mime_hdr)
          + b" BODY[2] " + lit(ATTACHMENT_B64) + b")\r\na3 OK\r\n")]
    recs, _ = run(t)
    msgs = of_type(recs, Message)
    assert [(m.kind, m.source) for m in msgs] == [("part", "UID FETCH 2 BODY[1]"), ("part", "UID FETCH 2 BODY[2]")]
    att = msgs[1]
    assert att.size == len(ATTACHMENT_B64) and att.sha256 == sha(ATTACHMENT_B64) and not att.complete
    assert [(a.filename, a.sha256, a.size) for a in att.attachments] == [("data.bin", sha(ATTACHMENT), len(ATTACHMENT))]


BODYSTRUCTURE = (b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 15 1 NIL NIL NIL NIL)'
                 b'("application" "octet-stream" ("name" "data.bin") NIL NIL "base64" %d NIL '
                 b'("attachment" ("filename" "data.bin")) NIL NIL) "mixed" ("boundary" "b1") NIL NIL NIL)'
                 % len(ATTACHMENT_B64))
ENVELOPE = (b'("Mon, 1 Jan 2024 12:00:00 +0000" "=?utf-8?q?R=C3=A9port?=" (("Carol" NIL "carol" "example.net")) '
            b'(("Carol" NIL "carol" "example.net")) (("Carol" NIL "carol" "example.net")) '
            b'((NIL NIL "bob" "example.com")) NIL NIL NIL "<report-2@example.net>")')


def test_envelope_bodystructure_and_part_download_decoded_by_structure():
    t = [GREETING, *login(), *SELECT,
         (C, b"a3 UID FETCH 2 (UID RFC822.SIZE FLAGS INTERNALDATE ENVELOPE BODYSTRUCTURE)\r\n"),
         (S, b'* 2 FETCH (UID 2 RFC822.SIZE %d FLAGS () INTERNALDATE "01-Jan-2024 12:00:01 +0000" ENVELOPE '
          % len(MSG2) + ENVELOPE + b" BODYSTRUCTURE " + BODYSTRUCTURE + b")\r\na3 OK\r\n"),
         (C, b"a4 UID FETCH 2 (BODY.PEEK[2])\r\n"),
         (S, b"* 2 FETCH (UID 2 BODY[2] " + lit(ATTACHMENT_B64) + b")\r\na4 OK\r\n")]
    recs, _ = run(t)
    ev = events(recs, "fetch")[0]
    assert ev.message_id == "<report-2@example.net>" and ev.size == len(MSG2) and ev.flags == []
    detail = json.loads(ev.detail)
    assert detail["envelope"]["subject"] == "Réport"
    assert detail["envelope"]["from"] == ["Carol <carol@example.net>"]
    assert detail["envelope"]["to"] == ["bob@example.com"]
    assert detail["internaldate"] == "01-Jan-2024 12:00:01 +0000"
    parts = {p["part"]: p for p in detail["bodystructure"]}
    assert parts[""]["type"] == "multipart/mixed" and parts["1"]["type"] == "text/plain"
    assert parts["2"]["filename"] == "data.bin" and parts["2"]["encoding"] == "base64"
    assert parts["1"]["lines"] == 1 and parts["2"]["disposition"] == "attachment"
    (msg,) = of_type(recs, Message)
    assert msg.kind == "part" and msg.sha256 == sha(ATTACHMENT_B64)
    assert [(a.filename, a.sha256) for a in msg.attachments] == [("data.bin", sha(ATTACHMENT))]


def test_bodystructure_with_encapsulated_message_and_its_text():
    nested = (b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 1 NIL NIL NIL NIL)'
              b'("message" "rfc822" NIL NIL NIL "7bit" %d (NIL "inner" NIL NIL NIL NIL NIL NIL NIL "<i@x>") '
              b'(("text" "plain" NIL NIL NIL "7bit" 5 1)("application" "octet-stream" ("name" "data.bin") NIL NIL '
              b'"base64" %d) "mixed" ("boundary" "zz")) 12 NIL NIL NIL NIL) "mixed" ("boundary" "b") NIL NIL NIL)'
              % (len(MSG2), len(ATTACHMENT_B64)))
    inner_text = MSG2.split(b"\r\n\r\n", 1)[1].replace(b"b1", b"zz")
    t = [GREETING, *login(), *SELECT,
         (C, b"a3 UID FETCH 2 (BODYSTRUCTURE)\r\n"),
         (S, b"* 2 FETCH (UID 2 BODYSTRUCTURE " + nested + b")\r\na3 OK\r\n"),
         (C, b"a4 UID FETCH 2 (BODY.PEEK[2.TEXT])\r\n"),
         (S, b"* 2 FETCH (UID 2 BODY[2.TEXT] " + lit(inner_text) + b")\r\na4 OK\r\n")]
    recs, _ = run(t)
    parts = json.loads(events(recs, "fetch")[0].detail)["bodystructure"]
    assert [(p["part"], p["type"]) for p in parts] == [
        ("", "multipart/mixed"), ("1", "text/plain"), ("2", "message/rfc822"), ("2.TEXT", "multipart/mixed"),
        ("2.1", "text/plain"), ("2.2", "application/octet-stream")]
    assert parts[2]["envelope"] == {"subject": "inner", "message_id": "<i@x>"}
    (msg,) = of_type(recs, Message)
    assert msg.kind == "text" and msg.sha256 == sha(inner_text)
    assert [(a.filename, a.sha256) for a in msg.attachments] == [("data.bin", sha(ATTACHMENT))]


def test_partial_fetches_reassembled_into_one_message():
    chunk = 40
    pieces = [MSG2[i:i + chunk] for i in range(0, len(MSG2), chunk)]
    t = [GREETING, *login(), *SELECT]
    for n, piece in enumerate(pieces):
        tag = b"p%d" % n
        t.append((C, tag + b" UID FETCH 2 (BODY.PEEK[]<%d.%d>)\r\n" % (n * chunk, chunk)))
        t.append((S, b"* 2 FETCH (UID 2 BODY[]<%d> " % (n * chunk) + lit(piece) + b")\r\n" + tag + b" OK\r\n"))
    recs, _ = run(t, seeds=(1,))
    (msg,) = of_type(recs, Message)
    assert msg.complete and msg.kind == "body" and msg.sha256 == sha(MSG2)
    assert [(a.filename, a.sha256) for a in msg.attachments] == [("data.bin", sha(ATTACHMENT))]
    assert msg.source.startswith("UID FETCH 2 BODY[]<0>") and msg.reply_code == "OK"
    assert names(recs) == []


def test_partial_fetch_shorter_than_requested_is_whole_and_preview_is_partial():
    t = [GREETING, *login(), *SELECT,
         (C, b"a3 FETCH 1 (BODY.PEEK[]<0.100000>)\r\n"),
         (S, b"* 1 FETCH (BODY[]<0> " + lit(MSG1) + b")\r\na3 OK\r\n"),
         (C, b"a4 FETCH 2 (BODY.PEEK[]<0.30>)\r\n"),
         (S, b"* 2 FETCH (BODY[]<0> " + lit(MSG2[:30]) + b")\r\na4 OK\r\n")]
    recs, _ = run(t)
    msgs = of_type(recs, Message)
    assert [(m.kind, m.complete) for m in msgs] == [("body", True), ("partial", False)]
    assert msgs[0].sha256 == sha(MSG1) and msgs[1].size == 30


# ---------------------------------------------------------------------------
# literals split everywhere


def feed_at(items, close_ts=100.0):
    """Feed ``[(side, bytes, ts), ...]`` to a fresh dissector; records including close."""
    d = ImapDissector(new_session("imap"), Config())
    out = []
    for side, data, ts in items:
        out += d.feed(side, data, ts)
    return out + d.close(close_ts, "fin")


def test_literal_split_at_every_position():
    server = b"* 1 FETCH (UID 7 BODY[] " + lit(MSG1) + b" FLAGS (\\Seen))\r\na3 OK done\r\n"
    base = [GREETING, *login(), (C, b"a2 SELECT INBOX\r\n"), (S, b"* 1 EXISTS\r\na2 OK\r\n"),
            (C, b"a3 FETCH 1 (UID BODY[] FLAGS)\r\n")]
    base = [(side, data, float(i)) for i, (side, data) in enumerate(base)]
    reference = feed_at(base + [(S, server, 9.0)])
    (msg,) = of_type(reference, Message)
    assert msg.sha256 == sha(MSG1) and msg.complete and names(reference) == []
    for k in range(1, len(server)):
        got = feed_at(base + [(S, server[:k], 9.0), (S, server[k:], 9.0)])
        assert got == reference, f"split at {k}"


def test_client_literals_split_at_every_position():
    client = b"a5 APPEND Sent (\\Seen) " + b"{%d+}\r\n" % len(MSG1) + MSG1 + b"\r\n"
    base = [GREETING, *login()]
    base = [(side, data, float(i)) for i, (side, data) in enumerate(base)]
    tail = [(S, b"a5 OK [APPENDUID 9 41] Append completed.\r\n", 10.0)]
    reference = feed_at(base + [(C, client, 9.0)] + tail)
    assert of_type(reference, Message)[0].sha256 == sha(MSG1)
    assert events(reference, "append")[0].uid == 41
    for k in range(1, len(client)):
        got = feed_at(base + [(C, client[:k], 9.0), (C, client[k:], 9.0)] + tail)
        assert got == reference, f"split at {k}"


def test_zero_length_and_empty_literals():
    t = [GREETING, *login(), (C, b"a3 FETCH 1 (BODY[1] BODY[2])\r\n"),
         (S, b"* 1 FETCH (BODY[1] {0}\r\n BODY[2] \"\")\r\na3 OK\r\n")]
    recs, _ = run(t)
    assert names(recs) == []
    assert [m.size for m in of_type(recs, Message)] == [0, 0]


# ---------------------------------------------------------------------------
# APPEND


def test_append_sync_literal_with_continuation_and_appenduid():
    t = [GREETING, *login(),
         (C, b'a3 APPEND "Sent Items" (\\Seen \\Draft) "01-Jan-2024 12:00:00 +0000" {%d}\r\n' % len(MSG1)),
         (S, b"+ Ready for literal data\r\n"),
         (C, MSG1 + b"\r\n"),
         (S, b"a3 OK [APPENDUID 1700000001 7] Append completed.\r\n")]
    recs, _ = run(t)
    assert names(recs) == []
    (msg,) = of_type(recs, Message)
    assert msg.direction == "appended" and msg.complete and msg.sha256 == sha(MSG1)
    assert msg.source == "APPEND Sent Items" and msg.reply_code == "OK"
    (ev,) = events(recs, "append")
    assert (ev.mailbox, ev.uidvalidity, ev.uid, ev.flags) == ("Sent Items", 1700000001, 7, ["\\Seen", "\\Draft"])
    assert ev.message_id == "<lunch-1@example.org>" and ev.size == len(MSG1)
    assert "01-Jan-2024" in ev.detail
    assert commands(recs)[-1].argument == '"Sent Items" (\\Seen \\Draft) "01-Jan-2024 12:00:00 +0000" {%d}' % len(MSG1)


def test_append_refused_before_literal_keeps_parsing():
    t = [GREETING, *login(),
         (C, b"a3 APPEND INBOX {9999999}\r\n"),
         (S, b"a3 NO [TOOBIG] Message too large\r\n"),
         (C, b"a4 NOOP\r\n"), (S, b"a4 OK\r\n")]
    recs, _ = run(t)
    assert [(c.tag, c.reply_code) for c in commands(recs)] == [(None, "OK"), ("a1", "OK"), ("a3", "NO"), ("a4", "OK")]
    assert of_type(recs, Message) == [] and names(recs) == []


def test_multiappend_and_catenate():
    t = [GREETING, *login(),
         (C, b"a3 APPEND INBOX (\\Seen) {%d+}\r\n" % len(MSG1) + MSG1 + b" {%d+}\r\n" % len(MSG2) + MSG2 + b"\r\n"),
         (S, b"a3 OK [APPENDUID 5 10:11] done\r\n"),
         (C, b"a4 APPEND INBOX CATENATE (TEXT {%d+}\r\n" % len(MSG1) + MSG1 + b' URL "/INBOX;UID=1")\r\n'),
         (S, b"a4 OK done\r\n")]
    recs, _ = run(t)
    msgs = of_type(recs, Message)
    assert [m.sha256 for m in msgs[:2]] == [sha(MSG1), sha(MSG2)]
    assert [e.uid for e in events(recs, "append")] == [10, 11, None]
    assert msgs[2].complete is False and msgs[2].subject == "Lunch"


# ---------------------------------------------------------------------------
# authentication


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@pytest.mark.parametrize("transcript,mech,user,secret,ok", [
    ([(C, b"a1 AUTHENTICATE PLAIN " + b64(b"\0bob\0s3cret") + b"\r\n"), (S, b"a1 OK done\r\n")],
     "PLAIN", "bob", "s3cret", True),
    ([(C, b"a1 AUTHENTICATE PLAIN\r\n"), (S, b"+ \r\n"), (C, b64(b"admin\0bob\0s3cret") + b"\r\n"),
      (S, b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")], "PLAIN", "bob", "s3cret", False),
    ([(C, b"a1 AUTHENTICATE LOGIN\r\n"), (S, b"+ VXNlcm5hbWU6\r\n"), (C, b64(b"bob") + b"\r\n"),
      (S, b"+ UGFzc3dvcmQ6\r\n"), (C, b64(b"s3cret") + b"\r\n"), (S, b"a1 OK\r\n")], "LOGIN", "bob", "s3cret", True),
    ([(C, b"a1 AUTHENTICATE CRAM-MD5\r\n"), (S, b"+ " + b64(b"<1896.697170952@postoffice.example.net>") + b"\r\n"),
      (C, b64(b"bob b913a602c7eda7a495b4e6e7334d3890") + b"\r\n"), (S, b"a1 OK\r\n")],
     "CRAM-MD5", "bob", "b913a602c7eda7a495b4e6e7334d3890", True),
    ([(C, b"a1 AUTHENTICATE XOAUTH2 " + b64(b"user=bob@example.com\x01auth=Bearer ya29.tok\x01\x01") + b"\r\n"),
      (S, b"+ " + b64(b'{"status":"401"}') + b"\r\n"), (C, b"\r\n"), (S, b"a1 NO invalid\r\n")],
     "XOAUTH2", "bob@example.com", "ya29.tok", False),
    ([(C, b"a1 AUTHENTICATE OAUTHBEARER " + b64(b"n,a=bob@example.com,\x01host=imap.example.com\x01port=993\x01"
                                                 b"auth=Bearer tok123\x01\x01") + b"\r\n"), (S, b"a1 OK\r\n")],
     "OAUTHBEARER", "bob@example.com", "tok123", True),
])
def test_authenticate_mechanisms(transcript, mech, user, secret, ok):
    recs, sess = run([GREETING, *transcript, (C, b"a2 NOOP\r\n"), (S, b"a2 OK\r\n")])
    (cred,) = of_type(recs, Credential)
    assert (cred.mechanism, cred.user, cred.secret, cred.success) == (mech, user, secret, ok)
    cmds = commands(recs)
    assert [c.command for c in cmds] == ["", "AUTHENTICATE", "NOOP"]
    # the initial response, when there is one, is marked secret (the mechanism is not)
    assert redact_record(cmds[1]).argument in (mech, mech + " ********") and cmds[1].argument.split()[0] == mech
    assert sess.auth_user == (user if ok else None)
    assert [n for n in names(recs)] == []


def test_authenticate_cancelled_and_malformed():
    recs, _ = run([GREETING, (C, b"a1 AUTHENTICATE PLAIN\r\n"), (S, b"+ \r\n"), (C, b"*\r\n"),
                   (S, b"a1 BAD Authentication aborted\r\n"), (C, b"a2 AUTHENTICATE PLAIN !!!notbase64\r\n"),
                   (S, b"a2 BAD\r\n")])
    creds = of_type(recs, Credential)
    assert creds[0].success is False and "cancelled" in creds[0].detail
    assert names(recs) == ["imap_sasl_malformed"]


# ---------------------------------------------------------------------------
# mailbox state


def test_list_lsub_status_namespace_id_enable():
    t = [GREETING, *login(),
         (C, b'a3 ID ("name" "Thunderbird" "version" "115.3")\r\n'),
         (S, b'* ID ("name" "Dovecot" "version" "2.3.19")\r\na3 OK\r\n'),
         (C, b"a4 ENABLE UTF8=ACCEPT\r\n"), (S, b"* ENABLED UTF8=ACCEPT\r\na4 OK\r\n"),
         (C, b'a5 LIST "" "*"\r\n'),
         (S, b'* LIST (\\HasNoChildren) "/" INBOX\r\n* LIST (\\HasNoChildren \\Sent) "/" "Gesendete Objekte"\r\n'
             b'* LIST (\\Noselect) "/" {5}\r\nA\\"B/\r\na5 OK\r\n'),
         (C, b'a6 LSUB "" "*"\r\n'), (S, b'* LSUB () "." Archive\r\na6 OK\r\n'),
         (C, b"a7 STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)\r\n"),
         (S, b"* STATUS INBOX (MESSAGES 12 UIDNEXT 13 UIDVALIDITY 99 UNSEEN 2)\r\na7 OK\r\n"),
         (C, b"a8 NAMESPACE\r\n"), (S, b'* NAMESPACE (("" "/")) NIL NIL\r\na8 OK\r\n')]
    recs, sess = run(t)
    assert sess.client_software == "Thunderbird 115.3" and sess.server_software == "Dovecot 2.3.19"
    lists = events(recs, "list")
    assert [(e.mailbox, e.flags) for e in lists] == [
        ("INBOX", ["\\HasNoChildren"]), ("Gesendete Objekte", ["\\HasNoChildren", "\\Sent"]),
        ('A\\"B/', ["\\Noselect"])]
    assert [e.mailbox for e in events(recs, "lsub")] == ["Archive"]
    (st,) = events(recs, "status")
    assert (st.mailbox, st.count, st.uidvalidity) == ("INBOX", 12, 99) and "UNSEEN=2" in st.detail
    assert len(events(recs, "namespace")) == 1
    assert names(recs) == []


def test_modified_utf7_mailbox_names_unless_utf8_enabled():
    t = [GREETING, *login(), (C, b"a3 SELECT Entw&APw-rfe\r\n"), (S, b"* 0 EXISTS\r\na3 OK\r\n")]
    recs, _ = run(t)
    assert events(recs, "select")[0].mailbox == "Entwürfe"
    t = [GREETING, *login(), (C, b"a4 ENABLE UTF8=ACCEPT\r\n"), (S, b"a4 OK\r\n"),
         (C, b'a3 SELECT "A&-B"\r\n'), (S, b"a3 OK\r\n")]
    recs, _ = run(t)
    assert events(recs, "select")[0].mailbox == "A&-B"


def test_search_store_copy_move_expunge_close():
    t = [GREETING, *login(), *SELECT,
         (C, b"a3 FETCH 1:2 (UID FLAGS)\r\n"),
         (S, b"* 1 FETCH (UID 1 FLAGS ())\r\n* 2 FETCH (UID 2 FLAGS (\\Seen))\r\na3 OK\r\n"),
         (C, b"a4 UID SEARCH UNSEEN\r\n"), (S, b"* SEARCH 1\r\na4 OK\r\n"),
         (C, b"a5 STORE 1 +FLAGS (\\Deleted)\r\n"), (S, b"* 1 FETCH (FLAGS (\\Deleted))\r\na5 OK\r\n"),
         (C, b"a6 UID COPY 2 Archive\r\n"), (S, b"a6 OK [COPYUID 77 2 500] Copy completed\r\n"),
         (C, b"a7 UID MOVE 2 Trash\r\n"), (S, b"* OK [COPYUID 78 2 9]\r\n* 2 EXPUNGE\r\na7 OK\r\n"),
         (C, b"a8 EXPUNGE\r\n"), (S, b"* 1 EXPUNGE\r\na8 OK\r\n"),
         (C, b"a9 CLOSE\r\n"), (S, b"a9 OK\r\n")]
    recs, _ = run(t)
    assert names(recs) == []
    acts = [(e.action, e.uid, e.seq) for e in events(recs) if e.action != "select"]
    assert acts == [("fetch", 1, 1), ("fetch", 2, 2), ("search", None, None), ("flags", 1, 1), ("store", 1, 1),
                    ("copy", 2, None), ("expunge", 2, 2), ("move", 2, None), ("expunge", 1, 1), ("close", None, None)]
    ev = {e.action: e for e in events(recs)}
    assert ev["search"].count == 1 and "UNSEEN -> 1" in ev["search"].detail
    assert ev["store"].flags == ["\\Deleted"] and "+FLAGS" in ev["store"].detail
    assert ev["flags"].flags == ["\\Deleted"]
    assert "2 -> Archive" in ev["copy"].detail and "uidvalidity=77" in ev["copy"].detail
    assert all(e.mailbox == "INBOX" and e.user == "bob" for e in events(recs))


def test_esearch_results_by_tag():
    t = [GREETING, *login(), *SELECT, (C, b"a3 UID SEARCH RETURN (COUNT ALL) SINCE 1-Jan-2024\r\n"),
         (S, b'* ESEARCH (TAG "a3") UID COUNT 3 ALL 4:6\r\na3 OK\r\n')]
    recs, _ = run(t)
    (ev,) = events(recs, "search")
    assert ev.count == 3 and "ALL 4:6" in ev.detail


def test_idle_done_with_unsolicited_updates():
    t = [GREETING, *login(), *SELECT,
         (C, b"a3 IDLE\r\n"), (S, b"+ idling\r\n"), (S, b"* 3 EXISTS\r\n* 1 FETCH (FLAGS (\\Seen))\r\n"),
         (C, b"DONE\r\n"), (S, b"a3 OK Idle completed.\r\n"), (C, b"a4 NOOP\r\n"), (S, b"a4 OK\r\n")]
    recs, _ = run(t)
    cmds = commands(recs)
    assert [(c.command, c.reply_code) for c in cmds[-2:]] == [("IDLE", "OK"), ("NOOP", "OK")]
    assert cmds[-2].latency == 4.0
    assert [(e.action, e.count) for e in events(recs, "exists")] == [("exists", 3)]
    assert [e.flags for e in events(recs, "flags")] == [["\\Seen"]]
    assert names(recs) == []


def test_pipelining_and_reused_tags():
    t = [GREETING,
         (C, b". CAPABILITY\r\n. LOGIN bob pw\r\n. SELECT INBOX\r\n"),
         (S, b"* CAPABILITY IMAP4rev1 MOVE\r\n. OK CAPABILITY completed\r\n. OK Logged in\r\n"
             b"* 4 EXISTS\r\n. OK [READ-WRITE] selected\r\n")]
    recs, sess = run(t)
    assert [(c.command, c.reply_code) for c in commands(recs)] == [
        ("", "OK"), ("CAPABILITY", "OK"), ("LOGIN", "OK"), ("SELECT", "OK")]
    assert sess.extensions == ["IMAP4rev1", "MOVE"]
    assert events(recs, "select")[0].count == 4


def test_unknown_command_unmatched_tag_and_bad_tag():
    recs, _ = run([GREETING, (C, b"a1 FROBNICATE x\r\n"), (S, b"a1 BAD Unknown command\r\n"),
                   (S, b"zz OK what\r\n"), (C, b"* NOOP\r\n"), (S, b"* BAD tag\r\n")])
    assert names(recs) == ["imap_unknown_command", "imap_unmatched_tag", "imap_bad_tag"]
    assert commands(recs)[1].command == "FROBNICATE" and commands(recs)[1].reply_code == "BAD"


def test_commands_without_reply_are_emitted_at_close():
    recs, _ = run([GREETING, (C, b"a1 NOOP\r\na2 FETCH 1 BODY[]\r\n")])
    assert [(c.tag, c.reply_code) for c in commands(recs)] == [(None, "OK"), ("a1", None), ("a2", None)]


# ---------------------------------------------------------------------------
# STARTTLS and COMPRESS


TLS_HELLO = b"\x16\x03\x01\x00\x05hello"


def test_starttls_stops_parsing_and_counts_bytes():
    t = [GREETING, (C, b"a1 STARTTLS\r\n"), (S, b"a1 OK Begin TLS negotiation now\r\n"),
         (C, TLS_HELLO), (S, b"\x16\x03\x03\x00\x02hi"), (C, b"a2 LOGIN bob pw\r\n")]
    recs, sess = run(t)
    assert sess.tls and sess.tls_bytes_client == len(TLS_HELLO) + 17 and sess.tls_bytes_server == 7
    assert [c.command for c in commands(recs)] == ["", "STARTTLS"]
    assert of_type(recs, Credential) == []


def test_starttls_refused_keeps_parsing():
    recs, sess = run([GREETING, (C, b"a1 STARTTLS\r\n"), (S, b"a1 BAD not now\r\n"), (C, b"a2 NOOP\r\n"),
                      (S, b"a2 OK\r\n")])
    assert not sess.tls and [c.reply_code for c in commands(recs)] == ["OK", "BAD", "OK"]


def test_starttls_plaintext_injection_is_reported():
    recs, sess = run([GREETING, (C, b"a1 STARTTLS\r\na2 LOGIN bob pw\r\n"), (S, b"a1 OK go\r\n")])
    assert sess.tls and "imap_unexpected_response" in names(recs)


def test_starttls_with_decrypted_plaintext_keeps_parsing():
    t = [GREETING, (C, b"a1 STARTTLS\r\n"), (S, b"a1 OK go\r\n"), *login(b"a2"), *SELECT]
    recs, sess = run_all_ways(ImapDissector, t, decrypted=True)
    assert sess.tls and sess.auth_user == "bob" and sess.tls_bytes_client == 0
    assert [c.command for c in commands(recs)] == ["", "STARTTLS", "LOGIN", "SELECT"]


def deflate_stream(*chunks):
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    return [comp.compress(c) + comp.flush(zlib.Z_SYNC_FLUSH) for c in chunks]


def test_compress_deflate_both_directions():
    cli = deflate_stream(b"a3 SELECT INBOX\r\n", b"a4 UID FETCH 2 BODY.PEEK[]\r\n")
    srv = deflate_stream(b"* 2 EXISTS\r\n* OK [UIDVALIDITY 5] x\r\na3 OK done\r\n",
                         b"* 2 FETCH (UID 2 BODY[] " + lit(MSG2) + b")\r\n", b"a4 OK done\r\n")
    t = [GREETING, *login(), (C, b"a2 COMPRESS DEFLATE\r\n"), (S, b"a2 OK DEFLATE active\r\n"),
         (C, cli[0]), (S, srv[0]), (C, cli[1]), (S, srv[1]), (S, srv[2])]
    recs, sess = run(t)
    assert names(recs) == []
    assert [c.command for c in commands(recs)] == ["", "LOGIN", "COMPRESS", "SELECT", "UID FETCH"]
    (msg,) = of_type(recs, Message)
    assert msg.sha256 == sha(MSG2) and msg.complete
    assert [(a.filename, a.sha256) for a in msg.attachments] == [("data.bin", sha(ATTACHMENT))]


def test_compress_garbage_and_gap_stop_the_direction():
    t = [GREETING, *login(), (C, b"a2 COMPRESS DEFLATE\r\n"), (S, b"a2 OK\r\n"), (S, b"\xff\xff\xff\xff garbage")]
    recs, _ = run(t)
    assert names(recs) == ["imap_compress_error"]
    d = ImapDissector(new_session("imap"), Config())
    recs = feed(d, t[:-1] + [(S, "gap", 10), (S, b"more")])
    assert names(recs) == ["imap_compress_error"]


# ---------------------------------------------------------------------------
# limits


def test_literal_over_max_literal_is_hashed_not_kept():
    big = MSG1 + b"x" * 5000 + b"\r\n"
    cfg = Config(limits=Limits(max_literal=1000, max_header_bytes=300))
    t = [GREETING, *login(), (C, b"a3 FETCH 1 BODY[]\r\n"), (S, b"* 1 FETCH (BODY[] " + lit(big) + b")\r\na3 OK\r\n")]
    recs, _ = run(t, config=cfg)
    assert names(recs) == ["imap_literal_too_large"]
    (msg,) = of_type(recs, Message)
    assert msg.size == len(big) and msg.sha256 == sha(big) and not msg.complete
    assert msg.subject == "Lunch"  # from the kept prefix
    assert commands(recs)[-1].reply_code == "OK"


def test_line_too_long_is_skipped_and_parsing_resumes():
    cfg = Config(limits=Limits(max_line=200))
    t = [GREETING, (C, b"a1 NOOP " + b"x" * 500 + b"\r\n"), (C, b"a2 NOOP\r\n"), (S, b"a2 OK\r\n")]
    recs, _ = run(t, config=cfg)
    assert names(recs)[0] == "imap_line_too_long"
    assert [(c.tag, c.reply_code) for c in commands(recs)] == [(None, "OK"), ("a2", "OK")]


def test_item_text_over_max_line_across_literals_is_skipped_but_literals_counted():
    cfg = Config(limits=Limits(max_line=100))
    server = b"* 1 FETCH (" + b"".join(b"BODY[%d] {3}\r\nabc " % i for i in range(40)) + b")\r\na3 OK\r\n"
    t = [GREETING, (C, b"a3 FETCH 1 BODY[1]\r\n"), (S, server), (C, b"a4 NOOP\r\n"), (S, b"a4 OK\r\n")]
    recs, _ = run(t, config=cfg)
    assert names(recs) == ["imap_line_too_long"]
    assert [(c.tag, c.reply_code) for c in commands(recs)] == [(None, "OK"), ("a3", "OK"), ("a4", "OK")]


def test_nesting_and_commands_in_flight_limits():
    cfg = Config(limits=Limits(max_nesting=5, max_pending_commands=3))
    t = [GREETING, (C, b"a1 SEARCH " + b"(" * 20 + b"ALL" + b")" * 20 + b"\r\n"),
         (C, b"b1 NOOP\r\nb2 NOOP\r\nb3 NOOP\r\n"), (S, b"b3 OK\r\n")]
    recs, _ = run(t, config=cfg)
    assert names(recs) == ["imap_nesting_too_deep", "too_many_pending_commands"]
    assert [(c.tag, c.reply_code) for c in commands(recs)] == [
        (None, "OK"), ("a1", None), ("b3", "OK"), ("b1", None), ("b2", None)]


def test_messages_of_a_huge_fetch_are_not_all_held_until_completion():
    cfg = Config(limits=Limits(max_message_size=len(MSG1) * 2 + 10))
    server = b"".join(b"* %d FETCH (BODY[] " % i + lit(MSG1) + b")\r\n" for i in (1, 2, 3, 4)) + b"a3 OK\r\n"
    recs, _ = run([GREETING, (C, b"a3 FETCH 1:4 BODY[]\r\n"), (S, server)], config=cfg)
    msgs = of_type(recs, Message)
    assert [m.reply_code for m in msgs] == [None, None, None, "OK"]
    assert all(m.sha256 == sha(MSG1) for m in msgs)


def test_strict_mode_raises():
    d = ImapDissector(new_session("imap"), Config(strict=True))
    with pytest.raises(StrictError):
        feed(d, [GREETING, (C, b"a1 FROBNICATE\r\n")])


# ---------------------------------------------------------------------------
# gaps


def test_gap_inside_literal_gives_incomplete_message():
    head = MSG2[:200]
    rest = MSG2[200 + 100:]
    t = [GREETING, *login(), (C, b"a3 UID FETCH 2 BODY[]\r\n"),
         (S, b"* 2 FETCH (UID 2 BODY[] {%d}\r\n" % len(MSG2) + head), (S, "gap", 100),
         (S, rest + b")\r\na3 OK\r\n"), (C, b"a4 NOOP\r\n"), (S, b"a4 OK\r\n")]
    recs, sess = run(t)
    (msg,) = of_type(recs, Message)
    assert not msg.complete and msg.missing_bytes == 100 and msg.size == len(MSG2) and msg.sha256 is None
    assert msg.subject == "Report" and not sess.complete
    assert [(c.tag, c.reply_code) for c in commands(recs)][-2:] == [("a3", "OK"), ("a4", "OK")]


def test_gap_past_literal_end_resyncs_on_next_tagged_line():
    t = [GREETING, *login(), (C, b"a3 UID FETCH 2 BODY[]\r\n"),
         (S, b"* 2 FETCH (UID 2 BODY[] {%d}\r\n" % len(MSG2) + MSG2[:100]), (S, "gap", len(MSG2)),
         (S, b"tail of something)\r\nmore junk\r\n* 3 EXISTS\r\na3 OK done\r\n")]
    recs, _ = run(t)
    (msg,) = of_type(recs, Message)
    assert not msg.complete and msg.missing_bytes == len(MSG2) - 100 and msg.subject == "Report"
    assert [n for n in names(recs) if n.startswith("imap_")] == ["imap_resync"]
    assert commands(recs)[-1].reply_code == "OK"


def test_gap_in_client_stream_resyncs_on_next_command():
    t = [GREETING, (C, b"a1 LOGIN bob p"), (C, "gap", 5), (C, b"xx\r\na2 NOOP\r\n"), (S, b"a2 OK\r\n")]
    recs, _ = run(t)
    assert [(c.tag, c.reply_code) for c in commands(recs)] == [(None, "OK"), ("a2", "OK")]
    assert names(recs) == ["imap_resync"]


def test_close_inside_literal():
    t = [GREETING, *login(), (C, b"a3 FETCH 1 BODY[]\r\n"), (S, b"* 1 FETCH (BODY[] {%d}\r\n" % len(MSG1) + MSG1[:50])]
    recs, _ = run(t)
    (msg,) = of_type(recs, Message)
    assert not msg.complete and msg.missing_bytes == len(MSG1) - 50 and msg.reply_code is None
    assert commands(recs)[-1].reply_code is None


# ---------------------------------------------------------------------------
# performance: literals are consumed in bulk


def test_large_literal_in_segments_is_fast():
    import time
    body = (b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 64 + b"\r\n") * 5000  # ~5 MB
    server = b"* 1 FETCH (BODY[] " + lit(body) + b")\r\na3 OK\r\n"
    d = ImapDissector(new_session("imap"), Config())
    out = d.feed(S, GREETING[1], 0.0) + d.feed(C, b"a3 FETCH 1 BODY[]\r\n", 1.0)
    start = time.perf_counter()
    for i in range(0, len(server), 1448):
        out += d.feed(S, server[i:i + 1448], 2.0)
    elapsed = time.perf_counter() - start
    (msg,) = of_type(out + d.close(3.0, "fin"), Message)
    assert msg.sha256 == sha(body)
    assert elapsed < 2.0, elapsed


def test_every_anomaly_name_is_declared():
    from maildissect.anomalies import registry
    declared = registry()
    for name in imap_mod.ANOMALIES:
        assert name.startswith("imap_") and name in declared
