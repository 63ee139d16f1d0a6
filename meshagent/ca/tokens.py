"""Bootstrap tokens: compact JWS (ES256) with the caller's namespace and service account.

A token is `base64url(header).base64url(claims).base64url(signature)` as in RFC 7515/7519,
signed with the CA directory's token-key.pem. Claims: iss "meshagent-ca", aud
"istio-ca" (the audience Istio's agents use), sub (the SPIFFE id), ns, sa, iat, exp, jti. The
CA derives the caller's identity from the claims only. Verified tokens are cached (keyed by the
exact token text, least recently used evicted first) until their own `exp` and never past it,
so that the hot path costs a dict lookup; replacing the verification key empties the cache.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from meshagent.ca.errors import AuthenticationError
from meshagent.model.identity import Identity, InvalidIdentity

ISSUER, AUDIENCE = "meshagent-ca", "istio-ca"
MAX_TOKEN_BYTES = 4096
_HEADER = {"alg": "ES256", "typ": "JWT"}
CACHE_LIMIT = 10_000  # verified tokens a TokenVerifier remembers by default


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def create_token(
    key: ec.EllipticCurvePrivateKey, identity: Identity, ttl: float, *, now: float | None = None
) -> str:
    """A token for identity that expires ttl seconds from now."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": identity.spiffe_id,
        "ns": identity.namespace,
        "sa": identity.service_account,
        "iat": issued,
        "exp": issued + max(1, int(ttl)),
        "jti": secrets.token_hex(8),
    }
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    der = key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class TokenVerifier:
    """Checks tokens against the CA's public key and trust domain; returns the identity."""

    def __init__(
        self,
        public_key: ec.EllipticCurvePublicKey,
        trust_domain: str,
        *,
        clock: Callable[[], float] = time.time,
        cache_limit: int = CACHE_LIMIT,
    ) -> None:
        """cache_limit: how many verified tokens are remembered (least recently used go
        first), so that a caller's repeated requests skip the signature check."""
        self._key, self._trust_domain, self._clock = public_key, trust_domain, clock
        self._cache: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        self._cache_limit = cache_limit

    def replace_key(self, public_key: ec.EllipticCurvePublicKey) -> None:
        """Verify with public_key from now on; tokens verified with the old key are forgotten."""
        self._key = public_key
        self._cache.clear()

    def verify(self, token: str) -> Identity:
        """The identity the token grants; AuthenticationError saying why otherwise."""
        cached = self._cache.get(token)
        if cached is not None:
            identity, expires = cached
            if self._clock() < expires:
                self._cache.move_to_end(token)
                return identity
            del self._cache[token]
            raise AuthenticationError("token has expired")
        identity, expires = self._verify(token)
        if len(self._cache) >= self._cache_limit:
            self._cache.popitem(last=False)  # bounded memory: the least recently used goes
        self._cache[token] = (identity, expires)
        return identity

    def _verify(self, token: str) -> tuple[Identity, float]:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationError("token is too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthenticationError("token is not a signed JWT (header.claims.signature)")
        try:
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except (ValueError, UnicodeDecodeError):
            raise AuthenticationError("token is not valid base64url JSON") from None
        if not isinstance(header, dict) or header.get("alg") != "ES256" or len(signature) != 64:
            raise AuthenticationError("token must be signed with ES256")
        self._check_signature(f"{parts[0]}.{parts[1]}", signature)
        return self._identity(claims)

    def _check_signature(self, signing_input: str, signature: bytes) -> None:
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            self._key.verify(der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise AuthenticationError(
                "token signature does not verify (forged or another CA's)"
            ) from None

    def _identity(self, claims: Any) -> tuple[Identity, float]:
        if (
            not isinstance(claims, dict)
            or claims.get("iss") != ISSUER
            or claims.get("aud") != AUDIENCE
        ):
            raise AuthenticationError("token is not for this CA (iss/aud)")
        expires = claims.get("exp")
        if not isinstance(expires, int) or self._clock() >= expires:
            raise AuthenticationError("token has expired")
        ns, sa = claims.get("ns"), claims.get("sa")
        if not isinstance(ns, str) or not isinstance(sa, str) or not ns or not sa:
            raise AuthenticationError("token has no namespace/service account")
        try:
            identity = Identity(self._trust_domain, ns, sa)
        except InvalidIdentity as exc:  # e.g. sa "x/ns/client/sa/y" posing as namespace client
            raise AuthenticationError(f"token names an invalid identity: {exc}") from None
        if claims.get("sub") != identity.spiffe_id:
            raise AuthenticationError(f"token is for another trust domain: {claims.get('sub')}")
        return identity, float(expires)
