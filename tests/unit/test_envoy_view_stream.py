"""Envoy's /clusters read in steps (agent/envoyview.fetch_cluster_health) and the status page
that uses it: the same result as parsing the document whole, without stalling the event loop."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from meshagent.agent import envoyview
from meshagent.agent.admin import Request
from meshagent.agent.opspages import EnvoyViewCache, status_page
from meshagent.errors import MeshAgentError
from tests.unit.test_envoy_view import clusters_doc, host
from tests.unit.test_ops_surface import report


def trickle(text: str, size: int) -> Callable[[int], bytes]:
    """A read(n) that hands out at most size bytes at a time (chunks cut anywhere, also
    inside a UTF-8 character)."""
    stream = io.BytesIO(text.encode())
    return lambda n: stream.read(min(n, size))


def big_doc(clusters: int) -> dict[str, Any]:
    return {"cluster_statuses": [
        {"name": f"outbound|80||s{i}.ns.svc.cluster.local", "added_via_api": True,
         "host_statuses": [host(f"10.{i // 250}.{i % 250}.{j}", 80, rq_success=j, rq_total=j)
                           for j in range(10)]}
        for i in range(clusters)]}  # fmt: skip


@pytest.mark.parametrize("size", [1, 2, 7, 4096])
@pytest.mark.parametrize("indent", [None, 2])
def test_stepwise_parse_equals_the_whole_document(size: int, indent: int | None) -> None:
    doc = {"first": [1, {"x": "y"}], **clusters_doc(), "last": 12345}
    doc["cluster_statuses"][0]["name"] = "outbound|80||ünïcode-€.ns"  # cut inside characters
    text = json.dumps(doc, indent=indent, ensure_ascii=False)
    items = list(envoyview.json_array_items(trickle(text, size), "cluster_statuses"))
    assert items == doc["cluster_statuses"]
    assert [envoyview.cluster_status(s) for s in items] == envoyview.cluster_health(doc)


@pytest.mark.parametrize("text", ['{"cluster_statuses": []}', "{}", ' {\n"other": 1.5e3 }\n'])
def test_stepwise_parse_of_documents_without_clusters(text: str) -> None:
    assert list(envoyview.json_array_items(trickle(text, 3), "cluster_statuses")) == []


@pytest.mark.parametrize(
    "text",
    ["", "[]", '{"cluster_statuses": [{"a": 1}', '{"cluster_statuses": [1 2]}', "{} x",
     '{"cluster_statuses": [], }', "<html>upstream connect error</html>", '{1: 2}'],
)  # fmt: skip
def test_stepwise_parse_refuses_what_is_not_json(text: str) -> None:
    with pytest.raises(ValueError):
        list(envoyview.json_array_items(trickle(text, 4), "cluster_statuses"))


@pytest.fixture
def envoy_admin() -> Iterator[tuple[SimpleNamespace, dict[str, bytes]]]:
    """A loopback stand-in for Envoy's admin: bodies[path without query] -> body."""
    bodies: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies.get(self.path.partition("?")[0])
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield SimpleNamespace(admin_address="127.0.0.1", admin_port=server.server_address[1]), bodies
    server.shutdown()
    server.server_close()


def test_fetch_reports_a_body_that_is_not_json_in_one_line(envoy_admin: Any) -> None:
    envoy, bodies = envoy_admin
    bodies["/clusters"] = b'{"cluster_statuses": [{"name": "a"'
    with pytest.raises(MeshAgentError, match=r"/clusters\?format=json: not JSON"):
        envoyview.fetch_cluster_health(envoy)
    bodies["/clusters"] = json.dumps(clusters_doc()).encode()
    assert envoyview.fetch_cluster_health(envoy) == envoyview.cluster_health(clusters_doc())


