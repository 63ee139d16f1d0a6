"""The README's main command works: `meshagent dev quickstart` on the shipped example files.

The example's fixed ports are swapped for free ones so the test can run beside anything else.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.mesh_harness import REPO, _get, wait_until
from tests.net_helpers import free_port

pytestmark = pytest.mark.envoy


def _copy_example(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    example = tmp_path / "quickstart"
    shutil.copytree(REPO / "examples" / "quickstart", example)
    ports = {"admin": free_port(), "envoy": free_port(), "outbound": free_port()}
    config = yaml.safe_load((example / "agent.yaml").read_text())
    config["state_dir"] = str(tmp_path / "state")
    config["admin"]["port"] = ports["admin"]
    config["envoy"]["admin_port"] = ports["envoy"]
    config["outbound"]["ports"] = {8080: ports["outbound"]}
    (example / "agent.yaml").write_text(yaml.safe_dump(config))
    apps = yaml.safe_load((example / "demo-apps.yaml").read_text())
    mesh = (example / "mesh" / "services.yaml").read_text()
    for app in apps:
        old = app["listen"].rpartition(":")[2]
        new = free_port()
        app["listen"] = f"127.0.0.1:{new}"
        mesh = mesh.replace(f"http: {old}}}", f"http: {new}}}")
    (example / "demo-apps.yaml").write_text(yaml.safe_dump(apps))
    (example / "mesh" / "services.yaml").write_text(mesh)
    return example / "agent.yaml", ports


def test_quickstart_serves_the_canary_split_and_header_match(tmp_path: Path) -> None:
    config, ports = _copy_example(tmp_path)
    out = open(tmp_path / "quickstart.out", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshagent.agent.cli", "dev", "quickstart", "--config", str(config)],
        cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: b"quickstart is up" in (tmp_path / "quickstart.out").read_bytes(),
                   timeout=60, what="quickstart banner")
        host = {"host": "hello.demo.svc.cluster.local"}
        port = ports["outbound"]
        canary = _get("127.0.0.1", port, "/", {**host, "x-canary": "true"})
        assert canary.headers["x-served-by"] == "hello-v2"
        served = [_get("127.0.0.1", port, "/", host).headers["x-served-by"] for _ in range(200)]
        assert 0.70 <= served.count("hello-v1") / 200 <= 0.90
        assert _get("127.0.0.1", ports["admin"], "/readyz", {}).status == 200
        banner = (tmp_path / "quickstart.out").read_text()
        assert f"http://127.0.0.1:{port}/" in banner
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_quickstart_on_the_consul_simulator(tmp_path: Path) -> None:
    """The Consul example: the same canary (router header match) and 80/20 split (splitter),
    from Consul config entries served by the simulator the quickstart starts."""
    example = tmp_path / "quickstart-consul"
    shutil.copytree(REPO / "examples" / "quickstart-consul", example)
    ports = {"admin": free_port(), "envoy": free_port(), "outbound": free_port()}
    consul_port = free_port()
    config = yaml.safe_load((example / "agent.yaml").read_text())
    config["state_dir"] = str(tmp_path / "state")
    config["admin"]["port"] = ports["admin"]
    config["envoy"]["admin_port"] = ports["envoy"]
    config["outbound"]["ports"] = {8080: ports["outbound"]}
    config["sources"]["consul"]["address"] = f"127.0.0.1:{consul_port}"
    (example / "agent.yaml").write_text(yaml.safe_dump(config))
    apps = yaml.safe_load((example / "demo-apps.yaml").read_text())
    data = json.loads((example / "consul.json").read_text())
    moved = {}
    for app in apps:
        new = free_port()
        moved[int(app["listen"].rpartition(":")[2])] = new
        app["listen"] = f"127.0.0.1:{new}"
    for body in data["register"]:
        body["Service"]["Port"] = moved[body["Service"]["Port"]]
    (example / "demo-apps.yaml").write_text(yaml.safe_dump(apps))
    (example / "consul.json").write_text(json.dumps(data))
    out_path = tmp_path / "quickstart.out"
    out = open(out_path, "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshagent.agent.cli", "dev", "quickstart",
         "--config", str(example / "agent.yaml"), "--consul-sim", str(example / "consul.json")],
        cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: b"quickstart is up" in out_path.read_bytes(), timeout=60,
                   what="quickstart banner")
        host = {"host": "hello.service.consul"}
        port = ports["outbound"]
        canary = _get("127.0.0.1", port, "/", {**host, "x-canary": "true"})
        assert canary.headers["x-served-by"] == "hello-v2"
        served = [_get("127.0.0.1", port, "/", host).headers["x-served-by"] for _ in range(200)]
        assert 0.70 <= served.count("hello-v1") / 200 <= 0.90
        details = _get("127.0.0.1", port, "/", {"host": "details.service.consul"})
        assert details.headers["x-served-by"] == "details-v1"
        assert f"http://127.0.0.1:{consul_port}/v1/catalog/services" in out_path.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
