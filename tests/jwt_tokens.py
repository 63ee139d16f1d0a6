"""ES256 JSON Web Tokens and key sets for tests, signed with `cryptography` (RFC 7515/7518).

An Issuer holds one P-256 key: `jwks()` is its public key set (what a RequestAuthentication's
`jwks` carries or a JWKS server serves), `token(...)` a compact JWS with the claims given.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    """base64url without padding, as JWS encodes every part."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _coordinate(value: int) -> str:
    return b64url(value.to_bytes(32, "big"))


@dataclass
class Issuer:
    """A token issuer: its `iss`, a key id and a fresh P-256 signing key."""

    iss: str
    kid: str = "test-key"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def jwks(self) -> str:
        """The public JSON Web Key Set, as JSON text."""
        numbers = self.key.public_key().public_numbers()
        jwk = {
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "x": _coordinate(numbers.x),
            "y": _coordinate(numbers.y),
        }
        return json.dumps({"keys": [jwk]})

    def token(self, sub: str, aud: str, *, ttl: float = 300.0, **claims: Any) -> str:
        """A token for sub and aud, valid for ttl seconds from now (negative: expired);
        claims add to or replace the standard ones (e.g. iss=...)."""
        now = int(time.time())
        body = {"iss": self.iss, "sub": sub, "aud": aud, "iat": now, "exp": now + int(ttl)}
        body.update(claims)
        return self.sign(body)

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact ES256 JWS of claims."""
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
