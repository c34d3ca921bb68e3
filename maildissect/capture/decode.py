"""Link, IP and TCP header decoding with struct, no packet objects.

:class:`Decoder` turns a raw frame into a TCP segment tuple::

    (key, src, dst, sport, dport, seq, ack, flags, payload, seglen)

``key`` is ``src + dst + sport/dport`` as bytes (the flow-table key of this
direction); ``src``/``dst`` are packed addresses (4 or 16 bytes); ``payload`` is
the captured TCP payload and ``seglen`` its length on the wire (larger when the
capture's snapshot length cut the packet: the reassembler reports the rest as a
gap). IPv4 fragments are reassembled (bounded); IPv6 extension headers are
walked. Anything else is counted and skipped. Checksums are not verified: many
captures are taken on the sending host with checksum offload, and Zeek's test
traces carry bad checksums on purpose.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right

from ..model import Anomaly

ANOMALIES = {
    "ip_bad_header": "an IPv4/IPv6 header is shorter than its minimum or declares impossible lengths",
    "tcp_bad_header": "a TCP header declares a data offset outside the packet",
    "ip_fragment_overlap": "IP fragments overlap; the first copy of each byte is kept",
    "ip_fragment_incomplete": "an IP datagram's fragments never all arrived (dropped at timeout or end)",
    "ip_fragment_too_large": "fragments describe a datagram beyond the reassembly limit; dropped",
    "ip_fragment_table_full": "too many datagrams in reassembly at once; the oldest was dropped",
    "ip_fragment_flood": "more fragments for one datagram than it can have (max_fragment_bytes / 8, twice); dropped",
}

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_LINKTYPES = {LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6}

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
_VLAN_TYPES = {0x8100, 0x88A8, 0x9100, 0x9200}
_BSD_AF_INET6 = {24, 28, 30}  # AF_INET6 on NetBSD/OpenBSD, FreeBSD, macOS
_IPV6_EXT = {0, 43, 60, 51, 135, 139, 140}  # hop-by-hop, routing, dest opts, AH, mobility, HIP, shim6

_u16 = struct.Struct("!H").unpack_from
# from the IPv4 total length (offset 16 of an Ethernet frame) to the TCP flags
_eth_ipv4_tcp = struct.Struct("!H2xH xB 2x8x HHIIBB").unpack_from
_ipv4 = struct.Struct("!BBHHHBBH4s4s").unpack_from
_tcp = struct.Struct("!HHIIBB").unpack_from
_ipv6_frag = struct.Struct("!BBHI").unpack_from


class Decoder:
    """Stateful frame decoder (the state is the IP fragment table).

    Counters: ``frames``, ``tcp``, ``non_ip``, ``non_tcp``, ``malformed``,
    ``fragments``. Anomalies go to ``anomalies``.
    """

    def __init__(self, max_fragment_bytes: int = 65535, max_fragment_sets: int = 4096,
                 fragment_timeout: float = 30.0):
        self.frames = 0
        self.tcp = 0
        self.non_ip = 0
        self.non_tcp = 0
        self.malformed = 0
        self.fragments = 0
        self.anomalies: list[Anomaly] = []
        self.max_fragment_bytes = max_fragment_bytes
        self.max_fragment_sets = max_fragment_sets
        self.fragment_timeout = fragment_timeout
        self._frags: dict[tuple, _Datagram] = {}
        self._frag_notes: dict[str, int] = {}  # fragment anomalies so far, by name

    # -- link layer ---------------------------------------------------------------
    def decode(self, ts: float, linktype: int, data: bytes, wirelen: int):
        """Decode one frame; returns a segment tuple or None."""
        self.frames += 1
        n = len(data)
        if linktype == LINKTYPE_ETHERNET and n >= 54 and data[12] == 8 and data[13] == 0 and data[14] == 0x45:
            # Fast path: Ethernet, IPv4 without options, not a fragment, TCP.
            total, frag, proto, sport, dport, seq, ack, doff, flags = _eth_ipv4_tcp(data, 16)
            if proto == 6 and not frag & 0x3FFF and total >= 40:
                hlen = (doff >> 4) * 4
                if 20 <= hlen <= total - 20:
                    end = min(n, 14 + total)
                    start = 34 + hlen
                    self.tcp += 1
                    return (data[26:38], data[26:30], data[30:34], sport, dport, seq, ack, flags,
                            data[start:end] if end > start else b"", total - 20 - hlen)
        if linktype == LINKTYPE_ETHERNET:
            if n < 14:
                self.non_ip += 1
                return None
            etype = (data[12] << 8) | data[13]
            off = 14
            while etype in _VLAN_TYPES:  # 802.1Q, QinQ
                if n < off + 4:
                    self.non_ip += 1
                    return None
                etype = (data[off + 2] << 8) | data[off + 3]
                off += 4
        elif linktype == LINKTYPE_LINUX_SLL:
            if n < 16:
                self.non_ip += 1
                return None
            etype = (data[14] << 8) | data[15]
            off = 16
        elif linktype == LINKTYPE_LINUX_SLL2:
            if n < 20:
                self.non_ip += 1
                return None
            etype = (data[0] << 8) | data[1]
            off = 20
        elif linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
            if n < 4:
                self.non_ip += 1
                return None
            if linktype == LINKTYPE_LOOP:
                family = struct.unpack_from("!I", data)[0]
            else:  # host byte order of the capturing machine: accept either
                family = struct.unpack_from("<I", data)[0]
                if family > 0xFFFF:
                    family = struct.unpack_from(">I", data)[0]
            if family == 2:
                etype = ETH_IPV4
            elif family in _BSD_AF_INET6:
                etype = ETH_IPV6
            else:
                self.non_ip += 1
                return None
            off = 4
        elif linktype in _RAW_LINKTYPES:
            if not n:
                self.non_ip += 1
                return None
            version = data[0] >> 4
            etype = ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else 0
            off = 0
        else:
            self.non_ip += 1
            return None
        if etype == ETH_IPV4:
            return self._ipv4(ts, data, off, wirelen)
        if etype == ETH_IPV6:
            return self._ipv6(ts, data, off, wirelen)
        self.non_ip += 1
        return None

    # -- IPv4 --------------------------------------------------------------------
    def _ipv4(self, ts, data, off, wirelen):
        if len(data) < off + 20:
            return self._bad(ts, "ip_bad_header", "IPv4 header cut short")
        vihl, _tos, total, ident, frag, _ttl, proto, _sum, src, dst = _ipv4(data, off)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or total < ihl:
            return self._bad(ts, "ip_bad_header", f"IPv4 version/ihl/total {vihl >> 4}/{ihl}/{total}")
        if proto != 6:
            self.non_tcp += 1
            return None
        if frag & 0x3FFF:  # MF set or offset > 0: a fragment
            self.fragments += 1
            end = min(len(data), off + total)
            datagram = self._fragment(ts, (src, dst, ident, proto), (frag & 0x1FFF) * 8,
                                      not frag & 0x2000, data[off + ihl:end])
            if datagram is None:
                return None
            return self._tcp(ts, datagram, 0, len(datagram), len(datagram), src, dst)
        # bytes of this IP packet present in the capture, and on the wire
        captured_end = min(len(data), off + total)
        wire_payload = total - ihl
        if captured_end < off + ihl:
            return self._bad(ts, "ip_bad_header", "IPv4 options cut short")
        return self._tcp(ts, data, off + ihl, captured_end, wire_payload, src, dst)

    # -- IPv6 --------------------------------------------------------------------
    def _ipv6(self, ts, data, off, wirelen):
        if len(data) < off + 40:
            return self._bad(ts, "ip_bad_header", "IPv6 header cut short")
        if data[off] >> 4 != 6:
            return self._bad(ts, "ip_bad_header", "IPv6 version field")
        plen = _u16(data, off + 4)[0]
        nxt = data[off + 6]
        src = data[off + 8:off + 24]
        dst = data[off + 24:off + 40]
        p = off + 40
        end_wire = p + plen
        captured_end = min(len(data), end_wire)
        frag_info = None
        while nxt in _IPV6_EXT or nxt == 44:
            if p + 8 > captured_end:
                return self._bad(ts, "ip_bad_header", "IPv6 extension header cut short")
            if nxt == 44:
                nxt2, _res, offflags, ident = _ipv6_frag(data, p)
                frag_info = ((offflags >> 3) * 8, not offflags & 1, ident)
                nxt = nxt2
                p += 8
                continue
            hlen = (data[p + 1] + 2) * 4 if nxt == 51 else (data[p + 1] + 1) * 8
            nxt = data[p]
            p += hlen
        if nxt != 6:
            self.non_tcp += 1
            return None
        if p > captured_end:
            return self._bad(ts, "ip_bad_header", "IPv6 extension headers exceed the packet")
        if frag_info is not None:
            self.fragments += 1
            foff, last, ident = frag_info
            datagram = self._fragment(ts, (src, dst, ident, 6), foff, last, data[p:captured_end])
            if datagram is None:
                return None
            return self._tcp(ts, datagram, 0, len(datagram), len(datagram), src, dst)
        return self._tcp(ts, data, p, captured_end, end_wire - p, src, dst)

    # -- TCP ---------------------------------------------------------------------
    def _tcp(self, ts, data, p, end, wire_len, src, dst):
        """TCP header at ``p``; the IP payload is ``wire_len`` bytes on the wire, captured to ``end``."""
        if end - p < 20:
            return self._bad(ts, "tcp_bad_header", "TCP header cut short")
        sport, dport, seq, ack, doff, flags = _tcp(data, p)
        hlen = (doff >> 4) * 4
        if hlen < 20 or hlen > wire_len:
            return self._bad(ts, "tcp_bad_header", f"data offset {hlen} in a {wire_len}-byte segment")
        self.tcp += 1
        start = p + hlen
        payload = data[start:end] if end > start else b""
        return (src + dst + data[p:p + 4], src, dst, sport, dport, seq, ack, flags, payload, wire_len - hlen)

    def _bad(self, ts, name, detail):
        self.malformed += 1
        # one anomaly per kind and per 1000 occurrences keeps a hostile file's report small
        if self.malformed <= 100 or self.malformed % 1000 == 0:
            self.anomalies.append(Anomaly(ts, None, "", name, f"frame {self.frames}: {detail}", frame=self.frames))
        return None

    # -- fragments ---------------------------------------------------------------
    def _note(self, ts, name, detail):
        """A fragment anomaly; like _bad, the first 100 of a kind and every 1000th after."""
        n = self._frag_notes[name] = self._frag_notes.get(name, 0) + 1
        if n <= 100 or n % 1000 == 0:
            self.anomalies.append(Anomaly(ts, None, "", name, detail if n <= 100 else f"{detail} ({n} so far)",
                                          frame=self.frames))

    def _fragment(self, ts, key, offset, last, chunk):
        table = self._frags
        dg = table.get(key)
        if dg is None:
            if len(table) >= self.max_fragment_sets:
                self._expire(ts, force_one=True)
            dg = table[key] = _Datagram(ts)
        if offset + len(chunk) > self.max_fragment_bytes:
            del table[key]
            self._note(ts, "ip_fragment_too_large", f"fragment at offset {offset} of {len(chunk)} bytes")
            return None
        dg.received += 1
        if dg.received > 2 * (self.max_fragment_bytes // 8 + 1):
            # a datagram has at most one fragment per 8 bytes: this is a flood of copies
            del table[key]
            self._note(ts, "ip_fragment_flood", f"{dg.received} fragments for one datagram")
            return None
        if dg.add(offset, chunk, last):
            self._note(ts, "ip_fragment_overlap", f"fragment at offset {offset} overlaps differing data")
        if ts - dg.first > self.fragment_timeout:
            self._expire(ts)
        whole = dg.assemble()
        if whole is not None:
            table.pop(key, None)
        return whole

    def _expire(self, ts, force_one=False):
        table = self._frags
        if force_one and table:
            # the first inserted is the oldest (but for unsorted captures): O(1), where a
            # search for the minimum made every new datagram of a flood cost the whole table
            del table[next(iter(table))]
            self._note(ts, "ip_fragment_table_full", f"{len(table) + 1} datagrams in reassembly")
        for k in [k for k, d in table.items() if ts - d.first > self.fragment_timeout]:
            del table[k]
            self._note(ts, "ip_fragment_incomplete", "timed out")

    def finish(self):
        """Report datagrams still incomplete at the end of input."""
        if self._frags:
            self.anomalies.append(Anomaly(None, None, "", "ip_fragment_incomplete",
                                          f"{len(self._frags)} datagrams never completed"))
            self._frags.clear()


class _Datagram:
    """Fragments of one IP datagram; the first copy of every byte wins.

    Only the bytes not seen before are kept, as disjoint pieces sorted by
    offset, so a fragment is compared with the few pieces its range covers
    (not with every fragment received: a flood of copies was quadratic), and
    the datagram never holds more than its length. ``within`` counts the bytes
    held below ``total``: the datagram is complete when it equals ``total``.
    The first last-fragment fixes the length; a later one that disagrees is a
    conflict (Linux drops such a datagram; here it is reported and ignored).
    """

    __slots__ = ("first", "starts", "pieces", "total", "within", "received")

    def __init__(self, ts):
        self.first = ts
        self.starts: list[int] = []
        self.pieces: list[bytes] = []
        self.total: int | None = None
        self.within = 0
        self.received = 0

    def add(self, offset: int, chunk: bytes, last: bool) -> bool:
        """Store a fragment; True when it overlapped earlier data with different bytes."""
        conflict = False
        if last:
            if self.total is None:
                self.total = offset + len(chunk)
                self.within = sum(min(len(p), max(0, self.total - s)) for s, p in zip(self.starts, self.pieces))
            elif self.total != offset + len(chunk):
                conflict = True
        end = offset + len(chunk)
        starts, pieces = self.starts, self.pieces
        new = []
        pos = offset
        i = max(0, bisect_right(starts, offset) - 1)
        while i < len(starts) and starts[i] < end:
            s, p = starts[i], pieces[i]
            e = s + len(p)
            if e > pos:
                if s > pos:
                    new.append((pos, chunk[pos - offset:s - offset]))
                lo, hi = max(s, pos), min(e, end)
                if p[lo - s:hi - s] != chunk[lo - offset:hi - offset]:
                    conflict = True
                pos = max(pos, e)
            i += 1
        if pos < end:
            new.append((pos, chunk[pos - offset:]))
        for s, p in new:
            k = bisect_left(starts, s)
            starts.insert(k, s)
            pieces.insert(k, p)
            if self.total is not None:
                self.within += min(len(p), max(0, self.total - s))
        return conflict

    def assemble(self) -> bytes | None:
        if self.total is None or self.within < self.total:
            return None
        out = bytearray(self.total)
        for s, p in zip(self.starts, self.pieces):
            if s >= self.total:
                break
            out[s:s + len(p)] = p[: self.total - s]
        return bytes(out)


class SizingDecoder(Decoder):
    """The same decoder, also telling the IP packet length of each frame it decodes (``ip_len``).

    For the second, light read of a capture that Zeek's conn.log (``orig_ip_bytes``)
    asks for; the first read does not pay for it. ``ip_len`` is None when the frame
    held no IP packet.
    """

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.ip_len: int | None = None

    def decode(self, ts: float, linktype: int, data: bytes, wirelen: int):
        self.ip_len = None
        seg = super().decode(ts, linktype, data, wirelen)
        if seg is not None and self.ip_len is None:
            # only the fast path (Ethernet, IPv4 without options) skips _ipv4: total length at 16
            self.ip_len = (data[16] << 8) | data[17]
        return seg

    def _ipv4(self, ts, data, off, wirelen):
        if len(data) >= off + 4:
            self.ip_len = _u16(data, off + 2)[0]
        return super()._ipv4(ts, data, off, wirelen)

    def _ipv6(self, ts, data, off, wirelen):
        if len(data) >= off + 6:
            self.ip_len = 40 + _u16(data, off + 4)[0]
        return super()._ipv6(ts, data, off, wirelen)
