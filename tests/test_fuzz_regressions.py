"""Regression tests: every crash, hang or limit breach found by fuzzing or the malformed suite.

Each test names the input that broke maildissect and checks the fixed
behaviour. The crashers the atheris targets saved are also kept as files
under fuzz/regressions/<target>/ and replayed through the same harness
(fuzz/harness.py) at the end of this module.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fuzz import harness
from maildissect.capture.files import CaptureReader
from tests.malformed.packets import pcapng_block, pcapng_idb, pcapng_shb

REGRESSIONS = Path(harness.__file__).resolve().parent / "regressions"


def read(data: bytes):
    reader = CaptureReader.from_stream(io.BytesIO(data), "test")
    return list(reader), [a.name for a in reader.anomalies]


@pytest.mark.parametrize("block", [pcapng_block(2, b"\0" * 4), pcapng_block(3, b""), pcapng_block(1, b"")],
                         ids=["packet-block", "simple-packet-block", "interface-block"])
def test_pcapng_block_shorter_than_its_fixed_fields(block):
    """A short obsolete Packet Block at the end of a file raised struct.error out of the reader;
    short Simple Packet and Interface Description blocks read the block trailer as fields."""
    frames, anomalies = read(pcapng_shb() + pcapng_idb() + block)
    assert frames == [] and anomalies == ["capture_bad_block"]


def _replay_cases():
    if not REGRESSIONS.is_dir():
        return []
    return sorted((p.parent.name, p) for p in REGRESSIONS.glob("*/*") if p.is_file())


@pytest.mark.parametrize("target,path", _replay_cases(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_saved_crashers(target, path):
    """Every input a fuzz target once failed on runs clean through that target now."""
    harness.TARGETS[target](path.read_bytes())


def test_truncated_gzip_keeps_what_was_decompressed(tmp_path):
    """A gzip stream cut short lost every frame of the block being read (the whole file when
    smaller than 1 MiB): GzipFile.read(n) raises EOFError instead of returning what it had."""
    import gzip

    from tests.malformed.packets import Capture, Conversation
    cap = Capture()
    for k in range(30):
        Conversation(cap, cport=40000 + k).open().dialogue(b"220 mx\r\n", b"EHLO x\r\n", b"250 ok\r\n").close()
    data = gzip.compress(cap.pcap(), mtime=0)
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    reader = CaptureReader(str(path))
    frames = list(reader)
    assert len(frames) > len(cap.frames) // 3
    assert [a.name for a in reader.anomalies] == ["capture_truncated_record"]


def _smtp_records(chunks, max_line=256, max_message_size=4096):
    from maildissect.config import Config, Limits
    from maildissect.protocols.smtp import SmtpDissector
    from tests.helpers import new_session
    d = SmtpDissector(new_session("smtp"), Config(limits=Limits(max_line=max_line,
                                                               max_message_size=max_message_size)))
    out = []
    for side, data in chunks:
        out += d.feed(side, data, 1.0)
    return out + d.close(2.0, "fin")


def test_smtp_overlong_line_detail_does_not_depend_on_chunking():
    """The smtp_line_too_long detail quoted the buffer's first bytes, which after an earlier
    over-long line were the discarded tail of that line, not the start of the new one."""
    long1, long2 = b"A" * 300 + b"\n", b"GOOGLE " + b"B" * 300 + b"\n"
    whole = _smtp_records([(1, b"220 mx\r\n"), (0, long1 + long2)])
    split = _smtp_records([(1, b"220 mx\r\n"), (0, long1[:280]), (0, long1[280:] + long2)])
    assert whole == split
    details = [r.detail for r in whole if getattr(r, "name", "") == "smtp_line_too_long"]
    assert details[1].endswith("('GOOGLE')")


def test_smtp_size_limit_and_bare_lf_dot_reported_in_stream_order():
    """With one chunk, a bare-LF dot after the size limit was reported before the limit."""
    data = b"Subject: x\r\n\r\n" + b"y" * 5000 + b"\n.\nmore\r\n.\r\n"
    head = [(1, b"220 mx\r\n"), (0, b"MAIL FROM:<a@x>\r\n"), (1, b"250 ok\r\n"), (0, b"RCPT TO:<b@y>\r\n"),
            (1, b"250 ok\r\n"), (0, b"DATA\r\n"), (1, b"354 go\r\n")]
    whole = _smtp_records(head + [(0, data)])
    split = _smtp_records(head + [(0, data[:4500]), (0, data[4500:])])
    assert whole == split
    names = [r.name for r in whole if type(r).__name__ == "Anomaly"]
    assert names.index("smtp_message_too_large") < names.index("smtp_bare_lf_dot")


def test_imap_plaintext_after_starttls_detail_does_not_depend_on_chunking():
    """A client that talked on after STARTTLS without a go-ahead: the anomaly counted the bytes
    buffered when the hold limit was passed, which depends on the segmentation."""
    from maildissect.config import Config, Limits
    from maildissect.protocols.imap import ImapDissector
    from tests.helpers import new_session

    def run(chunks):
        d = ImapDissector(new_session("imap"), Config(limits=Limits(max_line=256)))
        out = []
        for side, data in chunks:
            out += d.feed(side, data, 1.0)
        return out + d.close(2.0, "fin")
    head = [(1, b"* OK ready\r\n"), (0, b"a1 STARTTLS\r\n")]
    plain = b"a2 LOGIN alice wonderland\r\n" * 20
    whole, split = run(head + [(0, plain)]), run(head + [(0, plain[:200]), (0, plain[200:])])
    assert whole == split
    assert any(getattr(r, "name", "") == "imap_unexpected_response" and r.detail.startswith("over 256 ")
               for r in whole)


def test_half_open_connections_make_no_dissector(monkeypatch):
    """A SYN flood on a mail port created an SMTP dissector and a session per half-open
    connection: 530 MB and 15 s for 60,000 SYNs. The dissector now waits for the first byte."""
    from maildissect.config import Config
    from maildissect.pipeline import Pipeline
    from maildissect.protocols.smtp import SmtpDissector
    from tests.malformed.packets import SYN, Capture, Conversation
    cap = Capture()
    for k in range(50):
        Conversation(cap, cport=30000 + k).send(0, SYN)
    Conversation(cap, cport=40000).open().dialogue(b"220 mx\r\n", b"EHLO x\r\n", b"250 ok\r\n").close()
    made = []
    init = SmtpDissector.__init__

    def counting_init(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)
    monkeypatch.setattr(SmtpDissector, "__init__", counting_init)
    pipe = Pipeline(Config())
    pipe.process(iter((ts, 1, f, w) for ts, f, w in cap.frames))
    assert len(pipe.collector.flows) == 51
    assert [f.protocol for f in pipe.collector.flows].count("smtp") == 51
    assert len(made) == 1
    assert len(pipe.collector.sessions) == 1 and len(pipe.collector.commands) == 2


def test_pop3_plaintext_after_stls_detail_does_not_depend_on_chunking():
    """As for IMAP: bytes sent after STLS without a go-ahead were counted when the hold limit
    passed, a number that depended on the segmentation."""
    from maildissect.config import Config, Limits
    from maildissect.protocols.pop3 import Pop3Dissector
    from tests.helpers import new_session

    def run(chunks):
        d = Pop3Dissector(new_session("pop3"), Config(limits=Limits(max_line=256)))
        out = []
        for side, data in chunks:
            out += d.feed(side, data, 1.0)
        return out + d.close(2.0, "fin")
    head = [(1, b"+OK ready\r\n"), (0, b"STLS\r\n")]
    plain = b"USER alice\r\nPASS wonderland\r\n" * 20
    whole, split = run(head + [(0, plain)]), run(head + [(0, plain[:200]), (0, plain[200:])])
    assert whole == split
    assert any(getattr(r, "name", "") == "pop3_stls_pipelined" and r.detail == "over 256 bytes" for r in whole)


def test_integer_beyond_64_bits_in_a_record_is_na():
    """An IMAP APPEND literal declared as {10^30} made the message size 10^30: building the
    messages table raised OverflowError and every command ended in an internal error."""
    from maildissect import frames
    from maildissect.model import Message
    big = Message(protocol="imap", session_id=1, ts=0.0, direction="appended", size=10 ** 30,
                  missing_bytes=10 ** 30 - 5)
    small = Message(protocol="imap", session_id=2, ts=0.0, direction="appended", size=12)
    df = frames.frame("messages", [big, small])
    assert df["size"].isna().tolist() == [True, False] and df["size"][1] == 12


def test_tls_hello_parser_reads_each_record_once():
    """A 64 KiB stream of empty handshake records fed in small segments was re-parsed from
    its first byte on every feed: 35 s for 8-byte segments (a capture of such a flow hangs)."""
    import time

    from maildissect.protocols.tls import TlsDissector
    from tests.helpers import new_session
    d = TlsDissector(new_session("tls"))
    data = b"\x16\x03\x01\x00\x00" * 13000
    start = time.process_time()
    for i in range(0, len(data), 2):
        d.feed(0, data[i:i + 2], 0.0)
    assert time.process_time() - start < 3.0


def test_tls_bad_record_detail_does_not_depend_on_chunking():
    """tls_bad_record quoted the first bytes of the segment that revealed the problem."""
    from maildissect.protocols.tls import TlsDissector
    from tests.helpers import new_session

    def run(chunks):
        d = TlsDissector(new_session("tls"))
        return [r for c in chunks for r in d.feed(1, c, 0.0)]
    whole, split = run([b"\x05\x16\x00\x01\x00\x01\xfc\x03"]), run([b"\x05\x16", b"\x00\x01\x00\x01\xfc\x03"])
    assert whole == split and whole[0].detail == "0516000100"


def test_superscript_digit_in_content_length():
    """Content-Length: ²70 (Latin-1 0xB2 is a digit to str.isdigit, not to int) raised
    ValueError and stopped parsing the connection (http_internal_error)."""
    from maildissect.config import Config
    items = [(0, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"),
             (1, b"HTTP/1.1 200 OK\r\nContent-Length: \xb270\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]
    records = harness.run_dissector("http", items, Config())
    assert "http_bad_content_length" in [getattr(r, "name", "") for r in records]
    assert [r.uri for r in records if type(r).__name__ == "HttpRequest"] == ["/a", "/b"]


def test_superscript_digit_in_a_parameter_continuation():
    """name*²=x in a multipart header (RFC 2231 continuation index) raised ValueError."""
    from maildissect.protocols import forms
    value, params = forms.header_params("form-data; name*\xb2=x; filename=a.txt")
    assert value == "form-data" and params.get("filename") == "a.txt"


def test_webmail_recipients_held_to_max_recipients():
    """A JMAP EmailSubmission listed every rcptTo entry it carried: max_recipients, which
    bounds SMTP's RCPT TO, did not apply to webmail sends."""
    import json

    from maildissect.config import Config, Limits
    body = json.dumps({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:submission"],
                       "methodCalls": [
                           ["Email/set", {"create": {"k1": {"subject": "hi", "to": [{"email": "b@y.org"}]}}}, "0"],
                           ["EmailSubmission/set", {"create": {"s1": {"emailId": "#k1", "envelope": {
                               "mailFrom": {"email": "a@x.org"},
                               "rcptTo": [{"email": f"r{k}@y.org"} for k in range(50)]}}}}, "1"]]}).encode()
    items = [(0, b"POST /jmap/api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body),
             (1, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")]
    records = harness.run_dissector("http", items, Config(limits=Limits(max_recipients=8)))
    sent = [r for r in records if type(r).__name__ == "Message" and r.direction == "sent"]
    assert sent and all(len(m.rcpt_to) <= 8 for m in sent)
    assert "http_too_many_recipients" in [getattr(r, "name", "") for r in records]


def test_command_flood_is_counted_not_listed():
    """A client sending "X\\r\\n" a million times (3 MB) made a command and an anomaly record per
    line: 455 MB for a 3 MB capture. Past limits.max_records a session's records are counted."""
    from maildissect.config import Config, Limits
    from maildissect.pipeline import Pipeline
    from tests.malformed.packets import Capture, Conversation
    cap = Capture()
    Conversation(cap).open().dialogue(b"220 mx\r\n", b"EHLO x\r\n" + b"X\r\n" * 500, b"250 ok\r\n").close()
    pipe = Pipeline(Config(limits=Limits(max_records=50)))
    pipe.process(iter((ts, 1, f, w) for ts, f, w in cap.frames))
    c = pipe.collector
    assert len(c.commands) == 50 and c.sessions[0].commands == 502  # the greeting, EHLO, 500 X
    names = [a.name for a in c.anomalies]
    assert names.count("session_records_capped") == 2  # commands, anomalies
    assert names.count("smtp_unknown_command") == 50


def test_conflicting_retransmission_flood_is_counted_not_listed():
    """Every conflicting retransmission made a tcp_overlap_conflict record, without bound."""
    from maildissect.config import Config, Limits
    from maildissect.pipeline import Pipeline
    from tests.malformed.packets import ACK, PSH, Capture, Conversation
    cap = Capture()
    conv = Conversation(cap).open()
    conv.dialogue(b"220 mx\r\n", b"EHLO x\r\n", b"250 ok\r\n")
    start = conv.seq[0]
    conv.client(b"NOOP\r\n")
    for k in range(300):
        conv.send(0, PSH | ACK, b"RSET\r\n", seq=start)
    conv.server(b"250 ok\r\n").close()
    pipe = Pipeline(Config(limits=Limits(max_records=40)))
    pipe.process(iter((ts, 1, f, w) for ts, f, w in cap.frames))
    names = [a.name for a in pipe.collector.anomalies]
    assert names.count("tcp_overlap_conflict") == 40 and "session_records_capped" in names
    assert pipe.collector.sessions[0].anomalies >= 300


def test_webmail_uid_with_a_superscript_digit():
    """A webmail read page at ?_uid=%C2%B2 (a superscript two passes str.isdigit) made int()
    raise while building journeys: the timeline, journeys, summary and report failed."""
    from maildissect.correlate import correlate
    from maildissect.model import HttpRequest, MailboxEvent, Message, Session
    from maildissect.pipeline import Collector
    c = Collector()
    c.sessions = [Session(1, "imap", "10.0.0.1", 40000, "10.0.0.2", 143, 0.0, 1.0, auth_user="bob"),
                  Session(2, "http", "10.0.0.1", 40001, "10.0.0.2", 80, 2.0, 3.0, auth_user="bob")]
    c.messages = [Message(protocol="imap", session_id=1, ts=0.5, direction="retrieved", message_id="<m@x>",
                          sha256="a" * 64)]
    c.mailboxes = [MailboxEvent(1, 0.5, "imap", "bob", "INBOX", "fetch", uid=2, message_id="<m@x>")]
    c.http = [HttpRequest(2, 2.5, "GET", f"/?_task=mail&_action=show&_uid={uid}&_mbox=INBOX", mail_action="read")
              for uid in ("%C2%B2", "2")]
    journeys = correlate(c)
    assert any(h.match == "mailbox_uid" for h in journeys.hops)  # the ASCII one still matches


def test_http2_status_with_a_superscript_digit():
    """An HTTP/2 :status of "2²0" (HPACK values are decoded as Latin-1 when not UTF-8) passed
    str.isdigit() and made int() raise: the connection was no longer parsed."""
    from hpack import Encoder
    from hyperframe.frame import HeadersFrame, SettingsFrame

    from maildissect.config import Config
    from maildissect.protocols.http2 import PREFACE

    def headers(sid, block):
        f = HeadersFrame(sid)
        f.data = block
        f.flags.add("END_HEADERS")
        f.flags.add("END_STREAM")
        return f.serialize()
    cenc, senc = Encoder(), Encoder()
    request = [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/a")]
    items = [(0, PREFACE + SettingsFrame(0).serialize() + headers(1, cenc.encode(request))
              + headers(3, cenc.encode(request[:3] + [(":path", "/b")]))),
             (1, SettingsFrame(0).serialize() + headers(1, senc.encode([(b":status", b"2\xb20")]))
              + headers(3, senc.encode([(b":status", b"200")])))]
    records = harness.run_dissector("http", items, Config())
    assert [(r.uri, r.status) for r in records if type(r).__name__ == "HttpRequest"] == [("/a", None), ("/b", 200)]


def test_multipart_form_with_many_parts_is_linear():
    """Each part's header block was looked for with two searches that ran to the end of the
    body when one line-ending style was absent: 9 s for 20,000 CRLF parts, quadratic."""
    import time

    from maildissect.protocols.forms import MultipartParser
    part = b'\r\n--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nx'
    start = time.process_time()
    parser = MultipartParser("b", budget=1 << 20, max_parts=100_000, max_header_bytes=1 << 20)
    parser.feed(part * 40_000 + b"\r\n--b--\r\n")
    parser.close()
    assert len(parser.parts) == 40_000
    assert time.process_time() - start < 5


def test_imap_fetch_of_sequence_number_zero():
    """"* 0 FETCH (UID 7)" wrote uids[-1]: an IndexError on an empty mailbox (the session was
    no longer parsed), and otherwise the UID of the last message silently replaced."""
    from maildissect.config import Config
    items = [(1, b"* OK ready\r\n"), (0, b"a1 SELECT INBOX\r\n"),
             (1, b"* 2 EXISTS\r\n* OK [UIDVALIDITY 9] x\r\na1 OK done\r\n"), (0, b"a2 FETCH 1:2 (UID)\r\n"),
             (1, b"* 1 FETCH (UID 10)\r\n* 2 FETCH (UID 20)\r\n* 0 FETCH (UID 7)\r\na2 OK done\r\n"),
             (0, b"a3 SELECT Empty\r\n"), (1, b"* 0 EXISTS\r\na3 OK\r\n* 0 FETCH (UID 5)\r\n"),
             (0, b"a4 FETCH 2 (FLAGS)\r\n"), (1, b"* 2 FETCH (FLAGS (\\Seen))\r\na4 OK\r\n")]
    records = harness.run_dissector("imap", items, Config())
    assert not [r for r in records if getattr(r, "name", "") == "imap_syntax_error" and "internal" in r.detail]


def test_text_writers_convert_in_chunks(monkeypatch, tmp_path):
    """jsonl and csv writers turned a whole table into Python dicts at once (export of 100,000
    connections peaked at 975 MiB); they convert a chunk of rows at a time, same output."""
    import io

    import pandas as pd

    from maildissect import analyze
    from maildissect.output import files
    from tests.malformed.packets import Capture, Conversation
    cap = Capture()
    for k in range(30):
        Conversation(cap, cport=40000 + k).open().dialogue(b"220 mx\r\n", b"EHLO x\r\n", b"250 ok\r\n").close()
    (tmp_path / "c.pcap").write_bytes(cap.pcap())
    df = analyze(str(tmp_path / "c.pcap")).table("commands")
    whole = {}
    for fmt, writer in (("jsonl", files.write_jsonl), ("csv", files.write_csv)):
        out = io.StringIO()
        writer(df, out)
        whole[fmt] = out.getvalue()
    monkeypatch.setattr(files, "CHUNK_ROWS", 7)
    for fmt, writer in (("jsonl", files.write_jsonl), ("csv", files.write_csv)):
        out = io.StringIO()
        writer(df, out)
        assert out.getvalue() == whole[fmt]
    assert len(whole["jsonl"].splitlines()) == len(df) == 60  # greeting and EHLO of 30 sessions
    empty = io.StringIO()
    files.write_csv(df.iloc[:0], empty)
    assert empty.getvalue().startswith("session_id,") and len(pd.read_csv(io.StringIO(empty.getvalue()))) == 0
