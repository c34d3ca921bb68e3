"""Property tests: random and mutated POP3 transcripts never raise, stay bounded and chunk-invariant."""

from __future__ import annotations

import base64
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maildissect.anomalies import registry
from maildissect.config import Config, Limits
from maildissect.model import Anomaly, Message
from maildissect.protocols.pop3 import Pop3Dissector
from tests.helpers import C, S, new_session

SETTINGS = dict(max_examples=int(os.environ.get("MAILDISSECT_FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
DECLARED = registry()

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10).map(str.encode)
lines = st.lists(st.sampled_from([b"", b".", b"..", b".x", b"text", b"Subject: s", b"\t.", b" . "]), max_size=8)


def message(hdr: bytes, body_lines) -> bytes:
    return b"Subject: " + hdr + b"\r\nMessage-ID: <" + hdr + b"@x>\r\n\r\n" + b"".join(l + b"\r\n" for l in body_lines)


def stuff(msg: bytes) -> bytes:
    return (b"\r\n" + msg).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


@st.composite
def exchange(draw):
    kind = draw(st.sampled_from(["userpass", "auth", "apop", "stat", "list", "uidl", "retr", "top", "dele",
                                 "capa", "rset", "noop", "err", "unknown"]))
    w = draw(words)
    msg = message(w, draw(lines))
    if kind == "userpass":
        return [(C, b"USER " + w + b"\r\n"), (S, b"+OK\r\n"), (C, b"PASS " + w + b"\r\n"),
                (S, draw(st.sampled_from([b"+OK Logged in.\r\n", b"-ERR [AUTH] failed\r\n"])))]
    if kind == "auth":
        return [(C, b"AUTH PLAIN\r\n"), (S, b"+ \r\n"), (C, base64.b64encode(b"\0" + w + b"\0pw") + b"\r\n"),
                (S, b"+OK\r\n")]
    if kind == "apop":
        return [(C, b"APOP " + w + b" 0123456789abcdef0123456789abcdef\r\n"), (S, b"+OK\r\n")]
    if kind == "stat":
        return [(C, b"STAT\r\n"), (S, b"+OK 2 300\r\n")]
    if kind == "list":
        return [(C, b"LIST\r\n"), (S, b"+OK\r\n1 100\r\n2 200\r\n.\r\n")]
    if kind == "uidl":
        return [(C, b"UIDL\r\n"), (S, b"+OK\r\n1 " + w + b"\r\n.\r\n")]
    if kind == "retr":
        return [(C, b"RETR 1\r\n"), (S, b"+OK\r\n" + stuff(msg))]
    if kind == "top":
        return [(C, b"TOP 1 1\r\n"), (S, b"+OK\r\n" + stuff(msg.split(b"\r\n\r\n")[0] + b"\r\n\r\n"))]
    if kind == "dele":
        return [(C, b"DELE 1\r\n"), (S, b"+OK\r\n")]
    if kind == "capa":
        return [(C, b"CAPA\r\n"), (S, b"+OK\r\nTOP\r\nUIDL\r\nSASL PLAIN\r\n.\r\n")]
    if kind == "rset":
        return [(C, b"RSET\r\n"), (S, b"+OK\r\n")]
    if kind == "noop":
        return [(C, b"NOOP\r\n"), (S, b"+OK\r\n")]
    if kind == "err":
        return [(C, b"RETR 99\r\n"), (S, b"-ERR no such message\r\n")]
    return [(C, b"XYZZY " + w + b"\r\n"), (S, b"-ERR unknown\r\n")]


@st.composite
def transcripts(draw):
    items = [(S, b"+OK ready <1.2@host>\r\n")]
    for _ in range(draw(st.integers(0, 8))):
        items += draw(exchange())
    if draw(st.booleans()):
        items += [(C, b"QUIT\r\n"), (S, b"+OK bye\r\n")]
    return items


@st.composite
def mutated(draw):
    items = list(draw(transcripts()))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(items) - 1))
        side, data = items[i][0], items[i][-1]
        if isinstance(data, int):
            continue
        op = draw(st.sampled_from(["flip", "cut", "insert", "gap", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data = data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1:]
        elif op == "cut":
            data = data[:pos] + data[pos + draw(st.integers(1, 20)):]
        elif op == "insert":
            data = data[:pos] + draw(st.sampled_from([b"\r\n.\r\n", b".", b"+OK\r\n", b"-ERR\r\n", b"+ \r\n",
                                                      b"\r\n", b"\n", b"\x00"])) + data[pos:]
        elif op == "truncate":
            data = data[:pos]
        elif op == "gap":
            items.insert(i, (side, "gap", draw(st.integers(1, 100))))
            continue
        items[i] = (side, data)
    return items


def run_chunks(items, config, chunks_of):
    d = Pop3Dissector(new_session("pop3"), config)
    out = []
    lim = config.limits
    for ts, item in enumerate(items):
        if len(item) == 3:
            out += d.gap(item[0], item[2], float(ts))
            continue
        side, data = item
        i = 0
        while i < len(data):
            n = chunks_of(i)
            out += d.feed(side, data[i:i + n], float(ts))
            i += n
            for direction in d.dirs:
                assert len(direction.buf) <= lim.max_line + n + 8
            assert len(d.pending) <= lim.max_pending_commands
            if d.multi is not None:
                assert d.multi.kept <= lim.max_message_size and len(d.multi.carry) <= 4
    out += d.close(float(len(items)), "fin")
    return out


def check_records(records):
    for r in records:
        if isinstance(r, Anomaly):
            assert r.name in DECLARED, r.name
            assert "internal error" not in r.detail, r.detail


SMALL = Config(limits=Limits(max_line=120, max_message_size=80, max_pending_commands=3))


@settings(**SETTINGS)
@given(items=transcripts(), seed=st.integers(1, 40))
def test_valid_transcripts_are_chunk_invariant_and_clean(items, seed):
    whole = run_chunks(items, Config(), lambda i: 1 << 30)
    chunked = run_chunks(items, Config(), lambda i: (i * 7 + seed) % 11 + 1)
    assert chunked == whole
    check_records(whole)
    assert [r.name for r in whole if isinstance(r, Anomaly) and r.name != "pop3_unknown_command"] == []
    for m in whole:
        if isinstance(m, Message) and m.kind == "body":
            assert m.complete and m.subject is not None


@settings(**SETTINGS)
@given(items=mutated(), seed=st.integers(1, 40), small=st.booleans())
def test_mutated_transcripts_never_raise_and_stay_bounded(items, seed, small):
    config = SMALL if small else Config()
    whole = run_chunks(items, config, lambda i: 1 << 30)
    chunked = run_chunks(items, config, lambda i: (i * 5 + seed) % 9 + 1)
    assert chunked == whole
    check_records(whole)


@settings(**SETTINGS)
@given(data=st.lists(st.tuples(st.sampled_from([C, S]), st.binary(max_size=200)), max_size=12))
def test_random_bytes_never_raise(data):
    check_records(run_chunks(data, SMALL, lambda i: 13))
