"""`maildissect live` on the loopback interface while the generator runs real traffic.

Needs permission to open a packet socket (root or CAP_NET_RAW); skipped with the
reason otherwise. CI runs as root.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import maildissect
from maildissect.generate import generate
from maildissect.generate.live import live_permitted

PERMITTED, WHY = live_permitted()
needs_capture = pytest.mark.skipif(not PERMITTED, reason=f"live capture not permitted here: {WHY}")


def start_live(*args):
    proc = subprocess.Popen([sys.executable, "-m", "maildissect.cli", "live", "-i", "lo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        out, err = proc.communicate(timeout=30)
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
