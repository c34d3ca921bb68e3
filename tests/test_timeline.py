"""The timeline (events table): one row per meaningful event, across protocols."""

from __future__ import annotations

import json

import pytest

import maildissect
from maildissect.model import Anomaly, Command, Credential, Flow, Message, Session
from maildissect.pipeline import Collector
from maildissect.timeline import EVENTS, build_events, endpoint, filter_events, queue_id_of
from tests.pcaps import conversation, write_pcap
from tests.test_journeys import (MID, MTA_A, POP_B, READER, T0, UA, cli_run, journey_frames, message,
                                 pop3_session, refused, unanswered)

IMAP_B = ("10.0.0.30", 143)


def imap_session(client, server, data: bytes, t0):
    n = len(data)
    ex = [("s", b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"),
          ("c", b"a1 LOGIN bob \"s3cret-imap\"\r\n"), ("s", b"a1 OK LOGIN completed\r\n"),
          ("c", b"a2 SELECT INBOX\r\n"),
          ("s", b"* 1 EXISTS\r\n* OK [UIDVALIDITY 42] ok\r\na2 OK [READ-WRITE] SELECT completed\r\n"),
          ("c", b"a3 UID FETCH 7 (UID BODY[])\r\n"),
          ("s", b"* 1 FETCH (UID 7 BODY[] {" + str(n).encode() + b"}\r\n" + data + b")\r\na3 OK FETCH completed\r\n"),
          ("c", b"a4 STORE 1 +FLAGS (\\Seen)\r\n"), ("s", b"a4 NO store refused\r\n"),
          ("c", b"a5 LOGOUT\r\n"), ("s", b"* BYE\r\na5 OK LOGOUT completed\r\n")]
    frames, _, _ = conversation(client=client, server=server, exchanges=ex, t0=t0)
    return frames


def smtp_rejecting(client, server, t0):
    """A session where one recipient is rejected and the message is accepted for the other."""
    data = message("<two@a.example>")
    ex = [("s", b"220 mx ESMTP\r\n"), ("c", b"EHLO relay.example\r\n"), ("s", b"250 mx\r\n"),
          ("c", b"MAIL FROM:<alice@a.example>\r\n"), ("s", b"250 ok\r\n"),
          ("c", b"RCPT TO:<nobody@b.example>\r\n"), ("s", b"550 5.1.1 no such user\r\n"),
          ("c", b"RCPT TO:<bob@b.example>\r\n"), ("s", b"250 ok\r\n"),
          ("c", b"DATA\r\n"), ("s", b"354 go\r\n"), ("c", data + b".\r\n"), ("s", b"250 2.0.0 Ok: queued as ZZ9\r\n"),
          ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]
    frames, _, _ = conversation(client=client, server=server, exchanges=ex, t0=t0)
    return frames


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("timeline") / "mixed.pcap"
    frames = journey_frames()
    frames += smtp_rejecting(("10.0.0.50", 40500), ("10.0.0.30", 25), T0 + 400)
    frames += imap_session(READER[:1] + (40600,), IMAP_B, message(MID, received=["x"]), T0 + 500)
    frames += unanswered(("10.0.0.50", 40700), ("10.0.0.31", 25), T0 + 600)
    write_pcap(path, sorted(frames, key=lambda f: f[0]))
    return str(path)


@pytest.fixture(scope="module")
def analysis(capture):
    return maildissect.analyze(capture)


def names(events, sid=None):
    return [e.event for e in events if sid is None or e.session_id == sid]


def test_connection_events(analysis):
    ev = analysis.event_records
    flows = {f.flow_id: f for f in analysis.records.flows}
    first = ev[0]
    assert (first.event, first.session_id, first.outcome, first.client, first.server) == (
        "tcp_connect", 0, "ok", "10.0.0.10:40001", "10.0.0.20:587")
    assert "handshake 2.000 ms" in first.description  # SYN at +1 ms, ACK of the SYN-ACK at +3 ms
    refused_ev = [e for e in ev if e.event == "tcp_refused"]
    assert len(refused_ev) == 1 and refused_ev[0].outcome == "refused" and refused_ev[0].actor == "server"
    assert refused_ev[0].ts == flows[refused_ev[0].session_id].start
    unans = [e for e in ev if e.event == "tcp_unanswered"]
    assert len(unans) == 1 and "SYN never answered (2 packet(s)" in unans[0].description
    closes = [e for e in ev if e.event == "tcp_close"]
    assert len(closes) == sum(1 for f in flows.values() if f.close == "fin")
    assert all(e.ts == flows[e.session_id].end for e in closes)


def test_smtp_story_in_order(analysis):
    ev = analysis.event_records
    sub = names(ev, 0)
    assert sub == ["tcp_connect", "greeting", "helo", "auth_success", "mail_from", "rcpt_accepted",
                   "message_accepted", "tcp_close"]
    msg = [e for e in ev if e.event == "message_accepted" and e.session_id == 0][0]
    assert msg.message_id == MID and "queued as QA1" in msg.description and msg.outcome == "ok"
    # the envelope commands carry the Message-ID of their transaction
    assert {e.message_id for e in ev if e.session_id == 0 and e.event in ("mail_from", "rcpt_accepted")} == {MID}
    grey = [e for e in ev if e.event == "rcpt_rejected" and "451" in e.description][0]
    assert grey.outcome == "deferred"
    rej = [e for e in ev if e.event == "rcpt_rejected" and "550" in e.description][0]
    assert rej.outcome == "failed" and rej.message_id == "<two@a.example>"
    zz = [e for e in ev if e.event == "message_accepted" and "ZZ9" in e.description][0]
    assert "refused recipients: nobody@b.example" in zz.description


def test_mailbox_events(analysis):
    ev = analysis.event_records
    imap = [e for e in ev if e.protocol == "imap"]
    assert [e.event for e in imap] == ["tcp_connect", "greeting", "auth_success", "imap_select", "imap_fetch",
                                       "imap_store", "tcp_close"]
    fetch = imap[4]
    assert fetch.message_id == MID and fetch.actor == "server" and "UID FETCH" in fetch.description
    assert imap[5].outcome == "failed" and "STORE" in imap[5].description
    pop = [e for e in ev if e.protocol == "pop3"]
    assert [e.event for e in pop] == ["tcp_connect", "greeting", "auth_success", "pop3_retr", "tcp_close"]
    assert pop[3].message_id == MID


def test_no_secret_in_any_description(analysis):
    text = " ".join(e.description for e in analysis.event_records)
    for secret in ("hunter2", "s3cret-imap", "AGFsaWNlAHMzY3JldC1wYXNz", "s3cret-pass"):
        assert secret not in text
    assert "PLAIN as alice: accepted" in text and "USER/PASS as bob: accepted" in text


def test_events_table_and_every_name_documented(analysis):
    df = analysis.events
    assert list(df.columns[:8]) == ["ts", "session_id", "protocol", "client", "server", "event", "outcome",
                                    "message_id"]
    assert str(df["ts"].dtype) == "datetime64[us, UTC]"
    assert df["ts"].is_monotonic_increasing
    assert set(df["event"].astype(str)) <= set(EVENTS)


def test_filters(analysis):
    ev = analysis.event_records
    jr = analysis.journey_records
    for needle in (MID, "journey-1@a.example", "JOURNEY-1"):
        sessions = jr.sessions_of(j.journey_id for j in jr.find(needle))
        got = filter_events(ev, message_id=needle, sessions_of_message=sessions)
        kinds = [e.event for e in got]
        # the message's transfers, its refused and greylisted attempts, and their connections
        assert "tcp_refused" in kinds and "message_accepted" in kinds and "pop3_retr" in kinds
        assert "imap_fetch" in kinds
        assert all(e.message_id in (MID, None) for e in got)
        assert not any(e.message_id == "<two@a.example>" for e in got)
    only = filter_events(ev, session_id=0)
    assert {e.session_id for e in only} == {0}


def test_timeline_command(capture):
    code, out, err = cli_run(["timeline", capture, "-q", "-j", "1", "-f", "jsonl", "--message-id", "journey-1"])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and rows[0]["event"] == "tcp_connect" and rows[0]["ts"].endswith("Z")
    assert any(r["event"] == "tcp_refused" for r in rows)
    code, out, _ = cli_run(["timeline", capture, "-q", "-j", "1", "-f", "csv", "--session", "0"])
    assert code == 0 and out.splitlines()[0].startswith("ts,session_id,protocol,client,server,event")
    assert len(out.splitlines()) == 1 + 8
    code, out, err = cli_run(["timeline", capture, "-q", "-j", "1", "--message-id", "<missing@x>"])
    assert code == 1 and err.startswith("maildissect: error:") and len(err.strip().splitlines()) == 1


def test_odd_records_do_not_break_the_timeline():
    """Missing times, replies and addresses; unknown protocols; capture-level anomalies."""
    c = Collector()
    c.flows += [Flow(0, "10.0.0.1", 1, "10.0.0.2", 25, 1.0, 2.0, close="rst", syn_seen=True),
                Flow(1, "::1", 5, "::2", 8080, 3.0, 3.0, close="open")]
    c.sessions.append(Session(0, "smtp", "10.0.0.1", 1, "10.0.0.2", 25, start=1.0, end=2.0, tls=True))
    c.commands += [Command(0, "smtp", 1.1, ""), Command(0, "smtp", 1.2, "MAIL", "FROM:<>", reply_code="421"),
                   Command(0, "smtp", 1.3, "DATA", reply_code="554", reply_text="no valid recipients"),
                   Command(0, "smtp", 1.4, "BOGUS\x00", "\udcff")]
    c.messages.append(Message("smtp", 0, None, "sent"))
    c.credentials.append(Credential(0, "smtp", 1.15, "LOGIN", None, "pw", None))
    c.anomalies += [Anomaly(None, None, "", "capture_truncated", "x"), Anomaly(1.5, 0, "client", "tcp_gap")]
    ev = build_events(c)
    kinds = [e.event for e in ev]
    assert kinds[0] == "anomaly" and ev[0].session_id is None
    assert "tcp_reset" in kinds and "tcp_open" in kinds and "data_rejected" in kinds
    assert "auth_attempt" in kinds and "message_unanswered" in kinds
    assert [e for e in ev if e.event == "tcp_open"][0].client == "[::1]:5"


def test_helpers():
    assert endpoint("2001:db8::1", 25) == "[2001:db8::1]:25" and endpoint(None, 1) == ""
    assert queue_id_of("2.0.0 Ok: queued as 4F2D1A") == "4F2D1A"
    assert queue_id_of("OK id=1Mugho-0003Dg-Un") == "1Mugho-0003Dg-Un"
    assert queue_id_of("Ok") is None


def test_pop3_and_refused_frames_alone(tmp_path):
    path = tmp_path / "small.pcap"
    frames = pop3_session(UA, POP_B, message(None), T0) + refused(("10.0.0.9", 5), MTA_A[:2], T0 + 9)
    write_pcap(path, frames)
    ev = maildissect.analyze(str(path)).event_records
    assert [e.event for e in ev] == ["tcp_connect", "greeting", "auth_success", "pop3_retr", "tcp_close",
                                     "tcp_refused"]
    assert ev[3].message_id is None and "message without Message-ID" in ev[3].description


def test_docs_list_every_event():
    import os
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "report.md"),
                encoding="utf-8").read()
    for name, meaning in EVENTS.items():
        assert f"| `{name}` | {meaning} |" in text, name
