"""What a webmail server's own back-end traffic tells about its users' webmail records.

A webmail server answers a read (Roundcube's ``_action=show``/``preview``) or a
download (``_action=get``, ``viewsource``) by fetching the message from its IMAP
server while the browser waits, and a send by submitting the message over SMTP.
When the capture holds that back-end traffic, the back-end session is found by
keys, not by guessing.

**Reads and downloads** (:func:`fill`): the IMAP session

- whose client address is the web server's address (the HTTP session's server);
- whose user is the webmail user (the same name, or the same local part when one
  side adds the domain);
- that fetched UID N of mailbox M, the ``_uid`` and ``_mbox`` the URL names
  (:attr:`Message.uid`/:attr:`Message.mailbox` on both sides);
- while the request was pending: after the request, before the response.

From it the webmail row takes the Message-ID, From, To, Cc, Reply-To, Subject,
Date, In-Reply-To and References of the header fetch (where both give a field,
the IMAP header's value is kept: the page shows addresses shortened and dates
localised), the attachments listed by BODYSTRUCTURE when the page listed none,
and the hashes of a part the server fetched whole (``BINARY[2]``). The row's
``filled_from`` then says ``page+imap`` (or ``imap`` when the page gave
nothing), and the HTTP request (``http`` table) gets the Message-ID.

**Sends** (:func:`submissions`): the compose form has no Message-ID, the server
makes one when it submits. A form send and an SMTP message are the same message
when the SMTP client is the web server's address, the submission starts after
the form request and at most :data:`SUBMIT_WINDOW` seconds after its response,
and the subject, the recipients and the attachments' sha256 are the same.

:func:`fill` runs once on an analysis's records, before any table is built;
:func:`submissions` when journeys are built (maildissect.correlate).
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections import defaultdict

from .model import Attachment

__all__ = ["SUBMIT_WINDOW", "fill", "submissions"]

#: Header fields a webmail row takes from the IMAP fetch.
FIELDS = ("message_id", "from_", "to", "cc", "reply_to", "subject", "date", "date_raw", "in_reply_to",
          "references")
#: A webmail server submits a message at most this many seconds after answering the send form.
SUBMIT_WINDOW = 10.0
#: Seconds of clock slack around the request: capture timestamps of two connections on one
#: host can be a few microseconds out of order.
SLACK = 0.001

_SECTION = re.compile(r"\b(?:BODY|BINARY)(?:\.PEEK)?\[(\d+(?:\.\d+)*)\]", re.I)


def _mailbox(name: str | None) -> str:
    name = name or "INBOX"
    return "INBOX" if name.upper() == "INBOX" else name


def _same_user(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return True  # unknown on one side: the other keys decide
    a, b = a.lower(), b.lower()
    if a == b:
        return True
    if ("@" in a) != ("@" in b):  # "alice" logs in to the webmail, "alice@example.org" to IMAP
        return a.split("@", 1)[0] == b.split("@", 1)[0]
    return False


class _Backend:
    """The IMAP fetches of every session, by (client address, mailbox, UID)."""

    def __init__(self, records):
        self.sessions = {s.session_id: s for s in records.sessions}
        self.fetches = defaultdict(list)  # key -> [(ts, Message)], in time order
        self.structures = defaultdict(list)  # key -> [(ts, [bodystructure entries])]
        for m in records.messages:
            if m.protocol != "imap" or m.uid is None or m.direction != "retrieved":
                continue
            s = self.sessions.get(m.session_id)
            if s is not None:
                self.fetches[(s.client_ip, _mailbox(m.mailbox), m.uid)].append((m.ts, m))
        for ev in records.mailboxes:
            if ev.protocol != "imap" or ev.action != "fetch" or ev.uid is None or '"bodystructure"' not in ev.detail:
                continue
            s = self.sessions.get(ev.session_id)
            try:
                parts = json.loads(ev.detail).get("bodystructure")
            except (ValueError, AttributeError):
                continue
            if s is not None and isinstance(parts, list):
                self.structures[(s.client_ip, _mailbox(ev.mailbox), ev.uid)].append((ev.ts, ev.session_id, parts))
        for lst in self.fetches.values():
            lst.sort(key=lambda x: x[0])
        for lst in self.structures.values():
            lst.sort(key=lambda x: x[0])

    def user_of(self, m) -> str | None:
        s = self.sessions.get(m.session_id)
        return getattr(m, "user", None) or (s.auth_user if s is not None else None)

    def during(self, key, start: float, end: float, user: str | None) -> list:
        """IMAP messages fetched for ``key`` between ``start`` and ``end`` by ``user``'s sessions."""
        lst = self.fetches.get(key, [])
        i = bisect_left(lst, start - SLACK, key=lambda x: x[0])
        out = []
        while i < len(lst) and lst[i][0] <= end + SLACK:
            m = lst[i][1]
            if _same_user(self.user_of(m), user):
                out.append(m)
            i += 1
        return out

    def structure(self, key, start: float, end: float, sessions: set) -> list | None:
        for ts, sid, parts in self.structures.get(key, []):
            if start - SLACK <= ts <= end + SLACK and sid in sessions:
                return parts
        return None


