"""SMTP's syntax, as pure functions of bytes and text: replies, command lines, paths,
queue ids in final replies, server software in greetings, and the first-bytes test
protocol detection uses. The state machine is :mod:`.smtp`."""

from __future__ import annotations

import re

from ..text import wire

__all__ = ["REPLY", "BDAT_ARG", "AUTH_INITIAL", "VERBS", "starts_with_verb", "text", "is_command_line",
           "parse_path", "queue_id", "server_software", "looks_like_smtp"]

REPLY = re.compile(rb"(\d{3})(?:([ -])(.*)|[ \t]*)", re.S)
BDAT_ARG = re.compile(r"\s*(\d{1,20})(?:\s+(LAST))?\s*", re.I)
_BDAT_LINE = re.compile(rb"\d{1,20}(?:[ \t]+LAST)?", re.I)
#: an AUTH command up to its initial response (what follows is secret)
AUTH_INITIAL = re.compile(rb"[ \t]*AUTH[ \t]+\S+[ \t]+", re.I)

VERBS = frozenset(
    "HELO EHLO LHLO MAIL RCPT DATA BDAT RSET NOOP VRFY EXPN HELP QUIT STARTTLS AUTH "
    "XCLIENT XFORWARD ETRN ATRN TURN SEND SOML SAML VERB ONEX XEXCH50 X-EXPS "
    "X-ANONYMOUSTLS XUSR XSHADOW XSHADOWREQUEST".split())
_NO_ARG_VERBS = (b"DATA", b"QUIT", b"RSET", b"STARTTLS", b"TURN")
_ARG_VERBS = (b"EHLO", b"HELO", b"LHLO", b"AUTH", b"VRFY", b"EXPN", b"ETRN", b"XCLIENT", b"XFORWARD")

#: "queued as" and its cousins in final replies, tried in order on each line
_QUEUE_ID = tuple(re.compile(p, re.I) for p in (
    r"\bqueued as:?\s+([^\s,;]+)",                       # Postfix "Ok: queued as 4Q2X3", many others
    r"\bqueued with id\s+([^\s,;]+)",
    r"\bid=([^\s,;]+)",                                  # Exim "OK id=1Mugho-0003Dg-Un"
    r"\[InternalId=(\d+)",                               # Exchange
    r"^(?:\d\.\d{1,3}\.\d{1,3}\s+)?(<[^<>\s]+>|[^\s<>]+)\s+Message accepted",  # Sendmail, "<id> Message accepted"
    r"^(?:\d\.\d{1,3}\.\d{1,3}\s+)?OK\s+\d+\s+(\S+)\s+-\s+gsmtp",               # Gmail
    r"\bqp\s+(\d+)",                                     # qmail "ok 1234567890 qp 12345"
))

#: server software recognisable in a greeting
_SOFTWARE = tuple(re.compile(p) for p in (
    r"\bPostfix\b(?: \([^)]*\))?",
    r"\bExim [\d.]+\w*",
    r"\bSendmail [\w./-]*\w",
    r"\bMicrosoft ESMTP MAIL Service(?:, Version: [\d.]+)?",
    r"\bPython SMTP [\d.]+\w*",  # aiosmtpd
    r"\bSubEthaSMTP\b(?: \d[\w.]*)?",
    r"\bOpenSMTPD\b",
    r"\bHaraka(?:/[\d.]+)?",
    r"\bqmail\b",
    r"\bCourier(?:-MTA)?\b",
    r"\bMDaemon(?: [\d.]+)?",
    r"\bhMailServer\b",
    r"\bMailEnable\b",
    r"\bZimbra\b",
    r"\bCommuniGate Pro(?: [\d.]+)?",
    r"\bIceWarp(?: [\d.]+)?",
    r"\bKerio Connect(?: [\d.]+)?",
    r"\bMercury/32(?: v[\d.]+)?",
    r"\bAxigen\b",
    r"\bApache JAMES\b",
    r"\bgsmtp\b",
))

def text(data: bytes) -> str:
    """Protocol bytes as text: UTF-8 (SMTPUTF8) where valid, else windows-1252."""
    return wire(data)


def is_command_line(line: bytes) -> bool:
    """A strictly well-formed SMTP command line (used to resynchronise after a
    gap and to tell a command from a SASL response)."""
    verb, _, arg = line.partition(b" ")
    verb = verb.upper()
    if verb in _NO_ARG_VERBS:
        return not arg.strip()
    if verb == b"MAIL":
        return arg[:5].upper() == b"FROM:"
    if verb == b"RCPT":
        return arg[:3].upper() == b"TO:"
    if verb == b"BDAT":
        return _BDAT_LINE.fullmatch(arg.strip()) is not None
    if verb in _ARG_VERBS:
        return bool(arg.strip())
    return verb in (b"NOOP", b"HELP")


def starts_with_verb(line: bytes) -> bool:
    """The line's first word is an SMTP verb (however well-formed the rest)."""
    words = line.split(None, 1)
    return bool(words) and words[0][:16].upper().decode("latin-1") in VERBS


def parse_path(arg: str, keyword: str) -> tuple[str | None, bool]:
    """``FROM:<a@b> SIZE=1`` -> (address without brackets, well-formed).

    Tolerates a space after the colon and a missing pair of angle brackets;
    drops an RFC 5321 source route (``<@relay:user@host>``). The null reverse
    path ``<>`` gives "".
    """
    if arg[:len(keyword)].upper() != keyword:
        return None, False
    rest = arg[len(keyword):].lstrip()
    ok = True
    if rest.startswith("<"):
        i, quoted, n = 1, False, len(rest)
        while i < n:
            ch = rest[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                quoted = not quoted
            elif ch == ">" and not quoted:
                break
            i += 1
        if i >= n:
            ok = False
        addr = rest[1:i]
    else:
        addr = rest.split(None, 1)[0] if rest.strip() else ""
        ok = bool(addr)
    if addr.startswith("@") and ":" in addr:
        addr = addr.split(":", 1)[1]
    return addr.strip(), ok


def queue_id(lines: list[str]) -> str | None:
    for line in reversed(lines):
        for pattern in _QUEUE_ID:
            m = pattern.search(line)
            if m:
                return m.group(1)
    return None


def server_software(banner: str) -> str | None:
    for pattern in _SOFTWARE:
        m = pattern.search(banner)
        if m:
            return m.group(0)
    return None


_GREETING = re.compile(rb"220(?:[ -]|\r?\n)")
_HELLO = re.compile(rb"(?:EHLO|HELO|LHLO)(?:[ \t]|\r?\n)", re.I)


def looks_like_smtp(client_first: bytes, server_first: bytes) -> bool:
    """Whether a connection's first bytes are SMTP.

    A ``220`` greeting answered by EHLO/HELO; when only one side has spoken,
    that side alone (a lone 220 greeting must not mention FTP, whose greeting
    is also 220).
    """
    server_ok = bool(server_first) and _GREETING.match(server_first) is not None
    if server_ok and not client_first:
        first_line = server_first.split(b"\n", 1)[0]
        return b"FTP" not in first_line.upper()
    client_ok = bool(client_first) and _HELLO.match(client_first) is not None
    if client_first and server_first:
        return server_ok and client_ok
    return client_ok


