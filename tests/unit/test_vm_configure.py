"""`meshagent vm configure`: byte-for-byte equal to istioctl's goldens, and its building blocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.agent.cli import main
from meshagent.errors import ConfigError
from meshagent.onboard import goyaml
from meshagent.onboard.vmconfig import VmInputs, render, shell_quote

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "istio" / "vm" / "vmconfig"
GROUP = {
    "kind": "WorkloadGroup",
    "metadata": {"name": "ratings", "namespace": "vm"},
    "spec": {
        "metadata": {"labels": {"app": "ratings", "version": "v2"}},
        "template": {"ports": {"http": 9080, "grpc": 9090}, "network": "vm-net"},
    },
}


@pytest.mark.skipif(not (CORPUS / "ipv4").is_dir(), reason="../shared/corpus is absent")
def test_ipv4_goldens_byte_for_byte(tmp_path: Path) -> None:
    given = CORPUS / "ipv4"
    (tmp_path / "root.pem").write_bytes(b"fake-CA-cert")
    (tmp_path / "token").write_bytes(b"")
    out = tmp_path / "out"
    argv = ["vm", "configure", "-f", str(given / "workloadgroup.yaml"), "-o", str(out)]
    argv += ["--mesh-config", str(given / "meshconfig.yaml"), "--cluster-id", "Kubernetes"]
    argv += ["--root-cert", str(tmp_path / "root.pem"), "--token-file", str(tmp_path / "token")]
    argv += ["--internal-ip", "10.10.10.10", "--ingress-ip", "10.10.10.11", "--revision", "rev-1"]

    assert main(argv) == 0

    for name in ("cluster.env", "mesh.yaml", "root-cert.pem", "istio-token", "hosts"):
        golden = (given / f"{name}.golden").read_bytes()
        assert (out / name).read_bytes() == golden, name


def test_ports_network_and_labels_reach_both_files() -> None:
    files = render(VmInputs(workload_group=GROUP, mesh_config={"trustDomain": "example.org"}))
    env = files["cluster.env"].decode()
    assert "ISTIO_INBOUND_PORTS='9090,9080'" in env  # sorted by port name: grpc, http
    assert "ISTIO_META_NETWORK='vm-net'" in env
    assert "TRUST_DOMAIN='example.org'" in env
    assert "CANONICAL_SERVICE='ratings'\nCANONICAL_REVISION" not in env  # sorted lines
    assert "CANONICAL_REVISION='v2'" in env
    assert "CA_ADDR" not in env  # not revisioned: the agent uses discoveryAddress
    mesh = files["mesh.yaml"].decode()
    assert 'ISTIO_META_POD_PORTS: \'[{"containerPort":9090,"name":"grpc"}' in mesh
    assert files["hosts"] == b""  # no ingress IP


def test_a_group_without_namespace_is_a_located_error() -> None:
    with pytest.raises(ConfigError, match="is required") as info:
        render(VmInputs(workload_group={"metadata": {"name": "x"}}, mesh_config={}))
    assert info.value.field == "metadata.namespace"


def test_internal_and_external_ip_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="mutually exclusive"):
        render(VmInputs(GROUP, {}, internal_ip="10.0.0.1", external_ip="1.2.3.4"))


def test_go_yaml_key_order_and_quoting() -> None:
    text = goyaml.dump({"a": {"X_METAJSON": "{}", "X_META_B": "true", "X_2": "", "X_10": 5}})
    assert text == 'a:\n  X_2: ""\n  X_10: 5\n  X_META_B: "true"\n  X_METAJSON: \'{}\'\n'


def test_shell_quote_follows_istio() -> None:
    assert shell_quote("") == "''"
    assert shell_quote("latest") == "'latest'"
    assert shell_quote("it's") == "'it'\"'\"'s'"
