"""Agent lifecycle against a real Envoy: hot reload, invalid edits, NACKs, agent restarts (and
a killed agent's managed Envoy adopted by the next agent), SotW."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mesh_harness import MeshHarness, mesh_harness, wait_until

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

HOST = "app.default.svc.cluster.local"


def mesh_docs(h: MeshHarness, *, version: str = "v1", extra_route: str = "") -> str:
    """One service with subsets v1/v2 and a VirtualService sending everything to `version`."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: default}}
spec:
  hosts: [{HOST}]
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {h.apps["v1"].port}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {h.apps["v2"].port}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: app, namespace: default}}
spec:
  host: {HOST}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
{extra_route}  - route: [{{destination: {{host: {HOST}, subset: {version}}}}}]
"""


def start(root: Path, *, old_bootstrap: bool = False, **config: object) -> Iterator[MeshHarness]:
    with mesh_harness(root) as h:
        if config:
            h._write_agent_config(**config)
        h.start_app("v1", "app", "v1")
        h.start_app("v2", "app", "v2")
        h.apply(mesh_docs(h))
        h.start_agent()
        h.start_envoy(old_bootstrap=old_bootstrap)
        wait_until(lambda: served(h) == "app-v1", what="first routing")
        yield h


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshHarness]:
    yield from start(tmp_path)


def served(h: MeshHarness, path: str = "/") -> str:
    reply = h.request(HOST, path)
    return reply.headers.get("x-served-by", str(reply.status))


def envoy_uptime(h: MeshHarness) -> int:
    return int(json.loads(h.envoy_admin("/server_info").body)["uptime_current_epoch"].rstrip("s"))


def test_editing_a_file_changes_routing_without_restarts(mesh: MeshHarness) -> None:
    agent_pid = mesh.agent.pid if mesh.agent else None
    envoy_pid = mesh.envoy.pid if mesh.envoy else None

    mesh.apply(mesh_docs(mesh, version="v2"))

    wait_until(lambda: served(mesh) == "app-v2", what="v2 after edit")
    assert mesh.agent is not None and mesh.agent.pid == agent_pid and mesh.agent.poll() is None
    assert mesh.envoy is not None and mesh.envoy.pid == envoy_pid and mesh.envoy.poll() is None


def test_invalid_edit_keeps_the_last_good_config(mesh: MeshHarness) -> None:
    errors_before = mesh.metric("meshagent_config_errors_total")
    broken = mesh_docs(mesh, version="v2").replace("subset: v2}}", "subset: v2}, weight: lots}")

    mesh.apply(broken)

    wait_until(
        lambda: mesh.metric("meshagent_config_errors_total") > errors_before,
        what="config error counted",
    )
    assert all(served(mesh) == "app-v1" for _ in range(10))
    log = (mesh.root / "agent.log").read_text()
    assert "weight" in log and "mesh.yaml" in log

    mesh.apply(mesh_docs(mesh, version="v2"))
    wait_until(lambda: served(mesh) == "app-v2", what="valid edit after a broken one")


def test_a_config_envoy_rejects_is_reported_and_not_resent(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        mesh = stack.enter_context(contextlib.contextmanager(start)(tmp_path, old_bootstrap=True))
        _nack_is_reported_and_not_resent(mesh)


def _nack_is_reported_and_not_resent(mesh: MeshHarness) -> None:
    # The agent accepts this regex (RE2 program size 132, as Istio does); an Envoy without
    # the bootstrap's raised limit (100) rejects it, so Envoy NACKs the routes.
    nack_route = (
        "  - match: [{uri: {regex: '^/blobs/sha256:[0-9a-f]{64}$'}}]\n"
        f"    route: [{{destination: {{host: {HOST}, subset: v2}}}}]\n"
    )
    nacks_before = mesh.metric("meshagent_xds_nacks_total")

    mesh.apply(mesh_docs(mesh, extra_route=nack_route))

    wait_until(lambda: mesh.metric("meshagent_xds_nacks_total") > nacks_before, what="NACK")
    pushes = mesh.metric("meshagent_xds_pushes_total")
    assert served(mesh) == "app-v1"  # the last accepted routes keep serving
    mesh.apply(mesh_docs(mesh, version="v2"))
    wait_until(lambda: served(mesh) == "app-v2", what="valid change after NACK")
    assert mesh.metric("meshagent_xds_nacks_total") == nacks_before + 1
    assert mesh.metric("meshagent_xds_pushes_total") - pushes <= 2


def test_killed_agent_leaves_envoy_routing_and_a_new_agent_resyncs(mesh: MeshHarness) -> None:
    uptime = envoy_uptime(mesh)

    mesh.stop_agent(signal.SIGKILL)

    assert all(served(mesh) == "app-v1" for _ in range(20))
    mesh.start_agent()
    wait_until(lambda: mesh.agent_get("/readyz").status == 200, what="ready after restart")
    mesh.apply(mesh_docs(mesh, version="v2"))
    wait_until(lambda: served(mesh) == "app-v2", what="change through the new agent")
    assert envoy_uptime(mesh) >= uptime  # the same Envoy process all along


def test_readyz_reports_ready_after_envoy_acks(mesh: MeshHarness) -> None:
    reply = wait_until(lambda: mesh.agent_get("/readyz"), what="readyz")
    wait_until(lambda: mesh.agent_get("/readyz").status == 200, what="ready")
    assert reply.status in (200, 503)
    assert mesh.metric("meshagent_xds_pushes_total") >= 4


def test_state_of_the_world_stream_routes_too(tmp_path: Path) -> None:
    for h in start(tmp_path, xds={"delta": False}):
        bootstrap = json.loads((h.root / "envoy.json").read_text())
        api_type = bootstrap["dynamic_resources"]["ads_config"]["api_type"]
        assert api_type == "GRPC"
        h.apply(mesh_docs(h, version="v2"))
        wait_until(lambda h=h: served(h) == "app-v2", what="SotW update")


class Traffic:
    """Requests through Envoy, one after another on a thread, counting the failures."""

    def __init__(self, h: MeshHarness) -> None:
        self.h, self.total = h, 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.h.outbound_port, timeout=5)
            try:
                conn.request("GET", "/", headers={"host": HOST})
                outcome = conn.getresponse().getheader("x-served-by") or "no x-served-by"
            except OSError as error:  # a hung request is a failure too (5 s on loopback)
                outcome = repr(error)
            finally:
                conn.close()
            self.total += 1
            if outcome not in ("app-v1", "app-v2"):
                self.failures.append(outcome)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def test_killing_the_agent_leaves_its_managed_envoy_serving_and_the_next_agent_adopts_it(
    tmp_path: Path,
) -> None:
    with mesh_harness(tmp_path) as h:
        envoy = {"manage": True, "admin_port": h.envoy_admin_port, "drain_seconds": 1}
        h.configure(envoy={**envoy, "concurrency": 1})
        h.start_app("v1", "app", "v1")
        h.start_app("v2", "app", "v2")
        h.apply(mesh_docs(h))
        h.start_agent()
        wait_until(lambda: served(h) == "app-v1", timeout=30, what="first routing")
        pid = int((h.state_dir / "envoy.pid").read_text().split()[0])

        with Traffic(h) as traffic:
            wait_until(lambda: traffic.total >= 20, what="traffic before the kill")
            h.stop_agent(signal.SIGKILL)
            down = traffic.total
            wait_until(
                lambda: traffic.total >= down + 100 or traffic.failures,
                timeout=30,
                what="traffic while the agent is down",
            )
            assert traffic.failures == []
            h.start_agent()
            wait_until(lambda: h.agent_get("/readyz").status == 200, what="ready again")
            h.apply(mesh_docs(h, version="v2"))
            wait_until(lambda: served(h) == "app-v2", what="a change through the new agent")
        print(f"{traffic.total} requests, {traffic.total - down} after the kill")
        assert traffic.failures == []
        assert int((h.state_dir / "envoy.pid").read_text().split()[0]) == pid
        assert b'"event": "envoy_adopted"' in (tmp_path / "agent.log").read_bytes()
        assert b'"event": "envoy_started"' not in agent_log_since_restart(tmp_path)


def agent_log_since_restart(root: Path) -> bytes:
    """The second agent's log lines (after its own first line)."""
    log = (root / "agent.log").read_bytes()
    return log[log.rfind(b'"event": "admin_listening"') :]
