"""The lab: two mail domains with all their services, the network and the capture.

A :class:`Lab` is a context manager. Entering it starts, for alice.example on
127.0.0.20 and bob.example on 127.0.0.30, an MTA (aiosmtpd on 25 and 587, and
465 with TLS) with its relay queue, IMAP4 (143, 993) and POP3 (110, 995) from
Twisted, and the webmail (uvicorn on 80, 443), all over each domain's mailbox
store; plus the capture (live tcpdump, or recording relays for a synthetic
pcap). Leaving it -- normally or on an error -- stops the queues, closes every
listening socket and leftover connection, stops the capture and the event loop.
"""

from __future__ import annotations

import logging
import socket
import time

from . import net
from .content import ALICE_DOMAIN, BOB_DOMAIN, ContentFactory, make_users
from .manifest import Manifest
from .net import ALICE_MX, BOB_MX, SERVICES, Network, hold_port, listen_socket
from .record import Recorder, RecordingRelay
from .imap_server import imap_factory
from .pop3_server import pop3_factory
from .servers import LoopThread, make_portal, reactor_call
from .smtp_server import Mta
from .store import MailStore

#: Services started on each mail server; the TLS ones only when TLS is wanted.
PLAIN_SERVICES = ("smtp", "submission", "imap", "pop3", "http")
TLS_SERVICES = ("submissions", "imaps", "pop3s", "https")


