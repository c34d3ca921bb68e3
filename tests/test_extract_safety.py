"""Extraction writes only inside its directory, never follows or writes through a planted
entry, and never overwrites unless asked; odd file names reach tshark unharmed.

Attachment names come from the capture, that is, from whoever sent the mail:
``../../etc/passwd``, ``/etc/shadow``, ``..\\..\\win.ini``, ``CON``, 300-byte
names, control characters and bidi overrides. The directory may hold entries
planted before the run: a symlink with the name an attachment will get, a
symlinked ``attachments`` directory, a hard link to a file elsewhere, a FIFO.
Each case is checked on the Extractor and end to end through
``maildissect extract`` on a crafted capture.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from maildissect.model import Attachment, Message
from maildissect.output.extract import MAX_NAME_BYTES, ExtractError, Extractor, safe_name
from tests.malformed.packets import Capture, Conversation

ROOT = Path(__file__).resolve().parent.parent

HOSTILE = {
    "../../etc/passwd": "passwd",
    "/etc/shadow": "shadow",
    "..\\..\\windows\\win.ini": "win.ini",
    "C:\\Users\\x\\evil.exe": "evil.exe",
    "..": "attachment",
    "../": "attachment",
    "...": "attachment",
    ".bashrc": "bashrc",
    "CON": "_CON",
    "con.txt": "_con.txt",
    "Aux.tar.gz": "_Aux.tar.gz",
    "COM1": "_COM1",
    "LPT9.log": "_LPT9.log",
    "COM¹.txt": "_COM¹.txt",
    "nul.": "_nul",
    "report. ": "report",
    "evil\x00.txt": "evil.txt",
    "bell\x07\x1b[31mred.txt": "bell[31mred.txt",
    "invoice\u202etxt.exe": "invoicetxt.exe",  # right-to-left override: "invoiceexe.txt" on screen
    "a<b>c:d\"e|f?g*h.txt": "a_b_c_d_e_f_g_h.txt",
    "": "attachment",
    None: "attachment",
    "\t\n": "attachment",
}


@pytest.mark.parametrize("raw,expected", list(HOSTILE.items()), ids=[repr(k)[:30] for k in HOSTILE])
def test_safe_name(raw, expected):
    assert safe_name(raw) == expected


def test_safe_name_bounds_length_and_keeps_the_extension():
    name = safe_name("é" * 300 + ".pdf")
    assert len(name.encode()) <= MAX_NAME_BYTES and name.endswith(".pdf")
    assert name.encode().decode("utf-8")  # cut on a character boundary
    long_ext = safe_name("x." + "e" * 300)
    assert len(long_ext.encode()) <= MAX_NAME_BYTES


def message(*attachments: tuple[str | None, bytes], subject="s", session=1, index=1) -> Message:
    msg = Message(protocol="smtp", session_id=session, ts=0.0, direction="sent", subject=subject,
                  message_index=index, raw=b"Subject: " + subject.encode() + b"\r\n\r\nbody\r\n")
    msg.sha256 = hashlib.sha256(msg.raw).hexdigest()
    for name, data in attachments:
        msg.attachments.append(Attachment(name, "application/octet-stream", len(data), hashlib.md5(data).hexdigest(),
                                          hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest(),
                                          data=data))
    return msg


def extract(directory: Path, *messages: Message, overwrite=False) -> Extractor:
    ext = Extractor(str(directory), overwrite=overwrite)
    try:
        for m in messages:
            ext(m)
        ext.write_index()
    finally:
        ext.close()
    return ext


def inside(directory: Path) -> list[Path]:
    """Every entry under ``directory``; fails if one resolves outside it or is a symlink we made."""
    root = directory.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for f in dirnames + filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                assert p.resolve().is_relative_to(root), p
            found.append(p)
    return found


def test_hostile_names_stay_inside(tmp_path):
    out = tmp_path / "out"
    msg = message(*[(name, f"{k}".encode()) for k, name in enumerate(HOSTILE)])
    extract(out, msg)
    names = sorted(p.name for p in (out / "attachments").iterdir())
    assert set(names) >= {"passwd", "shadow", "win.ini", "_CON", "invoicetxt.exe", "attachment"}
    assert all(len(n.encode()) <= MAX_NAME_BYTES for n in names)
    inside(out)
    assert not (tmp_path / "etc").exists() and set(os.listdir(tmp_path)) == {"out"}


@pytest.fixture
def canary(tmp_path):
    """A file outside the extraction directory that must never change."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(b"do not touch")
    return path


