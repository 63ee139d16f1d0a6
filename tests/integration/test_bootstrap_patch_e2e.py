"""EnvoyFilter BOOTSTRAP patches with a real, agent-managed Envoy: the patched bootstrap is
the one Envoy runs (its /config_dump), a restart of Envoy reads the patches anew, and a patch
Envoy refuses leaves Envoy on the unpatched bootstrap with a located error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshagent.agent.config import load_config
from meshagent.agent.daemon import Agent
from tests.net_helpers import free_port
from tests.polling import async_wait_for

pytestmark = pytest.mark.envoy

DEADLINE_S = 30.0
MONITOR = "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"


def envoy_filter(flush: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: boot, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: BOOTSTRAP
    patch:
      operation: MERGE
      value:
        stats_flush_interval: {flush}
        overload_manager:
          resource_monitors:
          - name: envoy.resource_monitors.global_downstream_max_connections
            typed_config:
              "@type": type.googleapis.com/{MONITOR}
              max_active_downstream_connections: 1000
"""


def running_bootstrap(admin_port: int) -> dict[str, Any] | None:
    """The bootstrap the running Envoy reports in /config_dump (None while it does not answer)."""
    try:
        url = f"http://127.0.0.1:{admin_port}/config_dump"
        with urllib.request.urlopen(url, timeout=5) as response:
            dump = json.loads(response.read())
    except OSError:
        return None
    for config in dump["configs"]:
        if config["@type"].endswith("BootstrapConfigDump"):
            return dict(config["bootstrap"])
    return None


async def test_bootstrap_patches_reach_envoy_at_start_and_restart(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "boot.yaml").write_text(envoy_filter("7s"))
    admin_port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(
        "node: {id: it}\nstate_dir: state\nadmin: {port: 0}\n"
        f"envoy: {{manage: true, admin_port: {admin_port}, drain_seconds: 0}}\n"
        "sources: {files: {paths: [mesh/], debounce_ms: 50}}\n"
    )
    agent = Agent(load_config(config), envoy_output=subprocess.DEVNULL)
    await agent.start()
    try:
        assert agent.envoy is not None

        def flush_is(value: str) -> dict[str, Any] | None:
            boot = running_bootstrap(admin_port)
            return boot if boot is not None and boot.get("stats_flush_interval") == value else None

        # Envoy started with the patched bootstrap (a first start waits for the files)
        boot = await async_wait_for(
            lambda: flush_is("7s"), timeout=DEADLINE_S, what="patched bootstrap", blocking=True
        )
        [monitor] = boot["overload_manager"]["resource_monitors"]
        assert monitor["typed_config"]["max_active_downstream_connections"] == "1000"
        assert boot["node"]["id"] == "it"  # the rest is the agent's

        async def restart_envoy() -> None:
            first = agent.envoy.pid if agent.envoy else None
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await async_wait_for(
                lambda: agent.envoy is not None and agent.envoy.pid not in (None, first),
                timeout=DEADLINE_S,
                what="Envoy restarted",
            )

        async def rewrite(flush: str) -> None:
            before = list(agent.snapshot.envoy_filters.values())
            (mesh / "boot.yaml").write_text(envoy_filter(flush))
            await async_wait_for(
                lambda: list(agent.snapshot.envoy_filters.values()) != before,
                timeout=DEADLINE_S,
                what=f"EnvoyFilter with {flush}",
            )

        # A changed patch does nothing to the running Envoy; its next start reads it
        await rewrite("9s")
        assert flush_is("7s") is not None
        await restart_envoy()
        await async_wait_for(
            lambda: flush_is("9s"), timeout=DEADLINE_S, what="re-patched", blocking=True
        )

        # A patch Envoy refuses: a located error, and Envoy runs the unpatched bootstrap
        await rewrite("0.0001s")
        await restart_envoy()

        def unpatched() -> dict[str, Any] | None:
            boot = running_bootstrap(admin_port)
            return boot if boot is not None and "overload_manager" not in boot else None

        await async_wait_for(unpatched, timeout=DEADLINE_S, what="unpatched", blocking=True)
        errors = [d for d in agent.config_errors()["diagnostics"] if d.get("source") == "bootstrap"]
        assert len(errors) == 1, errors
        text = json.dumps(errors[0])
        assert "EnvoyFilter" in text and "istio-system/boot" in text and "boot.yaml:" in text
        assert "Envoy refuses the bootstrap" in text
    finally:
        await asyncio.wait_for(agent.stop(), DEADLINE_S)
