"""Property tests: random and mutated IMAP transcripts never raise, stay bounded and chunk-invariant.

Transcripts are built from valid exchanges (mitmproxy's fuzzing recipe), then
mutated (bytes flipped, cut, inserted, duplicated; gaps), then fed whole and
in random chunks.
"""

from __future__ import annotations

import base64
import os
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maildissect.anomalies import registry
from maildissect.config import Config, Limits
from maildissect.model import Anomaly
from maildissect.protocols.imap import ImapDissector, tokenize
from tests.helpers import C, S, new_session

#: MAILDISSECT_FUZZ_EXAMPLES=2000 runs a longer search than the default quick pass.
SETTINGS = dict(max_examples=int(os.environ.get("MAILDISSECT_FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECLARED = registry()

atoms = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1,
                max_size=12).map(str.encode)
bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda s, b: b"Subject: " + s + b"\r\nMessage-ID: <" + s + b"@x>\r\n\r\n" + b, atoms,
              st.binary(max_size=200)),
)


def literal(data: bytes, plus: bool = False, binary: bool = False) -> bytes:
    return (b"~" if binary else b"") + b"{%d%s}\r\n" % (len(data), b"+" if plus else b"") + data


def astring(draw, value: bytes) -> bytes:
    kind = draw(st.sampled_from(["atom", "quoted", "literal"]))
    if kind == "atom" and value and all(48 <= c < 123 and c not in b"()[]{}\\\"%*" for c in value):
        return value
    if kind == "literal":
        return literal(value, plus=True)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"\r", b"").replace(b"\n", b"") + b'"'


