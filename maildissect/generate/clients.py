"""The lab's clients: the standard library's smtplib, imaplib, poplib, and httpx.

Each is used as it comes; the subclasses here only change how the TCP
connection is made -- through :meth:`.net.Network.connect`, which binds the
host's own source address, maps the logical port and registers the session in
the manifest -- and keep the session at hand so that what the client sends and
receives can be recorded.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import time

from .net import PORT_SERVICE


class SmtpFailure(Exception):
    """A reply that ends an SMTP transaction (greeting, MAIL, DATA...)."""

    def __init__(self, code: int, text: str, session_id: int | None):
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text
        self.session_id = session_id


def _connect(client, host, port, timeout):
    sock, client.session = client._lab.network.connect(
        client._src_ip, host, port, service=client._service, purpose=client._purpose,
        timeout=timeout, tls=client._tls)
    return sock


class LabSMTP(smtplib.SMTP):
    """smtplib.SMTP connecting from the lab host's address."""

    def __init__(self, lab, src_ip, service, purpose, tls=None, **kw):
        self._lab, self._src_ip, self._service, self._purpose, self._tls = lab, src_ip, service, purpose, tls
        self.session = None
        super().__init__(**kw)

    def _get_socket(self, host, port, timeout):
        return _connect(self, host, port, timeout)


class LabSMTP_SSL(smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL (implicit TLS, port 465) from the lab host's address."""

    def __init__(self, lab, src_ip, service, purpose, tls="implicit", **kw):
        self._lab, self._src_ip, self._service, self._purpose, self._tls = lab, src_ip, service, purpose, tls
        self.session = None
        super().__init__(**kw)

    def _get_socket(self, host, port, timeout):
        sock = _connect(self, host, port, timeout)
        return self.context.wrap_socket(sock, server_hostname=self._host)


_QUEUED = re.compile(r"queued as (\S+)", re.I)


class SmtpClient:
    """One SMTP session: connect, EHLO, optional STARTTLS and AUTH, send messages.

    ``implicit`` connects with TLS from the start (465); ``starttls`` upgrades
    after EHLO (required unless ``opportunistic``, then only when offered).
    ``mechanism`` picks the AUTH mechanism (PLAIN or LOGIN; default: smtplib's
    choice among what the server offers).
    """

    def __init__(self, lab, src_ip, host, port, *, service, purpose, ehlo_name,
                 starttls=False, opportunistic=False, implicit=False,
                 user=None, password=None, mechanism=None, timeout=10.0):
        self.lab = lab
        tls = "implicit" if implicit else ("starttls" if starttls and not opportunistic else None)
        kw = dict(local_hostname=ehlo_name, timeout=timeout)
        if implicit:
            self.smtp = LabSMTP_SSL(lab, src_ip, service, purpose, context=lab.tls.client, **kw)
        else:
            self.smtp = LabSMTP(lab, src_ip, service, purpose, tls=tls, **kw)
        self.host, self.port = host, port
        self.starttls, self.opportunistic = starttls, opportunistic
        self.user, self.password, self.mechanism = user, password, mechanism

    @property
    def session(self):
        return self.smtp.session

    def __enter__(self):
        smtp = self.smtp
        smtp._host = self.host
        try:
            code, msg = smtp.connect(self.host, self.port)
            if code != 220:
                raise SmtpFailure(code, msg.decode(errors="replace"), self.session.id)
            smtp.ehlo()
            if self.starttls and (not self.opportunistic or smtp.has_extn("starttls")):
                smtp.starttls(context=self.lab.tls.client)
                self.session.tls = "starttls"
                smtp.ehlo()
            if self.user is not None:
                self._auth()
        except BaseException:
            self._close()
            raise
        return self

    def _auth(self):
        smtp = self.smtp
        mech = self.mechanism
        try:
            if mech is None:
                code, _ = smtp.login(self.user, self.password)
                offered = smtp.esmtp_features.get("auth", "").upper().split()
                mech = next(m for m in ("CRAM-MD5", "PLAIN", "LOGIN") if m in offered)
            else:
                smtp.user, smtp.password = self.user, self.password
                method = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login}[mech]
                code, _ = smtp.auth(mech, method, initial_response_ok=(mech == "PLAIN"))
            self.session.credential(mech, self.user, self.password, code == 235)
        except smtplib.SMTPAuthenticationError:
            self.session.credential(mech or "PLAIN", self.user, self.password, False)
            raise

    def send(self, mail_from, rcpts, data: bytes, *, direction="sent", kind="data",
             relay_queue_id=None) -> dict:
        """MAIL, RCPT per recipient, DATA; records the message as the server received it."""
        smtp = self.smtp
        ts = time.time()
        code, msg = smtp.mail(mail_from)
        if code != 250:
            smtp.rset()
            raise SmtpFailure(code, msg.decode(errors="replace"), self.session.id)
        accepted, refused = [], {}
        for r in rcpts:
            code, msg = smtp.rcpt(r)
            if code in (250, 251):
                accepted.append(r)
            else:
                refused[r] = (code, msg.decode(errors="replace"))
        if not accepted:
            smtp.rset()
            return {"rcpt_to": [], "refused": refused, "reply": "", "queue_id": None}
        code, msg = smtp.data(data)
        reply = f"{code} {msg.decode(errors='replace')}"
        if code != 250:
            raise SmtpFailure(code, msg.decode(errors="replace"), self.session.id)
        m = _QUEUED.search(reply)
        qid = m.group(1) if m else None
        received = self.lab.smtp_received(self.session.server_ip, qid)
        if received is None:
            # Not one of the lab's MTAs (cannot happen in a lab run): what was sent.
            received = data if data.endswith(b"\r\n") else data + b"\r\n"
        extra = {"queue_id": qid, "reply_code": str(code), "reply_text": msg.decode(errors="replace")}
        if relay_queue_id:
            extra["relay_queue_id"] = relay_queue_id
        self.lab.manifest.add_message(
            self.session, protocol="smtp", direction=direction, kind=kind, data=received, ts=ts,
            source="DATA", envelope={"mail_from": mail_from, "rcpt_to": accepted,
                                     "rcpt_rejected": sorted(refused)},
            extra=extra)
        return {"rcpt_to": accepted, "refused": refused, "reply": reply, "queue_id": qid}

    def _close(self):
        try:
            self.smtp.close()
        finally:
            if self.session is not None and self.session.end is None:
                self.session.end = time.time()

    def __exit__(self, *exc):
        try:
            if self.smtp.sock is not None:
                self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        self._close()
        return False


