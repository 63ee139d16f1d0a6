"""Regexes: what validation accepts, the real Envoy accepts under the bootstrap meshagent writes,
and what Envoy would reject is a located validation error instead of a NACK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshagent.model import MeshSnapshot, ProxySpec
from meshagent.model.regex import RE2
from meshagent.normalize import Normalizer
from meshagent.xds.bootstrap import build_bootstrap
from meshagent.xds.translate import generate
from tests.envoy_helpers import validate_bootstrap
from tests.unit.normalize_helpers import upsert
from tests.unit.test_translate_envoy import static_bootstrap
from tests.unit.translate_inputs import resources_as_dict

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(RE2 is None, reason="google-re2 is not installed"),
]

BLOBS = "^/blobs/sha256:[0-9a-f]{64}$"  # RE2 program size 132: Envoy's default limit is 100
UNDER = "^" + "[a-z]{1000}" * 32 + "$"  # 32002, within 32768
OVER = "^" + "[a-z]{1000}" * 40 + "$"  # 40002

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: registry, namespace: default}
spec:
  hosts: [registry.example.com]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
"""


def routes(regex: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: registry, namespace: default}}
spec:
  hosts: [registry.example.com]
  http:
  - match: [{{uri: {{regex: "{regex}"}}}}]
    route: [{{destination: {{host: registry.example.com}}}}]
"""


def normalized(regex: str) -> tuple[MeshSnapshot, list[str]]:
    snapshot, problems = Normalizer().apply([upsert(SERVICE, routes(regex), path="mesh.yaml")])
    return snapshot, [str(d) for d in problems if d.severity == "error"]


def envoy_validates(snapshot: MeshSnapshot, tmp_path: Path, *, runtime: bool) -> str:
    """Envoy's complaint about the translation as a static config; empty when it passes."""
    bootstrap: dict[str, Any] = static_bootstrap(
        resources_as_dict(generate(snapshot, ProxySpec(node_id="vm-1")))
    )
    if runtime:  # exactly what `meshagent bootstrap` writes
        ours = build_bootstrap(node_id="vm-1", cluster="meshagent", xds_uds_path="/tmp/x.sock")
        bootstrap["layered_runtime"] = ours["layered_runtime"]
    return validate_bootstrap(bootstrap, tmp_path / "bootstrap.json")


def test_istio_accepted_regex_passes_validation_and_envoy(tmp_path: Path) -> None:
    snapshot, errors = normalized(BLOBS)
    assert errors == []
    # Envoy's default limit rejects it (the NACK that blocked every later route update) ...
    assert "RE2 program size of 132 > max program size of 100" in envoy_validates(
        snapshot, tmp_path, runtime=False
    )
    # ... the bootstrap's runtime accepts it
    assert envoy_validates(snapshot, tmp_path, runtime=True) == ""


def test_the_limit_is_envoys_on_both_sides(tmp_path: Path) -> None:
    # Just under the limit: validation and Envoy both accept
    snapshot, errors = normalized(UNDER)
    assert errors == []
    assert envoy_validates(snapshot, tmp_path, runtime=True) == ""
    # Over it: a located validation error, so the resource never reaches Envoy...
    snapshot, errors = normalized(OVER)
    assert len(errors) == 1
    assert errors[0].startswith("mesh.yaml:8: VirtualService/default/registry: ")
    assert "spec.http[0].match[0].uri.regex: regex is too complex" in errors[0]
    assert "registry" not in str(dict(snapshot.virtual_services))
    # ...where Envoy would have rejected it (the model built without validation)
    forced = _with_regex(normalized(BLOBS)[0], OVER)
    assert "RE2 program size of 40002 > max program size of 32768" in envoy_validates(
        forced, tmp_path, runtime=True
    )


def _with_regex(snapshot: MeshSnapshot, regex: str) -> MeshSnapshot:
    """snapshot with its one VirtualService's uri regex replaced, bypassing validation."""
    import dataclasses

    from meshagent.model import frozen_map

    [(key, vs)] = snapshot.virtual_services.items()
    route = vs.http[0]
    match = dataclasses.replace(
        route.matches[0], uri=dataclasses.replace(route.matches[0].uri, value=regex)
    )
    http = (dataclasses.replace(route, matches=(match,)),)
    changed = frozen_map({key: dataclasses.replace(vs, http=http)})
    return dataclasses.replace(snapshot, virtual_services=changed, changes=None)


async def test_a_real_nack_is_traced_to_the_file_responsible(tmp_path: Path) -> None:
    # Given an Envoy started from a bootstrap without the runtime layer (an old bootstrap,
    # or Envoy's own default limit of 100), which must NACK the Istio-valid regex
    import asyncio

    from meshagent.agent.config import load_config
    from meshagent.agent.daemon import Agent
    from tests.envoy_helpers import EnvoyProcess
    from tests.net_helpers import free_port
    from tests.polling import async_wait_for

    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "registry.yaml").write_text(SERVICE + "---" + routes(BLOBS))
    config = tmp_path / "agent.yaml"
    config.write_text(
        "node: {id: nack-test}\nstate_dir: state\nadmin: {port: 0}\n"
        f"outbound: {{port_offset: {free_port() - 8080}}}\n"
        "sources: {files: {paths: [mesh/], debounce_ms: 20}}\n"
    )
    agent = Agent(load_config(config))
    await agent.start()
    bootstrap = build_bootstrap(
        node_id="nack-test", cluster="meshagent", xds_uds_path=str(agent.config.xds.uds),
        admin_port=0,
    )  # fmt: skip
    del bootstrap["layered_runtime"]
    envoy = EnvoyProcess(bootstrap, tmp_path)
    try:
        await asyncio.to_thread(envoy.start)

        def rejected() -> list[str]:
            return [r for r in agent.ready_reasons() if "rejected rds" in r]

        # When Envoy rejects the routes, then readiness and the diagnostics name the file
        [reason] = await async_wait_for(rejected, timeout=30, what="an RDS NACK")
        assert "RE2 program size of 132 > max program size of 100" in reason
        assert "VirtualService/default/registry (" in reason
        assert "registry.yaml:" in reason
        errors = [d for d in agent.config_errors()["diagnostics"] if d["source"] == "envoy"]
        assert errors and "registry.yaml:" in errors[-1]["location"]
        assert errors[-1]["kind"] == "Route" and errors[-1]["name"] == "8080"
    finally:
        await asyncio.to_thread(envoy.stop)
        await asyncio.wait_for(agent.stop(), 30)
