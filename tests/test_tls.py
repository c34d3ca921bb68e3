"""TLS without keys: version, SNI and ALPN from the hellos, for implicit TLS and after STARTTLS.

Hellos are made by Python's ssl module over memory BIOs (a real client and a
real server, TLS 1.2 and 1.3, with ALPN), and read from the bundled lab capture
and Zeek's STARTTLS traces.
"""

from __future__ import annotations

import json
import pathlib
import ssl

import pytest

import maildissect
from maildissect.model import Command, Message
from maildissect.protocols.imap import ImapDissector
from maildissect.protocols.pop3 import Pop3Dissector
from maildissect.protocols.smtp import SmtpDissector
from maildissect.protocols.tls import TlsDissector, TlsHelloParser, TlsTap
from tests.helpers import C, S, new_session, of_type, run_all_ways

ROOT = pathlib.Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
ZEEK = ROOT / "tests" / "captures" / "zeek"


@pytest.fixture(scope="module")
def material():
    from maildissect.generate.tls import TlsMaterial
    mat = TlsMaterial()
    yield mat
    mat.close()


def handshake(material, version, alpn=("h2", "http/1.1"), server_alpn=("h2",), sni="mail.bob.example"):
    """The first flight of each side of a real handshake: (ClientHello..., ServerHello...)."""
    sctx = material.server_context()
    sctx.minimum_version = sctx.maximum_version = version
    if server_alpn:
        sctx.set_alpn_protocols(list(server_alpn))
    cctx = ssl.create_default_context(cadata=material.cert_pem.decode())
    cctx.minimum_version = cctx.maximum_version = version
    if alpn:
        cctx.set_alpn_protocols(list(alpn))
    cin, cout, sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(cin, cout, server_hostname=sni)
    server = sctx.wrap_bio(sin, sout, server_side=True)
    flights = {C: [], S: []}
    for _ in range(6):
        for obj, out, peer_in, side in ((client, cout, sin, C), (server, sout, cin, S)):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            data = out.read()
            if data:
                flights[side].append(data)
                peer_in.write(data)
    return flights[C][0], flights[S][0]


@pytest.mark.parametrize("version,name,alpn", [(ssl.TLSVersion.TLSv1_2, "TLSv1.2", "h2"),
                                               (ssl.TLSVersion.TLSv1_3, "TLSv1.3", "h2,http/1.1")])
def test_implicit_tls_hellos(material, version, name, alpn):
    ch, sh = handshake(material, version)
    records, sess = run_all_ways(TlsDissector, [(C, ch), (S, sh), (C, b"\x17\x03\x03\x00\x05hello")])
    assert records == []
    # TLS 1.3 hides the server's ALPN choice in EncryptedExtensions: the offer is what shows
    assert (sess.tls, sess.tls_version, sess.sni, sess.alpn) == (True, name, "mail.bob.example", alpn)
    assert (sess.tls_bytes_client, sess.tls_bytes_server) == (len(ch) + 10, len(sh))


def test_hello_split_over_records_and_garbage(material):
    ch, _ = handshake(material, ssl.TLSVersion.TLSv1_3, sni="mail.alice.example")
    body = ch[5:]
    # the same ClientHello cut into two handshake records
    split = b"\x16\x03\x01" + (100).to_bytes(2, "big") + body[:100] + \
        b"\x16\x03\x01" + (len(body) - 100).to_bytes(2, "big") + body[100:]
    sess = new_session("smtp")
    parser = TlsHelloParser(sess)
    for i in range(len(split)):
        assert parser.feed(C, split[i:i + 1])
    assert sess.sni == "mail.alice.example"
    other = new_session("smtp")
    assert TlsHelloParser(other).feed(C, b"EHLO not tls\r\n") is False
    assert other.tls_version is None
    # a hello cut short is harmless
    short = new_session("smtp")
    TlsHelloParser(short).feed(C, ch[:60])
    assert short.sni is None


def test_tls_tap_counts_and_reads(material):
    ch, sh = handshake(material, ssl.TLSVersion.TLSv1_2, alpn=("imap",), server_alpn=("imap",))
    sess = new_session("imap")
    tap = TlsTap(sess)
    tap(C, ch)
    tap(S, memoryview(sh))
    tap(C, b"")
    assert (sess.tls_version, sess.alpn, sess.tls_bytes_client, sess.tls_bytes_server) == \
        ("TLSv1.2", "imap", len(ch), len(sh))


