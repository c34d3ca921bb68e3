"""Row filters that mean the same thing on every table.

``--from``, ``--to`` and ``--subject`` are questions about mail. A message
matches when its sender (From, Sender, MAIL FROM), its recipients (To, Cc,
Bcc, accepted or refused RCPT TO) or its Subject contain the text (case
insensitive); every other table is joined to the matching messages by the keys
the dissectors write on the records (``session_id``, ``message_index``,
``seq``/``command_seq``, ``transaction``), never by time:

- sessions, flows, credentials and anomalies: the session carried a matching
  message (or a matching SMTP transaction whose data never went through);
- attachments and files: their message matches (a file carried over HTTP: the
  webmail message its request carried);
- commands: those that carried a matching message; those of an SMTP mail
  transaction that matches; and the session-level commands (greeting, EHLO,
  AUTH, SELECT, LOGOUT...) of a session that carried one;
- http: the requests that carried a matching webmail message;
- mailboxes: the events of a session that carried one (an event that names a
  Message-ID only when that message matches).

``--protocol`` and ``--session`` ask about the session a row belongs to;
``--since``/``--until`` about the row's own time (a point, or for flows,
sessions and hops the span they were active); ``--host``/``--client``/
``--server`` about the endpoints of the row's connection (addresses or
networks, IPv4 or IPv6). ``--where`` is a pandas expression over the table's
own columns, checked before it runs (:func:`check_where`).

A table that cannot answer a criterion refuses it (:class:`FilterError`),
rather than returning every row. docs/cli.md has the table of what each
filter means per command.
"""

from __future__ import annotations

import ast
import ipaddress
import keyword
import re
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Criteria", "FilterError", "criteria", "check", "select", "select_frame", "message_predicate", "request_predicate", "check_where", "parse_time",
           "parse_networks", "ACCEPTS", "WHERE_LIMITS"]


