"""Text that can always be written: bytes become record text here, and only here.

Every string maildissect shows was chosen by whoever sent the mail. This module
is where the project's decoders turn bytes (and the escapes of text formats)
into the strings of records, with two guarantees:

* **Charsets are resolved as mail readers and browsers resolve them**: a label
  is looked up in the WHATWG Encoding Standard's table (:func:`lookup`;
  ``latin1``, ``iso-8859-1`` and ``us-ascii`` name windows-1252, ``gb2312``
  names gbk, ``ks_c_5601-1987`` names euc-kr...) and decoded with that
  encoding's decoder. A label that names no text encoding there (``utf-7``,
  which the standard does not have, ``unicode_escape``, ``base64_codec``,
  ``rot13``, ``x-klingon``...) never reaches Python's codec registry: it is a
  problem for the caller to report, and the bytes are read as UTF-8 with
  replacement characters. Raw 8-bit text without a label (header bytes, protocol
  lines) is UTF-8 when it is valid UTF-8, else windows-1252
  (:func:`decode_8bit`), so a raw 0x92 shows as ’, never as the control U+0092.
* **The result encodes as UTF-8.** The decoders here cannot produce lone
  surrogates; strings that come from elsewhere (JSON ``\\ud800`` escapes) pass
  :func:`clean` or :func:`clean_json`, and :func:`scrub` repairs a whole record
  (the pipeline's last check before a record is kept). Every repair is reported
  so that the caller records an anomaly naming the field.

Pure functions of bytes and strings: no scapy, pandas or click.
"""

from __future__ import annotations

import binascii
import codecs
import dataclasses
import re
from urllib.parse import unquote_to_bytes

__all__ = [
    "ANOMALIES", "UNKNOWN_CHARSET", "INVALID_BYTES", "BAD_ENCODED_WORD", "INVALID_UNICODE", "LABELS", "lookup",
    "decode", "decode_8bit", "wire", "clean", "writable", "decode_words", "decode_mailbox", "percent_decode",
    "clean_json", "load_json", "scrub", "anomaly_name", "encode_8bit",
]

ANOMALIES = {
    "text_invalid_unicode": "text that cannot be written as UTF-8 (a lone surrogate, e.g. from a JSON \\ud800 "
                            "escape) was repaired with U+FFFD; the detail names the field",
    "text_unknown_charset": "a charset label that names no text encoding of the WHATWG Encoding Standard (utf-7, "
                            "unicode_escape, base64_codec, an unknown name): the bytes were read as UTF-8 with "
                            "replacement; the detail names the field and the label",
    "text_charset_error": "bytes that are not valid in their charset were decoded with replacement characters; "
                          "the detail names the field",
}

#: problem kinds returned by the decoders (callers turn them into their own anomaly names)
UNKNOWN_CHARSET = "unknown_charset"
INVALID_BYTES = "invalid_bytes"
BAD_ENCODED_WORD = "bad_encoded_word"
INVALID_UNICODE = "invalid_unicode"

_ANOMALY_OF = {UNKNOWN_CHARSET: "text_unknown_charset", INVALID_BYTES: "text_charset_error",
               INVALID_UNICODE: "text_invalid_unicode"}


def anomaly_name(kind: str) -> str:
    """The ``text_*`` anomaly name of a problem kind."""
    return _ANOMALY_OF.get(kind, "text_charset_error")


# ---------------------------------------------------------------------------
# The WHATWG label table (https://encoding.spec.whatwg.org/encodings.json),
# every encoding with every label.

