"""Certificates for the workloads on this host: keys, issuance, persistence, renewal.

For each identity the manager keeps a key and chain (from a local CA or an upstream one),
persisted under its directory with 0600 and reused after a restart while still valid. A
certificate is renewed once 50% of its lifetime has passed, give or take 5% of jitter (so that
a fleet started together does not renew together); a failed renewal is retried with backoff.
Each rotation calls `on_rotate` with every current certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshagent.ca import certstore
from meshagent.ca.authority import DEFAULT_TTL_S
from meshagent.ca.errors import CaError
from meshagent.ca.issuer import Issuer
from meshagent.ca.keys import generate_key, key_to_pem, load_certs_pem, make_csr
from meshagent.model.identity import Identity, WorkloadCertificate

log = structlog.get_logger("meshagent.ca")

RENEW_FRACTION, JITTER_FRACTION = 0.5, 0.05
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0


class CertObserver(Protocol):
    """Told about each issuance attempt (metrics)."""

    def cert_issued(self, identity: Identity, not_after: float) -> None: ...

    def cert_failed(self, identity: Identity, reason: str) -> None: ...


class TrustedIssuer(Issuer, Protocol):
    """An Issuer that also knows the trust bundle and whether a stored chain is still its own."""

    def trust_bundle(self, chain: Sequence[str]) -> str: ...

    def accepts(self, chain: Sequence[str]) -> bool: ...


@dataclass(slots=True)
class _State:
    identity: Identity
    cert: WorkloadCertificate | None = None
    renew_at: float = 0.0
    failures: int = 0


class WorkloadCertManager:
    """Keeps one valid certificate per identity; see the module docstring."""

    def __init__(
        self,
        identities: Sequence[Identity],
        issuer: TrustedIssuer,
        store_dir: Path,
        *,
        key_type: str = "ec-p256",
        ttl: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_rotate: Callable[[tuple[WorkloadCertificate, ...]], None] | None = None,
        observer: CertObserver | None = None,
    ) -> None:
        self.issuer, self.store_dir = issuer, store_dir
        self.key_type, self.ttl = key_type, ttl
        self._clock, self._rand, self._sleep = clock, rand, sleep
        self._on_rotate, self._observer = on_rotate, observer
        self._states = {i: _State(i) for i in dict.fromkeys(identities)}
        self._task: asyncio.Task[None] | None = None

    def certificates(self) -> tuple[WorkloadCertificate, ...]:
        """The current certificates, in the order the identities were given."""
        return tuple(s.cert for s in self._states.values() if s.cert is not None)

    def load_stored(self) -> int:
        """Adopt valid certificates from the store; how many were reused."""
        reused = 0
        for state in self._states.values():
            stored = certstore.load(self.store_dir, state.identity)
            if stored is None or not self._reusable(stored):
                continue
            state.cert = _workload_cert(
                state.identity, stored.key_pem, stored.chain_pem, stored.roots_pem
            )
            state.renew_at = self._renew_time(stored.issued_at, state.cert.not_after)
            reused += 1
            log.info("cert_reused", identity=state.identity.spiffe_id, serial=state.cert.serial)
        return reused

    def _reusable(self, stored: certstore.StoredCert) -> bool:
        now = self._clock()
        if stored.leaf.not_valid_after_utc.timestamp() <= now:
            return False
        return _key_type(stored.leaf) == self.key_type and self.issuer.accepts(stored.chain_pem)

    async def start(self) -> None:
        """Reuse what is stored, issue what is missing (errors are retried, not raised), and
        start the renewal loop."""
        self.load_stored()
        await self.renew_due()
        self._task = asyncio.create_task(self._loop(), name="workload-certs")

    async def stop(self) -> None:
        """Stop the renewal loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def next_renewal(self) -> float:
        """When the next renewal (or retry) is due, as a POSIX timestamp."""
        return min((s.renew_at for s in self._states.values()), default=float("inf"))

    async def renew_due(self) -> int:
        """Renew every certificate whose time has come; how many were renewed.

        on_rotate is called once when at least one certificate changed.
        """
        now = self._clock()
        renewed = 0
        for state in self._states.values():
            if state.renew_at <= now:
                renewed += await self._renew(state)
        if renewed and self._on_rotate is not None:
            self._on_rotate(self.certificates())
        return renewed

    async def _renew(self, state: _State) -> int:
        key = generate_key(self.key_type)
        try:
            chain = await self.issuer.issue(make_csr(key, state.identity), state.identity, self.ttl)
            cert = _workload_cert(
                state.identity, key_to_pem(key), chain, self.issuer.trust_bundle(chain)
            )
        except (CaError, ValueError, OSError) as exc:
            self._failed(state, str(exc))
            return 0
        issued_at = self._clock()
        await asyncio.to_thread(
            certstore.save,
            self.store_dir,
            state.identity,
            cert.private_key_pem,
            chain,
            cert.roots_pem,
        )
        state.cert, state.failures = cert, 0
        state.renew_at = self._renew_time(issued_at, cert.not_after)
        if self._observer is not None:
            self._observer.cert_issued(state.identity, cert.not_after)
        log.info(
            "cert_issued",
            identity=state.identity.spiffe_id,
            serial=cert.serial,
            not_after=cert.not_after,
        )
        return 1

    def _failed(self, state: _State, reason: str) -> None:
        state.failures += 1
        delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (state.failures - 1))
        state.renew_at = self._clock() + delay
        if self._observer is not None:
            self._observer.cert_failed(state.identity, reason)
        log.error(
            "cert_issue_failed", identity=state.identity.spiffe_id, error=reason, retry_in_s=delay
        )

    def _renew_time(self, issued_at: float, not_after: float) -> float:
        lifetime = max(0.0, not_after - issued_at)
        jitter = (self._rand() * 2 - 1) * JITTER_FRACTION
        return issued_at + lifetime * (RENEW_FRACTION + jitter)

    async def _loop(self) -> None:
        while True:
            delay = min(max(self.next_renewal() - self._clock(), 0.05), 3600.0)
            await self._sleep(delay)
            try:
                await self.renew_due()
            except Exception:  # a bug must not stop renewals for good
                log.exception("cert_renewal_bug")


def _key_type(leaf: x509.Certificate) -> str:
    key = leaf.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec-p256" if key.curve.name == "secp256r1" else key.curve.name
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return "other"


def _workload_cert(
    identity: Identity, key_pem: str, chain: Sequence[str], roots_pem: str
) -> WorkloadCertificate:
    """The model's view: leaf and intermediates (the root travels in the trust bundle)."""
    certs = [load_certs_pem(pem)[0] for pem in chain]
    leaf = certs[0]
    if len(certs) > 1 and certs[-1].issuer == certs[-1].subject:
        chain = chain[:-1]
    return WorkloadCertificate(
        identity=identity,
        cert_chain_pem="".join(chain),
        private_key_pem=key_pem,
        roots_pem=roots_pem,
        not_after=leaf.not_valid_after_utc.timestamp(),
        serial=format(leaf.serial_number, "x"),
    )
