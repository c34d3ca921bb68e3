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
        # (libpcap hands a partly filled ring block over after at most a second)
        time.sleep(3.0)
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


def _smtp_exchange(port):
    """One small SMTP-like exchange over loopback (a server thread and a client): a few dozen packets."""
    import socket
    import threading
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        conn.sendall(b"220 test ESMTP\r\n")
        f = conn.makefile("rb")
        for line in f:
            conn.sendall(b"221 bye\r\n" if line.startswith(b"QUIT") else b"250 ok\r\n")
            if line.startswith(b"QUIT"):
                break
        conn.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    c = socket.create_connection(("127.0.0.1", port))
    f = c.makefile("rb")
    f.readline()
    for cmd in (b"EHLO a.example", b"NOOP", b"NOOP", b"NOOP", b"NOOP", b"QUIT"):
        c.sendall(cmd + b"\r\n")
        f.readline()
    c.close()
    t.join(10)
    srv.close()


@needs_capture
@pytest.mark.parametrize("how", ["sigterm", "duration", "count"])
def test_live_stops_with_a_summary(how):
    """SIGTERM, --duration and --count each stop the capture, and the summary follows."""
    args = ["-f", "tcp port 2526", "--port", "2526=smtp", "--format", "jsonl"]
    if how == "duration":
        args += ["--duration", "2"]
    if how == "count":
        args += ["--count", "6"]
    proc = start_live(*args)
    if how != "duration":
        _smtp_exchange(2526)
    if how == "sigterm":
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)  # (--duration and --count end it by themselves)
    assert proc.returncode == 0, err
    assert "packets analysed" in err and "kernel dropped 0" in err and "spool dropped 0" in err, err
    if how == "count":
        assert "6 packets analysed" in err and "capture: 6 packets captured" in err, err
    if how == "sigterm":
        proc.out_file.seek(0)
        rows = [json.loads(line) for line in proc.out_file.read().splitlines() if line.strip()]
        assert any(r["record"] == "session" and r["protocol"] == "smtp" for r in rows), rows


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
    summary = live_mod.run_live("replay", bpf=None, backend="scapy", on_record=lambda t, r: out.append((t, r)),
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
        # (libpcap hands a partly filled ring block over after at most a second)
        time.sleep(3.0)
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


# -- the spool backend, fed from a capture file (no packet socket needed) --------------------------
class FileSpoolCapture:
    """A capturer for the spool backend that writes a capture file's frames into the spool
    as tcpdump -C would (live.pcap, live.pcap1...: a new file every ``rotate`` bytes), all at
    once. The analysis may start only once the capture has stopped (``ready``), so at the
    stop everything captured is backlog. A copy of every file is kept in ``keep``."""

    def __init__(self, path, directory, limits, keep, rotate=20_000):
        from maildissect.capture.files import CaptureReader
        from maildissect.capture.live import PcapWriter
        writer = PcapWriter(os.path.join(directory, "live.pcap"), 1, rotate)
        self.captured = 0
        for ts, _linktype, data, wirelen in CaptureReader(path):
            writer.write(ts, data, wirelen)
            self.captured += 1
        writer.close()
        self.files = [os.path.basename(f) for f in writer.files]
        for f in writer.files:
            shutil.copy(f, keep)
        self.stopped = False

    def ready(self):
        return self.stopped

    def running(self):
        return not self.stopped

    def stop(self):
        self.stopped = True

    def stats(self):
        return {"captured": self.captured, "kernel_drops": 0}

    def request_stats(self):
        pass

    def failure(self):
        return None


def spool_live(tmp_path, pcap, jobs=2, tables=("sessions", "messages", "anomalies"), **kw):
    from maildissect import live as live_mod
    keep = tmp_path / "captured"
    keep.mkdir()
    made = []

    def capture(directory, limits):
        made.append(FileSpoolCapture(pcap, directory, limits, str(keep)))
        return made[0]
    out = []
    summary = live_mod.run_live("lo", bpf=None, on_record=lambda t, r: out.append((t, r)), tables=tables,
                                jobs=jobs, capture=capture, should_stop=lambda: True, **kw)
    return out, summary, made[0], keep


@pytest.mark.parametrize("jobs", [1, 2])
def test_stopping_with_a_backlog_prints_every_captured_message(tmp_path, jobs):
    """The capture stops with all it captured still unread: the analysis reads it to the end
    before the summary, and prints what analysing the same capture file prints."""
    pcap = os.path.join(CAPTURES, "journey.pcap")
    out, summary, cap, _keep = spool_live(tmp_path, pcap, jobs=jobs)
    offline = maildissect.analyze(pcap).records
    assert len(cap.files) > 3  # (the journey spans several spool files)
    assert summary["captured"] == cap.captured == summary["frames"]
    assert summary["backlog_packets_at_stop"] == cap.captured  # nothing was analysed when the capture stopped
    assert summary["backlog_bytes_at_stop"] > 0
    assert summary["spool_dropped_packets"] == 0 and summary["kernel_drops"] == 0
    assert summary["analysis_failed"] == [] and not summary["abandoned"]
    msgs = [r for t, r in out if t == "messages"]
    assert len(offline.messages) > 5
    assert sorted((m.sha256 or "", m.protocol, m.direction) for m in msgs) == \
        sorted((m.sha256 or "", m.protocol, m.direction) for m in offline.messages)
    sessions = [r for t, r in out if t == "sessions"]
    assert sorted((s.protocol, s.client_port, s.messages) for s in sessions) == \
        sorted((s.protocol, s.client_port, s.messages) for s in offline.sessions)
    # session ids stay unique across the analysing processes, and messages name their session
    assert len({s.session_id for s in sessions}) == len(sessions)
    by_id = {s.session_id: s for s in sessions}
    assert all(by_id[m.session_id].client_port == m.client_port for m in msgs)
    assert summary["messages"] == len(msgs) and summary["sessions"] == len(sessions)


def test_a_full_spool_drops_the_oldest_unread_files_and_counts_them(tmp_path):
    """Past max_live_spool the oldest files no process has started are dropped: every dropped
    packet is counted, reported as an anomaly and in the summary, and the rest is analysed."""
    from maildissect.capture.spool import count_packets
    from maildissect.config import Config, Limits
    from maildissect.output.livelines import summary_line
    pcap = os.path.join(CAPTURES, "journey.pcap")
    limit = 60_000
    out, summary, cap, keep = spool_live(tmp_path, pcap, config=Config(limits=Limits().updated(max_live_spool=limit)))
    sizes = {name: os.path.getsize(keep / name) for name in cap.files}
    assert sum(sizes.values()) > limit
    reports = [r for t, r in out if t == "anomalies" and r.name == "live_spool_full"]
    dropped = [r.detail.split(":")[0] for r in reports]
    # the oldest files went, until what is left fits the limit
    assert dropped == cap.files[:len(dropped)] and dropped
    assert sum(sizes[n] for n in cap.files[len(dropped):]) <= limit
    assert sum(sizes[n] for n in cap.files[len(dropped) - 1:]) > limit
    lost = sum(count_packets(str(keep / n))[0] for n in dropped)
    assert summary["spool_dropped_packets"] == lost > 0
    assert summary["spool_dropped_bytes"] == sum(sizes[n] for n in dropped)
    assert summary["spool_dropped_files"] == len(dropped)
    assert summary["frames"] + lost == summary["captured"] == cap.captured
    assert all(f"{count_packets(str(keep / n))[0]} packets" in r.detail for n, r in zip(dropped, reports))
    # what is left is analysed as the files left would be
    rest = maildissect.analyze([str(keep / n) for n in cap.files[len(dropped):]]).records
    msgs = [r for t, r in out if t == "messages"]
    assert sorted(m.sha256 or "" for m in msgs) == sorted(m.sha256 or "" for m in rest.messages)
    assert len(msgs) < len(maildissect.analyze(pcap).records.messages)
    lines = summary_line(summary)
    assert f"spool dropped {lost} " in lines[1]


@needs_tshark
def test_spool_keylog_prints_tls_sessions_decrypted(tmp_path):
    """--keylog through the spool: each analysing process decrypts its own TLS sessions."""
    pcap, keys = os.path.join(CAPTURES, "tls.pcap"), os.path.join(CAPTURES, "tls.keys")
    out, summary, _cap, _keep = spool_live(tmp_path, pcap, keylog=keys,
                                           tables=("sessions", "messages", "credentials", "anomalies"))
    offline = maildissect.analyze(pcap, keylog=keys).records
    msgs = [r for t, r in out if t == "messages"]
    assert sorted(m.sha256 or "" for m in msgs) == sorted(m.sha256 or "" for m in offline.messages)
    assert len(msgs) == 12 and all(m.decrypted for m in msgs)
    assert summary["tls_decrypted"] == sum(s.decrypted for s in offline.sessions) > 0


def test_spool_masks_secrets_before_they_leave_the_analysing_processes(tmp_path):
    """Under --redact the analysing processes mask each record before sending it on."""
    from maildissect.config import Config
    pcap = os.path.join(CAPTURES, "journey.pcap")
    secrets = {c.secret for c in maildissect.analyze(pcap).records.credentials if c.secret and len(c.secret) > 3}
    assert secrets
    out, _summary, _cap, _keep = spool_live(tmp_path, pcap, config=Config(redact=True),
                                            tables=("sessions", "commands", "messages", "credentials", "anomalies"))
    assert any(t == "credentials" for t, _ in out)
    text = repr(out)
    assert not [s for s in secrets if s in text]
