"""Mail inside web traffic: JMAP, webmail compose forms and raw messages.

Recognition is a function of one completed HTTP exchange (method, URI,
headers, decoded bodies: :class:`~maildissect.protocols.http.Exchange`) plus
a little per-session memory (:class:`WebmailContext`), never of the framing,
so HTTP/1 and HTTP/2 share it. It yields the exchange's ``mail_action`` and
the records it reveals:

- **JMAP** (RFC 8620 core, RFC 8621 mail): the session resource (``apiUrl``,
  ``uploadUrl``, ``downloadUrl``), API requests by their ``methodCalls``
  (``jmap:Mailbox/get,Email/get``), ``Mailbox/get`` lists (mailbox events),
  ``Email/get`` results (messages ``retrieved``), ``Email/set`` creations
  (``appended`` drafts, or ``sent`` when an ``EmailSubmission/set`` submits
  them, in the same request or a later one) with attachments resolved from
  earlier blob uploads, and blob uploads/downloads of raw messages.
- **Compose forms**: Roundcube's (``_task=mail&_action=send`` with ``_to``,
  ``_cc``, ``_bcc``, ``_subject``, ``_message``, ``_from``; attachments sent
  before by ``_action=upload`` under the same compose ``_id``), and generic
  forms with a recipient field and a subject or body field (flagged
  ``heuristic``). Uploaded attachments become ``uploaded`` messages of kind
  ``form`` holding the files.
- **Raw messages anywhere**: ``message/rfc822`` (or ``message/global``)
  bodies, multipart parts and ``*.eml`` files, in requests (``uploaded``) and
  responses (``downloaded``), parsed by :func:`maildissect.mime.fill_message`.

- **Message pages**: an HTML page answering a read request whose header
  cells and body block show a message (``kind="view"``, ``heuristic``).
- **Uploaded files**: a Roundcube attachment upload (``kind="form"``) or a
  JMAP blob that is not a message (``kind="blob"``) is an ``uploaded``
  message holding the file as its attachment.

Every message names its ``kind`` (``jmap``, ``form``, ``rfc822``, ``view``, ``blob``) and
its ``source`` (``"POST /upload"``, ``"POST /jmap/api Email/get"``).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from datetime import datetime
from email.utils import getaddresses, parsedate_to_datetime

from ..model import Attachment, MailboxEvent, Message
from ..text import percent_decode
from .base import CLIENT, SERVER, fill_message
from .forms import is_message_type
from .roundcube import Roundcube

__all__ = ["ANOMALIES", "WebmailContext", "looks_like_message"]

ANOMALIES = {
    "http_jmap_bad_request": "a JMAP request whose methodCalls is not a list of [name, arguments, id] triples",
    "http_message_not_parsed": "a raw message in HTTP that was not kept (beyond limits.max_http_body or "
                               "limits.max_message_size, or cut by a gap): only its size and hash are reported",
    "http_too_many_recipients": "a webmail send with more envelope recipients than limits.max_recipients "
                                "(the rest are not listed)",
}

#: Per-session memory (blobs, drafts, compose uploads) is capped at this many
#: entries each; the oldest are forgotten first.
MAX_REMEMBERED = 1024

_HEADER_LINE = re.compile(rb"[!-9;-~]+:[ \t]")
_MESSAGE_HEADERS = re.compile(
    rb"^(from|to|subject|date|message-id|received|return-path|mime-version|delivered-to|x-mailer):",
    re.I | re.M)
_MAILISH = re.compile(r"(?:^|[/_.\-])(?:inbox|mailbox(?:es)?|folders?|messages?|mails?|webmail|msgs?|"
                      r"compose|drafts?|sent|outbox|eml|jmap)(?:$|[/_.\-])", re.I)


def looks_like_message(data: bytes) -> bool:
    """True when ``data`` starts like an RFC 5322 message: a header field
    first, and at least two well-known message header fields in the first 8 KiB."""
    head = data[:8192]
    if not _HEADER_LINE.match(head):
        return False
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    block = head if end < 0 else head[:end]
    return len(set(m.group(1).lower() for m in _MESSAGE_HEADERS.finditer(block))) >= 2


def _preview(text: str | None, n: int) -> str | None:
    if not text:
        return None
    text = " ".join(text.split())
    return text[:n] if text else None


def _strip_html(html: str) -> str:
    html = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", html)
    text = re.sub(r"(?s)<[^>]*>", " ", html)
    import html as _html
    return _html.unescape(text)


_SPECIALS = set('()<>@,;:\\".[]')


def _fmt(name: str | None, addr: str) -> str:
    """``Name <addr>`` (name quoted when it holds specials, never encoded), or ``addr``."""
    name = " ".join((name or "").split())
    if not name:
        return addr
    if any(ch in _SPECIALS for ch in name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{addr}>"


def _addresses(value) -> list[str]:
    """Addresses from a form field ("Bob <bob@x>, carol@y") as header-style strings."""
    if not value:
        return []
    out = []
    for name, addr in getaddresses([value.replace(";", ",")]):
        if addr:
            out.append(_fmt(name, addr))
    return out


def _jmap_addresses(value) -> list[str]:
    """JMAP EmailAddress objects ``[{"name", "email"}]`` as header-style strings."""
    out = []
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("email"), str):
                name = item.get("name") if isinstance(item.get("name"), str) else None
                out.append(_fmt(name, item["email"]))
    return out


def _msgids(value) -> list[str]:
    """JMAP message-id lists hold ids without angle brackets."""
    if not isinstance(value, list):
        return []
    return [v if v.startswith("<") else f"<{v}>" for v in value if isinstance(v, str) and v]


def _rfc3339(value) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _Bounded(OrderedDict):
    """An insertion-ordered dict that forgets its oldest entries past a cap."""

    def remember(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_REMEMBERED:
            self.popitem(last=False)


class WebmailContext:
    """Webmail recognition for one session (see the module docstring).

    ``processor`` is the session's
    :class:`~maildissect.protocols.http.ExchangeProcessor` (for the session,
    the config and the anomaly factory).
    """

    def __init__(self, processor):
        self.proc = processor
        self.session = processor.session
        self.config = processor.config
        self.limits = processor.config.limits
        self.jmap_api: set[str] = set()
        self.jmap_upload: str | None = None  # path prefix before {accountId}
        self.jmap_download: str | None = None
        self.blobs = _Bounded()  # blobId -> Attachment of an uploaded blob
        self.attachment_blobs = _Bounded()  # blobId -> (Message an Email/get listed it in, its part id)
        self.mailbox_names = _Bounded()  # JMAP Mailbox id -> name (Mailbox/get)
        self.drafts = _Bounded()  # JMAP Email id -> Message created but not yet submitted
        self.compose = _Bounded()  # Roundcube compose id -> [Attachment] uploaded for it
        self.user: str | None = None  # last login-form user
        self.roundcube = Roundcube(self)

    # -- entry point ----------------------------------------------------------
    def recognise(self, ex, login=None) -> tuple[str | None, list]:
        """``(mail_action, records)`` for one completed exchange.

        ``login`` is ``(user, password)`` when the request carried a login form.
        """
        out: list = []
        action = None
        if login is not None:
            action = "login"
            if login[0]:
                self.user = login[0]
        if ex.request is None:
            return None, out
        jmap_action = self._jmap(ex, out)
        if jmap_action:
            action = jmap_action
        form_action = None if jmap_action else self._compose(ex, out)
        if form_action:
            action = form_action
        raw_action = self._raw_messages(ex, out, skip_request=jmap_action == "jmap:upload")
        if raw_action and (action is None or action in ("read", "list")):
            action = raw_action
        if action is None:
            action = self._by_url(ex)
        if raw_action is not None:
            self.roundcube.tag_raw(ex, out)
            if jmap_action == "jmap:download":
                self._tag_jmap_raw(ex, out)
        if action == "read" and raw_action is None and not any(type(r) is Message and r.kind == "view"
                                                                for r in out):
            self._html_view(ex, out)
        self._cap_recipients(ex, out)
        return action, out

    def _cap_recipients(self, ex, out: list) -> None:
        """Hold every message's envelope to limits.max_recipients, as SMTP does for RCPT TO
        (a JMAP rcptTo list or a form's To field is as long as the peer makes it)."""
        cap = self.limits.max_recipients
        for r in list(out):
            if type(r) is Message and len(r.rcpt_to) > cap:
                out.append(self.proc.anomaly(ex.request.ts, CLIENT, "http_too_many_recipients",
                                             f"{len(r.rcpt_to)} recipients, {cap} listed"))
                r.rcpt_to = r.rcpt_to[:cap]

    def wants_page(self, request) -> bool:
        """Keep the HTML answer to this request: it shows a message (a read page)."""
        if request.method != "GET":
            return False
        uri = request.uri
        path = self._url_path(uri)
        query = uri.split("?", 1)[1] if "?" in uri else ""
        if re.search(r"(?:^|&)_action=(?:show|preview|print)(?:&|$)", query):
            return True
        return self._url_action("GET", path) == "read"

    def wants_file(self, request) -> bool:
        """The answer to this request is a message's file (a webmail attachment or raw message
        download): hashed with sha1 too, and kept when extraction asks for bodies."""
        query = request.uri.split("?", 1)[1] if "?" in request.uri else ""
        if "_action=" not in query:
            return False
        fields = dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in query.split("&")[:64])
        return self.roundcube.is_file_request(request, fields)

    # -- shared helpers ---------------------------------------------------------
    def _source(self, ex, extra: str = "") -> str:
        src = f"{ex.method} {ex.uri}"
        if len(src) > 300:
            src = src[:300]
        return f"{src} {extra}" if extra else src

    def _new(self, ex, direction: str, kind: str, source: str, heuristic: bool = False) -> Message:
        at_response = direction in ("retrieved", "downloaded") and ex.response is not None
        ts = ex.response.ts if at_response else ex.request.ts
        return Message(protocol="http", session_id=self.session.session_id, ts=ts, direction=direction,
                       kind=kind, source=source, heuristic=heuristic)

    @staticmethod
    def _attachment(part, disposition: str | None = None) -> Attachment:
        return Attachment(filename=part.filename, content_type=part.content_type, size=part.size,
                          md5=part.md5, sha1=part.sha1, sha256=part.sha256,
                          disposition=disposition or part.disposition, part=str(part.index + 1),
                          encoding=part.encoding, content_id=part.content_id)

    def _keep_files(self, part, att: Attachment) -> Attachment:
        if self.config.keep_bodies and part.data is not None and not part.truncated:
            att.data = bytes(part.data)
        return att

    def _rfc822(self, ex, out: list, raw: bytes | None, direction: str, source: str, *,
                size: int = 0, sha256: str | None = None, complete: bool = True,
                missing: int = 0) -> Message:
        """A full message from raw bytes (or, when they were not kept, its hash)."""
        msg = self._new(ex, direction, "rfc822", source)
        if raw is None or len(raw) > self.limits.max_message_size:
            msg.size = size if raw is None else len(raw)
            msg.sha256 = sha256 if raw is None else hashlib.sha256(raw).hexdigest()
            msg.complete = complete and raw is not None
            msg.missing_bytes = missing
            side = CLIENT if direction == "uploaded" else SERVER
            out.append(self.proc.anomaly(msg.ts, side, "http_message_not_parsed",
                                         f"{source}: {msg.size} bytes"))
            out.append(msg)
            return msg
        out.extend(fill_message(msg, raw, self.config))
        if not complete:
            msg.complete = False
            msg.missing_bytes = max(msg.missing_bytes, missing)
        if self.config.keep_bodies and msg.raw is None:
            msg.raw = raw
        out.append(msg)
        return msg

    # -- raw messages -----------------------------------------------------------
    def _raw_messages(self, ex, out: list, skip_request: bool = False) -> str | None:
        action = None
        req, resp = ex.request, ex.response
        # request body: a whole message uploaded (PUT/POST message/rfc822, .eml)
        body = req.body
        if body is not None and body.size and not skip_request:
            if body.multipart is not None:
                for part in body.multipart.all_parts():
                    if is_message_type(part.content_type, part.filename):
                        self._rfc822(ex, out, bytes(part.data) if part.data is not None and not part.truncated
                                     else None, "uploaded", self._source(ex), size=part.size,
                                     sha256=part.sha256, complete=part.complete and body.complete,
                                     missing=body.missing)
                        action = "upload"
            elif self._body_is_message(body, ex.path):
                self._rfc822(ex, out, body.bytes(), "uploaded", self._source(ex), size=body.size,
                             sha256=body.sha256, complete=body.complete, missing=body.missing)
                action = "upload"
        # response body: a message downloaded or displayed raw
        body = resp.body if resp is not None else None
        if body is not None and body.size and resp.status is not None and 200 <= resp.status < 300:
            viewsource = ex.field("_action") == "viewsource"
            if body.multipart is not None:
                for part in body.multipart.all_parts():
                    if is_message_type(part.content_type, part.filename):
                        self._rfc822(ex, out, bytes(part.data) if part.data is not None and not part.truncated
                                     else None, "downloaded", self._source(ex), size=part.size,
                                     sha256=part.sha256, complete=part.complete and body.complete)
                        action = "download"
            elif self._body_is_message(body, ex.path, viewsource or self._is_jmap_download(ex)):
                self._rfc822(ex, out, body.bytes(), "downloaded", self._source(ex), size=body.size,
                             sha256=body.sha256, complete=body.complete, missing=body.missing)
                action = "download"
        return action

    @staticmethod
    def _body_is_message(body, path: str, hint: bool = False) -> bool:
        if body.content_type.startswith("message/") and body.content_type in ("message/rfc822", "message/global"):
            return True
        if is_message_type(None, body.filename):
            return True
        if body.data is None:
            return False
        # An ambiguous type (text/plain, octet-stream, none) holds a message when
        # the URL or the webmail says so and the bytes agree.
        if (hint or path.lower().endswith(".eml")) and body.content_type in (
                "", "text/plain", "application/octet-stream"):
            return looks_like_message(bytes(body.data[:8192]))
        return False

    def is_blob_upload(self, msg) -> bool:
        """A request to the JMAP upload URL: its body becomes a blob, maybe an attachment."""
        return bool(self.jmap_upload) and msg.method == "POST" and \
            msg.uri.split("?", 1)[0].split("://", 1)[-1].find(self.jmap_upload) >= 0

    def _is_jmap_download(self, ex) -> bool:
        return bool(self.jmap_download) and ex.method == "GET" and ex.path.startswith(self.jmap_download)

    # -- JMAP --------------------------------------------------------------------
    def _jmap(self, ex, out: list) -> str | None:
        resp_json = None
        req_json = ex.request_json() if ex.method == "POST" else None
        if isinstance(req_json, dict) and "methodCalls" in req_json:
            return self._jmap_api(ex, req_json, out)
        # the session resource (RFC 8620 2): GET /.well-known/jmap or its target
        if ex.method == "GET":
            resp_json = ex.response_json()
            if isinstance(resp_json, dict) and isinstance(resp_json.get("capabilities"), dict) \
                    and isinstance(resp_json.get("apiUrl"), str):
                self._jmap_session(resp_json)
                return "jmap:session"
            if ex.path.rstrip("/") == "/.well-known/jmap":
                return "jmap:session"
            if self._is_jmap_download(ex):
                self._jmap_download(ex, out)
                return "jmap:download"
        if ex.method == "POST" and self.jmap_upload and ex.path.startswith(self.jmap_upload):
            return self._jmap_upload(ex, out)
        return None

    @staticmethod
    def _url_path(url: str) -> str:
        if "://" in url[:10]:
            rest = url.split("://", 1)[1]
            url = rest[rest.find("/"):] if "/" in rest else "/"
        return url.split("?", 1)[0]

    def _template_prefix(self, url) -> str | None:
        """``/jmap/upload/{accountId}/`` -> ``/jmap/upload/``: the fixed part of a URL template."""
        if not isinstance(url, str) or not url:
            return None
        path = self._url_path(url)
        return path.split("{", 1)[0] or None

    def _jmap_session(self, obj: dict) -> None:
        self.jmap_api.add(self._url_path(obj["apiUrl"]))
        self.jmap_upload = self._template_prefix(obj.get("uploadUrl")) or self.jmap_upload
        self.jmap_download = self._template_prefix(obj.get("downloadUrl")) or self.jmap_download
        user = obj.get("username")
        if isinstance(user, str) and user and not self.session.auth_user:
            self.session.auth_user = user

    def _jmap_upload(self, ex, out: list) -> str:
        """POST {uploadUrl}: the response names the blob; remember its hashes."""
        body = ex.request.body
        resp = ex.response_json()
        blob_id = resp.get("blobId") if isinstance(resp, dict) else None
        if body is None or not body.size:
            return "jmap:upload"
        att = Attachment(filename=None, content_type=body.content_type or "application/octet-stream",
                         size=body.size, md5=body.md5 or "", sha1=body.sha1 or "", sha256=body.sha256 or "")
        if body.data is not None and body.usable and self.config.keep_bodies:
            att.data = bytes(body.data)
        if isinstance(blob_id, str):
            self.blobs.remember(blob_id, att)
        if body.content_type in ("message/rfc822", "message/global") or (
                body.data is not None and looks_like_message(bytes(body.data[:8192]))):
            self._rfc822(ex, out, body.bytes(), "uploaded", self._source(ex), size=body.size,
                         sha256=body.sha256, complete=body.complete, missing=body.missing)
        else:
            # a file on its way to become an attachment: the blob is the payload
            msg = self._new(ex, "uploaded", "blob", self._source(ex))
            msg.attachments = [att]
            msg.size = body.size
            msg.sha256 = body.sha256
            msg.complete = body.complete
            msg.missing_bytes = body.missing
            out.append(msg)
        return "jmap:upload"

    def _jmap_api(self, ex, req: dict, out: list) -> str:
        calls = req.get("methodCalls")
        valid = []
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, list) and len(call) == 3 and isinstance(call[0], str) \
                        and isinstance(call[1], dict):
                    valid.append((call[0], call[1], call[2] if isinstance(call[2], str) else str(call[2])))
        if not valid:
            out.append(self.proc.anomaly(ex.request.ts, CLIENT, "http_jmap_bad_request",
                                         str(calls)[:120]))
            return "jmap:invalid"
        self.jmap_api.add(ex.path)
        names = []
        for name, _, _ in valid:
            if name not in names:
                names.append(name)
        # responses by call id (one call may get several, e.g. an implicit Email/set)
        responses: dict[str, list[tuple[str, dict]]] = {}
        resp_json = ex.response_json()
        if isinstance(resp_json, dict) and isinstance(resp_json.get("methodResponses"), list):
            for item in resp_json["methodResponses"]:
                if isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) \
                        and isinstance(item[1], dict):
                    responses.setdefault(str(item[2]), []).append((item[0], item[1]))
        created: dict[str, Message] = {}  # creation id -> Message from Email/set
        # (emailId reference, submission object, verdict, SetError type)
        submitted: list[tuple[str, dict, str | None, str | None]] = []
        for name, args, cid in valid:
            results = [a for n, a in responses.get(cid, ()) if n == name]
            if name == "Email/get":
                for res in results:
                    emails = res.get("list")
                    if isinstance(emails, list):
                        for email_obj in emails:
                            if isinstance(email_obj, dict) and self._has_message_data(email_obj):
                                msg = self._jmap_message(ex, email_obj, "retrieved", name)
                                out.append(msg)
            elif name == "Mailbox/get":
                for res in results:
                    self._jmap_mailboxes(ex, res, out)
            elif name == "Email/set":
                create = args.get("create")
                if isinstance(create, dict):
                    res = results[0] if results else {}
                    ok = res.get("created") if isinstance(res.get("created"), dict) else {}
                    bad = res.get("notCreated") if isinstance(res.get("notCreated"), dict) else {}
                    for key, email_obj in create.items():
                        if not isinstance(email_obj, dict):
                            continue
                        msg = self._jmap_message(ex, email_obj, "appended", name)
                        info = ok.get(key)
                        if isinstance(info, dict):
                            msg.reply_code = "created"
                            if isinstance(info.get("size"), int):
                                msg.size = info["size"]
                            if isinstance(info.get("id"), str):
                                self.drafts.remember(info["id"], msg)
                        elif isinstance(bad.get(key), dict):
                            msg.reply_code = "notCreated"
                            err = bad[key]
                            msg.reply_text = str(err.get("type", ""))[:200]
                        created[key] = msg
            elif name == "EmailSubmission/set":
                create = args.get("create")
                if isinstance(create, dict):
                    res = results[0] if results else {}
                    ok = res.get("created") if isinstance(res.get("created"), dict) else {}
                    bad = res.get("notCreated") if isinstance(res.get("notCreated"), dict) else {}
                    for key, sub in create.items():
                        if isinstance(sub, dict) and isinstance(sub.get("emailId"), str):
                            verdict = "created" if key in ok else ("notCreated" if key in bad else None)
                            text = str(bad[key].get("type", ""))[:200] if isinstance(bad.get(key), dict) else None
                            submitted.append((sub["emailId"], sub, verdict, text))
        sent_keys = set()
        for ref, sub, verdict, text in submitted:
            msg = None
            if verdict == "notCreated":
                # the server refused to send: a created email stays a draft
                if ref.startswith("#") and ref[1:] in created:
                    created[ref[1:]].reply_text = f"submission refused: {text or ''}".strip()
                continue
            if ref.startswith("#") and ref[1:] in created:
                msg = created[ref[1:]]
                sent_keys.add(ref[1:])
            elif ref in self.drafts:
                msg = self._copy(self.drafts.pop(ref), ex)
            if msg is None:
                continue
            msg.direction = "sent"
            msg.source = self._source(ex, "Email/set + EmailSubmission/set" if ref.startswith("#")
                                      else "EmailSubmission/set")
            msg.ts = ex.request.ts
            env = sub.get("envelope")
            if isinstance(env, dict):
                mf = env.get("mailFrom")
                if isinstance(mf, dict) and isinstance(mf.get("email"), str):
                    msg.mail_from = mf["email"]
                rcpts = env.get("rcptTo")
                if isinstance(rcpts, list):
                    msg.rcpt_to = [r["email"] for r in rcpts if isinstance(r, dict) and isinstance(r.get("email"), str)]
            if not msg.rcpt_to:
                msg.rcpt_to = [a for a in (_bare(x) for x in msg.to + msg.cc + msg.bcc) if a]
            if msg.mail_from is None and msg.from_:
                msg.mail_from = _bare(msg.from_)
            if verdict is not None:
                msg.reply_code = verdict
                msg.reply_text = text
            if ref.startswith("#"):
                continue  # already in ``created``, emitted below
            out.append(msg)
        for key, msg in created.items():
            if key in sent_keys:
                drafted_id = next((i for i, m in self.drafts.items() if m is msg), None)
                if drafted_id is not None:
                    self.drafts.pop(drafted_id)
            out.append(msg)
        return "jmap:" + ",".join(names)

    @staticmethod
    def _has_message_data(obj: dict) -> bool:
        return any(k in obj for k in ("subject", "from", "messageId", "bodyValues", "to", "sentAt",
                                      "preview", "headers"))

    def _copy(self, msg: Message, ex) -> Message:
        new = Message(protocol="http", session_id=msg.session_id, ts=ex.request.ts, direction=msg.direction,
                      kind=msg.kind)
        for name in ("from_", "sender", "reply_to", "subject", "message_id", "in_reply_to", "date",
                     "date_raw", "size", "text_preview", "has_html", "heuristic"):
            setattr(new, name, getattr(msg, name))
        new.to, new.cc, new.bcc = list(msg.to), list(msg.cc), list(msg.bcc)
        new.references = list(msg.references)
        new.attachments = list(msg.attachments)
        new.headers = list(msg.headers)
        return new

    def _jmap_message(self, ex, obj: dict, direction: str, call: str) -> Message:
        """A Message from a JMAP Email object (RFC 8621 4.1)."""
        msg = self._new(ex, direction, "jmap", self._source(ex, call))
        froms = _jmap_addresses(obj.get("from"))
        msg.from_ = froms[0] if froms else None
        msg.to = _jmap_addresses(obj.get("to"))
        msg.cc = _jmap_addresses(obj.get("cc"))
        msg.bcc = _jmap_addresses(obj.get("bcc"))
        reply = _jmap_addresses(obj.get("replyTo"))
        msg.reply_to = reply[0] if reply else None
        sender = _jmap_addresses(obj.get("sender"))
        msg.sender = sender[0] if sender else None
        if isinstance(obj.get("subject"), str):
            msg.subject = obj["subject"]
        ids = _msgids(obj.get("messageId"))
        msg.message_id = ids[0] if ids else None
        irt = _msgids(obj.get("inReplyTo"))
        msg.in_reply_to = irt[0] if irt else None
        msg.references = _msgids(obj.get("references"))
        if isinstance(obj.get("sentAt"), str):
            msg.date_raw = obj["sentAt"]
            msg.date = _rfc3339(obj["sentAt"])
        if isinstance(obj.get("size"), int) and not isinstance(obj.get("size"), bool):
            msg.size = obj["size"]
        headers = obj.get("headers")
        if isinstance(headers, list):
            msg.headers = [(h["name"], h["value"]) for h in headers
                           if isinstance(h, dict) and isinstance(h.get("name"), str)
                           and isinstance(h.get("value"), str)]
        # body text: the textBody parts' values, else the HTML ones stripped, else the preview
        values = obj.get("bodyValues") if isinstance(obj.get("bodyValues"), dict) else {}
        text_parts, html_parts, atts = self._jmap_parts(obj)
        text = None
        for part in text_parts:
            val = values.get(part.get("partId")) if isinstance(part.get("partId"), str) else None
            if isinstance(val, dict) and isinstance(val.get("value"), str):
                text = val["value"]
                break
        if any(isinstance(p.get("type"), str) and p["type"].lower() == "text/html" for p in html_parts):
            msg.has_html = True
        if text is None:
            for part in html_parts:
                val = values.get(part.get("partId")) if isinstance(part.get("partId"), str) else None
                if isinstance(val, dict) and isinstance(val.get("value"), str):
                    text = _strip_html(val["value"])
                    break
        if text is None and isinstance(obj.get("preview"), str):
            text = obj["preview"]
        if text is None:
            text = next((v["value"] for v in values.values()
                         if isinstance(v, dict) and isinstance(v.get("value"), str)), None)
        msg.text_preview = _preview(text, self.limits.preview_chars)
        msg.attachments = [self._jmap_attachment(a) for a in atts]
        if direction == "retrieved":
            # a later blob download of one of its files, or of the whole message, is this message's
            for a in atts:
                if isinstance(a.get("blobId"), str):
                    self.attachment_blobs.remember(a["blobId"], (msg, str(a.get("partId") or "")))
            if isinstance(obj.get("blobId"), str):
                self.attachment_blobs.remember(obj["blobId"], (msg, ""))
            boxes = obj.get("mailboxIds")
            if isinstance(boxes, dict):
                msg.mailbox = next((self.mailbox_names[b] for b in boxes if b in self.mailbox_names), None)
        return msg

    def _blob_owner(self, ex):
        """``(Message, part id)`` of the blob a download URL names, as an Email/get listed it."""
        for segment in ex.path[len(self.jmap_download):].split("/")[:8]:
            owner = self.attachment_blobs.get(percent_decode(segment.encode("utf-8", "surrogateescape"))[0])
            if owner is not None:
                return owner
        return None

    def _tag_jmap_raw(self, ex, out: list) -> None:
        """A whole message downloaded as its blob: the mailbox its Email/get named."""
        owner = self._blob_owner(ex)
        if owner is not None:
            for r in out:
                if type(r) is Message and r.kind == "rfc822" and r.direction == "downloaded":
                    r.mailbox = r.mailbox or owner[0].mailbox

    def _jmap_download(self, ex, out: list) -> None:
        """A blob download of an attachment that an Email/get listed: a ``downloaded`` message of
        kind ``attachment`` with that message's fields, as a Roundcube attachment download."""
        resp = ex.response
        body = resp.body if resp is not None else None
        if body is None or not body.size or resp.status is None or not 200 <= resp.status < 300 \
                or self._body_is_message(body, ex.path, True):
            return  # an error, or a whole message (_raw_messages reads it)
        owner = self._blob_owner(ex)
        if owner is None or not owner[1]:
            return
        seen, part = owner
        listed = next((a for a in seen.attachments if a.part == part), None)
        msg = self.attachment_download(ex, body, part, listed)
        for f in ("from_", "to", "cc", "bcc", "reply_to", "subject", "message_id", "mailbox"):
            setattr(msg, f, getattr(seen, f))
        msg.filled_from = "page"
        out.append(msg)

    def attachment_download(self, ex, body, part: str, listed: Attachment | None) -> Message:
        """A ``downloaded`` message of kind ``attachment`` holding the one file ``body`` is (part
        ``part`` of a message; ``listed``: that part as the message's page or Email/get named it)."""
        att = Attachment(filename=body.filename or (listed.filename if listed else None),
                         content_type=body.content_type or (listed.content_type if listed
                                                            else "application/octet-stream"),
                         size=body.size, md5=body.md5 or "", sha1=body.sha1 or "", sha256=body.sha256 or "",
                         disposition=body.disposition or "attachment", part=part, complete=body.usable)
        if self.config.keep_bodies and body.data is not None and body.usable \
                and body.size <= self.limits.max_extract_size:
            att.data = bytes(body.data)
        msg = self._new(ex, "downloaded", "attachment", self._source(ex))
        msg.attachments = [att]
        msg.size = body.size
        msg.sha256 = body.sha256  # the file is the payload
        msg.complete = body.usable
        msg.missing_bytes = body.missing
        return msg

    @staticmethod
    def _jmap_parts(obj: dict):
        """(textBody, htmlBody, attachments) part lists, from the lists or bodyStructure."""
        def parts(key):
            v = obj.get(key)
            return [p for p in v if isinstance(p, dict)] if isinstance(v, list) else None
        text, html, atts = parts("textBody"), parts("htmlBody"), parts("attachments")
        if text is None or html is None or atts is None:
            leaves = []
            stack = [obj.get("bodyStructure")]
            depth = 0
            while stack and depth < 10000:
                node = stack.pop()
                depth += 1
                if not isinstance(node, dict):
                    continue
                subs = node.get("subParts")
                if isinstance(subs, list) and subs:
                    stack.extend(reversed(subs))
                else:
                    leaves.append(node)
            def is_att(p):
                return p.get("disposition") == "attachment" or (
                    isinstance(p.get("name"), str) and not str(p.get("type", "")).startswith("text/"))
            if text is None:
                text = [p for p in leaves if str(p.get("type", "text/plain")).lower() == "text/plain" and not is_att(p)]
            if html is None:
                html = [p for p in leaves if str(p.get("type", "")).lower() == "text/html" and not is_att(p)]
            if atts is None:
                atts = [p for p in leaves if is_att(p)]
        return text, html, atts

    def _jmap_attachment(self, part: dict) -> Attachment:
        blob = part.get("blobId")
        known = self.blobs.get(blob) if isinstance(blob, str) else None
        size = part.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            size = known.size if known else 0
        ctype = part.get("type") if isinstance(part.get("type"), str) else None
        return Attachment(
            filename=part.get("name") if isinstance(part.get("name"), str) else None,
            content_type=(ctype or (known.content_type if known else "application/octet-stream")).lower(),
            size=size, md5=known.md5 if known else "", sha1=known.sha1 if known else "",
            sha256=known.sha256 if known else "",
            disposition=part.get("disposition") if isinstance(part.get("disposition"), str) else "attachment",
            part=str(part.get("partId") or ""), content_id=part.get("cid") if isinstance(part.get("cid"), str) else None,
            data=known.data if known else None)

    def _jmap_mailboxes(self, ex, res: dict, out: list) -> None:
        boxes = res.get("list")
        if not isinstance(boxes, list):
            return
        for box in boxes:
            if not isinstance(box, dict):
                continue
            total = box.get("totalEmails")
            detail = []
            if isinstance(box.get("role"), str):
                detail.append(f"role={box['role']}")
            if isinstance(box.get("unreadEmails"), int):
                detail.append(f"unread={box['unreadEmails']}")
            if isinstance(box.get("id"), str):
                detail.append(f"id={box['id']}")
                if isinstance(box.get("name"), str):
                    self.mailbox_names.remember(box["id"], box["name"])
            out.append(MailboxEvent(
                session_id=self.session.session_id, ts=ex.response.ts if ex.response else ex.request.ts,
                protocol="http", user=self.session.auth_user or self.user,
                mailbox=box.get("name") if isinstance(box.get("name"), str) else None, action="mailbox",
                count=total if isinstance(total, int) and not isinstance(total, bool) else None,
                detail=" ".join(detail)))

    # -- compose forms -------------------------------------------------------
    def _compose(self, ex, out: list) -> str | None:
        task = ex.field("_task")
        act = ex.field("_action")
        if task is not None or act is not None:
            return self.roundcube.recognise(ex, out, (task or "").lower(), (act or "").lower())
        if ex.method not in ("POST", "PUT"):
            return None
        return self._generic_form(ex, out)

    _TO = ("to", "recipient", "recipients", "rcpt", "rcpt_to", "mailto", "to_address", "toaddress", "send_to",
           "sendto", "_to")
    _CC = ("cc", "_cc")
    _BCC = ("bcc", "_bcc")
    _SUBJECT = ("subject", "subj", "title", "_subject")
    _BODY = ("body", "message", "text", "content", "msg", "body_text", "bodytext", "plain", "html", "_message")
    _FROM = ("from", "sender", "from_address", "fromaddress", "_from")

    def _generic_form(self, ex, out: list) -> str | None:
        """A form with a recipient address and a subject or body: a heuristic send."""
        fields = ex.form()
        if not fields:
            body = ex.request_json()
            if isinstance(body, dict):
                fields = [(k, v) for k, v in body.items() if isinstance(v, (str, list))]
        if not fields:
            return None
        first: dict[str, str] = {}
        for k, v in fields:
            if isinstance(v, list):
                v = ", ".join(x for x in v if isinstance(x, str))
            first.setdefault(k.lower(), v)

        def pick(names):
            for n in names:
                if n in first and first[n]:
                    return first[n]
            return None
        to = pick(self._TO)
        subject = pick(self._SUBJECT)
        text = pick(self._BODY)
        if not to or "@" not in to or (subject is None and text is None):
            return None
        draft = bool(pick(("draft", "save_draft", "savedraft", "_draft"))) and \
            pick(("draft", "save_draft", "savedraft", "_draft")) not in ("0", "false")
        msg = self._new(ex, "appended" if draft else "sent", "form", self._source(ex), heuristic=True)
        sender = pick(self._FROM)
        if sender and "@" in sender:
            msg.from_ = (_addresses(sender) or [sender])[0]
        elif self.user and "@" in self.user:
            msg.from_ = self.user
        elif self.session.auth_user and "@" in (self.session.auth_user or ""):
            msg.from_ = self.session.auth_user
        self._fill_form_message(ex, msg, to=to, cc=pick(self._CC), bcc=pick(self._BCC), subject=subject,
                                body=text, is_html=bool(first.get("html")) and not first.get("body"),
                                message_id=pick(("message_id", "messageid", "message-id")))
        msg.attachments = [self._keep_files(f, self._attachment(f)) for f in ex.files()
                           if not is_message_type(f.content_type, f.filename)]
        self._verdict(ex, msg)
        out.append(msg)
        return "draft" if draft else "send"

    def _fill_form_message(self, ex, msg: Message, *, to, cc, bcc, subject, body, is_html, message_id) -> None:
        msg.to = _addresses(to)
        msg.cc = _addresses(cc)
        msg.bcc = _addresses(bcc)
        msg.rcpt_to = [a for a in (_bare(x) for x in msg.to + msg.cc + msg.bcc) if a]
        msg.mail_from = _bare(msg.from_) if msg.from_ else None
        msg.subject = subject
        if message_id:
            msg.message_id = message_id if message_id.startswith("<") else f"<{message_id}>"
        if body:
            if is_html or re.search(r"(?i)<(html|body|div|p|br)\b", body[:2000]):
                msg.has_html = True
                body = _strip_html(body)
            msg.text_preview = _preview(body, self.limits.preview_chars)
        req_body = ex.request.body
        msg.complete = req_body is None or req_body.complete

    _PAGE_MSGID = re.compile(r"message-id\W{0,200}?(?:&lt;|<)([^\s<>&\"]+@[^\s<>&\"]+)(?:&gt;|>)", re.I | re.S)

    def _verdict(self, ex, msg: Message) -> None:
        """The server's answer to a send; a confirmation page that shows the new
        message's Message-ID (as some webmails do) gives it to the message."""
        resp = ex.response
        if resp is None or resp.status is None:
            return
        msg.reply_code = str(resp.status)
        msg.reply_text = resp.reason
        if msg.message_id is None and resp.status < 400 and resp.body is not None \
                and resp.body.content_type == "text/html":
            m = self._PAGE_MSGID.search(ex.response_text(1 << 16))
            if m:
                msg.message_id = f"<{m.group(1)}>"

    # -- URL heuristics ------------------------------------------------------
    _URL_RULES = (
        (re.compile(r"(?:^|[/_.\-])(?:logout|log-out|signout|sign-out|logoff)(?:$|[/_.\-])", re.I), None, "logout"),
        (re.compile(r"(?:^|[/_.\-])(?:login|log-in|signin|sign-in|logon|auth|session)(?:$|[/_.\-])", re.I), None, "login"),
        (re.compile(r"(?:^|[/_.\-])(?:raw|source|download|eml|export)(?:$|[/_.\-])", re.I), "GET", "download"),
        (re.compile(r"(?:^|[/_.\-])(?:attachments?|parts?|files?|blobs?)(?:$|[/_.\-])", re.I), "GET", "download"),
        (re.compile(r"(?:^|[/_.\-])(?:upload|attach|attachments?)(?:$|[/_.\-])", re.I), "POST", "upload"),
        (re.compile(r"(?:^|[/_.\-])(?:send|submit|outbox)(?:$|[/_.\-])", re.I), "POST", "send"),
        (re.compile(r"(?:^|[/_.\-])(?:compose|new|write|reply|forward)(?:$|[/_.\-])", re.I), "GET", "compose"),
        (re.compile(r"(?:^|[/_.\-])(?:delete|trash|remove)(?:$|[/_.\-])", re.I), None, "delete"),
        (re.compile(r"(?:^|[/_.\-])(?:messages?|msgs?|mails?|read|view|show|emails?)(?:$|[/_.\-])"
                    r"(?:[^/]*/)*?[^/]*\d", re.I), "GET", "read"),
        (re.compile(r"(?:^|[/_.\-])(?:inbox|mailbox(?:es)?|folders?|messages|mails|list|emails|sent|drafts)"
                    r"(?:$|[/_.\-])", re.I), "GET", "list"),
    )

    def _by_url(self, ex) -> str | None:
        """A mail action guessed from the URL path of a webmail-looking URL."""
        status = ex.status
        if status is not None and status >= 400:
            return None
        return self._url_action(ex.method, ex.path)

    def _url_action(self, method: str, path: str) -> str | None:
        if not path or not (_MAILISH.search(path) or self.user or self.jmap_api or self.compose):
            return None
        if re.search(r"\.(?:css|js|png|jpe?g|gif|svg|ico|woff2?|ttf|map)$", path, re.I):
            return None
        for pattern, only, action in self._URL_RULES:
            if only is not None and method != only:
                continue
            if pattern.search(path):
                if action == "login" and method == "POST":
                    return None  # a login POST without a password field is something else
                return action
        return None

    # -- message pages -------------------------------------------------------
    _VIEW_CELL = re.compile(
        r"<(th|dt|td|span|label|b|strong)\b[^>]*>\s*(from|to|cc|subject|date|message-id)\s*:?\s*</\1>\s*"
        r"(?:</?(?:td|tr)\b[^>]*>\s*)*<(td|dd|span|div)\b[^>]*>(.*?)</\3>", re.I | re.S)
    _VIEW_BODY = re.compile(
        r"<(pre|div)\b[^>]*(?:id|class)\s*=\s*[\"'][^\"']*(?:messagebody|message-body|msgbody|mailbody|"
        r"message-content|mail-body)[^\"']*[\"'][^>]*>(.*?)</\1>", re.I | re.S)

    def _html_view(self, ex, out: list) -> None:
        """A message shown as an HTML page: header cells (``<th>From</th><td>...``) and a
        message-body block, read heuristically (``kind="view"``, ``heuristic``)."""
        resp = ex.response
        if resp is None or resp.status is None or not 200 <= resp.status < 300 or resp.body is None \
                or resp.body.content_type not in ("text/html", "application/xhtml+xml") or resp.body.data is None:
            return
        import html as _html
        page = ex.response_text(1 << 20)
        fields: dict[str, str] = {}
        for m in self._VIEW_CELL.finditer(page):
            name = m.group(2).lower()
            if name not in fields:
                fields[name] = " ".join(_html.unescape(re.sub(r"(?s)<[^>]*>", " ", m.group(4))).split())
        mid = fields.get("message-id", "").strip()
        if not (mid and "@" in mid) and not (fields.get("from") and "subject" in fields):
            return
        msg = self._new(ex, "retrieved", "view", self._source(ex), heuristic=True)
        msg.from_ = (_addresses(fields.get("from")) or [None])[0]
        msg.to = _addresses(fields.get("to"))
        msg.cc = _addresses(fields.get("cc"))
        msg.subject = fields.get("subject")
        if mid and "@" in mid:
            msg.message_id = mid if mid.startswith("<") else f"<{mid}>"
        if fields.get("date"):
            msg.date_raw = fields["date"]
            try:
                msg.date = parsedate_to_datetime(fields["date"]).timestamp()
            except (TypeError, ValueError, IndexError):
                pass
        body = self._VIEW_BODY.search(page)
        if body:
            msg.text_preview = _preview(_html.unescape(re.sub(r"(?s)<[^>]*>", " ", body.group(2))),
                                        self.limits.preview_chars)
        msg.complete = resp.complete
        out.append(msg)


def _bare(addr: str | None) -> str | None:
    if not addr:
        return None
    pairs = getaddresses([addr])
    return pairs[0][1] if pairs and pairs[0][1] else None
