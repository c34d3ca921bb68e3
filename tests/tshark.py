"""Running tshark from tests (skipped with a reason when it is not installed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")


def follow_raw(path, streams) -> dict[int, dict]:
    """tshark -z follow,tcp,raw for many streams in one pass.

    Returns {stream: {"nodes": [(ip, port), (ip, port)], "data": [bytes node0, bytes node1]}}.
    """
    out = {}
    streams = list(streams)
    for i in range(0, len(streams), 200):  # keep the command line reasonable
        args = [TSHARK, "-r", str(path), "-q", "-o", "tcp.desegment_tcp_streams:TRUE",
                "-o", "tcp.reassemble_out_of_order:TRUE"]
        for s in streams[i:i + 200]:
            args += ["-z", f"follow,tcp,raw,{s}"]
        text = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        out.update(_parse(text))
    return out


def _parse(text: str) -> dict[int, dict]:
    res, cur = {}, None
    for line in text.splitlines():
        if line.startswith("Filter: tcp.stream eq "):
            cur = {"nodes": [], "data": [bytearray(), bytearray()]}
            res[int(line.split()[-1])] = cur
        elif cur is None or not line.strip() or line.startswith("="):
            continue
        elif line.startswith("Node "):
            addr = line.split(": ", 1)[1]
            ip, _, port = addr.rpartition(":")
            cur["nodes"].append((ip.strip("[]"), int(port)))
        elif line.startswith("Follow:"):
            continue
        else:
            node = 1 if line.startswith("\t") else 0
            cur["data"][node] += bytes.fromhex(line.strip())
    for v in res.values():
        v["data"] = [bytes(d) for d in v["data"]]
    return res
