"""Which workload-scoped security policies apply to a local workload, and which inbound ports
speak HTTP: shared by the inbound listeners and the JWT key-set clusters.

A policy applies to a workload of its own namespace (all of them without a selector, else those
whose labels match) and, from the root namespace, mesh-wide.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from meshagent.model import InboundPort, LocalWorkload, ProxySpec, selector_matches
from meshagent.model.security import AuthzPolicy, PeerAuthn, RequestAuthn
from meshagent.model.services import HTTP_PROTOCOLS, KNOWN_PROTOCOLS

# Inbound ports that get an HTTP connection manager (and so HTTP RBAC, JWT, ext_authz).

P = TypeVar("P", PeerAuthn, AuthzPolicy, RequestAuthn)


def is_http(port: InboundPort) -> bool:
    """Whether an inbound port is served by an HTTP connection manager."""
    return port.protocol.upper() in HTTP_PROTOCOLS


def is_sniffed(port: InboundPort) -> bool:
    """Whether an inbound port's protocol is unknown, so HTTP is told from the rest by the
    first bytes (http_inspector)."""
    return port.protocol.upper() not in KNOWN_PROTOCOLS


def applies(
    policy: PeerAuthn | AuthzPolicy | RequestAuthn, workload: LocalWorkload, root: str
) -> bool:
    """Whether policy selects workload (see the module docstring)."""
    if policy.namespace not in (workload.namespace, root):
        return False
    return policy.selector is None or selector_matches(policy.selector, workload.labels)


def applicable(policies: Mapping[str, P], proxy: ProxySpec, workload: LocalWorkload) -> list[P]:
    """The policies (a snapshot map keyed "<namespace>/<name>") that apply to workload, in key
    order."""
    return [
        policies[key]
        for key in sorted(policies)
        if applies(policies[key], workload, proxy.root_namespace)
    ]
