"""The Envoy bootstrap pointing at the agent's ADS server."""

from __future__ import annotations

import json

import pytest

from meshagent.errors import ConfigError
from meshagent.xds.bootstrap import XDS_CLUSTER, build_bootstrap
from meshagent.xds.stats_tags import extract, host_suffixes


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


def test_envoy_flushes_stats_only_when_its_admin_is_asked() -> None:
    """Envoy's periodic flush walks every statistic on the thread that applies xDS (0.6 s
    every 5 s at 40k clusters): with no sink to feed, the bootstrap turns the timer off."""
    boot = build_bootstrap(node_id="vm-1", cluster="web", xds_uds_path="/x")

    assert boot["stats_flush_on_admin"] is True
    assert "stats_flush_interval" not in boot and "stats_sinks" not in boot


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


SUFFIXES = ("svc.cluster.local", "service.consul", "consul")


@pytest.mark.parametrize(
    ("stat", "name", "tags"),
    [
        # Istio's rule: a host ending in svc.<domain_suffix> is kept whole
        (
            "cluster.outbound|8080||hello.default.svc.cluster.local.upstream_rq_total",
            "cluster.upstream_rq_total",
            {"cluster_name": "outbound|8080||hello.default.svc.cluster.local"},
        ),
        (
            "cluster.outbound|80|v1|canary.default.svc.cluster.local.circuit_breakers.default.cx_open",
            "cluster.circuit_breakers.default.cx_open",
            {"cluster_name": "outbound|80|v1|canary.default.svc.cluster.local"},
        ),
        # other hosts end where one of Envoy's cluster statistics starts
        (
            "cluster.outbound|443||httpbin.org.upstream_rq_200",
            "cluster.upstream_rq",
            {"cluster_name": "outbound|443||httpbin.org", "envoy.response_code": "200"},
        ),
        (
            "cluster.outbound|443||httpbin.org.ssl.versions.TLSv1.3",
            "cluster.ssl.versions.TLSv1.3",
            {"cluster_name": "outbound|443||httpbin.org"},
        ),
        (
            "cluster.outbound|80||web.service.dc2.consul.http1.response_flood",
            "cluster.http1.response_flood",
            {"cluster_name": "outbound|80||web.service.dc2.consul"},
        ),
        (
            "cluster.inbound|8080||.upstream_rq_2xx",
            "cluster.upstream_rq_xx",
            {"cluster_name": "inbound|8080||", "envoy.response_code_class": "2"},
        ),
        (
            "tcp.outbound|3306||db.default.svc.cluster.local.downstream_cx_total",
            "tcp.downstream_cx_total",
            {"tcp_prefix": "outbound|3306||db.default.svc.cluster.local"},
        ),
        (
            "listener.127.0.0.1_8080.http.outbound_127.0.0.1_8080.downstream_rq_2xx",
            "listener.http.downstream_rq_xx",
            {
                "http_conn_manager_listener_prefix": "outbound_127.0.0.1_8080",
                "listener_address": "127.0.0.1_8080",
                "envoy.response_code_class": "2",
            },
        ),
        (
            "http.inbound|8080||.rbac.allowed",
            "http.rbac",
            {"http_conn_manager_prefix": "inbound|8080||", "authz_enforce_result": "allowed"},
        ),
        (
            "http.inbound|8080||.rbac.istio_dry_run_deny_shadow_denied",
            "http.rbac",
            {
                "http_conn_manager_prefix": "inbound|8080||",
                "authz_dry_run_action": "deny",
                "authz_dry_run_result": "denied",
            },
        ),
        ("server.live", "server.live", {}),
    ],
)
def test_stats_tags_keep_whole_names(stat: str, name: str, tags: dict[str, str]) -> None:
    assert extract(stat, SUFFIXES) == (name, tags)


def test_bootstrap_tags_stats_as_istio_with_the_mesh_host_suffixes() -> None:
    boot = build_bootstrap(node_id="vm-1", cluster="web", xds_uds_path="/x")
    stats = boot["stats_config"]
    assert stats["use_all_default_tags"] is False
    names = [t["tag_name"] for t in stats["stats_tags"]]
    assert names[:5] == [
        "cluster_name",
        "tcp_prefix",
        "http_conn_manager_listener_prefix",
        "http_conn_manager_prefix",
        "listener_address",
    ]
    assert {"envoy.response_code", "envoy.response_code_class"} <= set(names)
    # Each regex is anchored on a first word, so that Envoy tries it only on those
    # statistics (an unanchored std::regex runs on every one: seconds at 5000 clusters)
    assert all(t["regex"].startswith("^") for t in stats["stats_tags"] if "regex" in t)
    assert host_suffixes("example.net", ["{name}.service.consul", "{name}"]) == (
        "svc.example.net",
        "service.consul",
    )
    # what is not a DNS name never reaches Envoy's regex
    assert host_suffixes("x(y", ["{name}.a+b"]) == ()
    custom = build_bootstrap(
        node_id="vm-1", cluster="web", xds_uds_path="/x", stats_host_suffixes=["svc.corp"]
    )
    assert r"svc\.corp" in custom["stats_config"]["stats_tags"][0]["regex"]
