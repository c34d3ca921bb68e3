"""Reading capture files: pcap, pcapng, gzip-compressed, stdin.

The readers yield raw frames as plain tuples ``(ts, linktype, data, wirelen)``
and never build packet objects: this is the fast path DESIGN.md asks for
(scapy's RawPcapReader reads ~380k frames/s here; this reader, which also
reports truncation and corrupt lengths, is faster because it parses records
out of 1 MiB blocks with ``struct.unpack_from``).

Damage is never fatal once a file has been recognised: a truncated last record,
a record length beyond the limit or a bad pcapng block ends the file with a
capture anomaly (kept in ``reader.anomalies``) and everything read before it
is kept. A file that is not a capture raises :class:`CaptureError` with a
one-line message.
"""

from __future__ import annotations

import gzip
import heapq
import io
import itertools
import os
import struct
import sys
import zlib
from typing import BinaryIO, Iterator

from ..model import Anomaly
from .sharding import MIN_FIXED, frame_shard

ANOMALIES = {
    "capture_truncated_record": "the file ends inside a record header or packet; the partial record is dropped",
    "capture_bad_record_length": "a record declares an impossible length (corrupt file); reading stops there",
    "capture_snaplen_cut": "packets were cut by the capture's snapshot length (count in detail); their missing bytes show as TCP gaps",
    "capture_bad_block": "a pcapng block is malformed; reading stops there",
    "capture_unknown_interface": "a pcapng packet names an interface that was not described; the packet is skipped",
    "capture_unsorted": "timestamps go backwards in a file (count in detail); frames are processed in file order",
    "capture_secrets_too_large": "pcapng Decryption Secrets Blocks held more TLS key log bytes than "
                                 "limits.max_capture_secrets; the rest are not used",
    "capture_secrets_unused": "the capture carries TLS key logs (pcapng Decryption Secrets Blocks) that could not be "
                              "used (the detail says why)",
}

#: pcapng Decryption Secrets Block type, and the secrets type of an NSS TLS key log in it
_PCAPNG_DSB = 0x0000000A
_SECRETS_TLS = 0x544C534B  # "TLSK"


BLOCK = 1 << 20  # bytes read from the file at a time

# pcap magic numbers as read little-endian
_PCAP_MAGICS = {
    0xA1B2C3D4: ("<", 1e-6),
    0xD4C3B2A1: (">", 1e-6),
    0xA1B23C4D: ("<", 1e-9),
    0x4D3CB2A1: (">", 1e-9),
}
_PCAPNG_SHB = 0x0A0D0D0A
#: smallest valid total length of the pcapng blocks whose fixed fields are read
#: (interface description, obsolete packet, simple packet)
_PCAPNG_MIN_BLOCK = {1: 20, 2: 32, 3: 16}

Frame = tuple  # (ts: float, linktype: int, data: bytes, wirelen: int)


class CaptureError(Exception):
    """The input is not a readable capture file (one-line message)."""


class _Source:
    """A binary stream plus its size (for progress) and how many bytes were consumed."""

    def __init__(self, name: str, stream: BinaryIO, size: int | None, raw: BinaryIO | None = None):
        self.name = name
        self.stream = stream
        self.size = size
        self.raw = raw or stream  # underlying file: its position tracks compressed progress

    def position(self) -> int:
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self):
        for f in {id(self.stream): self.stream, id(self.raw): self.raw}.values():
            if f is not sys.stdin.buffer:
                try:
                    f.close()
                except OSError:
                    pass


def _open(path: str) -> _Source:
    """Open ``path`` ('-' for stdin), transparently un-gzipping."""
    if path == "-":
        raw = sys.stdin.buffer
        size = None
        name = "<stdin>"
    else:
        try:
            raw = open(path, "rb")
        except OSError as e:
            raise CaptureError(f"{path}: {e.strerror or e}") from None
        try:
            size = os.fstat(raw.fileno()).st_size
        except OSError:
            size = None
        name = path
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)
    try:
        head = buffered.peek(4)[:4]
    except OSError as e:
        raise CaptureError(f"{name}: {e.strerror or e}") from None
    if head[:2] == b"\x1f\x8b":
        return _Source(name, gzip.GzipFile(fileobj=buffered, mode="rb"), size, buffered)
    return _Source(name, buffered, size, buffered)


