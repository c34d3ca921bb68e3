"""The lab's IMAP4 server: Twisted's ``twisted.mail.imap4`` over the shared store.

The adapters (:class:`ImapAccount`, :class:`ImapMailbox`, :class:`ImapMessage`,
:class:`ImapPart`) serve the :mod:`.store`'s mailboxes with exact byte ranges
(:class:`RawPart`); :class:`LabIMAP4Server` corrects where Twisted's server
deviates from the RFCs in ways a capture would show (each correction says why).
"""

from __future__ import annotations

import email.parser
import email.policy
import io
from datetime import datetime, timezone
from email.utils import format_datetime

from twisted.internet import protocol
from twisted.mail import imap4
from twisted.mail.interfaces import (IAccountIMAP, ICloseableMailboxIMAP, IMailboxIMAP, IMessageIMAP,
                                     IMessageIMAPFile, IMessageIMAPPart, INamespacePresenter)
from zope.interface import implementer

__all__ = ["ImapAccount", "LabIMAP4Server", "RawPart", "SYSTEM_FLAGS", "imap_factory"]

# --------------------------------------------------------------------------
# MIME structure with exact byte ranges (what an IMAP server serves)


class RawPart:
    """A MIME entity split into exact header and body bytes, with its children."""

    def __init__(self, raw: bytes):
        self.raw = raw
        i = raw.find(b"\r\n\r\n")
        if raw.startswith(b"\r\n"):
            self.header_bytes, self.body = b"\r\n", raw[2:]
        elif i < 0:
            self.header_bytes, self.body = raw, b""
        else:
            self.header_bytes, self.body = raw[:i + 4], raw[i + 4:]
        self.headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            self.header_bytes)
        self.children: list[RawPart] = []
        if self.headers.get_content_maintype() == "multipart":
            boundary = self.headers.get_boundary()
            if boundary:
                self.children = [RawPart(p) for p in _split_multipart(self.body, boundary.encode())]

    def header_dict(self, negate: bool, names) -> dict:
        wanted = {n.lower() if isinstance(n, str) else n.decode().lower() for n in names}
        out = {}
        for name, value in self.headers.items():
            key = name.lower()
            if (key in wanted) != negate or (negate and not wanted):
                if key not in out:
                    out[key] = value
        return out


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """Body parts between ``--boundary`` lines (RFC 2046: the CRLF before a delimiter is its own)."""
    delim = b"--" + boundary
    parts, pos, start = [], 0, None
    while True:
        j = body.find(delim, pos)
        if j < 0:
            break
        if j != 0 and body[j - 2:j] != b"\r\n":
            pos = j + len(delim)
            continue
        if start is not None:
            parts.append(body[start:max(j - 2, start)])
        after = j + len(delim)
        if body[after:after + 2] == b"--":
            return parts
        eol = body.find(b"\r\n", after)
        if eol < 0:
            break
        start = pos = eol + 2
    return parts


# --------------------------------------------------------------------------
# Twisted's IMAP4 server over the store


@implementer(IMessageIMAPPart)
class ImapPart:
    def __init__(self, part: RawPart):
        self.part = part

    def getHeaders(self, negate, *names):
        return self.part.header_dict(negate, names)

    def getBodyFile(self):
        return io.BytesIO(self.part.body)

    def getSize(self):
        return len(self.part.body)

    def isMultipart(self):
        return bool(self.part.children)

    def getSubPart(self, part):
        return ImapPart(self.part.children[part])  # IndexError ends Twisted's walk


@implementer(IMessageIMAP, IMessageIMAPFile)
class ImapMessage(ImapPart):
    def __init__(self, stored):
        super().__init__(RawPart(stored.data))
        self.stored = stored

    def getSize(self):
        return len(self.stored.data)

    def getUID(self):
        return self.stored.uid

    def getFlags(self):
        return sorted(self.stored.flags)

    def getInternalDate(self):
        return format_datetime(datetime.fromtimestamp(self.stored.internal_date, timezone.utc))

    def open(self):
        return io.BytesIO(self.stored.data)


