"""What Zeek, Suricata and Arkime report on their own mail test traces, reported the same way.

The traces are rebuilt from the peers' expected outputs (tests/fixtures/peers.py says
how and from which file); each test compares the fields the peer reports with ours
(docs/protocols/*.md, "How the peers report it", has the mapping).
"""

from __future__ import annotations

import maildissect
from maildissect.output import zeek
from tests.fixtures import peers
from tests.pcaps import conversation, tcp_frame, write_pcap


def build(tmp_path, case, name):
    frames, cdata, sdata = conversation(client=case["client"], server=case["server"], exchanges=case["exchanges"],
                                        t0=1078232252.0, close=case.get("close", "fin") == "fin")
    if case.get("close") == "rst":
        (cip, cport), (sip, sport) = case["client"], case["server"]
        seq = 1000 + 1 + len(cdata)
        frames.append((frames[-1][0] + 0.001, tcp_frame(cip, sip, cport, sport, seq, 5000 + 1 + len(sdata), "R")))
    path = tmp_path / f"{name}.pcap"
    write_pcap(path, frames)
    return maildissect.analyze(str(path)), cdata, sdata


def test_zeek_http_connect_with_smtp(tmp_path):
    case = peers.ZEEK_CONNECT
    a, _, _ = build(tmp_path, case, "connect")
    (h,) = a.records.http
    want = case["http"]
    assert (h.method, h.uri, h.version.removeprefix("HTTP/"), h.status, h.reason) == \
        (want["method"], want["uri"], want["version"], want["status_code"], want["status_msg"])
    (row,) = zeek.smtp_rows(a.records)
    for field, value in case["smtp"].items():
        got = row.get(field)
        assert (sorted(got) if isinstance(value, list) and field != "path" else got) == value, field
    (conn,) = zeek.conn_rows(a.records)
    assert conn["service"] == case["service"]
    (sess,) = a.records.sessions
    assert (sess.protocol, sess.tunnel, sess.tunnel_target) == ("smtp", "http-connect", "mailin03.sul.t-online.de:25")


def _socks_row_matches(row, want):
    for field, value in want.items():
        assert row.get(field) == value, (field, row.get(field), value)


def test_zeek_socks5_to_a_name_with_http_inside(tmp_path):
    a, _, _ = build(tmp_path, peers.ZEEK_SOCKS1, "socks1")
    (row,) = zeek.socks_rows(a.records)
    _socks_row_matches(row, peers.ZEEK_SOCKS1["socks"])
    (sess,) = a.records.sessions
    assert (sess.protocol, sess.tunnel, sess.tunnel_target) == ("http", "socks5", "www.osnews.com:80")
    assert [(h.method, h.host, h.status) for h in a.records.http] == [("GET", "www.osnews.com", 200)]
    (conn,) = zeek.conn_rows(a.records)
    assert conn["service"] == "http,socks"
    # the TSV log as Zeek writes it
    zeek.write_logs(a, str(tmp_path / "logs"))
    lines = (tmp_path / "logs" / "socks.log").read_text().splitlines()
    fields = lines[6].split("\t")[1:]
    (values,) = [line.split("\t") for line in lines if not line.startswith("#")]
    row = dict(zip(fields, values))
    assert (row["version"], row["user"], row["status"], row["request.name"], row["request_p"], row["bound.host"],
            row["bound_p"]) == ("5", "-", "succeeded", "www.osnews.com", "80", "192.168.0.31", "2688")


def test_zeek_socks5_on_1080(tmp_path):
    a, _, _ = build(tmp_path, peers.ZEEK_SOCKS2, "socks2")
    (row,) = zeek.socks_rows(a.records)
    _socks_row_matches(row, peers.ZEEK_SOCKS2["socks"])


