"""Terminal tables with rich: laid out to fit the terminal, never cutting an identifier.

On a terminal a table is as wide as the terminal (``COLUMNS`` when set).
When its columns do not fit, the least important ones are left out
(:data:`PRIORITY` ranks them per table); what is left shares the width.
Free text (subject, reply text, detail...: :data:`FREE_TEXT`) is then cut
with an ellipsis on one line; every other value (identifiers, hashes,
addresses, file names, Message-IDs, timestamps) is shown whole: a list wraps
between its items, a name with spaces between its words, and a single word
wider than its column continues on the next line of the cell.

With ``wide`` (``--wide``), or when the output is not a terminal (a pipe, a
file), every column is printed with whole values on one line per row, as
wide as they need.

Every value is cleaned (:mod:`maildissect.output.terminal`) before it is laid
out; rows are written as plain lines, titles reach rich as :class:`~rich.text.Text`.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from email.utils import getaddresses

import pandas as pd
from rich.cells import cell_len, set_cell_size
from rich.text import Text

from .. import frames
from .terminal import clean, make_console

#: Free text: the only values ever cut (with an ellipsis) to fit a terminal.
FREE_TEXT = frozenset({
    "subject", "reply_text", "reply", "detail", "description", "argument", "banner", "text_preview", "uri",
    "user_agent", "received", "received_check", "reason", "roles", "path", "authentication_results", "source",
    "referer", "example",
})
#: Addresses (and lists of them) may wrap between words (a display name and its address,
#: one address and the next) but are never cut.
WORDS = frozenset({"from", "sender", "reply_to", "return_path", "to", "cc", "bcc", "rcpt_to", "rcpt_rejected",
                   "envelope", "mail_from"})
#: How list items are separated in a cell.
LIST_SEPARATOR = {"flags": " "}

#: Columns of each terminal table from the most to the least important: on a narrow
#: terminal the last ones are left out first. Columns not named come last, in view order.
PRIORITY = {
    "flows": ["flow_id", "client_ip", "server_ip", "server_port", "protocol", "start", "close", "bytes_client",
              "bytes_server", "packets", "client_port", "gaps", "handshake_rtt"],
    "sessions": ["session_id", "protocol", "client_ip", "server_ip", "auth_user", "messages", "start",
                 "server_port", "helo", "tls", "commands", "anomalies"],
    "commands": ["session_id", "command", "argument", "reply_code", "reply_text", "ts", "tag", "latency"],
    "messages": ["session_id", "from", "to", "envelope", "subject", "ts", "direction", "protocol", "attachments",
                 "size", "complete"],
    "attachments": ["session_id", "filename", "size", "content_type", "sha256", "message_id"],
    "files": ["session_id", "filename", "sha256", "ts", "direction", "from", "to", "part", "content_type", "size",
              "protocol", "client_ip", "server_ip", "subject", "message_id", "uri", "is_attachment", "method",
              "host"],
    "credentials": ["session_id", "user", "secret", "mechanism", "success", "protocol", "ts"],
    "anomalies": ["session_id", "name", "detail", "side", "ts"],
    "http": ["session_id", "method", "host", "uri", "status", "mail_action", "ts", "response_content_type",
             "response_size"],
    "mailboxes": ["session_id", "user", "mailbox", "action", "uid", "message_id", "flags", "ts"],
    "events": ["ts", "session_id", "event", "description", "outcome", "protocol", "client", "server"],
    "journeys": ["journey_id", "message_id", "subject", "roles", "hops", "first_seen", "failed_attempts",
                 "queue_time", "received_check"],
    "anomaly_counts": ["name", "count", "example"],
    "hops": ["journey_id", "hop", "role", "outcome", "session_id", "server_ip", "protocol", "start", "reply",
             "client_ip", "attempt", "latency", "server_port", "queue_id"],
}

#: Display-only columns: computed from the table for people, never written to files.
ENVELOPE = "envelope"

#: On a terminal, a whole value wider than this continues on the next line of its cell
#: (a sha256 fits), so that one hostile 10,000-character name cannot push every other
#: column off the screen.
MAX_WHOLE_WIDTH = 64
#: Free text is given at least this many columns (or its full width when shorter).
MIN_TEXT_WIDTH = 12
#: The first share of the spare width goes to every column up to this width, the rest
#: to columns that want more, so that one long list does not starve the subject.
SOFT_WIDTH = 40
#: Width of a table written to a file or pipe is unlimited; this bounds rich's console.
_UNLIMITED = 1 << 20


def terminal_width(file=None) -> int:
    """Columns of the terminal: ``COLUMNS`` when set, else the size of ``file``'s terminal, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size((file or sys.stdout).fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return shutil.get_terminal_size((80, 24)).columns


