"""follow --keylog: a connection's conversation decrypted, as Wireshark's Follow TLS Stream.

tshark's ``-z follow,tls,raw,N`` is the reference (skipped without tshark).
"""

from __future__ import annotations

import pathlib
import subprocess

import pytest
from click.testing import CliRunner

import maildissect
from maildissect.cli import cli
from maildissect.follow import follow
from maildissect.model import CLIENT, SERVER

from .tshark import TSHARK, needs_tshark

ROOT = pathlib.Path(__file__).resolve().parent.parent
TLS = ROOT / "captures" / "tls.pcap"
KEYS = ROOT / "captures" / "tls.keys"


def tshark_follow_tls(stream: int) -> tuple[str, dict[str, bytes]]:
    """(first node's "ip:port", {"first": bytes, "second": bytes}) of tshark's Follow TLS Stream."""
    out = subprocess.run([TSHARK, "-r", str(TLS), "-q", "-o", f"tls.keylog_file:{KEYS}", "-z",
                          f"follow,tls,raw,{stream}"], capture_output=True, text=True, check=True).stdout
    node0, data = None, {"first": bytearray(), "second": bytearray()}
    body = False
    for line in out.splitlines():
        if line.startswith("Node 0: "):
            node0 = line.split(": ", 1)[1]
            continue
        if line.startswith("Node 1: "):
            body = True
            continue
        if not body or not line.strip() or line.startswith("="):
            continue
        key = "second" if line.startswith("\t") else "first"
        data[key] += bytes.fromhex(line.strip())
    return node0, {k: bytes(v) for k, v in data.items()}


def ours(stream: int, decryption) -> tuple[object, dict[int, bytes]]:
    got = {CLIENT: bytearray(), SERVER: bytearray()}

    def event(kind, side, value, ts):
        if kind == "data":
            got[side] += value
    flow = follow([str(TLS)], stream, event, decryption=decryption)
    return flow, {k: bytes(v) for k, v in got.items()}


@needs_tshark
def test_follow_tls_gives_tsharks_plaintext():
    from maildissect.decrypt import Decryption
    flows = maildissect.read_flows(str(TLS))
    with Decryption.run([str(TLS)], str(KEYS)) as decryption:
        for f in flows:
            flow, mine = ours(f.flow_id, decryption)
            assert flow.protocol == "tls"  # decrypted
            node0, theirs = tshark_follow_tls(f.flow_id)
            first = CLIENT if node0 == f"{f.client_ip}:{f.client_port}" else SERVER
            want = {first: theirs["first"], 1 - first: theirs["second"]}
            for side in (CLIENT, SERVER):
                assert want[side], (f.flow_id, side)
                if f.server_port in (465, 993, 995, 443):
                    assert mine[side] == want[side], (f.flow_id, side)  # implicit TLS: all of it
                else:
                    # STARTTLS: the plaintext before it as sent, then tshark's decrypted bytes
                    assert mine[side].endswith(want[side]) and len(mine[side]) > len(want[side])
                    assert b"STARTTLS" in mine[side][:len(mine[side]) - len(want[side])].upper() or side == SERVER


@needs_tshark
def test_cli_follow_keylog_shows_the_mail_inside_tls():
    res = CliRunner().invoke(cli, ["follow", str(TLS), "--flow", "2", "--keylog", str(KEYS)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    text = res.output
    assert "Follow: tls,ascii" in text
    assert "MAIL FROM:" in text.upper() and "\nDATA\n" in text.upper() and "\t220 " in text  # server lines indented
    plain = CliRunner().invoke(cli, ["follow", str(TLS), "--flow", "2"], catch_exceptions=False).output
    assert "Follow: tcp,ascii" in plain and "MAIL FROM" not in plain.upper()
    raw = CliRunner().invoke(cli, ["follow", str(TLS), "--flow", "2", "--keylog", str(KEYS), "-f", "raw",
                                   "--side", "client"], catch_exceptions=False)
    assert raw.stdout_bytes.startswith(b"ehlo ") or raw.stdout_bytes.upper().startswith(b"EHLO ")


@needs_tshark
def test_follow_keylog_without_keys_for_the_flow(tmp_path):
    keys = tmp_path / "other.keys"
    keys.write_text("CLIENT_RANDOM " + "00" * 32 + " " + "11" * 48 + "\n")
    res = CliRunner().invoke(cli, ["follow", str(TLS), "--flow", "2", "--keylog", str(keys)])
    assert res.exit_code == 0
    assert "Follow: tcp,ascii" in res.output and "no key in the key log decrypts flow 2" in res.output


def test_follow_keylog_refusals(tmp_path, monkeypatch):
    import maildissect.decrypt as decrypt
    monkeypatch.setattr(decrypt, "find_tshark", lambda: None)
    res = CliRunner().invoke(cli, ["follow", str(TLS), "--flow", "0", "--keylog", str(KEYS)])
    assert res.exit_code == 1 and "needs tshark" in res.output and "Traceback" not in res.output
    monkeypatch.setattr(decrypt, "find_tshark", lambda: TSHARK or "/usr/bin/tshark")
    res = CliRunner().invoke(cli, ["follow", "-", "--flow", "0", "--keylog", str(KEYS)], input=b"")
    assert res.exit_code == 1 and "give a file" in res.output
    notcap = tmp_path / "x.pcap"
    notcap.write_text("hello")
    res = CliRunner().invoke(cli, ["follow", str(notcap), "--flow", "0", "--keylog", str(KEYS)])
    assert res.exit_code == 1 and "not a pcap" in res.output
