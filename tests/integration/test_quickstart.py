"""The README's main command works: `meshagent dev quickstart` on the shipped example files.

The example's fixed ports are swapped for free ones so the test can run beside anything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.mesh_harness import REPO, http_request, wait_until
from tests.net_helpers import free_port
from tests.sampling import assert_share

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


def _copy_example(tmp_path: Path, name: str) -> tuple[Path, dict[str, int], dict[int, int]]:
    """examples/<name> copied with free ports: (agent config, ports, demo app port moves)."""
    example = tmp_path / name
    shutil.copytree(REPO / "examples" / name, example)
    ports = {"admin": free_port(), "envoy": free_port(), "outbound": free_port()}
    config = yaml.safe_load((example / "agent.yaml").read_text())
    config["state_dir"] = str(tmp_path / "state")
    config["admin"]["port"] = ports["admin"]
    config["envoy"]["admin_port"] = ports["envoy"]
    config["envoy"]["drain_seconds"] = 0  # Ctrl-C stops at once (the default drains 5 s)
    config["outbound"]["ports"] = {8080: ports["outbound"]}
    if "consul" in config["sources"]:
        ports["consul"] = free_port()
        config["sources"]["consul"]["address"] = f"127.0.0.1:{ports['consul']}"
    (example / "agent.yaml").write_text(yaml.safe_dump(config))
    apps = yaml.safe_load((example / "demo-apps.yaml").read_text())
    moved = {}
    for app in apps:
        new = free_port()
        moved[int(app["listen"].rpartition(":")[2])] = new
        app["listen"] = f"127.0.0.1:{new}"
    (example / "demo-apps.yaml").write_text(yaml.safe_dump(apps))
    return example / "agent.yaml", ports, moved


@contextlib.contextmanager
def _quickstart(tmp_path: Path, *args: str) -> Iterator[Path]:
    """`meshagent dev quickstart ARGS` until its banner is out; yields the output file."""
    out_path = tmp_path / "quickstart.out"
    out = open(out_path, "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshagent.agent.cli", "dev", "quickstart", *args],
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: b"quickstart is up" in out_path.read_bytes(),
            timeout=60,
            what="quickstart banner",
        )
        yield out_path
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def _assert_canary_and_split(port: int, host: str) -> None:
    """Header x-canary: true always reaches v2; the rest splits 80/20 between v1 and v2."""
    canary = http_request("127.0.0.1", port, "/", {"host": host, "x-canary": "true"})
    assert canary.headers["x-served-by"] == "hello-v2"
    served = [
        http_request("127.0.0.1", port, "/", {"host": host}).headers["x-served-by"]
        for _ in range(400)
    ]
    assert_share(served.count("hello-v1"), 400, 0.8, "hello-v1")  # 280..360


def test_quickstart_serves_the_canary_split_and_header_match(tmp_path: Path) -> None:
    config, ports, moved = _copy_example(tmp_path, "quickstart")
    services = config.parent / "mesh" / "services.yaml"
    mesh = services.read_text()
    for old, new in moved.items():
        mesh = mesh.replace(f"http: {old}}}", f"http: {new}}}")
    services.write_text(mesh)
    with _quickstart(tmp_path, "--config", str(config)) as out:
        port = ports["outbound"]
        _assert_canary_and_split(port, "hello.demo.svc.cluster.local")
        assert http_request("127.0.0.1", ports["admin"], "/readyz", {}).status == 200
        assert f"http://127.0.0.1:{port}/" in out.read_text()
        # The banner's export line is all `meshagent status` needs.
        export = next(line for line in out.read_text().splitlines() if "export " in line)
        name, _, value = export.split("export ", 1)[1].partition("=")
        status = subprocess.run(
            [sys.executable, "-m", "meshagent.agent.cli", "status"], cwd=REPO,
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, name: value},
        )  # fmt: skip
        assert status.returncode == 0 and "ready" in status.stdout, status.stderr


def test_quickstart_on_the_consul_simulator(tmp_path: Path) -> None:
    """The Consul example: the same canary (router header match) and 80/20 split (splitter),
    from Consul config entries served by the simulator the quickstart starts."""
    config, ports, moved = _copy_example(tmp_path, "quickstart-consul")
    data_path = config.parent / "consul.json"
    data = json.loads(data_path.read_text())
    for body in data["register"]:
        body["Service"]["Port"] = moved[body["Service"]["Port"]]
    data_path.write_text(json.dumps(data))
    with _quickstart(tmp_path, "--config", str(config), "--consul-sim", str(data_path)) as out:
        port = ports["outbound"]
        _assert_canary_and_split(port, "hello.service.consul")
        details = http_request("127.0.0.1", port, "/", {"host": "details.service.consul"})
        assert details.headers["x-served-by"] == "details-v1"
        assert f"http://127.0.0.1:{ports['consul']}/v1/catalog/services" in out.read_text()
