"""Every SMTP mail transaction is a row of the messages table, with its outcome.

A transaction opens at MAIL FROM (or at the first RCPT/DATA of a client that skipped it) and
ends with its data, or at RSET, QUIT, HELO/EHLO, a new MAIL FROM, STARTTLS, a gap or the
connection's end. Those that carried no message are rows of kind ``envelope``: envelope and
replies, no header fields, size 0 (docs/protocols/smtp.md).
"""

from __future__ import annotations

import pytest

from maildissect.config import Config, Limits
from maildissect.model import Anomaly, Command, Message
from maildissect.protocols.smtp import SmtpDissector
from tests.helpers import C, S, of_type, run_all_ways

START = [(S, b"220 mx.example.net ESMTP\r\n"), (C, b"EHLO client.example.org\r\n"),
         (S, b"250-mx.example.net\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n")]
BODY = b"Subject: hello\r\nMessage-ID: <t1@example.org>\r\n\r\nhi\r\n"


def run(transcript, config=None):
    records, sess = run_all_ways(SmtpDissector, START + transcript, config=config)
    return records, sess


def rows(records):
    return [(m.kind, m.outcome, m.mail_from, m.rcpt_to, m.rcpt_rejected, m.reply_code)
            for m in of_type(records, Message)]


def test_delivered_and_envelope_rows_side_by_side():
    records, _ = run([
        (C, b"MAIL FROM:<harvest@example.org>\r\n"), (S, b"250 ok\r\n"),
        (C, b"RCPT TO:<a@example.net>\r\n"), (S, b"550 5.1.1 no such user\r\n"),
        (C, b"RCPT TO:<b@example.net>\r\n"), (S, b"550 5.1.1 no such user\r\n"),
        (C, b"RSET\r\n"), (S, b"250 ok\r\n"),
        (C, b"MAIL FROM:<alice@example.org>\r\n"), (S, b"250 ok\r\n"),
        (C, b"RCPT TO:<bob@example.net>\r\n"), (S, b"250 ok\r\n"),
        (C, b"DATA\r\n"), (S, b"354 go\r\n"), (C, BODY + b".\r\n"), (S, b"250 queued as Q1\r\n"),
        (C, b"QUIT\r\n"), (S, b"221 bye\r\n")])
    assert rows(records) == [
        ("envelope", "no_recipients", "harvest@example.org", [], ["a@example.net", "b@example.net"], "550"),
        ("data", "delivered", "alice@example.org", ["bob@example.net"], [], "250")]
    env, msg = of_type(records, Message)
    assert (env.size, env.sha256, env.subject, env.headers, env.attachments, env.complete) == (0, None, None, [], [],
                                                                                              True)
    assert (env.transaction, msg.transaction) == (1, 2)
    mail = next(c for c in of_type(records, Command) if c.command == "MAIL")
    assert env.command_seq == mail.seq and env.ts == mail.ts


