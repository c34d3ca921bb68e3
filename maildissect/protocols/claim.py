"""A port's claim, checked: is a session on a mail port really speaking that protocol?

A server port names a protocol (maildissect.protocols.detect), but anything may
listen on port 110: a Redis or a backdoor reached through a mail port would
otherwise be dissected as POP3, with an anomaly for every line. Zeek's dynamic
protocol detection is the model: an analyzer reports protocol *violations* and
*confirmations*; one that sees violations before any confirmation is removed
from the connection.

:class:`PortClaim` watches the start of a port-mapped session for the router
(maildissect.pipeline). While the claim stands unconfirmed it holds the
session's bytes as they arrived (so that another protocol can be tried on them)
and the dissector's records (so that a wrong dissector emits none). Its verdict:

* **confirmed** by the first answer that only the claimed protocol gives: a
  reply the dissector matched to a command (SMTP's 3-digit code, POP3's ``+OK``/
  ``-ERR``, IMAP's ``OK``/``NO``/``BAD``, the greeting included), an HTTP
  response paired with its request, or an event such as an accepted STARTTLS.
  The held records go on as if never held.
* **mismatch** once ``max_start_violations`` violations came first: anomalies
  the dissector raised while parsing the peers' bytes (not those about gaps or
  the connection's end, which say nothing about the protocol). The records are
  dropped and the router tries detection by first bytes.
* **confirmed by default** when ``max_claim_bytes`` bytes went by without
  enough violations, or the connection ended: the claim is then as good as the
  port's word, and the records go on.

Memory: at most ``max_claim_bytes`` bytes (plus one segment) and the records
they produced.
"""

from __future__ import annotations

from collections import Counter

from ..model import Anomaly, Command, HttpRequest
from .base import TlsStart, TunnelStart

__all__ = ["PortClaim", "ANOMALIES", "HOLD", "CONFIRMED", "MISMATCH"]

ANOMALIES = {
    "protocol_mismatch": "a session on a port mapped to a protocol broke that protocol's rules from its first bytes "
                         "(limits.max_start_violations violations before any valid answer): its dissector was given "
                         "up and its records dropped; the detail names the violations and what the first bytes "
                         "were recognised as instead, if anything",
}

#: verdicts
HOLD, CONFIRMED, MISMATCH = "hold", "confirmed", "mismatch"

#: held event kinds
DATA, GAP = 0, 1


class PortClaim:
    """The unconfirmed start of a session whose protocol its server port chose."""

    __slots__ = ("protocol", "max_violations", "max_bytes", "events", "records", "violations", "bytes", "first")

    def __init__(self, protocol: str, max_violations: int, max_bytes: int):
        self.protocol = protocol
        self.max_violations = max_violations
        self.max_bytes = max_bytes
        self.events: list[tuple] = []  # (kind, side, data or length, ts) as they arrived
        self.records: list = []  # the dissector's records, not yet emitted
        self.violations: Counter = Counter()  # anomaly name -> count
        self.bytes = 0
        self.first = [b"", b""]  # first bytes of each side, for detection after a mismatch

    def data(self, side: int, data: bytes, ts: float) -> None:
        """Bytes of ``side`` about to be fed to the dissector."""
        self.events.append((DATA, side, data, ts))
        self.bytes += len(data)
        head = self.first[side]
        if len(head) < 512:
            self.first[side] = head + data[:512 - len(head)]

    def gap(self, side: int, length: int, ts: float) -> None:
        self.events.append((GAP, side, length, ts))

    def judge(self, records, parsing: bool) -> str:
        """Take the dissector's ``records`` (``parsing``: returned by ``feed``, so its
        anomalies are violations); the claim's verdict so far."""
        self.records.extend(records)
        for r in records:
            t = type(r)
            if t is Command:
                if r.reply_code is not None:
                    return CONFIRMED
            elif t is HttpRequest:
                if r.status is not None:
                    return CONFIRMED
            elif t is Anomaly:
                if parsing:
                    self.violations[r.name] += 1
            elif t is TlsStart or t is TunnelStart:
                return CONFIRMED
        if sum(self.violations.values()) >= self.max_violations:
            return MISMATCH
        if self.bytes > self.max_bytes:
            return CONFIRMED
        return HOLD

    def release(self) -> list:
        """The held records (the claim is over)."""
        records, self.records = self.records, []
        self.events = []
        return records

    def replay(self, on_data, on_gap) -> None:
        """Hand the held bytes and gaps, in order, to another consumer (after a mismatch)."""
        events, self.events = self.events, []
        self.records = []
        for kind, side, value, ts in events:
            if kind == DATA:
                on_data(side, value, ts)
            else:
                on_gap(side, value, ts)

    def describe(self, port: int, instead: str) -> str:
        """The protocol_mismatch detail."""
        names = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in self.violations.most_common(4))
        first = self.first[0][:24] or self.first[1][:24]
        said = f"read as {instead}" if instead else "no mail protocol recognised"
        return (f"port {port} names {self.protocol}, but the session broke it {sum(self.violations.values())} "
                f"times from its start ({names}); {said}; first bytes {first!r}")
