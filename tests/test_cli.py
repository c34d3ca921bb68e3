"""The command line: help, formats, filters, files, exit codes, one-line errors."""

import json
import pathlib
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from maildissect.cli import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
JOURNEY = str(ROOT / "captures" / "journey.pcap")
SMTP = str(ROOT / "tests" / "captures" / "zeek" / "smtp.pcap")


def run(*args, ok=True):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.mark.parametrize("command", [None] + sorted(cli.commands))
def test_every_help_reads(command):
    res = run(*([command] if command else []), "--help")
    assert "Usage:" in res.output and len(res.output.splitlines()) > 4


def test_analyze_summary_and_bundled_sample():
    res = run("analyze", JOURNEY, "-q")
    for word in ("sessions", "messages", "Credentials", "Meeting notes"):
        assert word in res.output
    res = run("analyze", "-q")  # no argument: the bundled sample
    assert "journey.pcap" in res.output


@pytest.mark.parametrize("table", ["flows", "sessions", "messages", "attachments", "credentials", "commands",
                                   "anomalies", "http", "mailboxes"])
def test_every_table_in_every_format(table, tmp_path):
    for fmt in ("jsonl", "csv", "parquet", "table"):
        out = tmp_path / f"{table}.{fmt}"
        run(table, JOURNEY, "-f", fmt, "-o", out, "-q")
        assert out.exists()
        if fmt == "parquet":
            df = pd.read_parquet(out)
        elif fmt == "csv":
            df = pd.read_csv(out)
        elif fmt == "jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            df = pd.DataFrame(rows)
        else:
            continue
        if len(df):
            assert table not in ("flows",) or "client_sha256" in df.columns


def test_jsonl_timestamps_are_iso_utc_and_lists_are_arrays():
    res = run("messages", JOURNEY, "-f", "jsonl", "-q")
    row = json.loads(res.output.splitlines()[0])
    assert row["ts"].endswith("Z") and "T" in row["ts"]
    assert isinstance(row["to"], list) and isinstance(row["attachments"], list)
    assert {"filename", "sha256", "md5", "sha1", "size", "content_type"} <= set(row["attachments"][0])


def test_filters():
    res = run("messages", JOURNEY, "-f", "jsonl", "--protocol", "imap", "-q")
    rows = [json.loads(x) for x in res.output.splitlines()]
    assert rows and {r["protocol"] for r in rows} == {"imap"}
    res = run("messages", JOURNEY, "-f", "jsonl", "--subject", "meeting", "-q")
    rows = [json.loads(x) for x in res.output.splitlines()]
    assert rows and all("meeting" in r["subject"].lower() for r in rows)
    res = run("messages", JOURNEY, "-f", "jsonl", "--from", "alice@", "--to", "bob@", "-q")
    rows = [json.loads(x) for x in res.output.splitlines()]
    assert rows and all("alice@" in r["from"] for r in rows)
    res = run("commands", JOURNEY, "-f", "jsonl", "--session", "0", "-q")
    assert {json.loads(x)["session_id"] for x in res.output.splitlines()} == {0}


def test_redact_masks_secrets_everywhere():
    plain = run("credentials", JOURNEY, "-f", "jsonl", "-q").output
    secrets = {json.loads(x)["secret"] for x in plain.splitlines()}
    assert secrets and all(secrets)
    for table in ("credentials", "commands"):
        out = run(table, JOURNEY, "-f", "jsonl", "--redact", "-q").output
        for s in secrets:
            assert s not in out
    assert "********" in run("credentials", JOURNEY, "--redact", "-q").output


def test_export_writes_every_table(tmp_path):
    from maildissect.analysis import TABLES
    run("export", JOURNEY, "-o", tmp_path / "x", "-f", "parquet", "-q")
    for t in TABLES:
        assert (tmp_path / "x" / f"{t}.parquet").exists()
    msgs = pd.read_parquet(tmp_path / "x" / "messages.parquet")
    assert isinstance(msgs["ts"].dtype, pd.DatetimeTZDtype)


