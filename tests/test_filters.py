"""Filters that filter: every table x every filter, on real captures, single and merged.

The expectations are written from the records (what each filter means per
table, docs/cli.md), not from maildissect.filters, and checked through the
Python API and the command line alike.
"""

from __future__ import annotations

import json
import pathlib

import pandas as pd
import pytest
from click.testing import CliRunner

import maildissect
from maildissect import cli as cli_module
from maildissect.cli import cli
from maildissect.filters import FilterError, check_where, select

from .pcaps import conversation, write_pcap

ROOT = pathlib.Path(__file__).resolve().parent.parent
CAP = ROOT / "captures"
TCAP = ROOT / "tests" / "captures"
TABLES = ["flows", "sessions", "commands", "messages", "attachments", "credentials", "anomalies", "http",
          "mailboxes", "files"]
SOURCES = {
    "journey": [CAP / "journey.pcap"],
    "webmail": [CAP / "webmail.pcap"],
    "relay": [CAP / "relay.pcap"],  # a deferred transaction: an envelope without a message
    "zeek-smtp": [TCAP / "zeek" / "smtp.pcap"],
    "roundcube": [TCAP / "roundcube" / "roundcube.pcap"],
    "merged": [CAP / "journey.pcap", CAP / "pop3.pcap", CAP / "relay.pcap", TCAP / "zeek" / "pop3-pop3.pcap"],
}
NOTHING = "zz-no-such-text-zz"


@pytest.fixture(scope="module", params=sorted(SOURCES))
def source(request):
    return request.param, maildissect.analyze([str(p) for p in SOURCES[request.param]])


# -- the meaning, written from the records ------------------------------------------------------
def _has(needle, *values):
    needle = needle.lower()
    for v in values:
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if x and needle in str(x).lower():
                return True
    return False


def matching_messages(records, what, needle):
    fields = {"from_": lambda m: (m.from_, m.mail_from, m.sender),
              "to": lambda m: (m.to, m.cc, m.bcc, m.rcpt_to, m.rcpt_rejected),
              "subject": lambda m: (m.subject,)}[what]
    return [m for m in records.messages if _has(needle, *fields(m))]


def envelope_matches(records, what, needle):
    """(session, transaction) of SMTP transactions without a message whose envelope matches."""
    if what == "subject":
        return set()
    carried = {(m.session_id, m.transaction) for m in records.messages}
    env = {}
    for c in records.commands:
        if c.protocol == "smtp" and c.transaction is not None and (c.session_id, c.transaction) not in carried:
            e = env.setdefault((c.session_id, c.transaction), {"MAIL": [], "RCPT": []})
            if c.command in e:
                e[c.command].append(c.argument)
    return {k for k, e in env.items() if _has(needle, *(e["MAIL"] if what == "from_" else e["RCPT"]))}


def expected_rows(records, table, df, what, needle):
    """The rows of ``df`` the filter must keep, as a list of booleans."""
    msgs = matching_messages(records, what, needle)
    txns = envelope_matches(records, what, needle)
    sessions = {m.session_id for m in msgs} | {s for s, _ in txns}
    keys = {(m.session_id, m.message_index) for m in msgs}
    rows = df.astype(object).where(df.notna(), None).to_dict("records")
    if table == "flows":
        return [r["flow_id"] in sessions for r in rows]
    if table in ("sessions", "credentials", "anomalies"):
        return [r["session_id"] in sessions for r in rows]
    if table in ("messages", "attachments"):
        return [(r["session_id"], r["message_index"]) in keys for r in rows]
    if table == "http":
        return [(r["session_id"], r["seq"]) in {(m.session_id, m.command_seq) for m in msgs} for r in rows]
    if table == "files":
        carried = {(m.session_id, m.command_seq) for m in msgs}
        return [(r["session_id"], r["message_index"]) in keys if r["message_index"] is not None
                else (r["session_id"], r["http_seq"]) in carried for r in rows]
    if table == "mailboxes":
        ids = {m.message_id for m in msgs if m.message_id}
        return [r["message_id"] in ids if r["message_id"] else r["session_id"] in sessions for r in rows]
    if table == "commands":
        carried = {(m.session_id, m.command_seq) for m in msgs}
        carriers = {(m.session_id, m.command_seq) for m in records.messages}
        tx = {(m.session_id, m.transaction) for m in msgs if m.transaction is not None} | txns
        out = []
        for r in rows:
            key = (r["session_id"], r["seq"])
            if key in carriers:
                out.append(key in carried)  # the command that carried a message: that message decides
            elif r["transaction"] is not None:
                out.append((r["session_id"], r["transaction"]) in tx)  # its SMTP transaction decides
            else:
                out.append(r["session_id"] in sessions)  # greeting, EHLO, AUTH, SELECT...: the session
        return out
    raise AssertionError(table)


