"""Analysis on a Dask cluster (or a local pool): decode per file, dissect per flow group.

The map/shuffle/reduce shape:

1. **decode** (one task per capture file, run where the file is read): frames
   are decoded to TCP segments and put in buckets by a hash of the
   connection's endpoints;
2. **dissect** (one task per bucket): the bucket's segments from every file
   are merged in capture order, so a connection spanning rotated files
   (``tcpdump -G``/``-C``) is reassembled whole, then dissected;
3. **merge**: shard results are renumbered like a single-process run
   (:func:`maildissect.parallel.merge`) and written as a Parquet dataset.

Files are taken as consecutive pieces of one capture, ordered by their first
timestamp (which is what rotation produces); frame numbers continue from one
file to the next.
"""

from __future__ import annotations

import os
from typing import Iterable

from .capture.files import CaptureReader, FrameOrigins
from .config import Config
from .parallel import merge
from .pipeline import Collector, Pipeline, place_frames
from .runner import Bucket, Buckets, Files, Stats


def decode_file(path: str, file_index: int, buckets: int, config: Config) -> dict:
    """Stage 1: the segments of one file, bucketed by connection (the pipeline's frame loop,
    with segments going to buckets instead of the reassembler).

    Returns {"buckets": [[(ts, file_index, frame, seg), ...] per bucket],
    "frames", "first_ts", "anomalies", "stats"}.
    """
    out = Buckets(buckets, file_index)
    pipe = Pipeline(Files([path]), Collector(), config, segments=out)
    stats = pipe.run()
    return {"buckets": out.buckets, "frames": stats.frames, "first_ts": _first_ts(path, config),
            "anomalies": pipe.collector.anomalies, "stats": stats}


def _first_ts(path: str, config: Config) -> float | None:
    """The time of a file's first frame (files are taken in that order)."""
    reader = CaptureReader(path, config.limits.max_frame)
    try:
        for frame in reader:
            return frame[0]
        return None
    finally:
        reader.close()


def dissect_bucket(parts: list[list], offsets: dict[int, int], config: Config) -> Collector:
    """Stage 2: reassemble and dissect one bucket's segments from every file."""
    pipe = Pipeline(Bucket(parts, offsets), Collector(), config)
    pipe.run()
    return pipe.collector


def _plan(decoded: list[dict]) -> dict[int, int]:
    """Frame number offset of each file: files in order of their first timestamp."""
    order = sorted(range(len(decoded)), key=lambda i: (decoded[i]["first_ts"] is None,
                                                      decoded[i]["first_ts"] or 0.0, i))
    offsets, total = {}, 0
    for i in order:
        offsets[i] = total
        total += decoded[i]["frames"]
    return offsets


def origins_of(names, offsets: dict[int, int]) -> FrameOrigins:
    """Where the frames come from: each file's frames follow the previous file's (see _plan)."""
    origins = FrameOrigins(names)
    for i in sorted(offsets, key=lambda i: (offsets[i], i)):
        origins.add(offsets[i] + 1, i, 1)
    return origins


def _finish(decoded: list[dict], collectors: list[Collector], offsets: dict[int, int], names, sink=None
            ) -> tuple[Collector, Stats]:
    merged = merge(collectors, sink)
    place_frames(merged.records, origins_of(names, offsets))
    for d in decoded:
        merged.records.anomalies.extend(d["anomalies"])
    stats = Stats(files=list(names), jobs=None)
    for d in decoded:
        stats.add(d["stats"])
    return merged.records, stats


def run_dask(paths: Iterable[str], config: Config, client=None, buckets: int | None = None, sink=None
             ) -> tuple[Collector, Stats]:
    """Run the three stages on a dask.distributed ``client`` (a local cluster when None)."""
    from dask.distributed import Client, LocalCluster

    names = [str(p) for p in paths]  # as given: what the rows' file column says
    paths = [os.path.abspath(p) for p in paths]
    own = None
    if client is None:
        own = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(own)
    try:
        nbuckets = buckets or max(2, 2 * len(client.scheduler_info().get("workers", {}) or [1]))
        futures = [client.submit(decode_file, p, i, nbuckets, config, pure=False) for i, p in enumerate(paths)]
        decoded_meta = client.gather([client.submit(_meta, f, pure=False) for f in futures])
        offsets = _plan(decoded_meta)
        parts = [[client.submit(_bucket, f, b, pure=False) for f in futures] for b in range(nbuckets)]
        shard_futures = [client.submit(dissect_bucket, p, offsets, config, pure=False) for p in parts]
        collectors = client.gather(shard_futures)
        decoded_small = client.gather([client.submit(_without_buckets, f, pure=False) for f in futures])
        return _finish(decoded_small, collectors, offsets, names, sink)
    finally:
        if own is not None:
            client.close()
            own.close()


def run_local(paths: Iterable[str], config: Config, buckets: int = 4, sink=None) -> tuple[Collector, Stats]:
    """The same three stages in this process (what the tests compare against)."""
    paths = list(paths)
    decoded = [decode_file(p, i, buckets, config) for i, p in enumerate(paths)]
    offsets = _plan(decoded)
    collectors = [dissect_bucket([d["buckets"][b] for d in decoded], offsets, config) for b in range(buckets)]
    return _finish([_without_buckets(d) for d in decoded], collectors, offsets, paths, sink)


def _meta(d: dict) -> dict:
    return {"frames": d["frames"], "first_ts": d["first_ts"]}


def _bucket(d: dict, b: int) -> list:
    return d["buckets"][b]


def _without_buckets(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "buckets"}
