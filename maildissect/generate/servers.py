"""The lab's servers, built from well-kept libraries.

- SMTP: aiosmtpd. :class:`MtaHandler` makes it a small MTA: a submission
  service (587/465, AUTH required) and an MX (25) that accepts mail for its own
  domain, with optional greylisting; accepted mail is delivered locally or put
  in a :class:`RelayQueue`, a real store-and-forward queue that delivers to the
  recipient domain's MX over SMTP and retries after a delay when the connection
  is refused or the reply is 4xx.
- IMAP4 and POP3: Twisted's ``twisted.mail.imap4`` and ``twisted.mail.pop3``
  servers over the shared :mod:`.store`, through the adapters here
  (:class:`ImapAccount`, :class:`ImapMailbox`, :class:`ImapMessage`,
  :class:`Pop3Mailbox`) and Twisted's cred portal.

Where the libraries deviate from the RFCs in ways a capture would show, the
subclasses here correct them and say why in a comment (partial FETCH, exact
BODY[HEADER], POP3 dot-stuffing at chunk boundaries, EXISTS after APPEND).

Threads: aiosmtpd runs on the lab's asyncio loop (:class:`LoopThread`), Twisted
on its reactor thread (:func:`reactor_call`). Twisted's reactor cannot be
restarted within a process, so it is started once and then kept running; each
lab closes its own listening ports and connections.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import io
import os
import queue
import random
import threading
import time
import warnings
from email.utils import format_datetime
from datetime import datetime, timezone

from zope.interface import implementer

from .net import MX, NAME_OF

# --------------------------------------------------------------------------
# Threads


class LoopThread:
    """An asyncio event loop running in its own thread, for one lab run."""

    def __init__(self, name: str = "maildissect-lab-loop"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro, timeout: float = 15.0):
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args):
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return

        async def _cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all(), timeout)
        except Exception:
            pass  # stopping anyway
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


_reactor_lock = threading.Lock()
_reactor_thread: threading.Thread | None = None


def _ensure_reactor():
    global _reactor_thread
    from twisted.internet import reactor
    with _reactor_lock:
        if _reactor_thread is None or not _reactor_thread.is_alive():
            if not reactor.running:
                _reactor_thread = threading.Thread(
                    target=reactor.run, kwargs={"installSignalHandlers": False},
                    name="maildissect-twisted-reactor", daemon=True)
                _reactor_thread.start()
    return reactor


def reactor_call(fn, *args, timeout: float = 15.0):
    """Call ``fn`` in the reactor thread and wait for its (possibly deferred) result."""
    from twisted.internet.defer import maybeDeferred
    reactor = _ensure_reactor()
    box: queue.Queue = queue.Queue(1)

    def run():
        d = maybeDeferred(fn, *args)
        d.addCallbacks(lambda r: box.put((True, r)), lambda f: box.put((False, f)))

    reactor.callFromThread(run)
    ok, result = box.get(timeout=timeout)
    if not ok:
        result.raiseException()
    return result


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


# --------------------------------------------------------------------------
# MIME structure with exact byte ranges (what an IMAP server serves)


class RawPart:
    """A MIME entity split into exact header and body bytes, with its children."""

    def __init__(self, raw: bytes):
        self.raw = raw
        i = raw.find(b"\r\n\r\n")
        if raw.startswith(b"\r\n"):
            self.header_bytes, self.body = b"\r\n", raw[2:]
        elif i < 0:
            self.header_bytes, self.body = raw, b""
        else:
            self.header_bytes, self.body = raw[:i + 4], raw[i + 4:]
        self.headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            self.header_bytes)
        self.children: list[RawPart] = []
        if self.headers.get_content_maintype() == "multipart":
            boundary = self.headers.get_boundary()
            if boundary:
                self.children = [RawPart(p) for p in _split_multipart(self.body, boundary.encode())]

    def header_dict(self, negate: bool, names) -> dict:
        wanted = {n.lower() if isinstance(n, str) else n.decode().lower() for n in names}
        out = {}
        for name, value in self.headers.items():
            key = name.lower()
            if (key in wanted) != negate or (negate and not wanted):
                if key not in out:
                    out[key] = value
        return out


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """Body parts between ``--boundary`` lines (RFC 2046: the CRLF before a delimiter is its own)."""
    delim = b"--" + boundary
    parts, pos, start = [], 0, None
    while True:
        j = body.find(delim, pos)
        if j < 0:
            break
        if j != 0 and body[j - 2:j] != b"\r\n":
            pos = j + len(delim)
            continue
        if start is not None:
            parts.append(body[start:max(j - 2, start)])
        after = j + len(delim)
        if body[after:after + 2] == b"--":
            return parts
        eol = body.find(b"\r\n", after)
        if eol < 0:
            break
        start = pos = eol + 2
    return parts


# --------------------------------------------------------------------------
# IMAP4 (Twisted)


def _imap_classes():
    """Define the Twisted-based IMAP classes on first use (keeps imports lazy)."""
    from twisted.mail import imap4
    from twisted.mail.interfaces import (IAccountIMAP, IMailboxIMAP, IMessageIMAP,
                                         IMessageIMAPFile, IMessageIMAPPart,
                                         ICloseableMailboxIMAP, INamespacePresenter)

    @implementer(IMessageIMAPPart)
    class ImapPart:
        def __init__(self, part: RawPart):
            self.part = part

        def getHeaders(self, negate, *names):
            return self.part.header_dict(negate, names)

        def getBodyFile(self):
            return io.BytesIO(self.part.body)

        def getSize(self):
            return len(self.part.body)

        def isMultipart(self):
            return bool(self.part.children)

        def getSubPart(self, part):
            return ImapPart(self.part.children[part])  # IndexError ends Twisted's walk

    @implementer(IMessageIMAP, IMessageIMAPFile)
    class ImapMessage(ImapPart):
        def __init__(self, stored):
            super().__init__(RawPart(stored.data))
            self.stored = stored

        def getSize(self):
            return len(self.stored.data)

        def getUID(self):
            return self.stored.uid

        def getFlags(self):
            return sorted(self.stored.flags)

        def getInternalDate(self):
            return format_datetime(datetime.fromtimestamp(self.stored.internal_date, timezone.utc))

        def open(self):
            return io.BytesIO(self.stored.data)

    @implementer(IMailboxIMAP, ICloseableMailboxIMAP)
    class ImapMailbox:
        def __init__(self, box, readwrite):
            from twisted.internet import reactor
            self.box = box
            self.rw = readwrite
            self.listeners = []
            self._reactor = reactor
            with box.store.lock:
                msgs = box.messages
                self.recent = sum(m.recent for m in msgs)
                if readwrite:
                    for m in msgs:
                        m.recent = False
                box.listeners.append(self._on_new)

        def _on_new(self, exists):
            def notify():
                for listener in list(self.listeners):
                    listener.newMessages(exists, None)
            self._reactor.callFromThread(notify)

        def close(self):
            with self.box.store.lock:
                if self._on_new in self.box.listeners:
                    self.box.listeners.remove(self._on_new)

        def getFlags(self):
            return list(SYSTEM_FLAGS)

        def getHierarchicalDelimiter(self):
            return "/"

        def getUIDValidity(self):
            return self.box.uidvalidity

        def getUIDNext(self):
            return self.box.uidnext

        def getUID(self, message):
            return self.box.snapshot()[message - 1].uid

        def getMessageCount(self):
            return self.box.counts()[0]

        def getRecentCount(self):
            return self.recent

        def getUnseenCount(self):
            return self.box.counts()[2]

        def isWriteable(self):
            return bool(self.rw)

        def destroy(self):
            raise imap4.MailboxException("Permission denied")

        def requestStatus(self, names):
            return imap4.statusRequestHelper(self, names)

        def addListener(self, listener):
            self.listeners.append(listener)

        def removeListener(self, listener):
            if listener in self.listeners:
                self.listeners.remove(listener)

        def addMessage(self, message, flags=(), date=None):
            from twisted.internet import defer
            data = message.read()
            stored = self.box.append(data, flags=flags)
            return defer.succeed(stored.uid)

        def expunge(self):
            return self.box.expunge()

        def _select(self, messages, uid):
            msgs = self.box.snapshot()
            out = []
            if not msgs:
                return out
            if uid:
                messages.last = msgs[-1].uid
                wanted = set(messages)
                out = [(seq, m) for seq, m in enumerate(msgs, 1) if m.uid in wanted]
            else:
                messages.last = len(msgs)
                for seq in messages:
                    if 1 <= seq <= len(msgs):
                        out.append((seq, msgs[seq - 1]))
            return out

        def fetch(self, messages, uid):
            return [(seq, ImapMessage(m)) for seq, m in self._select(messages, uid)]

        def store(self, messages, flags, mode, uid):
            result = {}
            with self.box.store.lock:
                for seq, m in self._select(messages, uid):
                    if mode == 0:
                        m.flags = set(flags)
                    elif mode > 0:
                        m.flags |= set(flags)
                    else:
                        m.flags -= set(flags)
                    result[seq] = sorted(m.flags)
            return result

    @implementer(IAccountIMAP, INamespacePresenter)
    class ImapAccount:
        def __init__(self, store, user):
            self.store = store
            self.user = user
            self.subscriptions = set(store.mailboxes[user])
            self.opened = []

        def _norm(self, name):
            if isinstance(name, bytes):
                name = name.decode("imap4-utf-7")
            return "INBOX" if name.upper() == "INBOX" else name

        def addMailbox(self, name, mbox=None):
            self.store.create(self.user, self._norm(name))
            return True

        def create(self, pathspec):
            self.store.create(self.user, self._norm(pathspec).rstrip("/"))
            return True

        def select(self, name, rw=True):
            box = self.store.mailbox(self.user, self._norm(name))
            if box is None:
                return None
            mbox = ImapMailbox(box, rw)
            self.opened.append(mbox)
            return mbox

        def delete(self, name):
            raise imap4.MailboxException("Permission denied")

        def rename(self, oldname, newname):
            raise imap4.MailboxException("Permission denied")

        def isSubscribed(self, name):
            return self._norm(name) in self.subscriptions

        def subscribe(self, name):
            self.subscriptions.add(self._norm(name))

        def unsubscribe(self, name):
            self.subscriptions.discard(self._norm(name))

        def listMailboxes(self, ref, wildcard):
            pattern = imap4.wildcardToRegexp(self._norm(ref) + self._norm(wildcard), "/")
            out = []
            for name in self.store.mailboxes[self.user]:
                if pattern.match(name):
                    out.append((name, ImapMailbox(self.store.mailbox(self.user, name), False)))
            return out

        def logout(self):
            for mbox in self.opened:
                mbox.close()

        def getPersonalNamespaces(self):
            return [[b"", b"/"]]

        def getSharedNamespaces(self):
            return None

        def getOtherNamespaces(self):
            return None

        def getUserNamespaces(self):
            return None

    class LabIMAP4Server(imap4.IMAP4Server):
        """Twisted's IMAP4 server with three RFC 3501 corrections (see each method)."""

        def __init__(self, hostname, *a, **kw):
            super().__init__(*a, **kw)
            self.IDENT = f"{hostname} IMAP4rev1 Twisted server ready".encode()

        def capabilities(self):
            # Twisted refuses LOGIN before STARTTLS whenever it can offer TLS.
            # The lab allows plain-text LOGIN on 143 (Dovecot's
            # disable_plaintext_auth=no), so that captures can show it.
            cap = super().capabilities()
            cap.pop(b"LOGINDISABLED", None)
            return cap

        def spew_body(self, part, id, msg, _w=None, _f=None):
            # Twisted answers BODY[]<0.100> with the whole message under a
            # "BODY[]<0.100>" label and sends BODY[HEADER] without its blank
            # line and with repeated fields merged. RFC 3501 6.4.5/7.4.2 want
            # the origin-only label "BODY[]<0>" with exactly the requested
            # octets, and the header exactly as stored; produce those here and
            # leave everything else to Twisted.
            if _w is None:
                _w = self.transport.write
            simple_header = part.header is not None and not part.header.fields
            if part.partialBegin is None and not simple_header:
                return super().spew_body(part, id, msg, _w, _f)
            target = msg
            for p in part.part:
                if target.isMultipart():
                    target = target.getSubPart(p)
                elif p > 0:
                    raise TypeError("Requested subpart of non-multipart message")
            raw = target.part
            if part.header is not None:
                data = raw.header_bytes
            elif part.text:
                data = raw.body
            elif part.mime:
                data = raw.header_bytes
            elif part.part:
                data = raw.body
            else:
                data = raw.raw
            begin, length = part.partialBegin, part.partialLength
            saved = part.partialBegin
            part.partialBegin = None
            label = part.getBytes()
            part.partialBegin = saved
            if begin is not None:
                data = data[begin:begin + length]
                label += b"<%d>" % begin
            if not part.peek and hasattr(msg, "stored"):
                msg.stored.flags.add("\\Seen")
            _w(label + b" {%d}\r\n" % len(data))
            _w(data)

        # Twisted's header SEARCH keys compare the (bytes) search string with
        # (str) header values and fail with TypeError; these compare text,
        # matching RFC 2047 encoded words after decoding, as RFC 3501 6.4.4 asks.
        @staticmethod
        def _text(value):
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

        def _header_match(self, name, needle, msg):
            from email.header import decode_header, make_header
            value = msg.getHeaders(False, name).get(name, "")
            try:
                decoded = str(make_header(decode_header(value)))
            except Exception:
                decoded = value
            needle = self._text(needle).lower()
            return needle in value.lower() or needle in decoded.lower()

        def search_FROM(self, query, id, msg):
            return self._header_match("from", query.pop(0), msg)

        def search_TO(self, query, id, msg):
            return self._header_match("to", query.pop(0), msg)

        def search_CC(self, query, id, msg):
            return self._header_match("cc", query.pop(0), msg)

        def search_BCC(self, query, id, msg):
            return self._header_match("bcc", query.pop(0), msg)

        def search_SUBJECT(self, query, id, msg):
            return self._header_match("subject", query.pop(0), msg)

        def search_HEADER(self, query, id, msg):
            name = self._text(query.pop(0)).lower()
            return self._header_match(name, query.pop(0), msg)

        def _cbAppendGotMailbox(self, mbox, tag, flags, date, message):
            # Twisted reports "* N EXISTS" with the count of the mailbox
            # appended to, even when another one (or none) is selected; the
            # untagged EXISTS must describe the selected mailbox only.
            if not mbox:
                self.sendNegativeResponse(tag, "[TRYCREATE] No such mailbox")
                return
            decoded = [f.decode() if isinstance(f, bytes) else f for f in flags]
            d = mbox.addMessage(message, decoded, date)

            def done(_):
                if self.mbox is not None and getattr(self.mbox, "box", None) is mbox.box:
                    self.sendUntaggedResponse(b"%d EXISTS" % (self.mbox.getMessageCount(),))
                self.sendPositiveResponse(tag, b"[APPENDUID %d %d] APPEND completed"
                                          % (mbox.getUIDValidity(), _ or 0))

            def failed(f):
                self.sendBadResponse(tag, b"APPEND failed: " + str(f.value).encode())

            d.addCallbacks(done, failed)

    return ImapAccount, LabIMAP4Server


SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


# --------------------------------------------------------------------------
# POP3 (Twisted)


class _LineAlignedFile:
    """Reads a message as LF-terminated lines, each read ending at a line end.

    Twisted's POP3 server turns LF into CRLF and stuffs dots chunk by chunk;
    chunks that end at line ends let it stuff every line correctly.
    """

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data.replace(b"\r\n", b"\n"))

    def read(self, n=-1):
        chunk = self._f.read(n)
        if chunk and not chunk.endswith(b"\n"):
            chunk += self._f.readline()
        return chunk

    def readline(self, *a):
        return self._f.readline(*a)

    def seek(self, *a):
        return self._f.seek(*a)

    def tell(self):
        return self._f.tell()

    def close(self):
        self._f.close()


def _pop3_classes():
    from twisted.mail import pop3

    @implementer(pop3.IMailbox)
    class Pop3Mailbox:
        """A POP3 maildrop: a snapshot of the INBOX taken at login (RFC 1939 locks it)."""

        def __init__(self, box):
            self.box = box
            self.messages = box.snapshot()
            self.deleted: set[int] = set()

        def listMessages(self, i=None):
            if i is None:
                return [0 if n in self.deleted else m.size for n, m in enumerate(self.messages)]
            if i < 0 or i >= len(self.messages):
                raise ValueError(i)
            return 0 if i in self.deleted else self.messages[i].size

        def getMessage(self, i):
            if i < 0 or i >= len(self.messages) or i in self.deleted:
                raise ValueError(i)
            return _LineAlignedFile(self.messages[i].data)

        def getUidl(self, i):
            if i < 0 or i >= len(self.messages) or i in self.deleted:
                raise ValueError(i)
            m = self.messages[i]
            return f"{self.box.uidvalidity}.{m.uid}".encode()

        def deleteMessage(self, i):
            if i < 0 or i >= len(self.messages):
                raise ValueError(i)
            self.deleted.add(i)

        def undeleteMessages(self):
            self.deleted.clear()

        def sync(self):
            self.box.remove_uids(self.messages[i].uid for i in self.deleted)

    class LabPOP3(pop3.POP3):
        """Twisted's POP3 server with dot-stuffing that is right on every line."""

        hostname = "localhost"

        def generateMagic(self):
            # The APOP timestamp of the greeting (RFC 1939 7), naming this host.
            return f"<{os.getpid()}.{time.time_ns() // 1000}@{self.hostname}>".encode()

        def do_TOP(self, i, size):
            # Twisted answers TOP with "+OK Top of message follows"; RFC 1939
            # leaves the text free, but Wireshark's POP dissector reads a
            # number there (as in "+OK 120 octets") and flags anything else as
            # malformed. Answer with the octet count of what follows.
            try:
                n, lines = int(i) - 1, int(size)
                data = self.mbox.messages[n].data
                if lines < 0:
                    raise ValueError
            except (ValueError, IndexError, AttributeError, TypeError):
                return super().do_TOP(i, size)
            head, sep, body = data.partition(b"\r\n\r\n")
            top = head + sep + b"".join(body.splitlines(keepends=True)[:lines])
            return self._sendMessageContent(
                i, lambda fp: pop3._HeadersPlusNLines(fp, lines),
                lambda _size: f"{len(top)} octets")

        def transformChunk(self, chunk):
            # Twisted stuffs only dots that follow a line break inside the
            # chunk, missing a dot on the chunk's (and the message's) first
            # line -- a lone "." there would end the message early.
            # _LineAlignedFile makes every chunk start at a line start.
            out = chunk.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
            if out.startswith(b"."):
                out = b"." + out
            return out

    return Pop3Mailbox, LabPOP3


