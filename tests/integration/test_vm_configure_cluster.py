"""`meshagent vm configure --config AGENT.yaml`: the mesh config and root certificate from the
cluster of the agent's Kubernetes source (the API simulator here), as istioctl reads them."""

from __future__ import annotations

from pathlib import Path

from meshagent.agent.cli import main
from meshagent.testing.kube_sim import KubeSim


def test_mesh_config_and_root_cert_come_from_the_cluster(tmp_path: Path) -> None:
    group = tmp_path / "wg.yaml"
    group.write_text("kind: WorkloadGroup\nmetadata: {name: foo, namespace: bar}\n")
    (tmp_path / "token").write_text("tok")
    with KubeSim() as sim:
        (tmp_path / "kube-token").write_text(sim.token or "")
        for ns, name, data in (
            ("istio-system", "istio-rev-1", {"mesh": "trustDomain: example.org\n"}),
            ("bar", "istio-ca-root-cert", {"root-cert.pem": "ROOT"}),
        ):
            sim.apply(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "data": data,
                    "metadata": {"name": name, "namespace": ns},
                }
            )
        (tmp_path / "agent.yaml").write_text(
            f"sources:\n  files: null\n  kubernetes: {{server: '{sim.url}', "
            f"token_file: {tmp_path / 'kube-token'}}}\n"
        )
        argv = ["vm", "configure", "-f", str(group), "-o", str(tmp_path / "out"), "--revision"]
        argv += ["rev-1", "--config", str(tmp_path / "agent.yaml")]
        argv += ["--token-file", str(tmp_path / "token")]
        assert main(argv) == 0
    assert (tmp_path / "out" / "root-cert.pem").read_bytes() == b"ROOT"
    assert b"TRUST_DOMAIN='example.org'" in (tmp_path / "out" / "cluster.env").read_bytes()
    assert (tmp_path / "out" / "istio-token").read_bytes() == b"tok"
