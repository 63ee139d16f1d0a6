"""WorkloadEntry auto-registration against the Kubernetes API simulator, driven by the real
`kubernetes` client: the entry appears with the group's fields and Istio's annotations, follows
the app's health through the group's probe, and is removed after the grace when the agent stops."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from meshagent.agent.config import parse_config
from meshagent.agent.daemon import Agent
from meshagent.onboard.autoreg import entry_name
from meshagent.onboard.vmconfig import VmInputs, render, write_files
from meshagent.testing.kube_sim import KubeSim
from tests.polling import async_wait_for

NS = "vmns"


class App:
    """The VM's application: /healthz answers 200 or 503 as told."""

    def __init__(self) -> None:
        self.healthy = True
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if app.healthy else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def sim() -> Iterator[KubeSim]:
    with KubeSim() as s:
        yield s


@pytest.fixture
def app() -> Iterator[App]:
    a = App()
    yield a
    a.server.shutdown()
    a.server.server_close()


def workload_group(port: int) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadGroup",
        "metadata": {"name": "ratings", "namespace": NS},
        "spec": {
            "metadata": {"labels": {"app": "ratings"}, "annotations": {"team": "a"}},
            "template": {"serviceAccount": "vm-sa", "ports": {"http": 9080}, "network": "vm-net"},
            "probe": {"periodSeconds": 1, "httpGet": {"port": port, "path": "/healthz"}},
        },
    }


def write_agent(tmp_path: Path, sim: KubeSim, group: dict[str, Any]) -> Path:
    join = tmp_path / "join"
    write_files(render(VmInputs(group, {}, internal_ip="127.0.0.7", autoregister=True)), join)
    (join / "root-cert.pem").write_text("")
    (tmp_path / "kube-token").write_text(sim.token or "")
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nsources: {{files: null}}\nadmin: {{port: 0}}\n"
        "ca: {mode: self-signed}\n"
        f"join:\n  dir: {join}\n  cleanup_grace: 300ms\n"
        f"  kubernetes: {{server: '{sim.url}', token_file: {tmp_path / 'kube-token'}}}\n"
    )
    return config


async def test_entry_registered_health_tracked_and_removed_after_grace(
    tmp_path: Path, sim: KubeSim, app: App
) -> None:
    # given: the WorkloadGroup in the cluster and a VM joined with ISTIO_META_AUTO_REGISTER_GROUP
    group = sim.apply(workload_group(app.port))
    config = parse_config(write_agent(tmp_path, sim, group).read_text(), tmp_path / "agent.yaml")
    assert config.join is not None and config.join.workload_group == "ratings"
    name = entry_name("ratings", "127.0.0.7", "vm-net")
    assert name == "ratings-127.0.0.7-vm-net"

    # when: the agent runs
    agent = Agent(config, adapter_factory=lambda cfg: [])
    await agent.start()
    try:
        entry = sim.get("WorkloadEntry", NS, name)
        assert entry is not None
        spec, meta = entry["spec"], entry["metadata"]
        # then: the group's template, the VM's address, Istio's annotations, the owner
        assert spec["address"] == "127.0.0.7" and spec["network"] == "vm-net"
        assert spec["serviceAccount"] == "vm-sa" and spec["ports"] == {"http": 9080}
        assert meta["labels"] == {"app": "ratings"} == spec["labels"]
        ann = meta["annotations"]
        assert ann["istio.io/autoRegistrationGroup"] == "ratings" and ann["team"] == "a"
        assert ann["istio.io/workloadController"].startswith("meshagent-")
        assert ann["istio.io/connectedAt"].endswith("Z")
        assert ann["proxy.istio.io/health-checks-enabled"] == "true"
        (owner,) = meta["ownerReferences"]
        assert owner["kind"] == "WorkloadGroup" and owner["uid"] == group["metadata"]["uid"]

        await async_wait_for(lambda: _healthy(sim, name) == "True", timeout=5)
        app.healthy = False
        await async_wait_for(lambda: _healthy(sim, name) == "False", timeout=5)
        app.healthy = True
        await async_wait_for(lambda: _healthy(sim, name) == "True", timeout=5)
    finally:
        stopping = asyncio.create_task(agent.stop())
        # while the grace runs the entry is still there, marked disconnected
        await async_wait_for(lambda: _annotation(sim, name, "istio.io/disconnectedAt"), timeout=5)
        assert _annotation(sim, name, "istio.io/connectedAt") is None
        started = time.monotonic()
        await stopping
    assert sim.get("WorkloadEntry", NS, name) is None
    assert time.monotonic() - started < 5.0  # the configured 300 ms grace, not the default 10 s


def _healthy(sim: KubeSim, name: str) -> str | None:
    entry = sim.get("WorkloadEntry", NS, name) or {}
    conditions = (entry.get("status") or {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "Healthy"), None)


def _annotation(sim: KubeSim, name: str, key: str) -> str | None:
    entry = sim.get("WorkloadEntry", NS, name) or {}
    value: str | None = (entry.get("metadata", {}).get("annotations") or {}).get(key)
    return value
