"""The operator surface of a running agent: CLI status/proxy-config/reload, /logging, status page.

A real `meshagent run` with a managed real Envoy and one service. Everything but health,
readiness and metrics is on the admin socket. The status page, read from the socket, is
rendered by headless Chromium (Debian's `chromium`), which proves it is a page a browser shows
without fetching anything else.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
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


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshagent.agent.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        env=None if env is None else {**os.environ, **env},
    )  # fmt: skip


def test_status_proxy_config_and_reload(agent: tuple[Path, int]) -> None:
    config, _ = agent
    status = cli("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert "node ops-node: ready" in status.stdout and "cds: sent" in status.stdout
    assert re.search(r"agent \S+, up \S+.*, Envoy restarts 0, last reload ", status.stdout)
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


def chromium_dom(html: bytes) -> str:
    with tempfile.TemporaryDirectory(prefix="ma-chromium") as profile:
        page = Path(profile) / "status.html"
        page.write_bytes(html)
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert "<body" in result.stdout, result.stderr[-2000:]
    return result.stdout


def send_through_envoy(config: Path, host: str) -> int:
    port = yaml.safe_load(config.read_text())["outbound"]["ports"][8080]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def section_rows(dom: str, ident: str) -> list[list[str]]:
    section = dom.split(f'id="{ident}"', 1)[1].split("</section>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", section)]


HELLO = "outbound|8080||hello.demo.svc.cluster.local"


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no /usr/bin/chromium (apt-get install chromium; .ci/run does)",
)
def test_dead_endpoint_shows_envoy_failure_counts_not_healthy(agent: tuple[Path, int]) -> None:
    """hello's only endpoint (127.0.0.9:8080) refuses connections: after traffic, the page
    shows Envoy's connect failures and 5xx for it, and its state is not "healthy"."""
    config, _ = agent
    for _ in range(3):
        assert send_through_envoy(config, "hello.demo.svc.cluster.local") == 503

    def failures_seen() -> bytes | None:
        status, html = admin_request(admin_socket(config), "/?refresh=0")
        return (
            html if status == 200 and b"connect failures" in html and b"failing" in html else None
        )

    dom = chromium_dom(wait_for(failures_seen, timeout=20, what="Envoy's failure counts"))
    row = next(r for r in section_rows(dom, "clusters") if r and r[0] == HELLO)
    _, agent_view, envoy_view, state, _ejected, _active, errors, connect_failures = row
    assert agent_view == "1/1 healthy" and envoy_view == "0/1 healthy", row
    assert state == "failing" and int(connect_failures) >= 3 and int(errors) >= 3, row
    endpoint = next(r for r in section_rows(dom, "envoy-endpoints") if r and r[0] == HELLO)
    assert endpoint[1] == "127.0.0.9:8080" and endpoint[2] == "failing", endpoint
    assert "healthy" not in endpoint[2]
    versions = dict(r for r in section_rows(dom, "versions") if len(r) == 2)
    assert versions["Envoy version"].startswith("1.") and versions["Envoy state"] == "LIVE"
    assert re.fullmatch(r"\d+(s|m \d+s|h \d+m|d \d+h)", versions["agent uptime"])
    assert versions["last reload"] and versions["Envoy restarts by the agent"] == "0"
    cert = section_rows(dom, "certificates")[1]
    assert re.fullmatch(r"\d+(h \d+m|d \d+h)", cert[3]), cert  # readable time left
    for repr_marker in ("None", "True", "False", "frozenset(", "Provenance(", "{'"):
        assert f">{repr_marker}" not in dom and repr_marker + "(" not in dom, repr_marker


def test_refresh_and_paging_options(agent: tuple[Path, int]) -> None:
    config, _ = agent
    status, html = admin_request(admin_socket(config), "/")
    assert status == 200 and b'http-equiv="refresh" content="10"' in html
    status, html = admin_request(admin_socket(config), "/?refresh=0&top=1")
    assert status == 200 and b"http-equiv" not in html and b"next</a>" in html
    assert admin_request(admin_socket(config), "/?top=x")[0] == 400


