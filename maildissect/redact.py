"""Masking secrets: the one place where maildissect hides them (``--redact``;
the HTML report's default).

The dissectors know the exchanges, so they *mark* what is secret on the
records they emit; this module *masks*, on the records themselves, so that
every output made from them (tables, exports, Zeek logs, the timeline,
journeys, the report, extraction's index, live lines) is masked alike:

- ``Credential.secret``: the password, token, digest or response itself;
- ``Command.secret_at``: where a command's argument starts carrying a secret
  (POP3 PASS and APOP, IMAP LOGIN, an AUTH/AUTHENTICATE initial response,
  every SMTP ``AUTH-RESPONSE``); from there to the end becomes ``********``;
- ``Anomaly.secret_at``: likewise for an anomaly detail that quotes client
  bytes of an authentication (a SASL response cut by the end of the capture
  or longer than ``max_line``, a malformed ``Authorization`` header line);
- text rules, applied to every text of every record that holds exchange text
  (commands, messages, credentials, anomalies, http, mailboxes; lists, header
  pairs and nested records included): the values of URL, form and cookie parameters
  with a secret-looking name (``?access_token=``, ``&_pass=``, ``sid=``),
  of JSON members with such a name (``"password": "..."``), and the token
  after ``Bearer``/``Basic``.

:func:`redact_record` masks one record; :class:`Redacting` is the sink every
masked output takes its records from (an analysis's lists once they are whole, a
live stream as each record leaves, extraction's hooks); :func:`masked_analysis`
gives the report its masked copy through it.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import unquote

from .model import Anomaly, Command, Credential, Flow, Session

__all__ = ["MASK", "redact_text", "is_secret_name", "masked_argument", "redact_record", "Redacting",
           "masked_analysis"]

MASK = "********"

#: Words that make a query, form, cookie or JSON member name secret (its name split into
#: words, as the login-form recognition does: ``access_token`` -> access, token).
SECRET_WORDS = {
    "pass", "password", "passwd", "pwd", "pw", "passphrase", "pin", "secret", "passcode", "token", "auth",
    "authorization", "apikey", "key", "session", "sessid", "sid", "ticket", "code", "sig", "signature",
    "jwt", "bearer", "otp", "credential", "credentials", "csrf", "xsrf", "nonce", "cookie", "userpass",
    "loginpass", "urlauth",
}
#: ``name=value`` after the start, ``?``, ``&``, ``;``, ``#``, ``,`` or a space (URLs, form
#: bodies, Cookie and Set-Cookie text); the value ends where a parameter would.
_PARAM = re.compile(r"(^|[?&;#,\s])([^=&;#,\s\"'<>]{1,100})=([^&;#,\s\"'<>]*)")
#: ``"name": "value"`` / ``'name': 'value'`` / ``"name": 123`` (JSON bodies, Python reprs of them)
#: (a value cut short by a length limit runs to the end of the text)
_MEMBER = re.compile(r"""(["'])([^"'\\]{1,100})\1(\s*:\s*)(?:(["'])((?:\\.|(?!\4).)*)(?:\4|$)|(-?\d[\w.+-]*))""",
                     re.S)
#: the credentials after an HTTP authentication scheme, as header values write them: a
#: token68 with a digit, symbol or capital after its first character (not "Basic Services")
_SCHEME = re.compile(r"\b(Bearer|Basic|BEARER|BASIC|bearer|basic)(\s+)"
                     r"([A-Za-z0-9._~+/-]+=*)(?<=[A-Za-z0-9._~+/=-]{4})")
_WORDS = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z])(?=[A-Z])")


def is_secret_name(name: str) -> bool:
    """``access_token``, ``_pass``, ``apiKey``, ``PHPSESSID``... (not ``compass`` or ``keyword``)."""
    if "%" in name:
        name = unquote(name)
    for word in _WORDS.split(name):
        w = word.lower()
        if w in SECRET_WORDS or w.startswith(("password", "token", "sess")) or w.endswith(
                ("sessid", "sessionid", "token", "password")):
            return True
    return False


def _mask_param(m: re.Match) -> str:
    if m.group(3) and m.group(3) != MASK and is_secret_name(m.group(2)):
        return f"{m.group(1)}{m.group(2)}={MASK}"
    return m.group(0)


def _mask_member(m: re.Match) -> str:
    value = m.group(5) if m.group(4) else m.group(6)
    if not value or value == MASK or not is_secret_name(m.group(2)):
        return m.group(0)
    q = m.group(4) or ""
    return f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{q}{MASK}{q}"


def _mask_scheme(m: re.Match) -> str:
    token = m.group(3)
    if not re.search(r"[A-Z0-9._~+/=-]", token[1:]):
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}{MASK}"


def redact_text(text):
    """``text`` with the secret-looking values of parameters, JSON members and
    authentication schemes masked (everything else unchanged)."""
    if not isinstance(text, str):
        return text
    if "=" in text:
        text = _PARAM.sub(_mask_param, text)
    if ":" in text and ("'" in text or '"' in text):
        text = _MEMBER.sub(_mask_member, text)
    if "earer" in text or "asic" in text or "EARER" in text or "ASIC" in text:
        text = _SCHEME.sub(_mask_scheme, text)
    return text


def _mask_from(text: str | None, at: int | None) -> str | None:
    """``text`` with everything from ``at`` on replaced by the mask."""
    if text is None or at is None or at >= len(text) or text[at:] == MASK:
        return text
    return text[:max(at, 0)] + MASK


def masked_argument(cmd: Command) -> str:
    """A command's argument with the secret the dissector marked masked (the timeline's
    descriptions never show one; ``--redact`` masks the text rules' secrets too)."""
    return _mask_from(cmd.argument or "", cmd.secret_at)


