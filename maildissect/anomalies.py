"""The registry of anomaly names.

Each layer declares its names with a one-line meaning in a module-level
``ANOMALIES`` dict; :func:`registry` gathers them so docs and tests can check
that every name emitted is documented (``docs/anomalies.md`` is generated from
it by ``python -m maildissect.anomalies``).
"""

from __future__ import annotations

import importlib

from .model import Anomaly

#: Modules that declare ANOMALIES dicts, in documentation order.
MODULES = (
    "maildissect.capture.files",
    "maildissect.capture.decode",
    "maildissect.tcp",
    "maildissect.protocols.detect",
    "maildissect.protocols.claim",
    "maildissect.protocols.tls",
    "maildissect.protocols.lines",
    "maildissect.protocols.smtp",
    "maildissect.protocols.imap",
    "maildissect.protocols.pop3",
    "maildissect.protocols.http",
    "maildissect.protocols.http2",
    "maildissect.protocols.socks",
    "maildissect.protocols.webmail",
    "maildissect.mime",
    "maildissect.text",
    "maildissect.pipeline",
    "maildissect.live",
    "maildissect.live_decrypt",
    "maildissect.output.livelines",
)


class StrictError(Exception):
    """Raised instead of recording an anomaly when ``Config.strict`` is set."""


def registry() -> dict[str, str]:
    """All known anomaly names with their meaning."""
    names: dict[str, str] = {}
    for modname in MODULES:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        names.update(getattr(mod, "ANOMALIES", {}))
    return names


def make(ts, session_id, side, name, detail="", strict=False, secret_at=None) -> Anomaly:
    """Build an Anomaly (or raise StrictError in strict mode).

    ``secret_at``: where ``detail`` starts quoting secret bytes (see Anomaly).
    """
    if strict:
        raise StrictError(f"{name}: {detail if secret_at is None else detail[:secret_at]}")
    return Anomaly(ts, session_id, side, name, detail, secret_at)


def markdown() -> str:
    lines = ["# Anomalies", "", "Every anomaly name maildissect can report, by layer.", "",
             "| name | meaning |", "|---|---|"]
    for name, meaning in sorted(registry().items()):
        lines.append(f"| `{name}` | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
