"""Telemetry: Istio's precedence and merging (pilot/pkg/model/telemetry.go), the agent config's
telemetry providers, and what the translator puts on listeners (checked by `envoy --mode
validate`)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from meshagent.agent.config import load_config
from meshagent.errors import ConfigError
from meshagent.model import LocalWorkload, MeshSnapshot, ProxySpec
from meshagent.model.proxy import InboundPort, TcpBinding
from meshagent.model.telemetry import (
    CLIENT,
    SERVER,
    AccessLogRule,
    FileAccessLogProvider,
    OtelAccessLogProvider,
    Telemetry,
    TracingProvider,
    TracingRule,
)
from meshagent.normalize import Normalizer
from meshagent.xds.translate import Translator, generate
from meshagent.xds.translate.telemetry import (
    ISTIO_TEXT_FORMAT,
    applicable,
    merge_access_logging,
    merge_tracing,
)
from tests.unit.normalize_helpers import upsert, warnings
from tests.unit.test_translate_envoy import ENVOY
from tests.unit.translate_inputs import resources_as_dict

ROOT = "istio-system"


def _t(name: str, ns: str, selector: dict[str, str] | None = None, **kw: Any) -> Telemetry:
    labels = tuple(sorted(selector.items())) if selector is not None else None
    return Telemetry(name=name, namespace=ns, selector=labels, **kw)


# -- precedence -------------------------------------------------------------------------


def test_mesh_then_namespace_then_the_first_selecting_telemetry() -> None:
    ts = {
        f"{t.namespace}/{t.name}": t
        for t in (
            _t("mesh", ROOT),
            _t("b-ns", "shop"),
            _t("a-ns", "shop"),  # the first by name is the namespace's
            _t("z-web", "shop", {"app": "web"}),
            _t("y-web", "shop", {"app": "web"}),  # first matching by name wins
            _t("other", "shop", {"app": "db"}),
            _t("elsewhere", "blog"),
            _t("gw", "shop", target_gateways=("ingress",), targeted=True),
        )
    }
    web = (("app", "web"), ("version", "v1"))
    names = [t.name for t in applicable(ts, ROOT, "shop", [web])]
    assert names == ["mesh", "a-ns", "y-web"]
    assert [t.name for t in applicable(ts, ROOT, "blog", [()])] == ["mesh", "elsewhere"]
    # a targetRefs Telemetry is not namespace-wide; it applies to its gateway's router
    assert [t.name for t in applicable(ts, ROOT, "shop", [()], "ingress")] == [
        "mesh",
        "a-ns",
        "gw",
    ]


def _logs(*rules: AccessLogRule) -> Telemetry:
    return Telemetry(name="t", namespace="ns", access_logging=rules)


def test_access_logging_merges_like_istio() -> None:
    # nothing at all: no access logs; default providers alone: logged, unfiltered
    assert merge_access_logging([], (), CLIENT) is None
    assert merge_access_logging([], ("envoy",), SERVER) == {"envoy": None}
    # a level naming providers replaces the parent's; one without inherits them
    mesh = _logs(AccessLogRule(providers=("envoy",)))
    ns = _logs(AccessLogRule(providers=("json",), filter="response.code >= 500"))
    assert merge_access_logging([mesh, ns], (), CLIENT) == {"json": "response.code >= 500"}
    workload = _logs(AccessLogRule(disabled=True))
    assert merge_access_logging([mesh, ns, workload], (), CLIENT) == {}
    # match.mode: only the listed side
    server_only = _logs(AccessLogRule(providers=("envoy",), mode=SERVER))
    assert merge_access_logging([server_only], (), CLIENT) == {}
    assert merge_access_logging([server_only], (), SERVER) == {"envoy": None}
    # disabled on the client side only keeps the server side's logs
    off = _logs(AccessLogRule(providers=("envoy",)), AccessLogRule(disabled=True, mode=CLIENT))
    assert merge_access_logging([off], (), CLIENT) == {}
    assert merge_access_logging([off], (), SERVER) == {"envoy": None}


def _tracing(*rules: TracingRule) -> Telemetry:
    return Telemetry(name="t", namespace="ns", tracing=rules)


def test_tracing_merges_like_istio() -> None:
    assert merge_tracing([], (), CLIENT) is None
    spec = merge_tracing([], ("otel",), CLIENT)
    assert spec is not None and spec.provider == "otel" and spec.sampling is None
    mesh = _tracing(TracingRule(providers=("zipkin",), random_sampling_percentage=10.0))
    ns = _tracing(TracingRule(random_sampling_percentage=50.0))
    merged = merge_tracing([mesh, ns], ("otel",), SERVER)
    assert merged is not None and (merged.provider, merged.sampling) == ("zipkin", 50.0)
    server_off = _tracing(TracingRule(disable_span_reporting=True, mode=SERVER))
    off = merge_tracing([mesh, server_off], (), SERVER)
    on = merge_tracing([mesh, server_off], (), CLIENT)
    assert off is not None and off.disabled
    assert on is not None and not on.disabled
    # no provider anywhere: disabled
    alone = merge_tracing([ns], (), CLIENT)
    assert alone is not None and alone.disabled


# -- the agent config ---------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return load_config(path)


def test_config_reads_telemetry_providers_next_to_ext_authz(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        """\
extension_providers:
  - name: ext
    envoy_ext_authz_http: {service: authz.svc, port: 8000}
  - name: json
    envoy_file_access_log:
      path: logs/access.json
      log_format: {labels: {code: "%RESPONSE_CODE%"}}
  - name: otel
    opentelemetry: {service: observability/otel.svc, port: 4317, grpc: {timeout: 2s}}
  - name: zipkin
    zipkin: {service: zipkin.svc, port: 9411, max_tag_length: 128}
  - name: prometheus
    prometheus: {}
