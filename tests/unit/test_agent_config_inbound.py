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
