"""--redact masks every secret in every output; the HTML report masks them by default.

A capture built here (scapy frames, tests/pcaps.py) plants one unique secret
in each place a secret travels: POP3 PASS (with spaces) and APOP, IMAP LOGIN
as atom, quoted string and literal, every SASL mechanism in SMTP AUTH, IMAP
AUTHENTICATE and POP3 AUTH (initial responses and responses after a
challenge), SASL responses cut by a gap, by the end of the capture and by
max_line, HTTP Basic, Bearer, Digest and Proxy-Authorization, a header line
without its colon, Cookie, Set-Cookie, a token in a Location header, in a URL
query and in a Referer, login forms (urlencoded and JSON) and a JMAP request.
Every output surface is then searched for each secret and for its base64
forms: every table in every format (parquet read back with pyarrow), every
export format (Zeek TSV and JSON too), the report (default, --redact,
--show-secrets), timeline, journeys, analyze, extract's index and files (not
the .eml originals, exact bytes by definition), and live capture (the replay
of the capture through the live path). A capture from the generator's real
clients (smtplib, imaplib, poplib, the webmail client) is checked the same way.
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

import pytest
from click.testing import CliRunner

from maildissect import analyze
from maildissect.cli import TABLE_HELP, cli
from maildissect.model import Anomaly, Command, Credential
from maildissect.redact import MASK, is_secret_name, redact_record, redact_text
from tests.pcaps import conversation, write_pcap

ROOT = Path(__file__).resolve().parent.parent
_rng = random.Random(20240531)


def _secret(n: int = 14, alphabet: str = string.ascii_letters + string.digits) -> str:
    """A unique secret (no English word in it, so that its windows match nothing else)."""
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _hex() -> str:
    return _secret(32, "0123456789abcdef")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


#: name -> (secret, user, plaintexts that went base64-encoded on the wire, shown without --redact)
PLANTED: dict[str, tuple[str, str, list[bytes], bool]] = {}


def plant(name: str, secret: str, user: str = "", blobs=(), shown: bool = True) -> str:
    PLANTED[name] = (secret, user, list(blobs), shown)
    return secret


# -- the capture ------------------------------------------------------------------------

def _smtp(user_line_pairs, port=587):
    return [("s", b"220 mx.example ESMTP\r\n"), ("c", b"EHLO client.example\r\n"),
            ("s", b"250-mx.example\r\n250 AUTH PLAIN LOGIN CRAM-MD5 XOAUTH2 OAUTHBEARER DIGEST-MD5 "
                  b"SCRAM-SHA-256 NTLM GSSAPI\r\n"), *user_line_pairs]


def _build_conversations():
    convs = []  # (server port, exchanges, options)

    def add(port, exchanges, **kw):
        convs.append((port, exchanges, kw))

    # SMTP: every mechanism, initial responses and responses after 334
    s = plant("smtp_plain_ir", _secret(), "alice", [b"\0alice\0"])
    blob = b"\0alice\0" + s.encode()
    add(587, _smtp([("c", b"AUTH PLAIN " + b64(blob) + b"\r\n"), ("s", b"235 2.7.0 ok\r\n"),
                    ("c", b"MAIL FROM:<alice@a.example>\r\n"), ("s", b"250 ok\r\n"),
                    ("c", b"RCPT TO:<bob@b.example>\r\n"), ("s", b"250 ok\r\n"), ("c", b"DATA\r\n"),
                    ("s", b"354 go\r\n"),
                    ("c", b"From: alice@a.example\r\nTo: bob@b.example\r\nSubject: quarterly\r\n"
                          b"Message-ID: <m1@a.example>\r\n\r\nsee https://x.example/r?token=" +
                          plant("message_url_token", _secret()).encode() + b"\r\n.\r\n"),
                    ("s", b"250 2.0.0 queued as ABC123\r\n"), ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]))
    s = plant("smtp_plain_334", _secret(), "bob", [b"bob\0bob\0"])
    add(587, _smtp([("c", b"AUTH PLAIN\r\n"), ("s", b"334 \r\n"), ("c", b64(b"bob\0bob\0" + s.encode()) + b"\r\n"),
                    ("s", b"235 ok\r\n")]))
    u = "carol"
    s = plant("smtp_login", _secret(), u)
    add(587, _smtp([("c", b"AUTH LOGIN\r\n"), ("s", b"334 VXNlcm5hbWU6\r\n"), ("c", b64(u.encode()) + b"\r\n"),
                    ("s", b"334 UGFzc3dvcmQ6\r\n"), ("c", b64(s.encode()) + b"\r\n"), ("s", b"535 5.7.8 no\r\n")]))
    s = plant("smtp_xoauth2", _secret(40), "dave", [b"user=dave\x01auth=Bearer "])
    add(587, _smtp([("c", b"AUTH XOAUTH2 " + b64(b"user=dave\x01auth=Bearer " + s.encode() + b"\x01\x01") + b"\r\n"),
                    ("s", b"235 ok\r\n")]))
    s = plant("smtp_oauthbearer", _secret(40), "erin", [b"n,a=erin,\x01host=mx\x01auth=Bearer "])
    add(587, _smtp([("c", b"AUTH OAUTHBEARER " + b64(b"n,a=erin,\x01host=mx\x01auth=Bearer " + s.encode()
                                                     + b"\x01\x01") + b"\r\n"), ("s", b"235 ok\r\n")]))
    s = plant("smtp_cram_md5", _hex(), "frank", [b"frank "])
    add(587, _smtp([("c", b"AUTH CRAM-MD5\r\n"), ("s", b"334 " + b64(b"<1896.697170952@mx.example>") + b"\r\n"),
                    ("c", b64(b"frank " + s.encode()) + b"\r\n"), ("s", b"235 ok\r\n")]))
    s = plant("smtp_digest_md5", _hex(), "gina", [b'username="gina",realm="mx",nonce="n1",cnonce="c1",nc=00000001,'
                                                  b'qop=auth,digest-uri="smtp/mx",response='])
    add(587, _smtp([("c", b"AUTH DIGEST-MD5\r\n"), ("s", b"334 " + b64(b'realm="mx",nonce="n1",qop="auth"') + b"\r\n"),
                    ("c", b64(PLANTED["smtp_digest_md5"][2][0] + s.encode()) + b"\r\n"),
                    ("s", b"334 " + b64(b"rspauth=0123") + b"\r\n"), ("c", b"\r\n"), ("s", b"235 ok\r\n")]))
    s = plant("smtp_scram", _secret(), "hank", [b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p="])
    add(587, _smtp([("c", b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=hank,r=fyko+d2lbbFgONRv9qkxdawL") + b"\r\n"),
                    ("s", b"334 " + b64(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
                          + b"\r\n"),
                    ("c", b64(PLANTED["smtp_scram"][2][0] + s.encode()) + b"\r\n"),
                    ("s", b"334 " + b64(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=") + b"\r\n"), ("c", b"\r\n"),
                    ("s", b"235 ok\r\n")]))
    s = plant("smtp_ntlm", _secret(), "ivan", [b"NTLMSSP\0\x03\0\0\0" + b"\0" * 20])
    add(587, _smtp([("c", b"AUTH NTLM " + b64(b"NTLMSSP\0\x01\0\0\0\x07\x82\x08\xa2") + b"\r\n"),
                    ("s", b"334 " + b64(b"NTLMSSP\0\x02\0\0\0" + b"\0" * 40) + b"\r\n"),
                    ("c", b64(PLANTED["smtp_ntlm"][2][0] + s.encode() + b"\0" * 8) + b"\r\n"), ("s", b"235 ok\r\n")]))
    s = plant("smtp_gssapi", _secret(), "judy", [b"\x60\x82\x02\x10\x06\x09"])
    add(587, _smtp([("c", b"AUTH GSSAPI\r\n"), ("s", b"334 \r\n"),
                    ("c", b64(PLANTED["smtp_gssapi"][2][0] + s.encode()) + b"\r\n"), ("s", b"334 \r\n"),
                    ("c", b"\r\n"), ("s", b"235 ok\r\n")]))
    # cut by the end of the capture: an AUTH command line, and a response line
    s = plant("smtp_cut_end_ir", _secret(), "kim", [b"\0kim\0"])
    add(587, _smtp([("c", b"AUTH PLAIN " + b64(b"\0kim\0" + s.encode()))]), close=False)
    s = plant("smtp_cut_end_response", _secret(), "liam")
    add(587, _smtp([("c", b"AUTH LOGIN\r\n"), ("s", b"334 VXNlcm5hbWU6\r\n"), ("c", b64(b"liam") + b"\r\n"),
                    ("s", b"334 UGFzc3dvcmQ6\r\n"), ("c", b64(s.encode()))]), close=False)
    # a response cut by a gap (its middle segment never captured), then the verdict
    s = plant("smtp_gap", _secret(30), "mia", [b"\0mia\0"])
    response = b64(b"\0mia\0" + s.encode())
    add(587, _smtp([("c", b"AUTH PLAIN\r\n"), ("s", b"334 \r\n"), ("c", response + b"\r\n"), ("s", b"535 no\r\n"),
                    ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]), mss=16, drop=response[16:32])
    # a response longer than max_line (64 KiB): its head is quoted in smtp_line_too_long
    s = plant("smtp_overlong", _secret(), "nora", [b"\0nora\0"])
    add(587, _smtp([("c", b"AUTH PLAIN\r\n"), ("s", b"334 \r\n"),
                    ("c", b64(b"\0nora\0" + s.encode() + b"A" * 60000) + b"\r\n"), ("s", b"500 5.5.6 too long\r\n"),
                    ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]))

    # a client that sends one more line of SASL data than its mechanism needs
    s = plant("smtp_extra_response", _secret(), "ugo", [b"\0ugo\0"])
    add(587, _smtp([("c", b"AUTH PLAIN " + b64(b"\0ugo\0x") + b"\r\n" + b64(b"\0ugo\0" + s.encode()) + b"\r\n"),
                    ("s", b"535 5.7.8 no\r\n503 5.5.1 what\r\n"), ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]))
    # captures that begin inside an exchange (its AUTH command not captured): the server's
    # challenge says the client's next line is a SASL response
    s = plant("smtp_midstream", _secret(), "olaf", [b"\0olaf\0"])
    add(587, [("s", b"334 \r\n"), ("c", b64(b"\0olaf\0" + s.encode()) + b"\r\n"), ("s", b"235 2.7.0 ok\r\n"),
              ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")], handshake=False)
    s = plant("imap_midstream", _secret(), "pia", [b"\0pia\0"], shown=False)
    add(143, [("s", b"+ \r\n"), ("c", b64(b"\0pia\0" + s.encode()) + b"\r\n"), ("s", b"c1 OK done\r\n"),
              ("c", b"c2 LOGOUT\r\n"), ("s", b"* BYE\r\nc2 OK\r\n")], handshake=False)
    s = plant("pop3_midstream", _secret(), "rex", [b"\0rex\0"], shown=False)
    add(110, [("s", b"+ \r\n"), ("c", b64(b"\0rex\0" + s.encode()) + b"\r\n"), ("s", b"+OK\r\n"),
              ("c", b"STAT\r\n"), ("s", b"+OK 0 0\r\n")], handshake=False)

    # IMAP: LOGIN as atom, quoted string (with spaces) and literal; AUTHENTICATE
    g = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=XOAUTH2] ready\r\n"
    i1, i2, i3 = (plant("imap_login_atom", _secret(), "olga"),
                  plant("imap_login_quoted", f"{_secret(9)} {_secret(9)} {_secret(9)}", "pete"),
                  plant("imap_login_literal", _secret(), "quinn"))
    i4 = plant("imap_authenticate_ir", _secret(), "rosa", [b"\0rosa\0"])
    i5 = plant("imap_authenticate_continuation", _secret(), "sam", [b"\0sam\0"], shown=True)
    i6 = plant("imap_login_both_literals", _secret(), "tina")
    add(143, [("s", g), ("c", f"a1 LOGIN olga {i1}\r\n".encode()), ("s", b"a1 NO [AUTHENTICATIONFAILED] no\r\n"),
              ("c", f'a2 LOGIN "pete" "{i2}"\r\n'.encode()), ("s", b"a2 NO no\r\n"),
              ("c", f"a3 LOGIN quinn {{{len(i3)}}}\r\n".encode()), ("s", b"+ Ready\r\n"),
              ("c", i3.encode() + b"\r\n"), ("s", b"a3 NO no\r\n"),
              ("c", b"a4 AUTHENTICATE PLAIN " + b64(b"\0rosa\0" + i4.encode()) + b"\r\n"), ("s", b"a4 NO no\r\n"),
              ("c", b"a5 AUTHENTICATE PLAIN\r\n"), ("s", b"+ \r\n"), ("c", b64(b"\0sam\0" + i5.encode()) + b"\r\n"),
              ("s", b"a5 NO no\r\n"), ("c", b"a6 LOGIN {4}\r\n"), ("s", b"+ go\r\n"),
              ("c", f"tina {{{len(i6)}}}\r\n".encode()), ("s", b"+ go\r\n"), ("c", i6.encode() + b"\r\n"),
              ("s", b"a6 OK done\r\n"), ("c", b"a7 LOGOUT\r\n"), ("s", b"* BYE\r\na7 OK\r\n")])
    i7 = plant("imap_authenticate_login", _secret(), "uma")
    i8 = plant("imap_login_literal_cut", _secret(20), "vera", shown=False)
    add(143, [("s", g), ("c", b"b1 AUTHENTICATE LOGIN\r\n"), ("s", b"+ VXNlcm5hbWU6\r\n"), ("c", b64(b"uma") + b"\r\n"),
              ("s", b"+ UGFzc3dvcmQ6\r\n"), ("c", b64(i7.encode()) + b"\r\n"), ("s", b"b1 OK\r\n"),
              ("c", f"b2 LOGIN vera {{{len(i8)}}}\r\n".encode()), ("s", b"+ go\r\n"), ("c", i8[:12].encode())],
        close=False)

    # POP3: PASS with spaces, APOP, AUTH
    p1 = plant("pop3_pass_spaces", f"{_secret(9)} {_secret(9)} {_secret(9)}", "walt")
    p2 = plant("pop3_apop", _hex(), "xena")
    p3 = plant("pop3_auth_plain_ir", _secret(), "yara", [b"\0yara\0"])
    p4 = plant("pop3_auth_login", _secret(), "zoe")
    add(110, [("s", b"+OK POP3 ready <1896.697170952@pop.example>\r\n"), ("c", b"USER walt\r\n"), ("s", b"+OK\r\n"),
              ("c", f"PASS {p1}\r\n".encode()), ("s", b"-ERR no\r\n"), ("c", f"APOP xena {p2}\r\n".encode()),
              ("s", b"-ERR no\r\n"), ("c", b"AUTH PLAIN " + b64(b"\0yara\0" + p3.encode()) + b"\r\n"),
              ("s", b"-ERR no\r\n"), ("c", b"AUTH LOGIN\r\n"), ("s", b"+ VXNlcm5hbWU6\r\n"), ("c", b64(b"zoe") + b"\r\n"),
              ("s", b"+ UGFzc3dvcmQ6\r\n"), ("c", b64(p4.encode()) + b"\r\n"), ("s", b"+OK\r\n"), ("c", b"QUIT\r\n"),
              ("s", b"+OK bye\r\n")])
    p5 = plant("pop3_pass_cut", _secret(), "abe", shown=False)
    add(110, [("s", b"+OK ready\r\n"), ("c", b"USER abe\r\n"), ("s", b"+OK\r\n"), ("c", f"PASS {p5}".encode())],
        close=False)

    # HTTP: authorization schemes, cookies, tokens in URLs and headers, login forms, JMAP
    h1 = plant("http_basic", _secret(), "ivy", [b"ivy:"])
    h2 = plant("http_bearer", _secret(40))
    h3 = plant("http_digest", _hex())
    h4 = plant("http_cookie", _secret(), shown=False)
    h5 = plant("http_set_cookie", _secret(), shown=False)
    h6 = plant("http_location", _secret(), shown=False)
    h7 = plant("http_query", _secret())
    h8 = plant("http_form_password", _secret())
    h9 = plant("http_form_token", _secret(), shown=False)
    h10 = plant("http_json_password", _secret())
    h11 = plant("http_referer", _secret())
    h12 = plant("http_proxy_basic", _secret(), "pat", [b"pat:"])
    h13 = plant("http_bad_header_line", _secret(), "hal", [b"hal:"])
    h14 = plant("http_jmap_token", _secret())
    form = f"_user=judy&_pass={h8}&_token={h9}&_task=login".encode()
    jlogin = json.dumps({"username": "kim@x.example", "password": h10}).encode()
    jmap = json.dumps({"using": ["urn:ietf:params:jmap:core"], "methodCalls": {"accessToken": h14}}).encode()

    def ok(body=b"ok", extra=b""):
        return b"HTTP/1.1 200 OK\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body
    add(80, [
        ("c", f"GET /mail/?_task=mail&access_token={h7} HTTP/1.1\r\nHost: webmail.x.example\r\n".encode()
         + b"Authorization: Basic " + b64(f"ivy:{h1}".encode()) + f"\r\nCookie: roundcube_sessid={h4}; theme=dark\r\n"
         f"Referer: https://webmail.x.example/?_task=login&token={h11}\r\n\r\n".encode()),
        ("s", ok(extra=f"Set-Cookie: roundcube_sessauth={h5}; path=/; HttpOnly\r\n".encode())),
        ("c", b"POST /?_task=login HTTP/1.1\r\nHost: webmail.x.example\r\n"
              b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(form) + form),
        ("s", f"HTTP/1.1 302 Found\r\nLocation: /?_task=mail&_token={h6}\r\nContent-Length: 0\r\n\r\n".encode()),
        ("c", f"POST /jmap/ HTTP/1.1\r\nHost: webmail.x.example\r\nAuthorization: Bearer {h2}\r\n".encode()
         + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(jmap) + jmap),
        ("s", ok(b"{}", b"Content-Type: application/json\r\n")),
        ("c", b"POST /api/login HTTP/1.1\r\nHost: app.x.example\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(jlogin) + jlogin),
        ("s", ok(b'{"ok": true}', b"Content-Type: application/json\r\n")),
        ("c", f'GET /private HTTP/1.1\r\nHost: app.x.example\r\nAuthorization: Digest username="lee", realm="r", '
              f'nonce="abc", uri="/private", response="{h3}"\r\n'.encode()
         + b"Proxy-Authorization: Basic " + b64(f"pat:{h12}".encode()) + b"\r\n\r\n"),
        ("s", ok()),
        ("c", b"GET /other HTTP/1.1\r\nHost: app.x.example\r\nAuthorization Basic " + b64(f"hal:{h13}".encode())
         + b"\r\n\r\n"),
        ("s", ok()),
    ])
    return convs


def build(path: Path) -> None:
    frames = []
    for n, (port, exchanges, kw) in enumerate(CONVERSATIONS):
        drop = kw.get("drop")
        fr, _, _ = conversation(client=("10.1.0.%d" % (n + 10), 41000 + n), server=("10.2.0.1", port),
                                exchanges=exchanges, t0=1_700_000_000.0 + 10 * n,
                                **{k: v for k, v in kw.items() if k != "drop"})
        if drop is not None:
            fr = [f for f in fr if drop not in f[1]]
        frames += fr
    write_pcap(str(path), sorted(frames, key=lambda f: f[0]))


# -- what to look for --------------------------------------------------------------------

def secret_forms(secret: str, user: str = "", blobs=()) -> set[str]:
    """Every string whose presence reveals at least 4 characters of ``secret``.

    Its windows of 8 characters (each word of a secret with spaces included), and
    for each text the secret was or could be base64-encoded in (the secret alone,
    ``\\0user\\0secret``, ``user\\0secret``, ``user:secret``, the blobs of the wire)
    every 4-character-aligned piece of the base64 that decodes to 4 or more of the
    secret's bytes (the shortest such pieces: any longer leak contains one).
    """
    found = {secret[i:i + 8] for i in range(max(1, len(secret) - 7))}
    raw = secret.encode()
    prefixes = [b"", b"\0" + user.encode() + b"\0", user.encode() + b"\0", user.encode() + b":", *blobs]
    for prefix in prefixes:
        for tail in (b"", b"\x01\x01", b"\0" * 8):
            text = prefix + raw + tail
            enc = b64(text).decode()
            a, b = len(prefix), len(prefix) + len(raw)
            for i in range(0, len(text), 3):
                for j in range(i, len(text), 3):
                    if min(b, j + 3) - max(a, i) >= 4:
                        found.add(enc[4 * (i // 3):4 * (j // 3) + 4])
                        break
    return found


CONVERSATIONS = _build_conversations()
FORMS = {name: {f.lower() for f in secret_forms(s, u, blobs)} for name, (s, u, blobs, _) in PLANTED.items()}


def leaks(text: str, forms: dict[str, set[str]] | None = None) -> list[str]:
    """Names of the planted secrets that ``text`` reveals (case-insensitive: an upper-cased
    base64 piece reveals nearly as much)."""
    low = text.lower()
    return sorted(name for name, fs in (forms or FORMS).items() if any(f in low for f in fs))


def texts_of(directory: Path, skip_eml: bool = False) -> str:
    """All the text in the files under ``directory`` (Parquet read back with pyarrow)."""
    import pyarrow.parquet as pq
    parts = []
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or (skip_eml and p.suffix == ".eml"):
            continue
        if p.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(p).to_pylist(), default=str, ensure_ascii=False))
        else:
            parts.append(p.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def run(*args) -> str:
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("redact") / "secrets.pcap"
    build(path)
    return path


# -- the capture really carries the secrets to the outputs ----------------------------

def test_the_secret_forms_cover_base64_pieces():
    forms = secret_forms("Abcdefgh", "u")
    assert b64(b"\0u\0Abcdefgh").decode()[4:12] in forms  # "Abc" + "def": two groups, 6 secret bytes
    assert b64(b"Abcdefgh").decode()[:8] in forms and "Abcdefgh" in forms
    assert not any(f in b64(b"\0u\0Abc").decode() for f in forms)  # 3 secret bytes reveal too little


def test_without_redact_the_secrets_are_there(capture, tmp_path):
    """The checks below can fail: unmasked, the outputs show the secrets."""
    run("export", capture, "-q", "-j", "1", "-f", "jsonl", "-o", tmp_path / "x")
    found = set(leaks(texts_of(tmp_path / "x")))
    expected = {name for name, (_, _, _, shown) in PLANTED.items() if shown}
    assert expected <= found, sorted(expected - found)


# -- every output surface, with --redact ---------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "table"])
def test_every_table_is_masked(capture, tmp_path, fmt):
    for table in TABLE_HELP:
        out = tmp_path / f"{table}.{fmt}"
        run(table, capture, "--redact", "-q", "-j", "1", "-f", fmt, "-o", out)
        assert not leaks(texts_of(tmp_path) if fmt == "parquet" else out.read_text()), (table, fmt)
    assert MASK in texts_of(tmp_path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "zeek", "zeek-json"])
def test_every_export_is_masked(capture, tmp_path, fmt):
    run("export", capture, "--redact", "-q", "-j", "1", "-f", fmt, "-o", tmp_path / "x")
    text = texts_of(tmp_path / "x")
    assert text and not leaks(text)
    if fmt == "zeek":
        pop3 = (tmp_path / "x" / "pop3.log").read_text()
        assert "PASS\t********" in pop3 and "APOP\txena ********" in pop3


def test_timeline_journeys_analyze_are_masked(capture):
    for args in (["timeline", "-f", "jsonl"], ["timeline"], ["journeys", "-f", "jsonl"], ["journeys"],
                 ["journeys", "--summary", "-f", "csv"], ["analyze"]):
        assert not leaks(run(args[0], capture, "--redact", "-q", "-j", "1", *args[1:])), args


def test_report_masks_by_default(capture, tmp_path):
    run("report", capture, "-q", "-j", "1", "-o", tmp_path / "r.html")
    assert not leaks((tmp_path / "r.html").read_text())
    run("report", capture, "-q", "-j", "1", "--redact", "-o", tmp_path / "r1.html")
    assert not leaks((tmp_path / "r1.html").read_text())
    run("report", capture, "-q", "-j", "1", "--redact", "--show-secrets", "-o", tmp_path / "r2.html")
    assert not leaks((tmp_path / "r2.html").read_text())  # --redact wins over --show-secrets
    run("report", capture, "-q", "-j", "1", "--show-secrets", "-o", tmp_path / "r3.html")
    assert {"http_basic", "pop3_pass_spaces"} <= set(leaks((tmp_path / "r3.html").read_text()))  # asked for


def test_extract_index_and_files_are_masked(capture, tmp_path):
    """extract --redact masks its index; the .eml files are the exact bytes transferred."""
    run("extract", capture, "--redact", "-q", "-o", tmp_path / "x")
    assert (tmp_path / "x" / "index.csv").exists() and list((tmp_path / "x" / "messages").glob("*.eml"))
    assert not leaks(texts_of(tmp_path / "x", skip_eml=True))
    # the message's own text is not changed in its .eml (an original), only in the records
    eml = texts_of(tmp_path / "x" / "messages")
    assert leaks(eml) == ["message_url_token"]


def test_api_records_and_frames_are_masked(capture):
    result = analyze(str(capture), redact=True)
    everything = repr(vars(result.records)) + repr(result.event_records) + repr(result.journey_records.hops)
    assert not leaks(everything)
    frames = "".join(result.table(t).to_json(orient="records", date_format="iso", default_handler=str)
                     for t in TABLE_HELP)
    assert not leaks(frames)
    assert {c.secret for c in result.records.credentials if c.secret} == {MASK}


def _replay_live(monkeypatch, path, **kw):
    from maildissect import live as live_mod
    from tests.test_live import ReplaySource
    monkeypatch.setattr(live_mod, "open_live", lambda iface, bpf, backend: ReplaySource(path))
    return live_mod


def test_live_is_masked(capture, monkeypatch):
    """live prints records as they complete: the same masking, on every table it can print."""
    from maildissect.config import Config
    live_mod = _replay_live(monkeypatch, capture)
    out = []
    live_mod.run_live("replay", bpf=None, backend="scapy", config=Config(redact=True),
                      on_record=lambda t, r: out.append((t, r)),
                      tables=("flows", "sessions", "commands", "messages", "credentials", "anomalies", "http",
                              "mailboxes"))
    assert {t for t, _ in out} >= {"commands", "credentials", "anomalies", "http", "messages"}
    assert not leaks(repr(out))
    for fmt in ("jsonl", "table"):
        res = CliRunner().invoke(cli, ["live", "-i", "replay", "--backend", "scapy", "--redact", "-q", "--format", fmt],
                                 catch_exceptions=False)
        assert res.exit_code == 0 and res.output.strip(), res.output
        assert not leaks(res.output), fmt


# -- the generator's real clients ----------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from maildissect.generate import generate
    out = tmp_path_factory.mktemp("gen") / "journey.pcap"
    doc = generate("journey", str(out), messages=1, attachment_size=0, seed=4242, capture="synthetic")
    return out, doc


def test_generated_journey_is_masked(generated, tmp_path):
    """smtplib AUTH PLAIN and LOGIN, imaplib LOGIN, poplib USER/PASS, the webmail login form."""
    path, doc = generated
    mechanisms = {c["mechanism"] for s in doc["sessions"] for c in s.get("credentials") or []}
    assert {"PLAIN", "LOGIN", "USER/PASS", "FORM"} <= mechanisms, mechanisms
    forms = {u["user"]: {f.lower() for f in secret_forms(u["password"], u["user"])} for u in doc["users"]}
    run("export", path, "-q", "-j", "1", "-f", "jsonl", "-o", tmp_path / "plain")
    assert leaks(texts_of(tmp_path / "plain"), forms)  # unmasked, they are there
    for fmt in ("jsonl", "zeek"):
        run("export", path, "--redact", "-q", "-j", "1", "-f", fmt, "-o", tmp_path / fmt)
        assert not leaks(texts_of(tmp_path / fmt), forms), fmt
    run("report", path, "-q", "-j", "1", "-o", tmp_path / "r.html")
    assert not leaks((tmp_path / "r.html").read_text(), forms)
    assert not leaks(run("timeline", path, "--redact", "-q", "-j", "1", "-f", "jsonl"), forms)


@pytest.mark.parametrize("capture_name", ["journey.pcap", "webmail.pcap", "imap.pcap", "pop3.pcap"])
def test_bundled_captures(capture_name, tmp_path):
    """The sample captures (generated labs, and Zeek's POP3 trace of a real client)."""
    path = ROOT / "captures" / capture_name
    secrets = {c.secret for c in analyze(str(path)).records.credentials if c.secret and len(c.secret) > 5}
    assert secrets
    forms = {s: {f.lower() for f in secret_forms(s)} for s in secrets}
    run("export", path, "--redact", "-q", "-j", "1", "-f", "jsonl", "-o", tmp_path / "x")
    assert not leaks(texts_of(tmp_path / "x"), forms)


# -- the masking rules -----------------------------------------------------------------------

def test_marked_spans_are_masked_to_the_end():
    cmd = Command(1, "pop3", 0.0, "PASS", "one two three", secret_at=0)
    assert redact_record(cmd).argument == MASK
    cmd = Command(1, "imap", 0.0, "LOGIN", '"john" "pass word"', secret_at=7)
    assert redact_record(cmd).argument == '"john" ' + MASK
    assert redact_record(redact_record(cmd)) == redact_record(cmd)  # idempotent
    plain = Command(1, "smtp", 0.0, "AUTH", "PLAIN")
    assert redact_record(plain) is plain
    a = Anomaly(0.0, 1, "client", "smtp_incomplete_line", "b'AUTH PLAIN AGFsaWNl", secret_at=13)
    assert redact_record(a).detail == "b'AUTH PLAIN " + MASK
    c = Credential(1, "smtp", 0.0, "PLAIN", "alice", "pw")
    assert redact_record(c).secret == MASK and redact_record(c).user == "alice"


@pytest.mark.parametrize("text,expected", [
    ("GET /a?access_token=abc&x=1 HTTP/1.1", "GET /a?access_token=********&x=1 HTTP/1.1"),
    ("/login?user=bob&password=hunter2", "/login?user=bob&password=********"),
    ("/x?PHPSESSID=1;jsessionid=2", "/x?PHPSESSID=********;jsessionid=********"),
    ("/search?q=compass&keyword=pass", "/search?q=compass&keyword=pass"),
    ("/oauth/cb?code=4/0Ab&state=x", "/oauth/cb?code=********&state=x"),
    ("/cb#access_token=abc&state=x", "/cb#access_token=********&state=x"),
    ("/x?pass%77ord=1", "/x?pass%77ord=********"),
    ("/x?apiKey=", "/x?apiKey="),
    ("sid=abc; theme=dark", "sid=********; theme=dark"),
    ("{'accessToken': 'T0k', 'accountId': 'a1'}", "{'accessToken': '********', 'accountId': 'a1'}"),
    ('{"password": "cut sho', '{"password": "********"'),
    ('{"pin": 1234}', '{"pin": ********}'),
    ("Authorization Basic dXNlcjpwYXNz", "Authorization Basic ********"),
    ("Bearer abc.def.ghi", "Bearer ********"),
    ("Basic Services", "Basic Services"),
    ("no query at all", "no query at all"),
])
def test_redact_text(text, expected):
    assert redact_text(text) == expected
    assert redact_text(expected) == expected


def test_secret_names():
    assert all(map(is_secret_name, ["_pass", "access_token", "apiKey", "X-Auth", "sessid", "refreshToken",
                                    "userpass", "roundcube_sessauth"]))
    assert not any(map(is_secret_name, ["compass", "keyword", "q", "state", "zipcode", "passage"]))
