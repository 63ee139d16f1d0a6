"""`meshagent explain`: the inputs of one Envoy resource, down to file:line and Consul index."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.agent.cli import main
from meshagent.insight.explain import ExplainError, Explanation, View, explain, render
from meshagent.insight.offline import build
from meshagent.model.source import SourceEvent
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds.translate import Translator
from tests.unit.test_consul_normalize import entry, instance, service

HOST = "reviews.default.svc.cluster.local"
SERVICE = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{HOST}]
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.21, labels: {{version: v1}}}}
  - {{address: 127.0.0.22, labels: {{version: v2}}}}
"""
RULE = f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: {HOST}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
"""
ROUTE = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - match:
    - uri: {{prefix: /beta}}
    route:
    - destination: {{host: {HOST}, subset: v2}}
  - route:
    - destination: {{host: {HOST}, subset: v1}}
      weight: 80
    - destination: {{host: {HOST}, subset: v2}}
      weight: 20
"""


def mesh(tmp_path: Path, **files: str) -> Path:
    root = tmp_path / "mesh"
    root.mkdir(exist_ok=True)
    for name, text in files.items():
        (root / f"{name}.yaml").write_text(text)
    return root


def offline(root: Path, name: str, kind: str | None = None) -> Explanation:
    built = build([root], None)
    assert not built.errors, built.errors
    view = View.scoped(built.snapshot, built.proxy, built.resources, built.normalizer)
    return explain(view, name, kind)


def fields_of(found: Explanation, role: str) -> dict[str, tuple[str, int | None]]:
    """path -> (the input's location, the field's line) of every field of inputs of role."""
    return {f.path: (i.location, f.line) for i in found.inputs if i.role == role for f in i.fields}


def test_a_route_names_the_virtual_service_and_the_rule_in_their_files(tmp_path: Path) -> None:
    root = mesh(tmp_path, se=SERVICE, dr=RULE, vs=ROUTE)
    found = offline(root, f"9080/{HOST}:9080/1")  # the second Envoy route: the weighted one
    assert found.served and found.kind == "route"
    vs = fields_of(found, "virtual service")
    location = f"{root}/vs.yaml:1"
    assert vs["spec.http[1].route[0].weight"] == (location, 13)
    assert vs["spec.http[1].route[1].weight"] == (location, 15)
    assert vs["spec.http[1].route[1].destination"] == (location, 14)
    assert not any(p.startswith("spec.http[0]") for p in vs)  # the other route is not it
    dr = fields_of(found, "destination rule")
    assert dr["spec.subsets[0]"] == (f"{root}/dr.yaml:1", 7)
    assert dr["spec.subsets[1]"] == (f"{root}/dr.yaml:1", 9)
    assert fields_of(found, "service")["spec.ports[0]"] == (f"{root}/se.yaml:1", 7)
    text = render(found)
    assert f"{root}/vs.yaml:13" in text and f"{root}/dr.yaml:9" in text
    # The first route (a match) reads its match, not the weights.
    first = fields_of(offline(root, f"9080/{HOST}:9080/0"), "virtual service")
    assert first["spec.http[0].match[0]"][1] == 8 and "spec.http[1].route[0].weight" not in first


def test_a_consul_cluster_names_its_config_entry_and_index() -> None:
    normalizer = Normalizer()
    resolver = {
        "Kind": "service-resolver",
        "Name": "web",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}},
    }
    web = service("web", [instance("w1", "127.0.0.5", meta={"version": "v1"})])
    snapshot, _ = normalizer.apply([SourceEvent("consul", upserts=(web, entry(resolver)))])
    from meshagent.model.proxy import ProxySpec

    proxy = ProxySpec(node_id="n")
    view = View.scoped(snapshot, proxy, Translator().generate(snapshot, proxy), normalizer)
    found = explain(view, "outbound|8080|v1|web.service.consul")
    by_role = {i.role: i for i in found.inputs}
    assert by_role["service"].ref == "ConsulService/web"
    assert by_role["service"].location == "consul index 7"
    rule = by_role["destination rule"]
    assert (rule.ref, rule.location) == ("ConsulConfigEntry/service-resolver/web", "consul index 9")
    assert [f.path for f in rule.fields] == ["Subsets.v1"]
    assert "consul index 9" in render(found)


def test_a_precedence_conflict_names_the_winner_and_the_loser(tmp_path: Path) -> None:
    rival = SERVICE.replace("name: reviews,", "name: reviews-copy,").replace("9080", "9081")
    root = mesh(tmp_path, se=SERVICE, dr=RULE)
    (root / "zz").mkdir()
    (root / "zz/se2.yaml").write_text(rival)
    found = offline(root, f"outbound|9080|v1|{HOST}")
    [conflict] = found.conflicts
    assert conflict.subject == f"service host {HOST}"
    assert conflict.winner == f"ServiceEntry/default/reviews ({root}/se.yaml:1)"
    assert conflict.losers == (f"ServiceEntry/default/reviews-copy ({root}/zz/se2.yaml:1)",)
    assert "oldest" in conflict.rule
    assert "lost: ServiceEntry/default/reviews-copy" in render(found)


def test_a_virtual_service_conflict_names_the_loser(tmp_path: Path) -> None:
    other = ROUTE.replace("name: reviews,", "name: reviews-b,")
    root = mesh(tmp_path, se=SERVICE, dr=RULE, vs=ROUTE, vs2=other)
    [conflict] = offline(root, f"9080/{HOST}:9080").conflicts
    assert conflict.winner == f"VirtualService/default/reviews ({root}/vs.yaml:1)"
    assert conflict.losers == (f"VirtualService/default/reviews-b ({root}/vs2.yaml:1)",)


