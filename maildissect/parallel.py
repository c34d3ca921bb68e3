"""Several processes on one analysis: connections sharded by a hash of their endpoints.

Every worker reads all frames (reading and header decoding are cheap) but
reassembles and dissects only the connections of its shard, so each
connection is handled whole by one worker. Results are merged so that they are
identical to a single-process run: connections are numbered by the frame
number of their first packet, exactly as one process numbers them, and every
record's ``session_id`` is renumbered accordingly.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Callable

from .config import Config
from .pipeline import Collector, Pipeline

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


def _worker(args):
    paths, config, k, n, progress_value = args
    pipe = Pipeline(config)

    def progress(done, total):
        if progress_value is not None:
            progress_value.value = done
    pipe.run(paths, progress if k == 0 else None, shard=(k, n))
    return k, pipe.collector, {"frames": pipe.frames, "decoder": _decoder_stats(pipe),
                               "linktypes": sorted({lt for r in pipe.readers for lt in r.linktypes})}


def _decoder_stats(pipe):
    d = pipe.decoder
    return {"tcp": d.tcp, "non_ip": d.non_ip, "non_tcp": d.non_tcp, "malformed": d.malformed,
            "fragments": d.fragments}


def run_parallel(paths: list[str], config: Config, jobs: int,
                 progress: Callable[[int, int], None] | None = None) -> tuple[Collector, dict]:
    """Analyse ``paths`` with ``jobs`` processes; returns (merged collector, stats)."""
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    if ctx.get_start_method() == "fork":
        _preload(config)
    total = sum(os.path.getsize(p) for p in paths)
    value = ctx.Value("q", 0) if progress is not None else None
    tasks = [(paths, config, k, jobs, value) for k in range(jobs)]
    with ctx.Pool(jobs) as pool:
        pending = pool.map_async(_worker, tasks)
        # The tables need pandas; importing it here overlaps with the workers' reading.
        import pandas  # noqa: F401
        while not pending.ready():
            pending.wait(0.2)
            if progress is not None:
                progress(value.value, total)
        results = sorted(pending.get(), key=lambda r: r[0])
    if progress is not None:
        progress(total, total)
    return merge([r[1] for r in results]), results[0][2]


def _preload(config: Config) -> None:
    """Import every dissector (and what they import) before forking, so the workers
    inherit them instead of each importing the same modules while they run."""
    from . import mime  # noqa: F401
    from .protocols import DISSECTORS, dissector_class, detect
    for name in DISSECTORS:
        dissector_class(name)
    detect._load_sniffers()


def merge(collectors: list[Collector]) -> Collector:
    """One collector from shard collectors, with connections renumbered globally."""
    flows = [(f.first_frame, k, f) for k, c in enumerate(collectors) for f in c.flows]
    flows.sort(key=lambda x: (x[0], x[1]))
    mapping: list[dict[int, int]] = [{} for _ in collectors]
    for new_id, (_frame, k, f) in enumerate(flows):
        mapping[k][f.flow_id] = new_id
    out = Collector()
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