@st.composite
def exchange(draw, tag: bytes):
    """One client command and the server's answer."""
    kind = draw(st.sampled_from(["login", "auth", "select", "fetch", "fetch_multi", "partial", "append",
                                 "store", "search", "list", "status", "idle", "id", "misc", "unknown"]))
    user, pw = draw(atoms), draw(st.binary(min_size=1, max_size=12))
    body = draw(bodies)
    if kind == "login":
        return [(C, tag + b" LOGIN " + astring(draw, user) + b" " + astring(draw, pw) + b"\r\n"),
                (S, tag + draw(st.sampled_from([b" OK done", b" NO [AUTHENTICATIONFAILED] bad"])) + b"\r\n")]
    if kind == "auth":
        blob = base64.b64encode(b"\0" + user + b"\0" + pw.replace(b"\0", b"x"))
        return [(C, tag + b" AUTHENTICATE PLAIN\r\n"), (S, b"+ \r\n"), (C, blob + b"\r\n"), (S, tag + b" OK\r\n")]
    if kind == "select":
        n = draw(st.integers(0, 50))
        return [(C, tag + b" SELECT " + astring(draw, user) + b"\r\n"),
                (S, b"* FLAGS (\\Seen \\Deleted)\r\n* %d EXISTS\r\n* OK [UIDVALIDITY %d] x\r\n" % (
                    n, draw(st.integers(1, 2 ** 32 - 1))) + tag + b" OK [READ-WRITE] ok\r\n")]
    if kind == "fetch":
        sec = draw(st.sampled_from([b"BODY[]", b"RFC822", b"BODY[HEADER]", b"BODY[TEXT]", b"BODY[1]",
                                    b"BODY[1.MIME]", b"BINARY[]", b"BODY[HEADER.FIELDS (FROM TO)]"]))
        seq = draw(st.integers(1, 60))
        lit = literal(body, binary=sec.startswith(b"BINARY"))
        return [(C, tag + b" UID FETCH %d (UID FLAGS %s)\r\n" % (seq, sec.replace(b"BODY[", b"BODY.PEEK["))),
                (S, b"* %d FETCH (UID %d FLAGS (\\Seen) %s %s)\r\n" % (seq, seq + 100, sec, lit) + tag + b" OK\r\n")]
    if kind == "fetch_multi":
        head, _, text = body.partition(b"\r\n\r\n")
        return [(C, tag + b" FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[TEXT] ENVELOPE BODYSTRUCTURE)\r\n"),
                (S, b"* 1 FETCH (BODY[HEADER] " + literal(head + b"\r\n\r\n") + b" BODY[TEXT] " + literal(text)
                 + b' ENVELOPE (NIL "s" (("n" NIL "a" "b")) NIL NIL NIL NIL NIL NIL "<m@x>")'
                 + b' BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL))\r\n'
                 + tag + b" OK\r\n")]
    if kind == "partial":
        size = draw(st.integers(1, 40))
        out = []
        for i in range(0, max(len(body), 1), size):
            out += [(C, tag + b" FETCH 2 (BODY.PEEK[]<%d.%d>)\r\n" % (i, size)),
                    (S, b"* 2 FETCH (BODY[]<%d> %s)\r\n" % (i, literal(body[i:i + size])) + tag + b" OK\r\n")]
        return out
    if kind == "append":
        sync = draw(st.booleans())
        if sync:
            return [(C, tag + b" APPEND INBOX (\\Seen) {%d}\r\n" % len(body)), (S, b"+ go\r\n"),
                    (C, body + b"\r\n"), (S, tag + b" OK [APPENDUID 3 4] done\r\n")]
        return [(C, tag + b" APPEND INBOX " + literal(body, plus=True) + b"\r\n"), (S, tag + b" OK\r\n")]
    if kind == "store":
        return [(C, tag + b" STORE 1:3 +FLAGS (\\Deleted)\r\n"),
                (S, b"* 1 FETCH (FLAGS (\\Deleted))\r\n* 2 EXPUNGE\r\n" + tag + b" OK\r\n")]
    if kind == "search":
        return [(C, tag + b" UID SEARCH UNSEEN\r\n"), (S, b"* SEARCH 1 4 9\r\n" + tag + b" OK\r\n")]
    if kind == "list":
        return [(C, tag + b' LIST "" *\r\n'),
                (S, b'* LIST (\\HasNoChildren) "/" ' + astring(draw, user) + b"\r\n" + tag + b" OK\r\n")]
    if kind == "status":
        return [(C, tag + b" STATUS INBOX (MESSAGES UIDNEXT)\r\n"),
                (S, b"* STATUS INBOX (MESSAGES 3 UIDNEXT 9)\r\n" + tag + b" OK\r\n")]
    if kind == "idle":
        return [(C, tag + b" IDLE\r\n"), (S, b"+ idling\r\n* 4 EXISTS\r\n"), (C, b"DONE\r\n"), (S, tag + b" OK\r\n")]
    if kind == "id":
        return [(C, tag + b' ID ("name" "x")\r\n'), (S, b'* ID ("name" "srv")\r\n' + tag + b" OK\r\n")]
    if kind == "misc":
        verb = draw(st.sampled_from([b"NOOP", b"CAPABILITY", b"NAMESPACE", b"CLOSE", b"EXPUNGE", b"CHECK"]))
        return [(C, tag + b" " + verb + b"\r\n"), (S, b"* CAPABILITY IMAP4rev1\r\n" + tag + b" OK\r\n")]
    return [(C, tag + b" XYZZY " + user + b"\r\n"), (S, tag + b" BAD unknown\r\n")]


