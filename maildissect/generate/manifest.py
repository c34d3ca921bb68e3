"""The ground-truth manifest written next to each generated pcap.

Clients and servers add to it while a scenario runs (from several threads);
:meth:`Manifest.to_dict` produces the JSON document described in
docs/generator.md. Every hash in it is of bytes a client or server actually
handled: the DATA payload an SMTP server received (after dot-unstuffing), the
literal an IMAP client received, the RETR body a POP3 client received
(un-stuffed), an HTTP response body -- never a recomputation from what the lab
meant to send.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.utils import getaddresses

FORMAT = "maildissect-generate-manifest"
VERSION = 1


def iso(ts: float | None) -> str | None:
    """Epoch seconds to an ISO 8601 UTC string (microseconds), as the project's JSON uses."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _decode(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # undecodable RFC 2047 text: keep it as it came
        return value


def describe(data: bytes) -> dict:
    """Header fields and attachments of a message, decoded (what dissectors should report)."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    headers = [(name, _decode(" ".join(str(v).split()))) for name, v in msg.items()]

    def addrs(name):
        return [a for _, a in getaddresses(msg.get_all(name, [])) if a]

    attachments = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        disposition = part.get_content_disposition()
        if filename is None and disposition != "attachment":
            continue
        payload = part.get_payload(decode=True) or b""
        attachments.append({
            "filename": _decode(filename) if filename else None,
            "content_type": part.get_content_type(),
            "disposition": disposition,
            "size": len(payload),
            "md5": hashlib.md5(payload).hexdigest(),
            "sha1": hashlib.sha1(payload).hexdigest(),
            "sha256": sha256(payload),
        })
    frm = addrs("From")
    return {
        "message_id": (msg.get("Message-ID") or "").strip() or None,
        "in_reply_to": (msg.get("In-Reply-To") or "").strip() or None,
        "from": frm[0] if frm else None,
        "to": addrs("To"),
        "cc": addrs("Cc"),
        "subject": _decode(" ".join(str(msg.get("Subject", "")).split())) if msg.get("Subject") else None,
        "date": msg.get("Date"),
        "headers": headers,
        "attachments": attachments,
    }


def file_entry(filename: str | None, content_type: str, data: bytes) -> dict:
    """An attachment/upload entry for bytes we hold."""
    return {
        "filename": filename, "content_type": content_type, "disposition": "attachment",
        "size": len(data), "md5": hashlib.md5(data).hexdigest(),
        "sha1": hashlib.sha1(data).hexdigest(), "sha256": sha256(data),
    }


@dataclass
class Session:
    """One TCP connection a lab client opened (or tried to)."""

    id: int
    protocol: str
    service: str
    purpose: str
    client_ip: str
    server_ip: str
    server_port: int
    server_name: str
    client_port: int = 0
    tls: str | None = None  # None, "starttls" or "implicit"
    start: float | None = None
    end: float | None = None
    outcome: str = "ok"  # ok | refused | error
    credentials: list = field(default_factory=list)
    requests: list = field(default_factory=list)  # HTTP only
    messages: list = field(default_factory=list)  # indexes into Manifest.messages
    # filled from the recording relay (synthetic mode)
    recorded: dict | None = None

    def credential(self, mechanism: str, user: str | None, secret: str | None,
                   success: bool | None) -> None:
        entry = {"mechanism": mechanism, "user": user, "secret": secret, "success": success}
        if entry not in self.credentials:
            self.credentials.append(entry)

    def to_dict(self) -> dict:
        d = {
            "id": self.id, "protocol": self.protocol, "service": self.service,
            "purpose": self.purpose, "client_ip": self.client_ip, "client_port": self.client_port,
            "server_ip": self.server_ip, "server_port": self.server_port,
            "server_name": self.server_name, "tls": self.tls, "start": iso(self.start),
            "end": iso(self.end), "outcome": self.outcome, "credentials": self.credentials,
            "messages": self.messages,
        }
        if self.protocol == "http":
            d["requests"] = self.requests
        if self.recorded is not None:
            d.update(self.recorded)
        return d


class Manifest:
    """Thread-safe collector of sessions, messages and relay attempts."""

    def __init__(self):
        self._lock = threading.Lock()
        self.sessions: list[Session] = []
        self.messages: list[dict] = []
        self.relay: list[dict] = []
        self.stored: list[dict] = []
        self.info: dict = {}

    def new_session(self, **kw) -> Session:
        with self._lock:
            s = Session(id=len(self.sessions) + 1, **kw)
            self.sessions.append(s)
            return s

    def add_message(self, session: Session | None, *, protocol: str, direction: str, kind: str,
                    data: bytes | None = None, ts: float, source: str = "", complete: bool = True,
                    envelope: dict | None = None, meta: dict | None = None,
                    extra: dict | None = None) -> dict:
        """Record one message transfer.

        ``data`` are the exact message bytes transferred (None when the wire
        carries no message bytes, e.g. a webmail compose form: then ``meta``
        describes it). ``envelope`` holds mail_from / rcpt_to / rcpt_rejected.
        """
        entry = {
            "session": session.id if session else None, "protocol": protocol,
            "direction": direction, "kind": kind, "source": source, "ts": iso(ts),
            "client_ip": session.client_ip if session else None,
            "client_port": session.client_port if session else None,
            "server_ip": session.server_ip if session else None,
            "server_port": session.server_port if session else None,
            "tls": bool(session.tls) if session else False,
            "complete": complete,
        }
        if envelope:
            entry.update(envelope)
        if data is not None:
            entry["size"] = len(data)
            entry["sha256"] = sha256(data)
            if complete:
                entry.update(describe(data))
            else:
                entry["message_id"] = (meta or {}).get("message_id")
        else:
            entry["size"] = None
            entry["sha256"] = None
        if meta:
            for k, v in meta.items():
                entry.setdefault(k, v)
        if extra:
            entry.update(extra)
        with self._lock:
            entry["index"] = len(self.messages)
            self.messages.append(entry)
            if session is not None:
                session.messages.append(entry["index"])
        return entry

    def add_stored(self, *, user: str, mailbox: str, data: bytes, uid: int, how: str) -> None:
        """A message put into a mailbox without crossing the wire (scenario set-up)."""
        d = describe(data)
        with self._lock:
            self.stored.append({"user": user, "mailbox": mailbox, "uid": uid, "how": how,
                                "message_id": d["message_id"], "size": len(data),
                                "sha256": sha256(data)})

    def add_relay(self, entry: dict) -> None:
        with self._lock:
            self.relay.append(entry)

    def journeys(self) -> list[dict]:
        """Every Message-ID with the hops it was seen on, in time order."""
        by_id: dict[str, list] = {}
        for m in self.messages:
            mid = m.get("message_id")
            if mid:
                by_id.setdefault(mid, []).append(m)
        out = []
        for mid, hops in by_id.items():
            hops = sorted(hops, key=lambda m: m["ts"] or "")
            out.append({"message_id": mid, "subject": next((h.get("subject") for h in hops if h.get("subject")), None),
                        "hops": [{"message": h["index"], "session": h["session"], "ts": h["ts"],
                                  "protocol": h["protocol"], "direction": h["direction"],
                                  "kind": h["kind"], "client_ip": h["client_ip"],
                                  "server_ip": h["server_ip"], "server_port": h["server_port"]}
                                 for h in hops]})
        return out

    def to_dict(self) -> dict:
        with self._lock:
            doc = {"format": FORMAT, "version": VERSION}
            doc.update(self.info)
            doc["sessions"] = [s.to_dict() for s in self.sessions]
            doc["messages"] = list(self.messages)
            doc["relay"] = list(self.relay)
            doc["stored"] = list(self.stored)
        doc["journeys"] = self.journeys()
        return doc

    def write(self, path: str) -> dict:
        doc = self.to_dict()
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
        return doc
