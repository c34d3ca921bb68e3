"""SOCKS4, SOCKS4a and SOCKS5 (RFC 1928, RFC 1929), sans-I/O, both sides.

Spam bots relay through open proxies, so mail may reach its server through a
SOCKS tunnel on any port. This dissector follows the handshake of one
connection to a SOCKS proxy and returns:

* :class:`~maildissect.model.Command` records: ``METHODS`` (SOCKS5 greeting:
  the methods offered; the reply is the method chosen), ``AUTH`` (RFC 1929
  username/password: the user name; the reply its status), and ``CONNECT``,
  ``BIND`` or ``UDP ASSOCIATE`` with the target as requested (``host:port``,
  IPv6 in brackets; SOCKS4a's domain name) and the proxy's reply code and its
  meaning (after a grant, with the address the proxy bound: ``succeeded; bound
  192.0.2.7:2688``). Reply codes are the protocol's own numbers in decimal
  (SOCKS5 ``0`` succeeded, SOCKS4 ``90`` granted).
* :class:`~maildissect.model.Credential` records: the SOCKS5 user name and
  password (mechanism ``USERNAME/PASSWORD``, success from the proxy's status),
  and a SOCKS4 user id (mechanism ``USERID``, no secret).
* a :class:`~maildissect.protocols.base.TunnelStart` event once the proxy
  granted a CONNECT: what follows on both sides is the tunnelled stream, which
  the router (maildissect.pipeline) hands to protocol detection as a session of
  its own protocol, with ``tunnel`` ``socks4``/``socks5`` and ``tunnel_target``.

Anything else is an anomaly named ``socks_*``; a handshake the dissector cannot
follow (an unknown version, GSSAPI authentication) stops it. Memory: a
handshake message at most ``max_line`` bytes per side.

Each side is parsed on its own, the client's messages as they come and the
proxy's k-th message only once the client's k-th has been parsed (a proxy
answers in order), so the result does not depend on how the bytes were cut.
Records are emitted when the tunnel opens or the connection ends, in a fixed
order (commands in the order sent, credentials, anomalies of the client, then
of the proxy), for the same reason.
"""

from __future__ import annotations

import ipaddress
import struct

from ..model import CLIENT, SERVER, Command, Credential
from ..text import wire
from .base import Dissector, TunnelStart

__all__ = ["SocksDissector", "looks_like_socks", "ANOMALIES"]

ANOMALIES = {
    "socks_bad_message": "a SOCKS handshake message that is not valid where it came (wrong version, unknown "
                         "address type, reserved byte set...); the rest of the connection is not parsed",
    "socks_field_too_long": "a SOCKS4 user id or SOCKS4a domain name longer than max_line (not parsed further)",
    "socks_method_not_followed": "the proxy chose an authentication method other than none or username/password "
                                 "(GSSAPI...): what follows is not parsed",
    "socks_truncated": "the connection ended inside the SOCKS handshake",
    "socks_data_after_refusal": "bytes after the proxy refused the request (not parsed)",
    "socks_early_data_overflow": "the client sent more than max_line bytes after its request before the proxy "
                                 "answered; the rest is not kept for the tunnel",
}

METHODS = {0: "no authentication", 1: "GSSAPI", 2: "username/password", 3: "challenge-handshake",
           5: "challenge-response", 6: "SSL", 7: "NDS", 8: "multi-authentication", 9: "JSON parameter block",
           255: "no acceptable methods"}
COMMANDS = {1: "CONNECT", 2: "BIND", 3: "UDP ASSOCIATE"}
REPLIES5 = {0: "succeeded", 1: "general SOCKS server failure", 2: "connection not allowed by ruleset",
            3: "network unreachable", 4: "host unreachable", 5: "connection refused", 6: "TTL expired",
            7: "command not supported", 8: "address type not supported"}
REPLIES4 = {90: "request granted", 91: "request rejected or failed", 92: "rejected: no identd on the client",
            93: "rejected: identd user id mismatch"}

