"""Which protocol a connection speaks: by server port first, else by its first bytes.

Known ports decide at once (25/587/2525 SMTP, 143 IMAP, 110 POP3, 80/8080/8000/3000
and the proxy port 3128 HTTP, 1080 SOCKS; 465/993/995/443 the same protocols inside
implicit TLS). On any other port the first bytes of each side are sniffed (bounded by
``Limits.max_detect_bytes``) with each dissector's ``looks_like_*`` test.
"""

from __future__ import annotations

import importlib

ANOMALIES = {
    "detect_unknown_protocol": "a connection on an unknown port whose first bytes match no mail protocol",
}

#: server port -> (protocol, implicit TLS)
PORTS: dict[int, tuple[str, bool]] = {
    25: ("smtp", False), 587: ("smtp", False), 2525: ("smtp", False), 465: ("smtp", True),
    143: ("imap", False), 993: ("imap", True),
    110: ("pop3", False), 995: ("pop3", True),
    80: ("http", False), 8080: ("http", False), 8000: ("http", False), 3000: ("http", False),
    3128: ("http", False),  # Squid and other HTTP proxies (CONNECT)
    443: ("http", True), 8443: ("http", True),
    1080: ("socks", False),
}

#: content sniffers in the order they are tried: (protocol, "module:function")
SNIFFERS = (
    ("smtp", "maildissect.protocols.smtp:looks_like_smtp"),
    ("pop3", "maildissect.protocols.pop3:looks_like_pop3"),
    ("imap", "maildissect.protocols.imap:looks_like_imap"),
    ("http", "maildissect.protocols.http:looks_like_http"),
    ("socks", "maildissect.protocols.socks:looks_like_socks"),
)

_sniffers: list | None = None


def _load_sniffers():
    global _sniffers
    if _sniffers is None:
        _sniffers = []
        for proto, ref in SNIFFERS:
            modname, _, fn = ref.partition(":")
            try:
                _sniffers.append((proto, getattr(importlib.import_module(modname), fn)))
            except (ImportError, AttributeError):
                continue
    return _sniffers


def by_port(server_port: int, extra: dict[int, str] | None = None) -> tuple[str, bool] | None:
    """(protocol, implicit_tls) for a server port, or None."""
    if extra and server_port in extra:
        return parse_name(extra[server_port])
    return PORTS.get(server_port)


def parse_name(name: str) -> tuple[str, bool]:
    """'smtp' -> (smtp, False); 'imaps' or 'imap+tls' -> (imap, True)."""
    name = name.lower()
    if name.endswith("+tls"):
        return name[:-4], True
    if name in ("smtps", "imaps", "pop3s", "https"):
        return name[:-1], True
    return name, False


def looks_like_tls(first: bytes) -> bool:
    """A TLS handshake record (ClientHello or ServerHello) starts these bytes."""
    return len(first) >= 3 and first[0] == 0x16 and first[1] == 0x03 and first[2] <= 0x04


def by_content(client_first: bytes, server_first: bytes, final: bool = False) -> str | None:
    """Protocol name from the first bytes of each side.

    Returns None while undecided; "" when no mail protocol matches and waiting
    longer will not help (``final``, or both sides have spoken).
    """
    if looks_like_tls(client_first) or looks_like_tls(server_first):
        return "tls"
    for proto, test in _load_sniffers():
        try:
            if test(client_first, server_first):
                return proto
        except Exception:  # a sniffer must not take the pipeline down
            continue
    if final or (client_first and server_first and (b"\n" in client_first and b"\n" in server_first)):
        return ""
    return None
