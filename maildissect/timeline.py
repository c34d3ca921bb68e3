"""The timeline: one row per meaningful event, across every protocol.

:func:`build_events` turns the records of an analysis (flows, sessions,
commands, messages, credentials, HTTP exchanges, anomalies) into a flat,
time-ordered list of :class:`Event` rows: a connection attempt and how it was
answered, the greeting, TLS, authentication, the SMTP envelope and the fate of
each message, IMAP/POP3 mailbox actions, webmail actions, the close and any
anomaly. Nothing here parses bytes: it only reads records the dissectors
already produced, so the timeline can never disagree with the other tables.

Every event name is listed in :data:`EVENTS` with its meaning (docs/report.md
shows the list). Descriptions never contain secrets: authentication events
name the user and mechanism only.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from .redact import masked_argument

#: Event names and what they mean (the ``event`` column).
EVENTS: dict[str, str] = {
    "tcp_connect": "a TCP connection was established (SYN, SYN-ACK, ACK); the description gives the handshake RTT",
    "tcp_midstream": "a connection already open when the capture began (no SYN seen)",
    "tcp_refused": "a connection attempt refused: the SYN was answered by a RST",
    "tcp_unanswered": "a connection attempt never answered: SYN(s) only",
    "greeting": "the server's greeting (SMTP 220, POP3 +OK, IMAP * OK) or its refusal (SMTP 421/554)",
    "helo": "SMTP EHLO/HELO/LHLO: the client names itself",
    "tls_start": "the session switched to TLS (STARTTLS/STLS accepted) or began with implicit TLS",
    "tls_refused": "STARTTLS/STLS was refused by the server",
    "auth_success": "authentication accepted (user and mechanism in the description)",
    "auth_failure": "authentication refused",
    "auth_attempt": "credentials sent, no verdict seen",
    "mail_from": "SMTP MAIL FROM: the envelope sender, with the server's answer",
    "rcpt_accepted": "SMTP RCPT TO accepted",
    "rcpt_rejected": "SMTP RCPT TO refused (4xx: deferred, 5xx: rejected)",
    "data_rejected": "SMTP DATA/BDAT refused before any message content was accepted",
    "message_accepted": "a message transferred over SMTP and accepted (queued, with the queue id when given)",
    "message_deferred": "a message transferred over SMTP and refused with a temporary (4xx) reply",
    "message_rejected": "a message transferred over SMTP and refused with a permanent (5xx) reply",
    "message_unanswered": "a message transferred over SMTP with no final reply seen",
    "transaction_rejected": "an SMTP transaction without a message: its MAIL, DATA or BDAT was refused (its messages "
                            "row, kind `envelope`, outcome `rejected`)",
    "transaction_no_recipients": "an SMTP transaction without a message: every RCPT was refused",
    "transaction_aborted": "an SMTP transaction abandoned before its data (RSET, QUIT, HELO/EHLO, a new MAIL, "
                           "STARTTLS)",
    "transaction_unterminated": "an SMTP transaction cut off by the end of the capture or a gap",
    "imap_select": "IMAP SELECT/EXAMINE of a mailbox",
    "imap_fetch": "IMAP FETCH: a message (or part of one) retrieved, or flags/envelopes fetched",
    "imap_append": "IMAP APPEND: a message stored into a mailbox by the client",
    "imap_store": "IMAP STORE: flags changed",
    "imap_copy": "IMAP COPY/MOVE to another mailbox",
    "imap_expunge": "IMAP EXPUNGE/CLOSE removing deleted messages",
    "pop3_retr": "POP3 RETR: a message retrieved",
    "pop3_top": "POP3 TOP: headers and the first lines of a message retrieved",
    "pop3_dele": "POP3 DELE: a message marked for deletion",
    "webmail": "a webmail action (the description names it: login, list, read, send, upload, download, jmap...)",
    "command_failed": "any other command the server refused (SMTP 4xx/5xx, POP3 -ERR, IMAP NO/BAD, HTTP 4xx/5xx)",
    "tcp_close": "the connection ended with FIN",
    "tcp_reset": "the connection ended with a RST",
    "tcp_timeout": "the connection went idle and was closed by the analyzer's idle timeout",
    "tcp_open": "the connection was still open at the end of the capture",
    "anomaly": "an anomaly (docs/anomalies.md) in the session or the capture",
}

#: Outcome words (the ``outcome`` column).
OUTCOMES = ("ok", "failed", "deferred", "refused", "unanswered", "warning", "")

_CLOSE_EVENTS = {"fin": "tcp_close", "rst": "tcp_reset", "timeout": "tcp_timeout", "open": "tcp_open"}
_IMPLICIT_TLS = {"smtps", "imaps", "pop3s", "https", "tls"}
_QUEUED_RE = re.compile(r"queued as\s+<?([A-Za-z0-9._\-]+)>?|\bid=([A-Za-z0-9._\-]+)", re.I)


@dataclass(slots=True)
class Event:
    """One row of the timeline (the ``events`` table)."""

    ts: float | None
    session_id: int | None
    protocol: str
    client: str  # "ip:port" ("[v6]:port"), empty for capture-level events
    server: str
    event: str  # a name from EVENTS
    outcome: str = ""  # ok, failed, deferred, refused, unanswered, warning or empty
    message_id: str | None = None
    description: str = ""
    actor: str = ""  # who acted: client, server or empty
    client_ip: str | None = None
    client_port: int | None = None
    server_ip: str | None = None
    server_port: int | None = None
    source: str = ""  # the table the event comes from
    order: int = 0  # tie-break within the same instant (position in its session)
    command_seq: int | None = None  # the command or HTTP exchange of the session it comes from


def endpoint(ip: str | None, port: int | None) -> str:
    """``ip:port`` with IPv6 addresses bracketed, as URLs write them."""
    if not ip:
        return ""
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if port is not None else host


def queue_id_of(text: str | None) -> str | None:
    """The queue id in an SMTP final reply ("250 2.0.0 Ok: queued as 4F2D1", "250 OK id=1Mugho-0003Dg-Un")."""
    if not text:
        return None
    m = _QUEUED_RE.search(text)
    return (m.group(1) or m.group(2)) if m else None


def smtp_outcome(code: str | None) -> str:
    """ok / deferred / failed for an SMTP reply code (empty when none)."""
    if not code:
        return ""
    c = code[:1]
    return "ok" if c in "23" else "deferred" if c == "4" else "failed" if c == "5" else ""


def reply_outcome(protocol: str, code: str | None) -> str:
    """ok / failed / deferred for any protocol's reply code."""
    if not code:
        return ""
    if protocol == "smtp":
        return smtp_outcome(code)
    up = code.upper()
    if up in ("+OK", "OK", "PREAUTH"):
        return "ok"
    if up in ("-ERR", "NO", "BAD", "BYE"):
        return "failed"
    if code.isdigit():  # HTTP status
        return "ok" if code[0] in "123" else "failed"
    return ""


