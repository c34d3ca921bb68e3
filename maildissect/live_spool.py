"""The spool backend of ``maildissect live``: tcpdump captures, analysing processes follow.

This process starts ``jobs`` analysing processes (forked, so they share the
imported dissectors), then tcpdump writing the spool
(:class:`maildissect.capture.spool.TcpdumpSpool`). Each analysing process runs
the normal pipeline over a :class:`~maildissect.capture.spool.SpoolReader`
source with its share of the connection hash buckets
(:func:`maildissect.parallel.bucket_ranges`, the sharding of ``--jobs`` on
files) and a streaming sink that sends each record here through a pipe. Here
records are printed (session ids made unique across the processes), the spool
is kept within its limit, progress is shown, and stopping is handled: the
capture stops first, then the analysis reads what was captured to its end.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import wait as wait_any
from typing import Callable

from .capture.live import LiveError, PcapWriter
from .capture.spool import SpoolKeeper, SpoolReader, SpoolState, TcpdumpSpool, die_with_parent, spool_files
from .config import Config
from .model import Anomaly

#: how often the capturing process looks at the spool and refreshes progress (seconds)
TEND = 0.2
#: scheduling priority of the analysing processes, below the capturer's
ANALYSIS_NICE = 10
#: session ids of open sessions remembered for renumbering (several analysing processes)
MAX_IDS = 200_000


def _summary_of(stats, sink, frames: int) -> dict:
    """One analysing process's summary: the run's Stats, the records its sink passed on."""
    import resource
    return {"frames": frames, "tcp_segments": stats.tcp_segments, **sink.counts(),
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def _analyse(slot: int, jobs: int, directory: str, state: SpoolState, conn, config: Config, tables, keylog,
             shard) -> None:
    """One analysing process: the pipeline over the spool, records sent through ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the capturing process to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    try:
        # the capturer comes first: when the CPUs are short, the analysis is what waits
        # (it catches up from the spool), never tcpdump (whose waiting the kernel drops)
        os.nice(ANALYSIS_NICE)
    except OSError:
        pass
    from .live import live_pipeline

    def send(table, record):
        if table == "messages":
            record.raw = None  # (the bytes are not printed: they do not cross the pipe)
            for a in record.attachments:
                a.data = None
            for a in record.entities:
                a.data = None
        conn.send((table, record))

    source = SpoolReader(directory, state, slot, shard, config.limits.max_frame)
    pipe, collector, decryptor = live_pipeline(config, send, tables, keylog, source)
    reasm = pipe.reassembler
    sweep_every = min(10.0, max(1.0, config.limits.idle_timeout / 10))
    last_sweep = [time.time()]

    def idle():
        # caught up with the capture: idle connections time out by the clock, decrypted
        # sessions are handed on, records go out now
        now = time.time()
        if now - last_sweep[0] >= sweep_every:
            reasm.sweep(now)
            last_sweep[0] = now
            gc.collect()  # (what the sweep closed: see SpoolReader)
        if decryptor is not None:
            decryptor.poll()

    source.idle = idle
    if decryptor is not None:
        source.batch = decryptor.poll
        source.wrap = pipe.segments.frames  # (live.Decrypting: each frame's bytes for the decryptor)
    stats = pipe.run()
    if decryptor is not None:
        decryptor.close()
    summary = _summary_of(stats, collector, state.frames[slot])
    if decryptor is not None:
        summary["tls_decrypted"] = decryptor.decrypted
    state.finished[slot] = 1
    conn.send(("summary", summary))
    conn.close()


