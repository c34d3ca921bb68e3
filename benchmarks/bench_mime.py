"""MIME parsing speed: MB/s of :func:`maildissect.mime.fill_message` on a large message.

Builds a multipart message with a short text body, an HTML alternative and
base64 attachments (20 MB of base64 in total by default: four random files of
about 3.7 MB each, encoded with 76-character CRLF lines as MUAs do), parses it
several times and prints the best throughput over the message's wire size:
wall-clock, and CPU time of the calling thread and of all threads (the
digests of large buffers run on worker threads), which a busy machine
disturbs less than wall-clock time.
The stdlib feed parser is timed on the same bytes for comparison
(``--no-stdlib`` skips it).

    python benchmarks/bench_mime.py [--mb 20] [--files 4] [--repeat 5]
"""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maildissect import mime  # noqa: E402
from maildissect.config import Config  # noqa: E402
from maildissect.model import Message  # noqa: E402


def build(total_b64_mb: float, files: int) -> bytes:
    raw_per_file = int(total_b64_mb * 1e6 * 3 / 4 * 76 / 78 / files)
    rng = os.urandom
    parts = [
        b"From: Bench <bench@example.org>\r\nTo: Target <target@example.net>\r\n"
        b"Subject: =?utf-8?q?benchmark_=E2=9C=93?=\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        b"Message-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer-boundary"\r\n\r\n'
        b"--outer-boundary\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n"
        b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello, the files are attached.\r\n"
        b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello, the files are attached.</p>\r\n"
        b"--alt--\r\n"
    ]
    for i in range(files):
        body = base64.encodebytes(rng(raw_per_file)).replace(b"\n", b"\r\n")
        parts.append(
            b"--outer-boundary\r\nContent-Type: application/octet-stream; name=\"file%d.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"file%d.bin\"\r\n\r\n" % (i, i) + body)
    parts.append(b"--outer-boundary--\r\n")
    return b"".join(parts)


def best(fn, repeat: int) -> tuple[float, float, float]:
    """Best wall time, and the best CPU times of the calling thread and of the
    whole process (the digests run on worker threads), over ``repeat`` runs."""
    wall, main, total = [], [], []
    for _ in range(repeat):
        t, m, p = time.perf_counter(), time.thread_time(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        main.append(time.thread_time() - m)
        total.append(time.process_time() - p)
    return min(wall), min(main), min(total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20.0, help="MB of base64 attachment text (default 20)")
    ap.add_argument("--files", type=int, default=4, help="number of attachments (default 4)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-stdlib", action="store_true", help="do not time the stdlib parser")
    args = ap.parse_args()
    raw = build(args.mb, args.files)
    size = len(raw) / 1e6
    config = Config()

    def ours():
        msg = Message("smtp", 1, 0.0, "sent")
        found = mime.fill_message(msg, raw, config)
        assert len(msg.attachments) == args.files and not found, found

    t, main, total = best(ours, args.repeat)
    print(f"message: {size:.1f} MB, {args.files} base64 attachments; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"maildissect.mime.fill_message: {size / t:7.0f} MB/s wall ({t * 1000:.0f} ms); "
          f"CPU: {size / main:.0f} MB/s in the calling thread, {size / total:.0f} MB/s all threads")
    if not args.no_stdlib:
        def stdlib():
            m = email.message_from_bytes(raw, policy=email.policy.compat32)
            for part in m.walk():
                if not part.is_multipart():
                    part.get_payload(decode=True)
        t2, main2, _ = best(stdlib, max(1, args.repeat // 2))
        print(f"stdlib email (parse + decode):  {size / t2:7.0f} MB/s wall ({t2 * 1000:.0f} ms); "
              f"CPU: {size / main2:.0f} MB/s")


if __name__ == "__main__":
    main()
