"""Bootstrap tokens, the per-caller rate limiter, and IssuanceService without gRPC."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from meshagent.ca.errors import AuthenticationError, CsrRejected, IdentityMismatch, RateLimited
from meshagent.ca.issuer import IssuanceService, Request
from meshagent.ca.keys import generate_key, make_csr
from meshagent.ca.ratelimit import TokenBucketLimiter
from meshagent.ca.state import load_self_signed, token_key
from meshagent.ca.tokens import TokenVerifier, create_token
from meshagent.model.identity import Identity
from tests.ca_helpers import FakeClock

TD = "cluster.local"
WEB = Identity(TD, "shop", "web")
NOW = 1_900_000_000.0


def verifier_for(tmp_path: Path, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(token_key(tmp_path).public_key(), TD, clock=clock)


def test_token_round_trip(tmp_path: Path) -> None:
    token = create_token(token_key(tmp_path), WEB, 600, now=NOW)
    assert verifier_for(tmp_path, FakeClock(NOW + 1)).verify(token) == WEB


def test_expired_token_is_refused_also_when_cached(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    verifier = verifier_for(tmp_path, clock)
    token = create_token(token_key(tmp_path), WEB, 600, now=NOW)
    assert verifier.verify(token) == WEB
    clock.now = NOW + 600
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(token)
    with pytest.raises(AuthenticationError, match="expired"):
        verifier_for(tmp_path, clock).verify(token)


def test_forged_token_is_refused(tmp_path: Path) -> None:
    forged = create_token(generate_key(), WEB, 600, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match="does not verify"):
        verifier_for(tmp_path, FakeClock(NOW)).verify(forged)


def test_tampered_claims_are_refused(tmp_path: Path) -> None:
    header, claims, sig = create_token(token_key(tmp_path), WEB, 600, now=NOW).split(".")
    data = json.loads(base64.urlsafe_b64decode(claims + "=="))
    data["sa"] = "admin"
    forged_claims = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthenticationError, match="does not verify"):
        verifier_for(tmp_path, FakeClock(NOW)).verify(f"{header}.{forged_claims}.{sig}")


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 5000])
def test_garbage_tokens_are_refused(tmp_path: Path, token: str) -> None:
    with pytest.raises(AuthenticationError):
        verifier_for(tmp_path, FakeClock(NOW)).verify(token)


def test_token_for_another_trust_domain_is_refused(tmp_path: Path) -> None:
    token = create_token(token_key(tmp_path), Identity("other.org", "shop", "web"), 600, now=NOW)
    with pytest.raises(AuthenticationError, match="trust domain"):
        verifier_for(tmp_path, FakeClock(NOW)).verify(token)


def test_token_bucket_allows_burst_then_rate() -> None:
    clock = FakeClock(0.0)
    limiter = TokenBucketLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # per caller
    clock.now = 0.5
    assert limiter.allow("a") and not limiter.allow("a")


def test_token_bucket_memory_is_bounded() -> None:
    clock = FakeClock(0.0)
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock, max_callers=10)
    for i in range(100):
        limiter.allow(f"c{i}")
        clock.now += 2.0
    assert len(limiter._buckets) <= 11


def service(tmp_path: Path, clock: FakeClock, burst: int = 5) -> IssuanceService:
    ca = load_self_signed(tmp_path / "ca", TD, clock=clock)
    verifier = TokenVerifier(token_key(tmp_path / "ca").public_key(), TD, clock=clock)
    return IssuanceService(ca, verifier, TokenBucketLimiter(1.0, burst, clock=clock))


def test_service_takes_the_identity_from_the_token(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    svc = service(tmp_path, clock)
    token = create_token(token_key(tmp_path / "ca"), WEB, 600, now=NOW)
    identity, chain = svc.handle(Request(make_csr(generate_key(), WEB), 0, token, None))
    assert identity == WEB and len(chain) == 2
    other = make_csr(generate_key(), Identity(TD, "shop", "admin"))
    with pytest.raises(IdentityMismatch):
        svc.handle(Request(other, 0, token, None))
    with pytest.raises(CsrRejected):
        svc.handle(Request("junk", 0, token, None))
    with pytest.raises(AuthenticationError, match="no credential"):
        svc.handle(Request(make_csr(generate_key(), WEB), 0, None, None))


def test_service_rate_limits_per_caller(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    svc = service(tmp_path, clock, burst=2)
    token = create_token(token_key(tmp_path / "ca"), WEB, 600, now=NOW)
    csr = make_csr(generate_key(), WEB)
    svc.handle(Request(csr, 0, token, None))
    svc.handle(Request(csr, 0, token, None))
    with pytest.raises(RateLimited):
        svc.handle(Request(csr, 0, token, None))


class _CountingKey:
    """A public key that counts the signatures it checks."""

    def __init__(self, key: Any) -> None:
        self.key, self.checks = key, 0

    def verify(self, *args: Any) -> None:
        self.checks += 1
        self.key.verify(*args)


def test_token_cache_is_bounded_lru(tmp_path: Path) -> None:
    key = _CountingKey(token_key(tmp_path).public_key())
    verifier = TokenVerifier(key, TD, clock=FakeClock(NOW), cache_limit=2)  # type: ignore[arg-type]
    first, second, third = (create_token(token_key(tmp_path), WEB, 600, now=NOW) for _ in range(3))
    checks = []
    for token in (first, second, first, third, first, second):
        assert verifier.verify(token) == WEB
        checks.append(key.checks)
    # first is remembered (used again before third came); second was the least recently
    # used when third came, so it is checked again
    assert checks == [1, 2, 2, 3, 3, 4]


def test_replacing_the_token_key_forgets_verified_tokens(tmp_path: Path) -> None:
    verifier = verifier_for(tmp_path, FakeClock(NOW))
    token = create_token(token_key(tmp_path), WEB, 600, now=NOW)
    assert verifier.verify(token) == WEB
    verifier.replace_key(generate_key().public_key())  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match="does not verify"):
        verifier.verify(token)
