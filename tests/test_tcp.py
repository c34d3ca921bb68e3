"""TCP reassembly: ordering, retransmission, overlap, gaps, wraparound, connection life."""

import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maildissect.config import Limits
from maildissect.model import CLIENT, SERVER
from maildissect.tcp import ACK, FIN, RST, SYN, Reassembler

CIP, SIP = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
PSH = 0x08


def segment(frm, seq, ack=0, flags=ACK | PSH, payload=b"", cport=40000, sport=25, seglen=None):
    if frm == "c":
        src, dst, sp, dp = CIP, SIP, cport, sport
    else:
        src, dst, sp, dp = SIP, CIP, sport, cport
    key = src + dst + struct.pack("!HH", sp, dp)
    return (key, src, dst, sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, payload,
            len(payload) if seglen is None else seglen)


class Recorder:
    def __init__(self):
        self.events = []

    def data(self, side, data, ts):
        self.events.append(("data", side, data))

    def gap(self, side, n, ts):
        self.events.append(("gap", side, n))

    def close(self, ts, reason):
        self.events.append(("close", reason))

    def stream(self, side, gap_fill=None):
        out = bytearray()
        for e in self.events:
            if e[0] == "data" and e[1] == side:
                out += e[2]
            elif e[0] == "gap" and e[1] == side and gap_fill is not None:
                out += gap_fill * e[2]
        return bytes(out)

    def gaps(self, side):
        return [e[2] for e in self.events if e[0] == "gap" and e[1] == side]


def run(segments, limits=None):
    recs = []
    closed = []

    def on_open(conn):
        r = Recorder()
        recs.append(r)
        return r
    ra = Reassembler(limits or Limits(), on_open=on_open, on_close=lambda c, l: closed.append(c.flow))
    for i, s in enumerate(segments):
        ra.packet(float(i), s)
    ra.finish()
    return recs, closed, ra


def handshake(cisn, sisn):
    return [segment("c", cisn, 0, SYN), segment("s", sisn, cisn + 1, SYN | ACK), segment("c", cisn + 1, sisn + 1, ACK)]


def cut(data, sizes):
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append((i, data[i:i + n]))
        i += n
        k += 1
    return out


def test_in_order_both_directions_and_fin():
    segs = handshake(100, 900)
    segs += [segment("c", 101, 901, payload=b"EHLO x\r\n"), segment("s", 901, 109, payload=b"250 ok\r\n"),
             segment("c", 109, 909, FIN | ACK), segment("s", 909, 110, FIN | ACK), segment("c", 110, 910, ACK)]
    recs, flows, _ = run(segs)
    r = recs[0]
    assert r.stream(CLIENT) == b"EHLO x\r\n" and r.stream(SERVER) == b"250 ok\r\n"
    assert r.events[-1] == ("close", "fin")
    f = flows[0]
    assert (f.close, f.packets, f.syn_seen, f.role_by, f.gaps) == ("fin", 8, True, "syn", 0)
    assert f.handshake_rtt == 2.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=1, max_size=3000), sizes=st.lists(st.integers(1, 400), min_size=1, max_size=8),
       seed=st.integers(0, 2**32), isn=st.integers(0, 2**32 - 1), dup=st.floats(0, 0.5),
       overlap=st.floats(0, 0.5))
def test_any_order_duplication_overlap_gives_original_bytes(data, sizes, seed, isn, dup, overlap):
    rng = random.Random(seed)
    pieces = cut(data, sizes)
    # overlapping re-sends: a segment spanning neighbours, with the same bytes
    extra = []
    for off, p in pieces:
        if rng.random() < overlap:
            a = max(0, off - rng.randint(0, 50))
            b = min(len(data), off + len(p) + rng.randint(0, 50))
            extra.append((a, data[a:b]))
    pieces += extra
    pieces += [pieces[rng.randrange(len(pieces))] for _ in range(int(len(pieces) * dup))]
    rng.shuffle(pieces)
    segs = handshake(isn, 5)
    segs += [segment("c", isn + 1 + off, 6, payload=p) for off, p in pieces]
    segs.append(segment("c", isn + 1 + len(data), 6, FIN | ACK))
    segs.append(segment("s", 6, isn + 2 + len(data), FIN | ACK))
    recs, flows, ra = run(segs)
    r = recs[0]
    assert r.stream(CLIENT) == data
    assert r.gaps(CLIENT) == []
    assert not [a for a in ra.anomalies if a.name == "tcp_overlap_conflict"]
    assert flows[0].close == "fin"


