"""Live capture: raw frames from an interface, fed to the same pipeline as files.

Backends:

- ``scapy`` (default): scapy's L2 listen socket (AF_PACKET), read with
  ``recv_raw``-style calls so that no packet objects are built. On a loopback
  interface a packet socket sees every packet twice (once outgoing, once
  incoming); the outgoing copy is dropped by its packet type.
- ``tcpdump``: tcpdump writes a pcap stream to a pipe that the file reader
  parses; capture happens in C, which keeps up with bursts the Python loop
  could not (kernel drops are reported either way).
- ``tshark``: pyshark's LiveCapture, for interfaces or encapsulations the
  others cannot open; slow, but it uses Wireshark's capture machinery.

Every backend yields ``(ts, linktype, data, wirelen)`` frames and, at least
twice a second, a tick ``(now, None, None, None)`` so that idle connections can
be timed out while the wire is quiet.
"""

from __future__ import annotations

import os
import queue
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Iterator

from .files import CaptureReader

PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
TICK = 0.5
SO_RCVBUFFORCE = 33
RCVBUF = 64 * 1024 * 1024  # kernel receive buffer asked for (packet socket)

MAIL_PORTS = (25, 465, 587, 2525, 143, 993, 110, 995, 80, 443, 8080, 8000, 3000)


class LiveError(Exception):
    """Capture cannot start (permission, unknown interface...), one line."""


def interfaces() -> list[str]:
    try:
        return [name for _i, name in socket.if_nameindex()]
    except OSError:
        return []


def default_filter(extra_ports=()) -> str:
    """BPF for the mail ports plus any extra ones (IPv4 and IPv6, fragments included)."""
    ports = sorted(set(MAIL_PORTS) | {int(p) for p in extra_ports})
    return "tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"


def permission_hint() -> str:
    return (f"capturing needs root, or: sudo setcap cap_net_raw,cap_net_admin=eip "
            f"{os.path.realpath(sys.executable)}")


def _check_interface(iface: str) -> None:
    names = interfaces()
    if names and iface not in names:
        raise LiveError(f"no interface {iface!r}; available: {', '.join(names)}")


class ScapyLive:
    """Frames from scapy's L2ListenSocket, outgoing loopback copies dropped."""

    name = "scapy"

    def __init__(self, iface: str, bpf: str | None):
        _check_interface(iface)
        import logging
        # scapy warns that it cannot name loopback's link layer: irrelevant, we read raw frames
        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
        try:
            from scapy.arch.linux import L2ListenSocket
            from scapy.config import conf
        except ImportError as e:  # non-Linux
            raise LiveError(f"the scapy backend needs Linux packet sockets ({e}); try --backend tshark") from None
        conf.bufsize = max(conf.bufsize, 1 << 25)  # a deep kernel buffer absorbs bursts
        try:
            self.sock = L2ListenSocket(iface=iface, filter=bpf)
        except PermissionError:
            raise LiveError(permission_hint()) from None
        except OSError as e:
            if e.errno in (1, 13):
                raise LiveError(permission_hint()) from None
            raise LiveError(f"cannot capture on {iface}: {e.strerror or e}") from None
        except Exception as e:  # scapy raises its own exception types (bad filter...)
            raise LiveError(f"cannot capture on {iface}: {e}") from None
        try:  # beyond net.core.rmem_max (root/CAP_NET_ADMIN): a deep buffer absorbs bursts
            self.sock.ins.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            pass
        self.loopback = iface == "lo" or iface.startswith("lo")
        self.linktype = 1  # Linux packet sockets on Ethernet and loopback deliver Ethernet framing
        self.dropped_outgoing = 0

    def frames(self) -> Iterator[tuple]:
        sock = self.sock
        ins = sock.ins
        recv = sock._recv_raw
        fd = ins.fileno()
        ins.setblocking(False)  # drain the socket without a system call per packet to wait
        while True:
            try:
                pkt, sa_ll, ts = recv(ins, 65535)
            except (BlockingIOError, InterruptedError):
                ready, _, _ = select.select([fd], [], [], TICK)
                if not ready:
                    yield (time.time(), None, None, None)
                continue
            if not pkt:
                continue
            if self.loopback and sa_ll[2] == PACKET_OUTGOING:
                self.dropped_outgoing += 1
                continue
            yield (ts if ts is not None else time.time(), self.linktype, pkt, len(pkt))

    def stats(self) -> dict:
        try:
            raw = self.sock.ins.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            packets, drops = struct.unpack("II", raw)
            return {"kernel_packets": packets, "kernel_drops": drops}
        except OSError:
            return {}

    def close(self):
        try:
            self.sock.close()
        except Exception:
            pass


