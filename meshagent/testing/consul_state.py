"""The data of the Consul API simulator: nodes, services, checks, config entries and indexes.

No networking here: `consul_sim` serves this over HTTP. Every write bumps one raft-like index
and stamps it on the "watch keys" it touches, so that a blocking query on one endpoint wakes
only when something that endpoint shows has changed (Consul's per-table indexes, simplified
to per-endpoint ones). Response shapes follow Consul's documented API (see the examples in
../shared/corpus/consul). Thread-safe: one lock guards everything; `on_change` is called
with the touched keys after each write, outside the lock.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("passing", "warning", "critical")
SERF_CHECK = "serfHealth"
SERVICES_KEY = "services"


def service_key(name: str) -> str:
    """The watch key of one service's catalog and health endpoints."""
    return f"svc:{name}"


def config_key(kind: str) -> str:
    """The watch key of one config-entry kind."""
    return f"config:{kind}"


class SimError(Exception):
    """A request the simulator refuses, with the HTTP status Consul would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class _Node:
    name: str
    address: str
    datacenter: str
    tagged: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Node": self.name,
            "Address": self.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": dict(self.tagged),
            "Meta": dict(self.meta),
        }


def _weights(body: dict[str, Any]) -> dict[str, int]:
    given = body.get("Weights") or {}
    return {"Passing": int(given.get("Passing", 1)), "Warning": int(given.get("Warning", 1))}


def _service_json(body: dict[str, Any], create: int, modify: int) -> dict[str, Any]:
    name = str(body.get("Service") or body.get("Name") or "")
    if not name:
        raise SimError(400, "Missing service name")
    return {
        "ID": str(body.get("ID") or name),
        "Service": name,
        "Tags": list(body.get("Tags") or []),
        "Address": str(body.get("Address") or ""),
        "TaggedAddresses": dict(body.get("TaggedAddresses") or {}),
        "Meta": dict(body.get("Meta") or {}),
        "Port": int(body.get("Port") or 0),
        "Weights": _weights(body),
        "EnableTagOverride": bool(body.get("EnableTagOverride", False)),
        "Namespace": str(body.get("Namespace") or "default"),
        "Partition": str(body.get("Partition") or "default"),
        "CreateIndex": create,
        "ModifyIndex": modify,
    }


class ConsulState:
    """Catalog, health and config entries of one simulated datacenter."""

    def __init__(self, datacenter: str = "dc1", node: str = "sim-node") -> None:
        self.datacenter = datacenter
        self.local_node = node
        self.index = 1
        self.restores = 0  # reset_indexes calls: each abandons every blocked query
        self.key_index: dict[str, int] = {}
        self.nodes: dict[str, _Node] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}  # (node, service id)
        self.checks: dict[tuple[str, str], dict[str, Any]] = {}  # (node, check id)
        self.config: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, name)
        self.on_change: Callable[[set[str]], None] = lambda keys: None
        self._lock = threading.RLock()
        self.ensure_node(node, "127.0.0.1")

    # -- indexes ---------------------------------------------------------------------------

    def index_of(self, key: str) -> int:
        """The modify index of what key shows (at least 1, as Consul never answers 0)."""
        with self._lock:
            return max(self.key_index.get(key, 1), 1)

    def _touch(self, keys: Iterable[str]) -> set[str]:
        self.index += 1
        touched = set(keys)
        for key in touched:
            self.key_index[key] = self.index
        return touched

    def _commit(self, keys: set[str]) -> None:
        self.on_change(keys)

    def reset_indexes(self, to: int = 1) -> None:
        """Make every index go backwards (a snapshot restore or a new leader), and wake watchers.

        As Consul abandons its state store on a restore, every blocked query answers at once
        (with the lower index), whatever key it waits on."""
        with self._lock:
            self.restores += 1
            self.index = to
            keys = set(self.key_index)
            for key in keys:
                self.key_index[key] = min(self.key_index[key], to)
        self._commit(keys)

    # -- nodes, services and checks --------------------------------------------------------

    def ensure_node(
        self,
        name: str,
        address: str,
        *,
        tagged: dict[str, str] | None = None,
        meta: dict[str, str] | None = None,
    ) -> None:
        """Create or update a node with a passing serfHealth check.

        Like Consul, a write that changes nothing about the node bumps no index: re-registering
        a service with its node's usual data must not wake every watch of that node."""
        with self._lock:
            node = self.nodes.get(name)
            new = node is None
            if node is None:
                node = self.nodes[name] = _Node(name, address, self.datacenter)
            before = (node.address, node.tagged, node.meta)
            node.address = address
            node.tagged = dict(tagged or {"lan": address, "wan": address})
            node.meta = dict(meta or node.meta)
            if (name, SERF_CHECK) not in self.checks:
                self.checks[(name, SERF_CHECK)] = self._check_json(
                    name, {"CheckID": SERF_CHECK, "Name": "Serf Health Status"}, "", "passing"
                )
            if not new and before == (node.address, node.tagged, node.meta):
                return
            keys = self._touch([SERVICES_KEY, *self._service_keys_on(name)])
        self._commit(keys)

    def _service_keys_on(self, node: str) -> list[str]:
        return [service_key(s["Service"]) for (n, _), s in self.services.items() if n == node]

    def register_service(
        self, node: str, body: dict[str, Any], checks: list[dict[str, Any]] | None = None
    ) -> str:
        """Add or replace a service instance on node, with its checks; its service ID."""
        with self._lock:
            if node not in self.nodes:
                raise SimError(400, f"Unknown node {node!r}")
            sid = str(body.get("ID") or body.get("Service") or body.get("Name") or "")
            old = self.services.get((node, sid))
            create = old["CreateIndex"] if old else self.index + 1
            service = _service_json(body, create, self.index + 1)
            self.services[(node, service["ID"])] = service
            for i, check in enumerate(checks or ()):
                default_id = f"service:{service['ID']}" + (
                    f":{i + 1}" if len(checks or ()) > 1 else ""
                )
                check_id = str(check.get("CheckID") or check.get("ID") or default_id)
                status = str(check.get("Status") or "critical")
                self.checks[(node, check_id)] = self._check_json(
                    node, {**check, "CheckID": check_id}, service["ID"], status
                )
            keys = {SERVICES_KEY, service_key(service["Service"])}
            if old is not None:
                keys.add(service_key(old["Service"]))
            keys = self._touch(keys)
        self._commit(keys)
        return str(service["ID"])

    def deregister_service(self, node: str, service_id: str) -> None:
        """Remove a service instance and its checks; SimError 404 when there is none."""
        with self._lock:
            service = self.services.pop((node, service_id), None)
            if service is None:
                raise SimError(404, f"Unknown service ID {service_id!r}")
            for key in [
                k for k, c in self.checks.items() if k[0] == node and c["ServiceID"] == service_id
            ]:
                del self.checks[key]
            keys = self._touch({SERVICES_KEY, service_key(service["Service"])})
        self._commit(keys)

    def deregister_node(self, node: str) -> None:
        """Remove a node with everything on it."""
        with self._lock:
            keys = {SERVICES_KEY, *self._service_keys_on(node)}
            self.nodes.pop(node, None)
            self.services = {k: v for k, v in self.services.items() if k[0] != node}
            self.checks = {k: v for k, v in self.checks.items() if k[0] != node}
            keys = self._touch(keys)
        self._commit(keys)

    def _check_json(
        self, node: str, body: dict[str, Any], service_id: str, status: str
    ) -> dict[str, Any]:
        service = self.services.get((node, service_id)) if service_id else None
        definition = {
            k: body[k] for k in ("HTTP", "TCP", "TTL", "Interval", "Timeout") if k in body
        }
        return {
            "Node": node,
            "CheckID": str(body["CheckID"]),
            "Name": str(body.get("Name") or f"Service '{service_id}' check"),
            "Status": status if status in STATUSES else "critical",
            "Notes": str(body.get("Notes") or ""),
            "Output": "",
            "ServiceID": service_id,
            "ServiceName": service["Service"] if service else "",
            "ServiceTags": list(service["Tags"]) if service else [],
            "Type": "http" if "HTTP" in body else ("ttl" if "TTL" in body else ""),
            "Definition": {**definition, **dict(body.get("Definition") or {})},
            "Namespace": service["Namespace"] if service else "default",
            "CreateIndex": self.index + 1,
            "ModifyIndex": self.index + 1,
        }

    def set_check(
        self, check_id: str, status: str, output: str = "", node: str | None = None
    ) -> None:
        """Set a check's status (pass/warn/fail of the agent API, or a checker's result)."""
        if status not in STATUSES:
            raise SimError(400, f"invalid status {status!r}")
        with self._lock:
            key = (node or self.local_node, check_id)
            check = self.checks.get(key) or next(
                (c for (n, cid), c in self.checks.items() if cid == check_id), None
            )
            if check is None:
                raise SimError(404, f"CheckID {check_id!r} does not have associated TTL")
            if check["Status"] == status and check["Output"] == output:
                return  # Consul does not bump the index for a write that changes nothing
            check["Status"], check["Output"] = status, output
            keys = (
                {service_key(check["ServiceName"])}
                if check["ServiceName"]
                else {
                    service_key(s["Service"])
                    for (n, _), s in self.services.items()
                    if n == check["Node"]
                }
            )
            check["ModifyIndex"] = self.index + 1
            keys = self._touch(keys)
        self._commit(keys)

    def http_checks(self) -> list[tuple[str, str, str, str]]:
        """(node, check id, url, interval) of every HTTP check, for the simulator's checker."""
        with self._lock:
            return [
                (
                    n,
                    cid,
                    str(c["Definition"]["HTTP"]),
                    str(c["Definition"].get("Interval") or "10s"),
                )
                for (n, cid), c in self.checks.items()
                if "HTTP" in c["Definition"]
            ]

    # -- reads -------------------------------------------------------------------------------

    def catalog_services(self, ns: str | None = None) -> dict[str, list[str]]:
        """Service name -> the union of its instances' tags (GET /v1/catalog/services)."""
        with self._lock:
            out: dict[str, set[str]] = {}
            for service in self.services.values():
                if ns is None or service["Namespace"] == ns:
                    out.setdefault(service["Service"], set()).update(service["Tags"])
            return {name: sorted(tags) for name, tags in sorted(out.items())}

    def _instances(self, name: str, ns: str | None) -> list[tuple[_Node, dict[str, Any]]]:
        found = sorted(
            (key, s)
            for key, s in self.services.items()
            if s["Service"] == name and (ns is None or s["Namespace"] == ns)
        )
        return [(self.nodes[node], s) for (node, _), s in found]

    def _checks_of(self, node: str, service_id: str) -> list[dict[str, Any]]:
        return [
            dict(c)
            for (n, _), c in sorted(self.checks.items())
            if n == node and c["ServiceID"] in ("", service_id)
        ]

    def health_service(
        self, name: str, *, passing: bool = False, ns: str | None = None
    ) -> list[Any]:
        """GET /v1/health/service/<name>: Node + Service + Checks per instance."""
        with self._lock:
            out = []
            for node, service in self._instances(name, ns):
                checks = self._checks_of(node.name, service["ID"])
                if passing and any(c["Status"] != "passing" for c in checks):
                    continue
                out.append({"Node": node.json(), "Service": dict(service), "Checks": checks})
            return out

    def catalog_service(self, name: str, ns: str | None = None) -> list[dict[str, Any]]:
        """GET /v1/catalog/service/<name>: flat Service*-prefixed records."""
        with self._lock:
            return [_flat(node, s) for node, s in self._instances(name, ns)]

    # -- config entries ----------------------------------------------------------------------

    def put_config(self, entry: dict[str, Any]) -> None:
        """PUT /v1/config: create or replace the entry named by its Kind and Name."""
        kind, name = str(entry.get("Kind") or ""), str(entry.get("Name") or "")
        if not kind or not name:
            raise SimError(400, "Kind and Name are required")
        with self._lock:
            old = self.config.get((kind, name))
            create = old["CreateIndex"] if old else self.index + 1
            self.config[(kind, name)] = {
                **entry,
                "CreateIndex": create,
                "ModifyIndex": self.index + 1,
            }
            keys = self._touch({config_key(kind)})
        self._commit(keys)

    def delete_config(self, kind: str, name: str) -> None:
        """DELETE /v1/config/<kind>/<name> (deleting a missing entry is not an error)."""
        with self._lock:
            if self.config.pop((kind, name), None) is None:
                return
            keys = self._touch({config_key(kind)})
        self._commit(keys)

    def list_config(self, kind: str) -> list[dict[str, Any]]:
        """GET /v1/config/<kind>, sorted by name."""
        with self._lock:
            return [dict(e) for (k, _), e in sorted(self.config.items()) if k == kind]

    def get_config(self, kind: str, name: str) -> dict[str, Any]:
        """GET /v1/config/<kind>/<name>; SimError 404 when absent."""
        with self._lock:
            entry = self.config.get((kind, name))
            if entry is None:
                raise SimError(404, f"Config entry not found for {kind!r} / {name!r}")
            return dict(entry)


def _flat(node: _Node, s: dict[str, Any]) -> dict[str, Any]:
    return {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": dict(node.tagged),
        "NodeMeta": dict(node.meta),
        "ServiceAddress": s["Address"],
        "ServiceEnableTagOverride": s["EnableTagOverride"],
        "ServiceID": s["ID"],
        "ServiceName": s["Service"],
        "ServicePort": s["Port"],
        "ServiceMeta": dict(s["Meta"]),
        "ServiceTaggedAddresses": dict(s["TaggedAddresses"]),
        "ServiceTags": list(s["Tags"]),
        "ServiceWeights": dict(s["Weights"]),
        "ServiceProxy": {
            "DestinationServiceName": "",
            "DestinationServiceID": "",
            "LocalServiceAddress": "",
            "LocalServicePort": 0,
            "Config": None,
            "Upstreams": None,
        },
        "ServiceConnect": {"Native": False, "Proxy": None},
        "Namespace": s["Namespace"],
        "CreateIndex": s["CreateIndex"],
        "ModifyIndex": s["ModifyIndex"],
    }
