"""Golden test: Zeek's POP3 trace against the request/reply sequence of Zeek's baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import maildissect

ZEEK = Path(__file__).parent / "captures" / "zeek"


@pytest.fixture(scope="module")
def analysis():
    return maildissect.analyze([str(ZEEK / "pop3-pop3.pcap")])


@pytest.fixture(scope="module")
def expected():
    return json.loads((ZEEK / "expected.json").read_text())["captures"]["pop3-pop3"]


def norm(text):
    return " ".join(str(text).split()).lower()


def test_request_reply_sequence_matches_zeek(analysis, expected):
    cmds = analysis.commands
    sessions = analysis.sessions.set_index("session_id")
    by_port: dict[int, list] = {}
    for row in cmds.sort_values(["session_id", "ts"]).itertuples():
        by_port.setdefault(int(sessions.loc[row.session_id, "client_port"]), []).append(row)
    want: dict[int, list] = {}
    for c in expected["commands"]:
        want.setdefault(c["hints"]["client_port"], []).append(c["fields"])
    assert set(want) <= set(by_port)
    for port, fields in want.items():
        got = by_port[port]
        assert len(got) == len(fields), port
        for row, f in zip(got, fields):
            assert row.command == f["command"]["value"]
            assert row.reply_code == {"OK": "+OK", "ERR": "-ERR"}[f["status"]["value"]]
            if "args" in f:
                assert row.argument == f["args"]["value"]
            assert norm(row.reply_text) == norm(f["reply"]["value"]) if "reply" in f else row.reply_text == ""


def test_sessions_credentials_and_retrieved_messages(analysis, expected):
    ports = {s["hints"]["client_port"] for s in expected["sessions"]}
    sess = analysis.sessions
    assert ports <= set(sess.client_port)
    assert set(sess[sess.client_port.isin(ports)].protocol) == {"pop3"}
    creds = analysis.credentials.sort_values("ts")
    assert list(creds.mechanism) == ["PLAIN", "PLAIN", "PLAIN"]
    assert set(creds.user) == {"digitalinvestigator@networksims.com"}
    assert list(creds.success) == [False, True, True]
    msgs = analysis.messages.sort_values("ts")
    # the sizes the server announced in its LIST reply (1 5565, 2 8412, 3 5214)
    assert list(msgs["size"]) == [5565, 8412, 5214]
    assert msgs["complete"].all() and set(msgs.direction) == {"retrieved"}
    assert list(msgs.subject) == ["A message from 1&1 Internet", "Testing", "RE: Testing"]
    assert analysis.anomalies.empty
    mb = analysis.mailboxes
    assert sorted(mb[mb.action == "list"]["size"]) == [5214, 5565, 8412]
    assert len(mb[mb.action == "uidl"]) == 3 and len(mb[mb.action == "retr"]) == 3
