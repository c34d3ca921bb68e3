"""maildissect.mime: headers, addresses, dates, MIME walk, attachments, anomalies, limits."""

from __future__ import annotations

import base64
import hashlib
import quopri
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maildissect import mime
from maildissect.anomalies import StrictError
from maildissect.config import Config, Limits
from maildissect.model import Message


def parse(raw: bytes, config: Config | None = None, direction: str = "sent"):
    msg = Message("smtp", 7, 100.0, direction)
    found = mime.fill_message(msg, raw, config or Config())
    return msg, found


def names(found):
    return [a.name for a in found]


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


SIMPLE = crlf("""\
Received: from mail.example.org (mail.example.org [192.0.2.10])
\tby mx.example.net (Postfix) with ESMTPS id 4QabcD1234
\tfor <bob@example.net>; Tue, 12 Dec 2023 17:37:20 +0100 (CET)
Received: from [10.0.0.5] (unknown [198.51.100.7]) by mail.example.org with ESMTPSA id x1;
 Tue, 12 Dec 2023 16:37:18 +0000
DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=s1; b=abc
Authentication-Results: mx.example.net; dkim=pass header.d=example.org
Return-Path: <alice@example.org>
X-Originating-IP: [198.51.100.7]
From: Alice Example <alice@example.org>
Sender: list-bounces@example.org
Reply-To: "Alice (work)" <alice.work@example.org>
To: Bob <bob@example.net>, carol@example.net
Cc: "Doe, John" <john@example.com>
Bcc: secret@example.com
Subject: Quarterly
 report
Date: Tue, 12 Dec 2023 17:37:16 +0100
Message-ID: <m1@example.org>
In-Reply-To: <m0@example.org>
References: <a@example.org>
 <m0@example.org>
User-Agent: TestAgent/1.0
X-Mailer: ShouldNotWin 2.0
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Hello Bob,

   here is   the report.
""")


def test_simple_message_fields():
    msg, found = parse(SIMPLE)
    assert found == []
    assert msg.size == len(SIMPLE)
    assert msg.sha256 == hashlib.sha256(SIMPLE).hexdigest()
    body = SIMPLE.split(b"\r\n\r\n", 1)[1]
    assert msg.body_sha256 == hashlib.sha256(body).hexdigest()
    assert msg.from_ == "Alice Example <alice@example.org>"
    assert msg.to == ["Bob <bob@example.net>", "carol@example.net"]
    assert msg.cc == ['"Doe, John" <john@example.com>']
    assert msg.bcc == ["secret@example.com"]
    assert msg.reply_to == '"Alice (work)" <alice.work@example.org>'
    assert msg.sender == "list-bounces@example.org"
    assert msg.subject == "Quarterly report"  # unfolded: the CRLF goes, the space stays
    assert msg.message_id == "<m1@example.org>"
    assert msg.in_reply_to == "<m0@example.org>"
    assert msg.references == ["<a@example.org>", "<m0@example.org>"]
    assert msg.date_raw == "Tue, 12 Dec 2023 17:37:16 +0100"
    assert msg.date == datetime(2023, 12, 12, 16, 37, 16, tzinfo=timezone.utc).timestamp()
    assert msg.user_agent == "TestAgent/1.0"  # User-Agent is preferred over X-Mailer
    assert msg.return_path == "<alice@example.org>"
    assert msg.x_originating_ip == "198.51.100.7"
    assert msg.dkim_signed is True
    assert msg.authentication_results == "mx.example.net; dkim=pass header.d=example.org"
    assert msg.text_preview == "Hello Bob, here is the report."
    assert msg.has_html is False
    assert msg.attachments == []
    assert msg.raw is None
    # every header, in order, unfolded
    assert [n for n, _ in msg.headers][:3] == ["Received", "Received", "DKIM-Signature"]
    assert ("Subject", "Quarterly report") in msg.headers
    assert len(msg.headers) == 21