def _after_starttls(dissector, plain, material, version=ssl.TLSVersion.TLSv1_3):
    ch, sh = handshake(material, version, alpn=None, server_alpn=None)
    records, sess = run_all_ways(dissector, plain + [(C, ch), (S, sh), (C, b"\x17\x03\x03\x00\x02xx")],
                                 protocol=dissector.protocol)
    return records, sess, ch, sh


def test_smtp_starttls_hellos(material):
    records, sess, ch, sh = _after_starttls(SmtpDissector, [
        (S, b"220 mx ESMTP\r\n"), (C, b"EHLO c\r\n"), (S, b"250-mx\r\n250 STARTTLS\r\n"),
        (C, b"STARTTLS\r\n"), (S, b"220 go ahead\r\n")], material)
    assert [c.command for c in of_type(records, Command)] == ["", "EHLO", "STARTTLS"]
    assert (sess.tls, sess.tls_version, sess.sni, sess.alpn) == (True, "TLSv1.3", "mail.bob.example", None)
    assert (sess.tls_bytes_client, sess.tls_bytes_server) == (len(ch) + 7, len(sh))


def test_smtp_client_not_waiting_for_the_go_ahead(material):
    ch, sh = handshake(material, ssl.TLSVersion.TLSv1_2)
    records, sess = run_all_ways(SmtpDissector, [
        (S, b"220 mx ESMTP\r\n"), (C, b"EHLO c\r\n"), (S, b"250 STARTTLS\r\n"),
        (C, b"STARTTLS\r\n" + ch), (S, b"220 go ahead\r\n" + sh)])
    assert sess.tls_version == "TLSv1.2" and sess.alpn == "h2"


def test_imap_starttls_hellos(material):
    records, sess, ch, sh = _after_starttls(ImapDissector, [
        (S, b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"), (C, b"a1 STARTTLS\r\n"),
        (S, b"a1 OK Begin TLS negotiation now\r\n")], material, ssl.TLSVersion.TLSv1_2)
    assert (sess.tls, sess.tls_version, sess.sni) == (True, "TLSv1.2", "mail.bob.example")
    assert sess.tls_bytes_server == len(sh)


def test_pop3_stls_hellos(material):
    records, sess, ch, sh = _after_starttls(Pop3Dissector, [
        (S, b"+OK POP3 ready\r\n"), (C, b"STLS\r\n"), (S, b"+OK Begin TLS\r\n")], material)
    assert (sess.tls, sess.tls_version, sess.sni) == (True, "TLSv1.3", "mail.bob.example")
    assert sess.tls_bytes_client == len(ch) + 7


def test_bundled_tls_capture_without_keys():
    doc = json.loads((CAPTURES / "tls.json").read_text())
    a = maildissect.analyze(str(CAPTURES / "tls.pcap"))
    sessions = {(s.client_ip, s.client_port): s for s in a.records.sessions}
    assert len(sessions) == len(doc["sessions"])
    for m in doc["sessions"]:
        s = sessions[(m["client_ip"], m["client_port"])]
        assert (s.tls, s.decrypted, s.tls_version, s.sni) == (True, False, "TLSv1.3", m["server_name"]), m["id"]
        assert s.tls_bytes_client > 0 and s.tls_bytes_server > 0
        if m["server_port"] == 443:
            assert set(s.alpn.split(",")) == {"h2", "http/1.1"}  # offered; TLS 1.3 encrypts the choice
    # what went inside TLS stays unread
    assert not a.records.messages and not a.records.credentials and not a.records.http
    starttls = [s for s in a.records.sessions if s.server_port in (587, 25, 143)]
    assert starttls and all(s.commands == 3 for s in starttls)  # greeting, EHLO/CAPABILITY..., STARTTLS
    assert not of_type(a.records.messages, Message)


@pytest.mark.parametrize("name", ["tls-imap-starttls", "tls-smtp-starttls"])
def test_zeek_starttls_traces(name):
    a = maildissect.analyze(str(ZEEK / f"{name}.pcap"))
    (s,) = a.records.sessions
    # Zeek's ssl.log for these traces: TLSv12, no server name
    assert (s.tls, s.tls_version, s.sni) == (True, "TLSv1.2", None)