class CaptureReader:
    """Iterate over the frames of one capture file.

    ``anomalies`` collects capture-level damage; ``linktypes`` the link types
    seen; ``frames`` counts frames yielded; ``snaplen_cut`` counts frames
    shorter than they were on the wire.
    """

    def __init__(self, path: str, max_frame: int = 262_144, stream: BinaryIO | None = None,
                 max_secrets: int = 64 * 1024 * 1024):
        self.path = path
        self.max_frame = max_frame
        #: TLS key logs (NSS key log text) from pcapng Decryption Secrets Blocks, in file order
        self.secrets: list[bytes] = []
        self.secrets_bytes = 0
        self.max_secrets = max_secrets
        self.anomalies: list[Anomaly] = []
        self.linktypes: set[int] = set()
        self.frames = 0
        self.snaplen_cut = 0
        self.unsorted = 0
        #: (lo, hi, n): frames of connections outside buckets lo..hi-1 of n are yielded as None (pcap only)
        self.shard: tuple[int, int, int] | None = None
        #: timestamp of the last frame read
        self.last_ts: float | None = None
        self._pending = 0  # frames of the pcap block being read, not yet added to ``frames``
        if stream is None:
            self._src = _open(path)
            # Regular files are read in whole blocks; pipes as data arrives. A gzip
            # stream is read as it decompresses too: a whole-block read of a truncated
            # stream raises EOFError and loses what it had decompressed of that block.
            streamed = path == "-" or isinstance(self._src.stream, gzip.GzipFile)
            self._read = _reader(self._src.stream) if streamed else self._src.stream.read
        else:
            self._src = _Source(path, stream, None)
            self._read = _reader(stream)
        self.name = self._src.name
        try:
            magic_bytes = self._read_exact(4)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            self._src.close()
            raise CaptureError(f"{self.name}: cannot read: {e}") from None
        if len(magic_bytes) < 4:
            self._src.close()
            raise CaptureError(f"{self.name}: not a capture file (too short)")
        magic = struct.unpack("<I", magic_bytes)[0]
        if magic in _PCAP_MAGICS:
            self.format = "pcap"
            endian, scale = _PCAP_MAGICS[magic]
            rest = self._read_exact(20)
            if len(rest) < 20:
                self._src.close()
                raise CaptureError(f"{self.name}: truncated pcap file header")
            _vmaj, _vmin, _zone, _sigfigs, snaplen, network = struct.unpack(endian + "HHiIII", rest)
            self._iter = self._pcap(endian, scale, snaplen, network & 0x0FFFFFFF)
        elif magic == _PCAPNG_SHB:
            self.format = "pcapng"
            self._iter = self._pcapng(magic_bytes)
        else:
            self._src.close()
            raise CaptureError(f"{self.name}: not a pcap or pcapng capture (magic {magic_bytes.hex()})")

    # -- helpers -----------------------------------------------------------------
    @property
    def size(self) -> int | None:
        return self._src.size

    def position(self) -> int:
        return self._src.position()

    @classmethod
    def from_stream(cls, stream: BinaryIO, name: str, max_frame: int = 262_144) -> "CaptureReader":
        """A reader over an open binary stream (a pipe from tcpdump, say)."""
        return cls(name, max_frame, stream=stream)

    def leading_secrets(self) -> bytes:
        """The TLS key logs a pcapng file carries before its first packets (where
        ``editcap --inject-secrets`` puts them): reads the first batch of frames
        only, then closes the file. b"" for a pcap file or a pcapng without them."""
        if self.format == "pcapng":
            try:
                next(iter(self.batches()), None)
            except (OSError, EOFError, gzip.BadGzipFile, zlib.error):
                pass
        self.close()
        return b"".join(self.secrets)

    def _read_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self._read(n - len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def _anomaly(self, name: str, detail: str, ts: float | None = None):
        # placed in this file already: the last frame read before the damage, numbered in the file
        self.anomalies.append(Anomaly(ts, None, "", name, f"{self.name}: {detail}",
                                      frame=(self.frames + self._pending) or None, file=self.path))

    def close(self):
        self._src.close()

    def __iter__(self) -> Iterator[Frame]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list]:
        """Frames in lists (one per block read): the fast way to consume a file."""
        try:
            yield from self._iter
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
            # A damaged gzip stream or an I/O error mid-file: keep what was read.
            self._anomaly("capture_truncated_record", f"read error after {self.frames} frames: {e}")
        finally:
            if self.snaplen_cut:
                self._anomaly("capture_snaplen_cut", f"{self.snaplen_cut} frames shorter than on the wire")
            if self.unsorted:
                self._anomaly("capture_unsorted", f"{self.unsorted} frames earlier than the one before")
            self.close()

    # -- pcap ----------------------------------------------------------------------
    def _pcap(self, endian: str, scale: float, snaplen: int, linktype: int) -> Iterator[Frame]:
        # (the upper bits of the link-type field may hold FCS information: masked off)
        self.linktypes.add(linktype)
        limit = max(self.max_frame, snaplen if snaplen <= 16 * self.max_frame else 0)
        unpack = struct.Struct(endian + "IIII").unpack_from
        read = self._read
        buf = b""
        pos = 0
        last_ts = 0.0
        # counters live in locals on the per-frame path and are stored on exit
        count = cut = unsorted = 0
        lo, hi, nshards = self.shard or (0, 1, 1)
        skip = nshards > 1 and linktype == 1
        try:
            while True:
                n = len(buf)
                batch = []
                add = batch.append
                while pos + 16 <= n:  # every complete record in the block
                    sec, frac, incl, orig = unpack(buf, pos)
                    end = pos + 16 + incl
                    if end > n or incl > limit:
                        break
                    ts = sec + frac * scale
                    if ts < last_ts:
                        unsorted += 1
                    last_ts = ts
                    if incl < orig:
                        cut += 1
                    if skip and incl >= MIN_FIXED:
                        shard = frame_shard(buf, pos + 16, nshards)
                        if shard >= 0 and not lo <= shard < hi:
                            add(None)
                            pos = end
                            continue
                    add((ts, linktype, buf[pos + 16:end], orig))
                    pos = end
                if batch:
                    count += len(batch)
                    yield batch
                self._pending = count
                if pos + 16 <= n:
                    incl = unpack(buf, pos)[2]
                    if incl > limit:
                        self._anomaly("capture_bad_record_length",
                                      f"record {self.frames + count + 1} declares {incl} bytes (limit {limit}); "
                                      "stopped reading", last_ts)
                        return
                    need = incl + 16
                else:
                    need = 16
                more = read(max(BLOCK, need))
                if not more:
                    left = n - pos
                    if left >= 16:
                        self._anomaly("capture_truncated_record",
                                      f"last record has {left - 16} of {unpack(buf, pos)[2]} bytes", last_ts)
                    elif left:
                        self._anomaly("capture_truncated_record",
                                      f"{left} bytes of a record header at the end of the file", last_ts)
                    return
                buf = buf[pos:] + more
                pos = 0
        finally:
            self._pending = 0
            self.frames += count
            self.snaplen_cut += cut
            self.unsorted += unsorted
            if count:
                self.last_ts = last_ts

    # -- pcapng --------------------------------------------------------------------
    def _pcapng(self, magic_bytes: bytes) -> Iterator[list]:
        frames = self._pcapng_frames(magic_bytes)
        while True:
            batch = list(itertools.islice(frames, 1024))
            if not batch:
                return
            yield batch

    def _pcapng_frames(self, magic_bytes: bytes) -> Iterator[Frame]:
        read = self._read
        buf = magic_bytes + (read(BLOCK) or b"")
        pos = 0
        endian = "<"
        interfaces: list[tuple[int, float, float]] = []  # (linktype, ts scale, ts offset)
        last_ts = 0.0
        max_block = self.max_frame + 65536
        # a key log for thousands of TLS sessions is one block, larger than any packet
        max_dsb = max(max_block, self.max_secrets + 65536)
        while True:
            if len(buf) - pos < 12:
                more = read(BLOCK)
                if not more:
                    if len(buf) - pos:
                        self._anomaly("capture_truncated_record",
                                      f"{len(buf) - pos} bytes of a block header at the end of the file", last_ts)
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            btype = struct.unpack_from(endian + "I", buf, pos)[0]
            if btype == _PCAPNG_SHB:
                bom = buf[pos + 8:pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    self._anomaly("capture_bad_block", "section header with a bad byte-order magic", last_ts)
                    return
                interfaces = []  # a new section redefines interfaces
            blen = struct.unpack_from(endian + "I", buf, pos + 4)[0]
            if blen < 12 or blen % 4 or (blen > max_block and not (btype == _PCAPNG_DSB and blen <= max_dsb)):
                self._anomaly("capture_bad_block" if blen <= max_block else "capture_bad_record_length",
                              f"block of type {btype:#x} declares length {blen}; stopped reading", last_ts)
                return
            if len(buf) - pos < blen:
                more = read(max(BLOCK, blen))
                if not more:
                    self._anomaly("capture_truncated_record",
                                  f"last block has {len(buf) - pos} of {blen} bytes", last_ts)
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            body = pos + 8
            end = pos + blen
            if btype == 6:  # Enhanced Packet Block
                if blen < 32:
                    self._anomaly("capture_bad_block", f"enhanced packet block of {blen} bytes", last_ts)
                    return
                iface, ts_hi, ts_lo, incl, orig = struct.unpack_from(endian + "IIIII", buf, body)
                if incl > blen - 32:
                    self._anomaly("capture_bad_record_length",
                                  f"packet declares {incl} bytes in a {blen}-byte block; stopped reading", last_ts)
                    return
                if iface >= len(interfaces):
                    self._anomaly("capture_unknown_interface", f"interface {iface} not described", last_ts)
                else:
                    lt, scale, offset = interfaces[iface]
                    ts = ((ts_hi << 32) | ts_lo) * scale + offset
                    if ts < last_ts:
                        self.unsorted += 1
                    last_ts = ts
                    if incl < orig:
                        self.snaplen_cut += 1
                    self.frames += 1
                    yield (ts, lt, buf[body + 20:body + 20 + incl], orig)
            elif btype in (1, 2, 3) and blen < _PCAPNG_MIN_BLOCK[btype]:
                # shorter than its fixed fields: reading them would run into the next block
                self._anomaly("capture_bad_block", f"block of type {btype} has only {blen} bytes", last_ts)
                return
            elif btype == 3:  # Simple Packet Block: no timestamp, interface 0
                orig = struct.unpack_from(endian + "I", buf, body)[0]
                if interfaces:
                    lt = interfaces[0][0]
                    incl = min(orig, blen - 16)
                    if incl < orig:
                        self.snaplen_cut += 1
                    self.frames += 1
                    yield (last_ts, lt, buf[body + 4:body + 4 + incl], orig)
            elif btype == 2:  # obsolete Packet Block
                iface, _drops, ts_hi, ts_lo, incl, orig = struct.unpack_from(endian + "HHIIII", buf, body)
                if iface < len(interfaces) and incl <= blen - 32:
                    lt, scale, offset = interfaces[iface]
                    ts = ((ts_hi << 32) | ts_lo) * scale + offset
                    last_ts = max(last_ts, ts)
                    self.frames += 1
                    yield (ts, lt, buf[body + 20:body + 20 + incl], orig)
            elif btype == 1:  # Interface Description Block
                lt = struct.unpack_from(endian + "H", buf, body)[0]
                scale, offset = self._idb_options(buf, body + 8, end - 4, endian)
                interfaces.append((lt, scale, offset))
                self.linktypes.add(lt)
            elif btype == _PCAPNG_DSB:
                self._secrets_block(buf, body, end - 4, endian, last_ts)
            pos = end

    def _secrets_block(self, buf: bytes, body: int, end: int, endian: str, ts: float) -> None:
        """A Decryption Secrets Block: keep a TLS key log (other secrets types are not used)."""
        if end - body < 8:
            self._anomaly("capture_bad_block", "decryption secrets block shorter than its header", ts)
            return
        stype, slen = struct.unpack_from(endian + "II", buf, body)
        if stype != _SECRETS_TLS:
            return
        data = buf[body + 8:min(body + 8 + slen, end)]
        room = self.max_secrets - self.secrets_bytes
        if len(data) > room:
            if room >= 0:
                self._anomaly("capture_secrets_too_large",
                              f"over {self.max_secrets} bytes of TLS key logs; the rest are not used", ts)
            data = data[:max(room, 0)]
            # a cut line would be a wrong key: keep whole lines only
            data = data[:data.rfind(b"\n") + 1]
            self.secrets_bytes = self.max_secrets + 1
        else:
            self.secrets_bytes += len(data)
        if data:
            self.secrets.append(data if data.endswith(b"\n") else data + b"\n")

    @staticmethod
    def _idb_options(buf: bytes, p: int, end: int, endian: str) -> tuple[float, float]:
        """if_tsresol (9) and if_tsoffset (14) from an IDB's options."""
        scale, offset = 1e-6, 0.0
        while p + 4 <= end:
            code, length = struct.unpack_from(endian + "HH", buf, p)
            if code == 0:
                break
            value = buf[p + 4:p + 4 + length]
            if code == 9 and length >= 1:
                r = value[0]
                scale = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
            elif code == 14 and length >= 8:
                offset = float(struct.unpack(endian + "q", value[:8])[0])
            p += 4 + ((length + 3) & ~3)
        return scale, offset


def _reader(stream):
    """read(n) that returns what is available (at least one byte) instead of waiting for n."""
    read1 = getattr(stream, "read1", None)
    return read1 if read1 is not None else stream.read


class FrameOrigins:
    """Where each frame of a reading came from: its file, and its number in that file.

    Frames are numbered from 1 in the order they are processed (several files are
    merged in time order); that global number is the internal order (the
    deterministic merge of ``--jobs`` numbers connections by it). People find a
    frame again by its file and its number in that file, as Wireshark numbers
    the frames of the file opened alone: :meth:`locate` turns one into the
    other. Runs of consecutive frames from one file are kept (three numbers a
    run), so a capture of one file, or of files one after another, costs one
    run per file; files whose frames interleave cost a run per switch.
    """

    def __init__(self, names):
        from array import array
        self.names = [str(n) for n in names]
        self.starts = array("q")  # global number of each run's first frame
        self.files = array("l")  # file index of each run
        self.firsts = array("q")  # that frame's number in its file

    def add(self, start: int, file: int, first: int) -> None:
        """Frames from ``start`` on come from file ``file``, numbered from ``first`` there."""
        if self.starts and self.files[-1] == file and self.firsts[-1] + (start - self.starts[-1]) == first:
            return  # the run goes on
        self.starts.append(start)
        self.files.append(file)
        self.firsts.append(first)

    def locate(self, frame: int) -> tuple[str, int]:
        """(file name, number in that file) of global frame number ``frame``."""
        from bisect import bisect_right
        i = bisect_right(self.starts, frame) - 1
        if i < 0:
            return (self.names[0] if self.names else None), frame
        return self.names[self.files[i]], self.firsts[i] + frame - self.starts[i]

    @property
    def single(self) -> bool:
        """Every frame is numbered as in its file (one file, or one run)."""
        return len(self.starts) <= 1 and (not self.starts or (self.starts[0] == self.firsts[0] == 1))


def read_batches(paths, max_frame: int = 262_144, readers: list | None = None,
                 shard: tuple[int, int, int] | None = None, max_secrets: int = 64 * 1024 * 1024,
                 origins: FrameOrigins | None = None) -> Iterator[list]:
    """Like :func:`read_frames`, in lists of frames (cheaper to consume one by one).

    ``shard=(lo, hi, n)``: a single pcap file's plain Ethernet/IPv4/TCP frames of
    connections outside buckets ``lo``..``hi - 1`` of ``n`` (maildissect.capture.sharding)
    come as None (counted, not copied). ``origins`` (a :class:`FrameOrigins` for
    ``paths``) receives where each frame came from.
    """
    opened = _open_all(paths, max_frame, max_secrets)
    if readers is not None:
        readers.extend(opened)
    if len(opened) == 1:
        opened[0].shard = shard
        if origins is not None:
            origins.add(1, 0, 1)
        yield from opened[0].batches()
    else:
        yield from _merged(opened, origins)


def _merged(readers, origins: FrameOrigins | None = None) -> Iterator[list]:
    """The frames of several readers merged by timestamp, in lists that each come from one file.

    The order is exactly :func:`heapq.merge`'s (the earliest head first; on equal
    times, the earlier file), also for files whose times go backwards: a file's
    frames are taken while they come before every other file's next frame.
    """
    batches = [r.batches() for r in readers]
    current: list = [None] * len(readers)
    pos = [0] * len(readers)
    read = [0] * len(readers)  # frames taken from each file so far
    heads: list = []  # (timestamp of the next frame, file)

    def load(i) -> bool:
        for b in batches[i]:
            if b:
                current[i], pos[i] = b, 0
                return True
        current[i] = None
        return False
    for i in range(len(readers)):
        if load(i):
            heads.append((current[i][0][0], i))
    heapq.heapify(heads)
    total = 0
    while heads:
        _ts, i = heapq.heappop(heads)
        b, p = current[i], pos[i]
        n = len(b)
        q = p + 1  # (the head itself comes before every other head)
        if heads:
            limit, j = heads[0]
            if i < j:
                while q < n and b[q][0] <= limit:
                    q += 1
            else:
                while q < n and b[q][0] < limit:
                    q += 1
        else:
            q = n
        if origins is not None:
            origins.add(total + 1, i, read[i] + 1)
        total += q - p
        read[i] += q - p
        yield b if (p == 0 and q == n) else b[p:q]
        if q < n:
            pos[i] = q
            heapq.heappush(heads, (b[q][0], i))
        elif load(i):
            heapq.heappush(heads, (current[i][0][0], i))


def _open_all(paths, max_frame: int, max_secrets: int = 64 * 1024 * 1024) -> list:
    opened = []
    try:
        for p in paths:
            opened.append(CaptureReader(str(p), max_frame, max_secrets=max_secrets))
    except CaptureError:
        for r in opened:
            r.close()
        raise
    return opened


def read_frames(paths, max_frame: int = 262_144, readers: list | None = None) -> Iterator[Frame]:
    """Frames of several capture files merged in time order.

    Each file is opened at once (so a bad file fails before any work);
    ``readers`` (a list) receives the CaptureReader objects for statistics
    and anomalies.
    """
    opened = _open_all(paths, max_frame)
    if readers is not None:
        readers.extend(opened)
    if len(opened) == 1:
        yield from opened[0]
    else:
        for batch in _merged(opened):
            yield from batch
