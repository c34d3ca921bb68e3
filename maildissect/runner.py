"""What the one runner, :class:`maildissect.pipeline.Pipeline`, reads from and writes to.

``Pipeline(source, sink, config).run()`` is every way an analysis runs: a
*source* gives frames, the pipeline's one frame loop decodes, reassembles and
dissects them, a *sink* takes the records, and the run returns one
:class:`Stats`.

Sources (each gives ``open(pipeline)`` -> an iterable of frames
``(ts, linktype, data, wirelen)``, None for a frame counted but not handed
over):

- :class:`Files`: capture files merged in time order (pcap, pcapng, gzip, '-');
- :class:`Files` with ``shard=(lo, hi, n)``: the same reading, keeping only the
  connections of hash buckets ``lo``..``hi - 1`` (a ``--jobs`` process's share,
  maildissect.parallel);
- :class:`Bucket`: one Dask bucket's segments, decoded already on the machines that
  read the files, placed at their frame numbers in the whole reading
  (maildissect.distributed);
- a live interface: :class:`maildissect.live.Interface` (read in this process) or
  :class:`maildissect.capture.spool.SpoolReader` (the spool tcpdump fills, followed).

A source may also give its own ``decode`` (segments decoded already), ``closing_ts``
(the time that closes the connections still open) and ``interruptible`` (Ctrl-C ends the
reading like its end); see :meth:`maildissect.pipeline.Pipeline.process`.

Sinks are shaped like a :class:`~maildissect.pipeline.Collector` (one attribute per
table with ``append``/``extend``): the Collector itself (lists: the records of a
whole analysis), :class:`Stream` (each record handed to a callback as it
completes, nothing kept: live capture) and :class:`maildissect.redact.Redacting`,
which wraps either and is the one place records are masked. A sink's ``records``
is the Collector that ends up holding them (the sink itself, or the wrapped one);
``close()`` is called once the records are whole (after a ``--jobs`` or Dask merge).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Callable, Iterable

from .capture.files import FrameOrigins, read_batches
from .capture.sharding import shard_of

#: the tables a sink has, in the order records are listed
TABLES = ("flows", "sessions", "commands", "messages", "credentials", "anomalies", "http", "mailboxes")


# -- stats ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Stats(Mapping):
    """What a run read: one object for every run mode, merged by the ``--jobs`` and Dask merges.

    Read like the dict it replaces (``stats["frames"]``, ``stats.get("first_ts")``,
    ``"tls_decrypted" in stats``): the keys are the fields, without those that do not
    apply to the run (``jobs`` on a Dask run, ``scheduler`` and ``tls_decrypted``
    when not used) and without the internal ``secrets``.
    """

    files: list = dataclasses.field(default_factory=list)
    frames: int = 0
    tcp_segments: int = 0
    non_ip: int = 0
    non_tcp: int = 0
    malformed: int = 0
    ip_fragments: int = 0
    linktypes: list = dataclasses.field(default_factory=list)
    jobs: int | None = 1
    scheduler: str | None = None
    first_ts: float | None = None
    last_ts: float | None = None
    tls_decrypted: dict | None = None
    #: bytes of TLS key logs the reading found inside the captures (pcapng secrets blocks)
    secrets: int = dataclasses.field(default=0, repr=False)

    _OPTIONAL = ("jobs", "scheduler", "tls_decrypted")
    _INTERNAL = ("secrets",)
    _COUNTERS = ("frames", "tcp_segments", "non_ip", "non_tcp", "malformed", "ip_fragments", "secrets")

    @classmethod
    def of(cls, pipeline, files) -> "Stats":
        """The counters of one pipeline's reading of ``files``."""
        d = pipeline.decoder
        readers = pipeline.readers
        return cls(files=[str(f) for f in files], frames=pipeline.frames, tcp_segments=d.tcp, non_ip=d.non_ip,
                   non_tcp=d.non_tcp, malformed=d.malformed, ip_fragments=d.fragments,
                   linktypes=sorted({lt for r in readers for lt in r.linktypes}),
                   secrets=sum(r.secrets_bytes for r in readers))

    def add(self, other: "Stats") -> "Stats":
        """Counters of another piece of the capture added (the Dask decode stage: one file each)."""
        for name in self._COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.linktypes = sorted(set(self.linktypes) | set(other.linktypes))
        return self

    @classmethod
    def of_shards(cls, shards: list["Stats"]) -> "Stats":
        """The stats of shards of one reading (``--jobs``): every shard read every frame and
        counted it alike, so the capture's counters are the first shard's."""
        return dataclasses.replace(shards[0], jobs=len(shards))

    def span(self, records) -> "Stats":
        """Set first_ts/last_ts from the flows of the whole run's records."""
        self.first_ts = min((f.start for f in records.flows), default=None)
        self.last_ts = max((f.end for f in records.flows), default=None)
        return self

    # -- read as a mapping -------------------------------------------------------------
    def _keys(self):
        for f in dataclasses.fields(self):
            n = f.name
            if n in self._INTERNAL or (n in self._OPTIONAL and getattr(self, n) is None):
                continue
            yield n

    def __getitem__(self, key):
        if key in self._INTERNAL or not isinstance(key, str) or key.startswith("_") or key not in set(self._keys()):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return self._keys()

    def __len__(self):
        return sum(1 for _ in self._keys())

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._keys()}


