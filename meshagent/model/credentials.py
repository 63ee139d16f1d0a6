"""TLS credentials that gateways (and DestinationRules) name by `credentialName`.

A credential is what Istio reads from a Kubernetes Secret: a server certificate chain and
key, and optionally a CA bundle that verifies client (or upstream) certificates. meshagent
also reads them from files (a directory per credential). Keyed in the snapshot by
"namespace/name": Istio resolves a credentialName in the namespace of the proxy that uses
it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshagent.model.source import Provenance


@dataclass(frozen=True, slots=True)
class Credential:
    """One credential. cert_chain_pem and private_key_pem are empty for a CA-only credential
    (a generic Secret with only `cacert`, or Istio's `<name>-cacert` Secret)."""

    namespace: str
    name: str
    cert_chain_pem: str = ""
    private_key_pem: str = field(default="", repr=False)  # never in a log line or a traceback
    ca_cert_pem: str = ""
    crl_pem: str = ""
    provenance: Provenance | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
