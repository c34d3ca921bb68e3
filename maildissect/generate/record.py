"""Synthetic capture: a recording TCP relay in front of each server, and pcap synthesis.

Without privileges nothing can sniff the loopback interface, so in synthetic
mode every service is fronted by a :class:`RecordingRelay`: clients connect to
the relay, the relay connects to the real server (binding the client's address,
so the server sees the right peer) and forwards bytes both ways, noting each
chunk with the time it arrived, and each FIN or RST. :func:`synthesize` then
writes an Ethernet/IPv4/TCP pcap from those notes: the three-way handshake,
sequence and acknowledgement numbers, MSS segmentation, delayed ACKs, FIN and
RST teardowns, refused connections as SYN answered by RST, and optional
impairments (:mod:`.impair`). The pcap shows the services' logical (standard)
ports, whatever port the relay really listened on. Frames are packed with
struct and written with scapy's RawPcapWriter.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from .impair import Impairments

C, S = 0, 1  # client, server


@dataclass
class RecordedConnection:
    """What one relay connection saw: events ``(ts, side, kind, data)``.

    kind is "data", "fin" or "rst"; ``refused`` connections have no events.
    """

    index: int
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int  # logical port
    start: float
    service: str = ""
    refused: bool = False
    events: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, side: int, kind: str, data: bytes = b"") -> None:
        with self._lock:
            self.events.append((time.time(), side, kind, data))

    def stream(self, side: int) -> bytes:
        """All bytes one side sent, in order (what a reassembler must reproduce)."""
        return b"".join(d for _, s, k, d in self.events if s == side and k == "data")

    def close_kind(self) -> str:
        kinds = [k for _, _, k, _ in self.events if k != "data"]
        if self.refused:
            return "refused"
        if "rst" in kinds:
            return "rst"
        if "fin" in kinds:
            return "fin"
        return "open"

    def summary(self) -> dict:
        cs, ss = self.stream(C), self.stream(S)
        return {"bytes_client": len(cs), "bytes_server": len(ss),
                "client_sha256": hashlib.sha256(cs).hexdigest(),
                "server_sha256": hashlib.sha256(ss).hexdigest(),
                "chunks_client": sum(1 for e in self.events if e[1] == C and e[2] == "data"),
                "chunks_server": sum(1 for e in self.events if e[1] == S and e[2] == "data"),
                "close": self.close_kind()}


class Recorder:
    """Every connection the relays saw, in order of arrival."""

    def __init__(self):
        self._lock = threading.Lock()
        self.connections: list[RecordedConnection] = []

    def open(self, client_ip, client_port, server_ip, server_port, service="") -> RecordedConnection:
        with self._lock:
            conn = RecordedConnection(len(self.connections) + 1, client_ip, client_port,
                                      server_ip, server_port, time.time(), service)
            self.connections.append(conn)
            return conn

    def refused(self, client_ip, client_port, server_ip, server_port, ts) -> None:
        with self._lock:
            conn = RecordedConnection(len(self.connections) + 1, client_ip, client_port,
                                      server_ip, server_port, ts, refused=True)
            self.connections.append(conn)

    def find(self, client_ip: str, client_port: int) -> RecordedConnection | None:
        with self._lock:
            for c in self.connections:
                if c.client_ip == client_ip and c.client_port == client_port:
                    return c
        return None


# --------------------------------------------------------------------------
# The relay (runs on the lab's asyncio loop)

class _Side(asyncio.Protocol):
    """One leg of a relayed connection; ``peer`` is the other leg."""

    def __init__(self, pipe: "_Pipe", side: int):
        self.pipe = pipe
        self.side = side
        self.transport = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.pipe.conn.add(self.side, "data", bytes(data))
        self.pipe.forward(self.side, data)

    def eof_received(self):
        self.eof = True
        self.pipe.conn.add(self.side, "fin")
        self.pipe.half_close(self.side)
        return True  # keep the other direction open (TCP half-close)

    def connection_lost(self, exc):
        self.lost = True
        self.pipe.lost(self.side, exc)

    # flow control: when the other leg's send buffer fills, stop reading this one
    def pause_writing(self):
        other = self.pipe.legs[1 - self.side]
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self):
        other = self.pipe.legs[1 - self.side]
        if other is not None and other.transport is not None:
            other.transport.resume_reading()


class _Pipe:
    def __init__(self, relay: "RecordingRelay", conn: RecordedConnection):
        self.relay = relay
        self.conn = conn
        self.legs: list[_Side | None] = [None, None]
        self.pending: list[bytes] = []
        self.pending_eof = False
        self.closed = False

    def forward(self, side, data):
        other = self.legs[1 - side]
        if other is None or other.transport is None:
            self.pending.append(bytes(data))  # backend still connecting
        elif not other.transport.is_closing():
            other.transport.write(data)

    def half_close(self, side):
        other = self.legs[1 - side]
        if other is None or other.transport is None:
            self.pending_eof = True
        elif not other.transport.is_closing() and other.transport.can_write_eof():
            other.transport.write_eof()
        if all(leg is not None and leg.eof for leg in self.legs):
            self.close()

    def lost(self, side, exc):
        if self.closed:
            return
        if exc is not None:
            # The peer reset the connection (or it broke): pass the RST on.
            self.conn.add(side, "rst")
            other = self.legs[1 - side]
            if other is not None and other.transport is not None:
                other.transport.abort()
            self.closed = True
            self.relay.pipes.discard(self)
            return
        leg = self.legs[side]
        if leg is not None and not leg.eof:
            # Closed without a FIN we saw (e.g. transport closed after an error).
            self.conn.add(side, "fin")
            leg.eof = True
            self.half_close(side)

    def close(self):
        if self.closed:
            return
        self.closed = True
        for leg in self.legs:
            if leg is not None and leg.transport is not None:
                leg.transport.close()
        self.relay.pipes.discard(self)

    def abort(self):
        self.closed = True
        for leg in self.legs:
            if leg is not None and leg.transport is not None:
                leg.transport.abort()


class RecordingRelay:
    """Listens on a free port of the server's address and relays to the real server."""

    def __init__(self, loop, recorder: Recorder, ip: str, logical_port: int,
                 backend: tuple[str, int], service: str):
        self.loop = loop
        self.recorder = recorder
        self.ip = ip
        self.logical_port = logical_port
        self.backend = backend
        self.service = service
        self.server = None
        self.port = None
        self.pipes: set[_Pipe] = set()

    async def start(self, sock: socket.socket) -> None:
        self.port = sock.getsockname()[1]
        self.server = await self.loop.create_server(self._accept, sock=sock)

    def _accept(self):
        return _Accepted(self)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for pipe in list(self.pipes):
            pipe.abort()
        self.pipes.clear()


