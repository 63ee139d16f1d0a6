"""The Normalizer: last-known-good, deletes, conflicts, workload selection, identity reuse."""

from __future__ import annotations

import time

from meshagent.adapters.yamldocs import load_documents
from meshagent.model.source import Diagnostic, SourceEvent
from meshagent.normalize import Normalizer
from tests.unit.normalize_helpers import delete, upsert

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: prod
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subset: {subset}
"""


def _se(name: str, host: str, port: int = 80, namespace: str = "ns") -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: {namespace}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
"""


def _errors(diags: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diags if d.severity == "error"]


def test_invalid_edit_keeps_last_known_good_then_valid_edit_and_delete() -> None:
    n = Normalizer()
    key = "prod/reviews"
    # given a valid VS
    snap, diags = n.apply([upsert(VS.format(subset="v1"))])
    assert _errors(diags) == [] and snap.version == 1  # (warnings: reviews is not declared)
    first = snap.virtual_services[key]
    assert first.http[0].route[0].destination.subset == "v1"
    # when an invalid edit arrives, then the old VS keeps serving and the error is reported
    snap, diags = n.apply([upsert(VS.format(subset="v1") + "    timeout: soon\n")])
    assert [(d.location, d.field) for d in _errors(diags)] == [
        ("mesh.yaml:13", "spec.http[0].timeout")
    ]
    assert snap.virtual_services[key] is first and snap.version == 1
    # when a valid edit arrives, then it replaces the old one
    snap, diags = n.apply([upsert(VS.format(subset="v2"))])
    assert _errors(diags) == [] and snap.version == 2
    assert snap.virtual_services[key].http[0].route[0].destination.subset == "v2"
    # when it is deleted, then it is gone
    snap, _ = n.apply([delete(VS.format(subset="v2"))])
    assert key not in snap.virtual_services and snap.version == 3
    assert n.snapshot is snap


def test_identical_upsert_changes_nothing() -> None:
    n = Normalizer()
    snap, _ = n.apply([upsert(VS.format(subset="v1"))])
    again, diags = n.apply([upsert(VS.format(subset="v1"))])
    assert again is snap and diags == []


def test_unchanged_services_are_the_same_objects_after_one_change() -> None:
    # given many ServiceEntries
    n = Normalizer()
    texts = [_se(f"se-{i}", f"svc-{i}.example.com") for i in range(50)]
    before, _ = n.apply([upsert(*texts)])
    # when one of them changes
    after, diags = n.apply([upsert(_se("se-7", "svc-7.example.com", port=8080))])
    # then only that Service is new; every other Service and endpoint tuple is reused
    assert diags == [] and after.version == before.version + 1
    assert after.services["svc-7.example.com"].ports[0].number == 8080
    for i in range(50):
        host = f"svc-{i}.example.com"
        same = after.services[host] is before.services[host]
        assert same is (i != 7)
        if i != 7:
            assert after.endpoints[host] is before.endpoints[host]
    assert after.virtual_services is before.virtual_services  # untouched maps are shared


def test_one_change_in_ten_thousand_service_entries_is_cheap() -> None:
    n = Normalizer()
    text = "---\n".join(_se(f"se-{i}", f"svc-{i}.example.com") for i in range(10_000))
    resources, _ = load_documents(text, "big.yaml")
    n.apply([SourceEvent("files", upserts=tuple(resources))])
    changes = [upsert(_se("se-5", "svc-5.example.com", port=p)) for p in range(81, 86)]
    timings = []
    for event in changes:
        start = time.perf_counter()
        n.apply([event])
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.005, timings


def test_conflicting_service_entries_oldest_wins_with_warning() -> None:
    n = Normalizer()
    n.apply([upsert(_se("first", "shared.example.com", port=80))])
    snap, diags = n.apply([upsert(_se("second", "shared.example.com", port=81, namespace="a"))])
    # the older one keeps the host; the newer one is told who owns it
    assert snap.services["shared.example.com"].ports[0].number == 80
    assert [(d.severity, d.name, d.field) for d in diags] == [("warning", "a/second", "spec.hosts")]
    assert "ServiceEntry/ns/first" in diags[0].reason
    # when the owner goes away, the other takes over
    snap, _ = n.apply([delete(_se("first", "shared.example.com"))])
    assert snap.services["shared.example.com"].ports[0].number == 81


def test_conflicts_in_one_batch_are_broken_by_namespace_and_name() -> None:
    n = Normalizer()
    snap, diags = n.apply(
        [upsert(_se("b", "x.example.com", port=2), _se("a", "x.example.com", port=1))]
    )
    assert snap.services["x.example.com"].ports[0].number == 1
    assert [d.name for d in diags] == ["ns/b"]


def test_conflicting_destination_rules_oldest_wins() -> None:
    dr = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n"
        "  name: {name}\n  namespace: prod\nspec:\n  host: reviews\n"
    )
    n = Normalizer()
    n.apply([upsert(dr.format(name="one"))])
    snap, diags = n.apply([upsert(dr.format(name="two"))])
    assert snap.destination_rules["reviews.prod.svc.cluster.local"].name == "one"
    assert [(d.name, d.field) for d in diags] == [("prod/two", "spec.host")]