class Service:
    """One listening service of a mail server, and its public endpoint.

    In live mode the server itself listens on the logical (standard) port when
    it can. In synthetic mode the server listens on a free port and a
    recording relay, the public endpoint, on another. ``down()`` closes the
    public endpoint and holds its port with a socket that does not listen, so
    that connections are refused until ``up()``.
    """

    def __init__(self, lab: "Lab", ip: str, name: str, kind: str, factory, ssl=None):
        self.lab, self.ip, self.name, self.kind = lab, ip, name, kind
        self.factory, self.ssl = factory, ssl
        self.logical = SERVICES[name][0]
        self.public_port = None
        self.backend_port = None
        self.fallback = False
        self._server = None  # asyncio Server / twisted port / (uvicorn server, task)
        self._relay: RecordingRelay | None = None
        self._hold: socket.socket | None = None

    # --- starting servers of each kind on a socket we bound ourselves ---
    def _start_server(self, sock):
        lab = self.lab
        if self.kind == "asyncio":
            self._server = lab.loop.run(lab.loop.loop.create_server(self.factory, sock=sock, ssl=self.ssl))
        elif self.kind == "twisted":
            from twisted.internet import reactor
            factory = self.factory
            if self.ssl is not None:
                from twisted.protocols.tls import TLSMemoryBIOFactory
                factory = TLSMemoryBIOFactory(self.ssl, False, factory)
            try:
                self._server = reactor_call(reactor.adoptStreamPort, sock.fileno(), socket.AF_INET, factory)
            finally:
                sock.close()  # Twisted holds its own duplicate of the descriptor
        elif self.kind == "uvicorn":
            import uvicorn
            kw = dict(log_config=None, log_level="warning", access_log=False, lifespan="off",
                      http="h11", ws="none", timeout_graceful_shutdown=2, server_header=True)
            if self.ssl is not None:
                kw.update(ssl_certfile=lab.tls.cert_file, ssl_keyfile=lab.tls.key_file)
            server = uvicorn.Server(uvicorn.Config(self.factory, **kw))

            async def start():
                task = lab.loop.loop.create_task(server.serve(sockets=[sock]))
                for _ in range(500):
                    if server.started or task.done():
                        break
                    await _sleep(0.01)
                if task.done():
                    task.result()
                return task

            self._server = (server, lab.loop.run(start()))
        elif self.kind == "hypercorn":
            # HTTPS webmail as browsers get it today: TLS with ALPN offering h2 and
            # http/1.1, so that an HTTP/2 client negotiates HTTP/2.
            import asyncio

            from hypercorn.asyncio import serve
            from hypercorn.config import Config

            config = Config()
            config.bind = [f"fd://{sock.detach()}"]
            config.certfile, config.keyfile = lab.tls.cert_file, lab.tls.key_file
            config.alpn_protocols = ["h2", "http/1.1"]
            config.accesslog = config.errorlog = None
            config.graceful_timeout = 2.0

            async def start():
                stop = asyncio.Event()
                task = lab.loop.loop.create_task(serve(self.factory, config, shutdown_trigger=stop.wait))
                await _sleep(0.05)
                if task.done():
                    task.result()  # it could not start: say why
                return stop, task

            self._server = lab.loop.run(start())
        else:
            raise ValueError(self.kind)

    def _stop_server(self):
        lab = self.lab
        if self._server is None:
            return
        if self.kind == "asyncio":
            lab.loop.run(_close_server(self._server))  # closed when this returns
        elif self.kind == "twisted":
            reactor_call(self._server.stopListening)
        elif self.kind == "uvicorn":
            server, task = self._server
            server.should_exit = True
            server.force_exit = True

            async def wait():
                await task
            try:
                lab.loop.run(wait(), timeout=5)
            except Exception:
                pass
        elif self.kind == "hypercorn":
            stop, task = self._server

            async def shutdown():
                stop.set()
                await task
            try:
                lab.loop.run(shutdown(), timeout=5)
            except Exception:
                pass
        self._server = None

    def start(self):
        lab = self.lab
        if lab.synthetic:
            backend = listen_socket(self.ip, 0)
            self.backend_port = backend.getsockname()[1]
            self._start_server(backend)
            self._open_relay(listen_socket(self.ip, 0))
        else:
            try:
                sock = listen_socket(self.ip, self.logical)
            except OSError:
                # Standard port taken (or privileged): any free port; the pcap
                # then shows that port, and the manifest says so.
                sock = listen_socket(self.ip, 0)
                self.fallback = True
            self.public_port = sock.getsockname()[1]
            self._start_server(sock)
        lab.network.publish(self.ip, self.logical, self.public_port)

    def _open_relay(self, sock):
        lab = self.lab
        self.public_port = sock.getsockname()[1]
        self._relay = RecordingRelay(lab.loop.loop, lab.recorder, self.ip, self.logical,
                                     (self.ip, self.backend_port), self.name)
        lab.loop.run(self._relay.start(sock))

    def down(self):
        """Stop accepting connections: the kernel refuses them (SYN answered by RST)."""
        if self._hold is not None:
            return
        if self.lab.synthetic:
            self.lab.loop.run(self._relay.stop())
            self._relay = None
        else:
            self._stop_server()  # (waits until the listening socket is closed)
        self._hold = hold_port(self.ip, self.public_port)

    def up(self):
        if self._hold is None:
            return
        self._hold.close()
        self._hold = None
        sock = listen_socket(self.ip, self.public_port)
        if self.lab.synthetic:
            self._open_relay(sock)
        else:
            self._start_server(sock)

    def stop(self):
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        if self._relay is not None:
            try:
                self.lab.loop.run(self._relay.stop())
            finally:
                self._relay = None
        self._stop_server()

    def describe(self) -> dict:
        port, proto, tls = SERVICES[self.name]
        software = {"asyncio": "aiosmtpd", "twisted": f"twisted.mail.{proto if proto != 'imap' else 'imap4'}",
                    "uvicorn": "starlette under uvicorn",
                    "hypercorn": "starlette under hypercorn (HTTP/2 and HTTP/1.1)"}[self.kind]
        d = {"host": net.NAME_OF[self.ip], "ip": self.ip, "port": port, "service": self.name,
             "protocol": proto, "tls": tls or ("starttls-offered" if self._starttls() else None),
             "software": software, "listen_port": self.public_port}
        if self.lab.synthetic:
            d["server_port"] = self.backend_port
        if self.fallback:
            d["note"] = "standard port unavailable: the capture shows listen_port"
        return d

    def _starttls(self) -> bool:
        return self.lab.tls_enabled and self.name in ("smtp", "submission", "imap")


