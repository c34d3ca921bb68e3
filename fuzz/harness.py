"""What every fuzz target shares: the input encodings, the targets and their checks.

A *target* is a function of one ``bytes`` input that runs a part of
maildissect on it and raises when it finds a bug (:data:`TARGETS`: one per
dissector — smtp, imap, pop3, http, http2, tls, webmail — then mime, sasl,
forms, decode, tcp and capture). The same functions serve atheris
(``fuzz/fuzz_<name>.py``, coverage-guided, run for a set time by ``make -C
fuzz fuzz``) and the test suite, which replays the committed crashers under
``fuzz/regressions/<target>/`` (tests/test_fuzz_regressions.py) and applies
the same checks in its property tests (tests/test_fuzz_*.py).

What counts as a bug:

- any exception escaping the code under test (dissectors and the MIME parser
  catch none of their own: an exception is a bug);
- ``dissector_error``, the one catch-all, with which the router keeps a
  user's run alive when a dissector raised (the capture target goes through
  the router, whose anomaly says which exception it was);
- an anomaly name missing from the registry (docs/anomalies.md);
- records that break a stated bound (recipients, headers, MIME parts);
- for dissectors, different records when the same bytes arrive in other
  chunks (DESIGN.md: "It accepts data split at any byte").

Dissector inputs are *transcripts*: a sequence of items, each one byte of
header and two bytes of big-endian length::

    header & 0x01      side (0 client, 1 server)
    header & 0x0E == 0x0E   a gap of ``length`` bytes (nothing follows)
    otherwise          ``length`` bytes of data follow (fewer at the end of input)

so that a real conversation, cut at its TCP segments, is a natural seed
(:func:`encode_transcript`, used by ``make_corpus.py``).
"""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from maildissect import anomalies as _registry  # noqa: E402
from maildissect.config import Config, Limits  # noqa: E402
from maildissect.model import CLIENT, SERVER, Anomaly, Message, Session  # noqa: E402
from maildissect.protocols import dissector_class  # noqa: E402
from maildissect.protocols.base import TlsStart  # noqa: E402
from maildissect.protocols.tls import SwitchedSides  # noqa: E402

#: Small limits, so that short inputs reach every limit branch.
TIGHT = Limits(max_frame=4096, max_fragment_bytes=4096, max_fragment_sets=8, fragment_timeout=5.0,
               max_flows=64, max_ooo_bytes=2048, max_ooo_segments=16, idle_timeout=60.0,
               max_detect_bytes=256, max_line=256, max_pending_commands=8, max_recipients=8,
               max_message_size=4096, max_literal=4096, max_nesting=12,
               max_mailbox_messages=64, max_http_header_bytes=1024, max_http_body=4096,
               max_decompressed=8192, max_decompression_ratio=50, max_mime_depth=6, max_mime_parts=24,
               max_headers=24, max_header_bytes=1024, preview_chars=40)

GAP = 0x0E
DISSECTORS = ("smtp", "imap", "pop3", "http", "tls")

#: The anomaly the router's catch-all records when a dissector raised (see the module docstring).
BUG_ANOMALIES = {"dissector_error"}
KNOWN = set(_registry.registry())


class Finding(AssertionError):
    """A bug found by a target (the message says which rule broke)."""


def check_records(records, limits: Limits, context: str = "") -> None:
    """The rules every record list obeys (see the module docstring)."""
    for r in records:
        if isinstance(r, Anomaly):
            if r.name not in KNOWN:
                raise Finding(f"{context}: undocumented anomaly {r.name!r}")
            if r.name in BUG_ANOMALIES:
                raise Finding(f"{context}: {r.name}: {r.detail}")
        elif isinstance(r, Message):
            if r.size < 0 or r.missing_bytes < 0:
                raise Finding(f"{context}: negative size {r.size} / missing {r.missing_bytes}")
            if len(r.rcpt_to) + len(r.rcpt_rejected) > limits.max_recipients:
                raise Finding(f"{context}: {len(r.rcpt_to)} recipients above max_recipients")
            if len(r.headers) > limits.max_headers:
                raise Finding(f"{context}: {len(r.headers)} headers above max_headers")
            if len(r.attachments) > limits.max_mime_parts:
                raise Finding(f"{context}: {len(r.attachments)} attachments above max_mime_parts")
            if r.text_preview is not None and len(r.text_preview) > limits.preview_chars:
                raise Finding(f"{context}: preview of {len(r.text_preview)} characters")


