"""SASL decoding shared by SMTP AUTH, IMAP AUTHENTICATE and POP3 AUTH.

Pure functions of the base64 blobs exchanged on the wire, plus
:class:`SaslExchange`, a small state machine that follows one authentication
exchange (initial response, server challenges, client responses) and reports
the user name and secret it revealed. Nothing here raises on bad input: a blob
that is not valid base64 or not in the mechanism's format decodes to ``None``.

Mechanisms understood:

* ``PLAIN`` (RFC 4616): ``authzid NUL authcid NUL password``.
* ``LOGIN`` (draft-murchison-sasl-login): user name and password as two
  base64 responses, usually after "Username:" / "Password:" prompts.
* ``CRAM-MD5`` (RFC 2195): server challenge, client ``user hexdigest``.
* ``XOAUTH2`` (Google/Microsoft): ``user=U^Aauth=Bearer T^A^A``.
* ``OAUTHBEARER`` (RFC 7628): GS2 header ``n,a=U,`` then ``^Aauth=Bearer T^A^A``.
* ``SCRAM-*`` (RFC 5802): the user name from the client-first message; the
  proof is not a reusable secret and is kept only as detail.
* ``EXTERNAL`` / ``ANONYMOUS``: the authorization identity or trace string.
* ``DIGEST-MD5`` (RFC 2831): the user name from the client response.
"""

from __future__ import annotations

import binascii
import re

from ..text import wire

__all__ = [
    "b64decode", "text", "decode_plain", "decode_login_prompt", "decode_xoauth2",
    "decode_oauthbearer", "decode_cram_md5", "decode_scram_client_first", "SaslExchange",
]

_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/=]")


def b64decode(blob: bytes | str | None) -> bytes | None:
    """Decode base64 leniently (whitespace, missing padding); None if impossible.

    "=" alone is the empty response of SASL-IR (RFC 4959) and decodes to b"".
    """
    if blob is None:
        return None
    if isinstance(blob, str):
        blob = blob.encode("latin-1", "replace")
    blob = blob.strip()
    if blob in (b"", b"="):
        return b""
    if _B64_JUNK.search(blob):
        blob = b"".join(blob.split())
        if _B64_JUNK.search(blob):
            return None
    blob = blob.rstrip(b"=")
    if len(blob) % 4 == 1:  # cannot be valid base64 however padded
        return None
    blob += b"=" * (-len(blob) % 4)
    try:
        return binascii.a2b_base64(blob)
    except (binascii.Error, ValueError):
        return None


def text(data: bytes | None) -> str | None:
    """Bytes as text: UTF-8 where valid, otherwise windows-1252 (never fails;
    :func:`maildissect.text.wire`)."""
    if data is None:
        return None
    return wire(data)


def decode_plain(blob) -> tuple[str | None, str | None, str | None] | None:
    """PLAIN response -> (authzid, user, password), or None when malformed."""
    raw = b64decode(blob)
    if raw is None:
        return None
    fields = raw.split(b"\x00")
    if len(fields) != 3:
        return None
    authzid, user, password = (text(f) for f in fields)
    return (authzid or None), user, password


#: LOGIN prompts seen in the wild (decoded, lower-cased, trailing colon removed).
_LOGIN_USER_PROMPTS = {"username", "user name", "user", "login"}
_LOGIN_PASS_PROMPTS = {"password", "passwd", "pass"}


def decode_login_prompt(blob) -> str | None:
    """A LOGIN server prompt -> "user", "password" or None when unrecognised.

    The standard prompts are "VXNlcm5hbWU6" (Username:) and "UGFzc3dvcmQ6"
    (Password:); some servers send "User Name" with a trailing NUL.
    """
    raw = b64decode(blob)
    if not raw:
        return None
    word = raw.rstrip(b"\x00").decode("latin-1").strip().rstrip(":").strip().lower()
    if word in _LOGIN_USER_PROMPTS:
        return "user"
    if word in _LOGIN_PASS_PROMPTS:
        return "password"
    return None


