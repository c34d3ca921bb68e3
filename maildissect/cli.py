"""The ``maildissect`` command line: parse options, call the API, render.

No analysis logic lives here; every command is a thin layer over
:func:`maildissect.analyze` and the output modules.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections import defaultdict
from pathlib import Path

import click

from . import __version__
from .capture.files import CaptureError

TABLE_HELP = {
    "flows": "TCP connections: endpoints, packets, bytes and sha256 each way, gaps, handshake RTT, close.",
    "sessions": "Mail sessions: protocol, endpoints, HELO, authenticated user, TLS, counts.",
    "messages": "Messages sent, retrieved, appended, uploaded or downloaded, with headers and attachments.",
    "attachments": "Attachments of every message, with decoded names and md5/sha1/sha256 (the attachments "
                   "among `files`).",
    "credentials": "User names and secrets seen on the wire, with the server's verdict.",
    "commands": "Every command with its reply code, reply text and latency.",
    "anomalies": "Broken, truncated or suspicious input (like Zeek's weird.log).",
    "http": "HTTP requests and responses, with the webmail action recognised.",
    "mailboxes": "What IMAP/POP3 sessions reveal of mailboxes: UIDVALIDITY, UIDs, flags, changes.",
}

FORMAT_CHOICE = click.Choice(["table", "jsonl", "csv", "parquet"])


class UserError(Exception):
    """An error worth one line to the user (exit status 1)."""


def _fail(message: str, status: int = 1):
    from .output.terminal import echo_err
    echo_err(f"maildissect: error: {message}")  # (cleaned: the message may quote a file name or data)
    sys.exit(status)


def handle_errors(fn):
    """One-line errors instead of tracebacks; exit 1 for bad input."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .analysis import AnalysisError
        from .filters import FilterError
        from .output.extract import ExtractError
        try:
            return fn(*args, **kwargs)
        except FilterError as e:  # a usage error: exit 2, naming the option
            _fail(str(e), 2)
        except (CaptureError, ExtractError, UserError, AnalysisError) as e:
            _fail(str(e))
        except BrokenPipeError:
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # a bug: say so in one line; the traceback on request
            if os.environ.get("MAILDISSECT_DEBUG"):
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (set MAILDISSECT_DEBUG=1 for the traceback)")
    return wrapper


def _parse_pairs(values, what: str, convert=str) -> dict:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise click.BadParameter(f"expected NAME=VALUE, got {v!r}", param_hint=what)
        try:
            out[key.strip()] = convert(val.strip())
        except ValueError:
            raise click.BadParameter(f"bad value in {v!r}", param_hint=what) from None
    return out


def _number(text: str):
    text = text.replace("_", "")
    mult = 1
    for suffix, m in (("k", 1024), ("K", 1024), ("M", 1024 ** 2), ("G", 1024 ** 3)):
        if text.endswith(suffix):
            text, mult = text[:-1], m
            break
    return float(text) * mult if "." in text else int(text) * mult


def _remember_keylog(ctx, param, value):
    # Kept in the context rather than passed to every command: run_analysis reads it.
    if value:
        ctx.meta["maildissect.keylog"] = list(value)
    return value


def analysis_options(fn):
    """Options shared by every command that analyses captures."""
    from .parallel import default_jobs
    if fn.__name__ != "live":  # (live has its own --keylog: the file may not exist yet)
        fn = click.option("--keylog", type=click.Path(exists=True, dir_okay=False), multiple=True, metavar="FILE",
                          expose_value=False, callback=_remember_keylog,
                          help="Decrypt TLS with this NSS key log (SSLKEYLOGFILE format) through tshark: mail "
                               "inside STARTTLS and implicit TLS is dissected like plaintext (one process; "
                               "docs/protocols/tls.md). Repeatable: every key of every file is used. Key logs "
                               "inside a pcapng capture are used without this option.")(fn)
    fn = click.option("-j", "--jobs", type=click.IntRange(1, 256), default=default_jobs(), show_default=True,
                      help="Processes to use (connections are split between them; results are identical). "
                           "Small captures use one.")(fn)
    fn = click.option("--port", "ports", multiple=True, metavar="PORT=PROTO",
                      help="Treat a server port as a protocol (smtp, imap, pop3, http, socks; smtps/imaps/"
                           "pop3s/https for implicit TLS). Repeatable.")(fn)
    fn = click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE",
                      help="Override a limit (docs/limits.md), e.g. --limit max_line=1M. Repeatable.")(fn)
    fn = click.option("--redact", is_flag=True,
                      help="Mask passwords, tokens, cookies and SASL responses in every output (in the records "
                           "themselves; docs/robustness.md lists what).")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress bar and no warnings on stderr.")(fn)
    return fn


