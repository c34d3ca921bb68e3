"""IMAP messages: FETCH responses (and APPEND commands) turned into Message records.

Whole messages (BODY[], RFC822, BINARY[]), HEADER plus TEXT of one response,
header-only, text-only and single-part fetches, partial fetches reassembled
across responses (``<origin.octets>``), and messages appended by APPEND
(CATENATE and UTF8 forms too) are filled by the shared MIME parser; a part
fetched without its header gets one made from the BODYSTRUCTURE the server
sent earlier. :class:`FetchMessages` is a part of
:class:`~.imap.ImapDissector` (whose state it reads: selected mailbox,
UIDVALIDITY, the commands in flight).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

from ..model import SERVER, Message
from .base import fill_message, place_entities
from .imap_grammar import (FETCH_VERBS, SECTION, STORE_VERBS, Literal, Section, as_int, as_text, compact_part,
                           flatten_bodystructure, mime_header_for, norm_section, parse_envelope, section_kind,
                           value_data, value_len)

__all__ = ["FetchMessages"]

#: Cached per-message facts (size, body structure) for part and partial fetches:
#: at most this many messages, each with at most _KNOWN_PARTS parts.
_KNOWN_CACHE = 1_000
_KNOWN_PARTS = 64
#: Partial-fetch reassemblies under way at once.
_PARTIALS = 64
#: Longest MailboxEvent.detail before optional parts are dropped.
_DETAIL_MAX = 65_536


class _Partial:
    """Pieces of one section fetched with <origin.octets>, being reassembled."""

    __slots__ = ("chunks", "next", "ts", "source", "complete", "command_seq")

    def __init__(self, ts, source, command_seq=None):
        self.chunks: list[bytes] = []
        self.next = 0  # origin the next piece must have
        self.ts = ts
        self.source = source
        self.complete = True
        self.command_seq = command_seq  # the FETCH that brought the first piece (Message.command_seq)


class FetchMessages:
    """The message side of the IMAP dissector (a mixin of ImapDissector)."""

    def _init_fetch(self):
        self._known: OrderedDict = OrderedDict()  # (mailbox, uidvalidity, id) -> {size, parts}
        self._partials: OrderedDict = OrderedDict()
        self._partial_bytes = 0  # bytes held by all reassemblies

    # -- commands --------------------------------------------------------------

    def _cmd_FETCH(self, p, args, ts, out):
        req: dict = {}
        atts = args[1] if len(args) > 1 else None
        for att in (atts if isinstance(atts, list) else [atts]):
            if not isinstance(att, str):
                continue
            m = SECTION.match(att.upper())
            if m and m.group(3) is not None and m.group(4) is not None:
                req[(m.group(1), norm_section(m.group(2)), int(m.group(3)))] = int(m.group(4))
        p.partial_req = req

    _cmd_UID_FETCH = _cmd_FETCH

    def _cmd_APPEND(self, p, args, ts, out):
        mailbox = self._mailbox_name(args[0]) if args else None
        p.mailbox = mailbox
        p.appends = []
        flags: list[str] = []
        date = None
        i = 1
        while i < len(args):
            tok = args[i]
            if isinstance(tok, list):
                flags = [as_text(f) for f in tok if isinstance(f, str)]
            elif isinstance(tok, bytes):
                date = as_text(tok)
            elif isinstance(tok, Literal):
                self._append_message(p, [tok], flags, date, ts, out, complete=True)
                flags, date = [], None
            elif isinstance(tok, str) and tok.upper() in ("UTF8", "CATENATE") and i + 1 < len(args) \
                    and isinstance(args[i + 1], list):
                body = args[i + 1]
                if tok.upper() == "UTF8":
                    pieces = [t for t in body if isinstance(t, Literal)][:1]
                    complete = True
                else:  # CATENATE (TEXT lit URL "...") : only TEXT parts travel in this command
                    pieces, complete = [], True
                    for j in range(0, len(body) - 1, 2):
                        kind = as_text(body[j]) if isinstance(body[j], str) else ""
                        if kind and kind.upper() == "TEXT" and isinstance(body[j + 1], (Literal, bytes)):
                            pieces.append(body[j + 1])
                        else:
                            complete = False
                if pieces:
                    self._append_message(p, pieces, flags, date, ts, out, complete)
                flags, date = [], None
                i += 1
            i += 1

    def _append_message(self, p, pieces, flags, date, ts, out, complete):
        msg = self._make_message("appended", ts, pieces, "body", f"APPEND {p.mailbox}", complete, out)
        msg.command_seq, msg.user, msg.mailbox = p.cmd.seq, self.user, p.mailbox
        p.messages.append(msg)
        p.appends.append((msg, flags, date))

    # -- FETCH ---------------------------------------------------------------

    def _fetch(self, seq, items, item_ts, ts, out, cut):
        uid = flags = size = envelope = parts = internaldate = modseq = None
        sections: list[Section] = []
        other: dict = {}
        i = 0
        n = len(items)
        while i < n:
            name = items[i]
            value = items[i + 1] if i + 1 < n else None
            i += 2
            if not isinstance(name, str):
                if not cut:
                    out.append(self.anomaly(ts, SERVER, "imap_syntax_error", "FETCH item name is not an atom"))
                break
            up = name.upper()
            if up == "UID":
                uid = as_int(value)
            elif up == "FLAGS":
                flags = [as_text(f) for f in value if isinstance(f, str)] if isinstance(value, list) else []
            elif up == "RFC822.SIZE":
                size = as_int(value)
            elif up == "INTERNALDATE":
                internaldate = as_text(value)
            elif up == "ENVELOPE":
                envelope = parse_envelope(value)
            elif up in ("BODYSTRUCTURE", "BODY") and isinstance(value, list):
                parts = flatten_bodystructure(value)
            elif up == "MODSEQ":
                modseq = as_int(value[0]) if isinstance(value, list) and value else as_int(value)
            elif up in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
                if isinstance(value, str):
                    value = value.encode("utf-8")
                elif isinstance(value, list):
                    value = None
                kind = {"RFC822": "full", "RFC822.HEADER": "header", "RFC822.TEXT": "text"}[up]
                sections.append(Section(up, "BODY", {"full": "", "header": "HEADER", "text": "TEXT"}[kind],
                                         kind, "", None, value))
            elif up.startswith(("BODY[", "BINARY[")):
                if isinstance(value, str):  # an atom where an nstring belongs: take its bytes
                    value = value.encode("utf-8")
                elif isinstance(value, list):
                    value = None
                m = SECTION.match(up)
                if m:
                    sec = norm_section(m.group(2))
                    kind, path = section_kind(sec)
                    origin = int(m.group(3)) if m.group(3) is not None else None
                    sections.append(Section(name, m.group(1), sec, kind, path, origin, value))
            elif not isinstance(value, list) and len(other) < 32:
                other[up] = as_text(value) if not isinstance(value, Literal) else f"{{{value.size}}}"
        p = None
        if sections or envelope or parts or size is not None:
            p = self._find(FETCH_VERBS)
        if p is None:
            p = self._find(STORE_VERBS) or self._find(FETCH_VERBS)
        action = "fetch" if p is not None and p.verb in FETCH_VERBS else "flags"
        if uid is None:
            uid = self._uid_of(seq)
        elif seq <= self.limits.max_mailbox_messages:
            self._grow(seq)
            if 0 < seq <= len(self.uids):  # ("* 0 FETCH" would write the last entry, or raise)
                self.uids[seq - 1] = uid
        key = (self.mailbox, self.uidvalidity, ("uid", uid) if uid is not None else ("seq", seq))
        known = self._known.get(key)
        if size is not None or parts is not None:
            if known is None:
                known = self._known[key] = {}
                if len(self._known) > _KNOWN_CACHE:
                    self._known.popitem(last=False)
            if size is not None:
                known["size"] = size
            if parts is not None:
                known["parts"] = [compact_part(e) for e in parts[:_KNOWN_PARTS]]
        cmdname = p.verb if p is not None and p.verb in FETCH_VERBS else "FETCH"
        ident = uid if cmdname == "UID FETCH" and uid is not None else seq
        prefix = f"{cmdname} {ident}"
        msgs = self._fetch_messages(sections, p, key, known, prefix, item_ts, out) if sections else []
        for msg in msgs:  # keys; mailbox and UID are what webmail pages and downloads join on
            if msg.command_seq is None:  # a reassembled piece keeps the command that began it
                msg.command_seq = p.cmd.seq if p is not None else None
            msg.user, msg.mailbox, msg.uid = self.user, self.mailbox, uid
        message_id = (envelope or {}).get("message_id")
        msg_size = size
        for msg in msgs:
            message_id = message_id or msg.message_id
            if msg_size is None and msg.kind == "body" and msg.complete:
                msg_size = msg.size
        detail: dict = {}
        if internaldate:
            detail["internaldate"] = internaldate
        if modseq is not None:
            detail["modseq"] = modseq
        if envelope:
            detail["envelope"] = envelope
        if parts:
            detail["bodystructure"] = parts
        if sections:
            detail["sections"] = [f"{s.att} {value_len(s.value) if s.value is not None else 'NIL'}"
                                  for s in sections]
        if other:
            detail["other"] = other
        text = json.dumps(detail, ensure_ascii=False) if detail else ""
        if len(text) > _DETAIL_MAX:
            detail.pop("bodystructure", None)
            detail["bodystructure_dropped"] = True
            text = json.dumps(detail, ensure_ascii=False)[:_DETAIL_MAX]
        self._event(item_ts, action, out, uidvalidity=self.uidvalidity, uid=uid, seq=seq,
                    flags=flags if flags is not None else [], size=msg_size, message_id=message_id, detail=text)
        if p is not None:
            p.messages.extend(msgs)
            p.held += sum(m.size for m in msgs)
            if p.held > self.limits.max_message_size:
                # A FETCH returning more than max_message_size of messages: emit
                # those held so far now (without the reply code still to come).
                out.extend(p.messages)
                p.messages = []
                p.held = 0
        else:
            out.extend(msgs)

    def _fetch_messages(self, sections, p, key, known, prefix, ts, out) -> list[Message]:
        msgs: list[Message] = []
        used: set[int] = set()
        # Whole messages.
        for i, sec in enumerate(sections):
            if sec.kind == "full" and sec.origin is None and sec.value is not None:
                msgs.append(self._make_message("retrieved", ts, [sec.value], "body", f"{prefix} {sec.att}",
                                               True, out))
                used.add(i)
        # HEADER and TEXT of the same message in one response make the whole message.
        if not msgs:
            hdr = next((i for i, s in enumerate(sections) if s.kind == "header" and not s.path
                        and s.section == "HEADER" and s.origin is None and s.value is not None), None)
            txt = next((i for i, s in enumerate(sections) if s.kind == "text" and not s.path
                        and s.origin is None and s.value is not None), None)
            if hdr is not None and txt is not None:
                h, t = sections[hdr], sections[txt]
                msgs.append(self._make_message("retrieved", ts, [h.value, t.value], "body",
                                               f"{prefix} {h.att} {t.att}", True, out))
                used.update((hdr, txt))
        mime_of = {s.path: i for i, s in enumerate(sections) if s.kind == "mime" and s.origin is None
                   and s.value is not None}
        part_info = {e.get("part"): e for e in (known or {}).get("parts") or []}
        for i, sec in enumerate(sections):
            if i in used or sec.value is None:
                continue
            if sec.origin is not None:
                if sec.kind == "full":
                    msg = self._partial_piece(sec, p, key, known, prefix, ts, out)
                    if msg is not None:
                        msgs.append(msg)
                else:
                    msgs.append(self._make_message("retrieved", ts, [sec.value], "partial",
                                                   f"{prefix} {sec.att}", False, out))
                continue
            if sec.kind == "header":
                msgs.append(self._make_message("retrieved", ts, [sec.value], "header", f"{prefix} {sec.att}",
                                               False, out))
            elif sec.kind == "text":
                # the body's own entry: "" or "1" at the top, "n.TEXT" (multipart)
                # or "n.1" inside an encapsulated message n
                if sec.path:
                    root = part_info.get(sec.path + ".TEXT") or part_info.get(sec.path + ".1")
                else:
                    root = part_info.get("") or part_info.get("1")
                header = mime_header_for(root, False) if root else b"\r\n"
                msgs.append(self._make_message("retrieved", ts, [sec.value], "text", f"{prefix} {sec.att}",
                                               False, out, header=header))
                place_entities(msgs[-1], sec.path, header, text=True)
            elif sec.kind == "part":
                mi = mime_of.get(sec.path)
                if mi is not None:
                    header = value_data(sections[mi].value)
                    used.add(mi)
                elif sec.path in part_info:
                    header = mime_header_for(part_info[sec.path], sec.base == "BINARY")
                else:
                    header = b"\r\n"
                msgs.append(self._make_message("retrieved", ts, [sec.value], "part", f"{prefix} {sec.att}",
                                               False, out, header=header))
                place_entities(msgs[-1], sec.path, header)
        return msgs

    def _partial_piece(self, sec, p, key, known, prefix, ts, out) -> Message | None:
        """One <origin> piece of a whole-message section: reassemble across responses."""
        pkey = key + (sec.base + "[]",)
        origin = sec.origin
        asm = self._partials.get(pkey)
        if origin == 0:
            if asm is not None:
                self._flush_partial(pkey, out)
            asm = _Partial(ts, f"{prefix} {sec.att}", p.cmd.seq if p is not None else None)
            self._partials[pkey] = asm
            if len(self._partials) > _PARTIALS:
                self._flush_partial(next(iter(self._partials)), out)
        elif asm is None or origin != asm.next:
            if asm is not None:
                out.append(self.anomaly(ts, SERVER, "imap_partial_mismatch",
                                        f"{sec.att}: expected origin {asm.next}"))
            return self._make_message("retrieved", ts, [sec.value], "partial", f"{prefix} {sec.att}", False, out)
        value = sec.value
        length = value_len(value)
        if isinstance(value, Literal) and not value.complete:
            asm.complete = False
        asm.chunks.append(value_data(value))
        asm.next += length
        self._partial_bytes += len(asm.chunks[-1])
        requested = (p.partial_req or {}).get((sec.base, sec.section, origin)) if p is not None else None
        total = (known or {}).get("size")
        last = (requested is not None and length < requested) or (total is not None and asm.next >= total)
        if asm.next > self.limits.max_message_size:
            asm.complete = False
            last = True
        while self._partial_bytes > self.limits.max_message_size and next(iter(self._partials)) != pkey:
            self._flush_partial(next(iter(self._partials)), out)
        if not last:
            return None
        del self._partials[pkey]
        self._partial_bytes -= sum(len(c) for c in asm.chunks)
        source = asm.source if origin == 0 else f"{asm.source}..<{origin}>"
        msg = self._make_message("retrieved", asm.ts, [b"".join(asm.chunks)], "body" if asm.complete else "partial",
                                 source, asm.complete, out)
        msg.command_seq = asm.command_seq  # dated, and keyed, by the command that began it
        return msg

    def _flush_partial(self, pkey, out):
        asm = self._partials.pop(pkey, None)
        if asm is None:
            return
        self._partial_bytes -= sum(len(c) for c in asm.chunks)
        msg = self._make_message("retrieved", asm.ts, [b"".join(asm.chunks)], "partial", asm.source, False, out)
        msg.command_seq, msg.user, msg.mailbox = asm.command_seq, self.user, self.mailbox
        out.append(msg)

    def _make_message(self, direction, ts, pieces, kind, source, complete, out, header=b"") -> Message:
        """A Message from literal/string pieces, filled by the MIME parser.

        ``header`` is a MIME header block put in front of the bytes for the
        parser's sake only (a part or body text fetched without its header);
        size and hashes remain those of the bytes transferred.
        """
        datas = []
        size = missing = 0
        truncated = False
        for v in pieces:
            if isinstance(v, Literal):
                datas.append(v.data)
                size += v.size
                missing += v.missing + v.remaining
                truncated = truncated or v.truncated
            else:
                datas.append(bytes(v))
                size += len(v)
        body = datas[0] if len(datas) == 1 else b"".join(datas)
        complete = complete and not missing and not truncated
        msg = Message(protocol="imap", session_id=self.session.session_id, ts=ts, direction=direction,
                      complete=complete, missing_bytes=missing, kind=kind, source=source[:500])
        raw = header + body if header else body
        out.extend(fill_message(msg, raw, self.config))
        if header or truncated or missing:
            msg.size = size
            if missing:
                msg.sha256 = None
            elif truncated:
                msg.sha256 = pieces[0].sha256() if len(pieces) == 1 and isinstance(pieces[0], Literal) else None
            else:
                msg.sha256 = hashlib.sha256(body).hexdigest()
            msg.body_sha256 = None if (truncated or missing or header) else msg.body_sha256
            if header and msg.raw is not None:
                msg.raw = body
        return msg