def test_received_chain():
    msg, _ = parse(SIMPLE)
    first, second = msg.received
    assert first.from_ == "mail.example.org (mail.example.org [192.0.2.10])"
    assert first.by == "mx.example.net"
    assert first.with_ == "ESMTPS"
    assert first.id == "4QabcD1234"
    assert first.for_ == "bob@example.net"
    assert first.date == datetime(2023, 12, 12, 16, 37, 20, tzinfo=timezone.utc).timestamp()
    assert first.raw.startswith("from mail.example.org") and "\t" not in first.raw
    assert second.from_ == "[10.0.0.5] (unknown [198.51.100.7])"
    assert second.by == "mail.example.org" and second.with_ == "ESMTPSA" and second.id == "x1"
    assert second.for_ is None


def test_lf_line_endings_parse_like_crlf():
    lf_raw = SIMPLE.replace(b"\r\n", b"\n")
    a, _ = parse(SIMPLE)
    b, found = parse(lf_raw)
    assert found == []
    for field in ("from_", "to", "cc", "subject", "date", "message_id", "references", "text_preview"):
        assert getattr(a, field) == getattr(b, field), field
    assert b.body_sha256 == hashlib.sha256(lf_raw.split(b"\n\n", 1)[1]).hexdigest()


def test_rfc2047_subject_and_names():
    raw = crlf("""\
From: =?ISO-8859-1?Q?Andr=E9?= Pirard <pirard@example.be>
To: =?UTF-8?B?w4lsb2TDqWU=?= <e@example.fr>, "=?utf-8?q?Wong=2C_D?=" <d@example.com>
Subject: =?UTF-8?B?w6lsw6h2ZQ==?= =?UTF-8?Q?_caf=C3=A9?= and more
Keywords: =?x-no-such-charset?q?abc?=

body
""")
    msg, found = parse(raw)
    assert msg.from_ == "André Pirard <pirard@example.be>"
    # whitespace between adjacent encoded words is dropped, not around plain text
    assert msg.subject == "élève café and more"
    assert msg.to == ["Élodée <e@example.fr>", '"Wong, D" <d@example.com>']
    assert ("Keywords", "abc") in msg.headers
    assert names(found) == ["mime_unknown_charset"]


def test_address_groups_comments_and_garbage():
    raw = crlf("""\
From: jan@example.org (Jan Example)
To: "Jan G" <jan@example.com>,
        "Test Group":addr-spec@example.com, <angle@example.com>,
        "Member" <name@example.com>;, plain@example.com
Cc: undisclosed-recipients:;

x
""")
    msg, _ = parse(raw)
    assert msg.from_ == "jan@example.org (Jan Example)"
    assert msg.to == ["Jan G <jan@example.com>", "addr-spec@example.com", "angle@example.com",
                      "Member <name@example.com>", "plain@example.com"]
    assert msg.cc == []


def test_several_to_headers_are_merged():
    msg, _ = parse(b"To: a@example.com\r\nTo: b@example.com\r\n\r\n")
    assert msg.to == ["a@example.com", "b@example.com"]


def test_dates():
    zone_less, _ = parse(b"Date: Tue, 8 Dec 2015 22:30:00 -0000\r\n\r\n")
    assert zone_less.date == datetime(2015, 12, 8, 22, 30, tzinfo=timezone.utc).timestamp()
    spaced, _ = parse(b"Date: Thu,  4 Mar 2021 01:39:13 -0800 (PST)\r\n\r\n")
    assert spaced.date_raw == "Thu,  4 Mar 2021 01:39:13 -0800 (PST)"
    assert spaced.date == datetime(2021, 3, 4, 9, 39, 13, tzinfo=timezone.utc).timestamp()
    bad, found = parse(b"Date: yesterday-ish\r\n\r\n")
    assert bad.date is None and bad.date_raw == "yesterday-ish"
    assert names(found) == ["mime_bad_date"]


def test_x_mailer_is_the_user_agent_without_user_agent():
    msg, _ = parse(b"X-Mailer: Microsoft Office Outlook 12.0\r\n\r\n")
    assert msg.user_agent == "Microsoft Office Outlook 12.0"