def _request_of(http_by_session, by_seq, m):
    """The HTTP exchange that carried webmail message ``m`` (by its command number when the
    dissector set one, else by its request line and response time)."""
    seq = getattr(m, "command_seq", None)
    if seq is not None:
        r = by_seq.get((m.session_id, seq))
        if r is not None:
            return r
    for r in http_by_session.get(m.session_id, []):
        if r.response_ts == m.ts and f"{r.method} {r.uri}"[:300] == (m.source or ""):
            return r
    return None


def fill(records) -> None:
    """Complete the webmail reads and downloads of ``records`` (a Collector) in place."""
    webmail = [m for m in records.messages if m.protocol == "http" and m.uid is not None
               and m.direction in ("retrieved", "downloaded")]
    if not webmail:
        return
    backend = _Backend(records)
    http_by_session = defaultdict(list)
    for r in records.http:
        if r.uid is not None:
            http_by_session[r.session_id].append(r)
    by_seq = {(r.session_id, r.seq): r for lst in http_by_session.values() for r in lst if r.seq is not None}
    for m in webmail:
        req = _request_of(http_by_session, by_seq, m)
        s = backend.sessions.get(m.session_id)
        if s is None:
            continue
        if req is not None and m.kind == "rfc822":
            req.message_id = req.message_id or m.message_id  # the downloaded message names itself
            continue
        start = req.ts if req is not None else m.ts
        end = (req.response_ts if req is not None and req.response_ts is not None else m.ts)
        key = (s.server_ip, _mailbox(m.mailbox), m.uid)
        fetched = backend.during(key, start, end, backend.user_of(m))
        if not fetched:
            continue
        took = _take_headers(m, fetched)
        sessions = {f.session_id for f in fetched}
        if m.kind == "view":
            took |= _take_attachments(m, fetched, backend.structure(key, start, end, sessions))
        if took:
            m.filled_from = "page+imap" if m.filled_from == "page" else "imap"
        if req is not None and m.message_id:
            req.message_id = m.message_id


def _take_headers(m, fetched) -> bool:
    """Header fields from the fetch that has the most of them (a header or whole-body fetch)."""
    best = max(fetched, key=lambda f: (bool(f.message_id), sum(1 for n in FIELDS if getattr(f, n))))
    took = False
    for name in FIELDS:
        value = getattr(best, name)
        if value and value != getattr(m, name):
            setattr(m, name, list(value) if isinstance(value, list) else value)
            took = True
    return took


