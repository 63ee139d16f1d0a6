"""Checks of selectors, subsets, Gateways and ServiceEntry ports, and the normalizer's own
diagnostics as schema messages."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from meshagent.insight.context import (
    AnalysisInput,
    DocKey,
    WorkloadLabels,
    label_sets,
    selector_text,
)
from meshagent.insight.messages import Message
from meshagent.model.gateway import Gateway, split_server_host
from meshagent.model.labels import Labels, selector_matches
from meshagent.model.services import Endpoint, Resolution
from meshagent.model.source import Diagnostic, Provenance, RawResource
from meshagent.model.traffic import DestinationRule
from meshagent.normalize.kubernetes.services import port_protocol
from meshagent.normalize.sidecars import sidecar_conflict
from meshagent.xds.translate.gateway_routes import host_subset

ISTIO_SOURCES = ("files", "kubernetes")


def subsets(inp: AnalysisInput) -> Iterator[Message]:
    """IST0173: a subset of a DestinationRule (or of a Consul service-resolver) whose labels
    select no endpoint of its host (the translator gives its cluster no endpoints: 503 UH)."""
    snapshot = inp.snapshot
    rules: list[DestinationRule] = [
        *snapshot.destination_rules.values(),
        *snapshot.workload_destination_rules.values(),
    ]
    for rule in rules:
        prov = rule.provenance
        service = snapshot.services.get(rule.host)
        if prov is None or prov.kind not in SUBSET_FIELDS or service is None:
            continue
        endpoints = snapshot.endpoints.get(rule.host, ())
        if not endpoints and service.resolution != Resolution.STATIC:
            continue  # Envoy resolves the host itself: labels select nothing either way
        parts = (rule, endpoints, inp.document(prov))
        yield from inp.memo.get("subsets", parts, _empty_subsets, inp, rule, endpoints)


def _empty_subsets(
    inp: AnalysisInput, rule: DestinationRule, endpoints: tuple[Endpoint, ...]
) -> list[Message]:
    assert rule.provenance is not None
    have = label_sets(inp, endpoints)
    out = []
    for i, subset in enumerate(rule.subsets):
        if subset.labels and not any(selector_matches(subset.labels, ls) for ls in have):
            text = (
                f"The Subset {subset.name} defined in the DestinationRule does not select "
                "any endpoints. Which may lead to 503 UH (NoHealthyUpstream)."
            )
            path = SUBSET_FIELDS[rule.provenance.kind].format(i=i, name=subset.name)
            out.append(inp.message("IST0173", rule.provenance, path, text))
    return out


# Where a subset is written, by the kind of document a rule came from.
SUBSET_FIELDS = {
    "DestinationRule": "spec.subsets[{i}].labels",
    "ConsulConfigEntry": "Subsets.{name}",  # a service-resolver's subset (its Filter)
}


def _selected(inp: AnalysisInput) -> Iterator[tuple[Provenance, str, Labels]]:
    """(provenance, selector field path, labels) of every Istio policy with a selector."""
    s = inp.snapshot
    policies: Iterable[Any] = (
        *s.authorization_policies.values(),
        *s.peer_authentications.values(),
        *s.request_authentications.values(),
    )
    for p in policies:
        if p.selector and p.provenance is not None:
            yield p.provenance, "spec.selector.matchLabels", p.selector
    for sidecar in s.sidecars.values():
        if sidecar.workload_selector and sidecar.provenance is not None:
            yield sidecar.provenance, "spec.workloadSelector.labels", sidecar.workload_selector
    for rule in s.workload_destination_rules.values():
        if rule.workload_selector and rule.provenance is not None:
            yield rule.provenance, "spec.workloadSelector.matchLabels", rule.workload_selector


def selectors(inp: AnalysisInput) -> Iterator[Message]:
    """IST0127: a policy (AuthorizationPolicy, PeerAuthentication, RequestAuthentication,
    Sidecar, DestinationRule workloadSelector) whose selector matches no known workload in
    its namespace (any namespace for the root namespace)."""
    found = sorted(_selected(inp), key=lambda item: (item[0].location, item[0].ref))
    known: WorkloadLabels | None = None  # (built only when there is a selector to check)
    for prov, path, labels in found:
        if prov.source not in ISTIO_SOURCES:
            continue
        known = known or WorkloadLabels(inp)
        if not known.any_match(prov.namespace, labels):
            text = (
                "No matching workloads for this resource with the following labels: "
                f"{selector_text(labels)}"
            )
            yield inp.message("IST0127", prov, path, text)


def sidecars(inp: AnalysisInput) -> Iterator[Message]:
    """IST0111 / IST0110: Sidecars of one namespace without a selector, or with the same one
    (normalize/sidecars.py decides which applies: the first by name)."""
    all_sidecars = inp.snapshot.sidecars
    for _, sidecar in sorted(all_sidecars.items()):
        found = sidecar_conflict(sidecar, all_sidecars)
        if found is None or sidecar.provenance is None:
            continue
        path, outcome = found
        names = sorted(
            s.name
            for s in all_sidecars.values()
            if s.namespace == sidecar.namespace and s.workload_selector == sidecar.workload_selector
        )
        listed = "[" + " ".join(names) + "]"
        if sidecar.workload_selector is None:
            code = "IST0111"
            text = (
                f'The Sidecars {listed} in namespace "{sidecar.namespace}" have no workload '
                "selector, which can lead to undefined behavior."
            )
        else:
            code = "IST0110"
            text = (
                f'The Sidecars {listed} in namespace "{sidecar.namespace}" select the same '
                f'workloads "{selector_text(sidecar.workload_selector)}", which can lead to '
                "undefined behavior."
            )
        yield inp.message(code, sidecar.provenance, path, f"{text} ({outcome.split(': ')[-1]})")


def gateway_selectors(inp: AnalysisInput) -> Iterator[Message]:
    """IST0101 (selector): a Gateway whose selector matches no proxy that could serve it:
    no WorkloadEntry (a VM running a proxy) and not this host's router node."""
    proxies: list[Labels] | None = None  # (listed only when a Gateway has a selector)
    for _, gateway in sorted(inp.snapshot.gateways.items()):
        prov = gateway.provenance
        if prov is None or prov.kind != "Gateway" or not gateway.selector:
            continue
        if proxies is None:
            proxies = [w.labels for w in inp.snapshot.workloads.values()]
            proxies.extend(labels for _, labels in inp.routers)
        if not any(selector_matches(gateway.selector, labels) for labels in proxies):
            text = f'Referenced selector not found: "{selector_text(gateway.selector)}"'
            key = gateway.selector[0][0]
            yield inp.message("IST0101", prov, f"spec.selector.{key}", text)