@implementer(IMailboxIMAP, ICloseableMailboxIMAP)
class ImapMailbox:
    def __init__(self, box, readwrite):
        from twisted.internet import reactor
        self.box = box
        self.rw = readwrite
        self.listeners = []
        self._reactor = reactor
        with box.store.lock:
            msgs = box.messages
            self.recent = sum(m.recent for m in msgs)
            if readwrite:
                for m in msgs:
                    m.recent = False
            box.listeners.append(self._on_new)

    def _on_new(self, exists):
        def notify():
            for listener in list(self.listeners):
                listener.newMessages(exists, None)
        self._reactor.callFromThread(notify)

    def close(self):
        with self.box.store.lock:
            if self._on_new in self.box.listeners:
                self.box.listeners.remove(self._on_new)

    def getFlags(self):
        return list(SYSTEM_FLAGS)

    def getHierarchicalDelimiter(self):
        return "/"

    def getUIDValidity(self):
        return self.box.uidvalidity

    def getUIDNext(self):
        return self.box.uidnext

    def getUID(self, message):
        return self.box.snapshot()[message - 1].uid

    def getMessageCount(self):
        return self.box.counts()[0]

    def getRecentCount(self):
        return self.recent

    def getUnseenCount(self):
        return self.box.counts()[2]

    def isWriteable(self):
        return bool(self.rw)

    def destroy(self):
        raise imap4.MailboxException("Permission denied")

    def requestStatus(self, names):
        return imap4.statusRequestHelper(self, names)

    def addListener(self, listener):
        self.listeners.append(listener)

    def removeListener(self, listener):
        if listener in self.listeners:
            self.listeners.remove(listener)

    def addMessage(self, message, flags=(), date=None):
        from twisted.internet import defer
        data = message.read()
        stored = self.box.append(data, flags=flags)
        return defer.succeed(stored.uid)

    def expunge(self):
        return self.box.expunge()

    def _select(self, messages, uid):
        msgs = self.box.snapshot()
        out = []
        if not msgs:
            return out
        if uid:
            messages.last = msgs[-1].uid
            wanted = set(messages)
            out = [(seq, m) for seq, m in enumerate(msgs, 1) if m.uid in wanted]
        else:
            messages.last = len(msgs)
            for seq in messages:
                if 1 <= seq <= len(msgs):
                    out.append((seq, msgs[seq - 1]))
        return out

    def fetch(self, messages, uid):
        return [(seq, ImapMessage(m)) for seq, m in self._select(messages, uid)]

    def store(self, messages, flags, mode, uid):
        result = {}
        with self.box.store.lock:
            for seq, m in self._select(messages, uid):
                if mode == 0:
                    m.flags = set(flags)
                elif mode > 0:
                    m.flags |= set(flags)
                else:
                    m.flags -= set(flags)
                result[seq] = sorted(m.flags)
        return result


@implementer(IAccountIMAP, INamespacePresenter)
class ImapAccount:
    def __init__(self, store, user):
        self.store = store
        self.user = user
        self.subscriptions = set(store.mailboxes[user])
        self.opened = []

    def _norm(self, name):
        if isinstance(name, bytes):
            name = name.decode("imap4-utf-7")
        return "INBOX" if name.upper() == "INBOX" else name

    def addMailbox(self, name, mbox=None):
        self.store.create(self.user, self._norm(name))
        return True

    def create(self, pathspec):
        self.store.create(self.user, self._norm(pathspec).rstrip("/"))
        return True

    def select(self, name, rw=True):
        box = self.store.mailbox(self.user, self._norm(name))
        if box is None:
            return None
        mbox = ImapMailbox(box, rw)
        self.opened.append(mbox)
        return mbox

    def delete(self, name):
        raise imap4.MailboxException("Permission denied")

    def rename(self, oldname, newname):
        raise imap4.MailboxException("Permission denied")

    def isSubscribed(self, name):
        return self._norm(name) in self.subscriptions

    def subscribe(self, name):
        self.subscriptions.add(self._norm(name))

    def unsubscribe(self, name):
        self.subscriptions.discard(self._norm(name))

    def listMailboxes(self, ref, wildcard):
        pattern = imap4.wildcardToRegexp(self._norm(ref) + self._norm(wildcard), "/")
        out = []
        for name in self.store.mailboxes[self.user]:
            if pattern.match(name):
                out.append((name, ImapMailbox(self.store.mailbox(self.user, name), False)))
        return out

    def logout(self):
        for mbox in self.opened:
            mbox.close()

    def getPersonalNamespaces(self):
        return [[b"", b"/"]]

    def getSharedNamespaces(self):
        return None

    def getOtherNamespaces(self):
        return None

    def getUserNamespaces(self):
        return None


