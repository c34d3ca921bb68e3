"""Records to DataFrames: the table schemas, in one place.

Every table's columns are declared here with a kind and a one-line meaning;
the DataFrames, the JSON/CSV/Parquet exports and docs/data.md all come from
these declarations, so a column means the same thing everywhere.

Kinds: ``int`` (nullable Int64), ``float`` (Float64), ``str`` (string),
``bool`` (nullable boolean), ``ts`` (datetime64[us, UTC]), ``cat`` (category),
``list`` (Python list of strings), ``dicts`` (list of dicts, e.g. attachments).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported when a table is built: the pipeline does not need it
    import pandas as pd

# (column, kind, meaning[, record attribute when it differs])
SCHEMAS: dict[str, list[tuple]] = {
    "flows": [
        ("flow_id", "int", "connection number from 0, in order of first packet (Wireshark's tcp.stream; also the session_id of its session)"),
        ("client_ip", "str", "address of the side that opened the connection"),
        ("client_port", "int", "client TCP port"),
        ("server_ip", "str", "address of the side that accepted the connection"),
        ("server_port", "int", "server TCP port"),
        ("start", "ts", "time of the first packet"),
        ("end", "ts", "time of the last packet"),
        ("packets", "int", "packets of this connection, both directions, duplicates included"),
        ("bytes_client", "int", "reassembled payload bytes sent by the client"),
        ("bytes_server", "int", "reassembled payload bytes sent by the server"),
        ("client_sha256", "str", "sha256 of the reassembled client-to-server byte stream"),
        ("server_sha256", "str", "sha256 of the reassembled server-to-client byte stream"),
        ("gaps", "int", "number of gaps (ranges of bytes never captured), both directions"),
        ("gap_bytes", "int", "total bytes missing in those gaps"),
        ("protocol", "cat", "application protocol detected (smtp, imap, pop3, http; smtps/imaps/pop3s/https "
                            "for implicit TLS; tls when only TLS was recognised; socks for a SOCKS proxy "
                            "connection whose tunnel carried nothing recognised; empty when unknown; the "
                            "protocol inside for a tunnel: see sessions.tunnel)"),
        ("handshake_rtt", "float", "seconds from the client's SYN to its ACK of the SYN-ACK (the three-way "
                                   "handshake as seen at the capture point); empty without a full handshake"),
        ("close", "cat", "how it ended: fin, rst, refused (SYN answered by RST), unanswered (SYN only), "
                         "timeout (idle), open (still open at the end of the capture)"),
        ("first_frame", "int", "number of the connection's first frame in its capture file (from 1, as "
                               "Wireshark numbers the frames of that file opened alone)"),
        ("file", "str", "the capture file of that first frame, as given on the command line ('-' for "
                        "standard input; with several files, first_frame counts the frames of this one)"),
        ("syn_seen", "bool", "the client's SYN is in the capture"),
        ("role_by", "cat", "how client and server were told apart: syn, port (well-known port), first "
                           "(first packet's sender)"),
    ],
    "sessions": [
        ("protocol", "cat", "smtp, imap, pop3, http, tls or socks (a session reached through a proxy has the "
                            "protocol spoken inside its tunnel)"),
        ("session_id", "int", "the connection's flow_id"),
        ("client_ip", "str", "client address"),
        ("client_port", "int", "client port"),
        ("server_ip", "str", "server address"),
        ("server_port", "int", "server port"),
        ("start", "ts", "first packet"),
        ("end", "ts", "last packet"),
        ("helo", "str", "SMTP EHLO/HELO argument"),
        ("auth_user", "str", "user that authenticated (LOGIN, AUTH, USER...)"),
        ("auth_mechanism", "str", "authentication mechanism used (PLAIN, LOGIN, CRAM-MD5, USER/PASS...)"),
        ("tls", "bool", "the session switched to TLS (STARTTLS/STLS) or used implicit TLS"),
        ("decrypted", "bool", "TLS traffic was decrypted with a key log"),
        ("tls_version", "str", "TLS version negotiated (from the ServerHello, else offered in the ClientHello)"),
        ("sni", "str", "server name the client asked for (TLS SNI)"),
        ("alpn", "str", "application protocol negotiated by TLS ALPN (offered list if no answer seen)"),
        ("tls_start", "ts", "time of the first TLS byte (the ClientHello; after STARTTLS, the switch)"),
        ("tls_cipher", "str", "TLS cipher suite the server chose, IANA name (unknown-N otherwise)"),
        ("tls_curve", "str", "key-exchange group the server chose (TLS 1.3 key_share, TLS 1.2 ECDHE "
                             "ServerKeyExchange)"),
        ("tls_resumed", "bool", "the TLS session was resumed (same session id, or a TLS 1.3 pre-shared key)"),
        ("tls_established", "bool", "the TLS handshake completed (TLS 1.2: both sides changed cipher spec; TLS "
                                    "1.3: the server answered and each side then sent encrypted records)"),
        ("tls_alert", "str", "last TLS alert sent in plaintext (handshake_failure, unknown_ca...)"),
        ("tls_history", "str", "Zeek's ssl_history: a letter per plaintext handshake message, change cipher "
                               "spec and alert, the client's in capitals (C client hello, s server hello, x "
                               "certificate, i change cipher spec...)"),
        ("tls_certificates", "list", "sha256 of each certificate of the server's chain, leaf first (TLS 1.2 "
                                     "and earlier: TLS 1.3 encrypts them)"),
        ("tls_client_certificates", "list", "sha256 of each certificate the client sent (TLS 1.2 and earlier)"),
        ("banner", "str", "server greeting text"),
        ("client_software", "str", "client software (IMAP ID, HTTP User-Agent)"),
        ("server_software", "str", "server software (IMAP ID, HTTP Server header)"),
        ("extensions", "list", "extensions the server advertised (EHLO keywords, IMAP CAPABILITY, POP3 CAPA)"),
        ("commands", "int", "rows of this session in the commands table"),
        ("messages", "int", "rows of this session in the messages table"),
        ("bytes_client", "int", "reassembled bytes sent by the client"),
        ("bytes_server", "int", "reassembled bytes sent by the server"),
        ("tls_bytes_client", "int", "client bytes sent inside TLS (not parsed unless decrypted)"),
        ("tls_bytes_server", "int", "server bytes sent inside TLS"),
        ("anomalies", "int", "anomalies recorded for this session (TCP and protocol)"),
        ("complete", "bool", "false when bytes of the connection were never captured (gaps)"),
        ("tunnel", "str", "how the session was reached through a proxy on this connection: http-connect (an "
                          "HTTP CONNECT answered 2xx), socks4 (SOCKS4 or 4a) or socks5; empty for a direct session"),
        ("tunnel_target", "str", "host:port the client asked the proxy to connect to, as it asked (a name or an "
                                 "address; IPv6 in brackets)"),
        ("first_frame", "int", "the connection's first frame, numbered in its capture file (flows.first_frame)"),
        ("file", "str", "the capture file of that frame, as given on the command line"),
    ],
    "commands": [
        ("session_id", "int", "session the command belongs to"),
        ("protocol", "cat", "smtp, imap, pop3, http or socks (a SOCKS proxy's handshake)"),
        ("ts", "ts", "time the command was sent (the greeting: time it was received)"),
        ("tag", "str", "IMAP command tag"),
        ("command", "str", "verb upper-cased (UID FETCH for IMAP UID commands, the method for HTTP); empty "
                           "for the server greeting"),
        ("argument", "str", "the rest of the command line (secrets masked under --redact; IMAP literals "
                            "shown as {size})"),
        ("reply_code", "str", "SMTP code (250), POP3 +OK/-ERR, IMAP OK/NO/BAD, HTTP status, SOCKS reply code "
                              "(decimal: SOCKS5 0 succeeded, SOCKS4 90 granted)"),
        ("reply_text", "str", "first line of the reply after the code"),
        ("reply_lines", "list", "the lines of a multi-line reply after the first, as Suricata logs a reply's "
                                "data: SMTP continuation lines (EHLO's extensions), POP3 LIST, UIDL, CAPA and "
                                "AUTH listings; at most max_reply_lines; empty for a one-line reply"),
        ("reply_ts", "ts", "time of the reply"),
        ("latency", "float", "seconds between command and reply"),
        ("seq", "int", "position of the command in its session: 0 for the server greeting, then 1, 2... in the "
                       "order the client sent them (SMTP AUTH responses and the end of data \".\" count; "
                       "HTTP: the exchange's http.seq). With session_id, the key other tables join on"),
        ("transaction", "int", "SMTP: the mail transaction the command belongs to, 1 for the session's first "
                               "(MAIL FROM, RCPT TO, DATA/BDAT and the end of data); empty outside one"),
        ("user", "str", "user authenticated in the session when the server answered the command (an accepted "
                        "LOGIN/AUTH/PASS names its own user)"),
        ("mailbox", "str", "IMAP: the selected mailbox the command ran in (SELECT/EXAMINE: the one selected; "
                           "CLOSE, UNSELECT, LOGOUT: the one closed); POP3: INBOX once the maildrop is open"),
        ("frame", "int", "the frame that completed the command (usually its reply's; the greeting's own): its number in its capture file (from 1, as Wireshark numbers the "
                         "frames of that file opened alone)"),
        ("file", "str", "the capture file that frame is in, as given on the command line ('-' for standard "
                        "input)"),
    ],
    "messages": [
        ("protocol", "cat", "protocol that carried the message"),
        ("session_id", "int", "session that carried it"),
        ("message_index", "int", "1 for the first message of its session, 2 for the next..."),
        ("ts", "ts", "time the transfer ended (final reply, end of literal, end of body)"),
        ("client_ip", "str", "client address"),
        ("client_port", "int", "client port"),
        ("server_ip", "str", "server address"),
        ("server_port", "int", "server port"),
        ("direction", "cat", "sent (SMTP, webmail send), retrieved (IMAP FETCH, POP3 RETR, webmail read), "
                             "appended (IMAP APPEND), uploaded or downloaded (HTTP)"),
        ("mail_from", "str", "SMTP envelope sender (MAIL FROM)"),
        ("rcpt_to", "list", "SMTP envelope recipients the server accepted"),
        ("rcpt_rejected", "list", "SMTP envelope recipients the server rejected or deferred"),
        ("from", "str", "From header, decoded", "from_"),
        ("to", "list", "To header addresses, decoded"),
        ("cc", "list", "Cc header addresses, decoded"),
        ("bcc", "list", "Bcc header addresses (rarely present on the wire)"),
        ("reply_to", "str", "Reply-To header"),
        ("sender", "str", "Sender header"),
        ("subject", "str", "Subject, decoded from RFC 2047"),
        ("message_id", "str", "Message-ID header"),
        ("in_reply_to", "str", "In-Reply-To header"),
        ("references", "list", "Message-IDs in the References header"),
        ("date", "ts", "Date header in UTC"),
        ("date_raw", "str", "Date header as written"),
        ("helo", "str", "EHLO/HELO name of the SMTP session"),
        ("user_agent", "str", "User-Agent or X-Mailer header"),
        ("return_path", "str", "Return-Path header"),
        ("x_originating_ip", "str", "X-Originating-IP header"),
        ("received", "dicts", "Received headers, newest first, parsed into from/by/with/id/for/date"),
        ("dkim_signed", "bool", "a DKIM-Signature header is present"),
        ("authentication_results", "str", "Authentication-Results header"),
        ("tls", "bool", "the message went inside TLS (STARTTLS/STLS or implicit TLS)"),
        ("decrypted", "bool", "it was read by decrypting TLS with a key log (--keylog)"),
        ("size", "int", "bytes of the message as transferred (after dot-unstuffing)"),
        ("sha256", "str", "sha256 of those bytes"),
        ("body_sha256", "str", "sha256 of the bytes after the header block"),
        ("complete", "bool", "false when part of the message was not seen (gap, partial fetch, TOP, limit)"),
        ("missing_bytes", "int", "bytes of the message known to be missing"),
        ("attachments", "dicts", "attachments: filename, content_type, size, md5, sha1, sha256..."),
        ("text_preview", "str", "start of the text body, whitespace collapsed"),
        ("has_html", "bool", "the message has an HTML part"),
        ("queue_id", "str", "queue id from the server's final reply (\"queued as X\")"),
        ("outcome", "cat", "SMTP: how the mail transaction ended: delivered (final 2xx to its data), rejected "
                           "(its MAIL, DATA/BDAT or data refused), no_recipients (no RCPT accepted), aborted "
                           "(RSET, QUIT, HELO/EHLO, a new MAIL or STARTTLS before its data ended), unterminated "
                           "(the capture or a gap ended it); every transaction is a row, those without a "
                           "message have kind envelope"),
        ("reply_code", "str", "the server's final reply code for the transfer (an envelope row: the reply that "
                              "ended it, or the last one to its commands)"),
        ("reply_text", "str", "the server's final reply text"),
        ("kind", "str", "how the message was found: SMTP data/bdat (envelope: a transaction without a "
                        "message), IMAP body (the whole message), header, "
                        "text, part, partial, POP3 retr/top, webmail jmap/form/rfc822/view (a page showing "
                        "it)/attachment (one of its files downloaded)/blob"),
        ("source", "str", "the command or request that carried it (\"RETR 3\", \"POST /upload\")"),
        ("heuristic", "bool", "recognised by a heuristic (a generic web form) rather than a known format"),
        ("headers", "dicts", "every header, decoded, in order: name and value"),
        ("command_seq", "int", "the command that carried it (commands.seq of the same session: SMTP DATA or "
                               "first BDAT, IMAP FETCH or APPEND, POP3 RETR/TOP; HTTP: http.seq of the "
                               "exchange)"),
        ("transaction", "int", "SMTP: the mail transaction that carried it (commands.transaction)"),
        ("user", "str", "user authenticated in the session when the message was transferred"),
        ("mailbox", "str", "IMAP: the mailbox it was fetched from (the selected one) or appended to; POP3: "
                           "INBOX; webmail reads and downloads: the mailbox the URL names (Roundcube's _mbox), "
                           "or for JMAP the one its Email object names (by its Mailbox/get name)"),
        ("uid", "int", "IMAP UID of the message in that mailbox (IMAP fetches; webmail reads and downloads)"),
        ("filled_from", "str", "webmail reads and downloads: where the fields come from: page (the page "
                               "shown, or for a download the message's page or JMAP Email/get seen before in "
                               "the session), "
                               "imap (the webmail server's own IMAP fetch of that UID during the request), "
                               "page+imap (both); empty for messages read from their own bytes "
                               "(docs/protocols/webmail.md)"),
        ("frame", "int", "the frame that completed the transfer (SMTP: the final reply; IMAP/POP3: the end of the data; HTTP: the end of the request or response): its number in its capture file (from 1, as Wireshark numbers the "
                         "frames of that file opened alone)"),
        ("file", "str", "the capture file that frame is in, as given on the command line ('-' for standard "
                        "input)"),
    ],
    "attachments": [
        ("session_id", "int", "session of the message"),
        ("message_index", "int", "message within that session"),
        ("protocol", "cat", "protocol that carried the message"),
        ("direction", "cat", "direction of the message"),
        ("ts", "ts", "time of the message"),
        ("message_id", "str", "Message-ID of the message"),
        ("filename", "str", "file name, decoded (RFC 2231/2047)"),
        ("content_type", "str", "MIME type of the part"),
        ("disposition", "str", "attachment or inline"),
        ("size", "int", "decoded bytes"),
        ("md5", "str", "md5 of the decoded bytes"),
        ("sha1", "str", "sha1 of the decoded bytes"),
        ("sha256", "str", "sha256 of the decoded bytes"),
        ("part", "str", "MIME part path (1.2 is the second part of the first part)"),
        ("encoding", "str", "Content-Transfer-Encoding"),
        ("content_id", "str", "Content-ID"),
        ("frame", "int", "the message's frame (messages.frame)"),
        ("file", "str", "the message's capture file (messages.file)"),
    ],
    "files": [
        ("ts", "ts", "time of the message that carried it (its ts), or of the HTTP request (an upload) or "
                     "response (a download)"),
        ("protocol", "cat", "smtp, imap, pop3 or http"),
        ("session_id", "int", "session that carried it"),
        ("client_ip", "str", "client address"),
        ("client_port", "int", "client port"),
        ("server_ip", "str", "server address"),
        ("server_port", "int", "server port"),
        ("source", "cat", "message: a MIME entity of a message (messages table); http: a file carried over HTTP "
                          "that no message holds (an upload, a download, a response body that is a file)"),
        ("direction", "cat", "the message's direction (sent, retrieved, appended, uploaded, downloaded); http: "
                             "uploaded (client to server) or downloaded (server to client)"),
        ("message_index", "int", "the message within its session (messages.message_index); empty for http"),
        ("message_id", "str", "Message-ID of the message; http: of the message a webmail download belongs to "
                              "when known"),
        ("from", "str", "From header of the message", "from_"),
        ("to", "list", "To header addresses of the message"),
        ("subject", "str", "Subject of the message"),
        ("mailbox", "str", "IMAP or webmail: the mailbox the message is in (messages.mailbox; http: of the "
                           "message a download belongs to)"),
        ("uid", "int", "IMAP or webmail: the message's UID in that mailbox"),
        ("part", "str", "MIME part path in IMAP numbering (\"1\", \"2.1\"; a forwarded message's entities are "
                        "below its own part); http: the form part number of an upload, or the webmail part "
                        "number of a download"),
        ("content_type", "str", "MIME type declared (Content-Type of the entity, part or HTTP message)"),
        ("charset", "str", "charset parameter of the Content-Type, as written"),
        ("disposition", "str", "Content-Disposition: attachment, inline or empty"),
        ("filename", "str", "file name, decoded (RFC 2231/2047); empty for most body parts"),
        ("content_id", "str", "Content-ID"),
        ("encoding", "str", "Content-Transfer-Encoding of the entity (base64, quoted-printable, 7bit...); http: "
                            "the Content-Encoding undone (gzip, br...)"),
        ("size", "int", "bytes after decoding (the transfer encoding; HTTP chunking and content coding)"),
        ("md5", "str", "md5 of those bytes"),
        ("sha1", "str", "sha1 of those bytes"),
        ("sha256", "str", "sha256 of those bytes"),
        ("is_attachment", "bool", "an attachment or inline file (the attachments table lists these); false for "
                                  "text body parts"),
        ("complete", "bool", "false when some of its bytes were not seen or not decoded: a gap, a part without "
                             "its closing boundary, an incomplete message, a limit; or none were (an attachment "
                             "that a webmail page only names: no hashes)"),
        ("http_seq", "int", "protocol http: the exchange that carried it (http.seq of the session)"),
        ("method", "str", "protocol http: request method"),
        ("host", "str", "protocol http: Host header"),
        ("uri", "str", "protocol http: request target"),
        ("status", "int", "protocol http: response status"),
    ],
    "credentials": [
        ("session_id", "int", "session"),
        ("protocol", "cat", "smtp, imap, pop3, http or socks (the proxy's own login)"),
        ("ts", "ts", "time the secret was sent"),
        ("mechanism", "str", "PLAIN, LOGIN, CRAM-MD5, XOAUTH2, OAUTHBEARER, USER/PASS, APOP, BASIC, BEARER, FORM; "
                             "SOCKS5 USERNAME/PASSWORD, SOCKS4 USERID (a user id, no secret)"),
        ("user", "str", "user name"),
        ("secret", "str", "password, token or response (masked under --redact)"),
        ("success", "bool", "the server accepted it; empty when no verdict was seen"),
        ("detail", "str", "mechanism details (CRAM-MD5 challenge, form field names)"),
        ("frame", "int", "the frame that completed the exchange (the server's verdict when seen): its number in its capture file (from 1, as Wireshark numbers the "
                         "frames of that file opened alone)"),
        ("file", "str", "the capture file that frame is in, as given on the command line ('-' for standard "
                        "input)"),
    ],
    "anomalies": [
        ("session_id", "int", "session (empty for capture-level anomalies)"),
        ("ts", "ts", "when"),
        ("side", "str", "client, server, or empty"),
        ("name", "str", "anomaly name (docs/anomalies.md lists them all)"),
        ("detail", "str", "what exactly"),
        ("frame", "int", "the frame it was noticed at (a connection closed at the end of the capture or when idle: its last frame; capture-file damage: the last frame read before it): its number in its capture file (from 1, as Wireshark numbers the "
                         "frames of that file opened alone)"),
        ("file", "str", "the capture file that frame is in, as given on the command line ('-' for standard "
                        "input)"),
    ],
    "http": [
        ("session_id", "int", "session"),
        ("ts", "ts", "time of the request"),
        ("method", "str", "request method"),
        ("host", "str", "Host header"),
        ("uri", "str", "request target"),
        ("version", "str", "HTTP version"),
        ("status", "int", "response status code"),
        ("reason", "str", "response reason phrase"),
        ("request_content_type", "str", "request Content-Type"),
        ("request_size", "int", "request body bytes after decoding"),
        ("response_content_type", "str", "response Content-Type"),
        ("response_size", "int", "response body bytes after decoding"),
        ("user_agent", "str", "User-Agent"),
        ("referer", "str", "Referer"),
        ("response_ts", "ts", "time of the response"),
        ("latency", "float", "seconds between request and response"),
        ("request_sha256", "str", "sha256 of the decoded request body"),
        ("response_sha256", "str", "sha256 of the decoded response body"),
        ("mail_action", "str", "webmail action recognised (login, list, read, send, upload, download, jmap:...)"),
        ("files", "dicts", "files in a multipart form: filename, content_type, size, hashes"),
        ("response_md5", "str", "md5 of the decoded response body (Zeek's files.log md5)"),
        ("response_filename", "str", "file name from the response's Content-Disposition"),
        ("upgrade", "str", "the connection left HTTP/1 here: connect, websocket, h2c..."),
        ("complete", "bool", "false when a gap, a limit or a decoding error cut a body"),
        ("seq", "int", "the exchange's number in its session (1, 2... in the order exchanges completed; the "
                       "request order for HTTP/1), the same as its row's seq in commands"),
        ("mailbox", "str", "webmail: the mailbox of the message the request reads or downloads (_mbox)"),
        ("uid", "int", "webmail: that message's IMAP UID (_uid)"),
        ("part", "str", "webmail attachment download: the IMAP part number of the file (_part)"),
        ("message_id", "str", "webmail: Message-ID of the message read or downloaded, from the webmail "
                              "server's IMAP fetch or the downloaded message itself"),
        ("frame", "int", "the frame that completed the exchange (the end of the response, or of the request when no response came): its number in its capture file (from 1, as Wireshark numbers the "
                         "frames of that file opened alone)"),
        ("file", "str", "the capture file that frame is in, as given on the command line ('-' for standard "
                        "input)"),
    ],
    "mailboxes": [
        ("session_id", "int", "session"),
        ("ts", "ts", "when it was seen"),
        ("protocol", "cat", "imap, pop3, or http (JMAP Mailbox/get)"),
        ("user", "str", "authenticated user"),
        ("mailbox", "str", "mailbox name (INBOX for POP3)"),
        ("action", "str", "select, exists, fetch, store, copy, move, expunge, append, stat, list, uidl, retr, dele..."),
        ("uidvalidity", "int", "UIDVALIDITY of the mailbox"),
        ("uid", "int", "message UID (POP3: empty; see detail for UIDL)"),
        ("seq", "int", "message sequence number"),
        ("count", "int", "message count (EXISTS, STAT)"),
        ("flags", "list", "message flags"),
        ("size", "int", "message size"),
        ("message_id", "str", "Message-ID when known"),
        ("detail", "str", "more (COPY target, UIDL id, ENVELOPE...)"),
        ("frame", "int", "the frame of the exchange that revealed it: its number in its capture file (from 1, as Wireshark numbers the "
                         "frames of that file opened alone)"),
        ("file", "str", "the capture file that frame is in, as given on the command line ('-' for standard "
                        "input)"),
    ],
    "events": [
        ("ts", "ts", "when it happened"),
        ("session_id", "int", "session (flow id); empty for capture-level events"),
        ("protocol", "cat", "protocol of the session (smtp, imap, pop3, http; smtps... for implicit TLS)"),
        ("client", "str", "client endpoint, ip:port ([v6]:port)"),
        ("server", "str", "server endpoint, ip:port"),
        ("event", "cat", "what happened: tcp_connect, tcp_refused, tcp_unanswered, greeting, tls_start, "
                         "auth_success, mail_from, rcpt_accepted, message_accepted, imap_fetch, pop3_retr, "
                         "webmail, tcp_close, anomaly... (docs/report.md lists them all)"),
        ("outcome", "cat", "ok, failed, deferred (temporary refusal), refused, unanswered, warning, or empty"),
        ("message_id", "str", "Message-ID of the message the event belongs to (SMTP envelope commands carry "
                              "the Message-ID of their transaction)"),
        ("description", "str", "one line saying what happened (never a secret)"),
        ("actor", "cat", "who acted: client or server (empty for connection-level events)"),
        ("client_ip", "str", "client address"),
        ("client_port", "int", "client port"),
        ("server_ip", "str", "server address"),
        ("server_port", "int", "server port"),
        ("source", "cat", "the table the event was derived from (flows, commands, messages, credentials, http, "
                          "sessions, anomalies)"),
        ("command_seq", "int", "the command (commands.seq) or HTTP exchange (http.seq) of the session the event "
                               "comes from: the command itself, or the one that carried the message"),
    ],
    "journeys": [
        ("journey_id", "int", "journey number from 1, in order of first appearance"),
        ("message_id", "str", "Message-ID of the message"),
        ("subject", "str", "Subject"),
        ("from", "str", "From header", "from_"),
        ("mail_from", "str", "SMTP envelope sender (first seen)"),
        ("rcpt_to", "list", "SMTP envelope recipients (all hops), else the To header"),
        ("match", "cat", "weakest link that grouped the message's records: message_id, body_sha256, sha256, "
                         "webmail_submission (a webmail send form joined to the SMTP submission its server made "
                         "within seconds: same subject, recipients and attachment hashes), envelope (sender, "
                         "recipients and subject within an hour: weaker), single (one record "
                         "without Message-ID); hops tied by other links say so in hops.match"),
        ("first_seen", "ts", "start of the first hop"),
        ("last_seen", "ts", "end of the last hop"),
        ("duration", "float", "seconds from first_seen to last_seen"),
        ("hops", "int", "hops seen on the wire (failed attempts included)"),
        ("failed_attempts", "int", "SMTP hops that did not hand the message over: refused or unanswered "
                                   "connections, 4xx/5xx replies, sessions closed early"),
        ("queue_time", "float", "seconds the message waited in mail servers' queues: from the end of the hop "
                                "that brought it to a server to the start of that server's successful relay "
                                "(retries included), summed over servers"),
        ("path", "str", "hosts in order of first visit (client and server of each successful hop)"),
        ("roles", "str", "the hops' roles in order, e.g. submission \u2192 delivery (2 attempts) \u2192 "
                         "retrieval"),
        ("sha256", "list", "distinct sha256 of the message bytes on the hops (each server adds headers)"),
        ("body_sha256", "str", "sha256 of the body when every copy has the same body"),
        ("received_hops", "int", "hops the Received headers of the most-travelled copy claim"),
        ("received_check", "cat", "Received headers vs the wire: agrees, differs (see received_notes), "
                                  "headers_only (no claimed hop is in the capture), no_headers, n/a"),
        ("received_notes", "list", "each disagreement between the headers and the wire"),
    ],
    "hops": [
        ("journey_id", "int", "the journey (journeys table)"),
        ("hop", "int", "position in the journey, from 1, in order of handover (end)"),
        ("message_id", "str", "Message-ID of the message"),
        ("role", "cat", "upload, webmail_send, submission, relay, delivery (the last server-to-server SMTP "
                        "hop), append, retrieval, transfer"),
        ("protocol", "cat", "smtp, imap, pop3 or http"),
        ("outcome", "cat", "accepted, deferred (4xx), rejected (5xx), no_reply, refused (SYN answered by RST), "
                           "unanswered (SYN only), aborted (closed before a message), retrieved, downloaded, "
                           "stored, sent, uploaded, failed, claimed (Received header only)"),
        ("attempt", "int", "SMTP: attempt number towards the same server (1 for the first try)"),
        ("start", "ts", "when the hop began: the connection's SYN for an SMTP session's first message (else its "
                        "MAIL FROM), the command or request otherwise"),
        ("end", "ts", "when the message was handed over: end of DATA/BDAT, end of the FETCH/RETR transfer, the "
                      "HTTP request (sending) or response (reading); the RST or last packet of a failed attempt"),
        ("latency", "float", "seconds from the previous hop's handover (end) to this one's: hops are in order "
                             "of handover, the one clock every hop has, so it is never negative (a webmail "
                             "server's IMAP fetch starts after the browser's request and ends before the page)"),
        ("duration", "float", "end - start in seconds"),
        ("client_ip", "str", "client address"),
        ("client_port", "int", "client port"),
        ("server_ip", "str", "server address"),
        ("server_port", "int", "server port"),
        ("session_id", "int", "session (flow id) of the hop"),
        ("queue_id", "str", "queue id the receiving server gave (SMTP \"queued as\"), or the id of a Received "
                            "header"),
        ("reply", "str", "the server's final reply (SMTP code and text, IMAP/POP3 status, HTTP status) or why "
                         "the attempt failed"),
        ("match", "cat", "how this hop was tied to the message: message_id, body_sha256, sha256, "
                         "webmail_submission (a webmail send form and its server's SMTP submission), envelope, "
                         "mailbox_uid, attachment_sha256, attempt (a failed attempt attributed by "
                         "sender, server and time), received (header only)"),
        ("direction", "cat", "direction of the message record (sent, retrieved, appended, uploaded, downloaded)"),
        ("user", "str", "authenticated user of the session"),
        ("tls", "bool", "the hop was inside TLS"),
        ("size", "int", "message bytes on this hop"),
        ("sha256", "str", "sha256 of the message bytes on this hop"),
        ("wire", "bool", "seen in the capture (false: only a Received header claims it)"),
        ("received", "str", "the Received header that describes this hop"),
        ("received_check", "str", "agrees, or what the header and the wire disagree on"),
        ("detail", "str", "envelope, command or request that carried the message"),
        ("command_seq", "int", "the command (commands.seq) or HTTP exchange (http.seq) of the session that "
                               "carried the message on this hop"),
    ],
}

#: Columns shown by default in terminal tables (all columns go to files).
TABLE_VIEWS = {
    "flows": ["flow_id", "client_ip", "client_port", "server_ip", "server_port", "start", "packets",
              "bytes_client", "bytes_server", "gaps", "protocol", "handshake_rtt", "close"],
    "sessions": ["session_id", "protocol", "client_ip", "server_ip", "server_port", "start", "helo",
                 "auth_user", "tls", "commands", "messages", "anomalies"],
    "commands": ["session_id", "ts", "tag", "command", "argument", "reply_code", "reply_text", "latency"],
    "messages": ["session_id", "ts", "protocol", "direction", "kind", "from", "to", "subject", "attachments",
                 "size", "complete"],
    "attachments": ["session_id", "message_id", "filename", "content_type", "size", "sha256"],
    "files": ["session_id", "ts", "protocol", "direction", "part", "filename", "content_type", "size", "sha256",
              "is_attachment"],
    "credentials": ["session_id", "protocol", "ts", "mechanism", "user", "secret", "success"],
    "anomalies": ["session_id", "ts", "side", "name", "detail"],
    "http": ["session_id", "ts", "method", "host", "uri", "status", "response_content_type", "response_size",
             "mail_action"],
    "mailboxes": ["session_id", "ts", "user", "mailbox", "action", "uid", "flags", "message_id"],
    "events": ["ts", "session_id", "protocol", "client", "server", "event", "outcome", "description"],
    "journeys": ["journey_id", "message_id", "subject", "first_seen", "hops", "failed_attempts", "queue_time",
                 "roles", "received_check"],
    "hops": ["journey_id", "hop", "role", "protocol", "attempt", "outcome", "end", "latency", "client_ip",
             "server_ip", "server_port", "session_id", "queue_id", "reply"],
}

# record attributes that are deliberately not columns
NOT_COLUMNS = {
    "Flow": {"merged_frame"},  # internal order of the merged reading (frame numbers per file are columns)
    "Message": {"raw", "entities"},  # entities: rows of the files table
    "HttpRequest": {"response_file"},  # a row of the files table
    "Attachment": {"data"},
    "Command": {"secret_at"},  # marks what maildissect.redact masks
    "Anomaly": {"secret_at"},
    "Session": set(),
}

ATTACHMENT_KEYS = ("filename", "content_type", "disposition", "size", "md5", "sha1", "sha256", "part",
                   "encoding", "content_id")


def _iso(ts):
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def _plain(value):
    """Nested records (attachments, Received) to JSON-ready dicts."""
    if dataclasses.is_dataclass(value):
        if type(value).__name__ == "Attachment":  # the keys of the nested attachment objects
            return {k: getattr(value, k) for k in ATTACHMENT_KEYS}
        out = {}
        for f in dataclasses.fields(value):
            if f.name == "data":
                continue
            v = getattr(value, f.name)
            key = f.name.rstrip("_")
            if key == "date" and isinstance(v, float):
                v = _iso(v)
            out[key] = v
        return out
    if isinstance(value, tuple) and len(value) == 2:
        return {"name": value[0], "value": value[1]}
    return value


def _column(kind: str, values: list):
    import pandas as pd
    if kind == "int":
        try:
            return pd.array(values, dtype="Int64")
        except OverflowError:
            # A number the peer declared (an IMAP literal of 10^30 bytes is "size") may not
            # fit in 64 bits: such a value is unknown (NA) rather than the end of the run.
            return pd.array([v if v is None or -(1 << 63) <= v < (1 << 63) else None for v in values],
                            dtype="Int64")
    if kind == "float":
        return pd.array(values, dtype="Float64")
    if kind == "bool":
        return pd.array(values, dtype="boolean")
    if kind == "str":
        return pd.array([None if v is None else str(v) for v in values], dtype="string")
    if kind == "cat":
        return pd.Categorical([None if v is None else str(v) for v in values])
    if kind == "ts":
        arr = pd.to_datetime(pd.Series([float("nan") if v is None else v for v in values], dtype="float64"),
                             unit="s", utc=True, errors="coerce")
        return arr.astype("datetime64[us, UTC]").array
    if kind == "list":
        return pd.array([list(v) if v else [] for v in values], dtype=object)
    if kind == "dicts":
        return pd.array([[_plain(x) for x in v] if v else [] for v in values], dtype=object)
    raise ValueError(kind)


def _iso_us(ts):
    """ISO 8601 UTC at the microsecond, as a ``ts`` column of :func:`frame` written to JSON gives it
    (the float is taken to nanoseconds as pandas does, then cut to microseconds)."""
    if ts is None or ts != ts:
        return None
    try:
        base = int(ts)
        ns = base * 1_000_000_000 + int(round(ts - base, 9) * 1e9)
        whole, us = divmod(ns // 1000, 1_000_000)
        return datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{us:06d}Z"
    except (OverflowError, OSError, ValueError):
        return None


def _json_value(kind: str, v):
    if kind == "ts":
        return _iso_us(v)
    if kind == "list":
        return list(v) if v else []
    if kind == "dicts":
        return [_plain(x) for x in v] if v else []
    if v is None:
        return None
    if kind == "int":
        return v if -(1 << 63) <= v < (1 << 63) else None
    if kind == "float":
        return None if v != v else float(v)
    if kind == "bool":
        return bool(v)
    return str(v)


def json_row(table: str, record) -> dict:
    """One record as the JSON object its table's row gives (``json_ready(frame(table, [record]))[0]``),
    without building a DataFrame: what ``live`` prints for each record as it comes."""
    out = {}
    for spec in SCHEMAS[table]:
        v = getattr(record, spec[3] if len(spec) > 3 else spec[0], None)
        if spec[1] == "ts" and v is not None and not -9e9 < v < 9e9:
            # a time pandas' nanoseconds cannot hold (a hostile Date header): its own conversion says
            from .output.files import json_ready
            return json_ready(frame(table, [record]))[0]
        out[spec[0]] = _json_value(spec[1], v)
    return out


def frame(table: str, records: list) -> pd.DataFrame:
    import pandas as pd
    """Build one table's DataFrame from its records (column by column, once)."""
    cols = {}
    for spec in SCHEMAS[table]:
        name, kind = spec[0], spec[1]
        attr = spec[3] if len(spec) > 3 else name
        cols[name] = _column(kind, [getattr(r, attr, None) for r in records])
    df = pd.DataFrame(cols, index=pd.RangeIndex(len(records)))
    df.attrs["table"] = table  # lets writers find the declared types (arrow_schema)
    return df


