"""This host's Envoy config built from files, without an agent: the normalizer and the
translator run in-process, with the agent config's proxy spec (its node, workloads, ports).

Used by `meshagent explain --offline` and `meshagent diff`. Secrets are not comparable this
way (the running agent's carry certificates from its CA), so diff leaves them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from meshagent.errors import ConfigError
from meshagent.model.identity import Identity, WorkloadCertificate
from meshagent.model.proxy import ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic, RawResource, SourceEvent
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds.resources import ResourceSet

OFFLINE_NODE = "offline"  # the node id when no agent config is given


@dataclass(slots=True)
class Built:
    """What the translator makes of a set of documents for one proxy."""

    normalizer: Normalizer
    snapshot: MeshSnapshot
    proxy: ProxySpec
    resources: ResourceSet
    diagnostics: list[Diagnostic]

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


def normalizer_for(config: Any | None) -> Normalizer:
    """A normalizer set up as the agent with config sets up its own (defaults: None)."""
    if config is None:
        return Normalizer()
    return Normalizer(
        domain_suffix=config.domain_suffix,
        default_namespace=config.node.namespace,
        root_namespace=config.root_namespace,
        consul=config.sources.consul.mapping if config.sources.consul else None,
        kubernetes=config.sources.kubernetes.mapping if config.sources.kubernetes else None,
    )


def load_paths(paths: Sequence[Path]) -> tuple[list[RawResource], list[Diagnostic]]:
    """Every document under paths (files, directories recursively) as the files source reads
    them; ConfigError when a path does not exist."""
    from meshagent.adapters.files import find_config_files
    from meshagent.adapters.yamldocs import load_file

    missing = [p for p in paths if not p.exists()]
    if missing:
        raise ConfigError("no such file or directory", location=str(missing[0]))
    resources: list[RawResource] = []
    problems: list[Diagnostic] = []
    for path in find_config_files(paths):
        found, errors = load_file(path)
        resources += found
        problems += errors
    return resources, problems


def stand_ins(identities: Iterable[Identity]) -> tuple[WorkloadCertificate, ...]:
    """Certificates without content for identities. Which identities have a certificate
    shapes mTLS clusters and listeners; the secrets built from these are never compared."""
    return tuple(WorkloadCertificate(i, "", "", "", 0.0) for i in identities)


def build(
    paths: Sequence[Path],
    config: Any | None,
    others: Iterable[RawResource] = (),
    identities: Sequence[Identity] | None = None,
) -> Built:
    """The ResourceSet of the documents under paths (plus others, e.g. the running agent's
    Consul documents) for the proxy of config (a default sidecar when None), as if it had
    certificates for identities (default: its workloads' when it has a `ca`, as the agent
    gets them)."""
    from meshagent.agent.security import local_identities
    from meshagent.xds.translate import Translator

    files, problems = load_paths(paths)
    by_source: dict[str, list[RawResource]] = {"files": files}
    for raw in others:
        by_source.setdefault(raw.source, []).append(raw)
    normalizer = normalizer_for(config)
    events = [SourceEvent(source, upserts=tuple(docs)) for source, docs in by_source.items()]
    snapshot, diagnostics = normalizer.apply(events)
    proxy = config.proxy_spec() if config is not None else ProxySpec(node_id=OFFLINE_NODE)
    if identities is None and config is not None and config.ca is not None:
        identities = local_identities(config)
    proxy = replace(proxy, certificates=stand_ins(identities or ()))
    resources = Translator().generate(snapshot, proxy)
    return Built(normalizer, snapshot, proxy, resources, problems + diagnostics)


def config_paths(config: Any | None) -> list[Path]:
    """The files the agent of config reads (sources.files.paths), existing ones only."""
    files = config.sources.files if config is not None else None
    if files is None:
        raise ConfigError("no files to read: give PATH... (the agent config has no files source)")
    return [p for p in files.paths if p.exists()]
