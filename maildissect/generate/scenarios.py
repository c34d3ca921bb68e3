"""Scenarios: what the lab's people do, composed from a few building blocks.

Building blocks (each one or more real client sessions):

- :func:`submit` -- a user agent submits messages over SMTP (587 + AUTH, or
  STARTTLS, or implicit TLS on 465);
- :func:`imap_full` / :func:`imap_read` -- an IMAP4 session with the full
  command set, or a short read;
- :func:`pop3_full` / :func:`pop3_read` -- a POP3 session;
- :func:`webmail_form` -- a browser session with the Roundcube-style pages;
- :func:`webmail_jmap` -- JMAP calls;
- the MTAs' relay queues, which push accepted mail to the recipient's MX.

Scenarios (``SCENARIOS``): smtp, relay, imap, pop3, webmail, tls, journey, all.
Each takes ``(lab, messages)``; docs/generator.md lists what each one does.
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import quote

from .clients import (LabIMAP4, LabIMAP4_SSL, LabPOP3, LabPOP3_SSL, SmtpClient, http_client,
                      http_session, imap_literals, pop3_body)
from .content import ALICE_DOMAIN, BOB_DOMAIN
from .manifest import file_entry, sha256
from .net import ALICE_PC, BOB_MX, BOB_PC, NAME_OF


def _note(lab, text):
    lab.progress(text)


# --------------------------------------------------------------------------
# SMTP submission


def submit(lab, sender, messages, *, tls=None, mechanisms=("PLAIN", "LOGIN"), per_session=None,
           src_ip=ALICE_PC, server="mail.alice.example", extra_rcpt=None, purpose="submits"):
    """``sender``'s user agent submits ``messages`` (Composed) in one or more sessions.

    ``tls``: None (plain 587), "starttls" (587) or "implicit" (465). Sessions
    alternate the AUTH mechanisms given. ``extra_rcpt`` is added to the first
    message's recipients (e.g. an unknown local user, to show a 550 reply).
    """
    per_session = per_session or max(1, (len(messages) + 1) // 2)
    port, service = (465, "submissions") if tls == "implicit" else (587, "submission")
    groups = [messages[i:i + per_session] for i in range(0, len(messages), per_session)]
    for g, group in enumerate(groups):
        mech = mechanisms[g % len(mechanisms)]
        with SmtpClient(lab, src_ip, server, port, service=service,
                        purpose=f"{sender.user}'s user agent {purpose} ({mech}"
                                f"{', ' + tls if tls else ''})",
                        ehlo_name=NAME_OF.get(src_ip, src_ip),
                        starttls=tls == "starttls", implicit=tls == "implicit",
                        user=sender.user, password=sender.password, mechanism=mech) as c:
            for i, m in enumerate(group):
                rcpts = m.to + m.cc
                if extra_rcpt and g == 0 and i == 0:
                    rcpts = rcpts + [extra_rcpt]
                c.send(sender.address, rcpts, m.data)


def _compose_batch(lab, n, senders, recipients, cc_pool=None):
    out = []
    for i in range(n):
        sender = senders[i % len(senders)]
        to = [recipients[i % len(recipients)]]
        cc = []
        if cc_pool and i % 3 == 1:
            cc = [cc_pool[(i + 1) % len(cc_pool)]]
        out.append(lab.content.compose(sender, to, cc))
    return out


def _by_sender(messages):
    groups: dict = {}
    for m in messages:
        groups.setdefault(m.sender, []).append(m)
    return groups.items()


def preseed(lab, user, n, senders):
    """Make sure ``user``'s INBOX holds at least ``n`` messages (no traffic)."""
    box = lab.stores[user.domain].mailbox(user.user)
    have = len(box.snapshot())
    for i in range(max(0, n - have)):
        m = lab.content.compose(senders[i % len(senders)], [user])
        lab.store_directly(user, m.data, mail_from=m.sender.address)


# --------------------------------------------------------------------------
# IMAP


