"""The operator surface of a running agent: CLI status/proxy-config/reload, /logging, status page.

A real `meshagent run` with a managed real Envoy and one service. Everything but health,
readiness and metrics is on the admin socket. The status page, read from the socket, is
rendered by headless Chromium (Debian's `chromium`), which proves it is a page a browser shows
without fetching anything else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from meshagent.agent.opscli import admin_request
from tests.net_helpers import free_port, http_get
from tests.polling import wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
MESH = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hello, namespace: demo}
spec:
  hosts: [hello.demo.svc.cluster.local]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.9}]
"""


@pytest.fixture(scope="module")
def agent() -> Iterator[tuple[Path, int]]:
    with tempfile.TemporaryDirectory(prefix="ma-ops") as tmp:
        root = Path(tmp)
        (root / "mesh").mkdir()
        (root / "mesh/hello.yaml").write_text(MESH)
        port = free_port()
        config = {
            "node": {"id": "ops-node", "namespace": "demo"}, "state_dir": "state",
            "admin": {"port": port},
            "envoy": {"manage": True, "admin_port": free_port(), "drain_seconds": 1},
            "outbound": {"ports": {8080: free_port()}}, "log": {"format": "json"},
            # A self-signed CA and one workload: the status page lists its certificate.
            "ca": {"mode": "self-signed"},
            "workloads": [{"name": "web", "namespace": "demo", "service_account": "web",
                           "ports": [{"port": 9080}]}],
        }  # fmt: skip
        config_path = root / "agent.yaml"
        config_path.write_text(yaml.safe_dump(config))
        with (root / "agent.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "meshagent.agent.cli", "run", "-c", str(config_path)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz").status == 200,
                         timeout=30, what="agent ready")  # fmt: skip
                yield root / "agent.yaml", port
            finally:
                proc.terminate()
                proc.wait(timeout=30)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshagent.agent.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_status_proxy_config_and_reload(agent: tuple[Path, int]) -> None:
    config, _ = agent
    status = cli("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert "node ops-node: ready" in status.stdout and "cds: sent" in status.stdout
    assert "certificate spiffe://cluster.local/ns/demo/sa/web: expires " in status.stdout
    clusters = cli("proxy-config", "clusters", "-c", str(config))
    row = next(r for r in clusters.stdout.splitlines() if r.startswith("outbound|8080||hello."))
    assert row.endswith(" yes"), clusters.stdout  # Envoy applied the version served
    applied = cli("proxy-config", "routes", "-c", str(config), "-o", "yaml", "--from", "envoy")
    assert "hello.demo.svc.cluster.local" in applied.stdout, applied.stderr
    endpoints = json.loads(cli("proxy-config", "endpoints", "-c", str(config), "-o", "json").stdout)
    assert "127.0.0.9" in json.dumps(endpoints)
    assert cli("reload", "-c", str(config)).stdout == "reload requested\n"


def test_errors_are_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"admin: {{port: {free_port()}}}\n")
    result = cli("status", "-c", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "cannot reach" in result.stderr


def admin_socket(config: Path) -> Path:
    return config.parent / "state" / "admin.sock"


def test_envoy_stats_and_convergence_metrics(agent: tuple[Path, int]) -> None:
    config, port = agent
    status, stats = admin_request(admin_socket(config), "/envoy/stats")
    assert status == 200 and b"envoy_cluster_manager_active_clusters" in stats
    assert http_get(f"http://127.0.0.1:{port}/envoy/stats").status == 403  # not on TCP
    metrics = http_get(f"http://127.0.0.1:{port}/metrics").body
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("meshagent_convergence_seconds_count")
    )
    assert count >= 1  # the first configuration reached Envoy and was ACKed


def test_log_level_changes_at_runtime(agent: tuple[Path, int]) -> None:
    config, _ = agent

    def post(query: str) -> int:
        return admin_request(admin_socket(config), f"/logging?{query}", method="POST")[0]

    assert post("level=debug") == 200
    assert post("level=loud") == 400


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no /usr/bin/chromium (apt-get install chromium; .ci/run does)",
)
def test_status_page_renders_in_headless_chromium(agent: tuple[Path, int]) -> None:
    config, port = agent
    assert http_get(f"http://127.0.0.1:{port}/").status == 403  # only on the admin socket
    status, html = admin_request(admin_socket(config), "/")
    assert status == 200
    with tempfile.TemporaryDirectory(prefix="ma-chromium") as profile:
        page = Path(profile) / "status.html"
        page.write_bytes(html)
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--dump-dom",
             page.as_uri()],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    dom = result.stdout
    assert "meshagent ops-node" in dom, result.stderr[-2000:]
    assert "hello.demo.svc.cluster.local" in dom  # a service
    assert "127.0.0.9" in dom and "healthy" in dom  # an endpoint and its health
    certificates = dom.split('id="certificates"', 1)[1].split("</section>", 1)[0]
    assert "spiffe://cluster.local/ns/demo/sa/web" in certificates
    assert 'id="envoy"' in dom and "cds" in dom
