"""The hostile-content suite (tests/captures/hostile/): every command on every capture.

Each capture of the suite (built by tests/hostile/make_suite.py) attacks the
person reading maildissect's output: lone surrogates by every decoding route,
terminal escapes and rich markup in every field a person sees, HTML payloads,
spreadsheet formulas, planted secrets, hostile file names. Every command runs
on each (in process, through click's test runner, whose streams are strict
UTF-8 like a terminal's), with and without ``--redact``: every listing table
as a terminal table (forced, 100 columns), JSON lines, CSV and Parquet;
analyze, timeline, journeys, report, extract, export in every format
(zeek and zeek-json too), follow on every connection, and live replaying the
capture. Then:

- every run exits 0 with no traceback and no "internal error";
- terminal output holds no ESC, C1, bidi or other control character and no
  markup error, and fits its width (also on a real pseudo-terminal);
- no CSV cell starts a formula (listings, timeline, journeys, export, extract's index);
- with ``--redact`` no planted secret, nor a base64 piece of it, is left in any
  output (the report masks them without ``--redact`` as well);
- ``extract`` writes nothing outside its directory and no Windows device name;
- the HTML report shows the capture's HTML as text: no script, event handler or
  javascript: link of the capture's;
- each capture raises the anomalies its repairs must report.

The large case (one SMTP session of 16,000 messages) is checked by
tests/test_long_session.py and timed by benchmarks/bench_correlation.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import traceback
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.cells import cell_len

from maildissect.cli import cli
from maildissect.output import tables
from maildissect.output.extract import is_device_name
from maildissect.output.spreadsheet import FORMULA_START
from tests.hostile import make_suite
from tests.test_live import ReplaySource
from tests.test_redact import secret_forms, texts_of
from tests.test_terminal_output import SGR, assert_inert, pty_run

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "captures" / "hostile"
MANIFEST = json.loads((SUITE / "manifest.json").read_text())
ALL_CASES = {c["name"]: c for c in MANIFEST["cases"]}
CASES = {n: c for n, c in ALL_CASES.items() if not c["large"]}
TABLES = ["flows", "sessions", "messages", "attachments", "files", "credentials", "commands", "http", "mailboxes",
          "anomalies"]
WIDTH = 100


@dataclass
class Run:
    label: str
    args: list[str]
    code: int
    out: bytes
    err: bytes
    error: str  # the traceback of an exception that escaped the command line
    terminal: bool = False  # printed as for a terminal (tables fitted to WIDTH)
    redact: bool = False


@dataclass
class Runs:
    case: dict
    path: Path
    tmp: Path
    runs: list[Run] = field(default_factory=list)

    def get(self, label: str) -> Run:
        return next(r for r in self.runs if r.label == label)

    def out(self, label: str) -> str:
        return self.get(label).out.decode("utf-8")


def invoke(args: list[str]) -> tuple[int, bytes, bytes, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    error = ""
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        error = "".join(traceback.format_exception(res.exception))
    return res.exit_code, res.stdout_bytes, res.stderr_bytes, error


def run_everything(path: Path, tmp: Path, case: dict) -> Runs:
    """Every command on ``path``, plain and with --redact; outputs under ``tmp``."""
    from maildissect import live as live_mod
    runs = Runs(case, path, tmp)
    cap = str(path)

    def go(label, args, terminal=False, redact=False):
        args = [*args, "-q", "-j", "1"] if args[0] != "follow" else args
        if redact:
            args.append("--redact")
        with pytest.MonkeyPatch.context() as mp:
            if terminal:
                mp.setattr(tables, "is_terminal", lambda f: True)
                mp.setenv("COLUMNS", str(WIDTH))
            if args[0] == "live":
                mp.setattr(live_mod, "open_live", lambda iface, bpf, backend: ReplaySource(str(path)))
            if args[0] == "extract":
                mp.chdir(tmp)  # a relative path that escaped would land in tmp
            code, out, err, error = invoke(args)
        runs.runs.append(Run(label, args, code, out, err, error, terminal, redact))

    for redact in (False, True):
        tag = "redact " if redact else ""
        d = tmp / ("redact" if redact else "plain")
        d.mkdir()
        for t in TABLES:
            go(f"{tag}{t} table", [t, cap], terminal=True, redact=redact)
            go(f"{tag}{t} piped", [t, cap], redact=redact)
            for fmt in ("jsonl", "csv"):
                go(f"{tag}{t} {fmt}", [t, cap, "-f", fmt], redact=redact)
            go(f"{tag}{t} parquet", [t, cap, "-f", "parquet", "-o", d / f"{t}.parquet"], redact=redact)
        for name, args in (("analyze", ["analyze"]), ("timeline", ["timeline"]), ("journeys", ["journeys"]),
                           ("journeys --summary", ["journeys", "--summary"])):
            go(f"{tag}{name} table", [args[0], cap, *args[1:]], terminal=True, redact=redact)
            go(f"{tag}{name} piped", [args[0], cap, *args[1:]], redact=redact)
            if name != "analyze":
                for fmt in ("csv", "jsonl"):
                    go(f"{tag}{name} {fmt}", [args[0], cap, *args[1:], "-f", fmt], redact=redact)
        go(f"{tag}report", ["report", cap, "-o", d / "report.html"], redact=redact)
        go(f"{tag}extract", ["extract", cap, "-o", f"{'redact' if redact else 'plain'}/extract"], redact=redact)
        for fmt in ("jsonl", "csv", "parquet", "zeek", "zeek-json"):
            go(f"{tag}export {fmt}", ["export", cap, "-f", fmt, "-o", d / f"export-{fmt}"], redact=redact)
        for fmt in ("table", "jsonl"):
            go(f"{tag}live {fmt}", ["live", "-i", "replay", "--backend", "scapy", "--format", fmt], redact=redact)
    flows = [json.loads(x) for x in runs.out("flows jsonl").splitlines()]
    for f in flows:
        for fmt in ("ascii", "hex"):
            go(f"follow {f['flow_id']} {fmt}", ["follow", cap, "--flow", str(f["flow_id"]), "-f", fmt], terminal=True)
    return runs


@pytest.fixture(scope="module", params=sorted(CASES), ids=lambda n: n.split(".")[0])
def suite(request, tmp_path_factory) -> Runs:
    case = CASES[request.param]
    tmp = tmp_path_factory.mktemp(request.param.split(".")[0])
    return run_everything(SUITE / case["name"], tmp, case)


# -- the suite itself ------------------------------------------------------------------------------

def test_suite_is_up_to_date():
    """The committed files are what make_suite.py builds: deterministic, and nobody edited them."""
    assert make_suite.main(["--check"]) == 0


def test_manifest_covers_every_case():
    assert set(ALL_CASES) == set(make_suite.CASES)
    committed = {p.name for p in SUITE.iterdir() if p.name not in ("manifest.json", "README.md")}
    assert committed == set(CASES)
    readme = (SUITE / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in ALL_CASES)
    assert sum(p.stat().st_size for p in SUITE.iterdir()) < 100_000  # small


# -- every command, every capture -------------------------------------------------------------------

def test_every_command_ends_normally(suite):
    assert len(suite.runs) > 100
    for r in suite.runs:
        where = f"{suite.case['name']}: {r.label}"
        assert r.error == "", f"{where}\n{r.error}"
        text = (r.out + r.err).decode("utf-8")  # (strict: the runner's streams already are)
        assert r.code == 0, f"{where}: exit {r.code}\n{text[-2000:]}"
        assert "Traceback" not in text and "internal error" not in text, where


def test_terminal_output_is_text_not_instructions(suite):
    for r in suite.runs:
        where = f"{suite.case['name']}: {r.label}"
        if r.label.startswith("follow"):
            # tshark's text: TAB indents the server's lines; CR is kept off a terminal (on one, it is
            # shown as "." -- test_on_a_real_terminal)
            assert_inert(r.out, where, allow="\n\t\r")
        elif r.terminal or r.label.endswith(("piped", "live table")):
            assert_inert(r.out, where)
        assert_inert(r.err, where)
        if r.terminal and not r.label.startswith("follow"):
            for line in r.out.decode().splitlines():
                assert cell_len(line) <= WIDTH, f"{where}: {line}"
    for r in suite.runs:  # JSON lines write controls as \u escapes
        if r.label.endswith("jsonl"):
            assert b"\x1b" not in r.out and "\u202e" not in r.out.decode()
            for line in r.out.decode().splitlines():
                json.loads(line)


def _csv_cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]


#: A number (latency -0.5): spreadsheets read it as a number, and numbers are never changed.
NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def test_no_csv_cell_starts_a_formula(suite):
    texts = {r.label: r.out.decode() for r in suite.runs if r.label.endswith(" csv")}
    for d in ("plain", "redact"):
        for f in sorted((suite.tmp / d / "export-csv").glob("*.csv")):
            texts[f"{d} export {f.name}"] = f.read_text(encoding="utf-8")
        texts[f"{d} extract index.csv"] = (suite.tmp / d / "extract" / "index.csv").read_text(encoding="utf-8")
    assert len(texts) > 30
    for where, text in texts.items():
        bad = [c for c in _csv_cells(text) if c.startswith(FORMULA_START) and not NUMBER.fullmatch(c)]
        assert not bad, f"{suite.case['name']}: {where}: {bad[:5]}"


SECRET_CASES = sorted(n for n, c in CASES.items() if c["secrets"])


@pytest.mark.parametrize("suite", SECRET_CASES, indirect=True, ids=lambda n: n.split(".")[0])
def test_no_planted_secret_survives_redact(suite):
    secrets = suite.case["secrets"]
    forms = {s["name"]: {f.lower() for f in secret_forms(s["secret"], s["user"])} for s in secrets}

    def leaks(text: str) -> list[str]:
        low = text.lower()
        return sorted(name for name, fs in forms.items() if any(f in low for f in fs))

    # the search can fail: without --redact the records show the secrets they keep
    shown = set(leaks(texts_of(suite.tmp / "plain" / "export-jsonl")))
    assert {s["name"] for s in secrets if s["kept"]} <= shown
    for r in suite.runs:
        if r.redact:
            assert not leaks((r.out + r.err).decode()), r.label
    for d in ("export-jsonl", "export-csv", "export-parquet", "export-zeek", "export-zeek-json"):
        assert not leaks(texts_of(suite.tmp / "redact" / d)), d
    # extract --redact: its index and everything but the originals (.eml files and attachments,
    # the exact bytes transferred, docs/robustness.md)
    for p in sorted((suite.tmp / "redact" / "extract").rglob("*")):
        if p.is_file() and p.suffix != ".eml" and "attachments" not in p.parts:
            assert not leaks(p.read_bytes().decode("utf-8", "replace")), p.name
    # the report masks by default, and with --redact
    assert not leaks((suite.tmp / "plain" / "report.html").read_text(encoding="utf-8"))
    assert not leaks((suite.tmp / "redact" / "report.html").read_text(encoding="utf-8"))
    assert not leaks((suite.tmp / "redact" / "extract" / "index.csv").read_text(encoding="utf-8"))


def test_extract_stays_in_its_directory_and_writes_no_device_name(suite):
    for d in ("plain", "redact"):
        base = suite.tmp / d
        assert {p.name for p in base.iterdir()} <= {"extract", "report.html", *(f"{t}.parquet" for t in TABLES),
                                                     *(f"export-{f}" for f in ("jsonl", "csv", "parquet", "zeek",
                                                                               "zeek-json"))}
        root = (base / "extract").resolve()
        written = []
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                assert not p.is_symlink(), p
                assert p.resolve().is_relative_to(root), p
                assert not is_device_name(name), p
                assert len(name.encode("utf-8")) <= 255 and name not in (".", ".."), p
                assert not any(ord(ch) < 0x20 or ch in "\\:*?\"<>|" for ch in name), p
                written.append(name)
        assert "index.csv" in written
    assert {p.name for p in suite.tmp.iterdir()} == {"plain", "redact"}  # nothing landed beside them


class _Scripts(HTMLParser):
    """What a browser would run: script elements, event handlers, javascript: URLs, frames."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.in_script = False
        self.scripts: list[str] = []
        self.active: list[str] = []  # attributes that run code or load something
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.in_script = True
            self.scripts.append("")
        for name, value in attrs:
            if name.startswith("on") or name in ("href", "src", "srcdoc", "action", "formaction", "data"):
                self.active.append(f"<{tag} {name}={value}>")
        if tag in ("iframe", "img", "svg", "object", "embed") or (tag == "body" and attrs):
            self.active.append(f"<{tag} {attrs}>")

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_script = False

    def handle_data(self, data):
        if self.in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def test_the_report_shows_html_as_text(suite):
    for d in ("plain", "redact"):
        html = (suite.tmp / d / "report.html").read_text(encoding="utf-8")
        for payload in make_suite.HTML:
            assert payload not in html, payload
        parsed = _Scripts()
        parsed.feed(html)
        for script in parsed.scripts:
            # the report's own scripts may carry the data as JSON strings, where a quote is \"
            assert 'alert("md-xss' not in script and "alert('md-xss" not in script
        assert not [a for a in parsed.active if "md-xss" in a or "evil.test" in a], parsed.active
        shown = "".join(parsed.text)
        for marker in suite.case["html_markers"]:
            assert marker in shown, marker  # shown, as text


