"""Every example under examples/ loads: agent configs validate, mesh files have no error, the VM
join walkthrough's commands run, and the Consul config entries load into the simulator and
convert without errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from meshagent.agent.cli import main
from meshagent.agent.config import join_from_dir, load_config
from meshagent.model.source import Provenance, RawResource, SourceEvent
from meshagent.normalize.consul import ConsulMapping, convert_consul
from meshagent.normalize.normalizer import Normalizer
from meshagent.testing.consul_sim import ConsulSimulator, load_config_entries, load_data

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    "config", ["production/agent.yaml", "kubernetes/agent.yaml", "consul/agent.yaml"]
)
def test_agent_configs_validate(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(EXAMPLES / config)]) == 0
    assert capsys.readouterr().out.endswith(": ok\n")


def test_production_config_has_ca_workloads_and_inbound() -> None:
    config = load_config(EXAMPLES / "production/agent.yaml")
    assert config.ca is not None and config.workloads and config.inbound_address == "10.0.0.10"


def test_production_mesh_files_have_no_errors_nor_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", str(EXAMPLES / "production/mesh")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 7 resources in 2 files") and out.endswith(", 0 warnings\n"), out


def test_vm_join_walkthrough(tmp_path: Path) -> None:
    """Step 2 (vm configure) and step 4 (run --join: the joined config) of the README."""
    example = EXAMPLES / "vm-join"
    (tmp_path / "root-cert.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"
    )
    (tmp_path / "istio-token").write_text("token")
    join = tmp_path / "join"
    argv = ["vm", "configure", "-f", str(example / "workloadgroup.yaml"), "-o", str(join),
            "--mesh-config", str(example / "mesh-config.yaml"),
            "--root-cert", str(tmp_path / "root-cert.pem"),
            "--token-file", str(tmp_path / "istio-token"),
            "--internal-ip", "10.0.0.30", "--ingress-ip", "10.0.0.100"]  # fmt: skip
    assert main(argv) == 0
    assert "POD_NAMESPACE='vm'" in (join / "cluster.env").read_text()
    assert "README.md" in {p.name for p in example.iterdir()}
    config = yaml.safe_load((example / "agent.yaml").read_text())
    config["join"]["dir"] = str(join)  # /etc/istio-join on the VM
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
    assert main(["validate", "--config", str(tmp_path / "agent.yaml")]) == 0
    joined = join_from_dir(load_config(tmp_path / "agent.yaml"), join)
    (workload,) = joined.workloads
    assert (workload.namespace, workload.service_account) == ("vm", "ratings")
    assert joined.ca is not None and joined.ca.mode == "upstream"


def test_consul_config_entries_load_into_the_simulator_and_convert() -> None:
    directory = EXAMPLES / "consul/config-entries"
    entries = load_config_entries(directory)
    assert {e["Kind"] for e in entries} == {
        "service-resolver", "service-splitter", "service-router", "service-intentions"
    }  # fmt: skip
    sim = ConsulSimulator("127.0.0.1", 0)
    load_data(sim, {**json.loads((EXAMPLES / "consul/catalog.json").read_text()),
                    "config": entries})  # fmt: skip
    stored = [e for kind in sorted({e["Kind"] for e in entries})
              for e in sim.state.list_config(kind)]  # fmt: skip
    assert len(stored) == len(entries)
    mapping = ConsulMapping()
    raws = []
    for body in stored:
        raw = RawResource("consul", "ConsulConfigEntry", "consul/v1", "",
                          f"{body['Kind']}/{body['Name']}", body,
                          Provenance("consul", f"consul index {body['ModifyIndex']}"))  # fmt: skip
        converted, issues = convert_consul(raw, mapping)
        assert converted is not None and not list(issues), (body["Kind"], list(issues))
        raws.append(raw)
    snapshot, diagnostics = Normalizer(consul=mapping).apply(
        [SourceEvent("consul", upserts=tuple(raws))]
    )
    assert [d for d in diagnostics if d.severity == "error"] == []
    assert snapshot.virtual_services and snapshot.destination_rules


def test_config_entries_dir_errors_are_located(tmp_path: Path) -> None:
    from meshagent.errors import ConfigError

    (tmp_path / "bad.json").write_text('{"Name": "x"}')
    with pytest.raises(ConfigError, match="Kind and Name") as caught:
        load_config_entries(tmp_path)
    assert "bad.json" in str(caught.value)
