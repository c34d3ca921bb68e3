"""Zeek-compatible logs: conn, smtp, files, http, ssl, weird and socks, and Zeek-style pop3.log and imap.log.

Zeek's split between analysis and logging is the model of this project; this
module is the logging half for people whose tooling reads Zeek logs
(zeek-cut, RITA, Security Onion, Splunk/Elastic Zeek parsers). Field names,
order and types follow the logs current Zeek writes (base/protocols/conn,
base/protocols/smtp, base/frameworks/files with base/files/hash and extract);
where maildissect knows less than Zeek the field is unset (``-``), and where
Zeek has no log (POP3 and IMAP only raise events in Zeek) the logs follow
Zeek's ftp.log shape: one line per command with its reply.

Two writers: TSV exactly as Zeek's ASCII writer (``#separator \\x09`` header,
``-`` for unset, ``(empty)`` for empty sets, ``\\xNN`` escapes) and JSON lines
as Zeek's JSON writer (``"id.orig_h"`` keys, epoch-float ``ts``, unset fields
left out). ``uid`` and ``fuid`` are deterministic Zeek-style ids derived from
the connection (endpoints and first-packet time) and the file (its
connection, message and hash), so the logs of one capture always agree with
each other and with a second run. docs/report.md lists the differences from
Zeek field by field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from datetime import datetime, timezone


# (field, Zeek type) in Zeek's order
CONN_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("proto", "enum"), ("service", "string"), ("duration", "interval"),
    ("orig_bytes", "count"), ("resp_bytes", "count"), ("conn_state", "string"), ("local_orig", "bool"),
    ("local_resp", "bool"), ("missed_bytes", "count"), ("history", "string"), ("orig_pkts", "count"),
    ("orig_ip_bytes", "count"), ("resp_pkts", "count"), ("resp_ip_bytes", "count"),
    ("tunnel_parents", "set[string]"), ("ip_proto", "count"),
]
SMTP_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("trans_depth", "count"), ("helo", "string"), ("mailfrom", "string"),
    ("rcptto", "set[string]"), ("date", "string"), ("from", "string"), ("to", "set[string]"),
    ("cc", "set[string]"), ("reply_to", "string"), ("msg_id", "string"), ("in_reply_to", "string"),
    ("subject", "string"), ("x_originating_ip", "addr"), ("first_received", "string"),
    ("second_received", "string"), ("last_reply", "string"), ("path", "vector[addr]"),
    ("user_agent", "string"), ("tls", "bool"), ("fuids", "vector[string]"),
]
FILES_FIELDS = [
    ("ts", "time"), ("fuid", "string"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
    ("id.resp_h", "addr"), ("id.resp_p", "port"), ("source", "string"), ("depth", "count"),
    ("analyzers", "set[string]"), ("mime_type", "string"), ("filename", "string"), ("duration", "interval"),
    ("local_orig", "bool"), ("is_orig", "bool"), ("seen_bytes", "count"), ("total_bytes", "count"),
    ("missing_bytes", "count"), ("overflow_bytes", "count"), ("timedout", "bool"), ("parent_fuid", "string"),
    ("md5", "string"), ("sha1", "string"), ("sha256", "string"), ("extracted", "string"),
    ("extracted_cutoff", "bool"), ("extracted_size", "count"),
]
_CMD_HEAD = [("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
             ("id.resp_h", "addr"), ("id.resp_p", "port"), ("user", "string")]
_CMD_TAIL = [("status", "string"), ("reply_msg", "string"), ("msg_id", "string"), ("subject", "string"),
             ("size", "count"), ("fuids", "vector[string]"), ("tls", "bool")]
POP3_FIELDS = _CMD_HEAD + [("command", "string"), ("arg", "string")] + _CMD_TAIL
IMAP_FIELDS = _CMD_HEAD + [("tag", "string"), ("command", "string"), ("arg", "string"),
                           ("mailbox", "string")] + _CMD_TAIL

SOCKS_FIELDS = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("version", "count"), ("user", "string"), ("password", "string"), ("status", "string"),
    ("request.host", "addr"), ("request.name", "string"), ("request_p", "port"), ("bound.host", "addr"),
    ("bound.name", "string"), ("bound_p", "port"),
]

_ID = [("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"), ("id.resp_p", "port")]
HTTP_FIELDS = [
    ("ts", "time"), ("uid", "string"), *_ID, ("trans_depth", "count"), ("method", "string"), ("host", "string"),
    ("uri", "string"), ("referrer", "string"), ("version", "string"), ("user_agent", "string"),
    ("origin", "string"), ("request_body_len", "count"), ("response_body_len", "count"), ("status_code", "count"),
    ("status_msg", "string"), ("info_code", "count"), ("info_msg", "string"), ("tags", "set[enum]"),
    ("username", "string"), ("password", "string"), ("proxied", "set[string]"), ("orig_fuids", "vector[string]"),
    ("orig_filenames", "vector[string]"), ("orig_mime_types", "vector[string]"), ("resp_fuids", "vector[string]"),
    ("resp_filenames", "vector[string]"), ("resp_mime_types", "vector[string]"),
]
SSL_FIELDS = [
    ("ts", "time"), ("uid", "string"), *_ID, ("version", "string"), ("cipher", "string"), ("curve", "string"),
    ("server_name", "string"), ("resumed", "bool"), ("last_alert", "string"), ("next_protocol", "string"),
    ("established", "bool"), ("ssl_history", "string"), ("cert_chain_fps", "vector[string]"),
    ("client_cert_chain_fps", "vector[string]"), ("sni_matches_cert", "bool"),
]
WEIRD_FIELDS = [
    ("ts", "time"), ("uid", "string"), *_ID, ("name", "string"), ("addl", "string"), ("notice", "bool"),
    ("peer", "string"), ("source", "string"),
]

LOGS = {"conn": CONN_FIELDS, "smtp": SMTP_FIELDS, "files": FILES_FIELDS, "pop3": POP3_FIELDS,
        "imap": IMAP_FIELDS, "http": HTTP_FIELDS, "ssl": SSL_FIELDS, "weird": WEIRD_FIELDS,
        "socks": SOCKS_FIELDS}

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SERVICE = {"smtp": "smtp", "imap": "imap", "pop3": "pop3", "http": "http", "smtps": "ssl", "imaps": "ssl",
            "pop3s": "ssl", "https": "ssl", "tls": "ssl", "socks": "socks"}
_EMAIL_RE = re.compile(r"<([^<>\s]*@[^<>\s]*)>|([^\s<>,;:\"]+@[^\s<>,;:\"]+)")
_IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")


def _b62(data: bytes, length: int) -> str:
    n = int.from_bytes(data, "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "".join(out)


def conn_uid(client_ip, client_port, server_ip, server_port, start) -> str:
    """A Zeek-style connection uid ("C" + 17 base62 characters) derived from the connection's identity."""
    key = f"{client_ip}|{client_port}|{server_ip}|{server_port}|{start:.6f}".encode()
    return "C" + _b62(hashlib.sha256(key).digest()[:13], 17)