def test_arkime_smtp_through_socks5(tmp_path):
    case = peers.ARKIME_SOCKS5_SMTP
    a, cdata, sdata = build(tmp_path, case, "socks5-smtp-503")
    want = case["arkime"]
    # the rebuilt trace has the sizes and first bytes Arkime reports
    assert (len(cdata), len(sdata)) == (want["client.bytes"], want["server.bytes"])
    assert (cdata[:8].hex(), sdata[:8].hex()) == (want["srcPayload8"], want["dstPayload8"])
    (sess,) = a.records.sessions
    (flow,) = a.records.flows
    # protocol [smtp, socks, tcp]: the session's protocol and how it was reached
    assert (sess.protocol, sess.tunnel, flow.protocol) == ("smtp", "socks5", "smtp")
    # socks.host, socks.port
    assert sess.tunnel_target == f"{want['socks.host']}:{want['socks.port']}"
    # email.smtpHello
    assert [sess.helo] == want["email.smtpHello"]
    # tag smtp:authlogin: the AUTH LOGIN command, refused by the 503
    auth = [c for c in a.records.commands if c.command == "AUTH"]
    assert [(c.argument, c.reply_code) for c in auth] == [("LOGIN", "503")]
    assert flow.close == "rst"


def test_zeek_bdat_with_a_bad_size(tmp_path):
    """Zeek logs each of these transactions with its envelope and the 521; so do we (a row of
    kind envelope, outcome rejected), with the anomaly smtp_bad_bdat for Zeek's weird."""
    case = peers.ZEEK_BDAT_INVALID
    frames = []
    for k, (client, exchanges) in enumerate(case["connections"]):
        part, _, _ = conversation(client=client, server=case["server"], exchanges=exchanges, t0=1000.0 + k,
                                  close=False)
        frames += part
    path = tmp_path / "bdat-invalid.pcap"
    write_pcap(path, sorted(frames, key=lambda f: f[0]))
    a = maildissect.analyze(str(path))
    log = zeek.smtp_rows(a.records)
    assert len(log) == 3
    for row in log:
        for field, value in case["smtp"].items():
            assert row.get(field) == value, (field, row.get(field))
    txns = sorted(a.records.messages, key=lambda m: m.session_id)
    assert [(m.kind, m.outcome, m.mail_from, m.rcpt_to, f"{m.reply_code} {m.reply_text}") for m in txns] == \
        [("envelope", "rejected", "zeek@localhost", ["root@localhost"], case["smtp"]["last_reply"])] * 3
    assert [x.name for x in a.records.anomalies] == ["smtp_bad_bdat"] * 3
    ehlo = [c for c in a.records.commands if c.command == "EHLO"]
    assert [c.reply_lines for c in ehlo] == [case["ehlo_lines"]] * 3


def test_suricata_pop3(tmp_path):
    case = peers.SURICATA_POP3
    a, _, _ = build(tmp_path, case, "pop3")
    cmds = a.records.commands
    # one Suricata pop3 event per command (the greeting's included)
    assert len(cmds) == case["events"]
    greeting = cmds[0]
    assert (greeting.command, greeting.reply_code, greeting.reply_text) == ("", "+OK", case["greeting"])
    user = next(c for c in cmds if c.command == "USER")
    assert (user.argument, user.reply_code, user.reply_text) == (case["user"][0], "+OK", case["user"][1])
    from collections import Counter
    counts = Counter(c.command for c in cmds)
    assert {k: counts[k] for k in case["counts"]} == case["counts"]
    assert all(c.reply_code == "+OK" for c in cmds)  # response.success: true
    # response.data: the lines of LIST and UIDL
    by = {c.command: c for c in cmds}
    assert by["LIST"].reply_lines == [f"{i} 1000" for i in range(1, 50)]
    assert by["UIDL"].reply_lines == [f"{i} uid-{i:04d}" for i in range(1, 50)]
    assert by["STAT"].reply_lines is None
    assert len([m for m in a.records.messages if m.kind == "top"]) == 49
