"""The lab's servers, built from well-kept libraries: what they share.

- SMTP: aiosmtpd, made a small MTA with a store-and-forward relay queue
  (:mod:`.smtp_server`).
- IMAP4: Twisted's ``twisted.mail.imap4`` server over the shared :mod:`.store`
  (:mod:`.imap_server`).
- POP3: Twisted's ``twisted.mail.pop3`` server over the same store
  (:mod:`.pop3_server`).

Where the libraries deviate from the RFCs in ways a capture would show, the
subclasses there correct them and say why in a comment (partial FETCH, exact
BODY[HEADER], POP3 dot-stuffing at chunk boundaries, EXISTS after APPEND).

This module holds what they share. Threads: aiosmtpd runs on the lab's
asyncio loop (:class:`LoopThread`), Twisted on its reactor thread
(:func:`reactor_call`). Twisted's reactor cannot be restarted within a process,
so it is started once and then kept running; each lab closes its own listening
ports and connections. IMAP and POP3 log in through one Twisted cred portal
over the store's users (:func:`make_portal`).
"""

from __future__ import annotations

import asyncio
import queue
import threading

from zope.interface import implementer

__all__ = ["LoopThread", "reactor_call", "make_portal"]

# --------------------------------------------------------------------------
# Threads


class LoopThread:
    """An asyncio event loop running in its own thread, for one lab run."""

    def __init__(self, name: str = "maildissect-lab-loop"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro, timeout: float = 15.0):
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args):
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return

        async def _cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all(), timeout)
        except Exception:
            pass  # stopping anyway
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


_reactor_lock = threading.Lock()
_reactor_thread: threading.Thread | None = None


def _ensure_reactor():
    global _reactor_thread
    from twisted.internet import reactor
    with _reactor_lock:
        if _reactor_thread is None or not _reactor_thread.is_alive():
            if not reactor.running:
                _reactor_thread = threading.Thread(
                    target=reactor.run, kwargs={"installSignalHandlers": False},
                    name="maildissect-twisted-reactor", daemon=True)
                _reactor_thread.start()
    return reactor


def reactor_call(fn, *args, timeout: float = 15.0):
    """Call ``fn`` in the reactor thread and wait for its (possibly deferred) result."""
    from twisted.internet.defer import maybeDeferred
    reactor = _ensure_reactor()
    box: queue.Queue = queue.Queue(1)

    def run():
        d = maybeDeferred(fn, *args)
        d.addCallbacks(lambda r: box.put((True, r)), lambda f: box.put((False, f)))

    reactor.callFromThread(run)
    ok, result = box.get(timeout=timeout)
    if not ok:
        result.raiseException()
    return result


# --------------------------------------------------------------------------
# cred: one realm per domain for IMAP and POP3


def make_portal(store):
    """A Twisted cred portal over the store's users (IMAP IAccount, POP3 IMailbox)."""
    from twisted.cred import checkers, credentials, error, portal
    from twisted.internet import defer
    from twisted.mail import imap4, pop3

    from .imap_server import ImapAccount
    from .pop3_server import Pop3Mailbox

    @implementer(checkers.ICredentialsChecker)
    class StoreChecker:
        credentialInterfaces = (credentials.IUsernamePassword,)

        def requestAvatarId(self, creds):
            user = creds.username.decode() if isinstance(creds.username, bytes) else creds.username
            pw = creds.password.decode() if isinstance(creds.password, bytes) else creds.password
            if store.check_password(user, pw):
                return defer.succeed(user)
            return defer.fail(error.UnauthorizedLogin())

    @implementer(portal.IRealm)
    class Realm:
        def requestAvatar(self, avatar_id, mind, *interfaces):
            if imap4.IAccount in interfaces:
                account = ImapAccount(store, avatar_id)
                return imap4.IAccount, account, account.logout
            if pop3.IMailbox in interfaces:
                return pop3.IMailbox, Pop3Mailbox(store.mailbox(avatar_id)), lambda: None
            # twisted.cred's contract for an interface this realm does not serve
            # (IRealm.requestAvatar); the portal turns it into a failed login
            raise NotImplementedError(interfaces)

    return portal.Portal(Realm(), [StoreChecker()])
