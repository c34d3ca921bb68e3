"""Writing tables as JSON lines, CSV and Parquet.

All formats come from the same DataFrame, so a column has the same name and
meaning everywhere: timestamps become ISO 8601 UTC strings in JSON and CSV
(Parquet keeps them as timestamps), lists and nested records become JSON arrays
(CSV cells hold the JSON text).

CSV cells that would start a spreadsheet formula are defused
(:mod:`maildissect.output.spreadsheet`) unless ``csv_raw``.
"""

from __future__ import annotations

import io
import json
import sys

import pandas as pd

from .spreadsheet import LINE_END, csv_cell
from .terminal import CleanWriter, json_inert

FORMATS = ("table", "jsonl", "csv", "parquet")


def _iso_series(s: pd.Series) -> list:
    """ISO 8601 UTC strings with microseconds ("...T12:00:00.000001Z"), None for missing.

    numpy formats datetimes in C; pandas' strftime goes through Python per value.
    """
    import numpy as np
    values = s.dt.tz_convert("UTC").dt.tz_localize(None) if isinstance(s.dtype, pd.DatetimeTZDtype) else s
    text = np.datetime_as_string(values.to_numpy(dtype="datetime64[us]"), unit="us")
    missing = s.isna().to_numpy()
    return [None if m else t + "Z" for t, m in zip(text.tolist(), missing.tolist())]


def json_ready(df: pd.DataFrame) -> list[dict]:
    """Rows as plain dicts: ISO timestamps, None for missing, lists kept."""
    cols = {}
    for name in df.columns:
        s = df[name]
        if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(s.dtype):
            cols[name] = _iso_series(s)
        elif s.dtype == object:
            cols[name] = s.tolist()
        else:
            cols[name] = s.astype(object).where(s.notna(), None).tolist()
    names = list(df.columns)
    return [dict(zip(names, row)) for row in zip(*(cols[n] for n in names))] if names else []


#: Rows converted at a time by the text writers: a table of a million rows turned into
#: Python dicts all at once needed several times the table's own memory.
CHUNK_ROWS = 20_000


def write_jsonl(df: pd.DataFrame, out) -> None:
    """One JSON object per row; invisible and control characters as ``\\u`` escapes (the same
    values, inert on a terminal)."""
    for start in range(0, len(df), CHUNK_ROWS):
        for row in json_ready(df.iloc[start:start + CHUNK_ROWS]):
            out.write(json_inert(json.dumps(row, ensure_ascii=False, default=str)))
            out.write("\n")


def write_csv(df: pd.DataFrame, out, raw: bool = False) -> None:
    """CSV with a header row; lists and nested records as JSON text; formulas defused unless ``raw``."""
    for start in range(0, max(len(df), 1), CHUNK_ROWS):
        part = df.iloc[start:start + CHUNK_ROWS]
        flat = pd.DataFrame(json_ready(part), columns=df.columns)
        for name in flat.columns:
            if df[name].dtype == object:
                flat[name] = [json.dumps(v, ensure_ascii=False, default=str) for v in flat[name]]
            dtype = df[name].dtype
            if not raw and not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
                flat[name] = [csv_cell(v) for v in flat[name]]  # (numbers are never defused)
        flat.to_csv(out, index=False, lineterminator=LINE_END, header=start == 0)


def write_parquet(df: pd.DataFrame, path_or_buffer) -> None:
    """Parquet with the table's declared types (frames.arrow_schema), so empty columns stay typed."""
    from ..frames import arrow_schema
    schema = arrow_schema(df)
    if schema is None:
        df.to_parquet(path_or_buffer, index=False)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), path_or_buffer)


def write(df: pd.DataFrame, fmt: str, output: str | None, csv_raw: bool = False) -> None:
    """Write ``df`` in ``fmt`` to the file ``output`` (stdout when None or '-').

    ``csv_raw``: CSV text cells are written as they are (formulas not defused).
    """
    to_stdout = output in (None, "-")
    terminal = to_stdout and sys.stdout.isatty()
    if fmt == "parquet":
        if to_stdout:
            buf = io.BytesIO()
            write_parquet(df, buf)
            sys.stdout.buffer.write(buf.getvalue())
            sys.stdout.flush()
        else:
            write_parquet(df, output)
        return
    writer = write_jsonl if fmt == "jsonl" else (lambda d, out: write_csv(d, out, raw=csv_raw))
    if to_stdout:
        # CSV keeps the capture's text as it is, for a file or a pipe; a person's terminal gets it
        # through the one cleaner (JSON lines are inert already: controls are \u escapes)
        writer(df, CleanWriter(sys.stdout, crlf=True) if terminal and fmt == "csv" else sys.stdout)
        sys.stdout.flush()
    else:
        with open(output, "w", encoding="utf-8", newline="") as f:
            writer(df, f)


EXTENSIONS = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
