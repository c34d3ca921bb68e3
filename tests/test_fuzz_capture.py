"""The layers under the dissectors, on hostile input (hypothesis).

- the capture reader on mutated pcap and pcapng files: a file that is not a
  capture raises CaptureError when opened, anything else reads to the end
  with capture anomalies, never an exception;
- the frame decoder on generated headers of every link type with mutated
  lengths, versions, options and fragments: no exception, segments consistent
  with their frames, the fragment table within its limits;
- the reassembler on arbitrary segments (overlaps with other bytes, holes,
  wraparound, flags in any order): every byte of every direction delivered
  once or reported as a gap, out-of-order buffers within their caps;
- the whole pipeline on mutated captures.

tests/test_tcp.py and tests/test_decode.py hold the properties of well-formed
input (permutations reassemble to the original stream, and so on).
"""

from __future__ import annotations

import io
import struct
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import harness
from maildissect.capture.decode import Decoder
from maildissect.capture.files import CaptureError, CaptureReader
from tests.malformed.packets import (ACK, FIN, PSH, RST, SYN, addr, ether, ipv4, ipv6, pcapng_epb, pcapng_idb,
                                     pcapng_shb, tcp_header)

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = harness.TIGHT


@lru_cache(maxsize=None)
def small_captures() -> tuple[bytes, ...]:
    """The heads of the seed captures (pcap), and one pcapng made of the first of them."""
    heads = [p.read_bytes()[:20000] for p in harness.seed_captures()[:12]]
    reader = CaptureReader.from_stream(io.BytesIO(heads[0]), "seed")
    ng = pcapng_shb() + pcapng_idb() + b"".join(pcapng_epb(0, int(ts * 1e6), data, wl)
                                                for ts, _lt, data, wl in reader)
    return tuple(heads + [ng])


FILE_MUTATION = st.tuples(st.sampled_from(["flip", "delete", "dup", "zero", "ones", "cut"]),
                          st.integers(0, 2 ** 31), st.integers(1, 64))


def mutate_bytes(data: bytes, mutations, keep_header: int = 0) -> bytes:
    out = bytearray(data)
    for op, pos, n in mutations:
        if len(out) <= keep_header:
            break
        i = keep_header + pos % (len(out) - keep_header)
        if op == "flip":
            out[i] ^= 1 << (n % 8)
        elif op == "delete":
            del out[i:i + n]
        elif op == "dup":
            out[i:i] = out[i:i + n * 16]
        elif op == "zero":
            out[i:i + n] = b"\0" * len(out[i:i + n])
        elif op == "ones":
            out[i:i + 4] = b"\xff\xff\xff\xff"[: len(out[i:i + 4])]
        else:
            del out[i:]
    return bytes(out)


@FUZZ
@given(st.data())
def test_reader_on_mutated_files(data):
    files = small_captures()
    raw = files[data.draw(st.integers(0, len(files) - 1))]
    mutated = mutate_bytes(raw, data.draw(st.lists(FILE_MUTATION, max_size=10)),
                           keep_header=data.draw(st.sampled_from([0, 4, 24])))
    try:
        reader = CaptureReader.from_stream(io.BytesIO(mutated), "mutated", LIMITS.max_frame)
    except CaptureError as e:
        assert "\n" not in str(e)
        return
    frames = list(reader)
    assert reader.frames == len(frames)
    for ts, linktype, frame, wirelen in frames:
        assert isinstance(frame, bytes) and isinstance(linktype, int)
        assert len(frame) <= max(LIMITS.max_frame, 16 * LIMITS.max_frame)
    harness.check_records(reader.anomalies, LIMITS, "reader")


@FUZZ
@given(st.binary(max_size=600))
def test_reader_on_arbitrary_bytes(data):
    for head in (b"", struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1), pcapng_shb()):
        try:
            reader = CaptureReader.from_stream(io.BytesIO(head + data), "bytes", LIMITS.max_frame)
        except CaptureError:
            continue
        list(reader)
        harness.check_records(reader.anomalies, LIMITS, "reader")