# nested columns ("dicts" kind): the keys of their objects, for typed Parquet columns
_DICT_STRUCTS = {
    "attachments": [(k, "int" if k == "size" else "str") for k in
                    ("filename", "content_type", "size", "md5", "sha1", "sha256", "disposition", "part",
                     "encoding", "content_id")],
    "received": [(k, "str") for k in ("from", "by", "with", "id", "for", "date", "raw")],
    "headers": [("name", "str"), ("value", "str")],
}
_DICT_STRUCTS["files"] = _DICT_STRUCTS["attachments"]


def arrow_schema(df: pd.DataFrame):
    """A pyarrow schema for a table's DataFrame from the declared column kinds, or None.

    Without it an empty table, or a list column that is empty on every row,
    would be written with Arrow's ``null`` type, which DuckDB and Spark read
    as untyped; with it every column keeps its type (timestamps in UTC,
    lists of strings, lists of structs, dictionary-encoded categories)
    whatever the rows hold.
    """
    import pyarrow as pa
    table = df.attrs.get("table")
    if table not in SCHEMAS:
        names = list(df.columns)
        table = next((t for t, cols in SCHEMAS.items() if [c[0] for c in cols] == names), None)
        if table is None:
            return None
    kinds = {spec[0]: spec[1] for spec in SCHEMAS[table]}
    scalar = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_(),
              "ts": pa.timestamp("us", tz="UTC"), "cat": pa.dictionary(pa.int32(), pa.string()),
              "list": pa.list_(pa.string())}
    fields = []
    for name in df.columns:
        kind = kinds.get(name)
        if kind is None:
            return None
        if kind == "dicts":
            keys = _DICT_STRUCTS.get(name)
            if keys is None:
                return None
            typ = pa.list_(pa.struct([(k, pa.int64() if t == "int" else pa.string()) for k, t in keys]))
        else:
            typ = scalar[kind]
        fields.append(pa.field(name, typ))
    return pa.schema(fields)


