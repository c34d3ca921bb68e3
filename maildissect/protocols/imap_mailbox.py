"""IMAP mailbox events: what an exchange reveals about the mailboxes.

SELECT and EXAMINE, EXISTS and EXPUNGE (sequence numbers mapped to UIDs),
VANISHED, LIST/LSUB, STATUS, STORE, COPY/MOVE, APPEND, SEARCH, CREATE,
DELETE, RENAME... become a time-ordered stream of
:class:`~maildissect.model.MailboxEvent`. :class:`MailboxEvents` is a part of
:class:`~.imap.ImapDissector` (whose state it reads and updates: user,
selected mailbox, UIDVALIDITY, the UID of each sequence number).
"""

from __future__ import annotations

import json

from ..model import MailboxEvent
from .imap_grammar import SELECT_VERBS, as_int, as_text, expand_set, json_safe

__all__ = ["MailboxEvents"]


class MailboxEvents:
    """The mailbox side of the IMAP dissector (a mixin of ImapDissector)."""

    # -- commands that name mailboxes --------------------------------------------

    def _cmd_SELECT(self, p, args, ts, out):
        p.mailbox = self._mailbox_name(args[0]) if args else None
        p.select = {"flags": [], "exists": None, "uidvalidity": None, "uidnext": None, "recent": None,
                    "access": "READ-ONLY" if p.verb == "EXAMINE" else "READ-WRITE", "highestmodseq": None}

    _cmd_EXAMINE = _cmd_SELECT

    def _cmd_STATUS(self, p, args, ts, out):
        p.mailbox = self._mailbox_name(args[0]) if args else None

    def _cmd_CREATE(self, p, args, ts, out):
        p.mailbox = self._mailbox_name(args[0]) if args else None

    _cmd_DELETE = _cmd_SUBSCRIBE = _cmd_UNSUBSCRIBE = _cmd_CREATE

    def _cmd_RENAME(self, p, args, ts, out):
        p.mailbox = self._mailbox_name(args[0]) if args else None
        p.extra["to"] = self._mailbox_name(args[1]) if len(args) > 1 else None

    def _cmd_COPY(self, p, args, ts, out):
        p.extra["set"] = as_text(args[0]) if args else None
        p.extra["to"] = self._mailbox_name(args[1]) if len(args) > 1 else None

    _cmd_MOVE = _cmd_UID_COPY = _cmd_UID_MOVE = _cmd_COPY

    def _cmd_SEARCH(self, p, args, ts, out):
        p.results = []

    _cmd_UID_SEARCH = _cmd_SORT = _cmd_UID_SORT = _cmd_SEARCH

    # -- untagged data -------------------------------------------------------

    def _event(self, ts, action, out, mailbox=False, **kw):
        out.append(MailboxEvent(self.session.session_id, ts, "imap", self.user,
                                self.mailbox if mailbox is False else mailbox, action, **kw))

    def _list(self, kw, args, ts, out):
        if len(args) < 3:
            return
        attrs = [as_text(a) for a in args[0]] if isinstance(args[0], list) else []
        delim = as_text(args[1])
        name = self._mailbox_name(args[2])
        detail = f"delimiter {delim}" if delim else "flat"
        if len(args) > 3 and isinstance(args[3], list):
            detail += " " + json.dumps(json_safe(args[3]))[:1000]
        self._event(ts, "lsub" if kw == "LSUB" else "list", out, mailbox=name,
                    flags=[a for a in attrs if a], detail=detail)

    def _status_data(self, args, ts, out):
        if len(args) < 2 or not isinstance(args[1], list):
            return
        name = self._mailbox_name(args[0])
        items = args[1]
        values = {}
        for i in range(0, len(items) - 1, 2):
            k = as_text(items[i])
            if k:
                values[k.upper()] = as_int(items[i + 1])
        detail = " ".join(f"{k}={v}" for k, v in values.items() if k not in ("MESSAGES", "UIDVALIDITY"))
        self._event(ts, "status", out, mailbox=name, count=values.get("MESSAGES"),
                    uidvalidity=values.get("UIDVALIDITY"), detail=detail)

    def _esearch(self, args):
        tag = None
        rest = args
        if rest and isinstance(rest[0], list) and len(rest[0]) >= 2 and as_text(rest[0][0] or "").upper() == "TAG":
            tag = as_text(rest[0][1])
            rest = rest[1:]
        p = None
        for cand in self.pending:
            if cand.results is not None and (tag is None or cand.tag == tag):
                p = cand
                break
        if p is None:
            return
        if rest and isinstance(rest[0], str) and rest[0].upper() == "UID":
            rest = rest[1:]
        for i in range(0, len(rest) - 1, 2):
            k = as_text(rest[i]) if isinstance(rest[i], str) else None
            if k:
                p.extra.setdefault("esearch", {})[k.upper()] = as_text(rest[i + 1]) if not isinstance(
                    rest[i + 1], list) else json.dumps(json_safe(rest[i + 1]))

    def _exists(self, n, ts, out):
        sp = self._find(SELECT_VERBS)
        if sp is not None:
            sp.select["exists"] = n
            return
        self.exists = n
        self._grow(n)
        if self.mailbox is not None:
            self._event(ts, "exists", out, count=n)

    def _grow(self, n):
        if len(self.uids) < n <= self.limits.max_mailbox_messages:
            self.uids.extend([None] * (n - len(self.uids)))

    def _uid_of(self, seq):
        if 0 < seq <= len(self.uids):
            return self.uids[seq - 1]
        return None

    def _expunge(self, seq, ts, out):
        uid = self._uid_of(seq)
        if 0 < seq <= len(self.uids):
            del self.uids[seq - 1]
        if self.exists:
            self.exists -= 1
        self._event(ts, "expunge", out, uidvalidity=self.uidvalidity, uid=uid, seq=seq)

    def _vanished(self, args, ts, out):
        earlier = bool(args and isinstance(args[0], list))
        uidset = as_text(args[-1]) if args else None
        if not uidset:
            return
        uids = expand_set(uidset, 10_000)
        if uids is not None and not earlier:
            gone = set(uids)
            self.uids = [u for u in self.uids if u not in gone]
        if uids is not None and len(uids) <= 1000:
            for u in uids:
                self._event(ts, "expunge", out, uidvalidity=self.uidvalidity, uid=u,
                            detail="VANISHED (EARLIER)" if earlier else "VANISHED")
        else:
            self._event(ts, "expunge", out, uidvalidity=self.uidvalidity,
                        detail=f"{'VANISHED (EARLIER)' if earlier else 'VANISHED'} {uidset[:1000]}")

    # -- completions ---------------------------------------------------------

    def _done_SELECT(self, p, status, ts, out):
        if status != "OK":
            self._deselect()
            return
        sel = p.select or {}
        self.mailbox = p.mailbox
        self.uidvalidity = sel.get("uidvalidity")
        self.exists = sel.get("exists")
        self.uids = []
        if self.exists:
            self._grow(self.exists)
        detail = " ".join(f"{k}={v}" for k, v in (
            ("access", sel.get("access")), ("uidnext", sel.get("uidnext")), ("recent", sel.get("recent")),
            ("unseen", sel.get("unseen")), ("highestmodseq", sel.get("highestmodseq"))) if v is not None)
        self._event(ts, "select" if p.verb == "SELECT" else "examine", out, uidvalidity=self.uidvalidity,
                    count=self.exists, flags=sel.get("flags") or [], detail=detail)

    _done_EXAMINE = _done_SELECT

    def _deselect(self):
        self.mailbox = None
        self.uidvalidity = None
        self.exists = None
        self.uids = []

    def _done_CLOSE(self, p, status, ts, out):
        if status == "OK":
            # CLOSE silently expunges \Deleted messages of a read-write mailbox
            self._event(ts, "close" if p.verb == "CLOSE" else "unselect", out, uidvalidity=self.uidvalidity)
            self._deselect()

    _done_UNSELECT = _done_CLOSE

    def _done_STORE(self, p, status, ts, out):
        if status == "OK":
            target = as_text(p.args[0]) if p.args else None
            uid = as_int(target) if p.verb == "UID STORE" else None
            seq = as_int(target) if p.verb == "STORE" else None
            if seq is not None:
                uid = self._uid_of(seq)
            flags = []
            if p.args and isinstance(p.args[-1], list):
                flags = [as_text(f) for f in p.args[-1] if isinstance(f, str)]
            self._event(ts, "store", out, uidvalidity=self.uidvalidity, uid=uid, seq=seq, flags=flags,
                        detail=p.argtext[:1000])

    _done_UID_STORE = _done_STORE

    def _done_COPY(self, p, status, ts, out):
        if status != "OK":
            return
        target = p.extra.get("set")
        uid = as_int(target) if p.verb.startswith("UID") else None
        seq = as_int(target) if not p.verb.startswith("UID") else None
        if seq is not None:
            uid = self._uid_of(seq)
        detail = f"{target} -> {p.extra.get('to')}"
        cu = p.extra.get("copyuid")
        if cu:
            detail += f" COPYUID uidvalidity={cu[0]} {cu[1]} -> {cu[2] if len(cu) > 2 else ''}"
        action = "move" if "MOVE" in p.verb else "copy"
        self._event(ts, action, out, uidvalidity=self.uidvalidity, uid=uid, seq=seq, detail=detail[:1000])

    _done_MOVE = _done_UID_COPY = _done_UID_MOVE = _done_COPY

    def _done_APPEND(self, p, status, ts, out):
        if status != "OK" or not p.appends:
            return
        au = p.extra.get("appenduid")
        uidvalidity, uids = (au[0], expand_set(au[1] or "", 10_000)) if au else (None, None)
        for i, (msg, flags, date) in enumerate(p.appends):
            uid = uids[i] if uids and i < len(uids) else None
            msg.mailbox, msg.uid = p.mailbox, uid
            self._event(ts, "append", out, mailbox=p.mailbox, uidvalidity=uidvalidity, uid=uid, flags=flags,
                        size=msg.size, message_id=msg.message_id, detail=f"date {date}" if date else "")

    def _done_SEARCH(self, p, status, ts, out):
        if status != "OK":
            return
        results = p.results or []
        es = p.extra.get("esearch")
        count = len(results)
        shown = " ".join(results[:200]) + (" ..." if len(results) > 200 else "")
        if es:
            count = as_int(es.get("COUNT")) if es.get("COUNT") else count
            shown = " ".join(f"{k} {v}" for k, v in es.items())[:2000]
        self._event(ts, "search", out, uidvalidity=self.uidvalidity, count=count,
                    detail=f"{p.verb} {p.argtext[:500]} -> {shown}".strip())

    _done_UID_SEARCH = _done_SORT = _done_UID_SORT = _done_SEARCH

    def _done_CREATE(self, p, status, ts, out):
        if status == "OK":
            self._event(ts, p.verb.lower(), out, mailbox=p.mailbox)

    _done_DELETE = _done_SUBSCRIBE = _done_UNSUBSCRIBE = _done_CREATE

    def _done_RENAME(self, p, status, ts, out):
        if status == "OK":
            self._event(ts, "rename", out, mailbox=p.mailbox, detail=f"-> {p.extra.get('to')}")
