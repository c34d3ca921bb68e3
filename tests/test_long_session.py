"""One SMTP session carrying 16,000 small messages (tests/fixtures/long_session.py).

Long relay sessions are ordinary traffic. Joining the records of a session by
time windows made journeys, the timeline, the report and the Zeek logs cost
messages x commands (minutes here); joined by their keys they cost the
records. No timing is asserted (docs/performance.md has the figures): the
joins must be right, message by message.
"""

from __future__ import annotations

import pytest

import maildissect
from maildissect.output import zeek
from maildissect.output.report import _ladder_steps
from tests.fixtures.long_session import T0, line_time, message_id, queue_id, write

N = 16_000


@pytest.fixture(scope="module")
def long_session(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long.pcap"
    write(str(path), N)
    return maildissect.analyze(str(path), jobs=1)


def test_every_message_is_one_journey_of_one_hop(long_session):
    a = long_session
    assert len(a.records.messages) == N
    jr = a.journey_records
    assert len(jr.journeys) == N and len(jr.hops) == N
    hops = {h.message_id: h for h in jr.hops}
    assert len(hops) == N
    for i in (1, 2, 3, N // 2, N):
        h = hops[message_id(i)]
        assert (h.protocol, h.outcome, h.queue_id, h.attempt, h.latency) == ("smtp", "accepted", queue_id(i), 1,
                                                                             None)
        assert h.command_seq == 4 + 4 * (i - 1)  # the DATA command (0: greeting, 1: EHLO, then 4 per message)
        # the connection was opened for the first message; the others start at their MAIL FROM
        mail_line = 3 + 8 * (i - 1)
        assert h.start == pytest.approx(T0 if i == 1 else line_time(mail_line), abs=5e-6)
        assert h.end == pytest.approx(line_time(mail_line + 6), abs=5e-6)  # the data with its final dot
    assert all(h.start <= h.end for h in jr.hops)


def test_commands_carry_their_transaction(long_session):
    cmds = sorted(long_session.records.commands, key=lambda c: c.seq)
    assert [c.seq for c in cmds] == list(range(2 + 4 * N + 1))
    for i in (1, N):
        mail, rcpt, data, dot = cmds[2 + 4 * (i - 1):6 + 4 * (i - 1)]
        assert [c.command for c in (mail, rcpt, data, dot)] == ["MAIL", "RCPT", "DATA", "."]
        assert {c.transaction for c in (mail, rcpt, data, dot)} == {i}


def test_timeline_ties_every_envelope_to_its_message(long_session):
    events = long_session.event_records
    accepted = [e for e in events if e.event == "message_accepted"]
    assert len(accepted) == N and len({e.message_id for e in accepted}) == N
    mail = [e for e in events if e.event == "mail_from"]
    assert [e.message_id for e in mail] == [message_id(i) for i in range(1, N + 1)]
    rcpt = [e for e in events if e.event == "rcpt_accepted"]
    assert [e.message_id for e in rcpt] == [message_id(i) for i in range(1, N + 1)]
    assert not [e for e in events if e.event == "data_rejected"]


def test_zeek_smtp_log_one_row_per_transaction(long_session):
    rows = zeek.smtp_rows(long_session.records)
    assert len(rows) == N
    assert [r["msg_id"] for r in rows] == [message_id(i) for i in range(1, N + 1)]
    assert [r["trans_depth"] for r in rows] == list(range(1, N + 1))
    assert rows[-1]["last_reply"] == f"250 2.0.0 Ok: queued as {queue_id(N)}"


def test_ladder_places_every_message_after_its_354(long_session):
    a = long_session
    (flow,) = a.records.flows
    (session,) = a.records.sessions
    cmds = sorted(a.records.commands, key=lambda c: c.ts)
    msgs = sorted(a.records.messages, key=lambda m: m.ts)
    steps = _ladder_steps(flow, session, cmds, msgs, None)
    data = [s for s in steps if s[3] == "data"]
    assert len(data) == N
    replies_354 = sorted(c.reply_ts for c in cmds if c.command == "DATA")
    assert [s[0] for s in data] == replies_354
