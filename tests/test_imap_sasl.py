"""SASL decoding shared by IMAP, POP3 and SMTP (maildissect.protocols.sasl)."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from maildissect.protocols.sasl import (
    SaslExchange, b64decode, decode_cram_md5, decode_login_prompt, decode_oauthbearer, decode_plain,
    decode_scram_client_first, decode_xoauth2,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_b64decode_lenient():
    assert b64decode("dGVzdA==") == b"test"
    assert b64decode("dGVzdA") == b"test"  # padding missing
    assert b64decode(" dGVz\r\ndA== ") == b"test"
    assert b64decode("=") == b"" and b64decode("") == b""
    assert b64decode("not base64!") is None
    assert b64decode("a") is None
    assert b64decode(None) is None


def test_plain():
    assert decode_plain(b64(b"\0bob\0pw")) == (None, "bob", "pw")
    assert decode_plain(b64(b"admin\0bob\0p\xc3\xa4ss")) == ("admin", "bob", "päss")
    assert decode_plain(b64(b"\0bob\0p\xe4ss")) == (None, "bob", "päss")  # Latin-1 fallback
    assert decode_plain(b64(b"bobpw")) is None
    assert decode_plain("%%%") is None


def test_login_prompts():
    assert decode_login_prompt("VXNlcm5hbWU6") == "user"
    assert decode_login_prompt("UGFzc3dvcmQ6") == "password"
    assert decode_login_prompt(b64(b"User Name\0")) == "user"
    assert decode_login_prompt(b64(b"something")) is None


def test_xoauth2_and_oauthbearer():
    assert decode_xoauth2(b64(b"user=bob@x.org\x01auth=Bearer abc.def\x01\x01")) == ("bob@x.org", "abc.def")
    assert decode_xoauth2(b64(b"garbage")) is None
    user, token, extra = decode_oauthbearer(b64(b"n,a=bob=2Cjr@x.org,\x01host=mx\x01port=143\x01auth=Bearer t0k\x01\x01"))
    assert (user, token, extra) == ("bob,jr@x.org", "t0k", {"host": "mx", "port": "143"})
    assert decode_oauthbearer(b64(b"plain text")) is None


def test_cram_md5_and_scram():
    assert decode_cram_md5(b64(b"tim b913a602c7eda7a495b4e6e7334d3890")) == ("tim", "b913a602c7eda7a495b4e6e7334d3890")
    assert decode_cram_md5(b64(b"nospace")) is None
    assert decode_scram_client_first(b64(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")) == "user"


def test_exchange_login_without_prompts_and_with_initial_response():
    ex = SaslExchange("LOGIN")
    ex.client(b64(b"bob"))
    ex.client(b64(b"pw"))
    assert (ex.user, ex.secret, ex.done) == ("bob", "pw", True)
    ex = SaslExchange("login", b64(b"bob"))
    ex.server("UGFzc3dvcmQ6")
    ex.client(b64(b"pw"))
    assert (ex.mechanism, ex.user, ex.secret) == ("LOGIN", "bob", "pw")


def test_exchange_cram_md5_records_challenge_and_cancel():
    ex = SaslExchange("CRAM-MD5")
    ex.server(b64(b"<1.2@host>"))
    ex.client(b64(b"bob 0123456789abcdef0123456789abcdef"))
    assert ex.user == "bob" and ex.detail == "challenge <1.2@host>"
    ex = SaslExchange("PLAIN")
    ex.client("*")
    assert ex.cancelled and ex.done and ex.user is None


def test_exchange_other_mechanisms():
    ex = SaslExchange("SCRAM-SHA-256", b64(b"n,,n=alice,r=abc"))
    ex.server(b64(b"r=abcdef,s=salt,i=4096"))
    ex.client(b64(b"c=biws,r=abcdef,p=proof"))
    assert ex.user == "alice" and ex.secret is None
    ex = SaslExchange("EXTERNAL", b64(b"admin"))
    assert ex.user == "admin"
    ex = SaslExchange("DIGEST-MD5")
    ex.client(b64(b'charset=utf-8,username="chris",realm="elwood.innosoft.com",nonce="x"'))
    assert ex.user == "chris"
    ex = SaslExchange("PLAIN", "=")
    assert ex.user is None and not ex.malformed
    ex = SaslExchange("PLAIN", "@@@")
    assert ex.malformed


@settings(max_examples=200, deadline=None)
@given(mech=st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-1", "EXTERNAL",
                             "ANONYMOUS", "DIGEST-MD5", "GSSAPI", ""]),
       lines=st.lists(st.one_of(st.binary(max_size=60), st.binary(max_size=40).map(base64.b64encode)), max_size=5))
def test_exchange_never_raises(mech, lines):
    ex = SaslExchange(mech, lines[0] if lines else None)
    for i, line in enumerate(lines[1:]):
        (ex.server if i % 2 else ex.client)(line)
    assert ex.done in (True, False)
