"""The pipeline: capture files -> frames -> segments -> streams -> dissectors -> records.

One direction, no back and forth (DESIGN.md "Data flow"). :class:`Pipeline`
owns the decoder, the reassembler and a :class:`Collector` of records; each TCP
connection gets a :class:`SessionRouter` that detects its protocol and feeds
its dissector. Records are collected in plain lists; :mod:`maildissect.frames`
turns them into DataFrames once, at the end.
"""

from __future__ import annotations

import gc
from typing import Callable, Iterable

from . import anomalies as anomaly_registry
from .capture.decode import Decoder
from .capture.files import CaptureReader, FrameOrigins
from .capture.sharding import MIN_FIXED, frame_shard, shard_of
from .config import Config
from .model import (CLIENT, SERVER, SIDE_NAMES, Anomaly, Command, Credential, Flow, HttpRequest,
                    MailboxEvent, Message, Session)
from .decrypt import TlsSplice
from .protocols import detect
from .protocols import dissector_class
from .protocols.base import TlsStart, TunnelStart
from .protocols.claim import HOLD, MISMATCH, PortClaim
from .protocols.sniff import Sniffer
from .protocols.tls import SwitchedSides
from .tcp import Reassembler
from .text import clean, scrub

ANOMALIES = {
    "starttls_plaintext": "STARTTLS (or STLS) was accepted but the bytes that followed were not TLS: the capture "
                          "holds the dialogue in clear (a TLS-inspecting proxy, a decrypting load balancer, an "
                          "export of decrypted traffic); it is parsed as plaintext from there",
    "dissector_error": "a dissector failed on this input (a bug: please report it); the rest of the session was skipped",
    "session_records_capped": "a session produced more records of one kind than limits.max_records; the rest are "
                              "counted (sessions table) but not listed",
}

#: record type -> the Collector list it goes to (the types emit() does not handle itself)
_TABLES = {Anomaly: "anomalies", Credential: "credentials", HttpRequest: "http", MailboxEvent: "mailboxes"}

#: record type -> its table's name, for anomaly details
_TABLE_NAMES = {Command: "commands", Message: "messages", **_TABLES}

#: segments at least this long are coalesced before dissection, up to BATCH bytes
BULK = 512
BATCH = 65536

#: first bytes of each side kept for protocol detection
DETECT_HEAD = 512

#: bytes of a TLS record header: content type, version, length
TLS_HEADER = 5

#: implicit-TLS flows are labelled like this in the flows table
TLS_LABELS = {"smtp": "smtps", "imap": "imaps", "pop3": "pop3s", "http": "https"}


def place_frames(collector: "Collector", origins: FrameOrigins | None) -> None:
    """Give every record its capture file and its frame number in that file.

    While the pipeline runs, records carry the frame's number in the merged
    reading (what ``--jobs`` merges and numbers connections by); once the
    results are whole, they are given the file and the number Wireshark shows
    for that frame in that file alone. Flows keep the merged number in
    ``merged_frame``. Records placed already (a capture file's own damage)
    are left as they are.
    """
    if origins is None:
        return
    single = origins.single
    name = origins.names[0] if origins.names else None
    locate = origins.locate
    for f in collector.flows:
        if f.file is None:
            f.merged_frame = f.first_frame
            if single:
                f.file = name
            elif f.first_frame:
                f.file, f.first_frame = locate(f.first_frame)
    flows = {f.flow_id: f for f in collector.flows}
    for s in collector.sessions:
        f = flows.get(s.session_id)
        if f is not None:
            s.first_frame, s.file = f.first_frame, f.file
    for table in ("commands", "messages", "credentials", "http", "mailboxes", "anomalies"):
        for r in getattr(collector, table):
            if r.file is not None or r.frame is None:
                continue
            if single:
                r.file = name
            else:
                r.file, r.frame = locate(r.frame)


class Collector:
    """Lists of records, one per table: the list sink (maildissect.runner)."""

    def __init__(self):
        self.flows: list[Flow] = []
        self.sessions: list[Session] = []
        self.commands: list[Command] = []
        self.messages: list[Message] = []
        self.credentials: list[Credential] = []
        self.anomalies: list[Anomaly] = []
        self.http: list[HttpRequest] = []
        self.mailboxes: list[MailboxEvent] = []

    @property
    def records(self) -> "Collector":
        """The collector that holds the records (a sink wrapping one gives that one)."""
        return self

    def hook(self, callback, record_at: int = -1):
        """``callback`` as records it sees on their way (its argument ``record_at``) must reach
        it: unchanged here; masked by :class:`maildissect.redact.Redacting`."""
        return callback

    def close(self) -> None:
        """The records are whole (after a merge): nothing to do for plain lists."""