def _imap_connect(lab, user, src_ip, host, tls, purpose):
    if tls == "implicit":
        imap = LabIMAP4_SSL(lab, src_ip, host, 993, purpose)
    else:
        imap = LabIMAP4(lab, src_ip, host, 143, purpose)
        if tls == "starttls":
            imap.starttls(ssl_context=lab.tls.client)
            imap.session.tls = "starttls"
    return imap


def _imap_login(imap, user):
    try:
        typ, _ = imap.login(user.user, user.password)
        ok = typ == "OK"
    except imap.error:
        ok = False
    imap.session.credential("LOGIN", user.user, user.password, ok)
    if not ok:
        raise RuntimeError(f"IMAP LOGIN failed for {user.user}")


def _record_fetch(lab, imap, data, kind, source, direction="retrieved", complete=True, meta=None):
    ts = time.time()
    for line, literal in imap_literals(data):
        m = re.search(rb"UID (\d+)", line)
        extra = {"uid": int(m.group(1))} if m else {}
        lab.manifest.add_message(imap.session, protocol="imap", direction=direction, kind=kind,
                                 data=literal, ts=ts, source=source, complete=complete,
                                 meta=meta, extra=extra)


def _message_id_of(data: bytes) -> str | None:
    m = re.search(rb"^Message-ID:\s*(<[^>]*>)", data, re.I | re.M)
    return m.group(1).decode() if m else None