def needles(records):
    """A sender, a recipient and a subject word present in the capture."""
    m = next(m for m in records.messages if m.subject and (m.from_ or m.mail_from) and (m.to or m.rcpt_to))
    sender = (m.mail_from or m.from_).split("@")[0].strip("<\" ")[-6:]
    rcpt = (m.rcpt_to or m.to)[0].split("@")[0].strip("<\" ")[-5:]
    return {"from_": sender, "to": rcpt, "subject": m.subject.split()[0]}


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("what", ["from_", "to", "subject"])
def test_mail_filters_keep_what_they_mean(source, table, what):
    name, a = source
    full = a.table(table)
    for needle in (needles(a.records)[what], NOTHING):
        got = select(a, table, **{what: needle})
        keep = pd.Series(expected_rows(a.records, table, full, what, needle), index=full.index, dtype=bool)
        want = full[keep].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, obj=f"{name} {table} {what}={needle!r}")
        if needle == NOTHING:
            assert got.empty


def test_mail_filters_narrow_the_tables(source):
    """A present sender keeps some rows and drops others somewhere: the filters are not ignored."""
    name, a = source
    sender = needles(a.records)["from_"]
    kept = {t: len(select(a, t, from_=sender)) for t in ("sessions", "commands", "messages")}
    assert kept["messages"] >= 1 and kept["sessions"] >= 1 and kept["commands"] >= 1, name


def test_journey_filters_by_sender():
    a = maildissect.analyze(str(CAP / "journey.pcap"))
    bob = {m.session_id for m in a.records.messages if "bob@" in (m.mail_from or "") + (m.from_ or "")}
    assert set(select(a, "sessions", from_="bob@")["session_id"]) == bob
    assert set(select(a, "flows", from_="bob@")["flow_id"]) == bob
    http = select(a, "http", from_="bob@")
    assert list(http["mail_action"]) == ["send"]  # the webmail send, not bob's login or list
    cmds = select(a, "commands", from_="bob@", session=7)
    assert "MAIL" in set(cmds["command"]) and "EHLO" in set(cmds["command"])
    alice_only = select(a, "commands", from_="alice@", session=7)
    assert alice_only.empty
    # a session is no longer matched by its authenticated user
    assert set(select(a, "sessions", from_="alice")["session_id"]) == \
        {m.session_id for m in a.records.messages if "alice" in (m.mail_from or "") + (m.from_ or "").lower()}


def test_deferred_transaction_is_matched_by_its_envelope():
    a = maildissect.analyze(str(CAP / "relay.pcap"))
    # the deferred transaction carried no message: it is a messages row of kind envelope
    rows = [m for m in a.records.messages if m.kind == "envelope" and "alice" in (m.mail_from or "")]
    assert rows and not envelope_matches(a.records, "from_", "alice")
    sid, tx = rows[0].session_id, rows[0].transaction
    msgs = select(a, "messages", from_="alice")
    assert (sid, rows[0].message_index) in set(zip(msgs["session_id"], msgs["message_index"]))
    cmds = select(a, "commands", from_="alice", session=sid)
    assert set(cmds[cmds["transaction"] == tx]["command"]) >= {"MAIL", "RCPT"}
    assert sid in set(select(a, "sessions", from_="alice")["session_id"])
    assert sid not in set(select(a, "sessions", subject="Meeting")["session_id"])


