"""EnvoyFilter BOOTSTRAP patches: merged into the bootstrap the agent writes (as Istio's
bootstrap generator merges them), checked by a real `envoy --mode validate`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from meshagent.adapters.yamldocs import load_documents
from meshagent.agent.bootstrap_patch import BOOTSTRAP_SOURCE, patched_bootstrap
from meshagent.model.proxy import ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import SourceEvent
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds.bootstrap import build_bootstrap
from meshagent.xds.envoyfilter.bootstrap import patch_bootstrap
from meshagent.xds.envoyfilter.select import bootstrap_patches, plan_for

PROXY = ProxySpec(node_id="vm-1", labels=(("app", "edge"),))
MONITOR = "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
OVERLOAD = f"""\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: max-connections, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: BOOTSTRAP
    patch:
      operation: MERGE
      value:
        overload_manager:
          resource_monitors:
          - name: envoy.resource_monitors.global_downstream_max_connections
            typed_config:
              "@type": type.googleapis.com/{MONITOR}
              max_active_downstream_connections: 1000
"""
FLUSH = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: flush, namespace: default}
spec:
  workloadSelector: {labels: {app: edge}}
  configPatches:
  - applyTo: BOOTSTRAP
    match: {proxy: {proxyVersion: '^1\\.2[0-9]'}}
    patch: {operation: MERGE, value: {stats_flush_interval: 7s}}
  - applyTo: BOOTSTRAP
    match: {proxy: {proxyVersion: '^1\\.1[0-9]\\.'}}
    patch: {operation: MERGE, value: {stats_flush_interval: 99s}}
"""
# Envoy refuses a stats flush interval under 1 ms: valid protobuf, invalid bootstrap.
BAD = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: too-fast, namespace: default}
spec:
  configPatches:
  - applyTo: BOOTSTRAP
    patch: {operation: MERGE, value: {stats_flush_interval: 0.0001s}}
"""


def snapshot_of(*texts: str) -> MeshSnapshot:
    resources, problems = load_documents("\n---\n".join(texts), "mesh.yaml")
    assert problems == []
    snapshot, diagnostics = Normalizer().apply([SourceEvent("files", upserts=tuple(resources))])
    assert [d for d in diagnostics if d.severity == "error"] == []
    return snapshot


def base() -> dict[str, Any]:
    return build_bootstrap(node_id="vm-1", cluster="meshagent", xds_uds_path="/tmp/x.sock")


def test_merge_patches_go_into_the_bootstrap_in_order() -> None:
    snapshot = snapshot_of(OVERLOAD, FLUSH)
    patches = bootstrap_patches(snapshot.envoy_filters, PROXY)
    # the root namespace's filter first; the 1.1x patch does not match the proxy version
    assert [a.ref.split(" ")[0] for a in patches] == [
        "EnvoyFilter/istio-system/max-connections",
        "EnvoyFilter/default/flush",
    ]
    result = patch_bootstrap(base(), patches)
    boot = result.bootstrap
    assert boot["stats_flush_interval"] == "7s"
    # Envoy refuses an interval beside stats_flush_on_admin: the patch's interval wins
    assert "stats_flush_on_admin" not in boot
    [monitor] = boot["overload_manager"]["resource_monitors"]
    assert monitor["typed_config"]["max_active_downstream_connections"] == "1000"
    # the rest of the bootstrap is kept
    assert boot["node"] == {"id": "vm-1", "cluster": "meshagent"}
    assert boot["stats_config"]["stats_tags"][0]["tag_name"] == "cluster_name"
    # and the xDS patch stage has nothing to do for them
    assert plan_for(snapshot.envoy_filters, PROXY).empty


SINK = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: statsd, namespace: istio-system}
spec:
  configPatches:
  - applyTo: BOOTSTRAP
    patch:
      operation: MERGE
      value:
        stats_sinks:
        - name: envoy.stat_sinks.statsd
          typed_config:
            "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
            address: {socket_address: {address: 127.0.0.1, port_value: 8125}}
"""
ON_ADMIN = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: on-admin, namespace: istio-system}
spec:
  configPatches:
  - applyTo: BOOTSTRAP
    patch: {operation: MERGE, value: {stats_flush_on_admin: true}}
