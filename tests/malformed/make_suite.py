#!/usr/bin/env python3
"""Build the malformed-capture suite (tests/captures/malformed/), deterministically.

    python tests/malformed/make_suite.py           # write the committed files and manifest.json
    python tests/malformed/make_suite.py --check   # exit 1 if a committed file differs from a rebuild
    python tests/malformed/make_suite.py --large DIR  # also write the large cases into DIR

Each case is a capture built byte by byte (tests/malformed/packets.py) that
attacks one layer: the file format, the link/IP/TCP headers, reassembly,
a dissector or the MIME parser. Nearly every case first carries a good
exchange ("before the damage": a message, a command or a login), so that the
tests can check that what was parsed before the bad part is kept.

Small cases are committed gzip-compressed (the reader accepts .gz). Large ones
(a SYN flood, 100,000 tiny flows) would bloat the repository and are built at
test time into a temporary directory; ``manifest.json`` says which is which,
and what the tests expect of every case: the anomalies it must report, what
must survive, whether the file is a capture at all (exit status 1 if not),
and its memory cap.
"""

from __future__ import annotations

import argparse
import base64
import bz2
import gzip
import json
import struct
import sys
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.malformed.packets import (ACK, FIN, PSH, RST, SYN, Capture, Conversation, addr, ether, gz,  # noqa: E402
                                     ipv4, ipv6, pcap_header, pcap_record, pcapng_block, pcapng_epb, pcapng_idb,
                                     pcapng_shb, tcp_header)

SUITE = ROOT / "tests" / "captures" / "malformed"
BEFORE = "before the damage"  # subject of the message every case sends first


@dataclass
class Case:
    """One file of the suite and what the tests expect of it."""

    name: str  # file name
    about: str  # one line: what is wrong with it
    build: Callable[[], bytes] = field(repr=False, compare=False)
    anomalies: list[str] = field(default_factory=list)  # each must be reported at least once
    subjects: list[str] = field(default_factory=list)  # messages that must be kept
    commands: list[str] = field(default_factory=list)  # "proto VERB" commands that must be kept
    users: list[str] = field(default_factory=list)  # credentials that must be kept
    uris: list[str] = field(default_factory=list)  # HTTP requests that must be kept
    status: int = 0  # exit status of maildissect (1: not a capture)
    error: str = ""  # for status 1: a substring of the one-line error
    large: bool = False  # built at test time, not committed
    max_rss_mb: int = 400  # peak resident memory of a maildissect run
    limits: dict = field(default_factory=dict)  # --limit NAME=VALUE for the run

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


