"""The DNS proxy's name table: a function of the MeshSnapshot, kept up to date by host.

Which names answer, and with what (after Istio's pkg/dns: server/name_table.go builds the
table, client/dns.go expands the names):
- every mesh host with an address: its ServiceEntry `addresses` (IPs; a host whose addresses
  are all CIDRs is left out), its Kubernetes ClusterIPs, else its automatic VIP
  (normalize/vips.py; the IPv6 one only with `dual_stack`);
- a headless host (resolution NONE, or a Kubernetes Service without ClusterIP): the
  addresses of its healthy endpoints that are IPs; none, and it is left out;
- a host `<name>.<ns>.svc.<domain_suffix>` also answers as `<name>.<ns>`, `<name>.<ns>.svc`,
  and as `<name>` when `<ns>` is this node's namespace. (Istio does this for Kubernetes hosts
  only; here any source's host of that shape, as VMs often declare them as ServiceEntries.)
- each of those names followed by the first search domain (a resolver tries it first when the
  name has fewer dots than `ndots`) answers a CNAME to the name, with its addresses;
- a wildcard host (`*.example.com` with addresses) answers for the names under it.
A name's own host comes before a short form, which comes before a search-domain form;
between hosts, the name that sorts first. Names are compared in lower case.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshagent.model.services import Endpoint, Resolution, Service
from meshagent.model.snapshot import MeshSnapshot

RANK_HOST, RANK_SHORT, RANK_SEARCH = 0, 1, 2


@dataclass(frozen=True, slots=True)
class TableOptions:
    """What, besides the snapshot, decides the names: this node's namespace (for `<name>`),
    the mesh domain suffix, the host's search domains, and whether IPv6 VIPs are answered."""

    namespace: str = "default"
    domain_suffix: str = "cluster.local"
    search_domains: tuple[str, ...] = ()
    dual_stack: bool = False


@dataclass(frozen=True, slots=True)
class Record:
    """What one name answers: its IPv4 and IPv6 addresses, and for a search-domain form the
    name it is a CNAME of ("" otherwise). Names end with a dot, in lower case."""

    host: str
    v4: tuple[str, ...]
    v6: tuple[str, ...]
    cname: str = ""


@dataclass(slots=True)
class _Name:
    """The records that hosts give one name, and the one that answers."""

    offers: dict[str, tuple[int, Record]] = field(default_factory=dict)  # host -> (rank, rec)
    best: Record | None = None

    def choose(self) -> None:
        offers = self.offers
        if len(offers) == 1:
            self.best = next(iter(offers.values()))[1]
        else:
            self.best = min(offers.items(), key=lambda o: (o[1][0], o[0]))[1][1]


def _version(text: str) -> int:
    """4 or 6 when text is an IP address, else 0 (inet_pton: a tenth of ipaddress's cost)."""
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        try:
            socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        return version
    return 0


