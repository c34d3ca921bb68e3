"""The records every stage emits: plain dataclasses, no behaviour.

Dissectors return lists of these; :mod:`maildissect.analysis` turns them into
DataFrames once at the end. Field names are the output contract (docs/data.md):
a field here is a column there, with two spellings adapted to Python
(``from_`` is exported as ``from``).

Timestamps are float seconds since the epoch (UTC) inside the pipeline; the
table layer converts them to tz-aware datetimes (DataFrames) or ISO 8601 strings
(JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Side of a TCP connection. Plain ints on the hot path; names in records.
CLIENT = 0
SERVER = 1
SIDE_NAMES = ("client", "server")


@dataclass(slots=True)
class Anomaly:
    """Something unusual or broken in the input, in the spirit of Zeek's weird.log.

    ``name`` is a snake_case identifier prefixed by its layer (``tcp_gap``,
    ``smtp_bare_lf_dot``); every name is listed in :mod:`maildissect.anomalies`.
    ``session_id`` is None for capture-level anomalies (a truncated file).
    """

    ts: float | None
    session_id: int | None
    side: str  # "client", "server" or "" when not tied to a side
    name: str
    detail: str = ""
    #: where ``detail`` starts quoting secret bytes (an authentication exchange's
    #: client bytes); they run to its end. None: no secret. maildissect.redact masks.
    secret_at: int | None = None
    # where it came from: the capture file (as given) and the number, in that file, of the frame that
    # completed it (while the pipeline runs: the frame's number in the merged reading)
    frame: int | None = None
    file: str | None = None


@dataclass(slots=True)
class Flow:
    """One TCP connection as the reassembler saw it."""

    flow_id: int
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    start: float
    end: float
    packets: int = 0
    bytes_client: int = 0  # reassembled payload bytes client -> server
    bytes_server: int = 0
    client_sha256: str = ""
    server_sha256: str = ""
    gaps: int = 0  # number of gap events, both directions
    gap_bytes: int = 0
    protocol: str = ""
    handshake_rtt: float | None = None  # SYN -> ACK of SYN-ACK, seconds
    close: str = "open"  # fin | rst | refused | unanswered | timeout | open
    first_frame: int = 0  # number (from 1) of the connection's first frame in its capture file
    syn_seen: bool = False
    role_by: str = ""  # how client/server was decided: syn | port | first
    file: str | None = None  # the capture file (as given) of that first frame
    merged_frame: int = 0  # the first frame's number in the merged reading of every file (internal order)


@dataclass(slots=True)
class Session:
    """An application-level session: one TCP connection running one protocol.

    Dissectors receive their Session at construction and fill in what they learn
    (helo, auth, tls...). ``session_id`` equals the flow id of its connection.
    """

    session_id: int
    protocol: str
    client_ip: str = ""
    client_port: int = 0
    server_ip: str = ""
    server_port: int = 0
    start: float | None = None
    end: float | None = None
    helo: str | None = None
    auth_user: str | None = None
    auth_mechanism: str | None = None
    tls: bool = False
    decrypted: bool = False
    tls_version: str | None = None
    sni: str | None = None
    alpn: str | None = None
    tls_start: float | None = None  # time of the first TLS byte (ClientHello)
    tls_cipher: str | None = None  # cipher suite the server chose (IANA name)
    tls_curve: str | None = None  # key-exchange group the server chose
    tls_resumed: bool = False
    tls_established: bool = False
    tls_alert: str | None = None  # last plaintext alert
    tls_history: str | None = None  # Zeek's ssl_history letters
    tls_certificates: list[str] = field(default_factory=list)  # sha256 of the server's chain (TLS <= 1.2)
    tls_client_certificates: list[str] = field(default_factory=list)
    banner: str | None = None  # server greeting text
    server_software: str | None = None  # e.g. from IMAP ID or Server: header
    client_software: str | None = None  # e.g. from IMAP ID or User-Agent
    extensions: list[str] = field(default_factory=list)  # EHLO / CAPABILITY / CAPA
    commands: int = 0
    messages: int = 0
    bytes_client: int = 0
    bytes_server: int = 0
    tls_bytes_client: int = 0  # bytes after the switch to TLS, not parsed
    tls_bytes_server: int = 0
    anomalies: int = 0
    complete: bool = True  # False when a gap hit the session
    tunnel: str | None = None  # how the session was reached: http-connect, socks4, socks5
    tunnel_target: str | None = None  # host:port the client asked the proxy for
    first_frame: int | None = None  # its connection's first frame, numbered in its capture file
    file: str | None = None  # that capture file (as given)


@dataclass(slots=True)
class Command:
    """One command and its reply (or a server greeting with ``command=""``)."""

    session_id: int
    protocol: str
    ts: float
    command: str  # verb upper-cased; "" for the server greeting
    argument: str = ""
    tag: str | None = None  # IMAP tag
    reply_code: str | None = None  # "250", "+OK", "OK"...
    reply_text: str | None = None  # first reply line after the code
    reply_ts: float | None = None
    latency: float | None = None  # reply_ts - ts
    #: the lines of a multi-line reply after the first (SMTP continuation lines; POP3 LIST,
    #: UIDL, CAPA and AUTH bodies), at most limits.max_reply_lines; None for a one-line reply
    reply_lines: list[str] | None = None
    #: where ``argument`` starts carrying a secret (a password, a SASL response); it
    #: runs to the end of the argument. None: no secret. maildissect.redact masks.
    secret_at: int | None = None
    # keys set by the dissector, on which downstream code joins records (never on time)
    seq: int | None = None  # position in the session: 0 the greeting, 1, 2... in the order sent
    transaction: int | None = None  # SMTP: mail transaction of the session (1, 2...) it belongs to
    user: str | None = None  # user authenticated when the server answered it
    mailbox: str | None = None  # IMAP: selected mailbox it ran in; POP3: INBOX once the maildrop is open
    # where it came from: the capture file (as given) and the number, in that file, of the frame that
    # completed it (while the pipeline runs: the frame's number in the merged reading)
    frame: int | None = None
    file: str | None = None


@dataclass(slots=True)
class Credential:
    """A user name and secret seen on the wire, with the server's verdict."""

    session_id: int
    protocol: str
    ts: float
    mechanism: str  # LOGIN, PLAIN, CRAM-MD5, USER/PASS, APOP, BASIC, BEARER, FORM...
    user: str | None
    secret: str | None
    success: bool | None = None  # None: no verdict seen
    detail: str = ""  # e.g. CRAM-MD5 challenge, form field names
    # where it came from: the capture file (as given) and the number, in that file, of the frame that
    # completed it (while the pipeline runs: the frame's number in the merged reading)
    frame: int | None = None
    file: str | None = None


