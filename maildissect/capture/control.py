"""TCP control-packet detail of flows: a second, light read of the captures.

The flows table keeps what every user needs (handshake RTT, close reason,
packet count). Ladder diagrams and Zeek's conn.log also want each SYN,
SYN-ACK, handshake ACK, FIN and RST with its time and side, per-direction
packet counts, IP byte counts and Zeek's history letters. Keeping those for
every connection would cost the analysis's per-packet path for every user, so
:func:`flow_packets` reads the captures once more, with the same reader and
the same decoder, when a report or a Zeek log asks for them.

A packet belongs to the connection the reassembler gave it to: the latest
connection on its endpoints whose first frame (``Flow.merged_frame``, counted
as the first read counted it) is at or before the packet's frame. That is the
reassembler's own rule (a new connection on reused endpoints takes every
packet after its first one), so no time window is needed to tell apart
connections that reuse a port pair.
"""

from __future__ import annotations

import ipaddress
import struct
from bisect import bisect_right
from dataclasses import dataclass, field

from .decode import SizingDecoder
from .files import CaptureError, read_frames

_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10

#: Control packets kept per flow (the ladders draw the handshake and the teardown).
CONTROL_MAX = 16


@dataclass(slots=True)
class FlowPackets:
    """What the flows table does not keep: per-direction packet counts, IP bytes, a Zeek-style
    history string and the TCP control packets (SYN, SYN-ACK, handshake ACK, FIN, RST) with
    their times, for ladder diagrams and conn.log."""

    flow_id: int
    packets: list  # [client, server]
    ip_bytes: list  # [client, server]; None when a frame held no IP length
    history: str = ""
    control: list = field(default_factory=list)  # [(ts, side "client"|"server", label)], at most CONTROL_MAX
    syn: float | None = None
    synack: float | None = None
    ack: float | None = None
    fin: list = field(default_factory=list)  # [(ts, side)]
    rst: list = field(default_factory=list)


def _key(a: str, ap: int, b: str, bp: int) -> bytes:
    """The decoder's flow-table key of one direction: addresses, then ports."""
    return ipaddress.ip_address(a).packed + ipaddress.ip_address(b).packed + struct.pack("!HH", ap, bp)


def flow_packets(paths, flows, flow_ids=None, limits=None, max_frame: int | None = None) -> dict[int, FlowPackets]:
    """Read the captures again and collect :class:`FlowPackets` for ``flows`` (or only ``flow_ids``).

    ``limits`` (a :class:`maildissect.config.Limits`, default the analysis
    defaults) must be the analysis's own, so that frames and IP fragments are
    read exactly as the first time. Returns {} for input that cannot be read
    again (stdin); a flow whose first frame is not where the flows table says
    (frames numbered another way, another capture) is left out rather than
    given another connection's packets.
    """
    from ..config import Limits

    lim = limits or Limits()
    paths = [str(p) for p in paths]
    if not paths or any(p == "-" for p in paths):
        return {}
    wanted = None if flow_ids is None else set(flow_ids)
    # every flow is indexed (a packet must go to its own connection even when that one is not
    # wanted); per key, the connections in order of first frame
    index: dict[bytes, list] = {}
    for f in flows:
        try:
            fwd = _key(f.client_ip, f.client_port, f.server_ip, f.server_port)
            rev = _key(f.server_ip, f.server_port, f.client_ip, f.client_port)
        except ValueError:
            continue
        # the first frame's number in the merged reading of every file, as read_frames counts
        # (first_frame counts within its own file)
        first = f.merged_frame or f.first_frame
        index.setdefault(fwd, []).append((first, f, 0))
        if rev != fwd:
            index.setdefault(rev, []).append((first, f, 1))
    if not index:
        return {}
    starts: dict[bytes, list] = {}
    for k, lst in index.items():
        lst.sort(key=lambda x: x[0])
        starts[k] = [x[0] for x in lst]
    result: dict[int, FlowPackets] = {}
    placed: set[int] = set()  # flows whose first frame was found where the table says
    seen_letters: dict[int, set] = {}
    decoder = SizingDecoder(lim.max_fragment_bytes, lim.max_fragment_sets, lim.fragment_timeout)
    n = 0
    try:
        for ts, linktype, data, wirelen in read_frames(paths, max_frame or lim.max_frame):
            n += 1
            seg = decoder.decode(ts, linktype, data, wirelen)
            if seg is None:
                continue
            cands = index.get(seg[0])
            if cands is None:
                continue
            i = bisect_right(starts[seg[0]], n) - 1
            if i < 0:
                continue  # before any known connection on these endpoints
            first, f, side = cands[i]
            if first == n:
                placed.add(f.flow_id)
            if wanted is not None and f.flow_id not in wanted:
                continue
            fp = result.get(f.flow_id)
            if fp is None:
                fp = result[f.flow_id] = FlowPackets(f.flow_id, [0, 0], [0, 0])
                seen_letters[f.flow_id] = set()
            _count(fp, seen_letters[f.flow_id], side, ts, seg[7], seg[9], decoder.ip_len)
    except (CaptureError, OSError):
        return {}
    return {fid: fp for fid, fp in result.items() if fid in placed}


def _count(fp: FlowPackets, seen: set, side: int, ts: float, flags: int, payload: bytes, iplen) -> None:
    fp.packets[side] += 1
    if iplen is None or fp.ip_bytes[side] is None:
        fp.ip_bytes[side] = None
    else:
        fp.ip_bytes[side] += iplen
    who = "client" if side == 0 else "server"
    letters = []  # Zeek's history letters for this packet, in Zeek's order
    label = None
    if flags & _SYN:
        letters.append("H" if flags & _ACK else "S")
        label = "SYN-ACK" if flags & _ACK else "SYN"
        if label == "SYN" and fp.syn is None and side == 0:
            fp.syn = ts
        elif label == "SYN-ACK" and fp.synack is None and side == 1:
            fp.synack = ts
    if payload:
        letters.append("D")
    if flags & _FIN:
        letters.append("F")
        label = label or "FIN"
        fp.fin.append((ts, who))
    if flags & _RST:
        letters.append("R")
        label = "RST"
        fp.rst.append((ts, who))
    if not letters and flags & _ACK:
        letters.append("A")
        if fp.ack is None and side == 0 and fp.synack is not None:
            fp.ack = ts
            label = "ACK"
    for letter in letters:
        key = letter if side == 0 else letter.lower()
        if key not in seen:
            seen.add(key)
            fp.history += key
    if label and len(fp.control) < CONTROL_MAX:
        fp.control.append((ts, who, label))
