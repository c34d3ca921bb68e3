"""Test helpers shared by the dissector tests.

``run_all_ways`` feeds a transcript to a fresh dissector whole, one byte at a
time and in random chunks, and asserts that the records are the same each way
(the chunking-invariance rule of DESIGN.md). It returns the records of the
whole feed.
"""

from __future__ import annotations

import random

from maildissect.config import Config
from maildissect.model import CLIENT, SERVER, Session

C, S = CLIENT, SERVER


def new_session(protocol: str, session_id: int = 1) -> Session:
    return Session(session_id=session_id, protocol=protocol, client_ip="10.0.0.1", client_port=40000,
                   server_ip="10.0.0.2", server_port=25, start=0.0)


def feed(dissector, transcript, split=None, close=True):
    """Feed ``[(side, bytes), ...]`` (or ``(side, "gap", n)``); item i gets ts=i.

    ``split(data)`` returns the chunks to feed for one item (default: whole).
    """
    out = []
    for i, item in enumerate(transcript):
        ts = float(i)
        if len(item) == 3:
            side, _, n = item
            out += dissector.gap(side, n, ts)
            continue
        side, data = item
        for chunk in (split(data) if split else [data]):
            if chunk:
                out += dissector.feed(side, chunk, ts)
    if close:
        out += dissector.close(float(len(transcript)), "fin")
    return out


def byte_split(data):
    return [data[i:i + 1] for i in range(len(data))]


def random_splitter(seed):
    rng = random.Random(seed)

    def split(data):
        chunks, i = [], 0
        while i < len(data):
            n = rng.randint(1, 17)
            chunks.append(data[i:i + n])
            i += n
        return chunks
    return split


def run_all_ways(factory, transcript, seeds=(1, 2, 3), config=None, protocol=None):
    """Feed ``transcript`` whole, byte by byte and randomly chunked; assert equal records.

    ``factory(session, config)`` builds a dissector (usually the class itself).
    Returns ``(records, session)`` from the whole feed.
    """
    config = config or Config()
    proto = protocol or getattr(factory, "protocol", "x")
    sess = new_session(proto)
    whole = feed(factory(sess, config), transcript)
    splitters = [byte_split] + [random_splitter(s) for s in seeds]
    for split in splitters:
        other_sess = new_session(proto)
        other = feed(factory(other_sess, config), transcript, split)
        assert other == whole, f"records differ when split by {getattr(split, '__name__', split)}"
        assert other_sess == sess, "session fields differ with chunking"
    return whole, sess


def of_type(records, cls):
    return [r for r in records if isinstance(r, cls)]
