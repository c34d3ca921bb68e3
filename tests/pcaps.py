"""Building test captures: frames with scapy, files written byte by byte.

The writers here are deliberately independent of maildissect's reader (they
follow the pcap and pcapng specifications directly) so that a reader bug
cannot hide behind a matching writer bug.
"""

from __future__ import annotations

import random
import struct

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether


def tcp_frame(src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=25, seq=1000, ack=0, flags="PA",
              payload=b"", v6=False):
    """A raw Ethernet frame carrying one TCP segment."""
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip /
                 TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags) / payload)


def write_pcap(path, frames, linktype=1, endian="<", nano=False, snaplen=262144):
    """frames: iterable of (ts, data[, wirelen])."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    with open(path, "wb") as f:
        f.write(struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
        for item in frames:
            ts, data = item[0], item[1]
            wirelen = item[2] if len(item) > 2 else len(data)
            sec = int(ts)
            frac = round((ts - sec) * (1e9 if nano else 1e6))
            f.write(struct.pack(endian + "IIII", sec, frac, len(data), wirelen))
            f.write(data)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _block(btype: int, body: bytes, endian="<") -> bytes:
    body = _pad(body)
    n = 12 + len(body)
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


#: pcapng Decryption Secrets Block secrets types
TLS_KEY_LOG, WIREGUARD_KEY_LOG = 0x544C534B, 0x57474B4C


def secrets_block(stype: int, data: bytes, endian="<") -> bytes:
    """A pcapng Decryption Secrets Block (what ``editcap --inject-secrets`` writes)."""
    return _block(0x0000000A, struct.pack(endian + "II", stype, len(data)) + _pad(data), endian)


def write_pcapng(path, interfaces, packets, endian="<", secrets=()):
    """interfaces: [(linktype, tsresol_byte or None)]; packets: [(iface, ts, data)];
    secrets: [(index of the packet they precede, secrets type, data)]."""
    out = bytearray()
    out += _block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)
    for lt, tsresol in interfaces:
        opts = b""
        if tsresol is not None:
            opts += struct.pack(endian + "HH", 9, 1) + _pad(bytes([tsresol]))
        if opts:
            opts += struct.pack(endian + "HH", 0, 0)
        out += _block(1, struct.pack(endian + "HHI", lt, 0, 262144) + opts, endian)
    before = {}
    for index, stype, data in secrets:
        before.setdefault(index, []).append(secrets_block(stype, data, endian))
    for n, (iface, ts, data) in enumerate(packets):
        for block in before.pop(n, ()):
            out += block
        lt, tsresol = interfaces[iface]
        if tsresol is None:
            units = 10 ** 6
        elif tsresol & 0x80:
            units = 2 ** (tsresol & 0x7F)
        else:
            units = 10 ** tsresol
        t = round(ts * units)
        out += _block(6, struct.pack(endian + "IIIII", iface, t >> 32, t & 0xFFFFFFFF, len(data), len(data))
                      + data, endian)
    for blocks in before.values():
        for block in blocks:
            out += block
    with open(path, "wb") as f:
        f.write(out)


def conversation(client=("10.0.0.1", 40000), server=("10.0.0.2", 25), exchanges=(), mss=1460, t0=1000.0,
                 isn=(1000, 5000), handshake=True, close=True, v6=False):
    """Frames (ts, bytes) of a whole TCP conversation.

    exchanges: [("c"|"s", payload bytes)]; payloads are cut at ``mss``.
    Returns (frames, client_bytes, server_bytes).
    """
    (cip, cport), (sip, sport) = client, server
    cseq, sseq = isn
    t = t0
    frames = []

    def add(frm, flags, payload=b""):
        nonlocal cseq, sseq, t
        t += 0.001
        if frm == "c":
            frames.append((t, tcp_frame(cip, sip, cport, sport, cseq, sseq, flags, payload, v6)))
            cseq += len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
        else:
            frames.append((t, tcp_frame(sip, cip, sport, cport, sseq, cseq, flags, payload, v6)))
            sseq += len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
    if handshake:
        add("c", "S")
        add("s", "SA")
        add("c", "A")
    cdata, sdata = b"", b""
    for frm, data in exchanges:
        for i in range(0, len(data), mss):
            add(frm, "PA", data[i:i + mss])
        if frm == "c":
            cdata += data
        else:
            sdata += data
        add("s" if frm == "c" else "c", "A")
    if close:
        add("c", "FA")
        add("s", "FA")
        add("c", "A")
    return frames, cdata, sdata


def impair(frames, seed=0, reorder=0.3, dup=0.2):
    """Swap neighbouring frames and duplicate some, keeping timestamps monotonic."""
    rng = random.Random(seed)
    out = list(frames)
    i = 3
    while i < len(out) - 4:
        if rng.random() < reorder:  # swap two neighbours, never moving a frame further
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 1
        i += 1
    res = []
    for f in out:
        res.append(f)
        if rng.random() < dup:
            res.append(f)
    t = res[0][0]
    fixed = []
    for i, (_ts, data) in enumerate(res):
        fixed.append((t + i * 0.0001, data))
    return fixed
