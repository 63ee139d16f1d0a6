"""Where the commands find the agent config: `--config`, else `$MESHAGENT_CONFIG`, else the
default path (what the packages and the ansible role install)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/meshagent/agent.yaml")
CONFIG_ENV = "MESHAGENT_CONFIG"
CONFIG_HELP = f"agent config file (default ${CONFIG_ENV}, else {DEFAULT_CONFIG})"


def config_path(given: Path | None) -> Path:
    """The agent config file a command uses."""
    if given is not None:
        return given
    env = os.environ.get(CONFIG_ENV, "").strip()
    return Path(env) if env else DEFAULT_CONFIG