async def _close_server(server):
    server.close()


async def _sleep(t):
    import asyncio
    await asyncio.sleep(t)


class _KnownWarnings(logging.Filter):
    """Drops aiosmtpd's warnings about choices the lab makes on purpose."""

    TEXTS = ("auth_require_tls == False", "login_data is deprecated")

    def filter(self, record):
        return not any(t in record.getMessage() for t in self.TEXTS)


class _ErrorLog(logging.Handler):
    def __init__(self, sink):
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record):
        self.sink.append(f"{record.name}: {record.getMessage()}")


class Lab:
    """Everything one generator run needs; use as a context manager."""

    def __init__(self, *, synthetic: bool, seed: int = 1, users: int = 1,
                 attachment_size: int = 4096, keylog: str | None = None, tls: bool = False,
                 retry_delay: float = 0.75, progress=None):
        self.synthetic = synthetic
        self.seed = seed
        self.tls_enabled = tls
        self.keylog = keylog
        self.progress = progress or (lambda msg: None)
        self.manifest = Manifest()
        self.recorder = Recorder() if synthetic else None
        self.network = Network(self.manifest, self.recorder)
        self.content = ContentFactory(seed, attachment_size)
        self.alice_users, self.bob_users = make_users(seed, users)
        self.stores = {ALICE_DOMAIN: MailStore(ALICE_DOMAIN, self.alice_users, 1_700_000_000),
                       BOB_DOMAIN: MailStore(BOB_DOMAIN, self.bob_users, 1_700_100_000)}
        self.retry_delay = retry_delay
        self.services: dict[tuple[str, str], Service] = {}
        self.mtas: dict[str, Mta] = {}
        self.webmails = {}
        self.server_errors: list[str] = []
        self.service_descriptions: list[dict] = []
        self.tls = None
        self.loop = None
        self._smtp_protocols = []
        self._twisted_protocols = []
        self._log_handler = None
        self._twisted_observer = None

    # convenient names
    @property
    def alice(self):
        return self.alice_users[0]

    @property
    def bob(self):
        return self.bob_users[0]

    def mta(self, domain: str) -> Mta:
        return self.mtas[domain]

    def service(self, ip: str, name: str) -> Service:
        return self.services[(ip, name)]

    def track_smtp(self, proto):
        self._smtp_protocols.append(proto)

    def track_twisted(self, proto):
        self._twisted_protocols.append(proto)

    def smtp_received(self, server_ip: str, qid: str | None) -> bytes | None:
        for mta in self.mtas.values():
            if mta.ip == server_ip and qid:
                return mta.received.get(qid)
        return None

    # --- life cycle ---
    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _start(self):
        from .tls import TlsMaterial
        from .webmail import Webmail

        self._log_handler = _ErrorLog(self.server_errors)
        for name in ("mail.log", "uvicorn.error", "uvicorn"):
            logging.getLogger(name).addHandler(self._log_handler)
        self._log_filter = _KnownWarnings()
        logging.getLogger("mail.log").addFilter(self._log_filter)
        self._watch_twisted()
        self.tls = TlsMaterial(self.keylog)
        self.loop = LoopThread()
        for domain, ip, host in ((ALICE_DOMAIN, ALICE_MX, "mail.alice.example"),
                                 (BOB_DOMAIN, BOB_MX, "mail.bob.example")):
            store = self.stores[domain]
            mta = Mta(self, domain, host, ip, store, self.seed)
            mta.queue.retry_delay = self.retry_delay
            self.mtas[domain] = mta
            self.webmails[domain] = Webmail(self, mta, self.seed)
            self._start_services(mta)
            mta.queue.start()
        self.service_descriptions = [svc.describe() for svc in self.services.values()]

    def _start_services(self, mta: Mta):
        ip = mta.ip
        tls = self.tls if self.tls_enabled else None
        server_ctx = tls.server_context() if tls else None
        portal = make_portal(mta.store)
        twisted_tls = tls.twisted_options() if tls else None
        specs = {
            "smtp": ("asyncio", mta.smtp_factory("mx", tls=server_ctx), None),
            "submission": ("asyncio", mta.smtp_factory("submission", tls=server_ctx, require_auth=True), None),
            "imap": ("twisted", imap_factory(self, mta.hostname, portal, twisted_tls), None),
            "pop3": ("twisted", pop3_factory(self, portal, mta.hostname), None),
            "http": ("uvicorn", self.webmails[mta.domain].app, None),
        }
        if tls:
            specs.update({
                "submissions": ("asyncio", mta.smtp_factory("submission", require_auth=True), server_ctx),
                "imaps": ("twisted", imap_factory(self, mta.hostname, portal, None), twisted_tls),
                "pop3s": ("twisted", pop3_factory(self, portal, mta.hostname), twisted_tls),
                "https": ("hypercorn", self.webmails[mta.domain].app, True),
            })
        for name, (kind, factory, ssl) in specs.items():
            svc = Service(self, ip, name, kind, factory, ssl)
            self.services[(ip, name)] = svc
            svc.start()

    def _watch_twisted(self):
        from twisted.logger import formatEvent, globalLogPublisher

        errors = self.server_errors

        def observer(event):
            failure = event.get("log_failure")
            if failure is not None or event.get("isError"):
                text = formatEvent(event)
                if failure is not None:
                    text += ": " + failure.getTraceback()
                errors.append("twisted: " + text)

        globalLogPublisher.addObserver(observer)
        self._twisted_observer = observer

    def wait_queues(self, timeout: float = 20.0) -> None:
        """Wait until both relay queues are empty (delivered or bounced)."""
        deadline = time.time() + timeout
        for mta in self.mtas.values():
            if not mta.queue.wait_idle(max(0.1, deadline - time.time())):
                raise TimeoutError(f"relay queue of {mta.hostname} still busy after {timeout}s")

    def close(self):
        """Stop everything this lab started; safe to call more than once."""
        for mta in self.mtas.values():
            mta.queue.stop()
        for svc in list(self.services.values()):
            try:
                svc.stop()
            except Exception as e:  # keep stopping the others
                self.server_errors.append(f"stopping {svc.name} on {svc.ip}: {e}")
        self.services.clear()
        if self.loop is not None:
            def abort_smtp():
                for p in self._smtp_protocols:
                    t = getattr(p, "transport", None)
                    if t is not None and not t.is_closing():
                        t.abort()
            self.loop.call(abort_smtp)
            self.loop.stop()
            self.loop = None
        if self._twisted_protocols:
            def abort_twisted():
                for p in self._twisted_protocols:
                    t = getattr(p, "transport", None)
                    if t is not None and getattr(p, "connected", 0):
                        t.abortConnection()
            try:
                reactor_call(abort_twisted)
            except Exception:
                pass
            self._twisted_protocols = []
        if self._twisted_observer is not None:
            from twisted.logger import globalLogPublisher
            globalLogPublisher.removeObserver(self._twisted_observer)
            self._twisted_observer = None
        if self._log_handler is not None:
            for name in ("mail.log", "uvicorn.error", "uvicorn"):
                logging.getLogger(name).removeHandler(self._log_handler)
            logging.getLogger("mail.log").removeFilter(self._log_filter)
            self._log_handler = None
        if self.tls is not None:
            self.tls.close()
            self.tls = None

    # --- set-up helpers for scenarios ---
    def store_directly(self, user, data: bytes, mail_from: str, mailbox: str = "INBOX",
                       how: str = "set-up") -> None:
        """Put a message into a mailbox without network traffic (scenario preparation)."""
        box = self.stores[user.domain].mailbox(user.user, mailbox)
        top = f"Return-Path: <{mail_from}>\r\nDelivered-To: {user.address}\r\n".encode()
        stored = box.append(top + data)
        self.manifest.add_stored(user=user.address, mailbox=mailbox, data=top + data,
                                 uid=stored.uid, how=how)
