"""TLS decryption with a key log (NSS ``SSLKEYLOGFILE`` format), through tshark.

Wireshark's TLS dissector is reached where it adds something, never as the
main path (DESIGN.md): tshark decrypts, maildissect does everything else. The
work is done in two passes.

1. :meth:`Decryption.run` runs tshark once over the capture(s) (several files
   are merged by ``mergecap`` first, so a connection split over rotated files
   stays one stream) with the key log and the application dissectors disabled,
   so that every decrypted TLS record is handed to tshark's ``data`` dissector
   and printed as ``data.data`` next to its frame's endpoints, raw TCP sequence
   number and length (``-T fields``). A record is printed with the frame that
   completes it. The plaintext goes to an anonymous temporary spool file; in
   memory stays an index of about 25 bytes per frame carrying plaintext
   (sequence number, spool offset, length, direction, frame number), grouped by
   TCP connection.

   ``-T fields`` was chosen over ``-z follow,tls,raw``: follow prints a
   stream's chunks without frame numbers, timestamps or sequence numbers and
   keeps every followed stream in tshark's memory until the end; the fields
   give each record's place in its TCP stream, which is what lets the two
   directions be interleaved exactly.

2. During the normal analysis, each connection is matched to its tshark
   stream by its two endpoints and start time (tshark's ``tcp.stream`` numbers
   may differ from flow ids when the tools split reused ports differently).
   A matched connection gets a :class:`TlsSplice` between the router and its
   dissector: the reassembled bytes before TLS starts (the plaintext up to the
   STARTTLS reply) go to the protocol dissector as usual; the TLS bytes are
   counted and their hellos read; and each decrypted record is fed to the same
   dissector as soon as the reassembler has delivered the TCP bytes of the
   frame that carried it (the reassembler turns the record's sequence number
   into a stream offset: :meth:`maildissect.tcp.Connection.stream_offset`).
   The dissector therefore sees the plaintext of both directions in wire
   order, with the time of the segment that completed each record, exactly as
   if the connection had not been encrypted. Where TLS starts is the router's
   business (maildissect.pipeline): at the first byte for implicit TLS, at the
   dissector's :class:`~maildissect.protocols.base.TlsStart` event after an
   accepted STARTTLS, or where a hello record shows up.

Connections without keys in the key log have no decrypted records and stay
encrypted (version, SNI and ALPN only). Memory: the index above plus one
record's plaintext at a time; the spool takes as much disk (in ``$TMPDIR``) as
there is decrypted data, and is deleted when the analysis ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from array import array

from .model import CLIENT, SERVER, Anomaly
from .protocols.tls import TlsHelloParser

__all__ = ["DecryptError", "Decryption", "TlsSplice", "MISSING_TSHARK", "find_tshark"]

#: Said when --keylog is asked for and tshark is not installed.
MISSING_TSHARK = ("--keylog needs tshark to decrypt TLS, and it is not installed: "
                  "apt-get install tshark (Debian/Ubuntu), dnf install wireshark-cli (Fedora), "
                  "brew install wireshark (macOS)")

#: Labels of NSS key log lines (TLS 1.2 and 1.3).
KEYLOG_LABELS = ("CLIENT_RANDOM", "CLIENT_EARLY_TRAFFIC_SECRET", "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                 "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0",
                 "EARLY_EXPORTER_SECRET", "EXPORTER_SECRET", "RSA")

#: Application dissectors turned off so decrypted records reach tshark's ``data``
#: dissector. Those tshark would hand TLS payloads to (its ``tls.port`` table and
#: the heuristics under ``tls``) are added from the running tshark.
DISABLED = ("smtp", "imap", "pop", "http", "http2", "imf", "ftp", "ftp-data", "xmpp", "ldap", "nntp",
            "sieve", "managesieve", "spdy", "quic", "websocket", "mq", "fix", "rdpmt", "credssp", "5gli",
            "aim")

FIELDS = ("frame.number", "frame.time_epoch", "tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst",
          "ipv6.dst", "tcp.dstport", "tcp.seq_raw", "tcp.len", "tcp.time_relative", "tls.handshake.type",
          "tls.handshake.extensions_alpn_str", "data.data")

_disabled_cache: dict[str, tuple[str, ...]] = {}


class DecryptError(Exception):
    """Decryption cannot run as asked (one-line message)."""


def find_tshark() -> str | None:
    """Path of the tshark program, or None."""
    return shutil.which("tshark")


def check_keylog(path: str) -> None:
    """Raise DecryptError unless ``path`` is a readable NSS key log."""
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f):
                if line.split(b" ", 1)[0].decode("ascii", "replace") in KEYLOG_LABELS:
                    return
                if n > 100_000:
                    break
    except OSError as e:
        raise DecryptError(f"cannot read the key log {path}: {e.strerror or e}") from None
    raise DecryptError(f"{path} is not an NSS key log (SSLKEYLOGFILE format: lines such as "
                       "'CLIENT_RANDOM <random> <secret>')")


def _combined_keylog(keylogs: list[str], secrets: bytes) -> str:
    """A temporary key log holding the lines of ``keylogs`` and ``secrets``; returns its path
    (the caller deletes it)."""
    fd, path = tempfile.mkstemp(prefix="maildissect-keys-", suffix=".keys")
    try:
        with os.fdopen(fd, "wb") as out:
            for k in keylogs:
                try:
                    with open(k, "rb") as f:
                        last = b"\n"
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            out.write(chunk)
                            last = chunk[-1:]
                        if last != b"\n":
                            out.write(b"\n")
                except OSError as e:
                    raise DecryptError(f"cannot read the key log {k}: {e.strerror or e}") from None
            out.write(secrets)
    except BaseException:
        os.unlink(path)
        raise
    return path


def _disabled_protocols(tshark: str) -> tuple[str, ...]:
    """DISABLED plus what this tshark would dissect inside TLS (asked once per run of Python)."""
    cached = _disabled_cache.get(tshark)
    if cached is not None:
        return cached
    names = set(DISABLED)
    procs = []
    try:
        for what in ("decodes", "heuristic-decodes"):
            procs.append(subprocess.Popen([tshark, "-G", what], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True, errors="replace"))
        decodes, heuristics = (p.communicate(timeout=60)[0] for p in procs)
    except (OSError, subprocess.SubprocessError):
        for p in procs:
            p.kill()
        decodes = heuristics = ""
    for line in decodes.splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[0].startswith("tls."):
            names.add(cols[2])
    for line in heuristics.splitlines():
        cols = line.split("\t")
        if len(cols) >= 2 and cols[0] == "tls":
            names.add(cols[1])
    names.discard("tls")
    names.discard("data")
    result = tuple(sorted(names))
    _disabled_cache[tshark] = result
    return result


def _ip(text: str) -> str:
    """An address as maildissect writes it (socket.inet_ntop's spelling, as tcp.ip_text)."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        return text


def _last(value: str) -> str:
    """The innermost of several comma-separated values (tunnels give one per layer)."""
    return value.rsplit(",", 1)[-1]


class DecryptedStream:
    """One TLS connection as tshark decrypted it: where each piece of plaintext is.

    ``endpoints`` are the two (ip, port) pairs; ``sides`` tells for each entry
    which of them sent it (0 or 1). An entry is one frame's decrypted records:
    ``seq_end`` is the raw TCP sequence number just past that frame's payload,
    ``offsets``/``sizes`` locate the plaintext in the spool.
    """

    __slots__ = ("endpoints", "start", "client", "alpn", "seq_end", "offsets", "sizes", "sides", "frames",
                 "used", "last_end")

    def __init__(self, endpoints, start: float):
        self.endpoints = endpoints
        self.start = start
        self.client: int | None = None  # endpoint index that sent the ClientHello
        self.alpn: str | None = None  # protocol the server selected (decrypted EncryptedExtensions too)
        self.seq_end = array("Q")
        self.offsets = array("Q")
        self.sizes = array("I")
        self.sides = array("B")
        self.frames = array("Q")
        self.used = False
        self.last_end: list[int | None] = [None, None]  # seq_end of each side's last entry

    def __len__(self) -> int:
        return len(self.sizes)


class Decryption:
    """Decrypted TLS of some captures: the index in memory, the plaintext in a spool file.

    Use :meth:`run` to make one; the pipeline asks :meth:`match` for every
    new session; :meth:`close` deletes the spool.
    """

    def __init__(self):
        self._spool = tempfile.TemporaryFile(prefix="maildissect-tls-")
        self._fd = self._spool.fileno()
        self._size = 0
        self.pairs: dict[tuple, list[DecryptedStream]] = {}
        self.streams = 0
        self.records = 0  # frames with decrypted records
        self.bytes = 0  # decrypted bytes
        self.warnings: list[str] = []  # what tshark said on stderr (capture-level anomalies)
        self.duplicates = 0  # entries dropped because their bytes were already decrypted
        self._current: dict[int, DecryptedStream] = {}  # tshark stream number -> stream

    # -- making ---------------------------------------------------------------
    @classmethod
    def run(cls, paths: list[str], keylogs, tshark: str | None = None, secrets: bytes = b"") -> "Decryption":
        """Decrypt ``paths`` (merged in time order) with the key logs ``keylogs`` (one
        path or several) and ``secrets`` (key log text, such as a capture's own
        Decryption Secrets Blocks); raises DecryptError."""
        tshark = tshark or find_tshark()
        if tshark is None:
            raise DecryptError(MISSING_TSHARK)
        if isinstance(keylogs, (str, os.PathLike)):
            keylogs = [keylogs]
        keylogs = [str(k) for k in keylogs]
        for k in keylogs:
            check_keylog(k)
        self = cls()
        combined = None
        try:
            if len(keylogs) == 1 and not secrets:
                keylog = os.path.abspath(keylogs[0])
            else:
                # tshark takes one key log file: every key, from every source, in one
                combined = keylog = _combined_keylog(keylogs, secrets)
            self._run(list(paths), keylog, tshark)
        except BaseException:
            self.close()
            raise
        finally:
            if combined is not None:
                try:
                    os.unlink(combined)
                except OSError:
                    pass
        return self

    def _run(self, paths: list[str], keylog: str, tshark: str) -> None:
        args = [tshark, "-n", "-Q", "-r", paths[0] if len(paths) == 1 else "-",
                "-o", f"tls.keylog_file:{keylog}",
                "-o", "tcp.desegment_tcp_streams:TRUE",
                "-o", "tcp.reassemble_out_of_order:TRUE",
                "-o", "tcp.calculate_timestamps:TRUE",
                "-o", "tls.desegment_ssl_records:TRUE",
                "--enable-heuristic", "tls_tcp",
                "-Y", "tls", "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a",
                "-E", "aggregator=,", "-E", "quote=n", "-E", "header=n"]
        for name in _disabled_protocols(tshark):
            args += ["--disable-protocol", name]
        for f in FIELDS:
            args += ["-e", f]
        merge = None
        stderr = tempfile.TemporaryFile()
        merge_err = None
        try:
            if len(paths) > 1:
                mergecap = shutil.which("mergecap") or os.path.join(os.path.dirname(tshark), "mergecap")
                merge_err = tempfile.TemporaryFile()
                try:
                    merge = subprocess.Popen([mergecap, "-w", "-", *paths], stdout=subprocess.PIPE,
                                             stderr=merge_err)
                except OSError as e:
                    raise DecryptError(f"several captures with --keylog need mergecap (it comes with "
                                       f"tshark): {e.strerror or e}") from None
            try:
                proc = subprocess.Popen(args, stdin=merge.stdout if merge else subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=stderr, text=True, errors="replace",
                                        bufsize=1 << 20)
            except OSError as e:
                raise DecryptError(f"cannot run tshark ({tshark}): {e.strerror or e}") from None
            if merge is not None:
                merge.stdout.close()  # tshark holds the pipe now
            try:
                lines = 0
                for line in proc.stdout:
                    lines += 1
                    self._line(line)
                rc = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if merge is not None:
                merge.wait()
            stderr.seek(0)
            messages = [m for m in stderr.read().decode("utf-8", "replace").splitlines()
                        if m.strip() and "Running as user" not in m and "dangerous" not in m]
            if rc != 0 and not lines:
                detail = messages[-1] if messages else f"exit status {rc}"
                if any("aren't valid" in m or "are not valid" in m for m in messages):
                    raise DecryptError(f"this tshark lacks fields decryption needs ({detail}); "
                                       "tshark 3.0 or later is required")
                raise DecryptError(f"tshark could not read the capture: {detail}")
            self.warnings = messages[:20]
        finally:
            stderr.close()
            if merge is not None and merge.poll() is None:
                merge.kill()
                merge.wait()
            if merge_err is not None:
                merge_err.close()

    def _line(self, line: str) -> None:
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) < len(FIELDS):
            return
        (frame, epoch, stream, ip4s, ip6s, sport, ip4d, ip6d, dport, seq, tcplen, rel, hstypes, alpn,
         data) = cols[:len(FIELDS)]
        if not stream or not sport or not seq:
            return
        try:
            key = int(_last(stream))
            src = (_ip(_last(ip6s or ip4s)), int(_last(sport)))
            dst = (_ip(_last(ip6d or ip4d)), int(_last(dport)))
            start = float(epoch) - float(_last(rel) or 0.0)
            seq_end = (int(_last(seq)) + int(_last(tcplen) or 0)) & 0xFFFFFFFF
            frame_no = int(frame)
        except ValueError:
            return
        st = self._stream(key, src, dst, start)
        side = 0 if src == st.endpoints[0] else 1
        types = hstypes.split(",") if hstypes else ()
        if "1" in types:
            st.client = side
        if alpn and ("2" in types or "8" in types) and side != st.client:
            # ServerHello (TLS 1.2) or EncryptedExtensions (TLS 1.3, decrypted): the choice
            st.alpn = alpn.split(",")[0][:64]
        if not data:
            return
        try:
            plain = bytes.fromhex(data.replace(",", ""))
        except ValueError:
            return
        if not plain:
            return
        last = st.last_end[side]
        if last is not None and not 0 < ((seq_end - last) & 0xFFFFFFFF) < 0x80000000:
            # a frame ending at or before the last one: a retransmission tshark decrypted
            # again; its plaintext was already taken
            self.duplicates += 1
            return
        st.last_end[side] = seq_end
        os.pwrite(self._fd, plain, self._size)
        st.seq_end.append(seq_end)
        st.offsets.append(self._size)
        st.sizes.append(len(plain))
        st.sides.append(side)
        st.frames.append(frame_no)
        self._size += len(plain)
        self.records += 1
        self.bytes += len(plain)

    def _stream(self, key, src, dst, start) -> DecryptedStream:
        current = self._current
        st = current.get(key)
        if st is None:
            pair = (src, dst) if src <= dst else (dst, src)
            st = DecryptedStream(pair, start)
            current[key] = st
            self.pairs.setdefault(pair, []).append(st)
            self.streams += 1
        return st

    # -- using ------------------------------------------------------------------
    def match(self, flow) -> DecryptedStream | None:
        """The decrypted stream of a connection (by endpoints, then start time), once."""
        a = (flow.client_ip, flow.client_port)
        b = (flow.server_ip, flow.server_port)
        candidates = self.pairs.get((a, b) if a <= b else (b, a))
        if not candidates:
            return None
        best = min((s for s in candidates if not s.used), key=lambda s: abs(s.start - flow.start), default=None)
        if best is None or not len(best):
            return None
        best.used = True
        return best

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        """Delete the spool (the index goes with the object)."""
        try:
            self._spool.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def capture_anomalies(self) -> list[Anomaly]:
        return [Anomaly(None, None, "", "tls_tshark_warning", w[:300]) for w in self.warnings]


