"""Live capture into a bounded spool of rotating pcap files, analysed as they fill.

A sensor must never make the capturer wait for the analysis: a burst that the
analysis cannot follow at once has to land somewhere other than the kernel's
buffer, or the kernel drops it. So capturing and analysing are two programs,
as in Zeek's and Suricata's sensors:

- **tcpdump** (C, libpcap, a TPACKET_V3 ring with ``-B`` bytes of kernel
  buffer) writes everything the filter passes into ``live.pcap``,
  ``live.pcap1``, ``live.pcap2``... in the spool directory, a new file every
  ``live_spool_file`` bytes (``-C``). It never waits for Python.
- the analysis (one or more processes, maildissect.live) reads those files in
  order, behind the capture: each complete file whole, the one being written
  as it grows (:class:`FollowStream`), and deletes what every analysing
  process has read.
- the spool is bounded (``max_live_spool``): when the analysis falls that far
  behind, the oldest files nobody has started reading are deleted, and their
  packets and bytes are counted as spool drops (never a silent loss).

Shared state between the processes (a :class:`SpoolState`) says which file
each analysing process reads and below which file everything is gone; it is
changed under one lock, so a file is never dropped while a process opens it.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import threading
import time

from .files import CaptureReader
from .live import LiveError, _check_interface

#: the first spool file; tcpdump -C names the next ones live.pcap1, live.pcap2...
SPOOL_NAME = "live.pcap"
_SPOOL_FILE = re.compile(r"^live\.pcap(\d*)$")

#: how long a caught-up reader waits before looking at the file again
POLL = 0.02

_PR_SET_PDEATHSIG = 1


def spool_path(directory: str, index: int) -> str:
    return os.path.join(directory, SPOOL_NAME + (str(index) if index else ""))


def spool_files(directory: str) -> dict[int, str]:
    """The spool files present: index -> path."""
    out = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        m = _SPOOL_FILE.match(name)
        if m:
            out[int(m.group(1) or 0)] = os.path.join(directory, name)
    return out


def die_with_parent(sig=signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no orphan keeps
    capturing or analysing after a ``kill -9`` of maildissect)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def count_packets(path: str) -> tuple[int, int]:
    """(packets, bytes) of a classic pcap file, from its record headers alone."""
    packets = 0
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(24)
            if len(head) < 24:
                return 0, size
            endian = "<" if head[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
            unpack = struct.Struct(endian + "8xI4x").unpack
            pos = 24
            while pos + 16 <= size:
                f.seek(pos)
                rec = f.read(16)
                if len(rec) < 16:
                    break
                packets += 1
                pos += 16 + unpack(rec)[0]
            return packets, size
    except OSError:
        return packets, 0


class SpoolState:
    """What the capturing parent and the analysing processes share (fork-inherited)."""

    def __init__(self, ctx, jobs: int):
        self.lock = ctx.Lock()
        # per analysing process: the spool file it reads (-1: none yet), frames read,
        # bytes read of that file, the time of the last frame read
        self.position = ctx.Array("q", [-1] * jobs, lock=False)
        self.frames = ctx.Array("q", [0] * jobs, lock=False)
        self.offset = ctx.Array("q", [0] * jobs, lock=False)
        self.last_ts = ctx.Array("d", [0.0] * jobs, lock=False)
        self.finished = ctx.Array("b", [0] * jobs, lock=False)
        #: files below this index are gone (analysed by all, or dropped)
        self.floor = ctx.Value("q", 0, lock=False)
        #: 1 once the capturer has exited: no file grows any more
        self.done = ctx.Value("b", 0, lock=False)
        #: 1 once the analysis may start reading (the capturer is ready)
        self.go = ctx.Value("b", 0, lock=False)


class TcpdumpSpool:
    """tcpdump writing the spool; its statistics from its own stderr lines."""

    name = "spool"
    linktype = None  # (read from the files)
    #: seconds between asking to stop and stopping tcpdump: libpcap hands a partly filled
    #: TPACKET_V3 block over after tcpdump's 1 s timeout, and what is still in the ring when
    #: tcpdump exits is lost uncounted (44 packets of a 100,000 packets/s replay stopped at
    #: its end, before this wait)
    drain = 1.1

    def __init__(self, iface: str, bpf: str | None, directory: str, file_size: int, buffer_size: int,
                 count: int | None = None):
        _check_interface(iface)
        exe = shutil.which("tcpdump")
        if exe is None:
            raise LiveError("tcpdump is not installed (apt-get install tcpdump); it is the capturer of the "
                            "spool backend (or use --backend scapy)")
        self.directory = directory
        # -U: each packet goes to the file as it is captured (not when tcpdump's 64 KiB
        # buffer fills), so the last packets of a quiet link are analysed at once
        args = [exe, "-i", iface, "-n", "-U", "-s", "0", "-B", str(max(1, buffer_size // 1024)),
                "-C", str(max(1, -(-file_size // 1_000_000))), "-w", spool_path(directory, 0)]
        if os.geteuid() == 0:
            args += ["-Z", "root"]  # keep writing into our spool directory (tcpdump drops to its own user)
        if count:
            args += ["-c", str(count)]
        if bpf:
            args.append(bpf)
        self.args = args
        self.lines: list[str] = []
        self._stats = {}
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True,
                                         preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        except OSError as e:
            raise LiveError(f"cannot run tcpdump: {e.strerror or e}") from None
        # tcpdump says "listening on IFACE" once the capture is open, or why it is not
        fd = self.proc.stderr.fileno()
        deadline = time.time() + 10.0
        first = b""
        while b"\n" not in first and time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                first += chunk
            elif self.proc.poll() is not None:
                break
        text = first.decode(errors="replace")
        if "listening on" not in text:
            self.proc.kill()
            self.proc.wait()
            rest = self.proc.stderr.read().decode(errors="replace")
            err = [line for line in (text + rest).splitlines() if line.strip()]
            msg = err[-1] if err else "no output"
            if "permission to capture" in msg or "not permitted" in msg.lower():
                raise LiveError(f"capturing needs root, or: sudo setcap cap_net_raw,cap_net_admin=eip {exe}")
            raise LiveError(f"tcpdump: {msg}")
        self.lines.extend(text.splitlines())
        self._reader = threading.Thread(target=self._read_stderr, daemon=True, name="tcpdump-stderr")
        self._reader.start()

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            del self.lines[:-50]  # (bounded: tcpdump prints a few lines per statistics request)
            self._parse(line)

    def _parse(self, line: str) -> None:
        # at the end, a line each ("N packets captured"); on SIGUSR1, one line
        # ("tcpdump: N packets captured, M packets received by filter, K packets dropped by kernel")
        for m in re.finditer(r"(\d+) packets? (captured|received by filter|dropped by kernel)", line):
            key = {"captured": "captured", "received by filter": "kernel_packets",
                   "dropped by kernel": "kernel_drops"}[m.group(2)]
            self._stats[key] = int(m.group(1))

    def running(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        """Whether the analysis may follow now (tcpdump: at once)."""
        return True

    def request_stats(self) -> None:
        """Ask tcpdump for its counters (SIGUSR1: it prints them on stderr)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGUSR1)
            except OSError:
                pass

    def stats(self) -> dict:
        return dict(self._stats)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop capturing: tcpdump flushes its last file, prints its statistics, exits."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5.0)

    def failure(self) -> str | None:
        """tcpdump's last error line, when it ended on its own with an error."""
        code = self.proc.poll()
        if code in (None, 0):
            return None
        errors = [line for line in self.lines if line and not line[0].isdigit() and "listening on" not in line]
        return errors[-1] if errors else f"tcpdump exited with status {code}"


