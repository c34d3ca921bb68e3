"""The one runner: Pipeline(source, sink, config).run(), its sources, sinks and Stats."""

from __future__ import annotations

from pathlib import Path

import maildissect
from maildissect.analysis import make_config
from maildissect.capture.files import CaptureReader
from maildissect.config import Config
from maildissect.distributed import decode_file, dissect_bucket
from maildissect.model import Credential
from maildissect.pipeline import Collector, Pipeline
from maildissect.redact import MASK, Redacting
from maildissect.runner import Bucket, Files, Stats, Stream

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
POP3 = str(CAPTURES / "pop3.pcap")
SECRETS = {"5691-robrah-wodaem", "meadow-harbor-1965"}  # the two POP3 passwords of pop3.pcap


def test_files_source_into_a_list_gives_the_analysis_records_and_stats():
    sink = Collector()
    stats = Pipeline(Files([POP3]), sink, Config()).run()
    whole = maildissect.analyze(POP3)
    assert isinstance(stats, Stats) and isinstance(whole.stats, Stats)
    assert stats.frames == len(list(CaptureReader(POP3))) == whole.stats["frames"]
    assert (stats.tcp_segments, stats.linktypes) == (whole.stats["tcp_segments"], whole.stats["linktypes"])
    assert len(sink.commands) == len(whole.records.commands) and len(sink.flows) == len(whole.records.flows)


def test_stats_read_like_the_dict_they_replace():
    whole = maildissect.analyze(POP3)
    assert list(whole.stats) == ["files", "frames", "tcp_segments", "non_ip", "non_tcp", "malformed",
                                 "ip_fragments", "linktypes", "jobs", "first_ts", "last_ts"]
    assert whole.stats["files"] == [POP3] and whole.stats["jobs"] == 1
    assert "tls_decrypted" not in whole.stats and "scheduler" not in whole.stats and "secrets" not in whole.stats
    assert whole.stats.get("tls_decrypted") is None
    assert whole.stats["first_ts"] == min(f.start for f in whole.records.flows)
    dask = maildissect.analyze(POP3, scheduler="inprocess")
    assert "jobs" not in dask.stats and dask.stats["scheduler"] == "inprocess"
    assert dask.stats.as_dict() == {**{k: v for k, v in whole.stats.items() if k != "jobs"},
                                    "scheduler": "inprocess"}


def test_stats_merges():
    a = Stats(files=["x"], frames=10, tcp_segments=8, non_ip=1, linktypes=[1])
    b = Stats(files=["y"], frames=5, tcp_segments=5, linktypes=[113])
    shards = Stats.of_shards([a, Stats(files=["x"], frames=10, tcp_segments=8, non_ip=1, linktypes=[1])])
    assert (shards.frames, shards.tcp_segments, shards.jobs) == (10, 8, 2)  # each shard read every frame
    a.add(b)  # pieces of one capture (the Dask decode stage: a file each)
    assert (a.frames, a.tcp_segments, a.non_ip, a.linktypes, a.files) == (15, 13, 1, [1, 113], ["x"])


def test_bucket_source_numbers_frames_as_the_whole_reading():
    """A Dask bucket's segments, decoded elsewhere, reach the same frame loop at their frame
    numbers: connections and records are dated as one process dates them."""
    config = make_config()
    decoded = decode_file(POP3, 0, 2, config)
    assert decoded["frames"] == decoded["stats"].frames == len(list(CaptureReader(POP3)))
    whole = Collector()
    Pipeline(Files([POP3]), whole, config).run()
    firsts = {(f.client_port, f.first_frame) for f in whole.flows}
    got = set()
    for b in range(2):
        source = Bucket([decoded["buckets"][b]], {0: 0})
        frames = list(source._frames())
        numbers = [i + 1 for i, f in enumerate(frames) if f is not None]
        assert numbers == [s[2] for s in sorted(decoded["buckets"][b], key=lambda s: s[2])]
        got |= {(f.client_port, f.first_frame) for f in dissect_bucket([decoded["buckets"][b]], {0: 0}, config).flows}
    assert got == firsts


def test_redacting_a_stream_masks_each_record_as_it_leaves():
    out = []
    sink = Redacting(Stream(lambda table, record: out.append((table, record)), ("sessions", "commands", "credentials")))
    Pipeline(Files([POP3]), sink, Config(redact=True)).run()
    creds = [r for t, r in out if t == "credentials"]
    assert len(creds) == 2 and {c.secret for c in creds} == {MASK}
    assert not any(s in repr(out) for s in SECRETS)
    assert [r.argument for t, r in out if t == "commands" and r.command == "PASS"] == [MASK, MASK]


def test_redacting_a_list_masks_once_the_records_are_whole():
    inner = Collector()
    sink = Redacting(inner)
    assert sink.records is inner and sink.commands is inner.commands
    seen = []
    pipe = Pipeline(Files([POP3]), sink, Config(redact=True), message_hook=seen.append)
    pipe.run()
    # until the sink closes, the lists hold the records as the run made them (a merge and the
    # webmail fill still change them); hooks on the way got masked copies
    assert {c.secret for c in inner.credentials} == SECRETS
    sink.close()
    assert {c.secret for c in inner.credentials} == {MASK}
    assert not any(s in repr(vars(inner)) for s in SECRETS)
    assert all(isinstance(c, Credential) for c in inner.credentials)
