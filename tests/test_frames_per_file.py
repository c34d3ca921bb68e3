"""Where each row came from: ``file`` and frame numbers counted per capture file.

Several captures are merged in time order; a row must still be found again in
Wireshark with the file it names and the frame number Wireshark shows when that
file is opened alone. tshark (``-r FILE``) is the reference where installed.
"""

from __future__ import annotations

import pathlib
import struct
import subprocess

import pytest

import maildissect
from maildissect import parallel
from maildissect.capture.files import FrameOrigins, read_batches, read_frames

from .pcaps import write_pcap
from .tshark import TSHARK, needs_tshark

ROOT = pathlib.Path(__file__).resolve().parent.parent
CAP = ROOT / "captures"
RECORD_TABLES = ("commands", "messages", "credentials", "http", "mailboxes", "anomalies")


def frames_of(path):
    out = []
    with open(path, "rb") as f:
        f.read(24)
        while head := f.read(16):
            sec, usec, incl, orig = struct.unpack("<IIII", head)
            out.append((sec + usec / 1e6, f.read(incl)))
    return out


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory):
    """journey.pcap split in two files by connection: their frames interleave in time."""
    d = tmp_path_factory.mktemp("split")
    whole = maildissect.analyze(str(CAP / "journey.pcap"))
    frames = frames_of(CAP / "journey.pcap")
    # the connections' endpoints, to send each frame to its connection's file
    odd = {(f.client_port, f.server_port) for f in whole.records.flows if f.flow_id % 2}
    a, b = [], []
    for ts, data in frames:
        ports = struct.unpack("!HH", data[34:38]) if len(data) >= 38 else (0, 0)
        (b if ports in odd or ports[::-1] in odd else a).append((ts, data))
    pa, pb = d / "a.pcap", d / "b.pcap"
    write_pcap(pa, a)
    write_pcap(pb, b)
    return whole, [str(pa), str(pb)], {str(pa): a, str(pb): b}


def test_merged_reading_is_heapq_merge_and_origins_locate_every_frame(interleaved):
    import heapq
    _, paths, per_file = interleaved
    origins = FrameOrigins(paths)
    merged = [f for batch in read_batches(paths, origins=origins) for f in batch]
    readers = [iter(read_frames([p])) for p in paths]
    assert [f[2] for f in merged] == [f[2] for f in heapq.merge(*readers, key=lambda f: f[0])]
    assert [f[2] for f in read_frames(paths)] == [f[2] for f in merged]
    assert len(origins.starts) > 10  # the files do interleave
    for n, frame in enumerate(merged, 1):
        name, local = origins.locate(n)
        assert per_file[name][local - 1][1] == frame[2]


def test_rows_name_their_file_and_frame(interleaved):
    whole, paths, per_file = interleaved
    a = maildissect.analyze(paths)
    assert len(a.flows) == len(whole.flows) and len(a.messages) == len(whole.messages)
    assert set(a.flows["file"]) == set(paths)
    for f in a.records.flows:
        data = per_file[f.file][f.first_frame - 1][1]
        assert struct.unpack("!HH", data[34:38]) in ((f.client_port, f.server_port), (f.server_port, f.client_port))
    ports = {f.flow_id: {f.client_port, f.server_port} for f in a.records.flows}
    for table in RECORD_TABLES:
        for r in getattr(a.records, table):
            if r.session_id is None:
                continue
            assert r.file in paths and r.frame >= 1, (table, r)
            data = per_file[r.file][r.frame - 1][1]
            assert set(struct.unpack("!HH", data[34:38])) == ports[r.session_id], (table, r)
    # a single file: the same rows, numbered as that file
    for table in ("commands", "messages"):
        left, right = whole.table(table), a.table(table)
        assert (whole.table(table)["file"] == str(CAP / "journey.pcap")).all()
        assert len(left) == len(right)


def test_files_one_after_another():
    paths = [str(CAP / "smtp.pcap"), str(CAP / "pop3.pcap"), str(CAP / "relay.pcap")]
    a = maildissect.analyze(paths)
    singles = {p: maildissect.analyze(p) for p in paths}
    for table in ("flows", "commands", "messages", "credentials"):
        got = a.table(table)
        for p, one in singles.items():
            mine = got[got["file"] == p].reset_index(drop=True)
            col = "first_frame" if table == "flows" else "frame"
            assert mine[col].tolist() == one.table(table)[col].tolist(), (table, p)


