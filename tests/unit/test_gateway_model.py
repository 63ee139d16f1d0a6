"""Gateway model helpers: server hosts and gateway references, read as Istio reads them."""

from __future__ import annotations

import pytest

from meshagent.model.gateway import bound_gateways, gateway_key, server_host


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("shop.example.com", "*/shop.example.com"),
        ("*", "*/*"),
        ("./api.example.com", "edge/api.example.com"),
        ("apps/*.example.com", "apps/*.example.com"),
        ("*/web.example.com", "*/web.example.com"),
    ],
)
def test_server_hosts_are_namespace_slash_host(entry: str, expected: str) -> None:
    assert server_host(entry, "edge") == expected


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("ingress", "shop/ingress"),
        ("edge/ingress", "edge/ingress"),
        ("./ingress", "shop/ingress"),
        ("ingress.edge.svc.cluster.local", "edge/ingress"),
        ("ingress.edge", "edge/ingress"),
    ],
)
def test_gateway_references_resolve_as_istio_does(reference: str, expected: str) -> None:
    assert gateway_key(reference, "shop") == expected


def test_mesh_is_not_a_gateway_and_no_gateways_binds_none() -> None:
    assert bound_gateways(("mesh", "ingress"), "shop") == {"shop/ingress"}
    assert bound_gateways((), "shop") == frozenset()
