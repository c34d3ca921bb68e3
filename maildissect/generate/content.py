"""Deterministic lab content: users, passwords, messages and attachments.

Everything a user agent writes comes from here and depends only on the seed and
the message's ordinal, so the same ``--seed`` gives byte-identical messages,
attachments, users and passwords on every run. (What servers add on the way --
``Received:`` trace fields with real times, queue ids in replies -- records what
actually happened and differs between runs.)

The messages are chosen to exercise dissectors: RFC 2047 encoded non-ASCII
headers, a body line consisting of a single dot and lines starting with dots
(SMTP and POP3 dot-stuffing), 8bit, quoted-printable and base64 parts, nested
multiparts, and an RFC 2231 encoded non-ASCII attachment file name.
"""

from __future__ import annotations

import email.policy
import hashlib
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

#: Wire policy: CRLF line ends, RFC 2047 for non-ASCII header text, 78-column folding.
WIRE = email.policy.SMTP

ALICE_DOMAIN = "alice.example"
BOB_DOMAIN = "bob.example"

# (user, display name) per side; --users N takes the first N of each list.
_ALICE_SIDE = [
    ("alice", "Alice Müller"), ("carol", "Carol Ødegaard"), ("erin", "Erin Ó Briain"),
    ("grace", "Grace Hopper"), ("ivan", "Ivan Petrović"), ("kate", "Käte Schäfer"),
]
_BOB_SIDE = [
    ("bob", "Bob Čapek"), ("dave", "Dave Łukasiewicz"), ("frank", "Frank Nuñez"),
    ("heidi", "Heidi Søndergaard"), ("judy", "Judy Żmijewska"), ("leo", "Léo Dupré"),
]
MAX_USERS = len(_ALICE_SIDE)

# Dates in the messages are fixed (deterministic) rather than the wall clock.
_BASE_DATE = datetime(2024, 3, 1, 9, 0, 0, tzinfo=timezone(timedelta(hours=1)))

_WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor",
          "indigo", "jasper", "krypton", "lagoon", "meadow", "nickel", "onyx", "pepper"]

_SUBJECTS = [
    "Grüße aus Zürich — Quartalsbericht {n}",
    "Réunion de lundi : ordre du jour n°{n}",
    "Übersicht der Messwerte {n} (März)",
    "Пример темы {n}: проверка кодировки",
    "Meeting notes {n} ✓",
]


@dataclass(frozen=True)
class User:
    """A mailbox owner: login name, password, address and display name."""

    user: str
    password: str
    domain: str
    display: str

    @property
    def address(self) -> str:
        return f"{self.user}@{self.domain}"

    @property
    def header(self) -> str:
        """The address as a From:/To: header value (display name RFC 2047 encoded on output)."""
        return formataddr((self.display, self.address))


@dataclass
class AttachmentSpec:
    """One attachment: its file name, MIME type and decoded bytes."""

    filename: str
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Composed:
    """A message a user agent wrote: exact bytes plus what the manifest needs."""

    data: bytes
    message_id: str
    sender: User
    to: list[str]
    cc: list[str] = field(default_factory=list)
    subject: str = ""
    attachments: list[AttachmentSpec] = field(default_factory=list)


def make_users(seed: int, n: int) -> tuple[list[User], list[User]]:
    """Alice's side and Bob's side users (``n`` each), passwords drawn from ``seed``."""
    if not 1 <= n <= MAX_USERS:
        raise ValueError(f"users must be between 1 and {MAX_USERS}")
    rng = random.Random(f"users:{seed}")

    def side(names, domain):
        out = []
        for user, display in names[:n]:
            password = f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{rng.randrange(1000, 10000)}"
            out.append(User(user, password, domain, display))
        return out

    return side(_ALICE_SIDE, ALICE_DOMAIN), side(_BOB_SIDE, BOB_DOMAIN)