def _kv_fields(raw: bytes) -> dict[str, str]:
    """Split ``k=v^Ak=v^A^A`` into a dict (OAuth SASL key/value pairs)."""
    out: dict[str, str] = {}
    for item in raw.split(b"\x01"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            out.setdefault(wire(k).strip().lower(), text(v))
    return out


def _bearer(value: str | None) -> str | None:
    if not value:
        return value
    scheme, _, token = value.partition(" ")
    return token if scheme.lower() == "bearer" and token else value


def decode_xoauth2(blob) -> tuple[str | None, str | None] | None:
    """XOAUTH2 response -> (user, bearer token), or None when malformed."""
    raw = b64decode(blob)
    if raw is None or b"\x01" not in raw:
        return None
    kv = _kv_fields(raw)
    if "user" not in kv and "auth" not in kv:
        return None
    return kv.get("user"), _bearer(kv.get("auth"))


def decode_oauthbearer(blob) -> tuple[str | None, str | None, dict[str, str]] | None:
    """OAUTHBEARER response -> (user, bearer token, other fields) or None.

    The GS2 header ``n,a=user@example.com,`` carries the user; ``host`` and
    ``port`` fields, when present, are returned in the dict.
    """
    raw = b64decode(blob)
    if raw is None:
        return None
    header, sep, rest = raw.partition(b"\x01")
    if not sep or not header[:2] in (b"n,", b"y,", b"p="):
        return None
    user = None
    for part in header.split(b","):
        if part.startswith(b"a="):
            # RFC 5801 saslname escapes: =2C for ',' and =3D for '='
            user = text(part[2:].replace(b"=2C", b",").replace(b"=3D", b"="))
    kv = _kv_fields(rest)
    token = _bearer(kv.pop("auth", None))
    if user is None:
        user = kv.pop("user", None)
    return user, token, kv


def decode_cram_md5(blob) -> tuple[str | None, str | None] | None:
    """CRAM-MD5 response -> (user, hex digest), or None when malformed."""
    raw = b64decode(blob)
    if not raw:
        return None
    user, sep, digest = raw.rpartition(b" ")
    if not sep:
        return None
    return text(user), text(digest)


def decode_scram_client_first(blob) -> str | None:
    """SCRAM client-first-message (``n,,n=user,r=nonce``) -> user, or None."""
    raw = b64decode(blob)
    if not raw:
        return None
    for part in raw.split(b","):
        if part.startswith(b"n=") and len(part) > 2:
            return text(part[2:].replace(b"=2C", b",").replace(b"=3D", b"="))
    return None


_DIGEST_USER = re.compile(rb'(?:^|,)\s*username\s*=\s*"((?:[^"\\]|\\.)*)"', re.I)


class SaslExchange:
    """Follows one SASL exchange and reports what it revealed.

    Feed it the initial response (if any) at construction, then the server's
    challenges (:meth:`server`) and the client's responses (:meth:`client`) in
    the order they arrive, as the base64 text of each line. ``user``,
    ``secret`` and ``detail`` hold what has been decoded so far;
    ``cancelled`` is set when the client answered ``*``.
    """

    __slots__ = ("mechanism", "user", "secret", "authzid", "detail", "cancelled",
                 "responses", "challenges", "_login_next", "malformed")

    def __init__(self, mechanism: str, initial_response: bytes | str | None = None):
        self.mechanism = (mechanism or "").upper()
        self.user: str | None = None
        self.secret: str | None = None
        self.authzid: str | None = None
        self.detail = ""
        self.cancelled = False
        self.malformed = False  # a response that should have decoded did not
        self.responses = 0
        self.challenges = 0
        self._login_next: str | None = None  # what the next LOGIN response carries
        if initial_response is not None:
            self.client(initial_response)

    def server(self, challenge: bytes | str) -> None:
        """A server challenge (the text after ``+ `` / ``334 ``)."""
        self.challenges += 1
        mech = self.mechanism
        if mech == "LOGIN":
            self._login_next = decode_login_prompt(challenge) or self._login_next
        elif mech == "CRAM-MD5":
            raw = b64decode(challenge)
            if raw:
                self.detail = "challenge " + (text(raw) or "")
        elif mech in ("XOAUTH2", "OAUTHBEARER"):
            raw = b64decode(challenge)
            if raw:  # an error report (JSON) before the failure verdict
                self.detail = (text(raw) or "")[:500]

    def client(self, response: bytes | str) -> None:
        """A client response line (without CRLF)."""
        if isinstance(response, bytes):
            response = response.decode("latin-1")
        response = response.strip()
        if response == "*":
            self.cancelled = True
            return
        index = self.responses
        self.responses += 1
        mech = self.mechanism
        if mech == "PLAIN":
            res = decode_plain(response)
            if res is None:
                self.malformed = self.malformed or response not in ("", "=")
                return
            self.authzid, self.user, self.secret = res
        elif mech == "LOGIN":
            raw = b64decode(response)
            if raw is None:
                self.malformed = True
                return
            # With no recognised prompt the first response is the user name
            # and the second the password (the draft's order).
            slot = self._login_next or ("user" if index == 0 and self.user is None else "password")
            self._login_next = None
            if slot == "user":
                self.user = text(raw)
            else:
                self.secret = text(raw)
        elif mech == "CRAM-MD5":
            res = decode_cram_md5(response)
            if res is None:
                self.malformed = True
                return
            self.user, self.secret = res
        elif mech == "XOAUTH2":
            if response in ("", "="):
                return  # the empty reply that acknowledges an error challenge
            res = decode_xoauth2(response)
            if res is None:
                self.malformed = True
                return
            self.user, self.secret = res
        elif mech == "OAUTHBEARER":
            if response in ("", "=", "AQ==", "AQ"):  # ^A acknowledges an error challenge
                return
            res = decode_oauthbearer(response)
            if res is None:
                self.malformed = True
                return
            self.user, self.secret, extra = res
            if extra:
                self.detail = ", ".join(f"{k}={v}" for k, v in sorted(extra.items()))
        elif mech.startswith("SCRAM-"):
            if index == 0:
                self.user = decode_scram_client_first(response)
                if self.user is None:
                    self.malformed = True
        elif mech in ("EXTERNAL", "ANONYMOUS"):
            raw = b64decode(response)
            if raw:
                value = text(raw)
                if mech == "EXTERNAL":
                    self.authzid = value
                    self.user = value
                else:
                    self.detail = "trace " + (value or "")
        elif mech == "DIGEST-MD5":
            raw = b64decode(response)
            if raw:
                m = _DIGEST_USER.search(raw)
                if m:
                    self.user = text(m.group(1).replace(b'\\"', b'"').replace(b"\\\\", b"\\"))

    @property
    def done(self) -> bool:
        """True when the client has said everything this mechanism needs.

        Used to tell a pipelined command from another SASL response.
        """
        mech = self.mechanism
        if self.cancelled:
            return True
        if mech == "LOGIN":
            return self.user is not None and self.secret is not None
        if mech in ("PLAIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER"):
            return self.secret is not None or self.user is not None
        return False
