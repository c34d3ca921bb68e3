"""Watching mail traffic as it happens.

:func:`run_live` captures on an interface and hands each session and message
to a callback as soon as it completes, analysed by the same decoder,
reassembler and dissectors as file analysis.

The default backend (``spool``) decouples the two, as Zeek's and Suricata's
sensors do: tcpdump captures into a bounded spool of rotating pcap files
(:mod:`maildissect.capture.spool`) and never waits for Python; ``jobs``
analysing processes follow behind, each reading every file and keeping the
connections of its share of the flow hash (the same sharding as ``--jobs`` on
files), and send their records to this process, which prints them, keeps the
spool within ``max_live_spool`` (dropping, and counting, the oldest unread
files when the analysis falls that far behind) and shows progress. Stopping
stops the capture first, then lets the analysis finish what was captured.

Nothing accumulates: finished sessions are emitted and dropped, idle
connections time out (``Limits.idle_timeout``), analysed spool files are
deleted, and only counters are kept, so memory stays bounded over hours.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Callable

from .capture.live import LiveError, PcapWriter, open_live
from .config import Config
from .pipeline import Pipeline
from .runner import TABLES, Stream

ANOMALIES = {
    "live_spool_full": "live: the analysis fell more than max_live_spool bytes behind the capture; the oldest "
                       "captured files not yet analysed were dropped (the detail counts their packets and bytes)",
}

#: backends: "spool" (tcpdump into a spool, analysis behind it) and the in-process ones
BACKENDS = ("spool", "scapy", "tcpdump", "tshark")


def live_pipeline(config: Config, on_record, tables, keylog=None, source=None):
    """A pipeline whose sink streams each record of ``tables`` to ``on_record(table, record)``
    (masked as it leaves under ``config.redact``: the Redacting sink around the stream), with
    the live TLS decryptor when there is a key log; returns (pipeline, sink, decryptor or None)."""
    sink = Stream(on_record, tables)
    if config.redact:
        from .redact import Redacting
        sink = Redacting(sink)  # every record masked as it leaves, as an Analysis masks them
    pipe = Pipeline(source, sink, config)
    decryptor = None
    if keylog is not None:
        from .live_decrypt import LiveDecryptor
        decryptor = LiveDecryptor(keylog, config, lambda table, record: getattr(sink, table).put(record))
        for name in TABLES:
            getattr(sink, name).hold = decryptor.take
        pipe.flow_hook = decryptor.closed
        pipe.segments = Decrypting(pipe.reassembler, decryptor)
    return pipe, sink, decryptor


class Decrypting:
    """Where the frame loop's segments go when a key log decrypts live: each goes to the
    reassembler through the live decryptor, with the bytes of its frame, which the decryptor
    keeps for tshark while its connection is open (:mod:`maildissect.live_decrypt`). Shaped
    like the reassembler as the loop sees it; :meth:`frames` passes the frames on, noting
    the current one."""

    def __init__(self, reassembler, decryptor):
        self.reassembler = reassembler
        self.decryptor = decryptor
        self.current = None

    @property
    def frame(self):
        return self.reassembler.frame

    @frame.setter
    def frame(self, n):
        self.reassembler.frame = n

    @property
    def anomalies(self):
        return self.reassembler.anomalies

    @anomalies.setter
    def anomalies(self, value):
        self.reassembler.anomalies = value

    def packet(self, ts, seg):
        _ts, linktype, data, wirelen = self.current
        self.decryptor.packet(self.reassembler, ts, seg, linktype, data, wirelen)

    def finish(self, ts=None):
        self.reassembler.finish(ts)

    def frames(self, frames):
        for frame in frames:
            if frame is not None:
                self.current = frame
            yield frame


class Interface:
    """A live interface read in this process (the scapy, tcpdump-pipe and tshark backends) as
    the runner's source: its frames (copied to ``writer`` when writing), with idle connections
    swept by the clock, the live decryptor polled, and the reading ended by ``duration``,
    ``count``, ``should_stop()`` or Ctrl-C/SIGTERM; what was read is then finished, the
    connections still open closed at the stop."""

    shard = None
    interruptible = True

    def __init__(self, capture, config: Config, writer=None, decryptor=None, duration: float | None = None,
                 count: int | None = None, should_stop: Callable[[], bool] | None = None):
        self.capture = capture
        self.writer = writer
        self.decryptor = decryptor
        self.count = count
        self.should_stop = should_stop
        self.started = time.time()
        self.deadline = self.started + duration if duration else None
        self.sweep_every = min(10.0, max(1.0, config.limits.idle_timeout / 10))
        self.frames = 0
        self.stats_: dict = {}

    def open(self, pipeline):
        frames = self._frames(pipeline.reassembler)
        segments = pipeline.segments
        return segments.frames(frames) if isinstance(segments, Decrypting) else frames

    def _frames(self, reasm):
        capture, writer, decryptor = self.capture, self.writer, self.decryptor
        deadline, count, should_stop = self.deadline, self.count, self.should_stop
        last_sweep = self.started
        sweep_every = self.sweep_every
        try:
            for frame in capture.frames():
                now = time.time()
                if frame[1] is not None:  # (None: no frame, the clock goes on)
                    self.frames += 1
                    if writer is not None:
                        writer.write(frame[0], frame[2], frame[3])
                    yield frame
                if decryptor is not None:
                    decryptor.poll()
                if now - last_sweep >= sweep_every:
                    reasm.sweep(now)
                    last_sweep = now
                if (deadline is not None and now >= deadline) or (count is not None and self.frames >= count) \
                        or (should_stop is not None and should_stop()):
                    break
        finally:
            self.stop()

    def stop(self):
        """Stop capturing (once): the capture's counters are read and it is closed."""
        if self.capture is None:
            return
        capture, self.capture = self.capture, None
        try:
            self.stats_ = capture.stats()
        finally:
            capture.close()
            if hasattr(capture, "final_stats"):
                self.stats_.update(capture.final_stats())
            if self.writer is not None:
                self.writer.close()

    def closing_ts(self, seen):
        return time.time()

    def position(self):
        return 0, 0

    def last_ts(self, seen):
        return seen

    def stats(self, pipeline):
        from .runner import Stats
        return Stats.of(pipeline, [])


