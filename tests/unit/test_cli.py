"""The meshagent command line: exit codes, one-line errors, output formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshagent import __version__
from meshagent.agent.cli import main

GOOD = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  ports: [{number: 3306, name: tcp, protocol: TCP}]
  resolution: DNS
"""

BAD = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: default}
spec:
  hosts: [reviews]
  http:
    - route:
        - destination: {host: reviews}
          weight: -5
"""


def needs_loaders() -> None:
    pytest.importorskip("meshagent.adapters.yamldocs")
    pytest.importorskip("meshagent.normalize.validate")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"meshagent {__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2


def test_validate_good_files_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needs_loaders()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "good.yaml").write_text(GOOD)

    assert main(["validate", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "ok: 1 resource in 1 file (1 ServiceEntry), 0 warnings\n"


def test_validate_errors_exit_one_with_located_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_loaders()
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)

    assert main(["validate", str(tmp_path / "nothing-here"), str(bad)]) == 2
    assert main(["validate", str(bad)]) == 1

    lines = capsys.readouterr().out.splitlines()
    assert lines, "expected at least one problem line"
    assert all(line.startswith(f"{bad}:") for line in lines)
    assert any("VirtualService/" in line and "broken" in line for line in lines)


def test_validate_yaml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needs_loaders()
    broken = tmp_path / "broken.yml"
    broken.write_text("kind: [unclosed\n")

    assert main(["validate", str(broken)]) == 1
    assert capsys.readouterr().out.startswith(f"{broken}:")


def test_validate_agent_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("node: {id: vm-1}\n")
    bad.write_text("node:\n  id: vm-1\n  color: red\n")

    assert main(["validate", "--config", str(good)]) == 0
    assert main(["validate", "--config", str(bad)]) == 2

    captured = capsys.readouterr()
    assert captured.out == f"{good}: ok\n"
    err = captured.err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"meshagent: {bad}:3: node.color: unknown key")


def test_validate_without_arguments_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHAGENT_CONFIG", raising=False)
    assert main(["validate"]) == 2
    assert "validate needs" in capsys.readouterr().err


def test_commands_find_the_config_in_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("node: {id: vm-env}\n")
    monkeypatch.setenv("MESHAGENT_CONFIG", str(config))
    assert main(["validate"]) == 0
    assert capsys.readouterr().out == f"{config}: ok\n"
    assert main(["bootstrap"]) == 0
    assert '"id": "vm-env"' in capsys.readouterr().out
    monkeypatch.setenv("MESHAGENT_CONFIG", str(tmp_path / "absent.yaml"))
    assert main(["status"]) == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_bootstrap_prints_envoy_bootstrap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "node: {id: vm-7, cluster: web}\nstate_dir: state\nenvoy: {admin_port: 15999}\n"
    )

    assert main(["bootstrap", "--config", str(config)]) == 0
    bootstrap = json.loads(capsys.readouterr().out)

    assert bootstrap["node"]["id"] == "vm-7" and bootstrap["node"]["cluster"] == "web"
    assert str(tmp_path / "state" / "xds.sock") in json.dumps(bootstrap)
    assert "15999" in json.dumps(bootstrap)
    assert "DELTA_GRPC" in json.dumps(bootstrap)


def test_bootstrap_to_file_and_sotw(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("node: {id: vm-7}\nxds: {delta: false}\nstate_dir: .\n")
    out = tmp_path / "bootstrap.json"

    assert main(["bootstrap", "-c", str(config), "-o", str(out)]) == 0
    text = out.read_text()
    assert '"GRPC"' in text and "DELTA_GRPC" not in text


def test_missing_config_is_one_line_exit_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bootstrap", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