class FollowStream:
    """A spool file read as it grows: ``read`` returns what is there, waits while the file
    may still grow, and returns b"" once it is complete (the next file exists, or the
    capturer has ended) and read to its end.

    ``idle()`` is called while waiting (the analysis times idle connections out, and
    hands on decrypted sessions, while the wire is quiet).
    """

    def __init__(self, path: str, index: int, state: SpoolState, idle=None, name: str | None = None):
        self.f = open(path, "rb", buffering=0)
        self.path = path
        self.index = index
        self.state = state
        self.idle = idle
        self.name = name or path
        self.read_bytes = 0

    def _complete(self) -> bool:
        st = self.state
        # the next file exists (tcpdump moved on), or it was dropped already (the floor passed it)
        return bool(st.done.value) or st.floor.value > self.index + 1 or \
            os.path.exists(spool_path(os.path.dirname(self.path), self.index + 1))

    def read(self, n: int = -1) -> bytes:
        size = n if n and n > 0 else 1 << 20
        while True:
            data = self.f.read(size)
            if data:
                self.read_bytes += len(data)
                return data
            if self._complete():
                # tcpdump closed this file before it opened the next: what it wrote is there now
                data = self.f.read(size)
                self.read_bytes += len(data)
                return data
            if self.idle is not None:
                self.idle()
            time.sleep(POLL)

    def close(self) -> None:
        self.f.close()


