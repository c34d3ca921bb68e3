"""Follow one TCP stream: its reassembled bytes in order, gaps included.

The equivalent of Wireshark's "Follow TCP Stream" (and ``tshark -z follow``):
:func:`follow` runs only decoding and reassembly (no dissectors) and streams
the chosen connection's events to a callback; :class:`Formatter` renders them
as tshark does (ascii, hex) or as raw bytes.

With a key log, the TLS part of the connection is shown decrypted, as
Wireshark's "Follow TLS Stream" (``tshark -z follow,tls``) shows it: tshark
decrypts (maildissect.decrypt) and the same splice the analysis uses puts
each decrypted record in its place in the stream; the plaintext before a
STARTTLS is shown as it was sent.
"""

from __future__ import annotations

from typing import Callable

from .config import Config, Limits
from .model import CLIENT, Flow
from .pipeline import Collector, Pipeline
from .runner import Files
from .tcp import Reassembler


class _Recorder:
    __slots__ = ("emit",)

    def __init__(self, emit):
        self.emit = emit

    def data(self, side, data, ts):
        self.emit("data", side, data, ts)

    def gap(self, side, length, ts):
        self.emit("gap", side, length, ts)

    def close(self, ts, reason):
        self.emit("close", None, reason, ts)


class _Decrypting:
    """A connection's events through a TLS splice: its TLS bytes come out decrypted."""

    __slots__ = ("splice", "recorder")

    def __init__(self, splice, recorder):
        self.splice, self.recorder = splice, recorder

    def data(self, side, data, ts):
        self.splice.data(side, data, ts)

    def gap(self, side, length, ts):
        self.splice.gap(side, length, ts)

    def close(self, ts, reason):
        self.splice.close(ts)
        self.recorder.close(ts, reason)


def follow(paths, flow_id: int, on_event: Callable, limits: Limits | None = None,
           on_flow: Callable[[Flow], None] | None = None, decryption=None) -> Flow | None:
    """Stream events ``(kind, side, value, ts)`` of connection ``flow_id``.

    ``kind`` is ``data`` (value: bytes), ``gap`` (value: missing length) or
    ``close`` (value: reason). ``on_flow(flow)`` is called when the connection
    is first seen. With ``decryption`` (a :class:`maildissect.decrypt.Decryption`
    of the same captures), a connection it has keys for yields its plaintext:
    ``on_flow`` is then called with ``flow.protocol`` set to ``"tls"`` (and left
    as it is when no key decrypts it). Returns the connection's Flow record, or
    None when the captures have no such connection.
    """
    limits = limits or Limits()
    found: list[Flow] = []

    def on_open(conn):
        if conn.flow.flow_id != flow_id:
            return None
        found.append(conn.flow)
        recorder = _Recorder(on_event)
        stream = decryption.match(conn.flow) if decryption is not None else None
        if stream is not None:
            from .decrypt import TlsSplice
            from .model import Session
            from .protocols.detect import by_port
            flow = conn.flow
            flow.protocol = "tls"
            known = by_port(flow.server_port)
            session = Session(flow.flow_id, "tls", flow.client_ip, flow.client_port, flow.server_ip,
                              flow.server_port, flow.start, flow.end)
            recorder = _Decrypting(TlsSplice(session, conn, stream, decryption, bool(known and known[1]),
                                             recorder.data, recorder.gap), recorder)
        if on_flow is not None:
            on_flow(conn.flow)
        return recorder

    # the analysis's frame loop, its segments going to a reassembler that listens to one connection
    reasm = _Reassembly(limits, on_open=on_open)
    Pipeline(Files(paths), Collector(), Config(limits=limits), segments=reasm).run()
    return found[0] if found else None


class _Reassembly(Reassembler):
    """Reassembly alone; at the end of the input a connection still open closes at its own
    last packet (as Follow TCP Stream shows it), not at the capture's last frame."""

    def finish(self, ts=None) -> None:
        super().finish()


def _printable(data: bytes, terminal: bool = False) -> str:
    """tshark's ascii view: printable ASCII, TAB, LF and CR kept, any other byte shown as ``.``.

    On a terminal (``terminal``) a CR that does not end a line is shown as ``.`` too: it
    would move the cursor back and let the bytes after it overwrite the line.
    """
    text = "".join(chr(b) if 32 <= b < 127 or b in (9, 10, 13) else "." for b in data)
    if terminal and "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", ".")
    return text


class Formatter:
    """Renders follow events as text (tshark's layout) or raw bytes."""

    def __init__(self, fmt: str = "ascii", side: str = "both", write_text=None, write_bytes=None,
                 color: bool = False, terminal: bool = False):
        """``terminal``: the text is for a terminal (a CR that does not end a line is shown as ``.``)."""
        self.fmt = fmt
        self.terminal = terminal
        self.side = side
        self.write_text = write_text
        self.write_bytes = write_bytes
        self.color = color
        self.offsets = [0, 0]

    def _wanted(self, side) -> bool:
        return self.side == "both" or (self.side == "client") == (side == CLIENT)

    def header(self, flow: Flow) -> None:
        if self.fmt == "raw":
            return
        bar = "=" * 67
        layer = "tls" if flow.protocol == "tls" else "tcp"  # (follow sets "tls" on a decrypted connection)
        self.write_text(f"{bar}\nFollow: {layer},{self.fmt}\n"
                        f"Filter: flow {flow.flow_id} ({flow.client_ip}:{flow.client_port} <-> "
                        f"{flow.server_ip}:{flow.server_port})\n"
                        f"Node 0: {flow.client_ip}:{flow.client_port}\n"
                        f"Node 1: {flow.server_ip}:{flow.server_port}\n")

    def footer(self) -> None:
        if self.fmt != "raw":
            self.write_text("=" * 67 + "\n")

    def event(self, kind, side, value, ts) -> None:
        if kind == "close" or not self._wanted(side):
            return
        indent = "\t" if side != CLIENT else ""
        if kind == "gap":
            if self.fmt != "raw":
                self.write_text(self._paint(f"{indent}[{value} bytes missing]\n", side))
            self.offsets[side] += value
            return
        if self.fmt == "raw":
            self.write_bytes(value)
            return
        if self.fmt == "ascii":
            text = _printable(value, self.terminal)
            body = text if not indent else "\n".join(indent + line if line else line
                                                     for line in text.split("\n"))
            self.write_text(self._paint(f"{indent}{len(value)}\n{body}" + ("" if text.endswith("\n") else "\n"),
                                        side))
        else:  # hex, like tshark: offset, 16 bytes, printable column
            lines = []
            base = self.offsets[side]
            for i in range(0, len(value), 16):
                chunk = value[i:i + 16]
                hexpart = " ".join(f"{b:02x}" for b in chunk[:8])
                if len(chunk) > 8:
                    hexpart += "  " + " ".join(f"{b:02x}" for b in chunk[8:])
                asc = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
                lines.append(f"{indent}{base + i:08X}  {hexpart:<49} {asc}")
            self.write_text(self._paint("\n".join(lines) + "\n", side))
        self.offsets[side] += len(value)

    def _paint(self, text: str, side) -> str:
        if not self.color:
            return text
        code = "31" if side == CLIENT else "34"  # Wireshark: client red, server blue
        return f"\x1b[{code}m{text}\x1b[0m"
