"""TLS servers on loopback for gateway tests: a test CA, leaf and SPIFFE workload certificates,
and a small HTTPS server that records the SNI each handshake carried.

The "external hosts" of the egress tests are these servers on 127.0.0.x, named by
ServiceEntries; the certificates are made in the test, never read from the system.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshagent.ca.keys import cert_to_pem, key_to_pem
from meshagent.model import Identity, WorkloadCertificate


@dataclass
class LoopbackCa:
    """A CA that signs server leaves (DNS SANs) and mesh workload certificates (SPIFFE)."""

    ca_pem: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def new(cls, name: str = "l4 test CA") -> LoopbackCa:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert_to_pem(cert), key, cert)

    def _leaf(
        self, san: x509.GeneralName, usages: list[x509.ObjectIdentifier]
    ) -> tuple[str, str, int]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert_to_pem(cert), key_to_pem(key), serial

    def server(self, dns: str) -> tuple[str, str, int]:
        """(chain PEM, key PEM, serial) of a server leaf for dns."""
        return self._leaf(x509.DNSName(dns), [ExtendedKeyUsageOID.SERVER_AUTH])

    def workload(self, trust_domain: str, namespace: str, account: str) -> WorkloadCertificate:
        """A mesh workload certificate (SPIFFE URI SAN) with this CA as the mesh root."""
        identity = Identity(trust_domain, namespace, account)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        chain, key, serial = self._leaf(x509.UniformResourceIdentifier(identity.spiffe_id), usages)
        expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).timestamp()
        return WorkloadCertificate(identity, chain, key, self.ca_pem, expiry, str(serial))


@dataclass
class TlsServer:
    """An HTTPS server on address:port answering every request with 200 and
    "<name> sni=<server name>"; `snis` records each completed handshake's SNI, `attempts`
    counts accepted connections (completed handshakes or not)."""

    name: str
    address: str
    cert_pem: str
    key_pem: str
    directory: Path
    port: int = 0
    snis: list[str] = field(default_factory=list)
    attempts: int = 0
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None

    def start(self) -> TlsServer:
        cert, key = self.directory / f"{self.name}.pem", self.directory / f"{self.name}.key"
        cert.write_text(self.cert_pem)
        key.write_text(self.key_pem)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._seen = threading.local()  # the SNI of the handshake running on this thread
        self._context.sni_callback = self._note_sni
        self._sock = socket.create_server((self.address, 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            self.attempts += 1
            threading.Thread(target=self._answer, args=(raw,), daemon=True).start()

    def _note_sni(self, _sock: object, name: str | None, _context: object) -> None:
        self._seen.name = name or ""

    def _answer(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        self._seen.name = ""
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls:
                sni = str(self._seen.name)
                self.snis.append(sni)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                body = f"{self.name} sni={sni}".encode()
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                tls.sendall(head.encode() + body)
        except (OSError, ssl.SSLError):
            return

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
