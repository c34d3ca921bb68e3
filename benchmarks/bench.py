#!/usr/bin/env python3
"""Time maildissect against tshark on the same capture, in one run, as ratios.

    python benchmarks/bench.py CAPTURE [--suite flows|analyze|all] [--jobs 1,2] [--repeat N]
                               [--markdown] [--json FILE]

Each command runs ``--repeat`` times (best wall time kept), in rounds that
interleave maildissect's and tshark's commands so that both meet the same
machine; maildissect's modules are compiled to bytecode first, as a regular
install has them. Memory: the
largest process's maximum resident set size (``wait4``), and the whole process
tree's resident memory sampled every 20 ms (with ``--jobs`` the workers add
up), both as RSS (pages shared copy-on-write by forked workers counted once per
process) and as PSS (shared pages divided among their sharers). Pairs:

- flows:   ``maildissect flows CAPTURE -f jsonl``  vs  ``tshark -r CAPTURE -q -z conv,tcp``
- analyze: ``maildissect export CAPTURE -f parquet --jobs J`` (every table,
  attachment hashes included) for each J of ``--jobs`` (default 1,2)  vs
  ``tshark -r CAPTURE -q --export-objects imf,DIR --export-objects http,DIR``

When the capture has a manifest beside it (CAPTURE.json, as mkcorpus.py and
make_corpus.py write), the analyze rows also say how many of its messages were
recovered with every attachment's sha256.

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


def _tree_memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process and all its descendants, from /proc (Linux).

    RSS counts a page in every process that maps it, so forked workers, which
    share their parent's pages copy-on-write, are counted twice; PSS divides each
    shared page among the processes that share it, so the tree's PSS is the
    memory the run really occupies."""
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return rss, pss