def _stop_on_sigterm():
    """SIGTERM (kill, timeout, a service manager) ends a capture like Ctrl-C: with a summary."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, handler)


def _run_inline(iface: str, *, bpf: str | None, backend: str = "scapy", config: Config | None = None,
                on_record: Callable | None = None, tables=("sessions", "messages"), duration: float | None = None,
                count: int | None = None, write: str | None = None, rotate_size: int | None = None,
                should_stop: Callable[[], bool] | None = None, keylog: str | None = None,
                started: Callable[[], None] | None = None) -> dict:
    """The in-process backends (scapy, a tcpdump pipe, tshark): capture and analysis in one loop.

    Kept for interfaces and systems the spool cannot serve; the capture waits whenever
    the analysis does, so bursts beyond its pace are dropped by the kernel (counted).
    """
    config = config or Config()
    capture = open_live(iface, bpf, backend)
    if started is not None:
        started()
    writer = PcapWriter(write, getattr(capture, "linktype", 1), rotate_size) if write else None
    pipe, collector, decryptor = live_pipeline(config, on_record, tables, keylog)
    source = Interface(capture, config, writer, decryptor, duration, count, should_stop)
    pipe.source = source
    previous = _stop_on_sigterm()
    try:
        stats = pipe.run()
    finally:
        source.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if decryptor is not None:
        decryptor.close()
    return {
        "interface": iface, "backend": capture.name, "filter": bpf or "",
        "seconds": round(time.time() - source.started, 3),
        "frames": stats.frames, "tcp_segments": stats.tcp_segments, **collector.counts(),
        "loopback_duplicates_dropped": getattr(capture, "dropped_outgoing", 0),
        "interrupted": pipe.interrupted, "files_written": writer.files if writer else [],
        "tls_decrypted": decryptor.decrypted if decryptor is not None else None, **source.stats_,
    }


def run_live(iface: str, *, bpf: str | None, backend: str = "spool", config: Config | None = None,
             on_record: Callable | None = None, tables=("sessions", "messages"), duration: float | None = None,
             count: int | None = None, write: str | None = None, rotate_size: int | None = None,
             should_stop: Callable[[], bool] | None = None, keylog=None, jobs: int = 1,
             spool_dir: str | None = None, progress: Callable[[dict], None] | None = None, capture=None,
             started: Callable[[], None] | None = None) -> dict:
    """Capture on ``iface`` until ``duration``/``count``/Ctrl-C/SIGTERM/``should_stop()``, then
    analyse what was captured to its end; returns the summary counters.

    ``keylog``: decrypt each TLS session through tshark when it ends
    (:mod:`maildissect.live_decrypt`). ``progress(counters)`` is called about once a
    second (spool backend). ``spool_dir``: where the spool goes (default: a temporary
    directory, removed at the end). ``capture``: another capturer than tcpdump for the
    spool (maildissect.live_spool.run_spool). ``started()`` is called once the capture is
    open: traffic sent from then on is captured.
    """
    if backend != "spool":
        if backend not in BACKENDS:
            raise LiveError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        return _run_inline(iface, bpf=bpf, backend=backend, config=config, on_record=on_record, tables=tables,
                           duration=duration, count=count, write=write, rotate_size=rotate_size,
                           should_stop=should_stop, keylog=keylog, started=started)
    from .live_spool import run_spool
    return run_spool(iface, bpf=bpf, config=config or Config(), on_record=on_record, tables=tables,
                     duration=duration, count=count, write=write, rotate_size=rotate_size, should_stop=should_stop,
                     keylog=keylog, jobs=jobs, spool_dir=spool_dir, progress=progress, capture=capture,
                     started=started)
