"""Terminal tables and summaries with rich."""

from __future__ import annotations

import math
import sys

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import frames

MAX_CELL = 60
SHORT = {"start", "end", "ts", "client_ip", "server_ip", "protocol", "direction", "close", "reply_code",
         "session_id", "flow_id", "tag", "command", "method", "status", "name", "side"}


def console(file=None) -> Console:
    """A console that is as wide as the terminal, or wide enough when writing to a file or pipe."""
    target = file if file is not None else sys.stdout
    wide = not (hasattr(target, "isatty") and target.isatty())
    return Console(file=file, width=240 if wide else None, soft_wrap=False)


def cell(value, column: str = "", limit: int | None = MAX_CELL, sizes: bool = False) -> str:
    """A printable form of one value: ``limit`` characters at most (None: all);
    ``sizes`` adds each attachment's size to its name."""
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
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, str)):
        items = value.tolist() if hasattr(value, "tolist") else list(value)
        if not isinstance(items, list):
            return cell(items, column, limit, sizes)
        if column in ("attachments", "files"):
            s = ", ".join(f"{a.get('filename') or '?'} ({a.get('size')} B)" if sizes else
                          str(a.get("filename") or "?") for a in items if isinstance(a, dict))
        elif column == "flags":
            s = " ".join(map(str, items))
        else:
            s = ", ".join(str(v) for v in items)
    else:
        s = str(value)
    s = "".join(ch if ch.isprintable() else "\ufffd" for ch in s)
    return s if limit is None or len(s) <= limit else s[: limit - 1] + "\u2026"


def render(df: pd.DataFrame, table: str, console: Console, title: str | None = None,
           columns: list[str] | None = None, max_rows: int | None = None) -> None:
    """Print a DataFrame as a rich table with the table's default columns."""
    cols = [c for c in (columns or frames.TABLE_VIEWS.get(table) or list(df.columns)) if c in df.columns]
    t = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", show_lines=False, expand=False)
    for c in cols:
        numeric = pd.api.types.is_numeric_dtype(df[c].dtype) and not pd.api.types.is_bool_dtype(df[c].dtype)
        t.add_column(c, justify="right" if numeric else "left", no_wrap=numeric or c in SHORT,
                     overflow="ellipsis", max_width=None if numeric else MAX_CELL)
    shown = df if max_rows is None else df.head(max_rows)
    data = {c: shown[c].tolist() for c in cols}
    for i in range(len(shown)):
        t.add_row(*(Text(cell(data[c][i], c)) for c in cols))
    console.print(t)
    if max_rows is not None and len(df) > max_rows:
        console.print(f"[dim]... {len(df) - max_rows} more rows (use --format jsonl/csv for all)[/dim]")
    if not len(df):
        console.print(f"[dim]no {table}[/dim]")