class LabIMAP4Server(imap4.IMAP4Server):
    """Twisted's IMAP4 server with three RFC 3501 corrections (see each method)."""

    def __init__(self, hostname, *a, **kw):
        super().__init__(*a, **kw)
        self.IDENT = f"{hostname} IMAP4rev1 Twisted server ready".encode()

    def capabilities(self):
        # Twisted refuses LOGIN before STARTTLS whenever it can offer TLS.
        # The lab allows plain-text LOGIN on 143 (Dovecot's
        # disable_plaintext_auth=no), so that captures can show it.
        cap = super().capabilities()
        cap.pop(b"LOGINDISABLED", None)
        return cap

    def spew_body(self, part, id, msg, _w=None, _f=None):
        # Twisted answers BODY[]<0.100> with the whole message under a
        # "BODY[]<0.100>" label and sends BODY[HEADER] without its blank
        # line and with repeated fields merged. RFC 3501 6.4.5/7.4.2 want
        # the origin-only label "BODY[]<0>" with exactly the requested
        # octets, and the header exactly as stored; produce those here and
        # leave everything else to Twisted.
        if _w is None:
            _w = self.transport.write
        simple_header = part.header is not None and not part.header.fields
        if part.partialBegin is None and not simple_header:
            return super().spew_body(part, id, msg, _w, _f)
        target = msg
        for p in part.part:
            if target.isMultipart():
                target = target.getSubPart(p)
            elif p > 0:
                raise TypeError("Requested subpart of non-multipart message")
        raw = target.part
        if part.header is not None:
            data = raw.header_bytes
        elif part.text:
            data = raw.body
        elif part.mime:
            data = raw.header_bytes
        elif part.part:
            data = raw.body
        else:
            data = raw.raw
        begin, length = part.partialBegin, part.partialLength
        saved = part.partialBegin
        part.partialBegin = None
        label = part.getBytes()
        part.partialBegin = saved
        if begin is not None:
            data = data[begin:begin + length]
            label += b"<%d>" % begin
        if not part.peek and hasattr(msg, "stored"):
            msg.stored.flags.add("\\Seen")
        _w(label + b" {%d}\r\n" % len(data))
        _w(data)

    # Twisted's header SEARCH keys compare the (bytes) search string with
    # (str) header values and fail with TypeError; these compare text,
    # matching RFC 2047 encoded words after decoding, as RFC 3501 6.4.4 asks.
    @staticmethod
    def _text(value):
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    def _header_match(self, name, needle, msg):
        from email.header import decode_header, make_header
        value = msg.getHeaders(False, name).get(name, "")
        try:
            decoded = str(make_header(decode_header(value)))
        except Exception:
            decoded = value
        needle = self._text(needle).lower()
        return needle in value.lower() or needle in decoded.lower()

    def search_FROM(self, query, id, msg):
        return self._header_match("from", query.pop(0), msg)

    def search_TO(self, query, id, msg):
        return self._header_match("to", query.pop(0), msg)

    def search_CC(self, query, id, msg):
        return self._header_match("cc", query.pop(0), msg)

    def search_BCC(self, query, id, msg):
        return self._header_match("bcc", query.pop(0), msg)

    def search_SUBJECT(self, query, id, msg):
        return self._header_match("subject", query.pop(0), msg)

    def search_HEADER(self, query, id, msg):
        name = self._text(query.pop(0)).lower()
        return self._header_match(name, query.pop(0), msg)

    def _cbAppendGotMailbox(self, mbox, tag, flags, date, message):
        # Twisted reports "* N EXISTS" with the count of the mailbox
        # appended to, even when another one (or none) is selected; the
        # untagged EXISTS must describe the selected mailbox only.
        if not mbox:
            self.sendNegativeResponse(tag, "[TRYCREATE] No such mailbox")
            return
        decoded = [f.decode() if isinstance(f, bytes) else f for f in flags]
        d = mbox.addMessage(message, decoded, date)

        def done(_):
            if self.mbox is not None and getattr(self.mbox, "box", None) is mbox.box:
                self.sendUntaggedResponse(b"%d EXISTS" % (self.mbox.getMessageCount(),))
            self.sendPositiveResponse(tag, b"[APPENDUID %d %d] APPEND completed"
                                      % (mbox.getUIDValidity(), _ or 0))

        def failed(f):
            self.sendBadResponse(tag, b"APPEND failed: " + str(f.value).encode())

        d.addCallbacks(done, failed)


SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


def imap_factory(lab, hostname, portal, tls_options=None):
    """A Twisted server factory for IMAP4 (STARTTLS offered when ``tls_options``)."""
    class Factory(protocol.ServerFactory):
        noisy = False

        def buildProtocol(self, addr):
            p = LabIMAP4Server(hostname, contextFactory=tls_options)
            p.portal = portal
            p.factory = self
            lab.track_twisted(p)
            return p

    return Factory()