# -- building blocks -------------------------------------------------------------------------
def head(subject: str = BEFORE, extra: bytes = b"") -> bytes:
    """A header block without its terminating empty line (more fields may follow)."""
    return (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: " + subject.encode()
            + b"\r\nMessage-ID: <" + subject.replace(" ", ".").encode() + b"@example.org>\r\n"
            + b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n" + extra)


def message(subject: str = BEFORE, body: bytes = b"Nothing wrong with this one.\r\n", extra: bytes = b"") -> bytes:
    return head(subject, extra) + b"\r\n" + body


def smtp_session(cap: Capture, cport: int = 40000, subject: str = BEFORE, close: bool = True,
                 auth: bool = True) -> Conversation:
    """A complete, well-formed SMTP submission (AUTH PLAIN alice, one message)."""
    conv = Conversation(cap, cport=cport, sport=587 if auth else 25).open()
    turns = [b"220 mx.example.net ESMTP\r\n", b"EHLO client.example.org\r\n",
             b"250-mx.example.net\r\n250-AUTH PLAIN LOGIN\r\n250-CHUNKING\r\n250 PIPELINING\r\n"]
    if auth:
        turns += [b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wonderland") + b"\r\n", b"235 2.7.0 ok\r\n"]
    turns += [b"MAIL FROM:<alice@example.org>\r\n", b"250 2.1.0 ok\r\n", b"RCPT TO:<bob@example.net>\r\n",
              b"250 2.1.5 ok\r\n", b"DATA\r\n", b"354 go ahead\r\n", message(subject) + b".\r\n",
              b"250 2.0.0 Ok: queued as 4SJ1\r\n"]
    conv.dialogue(*turns)
    if close:
        conv.client(b"QUIT\r\n").server(b"221 bye\r\n").close()
    return conv


def smtp_prefix(conv: Conversation) -> Conversation:
    """Greeting, EHLO and one good message on an open connection; the damage follows."""
    return conv.dialogue(b"220 mx.example.net ESMTP\r\n", b"EHLO client.example.org\r\n",
                         b"250-mx.example.net\r\n250-CHUNKING\r\n250 PIPELINING\r\n",
                         b"MAIL FROM:<alice@example.org>\r\n", b"250 ok\r\n", b"RCPT TO:<bob@example.net>\r\n",
                         b"250 ok\r\n", b"DATA\r\n", b"354 go\r\n", message() + b".\r\n", b"250 queued\r\n")


GOOD = dict(subjects=[BEFORE], commands=["smtp MAIL", "smtp DATA"])


# -- capture files -------------------------------------------------------------------------
@case("truncated-record.pcap.gz", "the file ends in the middle of a packet's bytes",
      anomalies=["capture_truncated_record"], **GOOD)
def truncated_record():
    cap = Capture()
    smtp_session(cap)
    smtp_session(cap, cport=40001, subject="cut off")
    data = cap.pcap()
    return gz(data[: len(data) - 300])


@case("truncated-record-header.pcap.gz", "the file ends 7 bytes into a record header",
      anomalies=["capture_truncated_record"], **GOOD)
def truncated_header():
    cap = Capture()
    smtp_session(cap)
    return gz(cap.pcap() + pcap_record(cap.ts + 1, b"\0" * 60)[:7])


@case("truncated-gzip.pcap.gz", "a gzip stream cut in the middle (no trailer)",
      anomalies=["capture_truncated_record"], **GOOD)
def truncated_gzip():
    cap = Capture()
    smtp_session(cap)
    for k in range(40):
        smtp_session(cap, cport=41000 + k, subject=f"later {k}")
    data = gzip.compress(cap.pcap(), mtime=0)
    return data[: len(data) * 2 // 3]


@case("truncated-file-header.pcap", "a pcap magic number and half a file header",
      status=1, error="truncated pcap file header")
def truncated_file_header():
    return pcap_header()[:14]


@case("empty.pcap", "an empty file", status=1, error="not a capture file")
def empty():
    return b""


@case("not-a-capture.txt.gz", "text, gzip-compressed", status=1, error="not a pcap or pcapng capture")
def not_a_capture():
    return gz(b"Return-Path: <alice@example.org>\r\nSubject: this is a mailbox, not a capture\r\n\r\nHi\r\n" * 20)


@case("bzip2.pcap", "a capture compressed with bzip2 (not accepted)", status=1,
      error="not a pcap or pcapng capture")
def bzip2_capture():
    cap = Capture()
    smtp_session(cap)
    return bz2.compress(cap.pcap())


@case("absurd-record-length.pcap.gz", "a record declares 4 GB of packet after a good session",
      anomalies=["capture_bad_record_length"], **GOOD)
def absurd_record_length():
    cap = Capture()
    smtp_session(cap)
    return gz(cap.pcap() + struct.pack("<IIII", int(cap.ts) + 1, 0, 0xFFFFFFF0, 0xFFFFFFF0) + b"\0" * 200)


@case("absurd-block-length.pcapng.gz", "pcapng: a block declares 2 GB after a good session",
      anomalies=["capture_bad_record_length"], **GOOD)
def absurd_block_length():
    cap = Capture()
    smtp_session(cap)
    out = pcapng_shb() + pcapng_idb()
    for ts, frame, wirelen in cap.frames:
        out += pcapng_epb(0, int(ts * 1e6), frame, wirelen)
    return gz(out + struct.pack("<II", 6, 0x7FFFFFFC) + b"\0" * 64)


@case("pcapng-bad-blocks.pcapng.gz", "pcapng: unknown interfaces, short blocks of every type, "
      "bogus option lengths and timestamp resolutions, a section header with a bad byte-order magic",
      anomalies=["capture_unknown_interface", "capture_bad_block"], **GOOD)
def pcapng_bad_blocks():
    cap = Capture()
    smtp_session(cap)
    out = pcapng_shb()
    # an IDB whose options claim more bytes than the block has, then a sane one
    out += pcapng_block(1, struct.pack("<HHI", 1, 0, 262144) + struct.pack("<HH", 9, 200) + b"\x06")
    out += pcapng_idb(1, struct.pack("<HH", 9, 1) + b"\x7f\0\0\0" + struct.pack("<HH", 14, 8)
                      + struct.pack("<q", -(2 ** 62)) + b"\0\0\0\0")  # tsresol 10^-127, huge negative offset
    out += pcapng_idb(1)  # interface 2: the usable one
    out += pcapng_epb(7, 0, b"\0" * 60)  # interface 7 was never described
    out += pcapng_block(3, struct.pack("<I", 2000) + b"\0" * 8)  # simple packet block longer than its block
    out += pcapng_block(0x0BAD, b"unknown block type")
    for ts, frame, wirelen in cap.frames:
        out += pcapng_epb(2, int(ts * 1e6), frame, wirelen)
    # a section header with a bad byte-order magic ends the file
    out += pcapng_block(0x0A0D0D0A, b"\x00\x01\x02\x03" + b"\0" * 12)
    return gz(out)


@case("pcapng-packet-longer-than-block.pcapng.gz", "pcapng: an enhanced packet block whose captured "
      "length runs 5,000 bytes past its block", anomalies=["capture_bad_record_length"], **GOOD)
def pcapng_long_packet():
    cap = Capture()
    smtp_session(cap)
    out = pcapng_shb() + pcapng_idb()
    for ts, frame, wirelen in cap.frames:
        out += pcapng_epb(0, int(ts * 1e6), frame, wirelen)
    out += struct.pack("<II", 6, 40) + struct.pack("<IIIII", 0, 0, 0, 5000, 5000) + struct.pack("<I", 40)
    return gz(out + pcapng_epb(0, 0, b"\0" * 60))


@case("timestamps-extreme.pcapng.gz", "timestamps at 0, before 1970 and in the year 2554 and beyond; "
      "unsorted frames", anomalies=["capture_unsorted"], **GOOD)
def timestamps_extreme():
    cap = Capture()
    smtp_session(cap)
    out = pcapng_shb() + pcapng_idb()
    out += pcapng_idb(1, struct.pack("<HH", 9, 1) + b"\x00\0\0\0" + b"\0\0\0\0")  # tsresol: seconds
    frames = cap.frames
    for ts, frame, wirelen in frames:
        out += pcapng_epb(0, int(ts * 1e6), frame, wirelen)
    odd = Capture()
    Conversation(odd, cport=50000).open().dialogue(b"220 far future\r\n", b"EHLO x\r\n", b"250 ok\r\n")
    stamps = [2 ** 64 - 1, 0, 2 ** 63, 1, 2 ** 40, 2 ** 34, 3]
    for (ts, frame, wirelen), units in zip(odd.frames, stamps):
        out += pcapng_epb(1, units, frame, wirelen)
    return gz(out)


@case("snaplen-cut.pcap.gz", "snapshot length 96: every packet loses its payload past 42 bytes",
      anomalies=["capture_snaplen_cut", "tcp_gap"], commands=["smtp EHLO", "smtp MAIL"])
def snaplen_cut():
    cap = Capture(snaplen=96)
    smtp_session(cap)
    frames = [(ts, f[:96], wl) for ts, f, wl in cap.frames]
    cap.frames = frames
    return gz(cap.pcap())


@case("linktypes-odd.pcap.gz", "unknown link type values in frames of Linux cooked captures: "
      "short frames, 200 stacked VLAN tags, a loopback header with an unknown family",
      **GOOD)
def linktypes_odd():
    cap = Capture()
    smtp_session(cap)
    bad = [b"", b"\x01", ether(b"")[:13], ether(b"\x45", 0x8100) + b"\x81\x00" * 200,
           ether(b"", 0x88CC) + b"LLDP" * 10, ether(b"\x60" + b"\0" * 10), ether(b"\x45" + b"\0" * 10)]
    for k, frame in enumerate(bad):
        cap.add(frame)
    return gz(cap.pcap())


# -- IP and TCP headers --------------------------------------------------------------------
def _bogus_ip_frames(src, dst):
    seg = tcp_header(src, dst, 40000, 25, 1, 0, PSH | ACK, b"MAIL FROM:<mallory@example.org>\r\n")
    return [
        ether(ipv4(src, dst, seg, ihl=3)),  # header length below 20 bytes
        ether(ipv4(src, dst, seg, ihl=15)[:30]),  # options run past the frame
        ether(ipv4(src, dst, seg, total=10)),  # total length below the header length
        ether(ipv4(src, dst, seg, total=65535)),  # total length far past the frame
        ether(ipv4(src, dst, seg, version=7)),  # not version 4
        ether(ipv4(src, dst, seg, options=b"\x44\x00" + b"\x01" * 30)),  # a timestamp option of length 0
        ether(ipv4(src, dst, b"")),  # no TCP header at all
        ether(ipv4(src, dst, seg[:12])),  # TCP header cut at 12 bytes
        ether(ipv6(addr("fd00::1"), addr("fd00::2"), seg, plen=60000)),  # payload length past the frame
        ether(ipv6(addr("fd00::1"), addr("fd00::2"), b"\x00\xff" + b"\0" * 6 + seg, nxt=0)),  # hop-by-hop of 2 KB
        ether(ipv6(addr("fd00::1"), addr("fd00::2"), (b"\x3c\x00" + b"\0" * 6) * 40, nxt=60)),  # 40 dest-opt headers
        ether(ipv6(addr("fd00::1"), addr("fd00::2"), seg)[:30]),  # IPv6 header cut
    ]


@case("bogus-ip-headers.pcap.gz", "IPv4/IPv6 headers with impossible lengths, versions and options "
      "between the packets of a good session", anomalies=["ip_bad_header"], **GOOD)
def bogus_ip_headers():
    cap = Capture()
    conv = Conversation(cap).open()
    for frame in _bogus_ip_frames(addr("10.0.0.66"), addr("10.0.0.2")):
        cap.add(frame)
    smtp_prefix(conv).close()
    for frame in _bogus_ip_frames(addr("10.0.0.66"), addr("10.0.0.2")):
        cap.add(frame)
    return gz(cap.pcap())


@case("bogus-tcp-headers.pcap.gz", "TCP data offsets below 5 words and past the segment, option lists "
      "with zero and overlong option lengths", anomalies=["tcp_bad_header"], **GOOD)
def bogus_tcp_headers():
    cap = Capture()
    conv = Conversation(cap).open()
    smtp_prefix(conv)
    src, dst = addr("10.0.0.1"), addr("10.0.0.2")
    for doff in (0, 2, 4, 15):
        cap.add(ether(ipv4(src, dst, tcp_header(src, dst, 40000, 587, 5, 0, PSH | ACK, b"RSET\r\n", doff=doff))))
    # option kinds with length 0 and 1 and a length running past the header: data still delivered
    for opts in (b"\x02\x00\x05\xb4", b"\x08\x01" + b"\0" * 10, b"\x03\xff\x07\x01", b"\x1e\x28" + b"A" * 6):
        conv.send(0, PSH | ACK, b"NOOP\r\n", options=opts)
        conv.send(1, PSH | ACK, b"250 ok\r\n")
    conv.client(b"QUIT\r\n").server(b"221 bye\r\n").close()
    return gz(cap.pcap())


def _fragments(src, dst, ident, payload, pieces):
    """IPv4 fragments of one datagram: ``pieces`` are (offset, length, more) over ``payload``."""
    out = []
    for off, length, more in pieces:
        chunk = payload[off:off + length]
        out.append(ether(ipv4(src, dst, chunk, ident=ident, frag=(0x2000 if more else 0) | (off // 8))))
    return out


@case("ip-fragments.pcap.gz", "IPv4 fragments overlapping with different bytes (teardrop), a datagram "
      "past 65,535 bytes (ping of death), fragments that never complete, IPv6 fragments that overlap",
      anomalies=["ip_fragment_overlap", "ip_fragment_too_large", "ip_fragment_incomplete"], **GOOD)
def ip_fragments():
    cap = Capture()
    conv = Conversation(cap, sport=25).open()
    conv.server(b"220 mx.example.net ESMTP\r\n")
    src, dst = addr("10.0.0.1"), addr("10.0.0.2")
    # EHLO in three fragments, the middle one sent twice with other bytes (first copy wins)
    ehlo = b"EHLO client.example.org\r\n"
    seg = tcp_header(src, dst, 40000, 25, conv.seq[0], conv.seq[1], PSH | ACK, ehlo)
    frames = _fragments(src, dst, 7, seg, [(0, 24, True), (24, 16, True), (40, len(seg) - 40, False)])
    evil = bytearray(seg)
    evil[24:40] = b"X" * 16
    frames.insert(2, _fragments(src, dst, 7, bytes(evil), [(16, 24, True)])[0])
    for f in frames:
        cap.add(f)
    conv.seq[0] += len(ehlo)
    conv.server(b"250-mx.example.net\r\n250 PIPELINING\r\n")
    # ping of death: a last fragment at offset 65,528 with 100 bytes
    for f in _fragments(src, dst, 9, b"\0" * 65628, [(0, 1480, True), (65528, 100, False)]):
        cap.add(f)
    # 50 datagrams whose last fragment never comes
    for k in range(50):
        for f in _fragments(src, dst, 100 + k, b"\0" * 64, [(0, 32, True)]):
            cap.add(f)
    # IPv6: two fragments overlapping with different bytes
    s6, d6 = addr("fd00::1"), addr("fd00::2")
    body = tcp_header(s6, d6, 40001, 25, 1, 0, SYN)
    fh = lambda off, more, nxt=6: struct.pack("!BBHI", nxt, 0, (off // 8) << 3 | more, 77)  # noqa: E731
    cap.add(ether(ipv6(s6, d6, fh(0, 1) + body[:16], nxt=44)))
    cap.add(ether(ipv6(s6, d6, fh(8, 1) + b"Z" * 16, nxt=44)))
    cap.add(ether(ipv6(s6, d6, fh(16, 0) + body[16:], nxt=44)))
    conv.dialogue(None, b"MAIL FROM:<alice@example.org>\r\n", b"250 ok\r\n", b"RCPT TO:<bob@example.net>\r\n",
                  b"250 ok\r\n", b"DATA\r\n", b"354 go\r\n", message() + b".\r\n", b"250 queued\r\n")
    conv.close()
    return gz(cap.pcap())


@case("tcp-overlap-conflict.pcap.gz", "retransmissions and overlapping segments that carry other bytes "
      "(an IDS evasion: RCPT TO:<bob> first, then RCPT TO:<eve> at the same sequence numbers)",
      anomalies=["tcp_overlap_conflict"], **GOOD)
def tcp_overlap_conflict():
    cap = Capture()
    conv = Conversation(cap).open()
    conv.dialogue(b"220 mx.example.net ESMTP\r\n", b"EHLO client.example.org\r\n", b"250 ok\r\n",
                  b"MAIL FROM:<alice@example.org>\r\n", b"250 ok\r\n")
    rcpt = b"RCPT TO:<bob@example.net>\r\n"
    start = conv.seq[0]
    conv.client(rcpt)
    conv.send(0, PSH | ACK, b"RCPT TO:<eve@example.net>\r\n", seq=start)  # same bytes' place, other bytes
    conv.send(0, PSH | ACK, b"TO:<eve", seq=start + 5)  # overlapping a part
    # out of order: a later segment first, then one that overlaps it with other bytes
    conv.server(b"250 ok\r\n")
    data = b"DATA\r\n"
    conv.send(0, PSH | ACK, data[2:], seq=conv.seq[0] + 2)  # the tail first (out of order)
    conv.send(0, PSH | ACK, b"DAXX\r\n", seq=conv.seq[0])  # the head, overlapping it with other bytes
    conv.seq[0] += len(data)
    conv.dialogue(b"354 go\r\n", message() + b".\r\n", b"250 queued\r\n")
    conv.close()
    return gz(cap.pcap())


@case("tcp-holes-and-wrap.pcap.gz", "sequence numbers that wrap at 2^32, a connection picked up mid-way, "
      "data after FIN, a RST in the middle, a segment far ahead of the stream",
      anomalies=["tcp_gap", "tcp_data_after_fin"], **GOOD)
def tcp_holes_and_wrap():
    cap = Capture()
    conv = Conversation(cap, cisn=0xFFFFFF00, sisn=0xFFFFFFF0).open()
    smtp_prefix(conv)
    conv.send(0, PSH | ACK, b"NOOP\r\n" * 10, seq=(conv.seq[0] + 2_000_000_000) & 0xFFFFFFFF, advance=False)
    conv.client(b"QUIT\r\n")
    conv.send(0, FIN | ACK)
    conv.send(0, PSH | ACK, b"RSET\r\n")  # after the client's FIN
    conv.send(1, FIN | ACK)
    conv.send(0, ACK)
    mid = Conversation(cap, cport=40002, cisn=123456)
    mid.server(b"250 ok\r\n").client(b"RCPT TO:<x@example.net>\r\n").reset(1)
    return gz(cap.pcap())


@case("syn-flood.pcap", "60,000 half-open connections (SYN only, zero checksums) around one good session",
      large=True, max_rss_mb=500, **GOOD)
def syn_flood():
    cap = Capture(tick=0.00001)
    dst = addr("10.0.0.2")

    def syns(first, last):
        for k in range(first, last):
            src = bytes([198, 51, k >> 8 & 0xFF, k & 0xFF])
            cap.add(ether(ipv4(src, dst, tcp_header(src, dst, 1024 + k % 60000, 25, k * 7919, 0, SYN, csum=False),
                               ident=k)))
    syns(0, 30_000)
    smtp_session(cap)
    syns(30_000, 60_000)
    return cap.pcap()


@case("tiny-flows.pcap", "100,000 tiny connections (SYN, SYN-ACK, a greeting, RST; zero checksums) "
      "after one good session", large=True, max_rss_mb=900, **GOOD)
def tiny_flows():
    cap = Capture(tick=0.00001)
    smtp_session(cap)
    server = addr("10.0.0.2")
    for k in range(100_000):
        client = bytes([10, 1 + (k >> 16), k >> 8 & 0xFF, k & 0xFF])
        cport, cisn, sisn = 1024 + k % 50000, k * 104729 & 0xFFFFFFFF, k * 7919 & 0xFFFFFFFF
        for src, dst, sp, dp, seq, ack, flags, payload in (
                (client, server, cport, 25, cisn, 0, SYN, b""),
                (server, client, 25, cport, sisn, cisn + 1, SYN | ACK, b""),
                (server, client, 25, cport, sisn + 1, cisn + 1, PSH | ACK, b"220 hi\r\n"),
                (client, server, cport, 25, cisn + 1, sisn + 9, RST | ACK, b"")):
            cap.add(ether(ipv4(src, dst, tcp_header(src, dst, sp, dp, seq, ack, flags, payload, csum=False))))
    return cap.pcap()


@case("retransmission-flood.pcap.gz", "20,000 retransmissions of one segment with other bytes, in a good "
      "session", anomalies=["tcp_overlap_conflict", "session_records_capped"], limits={"max_records": "1000"},
      **GOOD)
def retransmission_flood():
    cap = Capture(tick=0.00001)
    conv = Conversation(cap).open()
    smtp_prefix(conv)
    start = conv.seq[0]
    conv.client(b"NOOP\r\n")
    frame = conv.frame(0, PSH | ACK, b"RSET\r\n", seq=start)
    for _ in range(20_000):
        cap.add(frame)
    conv.server(b"250 ok\r\n").close()
    return gz(cap.pcap())


# -- dissectors ------------------------------------------------------------------------------
@case("imap-literal-2gb.pcap.gz", "IMAP: FETCH and APPEND literals that declare 2 GB and 10^30 bytes "
      "and bring 200 KB before the connection ends", anomalies=["imap_literal_too_large"],
      commands=["imap LOGIN", "imap SELECT", "imap FETCH"], users=["alice"], subjects=[BEFORE],
      limits={"max_literal": "64K"})
def imap_literal():
    cap = Capture()
    conv = Conversation(cap, sport=143).open()
    msg = message()
    conv.dialogue(b"* OK IMAP4rev1 ready\r\n", b"a1 LOGIN alice wonderland\r\n", b"a1 OK done\r\n",
                  b"a2 SELECT INBOX\r\n", b"* 2 EXISTS\r\n* OK [UIDVALIDITY 3] ok\r\na2 OK [READ-WRITE] done\r\n",
                  b"a3 FETCH 1 BODY[]\r\n",
                  b"* 1 FETCH (BODY[] {%d}\r\n" % len(msg) + msg + b")\r\na3 OK done\r\n",
                  b"a4 FETCH 2 BODY[]\r\n", b"* 2 FETCH (BODY[] {2147483648}\r\n" + b"A" * 100_000)
    conv.close()
    conv2 = Conversation(cap, cport=40001, sport=143).open()
    conv2.dialogue(b"* OK ready\r\n", b"b1 LOGIN alice wonderland\r\n", b"b1 OK done\r\n",
                   b"b2 APPEND INBOX {1000000000000000000000000000000+}\r\n" + b"B" * 100_000)
    conv2.close()
    return gz(cap.pcap())


@case("imap-nesting.pcap.gz", "IMAP: a response with 100,000 open parentheses, unbalanced quotes and "
      "a BODYSTRUCTURE nested 5,000 deep", anomalies=["imap_nesting_too_deep"],
      commands=["imap LOGIN"], users=["alice"])
def imap_nesting():
    cap = Capture()
    conv = Conversation(cap, sport=143).open()
    deep = b"(" * 5000 + b"\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 1 1" + b")" * 5000
    conv.dialogue(b"* OK ready\r\n", b"a1 LOGIN alice wonderland\r\n", b"a1 OK done\r\n", b"a2 SELECT INBOX\r\n",
                  b"* 1 EXISTS\r\na2 OK done\r\n", b"a3 FETCH 1 (BODYSTRUCTURE FLAGS)\r\n",
                  b"* 1 FETCH (FLAGS " + b"(" * 100_000 + b")\r\n* 1 FETCH (BODYSTRUCTURE " + deep
                  + b")\r\n* 1 FETCH (ENVELOPE (\"unterminated)\r\na3 OK done\r\n")
    conv.close()
    return gz(cap.pcap())


@case("smtp-bdat-sizes.pcap.gz", "SMTP: BDAT with a negative size, a size of 2^64 and of 10^30, "
      "and a BDAT that announces 10 bytes and sends 100,000", anomalies=["smtp_bad_bdat"], **GOOD)
def smtp_bdat():
    cap = Capture()
    conv = Conversation(cap).open()
    smtp_prefix(conv)
    conv.dialogue(None, b"MAIL FROM:<alice@example.org>\r\n", b"250 ok\r\n", b"RCPT TO:<bob@example.net>\r\n",
                  b"250 ok\r\n", b"BDAT -1 LAST\r\n", b"521 5.5.4 Syntax: BDAT count [LAST]\r\n",
                  b"BDAT 18446744073709551616 LAST\r\n", b"521 5.5.4 Syntax\r\n",
                  b"BDAT 1000000000000000000000000000000\r\n" + b"x" * 5000, b"552 too big\r\n",
                  b"BDAT 10 LAST\r\n" + b"y" * 100_000, b"250 ok\r\n")
    conv.close()
    return gz(cap.pcap())


@case("line-10mb.pcap.gz", "SMTP: a client line of 10 MB without CRLF after a good message; "
      "a server reply line of 1 MB", anomalies=["smtp_line_too_long"], **GOOD)
def line_10mb():
    cap = Capture()
    conv = Conversation(cap).open()
    smtp_prefix(conv)
    conv.client(b"A" * (10 * 1024 * 1024))
    conv.server(b"500 " + b"B" * (1024 * 1024))
    conv.close()
    return gz(cap.pcap())


def _nested_multipart(depth: int) -> bytes:
    head = bytearray()
    for k in range(depth):
        head += b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n" % (k, k)
    tail = bytearray(b"Content-Type: text/plain\r\n\r\ndeep\r\n")
    for k in reversed(range(depth)):
        tail += b"\r\n--b%d--\r\n" % k
    return bytes(head + tail)


@case("command-flood.pcap.gz", "SMTP: 200,000 unknown 3-byte commands after a good message",
      anomalies=["smtp_unknown_command", "session_records_capped"], limits={"max_records": "10000"}, **GOOD)
def command_flood():
    cap = Capture()
    conv = Conversation(cap).open()
    smtp_prefix(conv)
    conv.client(b"X\r\n" * 200_000)
    conv.server(b"500 what\r\n").close()
    return gz(cap.pcap())


@case("mime-nested.pcap.gz", "SMTP: a message of multiparts nested 10,000 deep, then one of "
      "message/rfc822 nested 10,000 deep", anomalies=["mime_too_deep"], subjects=[BEFORE, "deep multipart",
                                                                               "deep rfc822"],
      commands=["smtp MAIL", "smtp DATA"])
def mime_nested():
    cap = Capture()
    conv = Conversation(cap).open()
    smtp_prefix(conv)
    deep = head("deep multipart", b"MIME-Version: 1.0\r\n") + _nested_multipart(10_000)
    rfc822 = b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" * 10_000 + b"\r\nbottom\r\n"
    deep2 = head("deep rfc822", b"MIME-Version: 1.0\r\n") + rfc822
    for m in (deep, deep2):
        conv.dialogue(None, b"MAIL FROM:<alice@example.org>\r\n", b"250 ok\r\n", b"RCPT TO:<bob@example.net>\r\n",
                      b"250 ok\r\n", b"DATA\r\n", b"354 go\r\n", m + b"\r\n.\r\n", b"250 queued\r\n")
    conv.close()
    return gz(cap.pcap())


@case("headers-1m.pcap.gz", "a message with 1,000,000 header fields (SMTP), an HTTP request with "
      "1,000,000 header fields", anomalies=["mime_too_many_headers", "http_header_too_large"],
      subjects=[BEFORE, "many headers"], commands=["smtp MAIL"], uris=["/before"])
def headers_1m():
    cap = Capture()
    conv = Conversation(cap).open()
    smtp_prefix(conv)
    many = message("many headers", extra=b"X-H: v\r\n" * 1_000_000)
    conv.dialogue(None, b"MAIL FROM:<alice@example.org>\r\n", b"250 ok\r\n", b"RCPT TO:<bob@example.net>\r\n",
                  b"250 ok\r\n", b"DATA\r\n", b"354 go\r\n", many + b".\r\n", b"250 queued\r\n")
    conv.close()
    http = Conversation(cap, cport=40010, sport=80).open()
    http.client(b"GET /before HTTP/1.1\r\nHost: webmail.example.org\r\n\r\n")
    http.server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    http.client(b"GET /after HTTP/1.1\r\n" + b"X-H: v\r\n" * 1_000_000 + b"\r\n")
    http.server(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n")
    http.close()
    return gz(cap.pcap())


def _http_bomb(conv: Conversation, path: bytes, encoding: bytes, body: bytes) -> None:
    conv.client(b"GET " + path + b" HTTP/1.1\r\nHost: webmail.example.org\r\n\r\n")
    conv.server(b"HTTP/1.1 200 OK\r\nContent-Type: message/rfc822\r\nContent-Encoding: " + encoding
                + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@case("http-bombs.pcap.gz", "HTTP: gzip, deflate, brotli and double-gzip bodies that expand to "
      "256 MB of zeros each (message downloads), after a good exchange",
      anomalies=["http_decompression_bomb"], uris=["/before", "/gzip", "/deflate", "/br", "/gzip-gzip"])
def http_bombs():
    import brotli
    zeros = b"\0" * (1 << 20)
    gzip_bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    deflate_bomb = zlib.compressobj(9, zlib.DEFLATED, 15)
    parts_g, parts_d = [], []
    for _ in range(256):  # 256 MB: four times max_decompressed, 1,000 times the compressed size
        parts_g.append(gzip_bomb.compress(zeros))
        parts_d.append(deflate_bomb.compress(zeros))
    g = b"".join(parts_g) + gzip_bomb.flush()
    d = b"".join(parts_d) + deflate_bomb.flush()
    br = brotli.compress(b"\0" * (1 << 28), quality=5)  # a few hundred bytes
    cap = Capture()
    conv = Conversation(cap, sport=80).open()
    conv.client(b"GET /before HTTP/1.1\r\nHost: webmail.example.org\r\n\r\n")
    conv.server(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
    _http_bomb(conv, b"/gzip", b"gzip", g)
    _http_bomb(conv, b"/deflate", b"deflate", d)
    _http_bomb(conv, b"/br", b"br", br)
    _http_bomb(conv, b"/gzip-gzip", b"gzip, gzip", gzip.compress(g, mtime=0))
    conv.close()
    return gz(cap.pcap())


@case("pop3-endless.pcap.gz", "POP3: a RETR whose multi-line response never ends (4 MB, no "
      "terminating dot, past max_message_size) before the connection closes",
      anomalies=["pop3_unterminated_multiline", "pop3_message_too_large"],
      commands=["pop3 USER", "pop3 PASS", "pop3 RETR"], users=["alice"], subjects=[BEFORE],
      limits={"max_message_size": "1M"})
def pop3_endless():
    cap = Capture()
    conv = Conversation(cap, sport=110).open()
    msg = message()
    conv.dialogue(b"+OK POP3 ready\r\n", b"USER alice\r\n", b"+OK\r\n", b"PASS wonderland\r\n", b"+OK logged in\r\n",
                  b"RETR 1\r\n", b"+OK %d octets\r\n" % len(msg) + msg + b".\r\n", b"RETR 2\r\n",
                  b"+OK\r\n" + message("endless") + b"this line again and again\r\n" * 160_000)
    conv.close()
    return gz(cap.pcap())


@case("base64-garbage.pcap.gz", "SMTP: attachments whose base64 is garbage (bytes outside the "
      "alphabet, padding in the middle, a truncated quantum, 1 MB of '=')",
      anomalies=["mime_bad_base64"], subjects=[BEFORE, "garbage"], commands=["smtp MAIL"])
def base64_garbage():
    cap = Capture()
    conv = Conversation(cap).open()
    smtp_prefix(conv)
    parts = [b"!!!!####$$$$\x00\xff\xfe", b"QUJD==RUZH\r\nSElK", b"QUJDRA", b"=" * (1 << 20),
             bytes(range(256)) * 4]
    body = b"".join(b"--g\r\nContent-Type: application/octet-stream; name=\"p%d.bin\"\r\n"
                    b"Content-Transfer-Encoding: base64\r\n\r\n" % k + p + b"\r\n" for k, p in enumerate(parts))
    m = head("garbage", b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=g\r\n") + b"\r\n"
    m += body + b"--g--\r\n"
    conv.dialogue(None, b"MAIL FROM:<alice@example.org>\r\n", b"250 ok\r\n", b"RCPT TO:<bob@example.net>\r\n",
                  b"250 ok\r\n", b"DATA\r\n", b"354 go\r\n", m + b".\r\n", b"250 queued\r\n")
    conv.close()
    return gz(cap.pcap())


BAD_UTF8 = [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xc0\xaf", b"\x80"]


@case("invalid-utf8.pcap.gz", "invalid UTF-8 in every field: SMTP commands and addresses, headers, "
      "attachment names, IMAP mailbox names and logins, POP3 users, HTTP request lines and headers",
      subjects=[BEFORE], commands=["smtp MAIL", "imap LOGIN", "pop3 USER"])
def invalid_utf8():
    cap = Capture()
    bad = b"".join(BAD_UTF8)
    conv = Conversation(cap).open()
    smtp_prefix(conv)
    m = (b"From: " + bad + b" <" + bad + b"@example.org>\r\nTo: " + bad + b"\r\nSubject: " + bad
         + b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=" + bad + b"\r\n\r\n--" + bad
         + b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Disposition: attachment; filename=\"" + bad
         + b".txt\"\r\n\r\n" + bad + b"\r\n--" + bad + b"--\r\n")
    conv.dialogue(None, b"MAIL FROM:<" + bad + b"@example.org>\r\n", b"250 " + bad + b"\r\n",
                  b"RCPT TO:<" + bad + b">\r\n", b"250 ok\r\n", b"DATA\r\n", b"354 go\r\n", m + b".\r\n",
                  b"250 queued as " + bad + b"\r\n", b"HELO " + bad + b"\r\n", b"250 " + bad + b"\r\n")
    conv.close()
    imap = Conversation(cap, cport=40001, sport=143).open()
    imap.dialogue(b"* OK " + bad + b"\r\n", b"a1 LOGIN " + bad + b" " + bad + b"\r\n", b"a1 OK " + bad + b"\r\n",
                  b"a2 SELECT \"" + bad + b"\"\r\n", b"* 1 EXISTS\r\na2 OK done\r\n",
                  b"a3 FETCH 1 (ENVELOPE)\r\n", b"* 1 FETCH (ENVELOPE (\"" + bad + b"\" \"" + bad
                  + b"\" ((\"" + bad + b"\" NIL \"" + bad + b"\" \"" + bad + b"\")) NIL NIL NIL NIL NIL NIL \""
                  + bad + b"\"))\r\na3 OK done\r\n")
    imap.close()
    pop = Conversation(cap, cport=40002, sport=110).open()
    pop.dialogue(b"+OK " + bad + b"\r\n", b"USER " + bad + b"\r\n", b"+OK\r\n", b"PASS " + bad + b"\r\n",
                 b"+OK\r\n", b"RETR 1\r\n", b"+OK\r\n" + m + b".\r\n")
    pop.close()
    http = Conversation(cap, cport=40003, sport=80).open()
    http.client(b"POST /" + bad + b"?q=" + bad + b" HTTP/1.1\r\nHost: " + bad + b"\r\nUser-Agent: " + bad
                + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 30\r\n\r\n"
                + (b"_user=" + bad + b"&_pass=" + bad + b"&x=1")[:30])
    http.server(b"HTTP/1.1 200 " + bad + b"\r\nContent-Length: 0\r\nSet-Cookie: " + bad + b"\r\n\r\n")
    http.close()
    return gz(cap.pcap())


@case("nul-bytes.pcap.gz", "NUL bytes in SMTP, IMAP, POP3 and HTTP commands, in addresses, headers and "
      "attachment names", subjects=[BEFORE], commands=["smtp MAIL", "imap LOGIN", "pop3 USER"])
def nul_bytes():
    cap = Capture()
    conv = Conversation(cap).open()
    smtp_prefix(conv)
    m = (b"From: a\x00b <a\x00@example.org>\r\nSubject: nul\x00subject\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=n\r\n\r\n--n\r\nContent-Disposition: attachment; "
         b"filename=\"evil\x00.txt\"\r\n\r\nx\x00y\r\n--n--\r\n")
    conv.dialogue(None, b"MAIL\x00 FROM:<a\x00@example.org>\r\n", b"250 ok\r\n", b"RCPT TO:<\x00>\r\n",
                  b"250 ok\r\n", b"DA\x00TA\r\n", b"500 what\r\n", b"DATA\r\n", b"354 go\r\n", m + b".\r\n",
                  b"250 queued\r\n", b"\x00\x00\x00\r\n", b"500 \x00\r\n")
    conv.close()
    imap = Conversation(cap, cport=40001, sport=143).open()
    imap.dialogue(b"* OK ready\r\n", b"a1 LOGIN alice wonderland\r\n", b"a1 OK\r\n", b"a\x002 SELECT IN\x00BOX\r\n",
                  b"a\x002 OK\x00\r\n", b"\x00 NOOP\r\n", b"\x00 BAD\r\n")
    imap.close()
    pop = Conversation(cap, cport=40002, sport=110).open()
    pop.dialogue(b"+OK ready\r\n", b"USER al\x00ice\r\n", b"+OK\r\n", b"PA\x00SS x\r\n", b"-ERR\x00\r\n")
    pop.close()
    http = Conversation(cap, cport=40003, sport=80).open()
    http.client(b"G\x00ET /\x00 HTTP/1.1\r\nHo\x00st: x\r\n\r\nGET /ok HTTP/1.1\r\nX: \x00\r\n\r\n")
    http.server(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n\x00")
    http.close()
    return gz(cap.pcap())


# -- hostile traces of the kind other projects keep ----------------------------------------
@case("zeek-style-smtp-bdat-invalid.pcap.gz", "recreated after Zeek's smtp-bdat-cmd-* traces (Python "
      "client against Postfix): BDAT -1 LAST, BDAT with an overflowing size, BDAT without a size, "
      "answered with 521", anomalies=["smtp_bad_bdat"], commands=["smtp EHLO", "smtp MAIL", "smtp RCPT", "smtp QUIT"])
def zeek_bdat():
    cap = Capture()
    ehlo_reply = (b"250-example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ETRN\r\n250-STARTTLS\r\n"
                  b"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n")
    for k, bdat in enumerate((b"BDAT -1 LAST", b"BDAT 18446744073709551617 LAST", b"BDAT", b"BDAT LAST",
                              b"BDAT 10 LAST MORE")):
        conv = Conversation(cap, client="127.0.0.1", cport=44470 + k, server="127.0.0.1").open()
        conv.dialogue(b"220 example.com ESMTP Postfix (Debian/GNU)\r\n", b"EHLO localhost\r\n", ehlo_reply,
                      b"MAIL FROM:<zeek@localhost>\r\n", b"250 2.1.0 Ok\r\n", b"RCPT TO:<root@localhost>\r\n",
                      b"250 2.1.5 Ok\r\n", bdat + b"\r\n", b"521 5.5.4 Syntax: BDAT count [LAST]\r\n",
                      b"QUIT\r\n", b"221 2.0.0 Bye\r\n")
        conv.close()
    return gz(cap.pcap())


@case("zeek-style-smtp-transactions-invalid.pcap.gz", "recreated after Zeek's "
      "smtp-mail-transactions-invalid trace: RCPT before MAIL, MAIL twice, DATA without RCPT, then a "
      "good transaction", anomalies=[], subjects=[BEFORE], commands=["smtp RCPT", "smtp MAIL", "smtp DATA"])
def zeek_transactions():
    cap = Capture()
    conv = Conversation(cap, client="127.0.0.1", cport=44478, server="127.0.0.1").open()
    conv.dialogue(b"220 mail.example.org ESMTP Exim\r\n", b"EHLO Bob-PC\r\n", b"250-mail.example.org\r\n250 OK\r\n",
                  b"MAIL FROM:<bob@example.org>\r\n", b"250 OK\r\n", b"RCPT TO:<alice@example.org>\r\n",
                  b"250 Accepted\r\n", b"DATA\r\n", b"354 go\r\n", message() + b".\r\n",
                  b"250 OK id=1pgobK-001mwq-ED\r\n", b"RCPT TO:<alice@example.org>\r\n",
                  b"503 sender not yet given\r\n", b"DATA\r\n", b"503 valid RCPT command must precede DATA\r\n",
                  b"MAIL FROM:<bob@example.org>\r\n", b"250 OK\r\n", b"MAIL FROM:<bob@example.org>\r\n",
                  b"503 sender already given\r\n", b"DATA\r\n", b"503 no valid recipients\r\n",
                  b"QUIT\r\n", b"221 bye\r\n")
    conv.close()
    return gz(cap.pcap())


@case("zeek-style-pop3-bad-list-retr.pcap.gz", "recreated after Zeek's pop3/bad-list-retr-crafted "
      "trace: a LIST response without its terminating dot, a RETR, then a server line GARBAGE",
      anomalies=["pop3_unterminated_multiline"], commands=["pop3 USER", "pop3 PASS", "pop3 LIST"],
      users=["alice"])
def zeek_pop3():
    cap = Capture()
    conv = Conversation(cap, client="127.0.0.1", cport=58854, server="127.0.0.1", sport=110).open()
    conv.dialogue(b"+OK Dovecot ready.\r\n", b"USER alice\r\n", b"+OK\r\n", b"PASS wonderland\r\n",
                  b"+OK Logged in.\r\n", b"LIST\r\n", b"+OK 2 messages:\r\n1 120\r\n2 130\r\n",
                  b"RETR 1\r\n", b"GARBAGE\r\n", b"RETR 2\r\n", b"+OK\r\nSubject: x\r\n\r\nbody\r\n.\r\n",
                  b"QUIT\r\n", b"+OK Logging out.\r\n")
    conv.close()
    return gz(cap.pcap())


@case("suricata-style-smtp-events.pcap.gz", "recreated after the SMTP events Suricata tests for: "
      "no server greeting, command and reply lines beyond 510 bytes, replies with no request, a BDAT "
      "chunk longer than announced, MIME with long lines, long header names and values, a boundary of "
      "200 characters and a filename of 4,000", anomalies=["smtp_unmatched_reply"],
      subjects=[BEFORE, "suricata events"], commands=["smtp MAIL"])
def suricata_events():
    cap = Capture()
    conv = Conversation(cap).open()
    conv.dialogue(None, b"EHLO " + b"h" * 600 + b"\r\n", b"250-" + b"r" * 800 + b"\r\n250 CHUNKING\r\n",
                  b"NOOP\r\n", b"250 ok\r\n250 unsolicited\r\n354 unsolicited\r\n")
    conv.dialogue(None, b"MAIL FROM:<alice@example.org>\r\n", b"250 ok\r\n", b"RCPT TO:<bob@example.net>\r\n",
                  b"250 ok\r\n", b"DATA\r\n", b"354 go\r\n", message() + b".\r\n", b"250 queued\r\n")
    boundary = b"B" * 200
    m = head("suricata events", b"MIME-Version: 1.0\r\nX-" + b"N" * 2000 + b": v\r\nX-Long: " + b"v" * 20000
             + b"\r\nContent-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n")
    m += (b"\r\n--" + boundary + b"\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n"
          b"Content-Disposition: attachment; filename=\"" + b"f" * 4000 + b".txt\"\r\n\r\n" + b"q=ZZ" * 5000
          + b"\r\n" + b"L" * 100_000 + b"\r\n--" + boundary + b"--\r\n")
    conv.dialogue(None, b"MAIL FROM:<alice@example.org>\r\n", b"250 ok\r\n", b"RCPT TO:<bob@example.net>\r\n",
                  b"250 ok\r\n", b"BDAT %d LAST\r\n" % (len(m) // 2) + m, b"250 ok\r\n")
    conv.close()
    return gz(cap.pcap())


# -- building --------------------------------------------------------------------------------
def build(name: str, directory: Path) -> Path:
    """Build one case into ``directory``; returns its path."""
    path = directory / name
    path.write_bytes(CASES[name].build())
    return path


def readme() -> str:
    """tests/captures/malformed/README.md, from the cases above."""
    lines = ["# The malformed-capture suite", "",
             "Hostile captures for maildissect's robustness tests. Every file here is built, byte for byte, by",
             "`tests/malformed/make_suite.py` (frames packed with `struct` in `tests/malformed/packets.py`;",
             "fixed timestamps, ports and sequence numbers, gzip with a zero mtime), so it can be rebuilt",
             "and checked:", "",
             "    python tests/malformed/make_suite.py           # rewrite the files, manifest.json and this README",
             "    python tests/malformed/make_suite.py --check   # exit 1 if anything here differs from a rebuild",
             "    python tests/malformed/make_suite.py --large DIR  # also build the large cases into DIR", "",
             "The captures are synthetic: no third-party file is included. The `zeek-style-*` and",
             "`suricata-style-*` files recreate, from their published descriptions and baselines, the kind of",
             "trace Zeek (testing/btest/Traces) and Suricata (suricata-verify) keep for their SMTP, BDAT and",
             "POP3 regression tests.", "",
             "Most files start with a good exchange (a message with the subject \"before the damage\", a",
             "login, a request) and then break one layer. `tests/test_malformed.py` runs `maildissect",
             "analyze`, `messages`, `extract` and `export` on each file in a subprocess and checks the",
             "expectations recorded in `manifest.json`: the exit status (1 with a one-line error for a file",
             "that is not a capture, else 0), the anomalies the file must raise, what must survive from",
             "before the damage, that extraction stays in its directory, and the peak memory of the run.", "",
             "Files are committed gzip-compressed (the reader accepts `.gz`) and stay small. The two large",
             "cases (marked *built at test time*) would add tens of megabytes and are generated into a",
             "temporary directory by the test instead.", "",
             "| file | what is wrong with it | expected anomalies | memory cap |", "|---|---|---|---|"]
    for c in CASES.values():
        name = f"`{c.name}`" + (" (built at test time)" if c.large else "")
        expect = "exit 1: " + c.error if c.status else ", ".join(f"`{a}`" for a in c.anomalies) or "(none required)"
        lim = "".join(f"; `--limit {k}={v}`" for k, v in c.limits.items())
        lines.append(f"| {name} | {c.about}{lim} | {expect} | {c.max_rss_mb} MiB |")
    return "\n".join(lines) + "\n"


def manifest() -> dict:
    return {"about": "The malformed-capture suite; built by tests/malformed/make_suite.py (see README.md).",
            "cases": [c.manifest() for c in CASES.values()]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare the committed files with a rebuild")
    ap.add_argument("--large", metavar="DIR", help="also build the large cases into DIR")
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
    for fname, text in (("manifest.json", json.dumps(manifest(), indent=1) + "\n"), ("README.md", readme())):
        path = SUITE / fname
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(fname)
        else:
            path.write_text(text)
    if args.large:
        out = Path(args.large)
        out.mkdir(parents=True, exist_ok=True)
        for c in CASES.values():
            if c.large:
                print(build(c.name, out))
    if stale:
        print("out of date (run python tests/malformed/make_suite.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