def conflicting_gateways(inp: AnalysisInput) -> Iterator[Message]:
    """IST0145: Gateways with the same selector that serve an overlapping host on one port."""
    istio = [
        g
        for _, g in sorted(inp.snapshot.gateways.items())
        if g.provenance is not None and g.provenance.kind == "Gateway"
    ]
    by_key: dict[tuple[Labels, int], list[tuple[Gateway, list[str]]]] = {}
    for g in istio:
        for server in g.servers:
            hosts = [split_server_host(h)[1] for h in server.hosts]
            by_key.setdefault((g.selector, server.port), []).append((g, hosts))
    reported: set[str] = set()
    for (selector, port), entries in sorted(by_key.items(), key=lambda i: (i[0][1], i[0][0])):
        for g, hosts in entries:
            rivals = sorted(
                {
                    other.key
                    for other, theirs in entries
                    if other is not g and _overlap(hosts, theirs)
                }
            )
            if not rivals or g.key in reported or g.provenance is None:
                continue
            reported.add(g.key)
            text = (
                f"Conflict with gateways {','.join(rivals)} (workload selector "
                f"{selector_text(selector)}, port {port}, hosts {','.join(hosts)})."
            )
            yield inp.message("IST0145", g.provenance, "spec.servers", text)


def _overlap(a: list[str], b: list[str]) -> bool:
    return any(host_subset(x, y) or host_subset(y, x) for x in a for y in b)


