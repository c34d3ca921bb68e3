"""TLS handshake metadata without keys: version, SNI and ALPN.

:class:`TlsHelloParser` reads the first handshake records of each side
(ClientHello, ServerHello) and writes what they reveal into the Session;
:class:`TlsDissector` is the dissector for implicit-TLS ports (465, 993, 995,
443), which records that metadata and counts the encrypted bytes. After a mail
dissector's switch to TLS (its :class:`~maildissect.protocols.base.TlsStart`
event), the router hands the bytes of the switched sides to a :class:`TlsTap`,
which counts them and gives them to a TlsHelloParser, unless a key log
decrypts them (maildissect.decrypt).
"""

from __future__ import annotations

import struct

from .base import Dissector

ANOMALIES = {
    "tls_bad_record": "a TLS record header is not valid while the handshake was expected",
    "tls_tshark_warning": "tshark, decrypting TLS with the key log, reported a problem with the capture (its "
                          "message is the detail); what it decrypted is used",
}

VERSIONS = {0x0300: "SSLv3", 0x0301: "TLSv1.0", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
MAX_HELLO = 65536  # bytes of handshake buffered per side


class TlsHelloParser:
    """Extract version, SNI and ALPN from the hellos of one connection."""

    def __init__(self, session):
        self.session = session
        self.buf = [bytearray(), bytearray()]
        self.done = [False, False]
        self.client_version = None
        self.bad = False
        # Records are read once: where the next record header starts in buf, and the
        # handshake bytes gathered so far (re-reading buf on every feed was quadratic:
        # 35 s for one 64 KiB stream of empty records fed 8 bytes at a time).
        self.pos = [0, 0]
        self.hs = [bytearray(), bytearray()]
        self.bad_header = [b"", b""]  # the first bytes of a side that did not start as TLS

    def feed(self, side: int, data: bytes) -> bool:
        """Returns False when the bytes are not TLS (once)."""
        if self.done[side]:
            return True
        buf = self.buf[side]
        buf += data[: MAX_HELLO - len(buf)]
        if len(buf) >= 5 and not (buf[0] == 0x16 and buf[1] == 0x03):
            self.bad_header[side] = bytes(buf[:5])
            self.done[side] = True
            self.buf[side] = bytearray()
            return False
        hs = self._handshake_bytes(side)
        if hs is None:
            if len(buf) >= MAX_HELLO:
                self.done[side] = True
            return True
        try:
            if side == 0:
                self._client_hello(hs)
            else:
                self._server_hello(hs)
        except (struct.error, IndexError, ValueError):
            pass
        self.done[side] = True
        self.buf[side] = bytearray()
        self.hs[side] = bytearray()
        return True

    def _handshake_bytes(self, side: int) -> bytes | None:
        """Concatenated handshake-record payloads once the first message is complete.

        Continues from where the previous call stopped, so every byte is read once.
        """
        buf, out, p = self.buf[side], self.hs[side], self.pos[side]
        while p + 5 <= len(buf):
            ctype, _ver, length = struct.unpack_from("!BHH", buf, p)
            if ctype != 0x16:
                break
            if p + 5 + length > len(buf):
                break
            out += buf[p + 5:p + 5 + length]
            p += 5 + length
            if len(out) >= 4:
                need = 4 + int.from_bytes(out[1:4], "big")
                if len(out) >= need:
                    self.pos[side] = p
                    return bytes(out[:need])
        self.pos[side] = p
        return None

    def _extensions(self, body: bytes, p: int):
        if p + 2 > len(body):
            return
        total = struct.unpack_from("!H", body, p)[0]
        p += 2
        end = min(len(body), p + total)
        while p + 4 <= end:
            etype, elen = struct.unpack_from("!HH", body, p)
            yield etype, body[p + 4:p + 4 + elen]
            p += 4 + elen

    def _client_hello(self, hs: bytes):
        if hs[0] != 1:
            return
        body = hs[4:]
        self.client_version = struct.unpack_from("!H", body, 0)[0]
        p = 2 + 32
        p += 1 + body[p]  # session id
        p += 2 + struct.unpack_from("!H", body, p)[0]  # cipher suites
        p += 1 + body[p]  # compression methods
        for etype, ext in self._extensions(body, p):
            if etype == 0 and len(ext) > 5:  # server_name
                nlen = struct.unpack_from("!H", ext, 3)[0]
                self.session.sni = ext[5:5 + nlen].decode("ascii", "replace")
            elif etype == 16 and len(ext) > 2:  # ALPN offered
                names = self._alpn_list(ext)
                if names and not self.session.alpn:
                    self.session.alpn = ",".join(names)
        if not self.session.tls_version:
            self.session.tls_version = VERSIONS.get(self.client_version, hex(self.client_version))

    def _server_hello(self, hs: bytes):
        if hs[0] != 2:
            return
        body = hs[4:]
        version = struct.unpack_from("!H", body, 0)[0]
        p = 2 + 32
        p += 1 + body[p]  # session id
        p += 2 + 1  # cipher suite, compression
        selected_alpn = None
        for etype, ext in self._extensions(body, p):
            if etype == 43 and len(ext) >= 2:  # supported_versions (TLS 1.3)
                version = struct.unpack_from("!H", ext, 0)[0]
            elif etype == 16 and len(ext) > 2:
                names = self._alpn_list(ext)
                selected_alpn = names[0] if names else None
        self.session.tls_version = VERSIONS.get(version, hex(version))
        if selected_alpn:
            self.session.alpn = selected_alpn

    @staticmethod
    def _alpn_list(ext: bytes) -> list[str]:
        names, p = [], 2
        while p < len(ext):
            n = ext[p]
            names.append(ext[p + 1:p + 1 + n].decode("ascii", "replace"))
            p += 1 + n
        return names


class TlsTap:
    """The bytes of a session after its switch to TLS (STARTTLS, STLS): counted
    in ``tls_bytes_client``/``tls_bytes_server``, and their hellos read for the
    version, SNI and ALPN. The router calls it with every byte of a side that
    switched (see :class:`~maildissect.protocols.base.TlsStart`); the hello
    parser is made on first use."""

    __slots__ = ("session", "hello")

    def __init__(self, session):
        self.session = session
        self.hello: TlsHelloParser | None = None

    def __call__(self, side: int, data) -> None:
        if not data:
            return
        if side == 0:
            self.session.tls_bytes_client += len(data)
        else:
            self.session.tls_bytes_server += len(data)
        hello = self.hello
        if hello is None:
            hello = self.hello = TlsHelloParser(self.session)
        if not hello.done[side]:
            hello.feed(side, bytes(data))


class SwitchedSides:
    """The sides of a connection that its dissector switched to TLS (its
    :class:`~maildissect.protocols.base.TlsStart` events) when no key log decrypts
    them: their bytes are counted and their hellos read (:class:`TlsTap`) instead
    of being parsed. ``sides[side]`` says whether a side has switched."""

    __slots__ = ("tap", "sides")

    def __init__(self, session):
        self.tap = TlsTap(session)
        self.sides = [False, False]

    def switch(self, event) -> None:
        """Apply a TlsStart: its sides are TLS from here, starting with the bytes it held."""
        self.tap.session.tls = True
        for side in event.sides:
            self.sides[side] = True
            self.tap(side, event.held[side])


class TlsDissector(Dissector):
    """Implicit TLS (465/993/995/443, or TLS found on another port): metadata and byte counts."""

    protocol = "tls"

    def __init__(self, session, config=None):
        super().__init__(session, config)
        session.tls = True
        self.hello = TlsHelloParser(session)
        self.reported = False

    def feed(self, side, data, ts):
        if side == 0:
            self.session.tls_bytes_client += len(data)
        else:
            self.session.tls_bytes_server += len(data)
        if not self.hello.feed(side, data) and not self.reported:
            self.reported = True
            # the record header that failed, wherever the segments were cut
            return [self.anomaly(ts, side, "tls_bad_record", self.hello.bad_header[side].hex())]
        return []

    def gap(self, side, length, ts):
        return []

    def close(self, ts, reason):
        return []
