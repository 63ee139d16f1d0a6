"""Checks of VirtualServices and DestinationRules: references, gateway bindings, hosts that
several VirtualServices claim, and rules or matches that earlier ones shadow.

Only documents written as Istio resources are checked where a field path is reported (Consul
entries are converted into the same model, but the paths would not point into what their
author wrote), as normalize/references.py does.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshagent.insight.context import AnalysisInput
from meshagent.insight.messages import Message
from meshagent.model.gateway import MESH_GATEWAY, gateway_key
from meshagent.model.routing import HttpMatch, HttpRoute, MatchKind, StringMatch, VirtualService
from meshagent.model.source import Diagnostic
from meshagent.normalize.references import unresolved_references
from meshagent.xds.translate.gateway_routes import host_subset, hosts_for_namespace

VS_KIND = "VirtualService"


def references(inp: AnalysisInput) -> Iterator[Message]:
    """IST0101 for routes to unknown hosts, ports or subsets; IST0174 for a DestinationRule
    whose host no service declares (normalize/references.py finds both)."""
    if inp.references is not None:
        yield from (_reference_message(d) for d in inp.references)
        return
    for found in unresolved_references(inp.snapshot):
        prov = found.provenance
        if prov.kind == "DestinationRule" and found.path == "spec.host":
            yield inp.message("IST0174", prov, found.path, _unknown_rule_host(found.reason))
        else:
            yield inp.message("IST0101", prov, found.path, found.reason)


def _reference_message(d: Diagnostic) -> Message:
    """The message of one of the normalizer's unresolved-reference warnings."""
    namespace, slash, name = d.name.rpartition("/")
    code, text = "IST0101", d.reason
    if d.kind == "DestinationRule" and d.field == "spec.host":
        code, text = "IST0174", _unknown_rule_host(d.reason)
    return Message(
        code=code,
        text=text,
        kind=d.kind,
        namespace=namespace if slash else "",
        name=name,
        location=d.location,
        field=d.field,
        source=d.source,
    )


def _unknown_rule_host(reason: str) -> str:
    host = reason.split(": ", 1)[-1].strip("'\"")
    return (
        f"The host {host} defined in the DestinationRule does not match any services in the mesh."
    )


def gateway_bindings(inp: AnalysisInput) -> Iterator[Message]:
    """IST0101 for a VirtualService bound to a Gateway that does not exist; IST0132 for its
    hosts that no server of a bound Gateway serves to its namespace."""
    gateways = inp.snapshot.gateways
    for vs in inp.snapshot.virtual_services.values():  # (messages are sorted in the end)
        prov = vs.provenance
        if prov is None or prov.kind != VS_KIND or not vs.gateways:
            continue
        for i, reference in enumerate(vs.gateways):
            if reference == MESH_GATEWAY:
                continue
            key = gateway_key(reference, vs.namespace)
            gateway = gateways.get(key)
            if gateway is None:
                text = f'Referenced gateway not found: "{key}"'
                yield inp.message("IST0101", prov, f"spec.gateways[{i}]", text)
                continue
            served = hosts_for_namespace(
                (h for s in gateway.servers for h in s.hosts), vs.namespace
            )
            missing = [h for h in vs.hosts if not _served(h, served)]
            if missing:
                text = (
                    f"one or more host [{' '.join(missing)}] defined in VirtualService "
                    f"{vs.namespace}/{vs.name} not found in Gateway {key}."
                )
                yield inp.message("IST0132", prov, "spec.hosts", text)


def _served(host: str, server_hosts: list[str]) -> bool:
    return any(host_subset(host, s) or host_subset(s, host) for s in server_hosts)


def _scopes(vs: VirtualService) -> frozenset[str]:
    """The namespaces vs is visible in ("*": all), from its exportTo."""
    if not vs.export_to or "*" in vs.export_to:
        return frozenset({"*"})
    return frozenset(vs.namespace if e == "." else e for e in vs.export_to)


def _visible_together(a: VirtualService, b: VirtualService) -> bool:
    sa, sb = _scopes(a), _scopes(b)
    return "*" in sa or "*" in sb or bool(sa & sb)


def conflicting_hosts(inp: AnalysisInput) -> Iterator[Message]:
    """IST0109: sidecar-bound VirtualServices that define the same host (meshagent routes
    the host with the first by "namespace/name" and ignores the others for it)."""
    by_host: dict[str, list[tuple[str, VirtualService]]] = {}
    for key, vs in sorted(inp.snapshot.virtual_services.items()):
        if vs.applies_to_sidecars:
            for host in vs.hosts:
                by_host.setdefault(host, []).append((key, vs))
    for host, claims in sorted(by_host.items()):
        if len(claims) < 2:
            continue
        for key, vs in claims:
            rivals = [k for k, other in claims if other is not vs and _visible_together(vs, other)]
            if not rivals or vs.provenance is None:
                continue
            names = ",".join(sorted([key, *rivals]))
            text = (
                f"The VirtualServices {names} associated with mesh gateway define the same host "
                f"{host} which can lead to undefined behavior. This can be fixed by merging the "
                f"conflicting VirtualServices into a single resource. (meshagent routes {host} "
                f"with {min([key, *rivals])}.)"
            )
            yield inp.message("IST0109", vs.provenance, f"spec.hosts[{vs.hosts.index(host)}]", text)


