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

import gc
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
    (masked as it leaves under ``config.redact``), with the live TLS decryptor when there is a
    key log; returns (pipeline, sink, decryptor or None)."""
    if config.redact and on_record is not None:
        from .redact import redacting
        on_record = redacting(on_record)  # every record masked as it leaves, as an Analysis masks them
    sink = Stream(on_record, tables)
    pipe = Pipeline(source, sink, config)
    decryptor = None
    if keylog is not None:
        from .live_decrypt import LiveDecryptor
        decryptor = LiveDecryptor(keylog, config, lambda table, record: getattr(sink, table).put(record))
        for name in TABLES:
            getattr(sink, name).hold = decryptor.take
        pipe.flow_hook = decryptor.closed
    return pipe, sink, decryptor


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
                should_stop: Callable[[], bool] | None = None, keylog: str | None = None, **_ignored) -> dict:
    """The in-process backends (scapy, a tcpdump pipe, tshark): capture and analysis in one loop.

    Kept for interfaces and systems the spool cannot serve; the capture waits whenever
    the analysis does, so bursts beyond its pace are dropped by the kernel (counted).
    """
    config = config or Config()
    pipe, collector, decryptor = live_pipeline(config, on_record, tables, keylog)
    source = open_live(iface, bpf, backend)
    writer = PcapWriter(write, getattr(source, "linktype", 1), rotate_size) if write else None
    decode = pipe.decoder.decode
    reasm = pipe.reassembler
    packet = reasm.packet
    started = time.time()
    deadline = started + duration if duration else None
    frames = 0
    last_sweep = started
    sweep_every = min(10.0, max(1.0, config.limits.idle_timeout / 10))
    interrupted = False
    previous = _stop_on_sigterm()
    # as in Pipeline.process: CPython's cyclic collector rescanning the many long-lived
    # objects of open connections cost more than the analysis itself
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], 50_000), max(thresholds[1], 50), max(thresholds[2], 50))
    try:
        for ts, linktype, data, wirelen in source.frames():
            now = time.time()
            if linktype is not None:
                frames += 1
                if writer is not None:
                    writer.write(ts, data, wirelen)
                seg = decode(ts, linktype, data, wirelen)
                if seg is not None:
                    if decryptor is None:
                        packet(ts, seg)
                    else:
                        decryptor.packet(reasm, ts, seg, linktype, data, wirelen)
            if decryptor is not None:
                decryptor.poll()
            if now - last_sweep >= sweep_every:
                reasm.sweep(now)
                last_sweep = now
            if (deadline is not None and now >= deadline) or (count is not None and frames >= count) \
                    or (should_stop is not None and should_stop()):
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        gc.set_threshold(*thresholds)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        stats = source.stats()
        source.close()
        if hasattr(source, "final_stats"):
            stats.update(source.final_stats())
        if writer is not None:
            writer.close()
    pipe.frames = frames
    pipe.finish(time.time())
    if decryptor is not None:
        decryptor.close()
    return {
        "interface": iface, "backend": source.name, "filter": bpf or "", "seconds": round(time.time() - started, 3),
        "frames": frames, "tcp_segments": pipe.decoder.tcp, "flows": len(collector.flows),
        "sessions": len(collector.sessions), "messages": len(collector.messages),
        "credentials": len(collector.credentials), "anomalies": len(collector.anomalies),
        "loopback_duplicates_dropped": getattr(source, "dropped_outgoing", 0),
        "interrupted": interrupted, "files_written": writer.files if writer else [],
        "tls_decrypted": decryptor.decrypted if decryptor is not None else None, **stats,
    }


def run_live(iface: str, *, bpf: str | None, backend: str = "spool", config: Config | None = None,
             on_record: Callable | None = None, tables=("sessions", "messages"), duration: float | None = None,
             count: int | None = None, write: str | None = None, rotate_size: int | None = None,
             should_stop: Callable[[], bool] | None = None, keylog=None, jobs: int = 1,
             spool_dir: str | None = None, progress: Callable[[dict], None] | None = None, capture=None) -> dict:
    """Capture on ``iface`` until ``duration``/``count``/Ctrl-C/SIGTERM/``should_stop()``, then
    analyse what was captured to its end; returns the summary counters.

    ``keylog``: decrypt each TLS session through tshark when it ends
    (:mod:`maildissect.live_decrypt`). ``progress(counters)`` is called about once a
    second (spool backend). ``spool_dir``: where the spool goes (default: a temporary
    directory, removed at the end).
    """
    if backend != "spool":
        if backend not in BACKENDS:
            raise LiveError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        return _run_inline(iface, bpf=bpf, backend=backend, config=config, on_record=on_record, tables=tables,
                           duration=duration, count=count, write=write, rotate_size=rotate_size,
                           should_stop=should_stop, keylog=keylog)
    from .live_spool import run_spool
    return run_spool(iface, bpf=bpf, config=config or Config(), on_record=on_record, tables=tables,
                     duration=duration, count=count, write=write, rotate_size=rotate_size, should_stop=should_stop,
                     keylog=keylog, jobs=jobs, spool_dir=spool_dir, progress=progress, capture=capture)
