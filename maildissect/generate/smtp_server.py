"""The lab's SMTP servers: aiosmtpd made a small MTA.

:class:`MtaHandler` makes aiosmtpd a submission service (587/465, AUTH
required) and an MX (25) that accepts mail for its own domain, with optional
greylisting; accepted mail is delivered locally or put in a :class:`RelayQueue`,
a real store-and-forward queue that delivers to the recipient domain's MX over
SMTP and retries after a delay when the connection is refused or the reply is
4xx.
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from datetime import datetime, timezone
from email.utils import format_datetime

from .net import MX, NAME_OF

__all__ = ["Mta", "MtaHandler", "RelayQueue"]

# --------------------------------------------------------------------------
# SMTP: aiosmtpd handler, the relay queue


def _now_header() -> str:
    return format_datetime(datetime.now(timezone.utc).astimezone())


class MtaHandler:
    """aiosmtpd handler for one domain's MTA; ``role`` is "submission" or "mx"."""

    def __init__(self, mta: "Mta", role: str):
        self.mta = mta
        self.role = role

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        store = self.mta.store
        local = store.is_local(address)
        if self.role == "mx" and not local:
            return f"554 5.7.1 <{address}>: Relay access denied"
        if local and store.user_for_address(address) is None:
            return (f"550 5.1.1 <{address}>: Recipient address rejected: "
                    "User unknown in virtual mailbox table")
        if self.role == "mx" and self.mta.greylist:
            triplet = (session.peer[0], envelope.mail_from, address.lower())
            if triplet not in self.mta.greylist_seen:
                # First sighting: temporary failure, as greylisting MTAs do;
                # a real sending MTA retries later and gets through.
                self.mta.greylist_seen.add(triplet)
                return (f"451 4.7.1 <{address}>: Recipient address rejected: "
                        "Greylisted, please try again later")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        mta = self.mta
        data = envelope.original_content
        qid = mta.new_queue_id()
        mta.received[qid] = data
        tls = session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None
        proto = "ESMTP" + ("S" if tls else "") + ("A" if session.authenticated else "")
        peer_ip = session.peer[0]
        rdns = NAME_OF.get(peer_ip, "unknown")
        rcpts = list(envelope.rcpt_tos)
        for_clause = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
        received = (f"Received: from {session.host_name or rdns} ({rdns} [{peer_ip}])\r\n"
                    f"\tby {mta.hostname} (maildissect-lab aiosmtpd) with {proto} id {qid}"
                    f"{for_clause}; {_now_header()}\r\n").encode()
        stamped = received + data
        local = [r for r in rcpts if mta.store.is_local(r)]
        remote = [r for r in rcpts if not mta.store.is_local(r)]
        for rcpt in local:
            mta.deliver_local(envelope.mail_from, rcpt, stamped)
        if remote:
            mta.queue.enqueue(qid, envelope.mail_from, remote, stamped)
        return f"250 2.0.0 Ok: queued as {qid}"


class Mta:
    """One domain's mail transfer agent: its store, queue and SMTP behaviour."""

    def __init__(self, lab, domain: str, hostname: str, ip: str, store, seed: int):
        self.lab = lab
        self.domain = domain
        self.hostname = hostname
        self.ip = ip
        self.store = store
        self.greylist = False
        self.greylist_seen: set = set()
        self.received: dict[str, bytes] = {}  # queue id -> DATA payload as received
        self._qid_rng = random.Random(f"qid:{seed}:{domain}")
        self._qid_lock = threading.Lock()
        self.queue = RelayQueue(self)

    def new_queue_id(self) -> str:
        with self._qid_lock:
            return "".join(self._qid_rng.choice("0123456789BCDFGHJKLMNPQRSTVWXYZ") for _ in range(10))

    def deliver_local(self, mail_from: str, rcpt: str, data: bytes) -> None:
        """Final delivery: Return-Path and Delivered-To on top, as an MDA writes them."""
        top = f"Return-Path: <{mail_from}>\r\nDelivered-To: {rcpt}\r\n".encode()
        self.store.deliver(rcpt, top + data)

    def smtp_factory(self, role: str, tls=None, require_auth: bool = False):
        """A protocol factory for asyncio's create_server (aiosmtpd's SMTP)."""
        from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

        store = self.store

        def authenticator(server, session, envelope, mechanism, auth_data):
            if isinstance(auth_data, LoginPassword):
                user = auth_data.login.decode("utf-8", "replace")
                if store.check_password(user, auth_data.password.decode("utf-8", "replace")):
                    return AuthResult(success=True, auth_data=auth_data)
            return AuthResult(success=False, handled=False)

        handler = MtaHandler(self, role)
        loop = self.lab.loop.loop
        kwargs = dict(hostname=self.hostname, ident="maildissect-lab (aiosmtpd)",
                      data_size_limit=64 * 1024 * 1024, loop=loop, timeout=60)
        if role == "submission":
            kwargs.update(authenticator=authenticator, auth_required=require_auth,
                          # Plain-text AUTH on 587 is what a lab wants to show.
                          auth_require_tls=False)
        if tls is not None:
            kwargs["tls_context"] = tls

        def factory():
            with warnings.catch_warnings():
                # AUTH without TLS on 587 is deliberate here: the lab shows it.
                warnings.simplefilter("ignore", UserWarning)
                proto = SMTP(handler, **kwargs)
            self.lab.track_smtp(proto)
            return proto

        return factory


