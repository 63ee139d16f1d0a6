"""Multi-network endpoints: pods on another network are reached through its east-west gateway.

As Istio does with meshNetworks: an endpoint whose network differs from the proxy's (both
non-empty) is not reachable directly, so the endpoints of each remote network (per locality)
are replaced by that network's gateway endpoints, whose weight is the number of healthy
endpoints behind them (split evenly when a network has several gateways). The gateway routes
by SNI, `outbound_.<port>_.<subset>_.<host>`, which the cluster's mesh mTLS already sends
(Istio's AUTO_PASSTHROUGH). A remote network without a gateway is unreachable: its endpoints are
dropped. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from meshagent.model import Endpoint, Labels
from meshagent.model.proxy import ProxySpec
from meshagent.model.services import ServicePort
from meshagent.xds.translate.endpoints import selected_endpoints
from meshagent.xds.translate.policy import ClusterPlan

# network -> ((gateway address, port), ...), as in ProxySpec.network_gateways
Gateways = tuple[tuple[str, tuple[tuple[str, int], ...]], ...]


def is_remote(endpoint_network: str, proxy_network: str) -> bool:
    """An empty network on either side means "the same network" (Istio's rule)."""
    return bool(endpoint_network and proxy_network and endpoint_network != proxy_network)


def via_gateways(
    endpoints: Sequence[Endpoint], port: ServicePort, proxy_network: str, gateways: Gateways
) -> list[Endpoint]:
    """endpoints with every remote network's endpoints replaced by its gateways (see module)."""
    local: list[Endpoint] = []
    behind: dict[tuple[str, str], int] = {}  # (network, locality) -> healthy weight
    for e in endpoints:
        if not is_remote(e.network, proxy_network):
            local.append(e)
        elif e.healthy:
            key = (e.network, e.locality)
            behind[key] = behind.get(key, 0) + e.weight
    if not behind:
        return local
    by_network = dict(gateways)
    for (network, locality), weight in sorted(behind.items()):
        addresses = by_network.get(network, ())
        for address, gateway_port in addresses:
            local.append(
                Endpoint(
                    address=address,
                    ports=((port.name, gateway_port),),
                    weight=max(1, weight // len(addresses)),
                    locality=locality,
                    network=network,
                )
            )
    return local


def has_remote(endpoints: Sequence[Endpoint], proxy_network: str) -> bool:
    """Whether any endpoint is on another network (the common case, none, costs one pass)."""
    return bool(proxy_network) and any(is_remote(e.network, proxy_network) for e in endpoints)


def network_view(
    plan: ClusterPlan, endpoints: tuple[Endpoint, ...], proxy: ProxySpec
) -> tuple[ClusterPlan, tuple[Endpoint, ...]]:
    """The (plan, endpoints) to encode for proxy: unchanged when every endpoint is local;
    otherwise the plan's subset already applied (gateway endpoints carry no subset labels)."""
    if not has_remote(endpoints, proxy.network):
        return plan, endpoints
    chosen = selected_endpoints(plan, endpoints)
    rewritten = via_gateways(chosen, plan.port, proxy.network, proxy.network_gateways)
    return dataclasses.replace(plan, labels=()), tuple(rewritten)


def prioritized_view(
    plan: ClusterPlan, labels: Labels, endpoints: tuple[Endpoint, ...], proxy: ProxySpec
) -> list[Endpoint]:
    """The endpoints labels selects for one priority of plan's cluster (resolve.py), remote
    networks' behind their gateways."""
    chosen = selected_endpoints(dataclasses.replace(plan, labels=labels), endpoints)
    if not has_remote(chosen, proxy.network):
        return chosen
    return via_gateways(chosen, plan.port, proxy.network, proxy.network_gateways)
