"""Security policy of the mesh: PeerAuthentication (who must use mTLS), AuthorizationPolicy
(who may call whom) and RequestAuthentication (which end-user JWTs are valid), as Istio's
security.istio.io kinds declare them.

Built by the normalizer; the translator turns them into inbound filter chains, Envoy RBAC and
the JWT authentication filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meshagent.model.labels import Labels
from meshagent.model.source import Provenance


class MtlsMode(StrEnum):
    """PeerAuthentication's mtls.mode. UNSET inherits from the wider policy."""

    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


@dataclass(frozen=True, slots=True)
class PeerAuthn:
    """One PeerAuthentication. selector None: the whole namespace (mesh-wide in the root
    namespace). port_level: (port, mode) pairs that override mode for that workload port."""

    name: str
    namespace: str
    mode: MtlsMode = MtlsMode.UNSET
    selector: Labels | None = None
    port_level: tuple[tuple[int, MtlsMode], ...] = ()
    provenance: Provenance | None = None


class AuthzAction(StrEnum):
    """AuthorizationPolicy's action. CUSTOM asks an external authorizer (`provider`)."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


@dataclass(frozen=True, slots=True)
class Source:
    """rules[].from[].source: every set field must match (AND); values within one field OR."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """rules[].to[].operation: every set field must match (AND)."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    """rules[].when[]: key and its values / notValues."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """One rule: any of sources, and any of operations, and all conditions.

    An empty from (or to) matches everything, as in Istio."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzPolicy:
    """One AuthorizationPolicy. rules empty: ALLOW matches nothing, DENY matches nothing
    (Istio: "no rules" denies/allows nothing), except that an ALLOW with an empty rule `{}`
    matches everything; selector None: every workload of the namespace (mesh-wide in root)."""

    name: str
    namespace: str
    action: AuthzAction = AuthzAction.ALLOW
    selector: Labels | None = None
    rules: tuple[AuthzRule, ...] = ()
    provenance: Provenance | None = None
    provider: str = ""  # CUSTOM: the extension provider's name
    # Annotation `istio.io/dry-run: "true"`: evaluated as Envoy RBAC shadow rules (logged and
    # counted), never enforced.
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class JwtRule:
    """One RequestAuthentication jwtRules[] entry: how to find, check and pass on a JWT.

    jwks (inline JSON Web Key Set) wins over jwks_uri, as in Istio; both None: the keys
    cannot be known (no OpenID discovery here), so every token of this issuer fails.
    from_headers: (header name, value prefix) pairs; all three locations empty means the
    defaults (Authorization: Bearer, then the access_token query parameter).
    output_claim_to_headers: (header, claim) pairs. timeout_ms: the JWKS fetch timeout.
    """

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None
    jwks_uri: str | None = None
    from_headers: tuple[tuple[str, str], ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()
    timeout_ms: int | None = None
    # presence REQUIRED: a request without this rule's valid token is refused (401).
    required: bool = False
    # Claims whose space-separated string value matchers see as a list (besides Istio's
    # defaults "scope" and "permission").
    space_delimited_claims: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestAuthn:
    """One RequestAuthentication. selector None: the whole namespace (mesh-wide in root).
    Every policy that applies to a workload contributes its rules (they merge, as in Istio)."""

    name: str
    namespace: str
    selector: Labels | None = None
    jwt_rules: tuple[JwtRule, ...] = ()
    provenance: Provenance | None = None