class SpoolReader:
    """The frames of the spool's files in order, for one analysing process (``slot``).

    Shaped as a source of the pipeline's frame loop: ``open(pipeline)`` gives the frames
    (None for another shard's frame that the reader skipped), ``shard`` is this process's
    share of the connection hash buckets (maildissect.capture.sharding).
    """

    def __init__(self, directory: str, state: SpoolState, slot: int, shard=None, max_frame: int = 262_144,
                 idle=None, batch=None):
        self.directory = directory
        self.state = state
        self.slot = slot
        self.shard = shard
        self.max_frame = max_frame
        self.idle = idle
        self.batch = batch  # called between batches of frames (progress, polling)
        self.wrap = None  # what the frames pass through before the frame loop (live --keylog)
        self.reader: CaptureReader | None = None
        self._last = None
        self.files = 0

    def _next_file(self, current: int):
        """Open the file after ``current`` (or the first not dropped); None when there is none yet."""
        st = self.state
        with st.lock:
            nxt = max(current + 1, st.floor.value)
            try:
                f = FollowStream(spool_path(self.directory, nxt), nxt, st, self.idle,
                                 name=f"{SPOOL_NAME}{nxt or ''}")
            except FileNotFoundError:
                return nxt, None
            st.position[self.slot] = nxt
            st.offset[self.slot] = 0
            return nxt, f

    def open(self, pipeline):
        # frames come in per-block lists; chaining them costs no Python step per frame
        frames = itertools.chain.from_iterable(self._frames(pipeline))
        return self.wrap(frames) if self.wrap is not None else frames

    def _frames(self, pipeline):
        st = self.state
        slot = self.slot
        current = -1
        frames = 0
        while not st.go.value:
            if self.idle is not None:
                self.idle()
            time.sleep(POLL)
        while True:
            nxt, stream = self._next_file(current)
            if stream is None:
                if st.done.value and not any(i >= nxt for i in spool_files(self.directory)):
                    return
                if self.idle is not None:
                    self.idle()
                time.sleep(POLL)
                continue
            current = nxt
            self.files += 1
            try:
                reader = CaptureReader.from_stream(stream, stream.name, self.max_frame)
            except Exception as e:  # (CaptureError: a file cut before its header, tcpdump killed)
                stream.close()
                pipeline.collector.anomalies.append(_capture_anomaly(stream.name, str(e)))
                continue
            reader.shard = self.shard
            pipeline.readers[:] = [reader]  # (one at a time: memory does not grow with the files read)
            self.reader = reader
            for batch in reader.batches():
                frames += len(batch)
                yield batch
                st.frames[slot] = frames
                st.offset[slot] = stream.read_bytes
                for frame in reversed(batch):  # (None: another shard's frame)
                    if frame is not None:
                        st.last_ts[slot] = frame[0]
                        break
                if self.batch is not None:
                    self.batch()
            self._last = reader.last_ts or self._last
            # A closed connection's router, dissector and buffers are reference cycles, and
            # the frame loop makes the cyclic collector run rarely: without a full collection
            # now and then, closed sessions' buffers pile up (a process's memory tripled over
            # a few minutes of capture). One per spool file costs about 10 ms per 16 MB.
            gc.collect()
            for a in reader.anomalies:
                pipeline.collector.anomalies.append(a)
            reader.anomalies = []
            st.frames[slot] = frames

    def position(self) -> tuple[int, int]:
        return 0, 0

    def last_ts(self, seen):
        return self._last if self._last is not None else seen

    def stats(self, pipeline):
        from ..runner import Stats
        return Stats.of(pipeline, [self.directory])


