"""maildissect.text: charset labels as the WHATWG Encoding Standard resolves them,
decoders that never let a Python codec that is not a character set near the
bytes, and strings that always encode as UTF-8."""

from __future__ import annotations

import base64
import codecs
import json
from encodings.aliases import aliases as _python_aliases

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maildissect import mime, text
from maildissect.config import Config
from maildissect.model import Attachment, Command, Message, Received
from maildissect.protocols import forms, sasl
from maildissect.protocols.imap_grammar import _decode_words as imap_words
from maildissect.text import BAD_ENCODED_WORD, INVALID_BYTES, UNKNOWN_CHARSET


def utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- the label table -----------------------------------------------------------------------------

@pytest.mark.parametrize("label, name", [
    ("latin1", "windows-1252"), ("ISO-8859-1", "windows-1252"), ("us-ascii", "windows-1252"),
    ("ascii", "windows-1252"), (" \tLatin1\r\n", "windows-1252"), ('"iso-8859-1"', "windows-1252"),
    ("cp819", "windows-1252"), ("gb2312", "gbk"), ("GB_2312-80", "gbk"), ("chinese", "gbk"),
    ("gb18030", "gb18030"), ("ks_c_5601-1987", "euc-kr"), ("windows-949", "euc-kr"),
    ("iso-2022-kr", "replacement"), ("hz-gb-2312", "replacement"), ("iso-2022-cn-ext", "replacement"),
    ("utf-16", "utf-16le"), ("ucs-2", "utf-16le"), ("utf-16be", "utf-16be"), ("unicodefffe", "utf-16be"),
    ("x-user-defined", "x-user-defined"), ("utf8", "utf-8"), ("unicode-1-1-utf-8", "utf-8"),
    ("tis-620", "windows-874"), ("iso-8859-9", "windows-1254"), ("koi8-ru", "koi8-u"),
    ("ms932", "shift_jis"), ("sjis", "shift_jis"), ("big5-hkscs", "big5"), ("logical", "iso-8859-8-i"),
    ("x-mac-ukrainian", "x-mac-cyrillic"), ("latin2", "iso-8859-2"),
])
def test_whatwg_labels(label, name):
    assert text.lookup(label) == name


@pytest.mark.parametrize("label", [
    "utf-7", "UTF-7", "unicode_escape", "raw_unicode_escape", "base64_codec", "base64", "rot13", "rot_13",
    "zlib_codec", "hex_codec", "bz2_codec", "quopri_codec", "uu_codec", "idna", "punycode", "undefined",
    "mbcs", "utf-32", "cp437", "iso646-us", "x-klingon", "", None, "la\u0130tin1", "\u212aoi8-r", "utf-8\x00",
])
def test_labels_that_name_no_text_encoding(label):
    assert text.lookup(label) is None


def test_every_whatwg_label_has_a_decoder():
    for label, name in text.LABELS.items():
        out, problem = text.decode(bytes(range(256)), label)
        assert utf8_ok(out), label
        assert problem in (None, INVALID_BYTES), label
    # the table is the standard's: 40 encodings (the replacement one included), 228 labels
    assert len(set(text.LABELS.values())) == 40 and len(text.LABELS) == 228


# -- decode --------------------------------------------------------------------------------------

def test_non_text_codecs_never_run():
    # Python's utf-7 turns "+2D0-" into a lone surrogate; WHATWG has no utf-7
    assert text.decode(b"hi+2D0-there", "utf-7") == ("hi+2D0-there", UNKNOWN_CHARSET)
    assert text.decode(b"a\\ud800", "unicode_escape") == ("a\\ud800", UNKNOWN_CHARSET)
    assert text.decode(b"YWJj", "base64_codec") == ("YWJj", UNKNOWN_CHARSET)
    assert text.decode(b"uryyb", "rot13") == ("uryyb", UNKNOWN_CHARSET)
    assert text.decode(b"x\x9c\xff", "zlib_codec") == ("x\ufffd\ufffd", UNKNOWN_CHARSET)


def test_windows_1252_as_whatwg_decodes_it():
    assert text.decode(b"it\x92s", "latin1") == ("it\u2019s", None)
    assert text.decode(b"\x80\x9f", "iso-8859-1") == ("\u20ac\u0178", None)
    # the five bytes Windows leaves undefined are the C1 controls of the same value
    assert text.decode(b"\x81\x8d\x8f\x90\x9d", "windows-1252") == ("\x81\x8d\x8f\x90\x9d", None)
    table = "".join(text.decode(bytes([b]), "windows-1252")[0] for b in range(256))
    assert len(table) == 256 and len(set(table)) == 256  # every byte is a character of its own