class _Accepted(_Side):
    """The client leg; it opens the server leg when the client connects."""

    def __init__(self, relay: RecordingRelay):
        self.relay = relay
        super().__init__(None, C)

    def connection_made(self, transport):
        self.transport = transport
        ip, port = transport.get_extra_info("peername")[:2]
        conn = self.relay.recorder.open(ip, port, self.relay.ip, self.relay.logical_port,
                                        self.relay.service)
        self.pipe = _Pipe(self.relay, conn)
        self.pipe.legs[C] = self
        self.relay.pipes.add(self.pipe)
        transport.pause_reading()
        self.relay.loop.create_task(self._connect(ip))

    async def _connect(self, client_ip):
        try:
            _, leg = await self.relay.loop.create_connection(
                lambda: _Side(self.pipe, S), host=self.relay.backend[0],
                port=self.relay.backend[1], local_addr=(client_ip, 0))
        except OSError:
            self.pipe.conn.add(S, "rst")
            self.transport.abort()
            self.pipe.closed = True
            return
        self.pipe.legs[S] = leg
        for data in self.pipe.pending:
            leg.transport.write(data)
        self.pipe.pending.clear()
        if self.pipe.pending_eof:
            leg.transport.write_eof()
        if not self.transport.is_closing():
            self.transport.resume_reading()


# --------------------------------------------------------------------------
# pcap synthesis

def _mac(ip: str) -> bytes:
    """A locally administered MAC per host: 02:00 + the IPv4 address."""
    return bytes([0x02, 0x00]) + socket.inet_aton(ip)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}


class _Frames:
    """Builds Ethernet/IPv4/TCP frames; keeps per-host IP ids.

    Headers are packed with struct: scapy's layer objects cost about 3 ms per
    packet here, which would make synthesis the slowest part of a run. The
    frames are checked against scapy's dissection in the tests.
    """

    def __init__(self):
        self.ipid: dict[str, int] = {}
        self.out: list[tuple[int, int, bytes]] = []  # (time_us, order, frame)
        self._addr: dict[str, bytes] = {}

    def _a(self, ip):
        a = self._addr.get(ip)
        if a is None:
            a = self._addr[ip] = socket.inet_aton(ip)
        return a

    def add(self, t_us, src, sport, dst, dport, flags, seq, ack, payload=b"", mss=None):
        ident = self.ipid.get(src, 0x1000)
        self.ipid[src] = (ident + 1) & 0xFFFF
        s, d = self._a(src), self._a(dst)
        options = struct.pack("!BBH", 2, 4, mss) if mss else b""
        off = (20 + len(options)) // 4
        bits = 0
        for ch in flags:
            bits |= _FLAGS[ch]
        ack = ack & 0xFFFFFFFF if "A" in flags else 0
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, off << 4, bits,
                          65535, 0, 0) + options
        seg = tcp + payload
        pseudo = s + d + struct.pack("!BBH", 0, 6, len(seg))
        csum = _checksum(pseudo + seg)
        seg = seg[:16] + struct.pack("!H", csum) + seg[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), ident, 0x4000, 64, 6, 0, s, d)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        frame = _mac(dst) + _mac(src) + b"\x08\x00" + ip + seg
        self.out.append((t_us, len(self.out), frame))