def test_each_capture_raises_its_anomalies(suite):
    names = {json.loads(x)["name"] for x in suite.out("anomalies jsonl").splitlines()}
    assert set(suite.case["anomalies"]) <= names, set(suite.case["anomalies"]) - names
    assert "dissector_error" not in names and "live_render_error" not in suite.out("live jsonl")


def test_live_prints_every_session(suite):
    sessions = len(suite.out("sessions jsonl").splitlines())
    rows = [json.loads(x) for x in suite.out("live jsonl").splitlines()]
    assert sum(r["record"] == "session" for r in rows) == sessions
    assert sum(" session  #" in x for x in suite.out("live table").splitlines()) == sessions


# -- what each capture is for: the attack reaches the output, defused ------------------------------

@pytest.mark.parametrize("suite", ["terminal-escapes.pcap.gz"], indirect=True, ids=["terminal-escapes"])
def test_escapes_are_shown_as_placeholders(suite):
    for label in ("messages table", "analyze table", "journeys table", "commands table", "mailboxes table",
                  "http table", "credentials table", "attachments table", "files table", "timeline table",
                  "live table"):
        out = suite.out(label)
        assert "\u241b[2J" in out, label  # shown, as text
    for label in ("messages piped", "journeys piped", "timeline piped"):
        assert "\u241b[2J" in suite.out(label) and "[link=https://evil.test/]" in suite.out(label), label
    assert "Received:" in suite.out("journeys table")
    assert "\u27e8U+202E\u27e9" in suite.out("messages table")