# --------------------------------------------------------------------------
# cred: one realm per domain for IMAP and POP3


def make_portal(store):
    """A Twisted cred portal over the store's users (IMAP IAccount, POP3 IMailbox)."""
    from twisted.cred import checkers, credentials, error, portal
    from twisted.internet import defer
    from twisted.mail import imap4, pop3

    ImapAccount, _ = imap_classes()
    Pop3Mailbox, _ = pop3_classes()

    @implementer(checkers.ICredentialsChecker)
    class StoreChecker:
        credentialInterfaces = (credentials.IUsernamePassword,)

        def requestAvatarId(self, creds):
            user = creds.username.decode() if isinstance(creds.username, bytes) else creds.username
            pw = creds.password.decode() if isinstance(creds.password, bytes) else creds.password
            if store.check_password(user, pw):
                return defer.succeed(user)
            return defer.fail(error.UnauthorizedLogin())

    @implementer(portal.IRealm)
    class Realm:
        def requestAvatar(self, avatar_id, mind, *interfaces):
            if imap4.IAccount in interfaces:
                account = ImapAccount(store, avatar_id)
                return imap4.IAccount, account, account.logout
            if pop3.IMailbox in interfaces:
                return pop3.IMailbox, Pop3Mailbox(store.mailbox(avatar_id)), lambda: None
            # twisted.cred's contract for an interface this realm does not serve
            # (IRealm.requestAvatar); the portal turns it into a failed login
            raise NotImplementedError(interfaces)

    return portal.Portal(Realm(), [StoreChecker()])


_classes: dict = {}


def imap_classes():
    if "imap" not in _classes:
        _classes["imap"] = _imap_classes()
    return _classes["imap"]


def pop3_classes():
    if "pop3" not in _classes:
        _classes["pop3"] = _pop3_classes()
    return _classes["pop3"]


def imap_factory(lab, hostname, portal, tls_options=None):
    """A Twisted server factory for IMAP4 (STARTTLS offered when ``tls_options``)."""
    from twisted.internet import protocol
    _, LabIMAP4Server = imap_classes()

    class Factory(protocol.ServerFactory):
        noisy = False

        def buildProtocol(self, addr):
            p = LabIMAP4Server(hostname, contextFactory=tls_options)
            p.portal = portal
            p.factory = self
            lab.track_twisted(p)
            return p

    return Factory()


def pop3_factory(lab, portal, hostname):
    from twisted.internet import protocol
    _, LabPOP3 = pop3_classes()

    class Factory(protocol.ServerFactory):
        noisy = False

        def buildProtocol(self, addr):
            p = LabPOP3()
            p.hostname = hostname
            p.portal = portal
            p.factory = self
            lab.track_twisted(p)
            return p

    return Factory()