def is_terminal(file) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Screen:
    """Where tables are printed, and how: fitted to a terminal, or whole values (pipe, file, ``wide``)."""

    def __init__(self, file=None, wide: bool = False, width: int | None = None):
        self.file = file if file is not None else sys.stdout
        self.terminal = is_terminal(self.file)
        self.fit = self.terminal and not wide
        self.width = (width or terminal_width(self.file)) if self.fit else None
        self.console = make_console(file=self.file, width=self.width or _UNLIMITED)

    def print(self, renderable, width: int | None = None) -> None:
        """Print a Text or table; lines written to a pipe or file carry no trailing spaces."""
        if self.terminal:
            self.console.print(renderable, overflow="fold", width=self.width if self.fit else width, crop=False)
            return
        with self.console.capture() as cap:
            self.console.print(renderable, overflow="fold", width=width or self.width or _UNLIMITED,
                               crop=False)
        self.file.write("\n".join(line.rstrip() for line in cap.get().split("\n")))

    def line(self, text: Text) -> None:
        """One line of text (a title, a note): folded at the terminal's width, else whole."""
        if not self.terminal and "\n" not in text.plain:
            # what rich writes for one unstyled line, without laying it out (thousands of titles)
            self.file.write(text.plain.rstrip() + "\n")
            return
        self.print(text, width=None if self.fit else max(1, text.cell_len))

    def lines(self, lines: list[str], style: str | None = None) -> None:
        """Lines already laid out and cleaned (table rows); ``style`` is used on a terminal."""
        if style and self.terminal:
            for line in lines:
                self.console.print(Text(line, style=style), overflow="ignore", crop=False, no_wrap=True,
                                   width=max(1, cell_len(line)))
            return
        self.file.write("".join((line if self.terminal else line.rstrip()) + "\n" for line in lines))


def console(file=None):
    """A Screen on ``file`` (stdout by default); kept for callers that print one table."""
    return Screen(file)


# ---------------------------------------------------------------------------------
# values to text

def _scalar(value) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.0f}"
    return clean(value)


def items(value, column: str = "", sizes: bool = False) -> list[str] | None:
    """The items of a list value as cleaned strings (None when ``value`` is not a list)."""
    if isinstance(value, str) or not (isinstance(value, (list, tuple)) or hasattr(value, "tolist")):
        return None
    seq = value.tolist() if hasattr(value, "tolist") else list(value)
    if not isinstance(seq, list):
        return None
    if column in ("attachments", "files"):
        return [clean(f"{a.get('filename') or '?'} ({a.get('size')} B)" if sizes else (a.get("filename") or "?"))
                for a in seq if isinstance(a, dict)]
    return [_scalar(v) for v in seq]


def cell(value, column: str = "", limit: int | None = None, sizes: bool = False) -> str:
    """A printable, cleaned form of one value; ``limit`` cuts it with an ellipsis (None: whole);
    ``sizes`` adds each attachment's size to its name."""
    parts = items(value, column, sizes)
    if parts is not None:
        s = LIST_SEPARATOR.get(column, ", ").join(parts)
    else:
        s = _scalar(value)
    return s if limit is None or len(s) <= limit else s[: limit - 1] + "\u2026"


