"""`sources.consul` in the agent config."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.adapters.consul import ConsulAdapter
from meshagent.agent.config import parse_config
from meshagent.agent.daemon import build_adapters
from meshagent.errors import ConfigError

FULL = """\
sources:
  consul:
    address: consul.internal:8501
    scheme: https
    datacenter: dc2
    token_file: secrets/consul-token
    tls: {ca_file: ca.pem, cert_file: c.pem, key_file: k.pem}
    host_pattern: "{name}.{namespace}.svc.cluster.local"
    remote_host_pattern: "{name}.{datacenter}.remote"
    network: wan
    service_port: 80
    default_protocol: grpc
    include_warning: true
    rate_limit: {qps: 5, burst: 10}
    wait: 30s
    max_connections: 40
    sweep_interval: 5m
    precedence: consul
    register: {enabled: true, address: 192.0.2.7}
    terminating_gateway_port: 9443
    gateway_bind: 127.0.0.1
"""


def test_every_key_is_read(tmp_path: Path) -> None:
    config = parse_config(FULL, tmp_path / "agent.yaml")
    consul = config.sources.consul
    assert consul is not None
    o, m = consul.options, consul.mapping
    assert (o.address, o.scheme, o.datacenter) == ("consul.internal:8501", "https", "dc2")
    assert o.token_file == tmp_path / "secrets" / "consul-token"
    assert o.cert_file == tmp_path / "c.pem" and o.ca_file == tmp_path / "ca.pem"
    assert (o.qps, o.burst, o.wait_s, o.include_warning) == (5.0, 10, 30.0, True)
    assert (o.max_connections, o.sweep_interval_s) == (40, 300.0)
    assert m.host("web", "team") == "web.team.svc.cluster.local"
    assert m.remote_host("web", "team", "dc7") == "web.dc7.remote"
    assert (m.network, m.service_port, m.default_protocol, m.precedence) == (
        "wan",
        80,
        "grpc",
        "consul",
    )
    assert consul.register.enabled and consul.register.address == "192.0.2.7"
    assert (m.terminating_gateway_port, m.gateway_bind) == (9443, "127.0.0.1")
    assert config.sources.files is not None  # files stay on by default
    assert [type(a) for a in build_adapters(config)][-1] is ConsulAdapter


def test_defaults_and_off(tmp_path: Path) -> None:
    config = parse_config("sources: {consul: {}}", tmp_path / "a.yaml")
    assert config.sources.consul is not None
    assert config.sources.consul.options.address == "127.0.0.1:8500"
    assert config.sources.consul.options.max_connections == 100  # half of Consul's 200
    assert config.sources.consul.options.sweep_interval_s == 60.0
    assert config.sources.consul.mapping.host("web") == "web.service.consul"
    assert not config.sources.consul.register.enabled
    assert config.sources.consul.mapping.terminating_gateway_port == 8443
    assert config.sources.consul.mapping.gateway_bind == ""
    assert parse_config("", tmp_path / "a.yaml").sources.consul is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("sources: {consul: {address: nope}}", "sources.consul.address"),
        ("sources: {consul: {wait: 11m}}", "sources.consul.wait"),
        ("sources: {consul: {precedence: both}}", "sources.consul.precedence"),
        ("sources: {consul: {host_pattern: '{nme}.x'}}", "sources.consul.host_pattern"),
        (
            "sources: {consul: {remote_host_pattern: '{name}.x'}}",
            "sources.consul.remote_host_pattern",
        ),
        ("sources: {consul: {tls: {cert_file: c.pem}}}", "sources.consul.tls.cert_file"),
        ("sources: {consul: {rate_limit: {qps: 0}}}", "sources.consul.rate_limit.qps"),
        ("sources: {consul: {bogus: 1}}", "sources.consul.bogus"),
        ("sources: {consul: {max_connections: 15}}", "sources.consul.max_connections"),
        ("sources: {consul: {sweep_interval: 2h}}", "sources.consul.sweep_interval"),
        (
            "sources: {consul: {terminating_gateway_port: 0}}",
            "sources.consul.terminating_gateway_port",
        ),
        ("sources: {consul: {gateway_bind: localhost}}", "sources.consul.gateway_bind"),
    ],
)
def test_bad_values_are_located_errors(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, tmp_path / "a.yaml")
    assert caught.value.field == field
