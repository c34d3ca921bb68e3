#!/usr/bin/env python3
"""How the commands that join records scale with one long session.

    python benchmarks/bench_correlation.py [--messages 4000,8000,16000] [--repeat 1]
                                           [--tree DIR] [--dir DIR] [--markdown]

Builds one SMTP session carrying N small messages for each N
(tests/fixtures/long_session.py) and times, as a user runs them, ``messages``,
``journeys``, ``timeline`` (terminal tables written to a file), ``report``
and ``export -f zeek``, each in its own process with ``-j 1``: wall time and
CPU time (user + system of the process; what a shared machine's load does
not inflate), best of ``--repeat`` runs. Joining records by keys makes every command grow with
the records; joining them by time windows between the records of a session
made journeys, the timeline, the report and the Zeek logs grow with
messages x commands. ``--tree DIR`` times another checkout of maildissect
(its PYTHONPATH) on the same captures, for before/after figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.long_session import write  # noqa: E402

COMMANDS = {
    "messages": lambda cap, out: ["messages", cap, "-o", out + ".txt"],
    "journeys": lambda cap, out: ["journeys", cap, "-o", out + ".txt"],
    "timeline": lambda cap, out: ["timeline", cap, "-o", out + ".txt"],
    "report": lambda cap, out: ["report", cap, "-o", out + ".html"],
    "export -f zeek": lambda cap, out: ["export", cap, "-f", "zeek", "-o", out + ".zeek"],
}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(tree: str, args: list[str]) -> tuple[float, float]:
    """(wall, cpu) seconds of one command."""
    env = dict(os.environ, PYTHONPATH=tree)
    t, c = time.perf_counter(), _cpu()
    # run in the tree: "python -m" puts the working directory before PYTHONPATH
    res = subprocess.run([sys.executable, "-m", "maildissect.cli", *args, "-q", "-j", "1"], env=env, cwd=tree,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed, cpu = time.perf_counter() - t, _cpu() - c
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {res.returncode}\n{res.stderr[-2000:]}")
    return elapsed, cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", default="4000,8000,16000")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--tree", default=str(ROOT), help="checkout of maildissect to time (default: this one)")
    ap.add_argument("--dir", default=None, help="where to build the captures (default: a temporary directory)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.messages.split(",") if x]
    work = args.dir or tempfile.mkdtemp(prefix="md-bench-corr-")
    os.makedirs(work, exist_ok=True)
    rows = []
    try:
        for n in sizes:
            cap = os.path.join(work, f"long-{n}.pcap")
            if not os.path.exists(cap):
                write(cap, n)
            times = {}
            for name, argv_of in COMMANDS.items():
                out = os.path.join(work, f"out-{n}-{name.split()[0]}")
                runs = [run(args.tree, argv_of(cap, out)) for _ in range(max(1, args.repeat))]
                times[name] = (min(w for w, _ in runs), min(c for _, c in runs))
                print(f"{n} messages: {name} {times[name][0]:.1f} s wall, {times[name][1]:.1f} s CPU",
                      file=sys.stderr, flush=True)
            rows.append((n, times))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    names = list(COMMANDS)
    if args.markdown:
        print("| messages in the session | " + " | ".join(f"`{n}`" for n in names) + " |")
        print("|---:|" + "---:|" * len(names))
        for n, times in rows:
            print(f"| {n:,} | " + " | ".join(f"{times[x][1]:.1f} s ({times[x][0]:.0f} s)" for x in names) + " |")
        print("\nCPU seconds (wall seconds in brackets).")
    else:
        for n, times in rows:
            print(f"{n:>6} " + "  ".join(f"{x} {times[x][1]:.1f}s cpu {times[x][0]:.1f}s wall" for x in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