# ---------------------------------------------------------------------------------
# the envelope column of the messages table

def _addresses(values) -> set[str]:
    out = set()
    for v in values:
        for _name, addr in getaddresses([str(v)]):
            if addr:
                out.add(addr.strip("<>").lower())
    return out


def envelope_cells(df: pd.DataFrame) -> list[str] | None:
    """The envelope of each message where it differs from To/Cc (accepted recipients, then the
    refused ones marked "(refused)"); None when it never differs."""
    if "rcpt_to" not in df.columns:
        return None
    accepted = df["rcpt_to"].tolist()
    refused = df["rcpt_rejected"].tolist() if "rcpt_rejected" in df.columns else [None] * len(df)
    to = df["to"].tolist() if "to" in df.columns else [None] * len(df)
    cc = df["cc"].tolist() if "cc" in df.columns else [None] * len(df)
    cells, any_shown = [], False
    for acc, ref, t, c in zip(accepted, refused, to, cc):
        acc = list(acc) if isinstance(acc, (list, tuple)) or hasattr(acc, "tolist") else []
        ref = list(ref) if isinstance(ref, (list, tuple)) or hasattr(ref, "tolist") else []
        headers = [*(t if t is not None and not isinstance(t, float) else []),
                   *(c if c is not None and not isinstance(c, float) else [])]
        if not acc and not ref or (not ref and _addresses(acc) == _addresses(headers)):
            cells.append([])
            continue
        any_shown = True
        cells.append([*acc, *(f"{r} (refused)" for r in ref)])
    return cells if any_shown else None


# ---------------------------------------------------------------------------------
# layout

@dataclass
class _Column:
    name: str
    free_text: bool
    separator: str | None            # items joined by this; None: a single value
    cells: list                      # per row: list of tokens (whole) or one string (free text)
    numeric: bool = False
    natural: int = 0                 # width of the widest value on one line, or of the name
    content: int = 0                 # width of the widest value on one line
    minimum: int = 0                 # narrowest width that keeps every word whole (or the text minimum)
    width: int = 0
    header_tokens: list = field(default_factory=list)


def _header_tokens(name: str) -> list[str]:
    parts = name.split("_")
    return [p + "_" for p in parts[:-1]] + [parts[-1]]


def _column(name: str, values: list, numeric: bool) -> _Column:
    free = name in FREE_TEXT
    is_list = any(items(v, name) is not None for v in values[:50])
    if name in WORDS:
        sep = " "
    else:
        sep = LIST_SEPARATOR.get(name, ", ") if is_list else None
    cells = []
    for v in values:
        if free:
            cells.append([cell(v, name)])
        elif name in WORDS:
            cells.append(cell(v, name).split(" "))
        else:
            parts = items(v, name)
            cells.append(parts if parts is not None else [_scalar(v)])
    col = _Column(name, free, sep, cells, numeric, header_tokens=_header_tokens(name))
    joiner = sep or ""
    col.content = max([0] + [cell_len(joiner.join(p)) for p in cells])
    col.natural = max(col.content, cell_len(name))
    header_min = max(cell_len(t) for t in col.header_tokens)
    if free:
        col.minimum = max(header_min, min(col.natural, MIN_TEXT_WIDTH))
    else:
        longest = max([0] + [cell_len(t) + (len(joiner.rstrip()) if sep else 0) for p in cells for t in p])
        col.minimum = max(header_min, min(longest, MAX_WHOLE_WIDTH))
    return col


#: Between two columns.
GAP = "  "


def _table_width(widths: list[int]) -> int:
    return sum(widths) + len(GAP) * max(0, len(widths) - 1)


