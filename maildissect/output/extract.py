"""Extracting messages (.eml) and attachments to a directory, safely.

Names come from hostile input, so they are sanitised (no path separators,
no ``..``, no control characters, no Windows reserved names, bounded length)
and every file is created relative to a directory descriptor with
``O_CREAT | O_EXCL | O_NOFOLLOW``: nothing is written outside the target
directory, a symlink planted there is never followed, and an existing file is
never overwritten unless ``overwrite`` is set. Even then an existing entry is
not opened for writing but replaced by a rename: a hard link planted in the
directory keeps its (outside) content, and a FIFO cannot block the run.
Identical attachments are written once (deduplicated by sha256). The index
is a CSV meant for spreadsheets: its cells go through the same formula
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
from .spreadsheet import csv_cell

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
    text = (text or "").strip("<>")
    s = re.sub(r"[^A-Za-z0-9._@-]+", "_", text)[:limit].strip("._")
    return s or "message"


class Extractor:
    """Writes each message handed to it (a pipeline message hook).

    Layout: ``DIR/messages/<session>-<n>-<slug>.eml``,
    ``DIR/attachments/<name>`` and ``DIR/index.csv``.
    """

    def __init__(self, directory: str, overwrite: bool = False, attachments: bool = True, csv_raw: bool = False):
        self.directory = directory
        self.csv_raw = csv_raw
        self.overwrite = overwrite
        self.write_attachments = attachments
        self.rows: list[dict] = []
        self._messages: list = []  # the records of the rows, read again when the index is written
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
        eml = None
        if msg.raw is not None:
            name = safe_name(f"{msg.session_id}-{msg.message_index}-{_slug(msg.message_id or msg.subject)}.eml")
            eml = self._write("messages", name, msg.raw, msg.sha256)
        files = []
        if self.write_attachments:
            for a in msg.attachments:
                if a.data is None:
                    continue
                files.append(self._write("attachments", safe_name(a.filename), a.data, a.sha256) or "")
        self.rows.append({
            "session_id": msg.session_id, "message_index": msg.message_index, "protocol": msg.protocol,
            "direction": msg.direction,
            "ts": datetime.fromtimestamp(msg.ts, timezone.utc).isoformat() if msg.ts is not None else "",
            "from": msg.from_ or "", "to": "; ".join(msg.to), "subject": msg.subject or "",
            "message_id": msg.message_id or "", "sha256": msg.sha256 or "", "complete": msg.complete,
            "eml": eml or "", "attachments": "; ".join(f for f in files if f),
        })
        self._messages.append(msg)

    def write_index(self) -> str:
        """Write index.csv (one row per message) and return its path.

        Like every other file it never replaces an existing one unless
        ``overwrite`` (a second run into the same directory writes
        index-1.csv, unless the index is the same).
        """
        fields = ["session_id", "message_index", "protocol", "direction", "ts", "from", "to", "subject",
                  "message_id", "sha256", "complete", "eml", "attachments"]
        # a webmail read or download learns its message's fields after it was written (from the
        # webmail server's IMAP fetch, maildissect.webmail_backend): the index says what is known now
        for row, msg in zip(self.rows, self._messages):
            row.update({"from": msg.from_ or "", "to": "; ".join(msg.to), "subject": msg.subject or "",
                        "message_id": msg.message_id or ""})
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=fields)
        w.writeheader()
        w.writerows({k: csv_cell(v, self.csv_raw) for k, v in row.items()} for row in self.rows)
        data = text.getvalue().encode("utf-8")
        rel = self._write("", "index.csv", data, hashlib.sha256(data).hexdigest(), dedupe=False)
        if rel is None:
            raise ExtractError(f"cannot write the index in {self.directory}: {'; '.join(self.skipped[-1:])}")
        return os.path.join(self.directory, rel)

