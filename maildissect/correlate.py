"""Journeys: one message followed across hops and protocols.

A message leaves its author's user agent (submission), waits in a queue, is
pushed from server to server (relay, delivery; retried when the next server is
unreachable or says "try again later"), lands in a mailbox and is pulled by
its reader (IMAP FETCH, POP3 RETR, a webmail page). Each of those transfers is
a separate connection, often a separate protocol; :func:`correlate` puts them
back together.

**Recognising the same message.** Message records are grouped by, in order of
strength: the Message-ID header; else the sha256 of the body (identical on
every hop, since servers only prepend headers) or of the whole message; else
envelope + subject within a time window (``match = "envelope"``, a weaker
link). Two more weak links attach what is not a message record: a webmail
"read" page is tied to the message with the same IMAP UID in the same
mailbox of the same server (``mailbox_uid``), and a file uploaded while
composing is tied to the message that later carries it as an attachment
(``attachment_sha256``).

**Failed attempts.** A refused or unanswered connection, or an SMTP session
that ended with a 4xx/5xx before any message was accepted, carries no message
record. It is attributed to a journey when the same sending host later
succeeded towards the same server, after the message had reached the sender,
and (when the failed session shows an envelope) with the same sender and a
shared recipient. When several queued messages compete for the attempts, they
are shared out as a queue manager does: a message not yet tried takes the
next attempt, otherwise the least recently tried one. These hops have
``match = "attempt"``.

**Received headers.** The copy of the message with the most Received headers
is compared with the hops seen on the wire: each header is matched to the
accepted SMTP hop it describes (by queue id, else by the connecting address),
and disagreements are reported (address, TLS, authentication, server name,
date), as are hops the headers claim that the capture does not show and wire
hops no header mentions.

Results: a list of :class:`Journey` (one per message, the ``journeys`` table)
and a list of :class:`Hop` (one per hop, the ``hops`` table); docs/data.md
documents the columns and docs/report.md the method.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from .timeline import normalize_message_id, queue_id_of, smtp_outcome

#: SMTP ports used for submission (RFC 6409 on 587, implicit TLS on 465).
SUBMISSION_PORTS = {587, 465}
#: Ports on which a failed connection counts as an SMTP attempt when no protocol was detected.
SMTP_PORTS = {25, 465, 587, 2525}
#: Weak matching: messages without Message-ID or hash match on envelope and subject within this many seconds.
ENVELOPE_WINDOW = 3600.0
#: A failed attempt may precede its successful retry by at most this long (Postfix's default queue lifetime).
MAX_QUEUE_TIME = 5 * 86400.0
#: Received dates (1 s resolution) further than this from the wire time are reported.
CLOCK_TOLERANCE = 120.0

#: Message kinds that hold part of a message (IMAP header/text/part/partial fetches, POP3 TOP).
PARTIAL_KINDS = {"header", "text", "part", "partial", "top"}
#: Hop roles, in the order a message usually meets them.
ROLES = {
    "upload": "a file uploaded to a webmail server while composing, later carried by the message",
    "webmail_send": "the user's browser hands the message to a webmail server (HTTP)",
    "submission": "a user agent (or a webmail server on the user's behalf) submits to its mail server: "
                  "SMTP on 587/465, or with AUTH",
    "relay": "one mail server pushes the message to another (SMTP)",
    "delivery": "the last server-to-server SMTP hop: into the server the message was finally seen on",
    "append": "a client stores the message into a mailbox (IMAP APPEND, e.g. a Sent copy)",
    "retrieval": "the recipient pulls the message: IMAP FETCH, POP3 RETR/TOP, webmail read or download",
    "transfer": "any other transfer of the message (HTTP upload of a whole message...)",
}

#: Match kinds, strongest first.
MATCHES = {
    "message_id": "same Message-ID header",
    "body_sha256": "same body bytes (sha256 of the part after the header block)",
    "sha256": "same message bytes",
    "webmail_submission": "a webmail send form and the SMTP submission its server made within seconds: same "
                          "subject, recipients and attachment hashes",
    "envelope": "same sender, recipients and subject within an hour (weaker)",
    "mailbox_uid": "webmail page showing the UID an IMAP session fetched as this message (weaker)",
    "attachment_sha256": "an upload whose file the message later carries as an attachment (weaker)",
    "attempt": "a failed connection or SMTP session attributed to the journey (see docs/report.md)",
    "received": "a hop only a Received header claims (not in the capture)",
}
_STRENGTH = list(MATCHES)

_IP_RE = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")
_BARE_IP_RE = re.compile(r"(?<![\w.:])((?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w.:])")
_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@dataclass(slots=True)
class Hop:
    """One hop of a journey (a row of the ``hops`` table)."""

    journey_id: int
    hop: int  # position in the journey, from 1
    message_id: str | None
    role: str  # see ROLES
    protocol: str
    outcome: str  # accepted, deferred, rejected, refused, unanswered, aborted, retrieved, stored, sent, claimed...
    attempt: int | None = None  # SMTP: attempt number towards the same server (1, 2, ...)
    start: float | None = None
    end: float | None = None
    latency: float | None = None  # end - end of the previous hop (hops are in order of end of transfer)
    duration: float | None = None
    client_ip: str | None = None
    client_port: int | None = None
    server_ip: str | None = None
    server_port: int | None = None
    session_id: int | None = None
    queue_id: str | None = None
    reply: str | None = None
    match: str = "message_id"
    command_seq: int | None = None  # the command or HTTP exchange of the session that carried it
    direction: str | None = None
    user: str | None = None
    tls: bool | None = None
    size: int | None = None
    sha256: str | None = None
    wire: bool = True  # seen on the wire (False: claimed by a Received header only)
    received: str | None = None  # the Received header describing this hop
    received_check: str | None = None  # "agrees", or what disagrees
    detail: str = ""


@dataclass(slots=True)
class Journey:
    """One message's way through the capture (a row of the ``journeys`` table)."""

    journey_id: int
    message_id: str | None
    subject: str | None = None
    from_: str | None = None
    mail_from: str | None = None
    rcpt_to: list[str] = field(default_factory=list)
    match: str = "message_id"  # weakest link used to gather the hops
    first_seen: float | None = None
    last_seen: float | None = None
    duration: float | None = None
    hops: int = 0  # hops seen on the wire
    failed_attempts: int = 0
    queue_time: float | None = None  # seconds spent in mail servers' queues (waiting to be relayed)
    path: str = ""  # hosts in order, "a -> b -> c"
    roles: str = ""  # "submission -> delivery (2 attempts) -> retrieval"
    sha256: list[str] = field(default_factory=list)  # distinct message hashes seen (changes per hop)
    body_sha256: str | None = None
    received_hops: int = 0  # hops the Received headers claim
    received_check: str = ""  # agrees, differs, headers_only, no_headers, n/a
    received_notes: list[str] = field(default_factory=list)