PNG = bytes(range(256)) * 40 + b"\x89PNG\r\n.\r\n"
PDF = b"%PDF-1.4\n" + bytes(range(200, 256)) * 100


def b64lines(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")


def multipart() -> bytes:
    html_qp = quopri.encodestring("<html><head><style>p {color: red}</style></head><body><p>Hi &amp; welcome =</p></body></html>\n".encode()).decode()
    return (crlf("""\
From: a@example.org
To: b@example.net
Subject: files
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is the preamble.
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Gr=FC=DFe aus K=F6ln
--inner
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

""") + html_qp.replace("\n", "\r\n").encode() + crlf("""\
--inner--

--outer
Content-Type: image/png; name="logo.png"
Content-Transfer-Encoding: base64
Content-ID: <logo@x>
Content-Disposition: inline

""") + b64lines(PNG).encode() + crlf("""\
--outer
Content-Type: application/pdf
Content-Transfer-Encoding: base64
Content-Disposition: attachment;
 filename*0*=utf-8''R%C3%A9sum%C3%A9;
 filename*1=".pdf"

""") + b64lines(PDF).encode() + crlf("""\
--outer
Content-Type: text/plain; name="=?utf-8?q?notes_=E2=9C=93.txt?="

plain text file
--outer--
epilogue
"""))


def test_multipart_attachments_and_bodies():
    raw = multipart()
    msg, found = parse(raw)
    assert found == []
    assert msg.has_html is True
    assert msg.text_preview == "Grüße aus Köln"
    logo, pdf, notes = msg.attachments
    assert (logo.filename, logo.content_type, logo.disposition, logo.part, logo.encoding, logo.content_id) == \
        ("logo.png", "image/png", "inline", "2", "base64", "<logo@x>")
    assert logo.size == len(PNG)
    assert (logo.md5, logo.sha1, logo.sha256) == (hashlib.md5(PNG).hexdigest(), hashlib.sha1(PNG).hexdigest(),
                                                  hashlib.sha256(PNG).hexdigest())
    assert pdf.filename == "Résumé.pdf"  # RFC 2231 charset and continuations
    assert pdf.part == "3" and pdf.disposition == "attachment"
    assert pdf.sha256 == hashlib.sha256(PDF).hexdigest()
    assert notes.filename == "notes ✓.txt"  # RFC 2047 inside a parameter, as MUAs send it
    assert notes.content_type == "text/plain" and notes.disposition is None
    # the CRLF before a delimiter belongs to the delimiter (RFC 2046)
    assert notes.size == len(b"plain text file") and notes.encoding is None
    assert logo.data is None


def test_keep_bodies_keeps_raw_and_attachment_bytes():
    raw = multipart()
    msg, _ = parse(raw, Config(keep_bodies=True))
    assert msg.raw == raw
    assert [a.data for a in msg.attachments] == [PNG, PDF, b"plain text file"]


def test_html_only_preview():
    raw = crlf("""\
Content-Type: text/html

<html><head><title>T</title><script>var x = 1;</script></head>
<body><h1>Big&nbsp;news</h1><!-- hidden --><p>Read   it &lt;now&gt;</p></body></html>
""")
    msg, _ = parse(raw)
    assert msg.has_html
    assert msg.text_preview == "Big news Read it <now>"  # &nbsp; is whitespace too


def test_preview_length_limit():
    raw = b"Content-Type: text/plain\r\n\r\n" + b"word " * 1000
    msg, _ = parse(raw, Config(limits=Limits(preview_chars=12)))
    assert msg.text_preview == "word word wo"
    none, _ = parse(raw, Config(limits=Limits(preview_chars=0)))
    assert none.text_preview is None


def test_attachment_rule():
    raw = crlf("""\
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

body text
--b
Content-Type: text/calendar; method=REQUEST

BEGIN:VCALENDAR
--b
Content-Type: text/plain
Content-Disposition: attachment

an attached text without name
--b
Content-Type: application/octet-stream

bytes without any name
--b
Content-Type: text/html
Content-Disposition: inline; filename="page.html"

<p>x</p>
--b--
""")
    msg, _ = parse(raw)
    assert [(a.part, a.content_type, a.filename, a.disposition) for a in msg.attachments] == [
        ("3", "text/plain", None, "attachment"),
        ("4", "application/octet-stream", None, None),
        ("5", "text/html", "page.html", "inline"),
    ]
    assert msg.text_preview == "body text"
    assert msg.has_html is False  # the only HTML is a file


def test_nested_message_rfc822():
    inner = crlf("""\
From: inner@example.org
Subject: inner
Content-Type: multipart/mixed; boundary=in

--in
Content-Type: text/plain

inner body
--in
Content-Type: application/zip; name=a.zip
Content-Transfer-Encoding: base64

""") + b64lines(b"PK\x03\x04zip").encode() + b"--in--\r\n"
    raw = crlf("""\
From: outer@example.org
Subject: Fwd: inner
Content-Type: multipart/mixed; boundary=out

--out
Content-Type: text/plain

see attached
--out
Content-Type: message/rfc822
Content-Disposition: attachment; filename="inner.eml"

""") + inner + crlf("""
--out
Content-Type: message/rfc822

Subject: forwarded inline

just text
--out--
""")
    msg, found = parse(raw)
    assert found == []
    assert msg.subject == "Fwd: inner"  # inner headers do not leak into the message
    assert [(a.part, a.content_type, a.filename) for a in msg.attachments] == [
        ("2", "message/rfc822", "inner.eml"),
        ("2.2", "application/zip", "a.zip"),
    ]
    eml = msg.attachments[0]
    assert eml.size == len(inner) and eml.sha256 == hashlib.sha256(inner).hexdigest()
    assert msg.attachments[1].sha256 == hashlib.sha256(b"PK\x03\x04zip").hexdigest()
    assert msg.text_preview == "see attached"


def test_message_rfc822_single_part_path():
    raw = crlf("""\
Content-Type: message/rfc822

Content-Type: application/pdf; name=x.pdf

%PDF
""")
    msg, _ = parse(raw)
    assert [(a.part, a.filename) for a in msg.attachments] == [("1.1", "x.pdf")]


def test_digest_default_type_is_message():
    raw = crlf("""\
Content-Type: multipart/digest; boundary=d

--d

Subject: one
Content-Type: image/gif; name=one.gif

GIF89a
--d--
""")
    msg, _ = parse(raw)
    assert [(a.part, a.filename) for a in msg.attachments] == [("1.1", "one.gif")]


def test_bad_base64_is_salvaged():
    good = b"hello world, this is fine"
    chunks = base64.b64encode(b"first piece") + b"\r\n" + base64.b64encode(b"second!") + b"\r\n"
    raw = crlf("""\
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: application/x-one; name=one
Content-Transfer-Encoding: base64

""") + b"aGVsbG8g*d29y\xffbGQsIHRoaXMgaXMgZmluZQ==\r\n" + crlf("""\
--b
Content-Type: application/x-two; name=two
Content-Transfer-Encoding: base64

""") + chunks + crlf("""\
--b
Content-Type: application/x-three; name=three
Content-Transfer-Encoding: BASE64

aGVsbG8
--b--
""")
    msg, found = parse(raw)
    one, two, three = msg.attachments
    assert one.size == len(good) and one.sha256 == hashlib.sha256(good).hexdigest()
    assert two.sha256 == hashlib.sha256(b"first piecesecond!").hexdigest()
    assert three.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert found[0].name == "mime_bad_base64"
    assert found[0].detail == "part 1 (and 2 more)"  # one anomaly per name, with a count
    assert found[0].side == "client" and found[0].session_id == 7 and found[0].ts == 100.0


def test_bad_quoted_printable():
    raw = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nok=3D fine =ZZ bad =\r\nsoft\r\n"
    msg, found = parse(raw)
    assert names(found) == ["mime_bad_qp"]
    assert msg.text_preview == "ok= fine =ZZ bad soft"


def test_uuencode_and_unknown_encodings():
    import binascii
    data = b"uuencoded payload bytes\x00\x01"
    uu = b"begin 644 f.bin\r\n" + binascii.b2a_uu(data).replace(b"\n", b"\r\n") + b"`\r\nend\r\n"
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream; name=f.bin\r\n"
           b"Content-Transfer-Encoding: x-uuencode\r\n\r\n" + uu +
           b"--b\r\nContent-Type: application/x-y; name=y\r\nContent-Transfer-Encoding: x-gzip64\r\n\r\nabc\r\n--b--\r\n")
    msg, found = parse(raw)
    assert msg.attachments[0].sha256 == hashlib.sha256(data).hexdigest()
    assert msg.attachments[1].size == 3
    assert names(found) == ["mime_unknown_transfer_encoding"]