def measure(args: list[str]) -> tuple[float, int, int, int, int]:
    """(wall seconds, peak RSS of the largest process in KiB, peak RSS and peak PSS of
    the whole process tree in KiB (sampled every 20 ms), exit status) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tree_rss = tree_pss = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss, pss = _tree_memory_kib(proc.pid)  # worker processes add up
        tree_rss, tree_pss = max(tree_rss, rss), max(tree_pss, pss)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        print(f"  ! {' '.join(args[:4])}... exited {proc.returncode}: {err.strip()[:300]}", file=sys.stderr)
    return (wall, usage.ru_maxrss, max(tree_rss, usage.ru_maxrss), max(tree_pss, usage.ru_maxrss),
            proc.returncode)


def best(runs):
    """Best wall time over several runs, and the largest memory figures seen."""
    return (min(r[0] for r in runs), max(r[1] for r in runs), max(r[2] for r in runs),
            max(r[3] for r in runs), max(r[4] for r in runs))


def maildissect_cmd():
    exe = shutil.which("maildissect")
    return [exe] if exe else [sys.executable, "-m", "maildissect.cli"]


def recovered(manifest_path: str, export_dir: str) -> tuple[int, int] | None:
    """(messages found with every attachment sha256, messages in the manifest)."""
    if not os.path.exists(manifest_path):
        return None
    import pandas as pd
    want = json.load(open(manifest_path))["messages"]
    msgs = pd.read_parquet(os.path.join(export_dir, "messages.parquet"))
    seen: dict[str, set] = {}
    for mid, atts in zip(msgs["message_id"], msgs["attachments"]):
        seen.setdefault(str(mid), set()).update(a["sha256"] for a in atts)
    ok = sum(1 for m in want if {a["sha256"] for a in m["attachments"]} <= seen.get(m["message_id"], set()))
    return ok, len(want)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("--suite", choices=["flows", "analyze", "all"], default="all")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values for the analyze suite")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table for docs/performance.md")
    ap.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    a = ap.parse_args()
    size = os.path.getsize(a.capture)
    md = maildissect_cmd()
    # A regular install compiles maildissect's modules to bytecode; an editable one
    # under PYTHONDONTWRITEBYTECODE=1 would compile them again on every run.
    import compileall
    import maildissect
    compileall.compile_dir(os.path.dirname(maildissect.__file__), quiet=1)
    tshark = shutil.which("tshark")
    manifest = a.capture + ".json"
    results = []
    with tempfile.TemporaryDirectory(prefix="maildissect-bench-") as work:
        plan = []
        if a.suite in ("flows", "all"):
            plan.append(("flows", "flows",
                         md + ["flows", a.capture, "-f", "jsonl", "-o", os.path.join(work, "flows.jsonl"), "-q"],
                         [tshark, "-r", a.capture, "-q", "-z", "conv,tcp"] if tshark else None, None))
        if a.suite in ("analyze", "all"):
            tshark_dir = os.path.join(work, "tshark-objects")
            os.makedirs(tshark_dir, exist_ok=True)
            theirs = [tshark, "-r", a.capture, "-q", "--export-objects", f"imf,{tshark_dir}",
                      "--export-objects", f"http,{tshark_dir}"] if tshark else None
            for j in [int(x) for x in a.jobs.split(",") if x.strip()]:
                export_dir = os.path.join(work, f"export-j{j}")
                plan.append(("analyze", f"analyze -j{j}",
                             md + ["export", a.capture, "-o", export_dir, "-f", "parquet", "-q", "--jobs", str(j)],
                             theirs, export_dir))
        # Rounds interleave every command (ours and tshark's), so that a change in the
        # machine's speed during the run (shared virtual machines have them) hits both.
        commands = []
        for _suite, _label, ours, theirs, _dir in plan:
            for cmd in (ours, theirs):
                if cmd and tuple(cmd) not in commands:
                    commands.append(tuple(cmd))
        runs: dict = {c: [] for c in commands}
        for _ in range(a.repeat):
            for c in commands:
                runs[c].append(measure(list(c)))
        for suite, label, ours, theirs, export_dir in plan:
            o = best(runs[tuple(ours)])
            t = best(runs[tuple(theirs)]) if theirs else None
            row = {"suite": suite, "label": label, "capture_mb": round(size / 1e6, 1),
                   "maildissect_s": round(o[0], 2), "maildissect_rss_mb": round(o[1] / 1024, 1),
                   "maildissect_tree_rss_mb": round(o[2] / 1024, 1),
                   "maildissect_tree_pss_mb": round(o[3] / 1024, 1),
                   "tshark_s": round(t[0], 2) if t else None,
                   "tshark_rss_mb": round(t[1] / 1024, 1) if t else None,
                   "ratio": round(o[0] / t[0], 3) if t else None,
                   "maildissect_mb_s": round(size / 1e6 / o[0], 1)}
            if export_dir:
                found = recovered(manifest, export_dir)
                if found:
                    row["messages_recovered"] = f"{found[0]}/{found[1]}"
                if suite == "analyze" and t:
                    # every repeat writes the same objects again under new names
                    row["tshark_imf_files"] = len([n for n in os.listdir(os.path.join(work, "tshark-objects"))
                                                   if n.lower().endswith(".eml")]) // a.repeat
            results.append(row)
            print(f"{label:13s} maildissect {row['maildissect_s']:6.2f} s, peak RSS {row['maildissect_rss_mb']:6.1f} MB"
                  f" (all processes: RSS {row['maildissect_tree_rss_mb']:6.1f} MB, PSS "
                  f"{row['maildissect_tree_pss_mb']:6.1f} MB) | tshark "
                  f"{row['tshark_s'] or float('nan'):6.2f} s {row['tshark_rss_mb'] or float('nan'):6.1f} MB"
                  f" | ratio {row['ratio']}" + (f" | recovered {row['messages_recovered']}"
                                                if "messages_recovered" in row else ""), flush=True)
    if a.markdown:
        print("\n| run | capture MB | maildissect s | peak MB (largest process RSS / all RSS / all PSS) | tshark s | "
              "tshark peak RSS MB | time ratio | messages recovered |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['label']} | {r['capture_mb']} | {r['maildissect_s']} | {r['maildissect_rss_mb']} / "
                  f"{r['maildissect_tree_rss_mb']} / {r['maildissect_tree_pss_mb']} | {r['tshark_s']} | {r['tshark_rss_mb']} | {r['ratio']} | "
                  f"{r.get('messages_recovered', '')} |")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