def imap_full(lab, user, *, src_ip, host, tls=None, append_to=None, idle_delivery=True):
    """The whole IMAP4rev1 tour: LOGIN, LIST, SELECT, SEARCH, FETCH (headers,
    BODYSTRUCTURE, whole bodies, a partial), APPEND with an attachment, STORE,
    EXPUNGE, a brief IDLE during which a message arrives, LOGOUT."""
    imap = _imap_connect(lab, user, src_ip, host, tls, f"{user.user}'s user agent reads mail over IMAP")
    try:
        imap.capability()
        _imap_login(imap, user)
        imap.list('""', "*")
        imap.select("INBOX")
        imap.search(None, "ALL")
        imap.search(None, "UNSEEN")
        imap.uid("SEARCH", None, "FROM", '"alice"')
        typ, data = imap.fetch("1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
        uids = [int(m) for m in re.findall(rb"UID (\d+)", b" ".join(
            d if isinstance(d, bytes) else d[0] for d in data if d))]
        imap.fetch("1:*", "(BODYSTRUCTURE)")
        for uid in uids:
            typ, data = imap.uid("FETCH", str(uid), "(BODY.PEEK[HEADER])")
            _record_fetch(lab, imap, data, "header", f"UID FETCH {uid} (BODY.PEEK[HEADER])",
                          complete=False, meta={"message_id": _message_id_of(data[0][1]) if data and isinstance(data[0], tuple) else None})
        for uid in uids:
            typ, data = imap.uid("FETCH", str(uid), "(UID BODY[])")
            _record_fetch(lab, imap, data, "body", f"UID FETCH {uid} (UID BODY[])")
        if uids:
            typ, data = imap.fetch("1", "(BODY.PEEK[]<0.200>)")
            full = lab.stores[user.domain].mailbox(user.user).snapshot()[0].data
            _record_fetch(lab, imap, data, "partial", "FETCH 1 (BODY.PEEK[]<0.200>)", complete=False,
                          meta={"message_id": _message_id_of(full)})
            imap.fetch("1", "(BODY.PEEK[1])")
        # File a copy of a message with an attachment (a client saving to Sent).
        to = append_to or lab.alice
        draft = lab.content.appended_draft(user, to)
        ts = time.time()
        typ, resp = imap.append("Sent", "(\\Seen)", None, draft.data)
        lab.manifest.add_message(imap.session, protocol="imap", direction="appended", kind="body",
                                 data=draft.data, ts=ts, source="APPEND Sent (\\Seen)",
                                 extra={"reply": resp[0].decode(errors="replace") if resp else None})
        if uids:
            imap.store("1", "+FLAGS", "(\\Flagged)")
            imap.store(str(len(uids)), "+FLAGS", "(\\Deleted)")
            imap.expunge()
        if idle_delivery:
            _imap_idle(lab, imap, user)
        imap.logout()
    finally:
        _imap_close(imap)


def _imap_idle(lab, imap, user):
    """IDLE (RFC 2177): wait, see a new message announced, DONE, then fetch it."""
    tag = imap._new_tag().decode()
    imap.send(f"{tag} IDLE\r\n".encode())
    cont = imap.readline()
    if not cont.startswith(b"+"):
        raise RuntimeError(f"IDLE refused: {cont!r}")
    time.sleep(0.1)
    sender = lab.alice_users[0] if user.domain == BOB_DOMAIN else lab.bob_users[0]
    m = lab.content.compose(sender, [user], n=None, with_attachment=False)
    lab.store_directly(user, m.data, mail_from=sender.address, how="delivered during IDLE")
    exists = None
    deadline = time.time() + 5
    while time.time() < deadline:
        line = imap.readline()
        hit = re.match(rb"\* (\d+) EXISTS", line)
        if hit:
            exists = int(hit.group(1))
            break
    imap.send(b"DONE\r\n")
    while True:
        line = imap.readline()
        if line.startswith(tag.encode()) or not line:
            break
    if exists:
        typ, data = imap.fetch(str(exists), "(UID BODY[])")
        _record_fetch(lab, imap, data, "body", f"FETCH {exists} (UID BODY[]) after IDLE")


def imap_read(lab, user, *, src_ip, host, tls=None, mark_seen=True, search="ALL"):
    """A short read: LOGIN, SELECT, SEARCH, FETCH each whole message, LOGOUT."""
    imap = _imap_connect(lab, user, src_ip, host, tls,
                         f"{user.user}'s user agent reads mail over IMAP"
                         f"{' (' + tls + ')' if tls else ''}")
    try:
        _imap_login(imap, user)
        imap.select("INBOX")
        typ, data = imap.uid("SEARCH", None, search)
        uids = data[0].split() if data and data[0] else []
        for uid in uids:
            item = "BODY[]" if mark_seen else "BODY.PEEK[]"
            typ, data = imap.uid("FETCH", uid.decode(), f"(UID {item})")
            _record_fetch(lab, imap, data, "body", f"UID FETCH {uid.decode()} (UID {item})")
        imap.logout()
    finally:
        _imap_close(imap)
    return len(uids)


def _imap_close(imap):
    try:
        imap.shutdown()
    except OSError:
        pass
    if imap.session is not None and imap.session.end is None:
        imap.session.end = time.time()


# --------------------------------------------------------------------------
# POP3


def _pop3_connect(lab, user, src_ip, host, tls, purpose):
    if tls == "implicit":
        return LabPOP3_SSL(lab, src_ip, host, 995, purpose)
    return LabPOP3(lab, src_ip, host, 110, purpose)


def _pop3_record(lab, pop, lines, kind, source, complete=True, meta=None):
    data = pop3_body(lines)
    return lab.manifest.add_message(pop.session, protocol="pop3", direction="retrieved", kind=kind,
                                    data=data, ts=time.time(), source=source, complete=complete,
                                    meta=meta)


def _pop3_login(pop, user, wrong_first=False):
    import poplib
    if wrong_first:
        pop.user(user.user)
        wrong = user.password[::-1]
        try:
            pop.pass_(wrong)
            pop.session.credential("USER/PASS", user.user, wrong, True)
        except poplib.error_proto:
            pop.session.credential("USER/PASS", user.user, wrong, False)
    pop.user(user.user)
    pop.pass_(user.password)
    pop.session.credential("USER/PASS", user.user, user.password, True)


def pop3_full(lab, user, *, src_ip, host, tls=None, delete_first=True, wrong_password=True):
    """CAPA, a failed then a good USER/PASS, STAT, LIST, UIDL, TOP, RETR each, DELE, QUIT."""
    pop = _pop3_connect(lab, user, src_ip, host, tls, f"{user.user}'s user agent downloads mail over POP3")
    try:
        pop.capa()
        _pop3_login(pop, user, wrong_first=wrong_password)
        count, _ = pop.stat()
        pop.list()
        pop.uidl()
        if count:
            resp, lines, _ = pop.top(1, 5)
            _pop3_record(lab, pop, lines, "top", "TOP 1 5", complete=False,
                         meta={"message_id": _message_id_of(pop3_body(lines))})
        for i in range(1, count + 1):
            resp, lines, _ = pop.retr(i)
            _pop3_record(lab, pop, lines, "body", f"RETR {i}")
        if count and delete_first:
            pop.dele(1)
        pop.quit()
    finally:
        _pop3_close(pop)


def pop3_read(lab, user, *, src_ip, host, tls=None):
    """USER/PASS, STAT, UIDL, RETR each, QUIT (leaving mail on the server)."""
    pop = _pop3_connect(lab, user, src_ip, host, tls,
                        f"{user.user}'s user agent downloads mail over POP3"
                        f"{' (' + tls + ')' if tls else ''}")
    try:
        _pop3_login(pop, user)
        count, _ = pop.stat()
        pop.uidl()
        for i in range(1, count + 1):
            resp, lines, _ = pop.retr(i)
            _pop3_record(lab, pop, lines, "body", f"RETR {i}")
        pop.quit()
    finally:
        _pop3_close(pop)


def _pop3_close(pop):
    try:
        pop.close()
    except OSError:
        pass
    if pop.session is not None and pop.session.end is None:
        pop.session.end = time.time()


# --------------------------------------------------------------------------
# Webmail (HTML forms)


def _http(lab, client, method, url, action, **kw):
    """One request; records it (and its connection's session) in the manifest."""
    auth = kw.pop("auth", None)
    req = client.build_request(method, url, **kw)
    body = req.read()  # the exact request body (multipart included), before sending
    ts = time.time()
    resp = client.send(req, auth=auth)
    session = http_session(lab, resp)
    if session is not None:
        session.requests.append({
            "ts": _iso(ts), "method": method, "uri": str(req.url.raw_path.decode()),
            "host": req.headers.get("host"), "status": resp.status_code, "mail_action": action,
            "request_content_type": req.headers.get("content-type"), "request_size": len(body),
            "request_sha256": sha256(body) if body else None,
            "response_content_type": resp.headers.get("content-type"),
            "response_size": len(resp.content), "response_sha256": sha256(resp.content)})
    return resp, session, ts


def _iso(ts):
    from .manifest import iso
    return iso(ts)


def _record_upload(lab, session, ts, kind, source, file):
    """An attachment uploaded on its own (Roundcube upload, JMAP blob): the file is the payload."""
    lab.manifest.add_message(session, protocol="http", direction="uploaded", kind=kind, ts=ts,
                             source=source, complete=False,
                             meta={"message_id": None, "attachments": [file]},
                             extra={"size": file["size"], "sha256": file["sha256"]})


def _hidden(html_text, name):
    m = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html_text)
    return m.group(1) if m else ""