#: TLS record content types: change_cipher_spec, alert, handshake, application_data
TLS_CONTENT_TYPES = frozenset((20, 21, 22, 23))


def after_starttls(client_first: bytes, server_first: bytes, final: bool) -> str | None:
    """What follows an accepted STARTTLS, judged from the first bytes of each side after
    the switch (at most a record header): "tls" when they are a TLS record header (content
    type 20 to 23, major version 3), "plain" when they cannot be one -- a switch that did
    not happen, as TLS-inspecting proxies and decrypting load balancers write their captures
    (and as captures exported decrypted read). The client's bytes decide (a TLS client
    speaks first); the server's when the client sent none. None while undecided; at the end
    (``final``) what could not be told apart is taken as TLS."""
    for first in (client_first, server_first):
        if not first:
            continue
        if first[0] not in TLS_CONTENT_TYPES:
            return "plain"
        if len(first) >= 2:
            return "tls" if first[1] == 3 else "plain"
        return "tls" if final else None
    return "tls" if final else None


class SessionRouter:
    """Listener for one connection: detects the protocol, then feeds the dissector.

    It also decides what the bytes of a connection are when TLS is involved: at
    the first byte of an implicit-TLS connection, and where a dissector returns
    a :class:`~maildissect.protocols.base.TlsStart` event (STARTTLS or STLS
    accepted). Without a key log the bytes after the switch are TLS: counted,
    their hellos read (:class:`~maildissect.protocols.tls.TlsTap`). When a key log
    decrypted the connection, a :class:`~maildissect.decrypt.TlsSplice` turns them
    into plaintext that goes on to the same dissector (after its ``resume``).
    """

    __slots__ = ("pipeline", "conn", "session", "dissector", "sniffer", "lazy", "consume",
                 "batch", "batch_len", "batch_side", "batch_ts", "batch_frame", "splice", "switched", "after",
                 "inner", "claim")

    def __init__(self, pipeline: "Pipeline", conn):
        self.pipeline = pipeline
        self.conn = conn
        self.session = None
        self.dissector = None
        # Bulk segments of one side are handed on together (see data()).
        self.batch: list[bytes] = []
        self.batch_len = 0
        self.batch_side = -1
        self.batch_ts = 0.0
        self.batch_frame = 0
        self.lazy = None  # (protocol, implicit TLS) whose dissector waits for the first byte
        self.consume = None  # where delivered bytes go: the dissector's, or the TLS layer's, data
        self.splice = None  # a decrypt.TlsSplice when a key log decrypted this connection
        self.switched = None  # the sides a dissector switched to TLS, when no key decrypts them
        self.after = None  # a Sniffer holding their first bytes until they say what follows the switch
        self.inner = None  # a Sniffer choosing the protocol inside decrypted TLS on an unknown port, or a tunnel
        self.claim = None  # a PortClaim while a port-mapped session's protocol is unconfirmed
        self.sniffer = None
        flow = conn.flow
        known = detect.by_port(flow.server_port, pipeline.config.ports)
        if known is not None:
            self._start(known[0], known[1], lazy=True)
        else:
            # protocol unknown: hold the first events until their bytes say which it is
            self.sniffer = Sniffer(detect.by_content, DETECT_HEAD, pipeline.config.limits.max_detect_bytes)

    def _start(self, protocol: str, implicit_tls: bool = False, lazy: bool = False, claimed: bool = False):
        """Start dissecting ``protocol`` (``claimed``: chosen by the server port alone)."""
        flow = self.conn.flow
        if not protocol:
            return
        flow.protocol = TLS_LABELS.get(protocol, protocol) if implicit_tls else protocol
        if lazy:
            # The session and its dissector are made when the first byte (or gap)
            # arrives: a SYN flood's half-open connections on a mail port then cost
            # a flow record each, not a dissector each (memory and time).
            self.lazy = (protocol, implicit_tls)
            return
        tls = implicit_tls or protocol == "tls"
        cls = dissector_class("tls" if implicit_tls else protocol)
        if cls is None or not self.pipeline.config.dissect:
            return
        sess = Session(flow.flow_id, protocol, flow.client_ip, flow.client_port, flow.server_ip,
                       flow.server_port, flow.start, flow.end)
        if tls:
            sess.tls = True
        self.session = sess
        decryption = self.pipeline.decryption
        stream = decryption.match(flow) if decryption is not None else None
        try:
            if stream is None:
                self.dissector = cls(sess, self.pipeline.config)
                self.consume = self._feed
                lim = self.pipeline.config.limits
                if claimed and not tls and flow.syn_seen and lim.max_start_violations:
                    # the port's word is checked against the session's first bytes (a session
                    # picked up in its middle has no start to check)
                    self.claim = PortClaim(protocol, lim.max_start_violations, lim.max_claim_bytes)
                return
            # A key log decrypted this connection: its plaintext goes to the dissector
            # of the protocol inside (made after the splice has set the session's ALPN,
            # which tells HTTP/2 from HTTP/1).
            if not tls:
                self.dissector = cls(sess, self.pipeline.config)
            self.splice = TlsSplice(sess, self.conn, stream, decryption, tls, self._plain, self._lost)
            self.consume = self.splice.data
            if protocol == "tls":
                # TLS on a port that names no protocol: the first plaintext says which
                self.inner = Sniffer(detect.by_content, DETECT_HEAD, self.pipeline.config.limits.max_detect_bytes)
            elif tls:
                self.dissector = dissector_class(protocol)(sess, self.pipeline.config)
        except Exception as e:  # pragma: no cover - constructor bugs
            self._crash(e, flow.start)

    # -- listener interface ---------------------------------------------------------
    def data(self, side: int, data: bytes, ts: float):
        if self.consume is not None:
            # Full-size segments (a message body, a literal, an upload) are joined into
            # calls of up to BATCH bytes: dissectors do their per-call work a few times
            # per 64 KiB instead of once per segment. Small segments (commands,
            # replies) flush the batch and go through at once, so the interleaving of
            # the two sides, and the time of every command and reply, are unchanged;
            # bytes of a batch carry the time of its last segment.
            if len(data) >= BULK:
                if self.batch_side != side and self.batch_side >= 0:
                    self._flush()
                self.batch.append(data)
                self.batch_len += len(data)
                self.batch_side = side
                self.batch_ts = ts
                self.batch_frame = self.pipeline.reassembler.frame
                if self.batch_len >= BATCH:
                    self._flush()
                return
            if self.batch_side >= 0:
                self._flush()
            self.consume(side, data, ts)
        elif self.lazy is not None:
            self._materialize()
            if self.consume is not None:
                self.data(side, data, ts)
        elif self.sniffer is not None:
            proto = self.sniffer.data(side, data, ts)
            if proto is not None:
                self._detected(proto, ts)

    def _flush(self):
        batch = self.batch
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        side, ts = self.batch_side, self.batch_ts
        self.batch = []
        self.batch_len = 0
        self.batch_side = -1
        if self.consume is not None:
            # what the batch completes is dated to the frame of its last segment, as its time is
            reasm = self.pipeline.reassembler
            frame, reasm.frame = reasm.frame, self.batch_frame
            try:
                self.consume(side, data, ts)
            finally:
                reasm.frame = frame

    def _feed(self, side: int, data: bytes, ts: float):
        """Bytes for the dissector (plaintext), unless its side switched to TLS."""
        if self.switched is not None and self.switched.sides[side]:
            self._after_switch(side, data, ts)
        elif self.inner is not None:
            self._plain(side, data, ts)
        elif self.dissector is not None:
            if self.claim is not None:
                self.claim.data(side, data, ts)
            self._call(self.dissector.feed, ts, side, data, ts)

    def gap(self, side: int, length: int, ts: float):
        if self.batch_side >= 0:
            self._flush()
        if self.lazy is not None:
            self._materialize()
        if self.splice is not None:
            self.splice.gap(side, length, ts)
        elif self.consume is not None:
            self._lost(side, length, ts)
        elif self.sniffer is not None:
            self.sniffer.gap(side, length, ts)

    def close(self, ts: float, reason: str):
        if self.batch_side >= 0:
            self._flush()
        if self.sniffer is not None:
            self._detected(self.sniffer.decide(final=True), ts)
        if self.splice is not None:
            self.splice.close(ts)
        if self.inner is not None:
            self._inner_detected(self.inner.decide(final=True), ts)
        if self.after is not None:
            self._after_decided(self.after.decide(final=True), ts)
        dissector = self.dissector
        if dissector is not None:
            self._call(dissector.close, ts, ts, reason)
            if self.dissector is not None and self.dissector is not dissector:
                # the port's claim failed on the last bytes: the protocol found instead ends too
                if self.splice is not None:
                    self.splice.close(ts)
                self._call(self.dissector.close, ts, ts, reason)
        if self.claim is not None:
            self._confirmed(ts)

    def _materialize(self):
        """Make the session and dissector of a connection whose protocol its port decided."""
        protocol, implicit_tls = self.lazy
        self.lazy = None
        self._start(protocol, implicit_tls, claimed=True)

    def _call(self, method, ts: float, *args):
        """Run a dissector method; a failure is contained to this session."""
        try:
            records = method(*args)
        except anomaly_registry.StrictError:
            raise
        except Exception as e:
            self._crash(e, ts)
            return
        claim = self.claim
        if claim is not None:
            verdict = claim.judge(records or (), method.__name__ == "feed")
            if verdict == HOLD:
                return
            if verdict == MISMATCH:
                self._mismatch(ts)
                return
            self.claim = None
            records = claim.release()
        if records:
            event = self.pipeline.emit(self.session, records)
            if event is not None:
                self._event(event)

    def _event(self, event):
        """What a dissector said starts here: TLS (STARTTLS accepted) or a tunnel."""
        if type(event) is TunnelStart:
            self._tunnel(event)
        else:
            self._switched(event)

    # -- the port's claim -------------------------------------------------------------
    def _confirmed(self, ts: float):
        """The port's protocol stands (the connection ended before a verdict): its records go on."""
        claim, self.claim = self.claim, None
        records = claim.release()
        if records and self.session is not None:
            event = self.pipeline.emit(self.session, records)
            if event is not None:
                self._event(event)

    def _mismatch(self, ts: float):
        """The session broke its port's protocol from the start (protocols/claim.py): drop
        that dissector and its records, and read the bytes as what they look like."""
        claim, self.claim = self.claim, None
        flow = self.conn.flow
        found = detect.by_content(claim.first[CLIENT], claim.first[SERVER], final=True) or ""
        if found == claim.protocol:
            found = ""  # it looks like the protocol whose dissector just failed on it: nothing to read
        self.dissector = None
        self.session = None
        self.consume = None
        flow.protocol = ""
        self.pipeline.collector.anomalies.append(anomaly_registry.make(
            ts, flow.flow_id, "", "protocol_mismatch", clean(claim.describe(flow.server_port, found)[:300])[0],
            self.pipeline.config.strict))
        if found:
            self._start(found)
            if self.session is not None:
                self.session.anomalies += 1
            claim.replay(self._replayed, self.gap)

    def _replayed(self, side: int, data: bytes, ts: float):
        if self.consume is not None:
            self.consume(side, data, ts)

    # -- detection ------------------------------------------------------------------
    def _detected(self, proto: str | None, ts: float):
        """The first bytes named the protocol (or "" for none): start it and replay them."""
        if proto is None:
            return
        sniffer, self.sniffer = self.sniffer, None
        first = sniffer.first
        if proto == "" and any(first):
            flow = self.conn.flow
            self.pipeline.collector.anomalies.append(Anomaly(
                ts, flow.flow_id, "", "detect_unknown_protocol",
                f"port {flow.server_port}: {bytes(first[CLIENT][:24] or first[1][:24])!r}",
                frame=self.pipeline.reassembler.frame))
        self._start(proto)
        sniffer.replay(self.data, self.gap)

    # -- TLS ------------------------------------------------------------------------
    def _switched(self, event: TlsStart):
        """The dissector accepted STARTTLS (or STLS): what the bytes after the switch are.

        With a key log they are decrypted plaintext for the same dissector, which
        starts over as a fresh TLS session does. Without one, the first bytes of each
        side after the switch are held until they decide (:func:`after_starttls`); TLS
        bytes are then counted and their hellos read.
        """
        self.session.tls = True
        ts = event.ts
        if self.splice is not None:
            self.splice.start(event.sides)
            self._call(self.dissector.resume, ts, ts)
            for side in (CLIENT, SERVER):
                if event.held[side] and self.dissector is not None:
                    self._call(self.dissector.feed, ts, side, event.held[side], ts)
            return
        if self.switched is None:
            self.switched = SwitchedSides(self.session)
            self.after = Sniffer(after_starttls, TLS_HEADER, self.pipeline.config.limits.max_detect_bytes)
        for side in event.sides:
            self.switched.sides[side] = True
            if event.held[side]:
                self._after_switch(side, event.held[side], ts)

    def _after_switch(self, side: int, data: bytes, ts: float):
        """Bytes of a side the dissector switched to TLS (no key log decrypts them)."""
        after = self.after
        if after is None:
            self.switched.tap(side, data)
            return
        verdict = after.data(side, data, ts)
        if verdict is not None:
            self._after_decided(verdict, ts)

    def _after_decided(self, verdict: str, ts: float):
        """The first bytes after the switch said what follows: TLS, counted and its hellos read;
        or plaintext, parsed on by the same dissector from the state a fresh TLS session starts
        in (docs/protocols/tls.md), with the anomaly starttls_plaintext."""
        after, self.after = self.after, None
        if verdict != "plain":
            tap = self.switched.tap
            after.replay(lambda side, data, ts: tap(side, data), lambda side, length, ts: None)
            return
        self.switched = None  # no side switched after all
        sess = self.session
        first = after.first[CLIENT][:32] or after.first[SERVER][:32]
        self.pipeline.collector.anomalies.append(anomaly_registry.make(
            ts, sess.session_id, SIDE_NAMES[CLIENT if after.first[CLIENT] else SERVER], "starttls_plaintext",
            clean(f"first bytes after the go-ahead: {bytes(first)!r}")[0], self.pipeline.config.strict))
        sess.anomalies += 1
        if self.dissector is not None:
            self._call(self.dissector.resume, ts, ts)
        # (a second STARTTLS in the replayed dialogue switches again, through _feed)
        after.replay(self._feed, self._lost)

    def _plain(self, side: int, data: bytes, ts: float):
        """Plaintext from a decrypted connection's splice, or the bytes inside a tunnel."""
        if self.inner is not None:
            proto = self.inner.data(side, data, ts)
            if proto is not None:
                self._inner_detected(proto, ts)
        elif self.dissector is not None:
            self._call(self.dissector.feed, ts, side, data, ts)

    def _lost(self, side: int, length: int, ts: float):
        """Bytes of ``side`` never captured (for a decrypted connection: their plaintext)."""
        if self.switched is not None and self.switched.sides[side]:
            if self.after is not None:
                self.after.gap(side, length, ts)
            return  # TLS bytes: lost with their ciphertext, nothing to parse
        if self.inner is not None:
            self.inner.gap(side, length, ts)
        elif self.dissector is not None:
            if self.claim is not None:
                self.claim.gap(side, length, ts)
            self._call(self.dissector.gap, ts, side, length, ts)

    def _inner_detected(self, proto: str | None, ts: float):
        """The first plaintext of a decrypted connection on an unknown port, or the first bytes
        inside a tunnel, named their protocol: its dissector continues the session."""
        if proto is None:
            return
        inner, self.inner = self.inner, None
        sess = self.session
        flow = self.conn.flow
        cls = None
        if proto == "tls" and self.splice is None and sess.tunnel:
            # TLS inside a tunnel, no key for it: its metadata. The target's port may say what
            # it carries (465: SMTP...), as it does for a connection made directly.
            known = detect.by_port(_port_of(sess.tunnel_target), self.pipeline.config.ports)
            label = known[0] if known is not None and known[1] else "tls"
            sess.protocol = label
            sess.tls = True
            flow.protocol = TLS_LABELS.get(label, label)
            cls = dissector_class("tls")
        elif proto and proto != "tls":
            cls = dissector_class(proto)
            if cls is not None:
                sess.protocol = proto
                flow.protocol = TLS_LABELS.get(proto, proto) if sess.tls and not sess.tunnel else proto
        elif not proto and sess.tunnel:
            first = inner.first[CLIENT][:24] or inner.first[SERVER][:24]
            self.pipeline.collector.anomalies.append(Anomaly(
                ts, sess.session_id, "", "detect_unknown_protocol",
                clean(f"inside the {sess.tunnel} tunnel to {sess.tunnel_target}: {bytes(first)!r}")[0]))
            sess.anomalies += 1
        if cls is not None:
            try:
                self.dissector = cls(sess, self.pipeline.config)
            except Exception as e:  # pragma: no cover - constructor bugs
                self._crash(e, ts)
                return
            if sess.tunnel:
                # the inner protocol's commands are numbered on from the proxy's
                self.dissector._seq = sess.commands
        if self.dissector is not None:
            inner.replay(self._plain, self._lost)

    # -- tunnels ----------------------------------------------------------------------
    def _tunnel(self, event: TunnelStart):
        """A tunnel is up (an HTTP CONNECT answered 2xx, a SOCKS request granted): what flows
        in it is the session's own protocol, found by its first bytes (docs/protocols/detection.md)."""
        sess = self.session
        sess.tunnel = event.kind
        sess.tunnel_target = event.target
        self.dissector = None  # the proxy's handshake is over; its dissector parses nothing more
        self.inner = Sniffer(detect.by_content, DETECT_HEAD, self.pipeline.config.limits.max_detect_bytes)
        for side in (CLIENT, SERVER):
            if event.held[side]:
                self._plain(side, event.held[side], event.ts)

    def _crash(self, exc: Exception, ts: float):
        """A dissector raised: record it, stop dissecting this session, keep going."""
        sess = self.session
        if self.claim is not None:
            # what the dissector parsed before it failed is kept
            claim, self.claim = self.claim, None
            held = claim.release()
            if held and sess is not None:
                self.pipeline.emit(sess, held)
        self.dissector = None
        self.consume = None
        self.splice = None
        detail = clean(f"{type(exc).__name__}: {exc}"[:300])[0]
        self.pipeline.collector.anomalies.append(Anomaly(ts, sess.session_id if sess else None, "",
                                                         "dissector_error", detail,
                                                         frame=self.pipeline.reassembler.frame))
        if sess is not None:
            sess.anomalies += 1