class Journeys:
    """The result of :func:`correlate`: ``journeys`` and ``hops`` lists, and lookups."""

    def __init__(self, journeys: list[Journey], hops: list[Hop]):
        self.journeys = journeys
        self.hops = hops
        self._by_journey: dict[int, list[Hop]] | None = None

    def hops_of(self, journey_id: int) -> list[Hop]:
        """The hops of one journey, in order."""
        if self._by_journey is None:
            self._by_journey = defaultdict(list)
            for h in self.hops:
                self._by_journey[h.journey_id].append(h)
        return list(self._by_journey.get(journey_id, ()))

    def find(self, message_id: str) -> list[Journey]:
        """Journeys whose Message-ID equals (else contains) ``message_id`` (brackets optional)."""
        want = normalize_message_id(message_id)
        exact = [j for j in self.journeys if j.message_id and normalize_message_id(j.message_id) == want]
        return exact or [j for j in self.journeys if j.message_id and want in normalize_message_id(j.message_id)]

    def sessions_of(self, journey_ids) -> set[int]:
        """Session ids the given journeys passed through (failed attempts included)."""
        ids = set(journey_ids)
        return {h.session_id for h in self.hops if h.journey_id in ids and h.session_id is not None}

    def __len__(self) -> int:
        return len(self.journeys)


# ---------------------------------------------------------------------------------------------
class _DSU:
    def __init__(self, n):
        self.p = list(range(n))

    def find(self, x):
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def _bare(addr: str | None) -> str:
    if not addr:
        return ""
    m = re.search(r"<([^<>]*)>", addr)
    return (m.group(1) if m else addr).strip().lower()


def _identity(m) -> bool:
    """The record names a mail message (not a bare file upload)."""
    return bool(m.message_id or m.subject or m.from_ or m.mail_from or m.to or m.rcpt_to or m.headers)


def _group_messages(messages: list, window: float, links=()) -> tuple[list[tuple[list, str]], dict]:
    """Groups of message records that are the same message, with the weakest link used in each,
    and ``{id(record): link}`` for the records joined by something weaker than their Message-ID.
    ``links``: ``(i, j, label)`` joins known beforehand (``i`` is the record without identity)."""
    n = len(messages)
    dsu = _DSU(n)
    how = {}
    for i, j, label in links:
        dsu.union(i, j)
        how[i] = label
    by_mid = defaultdict(list)
    for i, m in enumerate(messages):
        if m.message_id:
            by_mid[normalize_message_id(m.message_id)].append(i)
    for idx in by_mid.values():
        for j in idx[1:]:
            dsu.union(idx[0], j)
    # messages without Message-ID: join the unique group with the same body/message bytes
    for key, label in (("body_sha256", "body_sha256"), ("sha256", "sha256")):
        owners = defaultdict(set)
        for i, m in enumerate(messages):
            h = getattr(m, key)
            if h and h != _EMPTY_SHA256 and m.message_id:
                owners[h].add(dsu.find(i))
        groups_of_hash = defaultdict(list)
        for i, m in enumerate(messages):
            h = getattr(m, key)
            if m.message_id or not h or h == _EMPTY_SHA256:
                continue
            roots = owners.get(h)
            if roots and len({dsu.find(r) for r in roots}) == 1:
                dsu.union(next(iter(roots)), i)
                how[i] = label
            elif not roots:
                groups_of_hash[h].append(i)
        for idx in groups_of_hash.values():
            for j in idx[1:]:
                dsu.union(idx[0], j)
                how[j] = label
    # still alone, no Message-ID: envelope + subject within the window (weaker)
    def env_key(m):
        sender = _bare(m.mail_from or m.from_)
        rcpts = tuple(sorted({_bare(x) for x in (m.rcpt_to or m.to or [])} - {""}))
        return (sender, rcpts, (m.subject or "").strip().lower())
    keyed = defaultdict(list)
    for i, m in enumerate(messages):
        k = env_key(m)
        if k[2] and (k[0] or k[1]):
            keyed[k].append(i)
    for idx in keyed.values():
        # in time order, a message without identity joins its predecessor with the same
        # envelope when it came within the window (linear, whatever the group size)
        idx.sort(key=lambda i: messages[i].ts or 0.0)
        for prev, i in zip(idx, idx[1:]):
            m, o = messages[i], messages[prev]
            if m.message_id or i in how:
                if not o.message_id and prev not in how and abs((m.ts or 0) - (o.ts or 0)) <= window:
                    dsu.union(prev, i)
                    how[prev] = "envelope"
                continue
            if abs((m.ts or 0) - (o.ts or 0)) <= window:
                dsu.union(prev, i)
                how[i] = "envelope"
    groups = defaultdict(list)
    for i in range(n):
        groups[dsu.find(i)].append(i)
    out = []
    for idx in groups.values():
        weakest = max((how.get(i, "message_id") for i in idx), key=_STRENGTH.index)
        if not any(messages[i].message_id for i in idx) and weakest == "message_id":
            weakest = "single"
        out.append(([messages[i] for i in idx], weakest))
    return out, {id(messages[i]): label for i, label in how.items()}


