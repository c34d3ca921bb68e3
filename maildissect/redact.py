"""Masking secrets in analysis records (``--redact``; the HTML report's default).

Secrets reach the records in three ways, and all three are masked here, on
the records themselves, so that every output made from them (tables, exports,
Zeek logs, the timeline, journeys, the report) is masked alike:

- credentials: the ``secret`` of every Credential;
- commands that carry a secret (AUTH responses, LOGIN, PASS...; marked
  ``Command.secret`` by the dissectors): their argument after the first word;
- tokens in URLs and form-like text: ``?access_token=...``, ``&pass=...`` and
  the like, wherever a record keeps a request line or a URI (HTTP requests,
  HTTP commands, message sources, anomaly details).
"""

from __future__ import annotations

import dataclasses
import re

from .frames import MASK, redact_command
from .model import Anomaly, Command, Credential, HttpRequest, MailboxEvent, Message

__all__ = ["MASK", "redact_text", "is_secret_name", "redact_collector"]

#: Words that make a query or form parameter secret (its name split into words, as
#: the login-form recognition does: ``access_token`` -> access, token).
SECRET_WORDS = {
    "pass", "password", "passwd", "pwd", "pw", "passphrase", "pin", "secret", "passcode", "token", "auth",
    "authorization", "apikey", "key", "session", "sessid", "sid", "ticket", "code", "sig", "signature",
    "jwt", "bearer", "otp", "credential", "credentials", "csrf", "xsrf", "nonce", "cookie",
}
_PARAM = re.compile(r"([?&;])([^=&;#\s\"'<>]{1,100})=([^&;#\s\"'<>]*)")
_WORDS = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])")


def is_secret_name(name: str) -> bool:
    """``access_token``, ``_pass``, ``apiKey``, ``PHPSESSID``... (not ``compass`` or ``keyword``)."""
    for word in _WORDS.split(name):
        w = word.lower()
        if w in SECRET_WORDS or w.startswith(("password", "token", "sessid", "session")) or w.endswith(
                ("sessid", "sessionid", "token", "password")):
            return True
    return False


def _mask_param(m: re.Match) -> str:
    if m.group(3) and is_secret_name(m.group(2)):
        return f"{m.group(1)}{m.group(2)}={MASK}"
    return m.group(0)


def redact_text(text):
    """``text`` with the values of secret-looking URL/form parameters masked (other values unchanged)."""
    if not isinstance(text, str) or "=" not in text:
        return text
    return _PARAM.sub(_mask_param, text)


def _redact_strings(record):
    """The record with :func:`redact_text` applied to its text fields (the same object if none changed)."""
    changes = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, str):
            masked = redact_text(value)
            if masked != value:
                changes[f.name] = masked
    return dataclasses.replace(record, **changes) if changes else record


def redact_record(record):
    """A masked version of one record (the same object when there is nothing to mask)."""
    t = type(record)
    if t is Credential:
        record = dataclasses.replace(record, secret=MASK) if record.secret is not None else record
        return _redact_strings(record)
    if t is Command:
        argument = redact_command(record)
        if argument != (record.argument or ""):
            record = dataclasses.replace(record, argument=argument)
        return _redact_strings(record)
    if t in (HttpRequest, Message, Anomaly, MailboxEvent):
        return _redact_strings(record)
    return record


def redact_collector(collector, copy: bool = False):
    """Mask the secrets of every record of a Collector (in place, or in a copy with ``copy``).

    The copy shares every record that has nothing to mask.
    """
    if copy:
        new = type(collector)()
        for name, value in vars(collector).items():
            setattr(new, name, list(value) if isinstance(value, list) else value)
        collector = new
    for name in ("credentials", "commands", "http", "messages", "anomalies", "mailboxes"):
        records = getattr(collector, name, None)
        if records:
            for i, r in enumerate(records):
                masked = redact_record(r)
                if masked is not r:
                    records[i] = masked
    return collector
