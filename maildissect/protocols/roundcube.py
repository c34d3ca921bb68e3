"""What a Roundcube message page shows, read from its HTML.

Roundcube (1.x) renders a message for ``?_task=mail&_action=show`` (the full
window), ``_action=preview`` (the preview pane's frame) and ``_action=print``
with the same PHP whatever the skin: the skin only wraps it. This module reads,
from the part of the page before the message body (``<div id="messagebody">``),
which the message's own HTML cannot reach (Roundcube prefixes every class and
id of a shown message body with ``v1``):

- the subject: elastic puts it in ``<h2 class="subject">`` after a hidden
  ``<span class="voice">Subject: </span>``; larry in ``<h2 class="subject">``
  (show) or ``<h3 class="subject">`` (preview) inside a ``<span>``; an
  "Open in new window" link may follow it;
- the header table (elastic ``header-headers``, larry ``headers-table``): rows
  ``<td class="header-title">From</td><td class="header from">...``, one per
  header; larry's preview first shows a short table (``preview-shortheaders``,
  which labels the recipient of a Sent message as ``from``) that is skipped.
  Each address is a ``<span class="adr">`` whose compose link carries the full
  ``Name <address>`` (``rcmail.command('compose','...')``); more recipients
  than the table shows are listed in the "N more" link's dialog;
- ``rcmail.set_env({...})``: the message's ``uid`` and ``mailbox``, the
  ``sender``, ``username`` and ``attachments`` (part number -> MIME type);
- the attachment list (``<ul id="attachment-list">``): one ``<li id="attachN">``
  per attachment, N being its IMAP part number, with the file name in
  ``<span class="attachment-name">`` (a name shortened for display keeps the
  full one in the link's title);
- the text of ``<div id="messagebody">`` (for a preview);
- failing all of these, the page ``<title>`` ("Product :: Subject").

Nothing here trusts the page: every value is bounded, and a page that is not
Roundcube's yields an empty :class:`MessagePage`.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from ..model import Attachment, Message
from .forms import load_json
from .imap import decode_mailbox_name

__all__ = ["READ_ACTIONS", "MessagePage", "parse_message_page"]

#: ``_action`` values whose page shows one message.
READ_ACTIONS = frozenset({"show", "preview", "print"})

#: Longest text kept for one header value, subject or file name.
MAX_FIELD = 4096
#: At most this many addresses per header and attachments per page.
MAX_ITEMS = 1000
#: ``rcmail.set_env`` objects longer than this are not parsed.
MAX_ENV = 256 * 1024

_BODY_START = re.compile(r"<div\b[^>]*\bid\s*=\s*[\"']messagebody[\"']", re.I)
_SUBJECT = re.compile(r"<(h[1-6])\b[^>]*\bclass\s*=\s*[\"'][^\"']*\bsubject\b[^\"']*[\"'][^>]*>(.*?)</\1\s*>",
                      re.I | re.S)
_VOICE = re.compile(r"<span\b[^>]*\bclass\s*=\s*[\"'][^\"']*\bvoice\b[^\"']*[\"'][^>]*>.*?</span\s*>", re.I | re.S)
_ANCHOR = re.compile(r"<a\b[^>]*>.*?</a\s*>", re.I | re.S)
_TAG = re.compile(r"(?s)<[^>]*>")
_SHORT_TABLE = re.compile(r"<table\b[^>]*\bid\s*=\s*[\"']preview-shortheaders[\"'][^>]*>.*?</table\s*>",
                          re.I | re.S)
_HEADER_ROW = re.compile(
    r"<td\b[^>]*\bclass\s*=\s*[\"']header-title[\"'][^>]*>(.*?)</td\s*>\s*"
    r"<td\b[^>]*\bclass\s*=\s*[\"']header\s+([a-z0-9_-]+)[\"'][^>]*>(.*?)</td\s*>", re.I | re.S)
_ADR = re.compile(r"<span\b[^>]*\bclass\s*=\s*[\"']adr[\"'][^>]*>(.*?)</span\s*>(?=\s*(?:,|$|<a\b[^>]*morelink|"
                  r"<span\b[^>]*\bclass\s*=\s*[\"']adr))", re.I | re.S)
_COMPOSE = re.compile(r"""command\(\s*'compose'\s*,\s*'((?:[^'\\]|\\.)*)'""", re.S)
_ATTR = r"\b%s\s*=\s*(?:\"([^\"]*)\"|'([^']*)')"
_MORE = re.compile(r"<a\b[^>]*\bclass\s*=\s*[\"']morelink[\"'][^>]*>", re.I)
_DIALOG = re.compile(r"""simple_dialog\(\s*'((?:[^'\\]|\\.)*)'""", re.S)
_ATT_LIST = re.compile(r"<ul\b[^>]*\bid\s*=\s*[\"']attachment-list[\"'][^>]*>(.*?)</ul\s*>", re.I | re.S)
_ATT_ITEM = re.compile(r"<li\b([^>]*)>(.*?)</li\s*>", re.I | re.S)
_ATT_NAME = re.compile(r"<span\b[^>]*\bclass\s*=\s*[\"']attachment-name[\"'][^>]*>(.*?)</span\s*>", re.I | re.S)
_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title\s*>", re.I | re.S)
_SET_ENV = re.compile(r"rcmail\.set_env\(")
_SKIN = re.compile(r"\bskins/([a-z0-9_-]{1,40})/", re.I)
_SCRIPT = re.compile(r"(?is)<(script|style)\b.*?</\1\s*>")


