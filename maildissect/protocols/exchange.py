"""The exchange layer of HTTP, shared by HTTP/1 (:mod:`.http`) and HTTP/2 (:mod:`.http2`).

A framing hands over version-neutral objects: :class:`HttpMessage` (a head and
a :class:`~.http_body.Body`) paired into an :class:`Exchange`, which
:class:`ExchangeProcessor` turns into records when it completes: one
:class:`~maildissect.model.HttpRequest`, one
:class:`~maildissect.model.Command`, credentials (Basic, Bearer, Digest, login
forms) and whatever :mod:`.webmail` recognises in it (JMAP calls, compose
forms, raw messages), with :mod:`.forms` for the bodies' syntax.
"""

from __future__ import annotations

import base64
import binascii
import re

from ..model import Command, Credential, HttpRequest, Message
from .base import CLIENT, SERVER
from .forms import decode_text, header_params, is_message_type, load_json, login_fields, parse_urlencoded
from .http_body import Body
from .httpfiles import body_is_file, exchange_files
from .webmail import WebmailContext

__all__ = ["Headers", "HttpMessage", "Exchange", "ExchangeProcessor"]

#: Content types whose decoded body is kept (within limits.max_http_body) for
#: parsing: forms, JSON, messages and opaque blobs that may be messages.
_KEEP_TYPES = ("", "application/x-www-form-urlencoded", "application/json", "text/plain",
               "application/octet-stream", "application/jmap+json", "text/json", "text/x-json")


class Headers:
    """Header fields in arrival order with case-insensitive lookup."""

    __slots__ = ("items", "_map")

    def __init__(self, items=None):
        self.items: list[tuple[str, str]] = list(items or [])
        self._map: dict[str, list[str]] | None = None

    def add(self, name: str, value: str) -> None:
        self.items.append((name, value))
        self._map = None

    def _index(self) -> dict[str, list[str]]:
        if self._map is None:
            m: dict[str, list[str]] = {}
            for k, v in self.items:
                m.setdefault(k.lower(), []).append(v)
            self._map = m
        return self._map

    def get(self, name: str, default=None):
        vals = self._index().get(name.lower())
        return vals[0] if vals else default

    def get_all(self, name: str) -> list[str]:
        return list(self._index().get(name.lower(), ()))

    def tokens(self, name: str) -> list[str]:
        """Comma-separated tokens of every ``name`` field, lower-cased."""
        out = []
        for v in self._index().get(name.lower(), ()):
            out.extend(t.strip().lower() for t in v.split(",") if t.strip())
        return out

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._index()

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


# -- content decoding -------------------------------------------------------


class HttpMessage:
    """A request or a response: head plus body, independent of the framing.

    Requests carry ``method``, ``uri``; responses ``status``, ``reason``. ``ts``
    is when the first byte of the head was seen, ``end_ts`` when the body
    ended. ``complete`` is False when a gap, a truncation or a limit cut it.
    """

    __slots__ = ("is_request", "ts", "end_ts", "method", "uri", "version", "status", "reason",
                 "headers", "body", "complete", "trailers")

    def __init__(self, is_request: bool, ts: float, *, method: str = "", uri: str = "",
                 version: str = "", status: int | None = None, reason: str | None = None,
                 headers: Headers | None = None):
        self.is_request = is_request
        self.ts = ts
        self.end_ts = ts
        self.method = method
        self.uri = uri
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else Headers()
        self.body: Body | None = None
        self.complete = True
        self.trailers: Headers | None = None

    def settle(self, report) -> None:
        """At the end of a message whose body is finished: the body's problems go to
        ``report(name, detail)``, an incomplete body makes the message incomplete,
        and the trailer fields join the header fields."""
        body = self.body
        for name, detail in body.issues:
            report(name, detail)
        body.issues.clear()
        if not body.complete:
            self.complete = False
        self.merge_trailers()

    def merge_trailers(self) -> None:
        """Trailer fields join the header fields (once)."""
        if self.trailers:
            for k, v in self.trailers.items:
                self.headers.add(k, v)
        self.trailers = None


