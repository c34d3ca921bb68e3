"""Round trip: the generator's webmail scenario, captured, must be found again.

The scenario drives the lab's webmail (a Roundcube-style form interface and a
JMAP API on a real ASGI server) with a real HTTP client: login, list, read,
raw download, attachment upload, send; JMAP session, Mailbox/get,
Email/query + Email/get, blob downloads (a message, an attachment) and upload, Email/set +
EmailSubmission/set. Its manifest states every message that crossed the
wire; each must come out of the capture with its headers and hashes.
"""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

import maildissect  # noqa: E402
from maildissect.generate import generate  # noqa: E402


def bare(addrs):
    out = set()
    for a in addrs or []:
        a = a.strip()
        out.add((a[a.rfind("<") + 1:a.rfind(">")] if "<" in a else a).lower())
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("webmail") / "webmail.pcap"
    try:
        manifest = generate("webmail", str(out), capture="synthetic", seed=3)
    except OSError as exc:  # the lab could not bind its loopback services here
        pytest.skip(f"webmail lab unavailable: {exc}")
    return manifest, maildissect.analyze([str(out)])


def test_every_webmail_message_is_found(run):
    manifest, a = run
    want = [m for m in manifest["messages"] if m["protocol"] == "http"]
    got = [m for m in a.records.messages if m.protocol == "http"]
    assert want, "the scenario moved no mail over HTTP"
    kinds = {(m["direction"], m["kind"]) for m in want}
    assert {("retrieved", "view"), ("downloaded", "rfc822"), ("uploaded", "form"), ("sent", "form"),
            ("retrieved", "jmap"), ("uploaded", "blob"), ("sent", "jmap"), ("downloaded", "attachment")} <= kinds
    unmatched = list(got)
    for w in want:
        cands = [g for g in unmatched if (g.direction, g.kind, g.source) == (w["direction"], w["kind"], w["source"])
                 and (w.get("message_id") is None or g.message_id in (None, w["message_id"]))]
        if w.get("message_id"):
            cands.sort(key=lambda g: g.message_id != w["message_id"])
        assert cands, f"not found: {w['direction']} {w['kind']} {w['source']}"
        g = cands[0]
        unmatched.remove(g)
        where = f"{w['direction']} {w['kind']} {w['source']}"
        if w.get("message_id") and not (w["direction"], w["kind"]) == ("sent", "jmap"):
            # (a JMAP server assigns the Message-ID of what it sends; it is not on the wire)
            assert g.message_id == w["message_id"], where
        if w.get("subject"):
            assert g.subject == w["subject"], where
        if w.get("sha256"):
            assert (g.size, g.sha256) == (w["size"], w["sha256"]), where
        if w.get("from"):
            assert bare([g.from_]) == bare([w["from"]]), where
        for field in ("to", "cc"):
            if w.get(field):
                assert bare(getattr(g, field)) == bare(w[field]), (where, field)
        if w.get("attachments"):
            assert sorted(x.sha256 for x in g.attachments) == sorted(x["sha256"] for x in w["attachments"]), where
            if w["kind"] != "blob":  # a JMAP upload carries no file name
                assert sorted(x.filename for x in g.attachments) == \
                    sorted(x["filename"] for x in w["attachments"]), where


def test_webmail_credentials_and_actions(run):
    _, a = run
    creds = {(c.mechanism, c.success) for c in a.records.credentials if c.protocol == "http"}
    assert {("FORM", True), ("BASIC", True)} <= creds
    actions = set(a.http["mail_action"].dropna())
    assert {"login", "list", "read", "download", "compose", "upload", "send", "logout", "jmap:session",
            "jmap:upload", "jmap:download"} <= actions
    assert any(x.startswith("jmap:") and "Email/get" in x for x in actions)
    assert not [x for x in a.records.anomalies if x.name.startswith("http_")]


def test_jmap_attachment_download_is_a_file_of_its_message(run):
    """A blob download of an attachment an Email/get listed: with the message's Message-ID, its
    mailbox (by Mailbox/get name) and the part, in files, attachments and journeys."""
    manifest, a = run
    (w,) = [m for m in manifest["messages"] if (m["direction"], m["kind"]) == ("downloaded", "attachment")]
    want = w["attachments"][0]
    files = a.files[a.files["sha256"] == want["sha256"]]
    row = files[files["direction"] == "downloaded"].iloc[0]
    assert (row["message_id"], row["mailbox"], row["part"], row["filename"]) == (
        w["message_id"], "INBOX", w["part"], want["filename"])
    assert row["uri"] == w["source"].split(" ", 1)[1] and row["source"] == "message"
    http = a.http[a.http["mail_action"] == "jmap:download"]
    assert w["message_id"] in set(http["message_id"]) and w["part"] in set(http["part"])
    hops = a.hops[a.hops["message_id"] == w["message_id"]]
    assert "downloaded" in set(hops["direction"])
    assert want["sha256"] in set(a.attachments["sha256"])
