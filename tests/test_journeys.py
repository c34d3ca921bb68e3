"""Journeys: one message across hops, failed attempts, queue times, Received cross-check.

Two kinds of input: captures synthesised here (every time and address known,
so latencies are checked to the microsecond), and the traffic generator's
``journey`` and ``relay`` captures, checked against their manifests (what the
mail servers' queues really did).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile

import pytest

import maildissect
from maildissect.correlate import correlate, journey_title
from tests.pcaps import conversation, tcp_frame, write_pcap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- building captures --------------------------------------------------------------------------
def message(mid: str | None, subject="Quarterly numbers", received=(), frm="alice@a.example",
            to="bob@b.example", body="Hello Bob,\r\nthe numbers are attached.\r\n") -> bytes:
    """An RFC 5322 message (Received headers first, newest first, as servers prepend them)."""
    head = "".join(f"Received: {r}\r\n" for r in received)
    head += f"From: Alice <{frm}>\r\nTo: Bob <{to}>\r\nSubject: {subject}\r\n"
    head += "Date: Mon, 06 Jan 2025 10:00:00 +0000\r\n"
    if mid:
        head += f"Message-ID: {mid}\r\n"
    return (head + "\r\n" + body).encode()


def smtp_session(client, server, msgs, t0, auth=None, helo="client.example", greylist=False):
    """Frames of one SMTP session sending ``msgs``: [(mail_from, rcpt, bytes, queue_id)]."""
    ex = [("s", b"220 " + server[2].encode() + b" ESMTP ready\r\n"),
          ("c", f"EHLO {helo}\r\n".encode()),
          ("s", f"250-{server[2]}\r\n250 AUTH PLAIN\r\n".encode())]
    if auth:
        ex += [("c", b"AUTH PLAIN AGFsaWNlAHMzY3JldC1wYXNz\r\n"), ("s", b"235 2.7.0 Authentication successful\r\n")]
    for mail_from, rcpt, data, qid in msgs:
        ex += [("c", f"MAIL FROM:<{mail_from}>\r\n".encode()), ("s", b"250 2.1.0 Ok\r\n"),
               ("c", f"RCPT TO:<{rcpt}>\r\n".encode())]
        if greylist:
            ex += [("s", b"451 4.7.1 Greylisted, please try again later\r\n")]
            continue
        ex += [("s", b"250 2.1.5 Ok\r\n"), ("c", b"DATA\r\n"), ("s", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
               ("c", data + b".\r\n"), ("s", f"250 2.0.0 Ok: queued as {qid}\r\n".encode())]
    ex += [("c", b"QUIT\r\n"), ("s", b"221 Bye\r\n")]
    frames, _, _ = conversation(client=client[:2], server=server[:2], exchanges=ex, t0=t0)
    return frames


def pop3_session(client, server, data: bytes, t0):
    ex = [("s", b"+OK POP3 ready\r\n"), ("c", b"USER bob\r\n"), ("s", b"+OK\r\n"), ("c", b"PASS hunter2\r\n"),
          ("s", b"+OK logged in\r\n"), ("c", b"RETR 1\r\n"), ("s", b"+OK message follows\r\n" + data + b".\r\n"),
          ("c", b"QUIT\r\n"), ("s", b"+OK bye\r\n")]
    frames, _, _ = conversation(client=client, server=server, exchanges=ex, t0=t0)
    return frames


def refused(client, server, t0):
    """SYN answered by RST: a connection refused."""
    return [(t0, tcp_frame(client[0], server[0], client[1], server[1], 7000, 0, "S")),
            (t0 + 0.0002, tcp_frame(server[0], client[0], server[1], client[1], 0, 7001, "RA"))]


def unanswered(client, server, t0):
    """A SYN and its retransmission, never answered."""
    return [(t0, tcp_frame(client[0], server[0], client[1], server[1], 9000, 0, "S")),
            (t0 + 1.0, tcp_frame(client[0], server[0], client[1], server[1], 9000, 0, "S"))]


UA = ("10.0.0.10", 40001)
MTA_A = ("10.0.0.20", 587, "mail.a.example")
MTA_A_OUT = "10.0.0.20"
MX_B = ("10.0.0.30", 25, "mail.b.example")
POP_B = ("10.0.0.30", 110)
READER = ("10.0.0.40", 40100)
MID = "<journey-1@a.example>"
RECEIVED_A = "from client.example (client.example [10.0.0.10]) by mail.a.example with ESMTPA id QA1; " \
             "Mon, 06 Jan 2025 10:00:00 +0000"
RECEIVED_B = "from mail.a.example (mail.a.example [10.0.0.20]) by mail.b.example with ESMTP id QB1; " \
             "Mon, 06 Jan 2025 10:01:05 +0000"
T0 = 1736157600.0  # 2025-01-06 10:00:00 UTC


def journey_frames(received_b=RECEIVED_B, with_attempts=True):
    """Submission, a refused and a greylisted attempt, the delivery 65 s later, a POP3 retrieval."""
    copy1 = message(MID)
    copy2 = message(MID, received=[RECEIVED_A])
    copy3 = message(MID, received=[received_b, RECEIVED_A])
    frames = smtp_session(UA, MTA_A, [("alice@a.example", "bob@b.example", copy1, "QA1")], T0, auth=True)
    if with_attempts:
        frames += refused((MTA_A_OUT, 41001), MX_B, T0 + 5.0)
        frames += smtp_session((MTA_A_OUT, 41002), MX_B, [("alice@a.example", "bob@b.example", b"", "")],
                               T0 + 35.0, helo="mail.a.example", greylist=True)
    frames += smtp_session((MTA_A_OUT, 41003), MX_B, [("alice@a.example", "bob@b.example", copy2, "QB1")],
                           T0 + 65.0, helo="mail.a.example")
    frames += pop3_session(READER, POP_B, copy3, T0 + 300.0)
    return sorted(frames, key=lambda f: f[0])


def analyze_frames(tmp_path, frames, name="cap.pcap"):
    path = tmp_path / name
    write_pcap(path, frames)
    return maildissect.analyze(str(path)), str(path)


# -- the journey capture (bundled with the project, else generated once per test run) ----------
@functools.lru_cache(maxsize=None)
def journey_capture() -> tuple[str, dict]:
    """(pcap path, manifest) of the generator's ``journey`` scenario."""
    pcap, manifest = os.path.join(ROOT, "captures", "journey.pcap"), os.path.join(ROOT, "captures", "journey.json")
    if not (os.path.exists(pcap) and os.path.exists(manifest)):
        try:
            from maildissect.generate import generate
        except ImportError as e:  # pragma: no cover - the generator's dependencies are missing
            pytest.skip(f"no bundled journey capture and the generator cannot run: {e}")
        tmp = tempfile.mkdtemp(prefix="md-journey-")
        atexit.register(shutil.rmtree, tmp, True)
        pcap = os.path.join(tmp, "journey.pcap")
        generate("journey", pcap, capture="synthetic", messages=2)
        manifest = os.path.join(tmp, "journey.json")
    with open(manifest, encoding="utf-8") as f:
        return pcap, json.load(f)