class Exchange:
    """One request and its final response (either may be missing).

    The input of every exchange-level analysis: credentials and
    :mod:`~maildissect.protocols.webmail` recognition look only at this, never
    at the framing, so HTTP/1 and HTTP/2 front ends share them. Parsed views of
    the bodies are computed once on demand; their problems are queued in
    ``issues`` as ``(side, name, detail)``.
    """

    __slots__ = ("request", "response", "interim", "upgrade", "want_upgrade", "issues", "req_done",
                 "resp_done", "_cache", "limits")

    def __init__(self, request: HttpMessage | None, limits):
        self.request = request
        self.response: HttpMessage | None = None
        self.interim: list[int] = []  # 1xx statuses seen before the final response
        self.upgrade: str | None = None  # what the connection switched to
        self.want_upgrade: str | None = None  # asked for (CONNECT, Upgrade:), verdict pending
        self.issues: list[tuple[int, str, str]] = []
        self.req_done = request is None
        self.resp_done = False
        self._cache: dict = {}
        self.limits = limits

    # request views -----------------------------------------------------
    @property
    def method(self) -> str:
        return self.request.method if self.request else ""

    @property
    def uri(self) -> str:
        return self.request.uri if self.request else ""

    @property
    def status(self) -> int | None:
        return self.response.status if self.response else None

    @property
    def path(self) -> str:
        """The URI's path, percent-escapes left as sent."""
        if "path" not in self._cache:
            uri = self.uri
            if "://" in uri[:10]:
                rest = uri.split("://", 1)[1]
                uri = rest[rest.find("/"):] if "/" in rest else "/"
            self._cache["path"] = uri.split("?", 1)[0].split("#", 1)[0]
        return self._cache["path"]

    @property
    def query(self) -> dict[str, str]:
        """Query parameters (first value of each)."""
        if "query" not in self._cache:
            q: dict[str, str] = {}
            if "?" in self.uri:
                # a URL's query is percent-decoded from the UTF-8 of its text, as WHATWG URLs are
                fields, issues = parse_urlencoded(self.uri.split("?", 1)[1].split("#", 1)[0].encode("utf-8"),
                                                  self.limits.max_headers)
                self.issues.extend((CLIENT, n, d.replace("form field", "query parameter", 1)) for n, d in issues
                                   if n.startswith("text_"))
                for k, v in fields:
                    q.setdefault(k, v)
            self._cache["query"] = q
        return self._cache["query"]

    def form(self) -> list[tuple[str, str]]:
        """Fields of an urlencoded or multipart request body, in order."""
        if "form" in self._cache:
            return self._cache["form"]
        fields: list[tuple[str, str]] = []
        req = self.request
        body = req.body if req else None
        if body is not None and body.size:
            if body.multipart is not None:
                for part in body.multipart.all_parts():
                    if part.filename is None and part.name is not None:
                        fields.append((part.name, part.text()))
            elif body.content_type == "application/x-www-form-urlencoded" and body.data is not None \
                    and body.usable:
                fields, issues = parse_urlencoded(bytes(body.data), self.limits.max_headers)
                self.issues.extend((CLIENT, n, d) for n, d in issues)
        self._cache["form"] = fields
        return fields

    def field(self, name: str) -> str | None:
        """First value of form field ``name``, else of query parameter ``name``."""
        for k, v in self.form():
            if k == name:
                return v
        return self.query.get(name)

    def files(self) -> list:
        """File parts (:class:`~maildissect.protocols.forms.FormPart`) of a multipart request."""
        req = self.request
        body = req.body if req else None
        if body is None or body.multipart is None:
            return []
        return [p for p in body.multipart.all_parts()
                if p.filename is not None and (p.filename or p.size)]

    def _json(self, side: int):
        key = ("json", side)
        if key in self._cache:
            return self._cache[key]
        msg = self.request if side == CLIENT else self.response
        value = None
        body = msg.body if msg else None
        if body is not None and body.data is not None and body.size and body.usable:
            ct = body.content_type
            data = bytes(body.data)
            if "json" in ct or (ct in ("", "text/plain", "application/octet-stream")
                                and data.lstrip()[:1] in (b"{", b"[")):
                value, issue = load_json(data, self.limits.max_nesting)
                if issue and ("json" in ct or value is not None):
                    self.issues.append((side,) + issue)
        self._cache[key] = value
        return value

    def request_json(self):
        """The request body as parsed JSON, or None."""
        return self._json(CLIENT)

    def response_json(self):
        """The response body as parsed JSON, or None."""
        return self._json(SERVER)

    def response_text(self, limit: int = 1 << 20) -> str:
        """Up to ``limit`` characters of the kept response body as text."""
        resp = self.response
        if resp is None or resp.body is None or resp.body.data is None:
            return ""
        return decode_text(bytes(resp.body.data[:limit]))


