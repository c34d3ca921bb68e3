"""Real Roundcube traffic (tests/captures/roundcube, recorded by tests/fixtures/roundcube/record.sh)
against the ground truth its manifest took from the servers' stores and logs."""

from __future__ import annotations

import functools
import json
import pathlib
import re
from email.utils import getaddresses

import pytest

import maildissect
from maildissect.output.summary import message_counts
from maildissect.protocols.roundcube import parse_message_page

HERE = pathlib.Path(__file__).resolve().parent
CAPTURE = HERE / "captures" / "roundcube" / "roundcube.pcap"
MANIFEST = HERE / "captures" / "roundcube" / "manifest.json"


@functools.lru_cache(maxsize=None)
def analysis():
    return maildissect.analyze(str(CAPTURE))


@functools.lru_cache(maxsize=None)
def manifest():
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def bare(values) -> set[str]:
    if isinstance(values, str):
        values = [values]
    return {a.lower() for _, a in getaddresses(list(values or [])) if a}


def browser_sessions(user: str) -> set[int]:
    ip = manifest()["addresses"]["browsers"][user]
    return {s.session_id for s in analysis().records.sessions if s.protocol == "http" and s.client_ip == ip}


def webmail_row(entry: dict, direction: str, kind: str):
    """The one messages row of the request the manifest names."""
    rows = [m for m in analysis().records.messages
            if m.protocol == "http" and m.session_id in browser_sessions(entry["user"])
            and m.direction == direction and m.kind == kind and m.source == f"GET {entry['uri']}"]
    assert len(rows) == 1, (entry["uri"], rows)
    return rows[0]


def assert_same_message(row, truth: dict) -> None:
    assert row.message_id == truth["message_id"]
    assert row.subject == truth["subject"]
    assert bare(row.from_) == {truth["from_address"]}
    assert bare(row.to) == set(truth["to"])
    assert bare(row.cc) == set(truth["cc"])


def test_the_capture_is_what_the_manifest_describes():
    m = manifest()
    assert m["versions"]["roundcube"].startswith("1.6") and m["versions"]["postfix"]
    assert len(m["reads"]) == 7 and len(m["downloads"]) == 5 and len(m["sends"]) == 2
    assert {r["action"] for r in m["reads"]} == {"show", "preview"}
    recs = analysis().records
    web = m["addresses"]["webmail_client_address"]
    # Roundcube's own IMAP and SMTP sessions come from the web server's address
    assert {s.client_ip for s in recs.sessions if s.protocol in ("imap", "smtp")} == {web}


def test_every_read_is_a_row_matching_the_manifest():
    for entry in manifest()["reads"]:
        row = webmail_row(entry, "retrieved", "view")
        assert (row.mailbox, row.uid) == (entry["mailbox"], entry["uid"])
        assert_same_message(row, entry)
        assert [a.filename for a in row.attachments] == [a["filename"] for a in entry["attachments"]]
        assert [a.part for a in row.attachments] == [a["part"] for a in entry["attachments"]]
        assert [a.content_type for a in row.attachments] == [a["content_type"] for a in entry["attachments"]]
        # the page named it, the webmail server's IMAP fetch during the request completed it
        assert row.filled_from == "page+imap"
        assert not row.heuristic


def test_every_download_belongs_to_its_message():
    recs = analysis().records
    http = {(r.session_id, r.uri): r for r in recs.http}
    for entry in manifest()["downloads"]:
        kind = "attachment" if entry["kind"] == "attachment" else "rfc822"
        row = webmail_row(entry, "downloaded", kind)
        assert (row.mailbox, row.uid) == (entry["mailbox"], entry["uid"])
        assert_same_message(row, entry["message"])
        if kind == "attachment":
            (att,) = row.attachments
            assert (att.filename, att.part, att.sha256, att.size) == \
                (entry["filename"], entry["part"], entry["sha256"], entry["size"])
            assert att.md5 and att.sha1  # hashed as an attachment is
            assert row.sha256 == entry["sha256"] and row.filled_from == "page+imap"
        else:  # the whole message, as Dovecot serves it
            assert (row.sha256, row.size) == (entry["sha256"], entry["size"])
            assert sorted(a.sha256 for a in row.attachments) == \
                sorted(a["sha256"] for a in entry["message"]["attachments"])
        # the request itself names the message, for whatever lists files by request
        req = http[(row.session_id, entry["uri"])]
        assert (req.mailbox, req.uid, req.part, req.message_id) == \
            (entry["mailbox"], entry["uid"], entry["part"], entry["message"]["message_id"])
        assert req.mail_action == "download"


def test_a_webmail_send_and_its_smtp_submission_are_one_journey():
    jr = analysis().journey_records
    for send in manifest()["sends"]:
        (j,) = jr.find(send["message_id"])
        assert j.match == "webmail_submission"
        assert j.subject == send["subject"]
        hops = jr.hops_of(j.journey_id)
        roles = [h.role for h in hops]
        assert roles[:5] == ["upload", "upload", "webmail_send", "submission", "append"]
        assert set(roles[5:]) == {"retrieval"}
        sent = hops[2]
        assert sent.protocol == "http" and sent.session_id in browser_sessions(send["user"])
        assert sent.match == "webmail_submission"
        sub = hops[3]
        assert (sub.protocol, sub.queue_id, sub.user) == ("smtp", send["smtp"]["queue_id"], send["smtp"]["sasl_username"])
        assert sub.client_ip == manifest()["addresses"]["webmail_client_address"]
        assert [h.match for h in hops[:2]] == ["attachment_sha256"] * 2
        # the recipients' reads and downloads of it are in the same journey
        readers = {r["user"] for r in manifest()["reads"] + manifest()["downloads"]
                   if (r.get("message_id") or r.get("message", {}).get("message_id")) == send["message_id"]}
        seen = {u for u in ("alice", "bob") for h in hops if h.session_id in browser_sessions(u)
                and h.role == "retrieval"}
        assert readers <= seen
    # the form and the SMTP message are one message: no journey of the form alone
    assert all(j.message_id for j in jr.journeys)