def _size(n) -> str:
    return f"{n:,} bytes" if n is not None else "size unknown"


def _reply(code, text) -> str:
    return " ".join(x for x in (code or "", text or "") if x).strip()


def _short(text: str | None, n: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


class _Ctx:
    """Per-session lookups shared by the event builders.

    Records of one session are joined on the keys the dissectors set (the
    command that carried a message, the SMTP transaction), looked up in dicts.
    """

    def __init__(self, records):
        self.sessions = {s.session_id: s for s in records.sessions}
        self.flows = {f.flow_id: f for f in records.flows}
        self.messages = defaultdict(list)
        self.carried = defaultdict(list)  # (session, command seq) -> messages that command carried
        for m in records.messages:
            self.messages[m.session_id].append(m)
            if m.command_seq is not None:
                self.carried[(m.session_id, m.command_seq)].append(m)
        for lst in self.messages.values():
            lst.sort(key=lambda m: (m.ts if m.ts is not None else 0.0, m.message_index))
        self.commands = defaultdict(list)
        for c in records.commands:
            self.commands[c.session_id].append(c)
        for lst in self.commands.values():
            lst.sort(key=lambda c: c.ts if c.ts is not None else 0.0)

    def endpoints(self, session_id):
        s = self.sessions.get(session_id)
        if s is not None:
            return s.protocol, s.client_ip, s.client_port, s.server_ip, s.server_port
        f = self.flows.get(session_id)
        if f is not None:
            return f.protocol or "", f.client_ip, f.client_port, f.server_ip, f.server_port
        return "", None, None, None, None

    def event(self, ts, session_id, name, outcome="", message_id=None, description="", actor="",
              source="", order=0, protocol=None, command_seq=None) -> Event:
        proto, cip, cport, sip, sport = self.endpoints(session_id)
        return Event(ts=ts, session_id=session_id, protocol=protocol or proto, client=endpoint(cip, cport),
                     server=endpoint(sip, sport), event=name, outcome=outcome, message_id=message_id,
                     description=description, actor=actor, client_ip=cip, client_port=cport, server_ip=sip,
                     server_port=sport, source=source, order=order, command_seq=command_seq)


# -- flows ----------------------------------------------------------------------------------
def _flow_events(ctx: _Ctx, flow) -> list[Event]:
    out = []
    sid = flow.flow_id
    proto = flow.protocol or ""
    if flow.close == "refused":
        out.append(ctx.event(flow.start, sid, "tcp_refused", "refused", actor="server", source="flows",
                             description="connection refused (SYN answered by RST)", protocol=proto))
        return out
    if flow.close == "unanswered":
        out.append(ctx.event(flow.start, sid, "tcp_unanswered", "unanswered", actor="client", source="flows",
                             description=f"SYN never answered ({flow.packets} packet(s) in "
                                         f"{max(0.0, flow.end - flow.start):.3f} s)", protocol=proto))
        return out
    if flow.syn_seen and flow.handshake_rtt is not None:
        out.append(ctx.event(flow.start, sid, "tcp_connect", "ok", actor="client", source="flows", order=-3,
                             description=f"connected (three-way handshake "
                                         f"{flow.handshake_rtt * 1000:.3f} ms)", protocol=proto))
    elif flow.syn_seen:
        out.append(ctx.event(flow.start, sid, "tcp_connect", "ok", actor="client", source="flows", order=-3,
                             description="SYN seen, handshake incomplete", protocol=proto))
    else:
        out.append(ctx.event(flow.start, sid, "tcp_midstream", "", actor="", source="flows", order=-3,
                             description="already open when the capture began", protocol=proto))
    name = _CLOSE_EVENTS.get(flow.close, "tcp_close")
    dur = max(0.0, flow.end - flow.start)
    text = {"tcp_close": f"closed (FIN) after {dur:.3f} s",
            "tcp_reset": f"reset (RST) after {dur:.3f} s",
            "tcp_timeout": f"idle, timed out after {dur:.3f} s",
            "tcp_open": f"still open at the end of the capture ({dur:.3f} s)"}[name]
    gaps = f"; {flow.gap_bytes:,} bytes never captured" if flow.gaps else ""
    out.append(ctx.event(flow.end, sid, name, "warning" if name == "tcp_reset" else "", source="flows",
                         order=10 ** 6, description=f"{text}, {flow.packets} packets{gaps}",
                         protocol=proto))
    return out


# -- commands ---------------------------------------------------------------------------------
_ENVELOPE_VERBS = ("MAIL", "RCPT", "DATA", "BDAT", ".")


def _smtp_transactions(cmds: list, msgs: list) -> dict[int, str | None]:
    """Command index -> Message-ID of the mail transaction it belongs to.

    Commands and messages carry their transaction (``transaction``, set by the
    dissector); a transaction's Message-ID is that of its first message.
    """
    mids: dict[int, str | None] = {}
    for m in msgs:  # in time order
        if m.transaction is not None and m.transaction not in mids:
            mids[m.transaction] = m.message_id
    if not mids:
        return {}
    return {i: mids[c.transaction] for i, c in enumerate(cmds)
            if c.transaction in mids and c.command in _ENVELOPE_VERBS}


def _message_covers(ctx: _Ctx, cmd) -> bool:
    """A message of the session was transferred by this command (its ``command_seq``)."""
    return cmd.seq is not None and (cmd.session_id, cmd.seq) in ctx.carried


def _command_events(ctx: _Ctx, session_id: int, cmds: list) -> list[Event]:
    out = []
    proto = ctx.endpoints(session_id)[0]
    msgs = ctx.messages.get(session_id, [])
    txn = _smtp_transactions(cmds, [m for m in msgs if m.protocol == "smtp"]) if proto == "smtp" else {}
    for i, c in enumerate(cmds):
        verb = c.command or ""
        code, text = c.reply_code, c.reply_text
        outcome = reply_outcome(c.protocol, code)
        reply = _reply(code, text)
        when = c.ts
        arg = _short(masked_argument(c), 70)  # descriptions never show a secret
        if verb == "":
            out.append(ctx.event(c.reply_ts or c.ts, session_id, "greeting", outcome or "ok", actor="server",
                                 source="commands", order=i, description=_short(reply, 120), command_seq=c.seq))
            continue
        e = None
        if c.protocol == "smtp":
            if verb in ("EHLO", "HELO", "LHLO"):
                e = ("helo", f"{verb} {arg} \u2192 {_short(reply, 60)}")
            elif verb == "STARTTLS":
                e = ("tls_start" if outcome == "ok" else "tls_refused", f"STARTTLS \u2192 {_short(reply, 60)}")
            elif verb == "MAIL":
                e = ("mail_from", f"MAIL {arg} \u2192 {_short(reply, 60)}")
            elif verb == "RCPT":
                e = ("rcpt_accepted" if outcome == "ok" else "rcpt_rejected", f"RCPT {arg} \u2192 {_short(reply, 60)}")
            elif verb in ("DATA", "BDAT") and outcome in ("failed", "deferred") and not _message_covers(ctx, c):
                e = ("data_rejected", f"{verb} {arg} \u2192 {_short(reply, 60)}".replace("  ", " "))
            elif verb in ("DATA", "BDAT", ".", "QUIT", "RSET", "NOOP", "AUTH"):
                e = None  # the message and credential events tell these
            elif outcome in ("failed", "deferred"):
                e = ("command_failed", f"{verb} {arg} \u2192 {_short(reply, 60)}")
        elif c.protocol == "imap":
            base = verb[4:] if verb.startswith("UID ") else verb
            if base in ("SELECT", "EXAMINE"):
                e = ("imap_select", f"{verb} {arg} \u2192 {_short(reply, 60)}")
            elif base == "STARTTLS":
                e = ("tls_start" if outcome == "ok" else "tls_refused", f"STARTTLS \u2192 {_short(reply, 60)}")
            elif base == "FETCH":
                if not _message_covers(ctx, c):
                    e = ("imap_fetch", f"{verb} {arg} \u2192 {_short(reply, 60)}")
            elif base == "APPEND":
                if not _message_covers(ctx, c):
                    e = ("imap_append", f"APPEND {arg} \u2192 {_short(reply, 60)}")
            elif base == "STORE":
                e = ("imap_store", f"{verb} {arg} \u2192 {_short(reply, 60)}")
            elif base in ("COPY", "MOVE"):
                e = ("imap_copy", f"{verb} {arg} \u2192 {_short(reply, 60)}")
            elif base in ("EXPUNGE", "CLOSE"):
                e = ("imap_expunge", f"{verb} {arg} \u2192 {_short(reply, 60)}".replace("  ", " "))
            elif base in ("LOGIN", "AUTHENTICATE", "LOGOUT", "CAPABILITY", "NOOP", "IDLE", "ID"):
                e = None
            elif outcome == "failed":
                e = ("command_failed", f"{verb} {arg} \u2192 {_short(reply, 60)}")
        elif c.protocol == "pop3":
            if verb == "STLS":
                e = ("tls_start" if outcome == "ok" else "tls_refused", f"STLS \u2192 {_short(reply, 60)}")
            elif verb in ("RETR", "TOP"):
                if not _message_covers(ctx, c):
                    e = ("pop3_retr" if verb == "RETR" else "pop3_top", f"{verb} {arg} \u2192 {_short(reply, 60)}")
            elif verb == "DELE":
                e = ("pop3_dele", f"DELE {arg} \u2192 {_short(reply, 60)}")
            elif verb in ("USER", "PASS", "APOP", "AUTH", "QUIT", "NOOP", "CAPA"):
                e = None
            elif outcome == "failed":
                e = ("command_failed", f"{verb} {arg} \u2192 {_short(reply, 60)}")
        if e is None:
            continue
        name, desc = e
        if name in ("command_failed",) and outcome == "deferred":
            outcome_word = "deferred"
        else:
            outcome_word = outcome
        out.append(ctx.event(when, session_id, name, outcome_word, message_id=txn.get(i), actor="client",
                             source="commands", order=i, description=" ".join(desc.split()), command_seq=c.seq))
    return out


# -- messages ---------------------------------------------------------------------------------
#: an SMTP transaction without a message, by its outcome: (event, event outcome, how it ended)
_TRANSACTION_EVENTS = {
    "rejected": ("transaction_rejected", "failed", "refused"),
    "no_recipients": ("transaction_no_recipients", "failed", "no recipient accepted"),
    "aborted": ("transaction_aborted", "", "abandoned before its data"),
    "unterminated": ("transaction_unterminated", "unanswered", "cut off by the capture's end or a gap"),
}


def _transaction_event(ctx: _Ctx, m) -> Event:
    """An SMTP transaction that carried no message (its messages row of kind envelope)."""
    name, outcome, how = _TRANSACTION_EVENTS.get(m.outcome or "", _TRANSACTION_EVENTS["unterminated"])
    if outcome == "failed" and smtp_outcome(m.reply_code) == "deferred":
        outcome = "deferred"
    sender = f"MAIL FROM:<{_short(m.mail_from, 60)}>" if m.mail_from is not None else "no MAIL FROM seen"
    rcpts = f"{len(m.rcpt_to)} recipient(s) accepted" + (f", {len(m.rcpt_rejected)} refused"
                                                           if m.rcpt_rejected else "")
    reply = _reply(m.reply_code, m.reply_text)
    return ctx.event(m.ts, m.session_id, name, outcome, actor="client", source="messages", order=10 ** 5,
                     command_seq=m.command_seq,
                     description=f"transaction {m.transaction}: {sender}, {rcpts}; {how}"
                                 + (f" ({_short(reply, 60)})" if reply else ""))


def _message_event(ctx: _Ctx, m) -> Event | None:
    size = _size(m.size)
    atts = f", {len(m.attachments)} attachment(s)" if m.attachments else ""
    part = "" if m.complete else f", incomplete ({m.missing_bytes:,} bytes missing)" if m.missing_bytes else ", incomplete"
    mid = m.message_id
    label = f"message {mid}" if mid else "message without Message-ID"
    subj = f" \u201c{_short(m.subject, 50)}\u201d" if m.subject else ""
    if m.protocol == "smtp" and m.kind == "envelope":
        return _transaction_event(ctx, m)
    if m.protocol == "smtp":
        outcome = smtp_outcome(m.reply_code)
        name = {"ok": "message_accepted", "deferred": "message_deferred",
                "failed": "message_rejected"}.get(outcome, "message_unanswered")
        reply = _reply(m.reply_code, m.reply_text) or "no final reply seen"
        rej = f"; refused recipients: {', '.join(m.rcpt_rejected)}" if m.rcpt_rejected else ""
        return ctx.event(m.ts, m.session_id, name, outcome or "unanswered", message_id=mid, actor="client",
                         source="messages", order=10 ** 5, command_seq=m.command_seq,
                         description=f"{label}{subj} ({size}{atts}{part}) \u2192 {_short(reply, 70)}{rej}")
    src = _short(m.source, 60)
    if m.protocol == "imap":
        name = "imap_append" if m.direction == "appended" else "imap_fetch"
        verb = "stored" if m.direction == "appended" else "retrieved"
    elif m.protocol == "pop3":
        name = "pop3_top" if (m.kind or "").lower() == "top" or (m.source or "").upper().startswith("TOP") \
            else "pop3_retr"
        verb = "retrieved"
    else:
        return None  # HTTP messages are told by their webmail exchange (see _http_events)
    outcome = reply_outcome(m.protocol, m.reply_code) or "ok"
    return ctx.event(m.ts, m.session_id, name, outcome, message_id=mid,
                     actor="client" if m.direction == "appended" else "server", source="messages",
                     order=10 ** 5, command_seq=m.command_seq,
                     description=f"{src}: {label}{subj} {verb} ({size}{atts}{part})")


def _http_events(ctx: _Ctx, session_id: int, reqs: list) -> list[Event]:
    out = []
    msgs = [m for m in ctx.messages.get(session_id, []) if m.protocol == "http"]
    used = set()
    for i, r in enumerate(reqs):
        status = str(r.status) if r.status is not None else None
        outcome = reply_outcome("http", status)
        source = f"{r.method} {r.uri}"
        # the messages this exchange carried (their command_seq), told by its request line
        carried = [m for m in ctx.carried.get((session_id, r.seq), ()) if m.protocol == "http"
                   and m.source == source] if r.seq is not None else []
        for m in carried:
            used.add(id(m))
        if r.mail_action is None and not carried:
            if outcome == "failed":
                out.append(ctx.event(r.ts, session_id, "command_failed", "failed", actor="client", source="http",
                                     order=i, command_seq=r.seq,
                                     description=f"{r.method} {_short(r.uri, 60)} \u2192 {status} "
                                                 f"{r.reason or ''}".strip()))
            continue
        action = r.mail_action or "message"
        mids = [m.message_id for m in carried if m.message_id]
        what = ""
        if carried:
            m = carried[0]
            label = f"message {m.message_id}" if m.message_id else "a file" if m.direction == "uploaded" \
                else "message without Message-ID"
            how = ("compose form" if m.direction == "sent" else "page view") if not m.size else _size(m.size)
            what = f": {label} {m.direction} ({how})"
        out.append(ctx.event(r.ts, session_id, "webmail", outcome or "ok", message_id=mids[0] if mids else None,
                             actor="client", source="http", order=i, command_seq=r.seq,
                             description=f"{action}: {r.method} {_short(r.uri, 60)} \u2192 "
                                         f"{status or 'no response'}{what}"))
    for m in msgs:  # messages not tied to a request line (e.g. HTTP/2 streams)
        if id(m) in used:
            continue
        out.append(ctx.event(m.ts, session_id, "webmail", "ok", message_id=m.message_id, actor="client",
                             source="messages", order=10 ** 5, command_seq=m.command_seq,
                             description=f"{m.kind or 'message'}: {m.message_id or 'message'} {m.direction} "
                                         f"({_size(m.size)})"))
    return out


def _credential_event(ctx: _Ctx, c) -> Event:
    who = c.user or "unknown user"
    if c.success is True:
        name, outcome, verdict = "auth_success", "ok", "accepted"
    elif c.success is False:
        name, outcome, verdict = "auth_failure", "failed", "refused"
    else:
        name, outcome, verdict = "auth_attempt", "", "no verdict seen"
    return ctx.event(c.ts, c.session_id, name, outcome, actor="client", source="credentials", order=0,
                     description=f"{c.mechanism} as {who}: {verdict}")


def _tls_events(ctx: _Ctx, sessions: list) -> list[Event]:
    """Implicit TLS (smtps, imaps...) shows at the connection's start."""
    out = []
    for s in sessions:
        f = ctx.flows.get(s.session_id)
        if f is not None and s.tls and f.protocol in _IMPLICIT_TLS:
            bits = ", ".join(x for x in (s.tls_version, f"SNI {s.sni}" if s.sni else "",
                                         f"ALPN {s.alpn}" if s.alpn else "") if x)
            out.append(ctx.event(s.start, s.session_id, "tls_start", "ok", actor="client", source="sessions",
                                 order=-1, description=f"implicit TLS ({f.protocol}){': ' + bits if bits else ''}"))
    return out


def _anomaly_event(ctx: _Ctx, a) -> Event:
    return ctx.event(a.ts, a.session_id, "anomaly", "warning", actor=a.side or "", source="anomalies",
                     order=10 ** 5 + 1, description=_short(f"{a.name}: {a.detail}" if a.detail else a.name, 160))


def build_events(records, journeys=None) -> list[Event]:
    """All events of an analysis's records (a :class:`maildissect.pipeline.Collector`), in time order.

    With ``journeys`` (a :class:`maildissect.correlate.Journeys`), events the
    records cannot tie to a message by themselves get the Message-ID their
    journey attributes to them: a refused or unanswered connection (or a
    failed SMTP session) counted as a delivery attempt, and a webmail page
    showing a message identified by its IMAP UID.
    """
    ctx = _Ctx(records)
    out: list[Event] = []
    for f in records.flows:
        out += _flow_events(ctx, f)
    out += _tls_events(ctx, records.sessions)
    for sid, cmds in ctx.commands.items():
        out += _command_events(ctx, sid, cmds)
    for m in records.messages:
        e = _message_event(ctx, m)
        if e is not None:
            out.append(e)
    http = defaultdict(list)
    for r in records.http:
        http[r.session_id].append(r)
    for sid, reqs in http.items():
        out += _http_events(ctx, sid, sorted(reqs, key=lambda r: r.ts))
    # HTTP messages of sessions with no request records at all
    for sid, msgs in ctx.messages.items():
        if sid not in http and any(m.protocol == "http" for m in msgs):
            out += _http_events(ctx, sid, [])
    for c in records.credentials:
        out.append(_credential_event(ctx, c))
    for a in records.anomalies:
        out.append(_anomaly_event(ctx, a))
    if journeys is not None:
        _attribute(out, journeys)
    out.sort(key=lambda e: (e.ts if e.ts is not None else float("-inf"),
                            -1 if e.session_id is None else e.session_id, e.order))
    return out


def _attribute(events: list[Event], journeys) -> None:
    attempts = {}
    reads = {}  # (session, exchange) of a webmail page tied to a message by its IMAP UID
    for h in journeys.hops:
        if h.match == "attempt" and h.session_id is not None:
            attempts[h.session_id] = h.message_id
        elif h.match == "mailbox_uid" and h.session_id is not None and h.command_seq is not None:
            reads[(h.session_id, h.command_seq)] = h.message_id
    for e in events:
        if e.message_id is not None or e.session_id is None:
            continue
        if e.session_id in attempts and e.event in ("tcp_refused", "tcp_unanswered", "mail_from", "rcpt_rejected",
                                                    "rcpt_accepted", "data_rejected", "greeting"):
            e.message_id = attempts[e.session_id]
        elif e.event == "webmail" and e.command_seq is not None:
            mid = reads.get((e.session_id, e.command_seq))
            if mid:
                e.message_id = mid


def filter_events(events: list[Event], message_id: str | None = None, session_id: int | None = None,
                  sessions_of_message: set | None = None) -> list[Event]:
    """Events of one message and/or one session.

    ``message_id`` matches with or without angle brackets, case-insensitively;
    when no Message-ID equals it, a substring match is used. With
    ``sessions_of_message`` (the sessions a journey passed through, including
    failed attempts) the connection events of those sessions are kept too, so
    the story of a message includes its refused connections and closes.
    """
    out = events
    if session_id is not None:
        out = [e for e in out if e.session_id == session_id]
    if message_id:
        want = normalize_message_id(message_id)
        exact = {e.message_id for e in out if e.message_id and normalize_message_id(e.message_id) == want}
        if not exact:
            exact = {e.message_id for e in out if e.message_id and want in normalize_message_id(e.message_id)}
        sess = sessions_of_message or set()
        out = [e for e in out if (e.message_id in exact) or
               (e.session_id in sess and e.message_id is None and
                (e.source in ("flows", "sessions", "credentials") or e.event in ("greeting", "helo", "tls_start")))]
    return out


def normalize_message_id(value: str | None) -> str:
    """A Message-ID without angle brackets and surrounding space, lower-cased (for matching)."""
    return (value or "").strip().strip("<>").strip().lower()
