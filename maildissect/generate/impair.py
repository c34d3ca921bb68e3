"""Network impairments applied to synthesised TCP segments.

Synthetic captures can be made hostile on purpose, with a known truth: a lab
sees retransmissions and out-of-order segments, and reassembly tests get
captures whose streams must still reassemble to exactly the recorded bytes.

The capture point is imagined next to the receiver. Per data segment:

- ``loss``: the segment does not reach the receiver when first sent; later
  segments of the same flight arrive, the receiver answers each with a
  duplicate ACK (at most three), and the sender retransmits the lost segment
  after a pause (before the next thing that happens on the connection, so
  replies never precede the request they answer);
- ``reorder``: the segment is swapped with the one after it;
- ``duplicate``: the segment arrives twice.

Only data segments are impaired, never SYN/FIN/RST (a capture in which the
handshake was lost only shows the retry, which adds nothing here).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Impairments:
    """Probabilities per data segment, and the maximum segment size."""

    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    mss: int = 1460
    seed: int = 0
    # counters, filled while synthesising
    lost: int = 0
    reordered: int = 0
    duplicated: int = 0

    def __post_init__(self):
        for name in ("loss", "reorder", "duplicate"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"--{name} must be a probability in [0, 1)")
        if not 64 <= self.mss <= 65495:
            raise ValueError("--mss must be between 64 and 65495")
        self.rng = random.Random(f"impair:{self.seed}")

    @property
    def active(self) -> bool:
        return bool(self.loss or self.reorder or self.duplicate)

    def schedule(self, segments: list) -> tuple[list, list]:
        """Plan one flight (consecutive data segments from one side).

        Returns ``(arrivals, lost)``: ``arrivals`` is the order in which
        segments reach the capture point, each ``(segment, is_duplicate)``;
        ``lost`` the segments to retransmit after the flight.
        """
        if not self.active:
            return [(s, False) for s in segments], []
        rng = self.rng
        lost, kept = [], []
        for s in segments:
            if self.loss and rng.random() < self.loss:
                lost.append(s)
                self.lost += 1
            else:
                kept.append(s)
        i = 0
        while i + 1 < len(kept):
            if self.reorder and rng.random() < self.reorder:
                kept[i], kept[i + 1] = kept[i + 1], kept[i]
                self.reordered += 1
                i += 2
            else:
                i += 1
        arrivals = []
        for s in kept:
            arrivals.append((s, False))
            if self.duplicate and rng.random() < self.duplicate:
                arrivals.append((s, True))
                self.duplicated += 1
        return arrivals, lost

    def to_dict(self) -> dict:
        return {"loss": self.loss, "reorder": self.reorder, "duplicate": self.duplicate,
                "mss": self.mss, "lost_segments": self.lost,
                "reordered_segments": self.reordered, "duplicated_segments": self.duplicated}