# -- records -------------------------------------------------------------------------

_FIELDS: dict[type, tuple[str, ...]] = {}
#: field types that never hold text (the annotations, as written in maildissect.model)
_NO_TEXT = {"int", "float", "bool", "bytes", "int | None", "float | None", "bool | None", "bytes | None"}


def _field_names(cls) -> tuple[str, ...]:
    """The fields of a record class that may hold text."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls)
                                     if not (isinstance(f.type, str) and f.type in _NO_TEXT)
                                     and f.type not in (int, float, bool, bytes))
    return names


_SCALARS = frozenset({int, float, bool, bytes, type(None)})


def _mask_value(value):
    """A text, list, tuple or nested record with the text rules applied (the same object if unchanged)."""
    t = type(value)
    if t is str:
        return redact_text(value)
    if t is list or t is tuple:
        out = None
        for i, v in enumerate(value):
            masked = _mask_value(v)
            if masked is not v:
                if out is None:
                    out = list(value)
                out[i] = masked
        if out is None:
            return value
        return out if t is list else tuple(out)
    if t in _SCALARS:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _mask_strings(value)
    return value


def _mask_strings(record, changes: dict | None = None):
    """``record`` with the text rules applied to every field but those in ``changes``
    (which are made too); the same object when nothing changes."""
    for name in _field_names(type(record)):
        if changes and name in changes:
            continue
        value = getattr(record, name)
        t = type(value)
        if t is str:
            masked = redact_text(value)
        elif t in _SCALARS:
            continue
        else:
            masked = _mask_value(value)
        if masked is not value:
            if changes is None:
                changes = {}
            changes[name] = masked
    return dataclasses.replace(record, **changes) if changes else record


def redact_record(record):
    """A masked copy of one record (the same object when there is nothing to mask)."""
    t = type(record)
    if t is Session or t is Flow:
        return record  # names, addresses and counters: no secret travels there
    changes = None
    if t is Credential:
        if record.secret is not None and record.secret != MASK:
            changes = {"secret": MASK}
    elif t is Command:
        if record.secret_at is not None:
            changes = {"argument": redact_text(_mask_from(record.argument, record.secret_at))}
    elif t is Anomaly:
        if record.secret_at is not None:
            changes = {"detail": redact_text(_mask_from(record.detail, record.secret_at))}
    return _mask_strings(record, changes)


#: Collector tables holding records
_TABLES = ("flows", "sessions", "commands", "messages", "credentials", "anomalies", "http", "mailboxes")


class Redacting:
    """The redacting sink (maildissect.runner): wraps a sink so that every record leaving
    it is masked. Every output that masks (``--redact``, the report's default) takes its
    records from this wrapper.

    - Around a stream (:class:`maildissect.runner.Stream`), each record is masked as it
      is handed on, as it completes (live capture).
    - Around a list (:class:`maildissect.pipeline.Collector`), the records are masked in
      the lists when they are whole (:meth:`close`, after a ``--jobs`` or Dask merge and
      the webmail back-end's fill, which still mutate them).
    - Callbacks that see records on their way (extraction's message and file hooks) are
      handed masked copies (:meth:`hook`); the lists keep the records the run goes on with.
    """

    def __init__(self, inner):
        self.inner = inner
        for name in _TABLES:
            table = getattr(inner, name)
            setattr(self, name, table)
            if getattr(table, "callback", None) is not None:  # a stream's table
                table.callback = self.hook(table.callback)

    @property
    def records(self):
        return self.inner.records

    def counts(self) -> dict:
        return self.inner.counts()

    def hook(self, callback, record_at: int = -1):
        """``callback`` handed the masked record: ``callback(record)``, ``callback(table, record)``
        (a stream's), or with ``record_at=0`` ``callback(request, session)`` (the file hook)."""
        if record_at == 0:
            def masked_first(record, *rest):
                return callback(redact_record(record), *rest)
            return masked_first

        def masked(*args):
            return callback(*args[:-1], redact_record(args[-1]))
        return masked

    def close(self):
        """The records are whole: mask them where they are kept."""
        self.inner.close()
        records = self.inner.records
        for name in _TABLES:
            table = getattr(records, name, None)
            if type(table) is list:
                for i, r in enumerate(table):
                    masked = redact_record(r)
                    if masked is not r:
                        table[i] = masked


def masked_analysis(result):
    """An Analysis over a masked copy of ``result``'s records (``result`` itself when it is masked
    already): what the HTML report shows unless asked for secrets."""
    if result.config.redact:
        return result
    from .analysis import Analysis
    records = type(result.records)()
    for name, value in vars(result.records).items():
        setattr(records, name, list(value) if isinstance(value, list) else value)
    Redacting(records).close()
    return Analysis(records, dataclasses.replace(result.config, redact=True), result.stats, whole=True)