def file_uid(uid: str, *parts) -> str:
    """A Zeek-style file id ("F" + 17 base62 characters) from its connection uid and what identifies the file."""
    key = "|".join([uid] + [str(p) for p in parts]).encode()
    return "F" + _b62(hashlib.sha256(key).digest()[:13], 17)


# -- value formatting ---------------------------------------------------------------------------
def _escape(text: str, in_set: bool = False) -> str:
    """Zeek's ASCII writer escaping: backslash, separators and non-printable bytes as \\xNN."""
    out = []
    for b in text.encode("utf-8", "surrogateescape"):
        if b == 0x5C:
            out.append("\\\\")
        elif b < 0x20 or b >= 0x7F or (in_set and b == 0x2C):
            out.append(f"\\x{b:02x}")
        else:
            out.append(chr(b))
    s = "".join(out)
    if s in ("-", "(empty)") and not in_set:
        s = "\\x" + f"{ord(s[0]):02x}" + s[1:]
    return s


def _tsv_value(value, ztype: str) -> str:
    if value is None:
        return "-"
    if ztype.startswith(("set[", "vector[")):
        items = list(value)
        if not items:
            return "(empty)"
        return ",".join(_escape(str(x), in_set=True) for x in items)
    if ztype in ("time", "interval"):
        return f"{float(value):.6f}"
    if ztype == "bool":
        return "T" if value else "F"
    if ztype in ("count", "port", "int"):
        return str(int(value))
    return _escape(str(value))


