"""Reassembled bytes agree with tshark's Follow TCP Stream, flow by flow.

Runs on every capture under tests/captures/ (real third-party traces and
generated labs) and on an impaired corpus (reordered and duplicated
segments) built here.
"""

import hashlib
import pathlib
import random

import pytest

from maildissect import read_flows
from tests.pcaps import conversation, impair, write_pcap
from tests.tshark import follow_raw, needs_tshark

ROOT = pathlib.Path(__file__).resolve().parent.parent
CAPTURES = sorted(p for p in (ROOT / "tests" / "captures").rglob("*.pcap*")
                  if "malformed" not in p.parts) + sorted((ROOT / "captures").glob("*.pcap"))


def compare(path):
    flows = read_flows(str(path))
    theirs = follow_raw(path, [f.flow_id for f in flows])
    checked = gapped = 0
    for f in flows:
        t = theirs.get(f.flow_id)
        assert t is not None, f"tshark has no stream {f.flow_id}"
        if not t["nodes"]:
            continue
        # tshark's node 0 is the side it saw first; map it to ours by address
        if t["nodes"][0] == (f.client_ip, f.client_port):
            tc, ts = t["data"]
        else:
            ts, tc = t["data"]
        if f.gaps:
            gapped += 1
            continue  # tshark fills or drops missing bytes; ours reports them
        assert hashlib.sha256(tc).hexdigest() == f.client_sha256, f"flow {f.flow_id} client bytes differ"
        assert hashlib.sha256(ts).hexdigest() == f.server_sha256, f"flow {f.flow_id} server bytes differ"
        checked += 1
    return checked, gapped, len(flows)


@needs_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_bundled_captures_match_tshark(path):
    checked, gapped, total = compare(path)
    assert checked + gapped == total


@needs_tshark
def test_impaired_corpus_matches_tshark(tmp_path):
    rng = random.Random(7)
    frames = []
    for i in range(30):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(100, 9000)))
        conv, _, _ = conversation(client=(f"10.1.0.{i + 1}", 20000 + i), server=("10.2.0.1", 25),
                                  exchanges=[("s", b"220 hi\r\n"), ("c", b"DATA\r\n" + body),
                                             ("s", b"250 ok\r\n" * rng.randrange(1, 50))],
                                  mss=rng.choice([536, 1460]), t0=1000 + i, isn=(rng.randrange(2**32),
                                                                                rng.randrange(2**32)))
        frames += impair(conv, seed=i, reorder=0.4, dup=0.3)
    frames.sort(key=lambda f: f[0])
    p = tmp_path / "impaired.pcap"
    write_pcap(p, frames)
    checked, gapped, total = compare(p)
    assert checked == total == 30
