"""WorkloadEntry auto-registration: the VM registers itself in the mesh, as istiod does for a
VM whose proxy connects with ISTIO_META_AUTO_REGISTER_GROUP.

On start the registrar reads the WorkloadGroup, creates `<group>-<ip>[-<network>]` from its
template (labels, ports, serviceAccount, network; address = the VM's IP) with Istio's
annotations and an ownerReference to the group, or marks an existing entry connected again.
With a probe in the group it keeps the entry's `Healthy` condition from the local app. On stop
it sets `istio.io/disconnectedAt` and deletes the entry after the grace period unless someone
reconnected it meanwhile; entries of the group left disconnected longer than the grace (an agent
that died) are swept on start. The pure parts (names, bodies, conditions) take no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from meshagent.onboard.probe import probe_once

log = structlog.get_logger("meshagent.autoreg")

GROUP, VERSION = "networking.istio.io", "v1"
ANN_GROUP = "istio.io/autoRegistrationGroup"
ANN_CONTROLLER = "istio.io/workloadController"
ANN_CONNECTED = "istio.io/connectedAt"
ANN_DISCONNECTED = "istio.io/disconnectedAt"
ANN_HEALTH_CHECKS = "proxy.istio.io/health-checks-enabled"
MAX_NAME = 253


def entry_name(group: str, ip: str, network: str = "") -> str:
    """Istio's name of an auto-registered entry (IPv6 colons become dashes; long names keep
    their tail)."""
    parts = [group, ip.replace(":", "-")] + ([network] if network else [])
    name = "-".join(parts)
    return name[-MAX_NAME:]


def go_time(ts: float) -> str:
    """ts as Go's RFC3339Nano in UTC (fraction without trailing zeros)."""
    moment = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def parse_go_time(text: str) -> float | None:
    """The POSIX time of an RFC 3339 timestamp, or None when it is not one."""
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class VmIdentity:
    """Who registers: the VM's namespace, address and network, and this agent's instance ID."""

    namespace: str
    address: str
    network: str
    controller: str