@dataclass(slots=True)
class MessagePage:
    """What one Roundcube message page shows (every field optional)."""

    skin: str | None = None
    subject: str | None = None
    subject_from_title: bool = False  # only the <title> named it
    headers: dict[str, list[str]] = field(default_factory=dict)  # "from", "to", "cc"... -> address strings
    date: str | None = None  # as displayed ("2024-03-04 10:30", "Today 18:09")
    uid: int | None = None
    mailbox: str | None = None
    username: str | None = None
    sender: str | None = None  # env.sender: "Name <address>"
    attachments: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # (part, name, type)
    text: str | None = None
    roundcube: bool = False  # the page carries Roundcube's markup or environment

    def found(self) -> bool:
        """The page named the message: a subject from its markup, a header or an attachment."""
        return bool((self.subject and not self.subject_from_title) or self.headers or self.attachments)


def _text(fragment: str) -> str:
    """Visible text of an HTML fragment, whitespace collapsed, bounded."""
    return " ".join(html.unescape(_TAG.sub(" ", fragment)).split())[:MAX_FIELD]


def _attr(tag: str, name: str) -> str | None:
    m = re.search(_ATTR % re.escape(name), tag, re.I)
    if m is None:
        return None
    return html.unescape(m.group(1) if m.group(1) is not None else m.group(2))