def _json_value(value, ztype: str):
    if ztype.startswith(("set[", "vector[")):
        return [str(x) for x in value]
    if ztype in ("time", "interval"):
        return round(float(value), 6)
    if ztype == "bool":
        return bool(value)
    if ztype in ("count", "port", "int"):
        return int(value)
    return str(value)


def _stamp(ts) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d-%H-%M-%S")
    except (TypeError, OverflowError, OSError, ValueError):
        return datetime.fromtimestamp(0, timezone.utc).strftime("%Y-%m-%d-%H-%M-%S")


def write_tsv(path: str, log: str, rows: list[dict], open_ts=None, close_ts=None) -> None:
    """Write ``rows`` as a Zeek ASCII (TSV) log with the standard header.

    ``#open``/``#close`` carry the capture's first and last packet times
    rather than the wall clock, so a capture always exports to the same bytes.
    """
    fields = LOGS[log]
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n")
        f.write(f"#path\t{log}\n#open\t{_stamp(open_ts)}\n")
        f.write("#fields\t" + "\t".join(n for n, _ in fields) + "\n")
        f.write("#types\t" + "\t".join(t for _, t in fields) + "\n")
        for row in rows:
            f.write("\t".join(_tsv_value(row.get(n), t) for n, t in fields) + "\n")
        f.write(f"#close\t{_stamp(close_ts)}\n")


def write_json(path: str, log: str, rows: list[dict]) -> None:
    """Write ``rows`` as Zeek JSON logs: one object per line, unset fields left out."""
    fields = LOGS[log]
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            obj = {}
            for n, t in fields:
                v = row.get(n)
                if v is None:
                    continue
                obj[n] = _json_value(v, t)
            f.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")


# -- rows ---------------------------------------------------------------------------------------
class _Uids:
    def __init__(self, records):
        self.by_session = {}
        for f in records.flows:
            self.by_session[f.flow_id] = conn_uid(f.client_ip, f.client_port, f.server_ip, f.server_port, f.start)
        for s in records.sessions:
            if s.session_id not in self.by_session:
                self.by_session[s.session_id] = conn_uid(s.client_ip, s.client_port, s.server_ip, s.server_port,
                                                         s.start or 0.0)

    def __getitem__(self, sid):
        return self.by_session.get(sid) or conn_uid("?", 0, "?", 0, float(sid or 0))


def _ids(obj) -> dict:
    return {"id.orig_h": obj.client_ip, "id.orig_p": obj.client_port, "id.resp_h": obj.server_ip,
            "id.resp_p": obj.server_port}


def _conn_state(flow, pk) -> str:
    """Zeek's conn_state from the control packets seen (or from the close reason alone)."""
    if pk is None:
        return {"refused": "REJ", "unanswered": "S0", "fin": "SF" if flow.syn_seen else "OTH",
                "rst": "RSTO" if flow.syn_seen else "OTH"}.get(
            flow.close, "S1" if flow.syn_seen and flow.handshake_rtt is not None else "OTH")
    h = pk.history
    orig_syn, resp_synack = "S" in h, "h" in h
    orig_act = any(x in h for x in "SDAF")
    resp_act = any(x in h for x in "hdaf")
    orig_fin, resp_fin = "F" in h, "f" in h
    orig_rst, resp_rst = "R" in h, "r" in h
    if resp_rst:
        if orig_syn and not resp_synack and "D" not in h:
            return "REJ"
        return "RSTRH" if not orig_act else "RSTR"
    if orig_rst:
        if not resp_act:
            return "RSTOS0" if orig_syn else "OTH"
        return "RSTO"
    if orig_fin and resp_fin:
        return "SF"
    if orig_fin:
        return "SH" if not resp_act else "S2"
    if resp_fin:
        return "SHR" if not orig_act else "S3"
    if orig_syn and not resp_act:
        return "S0"
    if orig_syn and resp_synack:
        return "S1"
    return "OTH"


