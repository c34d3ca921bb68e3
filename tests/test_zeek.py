"""Zeek-compatible logs (TSV and JSON) and typed Parquet exports."""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

import maildissect
from maildissect import frames
from maildissect.output import zeek
from maildissect.output.files import write_parquet
from tests.pcaps import write_pcap
from tests.test_journeys import T0, cli_run, journey_frames, refused, unanswered

HERE = os.path.dirname(os.path.abspath(__file__))
SMTP_PCAP = os.path.join(HERE, "captures", "zeek", "smtp.pcap")
POP3_PCAP = os.path.join(HERE, "captures", "zeek", "pop3-pop3.pcap")
BASELINE = os.path.join(HERE, "fixtures", "zeek", "smtp.basic.smtp.log")


def read_zeek(path: str) -> tuple[dict, list[dict]]:
    """A Zeek ASCII log as (header, rows), the way zeek-cut reads it: by the #fields line.

    Values are kept as text except sets/vectors, which become lists; ``-`` is None.
    """
    header, rows, fields, types = {}, [], [], []
    with open(path, encoding="ascii") as f:
        for line in f.read().split("\n"):
            if not line:
                continue
            if line.startswith("#"):
                key, _, value = line[1:].partition("\t" if not line.startswith("#separator") else " ")
                header[key] = value
                if key == "fields":
                    fields = value.split("\t")
                elif key == "types":
                    types = value.split("\t")
                continue
            values = line.split("\t")
            assert len(values) == len(fields), line
            row = {}
            for name, typ, v in zip(fields, types, values):
                if v == "-":
                    row[name] = None
                elif typ.startswith(("set[", "vector[")):
                    row[name] = [] if v == "(empty)" else v.split(",")
                else:
                    row[name] = v
            rows.append(row)
    return header, rows


@pytest.fixture(scope="module")
def smtp_logs(tmp_path_factory):
    out = tmp_path_factory.mktemp("zeek")
    a = maildissect.analyze(SMTP_PCAP)
    zeek.write_logs(a, str(out / "tsv"), "zeek", captures=[SMTP_PCAP])
    zeek.write_logs(a, str(out / "json"), "zeek-json", captures=[SMTP_PCAP])
    return out


def test_smtp_log_matches_zeeks_own(smtp_logs):
    zh, zrows = read_zeek(BASELINE)
    mh, mrows = read_zeek(str(smtp_logs / "tsv" / "smtp.log"))
    assert mh["fields"] == zh["fields"] and mh["types"] == zh["types"]  # Zeek's names, order and types
    assert len(mrows) == len(zrows) == 2
    compared = 0
    for ours, theirs in zip(mrows, zrows):
        for name, value in theirs.items():
            if name in ("uid", "fuids"):
                continue  # Zeek draws these at random
            if name in ("rcptto", "to", "cc"):
                assert sorted(ours[name] or []) == sorted(value or []), name
            else:
                assert ours[name] == value, (name, ours[name], value)
            compared += 1
    assert compared == 2 * 24
    # maildissect's ids are Zeek-shaped and stable
    assert all(r["uid"].startswith("C") and len(r["uid"]) == 18 for r in mrows)


def test_tsv_header_and_cross_references(smtp_logs):
    text = (smtp_logs / "tsv" / "conn.log").read_text()
    assert text.startswith("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
                           "#path\tconn\n#open\t2009-10-05-06-06-07\n#fields\tts\tuid\tid.orig_h\t")
    assert text.rstrip("\n").split("\n")[-1].startswith("#close\t")
    _, conn = read_zeek(str(smtp_logs / "tsv" / "conn.log"))
    _, smtp = read_zeek(str(smtp_logs / "tsv" / "smtp.log"))
    _, files = read_zeek(str(smtp_logs / "tsv" / "files.log"))
    first = conn[0]
    assert (first["id.orig_h"], first["id.orig_p"], first["proto"], first["service"], first["conn_state"]) == (
        "10.10.1.4", "1470", "tcp", "smtp", "SF")
    assert first["history"] == "ShAdDaFf" and first["ip_proto"] == "6" and first["local_orig"] is None
    assert int(first["orig_pkts"]) > 0 and int(first["orig_ip_bytes"]) > int(first["orig_bytes"])
    uids = {r["uid"] for r in conn}
    assert {r["uid"] for r in smtp} <= uids and {r["uid"] for r in files} <= uids
    # the attachment of the first message: in smtp.log's fuids and in files.log with its hashes
    news = [f for f in files if f["filename"] == "NEWS.txt"][0]
    assert news["fuid"] in smtp[0]["fuids"] and news["source"] == "SMTP" and news["is_orig"] == "T"
    assert news["md5"] and len(news["sha256"]) == 64 and news["analyzers"] == ["MD5", "SHA1", "SHA256"]