def _js_unquote(s: str) -> str:
    """A single-quoted JavaScript string literal's content (Roundcube's rcube::JQ escapes)."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(1), m.group(1)), s)


def _address(span: str) -> str | None:
    """One ``<span class="adr">``: ``Name <address>`` from the compose link, else the title
    (the address) with the link text (the name), else the text as shown."""
    link = re.search(r"<a\b[^>]*>", span, re.I)
    if link:
        onclick = _attr(link.group(0), "onclick")
        m = _COMPOSE.search(onclick or "")
        if m:
            value = _js_unquote(m.group(1)).strip()
            if value:
                return value[:MAX_FIELD]
        title = _attr(link.group(0), "title")
        name = _text(_ANCHOR.search(span).group(0)) if _ANCHOR.search(span) else ""
        if title and "@" in title:
            return (f"{name} <{title}>" if name and name != title else title)[:MAX_FIELD]
        href = _attr(link.group(0), "href") or ""
        if href.lower().startswith("mailto:") and "@" in href:
            addr = href[7:]
            return (f"{name} <{addr}>" if name and name != addr else addr)[:MAX_FIELD]
    span_title = re.match(r"\s*<span\b([^>]*)>", span, re.I)
    text = _text(span)
    if span_title:  # a non-linked address: <span title="address" class="rcmContactAddress">name</span>
        title = _attr(span_title.group(0), "title")
        if title and "@" in title:
            return (f"{text} <{title}>" if text and text != title else title)[:MAX_FIELD]
    return text or None


def _addresses(value: str) -> list[str]:
    """The addresses one header cell shows; all of them when a "N more" link lists the rest."""
    more = _MORE.search(value)
    if more:
        m = _DIALOG.search(_attr(more.group(0), "onclick") or "")
        if m:  # the dialog holds every address of the header, as HTML
            value = _js_unquote(m.group(1)) + ", "
    out = []
    for m in _ADR.finditer(value + ","):
        a = _address(m.group(1))
        if a:
            out.append(a)
            if len(out) >= MAX_ITEMS:
                break
    if not out:
        text = _text(value)
        if text:
            out.append(text)
    return out


def _env(page: str, max_nesting: int) -> dict:
    """Every ``rcmail.set_env({...})`` object of the page, merged."""
    env: dict = {}
    for m in _SET_ENV.finditer(page):
        start = m.end()
        # Roundcube writes one call per line, and JSON strings cannot hold a raw newline
        end = page.find("\n", start, start + MAX_ENV)
        chunk = page[start:end if end >= 0 else start + MAX_ENV].rstrip()
        if not chunk.endswith(");"):
            continue
        value, _ = load_json(chunk[:-2].encode("utf-8", "surrogatepass"), max_nesting)
        if isinstance(value, dict):
            env.update(value)
    return env


_DIV = re.compile(r"<(/?)div\b", re.I)


def _element(page: str, start: int, limit: int) -> str:
    """The ``<div>`` element opening at ``start``, up to its matching ``</div>`` (at most
    ``limit`` characters)."""
    chunk = page[start:start + limit]
    depth = 0
    for m in _DIV.finditer(chunk):
        depth += -1 if m.group(1) else 1
        if depth == 0:
            return chunk[:m.start()]
    return chunk


def _int(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    return None


def parse_message_page(page: str, max_nesting: int = 100) -> MessagePage:
    """Read a Roundcube message page (see the module docstring)."""
    out = MessagePage()
    body = _BODY_START.search(page)
    head = page[:body.start()] if body else page
    env = _env(head, max_nesting)
    skin = env.get("skin") if isinstance(env.get("skin"), str) else None
    if skin is None:
        m = _SKIN.search(head[:65536])
        skin = m.group(1) if m else None
    out.skin = skin[:40].lower() if skin else None
    out.roundcube = bool(env) or bool(_HEADER_ROW.search(head))
    out.uid = _int(env.get("uid"))
    for key, attr in (("mailbox", "mailbox"), ("username", "username"), ("sender", "sender")):
        if isinstance(env.get(key), str) and env[key]:
            setattr(out, attr, env[key][:MAX_FIELD])
    # subject
    m = _SUBJECT.search(head)
    if m:
        subject = _text(_ANCHOR.sub(" ", _VOICE.sub(" ", m.group(2))))
        if subject:
            out.subject = subject
    # header rows (the short preview table first shows the wrong label: skipped)
    rows = _SHORT_TABLE.sub(" ", head)
    for m in _HEADER_ROW.finditer(rows):
        key = m.group(2).lower()
        if key == "subject":
            if not out.subject:
                out.subject = _text(m.group(3)) or None
            continue
        if key == "date":
            out.date = out.date or _text(m.group(3)) or None
            continue
        if key in out.headers:
            continue
        values = _addresses(m.group(3))
        if values:
            out.headers[key] = values
        if len(out.headers) >= 64:
            break
    # attachments
    types = env.get("attachments") if isinstance(env.get("attachments"), dict) else {}
    lst = _ATT_LIST.search(head) or _ATT_LIST.search(page[:len(head) + (1 << 20)])
    if lst:
        for item in _ATT_ITEM.finditer(lst.group(1)):
            ident = _attr("<li" + item.group(1) + ">", "id") or ""
            part = ident[6:] if ident.startswith("attach") else ""
            link = re.search(r"<a\b[^>]*>", item.group(2), re.I)
            name = _attr(link.group(0), "title") if link else None
            if not name:
                nm = _ATT_NAME.search(item.group(2))
                name = _text(nm.group(1)) if nm else _text(item.group(2))
            ctype = types.get(part) if isinstance(types.get(part), str) else None
            out.attachments.append((part[:64], (name or "")[:MAX_FIELD] or None,
                                    ctype.lower()[:255] if ctype else None))
            if len(out.attachments) >= MAX_ITEMS:
                break
    # text of the message body
    if body:
        chunk = _element(page, body.start(), 65536)
        chunk = re.split(r"<p\b[^>]*class\s*=\s*[\"']image-attachment", chunk, maxsplit=1, flags=re.I)[0]
        text = " ".join(html.unescape(_TAG.sub(" ", _SCRIPT.sub(" ", chunk))).split())
        out.text = text or None
    # the last resort: the page title, "Product :: Subject"
    if not out.subject:
        m = _TITLE.search(head[:65536])
        if m:
            title = _text(m.group(1))
            if " :: " in title:
                title = title.split(" :: ", 1)[1]
            if title:
                out.subject = title
                out.subject_from_title = True
    return out


# ---------------------------------------------------------------------------------------------
# Roundcube's requests, one exchange at a time


#: ``_action`` -> mail_action.
ACTIONS = {
    "login": "login", "logout": "logout", "list": "list", "search": "list", "refresh": "list",
    "check-recent": "list", "getunread": "list", "show": "read", "preview": "read", "print": "read",
    "compose": "compose", "send": "send", "upload": "upload", "get": "download",
    "download": "download", "viewsource": "read", "remove-attachment": "compose",
    "delete": "delete", "move": "move", "mark": "mark", "folders": "list",
}


def _query_int(value: str | None) -> int | None:
    if value and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    return None


class Roundcube:
    """Roundcube's actions for one HTTP session (``ctx`` is its
    :class:`~maildissect.protocols.webmail.WebmailContext`): login, list,
    compose uploads and sends, message pages (``kind="view"``), attachment
    downloads (``kind="attachment"``) and raw messages (``viewsource``)."""

    def __init__(self, ctx):
        from .webmail import _Bounded
        self.ctx = ctx
        self.pages = _Bounded()  # (mailbox, uid) -> the view Message its page made

    # -- what a request names ------------------------------------------------------------------
    @staticmethod
    def reference(ex) -> tuple[str | None, int | None, str | None]:
        """``(mailbox, uid, part)`` a Roundcube mail request names (``_mbox``, ``_uid``, ``_part``)."""
        if (ex.field("_task") or "").lower() not in ("mail", "") or \
                (ex.field("_action") or "").lower() not in ACTIONS:
            return None, None, None
        uid = _query_int(ex.field("_uid"))
        if uid is None:
            return None, None, None
        # _mbox is the IMAP name (modified UTF-7), as the IMAP dissector decodes it
        mbox = decode_mailbox_name((ex.field("_mbox") or "INBOX")[:MAX_FIELD]) or "INBOX"
        part = ex.field("_part") if (ex.field("_action") or "").lower() == "get" else None
        return mbox, uid, (part[:64] if part else None)

    @staticmethod
    def is_file_request(request, query: dict) -> bool:
        """A request whose answer is a message's file (attachment or raw message): hashed whole."""
        act = (query.get("_action") or "").lower()
        return request.method == "GET" and (act == "get" or (act == "viewsource" and bool(query.get("_save"))))

    # -- recognition -----------------------------------------------------------------------------
    def recognise(self, ex, out: list, task: str, act: str) -> str | None:
        action = ACTIONS.get(act)
        if act == "viewsource" and ex.field("_save"):
            action = "download"
        if not act:
            # no action: the task's start page (mail -> the message list)
            action = {"login": "login", "logout": "logout", "mail": "list",
                      "addressbook": "contacts", "settings": "settings"}.get(task)
        if act == "upload" and ex.method == "POST":
            self._upload(ex, out)
            return "upload"
        if act == "send" and ex.method == "POST":
            return self._send(ex, out)
        if ex.method == "GET" and task in ("mail", ""):
            if act in READ_ACTIONS:
                self._view(ex, out)
            elif act == "get":
                self._download(ex, out)
        return action

    def _upload(self, ex, out: list) -> None:
        ctx = self.ctx
        files = ex.files()
        if not files:
            return
        compose_id = ex.field("_id")
        atts = [ctx._keep_files(f, ctx._attachment(f)) for f in files]
        if compose_id:
            known = ctx.compose.get(compose_id, [])
            ctx.compose.remember(compose_id, known + atts)
        msg = ctx._new(ex, "uploaded", "form", ctx._source(ex))
        msg.attachments = atts
        msg.size = sum(a.size for a in atts)
        if len(atts) == 1:
            msg.sha256 = atts[0].sha256  # the file is the payload
        out.append(msg)

    def _send(self, ex, out: list) -> str:
        from .webmail import _addresses
        ctx = self.ctx
        compose_id = ex.field("_id")
        draft = ex.field("_draft") in ("1", "true")
        msg = ctx._new(ex, "appended" if draft else "sent", "form", ctx._source(ex))
        sender = ex.field("_from") or ""  # an identity number, or an address
        if "@" in sender:
            msg.from_ = (_addresses(sender) or [sender])[0]
        elif ctx.user and "@" in ctx.user:
            msg.from_ = ctx.user
        elif ctx.session.auth_user and "@" in ctx.session.auth_user:
            msg.from_ = ctx.session.auth_user
        ctx._fill_form_message(ex, msg, to=ex.field("_to"), cc=ex.field("_cc"), bcc=ex.field("_bcc"),
                               subject=ex.field("_subject"), body=ex.field("_message"),
                               is_html=ex.field("_is_html") in ("1", "true"), message_id=None)
        known = ctx.compose.pop(compose_id, []) if compose_id else []
        inline = [ctx._keep_files(f, ctx._attachment(f)) for f in ex.files()]
        msg.attachments = list(known) + inline
        ctx._verdict(ex, msg)
        out.append(msg)
        return "draft" if draft else "send"

    # -- reading ---------------------------------------------------------------------------------
    def _view(self, ex, out: list) -> None:
        """A message page: a ``retrieved`` message of kind ``view`` filled from the page."""
        from .webmail import _addresses, _preview
        ctx = self.ctx
        resp = ex.response
        if resp is None or resp.status is None or not 200 <= resp.status < 300 or resp.body is None \
                or resp.body.content_type not in ("text/html", "application/xhtml+xml"):
            return
        mailbox, uid, _ = self.reference(ex)
        page = parse_message_page(ex.response_text(1 << 20), ctx.limits.max_nesting) \
            if resp.body.data is not None else MessagePage()
        if not (page.roundcube or page.found()):
            # not Roundcube's markup: header cells read generically, else the title
            before = len(out)
            ctx._html_view(ex, out)
            for r in out[before:]:
                r.mailbox, r.uid, r.filled_from = mailbox, uid, "page"
                if uid is not None:
                    self.pages.remember((mailbox, uid), r)
            if len(out) > before or not page.subject:
                return
        msg = ctx._new(ex, "retrieved", "view", ctx._source(ex), heuristic=page.subject_from_title
                       and not page.found())
        msg.mailbox = mailbox or page.mailbox
        msg.uid = uid if uid is not None else page.uid
        heads = page.headers
        sender = heads.get("from") or ([page.sender] if page.sender else [])
        msg.from_ = (_addresses(sender[0]) or [None])[0] if sender else None
        msg.to = [a for v in heads.get("to", []) for a in _addresses(v)]
        msg.cc = [a for v in heads.get("cc", []) for a in _addresses(v)]
        msg.bcc = [a for v in heads.get("bcc", []) for a in _addresses(v)]
        reply_to = heads.get("replyto") or heads.get("mailreplyto")
        msg.reply_to = (_addresses(reply_to[0]) or [None])[0] if reply_to else None
        msg.subject = page.subject
        msg.attachments = [Attachment(filename=name, content_type=ctype or "application/octet-stream", size=0,
                                      md5="", sha1="", sha256="", disposition="attachment", part=part)
                           for part, name, ctype in page.attachments]
        msg.text_preview = _preview(page.text, ctx.limits.preview_chars)
        msg.complete = resp.complete
        if page.found() or page.subject:
            msg.filled_from = "page"
        if msg.uid is not None:
            self.pages.remember((msg.mailbox, msg.uid), msg)
        out.append(msg)

    def _download(self, ex, out: list) -> None:
        """``_action=get``: one part of a message (an attachment), ``downloaded`` as kind
        ``attachment``; the message's fields come from its page seen earlier in the session."""
        ctx = self.ctx
        resp = ex.response
        body = resp.body if resp is not None else None
        if body is None or resp.status is None or not 200 <= resp.status < 300 or not body.size \
                or body.content_type in ("text/html", "application/xhtml+xml") or ex.field("_thumb"):
            return  # an error page, the frame around an attachment, or a thumbnail (not the file)
        mailbox, uid, part = self.reference(ex)
        if uid is None or not part:
            return
        seen = self.pages.get((mailbox, uid))
        listed = next((a for a in seen.attachments if a.part == part), None) if seen is not None else None
        msg = ctx.attachment_download(ex, body, part, listed)
        msg.mailbox, msg.uid = mailbox, uid
        if seen is not None:
            for f in ("from_", "to", "cc", "bcc", "reply_to", "subject", "message_id"):
                setattr(msg, f, getattr(seen, f))
            msg.filled_from = "page"
        out.append(msg)

    def tag_raw(self, ex, out: list) -> None:
        """``viewsource``: the raw message made by the caller names its mailbox and UID."""
        if (ex.field("_action") or "").lower() != "viewsource":
            return
        mailbox, uid, _ = self.reference(ex)
        for r in out:
            if type(r) is Message and r.kind == "rfc822" and r.direction == "downloaded":
                r.mailbox, r.uid = mailbox, uid
