"""HTTP message bodies, whatever framed them (HTTP/1 or HTTP/2).

:class:`ContentDecoder` undoes Content-Encoding (gzip, deflate, br, zstd and
chains of them) incrementally, in fixed input steps, within the decompression
limits; :class:`Body` counts and hashes a body, keeps it for parsing when it is
small enough and worth it, and streams multipart bodies through
:class:`~.forms.MultipartParser`. Problems are queued as ``(name, detail)``
pairs for the exchange layer (:mod:`.exchange`) to report.
"""

from __future__ import annotations

import hashlib
import zlib

from .forms import MultipartParser, header_params

__all__ = ["Body", "ContentDecoder", "RATIO_FLOOR"]

#: Bodies decoded past this size are checked against the decompression ratio;
#: below it a tiny but very compressible body (a page of spaces) is no bomb.
RATIO_FLOOR = 1024 * 1024


class _Bomb(Exception):
    pass


class _ZlibStage:
    """gzip (every member) or deflate (zlib-wrapped, or raw as some servers send)."""

    def __init__(self, gzip: bool):
        self.gzip = gzip
        self.d = None
        self.members = 0
        self.done = False  # bytes after the last gzip member / the deflate stream are ignored

    def run(self, data: bytes, cap: int) -> bytes:
        out = []
        n = 0
        while data and not self.done:
            if self.d is None:
                if self.gzip:
                    if self.members and data[:1] != b"\x1f":
                        self.done = True  # padding after a member, as some servers send
                        break
                    self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
                    self.d = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
            chunk = self.d.decompress(data, cap - n + 1)
            n += len(chunk)
            out.append(chunk)
            if n > cap or self.d.unconsumed_tail:
                raise _Bomb()
            if self.d.eof:
                data = self.d.unused_data
                self.d = None
                self.members += 1
                if not self.gzip:
                    self.done = True
            else:
                data = b""
        return b"".join(out)

    def truncated(self) -> bool:
        """The stream stopped inside a member."""
        return self.d is not None or (self.members == 0 and not self.done)


class _BrotliStage:
    def __init__(self):
        import brotli
        self.d = brotli.Decompressor()
        self.error = brotli.error

    def run(self, data: bytes, cap: int) -> bytes:
        if self.d.is_finished():
            return b""
        try:
            out = self.d.process(data, output_buffer_limit=cap + 1)
        except TypeError:  # brotli < 1.2 has no output limit: feed small slices
            parts, n = [], 0
            for i in range(0, len(data), 256):
                piece = self.d.process(data[i:i + 256])
                n += len(piece)
                parts.append(piece)
                if n > cap:
                    raise _Bomb() from None
            out = b"".join(parts)
        if len(out) > cap:
            raise _Bomb()
        return out


class _ZstdStage:
    # RFC 9659: HTTP zstd windows are at most 8 MiB; a larger frame window is
    # refused instead of allocated.
    SLICE = 256  # a zstd RLE block turns 4 bytes into 128 KiB: bound each step

    def __init__(self):
        import zstandard
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << 23)
        try:
            self.d = dctx.decompressobj(read_across_frames=True)
        except TypeError:
            self.d = dctx.decompressobj()

    def run(self, data: bytes, cap: int) -> bytes:
        parts, n = [], 0
        for i in range(0, len(data), self.SLICE):
            piece = self.d.decompress(data[i:i + self.SLICE])
            n += len(piece)
            parts.append(piece)
            if n > cap:
                raise _Bomb()
        return b"".join(parts)


