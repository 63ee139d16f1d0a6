"""Multi-process serving of CreateCertificate (`ca.serve.workers: N`).

One grpc.aio server is bound by one Python thread (the GIL), so one process signs on one core.
With N workers the agent process serves as worker 0 and starts N-1 more processes; each loads
the CA signing material itself (from the CA directory, or the plug-in directory) and binds the
same address with SO_REUSEPORT, so the kernel spreads *connections* across them.

Each worker has its own rate limiter holding 1/N of the configured rate and burst: a caller
never gets more than the configured rate in total, and a caller whose calls all arrive on one
connection (one process) gets 1/N of it.

Parent and worker talk over one pipe. The worker sends ("ready", port) or ("failed", reason)
once, then ("counts", {(outcome, reason): n}) about once a second for the metrics. The worker
stops when the pipe reaches EOF, which is how it learns that the parent stopped or died; the
parent restarts a worker that exits unexpectedly, with a growing delay. Workers ignore SIGINT
and SIGTERM (both reach the whole process group or cgroup): only the pipe stops them, or
SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import structlog

from meshagent.ca.errors import CaError
from meshagent.ca.issuer import IssueObserver
from meshagent.ca.settings import CaConfig

log = structlog.get_logger("meshagent.ca")

START_TIMEOUT_S = 60.0
FLUSH_S = 1.0
STOP_GRACE_S = 1.0
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker process serves; picklable (sent to the spawned process).

    `address`/`mtls_address` carry the concrete ports that worker 0 bound; `workers` is the
    total number of serving processes (for the rate-limit share); `setup_logging` is called
    first in the worker (a module-level function or functools.partial of one).
    """

    config: CaConfig
    address: str
    tls: bool
    mtls_address: str | None
    names: tuple[str, ...]
    workers: int
    setup_logging: Callable[[], None] | None = None


def with_port(address: str, port: int | None) -> str:
    """address ("host:0") with its port replaced by port."""
    return f"{address.rpartition(':')[0]}:{port}"


def worker_main(spec: WorkerSpec, index: int, conn: Connection) -> None:
    """Entry point of a worker process: serve until the parent's end of conn closes."""
    # Ctrl-C and systemd's SIGTERM reach the whole process group (cgroup); the parent decides
    # when workers stop (by closing the pipe), so that it never mistakes a stop for a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if spec.setup_logging is not None:
        spec.setup_logging()
    try:
        asyncio.run(_serve(spec, index, conn))
    except Exception as exc:  # reported to the parent, which logs it with the worker index
        with contextlib.suppress(OSError, ValueError):
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))


async def _serve(spec: WorkerSpec, index: int, conn: Connection) -> None:
    from meshagent.ca.service import CertificateServer
    from meshagent.ca.setup import build_service, open_authority

    ca = open_authority(spec.config)
    if ca is None:
        raise CaError("no local CA to serve (upstream mode)")
    counts: Counter[tuple[str, str]] = Counter()

    def observe(outcome: str, reason: str) -> None:
        counts[(outcome, reason)] += 1

    service = build_service(spec.config, ca, observe=observe, workers=spec.workers)
    server = CertificateServer(service, reuse_port=True)
    await server.start(spec.address, tls=spec.tls, mtls_address=spec.mtls_address, names=spec.names)
    conn.send(("ready", server.port))
    log.debug("ca_worker_started", worker=index, port=server.port)
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_reader(conn.fileno(), _on_parent, conn, stopped)
    while not stopped.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), FLUSH_S)
        if counts:
            with contextlib.suppress(OSError):
                conn.send(("counts", dict(counts)))
            counts.clear()
    await server.stop(STOP_GRACE_S)


def _on_parent(conn: Connection, stopped: asyncio.Event) -> None:
    """The parent sends nothing: readable means EOF (the parent stopped or died)."""
    try:
        conn.recv()
    except (EOFError, OSError):
        asyncio.get_running_loop().remove_reader(conn.fileno())
        stopped.set()


@dataclass(slots=True)
class _Worker:
    index: int
    process: Any
    conn: Connection
    ready: asyncio.Future[int]
    failures: int = 0
    restart: asyncio.TimerHandle | None = field(default=None)


class WorkerPool:
    """Worker processes 1..N-1 of a CreateCertificate server whose worker 0 is this process.

    `observe(outcome, reason)` receives the workers' issuance outcomes (about once a second).
    """

    def __init__(self, spec: WorkerSpec, *, observe: IssueObserver | None = None) -> None:
        self.spec = spec
        self._observe = observe or (lambda outcome, reason: None)
        self._ctx = multiprocessing.get_context("spawn")  # grpc's threads do not survive fork
        self._workers: dict[int, _Worker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = self._started = False

    @property
    def pids(self) -> dict[int, int | None]:
        """Worker index -> pid of its current process (None while it restarts)."""
        return {
            i: w.process.pid if w.process.is_alive() else None for i, w in self._workers.items()
        }

    async def start(self) -> None:
        """Start the workers and wait until each listens; CaError when one cannot."""
        for index in range(1, self.spec.workers):
            self._spawn(index)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                for worker in list(self._workers.values()):
                    await worker.ready
        except (CaError, TimeoutError) as exc:
            await self.stop()
            raise CaError(f"CA worker did not start: {exc or 'timed out'}") from None
        self._started = True
        log.info("ca_workers_started", workers=self.spec.workers, pids=self.pids)

    def _spawn(self, index: int) -> None:
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(self.spec, index, child_end),
            name=f"meshagent-ca-worker-{index}",
            daemon=True,
        )
        process.start()
        child_end.close()  # only the worker holds it now, so its exit shows here as EOF
        old = self._workers.get(index)
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        worker = _Worker(index, process, parent_end, ready, old.failures if old else 0)
        self._workers[index] = worker
        asyncio.get_running_loop().add_reader(parent_end.fileno(), self._on_message, worker)

    def _on_message(self, worker: _Worker) -> None:
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError):
            self._on_exit(worker)
            return
        if kind == "counts":
            for (outcome, reason), count in value.items():
                for _ in range(count):
                    self._observe(outcome, reason)
        elif kind == "ready" and not worker.ready.done():
            worker.failures = 0
            worker.ready.set_result(value)
        elif kind == "failed":
            log.error("ca_worker_failed", worker=worker.index, reason=value)
            if not worker.ready.done() and not self._started:  # start() awaits it
                worker.ready.set_exception(CaError(f"worker {worker.index}: {value}"))

    def _on_exit(self, worker: _Worker) -> None:
        asyncio.get_running_loop().remove_reader(worker.conn.fileno())
        worker.conn.close()
        if not worker.ready.done() and not self._started:  # start() awaits it
            worker.ready.set_exception(CaError(f"worker {worker.index} exited while starting"))
        if not self._stopping and self._started:
            task = asyncio.get_running_loop().create_task(self._reap_and_restart(worker))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reap_and_restart(self, worker: _Worker) -> None:
        # It closed the pipe, so it is exiting: joining costs a moment, off the event loop.
        await asyncio.to_thread(worker.process.join, 5.0)
        delay = RESTART_DELAYS_S[min(worker.failures, len(RESTART_DELAYS_S) - 1)]
        worker.failures += 1
        log.error(
            "ca_worker_exited",
            worker=worker.index,
            exitcode=worker.process.exitcode,
            restart_in_s=delay,
        )
        if not self._stopping:
            worker.restart = asyncio.get_running_loop().call_later(
                delay, self._restart, worker.index
            )

    def _restart(self, index: int) -> None:
        if not self._stopping:
            self._spawn(index)

    async def stop(self) -> None:
        """Stop every worker (EOF on its pipe), killing those that do not exit in time."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        for task in list(self._tasks):
            task.cancel()
        for worker in self._workers.values():
            if worker.restart is not None:
                worker.restart.cancel()
            if not worker.conn.closed:
                loop.remove_reader(worker.conn.fileno())
                worker.conn.close()
        processes = [w.process for w in self._workers.values()]
        self._workers.clear()
        await asyncio.to_thread(_reap, processes, STOP_GRACE_S + 2.0)


def _reap(processes: list[Any], timeout: float) -> None:
    """Join processes; kill those still running after timeout (workers ignore SIGTERM)."""
    for process in processes:
        process.join(timeout)
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(1.0)