def _capture_anomaly(name: str, detail: str):
    from ..model import Anomaly
    return Anomaly(time.time(), None, "", "capture_truncated_record", f"{name}: {detail}"[:300])


class SpoolKeeper:
    """The capturing side's care of the spool: deletes what every analysing process has
    read, and when the spool passes ``limit`` bytes drops the oldest complete files that
    no process has started, counting their packets and bytes."""

    def __init__(self, directory: str, state: SpoolState, limit: int):
        self.directory = directory
        self.state = state
        self.limit = limit
        self.dropped_files = 0
        self.dropped_packets = 0
        self.dropped_bytes = 0
        self.size = 0  # bytes in the spool at the last look
        self.analysed_files = 0

    def tend(self, protect=None) -> list[tuple[str, int, int]]:
        """One look at the spool; returns the files dropped now: (name, packets, bytes).

        ``protect(index)``: True for a file that must not go yet (not copied to -w's file)."""
        st = self.state
        dropped = []
        with st.lock:
            files = spool_files(self.directory)
            positions = list(st.position)
            low = min(positions)
            for i in sorted(files):
                if protect is not None and protect(i):
                    continue
                if i < low:  # read by every process
                    self._remove(files.pop(i))
                    self.analysed_files += 1
            if low > st.floor.value:
                st.floor.value = low
            sizes = {}
            for i, path in files.items():
                try:
                    sizes[i] = os.path.getsize(path)
                except OSError:
                    sizes[i] = 0
            total = sum(sizes.values())
            if total > self.limit and files and not st.done.value:
                writing = max(files) if not st.done.value else None
                started = max(positions)
                for i in sorted(files):
                    if total <= self.limit:
                        break
                    if i <= started:
                        continue  # being read
                    if i == writing or (protect is not None and protect(i)):
                        break  # being written (or not yet copied): the files after it stay too

                    packets, size = count_packets(files[i])
                    self._remove(files[i])
                    total -= sizes[i]
                    st.floor.value = max(st.floor.value, i + 1)
                    self.dropped_files += 1
                    self.dropped_packets += packets
                    self.dropped_bytes += size
                    dropped.append((os.path.basename(files[i]), packets, size))
            self.size = total
        return dropped

    def backlog(self) -> tuple[int, int]:
        """(bytes, files) captured and not yet read by the slowest analysing process."""
        st = self.state
        files = spool_files(self.directory)
        slowest = min(range(len(st.position)), key=lambda k: (st.position[k], st.offset[k]))
        low, offset = st.position[slowest], st.offset[slowest]
        total = 0
        count = 0
        for i, path in files.items():
            if i < low:
                continue
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            # (a file's 24-byte pcap header is no backlog)
            total += max(0, size - max(24, offset if i == low else 0))
            count += 1
        return max(0, total), count

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