default_providers: {access_logging: [envoy], tracing: [otel], metrics: [prometheus]}
""",
    )
    assert [p.name for p in config.extension_providers] == ["ext"]
    json_log, otel, zipkin = config.telemetry_providers
    assert json_log == FileAccessLogProvider(
        "json", str(tmp_path / "logs" / "access.json"), "", (("code", "%RESPONSE_CODE%"),)
    )
    assert otel == TracingProvider(
        "otel", "opentelemetry", "observability/otel.svc", 4317, 0, timeout_ms=2000
    )
    assert (zipkin.kind, zipkin.max_tag_length, zipkin.path) == ("zipkin", 128, "/api/v2/spans")
    spec = config.proxy_spec()
    assert spec.default_access_logging == ("envoy",) and spec.default_tracing == ("otel",)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("extension_providers: [{name: x, datadog: {service: d, port: 1}}]\n", "datadog"),
        ("extension_providers: [{name: x, zipkin: {port: 9411}}]\n", "service"),
        ("extension_providers: [{name: x, zipkin: {service: z, port: 0}}]\n", "port"),
        ("extension_providers: [{name: x, zipkin: {service: z, port: 1, bogus: 1}}]\n", "bogus"),
        (
            "extension_providers: [{name: x, envoy_file_access_log: "
            "{log_format: {text: a, labels: {}}}}]\n",
            "labels",
        ),
        ("default_providers: {tracing: [nobody]}\n", "default_providers.tracing"),
    ],
)
def test_config_errors_are_located(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, text)
    assert field in (caught.value.field or ""), caught.value
    assert caught.value.location and caught.value.location.endswith(":1")


# -- normalizing and translating ------------------------------------------------------------

SERVICES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hello, namespace: default}
spec:
  hosts: [hello.default.svc.cluster.local]
  ports: [{number: 8080, name: http, protocol: HTTP}, {number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: otel, namespace: observability}
spec:
  hosts: [otel.observability.svc.cluster.local]
  ports: [{number: 4317, name: grpc, protocol: GRPC}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{address: 127.0.0.1}]
"""
TELEMETRY = """\
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 500"}
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 25
    customTags:
      env: {environment: {name: HOSTNAME, defaultValue: unknown}}
      user: {header: {name: x-user}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet, namespace: default}
spec:
  selector: {matchLabels: {app: quiet}}
  accessLogging: [{disabled: true}]
  metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, disabled: true}]}]
"""

