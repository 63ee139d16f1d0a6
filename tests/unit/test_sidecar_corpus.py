"""Istio's own Sidecar documents (../shared/corpus, never copied here) validate, convert and
translate for a proxy in their namespace, with and without capture, into a consistent set."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.adapters.yamldocs import load_file
from meshagent.model import LocalWorkload, ProxySpec, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.consistency import ConsistencyChecker
from meshagent.xds.translate import generate

CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus" / "istio"
ABSENT = "corpus absent: ../shared/corpus not found"


def _files() -> list[object]:
    if not CORPUS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=ABSENT))]
    found = sorted(
        p
        for folder in ("config", "dataset")
        for p in (CORPUS / folder).glob("*.yaml")
        if "kind: Sidecar" in p.read_text(encoding="utf-8")
    )
    return found or [pytest.param(None, marks=pytest.mark.skip(reason="no Sidecar in corpus"))]


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name if p else "-")
def test_istio_sidecars_validate_and_translate(path: Path) -> None:
    resources, problems = load_file(path)
    assert problems == []
    snapshot, diags = Normalizer().apply([SourceEvent("files", upserts=tuple(resources))])
    sidecar_errors = [str(d) for d in diags if d.kind == "Sidecar" and d.severity == "error"]
    assert sidecar_errors == []
    assert snapshot.sidecars, "every Sidecar of the file is in the snapshot"
    for sidecar in snapshot.sidecars.values():
        for capture in (False, True):
            workload = LocalWorkload(
                "w", sidecar.namespace, "sa", labels=sidecar.workload_selector or ()
            )
            proxy = ProxySpec(
                node_id="vm", namespace=sidecar.namespace, workloads=(workload,), capture=capture
            )
            out = generate(snapshot, proxy)
            assert ConsistencyChecker().check(out) == []
            outbound = [n for n in out.of(typeurls.CLUSTER) if n.startswith("outbound|")]
            for name in outbound:  # only services the Sidecar imports
                host = name.rsplit("|", 1)[1]
                allowed = _imported_namespaces(sidecar)
                assert "*" in allowed or snapshot.services[host].namespace in allowed
            if sidecar.ingress and not capture:
                ports = {i.port.number for i in sidecar.ingress}
                assert {f"inbound|{p}||" for p in ports} <= set(out.of(typeurls.CLUSTER))


def _imported_namespaces(sidecar: object) -> set[str]:
    from meshagent.model.sidecar import Sidecar

    assert isinstance(sidecar, Sidecar)
    found = {h.namespace for e in sidecar.egress for h in e.hosts}
    return {sidecar.namespace if ns == "." else ns for ns in found} | (
        {"*"} if not sidecar.egress else set()
    )