# --------------------------------------------------------------------------
# the splice


def _tls_start(data: bytes, at_start_only: bool = False) -> int:
    """Offset of a TLS ClientHello/ServerHello record in ``data``, or -1.

    It is looked for at the start of the data or right after a line end: where
    a client that does not wait for the go-ahead (or a server) starts its TLS
    handshake after a STARTTLS line. A handshake record header is ``16 03 0x``,
    a length, then the handshake type 1 or 2.
    """
    i = 0
    while True:
        if len(data) - i >= 6 and data[i] == 0x16 and data[i + 1] == 0x03 and data[i + 2] <= 0x04 \
                and data[i + 5] in (1, 2):
            return i
        if at_start_only:
            return -1
        j = data.find(b"\n\x16\x03", i)
        if j < 0:
            return -1
        i = j + 1


class TlsSplice:
    """The TLS layer of a connection a key log decrypted: the router sends it the
    reassembled bytes, it hands the dissector plaintext.

    Before TLS starts on a side (the plaintext of a STARTTLS session up to the
    server's go-ahead), that side's bytes go to ``plain(side, data, ts)`` as
    they are. TLS starts on a side at :meth:`start` (the router calls it when
    the dissector accepted STARTTLS), where a hello record shows up, or at the
    first byte (``implicit``). From then on the side's bytes are counted and
    their hellos read, and every decrypted record of the side goes to
    ``plain`` once the reassembled bytes have reached the end of the frame that
    carried it; a gap goes to ``lost(side, length, ts)`` (ciphertext lost is
    plaintext lost, of about the same length).
    """

    def __init__(self, session, conn, stream: DecryptedStream, source: Decryption, implicit: bool,
                 plain, lost):
        session.decrypted = True
        if implicit:
            session.tls = True
        if stream.alpn:
            session.alpn = stream.alpn
        self.session = session
        self.conn = conn  # only asked for stream offsets (Connection.stream_offset)
        self.stream = stream
        self.source = source
        self.plain = plain
        self.lost = lost
        self.pos = [0, 0]  # stream offset of each side's next byte
        self.tls_from: list[int | None] = [0, 0] if implicit else [None, None]
        self.hello = TlsHelloParser(session)
        flow = conn.flow
        # which of the stream's endpoints is our client
        self.flip = stream.endpoints[0] != (flow.client_ip, flow.client_port)
        self.next = [0, 0]  # index of each side's next decrypted entry
        self.entries = (array("Q"), array("Q"))  # entry indexes per side, in order
        for i, s in enumerate(stream.sides):
            self.entries[s ^ self.flip].append(i)

    def start(self, sides) -> None:
        """The dissector switched ``sides`` to TLS: their bytes from here on are TLS."""
        for s in sides:
            if self.tls_from[s] is None:
                self.tls_from[s] = self.pos[s]

    def data(self, side: int, data: bytes, ts: float) -> None:
        start = self.pos[side]
        self.pos[side] = start + len(data)
        tls_from = self.tls_from[side]
        if tls_from is None:
            i = _tls_start(data)
            if i < 0:
                self.plain(side, data, ts)
                return
            if i:
                self.plain(side, data[:i], ts)
            self.tls_from[side] = tls_from = start + i
        cipher = data if start >= tls_from else data[tls_from - start:]
        if cipher:
            if side == CLIENT:
                self.session.tls_bytes_client += len(cipher)
            else:
                self.session.tls_bytes_server += len(cipher)
            if not self.hello.done[side]:
                self.hello.feed(side, cipher, ts)
        self._release(side, ts)

    def gap(self, side: int, length: int, ts: float) -> None:
        self.pos[side] += length
        if self.tls_from[side] is not None:
            self._release(side, ts)
        self.lost(side, length, ts)

    def close(self, ts: float) -> None:
        """Records whose TCP bytes never came through reassembly (a capture cut
        short, a segment tshark placed differently): fed in capture order."""
        rest = []
        for side in (CLIENT, SERVER):
            for i in self.entries[side][self.next[side]:]:
                rest.append((self.stream.frames[i], side, i))
            self.next[side] = len(self.entries[side])
        for _, side, i in sorted(rest):
            self._feed_entry(side, i, ts)

    def _release(self, side: int, ts: float) -> None:
        """Feed the decrypted entries of ``side`` whose frames have been delivered."""
        entries = self.entries[side]
        k = self.next[side]
        if k >= len(entries):
            return
        pos = self.pos[side]
        stream = self.stream
        offset = self.conn.stream_offset
        while k < len(entries):
            i = entries[k]
            end = offset(side, stream.seq_end[i])
            if end is None or end > pos:
                break  # ahead of what has been delivered
            k += 1
            self.next[side] = k
            self._feed_entry(side, i, ts)

    def _feed_entry(self, side: int, i: int, ts: float) -> None:
        st = self.stream
        self.plain(side, self.source.read(st.offsets[i], st.sizes[i]), ts)