class _PerServiceEntry:
    """Something of each accepted Istio ServiceEntry, kept from one analysis to the next
    (in the check's Memo.state) and computed again only for the documents that are not the
    very objects of the last update: a change costs the change, and a pass over the keys."""

    def __init__(self) -> None:
        self.documents: Mapping[DocKey, RawResource] = {}
        self.found: dict[DocKey, Any] = {}

    def update(
        self, inp: AnalysisInput, compute: Callable[[RawResource], Any]
    ) -> dict[DocKey, Any]:
        """Bring found up to date (compute(raw) for each document that changed); what found
        held for each key that changed (None: nothing)."""
        now = inp.documents_of("ServiceEntry")
        last = self.documents
        changed = {k for k, raw in now.items() if last.get(k) is not raw}
        changed.update(k for k in last if k not in now)
        before: dict[DocKey, Any] = {}
        for key in changed:
            before[key] = self.found.pop(key, None)
            raw = now.get(key)
            if raw is not None and raw.source in ISTIO_SOURCES:
                value = compute(raw)
                if value:
                    self.found[key] = value
        self.documents = dict(now)  # (the agent's mapping is kept up to date in place)
        return before


def _per_service_entry(inp: AnalysisInput, name: str) -> _PerServiceEntry:
    found = inp.memo.state.get(name)
    if not isinstance(found, _PerServiceEntry):
        found = inp.memo.state[name] = _PerServiceEntry()
    return found


def _ports(raw: RawResource) -> list[tuple[int, dict[str, Any]]]:
    spec = raw.body.get("spec")
    ports = spec.get("ports") if isinstance(spec, Mapping) else None
    if not isinstance(ports, list):
        return []
    return [(j, p) for j, p in enumerate(ports) if isinstance(p, dict)]


def _hosts(raw: RawResource) -> list[str]:
    spec = raw.body.get("spec")
    hosts = spec.get("hosts") if isinstance(spec, Mapping) else None
    return [h for h in hosts if isinstance(h, str)] if isinstance(hosts, list) else []


def _export_scopes(raw: RawResource) -> frozenset[str]:
    spec = raw.body.get("spec")
    export = spec.get("exportTo") if isinstance(spec, Mapping) else None
    if not isinstance(export, list) or not export or "*" in export:
        return frozenset({"*"})
    return frozenset(raw.namespace if e == "." else str(e) for e in export)


def _claims(raw: RawResource) -> list[tuple[str, int, int, str]]:
    """(host, port number, port index, upper-case protocol) of each port of each host."""
    out = []
    for host in _hosts(raw):
        for j, port in _ports(raw):
            number = port.get("number")
            if isinstance(number, int):
                out.append((host, number, j, str(port.get("protocol") or "").upper()))
    return out


def _visible(a: RawResource, b: RawResource) -> bool:
    """Whether two ServiceEntries are seen together somewhere (their exportTo meet)."""
    sa, sb = _export_scopes(a), _export_scopes(b)
    return "*" in sa or "*" in sb or bool(sa & sb)


def service_entry_protocols(inp: AnalysisInput) -> Iterator[Message]:
    """MA0001: ServiceEntries (all accepted ones, also those that lost the host to an older
    one) that give one host and port different protocols, where both are visible."""
    index = _per_service_entry(inp, "se_claims")
    groups: dict[tuple[str, int], dict[DocKey, list[tuple[RawResource, int, str]]]]
    groups = inp.memo.state.setdefault("se_groups", {})
    # Each document's claims, by (host, port): only the groups a changed document was or is
    # in are looked at again; a group with two protocols or more is a conflict.
    conflicts: set[tuple[str, int]] = inp.memo.state.setdefault("se_conflicts", set())
    documents = inp.documents_of("ServiceEntry")
    for key, claimed in index.update(inp, _claims).items():
        touched = {(h, n) for h, n, _, _ in claimed or ()}
        raw = documents.get(key)
        for group in touched:
            groups.get(group, {}).pop(key, None)
        if key in index.found and raw is not None:
            for host, number, j, protocol in index.found[key]:
                groups.setdefault((host, number), {}).setdefault(key, []).append((raw, j, protocol))
                touched.add((host, number))
        for group in touched:
            members = groups.get(group, {})
            if not members:
                groups.pop(group, None)
            if len({p for claims in members.values() for _, _, p in claims}) >= 2:
                conflicts.add(group)
            else:
                conflicts.discard(group)
    reported: set[tuple[str, str, str, str]] = set()
    for host, number in sorted(conflicts):
        entries = [e for claims in groups[(host, number)].values() for e in claims]
        for raw, j, protocol in entries:
            rivals = [(r, p) for r, _, p in entries if p != protocol and _visible(r, raw)]
            if not rivals or raw.key in reported:
                continue
            reported.add(raw.key)
            names = ", ".join(sorted({_display(raw), *(_display(r) for r, _ in rivals)}))
            protocols = ", ".join(
                sorted({protocol or "(none)", *(p or "(none)" for _, p in rivals)})
            )
            text = (
                f"ServiceEntries {names} define host {host} port {number} with different "
                f"protocols ({protocols}); only one definition of the host is served."
            )
            yield _raw_message(inp, "MA0001", raw, f"spec.ports[{j}].protocol", text)


