"""Round trips: generator scenario -> pcap -> maildissect.analyze -> the manifest's ground truth.

Every message the manifest lists with exact bytes must be found with the same
sha256, protocol, direction and attachments; every credential must be found;
every flow must reassemble to the bytes the recording relay saw (also under
loss, reordering and duplication). Messages and credentials inside TLS are
checked by decrypting with the scenario's key log (tshark needed).
"""

from __future__ import annotations

import collections
import shutil

import pandas as pd
import pytest

import maildissect
from maildissect.generate.live import live_permitted
from maildissect.protocols import dissector_class

from .test_generate import SCENARIOS, generated

IMPAIRED = dict(loss=0.05, reorder=0.05, duplicate=0.05, mss=536)
CASES = [(s, {}) for s in SCENARIOS] + [("journey", IMPAIRED)]
IDS = [s for s in SCENARIOS] + ["journey-impaired"]

_analyses: dict = {}


def analysed(scenario, opts):
    """The scenario's analysis, decrypted with its key log when it wrote one (and tshark is here)."""
    pcap, doc = generated(scenario, **opts)
    if pcap not in _analyses:
        keylog = (doc.get("options") or {}).get("keylog")
        if keylog and not shutil.which("tshark"):
            keylog = None
        _analyses[pcap] = maildissect.analyze(pcap, keylog=keylog) if keylog else maildissect.analyze(pcap)
    return doc, _analyses[pcap]


def decrypting(analysis) -> bool:
    return "tls_decrypted" in analysis.stats


def _attachments(items):
    return sorted((a.get("filename"), a.get("sha256")) for a in items or [])


def _rows(df):
    """Rows as dicts, with pandas' missing values as None (pd.NA refuses comparisons)."""
    def clean(v):
        return None if v is pd.NA or v is pd.NaT else v
    return [{k: clean(v) for k, v in r._asdict().items()} for r in df.itertuples(index=False)]


def check_messages(doc, analysis):
    """Assert every checkable manifest message is in the analysis; return what was skipped."""
    rows = _rows(analysis.messages)
    by_sha = collections.defaultdict(list)
    for r in rows:
        if isinstance(r["sha256"], str):
            by_sha[r["sha256"]].append(r)
    skipped = collections.Counter()
    for m in doc["messages"]:
        if m["tls"] and not decrypting(analysis):
            skipped["inside TLS (no key log, or no tshark to decrypt with)"] += 1
            continue
        if dissector_class(m["protocol"]) is None:
            skipped[f"no {m['protocol']} dissector"] += 1
            continue
        where = f"manifest message {m['index']} ({m['protocol']} {m['direction']} {m['kind']} {m['source']})"
        if m["direction"] == "uploaded":
            # A file uploaded on its own: the payload is the attachment.
            hits = [r for r in rows if r["protocol"] == "http" and r["direction"] == "uploaded"
                    and m["sha256"] in {a["sha256"] for a in r["attachments"]}]
            if not hits and m["kind"] == "blob":
                skipped["JMAP blob upload (not reported as a message)"] += 1
                continue
            assert hits, f"{where}: upload not found"
        elif m["sha256"]:
            # The same bytes may travel twice (fetched again later): match the connection too.
            hits = [r for r in by_sha.get(m["sha256"], [])
                    if r["protocol"] == m["protocol"] and r["direction"] == m["direction"]
                    and r["client_port"] == m["client_port"] and r["server_port"] == m["server_port"]]
            assert hits, f"{where}: sha256 {m['sha256'][:16]} not found on its connection"
            hit = hits[0]
            assert hit["size"] == m["size"], where
            if m["complete"] and m.get("attachments") is not None:
                assert _attachments(hit["attachments"]) == _attachments(m["attachments"]), where
            if m["complete"] and m.get("message_id"):
                assert hit["message_id"] == m["message_id"], where
            if m["protocol"] == "smtp":
                assert hit["mail_from"] == m["mail_from"], where
                assert sorted(hit["rcpt_to"]) == sorted(m["rcpt_to"]), where
                assert sorted(hit["rcpt_rejected"]) == sorted(m["rcpt_rejected"]), where
        elif m["protocol"] == "http" and m["direction"] == "sent":
            # A webmail send carries a form, not message bytes: match by what the form says.
            hits = [r for r in rows if r["protocol"] == "http" and r["direction"] == "sent"
                    and r["kind"] == m["kind"] and r["subject"] == m["subject"]]
            assert hits, f"{where}: not found"
            assert sorted(a["sha256"] for a in hits[0]["attachments"]) == \
                sorted(a["sha256"] for a in m["attachments"]), where
        elif m["kind"] == "jmap":
            hits = [r for r in rows if r["kind"] == "jmap" and r["direction"] == m["direction"]
                    and r["message_id"] == m["message_id"]]
            assert hits, f"{where}: not found"
        else:
            skipped[f"{m['kind']} (an HTML page, not a message)"] += 1
    return skipped


