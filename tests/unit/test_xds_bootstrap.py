"""The Envoy bootstrap pointing at the agent's ADS server."""

from __future__ import annotations

import json

import pytest

from meshagent.errors import ConfigError
from meshagent.xds.bootstrap import XDS_CLUSTER, build_bootstrap


def test_default_bootstrap_is_delta_ads_over_a_unix_socket() -> None:
    boot = build_bootstrap(node_id="vm-1", cluster="web", xds_uds_path="/run/meshagent/xds.sock")

    ads = boot["dynamic_resources"]["ads_config"]
    assert (ads["api_type"], ads["transport_api_version"]) == ("DELTA_GRPC", "V3")
    [grpc] = ads["grpc_services"]
    assert grpc["envoy_grpc"]["cluster_name"] == XDS_CLUSTER
    assert boot["dynamic_resources"]["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    [xds] = boot["static_resources"]["clusters"]
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": "/run/meshagent/xds.sock"}}
    assert boot["node"] == {"id": "vm-1", "cluster": "web"}
    json.dumps(boot)  # JSON-able


def test_sotw_over_tcp_with_metadata() -> None:
    boot = build_bootstrap(
        node_id="vm-1",
        cluster="web",
        xds_tcp=("127.0.0.1", 15010),
        delta=False,
        metadata={"ISTIO_VERSION": "1.24"},
        admin_port=15001,
    )
    assert boot["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert boot["node"]["metadata"] == {"ISTIO_VERSION": "1.24"}
    assert boot["admin"]["address"]["socket_address"]["port_value"] == 15001


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_id": "", "cluster": "web", "xds_uds_path": "/x"},
        {"node_id": "vm", "cluster": "web"},
        {"node_id": "vm", "cluster": "web", "xds_uds_path": "/x", "xds_tcp": ("127.0.0.1", 1)},
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        build_bootstrap(**kwargs)  # type: ignore[arg-type]


def test_envoy_redials_the_agent_within_a_second() -> None:
    """Envoy's default ADS backoff grows to 30 s; a local agent is redialled every 1 s at most."""
    boot = build_bootstrap(node_id="vm-1", cluster="web", xds_uds_path="/x")

    [grpc] = boot["dynamic_resources"]["ads_config"]["grpc_services"]
    backoff = grpc["envoy_grpc"]["retry_policy"]["retry_back_off"]
    assert backoff == {"base_interval": "0.1s", "max_interval": "1s"}
