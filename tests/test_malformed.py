"""The malformed-capture suite (tests/captures/malformed/): every file, every command.

For each capture of the suite (tests/malformed/make_suite.py; the large ones
are built here into a temporary directory) ``maildissect analyze``,
``messages``, ``extract`` and ``export`` run in a subprocess whose peak
memory is measured with ``os.wait4``, and each run must:

- finish with the expected exit status: 0, or 1 with a one-line error and no
  traceback for a file that is not a capture;
- report the anomalies the case is about, and no anomaly that means a bug;
- keep what was parsed before the damage (messages, commands, logins, HTTP
  requests the case lists);
- write nothing outside the extraction directory;
- stay under the case's memory cap.

The real ``maildissect`` entry point is run as well for every file that is not
a capture (its standard error must be exactly one line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.malformed import make_suite

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "captures" / "malformed"
MANIFEST = json.loads((SUITE / "manifest.json").read_text())
CASES = {c["name"]: c for c in MANIFEST["cases"]}
#: the one catch-all: a dissector (or the MIME parser under it) raised, which is a bug
BUG_ANOMALIES = {"dissector_error"}


# The command is started by this small launcher, which reaps it with os.wait4 and writes
# its ru_maxrss to a file. Measuring from the test process itself would be wrong: Linux
# folds the memory of the process that forks (or vforks) into the child's peak at exec,
# so every child of a 1 GB pytest process would seem to use 1 GB.
LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_measured(argv: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str, str, int, float]:
    """Run ``argv``; return (exit status, stdout, stderr, peak RSS in MiB, seconds).

    Output goes to files (no pipe to fill up); the peak resident set size is
    ``ru_maxrss`` from ``os.wait4`` (KiB on Linux), taken by :data:`LAUNCHER`.
    """
    tag = time.monotonic_ns()
    out, err, usage = cwd / f"stdout-{tag}", cwd / f"stderr-{tag}", cwd / f"usage-{tag}"
    env = {k: v for k, v in os.environ.items() if k != "MAILDISSECT_DEBUG"}
    env["COLUMNS"] = "160"
    start = time.monotonic()
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, str(usage), *argv], stdout=fo,
                              stderr=fe, cwd=cwd, env=env, timeout=timeout)
    assert proc.returncode == 0, f"launcher failed: {err.read_text()}"
    status, maxrss = map(int, usage.read_text().split())
    return (status, out.read_text(errors="replace"), err.read_text(errors="replace"), maxrss // 1024,
            time.monotonic() - start)


@pytest.fixture(scope="session")
def large_captures(tmp_path_factory):
    """The large cases, built once per test session into a temporary directory."""
    directory = tmp_path_factory.mktemp("malformed-large")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = make_suite.build(name, directory)
        return built[name]
    return get


def capture_path(case: dict, large_captures) -> Path:
    return large_captures(case["name"]) if case["large"] else SUITE / case["name"]


def limit_args(case: dict) -> list[str]:
    return [arg for name, value in case["limits"].items() for arg in ("--limit", f"{name}={value}")]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_one_line_error(stderr: str, expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("maildissect: error: ") and expected in lines[0], lines[0]
    assert "internal error" not in lines[0] and "Traceback" not in stderr


def test_suite_is_up_to_date():
    """The committed files are what make_suite.py builds: deterministic, and nobody edited them."""
    assert make_suite.main(["--check"]) == 0


def test_manifest_covers_every_case():
    assert set(CASES) == set(make_suite.CASES)
    committed = {p.name for p in SUITE.iterdir() if p.name not in ("manifest.json", "README.md")}
    assert committed == {n for n, c in CASES.items() if not c["large"]}
    readme = (SUITE / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in CASES), "README.md lists every case"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c["status"]])
def test_not_a_capture_is_one_line_error(name, tmp_path):
    """The installed entry point itself (not only the command functions): exit 1, one line."""
    status, out, err, rss, _ = run_measured([sys.executable, "-m", "maildissect.cli", "analyze",
                                             str(SUITE / name)], tmp_path)
    assert status == 1, err
    check_one_line_error(err, CASES[name]["error"])


def _marks(case):
    return [pytest.mark.slow] if case["large"] else []


def run_case(name: str, directory: Path, large_captures) -> dict:
    """Run the four commands on one case (in one measured subprocess); what the checks need."""
    case = CASES[name]
    path = capture_path(case, large_captures)
    directory.mkdir(parents=True, exist_ok=True)
    outdir = directory / "out"
    status, _out, err, rss, seconds = run_measured(
        [sys.executable, str(ROOT / "tests" / "malformed" / "run_commands.py"), str(outdir), str(path),
         *limit_args(case)], directory)
    return {"status": status, "stderr": err, "rss": rss, "seconds": seconds, "outdir": outdir}


@pytest.fixture(scope="session")
def suite_runs(request, tmp_path_factory, large_captures):
    """Every selected case, run two at a time (the machine has two cores), large ones first."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_malformed_capture"]
    selected.sort(key=lambda n: not CASES[n]["large"])
    base = tmp_path_factory.mktemp("malformed-runs")
    pool = ThreadPoolExecutor(2)
    futures = {n: pool.submit(run_case, n, base / f"case-{k}", large_captures) for k, n in enumerate(selected)}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(c)) for n, c in CASES.items()])