@pytest.mark.parametrize("overwrite", [False, True])
def test_symlinked_file_is_never_followed(tmp_path, canary, overwrite):
    out = tmp_path / "out"
    (out / "attachments").mkdir(parents=True)
    os.symlink(canary, out / "attachments" / "passwd")
    extract(out, message(("../../etc/passwd", b"attacker data")), overwrite=overwrite)
    assert canary.read_bytes() == b"do not touch"
    if overwrite:  # the link itself was replaced by the file
        assert not (out / "attachments" / "passwd").is_symlink()
        assert (out / "attachments" / "passwd").read_bytes() == b"attacker data"
    else:
        assert (out / "attachments" / "passwd").is_symlink()
        assert (out / "attachments" / "passwd-1").read_bytes() == b"attacker data"


@pytest.mark.parametrize("sub", ["attachments", "messages"])
def test_symlinked_subdirectory_is_refused(tmp_path, canary, sub):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(canary.parent, out / sub)
    with pytest.raises(ExtractError, match="symlink is refused"):
        extract(out, message(("x.txt", b"data")))
    assert sorted(os.listdir(canary.parent)) == ["precious.txt"]


def test_hard_link_is_replaced_not_written_through(tmp_path, canary):
    out = tmp_path / "out"
    (out / "attachments").mkdir(parents=True)
    os.link(canary, out / "attachments" / "report.pdf")
    extract(out, message(("report.pdf", b"new content")), overwrite=True)
    assert canary.read_bytes() == b"do not touch"
    assert (out / "attachments" / "report.pdf").read_bytes() == b"new content"