def test_json_logs(smtp_logs):
    lines = (smtp_logs / "json" / "smtp.log").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert rows[0]["ts"] == pytest.approx(1254722768.219663) and isinstance(rows[0]["ts"], float)
    assert rows[0]["id.orig_h"] == "10.10.1.4" and rows[0]["id.orig_p"] == 1470
    assert rows[0]["rcptto"] == ["raj_deol2002in@yahoo.co.in"] and rows[0]["tls"] is False
    assert "cc" not in rows[0] and "reply_to" not in rows[0]  # unset fields are left out, as Zeek does
    assert rows[1]["cc"] == ["felica4uu@hotmail.com", "davis_mark1@outlook.com"]
    conn = [json.loads(x) for x in (smtp_logs / "json" / "conn.log").read_text().splitlines()]
    assert all(isinstance(c["duration"], float) for c in conn if "duration" in c)


def test_conn_states_of_failed_connections(tmp_path):
    path = tmp_path / "fail.pcap"
    frames_ = journey_frames() + refused(("10.0.0.8", 1000), ("10.0.0.9", 25), T0 + 900) + \
        unanswered(("10.0.0.8", 1001), ("10.0.0.9", 25), T0 + 950)
    write_pcap(path, sorted(frames_, key=lambda f: f[0]))
    a = maildissect.analyze(str(path))
    out = tmp_path / "logs"
    cli = cli_run(["export", str(path), "-o", str(out), "-f", "zeek", "-q", "-j", "1"])
    assert cli[0] == 0, cli[2]
    assert sorted(os.listdir(out)) == ["conn.log", "files.log", "http.log", "imap.log", "pop3.log", "smtp.log",
                                       "ssl.log", "weird.log"]
    _, conn = read_zeek(str(out / "conn.log"))
    by_port = {(r["id.orig_h"], r["id.orig_p"]): r for r in conn}
    rej = by_port[("10.0.0.8", "1000")]
    assert (rej["conn_state"], rej["history"], rej["orig_pkts"], rej["resp_pkts"]) == ("REJ", "Sr", "1", "1")
    assert rej["duration"] is not None and rej["orig_bytes"] == "0"
    s0 = by_port[("10.0.0.8", "1001")]
    assert (s0["conn_state"], s0["history"], s0["orig_pkts"], s0["resp_pkts"]) == ("S0", "S", "2", "0")
    # the greylisted session: a transaction row with its 451 as last reply, no message
    _, smtp = read_zeek(str(out / "smtp.log"))
    grey = [r for r in smtp if r["last_reply"] and r["last_reply"].startswith("221")
            and r["msg_id"] is None]
    assert grey and grey[0]["rcptto"] == ["bob@b.example"] and grey[0]["mailfrom"] == "alice@a.example"
    # pop3.log: one line per command, RETR carrying the message
    _, pop = read_zeek(str(out / "pop3.log"))
    assert [r["command"] for r in pop] == ["USER", "PASS", "RETR", "QUIT"]
    retr = pop[2]
    assert retr["msg_id"] == "<journey-1@a.example>" and retr["status"] == "+OK" and retr["user"] == "bob"
    assert pop[1]["arg"] == "hunter2"
    # conn.log without the second read (stdin-like input): packet fields unset, state from the close reason
    rows = zeek.conn_rows(a.records, packets=None)
    assert {r["conn_state"] for r in rows} >= {"REJ", "S0", "SF"} and "history" not in rows[0]


def test_pop3_log_on_zeeks_trace_and_redaction(tmp_path):
    a = maildissect.analyze(POP3_PCAP, redact=True)
    rows = zeek.pop3_rows(a.records)  # masked in the records (redact=True)
    retr = [r for r in rows if r["command"] == "RETR" and r.get("msg_id")]
    assert len(retr) == 3 and all(r["size"] > 0 for r in retr)
    auth = [r for r in rows if r["command"] in ("AUTH", "PASS")]
    # PASS masked whole; AUTH shows its mechanism, an initial response masked after it
    assert auth and all(r["arg"] == "********" for r in auth if r["command"] == "PASS")
    assert all(r["arg"] is None or " " not in r["arg"] or r["arg"].endswith(" ********") for r in auth)
    zeek.write_tsv(str(tmp_path / "pop3.log"), "pop3", rows)
    header, back = read_zeek(str(tmp_path / "pop3.log"))
    assert header["fields"].split("\t") == [n for n, _ in zeek.POP3_FIELDS] and len(back) == len(rows)


