"""TLS decryption during a live capture (``maildissect live --keylog``).

tshark decrypts files, so a live TLS connection is decrypted when it ends: its
frames are kept while it is open, and when it closes as a TLS session they are
written to a temporary pcap and analysed with the key log exactly as
``analyze --keylog`` would (:mod:`maildissect.decrypt`), on a background
thread so capturing goes on meanwhile. The session record the live pipeline
made (encrypted: version and SNI only) is replaced by the decrypted one, and
the messages, commands and credentials found inside TLS follow it; records of
the plaintext part before STARTTLS, already printed, are not repeated. A
client writes its key log lines during the handshake, so by the time a
connection ends its keys are in the file.

Memory: the frames of open connections, at most ``max_live_tls_bytes`` per
connection and ``max_live_tls_total`` in all (docs/limits.md); a connection
over either limit stops being kept and stays encrypted, with an anomaly. A
plaintext session that has carried a message or a login without switching to
TLS is not kept any longer.
"""

from __future__ import annotations

import os
import queue
import tempfile
from concurrent.futures import ThreadPoolExecutor

from .capture.live import PcapWriter
from .config import Config
from .model import Anomaly

ANOMALIES = {
    "live_tls_not_kept": "live --keylog: the connection's frames exceeded max_live_tls_bytes or "
                         "max_live_tls_total before it ended; it stays encrypted",
    "live_tls_decrypt_failed": "live --keylog: tshark could not decrypt the connection (the detail says why); "
                               "it stays encrypted",
}

#: Tables whose records the decrypted analysis adds (sessions are replaced, not added).
_TABLES = ("commands", "messages", "credentials", "http", "mailboxes", "anomalies")

#: Look at a plaintext session again after this many more kept bytes.
_RECHECK = 256 * 1024


class _Kept:
    """The frames of one open connection."""

    __slots__ = ("frames", "size", "linktype", "checked", "dropped")

    def __init__(self, linktype: int):
        self.frames: list = []
        self.size = 0
        self.linktype = linktype
        self.checked = 0
        self.dropped = ""  # why the frames are no longer kept ("" while they are)