_WHATWG = {
    "utf-8": "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8",
    "ibm866": "866 cp866 csibm866 ibm866",
    "iso-8859-2": "csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 iso_8859-2:1987 l2 latin2",
    "iso-8859-3": "csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 iso_8859-3:1988 l3 latin3",
    "iso-8859-4": "csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 iso_8859-4:1988 l4 latin4",
    "iso-8859-5": "csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 iso_8859-5 "
                  "iso_8859-5:1988",
    "iso-8859-6": "arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 iso-8859-6 iso-8859-6-e "
                  "iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 iso_8859-6:1987",
    "iso-8859-7": "csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 iso8859-7 iso88597 "
                  "iso_8859-7 iso_8859-7:1987 sun_eu_greek",
    "iso-8859-8": "csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 iso8859-8 iso88598 "
                  "iso_8859-8 iso_8859-8:1988 visual",
    "iso-8859-8-i": "csiso88598i iso-8859-8-i logical",
    "iso-8859-10": "csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6",
    "iso-8859-13": "iso-8859-13 iso8859-13 iso885913",
    "iso-8859-14": "iso-8859-14 iso8859-14 iso885914",
    "iso-8859-15": "csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9",
    "iso-8859-16": "iso-8859-16",
    "koi8-r": "cskoi8r koi koi8 koi8-r koi8_r",
    "koi8-u": "koi8-ru koi8-u",
    "macintosh": "csmacintosh mac macintosh x-mac-roman",
    "windows-874": "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874",
    "windows-1250": "cp1250 windows-1250 x-cp1250",
    "windows-1251": "cp1251 windows-1251 x-cp1251",
    "windows-1252": "ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1 "
                    "iso88591 iso_8859-1 iso_8859-1:1987 l1 latin1 us-ascii windows-1252 x-cp1252",
    "windows-1253": "cp1253 windows-1253 x-cp1253",
    "windows-1254": "cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 iso_8859-9:1989 l5 "
                    "latin5 windows-1254 x-cp1254",
    "windows-1255": "cp1255 windows-1255 x-cp1255",
    "windows-1256": "cp1256 windows-1256 x-cp1256",
    "windows-1257": "cp1257 windows-1257 x-cp1257",
    "windows-1258": "cp1258 windows-1258 x-cp1258",
    "x-mac-cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "gbk": "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk",
    "gb18030": "gb18030",
    "big5": "big5 big5-hkscs cn-big5 csbig5 x-x-big5",
    "euc-jp": "cseucpkdfmtjapanese euc-jp x-euc-jp",
    "iso-2022-jp": "csiso2022jp iso-2022-jp",
    "shift_jis": "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis",
    "euc-kr": "cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 ksc5601 ksc_5601 "
              "windows-949",
    "replacement": "csiso2022kr hz-gb-2312 iso-2022-cn iso-2022-cn-ext iso-2022-kr replacement",
    "utf-16be": "unicodefffe utf-16be",
    "utf-16le": "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16 utf-16le",
    "x-user-defined": "x-user-defined",
}

#: every WHATWG label -> its encoding's name
LABELS: dict[str, str] = {label: name for name, labels in _WHATWG.items() for label in labels.split()}

# Single-byte encodings: the Python codec whose table matches the WHATWG index,
# and the bytes where the index differs from Python's table. In the windows-*
# indexes every byte 0x80-0x9F that Windows leaves undefined maps to the C1
# control of the same value (Python's cp125x tables leave them undefined).
_SINGLE_BYTE = {
    "ibm866": ("cp866", False, {}),
    "iso-8859-2": ("iso8859_2", False, {}),
    "iso-8859-3": ("iso8859_3", False, {}),
    "iso-8859-4": ("iso8859_4", False, {}),
    "iso-8859-5": ("iso8859_5", False, {}),
    "iso-8859-6": ("iso8859_6", False, {}),
    "iso-8859-7": ("iso8859_7", False, {}),
    "iso-8859-8": ("iso8859_8", False, {}),
    "iso-8859-8-i": ("iso8859_8", False, {}),
    "iso-8859-10": ("iso8859_10", False, {}),
    "iso-8859-13": ("iso8859_13", False, {}),
    "iso-8859-14": ("iso8859_14", False, {}),
    "iso-8859-15": ("iso8859_15", False, {}),
    "iso-8859-16": ("iso8859_16", False, {}),
    "koi8-r": ("koi8_r", False, {}),
    "koi8-u": ("koi8_u", False, {0xAE: 0x045E, 0xBE: 0x040E}),  # WHATWG's KOI8-U is KOI8-RU
    "macintosh": ("mac_roman", False, {}),
    "windows-874": ("cp874", True, {}),
    "windows-1250": ("cp1250", True, {}),
    "windows-1251": ("cp1251", True, {}),
    "windows-1252": ("cp1252", True, {}),
    "windows-1253": ("cp1253", True, {}),
    "windows-1254": ("cp1254", True, {}),
    "windows-1255": ("cp1255", True, {}),
    "windows-1256": ("cp1256", True, {}),
    "windows-1257": ("cp1257", True, {}),
    "windows-1258": ("cp1258", True, {}),
    "x-mac-cyrillic": ("mac_cyrillic", False, {}),
}

