"""`meshagent bug-report`: one tar.gz with what a maintainer asks for first.

The agent config and the mesh files it reads, the agent's view (/debug/status, /debug/resources,
/debug/config_errors, /metrics over the admin socket), Envoy's view (/server_info,
/config_dump, /clusters, /stats from its admin), logs (the systemd journal of the meshagent
units when there is one, and any --log FILE) and versions. What cannot be reached is noted in
errors.txt instead of failing the report: a bug report is most wanted when things are broken.

Key material never enters the archive: resources are redacted by the agent and Envoy
(meshagent.xds.redact, Envoy's own config dump), and every file's text also passes through the
log redaction (PEM private keys, also in base64) before it is written.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from meshagent import __version__
from meshagent.agent.logs import redact_text
from meshagent.errors import MeshAgentError

MAX_FILE_BYTES = 20 * 1024 * 1024  # per member: a mesh file or a log, not a disk image
JOURNAL_UNITS = ("meshagent", "meshagent-envoy", "meshagent-capture")
AGENT_PAGES = ("/debug/status", "/debug/resources", "/debug/config_errors", "/metrics")
ENVOY_PAGES = ("/server_info", "/config_dump?include_eds", "/clusters?format=json", "/stats")


def add_parser(parser: argparse.ArgumentParser) -> None:
    """Options of `meshagent bug-report` (the parser already has --config)."""
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="archive path (default meshagent-bug-report-NODE-TIME.tar.gz)",
    )
    parser.add_argument(
        "--log",
        type=Path,
        action="append",
        default=[],
        help="also include this log file (repeatable)",
    )
    parser.add_argument("--journal-lines", type=int, default=5000,
                        help="lines of each unit's journal (default 5000)")  # fmt: skip


def bug_report(config: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Write the archive; print its path and what could not be collected."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = args.output or Path(f"meshagent-bug-report-{config.node.id}-{stamp}.tar.gz")
    files, errors = collect(config, logs=args.log, journal_lines=args.journal_lines)
    if errors:
        files["errors.txt"] = "".join(f"{e}\n" for e in errors)
    write_archive(target, files, prefix=f"meshagent-bug-report-{stamp}")
    out.write(f"wrote {target} ({len(files)} files)\n")
    for e in errors:
        out.write(f"  not collected: {e}\n")
    return 0


def collect(
    config: Any, *, logs: list[Path], journal_lines: int = 5000
) -> tuple[dict[str, str], list[str]]:
    """name in the archive -> text (not yet redacted), and what could not be collected."""
    files: dict[str, str] = {}
    errors: list[str] = []

    def add(name: str, read: Callable[[], str]) -> None:
        try:
            files[name] = read()
        except (OSError, MeshAgentError, subprocess.SubprocessError, UnicodeError) as exc:
            errors.append(f"{name}: {exc}")

    if config.path is not None:
        add("config/agent.yaml", functools.partial(_read, Path(config.path)))
    for path in _mesh_files(config):
        add("config/mesh" + str(path), functools.partial(_read, path))
    for page in AGENT_PAGES:
        add("agent" + _file_name(page), functools.partial(_agent_page, config, page))
    for page in ENVOY_PAGES:
        add("envoy" + _file_name(page), functools.partial(_envoy_page, config, page))
    for unit in JOURNAL_UNITS:
        text = _journal(unit, journal_lines)
        if text:
            files[f"logs/{unit}.journal.txt"] = text
    for path in logs:
        add(f"logs/{path.name}", functools.partial(_read, path))
    files["versions.json"] = json.dumps(_versions(files.get("envoy/server_info.json")), indent=2)
    return files, errors


def write_archive(target: Path, files: dict[str, str], *, prefix: str) -> None:
    """A tar.gz of files, each redacted, under prefix/; mode 0600 (it describes the host)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for name, text in sorted(files.items()):
            data = redact_text(text).encode()
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    target.chmod(0o600)


def _file_name(page: str) -> str:
    path = page.partition("?")[0]
    ext = ".txt" if path in ("/metrics", "/stats") else ".json"
    return path.removeprefix("/debug") + ext


def _read(path: Path) -> str:
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    text = data[:MAX_FILE_BYTES].decode("utf-8", "replace")
    return text + ("\n[truncated]\n" if len(data) > MAX_FILE_BYTES else "")


def _mesh_files(config: Any) -> list[Path]:
    from meshagent.adapters.files import find_config_files

    files = getattr(config.sources, "files", None)
    if files is None:
        return []
    paths = [p for p in files.paths if p.exists()]
    return sorted(find_config_files(paths)) if paths else []


def _agent_page(config: Any, page: str) -> str:
    from meshagent.agent.opscli import fetch_admin

    return fetch_admin(config, page).decode("utf-8", "replace")


def _envoy_page(config: Any, page: str) -> str:
    from meshagent.agent.envoyview import admin_url
    from meshagent.agent.opscli import fetch

    return fetch(admin_url(config.envoy, page), timeout=10).decode("utf-8", "replace")


def _journal(unit: str, lines: int) -> str:
    """The unit's journal, or "" without journalctl or without entries."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return ""
    try:
        result = subprocess.run(
            [journalctl, "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-iso"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    text = result.stdout
    return text if result.returncode == 0 and "-- No entries --" not in text else ""


def _versions(server_info: str | None) -> dict[str, Any]:
    envoy = None
    if server_info:
        try:
            envoy = json.loads(server_info).get("version")
        except ValueError:
            envoy = None
    return {
        "meshagent": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "envoy": envoy,
    }