def _fill(cols: list[_Column], spare: int, cap) -> int:
    """Water-fill ``spare`` columns of width into ``cols`` up to ``cap(col)``; returns what is left."""
    wanting = [c for c in cols if cap(c) > c.width]
    while spare > 0 and wanting:
        share = max(1, spare // len(wanting))
        for c in sorted(wanting, key=lambda c: cap(c) - c.width):
            give = min(share, cap(c) - c.width, spare)
            c.width += give
            spare -= give
            if spare <= 0:
                break
        wanting = [c for c in wanting if cap(c) > c.width]
    return spare


def layout(columns: list[_Column], priority: list[str], width: int | None) -> list[_Column]:
    """The columns to show, in display order, each with its width.

    ``width`` None: every column at its natural width (whole values, one line per row).
    """
    if width is None:
        for c in columns:
            c.width = c.natural
        return columns
    rank = {name: i for i, name in enumerate(priority)}
    by_priority = sorted(columns, key=lambda c: rank.get(c.name, len(rank) + columns.index(c)))
    chosen: list[_Column] = []
    for c in by_priority:
        if not chosen or _table_width([x.minimum for x in chosen] + [c.minimum]) <= width:
            chosen.append(c)
    shown = [c for c in columns if c in chosen]
    for c in shown:
        c.width = c.minimum
    spare = width - _table_width([c.width for c in shown])
    # values first (every column up to SOFT_WIDTH, then up to its widest value), then whole names
    spare = _fill(shown, spare, lambda c: max(c.minimum, min(c.content, SOFT_WIDTH)))
    spare = _fill(shown, spare, lambda c: max(c.minimum, c.content))
    _fill(shown, spare, lambda c: max(c.minimum, c.natural))
    if len(shown) == 1 and shown[0].width > width:
        shown[0].width = max(1, width)
    return shown


def _wrap(tokens: list[str], sep: str | None, width: int) -> str:
    """Tokens on lines of ``width`` cells: breaks only between tokens, and inside a token
    only when it alone is wider than the line. A list separator's comma stays at the line end."""
    if sep is None:
        return _fold(tokens[0] if tokens else "", width)
    glue = sep.rstrip()          # ", " -> ","   " " -> ""
    space = sep[len(glue):]      # ", " -> " "   " " -> " "
    lines: list[str] = []
    current = ""
    for i, tok in enumerate(tokens):
        piece = tok if i == len(tokens) - 1 else tok + glue
        if current and cell_len(current) + cell_len(space) + cell_len(piece) <= width:
            current = current + space + piece
            continue
        if current:
            lines.append(current)
        folded = _fold(piece, width).split("\n")
        lines.extend(folded[:-1])
        current = folded[-1]
    lines.append(current)
    return "\n".join(lines)


def _fold(s: str, width: int) -> str:
    if cell_len(s) <= width:
        return s
    out, line, used = [], [], 0
    for ch in s:
        w = cell_len(ch)
        if used + w > width and line:
            out.append("".join(line))
            line, used = [], 0
        line.append(ch)
        used += w
    out.append("".join(line))
    return "\n".join(out)


def _ellipsis(s: str, width: int) -> str:
    if cell_len(s) <= width:
        return s
    return set_cell_size(s, max(0, width - 1)).rstrip() + "\u2026"


def _cell_lines(col: _Column, row: int, fit: bool) -> list[str]:
    tokens = col.cells[row]
    if not fit:
        return [(col.separator or "").join(tokens)]
    if col.free_text:
        return [_ellipsis(tokens[0], col.width)]
    return _wrap(tokens, col.separator, col.width).split("\n")


def _header_lines(col: _Column, fit: bool) -> list[str]:
    if not fit or cell_len(col.name) <= col.width:
        return [col.name]
    return _wrap(col.header_tokens, "", col.width).split("\n")


def _pad(s: str, width: int, right: bool) -> str:
    room = width - cell_len(s)
    if room <= 0:
        return s
    return " " * room + s if right else s + " " * room


def _rows(cells: list[list[str]], cols: list[_Column], bottom: bool = False) -> list[str]:
    """The lines of one table row whose cells are lists of lines (headers align to the bottom)."""
    height = max(len(c) for c in cells)
    out = []
    for i in range(height):
        parts = []
        for col, lines in zip(cols, cells):
            k = i - (height - len(lines)) if bottom else i
            parts.append(_pad(lines[k] if 0 <= k < len(lines) else "", col.width, col.numeric))
        out.append(GAP.join(parts))
    return out


def _numeric(dtype) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _print_table(names: list[str], values: dict, numeric: dict, n: int, table: str, screen, title) -> None:
    """Lay out and print ``n`` rows of the columns ``names`` (``values``: column -> list)."""
    cols = [_column(c, values[c], numeric[c]) for c in names]
    if screen.fit and n:  # a column with nothing to show is not worth its width on a terminal
        cols = [c for c in cols if any(any(t for t in tokens) for tokens in c.cells)] or cols
    shown = layout(cols, PRIORITY.get(table, []), screen.width if screen.fit else None)
    if title is not None:
        screen.line(title if isinstance(title, Text) else Text(clean(title), style="bold"))
    if n:
        # the cells are laid out here and written as lines: rich's Table would lay them out again,
        # at a cost that grows badly with the rows (minutes for 50,000)
        screen.lines(_rows([_header_lines(c, screen.fit) for c in shown], shown, bottom=True), style="bold")
        screen.lines(["\u2500" * _table_width([c.width for c in shown])])
        for i in range(n):
            screen.lines(_rows([_cell_lines(c, i, screen.fit) for c in shown], shown))


class TableView:
    """The shown columns of a table taken out of its DataFrame once, as lists, for printing many
    small tables of its rows (:func:`render_rows`): one journey's hops after another costs their
    rows, not a DataFrame slice each."""

    def __init__(self, df: pd.DataFrame, table: str, columns: list[str] | None = None):
        self.table = table
        self.names = [c for c in (columns or frames.TABLE_VIEWS.get(table) or list(df.columns)) if c in df.columns]
        self.values = {c: df[c].tolist() for c in self.names}
        self.numeric = {c: _numeric(df[c].dtype) for c in self.names}


def render_rows(view: TableView, rows: list[int], screen, title=None) -> None:
    """Print the rows at positions ``rows`` of ``view`` as one table, as :func:`render` would."""
    values = {c: [view.values[c][i] for i in rows] for c in view.names}
    _print_table(view.names, values, view.numeric, len(rows), view.table, screen, title)
    if not rows:
        screen.line(Text(f"no {view.table}", style="dim"))


def render(df: pd.DataFrame, table: str, screen, title=None, columns: list[str] | None = None,
           max_rows: int | None = None) -> None:
    """Print a DataFrame as a table with the table's default columns (``columns`` to choose others).

    ``screen`` is a :class:`Screen`.
    ``title`` (a string or Text, cleaned) is printed above the table.
    """
    shown_df = df if max_rows is None else df.head(max_rows)
    names = [c for c in (columns or frames.TABLE_VIEWS.get(table) or list(df.columns)) if c in df.columns]
    values = {c: shown_df[c].tolist() for c in names}
    numeric = {c: _numeric(df[c].dtype) for c in names}
    if table == "messages" and (columns is None or ENVELOPE in columns or "to" in names):
        env = envelope_cells(shown_df)
        if env is not None:
            at = names.index("to") + 1 if "to" in names else len(names)
            names.insert(at, ENVELOPE)
            values[ENVELOPE] = env
            numeric[ENVELOPE] = False
    _print_table(names, values, numeric, len(shown_df), table, screen, title)
    if max_rows is not None and len(df) > max_rows:
        screen.line(Text(f"... {len(df) - max_rows} more rows (use --format jsonl/csv for all)", style="dim"))
    if not len(df):
        screen.line(Text(f"no {table}", style="dim"))