def conn_rows(records, packets: dict | None = None) -> list[dict]:
    """conn.log rows, one per TCP connection, in order of first packet."""
    uids = _Uids(records)
    sessions = {s.session_id: s for s in records.sessions}
    rows = []
    for f in sorted(records.flows, key=lambda f: (f.start, f.flow_id)):
        pk = (packets or {}).get(f.flow_id)
        service = _SERVICE.get(f.protocol or "")
        s = sessions.get(f.flow_id)
        if service and service != "ssl" and s is not None and s.tls:
            service += ",ssl"
        if s is not None and s.tunnel:
            # the proxy's protocol after the one inside its tunnel, as Zeek lists them ("smtp,http")
            outer = "http" if s.tunnel == "http-connect" else "socks"
            service = f"{service},{outer}" if service and service != outer else outer
        duration = f.end - f.start
        row = {"ts": f.start, "uid": uids[f.flow_id], **_ids(f), "proto": "tcp", "service": service,
               "conn_state": _conn_state(f, pk), "missed_bytes": f.gap_bytes or 0, "ip_proto": 6}
        if duration > 0:
            row.update(duration=duration, orig_bytes=f.bytes_client, resp_bytes=f.bytes_server)
        if pk is not None:
            row.update(history=pk.history or None, orig_pkts=pk.packets[0], resp_pkts=pk.packets[1],
                       orig_ip_bytes=pk.ip_bytes[0], resp_ip_bytes=pk.ip_bytes[1])
        rows.append(row)
    return rows


def _split_addresses(value: str) -> list[str]:
    """Zeek's split_mime_email_addresses: comma-separated entries, quotes respected, stripped."""
    out, cur, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            if "".join(cur).strip():
                out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _emails(text: str) -> list[str]:
    out = []
    for a, b in _EMAIL_RE.findall(text or ""):
        addr = (a or b).strip()
        if addr and addr not in out:
            out.append(addr)
    return out


def _header_fields(m) -> dict:
    """smtp.log header fields of a message as Zeek fills them (last header wins, To/Cc accumulate)."""
    row = {}
    to, cc, received = [], [], []
    for name, value in m.headers or []:
        key = name.upper()
        if key == "MESSAGE-ID":
            row["msg_id"] = value
        elif key == "RECEIVED":
            received.append(value)
        elif key == "IN-REPLY-TO":
            row["in_reply_to"] = value
        elif key == "SUBJECT":
            row["subject"] = value
        elif key == "FROM":
            row["from"] = value
        elif key == "REPLY-TO":
            row["reply_to"] = value
        elif key == "DATE":
            row["date"] = value
        elif key == "TO":
            to += [x for x in _split_addresses(value) if x not in to]
        elif key == "CC":
            cc += [x for x in _split_addresses(value) if x not in cc]
        elif key == "X-ORIGINATING-IP":
            ips = _IPV4_RE.findall(value)
            if ips:
                row["x_originating_ip"] = ips[0]
        elif key in ("X-MAILER", "USER-AGENT", "X-USER-AGENT"):
            row["user_agent"] = value
    if not m.headers:  # records built without the header list: use the parsed fields
        row.update({k: v for k, v in (("msg_id", m.message_id), ("subject", m.subject), ("from", m.from_),
                                      ("date", m.date_raw), ("in_reply_to", m.in_reply_to),
                                      ("reply_to", m.reply_to), ("user_agent", m.user_agent),
                                      ("x_originating_ip", m.x_originating_ip)) if v})
        to, cc = list(m.to), list(m.cc)
        received = [r.raw for r in m.received]
    if to:
        row["to"] = to
    if cc:
        row["cc"] = cc
    # Zeek: each Received moves first_received to second_received; the last one read stays first
    if received:
        row["first_received"] = received[-1]
        if len(received) > 1:
            row["second_received"] = received[-2]
    row["_received"] = received
    return row


def _path_ips(received: list[str]) -> list[str]:
    """IPs of Received headers as Zeek's path takes them (the second address if a header has several)."""
    out = []
    for value in received:
        ips = re.findall(r"(?:\d{1,3}\.){3}\d{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}", value)
        ips = [x for x in ips if _valid_ip(x)]
        if ips:
            out.append(ips[1] if len(ips) > 1 else ips[0])
    return out


