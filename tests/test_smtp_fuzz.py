"""SMTP dissector properties: any input, split anyhow, never raises, gives the same
records however it is chunked, and holds no more than its limits allow."""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maildissect import anomalies as registry
from maildissect.config import Config, Limits
from maildissect.model import Anomaly, Message
from maildissect.protocols.smtp import SmtpDissector
from tests.helpers import C, S, new_session, run_all_ways

TIGHT = Config(limits=Limits(max_line=256, max_pending_commands=16, max_recipients=8, max_message_size=4096,
                             max_mime_depth=4, max_mime_parts=16, max_headers=16, max_header_bytes=512))
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KNOWN = set(registry.registry())

CLIENT_BITS = [
    b"EHLO c.example.org\r\n", b"HELO x\r\n", b"MAIL FROM:<a@x.org> SIZE=10\r\n", b"MAIL FROM:<>\r\n",
    b"RCPT TO:<b@y.org>\r\n", b"RCPT TO:<@r:c@y.org> NOTIFY=NEVER\r\n", b"DATA\r\n", b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n", b"BDAT 0 LAST\r\n", b"RSET\r\n", b"QUIT\r\n", b"NOOP\r\n", b"STARTTLS\r\n",
    b"AUTH LOGIN\r\n", b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n", b"AUTH CRAM-MD5\r\n",
    b"dXNlcg==\r\n", b"*\r\n", b"Subject: s\r\n\r\nbody\r\n", b"..dot\r\n", b".\r\n", b"\r\n.\r\n", b"\n.\n",
    b"\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n", b"--b--\r\n", b"\x16\x03\x01\x00\x10",
    b"XYZZY plugh\r\n",
]
SERVER_BITS = [
    b"220 mx ESMTP\r\n", b"250 ok\r\n", b"250-PIPELINING\r\n", b"250 CHUNKING\r\n", b"354 go\r\n",
    b"334 VXNlcm5hbWU6\r\n", b"334 \r\n", b"235 ok\r\n", b"535 no\r\n", b"550 5.1.1 unknown\r\n",
    b"451 4.3.0 later\r\n", b"221 bye\r\n", b"220 2.0.0 Ready to start TLS\r\n", b"250 Ok: queued as Q1\r\n",
    b"500 what\r\n", b"garbage line\r\n", b"25", b"\x16\x03\x03",
]


def item(side_bits):
    return st.lists(st.one_of(st.sampled_from(side_bits), st.binary(max_size=24)), min_size=1, max_size=8).map(b"".join)


ITEM = st.one_of(
    st.tuples(st.just(C), item(CLIENT_BITS)),
    st.tuples(st.just(S), item(SERVER_BITS)),
    st.tuples(st.sampled_from([C, S]), st.just("gap"), st.integers(1, 300)),
)


def check(records):
    for r in records:
        if isinstance(r, Anomaly):
            assert r.name in KNOWN, r.name
            assert r.name != "mime_parser_error", r.detail
        if isinstance(r, Message):
            assert r.outcome in ("delivered", "rejected", "no_recipients", "aborted", "unterminated")
            if r.kind == "envelope":  # a transaction that carried no message
                assert (r.size, r.sha256, r.missing_bytes, r.headers) == (0, None, 0, [])
            else:
                assert r.size >= 0 and r.sha256 and r.missing_bytes >= 0
            assert len(r.rcpt_to) + len(r.rcpt_rejected) <= TIGHT.limits.max_recipients


@FUZZ
@given(st.lists(ITEM, max_size=14))
def test_smtp_shaped_noise(transcript):
    records, _ = run_all_ways(SmtpDissector, transcript, seeds=(7,), config=TIGHT, protocol="smtp")
    check(records)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([C, S]), st.binary(min_size=1, max_size=120)), max_size=10))
def test_random_bytes(transcript):
    records, _ = run_all_ways(SmtpDissector, transcript, seeds=(11,), config=TIGHT, protocol="smtp")
    check(records)


