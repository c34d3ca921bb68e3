"""The one road from captured data to a person's terminal.

Every string a capture supplied (headers, commands, replies, file names,
user names, URLs, anomaly details) was chosen by whoever sent the mail. A
terminal obeys control sequences: ``ESC[2J`` clears the screen, ``ESC]8;;URL``
makes a clickable link, a C1 ``CSI`` (U+009B) does what ``ESC[`` does on many
terminals, and bidirectional overrides (U+202E) show text in an order it does
not have. Rich, in turn, reads ``[link=...]`` or ``[/x]`` in a string as
markup. So every data string printed for a person goes through :func:`clean`
and reaches rich as a :class:`rich.text.Text` (:func:`text`), never as a
markup string; consoles are made with markup, emoji codes and highlighting off
(:func:`make_console`).

What :func:`clean` shows instead of an invisible or controlling character:

- C0 controls U+0000-U+001F and DEL: the Unicode control pictures, one column
  each (``ESC`` → ``␛``, ``TAB`` → ``␉``, ``LF`` → ``␊``, ``CR`` → ``␍``,
  ``BEL`` → ``␇``, ``NUL`` → ``␀``, ``DEL`` → ``␡``);
- C1 controls U+0080-U+009F, format characters (Unicode category Cf: bidi
  embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069, the marks
  U+200E, U+200F, U+061C, zero-width spaces and joiners, the BOM, soft hyphen,
  tag characters...), the line and paragraph separators U+2028/U+2029 and the
  invisible fillers U+034F, U+115F, U+1160, U+3164, U+FFA0: ``⟨U+XXXX⟩``
  (e.g. ``⟨U+202E⟩``, ``⟨U+009B⟩``);
- lone surrogates (text that is not Unicode): U+FFFD;
- the glyphs used as placeholders when they occur literally in the data (the
  control pictures U+2400-U+2421 and ``⟨`` U+27E8): ``⟨U+XXXX⟩`` too, so the
  rendering is unambiguous: every ``␛`` on screen was an ESC byte, and every
  ``⟨`` opens a placeholder.
"""

from __future__ import annotations

import re
import sys
import unicodedata

import click

#: Characters that are printable (``str.isprintable``) but are placeholders or invisible.
_ALSO = re.compile("[\u2400-\u2421\u27e8\u034f\u115f\u1160\u3164\uffa0]")
_FORMAT_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp"))


def _shown(ch: str) -> str:
    cp = ord(ch)
    if cp < 0x20:
        return chr(0x2400 + cp)
    if cp == 0x7F:
        return "\u2421"
    if 0xD800 <= cp <= 0xDFFF:
        return "\ufffd"
    if _ALSO.match(ch) or unicodedata.category(ch) in _FORMAT_CATEGORIES:
        return f"\u27e8U+{cp:04X}\u27e9"
    return ch  # other non-printables (spaces such as U+00A0, private use, unassigned) are harmless


def clean(value) -> str:
    """``value`` as text that is safe and unambiguous on a terminal (see the module doc)."""
    s = value if isinstance(value, str) else str(value)
    if s.isprintable() and not _ALSO.search(s):
        return s  # the common case costs one C-level scan
    return "".join(ch if ch.isprintable() and not _ALSO.match(ch) else _shown(ch) for ch in s)


def json_inert(line: str) -> str:
    """A JSON text with every character :func:`clean` would replace written as a ``\\uXXXX``
    escape: the same JSON value, but nothing a terminal obeys when the line is shown
    (``json.dumps`` already escapes C0 controls; C1 controls, DEL, bidi and other format
    characters it writes as they are). Lone surrogates become U+FFFD."""
    if line.isprintable() and not _ALSO.search(line):
        return line
    out = []
    for ch in line:
        if ch.isprintable() and not _ALSO.match(ch):
            out.append(ch)
            continue
        cp = ord(ch)
        if 0xD800 <= cp <= 0xDFFF:
            out.append("\\ufffd")
        elif cp > 0xFFFF:  # (astral format characters, e.g. tags: a surrogate pair of escapes)
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}")
        elif _shown(ch) != ch or cp == 0x7F:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(ch)
    return "".join(out)


def text(value, style: str | None = None):
    """A rich Text of cleaned ``value`` (never read as markup)."""
    from rich.text import Text
    return Text(clean(value), style=style or "")


def assemble(*parts):
    """A rich Text from parts: strings (cleaned) and ``(string, style)`` pairs (cleaned too)."""
    from rich.text import Text
    out = Text()
    for part in parts:
        if isinstance(part, tuple):
            out.append(clean(part[0]), style=part[1])
        else:
            out.append(clean(part))
    return out


def make_console(file=None, width: int | None = None, stderr: bool = False):
    """A rich Console that never interprets strings: no markup, no emoji codes, no highlighting."""
    from rich.console import Console
    return Console(file=file, width=width, stderr=stderr, markup=False, emoji=False, highlight=False,
                   soft_wrap=False)


def echo_err(message: str) -> None:
    """One line on stderr, cleaned (it may quote a file name or captured text)."""
    click.echo(clean(message), err=True)


def warn(message: str) -> None:
    """``maildissect: warning: ...`` on stderr, cleaned."""
    echo_err(f"maildissect: warning: {message}")


class CleanWriter:
    """A text stream wrapper that cleans what is written, keeping line breaks.

    Used for messages composed by libraries (click's usage errors quote the
    arguments as given), and for CSV written to a terminal (``crlf``: a CR that
    ends a line, the CSV row end, is kept; any other is shown as ``␍``).
    """

    def __init__(self, stream=None, crlf: bool = False):
        self.stream = stream if stream is not None else sys.stderr
        self.crlf = crlf

    def _line(self, line: str) -> str:
        if self.crlf and line.endswith("\r"):
            return clean(line[:-1]) + "\r"
        return clean(line)

    def write(self, s: str) -> int:
        self.stream.write("\n".join(self._line(line) for line in s.split("\n")))
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False