class FilterError(ValueError):
    """A filter that cannot be applied as given (one line, naming the option)."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


@dataclass(frozen=True)
class Criteria:
    """What rows to keep. Every field left None keeps everything it would filter.

    ``since``/``until`` are epoch seconds (or text for :func:`parse_time`);
    ``host``/``client``/``server`` lists of addresses or networks (text, or
    :mod:`ipaddress` networks); ``where`` a pandas expression (:func:`check_where`).
    """

    protocol: str | None = None
    session: int | None = None
    from_: str | None = None
    to: str | None = None
    subject: str | None = None
    since: float | str | None = None
    until: float | str | None = None
    host: tuple = ()
    client: tuple = ()
    server: tuple = ()
    where: str | None = None

    def mail(self) -> bool:
        """Whether a question about mail (from, to, subject) is asked."""
        return bool(self.from_ or self.to or self.subject)

    def given(self) -> list[str]:
        """The names of the criteria that are set."""
        return [f.name for f in fields(self) if getattr(self, f.name) not in (None, (), "")]


#: Option names of the criteria (for messages).
OPTION = {"protocol": "--protocol", "session": "--session", "from_": "--from", "to": "--to",
          "subject": "--subject", "since": "--since", "until": "--until", "host": "--host",
          "client": "--client", "server": "--server", "where": "--where"}

_ALL = frozenset(OPTION)
#: The criteria each table answers; any other is refused.
ACCEPTS = {
    "flows": _ALL, "sessions": _ALL, "commands": _ALL, "messages": _ALL, "attachments": _ALL,
    "credentials": _ALL, "anomalies": _ALL, "http": _ALL, "mailboxes": _ALL, "files": _ALL,
    "events": _ALL - {"from_", "to", "subject"},
    "hops": _ALL - {"from_", "to", "subject"},
    "journeys": frozenset({"since", "until", "where"}),
}

#: The time a row is placed at: one column, or the (start, end) it was active.
TIME = {"flows": ("start", "end"), "sessions": ("start", "end"), "hops": ("start", "end"),
        "journeys": ("first_seen", "last_seen")}

#: Implicit-TLS labels of the flows table, to their protocol.
_TLS_LABELS = {"smtps": "smtp", "imaps": "imap", "pop3s": "pop3", "https": "http"}


# -- parsing options -------------------------------------------------------------------------------
def parse_time(value, option: str = "--since") -> float:
    """Epoch seconds from ``value``: a number of seconds, or ISO 8601 (a time without zone is UTC).

    ``2024-05-01``, ``2024-05-01T10:00``, ``2024-05-01 10:00:00.5+02:00``,
    ``2024-05-01T08:00:00Z`` and ``1714550400`` are all accepted.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
        except ValueError:
            raise FilterError(option, f"not an ISO 8601 time or epoch seconds: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def parse_networks(values: Iterable, option: str = "--host") -> tuple:
    """Addresses or CIDR networks (IPv4 or IPv6) as :mod:`ipaddress` networks."""
    out = []
    for v in values or ():
        if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            out.append(v)
            continue
        text = str(v).strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise FilterError(option, f"not an IP address or network: {text!r}") from None
    return tuple(out)


# -- messages ------------------------------------------------------------------------------------
def _has(needle: str, *values) -> bool:
    for v in values:
        if not v:
            continue
        if isinstance(v, (list, tuple)):
            if any(x and needle in str(x).lower() for x in v):
                return True
        elif needle in str(v).lower():
            return True
    return False


def _mail_test(c: Criteria):
    """A test of a message record against from/to/subject (None when none is asked)."""
    f, t, s = ((x or "").lower() or None for x in (c.from_, c.to, c.subject))
    if not (f or t or s):
        return None

    def test(m) -> bool:
        if f and not _has(f, m.from_, m.mail_from, m.sender):
            return False
        if t and not _has(t, m.to, m.cc, m.bcc, m.rcpt_to, m.rcpt_rejected):
            return False
        if s and not _has(s, m.subject):
            return False
        return True
    return test


def _envelope_test(c: Criteria):
    """A test of an SMTP transaction that carried no message: only its envelope is known."""
    f, t = ((x or "").lower() or None for x in (c.from_, c.to))
    if c.subject or not (f or t):
        return None  # a subject is asked, or nothing a bare envelope can answer

    def test(mail_from: str, rcpts: list) -> bool:
        return (not f or _has(f, mail_from)) and (not t or _has(t, rcpts))
    return test


def message_predicate(criteria: Criteria):
    """A test of one Message record against every criterion a single message can answer
    (protocol, session, from, to, subject, time, endpoints): what ``extract`` keeps."""
    c = check("messages", criteria)
    if c.where is not None:
        raise FilterError("--where", "needs a table; it does not apply to single messages")
    mail = _mail_test(c)
    since, until = c.since, c.until
    hosts = _Endpoints(c)

    def keep(m) -> bool:
        if c.protocol and m.protocol != c.protocol:
            return False
        if c.session is not None and m.session_id != c.session:
            return False
        if since is not None and (m.ts is None or m.ts < since):
            return False
        if until is not None and (m.ts is None or m.ts > until):
            return False
        if hosts.active and not hosts.match(m.client_ip, m.server_ip):
            return False
        return mail is None or mail(m)
    return keep


def request_predicate(criteria: Criteria):
    """A test of one HTTP request carrying files (with its Session) for ``extract``: the files of a
    request have no sender, recipients or subject, so the mail filters leave them out; the
    others apply to the request and its connection."""
    c = check("http", criteria)
    hosts = _Endpoints(c)

    def keep(req, session) -> bool:
        if c.mail() or (c.protocol and c.protocol != "http"):
            return False
        if c.session is not None and req.session_id != c.session:
            return False
        if c.since is not None and (req.ts is None or req.ts < c.since):
            return False
        if c.until is not None and (req.ts is None or req.ts > c.until):
            return False
        return not hosts.active or hosts.match(session.client_ip, session.server_ip)
    return keep


class _Endpoints:
    """The host/client/server criteria, with each address parsed once."""

    def __init__(self, c: Criteria):
        self.host = parse_networks(c.host, "--host")
        self.client = parse_networks(c.client, "--client")
        self.server = parse_networks(c.server, "--server")
        self.active = bool(self.host or self.client or self.server)
        self._parsed: dict = {}

    def _ip(self, text):
        ip = self._parsed.get(text, False)
        if ip is False:
            try:
                ip = ipaddress.ip_address(text) if text else None
            except ValueError:
                ip = None
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            self._parsed[text] = ip
        return ip

    @staticmethod
    def _within(ip, nets) -> bool:
        return ip is not None and any(ip.version == n.version and ip in n for n in nets)

    def match(self, client_ip, server_ip) -> bool:
        c, s = self._ip(client_ip), self._ip(server_ip)
        if self.host and not (self._within(c, self.host) or self._within(s, self.host)):
            return False
        if self.client and not self._within(c, self.client):
            return False
        if self.server and not self._within(s, self.server):
            return False
        return True


# -- the join -----------------------------------------------------------------------------------
class _Matches:
    """Keys of what matches the mail criteria, and of everything that could."""

    def __init__(self, records, c: Criteria):
        test = _mail_test(c)
        self.messages: set = set()  # (session, message_index)
        self.carried: set = set()  # (session, command seq / http seq) that carried a matching message
        self.carriers: set = set()  # ... that carried any message
        self.transactions: set = set()  # (session, SMTP transaction) that match
        self.sessions: set = set()
        self.message_ids: set = set()
        for m in records.messages:
            key = (m.session_id, m.command_seq)
            if m.command_seq is not None:
                self.carriers.add(key)
            if not test(m):
                continue
            self.messages.add((m.session_id, m.message_index))
            self.sessions.add(m.session_id)
            if m.command_seq is not None:
                self.carried.add(key)
            if m.transaction is not None:
                self.transactions.add((m.session_id, m.transaction))
            if m.message_id:
                self.message_ids.add(m.message_id)
        envelope = _envelope_test(c)
        if envelope is not None:
            # SMTP transactions that carried no message (refused, deferred, cut short)
            # still name a sender and recipients
            with_message = {(m.session_id, m.transaction) for m in records.messages if m.transaction is not None}
            envelopes: dict = {}
            for cmd in records.commands:
                if cmd.transaction is None or cmd.protocol != "smtp":
                    continue
                key = (cmd.session_id, cmd.transaction)
                if key in with_message:
                    continue
                env = envelopes.setdefault(key, ["", []])
                if cmd.command == "MAIL":
                    env[0] = cmd.argument or ""
                elif cmd.command == "RCPT":
                    env[1].append(cmd.argument or "")
            for key, (mail_from, rcpts) in envelopes.items():
                if envelope(mail_from, rcpts):
                    self.transactions.add(key)
                    self.sessions.add(key[0])


def _session_index(records):
    """session id -> (protocol, client ip, server ip), from the flows and the sessions."""
    out = {}
    for f in records.flows:
        proto = f.protocol or ""
        out[f.flow_id] = (_TLS_LABELS.get(proto, proto), f.client_ip, f.server_ip)
    for s in records.sessions:
        old = out.get(s.session_id)
        out[s.session_id] = (s.protocol, s.client_ip or (old[1] if old else ""),
                             s.server_ip or (old[2] if old else ""))
    return out


def _sids(df: pd.DataFrame, table: str):
    col = "flow_id" if table == "flows" else "session_id"
    if col not in df.columns:
        return [None] * len(df)
    return [None if v is None else int(v) for v in _key_list(df, col)]


def _key_list(df: pd.DataFrame, col: str) -> list:
    """A column's values as Python objects, missing values as None."""
    import pandas as pd
    if col not in df.columns:
        return [None] * len(df)
    s = df[col]
    return s.astype(object).where(s.notna(), None).tolist()


def _mail_mask(df, table: str, records, c: Criteria, sids: list) -> list[bool]:
    """Per row, whether it belongs to what the mail criteria match (see the module docstring)."""
    m = _Matches(records, c)
    if table in ("flows", "sessions", "credentials", "anomalies"):
        return [s in m.sessions for s in sids]
    if table in ("messages", "attachments"):
        return [(s, i) in m.messages for s, i in zip(sids, _key_list(df, "message_index"))]
    if table == "http":
        return [(s, q) in m.carried for s, q in zip(sids, _key_list(df, "seq"))]
    if table == "files":
        # a message's entity: its message decides; a file carried over HTTP: the webmail its request carried
        return [((s, i) in m.messages) if i is not None else ((s, q) in m.carried) if q is not None else False
                for s, i, q in zip(sids, _key_list(df, "message_index"), _key_list(df, "http_seq"))]
    if table == "commands":
        out = []
        for s, q, t in zip(sids, _key_list(df, "seq"), _key_list(df, "transaction")):
            key = (s, q)
            if q is not None and key in m.carriers:
                out.append(key in m.carried)
            elif t is not None:
                out.append((s, t) in m.transactions)
            else:
                out.append(s in m.sessions)
        return out
    if table == "mailboxes":
        return [(mid in m.message_ids) if mid else (s in m.sessions)
                for s, mid in zip(sids, _key_list(df, "message_id"))]
    raise FilterError("--from", f"does not apply to the {table} table")  # (ACCEPTS refuses it first)


def _time_mask(df, table: str, since, until):
    import pandas as pd
    cols = TIME.get(table, ("ts", "ts"))
    start, end = cols if len(cols) == 2 else (cols[0], cols[0])
    mask = pd.Series(True, index=df.index)
    if since is not None:
        t = _utc(since)
        mask &= (df[end] >= t).fillna(False).astype(bool)
    if until is not None:
        t = _utc(until)
        mask &= (df[start] <= t).fillna(False).astype(bool)
    return mask


def criteria(**options) -> Criteria:
    """A :class:`Criteria` from keyword options, a single address accepted for host/client/server."""
    for k in ("host", "client", "server"):
        v = options.get(k)
        if v is not None:
            options[k] = (v,) if isinstance(v, str) or not hasattr(v, "__iter__") else tuple(v)
    return Criteria(**options)


def check(table: str, c: Criteria) -> Criteria:
    """Refuse what ``table`` cannot answer and parse every value (before any analysis runs):
    returns the criteria with times in epoch seconds and networks parsed."""
    accepted = ACCEPTS.get(table)
    if accepted is None:
        raise KeyError(f"unknown table {table!r}")
    for name in c.given():
        if name not in accepted:
            raise FilterError(OPTION[name], f"does not apply to the {table} table")
    from . import frames
    if c.where is not None and table in frames.SCHEMAS:
        check_where(c.where, [spec[0] for spec in frames.SCHEMAS[table]])
    return replace(c, since=None if c.since is None else parse_time(c.since, "--since"),
                   until=None if c.until is None else parse_time(c.until, "--until"),
                   host=parse_networks(c.host, "--host"), client=parse_networks(c.client, "--client"),
                   server=parse_networks(c.server, "--server"))


def select(analysis, table: str, criteria: Criteria | None = None, **options) -> pd.DataFrame:
    """The rows of ``analysis.table(table)`` that ``criteria`` (or keyword options of
    :class:`Criteria`: ``from_="carol"``, ``since="2024-05-01"``, ``host="10.0.0.0/8"``...) keep.

    Raises :class:`FilterError` for a criterion the table cannot answer or a bad value.
    """
    c = check(table, criteria if criteria is not None else globals()["criteria"](**options))
    return select_frame(analysis.table(table), table, analysis.records, c)


def select_frame(df: pd.DataFrame, table: str, records, c: Criteria) -> pd.DataFrame:
    """The rows of ``df`` (a frame of ``table``, or a subset of one) that ``c`` keeps;
    ``records`` (a Collector) supplies the keys the mail criteria join on."""
    import pandas as pd
    c = check(table, c)
    if c.where is not None:
        check_where(c.where, list(df.columns))  # a bad expression is said even when no row is left
    if not len(df):
        return df
    endpoints = _Endpoints(c)
    mask = pd.Series(True, index=df.index)
    sids = _sids(df, table) if (c.protocol or c.session is not None or c.mail() or endpoints.active) else None
    if c.session is not None:
        mask &= pd.Series([s == c.session for s in sids], index=df.index)
    if c.protocol or endpoints.active:
        index = _session_index(records)
        if c.protocol:
            proto = c.protocol.lower()
            mask &= pd.Series([s is not None and index.get(s, ("",))[0] == proto for s in sids], index=df.index)
        if endpoints.active:
            if "client_ip" in df.columns and "server_ip" in df.columns:
                pairs = zip(_key_list(df, "client_ip"), _key_list(df, "server_ip"))
            else:
                pairs = ((index.get(s, ("", "", ""))[1:] if s is not None else ("", "")) for s in sids)
            mask &= pd.Series([endpoints.match(a, b) for a, b in pairs], index=df.index)
    if c.mail():
        mask &= pd.Series(_mail_mask(df, table, records, c, sids), index=df.index)
    if c.since is not None or c.until is not None:
        mask &= _time_mask(df, table, c.since, c.until)
    out = df[mask]
    if c.where is not None and len(out):
        out = out[where_mask(out, c.where)]
    return out.reset_index(drop=True)


# -- --where --------------------------------------------------------------------------------------
#: What --where accepts (docs/cli.md quotes these).
WHERE_LIMITS = {
    "max_length": 1000,
    "operators": "and or not, == != < <= > >=, in / not in a list, + - * / // %, & | ~",
    "calls": "COLUMN.str.contains/startswith/endswith/match/fullmatch(TEXT[, case=, na=, regex=]), "
             "COLUMN.str.len(), COLUMN.isna(), COLUMN.notna()",
}
_STR_METHODS = {"contains", "startswith", "endswith", "match", "fullmatch", "len"}
_NA_METHODS = {"isna", "notna", "isnull", "notnull"}
_KEYWORDS = {"case", "na", "regex", "flags"}
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.BitAnd, ast.BitOr)
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
_UNARY = (ast.Not, ast.USub, ast.UAdd, ast.Invert)
_BACKTICK = re.compile(r"`([^`]*)`")


