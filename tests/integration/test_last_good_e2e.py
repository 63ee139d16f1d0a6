"""Last good config with a real Envoy: a mesh directory renamed away, and a restart while a
document is invalid (issue 11, items 6 and 16)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from tests.integration.mesh_harness import MeshHarness, wait_until
from tests.integration.test_lifecycle_e2e import mesh_docs, served, start

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


def always_v1(h: MeshHarness) -> bool:
    return all(served(h) == "app-v1" for _ in range(20))


def test_renamed_mesh_dir_and_restart_with_an_invalid_file_keep_routing(tmp_path: Path) -> None:
    with contextlib.contextmanager(start)(tmp_path) as h:
        wait_until(lambda: h.agent_get("/readyz").status == 200, what="ready")
        pushes = h.metric("meshagent_xds_pushes_total")
        # when the mesh directory is renamed away, as a tool replacing it does
        os.rename(h.mesh_dir, tmp_path / "mesh.old")
        reply = wait_until(
            lambda: (r := h.agent_get("/readyz")).status == 503 and r, what="not ready"
        )
        # then /readyz names the path, nothing is pushed and Envoy routes as before
        assert str(h.mesh_dir) in reply.body.decode()
        assert always_v1(h)
        assert h.metric("meshagent_xds_pushes_total") == pushes
        os.rename(tmp_path / "mesh.old", h.mesh_dir)
        wait_until(lambda: h.agent_get("/readyz").status == 200, what="ready again")

        # when the agent restarts while the VirtualService (now to v2) is invalid
        h.stop_agent(signal.SIGTERM)
        invalid = mesh_docs(h, version="v2").replace("  http:\n", "  http:\n  - retries: 5\n")
        h.apply(invalid)
        h.start_agent()
        wait_until(lambda: h.agent_get("/readyz").status == 200, what="ready after restart")
        # then the VirtualService saved before the restart keeps routing to v1, and says so
        assert always_v1(h)
        errors = h.agent_get("/debug/config_errors").json()["diagnostics"]
        assert any("saved before the restart" in d["message"] for d in errors), errors
        assert any(d["severity"] == "error" and d["kind"] == "VirtualService" for d in errors)
