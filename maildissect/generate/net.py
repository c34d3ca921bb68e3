"""The lab's little network: hosts on loopback addresses, services, connections.

Each host has its own loopback address so that a capture reads like a network::

    alice-pc.alice.example   127.0.0.10   Alice's user agent
    mail.alice.example       127.0.0.20   Alice's mail server (MTA, IMAP, POP3, webmail)
    mail.bob.example         127.0.0.30   Bob's mail server
    bob-pc.bob.example       127.0.0.40   Bob's user agent

Services have *logical* ports, the standard ones (25, 587, 465, 143, 993, 110,
995, 80, 443). Where they really listen depends on the capture mode: in live mode
on the standard port itself (falling back to a free port when that one is taken
or needs privileges); in synthetic mode a recording relay listens on a free high
port and the synthesised pcap shows the logical port. :class:`Network` maps
(address, logical port) to the real port, and every client in the lab -- user
agents, the relay queue, the webmail's SMTP submission -- connects through
:meth:`Network.connect`, which binds the host's source address and registers the
connection as a manifest session. A refused connection is a real one: the
service's port is held by a bound socket that does not listen, so the kernel
answers the SYN with a RST.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

ALICE_PC = "127.0.0.10"
ALICE_MX = "127.0.0.20"
BOB_MX = "127.0.0.30"
BOB_PC = "127.0.0.40"


@dataclass(frozen=True)
class Host:
    """A host of the lab network."""

    name: str
    ip: str
    role: str


HOSTS = (
    Host("alice-pc.alice.example", ALICE_PC, "Alice's user agent (mail client, browser)"),
    Host("mail.alice.example", ALICE_MX, "alice.example mail server: MTA with queue, IMAP, POP3, webmail"),
    Host("mail.bob.example", BOB_MX, "bob.example mail server: MTA with queue, IMAP, POP3, webmail"),
    Host("bob-pc.bob.example", BOB_PC, "Bob's user agent (mail client, browser)"),
)
NAMES = {h.name: h.ip for h in HOSTS}
NAME_OF = {h.ip: h.name for h in HOSTS}

#: MX records of the lab's DNS.
MX = {"alice.example": "mail.alice.example", "bob.example": "mail.bob.example"}

#: service name -> (standard port, protocol, TLS mode)
SERVICES = {
    "smtp": (25, "smtp", None),              # MX, server to server; STARTTLS offered in tls runs
    "submission": (587, "smtp", None),       # user agents, AUTH; STARTTLS when asked
    "submissions": (465, "smtp", "implicit"),
    "imap": (143, "imap", None),
    "imaps": (993, "imap", "implicit"),
    "pop3": (110, "pop3", None),
    "pop3s": (995, "pop3", "implicit"),
    "http": (80, "http", None),
    "https": (443, "http", "implicit"),
}
PORT_SERVICE = {port: name for name, (port, _, _) in SERVICES.items()}


class Network:
    """Name resolution, port mapping and client connections for one lab run."""

    def __init__(self, manifest, recorder=None, connect_timeout: float = 5.0):
        self.manifest = manifest
        self.recorder = recorder  # synthetic mode: told about refused connections
        self.connect_timeout = connect_timeout
        self._ports: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._by_client: dict[tuple[str, int], object] = {}

    # --- ports -----------------------------------------------------------
    def publish(self, ip: str, logical_port: int, real_port: int) -> None:
        """Say where (ip, logical_port) really listens (or is held, when down)."""
        with self._lock:
            self._ports[(ip, logical_port)] = real_port

    def real_port(self, ip: str, logical_port: int) -> int:
        with self._lock:
            return self._ports.get((ip, logical_port), logical_port)

    @staticmethod
    def resolve(host: str) -> str:
        """The lab's /etc/hosts: a host name or an address to an address."""
        return NAMES.get(host.lower().rstrip("."), host)

    # --- connections -----------------------------------------------------
    def connect(self, src_ip: str, host: str, port: int, *, service: str, purpose: str,
                timeout: float | None = None, tls: str | None = None):
        """Open a TCP connection from ``src_ip`` to (host, logical port).

        Returns ``(socket, session)``; the session is already in the manifest.
        Raises ConnectionRefusedError (after recording the refused attempt) when
        nothing listens.
        """
        dst_ip = self.resolve(host)
        protocol = SERVICES[service][1] if service in SERVICES else service
        session = self.manifest.new_session(
            protocol=protocol, service=service, purpose=purpose, client_ip=src_ip,
            server_ip=dst_ip, server_port=port, server_name=NAME_OF.get(dst_ip, host), tls=tls)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((src_ip, 0))
            session.client_port = sock.getsockname()[1]
            with self._lock:
                self._by_client[(src_ip, session.client_port)] = session
            sock.settimeout(timeout if timeout is not None else self.connect_timeout)
            session.start = time.time()
            sock.connect((dst_ip, self.real_port(dst_ip, port)))
        except ConnectionRefusedError as e:
            e.session = session  # the caller may want to name the refused session
            session.end = time.time()
            session.outcome = "refused"
            if self.recorder is not None:
                self.recorder.refused(src_ip, session.client_port, dst_ip, port, session.start)
            sock.close()
            raise
        except BaseException:
            session.end = time.time()
            session.outcome = "error"
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, session

    def session_for(self, client_ip: str, client_port: int):
        """The manifest session of a client endpoint (HTTP clients look theirs up)."""
        with self._lock:
            return self._by_client.get((client_ip, client_port))


def hold_port(ip: str, port: int) -> socket.socket:
    """Bind (ip, port) without listening: connections to it are refused by the kernel."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    return s


def listen_socket(ip: str, port: int, backlog: int = 64) -> socket.socket:
    """A listening socket on (ip, port); port 0 picks a free one."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ip, port))
        s.listen(backlog)
    except BaseException:
        s.close()
        raise
    s.setblocking(False)
    return s
