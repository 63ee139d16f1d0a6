"""A workload's private key reaches only the Unix socket's peers, never a page, a CLI or a log.

A real `meshagent run` with a self-signed CA, one workload and `xds.tcp`, no Envoy: real gRPC
clients ask for the SDS `default` secret over the Unix socket (served) and over TCP (answered
as absent); /debug/resources, the status pages, CSDS, `meshagent proxy-config secrets` and
the agent's debug log must show the key as "[redacted]" or not at all.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from meshagent.agent.opscli import admin_request
from meshagent.xds.typeurls import SECRET
from tests.net_helpers import free_port, http_get
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
NODE = base_pb2.Node(id="sec-node", cluster="meshagent")


class Agent:
    def __init__(self, root: Path, admin_port: int, xds_port: int) -> None:
        self.root, self.admin_port, self.xds_port = root, admin_port, xds_port
        self.config = root / "agent.yaml"
        self.uds = f"unix:{root / 'state' / 'xds.sock'}"
        self.tcp = f"127.0.0.1:{xds_port}"
        self.socket = root / "state" / "admin.sock"
        self.key_pem = ""

    def log(self) -> str:
        return (self.root / "agent.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    with tempfile.TemporaryDirectory(prefix="ma-sec") as tmp:
        root = Path(tmp)
        (root / "mesh").mkdir()
        running = Agent(root, free_port(), free_port())
        config = {
            "node": {"id": NODE.id, "namespace": "demo"}, "state_dir": "state",
            "admin": {"port": running.admin_port},
            "xds": {"tcp": f"127.0.0.1:{running.xds_port}"},
            "log": {"level": "debug", "format": "json"},
            "ca": {"mode": "self-signed"},
            "workloads": [{"name": "web", "namespace": "demo", "service_account": "web",
                           "ports": [{"port": 9080}]}],
        }  # fmt: skip
        running.config.write_text(yaml.safe_dump(config))
        with (root / "agent.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "meshagent.agent.cli", "run", "-c", str(running.config)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                wait_for(
                    lambda: (
                        http_get(f"http://127.0.0.1:{running.admin_port}/healthz").status == 200
                    ),
                    timeout=30,
                    what="agent up",
                )
                served = wait_for(lambda: sotw_secrets(running.uds), timeout=30, what="secret")
                running.key_pem = served[0].tls_certificate.private_key.inline_string
                yield running
            finally:
                proc.terminate()
                proc.wait(timeout=30)


def ads_first_response(target: str, request: Any, *, delta: bool) -> Any:
    """The first response of an ADS stream that sent `request`; the stream stays open till then."""
    done = threading.Event()

    def requests() -> Iterator[Any]:
        yield request
        done.wait(10)

    with grpc.insecure_channel(target) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        call = method(requests(), timeout=10)
        try:
            return next(call)
        finally:
            done.set()
            call.cancel()


def sotw_secrets(target: str) -> list[secret_pb2.Secret]:
    request = DiscoveryRequest(node=NODE, type_url=SECRET, resource_names=["default"])
    response = ads_first_response(target, request, delta=False)
    secrets = []
    for body in response.resources:
        secret = secret_pb2.Secret()
        body.Unpack(secret)
        secrets.append(secret)
    return secrets


def leaks(data: bytes | str, key_pem: str) -> list[str]:
    """What of the key shows in data: its PEM armour, its base64 body or a piece of it, its DER."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    raw = data if isinstance(data, bytes) else data.encode()
    body = "".join(line for line in key_pem.splitlines() if not line.startswith("-----"))
    found = [n for n in ("PRIVATE KEY", body, body[20:60]) if n in text]
    pem_b64 = base64.b64encode(key_pem.encode()).decode()
    found += ["base64 of the PEM"] if pem_b64[8:48] in text else []
    found += ["DER"] if base64.b64decode(body) in raw else []
    return found


def test_the_unix_socket_serves_the_key(agent: Agent) -> None:
    assert agent.key_pem.startswith("-----BEGIN") and "PRIVATE KEY" in agent.key_pem
    request = DeltaDiscoveryRequest(
        node=NODE, type_url=SECRET, resource_names_subscribe=["default"]
    )
    response = ads_first_response(agent.uds, request, delta=True)
    assert [r.name for r in response.resources] == ["default"]


def test_tcp_never_serves_the_key(agent: Agent) -> None:
    # Given someone on the host who knows the node id, over xds.tcp
    delta = ads_first_response(
        agent.tcp,
        DeltaDiscoveryRequest(node=NODE, type_url=SECRET, resource_names_subscribe=["default"]),
        delta=True,
    )
    sotw = ads_first_response(
        agent.tcp,
        DiscoveryRequest(node=NODE, type_url=SECRET, resource_names=["default"]),
        delta=False,
    )
    # Then the secret does not exist for them, and the refusal is logged
    assert len(delta.resources) == 0 and list(delta.removed_resources) == ["default"]
    assert len(sotw.resources) == 0
    for response in (delta, sotw):
        assert leaks(response.SerializeToString(), agent.key_pem) == []
    wait_for(lambda: "xds_type_withheld" in agent.log(), what="the refusal in the log")


def test_csds_shows_no_key_on_either_listener(agent: Agent) -> None:
    for target in (agent.uds, agent.tcp):
        with grpc.insecure_channel(target) as channel:
            stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
            reply = stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=10)
        data = reply.SerializeToString()
        assert b"[redacted]" in data and leaks(data, agent.key_pem) == []


def test_debug_pages_show_no_key(agent: Agent) -> None:
    status, resources = admin_request(agent.socket, "/debug/resources")
    assert status == 200 and b'"default"' in resources and b"[redacted]" in resources
    assert leaks(resources, agent.key_pem) == []
    for path in ("/", "/debug/status", "/debug/config_errors", "/debug/analyze"):
        status, body = admin_request(agent.socket, path)
        assert status == 200 and leaks(body, agent.key_pem) == [], path
    # The TCP port serves none of it to every local user.
    tcp = http_get(f"http://127.0.0.1:{agent.admin_port}/debug/resources")
    assert tcp.status == 403 and "admin.sock" in tcp.body


def test_proxy_config_secrets_shows_no_key(agent: Agent) -> None:
    for output in ("short", "json", "yaml"):
        result = subprocess.run(
            [sys.executable, "-m", "meshagent.agent.cli", "proxy-config", "secrets",
             "-c", str(agent.config), "-o", output],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "default" in result.stdout and leaks(result.stdout, agent.key_pem) == []


def test_the_debug_log_shows_no_key(agent: Agent) -> None:
    log = agent.log()
    assert '"xds_pushed"' in log  # debug lines were written
    assert leaks(log, agent.key_pem) == []
