"""The ADS server against a real Envoy: delta and SotW, Unix socket and TCP, NACKs, restarts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from meshagent.errors import ConfigError
from meshagent.xds.bootstrap import build_bootstrap
from meshagent.xds.cache import SnapshotCache
from meshagent.xds.resources import ResourceSet
from meshagent.xds.server import AdsServer
from meshagent.xds.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.envoy_helpers import EnvoyProcess
from tests.net_helpers import free_port, http_get
from tests.polling import async_wait_for
from tests.xds_builders import cla, eds_cluster, http_listener, resource_set, route_config

pytestmark = pytest.mark.envoy

NODE = "vm-test"
ALL_TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"upstream ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def upstream_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


@dataclass
class Recorder:
    """An XdsObserver that keeps everything it is told."""

    pushes: list[tuple[str, str]] = field(default_factory=list)
    counts: list[tuple[str, int]] = field(default_factory=list)  # (type, resources) per push
    acks: list[tuple[str, str]] = field(default_factory=list)
    nacks: list[tuple[str, str, str]] = field(default_factory=list)
    connects: int = 0
    connected_at: list[float] = field(default_factory=list)  # time.monotonic() of each

    def connected(self, node_id: str, stream: str) -> None:
        self.connects += 1
        self.connected_at.append(time.monotonic())

    def disconnected(self, node_id: str, stream: str) -> None:
        pass

    def pushed(
        self, node_id: str, type_url: str, version: str, resources: int, removed: int, nbytes: int
    ) -> None:
        self.pushes.append((type_url, version))
        self.counts.append((type_url, resources))

    def acked(self, node_id: str, type_url: str, version: str, latency_s: float) -> None:
        assert latency_s >= 0
        self.acks.append((type_url, version))

    def nacked(self, node_id: str, type_url: str, version: str, error: str) -> None:
        self.nacks.append((type_url, version, error))


def snapshot(
    listen: int, upstream: int, body: str = "hello", timeout_ms: int = 1000
) -> ResourceSet:
    return resource_set(
        clusters=[eds_cluster("backend", timeout_ms=timeout_ms)],
        endpoints=[cla("backend", upstream)],
        listeners=[http_listener("http", listen, "local")],
        routes=[route_config("local", body, upstream="backend")],
    )


@dataclass
class Mesh:
    """One cache + ADS server + Envoy, and the port Envoy's listener serves on."""

    cache: SnapshotCache
    server: AdsServer
    envoy: EnvoyProcess
    recorder: Recorder
    listen: int
    upstream: int
    socket: str

    async def get(self, path: str = "/") -> tuple[int, str]:
        reply = await asyncio.to_thread(http_get, f"http://127.0.0.1:{self.listen}{path}")
        return reply.status, reply.body

    async def wait_body(self, body: str, path: str = "/") -> None:
        url = f"http://127.0.0.1:{self.listen}{path}"
        await async_wait_for(
            lambda: http_get(url).body == body,
            blocking=True,
            timeout=30,
            what=f"{path} answering {body!r}",
        )

    async def wait_acked(self) -> None:
        await async_wait_for(
            lambda: self.cache.status(NODE).acked_all(ALL_TYPES), timeout=30, what="all ACKed"
        )


@pytest.fixture
async def mesh(
    request: pytest.FixtureRequest, tmp_path: Path, upstream_port: int
) -> AsyncIterator[Mesh]:
    delta = getattr(request, "param", "delta") == "delta"
    cache, recorder = SnapshotCache(), Recorder()
    listen = free_port()
    cache.set(NODE, snapshot(listen, upstream_port))
    server = AdsServer(cache, recorder)
    sock = str(tmp_path / "xds.sock")
    await server.start(uds_path=sock)
    bootstrap = build_bootstrap(
        node_id=NODE, cluster="test", xds_uds_path=sock, admin_port=0, delta=delta
    )
    envoy = EnvoyProcess(bootstrap, tmp_path)
    await asyncio.to_thread(envoy.start)
    mesh = Mesh(cache, server, envoy, recorder, listen, upstream_port, sock)
    try:
        yield mesh
    finally:
        await asyncio.to_thread(envoy.stop)
        await mesh.server.stop(0)  # a test may have replaced the server


@pytest.mark.parametrize("mesh", ["delta", "sotw"], indirect=True)
async def test_envoy_is_configured_acks_and_follows_changes(mesh: Mesh) -> None:
    await mesh.wait_body("hello")
    await mesh.wait_body("upstream ok", "/up")
    await mesh.wait_acked()

    # A cluster update and a route change together: the cluster must warm again (its CLA is
    # resent after CDS), and the route must switch.
    mesh.cache.set(NODE, snapshot(mesh.listen, mesh.upstream, "hello again", timeout_ms=2000))

    await mesh.wait_body("hello again")
    await mesh.wait_acked()
    async with grpc.aio.insecure_channel(f"unix:{mesh.socket}") as channel:
        csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        reply = await csds.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=10)
    [client] = reply.config
    assert client.node.id == NODE
    assert {(c.type_url, c.config_status) for c in client.generic_xds_configs} == {
        (t, csds_pb2.SYNCED) for t in ALL_TYPES
    }
    dump = await asyncio.to_thread(mesh.envoy.config_dump, "dynamic_warming_clusters")
    assert dump.get("configs", []) == []
    assert await mesh.get("/up") == (200, "upstream ok")


