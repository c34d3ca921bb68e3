"""Webmail recognition: Roundcube-style forms, generic compose forms, JMAP, raw messages.

Transcripts mimic what real webmail front ends send (Roundcube's field names,
RFC 8620/8621 JMAP objects) and go through ``run_all_ways``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from email.message import EmailMessage

from maildissect.config import Config
from maildissect.model import Anomaly, Credential, HttpRequest, MailboxEvent, Message
from maildissect.protocols.http import HttpDissector
from maildissect.protocols.webmail import ANOMALIES as WEBMAIL_ANOMALIES, looks_like_message
from maildissect.protocols.http import ANOMALIES as HTTP_ANOMALIES
from tests.helpers import C, S, of_type, run_all_ways


def run(transcript, config=None):
    records, sess = run_all_ways(HttpDissector, transcript, config=config)
    names = {a.name for a in of_type(records, Anomaly)}
    assert names <= set(HTTP_ANOMALIES) | set(WEBMAIL_ANOMALIES)
    return records, sess


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def resp(body: bytes, ctype=b"text/html; charset=utf-8", status=b"200 OK", extra=b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nServer: uvicorn\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body)


def get(uri: bytes, extra=b"") -> bytes:
    return b"GET " + uri + b" HTTP/1.1\r\nHost: webmail.example.org\r\nUser-Agent: python-httpx/0.27\r\n" + extra + b"\r\n"


def post(uri: bytes, body: bytes, ctype: bytes, extra=b"") -> bytes:
    return (b"POST " + uri + b" HTTP/1.1\r\nHost: webmail.example.org\r\nUser-Agent: python-httpx/0.27\r\n"
            b"Content-Type: " + ctype + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body)


def multipart(boundary: bytes, fields, files) -> bytes:
    out = b""
    for name, value in fields:
        out += (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n'
                + value.encode() + b"\r\n")
    for name, filename, ctype, data in files:
        out += (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name.encode()
                + b'"; filename="' + filename.encode() + b'"\r\nContent-Type: ' + ctype.encode() + b"\r\n\r\n"
                + data + b"\r\n")
    return out + b"--" + boundary + b"--\r\n"


def make_message(i: int, attachments=()) -> bytes:
    m = EmailMessage()
    m["From"] = f"Sender {i} <sender{i}@example.org>"
    m["To"] = f"rcpt{i}@example.net"
    m["Subject"] = f"message {i}"
    m["Date"] = "Tue, 14 Nov 2023 22:13:20 -0000"
    m["Message-ID"] = f"<msg-{i}@example.org>"
    m.set_content(f"body of message {i}\n")
    for name, data in attachments:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def messages(records):
    return of_type(records, Message)


def actions(records):
    return [h.mail_action for h in of_type(records, HttpRequest)]


# -- raw messages ---------------------------------------------------------------------

def test_multipart_rfc822_upload_like_the_benchmark_corpus():
    rng = random.Random(7)
    atts = [("file-3-0.bin", rng.randbytes(40000)), ("file-3-1.bin", rng.randbytes(23000))]
    raw = make_message(3, atts)
    boundary = b"----corpusboundary3"
    body = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"message\"; filename=\"msg3.eml\"\r\n"
            b"Content-Type: message/rfc822\r\n\r\n" + raw + b"\r\n--" + boundary + b"--\r\n")
    recs, _ = run([(C, post(b"/upload", body, b"multipart/form-data; boundary=" + boundary)),
                   (S, resp(b'{"ok":true}', b"application/json"))])
    (msg,) = messages(recs)
    assert (msg.protocol, msg.direction, msg.kind, msg.source) == ("http", "uploaded", "rfc822", "POST /upload")
    assert msg.message_id == "<msg-3@example.org>" and msg.subject == "message 3"
    assert sorted(a.sha256 for a in msg.attachments) == sorted(sha(d) for _, d in atts)
    assert msg.size == len(raw) and msg.sha256 == sha(raw) and msg.complete
    assert actions(recs) == ["upload"]
    (h,) = of_type(recs, HttpRequest)
    assert [(f.filename, f.content_type, f.sha256) for f in h.files] == [("msg3.eml", "message/rfc822", sha(raw))]


def test_raw_message_put_and_eml_download():
    raw = make_message(1)
    recs, _ = run([
        (C, b"PUT /dav/drafts/new HTTP/1.1\r\nHost: h\r\nContent-Type: message/rfc822\r\nContent-Length: %d\r\n\r\n"
            % len(raw) + raw),
        (S, resp(b"", status=b"201 Created")),
        (C, get(b"/message/1/download")),
        (S, resp(raw, b"application/octet-stream", extra=b'Content-Disposition: attachment; filename="m.eml"\r\n')),
    ])
    up, down = messages(recs)
    assert (up.direction, up.kind, up.message_id, up.ts) == ("uploaded", "rfc822", "<msg-1@example.org>", 0.0)
    assert (down.direction, down.message_id, down.ts, down.source) == \
        ("downloaded", "<msg-1@example.org>", 3.0, "GET /message/1/download")
    assert actions(recs) == ["upload", "download"]
    assert of_type(recs, HttpRequest)[1].response_filename == "m.eml"


def test_looks_like_message():
    assert looks_like_message(make_message(2))
    assert not looks_like_message(b"Hello: world\r\n\r\nnot a mail")
    assert not looks_like_message(b"<html>From: x</html>")


# -- Roundcube-style web interface ---------------------------------------------------------

def test_roundcube_session():
    cookie = b"Cookie: roundcube_sessid=abc\r\n"
    login = (b"_token=T0k&_task=login&_action=login&_timezone=Europe%2FBerlin&_url=&_user=alice%40example.org"
             b"&_pass=s%C3%A9cret")
    pdf = bytes(range(256)) * 30
    png = b"\x89PNG\r\n\x1a\n" + bytes(500)
    upload = multipart(b"bnd1", [("_id", "cmp42")], [("_attachments[]", "report.pdf", "application/pdf", pdf)])
    send = multipart(b"bnd2", [("_token", "T0k"), ("_task", "mail"), ("_action", "send"), ("_id", "cmp42"),
                               ("_from", "alice@example.org"), ("_to", "Bob <bob@example.net>, carol@example.net"),
                               ("_cc", "dave@example.net"), ("_bcc", "erin@example.net"),
                               ("_subject", "Quarterly report"),
                               ("_message", "Hi Bob,\r\n\r\nplease find   the report attached.\r\n")],
                     [("_attachments[]", "chart.png", "image/png", png)])
    sent_page = (b"<p class=\"confirmation\">Message sent successfully.</p>\n<p>Message-ID: <code id=\"message-id\">"
                 b"&lt;webmail-7@example.org&gt;</code> (250 2.0.0 Ok: queued)</p>")
    raw = make_message(5)
    recs, sess = run([
        (C, get(b"/")),
        (S, resp(b"<form><input name=\"_user\"><input name=\"_pass\" type=\"password\"></form>")),
        (C, post(b"/?_task=login", login, b"application/x-www-form-urlencoded")),
        (S, resp(b"", status=b"302 Found", extra=b"Location: ./?_task=mail&_mbox=INBOX\r\n"
                                                   b"Set-Cookie: roundcube_sessid=abc; HttpOnly; Path=/\r\n")),
        (C, get(b"/?_task=mail&_mbox=INBOX", cookie)),
        (S, resp(b"<table id=\"messagelist\"></table>")),
        (C, get(b"/?_task=mail&_mbox=INBOX&_uid=5&_action=show", cookie)),
        (S, resp(b"<pre id=\"messagebody\">body</pre>")),
        (C, get(b"/?_task=mail&_uid=5&_mbox=INBOX&_action=viewsource&_save=1", cookie)),
        (S, resp(raw, b"message/rfc822", extra=b'Content-Disposition: attachment; filename="message-5.eml"\r\n')),
        (C, get(b"/?_task=mail&_action=compose", cookie)),
        (S, resp(b"<form></form>")),
        (C, post(b"/?_task=mail&_action=upload&_id=cmp42", upload, b"multipart/form-data; boundary=bnd1", cookie)),
        (S, resp(b'{"ok": true, "action": "upload"}', b"application/json")),
        (C, post(b"/?_task=mail&_action=send", send, b"multipart/form-data; boundary=bnd2", cookie)),
        (S, resp(sent_page)),
        (C, get(b"/?_task=logout", cookie)),
        (S, resp(b"", status=b"302 Found", extra=b"Location: ./?_task=login\r\n")),
    ])
    assert actions(recs) == [None, "login", "list", "read", "download", "compose", "upload", "send", "logout"]
    (cred,) = of_type(recs, Credential)
    assert (cred.mechanism, cred.user, cred.secret, cred.success) == ("FORM", "alice@example.org", "sécret", True)
    assert cred.detail == "fields _user,_pass"
    assert sess.auth_user == "alice@example.org"
    down, up, sent = messages(recs)
    assert (down.direction, down.kind, down.message_id) == ("downloaded", "rfc822", "<msg-5@example.org>")
    assert (up.direction, up.kind, up.source) == ("uploaded", "form", "POST /?_task=mail&_action=upload&_id=cmp42")
    assert (up.size, up.sha256) == (len(pdf), sha(pdf))
    assert [(a.filename, a.content_type, a.sha256) for a in up.attachments] == \
        [("report.pdf", "application/pdf", sha(pdf))]
    assert (sent.direction, sent.kind, sent.heuristic, sent.source) == \
        ("sent", "form", False, "POST /?_task=mail&_action=send")
    assert sent.from_ == "alice@example.org" and sent.mail_from == "alice@example.org"
    assert sent.to == ["Bob <bob@example.net>", "carol@example.net"]
    assert (sent.cc, sent.bcc) == (["dave@example.net"], ["erin@example.net"])
    assert sent.rcpt_to == ["bob@example.net", "carol@example.net", "dave@example.net", "erin@example.net"]
    assert sent.subject == "Quarterly report"
    assert sent.text_preview == "Hi Bob, please find the report attached."
    assert [(a.filename, a.sha256) for a in sent.attachments] == [("report.pdf", sha(pdf)), ("chart.png", sha(png))]
    assert sent.message_id == "<webmail-7@example.org>" and sent.reply_code == "200"


def test_roundcube_failed_login_page():
    recs, sess = run([
        (C, post(b"/?_task=login", b"_task=login&_action=login&_user=bob&_pass=nope",
                 b"application/x-www-form-urlencoded")),
        (S, resp(b"<p class=\"error\">Login failed.</p><input name=\"_pass\" type=\"password\">",
                 status=b"401 Unauthorized")),
    ])
    (cred,) = of_type(recs, Credential)
    assert (cred.user, cred.success) == ("bob", False)
    assert sess.auth_user is None


def test_generic_compose_form_is_heuristic():
    body = (b"from=me%40example.org&to=you%40example.net&cc=&subject=Lunch%3F"
            b"&body=%3Cp%3ESee+you+at+%3Cb%3Enoon%3C%2Fb%3E%3C%2Fp%3E")
    recs, _ = run([(C, post(b"/compose", body, b"application/x-www-form-urlencoded")),
                   (S, resp(b"", status=b"303 See Other", extra=b"Location: /sent\r\n"))])
    (msg,) = messages(recs)
    assert (msg.direction, msg.kind, msg.heuristic) == ("sent", "form", True)
    assert (msg.from_, msg.to, msg.subject) == ("me@example.org", ["you@example.net"], "Lunch?")
    assert msg.has_html and msg.text_preview == "See you at noon"
    assert actions(recs) == ["send"]


def test_generic_multipart_compose_with_attachment_and_json_compose():
    data = b"%PDF-1.4 " + bytes(3000)
    form = multipart(b"xyz", [("to", "a@example.net; b@example.net"), ("subject", "files"), ("body", "see attached")],
                     [("attachment", "doc.pdf", "application/pdf", data)])
    js = json.dumps({"to": ["c@example.net"], "subject": "json", "text": "hello"}).encode()
    recs, _ = run([
        (C, post(b"/api/send", form, b"multipart/form-data; boundary=xyz")),
        (S, resp(b'{"status":"queued"}', b"application/json")),
        (C, post(b"/api/messages", js, b"application/json")),
        (S, resp(b'{"id": 9}', b"application/json", status=b"201 Created")),
    ])
    a, b = messages(recs)
    assert a.to == ["a@example.net", "b@example.net"] and [x.sha256 for x in a.attachments] == [sha(data)]
    assert (b.to, b.subject, b.text_preview, b.heuristic) == (["c@example.net"], "json", "hello", True)


def test_url_heuristics_in_a_mail_context():
    recs, _ = run([
        (C, get(b"/mail/inbox")), (S, resp(b"<ul></ul>")),
        (C, get(b"/mail/message/17")), (S, resp(b"<div>m</div>")),
        (C, get(b"/static/app.css")), (S, resp(b"a{}", b"text/css")),
        (C, get(b"/news/today")), (S, resp(b"<p>n</p>")),
    ])
    assert actions(recs) == ["list", "read", None, None]


# -- JMAP --------------------------------------------------------------------------------

AUTH = b"Authorization: Basic " + base64.b64encode(b"alice@example.org:pw") + b"\r\n"
SESSION = {
    "capabilities": {"urn:ietf:params:jmap:core": {}, "urn:ietf:params:jmap:mail": {}},
    "accounts": {"Aalice": {"name": "alice@example.org", "isPersonal": True}},
    "primaryAccounts": {"urn:ietf:params:jmap:mail": "Aalice"},
    "username": "alice@example.org",
    "apiUrl": "http://webmail.example.org/jmap/api/",
    "downloadUrl": "http://webmail.example.org/jmap/download/{accountId}/{blobId}/{name}?accept={type}",
    "uploadUrl": "http://webmail.example.org/jmap/upload/{accountId}/",
    "eventSourceUrl": "http://webmail.example.org/jmap/eventsource/", "state": "s1",
}


def jmap(calls) -> bytes:
    return json.dumps({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
                       "methodCalls": calls}).encode()


def jresp(responses) -> bytes:
    return json.dumps({"methodResponses": responses, "sessionState": "s1"}).encode()


def test_jmap_session_read_and_send():
    pdf = b"%PDF" + bytes(range(256)) * 20
    email_obj = {
        "id": "M1-5", "blobId": "BM1-5", "threadId": "TM1-5", "size": 1234,
        "messageId": ["orig-5@example.net"], "inReplyTo": None,
        "from": [{"name": "Bob", "email": "bob@example.net"}], "to": [{"name": None, "email": "alice@example.org"}],
        "cc": None, "subject": "Status", "sentAt": "2023-11-14T22:13:20+00:00",
        "textBody": [{"partId": "1", "type": "text/plain"}],
        "attachments": [{"partId": "2", "blobId": "PM1-5.2", "size": 10, "name": "x.txt", "type": "text/plain",
                         "disposition": "attachment"}],
        "bodyValues": {"1": {"value": "All   good\nhere.", "isTruncated": False}},
        "preview": "All good here.",
    }
    create = {"k1": {"mailboxIds": {"mb-sent": True}, "keywords": {"$seen": True},
                     "from": [{"name": "Alice", "email": "alice@example.org"}],
                     "to": [{"name": "Bob", "email": "bob@example.net"}], "cc": [{"email": "c@example.net"}],
                     "subject": "Re: Status", "inReplyTo": ["orig-5@example.net"],
                     "bodyValues": {"t": {"value": "Thanks!"}}, "textBody": [{"partId": "t", "type": "text/plain"}],
                     "attachments": [{"blobId": "Gpdf", "type": "application/pdf", "name": "r.pdf"}]}}
    recs, sess = run([
        (C, get(b"/.well-known/jmap", AUTH)),
        (S, resp(b"", status=b"307 Temporary Redirect", extra=b"Location: /jmap/session\r\n")),
        (C, get(b"/jmap/session", AUTH)),
        (S, resp(json.dumps(SESSION).encode(), b"application/json")),
        (C, post(b"/jmap/api/", jmap([["Mailbox/get", {"accountId": "Aalice", "ids": None}, "0"]]),
                 b"application/json", AUTH)),
        (S, resp(jresp([["Mailbox/get", {"accountId": "Aalice", "list": [
            {"id": "mb-inbox", "name": "INBOX", "role": "inbox", "totalEmails": 3, "unreadEmails": 1},
            {"id": "mb-sent", "name": "Sent", "role": "sent", "totalEmails": 0, "unreadEmails": 0}]}, "0"]]),
            b"application/json")),
        (C, post(b"/jmap/api/", jmap([
            ["Email/query", {"accountId": "Aalice", "filter": {"inMailbox": "mb-inbox"}}, "0"],
            ["Email/get", {"accountId": "Aalice", "#ids": {"resultOf": "0", "name": "Email/query", "path": "/ids"},
                           "fetchTextBodyValues": True}, "1"]]), b"application/json", AUTH)),
        (S, resp(jresp([["Email/query", {"ids": ["M1-5"], "total": 1}, "0"],
                        ["Email/get", {"list": [email_obj], "notFound": []}, "1"]]), b"application/json")),
        (C, post(b"/jmap/upload/Aalice/", pdf, b"application/pdf", AUTH)),
        (S, resp(json.dumps({"accountId": "Aalice", "blobId": "Gpdf", "type": "application/pdf",
                             "size": len(pdf)}).encode(), b"application/json", status=b"201 Created")),
        (C, post(b"/jmap/api/", jmap([
            ["Email/set", {"accountId": "Aalice", "create": create}, "0"],
            ["EmailSubmission/set", {"accountId": "Aalice", "create": {"s1": {
                "emailId": "#k1", "identityId": "Ialice",
                "envelope": {"mailFrom": {"email": "alice@example.org"},
                             "rcptTo": [{"email": "bob@example.net"}, {"email": "c@example.net"}]}}},
                "onSuccessUpdateEmail": {"#s1": {"keywords/$draft": None}}}, "1"]]), b"application/json", AUTH)),
        (S, resp(jresp([["Email/set", {"created": {"k1": {"id": "M1-9", "blobId": "BM1-9", "size": 2345}}}, "0"],
                        ["EmailSubmission/set", {"created": {"s1": {"id": "S1"}}}, "1"],
                        ["Email/set", {"updated": {"M1-9": None}}, "1"]]), b"application/json")),
    ])
    assert actions(recs) == ["jmap:session", "jmap:session", "jmap:Mailbox/get", "jmap:Email/query,Email/get",
                             "jmap:upload", "jmap:Email/set,EmailSubmission/set"]
    creds = of_type(recs, Credential)
    assert [(c.mechanism, c.user, c.success) for c in creds] == [("BASIC", "alice@example.org", True)]
    boxes = of_type(recs, MailboxEvent)
    assert [(b.mailbox, b.count, b.action, b.protocol) for b in boxes] == \
        [("INBOX", 3, "mailbox", "http"), ("Sent", 0, "mailbox", "http")]
    read, blob, sent = messages(recs)
    assert (read.direction, read.kind, read.source) == ("retrieved", "jmap", "POST /jmap/api/ Email/get")
    assert (blob.direction, blob.kind, blob.source, blob.size, blob.sha256) == \
        ("uploaded", "blob", "POST /jmap/upload/Aalice/", len(pdf), sha(pdf))
    assert [(a.filename, a.size, a.sha256) for a in blob.attachments] == [(None, len(pdf), sha(pdf))]
    assert (read.message_id, read.from_, read.to, read.subject, read.size) == \
        ("<orig-5@example.net>", "Bob <bob@example.net>", ["alice@example.org"], "Status", 1234)
    assert read.text_preview == "All good here." and read.date == 1700000000.0
    assert [(a.filename, a.size, a.sha256) for a in read.attachments] == [("x.txt", 10, "")]
    assert (sent.direction, sent.kind, sent.source) == \
        ("sent", "jmap", "POST /jmap/api/ Email/set + EmailSubmission/set")
    assert (sent.from_, sent.to, sent.cc, sent.subject, sent.in_reply_to) == \
        ("Alice <alice@example.org>", ["Bob <bob@example.net>"], ["c@example.net"], "Re: Status",
         "<orig-5@example.net>")
    assert (sent.mail_from, sent.rcpt_to, sent.reply_code, sent.size) == \
        ("alice@example.org", ["bob@example.net", "c@example.net"], "created", 2345)
    assert sent.text_preview == "Thanks!"
    assert [(a.filename, a.content_type, a.size, a.md5, a.sha1, a.sha256) for a in sent.attachments] == \
        [("r.pdf", "application/pdf", len(pdf), hashlib.md5(pdf).hexdigest(), hashlib.sha1(pdf).hexdigest(),
          sha(pdf))]


def test_jmap_draft_then_later_submission_and_blob_messages():
    raw = make_message(8)
    draft = {"d": {"mailboxIds": {"mb-drafts": True}, "keywords": {"$draft": True},
                   "to": [{"email": "z@example.net"}], "subject": "later",
                   "bodyValues": {"1": {"value": "draft"}}, "textBody": [{"partId": "1"}]}}
    recs, _ = run([
        (C, get(b"/jmap/session", AUTH)),
        (S, resp(json.dumps(SESSION).encode(), b"application/json")),
        (C, post(b"/jmap/api/", jmap([["Email/set", {"create": draft}, "a"]]), b"application/json", AUTH)),
        (S, resp(jresp([["Email/set", {"created": {"d": {"id": "M1-20", "size": 400}}}, "a"]]), b"application/json")),
        (C, post(b"/jmap/api/", jmap([["EmailSubmission/set", {"create": {"x": {"emailId": "M1-20"}}}, "b"]]),
                 b"application/json", AUTH)),
        (S, resp(jresp([["EmailSubmission/set", {"created": {"x": {"id": "S2"}}}, "b"]]), b"application/json")),
        (C, post(b"/jmap/upload/Aalice/", raw, b"message/rfc822", AUTH)),
        (S, resp(b'{"blobId": "Graw", "size": 10}', b"application/json", status=b"201 Created")),
        (C, post(b"/jmap/api/", jmap([["Email/import", {"emails": {"i": {"blobId": "Graw"}}}, "c"]]),
                 b"application/json", AUTH)),
        (S, resp(jresp([["Email/import", {"created": {"i": {"id": "M1-21"}}}, "c"]]), b"application/json")),
        (C, get(b"/jmap/download/Aalice/BM1-21/m.eml?accept=message/rfc822", AUTH)),
        (S, resp(raw, b"message/rfc822", extra=b'Content-Disposition: attachment; filename="m.eml"\r\n')),
        (C, post(b"/jmap/api/", b'{"methodCalls": "nonsense"}', b"application/json", AUTH)),
        (S, resp(b'{"type": "urn:ietf:params:jmap:error:notRequest"}', b"application/json", status=b"400 Bad")),
    ])
    drafted, sent, uploaded, downloaded = messages(recs)
    assert (drafted.direction, drafted.subject, drafted.reply_code) == ("appended", "later", "created")
    assert (sent.direction, sent.subject, sent.to, sent.rcpt_to, sent.ts) == \
        ("sent", "later", ["z@example.net"], ["z@example.net"], 4.0)
    assert (uploaded.direction, uploaded.kind, uploaded.message_id) == ("uploaded", "rfc822", "<msg-8@example.org>")
    assert (downloaded.direction, downloaded.kind, downloaded.message_id) == \
        ("downloaded", "rfc822", "<msg-8@example.org>")
    assert actions(recs) == ["jmap:session", "jmap:Email/set", "jmap:EmailSubmission/set", "jmap:upload",
                             "jmap:Email/import", "jmap:download", "jmap:invalid"]
    assert [a.name for a in of_type(recs, Anomaly)] == ["http_jmap_bad_request"]


def test_message_beyond_limits_is_reported_by_hash():
    raw = make_message(9, [("big.bin", bytes(5000))])
    body = (b"--b\r\nContent-Disposition: form-data; name=\"m\"; filename=\"x.eml\"\r\n"
            b"Content-Type: message/rfc822\r\n\r\n" + raw + b"\r\n--b--\r\n")
    from maildissect.config import Limits
    recs, _ = run([(C, post(b"/upload", body, b"multipart/form-data; boundary=b")), (S, resp(b"ok"))],
                  config=Config(limits=Limits(max_http_body=1000)))
    (msg,) = messages(recs)
    assert (msg.size, msg.sha256, msg.message_id) == (len(raw), sha(raw), None)
    assert [a.name for a in of_type(recs, Anomaly)] == ["http_form_part_too_large", "http_message_not_parsed"]


def test_message_page_read_heuristically():
    page = (b"<!DOCTYPE html>\n<html><body>\n<table id=\"headers\"><tr><th>From</th><td>Bob &lt;bob@example.net&gt;"
            b"</td></tr><tr><th>To</th><td>alice@example.org</td></tr><tr><th>Cc</th><td></td></tr>"
            b"<tr><th>Subject</th><td>Lunch &amp; more</td></tr><tr><th>Date</th>"
            b"<td>Tue, 14 Nov 2023 22:13:20 +0000</td></tr><tr><th>Message-ID</th>"
            b"<td>&lt;lunch-1@example.net&gt;</td></tr></table>\n"
            b"<pre id=\"messagebody\">See you\n at noon.</pre>\n<p class=\"attachment\">menu.pdf</p></body></html>")
    recs, _ = run([
        (C, get(b"/?_task=mail&_mbox=INBOX&_uid=3&_action=show", b"Cookie: s=1\r\n")),
        (S, resp(page)),
        (C, get(b"/?_task=mail&_mbox=INBOX&_uid=4&_action=show", b"Cookie: s=1\r\n")),
        (S, resp(b"<p>Message not found</p>", status=b"404 Not Found")),
    ])
    (msg,) = messages(recs)
    assert (msg.direction, msg.kind, msg.heuristic, msg.ts) == ("retrieved", "view", True, 1.0)
    assert (msg.from_, msg.to, msg.cc, msg.subject, msg.message_id, msg.date) == \
        ("Bob <bob@example.net>", ["alice@example.org"], [], "Lunch & more", "<lunch-1@example.net>", 1700000000.0)
    assert msg.text_preview == "See you at noon."
    assert actions(recs) == ["read", "read"]


def test_jmap_refused_submission_stays_a_draft():
    create = {"k": {"to": [{"email": "x@example.net"}], "subject": "nope", "bodyValues": {"1": {"value": "b"}},
                    "textBody": [{"partId": "1"}]}}
    recs, _ = run([
        (C, post(b"/jmap/api/", jmap([["Email/set", {"create": create}, "0"],
                                      ["EmailSubmission/set", {"create": {"s": {"emailId": "#k"}}}, "1"]]),
                 b"application/json", AUTH)),
        (S, resp(jresp([["Email/set", {"created": {"k": {"id": "M9"}}}, "0"],
                        ["EmailSubmission/set", {"notCreated": {"s": {"type": "forbiddenToSend"}}}, "1"]]),
                 b"application/json")),
    ])
    (msg,) = messages(recs)
    assert (msg.direction, msg.reply_code, msg.reply_text) == \
        ("appended", "created", "submission refused: forbiddenToSend")
