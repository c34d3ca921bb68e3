"""The traffic generator: scenarios, manifest, pcap validity, tshark cross-checks, clean-up.

Every scenario runs once in synthetic mode (shared by the tests here and the
round-trip tests in test_generate_roundtrip.py through :func:`generated`).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading

import pytest

from maildissect.generate import SCENARIO_NAMES, generate, generate_command, output_paths
from maildissect.generate.live import live_permitted

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

SCENARIOS = [s for s in SCENARIO_NAMES if s != "all"]
_DIR = tempfile.mkdtemp(prefix="maildissect-generate-tests-")
atexit.register(shutil.rmtree, _DIR, True)
_cache: dict = {}
_lock = threading.Lock()

# Small runs: two messages, 2 KiB attachments.
BASE = dict(messages=2, attachment_size=2048, seed=7, capture="synthetic", retry_delay=0.3)


def generated(scenario: str, **opts) -> tuple[str, dict]:
    """(pcap path, manifest) of a synthetic run, made once per set of options."""
    args = dict(BASE, **opts)
    key = (scenario, tuple(sorted(args.items())))
    with _lock:
        if key not in _cache:
            name = f"{scenario}-{len(_cache)}"
            if scenario == "tls" and "keylog" not in args:
                args["keylog"] = os.path.join(_DIR, name + ".keys")
            pcap = os.path.join(_DIR, name + ".pcap")
            doc = generate(scenario, pcap, **args)
            _cache[key] = (pcap, doc)
        return _cache[key]


def tshark(*args) -> str:
    proc = subprocess.run([TSHARK, "-n", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# --------------------------------------------------------------------------
# manifest


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_writes_pcap_and_consistent_manifest(scenario):
    pcap, doc = generated(scenario)
    assert os.path.getsize(pcap) > 24
    _, manifest_path = output_paths(pcap)
    with open(manifest_path, encoding="utf-8") as f:
        assert json.load(f)["scenario"] == scenario
    assert doc["format"] == "maildissect-generate-manifest"
    assert doc["capture"]["mode"] == "synthetic"
    assert doc["server_errors"] == []
    assert {h["ip"] for h in doc["hosts"]} == {"127.0.0.10", "127.0.0.20", "127.0.0.30", "127.0.0.40"}
    ids = {s["id"] for s in doc["sessions"]}
    assert doc["sessions"] and doc["messages"]
    for s in doc["sessions"]:
        assert s["client_ip"].startswith("127.0.0.") and s["client_port"] > 0
        assert s["server_port"] in (25, 587, 465, 143, 993, 110, 995, 80, 443)
        if s["outcome"] == "ok":
            rec = s["recorded"]
            assert rec["close"] in ("fin", "rst")
            assert rec["bytes_client"] > 0 and rec["bytes_server"] > 0
        else:
            assert s["outcome"] == "refused" and s["recorded"]["close"] == "refused"
    for m in doc["messages"]:
        assert m["session"] in ids
        assert m["index"] in doc["sessions"][m["session"] - 1]["messages"]
        if m["sha256"] and m["complete"]:
            assert m["message_id"], m
    for r in doc["relay"]:
        assert r["status"] == "delivered"
        for a in r["attempts"]:
            assert a["session"] in ids
    for j in doc["journeys"]:
        assert all(h["message"] < len(doc["messages"]) for h in j["hops"])


def test_smtp_manifest_envelope_and_exact_bytes():
    _, doc = generated("smtp")
    sub = [m for m in doc["messages"] if m["protocol"] == "smtp" and m["server_port"] == 587]
    assert len(sub) == 2
    first = sub[0]
    assert first["mail_from"] == "alice@alice.example"
    assert first["rcpt_rejected"] == ["nobody@alice.example"]
    assert first["rcpt_to"] and first["queue_id"]
    # The hash is of the DATA payload as the server received it: a lone dot
    # line and dot-led lines are there un-stuffed, and it ends with CRLF.
    assert any(m["attachments"] for m in sub)
    creds = [c for s in doc["sessions"] if s["service"] == "submission" for c in s["credentials"]]
    assert {c["mechanism"] for c in creds} == {"PLAIN", "LOGIN"}
    assert all(c["success"] for c in creds)


def test_relay_refused_then_delivered_same_message_id():
    pcap, doc = generated("relay")
    entries = [r for r in doc["relay"] if r["server"] == "mail.alice.example"]
    assert entries
    sessions = {s["id"]: s for s in doc["sessions"]}
    for r in entries:
        outcomes = [a["outcome"] for a in r["attempts"]]
        assert outcomes[0] == "refused" and outcomes[-1] == "delivered"
        refused = sessions[r["attempts"][0]["session"]]
        assert refused["outcome"] == "refused" and refused["server_port"] == 25
        delivered = sessions[r["attempts"][-1]["session"]]
        sent = [doc["messages"][i] for i in delivered["messages"]]
        assert [m["message_id"] for m in sent] == [r["message_id"]]
    # greylisting: some attempt got a 4xx reply in between
    assert any(a["outcome"] == "deferred" and a["reply"].startswith("451")
               for r in entries for a in r["attempts"])


def test_imap_pop3_webmail_content():
    _, imap = generated("imap")
    kinds = {(m["direction"], m["kind"]) for m in imap["messages"]}
    assert {("retrieved", "header"), ("retrieved", "body"), ("retrieved", "partial"),
            ("appended", "body")} <= kinds
    partial = next(m for m in imap["messages"] if m["kind"] == "partial")
    assert partial["size"] == 200 and not partial["complete"]
    appended = next(m for m in imap["messages"] if m["direction"] == "appended")
    assert appended["attachments"] and appended["attachments"][0]["filename"].endswith(".png")
    _, pop = generated("pop3")
    creds = pop["sessions"][0]["credentials"]
    assert [c["success"] for c in creds] == [False, True]
    assert {m["kind"] for m in pop["messages"]} == {"top", "body"}
    _, web = generated("webmail")
    kinds = {(m["protocol"], m["direction"], m["kind"]) for m in web["messages"]}
    assert {("http", "downloaded", "rfc822"), ("http", "sent", "form"), ("http", "sent", "jmap"),
            ("http", "uploaded", "form"), ("http", "retrieved", "jmap"),
            ("smtp", "sent", "data")} <= kinds
    mechs = {c["mechanism"] for s in web["sessions"] for c in s["credentials"]}
    assert {"FORM", "BASIC", "PLAIN"} <= mechs
    actions = {r["mail_action"] for s in web["sessions"] for r in s.get("requests", [])}
    assert {"login", "list", "read", "download", "compose", "upload", "send",
            "jmap:Email/get", "jmap:EmailSubmission/set"} <= actions


def test_tls_sessions_and_keylog():
    _, doc = generated("tls")
    tls = {(s["server_port"], s["tls"]) for s in doc["sessions"]}
    assert {(587, "starttls"), (465, "implicit"), (143, "starttls"), (993, "implicit"),
            (995, "implicit"), (443, "implicit"), (25, "starttls")} <= tls
    keylog = doc["options"]["keylog"]
    with open(keylog) as f:
        lines = [line for line in f if line.strip()]
    assert any(line.startswith(("CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET")) for line in lines)


def test_journey_tells_the_whole_story():
    _, doc = generated("journey")
    first = doc["messages"][0]["message_id"]
    journey = next(j for j in doc["journeys"] if j["message_id"] == first)
    hops = [(h["protocol"], h["direction"], h["server_port"]) for h in journey["hops"]]
    assert hops[:3] == [("smtp", "sent", 587), ("smtp", "sent", 25), ("imap", "retrieved", 143)]
    assert ("http", "downloaded", 80) in hops
    reply = next(j for j in doc["journeys"] if j["message_id"].startswith("<webmail."))
    kinds = [(h["protocol"], h["direction"]) for h in reply["hops"]]
    assert kinds == [("http", "sent"), ("smtp", "sent"), ("smtp", "sent"), ("pop3", "retrieved")]


def test_same_seed_same_contents():
    def ua_messages(doc):
        return [m["sha256"] for m in doc["messages"] if m["client_ip"] == "127.0.0.10"]
    _, a = generated("smtp")
    _, b = generated("smtp", users=1)  # the same options spelled out: a second run
    _, c = generated("smtp", seed=8)
    assert a is not b
    assert ua_messages(a) == ua_messages(b) and len(ua_messages(a)) == 2
    assert [u["password"] for u in a["users"]] == [u["password"] for u in b["users"]]
    assert ua_messages(a) != ua_messages(c)


def test_impairments_recorded_and_counted():
    _, doc = generated("journey", loss=0.05, reorder=0.05, duplicate=0.05, mss=536)
    imp = doc["impairments"]
    assert imp["mss"] == 536 and imp["loss"] == 0.05
    assert imp["lost_segments"] > 0 and imp["reordered_segments"] > 0 and imp["duplicated_segments"] > 0


def test_invalid_options():
    with pytest.raises(ValueError):
        generate("nope", os.path.join(_DIR, "x.pcap"))
    with pytest.raises(ValueError):
        generate("smtp", os.path.join(_DIR, "x.pcap"), capture="synthetic", loss=1.5)
    with pytest.raises(ValueError):
        generate("smtp", os.path.join(_DIR, "x.pcap"), capture="synthetic", users=9)


# --------------------------------------------------------------------------
# the pcap itself


def _frames(pcap):
    with open(pcap, "rb") as f:
        data = f.read()
    magic, _, _, _, _, _, linktype = struct.unpack("<IHHIIII", data[:24])
    assert magic == 0xA1B2C3D4 and linktype == 1
    pos, out = 24, []
    while pos < len(data):
        sec, usec, caplen, wirelen = struct.unpack("<IIII", data[pos:pos + 16])
        out.append((sec + usec / 1e6, data[pos + 16:pos + 16 + caplen]))
        pos += 16 + caplen
    return out


def test_synthetic_frames_have_valid_checksums_and_order():
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    pcap, _ = generated("journey", loss=0.05, reorder=0.05, duplicate=0.05, mss=536)
    frames = _frames(pcap)
    times = [t for t, _ in frames]
    assert times == sorted(times)
    for _, raw in frames[:400]:
        pkt = Ether(raw)
        ip_sum, tcp_sum = pkt[IP].chksum, pkt[TCP].chksum
        del pkt[IP].chksum, pkt[TCP].chksum
        again = Ether(bytes(pkt))
        assert (again[IP].chksum, again[TCP].chksum) == (ip_sum, tcp_sum)


# --------------------------------------------------------------------------
# tshark cross-checks

_PROTOCOL_FILTERS = {"smtp": "smtp", "imap": "imap", "pop3": "pop", "http": "http"}
_ERROR = 0x00800000  # Wireshark's expert severity "error" (malformed packets are errors)


@needs_tshark
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_tshark_reads_pcap_without_malformed_packets(scenario):
    pcap, doc = generated(scenario)
    extra = []
    if scenario == "tls":
        extra = ["-o", f"tls.keylog_file:{doc['options']['keylog']}"]
    out = tshark("-r", pcap, *extra, "-T", "fields", "-E", "separator=|",
                 "-e", "frame.protocols", "-e", "_ws.expert.severity")
    seen = set()
    for line in out.splitlines():
        protos, _, severities = line.partition("|")
        assert "_ws.malformed" not in protos, line
        assert all(int(v) < _ERROR for v in severities.split(",") if v), line
        seen.update(protos.split(":"))
    wanted = {s["protocol"] for s in doc["sessions"] if s["outcome"] == "ok"}
    for proto in wanted:
        # with the key log, tshark decrypts the tls scenario and sees inside
        assert _PROTOCOL_FILTERS[proto] in seen or (proto == "http" and "http2" in seen), (proto, sorted(seen))
    if scenario == "tls":
        assert "tls" in seen


def _stream_index(pcap):
    """{(client ip, port): tcp.stream} -- tshark numbers connections in order of their first packet."""
    index = {}
    for _, raw in _frames(pcap):
        if raw[12:14] != b"\x08\x00" or raw[23] != 6:
            continue
        ihl = (raw[14] & 0x0F) * 4
        tcp = raw[14 + ihl:]
        if tcp[13] & 0x12 == 0x02:  # SYN without ACK: a new connection
            ip = socket.inet_ntoa(raw[26:30])
            port = struct.unpack("!H", tcp[:2])[0]
            index[(ip, port)] = len(index)
    return index


def _follow_all(pcap, sessions):
    """{(client ip, port): (client bytes, server bytes)} by one `tshark -z follow,tcp,raw,N ...`."""
    streams = _stream_index(pcap)
    args = []
    for s in sessions:
        args += ["-z", f"follow,tcp,raw,{streams[(s['client_ip'], s['client_port'])]}"]
    text = tshark("-r", pcap, "-q", *args)
    result = {}
    for block in text.split("Follow: tcp,raw")[1:]:
        lines = block.splitlines()
        node0 = next(line for line in lines if line.startswith("Node 0:"))
        ip, port = node0.split()[-1].rsplit(":", 1)
        start = next(i for i, line in enumerate(lines) if line.startswith("Node 1:")) + 1
        client, server = [], []
        for line in lines[start:]:
            if line.startswith("="):
                break
            (server if line.startswith("\t") else client).append(bytes.fromhex(line.strip()))
        result[(ip, int(port))] = (b"".join(client), b"".join(server))
    return result


@needs_tshark
@pytest.mark.parametrize("scenario,impaired", [(s, False) for s in SCENARIOS] + [("journey", True)])
def test_tshark_follow_equals_what_the_relay_saw(scenario, impaired):
    opts = dict(loss=0.05, reorder=0.05, duplicate=0.05, mss=536) if impaired else {}
    pcap, doc = generated(scenario, **opts)
    sessions = [s for s in doc["sessions"] if s["outcome"] == "ok"]
    followed = _follow_all(pcap, sessions)
    assert len(followed) == len(sessions)
    for s in sessions:
        client, server = followed[(s["client_ip"], s["client_port"])]
        rec = s["recorded"]
        assert len(client) == rec["bytes_client"] and len(server) == rec["bytes_server"], s["id"]
        assert hashlib.sha256(client).hexdigest() == rec["client_sha256"]
        assert hashlib.sha256(server).hexdigest() == rec["server_sha256"]


@needs_tshark
def test_refused_connection_is_syn_then_rst():
    pcap, doc = generated("relay")
    refused = [s for s in doc["sessions"] if s["outcome"] == "refused"]
    assert refused
    out = tshark("-r", pcap, "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.flags.str",
                 "-Y", "tcp.port==25 && (tcp.flags.syn==1 || tcp.flags.reset==1)")
    rows = [line.split("\t") for line in out.splitlines()]
    for s in refused:
        port = str(s["client_port"])
        flags = [r[2] for r in rows if port in (r[0], r[1])]
        assert len(flags) == 2 and "S" in flags[0] and "R" in flags[1], flags


# --------------------------------------------------------------------------
# CLI, live mode, clean-up


def test_click_command(tmp_path):
    from click.testing import CliRunner
    runner = CliRunner()
    out = tmp_path / "cli.pcap"
    result = runner.invoke(generate_command, ["pop3", "-o", str(out), "--capture", "synthetic",
                                              "-n", "1", "--attachment-size", "1k", "-q"])
    assert result.exit_code == 0, result.output
    assert out.exists() and (tmp_path / "cli.json").exists()
    doc = json.loads((tmp_path / "cli.json").read_text())
    assert doc["options"]["attachment_size"] == 1024
    assert "SCENARIO" in runner.invoke(generate_command, ["--help"]).output
    bad = runner.invoke(generate_command, ["smtp", "-o", str(out), "--capture", "live", "--loss", "0.1"])
    assert bad.exit_code != 0


@pytest.mark.root
@pytest.mark.skipif(not live_permitted()[0], reason="live capture needs root or CAP_NET_RAW")
def test_live_capture(tmp_path):
    pcap = str(tmp_path / "live.pcap")
    doc = generate("relay", pcap, messages=1, attachment_size=1024, capture="live")
    assert doc["capture"]["mode"] == "live"
    assert doc["capture"].get("kernel_drops", 0) == 0
    frames = _frames(pcap)
    assert frames
    # One copy of each packet (loopback shows two to a packet socket).
    keys = [raw[14:] for _, raw in frames]
    assert len(set(keys)) == len(keys)
    syns = sum(1 for _, raw in frames if raw[23] == 6 and raw[14 + 20 + 13] & 0x12 == 0x02)
    assert syns == len(doc["sessions"])
    if TSHARK:
        protos = tshark("-r", pcap, "-T", "fields", "-e", "frame.protocols")
        assert "smtp" in protos
    r = doc["relay"][0]
    assert [a["outcome"] for a in r["attempts"]][0] == "refused"


def _lab_threads():
    return [t for t in threading.enumerate()
            if t.name.startswith(("maildissect-lab-loop", "queue-", "maildissect-scenario"))]


def _assert_released(ports):
    for ip, port in ports:
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex((ip, port)) != 0, f"{ip}:{port} still accepts connections"
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))  # free again


def test_failing_scenario_shuts_everything_down(monkeypatch, tmp_path):
    from maildissect.generate import scenarios
    seen = {}

    def broken(lab, n):
        seen["ports"] = [(s.ip, s.public_port) for s in lab.services.values()]
        scenarios.submit(lab, lab.alice, [lab.content.compose(lab.alice, [lab.bob])])
        raise RuntimeError("scenario failed on purpose")

    before = len(_lab_threads())
    monkeypatch.setitem(scenarios.SCENARIOS, "smtp", broken)
    with pytest.raises(RuntimeError, match="on purpose"):
        generate("smtp", str(tmp_path / "broken.pcap"), capture="synthetic")
    assert seen["ports"]
    _assert_released(seen["ports"])
    assert len(_lab_threads()) == before


def test_scenario_timeout_is_enforced(monkeypatch, tmp_path):
    from maildissect.generate import scenarios
    seen = {}

    def stuck(lab, n):
        seen["ports"] = [(s.ip, s.public_port) for s in lab.services.values()]
        imap = scenarios.LabIMAP4(lab, "127.0.0.40", "mail.bob.example", 143, "waits forever",
                                  timeout=60)
        imap.readline()  # the server says nothing more: blocks until the lab closes

    monkeypatch.setitem(scenarios.SCENARIOS, "imap", stuck)
    with pytest.raises(TimeoutError):
        generate("imap", str(tmp_path / "stuck.pcap"), capture="synthetic", timeout=2)
    _assert_released(seen["ports"])


def test_every_server_kind_goes_down_and_up_in_live_mode():
    """A live-mode lab (real servers on their ports, no recording relay) can take any
    server down, so the kernel refuses connections, and bring it back."""
    import socket
    from maildissect.generate.lab import Lab
    seen = set()
    with Lab(synthetic=False, tls=True) as lab:
        for (ip, name), svc in lab.services.items():
            if svc.kind in seen:
                continue
            seen.add(svc.kind)
            port = svc.public_port
            svc.down()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((ip, port), timeout=2).close()
            svc.up()
            socket.create_connection((ip, port), timeout=2).close()
    assert seen == {"asyncio", "twisted", "uvicorn", "hypercorn"}
