"""Multi-network translation: remote networks' endpoints through their gateways, with the SNI
the gateway routes by; and the `network` / `networks` agent config keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from meshagent.agent.config import parse_config
from meshagent.errors import ConfigError
from meshagent.model import Endpoint, Identity, ServicePort, WorkloadCertificate
from meshagent.xds import typeurls
from meshagent.xds.translate import generate
from meshagent.xds.translate.networks import via_gateways
from tests.unit.translate_inputs import load_case

CASE = Path(__file__).parent / "testdata" / "translate" / "16-multi-network.input.yaml"
PORT = ServicePort(8080, "http", "HTTP")
GATEWAYS = (("pods", (("192.0.2.1", 15443),)),)


def test_without_a_proxy_network_every_endpoint_is_local() -> None:
    endpoints = [Endpoint("10.0.0.1", network="pods"), Endpoint("10.0.0.2")]
    assert via_gateways(endpoints, PORT, "", GATEWAYS) == endpoints


def test_a_network_without_gateway_is_unreachable() -> None:
    endpoints = [Endpoint("10.0.0.1", network="elsewhere"), Endpoint("10.0.0.2", network="vms")]
    assert via_gateways(endpoints, PORT, "vms", GATEWAYS) == [endpoints[1]]


def test_gateway_weight_counts_the_healthy_endpoints_behind_it() -> None:
    endpoints = [Endpoint(f"10.0.0.{i}", network="pods", weight=2) for i in range(3)]
    (gateway,) = via_gateways(endpoints, PORT, "vms", GATEWAYS)
    assert (gateway.address, gateway.port_for(PORT), gateway.weight) == ("192.0.2.1", 15443, 6)


def test_mtls_to_a_remote_subset_sends_the_auto_passthrough_sni() -> None:
    snapshot, proxy = load_case(CASE)
    pem = "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n"
    cert = WorkloadCertificate(Identity("cluster.local", "vm", "vm-sa"), pem, "KEY", pem, 2e9, "1")
    proxy = dataclasses.replace(proxy, certificates=(cert,))
    clusters = generate(snapshot, proxy).of(typeurls.CLUSTER)
    cluster = clusters["outbound|8080|v1|ratings.prod.svc.cluster.local"].body
    assert b"outbound_.8080_.v1_.ratings.prod.svc.cluster.local" in cluster.SerializeToString()


def test_networks_config(tmp_path: Path) -> None:
    text = "network: vms\nnetworks:\n  pods:\n    gateways: [{address: 192.0.2.1}]\n"
    config = parse_config(text, tmp_path / "agent.yaml")
    spec = config.proxy_spec()
    assert spec.network == "vms"
    assert spec.network_gateways == (("pods", (("192.0.2.1", 15443),)),)


def test_a_gateway_hostname_is_a_located_error(tmp_path: Path) -> None:
    text = "networks:\n  pods:\n    gateways: [{address: gw.example.com, port: 15443}]\n"
    with pytest.raises(ConfigError, match=r"agent.yaml:3.*networks.pods.gateways\[0\].address"):
        parse_config(text, tmp_path / "agent.yaml")