PROXY = ProxySpec(
    node_id="n",
    workloads=(
        LocalWorkload("web", "default", "web", (("app", "web"),), (InboundPort(8001, 18001),)),
        LocalWorkload(
            "quiet", "default", "q", (("app", "quiet"),), (InboundPort(8002, 18002, "TCP"),)
        ),
    ),
    tcp_bindings=(TcpBinding("hello.default.svc.cluster.local", 9000, "127.0.0.1", 19000),),
    telemetry_providers=(
        TracingProvider("otel", "opentelemetry", "otel.observability.svc.cluster.local", 4317),
    ),
)


def _docs(text: str) -> Any:
    return upsert(*(d for d in text.split("---\n") if d.strip()))


def _snapshot(text: str) -> MeshSnapshot:
    normalizer = Normalizer()
    snapshot, diagnostics = normalizer.apply([_docs(text)])
    assert not [d for d in diagnostics if d.severity == "error"], diagnostics
    return snapshot


def _network_configs(listener: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        f["typedConfig"] for chain in listener.get("filterChains", []) for f in chain["filters"]
    ]


def test_metrics_overrides_are_warned_not_invented() -> None:
    found = warnings(TELEMETRY.split("---\n")[2])
    assert found == ["spec.metrics"]  # the reason: test_normalize_istio_validation.py


def test_listeners_get_access_logs_and_tracing() -> None:
    resources = resources_as_dict(generate(_snapshot(SERVICES + TELEMETRY), PROXY))
    lds = resources["lds"]
    outbound = _network_configs(lds["127.0.0.1_8080"])[0]
    log = outbound["accessLog"][0]
    assert log["name"] == "envoy.access_loggers.file"
    assert log["typedConfig"]["path"] == "/dev/stdout"
    assert log["typedConfig"]["logFormat"]["textFormatSource"]["inlineString"] == ISTIO_TEXT_FORMAT
    assert log["filter"]["extensionFilter"]["typedConfig"]["expression"] == "response.code >= 500"
    tracing = outbound["tracing"]
    assert tracing["randomSampling"] == {"value": 25.0}
    provider = tracing["provider"]["typedConfig"]
    assert provider["grpcService"]["envoyGrpc"]["clusterName"] == (
        "outbound|4317||otel.observability.svc.cluster.local"
    )
    tags = {t["tag"]: t for t in tracing["customTags"]}
    assert tags["user"]["requestHeader"] == {"name": "x-user"}
    assert tags["env"]["environment"] == {"name": "HOSTNAME", "defaultValue": "unknown"}
    assert tags["istio.namespace"]["literal"] == {"value": "default"}
    # Istio's buildServiceTags: the node's MESH_ID (the trust domain by default), CLUSTER_ID
    assert tags["istio.mesh_id"]["literal"] == {"value": PROXY.trust_domain}
    assert tags["istio.cluster_id"]["literal"] == {"value": PROXY.cluster}
    # TCP: the outbound tcp_proxy logs; the quiet workload's inbound (selector: disabled) not
    tcp = _network_configs(lds["127.0.0.1_19000"])[0]
    assert tcp["accessLog"][0]["name"] == "envoy.access_loggers.file"
    web = _network_configs(lds["inbound_0.0.0.0_8001"])[-1]
    quiet = _network_configs(lds["inbound_0.0.0.0_8002"])[-1]
    assert web["accessLog"] and "tracing" in web
    assert "accessLog" not in quiet


def test_a_telemetry_change_rebuilds_the_listeners_and_removal_restores_them() -> None:
    translator = Translator()
    normalizer = Normalizer()
    before, _ = normalizer.apply([_docs(SERVICES)])
    plain = translator.generate(before, PROXY)
    with_logs, _ = normalizer.apply([_docs(SERVICES + TELEMETRY)])
    logged = translator.generate(with_logs, PROXY)
    name = "127.0.0.1_8080"
    assert logged.of("type.googleapis.com/envoy.config.listener.v3.Listener")[name].version != (
        plain.of("type.googleapis.com/envoy.config.listener.v3.Listener")[name].version
    )
    fresh = generate(with_logs, PROXY)  # the incremental result is the from-scratch one
    assert resources_as_dict(logged) == resources_as_dict(fresh)


