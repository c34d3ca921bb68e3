"""TCP flow table and stream reassembly (sans-I/O).

:class:`Reassembler` takes decoded segments (see :mod:`maildissect.capture.decode`)
and, per connection, emits ordered events to a listener::

    listener.data(side, data, ts)    # bytes in order, side CLIENT (0) or SERVER (1)
    listener.gap(side, length, ts)   # bytes that were never captured
    listener.close(ts, reason)       # fin | rst | timeout | eof | reused

Rules (docs/architecture.md has the reasoning):

- A connection is a 5-tuple; a new SYN (with a new ISN) after or during a
  connection on the same tuple starts a new connection.
- Client and server are decided by the SYN, else by a well-known server port,
  else by who sent the first packet seen.
- Out-of-order segments are buffered (capped per direction); retransmissions,
  duplicates and overlaps are trimmed, the first copy of a byte wins and a
  differing later copy is a ``tcp_overlap_conflict`` anomaly.
- Missing bytes are never filled in: they become ``gap`` events with their
  length, when the peer acknowledges past a hole, when the out-of-order cap is
  reached, when a snapshot length cut a segment, and at the end.
- Sequence numbers are unwrapped to 64-bit stream offsets, so wraparound is
  seamless.
"""

from __future__ import annotations

import hashlib
import socket
from bisect import insort
from collections import deque

from .config import Limits
from .model import CLIENT, SERVER, SIDE_NAMES, Anomaly, Flow

ANOMALIES = {
    "tcp_gap": "bytes of a stream were never captured; their count is reported as a gap",
    "tcp_overlap_conflict": "a retransmitted or overlapping segment carries bytes that differ from the first copy (kept)",
    "tcp_ooo_limit": "out-of-order data passed the per-direction buffer cap; the hole was declared a gap",
    "tcp_data_before_start": "data before the first sequence number seen on a connection picked up mid-way; dropped",
    "tcp_data_after_fin": "data beyond a direction's FIN; dropped",
    "tcp_port_reuse": "a new SYN on an open connection's 5-tuple; the old connection was closed",
    "tcp_flow_limit": "the flow table was full; the longest-idle connection was closed early",
}

SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10

#: Ports whose owner is taken to be the server when no SYN was seen.
SERVER_PORTS = {25, 465, 587, 2525, 143, 993, 110, 995, 80, 443, 8080, 8000, 8443, 3000}

#: After a hole is acknowledged by the peer, wait this many more packets of the
#: connection (a capture may show an ACK before the segment it covers) before
#: declaring the hole a gap.
ACKED_HOLE_PATIENCE = 8

SWEEP_INTERVAL = 60.0  # seconds of capture time between idle sweeps
RECENT_CHUNKS = 32  # delivered chunks remembered to check retransmitted bytes


