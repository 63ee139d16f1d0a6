"""The CreateCertificate client (grpc.aio), and the upstream Issuer built on it.

Upstream mode is how a VM joins a mesh whose CA keys it lacks: it sends a CSR with the bearer
token from a file (re-read on every call, so the token can be rotated on disk) and gets the
chain back, leaf first, root last.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from meshagent.ca.authority import identity_of
from meshagent.ca.errors import UpstreamError
from meshagent.ca.keys import cert_to_pem, load_certs_pem
from meshagent.ca.proto.messages import (
    METHOD,
    IstioCertificateRequest,
    IstioCertificateResponse,
)
from meshagent.model.identity import Identity


class CertificateClient:
    """One channel to a CreateCertificate server.

    root_cert_pem verifies the server's TLS certificate (None: plaintext, tests only);
    server_name overrides the name checked in it; client_cert (key PEM, chain PEM) adds mTLS.
    """

    def __init__(
        self,
        address: str,
        *,
        root_cert_pem: bytes | None,
        server_name: str | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
        timeout: float = 10.0,
    ) -> None:
        options: list[tuple[str, Any]] = []
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_cert_pem is None:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        else:
            key, chain = client_cert or (None, None)
            creds = grpc.ssl_channel_credentials(root_cert_pem, key, chain)
            self._channel = grpc.aio.secure_channel(address, creds, options=options)
        self._call = self._channel.unary_unary(
            METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=IstioCertificateResponse.FromString,
        )
        self.timeout = timeout

    async def create_certificate(
        self, csr_pem: str, ttl_s: int = 0, *, token: str | None = None
    ) -> list[str]:
        """The chain for csr_pem; grpc.aio.AioRpcError when the server refuses."""
        request = IstioCertificateRequest(csr=csr_pem, validity_duration=int(ttl_s))
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        response = await self._call(request, metadata=metadata, timeout=self.timeout)
        return list(response.cert_chain)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()


class UpstreamIssuer:
    """An Issuer that asks a remote CA, authenticating with the token in token_file."""

    def __init__(
        self, client: CertificateClient, token_file: Path, extra_roots_pem: str = ""
    ) -> None:
        self.client, self.token_file, self.extra_roots_pem = client, token_file, extra_roots_pem

    def trust_bundle(self, chain: Sequence[str]) -> str:
        """The chain's root plus the configured upstream roots, without duplicates."""
        pems = [chain[-1]] if chain else []
        if self.extra_roots_pem:
            pems += [cert_to_pem(c) for c in load_certs_pem(self.extra_roots_pem)]
        return "".join(dict.fromkeys(pems))

    def accepts(self, chain: Sequence[str]) -> bool:
        """Stored upstream chains are reused while valid (their key and identity were checked)."""
        return bool(chain)

    async def issue(self, csr_pem: str, identity: Identity, ttl: float) -> list[str]:
        """Ask the upstream CA; UpstreamError when it refuses or names another identity."""
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UpstreamError(f"{self.token_file}: {exc.strerror or exc}") from exc
        try:
            chain = await self.client.create_certificate(csr_pem, int(ttl), token=token)
        except grpc.aio.AioRpcError as exc:
            raise UpstreamError(f"upstream CA: {exc.code().name}: {exc.details()}") from exc
        try:
            # One certificate per element, whatever the server's grouping.
            chain = [cert_to_pem(c) for pem in chain for c in load_certs_pem(pem)]
        except ValueError as exc:
            raise UpstreamError(f"upstream CA returned unreadable certificates: {exc}") from exc
        if not chain:
            raise UpstreamError("upstream CA returned an empty chain")
        got = identity_of(load_certs_pem(chain[0])[0])
        if got != identity:
            shown = got.spiffe_id if got else "no identity"
            raise UpstreamError(f"upstream CA issued {shown}, wanted {identity.spiffe_id}")
        return chain

    async def close(self) -> None:
        """Close the channel to the upstream CA."""
        await self.client.close()