def webmail_form(lab, user, *, src_ip, host, https=False, reply_to_uid=None, compose_to=None,
                 compose=True, read=True):
    """Login, inbox, read a message, download it raw, compose with an upload, send, logout."""
    scheme = "https" if https else "http"
    base = f"{scheme}://{host}"
    with http_client(lab, src_ip, base, f"{user.user}'s browser uses webmail", https=https) as c:
        r, _, _ = _http(lab, c, "GET", "/", "login_page")
        token = _hidden(r.text, "_token")
        r, session, _ = _http(lab, c, "POST", "/?_task=login", "login", data={
            "_token": token, "_task": "login", "_action": "login", "_timezone": "Europe/Berlin",
            "_url": "", "_user": user.user, "_pass": user.password})
        if session is not None:
            session.credential("FORM", user.user, user.password, r.status_code == 302)
        if r.status_code != 302:
            raise RuntimeError(f"webmail login failed: {r.status_code}")
        r, _, _ = _http(lab, c, "GET", "/?_task=mail&_mbox=INBOX", "list")
        uids = [int(u) for u in re.findall(r'id="rcmrow(\d+)"', r.text)]
        box = lab.stores[user.domain].mailbox(user.user)
        if read and uids:
            uid = reply_to_uid or uids[0]
            stored = box.by_uid(uid)
            r, session, ts = _http(lab, c, "GET", f"/?_task=mail&_mbox=INBOX&_uid={uid}&_action=show", "read")
            lab.manifest.add_message(session, protocol="http", direction="retrieved", kind="view",
                                     ts=ts, source=f"GET /?_task=mail&_mbox=INBOX&_uid={uid}&_action=show",
                                     meta={"message_id": _message_id_of(stored.data) if stored else None,
                                           "subject": _subject_of(stored.data) if stored else None})
            url = f"/?_task=mail&_uid={uid}&_mbox=INBOX&_action=viewsource&_save=1"
            r, session, ts = _http(lab, c, "GET", url, "download")
            lab.manifest.add_message(session, protocol="http", direction="downloaded", kind="rfc822",
                                     data=r.content, ts=ts, source=f"GET {url}")
        if compose:
            to = compose_to or [lab.alice]
            form = lab.content.webmail_form(user, to, [], subject=None)
            r, _, _ = _http(lab, c, "GET", "/?_task=mail&_action=compose", "compose")
            cid, token = _hidden(r.text, "_id"), _hidden(r.text, "_token")
            files = []
            att = form["attachment"]
            if att is not None:
                url = f"/?_task=mail&_action=upload&_id={cid}&_uploadid=upload1&_from=compose"
                r, session, ts = _http(lab, c, "POST", url, "upload",
                                       files={"_attachments[]": (att.filename, att.data, att.content_type)})
                files.append(file_entry(att.filename, att.content_type, att.data))
                _record_upload(lab, session, ts, "form", f"POST {url}", files[-1])
            fields = {"_token": token, "_task": "mail", "_action": "send", "_id": cid,
                      "_from": user.address, "_to": form["to"], "_cc": form["cc"], "_bcc": "",
                      "_subject": form["subject"], "_message": form["message"], "_is_html": "0"}
            if reply_to_uid:
                fields.update({"_reply_uid": str(reply_to_uid), "_mbox": "INBOX"})
                stored = box.by_uid(reply_to_uid)
                if stored is not None:
                    fields["_subject"] = "Re: " + (_subject_of(stored.data) or "")
            # Roundcube posts the compose form as multipart/form-data.
            multipart = {k: (None, v) for k, v in fields.items()}
            r, session, ts = _http(lab, c, "POST", "/?_task=mail&_action=send", "send", files=multipart)
            sent_mid = _hidden_code(r.text)
            lab.manifest.add_message(session, protocol="http", direction="sent", kind="form", ts=ts,
                                     source="POST /?_task=mail&_action=send",
                                     meta={"message_id": sent_mid, "from": user.address,
                                           "to": [a.strip() for a in fields["_to"].split(",") if a.strip()],
                                           "cc": [a.strip() for a in fields["_cc"].split(",") if a.strip()],
                                           "subject": fields["_subject"], "attachments": files,
                                           "text_sha256": sha256(fields["_message"].encode())})
        r, _, _ = _http(lab, c, "GET", f"/?_task=logout&_token={token}", "logout")