def output_options(fn):
    fn = click.option("--csv-raw", is_flag=True,
                      help="CSV: write text cells as they are (by default a cell starting with = + - @ TAB or "
                           "CR gets a leading ' so that spreadsheets do not run it).")(fn)
    fn = click.option("--wide", is_flag=True,
                      help="Table: every column with whole values, however wide (on a terminal the table is "
                           "otherwise fitted to its width).")(fn)
    fn = click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default=None,
                      help="Write to FILE instead of standard output.")(fn)
    fn = click.option("-f", "--format", "fmt", type=FORMAT_CHOICE, default="table", show_default=True,
                      help="Output format.")(fn)
    return fn


def filter_options(fn=None, *, mail: bool = True, where: bool = True):
    """The row filters (maildissect.filters): ``mail`` adds --from/--to/--subject, ``where`` --where."""
    if fn is None:
        return functools.partial(filter_options, mail=mail, where=where)
    if where:
        fn = click.option("--where", default=None, metavar="EXPR",
                          help="Keep rows where this pandas expression over the table's columns is true, e.g. "
                               "\"size > 1e6 and protocol == 'smtp'\" (docs/cli.md: what it accepts).")(fn)
    fn = click.option("--server", "server", multiple=True, metavar="IP[/BITS]",
                      help="The server end is this address or network (IPv4 or IPv6). Repeatable.")(fn)
    fn = click.option("--client", "client", multiple=True, metavar="IP[/BITS]",
                      help="The client end is this address or network. Repeatable.")(fn)
    fn = click.option("--host", "host", multiple=True, metavar="IP[/BITS]",
                      help="Either end of the connection is this address or network. Repeatable.")(fn)
    fn = click.option("--until", default=None, metavar="TIME",
                      help="Only what happened at or before TIME (ISO 8601, UTC unless a zone is given, or "
                           "epoch seconds; capture time).")(fn)
    fn = click.option("--since", default=None, metavar="TIME",
                      help="Only what happened at or after TIME (ISO 8601 or epoch seconds).")(fn)
    fn = click.option("--session", "session_id", type=int, default=None, help="Only this session (flow id).")(fn)
    if mail:
        fn = click.option("--subject", default=None,
                          help="Rows of messages whose Subject contains TEXT (case-insensitive; docs/cli.md: what "
                               "each table keeps).")(fn)
        fn = click.option("--to", "to_", default=None,
                          help="Rows of messages with a recipient (To, Cc, Bcc, RCPT TO) containing TEXT.")(fn)
        fn = click.option("--from", "from_", default=None,
                          help="Rows of messages whose sender (From, Sender, MAIL FROM) contains TEXT.")(fn)
    fn = click.option("--protocol", type=click.Choice(["smtp", "imap", "pop3", "http", "tls", "socks"]), default=None,
                      help="Only rows of sessions of this protocol.")(fn)
    return fn


def criteria_of(table: str, protocol=None, session_id=None, from_=None, to_=None, subject=None, since=None,
                until=None, host=(), client=(), server=(), where=None):
    """The filter options of a command as checked :class:`maildissect.filters.Criteria` for ``table``
    (a bad value or a filter the table cannot answer stops the command before any analysis)."""
    from .filters import Criteria, check
    return check(table, Criteria(protocol=protocol, session=session_id, from_=from_, to=to_, subject=subject,
                                 since=since, until=until, host=tuple(host), client=tuple(client),
                                 server=tuple(server), where=where))


