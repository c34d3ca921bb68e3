"""SMTP mail transactions (RFC 5321 3.3): what one transaction holds, how it ended, and
the row of the messages table it becomes -- its message, or, when it ended before any,
its envelope (docs/protocols/smtp.md, "Transactions").

The state machine (:mod:`.smtp`) opens a :class:`Txn` at MAIL (or at the first command
of a transaction whose MAIL was not captured), records each RCPT's verdict, the body
read after DATA or BDAT (:mod:`.smtp_data`) and the final reply, and hands the settled
transaction here to be written as a record.
"""

from __future__ import annotations

from .. import mime
from ..config import Config
from ..model import Message, Session
from .smtp_data import Body
from .smtp_syntax import queue_id

__all__ = ["Txn", "outcome", "message_of", "envelope_of"]


class Txn:
    """One mail transaction: envelope, recipients' outcomes, message body, and how it ended."""

    __slots__ = ("mail_from", "rcpts", "rcpt_overflow", "body", "data_ts", "source", "gap",
                 "tls", "body_done", "reply", "reply_seen", "emitted", "number", "data_seq",
                 "ts", "mail_seq", "mail_ok", "refused", "last", "ended", "outstanding", "messages")

    def __init__(self, mail_from: str | None = None, gap: bool = False, number: int = 0, ts: float = 0.0):
        self.mail_from = mail_from
        self.ts = ts  # when it began (its MAIL, or the first command of an implicit one)
        self.mail_seq: int | None = None  # Command.seq of its MAIL
        self.mail_ok: bool | None = None  # the server's verdict on MAIL (None: not seen)
        self.refused: tuple[str, str] | None = None  # DATA or BDAT refused: (code, text)
        self.last: tuple[str, str] | None = None  # the last reply to one of its commands
        self.ended: str | None = None  # the command that ended it before its data did (rset, quit...)
        self.outstanding = 0  # its commands still awaiting a reply
        self.messages = 0  # message rows it produced (a BDAT message given up on may be followed by another)
        self.number = number  # ordinal in the session (Command.transaction, Message.transaction)
        self.data_seq: int | None = None  # Command.seq of the DATA / first BDAT carrying the message
        self.rcpts: list[list] = []  # [address, True accepted / False refused / None no reply]
        self.rcpt_overflow = False
        self.body: Body | None = None
        self.data_ts = 0.0
        self.source = ""
        self.gap = gap  # a gap touched the transaction
        self.tls = False
        self.body_done = False
        self.reply: tuple[str, list[str], float] | None = None
        self.reply_seen = False  # final reply received or given up on
        self.emitted = False


#: what ended a transaction before its data: commands that reset it (RFC 5321 4.1.4, RFC 3207)
_ABORTING = frozenset(("rset", "quit", "ehlo", "helo", "mail", "starttls"))


def outcome(txn: Txn) -> str:
    """A transaction's outcome (messages.outcome, docs/protocols/smtp.md): delivered (final 2xx
    to its data), rejected (its MAIL, DATA/BDAT or data refused), no_recipients (RCPTs sent, none
    accepted), aborted (RSET, QUIT, HELO/EHLO, a new MAIL or STARTTLS before its data ended),
    unterminated (the capture or a gap ended it)."""
    rcpts = [ok for _, ok in txn.rcpts]
    nobody = bool(rcpts) and all(ok is False for ok in rcpts)
    if txn.reply is not None:
        if txn.reply[0][:1] == "2":
            return "delivered"
        return "no_recipients" if nobody else "rejected"
    if txn.mail_ok is False:
        return "rejected"
    if nobody:
        return "no_recipients"
    if txn.refused is not None:
        return "rejected"
    if txn.ended in _ABORTING and not txn.gap and (txn.body is None or txn.source == "BDAT"):
        return "aborted"
    return "unterminated"


def message_of(txn: Txn, session: Session, config: Config, out: list) -> None:
    """Append the message of ``txn`` (its data and reply settled) and what parsing it found."""
    body = txn.body
    txn.emitted = True
    txn.messages += 1
    raw = b"".join(body.chunks)
    body.chunks = []  # the joined copy is all that is needed from here
    accepted = [a for a, ok in txn.rcpts if ok is not False]
    refused = [a for a, ok in txn.rcpts if ok is False]
    msg = Message(protocol="smtp", session_id=session.session_id, ts=txn.data_ts,
                  direction="sent", mail_from=txn.mail_from, rcpt_to=accepted,
                  rcpt_rejected=refused, helo=session.helo, tls=txn.tls, source=txn.source,
                  kind=txn.source.lower(), command_seq=txn.data_seq, transaction=txn.number,
                  user=session.auth_user, outcome=outcome(txn))
    if txn.reply is not None:
        code, lines, _ = txn.reply
        msg.reply_code = code
        msg.reply_text = lines[-1] if lines else ""
        msg.queue_id = queue_id(lines)
    found = mime.fill_message(msg, raw, config)
    session.anomalies += len(found)
    if body.hasher is not None:
        # only the beginning was kept: size and hash are of everything
        msg.size = body.size
        msg.sha256 = body.hasher.hexdigest()
        msg.body_sha256 = None
    msg.missing_bytes = body.missing
    msg.complete = not (txn.gap or body.missing or body.hasher is not None or not body.terminated)
    out.append(msg)
    out.extend(found)
    body.kept = 0


def envelope_of(txn: Txn, session: Session, out: list) -> None:
    """The row of a transaction that ended before any message: its envelope, the replies
    it got, and its outcome (rejected, no_recipients, aborted, unterminated)."""
    accepted = [a for a, ok in txn.rcpts if ok is not False]
    refused = [a for a, ok in txn.rcpts if ok is False]
    msg = Message(protocol="smtp", session_id=session.session_id, ts=txn.ts, direction="sent",
                  mail_from=txn.mail_from, rcpt_to=accepted, rcpt_rejected=refused, helo=session.helo,
                  tls=txn.tls, source="", kind="envelope", command_seq=txn.mail_seq, transaction=txn.number,
                  user=session.auth_user, complete=not txn.gap, outcome=outcome(txn))
    reply = txn.refused or txn.last
    if reply is not None:
        msg.reply_code, msg.reply_text = reply
    out.append(msg)
