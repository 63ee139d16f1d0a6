"""meshagent-capture.service, checked for real by `systemd-analyze` (as the other units are in
test_systemd_units.py), and its command lines accepted by `meshagent capture`."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshagent.agent.cli import main

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
SHIPPED_VENV = "/opt/meshagent/venv"
VENV = Path(sys.executable).parent.parent
UNIT = "meshagent-capture.service"


def unit_lines() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (UNITS / UNIT).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_capture_unit_verifies_with_the_other_units_and_is_hardened(tmp_path: Path) -> None:
    for unit in (UNIT, "meshagent.service", "meshagent-envoy.service"):
        text = (UNITS / unit).read_text().replace(SHIPPED_VENV, str(VENV))
        (tmp_path / unit).write_text(text)
    verify = subprocess.run(["systemd-analyze", "verify", *map(str, tmp_path.iterdir())],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNITS / UNIT)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert match and float(match.group(1)) <= 2.5, security.stdout


def test_capture_is_applied_before_the_agent_and_envoy_and_removed_after_them() -> None:
    unit = unit_lines()
    assert unit["Type"] == ["oneshot"] and unit["RemainAfterExit"] == ["yes"]
    before = unit["Before"][0].split()
    assert "meshagent.service" in before and "meshagent-envoy.service" in before
    assert unit["PartOf"] == ["meshagent.service meshagent-envoy.service"]
    assert unit["WantedBy"] == ["meshagent.service meshagent-envoy.service"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    for key, action in (("ExecStart", "apply"), ("ExecReload", "apply"), ("ExecStop", "remove")):
        argv = shlex.split(unit[key][0])
        assert argv[:3] == [f"{SHIPPED_VENV}/bin/meshagent", "capture", action], key


def test_the_units_command_line_is_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ExecStart with its cluster.env swapped for one `vm configure` would write, dry run."""
    (tmp_path / "cluster.env").write_text(
        "ISTIO_INBOUND_PORTS='9080'\nISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'\n"
        "ISTIO_SERVICE_CIDR='*'\nISTIO_META_DNS_CAPTURE='true'\n"
    )
    argv = shlex.split(unit_lines()["ExecStart"][0])[1:]
    argv = [str(tmp_path / "cluster.env") if a.endswith("cluster.env") else a for a in argv]
    assert main([*argv, "--dry-run", "-u", "1", "-g", "1", "--capture-all-dns"]) == 0
    assert "-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT" in capsys.readouterr().out
