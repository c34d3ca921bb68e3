"""Raw frames and TCP conversations for the malformed-capture suite, written with struct.

The suite needs headers that no packet library will build (an IPv4 header
length of 3 words, a TCP data offset past the packet, fragments that
overlap with other bytes), and hundreds of thousands of packets built in
seconds, so frames are packed by hand here. Checksums are correct unless a
case asks otherwise, so that tshark and Wireshark read the files as a victim
would see them. Everything is deterministic: timestamps, ports and sequence
numbers come from the arguments, never from a clock or an unseeded RNG.
"""

from __future__ import annotations

import gzip
import io
import socket
import struct
import sys

ETH_SRC = bytes.fromhex("020000000001")
ETH_DST = bytes.fromhex("020000000002")
SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10
MSS = 1460


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    # the ones' complement sum is the same in either byte order, up to a final swap
    total = sum(memoryview(data).cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    return ~total & 0xFFFF


def addr(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def tcp_header(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
               payload: bytes = b"", options: bytes = b"", doff: int | None = None, window: int = 65535,
               csum: bool = True) -> bytes:
    """A TCP header plus payload; ``doff`` (in 32-bit words) overrides the real header length.

    ``csum=False`` leaves the checksum zero, as a capture taken on a host with
    checksum offload shows it (and as the floods do, to build in seconds).
    """
    options += b"\0" * (-len(options) % 4)
    words = doff if doff is not None else (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (words & 0xF) << 4,
                      flags, window, 0, 0) + options
    if not csum:
        return hdr + payload
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(hdr) + len(payload))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(hdr) + len(payload), 6)
    csum = checksum(pseudo + hdr + payload)
    return hdr[:16] + struct.pack("!H", csum) + hdr[18:] + payload


def ipv4(src: bytes, dst: bytes, payload: bytes, proto: int = 6, ident: int = 1, frag: int = 0x4000,
         ihl: int | None = None, total: int | None = None, version: int = 4, options: bytes = b"") -> bytes:
    """An IPv4 packet; ``ihl``/``total``/``version`` override the real values (bogus headers)."""
    options += b"\0" * (-len(options) % 4)
    words = ihl if ihl is not None else 5 + len(options) // 4
    length = total if total is not None else 20 + len(options) + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | (words & 0xF), 0, length & 0xFFFF, ident & 0xFFFF,
                      frag, 64, proto, 0, src, dst) + options
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: bytes, dst: bytes, payload: bytes, nxt: int = 6, plen: int | None = None) -> bytes:
    length = len(payload) if plen is None else plen
    return struct.pack("!IHBB", 6 << 28, length & 0xFFFF, nxt, 64) + src + dst + payload


def ether(packet: bytes, etype: int | None = None) -> bytes:
    if etype is None:
        etype = 0x86DD if packet[:1] and packet[0] >> 4 == 6 else 0x0800
    return ETH_DST + ETH_SRC + struct.pack("!H", etype) + packet


class Capture:
    """Frames with timestamps, written as a pcap (or pcapng) file.

    ``add`` appends a frame (``wirelen`` larger than the frame marks a
    snapshot-length cut); ``tick`` is the time between frames.
    """

    def __init__(self, start: float = 1_700_000_000.0, tick: float = 0.001, snaplen: int = 262144,
                 linktype: int = 1):
        self.frames: list[tuple[float, bytes, int]] = []
        self.ts = start
        self.tick = tick
        self.snaplen = snaplen
        self.linktype = linktype

    def add(self, frame: bytes, wirelen: int | None = None, ts: float | None = None) -> None:
        if ts is None:
            self.ts += self.tick
            ts = self.ts
        self.frames.append((ts, frame, len(frame) if wirelen is None else wirelen))

    def pcap(self) -> bytes:
        out = io.BytesIO()
        write_pcap(out, self.frames, self.snaplen, self.linktype)
        return out.getvalue()


