"""`maildissect live` output: one line per session or message as it completes.

A sensor must not stop for one record. A record whose text cannot be written
(lone surrogates, which no encoding accepts, or characters the output's
encoding lacks) is printed with replacements and followed by an anomaly line
naming its fields; a record that cannot be rendered at all (a bug) is printed
in a minimal form with an anomaly, and the capture goes on.

Table lines go through the terminal cleaner (:mod:`maildissect.output.terminal`);
JSON lines are written as JSON (controls escaped by the JSON encoder).
"""

from __future__ import annotations

import copy as _copy
import dataclasses
import json
import re
from datetime import datetime
from typing import Callable

from ..model import Anomaly
from .terminal import clean, json_inert

_SURROGATE = re.compile("[\ud800-\udfff]")

ANOMALIES = {
    "live_unwritable_text": "a record printed by `live` held text that cannot be written (lone surrogates or "
                            "characters the output encoding lacks); the fields named in the detail were "
                            "printed with replacements",
    "live_render_error": "a record could not be printed by `live` (an internal error, named in the detail); a "
                         "minimal line was printed instead and the capture went on",
}


def record_json(table: str, record) -> str:
    """One JSON object: ``{"record": "message", ...the table's columns}``."""
    from .. import frames
    row = frames.json_row(table, record)  # (a DataFrame per record cost ~50 ms: live fell behind)
    return json_inert(json.dumps({"record": _singular(table), **row}, ensure_ascii=False, default=str))


def _singular(table: str) -> str:
    return {"anomalies": "anomaly", "mailboxes": "mailbox"}.get(table, table[:-1] if table.endswith("s") else table)


def _clock(ts) -> str:
    try:
        return datetime.fromtimestamp(ts or 0).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "--:--:--"


def record_line(table: str, r) -> str:
    """One human line for a session, message or anomaly record (cleaned for a terminal)."""
    when = _clock(getattr(r, "end", None) or getattr(r, "ts", 0))
    if table == "messages":
        atts = f", {len(r.attachments)} attachment(s)" if r.attachments else ""
        subject = f" \u201c{clean(r.subject)}\u201d" if r.subject else ""
        # an SMTP transaction says how it ended (one without a message: its envelope and outcome)
        outcome = f" [{r.outcome}]" if r.outcome and r.outcome != "delivered" else ""
        return clean(f"{when} message  #{r.session_id} {r.protocol} {r.direction}: {r.from_ or r.mail_from or '?'} "
                     f"-> {', '.join(r.to or r.rcpt_to or r.rcpt_rejected) or '?'}") + subject + atts + outcome
    if table == "anomalies":
        return clean(f"{when} anomaly  #{r.session_id if r.session_id is not None else '-'} {r.name}: {r.detail}")
    return clean(f"{when} session  #{r.session_id} {r.protocol} {r.client_ip}:{r.client_port} -> "
                 f"{r.server_ip}:{r.server_port} user={r.auth_user or '-'} tls={'yes' if r.tls else 'no'} "
                 f"commands={r.commands} messages={r.messages}")


def _unwritable(value, path: str, out: list[str], encoding: str) -> None:
    """Names (``path``) of the strings inside ``value`` that ``encoding`` cannot write."""
    if isinstance(value, str):
        try:
            value.encode(encoding)
        except UnicodeEncodeError:
            out.append(path)
    elif isinstance(value, dict):
        for k, v in value.items():
            _unwritable(v, f"{path}.{k}", out, encoding)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _unwritable(v, f"{path}[{i}]", out, encoding)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _unwritable(getattr(value, f.name), f"{path}.{f.name}" if path else f.name, out, encoding)


