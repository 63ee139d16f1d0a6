"""Workload identities and the certificates that prove them (no crypto here: PEM text only).

The CA (meshagent.ca) issues WorkloadCertificates; the translator serves them to Envoy as SDS
secrets; the model never parses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Identity:
    """A SPIFFE identity in Istio's shape: spiffe://<trust-domain>/ns/<namespace>/sa/<sa>."""

    trust_domain: str
    namespace: str
    service_account: str

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """The Identity of a SPIFFE URI; ValueError when it is not in Istio's shape."""
        prefix = "spiffe://"
        parts = uri[len(prefix):].split("/") if uri.startswith(prefix) else []
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
            raise ValueError(f"not an Istio SPIFFE identity: {uri!r}")
        return cls(parts[0], parts[2], parts[4])


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """A key and certificate chain for one identity, plus the trust bundle to verify peers.

    cert_chain_pem: leaf first. roots_pem: one or more root certificates (several during a
    root rotation). not_after: expiry as a POSIX timestamp.
    """

    identity: Identity
    cert_chain_pem: str
    private_key_pem: str = field(repr=False)  # never in a log line or a traceback
    roots_pem: str
    not_after: float
    serial: str = ""
