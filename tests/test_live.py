"""`maildissect live` on the loopback interface while the generator runs real traffic.

Needs permission to open a packet socket (root or CAP_NET_RAW); skipped with the
reason otherwise. CI runs as root.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import maildissect
from maildissect.generate import generate
from maildissect.generate.live import live_permitted

PERMITTED, WHY = live_permitted()
needs_capture = pytest.mark.skipif(not PERMITTED, reason=f"live capture not permitted here: {WHY}")


def start_live(*args):
    # stdout goes to a file: a pipe nobody reads until the end fills up (64 KiB) and blocks the
    # capture's printing, and with it the capture
    out = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "maildissect.cli", "live", "-i", "lo", *args],
                            stdout=out, stderr=subprocess.PIPE, text=True)
    proc.out_file = out
    deadline = time.time() + 20
    line = ""
    while time.time() < deadline and "capturing on" not in line:
        line = proc.stderr.readline()
        if proc.poll() is not None:
            break
    assert "capturing on" in line, proc.stderr.read()
    time.sleep(0.5)
    return proc


@needs_capture
def test_live_prints_every_message_of_a_generated_journey(tmp_path):
    pcap = tmp_path / "live.pcap"
    proc = start_live("--format", "jsonl", "-w", str(pcap))
    try:
        doc = generate("journey", str(tmp_path / "journey.pcap"), capture="live", seed=3)
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: finish, print the summary
        _, err = proc.communicate(timeout=30)
    proc.out_file.seek(0)
    out = proc.out_file.read()
    assert proc.returncode == 0, err
    assert "packets" in err and "kernel dropped" in err
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    messages = [r for r in rows if r["record"] == "message"]
    sessions = [r for r in rows if r["record"] == "session"]
    assert sessions
    live_shas = {r["sha256"] for r in messages}
    wanted = [m for m in doc["messages"] if m["sha256"] and not m["tls"] and m["direction"] != "uploaded"]
    assert wanted
    missing = [m["message_id"] for m in wanted if m["sha256"] not in live_shas]
    assert not missing, f"not printed live: {missing}"
    # what live wrote with -w analyses to the same messages
    again = maildissect.analyze(str(pcap))
    assert {m["sha256"] for m in wanted} <= set(again.messages["sha256"].dropna())


@needs_capture
def test_live_table_format_and_count_stop():
    proc = start_live("--count", "1", "-f", "tcp port 2", "--format", "table")
    # nothing matches the filter: --count is not reached, so stop it the user's way
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "0 packets" in err


def test_unknown_interface_lists_the_available_ones():
    res = subprocess.run([sys.executable, "-m", "maildissect.cli", "live", "-i", "nosuch0", "--duration", "1"],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "no interface 'nosuch0'" in res.stderr and "lo" in res.stderr
    assert "Traceback" not in res.stderr


def test_without_permission_says_how_to_get_it(monkeypatch):
    from maildissect.capture import live

    class Denied:
        def __init__(self, *a, **k):
            raise PermissionError(1, "Operation not permitted")
    import scapy.arch.linux
    monkeypatch.setattr(scapy.arch.linux, "L2ListenSocket", Denied)
    with pytest.raises(live.LiveError) as e:
        live.open_live("lo", None, "scapy")
    assert "root" in str(e.value) and "setcap cap_net_raw" in str(e.value)


# -- TLS decryption while capturing (--keylog) ---------------------------------------------------
CAPTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "captures")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark to decrypt TLS")


class ReplaySource:
    """A live source that plays a capture file's frames (no packet socket needed)."""

    name = "replay"
    linktype = 1

    def __init__(self, path):
        from maildissect.capture.files import CaptureReader
        self.frames_ = list(CaptureReader(path))

    def frames(self):
        for ts, linktype, data, wirelen in self.frames_:
            yield ts, linktype, data, wirelen
        yield 0.0, None, b"", 0  # a tick, as the real sources give while idle

    def stats(self):
        return {}

    def close(self):
        pass


def replay_live(monkeypatch, path, **kw):
    from maildissect import live as live_mod
    monkeypatch.setattr(live_mod, "open_live", lambda iface, bpf, backend: ReplaySource(path))
    out = []
    summary = live_mod.run_live("replay", bpf=None, on_record=lambda t, r: out.append((t, r)),
                                tables=("sessions", "messages", "credentials", "anomalies"), **kw)
    return out, summary


@needs_tshark
def test_live_keylog_prints_tls_sessions_decrypted(monkeypatch):
    """Every message of the generator's tls scenario (STARTTLS SMTP/IMAP, implicit TLS on
    465/993, HTTPS webmail) is printed, as analyze --keylog finds it, and no record of a
    plaintext part before STARTTLS is printed twice."""
    pcap, keys = os.path.join(CAPTURES, "tls.pcap"), os.path.join(CAPTURES, "tls.keys")
    out, summary = replay_live(monkeypatch, pcap, keylog=keys)
    offline = maildissect.analyze(pcap, keylog=keys).records
    msgs = [r for t, r in out if t == "messages"]
    assert sorted(m.sha256 or "" for m in msgs) == sorted(m.sha256 or "" for m in offline.messages)
    assert len(msgs) == 12 and all(m.decrypted for m in msgs)
    sessions = [r for t, r in out if t == "sessions"]
    assert sorted((s.session_id, s.decrypted, s.auth_user or "") for s in sessions) == \
        sorted((s.session_id, s.decrypted, s.auth_user or "") for s in offline.sessions)
    creds = [r for t, r in out if t == "credentials"]
    assert sorted((c.session_id, c.user) for c in creds) == sorted((c.session_id, c.user) for c in offline.credentials)
    assert summary["tls_decrypted"] == sum(s.decrypted for s in offline.sessions) > 0


@needs_tshark
def test_live_keylog_limit_leaves_sessions_encrypted(monkeypatch):
    from maildissect.config import Config, Limits
    pcap, keys = os.path.join(CAPTURES, "tls.pcap"), os.path.join(CAPTURES, "tls.keys")
    config = Config(limits=Limits().updated(max_live_tls_bytes=2000))
    out, summary = replay_live(monkeypatch, pcap, keylog=keys, config=config)
    sessions = [r for t, r in out if t == "sessions"]
    assert sessions and not any(s.decrypted for s in sessions)
    assert any(t == "anomalies" and r.name == "live_tls_not_kept" for t, r in out)
    assert summary["tls_decrypted"] == 0


@needs_capture
@needs_tshark
def test_live_keylog_during_generated_tls_traffic(tmp_path):
    """The acceptance run in small: `live --keylog` while the generator's tls scenario
    writes its key log; every manifest message is printed, the TLS ones decrypted."""
    keys = tmp_path / "tls.keys"
    proc = start_live("--format", "jsonl", "--keylog", str(keys))
    try:
        doc = generate("tls", str(tmp_path / "tls.pcap"), capture="live", seed=5, keylog=str(keys))
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    proc.out_file.seek(0)
    out = proc.out_file.read()
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    printed = {r["sha256"] for r in rows if r["record"] == "message"}
    wanted = [m for m in doc["messages"] if m["sha256"] and m["direction"] != "uploaded"]
    assert any(m["tls"] for m in wanted)
    missing = [m["message_id"] for m in wanted if m["sha256"] not in printed]
    assert not missing, f"not printed live: {missing}"
    assert "TLS sessions decrypted" in err
