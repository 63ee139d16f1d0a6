"""The daemon's side of `join:`: this VM's WorkloadEntry, registered while the agent runs."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from meshagent.agent.config import AgentConfig
from meshagent.onboard.autoreg import VmIdentity, WorkloadEntryRegistrar, controller_id, kube_api

log = structlog.get_logger("meshagent.join")


async def start_workload_entry(config: AgentConfig) -> WorkloadEntryRegistrar | None:
    """Register this VM's WorkloadEntry when `join.workload_group` is set (None otherwise)."""
    join = config.join
    if join is None or not join.workload_group:
        return None
    source = config.sources.kubernetes
    if (join.kubernetes is None and source is None) or not join.address:
        missing = "join.address (ISTIO_SVC_IP)" if join.address == "" else "a Kubernetes API"
        log.error("workload_entry_not_registered", reason=f"{missing} is not set")
        return None
    try:
        api = await asyncio.to_thread(_api, config)
    except Exception as exc:
        log.error("workload_entry_not_registered", reason=str(exc))
        return None
    vm = VmIdentity(join.info.namespace, join.address, join.info.network, controller_id())
    registrar = WorkloadEntryRegistrar(api, join.workload_group, vm, grace_s=join.cleanup_grace_s)
    await registrar.start()
    return registrar


def _api(config: AgentConfig) -> Any:
    """join.kubernetes when set, else the Kubernetes source's client settings."""
    assert config.join is not None
    k = config.join.kubernetes
    if k is not None:
        return kube_api(k.server, k.token_file, k.ca_file, k.kubeconfig)
    from kubernetes import client

    from meshagent.adapters.kubernetes import api_client

    assert config.sources.kubernetes is not None
    return client.CustomObjectsApi(api_client(config.sources.kubernetes.options))