# Multi-byte encodings: the Python codec that implements the WHATWG decoder
# (gbk is decoded as gb18030, big5 as Big5-HKSCS, shift_jis as windows-31j,
# euc-kr as windows-949, as the standard specifies).
_MULTI_BYTE = {
    "utf-8": "utf-8",
    "gbk": "gb18030",
    "gb18030": "gb18030",
    "big5": "big5hkscs",
    "euc-jp": "euc_jp",
    "iso-2022-jp": "iso2022_jp_ext",
    "shift_jis": "cp932",
    "euc-kr": "cp949",
    "utf-16be": "utf-16-be",
    "utf-16le": "utf-16-le",
}

#: labels that declare 7-bit text: 8-bit bytes under them are read by the 8-bit rule
_ASCII_LABELS = frozenset(("us-ascii", "ascii", "ansi_x3.4-1968"))
#: labels that only say "some 8-bit text" (RFC 1428 and what mailers invent): the 8-bit rule, no complaint
_UNDECLARED_LABELS = frozenset(("", "unknown-8bit", "x-unknown", "unknown", "8bit", "default"))

_WS = "\t\n\f\r "
_tables: dict[str, str] = {}


def lookup(label: str | None) -> str | None:
    """The WHATWG encoding a charset label names (``"windows-1252"`` for
    ``" Latin1 "``), or None when the label names none (``utf-7``,
    ``unicode_escape``, anything unknown). Surrounding quotes are ignored."""
    if not label or not label.isascii():
        return None
    return LABELS.get(label.strip(_WS).strip('"').strip(_WS).lower())


def _table(name: str) -> str:
    """The 256-character decoding table of a single-byte encoding (U+FFFE: undefined)."""
    table = _tables.get(name)
    if table is None:
        if name == "x-user-defined":
            table = "".join(chr(b) if b < 0x80 else chr(0xF780 + b - 0x80) for b in range(256))
        else:
            codec, c1, overrides = _SINGLE_BYTE[name]
            chars = []
            for b in range(256):
                try:
                    ch = bytes((b,)).decode(codec)
                except UnicodeDecodeError:
                    ch = chr(b) if c1 and 0x80 <= b < 0xA0 else "\ufffe"
                chars.append(chr(overrides[b]) if b in overrides else ch)
            table = "".join(chars)
        _tables[name] = table
    return table


def _run(name: str, data) -> tuple[str, str | None]:
    """Decode ``data`` with the WHATWG encoding ``name``: (text, problem)."""
    if name == "replacement":
        # the standard's guard against ISO-2022-KR/CN and HZ smuggling markup:
        # the whole input is one replacement character
        return ("\ufffd", INVALID_BYTES) if len(data) else ("", None)
    codec = _MULTI_BYTE.get(name)
    if codec is not None:
        try:
            return str(data, codec), None
        except UnicodeDecodeError:
            try:
                return str(data, codec, "replace"), INVALID_BYTES
            except (UnicodeError, LookupError, ValueError, TypeError):  # pragma: no cover - defensive
                return str(data, "utf-8", "replace"), INVALID_BYTES
    table = _table(name)
    try:
        return codecs.charmap_decode(data, "strict", table)[0], None
    except UnicodeDecodeError:
        return codecs.charmap_decode(data, "replace", table)[0], INVALID_BYTES


def decode_8bit(data) -> tuple[str, bool]:
    """Unlabelled 8-bit text: ``(text, True)`` when it is valid UTF-8, else
    windows-1252 as WHATWG decodes it and ``(text, False)``.

    windows-1252 maps every byte to a character (its five undefined bytes to the
    C1 controls of the same value), so nothing is lost and nothing fails."""
    try:
        return str(data, "utf-8"), True
    except UnicodeDecodeError:
        return codecs.charmap_decode(data, "strict", _table("windows-1252"))[0], False


def wire(data) -> str:
    """Protocol bytes (a command line, a reply, a header value) as text: the 8-bit rule."""
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError:
        return codecs.charmap_decode(data, "strict", _table("windows-1252"))[0]


