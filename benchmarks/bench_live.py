#!/usr/bin/env python3
"""Does `maildissect live` keep up with a mail corpus replayed onto loopback?

    sudo python benchmarks/bench_live.py [--rates 20000,50000,100000,200000]
                                         [--backends spool,scapy,tcpdump] [--runs 1]
                                         [--work /tmp/maildissect-bench-live] [--json OUT]

1. Builds the corpus with benchmarks/make_corpus.py (1,000 sessions of SMTP
   submission, IMAP FETCH, POP3 RETR and HTTP multipart uploads, each message
   with a 128 KiB attachment; a manifest lists every Message-ID).
2. Moves its addresses into 127.0.0.0/8 with ``tcprewrite`` (tcpreplay's
   package): traffic is replayed on ``lo`` only, and only with loopback addresses.
3. Baseline: what ``tcpdump -w`` alone captures at each rate (on ``lo`` a
   replayed packet is seen once: tcpreplay's own socket does not see its
   outgoing copy, and libpcap discards loopback's).
4. For each rate and backend: starts ``maildissect live -i lo --format jsonl``,
   replays the corpus with ``tcpreplay --pps=RATE``, waits until every
   manifest message is printed (or none has come for ``--patience`` seconds),
   stops it with SIGINT and reads its summary. Reported: kernel drops, spool
   drops, messages recovered of the manifest's, seconds from the end of the
   replay to the last message printed (catch-up), and the peak memory of the
   whole process tree (maildissect, its analysing processes and tcpdump),
   sampled every 50 ms from /proc: the sum of PSS (shared pages counted once)
   and the sum of RSS (shared pages counted in each process).

``--soak SECONDS`` instead replays the corpus in a loop at ``--soak-rate``
for that long and samples the process tree's memory every 10 s: what the
memory of a long capture does (every loop of the corpus is 1,000 more
sessions to print and forget).

This is a measurement, not a test: other work on the machine changes it
(the load average is printed with each run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, **kw)


def build_corpus(work: Path) -> tuple[Path, dict]:
    corpus = work / "corpus.pcap"
    if not (work / "corpus.pcap.json").exists():
        res = sh(sys.executable, str(ROOT / "benchmarks" / "make_corpus.py"), str(corpus))
        if res.returncode:
            raise SystemExit(res.stderr)
        print(res.stderr.strip(), flush=True)
    manifest = json.loads((work / "corpus.pcap.json").read_text())
    loop = work / "corpus-127.pcap"
    if not loop.exists() or loop.stat().st_mtime < corpus.stat().st_mtime:
        if shutil.which("tcprewrite") is None:
            raise SystemExit("tcprewrite is missing: apt-get install -y tcpreplay")
        # every address of the corpus (10.1.x.y clients, 10.2.0.z servers) moved into 127/8
        res = sh("tcprewrite", "--pnat=10.0.0.0/8:127.0.0.0/8", "--fixcsum", "-i", str(corpus), "-o", str(loop))
        if res.returncode:
            raise SystemExit(res.stderr)
        check = sh("tcpdump", "-nr", str(loop), "-c", "2000", "not (src net 127.0.0.0/8 and dst net 127.0.0.0/8)")
        if check.stdout.strip():
            raise SystemExit("the rewritten corpus still holds addresses outside 127.0.0.0/8")
    return loop, manifest


def replay(pcap: Path, rate: int) -> tuple[float, str]:
    began = time.time()
    res = sh("tcpreplay", "-i", "lo", f"--pps={rate}", str(pcap))
    line = next((x for x in res.stdout.splitlines() if x.startswith("Actual")), res.stderr.strip()[-200:])
    return began, line.strip()


def baseline(pcap: Path, rate: int, work: Path) -> dict:
    """tcpdump -w alone: how many packets it sees and drops at this rate."""
    out = work / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    args = ["tcpdump", "-i", "lo", "-n", "-s", "0", "-B", "32768", "-w", str(out / "b.pcap"), "tcp"]
    if os.geteuid() == 0:
        args[1:1] = ["-Z", "root"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    proc.stderr.readline()
    time.sleep(0.5)
    _began, line = replay(pcap, rate)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    shutil.rmtree(out, ignore_errors=True)
    return {"replay": line, "captured": _grab(err, r"(\d+) packets captured"),
            "kernel_drops": _grab(err, r"(\d+) packets dropped by kernel")}


def _grab(text: str, pattern: str):
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


# -- memory of a process tree, from /proc ------------------------------------------------------
def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _memory(pids) -> tuple[int, int]:
    """(sum of PSS, sum of RSS) in KiB."""
    pss = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            pass
    return pss, rss


class Peak(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.pss = self.rss = 0
        self.processes = 0
        self.running = True

    def run(self):
        while self.running:
            pids = _tree(self.pid)
            pss, rss = _memory(pids)
            if pss > self.pss:
                self.pss = pss
            self.rss = max(self.rss, rss)
            self.processes = max(self.processes, len(pids))
            time.sleep(0.05)


def run_live(pcap: Path, manifest: dict, rate: int, backend: str, jobs: int | None, patience: float) -> dict:
    wanted = {m["message_id"] for m in manifest["messages"]}
    cmd = [sys.executable, "-m", "maildissect.cli", "live", "-i", "lo", "--format", "jsonl", "--backend", backend]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: dict[str, float] = {}

    def read():
        for line in proc.stdout:
            if '"record": "message"' not in line:
                continue
            try:
                mid = json.loads(line).get("message_id")
            except ValueError:
                continue
            if mid in wanted and mid not in seen:
                seen[mid] = time.time()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    first = proc.stderr.readline()
    if "capturing on" not in first:
        raise SystemExit(first + proc.stderr.read())
    peak = Peak(proc.pid)
    peak.start()
    time.sleep(1.0)
    load = os.getloadavg()
    began, line = replay(pcap, rate)
    ended = time.time()
    last_count, last_change = -1, time.time()
    while len(seen) < len(wanted):
        if len(seen) != last_count:
            last_count, last_change = len(seen), time.time()
        elif time.time() - last_change > patience:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=600)[1]
    reader.join(10)
    peak.running = False
    peak.join()
    catch_up = round(max(seen.values()) - ended, 2) if seen else None
    return {"rate": rate, "backend": backend, "jobs": jobs, "replay": line, "replay_seconds": round(ended - began, 2),
            "load_before": [round(x, 2) for x in load],
            "kernel_drops": _grab(err, r"kernel dropped (\d+)"), "spool_drops": _grab(err, r"spool dropped (\d+)"),
            "captured": _grab(err, r"(\d+) packets captured"), "analysed": _grab(err, r"(\d+) packets analysed"),
            "messages": len(seen), "of": len(wanted),
            "catch_up_seconds": catch_up if len(seen) == len(wanted) else None,
            "last_message_after_replay": catch_up,
            "peak_pss_mib": round(peak.pss / 1024, 1), "peak_rss_mib": round(peak.rss / 1024, 1),
            "processes": peak.processes, "summary": err.strip().splitlines()[-2:]}


def soak(pcap: Path, manifest: dict, rate: int, seconds: float, jobs: int | None) -> dict:
    """Replay the corpus in a loop for ``seconds`` while live runs; memory sampled every 10 s."""
    cmd = [sys.executable, "-m", "maildissect.cli", "live", "-i", "lo", "--format", "jsonl"]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    count = [0]

    def read():
        for line in proc.stdout:
            if '"record": "message"' in line:
                count[0] += 1
    threading.Thread(target=read, daemon=True).start()
    proc.stderr.readline()
    time.sleep(1.0)
    per_loop = manifest["packets"] / rate
    loops = max(1, int(seconds / per_loop))
    player = subprocess.Popen(["tcpreplay", "-i", "lo", f"--pps={rate}", f"--loop={loops}", str(pcap)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    began = time.time()
    samples = []
    while player.poll() is None:
        time.sleep(10.0)
        pss, rss = _memory(_tree(proc.pid))
        samples.append((round(time.time() - began), round(pss / 1024, 1), round(rss / 1024, 1), count[0]))
        print(f"  {samples[-1][0]:5d} s: PSS {samples[-1][1]} MiB, RSS {samples[-1][2]} MiB, "
              f"{samples[-1][3]} messages printed", flush=True)
    time.sleep(5.0)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=600)[1]
    return {"rate": rate, "loops": loops, "seconds": round(time.time() - began), "messages": count[0],
            "expected": loops * len(manifest["messages"]), "samples": samples,
            "summary": err.strip().splitlines()[-2:], "load": os.getloadavg()}


def table(rows: list[dict]) -> str:
    out = ["| rate asked (pkts/s) | replayed at | backend | kernel drops | spool drops | messages "
           "| last message after the replay (s) | peak memory, PSS (RSS) MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = re.search(r"sent in ([\d.]+) seconds", r["replay"])
        m2 = re.search(r"Actual: (\d+) packets", r["replay"])
        actual = f"{int(m2.group(1)) / float(m.group(1)):,.0f}/s" if m and m2 and float(m.group(1)) else "?"
        if r["backend"] == "tcpdump -w (baseline)":
            out.append(f"| {r['rate']:,} | {actual} | tcpdump -w alone ({r['captured']:,} captured) "
                       f"| {r['kernel_drops']} | - | - | - | - |")
            continue
        spool = r["spool_drops"] if r["spool_drops"] is not None else "-"
        last = r["last_message_after_replay"]
        last = "-" if last is None else f"{max(0.0, last):.1f}"
        out.append(f"| {r['rate']:,} | {actual} | {r['backend']} | {r['kernel_drops']} | {spool} "
                   f"| {r['messages']}/{r['of']} | {last} | {r['peak_pss_mib']} ({r['peak_rss_mib']}) |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="20000,50000,100000,200000")
    ap.add_argument("--backends", default="spool,scapy,tcpdump")
    ap.add_argument("--jobs", type=int, default=None, help="--jobs for maildissect live (default: its own)")
    ap.add_argument("--runs", type=int, default=1, help="runs of each rate and backend")
    ap.add_argument("--patience", type=float, default=15.0,
                    help="stop waiting when no new message has come for this many seconds")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--work", default="/tmp/maildissect-bench-live")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--table", default=None, metavar="JSON", help="print the table of an earlier --json and stop")
    ap.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                    help="replay the corpus in a loop this long, sampling memory (instead of the rates)")
    ap.add_argument("--soak-rate", type=int, default=20000)
    a = ap.parse_args()
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return
    if os.geteuid() != 0:
        raise SystemExit("capturing and replaying on lo need root")
    for tool in ("tcpdump", "tcpreplay"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y tcpdump tcpreplay")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    pcap, manifest = build_corpus(work)
    print(f"corpus: {manifest['packets']} packets, {pcap.stat().st_size / 1e6:.0f} MB, "
          f"{len(manifest['messages'])} messages; {os.cpu_count()} CPUs", flush=True)
    if a.soak:
        result = soak(pcap, manifest, a.soak_rate, a.soak, a.jobs)
        print(json.dumps(result))
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=1))
        return
    rows = []
    for rate in [int(x) for x in a.rates.split(",")]:
        if not a.no_baseline:
            b = baseline(pcap, rate, work)
            rows.append({"rate": rate, "backend": "tcpdump -w (baseline)", **b})
            print(json.dumps(rows[-1]), flush=True)
        for backend in a.backends.split(","):
            for _ in range(a.runs):
                rows.append(run_live(pcap, manifest, rate, backend, a.jobs, a.patience))
                print(json.dumps(rows[-1]), flush=True)
    print()
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