def test_single_byte_indexes():
    assert text.decode(b"\x81\x98", "windows-1250") == ("\x81\x98", None)
    assert text.decode(b"\xaa", "windows-1253") == ("\ufffd", INVALID_BYTES)  # undefined in the index
    assert text.decode(b"\xae\xbe", "koi8-u") == ("\u045e\u040e", None)  # KOI8-RU
    assert text.decode(b"\xc0", "koi8-r") == ("\u044e", None)
    assert text.decode(b"\x80\xff", "x-user-defined") == ("\uf780\uf7ff", None)


def test_multi_byte_encodings():
    assert text.decode("你好".encode("gbk"), "gb2312") == ("你好", None)
    assert text.decode("가".encode("cp949"), "ks_c_5601-1987") == ("가", None)
    assert text.decode("日本".encode("cp932"), "shift_jis") == ("日本", None)
    assert text.decode("日本".encode("iso2022_jp"), "iso-2022-jp") == ("日本", None)
    assert text.decode("ab".encode("utf-16-le"), "utf-16") == ("ab", None)
    # a lone surrogate in UTF-16 is replaced, never kept
    assert text.decode(b"\x00\xd8a\x00", "utf-16le") == ("\ufffda", INVALID_BYTES)
    # UTF-8 surrogates (CESU) are invalid bytes, replaced one per byte
    assert text.decode(b"a\xed\xa0\x80", "utf-8") == ("a\ufffd\ufffd\ufffd", INVALID_BYTES)


def test_replacement_encoding():
    assert text.decode(b"\x1b$)C\x0e!!", "iso-2022-kr") == ("\ufffd", INVALID_BYTES)
    assert text.decode(b"", "hz-gb-2312") == ("", None)


def test_undeclared_and_ascii_labels_use_the_8bit_rule():
    assert text.decode("naïve".encode(), None) == ("naïve", None)
    assert text.decode(b"it\x92s", None) == ("it\u2019s", None)
    assert text.decode(b"it\x92s", "unknown-8bit") == ("it\u2019s", None)
    assert text.decode("naïve".encode(), "us-ascii") == ("naïve", None)
    assert text.decode(b"it\x92s", "us-ascii") == ("it\u2019s", INVALID_BYTES)


def test_byte_order_mark_overrides_the_label_of_a_document():
    assert text.decode(b"\xef\xbb\xbfcaf\xc3\xa9", "iso-8859-1", bom=True) == ("café", None)
    assert text.decode(b"\xff\xfea\x00", "windows-1252", bom=True) == ("a", None)
    assert text.decode(b"\xfe\xff\x00a", "utf-8", bom=True) == ("a", None)
    assert text.decode(b"\xff\xfea\x00", None, bom=True) == ("a", None)
    # in a field or a word it is a character like any other (a form value cannot switch to UTF-16)
    assert text.decode(b"\xff\xfea\x00", "utf-8") == ("\ufffd\ufffda\x00", INVALID_BYTES)
    assert text.decode(b"\xef\xbb\xbfa", "utf-8") == ("\ufeffa", None)


def test_decode_8bit_and_wire():
    assert text.decode_8bit("café".encode()) == ("café", True)
    assert text.decode_8bit(b"caf\xe9 \x92") == ("café \u2019", False)
    assert text.wire(b"\x92quoted\x94") == "\u2019quoted\u201d"
    assert text.wire(memoryview(b"abc")) == "abc"
    assert text.encode_8bit(text.wire(bytes(range(256)))) == bytes(range(256))
    assert text.encode_8bit("\u0416") == "\u0416".encode()


# -- RFC 2047, IMAP names, percent-encoding, JSON --------------------------------------------------