def test_no_hop_latency_is_negative_and_hops_are_in_handover_order():
    jr = analysis().journey_records
    assert jr.hops
    for j in jr.journeys:
        hops = jr.hops_of(j.journey_id)
        assert all(h.latency is None or h.latency >= 0 for h in hops)
        ends = [h.end for h in hops if h.end is not None]
        assert ends == sorted(ends)


def test_header_fetches_are_told_from_full_retrievals():
    recs = analysis().records
    imap = [m for m in recs.messages if m.protocol == "imap" and m.direction == "retrieved"]
    kinds = {m.kind for m in imap}
    assert {"header", "part"} <= kinds
    listing = [m for m in imap if m.kind == "header" and not m.message_id]
    assert listing, "the message list's header fetches"
    counts = message_counts(recs.messages)
    retrieved = re.search(r"\d+ retrieved \(([^)]*)\)", counts).group(1)
    n_header = sum(1 for m in recs.messages if m.direction == "retrieved" and m.kind == "header")
    n_page = sum(1 for m in recs.messages if m.direction == "retrieved" and m.kind == "view")
    assert f"{n_header} header" in retrieved and f"{n_page} page" in retrieved
    # a header fetch without Message-ID makes no journey of its own, nor joins one
    in_journeys = {(h.session_id, h.start) for h in analysis().journey_records.hops}
    assert not any((m.session_id, m.ts) in in_journeys for m in listing)
    # the default messages table shows the kind
    from maildissect.frames import TABLE_VIEWS
    assert "kind" in TABLE_VIEWS["messages"]


def test_credentials_of_both_users():
    creds = analysis().records.credentials
    users = manifest()["users"]
    forms = {(c.user, c.secret) for c in creds if c.protocol == "http" and c.mechanism == "FORM" and c.success}
    assert forms == {(u["address"], u["password"]) for u in users.values()}


# -- the page reader on its own ---------------------------------------------------------------------

ELASTIC = """<html><head><title>Mail :: Hello</title></head><body>
<script>rcmail.set_env({"uid":"7","mailbox":"Archive","attachments":{"2":"application/pdf"},"sender":"A <a@x.example>"});
</script>
<h2 class="subject"><span class="voice">Subject: </span> Real &amp; subject <a class="extwin" href="#">Open</a></h2>
<table class="header-headers"><tbody>
<tr><td class="header-title">From</td><td class="header from"><span class="adr"><a href="mailto:a@x.example"
 onclick="return rcmail.command('compose','\\&quot;Doe, A\\&quot; &lt;a@x.example&gt;',this)" title="a@x.example">Doe, A</a></span></td></tr>
<tr><td class="header-title">To</td><td class="header to"><span class="adr"><span title="b@x.example"
 class="rcmContactAddress">Bea</span></span>, <a href="#more" class="morelink"
 onclick="return rcmail.simple_dialog('&lt;span class=&quot;adr&quot;&gt;&lt;span title=&quot;b@x.example&quot; class=&quot;rcmContactAddress&quot;&gt;Bea&lt;/span&gt;&lt;/span&gt;, &lt;span class=&quot;adr&quot;&gt;&lt;span title=&quot;c@x.example&quot; class=&quot;rcmContactAddress&quot;&gt;c@x.example&lt;/span&gt;&lt;/span&gt;','To',null,{cancel_button:'close'})">1 more...</a></td></tr>
</tbody></table>
<ul id="attachment-list" class="attachmentslist"><li class="application pdf" id="attach2"><a href="./?_part=2"
 title="a very long file name that was shortened.pdf"><span class="attachment-name">a very...pdf</span></a></li></ul>
<div id="messagebody"><div class="message-part"><div class="pre">Body text
<table><tr><td class="header-title">From</td><td class="header from">evil@spoof.example</td></tr></table>
</div></div></div><div id="after">not body</div>
</body></html>"""


def test_page_reader_takes_the_header_region_only():
    page = parse_message_page(ELASTIC)
    assert (page.uid, page.mailbox, page.subject) == (7, "Archive", "Real & subject")
    assert page.headers["from"] == ['"Doe, A" <a@x.example>']
    # the "1 more" link's dialog lists every recipient
    assert page.headers["to"] == ["Bea <b@x.example>", "c@x.example"]
    assert page.attachments == [("2", "a very long file name that was shortened.pdf", "application/pdf")]
    # the message body's own markup is text, never a header row
    assert "evil@spoof.example" not in str(page.headers)
    assert page.text.startswith("Body text") and "not body" not in page.text


def test_page_reader_title_fallback_and_hostile_input():
    page = parse_message_page("<html><title>Webmail :: Only the title</title><p>nothing else</p></html>")
    assert page.subject == "Only the title" and page.subject_from_title and not page.found()
    deep = "<script>rcmail.set_env(" + "[" * 100_000 + "]" * 100_000 + ");\n</script>"
    page = parse_message_page("<title>x</title>" + deep)
    assert page.uid is None and page.subject == "x"
    page = parse_message_page("<h2 class=\"subject\">" + "A" * 100_000 + "</h2>")
    assert len(page.subject) <= 4096
    assert parse_message_page("").subject is None