def _where_error(message: str, columns: list[str]):
    return FilterError("--where", f"{message}; columns: {', '.join(columns)}")


def check_where(expr: str, columns: list[str]) -> str:
    """Check a --where expression: only column names, constants, comparisons, arithmetic
    and a few string tests, so that pandas (which evaluates Python) runs nothing else.

    Column names that are not Python names (``from``) are written in backticks. Raises
    :class:`FilterError` naming the problem and listing ``columns``; returns the
    expression as pandas will evaluate it.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise _where_error("empty expression", columns)
    if len(expr) > WHERE_LIMITS["max_length"]:
        raise _where_error(f"longer than {WHERE_LIMITS['max_length']} characters", columns)
    quoted: dict[str, str] = {}

    def unquote(m):
        name = m.group(1)
        if name not in columns:
            raise _where_error(f"unknown column {name!r}", columns)
        key = f"__column{len(quoted)}__"
        quoted[key] = name
        return key
    plain = _BACKTICK.sub(unquote, expr)
    if "`" in plain:
        raise _where_error("unbalanced backtick", columns)
    try:
        tree = ast.parse(plain.strip(), mode="eval")
    except SyntaxError as e:
        words = sorted(c for c in columns if keyword.iskeyword(c) and re.search(rf"\b{c}\b", plain))
        hint = f"; write {', '.join(f'`{w}`' for w in words)} in backticks" if words else ""
        raise _where_error(f"not an expression ({e.msg}{hint})", columns) from None
    known = set(columns)

    def column(node) -> bool:
        return isinstance(node, ast.Name) and (node.id in quoted or node.id in known)

    def constant(node) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, (int, float, str, bool)) or node.value is None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float))
        return False

    def visit(node):
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.BoolOp):
            return all(visit(v) for v in node.values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY):
            return visit(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str):
                    raise _where_error("arithmetic on text is not allowed", columns)
            return visit(node.left) and visit(node.right)
        if isinstance(node, ast.Compare):
            if not all(isinstance(op, _CMPOPS) for op in node.ops):
                raise _where_error("only == != < <= > >= in and not in compare", columns)
            return visit(node.left) and all(visit(x) for x in node.comparators)
        if isinstance(node, (ast.List, ast.Tuple)):
            if len(node.elts) > 1000 or not all(constant(x) for x in node.elts):
                raise _where_error("a list holds at most 1000 constants", columns)
            return True
        if isinstance(node, ast.Name):
            if column(node) or node.id in ("True", "False", "None"):
                return True
            raise _where_error(f"unknown column {node.id!r}", columns)
        if constant(node):
            return True
        if isinstance(node, ast.Call):
            f = node.func
            ok = (isinstance(f, ast.Attribute) and
                  ((f.attr in _STR_METHODS and isinstance(f.value, ast.Attribute) and f.value.attr == "str"
                    and column(f.value.value)) or (f.attr in _NA_METHODS and column(f.value))))
            if not ok:
                raise _where_error("the only calls allowed are COLUMN.str.contains/startswith/endswith/match/"
                                   "fullmatch/len(...) and COLUMN.isna()/notna()", columns)
            if not all(constant(a) for a in node.args) or len(node.args) > 2 or \
                    not all(k.arg in _KEYWORDS and constant(k.value) for k in node.keywords):
                raise _where_error("call arguments must be constants (keywords: case, na, regex, flags)", columns)
            return True
        raise _where_error(f"{type(node).__name__} is not allowed (column names, constants, comparisons, "
                           "and/or/not, arithmetic and COLUMN.str tests only)", columns)
    visit(tree)
    return expr


def where_mask(df: pd.DataFrame, expr: str):
    """The boolean mask of ``expr`` on ``df`` (checked first); NA counts as false.

    The checked tree is evaluated here, node by node, as pandas operations on the
    frame's columns (pandas' own ``eval`` would resolve names and attributes in
    Python); a timestamp column compared with text or a number takes it as
    :func:`parse_time` does (``ts > '2024-05-01'``, ``ts < 1714550400``).
    """
    import pandas as pd
    columns = list(df.columns)
    check_where(expr, columns)
    quoted: dict[str, str] = {}

    def unquote(m):
        key = f"__column{len(quoted)}__"
        quoted[key] = m.group(1)
        return key
    tree = ast.parse(_BACKTICK.sub(unquote, expr).strip(), mode="eval")
    try:
        res = _Evaluator(df, quoted).visit(tree.body)
    except FilterError:
        raise
    except Exception as e:  # the expression is the user's: any failure is said in one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _where_error(f"cannot evaluate ({msg[:200]})", columns) from None
    if isinstance(res, pd.Series) and len(res) == len(df) and \
            (res.dtype == bool or isinstance(res.dtype, pd.BooleanDtype)):
        return res.astype("boolean").fillna(False).astype(bool).to_numpy()
    raise _where_error("the expression is not a condition (true or false for each row)", columns)


class _Evaluator:
    """Evaluates a tree :func:`check_where` accepted, with pandas operations only."""

    _CMP = {ast.Eq: "__eq__", ast.NotEq: "__ne__", ast.Lt: "__lt__", ast.LtE: "__le__", ast.Gt: "__gt__",
            ast.GtE: "__ge__"}
    _ARITH = {ast.Add: "__add__", ast.Sub: "__sub__", ast.Mult: "__mul__", ast.Div: "__truediv__",
              ast.FloorDiv: "__floordiv__", ast.Mod: "__mod__"}

    def __init__(self, df, quoted):
        self.df = df
        self.quoted = quoted

    def visit(self, node):
        import pandas as pd
        if isinstance(node, ast.Name):
            if node.id in ("True", "False", "None"):
                return {"True": True, "False": False, "None": None}[node.id]
            return self.df[self.quoted.get(node.id, node.id)]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.visit(x) for x in node.elts]
        if isinstance(node, ast.BoolOp):
            values = [self._bool(self.visit(v)) for v in node.values]
            out = values[0]
            for v in values[1:]:
                out = (out & v) if isinstance(node.op, ast.And) else (out | v)
            return out
        if isinstance(node, ast.UnaryOp):
            v = self.visit(node.operand)
            if isinstance(node.op, (ast.Not, ast.Invert)):
                return ~self._bool(v) if isinstance(v, pd.Series) else not v
            return -v if isinstance(node.op, ast.USub) else +v
        if isinstance(node, ast.BinOp):
            a, b = self.visit(node.left), self.visit(node.right)
            if isinstance(node.op, ast.BitAnd):
                return self._bool(a) & self._bool(b)
            if isinstance(node.op, ast.BitOr):
                return self._bool(a) | self._bool(b)
            return getattr(a, self._ARITH[type(node.op)])(b) if isinstance(a, pd.Series) else \
                getattr(b, self._ARITH[type(node.op)].replace("__", "__r", 1))(a) if isinstance(b, pd.Series) else \
                _const_arith(node.op, a, b)
        if isinstance(node, ast.Compare):
            out = None
            left = self.visit(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = self.visit(right_node)
                part = self._compare(op, left, right)
                out = part if out is None else (self._bool(out) & self._bool(part))
                left = right
            return out
        if isinstance(node, ast.Call):
            f = node.func
            args = [self.visit(a) for a in node.args]
            kwargs = {k.arg: self.visit(k.value) for k in node.keywords}
            if f.attr in _NA_METHODS:
                return getattr(self.visit(f.value), f.attr)()
            return getattr(_text(self.visit(f.value.value)).str, f.attr)(*args, **kwargs)
        raise TypeError(type(node).__name__)  # (check_where refused it already)

    @staticmethod
    def _bool(v):
        import pandas as pd
        return v.astype("boolean") if isinstance(v, pd.Series) else v

    def _compare(self, op, a, b):
        import pandas as pd
        if isinstance(op, (ast.In, ast.NotIn)):
            if not isinstance(a, pd.Series):
                raise TypeError("'in' needs a column on its left")
            values = b if isinstance(b, list) else [b]
            hit = a.isin(values) if not isinstance(a.dtype, pd.DatetimeTZDtype) else \
                a.isin([_timestamp(v) for v in values])
            return ~hit if isinstance(op, ast.NotIn) else hit
        if isinstance(a, pd.Series) and isinstance(a.dtype, pd.DatetimeTZDtype) and not isinstance(b, pd.Series):
            b = _timestamp(b)
        elif isinstance(b, pd.Series) and isinstance(b.dtype, pd.DatetimeTZDtype) and not isinstance(a, pd.Series):
            a = _timestamp(a)
        name = self._CMP[type(op)]
        if isinstance(a, pd.Series):
            return getattr(a, name)(b)
        if isinstance(b, pd.Series):
            swapped = {"__lt__": "__gt__", "__gt__": "__lt__", "__le__": "__ge__", "__ge__": "__le__"}
            return getattr(b, swapped.get(name, name))(a)
        return getattr(a, name)(b)


def _text(series):
    """A column for .str tests: list cells (to, rcpt_to, attachments...) as their items joined by ", "."""
    import pandas as pd
    if series.dtype == object:
        return series.map(lambda v: ", ".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v)
    if isinstance(series.dtype, pd.CategoricalDtype):
        return series.astype("string")
    return series


def _timestamp(value):
    import pandas as pd
    if value is None:
        return pd.NaT
    return _utc(parse_time(value, "--where"))


def _utc(seconds: float):
    """A UTC Timestamp at the microsecond of ``seconds`` (the tables' resolution: a float's
    rounding must not put a row just outside a bound given as that row's own time)."""
    import pandas as pd
    return pd.Timestamp(round(seconds * 1e6), unit="us", tz="UTC")


def _const_arith(op, a, b):
    import operator
    fn = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}[type(op)]
    return fn(a, b)