def test_a_tracer_whose_collector_is_not_in_the_mesh_traces_nothing() -> None:
    lone = ProxySpec(
        node_id="n",
        telemetry_providers=(TracingProvider("otel", "opentelemetry", "absent.example", 4317),),
        default_tracing=("otel",),
    )
    resources = resources_as_dict(generate(_snapshot(SERVICES), lone))
    assert "tracing" not in _network_configs(resources["lds"]["127.0.0.1_8080"])[0]


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary not installed")
def test_envoy_accepts_the_telemetry_config(tmp_path: Path) -> None:
    from tests.unit.test_translate_envoy import static_bootstrap

    json_proxy = ProxySpec(
        node_id="n",
        workloads=PROXY.workloads,
        tcp_bindings=PROXY.tcp_bindings,
        telemetry_providers=(
            *PROXY.telemetry_providers,
            FileAccessLogProvider("envoy", str(tmp_path / "a.log"), labels=()),
        ),
    )
    otel_logs = ProxySpec(
        node_id="n",
        telemetry_providers=(
            OtelAccessLogProvider(
                "otel-logs",
                "otel.observability.svc.cluster.local",
                4317,
                labels=(("k", "%PROTOCOL%"),),
            ),
        ),
        default_access_logging=("otel-logs",),
    )
    for proxy in (PROXY, json_proxy, otel_logs):
        resources = resources_as_dict(generate(_snapshot(SERVICES + TELEMETRY), proxy))
        config = tmp_path / "bootstrap.json"
        config.write_text(json.dumps(static_bootstrap(resources)))
        result = subprocess.run(
            [ENVOY, "--mode", "validate", "-c", str(config), "--log-level", "warn"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-2000:]


def test_a_listener_nack_names_the_telemetry_among_its_origins() -> None:
    from meshagent.xds import typeurls
    from meshagent.xds.attribution import origins

    snapshot = _snapshot(SERVICES + TELEMETRY)
    found = origins(snapshot, PROXY, typeurls.LISTENER, "127.0.0.1_8080")
    assert any(o.startswith("Telemetry/istio-system/mesh-default (") for o in found), found


def test_default_otel_access_log_points_at_the_collector_cluster() -> None:
    proxy = ProxySpec(
        node_id="n",
        telemetry_providers=(
            OtelAccessLogProvider(
                "otel-logs", "observability/otel.observability.svc.cluster.local", 4317
            ),
        ),
        default_access_logging=("otel-logs",),
    )
    resources = resources_as_dict(generate(_snapshot(SERVICES), proxy))
    log = _network_configs(resources["lds"]["127.0.0.1_8080"])[0]["accessLog"][0]
    assert log["name"] == "envoy.access_loggers.open_telemetry"
    common = log["typedConfig"]["commonConfig"]
    assert common["grpcService"]["envoyGrpc"]["clusterName"] == (
        "outbound|4317||otel.observability.svc.cluster.local"
    )
    assert log["typedConfig"]["body"]["stringValue"] == ISTIO_TEXT_FORMAT


def test_span_reporting_disabled_on_the_server_side_only() -> None:
    server_off = """\
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  tracing: [{match: {mode: SERVER}, disableSpanReporting: true}]
"""
    resources = resources_as_dict(generate(_snapshot(SERVICES + TELEMETRY + server_off), PROXY))
    lds = resources["lds"]
    assert "tracing" not in _network_configs(lds["inbound_0.0.0.0_8001"])[-1]
    assert "tracing" in _network_configs(lds["127.0.0.1_8080"])[0]


def test_unusable_providers_are_reported() -> None:
    from meshagent.xds.translate.telemetry import provider_problems

    odd = """\
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: odd, namespace: default}
spec:
  accessLogging: [{providers: [{name: nobody}, {name: otel}]}]
"""
    proxy = ProxySpec(
        node_id="n",
        telemetry_providers=(
            *PROXY.telemetry_providers,
            TracingProvider("far", "zipkin", "absent.example", 9411),
        ),
        default_tracing=("far",),
    )
    found = provider_problems(_snapshot(SERVICES + TELEMETRY + odd), proxy)
    assert found == {
        ("Telemetry/default/odd", "accessLogging provider 'nobody': not in extension_providers"),
        ("Telemetry/default/odd", "accessLogging provider 'otel': is not an access logger"),
        (
            "default_providers",
            "tracing provider 'far': service 'absent.example' port 9411 is not in the mesh",
        ),
    }


def test_under_capture_every_chain_logs() -> None:
    from dataclasses import replace

    captured = replace(PROXY, capture=True, tcp_bindings=())
    lds = resources_as_dict(generate(_snapshot(SERVICES + TELEMETRY), captured))["lds"]
    outbound = lds["virtualOutbound"]
    chains = [*outbound["filterChains"], outbound["defaultFilterChain"]]
    assert chains and all(c["filters"][-1]["typedConfig"].get("accessLog") for c in chains)
    inbound = lds["virtualInbound"]["filterChains"]
    quiet_port = PROXY.workloads[1].ports[0].port
    for chain in inbound:
        logs = chain["filters"][-1]["typedConfig"].get("accessLog")
        port = chain.get("filterChainMatch", {}).get("destinationPort")
        assert bool(logs) == (port != quiet_port), chain.get("name")


GATEWAY = """\
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 9000, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello-edge, namespace: default}
spec:
  hosts: ["*"]
  gateways: [edge]
  http: [{route: [{destination: {host: hello.default.svc.cluster.local, port: {number: 8080}}}]}]
  tcp: [{route: [{destination: {host: hello.default.svc.cluster.local, port: {number: 9000}}}]}]
"""


def test_a_router_logs_and_traces_its_gateway_traffic_as_a_client() -> None:
    # given a mesh-wide Telemetry, a router's gateway listeners (HTTP and TCP servers) get its
    # access logs and tracing, as Istio's gateways do
    router = dataclasses.replace(PROXY, proxy_type="router", labels=(("istio", "ingressgateway"),))
    translator = Translator()
    resources = resources_as_dict(
        translator.generate(_snapshot(SERVICES + GATEWAY + TELEMETRY), router)
    )
    http = _network_configs(resources["lds"]["0.0.0.0_8080"])[0]
    assert http["accessLog"][0]["name"] == "envoy.access_loggers.file"
    assert http["tracing"]["randomSampling"] == {"value": 25.0}
    tcp = _network_configs(resources["lds"]["0.0.0.0_9000"])[0]
    assert tcp["accessLog"][0]["name"] == "envoy.access_loggers.file"
    # and without the Telemetry they log nothing (the listener is rebuilt)
    plain = resources_as_dict(translator.generate(_snapshot(SERVICES + GATEWAY), router))
    assert "accessLog" not in _network_configs(plain["lds"]["0.0.0.0_8080"])[0]


def test_a_rule_for_the_other_side_does_not_take_this_sides_providers_away() -> None:
    """Istio's mergeLogs skips rules of the other mode when it picks the providers in
    scope: a workload's SERVER-only otel rule leaves the client side on the mesh's envoy,
    and a SERVER-only filter does not filter the client side."""
    mesh = _logs(AccessLogRule(providers=("envoy",)))
    workload = _logs(AccessLogRule(providers=("otel",), mode=SERVER))
    assert merge_access_logging([mesh, workload], (), CLIENT) == {"envoy": None}
    assert merge_access_logging([mesh, workload], (), SERVER) == {"otel": None}
    filtered = _logs(
        AccessLogRule(providers=("envoy",), mode=SERVER, filter="response.code >= 500")
    )
    assert merge_access_logging([mesh, filtered], (), CLIENT) == {"envoy": None}
    assert merge_access_logging([mesh, filtered], (), SERVER) == {"envoy": "response.code >= 500"}
