"""Header decoding for every link type, IPv4 fragments and IPv6 extension headers."""

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Raw

from maildissect.capture.decode import Decoder

PAYLOAD = b"EHLO client.example\r\n"


def seg(frame, linktype=1, decoder=None):
    d = decoder or Decoder()
    return d.decode(1.0, linktype, bytes(frame), len(bytes(frame))), d


def tcp4(payload=PAYLOAD):
    return IP(src="192.0.2.1", dst="198.51.100.2") / TCP(sport=1234, dport=25, seq=7, ack=9, flags="PA") / payload


def tcp6(payload=PAYLOAD):
    return IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=1234, dport=25, seq=7, ack=9, flags="PA") / payload


def check(s, v6=False):
    assert s is not None
    key, src, dst, sport, dport, seq, ack, flags, payload, seglen = s
    assert (sport, dport, seq, ack, flags) == (1234, 25, 7, 9, 0x18)
    assert payload == PAYLOAD and seglen == len(PAYLOAD)
    assert len(src) == (16 if v6 else 4)
    assert key == src + dst + struct.pack("!HH", 1234, 25)


@pytest.mark.parametrize("frame,linktype,v6", [
    (Ether() / tcp4(), 1, False),
    (Ether() / tcp6(), 1, True),
    (Ether() / Dot1Q(vlan=10) / tcp4(), 1, False),
    (Ether() / Dot1AD(vlan=20) / Dot1Q(vlan=10) / tcp4(), 1, False),  # QinQ
    (CookedLinux(proto=0x0800) / tcp4(), 113, False),
    (CookedLinux(proto=0x86DD) / tcp6(), 113, True),
    (Loopback(type=2) / tcp4(), 0, False),
    (Loopback(type=30) / tcp6(), 0, True),
    (tcp4(), 101, False),
    (tcp6(), 101, True),
    (tcp4(), 228, False),
    (tcp6(), 229, True),
])
def test_link_types(frame, linktype, v6):
    s, _ = seg(frame, linktype)
    check(s, v6)


def test_bsd_null_big_endian_and_loop():
    raw = bytes(tcp4())
    check(seg(struct.pack(">I", 2) + raw, 0)[0])  # NULL written on a big-endian host
    check(seg(struct.pack(">I", 2) + raw, 108)[0])  # LOOP: always network order


def test_linux_sll2():
    raw = bytes(tcp4())
    hdr = struct.pack("!HHIHBB8s", 0x0800, 0, 1, 1, 0, 6, b"\0" * 8)
    assert len(hdr) == 20
    check(seg(hdr + raw, 276)[0])


def test_non_tcp_counted_and_skipped():
    d = Decoder()
    assert d.decode(0, 1, bytes(Ether() / IP() / UDP() / b"x"), 0) is None
    assert d.decode(0, 1, bytes(Ether() / IP() / ICMP()), 0) is None
    assert d.decode(0, 1, bytes(Ether(type=0x0806) / b"arp arp arp arp arp arp"), 0) is None
    assert d.decode(0, 147, b"\x00" * 40, 0) is None  # unknown link type
    assert (d.non_tcp, d.non_ip) == (2, 2)


def test_ipv4_fragments_out_of_order():
    pkt = IP(src="192.0.2.1", dst="198.51.100.2", id=77) / TCP(sport=1234, dport=25, seq=7, ack=9,
                                                               flags="PA") / (b"x" * 3000)
    frags = fragment(pkt, fragsize=800)
    assert len(frags) > 2
    d = Decoder()
    results = [d.decode(0, 101, bytes(f), len(bytes(f))) for f in reversed(frags)]
    assert results[:-1] == [None] * (len(frags) - 1)
    s = results[-1]
    assert s[8] == b"x" * 3000 and d.fragments == len(frags)


def test_ipv4_overlapping_fragments_first_copy_wins():
    body = bytes(TCP(sport=1234, dport=25, seq=7, flags="PA") / (b"A" * 40))
    d = Decoder()
    first = IP(src="192.0.2.1", dst="198.51.100.2", id=5, flags="MF", frag=0, proto=6) / Raw(body[:32])
    overlap = IP(src="192.0.2.1", dst="198.51.100.2", id=5, flags="MF", frag=2, proto=6) / Raw(b"B" * 16)
    last = IP(src="192.0.2.1", dst="198.51.100.2", id=5, flags=0, frag=4, proto=6) / Raw(body[32:])
    assert d.decode(0, 101, bytes(first), 0) is None
    assert d.decode(0, 101, bytes(overlap), 0) is None
    s = d.decode(0, 101, bytes(last), 0)
    assert s[8] == b"A" * 40
    assert any(a.name == "ip_fragment_overlap" for a in d.anomalies)


def test_fragment_limits():
    d = Decoder(max_fragment_bytes=1000, max_fragment_sets=2)
    big = IP(src="192.0.2.1", dst="198.51.100.2", id=1, flags="MF", frag=200, proto=6) / Raw(b"x" * 100)
    assert d.decode(0, 101, bytes(big), 0) is None
    assert d.anomalies[-1].name == "ip_fragment_too_large"
    for i in range(5):
        f = IP(src="192.0.2.1", dst="198.51.100.2", id=100 + i, flags="MF", frag=0, proto=6) / Raw(b"y" * 8)
        d.decode(float(i), 101, bytes(f), 0)
    assert len(d._frags) <= 2
    assert any(a.name == "ip_fragment_table_full" for a in d.anomalies)
    d.finish()
    assert d.anomalies[-1].name == "ip_fragment_incomplete"


def test_ipv6_extension_headers_and_fragment():
    pkt = (IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() /
           IPv6ExtHdrDestOpt() / TCP(sport=1234, dport=25, seq=7, ack=9, flags="PA") / PAYLOAD)
    check(seg(pkt, 101)[0], v6=True)
    # a fragmented datagram
    inner = TCP(sport=1234, dport=25, seq=7, ack=9, flags="PA") / (b"z" * 2000)
    whole = bytes(inner.__class__(bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / inner)[40:]))
    d = Decoder()
    parts = [whole[:1000], whole[1000:]]
    f1 = IPv6(src="2001:db8::1", dst="2001:db8::2", nh=44) / IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=9) / Raw(parts[0])
    f2 = IPv6(src="2001:db8::1", dst="2001:db8::2", nh=44) / IPv6ExtHdrFragment(nh=6, offset=125, m=0, id=9) / Raw(parts[1])
    assert d.decode(0, 101, bytes(f2), 0) is None
    s = d.decode(0, 101, bytes(f1), 0)
    assert s is not None and s[8] == b"z" * 2000


@pytest.mark.parametrize("mutate", [
    lambda b: b[:20],  # cut inside the TCP header
    lambda b: b[:0] + bytes([0x4F]) + b[1:],  # IHL 60 bytes
    lambda b: b[:32] + bytes([0xF0]) + b[33:],  # TCP data offset 60 bytes
    lambda b: bytes([0x46]) + b[1:2] + b"\x00\x10" + b[4:],  # total length < header
])
def test_bogus_headers_are_counted_not_raised(mutate):
    d = Decoder()
    assert d.decode(0, 101, mutate(bytes(tcp4())), 0) is None
    assert d.malformed == 1 and d.anomalies


def test_snaplen_cut_segment_reports_wire_length():
    raw = bytes(tcp4(b"y" * 500))
    s, _ = seg(raw[:100], 101)
    assert len(s[8]) == 60 and s[9] == 500