def unset_protocols(inp: AnalysisInput) -> Iterator[Message]:
    """MA0002: a ServiceEntry port without a protocol (served as TCP: no HTTP routing);
    IST0118: a Kubernetes Service port whose name and appProtocol give no protocol."""
    index = _per_service_entry(inp, "se_unset")
    index.update(inp, lambda raw: _unset_in(inp, raw))
    for found in index.found.values():
        yield from found
    for raw in inp.documents_of("Service").values():
        if raw.source == "kubernetes":
            yield from _kube_port_names(inp, raw)


def _unset_in(inp: AnalysisInput, raw: RawResource) -> list[Message]:
    out = []
    for j, port in _ports(raw):
        if not port.get("protocol"):
            text = (
                f"Port {port.get('number')} ({port.get('name') or 'unnamed'}) has no "
                "protocol; meshagent serves it as TCP, so HTTP routing and retries do not "
                "apply. Set protocol (HTTP, HTTP2, GRPC, TCP, TLS, ...)."
            )
            out.append(_raw_message(inp, "MA0002", raw, f"spec.ports[{j}]", text))
    return out


def _kube_port_names(inp: AnalysisInput, raw: RawResource) -> Iterator[Message]:
    for j, port in _ports(raw):
        name = str(port.get("name") or "")
        said_tcp = "tcp" in (str(port.get("appProtocol") or "").lower(), name.split("-")[0])
        if port_protocol(port) != "TCP" or said_tcp:
            continue  # the normalizer's reading (normalize/kubernetes) found a protocol
        target = port.get("targetPort", port.get("port"))
        text = (
            f"Port name {name} (port: {port.get('port')}, targetPort: {target}) doesn't "
            "follow the naming convention of Istio port."
        )
        yield _raw_message(inp, "IST0118", raw, f"spec.ports[{j}].name", text)


def _display(raw: RawResource) -> str:
    return f"{raw.namespace}/{raw.name}" if raw.namespace else raw.name


def _raw_message(inp: AnalysisInput, code: str, raw: RawResource, path: str, text: str) -> Message:
    prov = raw.provenance
    named = Provenance(prov.source, prov.location, raw.kind, raw.namespace, raw.name)
    return inp.message(code, named, path, text)


def schema(inp: AnalysisInput) -> Iterator[Message]:
    """The normalizer's diagnostics: IST0106 for errors, IST0002 for deprecated fields,
    IST0133 for other warnings. Unresolved references are left to `references`."""
    for d in inp.diagnostics:
        if d.reason.startswith("Referenced "):
            continue
        yield schema_message(d)


def schema_message(d: Diagnostic) -> Message:
    """The message of one normalizer diagnostic."""
    detail = f"{d.field}: {d.reason}" if d.field else d.reason
    if d.severity == "error":
        code, text = "IST0106", f"Schema validation error: {detail}"
    elif d.reason.startswith("deprecated: "):
        code, text = "IST0002", f"Deprecated: {d.field}: {d.reason.removeprefix('deprecated: ')}"
    else:
        code, text = "IST0133", f"Schema validation warning: {detail}"
    return Message.of_diagnostic(code, text, d)