def entry_from_group(
    group: Mapping[str, Any], vm: VmIdentity, name: str, connected_at: str
) -> dict[str, Any]:
    """The WorkloadEntry body for vm from its WorkloadGroup (the API object)."""
    meta, spec = group.get("metadata") or {}, group.get("spec") or {}
    template = dict(spec.get("template") or {})
    group_meta = spec.get("metadata") or {}
    labels = {**(group_meta.get("labels") or {}), **(template.get("labels") or {})}
    template.update({"address": vm.address, "labels": labels})
    if vm.network:
        template["network"] = vm.network
    annotations = {
        **(group_meta.get("annotations") or {}),
        ANN_GROUP: meta.get("name", ""),
        ANN_CONTROLLER: vm.controller,
        ANN_CONNECTED: connected_at,
    }
    if spec.get("probe"):
        annotations[ANN_HEALTH_CHECKS] = "true"
    owner = {
        "apiVersion": group.get("apiVersion", f"{GROUP}/{VERSION}"),
        "kind": "WorkloadGroup",
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "controller": True,
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkloadEntry",
        "metadata": {
            "name": name,
            "namespace": vm.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": template,
    }


def health_condition(healthy: bool, now: str, message: str, previous: Any) -> dict[str, Any]:
    """The `Healthy` condition; lastTransitionTime moves only when the status changes."""
    status = "True" if healthy else "False"
    old = next(
        (c for c in (previous or []) if isinstance(c, dict) and c.get("type") == "Healthy"), {}
    )
    changed = old.get("status") != status
    condition = {
        "type": "Healthy",
        "status": status,
        "lastProbeTime": now,
        "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
    }
    if message:
        condition["message"] = message
    return condition


class WorkloadEntryRegistrar:
    """Creates, health-updates and removes this VM's WorkloadEntry through `api`, a
    `kubernetes.client.CustomObjectsApi` (blocking; called in threads)."""

    def __init__(
        self,
        api: Any,
        group_name: str,
        vm: VmIdentity,
        *,
        grace_s: float = 10.0,
        probe_host: str = "127.0.0.1",
        clock: Any = time.time,
    ) -> None:
        self.api, self.group_name, self.vm = api, group_name, vm
        self.grace_s, self.probe_host, self.clock = grace_s, probe_host, clock
        self.name = entry_name(group_name, vm.address, vm.network)
        self._health: asyncio.Task[None] | None = None
        self._probe: Mapping[str, Any] | None = None
        self.registered = False

    async def start(self) -> None:
        """Register (or re-connect) the entry and start health checks; errors are logged."""
        try:
            await asyncio.to_thread(self._sweep_stale)
            group = await asyncio.to_thread(self._get, "workloadgroups", self.group_name)
            await asyncio.to_thread(self._register, group)
        except Exception as exc:
            log.error("workload_entry_register_failed", name=self.name, error=_reason(exc))
            return
        self.registered = True
        self._probe = (group.get("spec") or {}).get("probe")
        if self._probe:
            self._health = asyncio.create_task(self._health_loop(), name="workload-entry-health")

    async def stop(self, *, wait_grace: bool = True) -> None:
        """Mark the entry disconnected, then delete it after the grace period."""
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        if not self.registered:
            return
        self.registered = False
        try:
            await asyncio.to_thread(self._disconnect)
            if wait_grace:
                await asyncio.sleep(self.grace_s)
                await asyncio.to_thread(self._cleanup)
        except Exception as exc:
            log.warning("workload_entry_unregister_failed", name=self.name, error=_reason(exc))

    # --- API calls (blocking) ---------------------------------------------------------

    def _get(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.vm.namespace, plural, name
        )
        return obj

    def _patch(self, body: Mapping[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.vm.namespace, "workloadentries", self.name, body
        )

    def _register(self, group: Mapping[str, Any]) -> None:
        now = go_time(self.clock())
        body = entry_from_group(group, self.vm, self.name, now)
        try:
            self.api.create_namespaced_custom_object(
                GROUP, VERSION, self.vm.namespace, "workloadentries", body
            )
            log.info("workload_entry_registered", name=self.name, namespace=self.vm.namespace)
        except Exception as exc:
            if getattr(exc, "status", None) != 409:
                raise
            # Ours from an earlier run (within its grace period): connected again.
            annotations = {ANN_CONTROLLER: self.vm.controller, ANN_CONNECTED: now}
            self._patch({"metadata": {"annotations": {**annotations, ANN_DISCONNECTED: None}}})
            log.info("workload_entry_reconnected", name=self.name, namespace=self.vm.namespace)

    def _disconnect(self) -> None:
        annotations = {ANN_CONNECTED: None, ANN_DISCONNECTED: go_time(self.clock())}
        self._patch({"metadata": {"annotations": annotations}})
        log.info("workload_entry_disconnected", name=self.name, grace_s=self.grace_s)

    def _cleanup(self) -> None:
        """Delete the entry unless it was connected again during the grace period."""
        try:
            entry = self._get("workloadentries", self.name)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return
            raise
        if self._expired(entry, self.clock()):
            self._delete(self.name)

    def _expired(self, entry: Mapping[str, Any], now: float) -> bool:
        annotations = (entry.get("metadata") or {}).get("annotations") or {}
        if annotations.get(ANN_CONNECTED) or annotations.get(ANN_GROUP) != self.group_name:
            return False
        since = parse_go_time(annotations.get(ANN_DISCONNECTED, ""))
        return since is not None and now - since >= self.grace_s - 1e-3

    def _delete(self, name: str) -> None:
        try:
            self.api.delete_namespaced_custom_object(
                GROUP, VERSION, self.vm.namespace, "workloadentries", name
            )
            log.info("workload_entry_removed", name=name, namespace=self.vm.namespace)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise

    def _sweep_stale(self) -> None:
        """Remove the group's entries left disconnected for longer than the grace period."""
        listed = self.api.list_namespaced_custom_object(
            GROUP, VERSION, self.vm.namespace, "workloadentries"
        )
        now = self.clock()
        for entry in listed.get("items", []):
            name = (entry.get("metadata") or {}).get("name", "")
            if name != self.name and self._expired(entry, now):
                self._delete(name)

    # --- health -----------------------------------------------------------------------

    async def _health_loop(self) -> None:
        probe = self._probe or {}
        period = float(probe.get("periodSeconds") or 10)
        await asyncio.sleep(float(probe.get("initialDelaySeconds") or 0))
        while True:
            healthy, message = await probe_once(probe, self.probe_host)
            try:
                await asyncio.to_thread(self._set_health, healthy, message)
            except Exception as exc:
                log.warning("workload_entry_health_failed", name=self.name, error=_reason(exc))
            await asyncio.sleep(period)

    def _set_health(self, healthy: bool, message: str) -> None:
        entry = self._get("workloadentries", self.name)
        previous = (entry.get("status") or {}).get("conditions")
        condition = health_condition(healthy, go_time(self.clock()), message, previous)
        others = [c for c in previous or [] if c.get("type") != "Healthy"]
        body = {"status": {"conditions": [*others, condition]}}
        try:  # a real API server keeps status in its own subresource
            self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.vm.namespace, "workloadentries", self.name, body
            )
        except Exception as exc:
            if getattr(exc, "status", None) not in (404, 405):
                raise
            self._patch(body)


def controller_id() -> str:
    """This agent's instance ID in istio.io/workloadController."""
    return f"meshagent-{socket.gethostname()}"


def _reason(exc: Exception) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    return f"{status} {reason}" if status else str(exc) or type(exc).__name__


def kube_api(server: str, token_file: Any, ca_file: Any, kubeconfig: Any) -> Any:
    """A CustomObjectsApi for the API server (token file + CA), or from a kubeconfig."""
    from kubernetes import client, config

    if kubeconfig:
        return client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))  # type: ignore[no-untyped-call]
    conf = client.Configuration(host=server)
    if token_file:
        token = open(token_file, encoding="utf-8").read().strip()  # noqa: SIM115 - tiny file
        conf.api_key = {"authorization": f"Bearer {token}"}
    if ca_file:
        conf.ssl_ca_cert = str(ca_file)
    return client.CustomObjectsApi(client.ApiClient(conf))