# -- sources --------------------------------------------------------------------------------

class Files:
    """Capture files merged in time order; with ``shard=(lo, hi, n)`` only the connections
    of hash buckets ``lo``..``hi - 1`` of ``n`` (the reader skips a single pcap file's
    frames of other shards before copying them)."""

    def __init__(self, paths: Iterable[str], shard: tuple[int, int, int] | None = None,
                 names: Iterable[str] | None = None):
        self.paths = [str(p) for p in paths]
        self.shard = shard
        #: what rows' file column says (standard input read from a copy is still '-')
        self.names = [str(n) for n in names] if names is not None else self.paths
        self.readers: list = []

    def open(self, pipeline) -> Iterable:
        lim = pipeline.config.limits
        pipeline.origins = FrameOrigins(self.names)
        batches = read_batches(self.paths, lim.max_frame, self.readers, self.shard, lim.max_capture_secrets,
                               pipeline.origins)
        pipeline.readers = self.readers
        # frames come in per-block lists; chaining them costs no Python step per frame
        return itertools.chain.from_iterable(batches)

    def position(self) -> tuple[int, int]:
        """(bytes read, bytes in all) for progress."""
        return sum(r.position() for r in self.readers), self.total()

    def total(self) -> int:
        return sum(r.size or 0 for r in self.readers)

    def last_ts(self, seen: float | None) -> float | None:
        """The reading's last time when its last frames were skipped as another shard's."""
        return self.readers[0].last_ts if self.readers else seen

    def stats(self, pipeline) -> Stats:
        return Stats.of(pipeline, self.names)


def _given(ts, linktype, seg, wirelen):
    """The 'decoder' of a source whose segments are decoded already."""
    return seg


class Bucket:
    """One Dask bucket: segments ``(ts, file_index, frame, seg)`` from every file, decoded
    where the files were read, placed at their frame numbers in the whole reading (file
    ``i``'s frames follow ``offsets[i]`` frames of the files before it), so that
    connections and records are numbered as one process numbers them."""

    shard = None
    decode = staticmethod(_given)

    def __init__(self, parts: list[list], offsets: dict[int, int]):
        self.segments = [s for part in parts for s in part]
        self.segments.sort(key=lambda s: offsets[s[1]] + s[2])
        self.offsets = offsets
        self._last = None

    def open(self, pipeline) -> Iterable:
        return self._frames()

    def _frames(self):
        offsets = self.offsets
        at = 0  # frame numbers handed on so far
        repeat = itertools.repeat
        for ts, file_index, frame, seg in self.segments:
            number = offsets[file_index] + frame
            if number > at + 1:
                yield from repeat(None, number - at - 1)  # other buckets' frames
            at = number
            self._last = ts
            yield ts, 0, seg, 0

    def position(self) -> tuple[int, int]:
        return 0, 0

    def last_ts(self, seen: float | None) -> float | None:
        return self._last

    def stats(self, pipeline) -> Stats:
        # the frames were counted where they were decoded (maildissect.distributed.decode_file)
        return Stats(jobs=None)


class Buckets:
    """Where a Dask decode stage's segments go instead of the reassembler: into ``n``
    buckets by connection (the endpoint hash of maildissect.capture.sharding), each
    kept with its file and frame number. Shaped like the reassembler as the frame
    loop sees it (``frame``, ``packet``, ``finish``, ``anomalies``)."""

    def __init__(self, n: int, file_index: int):
        self.buckets: list[list] = [[] for _ in range(n)]
        self.n = n
        self.file_index = file_index
        self.frame = 0
        self.anomalies: list = []

    def packet(self, ts, seg):
        self.buckets[shard_of((seg[1][-1] << 16) | seg[3], (seg[2][-1] << 16) | seg[4], self.n)].append(
            (ts, self.file_index, self.frame, seg))

    def finish(self, ts=None):
        pass


# -- sinks ----------------------------------------------------------------------------------

class _Table:
    """A table of a :class:`Stream`: forwards records instead of keeping them.

    ``hold(table, record)``, when set, sees each record first and may keep it back
    (live TLS decryption replaces encrypted sessions); :meth:`put` passes a record on
    without asking.
    """

    __slots__ = ("table", "callback", "count", "hold")

    def __init__(self, table: str, callback):
        self.table = table
        self.callback = callback
        self.count = 0
        self.hold = None

    def append(self, record):
        if self.hold is not None and self.hold(self.table, record):
            return
        self.put(record)

    def put(self, record):
        self.count += 1
        if self.callback is not None:
            self.callback(self.table, record)

    def extend(self, records):
        for r in records:
            self.append(r)

    def __len__(self):
        return self.count


class Stream:
    """A sink that hands each record of ``tables`` to ``on_record(table, record)`` as it
    completes and keeps none (the others are counted)."""

    def __init__(self, on_record: Callable | None, tables=("sessions", "messages")):
        for name in TABLES:
            setattr(self, name, _Table(name, on_record if name in tables else None))

    @property
    def records(self):
        return self

    def hook(self, callback, record_at: int = -1):
        return callback

    def close(self):
        pass

    def counts(self) -> dict:
        """Records that went through, per table (the summary of a live run)."""
        return {name: getattr(self, name).count for name in ("flows", "sessions", "messages", "credentials",
                                                              "anomalies")}