def test_boundary_problems():
    unclosed, found = parse(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/x-a; name=a\r\n\r\nAAA\r\n")
    assert names(found) == ["mime_missing_closing_boundary"]
    assert unclosed.attachments[0].size == len(b"AAA\r\n")  # runs to the end
    absent, found = parse(b"Content-Type: multipart/mixed; boundary=b\r\n\r\njust text\r\n")
    assert names(found) == ["mime_boundary_not_found"] and absent.attachments == []
    nobound, found = parse(b"Content-Type: multipart/mixed\r\n\r\njust text\r\n")
    assert names(found) == ["mime_multipart_without_boundary"] and nobound.text_preview == "just text"
    # "--bXYZ" is not a delimiter of boundary "b"; trailing whitespace after one is allowed
    prefixed, found = parse(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b \t\r\n\r\n--bXYZ\r\n--b--\r\n")
    assert found == [] and prefixed.text_preview == "--bXYZ"


def test_charsets():
    bad_utf8, found = parse(b"Content-Type: text/plain; charset=utf-8\r\n\r\nabc\xff\xfedef\r\n")
    assert names(found) == ["mime_charset_error"]
    assert bad_utf8.text_preview == "abc\ufffd\ufffddef"
    # a label that names no text encoding: read as UTF-8 with replacement (WHATWG has no fallback guess)
    unknown, found = parse(b"Content-Type: text/plain; charset=x-klingon\r\n\r\nqapla\xe9\r\n")
    assert names(found) == ["mime_unknown_charset"] and unknown.text_preview == "qapla\ufffd"
    # labels resolve as the WHATWG Encoding Standard says: latin1 is windows-1252
    latin1, found = parse(b"Content-Type: text/plain; charset=\"ISO-8859-1\"\r\n\r\nit\x92s\r\n")
    assert found == [] and latin1.text_preview == "it\u2019s"
    gb, found = parse(b"Content-Type: text/plain; charset=gb2312\r\n\r\n\xc4\xe3\xba\xc3\r\n")
    assert found == [] and gb.text_preview == "\u4f60\u597d"
    latin, found = parse(b"Content-Type: text/plain; charset=windows-1252\r\n\r\n\x93quoted\x94\r\n")
    assert found == [] and latin.text_preview == "\u201cquoted\u201d"
    undeclared, found = parse(b"Content-Type: text/plain\r\n\r\nna\xc3\xafve\r\n")
    assert found == [] and undeclared.text_preview == "naïve"  # 8-bit UTF-8 without charset: accepted


def test_header_not_utf8():
    msg, found = parse(b"Subject: caf\xe9\r\n\r\n")
    assert msg.subject == "café"
    assert names(found) == ["mime_header_not_utf8"]
    # raw 8-bit text that is not UTF-8 is windows-1252, as mail readers show it: 0x92 is a quote
    quote, found = parse(b"Subject: it\x92s here\r\n\r\n")
    assert quote.subject == "it\u2019s here" and names(found) == ["mime_header_not_utf8"]
    utf8, found = parse("Subject: café ✓\r\n\r\n".encode())
    assert utf8.subject == "café ✓" and found == []  # RFC 6532


def test_headers_only_and_truncated():
    msg, found = parse(b"From: a@example.org\r\nSubject: only headers\r\n")
    assert found == []
    assert msg.subject == "only headers" and msg.body_sha256 is None and msg.text_preview is None
    cut, found = parse(b"From: a@example.org\r\nSubject: cut here\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo")
    assert cut.subject == "cut here"
    assert [a.content_type for a in cut.attachments] == ["image/png"]
    assert "mime_missing_closing_boundary" in names(found)


def test_missing_header_separator_and_mbox_line():
    msg, found = parse(b"From sender@example.org Mon Jan  1 00:00:00 2024\r\nSubject: s\r\nthis is not a header\r\nmore\r\n")
    assert msg.subject == "s"
    assert names(found) == ["mime_missing_header_separator"]
    assert msg.text_preview == "this is not a header more"


def test_bad_content_type_defaults():
    msg, found = parse(b"Content-Type: garbage\r\n\r\ntext\r\n")
    assert names(found) == ["mime_bad_content_type"] and msg.text_preview == "text"


def test_limit_max_headers():
    raw = b"".join(b"X-H%d: v\r\n" % i for i in range(50)) + b"Subject: late\r\n\r\nbody\r\n"
    msg, found = parse(raw, Config(limits=Limits(max_headers=10)))
    assert len(msg.headers) == 10
    assert msg.subject is None
    assert msg.text_preview == "body"
    assert names(found) == ["mime_too_many_headers"]


def test_limit_max_header_bytes():
    raw = b"Subject: s\r\nX-Big: " + b"x" * 5000 + b"\r\nX-After: y\r\n\r\nbody text\r\n"
    msg, found = parse(raw, Config(limits=Limits(max_header_bytes=1000)))
    assert msg.subject == "s"
    assert msg.text_preview == "body text"  # the body is still found
    assert names(found) == ["mime_header_block_too_large"]


def test_limit_max_mime_depth():
    depth = 300
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth))
    raw += b"Content-Type: application/x-deep; name=deep\r\n\r\nbottom\r\n"
    raw += b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    msg, found = parse(raw, Config(limits=Limits(max_mime_depth=50)))
    assert msg.attachments == []
    assert names(found) == ["mime_too_deep"]
    ok, found = parse(raw, Config(limits=Limits(max_mime_depth=1000)))
    assert [a.filename for a in ok.attachments] == ["deep"] and found == []


