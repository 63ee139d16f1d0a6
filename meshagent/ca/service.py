"""The CreateCertificate gRPC server (Istio's istio.v1.auth.IstioCertificateService): a thin
grpc.aio shell around IssuanceService.

Callers authenticate with `authorization: Bearer <token>` or with a client certificate from this
CA. gRPC Python cannot ask for an optional client certificate, so certificate-authenticated
renewal has its own port (`mtls_address`), which requires one; the main port takes tokens.
Each refusal maps to one status code:
UNAUTHENTICATED (no, expired or forged credential, or one naming an invalid identity),
PERMISSION_DENIED (the CSR names another identity), INVALID_ARGUMENT (bad CSR, a lifetime
above the maximum, a request that is not an IstioCertificateRequest), RESOURCE_EXHAUSTED (rate
limit; oversized messages are refused by gRPC itself with the same code). The request is
decoded here rather than by gRPC, so that a malformed one gets INVALID_ARGUMENT and is counted
like any other refusal.
"""

from __future__ import annotations

from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from meshagent.ca.authority import CertificateAuthority
from meshagent.ca.errors import (
    AuthenticationError,
    CaError,
    CsrRejected,
    IdentityMismatch,
    LifetimeRejected,
    MalformedRequest,
    RateLimited,
)
from meshagent.ca.issuer import IssuanceService, Request
from meshagent.ca.keys import generate_key, key_to_pem
from meshagent.ca.proto.messages import (
    SERVICE,
    IstioCertificateRequest,
    IstioCertificateResponse,
)
from meshagent.model.identity import Identity

log = structlog.get_logger("meshagent.ca")

MAX_MESSAGE_BYTES = 64 * 1024
SERVER_CERT_TTL_S = 90 * 86400.0
SERVER_NAMESPACE, SERVER_ACCOUNT = "istio-system", "meshagent-ca"

_CODES: dict[type[CaError], grpc.StatusCode] = {
    AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    IdentityMismatch: grpc.StatusCode.PERMISSION_DENIED,
    CsrRejected: grpc.StatusCode.INVALID_ARGUMENT,
    LifetimeRejected: grpc.StatusCode.INVALID_ARGUMENT,
    MalformedRequest: grpc.StatusCode.INVALID_ARGUMENT,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_for(error: CaError) -> grpc.StatusCode:
    """The gRPC status code of a refusal."""
    for kind, code in _CODES.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class CertificateServer:
    """Serves CreateCertificate over TLS (or plaintext when tls=False, for tests only)."""

    def __init__(
        self,
        service: IssuanceService,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        reuse_port: bool = False,
    ):
        self.service = service
        self._max = max_message_bytes
        # SO_REUSEPORT only where several worker processes share the address on purpose;
        # otherwise a second agent on the same port fails to bind instead of sharing it.
        self._reuse_port = reuse_port
        self._server: Any = None
        self.port: int | None = None
        self.mtls_port: int | None = None

    async def start(
        self,
        address: str,
        *,
        tls: bool = True,
        mtls_address: str | None = None,
        names: tuple[str, ...] = ("localhost",),
    ) -> int:
        """Listen on address ("127.0.0.1:15012"; port 0 picks one); the bound port.

        With mtls_address, also listen there requiring a client certificate of this CA
        (`self.mtls_port` is that port).
        """
        options = [
            ("grpc.max_receive_message_length", self._max),
            ("grpc.max_send_message_length", 4 * self._max),
            ("grpc.so_reuseport", 1 if self._reuse_port else 0),
        ]
        server = grpc.aio.server(options=options)
        handler = grpc.unary_unary_rpc_method_handler(
            self._create,
            request_deserializer=None,  # raw bytes: _create decodes them (see the docstring)
            response_serializer=_serialize,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"CreateCertificate": handler}),)
        )
        host = address.rpartition(":")[0].strip("[]")
        all_names = (*names, host) if host else names
        if tls:
            self.port = server.add_secure_port(address, self._credentials(all_names, False))
        else:
            self.port = server.add_insecure_port(address)
        if mtls_address:
            creds = self._credentials(all_names, True)
            self.mtls_port = server.add_secure_port(mtls_address, creds)
        await server.start()
        self._server = server
        log.info("ca_server_started", address=address, port=self.port, tls=tls)
        return self.port

    def _credentials(self, names: tuple[str, ...], client_auth: bool) -> grpc.ServerCredentials:
        ca: CertificateAuthority = self.service.ca
        key = generate_key("ec-p256")
        identity = Identity(ca.trust_domain, SERVER_NAMESPACE, SERVER_ACCOUNT)
        chain = ca.issue_server(key.public_key(), names, identity, SERVER_CERT_TTL_S)
        return grpc.ssl_server_credentials(
            [(key_to_pem(key).encode(), "".join(chain[:-1] or chain).encode())],
            root_certificates=ca.roots_pem.encode(),
            require_client_auth=client_auth,
        )

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving; safe to call twice."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def _create(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        peer = context.peer() or ""
        try:
            request = IstioCertificateRequest.FromString(raw)
        except DecodeError as exc:
            error = MalformedRequest(f"request is not an IstioCertificateRequest: {exc}")
            self.service.refused(error, peer)
            await context.abort(status_for(error), str(error))
        token = _bearer(context)
        call = Request(
            csr=request.csr,
            validity_s=request.validity_duration,
            bearer_token=token,
            # Looked up only when needed: the per-call cost shows in the issuance rate.
            peer_cert_pem=None if token else _peer_cert(context),
            peer=peer,
        )
        try:
            _, chain = self.service.handle(call)
        except CaError as exc:  # counted and logged by the service
            await context.abort(status_for(exc), str(exc))
        return IstioCertificateResponse(cert_chain=chain)


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _peer_cert(context: grpc.aio.ServicerContext) -> str | None:
    values = context.auth_context().get("x509_pem_cert") or []
    return values[0].decode("ascii", "replace") if values else None
