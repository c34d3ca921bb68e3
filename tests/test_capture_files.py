"""Capture file reading: formats, byte orders, resolutions, damage, merging."""

import gzip
import hashlib
import subprocess
import sys

import pytest

from maildissect import CaptureError, read_flows
from maildissect.capture.files import CaptureReader, read_frames
from tests.pcaps import (TLS_KEY_LOG, WIREGUARD_KEY_LOG, conversation, tcp_frame, write_pcap,
                         write_pcapng)

HELLO = [("s", b"220 mail.example ESMTP\r\n"), ("c", b"EHLO me\r\n"), ("s", b"250 ok\r\n")]


def frames_of(path):
    r = CaptureReader(str(path))
    return r, list(r)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path, endian, nano):
    frames, _, _ = conversation(exchanges=HELLO, t0=1700000000.0)
    p = tmp_path / "x.pcap"
    write_pcap(p, frames, endian=endian, nano=nano)
    r, got = frames_of(p)
    assert r.format == "pcap" and not r.anomalies
    assert [g[2] for g in got] == [f[1] for f in frames]
    for (ts, _lt, _d, _w), (want, _) in zip(got, frames):
        assert ts == pytest.approx(want, abs=1e-6)
    assert all(g[1] == 1 for g in got)


def test_pcapng_several_interfaces_link_types_and_resolutions(tmp_path):
    f1 = tcp_frame(payload=b"eth")
    raw_ip = tcp_frame(payload=b"raw")[14:]
    p = tmp_path / "x.pcapng"
    write_pcapng(p, [(1, None), (101, 9), (1, 0x80 | 20)],
                 [(0, 100.5, f1), (1, 101.25, raw_ip), (2, 102.125, f1)])
    r, got = frames_of(p)
    assert r.format == "pcapng" and not r.anomalies
    assert [(lt, d) for _, lt, d, _ in got] == [(1, f1), (101, raw_ip), (1, f1)]
    assert [round(ts, 6) for ts, *_ in got] == [100.5, 101.25, 102.125]


def test_pcapng_big_endian(tmp_path):
    f1 = tcp_frame(payload=b"x")
    p = tmp_path / "be.pcapng"
    write_pcapng(p, [(1, 6)], [(0, 5.0, f1)], endian=">")
    _, got = frames_of(p)
    assert got[0][2] == f1 and got[0][0] == pytest.approx(5.0)


KEYS_A = b"CLIENT_RANDOM " + b"aa" * 32 + b" " + b"bb" * 48 + b"\n"
KEYS_B = b"CLIENT_RANDOM " + b"cc" * 32 + b" " + b"dd" * 48  # no final line end


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_decryption_secrets_blocks(tmp_path, endian):
    """TLS key logs are kept in file order, wherever they sit; other secrets types are not."""
    f1 = tcp_frame(payload=b"x")
    p = tmp_path / "dsb.pcapng"
    write_pcapng(p, [(1, 6)], [(0, 5.0, f1), (0, 6.0, f1)], endian=endian,
                 secrets=[(0, TLS_KEY_LOG, KEYS_A), (0, WIREGUARD_KEY_LOG, b"wg key\n"), (1, TLS_KEY_LOG, KEYS_B)])
    r, got = frames_of(p)
    assert len(got) == 2 and not r.anomalies
    assert r.secrets == [KEYS_A, KEYS_B + b"\n"]
    assert CaptureReader(str(p)).leading_secrets() == KEYS_A + KEYS_B + b"\n"
    # a pcap file has none
    q = tmp_path / "x.pcap"
    write_pcap(q, [(5.0, f1)])
    assert CaptureReader(str(q)).leading_secrets() == b""


def test_pcapng_secrets_beyond_the_limit_keep_whole_lines(tmp_path):
    f1 = tcp_frame(payload=b"x")
    p = tmp_path / "dsb.pcapng"
    write_pcapng(p, [(1, 6)], [(0, 5.0, f1)], secrets=[(0, TLS_KEY_LOG, KEYS_A * 3), (0, TLS_KEY_LOG, KEYS_A)])
    r = CaptureReader(str(p), max_secrets=len(KEYS_A) * 2 + 10)
    assert len(list(r)) == 1
    assert r.secrets == [KEYS_A * 2]
    assert [a.name for a in r.anomalies] == ["capture_secrets_too_large"]