def test_limit_max_mime_parts():
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(
        b"--b\r\nContent-Type: application/x-n; name=f%d\r\n\r\n%d\r\n" % (i, i) for i in range(100)) + b"--b--\r\n"
    msg, found = parse(raw, Config(limits=Limits(max_mime_parts=10)))
    assert len(msg.attachments) == 9  # the multipart itself is the first entity
    assert names(found) == ["mime_too_many_parts"]


def test_side_follows_direction():
    _, found = parse(b"Date: nope\r\n\r\n", direction="retrieved")
    assert found[0].side == "server"
    assert mime.side_of("sent") == "client" and mime.side_of("downloaded") == "server"


def test_strict_mode_raises():
    with pytest.raises(StrictError):
        parse(b"Date: nope\r\n\r\n", Config(strict=True))


def test_every_anomaly_name_is_documented():
    from maildissect import anomalies
    assert set(mime.ANOMALIES) <= set(anomalies.registry())
    assert all(n.startswith("mime_") for n in mime.ANOMALIES)


def test_large_attachment_hashed_on_workers_matches_inline():
    data = bytes(range(256)) * 8192  # 2 MiB: above the threading threshold
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream; name=big\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + b64lines(data).encode() + b"--b--\r\n")
    msg, found = parse(raw)
    (att,) = msg.attachments
    assert found == []
    assert (att.size, att.md5, att.sha1, att.sha256) == (
        len(data), hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest())
    assert msg.sha256 == hashlib.sha256(raw).hexdigest()


