"""Extracting messages (.eml) and attachments to a directory, safely.

Names come from hostile input, so they are sanitised (no path separators,
no ``..``, no control characters, no Windows reserved names, bounded length)
and every file is created relative to a directory descriptor with
``O_CREAT | O_EXCL | O_NOFOLLOW``: nothing is written outside the target
directory, a symlink planted there is never followed, and an existing file is
never overwritten unless ``overwrite`` is set. Identical attachments are
written once (deduplicated by sha256).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import stat
import unicodedata
from datetime import datetime, timezone

from ..model import Message

MAX_NAME_BYTES = 120
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
             *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
_BAD_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')


class ExtractError(Exception):
    """The target directory cannot be used safely (one-line message)."""


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
    if stem.split(".")[0].upper() in _RESERVED or name.upper() in _RESERVED:
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

    def __init__(self, directory: str, overwrite: bool = False, attachments: bool = True):
        self.directory = directory
        self.overwrite = overwrite
        self.write_attachments = attachments
        self.rows: list[dict] = []
        self.by_hash: dict[str, str] = {}  # sha256 -> relative path already written
        self.written = 0
        self.skipped: list[str] = []
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise ExtractError(f"cannot create {directory}: {e.strerror or e}") from None
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        self.root = os.open(directory, flags)
        self.dirs = {sub: self._subdir(sub) for sub in ("messages", "attachments")}

    def _subdir(self, sub: str) -> int:
        try:
            st = os.lstat(sub, dir_fd=self.root)
        except FileNotFoundError:
            os.mkdir(sub, 0o755, dir_fd=self.root)
            st = os.lstat(sub, dir_fd=self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise ExtractError(f"{os.path.join(self.directory, sub)} exists and is not a directory "
                               "(a symlink is refused)")
        return os.open(sub, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0),
                       dir_fd=self.root)

    def close(self) -> None:
        for fd in (*self.dirs.values(), self.root):
            try:
                os.close(fd)
            except OSError:
                pass

    def _write(self, sub: str, name: str, data: bytes, sha256: str | None) -> str | None:
        """Write ``data`` as ``sub/name`` (or a variant); returns the relative path."""
        if sha256 and sha256 in self.by_hash:
            return self.by_hash[sha256]
        dfd = self.dirs[sub]
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, ext = name, ""
        for attempt in range(1000):
            candidate = name if attempt == 0 else (f"{stem}-{attempt}.{ext}" if ext else f"{stem}-{attempt}")
            flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            flags |= os.O_TRUNC if self.overwrite and attempt == 0 else os.O_EXCL
            try:
                fd = os.open(candidate, flags, 0o644, dir_fd=dfd)
            except FileExistsError:
                if sha256 and self._same_file(dfd, candidate, data, sha256):
                    rel = f"{sub}/{candidate}"  # already there from an earlier run
                    self.by_hash[sha256] = rel
                    return rel
                continue
            except OSError as e:  # e.g. ELOOP: a symlink with that name
                self.skipped.append(f"{sub}/{candidate}: {e.strerror or e}")
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            rel = f"{sub}/{candidate}"
            if sha256:
                self.by_hash[sha256] = rel
            self.written += 1
            return rel
        self.skipped.append(f"{sub}/{name}: too many files with this name")
        return None

    @staticmethod
    def _same_file(dfd: int, name: str, data: bytes, sha256: str) -> bool:
        """True when ``name`` is a regular file (not a link) holding exactly ``data``."""
        try:
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=dfd)
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

    def write_index(self) -> str:
        """Write index.csv (one row per message) and return its path."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open("index.csv", flags, 0o644, dir_fd=self.root)
        fields = ["session_id", "message_index", "protocol", "direction", "ts", "from", "to", "subject",
                  "message_id", "sha256", "complete", "eml", "attachments"]
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(self.rows)
        return os.path.join(self.directory, "index.csv")
