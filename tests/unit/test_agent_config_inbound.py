"""The agent config keys of the inbound side: inbound.address, root_namespace, port clashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.agent.config import parse_config
from meshagent.errors import ConfigError


def test_inbound_defaults_reach_the_proxy_spec(tmp_path: Path) -> None:
    proxy = parse_config("", tmp_path / "agent.yaml").proxy_spec()
    assert (proxy.inbound_address, proxy.root_namespace) == ("0.0.0.0", "istio-system")


def test_inbound_address_and_root_namespace_are_configurable(tmp_path: Path) -> None:
    text = "inbound: {address: 127.0.0.2}\nroot_namespace: mesh-root\n"
    proxy = parse_config(text, tmp_path / "agent.yaml").proxy_spec()
    assert (proxy.inbound_address, proxy.root_namespace) == ("127.0.0.2", "mesh-root")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("inbound: {address: somewhere}\n", "inbound.address"),
        ("inbound: {port: 1}\n", "inbound.port"),
        (
            "workloads:\n- {name: a, ports: [{port: 80, target_port: 1}]}\n"
            "- {name: b, ports: [{port: 80, target_port: 2}]}\n",
            "workloads[1].ports[0].port",
        ),
    ],
)
def test_inbound_errors_are_located(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, tmp_path / "agent.yaml")
    assert caught.value.field == field


def test_a_port_protocol_is_one_istio_names_or_empty_to_be_sniffed(tmp_path: Path) -> None:
    text = "workloads: [{name: w, ports: [{port: 80, protocol: %s}]}]\n"
    port = parse_config(text % '""', tmp_path / "a.yaml").workloads[0].ports[0]
    assert port.protocol == ""
    assert parse_config(text % "grpc-web", tmp_path / "a.yaml").workloads[0].ports[0].protocol == (
        "GRPC-WEB"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text % "htpp", tmp_path / "a.yaml")
    assert err.value.field == "workloads[0].ports[0].protocol"


@pytest.mark.parametrize(
    ("name", "protocol"),
    [("http", "HTTP"), ("http-web", "HTTP"), ("grpc-web-ui", "GRPC-WEB"), ("tcp-db", "TCP"),
     ("https", "HTTPS"), ("mysql", "MYSQL"), ("web", ""), ("httpx", ""), ("", "")],
)  # fmt: skip
def test_a_joined_workload_port_takes_istios_protocol_from_its_name(
    name: str, protocol: str
) -> None:
    from meshagent.agent.config.join import join_workload
    from meshagent.onboard.joindir import JoinInfo

    info = JoinInfo(Path("/join"), "ns", "sa", "cluster.local", "c1", "", "vm", "ca:15012",
                    "ca:15012", ports=((name, 8080),))  # fmt: skip
    (port,) = join_workload(info).ports
    assert (port.name, port.protocol) == (name, protocol)
