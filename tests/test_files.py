"""The files table: every MIME leaf entity hashed over its decoded bytes, encoded
composites parsed, Zeek's files.log one row per entity, the `files --hash` search."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

import maildissect
from maildissect.config import Config
from maildissect.mime import fill_message
from maildissect.model import Message
from maildissect.output import zeek
from tests.pcaps import conversation, write_pcap
from tests.test_journeys import cli_run
from tests.test_zeek import read_zeek

HERE = os.path.dirname(os.path.abspath(__file__))
ZEEK = os.path.join(HERE, "captures", "zeek")

# decoded bytes of each body part, as the sender meant them
BASE64_BYTES = bytes((i * 7 + 3) % 256 for i in range(3001))
QP_DECODED = ("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, a soft break and = sign\r\nsecond line").encode("utf-8")
QP_WIRE = b"Caf=C3=A9 cr=C3=A8me br=C3=BBl=C3=A9e, a soft=\r\n break and =3D sign\r\nsecond line"
EIGHTBIT = "Gr\u00fc\u00dfe aus K\u00f6ln\r\nzweite Zeile".encode("utf-8")
BINARY = bytes(range(256)) + b"\r\n.\r\n\x00\r\rend"
HTML = b"<html><body><p>Invoice attached</p></body></html>"


def _message() -> bytes:
    return (b"From: Alice <alice@a.example>\r\nTo: bob@b.example\r\nSubject: parts\r\n"
            b"Message-ID: <parts-1@a.example>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"B1\"\r\n\r\npreamble\r\n"
            b"--B1\r\nContent-Type: multipart/alternative; boundary=\"B2\"\r\n\r\n"
            b"--B2\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + QP_WIRE + b"\r\n"
            b"--B2\r\nContent-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(HTML).replace(b"\n", b"\r\n") +
            b"--B2--\r\n"
            b"--B1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + EIGHTBIT + b"\r\n"
            b"--B1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(BASE64_BYTES).replace(b"\n", b"\r\n") +
            b"--B1\r\nContent-Type: image/x-raw\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <raw@a>\r\n\r\n"
            + BINARY + b"\r\n--B1--\r\n")


EXPECTED = [  # part, content_type, encoding, decoded bytes, is_attachment
    ("1.1", "text/plain", "quoted-printable", QP_DECODED, False),
    ("1.2", "text/html", "base64", HTML, False),
    ("2", "text/plain", "8bit", EIGHTBIT, False),
    ("3", "application/octet-stream", "base64", BASE64_BYTES, True),
    ("4", "image/x-raw", "binary", BINARY, True),
]


def smtp_bdat(message: bytes) -> list:
    """An SMTP dialogue handing ``message`` over with one BDAT LAST (binary-clean)."""
    return [("s", b"220 mx ESMTP\r\n"), ("c", b"EHLO a.example\r\n"),
            ("s", b"250-mx\r\n250-CHUNKING\r\n250 BINARYMIME\r\n"),
            ("c", b"MAIL FROM:<alice@a.example> BODY=BINARYMIME\r\n"), ("s", b"250 ok\r\n"),
            ("c", b"RCPT TO:<bob@b.example>\r\n"), ("s", b"250 ok\r\n"),
            ("c", b"BDAT %d LAST\r\n" % len(message) + message), ("s", b"250 queued as Q1\r\n"),
            ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]


@pytest.fixture(scope="module")
def parts_capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "parts.pcap"
    frames, _, _ = conversation(exchanges=smtp_bdat(_message()))
    write_pcap(path, frames)
    return str(path)


def test_body_part_hashes_are_hashlib_over_the_decoded_bytes(parts_capture):
    a = maildissect.analyze(parts_capture)
    files = a.files
    assert list(files["part"]) == [e[0] for e in EXPECTED]
    for (part, ctype, cte, data, is_att), row in zip(EXPECTED, files.itertuples()):
        assert (row.content_type, row.encoding, bool(row.is_attachment)) == (ctype, cte, is_att), part
        assert row.size == len(data), part
        assert row.md5 == hashlib.md5(data).hexdigest(), part
        assert row.sha1 == hashlib.sha1(data).hexdigest(), part
        assert row.sha256 == hashlib.sha256(data).hexdigest(), part
        assert row.complete and row.source == "message" and row.direction == "sent"
        assert (row.message_id, row.subject, row.protocol, row.message_index) == (
            "<parts-1@a.example>", "parts", "smtp", 1)
    assert list(files["charset"].fillna("")) == ["utf-8", "us-ascii", "utf-8", "", ""]
    assert files["content_id"].iloc[4] == "<raw@a>" and files["filename"].iloc[3] == "data.bin"
    # attachments is the view of the entities that are attachments
    att = a.attachments
    assert list(att["part"]) == ["3", "4"]
    assert list(att["sha256"]) == list(files[files["is_attachment"]]["sha256"])


def test_entities_whole_and_byte_by_byte_agree(parts_capture):
    """The same entities whatever the segmentation (one byte per segment)."""
    frames, _, _ = conversation(exchanges=smtp_bdat(_message()), mss=1)
    path = os.path.join(os.path.dirname(parts_capture), "bytewise.pcap")
    write_pcap(path, frames)
    whole = maildissect.analyze(parts_capture).files
    bytewise = maildissect.analyze(path).files
    assert list(whole["sha256"]) == list(bytewise["sha256"])


def _fill(raw: bytes) -> tuple[Message, list]:
    m = Message(protocol="smtp", session_id=1, ts=0.0, direction="sent")
    return m, fill_message(m, raw, Config())


INNER = (b"From: mallory@evil.example\r\nSubject: inner\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=in\r\n\r\n"
         b"--in\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
         b"--in\r\nContent-Type: application/x-msdownload; name=\"malware.exe\"\r\n"
         b"Content-Disposition: attachment; filename=\"malware.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         + base64.encodebytes(b"MZ\x90\x00evil payload") + b"--in--\r\n")


def _outer(third: bytes) -> bytes:
    return (b"From: x@y.example\r\nSubject: outer\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"out\"\r\n\r\n"
            b"--out\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"--out\r\nContent-Type: text/plain; name=\"innocent.txt\"\r\n"
            b"Content-Disposition: attachment; filename=\"innocent.txt\"\r\n\r\nnothing here\r\n"
            b"--out\r\n" + third + b"\r\n--out--\r\n")


def test_base64_message_rfc822_inside_multipart_is_parsed():
    """Suricata's evasion case: a base64-encoded message/rfc822 hides an executable."""
    m, found = _fill(_outer(b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                            + base64.encodebytes(INNER)))
    assert [(e.part, e.filename, e.is_attachment) for e in m.entities] == [
        ("1", None, False), ("2", "innocent.txt", True), ("3.1", None, False), ("3.2", "malware.exe", True)]
    exe = m.entities[3]
    assert exe.sha256 == hashlib.sha256(b"MZ\x90\x00evil payload").hexdigest()
    assert [a.filename for a in m.attachments] == ["innocent.txt", "malware.exe"]
    assert [(x.name, x.detail) for x in found] == [
        ("mime_encoded_composite", "part 3: message encoded base64 (decoded and parsed)")]