# --------------------------------------------------------------------------
# IMAP


class LabIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 from the lab host's address (STARTTLS via .starttls())."""

    def __init__(self, lab, src_ip, host, port, purpose, service="imap", timeout=10.0):
        self._lab, self._src_ip, self._service, self._purpose, self._tls = lab, src_ip, service, purpose, None
        self.session = None
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return _connect(self, self.host, self.port, timeout)


class LabIMAP4_SSL(imaplib.IMAP4_SSL):
    """imaplib.IMAP4_SSL (implicit TLS, 993) from the lab host's address."""

    def __init__(self, lab, src_ip, host, port, purpose, service="imaps", timeout=10.0):
        self._lab, self._src_ip, self._service, self._purpose, self._tls = lab, src_ip, service, purpose, "implicit"
        self.session = None
        super().__init__(host, port, ssl_context=lab.tls.client, timeout=timeout)

    def _create_socket(self, timeout):
        sock = _connect(self, self.host, self.port, timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imap_literals(data) -> list[tuple[bytes, bytes]]:
    """(response line, literal) pairs of an imaplib FETCH result."""
    return [(item[0], item[1]) for item in data if isinstance(item, tuple)]


# --------------------------------------------------------------------------
# POP3


class LabPOP3(poplib.POP3):
    """poplib.POP3 from the lab host's address."""

    def __init__(self, lab, src_ip, host, port, purpose, service="pop3", timeout=10.0):
        self._lab, self._src_ip, self._service, self._purpose, self._tls = lab, src_ip, service, purpose, None
        self.session = None
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return _connect(self, self.host, self.port, timeout)


class LabPOP3_SSL(poplib.POP3_SSL):
    """poplib.POP3_SSL (implicit TLS, 995) from the lab host's address."""

    def __init__(self, lab, src_ip, host, port, purpose, service="pop3s", timeout=10.0):
        self._lab, self._src_ip, self._service, self._purpose, self._tls = lab, src_ip, service, purpose, "implicit"
        self.session = None
        super().__init__(host, port, context=lab.tls.client, timeout=timeout)

    def _create_socket(self, timeout):
        sock = _connect(self, self.host, self.port, timeout)
        return self.context.wrap_socket(sock, server_hostname=self.host)


def pop3_body(lines: list[bytes]) -> bytes:
    """The message poplib returned (lines already un-stuffed), as CRLF-terminated bytes."""
    return b"".join(line + b"\r\n" for line in lines)


# --------------------------------------------------------------------------
# HTTP


class http_client:
    """Context manager: an httpx.Client whose connections are lab connections from ``src_ip``.

    On exit the client is closed and its sessions get their end time.
    """

    def __init__(self, lab, src_ip, base_url: str, purpose: str, https: bool = False):
        self.sessions: list = []
        self.client = _make_http_client(lab, src_ip, base_url, purpose, https, self.sessions)

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        now = time.time()
        for s in self.sessions:
            if s.end is None:
                s.end = now
        return False


def _make_http_client(lab, src_ip, base_url, purpose, https, sessions):
    import httpcore
    import httpx
    from httpcore._backends.sync import SyncBackend, SyncStream

    network = lab.network

    class LabBackend(SyncBackend):
        def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            service = PORT_SERVICE.get(port, "https" if https else "http")
            try:
                sock, session = network.connect(src_ip, host, port, service=service, purpose=purpose,
                                                timeout=timeout, tls="implicit" if https else None)
                sessions.append(session)
            except OSError as e:
                raise httpcore.ConnectError(str(e)) from e
            return SyncStream(sock)

    ctx = lab.tls.client if (https and lab.tls is not None) else None

    class LabTransport(httpx.HTTPTransport):
        def __init__(self):
            super().__init__(verify=ctx if ctx is not None else True)
            # httpx takes no network backend argument; its pool does.
            # Over TLS the client offers h2 by ALPN, as a browser does; plain HTTP stays HTTP/1.1.
            self._pool = httpcore.ConnectionPool(ssl_context=ctx, http1=True, http2=ctx is not None,
                                                 network_backend=LabBackend())

    return httpx.Client(base_url=base_url, transport=LabTransport(), timeout=10.0,
                        headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) maildissect-lab-browser/1.0"},
                        follow_redirects=False)


def http_session(lab, response):
    """The manifest session whose connection carried ``response``."""
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    sock = stream.get_extra_info("socket")
    if sock is None:
        return None
    ip, port = sock.getsockname()[:2]
    return lab.network.session_for(ip, port)