def test_proxy_config_from_envoy_works_without_the_agent(
    agent: tuple[Path, int], tmp_path: Path
) -> None:
    config, _ = agent
    same = yaml.safe_load(config.read_text())
    # Another state dir: no admin socket there, as when the agent is down; same Envoy.
    lone = tmp_path / "agent.yaml"
    lone.write_text(yaml.safe_dump({**same, "state_dir": str(tmp_path / "state")}))
    assert cli("status", "-c", str(lone)).returncode == 2
    short = cli("proxy-config", "clusters", "--from", "envoy", "-c", str(lone),
                "--fqdn", "hello.demo.svc.cluster.local", "--port", "8080")  # fmt: skip
    assert short.returncode == 0, short.stderr
    assert [r.split()[0] for r in short.stdout.splitlines()[1:]] == [HELLO]
    assert cli("proxy-config", "clusters", "--from", "envoy", "-c", str(lone),
               "--port", "9").stdout.count("\n") == 1  # header only  # fmt: skip
    outbound = str(same["outbound"]["ports"][8080])
    listeners = cli("proxy-config", "listeners", "--from", "envoy", "-c", str(lone),
                    "--port", outbound, "--direction", "outbound")  # fmt: skip
    assert [r.split()[0] for r in listeners.stdout.splitlines()[1:]] == [f"127.0.0.1_{outbound}"]
    endpoints = cli("proxy-config", "endpoints", "--from", "envoy", "-c", str(lone), "--fqdn",
                    "hello")  # fmt: skip
    assert "127.0.0.9:8080" in endpoints.stdout and HELLO in endpoints.stdout, endpoints.stderr
    # The same field names on both sides: the agent's and Envoy's documents are equal (Envoy's
    # endpoint dump is its own rendering: also static clusters' endpoints, defaults filled in).
    for kind in ("clusters", "endpoints", "routes", "listeners", "secrets"):
        served = cli("proxy-config", kind, "-o", "json", "-c", str(config))
        applied = cli("proxy-config", kind, "-o", "json", "--from", "envoy", "-c", str(lone))
        assert served.returncode == applied.returncode == 0, applied.stderr
        if kind != "endpoints":
            assert json.loads(served.stdout) == json.loads(applied.stdout), kind
        assert "PRIVATE KEY" not in applied.stdout
    served_eds = cli(
        "proxy-config", "endpoints", "-o", "json", "-c", str(config), "--fqdn", "hello"
    )
    applied_eds = cli("proxy-config", "endpoints", "-o", "json", "--from", "envoy", "-c", str(lone),
                      "--fqdn", "hello")  # fmt: skip
    address = lambda docs: [e["endpoint"]["address"] for d in docs for g in d["endpoints"]  # noqa: E731
                            for e in g["lbEndpoints"]]  # fmt: skip
    assert address(json.loads(served_eds.stdout)) == address(json.loads(applied_eds.stdout))


def test_default_config_from_the_environment_and_envoy_log_level(
    agent: tuple[Path, int],
) -> None:
    config, _ = agent
    status = cli("status", env={"MESHAGENT_CONFIG": str(config)})
    assert status.returncode == 0 and "node ops-node" in status.stdout, status.stderr
    level = cli("proxy-config", "log", "--level", "debug", "-c", str(config))
    assert level.returncode == 0 and "debug" in level.stdout, level.stderr
    upstream = cli("proxy-config", "log", "--level", "upstream:info", "-c", str(config))
    assert upstream.returncode == 0, upstream.stderr
    assert cli("proxy-config", "log", "--level", "loud", "-c", str(config)).returncode == 2
    cli("proxy-config", "log", "--level", "warning", "-c", str(config))


def test_bug_report_has_everything_and_no_keys(agent: tuple[Path, int], tmp_path: Path) -> None:
    config, _ = agent
    archive = tmp_path / "report.tar.gz"
    result = cli("bug-report", "-c", str(config), "-o", str(archive),
                 "--log", str(config.parent / "agent.log"))  # fmt: skip
    assert result.returncode == 0 and archive.exists(), result.stderr
    with tarfile.open(archive) as tar:
        texts = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                 for m in tar.getmembers()}  # fmt: skip
    for name in ("config/agent.yaml", "agent/status.json", "agent/resources.json",
                 "envoy/config_dump.json", "envoy/clusters.json", "envoy/server_info.json",
                 "versions.json", "logs/agent.log"):  # fmt: skip
        assert name in texts, sorted(texts)
    assert any(n.startswith("config/mesh/") and n.endswith("hello.yaml") for n in texts)
    assert json.loads(texts["versions.json"])["envoy"]
    everything = "\n".join(texts.values())
    assert "PRIVATE KEY" not in everything
    assert not re.search(r"LS0tLS1CRUdJTi[A-Za-z0-9+/]{60,}", everything)  # base64 PEM
    assert "tlsCertificate" in texts["agent/resources.json"]  # the secrets were there
