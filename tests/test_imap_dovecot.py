"""Real-server round trip: IMAP sessions recorded against Dovecot (tests/captures/dovecot)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import maildissect

DIR = Path(__file__).parent / "captures" / "dovecot"
MANIFEST = json.loads((DIR / "manifest.json").read_text())
FILES = {m["sha256"]: m for m in MANIFEST["mailbox"]}
APPENDED = MANIFEST["appended"]


@pytest.fixture(scope="module")
def imap():
    return maildissect.analyze([str(DIR / "dovecot-imap.pcap")])


def test_capture_files_match_manifest():
    import hashlib
    for name, info in MANIFEST["captures"].items():
        assert hashlib.sha256((DIR / name).read_bytes()).hexdigest() == info["sha256"], name


def test_every_mailbox_file_retrieved_byte_for_byte(imap):
    msgs = imap.messages
    assert imap.anomalies.empty
    full = msgs[(msgs.direction == "retrieved") & (msgs.kind == "body")]
    assert full.complete.all()
    assert set(full.sha256) == set(FILES)
    for row in full.itertuples():
        want = FILES[row.sha256]
        assert row.size == want["size"] and row.message_id == want["message_id"] and row.subject == want["subject"]
        assert [(a["filename"], a["sha256"]) for a in row.attachments] == [
            (a["filename"], a["sha256"]) for a in want["attachments"]]
    sources = set(full.source)
    assert {"FETCH 1 RFC822", "FETCH 3 BODY[HEADER] BODY[TEXT]"} <= sources
    # the message fetched in 1 KiB pieces is reassembled into the mailbox file
    (chunked,) = full[full.source.str.contains(r"<0>\.\.<", regex=True)].itertuples()
    assert FILES[chunked.sha256]["attachments"]


def test_headers_parts_and_appends(imap):
    msgs = imap.messages
    headers = msgs[msgs.kind == "header"]
    assert len(headers) == 2 and not headers.complete.any()
    assert set(headers.subject) <= {m["subject"] for m in FILES.values()}
    with_att = next(m for m in FILES.values() if m["attachments"])
    parts = msgs[msgs.kind == "part"]
    downloads = [a for atts in parts.attachments for a in atts]
    assert downloads and {a["sha256"] for a in downloads} == {with_att["attachments"][0]["sha256"]}
    appended = msgs[msgs.direction == "appended"]
    assert list(appended.sha256) == [APPENDED["sha256"]] * 2
    assert set(appended.message_id) == {APPENDED["message_id"]}


def test_commands_credentials_and_sessions(imap):
    cmds = imap.commands
    assert cmds.reply_code.notna().all()
    assert set(cmds.command) >= {"", "CAPABILITY", "LOGIN", "AUTHENTICATE", "ID", "NAMESPACE", "LIST", "SELECT",
                                 "EXAMINE", "SEARCH", "UID SEARCH", "UID FETCH", "FETCH", "APPEND", "STORE",
                                 "EXPUNGE", "STATUS", "UID COPY", "CLOSE", "LOGOUT", "IDLE", "CREATE"}
    creds = imap.credentials.sort_values("ts")
    assert list(zip(creds.mechanism, creds.success)) == [("LOGIN", True), ("PLAIN", True), ("PLAIN", True),
                                                         ("LOGIN", False)]
    assert set(creds.user) == {MANIFEST["user"]}
    assert list(creds.secret[:3]) == [MANIFEST["password"]] * 3
    sess = imap.sessions
    assert set(sess.server_software) == {"Dovecot"} and "imaplib" in set(sess.client_software.dropna().str[:7])
    assert "COMPRESS=DEFLATE" in sess.extensions.iloc[0]


def test_mailbox_events(imap):
    mb = imap.mailboxes
    sel = mb[mb.action == "select"]
    assert sel.uidvalidity.nunique() == 1 and set(sel["count"]) == {len(FILES)}
    fetched = mb[(mb.action == "fetch") & mb.message_id.notna()]
    assert set(fetched.message_id) == {m["message_id"] for m in FILES.values()}
    by_uid = fetched.dropna(subset=["size"]).groupby("uid")["size"].first()
    assert sorted(by_uid) == sorted(m["size"] for m in FILES.values())
    appends = mb[mb.action == "append"]
    assert set(appends.mailbox) == {"INBOX", "Archive"} and appends.uid.notna().all()
    assert {"store", "flags", "expunge", "copy", "close", "status", "list", "create", "examine"} <= set(mb.action)


def test_compress_deflate_session():
    a = maildissect.analyze([str(DIR / "dovecot-imap-compress.pcap")])
    assert a.anomalies.empty
    cmds = a.commands
    assert list(cmds.command) == ["", "LOGIN", "CAPABILITY", "COMPRESS", "SELECT", "UID FETCH", "LOGOUT"]
    assert cmds.reply_code.eq("OK").all()
    msgs = a.messages
    assert set(msgs.sha256) == set(FILES) and msgs.complete.all()
    assert list(a.credentials.secret) == [MANIFEST["password"]]


def test_curl_sessions():
    a = maildissect.analyze([str(DIR / "dovecot-curl.pcap")])
    assert a.anomalies.empty
    creds = a.credentials
    assert set(zip(creds.protocol, creds.mechanism, creds.user, creds.success)) == {
        ("imap", "CRAM-MD5", MANIFEST["user"], True), ("pop3", "CRAM-MD5", MANIFEST["user"], True)}
    assert set(a.messages.sha256) <= set(FILES) and len(a.messages) == 2


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MAILDISSECT_DOVECOT") != "1" or not shutil.which("dovecot")
                    or not shutil.which("tcpdump"), reason="set MAILDISSECT_DOVECOT=1 with dovecot and tcpdump")
def test_fresh_recording_round_trips(tmp_path):
    script = Path(__file__).parent / "fixtures" / "dovecot" / "make_captures.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, timeout=300)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    files = {m["sha256"] for m in manifest["mailbox"]}
    for name in manifest["captures"]:
        a = maildissect.analyze([str(tmp_path / name)])
        assert a.anomalies.empty, name
        full = a.messages[(a.messages.direction == "retrieved") & (a.messages.kind == "body")]
        assert set(full.sha256) <= files and len(full), name
