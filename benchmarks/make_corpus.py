#!/usr/bin/env python3
"""Build a large mail capture with a known ground truth, from maildissect's own parts.

    python benchmarks/make_corpus.py OUT.pcap [--sessions 1000] [--attachment-size 131072]
                                     [--seed 1] [--concurrency 32] [--mss 1448]

The messages come from the generator's content factory (real MIME written by
the standard library's email package, non-ASCII headers), each with one
attachment of ``--attachment-size`` bytes (1,000 sessions: about 211,000
packets, 196 MB), the
dialogues are those of SMTP submission with AUTH PLAIN, IMAP LOGIN + FETCH,
POP3 USER/PASS + RETR and an HTTP multipart upload of the raw message, and the
pcap is written by the generator's synthesiser (handshake, MSS segmentation,
delayed ACKs, FIN). Sessions overlap ``--concurrency`` at a time. A manifest
(OUT.pcap.json) lists each session's Message-ID and attachment sha256s, so a
benchmark can check what was recovered as well as how fast.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maildissect.generate.content import ContentFactory, make_users  # noqa: E402
from maildissect.generate.impair import Impairments  # noqa: E402
from maildissect.generate.record import RecordedConnection, synthesize  # noqa: E402

C, S = 0, 1


def dot_stuff(data: bytes) -> bytes:
    out = data.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


def smtp(raw, sender, rcpt, i):
    auth = base64.b64encode(b"\0" + sender.user.encode() + b"\0" + sender.password.encode())
    return 587, [(S, b"220 mail.alice.example ESMTP\r\n"), (C, b"EHLO ua%d.alice.example\r\n" % i),
                 (S, b"250-mail.alice.example\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"),
                 (C, b"AUTH PLAIN " + auth + b"\r\n"), (S, b"235 2.7.0 Authentication successful\r\n"),
                 (C, b"MAIL FROM:<%s>\r\n" % sender.address.encode()), (S, b"250 2.1.0 Ok\r\n"),
                 (C, b"RCPT TO:<%s>\r\n" % rcpt.encode()), (S, b"250 2.1.5 Ok\r\n"),
                 (C, b"DATA\r\n"), (S, b"354 End data with <CR><LF>.<CR><LF>\r\n"),
                 (C, dot_stuff(raw) + (b"" if raw.endswith(b"\r\n") else b"\r\n") + b".\r\n"),
                 (S, b"250 2.0.0 Ok: queued as Q%d\r\n" % i), (C, b"QUIT\r\n"), (S, b"221 2.0.0 Bye\r\n")]


def imap(raw, user, i):
    return 143, [(S, b"* OK IMAP4rev1 ready\r\n"),
                 (C, b"a1 LOGIN %s %s\r\n" % (user.user.encode(), user.password.encode())),
                 (S, b"a1 OK LOGIN completed\r\n"), (C, b"a2 SELECT INBOX\r\n"),
                 (S, b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\na2 OK [READ-WRITE] SELECT completed\r\n"),
                 (C, b"a3 UID FETCH 1 (FLAGS BODY.PEEK[])\r\n"),
                 (S, b"* 1 FETCH (UID 1 FLAGS (\\Seen) BODY[] {%d}\r\n" % len(raw) + raw +
                  b")\r\na3 OK FETCH completed\r\n"),
                 (C, b"a4 LOGOUT\r\n"), (S, b"* BYE\r\na4 OK LOGOUT completed\r\n")]


def pop3(raw, user, i):
    return 110, [(S, b"+OK POP3 ready\r\n"), (C, b"USER %s\r\n" % user.user.encode()), (S, b"+OK\r\n"),
                 (C, b"PASS %s\r\n" % user.password.encode()), (S, b"+OK 1 messages\r\n"), (C, b"RETR 1\r\n"),
                 (S, b"+OK %d octets\r\n" % len(raw) + dot_stuff(raw) +
                  (b"" if raw.endswith(b"\r\n") else b"\r\n") + b".\r\n"),
                 (C, b"QUIT\r\n"), (S, b"+OK bye\r\n")]


def http(raw, user, i):
    boundary = b"----maildissectbench%d" % i
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="message"; filename="m%d.eml"\r\n'
            % i + b"Content-Type: message/rfc822\r\n\r\n" + raw + b"\r\n--" + boundary + b"--\r\n")
    req = (b"POST /upload HTTP/1.1\r\nHost: webmail.bob.example\r\nContent-Type: multipart/form-data; "
           b"boundary=" + boundary + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
    return 80, [(C, req), (S, resp)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--attachment-size", type=int, default=128 * 1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--mss", type=int, default=1448)
    a = ap.parse_args()
    alice, bob = make_users(a.seed, 4)
    factory = ContentFactory(a.seed, a.attachment_size)
    kinds = ("smtp", "imap", "pop3", "http")
    conns, manifest = [], []
    t0 = 1_700_000_000.0
    for i in range(a.sessions):
        kind = kinds[i % 4]
        sender, rcpt = alice[i % len(alice)], bob[i % len(bob)]
        msg = factory.compose(sender, [rcpt], with_attachment=True)
        raw = msg.data
        if kind == "smtp":
            port, dialog = smtp(raw, sender, rcpt.address, i)
        elif kind == "imap":
            port, dialog = imap(raw, rcpt, i)
        elif kind == "pop3":
            port, dialog = pop3(raw, rcpt, i)
        else:
            port, dialog = http(raw, rcpt, i)
        start = t0 + (i // a.concurrency) * 0.05 + (i % a.concurrency) * 0.0004
        conn = RecordedConnection(i, f"10.1.{i // 250}.{i % 250 + 1}", 20000 + i % 40000,
                                  f"10.2.0.{kinds.index(kind) + 1}", port, start, service=kind)
        t = start
        for side, data in dialog:
            t += 0.0002
            conn.events.append((t, side, "data", data))
        conn.events.append((t + 0.0002, C, "fin", b""))
        conn.events.append((t + 0.0004, S, "fin", b""))
        conns.append(conn)
        manifest.append({"session": i, "protocol": kind, "server_port": port, "message_id": msg.message_id,
                         "sha256": hashlib.sha256(raw).hexdigest(),
                         "attachments": [{"filename": x.filename, "sha256": x.sha256} for x in msg.attachments],
                         "client_sha256": hashlib.sha256(conn.stream(C)).hexdigest(),
                         "server_sha256": hashlib.sha256(conn.stream(S)).hexdigest()})
    began = time.time()
    counts = synthesize(conns, a.out, Impairments(mss=a.mss), seed=a.seed)
    with open(a.out + ".json", "w") as f:
        json.dump({"packets": counts["packets"], "sessions": a.sessions, "messages": manifest}, f, indent=1)
    print(f"{a.out}: {counts['packets']} packets, {a.sessions} sessions "
          f"({time.time() - began:.1f} s to write)", file=sys.stderr)


if __name__ == "__main__":
    main()
