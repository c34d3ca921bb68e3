"""Every dissector on mutated real transcripts (hypothesis).

The conversations of the bundled and test captures (SMTP, IMAP, POP3, HTTP,
webmail over HTTP, implicit TLS) are cut at their TCP segments, then mutated
the way a hostile or damaged capture mutates them: bytes flipped, ranges
deleted, duplicated or replaced with interesting tokens, gaps inserted,
segments cut and re-split anywhere. For any such input each dissector must:

- never raise (no dissector catches its own exceptions: the router's
  ``dissector_error`` is the one catch-all, and a bug wherever it appears);
- name only documented anomalies;
- keep its records within the configured limits (tight ones, so they are hit);
- give the same records however the bytes are chunked.

The per-protocol suites (test_smtp_fuzz.py, test_imap_fuzz.py, ...) generate
protocol-shaped noise; these start from real traffic instead.
"""

from __future__ import annotations

import random
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import harness
from maildissect.config import Config

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TIGHT = Config(limits=harness.TIGHT)

#: tokens that move dissectors between states, inserted by the mutator
TOKENS = [b"\r\n", b"\n", b"\r\n.\r\n", b"\n.\n", b".\r\n", b"{5}\r\n", b"{99999999999}\r\n", b"{3+}\r\n",
          b"BDAT 5 LAST\r\n", b"BDAT -1\r\n", b"DATA\r\n", b"354 go\r\n", b"250 ok\r\n", b"+OK\r\n", b"-ERR\r\n",
          b"a1 OK\r\n", b"* 1 FETCH (BODY[] {4}\r\n", b"+ \r\n", b"STARTTLS\r\n", b"220 go\r\n", b"STLS\r\n",
          b"AUTH PLAIN\r\n", b"334 \r\n", b"\x16\x03\x01\x00\x05", b"HTTP/1.1 200 OK\r\n", b"GET / HTTP/1.1\r\n",
          b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"Content-Encoding: gzip\r\n",
          b"fffffffff\r\n", b"0\r\n\r\n", b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n", b"--x--\r\n",
          b"=?utf-8?b?w6k=?=", b"\x00", b"\xff\xfe", b"(" * 40, b")" * 40, b"\"", b"\\"]


@lru_cache(maxsize=None)
def transcripts(protocol: str) -> tuple:
    """Real conversations of ``protocol`` from the captures (webmail: HTTP of the webmail captures)."""
    out = []
    for path in harness.seed_captures():
        for proto, items in harness.capture_transcripts(path, max_items=120):
            if protocol == "webmail":
                if proto == "http" and path.stem in ("webmail", "journey"):
                    out.append(tuple(items))
            elif proto == protocol:
                out.append(tuple(items))
    return tuple(out)


MUTATION = st.tuples(st.sampled_from(["flip", "delete", "dup", "token", "gap", "cut", "swap", "truncate"]),
                     st.integers(0, 2 ** 31), st.integers(0, 255), st.sampled_from(TOKENS))


def mutate(items: list, mutations) -> list:
    """Apply hypothesis-chosen mutations to a transcript (a list of (side, bytes) / gap items)."""
    items = list(items)
    for op, pos, value, token in mutations:
        if not items:
            break
        k = pos % len(items)
        item = items[k]
        if op == "gap":
            items.insert(k, (value & 1, "gap", 1 + value * 37))
            continue
        if op == "swap" and len(items) > 1:
            j = (k + 1) % len(items)
            items[k], items[j] = items[j], items[k]
            continue
        if op == "truncate":
            del items[k + 1:]
            continue
        if len(item) == 3:
            continue
        side, data = item
        data = bytearray(data)
        i = pos % (len(data) + 1)
        if op == "flip" and data:
            data[i % len(data)] ^= value or 1
        elif op == "delete":
            del data[i:i + 1 + value]
        elif op == "dup":
            data[i:i] = data[i:i + 1 + value * 4]
        elif op == "token":
            data[i:i] = token
        elif op == "cut":
            items[k:k + 1] = [(side, bytes(data[:i])), (side, bytes(data[i:]))]
            continue
        items[k] = (side, bytes(data))
    return [it for it in items if len(it) == 3 or it[1]]


def rechunk(items, seed: int) -> list:
    """The same conversation with every data item split at random points."""
    rng = random.Random(seed)
    out = []
    for it in items:
        if len(it) == 3 or len(it[1]) < 2:
            out.append(it)
            continue
        side, data = it
        i = 0
        while i < len(data):
            n = rng.choice((1, 2, 3, 7, 64, 500, len(data)))
            out.append((side, data[i:i + n]))
            i += n
    return out


def check(protocol: str, items) -> None:
    """The harness's rules, and the same records when every segment is re-split at random.

    (Timestamps count runs of one side's data, which splitting does not change, so the
    records must be equal to the last field.)
    """
    dissector = "http" if protocol == "webmail" else protocol
    records = harness.run_dissector(dissector, items, TIGHT)
    split = harness.run_dissector(dissector, rechunk(items, len(items)), TIGHT, chunking=False)
    assert split == records, "records differ when the segments are split differently"


PROTOCOLS = ["smtp", "imap", "pop3", "http", "webmail", "tls"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_real_transcripts_as_captured(protocol):
    """The unmutated conversations: no bug anomaly, and chunking-invariant."""
    found = transcripts(protocol)
    assert found, f"no {protocol} conversation in the captures"
    for items in found:
        check(protocol, list(items))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@FUZZ
@given(data=st.data())
def test_mutated_real_transcripts(protocol, data):
    found = transcripts(protocol)
    items = list(found[data.draw(st.integers(0, len(found) - 1), label="transcript")])
    mutations = data.draw(st.lists(MUTATION, min_size=1, max_size=12), label="mutations")
    check(protocol, mutate(items, mutations))


@pytest.mark.parametrize("protocol", ["smtp", "imap", "pop3", "http"])
@FUZZ
@given(data=st.data())
def test_spliced_transcripts(protocol, data):
    """Two conversations of one protocol cut and joined: a session that changes course mid-way."""
    found = transcripts(protocol)
    a = list(found[data.draw(st.integers(0, len(found) - 1))])
    b = list(found[data.draw(st.integers(0, len(found) - 1))])
    i, j = data.draw(st.integers(0, len(a))), data.draw(st.integers(0, len(b)))
    check(protocol, a[:i] + b[j:])


@pytest.mark.parametrize("protocol", ["smtp", "imap", "pop3", "http", "tls"])
@FUZZ
@given(data=st.data())
def test_other_protocols_fed_to_each_dissector(protocol, data):
    """A dissector given another protocol's conversation (a wrong port mapping) stays calm."""
    others = [p for p in ("smtp", "imap", "pop3", "http", "tls") if p != protocol]
    source = data.draw(st.sampled_from(others))
    found = transcripts(source)
    items = list(found[data.draw(st.integers(0, len(found) - 1))])
    harness.run_dissector(protocol, items, TIGHT)