def test_nested_messages_do_not_multiply_memory():
    import tracemalloc
    payload = b"x" * 1_000_000
    raw = b"Content-Type: application/x-bottom; name=bottom\r\n\r\n" + payload
    for _ in range(40):
        raw = b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n" + raw
    tracemalloc.start()
    try:
        msg, found = parse(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == [] and len(msg.attachments) == 41
    assert msg.attachments[-1].sha256 == hashlib.sha256(payload).hexdigest()
    assert peak < 4 * len(raw)  # not 40 copies of the message


# --------------------------------------------------------------------------- properties

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIGHT = Config(limits=Limits(max_mime_depth=5, max_mime_parts=20, max_headers=15, max_header_bytes=400))


def check_invariants(raw: bytes, msg: Message, found, config: Config) -> None:
    assert "mime_parser_error" not in names(found), found
    assert set(names(found)) <= set(mime.ANOMALIES)
    assert len(set(names(found))) == len(found)  # one record per name
    assert msg.size == len(raw) and msg.sha256 == hashlib.sha256(raw).hexdigest()
    lim = config.limits
    assert len(msg.headers) <= lim.max_headers
    assert len(msg.attachments) < lim.max_mime_parts
    assert all(len(a.part.split(".")) <= lim.max_mime_depth + 2 for a in msg.attachments)
    if msg.text_preview is not None:
        assert 0 < len(msg.text_preview) <= lim.preview_chars


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(raw):
    msg, found = parse(raw, TIGHT)
    check_invariants(raw, msg, found, TIGHT)


SEEDS = [multipart(), SIMPLE,
         b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\nContent-Type: message/rfc822\r\n\r\n"
         b"Content-Type: multipart/mixed; boundary=r\r\n\r\n--r\r\nContent-Transfer-Encoding: base64\r\n"
         b"Content-Type: image/gif; name*=utf-8''%E2%9C%93.gif\r\n\r\nR0lGODlh\r\n--r--\r\n--q--\r\n"]
MUTATION = st.tuples(st.sampled_from(["flip", "insert", "delete", "dup"]), st.integers(0, 10**6),
                     st.binary(min_size=1, max_size=12))


@FUZZ
@given(st.sampled_from(range(len(SEEDS))), st.lists(MUTATION, max_size=8))
def test_mutated_messages_never_raise(seed, mutations):
    raw = bytearray(SEEDS[seed])
    for op, pos, blob in mutations:
        pos %= len(raw) + 1
        if op == "flip" and raw:
            raw[pos % len(raw)] ^= blob[0] or 1
        elif op == "insert":
            raw[pos:pos] = blob + b"\r\n=?=--q\r\n"[: blob[0] % 12]
        elif op == "delete":
            del raw[pos:pos + blob[0] % 64]
        else:
            raw[pos:pos] = raw[pos:pos + blob[0] % 200]
    raw = bytes(raw)
    for config in (TIGHT, Config()):
        msg, found = parse(raw, config)
        check_invariants(raw, msg, found, config)


def test_hostile_charsets_give_writable_text():
    """Labels that name Python codecs which are not character sets never decode anything."""
    raw = crlf("""\
From: =?utf-7?q?Eve+2D0-?= <eve@example.org>
Subject: =?utf-7?q?hi+2D0-there?=
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain; charset=unicode_escape

a\\ud800 body
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename*=unicode_escape''a%5Cud800.txt

x
--b
Content-Type: application/octet-stream; name*=raw_unicode_escape''b%5Cudfff.bin

y
--b--
""")
    msg, found = parse(raw)
    assert msg.subject == "hi+2D0-there" and msg.from_ == "Eve+2D0- <eve@example.org>"
    assert [a.filename for a in msg.attachments] == ["a\\ud800.txt", "b\\udfff.bin"]
    assert msg.text_preview == "a\\ud800 body"
    assert names(found) == ["mime_unknown_charset"]
    assert "(and " in found[0].detail  # one record per name, with the count of repeats
    for value in [msg.subject, msg.from_, msg.text_preview] + [a.filename for a in msg.attachments] \
            + [v for _, v in msg.headers]:
        value.encode("utf-8")