def encode_8bit(text: str) -> bytes:
    """Bytes for text that :func:`wire` may have produced from a non-UTF-8 line:
    windows-1252 when every character has a byte there, else UTF-8."""
    try:
        return codecs.charmap_encode(text, "strict", _encoding_map())[0]
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


_enc_map: list = []


def _encoding_map():
    if not _enc_map:
        _enc_map.append(codecs.charmap_build(_table("windows-1252")))
    return _enc_map[0]


def decode(data, label: str | None, bom: bool = False) -> tuple[str, str | None]:
    """Bytes in a declared charset -> ``(text, problem)``.

    ``problem`` is None, :data:`UNKNOWN_CHARSET` (the label names no text
    encoding: the bytes were read as UTF-8 with replacement) or
    :data:`INVALID_BYTES` (bytes not valid in the charset were replaced). A
    missing label, or one that only says "8-bit" (``unknown-8bit``), reads the
    bytes by the 8-bit rule (:func:`decode_8bit`); ``us-ascii`` text that holds
    8-bit bytes too, with :data:`INVALID_BYTES` when they are not UTF-8.

    ``bom``: the bytes are a whole document (a text part, a JSON body): a byte
    order mark overrides the label and is dropped, as in the standard's
    decode. Fields and words (``bom=False``) keep U+FEFF as a character.
    """
    if bom:
        head = bytes(data[:3])
        if head == b"\xef\xbb\xbf":
            return _run("utf-8", memoryview(data)[3:])
        if head[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return _run("utf-16be" if head[:2] == b"\xfe\xff" else "utf-16le", memoryview(data)[2:])
    norm = label.strip(_WS).strip('"').strip(_WS).lower() if label and label.isascii() else label
    if not norm or norm in _UNDECLARED_LABELS:
        return decode_8bit(data)[0], None
    if norm in _ASCII_LABELS:
        text, utf8 = decode_8bit(data)
        return text, (None if utf8 else INVALID_BYTES)
    name = LABELS.get(norm) if isinstance(norm, str) and norm.isascii() else None
    if name is None:
        return str(data, "utf-8", "replace"), UNKNOWN_CHARSET
    return _run(name, data)


# ---------------------------------------------------------------------------
# Strings that did not come from a decoder here

_SURROGATE = re.compile("[\ud800-\udfff]")


def writable(text: str) -> bool:
    """True when ``text`` encodes as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean(text: str) -> tuple[str, bool]:
    """``(text with every lone surrogate replaced by U+FFFD, whether any was)``."""
    if writable(text):
        return text, False
    return _SURROGATE.sub("\ufffd", text), True


def clean_json(value, limit: int = 5) -> tuple[object, list[str]]:
    """A parsed JSON document with its strings (keys too) cleaned, and the paths
    (``$.a[0].b``) of the first ``limit`` repaired ones (one more entry, ``...``,
    says there were more). Only called when the text held a surrogate escape."""
    paths: list[str] = []

    def fix(s: str, path: str) -> str:
        out, repaired = clean(s)
        if repaired:
            if len(paths) < limit:
                paths.append(path)
            elif len(paths) == limit:
                paths.append("...")
        return out

    root = [value]
    stack = [(root, 0, "$")]
    while stack:
        container, key, path = stack.pop()
        node = container[key]
        if isinstance(node, str):
            container[key] = fix(node, path)
        elif isinstance(node, list):
            for i in range(len(node)):
                stack.append((node, i, f"{path}[{i}]"))
        elif isinstance(node, dict):
            if not all(writable(k) for k in node):
                fixed = {}
                for k, v in node.items():
                    fixed[fix(k, f"{path}.{k!a}")] = v
                node.clear()
                node.update(fixed)
            for k in node:
                stack.append((node, k, f"{path}.{k}" if k.isidentifier() else f"{path}[{k!a}]"))
    return root[0], paths


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def load_json(data) -> tuple[object, list[tuple[str, str]]]:
    """Parse a JSON document (bytes) into writable values: ``(value, problems)``.

    The bytes are UTF-8 (a byte order mark decides otherwise); invalid bytes are
    replaced (:data:`INVALID_BYTES`, detail ``invalid UTF-8``). ``\\ud800``
    escapes that pair with nothing are replaced by U+FFFD in every string and
    key (``("invalid_unicode", "$.path, ...")``). Raises what :func:`json.loads`
    raises (ValueError, RecursionError) for a document that does not parse.
    """
    import json
    text, problem = decode(data, "utf-8", bom=True)
    problems = [(INVALID_BYTES, "invalid UTF-8")] if problem else []
    value = json.loads(text)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        value, paths = clean_json(value)
        if paths:
            problems.append((INVALID_UNICODE, ", ".join(paths)[:200]))
    return value, problems


# ---------------------------------------------------------------------------
# RFC 2047 encoded words, IMAP mailbox names, percent-encoding

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?(.*?)\?=")
_B64_WORD = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_MUTF7_B64 = re.compile(r"[A-Za-z0-9+/]+")


def _word_bytes(encoding: str, payload: str) -> bytes | None:
    """The bytes of an encoded word's text, or None when they cannot be decoded."""
    if encoding in "bB":
        if not payload.isascii():
            return None
        raw = payload.encode("ascii").replace(b" ", b"").replace(b"\t", b"")
        if not _B64_WORD.fullmatch(raw):
            return None
        raw = raw.rstrip(b"=")
        if len(raw) % 4 == 1:
            return None
        try:
            return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            return None
    # Q: "_" is a space, "=XX" a byte; 8-bit characters (not allowed) are kept as UTF-8
    return binascii.a2b_qp(payload.encode("utf-8", "surrogatepass"), header=True)


def decode_words(value: str) -> tuple[str, list[tuple[str, str]]]:
    """Decode RFC 2047 encoded words in place: ``(text, problems)``.

    Whitespace between adjacent encoded words is dropped (RFC 2047 section
    6.2), the rest is kept. A word's charset may carry an RFC 2231 language
    (``utf-8*en``). Problems are ``(kind, detail)``: :data:`UNKNOWN_CHARSET`
    and :data:`INVALID_BYTES` with the label, :data:`BAD_ENCODED_WORD` with the
    word (kept as written).
    """
    problems: list[tuple[str, str]] = []
    if "=?" not in value:
        return value, problems
    out: list[str] = []
    last = 0
    after_word = False
    for m in _ENCODED_WORD.finditer(value):
        between = value[last:m.start()]
        if not (after_word and not between.strip()):
            out.append(between)
        label = m.group(1).split("*", 1)[0]
        raw = _word_bytes(m.group(2), m.group(3))
        if raw is None:
            problems.append((BAD_ENCODED_WORD, m.group(0)[:80]))
            out.append(m.group(0))
        else:
            text, problem = decode(raw, label)
            if problem is not None:
                problems.append((problem, label[:60]))
            out.append(text)
        after_word = True
        last = m.end()
    out.append(value[last:])
    return "".join(out), problems


def decode_mailbox(name: str) -> tuple[str, bool]:
    """IMAP's modified UTF-7 (RFC 3501 5.1.3; ``&AOQ-`` -> ``ä``, ``&-`` -> ``&``):
    ``(text, valid)``. A name that is not valid modified UTF-7 (bad base64, an
    unpaired surrogate, no closing ``-``) is returned as written."""
    if "&" not in name:
        return name, True
    out = []
    i = 0
    n = len(name)
    while i < n:
        c = name[i]
        if c != "&":
            out.append(c)
            i += 1
            continue
        j = name.find("-", i + 1)
        if j < 0:
            return name, False
        if j == i + 1:
            out.append("&")
        else:
            b64 = name[i + 1:j].replace(",", "/")
            if not _MUTF7_B64.fullmatch(b64) or len(b64) % 4 == 1:
                return name, False
            try:
                # strict UTF-16: an unpaired surrogate or an odd byte makes the name invalid
                out.append(binascii.a2b_base64(b64.encode("ascii") + b"=" * (-len(b64) % 4)).decode("utf-16-be"))
            except (binascii.Error, UnicodeError, ValueError):
                return name, False
        i = j + 1
    return "".join(out), True


def percent_decode(data, label: str | None = "utf-8", plus: bool = False) -> tuple[str, str | None]:
    """``%XX`` escapes (and ``+`` as space when ``plus``) -> ``(text, problem)``,
    the bytes decoded in ``label`` (UTF-8 as URLs and forms use)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if plus:
        data = data.replace(b"+", b" ")
    if b"%" in data:
        data = unquote_to_bytes(data)
    return decode(data, label)


# ---------------------------------------------------------------------------
# The last check on records

_PLANS: dict[type, tuple[str, ...]] = {}
_CHECKS: dict[type, object] = {}


def _plan(cls) -> tuple[str, ...]:
    """The fields of a record class that may hold text (str, lists, nested records)."""
    plan = _PLANS.get(cls)
    if plan is None:
        try:
            fields = dataclasses.fields(cls)
        except TypeError:
            fields = ()
        plan = tuple(f.name for f in fields
                     if any(word in str(f.type) for word in ("str", "list", "tuple", "dict"))
                     or _nested(str(f.type)))
        _PLANS[cls] = plan
    return plan


def _nested(kind: str) -> bool:
    """A field annotation naming one record class, optionally None (``Attachment | None``)."""
    name = kind.replace(" ", "").removesuffix("|None")
    return name.isidentifier() and name[:1].isupper()


def _check_for(cls):
    """A function ``check(record) -> bool``: True when every string of a record
    of ``cls`` encodes as UTF-8. It is the fast path of :func:`scrub`, run on
    every record the pipeline keeps, so it is generated per class (as the
    dataclasses module generates ``__init__``) with the field names written
    out: one attribute load and one ``str.isascii()`` per ASCII string. A
    field of a shape it does not know answers False, and the careful path
    decides."""
    lines = ["def check(r):"]
    for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
        if f.name not in _plan(cls):
            continue
        kind, name = str(f.type).replace(" ", ""), f.name
        if kind in ("str", "str|None"):
            lines.append(f"    v = r.{name}\n    if v is not None and not v.isascii() and not _w(v): return False")
        elif kind == "list[str]":
            lines.append(f"    for v in r.{name}:\n        if not v.isascii() and not _w(v): return False")
        elif kind.startswith("list[tuple[") and set(kind[11:-2].split(",")) == {"str"}:
            lines.append(f"    for t in r.{name}:\n        for v in t:\n"
                         f"            if not v.isascii() and not _w(v): return False")
        elif kind.startswith("list[") and "[" not in kind[5:]:
            lines.append(f"    for x in r.{name}:\n        if not _all(x): return False")
        elif _nested(kind):  # one nested record, or None (HttpRequest.response_file)
            lines.append(f"    v = r.{name}\n    if v is not None and not _all(v): return False")
        else:
            lines.append("    return False")
            break
    lines.append("    return True")
    namespace = {"_w": writable, "_all": _all_writable}
    exec("\n".join(lines), namespace)  # the names come from our own dataclasses, never from input
    return namespace["check"]


def _all_writable(record) -> bool:
    check = _CHECKS.get(type(record))
    if check is None:
        check = _CHECKS[type(record)] = _check_for(type(record))
    try:
        return check(record)
    except (AttributeError, TypeError):  # a None in a list, a str method on another type
        return False


def _scrub_value(value, path: str, bad: list[str]):
    """``value`` repaired (or the same object), repaired paths appended to ``bad``."""
    t = type(value)
    if t is str:
        if value.isascii() or writable(value):
            return value
        bad.append(path)
        return _SURROGATE.sub("\ufffd", value)
    if t is list:
        for i, item in enumerate(value):
            fixed = _scrub_value(item, path, bad)
            if fixed is not item:
                value[i] = fixed
        return value
    if t is tuple:
        fixed = tuple(_scrub_value(item, path, bad) for item in value)
        return fixed if any(a is not b for a, b in zip(fixed, value)) else value
    if hasattr(t, "__dataclass_fields__"):
        _scrub_fields(value, path + ".", bad)
    return value


def _scrub_fields(record, prefix: str, bad: list[str]) -> None:
    for name in _plan(type(record)):
        value = getattr(record, name)
        if value is None or (type(value) is str and value.isascii()):
            continue
        fixed = _scrub_value(value, prefix + name.rstrip("_"), bad)
        if fixed is not value:
            setattr(record, name, fixed)


def scrub(record) -> list[str]:
    """Repair every string of a record (dataclass) in place, list elements,
    header tuples and nested records included; returns the repaired fields
    (``subject``, ``attachments.filename``), empty when all was writable."""
    if _all_writable(record):
        return []
    bad: list[str] = []
    _scrub_fields(record, "", bad)
    return bad
