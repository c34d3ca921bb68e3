"""Several processes on one analysis: connections sharded by a hash of their endpoints.

Every process reads all frames (reading is cheap, and other shards' frames are
skipped before they are decoded) but reassembles and dissects only the
connections of its share of the hash buckets, so each connection is handled
whole by one process. Results are merged so that they are
identical to a single-process run: connections are numbered by the frame
number of their first packet, exactly as one process numbers them, and every
record's ``session_id`` is renumbered accordingly.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Callable

from .config import Config
from .pipeline import Collector, Pipeline, place_frames
from .runner import Files, Stats

#: Below this much capture data a single process is faster than starting workers.
MIN_PARALLEL_BYTES = 16 * 1024 * 1024


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worth_parallel(paths, jobs: int) -> bool:
    if jobs <= 1:
        return False
    total = 0
    for p in paths:
        if p == "-":
            return False  # stdin can be read only once
        try:
            total += os.path.getsize(p)
        except OSError:
            return False
    return total >= MIN_PARALLEL_BYTES


#: Connections are hashed into this many buckets, shared out between the processes.
BUCKETS = 4096

#: The main process's share of the work, relative to a worker's: it also imports
#: pandas for the tables and unpickles the workers' results.
MAIN_WEIGHT = 0.85


def bucket_ranges(jobs: int) -> list[tuple[int, int]]:
    """Bucket ranges ``[lo, hi)`` for the main process (first) and each worker."""
    weights = [MAIN_WEIGHT] + [1.0] * (jobs - 1)
    total = sum(weights)
    bounds, acc = [0], 0.0
    for w in weights:
        acc += w
        bounds.append(round(BUCKETS * acc / total))
    return [(bounds[i], bounds[i + 1]) for i in range(jobs)]


def _run_share(paths, config, lo, hi, progress=None):
    """One process's share: the reading of ``paths`` keeping buckets ``lo``..``hi - 1``."""
    pipe = Pipeline(Files(paths, shard=(lo, hi, BUCKETS)), Collector(), config)
    stats = pipe.run(progress)
    return pipe.collector, stats, pipe.origins


def _worker(args):
    paths, config, lo, hi = args
    collector, stats, _origins = _run_share(paths, config, lo, hi)
    return collector, stats


def run_parallel(paths: list[str], config: Config, jobs: int,
                 progress: Callable[[int, int], None] | None = None, sink=None) -> tuple[Collector, Stats]:
    """Analyse ``paths`` with ``jobs`` processes; returns (merged records, stats).

    The main process is one of them: it forks ``jobs - 1`` workers, analyses its
    own (slightly smaller) share of the connections, then imports pandas for the
    tables while the workers finish. No process sits idle, and only the workers'
    results cross a pipe. The shards' records are merged into ``sink`` (a new
    Collector when None), their stats into one.
    """
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    if ctx.get_start_method() == "fork":
        _preload(config)
    ranges = bucket_ranges(jobs)
    with ctx.Pool(jobs - 1) as pool:
        pending = pool.map_async(_worker, [(paths, config, lo, hi) for lo, hi in ranges[1:]])
        mine, stats, origins = _run_share(paths, config, *ranges[0], progress)
        # The tables need pandas; importing it here overlaps with the workers' last work.
        import pandas  # noqa: F401
        results = pending.get()
    merged = merge([mine] + [r[0] for r in results], sink)
    # every process read every frame alike: the main one's origins place them all, once
    # connections are numbered in the merged order
    place_frames(merged.records, origins)
    return merged.records, Stats.of_shards([stats] + [r[1] for r in results])


def _preload(config: Config) -> None:
    """Import every dissector (and what they import) before forking, so the workers
    inherit them instead of each importing the same modules while they run."""
    from . import mime  # noqa: F401
    from .protocols import DISSECTORS, dissector_class, detect
    for name in DISSECTORS:
        dissector_class(name)
    detect._load_sniffers()


def merge(collectors: list[Collector], sink=None):
    """One collector (``sink``, a new Collector when None) from shard collectors, with
    connections renumbered globally; returns the sink."""
    flows = [(f.first_frame, k, f) for k, c in enumerate(collectors) for f in c.flows]
    flows.sort(key=lambda x: (x[0], x[1]))
    mapping: list[dict[int, int]] = [{} for _ in collectors]
    for new_id, (_frame, k, f) in enumerate(flows):
        mapping[k][f.flow_id] = new_id
    out = sink if sink is not None else Collector()
    for k, c in enumerate(collectors):
        m = mapping[k]
        for f in c.flows:
            f.flow_id = m[f.flow_id]
        for s in c.sessions:
            s.session_id = m[s.session_id]
        for table in ("commands", "messages", "credentials", "http", "mailboxes"):
            for r in getattr(c, table):
                r.session_id = m.get(r.session_id, r.session_id)
        for a in c.anomalies:
            if a.session_id is not None:
                a.session_id = m.get(a.session_id, a.session_id)
    for table in ("flows", "sessions", "commands", "messages", "credentials", "http", "mailboxes"):
        for c in collectors:
            getattr(out, table).extend(getattr(c, table))
    # capture-level anomalies (no session) are the same in every shard: keep one copy
    out.anomalies.extend(a for a in collectors[0].anomalies if a.session_id is None)
    for c in collectors:
        out.anomalies.extend(a for a in c.anomalies if a.session_id is not None)
    return out
