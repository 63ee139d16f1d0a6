"""`envoy --mode validate` on a JSON configuration, shared by the BOOTSTRAP patch check
(agent.bootstrap_patch) and the Wasm runtime probe (xds.envoyfilter.wasm)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def run_validate(
    binary: str, config: Mapping[str, Any], *, timeout_s: float, prefix: str, file_name: str
) -> subprocess.CompletedProcess[str] | str:
    """Run `binary --mode validate` on config (written as JSON to file_name in a temporary
    directory named with prefix): the finished process, or why it could not run."""
    with tempfile.TemporaryDirectory(prefix=prefix) as work:
        path = Path(work) / file_name
        path.write_text(json.dumps(config), encoding="utf-8")
        try:
            return subprocess.run(
                [binary, "--mode", "validate", "-c", str(path), "-l", "error"],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot run {binary}: {exc}"