# -- transcripts ----------------------------------------------------------------------
def decode_transcript(data: bytes, max_items: int = 4096) -> list[tuple]:
    """Fuzz input -> ``[(side, bytes) | (side, "gap", n)]`` (see the module docstring)."""
    items: list[tuple] = []
    p, n = 0, len(data)
    while p + 3 <= n and len(items) < max_items:
        head = data[p]
        length = (data[p + 1] << 8) | data[p + 2]
        p += 3
        side = head & 1
        if head & GAP == GAP:
            items.append((side, "gap", length or 1))
            continue
        chunk = data[p:p + length]
        p += len(chunk)
        if chunk:
            items.append((side, chunk))
    return items


def encode_transcript(items) -> bytes:
    """The inverse of :func:`decode_transcript` (data longer than 65,535 bytes is cut in pieces)."""
    out = bytearray()
    for item in items:
        side = item[0]
        if len(item) == 3:
            n = item[2]
            while n > 0:
                out += bytes([side | GAP]) + struct.pack("!H", min(n, 0xFFFF))
                n -= 0xFFFF
            continue
        data = item[1]
        for i in range(0, len(data), 0xFFFF):
            piece = data[i:i + 0xFFFF]
            out += bytes([side]) + struct.pack("!H", len(piece)) + piece
    return bytes(out)


def new_session(protocol: str) -> Session:
    return Session(session_id=1, protocol=protocol, client_ip="10.0.0.1", client_port=40000,
                   server_ip="10.0.0.2", server_port=25, start=0.0)


def feed_transcript(protocol: str, items, config: Config) -> tuple[list, Session]:
    """Run a transcript through a fresh dissector (and, after a TlsStart, the
    router's handling of TLS without a key log).

    Timestamps count *runs*: consecutive data items of one side share one,
    so that joining them (:func:`coalesce`) changes nothing but the chunking.
    """
    session = new_session(protocol)
    d = dissector_class(protocol)(session, config)
    out: list = []
    switched = SwitchedSides(session)

    def take(records):
        # a TlsStart is handled as the router does without a key log: the sides it
        # names are TLS from there on (counted, their hellos read), not parsed
        for r in records:
            if isinstance(r, TlsStart):
                switched.switch(r)
            else:
                out.append(r)
    index, prev = -1, None
    for item in items:
        run_key = item[0] if len(item) == 2 else None
        if run_key is None or run_key != prev:
            index += 1
        prev = run_key
        side = item[0]
        if switched.sides[side]:
            if len(item) == 2:
                switched.tap(side, item[1])
        elif len(item) == 3:
            take(d.gap(side, item[2], float(index)))
        else:
            take(d.feed(side, item[1], float(index)))
    take(d.close(float(index + 1), "fin"))
    return out, session


def coalesce(items) -> list[tuple]:
    """The same conversation with consecutive data of one side joined into one feed."""
    out: list[tuple] = []
    for item in items:
        if len(item) == 2 and out and len(out[-1]) == 2 and out[-1][0] == item[0]:
            out[-1] = (item[0], out[-1][1] + item[1])
        else:
            out.append(item)
    return out


def run_dissector(protocol: str, items, config: Config | None = None, chunking: bool = True) -> list:
    """Feed ``items`` to the ``protocol`` dissector and check the records.

    With ``chunking``, the same bytes with each side's consecutive chunks
    joined must give the same records and the same session.
    """
    config = config or Config(limits=TIGHT)
    records, session = feed_transcript(protocol, items, config)
    check_records(records, config.limits, protocol)
    if chunking:
        joined = coalesce(items)
        if len(joined) != len(items):
            other, other_session = feed_transcript(protocol, joined, config)
            check_records(other, config.limits, protocol + " (joined)")
            if other != records:
                raise Finding(f"{protocol}: records differ when consecutive chunks are joined")
            if other_session != session:
                raise Finding(f"{protocol}: session differs when consecutive chunks are joined")
    return records


# -- transcripts of real captures (seeds) -------------------------------------------------
class _Recorder:
    """Reassembler listener keeping a connection's events as transcript items."""

    def __init__(self, conn):
        self.conn = conn
        self.items: list[tuple] = []

    def data(self, side, data, ts):
        self.items.append((side, bytes(data)))

    def gap(self, side, length, ts):
        self.items.append((side, "gap", length))

    def close(self, ts, reason):
        pass