def _synth_connection(fr: _Frames, conn: RecordedConnection, imp: Impairments, rng: random.Random):
    mss = imp.mss
    cip, cport, sip, sport = conn.client_ip, conn.client_port, conn.server_ip, conn.server_port
    ends = {C: (cip, cport, sip, sport), S: (sip, sport, cip, cport)}
    isn = {C: rng.getrandbits(32), S: rng.getrandbits(32)}
    nxt = {C: isn[C] + 1, S: isn[S] + 1}
    t = int(conn.start * 1_000_000)

    def emit(side, flags, seq, ack, payload=b"", mss_option=None):
        src, sp, dst, dp = ends[side]
        fr.add(t, src, sp, dst, dp, flags, seq, ack, payload, mss_option)

    emit(C, "S", isn[C], 0, mss_option=mss)
    if conn.refused:
        t += 40
        emit(S, "RA", 0, isn[C] + 1)
        return
    t += 40
    emit(S, "SA", isn[S], isn[C] + 1, mss_option=mss)
    t += 40
    emit(C, "A", isn[C] + 1, isn[S] + 1)

    events = conn.events
    closed = {C: False, S: False}
    for i, (ts, side, kind, data) in enumerate(events):
        other = 1 - side
        t = max(t + 1, int(ts * 1_000_000))
        if kind == "data":
            segs = []
            for off in range(0, len(data), mss):
                payload = data[off:off + mss]
                last = off + mss >= len(data)
                segs.append((nxt[side] + off, payload, "PA" if last else "A"))
            nxt[side] += len(data)
            arrivals, lost = imp.schedule(segs)
            sizes = {seq: len(payload) for seq, payload, _ in segs}
            received: set[int] = set()
            expected = segs[0][0]  # receiver's cumulative ACK point
            acked = expected
            dupacks = since_ack = 0
            for (seq, payload, flags), is_dup in arrivals:
                emit(side, flags, seq, nxt[other], payload)
                t += 1
                if is_dup:
                    emit(other, "A", nxt[other], expected)  # a duplicate is ACKed again
                    acked = expected
                    t += 1
                    continue
                received.add(seq)
                while expected in received:
                    expected += sizes[expected]
                if expected < seq:
                    # A hole before this segment: duplicate ACK (fast-retransmit hint).
                    if dupacks < 3:
                        emit(other, "A", nxt[other], expected)
                        acked = expected
                        t += 1
                        dupacks += 1
                    continue
                since_ack += 1
                if since_ack >= 2:  # delayed ACK: every second segment
                    emit(other, "A", nxt[other], expected)
                    acked = expected
                    t += 1
                    since_ack = 0
            if lost:
                # Retransmit after a pause, but before the next event on this
                # connection, so that no reply precedes the bytes it answers.
                nxt_ts = int(events[i + 1][0] * 1_000_000) if i + 1 < len(events) else t + 400_000
                t = max(t + 1, min(t + 200_000, (t + nxt_ts) // 2))
                for seq, payload, flags in sorted(lost):
                    emit(side, flags, seq, nxt[other], payload)
                    t += 1
            if acked != nxt[side]:
                t += 20
                emit(other, "A", nxt[other], nxt[side])
        elif kind == "fin":
            if closed[side]:
                continue
            emit(side, "FA", nxt[side], nxt[other])
            nxt[side] += 1
            closed[side] = True
            t += 20
            emit(other, "A", nxt[other], nxt[side])
        elif kind == "rst":
            emit(side, "RA", nxt[side], nxt[other])
            return


def synthesize(connections: list[RecordedConnection], path: str, imp: Impairments,
               seed: int = 0) -> dict:
    """Write the pcap for ``connections``; returns counts for the manifest."""
    from scapy.utils import RawPcapWriter

    fr = _Frames()
    rng = random.Random(f"isn:{seed}")
    for conn in connections:
        _synth_connection(fr, conn, imp, rng)
    fr.out.sort(key=lambda x: (x[0], x[1]))
    writer = RawPcapWriter(path, linktype=1, snaplen=262144, sync=False)
    writer.write_header(None)  # a capture with no packets is still a valid pcap
    try:
        for t_us, _, frame in fr.out:
            writer.write_packet(frame, sec=t_us // 1_000_000, usec=t_us % 1_000_000)
    finally:
        writer.close()
    return {"packets": len(fr.out), "connections": len(connections)}
