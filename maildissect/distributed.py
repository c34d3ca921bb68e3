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

from .capture.decode import Decoder
from .capture.files import CaptureReader, FrameOrigins
from .capture.sharding import shard_of
from .config import Config
from .parallel import merge
from .pipeline import Collector, Pipeline, place_frames


def decode_file(path: str, file_index: int, buckets: int, config: Config) -> dict:
    """Stage 1: the segments of one file, bucketed by connection.

    Returns {"buckets": [[(ts, file_index, frame, seg), ...] per bucket],
    "frames", "first_ts", "anomalies", "counters", "linktypes"}.
    """
    lim = config.limits
    reader = CaptureReader(path, lim.max_frame)
    decoder = Decoder(lim.max_fragment_bytes, lim.max_fragment_sets, lim.fragment_timeout)
    decode = decoder.decode
    out: list[list] = [[] for _ in range(buckets)]
    n = 0
    first_ts = None
    for ts, linktype, data, wirelen in reader:
        n += 1
        if first_ts is None:
            first_ts = ts
        seg = decode(ts, linktype, data, wirelen)
        if seg is not None:
            out[shard_of((seg[1][-1] << 16) | seg[3], (seg[2][-1] << 16) | seg[4], buckets)].append(
                (ts, file_index, n, seg))
    decoder.finish()
    return {"buckets": out, "frames": n, "first_ts": first_ts, "anomalies": reader.anomalies + decoder.anomalies,
            "linktypes": sorted(reader.linktypes),
            "counters": {"tcp": decoder.tcp, "non_ip": decoder.non_ip, "non_tcp": decoder.non_tcp,
                         "malformed": decoder.malformed, "fragments": decoder.fragments}}


def dissect_bucket(parts: list[list], offsets: dict[int, int], config: Config) -> Collector:
    """Stage 2: reassemble and dissect one bucket's segments from every file."""
    segments = [s for part in parts for s in part]
    segments.sort(key=lambda s: (offsets[s[1]] + s[2]))
    pipe = Pipeline(config)
    reasm = pipe.reassembler
    packet = reasm.packet
    last = None
    for ts, file_index, frame, seg in segments:
        reasm.frame = offsets[file_index] + frame
        packet(ts, seg)
        last = ts
    reasm.finish(last)
    pipe.collector.anomalies.extend(reasm.anomalies)
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


def _finish(decoded: list[dict], collectors: list[Collector], offsets: dict[int, int], names
            ) -> tuple[Collector, dict]:
    merged = merge(collectors)
    place_frames(merged, origins_of(names, offsets))
    for d in decoded:
        merged.anomalies.extend(d["anomalies"])
    counters = {k: sum(d["counters"][k] for d in decoded) for k in decoded[0]["counters"]} if decoded else {}
    stats = {"frames": sum(d["frames"] for d in decoded), "decoder": counters,
             "linktypes": sorted({lt for d in decoded for lt in d["linktypes"]})}
    return merged, stats


def run_dask(paths: Iterable[str], config: Config, client=None, buckets: int | None = None
             ) -> tuple[Collector, dict]:
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
        return _finish(decoded_small, collectors, offsets, names)
    finally:
        if own is not None:
            client.close()
            own.close()


def run_local(paths: Iterable[str], config: Config, buckets: int = 4) -> tuple[Collector, dict]:
    """The same three stages in this process (what the tests compare against)."""
    paths = list(paths)
    decoded = [decode_file(p, i, buckets, config) for i, p in enumerate(paths)]
    offsets = _plan(decoded)
    collectors = [dissect_bucket([d["buckets"][b] for d in decoded], offsets, config) for b in range(buckets)]
    return _finish([_without_buckets(d) for d in decoded], collectors, offsets, paths)


def _meta(d: dict) -> dict:
    return {"frames": d["frames"], "first_ts": d["first_ts"]}


def _bucket(d: dict, b: int) -> list:
    return d["buckets"][b]


def _without_buckets(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "buckets"}