def capture_transcripts(path, max_items: int = 400) -> list[tuple[str, list]]:
    """``[(protocol, items)]`` for every TCP connection of a capture file, cut at its segments.

    The protocol is the one the pipeline would choose (server port, else the
    first bytes); connections of no mail protocol are left out.
    """
    from maildissect.capture.decode import Decoder
    from maildissect.capture.files import read_frames
    from maildissect.protocols import detect
    from maildissect.tcp import Reassembler
    recorders: list[_Recorder] = []

    def on_open(conn):
        r = _Recorder(conn)
        recorders.append(r)
        return r
    dec = Decoder()
    ra = Reassembler(Limits(), on_open=on_open)
    for ts, lt, data, wirelen in read_frames([str(path)]):
        seg = dec.decode(ts, lt, data, wirelen)
        if seg is not None:
            ra.packet(ts, seg)
    ra.finish()
    out = []
    for r in recorders:
        if not r.items:
            continue
        known = detect.by_port(r.conn.flow.server_port)
        if known is not None:
            proto = "tls" if known[1] else known[0]
        else:
            first = [b"".join(i[1] for i in r.items if len(i) == 2 and i[0] == side)[:512] for side in (0, 1)]
            proto = detect.by_content(first[0], first[1], final=True) or ""
        if proto:
            out.append((proto, r.items[:max_items]))
    return out


def seed_captures() -> list[Path]:
    """The capture files seeds come from: the bundled lab captures and the test captures."""
    found = sorted((ROOT / "captures").glob("*.pcap")) + sorted((ROOT / "tests" / "captures").glob("*/*.pcap"))
    return [p for p in found if "malformed" not in p.parts]


# -- targets ----------------------------------------------------------------------------
def target_dissector(protocol: str):
    def target(data: bytes) -> None:
        run_dissector(protocol, decode_transcript(data))
    target.__name__ = f"target_{protocol}"
    return target


def target_webmail(data: bytes) -> None:
    """HTTP conversations seeded with webmail traffic (JMAP, compose forms, rfc822 up/downloads)."""
    run_dissector("http", decode_transcript(data))


def target_http2(data: bytes) -> None:
    """HTTP/2 conversations (prior knowledge, h2c upgrade, after TLS ALPN) through the HTTP dissector."""
    run_dissector("http", decode_transcript(data))


def target_mime(data: bytes) -> None:
    """One message through the MIME parser, with tight and with default limits."""
    from maildissect import mime
    for config in (Config(limits=TIGHT, keep_bodies=True), Config()):
        msg = Message(protocol="smtp", session_id=1, ts=0.0, direction="sent")
        found = mime.fill_message(msg, data, config)
        check_records(found + [msg], config.limits, "mime")
        if msg.size != len(data):
            raise Finding(f"mime: size {msg.size} for {len(data)} bytes")


def target_sasl(data: bytes) -> None:
    """A SASL exchange: mechanism name, then lines alternating client and server."""
    from maildissect.protocols import sasl
    lines = data.split(b"\n")
    mech = lines[0][:20].decode("latin-1").strip() or "PLAIN"
    for fn in (sasl.decode_plain, sasl.decode_login_prompt, sasl.decode_xoauth2, sasl.decode_oauthbearer,
               sasl.decode_cram_md5, sasl.decode_scram_client_first, sasl.b64decode):
        for line in lines[:8]:
            fn(line)
    ex = sasl.SaslExchange(mech, lines[1] if len(lines) > 1 and lines[1][:1] != b"-" else None)
    for i, line in enumerate(lines[2:64]):
        if i % 2:
            ex.server(line)
        else:
            ex.client(line)
    for value in (ex.user, ex.secret, ex.detail, ex.authzid):
        if value is not None and not isinstance(value, str):
            raise Finding(f"sasl: {type(value).__name__} where text was expected")


