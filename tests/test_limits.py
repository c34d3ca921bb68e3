"""Limits: documented in one place, enforced, and settable from the CLI and the API.

docs/limits.md is generated from the comments in maildissect/config.py (every
limit must have one); every limit must be read somewhere outside config.py;
``--limit NAME=VALUE`` and ``analyze(limits={...})`` must change what the
parsers do (a few limits are driven through the command line on real
captures) and refuse nonsense with a usage error.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from maildissect import analyze
from maildissect.cli import cli
from maildissect.config import Limits, limits_markdown

ROOT = Path(__file__).resolve().parent.parent
SMTP = ROOT / "captures" / "smtp.pcap"
JOURNEY = ROOT / "captures" / "journey.pcap"


def test_every_limit_is_documented_in_config_and_docs():
    src = inspect.getsource(Limits)
    page = (ROOT / "docs" / "limits.md").read_text()
    for name in Limits.names():
        assert re.search(rf"^    {name}: \w+ = [^#\n]+#\s*\S", src, re.M), f"{name} has no comment in config.py"
        assert f"`{name}`" in page, f"{name} is missing from docs/limits.md"
    assert page == limits_markdown(), "docs/limits.md is stale: run python docs/gen.py"


def test_every_limit_is_read_outside_config():
    code = "\n".join(p.read_text() for p in (ROOT / "maildissect").rglob("*.py") if p.name != "config.py")
    unused = [n for n in Limits.names() if not re.search(rf"(limits|lim|self\.limits|config\.limits)\.{n}\b|\b{n}=",
                                                          code)]
    assert not unused, f"limits never read: {unused}"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def anomaly_names(*args) -> list[str]:
    res = run("anomalies", *args, "-f", "jsonl", "-q", "-j", "1")
    assert res.exit_code == 0, res.output
    return [json.loads(line)["name"] for line in res.output.splitlines()]


@pytest.mark.parametrize("limit,anomaly", [
    ("max_line=8", "smtp_line_too_long"),
    ("max_message_size=1K", "smtp_message_too_large"),
    ("max_records=3", "session_records_capped"),
    ("max_headers=2", "mime_too_many_headers"),
])
def test_limit_through_the_cli(limit, anomaly):
    assert anomaly not in anomaly_names(SMTP)
    assert anomaly in anomaly_names(SMTP, "--limit", limit)


def test_message_over_the_size_limit_is_still_hashed_whole():
    plain = json.loads(run("messages", SMTP, "-f", "jsonl", "-q", "-j", "1").output.splitlines()[0])
    capped = json.loads(run("messages", SMTP, "-f", "jsonl", "-q", "-j", "1", "--limit",
                            "max_message_size=1K").output.splitlines()[0])
    assert plain["size"] > 1024 and capped["size"] == plain["size"] and capped["sha256"] == plain["sha256"]


def test_flow_table_limit_through_the_cli():
    res = run("flows", JOURNEY, "-f", "jsonl", "-q", "--limit", "max_flows=2")
    assert res.exit_code == 0
    assert "tcp_flow_limit" in anomaly_names(JOURNEY, "--limit", "max_flows=2")
    # an evicted connection that goes on becomes a new flow: none is lost
    assert len(res.output.splitlines()) >= len(run("flows", JOURNEY, "-f", "jsonl", "-q").output.splitlines())


def test_limits_through_the_api():
    names = {a.name for a in analyze(str(SMTP), limits={"max_line": 8}).records.anomalies}
    assert "smtp_line_too_long" in names
    assert analyze(str(SMTP), limits=Limits(max_line=8)).config.limits.max_line == 8
    with pytest.raises(ValueError, match="unknown limit"):
        analyze(str(SMTP), limits={"max_lines": 8})


@pytest.mark.parametrize("value,message", [
    ("nope=1", "unknown limit"), ("max_line=abc", "bad value"), ("max_line", "expected NAME=VALUE"),
    ("max_line=-5", "cannot be negative"), ("max_line=1.5", "whole number"), ("max_line=", "expected NAME=VALUE"),
])
def test_bad_limit_is_a_usage_error(value, message):
    res = subprocess.run([sys.executable, "-m", "maildissect.cli", "analyze", str(SMTP), "-q", "--limit", value],
                         capture_output=True, text=True)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("changes", [{"max_line": -1}, {"max_line": 2.5}, {"max_line": "8"}, {"max_line": True},
                                     {"idle_timeout": -0.1}])
def test_updated_refuses_nonsense(changes):
    with pytest.raises(ValueError):
        Limits().updated(**changes)


def test_updated_accepts_sizes_and_floats():
    lim = Limits().updated(max_line=1.5 * 1024 * 1024, fragment_timeout=2)
    assert lim.max_line == 1572864 and isinstance(lim.max_line, int)
    assert lim.fragment_timeout == 2.0 and isinstance(lim.fragment_timeout, float)


def test_superscript_port_is_a_usage_error():
    """--port ²=smtp passed str.isdigit() and int() raised: an internal error instead of exit 2."""
    res = subprocess.run([sys.executable, "-m", "maildissect.cli", "analyze", str(SMTP), "-q", "--port", "²=smtp"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "bad port" in res.stderr
