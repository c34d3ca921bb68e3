"""What reaches a person's terminal: text, not instructions; tables that fit; safe CSV and file names.

The hostile capture (tests/hostile_render.py) puts terminal escapes, rich markup,
spreadsheet formulas and Windows device names in every string a person sees. Every
command's terminal output is checked for escape bytes, markup errors and links, on a
real pseudo-terminal as well as in process.
"""

import csv
import io
import json
import os
import pathlib
import pty
import re
import select
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner
from rich.cells import cell_len

from maildissect.cli import cli
from maildissect.output import tables
from maildissect.output.extract import is_device_name, safe_name
from maildissect.output.files import write_csv
from maildissect.output.livelines import LiveRenderer
from maildissect.output.terminal import clean
from tests.hostile_render import DEVICE_NAMES, FORMULAS, build, build_surrogates

ROOT = pathlib.Path(__file__).resolve().parent.parent
JOURNEY = str(ROOT / "captures" / "journey.pcap")
SGR = re.compile(rb"\x1b\[[0-9;]*m")  # rich's own styles on a terminal


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "hostile.pcap"
    build(str(path))
    return str(path)


def run(*args, ok=True, env=None):
    res = CliRunner(env=env).invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output + res.stderr
    return res


def assert_inert(data: bytes, where: str, allow: str = "\n"):
    """Nothing a terminal would obey (ESC, BEL, C1 controls such as CSI U+009B, any control but
    the line break), no bidi control, no markup error; and the bytes are valid UTF-8."""
    text = data.decode("utf-8")  # (a raw 0x9b byte outside UTF-8 would fail here)
    bad = sorted({f"U+{ord(ch):04X}" for ch in text
                  if (ord(ch) < 0x20 and ch not in allow) or 0x7F <= ord(ch) <= 0x9F
                  or ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"})
    assert not bad, f"{where}: {bad} reached the output"
    assert "MarkupError" not in text and "internal error" not in text, where


# ---------------------------------------------------------------------------------
# the cleaner

def test_clean_makes_controls_visible_and_keeps_text():
    assert clean("plain ASCII, Grüße, 漢字, emoji \U0001F600") == "plain ASCII, Grüße, 漢字, emoji \U0001F600"
    assert clean("\x1b[2J") == "\u241b[2J"
    assert clean("a\tb\nc\rd\x00\x7f\x07") == "a\u2409b\u240ac\u240dd\u2400\u2421\u2407"
    assert clean("\x9b2J\x85") == "\u27e8U+009B\u27e92J\u27e8U+0085\u27e9"
    for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u200b\ufeff\u2028":
        assert clean(f"x{ch}y") == f"x\u27e8U+{ord(ch):04X}\u27e9y"
    assert clean("a\ud83db") == "a\ufffdb"  # a lone surrogate
    # the placeholders themselves, written literally by an attacker, are escaped: unambiguous
    assert clean("\u241b[2J") == "\u27e8U+241B\u27e9[2J"
    assert clean("\u27e8U+202E\u27e9") == "\u27e8U+27E8\u27e9U+202E\u27e9"
    assert clean("[link=https://evil.test/]x[/link]") == "[link=https://evil.test/]x[/link]"  # text, not markup
    assert clean(12) == "12"


COMMANDS = [["analyze"], ["flows"], ["sessions"], ["messages"], ["attachments"], ["files"], ["credentials"], ["commands"],
            ["anomalies"], ["http"], ["mailboxes"], ["timeline"], ["journeys"], ["journeys", "--summary"],
            ["follow", "--flow", "0"]]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
@pytest.mark.parametrize("columns", ["80", "200", "piped", "wide"])
def test_every_command_prints_text_not_instructions(hostile, args, columns, monkeypatch):
    """In process: the table layout of a terminal (forced) at 80 and 200 columns, --wide, and piped."""
    if columns != "piped":
        monkeypatch.setattr(tables, "is_terminal", lambda f: True)
        monkeypatch.setenv("COLUMNS", "80" if columns == "wide" else columns)
    extra = ["--wide"] if columns == "wide" and args[0] != "follow" else []
    res = run(args[0], hostile, *args[1:], *extra, *([] if args[0] == "follow" else ["-q"]))
    # (follow writes tshark's text: TAB indents the server's lines, CR is kept off a terminal)
    assert_inert(res.stdout_bytes, " ".join(args), allow="\n\t\r" if args[0] == "follow" else "\n")
    assert_inert(res.stderr_bytes, " ".join(args))
    if columns != "80" and args[0] in ("messages", "analyze", "journeys", "timeline", "commands", "sessions"):
        assert "\u241b" in res.stdout  # the escapes are shown, as placeholders
    if args == ["journeys"]:
        assert "Received:" in res.stdout  # (the Received notes quote the hostile header)
    if columns in ("80", "200") and args[0] != "follow":  # (follow prints the stream's lines as they are)
        for line in res.stdout.splitlines():
            assert cell_len(line) <= int(columns), line


def pty_run(args, columns: str) -> tuple[int, bytes]:
    """Run the CLI with stdout on a real pseudo-terminal of ``columns`` columns."""
    env = dict(os.environ, COLUMNS=columns, TERM="xterm-256color", PYTHONPATH=str(ROOT))
    env.pop("NO_COLOR", None)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "maildissect.cli", *args], stdout=slave, stderr=slave,
                            stdin=subprocess.DEVNULL, env=env, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, out


@pytest.mark.parametrize("command,columns", [("analyze", "80"), ("messages", "80"), ("journeys", "200"),
                                             ("commands", "200")])
def test_on_a_real_terminal_only_richs_own_styles_are_sent(hostile, command, columns):
    code, out = pty_run([command, hostile, "-q"], columns)
    assert code == 0, out
    plain = SGR.sub(b"", out).replace(b"\r\n", b"\n")  # (the terminal driver turns LF into CR LF)
    assert_inert(plain, command)
    assert b"\x1b]8" not in out  # no hyperlink
    for line in plain.decode().splitlines():
        assert cell_len(line) <= int(columns), line


def test_errors_and_warnings_quote_input_cleaned(tmp_path, hostile):
    evil = tmp_path / "cap[bold]\x1b[2J\u202e.pcap"
    data = pathlib.Path(hostile).read_bytes()
    evil.write_bytes(data + data[40:80])  # a truncated last record: a warning naming the file
    res = run("analyze", evil)
    assert "\u241b[2J\u27e8U+202E\u27e9.pcap" in res.stdout  # the files panel
    assert "warning" in res.stderr and "\u241b[2J" in res.stderr
    assert_inert(res.stdout_bytes, "analyze"), assert_inert(res.stderr_bytes, "analyze warning")
    res = run("messages", tmp_path / "missing\x1b[2J.pcap", ok=False)
    assert res.exit_code == 1 and "missing\u241b[2J.pcap" in res.stderr
    # click's own usage errors quote arguments too; the console entry point cleans them
    for args in (["--keylog", "k\x1b[2J\x07"], ["-f", "t\x1b[2J\u202e"], ["--port", "25=\x1b[2J"]):
        proc = subprocess.run([sys.executable, "-m", "maildissect.cli", "messages", *args, hostile],
                              capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert proc.returncode == 2 and b"Error" in proc.stderr, proc.stderr
        assert_inert(proc.stderr, f"usage error {args}")


def test_one_road_to_the_terminal():
    """Structure: rich consoles come from output/terminal.py (markup off), nothing prints a
    string or f-string through rich, and click.echo never gets an f-string (data would skip the
    cleaner) outside output/terminal.py. The generator prints its own run, not a capture."""
    import ast
    package = ROOT / "maildissect"
    found = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("generate/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            first = node.args[0] if node.args else None
            where = f"{rel}:{node.lineno}"
            if name == "Console" and rel != "output/terminal.py":
                found.append(f"{where}: a Console not made by terminal.make_console")
            if name == "from_markup" or any(k.arg == "markup" and not (isinstance(k.value, ast.Constant)
                                                                       and k.value.value is False)
                                            for k in node.keywords):
                found.append(f"{where}: markup")
            if (isinstance(fn, ast.Attribute) and name == "print"
                    and isinstance(first, (ast.JoinedStr, ast.Constant)) and rel != "output/terminal.py"):
                found.append(f"{where}: rich prints a str")
            if (isinstance(fn, ast.Attribute) and name == "echo" and isinstance(first, ast.JoinedStr)
                    and rel != "output/terminal.py"):
                found.append(f"{where}: click.echo of an f-string (use terminal.echo_err/warn)")
    assert not found, found


def test_follow_on_a_terminal_shows_a_lone_cr_as_a_dot():
    from maildissect.follow import _printable
    assert _printable(b"ok\r\nfake\rreal\x1b[2J", terminal=True) == "ok\nfake.real.[2J"
    assert _printable(b"ok\r\nfake\rreal", terminal=False) == "ok\r\nfake\rreal"  # a file gets tshark's text


# ---------------------------------------------------------------------------------
# tables that fit

def _screen(width: int | None):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    f = Tty() if width else io.StringIO()
    return tables.Screen(f, width=width), f


def test_layout_drops_low_priority_columns_and_cuts_only_free_text():
    sha = "ab" * 32
    long_id = "<" + "x" * 90 + "@example.com>"
    df = pd.DataFrame({
        "session_id": pd.array([1, 22], dtype="Int64"),
        "message_id": [long_id, "<short@example.com>"],
        "filename": ["a very long report name with spaces.pdf", "b.txt"],
        "content_type": ["application/pdf", "text/plain"],
        "size": pd.array([1234567, 5], dtype="Int64"),
        "sha256": [sha, sha[::-1]],
    })
    for width in (80, 200, 260):
        screen, f = _screen(width)
        tables.render(df, "attachments", screen)
        out = SGR.sub(b"", f.getvalue().encode()).decode()
        assert all(cell_len(line) <= width for line in out.splitlines()), out
        assert "\u2026" not in out  # nothing here is free text
        for line in out.splitlines():  # a hash is whole or absent
            for run_ in re.findall(r"[0-9a-f]{16,}", line):
                assert run_ in (sha, sha[::-1]), line
        header = out.splitlines()[0].split()
        if width == 80:
            assert "sha256" not in header and "filename" in header and "session_id" in header
        elif width == 200:  # the long Message-ID (least important here) does not fit
            assert {"sha256", "filename", "content_type"} <= set(header) and "message_id" not in header
        else:  # it does, continued on a second line of its cell, never cut
            assert "message_id" in header
            assert long_id[:tables.MAX_WHOLE_WIDTH] in out and long_id[tables.MAX_WHOLE_WIDTH:] in out
    # piped: every column, every value whole, on one line per row
    screen, f = _screen(None)
    tables.render(df, "attachments", screen)
    out = f.getvalue()
    assert long_id in out and "a very long report name with spaces.pdf" in out and sha in out
    assert len(out.splitlines()) == 2 + len(df) and not any(line.endswith(" ") for line in out.splitlines())


def test_whole_values_wrap_at_boundaries_and_free_text_gets_an_ellipsis():
    cols = [tables._column("to", [["Alice Example <alice@example.com>", "bob@example.com", "c" * 70 + "@x.test"]],
                           False),
            tables._column("subject", ["s" * 300], False),
            tables._column("sha256", ["f" * 64], False)]
    shown = tables.layout(cols, ["to", "subject", "sha256"], 80)
    rendered = {c.name: "\n".join(tables._cell_lines(c, 0, True)) for c in shown}
    assert rendered["subject"].endswith("\u2026") and "\n" not in rendered["subject"]
    lines = rendered["to"].split("\n")
    assert all(cell_len(line) <= shown[0].width for line in lines)
    joined = " ".join(lines)
    assert "alice@example.com>," in joined and "bob@example.com," in joined
    assert ("c" * 70 + "@x.test") in rendered["to"].replace("\n", "")  # folded, not cut
    assert sum(c.width for c in shown) + 2 * (len(shown) - 1) <= 80


def test_table_width_is_what_layout_assumes():
    screen, f = _screen(200)
    df = pd.DataFrame({"flow_id": pd.array([1], dtype="Int64"), "client_ip": ["10.0.0.1"]})
    tables.render(df, "flows", screen)
    first_row = f.getvalue().splitlines()[2]
    assert cell_len(first_row) == tables._table_width([len("flow_id"), len("client_ip")]) <= 200


@pytest.mark.parametrize("columns", ["80", "200", "piped"])
def test_messages_table_at_80_200_and_piped(columns, monkeypatch):
    if columns != "piped":
        monkeypatch.setattr(tables, "is_terminal", lambda f: True)
        monkeypatch.setenv("COLUMNS", columns)
    out = run("messages", JOURNEY, "-q").stdout
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("\u2500"))
    header = " ".join(lines[:rule]).split()  # (a narrow column's name may wrap after a "_")
    rows = [json.loads(x) for x in run("messages", JOURNEY, "-q", "-f", "jsonl").stdout.splitlines()]
    if columns == "piped":
        assert header == [c for c in pd.Index(tables.frames.TABLE_VIEWS["messages"])]
        assert "\u2026" not in out
        for r in rows:
            assert r["subject"] is None or r["subject"] in out
    else:
        assert all(cell_len(line) <= int(columns) for line in out.splitlines())
        assert {"from", "to", "subject"} <= set(header) and ("session_id" in header or "session_" in header)
        assert (len(header) < len(tables.frames.TABLE_VIEWS["messages"])) == (columns == "80")
    wide = run("messages", JOURNEY, "-q", "--wide").stdout
    assert all(r["subject"] is None or r["subject"] in wide for r in rows)


def test_messages_table_shows_the_envelope_when_it_differs(hostile):
    out = run("messages", hostile, "-q").stdout
    assert "envelope" in out.splitlines()[0]
    assert "hidden@example.com" in out and "refused@example.com (refused)" in out
    assert "envelope" not in run("messages", JOURNEY, "-q").stdout.splitlines()[0]  # To and envelope agree


# ---------------------------------------------------------------------------------
# CSV

def _csv_cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def test_csv_cells_never_start_a_formula(hostile, tmp_path):
    starts = ("=", "+", "-", "@", "\t", "\r")
    for table in ("messages", "sessions", "attachments", "commands", "http", "credentials", "mailboxes"):
        cells = _csv_cells(run(table, hostile, "-q", "-f", "csv").stdout)
        assert not [c for c in cells if c.startswith(starts)], table
    subjects = pd.read_csv(io.StringIO(run("messages", hostile, "-q", "-f", "csv").stdout))["subject"].tolist()
    assert "'" + FORMULAS[0] in subjects
    raw = pd.read_csv(io.StringIO(run("messages", hostile, "-q", "-f", "csv", "--csv-raw").stdout))
    assert FORMULAS[0] in raw["subject"].tolist()
    helo = pd.read_csv(io.StringIO(run("sessions", hostile, "-q", "-f", "csv").stdout))["helo"].tolist()
    assert "'" + FORMULAS[1] in helo
    for args in (["timeline"], ["journeys"], ["journeys", "--summary"]):
        assert not [c for c in _csv_cells(run(args[0], hostile, *args[1:], "-q", "-f", "csv").stdout)
                    if c.startswith(starts)], args
    run("export", hostile, "-q", "-f", "csv", "-o", tmp_path / "x")
    for f in (tmp_path / "x").glob("*.csv"):
        assert not [c for c in _csv_cells(f.read_text()) if c.startswith(starts)], f.name
    run("extract", hostile, "-q", "-o", tmp_path / "e")
    index = _csv_cells((tmp_path / "e" / "index.csv").read_text())
    assert not [c for c in index if c.startswith(starts)]
    assert "'" + FORMULAS[0] in index
    run("extract", hostile, "-q", "-o", tmp_path / "e2", "--csv-raw")
    assert FORMULAS[0] in _csv_cells((tmp_path / "e2" / "index.csv").read_text())


def test_csv_numbers_and_lists_are_not_text():
    df = pd.DataFrame({"latency": pd.array([-0.5, 1.0], dtype="Float64"),
                       "n": pd.array([-3, 4], dtype="Int64"),
                       "to": [["=a@b"], []],
                       "s": pd.array(["-ERR x", "ok"], dtype="string")})
    out = io.StringIO()
    write_csv(df, out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[1] == ["-0.5", "-3", '["=a@b"]', "'-ERR x"]
    out = io.StringIO()
    write_csv(df, out, raw=True)
    assert list(csv.reader(io.StringIO(out.getvalue())))[1][3] == "-ERR x"


def test_a_cr_inside_a_cell_does_not_start_a_row(tmp_path):
    """A CR in a cell is quoted (rows end with CRLF): left bare, a spreadsheet started a new row
    there, whose first cell (the rest of the text) was a formula. The suite's csv-formulas capture
    found it (a Subject "\\r=1+3+cmd...")."""
    df = pd.DataFrame({"subject": pd.array(["x\r=HYPERLINK(1)", "\r=1+3", "a\nb"], dtype="string"), "n": [1, 2, 3]})
    for raw in (False, True):
        out = io.StringIO(newline="")
        write_csv(df, out, raw=raw)
        rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
        assert [r[0] for r in rows[1:]] == ["x\r=HYPERLINK(1)", "\r=1+3" if raw else "'\r=1+3", "a\nb"]
        assert out.getvalue().endswith("\r\n")
    # (extract's index.csv writes the same line end: test_hostile's csv-formulas case reads it)


# ---------------------------------------------------------------------------------
# extracted file names

@pytest.mark.parametrize("name", ["CON", "con .txt", "NUL .txt", "aux.tar.gz", "COM0.x", "com9", "LPT\u00b9.pdf",
                                  "lpt\u00b3", "COM\u00b2 . .txt", "CONIN$", "conout$.log", "Prn...", "nul  "])
def test_device_names_are_defused(name):
    safe = safe_name(name)
    assert not is_device_name(safe) and safe.startswith("_"), safe


@pytest.mark.parametrize("name", ["CONX.txt", "x.con", "COM10", "console.log", "LPT", "nullable.txt"])
def test_ordinary_names_are_kept(name):
    assert safe_name(name) == name


def test_extract_writes_no_device_name(hostile, tmp_path):
    run("extract", hostile, "-q", "-o", tmp_path)
    names = [p.name for p in (tmp_path / "attachments").iterdir()] + \
            [p.name for p in (tmp_path / "messages").iterdir()]
    assert not [n for n in names if is_device_name(n)]
    for n in DEVICE_NAMES:
        assert safe_name(n) in names


# ---------------------------------------------------------------------------------
# live never stops for one record

def _message_with_surrogate():
    from maildissect.model import Attachment, Message
    m = Message(protocol="smtp", session_id=3, ts=1000.0, direction="sent")
    m.from_ = "Mallory \ud83d <m@evil.test>"
    m.to = ["bob@example.com"]
    m.subject = "hi\ud83d\x1b[2J"
    m.attachments = [Attachment(filename="a\ud800.txt", content_type="text/plain", size=1, md5="", sha1="", sha256="")]
    return m


class Broken:
    session_id = 7
    ts = 1000.0

    def __getattr__(self, name):
        raise RuntimeError(f"no {name}")


@pytest.mark.parametrize("fmt", ["table", "jsonl"])
def test_live_prints_a_record_with_unwritable_text_and_an_anomaly(fmt):
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="\n")
    renderer = LiveRenderer(fmt, lambda line: (out.write(line + "\n"), out.flush()))
    renderer("messages", _message_with_surrogate())
    renderer("messages", Broken())  # a record that cannot be rendered: a minimal line and an anomaly
    lines = raw.getvalue().decode("utf-8").splitlines()
    assert len(lines) == 4, lines
    assert "\ufffd" in lines[0] and "live_unwritable_text" in lines[1] and "from_" in lines[1]
    assert "live_render_error" in lines[3]
    assert_inert(raw.getvalue(), "live")
    if fmt == "jsonl":
        rows = [json.loads(x) for x in lines]
        assert rows[0]["record"] == "message" and rows[1]["record"] == "anomaly"


@pytest.mark.parametrize("fmt", ["table", "jsonl"])
def test_live_command_goes_on_after_a_hostile_record(fmt, hostile, tmp_path, monkeypatch):
    """The live command itself, fed the hostile captures as if from an interface."""
    from maildissect import live as live_mod
    from tests.test_live import ReplaySource
    sur = tmp_path / "surrogates.pcap"
    build_surrogates(str(sur))
    for path, messages in ((str(sur), 1), (hostile, 2)):
        monkeypatch.setattr(live_mod, "open_live", lambda iface, bpf, backend, p=path: ReplaySource(p))
        res = run("live", "-i", "replay", "--backend", "scapy", "--format", fmt, "-q")
        assert_inert(res.stdout_bytes, "live " + fmt)
        lines = res.stdout.splitlines()
        if fmt == "jsonl":
            kinds = [json.loads(x)["record"] for x in lines]
            assert kinds.count("message") == messages and kinds.count("session") >= 1, kinds
        else:
            assert sum(" message  #" in x for x in lines) == messages and any(" session  #" in x for x in lines)