def _take_attachments(m, fetched, structure) -> bool:
    """Attachments BODYSTRUCTURE lists (when the page listed none), and the hashes of parts
    the server fetched whole during the request."""
    took = False
    if not m.attachments and structure:
        for e in structure:
            if not isinstance(e, dict) or not isinstance(e.get("part"), str):
                continue
            name = e.get("filename") if isinstance(e.get("filename"), str) else None
            if name is None and e.get("disposition") != "attachment":
                continue
            m.attachments.append(Attachment(
                filename=name, content_type=str(e.get("type") or "application/octet-stream"), size=0, md5="",
                sha1="", sha256="", disposition=e.get("disposition") if isinstance(e.get("disposition"), str)
                else None, part=e["part"], encoding=e.get("encoding") if isinstance(e.get("encoding"), str)
                else None))
            took = True
    by_part = {a.part: a for a in m.attachments}
    for f in fetched:
        if f.kind != "part" or len(f.attachments) != 1:
            continue
        sec = _SECTION.search(f.source or "")
        att = by_part.get(sec.group(1)) if sec else None
        got = f.attachments[0]
        if att is not None and not att.sha256 and got.sha256 and f.complete:
            att.size, att.md5, att.sha1, att.sha256 = got.size, got.md5, got.sha1, got.sha256
            att.filename = att.filename or got.filename
            took = True
    return took


def _norm_subject(s: str | None) -> str:
    return " ".join((s or "").split())


def _bare(addr: str | None) -> str:
    if not addr:
        return ""
    m = re.search(r"<([^<>]*)>", addr)
    return (m.group(1) if m else addr).strip().lower()


def _same_send(form, smtp) -> bool:
    """The form and the SMTP message say the same: subject, recipients, attachment hashes."""
    if _norm_subject(form.subject) != _norm_subject(smtp.subject):
        return False
    want = {_bare(a) for a in form.rcpt_to} - {""}
    got = {_bare(a) for a in smtp.rcpt_to + smtp.rcpt_rejected} - {""}
    if not want or want != got:
        return False
    return sorted(a.sha256 for a in form.attachments) == sorted(a.sha256 for a in smtp.attachments)


def submissions(messages: list, sessions: dict, http: dict, start_of) -> list[tuple[int, int]]:
    """``(form index, SMTP index)`` pairs of ``messages`` that are one webmail send.

    ``sessions``: session_id -> Session; ``http``: session_id -> [HttpRequest];
    ``start_of(message)``: when the SMTP transaction that carried it began.
    Each SMTP message joins at most one form, the first in time that fits.
    """
    forms = [(i, m) for i, m in enumerate(messages)
             if m.protocol == "http" and m.direction == "sent" and m.kind == "form"]
    if not forms:
        return []
    by_client = defaultdict(list)  # SMTP client address -> [(start, index)]
    for i, m in enumerate(messages):
        if m.protocol == "smtp" and m.direction == "sent" and m.kind != "envelope":
            s = sessions.get(m.session_id)
            if s is not None:
                by_client[s.client_ip].append((start_of(m), i))
    for lst in by_client.values():
        lst.sort(key=lambda x: (x[0] if x[0] is not None else float("inf"), x[1]))
    taken: set[int] = set()
    out = []
    by_seq = {(r.session_id, r.seq): r for lst in http.values() for r in lst if r.seq is not None}
    for i, f in sorted(forms, key=lambda x: x[1].ts or 0.0):
        s = sessions.get(f.session_id)
        if s is None:
            continue
        # the exchange that carried the form (its command_seq)
        req = by_seq.get((f.session_id, f.command_seq)) if f.command_seq is not None else next(
            (r for r in http.get(f.session_id, []) if r.ts == f.ts and f"{r.method} {r.uri}"[:300] == (f.source or "")),
            None)
        answered = req.response_ts if req is not None and req.response_ts is not None else f.ts
        lst = by_client.get(s.server_ip, [])
        k = bisect_left(lst, f.ts - SLACK, key=lambda x: x[0] if x[0] is not None else float("inf"))
        while k < len(lst) and lst[k][0] is not None and lst[k][0] <= answered + SUBMIT_WINDOW:
            j = lst[k][1]
            if j not in taken and _same_send(f, messages[j]):
                taken.add(j)
                out.append((i, j))
                break
            k += 1
    return out