def shadowed_rules(inp: AnalysisInput) -> Iterator[Message]:
    """IST0130 for HTTP rules that earlier rules leave no request to; IST0131 for matches an
    earlier rule's match duplicates or covers (Envoy takes the first route that matches)."""
    for vs in inp.snapshot.virtual_services.values():
        prov = vs.provenance
        if prov is None or prov.kind != VS_KIND:
            continue
        raw = inp.document(prov)
        yield from inp.memo.get("shadowed", (vs, raw), _shadowed, inp, vs)


def _shadowed(inp: AnalysisInput, vs: VirtualService) -> list[Message]:
    return [] if _delegating(inp, vs) else list(_shadowed_in(inp, vs))


def _delegating(inp: AnalysisInput, vs: VirtualService) -> bool:
    """Whether vs's routes were merged from delegates (its indexes are not the document's)."""
    raw = inp.document(vs.provenance)
    spec = raw.body.get("spec") if raw is not None else None
    http = spec.get("http") if isinstance(spec, dict) else None
    if not isinstance(http, list):
        return raw is None
    return len(http) != len(vs.http) or any(isinstance(r, dict) and r.get("delegate") for r in http)


def _rule_name(route: HttpRoute, n: int) -> str:
    return f'"{route.name}"' if route.name else f"#{n}"


def _shadowed_in(inp: AnalysisInput, vs: VirtualService) -> Iterator[Message]:
    assert vs.provenance is not None
    prov = vs.provenance
    catch_all = ""  # the first earlier rule without matches
    seen: list[tuple[HttpMatch, str]] = []
    unkept = _unkept_matches(inp, vs)
    for n, route in enumerate(vs.http):
        name = _rule_name(route, n)
        if catch_all:
            # Istio's reasons (pkg/config/validation: analyzeUnreachableHTTPRules)
            reason = (
                "route without matches defined before"
                if route.matches
                else "only the last rule can have no matches"
            )
            text = f"VirtualService rule {name} not used ({reason})."
            yield inp.message("IST0130", prov, f"spec.http[{n}]", text)
            continue
        if not route.matches:
            catch_all = name
            continue
        covered = 0
        for m, match in enumerate(route.matches):
            if (n, m) in unkept:
                continue  # its conditions are not all in the model: it may well differ
            earlier = next((rule for prior, rule in seen if _covers(prior, match)), None)
            if earlier is None:
                continue
            covered += 1
            match_name = f'"{match.name}"' if match.name else f"#{m}"
            text = (
                f"VirtualService rule {name} match {match_name} is not used "
                f"(duplicate/overlapping match in rule {earlier})."
            )
            yield inp.message("IST0131", prov, f"spec.http[{n}].match[{m}]", text)
        if covered == len(route.matches):
            text = f"VirtualService rule {name} not used (all matches used by prior rules)."
            yield inp.message("IST0130", prov, f"spec.http[{n}]", text)
        seen.extend((match, name) for m, match in enumerate(route.matches) if (n, m) not in unkept)


# HTTPMatchRequest fields the model does not keep (the normalizer warns that they are
# ignored); Istio tells matches apart by them, so the comparison leaves such matches out.
UNKEPT_MATCH_FIELDS = ("sourceNamespace",)


def _unkept_matches(inp: AnalysisInput, vs: VirtualService) -> set[tuple[int, int]]:
    """(rule, match) indexes of the matches that use UNKEPT_MATCH_FIELDS in vs's document."""
    raw = inp.document(vs.provenance)
    spec = raw.body.get("spec") if raw is not None else None
    http = spec.get("http") if isinstance(spec, dict) else None
    out: set[tuple[int, int]] = set()
    for n, rule in enumerate(http if isinstance(http, list) else ()):
        matches = rule.get("match") if isinstance(rule, dict) else None
        for m, match in enumerate(matches if isinstance(matches, list) else ()):
            if isinstance(match, dict) and any(match.get(f) for f in UNKEPT_MATCH_FIELDS):
                out.add((n, m))
    return out


def _covers_string(a: StringMatch | None, b: StringMatch | None) -> bool:
    """Whether every value b accepts, a accepts too (a None accepts all)."""
    if a is None or a == b:
        return True
    if b is None or a.kind != MatchKind.PREFIX or b.kind == MatchKind.REGEX:
        return False
    return b.value.startswith(a.value)


def _covers(a: HttpMatch, b: HttpMatch) -> bool:
    """Whether match a takes every request match b would (so b, later, is never used)."""
    if a.uri is not None and a.ignore_uri_case and not b.ignore_uri_case:
        return False  # conservative: case folding makes prefixes hard to compare
    if a.uri is not None and b.ignore_uri_case and not a.ignore_uri_case:
        return False
    return (
        _covers_string(a.uri, b.uri)
        and _covers_string(a.scheme, b.scheme)
        and _covers_string(a.method, b.method)
        and _covers_string(a.authority, b.authority)
        and _within(a.headers, b.headers)
        and _within(a.query_params, b.query_params)
        and _within(a.without_headers, b.without_headers)
        and (a.port is None or a.port == b.port)
        and _within(a.source_labels, b.source_labels)
        and (not a.gateways or (bool(b.gateways) and set(b.gateways) <= set(a.gateways)))
    )


def _within(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Whether every condition of a is also one of b's."""
    return not a or set(a) <= set(b)