# -- the decoder ----------------------------------------------------------------------
SRC, DST = addr("10.0.0.1"), addr("10.0.0.2")
SRC6, DST6 = addr("fd00::1"), addr("fd00::2")


@st.composite
def frames(draw):
    """A frame of some link type carrying (maybe) IPv4/IPv6 and TCP, with fields mutated."""
    payload = draw(st.binary(max_size=80))
    seg = tcp_header(SRC, DST, 40000, 25, draw(st.integers(0, 2 ** 32 - 1)), 0,
                     draw(st.integers(0, 255)), payload, options=draw(st.binary(max_size=12)),
                     doff=draw(st.one_of(st.none(), st.integers(0, 15))))
    v6 = draw(st.booleans())
    if v6:
        nxt = draw(st.sampled_from([6, 6, 0, 43, 44, 60, 51, 17]))
        ext = draw(st.binary(max_size=24))
        packet = ipv6(SRC6, DST6, ext + seg, nxt=nxt, plen=draw(st.one_of(st.none(), st.integers(0, 65535))))
    else:
        packet = ipv4(SRC, DST, seg, ident=draw(st.integers(0, 65535)),
                      frag=draw(st.sampled_from([0x4000, 0, 0x2000, 0x2001, 0x0010, 0x1FFF, 0x3FFF])),
                      ihl=draw(st.one_of(st.none(), st.integers(0, 15))),
                      total=draw(st.one_of(st.none(), st.integers(0, 65535))),
                      version=draw(st.sampled_from([4, 4, 4, 6, 0])),
                      options=draw(st.binary(max_size=16)))
    link = draw(st.sampled_from(["eth", "vlan", "sll", "sll2", "null", "loop", "raw"]))
    if link == "eth":
        frame, lt = ether(packet), 1
    elif link == "vlan":
        frame = ether(b"\x00\x05" + (b"\x08\x00" if not v6 else b"\x86\xdd") + packet, 0x8100)
        lt = 1
    elif link == "sll":
        frame, lt = b"\0" * 14 + (b"\x86\xdd" if v6 else b"\x08\x00") + packet, 113
    elif link == "sll2":
        frame, lt = (b"\x86\xdd" if v6 else b"\x08\x00") + b"\0" * 18 + packet, 276
    elif link in ("null", "loop"):
        family = 30 if v6 else 2
        frame = (struct.pack("<I", family) if link == "null" else struct.pack("!I", family)) + packet
        lt = 0 if link == "null" else 108
    else:
        frame, lt = packet, 101
    cut = draw(st.one_of(st.none(), st.integers(0, len(frame))))
    return lt, frame[:cut] if cut is not None else frame


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=30))
def test_decoder_on_generated_headers(frame_list):
    d = Decoder(LIMITS.max_fragment_bytes, LIMITS.max_fragment_sets, LIMITS.fragment_timeout)
    for k, (lt, frame) in enumerate(frame_list):
        seg = d.decode(float(k), lt, frame, len(frame) + k % 3)
        if seg is not None:
            key, src, dst, sport, dport, seq, ack, flags, payload, seglen = seg
            assert len(src) == len(dst) in (4, 16) and key == src + dst + struct.pack("!HH", sport, dport)
            assert 0 <= len(payload) <= max(seglen, 0) or seglen < 0 and not payload
            assert seglen >= 0
        assert len(d._frags) <= LIMITS.max_fragment_sets
    d.finish()
    harness.check_records(d.anomalies, LIMITS, "decode")
    assert d.frames == len(frame_list)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 600), st.integers(0, 120), st.booleans(),
                          st.integers(0, 255)), min_size=1, max_size=40))