@pytest.mark.parametrize("overwrite", [False, True])
def test_fifo_does_not_block(tmp_path, overwrite):
    out = tmp_path / "out"
    (out / "attachments").mkdir(parents=True)
    os.mkfifo(out / "attachments" / "report.pdf")
    os.mkfifo(out / "index.csv")
    worker = threading.Thread(target=extract, args=(out, message(("report.pdf", b"x"))),
                              kwargs={"overwrite": overwrite}, daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "extraction blocked on a FIFO"


def test_existing_files_are_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    (out / "attachments").mkdir(parents=True)
    (out / "attachments" / "notes.txt").write_bytes(b"mine")
    (out / "index.csv").write_text("my own index\n")
    extract(out, message(("notes.txt", b"theirs")))
    assert (out / "attachments" / "notes.txt").read_bytes() == b"mine"
    assert (out / "attachments" / "notes-1.txt").read_bytes() == b"theirs"
    assert (out / "index.csv").read_text() == "my own index\n" and (out / "index-1.csv").is_file()
    extract(out, message(("notes.txt", b"theirs again")), overwrite=True)
    assert (out / "attachments" / "notes.txt").read_bytes() == b"theirs again"
    assert (out / "index.csv").read_text().startswith("kind,path,size,md5,sha1,sha256,")


def test_identical_rerun_writes_nothing_new(tmp_path):
    out = tmp_path / "out"
    msg = message(("a.txt", b"same"))
    extract(out, msg)
    before = sorted(p.relative_to(out) for p in inside(out))
    extract(out, msg)
    assert sorted(p.relative_to(out) for p in inside(out)) == before


def test_many_attachments_of_one_name(tmp_path):
    out = tmp_path / "out"
    msgs = [message(("invoice.pdf", f"{k}".encode()), index=k) for k in range(1500)]
    import time
    start = time.process_time()
    ext = extract(out, *msgs)
    assert time.process_time() - start < 20
    assert len(list((out / "attachments").iterdir())) == 1500 and not ext.skipped


def test_index_cells_do_not_start_formulas(tmp_path):
    out = tmp_path / "out"
    extract(out, message(subject="=HYPERLINK(\"http://evil\",\"click\")"), message(subject="+1", index=2))
    text = (out / "index.csv").read_text()
    assert "'=HYPERLINK" in text and ",'+1," in text


# -- end to end: maildissect extract on a crafted capture ------------------------------------
def crafted_capture(path: Path) -> None:
    """An SMTP message whose attachments carry hostile names (plain, RFC 2047 and RFC 2231)."""
    parts = []
    names = [b'"../../etc/passwd"', b'"/etc/shadow"', b'"..\\\\..\\\\windows\\\\win.ini"', b'"CON"',
             b'"' + b"A" * 300 + b'.pdf"', b'"bell\x07\x1b[31m.txt"', b'"=?utf-8?b?Li4vLi4vZW5jb2RlZC50eHQ=?="',
             b"*=utf-8''..%2F..%2Frfc2231.txt", b'"invoice\xe2\x80\xaetxt.exe"', b'"passwd"']
    for k, name in enumerate(names):
        disposition = b"attachment; filename" + (name if name.startswith(b"*") else b"=" + name)
        parts.append(b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
                     b"Content-Disposition: " + disposition + b"\r\n\r\n"
                     + base64.b64encode(b"payload %d" % k) + b"\r\n")
    msg = (b"From: a@x.org\r\nTo: b@y.org\r\nSubject: hostile names\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(parts) + b"--b--\r\n")
    cap = Capture()
    Conversation(cap).open().dialogue(
        b"220 mx\r\n", b"EHLO x\r\n", b"250 ok\r\n", b"MAIL FROM:<a@x.org>\r\n", b"250 ok\r\n",
        b"RCPT TO:<b@y.org>\r\n", b"250 ok\r\n", b"DATA\r\n", b"354 go\r\n", msg + b".\r\n", b"250 ok\r\n").close()
    path.write_bytes(cap.pcap())


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MAILDISSECT_DEBUG"}
    return subprocess.run([sys.executable, "-m", "maildissect.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_extract_end_to_end(tmp_path, canary):
    pcap = tmp_path / "hostile names.pcap"
    crafted_capture(pcap)
    out = tmp_path / "out"
    (out / "attachments").mkdir(parents=True)
    os.symlink(canary, out / "attachments" / "passwd")  # the name two attachments will want
    first = cli("extract", pcap, "-o", out, "-j", "1")
    assert first.returncode == 0, first.stderr
    names = sorted(p.name for p in (out / "attachments").iterdir())
    assert "passwd-1" in names and "shadow" in names and "win.ini" in names and "_CON" in names
    assert "encoded.txt" in names and "rfc2231.txt" in names and "invoicetxt.exe" in names
    assert all(len(n.encode()) <= MAX_NAME_BYTES and "/" not in n and "\x1b" not in n for n in names)
    assert canary.read_bytes() == b"do not touch"
    inside(out)
    # again, with --overwrite: the planted link is replaced, never followed
    second = cli("extract", pcap, "-o", out, "-j", "1", "--overwrite")
    assert second.returncode == 0, second.stderr
    assert canary.read_bytes() == b"do not touch" and not (out / "attachments" / "passwd").is_symlink()
    assert sorted(os.listdir(tmp_path)) == sorted(["hostile names.pcap", "out", "outside"])


def test_extract_into_symlinked_subdirectory_is_one_line_error(tmp_path, canary):
    pcap = tmp_path / "c.pcap"
    crafted_capture(pcap)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(canary.parent, out / "attachments")
    res = cli("extract", pcap, "-o", out)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("maildissect: error:")
    assert sorted(os.listdir(canary.parent)) == ["precious.txt"]


# -- subprocesses: argument lists, never a shell ------------------------------------------------
def test_no_shell_anywhere():
    """Every subprocess maildissect starts gets an argument list (so no file name is ever parsed)."""
    offenders = []
    for path in (ROOT / "maildissect").rglob("*.py"):
        text = path.read_text()
        for needle in ("shell=True", "os.system(", "os.popen(", "commands.getoutput", "subprocess.getoutput"):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


ODD = "odd name; $(touch pwned) `touch pwned2` 'q' \"d\" & | > -x"


@pytest.mark.tshark
@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_odd_file_names_through_tshark(tmp_path):
    """--keylog hands the capture and key log paths to tshark: names with spaces, quotes,
    semicolons, $( ) and backquotes arrive as they are and run nothing."""
    (tmp_path / "dir with space").mkdir()
    pcap = tmp_path / "dir with space" / (ODD + ".pcap")
    keys = tmp_path / "dir with space" / (ODD + ".keys")
    shutil.copy(ROOT / "captures" / "tls.pcap", pcap)
    shutil.copy(ROOT / "captures" / "tls.keys", keys)
    odd = cli("messages", pcap, "--keylog", keys, "-f", "jsonl", "-q", "-j", "1", cwd=tmp_path)
    plain = cli("messages", ROOT / "captures" / "tls.pcap", "--keylog", ROOT / "captures" / "tls.keys", "-f",
                "jsonl", "-q", "-j", "1", cwd=tmp_path)
    assert odd.returncode == 0, odd.stderr
    # the same rows, but for the file each names (the capture as given)
    rows = [json.loads(x) for x in odd.stdout.splitlines()]
    assert rows and {r.pop("file") for r in rows} == {str(pcap)}
    assert rows == [{k: v for k, v in json.loads(x).items() if k != "file"} for x in plain.stdout.splitlines()]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