def ip_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def _next_boundary(ts: float) -> float:
    """Sweeps happen at fixed capture-time boundaries, so that a shard of the
    connections (--jobs, Dask) sweeps exactly when a whole-capture run does."""
    return (ts // SWEEP_INTERVAL + 1) * SWEEP_INTERVAL


class _Half:
    """One direction of a connection: what has been delivered and what waits."""

    __slots__ = ("started", "base", "next", "fin", "starts", "segs", "ooo_bytes", "recent",
                 "sha", "gap_bytes", "acked_hole_at", "syn_seq")

    def __init__(self):
        self.started = False
        self.base = 0  # sequence number of stream offset 0
        self.next = 0  # next stream offset to deliver
        self.fin = None  # stream offset of the FIN
        self.starts: list[int] = []  # sorted offsets of buffered segments
        self.segs: dict[int, bytes] = {}
        self.ooo_bytes = 0
        self.recent = deque(maxlen=RECENT_CHUNKS)  # (offset, bytes) of recent deliveries
        self.sha = hashlib.sha256()
        self.gap_bytes = 0
        self.acked_hole_at = -1  # packet count when the peer acked past a hole
        self.syn_seq = None

    @property
    def delivered(self) -> int:
        """Bytes delivered so far: the stream position less what was declared missing."""
        return self.next - self.gap_bytes

    def offset(self, seq: int) -> int:
        """Unwrap a 32-bit sequence number to a stream offset near ``next``."""
        delta = ((seq - self.base) - self.next) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        return self.next + delta


class Connection:
    """State of one TCP connection; ``flow`` is its summary record."""

    __slots__ = ("flow", "halves", "listener", "closed", "keys", "syn_ts", "synack_ts",
                 "server_isn", "client_isn", "anomalies", "fins", "rst", "established", "last_frame")

    def __init__(self, flow: Flow, keys: tuple[bytes, bytes]):
        self.flow = flow
        self.halves = (_Half(), _Half())
        self.listener = None
        self.closed = False
        self.keys = keys  # (client->server key, server->client key)
        self.syn_ts = None
        self.synack_ts = None
        self.server_isn = None
        self.client_isn = None
        self.anomalies = 0
        self.fins = 0
        self.rst = False
        self.established = False
        self.last_frame = flow.first_frame  # number of its latest frame (what its close is dated to)

    def stream_offset(self, side: int, seq: int) -> int | None:
        """The stream offset of ``side``'s raw 32-bit sequence number ``seq`` (the
        number of stream bytes before it, unwrapped near what has been delivered),
        or None once the connection is closed or before that side has started.

        Delivered bytes plus gap lengths are the position reached, so a consumer
        that counts them can place anything located by sequence number (tshark's
        decrypted TLS records, for one) without reading the reassembler's state."""
        halves = self.halves
        if halves is None or not halves[side].started:
            return None
        return halves[side].offset(seq)


class Reassembler:
    """The flow table. Feed it with :meth:`packet`; call :meth:`finish` at the end.

    ``on_open(conn)`` returns the listener for a new connection (or None);
    ``on_close(conn, listener)`` is called once per connection after its close
    event, with ``conn.flow`` final. Anomalies are appended to ``anomalies``.
    """

    def __init__(self, limits: Limits | None = None, on_open=None, on_close=None,
                 server_ports: set[int] | None = None):
        self.limits = limits or Limits()
        self.on_open = on_open
        self.on_close = on_close
        self.server_ports = server_ports or SERVER_PORTS
        self.table: dict[bytes, tuple[Connection, int]] = {}
        self.anomalies: list[Anomaly] = []
        self.next_id = 0  # like Wireshark's tcp.stream
        self.frame = 0  # number of the frame being processed (set by the caller)
        self.open = 0
        self._sweep_at = float("inf")  # capture time of the next idle sweep
        self.max_ooo_bytes = self.limits.max_ooo_bytes
        self.max_ooo_segments = self.limits.max_ooo_segments

    def connection(self, key: bytes):
        """The open connection a segment with flow key ``key`` belongs to, or None."""
        entry = self.table.get(key)
        if entry is None or entry[0].closed:
            return None
        return entry[0]

    # -- entry point ---------------------------------------------------------------
    def packet(self, ts: float, seg) -> None:
        """Process one decoded segment tuple."""
        key, src, dst, sport, dport, seq, ack, flags, payload, seglen = seg
        entry = self.table.get(key)
        if entry is None:
            conn, side = self._new(ts, key, src, dst, sport, dport, flags)
        else:
            conn, side = entry
            if flags & SYN and not flags & (ACK | RST) and side == CLIENT:
                # A retried SYN with the same ISN after a refusal is the same attempt (as
                # Wireshark counts streams); a new ISN, or a SYN after a real
                # connection ended, starts a new connection.
                isn = conn.client_isn
                same_isn = isn is not None and seq == isn
                if (not same_isn or conn.established) if conn.closed else (isn is not None and not same_isn):
                    if not conn.closed:
                        self._anomaly(conn, ts, "", "tcp_port_reuse", f"new ISN {seq}")
                        self._close(conn, ts, "reused")
                    self._drop(conn)
                    conn, side = self._new(ts, key, src, dst, sport, dport, flags)
        flow = conn.flow
        flow.packets += 1
        conn.last_frame = self.frame
        if ts > flow.end:
            flow.end = ts
        if conn.closed:
            return
        h = conn.halves[side]
        if flags & 0x07 == 0 and h.started:
            # the common case: data or a bare ACK on an established connection
            if flags & ACK:
                other = conn.halves[1 - side]
                if other.starts or not conn.established or (
                        seglen and ((ack - other.base) & 0xFFFFFFFF) != (other.next & 0xFFFFFFFF)):
                    self._ack(conn, side, ts, ack, seglen > 0)
            if seglen:
                if ((seq - h.base) & 0xFFFFFFFF) == (h.next & 0xFFFFFFFF) and not h.starts \
                        and h.fin is None and len(payload) == seglen:
                    self._deliver(conn, side, h, ts, payload)  # in order, nothing pending
                else:
                    self._data(conn, side, h, ts, h.offset(seq), payload, seglen)
        else:
            if flags & SYN:
                self._syn(conn, side, h, ts, seq, flags)
            elif not h.started:
                h.started = True
                h.base = seq
            if flags & ACK:
                self._ack(conn, side, ts, ack, seglen > 0 and not flags & SYN)
            if seglen:
                off = h.offset(seq + 1 if flags & SYN else seq)
                self._data(conn, side, h, ts, off, payload, seglen)
            if flags & FIN:
                off = h.offset(seq + 1 if flags & SYN else seq) + seglen
                if h.fin is None:
                    h.fin = off
                    conn.fins += 1
                self._maybe_finish(conn, ts)
            if flags & RST:
                conn.rst = True
                self._close(conn, ts, "rst")
        if ts > self._sweep_at:
            self.sweep(ts)

    # -- connection life ---------------------------------------------------------
    def _new(self, ts, key, src, dst, sport, dport, flags):
        rkey = dst + src + key[-2:] + key[-4:-2]
        if flags & SYN and not flags & ACK:
            client_first, by = True, "syn"
        elif flags & SYN and flags & ACK:
            client_first, by = False, "syn"
        elif dport in self.server_ports and sport not in self.server_ports:
            client_first, by = True, "port"
        elif sport in self.server_ports and dport not in self.server_ports:
            client_first, by = False, "port"
        elif dport < 1024 <= sport:
            client_first, by = True, "port"
        elif sport < 1024 <= dport:
            client_first, by = False, "port"
        else:
            client_first, by = True, "first"
        if client_first:
            cip, cport, sip, sport_, ckey, skey = src, sport, dst, dport, key, rkey
        else:
            cip, cport, sip, sport_, ckey, skey = dst, dport, src, sport, rkey, key
        flow = Flow(self.next_id, ip_text(cip), cport, ip_text(sip), sport_, ts, ts, role_by=by,
                    first_frame=self.frame, merged_frame=self.frame)
        self.next_id += 1
        conn = Connection(flow, (ckey, skey))
        if len(self.table) >= 2 * self.limits.max_flows:
            self._evict(ts)
        self.table[ckey] = (conn, CLIENT)
        self.table[skey] = (conn, SERVER)
        if self._sweep_at == float("inf"):
            self._sweep_at = _next_boundary(ts)
        self.open += 1
        if self.on_open is not None:
            conn.listener = self.on_open(conn)
        return conn, (CLIENT if client_first else SERVER)

    def _syn(self, conn, side, h, ts, seq, flags):
        if h.syn_seq is None:
            h.syn_seq = seq
            if not h.started or h.next == 0:
                h.started = True
                h.base = (seq + 1) & 0xFFFFFFFF
                h.next = 0
        if side == CLIENT and not flags & ACK:
            conn.flow.syn_seen = True
            if conn.client_isn is None:
                conn.client_isn = seq
            if conn.syn_ts is None:
                conn.syn_ts = ts
        elif side == SERVER and flags & ACK:
            if conn.synack_ts is None:
                conn.synack_ts = ts
                conn.server_isn = seq

    def _ack(self, conn, side, ts, ack, answering=False):
        """The peer's acknowledgement: completes the handshake, and tells of lost bytes.

        ``answering``: this packet carries data, so the peer has seen what it
        acknowledges; a hole below the acknowledgement can no longer be filled
        in this capture and is declared at once (as Zeek's "ack above hole"),
        which keeps the two directions' events in wire order. A bare ACK past
        a hole waits a few packets first, as a capture may show the ACK before
        the segment it covers.
        """
        if not conn.established and side == CLIENT and conn.server_isn is not None \
                and ack == (conn.server_isn + 1) & 0xFFFFFFFF:
            conn.established = True
            if conn.syn_ts is not None:
                conn.flow.handshake_rtt = ts - conn.syn_ts
        other = conn.halves[1 - side]
        if not other.started or (not other.starts and not answering):
            return
        acked = other.offset(ack)
        if other.fin is not None and acked > other.fin:
            acked = other.fin
        if acked <= other.next:
            return
        if answering:
            while other.next < acked:
                if other.starts and other.starts[0] <= acked:
                    self._skip_hole(conn, 1 - side, other, ts)
                else:
                    self._gap(conn, 1 - side, other, ts, acked - other.next)
                    other.next = acked
        elif other.acked_hole_at < 0:
            other.acked_hole_at = conn.flow.packets
        elif conn.flow.packets - other.acked_hole_at >= ACKED_HOLE_PATIENCE:
            self._skip_hole(conn, 1 - side, other, ts)

    def _maybe_finish(self, conn, ts):
        if conn.closed:
            return
        c, s = conn.halves
        if conn.fins == 2 and c.next >= (c.fin or 0) and s.next >= (s.fin or 0):
            self._close(conn, ts, "fin")

    def _close(self, conn, ts, reason):
        """Flush buffered data (with gaps), emit close, report the flow.

        What the close produces (gaps, the dissector's last records) is dated to the
        connection's latest frame, not to the frame being read when an idle sweep, a
        full table or the end of the input closes it.
        """
        if conn.closed:
            return
        frame = self.frame
        self.frame = conn.last_frame
        try:
            self._closing(conn, ts, reason)
        finally:
            self.frame = frame

    def _closing(self, conn, ts, reason):
        for side in (CLIENT, SERVER):
            h = conn.halves[side]
            while h.starts:
                self._skip_hole(conn, side, h, ts, reason="end")
            if h.fin is not None and h.fin > h.next and reason != "rst":
                self._gap(conn, side, h, ts, h.fin - h.next)
                h.next = h.fin
        conn.closed = True
        self.open -= 1
        flow = conn.flow
        c, s = conn.halves
        flow.bytes_client, flow.bytes_server = c.delivered, s.delivered
        flow.client_sha256, flow.server_sha256 = c.sha.hexdigest(), s.sha.hexdigest()
        flow.gap_bytes = c.gap_bytes + s.gap_bytes
        if conn.rst and not conn.established and conn.synack_ts is None and conn.syn_ts is not None:
            flow.close = "refused"
        elif conn.rst:
            flow.close = "rst"
        elif reason in ("fin", "timeout"):
            flow.close = reason
        elif conn.fins:
            flow.close = "fin"
        elif conn.syn_ts is not None and conn.synack_ts is None and not (c.delivered or s.delivered):
            flow.close = "unanswered"
        else:
            flow.close = "open"
        listener = conn.listener
        conn.listener = None
        if listener is not None:
            listener.close(ts, reason)
        if self.on_close is not None:
            self.on_close(conn, listener)
        # what stays in the table until the next sweep is a stub that absorbs trailing
        # packets: the per-direction state (hashes, buffers) is released now
        conn.halves = None

    def _drop(self, conn):
        for k in conn.keys:
            if self.table.get(k, (None,))[0] is conn:
                del self.table[k]

    def _evict(self, ts):
        """Close the longest-idle connection to make room (flow table full)."""
        oldest = min((c for c, side in self.table.values() if side == CLIENT), key=lambda c: c.flow.end)
        if not oldest.closed:
            self._anomaly(oldest, ts, "", "tcp_flow_limit", f"{self.limits.max_flows} flows")
            self._close(oldest, ts, "timeout")
        self._drop(oldest)

    def sweep(self, now: float) -> None:
        """Close connections idle longer than the idle timeout; forget closed stubs."""
        self._sweep_at = _next_boundary(now)
        timeout = self.limits.idle_timeout
        for conn, side in list(self.table.values()):
            if side != CLIENT:
                continue
            idle = now - conn.flow.end
            if conn.closed:
                if idle > 120.0:
                    self._drop(conn)
            elif idle > timeout:
                self._close(conn, now, "timeout")
                self._drop(conn)

    def finish(self, ts: float | None = None) -> None:
        """End of input: close every open connection (reason ``eof``)."""
        for conn, side in list(self.table.values()):
            if side == CLIENT and not conn.closed:
                self._close(conn, conn.flow.end if ts is None else max(ts, conn.flow.end), "eof")
        self.table.clear()

    # -- data --------------------------------------------------------------------
    def _data(self, conn, side, h, ts, off, payload, seglen):
        end = off + len(payload)
        truncated = len(payload) < seglen  # cut by the capture's snapshot length
        if h.fin is not None and off >= h.fin:
            if off > h.fin or payload:
                self._anomaly(conn, ts, SIDE_NAMES[side], "tcp_data_after_fin", f"{seglen} bytes")
            return
        nxt = h.next
        if off > nxt:
            self._store(conn, side, h, ts, off, payload)
        else:
            if off < nxt:  # starts with bytes already delivered: a retransmission
                if end <= nxt:
                    self._check_recent(conn, side, h, ts, off, payload)
                    return
                self._check_recent(conn, side, h, ts, off, payload[: nxt - off])
                payload = payload[nxt - off:]
                off = nxt
            if h.starts and h.starts[0] < end:
                # a buffered (earlier received) copy covers part of this one: it wins
                first = h.starts[0]
                self._check(conn, side, ts, off, payload, first, h.segs[first])
                payload = payload[: first - off]
            if payload:
                self._deliver(conn, side, h, ts, payload)
        if truncated and off + seglen > h.next >= end:
            # the snapshot length cut this segment: its tail was never captured
            missing = off + seglen - h.next
            if h.starts and h.starts[0] < h.next + missing:
                missing = h.starts[0] - h.next
            if missing > 0:
                self._gap(conn, side, h, ts, missing)
                h.next += missing
        if h.starts:
            self._drain(conn, side, h, ts)
        if h.fin is not None and h.next >= h.fin and conn.fins == 2:
            self._maybe_finish(conn, ts)

    def _deliver(self, conn, side, h, ts, data):
        h.recent.append((h.next, data))
        h.next += len(data)
        h.sha.update(data)
        if h.acked_hole_at >= 0 and not h.starts:
            h.acked_hole_at = -1
        listener = conn.listener
        if listener is not None:
            listener.data(side, data, ts)

    def _gap(self, conn, side, h, ts, length):
        h.gap_bytes += length
        conn.flow.gaps += 1
        self._anomaly(conn, ts, SIDE_NAMES[side], "tcp_gap", f"{length} bytes missing at stream offset {h.next}")
        if conn.listener is not None:
            conn.listener.gap(side, length, ts)

    def _store(self, conn, side, h, ts, off, payload):
        """Buffer an out-of-order segment, trimmed against what is already buffered."""
        end = off + len(payload)
        pieces = [(off, payload)]
        if h.starts:
            for s in list(h.starts):
                if s >= end:
                    break
                stored = h.segs[s]
                s_end = s + len(stored)
                if s_end <= off:
                    continue
                nxt_pieces = []
                for po, pd in pieces:
                    pe = po + len(pd)
                    lo, hi = max(po, s), min(pe, s_end)
                    if lo >= hi:
                        nxt_pieces.append((po, pd))
                        continue
                    if pd[lo - po:hi - po] != stored[lo - s:hi - s]:
                        self._anomaly(conn, ts, SIDE_NAMES[side], "tcp_overlap_conflict",
                                      f"{hi - lo} bytes at stream offset {lo} differ")
                    if po < lo:
                        nxt_pieces.append((po, pd[: lo - po]))
                    if hi < pe:
                        nxt_pieces.append((hi, pd[hi - po:]))
                pieces = nxt_pieces
                if not pieces:
                    return
        for po, pd in pieces:
            if pd:
                h.segs[po] = pd
                insort(h.starts, po)
                h.ooo_bytes += len(pd)
        if h.ooo_bytes > self.max_ooo_bytes or len(h.starts) > self.max_ooo_segments:
            self._anomaly(conn, ts, SIDE_NAMES[side], "tcp_ooo_limit",
                          f"{h.ooo_bytes} bytes in {len(h.starts)} segments buffered")
            while h.starts and (h.ooo_bytes > self.max_ooo_bytes // 2
                                or len(h.starts) > self.max_ooo_segments // 2):
                self._skip_hole(conn, side, h, ts)

    def _drain(self, conn, side, h, ts):
        """Deliver buffered segments that have become contiguous."""
        starts, segs = h.starts, h.segs
        while starts and starts[0] <= h.next:
            s = starts.pop(0)
            data = segs.pop(s)
            h.ooo_bytes -= len(data)
            end = s + len(data)
            if end <= h.next:
                self._check_recent(conn, side, h, ts, s, data)
                continue
            if s < h.next:
                self._check_recent(conn, side, h, ts, s, data[: h.next - s])
                data = data[h.next - s:]
            self._deliver(conn, side, h, ts, data)

    def _skip_hole(self, conn, side, h, ts, reason="acked"):
        """Declare the hole before the first buffered segment a gap and deliver on."""
        if not h.starts:
            return
        first = h.starts[0]
        if first > h.next:
            self._gap(conn, side, h, ts, first - h.next)
            h.next = first
        h.acked_hole_at = -1
        self._drain(conn, side, h, ts)

    # -- overlap checks -------------------------------------------------------------
    def _check(self, conn, side, ts, off, data, s, stored):
        lo, hi = max(off, s), min(off + len(data), s + len(stored))
        if lo < hi and data[lo - off:hi - off] != stored[lo - s:hi - s]:
            self._anomaly(conn, ts, SIDE_NAMES[side], "tcp_overlap_conflict",
                          f"{hi - lo} bytes at stream offset {lo} differ")

    def _check_recent(self, conn, side, h, ts, off, data):
        """Compare retransmitted bytes with the delivered copy, when still remembered."""
        end = off + len(data)
        for s, chunk in reversed(h.recent):
            s_end = s + len(chunk)
            if s_end <= off:
                break
            if s >= end:
                continue
            lo, hi = max(off, s), min(end, s_end)
            if data[lo - off:hi - off] != chunk[lo - s:hi - s]:
                self._anomaly(conn, ts, SIDE_NAMES[side], "tcp_overlap_conflict",
                              f"{hi - lo} retransmitted bytes at stream offset {lo} differ")
                return

    def _anomaly(self, conn, ts, side, name, detail):
        conn.anomalies += 1
        # as for the dissectors' records (pipeline.emit): a connection of a million
        # conflicting retransmissions is counted, not listed a million times
        cap = self.limits.max_records
        if conn.anomalies <= cap:
            self.anomalies.append(Anomaly(ts, conn.flow.flow_id, side, name, detail, frame=self.frame))
        elif conn.anomalies == cap + 1:
            self.anomalies.append(Anomaly(ts, conn.flow.flow_id, side, "session_records_capped",
                                          f"more than {cap} TCP anomalies: the rest are counted, not listed",
                                          frame=self.frame))
