"""Workload identities and the certificates that prove them (no crypto here: PEM text only).

This module is the one place where identity names are validated: an `Identity` checks its
parts when it is built, so no invalid one can exist. The rules, and why:

- namespace: a Kubernetes namespace name (RFC 1123 label: lowercase letters, digits and '-',
  starting and ending with a letter or digit, at most 63 characters);
- service account: a Kubernetes service account name (RFC 1123 subdomain: labels as above
  joined by '.', at most 253 characters);
- trust domain: a SPIFFE trust domain (lowercase letters, digits, '.', '-' and '_' only, at
  most 255 characters; so no scheme, port, user info or path).

None of them can hold '/', so `spiffe://<td>/ns/<ns>/sa/<sa>` always splits back into the same
three parts: a service account "x/ns/client/sa/y" cannot pose as namespace "client".

The CA (meshagent.ca) issues WorkloadCertificates; the translator serves them to Envoy as SDS
secrets; the model never parses them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshagent.errors import ConfigError

# Full-match patterns (also used by the normalizer's schemas for the same fields).
NAMESPACE_PATTERN = r"(?=.{1,63}\Z)[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
SERVICE_ACCOUNT_PATTERN = (
    r"(?=.{1,253}\Z)[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)
TRUST_DOMAIN_PATTERN = r"[a-z0-9._-]{1,255}"

# part -> (compiled pattern, what it is, the rule in words)
_RULES: dict[str, tuple[re.Pattern[str], str, str]] = {
    "trust_domain": (
        re.compile(TRUST_DOMAIN_PATTERN),
        "trust domain",
        "a SPIFFE trust domain has only lowercase letters, digits, '.', '-' and '_' "
        "(no scheme, port or path), at most 255 characters",
    ),
    "namespace": (
        re.compile(NAMESPACE_PATTERN),
        "namespace",
        "a Kubernetes namespace has lowercase letters, digits and '-', starts and ends "
        "with a letter or digit, at most 63 characters",
    ),
    "service_account": (
        re.compile(SERVICE_ACCOUNT_PATTERN),
        "service account",
        "a Kubernetes service account name has lowercase letters, digits, '-' and '.', "
        "starts and ends with a letter or digit, at most 253 characters",
    ),
}
_SHOWN = 80  # characters of a rejected value quoted in the message


class InvalidIdentity(ValueError):
    """A trust domain, namespace or service account that cannot be part of an identity.

    `part` is "trust_domain", "namespace" or "service_account"; str() says what and why.
    """

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


def check_name(part: str, value: object) -> str:
    """value when it is a valid `part` ("trust_domain", "namespace", "service_account");
    InvalidIdentity saying why otherwise."""
    pattern, what, rule = _RULES[part]
    if isinstance(value, str) and pattern.fullmatch(value):
        return value
    shown = (
        repr(value)
        if not isinstance(value, str) or len(value) <= _SHOWN
        else (repr(value[:_SHOWN]) + f"... ({len(value)} characters)")
    )
    raise InvalidIdentity(part, f"{shown} is not a valid {what}: {rule}")


@dataclass(frozen=True, slots=True)
class Identity:
    """A SPIFFE identity in Istio's shape: spiffe://<trust-domain>/ns/<namespace>/sa/<sa>.

    Built only from valid parts (see the module docstring); InvalidIdentity otherwise.
    """

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        check_name("trust_domain", self.trust_domain)
        check_name("namespace", self.namespace)
        check_name("service_account", self.service_account)

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """The Identity of a SPIFFE URI of exactly the shape spiffe://<td>/ns/<ns>/sa/<sa>
        (no query, fragment, port, percent-encoding or extra segments); InvalidIdentity
        (a ValueError) otherwise."""
        prefix = "spiffe://"
        parts = uri[len(prefix) :].split("/") if uri.startswith(prefix) else []
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            shown = uri if len(uri) <= _SHOWN else uri[:_SHOWN] + "..."
            raise InvalidIdentity("uri", f"not an Istio SPIFFE identity: {shown!r}")
        return cls(parts[0], parts[2], parts[4])


def config_name(part: str, value: object, *, location: str = "", field: str = "") -> str:
    """check_name for input from a user: ConfigError at location/field instead."""
    try:
        return check_name(part, value)
    except InvalidIdentity as exc:
        raise ConfigError(str(exc), location=location, field=field) from None


def config_identity(
    trust_domain: str,
    namespace: str,
    service_account: str,
    *,
    fields: Mapping[str, str],
    location: str = "",
) -> Identity:
    """Identity(...) for input from a user: a ConfigError at location naming the field of the
    offending part (`fields` maps "trust_domain"/"namespace"/"service_account" to the flag or
    config key the user wrote) instead of InvalidIdentity."""
    try:
        return Identity(trust_domain, namespace, service_account)
    except InvalidIdentity as exc:
        field = fields.get(exc.part, exc.part)
        raise ConfigError(str(exc), location=location, field=field) from None


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """A key and certificate chain for one identity, plus the trust bundle to verify peers.

    cert_chain_pem: leaf first. roots_pem: one or more root certificates (several during a
    root rotation). not_after: expiry as a POSIX timestamp.
    """

    identity: Identity
    cert_chain_pem: str
    private_key_pem: str = field(repr=False)  # never in a log line or a traceback
    roots_pem: str
    not_after: float
    serial: str = ""
