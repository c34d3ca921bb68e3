"""Real-server round trip: POP3 sessions recorded against Dovecot (tests/captures/dovecot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import maildissect

DIR = Path(__file__).parent / "captures" / "dovecot"
MANIFEST = json.loads((DIR / "manifest.json").read_text())
FILES = {m["sha256"]: m for m in MANIFEST["mailbox"]}


@pytest.fixture(scope="module")
def pop3():
    return maildissect.analyze([str(DIR / "dovecot-pop3.pcap")])


def test_retrieved_messages_equal_mailbox_files(pop3):
    assert pop3.anomalies.empty
    msgs = pop3.messages.sort_values("ts")
    retr = msgs[msgs.kind == "body"]
    assert retr.complete.all() and set(retr.sha256) == set(FILES)
    for row in retr.itertuples():
        want = FILES[row.sha256]
        assert (row.size, row.message_id) == (want["size"], want["message_id"])
        assert [a["sha256"] for a in row.attachments] == [a["sha256"] for a in want["attachments"]]
    (top,) = msgs[msgs.kind == "top"].itertuples()
    assert not top.complete and top.source == "TOP 2 0"
    assert top.message_id in {m["message_id"] for m in FILES.values()}


def test_commands_and_credentials(pop3):
    cmds = pop3.commands
    assert cmds.reply_code.notna().all()
    assert set(cmds.command) == {"", "CAPA", "USER", "PASS", "STAT", "LIST", "UIDL", "TOP", "RETR", "NOOP", "QUIT",
                                 "APOP", "DELE", "RSET", "AUTH"}
    creds = pop3.credentials.sort_values("ts")
    assert list(zip(creds.mechanism, creds.success)) == [("USER/PASS", True), ("APOP", True), ("PLAIN", True),
                                                         ("USER/PASS", False)]
    assert set(creds.user) == {MANIFEST["user"]}
    assert creds.iloc[0].secret == MANIFEST["password"] and creds.iloc[2].secret == MANIFEST["password"]
    assert creds.iloc[1].detail.startswith("timestamp <")
    assert set(pop3.sessions.server_software) == {"Dovecot"}


def test_mailbox_events(pop3):
    mb = pop3.mailboxes
    first = mb[mb.session_id == mb.session_id.min()]
    (stat,) = first[first.action == "stat"].head(1).itertuples()
    assert stat.count == len(FILES) and stat.size == sum(m["size"] for m in FILES.values())
    assert sorted(first[first.action == "list"].drop_duplicates("seq")["size"]) == sorted(
        m["size"] for m in FILES.values())
    assert first[first.action == "uidl"].seq.nunique() == len(FILES)
    retr = first[first.action == "retr"]
    assert set(retr.message_id) == {m["message_id"] for m in FILES.values()}
    # DELE then RSET undoes nothing on the server; DELE then QUIT deletes
    assert {"dele", "rset", "expunge"} <= set(mb.action)
    assert len(mb[mb.action == "expunge"]) == 1
