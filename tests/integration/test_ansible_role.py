"""The ansible role and playbook, run for real against localhost into a temporary root.

Service management and user creation are off (no systemd here, and the test must not add
users to this machine); everything else runs as on a host: a virtualenv is created under the
temporary root and a wheel built from this repository is installed into it (`--no-deps`, so
no network), the agent config, mesh files, units, sysusers.d and tmpfiles.d entries are
installed. The second run must change nothing; --check must pass; ansible-lint (production
profile) must be clean.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshagent import __version__

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (BIN / "ansible-playbook").exists(),
        reason="ansible-core not installed in the test virtualenv (pip install -e '.[dev]')",
    ),
]

MESH = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hello, namespace: demo}
spec:
  hosts: [hello.demo.svc.cluster.local]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this repository, built from a copy (pip would leave build/ in the tree)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "meshagent", src / "meshagent",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return next(out.glob("meshagent_vm-*.whl"))


def _dependencies(tmp_path: Path) -> Path:
    """The test virtualenv's packages without meshagent-vm itself (installed there editable):
    on PYTHONPATH they serve the host's `meshagent`, and pip must not find meshagent-vm
    installed already."""
    deps = tmp_path / "deps"
    if not deps.exists():
        deps.mkdir()
        for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
            if not entry.name.lower().replace("-", "_").startswith(("meshagent", "__editable__")):
                (deps / entry.name).symlink_to(entry)
    return deps


def playbook(
    tmp_path: Path, wheel: Path, *extra: str, **overrides: Any
) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    envoy = root / "usr/bin/envoy"  # Envoy "from a distro path", here the test venv's
    if not envoy.exists():
        envoy.symlink_to(BIN / "envoy")
    inventory = tmp_path / "inventory.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(yaml.safe_dump({"meshagent": {"hosts": {"localhost": host}}}))
    variables = {
        "meshagent_root": str(root),
        "meshagent_manage_services": False,
        "meshagent_manage_users": False,
        "meshagent_become": False,
        # The wheel is copied to the host and installed pinned to its version from there.
        "meshagent_wheel": str(wheel),
        "meshagent_pip_environment": {"PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1"},
        "meshagent_python": sys.executable,
        "meshagent_envoy_source": "path",
        "meshagent_envoy_binary": "/usr/bin/envoy",
        "meshagent_node_id": "vm-7",
        "meshagent_outbound_ports": {8080: 15080},
        "meshagent_mesh_files": {"hello.yaml": MESH},
        **overrides,
    }
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    # The wheel is installed without its dependencies (no network here); the installed
    # `meshagent`, which the role runs to validate files, finds them in the test virtualenv.
    pythonpath = os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH", ""), str(_dependencies(tmp_path))) if p
    )
    env = {**os.environ, "PYTHONPATH": pythonpath, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "ANSIBLE_NOCOLOR": "1",
           # The role uses no facts: skipping their gathering saves a second per run.
           "ANSIBLE_GATHERING": "explicit",
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}  # fmt: skip
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "-e", f"@{tmp_path / 'vars.json'}",
         str(ANSIBLE / "site.yml"), *extra],
        cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    line = re.search(r"localhost\s*:\s*(ok=.*)", result.stdout)
    assert line, result.stdout
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.group(1))}


def test_playbook_installs_into_a_root_idempotently_and_in_check_mode(
    tmp_path: Path, wheel: Path
) -> None:
    """One root through the role's life, with one full install (the slowest kind of run):
    installed with traffic capture on and two mesh files (so the capture unit, cluster.env and
    both files are in the idempotency and check-mode runs too); then capture switched off and
    one mesh file no longer listed: both removed; then a bad config or mesh file never
    replaces the installed one."""
    capture_on = ("-e", '{"meshagent_capture": true}')
    other = MESH.replace("name: hello", "name: other").replace("hello.demo", "other.demo")
    files = {"hello.yaml": MESH, "other.yaml": other}
    first = recap(playbook(tmp_path, wheel, *capture_on, meshagent_mesh_files=files))
    assert first["changed"] > 0 and first["failed"] == 0

    root = tmp_path / "root"
    agent_yaml = root / "etc/meshagent/agent.yaml"
    from meshagent.agent.config import load_config

    config = load_config(agent_yaml)  # the rendered config is valid for the agent itself
    assert config.node.id == "vm-7" and str(config.xds.uds) == "/run/meshagent/xds.sock"
    assert config.outbound.ports == ((8080, 15080),)
    mesh = root / "etc/meshagent/mesh"
    assert (mesh / "hello.yaml").read_text() == MESH
    assert (mesh / "other.yaml").read_text() == other
    assert (root / "opt/meshagent/venv/bin/meshagent").exists()
    assert (root / f"opt/meshagent/wheels/{wheel.name}").exists()
    assert f"meshagent_vm-{__version__}.dist-info" in "".join(
        p.name for p in (root / "opt/meshagent/venv/lib").glob("python*/site-packages/*")
    )
    units = root / "etc/systemd/system"
    shipped = (REPO / "systemd/meshagent.service").read_text()
    assert (units / "meshagent.service").read_text().split("\n", 1)[1] == shipped
    envoy_unit = (units / "meshagent-envoy.service").read_text().split("\n", 1)[1]
    assert envoy_unit == (REPO / "systemd/meshagent-envoy.service").read_text().replace(
        "/opt/meshagent/venv/bin/envoy", "/usr/bin/envoy"
    )
    assert (root / "usr/lib/sysusers.d/meshagent.conf").exists()
    capture_unit = units / "meshagent-capture.service"
    assert (
        capture_unit.read_text().split("\n", 1)[1]
        == (REPO / "systemd/meshagent-capture.service").read_text()
    )
    cluster_env = root / "etc/meshagent/cluster.env"
    from meshagent.agent.cli import main

    # The rendered cluster.env drives capture: every port in, SSH and the agent's ports out.
    assert main(["capture", "print", "-u", "1", "-g", "1", "--capture-all-dns",
                 "--cluster-env", str(cluster_env)]) == 0  # fmt: skip

    second = recap(playbook(tmp_path, wheel, *capture_on, meshagent_mesh_files=files))
    assert second["changed"] == 0 and second["failed"] == 0

    checked = recap(
        playbook(tmp_path, wheel, *capture_on, "--check", "--diff", meshagent_mesh_files=files)
    )
    assert checked["changed"] == 0 and checked["failed"] == 0

    # The switch off (the default) removes the capture unit; mesh files no longer listed are
    # removed (after the listed ones are in place), also one that is not the role's.
    (mesh / "stray.yaml").write_text(MESH)
    off = recap(playbook(tmp_path, wheel))
    assert off["changed"] > 0 and off["failed"] == 0 and not capture_unit.exists()
    assert sorted(p.name for p in mesh.iterdir()) == ["hello.yaml"]

    # A config the agent would refuse never replaces the installed one.
    good_config = agent_yaml.read_text()
    bad_config = {"outbound": {"port_offset": "ten"}}
    fatal = failed_task(playbook(tmp_path, wheel, meshagent_config_extra=bad_config))
    assert "outbound.port_offset: must be an integer" in fatal
    assert agent_yaml.read_text() == good_config

    # Neither is a mesh file with an error installed; the listed good files are kept.
    broken = {**files, "other.yaml": other.replace("STATIC", "STATICK")}
    fatal = failed_task(playbook(tmp_path, wheel, meshagent_mesh_files=broken))
    assert "spec.resolution" in fatal
    assert sorted(p.name for p in mesh.iterdir()) == ["hello.yaml"]
    assert (mesh / "hello.yaml").read_text() == MESH


def test_ansible_lint_production_profile() -> None:
    lint = BIN / "ansible-lint"
    if not lint.exists():
        pytest.skip("ansible-lint not installed in the test virtualenv")
    result = subprocess.run(
        [str(lint), "--profile", "production", "--offline", "site.yml", "roles/meshagent"],
        cwd=ANSIBLE, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "NO_COLOR": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def failed_task(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a failed run from its first failed task on."""
    assert result.returncode != 0, result.stdout[-4000:]
    found = re.search(r"^(fatal|failed): ", result.stdout, re.MULTILINE)
    assert found, result.stdout[-4000:]
    return result.stdout[found.start() : found.start() + 3000]


def test_role_refuses_an_unpinned_install(tmp_path: Path, wheel: Path) -> None:
    fatal = failed_task(playbook(tmp_path, wheel, meshagent_wheel="", meshagent_version=""))
    assert "Set meshagent_wheel" in fatal
    assert not (tmp_path / "root/opt/meshagent/venv").exists()
