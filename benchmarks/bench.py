#!/usr/bin/env python3
"""Time maildissect against tshark on the same capture, in one run, as ratios.

    python benchmarks/bench.py CAPTURE [--suite flows|analyze|all] [--repeat N] [--markdown]

Each command runs ``--repeat`` times (best wall time kept); peak memory is the
child's maximum resident set size from ``wait4``. Pairs:

- flows:   ``maildissect flows CAPTURE -f jsonl``  vs  ``tshark -r CAPTURE -q -z conv,tcp``
- analyze: ``maildissect export CAPTURE -f parquet`` (every table, attachment
  hashes included)  vs  ``tshark -r CAPTURE -q --export-objects imf,DIR
  --export-objects http,DIR``

A capture for this: ``python3 ../shared/bench/mkcorpus.py big.pcap --sessions
1000 --attach-kb 128`` (about 280 MB), or ``python benchmarks/make_corpus.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def measure(args: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KiB, exit status) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        print(f"  ! {' '.join(args[:4])}... exited {proc.returncode}: {err.strip()[:300]}", file=sys.stderr)
    return wall, usage.ru_maxrss, proc.returncode


def best(args, repeat):
    runs = [measure(args) for _ in range(repeat)]
    wall = min(r[0] for r in runs)
    rss = max(r[1] for r in runs)
    return wall, rss, max(r[2] for r in runs)


def maildissect_cmd():
    exe = shutil.which("maildissect")
    return [exe] if exe else [sys.executable, "-m", "maildissect.cli"]


def suites(capture: str, workdir: str, jobs: int | None):
    md = maildissect_cmd()
    jobs_opt = ["--jobs", str(jobs)] if jobs else []
    tshark = shutil.which("tshark")
    yield ("flows",
           md + ["flows", capture, "-f", "jsonl", "-o", os.path.join(workdir, "flows.jsonl"), "-q"],
           [tshark, "-r", capture, "-q", "-z", "conv,tcp"] if tshark else None)
    export_dir = os.path.join(workdir, "export")
    tshark_dir = os.path.join(workdir, "tshark-objects")
    os.makedirs(tshark_dir, exist_ok=True)
    yield ("analyze",
           md + ["export", capture, "-o", export_dir, "-f", "parquet", "-q"] + jobs_opt,
           [tshark, "-r", capture, "-q", "--export-objects", f"imf,{tshark_dir}",
            "--export-objects", f"http,{tshark_dir}"] if tshark else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("--suite", choices=["flows", "analyze", "all"], default="all")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=None, help="pass --jobs N to maildissect analyze")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table for docs/performance.md")
    ap.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    a = ap.parse_args()
    size = os.path.getsize(a.capture)
    results = []
    with tempfile.TemporaryDirectory(prefix="maildissect-bench-") as work:
        for name, ours, theirs in suites(a.capture, work, a.jobs):
            if a.suite not in ("all", name):
                continue
            o = best(ours, a.repeat)
            t = best(theirs, a.repeat) if theirs else None
            row = {"suite": name, "capture_mb": round(size / 1e6, 1),
                   "maildissect_s": round(o[0], 2), "maildissect_rss_mb": round(o[1] / 1024, 1),
                   "tshark_s": round(t[0], 2) if t else None,
                   "tshark_rss_mb": round(t[1] / 1024, 1) if t else None,
                   "ratio": round(o[0] / t[0], 3) if t else None,
                   "maildissect_mb_s": round(size / 1e6 / o[0], 1)}
            results.append(row)
            print(f"{name:8s} maildissect {row['maildissect_s']:7.2f} s {row['maildissect_rss_mb']:7.1f} MB | "
                  f"tshark {row['tshark_s'] or float('nan'):7.2f} s {row['tshark_rss_mb'] or float('nan'):7.1f} MB"
                  f" | ratio {row['ratio']}", flush=True)
    if a.markdown:
        print("\n| suite | capture MB | maildissect s | peak RSS MB | tshark s | tshark peak RSS MB | "
              "time ratio (maildissect / tshark) |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['suite']} | {r['capture_mb']} | {r['maildissect_s']} | {r['maildissect_rss_mb']} | "
                  f"{r['tshark_s']} | {r['tshark_rss_mb']} | {r['ratio']} |")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
