"""The lab's POP3 server: Twisted's ``twisted.mail.pop3`` over the shared store.

:class:`Pop3Mailbox` is a maildrop (a snapshot of the INBOX taken at login);
:class:`LabPOP3` corrects Twisted's dot-stuffing at chunk boundaries and the
text of its TOP reply.
"""

from __future__ import annotations

import io
import os
import time

from twisted.internet import protocol
from twisted.mail import pop3
from zope.interface import implementer

__all__ = ["Pop3Mailbox", "LabPOP3", "pop3_factory"]

class _LineAlignedFile:
    """Reads a message as LF-terminated lines, each read ending at a line end.

    Twisted's POP3 server turns LF into CRLF and stuffs dots chunk by chunk;
    chunks that end at line ends let it stuff every line correctly.
    """

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data.replace(b"\r\n", b"\n"))

    def read(self, n=-1):
        chunk = self._f.read(n)
        if chunk and not chunk.endswith(b"\n"):
            chunk += self._f.readline()
        return chunk

    def readline(self, *a):
        return self._f.readline(*a)

    def seek(self, *a):
        return self._f.seek(*a)

    def tell(self):
        return self._f.tell()

    def close(self):
        self._f.close()


@implementer(pop3.IMailbox)
class Pop3Mailbox:
    """A POP3 maildrop: a snapshot of the INBOX taken at login (RFC 1939 locks it)."""

    def __init__(self, box):
        self.box = box
        self.messages = box.snapshot()
        self.deleted: set[int] = set()

    def listMessages(self, i=None):
        if i is None:
            return [0 if n in self.deleted else m.size for n, m in enumerate(self.messages)]
        if i < 0 or i >= len(self.messages):
            raise ValueError(i)
        return 0 if i in self.deleted else self.messages[i].size

    def getMessage(self, i):
        if i < 0 or i >= len(self.messages) or i in self.deleted:
            raise ValueError(i)
        return _LineAlignedFile(self.messages[i].data)

    def getUidl(self, i):
        if i < 0 or i >= len(self.messages) or i in self.deleted:
            raise ValueError(i)
        m = self.messages[i]
        return f"{self.box.uidvalidity}.{m.uid}".encode()

    def deleteMessage(self, i):
        if i < 0 or i >= len(self.messages):
            raise ValueError(i)
        self.deleted.add(i)

    def undeleteMessages(self):
        self.deleted.clear()

    def sync(self):
        self.box.remove_uids(self.messages[i].uid for i in self.deleted)


class LabPOP3(pop3.POP3):
    """Twisted's POP3 server with dot-stuffing that is right on every line."""

    hostname = "localhost"

    def generateMagic(self):
        # The APOP timestamp of the greeting (RFC 1939 7), naming this host.
        return f"<{os.getpid()}.{time.time_ns() // 1000}@{self.hostname}>".encode()

    def do_TOP(self, i, size):
        # Twisted answers TOP with "+OK Top of message follows"; RFC 1939
        # leaves the text free, but Wireshark's POP dissector reads a
        # number there (as in "+OK 120 octets") and flags anything else as
        # malformed. Answer with the octet count of what follows.
        try:
            n, lines = int(i) - 1, int(size)
            data = self.mbox.messages[n].data
            if lines < 0:
                raise ValueError
        except (ValueError, IndexError, AttributeError, TypeError):
            return super().do_TOP(i, size)
        head, sep, body = data.partition(b"\r\n\r\n")
        top = head + sep + b"".join(body.splitlines(keepends=True)[:lines])
        return self._sendMessageContent(
            i, lambda fp: pop3._HeadersPlusNLines(fp, lines),
            lambda _size: f"{len(top)} octets")

    def transformChunk(self, chunk):
        # Twisted stuffs only dots that follow a line break inside the
        # chunk, missing a dot on the chunk's (and the message's) first
        # line -- a lone "." there would end the message early.
        # _LineAlignedFile makes every chunk start at a line start.
        out = chunk.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
        if out.startswith(b"."):
            out = b"." + out
        return out


def pop3_factory(lab, portal, hostname):
    class Factory(protocol.ServerFactory):
        noisy = False

        def buildProtocol(self, addr):
            p = LabPOP3()
            p.hostname = hostname
            p.portal = portal
            p.factory = self
            lab.track_twisted(p)
            return p

    return Factory()
