"""What an outbound HTTP request passes through (issue 17, item 5: the data plane's cost).

Fault and CORS stay on every HTTP listener, as in Istio (a new fault or CORS policy changes
routes only, never drains a listener), but disabled by default: only the routes that configure
them run them. An EnvoyFilter that merges config into them means it for every route, as in
Istio, and so enables them.
"""

from __future__ import annotations

from typing import Any

from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)

from meshagent.xds import typeurls
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import protos
from tests.unit.test_envoyfilter import envoy_filter, translate

FAULTY = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: faulty, namespace: default}
spec:
  hosts: [faulty.example.com]
  http:
  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    corsPolicy: {allowOrigins: [{exact: "https://a.example"}], allowMethods: [GET]}
    route: [{destination: {host: faulty.example.com}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: faulty, namespace: default}
spec:
  hosts: [faulty.example.com]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"""


def outbound_managers(result: ResourceSet) -> list[hcm.HttpConnectionManager]:
    """The HCMs of the outbound HTTP listeners (those routing through RDS)."""
    out = []
    for resource in result.of(typeurls.LISTENER).values():
        listener = Listener.FromString(resource.value)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.name != protos.HTTP_CONNECTION_MANAGER:
                    continue
                manager = hcm.HttpConnectionManager.FromString(network_filter.typed_config.value)
                if manager.HasField("rds"):
                    out.append(manager)
    return out


def filters_of(manager: hcm.HttpConnectionManager) -> list[tuple[str, bool]]:
    return [(f.name, f.disabled) for f in manager.http_filters]


def test_fault_and_cors_are_present_but_off_unless_a_route_enables_them() -> None:
    # given a mesh with and without fault/CORS policies, when translated, every outbound HTTP
    # manager carries fault and CORS disabled and the router enabled, last
    managers = outbound_managers(translate(FAULTY))
    assert managers
    for manager in managers:
        assert filters_of(manager) == [
            (protos.FAULT_FILTER, True),
            (protos.CORS_FILTER, True),
            (protos.ROUTER_FILTER, False),
        ]


def per_filter_config(result: ResourceSet, host: str) -> dict[str, Any]:
    """name -> type URL of the typed_per_filter_config of host's routes."""
    found: dict[str, Any] = {}
    for resource in result.of(typeurls.ROUTE).values():
        config = RouteConfiguration.FromString(resource.value)
        for vhost in config.virtual_hosts:
            if host in vhost.domains:
                for route in vhost.routes:
                    found |= {k: v.type_url for k, v in route.typed_per_filter_config.items()}
    return found


def test_a_route_with_fault_and_cors_policies_enables_the_filters_for_itself() -> None:
    # given a VirtualService with a fault and a CORS policy, when translated, its route carries
    # their per-route configs, which enable the disabled-by-default filters (checked against a
    # real Envoy in tests/integration/test_routing_e2e.py)
    found = per_filter_config(translate(FAULTY), "faulty.example.com")
    assert found[protos.FAULT_FILTER].endswith("fault.v3.HTTPFault")
    assert found[protos.CORS_FILTER].endswith("cors.v3.CorsPolicy")


def test_an_envoyfilter_merging_into_the_fault_filter_enables_it_for_every_route() -> None:
    # given an EnvoyFilter that merges header-controlled faults into the fault filter (meant
    # for every route, as Istio runs it on every route), when translated, the filter is enabled
    patch = {
        "configPatches": [
            {
                "applyTo": "HTTP_FILTER",
                "match": {
                    "context": "SIDECAR_OUTBOUND",
                    "listener": {
                        "filterChain": {
                            "filter": {
                                "name": "envoy.filters.network.http_connection_manager",
                                "subFilter": {"name": "envoy.filters.http.fault"},
                            }
                        }
                    },
                },
                "patch": {
                    "operation": "MERGE",
                    "value": {
                        "typed_config": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.filters.http.fault.v3.HTTPFault",
                            "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
                        }
                    },
                },
            }
        ]
    }
    managers = outbound_managers(translate(envoy_filter("header-faults", patch)))
    assert managers
    for manager in managers:
        assert filters_of(manager) == [
            (protos.FAULT_FILTER, False),
            (protos.CORS_FILTER, True),
            (protos.ROUTER_FILTER, False),
        ]
