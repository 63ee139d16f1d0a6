"""The Normalizer (Galley's role): raw resources in, one consistent MeshSnapshot out.

It keeps the last valid version of every resource (an invalid edit never replaces a valid
one), resolves conflicts between resources that claim the same host, and rebuilds only
what a change touches: model objects of unchanged resources are reused as they are, so
the translator, which caches by identity, does O(change) work too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from meshagent.model.credentials import Credential
from meshagent.model.extensions import EnvoyFilter, WasmPlugin
from meshagent.model.gateway import Gateway
from meshagent.model.routing import VirtualService
from meshagent.model.security import AuthzPolicy, PeerAuthn, RequestAuthn
from meshagent.model.services import Endpoint, Service, Workload
from meshagent.model.sidecar import Sidecar
from meshagent.model.snapshot import MeshSnapshot, SnapshotChanges
from meshagent.model.source import Diagnostic, RawResource, SourceEvent
from meshagent.model.telemetry import Telemetry
from meshagent.model.traffic import DestinationRule
from meshagent.normalize.consul import ConsulMapping, convert_consul, is_consul
from meshagent.normalize.consul.chain import chain_role, compose
from meshagent.normalize.convert import Converted, ConvertedServiceEntry, convert
from meshagent.normalize.convert.services import workload_endpoint
from meshagent.normalize.credentials import convert_secret, credential_diagnostic, is_secret
from meshagent.normalize.delegation import (
    is_delegate,
    is_root,
    merge_root,
    missing_delegates,
)
from meshagent.normalize.kubernetes import KubeJoin, KubeMapping, is_kube_core
from meshagent.normalize.ownership import Claims, Key
from meshagent.normalize.references import ReferenceIndex, Unresolved, as_written
from meshagent.normalize.schema.core import Issue
from meshagent.normalize.selection import SelectorIndex
from meshagent.normalize.sidecars import sidecar_conflict
from meshagent.normalize.validate import check_document, diagnostic, display_name, is_supported
from meshagent.normalize.vips import VipAllocator

# One resource may convert to several model objects (a Consul gateway entry: its Gateway and
# the VirtualServices and DestinationRules bound to it); each is recorded as if on its own.
Stored = Converted | tuple[Converted, ...]


def _rule_for(converted: Stored, host: str) -> DestinationRule:
    """The mesh-wide DestinationRule for host among what one resource converted to."""
    parts = converted if isinstance(converted, tuple) else (converted,)
    found = [p for p in parts if isinstance(p, DestinationRule) and p.host == host]
    assert found, f"no DestinationRule for {host}"
    return next((r for r in found if r.workload_selector is None), found[0])


@dataclass(slots=True)
class _Entry:
    """An accepted resource: the raw document and its converted model objects."""

    raw: RawResource
    converted: Stored


@dataclass(slots=True)
class _Dirty:
    """What one apply touched, so that only that is recomputed."""

    hosts: set[str] = field(default_factory=set)
    dr_hosts: set[str] = field(default_factory=set)
    selectors: set[Key] = field(default_factory=set)  # ServiceEntries whose selection changed
    upserted: set[Key] = field(default_factory=set)
    chain: bool = False  # a Consul router or splitter changed (consul/chain.py)
    delegation: bool = False  # a root or delegate VirtualService changed (delegation.py)
    sidecars: bool = False  # a Sidecar was added, replaced or removed
    # snapshot map name -> keys whose value was added, replaced or removed
    changed: dict[str, set[str]] = field(default_factory=dict)

    def mark(self, name: str, key: str) -> None:
        """Record that key of the snapshot map name changed."""
        keys = self.changed.get(name)
        if keys is None:
            keys = self.changed[name] = set()
        keys.add(key)


def _hosts(converted: ConvertedServiceEntry) -> tuple[str, ...]:
    services = converted.services
    if len(services) == 1:  # the usual entry: one host
        return (services[0].host,)
    return tuple([s.host for s in services])


_SECURITY_MAPS: dict[type, str] = {
    PeerAuthn: "peer_authentications",
    AuthzPolicy: "authorization_policies",
    RequestAuthn: "request_authentications",
    EnvoyFilter: "envoy_filters",  # not security, but kept the same way: by namespace/name
    WasmPlugin: "wasm_plugins",
    Telemetry: "telemetries",  # kept the same way: by "namespace/name", selected per proxy
}
_KEYED = PeerAuthn | AuthzPolicy | RequestAuthn | EnvoyFilter | WasmPlugin | Telemetry


def _security_key(converted: _KEYED) -> tuple[str, str]:
    """The snapshot map a security policy lives in, and its key there."""
    return _SECURITY_MAPS[type(converted)], f"{converted.namespace}/{converted.name}"


def _same_material(a: Credential, b: Credential) -> bool:
    return (a.namespace, a.name, a.cert_chain_pem, a.private_key_pem, a.ca_cert_pem, a.crl_pem) == (
        b.namespace,
        b.name,
        b.cert_chain_pem,
        b.private_key_pem,
        b.ca_cert_pem,
        b.crl_pem,
    )


def _same(old: tuple[Endpoint, ...] | None, new: tuple[Endpoint, ...]) -> bool:
    if old is None or len(old) != len(new):
        return False
    return all(a is b for a, b in zip(old, new, strict=True))


class Normalizer:
    """Turns SourceEvents into MeshSnapshots; one instance per agent, not thread-safe."""

    def __init__(
        self,
        *,
        domain_suffix: str = "cluster.local",
        default_namespace: str = "default",
        root_namespace: str = "istio-system",
        consul: ConsulMapping | None = None,
        kubernetes: KubeMapping | None = None,
    ) -> None:
        self.domain_suffix = domain_suffix
        self.consul = consul or ConsulMapping()  # how Consul resources map (normalize.consul)
        self.default_namespace = default_namespace
        self.kube = KubeJoin(kubernetes or KubeMapping())  # Services + EndpointSlices
        # Security policies in this namespace without a selector apply mesh-wide (Istio's
        # meshConfig.rootNamespace); the translator reads it from here.
        self.root_namespace = root_namespace
        self._security: dict[str, dict[str, Any]] = {
            "peer_authentications": {},
            "authorization_policies": {},
            "request_authentications": {},
            "envoy_filters": {},
            "wasm_plugins": {},
            "telemetries": {},
        }
        self._entries: dict[Key, _Entry] = {}
        self._batch = 0
        self._se_claims = Claims()
        self._dr_claims = Claims()
        self._selection = SelectorIndex()  # workloadSelectors and WorkloadEntry labels
        self._workload_endpoints: dict[Key, Endpoint] = {}
        self._services: dict[str, Service] = {}
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self._virtual_services: dict[str, VirtualService] = {}
        self._destination_rules: dict[str, DestinationRule] = {}
        self._workload_rules: dict[str, DestinationRule] = {}  # with a workloadSelector
        self._redirects: dict[str, str] = {}  # host -> the host its rule redirects to
        self._chained: dict[str, VirtualService] = {}  # Consul routers/splitters as converted
        # VirtualService delegation: delegates (no hosts, never published) and roots as
        # converted (published merged with their delegates), by "namespace/name".
        self._delegates: dict[str, VirtualService] = {}
        self._roots: dict[str, VirtualService] = {}
        self._workloads: dict[str, Workload] = {}
        # Credentials (normalize/credentials.py): the last valid one of each Secret, by its
        # key; the one serving each "namespace/name" (the oldest, when sources disagree).
        self._secrets: dict[Key, Credential] = {}
        self._credential_claims = Claims()
        self._credentials: dict[str, Credential] = {}
        self._gateways: dict[str, Gateway] = {}
        self._sidecars: dict[str, Sidecar] = {}
        self._vips = VipAllocator()  # automatic VIPs of hosts without addresses (vips.py)
        self._snapshot = MeshSnapshot()
        # References that cannot work, by what identifies them (not their line, which moves).
        self._unresolved: dict[tuple[str, ...], Unresolved] = {}
        self._references = ReferenceIndex()
        # Keys whose accepted document may have changed since the last accepted_changes().
        self._touched: set[Key] = set()

    @property
    def snapshot(self) -> MeshSnapshot:
        """The current snapshot (the one the last apply returned)."""
        return self._snapshot

    def accepted(self, source: str) -> dict[Key, RawResource]:
        """The raw document of every resource of source that serves now (its last valid
        version), by key; a new dict, the resources are shared (they are immutable)."""
        return {key: e.raw for key, e in self._entries.items() if key[0] == source}

    def accepted_of(self, keys: Iterable[Key]) -> dict[Key, RawResource | None]:
        """The raw document serving now for each of keys (None: none), at the cost of keys."""
        entries = self._entries
        out: dict[Key, RawResource | None] = {}
        for key in keys:
            entry = entries.get(key)
            out[key] = entry.raw if entry is not None else None
        return out

    def accepted_changes(self) -> set[Key]:
        """The keys whose accepted document (accepted_of) may have changed since the last
        call, which starts afresh: for one consumer that keeps a copy up to date (the agent's
        analysis), at the cost of the change."""
        touched, self._touched = self._touched, set()
        return touched

    def claimants(self, host: str) -> tuple[list[RawResource], list[RawResource]]:
        """The documents that claim host as a service and as a DestinationRule host, each
        list winner first (the others lost the precedence conflict); for explaining config."""
        out: list[list[RawResource]] = []
        for claims in (self._se_claims, self._dr_claims):
            winner = claims.winner(host)
            keys = [] if winner is None else [winner, *claims.losers(host)]
            out.append([e.raw for k in keys if (e := self._entries.get(k)) is not None])
        return out[0], out[1]

    def apply(self, events: Iterable[SourceEvent]) -> tuple[MeshSnapshot, list[Diagnostic]]:
        """Apply batches of upserts and deletes; the new snapshot and what went wrong.

        Adapter errors pass through. The version grows only when the snapshot changed.
        """
        self._batch += 1
        dirty = _Dirty()
        diagnostics: list[Diagnostic] = []
        for event in events:
            diagnostics.extend(event.errors)
            for key in event.deletes:
                self._delete(key, dirty)
            for raw in event.upserts:
                self._upsert(raw, dirty, diagnostics)
        self._recompute(dirty, diagnostics)
        if dirty.changed:
            self._publish(dirty.changed)
            diagnostics.extend(self._new_unresolved())
        return self._snapshot, diagnostics

    # -- references that cannot work ---------------------------------------------------

    def references(self) -> list[Diagnostic]:
        """Warnings for every reference of the current snapshot that cannot work."""
        return [self._reference_warning(u) for u in self._unresolved.values()]

    def _new_unresolved(self) -> list[Diagnostic]:
        """Warnings for unresolved references that were not there at the last check (the
        index re-checks only what names a changed host: nothing, for an endpoint change)."""
        found: dict[tuple[str, ...], Unresolved] = {
            (p.source, p.kind, p.namespace, p.name, u.path, u.reason): u
            for u in self._references.update(self._snapshot)
            if (p := u.provenance)
        }
        new = [u for key, u in found.items() if key not in self._unresolved]
        self._unresolved = found
        return [self._reference_warning(u) for u in new]

    def _reference_warning(self, found: Unresolved) -> Diagnostic:
        prov = found.provenance
        entry = self._entries.get((prov.source, prov.kind, prov.namespace, prov.name))
        if entry is None:  # the document named no namespace
            entry = self._entries.get((prov.source, prov.kind, "", prov.name))
        if entry is None:
            name = f"{prov.namespace}/{prov.name}"
            return Diagnostic(
                "warning", prov.source, prov.location, prov.kind, name, found.path, found.reason
            )
        path = as_written(entry.raw.body, found.path)
        return diagnostic(entry.raw, Issue("warning", path, found.reason))

    # -- accepting and removing resources ------------------------------------------------

    def _upsert(self, raw: RawResource, dirty: _Dirty, out: list[Diagnostic]) -> None:
        if is_secret(raw):
            self._upsert_secret(raw, dirty, out)
            return
        if is_kube_core(raw):
            report = out if raw.kind == "Service" else []  # a Service's issues, once a write
            for ref in self.kube.upsert(raw):
                self._kube_rebuild(ref, dirty, report)
            return
        key = raw.key
        old = self._entries.get(key)
        if old is not None and old.raw.body == raw.body:
            self._touched.add(key)
            old.raw = raw  # same content, maybe moved in its file: keep the model objects
            return
        converted = self._check_and_convert(raw, out)
        if converted is None:
            return  # rejected or ignored: the last valid version (if any) keeps serving
        if old is not None:
            self._retract(key, old, dirty, forget=False)
        self._touched.add(key)
        self._entries[key] = _Entry(raw, converted)
        self._assert(key, converted, dirty)
        dirty.upserted.add(key)

    def _check_and_convert(self, raw: RawResource, out: list[Diagnostic]) -> Stored | None:
        """raw's model objects, or None when it is invalid or ignored (issues go to out)."""
        if is_consul(raw):
            result, problems = convert_consul(raw, self.consul)
            out.extend(diagnostic(raw, i) for i in problems)
            return None if problems.has_errors else result
        issues = check_document(raw)
        # (An unsupported kind always has an issue: a clean document is a supported one.)
        if issues:
            out.extend(diagnostic(raw, i) for i in issues)
            if issues.has_errors or not is_supported(raw):
                return None
        converted, problems = convert(
            raw, domain_suffix=self.domain_suffix, default_namespace=self.default_namespace
        )
        if problems:
            out.extend(diagnostic(raw, i) for i in problems)
        return None if problems.has_errors else converted

    # -- credentials (Secrets) -------------------------------------------------------------

    def _upsert_secret(self, raw: RawResource, dirty: _Dirty, out: list[Diagnostic]) -> None:
        """Accept a valid credential; an invalid one is reported and the last valid version
        of that Secret keeps serving. A Kubernetes Secret that holds no credential keys is not
        a credential (unless it was one: then losing its keys is an error)."""
        key = raw.key
        credential, issues = convert_secret(raw, default_namespace=self.default_namespace)
        old = self._secrets.get(key)
        if credential is None and not issues and old is not None:
            issues.error("data", "no longer holds a certificate or CA bundle; the last one serves")
        out.extend(credential_diagnostic(raw, i) for i in issues)
        if credential is None:
            return
        if old is not None and _same_material(old, credential):
            credential = old  # same content (a new resourceVersion): nothing to re-send
        self._secrets[key] = credential
        self._settle_credential(key, dirty, forget=False)
        winner = self._credential_claims.winner(credential.key)
        if winner is not None and winner != key:
            reason = (
                f"credential {credential.key} is already defined by {winner[0]} (older); "
                "this definition is ignored"
            )
            out.append(credential_diagnostic(raw, Issue("warning", "metadata.name", reason)))

    def _settle_credential(self, key: Key, dirty: _Dirty, *, forget: bool) -> None:
        """Re-pick the credential of key's "namespace/name" after key changed or went."""
        current = self._secrets.get(key)
        name = (
            current.key if current is not None else f"{key[2] or self.default_namespace}/{key[3]}"
        )
        if current is None:
            self._credential_claims.release(key, (name,), forget=forget)
        else:
            self._credential_claims.claim(key, (name,), self._batch)
        winner = self._credential_claims.winner(name)
        serving = self._secrets.get(winner) if winner is not None else None
        if serving is None:
            if self._credentials.pop(name, None) is not None:
                dirty.mark("credentials", name)
        elif self._credentials.get(name) is not serving:
            self._credentials[name] = serving
            dirty.mark("credentials", name)

    def _kube_rebuild(self, ref: tuple[str, str], dirty: _Dirty, out: list[Diagnostic]) -> None:
        """Re-file the entry of Kubernetes Service ref after it or one of its slices changed."""
        key = ("kubernetes", "Service", ref[0], ref[1])
        converted, issues = self.kube.convert(ref)
        raw = self.kube.services.get(ref)
        if raw is not None:
            out.extend(diagnostic(raw, i) for i in issues)
        if raw is None:  # the Service is gone (its slices alone make no host)
            self._touched.add(key)
            gone = self._entries.pop(key, None)
            if gone is not None:
                self._retract(key, gone, dirty, forget=True)
            return
        if converted is None or issues.has_errors:
            return  # the last valid version keeps serving
        old = self._entries.get(key)
        if old is not None:
            self._retract(key, old, dirty, forget=False)
        self._touched.add(key)
        self._entries[key] = _Entry(raw, converted)
        self._assert(key, converted, dirty)
        if old is None or old.raw is not raw:  # warn about conflicts once per Service write
            dirty.upserted.add(key)

    def _rank(self, key: Key) -> int:
        """Claim rank: the oldest wins, except that sources.consul.precedence and
        sources.kubernetes.precedence put those sources' resources before (or after) the
        files'; on the same side of the files, Kubernetes ranks before Consul."""
        if key[0] == "kubernetes":
            return -2 if self.kube.mapping.precedence == "kubernetes" else (1 << 62) - 1
        if key[0] != "consul":
            return self._batch
        return -1 if self.consul.precedence == "consul" else 1 << 62

    def _delete(self, key: Key, dirty: _Dirty) -> None:
        if is_secret(key):
            if self._secrets.pop(key, None) is not None:
                self._settle_credential(key, dirty, forget=True)
            return
        if is_kube_core(key):
            for ref in self.kube.delete(key):
                self._kube_rebuild(ref, dirty, [])
            return
        self._touched.add(key)
        old = self._entries.pop(key, None)
        if old is not None:
            self._retract(key, old, dirty, forget=True)

    def _assert(self, key: Key, converted: Stored, dirty: _Dirty) -> None:
        """Record what converted contributes to the mesh, and mark it for recomputation."""
        if isinstance(converted, tuple):
            for part in converted:
                self._assert(key, part, dirty)
        elif isinstance(converted, ConvertedServiceEntry):
            hosts = _hosts(converted)
            self._se_claims.claim(key, hosts, self._rank(key))
            dirty.hosts.update(hosts)
            if converted.selector is not None:
                self._selection.add_selector(converted.namespace, key, converted.selector)
        elif isinstance(converted, Workload):
            ns = converted.namespace
            self._selection.add_workload(ns, key, converted.labels)
            self._workload_endpoints[key] = workload_endpoint(converted)
            self._workloads[f"{ns}/{converted.name}"] = converted
            dirty.selectors.update(self._selection.selecting(ns, converted.labels))
            dirty.mark("workloads", f"{ns}/{converted.name}")
        elif isinstance(converted, VirtualService):
            vs_key = f"{converted.namespace}/{converted.name}"
            if is_delegate(converted):
                self._delegates[vs_key] = converted
                dirty.delegation = True
                return
            if is_root(converted):
                self._roots[vs_key] = converted
                dirty.delegation = True
            self._virtual_services[vs_key] = converted
            dirty.mark("virtual_services", vs_key)
            if chain_role(converted):
                self._chained[vs_key] = converted
                dirty.chain = True
        elif isinstance(converted, _KEYED):
            name, key_ = _security_key(converted)
            self._security[name][key_] = converted
            dirty.mark(name, key_)
        elif isinstance(converted, Gateway):
            self._gateways[converted.key] = converted
            dirty.mark("gateways", converted.key)
        elif isinstance(converted, Sidecar):
            self._sidecars[converted.key] = converted
            dirty.mark("sidecars", converted.key)
            dirty.sidecars = True
        elif converted.workload_selector is not None:
            self._scope_rule(converted, converted, dirty)
        else:
            self._dr_claims.claim(key, (converted.host,), self._rank(key))
            dirty.dr_hosts.add(converted.host)

    def _scope_rule(
        self, rule: DestinationRule, value: DestinationRule | None, dirty: _Dirty
    ) -> None:
        """Set (or, value None, remove) a DestinationRule with a workloadSelector: it claims
        no host mesh-wide; the translator applies it to the proxies of what it selects."""
        key = f"{rule.namespace}/{rule.name}"
        if value is None:
            self._workload_rules.pop(key, None)
        else:
            self._workload_rules[key] = value
        dirty.mark("workload_destination_rules", key)
        dirty.mark("destination_rules", rule.host)  # tells the translator rules changed

    def _retract(self, key: Key, entry: _Entry, dirty: _Dirty, *, forget: bool) -> None:
        """Undo what entry contributed; forget also drops its first-seen rank."""
        parts = entry.converted if isinstance(entry.converted, tuple) else (entry.converted,)
        for converted in parts:
            self._retract_one(key, converted, dirty, forget=forget)

    def _retract_one(self, key: Key, converted: Converted, dirty: _Dirty, *, forget: bool) -> None:
        if isinstance(converted, ConvertedServiceEntry):
            self._se_claims.release(key, _hosts(converted), forget=forget)
            dirty.hosts.update(_hosts(converted))
            self._selection.remove_selector(converted.namespace, key)
        elif isinstance(converted, Workload):
            ns = converted.namespace
            self._selection.remove_workload(ns, key)
            self._workload_endpoints.pop(key, None)
            self._workloads.pop(f"{ns}/{converted.name}", None)
            dirty.selectors.update(self._selection.selecting(ns, converted.labels))
            dirty.mark("workloads", f"{ns}/{converted.name}")
        elif isinstance(converted, VirtualService):
            vs_key = f"{converted.namespace}/{converted.name}"
            if self._delegates.pop(vs_key, None) is not None:
                dirty.delegation = True
                return
            if self._roots.pop(vs_key, None) is not None:
                dirty.delegation = True
            self._virtual_services.pop(vs_key, None)
            dirty.mark("virtual_services", vs_key)
            if self._chained.pop(vs_key, None) is not None:
                dirty.chain = True
        elif isinstance(converted, _KEYED):
            name, key_ = _security_key(converted)
            self._security[name].pop(key_, None)
            dirty.mark(name, key_)
        elif isinstance(converted, Gateway):
            self._gateways.pop(converted.key, None)
            dirty.mark("gateways", converted.key)
        elif isinstance(converted, Sidecar):
            self._sidecars.pop(converted.key, None)
            dirty.mark("sidecars", converted.key)
            dirty.sidecars = True
        elif converted.workload_selector is not None:
            self._scope_rule(converted, None, dirty)
        else:
            self._dr_claims.release(key, (converted.host,), forget=forget)
            dirty.dr_hosts.add(converted.host)

    # -- recomputing what changed ------------------------------------------------------

    def _recompute(self, dirty: _Dirty, out: list[Diagnostic]) -> None:
        for key in dirty.selectors:
            selecting = self._entries.get(key)  # None: deleted in this batch (hosts marked)
            if selecting is not None and isinstance(selecting.converted, ConvertedServiceEntry):
                dirty.hosts.update(_hosts(selecting.converted))
        for host in dirty.dr_hosts:
            self._recompute_rule(host, dirty)
        # A redirecting rule may stand for a host no service defines (a virtual upstream):
        # recompute those after the services they borrow their ports from.
        redirecting = {
            x for x, y in self._redirects.items() if y in dirty.hosts or x in dirty.dr_hosts
        }
        for host in (dirty.hosts | dirty.dr_hosts) - redirecting:
            self._recompute_service(host, dirty)
        for host in redirecting:
            self._recompute_service(host, dirty)
        self._readdress(dirty)
        if dirty.chain:
            self._compose_chains(dirty)
        if dirty.delegation:
            self._merge_delegates(dirty, out)
        self._conflict_warnings(dirty, out)
        if dirty.sidecars:
            self._sidecar_warnings(dirty, out)

    def _readdress(self, dirty: _Dirty) -> None:
        """New automatic VIPs for the hosts that other hosts' arrivals or departures moved."""
        for host in sorted(self._vips.take_moved()):
            current = self._services.get(host)
            if current is not None:
                self._set_service(host, current, dirty)

    def _recompute_service(self, host: str, dirty: _Dirty) -> None:
        owner = self._se_claims.winner(host)
        if owner is None:
            virtual = self._redirect_service(host)
            if virtual is not None:
                self._set_service(host, virtual, dirty)
                if self._endpoints.pop(host, None) is not None:
                    dirty.mark("endpoints", host)
                return
            self._vips.release(host)
            if self._services.pop(host, None) is not None:
                dirty.mark("services", host)
            if self._endpoints.pop(host, None) is not None:
                dirty.mark("endpoints", host)
            return
        entry = self._entries[owner].converted
        assert isinstance(entry, ConvertedServiceEntry)
        services = entry.services
        service = (
            services[0] if services[0].host == host else next(s for s in services if s.host == host)
        )
        self._set_service(host, service, dirty)
        endpoints = self._endpoints_of(entry)
        old = self._endpoints.get(host)
        if not _same(old, endpoints):
            self._endpoints[host] = endpoints
            dirty.mark("endpoints", host)

    def _compose_chains(self, dirty: _Dirty) -> None:
        """Re-chain Consul routers and splitters through the splitters (consul/chain.py)."""
        splitters = {
            vs.hosts[0]: vs
            for vs in self._chained.values()
            if chain_role(vs) == "splitter" and vs.hosts
        }
        for key, vs in self._chained.items():
            composed = compose(vs, splitters)
            if self._virtual_services.get(key) != composed:
                self._virtual_services[key] = composed
                dirty.mark("virtual_services", key)

    def _merge_delegates(self, dirty: _Dirty, out: list[Diagnostic]) -> None:
        """Publish every root VirtualService merged with its delegates (delegation.py); warn
        a root written now about each delegate it cannot use (Istio drops those routes)."""
        for key, root in self._roots.items():
            entry = self._root_entry(root)
            if entry is not None and entry[0] in dirty.upserted:
                for path, reason in missing_delegates(root, self._delegates):
                    out.append(diagnostic(entry[1].raw, Issue("warning", path, reason)))
            merged = merge_root(root, self._delegates)
            if not (merged.http or merged.tcp or merged.tls):
                # No route left (its delegates are missing): Istio builds no virtual host for
                # it, and its hosts keep their default routes.
                if self._virtual_services.pop(key, None) is not None:
                    dirty.mark("virtual_services", key)
            elif self._virtual_services.get(key) != merged:
                self._virtual_services[key] = merged
                dirty.mark("virtual_services", key)

    def _root_entry(self, root: VirtualService) -> tuple[Key, _Entry] | None:
        prov = root.provenance
        if prov is None:
            return None
        for namespace in (prov.namespace, ""):  # "": the document named no namespace
            key = (prov.source, prov.kind, namespace, prov.name)
            entry = self._entries.get(key)
            if entry is not None:
                return key, entry
        return None

    def _set_service(self, host: str, service: Service, dirty: _Dirty) -> None:
        service = self._vips.place(service)  # its automatic VIP, if it gets one
        current = self._services.get(host)
        # An equal Service (e.g. a Consul service whose instances changed) keeps the serving
        # object, so that only the endpoints count as changed, not every route and cluster.
        if current is not service and current != service:
            self._services[host] = service
            dirty.mark("services", host)

    def _redirect_service(self, host: str) -> Service | None:
        """The Service of a host that only a redirecting rule names: the target's ports, the
        rule's namespace and provenance, no endpoints of its own (Consul's virtual upstream)."""
        rule = self._destination_rules.get(host)
        if rule is None or rule.redirect is None:
            return None
        target = self._services.get(rule.redirect.host)
        if target is None or rule.redirect.host == host:
            return None
        return replace(target, host=host, namespace=rule.namespace, provenance=rule.provenance)

    def _endpoints_of(self, entry: ConvertedServiceEntry) -> tuple[Endpoint, ...]:
        """Listed endpoints, or those of the WorkloadEntries the selector picks (same namespace)."""
        if entry.selector is None:
            return entry.endpoints
        selected = self._selection.selected(entry.namespace, entry.selector)
        return tuple([self._workload_endpoints[key] for key in selected])

    def _recompute_rule(self, host: str, dirty: _Dirty) -> None:
        owner = self._dr_claims.winner(host)
        if owner is None:
            self._redirects.pop(host, None)
            if self._destination_rules.pop(host, None) is not None:
                dirty.mark("destination_rules", host)
            return
        rule = _rule_for(self._entries[owner].converted, host)
        if rule.redirect is not None:
            self._redirects[host] = rule.redirect.host
        else:
            self._redirects.pop(host, None)
        if self._destination_rules.get(host) is not rule:
            self._destination_rules[host] = rule
            dirty.mark("destination_rules", host)

    def _conflict_warnings(self, dirty: _Dirty, out: list[Diagnostic]) -> None:
        """Warn each resource upserted now that lost a host to an older one."""
        checks: list[tuple[Claims, set[str], str]] = [
            (self._se_claims, dirty.hosts, "spec.hosts"),
            (self._dr_claims, dirty.dr_hosts, "spec.host"),
        ]
        for claims, hosts, path in checks:
            for host in sorted(h for h in hosts if claims.contested(h)):
                winner = claims.winner(host)
                for key in claims.losers(host):
                    # A loser is told when it arrives, and (across sources, where
                    # sources.consul.precedence decides) also when the winner arrives.
                    told = key in dirty.upserted or (
                        winner in dirty.upserted and winner is not None and winner[0] != key[0]
                    )
                    if told and winner is not None:
                        raw = self._entries[key].raw
                        owner = self._entries[winner].raw
                        reason = (
                            f"host {host} is already defined by {owner.kind}/"
                            f"{display_name(owner)} (older); this definition is ignored"
                            if owner.source == raw.source
                            else f"host {host} is already defined by {owner.source} "
                            f"{owner.kind}/{display_name(owner)}, which takes precedence over "
                            f"{raw.source}; this definition is ignored"
                        )
                        out.append(diagnostic(raw, Issue("warning", path, reason)))

    def _sidecar_warnings(self, dirty: _Dirty, out: list[Diagnostic]) -> None:
        """Warn each Sidecar written now that another in its namespace rivals (sidecars.py)."""
        for key in sorted(k for k in dirty.upserted if k[1] == "Sidecar"):
            entry = self._entries.get(key)
            if entry is not None and isinstance(entry.converted, Sidecar):
                found = sidecar_conflict(entry.converted, self._sidecars)
                if found is not None:
                    out.append(diagnostic(entry.raw, Issue("warning", *found)))

    def _publish(self, changed: Mapping[str, set[str]]) -> None:
        """A new snapshot: fresh read-only copies of the changed maps, the others shared,
        and the keys that changed, so that consumers need not compare the maps."""
        current = self._snapshot
        maps: dict[str, Mapping[str, Any]] = {
            "services": self._services,
            "endpoints": self._endpoints,
            "virtual_services": self._virtual_services,
            "destination_rules": self._destination_rules,
            "workloads": self._workloads,
            "workload_destination_rules": self._workload_rules,
            "credentials": self._credentials,
            "gateways": self._gateways,
            "sidecars": self._sidecars,
            **self._security,
        }
        fields = {
            name: MappingProxyType(dict(live)) if name in changed else getattr(current, name)
            for name, live in maps.items()
        }
        version = current.version + 1

        def keys(name: str) -> frozenset[str]:
            return frozenset(changed.get(name, ()))

        changes = SnapshotChanges(
            base_version=current.version,
            version=version,
            services=keys("services"),
            endpoints=keys("endpoints"),
            virtual_services=keys("virtual_services"),
            destination_rules=keys("destination_rules"),
            workloads=keys("workloads"),
            gateways=keys("gateways"),
        )
        self._snapshot = MeshSnapshot(version=version, changes=changes, **fields)
