"""The data of the Consul API simulator: nodes, services, checks, config entries and indexes.

No networking here: `consul_sim` serves this over HTTP. Every write bumps one raft-like index
and stamps it on the "watch keys" it touches, so that a blocking query on one endpoint wakes
only when something that endpoint shows has changed (Consul's per-table indexes, simplified
to per-endpoint ones). Response shapes follow Consul's documented API (see the examples in
../shared/corpus/consul). Thread-safe: one lock guards everything; `on_change` is called
with the touched keys after each write, outside the lock.

Indexed like Consul's state store, so that a read costs what it returns, not the size of the
datacenter: instances by service name and by node, checks by (node, service ID), each
service's tag list. (At 10k services a scan per query made the simulator, not the client it
stands in for, what a benchmark measured.)
"""

from __future__ import annotations

import bisect
import json
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from meshagent.testing.consul_gateways import (
    GATEWAY_KINDS,
    GATEWAY_SERVICES_KEY,
    entry_problem,
    gateway_links,
)

STATUSES = ("passing", "warning", "critical")
SERF_CHECK = "serfHealth"
SERVICES_KEY = "services"
CHECKS_KEY = "checks"  # every check of the datacenter (/v1/health/state/<state>)


def service_key(name: str) -> str:
    """The watch key of one service's catalog and health endpoints."""
    return f"svc:{name}"


def config_key(kind: str) -> str:
    """The watch key of one config-entry kind."""
    return f"config:{kind}"


