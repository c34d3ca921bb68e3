"""--jobs and Dask give exactly the tables of a single-process run.

The Dask test starts a real dask.distributed LocalCluster with two worker
processes and feeds it a capture split into rotated files, with connections
crossing the file boundaries (as tcpdump -C / -G produce).
"""

import random

import pytest

import maildissect
from maildissect import parallel
from maildissect.analysis import TABLES
from maildissect.capture.files import CaptureReader
from maildissect.capture.live import PcapWriter
from tests.pcaps import conversation, impair, write_pcap


def mail_capture(path, sessions=24):
    rng = random.Random(3)
    frames = []
    for i in range(sessions):
        body = b"".join(b"line %d of message %d\r\n" % (k, i) for k in range(rng.randrange(20, 400)))
        msg = (b"From: a%d@example.org\r\nTo: b@example.net\r\nSubject: test %d\r\nMessage-ID: <m%d@x>\r\n\r\n"
               % (i, i, i) + body)
        smtp = [("s", b"220 mx ESMTP\r\n"), ("c", b"EHLO c%d\r\n" % i), ("s", b"250 mx\r\n"),
                ("c", b"MAIL FROM:<a%d@example.org>\r\n" % i), ("s", b"250 ok\r\n"),
                ("c", b"RCPT TO:<b@example.net>\r\n"), ("s", b"250 ok\r\n"), ("c", b"DATA\r\n"),
                ("s", b"354 go\r\n"), ("c", msg + b".\r\n"), ("s", b"250 queued as Q%d\r\n" % i),
                ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]
        conv, _, _ = conversation(client=(f"10.9.{i // 200}.{i % 200 + 1}", 30000 + i), server=("10.8.0.1", 25),
                                  exchanges=smtp, t0=1000 + i * 0.05, isn=(rng.randrange(2**32), rng.randrange(2**32)),
                                  mss=536)
        frames += impair(conv, seed=i, reorder=0.2, dup=0.1)
    frames.sort(key=lambda f: f[0])
    write_pcap(path, frames)
    return path


def split(path, parts, out_dir):
    """Rotate a capture into ``parts`` files of about equal frame counts."""
    frames = list(CaptureReader(str(path)))
    size = len(frames) // parts + 1
    names = []
    for k in range(parts):
        name = out_dir / f"rot{k}.pcap"
        w = PcapWriter(str(name))
        for ts, _lt, data, wirelen in frames[k * size:(k + 1) * size]:
            w.write(ts, data, wirelen)
        w.close()
        names.append(str(name))
    return names


ORIGIN = ["file", "frame", "first_frame"]


def assert_same_tables(a, b, pieces=False):
    """``pieces``: ``b`` read the capture of ``a`` as rotated files, so rows name other files and
    count frames within them; everything else is equal, and connections start at the same frame of
    the whole reading."""
    for t in TABLES:
        x, y = a.table(t), b.table(t)
        if pieces:
            x, y = x.drop(columns=ORIGIN, errors="ignore"), y.drop(columns=ORIGIN, errors="ignore")
        assert x.equals(y), f"table {t} differs"
    if pieces:
        assert [f.first_frame for f in sorted(a.records.flows, key=lambda f: f.flow_id)] == \
            [f.merged_frame for f in sorted(b.records.flows, key=lambda f: f.flow_id)]
        assert len(set(b.flows["file"])) > 1


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return mail_capture(tmp_path_factory.mktemp("dist") / "mail.pcap")


def test_jobs_two_identical_to_one(capture, monkeypatch):
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    one = maildissect.analyze(capture, jobs=1)
    two = maildissect.analyze(capture, jobs=2)
    assert two.stats["jobs"] == 2 and len(one.messages) == 24
    assert_same_tables(one, two)


def test_inprocess_stages_identical(capture, tmp_path):
    whole = maildissect.analyze(capture)
    rotated = split(capture, 3, tmp_path)
    staged = maildissect.analyze(rotated, scheduler="inprocess")
    assert_same_tables(whole, staged, pieces=True)
    assert set(staged.flows["file"]) <= set(rotated)


def test_dask_local_cluster_on_rotated_files(capture, tmp_path):
    pytest.importorskip("dask.distributed", reason="dask.distributed is not installed")
    from dask.distributed import Client, LocalCluster

    from maildissect import distributed
    from maildissect.analysis import Analysis, make_config
    whole = maildissect.analyze(capture)
    rotated = split(capture, 3, tmp_path)
    # flows really cross file boundaries
    firsts = [CaptureReader(p) for p in rotated]
    assert all(list(r) for r in firsts)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        config = make_config()
        collector, stats = distributed.run_dask(rotated, config, client)
    dask_result = Analysis(collector, config, {"frames": stats["frames"]})
    assert_same_tables(whole, dask_result, pieces=True)
    spanning = [f for f in whole.records.flows if f.first_frame <= len(list(CaptureReader(rotated[0])))
                and f.end > min(fr[0] for fr in CaptureReader(rotated[1]))]
    assert spanning, "the split should cut through connections"


@pytest.mark.parametrize("name", ["journey-impaired.pcap", "webmail.pcap", "relay.pcap"])
@pytest.mark.parametrize("jobs", [2, 3])
def test_jobs_identical_on_bundled_captures(name, jobs, monkeypatch):
    """Workers skip other shards' frames in the reader; tables, frame counts and the
    capture's end (which closes open connections) are those of one process."""
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    path = str(parallel.__file__).rsplit("/maildissect/", 1)[0] + "/captures/" + name
    one = maildissect.analyze(path, jobs=1)
    many = maildissect.analyze(path, jobs=jobs)
    assert many.stats["jobs"] == jobs
    assert many.stats["frames"] == one.stats["frames"]
    assert_same_tables(one, many)


def test_reader_skips_other_shards_as_none(capture):
    """A sharded reader yields None for other shards' frames: every frame is still
    counted, and the shards partition the TCP frames."""
    from maildissect.capture.files import read_batches
    from maildissect.capture.sharding import frame_shard
    whole = [f for b in read_batches([str(capture)]) for f in b]
    kept = []
    for k in range(3):
        frames = [f for b in read_batches([str(capture)], shard=(k, k + 1, 3)) for f in b]
        assert len(frames) == len(whole)
        for f, w in zip(frames, whole):
            if f is not None:
                s = frame_shard(f[2], 0, 3)
                assert f == w and s in (k, -1)
                if s == k or k == 0:  # frames the reader cannot place come to every shard
                    kept.append(f)
    assert sorted(kept) == sorted(whole)