class ContentDecoder:
    """Incremental Content-Encoding decoder with the decompression limits.

    ``codings`` are the encodings in the order the sender applied them
    (``Content-Encoding: gzip, br`` means gzip first); they are undone in
    reverse. Input is decoded in fixed steps of :attr:`STEP` bytes, whatever
    the sizes of the pieces fed, so that where a limit stops decoding does not
    depend on how the stream was segmented. After :attr:`failed` is set no
    more output comes.
    """

    STEP = 16384
    SUPPORTED = ("gzip", "x-gzip", "deflate", "br", "zstd")

    def __init__(self, codings: list[str], max_decompressed: int, max_ratio: int):
        self.stages = []
        for c in reversed(codings):
            if c in ("gzip", "x-gzip"):
                self.stages.append(_ZlibStage(True))
            elif c == "deflate":
                self.stages.append(_ZlibStage(False))
            elif c == "br":
                self.stages.append(_BrotliStage())
            elif c == "zstd":
                self.stages.append(_ZstdStage())
        self.max_out = max_decompressed
        self.max_ratio = max_ratio
        self._pending = bytearray()
        self.consumed = 0
        self.produced = 0
        self.failed: tuple[str, str] | None = None

    def feed(self, data) -> bytes:
        if self.failed:
            return b""
        self._pending += data
        if len(self._pending) < self.STEP:
            return b""
        out = []
        whole = len(self._pending) - len(self._pending) % self.STEP
        for i in range(0, whole, self.STEP):
            out.append(self._step(bytes(self._pending[i:i + self.STEP])))
            if self.failed:
                break
        del self._pending[:whole]
        return b"".join(out)

    def finish(self) -> bytes:
        """Decode what is left; a compressed stream cut short sets :attr:`failed`."""
        if self.failed:
            self._pending = bytearray()
            return b""
        out = self._step(bytes(self._pending)) if self._pending else b""
        self._pending = bytearray()
        if not self.failed and self.consumed and any(
                isinstance(st, _ZlibStage) and st.truncated() for st in self.stages):
            self.failed = ("http_decoding_error", "compressed stream ends early")
        return out

    def _step(self, block: bytes) -> bytes:
        self.consumed += len(block)
        room = self.max_out - self.produced
        data = block
        try:
            for stage in self.stages:
                data = stage.run(data, room)
        except _Bomb:
            # The whole step's output is dropped: steps are fixed-size, so the
            # stopping point does not depend on segmentation.
            self.failed = ("http_decompression_bomb", f"decoded output passed limits.max_decompressed ({self.max_out})")
            return b""
        except Exception as exc:  # zlib.error, brotli.error, zstd.ZstdError...
            self.failed = ("http_decoding_error", f"{type(exc).__name__}: {str(exc)[:120]}")
            return b""
        self.produced += len(data)
        if self.produced > RATIO_FLOOR and self.produced > self.max_ratio * self.consumed:
            self.failed = ("http_decompression_bomb",
                           f"ratio {self.produced // max(1, self.consumed)} above limits.max_decompression_ratio ({self.max_ratio})")
            self.produced -= len(data)
            return b""
        return data