@dataclass(slots=True)
class Attachment:
    """A file: a MIME leaf entity of a message (an attachment, an inline file or a
    body part), a forwarded message attached to one, or a file carried over HTTP.

    Size and hashes are of the decoded bytes (after the Content-Transfer-Encoding,
    or HTTP's transfer and content codings). The files table lists every one; the
    attachments table those with ``is_attachment``.
    """

    filename: str | None
    content_type: str
    size: int  # decoded bytes
    md5: str
    sha1: str
    sha256: str
    disposition: str | None = None  # attachment | inline | None
    part: str = ""  # MIME part path, "1.2"
    encoding: str | None = None  # Content-Transfer-Encoding
    content_id: str | None = None
    data: bytes | None = None  # decoded bytes, only when extraction asks
    charset: str | None = None  # charset parameter of the Content-Type, as written
    is_attachment: bool = True  # an attachment or inline file (False: a text body part)
    complete: bool = True  # False when its bytes were cut (no closing boundary, a gap, a limit)
    index: int = 0  # MIME: the entity's number in its message, containers counted (1: the message itself)


@dataclass(slots=True)
class Received:
    """One parsed Received: header (a hop the message claims)."""

    from_: str | None = None
    by: str | None = None
    with_: str | None = None
    id: str | None = None
    for_: str | None = None
    date: float | None = None
    raw: str = ""