# ---------------------------------------------------------------------------------------------
class _Index:
    """Lookups over the records the correlation needs.

    Records of one session are joined on the keys the dissectors set
    (``Command.seq``, ``transaction``, ``Message.command_seq``, ``HttpRequest.seq``),
    each looked up in a dict: the cost grows with the records, never with
    messages x commands.
    """

    def __init__(self, records):
        self.sessions = {s.session_id: s for s in records.sessions}
        self.flows = {f.flow_id: f for f in records.flows}
        self.commands = defaultdict(list)
        self.transactions = defaultdict(list)  # (session, transaction) -> its commands in order
        for c in records.commands:
            self.commands[c.session_id].append(c)
            if c.transaction is not None:
                self.transactions[(c.session_id, c.transaction)].append(c)
        for lst in self.commands.values():
            lst.sort(key=lambda c: c.ts if c.ts is not None else 0.0)
        self.first_transaction = {}  # session -> its first transaction (the connection was opened for it)
        for (sid, txn), lst in self.transactions.items():
            lst.sort(key=lambda c: c.seq if c.seq is not None else 0)
            if txn < self.first_transaction.get(sid, txn + 1):
                self.first_transaction[sid] = txn
        self.messages = defaultdict(list)
        for m in records.messages:
            self.messages[m.session_id].append(m)
        for lst in self.messages.values():
            lst.sort(key=lambda m: m.ts if m.ts is not None else 0.0)
        self.http = defaultdict(list)  # session -> its HTTP exchanges
        self.exchanges = {}  # (session, HttpRequest.seq) -> the exchange
        for r in records.http:
            self.http[r.session_id].append(r)
            if r.seq is not None:
                self.exchanges[(r.session_id, r.seq)] = r
        self._names: dict | None = None

    def user(self, sid):
        s = self.sessions.get(sid)
        return s.auth_user if s is not None else None

    def server_name(self, ip: str | None) -> str | None:
        """The name an SMTP server gives itself in its greeting (first word after the code)."""
        if self._names is None:
            self._names = {}
            for s in sorted(self.sessions.values(), key=lambda s: s.session_id):
                if s.protocol == "smtp" and s.banner and s.server_ip not in self._names:
                    word = s.banner.split()[0] if s.banner.split() else ""
                    if "." in word:
                        self._names[s.server_ip] = word
        return self._names.get(ip)

    def smtp_window(self, m) -> tuple[float | None, float | None]:
        """(start, end) of the SMTP transaction that carried ``m`` (its ``transaction`` key).

        start: the connection's first packet for the session's first
        transaction (the connection was opened for it), else the
        transaction's first command (its MAIL FROM); end: the moment the
        client finished sending the data (the final dot, the last BDAT chunk
        after the command that carried it) -- the handover. A server may queue
        and start relaying before its reply reaches the client, so the reply
        time would make the next hop appear to start before this one ended.
        """
        sid = m.session_id
        flow = self.flows.get(sid)
        cmds = self.transactions.get((sid, m.transaction), ()) if m.transaction is not None else ()
        first = cmds[0] if cmds else None
        if first is not None and m.transaction != self.first_transaction.get(sid):
            start = first.ts
        else:
            start = flow.start if flow is not None else (first.ts if first is not None else m.ts)
        end = None
        after = m.command_seq if m.command_seq is not None else -1
        for c in cmds:
            if c.command in (".", "BDAT") and (c.seq if c.seq is not None else 0) >= after:
                end = c.ts
                if c.command == "." or "LAST" in (c.argument or "").upper():
                    break
        return start, end if end is not None else m.ts


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _received_ip(rec) -> str | None:
    """The connecting address a Received header names: the last [a.b.c.d] of its from clause,
    else a bare address in its comment ("from host (10.0.0.1)", as Exchange writes it)."""
    text = rec.from_ or (rec.raw.split(" by ")[0] if rec.raw else "")
    ips = [x for x in _IP_RE.findall(text) if _is_ip(x)]
    if not ips:
        ips = [x for x in _BARE_IP_RE.findall(text) if _is_ip(x)]
    return ips[-1] if ips else None


