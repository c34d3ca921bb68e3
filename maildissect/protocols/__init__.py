"""Protocol dissectors and the registry that names them.

``DISSECTORS`` maps a protocol name to ``module:Class``; :func:`dissector_class`
imports on first use so that a missing optional dependency only affects its
own protocol.
"""

from __future__ import annotations

import importlib

from .base import Dissector, StreamBuffer  # noqa: F401  (public)

DISSECTORS = {
    "smtp": "maildissect.protocols.smtp:SmtpDissector",
    "imap": "maildissect.protocols.imap:ImapDissector",
    "pop3": "maildissect.protocols.pop3:Pop3Dissector",
    # HTTP/1.x or HTTP/2, told apart by the first bytes (or TLS ALPN)
    "http": "maildissect.protocols.http_any:HttpAnyDissector",
    "tls": "maildissect.protocols.tls:TlsDissector",
    "socks": "maildissect.protocols.socks:SocksDissector",
}

_cache: dict[str, type] = {}


def dissector_class(protocol: str):
    """The dissector class for ``protocol``, or None when there is none."""
    cls = _cache.get(protocol)
    if cls is None and protocol in DISSECTORS:
        modname, _, clsname = DISSECTORS[protocol].partition(":")
        try:
            cls = getattr(importlib.import_module(modname), clsname)
        except (ImportError, AttributeError):
            return None
        _cache[protocol] = cls
    return cls
