"""The mailbox store that the lab's servers share.

One :class:`MailStore` per mail domain holds its users' mailboxes. The SMTP
server delivers into it, Twisted's IMAP4 and POP3 servers and the webmail read
and change it. Messages are kept as exact bytes (CRLF line ends) so that every
protocol serves what was delivered, byte for byte.

It is called from several threads (the asyncio loop of the SMTP and web
servers, the Twisted reactor, the relay queue), so all state sits behind one
lock; listeners (IMAP sessions waiting in IDLE) are called outside it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .content import User

DEFAULT_MAILBOXES = ("INBOX", "Sent", "Drafts", "Trash")
SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


@dataclass
class StoredMessage:
    """A message in a mailbox: bytes, IMAP UID, flags and arrival time."""

    uid: int
    data: bytes
    flags: set[str] = field(default_factory=set)
    internal_date: float = field(default_factory=time.time)
    recent: bool = True
    email_id: str = ""  # store-wide and immutable, also across moves (JMAP's Email id)

    @property
    def size(self) -> int:
        return len(self.data)


class Mailbox:
    """One folder: an ordered list of messages with UIDs (RFC 3501 semantics)."""

    def __init__(self, store: "MailStore", owner: str, name: str, uidvalidity: int):
        self.store = store
        self.owner = owner
        self.name = name
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.messages: list[StoredMessage] = []
        # Called as listener(exists_count) after a new message arrives.
        self.listeners: list[Callable[[int], None]] = []

    # All methods below take the store lock; callers need not.
    def append(self, data: bytes, flags=(), internal_date: float | None = None,
               email_id: str | None = None) -> StoredMessage:
        with self.store.lock:
            msg = StoredMessage(self.uidnext, bytes(data), set(flags),
                                internal_date if internal_date is not None else time.time(),
                                email_id=email_id or self.store.new_email_id())
            self.uidnext += 1
            self.messages.append(msg)
            count = len(self.messages)
            listeners = list(self.listeners)
        for listener in listeners:
            listener(count)
        return msg

    def snapshot(self) -> list[StoredMessage]:
        with self.store.lock:
            return list(self.messages)

    def by_uid(self, uid: int) -> StoredMessage | None:
        with self.store.lock:
            for m in self.messages:
                if m.uid == uid:
                    return m
        return None

    def expunge(self) -> list[int]:
        """Remove \\Deleted messages; return the EXPUNGE sequence numbers to report.

        Each number is valid at the moment it is reported (RFC 3501 7.4.1), so
        removing messages 2 and 3 reports 2 and 2.
        """
        with self.store.lock:
            reported, kept, removed = [], [], 0
            for seq, m in enumerate(self.messages, 1):
                if "\\Deleted" in m.flags:
                    reported.append(seq - removed)
                    removed += 1
                else:
                    kept.append(m)
            self.messages = kept
            return reported

    def remove_uids(self, uids) -> int:
        uids = set(uids)
        with self.store.lock:
            before = len(self.messages)
            self.messages = [m for m in self.messages if m.uid not in uids]
            return before - len(self.messages)

    def counts(self) -> tuple[int, int, int]:
        """(exists, recent, unseen)."""
        with self.store.lock:
            return (len(self.messages), sum(m.recent for m in self.messages),
                    sum("\\Seen" not in m.flags for m in self.messages))


class MailStore:
    """The mailboxes of one domain's users."""

    def __init__(self, domain: str, users: list[User], uidvalidity_base: int = 1_700_000_000):
        self.domain = domain
        self.lock = threading.RLock()
        self.users = {u.user: u for u in users}
        self._by_address = {u.address.lower(): u for u in users}
        self._uidvalidity = uidvalidity_base
        self._email_ids = 0
        self.mailboxes: dict[str, dict[str, Mailbox]] = {}
        for u in users:
            self.mailboxes[u.user] = {}
            for name in DEFAULT_MAILBOXES:
                self.create(u.user, name)

    def new_email_id(self) -> str:
        with self.lock:
            self._email_ids += 1
            return f"M{self._email_ids:06d}"

    def create(self, user: str, name: str) -> Mailbox:
        with self.lock:
            boxes = self.mailboxes[user]
            if name.upper() == "INBOX":
                name = "INBOX"
            if name in boxes:
                return boxes[name]
            self._uidvalidity += 1
            box = Mailbox(self, user, name, self._uidvalidity)
            boxes[name] = box
            return box

    def mailbox(self, user: str, name: str = "INBOX") -> Mailbox | None:
        with self.lock:
            boxes = self.mailboxes.get(user, {})
            if name.upper() == "INBOX":
                name = "INBOX"
            return boxes.get(name)

    def check_password(self, user: str, password: str) -> bool:
        u = self.users.get(user)
        return u is not None and u.password == password

    def user_for_address(self, address: str) -> User | None:
        return self._by_address.get(address.strip("<>").lower())

    def is_local(self, address: str) -> bool:
        return address.strip("<>").rpartition("@")[2].lower() == self.domain

    def deliver(self, address: str, data: bytes) -> StoredMessage:
        """Final delivery into a local user's INBOX (what an MDA does)."""
        user = self.user_for_address(address)
        if user is None:
            raise KeyError(address)
        return self.mailbox(user.user).append(data)