def _message_hop(ix: _Index, m, match: str) -> Hop:
    s = ix.sessions.get(m.session_id)
    h = Hop(journey_id=0, hop=0, message_id=m.message_id, role="", protocol=m.protocol, outcome="",
            client_ip=m.client_ip or (s.client_ip if s else None),
            client_port=m.client_port or (s.client_port if s else None),
            server_ip=m.server_ip or (s.server_ip if s else None),
            server_port=m.server_port or (s.server_port if s else None), session_id=m.session_id, match=match,
            direction=m.direction, user=m.user if m.user is not None else ix.user(m.session_id), tls=bool(m.tls),
            size=m.size, sha256=m.sha256, command_seq=m.command_seq)
    if m.protocol == "smtp":
        h.start, h.end = ix.smtp_window(m)
        code = m.reply_code
        h.outcome = {"ok": "accepted", "deferred": "deferred", "failed": "rejected"}.get(smtp_outcome(code),
                                                                                      "no_reply")
        h.reply = " ".join(x for x in (code, m.reply_text) if x) or None
        h.queue_id = m.queue_id or queue_id_of(m.reply_text)
        rej = f"refused recipients: {', '.join(m.rcpt_rejected)}" if m.rcpt_rejected else ""
        h.detail = "; ".join(x for x in (f"MAIL FROM:<{m.mail_from or ''}> to {', '.join(m.rcpt_to) or '?'}", rej)
                             if x)
    elif m.protocol == "http":
        req = ix.exchanges.get((m.session_id, m.command_seq)) if m.command_seq is not None else None
        h.start = req.ts if req is not None else m.ts
        # what reached the browser arrives with the response; what it sends is handed over with the request
        if m.direction in ("retrieved", "downloaded"):
            h.end = (req.response_ts if req is not None and req.response_ts else m.ts)
        else:
            h.end = h.start
        h.outcome = {"sent": "sent", "uploaded": "uploaded", "downloaded": "downloaded"}.get(m.direction,
                                                                                            "retrieved")
        if req is not None and req.status is not None:
            h.reply = f"{req.status} {req.reason or ''}".strip()
            if req.status >= 400:
                h.outcome = "failed"
        h.detail = m.source or ""
    else:
        h.start = h.end = m.ts
        h.outcome = {"appended": "stored"}.get(m.direction, "retrieved")
        if m.reply_code and m.reply_code.upper() in ("NO", "BAD", "-ERR"):
            h.outcome = "failed"
        h.reply = " ".join(x for x in (m.reply_code, m.reply_text) if x) or None
        h.detail = m.source or ""
    if not m.complete:
        h.detail = (h.detail + "; " if h.detail else "") + (
            f"incomplete ({m.missing_bytes:,} bytes missing)" if m.missing_bytes else "incomplete")
    return h


# ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Attempt:
    start: float
    end: float
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    session_id: int
    outcome: str
    reply: str
    mail_from: str | None = None
    rcpts: tuple = ()
    tls: bool = False


def _failed_attempts(records, ix: _Index) -> list[_Attempt]:
    """Connections and SMTP sessions that tried to hand over mail and failed before any message."""
    out = []
    for f in records.flows:
        if f.close not in ("refused", "unanswered"):
            continue
        if f.protocol not in ("smtp", "smtps") and f.server_port not in SMTP_PORTS:
            continue
        reply = "connection refused (SYN answered by RST)" if f.close == "refused" else "SYN never answered"
        out.append(_Attempt(f.start, f.end, f.client_ip, f.client_port, f.server_ip, f.server_port, f.flow_id,
                            f.close, reply))
    for s in records.sessions:
        rows = ix.messages.get(s.session_id, ())
        if s.protocol != "smtp" or any(m.kind != "envelope" for m in rows):
            continue  # sessions with message records show as message hops
        flow = ix.flows.get(s.session_id)
        if flow is not None and flow.close in ("refused", "unanswered"):
            continue
        # the session's transactions are its messages rows of kind envelope (they carried no
        # message): the first that was refused tells why the attempt failed
        greeting = next((c for c in ix.commands.get(s.session_id, []) if c.command == ""), None)
        failing = None
        if greeting is not None and smtp_outcome(greeting.reply_code) in ("deferred", "failed"):
            failing = (greeting.reply_code, greeting.reply_text, greeting.reply_ts)
        txn = next((m for m in rows if m.outcome in ("rejected", "no_recipients")), None)
        if failing is None and txn is not None:
            failing = (txn.reply_code, txn.reply_text, None)
        if txn is None:
            txn = next((m for m in rows if m.mail_from is not None), None)
        if failing is None and (txn is None or s.tls):
            # no mail transaction began (a probe, or TLS hid it): not an attempt we can judge
            continue
        if failing is not None:
            outcome = "deferred" if smtp_outcome(failing[0]) == "deferred" else "rejected"
            reply = " ".join(x for x in failing[:2] if x)
        elif txn.outcome == "aborted":
            outcome, reply = "aborted", "the transaction was abandoned before its data (RSET, QUIT...)"
        else:
            outcome, reply = "aborted", "connection closed before a message was accepted"
        end = (flow.end if flow is not None else None) or s.end or (failing[2] if failing else None) or s.start
        mail_from = txn.mail_from.lower() if txn is not None and txn.mail_from is not None else None
        rcpt_addrs = tuple(_bare(a) for a in (txn.rcpt_to + txn.rcpt_rejected)) if txn is not None else ()
        out.append(_Attempt(s.start if s.start is not None else (flow.start if flow else 0.0), end,
                            s.client_ip, s.client_port, s.server_ip, s.server_port, s.session_id, outcome,
                            reply, mail_from, rcpt_addrs, s.tls))
    out.sort(key=lambda a: a.start)
    return out