class Body:
    """The content of one HTTP message, fed transfer-decoded bytes.

    Counts the bytes (``wire_size`` before, ``size`` after content decoding),
    hashes the decoded bytes (md5, sha256), keeps them in ``data`` when asked
    and while they fit in limits.max_http_body, and streams them through a
    :class:`~maildissect.protocols.forms.MultipartParser` for multipart bodies.
    Problems are queued in ``issues`` as ``(name, detail)`` pairs.
    """

    __slots__ = ("content_type", "params", "codings", "decoder", "wire_size", "size", "_md5", "_sha1",
                 "_sha256", "data", "limit", "multipart", "complete", "missing", "opaque",
                 "issues", "finished", "disposition", "filename", "extract_only")

    def __init__(self, headers, config, *, keep: bool, keep_part=None, md5: bool = True,
                 sha1: bool = False, extract_only: bool = False):
        limits = config.limits
        self.issues: list[tuple[str, str]] = []
        # kept only to be written by extraction: up to limits.max_extract_size, silently
        self.extract_only = extract_only
        self.content_type, self.params = header_params(headers.get("content-type"), self.issues)
        disp, dparams = header_params(headers.get("content-disposition"), self.issues)
        self.disposition = disp or None
        self.filename = dparams.get("filename")
        self.codings = [c for c in headers.tokens("content-encoding") if c != "identity"]
        self.decoder = None
        self.opaque = False  # an encoding we cannot undo: counted, not parsed
        if self.codings:
            if all(c in ContentDecoder.SUPPORTED for c in self.codings):
                try:
                    self.decoder = ContentDecoder(self.codings, limits.max_decompressed,
                                                  limits.max_decompression_ratio)
                except ImportError as exc:
                    self.opaque = True
                    self.issues.append(("http_unknown_content_encoding", f"{','.join(self.codings)}: {exc}"))
            else:
                self.opaque = True
                self.issues.append(("http_unknown_content_encoding", ",".join(self.codings)))
        self.wire_size = 0
        self.size = 0
        # sha256 always; md5 for responses (Zeek's files.log has it); sha1 for blobs
        # that become attachments (a JMAP upload)
        self._md5 = hashlib.md5() if md5 else None
        self._sha1 = hashlib.sha1() if sha1 else None
        self._sha256 = hashlib.sha256()
        self.limit = limits.max_extract_size if extract_only else limits.max_http_body
        self.multipart = None
        if self.content_type.startswith("multipart/") and self.content_type != "multipart/byteranges" \
                and not self.opaque:
            boundary = self.params.get("boundary")
            if boundary:
                self.multipart = MultipartParser(
                    boundary, budget=limits.max_http_body, max_parts=limits.max_mime_parts,
                    max_header_bytes=limits.max_header_bytes, keep=keep_part,
                    max_depth=limits.max_mime_depth)
            else:
                self.issues.append(("http_multipart_bad", f"{self.content_type} without boundary"))
        self.data: bytearray | None = bytearray() if keep and self.multipart is None and not self.opaque else None
        self.complete = True
        self.missing = 0
        self.finished = False

    def write(self, chunk) -> None:
        """Transfer-decoded bytes of the body."""
        if not chunk:
            return
        self.wire_size += len(chunk)
        if self.decoder is None:
            self._decoded(chunk)
            return
        if self.decoder.failed:
            return
        out = self.decoder.feed(chunk)
        if out:
            self._decoded(out)
        if self.decoder.failed:
            self._decode_failed()

    def _decode_failed(self) -> None:
        self.issues.append(self.decoder.failed)
        self.complete = False
        self.data = None

    def _decoded(self, data) -> None:
        n = len(data)
        self.size += n
        if self._md5 is not None:
            self._md5.update(data)
        if self._sha1 is not None:
            self._sha1.update(data)
        self._sha256.update(data)
        if self.data is not None:
            if len(self.data) + n <= self.limit:
                self.data += data
            else:
                self.data = None
                if not self.extract_only:
                    self.issues.append(("http_body_too_large", f"body beyond limits.max_http_body ({self.limit})"))
        if self.multipart is not None:
            self.multipart.feed(data)

    def gap(self, length: int) -> None:
        """``length`` body bytes were never seen."""
        self.wire_size += length
        self.missing += length
        self.complete = False
        if self.decoder is not None and not self.decoder.failed:
            # a compressed stream cannot continue across a hole
            self.decoder.failed = ("http_decoding_error", "gap inside a content-encoded body")
        if self.multipart is not None:
            part = self.multipart._part
            if part is not None:
                part.complete = False

    def finish(self) -> None:
        """End of body: flush the decoder and the multipart parser."""
        if self.finished:
            return
        self.finished = True
        if self.decoder is not None and not self.decoder.failed:
            out = self.decoder.finish()
            if out:
                self._decoded(out)
            if self.decoder.failed:
                self._decode_failed()
        if self.multipart is not None:
            if self.size or self.wire_size:
                self.multipart.close()
                self.issues.extend(self.multipart.issues)
                self.multipart.issues = []

    @property
    def usable(self) -> bool:
        """Seen and decoded completely: its size and hashes stand for the whole
        body (an unknown Content-Encoding leaves it encoded but still whole)."""
        return self.complete and (self.decoder is None or not self.decoder.failed)

    @property
    def sha256(self) -> str | None:
        return self._sha256.hexdigest() if self.size and self.usable else None

    @property
    def md5(self) -> str | None:
        return self._md5.hexdigest() if self._md5 is not None and self.size and self.usable else None

    @property
    def sha1(self) -> str | None:
        return self._sha1.hexdigest() if self._sha1 is not None and self.size and self.usable else None

    def bytes(self) -> bytes | None:
        """The kept decoded body, or None when it was not kept."""
        return bytes(self.data) if self.data is not None else None
