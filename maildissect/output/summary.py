"""The `maildissect analyze` summary: what mail went over this wire, at a glance."""

from __future__ import annotations

from collections import Counter

import pandas as pd
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .tables import Screen, render
from .terminal import text


#: How much of a message a record holds, by its kind (messages.kind).
KIND_LABELS = {"data": "full", "bdat": "full", "body": "full", "retr": "full", "rfc822": "full", "jmap": "full",
               "header": "header", "top": "header", "text": "partial", "part": "partial", "partial": "partial",
               "view": "page", "attachment": "attachment", "form": "form", "blob": "file", "envelope": "envelope"}

#: SMTP transaction outcomes, in the order the summary lists them (messages.outcome)
OUTCOMES = ("delivered", "rejected", "no_recipients", "aborted", "unterminated")


def message_counts(messages) -> str:
    """``35 retrieved (4 full, 20 header, 6 partial, 5 page), 9 sent (6 delivered, 2 rejected,
    1 aborted)``: records per direction, and when they are not all whole messages, how many hold
    the full message, its header only (a mailbox listing), a part, a webmail page, a downloaded
    attachment, a form...; SMTP transactions are counted by outcome instead, so that refused and
    abandoned attempts (rows without a message) show apart from delivered mail."""
    by_dir: dict[str, Counter] = {}
    outcomes: dict[str, Counter] = {}
    for m in messages:
        if m.outcome is not None:
            outcomes.setdefault(m.direction, Counter())[m.outcome] += 1
        else:
            by_dir.setdefault(m.direction, Counter())[KIND_LABELS.get(m.kind or "", "full")] += 1
    out = []
    order = list(dict.fromkeys(KIND_LABELS.values()))
    for d in sorted(set(by_dir) | set(outcomes)):
        kinds = by_dir.get(d, Counter())
        ends = outcomes.get(d, Counter())
        parts = []
        if ends:
            parts += [f"{ends[k]} {k}" for k in OUTCOMES if ends[k]]
            parts += [f"{kinds[k]} {k}" for k in sorted(kinds, key=order.index)]
        elif set(kinds) != {"full"}:
            parts += [f"{kinds[k]} {k}" for k in sorted(kinds, key=order.index)]
        line = f"{sum(kinds.values()) + sum(ends.values())} {d}"
        if parts:
            line += " (" + ", ".join(parts) + ")"
        out.append(line)
    return ", ".join(out) or "none"


def unread_tls(sessions) -> tuple[int, int]:
    """(sessions, bytes) of TLS that stayed encrypted: TLS sessions no key log decrypted,
    counted by the TLS bytes they carried (tls_bytes_client + tls_bytes_server)."""
    n = size = 0
    for x in sessions:
        if x.tls and not x.decrypted:
            b = x.tls_bytes_client + x.tls_bytes_server
            if b:
                n += 1
                size += b
    return n, size


def _file_counts(records) -> str:
    """The rows of the files table: MIME entities of messages, files over HTTP (`maildissect files`)."""
    from ..frames import file_rows
    rows = file_rows(records)
    http = sum(1 for f in rows if f.source == "http")
    return f"{len(rows)} ({len(rows) - http} MIME entities, {http} over HTTP)" if rows else "0"


def overview(result) -> list[tuple[str, str]]:
    """(label, value) figures of an Analysis."""
    r, s = result.records, result.stats
    protos = Counter(x.protocol for x in r.sessions)
    span = ""
    if s.get("first_ts") is not None and s.get("last_ts") is not None:
        span = f"{s['last_ts'] - s['first_ts']:.3f} s"
    rows = [
        ("files", ", ".join(s.get("files", []))),
        ("frames", f"{s.get('frames', 0)} ({s.get('tcp_segments', 0)} TCP, {s.get('non_tcp', 0)} other IP, "
                   f"{s.get('non_ip', 0)} not IP)"),
        ("time span", span),
        ("TCP connections", str(len(r.flows))),
        ("sessions", ", ".join(f"{n} {p}" for p, n in sorted(protos.items())) or "none"),
        ("messages", message_counts(r.messages)),
        ("attachments", str(sum(len(m.attachments) for m in r.messages))),
        ("hashed files", _file_counts(r)),
        ("credentials", str(len(r.credentials))),
        ("anomalies", str(len(r.anomalies))),
    ]
    n, size = unread_tls(r.sessions)
    if n:
        how = "the key logs hold no keys for them" if "tls_decrypted" in s else "no key log was given (--keylog)"
        rows.insert(-3, ("TLS unread", f"{n} session{'s' if n != 1 else ''}, {size:,} bytes: {how}"))
    return rows


def print_summary(result, screen: Screen) -> None:
    """The overview panel, then sessions, messages, credentials and anomaly counts (50 rows each)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in overview(result):
        grid.add_row(Text(label), text(value))
    screen.print(Panel(grid, title=Text("maildissect"), expand=False))
    if len(result.records.sessions):
        render(result.sessions, "sessions", screen, title="Sessions", max_rows=50)
    if len(result.records.messages):
        render(result.messages, "messages", screen, title="Messages", max_rows=50,
               columns=["session_id", "ts", "protocol", "direction", "kind", "from", "to", "subject",
                        "attachments", "complete"])
    if len(result.records.credentials):
        render(result.credentials, "credentials", screen, title="Credentials", max_rows=50)
    if len(result.records.anomalies):
        counts = Counter(a.name for a in result.records.anomalies)
        first: dict[str, str] = {}
        for a in result.records.anomalies:
            first.setdefault(a.name, a.detail)
        names = [name for name, _ in counts.most_common(20)]
        df = pd.DataFrame({"name": names, "count": pd.array([counts[n] for n in names], dtype="Int64"),
                           "example": [first[n] for n in names]})
        render(df, "anomaly_counts", screen, title="Anomalies")