@settings(max_examples=150, deadline=None)
@given(data=st.binary(min_size=50, max_size=3000), sizes=st.lists(st.integers(1, 300), min_size=1, max_size=6),
       seed=st.integers(0, 2**32), drop=st.floats(0.05, 0.5))
def test_dropped_segments_become_gaps_where_they_were(data, sizes, seed, drop):
    rng = random.Random(seed)
    pieces = cut(data, sizes)
    kept = [p for p in pieces if rng.random() >= drop]
    order = list(kept)
    rng.shuffle(order)
    isn = rng.randrange(2**32)
    segs = handshake(isn, 5)
    segs += [segment("c", isn + 1 + off, 6, payload=p) for off, p in order]
    segs.append(segment("c", isn + 1 + len(data), 6, FIN | ACK))
    recs, flows, _ = run(segs)
    r = recs[0]
    # delivered bytes + gaps add up to the stream and sit where the drops were
    rebuilt = r.stream(CLIENT, gap_fill=b"\0")
    expected = bytearray(b"\0" * len(data))
    for off, p in kept:
        expected[off:off + len(p)] = p
    assert rebuilt == bytes(expected)
    assert len(r.stream(CLIENT)) + sum(r.gaps(CLIENT)) == len(data)
    assert flows[0].gap_bytes == len(data) - sum(len(p) for _, p in kept)


def test_sequence_wraparound():
    isn = 2**32 - 700
    payload = bytes(range(256)) * 8
    segs = handshake(isn, 5)
    segs += [segment("c", isn + 1 + off, 6, payload=p) for off, p in cut(payload, [300])]
    recs, _, _ = run(segs)
    assert recs[0].stream(CLIENT) == payload


def test_conflicting_overlap_first_copy_wins():
    segs = handshake(0, 0)
    segs += [segment("c", 1, 1, payload=b"hello world"), segment("c", 7, 1, payload=b"WORLD!"),
             segment("c", 30, 1, payload=b"later"), segment("c", 28, 1, payload=b"xxLATER")]
    recs, _, ra = run(segs)
    assert recs[0].stream(CLIENT, gap_fill=b"_") == b"hello world!" + b"_" * 15 + b"xxlater"
    assert [a.name for a in ra.anomalies].count("tcp_overlap_conflict") == 2


def test_mid_stream_pickup_by_port_and_first_speaker():
    segs = [segment("s", 5000, 100, payload=b"+OK ready\r\n", sport=110),
            segment("c", 100, 5011, payload=b"USER a\r\n", sport=110)]
    recs, flows, _ = run(segs)
    assert flows[0].role_by == "port" and flows[0].server_port == 110
    assert recs[0].stream(SERVER) == b"+OK ready\r\n" and recs[0].stream(CLIENT) == b"USER a\r\n"
    assert flows[0].close == "open"
    segs = [segment("c", 1, 1, payload=b"x", cport=50000, sport=40001)]
    _, flows, _ = run(segs)
    assert flows[0].role_by == "first" and flows[0].client_port == 50000


def test_new_syn_after_close_starts_new_connection():
    segs = handshake(100, 900) + [segment("c", 101, 901, payload=b"one"), segment("c", 104, 901, RST)]
    segs += handshake(5000, 7000) + [segment("c", 5001, 7001, payload=b"two")]
    recs, flows, _ = run(segs)
    assert [r.stream(CLIENT) for r in recs] == [b"one", b"two"]
    assert [f.flow_id for f in flows] == [0, 1] and flows[0].close == "rst"


