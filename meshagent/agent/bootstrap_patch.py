"""EnvoyFilter BOOTSTRAP patches in the bootstrap the agent writes for Envoy.

Istio applies them when the proxy starts (the bootstrap istiod generates for the agent);
here, whenever the agent writes Envoy's bootstrap: the managed Envoy's start and every
restart, and `meshagent bootstrap` for an Envoy the agent does not manage. The patches come
from the mesh configuration known then. Envoy reads its bootstrap once: a change of a
BOOTSTRAP patch takes effect at the next Envoy start (`systemctl restart meshagent` restarts a
managed Envoy whose bootstrap changed; an unmanaged one needs `meshagent bootstrap` and its
own restart), as a pod restart does in Istio.

A patched bootstrap that `envoy --mode validate` refuses is not used: each EnvoyFilter
responsible gets a located error and Envoy starts with the unpatched bootstrap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meshagent.envoy_validate import run_validate
from meshagent.model.extensions import EnvoyFilter
from meshagent.model.proxy import ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic
from meshagent.xds.envoyfilter.bootstrap import patch_bootstrap
from meshagent.xds.envoyfilter.select import Applied, bootstrap_patches, ref_of

BOOTSTRAP_SOURCE = "bootstrap"  # the source of diagnostics about BOOTSTRAP patches
VALIDATE_TIMEOUT_S = 60.0


def validate_bootstrap(binary: str, bootstrap: Mapping[str, Any]) -> str:
    """Why Envoy refuses bootstrap (`envoy --mode validate`); "" when it accepts it."""
    done = run_validate(
        binary,
        bootstrap,
        timeout_s=VALIDATE_TIMEOUT_S,
        prefix="meshagent-bootstrap-",
        file_name="bootstrap.json",
    )
    if isinstance(done, str):
        return done
    if done.returncode == 0:
        return ""
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit code {done.returncode}").strip()[-500:]


def _diagnostic(
    applied: Applied, filters: Mapping[str, EnvoyFilter], severity: str, reason: str
) -> Diagnostic:
    found = next((f for f in filters.values() if ref_of(f) == applied.ref), None)
    prov = found.provenance if found is not None else None
    return Diagnostic(
        severity="error" if severity == "error" else "warning",
        source=BOOTSTRAP_SOURCE,
        location=prov.location if prov is not None else "-",
        kind="EnvoyFilter",
        name=f"{found.namespace}/{found.name}" if found is not None else applied.ref,
        field=f"spec.configPatches[{applied.patch.index}]",
        reason=reason,
    )


def _culprits(base: Mapping[str, Any], merged: Sequence[Applied], binary: str) -> list[Applied]:
    """The patches of the EnvoyFilters that Envoy refuses on their own (all of them when
    only their combination is refused)."""
    by_filter: dict[str, list[Applied]] = {}
    for applied in merged:
        by_filter.setdefault(applied.ref, []).append(applied)
    if len(by_filter) == 1:
        return list(merged)
    bad = [
        applied
        for patches in by_filter.values()
        if validate_bootstrap(binary, patch_bootstrap(base, patches).bootstrap)
        for applied in patches
    ]
    return bad or list(merged)


def patched_bootstrap(
    base: Mapping[str, Any], snapshot: MeshSnapshot, proxy: ProxySpec, binary: str | None
) -> tuple[Mapping[str, Any], list[Diagnostic]]:
    """base with the BOOTSTRAP patches of snapshot's EnvoyFilters that apply to proxy, checked
    by the Envoy binary (None: not checked); base itself when there are none or Envoy refuses
    the result. The diagnostics say which patches were left out and why."""
    filters = snapshot.envoy_filters
    patches = bootstrap_patches(filters, proxy)
    if not patches:
        return base, []
    result = patch_bootstrap(base, patches)
    problems = [  # (operations other than MERGE: warned about where the filter is read)
        _diagnostic(a, filters, "warning", why)
        for a, why in result.left_out
        if a.patch.operation == "MERGE"
    ]
    if not result.merged:
        return base, problems
    complaint = validate_bootstrap(binary, result.bootstrap) if binary else ""
    if complaint:
        assert binary is not None
        problems += [
            _diagnostic(
                applied,
                filters,
                "error",
                f"Envoy refuses the bootstrap with this BOOTSTRAP patch ({complaint}); "
                "Envoy starts with the unpatched bootstrap",
            )
            for applied in _culprits(base, result.merged, binary)
        ]
        return base, problems
    return result.bootstrap, problems


def bootstrap_from_files(
    config: Any, paths: Sequence[Path] | None = None
) -> tuple[Mapping[str, Any], list[str]]:
    """`meshagent bootstrap`: config's bootstrap with the BOOTSTRAP patches of the mesh files
    under paths (default: the config's `sources.files.paths` that exist), checked by the
    Envoy the config names when it can be found; and the lines to tell the user (problems of
    the patches and of the EnvoyFilters that carry them)."""
    from meshagent.agent.envoy import bootstrap_for, find_envoy_binary
    from meshagent.errors import MeshAgentError
    from meshagent.insight.offline import load_paths, normalizer_for
    from meshagent.model.source import SourceEvent

    base = bootstrap_for(config)
    if paths is None:
        files = config.sources.files
        paths = [p for p in files.paths if p.exists()] if files is not None else []
    if not paths:
        return base, []
    documents, _ = load_paths(paths)  # unreadable files: `meshagent validate` says why
    event = SourceEvent("files", upserts=tuple(documents))
    snapshot, diagnostics = normalizer_for(config).apply([event])
    notes = [str(d) for d in diagnostics if d.kind == "EnvoyFilter" and "BOOTSTRAP" in d.reason]
    try:
        binary: str | None = find_envoy_binary(config.envoy.binary)
    except MeshAgentError as exc:
        binary = None
        if bootstrap_patches(snapshot.envoy_filters, config.proxy_spec()):
            notes.append(f"warning: BOOTSTRAP patches not checked with Envoy: {exc}")
    bootstrap, problems = patched_bootstrap(base, snapshot, config.proxy_spec(), binary)
    return bootstrap, notes + [str(d) for d in problems]