class RelayQueue:
    """Store-and-forward queue: deliver to the recipient domain's MX, retry on failure.

    Runs in its own thread with the standard library's smtplib, like the smtp
    client of an MTA. Per destination domain and attempt it records the time,
    the session, the outcome (delivered, refused, deferred with the 4xx reply,
    bounced with the 5xx reply) in the manifest.
    """

    def __init__(self, mta: Mta):
        self.mta = mta
        self.retry_delay = 1.0
        self.max_attempts = 5
        self.use_starttls = False
        self._entries: list[dict] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.attempt_listeners: list = []

    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"queue-{self.mta.domain}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0):
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def enqueue(self, qid: str, mail_from: str, rcpts: list[str], data: bytes) -> None:
        from .manifest import describe
        now = time.time()
        by_domain: dict[str, list[str]] = {}
        for r in rcpts:
            by_domain.setdefault(r.rpartition("@")[2].lower(), []).append(r)
        with self._cond:
            for domain, rs in by_domain.items():
                entry = {"queue_id": qid, "server": self.mta.hostname, "domain": domain,
                         "mail_from": mail_from, "rcpt_to": rs, "data": data,
                         "message_id": describe(data)["message_id"], "queued": now,
                         "next_try": now, "attempts": [], "status": "queued"}
                self._entries.append(entry)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return sum(1 for e in self._entries if e["status"] == "queued")

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued message is delivered or bounced."""
        deadline = time.time() + timeout
        with self._cond:
            while any(e["status"] == "queued" for e in self._entries):
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def wait_attempts(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` delivery attempts have been made in total."""
        deadline = time.time() + timeout
        with self._cond:
            while sum(len(e["attempts"]) for e in self._entries) < n:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def entries(self) -> list[dict]:
        with self._cond:
            return list(self._entries)

    def _run(self):
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        return
                    now = time.time()
                    due = [e for e in self._entries if e["status"] == "queued" and e["next_try"] <= now]
                    if due:
                        break
                    waits = [e["next_try"] - now for e in self._entries if e["status"] == "queued"]
                    self._cond.wait(min(waits) if waits else None)
            for entry in due:
                self._attempt(entry)

    def _attempt(self, entry: dict) -> None:
        from .clients import SmtpClient, SmtpFailure

        lab = self.mta.lab
        mx = MX.get(entry["domain"], entry["domain"])
        attempt = {"attempt": len(entry["attempts"]) + 1, "ts": time.time(), "mx": mx,
                   "ip": lab.network.resolve(mx), "port": 25, "session": None}
        outcome, reply, delivered = "deferred", "", []
        try:
            with SmtpClient(lab, self.mta.ip, mx, 25, service="smtp",
                            purpose=f"{self.mta.hostname} relays queue id {entry['queue_id']} "
                                    f"to MX of {entry['domain']} (attempt {attempt['attempt']})",
                            ehlo_name=self.mta.hostname,
                            starttls=self.use_starttls and lab.tls is not None,
                            opportunistic=True) as client:
                attempt["session"] = client.session.id
                result = client.send(entry["mail_from"], entry["rcpt_to"], entry["data"],
                                     direction="sent", kind="data",
                                     relay_queue_id=entry["queue_id"])
                delivered = result["rcpt_to"]
                temp = [r for r, (code, _) in result["refused"].items() if 400 <= code < 500]
                perm = [r for r, (code, _) in result["refused"].items() if code >= 500]
                reply = result["reply"]
                if temp:
                    reply = " ".join(str(x) for x in result["refused"][temp[0]])
                if delivered and not temp and not perm:
                    outcome = "delivered"
                elif temp:
                    outcome = "deferred"
                else:
                    outcome = "bounced"
                attempt["delivered_to"] = delivered
                attempt["rejected"] = {r: f"{c} {t}" for r, (c, t) in result["refused"].items()}
                entry["rcpt_to"] = temp
        except ConnectionRefusedError as e:
            outcome, reply = "refused", f"connect to {mx}[{attempt['ip']}]:25: Connection refused"
            session = getattr(e, "session", None)
            attempt["session"] = session.id if session is not None else None
        except SmtpFailure as e:
            outcome = "bounced" if e.code >= 500 else "deferred"
            reply = f"{e.code} {e.text}"
            attempt["session"] = e.session_id
        except OSError as e:
            outcome, reply = "deferred", f"{type(e).__name__}: {e}"
        attempt["outcome"] = outcome
        attempt["reply"] = reply
        attempt["end"] = time.time()
        with self._cond:
            entry["attempts"].append(attempt)
            if outcome == "delivered" or (outcome != "bounced" and not entry["rcpt_to"]):
                entry["status"] = "delivered"
            elif outcome == "bounced" or len(entry["attempts"]) >= self.max_attempts:
                entry["status"] = "bounced"
            else:
                entry["next_try"] = time.time() + self.retry_delay
            self._cond.notify_all()
        for listener in list(self.attempt_listeners):
            listener(entry, attempt)