def _valid_ip(text: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _fuids(uid: str, m) -> list[str]:
    """The fuids of a message's files (files.log), in part order."""
    from ..frames import message_files
    return [file_uid(uid, m.session_id, m.message_index, a.part, a.sha256) for a in message_files(m)]


def smtp_rows(records) -> list[dict]:
    """smtp.log rows: one per mail transaction, following Zeek's SMTP script.

    A row starts when the session starts (or after the previous message's
    final reply) and is written at the final reply to the data, at the next
    MAIL FROM, or at the end of the session if the client did anything
    (MAIL, RCPT, STARTTLS). Header fields come from the message's top-level
    headers; ``path`` is the server, the client, then the addresses of the
    Received headers in order. A row's message is the one its mail
    transaction carried (the ``transaction`` key of commands and messages).
    """
    uids = _Uids(records)
    cmds = defaultdict(list)
    for c in records.commands:
        if c.protocol == "smtp":
            cmds[c.session_id].append(c)
    msgs = defaultdict(list)  # (session, transaction) -> its messages, in order
    for m in sorted((m for m in records.messages if m.protocol == "smtp" and m.transaction is not None),
                    key=lambda m: (m.session_id, m.message_index)):
        msgs[(m.session_id, m.transaction)].append(m)
    rows = []
    for s in sorted((s for s in records.sessions if s.protocol == "smtp"), key=lambda s: (s.start or 0,
                                                                                           s.session_id)):
        uid = uids[s.session_id]
        lst = sorted(cmds.get(s.session_id, []), key=lambda c: c.ts)
        state = {"helo": None, "transferred": 0}

        def take(txn, sid=s.session_id):
            """The next message of transaction ``txn`` of this session (each is written once)."""
            queue = msgs.get((sid, txn))
            return queue.pop(0) if queue else None

        def new(ts):
            return {"ts": ts, "uid": uid, **_ids(s), "trans_depth": state["transferred"] + 1,
                    "helo": state["helo"], "path": [s.server_ip, s.client_ip], "tls": False,
                    "_activity": False, "_rcpt": [], "_txn": None}

        def finish(row, message=None):
            if message is not None:
                fields = _header_fields(message)
                received = fields.pop("_received")
                row.update(fields)
                for ip in _path_ips(received):
                    if row["path"][-1] != ip:
                        row["path"].append(ip)
                fu = _fuids(uid, message)
                row["fuids"] = fu or None
            row["rcptto"] = row.pop("_rcpt") or None
            row.pop("_activity", None)
            row.pop("_txn", None)
            rows.append(row)

        # Zeek opens the first record when the analyzer confirms the protocol: at the server's greeting
        greeting = next((c for c in lst if c.command == ""), None)
        start_ts = (greeting.reply_ts or greeting.ts) if greeting is not None else (lst[0].ts if lst else
                                                                                     (s.start or 0.0))
        row = new(start_ts)
        for c in lst:
            verb = c.command
            if verb == "MAIL" and re.match(r"(?i)from:", c.argument or "") and row["_activity"]:
                # Zeek flushes a transaction whose final reply was not seen
                finish(row, take(row["_txn"]))
                row = new(c.ts)
            if c.transaction is not None:
                row["_txn"] = c.transaction
            if verb in ("EHLO", "HELO"):
                state["helo"] = c.argument
                row["helo"] = c.argument
            elif verb == "RCPT" and re.match(r"(?i)to:", c.argument or ""):
                for addr in _emails(c.argument) or [c.argument.partition(":")[2].strip()]:
                    addr = re.sub(r"ORCPT=rfc822;?", "", addr)
                    if addr and addr not in row["_rcpt"]:
                        row["_rcpt"].append(addr)
                row["_activity"] = True
            elif verb == "MAIL" and re.match(r"(?i)from:", c.argument or ""):
                addrs = _emails(c.argument)
                if addrs:
                    row["mailfrom"] = addrs[0]
                row["_activity"] = True
            elif verb == "STARTTLS" and c.reply_code == "220":
                row["tls"] = True
                row["_activity"] = True
            if c.reply_code:
                row["last_reply"] = f"{c.reply_code} {c.reply_text or ''}".rstrip()
            final = verb == "." or (verb == "BDAT" and "LAST" in (c.argument or "").upper().split())
            if final and c.reply_code:
                state["transferred"] += 1
                finish(row, take(c.transaction))
                row = new(c.reply_ts or c.ts)
        if row["_activity"]:
            finish(row, take(row["_txn"]))
    return rows


def _host_port(target: str) -> tuple[str | None, str | None, int | None]:
    """(address, name, port) of a ``host:port`` as SOCKS names it (an address or a name)."""
    host, _, port = target.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    address, name = (host, None) if _valid_ip(host) else (None, host or None)
    return address, name, int(port) if port.isdigit() else None


def socks_rows(records) -> list[dict]:
    """socks.log rows, one per SOCKS request, as Zeek's SOCKS script writes them (the
    password only as Zeek does when SOCKS::default_capture_password is set: it is a
    secret, masked under --redact)."""
    uids = _Uids(records)
    sessions = {s.session_id: s for s in records.sessions}
    creds = defaultdict(list)
    for c in records.credentials:
        if c.protocol == "socks":
            creds[c.session_id].append(c)
    rows = []
    for c in sorted((c for c in records.commands if c.protocol == "socks" and c.command not in ("METHODS", "AUTH")),
                    key=lambda c: (c.ts, c.session_id)):
        s = sessions.get(c.session_id)
        if s is None:
            continue
        address, name, port = _host_port(c.argument or "")
        row = {"ts": c.ts, "uid": uids[c.session_id], **_ids(s), "request.host": address, "request.name": name,
               "request_p": port}
        cred = next(iter(creds.get(c.session_id, ())), None)
        code = c.reply_code or ""
        socks4 = (s.tunnel == "socks4" or (cred is not None and cred.mechanism == "USERID")
                  or (code.isdigit() and int(code) >= 90))  # SOCKS4 replies are 90..93, SOCKS5's 0..8
        row["version"] = 4 if socks4 else 5
        if cred is not None:
            row["user"] = cred.user
            row["password"] = cred.secret
        if c.reply_text:
            status, _, bound = c.reply_text.partition("; bound ")
            row["status"] = status
            if bound:
                row["bound.host"], row["bound.name"], row["bound_p"] = _host_port(bound)
        rows.append(row)
    return rows


def files_rows(records) -> list[dict]:
    """files.log rows: one per row of the files table (every MIME leaf entity of every
    message, a forwarded message that is an attachment, every file carried over HTTP)."""
    from ..frames import file_rows
    uids = _Uids(records)
    sessions = {s.session_id: s for s in records.sessions}
    rows = []
    # Zeek's depth counts the MIME entities of a session, containers included, across its messages
    before: dict = {}  # (session, message_index) -> entities of the session's earlier messages
    seen: dict = {}  # session -> entities counted so far
    for m in sorted(records.messages, key=lambda m: (m.session_id, m.message_index)):
        before[(m.session_id, m.message_index)] = seen.get(m.session_id, 0)
        seen[m.session_id] = before[(m.session_id, m.message_index)] + max(
            (a.index for a in m.entities), default=len(m.attachments))
    position: dict = {}  # files of an HTTP exchange so far
    for f in file_rows(records):
        s = sessions.get(f.session_id)
        if s is None:
            continue
        uid = uids[f.session_id]
        if f.source == "message":
            key = (f.session_id, f.message_index)
            position[key] = position.get(key, 0) + 1
            depth = before.get(key, 0) + (f.a.index or position[key])
            fuid = file_uid(uid, f.session_id, f.message_index, f.part, f.sha256)
            source = f.protocol.upper()
        else:
            key = (f.session_id, "http", f.http_seq)
            depth = position[key] = position.get(key, 0) + 1
            fuid = file_uid(uid, "http", f.http_seq, f.direction, f.part, f.sha256)
            source = "HTTP"
        rows.append({
            "ts": f.ts, "fuid": fuid, "uid": uid, **_ids(s), "source": source, "depth": depth,
            "analyzers": ["MD5", "SHA1", "SHA256"], "mime_type": f.content_type or None,
            "filename": f.filename or None, "duration": 0.0,
            "is_orig": f.direction in ("sent", "appended", "uploaded"), "seen_bytes": f.size,
            "total_bytes": None, "missing_bytes": f.missing, "overflow_bytes": 0, "timedout": False,
            "md5": f.md5 or None, "sha1": f.sha1 or None, "sha256": f.sha256 or None})
    return rows


def _command_rows(records, protocol: str) -> list[dict]:
    """pop3.log / imap.log rows: one per command with its reply (Zeek's ftp.log shape).

    The user and the IMAP mailbox are the ones the dissector found in force at
    the command; a command's message is the one it carried (``command_seq``).
    """
    uids = _Uids(records)
    sessions = {s.session_id: s for s in records.sessions if s.protocol == protocol}
    carried = {}  # (session, command seq) -> the first message that command carried
    for m in sorted((m for m in records.messages if m.protocol == protocol and m.command_seq is not None),
                    key=lambda m: (m.ts if m.ts is not None else 0.0, m.message_index)):
        carried.setdefault((m.session_id, m.command_seq), m)
    rows = []
    for c in sorted((c for c in records.commands if c.protocol == protocol and c.session_id in sessions),
                    key=lambda c: (c.ts, c.session_id)):
        if c.command == "":
            continue  # the greeting is in conn.log's service and the sessions table
        s = sessions[c.session_id]
        uid = uids[c.session_id]
        arg = c.argument or ""  # masked in the records under --redact
        m = carried.get((c.session_id, c.seq)) if c.seq is not None else None
        row = {"ts": c.ts, "uid": uid, **_ids(s), "user": c.user, "command": c.command, "arg": arg or None,
               "status": c.reply_code, "reply_msg": c.reply_text or None, "tls": bool(s.tls)}
        if m is not None:
            row.update(msg_id=m.message_id, subject=m.subject, size=m.size, fuids=_fuids(uid, m) or None)
        if protocol == "imap":
            row["tag"] = c.tag
            row["mailbox"] = c.mailbox
        rows.append(row)
    return rows


def pop3_rows(records) -> list[dict]:
    """pop3.log rows (maildissect's own log in Zeek's style: one per POP3 command)."""
    return _command_rows(records, "pop3")


def imap_rows(records) -> list[dict]:
    """imap.log rows (maildissect's own log in Zeek's style: one per IMAP command)."""
    return _command_rows(records, "imap")


def http_rows(records) -> list[dict]:
    """http.log rows: every HTTP request with its response, as Zeek's HTTP script logs them.

    ``trans_depth`` is the exchange's place in its connection (``http.seq``);
    the request's form files and the response's file are ``orig_*`` and
    ``resp_*`` (fuids, names and declared types of their files.log rows).
    """
    from ..frames import file_rows
    uids = _Uids(records)
    sessions = {s.session_id: s for s in records.sessions}
    carried = defaultdict(list)  # (session, http seq, orig|resp) -> its files' (fuid, row), as files.log has them
    for f in file_rows(records):
        if f.http_seq is None or f.protocol != "http":
            continue
        side = "orig" if f.direction in ("sent", "uploaded", "appended") else "resp"
        uid = uids[f.session_id]
        fuid = file_uid(uid, f.session_id, f.message_index, f.part, f.sha256) if f.source == "message" else \
            file_uid(uid, "http", f.http_seq, f.direction, f.part, f.sha256)
        carried[(f.session_id, f.http_seq, side)].append((fuid, f))
    depth = defaultdict(int)
    rows = []
    for r in sorted(records.http, key=lambda r: (r.ts, r.session_id, r.seq or 0)):
        s = sessions.get(r.session_id)
        if s is None:
            continue
        uid = uids[r.session_id]
        depth[r.session_id] += 1
        version = (r.version or "").upper()
        row = {"ts": r.ts, "uid": uid, **_ids(s), "trans_depth": r.seq or depth[r.session_id],
               "method": r.method or None, "host": r.host, "uri": r.uri, "referrer": r.referer,
               # (Zeek's version is the reply's: without a reply it is unset)
               "version": (version[5:] if version.startswith("HTTP/") else (r.version or None))
               if r.status is not None else None,
               "user_agent": r.user_agent, "request_body_len": r.request_size or 0,
               "response_body_len": r.response_size or 0, "status_code": r.status,
               "status_msg": r.reason if r.status is not None else None, "tags": []}
        for side in ("orig", "resp"):
            files = carried.get((r.session_id, r.seq, side))
            if files:  # the files the request sent and the response brought: files.log's rows and fuids
                row[f"{side}_fuids"] = [fuid for fuid, _ in files]
                row[f"{side}_filenames"] = [f.filename for _, f in files if f.filename] or None
                row[f"{side}_mime_types"] = [f.content_type for _, f in files if f.content_type] or None
        rows.append(row)
    return rows


def _zeek_version(text: str | None) -> str | None:
    """maildissect's "TLSv1.2" as Zeek writes it ("TLSv12"); a number Zeek does not name as "unknown-N"."""
    if not text:
        return None
    if text.startswith("0x"):
        try:
            return f"unknown-{int(text, 16)}"
        except ValueError:
            return None
    return text.replace(".", "")


def ssl_rows(records) -> list[dict]:
    """ssl.log rows: one per connection whose TLS handshake was seen (implicit TLS or after
    STARTTLS), from what the hellos and the plaintext handshake show."""
    uids = _Uids(records)
    rows = []
    for s in sorted(records.sessions, key=lambda s: (s.tls_start or s.start or 0.0, s.session_id)):
        if not s.tls or not (s.tls_history or s.tls_version or s.sni):
            continue
        alpn = s.alpn if s.alpn and "," not in s.alpn else None  # a list is the client's offer, not a choice
        rows.append({
            "ts": s.tls_start if s.tls_start is not None else s.start, "uid": uids[s.session_id], **_ids(s),
            "version": _zeek_version(s.tls_version) if s.tls_cipher else None, "cipher": s.tls_cipher,
            "curve": s.tls_curve, "server_name": s.sni, "resumed": bool(s.tls_resumed),
            "last_alert": s.tls_alert, "next_protocol": alpn, "established": bool(s.tls_established),
            "ssl_history": s.tls_history or "", "cert_chain_fps": list(s.tls_certificates) or None,
            "client_cert_chain_fps": list(s.tls_client_certificates) or None})
    return rows


#: Anomaly name prefix -> the analyzer Zeek would name as a weird's source.
_WEIRD_SOURCE = {"smtp": "SMTP", "imap": "IMAP", "pop3": "POP3", "http": "HTTP", "http2": "HTTP2", "tls": "SSL",
                 "tcp": "TCP", "ip": "IP", "mime": "MIME", "webmail": "HTTP", "sasl": None}


def weird_rows(records, open_ts=None) -> list[dict]:
    """weird.log rows: every anomaly, with its connection when it has one.

    ``name`` is maildissect's anomaly name (docs/anomalies.md), ``addl`` its
    detail; an anomaly without a time (the end of a capture) takes its
    session's start, else the capture's first packet time.
    """
    uids = _Uids(records)
    sessions = {s.session_id: s for s in records.sessions}
    flows = {f.flow_id: f for f in records.flows}
    rows = []
    for a in records.anomalies:
        conn = sessions.get(a.session_id) or flows.get(a.session_id) if a.session_id is not None else None
        ts = a.ts if a.ts is not None else (getattr(conn, "start", None) if conn is not None else open_ts)
        row = {"ts": ts if ts is not None else 0.0, "name": a.name, "addl": a.detail or None, "notice": False,
               "peer": "maildissect", "source": _WEIRD_SOURCE.get(a.name.split("_", 1)[0])}
        if conn is not None:
            row.update(uid=uids[a.session_id], **_ids(conn))
        rows.append(row)
    rows.sort(key=lambda r: r["ts"])
    return rows


def write_logs(result, directory: str, fmt: str = "zeek", captures=None) -> list[str]:
    """Write conn, smtp, files, pop3, imap, http, ssl, weird and socks logs of an Analysis into ``directory``.

    ``fmt``: "zeek" (TSV, ``.log``) or "zeek-json" (JSON lines, ``.log`` as
    Zeek names them too). ``captures``: the capture paths, read once more for
    conn.log's packet counts and history (left unset when None or stdin).
    Returns the paths written.
    """
    from ..capture.control import flow_packets
    records = result.records
    config = getattr(result, "config", None)
    packets = flow_packets(captures, records.flows, limits=config.limits if config is not None else None) \
        if captures else {}
    stats = getattr(result, "stats", {}) or {}
    open_ts, close_ts = stats.get("first_ts"), stats.get("last_ts")
    logs = {"conn": conn_rows(records, packets), "smtp": smtp_rows(records), "files": files_rows(records),
            "pop3": pop3_rows(records), "imap": imap_rows(records), "http": http_rows(records),
            "ssl": ssl_rows(records), "weird": weird_rows(records, open_ts), "socks": socks_rows(records)}
    os.makedirs(directory, exist_ok=True)
    out = []
    for name, rows in logs.items():
        if name == "socks" and not rows:
            continue  # (written when there are proxies, as Zeek writes a log only once it has an entry)
        path = os.path.join(directory, f"{name}.log")
        if fmt == "zeek-json":
            write_json(path, name, rows)
        else:
            write_tsv(path, name, rows, open_ts, close_ts)
        out.append(path)
    return out


__all__ = ["LOGS", "conn_uid", "file_uid", "conn_rows", "smtp_rows", "files_rows", "pop3_rows", "imap_rows",
           "socks_rows", "http_rows", "ssl_rows", "weird_rows", "write_tsv", "write_json", "write_logs"]
