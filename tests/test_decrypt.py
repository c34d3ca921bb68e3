"""TLS decryption with a key log (``--keylog``): tshark decrypts, the dissectors read the plaintext.

The splice is tested first on its own (no tshark: an index built from lines as
tshark prints them), then end to end on the generator's ``tls`` scenario — the
bundled capture and fresh runs, one with loss, reordering and duplication —
against the manifest's ground truth: every message with identical hashes,
every credential, tls=true and decrypted=true. Those parts are skipped when
tshark is not installed.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import shutil
import subprocess

import pytest
from click.testing import CliRunner

import maildissect
from maildissect import decrypt
from maildissect.analysis import AnalysisError
from maildissect.cli import cli
from maildissect.config import Config
from maildissect.model import Command, Credential, Flow
from maildissect.pipeline import Pipeline, SessionRouter
from tests.helpers import C, S, of_type
from tests.tshark import needs_tshark

ROOT = pathlib.Path(__file__).resolve().parent.parent
PCAP = str(ROOT / "captures" / "tls.pcap")
KEYS = str(ROOT / "captures" / "tls.keys")
MANIFEST = json.loads((ROOT / "captures" / "tls.json").read_text())


# --------------------------------------------------------------------------
# the splice, without tshark

CLIENT_HELLO = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03"
SERVER_HELLO = b"\x16\x03\x03\x00\x05\x02\x00\x00\x01\x03"


def app_record(n: int) -> bytes:
    return b"\x17\x03\x03" + (n - 5).to_bytes(2, "big") + b"\xee" * (n - 5)


def tshark_line(frame, src, dst, seq, length, data=b"", types_="", stream=0, ts=100.0):
    """One line of the fields decrypt.Decryption asks tshark for."""
    return "\t".join([str(frame), f"{ts + frame / 1000:.6f}", str(stream), src[0], "", str(src[1]), dst[0], "",
                      str(dst[1]), str(seq), str(length), f"{frame / 1000:.6f}", types_, "", data.hex()]) + "\n"


CLI_EP, SRV_EP = ("10.0.0.1", 40000), ("10.0.0.2", 587)
CBASE, SBASE = 1000, 7000


class FakeConnection:
    """What the router and the splice use of a reassembler connection: its flow and
    stream offsets (raw sequence numbers less each side's base)."""

    def __init__(self, flow):
        self.flow = flow

    def stream_offset(self, side, seq):
        return (seq - (CBASE, SBASE)[side]) & 0xFFFFFFFF


def fake_connection(start=100.0, server=SRV_EP):
    return FakeConnection(Flow(3, CLI_EP[0], CLI_EP[1], server[0], server[1], start, start))


def smtp_starttls_case(pipelined_hello: bool):
    """Wire chunks of an SMTP STARTTLS session and the lines tshark prints for it."""
    c_plain = [b"EHLO a\r\n", b"STARTTLS\r\n"]
    s_plain = [b"220 mx\r\n", b"250 STARTTLS\r\n", b"220 go\r\n"]
    c_app = [(b"EHLO b\r\n", 30), (b"MAIL FROM:<a@x>\r\n", 40), (b"QUIT\r\n", 25)]
    s_app = [(b"250-mx\r\n250 AUTH PLAIN\r\n", 50), (b"250 ok\r\n", 30), (b"221 bye\r\n", 30)]
    chunks = [(S, s_plain[0]), (C, c_plain[0]), (S, s_plain[1])]
    if pipelined_hello:
        chunks += [(C, c_plain[1] + CLIENT_HELLO), (S, s_plain[2])]
    else:
        chunks += [(C, c_plain[1]), (S, s_plain[2]), (C, CLIENT_HELLO)]
    chunks.append((S, SERVER_HELLO))
    lines = []
    coff = sum(map(len, c_plain)) + len(CLIENT_HELLO)
    soff = sum(map(len, s_plain)) + len(SERVER_HELLO)
    frame = 20
    for (cp, cn), (sp, sn) in zip(c_app, s_app):
        chunks.append((C, app_record(cn)))
        coff += cn
        lines.append(tshark_line(frame, CLI_EP, SRV_EP, CBASE + coff - cn, cn, cp))
        chunks.append((S, app_record(sn)))
        soff += sn
        lines.append(tshark_line(frame + 1, SRV_EP, CLI_EP, SBASE + soff - sn, sn, sp))
        frame += 2
    # a retransmission tshark decrypted again: its plaintext must not be fed twice
    lines.append(tshark_line(frame, SRV_EP, CLI_EP, SBASE + soff - 30, 30, b"221 bye\r\n"))
    return chunks, lines


def run_splice(chunks, lines, start=100.0, server=SRV_EP, client_port=CLI_EP[1]):
    """The chunks through a session router whose pipeline has the decryption of ``lines``."""
    dec = decrypt.Decryption()
    for line in lines:
        dec._line(line)
    conn = fake_connection(start, server)
    conn.flow.client_port = client_port
    pipe = Pipeline(Config())
    pipe.decryption = dec
    router = SessionRouter(pipe, conn)
    for i, (side, data) in enumerate(chunks):
        router.data(side, data, float(i))
    router.close(float(len(chunks)), "fin")
    dec.close()
    c = pipe.collector
    return router, router.session, c.commands + c.credentials + c.anomalies, dec


@pytest.mark.parametrize("pipelined", [False, True], ids=["waits", "pipelined-hello"])
def test_splice_continues_smtp_after_starttls(pipelined):
    chunks, lines = smtp_starttls_case(pipelined)
    router, sess, out, dec = run_splice(chunks, lines)
    assert isinstance(router.splice, decrypt.TlsSplice) and dec.duplicates == 1
    cmds = [(c.command, c.reply_code) for c in of_type(out, Command)]
    assert cmds == [("", "220"), ("EHLO", "250"), ("STARTTLS", "220"), ("EHLO", "250"), ("MAIL", "250"),
                    ("QUIT", "221")]
    assert (sess.tls, sess.decrypted, sess.helo, sess.extensions) == (True, True, "b", ["AUTH PLAIN"])
    assert sess.tls_bytes_client == len(CLIENT_HELLO) + 30 + 40 + 25
    assert sess.tls_bytes_server == len(SERVER_HELLO) + 50 + 30 + 30
    assert not [a for a in out if type(a).__name__ == "Anomaly"]


def test_splice_without_a_matching_stream_changes_nothing():
    chunks, lines = smtp_starttls_case(False)
    router, sess, out, _ = run_splice(chunks, lines, client_port=40001)  # another connection
    assert router.splice is None and not sess.decrypted
    plain, plain_sess, plain_out, _ = run_splice(chunks, [], client_port=40001)
    assert out == plain_out and sess == plain_sess


def test_splice_sniffs_the_protocol_of_tls_on_an_unknown_port():
    chunks = [(C, CLIENT_HELLO), (S, SERVER_HELLO), (S, app_record(40)), (C, app_record(30)),
              (S, app_record(30))]
    s1, c1, s2 = b"+OK POP3 ready\r\n", b"CAPA\r\n", b"+OK\r\nUSER\r\n.\r\n"
    srv = ("10.0.0.2", 4433)  # a port that names no protocol: TLS is found by its first bytes
    lines = [tshark_line(10, srv, CLI_EP, SBASE + 10 + 40 - 40, 40, s1),
             tshark_line(11, CLI_EP, srv, CBASE + 10, 30, c1),
             tshark_line(12, srv, CLI_EP, SBASE + 50, 30, s2)]
    router, sess, out, _ = run_splice(chunks, lines, server=srv)
    assert sess.protocol == "pop3" and router.conn.flow.protocol == "pop3s"
    assert [(c.command, c.reply_code) for c in of_type(out, Command)] == [("", "+OK"), ("CAPA", "+OK")]
    assert sess.extensions == ["USER"]


def test_stream_matching_prefers_the_closest_start():
    dec = decrypt.Decryption()
    dec._line(tshark_line(5, CLI_EP, SRV_EP, 10, 5, b"x", stream=0, ts=100.0))
    dec._line(tshark_line(5, CLI_EP, SRV_EP, 10, 5, b"y", stream=1, ts=200.0))
    assert dec.streams == 2
    late = fake_connection(start=200.0).flow
    early = fake_connection(start=100.0).flow
    assert dec.read(dec.match(late).offsets[0], 1) == b"y"
    assert dec.read(dec.match(early).offsets[0], 1) == b"x"
    assert dec.match(early) is None  # each stream is used once
    dec.close()


def test_keylog_checks(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    with pytest.raises(decrypt.DecryptError, match="not an NSS key log"):
        decrypt.check_keylog(str(bad))
    with pytest.raises(decrypt.DecryptError, match="cannot read"):
        decrypt.check_keylog(str(tmp_path / "missing.keys"))
    good = tmp_path / "k.keys"
    good.write_text("# comment\nCLIENT_RANDOM " + "00" * 32 + " " + "11" * 48 + "\n")
    decrypt.check_keylog(str(good))


def test_missing_tshark_is_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setattr(decrypt, "find_tshark", lambda: None)
    with pytest.raises(AnalysisError, match="apt-get install tshark"):
        maildissect.analyze(PCAP, keylog=KEYS)
    result = CliRunner().invoke(cli, ["messages", PCAP, "--keylog", KEYS])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "apt-get install tshark" in result.output


def test_keylog_and_scheduler_do_not_mix():
    with pytest.raises(AnalysisError, match="one machine"):
        maildissect.analyze(PCAP, keylog=KEYS, scheduler="inprocess")


# --------------------------------------------------------------------------
# end to end, with tshark

def _sha_rows(analysis):
    rows = collections.defaultdict(list)
    for m in analysis.records.messages:
        if m.sha256:
            rows[(m.client_port, m.sha256)].append(m)
    return rows


def check_against_manifest(doc, analysis):
    """Every manifest message and credential, found decrypted on its connection."""
    rows = _sha_rows(analysis)
    checked = 0
    for m in doc["messages"]:
        assert m["tls"], m
        where = f"manifest message {m['index']} ({m['protocol']} {m['direction']} {m['source']})"
        if m["sha256"]:
            hits = [r for r in rows.get((m["client_port"], m["sha256"]), [])
                    if r.protocol == m["protocol"] and r.direction == m["direction"]]
            assert hits, f"{where}: not found"
            hit = hits[0]
            assert (hit.size, hit.tls, hit.decrypted, hit.complete) == (m["size"], True, True, True), where
            assert hit.message_id == m.get("message_id"), where
            want = sorted((a["filename"], a["sha256"]) for a in m.get("attachments") or [])
            assert sorted((a.filename, a.sha256) for a in hit.attachments) == want, where
            if m["protocol"] == "smtp":
                assert (hit.mail_from, hit.rcpt_to) == (m["mail_from"], m["rcpt_to"]), where
        else:
            # a webmail page showing the message: an HTTP/2 request read as "read"
            assert any(h.mail_action == "read" and h.version == "HTTP/2" and m["source"].endswith(h.uri)
                       for h in analysis.records.http), where
        checked += 1
    found = collections.Counter((c.protocol, c.mechanism, c.user, c.secret, bool(c.success))
                                for c in analysis.records.credentials)
    wanted = collections.Counter((s["protocol"], c["mechanism"], c["user"], c["secret"], bool(c["success"]))
                                 for s in doc["sessions"] for c in s["credentials"])
    assert wanted and not wanted - found, dict(wanted - found)
    sessions = {(s.client_ip, s.client_port): s for s in analysis.records.sessions}
    for s in doc["sessions"]:
        got = sessions[(s["client_ip"], s["client_port"])]
        assert (got.tls, got.decrypted, got.sni) == (True, True, s["server_name"]), s["id"]
    return checked


@pytest.fixture(scope="module")
def bundled():
    if decrypt.find_tshark() is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    return maildissect.analyze(PCAP, keylog=KEYS)


@needs_tshark
def test_bundled_capture_recovers_every_message_and_credential(bundled):
    assert check_against_manifest(MANIFEST, bundled) == len(MANIFEST["messages"]) == 12
    assert bundled.stats["tls_decrypted"]["sessions"] == len(MANIFEST["sessions"])
    assert not len(bundled.anomalies)


@needs_tshark
def test_commands_and_http2_inside_tls(bundled):
    by_port = collections.defaultdict(list)
    sessions = {s.session_id: s for s in bundled.records.sessions}
    for c in bundled.records.commands:
        by_port[sessions[c.session_id].server_port].append(c.command)
    assert by_port[587][:4] == ["", "EHLO", "STARTTLS", "EHLO"] and "AUTH" in by_port[587]
    assert by_port[465][:2] == ["", "EHLO"] and "DATA" in by_port[465]
    assert by_port[143][:3] == ["", "CAPABILITY", "STARTTLS"] and "LOGIN" in by_port[143]
    assert "UID FETCH" in by_port[993] and "RETR" in by_port[995]
    https = [s for s in bundled.records.sessions if s.server_port == 443]
    assert [(s.alpn, s.tls_version) for s in https] == [("h2", "TLSv1.3")]
    http = bundled.records.http
    assert {h.version for h in http} == {"HTTP/2"}
    assert [h.mail_action for h in http] == [None, "login", "list", "read", "download", "logout"]
    messages = bundled.messages
    assert messages["tls"].all() and messages["decrypted"].all()


@needs_tshark
def test_sessions_whose_keys_are_missing_stay_encrypted(tmp_path):
    out = subprocess.run([shutil.which("tshark"), "-r", PCAP, "-Y", "tls.handshake.type == 1", "-T", "fields",
                          "-e", "tcp.srcport", "-e", "tls.handshake.random"], capture_output=True, text=True,
                         check=True).stdout
    randoms = dict(line.split("\t") for line in out.split("\n") if line)
    imaps = next(s for s in MANIFEST["sessions"] if s["server_port"] == 993)
    drop = randoms[str(imaps["client_port"])].lower()
    keys = tmp_path / "partial.keys"
    keys.write_text("".join(line for line in open(KEYS) if drop not in line.lower()))
    a = maildissect.analyze(PCAP, keylog=str(keys))
    s993 = next(s for s in a.records.sessions if s.server_port == 993)
    assert (s993.tls, s993.decrypted, s993.tls_version, s993.sni, s993.commands) == \
        (True, False, "TLSv1.3", "mail.bob.example", 0)
    assert not [m for m in a.records.messages if m.session_id == s993.session_id]
    assert len(a.records.messages) == len(MANIFEST["messages"]) - 2
    assert all(s.decrypted for s in a.records.sessions if s is not s993)


@needs_tshark
def test_cli_listing_commands_take_the_keylog(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["messages", PCAP, "--keylog", KEYS, "-f", "jsonl", "-q"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert len(rows) == 12 and all(r["tls"] and r["decrypted"] for r in rows)
    assert {r["sha256"] for r in rows if r["sha256"]} == {m["sha256"] for m in MANIFEST["messages"] if m["sha256"]}
    res = runner.invoke(cli, ["credentials", PCAP, "--keylog", KEYS, "-f", "csv", "-q"])
    assert res.exit_code == 0 and res.output.count("\n") == 1 + 6
    res = runner.invoke(cli, ["analyze", PCAP, "--keylog", KEYS, "-q"])
    assert res.exit_code == 0, res.output
    # standard input: kept in a file for tshark and the pipeline both
    with open(PCAP, "rb") as f:
        res = runner.invoke(cli, ["sessions", "-", "--keylog", KEYS, "-f", "jsonl", "-q"], input=f.read())
    assert res.exit_code == 0, res.output
    assert all(json.loads(line)["decrypted"] for line in res.output.splitlines())
    res = runner.invoke(cli, ["messages", str(ROOT / "README.md"), "--keylog", KEYS])
    assert res.exit_code == 1 and "error" in res.output


@needs_tshark
def test_several_files_are_merged_before_decryption(tmp_path):
    editcap = shutil.which("editcap")
    if editcap is None:
        pytest.skip("editcap is not installed (it comes with tshark)")
    subprocess.run([editcap, "-c", "150", PCAP, str(tmp_path / "part.pcap")], check=True, capture_output=True)
    parts = sorted(str(p) for p in tmp_path.glob("part*.pcap"))
    assert len(parts) >= 3  # connections are cut across files
    a = maildissect.analyze(parts, keylog=KEYS)
    assert check_against_manifest(MANIFEST, a) == 12


@needs_tshark
@pytest.mark.parametrize("impaired", [False, True], ids=["clean", "loss-reorder-duplicate"])
def test_generated_tls_scenario_round_trip(impaired):
    from tests.test_generate import generated
    opts = dict(loss=0.04, reorder=0.04, duplicate=0.04, mss=536, seed=11) if impaired else {}
    pcap, doc = generated("tls", **opts)
    if impaired:
        assert doc["impairments"]["lost_segments"] + doc["impairments"]["reordered_segments"] > 0
    a = maildissect.analyze(pcap, keylog=doc["options"]["keylog"])
    assert check_against_manifest(doc, a) == len(doc["messages"])
    # and without the key log: the version and SNI only
    plain = maildissect.analyze(pcap)
    assert not plain.records.messages and not plain.records.credentials
    assert all((s.tls, s.decrypted) == (True, False) and s.tls_version == "TLSv1.3" and s.sni
               for s in plain.records.sessions)
    assert os.path.exists(doc["options"]["keylog"])
    assert of_type(a.records.commands, Command) and of_type(a.records.credentials, Credential)


def test_addresses_spelled_like_the_flow_table():
    from maildissect.tcp import ip_text
    import socket
    for text in ("10.0.0.1", "2001:db8::1", "::ffff:1.2.3.4", "fe80::1:0:0:1"):
        family = socket.AF_INET6 if ":" in text else socket.AF_INET
        assert decrypt._ip(text.upper()) == ip_text(socket.inet_pton(family, text))


# --------------------------------------------------------------------------
# key logs inside the capture, and several key logs

def _split_keys(tmp_path):
    """The bundled key log cut in two files by TLS session (client random)."""
    by_random: dict[str, list[str]] = collections.defaultdict(list)
    for line in open(KEYS):
        if line.strip():
            by_random[line.split()[1]].append(line)
    randoms = sorted(by_random)
    halves = []
    for k, part in enumerate((randoms[::2], randoms[1::2])):
        path = tmp_path / f"half{k}.keys"
        path.write_text("".join(line for r in part for line in by_random[r]))
        halves.append(str(path))
    return halves


@needs_tshark
def test_several_key_logs_are_all_used(tmp_path):
    halves = _split_keys(tmp_path)
    a = maildissect.analyze(PCAP, keylog=halves)
    assert check_against_manifest(MANIFEST, a) == 12
    assert a.stats["tls_decrypted"]["keylogs"] == halves
    for half in halves:
        assert 0 < len(maildissect.analyze(PCAP, keylog=half).records.messages) < 12
    args = ["messages", PCAP, "--keylog", halves[0], "--keylog", halves[1], "-f", "jsonl", "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert len(res.output.splitlines()) == 12


@needs_tshark
def test_sessions_left_encrypted_are_said(tmp_path):
    half = _split_keys(tmp_path)[0]
    partial = maildissect.analyze(PCAP, keylog=half)
    left = [s for s in partial.records.sessions if s.tls and not s.decrypted]
    size = sum(s.tls_bytes_client + s.tls_bytes_server for s in left)
    assert left and size
    res = CliRunner().invoke(cli, ["sessions", PCAP, "--keylog", half, "-f", "jsonl"])
    assert res.exit_code == 0
    assert f"{len(left)} TLS sessions ({size:,} bytes) stayed encrypted" in res.stderr
    # all keys: nothing to say; no key log: the summary counts what went unread
    res = CliRunner().invoke(cli, ["sessions", PCAP, "--keylog", KEYS, "-f", "jsonl"])
    assert "stayed encrypted" not in res.stderr
    from maildissect.output.summary import overview
    rows = dict(overview(maildissect.analyze(PCAP)))
    total = sum(s.tls_bytes_client + s.tls_bytes_server for s in maildissect.analyze(PCAP).records.sessions)
    assert rows["TLS unread"] == f"8 sessions, {total:,} bytes: no key log was given (--keylog)"
    assert "TLS unread" not in dict(overview(maildissect.analyze(PCAP, keylog=KEYS)))


@needs_tshark
def test_key_logs_inside_a_pcapng_capture(tmp_path):
    """editcap --inject-secrets: the capture decrypts with no option, as in tshark."""
    editcap = shutil.which("editcap")
    if editcap is None:
        pytest.skip("editcap is not installed (it comes with tshark)")
    out = tmp_path / "with-keys.pcapng"
    subprocess.run([editcap, "--inject-secrets", f"tls,{KEYS}", PCAP, str(out)], check=True, capture_output=True)
    a = maildissect.analyze(str(out))
    assert check_against_manifest(MANIFEST, a) == 12
    assert a.stats["tls_decrypted"]["capture_secrets"] == os.path.getsize(KEYS)
    res = CliRunner().invoke(cli, ["messages", str(out), "-f", "jsonl", "-q"])
    assert res.exit_code == 0 and len(res.output.splitlines()) == 12


@needs_tshark
def test_key_logs_after_the_first_packets(tmp_path):
    """A Decryption Secrets Block behind more than the first batch of packets is found in
    the reading pass, which then runs again with decryption."""
    from maildissect.capture.files import CaptureReader
    from tests.pcaps import TLS_KEY_LOG, write_pcapng
    frames = list(CaptureReader(PCAP))
    filler = b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + b"\0" * 46  # an Ethernet frame of a local ethertype
    packets = [(0, frames[0][0] - 1 + k / 10000, filler) for k in range(1500)]
    packets += [(0, ts, data) for ts, _lt, data, _w in frames]
    out = tmp_path / "late.pcapng"
    write_pcapng(out, [(1, 6)], packets, secrets=[(1500, TLS_KEY_LOG, open(KEYS, "rb").read())])
    assert CaptureReader(str(out)).leading_secrets() == b""
    a = maildissect.analyze(str(out))
    assert check_against_manifest(MANIFEST, a) == 12
    # from standard input the capture cannot be read twice: said, not silently lost
    with open(out, "rb") as f:
        res = CliRunner().invoke(cli, ["sessions", "-", "-f", "jsonl"], input=f.read())
    assert res.exit_code == 0 and "capture_secrets_unused" in res.stderr