def bundled_capture() -> str | None:
    """The sample capture shipped with maildissect (for `maildissect analyze` with no argument)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "captures" / "journey.pcap", here / "data" / "journey.pcap"):
        if candidate.is_file():
            return str(candidate)
    return None


def _progress_callback(quiet: bool):
    """A rich progress bar on stderr when it is a terminal."""
    if quiet or not sys.stderr.isatty():
        return None, None
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from .output.terminal import make_console
    # the console reads no markup (output/terminal.py), so the columns say theirs explicitly
    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=make_console(stderr=True),
                        transient=True)
    task = progress.add_task("reading", total=None)

    def update(done, total):
        progress.update(task, completed=done, total=total or None)
    return progress, update


def _port_map(ports) -> dict[int, str]:
    """--port PORT=PROTOCOL options as {port: protocol}, checked."""
    port_map = {}
    for k, v in _parse_pairs(ports, "--port").items():
        if not (k.isascii() and k.isdigit()) or not 0 < int(k) < 65536:  # (isdigit alone accepts '²')
            raise click.BadParameter(f"bad port {k!r}", param_hint="--port")
        from .protocols.detect import parse_name
        if parse_name(v)[0] not in ("smtp", "imap", "pop3", "http", "tls", "socks"):
            raise click.BadParameter(f"unknown protocol {v!r}", param_hint="--port")
        port_map[int(k)] = v
    return port_map


def run_analysis(captures, *, quiet=False, redact=False, limits=(), ports=(), keep_bodies=False,
                 message_hook=None, dissect=True, jobs=1, scheduler=None, keylog=None, file_hook=None):
    """Parse the shared options and run :func:`maildissect.analyze` with a progress bar.

    ``keylog`` defaults to the ``--keylog`` option of the running command.
    """
    from .analysis import analyze
    if keylog is None:
        ctx = click.get_current_context(silent=True)
        keylog = ctx.meta.get("maildissect.keylog") if ctx is not None else None
    lim = _parse_pairs(limits, "--limit", _number)
    port_map = _port_map(ports)
    try:
        from .config import Limits
        Limits().updated(**lim)
    except (ValueError, TypeError) as e:
        raise click.BadParameter(str(e), param_hint="--limit") from None
    progress, update = _progress_callback(quiet)
    if scheduler is not None:
        progress = update = None  # the work happens elsewhere
    try:
        if progress is not None:
            progress.start()
        result = analyze(list(captures), limits=lim, progress=update, redact=redact, ports=port_map,
                         keep_bodies=keep_bodies, message_hook=message_hook, dissect=dissect, jobs=jobs,
                         scheduler=scheduler, keylog=keylog, file_hook=file_hook)
    finally:
        if progress is not None:
            progress.stop()
    if not quiet:
        warn_capture_problems(result)
    return result


def warn_capture_problems(result) -> None:
    """Capture-level damage (truncated files, cut packets) is said on stderr."""
    from .output.summary import unread_tls
    from .output.terminal import warn
    for a in result.records.anomalies:
        if a.session_id is None and (a.name.startswith("capture_") or a.name.startswith("ip_fragment_table")):
            warn(f"{a.name}: {a.detail}")
    if "tls_decrypted" in result.stats:
        n, size = unread_tls(result.records.sessions)
        if n:
            warn(f"{n} TLS session{'s' if n != 1 else ''} ({size:,} bytes) stayed encrypted: "
                 "the key logs hold no keys for them")


def emit_table(df, table: str, fmt: str, output: str | None, title: str | None = None, wide: bool = False,
               csv_raw: bool = False) -> None:
    """Write a table in the chosen format (a table fitted to the terminal by default)."""
    from .output import files
    if fmt == "table":
        with screen_for(output, wide) as screen:
            from .output.tables import render
            render(df, table, screen, title=title)
        return
    if fmt == "parquet" and output in (None, "-") and sys.stdout.isatty():
        # binary, with the capture's strings in it (escapes a terminal would obey)
        raise UserError("parquet is binary: write it with -o FILE or into a pipe, not to a terminal")
    files.write(df, fmt, output, csv_raw=csv_raw)


@contextlib.contextmanager
def screen_for(output: str | None, wide: bool = False):
    """The Screen that terminal output goes to: stdout, or the file ``output`` (whole values)."""
    from .output.tables import Screen
    if output and output != "-":
        try:
            f = open(output, "w", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {output}: {e.strerror or e}") from None
        with f:
            yield Screen(f, wide=wide)
    else:
        yield Screen(wide=wide)


# ---------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="maildissect")
def cli():
    """What mail went over this wire?

    maildissect reads pcap/pcapng captures, reassembles TCP streams and parses
    SMTP, IMAP, POP3 and HTTP webmail into sessions, commands, messages,
    attachments and credentials.

    \b
    Start here:
      maildissect analyze                    # the bundled sample capture
      maildissect analyze mail.pcap          # a summary of your capture
      maildissect messages mail.pcap -f jsonl
      maildissect extract mail.pcap -o out/  # .eml files and attachments
      maildissect files mail.pcap --hash 44d88612  # where a file was seen
      maildissect flows mail.pcap            # every TCP connection
      maildissect follow mail.pcap --flow 3  # one conversation's bytes

    Every listing command takes several captures (merged in time order, '-'
    for stdin, .gz accepted) and --format table|jsonl|csv|parquet with -o FILE.
    Docs: docs/ in the source tree (data.md explains every column).
    """


def _listing_command(table: str):
    @click.argument("captures", nargs=-1, required=True, type=click.Path(allow_dash=True))
    @output_options
    @filter_options
    @analysis_options
    @handle_errors
    def command(captures, fmt, output, wide, csv_raw, quiet, redact, limits, ports, jobs, **filters):
        from .filters import select_frame
        crit = criteria_of(table, **filters)
        # the flows table needs no dissection, unless a question about mail asks which sessions carried it
        dissect = table != "flows" or crit.mail()
        if not dissect and click.get_current_context().get_parameter_source("jobs").name == "DEFAULT":
            jobs = 1  # without dissection, reading dominates and one process is fastest
        result = run_analysis(captures, quiet=quiet, redact=redact, limits=limits, ports=ports, dissect=dissect,
                              jobs=jobs)
        df = select_frame(result.table(table), table, result.records, crit)
        emit_table(df, table, fmt, output, wide=wide, csv_raw=csv_raw)
    command.__doc__ = TABLE_HELP[table] + "\n\nColumns are described in docs/data.md."
    return cli.command(table, help=command.__doc__)(command)


for _table in TABLE_HELP:
    _listing_command(_table)


#: The columns of `files --hash` on a terminal: where the file was seen.
WHERE_SEEN = ["ts", "protocol", "session_id", "client_ip", "server_ip", "direction", "from", "to", "subject",
              "message_id", "method", "host", "uri", "part", "filename", "size", "sha256"]


def _hash_prefix(ctx, param, value):
    if value is None:
        return None
    text = value.strip().lower()
    if not text or len(text) > 64 or any(c not in "0123456789abcdef" for c in text):
        raise click.BadParameter("expected an md5, sha1 or sha256 in hex (a prefix is enough)")
    return text


def match_hash(df, prefix: str):
    """Rows of the files table whose md5, sha1 or sha256 starts with ``prefix`` (lower-case hex)."""
    import pandas as pd
    mask = pd.Series(False, index=df.index)
    for col in ("md5", "sha1", "sha256"):
        mask |= df[col].fillna("").str.startswith(prefix)
    return df[mask].reset_index(drop=True)


@cli.command("files")
@click.argument("captures", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("--hash", "hash_", default=None, metavar="HEX", callback=_hash_prefix,
              help="Only files whose md5, sha1 or sha256 starts with HEX (case-insensitive): where a hash was "
                   "seen, with its message or request, session, endpoints and time.")
@output_options
@filter_options
@analysis_options
@handle_errors
def files_command(captures, hash_, fmt, output, wide, csv_raw, quiet, redact, limits, ports, jobs, **filters):
    """Every file: each MIME entity of every message (body parts, attachments, forwarded messages) and
    every file carried over HTTP, with md5/sha1/sha256 of the decoded bytes.

    Columns are described in docs/data.md (files).
    """
    from .filters import select_frame
    crit = criteria_of("files", **filters)
    result = run_analysis(captures, quiet=quiet, redact=redact, limits=limits, ports=ports, jobs=jobs)
    df = select_frame(result.table("files"), "files", result.records, crit)
    if hash_ is not None:
        df = match_hash(df, hash_)
        if fmt == "table":
            with screen_for(output, wide) as screen:
                from .output.tables import render
                render(df, "files", screen, columns=WHERE_SEEN)
            return
    emit_table(df, "files", fmt, output, wide=wide, csv_raw=csv_raw)


@cli.command()
@click.argument("captures", nargs=-1, type=click.Path(allow_dash=True))
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on a Dask cluster (tcp://HOST:8786), or 'local' for a local one (docs/scale.md).")
@click.option("--export-dir", type=click.Path(file_okay=False), default=None,
              help="Also write every table as Parquet into this directory.")
@click.option("--wide", is_flag=True, help="Every column with whole values, however wide (on a terminal the "
                                           "tables are otherwise fitted to its width).")
@analysis_options
@handle_errors
def analyze(captures, scheduler, export_dir, wide, quiet, redact, limits, ports, jobs):
    """A readable summary of captures: protocols, sessions, messages, credentials, anomalies.

    With no CAPTURE, analyses the bundled sample capture (captures/journey.pcap).
    With --scheduler the work is spread over a Dask cluster: each file is
    decoded where it is read, connections (even across rotated files) are
    reassembled and dissected by flow group, and --export-dir receives the
    tables as a Parquet dataset.
    """
    if not captures:
        sample = bundled_capture()
        if sample is None:
            raise UserError("no capture given and the bundled sample capture is missing")
        if not quiet:
            from .output.terminal import echo_err
            echo_err(f"Analysing the bundled sample capture {sample}")
        captures = (sample,)
    result = run_analysis(captures, quiet=quiet, redact=redact, limits=limits, ports=ports, jobs=jobs,
                          scheduler=scheduler)
    if export_dir:
        write_tables(result, export_dir, "parquet")
    from .output.summary import print_summary
    from .output.tables import Screen
    print_summary(result, Screen(wide=wide))


@cli.command()
@click.argument("capture", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("--flow", "flow_id", type=int, required=True, help="Flow id (from `maildissect flows`).")
@click.option("-f", "--format", "fmt", type=click.Choice(["ascii", "hex", "raw"]), default="ascii",
              show_default=True, help="ascii and hex as tshark -z follow prints them; raw writes the bytes.")
@click.option("--side", type=click.Choice(["client", "server", "both"]), default="both", show_default=True,
              help="Which direction to show.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write to FILE instead of standard output.")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE", help="Override a limit.")
@click.option("--keylog", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="Show the TLS part decrypted with this NSS key log (SSLKEYLOGFILE), like Wireshark's Follow "
                   "TLS Stream; needs tshark (docs/protocols/tls.md).")
@handle_errors
def follow(capture, flow_id, fmt, side, output, limits, keylog):
    """Show one TCP conversation's bytes, like Wireshark's Follow TCP Stream.

    Gaps (bytes never captured) are shown as [N bytes missing]; the client's
    bytes are flush left and the server's indented, as tshark prints them.
    With --keylog the conversation is shown decrypted (Follow TLS Stream):
    each TLS record's plaintext in its place, and the plaintext sent before a
    STARTTLS as it was.
    """
    from .config import Limits
    from .follow import Formatter, follow as follow_flow
    try:
        lim = Limits().updated(**_parse_pairs(limits, "--limit", _number))
    except (ValueError, TypeError) as e:
        raise click.BadParameter(str(e), param_hint="--limit") from None
    decryption = None
    if keylog is not None:
        from .decrypt import MISSING_TSHARK, DecryptError, Decryption, find_tshark
        if find_tshark() is None:
            raise UserError(MISSING_TSHARK)
        if "-" in capture:
            raise UserError("follow --keylog reads the capture twice (tshark decrypts it): give a file, not '-'")
        from .capture.files import CaptureReader
        for p in capture:  # a file that is not a capture: our own message, before tshark's
            CaptureReader(p).close()
        try:
            decryption = Decryption.run(list(capture), keylog)
        except DecryptError as e:
            raise UserError(str(e)) from None
    if fmt == "raw" and output is None and sys.stdout.isatty():
        # the connection's bytes as they are would be obeyed by the terminal (escapes, OSC 8 links);
        # as curl does, a terminal gets them only when asked by name (-o -)
        raise UserError("follow -f raw writes the connection's bytes as they are: not to a terminal "
                        "(use -o FILE, a pipe, or -o - to insist)")
    out = sys.stdout if output in (None, "-") else open(output, "w" if fmt != "raw" else "wb")
    try:
        if fmt == "raw":
            binary = out.buffer if out is sys.stdout else out
            fmtr = Formatter("raw", side, write_bytes=binary.write)
        else:
            tty = out is sys.stdout and sys.stdout.isatty()
            fmtr = Formatter(fmt, side, write_text=out.write, color=tty, terminal=tty)
        flow = follow_flow(list(capture), flow_id, fmtr.event, lim, on_flow=fmtr.header, decryption=decryption)
        if flow is None:
            raise UserError(f"no flow {flow_id} in the capture (see `maildissect flows`)")
        fmtr.footer()
        if decryption is not None and flow.protocol != "tls":
            from .output.terminal import warn
            warn(f"no key in the key log decrypts flow {flow_id}: its bytes are shown as captured")
    finally:
        if out is not sys.stdout:
            out.close()
        if decryption is not None:
            decryption.close()


@cli.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("-o", "--output", "directory", type=click.Path(file_okay=False), required=True,
              help="Directory to write into (created if missing).")
@click.option("--overwrite", is_flag=True, help="Replace files that already exist (default: keep them and "
                                                "write a numbered variant).")
@click.option("--no-attachments", is_flag=True, help="Write .eml files only (no attachments, no HTTP files).")
@click.option("--bodies", is_flag=True, help="Also write each message's text body parts (decoded) into "
                                             "DIR/bodies/.")
@click.option("--csv-raw", is_flag=True, help="index.csv: write text cells as they are (by default a cell "
                                              "starting with = + - @ TAB or CR gets a leading ').")
@filter_options(where=False)
@analysis_options
@handle_errors
def extract(captures, directory, overwrite, no_attachments, bodies, csv_raw, quiet, redact, limits, ports, jobs,
            **filters):
    """Write every message as .eml (exact bytes as transferred), its attachments and the files carried over HTTP.

    Layout: DIR/messages/*.eml, DIR/attachments/*, DIR/files/* (HTTP uploads and downloads),
    DIR/bodies/* (with --bodies; identical files written once) and DIR/index.csv: one row per
    file with its size, md5, sha1, sha256 and where it came from (the message, or the HTTP
    request). Names are sanitised; nothing is written outside DIR and existing files are not
    overwritten unless --overwrite. A file larger than the limit max_extract_size is hashed
    but not written.
    """
    from .filters import message_predicate, request_predicate
    from .output.extract import Extractor
    crit = criteria_of("messages", **filters)
    keep = message_predicate(crit)
    keep_request = request_predicate(crit)
    ext = Extractor(directory, overwrite=overwrite, attachments=not no_attachments, csv_raw=csv_raw,
                    bodies=bodies, http=not no_attachments)

    def hook(msg):
        if keep(msg):
            ext(msg)

    def file_hook(req, session):
        if keep_request(req, session):
            ext.http(req)
    try:
        result = run_analysis(captures, quiet=quiet, redact=redact, limits=limits, ports=ports, keep_bodies=True,
                              message_hook=hook, file_hook=file_hook)
        index = ext.write_index(result.records)
    finally:
        ext.close()
    if not quiet:
        from .output.terminal import echo_err, warn
        echo_err(f"{ext.messages} messages, {ext.written} files written to {directory} (index: {index})")
        for s in ext.skipped:
            warn(f"skipped {s}")


@cli.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("-o", "--output", "directory", type=click.Path(file_okay=False), required=True,
              help="Directory to write the tables into.")
@click.option("-f", "--format", "fmt", type=click.Choice(["parquet", "csv", "jsonl", "zeek", "zeek-json"]),
              default="parquet", show_default=True,
              help="File format of the tables; zeek/zeek-json write Zeek logs instead (conn, smtp, files, http, "
                   "ssl, weird, pop3 and imap .log; docs/report.md).")
@click.option("--csv-raw", is_flag=True, help="CSV: write text cells as they are (by default a cell starting "
                                              "with = + - @ TAB or CR gets a leading ').")
@analysis_options
@handle_errors
def export(captures, directory, fmt, csv_raw, quiet, redact, limits, ports, jobs):
    """Write every table (flows, sessions, messages, ...) as files in a directory.

    With --format zeek the directory receives Zeek-compatible TSV logs that
    zeek-cut and Zeek tooling read; --format zeek-json writes them as Zeek's
    JSON logs.
    """
    result = run_analysis(captures, quiet=quiet, redact=redact, limits=limits, ports=ports, jobs=jobs)
    if fmt in ("zeek", "zeek-json"):
        from .output.zeek import write_logs
        try:
            paths = write_logs(result, directory, fmt, captures=list(captures))
        except OSError as e:
            raise UserError(f"cannot write to {directory}: {e.strerror or e}") from None
        if not quiet:
            from .output.terminal import echo_err
            echo_err(f"{len(paths)} Zeek logs written to {directory}")
        return
    n = write_tables(result, directory, fmt, csv_raw=csv_raw)
    if not quiet:
        from .output.terminal import echo_err
        echo_err(f"{n} tables written to {directory}")


@cli.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("--message-id", "message_id", default=None,
              help="Only the events of this message (brackets optional; a substring matches too), with the "
                   "connections that carried it or tried to.")
@output_options
@filter_options(mail=False)
@analysis_options
@handle_errors
def timeline(captures, message_id, fmt, output, wide, csv_raw, quiet, redact, limits, ports, jobs, **filters):
    """What happened when: one line per event across every protocol.

    Connection attempts (refused, unanswered), greetings, TLS, authentication,
    envelopes, each message's fate (queued with its id, deferred, rejected),
    IMAP/POP3 retrievals, webmail actions, closes and anomalies. Columns and
    event names: docs/data.md (events) and docs/report.md.
    """
    from dataclasses import replace

    from .filters import select_frame
    from .timeline import filter_events
    from . import frames
    crit = criteria_of("events", **filters)
    session_id = crit.session
    result = run_analysis(captures, quiet=quiet, redact=redact, limits=limits, ports=ports, jobs=jobs)
    events = result.event_records
    if message_id is not None or session_id is not None:
        sessions = None
        if message_id:
            found = result.journey_records.find(message_id)
            if not found:
                raise UserError(f"no message with Message-ID {message_id!r} (see `maildissect journeys`)")
            sessions = result.journey_records.sessions_of(j.journey_id for j in found)
        events = filter_events(events, message_id=message_id, session_id=session_id,
                               sessions_of_message=sessions)
    # (--session was applied by filter_events, with the connections a message's events need)
    df = select_frame(frames.frame("events", events), "events", result.records, replace(crit, session=None))
    emit_table(df, "events", fmt, output, wide=wide, csv_raw=csv_raw)


@cli.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("--message-id", "message_id", default=None,
              help="Only this message (brackets optional; a substring matches too).")
@click.option("--summary", is_flag=True,
              help="One row per message (the journeys table) instead of one row per hop.")
@click.option("--since", default=None, metavar="TIME", help="Only hops (journeys with --summary) active at or "
                                                            "after TIME (ISO 8601 or epoch seconds).")
@click.option("--until", default=None, metavar="TIME", help="Only hops (journeys) active at or before TIME.")
@click.option("--where", default=None, metavar="EXPR",
              help="Keep hops (journeys with --summary) where this expression over their columns is true "
                   "(docs/cli.md).")
@output_options
@analysis_options
@handle_errors
def journeys(captures, message_id, summary, since, until, where, fmt, output, wide, csv_raw, quiet, redact, limits,
             ports, jobs):
    """Follow each message across hops and protocols.

    Submission, relay and delivery (with refused or deferred attempts and the
    time spent in queues), then retrieval by IMAP, POP3 or webmail; the
    Received headers are checked against the hops on the wire. The terminal
    view shows each journey with its hops; other formats write the hops table
    (or the journeys table with --summary). Columns: docs/data.md.
    """
    from .filters import select_frame
    table = "journeys" if summary else "hops"
    crit = criteria_of(table, since=since, until=until, where=where)
    result = run_analysis(captures, quiet=quiet, redact=redact, limits=limits, ports=ports, jobs=jobs)
    jr = result.journey_records
    ids = None
    if message_id:
        found = jr.find(message_id)
        if not found:
            raise UserError(f"no message with Message-ID {message_id!r}")
        ids = {j.journey_id for j in found}
    df = result.table(table)
    if ids is not None:
        df = df[df["journey_id"].isin(ids)].reset_index(drop=True)
    if crit.given():
        df = select_frame(df, table, result.records, crit)
        kept = set(df["journey_id"].tolist())
        ids = kept if ids is None else ids & kept
    if fmt != "table" or summary:
        emit_table(df, table, fmt, output, wide=wide, csv_raw=csv_raw)
        return
    from rich.text import Text

    from .correlate import journey_title
    from .output.tables import TableView, render_rows
    from .output.terminal import assemble
    with screen_for(output, wide) as screen:
        shown = [j for j in jr.journeys if ids is None or j.journey_id in ids]
        view = TableView(df, "hops")
        rows_of = defaultdict(list)  # journey -> positions of its hops in the table
        for i, jid in enumerate(df["journey_id"].tolist() if len(df) else []):
            rows_of[int(jid)].append(i)
        for j in shown:
            render_rows(view, rows_of.get(j.journey_id, []), screen, title=journey_title(j))
            for note in j.received_notes:
                screen.line(assemble("  ", ("Received:", "yellow"), " ", note))
        if not shown:
            screen.line(Text("no messages", style="dim"))


@cli.command()
@click.argument("captures", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The HTML file to write.")
@click.option("--show-secrets", is_flag=True,
              help="Show passwords and tokens (the report masks them by default, as --redact does; "
                   "--redact wins).")
@click.option("--ladders", "max_ladders", type=click.IntRange(0, 500), default=25, show_default=True,
              help="Draw ladder diagrams for at most this many sessions.")
@click.option("--title", default=None, help="Title of the report (default: the capture file names).")
@analysis_options
@handle_errors
def report(captures, output, show_secrets, max_ladders, title, quiet, redact, limits, ports, jobs):
    """One self-contained HTML report: overview, timeline, journeys, ladder diagrams, tables.

    The file works offline (plotly.js and styles are inlined), prints, and
    holds the timeline of every session, each message's journey across
    hosts, a ladder (sequence) diagram per session from SYN to FIN, and
    sortable tables of sessions, messages, attachments, credentials and
    anomalies. docs/report.md describes it.
    """
    from .output.report import write_report
    result = run_analysis(captures, quiet=quiet, redact=redact, limits=limits, ports=ports, jobs=jobs)
    try:
        info = write_report(result, output, captures=list(captures), show_secrets=show_secrets and not redact,
                            max_ladders=max_ladders, title=title)
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror or e}") from None
    if not quiet:
        from .output.terminal import echo_err
        echo_err(f"report written to {output} ({info['bytes'] // 1024} KiB, {info['sessions']} sessions, "
                 f"{info['journeys']} journeys, {info['ladders']} ladder diagrams)")


def write_tables(result, directory: str, fmt: str, csv_raw: bool = False) -> int:
    """Every table of an Analysis as files in ``directory``; returns how many."""
    from .analysis import TABLES
    from .output import files
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {directory}: {e.strerror or e}") from None
    for table in TABLES:
        files.write(result.table(table, keep=False), fmt, os.path.join(directory, table + files.EXTENSIONS[fmt]),
                    csv_raw=csv_raw)
    return len(TABLES)


@cli.command()
@click.option("-i", "--interface", "iface", required=True, help="Interface to capture on (e.g. eth0, lo).")
@click.option("-f", "--filter", "bpf", default=None,
              help="BPF capture filter (default: TCP on the mail and web ports plus --ports).")
@click.option("--ports", "extra_ports", default="", metavar="P1,P2", help="More TCP ports to capture.")
@click.option("--duration", type=float, default=None, help="Stop capturing after this many seconds.")
@click.option("--count", type=int, default=None, help="Stop capturing after this many packets.")
@click.option("-w", "--write", "write", type=click.Path(dir_okay=False), default=None,
              help="Also write the packets to this pcap file.")
@click.option("--rotate-size", default=None, metavar="SIZE",
              help="With -w: start a new file (FILE1, FILE2...) every SIZE bytes (e.g. 100M).")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True,
              help="table: a line per record; jsonl: one JSON object per line, for piping.")
@click.option("--backend", type=click.Choice(["spool", "scapy", "tcpdump", "tshark"]), default="spool",
              show_default=True,
              help="spool: tcpdump captures into a bounded spool of pcap files that the analysis follows "
                   "(loses nothing to a slow analysis); scapy (a packet socket), tcpdump (a pipe) and tshark: "
                   "capture and analysis in one loop, which drops packets when the analysis falls behind.")
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Spool directory (default: a temporary one, removed at the end). Its size is bounded by "
                   "--limit max_live_spool=SIZE; analysed files are deleted.")
@click.option("--idle-timeout", type=float, default=300.0, show_default=True,
              help="Seconds of silence after which a connection is closed and reported.")
@click.option("--keylog", type=click.Path(dir_okay=False), multiple=True, metavar="FILE",
              help="Decrypt TLS sessions with this NSS key log (SSLKEYLOGFILE) through tshark as each one ends; "
                   "the file may be written while the capture runs (docs/protocols/tls.md). Repeatable.")
@analysis_options
@handle_errors
def live(iface, bpf, extra_ports, duration, count, write, rotate_size, fmt, backend, spool_dir, idle_timeout, keylog,
         quiet, redact, limits, ports, jobs):
    """Capture on an interface and print each session and message as it completes.

    By default tcpdump captures into a spool of pcap files on disk and --jobs
    processes analyse them behind it, so a burst the analysis cannot follow
    waits on disk instead of being dropped by the kernel. The spool is bounded
    (--limit max_live_spool); if the analysis falls that far behind, the oldest
    unread packets are dropped and counted.

    Stop with Ctrl-C, SIGTERM, --duration or --count: the capture stops (a
    second later, once libpcap has handed over what it holds), what was
    captured is analysed to its end, then a summary goes to stderr (packets
    captured, kernel and spool drops, the backlog at the stop and how long the
    analysis took to catch up). Ctrl-C again ends at once, leaving the backlog
    unanalysed. On a terminal, stderr shows the packets captured and analysed
    per second, the
    backlog and the drops. Memory stays bounded: finished sessions are printed
    and forgotten, idle connections time out. Needs root or CAP_NET_RAW.
    With --keylog, a TLS session is printed decrypted, with the messages it
    carried, once it ends.
    """
    from .analysis import make_config
    from .capture.live import LiveError, default_filter
    from .config import Limits
    from .live import run_live
    try:
        extra = [int(p) for p in extra_ports.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"bad port list {extra_ports!r}", param_hint="--ports") from None
    lim_changes = _parse_pairs(limits, "--limit", _number)
    lim_changes.setdefault("idle_timeout", idle_timeout)
    try:
        lim = Limits().updated(**lim_changes)
    except (ValueError, TypeError) as e:
        raise click.BadParameter(str(e), param_hint="--limit") from None
    port_map = _port_map(ports)
    config = make_config(lim, redact=redact, ports=port_map)
    rotate = _number(rotate_size) if rotate_size else None
    keylog = list(keylog) or None
    if keylog is not None:
        from .decrypt import MISSING_TSHARK, find_tshark
        if find_tshark() is None:
            raise UserError(MISSING_TSHARK)

    from .output.livelines import LiveProgress, LiveRenderer, summary_line
    # under --redact run_live masks every record before it is rendered (config.redact)
    on_record = LiveRenderer(fmt, click.echo, encoding=getattr(sys.stdout, "encoding", None) or "utf-8")
    from .output.terminal import echo_err
    progress = []

    def started():
        # said once the capture is open (tcpdump listening): traffic from now on is captured
        if not quiet:
            echo_err(f"capturing on {iface} ({backend}{f', {jobs} analysing processes' if backend == 'spool' else ''})"
                     "; Ctrl-C to stop")
            if backend == "spool":
                progress[:] = [p for p in [LiveProgress.on_terminal()] if p is not None]

    def update(counters):
        if progress:
            progress[0].update(counters)

    def record(table, r):
        (progress[0].wrap(on_record) if progress else on_record)(table, r)
    try:
        summary = run_live(iface, bpf=bpf or default_filter(extra + list(port_map)), backend=backend,
                           config=config, on_record=record, duration=duration, count=count, write=write,
                           rotate_size=rotate, keylog=keylog, jobs=jobs, spool_dir=spool_dir, progress=update,
                           started=started)
    except LiveError as e:
        raise UserError(str(e)) from None
    finally:
        if progress:
            progress[0].close()
    if summary.get("capture_error"):
        echo_err(f"maildissect: warning: the capture ended: {summary['capture_error']}")
    if summary.get("analysis_failed"):
        echo_err(f"maildissect: warning: {len(summary['analysis_failed'])} analysing process(es) failed; the "
                 "connections they had are missing from the output (set MAILDISSECT_DEBUG=1 and report it)")
    if not quiet:
        for line in summary_line(summary, keylog is not None):
            echo_err(line)


def _register_optional():
    """Commands whose modules may pull heavier dependencies are registered if importable."""
    try:
        from .generate import generate_command
    except ImportError:
        return
    cli.add_command(generate_command, "generate")


_register_optional()


def main():
    """Console entry point.

    A large analysis leaves millions of objects behind; freeing them one by one at
    interpreter exit takes a noticeable fraction of a second and serves nothing, so
    once the outputs are flushed the process ends at once.
    """
    code = 0
    try:
        # not standalone: click's own errors (which quote the arguments as given) are shown cleaned
        result = cli.main(prog_name="maildissect", standalone_mode=False)
        code = result if type(result) is int else 0  # (click.exceptions.Exit returns its status)
    except click.ClickException as e:
        from .output.terminal import CleanWriter
        e.show(file=CleanWriter(sys.stderr))
        code = e.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        code = 1
    except SystemExit as e:
        code = e.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass
    try:
        sys.stderr.flush()
    except (ValueError, OSError):
        pass
    os._exit(code or 0)


if __name__ == "__main__":
    main()