@st.composite
def transcripts(draw):
    items = [(S, b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n")]
    for i in range(draw(st.integers(0, 6))):
        items += draw(exchange(b"t%d" % i))
    if draw(st.integers(0, 5)) == 0:
        comp_c = zlib.compressobj(6, zlib.DEFLATED, -15)
        comp_s = zlib.compressobj(6, zlib.DEFLATED, -15)
        items += [(C, b"z COMPRESS DEFLATE\r\n"), (S, b"z OK\r\n")]
        for side, data in draw(exchange(b"y")):
            comp = comp_c if side == C else comp_s
            items.append((side, comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)))
    return items


@st.composite
def mutated(draw):
    items = list(draw(transcripts()))
    for _ in range(draw(st.integers(0, 4))):
        if not items:
            break
        i = draw(st.integers(0, len(items) - 1))
        side, data = items[i][0], items[i][-1]
        if isinstance(data, int):
            continue
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup", "gap", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data = data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1:]
        elif op == "cut":
            data = data[:pos] + data[pos + draw(st.integers(1, 20)):]
        elif op == "insert":
            data = data[:pos] + draw(st.sampled_from([b"{5}\r\n", b"(", b")", b'"', b"\r\n", b"* ", b"{99999}\r\n",
                                                      b"~{3}", b"\x00", b"+ ", b"[", b"]"])) + data[pos:]
        elif op == "dup":
            data = data[:pos] + data[pos:pos + 30] + data[pos:]
        elif op == "truncate":
            data = data[:pos]
        elif op == "gap":
            items.insert(i, (side, "gap", draw(st.integers(1, 200))))
            continue
        items[i] = (side, data)
    return items


def run_chunks(items, config, chunks_of):
    d = ImapDissector(new_session("imap"), config)
    out = []
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
            check_bounds(d, config, n)
    out += d.close(float(len(items)), "fin")
    return out, d


def check_bounds(d, config, chunk):
    lim = config.limits
    for s in d.dirs:
        assert len(s.buf) <= lim.max_line + chunk + 8
        assert s.item_kept <= lim.max_literal
        assert s.item_len <= lim.max_line + 64 or s.discard
        assert sum(len(p) for p in s.parts) <= lim.max_line + 64
    assert len(d.pending) <= lim.max_pending_commands
    assert len(d._partials) <= 64 and len(d._known) <= 1_000
    assert 0 <= d._partial_bytes <= lim.max_message_size + lim.max_literal
    assert len(d.uids) <= lim.max_mailbox_messages


def check_records(records):
    for r in records:
        if isinstance(r, Anomaly):
            assert r.name in DECLARED, r.name
            assert "internal error" not in r.detail, r.detail


SMALL = Config(limits=Limits(max_line=300, max_literal=150, max_header_bytes=60, max_nesting=4,
                             max_pending_commands=4, max_mailbox_messages=20, max_message_size=400))


@settings(**SETTINGS)
@given(items=transcripts(), seed=st.integers(1, 40))
def test_valid_transcripts_are_chunk_invariant_and_clean(items, seed):
    whole, _ = run_chunks(items, Config(), lambda i: 1 << 30)
    chunked, _ = run_chunks(items, Config(), lambda i: (i * 7 + seed) % 23 + 1)
    assert chunked == whole
    check_records(whole)
    assert [r.name for r in whole if isinstance(r, Anomaly) and r.name.startswith("imap_")
            and r.name != "imap_unknown_command"] == []


@settings(**SETTINGS)
@given(items=mutated(), seed=st.integers(1, 40), small=st.booleans())
def test_mutated_transcripts_never_raise_and_stay_bounded(items, seed, small):
    config = SMALL if small else Config()
    whole, _ = run_chunks(items, config, lambda i: 1 << 30)
    chunked, _ = run_chunks(items, config, lambda i: (i * 5 + seed) % 13 + 1)
    assert chunked == whole
    check_records(whole)


@settings(**SETTINGS)
@given(data=st.lists(st.tuples(st.sampled_from([C, S]), st.binary(max_size=200)), max_size=12))
def test_random_bytes_never_raise(data):
    out, d = run_chunks(data, SMALL, lambda i: 17)
    check_records(out)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_tokenizer_never_raises(parts):
    tokens, problems = tokenize(parts, [None] * (len(parts) - 1), max_nesting=5)
    assert isinstance(tokens, list) and isinstance(problems, list)