@pytest.mark.parametrize("name,transcript,outcome,reply", [
    ("MAIL refused", [(C, b"MAIL FROM:<spam@example.org>\r\n"), (S, b"554 5.7.1 go away\r\n"),
                      (C, b"QUIT\r\n"), (S, b"221 bye\r\n")], "rejected", "554"),
    ("DATA refused", [(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, b"RCPT TO:<b@example.net>\r\n"),
                      (S, b"250 ok\r\n"), (C, b"DATA\r\n"), (S, b"554 5.5.1 no\r\n"), (C, b"QUIT\r\n"),
                      (S, b"221 bye\r\n")], "rejected", "554"),
    ("every RCPT refused, DATA refused", [
        (C, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@example.net>\r\nDATA\r\n"),
        (S, b"250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n"), (C, b"QUIT\r\n"), (S, b"221 bye\r\n")],
     "no_recipients", "554"),
    ("greylisted", [(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, b"RCPT TO:<b@example.net>\r\n"),
                    (S, b"451 4.7.1 try again later\r\n"), (C, b"QUIT\r\n"), (S, b"221 bye\r\n")],
     "no_recipients", "451"),
    ("RSET after RCPT", [(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, b"RCPT TO:<b@example.net>\r\n"),
                         (S, b"250 ok\r\n"), (C, b"RSET\r\n"), (S, b"250 ok\r\n")], "aborted", "250"),
    ("QUIT after MAIL", [(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, b"QUIT\r\n"),
                         (S, b"221 bye\r\n")], "aborted", "250"),
    ("EHLO in the middle", [(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, b"EHLO again\r\n"),
                            (S, b"250 mx\r\n")], "aborted", "250"),
    ("STARTTLS in the middle", [(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, b"STARTTLS\r\n"),
                                (S, b"454 not now\r\n"), (C, b"QUIT\r\n"), (S, b"221 bye\r\n")], "aborted", "250"),
    ("the connection ends", [(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"),
                             (C, b"RCPT TO:<b@example.net>\r\n"), (S, b"250 ok\r\n")], "unterminated", "250"),
    ("RCPT without MAIL", [(C, b"RCPT TO:<b@example.net>\r\n"), (S, b"503 5.5.1 need MAIL\r\n"), (C, b"QUIT\r\n"),
                           (S, b"221 bye\r\n")], "no_recipients", "503"),
])
def test_transactions_that_carry_no_message(name, transcript, outcome, reply):
    records, _ = run(transcript)
    (row,) = of_type(records, Message)
    assert (row.kind, row.outcome, row.reply_code, row.size, row.direction) == ("envelope", outcome, reply, 0,
                                                                                 "sent"), name


def test_a_nested_mail_from_aborts_the_open_transaction():
    records, _ = run([(C, b"MAIL FROM:<one@example.org>\r\n"), (S, b"250 ok\r\n"),
                      (C, b"RCPT TO:<b@example.net>\r\n"), (S, b"250 ok\r\n"),
                      (C, b"MAIL FROM:<two@example.org>\r\n"), (S, b"503 5.5.1 nested MAIL command\r\n"),
                      (C, b"QUIT\r\n"), (S, b"221 bye\r\n")])
    assert [(m.mail_from, m.outcome, m.reply_code) for m in of_type(records, Message)] == \
        [("one@example.org", "aborted", "250"), ("two@example.org", "rejected", "503")]


def test_pipelined_transactions_wait_for_their_replies():
    records, _ = run([(C, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@example.net>\r\nRCPT TO:<y@example.net>\r\n"
                          b"RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<z@example.net>\r\nDATA\r\n"),
                      (S, b"250 ok\r\n550 no\r\n250 ok\r\n250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
                      (C, BODY + b".\r\nQUIT\r\n"), (S, b"250 queued\r\n221 bye\r\n")])
    assert rows(records) == [("envelope", "aborted", "a@example.org", ["y@example.net"], ["x@example.net"], "250"),
                             ("data", "delivered", "a@example.org", ["z@example.net"], [], "250")]


def test_message_rows_have_outcomes_too():
    records, _ = run([(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, b"RCPT TO:<b@example.net>\r\n"),
                      (S, b"250 ok\r\n"), (C, b"DATA\r\n"), (S, b"354 go\r\n"), (C, BODY + b".\r\n"),
                      (S, b"554 5.7.1 spam\r\n"), (C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"),
                      (C, b"RCPT TO:<b@example.net>\r\n"), (S, b"250 ok\r\n"), (C, b"DATA\r\n"), (S, b"354 go\r\n"),
                      (C, BODY)])
    assert [(m.kind, m.outcome, m.complete) for m in of_type(records, Message)] == \
        [("data", "rejected", True), ("data", "unterminated", False)]


def test_bdat_without_last_then_rset_is_aborted():
    records, _ = run([(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, b"RCPT TO:<b@example.net>\r\n"),
                      (S, b"250 ok\r\n"), (C, b"BDAT 4\r\nabcd"), (S, b"250 ok\r\n"), (C, b"RSET\r\n"),
                      (S, b"250 ok\r\n")])
    assert [(m.kind, m.outcome) for m in of_type(records, Message)] == [("bdat", "aborted")]


def test_a_gap_leaves_the_transaction_unterminated():
    records, _ = run([(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, "gap", 30),
                      (C, b"RCPT TO:<b@example.net>\r\n"), (S, b"250 ok\r\n")])
    (row,) = of_type(records, Message)
    assert (row.kind, row.outcome, row.complete) == ("envelope", "unterminated", False)


# -- HELO and EHLO -----------------------------------------------------------------------

def test_an_accepted_helo_stays_when_a_later_ehlo_is_refused():
    _, sess = run_all_ways(SmtpDissector, [
        (S, b"220 mx\r\n"), (C, b"HELO old.example\r\n"), (S, b"250 mx\r\n"),
        (C, b"EHLO new.example\r\n"), (S, b"502 5.5.2 command not recognized\r\n"),
        (C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"), (C, b"QUIT\r\n"), (S, b"221 bye\r\n")])
    assert sess.helo == "old.example"
    # a refused EHLO followed by an accepted HELO: the HELO's
    _, sess = run_all_ways(SmtpDissector, [
        (S, b"220 mx\r\n"), (C, b"EHLO new.example\r\n"), (S, b"502 no\r\n"), (C, b"HELO old.example\r\n"),
        (S, b"250 mx\r\n")])
    assert sess.helo == "old.example"


# -- BDAT with a bad size -----------------------------------------------------------------

@pytest.mark.parametrize("arg", [b"", b" -1", b" SCRAMBLE", b" 1234 SCRAMBLE", b" 18446744073709551616",
                                 b" 123456789012345678901234 LAST"])
def test_bdat_with_a_bad_size_keeps_its_transaction(arg):
    records, _ = run([(C, b"MAIL FROM:<zeek@localhost>\r\n"), (S, b"250 2.1.0 Ok\r\n"),
                      (C, b"RCPT TO:<root@localhost>\r\n"), (S, b"250 2.1.5 Ok\r\n"),
                      # the chunk the client sends anyway: skipped up to the next command line
                      (C, b"BDAT" + arg + b"\r\nsome chunk bytes\r\nmore of them\r\n"),
                      (S, b"521 5.5.4 Syntax: BDAT count [LAST]\r\n"), (C, b"QUIT\r\n"), (S, b"221 bye\r\n")])
    assert [a.name for a in of_type(records, Anomaly)] == ["smtp_bad_bdat"]
    assert [(c.command, c.reply_code) for c in of_type(records, Command)][-2:] == [("BDAT", "521"), ("QUIT", "221")]
    (row,) = of_type(records, Message)
    assert (row.kind, row.outcome, row.mail_from, row.rcpt_to, row.reply_code, row.reply_text) == \
        ("envelope", "rejected", "zeek@localhost", ["root@localhost"], "521", "5.5.4 Syntax: BDAT count [LAST]")


def test_the_largest_chunk_size_is_fine():
    records, _ = run([(C, b"MAIL FROM:<a@example.org>\r\n"), (S, b"250 ok\r\n"),
                      (C, b"BDAT 18446744073709551615 LAST\r\nabc")])
    assert "smtp_bad_bdat" not in {a.name for a in of_type(records, Anomaly)}


# -- multi-line replies -------------------------------------------------------------------

def test_reply_lines():
    records, _ = run([(C, b"HELP\r\n"), (S, b"214-commands:\r\n214-HELO EHLO MAIL\r\n214 RCPT DATA\r\n"),
                      (C, b"NOOP\r\n"), (S, b"250 ok\r\n")])
    cmds = {c.command: c for c in of_type(records, Command)}
    assert cmds["EHLO"].reply_text == "mx.example.net"
    assert cmds["EHLO"].reply_lines == ["PIPELINING", "CHUNKING", "8BITMIME"]
    assert cmds["HELP"].reply_lines == ["HELO EHLO MAIL", "RCPT DATA"]
    assert cmds["NOOP"].reply_lines is None and cmds[""].reply_lines is None
    capped, _ = run([], config=Config(limits=Limits(max_reply_lines=2)))
    ehlo = next(c for c in of_type(capped, Command) if c.command == "EHLO")
    assert ehlo.reply_lines == ["PIPELINING", "CHUNKING"]
    assert [a.name for a in of_type(capped, Anomaly)] == ["smtp_reply_lines_capped"]


# -- the same rows downstream: summary, Zeek smtp.log, timeline -----------------------------

def test_summary_zeek_log_and_timeline_use_the_transaction_rows(tmp_path):
    import maildissect
    from maildissect.output import zeek
    from maildissect.output.summary import overview
    from tests.pcaps import conversation, write_pcap
    ex = [("s", b"220 mx.example.net ESMTP\r\n"), ("c", b"EHLO bot\r\n"), ("s", b"250 mx\r\n")]
    for user in ("admin", "root", "info"):
        ex += [("c", b"MAIL FROM:<x@example.org>\r\n"), ("s", b"250 ok\r\n"),
               ("c", b"RCPT TO:<%s@example.net>\r\n" % user.encode()), ("s", b"550 5.1.1 unknown\r\n"),
               ("c", b"RSET\r\n"), ("s", b"250 ok\r\n")]
    ex += [("c", b"MAIL FROM:<x@example.org>\r\n"), ("s", b"250 ok\r\n"), ("c", b"RCPT TO:<bob@example.net>\r\n"),
           ("s", b"250 ok\r\n"), ("c", b"DATA\r\n"), ("s", b"354 go\r\n"), ("c", BODY + b".\r\n"),
           ("s", b"250 queued as Q9\r\n"), ("c", b"MAIL FROM:<x@example.org>\r\n"), ("s", b"250 ok\r\n"),
           ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]
    frames, _, _ = conversation(exchanges=ex)
    path = tmp_path / "harvest.pcap"
    write_pcap(path, frames)
    a = maildissect.analyze(str(path))
    msgs = sorted(a.records.messages, key=lambda m: m.transaction)
    assert [m.outcome for m in msgs] == ["no_recipients"] * 3 + ["delivered", "aborted"]
    assert dict(overview(a))["messages"] == "5 sent (1 delivered, 3 no_recipients, 1 aborted)"
    # the DataFrame has the column
    assert list(a.messages.sort_values("transaction")["outcome"].astype(str)) == [m.outcome for m in msgs]
    # Zeek's smtp.log: one row per transaction, each with its envelope
    log = zeek.smtp_rows(a.records)
    assert len(log) == len(msgs)
    assert [(r["mailfrom"], r.get("rcptto"), r.get("subject")) for r in log] == [
        ("x@example.org", ["admin@example.net"], None), ("x@example.org", ["root@example.net"], None),
        ("x@example.org", ["info@example.net"], None), ("x@example.org", ["bob@example.net"], "hello"),
        ("x@example.org", None, None)]
    # the timeline tells each transaction without a message
    events = list(a.events["event"].astype(str))
    assert events.count("transaction_no_recipients") == 3 and events.count("transaction_aborted") == 1
    assert events.count("message_accepted") == 1