def test_encoded_words():
    assert text.decode_words("=?ISO-8859-1?Q?Andr=E9?= Pirard") == ("André Pirard", [])
    assert text.decode_words("=?UTF-8?B?w6lsw6h2ZQ==?= =?UTF-8?Q?_caf=C3=A9?= and more") == ("élève café and more", [])
    assert text.decode_words("=?utf-8*en?q?hi?=") == ("hi", [])
    assert text.decode_words("=?windows-1252?q?it=92s?=") == ("it\u2019s", [])
    assert text.decode_words("=?utf-7?q?hi+2D0-there?=") == ("hi+2D0-there", [(UNKNOWN_CHARSET, "utf-7")])
    out, problems = text.decode_words("=?unicode_escape?q?a\\ud800?=")
    assert out == "a\\ud800" and problems == [(UNKNOWN_CHARSET, "unicode_escape")]
    out, problems = text.decode_words("x =?utf-8?b?!!!?= y")
    assert out == "x =?utf-8?b?!!!?= y" and problems == [(BAD_ENCODED_WORD, "=?utf-8?b?!!!?=")]


def test_mailbox_names():
    assert text.decode_mailbox("Entw&APw-rfe") == ("Entwürfe", True)
    assert text.decode_mailbox("&ZeVnLIqe-") == ("日本語", True)
    assert text.decode_mailbox("A&-B") == ("A&B", True)
    # broken modified UTF-7: an unpaired surrogate, bad base64, no closing "-"
    for name in ("&2AA-", "&2D3YPQ-x", "&AOQ", "&*&-", "&A-", "&\u00e9-"):
        out, valid = text.decode_mailbox(name)
        assert out == name and not valid and utf8_ok(out)


def test_percent_decoding():
    assert text.percent_decode("a%ED%A0%80b") == ("a\ufffd\ufffd\ufffdb", INVALID_BYTES)
    assert text.percent_decode(b"x+y%20z", plus=True) == ("x y z", None)
    assert text.percent_decode("%E9t%E9", "iso-8859-1") == ("été", None)
    assert text.percent_decode("%2B", "utf-7") == ("+", UNKNOWN_CHARSET)


def test_clean_json():
    value = json.loads('{"a": ["ok", "x\\ud800"], "\\udc00k": {"s": "\\ud83d\\ude00"}}')
    fixed, paths = text.clean_json(value)
    assert fixed == {"a": ["ok", "x\ufffd"], "\ufffdk": {"s": "\U0001F600"}}
    assert sorted(paths) == ["$.'\\udc00k'", "$.a[1]"]
    many, paths = text.clean_json(["\ud800"] * 9)
    assert many == ["\ufffd"] * 9 and len(paths) == 6 and paths[-1] == "..."


def test_clean():
    assert text.clean("plain") == ("plain", False)
    assert text.clean("é\ud800\udfff") == ("é\ufffd\ufffd", True)
    assert not text.writable("\udcff") and text.writable("\U0001F600")


# -- the last check on records -------------------------------------------------------------------

def test_scrub_repairs_every_string_of_a_record():
    msg = Message("smtp", 1, 0.0, "sent", subject="hi \ud83d", to=["ok", "b\udc00d <x@y>"],
                  headers=[("Subject", "hi \ud83d"), ("X", "fine")],
                  attachments=[Attachment("a\ud800.txt", "text/plain", 1, "", "", "")],
                  received=[Received(from_="h\ud800", raw="r")])
    bad = text.scrub(msg)
    assert sorted(bad) == ["attachments.filename", "headers", "received.from", "subject", "to"]
    assert msg.subject == "hi \ufffd" and msg.to == ["ok", "b\ufffdd <x@y>"]
    assert msg.headers == [("Subject", "hi \ufffd"), ("X", "fine")]
    assert msg.attachments[0].filename == "a\ufffd.txt" and msg.received[0].from_ == "h\ufffd"
    assert text.scrub(msg) == []
    cmd = Command(1, "smtp", 0.0, "HELO", "h\u00e9llo")
    assert text.scrub(cmd) == [] and cmd.argument == "h\u00e9llo"


def test_codecs_registry_is_not_consulted_for_unknown_labels(monkeypatch):
    def refuse(name):
        raise AssertionError(f"codecs.lookup({name!r})")
    monkeypatch.setattr(codecs, "lookup", refuse)
    for label in ("utf-7", "unicode_escape", "base64_codec", "rot13"):
        assert text.decode(b"abc", label) == ("abc", UNKNOWN_CHARSET)


# -- property: whatever the bytes and the label, every decoder gives writable text -----------------

PYTHON_CODECS = sorted(set(_python_aliases) | set(_python_aliases.values()) | {
    "utf-7", "unicode_escape", "raw_unicode_escape", "base64_codec", "rot13", "zlib_codec", "hex_codec",
    "bz2_codec", "quopri_codec", "uu_codec", "idna", "punycode", "utf-32", "utf-16", "undefined", "mbcs",
    "palmos", "cp65001", "utf_8_sig", "charmap", "unicode_internal"})