def test_value_escaping():
    assert zeek._tsv_value("a\tb\\c\u00e9", "string") == "a\\x09b\\\\c\\xc3\\xa9"
    assert zeek._tsv_value("-", "string") == "\\x2d" and zeek._tsv_value("", "string") == ""
    assert zeek._tsv_value(["a,b", "c"], "set[string]") == "a\\x2cb,c"
    assert zeek._tsv_value([], "set[string]") == "(empty)" and zeek._tsv_value(None, "count") == "-"
    assert zeek._tsv_value(True, "bool") == "T" and zeek._tsv_value(1.5, "interval") == "1.500000"
    assert zeek.conn_uid("10.0.0.1", 1, "10.0.0.2", 25, 1.0) == zeek.conn_uid("10.0.0.1", 1, "10.0.0.2", 25, 1.0)
    assert zeek.conn_uid("10.0.0.1", 1, "10.0.0.2", 25, 1.0) != zeek.conn_uid("10.0.0.1", 2, "10.0.0.2", 25, 1.0)


def test_parquet_keeps_types(tmp_path):
    a = maildissect.analyze(SMTP_PCAP)
    for table in frames.SCHEMAS:
        for df, tag in ((a.table(table), "full"), (frames.frame(table, []), "empty")):
            path = tmp_path / f"{table}-{tag}.parquet"
            write_parquet(df, str(path))
            schema = pq.read_schema(str(path))
            assert not [f.name for f in schema if str(f.type) == "null"], (table, tag)
            back = pd.read_parquet(path)
            assert [str(t) for t in back.dtypes] == [str(t) for t in df.dtypes], (table, tag)
    m = pd.read_parquet(tmp_path / "messages-full.parquet")
    assert str(m["ts"].dtype) == "datetime64[us, UTC]"
    assert list(m["rcpt_to"][0]) == ["raj_deol2002in@yahoo.co.in"]
    att = m["attachments"][0][0]
    assert att["filename"] == "NEWS.txt" and att["size"] > 0
    s = pq.read_schema(tmp_path / "messages-empty.parquet")
    assert str(s.field("attachments").type).startswith("list<element: struct<filename: string")
    assert str(s.field("ts").type) == "timestamp[us, tz=UTC]"


def _bare(values):
    import re
    out = set()
    for v in values if isinstance(values, list) else [values]:
        out |= {a.lower() for a in re.findall(r"[^\s<>\"(),:;]+@[^\s<>\"(),:;]+", v or "")}
    return out


def test_smtp_log_fields_on_every_zeek_smtp_trace():
    """Every SMTP trace with Zeek's expected values: the smtp.log fields Zeek reports, row by row."""
    with open(os.path.join(HERE, "captures", "zeek", "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    names = {"mail_from": "mailfrom", "rcpt_to": "rcptto", "message_id": "msg_id"}
    checked = 0
    for cap in expected["captures"].values():
        if "smtp" not in cap.get("protocols", []) or not cap.get("messages"):
            continue
        rows = zeek.smtp_rows(maildissect.analyze(os.path.join(HERE, "captures", "zeek", cap["file"])).records)
        for m in cap["messages"]:
            port = m["hints"]["client_port"]
            cands = [r for r in rows if r["id.orig_p"] == port and (r.get("msg_id") or r.get("mailfrom"))]
            assert cands, (cap["file"], port)
            for field, spec in m["fields"].items():
                name = names.get(field, field)
                if name not in ("helo", "mailfrom", "rcptto", "date", "from", "to", "cc", "msg_id", "subject", "tls",
                                "in_reply_to", "user_agent", "reply_to"):
                    continue
                want = spec["value"]
                if isinstance(want, list):  # address lists: the shared expectations keep bare addresses
                    ok = any(_bare(r.get(name) or []) == _bare(want) for r in cands)
                else:
                    ok = any(r.get(name) == want for r in cands)
                assert ok, (cap["file"], name, want, [r.get(name) for r in cands])
                checked += 1
    assert checked >= 40