class _Ids:
    """Session ids unique across the analysing processes: each process numbers its own
    connections; here they are numbered in the order their first record arrives."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.map: OrderedDict = OrderedDict()
        self.next = 0

    def __call__(self, slot: int, table: str, record):
        if self.jobs == 1:
            return record
        sid = getattr(record, "session_id", None)
        if sid is None:
            return record
        key = (slot, sid)
        gid = self.map.get(key)
        if gid is None:
            gid = self.map[key] = self.next
            self.next += 1
            if len(self.map) > MAX_IDS:
                self.map.popitem(last=False)
        if table == "sessions":
            self.map.pop(key, None)  # a session's record is its last
        record.session_id = gid
        return record


def _on_stop_signals(run: "_Run"):
    """Ctrl-C and SIGTERM (kill, timeout, a service manager) are counted, not raised: an
    exception in the middle of reading a record from a pipe would lose the records behind
    it. Returns the handlers to put back (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        run.signals += 1
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def run_spool(iface: str, *, bpf: str | None, config: Config, on_record: Callable | None, tables, duration,
              count, write, rotate_size, should_stop, keylog, jobs: int, spool_dir: str | None,
              progress: Callable[[dict], None] | None, capture=None, started=None) -> dict:
    """The spool backend (see the module's doc); ``capture(directory, limits)`` makes the
    capturer instead of tcpdump (shaped like :class:`TcpdumpSpool`: ``ready``, ``running``,
    ``stop``, ``stats``, ``request_stats``, ``failure``)."""
    from .parallel import BUCKETS, _preload, bucket_ranges
    lim = config.limits
    jobs = max(1, int(jobs or 1))
    own_dir = spool_dir is None
    if own_dir:
        directory = tempfile.mkdtemp(prefix="maildissect-spool-")
    else:
        directory = os.path.abspath(spool_dir)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise LiveError(f"cannot create the spool directory {spool_dir}: {e.strerror or e}") from None
        if spool_files(directory):
            raise LiveError(f"the spool directory {spool_dir} holds live.pcap files of another capture; "
                            "remove them or choose another directory")
    ctx = mp.get_context("fork")
    _preload(config)
    state = SpoolState(ctx, jobs)
    ranges = bucket_ranges(jobs) if jobs > 1 else [None]
    workers, conns = [], {}
    try:
        for slot in range(jobs):
            receive, send = ctx.Pipe(duplex=False)
            shard = (ranges[slot][0], ranges[slot][1], BUCKETS) if jobs > 1 else None
            p = ctx.Process(target=_analyse, name=f"maildissect-live-{slot}", daemon=True,
                            args=(slot, jobs, directory, state, send, config, tables, keylog, shard))
            p.start()
            send.close()
            workers.append(p)
            conns[receive] = slot
        if capture is None:
            capture = TcpdumpSpool(iface, bpf, directory, lim.live_spool_file, lim.live_capture_buffer, count)
        else:
            capture = capture(directory, lim)
    except BaseException:
        for p in workers:
            p.kill()
            p.join()
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    if started is not None:
        started()
    run = _Run(capture, state, directory, lim.max_live_spool, conns, workers, on_record, jobs, write, rotate_size,
               progress)
    previous = _on_stop_signals(run)
    began = time.time()
    deadline = began + duration if duration else None
    try:
        run.loop(deadline, should_stop)
    finally:
        if previous is not None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if capture.running():
            capture.stop()
        for p in workers:
            if p.is_alive():
                p.kill()
            p.join()
        if run.writer is not None:
            run.writer.close()
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)
    return run.summary(iface, bpf, began, keylog)


