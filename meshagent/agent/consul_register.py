"""Registering the agent's local workloads in Consul, so that Consul-native clients find them.

Each `workloads:` entry becomes one Consul service instance on the local Consul agent
(PUT /v1/agent/service/register), ID `<node id>-<workload>`, with an HTTP check against the
agent's own /readyz: the instance turns passing once the agent is ready, and critical when the
agent stops answering. Registration is retried in the background until Consul accepts it; on
shutdown every registered instance is deregistered (best effort, bounded in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import structlog

from meshagent.adapters.consul import consul_client
from meshagent.adapters.consul_watch import Backoff, run_blocking
from meshagent.model.proxy import LocalWorkload

log = structlog.get_logger("meshagent.agent.consul")
DEREGISTER_TIMEOUT_S = 3.0


def registration_body(
    workload: LocalWorkload, node_id: str, address: str, check_url: str
) -> dict[str, Any]:
    """The /v1/agent/service/register body for one local workload."""
    port = workload.ports[0] if workload.ports else None
    meta = {k: v for k, v in workload.labels}
    meta["namespace"] = workload.namespace
    if port is not None:
        meta["protocol"] = port.protocol.lower()
    body: dict[str, Any] = {
        "ID": f"{node_id}-{workload.name}",
        "Name": workload.name,
        "Tags": ["meshagent"],
        "Port": port.port if port else 0,
        "Meta": meta,
        "Check": {
            "Name": "meshagent readiness",
            "HTTP": check_url,
            "Interval": "2s",
            "Timeout": "1s",
            "DeregisterCriticalServiceAfter": "10m",
        },
    }
    if address:
        body["Address"] = address
    return body


class ConsulRegistrar:
    """Registers workloads once started; `stop()` deregisters what was registered."""

    def __init__(self, options: Any, token: Any, bodies: list[dict[str, Any]]) -> None:
        self._options, self._token, self._bodies = options, token, bodies
        self._registered: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None

    def start(self) -> None:
        """Begin registering in the background."""
        self._client = consul_client(self._options)
        self._task = asyncio.create_task(self._register_all(), name="consul-register")

    async def _register_all(self) -> None:
        backoff = Backoff(self._options.backoff_base_s, self._options.backoff_cap_s)
        pending = list(self._bodies)
        while pending:
            body = pending[0]
            try:
                await run_blocking(functools.partial(self._put, body))
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "consul_register_failed",
                    source="consul",
                    service=body["ID"],
                    error=str(exc)[:300],
                    retry_in_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self._registered.append(body["ID"])
            log.info("consul_registered", source="consul", service=body["ID"])
            pending.pop(0)

    def _put(self, body: dict[str, Any]) -> None:
        from consul.callback import CB

        self._client.http.put(
            CB.boolean(),
            "/v1/agent/service/register",
            headers=self._client.prepare_headers(self._token.get()),
            data=_json(body),
        )

    async def stop(self) -> None:
        """Stop registering and deregister every instance registered so far."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for service_id in self._registered:
            try:
                await asyncio.wait_for(
                    run_blocking(functools.partial(self._deregister, service_id)),
                    DEREGISTER_TIMEOUT_S,
                )
                log.info("consul_deregistered", source="consul", service=service_id)
            except Exception as exc:
                log.warning(
                    "consul_deregister_failed",
                    source="consul",
                    service=service_id,
                    error=str(exc)[:300],
                )
        self._registered.clear()

    def _deregister(self, service_id: str) -> None:
        self._client.agent.service.deregister(service_id, token=self._token.get())


def _json(body: dict[str, Any]) -> str:
    import json

    return json.dumps(body)