def pcap_header(snaplen: int = 262144, linktype: int = 1) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(ts: float, frame: bytes, wirelen: int | None = None) -> bytes:
    sec = int(ts)
    usec = int(round((ts - sec) * 1e6))
    if usec >= 1_000_000:
        sec, usec = sec + 1, usec - 1_000_000
    return struct.pack("<IIII", sec, usec, len(frame), len(frame) if wirelen is None else wirelen) + frame


def write_pcap(f, frames, snaplen: int = 262144, linktype: int = 1) -> None:
    f.write(pcap_header(snaplen, linktype))
    for ts, frame, wirelen in frames:
        f.write(pcap_record(ts, frame, wirelen))


def pcapng_block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def pcapng_shb() -> bytes:
    return pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def pcapng_idb(linktype: int = 1, options: bytes = b"") -> bytes:
    return pcapng_block(1, struct.pack("<HHI", linktype, 0, 262144) + options)


def pcapng_epb(iface: int, ts_units: int, frame: bytes, wirelen: int | None = None) -> bytes:
    return pcapng_block(6, struct.pack("<IIIII", iface, ts_units >> 32, ts_units & 0xFFFFFFFF, len(frame),
                                       len(frame) if wirelen is None else wirelen) + frame)


def gz(data: bytes) -> bytes:
    """gzip with a fixed header (mtime 0), so the committed files are reproducible byte for byte."""
    return gzip.compress(data, compresslevel=9, mtime=0)


class Conversation:
    """One TCP connection written segment by segment into a :class:`Capture`.

    ``client(data)``/``server(data)`` send data (cut at the MSS, each segment
    acknowledged by the peer's current sequence number); ``open``/``close``
    do the handshake and the FIN exchange.
    """

    def __init__(self, cap: Capture, client: str = "10.0.0.1", cport: int = 40000, server: str = "10.0.0.2",
                 sport: int = 25, cisn: int = 1000, sisn: int = 500000):
        self.cap = cap
        self.c = (addr(client), cport)
        self.s = (addr(server), sport)
        self.seq = [cisn, sisn]  # next sequence number of client, server
        self.v6 = ":" in client

    def frame(self, side: int, flags: int, payload: bytes = b"", seq: int | None = None, **tcp) -> bytes:
        (src, sp), (dst, dp) = (self.c, self.s) if side == 0 else (self.s, self.c)
        seg = tcp_header(src, dst, sp, dp, self.seq[side] if seq is None else seq,
                         self.seq[1 - side] if flags & ACK else 0, flags, payload, **tcp)
        return ether(ipv6(src, dst, seg) if self.v6 else ipv4(src, dst, seg))

    def send(self, side: int, flags: int, payload: bytes = b"", seq: int | None = None, advance: bool = True,
             wirelen: int | None = None, **tcp) -> None:
        self.cap.add(self.frame(side, flags, payload, seq, **tcp), wirelen)
        if advance and seq is None:
            self.seq[side] += len(payload) + (1 if flags & (SYN | FIN) else 0)

    def open(self) -> "Conversation":
        self.send(0, SYN)
        self.send(1, SYN | ACK)
        self.send(0, ACK)
        return self

    def data(self, side: int, data: bytes, mss: int = MSS) -> "Conversation":
        for i in range(0, len(data), mss):
            self.send(side, PSH | ACK, data[i:i + mss])
        return self

    def client(self, data: bytes, mss: int = MSS) -> "Conversation":
        return self.data(0, data, mss)

    def server(self, data: bytes, mss: int = MSS) -> "Conversation":
        return self.data(1, data, mss)

    def dialogue(self, *turns) -> "Conversation":
        """Alternating server, client, server... turns (the server speaks first in mail protocols)."""
        for i, turn in enumerate(turns):
            if turn:
                self.data(1 if i % 2 == 0 else 0, turn)
        return self

    def close(self) -> "Conversation":
        self.send(0, FIN | ACK)
        self.send(1, FIN | ACK)
        self.send(0, ACK)
        return self

    def reset(self, side: int = 0) -> "Conversation":
        self.send(side, RST | ACK)
        return self
