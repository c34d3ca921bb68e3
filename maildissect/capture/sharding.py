"""Which worker handles a connection, when several share one capture (``--jobs``).

A connection's shard is a hash of its two endpoints, the same in both
directions, so each connection is handled whole by one worker. The common
frame (Ethernet, IPv4 without options, TCP) can be assigned from fixed byte
offsets, before it is decoded: workers skip other shards' frames cheaply.
"""

from __future__ import annotations

import struct

# Ethernet + IPv4 + TCP fields at fixed offsets from the frame's start: ethertype,
# version/IHL, total length, flags/fragment offset, protocol, the last byte of each
# address, the two ports, and the TCP data offset.
_FIXED = struct.Struct("!12xHBxH2xHxB5xB3xBHH8xB")
#: a frame shorter than this is never assigned from fixed offsets
MIN_FIXED = 54


def shard_of(a: int, b: int, n: int) -> int:
    """The shard (0..n-1) of a connection from its two endpoints, the same both ways.

    ``a`` and ``b`` are (last address byte << 16 | port) of each side. XOR makes
    it symmetric; the multiplication (Fibonacci hashing) spreads connections whose
    ports differ in a regular pattern, which a plain sum would send to the same
    shard by protocol.
    """
    return (((a ^ b) * 0x9E3779B1) >> 13 & 0xFFFFF) % n


def frame_shard(buf, offset: int, n: int) -> int:
    """The shard of the Ethernet frame at ``buf[offset:]`` (at least MIN_FIXED bytes),
    or -1 when it is not plain Ethernet/IPv4/TCP with sane header lengths and must
    be decoded to know (VLANs, IP options, fragments, other link types)."""
    ethertype, ver_ihl, total, frag, proto, src, dst, sport, dport, doff = _FIXED.unpack_from(buf, offset)
    if ethertype != 0x0800 or ver_ihl != 0x45 or proto != 6 or frag & 0x3FFF \
            or not 20 <= (doff >> 4) * 4 <= total - 20:
        return -1
    return shard_of((src << 16) | sport, (dst << 16) | dport, n)