class TcpdumpLive:
    """Frames from ``tcpdump -w -`` read by the pcap file reader."""

    name = "tcpdump"

    def __init__(self, iface: str, bpf: str | None):
        _check_interface(iface)
        exe = shutil.which("tcpdump")
        if exe is None:
            raise LiveError("tcpdump is not installed (apt-get install tcpdump), or use --backend scapy")
        args = [exe, "-i", iface, "-U", "-s", "0", "-B", "32768", "-w", "-", "--immediate-mode"]
        if bpf:
            args.append(bpf)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stderr = b""
        ready, _, _ = select.select([self.proc.stdout], [], [], 5.0)
        if not ready or self.proc.poll() is not None:
            self.proc.kill()
            err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            msg = err[-1] if err else "no output"
            if "permission" in msg.lower() or "not permitted" in msg.lower():
                raise LiveError(permission_hint())
            raise LiveError(f"tcpdump: {msg}")
        self.reader = CaptureReader.from_stream(self.proc.stdout, f"tcpdump -i {iface}")

    def frames(self) -> Iterator[tuple]:
        # The reader blocks on the pipe; a thread reads it so that ticks keep coming
        # while the wire is quiet.
        q: queue.Queue = queue.Queue(maxsize=100_000)

        def pump():
            try:
                for frame in self.reader:
                    q.put(frame)
            finally:
                q.put(None)
        threading.Thread(target=pump, daemon=True, name="tcpdump-reader").start()
        while True:
            try:
                frame = q.get(timeout=TICK)
            except queue.Empty:
                yield (time.time(), None, None, None)
                continue
            if frame is None:
                return
            yield frame

    def stats(self) -> dict:
        return {}

    def close(self):
        # The reader thread owns stdout (it sees end of file when tcpdump exits);
        # only stderr is read here, for tcpdump's closing statistics.
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            self.stderr = self.proc.stderr.read() or b""
        except (OSError, ValueError):
            self.stderr = b""

    def final_stats(self) -> dict:
        """tcpdump's own 'packets dropped by kernel' line, after close."""
        for line in self.stderr.decode(errors="replace").splitlines():
            if "dropped by kernel" in line:
                try:
                    return {"kernel_drops": int(line.split()[0])}
                except ValueError:
                    pass
        return {}


class TsharkLive:
    """Frames from pyshark's LiveCapture (raw bytes of each frame)."""

    name = "tshark"
    _LINKTYPES = {"eth": 1, "sll": 113, "null": 0, "loop": 108, "ip": 101, "ipv6": 101, "raw": 101}

    def __init__(self, iface: str, bpf: str | None):
        if shutil.which("tshark") is None:
            raise LiveError("tshark is not installed (apt-get install tshark)")
        _check_interface(iface)
        import pyshark
        self.capture = pyshark.LiveCapture(interface=iface, bpf_filter=bpf, use_json=True, include_raw=True)

    def frames(self) -> Iterator[tuple]:
        for pkt in self.capture.sniff_continuously():
            try:
                data = pkt.get_raw_packet()
                first = pkt.layers[0].layer_name
                ts = float(pkt.sniff_timestamp)
            except Exception:
                continue
            yield (ts, self._LINKTYPES.get(first, 1), data, len(data))

    def stats(self) -> dict:
        return {}

    def close(self):
        try:
            self.capture.close()
        except Exception:
            pass


BACKENDS = {"scapy": ScapyLive, "tcpdump": TcpdumpLive, "tshark": TsharkLive}


def open_live(iface: str, bpf: str | None, backend: str = "scapy"):
    """Start capturing; raises LiveError with a one-line reason."""
    try:
        cls = BACKENDS[backend]
    except KeyError:
        raise LiveError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}") from None
    return cls(iface, bpf)


class PcapWriter:
    """Writes frames to a classic pcap file, rotating at ``rotate_size`` bytes (tcpdump -C naming)."""

    def __init__(self, path: str, linktype: int = 1, rotate_size: int | None = None):
        self.base = path
        self.linktype = linktype
        self.rotate_size = rotate_size
        self.index = 0
        self.files: list[str] = []
        self._open(path)

    def _open(self, path):
        self.f = open(path, "wb")
        self.files.append(path)
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, self.linktype))
        self.size = 24

    def write(self, ts: float, data: bytes, wirelen: int | None = None) -> None:
        if self.rotate_size and self.size + 16 + len(data) > self.rotate_size and self.size > 24:
            self.f.close()
            self.index += 1
            self._open(f"{self.base}{self.index}")
        usec = round(ts * 1e6)
        self.f.write(struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(data), wirelen or len(data)))
        self.f.write(data)
        self.size += 16 + len(data)

    def close(self):
        self.f.close()