class LiveDecryptor:
    """Keeps live connections' frames and decrypts each TLS session as it ends.

    ``emit(table, record)`` receives the records that replace and follow a
    held TLS session; it is called from :meth:`poll` and :meth:`close`, on the
    capturing thread.
    """

    def __init__(self, keylog, config: Config, emit, tshark: str | None = None):
        # one key log path or several (every key of every file is used)
        self.keylogs = [keylog] if isinstance(keylog, (str, os.PathLike)) else list(keylog)
        self.config = config
        self.emit = emit
        self.tshark = tshark
        self.max_conn = config.limits.max_live_tls_bytes
        self.max_total = config.limits.max_live_tls_total
        self.total = 0
        self.kept: dict[int, _Kept] = {}  # flow id -> frames
        self.held: dict[int, object] = {}  # flow id -> its TLS session record, until decrypted
        self.printed: dict[tuple[int, str], int] = {}  # (flow id, table) -> records already passed on
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0
        self.decrypted = 0  # sessions decrypted
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="maildissect-decrypt")

    # -- frames ----------------------------------------------------------------------
    def packet(self, reasm, ts: float, seg, linktype: int, data: bytes, wirelen: int) -> None:
        """Hand a decoded segment to the reassembler and keep its frame with its connection."""
        conn = reasm.connection(seg[0])
        if conn is None:
            reasm.packet(ts, seg)  # a first frame makes the connection
            conn = reasm.connection(seg[0])
            if conn is not None:
                self.frame(conn, ts, linktype, data, wirelen)
        else:
            # kept before the reassembler sees it: a frame that closes the connection
            # must be in the pcap decrypted at the close
            self.frame(conn, ts, linktype, data, wirelen)
            reasm.packet(ts, seg)

    def frame(self, conn, ts: float, linktype: int, data: bytes, wirelen: int) -> None:
        """Keep one frame of ``conn`` (an open reassembler connection)."""
        fid = conn.flow.flow_id
        k = self.kept.get(fid)
        if k is None:
            k = self.kept[fid] = _Kept(linktype)
        if k.dropped:
            return
        n = len(data)
        if k.size + n > self.max_conn or self.total + n > self.max_total:
            self._drop(k, "limit")
            return
        k.frames.append((ts, data, wirelen))
        k.size += n
        self.total += n
        if k.size - k.checked >= _RECHECK:
            k.checked = k.size
            session = getattr(conn.listener, "session", None)
            if session is not None and not session.tls and (session.messages or session.auth_user):
                self._drop(k, "plaintext")  # past the point where STARTTLS may come

    def _drop(self, k: _Kept, why: str) -> None:
        self.total -= k.size
        k.frames, k.size, k.dropped = [], 0, why

    # -- records from the live pipeline -------------------------------------------------
    def take(self, table: str, record) -> bool:
        """Called for every record before it is printed; True when it is held back."""
        fid = getattr(record, "session_id", None)
        if fid is None:
            return False
        if table == "sessions" and record.tls:
            self.held[fid] = record
            return True
        if table in _TABLES:
            key = (fid, table)
            self.printed[key] = self.printed.get(key, 0) + 1
        return False

    def closed(self, conn) -> None:
        """A connection ended (after its session record, if any, went to :meth:`take`)."""
        fid = conn.flow.flow_id
        k = self.kept.pop(fid, None)
        if k is not None:
            self.total -= k.size
        session = self.held.pop(fid, None)
        printed = {t: self.printed.pop((fid, t), 0) for t in _TABLES}
        if session is None:
            return
        if k is None or k.dropped or not k.frames:
            self.emit("sessions", session)
            self.emit("anomalies", Anomaly(session.end, fid, "", "live_tls_not_kept",
                                           f"{k.dropped if k else 'no'} frames kept"))
            return
        self.pending += 1
        future = self.pool.submit(self._decrypt, k, session, printed)
        future.add_done_callback(lambda f: self.done.put(f))

    # -- decryption (on a pool thread) ---------------------------------------------------
    def _decrypt(self, k: _Kept, session, printed: dict) -> list:
        from .analysis import AnalysisError, analyze_decrypted
        fid = session.session_id
        fd, path = tempfile.mkstemp(prefix="maildissect-live-tls-", suffix=".pcap")
        os.close(fd)
        try:
            writer = PcapWriter(path, k.linktype)
            for ts, data, wirelen in k.frames:
                writer.write(ts, data, wirelen)
            writer.close()
            k.frames = []
            try:
                result = analyze_decrypted([path], self.keylogs, self.config)
            except (AnalysisError, OSError) as e:
                return [("sessions", session),
                        ("anomalies", Anomaly(session.end, fid, "", "live_tls_decrypt_failed", str(e)))]
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        c = result.records
        if not c.sessions:
            return [("sessions", session), ("anomalies", Anomaly(
                session.end, fid, "", "live_tls_decrypt_failed", "no session in the decrypted connection"))]
        out = []
        for table in _TABLES:
            records = getattr(c, table)[printed[table]:]  # the plaintext part was printed already
            for r in records:
                if getattr(r, "session_id", None) is not None:
                    r.session_id = fid
                out.append((table, r))
        found = c.sessions[0]
        found.session_id = fid
        out.append(("sessions", found))  # last, as a plaintext session's record comes at its close
        return out

    # -- results ----------------------------------------------------------------------
    def poll(self) -> None:
        """Pass on the records of the connections decrypted since the last call."""
        while True:
            try:
                future = self.done.get_nowait()
            except queue.Empty:
                return
            self._deliver(future)

    def _deliver(self, future) -> None:
        self.pending -= 1
        try:
            records = future.result()
        except Exception as e:  # never lose the capture over one connection
            records = [("anomalies", Anomaly(None, None, "", "live_tls_decrypt_failed", f"{type(e).__name__}: {e}"))]
        self.decrypted += any(t == "sessions" and r.decrypted for t, r in records)
        for table, record in records:
            self.emit(table, record)

    def close(self, timeout: float = 120.0) -> None:
        """Wait for the decryptions under way (each one is a tshark run) and pass them on."""
        while self.pending:
            try:
                future = self.done.get(timeout=timeout)
            except queue.Empty:
                break
            self._deliver(future)
        self.pool.shutdown(wait=False, cancel_futures=True)