def file_rows(records) -> list:
    """The files table's rows: every entity of every message, then the files of HTTP
    exchanges that no message of the same exchange holds, in time order.

    A webmail upload or download that became a message (its form files, a Roundcube or
    JMAP attachment download) is listed once, with its message; an HTTP body that is a
    whole message (an .eml downloaded) is a file of its own besides the entities of the
    message read from it.
    """
    rows: list = []
    held: set = set()  # (session_id, exchange seq, sha256) of files that messages hold
    exchanges = {(r.session_id, r.seq): r for r in records.http if r.seq is not None}
    for m in sort_records("messages", records.messages):
        ex = exchanges.get((m.session_id, m.command_seq)) if m.protocol == "http" else None
        for a in message_files(m):
            rows.append(_FileRow.of_message(m, a, ex))
            if m.command_seq is not None and a.sha256:
                held.add((m.session_id, m.command_seq, a.sha256))
    sessions = {s.session_id: s for s in records.sessions}
    for r in sort_records("http", records.http):
        files = list(r.files)
        if r.response_file is not None:
            files.append(r.response_file)
        if not files:
            continue
        s = sessions.get(r.session_id)
        for a in files:
            if a.sha256 and (r.session_id, r.seq, a.sha256) in held:
                continue
            rows.append(_FileRow.of_http(r, s, a, a is not r.response_file))
    rows.sort(key=lambda x: (x.ts if x.ts is not None else 0.0, x.session_id))  # stable: part order kept
    return rows