def test_workload_selector_picks_matching_workload_entries_in_its_namespace() -> None:
    se = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: app, namespace: vms}
spec:
  hosts: [app.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector:
    labels: {app: web}
"""
    we = (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        "metadata: {{name: {name}, namespace: {ns}}}\n"
        "spec: {{address: {ip}, labels: {{app: {app}}}}}\n"
    )
    n = Normalizer()
    snap, _ = n.apply(
        [
            upsert(
                se,
                we.format(name="vm1", ns="vms", ip="10.0.0.1", app="web"),
                we.format(name="vm2", ns="vms", ip="10.0.0.2", app="db"),
                we.format(name="vm3", ns="other", ip="10.0.0.3", app="web"),
            )
        ]
    )
    assert [e.address for e in snap.endpoints["app.example.com"]] == ["10.0.0.1"]
    assert set(snap.workloads) == {"vms/vm1", "vms/vm2", "other/vm3"}
    # when a matching WorkloadEntry is added, the endpoints follow
    snap, _ = n.apply([upsert(we.format(name="vm4", ns="vms", ip="10.0.0.4", app="web"))])
    assert [e.address for e in snap.endpoints["app.example.com"]] == ["10.0.0.1", "10.0.0.4"]
    snap, _ = n.apply([delete(we.format(name="vm1", ns="vms", ip="10.0.0.1", app="web"))])
    assert [e.address for e in snap.endpoints["app.example.com"]] == ["10.0.0.4"]


def test_unsupported_kinds_warn_once_and_are_ignored() -> None:
    gateway = (
        # A kind this normalizer knows nothing of (EnvoyFilter is validated now)
        "apiVersion: example.com/v1\nkind: MeshWidget\nmetadata: {name: gw}\nspec: {}\n"
    )
    deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n"
    n = Normalizer()
    snap, diags = n.apply([upsert(gateway, deployment)])
    assert [(d.severity, d.kind) for d in diags] == [
        ("warning", "MeshWidget"),
        ("warning", "Deployment"),
    ]
    assert all("kind not supported yet" in d.reason for d in diags)
    assert snap.version == 0


def test_unknown_kind_in_an_istio_group_is_an_error() -> None:
    typo = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualServise\nmetadata: {name: r}\n"
        "spec: {hosts: [r]}\n"
    )
    snap, diags = Normalizer().apply([upsert(typo)])
    [d] = diags
    assert (d.severity, d.field, d.location) == ("error", "kind", "mesh.yaml:2")
    assert "unknown kind 'VirtualServise' in networking.istio.io" in d.reason
    assert "did you mean VirtualService?" in d.reason
    assert snap.version == 0


def test_adapter_errors_pass_through() -> None:
    problem = Diagnostic("error", "files", "bad.yaml:3", "", "", "", "YAML syntax error")
    n = Normalizer()
    snap, diags = n.apply([SourceEvent("files", errors=(problem,))])
    assert diags == [problem] and snap.version == 0


def test_default_namespace_and_domain_suffix_apply() -> None:
    n = Normalizer(domain_suffix="corp.internal", default_namespace="team")
    text = VS.format(subset="v1").replace("  namespace: prod\n", "")
    snap, _ = n.apply([upsert(text)])
    vs = snap.virtual_services["team/reviews"]
    assert vs.hosts == ("reviews.team.svc.corp.internal",)
    assert vs.provenance is not None and vs.provenance.location == "mesh.yaml:1"


def test_accepted_changes_names_what_accepted_of_may_answer_differently() -> None:
    from tests.unit.normalize_helpers import raw

    se = (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: a, namespace: default}\n"
        "spec: {hosts: [a.example.com], ports: [{number: 80, name: http}], resolution: DNS}\n"
    )
    normalizer = Normalizer()
    first = raw(se)
    # an accepted document is named once, then the set starts afresh
    normalizer.apply([SourceEvent("files", upserts=(first,))])
    assert normalizer.accepted_changes() == {first.key}
    assert normalizer.accepted_changes() == set()
    # an invalid version leaves the accepted one serving: nothing to name
    broken = raw(se.replace("resolution: DNS", "resolution: NOPE"))
    normalizer.apply([SourceEvent("files", upserts=(broken,))])
    assert normalizer.accepted_changes() == set()
    assert normalizer.accepted_of([first.key])[first.key] is first
    # the same text moved in its file, and a delete, are named
    moved = raw("#\n" + se)
    normalizer.apply([SourceEvent("files", upserts=(moved,))])
    assert normalizer.accepted_changes() == {first.key}
    normalizer.apply([SourceEvent("files", deletes=(first.key,))])
    assert normalizer.accepted_changes() == {first.key}
    assert normalizer.accepted_of([first.key])[first.key] is None