@pytest.mark.parametrize("suite", ["csv-formulas.pcap.gz"], indirect=True, ids=["csv-formulas"])
def test_formulas_are_defused_not_dropped(suite):
    cells = set(_csv_cells(suite.out("messages csv")))
    assert "'" + make_suite.FORMULAS[0] in cells
    assert "'" + make_suite.FORMULAS[1] in set(_csv_cells(suite.out("sessions csv")))  # the HELO
    code, out, _, _ = invoke(["messages", suite.path, "-q", "-f", "csv", "--csv-raw"])
    assert code == 0 and make_suite.FORMULAS[0] in set(_csv_cells(out.decode()))


@pytest.mark.parametrize("suite", ["file-names.pcap.gz"], indirect=True, ids=["file-names"])
def test_hostile_file_names_are_written_defused(suite):
    written = {p.name for p in (suite.tmp / "plain" / "extract").rglob("*")}
    assert {"_CON .txt", "_NUL .txt", "_aux.tar.gz", "passwd", "shadow"} <= written, sorted(written)
    assert max(len(n.encode()) for n in written) <= 255


@pytest.mark.parametrize("suite", ["lone-surrogates.pcap.gz"], indirect=True, ids=["lone-surrogates"])
def test_surrogates_become_replacement_characters(suite):
    rows = [json.loads(x) for x in suite.out("messages jsonl").splitlines()]
    assert "hi+2D0-there" in {r["subject"] for r in rows}  # utf-7 is not a character set: read as UTF-8
    assert any("\ufffd" in (r["subject"] or "") for r in rows)  # a JMAP \ud83d escape
    details = suite.out("anomalies jsonl")
    assert "utf-7" in details and "unicode_escape" in details