def two_backends(listen: int, backend: int, spare: int) -> ResourceSet:
    return resource_set(
        clusters=[eds_cluster("backend"), eds_cluster("spare")],
        endpoints=[cla("backend", backend), cla("spare", spare)],
        listeners=[http_listener("http", listen, "local")],
        routes=[route_config("local", "hello", upstream="backend")],
    )


@pytest.mark.parametrize("mesh", ["delta", "sotw"], indirect=True)
async def test_an_endpoint_change_pushes_its_cla_alone_and_envoy_follows(mesh: Mesh) -> None:
    """One endpoint change: one EDS response with the one ClusterLoadAssignment, in SotW too
    (not every requested one), no CDS/LDS/RDS; Envoy serves the moved endpoint."""
    mesh.cache.set(NODE, two_backends(mesh.listen, mesh.upstream, mesh.upstream))
    await async_wait_for(  # Envoy holds both clusters' endpoints, and answered every push
        lambda: (
            "spare::127.0.0.1" in mesh.envoy.clusters()
            and mesh.cache.status(NODE).acked_all(ALL_TYPES)
        ),
        blocking=True,
        timeout=30,
        what="both clusters with their endpoints, all ACKed",
    )
    before = len(mesh.recorder.counts)

    mesh.cache.set(NODE, two_backends(mesh.listen, free_port(), mesh.upstream))  # nobody there
    await async_wait_for(
        lambda: http_get(f"http://127.0.0.1:{mesh.listen}/up").status == 503,
        blocking=True,
        timeout=30,
        what="/up failing on the moved endpoint",
    )
    mesh.cache.set(NODE, two_backends(mesh.listen, mesh.upstream, mesh.upstream))
    await mesh.wait_body("upstream ok", "/up")
    await mesh.wait_acked()
    assert mesh.recorder.counts[before:] == [(ENDPOINT, 1), (ENDPOINT, 1)]
    assert mesh.recorder.nacks == []


@pytest.mark.parametrize("mesh", ["delta", "sotw"], indirect=True)
async def test_a_rejected_cluster_is_recorded_not_resent_then_fixed(mesh: Mesh) -> None:
    await mesh.wait_body("hello")
    await mesh.wait_acked()

    mesh.cache.set(NODE, snapshot(mesh.listen, mesh.upstream, timeout_ms=-1000))
    status = await async_wait_for(
        lambda: mesh.cache.status(NODE).of(CLUSTER).last_nack_error, timeout=30, what="CDS NACK"
    )
    cds_pushes = [p for p in mesh.recorder.pushes if p[0] == CLUSTER]
    assert status is not None
    assert "Expected positive duration" in status  # Envoy's own words
    assert mesh.recorder.nacks[-1][0] == CLUSTER

    # Another change elsewhere goes through; the rejected cluster is not pushed again.
    mesh.cache.set(NODE, snapshot(mesh.listen, mesh.upstream, "still here", timeout_ms=-1000))
    await mesh.wait_body("still here")
    assert [p for p in mesh.recorder.pushes if p[0] == CLUSTER] == cds_pushes

    # A valid cluster is accepted.
    mesh.cache.set(NODE, snapshot(mesh.listen, mesh.upstream, "fixed", timeout_ms=500))
    await mesh.wait_body("fixed")
    await mesh.wait_acked()
    assert await mesh.get("/up") == (200, "upstream ok")


async def test_restarting_the_agent_keeps_traffic_and_envoy_reconnects(mesh: Mesh) -> None:
    await mesh.wait_body("hello")
    await mesh.wait_acked()
    await mesh.server.stop(0)
    await async_wait_for(
        lambda: not mesh.cache.status(NODE).connected, timeout=10, what="stream closed"
    )

    # Envoy keeps its last configuration while the agent is gone.
    assert await mesh.get("/") == (200, "hello")
    assert await mesh.get("/up") == (200, "upstream ok")

    cache = SnapshotCache()
    cache.set(NODE, snapshot(mesh.listen, mesh.upstream))
    mesh.cache, mesh.server = cache, AdsServer(cache, mesh.recorder)
    await mesh.server.start(uds_path=mesh.socket)  # the old socket file is removed first

    await async_wait_for(lambda: cache.status(NODE).connected, timeout=30, what="reconnect")
    await mesh.wait_acked()
    assert await mesh.get("/") == (200, "hello")


OUTAGE_S = 6.0  # long enough for Envoy's default backoff to have grown to several seconds
RECONNECT_BOUND_S = 2.0  # the bootstrap's 1 s cap, plus slack for a loaded machine