def _assign_attempts(attempts: list[_Attempt], chains: dict[int, list[Hop]], envelopes: dict) -> dict:
    """journey key -> [(attempt, target hop)], shared out as a queue manager would.

    A journey's accepted SMTP hop is a candidate for an attempt by the same sender
    towards the same server while the message waited in that sender's queue:
    from the end of the hop that brought it there (or MAX_QUEUE_TIME before, when
    no such hop was seen) to the start of the accepted hop. Attempts are swept in
    time order; per sender and server, the waiting candidates sit in two heaps --
    not yet tried (most recently queued first: a queue tries a new message at
    once) and tried (least recently tried first) -- so each attempt costs a few
    heap operations however long the queue.
    """
    import heapq
    targets = []
    for key, hops in chains.items():
        prev_end = None
        for h in hops:
            if h.protocol == "smtp" and h.outcome == "accepted" and h.start is not None:
                begin = prev_end if prev_end is not None else h.start - MAX_QUEUE_TIME
                targets.append((begin - 1e-6, h.start, key, h, prev_end))
            if h.end is not None:
                prev_end = h.end if prev_end is None else max(prev_end, h.end)
    targets.sort(key=lambda t: t[0])
    untried: dict[tuple, list] = defaultdict(list)  # pair -> heap of (-arrival, id)
    tried: dict[tuple, list] = defaultdict(list)  # pair -> heap of (last attempt, id)
    state: dict[int, object] = {}  # id -> "new" or the time of its last attempt; absent once gone
    leaving: list = []  # heap of (hop start, id)
    assigned = defaultdict(list)
    nxt = 0

    def fits(a, tid):
        env = envelopes.get(targets[tid][2])
        if a.mail_from is None or env is None:
            return True
        sender, rcpts = env
        if sender and a.mail_from != sender:
            return False
        return not (a.rcpts and rcpts and not (set(a.rcpts) & rcpts))

    def pick(a, heap, current):
        skipped, found = [], None
        while heap:
            entry = heapq.heappop(heap)
            tid = entry[1]
            if state.get(tid, None) != current(entry):
                continue  # gone, or moved to the other heap: a stale entry
            if fits(a, tid):
                found = tid
                break
            skipped.append(entry)
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found

    for a in attempts:
        while nxt < len(targets) and targets[nxt][0] <= a.start:
            t = targets[nxt]
            pair = (t[3].client_ip, t[3].server_ip, t[3].server_port)
            state[nxt] = "new"
            heapq.heappush(untried[pair], (-(t[4] if t[4] is not None else t[0]), nxt))
            heapq.heappush(leaving, (t[1], nxt))
            nxt += 1
        while leaving and leaving[0][0] <= a.start:
            state.pop(heapq.heappop(leaving)[1], None)
        pair = (a.client_ip, a.server_ip, a.server_port)
        tid = pick(a, untried[pair], lambda e: "new") if pair in untried else None
        if tid is None and pair in tried:
            tid = pick(a, tried[pair], lambda e: e[0])
        if tid is None:
            continue
        state[tid] = a.start
        heapq.heappush(tried[pair], (a.start, tid))
        key, h = targets[tid][2], targets[tid][3]
        assigned[key].append((a, h))
    return assigned


def _attempt_hop(a: _Attempt, target: Hop) -> Hop:
    return Hop(journey_id=0, hop=0, message_id=target.message_id, role="", protocol="smtp", outcome=a.outcome,
               start=a.start, end=a.end, client_ip=a.client_ip, client_port=a.client_port, server_ip=a.server_ip,
               server_port=a.server_port, session_id=a.session_id, reply=a.reply, match="attempt", tls=a.tls,
               detail=(f"MAIL FROM:<{a.mail_from}> to {', '.join(a.rcpts)}" if a.mail_from is not None else ""))


# ---------------------------------------------------------------------------------------------
def _webmail_reads(records, ix: _Index, covered: set) -> list[tuple[str, Hop]]:
    """(message_id, hop) for webmail read pages tied to IMAP UIDs (``mailbox_uid``)."""
    uid_map = defaultdict(lambda: defaultdict(set))  # (server, mailbox, uid) -> user -> Message-IDs
    for ev in records.mailboxes:
        if ev.protocol == "imap" and ev.uid is not None and ev.message_id:
            s = ix.sessions.get(ev.session_id)
            if s is None:
                continue
            uid_map[(s.server_ip, (ev.mailbox or "INBOX").upper(), ev.uid)][(ev.user or "").lower()].add(
                ev.message_id)
    if not uid_map:
        return []
    out = []
    for r in records.http:
        if r.mail_action != "read" or (r.session_id, r.seq) in covered:
            continue
        s = ix.sessions.get(r.session_id)
        if s is None:
            continue
        try:
            q = parse_qs(urlsplit(r.uri).query)
        except ValueError:
            continue
        # isascii: str.isdigit() accepts '²' (from %C2%B2), which int() refuses
        uid = next((v[0] for k, v in q.items() if k.lower() in ("_uid", "uid") and v and v[0].isascii()
                    and v[0].isdigit()), None)
        if uid is None:
            continue
        mbox = next((v[0] for k, v in q.items() if k.lower() in ("_mbox", "mbox", "mailbox") and v), "INBOX")
        user = (s.auth_user or "").lower()
        mids = set()
        for u, ids in uid_map.get((s.server_ip, mbox.upper(), int(uid)), {}).items():
            if not user or not u or u == user:
                mids |= ids
        if len(mids) != 1:
            continue
        mid = next(iter(mids))
        h = Hop(journey_id=0, hop=0, message_id=mid, role="retrieval", protocol="http", outcome="retrieved",
                start=r.ts, end=r.response_ts or r.ts, client_ip=s.client_ip, client_port=s.client_port,
                server_ip=s.server_ip, server_port=s.server_port, session_id=r.session_id, match="mailbox_uid",
                command_seq=r.seq, direction="retrieved", user=s.auth_user, tls=s.tls, size=r.response_size,
                reply=f"{r.status} {r.reason or ''}".strip() if r.status is not None else None,
                detail=f"{r.method} {r.uri} (webmail page showing UID {uid} of {mbox})")
        out.append((mid, h))
    return out