# -- the capture file names -----------------------------------------------------------------------

EVIL_NAMES = [f"cap[link=https:evil.test]x[bold red]{make_suite.ESC}[2J\u202e\u009b.pcap.gz",
              '<img src=x onerror=alert("md-xss-file")>.pcap.gz']


def test_capture_file_names_are_data_too(tmp_path):
    for i, name in enumerate(EVIL_NAMES):
        path = tmp_path / name
        shutil.copy(SUITE / "terminal-escapes.pcap.gz", path)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tables, "is_terminal", lambda f: True)
            mp.setenv("COLUMNS", str(WIDTH))
            code, out, err, error = invoke(["analyze", path, "-j", "1"])
        assert code == 0 and not error, error or err
        assert_inert(out, "analyze"), assert_inert(err, "analyze")
        if i == 0:  # the files panel names the file, cleaned
            assert "x[bold red]\u241b[2J" in out.decode()
        code, _, err, error = invoke(["report", path, "-q", "-o", tmp_path / f"r{i}.html"])
        assert code == 0 and not error, error or err
        html = (tmp_path / f"r{i}.html").read_text(encoding="utf-8")
        parsed = _Scripts()
        parsed.feed(html)
        assert not [a for a in parsed.active if "md-xss" in a or "evil.test" in a]
        assert name.replace(".pcap.gz", "") in "".join(parsed.text)
    code, out = pty_run(["analyze", str(tmp_path / EVIL_NAMES[0]), "-q"], "100")
    assert code == 0, out
    assert_inert(SGR.sub(b"", out).replace(b"\r\n", b"\n"), "analyze on a terminal")