def test_fragments_overlapping_and_oversized(pieces):
    """IPv4 fragments of a few datagrams at any offsets: the table stays within its limits."""
    d = Decoder(LIMITS.max_fragment_bytes, LIMITS.max_fragment_sets, LIMITS.fragment_timeout)
    for k, (ident, off8, length, more, fill) in enumerate(pieces):
        chunk = bytes([fill]) * length
        frame = ether(ipv4(SRC, DST, chunk, ident=ident, frag=(0x2000 if more else 0) | (off8 & 0x1FFF)))
        d.decode(k * 0.5, 1, frame, len(frame))
        for dg in d._frags.values():
            # disjoint pieces: never more than the datagram's range
            assert sum(len(p) for p in dg.pieces) <= LIMITS.max_fragment_bytes
        assert len(d._frags) <= LIMITS.max_fragment_sets
    d.finish()
    harness.check_records(d.anomalies, LIMITS, "fragments")


def test_fragment_flood_of_one_datagram_is_bounded():
    """100,000 overlapping fragments of one datagram that never completes: linear time and
    bounded memory (every fragment used to be compared with every earlier one)."""
    import time
    d = Decoder(65535, 4096, 30.0)
    frame = ether(ipv4(SRC, DST, b"x" * 8, ident=5, frag=0x2000))
    start = time.process_time()
    for k in range(100_000):
        d.decode(k * 1e-5, 1, frame, len(frame))
    assert time.process_time() - start < 10
    assert all(len(dg.pieces) <= 65535 // 8 + 1 for dg in d._frags.values())


# -- the reassembler ----------------------------------------------------------------------
@FUZZ
@given(st.binary(min_size=8, max_size=8 * 300))
def test_reassembler_on_arbitrary_segments(data):
    """harness.target_tcp: every byte delivered once or counted as a gap, buffers capped."""
    harness.target_tcp(data)


@st.composite
def conversations(draw):
    """Segments of one connection in any order, with retransmissions carrying other bytes."""
    stream = draw(st.binary(min_size=1, max_size=400))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12))))
    bounds = [0] + cuts + [len(stream)]
    isn = draw(st.integers(0, 2 ** 32 - 1))
    segs = [(isn + 1 + a, stream[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
    extra = draw(st.lists(st.tuples(st.integers(0, len(stream)), st.binary(min_size=1, max_size=30)), max_size=6))
    segs += [(isn + 1 + off, blob) for off, blob in extra]
    order = draw(st.permutations(range(len(segs))))
    return isn, stream, [segs[i] for i in order], draw(st.booleans())


@FUZZ
@given(conversations())
def test_reassembly_with_conflicting_retransmissions(conv):
    from maildissect.tcp import Reassembler
    isn, stream, segs, with_fin = conv
    got, gaps = bytearray(), []
    ends = []

    class Listener:
        def data(self, side, data, ts):
            got.extend(data)

        def gap(self, side, n, ts):
            gaps.append(n)
            got.extend(b"\0" * n)

        def close(self, ts, reason):
            ends.append(reason)
    ra = Reassembler(LIMITS, on_open=lambda conn: Listener())
    key = SRC + DST + struct.pack("!HH", 40000, 25)

    def send(seq, flags, payload=b""):
        ra.packet(1.0, (key, SRC, DST, 40000, 25, seq & 0xFFFFFFFF, 0, flags, payload, len(payload)))
    send(isn, SYN)
    for seq, payload in segs:
        send(seq, PSH | ACK, payload)
    if with_fin:
        send(isn + 1 + len(stream), FIN | ACK)
    else:
        send(isn + 1 + len(stream), RST | ACK)
    ra.finish()
    assert len(ends) == 1
    # every byte position up to the furthest delivered one is data or gap, exactly once
    h = ra.anomalies
    harness.check_records(h, LIMITS, "tcp")
    assert len(got) <= len(stream) + max((len(b) for _o, b in segs), default=0)


# -- the whole pipeline --------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_pipeline_on_mutated_captures(data):
    files = small_captures()
    raw = files[data.draw(st.integers(0, len(files) - 1))]
    harness.target_capture(mutate_bytes(raw, data.draw(st.lists(FILE_MUTATION, max_size=8)), keep_header=24))


@pytest.mark.parametrize("index", range(4))
def test_pipeline_on_capture_heads(index):
    """The seed captures themselves, cut at 20 kB (the end of each file is a truncated record)."""
    files = small_captures()
    harness.target_capture(files[index * 3 % len(files)])
