"""Golden test: Zeek's IMAP STARTTLS trace (capabilities and the switch to TLS)."""

from __future__ import annotations

import json
from pathlib import Path

import maildissect

ZEEK = Path(__file__).parent / "captures" / "zeek"


def test_capabilities_and_starttls_match_zeek():
    expected = json.loads((ZEEK / "expected.json").read_text())["captures"]["tls-imap-starttls"]
    a = maildissect.analyze([str(ZEEK / "tls-imap-starttls.pcap")])
    (want,) = expected["sessions"]
    sess = a.sessions
    assert len(sess) == 1
    row = sess.iloc[0]
    for key in ("client_ip", "client_port", "server_ip", "server_port"):
        assert row[key] == want["hints"][key]
    assert row.protocol == "imap"
    assert bool(row.tls) is want["fields"]["tls"]["value"]
    assert list(row.extensions) == want["fields"]["extensions"]["value"]
    cmds = a.commands.sort_values("ts")
    assert list(zip(cmds.command, cmds.reply_code, cmds.tag.fillna(""))) == [
        ("", "OK", ""), ("CAPABILITY", "OK", "."), ("STARTTLS", "OK", ".")]
    assert cmds.iloc[2].reply_text == "Begin TLS negotiation now"
    # everything after the STARTTLS exchange is TLS: counted, not parsed
    assert row.tls_bytes_client > 0 and row.tls_bytes_server > 0
    assert row.bytes_client == len(b". CAPABILITY\r\n. STARTTLS\r\n") + row.tls_bytes_client
    assert a.anomalies.empty and a.messages.empty and a.credentials.empty