def test_encoded_forwarded_message_attachment_is_a_file_and_walked_into():
    m, found = _fill(_outer(b"Content-Type: message/rfc822; name=\"fwd.eml\"\r\nContent-Transfer-Encoding: "
                            b"quoted-printable\r\nContent-Disposition: attachment\r\n\r\n"
                            + INNER.replace(b"=", b"=3D")))
    assert [(e.part, e.content_type) for e in m.entities][2:] == [
        ("3", "message/rfc822"), ("3.1", "text/plain"), ("3.2", "application/x-msdownload")]
    assert m.entities[2].sha256 == hashlib.sha256(INNER).hexdigest() and m.entities[2].filename == "fwd.eml"
    assert [x.name for x in found] == ["mime_encoded_composite"]


def test_base64_multipart_is_decoded_and_nested_paths_kept():
    body = INNER.split(b"\r\n\r\n", 1)[1]
    m, found = _fill(_outer(b"Content-Type: multipart/mixed; boundary=in\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                            + base64.encodebytes(body)))
    assert [(e.part, e.filename) for e in m.entities] == [
        ("1", None), ("2", "innocent.txt"), ("3.1", None), ("3.2", "malware.exe")]
    assert [(x.name, x.detail) for x in found] == [
        ("mime_encoded_composite", "part 3: multipart/mixed encoded base64 (decoded and parsed)")]


def test_composite_declared_encoded_but_written_plain_is_read_as_written():
    m, found = _fill(_outer(b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" + INNER))
    assert [e.part for e in m.entities] == ["1", "2", "3.1", "3.2"]
    assert "written plain" in found[0].detail
    body = INNER.split(b"\r\n\r\n", 1)[1]
    m, found = _fill(_outer(b"Content-Type: multipart/mixed; boundary=in\r\nContent-Transfer-Encoding: "
                            b"quoted-printable\r\n\r\n" + body))
    assert [e.part for e in m.entities] == ["1", "2", "3.1", "3.2"] and "written plain" in found[0].detail


def test_encoded_composites_stay_within_max_mime_depth():
    raw = b"Subject: deep\r\n\r\nleaf\r\n"
    for _ in range(8):
        raw = (b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(raw))
    m = Message(protocol="smtp", session_id=1, ts=0.0, direction="sent")
    found = fill_message(m, raw, Config().__class__(limits=Config().limits.updated(max_mime_depth=4)))
    names = {x.name for x in found}
    assert "mime_too_deep" in names and "mime_encoded_composite" in names
    assert m.entities == []  # the leaf is below the limit


def test_unclosed_last_part_is_incomplete():
    m, _ = _fill(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\n"
                 b"Content-Type: application/pdf\r\n\r\n%PDF-1.7 cut")
    assert [(e.part, e.complete) for e in m.entities] == [("1", True), ("2", False)]


# -- Zeek's files.log ---------------------------------------------------------------------------

def test_zeek_files_log_has_one_row_per_entity(tmp_path):
    """smtp.pcap: the four entities Zeek's own files.log baseline lists (scripts.base.protocols.smtp.attachment),
    with its sizes: 7bit parts byte for byte; quoted-printable parts two bytes shorter, because Zeek's
    decoder ends the last line of a quoted-printable part with a CRLF that belongs to the boundary."""
    pcap = os.path.join(ZEEK, "smtp.pcap")
    a = maildissect.analyze(pcap)
    zeek.write_logs(a, str(tmp_path), "zeek", captures=[pcap])
    _, rows = read_zeek(str(tmp_path / "files.log"))
    zeeks = [("text/plain", None, 77, "7bit"), ("text/html", None, 1868, "quoted-printable"),
             ("text/plain", "NEWS.txt", 10809, "quoted-printable"), ("text/plain", None, 204, "7bit")]
    assert len(rows) == len(a.files) == 4
    for row, entity, (mime, name, size, cte) in zip(rows, a.files.itertuples(), zeeks):
        assert (row["mime_type"], row["filename"], row["source"]) == (mime, name, "SMTP")
        assert entity.encoding == cte
        assert int(row["seen_bytes"]) == entity.size == (size if cte == "7bit" else size - 2)
        assert row["sha256"] == entity.sha256 and row["md5"] == entity.md5
    # smtp.log's fuids name the files of each message, in part order
    _, smtp = read_zeek(str(tmp_path / "smtp.log"))
    assert smtp[0]["fuids"] == [r["fuid"] for r in rows[:3]] and smtp[1]["fuids"] == [rows[3]["fuid"]]
    assert [r["depth"] for r in rows] == ["3", "4", "5", "1"]  # as Zeek counts them


def test_zeek_png_sha1_in_the_files_table():
    """smtp-rfc3030-bdat-multipart-chunked: Zeek's files.log sha1 of zeek-logo.png."""
    a = maildissect.analyze(os.path.join(ZEEK, "smtp-rfc3030-bdat-multipart-chunked.pcap"))
    expected = json.load(open(os.path.join(ZEEK, "expected.json")))
    want = expected["captures"]["smtp-rfc3030-bdat-multipart-chunked"]["messages"][0]["attachments"][0]
    png = a.files[a.files["filename"] == want["filename"]["value"]]
    assert len(png) == 1 and png["sha1"].iloc[0] == want["sha1"]["value"]
    # Zeek's files.log.cut baseline (scripts.base.protocols.smtp.bdat-multipart-chunked): the text body
    # too, and its depth (entities of the session counted, the multipart container included)
    assert list(a.files["sha1"]) == ["5cd7c323275d114627acbae92abc666d4335c8bb", want["sha1"]["value"]]
    rows = zeek.files_rows(a.records)
    assert [(r["depth"], r["mime_type"], r["filename"]) for r in rows] == [
        (2, "text/plain", None), (3, "image/png", "zeek-logo.png")]


# -- maildissect files --hash and extract ------------------------------------------------------

def test_files_command_says_where_a_hash_was_seen(parts_capture):
    exe = hashlib.sha256(BASE64_BYTES).hexdigest()
    code, out, err = cli_run(["files", parts_capture, "--hash", exe[:12].upper(), "-q", "-j", "1", "-f", "jsonl"])
    assert code == 0, err
    (row,) = [json.loads(x) for x in out.splitlines()]
    assert (row["part"], row["filename"], row["sha256"]) == ("3", "data.bin", exe)
    assert (row["client_ip"], row["server_ip"], row["server_port"], row["session_id"]) == ("10.0.0.1", "10.0.0.2",
                                                                                          25, 0)
    assert row["from"] == "Alice <alice@a.example>" and row["to"] == ["bob@b.example"]
    assert row["message_id"] == "<parts-1@a.example>" and row["ts"].startswith("1970-01-01T00:16:40")
    # md5 and sha1 prefixes find the same file; the HTML body part is found by its own hash
    for h in (hashlib.md5(BASE64_BYTES).hexdigest()[:8], hashlib.sha1(BASE64_BYTES).hexdigest()):
        assert json.loads(cli_run(["files", parts_capture, "--hash", h, "-q", "-f", "jsonl"])[1])["part"] == "3"
    html = cli_run(["files", parts_capture, "--hash", hashlib.sha256(HTML).hexdigest(), "-q", "-f", "jsonl"])[1]
    assert json.loads(html)["content_type"] == "text/html"
    # the terminal view says where: time, endpoints, sender and recipients, the file
    code, out, _ = cli_run(["files", parts_capture, "--hash", exe[:12], "-q", "--wide"])
    assert code == 0 and "10.0.0.2" in out and "alice@a.example" in out and "data.bin" in out
    assert "no files" in cli_run(["files", parts_capture, "--hash", "00000000", "-q"])[1]
    assert cli_run(["files", parts_capture, "--hash", "not-hex", "-q"])[0] == 2


def test_extract_index_lists_every_written_file(parts_capture, tmp_path):
    out = tmp_path / "x"
    code, _, err = cli_run(["extract", parts_capture, "-o", str(out), "-q", "--bodies"])
    assert code == 0, err
    import csv
    rows = list(csv.DictReader(open(out / "index.csv", encoding="utf-8")))
    assert [r["kind"] for r in rows] == ["message", "body", "body", "body", "attachment", "attachment"]
    for r in rows:
        data = (out / r["path"]).read_bytes()
        assert int(r["size"]) == len(data) and r["md5"] == hashlib.md5(data).hexdigest()
        assert r["sha1"] == hashlib.sha1(data).hexdigest() and r["sha256"] == hashlib.sha256(data).hexdigest()
        assert (r["source"], r["session_id"], r["message_id"]) == ("message", "0", "<parts-1@a.example>")
    assert [r["path"] for r in rows[1:]] == ["bodies/0-1-1.1.txt", "bodies/0-1-1.2.html", "bodies/0-1-2.txt",
                                             "attachments/data.bin", "attachments/attachment"]
    assert (out / "attachments" / "attachment").read_bytes() == BINARY


def test_eml_names_keep_letters_of_every_script(tmp_path):
    import unicodedata

    from maildissect.output.extract import Extractor
    ext = Extractor(str(tmp_path))
    decomposed = unicodedata.normalize("NFD", "Grüße")
    for i, mid in enumerate([f"<{decomposed}/../x:y*z?@例え.jp>", "<CON@host>", "<\u202egpj.exe@x>"], 1):
        m = Message(protocol="smtp", session_id=1, ts=0.0, direction="sent", message_index=i,
                    message_id=mid, raw=b"Subject: x\r\n\r\nbody\r\n")
        m.sha256 = hashlib.sha256(m.raw).hexdigest() + str(i)  # three different messages
        ext(m)
    ext.close()
    names = sorted(p.name for p in (tmp_path / "messages").iterdir())
    assert names == ["1-1-Grüße_.._x_y_z_@例え.jp.eml", "1-2-CON@host.eml", "1-3-gpj.exe@x.eml"]
    assert all(unicodedata.is_normalized("NFC", n) for n in names)


def test_imap_part_fetches_keep_their_paths_in_the_message():
    """Dovecot serving BODY[1] and BODY[2]: each entity at the path it has in the whole message."""
    a = maildissect.analyze(os.path.join(HERE, "captures", "dovecot", "dovecot-imap.pcap"))
    parts = a.files[a.files["direction"] == "retrieved"]
    fetched = {(p, n) for p, n in zip(parts["part"], parts["filename"].fillna(""))}
    assert {("1", ""), ("2", "chart.png")} <= fetched
    # a section that is a multipart, a forwarded message, or a message's body
    from maildissect.mime import place_entities
    for header, text, inner, want in (
            (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n", False, ["1", "2"], ["3.1", "3.2"]),
            (b"Content-Type: message/rfc822\r\n\r\n", False, ["1.1", "1.2"], ["3.1", "3.2"]),
            (b"Content-Type: image/png\r\n\r\n", False, ["1"], ["3"]),
            (b"\r\n", True, ["1", "2"], ["3.1", "3.2"])):
        m = Message(protocol="imap", session_id=1, ts=0.0, direction="retrieved")
        m.entities = [_att(p) for p in inner]
        place_entities(m, "3", header, text)
        assert [e.part for e in m.entities] == want, header


def _att(part):
    from maildissect.model import Attachment
    return Attachment(None, "text/plain", 0, "", "", "", part=part)


def test_an_empty_body_part_is_no_file():
    """A header-only message (an IMAP BODY.PEEK[HEADER], a TOP 0) lists no empty body; an empty
    attachment stays listed."""
    m, _ = _fill(b"Subject: headers only\r\nMessage-ID: <h@x>\r\n\r\n")
    assert m.entities == [] and m.subject == "headers only"
    m, _ = _fill(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n\r\n--b\r\n"
                 b"Content-Disposition: attachment; filename=empty.txt\r\n\r\n\r\n--b--\r\n")
    assert [(e.part, e.filename, e.size) for e in m.entities] == [("2", "empty.txt", 0)]