# -- protocol, session, time, endpoints -----------------------------------------------------------
def _session_protocols(records):
    out = {f.flow_id: {"smtps": "smtp", "imaps": "imap", "pop3s": "pop3", "https": "http"}.get(f.protocol,
                                                                                               f.protocol)
           for f in records.flows}
    out.update({s.session_id: s.protocol for s in records.sessions})
    return out


@pytest.mark.parametrize("table", TABLES)
def test_protocol_and_session(source, table):
    name, a = source
    full = a.table(table)
    sid = "flow_id" if table == "flows" else "session_id"
    protos = _session_protocols(a.records)
    for proto in ("smtp", "imap", "pop3", "http", "tls"):
        got = select(a, table, protocol=proto)
        assert sorted(got[sid].tolist()) == sorted(s for s in full[sid].tolist()
                                                   if s is not pd.NA and protos.get(s) == proto), (name, proto)
    if len(full) and full[sid].notna().any():
        one = int(full[sid].dropna().iloc[0])
        got = select(a, table, session=one)
        assert len(got) == int((full[sid] == one).sum()) and set(got[sid]) == {one}


@pytest.mark.parametrize("table", TABLES)
def test_since_and_until(source, table):
    name, a = source
    full = a.table(table)
    start, end = ("start", "end") if table in ("flows", "sessions") else ("ts", "ts")
    times = full[start].dropna().sort_values()
    if len(times) < 2:
        pytest.skip("too few timed rows")
    mid = times.iloc[len(times) // 2]
    iso = mid.isoformat()
    epoch = mid.timestamp()
    since = select(a, table, since=iso)
    assert len(since) == int((full[end] >= mid).fillna(False).sum())
    assert since.equals(select(a, table, since=epoch))  # epoch seconds mean the same
    until = select(a, table, until=iso)
    assert len(until) == int((full[start] <= mid).fillna(False).sum())
    both = select(a, table, since=iso, until=iso)
    assert len(both) == int(((full[start] <= mid) & (full[end] >= mid)).fillna(False).sum())
    # a time without a zone is UTC; one with a zone is converted
    local = mid.tz_convert("Europe/Berlin").isoformat()
    assert select(a, table, since=local).equals(since)
    assert select(a, table, since=mid.tz_localize(None).isoformat()).equals(since)


@pytest.mark.parametrize("table", TABLES)
def test_host_client_server(source, table):
    name, a = source
    full = a.table(table)
    ends = {f.flow_id: (f.client_ip, f.server_ip) for f in a.records.flows}
    sid = "flow_id" if table == "flows" else "session_id"
    if not a.records.flows:
        pytest.skip("no connections")
    client, server = a.records.flows[0].client_ip, a.records.flows[0].server_ip
    rows = [ends.get(s, (None, None)) if s is not pd.NA else (None, None) for s in full[sid].tolist()]
    assert len(select(a, table, host=client)) == sum(client in r for r in rows)
    assert len(select(a, table, client=client)) == sum(r[0] == client for r in rows)
    assert len(select(a, table, server=server)) == sum(r[1] == server for r in rows)
    assert len(select(a, table, host="203.0.113.0/24")) == 0
    assert len(select(a, table, host=["0.0.0.0/0", "::/0"])) == sum(r[0] is not None for r in rows)


def test_ipv6_and_networks(tmp_path):
    frames, _, _ = conversation(client=("2001:db8::1", 40000), server=("2001:db8:1::25", 25), v6=True,
                                exchanges=[("s", b"220 mx ESMTP\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250 ok\r\n"),
                                           ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")])
    frames4, _, _ = conversation(client=("10.1.2.3", 40001), server=("192.0.2.25", 25), t0=2000.0,
                                 exchanges=[("s", b"220 mx ESMTP\r\n"), ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")])
    path = tmp_path / "mixed.pcap"
    write_pcap(path, frames + frames4)
    a = maildissect.analyze(str(path))
    assert len(select(a, "sessions", host="2001:db8::/32")) == 1
    assert len(select(a, "sessions", server="2001:db8:1:0::25")) == 1  # any spelling of the address
    assert len(select(a, "sessions", client="[2001:db8::1]")) == 1
    assert len(select(a, "commands", client="10.0.0.0/8")) == len(select(a, "commands", session=1))
    assert len(select(a, "sessions", server="10.0.0.0/8")) == 0
    assert len(select(a, "sessions", host=["2001:db8::/32", "192.0.2.0/24"])) == 2


# -- --where --------------------------------------------------------------------------------------
def test_where_examples():
    a = maildissect.analyze(str(CAP / "journey.pcap"))
    m = a.messages
    got = select(a, "messages", where="size > 2000 and protocol == 'smtp'")
    assert len(got) == int(((m["size"] > 2000) & (m["protocol"] == "smtp")).sum()) > 0
    assert len(select(a, "messages", where="`from`.str.contains('Bob', na=False)")) == \
        int(m["from"].str.contains("Bob", na=False).sum())
    assert len(select(a, "messages", where="to.str.contains('bob@')")) == \
        sum(any("bob@" in x for x in v) for v in m["to"])
    assert len(select(a, "messages", where="protocol in ['imap', 'pop3']")) == \
        int(m["protocol"].isin(["imap", "pop3"]).sum())
    first = m["ts"].min()
    assert len(select(a, "messages", where=f"ts > '{first.isoformat()}'")) == int((m["ts"] > first).sum())
    assert len(select(a, "commands", where="latency > 0.001 or reply_code == '354'")) > 0
    assert len(select(a, "flows", where="bytes_client + bytes_server > 10 * 1024")) == \
        int(((a.flows["bytes_client"] + a.flows["bytes_server"]) > 10240).sum())


@pytest.mark.parametrize("expr, says", [
    ("__import__('os').system('true')", "calls allowed"),
    ("size.__class__", "Attribute is not allowed"),
    ("size.__class__.__mro__[1].__subclasses__()", "calls allowed"),
    ("[c for c in size]", "ListComp is not allowed"),
    ("@size > 1", "not an expression"),
    ("size > 1 if size else 0", "IfExp is not allowed"),
    ("(lambda: 1)()", "calls allowed"),
    ("'x' * 100000000 == subject", "arithmetic on text"),
    ("size ** 100000", "BinOp is not allowed"),
    ("subject.str.contains(open)", "must be constants"),
    ("nosuch > 1", "unknown column 'nosuch'"),
    ("from == 'a'", "write `from` in backticks"),
    ("size >", "not an expression"),
    ("size", "not a condition"),
    ("subject > 3", "cannot evaluate"),
    ("", "empty expression"),
    ("size > 1" + " or size > 1" * 200, "longer than 1000"),
])
def test_where_refuses_what_is_not_a_column_expression(expr, says):
    a = maildissect.analyze(str(CAP / "smtp.pcap"))
    with pytest.raises(FilterError) as e:
        select(a, "messages", where=expr)
    text = str(e.value)
    assert text.startswith("--where: ") and says in text and "\n" not in text
    assert "columns: protocol, session_id" in text  # the columns are listed


def test_check_where_runs_nothing(tmp_path, monkeypatch):
    """The checked expression is evaluated by maildissect, not by Python's eval."""
    monkeypatch.setattr("builtins.eval", lambda *a, **k: pytest.fail("eval called"))
    a = maildissect.analyze(str(CAP / "smtp.pcap"))
    assert len(select(a, "messages", where="size > 0")) == len(a.messages)
    assert check_where("`from` == 'x'", ["from"]) == "`from` == 'x'"


def test_tables_refuse_what_they_cannot_answer():
    a = maildissect.analyze(str(CAP / "smtp.pcap"))
    with pytest.raises(FilterError, match="--from: does not apply to the events table"):
        select(a, "events", from_="alice")
    with pytest.raises(FilterError, match="--host: does not apply to the journeys table"):
        select(a, "journeys", host="10.0.0.1")
    with pytest.raises(FilterError, match="--since: not an ISO 8601"):
        select(a, "messages", since="last tuesday")
    assert a.select("messages", from_="alice").equals(select(a, "messages", from_="alice"))


# -- the command line ---------------------------------------------------------------------------
CLI_FILTERS = [("--from", "bob@"), ("--to", "alice"), ("--subject", "Meeting"), ("--protocol", "smtp"),
               ("--session", "6"), ("--since", "2026-11-26T05:53:50Z"), ("--until", "1795672430"),
               ("--host", "127.0.0.0/8"), ("--client", "127.0.0.1"), ("--server", "::/0"),
               ("--where", "session_id >= 0")]
_OPTION = {"--from": "from_", "--to": "to", "--subject": "subject", "--protocol": "protocol",
           "--session": "session", "--since": "since", "--until": "until", "--host": "host",
           "--client": "client", "--server": "server", "--where": "where"}


@pytest.fixture(scope="module")
def journey():
    return maildissect.analyze(str(CAP / "journey.pcap"))


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("option, value", CLI_FILTERS)
def test_every_command_takes_every_filter(journey, monkeypatch, table, option, value):
    monkeypatch.setattr(cli_module, "run_analysis", lambda *a, **k: journey)  # one analysis for the matrix
    if option == "--where" and table == "flows":
        value = "flow_id >= 0"
    res = CliRunner().invoke(cli, [table, "x.pcap", option, value, "-f", "jsonl"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.output.splitlines()]
    arg = int(value) if option == "--session" else value
    assert len(rows) == len(select(journey, table, **{_OPTION[option]: arg}))


@pytest.mark.parametrize("args, says", [
    (["messages", "--since", "soon"], "--since: not an ISO 8601"),
    (["sessions", "--host", "10.0.0.300"], "--host: not an IP address"),
    (["commands", "--where", "nosuch == 1"], "--where: unknown column 'nosuch'; columns: session_id"),
    (["timeline", "--until", "x"], "--until: not an ISO 8601"),
    (["journeys", "--where", "import os"], "--where: not an expression"),
])
def test_cli_filter_errors_are_one_line_and_exit_2(args, says):
    """Refused before the capture is read: the capture here does not even exist."""
    res = CliRunner().invoke(cli, [args[0], "no-such.pcap", *args[1:]])
    assert res.exit_code == 2
    assert says in res.output and res.output.count("\n") == 1 and "Traceback" not in res.output


def test_cli_filters_on_timeline_journeys_and_extract(tmp_path):
    res = CliRunner().invoke(cli, ["timeline", str(CAP / "journey.pcap"), "-q", "--from", "x"])
    assert res.exit_code == 2  # the timeline has no mail filters: refused, not ignored
    a = maildissect.analyze(str(CAP / "journey.pcap"))
    res = CliRunner().invoke(cli, ["timeline", str(CAP / "journey.pcap"), "-q", "-f", "jsonl", "--protocol",
                                   "pop3"], catch_exceptions=False)
    rows = [json.loads(x) for x in res.output.splitlines()]
    pop3 = {s.session_id for s in a.records.sessions if s.protocol == "pop3"}
    assert rows and {r["session_id"] for r in rows} == pop3
    res = CliRunner().invoke(cli, ["journeys", str(CAP / "journey.pcap"), "-q", "-f", "jsonl", "--where",
                                   "role == 'retrieval'"], catch_exceptions=False)
    rows = [json.loads(x) for x in res.output.splitlines()]
    assert rows and {r["role"] for r in rows} == {"retrieval"}
    out = tmp_path / "x"
    res = CliRunner().invoke(cli, ["extract", str(CAP / "journey.pcap"), "-q", "-o", str(out), "--from", "bob@",
                                   "--server", "127.0.0.0/8"], catch_exceptions=False)
    assert res.exit_code == 0
    index = pd.read_csv(out / "index.csv")
    messages = index[index["kind"] == "message"]
    assert len(messages) == len(select(a, "messages", from_="bob@", server="127.0.0.0/8")) > 0
    assert set(index["session_id"]) == set(messages["session_id"])  # no file of another message