class _Run:
    """The capturing process's loop: records in, spool tended, progress out, stopping."""

    def __init__(self, capture: TcpdumpSpool, state: SpoolState, directory: str, limit: int, conns: dict,
                 workers: list, on_record, jobs: int, write, rotate_size, progress):
        self.capture = capture
        self.state = state
        self.directory = directory
        self.keeper = SpoolKeeper(directory, state, limit)
        self.conns = conns
        self.workers = workers
        self.on_record = on_record
        self.ids = _Ids(jobs)
        self.jobs = jobs
        self.progress = progress
        self.writer = PcapWriter(write, 1, rotate_size) if write else None
        self.written: set[int] = set()
        self.results: dict[int, dict] = {}
        self.signals = 0  # Ctrl-C and SIGTERM received
        self.stop_asked = None  # when stopping was asked (the capturer's ring is drained first)
        self.stopped_at = None  # when the capture stopped
        self.caught_up_at = None
        self.backlog_at_stop = (0, 0)
        self.backlog_packets_at_stop = 0
        self.lag_at_stop = 0.0
        self.interrupted = False
        self.abandoned = False
        self.capture_error = None
        self.counters = {}
        self._last_progress = 0.0
        self._rates = None

    # -- the loop -----------------------------------------------------------------------------
    def loop(self, deadline, should_stop) -> None:
        last_tend = 0.0
        while self.conns:
            for c in wait_any(list(self.conns), timeout=TEND):
                self._receive(c)
            if not self.state.go.value and (self.stopped_at is not None or self.capture.ready()):
                self.state.go.value = 1
            now = time.time()
            if now - last_tend >= TEND:
                last_tend = now
                self._tend(now)
            if self.signals >= 2:  # Ctrl-C again: stop now, and leave what is not analysed yet
                if self.stopped_at is None:
                    self._stop()
                self.abandoned = True
                for p in self.workers:
                    p.kill()
                self._tend(time.time())
                return
            if self.signals and self.stop_asked is None:
                self.interrupted = True
                self.stop_asked = now
            if self.stopped_at is None:
                if not self.capture.running():
                    self.capture_error = self.capture.failure()
                    self._stop()
                elif self.stop_asked is not None:
                    if now >= self.stop_asked + getattr(self.capture, "drain", 0.0):
                        self._stop()
                elif (deadline is not None and now >= deadline) or (should_stop is not None and should_stop()):
                    self.stop_asked = now
        self.caught_up_at = time.time()
        self._tend(self.caught_up_at)

    def _receive(self, c) -> None:
        slot = self.conns[c]
        try:
            while c.poll():
                table, record = c.recv()
                if table == "summary":
                    self.results[slot] = record
                    continue
                record = self.ids(slot, table, record)
                if self.on_record is not None:
                    self.on_record(table, record)
        except (EOFError, OSError):
            del self.conns[c]

    def _stop(self) -> None:
        """Stop capturing; the analysis goes on to the end of what was captured."""
        self.capture.stop()
        self.stopped_at = time.time()
        self.state.done.value = 1
        self.state.go.value = 1
        self.backlog_at_stop = self.keeper.backlog()
        captured = self.capture.stats().get("captured")
        analysed = min(self.state.frames)
        if captured is not None:
            self.backlog_packets_at_stop = max(0, captured - analysed - self.keeper.dropped_packets)
        # how far behind the analysis was: the time of the last packet the slowest process
        # had read, against the stop (0 when nothing was waiting)
        slowest = min(self.state.last_ts)
        self.lag_at_stop = round(max(0.0, self.stopped_at - slowest), 3) \
            if slowest and self.backlog_at_stop[0] else 0.0

    def _tend(self, now: float) -> None:
        if self.writer is not None:
            self._write_analysed()
        protect = (lambda i: i not in self.written) if self.writer is not None else None
        for name, packets, size in self.keeper.tend(protect):
            if self.on_record is not None:
                self.on_record("anomalies", Anomaly(now, None, "", "live_spool_full",
                                                    f"{name}: {packets} packets ({size} bytes) not analysed"))
        if self.progress is not None and now - self._last_progress >= 1.0:
            self._last_progress = now
            self.capture.request_stats()
            self.progress(self.counters_now(now))

    def _write_analysed(self) -> None:
        """With -w: copy each complete spool file into the written capture before it goes."""
        files = spool_files(self.directory)
        if not files:
            return
        writing = max(files) if not self.state.done.value else None
        for i in sorted(files):
            if i == writing or i in self.written:
                continue
            from .capture.files import CaptureReader
            try:
                for ts, _lt, data, wirelen in CaptureReader(files[i]):
                    self.writer.write(ts, data, wirelen)
            except Exception:  # (a file cut short by a killed tcpdump: what was read is written)
                pass
            self.written.add(i)
        self.written = {i for i in self.written if i in files}

    def counters_now(self, now: float) -> dict:
        st = self.state
        cap = self.capture.stats()
        analysed = min(st.frames)
        backlog_bytes, _files = self.keeper.backlog()
        out = {"captured": cap.get("captured", 0), "analysed": analysed, "kernel_drops": cap.get("kernel_drops", 0),
               "spool_dropped_packets": self.keeper.dropped_packets, "backlog_bytes": backlog_bytes,
               "spool_bytes": self.keeper.size, "stopped": self.stopped_at is not None}
        prev = self._rates
        self._rates = (now, out["captured"], analysed)
        if prev is not None and now > prev[0]:
            out["captured_per_s"] = (out["captured"] - prev[1]) / (now - prev[0])
            out["analysed_per_s"] = (analysed - prev[2]) / (now - prev[0])
        return out

    def summary(self, iface, bpf, started, keylog) -> dict:
        cap = self.capture.stats()
        results = [self.results[k] for k in sorted(self.results)]
        first = results[0] if results else {}

        def total(key):
            return sum(r.get(key, 0) for r in results)
        end = self.caught_up_at or time.time()
        return {
            "interface": iface, "backend": "spool", "filter": bpf or "", "jobs": self.jobs,
            "seconds": round(end - started, 3),
            "frames": first.get("frames", min(self.state.frames)), "tcp_segments": total("tcp_segments"),
            "flows": total("flows"), "sessions": total("sessions"), "messages": total("messages"),
            "credentials": total("credentials"), "anomalies": total("anomalies"),
            "captured": cap.get("captured"), "kernel_packets": cap.get("kernel_packets"),
            "kernel_drops": cap.get("kernel_drops"),
            "spool_dropped_packets": self.keeper.dropped_packets, "spool_dropped_bytes": self.keeper.dropped_bytes,
            "spool_dropped_files": self.keeper.dropped_files,
            "backlog_bytes_at_stop": self.backlog_at_stop[0], "backlog_packets_at_stop": self.backlog_packets_at_stop,
            "lag_at_stop": self.lag_at_stop,
            "catch_up_seconds": round(end - self.stopped_at, 3) if self.stopped_at else None,
            "interrupted": self.interrupted, "abandoned": self.abandoned, "capture_error": self.capture_error,
            "files_written": self.writer.files if self.writer is not None else [],
            "tls_decrypted": total("tls_decrypted") if keylog is not None else None,
            "analysis_max_rss_kib": max((r.get("max_rss_kib", 0) for r in results), default=0),
            # analysing processes that ended without their summary (a crash: their share is incomplete)
            "analysis_failed": [k for k in range(self.jobs) if k not in self.results] if not self.abandoned else [],
        }


