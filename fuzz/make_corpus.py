#!/usr/bin/env python3
"""Write the seed corpus of every fuzz target into fuzz/seeds/<target>/ (deterministic).

    python fuzz/make_corpus.py            # all targets
    python fuzz/make_corpus.py smtp mime  # some

Seeds come from the bundled lab captures (captures/*.pcap) and the test
captures (tests/captures/*/*.pcap): each TCP connection becomes a transcript
seed for its protocol's dissector (webmail: the HTTP connections of
captures/webmail.pcap), each message a MIME seed, each frame batch a decoder
seed, the head of each capture a capture seed. SASL and form seeds are written
out here. The seeds are not committed (they are rebuilt in a second); the
regression inputs under fuzz/regressions/ are.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

SEEDS = HERE / "seeds"
MAX_SEED = 64 * 1024  # libFuzzer works best with small inputs


def write(target: str, name: str, data: bytes) -> None:
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}-{hashlib.sha1(data).hexdigest()[:10]}").write_bytes(data[:MAX_SEED])


def transcripts(targets) -> None:
    for path in harness.seed_captures():
        for i, (proto, items) in enumerate(harness.capture_transcripts(path)):
            data = harness.encode_transcript(items)
            if proto in targets:
                write(proto, f"{path.stem}-{i}", data)
            if proto == "http" and "webmail" in targets and path.stem in ("webmail", "journey"):
                write("webmail", f"{path.stem}-{i}", data)
            if proto == "http" and "forms" in targets:
                client = b"".join(it[1] for it in items if len(it) == 2 and it[0] == 0)
                for j, block in enumerate(client.split(b"\r\n\r\n")[1:6]):
                    if block:
                        write("forms", f"{path.stem}-{i}-{j}", block)


def messages() -> None:
    from maildissect import analyze
    for path in harness.seed_captures():
        result = analyze(str(path), keep_bodies=True, message_hook=lambda m: write(
            "mime", f"{path.stem}-{m.session_id}", m.raw) if m.raw else None)
        del result


def frames() -> None:
    from maildissect.capture.files import CaptureReader
    linktypes = (1, 101, 113, 276, 0, 108, 228, 229, 12, 14, 147)
    for path in harness.seed_captures():
        batch = bytearray()
        count = 0
        for ts, lt, data, wirelen in CaptureReader(str(path)):
            if lt not in linktypes:
                continue
            batch += bytes([linktypes.index(lt)]) + struct.pack("!H", len(data[:0xFFFF])) + data[:0xFFFF]
            count += 1
            if count % 40 == 0:
                write("decode", f"{path.stem}-{count}", bytes(batch))
                batch = bytearray()
        if batch:
            write("decode", f"{path.stem}-{count}", bytes(batch))


def captures() -> None:
    for path in harness.seed_captures():
        write("capture", path.stem, path.read_bytes()[:MAX_SEED])


def tcp() -> None:
    # conn/dir, flags, seq delta (2), length, fill, ack delta (2): a handshake, data both ways,
    # a retransmission with other bytes, a hole, FINs.
    SYN, ACK, FIN, PSH = 0x02, 0x10, 0x01, 0x08
    def seg(side, flags, delta, length, fill, ack=0):
        return bytes([side, flags]) + struct.pack("!h", delta) + bytes([length, fill]) + struct.pack("!h", ack)
    write("tcp", "handshake-data-fin", b"".join([
        seg(0, SYN, -1, 0, 0), seg(1, SYN | ACK, -1, 0, 0, 0), seg(0, ACK, 0, 0, 0, 0),
        seg(0, ACK | PSH, 0, 70, 65, 0), seg(1, ACK | PSH, 0, 90, 66, 10), seg(0, ACK | PSH, 10, 40, 1, 13),
        seg(0, ACK | PSH, 30, 50, 9, 13), seg(0, ACK | PSH, 15, 20, 3, 13), seg(0, FIN | ACK, 40, 0, 0, 13),
        seg(1, FIN | ACK, 13, 0, 0, 41)]))
    write("tcp", "midstream-wrap", b"".join(seg(k % 2, ACK | PSH, 36 * (k // 2), 250, k, 36 * (k // 2))
                                            for k in range(20)))


def http2() -> None:
    """HTTP/2 conversations built with hpack and hyperframe (the captures hold none in clear)."""
    from hpack import Encoder
    from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                                  RstStreamFrame, SettingsFrame, WindowUpdateFrame)

    from maildissect.protocols.http2 import PREFACE

    def headers(sid, block, end=False, split=0):
        pieces = [block[i:i + split] for i in range(0, len(block), split)] if split else [block]
        f = HeadersFrame(sid)
        f.data = pieces[0]
        if end:
            f.flags.add("END_STREAM")
        if len(pieces) == 1:
            f.flags.add("END_HEADERS")
            return f.serialize()
        out = f.serialize()
        for i, piece in enumerate(pieces[1:], 1):
            c = ContinuationFrame(sid)
            c.data = piece
            if i == len(pieces) - 1:
                c.flags.add("END_HEADERS")
            out += c.serialize()
        return out

    def data(sid, payload, end=True):
        f = DataFrame(sid)
        f.data = payload
        if end:
            f.flags.add("END_STREAM")
        return f.serialize()
    c, s = Encoder(), Encoder()
    form = b"_user=alice&_pass=secret&_task=login"
    body = b'{"using":["urn:ietf:params:jmap:core"],"methodCalls":[["Email/get",{"ids":["m1"]},"0"]]}'
    client = (PREFACE + SettingsFrame(0).serialize()
              + headers(1, c.encode([(":method", "POST"), (":scheme", "https"), (":authority", "mail.example"),
                                     (":path", "/?_task=login"),
                                     ("content-type", "application/x-www-form-urlencoded")]))
              + data(1, form)
              + headers(3, c.encode([(":method", "POST"), (":scheme", "https"), (":authority", "mail.example"),
                                     (":path", "/jmap/api/"), ("content-type", "application/json"),
                                     ("authorization", "Bearer tok")]), split=7)
              + data(3, body) + PingFrame(0).serialize() + WindowUpdateFrame(0).serialize())
    server = (SettingsFrame(0).serialize()
              + headers(1, s.encode([(":status", "302"), ("location", "/?_task=mail")]), end=True)
              + headers(3, s.encode([(":status", "200"), ("content-type", "application/json")]))
              + data(3, b'{"methodResponses":[["Email/get",{"list":[{"id":"m1","subject":"hi"}]},"0"]]}')
              + RstStreamFrame(5).serialize() + GoAwayFrame(0).serialize())
    write("http2", "prior-knowledge", harness.encode_transcript([(0, client[:60]), (0, client[60:]), (1, server)]))
    upgrade = (b"GET / HTTP/1.1\r\nHost: mail.example\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    write("http2", "h2c-upgrade", harness.encode_transcript([(0, upgrade), (1, switched + server), (0, client)]))


def sasl() -> None:
    b = base64.b64encode
    seeds = {
        "plain": b"PLAIN\n" + b(b"authz\0user\0secret") + b"\n",
        "login": b"LOGIN\n-\n" + b(b"user") + b"\n" + b(b"Password:") + b"\n" + b(b"secret") + b"\n",
        "cram": b"CRAM-MD5\n-\n\n" + b(b"<1896.697170952@postoffice.example.net>") + b"\n"
                + b(b"tim b913a602c7eda7a495b4e6e7334d3890") + b"\n",
        "xoauth2": b"XOAUTH2\n" + b(b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01") + b"\n",
        "oauthbearer": b"OAUTHBEARER\n" + b(b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01") + b"\n",
        "scram": b"SCRAM-SHA-256\n" + b(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") + b"\n",
    }
    for name, data in seeds.items():
        write("sasl", name, data)


def forms_seeds() -> None:
    write("forms", "multipart", b"zz\r\n--zz\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nb@y.org\r\n"
          b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.eml\"\r\n"
          b"Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nbody\r\n--zz--\r\n")
    write("forms", "urlencoded", b"_user=alice&_pass=s%3Dcret&_task=login&_action=login")
    write("forms", "json", b'{"using":["urn:ietf:params:jmap:core"],"methodCalls":[["Email/set",{"create":'
          b'{"k1":{"subject":"hi","to":[{"email":"b@y.org"}]}}},"0"]]}')


def main(argv) -> int:
    targets = set(argv) or set(harness.TARGETS)
    unknown = targets - set(harness.TARGETS)
    if unknown:
        print(f"unknown target(s): {', '.join(sorted(unknown))}; known: {', '.join(harness.TARGETS)}")
        return 2
    transcripts(targets)
    if "mime" in targets:
        messages()
    if "decode" in targets:
        frames()
    if "capture" in targets:
        captures()
    if "tcp" in targets:
        tcp()
    if "sasl" in targets:
        sasl()
    if "http2" in targets:
        http2()
    if "forms" in targets:
        forms_seeds()
    for t in sorted(targets):
        n = len(list((SEEDS / t).glob("*"))) if (SEEDS / t).is_dir() else 0
        print(f"{t}: {n} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
