"""EnvoyFilter through the agent and a real Envoy: a Lua filter inserted before the router
changes real responses; a patch Envoy rejects is a NACK that names the EnvoyFilter, while
the last good listener (with the earlier Lua) keeps serving."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.integration.mesh_harness import MeshHarness, wait_until
from tests.integration.test_lifecycle_e2e import HOST, mesh_docs, start

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


def lua_filter(code: str) -> str:
    indented = "\n".join("              " + line for line in code.splitlines())
    return f"""\
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: add-header, namespace: default}}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        portNumber: 8080
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.router}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code:
            inline_string: |
{indented}
"""


GOOD = """function envoy_on_response(handle)
  handle:headers():add("x-envoyfilter", "lua-" .. handle:headers():get(":status"))
end"""
BAD = "function envoy_on_response(handle) this is not lua end"


def header(h: MeshHarness) -> str | None:
    return h.request(HOST).headers.get("x-envoyfilter")


def nack_errors(h: MeshHarness) -> list[dict[str, str]]:
    found = h.agent_get("/debug/config_errors").json()["diagnostics"]
    return [d for d in found if d["source"] == "envoy"]


def test_lua_filter_changes_responses_and_a_rejected_patch_is_attributed(tmp_path: Path) -> None:
    with contextlib.contextmanager(start)(tmp_path) as h:
        assert header(h) is None
        # when an EnvoyFilter inserts a Lua filter before the router
        h.apply(mesh_docs(h) + lua_filter(GOOD))
        # then real responses carry its header
        wait_until(lambda: header(h) == "lua-200", what="Lua header on responses")

        # when the patch is edited into Lua that Envoy cannot load
        h.apply(mesh_docs(h) + lua_filter(BAD))
        errors = wait_until(lambda: nack_errors(h), timeout=30, what="NACK diagnostic")
        # then the NACK names the EnvoyFilter and is located at it
        text = " ".join(d["message"] for d in errors)
        assert "EnvoyFilter/default/add-header" in text, errors
        first_line = len(mesh_docs(h).splitlines()) + 2  # the EnvoyFilter's document
        assert errors[0]["location"].endswith(f"mesh/mesh.yaml:{first_line}"), errors
        # and the last good listener keeps serving, Lua header included
        assert all(header(h) == "lua-200" for _ in range(10))

        # when the filter is removed, responses lose the header and the error clears
        h.apply(mesh_docs(h))
        wait_until(lambda: header(h) is None, what="header gone")
        wait_until(lambda: not nack_errors(h), what="NACK diagnostic cleared")


def wasm_plugin(module: Path) -> str:
    return f"""\
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: noop, namespace: default}}
spec:
  url: file://{module}
  phase: STATS
  pluginConfig: {{greeting: hello}}
"""


def test_wasm_plugin_loads_in_this_envoy_and_traffic_flows(tmp_path: Path) -> None:
    from tests.unit.test_wasmplugin import NOOP_MODULE

    module = tmp_path / "noop.wasm"
    module.write_bytes(NOOP_MODULE)
    with contextlib.contextmanager(start)(tmp_path / "mesh") as h:
        # when a WasmPlugin names a local module (the agent probes Envoy's Wasm runtime)
        h.apply(mesh_docs(h) + wasm_plugin(module))
        # then Envoy runs the plugin's filter on the outbound listener and traffic flows
        wait_until(
            lambda: "default.noop" in h.envoy_admin("/config_dump").body.decode(),
            timeout=30,
            what="Wasm filter in Envoy's config",
        )
        assert h.request(HOST).status == 200
        assert nack_errors(h) == []
        found = h.agent_get("/debug/config_errors").json()["diagnostics"]
        assert not [d for d in found if d["kind"] == "WasmPlugin"], found
