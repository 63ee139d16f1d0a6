"""Trust-domain aliases in AuthorizationPolicy, as Istio's trust-domain bundle expands them.

The bundle is the proxy's trust domain followed by its aliases (meshConfig.trustDomainAliases,
agent config `trust_domain_aliases`). A principal `<td>/ns/<ns>/sa/<sa>` whose trust domain is
one of the bundle's (or matches one with a leading or trailing `*`), or is `cluster.local`,
which stands for the local trust domain, is matched in every trust domain of the bundle. Other
principals, principals with a `*` trust domain and principals of another shape are kept as
written. A `trustDomains` value naming a trust domain of the bundle matches all of them.
Namespaces and service accounts match any trust domain already.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshagent.model import ProxySpec

LOCAL_POINTER = "cluster.local"


def trust_bundle(proxy: ProxySpec) -> tuple[str, ...]:
    """The proxy's trust domain and its aliases, in that order."""
    return (proxy.trust_domain, *proxy.trust_domain_aliases)


def _prefix_match(value: str, pattern: str) -> bool:
    return pattern.endswith("*") and value.startswith(pattern[:-1])


def _suffix_match(value: str, pattern: str) -> bool:
    return pattern.startswith("*") and value.endswith(pattern[1:])


def _either_matches(a: str, b: str) -> bool:
    """Istio's symmetric match: equal, `*`, or either one a prefix/suffix pattern of the other."""
    return (
        a == b
        or b == "*"
        or _prefix_match(a, b)
        or _prefix_match(b, a)
        or _suffix_match(a, b)
        or _suffix_match(b, a)
    )


def _trust_domain_of(principal: str) -> str | None:
    """The trust domain of an Istio principal `<td>/ns/<ns>/sa/<sa>`; None for another shape."""
    parts = principal.split("/")
    return parts[0] if len(parts) == 5 else None


def expand_principals(values: Sequence[str], bundle: Sequence[str]) -> tuple[str, ...]:
    """values with each principal repeated for every trust domain of the bundle (see above)."""
    out: list[str] = []
    for principal in values:
        domain = _trust_domain_of(principal)
        known = domain is not None and (
            domain == LOCAL_POINTER or any(_either_matches(domain, td) for td in bundle)
        )
        if domain is None or domain == "*" or not known:
            out.append(principal)
            continue
        rest = principal[len(domain) :]
        for td in bundle:
            # A `*x` trust domain that covers td already stays as written (no duplicates).
            candidate = principal if _suffix_match(td, domain) else td + rest
            if candidate not in out:
                out.append(candidate)
    return tuple(out)


def expand_trust_domains(values: Sequence[str], bundle: Sequence[str]) -> tuple[str, ...]:
    """trustDomains values, where one naming a trust domain of the bundle stands for all."""
    out: list[str] = []
    for value in values:
        for item in bundle if value in bundle else (value,):
            if item not in out:
                out.append(item)
    return tuple(out)
