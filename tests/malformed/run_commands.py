#!/usr/bin/env python3
"""Run maildissect commands on one capture in one process, and record how each ended.

    python tests/malformed/run_commands.py OUTDIR CAPTURE [--limit NAME=VALUE ...]

Used by tests/test_malformed.py: the test starts this script as a subprocess
and measures its peak memory with ``os.wait4``; the script runs

    maildissect analyze CAPTURE
    maildissect messages CAPTURE -f jsonl -o OUTDIR/messages.jsonl
    maildissect extract CAPTURE -o OUTDIR/extract
    maildissect export CAPTURE -f jsonl -o OUTDIR/export

through the real command-line entry point (``maildissect.cli.cli``), each
with its standard output and error captured, and writes
``OUTDIR/results.json``: per command its exit status, its standard error,
and the traceback if an exception escaped the command line (which must never
happen). Running the four commands in one process saves three interpreter
starts per capture; the peak memory is then the largest of the four.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run(args: list[str]) -> dict:
    from maildissect.cli import cli
    out, err = io.StringIO(), io.StringIO()
    status, tb = 0, ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(args, prog_name="maildissect", standalone_mode=True)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - exactly what the test must see
            status, tb = -1, traceback.format_exc()
    return {"args": args, "status": status, "stderr": err.getvalue(), "traceback": tb,
            "stdout_bytes": len(out.getvalue())}


def main(argv: list[str]) -> int:
    outdir, capture, extra = Path(argv[0]), argv[1], argv[2:]
    outdir.mkdir(parents=True, exist_ok=True)
    os.environ.pop("MAILDISSECT_DEBUG", None)
    common = ["-j", "1", *extra]
    commands = {
        "analyze": ["analyze", capture, *common],
        "messages": ["messages", capture, "-f", "jsonl", "-o", str(outdir / "messages.jsonl"), *common],
        "extract": ["extract", capture, "-o", str(outdir / "extract"), *common],
        "export": ["export", capture, "-f", "jsonl", "-o", str(outdir / "export"), *common],
    }
    results = {name: run(args) for name, args in commands.items()}
    (outdir / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