def target_forms(data: bytes) -> None:
    """Form bodies: urlencoded, JSON, multipart (fed in pieces), header parameters, login fields."""
    from maildissect.protocols import forms
    fields, _files = forms.parse_urlencoded(data, TIGHT.max_headers)
    if len(fields) > TIGHT.max_headers:
        raise Finding(f"forms: {len(fields)} urlencoded fields above the cap")
    forms.login_fields(fields)
    forms.load_json(data, TIGHT.max_nesting)
    text = data[:300].decode("latin-1")
    forms.header_params(text)
    forms.is_message_type(text, text)
    boundary = data[:data.find(b"\n")].decode("latin-1").strip()[:70] if b"\n" in data else "b"
    parser = forms.MultipartParser(boundary or "b", budget=4096, max_parts=TIGHT.max_mime_parts,
                                   max_header_bytes=TIGHT.max_header_bytes, max_depth=TIGHT.max_mime_depth)
    step = 1 + (data[0] % 61 if data else 0)
    for i in range(0, len(data), step):
        parser.feed(data[i:i + step])
    parser.close()
    parts = parser.all_parts()
    if len(parts) > TIGHT.max_mime_parts * (TIGHT.max_mime_depth + 1):
        raise Finding(f"forms: {len(parts)} multipart parts")
    for part in parts:
        if len(part.sha256) != 64 or len(part.md5) != 32:
            raise Finding("forms: a part without its digests")
        part.text()


def target_decode(data: bytes) -> None:
    """Frames through the link/IP/TCP decoder and its fragment table.

    Input: frames, each ``linktype byte, length (2 bytes), bytes``; the
    linktype byte indexes a list of the supported link types.
    """
    from maildissect.capture.decode import Decoder
    linktypes = (1, 101, 113, 276, 0, 108, 228, 229, 12, 14, 147)
    d = Decoder(TIGHT.max_fragment_bytes, TIGHT.max_fragment_sets, TIGHT.fragment_timeout)
    p, ts = 0, 0.0
    while p + 3 <= len(data):
        lt = linktypes[data[p] % len(linktypes)]
        n = (data[p + 1] << 8) | data[p + 2]
        frame = data[p + 3:p + 3 + n]
        p += 3 + len(frame)
        ts += (data[p - 1] if frame else 1) / 16.0
        seg = d.decode(ts, lt, frame, len(frame))
        if seg is not None:
            key, src, dst, sport, dport, seq, ack, flags, payload, seglen = seg
            if len(src) != len(dst) or len(src) not in (4, 16) or len(key) != 2 * len(src) + 4:
                raise Finding("decode: inconsistent addresses in a segment")
            if len(payload) > seglen and seglen >= 0:
                raise Finding(f"decode: {len(payload)} payload bytes for a {seglen}-byte segment")
            if seglen < 0:
                raise Finding(f"decode: negative segment length {seglen}")
        if len(d._frags) > TIGHT.max_fragment_sets:
            raise Finding(f"decode: {len(d._frags)} datagrams in reassembly")
        held = sum(len(p) for dg in d._frags.values() for p in dg.pieces)
        if held > TIGHT.max_fragment_bytes * TIGHT.max_fragment_sets:
            raise Finding(f"decode: {held} fragment bytes held")
    d.finish()
    check_records(d.anomalies, TIGHT, "decode")


class _StreamCheck:
    """Listener that accounts for every byte of each side (data + gaps)."""

    def __init__(self):
        self.data = [0, 0]
        self.gaps = [0, 0]
        self.closed = 0

    def data_(self, side, data, ts):
        if self.closed:
            raise Finding("tcp: data after close")
        if not data:
            raise Finding("tcp: empty data event")
        self.data[side] += len(data)

    def gap(self, side, length, ts):
        if length <= 0:
            raise Finding(f"tcp: gap of {length} bytes")
        self.gaps[side] += length

    def close(self, ts, reason):
        if self.closed:
            raise Finding("tcp: closed twice")
        self.closed += 1


