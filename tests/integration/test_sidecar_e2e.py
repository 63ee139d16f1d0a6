"""Sidecar end to end: files -> agent -> real Envoy -> demo apps.

- `egress.hosts: ["./*"]` leaves Envoy with only its namespace's outbound clusters (counted in
  its config dump), which it still reaches, while a service of another namespace is not.
- An ingress listener forwards to its defaultEndpoint.
- Under capture, a destination outside the registry goes to the Sidecar's egressProxy
  (ALLOW_ANY), or nowhere (REGISTRY_ONLY).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from tests.integration.mesh_harness import MeshHarness, mesh_harness, wait_until
from tests.net_helpers import free_port

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

WEB = "web.default.svc.cluster.local"
API = "api.default.svc.cluster.local"
FAR = "far.other.svc.cluster.local"
SQUID = "squid.infra.svc.cluster.local"
FILLERS = 20  # services of another namespace, without endpoints: clusters to scope away


def _entry(host: str, ns: str, port: int, app_port: int | None, protocol: str = "HTTP") -> str:
    endpoints = f"[{{address: 127.0.0.1, ports: {{p: {app_port}}}}}]" if app_port else "[]"
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host.split(".")[0]}, namespace: {ns}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: p, protocol: {protocol}}}]
  endpoints: {endpoints}
---
"""


def _services(h: MeshHarness) -> str:
    out = _entry(WEB, "default", 8080, h.apps["web"].port)
    out += _entry(API, "default", 8080, h.apps["api"].port)
    out += _entry(FAR, "other", 8080, h.apps["far"].port)
    out += "".join(
        _entry(f"filler{i}.other.svc.cluster.local", "other", 8080, None) for i in range(FILLERS)
    )
    return out


def _outbound_clusters(h: MeshHarness) -> set[str]:
    dump = json.loads(h.envoy_admin("/config_dump?resource=dynamic_active_clusters").body)
    names = {c["cluster"]["name"] for c in dump.get("configs", [])}
    return {n for n in names if n.startswith("outbound|")}


def _served_by(h: MeshHarness, host: str) -> str:
    reply = h.request(host)
    return reply.headers.get("x-served-by", str(reply.status))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshHarness]:
    ingress_port = free_port()
    with mesh_harness(
        tmp_path_factory.mktemp("sidecar"),
        inbound={"address": "127.0.0.1"},
        workloads=[{"name": "web", "namespace": "default", "ports": []}],
    ) as harness:
        harness.ingress_port = ingress_port  # type: ignore[attr-defined]
        for key in ("web", "api", "far"):
            harness.start_app(key, key, "v1")
        harness.apply(_services(harness))
        harness.start_agent()
        harness.start_envoy()
        wait_until(lambda: _served_by(harness, FAR) == "far-v1", what="far before the Sidecar")
        yield harness


def test_dot_star_keeps_only_the_namespaces_clusters_and_they_still_work(
    mesh: MeshHarness,
) -> None:
    # given the whole mesh: every service's cluster, and FAR reachable
    assert len(_outbound_clusters(mesh)) == 3 + FILLERS
    # when a Sidecar in the proxy's namespace imports only that namespace
    port = mesh.ingress_port  # type: ignore[attr-defined]
    sidecar = f"""\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  egress:
  - hosts: ["./*"]
  ingress:
  - port: {{number: {port}, protocol: HTTP, name: http-in}}
    defaultEndpoint: 127.0.0.1:{mesh.apps["web"].port}
"""
    mesh.apply(_services(mesh) + sidecar)
    expected = {f"outbound|8080||{WEB}", f"outbound|8080||{API}"}
    wait_until(lambda: _outbound_clusters(mesh) == expected, what="only default's clusters")
    # then its own services still answer, over real traffic
    assert _served_by(mesh, WEB) == "web-v1"
    assert _served_by(mesh, API) == "api-v1"
    # and the service outside the scope is not reachable: no route for its host
    seen = len(mesh.apps["far"].request_paths())
    assert mesh.request(FAR).status == 404
    assert len(mesh.apps["far"].request_paths()) == seen
    # and the ingress listener forwards to its defaultEndpoint
    wait_until(lambda: _get(port, "/in").headers.get("x-served-by") == "web-v1", what="ingress")


def _get(port: int, path: str, host: str = "anything") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"host": host})
        response = conn.getresponse()
        response.read()
        return response
    finally:
        conn.close()


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshHarness]:
    outbound = free_port()
    with mesh_harness(
        tmp_path_factory.mktemp("sidecar-capture"),
        capture={"enabled": True, "outbound_port": outbound, "inbound_port": free_port()},
    ) as harness:
        harness.virtual_outbound = outbound  # type: ignore[attr-defined]
        harness.start_app("squid", "squid", "v1")
        harness.apply(_egress_mesh(harness, "ALLOW_ANY"))
        harness.start_agent()
        harness.start_envoy()
        yield harness


def _egress_mesh(h: MeshHarness, mode: str) -> str:
    proxy = (
        f", egressProxy: {{host: {SQUID}, port: {{number: 3128}}}}" if mode == "ALLOW_ANY" else ""
    )
    return _entry(SQUID, "infra", 3128, h.apps["squid"].port, "TCP") + (
        f"""\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  egress:
  - hosts: ["./*"]
  outboundTrafficPolicy: {{mode: {mode}{proxy}}}
"""
    )


def _unknown_destination(h: MeshHarness) -> str:
    """What answers a connection that reaches virtualOutbound for no known destination (here
    the connection goes to the listener itself: without netfilter its original destination is
    the listener's own address, which no chain claims)."""
    try:
        reply = _get(h.virtual_outbound, "/", host="unknown.example.com")  # type: ignore[attr-defined]
    except (ConnectionError, http.client.HTTPException) as error:
        return type(error).__name__
    return reply.headers.get("x-served-by", str(reply.status))


def test_unknown_destinations_go_to_the_egress_proxy_or_nowhere(captured: MeshHarness) -> None:
    # given ALLOW_ANY with an egressProxy: the unknown destination reaches the proxy
    wait_until(lambda: _unknown_destination(captured) == "squid-v1", what="via the egress proxy")
    # when the Sidecar says REGISTRY_ONLY
    captured.apply(_egress_mesh(captured, "REGISTRY_ONLY"))
    # then the connection goes nowhere (BlackHoleCluster), and the proxy sees nothing more
    wait_until(lambda: _unknown_destination(captured) != "squid-v1", what="blackholed")
    seen = len(captured.apps["squid"].request_paths())
    assert _unknown_destination(captured) != "squid-v1"
    assert len(captured.apps["squid"].request_paths()) == seen