async def test_envoy_is_back_within_about_a_second_of_the_agents_return(mesh: Mesh) -> None:
    """With Envoy's default ADS backoff (0.5 s growing to 30 s, jittered) a 6 s outage is
    typically followed by several seconds without a stream; the bootstrap caps it at 1 s."""
    await mesh.wait_body("hello")
    await mesh.wait_acked()
    await mesh.server.stop(0)
    await async_wait_for(
        lambda: not mesh.cache.status(NODE).connected, timeout=10, what="stream closed"
    )
    await asyncio.sleep(OUTAGE_S)  # the outage itself: Envoy redials and fails meanwhile

    cache = SnapshotCache()
    cache.set(NODE, snapshot(mesh.listen, mesh.upstream, "after the outage"))
    mesh.cache, mesh.server = cache, AdsServer(cache, mesh.recorder)
    connects = mesh.recorder.connects
    back = time.monotonic()
    await mesh.server.start(uds_path=mesh.socket)
    await async_wait_for(lambda: mesh.recorder.connects > connects, timeout=30, what="reconnect")
    reconnect_s = mesh.recorder.connected_at[connects] - back
    print(f"envoy reconnected {reconnect_s:.3f}s after the agent's return")
    assert reconnect_s < RECONNECT_BOUND_S
    await mesh.wait_body("after the outage")


async def test_tcp_transport(tmp_path: Path, upstream_port: int) -> None:
    cache, listen = SnapshotCache(), free_port()
    cache.set(NODE, snapshot(listen, upstream_port, "over tcp"))
    server = AdsServer(cache)
    await server.start(tcp_address="127.0.0.1:0")
    assert server.tcp_port
    bootstrap = build_bootstrap(
        node_id=NODE, cluster="test", xds_tcp=("127.0.0.1", server.tcp_port), admin_port=0
    )
    try:
        with EnvoyProcess(bootstrap, tmp_path) as envoy:
            url = f"http://127.0.0.1:{listen}/"
            await async_wait_for(
                lambda: http_get(url).body == "over tcp", blocking=True, what="tcp config"
            )
            await asyncio.to_thread(envoy.wait_live)
            assert cache.status(NODE).acked_all(ALL_TYPES)
            assert cache.status(NODE).stream == "delta"
    finally:
        await server.stop(0)


async def test_a_bad_request_ends_only_its_stream_with_invalid_argument(tmp_path: Path) -> None:
    cache = SnapshotCache()
    cache.set(NODE, resource_set(clusters=[eds_cluster("a")]))
    server = AdsServer(cache)
    sock = tmp_path / "xds.sock"
    await server.start(uds_path=str(sock))
    assert sock.stat().st_mode & 0o777 == 0o660
    try:
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            bad = stub.DeltaAggregatedResources()
            await bad.write(DeltaDiscoveryRequest(type_url=CLUSTER))  # no node
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(bad.read(), 10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "node.id" in (caught.value.details() or "")

            good = stub.DeltaAggregatedResources()
            await good.write(DeltaDiscoveryRequest(type_url=CLUSTER, node=base_pb2.Node(id=NODE)))
            response = await asyncio.wait_for(good.read(), 10)
            assert [r.name for r in response.resources] == ["a"]
            good.cancel()
    finally:
        await server.stop(0)


async def test_a_client_that_never_answers_does_not_stall_its_stream(tmp_path: Path) -> None:
    cache = SnapshotCache()
    cache.set(NODE, resource_set(clusters=[eds_cluster("a")]))
    server = AdsServer(cache)
    server.answer_timeout = 0.2
    sock = tmp_path / "xds.sock"
    await server.start(uds_path=str(sock))
    try:
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.DeltaAggregatedResources()
            await call.write(DeltaDiscoveryRequest(type_url=CLUSTER, node=base_pb2.Node(id=NODE)))
            first = await asyncio.wait_for(call.read(), 10)
            cache.set(NODE, resource_set(clusters=[eds_cluster("a", timeout_ms=5)]))
            # No ACK is ever sent; the change still arrives once the answer timeout passes.
            second = await asyncio.wait_for(call.read(), 10)
            assert (first.system_version_info, second.system_version_info) == ("1", "2")
            call.cancel()
    finally:
        await server.stop(0)


async def test_a_non_socket_file_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    with pytest.raises(ConfigError, match="not a socket"):
        await AdsServer(SnapshotCache()).start(uds_path=str(path))
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("delta", [True, False])
def test_envoy_accepts_the_bootstrap(tmp_path: Path, delta: bool) -> None:
    from tests.envoy_helpers import validate_bootstrap

    boot = build_bootstrap(
        node_id=NODE, cluster="test", xds_uds_path=str(tmp_path / "x.sock"), delta=delta
    )
    complaint = validate_bootstrap(boot, tmp_path / "bootstrap.json", log_level="info")
    assert complaint == "", complaint[-4000:]
