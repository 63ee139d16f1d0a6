"""What the CreateCertificate service does per request, without gRPC: authenticate the caller,
rate-limit it, check the lifetime, and issue for the caller's identity only.

Every issuance is logged once (`ca_certificate_issued`: identity, serial, expiry, peer); every
refusal is counted by reason (the error's class name, through `observe`) and logged
(`ca_request_refused`) at a bounded rate per reason, with the number of lines held back.

Also the Issuer protocol that the workload certificate manager uses (a local CA or an
upstream one), and its local implementation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from cryptography import x509

from meshagent.ca.authority import DEFAULT_TTL_S, CertificateAuthority, identity_of, signed_by
from meshagent.ca.errors import AuthenticationError, CaError, RateLimited
from meshagent.ca.keys import load_certs_pem
from meshagent.ca.ratelimit import LogBudget, TokenBucketLimiter
from meshagent.ca.tokens import TokenVerifier
from meshagent.model.identity import Identity

log = structlog.get_logger("meshagent.ca")


class Issuer(Protocol):
    """Where a workload's certificate comes from: PEM chain (leaf first, root last)."""

    async def issue(self, csr_pem: str, identity: Identity, ttl: float) -> list[str]: ...


class LocalIssuer:
    """Issues with a CertificateAuthority in this process."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca

    async def issue(self, csr_pem: str, identity: Identity, ttl: float) -> list[str]:
        """Sign directly; the caller is this agent, trusted with its own workloads."""
        return self.ca.issue(csr_pem, identity, ttl)

    def trust_bundle(self, chain: Sequence[str]) -> str:
        """The CA's roots (several while a root is rotated)."""
        return self.ca.roots_pem

    def accepts(self, chain: Sequence[str]) -> bool:
        """Whether a stored chain was signed by this CA's current signer."""
        try:
            leaf = load_certs_pem(chain[0])[0]
        except (ValueError, IndexError):
            return False
        return signed_by(leaf, self.ca.signer_cert)


@dataclass(frozen=True, slots=True)
class Request:
    """One CreateCertificate call as the gRPC shell hands it over."""

    csr: str
    validity_s: int
    bearer_token: str | None
    peer_cert_pem: str | None
    peer: str = ""  # the caller's address as gRPC reports it, for the log


IssueObserver = Callable[[str, str], None]


class IssuanceService:
    """Authenticates, rate-limits and issues; raises CaError subclasses for each refusal.

    `observe(outcome, reason)` is told about every request: outcome "issued" or "refused";
    `log_budget` bounds the refusal log lines (default: 5 per minute per reason).
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        verifier: TokenVerifier,
        limiter: TokenBucketLimiter,
        *,
        default_ttl: float = DEFAULT_TTL_S,
        observe: IssueObserver | None = None,
        log_budget: LogBudget | None = None,
    ) -> None:
        self.ca, self.verifier, self.limiter = ca, verifier, limiter
        self.default_ttl = default_ttl
        self._observe = observe or (lambda outcome, reason: None)
        self._log_budget = log_budget or LogBudget()

    def handle(self, request: Request) -> tuple[Identity, list[str]]:
        """The caller's identity and its new chain; CaError when refused (nothing issued).

        A validity of 0 or less asks for the default lifetime; one above the CA's maximum is
        refused (LifetimeRejected), as Istio's CA refuses it.
        """
        try:
            identity = self.authenticate(request)
            if not self.limiter.allow(identity.spiffe_id):
                raise RateLimited(f"too many certificate requests from {identity.spiffe_id}")
            ttl = float(request.validity_s) if request.validity_s > 0 else self.default_ttl
            issued = self.ca.issue_leaf(request.csr, identity, ttl)
        except CaError as exc:
            self.refused(exc, request.peer)
            raise
        self._observe("issued", "")
        log.info(
            "ca_certificate_issued",
            identity=identity.spiffe_id,
            serial=issued.serial,
            not_after=dt.datetime.fromtimestamp(issued.not_after, dt.UTC).isoformat(),
            peer=request.peer,
        )
        return identity, issued.chain

    def refused(self, error: CaError, peer: str) -> None:
        """Count a refusal by reason and log it, unless its reason's log budget is spent
        (the next line logged for that reason says how many were held back)."""
        reason = type(error).__name__
        self._observe("refused", reason)
        held_back = self._log_budget.take(reason)
        if held_back is not None:
            log.warning(
                "ca_request_refused", reason=reason, error=str(error), peer=peer,
                suppressed=held_back,
            )  # fmt: skip

    def authenticate(self, request: Request) -> Identity:
        """The identity from the bearer token, else from a client certificate of this CA."""
        if request.bearer_token:
            return self.verifier.verify(request.bearer_token)
        if request.peer_cert_pem:
            return self._identity_from_peer(request.peer_cert_pem)
        raise AuthenticationError(
            "no credential: send 'authorization: Bearer <token>' or a client certificate"
        )

    def _identity_from_peer(self, pem: str) -> Identity:
        try:
            cert = load_certs_pem(pem)[0]
        except ValueError:
            raise AuthenticationError("client certificate cannot be read") from None
        if not any(signed_by(cert, issuer) for issuer in self._issuers()):
            raise AuthenticationError("client certificate is not from this CA")
        identity = identity_of(cert)
        if identity is None or identity.trust_domain != self.ca.trust_domain:
            raise AuthenticationError("client certificate has no identity of this trust domain")
        return identity

    def _issuers(self) -> list[x509.Certificate]:
        return [self.ca.signer_cert]