def test_endpoint_and_unknown_names(tmp_path: Path) -> None:
    root = mesh(tmp_path, se=SERVICE, dr=RULE)
    found = offline(root, "127.0.0.22:9080")
    assert fields_of(found, "endpoint")["spec.endpoints[1]"] == (f"{root}/se.yaml:1", 11)
    assert f"endpoint of cluster outbound|9080|v2|{HOST}" in found.notes
    with pytest.raises(ExplainError, match="no cluster, listener"):
        offline(root, "nothing-like-this")
    with pytest.raises(ExplainError, match="has no virtual host"):
        offline(root, "9080/nope:1")


def test_cli_offline_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHAGENT_CONFIG", raising=False)
    root = mesh(tmp_path, se=SERVICE, dr=RULE, vs=ROUTE)
    assert main(["explain", f"outbound|9080|v2|{HOST}", str(root), "-c", "/nonexistent"]) == 2
    assert "nonexistent" in capsys.readouterr().err
    assert main(["explain", f"outbound|9080|v2|{HOST}", str(root), "-o", "json"]) == 0
    out = capsys.readouterr().out
    assert '"path": "spec.subsets[1]"' in out and '"line": 9' in out
    assert main(["explain", "no-such", str(root)]) == 2
    assert "no cluster, listener" in capsys.readouterr().err


def test_a_kubernetes_service_names_its_resource_version() -> None:
    from meshagent.model.proxy import ProxySpec
    from meshagent.model.source import Provenance, RawResource

    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ratings", "namespace": "default", "resourceVersion": "1234"},
        "spec": {"clusterIP": "10.96.0.7", "ports": [{"name": "http", "port": 9080}]},
    }
    prov = Provenance("kubernetes", "resourceVersion 1234", "Service", "default", "ratings")
    raw = RawResource("kubernetes", "Service", "v1", "default", "ratings", body, prov)
    normalizer = Normalizer()
    snapshot, _ = normalizer.apply([SourceEvent("kubernetes", upserts=(raw,))])
    proxy = ProxySpec(node_id="n")
    view = View.scoped(snapshot, proxy, Translator().generate(snapshot, proxy), normalizer)
    [service] = explain(view, "outbound|9080||ratings.default.svc.cluster.local").inputs
    assert (service.ref, service.location) == ("Service/default/ratings", "resourceVersion 1234")
    assert [f.path for f in service.fields] == ["spec.ports[0]"]


def test_a_conflict_between_sources_names_the_rule(tmp_path: Path) -> None:
    from meshagent.adapters.yamldocs import load_file
    from meshagent.model.proxy import ProxySpec

    text = SERVICE.replace(HOST, "web.service.consul").replace("9080", "8080")
    (tmp_path / "web.yaml").write_text(text)
    files, _ = load_file(tmp_path / "web.yaml")
    normalizer = Normalizer()
    web = service("web", [instance("w1", "127.0.0.5")])
    snapshot, _ = normalizer.apply(
        [SourceEvent("consul", upserts=(web,)), SourceEvent("files", upserts=tuple(files))]
    )
    proxy = ProxySpec(node_id="n")
    view = View.scoped(snapshot, proxy, Translator().generate(snapshot, proxy), normalizer)
    [conflict] = explain(view, "outbound|8080||web.service.consul").conflicts
    assert conflict.winner == f"ServiceEntry/default/reviews ({tmp_path}/web.yaml:1)"
    assert conflict.losers == ("ConsulService/web (consul index 7)",)
    assert "sources.consul.precedence" in conflict.rule


PATCH = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: timeouts, namespace: istio-system}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND}
    patch: {operation: MERGE, value: {connect_timeout: 9s}}
"""


def test_an_envoy_filter_that_patched_the_resource_is_named(tmp_path: Path) -> None:
    root = mesh(tmp_path, se=SERVICE, dr=RULE, ef=PATCH)
    found = offline(root, f"outbound|9080|v1|{HOST}")
    patched = [(i.ref, i.location) for i in found.inputs if i.role == "patched by"]
    assert patched == [("EnvoyFilter/istio-system/timeouts", f"{root}/ef.yaml:1")]


SIDECAR = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - hosts: ["./*"]
"""


def test_the_sidecar_that_scopes_the_proxy_is_named(tmp_path: Path) -> None:
    root = mesh(tmp_path, se=SERVICE, sc=SIDECAR)
    found = offline(root, f"outbound|9080||{HOST}")
    [sidecar] = [i for i in found.inputs if i.role.startswith("sidecar")]
    assert (sidecar.ref, sidecar.location) == ("Sidecar/default/default", f"{root}/sc.yaml:1")


def test_a_key_pasted_into_a_field_is_not_shown_even_cut_short() -> None:
    # a field's value is cut to MAX_VALUE characters: a PEM key pasted into a DestinationRule's
    # tls field showed its first ones in `meshagent explain` and /debug/explain
    from meshagent.insight.documents import fields
    from meshagent.model.source import Provenance, RawResource

    key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END"
    body = {"spec": {"trafficPolicy": {"tls": {"mode": "MUTUAL", "privateKey": key}}}}
    prov = Provenance("files", "mesh.yaml:1", "DestinationRule", "default", "r")
    raw = RawResource("files", "DestinationRule", "v1", "default", "r", body, prov)
    (field,) = fields(raw, ["spec.trafficPolicy.tls"])
    assert "MIGHAgEA" not in field.value and "[redacted]" in field.value


def test_the_cli_offers_every_kind_the_explainer_knows() -> None:
    from meshagent.insight.explain import KINDS
    from meshagent.insight.explain_cli import KIND_NAMES

    assert sorted(KIND_NAMES) == sorted(KINDS)
