"""Extracting messages (.eml) and attachments to a directory, safely.

Names come from hostile input, so they are sanitised (no path separators,
no ``..``, no control characters, no Windows reserved names, bounded length)
and every file is created relative to a directory descriptor with
``O_CREAT | O_EXCL | O_NOFOLLOW``: nothing is written outside the target
directory, a symlink planted there is never followed, and an existing file is
never overwritten unless ``overwrite`` is set. Even then an existing entry is
not opened for writing but replaced by a rename: a hard link planted in the
directory keeps its (outside) content, and a FIFO cannot block the run.
Identical files are written once (deduplicated by sha256). The index lists
every file with its size, hashes and origin (a message, or an HTTP request);
it is a CSV meant for spreadsheets: its cells go through the same formula
defusing as every CSV maildissect writes (:mod:`maildissect.output.spreadsheet`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
import unicodedata
from datetime import datetime, timezone

from ..model import Message
from .spreadsheet import LINE_END, csv_cell

MAX_NAME_BYTES = 120
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
             *(f"COM{i}" for i in (*range(10), "¹", "²", "³")), *(f"LPT{i}" for i in (*range(10), "¹", "²", "³"))}
_BAD_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')


class ExtractError(Exception):
    """The target directory cannot be used safely (one-line message)."""


def is_device_name(name: str) -> bool:
    """True when Windows would open a device for ``name``: the part before the first dot, with
    trailing spaces and dots removed, is CON, PRN, AUX, NUL, COM0-9, LPT0-9 (superscript
    digits too) or CONIN$/CONOUT$, in any case (``CON .txt``, ``nul.tar.gz``, ``Com¹``)."""
    return name.split(".")[0].rstrip(" .").upper() in _RESERVED


def safe_name(name: str | None, default: str = "attachment") -> str:
    """A file name that is safe on Linux, macOS and Windows.

    Keeps only the last path component, drops control and reserved
    characters, leading dots and spaces, defuses reserved device names and
    caps the length at MAX_NAME_BYTES bytes of UTF-8 (keeping the extension).
    """
    if not name:
        return default
    name = unicodedata.normalize("NFC", str(name))
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _BAD_CHARS.sub("_", name).strip().lstrip(".").strip()
    name = name.rstrip(". ")
    if not name or set(name) <= {"_", "."}:
        return default
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    if is_device_name(name):
        name = "_" + name
        stem = "_" + stem if dot else name
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        ext = ext[:16]
        room = MAX_NAME_BYTES - len(ext.encode("utf-8")) - (1 if ext else 0)
        stem_b = (stem if dot else name).encode("utf-8")[:room]
        stem = stem_b.decode("utf-8", "ignore")
        name = f"{stem}.{ext}" if ext else stem
    return name


def _slug(text: str | None, limit: int = 40) -> str:
    """A Message-ID or subject as part of a file name: letters and digits of every script
    (NFC) and ``._@-`` kept, each run of anything else one ``_``."""
    text = unicodedata.normalize("NFC", (text or "").strip().strip("<>"))
    out: list[str] = []
    for ch in text:
        if ch in "._@-" or unicodedata.category(ch)[0] in "LNM":
            out.append(ch)
        elif not out or out[-1] != "_":
            out.append("_")
    s = "".join(out)[:limit].strip("._")
    return s or "message"


#: Extensions of body parts written with --bodies, by MIME type.
_BODY_EXT = {"text/plain": "txt", "text/html": "html", "text/calendar": "ics", "text/csv": "csv",
             "text/xml": "xml", "text/markdown": "md", "text/enriched": "txt", "text/rtf": "rtf"}

#: index.csv: one row per file handed to the extractor, written or not.
INDEX_FIELDS = ["kind", "path", "size", "md5", "sha1", "sha256", "complete", "source", "protocol", "session_id",
                "message_index", "direction", "ts", "from", "to", "subject", "message_id", "mailbox", "uid", "part",
                "filename", "content_type", "http_seq", "method", "host", "uri", "note"]


def _iso(ts) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts is not None else ""
    except (OverflowError, OSError, ValueError):
        return ""


class Extractor:
    """Writes each message and HTTP file handed to it (the pipeline's message and file hooks).

    Layout: ``DIR/messages/<session>-<n>-<slug>.eml``, ``DIR/attachments/<name>``,
    ``DIR/files/<name>`` (files carried over HTTP), ``DIR/bodies/<session>-<n>-<part>.<ext>``
    (body parts, with ``bodies``) and ``DIR/index.csv``: one row per file with its size,
    hashes and where it came from.
    """

    def __init__(self, directory: str, overwrite: bool = False, attachments: bool = True, csv_raw: bool = False,
                 bodies: bool = False, http: bool = True):
        self.directory = directory
        self.csv_raw = csv_raw
        self.overwrite = overwrite
        self.write_attachments = attachments
        self.write_bodies = bodies
        self.write_http = http
        self.rows: list[dict] = []
        self._messages: list = []  # (row, Message) of message rows, read again when the index is written
        self._held: set = set()  # (session, exchange seq, sha256) of files a message holds
        self.by_hash: dict[str, str] = {}  # sha256 -> relative path already written
        self.written = 0
        self.skipped: list[str] = []
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise ExtractError(f"cannot create {directory}: {e.strerror or e}") from None
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        try:
            self.root = os.open(directory, flags)
        except OSError as e:
            raise ExtractError(f"cannot open {directory}: {e.strerror or e}") from None
        self.dirs: dict[str, int] = {}
        self._next: dict[tuple[str, str], int] = {}  # (sub, name) -> first variant number worth trying
        try:
            for sub in ("messages", "attachments"):
                self.dirs[sub] = self._subdir(sub)
        except BaseException:
            self.close()
            raise

    @property
    def messages(self) -> int:
        """Messages handed to the extractor."""
        return len(self._messages)

    def _subdir(self, sub: str) -> int:
        try:
            st = os.lstat(sub, dir_fd=self.root)
        except FileNotFoundError:
            os.mkdir(sub, 0o755, dir_fd=self.root)
            st = os.lstat(sub, dir_fd=self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise ExtractError(f"{os.path.join(self.directory, sub)} exists and is not a directory "
                               "(a symlink is refused)")
        try:
            return os.open(sub, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0),
                           dir_fd=self.root)
        except OSError as e:  # replaced by a symlink since the lstat (ELOOP)
            raise ExtractError(f"{os.path.join(self.directory, sub)}: {e.strerror or e} "
                               "(a symlink is refused)") from None

    def close(self) -> None:
        for fd in (*self.dirs.values(), self.root):
            try:
                os.close(fd)
            except OSError:
                pass

    def _write(self, sub: str, name: str, data: bytes, sha256: str | None, dedupe: bool = True) -> str | None:
        """Write ``data`` as ``sub/name`` (or a variant); returns the relative path.

        ``dedupe``: data already written under another name is not written again.
        """
        if dedupe and sha256 and sha256 in self.by_hash:
            return self.by_hash[sha256]
        if sub and sub not in self.dirs:
            self.dirs[sub] = self._subdir(sub)  # files/ and bodies/ are made when first needed
        dfd = self.dirs[sub] if sub else self.root
        prefix = f"{sub}/" if sub else ""
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, ext = name, ""
        # variants already found taken are not tried again (10,000 attachments of one
        # name would otherwise cost 1,000 failed opens each)
        first = self._next.get((sub, name), 0)
        for attempt in range(first, first + 1000):
            candidate = name if attempt == 0 else (f"{stem}-{attempt}.{ext}" if ext else f"{stem}-{attempt}")
            if self.overwrite and attempt == 0:
                error = self._replace(dfd, candidate, data)
                if error is None:
                    return self._written(prefix + candidate, sha256 if dedupe else None)
                self.skipped.append(f"{prefix}{candidate}: {error}")
                continue
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                             0o644, dir_fd=dfd)
            except FileExistsError:
                if sha256 and self._same_file(dfd, candidate, data, sha256):
                    rel = prefix + candidate  # already there from an earlier run
                    if dedupe:
                        self.by_hash[sha256] = rel
                    return rel
                self._next[(sub, name)] = attempt + 1
                continue
            except OSError as e:  # e.g. a name the file system refuses
                self.skipped.append(f"{prefix}{candidate}: {e.strerror or e}")
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._next[(sub, name)] = attempt + 1
            return self._written(prefix + candidate, sha256 if dedupe else None)
        self.skipped.append(f"{prefix}{name}: too many files with this name")
        return None

    def _written(self, rel: str, sha256: str | None) -> str:
        if sha256:
            self.by_hash[sha256] = rel
        self.written += 1
        return rel

    @staticmethod
    def _replace(dfd: int, name: str, data: bytes) -> str | None:
        """Put ``data`` at ``name`` by writing a new file and renaming it over the old entry.

        Opening the existing entry would write through a hard link planted there
        (into a file outside the directory) or block on a FIFO; a rename only
        changes the directory entry. Returns an error text, or None.
        """
        tmp = f".{name[:100]}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644,
                         dir_fd=dfd)
        except OSError as e:
            return e.strerror or str(e)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as e:  # e.g. a directory with that name
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            return e.strerror or str(e)
        return None

    @staticmethod
    def _same_file(dfd: int, name: str, data: bytes, sha256: str) -> bool:
        """True when ``name`` is a regular file (not a link) holding exactly ``data``."""
        try:
            # O_NONBLOCK: a FIFO with that name must not stop the run waiting for a writer
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), dir_fd=dfd)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
                return False
            return hashlib.sha256(f.read()).hexdigest() == sha256

    def __call__(self, msg: Message) -> None:
        """Write a message (.eml) and its files; index them."""
        from ..frames import message_files
        if msg.kind == "envelope":
            return  # an SMTP transaction that carried no message: nothing to extract
        eml = None
        if msg.raw is not None:
            name = safe_name(f"{msg.session_id}-{msg.message_index}-{_slug(msg.message_id or msg.subject)}.eml")
            eml = self._write("messages", name, msg.raw, msg.sha256)
        where = self._message_fields(msg)
        row = {"kind": "message", "path": eml or "", "size": msg.size if msg.raw is not None else "",
               "md5": "", "sha1": "", "sha256": msg.sha256 or "", "complete": msg.complete, **where,
               "part": "", "filename": "", "content_type": "message/rfc822",
               "note": "" if eml or msg.raw is None else "not written"}
        if msg.raw is not None:
            row["md5"], row["sha1"] = hashlib.md5(msg.raw).hexdigest(), hashlib.sha1(msg.raw).hexdigest()
        else:
            row["note"] = "bytes not seen (a page or a download that is not the whole message)"
        self.rows.append(row)
        self._messages.append((row, msg))
        for a in message_files(msg):
            if msg.command_seq is not None and a.sha256:
                self._held.add((msg.session_id, msg.command_seq, a.sha256))
            if a.is_attachment:
                if not self.write_attachments:
                    continue
                sub, name = "attachments", safe_name(a.filename)
            else:
                if not self.write_bodies:
                    continue
                ext = _BODY_EXT.get(a.content_type, "bin")
                sub, name = "bodies", safe_name(f"{msg.session_id}-{msg.message_index}-{a.part or 'body'}.{ext}")
            frow = self._file_row("attachment" if a.is_attachment else "body", sub, name, a, where)
            frow["complete"] = a.complete and msg.complete
            self.rows.append(frow)
            self._messages.append((frow, msg))

    def http(self, req) -> None:
        """Write the files of an HTTP exchange (uploads and a downloaded body); index them."""
        if not self.write_http:
            return
        where = {"source": "http", "protocol": "http", "session_id": req.session_id, "message_index": "",
                 "from": "", "to": "", "subject": "", "message_id": req.message_id or "",
                 "mailbox": req.mailbox or "", "uid": "" if req.uid is None else req.uid,
                 "http_seq": "" if req.seq is None else req.seq, "method": req.method, "host": req.host or "",
                 "uri": req.uri}
        for a in req.files:
            row = self._file_row("http", "files", safe_name(a.filename, "upload"), a,
                                 {**where, "direction": "uploaded", "ts": _iso(req.ts)})
            self.rows.append(row)
        a = req.response_file
        if a is not None:
            default = safe_name(req.uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1], "download")
            row = self._file_row("http", "files", safe_name(a.filename, default), a,
                                 {**where, "direction": "downloaded",
                                  "ts": _iso(req.response_ts if req.response_ts is not None else req.ts)})
            if not row["part"] and req.part:
                row["part"] = req.part
            self.rows.append(row)

    def _file_row(self, kind: str, sub: str, name: str, a, where: dict) -> dict:
        path, note = "", ""
        if a.data is not None:
            path = self._write(sub, name, a.data, a.sha256) or ""
            note = "" if path else "not written (see the warnings)"
        elif a.size:
            note = "not kept: larger than limits.max_extract_size, or its bytes were not all seen"
        return {"kind": kind, "path": path, "size": a.size, "md5": a.md5 or "", "sha1": a.sha1 or "",
                "sha256": a.sha256 or "", "complete": a.complete, **where, "part": a.part or "",
                "filename": a.filename or "", "content_type": a.content_type or "", "note": note}

    @staticmethod
    def _message_fields(msg: Message) -> dict:
        return {"source": "message", "protocol": msg.protocol, "session_id": msg.session_id,
                "message_index": msg.message_index, "direction": msg.direction, "ts": _iso(msg.ts),
                "from": msg.from_ or "", "to": "; ".join(msg.to), "subject": msg.subject or "",
                "message_id": msg.message_id or "", "mailbox": msg.mailbox or "",
                "uid": "" if msg.uid is None else msg.uid,
                "http_seq": msg.command_seq if msg.protocol == "http" and msg.command_seq is not None else "",
                "method": "", "host": "", "uri": ""}

    def write_index(self, records=None) -> str:
        """Write index.csv (one row per file: messages, attachments, body parts, HTTP files) and
        return its path.

        ``records``: the analysis's records once whole (``Analysis.records``), which the
        message rows are brought up to date from; the records the hooks saw, otherwise.
        Under ``--redact`` both are masked (maildissect.redact.Redacting), so the index is.
        Like every other file it never replaces an existing one unless
        ``overwrite`` (a second run into the same directory writes
        index-1.csv, unless the index is the same).
        """
        # a webmail read or download learns its message's fields after it was written (from the
        # webmail server's IMAP fetch, maildissect.webmail_backend): the index says what is known now
        final = {(m.session_id, m.message_index): m for m in records.messages} if records is not None else {}
        for row, msg in self._messages:
            msg = final.get((msg.session_id, msg.message_index), msg)
            row.update({"from": msg.from_ or "", "to": "; ".join(msg.to), "subject": msg.subject or "",
                        "message_id": msg.message_id or ""})
        # an HTTP file that a message of the same exchange holds is listed with that message
        rows = [r for r in self.rows if not (r["kind"] == "http" and r["sha256"] and (
            r["session_id"], r["http_seq"], r["sha256"]) in self._held)]
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=INDEX_FIELDS, lineterminator=LINE_END)
        w.writeheader()
        w.writerows({k: csv_cell(v, self.csv_raw) for k, v in row.items()} for row in rows)
        data = text.getvalue().encode("utf-8")
        rel = self._write("", "index.csv", data, hashlib.sha256(data).hexdigest(), dedupe=False)
        if rel is None:
            raise ExtractError(f"cannot write the index in {self.directory}: {'; '.join(self.skipped[-1:])}")
        return os.path.join(self.directory, rel)