def test_pcapng_secrets_block_larger_than_a_packet(tmp_path):
    """editcap puts a whole key log in one block: larger than max_frame is fine."""
    keys = KEYS_A * 4000  # 700 KB
    f1 = tcp_frame(payload=b"x")
    p = tmp_path / "dsb.pcapng"
    write_pcapng(p, [(1, 6)], [(0, 5.0, f1)], secrets=[(0, TLS_KEY_LOG, keys)])
    r, got = frames_of(p)
    assert len(got) == 1 and not r.anomalies and r.secrets == [keys]


def test_gzip_and_stdin(tmp_path):
    frames, cdata, sdata = conversation(exchanges=HELLO)
    p = tmp_path / "x.pcap"
    write_pcap(p, frames)
    gz = tmp_path / "x.pcap.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    flows = read_flows(str(gz))
    assert flows[0].client_sha256 == hashlib.sha256(cdata).hexdigest()
    out = subprocess.run([sys.executable, "-m", "maildissect.cli", "flows", "-", "-f", "jsonl"],
                         input=p.read_bytes(), capture_output=True, check=True)
    assert hashlib.sha256(sdata).hexdigest().encode() in out.stdout


def test_several_files_merge_in_time_order(tmp_path):
    a, _, _ = conversation(exchanges=HELLO, t0=1000.0)
    b, _, _ = conversation(client=("10.0.0.9", 41000), exchanges=HELLO, t0=1000.0005)
    write_pcap(tmp_path / "a.pcap", a)
    write_pcap(tmp_path / "b.pcap", b)
    got = list(read_frames([tmp_path / "a.pcap", tmp_path / "b.pcap"]))
    ts = [g[0] for g in got]
    assert ts == sorted(ts) and len(got) == len(a) + len(b)


def test_truncated_last_record_keeps_what_was_read(tmp_path):
    frames, _, _ = conversation(exchanges=HELLO)
    p = tmp_path / "t.pcap"
    write_pcap(p, frames)
    data = p.read_bytes()
    p.write_bytes(data[:-10])
    r, got = frames_of(p)
    assert len(got) == len(frames) - 1
    assert [a.name for a in r.anomalies] == ["capture_truncated_record"]


def test_corrupt_length_stops_with_anomaly(tmp_path):
    frames, _, _ = conversation(exchanges=HELLO)
    p = tmp_path / "c.pcap"
    write_pcap(p, frames)
    data = bytearray(p.read_bytes())
    # the 4th record's incl_len: header 24 + 3 records
    off = 24 + sum(16 + len(f[1]) for f in frames[:3])
    data[off + 8:off + 12] = (0x7FFFFFFF).to_bytes(4, "little")
    p.write_bytes(bytes(data))
    r, got = frames_of(p)
    assert len(got) == 3
    assert r.anomalies[0].name == "capture_bad_record_length"


def test_snaplen_cut_is_reported_and_becomes_a_gap(tmp_path):
    payload = b"A" * 1000
    frames, _, _ = conversation(exchanges=[("c", payload), ("s", b"ok\r\n")])
    cut = []
    for ts, data in frames:
        if len(data) > 200:
            cut.append((ts, data[:200], len(data)))
        else:
            cut.append((ts, data))
    p = tmp_path / "s.pcap"
    write_pcap(p, cut, snaplen=200)
    r, got = frames_of(p)
    assert any(a.name == "capture_snaplen_cut" for a in r.anomalies)
    flow = read_flows(str(p))[0]
    assert flow.gap_bytes == 1000 - (200 - 14 - 20 - 20)
    assert flow.bytes_client + flow.gap_bytes == 1000


@pytest.mark.parametrize("content", [b"", b"hello", b"not a capture at all, just text\n" * 10,
                                     b"\x1f\x8bgarbage-gzip"])
def test_not_a_capture_is_one_line_error(tmp_path, content):
    p = tmp_path / "bad.pcap"
    p.write_bytes(content)
    with pytest.raises(CaptureError) as e:
        list(read_frames([p]))
    assert "\n" not in str(e.value)
    res = subprocess.run([sys.executable, "-m", "maildissect.cli", "flows", str(p)], capture_output=True)
    assert res.returncode == 1
    assert res.stderr.decode().count("\n") == 1 and b"Traceback" not in res.stderr


def test_missing_file_is_one_line_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "maildissect.cli", "flows", str(tmp_path / "nope.pcap")],
                         capture_output=True)
    assert res.returncode == 1 and b"No such file" in res.stderr and b"Traceback" not in res.stderr
