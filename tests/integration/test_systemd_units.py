"""The unit files in systemd/ checked for real by systemd's own tools, without a running systemd.

`systemd-analyze verify` insists that every Exec*= binary exists, so the units are first
rendered into a temporary directory with /opt/meshagent/venv replaced by this test run's
virtualenv (the only substitution), then verified there. `systemd-analyze security
--offline=true` scores the files as shipped. sysusers.d and tmpfiles.d entries are applied to
an empty temporary root with `systemd-sysusers --root` and `systemd-tmpfiles --root`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
SHIPPED_VENV = "/opt/meshagent/venv"
VENV = Path(sys.executable).parent.parent  # the virtualenv running the tests
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package `systemd`; .ci/run installs it)",
)


def unit_lines(name: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (keys may repeat, as SystemCallFilter= does)."""
    values: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_units_verify_cleanly(tmp_path: Path) -> None:
    assert (VENV / "bin" / "meshagent").exists() and (VENV / "bin" / "envoy").exists()
    rendered = []
    for unit in ("meshagent.service", "meshagent-envoy.service"):
        text = (UNITS / unit).read_text().replace(SHIPPED_VENV, str(VENV))
        (tmp_path / unit).write_text(text)
        rendered.append(str(tmp_path / unit))
    result = run("systemd-analyze", "verify", *rendered)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize(
    ("unit", "limit"), [("meshagent.service", MAX_EXPOSURE), ("meshagent-envoy.service", 2.0)]
)
def test_security_exposure_is_low(unit: str, limit: float) -> None:
    result = run("systemd-analyze", "security", "--offline=true", "--no-pager", str(UNITS / unit))
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= limit, result.stdout


def test_agent_unit_is_a_notify_service_with_watchdog_and_reload() -> None:
    unit = unit_lines("meshagent.service")
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert unit["WatchdogSec"] and unit["ExecReload"] == [
        f"{SHIPPED_VENV}/bin/meshagent validate --config /etc/meshagent/agent.yaml",
        "/bin/kill -HUP $MAINPID",
    ]
    assert unit["ExecStart"] == [
        f"{SHIPPED_VENV}/bin/meshagent run --config /etc/meshagent/agent.yaml"
    ]
    assert unit["User"] == ["meshagent"] and unit["CapabilityBoundingSet"] == [""]
    for key in ("RuntimeDirectory", "StateDirectory", "ConfigurationDirectory"):
        assert unit[key] == ["meshagent"], key


def test_envoy_unit_outlives_the_agent() -> None:
    """No Requires=/BindsTo=/PartOf= on the agent: stopping or restarting it leaves Envoy be."""
    envoy = unit_lines("meshagent-envoy.service")
    for key in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert not any("meshagent.service" in v for v in envoy.get(key, [])), key
    assert "meshagent-envoy.service" in " ".join(unit_lines("meshagent.service")["Wants"])
    assert envoy["ExecStartPre"][0].startswith(f"{SHIPPED_VENV}/bin/meshagent bootstrap ")


def test_bootstrap_step_of_the_envoy_unit_yields_a_valid_bootstrap(tmp_path: Path) -> None:
    """ExecStartPre's `meshagent bootstrap`, with the paths the units use, satisfies Envoy."""
    config = tmp_path / "agent.yaml"
    config.write_text(
        "node: {id: vm-1}\nstate_dir: /var/lib/meshagent\nxds: {uds: /run/meshagent/xds.sock}\n"
    )
    pre = unit_lines("meshagent-envoy.service")["ExecStartPre"][0].split()
    out = tmp_path / "envoy.json"
    args = [str(config) if a == "/etc/meshagent/agent.yaml" else a for a in pre[1:]]
    args = [str(out) if a.endswith("envoy.json") else a for a in args]
    assert run(str(VENV / "bin" / "meshagent"), *args).returncode == 0
    assert "/run/meshagent/xds.sock" in out.read_text()
    checked = run(str(VENV / "bin" / "envoy"), "--mode", "validate", "-c", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_and_tmpfiles_apply_to_an_empty_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (tmp_path / "etc" / name).touch()
    users = run("systemd-sysusers", f"--root={tmp_path}", str(UNITS / "sysusers.d/meshagent.conf"))
    assert users.returncode == 0, users.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    assert "\nmeshagent:" in f"\n{passwd}" and "\nmeshagent-envoy:" in f"\n{passwd}"
    group = {line.split(":")[0]: line for line in (tmp_path / "etc/group").read_text().split()}
    assert group["meshagent"].endswith(":meshagent-envoy")  # Envoy may use the xDS socket

    files = run(
        "systemd-tmpfiles", f"--root={tmp_path}", "--create",
        str(UNITS / "tmpfiles.d/meshagent.conf"),
    )  # fmt: skip
    assert files.returncode == 0, files.stderr
    runtime = tmp_path / "run/meshagent"
    assert runtime.is_dir() and runtime.stat().st_mode & 0o777 == 0o750


def exec_reload(config: Path, pid: int) -> list[int]:
    """Run the agent unit's ExecReload= lines in order as systemd does, stopping at the first
    that fails; the exit codes of those that ran."""
    codes = []
    for line in unit_lines("meshagent.service")["ExecReload"]:
        args = line.replace(SHIPPED_VENV, str(VENV)).replace("$MAINPID", str(pid)).split()
        args = [str(config) if a == "/etc/meshagent/agent.yaml" else a for a in args]
        codes.append(run(*args).returncode)
        if codes[-1] != 0:
            break
    return codes


def test_reload_of_a_broken_config_fails_and_does_not_signal(tmp_path: Path) -> None:
    """`systemctl reload` with a bad agent.yaml exits non-zero before the agent is signalled;
    with a good one the agent gets its SIGHUP."""
    config = tmp_path / "agent.yaml"
    config.write_text("node: {id: vm-1}\noutbound: {port_offset: 1}\noutbound: {port_offset: 2}\n")
    sleeper = subprocess.Popen(["sleep", "60"])  # stands in for the agent: SIGHUP ends it
    try:
        assert exec_reload(config, sleeper.pid) == [2]
        assert sleeper.poll() is None  # not signalled
        config.write_text("node: {id: vm-1}\noutbound: {port_offset: 2}\n")
        assert exec_reload(config, sleeper.pid) == [0, 0]
        assert sleeper.wait(timeout=10) == -1  # SIGHUP
    finally:
        sleeper.kill()
        sleeper.wait()
