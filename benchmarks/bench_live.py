#!/usr/bin/env python3
"""How many packets per second `maildissect live` keeps up with on loopback, and its drops.

    sudo python benchmarks/bench_live.py [--packets 200000] [--backend scapy|tcpdump|all]

A local TCP server on 127.0.0.1:2525 receives ``--packets`` small segments
(TCP_NODELAY, one 64-byte SMTP-like line per send, so about one packet per
send plus its ACK) as fast as one client can write them, while `maildissect
live` captures. Reported: packets seen, the rate at which they arrived, and
the kernel's drop count from the capture's own statistics.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import threading
import time


def blast(count: int) -> float:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 2525))
    srv.listen(1)

    def sink():
        conn, _ = srv.accept()
        conn.sendall(b"220 bench ESMTP\r\n")
        while conn.recv(1 << 20):
            pass
        conn.close()
    t = threading.Thread(target=sink, daemon=True)
    t.start()
    c = socket.create_connection(("127.0.0.1", 2525))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.recv(100)
    line = b"NOOP " + b"x" * 57 + b"\r\n"
    began = time.perf_counter()
    for _ in range(count):
        c.send(line)
    elapsed = time.perf_counter() - began
    c.close()
    t.join(10)
    srv.close()
    return elapsed


def run(backend: str, count: int) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "maildissect.cli", "live", "-i", "lo", "--backend", backend,
                             "-f", "tcp port 2525", "--format", "jsonl"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while "capturing on" not in proc.stderr.readline():
        if proc.poll() is not None:
            raise SystemExit(proc.stderr.read())
    time.sleep(0.5)
    elapsed = blast(count)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    m = re.search(r"(\d+) packets", err)
    d = re.search(r"kernel dropped (\d+)", err)
    seen = int(m.group(1)) if m else 0
    return {"backend": backend, "sends": count, "send_seconds": round(elapsed, 2), "packets_seen": seen,
            "packets_per_second": round(seen / elapsed) if elapsed else None,
            "kernel_drops": int(d.group(1)) if d else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--backend", choices=["scapy", "tcpdump", "all"], default="all")
    a = ap.parse_args()
    for backend in (["scapy", "tcpdump"] if a.backend == "all" else [a.backend]):
        print(run(backend, a.packets), flush=True)


if __name__ == "__main__":
    main()