def message_files(m) -> list:
    """The files of a message: its MIME entities, and attachments it names without MIME
    (a webmail page's list, a downloaded attachment), in part order."""
    entities = m.entities
    if not m.attachments:
        return entities
    if not entities:
        return m.attachments
    if len(m.attachments) > sum(1 for e in entities if e.is_attachment):
        known = {id(e) for e in entities}
        entities = entities + [a for a in m.attachments if id(a) not in known]
    return entities


class _FileRow:
    """One row of the files table (attributes named as its columns)."""

    # a: the Attachment itself (its bytes for extraction); missing: bytes known missing (Zeek's files.log)
    __slots__ = tuple(spec[3] if len(spec) > 3 else spec[0] for spec in SCHEMAS["files"]) + ("a", "missing")

    @classmethod
    def of_message(cls, m, a, ex=None) -> "_FileRow":
        row = cls()
        row.a = a
        for name in ("ts", "protocol", "session_id", "client_ip", "client_port", "server_ip", "server_port",
                     "direction", "message_index", "message_id", "from_", "to", "subject", "mailbox", "uid"):
            setattr(row, name, getattr(m, name))
        row.source = "message"
        row._file(a)
        # (a file that a webmail page only names has no hashes: its bytes were not seen)
        row.complete = a.complete and m.complete and bool(a.sha256)
        row.missing = 0 if row.complete else (m.missing_bytes or 0)
        row.http_seq = row.method = row.host = row.uri = row.status = None
        if m.protocol == "http":
            row.http_seq = m.command_seq
            if ex is not None:  # the exchange that carried it
                row.method, row.host, row.uri, row.status = ex.method, ex.host, ex.uri, ex.status
        return row

    @classmethod
    def of_http(cls, r, s, a, upload: bool) -> "_FileRow":
        row = cls()
        row.a = a
        row.ts = r.ts if upload or r.response_ts is None else r.response_ts
        row.protocol = "http"
        row.session_id = r.session_id
        for name in ("client_ip", "client_port", "server_ip", "server_port"):
            setattr(row, name, getattr(s, name) if s is not None else None)
        row.source = "http"
        row.direction = "uploaded" if upload else "downloaded"
        row.message_index = None
        row.message_id, row.mailbox, row.uid = r.message_id, r.mailbox, r.uid
        row.from_ = row.subject = None
        row.to = []
        row._file(a)
        if not upload and r.part and not a.part:
            row.part = r.part
        row.complete = a.complete
        row.missing = 0
        row.http_seq, row.method, row.host, row.uri, row.status = r.seq, r.method, r.host, r.uri, r.status
        return row

    def _file(self, a) -> None:
        for name in ("part", "content_type", "charset", "disposition", "filename", "content_id", "encoding",
                     "size", "md5", "sha1", "sha256", "is_attachment"):
            setattr(self, name, getattr(a, name))