@functools.lru_cache(maxsize=None)
def journey_analysis():
    pcap, manifest = journey_capture()
    return maildissect.analyze(pcap), manifest


def _ts(iso: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# -- synthesised captures: exact times ------------------------------------------------------------
def test_hops_in_order_with_failed_attempts_and_latencies(tmp_path):
    a, _ = analyze_frames(tmp_path, journey_frames())
    jr = a.journey_records
    assert len(jr.journeys) == 1
    j = jr.journeys[0]
    hops = jr.hops_of(j.journey_id)
    assert [(h.role, h.protocol, h.outcome, h.attempt) for h in hops] == [
        ("submission", "smtp", "accepted", 1),
        ("delivery", "smtp", "refused", 1),
        ("delivery", "smtp", "deferred", 2),
        ("delivery", "smtp", "accepted", 3),
        ("retrieval", "pop3", "retrieved", None),
    ]
    sub, att1, att2, ok, pop = hops
    assert (sub.client_ip, sub.server_ip, sub.server_port, sub.queue_id, sub.user) == (UA[0], MTA_A[0], 587, "QA1",
                                                                                       "alice")
    assert [att1.match, att2.match] == ["attempt", "attempt"] and ok.match == "message_id"
    assert "451" in att2.reply and "refused" in att1.reply
    # each hop starts with its connection's SYN: the synthetic frames are 1 ms apart from t0 + 1 ms
    assert att1.start == pytest.approx(T0 + 5.0, abs=1e-6)
    assert att2.start == pytest.approx(T0 + 35.001, abs=1e-6)
    assert ok.start == pytest.approx(T0 + 65.001, abs=1e-6)
    # latency: from the previous hop's handover (the submission's end of data, the RST, the
    # greylisted session's last packet) to this hop's: one clock, never negative
    assert att1.latency == pytest.approx(att1.end - sub.end, abs=1e-9) and 4.9 < att1.latency < 5.1
    assert att2.latency == pytest.approx(att2.end - att1.end, abs=1e-9)
    assert att2.latency == pytest.approx(30.001 - 0.0002 + (att2.end - att2.start), abs=1e-6)
    assert ok.latency == pytest.approx(ok.end - att2.end, abs=1e-9)
    assert pop.latency == pytest.approx(pop.end - ok.end, abs=1e-9) and 234 < pop.latency < 236
    assert all(h.latency >= 0 for h in hops[1:])
    # queue time: from the submission's handover to the start of the successful delivery
    assert j.queue_time == pytest.approx(ok.start - sub.end, abs=1e-9)
    assert j.failed_attempts == 2 and j.hops == 5
    assert j.path == "10.0.0.10 \u2192 10.0.0.20 \u2192 10.0.0.30 \u2192 10.0.0.40"
    assert j.roles == "submission \u2192 delivery (3 attempts) \u2192 retrieval"
    assert j.received_check == "agrees" and j.received_hops == 2
    assert sub.received_check == "agrees" and ok.received_check == "agrees"
    assert "QA1" in sub.received and "QB1" in ok.received
    assert "2 failed attempt(s)" in journey_title(j)


def test_dataframes_and_timeline_attribution(tmp_path):
    a, _ = analyze_frames(tmp_path, journey_frames())
    hops = a.hops
    assert list(hops["role"]) == ["submission", "delivery", "delivery", "delivery", "retrieval"]
    assert str(hops["start"].dtype) == "datetime64[us, UTC]" and str(hops["latency"].dtype) == "Float64"
    j = a.journeys.iloc[0]
    assert j["message_id"] == MID and j["received_check"] == "agrees" and j["failed_attempts"] == 2
    assert list(j["rcpt_to"]) == ["bob@b.example"]
    # the refused connection is tied to the message in the timeline, so --message-id shows it
    ev = a.events
    refused_row = ev[ev["event"] == "tcp_refused"].iloc[0]
    assert refused_row["message_id"] == MID


def test_received_header_disagreements_are_reported(tmp_path):
    forged = RECEIVED_B.replace("[10.0.0.20]", "[192.0.2.66]").replace("with ESMTP ", "with ESMTPS ")
    a, _ = analyze_frames(tmp_path, journey_frames(received_b=forged, with_attempts=False))
    j = a.journey_records.journeys[0]
    assert j.received_check == "differs"
    notes = " | ".join(j.received_notes)
    assert "192.0.2.66" in notes and "10.0.0.20" in notes
    assert "claims TLS" in notes
    ok = [h for h in a.journey_records.hops if h.role == "delivery"][0]
    assert ok.received_check != "agrees"


def test_hops_only_the_headers_claim(tmp_path):
    outside = "from laptop.example ([198.51.100.7]) by smtp.provider.example with ESMTPSA id X1; " \
              "Mon, 06 Jan 2025 09:59:00 +0000"
    data = message("<outside@a.example>", received=[outside])
    frames = pop3_session(READER, POP_B, data, T0)
    a, _ = analyze_frames(tmp_path, frames)
    j = a.journey_records.journeys[0]
    hops = a.journey_records.hops_of(j.journey_id)
    assert [(h.wire, h.role, h.outcome) for h in hops] == [(False, "submission", "claimed"),
                                                           (True, "retrieval", "retrieved")]
    assert hops[0].client_ip == "198.51.100.7" and hops[0].start == pytest.approx(T0 - 60)
    assert j.received_check == "headers_only" and j.hops == 1


def test_attempts_are_shared_out_between_queued_messages(tmp_path):
    """Two messages queued back to back, each refused once, then delivered: one attempt each."""
    m1, m2 = message("<q1@a.example>"), message("<q2@a.example>", subject="Second")
    frames = smtp_session(UA, MTA_A, [("alice@a.example", "bob@b.example", m1, "QA1")], T0, auth=True)
    frames += refused((MTA_A_OUT, 41001), MX_B, T0 + 0.5)
    frames += smtp_session(UA[:1] + (40002,), MTA_A, [("alice@a.example", "bob@b.example", m2, "QA2")], T0 + 1,
                           auth=True)
    frames += refused((MTA_A_OUT, 41002), MX_B, T0 + 1.5)
    frames += smtp_session((MTA_A_OUT, 41003), MX_B, [("alice@a.example", "bob@b.example", m1, "QB1")], T0 + 60)
    frames += smtp_session((MTA_A_OUT, 41004), MX_B, [("alice@a.example", "bob@b.example", m2, "QB2")], T0 + 61)
    a, _ = analyze_frames(tmp_path, sorted(frames, key=lambda f: f[0]))
    jr = a.journey_records
    by_mid = {j.message_id: jr.hops_of(j.journey_id) for j in jr.journeys}
    for mid, port in (("<q1@a.example>", 41001), ("<q2@a.example>", 41002)):
        attempts = [h for h in by_mid[mid] if h.match == "attempt"]
        assert [(h.outcome, h.client_port) for h in attempts] == [("refused", port)]


def test_grouping_by_body_hash_and_by_envelope(tmp_path):
    # the same body retrieved without a Message-ID header joins the message that has one
    with_id = message("<body@a.example>")
    without = message(None, received=[RECEIVED_A])
    frames = smtp_session(UA, MTA_A, [("alice@a.example", "bob@b.example", with_id, "QA1")], T0, auth=True)
    frames += pop3_session(READER, POP_B, without, T0 + 100)
    a, _ = analyze_frames(tmp_path, frames, "body.pcap")
    assert len(a.journey_records.journeys) == 1
    hops = a.journey_records.hops
    assert [h.match for h in hops] == ["message_id", "body_sha256"]
    # no Message-ID and different bodies: the envelope, subject and time tie them (a weaker match)
    m1 = message(None, body="first copy\r\n")
    m2 = message(None, body="second copy, edited\r\n")
    frames = smtp_session(UA, MTA_A, [("alice@a.example", "bob@b.example", m1, "QA1")], T0, auth=True)
    frames += smtp_session((MTA_A_OUT, 41003), MX_B, [("alice@a.example", "bob@b.example", m2, "QB1")], T0 + 30)
    a, _ = analyze_frames(tmp_path, frames, "env.pcap")
    assert len(a.journey_records.journeys) == 1
    j = a.journey_records.journeys[0]
    assert j.match == "envelope" and "weaker" in journey_title(j)


def test_unanswered_syn_counts_as_attempt(tmp_path):
    data = message("<u@a.example>")
    frames = smtp_session(UA, MTA_A, [("alice@a.example", "bob@b.example", data, "QA1")], T0, auth=True)
    frames += unanswered((MTA_A_OUT, 41001), MX_B, T0 + 2)
    frames += smtp_session((MTA_A_OUT, 41003), MX_B, [("alice@a.example", "bob@b.example", data, "QB1")], T0 + 600)
    a, _ = analyze_frames(tmp_path, sorted(frames, key=lambda f: f[0]))
    hops = a.journey_records.hops
    assert [(h.outcome, h.attempt) for h in hops] == [("accepted", 1), ("unanswered", 1), ("accepted", 2)]
    assert hops[2].latency == pytest.approx(hops[2].end - hops[1].end) and hops[2].latency > 590


def test_correlate_survives_odd_records():
    """Records with missing times, addresses and replies do not break the correlation."""
    from maildissect.model import Flow, Message, Received, Session
    from maildissect.pipeline import Collector
    c = Collector()
    c.sessions.append(Session(1, "smtp"))
    c.flows.append(Flow(1, "", 0, "", 25, 0.0, 0.0, close="refused"))
    c.messages.append(Message("smtp", 1, None, "sent", message_id="<x@y>", received=[Received(raw="garbage")]))
    c.messages.append(Message("imap", 7, 5.0, "retrieved", message_id="<x@y>", complete=False))
    c.messages.append(Message("http", 9, 6.0, "uploaded"))
    jr = correlate(c)
    assert len(jr.journeys) == 1 and len(jr.hops) >= 2


# -- the generator's captures, against their manifests ----------------------------------------------
def test_journey_capture_matches_the_manifest():
    a, manifest = journey_analysis()
    jr = a.journey_records
    assert manifest["relay"], "the journey scenario relays through a queue"
    checked = 0
    ports = {s["id"]: s["client_port"] for s in manifest["sessions"]}
    for entry in manifest["relay"]:
        found = jr.find(entry["message_id"])
        assert len(found) == 1, entry["message_id"]
        hops = [h for h in jr.hops_of(found[0].journey_id) if h.protocol == "smtp" and h.role != "submission"
                and h.client_ip != h.server_ip]
        attempts = entry["attempts"]
        assert [h.attempt for h in hops] == [x["attempt"] for x in attempts]
        for h, x in zip(hops, attempts):
            want = {"refused": "refused", "delivered": "accepted", "deferred": "deferred"}[x["outcome"]]
            assert h.outcome == want
            assert (h.server_ip, h.server_port) == (x["ip"], x["port"])
            # the very connection the queue opened for this attempt (its source port)
            assert h.client_port == ports[x["session"]]
            # the manifest times are the queue's clock around connect(); the capture's SYN follows
            # within milliseconds (more when the machine is loaded)
            assert h.start == pytest.approx(_ts(x["ts"]), abs=0.02)
        for prev, h in zip(hops, hops[1:]):
            # from the end of the failed attempt to the end of the next one: the retry delay
            # and that attempt's own few milliseconds
            assert h.latency == pytest.approx(h.end - prev.end, abs=1e-9)
            assert h.latency > 0.5  # the queue's retry delay, not a connection's few milliseconds
        # time in the queue: from being queued to the successful relay
        assert found[0].queue_time == pytest.approx(_ts(attempts[-1]["ts"]) - _ts(entry["queued"]), abs=0.02)
        checked += 1
    assert checked == len(manifest["relay"])
    # every transfer of every message the manifest lists is a hop, in the manifest's order
    for mj in manifest["journeys"]:
        j = jr.find(mj["message_id"])[0]
        ours = [(h.protocol, h.client_ip, h.server_ip, h.server_port) for h in jr.hops_of(j.journey_id)
                if h.wire and h.match not in ("attempt", "attachment_sha256")]
        want = [(h["protocol"], h["client_ip"], h["server_ip"], h["server_port"]) for h in mj["hops"]]
        assert sorted(ours) == sorted(want), mj["message_id"]
        starts = [h.start for h in jr.hops_of(j.journey_id)]
        assert starts == sorted(starts)
        assert j.received_check in ("agrees", "n/a")
    assert any(h.match == "attempt" and h.outcome == "refused" for h in jr.hops)


def test_relay_capture_greylisting_then_delivery():
    pcap = os.path.join(ROOT, "captures", "relay.pcap")
    if not os.path.exists(pcap):
        pytest.skip("captures/relay.pcap is not bundled")
    with open(os.path.join(ROOT, "captures", "relay.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    jr = maildissect.analyze(pcap).journey_records
    for entry in manifest["relay"]:
        j = jr.find(entry["message_id"])[0]
        outcomes = [h.outcome for h in jr.hops_of(j.journey_id) if h.role == "delivery"]
        want = [{"refused": "refused", "delivered": "accepted", "deferred": "deferred"}[x["outcome"]]
                for x in entry["attempts"]]
        assert outcomes == want


def cli_run(args):
    """Run the command line in-process: (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from maildissect.cli import cli
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_journeys_command(tmp_path):
    _, path = analyze_frames(tmp_path, journey_frames())
    base = ["journeys", path, "-q", "-j", "1"]
    code, out, err = cli_run(base)
    assert code == 0, err
    assert "Journey 1: <journey-1@a.example>" in out and "refused" in out
    code, out, _ = cli_run(base + ["-f", "jsonl"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["outcome"] for r in rows] == ["accepted", "refused", "deferred", "accepted", "retrieved"]
    assert rows[1]["start"].endswith("Z")
    code, out, _ = cli_run(base + ["--summary", "-f", "csv", "--message-id", "journey-1"])
    assert code == 0 and out.count("\n") == 2
    code, out, err = cli_run(base + ["--message-id", "nope@nowhere"])
    assert code == 1 and err.startswith("maildissect: error: no message")
    assert len(err.strip().splitlines()) == 1


def test_docs_list_every_role():
    from maildissect.correlate import ROLES
    text = open(os.path.join(ROOT, "docs", "report.md"), encoding="utf-8").read()
    for role, meaning in ROLES.items():
        assert f"| `{role}` | {meaning} |" in text, role