def _repaired(value):
    """``value`` with lone surrogates in its strings replaced by U+FFFD (a copy when changed)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_repaired(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_repaired(v) for v in value)
    if isinstance(value, dict):
        return {k: _repaired(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        copy = _copy.copy(value)
        for f in dataclasses.fields(value):
            object.__setattr__(copy, f.name, _repaired(getattr(value, f.name)))
        return copy
    return value


class LiveRenderer:
    """Prints each record handed to it in ``fmt`` (``table`` or ``jsonl``) with ``write``.

    ``prepare`` (e.g. redaction) is applied first, inside the same protection.
    """

    def __init__(self, fmt: str, write: Callable[[str], None], encoding: str = "utf-8",
                 prepare: Callable | None = None):
        self.fmt = fmt
        self.write = write
        self.encoding = encoding or "utf-8"
        self.prepare = prepare
        self.anomalies = 0

    def __call__(self, table: str, record) -> None:
        try:
            if self.prepare is not None:
                record = self.prepare(record)
            broken: list[str] = []
            _unwritable(record, "", broken, "utf-8")  # lone surrogates: no encoding writes them
            if broken:
                record = _repaired(record)
            line = record_json(table, record) if self.fmt == "jsonl" else record_line(table, record)
        except Exception as e:  # a bug in rendering must not end the capture
            self._fallback(table, record, e)
            return
        try:
            line.encode(self.encoding)
        except UnicodeEncodeError:  # characters this output's encoding lacks
            line = line.encode(self.encoding, "replace").decode(self.encoding)
            broken.append(f"(characters {self.encoding} cannot write)")
        self.write(line)
        if broken:
            self._anomaly(record, "live_unwritable_text",
                          f"{_singular(table)} fields {', '.join(broken[:10])}"
                          f"{' (and more)' if len(broken) > 10 else ''} printed with replacements")

    def _fallback(self, table: str, record, error: Exception) -> None:
        sid = getattr(record, "session_id", None)
        if self.fmt == "jsonl":
            self.write(json.dumps({"record": _singular(table), "session_id": sid if isinstance(sid, int) else None,
                                   "error": "not rendered"}))
        else:
            self.write(clean(f"{_clock(getattr(record, 'ts', None))} {_singular(table)} #{sid}: not rendered"))
        self._anomaly(record, "live_render_error", f"{_singular(table)}: {type(error).__name__}: {error}")

    def _anomaly(self, record, name: str, detail: str) -> None:
        self.anomalies += 1
        sid = getattr(record, "session_id", None)
        ts = getattr(record, "ts", None)
        detail = _SURROGATE.sub("\ufffd", detail).encode(self.encoding, "replace").decode(self.encoding)
        a = Anomaly(ts if isinstance(ts, (int, float)) else None, sid if isinstance(sid, int) else None, "", name,
                    detail)
        try:
            line = record_json("anomalies", a) if self.fmt == "jsonl" else record_line("anomalies", a)
        except Exception:  # (cannot fail on these plain values; a last resort all the same)
            line = clean(f"anomaly {name}: {detail}")
        self.write(line)


def _size(n) -> str:
    n = n or 0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def summary_line(s: dict, keylog: bool = False) -> list[str]:
    """The lines `live` ends with on stderr: what was analysed, then what the capture saw and lost."""
    first = (f"{s['frames']} packets analysed, {s['flows']} connections, {s['sessions']} sessions, "
             f"{s['messages']} messages in {s['seconds']} s"
             + (f", {s['tls_decrypted']} TLS sessions decrypted" if keylog and s.get("tls_decrypted") is not None
                else ""))
    if s.get("backend") != "spool":
        drops = s.get("kernel_drops")
        return [first + (f"; kernel dropped {drops}" if drops is not None else "")]
    captured = s.get("captured")
    drops = s.get("kernel_drops")
    second = (f"capture: {captured if captured is not None else '?'} packets captured, kernel dropped "
              f"{drops if drops is not None else '?'}, spool dropped {s['spool_dropped_packets']} "
              f"({_size(s['spool_dropped_bytes'])}); backlog when stopped {s['backlog_packets_at_stop']} packets "
              f"({_size(s['backlog_bytes_at_stop'])}), analysis lag {s['lag_at_stop']} s, caught up in "
              f"{s['catch_up_seconds'] if s['catch_up_seconds'] is not None else '?'} s")
    if s.get("abandoned"):
        second += "; analysis abandoned (second interrupt): the rest of the backlog was not analysed"
    return [first, second]


class LiveProgress:
    """One status line on stderr, when it is a terminal: packets per second captured and
    analysed, the backlog waiting in the spool, the drops (rich, through the terminal module)."""

    @classmethod
    def on_terminal(cls):
        import sys
        try:
            tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls() if tty else None

    def __init__(self, file=None):
        import sys
        from rich.live import Live
        from .terminal import make_console
        self.console = make_console(file=file, stderr=file is None)
        try:
            # records printed on the same terminal go above the status line (through rich);
            # to a file or a pipe they go straight to stdout
            self.shared = sys.stdout.isatty()
        except (AttributeError, ValueError):
            self.shared = False
        self.live = Live(console=self.console, auto_refresh=False, transient=True, redirect_stdout=self.shared,
                         redirect_stderr=True)
        self.live.start()

    @staticmethod
    def text(c: dict):
        from rich.text import Text
        cap = c.get("captured_per_s")
        ana = c.get("analysed_per_s")
        line = (f"captured {c['captured']:,}" + (f" ({cap:,.0f}/s)" if cap is not None else "")
                + f"  analysed {c['analysed']:,}" + (f" ({ana:,.0f}/s)" if ana is not None else "")
                + f"  backlog {_size(c['backlog_bytes'])}  kernel drops {c['kernel_drops']:,}"
                + f"  spool drops {c['spool_dropped_packets']:,}")
        if c.get("stopped"):
            line += "  (capture stopped: analysing the backlog; Ctrl-C again to leave it)"
        return Text(line)

    def update(self, counters: dict) -> None:
        self.live.update(self.text(counters), refresh=True)

    def wrap(self, on_record):
        """``on_record`` (a :class:`LiveRenderer`) printing through the status line's redirection
        when stdout is the same terminal."""
        if self.shared and isinstance(on_record, LiveRenderer):
            import sys
            on_record.write = lambda line: sys.stdout.write(line + "\n")  # (rich's stand-in, looked up per line)
        return on_record

    def close(self) -> None:
        self.live.stop()