class ExchangeProcessor:
    """Turns completed exchanges into records; one per session.

    Shared by every HTTP front end: it decides which bodies to keep
    (:meth:`new_body`), extracts credentials, asks the webmail recogniser for
    mail actions and messages, and fills the session's software fields.
    ``anomaly(ts, side, name, detail)`` is the dissector's anomaly factory.
    """

    def __init__(self, session, config, anomaly):
        self.session = session
        self.config = config
        self.limits = config.limits
        self.anomaly = anomaly
        self.webmail = WebmailContext(self)
        self._creds_seen: set = set()
        self._seq = 0  # exchanges completed so far (HttpRequest.seq)

    # bodies --------------------------------------------------------------
    def new_body(self, msg: HttpMessage, request: HttpMessage | None = None) -> Body:
        """A :class:`Body` for ``msg`` with the keep policy applied.

        Kept: forms, JSON, plain text, messages, opaque blobs (a JMAP blob may
        be a message), anything named ``*.eml``, HTML answering a POST (to
        judge a login) and HTML pages that show a message. Not kept: images,
        scripts, styles, media, archives: they are counted and hashed only.
        """
        ct, _ = header_params(msg.headers.get("content-type"))
        disp, dparams = header_params(msg.headers.get("content-disposition"))
        keep = (ct in _KEEP_TYPES or ct.endswith("+json") or ct.startswith("message/")
                or is_message_type(ct, dparams.get("filename"))
                or (ct == "text/html" and request is not None
                    and (request.method == "POST" or self.webmail.wants_page(request))))
        keep_files = self.config.keep_bodies
        # a file (a download, an upload with a name: protocols/httpfiles.py), or a message's file
        # downloaded through webmail: hashed as attachments are, kept for extraction
        file = body_is_file(msg, ct, disp, dparams) or (
            not msg.is_request and request is not None and self.webmail.wants_file(request))

        def keep_part(part) -> bool:
            return (part.filename is None or keep_files
                    or is_message_type(part.content_type, part.filename))
        blob = msg.is_request and self.webmail.is_blob_upload(msg)
        return Body(msg.headers, self.config, keep=keep or (file and keep_files), keep_part=keep_part,
                    md5=blob or file or not msg.is_request, sha1=blob or file,
                    extract_only=file and keep_files and not keep)

    # records -------------------------------------------------------------
    def complete(self, ex: Exchange) -> list:
        """Records for a finished (or abandoned) exchange."""
        out: list = []
        req, resp = ex.request, ex.response
        sess = self.session
        if req is not None:
            ua = req.headers.get("user-agent")
            if ua and not sess.client_software:
                sess.client_software = ua[:500]
        if resp is not None:
            server = resp.headers.get("server")
            if server and not sess.server_software:
                sess.server_software = server[:500]
        creds, login = self._credentials(ex) if req is not None else ([], None)
        action, extra = self.webmail.recognise(ex, login)
        command = self._command(ex) if req is not None else None  # parses the query: its issues come first
        for side, name, detail in ex.issues:
            msg = req if side == CLIENT else resp
            out.append(self.anomaly(msg.ts if msg else None, side, name, detail))
        ex.issues = []
        self._seq += 1
        record = self._http_record(ex, action)
        record.seq = self._seq
        out.append(record)
        if command is not None:
            command.seq, command.user = self._seq, sess.auth_user
            out.append(command)
        out.extend(creds)
        for r in extra:  # the messages of this exchange are keyed to it
            if type(r) is Message and r.command_seq is None:
                r.command_seq = self._seq
                r.user = sess.auth_user
            # a downloaded file that webmail made a message of (an attachment download) is
            # listed once, with its message
            if type(r) is Message and record.response_file is not None and any(
                    a.sha256 and a.sha256 == record.response_file.sha256 for a in r.attachments):
                record.response_file = None
            if type(r) is Message and r.direction == "downloaded" and r.kind in ("attachment", "rfc822"):
                # the exchange names the message it downloaded, or whose file (a JMAP blob download)
                record.mailbox = record.mailbox or r.mailbox
                if r.kind == "attachment":
                    record.part = record.part or (r.attachments[0].part if r.attachments else None)
                record.message_id = record.message_id or r.message_id
        out.extend(extra)
        return out

    def _http_record(self, ex: Exchange, action: str | None) -> HttpRequest:
        req, resp = ex.request, ex.response
        rb = req.body if req else None
        sb = resp.body if resp else None
        head = req if req is not None else resp
        host = req.headers.get("host") if req else None
        if host is None and req is not None and "://" in req.uri[:10]:
            host = req.uri.split("://", 1)[1].split("/", 1)[0] or None
        files, response_file = exchange_files(ex, self.limits.max_extract_size if self.config.keep_bodies else -1)
        complete = ((req is None or req.complete) and (resp is None or resp.complete)
                    and (rb is None or rb.usable) and (sb is None or sb.usable))
        mailbox, uid, part = self.webmail.roundcube.reference(ex) if req is not None else (None, None, None)
        return HttpRequest(
            session_id=self.session.session_id,
            ts=head.ts if head else 0.0,
            method=req.method if req else "",
            uri=req.uri if req else "",
            version=(req.version if req else (resp.version if resp else "")),
            host=host,
            status=resp.status if resp else None,
            reason=resp.reason if resp else None,
            request_content_type=(rb.content_type or None) if rb else None,
            request_size=rb.size if rb else 0,
            response_content_type=(sb.content_type or None) if sb else None,
            response_size=sb.size if sb else 0,
            user_agent=req.headers.get("user-agent") if req else None,
            referer=req.headers.get("referer") if req else None,
            response_ts=resp.ts if resp else None,
            latency=(resp.ts - req.ts) if (resp is not None and req is not None) else None,
            request_sha256=rb.sha256 if rb else None,
            response_sha256=sb.sha256 if sb else None,
            mail_action=action,
            files=files,
            response_md5=sb.md5 if sb else None,
            response_filename=sb.filename if sb else None,
            upgrade=ex.upgrade,
            complete=complete,
            mailbox=mailbox,
            uid=uid,
            part=part,
            response_file=response_file,
        )

    def _command(self, ex: Exchange) -> Command:
        req, resp = ex.request, ex.response
        return Command(
            session_id=self.session.session_id, protocol="http", ts=req.ts,
            command=req.method, argument=req.uri,
            reply_code=str(resp.status) if resp is not None and resp.status is not None else None,
            reply_text=resp.reason if resp is not None else None,
            reply_ts=resp.ts if resp is not None else None,
            latency=(resp.ts - req.ts) if resp is not None else None)

    # credentials ---------------------------------------------------------
    def _credentials(self, ex: Exchange):
        """Credentials of the request and the login form found, if any.

        Header schemes are judged by the status (401/407/403 refused, other
        statuses below 400 accepted); login forms by :meth:`form_verdict`.
        A credential repeated on every request of a session is reported once.
        """
        req = ex.request
        found: list[tuple[str, str | None, str | None, bool | None, str]] = []
        status = ex.status
        header_ok = None
        if status is not None:
            header_ok = False if status in (401, 403, 407) else (True if status < 400 else None)
        for hname in ("authorization", "proxy-authorization"):
            for value in req.headers.get_all(hname):
                scheme, _, rest = value.strip().partition(" ")
                s = scheme.lower()
                rest = rest.strip()
                if s == "basic":
                    try:
                        raw = base64.b64decode(rest, validate=True)
                        user, sep, pw = decode_text(raw).partition(":")
                        if not sep:
                            raise ValueError("no colon")
                    except (binascii.Error, ValueError) as exc:
                        ex.issues.append((CLIENT, "http_basic_auth_invalid", str(exc)[:100]))
                        continue
                    found.append(("BASIC", user, pw, header_ok, hname))
                elif s == "bearer":
                    found.append(("BEARER", None, rest, header_ok, hname))
                elif s == "digest":
                    _, params = header_params("digest;" + rest.replace(",", ";"))
                    found.append(("DIGEST", params.get("username"), params.get("response"), header_ok,
                                  f"realm={params.get('realm', '')}"))
                elif s in ("ntlm", "negotiate"):
                    found.append((s.upper(), None, rest, header_ok, hname))
        login = None
        fields = list(ex.form())
        body_json = ex.request_json()
        if isinstance(body_json, dict):
            fields += [(k, v) for k, v in body_json.items() if isinstance(v, str)]
        fields += list(ex.query.items())
        lf = login_fields(fields)
        if lf is not None:
            user_field, user, pw_field, pw = lf
            login = (user, pw)
            found.append(("FORM", user, pw, self.form_verdict(ex),
                          f"fields {user_field or '-'},{pw_field}"))
        out = []
        for mech, user, secret, ok, detail in found:
            key = (mech, user, secret, ok)
            if key in self._creds_seen:
                continue
            if len(self._creds_seen) < 1024:
                self._creds_seen.add(key)
            out.append(Credential(session_id=self.session.session_id, protocol="http", ts=req.ts,
                                  mechanism=mech, user=user, secret=secret, success=ok, detail=detail))
            if ok is not False and user and not self.session.auth_user:
                self.session.auth_user = user
                self.session.auth_mechanism = mech
        return out, login

    _FAIL_WORDS = re.compile(r"login|signin|sign-in|logon|auth|error|fail|denied|invalid", re.I)
    _PASSWORD_INPUT = re.compile(r"""type\s*=\s*["']?password""", re.I)

    def form_verdict(self, ex: Exchange) -> bool | None:
        """Guess whether a login form succeeded, from its response.

        401/403 → refused. A redirect (3xx) → accepted, unless its Location
        points back to a login, sign-in or error page. A 2xx page that shows a
        password input again → refused; a 2xx JSON answer with ``ok``/
        ``success`` true or a token → accepted, false or an ``error`` member →
        refused; any other 2xx that sets a cookie → accepted. Otherwise no
        verdict (None).
        """
        status = ex.status
        if status is None:
            return None
        resp = ex.response
        if status in (401, 403):
            return False
        if 300 <= status < 400:
            loc = resp.headers.get("location") or ""
            path = loc.split("?", 1)[0]
            if self._FAIL_WORDS.search(path) or re.search(r"[?&](_?error|_?fail)", loc, re.I):
                return False
            return True
        if 200 <= status < 300:
            js = ex.response_json()
            if isinstance(js, dict):
                for key in ("ok", "success", "authenticated", "loggedIn"):
                    if isinstance(js.get(key), bool):
                        return js[key]
                if "error" in js or "errors" in js:
                    return False
                if any(k in js for k in ("token", "access_token", "session", "sessionId")):
                    return True
            text = ex.response_text()
            if text and self._PASSWORD_INPUT.search(text):
                return False
            if resp.headers.get("set-cookie"):
                return True
            return None
        return False if status >= 400 else None
