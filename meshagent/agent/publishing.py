"""What the agent says about configuration it would not publish, or that Envoy rejected: the
resources involved, traced back to the files (or Consul index, resourceVersion) they came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import structlog

from meshagent.model.proxy import ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic
from meshagent.xds.attribution import describe
from meshagent.xds.consistency import Inconsistency
from meshagent.xds.resources import Resource, ResourceSet
from meshagent.xds.typeurls import SHORT_NAMES

CONSISTENCY_SOURCE = "xds"  # diagnostics of the check before publishing
NACK_SOURCE = "envoy"  # diagnostics of Envoy's rejections

_KINDS = {"cds": "Cluster", "eds": "ClusterLoadAssignment", "lds": "Listener", "rds": "Route"}
_LOCATION = re.compile(r"\(([^()]+)\)$")
# What separates names in Envoy's messages: resource names hold none of these.
_SEPARATORS = re.compile(r"[\s,;'\"`()\[\]{}]+")
_QUOTED = re.compile(r"'([^']{4,})'|\"([^\"]{4,})\"")
MAX_NAMES = 5
log = structlog.get_logger("meshagent.agent")


def kind_of(type_url: str) -> str:
    """The Envoy kind of a type URL, for diagnostics ("Listener", "Cluster", ...)."""
    short = SHORT_NAMES.get(type_url, "")
    return _KINDS.get(short, type_url.rsplit(".", 1)[-1])


def _origins(
    snapshot: MeshSnapshot,
    proxy: ProxySpec,
    resources: Iterable[tuple[str, str]],
    patched_by: Mapping[tuple[str, str], tuple[str, ...]] | None = None,
) -> list[str]:
    """The EnvoyFilters that patched resources (they come first: a patch is the likelier
    culprit of a rejection), then describe(); nothing when attribution fails: the error it
    decorates still counts."""
    resources = list(resources)
    patches = [r for key in resources for r in (patched_by or {}).get(key, ())]
    try:
        found = describe(snapshot, proxy, resources)
    except Exception:
        log.exception("attribution_failed_bug")
        found = []
    return list(dict.fromkeys([*patches, *found]))


def _location(origins: list[str]) -> str:
    """The location of the first origin that has one ("mesh/a.yaml:3"), else "generated"."""
    for origin in origins:
        found = _LOCATION.search(origin)
        if found:
            return found.group(1)
    return "generated config"


def _with_origins(reason: str, origins: list[str]) -> str:
    return f"{reason} (from {'; '.join(origins)})" if origins else reason


def inconsistency_diagnostics(
    found: Iterable[Inconsistency],
    snapshot: MeshSnapshot,
    proxy: ProxySpec,
    resources: ResourceSet | None = None,
) -> list[Diagnostic]:
    """One error per inconsistency, located at the first file it traces back to (the
    EnvoyFilter, when one patched a resource involved)."""
    patched_by = resources.patched_by if resources is not None else None
    out = []
    for problem in found:
        origins = _origins(snapshot, proxy, problem.resources, patched_by)
        type_url, name = problem.resources[0]
        out.append(
            Diagnostic(
                severity="error",
                source=CONSISTENCY_SOURCE,
                location=_location(origins),
                kind=kind_of(type_url),
                name=name,
                field="",
                reason=_with_origins(
                    problem.reason + "; the last consistent configuration keeps serving", origins
                ),
            )
        )
    return out


def named_in(error: str, resources: Mapping[str, Resource]) -> list[str]:
    """Names of resources that Envoy's error message mentions, in order of mention.

    Names are looked up token by token (an error message is short; a type may hold tens of
    thousands of names). When none is named, resources whose bytes hold a quoted part of the
    message (a regex, a header, a domain) are the ones it is about.
    """
    found: list[str] = []
    for token in _SEPARATORS.split(error):
        for candidate in (token, token.rstrip(":."), token.rstrip(":.").lstrip(":")):
            if candidate in resources and candidate not in found:
                found.append(candidate)
                break
    if found:
        return found[:MAX_NAMES]
    fragments = [(a or b).encode() for a, b in _QUOTED.findall(error)]
    for name, resource in resources.items():
        if any(f in resource.value for f in fragments):
            found.append(name)
            if len(found) == MAX_NAMES:
                break
    return found


class NackExplainer:
    """Traces NACKs to the resources and files responsible; remembers the last few answers
    (readiness is polled often, a NACK is rare)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str, str], tuple[list[str], list[str]]] = {}

    def explain(
        self,
        type_url: str,
        version: str,
        error: str,
        served: ResourceSet,
        snapshot: MeshSnapshot,
        proxy: ProxySpec,
    ) -> tuple[list[str], list[str]]:
        """(resource names, rendered origins) that the NACK of type_url at version is about."""
        key = (type_url, version, error)
        known = self._known.get(key)
        if known is None:
            names = named_in(error, served.of(type_url))
            keys = [(type_url, n) for n in names]
            origins = _origins(snapshot, proxy, keys, served.patched_by)
            if len(self._known) >= 16:
                self._known.clear()
            known = self._known[key] = (names, origins)
        return known

    def diagnostic(
        self,
        type_url: str,
        version: str,
        error: str,
        served: ResourceSet,
        snapshot: MeshSnapshot,
        proxy: ProxySpec,
    ) -> Diagnostic:
        """The NACK as an error located at the first file it traces back to."""
        names, origins = self.explain(type_url, version, error, served, snapshot, proxy)
        short = SHORT_NAMES.get(type_url, type_url)
        return Diagnostic(
            severity="error",
            source=NACK_SOURCE,
            location=_location(origins),
            kind=kind_of(type_url),
            name=", ".join(names) or "-",
            field="",
            reason=_with_origins(f"Envoy rejected {short} version {version}: {error}", origins),
        )
