"""Errors of the certificate authority, each mapped to one gRPC status by the service."""

from __future__ import annotations

from meshagent.errors import MeshAgentError


class CaError(MeshAgentError):
    """Base of the CA's deliberate errors."""


class CsrRejected(CaError):
    """The CSR is malformed, badly signed or uses a key type the CA does not accept."""


class IdentityMismatch(CaError):
    """The CSR asks for an identity other than the caller's authenticated one."""


class AuthenticationError(CaError):
    """No credential, or one that is expired, forged or not for this CA."""


class RateLimited(CaError):
    """The caller asked for certificates faster than its budget allows."""


class UpstreamError(CaError):
    """The upstream CA refused a request or could not be reached."""


class LifetimeRejected(CaError):
    """The requested certificate lifetime is above the CA's maximum (Istio: TTL_ERROR)."""


class MalformedRequest(CaError):
    """The request message cannot be decoded (not a valid IstioCertificateRequest)."""
