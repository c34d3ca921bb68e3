"""The public analysis API: ``analyze(paths) -> Analysis`` with its DataFrames."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:  # imported when a table is first built
    import pandas as pd

from . import frames, parallel
from .config import Config, Limits
from .pipeline import Collector, Pipeline, place_frames
from .runner import Files, Stats

TABLES = tuple(frames.SCHEMAS)


class AnalysisError(Exception):
    """The analysis cannot run as asked (one-line message)."""


class Analysis:
    """Everything found in one or more captures.

    DataFrames (built on first access): ``flows``, ``sessions``, ``commands``,
    ``messages``, ``attachments``, ``files``, ``credentials``, ``anomalies``, ``http``,
    ``mailboxes``, and derived from them ``events`` (the timeline),
    ``journeys`` and ``hops`` (messages followed across hops). The
    underlying records are in ``records`` (a Collector); ``stats`` holds
    capture counters. docs/data.md explains every column.
    """

    def __init__(self, collector: Collector, config: Config, stats: Stats | dict, whole: bool = False):
        if not whole:
            # records made elsewhere (a Dask run's collector): made whole here as analyze() does
            sink = make_sink(config, collector)
            close_records(sink)
            collector = sink.records
        self.records = collector
        self.config = config
        self.stats = stats

    def table(self, name: str, keep: bool = True) -> pd.DataFrame:
        """A table by name (``Analysis.table("messages")``). ``keep=False`` builds it
        without keeping it on the Analysis (exports write tables one at a time, so
        only one is in memory at once)."""
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        if not keep and name not in self.__dict__:
            return self._frame(name)
        return getattr(self, name)

    def select(self, name: str, criteria=None, **options) -> pd.DataFrame:
        """The rows of a table that filters keep, with the meaning they have on the command
        line (:func:`maildissect.filters.select`): ``a.select("commands", from_="carol",
        since="2024-05-01", host="10.0.0.0/8", where="latency > 1")``."""
        from .filters import select
        return select(self, name, criteria, **options)

    def _records(self, name: str) -> list:
        if name == "attachments":
            return frames.attachment_rows(self._records("messages"))
        if name == "files":
            return frames.file_rows(self.records)
        if name == "events":
            return self.event_records
        if name in ("journeys", "hops"):
            return getattr(self.journey_records, name)
        return frames.sort_records(name, getattr(self.records, name))

    def _frame(self, name: str) -> pd.DataFrame:
        return frames.frame(name, self._records(name))

    @cached_property
    def flows(self) -> pd.DataFrame:
        return self._frame("flows")

    @cached_property
    def sessions(self) -> pd.DataFrame:
        return self._frame("sessions")

    @cached_property
    def commands(self) -> pd.DataFrame:
        return self._frame("commands")

    @cached_property
    def messages(self) -> pd.DataFrame:
        return self._frame("messages")

    @cached_property
    def attachments(self) -> pd.DataFrame:
        return self._frame("attachments")

    @cached_property
    def files(self) -> pd.DataFrame:
        """Every MIME leaf entity of every message and every file carried over HTTP, with hashes."""
        return self._frame("files")

    @cached_property
    def credentials(self) -> pd.DataFrame:
        return self._frame("credentials")

    @cached_property
    def anomalies(self) -> pd.DataFrame:
        return self._frame("anomalies")

    @cached_property
    def http(self) -> pd.DataFrame:
        return self._frame("http")

    @cached_property
    def mailboxes(self) -> pd.DataFrame:
        return self._frame("mailboxes")

    @cached_property
    def event_records(self) -> list:
        """The timeline as :class:`maildissect.timeline.Event` records, in time order."""
        from .timeline import build_events
        return build_events(self.records, self.journey_records)

    @cached_property
    def journey_records(self):
        """Message journeys as a :class:`maildissect.correlate.Journeys` (``.journeys``, ``.hops``)."""
        from .correlate import correlate
        return correlate(self.records)

    @cached_property
    def events(self) -> pd.DataFrame:
        """The timeline: one row per meaningful event across protocols (docs/report.md)."""
        return self._frame("events")

    @cached_property
    def journeys(self) -> pd.DataFrame:
        """One row per message followed across hops (see ``hops`` for the hops themselves)."""
        return self._frame("journeys")

    @cached_property
    def hops(self) -> pd.DataFrame:
        """One row per hop of every journey, in order."""
        return self._frame("hops")

    def __repr__(self) -> str:
        r = self.records
        return (f"<Analysis {self.stats.get('frames', 0)} frames, {len(r.flows)} flows, "
                f"{len(r.sessions)} sessions, {len(r.messages)} messages>")


def make_config(limits: dict | Limits | None = None, **options) -> Config:
    """A Config from keyword options (``redact``, ``keep_bodies``, ``strict``, ``ports``) and limits."""
    if isinstance(limits, Limits):
        lim = limits
    else:
        lim = Limits().updated(**(limits or {}))
    unknown = set(options) - {"redact", "keep_bodies", "strict", "ports", "dissect"}
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return Config(limits=lim, **options)


def make_sink(config: Config, collector: Collector | None = None):
    """The sink an analysis collects into: lists, masked once whole when ``config.redact``
    (maildissect.redact.Redacting, the one place records are masked)."""
    sink = collector if collector is not None else Collector()
    if config.redact:
        from .redact import Redacting
        sink = Redacting(sink)
    return sink


def close_records(sink) -> None:
    """The run's records are whole: webmail reads and downloads take what the webmail
    server's own IMAP fetches show (maildissect.webmail_backend), then the sink closes
    (masking them under ``redact``), before any table or export is made from them."""
    from .webmail_backend import fill
    fill(sink.records)
    sink.close()


def analyze(paths: str | Iterable[str], *, limits: dict | Limits | None = None,
            progress: Callable[[int, int], None] | None = None,
            message_hook: Callable | None = None, jobs: int = 1, scheduler: str | None = None,
            keylog: str | Iterable[str] | None = None, file_hook: Callable | None = None, **options) -> Analysis:
    """Analyse capture files (pcap, pcapng, gzip; '-' for stdin), merged in time order.

    Options: ``redact`` (mask secrets), ``keep_bodies`` (keep raw messages and
    attachment bytes on the records), ``strict`` (raise on the first anomaly),
    ``dissect`` (False: TCP and protocol detection only, for the flows table),
    ``ports`` ({port: protocol} added to the port map), ``limits``
    ({name: value}, see docs/limits.md). ``keylog``: an NSS key log
    (SSLKEYLOGFILE format), or a list of them; TLS connections they have keys
    for are decrypted with tshark and their plaintext dissected like any other
    (one process; see docs/protocols/tls.md). Key logs a pcapng capture carries
    (Decryption Secrets Blocks) are used as if given here. ``message_hook`` is
    called with each Message as it completes and ``file_hook(request, session)``
    with each HttpRequest that carries files (with ``keep_bodies`` their bytes are on the
    records only during the call: extraction); either one runs the analysis in
    one process. Raises
    :class:`maildissect.capture.files.CaptureError` for a file that is not a
    capture, :class:`AnalysisError` when decryption cannot run (no tshark, a
    file that is not a key log).
    """
    if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__"):
        paths = [paths]
    paths = [str(p) for p in paths]
    config = make_config(limits, **options)
    keylogs = _keylogs(keylog)
    secrets = b""
    if config.dissect:  # (the flows table reads no content: nothing to decrypt)
        secrets = capture_secrets(paths, config)
        if keylogs and scheduler is not None:
            raise AnalysisError("TLS decryption (--keylog) runs on one machine; drop --scheduler")
        if (keylogs or secrets) and scheduler is None:
            return analyze_decrypted(paths, keylogs, config, progress, message_hook, file_hook, secrets)
    hooks = message_hook is not None or file_hook is not None
    sink = make_sink(config)
    if scheduler is not None:
        if hooks:
            raise AnalysisError("extraction runs on one machine; drop --scheduler")
        _, stats = _run_scheduler(paths, config, scheduler, sink)
        stats.files, stats.jobs, stats.scheduler = list(paths), None, scheduler
        stats.span(sink.records)
        if secrets:
            sink.records.anomalies.append(_secrets_unused("TLS decryption runs on one machine: drop --scheduler"))
        return _whole(sink, config, stats)
    if not hooks and parallel.worth_parallel(paths, jobs):
        _, stats = parallel.run_parallel(paths, config, jobs, progress, sink)
    else:
        pipe = Pipeline(Files(paths), sink, config, message_hook=message_hook, file_hook=file_hook)
        stats = pipe.run(progress)
        place_frames(sink.records, pipe.origins)
    stats.span(sink.records)
    if stats.secrets and config.dissect:
        # key logs after the first packets of a capture (rare: editcap puts them first)
        if "-" not in paths and not hooks:
            return analyze_decrypted(paths, keylogs, config, progress, message_hook, file_hook, b"")
        sink.records.anomalies.append(_secrets_unused(
            "read from standard input, whose first packets carried none: read the file instead" if "-" in paths
            else "they come after the first packets, found while extracting: run again to extract the decrypted mail"))
    return _whole(sink, config, stats)


def _whole(sink, config: Config, stats: Stats) -> Analysis:
    """The Analysis of a run whose records are all in ``sink``."""
    close_records(sink)
    return Analysis(sink.records, config, stats, whole=True)


def _keylogs(keylog) -> list[str]:
    """``keylog`` as a list of paths (None, one path, or several)."""
    if keylog is None:
        return []
    if isinstance(keylog, (str, bytes)) or hasattr(keylog, "__fspath__"):
        return [str(keylog)]
    return [str(k) for k in keylog]


def capture_secrets(paths: list[str], config: Config) -> bytes:
    """The TLS key logs carried before the first packets of pcapng ``paths`` (their
    Decryption Secrets Blocks), joined; standard input is not read ahead."""
    from .capture.files import CaptureReader
    found = []
    for p in paths:
        if p == "-":
            continue
        found.append(CaptureReader(p, config.limits.max_frame,
                                   max_secrets=config.limits.max_capture_secrets).leading_secrets())
    return b"".join(found)


def _secrets_unused(why: str):
    from .model import Anomaly
    return Anomaly(None, None, "", "capture_secrets_unused", f"TLS key logs inside the capture not used: {why}")


def analyze_decrypted(paths: list[str], keylogs: list[str], config: Config, progress=None, message_hook=None,
                      file_hook=None, secrets: bytes = b"") -> Analysis:
    """Analyse with tshark's decryption spliced in (maildissect.decrypt), in one process.

    ``keylogs``: key log files; ``secrets``: key log text taken from the capture
    itself (tshark reads those too; they are added so that captures merged by
    mergecap keep them)."""
    import os
    import shutil
    import sys
    import tempfile

    from . import decrypt
    from .capture.files import CaptureReader
    stdin_copy = None
    given = list(paths)
    try:
        if "-" in paths:
            # tshark and the pipeline both read the capture: keep standard input in a file
            fd, stdin_copy = tempfile.mkstemp(prefix="maildissect-stdin-", suffix=".pcap")
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
            paths = [stdin_copy if p == "-" else p for p in paths]
        for p in paths:  # a file that is not a capture: our own message, before tshark's
            CaptureReader(p, config.limits.max_frame).close()
        try:
            decryption = decrypt.Decryption.run(paths, keylogs, secrets=secrets)
        except decrypt.DecryptError as e:
            raise AnalysisError(str(e)) from None
        with decryption:
            sink = make_sink(config)
            pipe = Pipeline(Files(paths, names=given), sink, config, message_hook=message_hook, file_hook=file_hook)
            pipe.decryption = decryption
            stats = pipe.run(progress)
            records = sink.records
            for a in records.anomalies:
                if stdin_copy is not None and a.file == stdin_copy:
                    a.file = "-"
            place_frames(records, pipe.origins)
            records.anomalies.extend(decryption.capture_anomalies())
            stats.span(records)
            stats.tls_decrypted = {"streams": decryption.streams, "records": decryption.records,
                                   "bytes": decryption.bytes,
                                   "sessions": sum(1 for s in records.sessions if s.decrypted),
                                   "keylogs": list(keylogs), "capture_secrets": stats.secrets}
        return _whole(sink, config, stats)
    finally:
        if stdin_copy is not None:
            try:
                os.unlink(stdin_copy)
            except OSError:
                pass


def _run_scheduler(paths, config, scheduler: str, sink=None):
    """Run on Dask: "local" starts a LocalCluster, "inprocess" runs the stages here, else an address."""
    from . import distributed
    if scheduler == "inprocess":
        return distributed.run_local(paths, config, sink=sink)
    if scheduler == "local":
        return distributed.run_dask(paths, config, sink=sink)
    try:
        from dask.distributed import Client
    except ImportError:
        raise AnalysisError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from None
    try:
        client = Client(scheduler, timeout=10)
    except OSError as e:
        raise AnalysisError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
    try:
        return distributed.run_dask(paths, config, client, sink=sink)
    finally:
        client.close()


def read_flows(paths: str | Iterable[str], *, limits: dict | Limits | None = None, jobs: int = 1) -> list:
    """The TCP connections of captures as :class:`maildissect.model.Flow` records.

    Each has its endpoints, packet and byte counts, the sha256 of each
    direction's reassembled bytes, gaps, close reason and detected protocol.
    """
    return sorted(analyze(paths, limits=limits, dissect=False, jobs=jobs).records.flows, key=lambda f: f.flow_id)