def test_jobs_and_dask_give_the_same_files_and_frames(interleaved, monkeypatch):
    _, paths, _ = interleaved
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    one = maildissect.analyze(paths, jobs=1)
    two = maildissect.analyze(paths, jobs=2)
    for table in ("flows", "sessions") + RECORD_TABLES:
        assert one.table(table).equals(two.table(table)), table
    assert [f.merged_frame for f in sorted(one.records.flows, key=lambda f: f.flow_id)] == \
        sorted(f.merged_frame for f in one.records.flows)  # flows are numbered in merged order


def test_close_records_are_dated_to_their_connection(tmp_path):
    """A message cut by the end of one file is dated to its connection's last frame, not to another file's."""
    from .pcaps import conversation
    frames, _, _ = conversation(exchanges=[("s", b"220 mx\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250 ok\r\n"),
                                           ("c", b"MAIL FROM:<a@x>\r\n"), ("s", b"250 ok\r\n"),
                                           ("c", b"RCPT TO:<b@y>\r\n"), ("s", b"250 ok\r\n"),
                                           ("c", b"DATA\r\n"), ("s", b"354 go\r\n"),
                                           ("c", b"Subject: cut\r\n\r\nbody\r\n")], close=False)
    later, _, _ = conversation(client=("10.0.0.3", 41000), t0=5000.0,
                               exchanges=[("s", b"220 mx\r\n"), ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")])
    write_pcap(tmp_path / "one.pcap", frames)
    write_pcap(tmp_path / "two.pcap", later)
    a = maildissect.analyze([str(tmp_path / "one.pcap"), str(tmp_path / "two.pcap")])
    (m,) = a.records.messages
    assert (m.file, m.frame) == (str(tmp_path / "one.pcap"), len(frames))
    data_cmd = [c for c in a.records.commands if c.command == "DATA"]
    assert data_cmd and data_cmd[0].file.endswith("one.pcap")


def test_capture_damage_names_its_file(tmp_path):
    good = CAP / "pop3.pcap"
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(good.read_bytes()[:-7])
    a = maildissect.analyze([str(CAP / "smtp.pcap"), str(cut)])
    damage = [x for x in a.records.anomalies if x.name == "capture_truncated_record"]
    assert damage and damage[0].file == str(cut)
    assert damage[0].frame == len(frames_of(good)) - 1  # the last whole frame of that file


def _tshark_frames(path) -> dict[int, tuple]:
    out = subprocess.run([TSHARK, "-r", str(path), "-T", "fields", "-e", "frame.number", "-e", "tcp.srcport",
                          "-e", "tcp.dstport", "-e", "tcp.len", "-e", "tcp.flags.syn"],
                         capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        num, sport, dport, length, syn = line.split("\t")
        res[int(num)] = (int(sport), int(dport), int(length or 0), syn in ("1", "True"))
    return res


@needs_tshark
def test_frames_are_the_ones_tshark_shows(interleaved):
    """Per file, the frame a row names is, in tshark -r FILE, a frame of the row's connection: the
    first one for flows (the SYN here), one carrying the reply bytes for commands and messages."""
    _, paths, _ = interleaved
    a = maildissect.analyze(paths)
    shark = {p: _tshark_frames(p) for p in paths}
    for f in a.records.flows:
        sport, dport, _len, syn = shark[f.file][f.first_frame]
        assert {sport, dport} == {f.client_port, f.server_port} and syn
        earlier = [n for n, v in shark[f.file].items() if n < f.first_frame and {v[0], v[1]} == {sport, dport}]
        assert not earlier
    ends = {f.flow_id: f for f in a.records.flows}
    for c in a.records.commands:
        sport, dport, length, _syn = shark[c.file][c.frame]
        f = ends[c.session_id]
        assert {sport, dport} == {f.client_port, f.server_port} and length > 0
        if c.reply_code is not None and c.protocol in ("smtp", "pop3", "imap"):
            assert sport == f.server_port  # the reply completed it
    for m in a.records.messages:
        sport, dport, length, _ = shark[m.file][m.frame]
        assert {sport, dport} == {ends[m.session_id].client_port, ends[m.session_id].server_port} and length > 0


def test_second_read_places_packets_by_merged_order(interleaved):
    """conn.log's packet counts come from reading the captures again (capture.control): on merged
    captures packets are placed by each connection's first frame in the merged order."""
    from maildissect.capture.control import flow_packets
    _, paths, _ = interleaved
    a = maildissect.analyze(paths)
    packets = flow_packets(paths, a.records.flows)
    assert set(packets) == {f.flow_id for f in a.records.flows}
    for f in a.records.flows:
        assert sum(packets[f.flow_id].packets) == f.packets, f.flow_id