def _roles(hops: list[Hop]) -> None:
    """Set each hop's role (see ROLES) and number SMTP attempts per sender/server pair."""
    servers_seen = set()
    smtp = [h for h in hops if h.protocol == "smtp"]
    for h in hops:
        if h.protocol == "smtp":
            submit = (h.server_port in SUBMISSION_PORTS or bool(h.user)) and h.client_ip not in servers_seen
            h.role = "submission" if submit else "relay"
            if h.outcome == "accepted":
                servers_seen.add(h.server_ip)
        elif h.role:
            pass
        elif h.direction in ("retrieved", "downloaded"):
            h.role = "retrieval"
        elif h.direction == "appended":
            h.role = "append"
        elif h.direction == "sent":
            h.role = "webmail_send"
        elif h.direction == "uploaded":
            h.role = "upload" if h.match == "attachment_sha256" else "transfer"
        else:
            h.role = "transfer"
    # attempts take the role of the hop they tried to make
    pair_role = {}
    for h in smtp:
        if h.outcome == "accepted":
            pair_role[(h.client_ip, h.server_ip, h.server_port)] = h.role
    relays = [h for h in smtp if h.role == "relay" and h.outcome == "accepted"]
    if relays:
        last = relays[-1]
        pair_role[(last.client_ip, last.server_ip, last.server_port)] = "delivery"
        for h in smtp:
            if (h.client_ip, h.server_ip, h.server_port) == (last.client_ip, last.server_ip, last.server_port) \
                    and h.start is not None and last.start is not None and h.start <= last.start:
                h.role = "delivery"
    for h in smtp:
        if h.outcome != "accepted":
            h.role = pair_role.get((h.client_ip, h.server_ip, h.server_port), h.role)
    counters = defaultdict(int)
    for h in smtp:
        k = (h.client_ip, h.server_ip, h.server_port)
        counters[k] += 1
        h.attempt = counters[k]
        if h.outcome == "accepted":
            counters[k] = 0


def _cross_check(journey: Journey, hops: list[Hop], group: list, ix: _Index) -> list[Hop]:
    """Compare the Received headers of the most-travelled copy with the wire; returns header-only hops."""
    ref = max(group, key=lambda m: (len(m.received), m.ts or 0.0))
    claims = list(reversed(ref.received))  # oldest first
    journey.received_hops = len(claims)
    wire = [h for h in hops if h.protocol == "smtp" and h.outcome == "accepted" and h.wire]
    # a copy carries the headers of the hops before it only
    ref_hop = next((h for h in hops if h.session_id == ref.session_id and h.sha256 == ref.sha256
                    and h.match != "attempt"), None)
    if ref_hop is not None and ref_hop.start is not None:
        wire = [h for h in wire if h.start is not None and h.start < ref_hop.start - 1e-9]
    notes: list[str] = []
    if not claims:
        journey.received_check = "no_headers" if wire else "n/a"
        if wire:
            notes.append(f"no Received headers, but {len(wire)} accepted SMTP hop(s) on the wire")
        journey.received_notes = notes
        return []
    matched: dict[int, Hop] = {}
    used = set()
    for i, rec in enumerate(claims):  # by queue id first: the receiving server writes the id it replied with
        if rec.id:
            for h in wire:
                if id(h) not in used and h.queue_id and h.queue_id == rec.id.strip("<>;"):
                    matched[i] = h
                    used.add(id(h))
                    break
    for i, rec in enumerate(claims):  # then by the connecting address, in order
        if i in matched:
            continue
        ip = _received_ip(rec)
        for h in wire:
            if id(h) not in used and ip and h.client_ip == ip:
                matched[i] = h
                used.add(id(h))
                break
    header_only = []
    differs = False
    for i, rec in enumerate(claims):
        h = matched.get(i)
        if h is None:
            header_only.append((i, rec))
            continue
        h.received = rec.raw
        problems = []
        ip = _received_ip(rec)
        if ip and h.client_ip and ip != h.client_ip:
            problems.append(f"header names [{ip}], the connection came from {h.client_ip}")
        with_ = (rec.with_ or "").upper()
        if with_.startswith(("ESMTP", "SMTP", "LMTP")):
            says_tls = "S" in with_[5:] if with_.startswith("ESMTP") else with_.endswith("S")
            says_auth = with_.endswith("A") or with_.endswith("SA")
            if says_tls and h.tls is False:
                problems.append(f"with {rec.with_} claims TLS, the wire shows none")
            if h.tls and not says_tls and with_.startswith("ESMTP"):
                problems.append(f"with {rec.with_} claims no TLS, the session used TLS")
            if says_auth and not h.user:
                problems.append(f"with {rec.with_} claims authentication, none seen on the wire")
            if h.user and not says_auth and with_.startswith("ESMTP") and h.role == "submission":
                problems.append(f"with {rec.with_} claims no authentication, the client authenticated as {h.user}")
        name = ix.server_name(h.server_ip)
        by = (rec.by or "").lower().rstrip(".")
        if name and by and "." in by and name.lower().rstrip(".") != by:
            problems.append(f"by {rec.by}, but the server greeted as {name}")
        when = h.end if h.end is not None else h.start
        if rec.date is not None and when is not None and abs(rec.date - when) > CLOCK_TOLERANCE:
            problems.append(f"dated {rec.date - when:+.0f} s from the wire time")
        if rec.id and h.queue_id and rec.id.strip("<>;") != h.queue_id:
            problems.append(f"id {rec.id}, but the server replied queued as {h.queue_id}")
        h.received_check = "; ".join(problems) if problems else "agrees"
        if problems:
            differs = True
            notes += [f"hop {h.client_ip} \u2192 {h.server_ip}: {p}" for p in problems]
    for h in wire:
        if id(h) not in used:
            differs = True
            h.received_check = "no Received header for this hop"
            notes.append(f"hop {h.client_ip} \u2192 {h.server_ip} (queue id {h.queue_id or '?'}) has no Received "
                         f"header in the latest copy")
    extra = []
    first_wire = min((h.start for h in hops if h.start is not None), default=None)
    prev_t = None
    for k, (i, rec) in enumerate(header_only):
        ip = _received_ip(rec)
        nxt = next((matched[j] for j in range(i + 1, len(claims)) if j in matched), None)
        anchor = nxt.start if nxt is not None and nxt.start is not None else (
            first_wire if first_wire is not None else rec.date)
        if anchor is None:
            anchor = rec.date
        # place the claimed hop at its header date when that keeps the headers' order and stays
        # before the wire hop it precedes; else just before that hop
        if rec.date is not None and anchor is not None and rec.date < anchor and (prev_t is None or
                                                                                 rec.date >= prev_t):
            t = rec.date
        else:
            t = (anchor - 1e-6 * (len(header_only) - k)) if anchor is not None else None
        prev_t = t
        with_ = (rec.with_ or "").upper()
        role = "submission" if with_.startswith("ESMTP") and with_.endswith("A") else \
            "delivery" if with_.startswith("LMTP") else "relay"
        extra.append(Hop(journey_id=0, hop=0, message_id=journey.message_id, role=role, protocol="smtp",
                         outcome="claimed", start=t, end=t, client_ip=ip, server_ip=None, match="received",
                         wire=False, received=rec.raw, queue_id=rec.id, received_check="not on the wire",
                         detail=f"claimed by a Received header: from {rec.from_ or '?'} by {rec.by or '?'}"
                                + (f" at {_fmt_date(rec.date)}" if rec.date else "")))
        notes.append(f"Received header claims a hop not in the capture: from {rec.from_ or '?'} by {rec.by or '?'}")
    journey.received_check = "differs" if differs else ("headers_only" if not matched else "agrees")
    journey.received_notes = notes
    return extra