@pytest.mark.parametrize("scenario,opts", CASES, ids=IDS)
def test_roundtrip_messages(scenario, opts):
    doc, analysis = analysed(scenario, opts)
    skipped = check_messages(doc, analysis)
    checked = len(doc["messages"]) - sum(skipped.values())
    if scenario != "tls":
        assert checked > 0
    if skipped and checked == 0:
        pytest.skip("; ".join(f"{n} {why}" for why, n in skipped.items()))


@pytest.mark.parametrize("scenario,opts", CASES, ids=IDS)
def test_roundtrip_credentials(scenario, opts):
    doc, analysis = analysed(scenario, opts)
    found = collections.Counter(
        (r["protocol"], r["mechanism"], r["user"], r["secret"], bool(r["success"]))
        for r in _rows(analysis.credentials))
    wanted = collections.Counter()
    for s in doc["sessions"]:
        if s["tls"] and not decrypting(analysis):
            continue  # sent inside TLS, and no key log to read it with
        for c in s["credentials"]:
            wanted[(s["protocol"], c["mechanism"], c["user"], c["secret"], bool(c["success"]))] += 1
    if not wanted:
        pytest.skip("every credential of this scenario went inside TLS")
    missing = wanted - found
    assert not missing, f"credentials not found: {dict(missing)}"


@pytest.mark.parametrize("scenario,opts", CASES, ids=IDS)
def test_roundtrip_flows_reassemble_to_recorded_bytes(scenario, opts):
    doc, analysis = analysed(scenario, opts)
    flows = {(r["client_ip"], r["client_port"]): r for r in _rows(analysis.flows)}
    for s in doc["sessions"]:
        flow = flows.get((s["client_ip"], s["client_port"]))
        assert flow is not None, f"session {s['id']} has no flow"
        assert flow["server_ip"] == s["server_ip"] and flow["server_port"] == s["server_port"]
        if s["outcome"] == "refused":
            assert flow["close"] in ("refused", "rst"), flow["close"]
            continue
        rec = s["recorded"]
        assert flow["client_sha256"] == rec["client_sha256"], f"session {s['id']} client bytes"
        assert flow["server_sha256"] == rec["server_sha256"], f"session {s['id']} server bytes"
        assert flow["gaps"] == 0
        # A FIN followed by a RST (a TLS peer's close_notify hitting a closed
        # socket) may be reported either way.
        assert flow["close"] == rec["close"] or (rec["close"] == "rst" and flow["close"] == "fin")


def test_roundtrip_tls_sessions_are_marked_tls():
    doc, analysis = analysed("tls", {})
    flows = {(r["client_ip"], r["client_port"]): r["flow_id"] for r in _rows(analysis.flows)}
    sessions = {r["session_id"]: r for r in _rows(analysis.sessions)}
    for s in doc["sessions"]:
        if s["tls"]:
            row = sessions.get(flows[(s["client_ip"], s["client_port"])])
            assert row is not None and bool(row["tls"]), s["purpose"]


@pytest.mark.root
@pytest.mark.skipif(not live_permitted()[0], reason="live capture needs root or CAP_NET_RAW")
def test_roundtrip_live_capture(tmp_path):
    from maildissect.generate import generate
    pcap = str(tmp_path / "journey-live.pcap")
    doc = generate("journey", pcap, messages=2, attachment_size=2048, seed=7, capture="live",
                   retry_delay=0.3)
    assert doc["capture"]["mode"] == "live"
    analysis = maildissect.analyze(pcap)
    check_messages(doc, analysis)
    found = {(r["protocol"], r["mechanism"], r["user"], r["secret"]) for r in _rows(analysis.credentials)}
    for s in doc["sessions"]:
        for c in s["credentials"]:
            assert (s["protocol"], c["mechanism"], c["user"], c["secret"]) in found


@pytest.mark.slow
def test_roundtrip_all_scenarios_in_one_capture():
    """The acceptance run: `generate all` (synthetic), every message and credential found."""
    pcap, doc = generated("all", messages=1, attachment_size=1024)
    assert doc["duration"] < 60
    analysis = maildissect.analyze(pcap)
    skipped = check_messages(doc, analysis)
    assert len(doc["messages"]) - sum(skipped.values()) >= 30
    found = {(r["protocol"], r["mechanism"], r["user"], r["secret"], bool(r["success"]))
             for r in _rows(analysis.credentials)}
    for s in doc["sessions"]:
        if not s["tls"]:
            for c in s["credentials"]:
                assert (s["protocol"], c["mechanism"], c["user"], c["secret"], bool(c["success"])) in found
