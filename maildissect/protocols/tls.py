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

import hashlib
import struct

from . import tls_names
from .base import Dissector

ANOMALIES = {
    "tls_bad_record": "a TLS record header is not valid while the handshake was expected",
    "tls_tshark_warning": "tshark, decrypting TLS with the key log, reported a problem with the capture (its "
                          "message is the detail); what it decrypted is used",
}

VERSIONS = {0x0300: "SSLv3", 0x0301: "TLSv1.0", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
MAX_HELLO = 65536  # bytes of one plaintext record or handshake message buffered per side
MAX_HISTORY = 100  # letters of ssl_history kept (Zeek's max_ssl_history_length)


class TlsHelloParser:
    """Read what a TLS connection shows without keys, into its Session.

    Each side's records are walked from the first: the hellos give the version,
    SNI, ALPN, cipher suite, key-exchange group and resumption; the plaintext
    handshake messages, ChangeCipherSpec and alerts make Zeek's ``ssl_history``
    letters; a TLS 1.2 Certificate message gives the chain's sha256
    fingerprints; a plaintext alert the ``last alert``. Encrypted records are
    skipped by their length without being kept. The walk stops once the
    session is established (TLS 1.2: both sides changed cipher spec; TLS 1.3:
    the server answered and each side then sent encrypted records), at bytes
    that are not TLS records, or past :data:`MAX_HELLO` bytes of one
    handshake message. Every byte is read once.
    """

    def __init__(self, session):
        self.session = session
        self.buf = [bytearray(), bytearray()]  # an incomplete record header or plaintext record
        self.done = [False, False]
        self.client_version = None
        self.bad = False
        self.skip = [0, 0]  # bytes of an encrypted record still to pass over
        self.hs = [bytearray(), bytearray()]  # plaintext handshake bytes not yet a whole message
        self.started = [False, False]
        self.encrypted = [False, False]  # the side's records are encrypted from here
        self.ccs = [False, False]
        self.app = [False, False]  # the side sent encrypted records after the server's hello
        self.server_hello = False
        self.tls13 = False
        self.session_id = b""
        self.bad_header = [b"", b""]  # the first bytes of a side that did not start as TLS

    def feed(self, side: int, data: bytes, ts: float | None = None) -> bool:
        """Read more bytes of ``side``; returns False when they are not TLS (once)."""
        if self.done[side]:
            return True
        sess = self.session
        if ts is not None and sess.tls_start is None:
            sess.tls_start = ts
        view = memoryview(data)
        skip = self.skip[side]
        if skip:
            n = min(skip, len(view))
            self.skip[side] = skip - n
            view = view[n:]
        if not view:
            return True
        buf = self.buf[side]
        buf += view
        return self._records(side, buf)

    def _records(self, side: int, buf: bytearray) -> bool:
        pos = 0
        n = len(buf)
        try:
            while pos + 5 <= n:
                ctype, major, length = buf[pos], buf[pos + 1], (buf[pos + 3] << 8) | buf[pos + 4]
                if not self.started[side]:
                    if not (ctype == 0x16 and major == 0x03):
                        self.bad_header[side] = bytes(buf[pos:pos + 5])
                        self._stop(side)
                        return False
                    self.started[side] = True
                if major != 0x03 or ctype not in (20, 21, 22, 23, 24):
                    self._stop(side)  # not (or no longer) TLS records: nothing more to read
                    return True
                end = pos + 5 + length
                if ctype == 23 or (self.encrypted[side] and ctype != 20):  # (TLS 1.3 sends a plain CCS late)
                    if ctype == 23 and self.server_hello and not self.app[side]:
                        self.app[side] = True
                        if self._established():
                            return True
                    if end > n:
                        self.skip[side] = end - n
                        pos = n
                        break
                    pos = end
                elif end > n:
                    if length > MAX_HELLO:
                        self._stop(side)
                        return True
                    break  # a plaintext record: wait for all of it
                else:
                    self._plaintext(side, ctype, bytes(buf[pos + 5:end]))
                    pos = end
                if self._established():
                    return True
                if self.done[side]:
                    return True
        finally:
            if not self.done[side]:
                del buf[:pos]
        if len(buf) > MAX_HELLO + 5:
            self._stop(side)
        return True

    def _stop(self, side: int) -> None:
        self.done[side] = True
        self.buf[side] = bytearray()
        self.hs[side] = bytearray()

    def _history(self, side: int, letter: str) -> None:
        sess = self.session
        h = sess.tls_history or ""
        if len(h) < MAX_HISTORY:
            sess.tls_history = h + (letter.upper() if side == 0 else letter)

    def _plaintext(self, side: int, ctype: int, body: bytes) -> None:
        if ctype == 20:  # ChangeCipherSpec: the side encrypts from here
            self._history(side, "i")
            self.ccs[side] = True
            self.encrypted[side] = True
        elif ctype == 21:  # a plaintext alert
            self._history(side, "l")
            if len(body) >= 2:
                self.session.tls_alert = tls_names.name(tls_names.ALERTS, body[1])
        elif ctype == 22:
            hs = self.hs[side]
            hs += body
            while len(hs) >= 4:
                mlen = int.from_bytes(hs[1:4], "big")
                if mlen > MAX_HELLO:
                    self._stop(side)
                    return
                if len(hs) < 4 + mlen:
                    break
                mtype = hs[0]
                msg = bytes(hs[4:4 + mlen])
                del hs[:4 + mlen]
                self._message(side, mtype, msg)
                if self.encrypted[side] or self.done[side]:
                    hs.clear()  # what follows on this side is encrypted
                    break

    def _message(self, side: int, mtype: int, body: bytes) -> None:
        try:
            if mtype == 1 and side == 0:
                self._client_hello(body)
            elif mtype == 2 and side == 1:
                if body[2:34] == tls_names.HRR_RANDOM:
                    self._history(side, "j")
                    return
                self._server_hello(body)
            elif mtype == 11:
                self._certificates(side, body)
            elif mtype == 12 and side == 1:
                self._key_exchange(body)
        except (struct.error, IndexError, ValueError):
            pass
        self._history(side, tls_names.HISTORY.get(mtype, "z"))
        if mtype == 2 and side == 1 and self.tls13:
            self.encrypted[1] = True  # TLS 1.3: the rest of the server's handshake is encrypted

    def _established(self) -> bool:
        tls12 = self.server_hello and not self.tls13 and self.ccs[0] and self.ccs[1]
        tls13 = self.tls13 and self.app[0] and self.app[1]
        if not (tls12 or tls13):
            return False
        self.session.tls_established = True
        for side in (0, 1):
            self._stop(side)
        return True

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

    def _client_hello(self, body: bytes):
        self.client_version = struct.unpack_from("!H", body, 0)[0]
        p = 2 + 32
        self.session_id = body[p + 1:p + 1 + body[p]]
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

    def _server_hello(self, body: bytes):
        version = struct.unpack_from("!H", body, 0)[0]
        p = 2 + 32
        sid = body[p + 1:p + 1 + body[p]]
        p += 1 + body[p]  # session id
        cipher = struct.unpack_from("!H", body, p)[0]
        p += 2 + 1  # cipher suite, compression
        selected_alpn = None
        group = None
        psk = False
        for etype, ext in self._extensions(body, p):
            if etype == 43 and len(ext) >= 2:  # supported_versions (TLS 1.3)
                version = struct.unpack_from("!H", ext, 0)[0]
            elif etype == 16 and len(ext) > 2:
                names = self._alpn_list(ext)
                selected_alpn = names[0] if names else None
            elif etype == 51 and len(ext) >= 2:  # key_share: the group the server chose
                group = struct.unpack_from("!H", ext, 0)[0]
            elif etype == 41:  # pre_shared_key accepted
                psk = True
        sess = self.session
        self.server_hello = True
        self.tls13 = version == 0x0304
        # the session id echoed resumes a TLS 1.2 session; TLS 1.3 echoes it always (a PSK resumes)
        resumed = psk or (not self.tls13 and bool(sid) and sid == self.session_id)
        sess.tls_version = VERSIONS.get(version, hex(version))
        sess.tls_cipher = tls_names.name(tls_names.CIPHERS, cipher)
        if group is not None:
            sess.tls_curve = tls_names.name(tls_names.GROUPS, group)
        if resumed:
            sess.tls_resumed = True
        if selected_alpn:
            sess.alpn = selected_alpn

    def _certificates(self, side: int, body: bytes) -> None:
        """A TLS 1.2 Certificate message: the sha256 of each certificate, leaf first."""
        total = int.from_bytes(body[0:3], "big")
        p, end = 3, min(len(body), 3 + total)
        fps = []
        while p + 3 <= end:
            n = int.from_bytes(body[p:p + 3], "big")
            if p + 3 + n > end:
                break
            fps.append(hashlib.sha256(body[p + 3:p + 3 + n]).hexdigest())
            p += 3 + n
        if side == 1:
            self.session.tls_certificates = fps
        else:
            self.session.tls_client_certificates = fps

    def _key_exchange(self, body: bytes) -> None:
        """ServerKeyExchange of an ECDHE suite: curve_type 3 (named_curve), then the group."""
        if "ECDHE" in (self.session.tls_cipher or "") and body and body[0] == 3:
            self.session.tls_curve = tls_names.name(tls_names.GROUPS, struct.unpack_from("!H", body, 1)[0])

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
        if self.tap.session.tls_start is None:
            self.tap.session.tls_start = event.ts
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
        if not self.hello.feed(side, data, ts) and not self.reported:
            self.reported = True
            # the record header that failed, wherever the segments were cut
            return [self.anomaly(ts, side, "tls_bad_record", self.hello.bad_header[side].hex())]
        return []

    def gap(self, side, length, ts):
        return []

    def close(self, ts, reason):
        return []
