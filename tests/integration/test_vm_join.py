"""Joining a mesh from a join directory: a separate "mesh" CA (playing istiod, serving
CreateCertificate on loopback TLS) issues the VM's certificate with the istio-token; the VM
knows the mesh only through the files `meshagent vm configure` wrote."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshagent.agent.config import parse_config
from meshagent.agent.daemon import Agent
from meshagent.ca.authority import identity_of
from meshagent.ca.keys import load_certs_pem
from meshagent.errors import ConfigError
from meshagent.model.identity import Identity
from meshagent.onboard.vmconfig import VmInputs, render, write_files
from tests.ca_helpers import verify_chain
from tests.integration.mesh_ca import MESH_TD, MeshCa, mesh_ca_server

ISTIOD = "istiod-rev-1.istio-system.svc"
GROUP = {
    "kind": "WorkloadGroup",
    "metadata": {"name": "ratings", "namespace": "vmns"},
    "spec": {
        "metadata": {"labels": {"app": "ratings"}},
        "template": {"serviceAccount": "vm-sa", "ports": {"http": 9080}, "network": "vm-net"},
    },
}


@pytest.fixture
async def mesh_ca(tmp_path: Path) -> AsyncIterator[MeshCa]:
    # Its TLS certificate names istiod's revisioned host, which the VM finds through `hosts`.
    async with mesh_ca_server(tmp_path / "mesh-ca", names=(ISTIOD,)) as ca:
        yield ca


def join_dir(tmp_path: Path, ca: MeshCa, token: str) -> Path:
    """What `vm configure` writes, with istiod's port moved to the test server's port."""
    out = tmp_path / "join"
    inputs = VmInputs(
        workload_group=GROUP,
        mesh_config={"trustDomain": MESH_TD},
        root_cert=(ca.dir / "root-cert.pem").read_bytes(),
        token=token.encode(),
        revision="rev-1",
        internal_ip="127.0.0.5",
        ingress_ip="127.0.0.1",
    )
    write_files(render(inputs), out)
    env = out / "cluster.env"
    env.write_text(re.sub(r":15012'", f":{ca.port}'", env.read_text()))
    return out


def agent_config(tmp_path: Path, directory: Path) -> str:
    return (
        f"state_dir: {tmp_path / 'state'}\nsources: {{files: null}}\nadmin: {{port: 0}}\n"
        f"join: {{dir: {directory}}}\n"
    )


async def test_vm_gets_its_certificate_from_the_mesh_ca(tmp_path: Path, mesh_ca: MeshCa) -> None:
    # given: a join directory for vmns/vm-sa and an agent that only knows that directory
    directory = join_dir(tmp_path, mesh_ca, mesh_ca.token("vmns", "vm-sa"))
    config = parse_config(agent_config(tmp_path, directory), tmp_path / "agent.yaml")
    assert config.join is not None and config.ca is not None
    assert config.ca.upstream is not None and config.ca.upstream.server_name == ISTIOD
    assert config.node.namespace == "vmns" and config.join.info.network == "vm-net"

    # when: the agent starts
    agent = Agent(config, adapter_factory=lambda cfg: [])
    await agent.start()
    try:
        (cert,) = agent._proxy.certificates
    finally:
        await agent.stop()

    # then: the identity comes from cluster.env, the chain ends at root-cert.pem
    want = Identity(MESH_TD, "vmns", "vm-sa")
    assert cert.identity == want
    assert identity_of(load_certs_pem(cert.cert_chain_pem)[0]) == want
    assert want.spiffe_id == "spiffe://mesh.example/ns/vmns/sa/vm-sa"
    root = (directory / "root-cert.pem").read_text()
    verify_chain([cert.cert_chain_pem], root)
    assert root in cert.roots_pem
    (workload,) = config.workloads
    assert workload.labels == (
        ("app", "ratings"),
        ("service.istio.io/canonical-name", "ratings"),
        ("service.istio.io/canonical-revision", "latest"),
    )
    assert [(p.name, p.port) for p in workload.ports] == [("http", 9080)]


async def test_a_token_for_another_identity_is_refused(tmp_path: Path, mesh_ca: MeshCa) -> None:
    directory = join_dir(tmp_path, mesh_ca, mesh_ca.token("vmns", "someone-else"))
    config = parse_config(agent_config(tmp_path, directory), tmp_path / "agent.yaml")
    agent = Agent(config, adapter_factory=lambda cfg: [])
    await agent.start()  # keeps running; the certificate is retried with backoff
    try:
        assert agent._proxy.certificates == ()
        assert 'kind="workload",reason="issue_failed"} 1.0' in agent.metrics.exposition().decode()
    finally:
        await agent.stop()


def test_a_missing_join_file_is_a_located_error(tmp_path: Path) -> None:
    (tmp_path / "join").mkdir()
    with pytest.raises(ConfigError, match=r"join\.dir.*cluster\.env.*missing"):
        parse_config(agent_config(tmp_path, tmp_path / "join"), tmp_path / "agent.yaml")