def _config_keys(kind: str) -> set[str]:
    """The watch keys a write of a config entry of kind touches."""
    keys = {config_key(kind)}
    if kind in GATEWAY_KINDS:
        keys.add(GATEWAY_SERVICES_KEY)
    return keys


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
        # Indexes over services and checks (kept by _add_service/_drop_service/_put_check).
        self._by_name: dict[str, set[tuple[str, str]]] = {}  # service name -> services keys
        self._on_node: dict[str, set[tuple[str, str]]] = {}  # node -> services keys
        self._checks_on: dict[tuple[str, str], set[str]] = {}  # (node, service ID or "") -> ids
        self._tags: dict[str, list[str]] = {}  # service name -> its instances' tags, sorted
        # /v1/health/state answers: each check's JSON, encoded once per change of that check
        self._check_bytes: dict[tuple[str, str], bytes] = {}
        self._check_order: list[tuple[str, str]] | None = None  # sorted keys of checks
        self._catalog_json: bytes | None = None  # /v1/catalog/services, encoded
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
                self._put_check(
                    self._check_json(
                        name, {"CheckID": SERF_CHECK, "Name": "Serf Health Status"}, "", "passing"
                    )
                )
            if not new and before == (node.address, node.tagged, node.meta):
                return
            keys = self._touch(
                [SERVICES_KEY, *([CHECKS_KEY] if new else []), *self._service_keys_on(name)]
            )
        self._commit(keys)

    def _service_keys_on(self, node: str) -> list[str]:
        names = {self.services[k]["Service"] for k in self._on_node.get(node, ())}
        return [service_key(name) for name in sorted(names)]

    # -- the indexes -------------------------------------------------------------------------

    def _add_service(self, node: str, service: dict[str, Any]) -> None:
        key = (node, str(service["ID"]))
        old = self.services.get(key)
        if old is not None:
            self._drop_service(key)
        self.services[key] = service
        self._by_name.setdefault(service["Service"], set()).add(key)
        self._on_node.setdefault(node, set()).add(key)
        self._retag(service["Service"])

    def _drop_service(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """Remove one instance (not its checks) from services and the indexes."""
        service = self.services.pop(key, None)
        if service is None:
            return None
        name = service["Service"]
        self._by_name.get(name, set()).discard(key)
        if not self._by_name.get(name):
            self._by_name.pop(name, None)
        self._on_node.get(key[0], set()).discard(key)
        self._retag(name)
        return service

    def _retag(self, name: str) -> None:
        keys = self._by_name.get(name)
        tags = sorted({t for k in keys for t in self.services[k]["Tags"]}) if keys else None
        if tags != self._tags.get(name):
            self._catalog_json = None
        if tags is None:
            self._tags.pop(name, None)
        else:
            self._tags[name] = tags

    def _put_check(self, check: dict[str, Any]) -> None:
        key = (str(check["Node"]), str(check["CheckID"]))
        old = self.checks.get(key)
        if old is not None:
            self._checks_on.get((key[0], old["ServiceID"]), set()).discard(key[1])
        elif self._check_order is not None:
            bisect.insort(self._check_order, key)
        self._check_bytes.pop(key, None)
        self.checks[key] = check
        self._checks_on.setdefault((key[0], check["ServiceID"]), set()).add(key[1])

    def _drop_checks(self, node: str, service_id: str) -> None:
        for check_id in self._checks_on.pop((node, service_id), set()):
            if self.checks.pop((node, check_id), None) is not None:
                self._check_bytes.pop((node, check_id), None)
                if self._check_order is not None:
                    at = bisect.bisect_left(self._check_order, (node, check_id))
                    del self._check_order[at]

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
            self._add_service(node, service)
            for i, check in enumerate(checks or ()):
                default_id = f"service:{service['ID']}" + (
                    f":{i + 1}" if len(checks or ()) > 1 else ""
                )
                check_id = str(check.get("CheckID") or check.get("ID") or default_id)
                status = str(check.get("Status") or "critical")
                self._put_check(
                    self._check_json(node, {**check, "CheckID": check_id}, service["ID"], status)
                )
            keys = {SERVICES_KEY, service_key(service["Service"])}
            if old is not None:
                keys.add(service_key(old["Service"]))
            if checks or self._checks_on.get((node, sid)):
                keys.add(CHECKS_KEY)
            keys = self._touch(keys)
        self._commit(keys)
        return str(service["ID"])

    def deregister_service(self, node: str, service_id: str) -> None:
        """Remove a service instance and its checks; SimError 404 when there is none."""
        with self._lock:
            service = self._drop_service((node, service_id))
            if service is None:
                raise SimError(404, f"Unknown service ID {service_id!r}")
            touched = {SERVICES_KEY, service_key(service["Service"])}
            if self._checks_on.get((node, service_id)):
                touched.add(CHECKS_KEY)
            self._drop_checks(node, service_id)
            keys = self._touch(touched)
        self._commit(keys)

    def deregister_node(self, node: str) -> None:
        """Remove a node with everything on it."""
        with self._lock:
            keys = {SERVICES_KEY, CHECKS_KEY, *self._service_keys_on(node)}
            self.nodes.pop(node, None)
            for key in sorted(self._on_node.pop(node, set())):
                self._drop_service(key)
                self._drop_checks(*key)
            self._drop_checks(node, "")
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
            self._check_bytes.pop((check["Node"], check["CheckID"]), None)
            keys = {CHECKS_KEY} | (
                {service_key(check["ServiceName"])}
                if check["ServiceName"]
                else set(self._service_keys_on(check["Node"]))
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
            if ns is None:
                return {name: list(self._tags[name]) for name in sorted(self._tags)}
            out: dict[str, set[str]] = {}
            for service in self.services.values():
                if service["Namespace"] == ns:
                    out.setdefault(service["Service"], set()).update(service["Tags"])
            return {name: sorted(tags) for name, tags in sorted(out.items())}

    def catalog_services_json(self) -> bytes:
        """GET /v1/catalog/services (all namespaces) as JSON bytes, encoded again only after a
        service's tags or existence changed: re-registering an instance, the usual change,
        leaves it as it was (as Consul's Go encoder, this answer must cost a 10k-service
        simulator little)."""
        with self._lock:
            if self._catalog_json is None:
                self._catalog_json = json.dumps(
                    {name: self._tags[name] for name in sorted(self._tags)}
                ).encode()
            return self._catalog_json

    def _instances(self, name: str, ns: str | None) -> list[tuple[_Node, dict[str, Any]]]:
        found = [(key, self.services[key]) for key in sorted(self._by_name.get(name, ()))]
        return [
            (self.nodes[node], s) for (node, _), s in found if ns is None or s["Namespace"] == ns
        ]

    def _checks_of(self, node: str, service_id: str) -> list[dict[str, Any]]:
        none: set[str] = set()
        ids = self._checks_on.get((node, ""), none) | self._checks_on.get((node, service_id), none)
        return [dict(self.checks[(node, cid)]) for cid in sorted(ids)]

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

    def health_state(self, state: str) -> bytes:
        """GET /v1/health/state/<state> (any, passing, warning, critical), as JSON bytes.

        Every check of the datacenter (Consul's /v1/health/state/any, the answer watchers of a
        whole catalog block on), so each check's JSON is kept encoded until that check changes:
        Consul (Go) encodes 10k checks in milliseconds, and an answer re-encoded whole each
        time would make the simulator what a benchmark measures."""
        if state not in ("any", *STATUSES):
            raise SimError(400, f"Invalid state {state!r}")
        with self._lock:
            if self._check_order is None:
                self._check_order = sorted(self.checks)
            parts = []
            for key in self._check_order:
                check = self.checks[key]
                if state != "any" and check["Status"] != state:
                    continue
                encoded = self._check_bytes.get(key)
                if encoded is None:
                    encoded = self._check_bytes[key] = json.dumps(check).encode()
                parts.append(encoded)
            return b"[" + b",".join(parts) + b"]"

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
        problem = entry_problem(entry)
        if problem:
            raise SimError(500, f"invalid config entry {kind}/{name}: {problem}")
        with self._lock:
            old = self.config.get((kind, name))
            create = old["CreateIndex"] if old else self.index + 1
            self.config[(kind, name)] = {
                **entry,
                "CreateIndex": create,
                "ModifyIndex": self.index + 1,
            }
            keys = self._touch(_config_keys(kind))
        self._commit(keys)

    def delete_config(self, kind: str, name: str) -> None:
        """DELETE /v1/config/<kind>/<name> (deleting a missing entry is not an error)."""
        with self._lock:
            if self.config.pop((kind, name), None) is None:
                return
            keys = self._touch(_config_keys(kind))
        self._commit(keys)

    def list_config(self, kind: str) -> list[dict[str, Any]]:
        """GET /v1/config/<kind>, sorted by name."""
        with self._lock:
            return [dict(e) for (k, _), e in sorted(self.config.items()) if k == kind]

    def gateway_services(self, gateway: str) -> list[dict[str, Any]]:
        """GET /v1/catalog/gateway-services/<gateway>: the services its entries link."""
        with self._lock:
            return [
                link
                for (kind, name), entry in sorted(self.config.items())
                if kind in GATEWAY_KINDS and name == gateway
                for link in gateway_links(entry)
            ]

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