def _fmt_date(ts) -> str:
    from datetime import datetime, timezone
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "?"


def _summarise(j: Journey, hops: list[Hop], group: list) -> None:
    wire = [h for h in hops if h.wire]
    j.hops = len(wire)
    j.failed_attempts = sum(1 for h in wire if h.protocol == "smtp" and h.outcome not in ("accepted",))
    starts = [h.start for h in wire if h.start is not None]
    ends = [h.end for h in wire if h.end is not None]
    j.first_seen = min(starts) if starts else None
    j.last_seen = max(ends + starts) if (ends or starts) else None
    if j.first_seen is not None and j.last_seen is not None:
        j.duration = j.last_seen - j.first_seen
    # queue time: from the moment a server accepted the message to the start of its successful relay
    q = 0.0
    seen_q = False
    prev_accept = None
    for h in wire:
        if h.protocol == "smtp" and h.outcome == "accepted":
            if h.role in ("relay", "delivery") and prev_accept is not None and h.start is not None:
                q += max(0.0, h.start - prev_accept)
                seen_q = True
            prev_accept = h.end
    j.queue_time = q if seen_q else None
    path = []  # hosts in order of first visit
    for h in wire:
        if h.outcome in ("refused", "unanswered", "deferred", "rejected", "aborted", "no_reply", "failed"):
            continue
        pair = [h.server_ip, h.client_ip] if h.direction in ("retrieved", "downloaded") else [h.client_ip,
                                                                                            h.server_ip]
        for host in pair:
            if host and host not in path:
                path.append(host)
    j.path = " \u2192 ".join(path)
    roles = []
    for h in wire:
        if roles and roles[-1][0] == h.role:
            roles[-1][1] += 1
            if h.outcome == "accepted" or h.outcome not in ("refused", "unanswered", "deferred", "rejected",
                                                              "aborted", "no_reply"):
                roles[-1][2] = True
        else:
            roles.append([h.role, 1, h.outcome not in ("refused", "unanswered", "deferred", "rejected",
                                                       "aborted", "no_reply")])
    parts = []
    for role, n, ok in roles:
        attempts = sum(1 for h in wire if h.role == role and h.protocol == "smtp")
        if role in ("relay", "delivery", "submission") and attempts > 1:
            parts.append(f"{role} ({attempts} attempts{'' if ok else ', failed'})")
        else:
            parts.append(role if n == 1 else f"{role} \u00d7{n}")
    j.roles = " \u2192 ".join(parts)
    j.sha256 = sorted({m.sha256 for m in group if m.sha256})
    bodies = {m.body_sha256 for m in group if m.body_sha256}
    j.body_sha256 = next(iter(bodies)) if len(bodies) == 1 else None
    first = min(group, key=lambda m: m.ts or 0.0)
    j.subject = next((m.subject for m in group if m.subject), None)
    j.from_ = next((m.from_ for m in group if m.from_), None)
    j.mail_from = next((m.mail_from for m in sorted(group, key=lambda m: m.ts or 0.0) if m.mail_from), None)
    rcpts = []
    for m in sorted(group, key=lambda m: m.ts or 0.0):
        for r in m.rcpt_to:
            if r not in rcpts:
                rcpts.append(r)
    j.rcpt_to = rcpts or list(first.to)


