"""Limits and options, in one place.

Every buffer in maildissect is bounded by one of these limits; going past one
produces a named anomaly, never an exception or unbounded memory. docs/limits.md
describes each; the CLI exposes them as ``--limit NAME=VALUE`` and the API as
``analyze(..., limits={"max_line": 65536})``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace


@dataclass(slots=True)
class Limits:
    """Upper bounds on what a hostile capture may make us hold."""

    # capture / decoding
    max_frame: int = 262_144  # largest record length believed in a capture file
    max_fragment_bytes: int = 65_535  # reassembled IPv4/IPv6 datagram
    max_fragment_sets: int = 4_096  # datagrams being reassembled at once
    fragment_timeout: float = 30.0  # seconds before an incomplete datagram is dropped
    max_capture_secrets: int = 64 * 1024 * 1024  # TLS key log bytes kept from pcapng Decryption Secrets Blocks
    # TCP
    max_flows: int = 1_000_000  # connections tracked at once (oldest idle evicted)
    max_ooo_bytes: int = 4 * 1024 * 1024  # out-of-order bytes buffered per direction
    max_ooo_segments: int = 4_096  # out-of-order segments buffered per direction
    idle_timeout: float = 3600.0  # seconds of silence before a flow is closed (live mode)
    max_live_tls_bytes: int = 64 * 1024 * 1024  # live --keylog: frames kept per connection until it is decrypted
    max_live_tls_total: int = 256 * 1024 * 1024  # live --keylog: frames kept for all open connections together
    max_live_spool: int = 1024 * 1024 * 1024  # live: bytes of captured packets waiting on disk for the analysis; beyond it the oldest unread spool files are dropped and counted (live_spool_full)
    live_spool_file: int = 16 * 1000 * 1000  # live: bytes per spool file (tcpdump -C, rounded up to millions of bytes); the spool may pass max_live_spool by the files being read and written
    live_capture_buffer: int = 32 * 1024 * 1024  # live: kernel capture buffer asked of tcpdump (-B), what absorbs a burst while tcpdump writes
    # protocol detection
    max_detect_bytes: int = 4_096  # bytes buffered per side while the protocol is unknown
    max_start_violations: int = 2  # protocol violations before any valid answer that make a port-mapped session's dissector be given up (protocol_mismatch)
    max_claim_bytes: int = 4_096  # bytes at the start of a port-mapped session held while its protocol is unconfirmed (violations after them are only anomalies)
    # dissectors
    max_line: int = 65_536  # command/reply/header line
    max_reply_lines: int = 1_000  # lines of a multi-line reply kept on its command (commands.reply_lines)
    max_pending_commands: int = 1_000  # commands awaiting a reply (pipelining): SMTP, POP3, IMAP tagged commands, HTTP requests; formerly also max_commands_in_flight, still accepted
    max_recipients: int = 10_000  # RCPT TO per transaction
    max_message_size: int = 64 * 1024 * 1024  # bytes of one message kept for parsing
    max_literal: int = 64 * 1024 * 1024  # IMAP literal kept for parsing
    max_nesting: int = 100  # IMAP parenthesis depth, JSON depth
    max_mailbox_messages: int = 1_000_000  # IMAP sequence numbers mapped to UIDs per selected mailbox
    max_records: int = 100_000  # records of one kind (commands, messages, anomalies...) listed per session; the rest are counted
    max_http_header_bytes: int = 1024 * 1024  # request/response header block
    max_http_body: int = 64 * 1024 * 1024  # HTTP body kept for parsing
    max_decompressed: int = 64 * 1024 * 1024  # body after Content-Encoding
    max_decompression_ratio: int = 1_000  # decompressed / compressed
    # MIME
    max_mime_depth: int = 50  # nested multiparts / message/rfc822
    max_mime_parts: int = 10_000  # MIME parts in one message
    max_headers: int = 10_000  # header fields in one header block
    max_header_bytes: int = 1024 * 1024  # one header block
    preview_chars: int = 200  # text preview length in tables
    # extraction
    max_extract_size: int = 64 * 1024 * 1024  # bytes of one file kept for `extract` (larger files are hashed whole but not written)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    #: former names still accepted by :meth:`updated` (so by ``--limit`` and ``analyze(limits=...)``)
    ALIASES = {"max_commands_in_flight": "max_pending_commands"}

    def updated(self, **changes) -> "Limits":
        """A copy with ``changes``; unknown names, non-numbers, fractions for whole-number
        limits and negative values raise ValueError (a limit of -5 bytes, or 1.5 lines
        of 1.5 bytes, would reach the parsers as nonsense)."""
        changes = {self.ALIASES.get(name, name): value for name, value in changes.items()}
        unknown = set(changes) - set(self.names())
        if unknown:
            raise ValueError(f"unknown limit(s): {', '.join(sorted(unknown))}")
        checked = {}
        for name, value in changes.items():
            whole = isinstance(getattr(self, name), int)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} takes a number, not {value!r}")
            if whole:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(f"{name} takes a whole number, not {value!r}")
                value = int(value)
            else:
                value = float(value)
            if value < 0:
                raise ValueError(f"{name} cannot be negative ({value!r})")
            checked[name] = value
        return replace(self, **checked)


def limits_markdown() -> str:
    """docs/limits.md, from the declarations above (their comments are the documentation)."""
    import inspect
    import re
    src = inspect.getsource(Limits)
    defaults = Limits()
    lines = ["# Limits", "",
             "Every buffer maildissect keeps is bounded. Passing a limit never raises and never grows "
             "memory: the excess is skipped (or hashed without being kept) and an anomaly names what "
             "happened (docs/anomalies.md).", "",
             "Change a limit on the command line with `--limit NAME=VALUE` (sizes accept K, M and G "
             "suffixes: `--limit max_message_size=256M`) or from Python with "
             "`maildissect.analyze(path, limits={\"max_line\": 1_000_000})`.", ""]
    for m in re.finditer(r"^    # (.+)$|^    (\w+): \w+ = [^#\n]+#\s*(.+)$", src, re.M):
        if m.group(1):
            lines += ["", f"## {m.group(1)[0].upper() + m.group(1)[1:]}", "", "| limit | default | meaning |", "|---|---|---|"]
        else:
            name, doc = m.group(2), m.group(3)
            value = getattr(defaults, name)
            shown = f"{value:,}" if isinstance(value, int) else str(value)
            lines.append(f"| `{name}` | {shown} | {doc} |")
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


@dataclass(slots=True)
class Config:
    """Options of one analysis run, shared by every stage."""

    limits: Limits = field(default_factory=Limits)
    keep_bodies: bool = False  # keep raw messages and attachment bytes (extraction)
    strict: bool = False  # turn anomalies into exceptions (tests)
    redact: bool = False  # mask secrets in every output
    ports: dict[int, str] = field(default_factory=dict)  # extra port -> protocol map
    dissect: bool = True  # False: reassemble and detect protocols only (the flows table)