# -- on a real terminal ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,args", [("terminal-escapes.pcap.gz", ["analyze"]),
                                       ("terminal-escapes.pcap.gz", ["journeys"]),
                                       ("terminal-escapes.pcap.gz", ["mailboxes"]),
                                       ("terminal-escapes.pcap.gz", ["follow", "--flow", "0"]),
                                       ("lone-surrogates.pcap.gz", ["messages"]),
                                       ("html-payloads.pcap.gz", ["timeline"])])
def test_on_a_real_terminal(name, args):
    quiet = [] if args[0] == "follow" else ["-q"]
    code, out = pty_run([args[0], str(SUITE / name), *args[1:], *quiet], "100")
    assert code == 0, out
    plain = SGR.sub(b"", out).replace(b"\r\n", b"\n")
    assert_inert(plain, " ".join(args), allow="\n\t" if args[0] == "follow" else "\n")
    assert b"\x1b]8" not in out
    if args[0] != "follow":  # (follow prints the stream's lines as they are)
        for line in plain.decode().splitlines():
            assert cell_len(line) <= 100, line


def test_csv_on_a_terminal_is_cleaned_and_binary_is_refused():
    """CSV keeps the capture's text for files and pipes; a terminal gets it cleaned. Parquet is
    binary with the capture's strings in it: not written to a terminal."""
    path = str(SUITE / "terminal-escapes.pcap.gz")
    code, out = pty_run(["messages", path, "-q", "-f", "csv"], "100")
    assert code == 0, out
    # (the terminal driver turns each LF into CR LF: the CSV row end CR LF arrives as CR CR LF)
    assert_inert(SGR.sub(b"", out).replace(b"\r\r\n", b"\n").replace(b"\r\n", b"\n"), "messages -f csv")
    assert "\u241b[2J".encode() in out
    code, _, _, _ = invoke(["messages", path, "-q", "-f", "csv"])  # a pipe: the text as it is
    assert code == 0 and b"\x1b[2J" in invoke(["messages", path, "-q", "-f", "csv"])[1]
    code, out = pty_run(["messages", path, "-q", "-f", "parquet"], "100")
    assert code == 1 and out.startswith(b"maildissect: error: parquet is binary") and b"\x1b" not in out


def test_follow_raw_refuses_a_terminal():
    """``follow -f raw`` writes the connection's bytes as they are: to a file or a pipe, not a terminal."""
    code, out = pty_run(["follow", str(SUITE / "terminal-escapes.pcap.gz"), "--flow", "0", "-f", "raw"], "100")
    assert code == 1 and b"\x1b[2J" not in out
    assert out.startswith(b"maildissect: error: follow -f raw") and b"terminal" in out
    code, out = pty_run(["follow", str(SUITE / "terminal-escapes.pcap.gz"), "--flow", "0", "-f", "hex"], "100")
    assert code == 0, out
    assert_inert(SGR.sub(b"", out).replace(b"\r\n", b"\n"), "follow -f hex", allow="\n\t")