def correlate(records, *, window: float = ENVELOPE_WINDOW) -> Journeys:
    """Journeys of every message in ``records`` (a Collector of an analysis).

    ``window``: seconds within which messages without Message-ID or hash are
    matched on envelope and subject.
    """
    from .webmail_backend import submissions
    ix = _Index(records)
    # a header or part fetch without Message-ID (a mailbox listing) starts no journey of its own
    # (an SMTP transaction without a message -- kind envelope -- is an attempt, not a message)
    messages = [m for m in records.messages if _identity(m) and m.kind != "envelope" and not (
        m.kind in PARTIAL_KINDS and m.protocol in ("imap", "pop3") and not m.message_id)]
    loose = [m for m in records.messages if not _identity(m) and m.kind != "envelope"]
    links = [(i, j, "webmail_submission") for i, j in
             submissions(messages, ix.sessions, ix.http, lambda m: ix.smtp_window(m)[0])]
    grouped, how = _group_messages(messages, window, links)
    # each group -> its hops
    chains: dict[int, list[Hop]] = {}
    groups: dict[int, tuple[list, str]] = {}
    for k, (group, weakest) in enumerate(grouped):
        hops = [_message_hop(ix, m, how.get(id(m), "message_id" if m.message_id else weakest)) for m in group]
        chains[k] = hops
        groups[k] = (group, weakest)
    # weak links: webmail reads by mailbox UID, uploads by attachment hash
    by_mid = {}
    for k, (group, _) in groups.items():
        for m in group:
            if m.message_id:
                by_mid.setdefault(normalize_message_id(m.message_id), k)
    # exchanges that carried a message record of their own: their hop is that record's
    covered = {(m.session_id, m.command_seq) for m in records.messages
               if m.protocol == "http" and m.command_seq is not None}
    for mid, hop in _webmail_reads(records, ix, covered):
        k = by_mid.get(normalize_message_id(mid))
        if k is not None:
            chains[k].append(hop)
    att_owner = defaultdict(set)
    for k, (group, _) in groups.items():
        for m in group:
            for a in m.attachments:
                att_owner[a.sha256].add(k)
    for m in loose:
        if m.direction != "uploaded" or not m.attachments:
            continue
        ks = set.intersection(*[att_owner.get(a.sha256, set()) for a in m.attachments])
        ks = {k for k in ks if any(h.start is not None and m.ts is not None and h.start >= m.ts
                                   for h in chains[k])}
        if len(ks) == 1:
            k = next(iter(ks))
            h = _message_hop(ix, m, "attachment_sha256")
            h.message_id = groups[k][0][0].message_id
            h.role = "upload"
            names = ", ".join(a.filename or "?" for a in m.attachments)
            h.detail = f"{m.source or ''}: {names}".strip(": ")
            chains[k].append(h)
    for k in chains:
        chains[k].sort(key=_by_handover)
    # failed attempts
    envelopes = {}
    for k, (group, _) in groups.items():
        sender = next((_bare(m.mail_from) for m in group if m.mail_from), "")
        rcpts = {_bare(r) for m in group for r in (m.rcpt_to + m.rcpt_rejected)} - {""}
        envelopes[k] = (sender, rcpts)
    for k, pairs in _assign_attempts(_failed_attempts(records, ix), chains, envelopes).items():
        for a, target in pairs:
            chains[k].append(_attempt_hop(a, target))
        chains[k].sort(key=_by_handover)
    journeys, all_hops = [], []
    order = sorted(chains, key=lambda k: min((h.start for h in chains[k] if h.start is not None),
                                              default=float("inf")))
    for jid, k in enumerate(order, start=1):
        group, weakest = groups[k]
        hops = chains[k]
        _roles(hops)
        mid = next((m.message_id for m in group if m.message_id), None)
        j = Journey(journey_id=jid, message_id=mid)
        extra = _cross_check(j, hops, group, ix)
        if extra:
            hops = sorted(hops + extra, key=lambda h: (_by_handover(h)[0], 0 if not h.wire else 1))
        # the journey's match is how its message records were grouped; hops tied by weaker
        # links (mailbox UID, attachment hash, attempts, headers) say so in their own match
        j.match = weakest
        prev_end = None
        for n, h in enumerate(hops, start=1):
            h.journey_id, h.hop = jid, n
            if h.message_id is None:
                h.message_id = mid
            if h.start is not None and h.end is not None:
                h.duration = max(0.0, h.end - h.start)
            if h.wire:
                if prev_end is not None and h.end is not None:
                    h.latency = max(0.0, h.end - prev_end)
                if h.end is not None:
                    prev_end = h.end if prev_end is None else max(prev_end, h.end)
        _summarise(j, hops, group)
        journeys.append(j)
        all_hops += hops
    return Journeys(journeys, all_hops)


def _by_handover(h: Hop) -> tuple[float, float]:
    """Hops in order of handover (end of transfer), the one clock every hop has: a webmail
    server's IMAP fetch starts after the browser's request but hands over before the page."""
    inf = float("inf")
    end = h.end if h.end is not None else h.start
    return (end if end is not None else inf, h.start if h.start is not None else inf)


def journey_title(j: Journey) -> str:
    """One line naming a journey: id, Message-ID, subject, roles, queue time and the Received verdict."""
    subj = f" \u201c{j.subject}\u201d" if j.subject else ""
    bits = [j.roles or "no hops"]
    if j.failed_attempts:
        bits.append(f"{j.failed_attempts} failed attempt(s)")
    if j.queue_time is not None:
        bits.append(f"queued {j.queue_time:.3f} s")
    if j.duration is not None:
        bits.append(f"{j.duration:.3f} s end to end")
    if j.match in ("body_sha256", "sha256", "webmail_submission", "envelope"):
        bits.append(f"matched by {j.match}" + (" (weaker)" if j.match == "envelope" else ""))
    if j.received_check and j.received_check != "n/a":
        bits.append(f"Received headers: {j.received_check.replace('_', ' ')}")
    return f"Journey {j.journey_id}: {j.message_id or '(no Message-ID)'}{subj} \u2014 " + "; ".join(bits)