def test_malformed_capture(name, suite_runs):
    case = CASES[name]
    run = suite_runs[name].result()
    outdir = run["outdir"]
    assert run["status"] == 0, run["stderr"]
    results = json.loads((outdir / "results.json").read_text())
    for command, r in results.items():
        assert not r["traceback"], f"{command}: an exception escaped the command line:\n{r['traceback']}"
        assert r["status"] == case["status"], f"{command} exited {r['status']}: {r['stderr']}"
        if case["status"]:
            check_one_line_error(r["stderr"], case["error"])
            continue
        for line in r["stderr"].splitlines():
            # warnings about the capture and the commands' own notes ("12 tables written"), no error
            assert not line.startswith("maildissect: error") and "Traceback" not in line, f"{command}: {line}"
    assert run["rss"] <= case["max_rss_mb"], f"peak RSS {run['rss']} MiB above the {case['max_rss_mb']} MiB cap"
    if case["status"]:
        return

    export = outdir / "export"
    anomalies = read_jsonl(export / "anomalies.jsonl")
    names = {a["name"] for a in anomalies}
    missing = set(case["anomalies"]) - names
    assert not missing, f"anomalies not reported: {missing} (reported: {sorted(names)})"
    bugs = [a for a in anomalies if a["name"] in BUG_ANOMALIES or "internal error" in (a["detail"] or "")]
    assert not bugs, bugs

    # what came before the damage is kept, in every output that lists it
    subjects = {m["subject"] for m in read_jsonl(export / "messages.jsonl")}
    assert set(case["subjects"]) <= subjects, subjects
    assert set(case["subjects"]) <= {m["subject"] for m in read_jsonl(outdir / "messages.jsonl")}
    commands = {f"{c['protocol']} {c['command']}" for c in read_jsonl(export / "commands.jsonl")}
    assert set(case["commands"]) <= commands, sorted(commands)
    users = {c["user"] for c in read_jsonl(export / "credentials.jsonl")}
    assert set(case["users"]) <= users, users
    uris = {h["uri"] for h in read_jsonl(export / "http.jsonl")}
    assert set(case["uris"]) <= uris, uris

    # extraction: an index, and every file inside the directory
    extract = (outdir / "extract").resolve()
    assert (extract / "index.csv").is_file()
    for dirpath, dirnames, filenames in os.walk(extract):
        for f in filenames + dirnames:
            p = Path(dirpath) / f
            assert not p.is_symlink() and p.resolve().is_relative_to(extract), p
    if case["subjects"]:
        assert len(list((extract / "messages").iterdir())) >= len(case["subjects"])


def test_mutated_suite_captures_run_clean(tmp_path):
    """Captures of the suite mutated as the fuzzers mutate them (bytes flipped, ranges cut,
    duplicated and zeroed) analyse without a traceback or a bug anomaly, in bounded memory."""
    import random
    import zlib
    rng = random.Random(10)
    names = [n for n, c in CASES.items() if not c["status"] and not c["large"]]
    paths = []
    for k, name in enumerate(sorted(names)[::3]):
        # (zlib, not gzip.decompress: one of the files is a gzip stream cut short on purpose)
        data = bytearray(zlib.decompressobj(31).decompress((SUITE / name).read_bytes()))
        for _ in range(20):
            op, pos = rng.randrange(4), rng.randrange(24, len(data))
            if op == 0:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                del data[pos:pos + rng.randrange(1, 200)]
            elif op == 2:
                data[pos:pos] = data[pos:pos + rng.randrange(1, 400)]
            else:
                data[pos:pos + 8] = b"\0" * 8
        path = tmp_path / f"mutated-{k}-{name.removesuffix('.gz')}"
        path.write_bytes(bytes(data))
        paths.append(path)

    def one(path):
        return run_measured([sys.executable, "-m", "maildissect.cli", "export", str(path), "-j", "1", "-f", "jsonl",
                             "-o", str(tmp_path / (path.name + ".out"))], tmp_path)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, paths))
    for path, (status, _out, err, rss, _s) in zip(paths, results):
        assert status == 0 and "Traceback" not in err and "internal error" not in err, (path.name, err)
        assert rss < 400, (path.name, rss)
        anomalies = read_jsonl(tmp_path / (path.name + ".out") / "anomalies.jsonl")
        assert not [a for a in anomalies if a["name"] in BUG_ANOMALIES], (path.name, anomalies)


@pytest.mark.parametrize("name", ["invalid-utf8.pcap.gz", "nul-bytes.pcap.gz"])
def test_hostile_text_in_every_output_format(name, tmp_path):
    """Invalid UTF-8 and NUL bytes reach every writer: each export format, every listing in
    every format, the timeline, the journeys and the HTML report (in-process, for speed)."""
    from click.testing import CliRunner

    from maildissect.cli import TABLE_HELP, cli
    path = str(SUITE / name)

    def ok(*args):
        res = CliRunner().invoke(cli, [*args, "-q", "-j", "1"], catch_exceptions=False)
        assert res.exit_code == 0, (args, res.output)
        return res.output
    for fmt in ("jsonl", "csv", "parquet", "zeek", "zeek-json"):
        ok("export", path, "-f", fmt, "-o", str(tmp_path / fmt))
    for table in TABLE_HELP:
        for fmt in ("table", "jsonl", "csv"):
            ok(table, path, "-f", fmt, "-o", str(tmp_path / f"{table}.{fmt}"))
    ok("timeline", path)
    ok("journeys", path)
    ok("report", path, "-o", str(tmp_path / "report.html"))
    import pandas as pd
    assert len(pd.read_parquet(tmp_path / "parquet" / "commands.parquet"))
