"""Mail through proxies: HTTP CONNECT, SOCKS4/4a and SOCKS5 on any port, the stream inside
dissected as a session of its own protocol (docs/protocols/detection.md)."""

from __future__ import annotations

import pytest

import maildissect
from maildissect.model import Command, Credential
from maildissect.protocols.base import TunnelStart
from maildissect.protocols.socks import SocksDissector, looks_like_socks
from tests.helpers import C, S, of_type, run_all_ways
from tests.pcaps import conversation, impair, write_pcap

SMTP = [("s", b"220 mx.example ESMTP\r\n"), ("c", b"EHLO client.example\r\n"), ("s", b"250 mx.example\r\n"),
        ("c", b"MAIL FROM:<a@example.org>\r\n"), ("s", b"250 ok\r\n"), ("c", b"RCPT TO:<b@example.net>\r\n"),
        ("s", b"250 ok\r\n"), ("c", b"DATA\r\n"), ("s", b"354 go\r\n"),
        ("c", b"Subject: through a proxy\r\nMessage-ID: <1@example.org>\r\n\r\nhello\r\n.\r\n"),
        ("s", b"250 queued as X1\r\n"), ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]
SMTP_COMMANDS = ["EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]

SOCKS5_AUTH = [("c", b"\x05\x02\x00\x02"), ("s", b"\x05\x02"), ("c", b"\x01\x03bot\x06s3cret"), ("s", b"\x01\x00")]


def socks5_connect(atyp_addr: bytes, port: int, reply=0) -> list:
    return [("c", b"\x05\x01\x00" + atyp_addr + port.to_bytes(2, "big")),
            ("s", b"\x05" + bytes([reply]) + b"\x00\x01\x0a\x00\x00\x02\x99\x99")]


DOMAIN = b"\x03\x0emx.example.net"


def analyse(tmp_path, exchanges, port, name="t", **kw):
    frames, _, _ = conversation(server=("10.0.0.2", port), exchanges=exchanges, **{
        k: v for k, v in kw.items() if k in ("mss",)})
    if kw.get("impaired"):
        frames = impair(frames, seed=3)
    path = tmp_path / f"{name}.pcap"
    write_pcap(path, frames)
    return maildissect.analyze(str(path))


def check_smtp_inside(a, tunnel, target):
    (sess,) = a.records.sessions
    assert (sess.protocol, sess.tunnel, sess.tunnel_target) == ("smtp", tunnel, target)
    assert [f.protocol for f in a.records.flows] == ["smtp"]
    assert [c.command for c in a.records.commands if c.protocol == "smtp"] == [""] + SMTP_COMMANDS
    (msg,) = a.records.messages
    assert (msg.mail_from, msg.rcpt_to, msg.subject, msg.queue_id) == \
        ("a@example.org", ["b@example.net"], "through a proxy", "X1")
    assert not a.records.anomalies
    # every command of the session has its own seq: the proxy's first, then the mail protocol's
    seqs = [c.seq for c in a.records.commands]
    assert len(seqs) == len(set(seqs))
    return sess


@pytest.mark.parametrize("mss,impaired", [(1460, False), (3, False), (1460, True)],
                         ids=["whole", "3-byte segments", "reordered+duplicated"])
def test_socks5_with_password_to_a_domain(tmp_path, mss, impaired):
    a = analyse(tmp_path, SOCKS5_AUTH + socks5_connect(DOMAIN, 25) + SMTP, 1080, mss=mss, impaired=impaired)
    sess = check_smtp_inside(a, "socks5", "mx.example.net:25")
    assert (sess.auth_user, sess.auth_mechanism) == ("bot", "USERNAME/PASSWORD")
    socks = [(c.command, c.argument, c.reply_code, c.reply_text) for c in a.records.commands if c.protocol == "socks"]
    assert socks == [("METHODS", "no authentication, username/password", "2", "username/password"),
                     ("AUTH", "bot", "0", "success"), ("CONNECT", "mx.example.net:25", "0", "succeeded; bound 10.0.0.2:39321")]
    assert [(c.protocol, c.mechanism, c.user, c.secret, c.success) for c in a.records.credentials] == \
        [("socks", "USERNAME/PASSWORD", "bot", "s3cret", True)]


@pytest.mark.parametrize("addr,target", [(b"\x01\xc0\x00\x02\x19", "192.0.2.25:587"),
                                         (b"\x04" + bytes.fromhex("20010db8000000000000000000000019"),
                                          "[2001:db8::19]:587")])
def test_socks5_without_auth_to_addresses_on_an_unknown_port(tmp_path, addr, target):
    """On a port that names nothing, SOCKS is recognised by its first bytes."""
    ex = [("c", b"\x05\x01\x00"), ("s", b"\x05\x00")] + socks5_connect(addr, 587) + SMTP
    a = analyse(tmp_path, ex, 9999)
    sess = check_smtp_inside(a, "socks5", target)
    assert sess.auth_user is None and not a.records.credentials


def test_socks4_and_socks4a(tmp_path):
    granted = ("s", b"\x00\x5a\x00\x00\x00\x00\x00\x00")
    a = analyse(tmp_path, [("c", b"\x04\x01\x00\x19\xc0\x00\x02\x19\x00"), granted] + SMTP, 1080, "s4")
    check_smtp_inside(a, "socks4", "192.0.2.25:25")
    a = analyse(tmp_path, [("c", b"\x04\x01\x00\x19\x00\x00\x00\x07bot\x00mx.example.net\x00"), granted] + SMTP,
                9050, "s4a")
    sess = check_smtp_inside(a, "socks4", "mx.example.net:25")
    assert [(c.mechanism, c.user, c.secret) for c in a.records.credentials] == [("USERID", "bot", None)]
    assert sess.auth_user == "bot"
    (connect,) = [c for c in a.records.commands if c.protocol == "socks"]
    assert (connect.command, connect.reply_code, connect.reply_text) == \
        ("CONNECT", "90", "request granted; bound 0.0.0.0:0")


def test_http_connect_with_proxy_authorization(tmp_path):
    ex = [("c", b"CONNECT mx.example.net:25 HTTP/1.1\r\nHost: mx.example.net:25\r\n"
                b"Proxy-Authorization: Basic Ym90OnMzY3JldA==\r\n\r\n"),
          ("s", b"HTTP/1.1 200 Connection established\r\n\r\n")] + SMTP
    a = analyse(tmp_path, ex, 3128)
    check_smtp_inside(a, "http-connect", "mx.example.net:25")
    assert [(h.method, h.uri, h.status) for h in a.records.http] == [("CONNECT", "mx.example.net:25", 200)]
    assert [(c.protocol, c.mechanism, c.user, c.secret) for c in a.records.credentials] == \
        [("http", "BASIC", "bot", "s3cret")]


def test_http_connect_refused_is_an_http_session(tmp_path):
    ex = [("c", b"CONNECT mx.example.net:25 HTTP/1.1\r\nHost: mx.example.net:25\r\n\r\n"),
          ("s", b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")]
    a = analyse(tmp_path, ex, 8080)
    (sess,) = a.records.sessions
    assert (sess.protocol, sess.tunnel) == ("http", None)
    assert [(h.method, h.status) for h in a.records.http] == [("CONNECT", 407)]


def test_socks_refusals(tmp_path):
    a = analyse(tmp_path, [("c", b"\x05\x01\x00"), ("s", b"\x05\x00")] + socks5_connect(DOMAIN, 25, reply=5),
                1080, "refused")
    (sess,) = a.records.sessions
    assert (sess.protocol, sess.tunnel) == ("socks", None)
    assert [(c.command, c.reply_code, c.reply_text) for c in a.records.commands] == \
        [("METHODS", "0", "no authentication"), ("CONNECT", "5", "connection refused")]
    a = analyse(tmp_path, [("c", b"\x05\x01\x02"), ("s", b"\x05\xff")], 1080, "nomethod")
    assert [(c.command, c.reply_code, c.reply_text) for c in a.records.commands] == \
        [("METHODS", "255", "no acceptable methods")]
    a = analyse(tmp_path, SOCKS5_AUTH[:3] + [("s", b"\x01\x01")], 1080, "badpass")
    assert [(c.user, c.secret, c.success) for c in a.records.credentials] == [("bot", "s3cret", False)]


def test_an_unknown_protocol_inside_is_said(tmp_path):
    ex = [("c", b"\x05\x01\x00"), ("s", b"\x05\x00")] + socks5_connect(DOMAIN, 6379) + \
         [("c", b"*1\r\n$4\r\nPING\r\n"), ("s", b"+PONG\r\n")]
    a = analyse(tmp_path, ex, 1080)
    (sess,) = a.records.sessions
    assert (sess.protocol, sess.tunnel, sess.tunnel_target) == ("socks", "socks5", "mx.example.net:6379")
    (anomaly,) = a.records.anomalies
    assert anomaly.name == "detect_unknown_protocol" and "socks5 tunnel to mx.example.net:6379" in anomaly.detail


def test_tls_inside_a_tunnel_shows_its_hello(tmp_path):
    import ssl
    from maildissect.generate.tls import TlsMaterial
    from tests.test_tls import handshake
    mat = TlsMaterial()
    try:
        hello, server_hello = handshake(mat, ssl.TLSVersion.TLSv1_3, sni="mail.bob.example")
    finally:
        mat.close()
    ex = [("c", b"CONNECT mail.bob.example:465 HTTP/1.1\r\n\r\n"), ("s", b"HTTP/1.1 200 OK\r\n\r\n"),
          ("c", hello), ("s", server_hello)]
    a = analyse(tmp_path, ex, 3128)
    (sess,) = a.records.sessions
    assert (sess.protocol, sess.tls, sess.sni, sess.tunnel) == ("smtp", True, "mail.bob.example", "http-connect")
    assert sess.tls_version == "TLSv1.3" and sess.tls_bytes_client == len(hello)
    assert [f.protocol for f in a.records.flows] == ["smtps"]


def test_optimistic_client_data_reaches_the_inner_protocol(tmp_path):
    """A client that sends its request and its first bytes before the proxy answers (Tor does)."""
    ex = [("c", b"\x05\x01\x00\x05\x01\x00" + DOMAIN + b"\x00\x50GET /mail HTTP/1.1\r\nHost: webmail\r\n\r\n"),
          ("s", b"\x05\x00\x05\x00\x00\x01\x0a\x00\x00\x02\x99\x99HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")]
    a = analyse(tmp_path, ex, 1080)
    (sess,) = a.records.sessions
    assert (sess.protocol, sess.tunnel, sess.tunnel_target) == ("http", "socks5", "mx.example.net:80")
    assert [(h.method, h.uri, h.status) for h in a.records.http] == [("GET", "/mail", 200)]


# -- the dissector alone -------------------------------------------------------------

def test_socks_dissector_is_chunking_invariant():
    transcript = [(C, SOCKS5_AUTH[0][1]), (S, SOCKS5_AUTH[1][1]), (C, SOCKS5_AUTH[2][1]), (S, SOCKS5_AUTH[3][1]),
                  (C, socks5_connect(DOMAIN, 25)[0][1] + b"EHLO"), (S, socks5_connect(DOMAIN, 25)[1][1] + b"220 ")]
    records, sess = run_all_ways(SocksDissector, transcript)
    assert [c.command for c in of_type(records, Command)] == ["METHODS", "AUTH", "CONNECT"]
    assert len(of_type(records, Credential)) == 1
    (event,) = of_type(records, TunnelStart)
    assert (event.kind, event.target, event.held) == ("socks5", "mx.example.net:25", (b"EHLO", b"220 "))


@pytest.mark.parametrize("request_,why", [
    (b"\x05\x01\x00\x09\x01\x00\x00\x19", "address type 9"),
    (b"\x06\x01\x00\x01\x7f\x00\x00\x01\x00\x19", "version 6"),
    (b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x19", "reserved byte set"),
])
def test_socks_bad_messages_stop_parsing(request_, why):
    transcript = [(C, b"\x05\x01\x00"), (S, b"\x05\x00"), (C, request_), (S, b"\x05\x00\x00\x01" + b"\0" * 6)]
    records, _ = run_all_ways(SocksDissector, transcript)
    assert [r.name for r in records if hasattr(r, "name")] == ["socks_bad_message"], why
    assert not of_type(records, TunnelStart)


def test_truncated_handshake_is_said():
    records, _ = run_all_ways(SocksDissector, [(C, b"\x05\x02\x00\x02"), (S, b"\x05\x02"), (C, b"\x01\x03bo")])
    assert [r.name for r in records if hasattr(r, "name")] == ["socks_truncated"]


def test_socks_sniffer():
    assert looks_like_socks(b"\x05\x01\x00")
    assert looks_like_socks(b"\x05\x02\x00\x02", b"\x05\x02")
    assert looks_like_socks(b"\x04\x01\x00\x19\x7f\x00\x00\x01\x00")
    assert looks_like_socks(b"\x04\x01\x00\x19\x00\x00\x00\x01bot\x00host\x00", b"\x00\x5a")
    for other in (b"EHLO x\r\n", b"\x16\x03\x01\x00\x05", b"GET / HTTP/1.1\r\n", b"a1 LOGIN x y\r\n",
                  b"\x05\x00", b"\x05\x02\x00\x00", b"\x05\x01\x00\x41", b"\x04\x01\x00\x19\x7f\x00\x00\x01\x01\x02"):
        assert not looks_like_socks(other), other
    assert not looks_like_socks(b"\x05\x01\x00", b"+OK")


HANDSHAKE_PIECES = [b"\x05", b"\x04", b"\x01", b"\x02", b"\x03", b"\x00", b"\xff", b"\x5a", b"\x0e",
                    b"\x05\x01\x00", b"\x05\x02\x00\x02", b"\x01\x03bot\x06s3cret", b"\x05\x01\x00\x03\x0emx.example.net",
                    b"\x00\x19", b"\x04\x01\x00\x19\x00\x00\x00\x01bot\x00", b"host\x00", b"EHLO x\r\n"]


def test_socks_dissector_on_noise():
    """Whatever the bytes: no exception, documented anomalies only, same records however chunked."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from maildissect.anomalies import registry
    from maildissect.config import Config, Limits
    known = set(registry())
    config = Config(limits=Limits(max_line=64))
    item = st.tuples(st.sampled_from([C, S]), st.lists(st.sampled_from(HANDSHAKE_PIECES) | st.binary(max_size=8),
                                                        min_size=1, max_size=6).map(b"".join))

    @settings(max_examples=50, deadline=None)
    @given(st.lists(item, min_size=1, max_size=8))
    def run(transcript):
        records, _ = run_all_ways(SocksDissector, transcript, config=config)
        assert {r.name for r in records if hasattr(r, "name")} <= known
    run()
