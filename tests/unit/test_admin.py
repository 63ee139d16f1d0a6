"""The admin HTTP server over a real loopback socket."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshagent.agent.admin import AdminServer, Response, standard_pages
from meshagent.agent.metrics import AgentMetrics, MetricsObserver
from meshagent.model.source import Diagnostic


class State:
    def __init__(self) -> None:
        self.reasons: list[str] = ["source files has not synced"]
        self.metrics = AgentMetrics()
        self.errors = [
            Diagnostic("error", "files", "a.yaml:3", "VirtualService", "r", "spec", "bad")
        ]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[AdminServer, State]]:
    state = State()
    pages = standard_pages(
        ready_reasons=lambda: state.reasons,
        metrics=state.metrics.exposition,
        config_errors=lambda: [str(d) for d in state.errors],
    )
    pages["/boom"] = lambda: 1 / 0  # type: ignore[assignment,return-value]
    server = AdminServer("127.0.0.1", 0, pages, socket_path=tmp_path / "admin.sock")
    await server.start()
    yield server, state
    await server.stop()


async def request(port: int | Path, raw: bytes) -> tuple[int, bytes]:
    """raw to the TCP port, or to the Unix socket at a path; (status, body)."""
    connect = (
        asyncio.open_unix_connection(port)
        if isinstance(port, Path)
        else asyncio.open_connection("127.0.0.1", port)
    )
    reader, writer = await asyncio.wait_for(connect, 5)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def get(port: int | Path, path: str) -> tuple[int, bytes]:
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def test_port_zero_binds_a_free_port(served: tuple[AdminServer, State]) -> None:
    server, _ = served
    assert server.port > 0


async def test_healthz(served: tuple[AdminServer, State]) -> None:
    assert await get(served[0].port, "/healthz") == (200, b"ok\n")


async def test_readyz_lists_reasons_then_turns_ready(served: tuple[AdminServer, State]) -> None:
    server, state = served
    assert await get(server.port, "/readyz") == (503, b"source files has not synced\n")
    state.reasons = []
    assert await get(server.port, "/readyz") == (200, b"ready\n")


async def test_metrics_exposition(served: tuple[AdminServer, State]) -> None:
    server, state = served
    observer = MetricsObserver(state.metrics)
    observer.pushed("vm-1", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "1", 3, 0, 120)
    observer.nacked("vm-1", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "1", "bad")

    status, body = await get(server.port, "/metrics")

    assert status == 200
    assert b'meshagent_xds_pushes_total{type="cds"} 1.0' in body
    assert b'meshagent_xds_push_bytes_total{type="cds"} 120.0' in body
    assert b'meshagent_xds_nacks_total{type="cds"} 1.0' in body


async def test_config_errors_as_json(served: tuple[AdminServer, State]) -> None:
    assert served[0].socket_path is not None
    status, body = await get(served[0].socket_path, "/debug/config_errors?x=1")
    assert status == 200
    assert json.loads(body) == ["a.yaml:3: VirtualService/r: spec: bad"]


async def test_tcp_serves_only_health_readiness_and_metrics(
    served: tuple[AdminServer, State],
) -> None:
    # Given an admin server with debug pages and an action
    server, _ = served
    server.actions["/reload"] = lambda _: Response.text(202, "reloading\n")
    assert server.socket_path is not None
    # Then TCP refuses them with a pointer to the socket, and the socket serves them
    status, body = await get(server.port, "/debug/config_errors")
    assert status == 403 and str(server.socket_path).encode() in body
    post = b"POST /reload HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    assert (await request(server.port, post))[0] == 403
    assert (await request(server.socket_path, post))[0] == 202
    assert (await get(server.port, "/nope"))[0] == 404
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await get(server.port, path))[0] in (200, 503)
    # And the socket admits the owner and the group only
    assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o660


async def test_the_socket_file_is_removed_on_stop(tmp_path: Path) -> None:
    server = AdminServer("127.0.0.1", 0, {}, socket_path=tmp_path / "admin.sock")
    await server.start()
    assert (tmp_path / "admin.sock").is_socket()
    await server.stop()
    assert not (tmp_path / "admin.sock").exists()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET nothing HTTP/1.1\r\n\r\n", 400),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"GET /boom HTTP/1.1\r\n\r\n", 500),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"\xff\xfe /x HTTP/1.1\r\n\r\n", 400),
    ],
)
async def test_bad_requests_are_answered_and_server_survives(
    served: tuple[AdminServer, State], raw: bytes, status: int
) -> None:
    server, _ = served
    assert server.socket_path is not None
    assert (await request(server.socket_path, raw))[0] == status
    assert await get(server.port, "/healthz") == (200, b"ok\n")


async def test_client_that_hangs_up_does_not_hurt(served: tuple[AdminServer, State]) -> None:
    server, _ = served
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /hea")
    writer.close()
    assert await get(server.port, "/healthz") == (200, b"ok\n")


def test_response_json_content_type() -> None:
    assert Response.json(200, {"a": 1}).content_type == "application/json"