def _port_of(target: str | None) -> int:
    """The port of a ``host:port`` tunnel target (0 when there is none)."""
    if not target:
        return 0
    port = target.rpartition(":")[2]
    return int(port) if port.isascii() and port.isdigit() and len(port) <= 5 else 0


class Pipeline:
    """The one runner: ``Pipeline(source, sink, config).run()`` reads the source's frames
    through decoding, reassembly and the dissectors into the sink, and returns the
    run's :class:`~maildissect.runner.Stats` (maildissect.runner: sources and sinks).

    ``Pipeline(config)`` is a pipeline without a source, fed by :meth:`process`
    (tests, fuzzing) and collecting into a :class:`Collector`.
    """

    def __init__(self, source=None, sink=None, config: Config | None = None,
                 message_hook: Callable[[Message], None] | None = None,
                 flow_hook: Callable | None = None, file_hook: Callable | None = None, segments=None):
        if isinstance(source, Config):  # Pipeline(config)
            source, config = None, source
        self.config = config or Config()
        self.source = source
        #: the sink records go to (its tables are appended to as records complete)
        self.collector = sink if sink is not None else Collector()
        # hooks see records as every other output does (masked by a redacting sink)
        self.message_hook = self.collector.hook(message_hook) if message_hook is not None else None
        # called with (request, session) for each HttpRequest carrying files
        self.file_hook = self.collector.hook(file_hook, 0) if file_hook is not None else None
        self.flow_hook = flow_hook  # called with each closed Connection (e.g. follow)
        self.decryption = None  # a maildissect.decrypt.Decryption when a key log decrypts TLS
        lim = self.config.limits
        self._listed: dict[int, dict[str, int]] = {}  # session id -> records listed per table (see emit)
        self._capped: set[tuple[int, str]] = set()
        self.decoder = Decoder(lim.max_fragment_bytes, lim.max_fragment_sets, lim.fragment_timeout)
        self.reassembler = Reassembler(lim, on_open=self._open, on_close=self._closed)
        #: where decoded segments go: the reassembler, or a Dask decode stage's buckets
        self.segments = segments if segments is not None else self.reassembler
        self.readers: list[CaptureReader] = []
        self.frames = 0
        self.interrupted = False  # an interruptible source's reading was ended by Ctrl-C
        #: where each frame came from (set by the source; see place_frames)
        self.origins: FrameOrigins | None = None

    # -- connection hooks -----------------------------------------------------------
    def _open(self, conn):
        return SessionRouter(self, conn)

    def _closed(self, conn, router):
        flow = conn.flow
        self.collector.flows.append(flow)
        sess = router.session if router is not None else None
        if sess is not None:
            self._listed.pop(sess.session_id, None)  # closed: no more records come
        if sess is not None and not (flow.bytes_client or flow.bytes_server or flow.gaps or sess.commands):
            sess = None  # a refused or unanswered attempt is a flow, not a session
        if sess is not None:
            bad = scrub(sess)
            if bad:
                self._unwritable(sess, sess, bad, "sessions")
            sess.end = flow.end
            sess.first_frame = flow.first_frame
            sess.bytes_client = flow.bytes_client
            sess.bytes_server = flow.bytes_server
            sess.anomalies += conn.anomalies
            if flow.gaps:
                sess.complete = False
            self.collector.sessions.append(sess)
        if self.flow_hook is not None:
            self.flow_hook(conn)

    # -- records ------------------------------------------------------------------
    def emit(self, session: Session, records: Iterable) -> TlsStart | None:
        """Collect a session's records; returns the dissector's TlsStart or TunnelStart event among
        them, if any."""
        c = self.collector
        switch = None
        cap = self.config.limits.max_records
        frame = self.reassembler.frame  # the frame being dissected completed them
        for r in records:
            bad = scrub(r)
            if bad:
                self._unwritable(session, r, bad, _TABLE_NAMES.get(type(r), "records"))
            t = type(r)
            if t is Command:
                r.frame = frame
                session.commands += 1
                if session.commands <= cap:
                    c.commands.append(r)
                else:
                    self._over(session, "commands", r.ts)
            elif t is Message:
                r.frame = frame
                session.messages += 1
                r.message_index = session.messages
                r.client_ip, r.client_port = session.client_ip, session.client_port
                r.server_ip, r.server_port = session.server_ip, session.server_port
                if session.tls:
                    r.tls = True
                    if session.decrypted:
                        r.decrypted = True
                if r.helo is None and session.helo:
                    r.helo = session.helo
                if self.message_hook is not None:
                    self.message_hook(r)
                    r.raw = None  # written: the bytes are not kept for the rest of the run
                    for a in r.attachments:
                        a.data = None
                    for a in r.entities:
                        a.data = None
                if session.messages <= cap:
                    c.messages.append(r)
                else:
                    self._over(session, "messages", r.ts)
            else:
                if t is HttpRequest and self.file_hook is not None and (r.files or r.response_file is not None):
                    self.file_hook(r, session)
                    for a in r.files:
                        a.data = None
                    if r.response_file is not None:
                        r.response_file.data = None
                table = _TABLES.get(t)
                if table is None:
                    if t is TlsStart or t is TunnelStart:
                        switch = r
                    continue
                r.frame = frame
                listed = self._listed.get(session.session_id)
                if listed is None:
                    listed = self._listed[session.session_id] = {}
                n = listed[table] = listed.get(table, 0) + 1
                if n <= cap:
                    getattr(c, table).append(r)
                else:
                    self._over(session, table, r.ts)
        return switch

    def _unwritable(self, session: Session, record, bad: list[str], table: str) -> None:
        """Say that the strings of ``record`` named in ``bad`` held lone surrogates.

        The last check of the first hostile-content rule (DESIGN.md): every
        string of every record encodes as UTF-8. The decoders (maildissect.text)
        already make it so; :func:`~maildissect.text.scrub` repaired what still
        slipped through, and the repair is an anomaly naming the fields.
        """
        ts = getattr(record, "ts", None)
        if ts is None:
            ts = session.start
        detail = ", ".join(f"{table}.{name}" for name in dict.fromkeys(bad))
        a = anomaly_registry.make(ts, session.session_id, "", "text_invalid_unicode", detail[:300],
                                  self.config.strict)
        a.frame = self.reassembler.frame
        self.collector.anomalies.append(a)
        session.anomalies += 1

    def _over(self, session: Session, table: str, ts) -> None:
        """A session passed limits.max_records for ``table``: said once, then records are dropped.

        Without the cap a flood of tiny commands (3 bytes each: "X\r\n") made a
        record and an anomaly per line, some 150 times the capture's size in memory.
        """
        key = (session.session_id, table)
        if key not in self._capped:
            self._capped.add(key)
            self.collector.anomalies.append(Anomaly(
                ts, session.session_id, "", "session_records_capped",
                f"more than {self.config.limits.max_records} {table}: the rest are counted, not listed",
                frame=self.reassembler.frame))

    # -- running ------------------------------------------------------------------
    def run(self, progress: Callable[[int, int], None] | None = None):
        """Read the source into the sink; returns the run's Stats.

        ``progress(done_bytes, total_bytes)`` is called now and then.
        """
        source = self.source
        self.process(source.open(self), progress, source.shard)
        return source.stats(self)

    def process(self, frames, progress=None, shard: tuple[int, int, int] | None = None) -> None:
        """Decode, reassemble and dissect ``frames`` (``(ts, linktype, data, wirelen)``,
        or None for a frame the reader skipped as another shard's): the one frame loop.

        ``shard=(lo, hi, n)``: handle only the connections whose bucket (their
        endpoint hash modulo ``n``, maildissect.capture.sharding) is in
        ``lo``..``hi - 1`` (every frame is still read and counted, so frame
        numbers and capture-level anomalies are the same in every shard).

        A source may give its own ``decode`` (segments decoded already), say what time
        closes the connections still open (``closing_ts(last frame's time)``: a live
        capture's stop), and be ``interruptible``: Ctrl-C (or SIGTERM made one) then
        ends the reading like its end, and what was read is finished.
        """
        source = self.source
        decode = getattr(source, "decode", None) or self.decoder.decode
        if source is None:
            progress = None
        reasm = self.segments
        packet = reasm.packet
        n = 0
        last_ts = None
        lo, hi, nshards = shard if shard else (0, 1, 1)
        others = 0  # TCP frames of other shards, skipped before decoding
        skipped = 0  # ... of which the reader skipped without making a frame
        base = self.decoder.frames
        # Hundreds of thousands of small objects (connections, records) make CPython's
        # cyclic collector rescan the same survivors over and over; collect less often
        # while reading (cycles are rare here: a connection's are broken at its close).
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], 50_000), max(thresholds[1], 50), max(thresholds[2], 50))
        try:
            for frame in frames:
                n += 1
                if frame is None:  # another shard's frame, skipped by the reader
                    skipped += 1
                    continue
                ts, linktype, data, wirelen = frame
                last_ts = ts
                if nshards > 1:
                    if linktype == 1 and len(data) >= MIN_FIXED:
                        s = frame_shard(data, 0, nshards)
                        if s >= 0 and not lo <= s < hi:
                            others += 1
                            continue
                    # the decoder numbers its anomalies by the frames it decoded: count the skipped ones
                    self.decoder.frames = base + n - 1
                seg = decode(ts, linktype, data, wirelen)
                if seg is not None:
                    if nshards == 1 or \
                            lo <= shard_of((seg[1][-1] << 16) | seg[3], (seg[2][-1] << 16) | seg[4], nshards) < hi:
                        reasm.frame = n
                        packet(ts, seg)
                if progress is not None and not n & 0x3FFF:
                    progress(*source.position())
        except KeyboardInterrupt:
            if not getattr(source, "interruptible", False):
                raise
            self.interrupted = True
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # the source's generator lets its capture go now
        finally:
            gc.set_threshold(*thresholds)
        if skipped:
            others += skipped
            # the reading's last frame may have been skipped
            last_ts = source.last_ts(last_ts) if source is not None else last_ts
        closing = getattr(source, "closing_ts", None)
        if closing is not None:
            last_ts = closing(last_ts)
        self.frames += n
        if nshards > 1:
            self.decoder.frames = base + n
        self.decoder.tcp += others
        self.finish(last_ts)
        if progress is not None:
            total = source.position()[1]
            progress(total, total)

    def finish(self, ts=None) -> None:
        self.segments.finish(ts)
        self.decoder.finish()
        c = self.collector
        for r in self.readers:
            c.anomalies.extend(r.anomalies)
            r.anomalies = []
        c.anomalies.extend(self.decoder.anomalies)
        self.decoder.anomalies = []
        c.anomalies.extend(self.segments.anomalies)
        self.segments.anomalies = []
