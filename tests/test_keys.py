"""Keys the dissectors set on their records: command sequence numbers, SMTP transactions,
the command that carried a message, the user and mailbox in force.

Downstream code (timeline, journeys, the report, the Zeek writer) joins the
records of a session on these keys, never on time windows; here each
dissector is checked to set them, fed whole, byte by byte and in random chunks.
"""

from __future__ import annotations

import pytest

from maildissect.model import Command, HttpRequest, Message
from maildissect.protocols.http import HttpDissector
from maildissect.protocols.imap import ImapDissector
from maildissect.protocols.pop3 import Pop3Dissector
from maildissect.protocols.smtp import SmtpDissector
from tests.helpers import C, S, of_type, run_all_ways


def msg(n: int) -> bytes:
    return (f"From: a@example.org\r\nTo: b@example.com\r\nSubject: m{n}\r\n"
            f"Message-ID: <m{n}@example.org>\r\n\r\nbody {n}\r\n").encode()


def by_verb(cmds):
    out = {}
    for c in cmds:
        out.setdefault(c.command, []).append(c)
    return out


def test_smtp_sequence_transactions_and_carrying_command():
    t = [(S, b"220 mx ESMTP\r\n"), (C, b"EHLO c\r\n"), (S, b"250-mx\r\n250 CHUNKING\r\n"),
         (C, b"AUTH PLAIN\r\n"), (S, b"334 \r\n"), (C, b"AGFsaWNlAHB3\r\n"), (S, b"235 ok\r\n"),
         (C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"),
         (C, b"RCPT TO:<b@example.com>\r\n"), (S, b"250 ok\r\n"),
         (C, b"DATA\r\n"), (S, b"354 go\r\n"), (C, msg(1) + b".\r\n"), (S, b"250 queued as A1\r\n"),
         # a transaction given up with RSET, then one sent in BDAT chunks
         (C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, b"RSET\r\n"), (S, b"250 ok\r\n"),
         (C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"),
         (C, b"RCPT TO:<b@example.com>\r\n"), (S, b"250 ok\r\n"),
         (C, b"BDAT 10\r\n" + msg(2)[:10]), (S, b"250 chunk\r\n"),
         (C, b"BDAT %d LAST\r\n" % (len(msg(2)) - 10) + msg(2)[10:]), (S, b"250 queued as A2\r\n"),
         (C, b"QUIT\r\n"), (S, b"221 bye\r\n")]
    records, _ = run_all_ways(SmtpDissector, t)
    cmds = of_type(records, Command)
    assert sorted(c.seq for c in cmds) == list(range(len(cmds)))  # 0 the greeting, then every command once
    assert [c.command for c in sorted(cmds, key=lambda c: c.seq)] == [
        "", "EHLO", "AUTH", "AUTH-RESPONSE", "MAIL", "RCPT", "DATA", ".", "MAIL", "RSET", "MAIL", "RCPT",
        "BDAT", "BDAT", "QUIT"]
    v = by_verb(cmds)
    assert [c.transaction for c in v["MAIL"]] == [1, 2, 3]
    assert [c.transaction for c in v["RCPT"]] == [1, 3]
    assert v["DATA"][0].transaction == v["."][0].transaction == 1
    assert [c.transaction for c in v["BDAT"]] == [3, 3]
    assert v["EHLO"][0].transaction is None and v["RSET"][0].transaction is None
    # the user: from the accepted AUTH on (the AUTH exchange itself included)
    assert v["EHLO"][0].user is None and v["AUTH-RESPONSE"][0].user == "alice"
    assert all(c.user == "alice" for c in v["MAIL"] + v["QUIT"])
    m1, aborted, m2 = of_type(records, Message)
    assert (m1.transaction, m1.command_seq, m1.user) == (1, v["DATA"][0].seq, "alice")
    assert (m2.transaction, m2.command_seq) == (3, v["BDAT"][0].seq)
    # the transaction given up with RSET is a row too, keyed to its MAIL
    assert (aborted.kind, aborted.outcome, aborted.transaction, aborted.command_seq) == \
        ("envelope", "aborted", 2, v["MAIL"][1].seq)
    assert m1.mailbox is None and all(c.mailbox is None for c in cmds)


def test_imap_user_selected_mailbox_and_carrying_command():
    m = msg(1)
    t = [(S, b"* OK ready\r\n"), (C, b"a1 LOGIN bob pw\r\n"), (S, b"a1 OK done\r\n"),
         (C, b"a2 SELECT INBOX\r\n"), (S, b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\na2 OK [READ-WRITE] done\r\n"),
         (C, b"a3 UID FETCH 5 BODY[]\r\n"),
         (S, b"* 1 FETCH (UID 5 BODY[] {%d}\r\n" % len(m) + m + b")\r\na3 OK done\r\n"),
         (C, b"a4 APPEND Sent {%d}\r\n" % len(msg(2))), (S, b"+ go\r\n"), (C, msg(2) + b"\r\n"),
         (S, b"a4 OK [APPENDUID 9 3] done\r\n"),
         (C, b"a5 SELECT Missing\r\n"), (S, b"a5 NO no such mailbox\r\n"),
         (C, b"a6 LIST \"\" *\r\n"), (S, b"a6 OK done\r\n"),
         (C, b"a7 EXAMINE Archive\r\n"), (S, b"a7 OK [READ-ONLY] done\r\n"),
         (C, b"a8 CLOSE\r\n"), (S, b"a8 OK closed\r\n"),
         (C, b"a9 LOGOUT\r\n"), (S, b"* BYE\r\na9 OK bye\r\n")]
    records, _ = run_all_ways(ImapDissector, t)
    cmds = sorted(of_type(records, Command), key=lambda c: c.seq)
    assert [c.seq for c in cmds] == list(range(len(cmds)))
    assert [(c.tag, c.user, c.mailbox) for c in cmds] == [
        (None, None, None),  # the greeting
        ("a1", "bob", None),  # an accepted LOGIN names its user
        ("a2", "bob", "INBOX"),  # SELECT: the mailbox it selected
        ("a3", "bob", "INBOX"),
        ("a4", "bob", "INBOX"),
        ("a5", "bob", "INBOX"),  # a failed SELECT closes the mailbox it ran in
        ("a6", "bob", None),
        ("a7", "bob", "Archive"),
        ("a8", "bob", "Archive"),  # CLOSE: the one it closed
        ("a9", "bob", None)]
    assert all(c.transaction is None for c in cmds)
    fetched, appended = sorted(of_type(records, Message), key=lambda m: m.direction != "retrieved")
    assert (fetched.command_seq, fetched.user, fetched.mailbox) == (3, "bob", "INBOX")
    assert (appended.command_seq, appended.user, appended.mailbox) == (4, "bob", "Sent")


def test_pop3_user_maildrop_and_carrying_command():
    m = msg(1)
    t = [(S, b"+OK ready\r\n"), (C, b"USER bob\r\n"), (S, b"+OK\r\n"), (C, b"PASS pw\r\n"), (S, b"+OK in\r\n"),
         (C, b"RETR 1\r\n"), (S, b"+OK follows\r\n" + m + b".\r\n"), (C, b"QUIT\r\n"), (S, b"+OK bye\r\n")]
    records, _ = run_all_ways(Pop3Dissector, t)
    cmds = sorted(of_type(records, Command), key=lambda c: c.seq)
    assert [(c.seq, c.command, c.user, c.mailbox) for c in cmds] == [
        (0, "", None, None), (1, "USER", None, None), (2, "PASS", "bob", "INBOX"), (3, "RETR", "bob", "INBOX"),
        (4, "QUIT", "bob", "INBOX")]
    (message,) = of_type(records, Message)
    assert (message.command_seq, message.user, message.mailbox) == (3, "bob", "INBOX")


def test_pop3_maildrop_without_login_seen():
    """A capture that began after the login: retrieval commands still act on the maildrop."""
    t = [(C, b"STAT\r\n"), (S, b"+OK 1 10\r\n"), (C, b"NOOP\r\n"), (S, b"+OK\r\n")]
    records, _ = run_all_ways(Pop3Dissector, t)
    cmds = sorted(of_type(records, Command), key=lambda c: c.seq)
    assert [(c.command, c.seq, c.mailbox) for c in cmds] == [("STAT", 1, "INBOX"), ("NOOP", 2, None)]


def test_http_exchange_numbers():
    form = b"to=b%40example.com&subject=Hi&body=Hello"
    t = [(C, b"GET / HTTP/1.1\r\nHost: mail\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
         (C, b"POST /compose/send HTTP/1.1\r\nHost: mail\r\nContent-Type: application/x-www-form-urlencoded\r\n"
             b"Content-Length: %d\r\n\r\n" % len(form) + form),
         (S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]
    records, _ = run_all_ways(HttpDissector, t, protocol="http")
    reqs = of_type(records, HttpRequest)
    cmds = of_type(records, Command)
    assert [r.seq for r in reqs] == [1, 2] and [c.seq for c in cmds] == [1, 2]
    assert [r.uri for r in reqs] == [c.argument for c in cmds]
    sent = [m for m in of_type(records, Message) if m.direction == "sent"]
    assert sent and all(m.command_seq == 2 for m in sent)


# -- joins on the keys, downstream -------------------------------------------------------------------
def test_hop_that_began_before_its_predecessor_ended(tmp_path):
    """One clock for order and latency: the end of each hop's transfer; latency is never negative.

    The relay's connection opens (and the server greets) before the submission
    has handed the message over; its transfer ends after. Measured from its
    start, its latency would be negative.
    """
    from tests.test_journeys import MID, MTA_A, MTA_A_OUT, MX_B, T0, UA, analyze_frames, message, smtp_session
    sub = smtp_session(UA, MTA_A, [("alice@a.example", "bob@b.example", message(MID), "QA1")], T0, auth=True)
    relay = smtp_session((MTA_A_OUT, 41003), MX_B, [("alice@a.example", "bob@b.example", message(MID), "QB1")],
                         T0 - 0.005, helo="mail.a.example")
    # handshake, greeting and its ACK at once; the rest of the dialogue after the submission ended
    relay = relay[:5] + [(t + 0.2, f) for t, f in relay[5:]]
    a, _ = analyze_frames(tmp_path, sorted(sub + relay, key=lambda f: f[0]))
    (j,) = a.journey_records.journeys
    hops = a.journey_records.hops_of(j.journey_id)
    assert [(h.role, h.server_port) for h in hops] == [("submission", 587), ("delivery", 25)]
    first, second = hops
    assert second.start < first.end < second.end  # the relay's connection opened before the handover
    assert second.latency == pytest.approx(second.end - first.end, abs=1e-9) and second.latency > 0
    assert first.command_seq is not None and second.command_seq is not None
    assert list(a.hops["latency"].dropna()) == [second.latency]


def test_flow_packets_follow_the_reassemblers_connections(tmp_path):
    """Two connections on the same endpoints (port reuse): each gets its own packets, by first frame."""
    from maildissect import analyze
    from maildissect.capture.control import flow_packets
    from tests.pcaps import conversation, write_pcap
    ex = [("s", b"220 hi\r\n"), ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]
    one, _, _ = conversation(exchanges=ex, t0=1000.0, isn=(1000, 5000))
    two, _, _ = conversation(exchanges=ex[:1], t0=1000.5, isn=(90000, 70000), close=False)
    path = tmp_path / "reuse.pcap"
    write_pcap(path, one + two)
    a = analyze(str(path))
    flows = sorted(a.records.flows, key=lambda f: f.flow_id)
    assert len(flows) == 2
    pk = flow_packets([str(path)], flows)
    assert sum(pk[f.flow_id].packets[0] + pk[f.flow_id].packets[1] for f in flows) == len(one) + len(two)
    assert pk[flows[0].flow_id].packets == [7, 5] and pk[flows[1].flow_id].packets == [3, 2]
    assert pk[flows[0].flow_id].history == "ShAdDaFf" and pk[flows[1].flow_id].history == "ShAd"
    assert [lab for _, _, lab in pk[flows[0].flow_id].control] == ["SYN", "SYN-ACK", "ACK", "FIN", "FIN"]
    # IP bytes: 40 bytes of headers per packet plus the payload
    assert pk[flows[1].flow_id].ip_bytes == [3 * 40, 2 * 40 + len(b"220 hi\r\n")]
    # only the wanted flow, and nothing for input that cannot be read again
    assert set(flow_packets([str(path)], flows, {flows[1].flow_id})) == {flows[1].flow_id}
    assert flow_packets(["-"], flows) == {}
