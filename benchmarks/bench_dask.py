#!/usr/bin/env python3
"""Throughput of the Dask path with 1..N local workers, on a capture rotated into files.

    python benchmarks/bench_dask.py CAPTURE [--parts 4] [--workers 1,2]

The capture is split into ``--parts`` consecutive files (as ``tcpdump -C``
would write them, connections crossing the boundaries); each run starts a
``dask.distributed`` LocalCluster with that many single-threaded worker
processes and times the three stages (decode per file, dissect per bucket,
merge). The in-process run of the same stages is the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rotate(capture: str, parts: int, out_dir: str) -> list[str]:
    from maildissect.capture.files import CaptureReader
    from maildissect.capture.live import PcapWriter
    frames = list(CaptureReader(capture))
    size = len(frames) // parts + 1
    names = []
    for k in range(parts):
        name = os.path.join(out_dir, f"part{k}.pcap")
        w = PcapWriter(name)
        for ts, _lt, data, wirelen in frames[k * size:(k + 1) * size]:
            w.write(ts, data, wirelen)
        w.close()
        names.append(name)
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--workers", default="1,2")
    a = ap.parse_args()
    from dask.distributed import Client, LocalCluster

    from maildissect import distributed
    from maildissect.analysis import make_config
    config = make_config()
    with tempfile.TemporaryDirectory(prefix="maildissect-dask-") as tmp:
        files = rotate(a.capture, a.parts, tmp)
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        t = time.perf_counter()
        collector, _ = distributed.run_local(files, config)
        el = time.perf_counter() - t
        print(f"in-process stages: {el:6.2f} s  {mb / el:6.1f} MB/s  {len(collector.messages)} messages", flush=True)
        for n in [int(x) for x in a.workers.split(",")]:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                    Client(cluster) as client:
                t = time.perf_counter()
                collector, _ = distributed.run_dask(files, config, client)
                el = time.perf_counter() - t
            print(f"dask, {n} worker(s): {el:6.2f} s  {mb / el:6.1f} MB/s  {len(collector.messages)} messages",
                  flush=True)


if __name__ == "__main__":
    main()