class ContentFactory:
    """Makes the lab's messages; ordinal ``n`` always gives the same bytes for a seed."""

    def __init__(self, seed: int, attachment_size: int):
        if attachment_size < 0:
            raise ValueError("attachment size must be >= 0")
        self.seed = seed
        self.attachment_size = attachment_size
        self._next = 0
        self._dates = 0

    def _rng(self, what: str, n: int) -> random.Random:
        return random.Random(f"{what}:{self.seed}:{n}")

    def next_ordinal(self) -> int:
        self._next += 1
        return self._next

    def date(self) -> str:
        """The next Date: header value (deterministic, a few minutes apart)."""
        self._dates += 1
        rng = self._rng("date", self._dates)
        when = _BASE_DATE + timedelta(minutes=7 * self._dates, seconds=rng.randrange(60))
        return format_datetime(when)

    def message_id(self, domain: str, n: int, what: str = "msg") -> str:
        rng = self._rng(f"mid-{what}", n)
        return f"<{what}.{n}.{rng.getrandbits(48):012x}@{domain}>"

    def attachment(self, n: int, kind: int) -> AttachmentSpec:
        """Attachment number ``n`` of the given kind (0 PDF-like binary, 1 CSV text, 2 PNG-like)."""
        size = self.attachment_size
        rng = self._rng("att", n * 10 + kind)
        if kind == 1:
            lines, total = ["zeit;messpunkt;wert;einheit"], 0
            row = 0
            while total < size:
                row += 1
                line = f"2024-03-01T09:{row % 60:02d};Meßpunkt-{row};{rng.uniform(0, 100):.3f};°C"
                lines.append(line)
                total += len(line.encode()) + 2
            data = ("\r\n".join(lines) + "\r\n").encode("utf-8")[:max(size, 1)]
            return AttachmentSpec(f"Übersicht März {n}.csv", "text/csv", data)
        if kind == 2:
            head = b"\x89PNG\r\n\x1a\n"
            data = head + rng.randbytes(max(size - len(head), 0))
            return AttachmentSpec(f"photo-{n}.png", "image/png", data)
        head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
        data = head + rng.randbytes(max(size - len(head), 0))
        return AttachmentSpec(f"Quartalsbericht-{n}.pdf", "application/pdf", data)

    def body_text(self, n: int, sender: User, greeting_to: str) -> str:
        rng = self._rng("body", n)
        words = " ".join(rng.choice(_WORDS) for _ in range(12))
        # The lone "." and the lines starting with dots must survive SMTP and
        # POP3 dot-stuffing; dissectors must un-stuff them.
        return (
            f"Hallo {greeting_to},\n\n"
            f"this is message number {n} of the lab ({words}).\n"
            ".\n"
            ".a line that starts with a dot\n"
            "..and one that starts with two\n"
            "Ärger, Öl, Übermut — non-ASCII text in the body.\n\n"
            f"-- \n{sender.display}\n"
        )

    def compose(self, sender: User, to: list[User], cc: list[User] | None = None,
                n: int | None = None, with_attachment: bool | None = None,
                in_reply_to: str | None = None, subject: str | None = None) -> Composed:
        """Message ordinal ``n`` from ``sender``; its shape cycles with ``n``.

        n % 3 == 1: text (8bit UTF-8) + PDF-like attachment;
        n % 3 == 2: multipart/alternative (quoted-printable text + HTML) + CSV with a
        non-ASCII file name; n % 3 == 0: a single quoted-printable text part.
        """
        n = self.next_ordinal() if n is None else n
        cc = cc or []
        shape = n % 3
        if with_attachment is None:
            with_attachment = shape != 0
        rng = self._rng("subject", n)
        if subject is None:
            subject = rng.choice(_SUBJECTS).format(n=n)
        msg = EmailMessage(policy=WIRE)
        msg["From"] = sender.header
        msg["To"] = ", ".join(u.header for u in to)
        if cc:
            msg["Cc"] = ", ".join(u.header for u in cc)
        msg["Subject"] = subject
        msg["Date"] = self.date()
        mid = self.message_id(sender.domain, n)
        msg["Message-ID"] = mid
        if in_reply_to:
            msg["In-Reply-To"] = in_reply_to
            msg["References"] = in_reply_to
        msg["User-Agent"] = "maildissect-lab/1.0 (Python email)"
        text = self.body_text(n, sender, to[0].display.split()[0] if to else "")
        if shape == 1:
            msg.set_content(text, charset="utf-8", cte="8bit")
        else:
            msg.set_content(text, charset="utf-8", cte="quoted-printable")
        if shape == 2:
            html = "<html><body><p>" + text.replace("\n", "<br>\n") + "</p></body></html>\n"
            msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
        attachments = []
        if with_attachment and self.attachment_size > 0:
            att = self.attachment(n, 1 if shape == 2 else 0)
            attachments.append(att)
            maintype, _, subtype = att.content_type.partition("/")
            msg.add_attachment(att.data, maintype=maintype, subtype=subtype, filename=att.filename)
        _fix_boundaries(msg, f"{self.seed}-{n}")
        return Composed(msg.as_bytes(), mid, sender, [u.address for u in to],
                        [u.address for u in cc], subject, attachments)

    def appended_draft(self, sender: User, to: User) -> Composed:
        """A message the user files with IMAP APPEND (a copy of something sent), with an image."""
        n = self.next_ordinal()
        msg = EmailMessage(policy=WIRE)
        msg["From"] = sender.header
        msg["To"] = to.header
        msg["Subject"] = f"Entwurf {n}: Fotos vom Ausflug"
        msg["Date"] = self.date()
        mid = self.message_id(sender.domain, n, "draft")
        msg["Message-ID"] = mid
        msg["User-Agent"] = "maildissect-lab/1.0 (Python email)"
        msg.set_content(self.body_text(n, sender, to.display.split()[0]), charset="utf-8",
                        cte="quoted-printable")
        attachments = []
        if self.attachment_size > 0:
            att = self.attachment(n, 2)
            attachments.append(att)
            msg.add_attachment(att.data, maintype="image", subtype="png", filename=att.filename)
        _fix_boundaries(msg, f"{self.seed}-{n}")
        return Composed(msg.as_bytes(), mid, sender, [to.address], [], msg["Subject"], attachments)

    def webmail_form(self, sender: User, to: list[User], cc: list[User], in_reply_to=None,
                     subject=None) -> dict:
        """What a person types into the webmail compose form (plus one file to upload)."""
        n = self.next_ordinal()
        rng = self._rng("subject", n)
        return {
            "n": n,
            "to": ", ".join(u.address for u in to),
            "cc": ", ".join(u.address for u in cc),
            "subject": subject or rng.choice(_SUBJECTS).format(n=n),
            "message": self.body_text(n, sender, to[0].display.split()[0]),
            "in_reply_to": in_reply_to,
            "attachment": self.attachment(n, 1) if self.attachment_size > 0 else None,
        }


def _fix_boundaries(msg: EmailMessage, tag: str) -> None:
    """Give every multipart a boundary derived from the seed (the default is random)."""
    for i, part in enumerate(msg.walk()):
        if part.is_multipart():
            part.set_boundary(f"=_maildissect_{tag}_{i}")