"""


def test_a_stats_sink_brings_back_the_periodic_flush_unless_a_patch_asks_otherwise() -> None:
    assert base()["stats_flush_on_admin"] is True
    snapshot = snapshot_of(SINK)
    boot = patch_bootstrap(base(), bootstrap_patches(snapshot.envoy_filters, PROXY)).bootstrap
    assert "stats_flush_on_admin" not in boot and len(boot["stats_sinks"]) == 1
    snapshot = snapshot_of(SINK, ON_ADMIN)
    boot = patch_bootstrap(base(), bootstrap_patches(snapshot.envoy_filters, PROXY)).bootstrap
    assert boot["stats_flush_on_admin"] is True and len(boot["stats_sinks"]) == 1
    # a patch about something else keeps the generated setting
    snapshot = snapshot_of(OVERLOAD)
    boot = patch_bootstrap(base(), bootstrap_patches(snapshot.envoy_filters, PROXY)).bootstrap
    assert boot["stats_flush_on_admin"] is True


@pytest.mark.envoy
def test_envoy_accepts_the_generated_bootstrap_and_a_flush_interval_patch() -> None:
    from meshagent.agent.bootstrap_patch import validate_bootstrap
    from tests.envoy_helpers import envoy_binary

    assert validate_bootstrap(envoy_binary(), base()) == ""
    patched, problems = patched_bootstrap(base(), snapshot_of(FLUSH), PROXY, envoy_binary())
    assert problems == [] and patched["stats_flush_interval"] == "7s"


def test_no_patch_leaves_the_bootstrap_itself() -> None:
    boot = base()
    other = replace(PROXY, labels=(("app", "web"),))
    snapshot = snapshot_of(FLUSH)
    assert patch_bootstrap(boot, bootstrap_patches(snapshot.envoy_filters, other)).bootstrap is boot
    assert patched_bootstrap(boot, snapshot, other, None) == (boot, [])


@pytest.mark.envoy
def test_a_patch_envoy_refuses_is_a_located_error_and_the_bootstrap_stays_unpatched() -> None:
    from tests.envoy_helpers import envoy_binary

    boot = base()
    snapshot = snapshot_of(OVERLOAD, BAD)
    patched, problems = patched_bootstrap(boot, snapshot, PROXY, envoy_binary())
    assert patched is boot
    [problem] = problems  # the other filter is fine on its own
    assert (problem.severity, problem.source) == ("error", BOOTSTRAP_SOURCE)
    assert (problem.kind, problem.name, problem.field) == (
        "EnvoyFilter",
        "default/too-fast",
        "spec.configPatches[0]",
    )
    assert problem.location.startswith("mesh.yaml:")
    assert "Envoy refuses the bootstrap" in problem.reason and "unpatched" in problem.reason
    # without it, the good one applies and Envoy accepts the result
    patched, problems = patched_bootstrap(boot, snapshot_of(OVERLOAD), PROXY, envoy_binary())
    assert problems == [] and "overload_manager" in patched


@pytest.mark.envoy
def test_meshagent_bootstrap_applies_the_mesh_files_patches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshagent.agent.cli import main

    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "ef.yaml").write_text(OVERLOAD)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "bad.yaml").write_text(BAD)
    config = tmp_path / "agent.yaml"
    config.write_text("node: {id: vm-1}\nstate_dir: state\n")

    # the config's files (mesh/): patched
    assert main(["bootstrap", "-c", str(config)]) == 0
    out = capsys.readouterr()
    assert "overload_manager" in json.loads(out.out) and out.err == ""
    # --mesh instead: a patch Envoy refuses is reported, the bootstrap stays unpatched
    assert main(["bootstrap", "-c", str(config), "--mesh", str(tmp_path / "other")]) == 0
    out = capsys.readouterr()
    bootstrap = json.loads(out.out)
    assert "stats_flush_interval" not in bootstrap and "overload_manager" not in bootstrap
    assert "bad.yaml:" in out.err and "EnvoyFilter/default/too-fast" in out.err


def test_proxy_version_is_the_agent_configs_istio_version(tmp_path: Path) -> None:
    """`match.proxy.proxyVersion` and `proxy.metadata.ISTIO_VERSION` compare with
    node.istio_version (default 1.28.0), which the bootstrap's node metadata also carries."""
    from meshagent.agent.config import load_config
    from meshagent.agent.envoy import bootstrap_for
    from meshagent.errors import ConfigError
    from meshagent.model.proxy import DEFAULT_ISTIO_VERSION

    snapshot = snapshot_of(FLUSH)
    assert DEFAULT_ISTIO_VERSION == "1.28.0"
    config = tmp_path / "agent.yaml"
    config.write_text("node: {id: vm-1, labels: {app: edge}, istio_version: 1.19.3}\n")
    loaded = load_config(config)
    proxy = loaded.proxy_spec()
    assert proxy.istio_version == "1.19.3"
    # now the 1.1x patch matches, the 1.2x one does not
    result = patch_bootstrap(base(), bootstrap_patches(snapshot.envoy_filters, proxy))
    assert result.bootstrap["stats_flush_interval"] == "99s"
    assert bootstrap_for(loaded)["node"]["metadata"] == {"ISTIO_VERSION": "1.19.3"}
    config.write_text("node: {id: vm-1}\n")
    assert load_config(config).proxy_spec().istio_version == "1.28.0"
    config.write_text("node: {id: vm-1, istio_version: latest}\n")
    with pytest.raises(ConfigError, match="istio_version"):
        load_config(config)