async def test_the_status_page_does_not_stall_the_event_loop(envoy_admin: Any) -> None:
    # given an Envoy with 3000 clusters of 10 hosts (~20 MB of /clusters JSON)
    envoy, bodies = envoy_admin
    bodies["/clusters"] = json.dumps(big_doc(3000), indent=1).encode()
    bodies["/server_info"] = b'{"version": "x/1.40.0/Clean", "state": "LIVE"}'
    agent = SimpleNamespace(config=SimpleNamespace(envoy=envoy), snapshot=None,
                            status_report=lambda mesh=True: report())  # fmt: skip
    # when the page is viewed twice, the second time after the kept view expired, then no
    # wait of the loop is a large part of the views (parsed whole, one json.loads held it
    # for about half of each view). Best of three rounds: the machine's own scheduling
    # hiccups come and go, a parse that holds the loop is there every time.
    rounds = [await _stall_during_views(agent) for _ in range(3)]
    assert min(stall / elapsed for stall, elapsed in rounds) < 0.1, rounds


async def _stall_during_views(agent: Any) -> tuple[float, float]:
    """(the longest the loop waited, how long the views took), in seconds."""
    cache = EnvoyViewCache()

    async def views() -> None:
        for _ in range(2):
            cache.invalidate()
            page = await status_page(agent, Request("GET", "/?refresh=0", {}), cache)
            assert page.status == 200 and b"clusters 1-50 of 3000" in page.body

    return await _stall_during(views)


def _snapshot(services: int) -> Any:
    from meshagent.model import Provenance, RawResource, SourceEvent
    from meshagent.normalize import Normalizer

    raws = []
    for i in range(services):
        body = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": {"name": f"s{i}", "namespace": "ns"},
                "spec": {"hosts": [f"s{i}.example.com"], "resolution": "STATIC",
                         "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                         "endpoints": [{"address": f"10.{i // 250}.{i % 250}.{j}"}
                                       for j in range(10)]}}  # fmt: skip
        prov = Provenance("t", f"t:{i}", "ServiceEntry", "ns", f"s{i}")
        raws.append(RawResource("t", "ServiceEntry", body["apiVersion"], "ns", f"s{i}", body, prov))
    return Normalizer().apply([SourceEvent("t", upserts=tuple(raws))])[0]


async def test_debug_status_does_not_stall_the_event_loop() -> None:
    # given an agent whose mesh has 2000 services of 10 endpoints (20k endpoints in the JSON)
    from meshagent.agent.opspages import install_ops_pages
    from meshagent.agent.statuspage import mesh_report

    snapshot = _snapshot(2000)

    def status_report(mesh: bool = True) -> dict[str, Any]:
        return {**report(), "mesh": mesh_report(snapshot) if mesh else None}

    agent = SimpleNamespace(config=None, snapshot=snapshot, status_report=status_report)
    admin = SimpleNamespace(pages={}, request_pages={}, actions={})
    install_ops_pages(admin, agent)  # type: ignore[arg-type]

    async def views() -> None:
        for _ in range(2):
            answer = admin.pages["/debug/status"]()
            response = await answer if asyncio.iscoroutine(answer) else answer
            assert json.loads(response.body)["mesh"]["services"][1999]["host"] == (
                "s999.example.com"  # sorted by host
            )

    # when it is asked twice, then no wait of the loop is a large part of it (built and
    # encoded on the loop, the loop waited the whole time). Best of three, as above.
    rounds = [await _stall_during(views) for _ in range(3)]
    assert min(stall / elapsed for stall, elapsed in rounds) < 0.25, rounds


async def _stall_during(work: Callable[[], Any]) -> tuple[float, float]:
    """(the longest the loop waited while work ran, how long work took), in seconds."""
    lateness: list[float] = [0.0]
    done = False

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not done:
            start = loop.time()
            await asyncio.sleep(0.001)
            lateness.append(loop.time() - start - 0.001)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)  # the ticker is waiting when work starts (work may never yield)
    start = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - start
    await asyncio.sleep(0.01)  # and sees how late it is after it
    done = True
    await tick
    return max(lateness), elapsed