LABELS = st.one_of(st.sampled_from(sorted(text.LABELS)), st.sampled_from(PYTHON_CODECS),
                   st.text(max_size=12), st.none())
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=64), LABELS, st.booleans())
def test_decode_always_gives_writable_text(data, label, bom):
    out, problem = text.decode(data, label, bom=bom)
    assert utf8_ok(out) and problem in (None, UNKNOWN_CHARSET, INVALID_BYTES)
    assert utf8_ok(text.decode_8bit(data)[0]) and utf8_ok(text.wire(data))


@PROPERTY
@given(st.binary(max_size=48), LABELS, st.sampled_from("bBqQ"), st.text(max_size=8))
def test_encoded_words_always_give_writable_text(data, label, encoding, around):
    label = (label or "").replace("?", "")
    payload = (base64.b64encode(data).decode() if encoding in "bB"
               else "".join(f"={b:02X}" for b in data))
    value = f"{around}=?{label}?{encoding}?{payload}?={around}"
    for decoded in (text.decode_words(value)[0], imap_words(value)):
        assert utf8_ok(decoded)


@PROPERTY
@given(st.text(max_size=24), st.binary(max_size=24), LABELS)
def test_names_urls_and_parameters_always_give_writable_text(name, data, label):
    assert utf8_ok(text.decode_mailbox("&" + name + "-")[0])
    quoted = "".join(f"%{b:02X}" for b in data)
    assert utf8_ok(text.percent_decode(quoted, label, plus=True)[0])
    fields, _ = forms.parse_urlencoded(b"a=" + data + b"&" + quoted.encode() + b"=1", 100)
    assert all(utf8_ok(k) and utf8_ok(v) for k, v in fields)
    _, params = forms.header_params(f"attachment; filename*={label or ''}''{quoted}", [])
    assert all(utf8_ok(v) for v in params.values())
    assert utf8_ok(forms.decode_text(data))
    plain = sasl.decode_plain(base64.b64encode(data + b"\x00" + data + b"\x00pw"))
    assert plain is None or all(v is None or utf8_ok(v) for v in plain)


@PROPERTY
@given(st.lists(st.one_of(st.integers(0xD800, 0xDFFF).map(lambda c: f"\\u{c:04x}"),
                          st.text(alphabet="ab\u00e9", max_size=3)), max_size=8), st.binary(max_size=8))
def test_json_strings_are_always_writable(pieces, junk):
    body = ('{"k' + "".join(pieces) + '": ["' + "".join(pieces) + '"]}').encode()
    value, problems = text.load_json(body)
    assert all(utf8_ok(k) and all(utf8_ok(s) for s in v) for k, v in value.items())
    try:
        text.load_json(b'"' + junk + b'"')
    except ValueError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=40), LABELS, LABELS, st.binary(max_size=16))
def test_messages_are_always_writable(data, charset, param_charset, raw_header):
    quoted = "".join(f"%{b:02X}" for b in data[:16])
    raw = (b"Subject: " + raw_header.replace(b"\r", b"").replace(b"\n", b"") + b" =?"
           + (charset or "x").replace("?", "").encode("utf-8", "replace") + b"?b?" + base64.b64encode(data) + b"?=\r\n"
           + b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Type: text/plain; charset=\""
           + (charset or "").replace('"', "").encode("utf-8", "replace") + b"\"\r\n\r\n" + data + b"\r\n--z\r\n"
           + b"Content-Disposition: attachment; filename*=" + (param_charset or "").replace("'", "").encode(
               "utf-8", "replace") + b"''" + quoted.encode() + b"\r\n\r\nx\r\n--z--\r\n")
    msg = Message("smtp", 1, 0.0, "sent")
    found = mime.fill_message(msg, raw, Config())
    assert text.scrub(msg) == []
    assert all(utf8_ok(a.detail) for a in found)


def test_the_module_is_pure():
    """Like tcp.py and mime.py, text.py is a pure function of bytes and strings (DESIGN.md)."""
    import ast
    from pathlib import Path
    tree = ast.parse((Path(__file__).resolve().parent.parent / "maildissect" / "text.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}
    assert imported <= {"__future__", "binascii", "codecs", "dataclasses", "re", "urllib", "json"}, imported
