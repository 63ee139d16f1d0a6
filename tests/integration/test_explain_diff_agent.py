"""`meshagent explain` and `meshagent diff` against a running agent (its admin socket).

A real `meshagent run` (no Envoy: neither command needs one) serving a files source and a
Consul simulator. diff compares candidate files with what the agent serves, replaying the
agent's Consul documents beside them; explain asks the agent itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from meshagent.agent.opscli import admin_request
from meshagent.testing.consul_sim import ConsulSimulator
from tests.net_helpers import free_port
from tests.polling import wait_for
from tests.unit.test_insight_explain import HOST, ROUTE, RULE, SERVICE

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # the agent runs in a temporary directory


@pytest.fixture(scope="module")
def agent() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ma-explain") as tmp:
        root = Path(tmp)
        mesh = root / "mesh"
        mesh.mkdir()
        for name, text in (("se", SERVICE), ("dr", RULE), ("vs", ROUTE)):
            (mesh / f"{name}.yaml").write_text(text)
        with _consul() as consul_port:
            config = {
                "node": {"id": "explain-node", "namespace": "default"},
                "state_dir": "state",
                "admin": {"port": free_port()},
                "sources": {
                    "files": {"paths": ["mesh"]},
                    "consul": {"address": f"127.0.0.1:{consul_port}"},
                },
                "log": {"format": "json"},
                # Certificates shape clusters and listeners (mTLS): diff builds as the agent.
                "ca": {"mode": "self-signed"},
                "workloads": [
                    {
                        "name": "web",
                        "namespace": "default",
                        "service_account": "web",
                        "ports": [{"port": 9080}],
                    }
                ],
            }
            (root / "agent.yaml").write_text(yaml.safe_dump(config))
            with (root / "agent.log").open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "meshagent.agent.cli", "run", "-c", "agent.yaml"],
                    cwd=root,
                    env=ENV,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                try:
                    wait_for(
                        lambda: _serves(root, "outbound|8080|v1|web.service.consul"),
                        timeout=30,
                        what="the agent serves files and Consul",
                    )
                    yield root
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)


@contextlib.contextmanager
def _consul() -> Iterator[int]:
    """A Consul simulator with service web (subset v1 by its service-resolver); its port."""
    sim = ConsulSimulator().start()
    try:
        body = {
            "ID": "web-1",
            "Service": "web",
            "Address": "127.0.0.5",
            "Port": 8080,
            "Meta": {"version": "v1"},
        }
        sim.state.register_service("sim-node", body, [{"Status": "passing"}])
        sim.state.put_config(
            {
                "Kind": "service-resolver",
                "Name": "web",
                "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}},
            }
        )
        yield sim.port
    finally:
        sim.stop()


def _serves(root: Path, cluster: str) -> bool:
    try:
        status, body = admin_request(root / "state/admin.sock", "/debug/resources")
    except OSError:
        return False
    return status == 200 and cluster in [c["name"] for c in json.loads(body).get("cds", [])]


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshagent.agent.cli", *args, "-c", "agent.yaml"],
        cwd=root,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_diff_against_the_running_agent(agent: Path, tmp_path: Path) -> None:
    same = cli(agent, "diff", "mesh")
    assert (same.returncode, same.stdout) == (0, "no change\n"), same.stderr
    edited = tmp_path / "candidate"
    shutil.copytree(agent / "mesh", edited)
    text = (edited / "vs.yaml").read_text()
    (edited / "vs.yaml").write_text(
        text.replace("weight: 80", "weight: 60").replace("weight: 20", "weight: 40")
    )
    changed = cli(agent, "diff", str(edited), "-o", "json")
    assert changed.returncode == 1, changed.stderr
    [change] = json.loads(changed.stdout)  # the Consul service is replayed: not "removed"
    assert (change["op"], change["type"], change["name"]) == ("~", "rds", "9080")
    assert [(f["before"], f["after"]) for f in change["fields"]] == [(80, 60), (20, 40)]


def test_explain_asks_the_running_agent(agent: Path) -> None:
    route = cli(agent, "explain", f"9080/{HOST}:9080/1")
    assert route.returncode == 0, route.stderr
    assert "mesh/vs.yaml:13" in route.stdout and "mesh/dr.yaml:9" in route.stdout
    consul = cli(agent, "explain", "outbound|8080|v1|web.service.consul", "-o", "json")
    assert consul.returncode == 0, consul.stderr
    inputs = {i["role"]: i for i in json.loads(consul.stdout)["inputs"]}
    assert inputs["service"]["ref"] == "ConsulService/web"
    assert inputs["service"]["location"].startswith("consul index ")
    rule = inputs["destination rule"]
    assert rule["ref"] == "ConsulConfigEntry/service-resolver/web"
    assert rule["location"].startswith("consul index ")
    missing = cli(agent, "explain", "nothing-like-this")
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr
