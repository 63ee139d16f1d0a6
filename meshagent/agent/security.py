"""The agent's certificate authority side: workload certificates for this host's workloads,
and (optionally) the CreateCertificate server for other hosts.

The daemon owns one CaRuntime when `ca:` is configured; `on_rotate` hands every new set of
certificates to the daemon, which puts them into the ProxySpec and re-translates.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog

from meshagent.agent.config import AgentConfig
from meshagent.agent.logs import configure_logging
from meshagent.agent.metrics import AgentMetrics
from meshagent.ca.setup import build_issuer, build_service, open_authority
from meshagent.ca.workload import WorkloadCertManager
from meshagent.model.identity import Identity, WorkloadCertificate

log = structlog.get_logger("meshagent.ca")

RotateCallback = Callable[[tuple[WorkloadCertificate, ...]], None]


def local_identities(config: AgentConfig) -> list[Identity]:
    """The identities of the workloads declared on this host (each once, in config order)."""
    domain = config.ca.trust_domain if config.ca else "cluster.local"
    found = (Identity(domain, w.namespace, w.service_account) for w in config.workloads)
    return list(dict.fromkeys(found))


class CertMetrics:
    """A CertObserver over AgentMetrics; the expiry gauge is computed at scrape time."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics
        self._not_after: dict[str, float] = {}

    def cert_issued(self, identity: Identity, not_after: float) -> None:
        self.metrics.ca_issued.labels(kind="workload").inc()
        self.watch(identity, not_after)

    def cert_failed(self, identity: Identity, reason: str) -> None:
        self.metrics.ca_failures.labels(kind="workload", reason="issue_failed").inc()

    def watch(self, identity: Identity, not_after: float) -> None:
        key = identity.spiffe_id
        if key not in self._not_after:
            self.metrics.cert_expiry.labels(identity=key).set_function(
                lambda: self._not_after[key] - time.time()
            )
        self._not_after[key] = not_after
        self.metrics.cert_expiry_timestamp.labels(identity=key).set(not_after)

    def served(self, outcome: str, reason: str) -> None:
        if outcome == "issued":
            self.metrics.ca_issued.labels(kind="served").inc()
        else:
            self.metrics.ca_failures.labels(kind="served", reason=reason).inc()


class CaRuntime:
    """Starts and stops the cert manager and the CreateCertificate server of one agent."""

    def __init__(self, config: AgentConfig, metrics: AgentMetrics, on_rotate: RotateCallback):
        if config.ca is None:
            raise ValueError("CaRuntime needs a config with a ca: section")
        self.config, self.ca_config = config, config.ca
        self._metrics = CertMetrics(metrics)
        self._on_rotate = on_rotate
        self.manager: WorkloadCertManager | None = None
        self.server: Any = None
        self.workers: Any = None
        self._issuer: Any = None

    async def start(self) -> None:
        """Open the CA, get the workload certificates, start serving when configured."""
        ca = await asyncio.to_thread(open_authority, self.ca_config)
        identities = local_identities(self.config)
        if identities:
            self._issuer = build_issuer(self.ca_config, ca)
            self.manager = WorkloadCertManager(
                identities,
                self._issuer,
                self.config.state_dir / "certs",
                key_type=self.ca_config.key_type,
                ttl=self.ca_config.workload_ttl_s,
                on_rotate=self._on_rotate,
                observer=self._metrics,
            )
            await self.manager.start()
            for cert in self.manager.certificates():
                self._metrics.watch(cert.identity, cert.not_after)
            self._on_rotate(self.manager.certificates())
        if self.ca_config.serve.address and ca is not None:
            await self._serve(ca)

    async def _serve(self, ca: Any) -> None:
        from meshagent.ca.service import CertificateServer

        serve = self.ca_config.serve
        service = build_service(
            self.ca_config, ca, observe=self._metrics.served, workers=serve.workers
        )
        self.server = CertificateServer(service, reuse_port=serve.workers > 1)
        assert serve.address is not None
        # Names clients may dial, for the server certificate (plus the listen IP).
        names = tuple(dict.fromkeys(("localhost", socket.gethostname(), socket.getfqdn())))
        await self.server.start(
            serve.address, tls=serve.tls, mtls_address=serve.mtls_address, names=names
        )
        if serve.workers > 1:
            await self._start_workers(names)

    async def _start_workers(self, names: tuple[str, ...]) -> None:
        """Workers 1..N-1 on the ports this process (worker 0) bound; see ca/workers.py."""
        from meshagent.ca.workers import WorkerPool, WorkerSpec, with_port

        serve, log_config = self.ca_config.serve, self.config.log
        assert serve.address is not None
        spec = WorkerSpec(
            config=self.ca_config,
            address=with_port(serve.address, self.server.port),
            tls=serve.tls,
            mtls_address=(
                with_port(serve.mtls_address, self.server.mtls_port) if serve.mtls_address else None
            ),
            names=names,
            workers=serve.workers,
            setup_logging=functools.partial(configure_logging, log_config.level, log_config.format),
        )
        self.workers = WorkerPool(spec, observe=self._metrics.served)
        await self.workers.start()

    def certificates(self) -> tuple[WorkloadCertificate, ...]:
        """The current workload certificates (empty before start)."""
        return self.manager.certificates() if self.manager else ()

    async def stop(self) -> None:
        """Stop renewals and the server; safe to call twice."""
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None
        if self.workers is not None:
            await self.workers.stop()
            self.workers = None
        if self.server is not None:
            await self.server.stop()
            self.server = None
        close = getattr(self._issuer, "close", None)
        if close is not None:
            await close()
        self._issuer = None