def _subject_of(data: bytes) -> str | None:
    import email
    import email.policy
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return str(msg.get("Subject", "")) or None


def _hidden_code(html_text):
    m = re.search(r'<code id="message-id">([^<]*)</code>', html_text)
    return m.group(1).replace("&lt;", "<").replace("&gt;", ">") if m else None


# --------------------------------------------------------------------------
# JMAP


def webmail_jmap(lab, user, *, src_ip, host, send_to=None):
    """Session resource, Mailbox/get + Email/query + Email/get, a raw download, an
    attachment's blob download, a blob upload, Email/set (draft) + EmailSubmission/set."""
    base = f"http://{host}"
    auth = (user.user, user.password)
    with http_client(lab, src_ip, base, f"{user.user}'s JMAP client") as c:
        r, session, _ = _http(lab, c, "GET", "/.well-known/jmap", "jmap:session", auth=auth)
        r, session, _ = _http(lab, c, "GET", r.headers["location"], "jmap:session", auth=auth)
        if session is not None:
            session.credential("BASIC", user.user, user.password, r.status_code == 200)
        sess = r.json()
        acct = sess["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        using = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]
        api = "/jmap/api/"

        def call(calls, action, extra_using=()):
            body = {"using": using + list(extra_using), "methodCalls": calls}
            r, session, ts = _http(lab, c, "POST", api, action, auth=auth,
                                   content=json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"})
            r.raise_for_status()
            return r.json()["methodResponses"], session, ts

        resp, session, ts = call([
            ["Mailbox/get", {"accountId": acct, "ids": None}, "0"],
            ["Email/query", {"accountId": acct, "filter": {"inMailbox": "mb-inbox"},
                             "sort": [{"property": "receivedAt", "isAscending": False}],
                             "limit": 10}, "1"],
            ["Email/get", {"accountId": acct, "#ids": {"resultOf": "1", "name": "Email/query", "path": "/ids"},
                           "properties": ["id", "blobId", "threadId", "mailboxIds", "keywords", "size",
                                          "receivedAt", "messageId", "from", "to", "subject", "preview",
                                          "hasAttachment", "textBody", "attachments", "bodyValues"],
                           "fetchTextBodyValues": True}, "2"],
        ], "jmap:Email/get")
        emails = next(args["list"] for name, args, _ in resp if name == "Email/get")
        for e in emails:
            lab.manifest.add_message(session, protocol="http", direction="retrieved", kind="jmap", ts=ts,
                                     source="POST /jmap/api/ Email/get",
                                     meta={"message_id": f"<{e['messageId'][0]}>" if e.get("messageId") else None,
                                           "subject": e.get("subject"), "jmap_id": e["id"]})
        if emails:
            e = emails[0]
            url = f"/jmap/download/{acct}/{e['blobId']}/message.eml?accept=message/rfc822"
            r, session, ts = _http(lab, c, "GET", url, "jmap:download", auth=auth)
            lab.manifest.add_message(session, protocol="http", direction="downloaded", kind="rfc822",
                                     data=r.content, ts=ts, source=f"GET {url}")
        owner = next((e for e in emails if e.get("attachments")), None)
        if owner is not None:  # an attachment of a message read, downloaded as its blob
            part = owner["attachments"][0]
            name, ctype = part.get("name") or "attachment", part.get("type") or "application/octet-stream"
            url = f"/jmap/download/{acct}/{part['blobId']}/{quote(name)}?accept={quote(ctype, safe='')}"
            r, session, ts = _http(lab, c, "GET", url, "jmap:download", auth=auth)
            lab.manifest.add_message(session, protocol="http", direction="downloaded", kind="attachment", ts=ts,
                                     source=f"GET {url}",
                                     meta={"message_id": f"<{owner['messageId'][0]}>" if owner.get("messageId")
                                           else None, "subject": owner.get("subject"), "part": part["partId"],
                                           "attachments": [file_entry(name, ctype, r.content)]})
        to = send_to or [lab.alice]
        form = lab.content.webmail_form(user, to, [])
        attachments, files = [], []
        att = form["attachment"]
        if att is not None:
            r, session, ts = _http(lab, c, "POST", f"/jmap/upload/{acct}/", "jmap:upload", auth=auth,
                                   content=att.data, headers={"Content-Type": att.content_type})
            blob = r.json()
            _record_upload(lab, session, ts, "blob", f"POST /jmap/upload/{acct}/",
                           file_entry(att.filename, att.content_type, att.data))
            attachments.append({"blobId": blob["blobId"], "type": att.content_type, "name": att.filename,
                                "disposition": "attachment"})
            files.append(file_entry(att.filename, att.content_type, att.data))
        draft = {"mailboxIds": {"mb-drafts": True}, "keywords": {"$draft": True, "$seen": True},
                 "from": [{"name": user.display, "email": user.address}],
                 "to": [{"name": u.display, "email": u.address} for u in to],
                 "subject": form["subject"],
                 "bodyValues": {"body": {"value": form["message"]}},
                 "textBody": [{"partId": "body", "type": "text/plain"}],
                 "attachments": attachments}
        resp, session, ts = call([
            ["Identity/get", {"accountId": acct}, "0"],
            ["Email/set", {"accountId": acct, "create": {"draft": draft}}, "1"],
            ["EmailSubmission/set", {"accountId": acct,
                                     "create": {"sub": {"identityId": f"I{user.user}", "emailId": "#draft"}},
                                     "onSuccessUpdateEmail": {"#sub": {"mailboxIds/mb-drafts": None,
                                                                       "mailboxIds/mb-sent": True,
                                                                       "keywords/$draft": None}}}, "2"],
        ], "jmap:EmailSubmission/set", extra_using=["urn:ietf:params:jmap:submission"])
        created = next(args for name, args, _ in resp if name == "Email/set")
        eid = ((created.get("created") or {}).get("draft") or {}).get("id")
        sent_mid = None
        if eid:
            stored = _find_jmap(lab, user, eid)
            sent_mid = _message_id_of(stored) if stored else None
        lab.manifest.add_message(session, protocol="http", direction="sent", kind="jmap", ts=ts,
                                 source="POST /jmap/api/ Email/set + EmailSubmission/set",
                                 meta={"message_id": sent_mid, "from": user.address,
                                       "to": [u.address for u in to], "cc": [],
                                       "subject": form["subject"], "attachments": files,
                                       "text_sha256": sha256(form["message"].encode())})


def _find_jmap(lab, user, eid):
    web = lab.webmails[user.domain]
    box, m = web._find_email(user.user, eid)
    return m.data if m else None


# --------------------------------------------------------------------------
# Scenarios


def scenario_smtp(lab, n):
    """Alice's user agent submits n messages on 587 with AUTH (PLAIN, then LOGIN);
    one recipient is an unknown local user (550); the queue relays the rest to Bob's MX."""
    msgs = _compose_batch(lab, n, lab.alice_users, lab.bob_users, cc_pool=lab.alice_users)
    for sender, group in _by_sender(msgs):
        submit(lab, sender, group, extra_rcpt=f"nobody@{ALICE_DOMAIN}")
    lab.wait_queues()


def scenario_relay(lab, n):
    """Bob's MX is down when Alice's server first tries (connection refused); it comes
    back with greylisting (451 on first sight); the third attempt delivers."""
    mx = lab.service(BOB_MX, "smtp")
    alice_mta, bob_mta = lab.mta(ALICE_DOMAIN), lab.mta(BOB_DOMAIN)
    mx.down()
    bob_mta.greylist = True
    try:
        before = sum(len(e["attempts"]) for e in alice_mta.queue.entries())
        msgs = _compose_batch(lab, n, lab.alice_users, lab.bob_users)
        for sender, group in _by_sender(msgs):
            submit(lab, sender, group, per_session=len(group))
        if not alice_mta.queue.wait_attempts(before + len(msgs), 10):
            raise TimeoutError("the relay queue made no first attempt")
        _note(lab, "relay: first attempt refused; Bob's MX comes back (with greylisting)")
    finally:
        mx.up()
    lab.wait_queues()
    bob_mta.greylist = False


def scenario_imap(lab, n):
    """Bob reads his mail over IMAP with the full command set (see imap_full)."""
    for user in lab.bob_users:
        preseed(lab, user, n, lab.alice_users)
    for user in lab.bob_users:
        imap_full(lab, user, src_ip=BOB_PC, host="mail.bob.example", append_to=lab.alice)


def scenario_pop3(lab, n):
    """Alice downloads her mail over POP3 (see pop3_full)."""
    for user in lab.alice_users:
        preseed(lab, user, n, lab.bob_users)
    for user in lab.alice_users:
        pop3_full(lab, user, src_ip=ALICE_PC, host="mail.alice.example")


def scenario_webmail(lab, n):
    """Bob uses webmail (forms, then JMAP); both sends go out through his server's queue."""
    for user in lab.bob_users:
        preseed(lab, user, n, lab.alice_users)
    bob = lab.bob
    webmail_form(lab, bob, src_ip=BOB_PC, host="mail.bob.example", compose_to=[lab.alice])
    webmail_jmap(lab, bob, src_ip=BOB_PC, host="mail.bob.example", send_to=[lab.alice])
    lab.wait_queues()


def scenario_tls(lab, n):
    """STARTTLS on 587 and 143, implicit TLS on 465, 993, 995 and 443 (webmail, which
    ALPN negotiates to HTTP/2); the queue uses STARTTLS towards Bob's MX. With
    --keylog the client key log decrypts it all."""
    alice_mta = lab.mta(ALICE_DOMAIN)
    alice_mta.queue.use_starttls = True
    try:
        msgs = _compose_batch(lab, max(n, 2), lab.alice_users, lab.bob_users)
        half = max(1, len(msgs) // 2)
        submit(lab, lab.alice, msgs[:half], tls="starttls", mechanisms=("PLAIN",), per_session=half)
        submit(lab, lab.alice, msgs[half:], tls="implicit", mechanisms=("LOGIN",), per_session=len(msgs))
        lab.wait_queues()
    finally:
        alice_mta.queue.use_starttls = False
    bob = lab.bob
    imap_read(lab, bob, src_ip=BOB_PC, host="mail.bob.example", tls="starttls", mark_seen=False)
    imap_read(lab, bob, src_ip=BOB_PC, host="mail.bob.example", tls="implicit")
    pop3_read(lab, bob, src_ip=BOB_PC, host="mail.bob.example", tls="implicit")
    webmail_form(lab, bob, src_ip=BOB_PC, host="mail.bob.example", https=True, compose=False)


def scenario_journey(lab, n):
    """The whole story: Alice submits; her server queues, finds Bob's MX down,
    retries and delivers; Bob pulls with IMAP and reads and downloads one in
    webmail, replying from there; the reply is pushed back to Alice's MX and
    she pulls it with POP3."""
    mx = lab.service(BOB_MX, "smtp")
    alice_mta = lab.mta(ALICE_DOMAIN)
    bob = lab.bob
    bob_box = lab.stores[BOB_DOMAIN].mailbox(bob.user)
    first_uid = bob_box.uidnext
    mx.down()
    try:
        before = sum(len(e["attempts"]) for e in alice_mta.queue.entries())
        msgs = [lab.content.compose(lab.alice, [bob]) for _ in range(n)]
        submit(lab, lab.alice, msgs, per_session=n, purpose="submits (journey)")
        if not alice_mta.queue.wait_attempts(before + len(msgs), 10):
            raise TimeoutError("the relay queue made no first attempt")
        _note(lab, "journey: Bob's MX was down; it comes back and the queue retries")
    finally:
        mx.up()
    lab.wait_queues()
    imap_read(lab, bob, src_ip=BOB_PC, host="mail.bob.example", search="UNSEEN")
    webmail_form(lab, bob, src_ip=BOB_PC, host="mail.bob.example", reply_to_uid=first_uid,
                 compose_to=[lab.alice])
    lab.wait_queues()
    pop3_read(lab, lab.alice, src_ip=ALICE_PC, host="mail.alice.example")


def scenario_all(lab, n):
    """Every scenario above, one after the other, in one capture."""
    for name in ("smtp", "relay", "imap", "pop3", "webmail", "tls", "journey"):
        _note(lab, f"all: {name}")
        SCENARIOS[name](lab, n)


SCENARIOS = {
    "smtp": scenario_smtp,
    "relay": scenario_relay,
    "imap": scenario_imap,
    "pop3": scenario_pop3,
    "webmail": scenario_webmail,
    "tls": scenario_tls,
    "journey": scenario_journey,
    "all": scenario_all,
}

#: Scenarios that need the TLS services (465, 993, 995, 443, STARTTLS).
NEEDS_TLS = {"tls", "all"}
