"""EnvoyFilter patches on generated configuration: golden output per operation and applyTo,
one `envoy --mode validate` run over all of them, ordering, matching, incremental reuse and
attribution.

The cases are in testdata/envoyfilter/cases.yaml (one EnvoyFilter spec each) and apply to
base.yaml for PROXY. Regenerate the goldens after a reviewed change with --update-golden.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshagent.adapters.yamldocs import load_documents
from meshagent.model.proxy import InboundPort, LocalWorkload, ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic, SourceEvent
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import Translator
from tests.envoy_helpers import validate_bootstrap
from tests.unit.test_translate_envoy import static_bootstrap
from tests.unit.translate_inputs import resources_as_dict

TESTDATA = Path(__file__).parent / "testdata" / "envoyfilter"
BASE = (TESTDATA / "base.yaml").read_text()
CASES: dict[str, dict[str, Any]] = yaml.safe_load((TESTDATA / "cases.yaml").read_text())
PROXY = ProxySpec(
    node_id="vm-1",
    workloads=(
        LocalWorkload(
            "app", "default", "app", (("app", "app"),), (InboundPort(8080, 18080, "HTTP", "http"),)
        ),
    ),
)
SHORT = typeurls.SHORT_NAMES


def envoy_filter(name: str, spec: dict[str, Any], namespace: str = "default") -> str:
    spec = {k: v for k, v in spec.items() if k != "envoy"}
    doc = {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def normalize(*texts: str) -> tuple[MeshSnapshot, list[Diagnostic]]:
    resources, problems = load_documents("\n---\n".join([BASE, *texts]), "mesh.yaml")
    assert problems == []
    return Normalizer().apply([SourceEvent("files", upserts=tuple(resources))])


def translate(*texts: str, proxy: ProxySpec = PROXY) -> ResourceSet:
    snapshot, diagnostics = normalize(*texts)
    assert [d for d in diagnostics if d.severity == "error"] == []
    return Translator().generate(snapshot, proxy)


BASE_SET = translate()


def _golden(result: ResourceSet) -> dict[str, Any]:
    as_dict = resources_as_dict(result)
    patched = {
        f"{SHORT[t]}/{n}": as_dict[SHORT[t]][n]
        for (t, n) in sorted(result.patched_by)
        if n in result.of(t)
    }
    removed = [
        f"{SHORT[t]}/{n}" for t in SHORT for n in sorted(BASE_SET.of(t)) if n not in result.of(t)
    ]
    refs = sorted({r for refs in result.patched_by.values() for r in refs})
    return {"patched": patched, "removed": removed, "by": refs}


@pytest.mark.parametrize("case", sorted(CASES))
def test_patch_matches_golden(case: str, request: pytest.FixtureRequest) -> None:
    # given the base mesh and one EnvoyFilter, when translated, the patched resources (and
    # removals) are the reviewed ones
    actual = json.dumps(_golden(translate(envoy_filter(case, CASES[case]))), indent=1) + "\n"
    golden = TESTDATA / f"{case}.golden.json"
    if request.config.getoption("--update-golden"):
        golden.write_text(actual)
    assert golden.exists(), f"missing {golden.name}: run pytest --update-golden"
    assert actual == golden.read_text()


def _renamed(bootstrap: dict[str, Any], keep: set[str], index: int) -> dict[str, Any]:
    """The case's patched listeners and clusters, renamed and moved to ports of their own so
    that every case fits in one bootstrap (the base clusters come once, from the base)."""
    static = bootstrap["static_resources"]
    listeners = []
    for listener in static["listeners"]:
        if f"lds/{listener['name']}" not in keep:
            continue
        listener["name"] += f"~{index}"
        address = listener["address"]["socketAddress"]
        address["portValue"] = address.get("portValue", 0) + 1000 * (index + 1)
        listeners.append(listener)
    clusters = []
    for cluster in static["clusters"]:
        if f"cds/{cluster['name']}" in keep:
            cluster["name"] += f"~{index}"
            if "loadAssignment" in cluster:
                cluster["loadAssignment"]["clusterName"] = cluster["name"]
            clusters.append(cluster)
    return {"listeners": listeners, "clusters": clusters}


@pytest.mark.envoy
def test_envoy_accepts_every_patched_case(tmp_path: Path) -> None:
    # given every case's patched resources in one static bootstrap (beside the base
    # clusters they route to), when Envoy validates it, it passes
    bootstrap = static_bootstrap(resources_as_dict(BASE_SET))
    static = {"listeners": [], "clusters": bootstrap["static_resources"]["clusters"]}
    checked = []
    for index, case in enumerate(sorted(CASES)):
        if CASES[case].get("envoy") is False:
            continue
        result = translate(envoy_filter(case, CASES[case]))
        keep = {f"{SHORT[t]}/{n}" for t, n in result.patched_by}
        part = _renamed(static_bootstrap(resources_as_dict(result)), keep, index)
        static["listeners"] += part["listeners"]
        static["clusters"] += part["clusters"]
        checked.append(case)
    assert checked == sorted(CASES)  # every case is valid Envoy configuration
    complaint = validate_bootstrap(
        {**bootstrap, "static_resources": static}, tmp_path / "bootstrap.json", log_level="warn"
    )
    assert complaint == "", complaint[-6000:]


# -- matching, ordering, scope -------------------------------------------------------------


def _http_filters(result: ResourceSet, listener: str) -> list[str]:
    doc = resources_as_dict(result)["lds"][listener]
    manager = doc["filterChains"][0]["filters"][-1]["typedConfig"]
    return [f["name"] for f in manager["httpFilters"]]


def _insert_first(name: str, namespace: str, filter_name: str, **spec: Any) -> str:
    patch = {
        "applyTo": "HTTP_FILTER",
        "match": {"context": "SIDECAR_INBOUND"},
        "patch": {
            "operation": "INSERT_FIRST",
            "value": {
                "name": filter_name,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": "function envoy_on_request(h) end"},
                },
            },
        },
    }
    return envoy_filter(name, {"configPatches": [patch], **spec}, namespace)


def test_order_is_priority_then_root_namespace_then_name() -> None:
    # given INSERT_FIRST patches from the root namespace and the proxy's namespace with
    # priorities, when applied, the one applied last ends up first
    result = translate(
        _insert_first("b", "default", "ns-b"),
        _insert_first("a", "default", "ns-a"),
        _insert_first("root", "istio-system", "root"),
        _insert_first("low", "default", "ns-low", priority=-5),
        _insert_first("late", "istio-system", "root-late", priority=10),
    )
    # applied: ns-low (priority -5); then priority 0: root (root namespace first), ns-a and
    # ns-b (by name); then root-late (priority 10)
    assert _http_filters(result, "inbound_0.0.0.0_8080")[:5] == [
        "root-late",
        "ns-b",
        "ns-a",
        "root",
        "ns-low",
    ]


def test_workload_selector_and_other_namespaces() -> None:
    # given filters for another app, another namespace, and this app, only this app's applies
    result = translate(
        _insert_first("other-app", "default", "other", workloadSelector={"labels": {"app": "x"}}),
        _insert_first("other-ns", "prod", "prod"),
        _insert_first("mine", "default", "mine", workloadSelector={"labels": {"app": "app"}}),
    )
    assert _http_filters(result, "inbound_0.0.0.0_8080")[0] == "mine"
    assert "other" not in _http_filters(result, "inbound_0.0.0.0_8080")
    assert "prod" not in _http_filters(result, "inbound_0.0.0.0_8080")


def test_target_refs_select_the_named_gateway_only() -> None:
    refs = {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]}
    text = envoy_filter(
        "gw",
        {
            **refs,
            "configPatches": [
                {
                    "applyTo": "CLUSTER",
                    "match": {"context": "GATEWAY"},
                    "patch": {"operation": "MERGE", "value": {"connect_timeout": "9s"}},
                }
            ],
        },
    )
    sidecar = translate(text)
    assert not sidecar.patched_by
    router = dataclasses.replace(
        PROXY, proxy_type="router", labels=(("gateway.networking.k8s.io/gateway-name", "gw"),)
    )
    patched = translate(text, proxy=router)
    assert patched.patched_by
    assert all(c["connectTimeout"] == "9s" for c in resources_as_dict(patched)["cds"].values())


def test_no_filter_costs_nothing() -> None:
    # given no EnvoyFilter, the assembled set passes through as the very same object
    snapshot, _ = normalize()
    translator = Translator()
    first = translator.generate(snapshot, PROXY)
    assert translator._patches.apply(first, snapshot, PROXY) is first


def test_unchanged_resources_are_not_repatched() -> None:
    # given a patched translation, when it is repeated with the same inputs, every resource
    # is the very same object (nothing re-decoded or re-versioned)
    snapshot, _ = normalize(envoy_filter("c", CASES["cluster-merge"]))
    translator = Translator()
    first = translator.generate(snapshot, PROXY)
    second = translator.generate(snapshot, PROXY)
    for type_url in typeurls.PUSH_ORDER:
        for name, resource in first.of(type_url).items():
            assert second.of(type_url)[name] is resource
    assert second.patched_by == first.patched_by


def test_bad_value_is_a_located_error_naming_the_filter() -> None:
    spec = {
        "configPatches": [
            {
                "applyTo": "HTTP_FILTER",
                "patch": {
                    "operation": "ADD",
                    "value": {
                        "name": "x",
                        "typed_config": {"@type": "type.googleapis.com/no.Such"},
                    },
                },
            },
            {
                "applyTo": "CLUSTER",
                "patch": {"operation": "MERGE", "value": {"connect_timeout": "soon"}},
            },
        ]
    }
    _, diagnostics = normalize(envoy_filter("bad", spec))
    errors = [d for d in diagnostics if d.severity == "error"]
    assert [(d.kind, d.name, d.field) for d in errors] == [
        ("EnvoyFilter", "default/bad", "spec.configPatches[0].patch.value"),
        ("EnvoyFilter", "default/bad", "spec.configPatches[1].patch.value"),
    ]
    assert "no.Such" in errors[0].reason and "connect_timeout" in errors[1].reason
    assert all(d.location.startswith("mesh.yaml:") for d in errors)


def test_patch_values_are_read_as_istio_reads_them() -> None:
    """Istio's ValidateEnvoyFilter: an unknown field is a warning and is dropped (its strict
    parse only warns, "in case our libraries are outdated"); a v2 API type is an error with
    its hint."""
    cluster = {"connect_timeout": "3s", "bogus": 1}
    lua_v2 = {
        "name": "envoy.lua",
        "typed_config": {"@type": "type.googleapis.com/envoy.config.filter.http.lua.v2.Lua"},
    }
    spec = {
        "configPatches": [
            {"applyTo": "CLUSTER", "patch": {"operation": "MERGE", "value": cluster}},
            {"applyTo": "HTTP_FILTER", "patch": {"operation": "ADD", "value": lua_v2}},
        ]
    }
    snapshot, diagnostics = normalize(envoy_filter("mixed", spec))
    found = [(d.severity, d.field) for d in diagnostics]
    assert found == [
        ("warning", "spec.configPatches[0].patch.value"),
        ("error", "spec.configPatches[1].patch.value"),
    ]
    assert "bogus" in diagnostics[0].reason
    assert "hint: try using the v3 XDS API" in diagnostics[1].reason
    only = {"configPatches": spec["configPatches"][:1]}
    snapshot, _ = normalize(envoy_filter("lenient", only))
    (patch,) = snapshot.envoy_filters["default/lenient"].patches
    assert patch.value_type == "envoy.config.cluster.v3.Cluster" and patch.value


def test_bootstrap_patches_other_than_merge_are_a_warning() -> None:
    merge = {"applyTo": "BOOTSTRAP", "patch": {"operation": "MERGE", "value": {}}}
    add = {"applyTo": "BOOTSTRAP", "patch": {"operation": "ADD", "value": {}}}
    _, diagnostics = normalize(envoy_filter("boot", {"configPatches": [merge, add]}))
    assert [(d.severity, d.field) for d in diagnostics] == [
        ("warning", "spec.configPatches[1].patch.operation")
    ]


def test_nack_names_the_envoy_filter() -> None:
    # given a patched listener that Envoy rejects, the NACK diagnostic names the EnvoyFilter
    # and is located at it
    from meshagent.agent.publishing import NackExplainer

    snapshot, _ = normalize(envoy_filter("lua", CASES["http-filter-insert-before-router"]))
    served = Translator().generate(snapshot, PROXY)
    error = "Error adding/updating listener(s) inbound_0.0.0.0_8080: script load error"
    diagnostic = NackExplainer().diagnostic(typeurls.LISTENER, "3", error, served, snapshot, PROXY)
    assert diagnostic.name == "inbound_0.0.0.0_8080"
    assert "EnvoyFilter/default/lua" in diagnostic.reason
    assert diagnostic.location.startswith("mesh.yaml:")


CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus" / "istio"


def _corpus_extensions() -> list[Any]:
    """Every EnvoyFilter and WasmPlugin document of the corpus (Istio's own examples)."""
    if not CORPUS.is_dir():
        return []
    from meshagent.adapters.yamldocs import load_file

    found = []
    for path in sorted(CORPUS.rglob("*.yaml")):
        resources, _ = load_file(path)
        found += [r for r in resources if r.kind in ("EnvoyFilter", "WasmPlugin")]
    return found


def test_corpus_envoy_filters_validate_and_normalize() -> None:
    found = _corpus_extensions()
    if not found:
        pytest.skip("corpus absent (../shared/corpus) or without EnvoyFilter/WasmPlugin documents")
    from meshagent.normalize import validate_resource

    for resource in found:
        errors = [str(d) for d in validate_resource(resource) if d.severity == "error"]
        assert errors == []
    snapshot, _ = Normalizer().apply([SourceEvent("files", upserts=tuple(found))])
    assert len(snapshot.envoy_filters) + len(snapshot.wasm_plugins) == len(found)


def test_incremental_patching_equals_a_fresh_translation() -> None:
    # given a translator that patched a mesh, when a service is added and an endpoint moves,
    # its output equals a fresh translation of the final snapshot, with the change hint
    # naming only what changed
    filters = [envoy_filter(c, CASES[c]) for c in ("cluster-merge", "http-filter-merge")]
    resources, problems = load_documents("\n---\n".join([BASE, *filters]), "mesh.yaml")
    assert problems == []
    normalizer = Normalizer()
    first, _ = normalizer.apply([SourceEvent("files", upserts=tuple(resources))])
    translator = Translator()
    before = translator.generate(first, PROXY)
    extra = BASE.replace("reviews", "ratings").replace("10.0.0.1", "10.0.0.9")
    added, _ = load_documents(extra, "more.yaml")
    second, _ = normalizer.apply([SourceEvent("files", upserts=tuple(added))])
    after = translator.generate(second, PROXY)
    fresh = Translator().generate(second, PROXY)
    for type_url in typeurls.PUSH_ORDER:
        assert {n: r.version for n, r in after.of(type_url).items()} == {
            n: r.version for n, r in fresh.of(type_url).items()
        }
    assert dict(after.patched_by) == dict(fresh.patched_by)
    changed = after.changed_since(before)
    assert changed is not None
    assert "outbound|9080||ratings.default.svc.cluster.local" in changed[typeurls.CLUSTER]
    assert "outbound|9080||reviews.default.svc.cluster.local" not in changed[typeurls.CLUSTER]


def test_root_namespace_selector_and_inbound_target_port() -> None:
    # a root-namespace filter selects workloads of any namespace by label; an inbound
    # listener is matched by the application's port as well as the mesh port
    selected = _insert_first(
        "r", "istio-system", "root-sel", workloadSelector={"labels": {"app": "app"}}
    )
    assert _http_filters(translate(selected), "inbound_0.0.0.0_8080")[0] == "root-sel"
    by_target = envoy_filter(
        "t",
        {
            "configPatches": [
                {
                    "applyTo": "LISTENER",
                    "match": {"context": "SIDECAR_INBOUND", "listener": {"portNumber": 18080}},
                    "patch": {
                        "operation": "MERGE",
                        "value": {"per_connection_buffer_limit_bytes": 1},
                    },
                }
            ]
        },
    )
    assert list(translate(by_target).patched_by) == [(typeurls.LISTENER, "inbound_0.0.0.0_8080")]


def test_a_new_cluster_filter_does_not_repatch_listeners() -> None:
    # given listeners patched by one EnvoyFilter, when a CLUSTER-only EnvoyFilter arrives,
    # the patched listeners are the very same objects and only clusters change
    lua = envoy_filter("lua", CASES["http-filter-insert-before-router"])
    resources, _ = load_documents("\n---\n".join([BASE, lua]), "mesh.yaml")
    normalizer = Normalizer()
    first, _ = normalizer.apply([SourceEvent("files", upserts=tuple(resources))])
    translator = Translator()
    before = translator.generate(first, PROXY)
    clusters, _ = load_documents(envoy_filter("c", CASES["cluster-merge"]), "c.yaml")
    second, _ = normalizer.apply([SourceEvent("files", upserts=tuple(clusters))])
    after = translator.generate(second, PROXY)
    for name, listener in before.of(typeurls.LISTENER).items():
        assert after.of(typeurls.LISTENER)[name] is listener
    changed = after.changed_since(before)
    assert changed is not None and set(changed) == {typeurls.CLUSTER}
    fresh = Translator().generate(second, PROXY)
    assert dict(after.patched_by) == dict(fresh.patched_by)


def test_service_target_refs_warn_that_no_proxy_is_selected() -> None:
    spec = {
        "targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}],
        "configPatches": [{"applyTo": "CLUSTER", "patch": {"operation": "REMOVE"}}],
    }
    _, diagnostics = normalize(envoy_filter("svc", spec))
    assert [(d.severity, d.field) for d in diagnostics] == [("warning", "spec.targetRefs")]
    assert translate(envoy_filter("svc", spec)).patched_by == {}


def test_a_patch_that_breaks_consistency_is_held_back_and_names_the_filter() -> None:
    # given an EnvoyFilter that ADDs a cluster under a generated cluster's name and an EDS
    # cluster without endpoints, the consistency check refuses the set, naming the filter
    from meshagent.agent.publishing import inconsistency_diagnostics
    from meshagent.xds.consistency import ConsistencyChecker

    spec = {
        "configPatches": [
            {
                "applyTo": "CLUSTER",
                "patch": {
                    "operation": "ADD",
                    "value": {"name": "inbound|8080||", "type": "STATIC", "connect_timeout": "1s"},
                },
            },
            {
                "applyTo": "CLUSTER",
                "patch": {
                    "operation": "ADD",
                    "value": {"name": "no-endpoints", "type": "EDS", "eds_cluster_config": {}},
                },
            },
        ]
    }
    snapshot, _ = normalize(envoy_filter("dup", spec))
    result = Translator().generate(snapshot, PROXY)
    found = ConsistencyChecker().check(result)
    assert len(found) == 2
    diagnostics = inconsistency_diagnostics(found, snapshot, PROXY, result)
    assert all("EnvoyFilter/default/dup" in d.reason for d in diagnostics)
    assert all(d.location.startswith("mesh.yaml:") for d in diagnostics)


def test_deprecated_filter_names_in_a_match_are_a_warning_as_in_istio() -> None:
    """Istio's validateListenerMatchName: the old names still match, with a warning naming
    the new one."""
    hcm = {"name": "envoy.http_connection_manager", "subFilter": {"name": "envoy.router"}}
    spec = {
        "configPatches": [
            {
                "applyTo": "HTTP_FILTER",
                "match": {"listener": {"filterChain": {"filter": hcm}}},
                "patch": {"operation": "REMOVE"},
            }
        ]
    }
    _, diagnostics = normalize(envoy_filter("old", spec))
    where = "spec.configPatches[0].match.listener.filterChain.filter"
    assert [(d.severity, d.field) for d in diagnostics] == [
        ("warning", f"{where}.name"),
        ("warning", f"{where}.subFilter.name"),
    ]
    assert "'envoy.filters.http.router' instead" in diagnostics[1].reason


def test_cluster_match_reads_the_sni_form_of_cluster_names_as_istio() -> None:
    """Istio's ParseSubsetKey also reads `outbound_.<port>_.<subset>_.<host>` (the clusters
    of an AUTO_PASSTHROUGH gateway), so a service/port/subset match finds them."""
    from meshagent.model.extensions import GATEWAY, ClusterMatch, ConfigPatch
    from meshagent.xds.envoyfilter.clusters import cluster_matches
    from meshagent.xds.envoyfilter.select import Applied

    def matches(match: ClusterMatch, name: str) -> bool:
        patch = ConfigPatch(index=0, apply_to="CLUSTER", operation="MERGE", cluster=match)
        return cluster_matches(Applied(patch, "EnvoyFilter/x/y"), name, GATEWAY)

    sni = "outbound_.8080_.v1_.reviews.default.svc.cluster.local"
    wanted = ClusterMatch(port_number=8080, service="reviews.default.svc.cluster.local")
    assert matches(wanted, sni)
    assert matches(dataclasses.replace(wanted, subset="v1"), sni)
    assert not matches(dataclasses.replace(wanted, subset="v2"), sni)
    assert not matches(dataclasses.replace(wanted, port_number=9080), sni)
    assert matches(wanted, "outbound|8080||reviews.default.svc.cluster.local")


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"x": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_a_value_too_deep_to_read_back_is_a_located_error() -> None:
    # json_format builds a Struct 40 dicts deep (about 120 message levels), but protobuf's
    # binary parsers (the patch stage's, Envoy's) stop at 100: a LISTENER ADD of it used to
    # fail every translation for the proxy (TranslationError) while the EnvoyFilter stood,
    # and an Any holding one made /debug/resources fail (the Any could not be unpacked)
    listener = {
        "name": "deep",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15999}},
        "metadata": {"filter_metadata": {"f": _nested(40)}},
    }
    typed = {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
        "type_url": "type.googleapis.com/google.protobuf.Struct",
        "value": _nested(33),
    }
    spec = {
        "configPatches": [
            {"applyTo": "LISTENER", "patch": {"operation": "ADD", "value": listener}},
            {
                "applyTo": "HTTP_FILTER",
                "patch": {
                    "operation": "INSERT_FIRST",
                    "value": {"name": "x", "typed_config": typed},
                },
            },
        ]
    }
    snapshot, diagnostics = normalize(envoy_filter("deep", spec))
    errors = [d for d in diagnostics if d.severity == "error"]
    assert [(d.name, d.field) for d in errors] == [
        ("default/deep", "spec.configPatches[0].patch.value"),
        ("default/deep", "spec.configPatches[1].patch.value"),
    ]
    assert all("nested deeper than protobuf's 100" in d.reason for d in errors)
    result = Translator().generate(snapshot, PROXY)
    assert set(result.of(typeurls.LISTENER)) == set(BASE_SET.of(typeurls.LISTENER))


def test_an_at_type_never_imports_a_module_outside_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the package of an "@type" was imported to find the type: an EnvoyFilter could make the
    # agent run any installed module's import-time code ("this", "antigravity", ...)
    package = tmp_path / "sideeffect_pkg"
    package.mkdir()
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    value = {"name": "x", "typed_config": {"@type": "type.googleapis.com/sideeffect_pkg.Foo"}}
    spec = {
        "configPatches": [{"applyTo": "HTTP_FILTER", "patch": {"operation": "ADD", "value": value}}]
    }
    _, diagnostics = normalize(envoy_filter("imports", spec))
    (error,) = [d for d in diagnostics if d.severity == "error"]
    assert "sideeffect_pkg.Foo" in error.reason
    assert not marker.exists()