def target_tcp(data: bytes) -> None:
    """Segments of a few connections through the reassembler.

    Each segment takes 8 input bytes: connection and direction, flags, a
    signed sequence delta from a per-direction base (so overlaps, holes,
    retransmissions and wraparound all occur), a payload length, and the
    payload comes from a pattern whose bytes depend on the *input* so that
    overlaps can conflict.
    """
    from maildissect.tcp import Reassembler
    listeners = []

    def on_open(conn):
        lst = _StreamCheck()
        lst.data, lst.gaps = [0, 0], [0, 0]
        listeners.append((conn, lst))
        return type("L", (), {"data": lst.data_, "gap": lst.gap, "close": lst.close})()
    ra = Reassembler(TIGHT, on_open=on_open)
    cip, sip = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    base = [0xFFFFFF00, 0x7FFFFF00]
    p, i = 0, 0
    while p + 8 <= len(data) and i < 2000:
        conn_no, flags, d_hi, d_lo, length, fill, ack_hi, ack_lo = data[p:p + 8]
        p += 8
        i += 1
        side = conn_no & 1
        cport = 40000 + (conn_no >> 1) % 4
        delta = struct.unpack("!h", bytes([d_hi, d_lo]))[0]
        seq = (base[side] + delta * 7) & 0xFFFFFFFF
        ack = (base[1 - side] + struct.unpack("!h", bytes([ack_hi, ack_lo]))[0] * 7) & 0xFFFFFFFF
        payload = bytes((fill + k) & 0xFF for k in range(length % 97))
        seglen = len(payload) + (length >> 7) * 3  # sometimes "cut by the snapshot length"
        if side == CLIENT:
            src, dst, sp, dp = cip, sip, cport, 25
        else:
            src, dst, sp, dp = sip, cip, 25, cport
        key = src + dst + struct.pack("!HH", sp, dp)
        ra.packet(i / 10.0, (key, src, dst, sp, dp, seq, ack, flags & 0x1F, payload, seglen))
        for conn, _lst in listeners:
            for h in conn.halves or ():  # a closed connection keeps no per-direction state
                if h.ooo_bytes > TIGHT.max_ooo_bytes + 97 or len(h.starts) > TIGHT.max_ooo_segments + 1:
                    raise Finding(f"tcp: {h.ooo_bytes} bytes / {len(h.starts)} segments buffered")
                if h.ooo_bytes != sum(len(v) for v in h.segs.values()) or len(h.segs) != len(h.starts):
                    raise Finding("tcp: out-of-order bookkeeping inconsistent")
    ra.finish()
    for conn, lst in listeners:
        if not lst.closed:
            raise Finding("tcp: a connection was never closed")
        flow = conn.flow
        for side, delivered in ((CLIENT, flow.bytes_client), (SERVER, flow.bytes_server)):
            if lst.data[side] != delivered:
                raise Finding(f"tcp: side {side} delivered {lst.data[side]} bytes in data events, "
                              f"the flow says {delivered}")
        if lst.gaps[CLIENT] + lst.gaps[SERVER] != flow.gap_bytes:
            raise Finding(f"tcp: gap events {lst.gaps} != the flow's gap bytes {flow.gap_bytes}")
    check_records(ra.anomalies, TIGHT, "tcp")


def target_capture(data: bytes) -> None:
    """A whole capture file (pcap or pcapng bytes) through the pipeline."""
    from maildissect.capture.files import CaptureError, CaptureReader
    from maildissect.pipeline import Pipeline
    for limits in (TIGHT, Limits()):
        try:
            reader = CaptureReader.from_stream(io.BytesIO(data), "fuzz", limits.max_frame)
        except CaptureError:
            return
        pipe = Pipeline(Config(limits=limits))
        pipe.readers.append(reader)
        pipe.process(iter(reader))
        c = pipe.collector
        for table in (c.anomalies, c.commands, c.messages, c.credentials, c.http, c.mailboxes):
            check_records(table, limits, "capture")
        ids = [f.flow_id for f in c.flows]
        if len(ids) != len(set(ids)):
            raise Finding("capture: a flow was reported twice")


TARGETS = {name: target_dissector(name) for name in DISSECTORS}
TARGETS.update(webmail=target_webmail, http2=target_http2, mime=target_mime, sasl=target_sasl, forms=target_forms,
               decode=target_decode, tcp=target_tcp, capture=target_capture)


def preload() -> None:
    """Import every module a target reaches (atheris instruments what is imported in its block)."""
    import importlib
    for mod in ("maildissect.protocols.http", "maildissect.protocols.http2", "maildissect.protocols.imap", "maildissect.protocols.pop3",
                "maildissect.protocols.smtp", "maildissect.protocols.tls", "maildissect.protocols.webmail",
                "maildissect.protocols.forms", "maildissect.protocols.sasl", "maildissect.protocols.detect",
                "maildissect.capture.decode", "maildissect.capture.files", "maildissect.mime",
                "maildissect.tcp", "maildissect.pipeline"):
        importlib.import_module(mod)


def main(name: str) -> None:
    """Run target ``name`` under atheris (libFuzzer options and corpus directories in sys.argv).

    The calling script imports this module inside
    ``atheris.instrument_imports(include=["maildissect"])`` and calls
    :func:`preload` there, so that maildissect is instrumented for coverage.
    """
    import atheris
    sys.setrecursionlimit(3000)
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()