def test_refused_and_unanswered():
    _, flows, _ = run([segment("c", 100, 0, SYN), segment("s", 0, 101, RST | ACK)])
    assert flows[0].close == "refused"
    _, flows, _ = run([segment("c", 100, 0, SYN), segment("c", 100, 0, SYN)])
    assert flows[0].close == "unanswered" and flows[0].packets == 2


def test_out_of_order_cap_flushes_with_gap():
    lim = Limits(max_ooo_bytes=1000, max_ooo_segments=100)
    segs = handshake(0, 0)
    segs += [segment("c", 1 + 10 + i * 100, 1, payload=b"x" * 100) for i in range(15)]
    recs, _, ra = run(segs, lim)
    assert "tcp_ooo_limit" in [a.name for a in ra.anomalies]
    assert recs[0].gaps(CLIENT)[0] == 10
    assert recs[0].stream(CLIENT) == b"x" * 1500


def test_acked_hole_is_declared_before_the_end():
    segs = handshake(0, 0)
    segs += [segment("c", 1, 1, payload=b"a" * 10), segment("c", 21, 1, payload=b"c" * 10)]
    segs += [segment("s", 1, 31, ACK) for _ in range(10)]  # the server has everything
    recs, _, _ = run(segs)
    ev = recs[0].events
    gap_at = ev.index(("gap", CLIENT, 10))
    assert gap_at < len(ev) - 1 and ev[-1] == ("close", "eof")


def test_port_reuse_with_new_isn_while_open():
    segs = handshake(100, 900) + [segment("c", 101, 901, payload=b"one")]
    segs += handshake(77777, 8888) + [segment("c", 77778, 8889, payload=b"two")]
    recs, flows, ra = run(segs)
    assert [r.stream(CLIENT) for r in recs] == [b"one", b"two"]
    assert "tcp_port_reuse" in [a.name for a in ra.anomalies]


def test_data_after_fin_is_dropped():
    segs = handshake(0, 0) + [segment("c", 1, 1, FIN | ACK | PSH, payload=b"bye"),
                              segment("c", 4, 1, payload=b"extra")]
    recs, _, ra = run(segs)
    assert recs[0].stream(CLIENT) == b"bye"
    assert "tcp_data_after_fin" in [a.name for a in ra.anomalies]


def test_flow_table_limit_evicts():
    lim = Limits(max_flows=3)
    segs = []
    for i in range(10):
        segs += [segment("c", 1, 0, SYN, cport=30000 + i)]
    _, flows, ra = run(segs, lim)
    assert len(flows) == 10
    assert "tcp_flow_limit" in [a.name for a in ra.anomalies]


def test_syn_retried_after_refusal_with_same_isn_is_one_attempt():
    segs = [segment("c", 100, 0, SYN), segment("s", 0, 101, RST | ACK)] * 3
    _, flows, _ = run(segs)
    assert len(flows) == 1 and flows[0].close == "refused" and flows[0].packets == 6
    segs = [segment("c", 100, 0, SYN), segment("s", 0, 101, RST | ACK),
            segment("c", 900, 0, SYN), segment("s", 0, 901, RST | ACK)]
    _, flows, _ = run(segs)
    assert [f.close for f in flows] == ["refused", "refused"]


def test_reply_past_a_hole_declares_the_gap_before_the_reply():
    segs = handshake(0, 0)
    segs += [segment("c", 1, 1, payload=b"BDAT 10\r\n"),
             segment("s", 1, 1010, payload=b"250 OK\r\n"),  # the server saw bytes we did not
             segment("c", 1010, 9, payload=b"QUIT\r\n")]
    recs, _, _ = run(segs)
    kinds = [(e[0], e[1]) for e in recs[0].events if e[0] != "close"]
    assert kinds == [("data", CLIENT), ("gap", CLIENT), ("data", SERVER), ("data", CLIENT)]
    assert recs[0].gaps(CLIENT) == [1000]
