"""live's JSON lines (frames.json_row) say exactly what the tables' JSON says, row by row."""

from __future__ import annotations

import pathlib

import pytest

import maildissect
from maildissect import frames
from maildissect.model import Message
from maildissect.output.files import json_ready

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("capture", ["journey.pcap", "webmail.pcap", "tls.pcap", "journey-impaired.pcap"])
def test_json_row_is_the_tables_json(capture):
    a = maildissect.analyze(str(ROOT / "captures" / capture))
    for table in ("flows", "sessions", "commands", "messages", "credentials", "anomalies", "http", "mailboxes"):
        records = getattr(a.records, table)
        if not records:
            continue
        assert [frames.json_row(table, r) for r in records] == json_ready(frames.frame(table, records)), table


def test_json_row_edge_values():
    m = Message("smtp", 1, 1714557600.123456789, "sent", size=1 << 70, date=-1.5, rcpt_to=["a@b"])
    for ts in (0.0, 1714557600.0000005, 1714557600.9999999, 253402300800.0, 1e20):
        m.ts = ts
        assert frames.json_row("messages", m) == json_ready(frames.frame("messages", [m]))[0], ts