#: the longest SOCKS5 message (RFC 1929: 3 + 255 + 255 bytes); the buffer guard never cuts one
MAX_MESSAGE = 1024

# stages of each side
_START, _AUTH, _REQUEST, _REPLY, _SECOND, _DONE, _DEAD = range(7)


def looks_like_socks(client_first: bytes, server_first: bytes = b"") -> bool:
    """True when a connection's first client bytes are a SOCKS4/4a request or a SOCKS5 greeting
    (and the server's, if any, answer as a SOCKS proxy does)."""
    c = client_first
    if len(c) >= 3 and c[0] == 5:
        n = c[1]
        if n == 0 or len(c) < 2 + n:
            return False
        methods = c[2:2 + n]
        if any(m > 9 and not 0x80 <= m <= 0xFE for m in methods) or len(set(methods)) != n:
            return False
        if len(c) > 2 + n and c[2 + n] not in (1, 5):  # next: RFC 1929 auth, or the request
            return False
        return not server_first or (server_first[0] == 5 and (len(server_first) < 2 or server_first[1] in
                                                              (*methods, 255)))
    if len(c) >= 9 and c[0] == 4 and c[1] in (1, 2):
        end = c.find(b"\0", 8)
        if end < 0 or end - 8 > 255 or any(b < 0x20 or b > 0x7E for b in c[8:end]):
            return False
        return not server_first or (server_first[0] in (0, 4) and (len(server_first) < 2 or
                                                                   90 <= server_first[1] <= 93))
    return False


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SocksDissector(Dissector):
    """A SOCKS proxy connection's handshake, both versions (see the module docstring)."""

    protocol = "socks"

    def __init__(self, session, config=None):
        super().__init__(session, config)
        self.version = 0  # 4 or 5, from the client's first byte
        self.bufs = [bytearray(), bytearray()]
        self.stage = [_START, _START]
        self.parsed = [0, 0]  # messages parsed per side
        self.commands: list[Command] = []  # in the order sent; replies filled in as they come
        self.auth: Command | None = None
        self.request: Command | None = None
        self.creds: list[Credential] = []
        self.issues: tuple[list, list] = ([], [])  # anomalies per side
        self.target: str | None = None
        self.command = 0
        self.refused = False
        self.after = [0, 0]  # bytes past the end of the handshake (after a refusal), per side
        self.emitted = False
        self.tunnel: TunnelStart | None = None

    # -- interface ------------------------------------------------------------
    def feed(self, side: int, data: bytes, ts: float) -> list:
        if self.emitted or not data:
            return []
        stage = self.stage[side]
        if stage == _DEAD or (stage == _DONE and (self.refused or side == SERVER)):
            self.after[side] += len(data)
            return []
        buf = self.bufs[side]
        if stage == _DONE and len(buf) + len(data) > self.limits.max_line:
            # the client talks on after its request, before the proxy's answer (bytes for the tunnel)
            if len(buf) <= self.limits.max_line:
                self._issue(side, ts, "socks_early_data_overflow", f"over {self.limits.max_line} bytes")
            self.after[side] += len(data)
            buf += data[:max(0, self.limits.max_line + 1 - len(buf))]
            return []
        buf += data
        self._parse(ts)
        if self.refused:
            # what is buffered past a refusal is not handshake: counted, not kept
            for other in (CLIENT, SERVER):
                if self.stage[other] in (_DONE, _DEAD):
                    self.after[other] += len(self.bufs[other])
                    self.bufs[other] = bytearray()
        cap = max(self.limits.max_line, MAX_MESSAGE)
        if self.tunnel is None and self.stage[side] not in (_DONE, _DEAD) and len(buf) > cap:
            # bytes that cannot all be one message: the proxy talking on before the client's
            # message (SOCKS4's NUL-terminated fields are checked on their own)
            self._bad(side, ts, f"over {cap} bytes without a complete message", 16)
        if self.tunnel is not None:
            return self._emit()
        return []

    def gap(self, side: int, length: int, ts: float) -> list:
        # a handshake with a hole in it cannot be followed (where its messages start is lost)
        if not self.emitted and self.stage[side] not in (_DONE, _DEAD):
            self._issue(side, ts, "socks_truncated", f"{length} bytes never captured")
            self.stage[side] = _DEAD
        return []

    def close(self, ts: float, reason: str) -> list:
        if self.emitted:
            return []
        for side in (CLIENT, SERVER):
            if self.stage[side] in (_DONE, _DEAD) or (side == SERVER and self.stage[CLIENT] == _DEAD):
                continue  # (the proxy's bytes answer client messages that could not be parsed)
            if self.bufs[side]:
                self._issue(side, ts, "socks_truncated", f"{len(self.bufs[side])} bytes of an unfinished message")
        if self.refused and (self.after[CLIENT] or self.after[SERVER]):
            self._issue(CLIENT if self.after[CLIENT] else SERVER, ts, "socks_data_after_refusal",
                        f"{self.after[CLIENT]} client and {self.after[SERVER]} proxy bytes")
        return self._emit()

    def _emit(self) -> list:
        """Every record, in a fixed order; the tunnel's start last."""
        self.emitted = True
        out: list = list(self.commands)
        out += self.creds
        out += self.issues[CLIENT]
        out += self.issues[SERVER]
        if self.tunnel is not None:
            out.append(self.tunnel)
        return out

    def _issue(self, side: int, ts: float, name: str, detail: str) -> None:
        self.issues[side].append(self.anomaly(ts, side, name, detail))

    # -- parsing --------------------------------------------------------------
    def _parse(self, ts: float) -> None:
        progress = True
        while progress and self.tunnel is None:
            progress = False
            while self.stage[CLIENT] not in (_DONE, _DEAD) and self.bufs[CLIENT] and self._client(ts):
                self.parsed[CLIENT] += 1
                progress = True
            if self.stage[SERVER] not in (_DONE, _DEAD) and self.bufs[SERVER] \
                    and self.parsed[SERVER] < self.parsed[CLIENT] and self._server(ts):
                self.parsed[SERVER] += 1
                progress = True

    def _bad(self, side: int, ts: float, what: str, n: int) -> bool:
        """A message that cannot be followed; ``n``: the bytes it was judged on (the detail
        shows those, so that it does not depend on how the stream was cut)."""
        head = bytes(self.bufs[side][:n]).hex()
        self._issue(side, ts, "socks_bad_message", f"{what}: {head}")
        self.stage[side] = _DEAD
        return False

    def _take(self, side: int, n: int) -> bytes:
        buf = self.bufs[side]
        data = bytes(buf[:n])
        del buf[:n]
        return data

    def _command(self, verb: str, argument: str, ts: float) -> Command:
        cmd = Command(self.session.session_id, "socks", ts, verb, argument, seq=self.next_seq())
        self.commands.append(cmd)
        return cmd

    # -- the client's side: greeting, authentication, request
    def _client(self, ts: float) -> bool:
        """Parse one client message; False when incomplete (or not parseable)."""
        buf = self.bufs[CLIENT]
        stage = self.stage[CLIENT]
        if stage == _START:
            if buf[0] == 5:
                self.version = 5
                if len(buf) < 2 or len(buf) < 2 + buf[1]:
                    return False
                n = buf[1]
                if n == 0:
                    return self._bad(CLIENT, ts, "greeting offering no method", 2)
                offered = list(self._take(CLIENT, 2 + n)[2:])
                self._command("METHODS", ", ".join(METHODS.get(m, str(m)) for m in offered), ts)
                self.stage[CLIENT] = _AUTH if 2 in offered else _REQUEST
                return True
            if buf[0] == 4:
                self.version = 4
                return self._request4(ts)
            return self._bad(CLIENT, ts, "not a SOCKS4 or SOCKS5 client message", 1)
        if stage == _AUTH:
            # RFC 1929 sub-negotiation, if the client sends one (it may go straight to its request)
            if buf[0] == 5:
                self.stage[CLIENT] = _REQUEST
                return self._request5(ts)
            if buf[0] != 1:
                return self._bad(CLIENT, ts, "username/password message of version " + str(buf[0]), 1)
            if len(buf) < 2 or len(buf) < 3 + buf[1] or len(buf) < 3 + buf[1] + buf[2 + buf[1]]:
                return False
            ulen = buf[1]
            plen = buf[2 + ulen]
            msg = self._take(CLIENT, 3 + ulen + plen)
            user, secret = wire(msg[2:2 + ulen]), wire(msg[3 + ulen:])
            self.auth = self._command("AUTH", user, ts)
            self.creds.append(Credential(self.session.session_id, "socks", ts, "USERNAME/PASSWORD", user, secret))
            self.session.auth_user = user
            self.session.auth_mechanism = "USERNAME/PASSWORD"
            self.stage[CLIENT] = _REQUEST
            return True
        if stage == _REQUEST:
            return self._request5(ts)
        return False

    def _request5(self, ts: float) -> bool:
        buf = self.bufs[CLIENT]
        if len(buf) < 5:
            return False
        if buf[0] != 5 or buf[2] != 0:
            return self._bad(CLIENT, ts, "SOCKS5 request with a bad version or reserved byte", 5)
        got = self._address(buf, 3)
        if got is None:
            return False
        if got is False:
            return self._bad(CLIENT, ts, f"SOCKS5 request with address type {buf[3]}", 4)
        host, end = got
        cmd = buf[1]
        self._take(CLIENT, end)
        self._requested(cmd, host, ts)
        return True

    @staticmethod
    def _address(buf, p: int):
        """(host:port, end offset) of a SOCKS5 address at ``p``; None if incomplete; False if invalid."""
        atyp = buf[p]
        if atyp == 1:
            end = p + 1 + 4 + 2
            if len(buf) < end:
                return None
            host = str(ipaddress.IPv4Address(bytes(buf[p + 1:p + 5])))
        elif atyp == 4:
            end = p + 1 + 16 + 2
            if len(buf) < end:
                return None
            host = str(ipaddress.IPv6Address(bytes(buf[p + 1:p + 17])))
        elif atyp == 3:
            if len(buf) < p + 2:
                return None
            n = buf[p + 1]
            end = p + 2 + n + 2
            if len(buf) < end:
                return None
            host = wire(bytes(buf[p + 2:p + 2 + n]))
        else:
            return False
        port = struct.unpack_from("!H", buf, end - 2)[0]
        return _host_port(host, port), end

    def _request4(self, ts: float) -> bool:
        buf = self.bufs[CLIENT]
        if len(buf) < 9:
            return False
        if buf[1] not in (1, 2):
            return self._bad(CLIENT, ts, f"SOCKS4 request with command {buf[1]}", 2)
        end = buf.find(b"\0", 8, 8 + self.limits.max_line + 1)
        limit = self.limits.max_line
        if end < 0:
            if len(buf) > 8 + limit:
                self._issue(CLIENT, ts, "socks_field_too_long", f"user id over {limit} bytes")
                self.stage[CLIENT] = _DEAD
            return False
        port = struct.unpack_from("!H", buf, 2)[0]
        ip = bytes(buf[4:8])
        user = wire(bytes(buf[8:end]))
        after = end + 1
        if ip[:3] == b"\0\0\0" and ip[3]:
            # SOCKS4a: the domain name follows the user id
            dend = buf.find(b"\0", after, after + limit + 1)
            if dend < 0:
                if len(buf) > after + limit:
                    self._issue(CLIENT, ts, "socks_field_too_long", f"domain name over {limit} bytes")
                    self.stage[CLIENT] = _DEAD
                return False
            host = wire(bytes(buf[after:dend]))
            after = dend + 1
        else:
            host = str(ipaddress.IPv4Address(ip))
        cmd = buf[1]
        self._take(CLIENT, after)
        if user:
            self.creds.append(Credential(self.session.session_id, "socks", ts, "USERID", user, None))
            self.session.auth_user = user
            self.session.auth_mechanism = "USERID"
        self._requested(cmd, _host_port(host, port), ts)
        return True

    def _requested(self, cmd: int, target: str, ts: float) -> None:
        self.command = cmd
        self.target = target
        self.request = self._command(COMMANDS.get(cmd, str(cmd)), target, ts)
        self.stage[CLIENT] = _DONE  # the request is the client's last handshake message

    # -- the proxy's side: method choice, authentication status, reply
    def _server(self, ts: float) -> bool:
        """Parse the proxy's next message (its client message has been parsed)."""
        buf = self.bufs[SERVER]
        stage = self.stage[SERVER]
        if self.version == 4:
            if len(buf) < 8:
                return False
            if buf[0] not in (0, 4):
                return self._bad(SERVER, ts, "SOCKS4 reply of version " + str(buf[0]), 8)
            msg = self._take(SERVER, 8)
            bound = _host_port(str(ipaddress.IPv4Address(msg[4:8])), struct.unpack_from("!H", msg, 2)[0])
            self._replied(msg[1], REPLIES4.get(msg[1], "unknown"), msg[1] == 90, ts, bound)
            return True
        if stage == _START:
            if len(buf) < 2:
                return False
            if buf[0] != 5:
                return self._bad(SERVER, ts, "SOCKS5 method choice of version " + str(buf[0]), 2)
            method = self._take(SERVER, 2)[1]
            self._answer(self.commands[0], str(method), METHODS.get(method, "unknown"), ts)
            if method == 2:
                self.stage[SERVER] = _AUTH
            elif method == 0:
                self.stage[SERVER] = _REPLY
            elif method == 255:
                self.refused = True
                self.stage[SERVER] = _DONE
            else:
                self._issue(SERVER, ts, "socks_method_not_followed", METHODS.get(method, str(method)))
                self.stage[SERVER] = _DEAD
            return True
        if stage == _AUTH:
            if len(buf) < 2:
                return False
            status = self._take(SERVER, 2)[1]
            ok = status == 0
            if self.auth is not None:
                self._answer(self.auth, str(status), "success" if ok else "failure", ts)
            for cred in self.creds:
                cred.success = ok
            if ok:
                self.stage[SERVER] = _REPLY
            else:
                self.refused = True
                self.stage[SERVER] = _DONE
            return True
        if stage in (_REPLY, _SECOND):
            if len(buf) < 5:
                return False
            if buf[0] != 5:
                return self._bad(SERVER, ts, "SOCKS5 reply of version " + str(buf[0]), 5)
            got = self._address(buf, 3)
            if got is None:
                return False
            if got is False:
                return self._bad(SERVER, ts, f"SOCKS5 reply with address type {buf[3]}", 4)
            rep = buf[1]
            self._take(SERVER, got[1])
            if stage == _SECOND:
                # BIND's second reply: the remote host connected; that stream is not followed
                self.stage[SERVER] = _DONE
                return True
            self._replied(rep, REPLIES5.get(rep, "unknown"), rep == 0, ts, got[0])
            return True
        return False

    @staticmethod
    def _answer(cmd: Command, code: str, text: str, ts: float) -> None:
        cmd.reply_code = code
        cmd.reply_text = text
        cmd.reply_ts = ts
        cmd.latency = max(0.0, ts - cmd.ts)

    def _replied(self, code: int, text: str, granted: bool, ts: float, bound: str) -> None:
        """The proxy's answer to the request (the client's last message, so it has been parsed);
        ``bound``: the address and port it names (the proxy's end of the connection it made)."""
        if self.request is not None:
            self._answer(self.request, str(code), f"{text}; bound {bound}" if granted else text, ts)
        if not granted:
            self.refused = True
            self.stage[SERVER] = _DONE
        elif self.command == 1:
            held = (bytes(self.bufs[CLIENT]), bytes(self.bufs[SERVER]))
            self.bufs = [bytearray(), bytearray()]
            self.tunnel = TunnelStart(ts, f"socks{self.version}", self.target, held)
        elif self.command == 2 and self.version == 5:
            self.stage[SERVER] = _SECOND
        else:
            self.stage[SERVER] = _DONE