def attachment_rows(messages: list) -> list:
    """Flatten message attachments into attachment-table rows."""
    rows = []
    for m in messages:
        for a in m.attachments:
            rows.append(_AttachmentRow(m, a))
    return rows


class _AttachmentRow:
    __slots__ = ("m", "a")

    def __init__(self, m, a):
        self.m, self.a = m, a

    def __getattr__(self, name):
        if name in ("session_id", "message_index", "protocol", "direction", "ts", "message_id", "frame", "file"):
            return getattr(self.m, name)
        return getattr(self.a, name)


def sort_records(table: str, records: list) -> list:
    """Deterministic order: by id for flows/sessions, else by time then session (stable)."""
    if table in ("flows",):
        return sorted(records, key=lambda r: r.flow_id)
    if table == "sessions":
        return sorted(records, key=lambda r: r.session_id)
    if table in ("commands", "messages", "credentials", "http", "mailboxes"):
        return sorted(records, key=lambda r: (r.ts if r.ts is not None else 0.0, r.session_id))
    if table == "anomalies":
        return sorted(records, key=lambda r: (r.ts if r.ts is not None else float("-inf"),
                                              -1 if r.session_id is None else r.session_id))
    return records


#: A paragraph under a table's heading in docs/data.md.
TABLE_NOTES = {
    "attachments": "The view of the files table's rows that are attachments of a message (`is_attachment`), "
                   "with the message's keys: the same objects, the same hashes.",
    "files": "One row per file, as Zeek's files.log sees them: every MIME leaf entity of every message (text and "
             "HTML body parts, inline images, attachments; a forwarded message that is an attachment, and the "
             "entities inside it below its part), then every file carried over HTTP that no message holds "
             "(multipart/form-data uploads, request bodies with a file name, responses with a "
             "Content-Disposition, response bodies that are not HTML, JSON, JavaScript or CSS). Sizes and hashes "
             "are of the decoded bytes. A webmail upload or attachment download that became a message is listed "
             "once, with its message (mailbox, uid, part, Message-ID). `maildissect files --hash H` finds a hash; "
             "`maildissect extract` writes the files (docs/mime.md, docs/protocols/http.md).",
}


def markdown() -> str:
    """docs/data.md: every column of every table."""
    lines = ["# Data dictionary", "",
             "Every table maildissect produces, column by column. The same names are used in DataFrames "
             "(`Analysis.<table>`), JSON lines, CSV, Parquet and the HTML report. Timestamps are tz-aware "
             "UTC datetimes in DataFrames and ISO 8601 UTC strings in JSON/CSV. Generated from "
             "`maildissect/frames.py` (`python -m maildissect.frames > docs/data.md`).", ""]
    kinds = {"int": "integer", "float": "float", "str": "string", "bool": "boolean", "ts": "timestamp",
             "cat": "category", "list": "list of strings", "dicts": "list of objects"}
    for table, cols in SCHEMAS.items():
        lines += [f"## {table}", ""]
        if table in TABLE_NOTES:
            lines += [TABLE_NOTES[table], ""]
        lines += ["| column | type | meaning |", "|---|---|---|"]
        for spec in cols:
            lines.append(f"| `{spec[0]}` | {kinds[spec[1]]} | {spec[2]} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
