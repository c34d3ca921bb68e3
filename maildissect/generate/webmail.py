"""A small webmail on a real HTTP stack: a Starlette (ASGI) app served by uvicorn.

Two faces, both over one domain's :class:`~.store.MailStore`:

- A Roundcube-style HTML interface on ``/`` steered by ``_task`` and
  ``_action`` parameters, with Roundcube's field names: login form (``_user``,
  ``_pass``), inbox listing, message view, raw message download
  (``_action=viewsource&_save=1``, an .eml file), compose, attachment upload
  (``_action=upload``, field ``_attachments[]``) and send (``_task=mail&
  _action=send`` with ``_to``, ``_cc``, ``_subject``, ``_message``).
- A JMAP subset (RFC 8620 core, RFC 8621 mail): the session resource (via
  ``/.well-known/jmap``), ``Mailbox/get``, ``Email/query``, ``Email/get``,
  ``Email/set``, ``Identity/get``, ``EmailSubmission/set`` (with
  ``onSuccessUpdateEmail``), result references, and blob upload/download.
  Requests authenticate with HTTP Basic.

Sending, from either face, submits the message over SMTP to the domain's own
submission service with the user's credentials, as a real webmail does.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import html
import json
import random
import threading
from email.message import EmailMessage
from email.utils import formataddr, getaddresses

from .content import WIRE, _fix_boundaries


class Webmail:
    """The state of one domain's webmail (sessions, uploads, blobs) and its ASGI app."""

    def __init__(self, lab, mta, seed: int):
        self.lab = lab
        self.mta = mta
        self.store = mta.store
        self.hostname = mta.hostname
        self.sessions: dict[str, dict] = {}
        self.blobs: dict[str, tuple[str, bytes]] = {}  # blobId -> (type, bytes)
        self._rng = random.Random(f"webmail:{seed}:{mta.domain}")
        self._lock = threading.Lock()
        self._sent = 0
        self.app = self._build_app()

    # ------------------------------------------------------------------
    def _token(self, n=16) -> str:
        with self._lock:
            return "".join(self._rng.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(n))

    def _box_id(self, box) -> str:
        return f"mb-{box.name.lower()}"

    @staticmethod
    def _email_id(box, stored) -> str:
        return stored.email_id

    def _find_email(self, user, email_id):
        for box in self.store.mailboxes[user].values():
            for m in box.snapshot():
                if self._email_id(box, m) == email_id:
                    return box, m
        return None, None

    def submit(self, user, mail_from: str, rcpts: list[str], data: bytes, via: str) -> dict:
        """Submit over SMTP to our own submission service (blocking; called in a worker thread)."""
        from .clients import SmtpClient
        account = self.store.users[user]
        with SmtpClient(self.lab, self.mta.ip, self.hostname, 587, service="submission",
                        purpose=f"webmail ({via}) of {self.hostname} submits for {user}",
                        ehlo_name=self.hostname, user=user, password=account.password) as c:
            return c.send(mail_from, rcpts, data)

    def compose(self, user, to, cc, subject, text, attachments, in_reply_to=None) -> tuple[bytes, str]:
        """Build the MIME message a webmail sends (its own Message-ID, Date, User-Agent)."""
        account = self.store.users[user]
        content = self.lab.content
        with self._lock:
            self._sent += 1
            n = self._sent
        msg = EmailMessage(policy=WIRE)
        msg["From"] = account.header
        if to:
            msg["To"] = ", ".join(to)
        if cc:
            msg["Cc"] = ", ".join(cc)
        msg["Subject"] = subject
        msg["Date"] = content.date()
        mid = content.message_id(self.store.domain, n, "webmail")
        msg["Message-ID"] = mid
        if in_reply_to:
            msg["In-Reply-To"] = in_reply_to
            msg["References"] = in_reply_to
        msg["User-Agent"] = "maildissect-webmail/1.0 (Roundcube-style)"
        msg.set_content(text.replace("\r\n", "\n"), charset="utf-8", cte="quoted-printable")
        for name, ctype, data in attachments:
            maintype, _, subtype = (ctype or "application/octet-stream").partition("/")
            msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                               filename=name)
        _fix_boundaries(msg, f"webmail-{self.store.domain}-{n}")
        return msg.as_bytes(), mid

    # ------------------------------------------------------------------
    def _build_app(self):
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
        from starlette.routing import Route

        store = self.store
        web = self

        def page(title, body, status=200, headers=None):
            doc = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
                   f" :: {html.escape(web.hostname)} Webmail</title></head>\n<body>\n{body}\n</body></html>\n")
            return HTMLResponse(doc, status_code=status, headers=headers)

        def login_form(error=""):
            token = web._token()
            return page("Login", (
                f"<h1>{html.escape(web.hostname)} Webmail</h1>{error}\n"
                "<form name=\"form\" method=\"post\" action=\"./?_task=login\">\n"
                f"<input type=\"hidden\" name=\"_token\" value=\"{token}\">\n"
                "<input type=\"hidden\" name=\"_task\" value=\"login\">\n"
                "<input type=\"hidden\" name=\"_action\" value=\"login\">\n"
                "<input type=\"hidden\" name=\"_timezone\" value=\"Europe/Berlin\">\n"
                "<input type=\"hidden\" name=\"_url\" value=\"\">\n"
                "<label>Username <input name=\"_user\" id=\"rcmloginuser\"></label>\n"
                "<label>Password <input name=\"_pass\" id=\"rcmloginpwd\" type=\"password\"></label>\n"
                "<button type=\"submit\">Login</button>\n</form>"),
                status=401 if error else 200)

        def current(request):
            sid = request.cookies.get("roundcube_sessid")
            return web.sessions.get(sid) if sid else None

        def listing(user, mbox):
            box = store.mailbox(user, mbox)
            rows = []
            for m in box.snapshot():
                d = email.message_from_bytes(m.data, policy=email.policy.default)
                rows.append(
                    f"<tr id=\"rcmrow{m.uid}\"><td>{html.escape(str(d.get('From', '')))}</td>"
                    f"<td><a href=\"./?_task=mail&amp;_mbox={mbox}&amp;_uid={m.uid}&amp;_action=show\">"
                    f"{html.escape(str(d.get('Subject', '')))}</a></td>"
                    f"<td>{html.escape(str(d.get('Date', '')))}</td><td>{m.size}</td></tr>")
            return page(f"{mbox} ({len(rows)})",
                        f"<h1>{html.escape(mbox)}</h1>\n<table id=\"messagelist\">\n"
                        "<tr><th>From</th><th>Subject</th><th>Date</th><th>Size</th></tr>\n"
                        + "\n".join(rows) + "\n</table>\n"
                        "<p><a href=\"./?_task=mail&amp;_action=compose\">Compose</a></p>")

        def show(user, mbox, uid):
            box = store.mailbox(user, mbox)
            m = box.by_uid(uid) if box else None
            if m is None:
                return page("Not found", "<p>Message not found</p>", 404)
            m.flags.add("\\Seen")
            d = email.message_from_bytes(m.data, policy=email.policy.default)
            body = d.get_body(preferencelist=("plain", "html"))
            text = body.get_content() if body is not None else ""
            atts = [a.get_filename() or "attachment" for a in d.iter_attachments()]
            heads = "".join(f"<tr><th>{h}</th><td>{html.escape(str(d.get(h, '')))}</td></tr>"
                            for h in ("From", "To", "Cc", "Subject", "Date", "Message-ID"))
            return page(str(d.get("Subject", "")), (
                f"<table id=\"headers\">{heads}</table>\n<pre id=\"messagebody\">{html.escape(text)}</pre>\n"
                + "".join(f"<p class=\"attachment\">{html.escape(a)}</p>\n" for a in atts)
                + f"<p><a href=\"./?_task=mail&amp;_uid={uid}&amp;_mbox={mbox}&amp;_action=viewsource"
                  "&amp;_save=1\">Download (.eml)</a></p>"))

        async def root(request: Request):
            q = request.query_params
            task, action = q.get("_task", ""), q.get("_action", "")
            if request.method == "POST":
                form = await request.form()
                task = form.get("_task", task)
                action = form.get("_action", action)
            else:
                form = None
            sess = current(request)
            if task == "login" and request.method == "POST":
                user, password = form.get("_user", ""), form.get("_pass", "")
                if not store.check_password(user, password):
                    return login_form("<p class=\"error\">Login failed.</p>")
                sid = web._token(24)
                web.sessions[sid] = {"user": user, "password": password, "token": web._token(),
                                     "compose": {}}
                resp = RedirectResponse("./?_task=mail&_mbox=INBOX", status_code=302)
                resp.set_cookie("roundcube_sessid", sid, httponly=True, path="/")
                resp.set_cookie("roundcube_sessauth", web._token(32), httponly=True, path="/")
                return resp
            if sess is None:
                return login_form()
            user = sess["user"]
            if task == "logout":
                web.sessions.pop(request.cookies.get("roundcube_sessid"), None)
                resp = RedirectResponse("./?_task=login", status_code=302)
                resp.delete_cookie("roundcube_sessid", path="/")
                return resp
            mbox = q.get("_mbox", "INBOX")
            if action == "show":
                return show(user, mbox, int(q.get("_uid", "0")))
            if action == "viewsource":
                box = store.mailbox(user, mbox)
                m = box.by_uid(int(q.get("_uid", "0"))) if box else None
                if m is None:
                    return page("Not found", "<p>Message not found</p>", 404)
                name = f"message-{m.uid}.eml"
                disp = "attachment" if q.get("_save") else "inline"
                return Response(m.data, media_type="message/rfc822",
                                headers={"Content-Disposition": f"{disp}; filename=\"{name}\""})
            if action == "compose":
                cid = web._token(12)
                sess["compose"][cid] = []
                return page("Compose", (
                    "<form name=\"form\" method=\"post\" enctype=\"multipart/form-data\" "
                    "action=\"./?_task=mail&amp;_action=send\">\n"
                    f"<input type=\"hidden\" name=\"_token\" value=\"{sess['token']}\">\n"
                    "<input type=\"hidden\" name=\"_task\" value=\"mail\">\n"
                    "<input type=\"hidden\" name=\"_action\" value=\"send\">\n"
                    f"<input type=\"hidden\" name=\"_id\" value=\"{cid}\">\n"
                    f"<input type=\"hidden\" name=\"_from\" value=\"{html.escape(store.users[user].address)}\">\n"
                    "<input name=\"_to\"> <input name=\"_cc\"> <input name=\"_bcc\">\n"
                    "<input name=\"_subject\">\n<textarea name=\"_message\"></textarea>\n"
                    "<input type=\"file\" name=\"_attachments[]\" multiple>\n"
                    "<button type=\"submit\">Send</button>\n</form>"))
            if action == "upload" and request.method == "POST":
                cid = q.get("_id") or form.get("_id")
                if cid not in sess["compose"]:
                    return JSONResponse({"ok": False, "error": "unknown compose id"}, 400)
                out = []
                for up in form.getlist("_attachments[]"):
                    data = await up.read()
                    sess["compose"][cid].append((up.filename, up.content_type, data))
                    out.append({"id": f"rcmfile{len(sess['compose'][cid])}", "name": up.filename,
                                "mimetype": up.content_type, "size": len(data)})
                return JSONResponse({"ok": True, "action": "upload", "files": out})
            if action == "send" and request.method == "POST":
                if form.get("_token") != sess["token"]:
                    return page("Error", "<p>Invalid request token</p>", 403)
                cid = form.get("_id", "")
                atts = list(sess["compose"].pop(cid, []))
                for up in form.getlist("_attachments[]"):
                    if hasattr(up, "read"):
                        atts.append((up.filename, up.content_type, await up.read()))
                to = [a for _, a in getaddresses([form.get("_to", "")]) if a]
                cc = [a for _, a in getaddresses([form.get("_cc", "")]) if a]
                bcc = [a for _, a in getaddresses([form.get("_bcc", "")]) if a]
                in_reply_to = None
                if form.get("_reply_uid"):
                    box = store.mailbox(user, form.get("_mbox", "INBOX"))
                    orig = box.by_uid(int(form["_reply_uid"])) if box else None
                    if orig is not None:
                        in_reply_to = email.message_from_bytes(orig.data).get("Message-ID")
                        orig.flags.add("\\Answered")
                data, mid = web.compose(user, to, cc, form.get("_subject", ""),
                                        form.get("_message", ""), atts, in_reply_to)
                result = await run_in_threadpool(web.submit, user, store.users[user].address,
                                                 to + cc + bcc, data, "form")
                store.mailbox(user, "Sent").append(data, flags={"\\Seen"})
                return page("Message sent", (
                    "<p class=\"confirmation\">Message sent successfully.</p>\n"
                    f"<p>Message-ID: <code id=\"message-id\">{html.escape(mid)}</code> "
                    f"({html.escape(result['reply'])})</p>"))
            return listing(user, mbox if store.mailbox(user, mbox) else "INBOX")

        # ---------------- JMAP ----------------
        def basic_user(request):
            auth = request.headers.get("authorization", "")
            if not auth.lower().startswith("basic "):
                return None
            try:
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                return None
            return user if store.check_password(user, pw) else None

        def unauthorized():
            return JSONResponse({"type": "about:blank", "status": 401, "detail": "Authentication required"},
                                401, headers={"WWW-Authenticate": 'Basic realm="maildissect-lab JMAP"'})

        async def well_known(request):
            # RFC 8620 2.2: the well-known URL may redirect to the session resource.
            return RedirectResponse("/jmap/session", status_code=307)

        async def session_resource(request):
            user = basic_user(request)
            if user is None:
                return unauthorized()
            acct = f"A{user}"
            scheme = "https" if request.url.scheme == "https" else "http"
            url = f"{scheme}://{web.hostname}"
            return JSONResponse({
                "capabilities": {
                    "urn:ietf:params:jmap:core": {
                        "maxSizeUpload": 50_000_000, "maxConcurrentUpload": 4,
                        "maxSizeRequest": 10_000_000, "maxConcurrentRequests": 4,
                        "maxCallsInRequest": 16, "maxObjectsInGet": 500, "maxObjectsInSet": 500,
                        "collationAlgorithms": ["i;ascii-casemap"]},
                    "urn:ietf:params:jmap:mail": {},
                    "urn:ietf:params:jmap:submission": {}},
                "accounts": {acct: {"name": store.users[user].address, "isPersonal": True,
                                    "isReadOnly": False,
                                    "accountCapabilities": {
                                        "urn:ietf:params:jmap:mail": {
                                            "maxMailboxesPerEmail": None, "maxMailboxDepth": 10,
                                            "maxSizeMailboxName": 255,
                                            "maxSizeAttachmentsPerEmail": 50_000_000,
                                            "emailQuerySortOptions": ["receivedAt"],
                                            "mayCreateTopLevelMailbox": False},
                                        "urn:ietf:params:jmap:submission": {
                                            "maxDelayedSend": 0, "submissionExtensions": {}}}}},
                "primaryAccounts": {"urn:ietf:params:jmap:mail": acct,
                                    "urn:ietf:params:jmap:submission": acct},
                "username": user,
                "apiUrl": f"{url}/jmap/api/",
                "downloadUrl": f"{url}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}",
                "uploadUrl": f"{url}/jmap/upload/{{accountId}}/",
                "eventSourceUrl": f"{url}/jmap/eventsource/?types={{types}}&closeafter={{closeafter}}&ping={{ping}}",
                "state": "s1"})

        async def upload(request):
            user = basic_user(request)
            if user is None:
                return unauthorized()
            data = await request.body()
            ctype = request.headers.get("content-type", "application/octet-stream")
            blob_id = "G" + hashlib.sha256(data).hexdigest()[:24]
            web.blobs[blob_id] = (ctype, data)
            return JSONResponse({"accountId": request.path_params["account"], "blobId": blob_id,
                                 "type": ctype, "size": len(data)}, 201)

        async def download(request):
            user = basic_user(request)
            if user is None:
                return unauthorized()
            blob_id = request.path_params["blob"]
            accept = request.query_params.get("accept", "application/octet-stream")
            name = request.path_params["name"]
            data = web.blob_bytes(user, blob_id)
            if data is None:
                return JSONResponse({"type": "about:blank", "status": 404}, 404)
            return Response(data, media_type=accept,
                            headers={"Content-Disposition": f"attachment; filename=\"{name}\""})

        async def api(request):
            user = basic_user(request)
            if user is None:
                return unauthorized()
            try:
                req = json.loads(await request.body())
                calls = req["methodCalls"]
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"type": "urn:ietf:params:jmap:error:notRequest", "status": 400}, 400)
            responses = []
            created_ids: dict[str, str] = {}
            for name, args, call_id in calls:
                args = web.resolve_refs(args, responses)
                out = await web.jmap_call(user, name, args, call_id, created_ids)
                responses.extend(out)
            return JSONResponse({"methodResponses": responses, "sessionState": "s1"})

        routes = [
            Route("/", root, methods=["GET", "POST"]),
            Route("/.well-known/jmap", well_known),
            Route("/jmap/session", session_resource),
            Route("/jmap/api/", api, methods=["POST"]),
            Route("/jmap/upload/{account}/", upload, methods=["POST"]),
            Route("/jmap/download/{account}/{blob}/{name}", download),
        ]
        return Starlette(routes=routes)

    # ------------------------------------------------------------------ JMAP
    def blob_bytes(self, user, blob_id):
        if blob_id in self.blobs:
            return self.blobs[blob_id][1]
        if blob_id.startswith("B"):
            box, m = self._find_email(user, blob_id[1:])
            return m.data if m is not None else None
        if blob_id.startswith("P"):
            email_id, _, part_id = blob_id[1:].rpartition(".")
            box, m = self._find_email(user, email_id)
            if m is None:
                return None
            for pid, part in self._leaf_parts(m.data):
                if pid == part_id:
                    return part.get_payload(decode=True)
        return None

    @staticmethod
    def _leaf_parts(data):
        msg = email.message_from_bytes(data, policy=email.policy.default)
        n = 0
        for part in msg.walk():
            if part.is_multipart():
                continue
            n += 1
            yield str(n), part

    @staticmethod
    def resolve_refs(args, responses):
        """RFC 8620 3.7: replace "#name" arguments with values from earlier results."""
        out = {}
        for key, value in args.items():
            if key.startswith("#") and isinstance(value, dict):
                for rname, rargs, rid in responses:
                    if rid == value.get("resultOf") and rname == value.get("name"):
                        path = value.get("path", "").strip("/").split("/")
                        v = rargs
                        for p in path:
                            if p == "*" and isinstance(v, list):
                                continue
                            if isinstance(v, list):
                                v = [x.get(p) for x in v]
                            else:
                                v = v.get(p) if isinstance(v, dict) else None
                        out[key[1:]] = v
                        break
            else:
                out[key] = value
        return out

    def _email_object(self, user, box, m, props, fetch_text):
        d = email.message_from_bytes(m.data, policy=email.policy.default)
        eid = self._email_id(box, m)

        def addrs(name):
            return [{"name": n or None, "email": a} for n, a in getaddresses([str(v) for v in d.get_all(name, [])])] or None

        text_body, attachments, body_values = [], [], {}
        for pid, part in self._leaf_parts(m.data):
            info = {"partId": pid, "blobId": f"P{eid}.{pid}", "size": len(part.get_payload(decode=True) or b""),
                    "name": part.get_filename(), "type": part.get_content_type(),
                    "charset": part.get_content_charset(), "disposition": part.get_content_disposition()}
            if part.get_content_disposition() == "attachment" or part.get_filename():
                attachments.append(info)
            elif part.get_content_type() == "text/plain":
                text_body.append(info)
                if fetch_text:
                    body_values[pid] = {"value": part.get_content(), "isEncodingProblem": False,
                                        "isTruncated": False}
        body = d.get_body(preferencelist=("plain",))
        preview = " ".join(body.get_content().split())[:256] if body is not None else ""
        full = {
            "id": eid, "blobId": f"B{eid}", "threadId": f"T{eid}",
            "mailboxIds": {self._box_id(box): True},
            "keywords": {k: True for k in (("$seen" if "\\Seen" in m.flags else None),
                                           ("$flagged" if "\\Flagged" in m.flags else None),
                                           ("$draft" if "\\Draft" in m.flags else None)) if k},
            "size": m.size, "receivedAt": _utc(m.internal_date),
            "messageId": [str(d.get("Message-ID", "")).strip("<> ")] if d.get("Message-ID") else None,
            "inReplyTo": [str(d.get("In-Reply-To")).strip("<> ")] if d.get("In-Reply-To") else None,
            "from": addrs("From"), "to": addrs("To"), "cc": addrs("Cc"),
            "subject": str(d.get("Subject", "")) or None, "sentAt": None,
            "hasAttachment": bool(attachments), "preview": preview,
            "textBody": text_body, "attachments": attachments, "bodyValues": body_values,
        }
        if d.get("Date"):
            try:
                full["sentAt"] = d["Date"].datetime.isoformat()
            except Exception:
                full["sentAt"] = None
        if props:
            return {k: full.get(k) for k in ["id"] + [p for p in props if p != "id"]}
        return full

    def _mailboxes(self, user):
        return list(self.store.mailboxes[user].values())

    async def jmap_call(self, user, name, args, call_id, created_ids):
        from starlette.concurrency import run_in_threadpool
        store = self.store
        acct = f"A{user}"
        roles = {"INBOX": "inbox", "Sent": "sent", "Drafts": "drafts", "Trash": "trash"}
        if args.get("accountId") not in (None, acct):
            return [["error", {"type": "accountNotFound"}, call_id]]
        if name == "Core/echo":
            return [[name, args, call_id]]
        if name == "Mailbox/get":
            lst = []
            for box in self._mailboxes(user):
                exists, _, unseen = box.counts()
                lst.append({"id": self._box_id(box), "name": box.name, "parentId": None,
                            "role": roles.get(box.name), "sortOrder": 0, "totalEmails": exists,
                            "unreadEmails": unseen, "totalThreads": exists, "unreadThreads": unseen,
                            "myRights": {"mayReadItems": True, "mayAddItems": True,
                                         "mayRemoveItems": True, "maySetSeen": True,
                                         "maySetKeywords": True, "mayCreateChild": False,
                                         "mayRename": False, "mayDelete": False, "maySubmit": True},
                            "isSubscribed": True})
            ids = args.get("ids")
            if ids is not None:
                lst = [m for m in lst if m["id"] in ids]
            return [[name, {"accountId": acct, "state": "m1", "list": lst, "notFound": []}, call_id]]
        if name == "Identity/get":
            u = store.users[user]
            return [[name, {"accountId": acct, "state": "i1", "notFound": [],
                            "list": [{"id": f"I{user}", "name": u.display, "email": u.address,
                                      "replyTo": None, "bcc": None, "textSignature": "",
                                      "htmlSignature": "", "mayDelete": False}]}, call_id]]
        if name == "Email/query":
            flt = args.get("filter") or {}
            boxes = self._mailboxes(user)
            if flt.get("inMailbox"):
                boxes = [b for b in boxes if self._box_id(b) == flt["inMailbox"]]
            found = [(m.internal_date, self._email_id(b, m)) for b in boxes for m in b.snapshot()]
            desc = not any(s.get("isAscending") for s in args.get("sort") or [])
            found.sort(reverse=desc)
            ids = [i for _, i in found]
            pos = int(args.get("position") or 0)
            limit = args.get("limit")
            page_ids = ids[pos:pos + limit] if limit else ids[pos:]
            return [[name, {"accountId": acct, "queryState": "q1", "canCalculateChanges": False,
                            "position": pos, "ids": page_ids, "total": len(ids)}, call_id]]
        if name == "Email/get":
            out, missing = [], []
            for eid in args.get("ids") or []:
                box, m = self._find_email(user, eid)
                if m is None:
                    missing.append(eid)
                else:
                    out.append(self._email_object(user, box, m, args.get("properties"),
                                                  bool(args.get("fetchTextBodyValues"))))
            return [[name, {"accountId": acct, "state": "e1", "list": out, "notFound": missing}, call_id]]
        if name == "Email/set":
            return [self._email_set(user, args, call_id, created_ids)]
        if name == "EmailSubmission/set":
            created, not_created, updates = {}, {}, {}
            for cid, sub in (args.get("create") or {}).items():
                eid = sub.get("emailId", "")
                if eid.startswith("#"):
                    eid = created_ids.get(eid[1:], "")
                box, m = self._find_email(user, eid)
                if m is None:
                    not_created[cid] = {"type": "invalidProperties", "properties": ["emailId"]}
                    continue
                d = email.message_from_bytes(m.data)
                env = sub.get("envelope") or {}
                mail_from = (env.get("mailFrom") or {}).get("email") or store.users[user].address
                rcpts = [r["email"] for r in env.get("rcptTo") or []] or [
                    a for _, a in getaddresses(d.get_all("To", []) + d.get_all("Cc", []) + d.get_all("Bcc", []))]
                result = await run_in_threadpool(self.submit, user, mail_from, rcpts, m.data, "jmap")
                sid = f"S{self._token(8)}"
                created[cid] = {"id": sid, "undoStatus": "final", "sendAt": _utc(m.internal_date),
                                "deliveryStatus": None, "threadId": f"T{eid}",
                                "x-smtpReply": result["reply"]}
                created_ids[cid] = sid
                upd = (args.get("onSuccessUpdateEmail") or {}).get(f"#{cid}")
                if upd is not None:
                    updates[eid] = upd
            out = [["EmailSubmission/set", {"accountId": acct, "oldState": "u1", "newState": "u2",
                                            "created": created or None,
                                            "notCreated": not_created or None}, call_id]]
            if updates:
                out.append(self._email_set(user, {"update": updates}, call_id, created_ids))
            return out
        return [["error", {"type": "unknownMethod"}, call_id]]

    def _email_set(self, user, args, call_id, created_ids):
        store = self.store
        acct = f"A{user}"
        by_id = {self._box_id(b): b for b in self._mailboxes(user)}
        created, not_created, updated, destroyed = {}, {}, {}, []
        for cid, obj in (args.get("create") or {}).items():
            try:
                def addrs(key):
                    return [formataddr((a.get("name") or "", a["email"])) for a in obj.get(key) or []]
                values = obj.get("bodyValues") or {}
                text = "".join(values.get(p["partId"], {}).get("value", "")
                               for p in obj.get("textBody") or [])
                atts = []
                for a in obj.get("attachments") or []:
                    data = self.blob_bytes(user, a["blobId"])
                    if data is None:
                        raise KeyError(a["blobId"])
                    atts.append((a.get("name"), a.get("type"), data))
                irt = (obj.get("inReplyTo") or [None])[0]
                data, mid = self.compose(user, addrs("to"), addrs("cc"), obj.get("subject", ""),
                                         text, atts, f"<{irt}>" if irt else None)
                boxes = [by_id[b] for b, on in (obj.get("mailboxIds") or {}).items() if on and b in by_id]
                box = boxes[0] if boxes else store.mailbox(user, "Drafts")
                flags = {"\\Draft"} if (obj.get("keywords") or {}).get("$draft") else set()
                stored = box.append(data, flags=flags)
                eid = self._email_id(box, stored)
                created[cid] = {"id": eid, "blobId": f"B{eid}", "threadId": f"T{eid}", "size": stored.size}
                created_ids[cid] = eid
            except (KeyError, TypeError, ValueError) as e:
                not_created[cid] = {"type": "invalidProperties", "description": str(e)}
        for eid, patch in (args.get("update") or {}).items():
            box, m = self._find_email(user, eid)
            if m is None:
                continue
            target = box
            for path, value in patch.items():
                if path.startswith("keywords/"):
                    flag = {"$seen": "\\Seen", "$flagged": "\\Flagged", "$draft": "\\Draft"}.get(path[9:])
                    if flag:
                        (m.flags.add if value else m.flags.discard)(flag)
                elif path.startswith("mailboxIds/") and value and path[11:] in by_id:
                    target = by_id[path[11:]]
            if target is not box:
                box.remove_uids([m.uid])
                target.append(m.data, flags=m.flags, internal_date=m.internal_date,
                              email_id=m.email_id)
            updated[eid] = None
        for eid in args.get("destroy") or []:
            box, m = self._find_email(user, eid)
            if m is not None:
                box.remove_uids([m.uid])
                destroyed.append(eid)
        return ["Email/set", {"accountId": acct, "oldState": "e1", "newState": "e2",
                              "created": created or None, "notCreated": not_created or None,
                              "updated": updated or None, "destroyed": destroyed or None}, call_id]


def _utc(ts: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