def test_extract_writes_eml_and_attachments_matching_hashes(tmp_path):
    import hashlib
    out = tmp_path / "ex"
    run("extract", SMTP, "-o", out, "-q")
    index = pd.read_csv(out / "index.csv")
    emls = index[index["kind"] == "message"]
    assert len(emls) == 2  # Zeek's smtp.log has two transactions
    for _, row in index.iterrows():  # every written file, with its hashes
        data = (out / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and hashlib.md5(data).hexdigest() == row["md5"]
        assert hashlib.sha1(data).hexdigest() == row["sha1"] and len(data) == row["size"]
    assert list(index[index["kind"] == "attachment"]["filename"]) == ["NEWS.txt"]
    atts = {p.name: p.stat().st_size for p in (out / "attachments").iterdir()}
    assert atts  # Zeek's smtp.pcap carries attachments
    again = run("extract", SMTP, "-o", out, "-q")
    assert again.exit_code == 0
    assert sorted(p.name for p in (out / "attachments").iterdir()) == sorted(atts)  # identical: not rewritten


def test_follow_formats():
    res = run("flows", JOURNEY, "-f", "jsonl", "-q")
    flows = [json.loads(x) for x in res.output.splitlines()]
    smtp = next(f for f in flows if f["server_port"] == 587)
    text = run("follow", JOURNEY, "--flow", smtp["flow_id"]).output
    assert "ehlo" in text.lower() and "Follow: tcp,ascii" in text
    hexdump = run("follow", JOURNEY, "--flow", smtp["flow_id"], "-f", "hex", "--side", "client").output
    assert "00000000  65 68 6c 6f" in hexdump  # "ehlo", as smtplib sends it
    raw = subprocess.run([sys.executable, "-m", "maildissect.cli", "follow", JOURNEY, "--flow",
                          str(smtp["flow_id"]), "-f", "raw", "--side", "client"], capture_output=True, check=True)
    import hashlib
    assert hashlib.sha256(raw.stdout).hexdigest() == smtp["client_sha256"]
    res = run("follow", JOURNEY, "--flow", 999, ok=False)
    assert res.exit_code == 1 and "no flow 999" in res.output


@pytest.mark.parametrize("args,code", [
    (["messages"], 2),  # missing capture
    (["messages", JOURNEY, "-f", "xml"], 2),
    (["messages", JOURNEY, "--limit", "nonsense=3"], 2),
    (["messages", JOURNEY, "--limit", "max_line"], 2),
    (["messages", JOURNEY, "--port", "99999=smtp"], 2),
    (["follow", JOURNEY], 2),
    (["messages", "/nonexistent/x.pcap"], 1),
])
def test_usage_and_input_errors(args, code):
    res = subprocess.run([sys.executable, "-m", "maildissect.cli", *args], capture_output=True, text=True)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr


def test_limit_and_port_options_work():
    res = run("messages", JOURNEY, "-f", "jsonl", "--limit", "max_message_size=1K", "-q")
    rows = [json.loads(x) for x in res.output.splitlines()]
    assert any(r["complete"] is False for r in rows)
    res = run("anomalies", JOURNEY, "-f", "jsonl", "--limit", "max_message_size=1K", "-q")
    assert "too_large" in res.output or "limit" in res.output


def test_progress_bar_shows_its_words_not_style_names(monkeypatch):
    """The progress bar's console reads no markup, so its columns must not rely on it."""
    import io

    from rich.console import Console

    from maildissect import cli as cli_module
    monkeypatch.setattr(cli_module.sys.stderr, "isatty", lambda: True, raising=False)
    progress, update = cli_module._progress_callback(quiet=False)
    assert progress is not None
    update(1000, 4000)
    out = io.StringIO()
    # rendered as its own console renders it: without markup
    Console(file=out, width=100, color_system=None, markup=False).print(progress.get_renderable())
    text = out.getvalue()
    assert "reading" in text and "[progress" not in text
