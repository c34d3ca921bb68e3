"""TLS for the lab: a self-signed certificate made at run time, and the contexts.

One ECDSA P-256 certificate names every lab server (DNS and IP SANs); clients
trust exactly that certificate and check host names, as a correctly configured
client would. When a key log file is given, the client context writes the NSS
key log (``SSLKEYLOGFILE`` format) so Wireshark, tshark and ``maildissect
analyze --keylog`` can decrypt the capture.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .net import HOSTS


class TlsMaterial:
    """Certificate, key and the SSL contexts built from them."""

    def __init__(self, keylog: str | None = None):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "maildissect lab"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "maildissect lab servers")])
        now = datetime.datetime.now(datetime.timezone.utc)
        sans = [x509.DNSName(h.name) for h in HOSTS]
        sans += [x509.DNSName(d) for d in ("alice.example", "bob.example")]
        sans += [x509.IPAddress(ipaddress.ip_address(h.ip)) for h in HOSTS]
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=7))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                # Key identifiers: strict X.509 verification (Python >= 3.13) wants them.
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        self._dir = tempfile.TemporaryDirectory(prefix="maildissect-tls-")
        self.cert_file = os.path.join(self._dir.name, "lab.crt")
        self.key_file = os.path.join(self._dir.name, "lab.key")
        with open(self.cert_file, "wb") as f:
            f.write(self.cert_pem)
        with open(self.key_file, "wb") as f:
            f.write(self.key_pem)
        self.keylog = keylog
        if keylog:
            # Start a fresh key log for this capture.
            open(keylog, "w").close()
        self.client = self._client_context()

    def server_context(self) -> ssl.SSLContext:
        """A stdlib server context (aiosmtpd, uvicorn)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def twisted_options(self):
        """A Twisted context factory (IMAP4/POP3 servers, STARTTLS and implicit TLS)."""
        from OpenSSL import SSL
        from twisted.internet import ssl as tssl

        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate_chain_file(self.cert_file)
        ctx.use_privatekey_file(self.key_file)

        class Factory(tssl.ContextFactory):
            def getContext(self):
                return ctx

        return Factory()

    def _client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.cert_pem.decode())
        if self.keylog:
            ctx.keylog_filename = self.keylog
        return ctx

    def close(self) -> None:
        self._dir.cleanup()