BASE = [
    (S, b"220 mx.example.net ESMTP\r\n"), (C, b"EHLO c.example.org\r\n"),
    (S, b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n"),
    (C, b"AUTH LOGIN\r\n"), (S, b"334 VXNlcm5hbWU6\r\n"), (C, b"Ym9i\r\n"), (S, b"334 UGFzc3dvcmQ6\r\n"),
    (C, b"cHc=\r\n"), (S, b"235 ok\r\n"),
    (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nRCPT TO:<c@y.org>\r\nDATA\r\n"),
    (S, b"250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n"),
    (C, b"Subject: one\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Type: text/plain\r\n\r\n"
        b"..hi\r\n--z\r\nContent-Type: image/png; name=a.png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"iVBORw0KGgo=\r\n--z--\r\n.\r\n"),
    (S, b"250 Ok: queued as A\r\n"),
    (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nBDAT 12\r\nSubject: two"),
    (C, b"\r\nBDAT 6 LAST\r\n\r\nbody"), (S, b"250 ok\r\n250 ok\r\n250 ok\r\n250 Ok: queued as B\r\n"),
    (C, b"STARTTLS\r\n"), (S, b"220 go\r\n"), (C, b"\x16\x03\x01\x00\x05hello"), (S, b"\x16\x03\x03\x00\x01x"),
]

MUTATION = st.tuples(st.sampled_from(["flip", "insert", "delete", "split", "swap", "gap", "drop"]),
                     st.integers(0, 10**6), st.integers(0, 10**6), st.binary(min_size=1, max_size=16))


def mutate(transcript, mutations):
    items = [list(x) for x in transcript]
    for op, i, j, blob in mutations:
        if not items:
            break
        k = i % len(items)
        it = items[k]
        if op == "gap":
            items.insert(k, [it[0], "gap", 1 + j % 200])
            continue
        if op == "drop":
            del items[k]
            continue
        if op == "swap" and k + 1 < len(items):
            items[k], items[k + 1] = items[k + 1], items[k]
            continue
        if len(it) != 2:
            continue
        data = it[1]
        pos = j % (len(data) + 1)
        if op == "flip" and data:
            p = pos % len(data)
            it[1] = data[:p] + bytes([data[p] ^ (blob[0] or 1)]) + data[p + 1:]
        elif op == "insert":
            it[1] = data[:pos] + blob + data[pos:]
        elif op == "delete":
            it[1] = data[:pos] + data[pos + 1 + blob[0] % 32:]
        elif op == "split" and 0 < pos < len(data):
            it[1] = data[:pos]
            items.insert(k + 1, [it[0], data[pos:]])
    return [tuple(x) for x in items if len(x) == 3 or x[1]]


@FUZZ
@given(st.lists(MUTATION, max_size=10))
def test_mutated_transcripts(mutations):
    transcript = mutate(BASE, mutations)
    for config in (TIGHT, Config(keep_bodies=True)):
        records, _ = run_all_ways(SmtpDissector, transcript, seeds=(5,), config=config, protocol="smtp")
        check(records)


def bound(config: Config, feed_size: int) -> int:
    lim = config.limits
    # two line buffers (each up to max_line plus one feed), the reply text, the
    # STARTTLS hold, 4 held DATA bytes, and the bodies of messages awaiting a reply
    return (3 * lim.max_line + 2 * feed_size + 4 + (lim.max_line + feed_size)
            + (lim.max_pending_commands + 3) * lim.max_message_size)


@FUZZ
@given(st.lists(MUTATION, max_size=10), st.lists(ITEM, max_size=6))
def test_memory_stays_bounded(mutations, extra):
    transcript = mutate(BASE, mutations) + extra + [
        (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"), (S, b"250 ok\r\n250 ok\r\n354 go\r\n"),
        (C, b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 1024),  # bigger than max_message_size
    ]
    d = SmtpDissector(new_session("smtp"), TIGHT)
    for n, x in enumerate(transcript):
        if len(x) == 3:
            d.gap(x[0], x[2], float(n))
            continue
        side, data = x
        for i in range(0, len(data), 97):
            chunk = data[i:i + 97]
            check(d.feed(side, chunk, float(n)))
            assert d.buffered() <= bound(TIGHT, len(chunk))
    check(d.close(99.0, "fin"))
    assert d.buffered() <= bound(TIGHT, 0)


def reference_data(stream: bytes) -> tuple[bytes, bytes]:
    """What a line-by-line receiver makes of the bytes after DATA: (message, rest)."""
    s = b"\r\n" + stream
    end = s.find(b"\r\n.\r\n")
    content = s[2:end + 2] if end > 0 else b""
    return (b"\r\n" + content).replace(b"\r\n.", b"\r\n")[2:], s[end + 5:]


@FUZZ
@given(st.lists(st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"\r\n.", b"\r\n.\r"]), max_size=60),
       st.lists(st.integers(1, 9), min_size=1, max_size=20))
def test_data_framing_matches_a_line_receiver(pieces, cuts):
    stream = b"".join(pieces) + b"\r\n.\r\nQUIT\r\n"
    message, rest = reference_data(stream)
    items, pos, i = [], 0, 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        items.append((C, stream[pos:pos + n]))
        pos, i = pos + n, i + 1
    transcript = [(S, b"220 mx\r\n"), (C, b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"),
                  (S, b"250 ok\r\n250 ok\r\n354 go\r\n"), *items, (S, b"250 ok\r\n")]
    records, _ = run_all_ways(SmtpDissector, transcript, seeds=(3,), config=Config(keep_bodies=True), protocol="smtp")
    (msg,) = [r for r in records if isinstance(r, Message)]
    assert msg.raw == message
    commands = [r.command for r in records if type(r).__name__ == "Command"]
    assert commands[:5] == ["", "MAIL", "RCPT", "DATA", "."]
    if rest == b"QUIT\r\n":  # the data ended where it was meant to
        assert commands[5:] == ["QUIT"]