def _split(addresses: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    v4: dict[str, None] = {}
    v6: dict[str, None] = {}
    for text in addresses:
        version = _version(text)
        if version == 4:
            v4[text] = None
        elif version == 6:
            v6[str(ipaddress.IPv6Address(text))] = None  # one spelling of each
    return tuple(v4), tuple(v6)


def is_headless(service: Service) -> bool:
    """Resolution NONE, or a Kubernetes Service without ClusterIP: answered by endpoints."""
    if service.addresses or service.host.startswith("*"):
        return False
    if service.resolution is Resolution.NONE:
        return True
    prov = service.provenance
    return (
        prov is not None
        and prov.source == "kubernetes"
        and prov.kind == "Service"
        and service.resolution is Resolution.STATIC
    )


def host_addresses(
    service: Service, endpoints: Iterable[Endpoint], options: TableOptions
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (IPv4, IPv6) addresses host's name answers; both empty: not in the table."""
    if service.addresses:
        return _split(service.addresses)
    if service.auto_addresses:
        v4, v6 = _split(service.auto_addresses)
        return v4, v6 if options.dual_stack else ()
    if is_headless(service):
        return _split(sorted(e.address for e in endpoints if e.healthy))
    return (), ()


def host_names(host: str, options: TableOptions) -> list[tuple[str, int, str]]:
    """(name, rank, cname target or "") of every name host answers as (module docstring)."""
    host = host.lower().rstrip(".")
    names = [(host + ".", RANK_HOST)]
    suffix = f".svc.{options.domain_suffix.lower()}"
    if host.endswith(suffix) and not host.startswith("*"):
        parts = host[: -len(suffix)].split(".")
        if len(parts) == 2 and all(parts):
            name, ns = parts
            names += [(f"{name}.{ns}.", RANK_SHORT), (f"{name}.{ns}.svc.", RANK_SHORT)]
            if ns == options.namespace.lower():
                names.append((f"{name}.", RANK_SHORT))
    out = [(n, rank, "") for n, rank in names]
    search = options.search_domains[0].lower().strip(".") if options.search_domains else ""
    if search and not host.startswith("*"):
        plain = {n for n, _ in names}
        for n, _ in names:
            expanded = f"{n}{search}."
            if expanded not in plain:
                out.append((expanded, RANK_SEARCH, n))
    return out


class NameTable:
    """Names to records, for the server to read; update() follows the mesh snapshots.

    Only the event loop's thread uses it (updates are O(changed hosts), done between queries).
    """

    def __init__(self, options: TableOptions | None = None) -> None:
        self.options = options or TableOptions()
        self._names: dict[str, _Name] = {}
        self._given: dict[str, list[str]] = {}  # host -> the names it offers
        self._services: Mapping[str, Service] = {}
        self._endpoints: Mapping[str, tuple[Endpoint, ...]] = {}
        self._version: int | None = None
        self.loaded = False  # whether a snapshot was applied

    def __len__(self) -> int:
        return len(self._names)

    def items(self) -> list[tuple[str, Record]]:
        """Every name and the record it answers, sorted by name (for the debug page)."""
        return sorted((n, e.best) for n, e in self._names.items() if e.best is not None)

    def lookup(self, name: str) -> Record | None:
        """The record of name (lower case, ending with a dot), exact or under a wildcard."""
        entry = self._names.get(name)
        if entry is not None:
            return entry.best
        labels = name.split(".")
        for i in range(1, len(labels) - 1):
            entry = self._names.get("*." + ".".join(labels[i:]))
            if entry is not None:
                return entry.best
        return None

    def changed_hosts(self, snapshot: MeshSnapshot) -> list[str]:
        """The hosts whose names update(snapshot) would look at again."""
        services, endpoints = snapshot.services, snapshot.endpoints
        if self.loaded and services is self._services and endpoints is self._endpoints:
            return []
        changes = snapshot.changes
        if self.loaded and changes is not None and changes.base_version == self._version:
            return list(changes.services | changes.endpoints)
        old_s, old_e = self._services, self._endpoints  # another lineage, or the first
        return [
            h
            for h in {*old_s, *services, *old_e, *endpoints}
            if old_s.get(h) is not services.get(h) or old_e.get(h) is not endpoints.get(h)
        ]

    def update(self, snapshot: MeshSnapshot, hosts: list[str] | None = None) -> int:
        """Follow snapshot; the number of hosts looked at again (0: nothing changed).
        hosts: changed_hosts(snapshot), when the caller has it already."""
        if hosts is None:
            hosts = self.changed_hosts(snapshot)
        if not hosts and self.loaded:
            return 0
        services, endpoints = snapshot.services, snapshot.endpoints
        for host in hosts:
            self._refile(host, services.get(host), endpoints.get(host, ()))
        self._services, self._endpoints = services, endpoints
        self._version, self.loaded = snapshot.version, True
        return len(hosts)

    def _refile(self, host: str, service: Service | None, endpoints: Iterable[Endpoint]) -> None:
        for name in self._given.pop(host, ()):
            offered = self._names[name]
            del offered.offers[host]
            if offered.offers:
                offered.choose()
            else:
                del self._names[name]
        if service is None:
            return
        v4, v6 = host_addresses(service, endpoints, self.options)
        if not v4 and not v6:
            return
        given = []
        names = self._names
        plain = Record(host, v4, v6)
        for name, rank, target in host_names(host, self.options):
            entry = names.get(name)
            record = Record(host, v4, v6, target) if target else plain
            if entry is None:
                names[name] = _Name({host: (rank, record)}, record)
            else:
                entry.offers[host] = (rank, record)
                entry.choose()
            given.append(name)
        self._given[host] = given


def build_table(snapshot: MeshSnapshot, options: TableOptions | None = None) -> NameTable:
    """A table of snapshot from scratch."""
    table = NameTable(options)
    table.update(snapshot)
    return table