@dataclass(slots=True)
class Message:
    """One message seen on the wire, in any direction and by any protocol.

    ``direction`` is sent (SMTP DATA/BDAT, webmail send), retrieved (IMAP FETCH,
    POP3 RETR, webmail read), appended (IMAP APPEND), uploaded or downloaded
    (HTTP). ``sha256`` and ``size`` are of the exact message bytes as
    transferred (after dot-unstuffing / literal extraction).
    """

    protocol: str
    session_id: int
    ts: float
    direction: str
    client_ip: str = ""
    client_port: int = 0
    server_ip: str = ""
    server_port: int = 0
    mail_from: str | None = None
    rcpt_to: list[str] = field(default_factory=list)
    rcpt_rejected: list[str] = field(default_factory=list)
    from_: str | None = None
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: str | None = None
    sender: str | None = None
    subject: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    date: float | None = None
    date_raw: str | None = None
    helo: str | None = None
    user_agent: str | None = None
    return_path: str | None = None
    x_originating_ip: str | None = None
    received: list[Received] = field(default_factory=list)
    dkim_signed: bool = False
    authentication_results: str | None = None
    tls: bool = False
    decrypted: bool = False  # seen inside TLS thanks to a key log
    size: int = 0
    sha256: str | None = None
    body_sha256: str | None = None  # sha256 of the body (after the header block)
    complete: bool = True
    missing_bytes: int = 0
    attachments: list[Attachment] = field(default_factory=list)
    # every MIME leaf entity (body parts and attachments, the same objects as in
    # attachments), in part order: the message's rows of the files table
    entities: list[Attachment] = field(default_factory=list)
    text_preview: str | None = None
    has_html: bool = False
    queue_id: str | None = None  # SMTP "queued as X"
    #: SMTP: how its mail transaction ended: delivered, rejected, no_recipients, aborted, unterminated
    outcome: str | None = None
    reply_code: str | None = None  # final reply to DATA/BDAT, FETCH, RETR...
    reply_text: str | None = None
    message_index: int = 0  # ordinal of this message within its session
    kind: str | None = None  # webmail: jmap | form | rfc822; IMAP: body | header | partial...
    source: str | None = None  # where in the exchange: "RETR 3", "UID FETCH 7 BODY[]", "POST /x"
    heuristic: bool = False  # recognised by a heuristic (generic web form)
    headers: list[tuple[str, str]] = field(default_factory=list)  # decoded, in order
    # keys set by the dissector (see Command)
    command_seq: int | None = None  # Command.seq (HTTP: HttpRequest.seq) of what carried it
    transaction: int | None = None  # SMTP: the mail transaction that carried it
    user: str | None = None  # user authenticated when it was transferred
    mailbox: str | None = None  # IMAP: mailbox it was fetched from or appended to; POP3: INBOX
    uid: int | None = None  # IMAP UID in that mailbox (IMAP fetches, appends with APPENDUID; webmail reads and downloads)
    filled_from: str | None = None  # webmail page rows: page, imap or page+imap (see docs/protocols/webmail.md)
    raw: bytes | None = None  # exact bytes, only when extraction asks
    # where it came from: the capture file (as given) and the number, in that file, of the frame that
    # completed it (while the pipeline runs: the frame's number in the merged reading)
    frame: int | None = None
    file: str | None = None


@dataclass(slots=True)
class HttpRequest:
    """One HTTP request and its response."""

    session_id: int
    ts: float
    method: str
    uri: str
    version: str = ""
    host: str | None = None
    status: int | None = None
    reason: str | None = None
    request_content_type: str | None = None
    request_size: int = 0  # body bytes after transfer/content decoding
    response_content_type: str | None = None
    response_size: int = 0
    user_agent: str | None = None
    referer: str | None = None
    response_ts: float | None = None
    latency: float | None = None
    request_sha256: str | None = None
    response_sha256: str | None = None
    mail_action: str | None = None  # login, list, read, send, upload, download, jmap:Email/get...
    files: list[Attachment] = field(default_factory=list)  # multipart form files
    response_md5: str | None = None  # md5 of the decoded response body (Zeek's files.log md5)
    response_filename: str | None = None  # Content-Disposition filename of the response
    upgrade: str | None = None  # connection left HTTP/1: "connect", "websocket", "h2c", "h2"...
    complete: bool = True  # False when a gap, a limit or a decoding error cut a body
    seq: int | None = None  # the exchange's number in its session (1, 2...), as Command.seq
    # webmail: the message the exchange reads or downloads (files and their message join on these)
    mailbox: str | None = None
    uid: int | None = None
    part: str | None = None  # IMAP part number of a downloaded attachment
    message_id: str | None = None  # from the page, the webmail server's IMAP fetch, or the message itself
    # the response body when it is a file (a download, any body that is not a page, data or code):
    # a row of the files table, with its bytes when extraction asks
    response_file: Attachment | None = None
    # where it came from: the capture file (as given) and the number, in that file, of the frame that
    # completed it (while the pipeline runs: the frame's number in the merged reading)
    frame: int | None = None
    file: str | None = None


@dataclass(slots=True)
class MailboxEvent:
    """What an IMAP/POP3 exchange reveals about a mailbox's state."""

    session_id: int
    ts: float
    protocol: str
    user: str | None
    mailbox: str | None
    action: str  # select, exists, fetch, store, copy, move, expunge, append, flags, dele...
    uidvalidity: int | None = None
    uid: int | None = None
    seq: int | None = None
    count: int | None = None
    flags: list[str] = field(default_factory=list)
    size: int | None = None
    message_id: str | None = None
    detail: str = ""
    # where it came from: the capture file (as given) and the number, in that file, of the frame that
    # completed it (while the pipeline runs: the frame's number in the merged reading)
    frame: int | None = None
    file: str | None = None


# Everything a dissector may return.
Record = (
    Anomaly | Command | Credential | Message | HttpRequest | MailboxEvent
)
