"""`meshagent analyze`: one positive and one negative case per message code, exit codes,
output formats, suppressions, and zero messages on the quickstart and on Istio's bookinfo."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from meshagent.agent.cli import main
from meshagent.insight.analysis import analyze
from meshagent.insight.cli import analyze_paths
from meshagent.insight.context import AnalysisInput
from meshagent.insight.messages import TYPES, Message
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Provenance, RawResource

ROOT = Path(__file__).parents[2]
BOOKINFO = ROOT / ".." / "shared" / "corpus" / "istio" / "bookinfo"
BOOKINFO_SERVICES = ROOT / "tests" / "data" / "analyze" / "bookinfo-services.yaml"

NET = "networking.istio.io/v1"
SEC = "security.istio.io/v1"


def se(name: str, host: str, port: int = 80, protocol: str | None = "HTTP", **spec: object) -> str:
    p: dict[str, object] = {"number": port, "name": f"p{port}"}
    if protocol is not None:
        p["protocol"] = protocol
    body = {"hosts": [host], "ports": [p], "resolution": "STATIC", **spec}
    return _doc(NET, "ServiceEntry", name, body)


def we(name: str, labels: dict[str, str], address: str = "10.0.0.1") -> str:
    return _doc(NET, "WorkloadEntry", name, {"address": address, "labels": labels})


def vs(name: str, spec: dict[str, object]) -> str:
    return _doc(NET, "VirtualService", name, spec)


def _doc(api: str, kind: str, name: str, spec: object, namespace: str = "default") -> str:
    body = {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return yaml.safe_dump(body, sort_keys=False)


def route(host: str, subset: str = "") -> list[dict[str, object]]:
    dest: dict[str, object] = {"host": host}
    if subset:
        dest["subset"] = subset
    return [{"destination": dest}]


def to_shop(**extra: object) -> list[dict[str, object]]:
    return [{"route": route("shop.example.com"), **extra}]


def shop_vs(name: str, http: list[dict[str, object]], **spec: object) -> str:
    return vs(name, {"hosts": ["shop.example.com"], "http": http, **spec})


HTTP80 = {"number": 80, "name": "http", "protocol": "HTTP"}


def sidecar(name: str, labels: dict[str, str] | None = None) -> str:
    spec: dict[str, object] = {"egress": [{"hosts": ["./*"]}]}
    if labels is not None:
        spec["workloadSelector"] = {"labels": labels}
    return _doc(NET, "Sidecar", name, spec)


SHOP = se("shop", "shop.example.com", workloadSelector={"labels": {"app": "shop"}})
SHOP_V1 = we("shop-v1", {"app": "shop", "version": "v1"})


def run(tmp_path: Path, *docs: str) -> list[Message]:
    (tmp_path / "mesh.yaml").write_text("---\n".join(docs))
    return analyze_paths([tmp_path])[0]


def codes(messages: list[Message]) -> list[str]:
    return [m.code for m in messages]


# --- one case per code: (code, documents that must give it, documents that must not) -------

CASES: dict[str, tuple[list[str], list[str]]] = {
    "IST0002": (
        [SHOP, shop_vs("v", to_shop(fault={"delay": {"fixedDelay": "1s", "percent": 10}}))],
        [SHOP, shop_vs("v", to_shop(
            fault={"delay": {"fixedDelay": "1s", "percentage": {"value": 10}}}))],
    ),
    "IST0101": (
        [SHOP, shop_vs("v", [{"route": route("nope.example.com")}])],
        [SHOP, shop_vs("v", to_shop())],
    ),
    "IST0106": (
        [_doc(NET, "DestinationRule", "d", {"subsets": [{"name": "v1"}]})],
        [SHOP, _doc(NET, "DestinationRule", "d", {"host": "shop.example.com"})],
    ),
    "IST0109": (
        [SHOP, shop_vs("a", to_shop()),
         shop_vs("b", to_shop())],
        [SHOP, vs("a", {"hosts": ["shop.example.com"], "exportTo": ["."],
                        "http": [{"route": route("shop.example.com")}]}),
         vs("b", {"hosts": ["shop.example.com"], "exportTo": ["."],
                  "http": [{"route": route("shop.example.com")}]}).replace(
                      "namespace: default", "namespace: other")],
    ),
    "IST0110": (
        [SHOP_V1, *(sidecar(n, {"app": "shop"}) for n in ("a", "b"))],
        [SHOP_V1, sidecar("a", {"app": "shop"}), sidecar("b", {"app": "shop", "version": "v1"})],
    ),
    "IST0111": (
        [sidecar("a"), sidecar("b")],
        [sidecar("a"), sidecar("b").replace("namespace: default", "namespace: other")],
    ),
    "IST0127": (
        [SHOP, SHOP_V1, _doc(SEC, "AuthorizationPolicy", "p", {
            "selector": {"matchLabels": {"app": "payments"}}, "action": "DENY",
            "rules": [{}]})],
        [SHOP, SHOP_V1, _doc(SEC, "AuthorizationPolicy", "p", {
            "selector": {"matchLabels": {"app": "shop"}}, "action": "DENY", "rules": [{}]})],
    ),
    "IST0130": (
        [SHOP, vs("v", {"hosts": ["shop.example.com"], "http": [
            {"route": route("shop.example.com")}, {"route": route("shop.example.com")}]})],
        [SHOP, vs("v", {"hosts": ["shop.example.com"], "http": [
            {"match": [{"uri": {"prefix": "/a"}}], "route": route("shop.example.com")},
            {"route": route("shop.example.com")}]})],
    ),
    "IST0131": (
        [SHOP, vs("v", {"hosts": ["shop.example.com"], "http": [
            {"match": [{"uri": {"prefix": "/api"}}], "route": route("shop.example.com")},
            {"match": [{"uri": {"prefix": "/api/v2"}}, {"uri": {"exact": "/x"}}],
             "route": route("shop.example.com")}]})],
        [SHOP, vs("v", {"hosts": ["shop.example.com"], "http": [
            {"match": [{"uri": {"prefix": "/api/v2"}}], "route": route("shop.example.com")},
            {"match": [{"uri": {"prefix": "/api"}}], "route": route("shop.example.com")}]})],
    ),
    "IST0132": (
        [SHOP, we("gw", {"istio": "ingress"}),
         _doc(NET, "Gateway", "g", {"selector": {"istio": "ingress"}, "servers": [
             {"port": HTTP80, "hosts": ["web.example.com"]}]}),
         shop_vs("v", to_shop(), gateways=["g"])],
        [SHOP, we("gw", {"istio": "ingress"}),
         _doc(NET, "Gateway", "g", {"selector": {"istio": "ingress"}, "servers": [
             {"port": HTTP80, "hosts": ["*.example.com"]}]}),
         shop_vs("v", to_shop(), gateways=["g"])],
    ),
    "IST0133": (
        [SHOP, _doc("v1", "ConfigMap", "c", {})],
        [SHOP],
    ),
    "IST0145": (
        [we("gw", {"istio": "ingress"})] + [
            _doc(NET, "Gateway", n, {"selector": {"istio": "ingress"}, "servers": [
                {"port": HTTP80, "hosts": [h]}]})
            for n, h in (("a", "shop.example.com"), ("b", "*.example.com"))],
        [we("gw", {"istio": "ingress"})] + [
            _doc(NET, "Gateway", n, {"selector": {"istio": "ingress"}, "servers": [
                {"port": {**HTTP80, "number": p}, "hosts": ["shop.example.com"]}]})
            for n, p in (("a", 80), ("b", 8080))],
    ),
    "IST0173": (
        [SHOP, SHOP_V1, _doc(NET, "DestinationRule", "d", {"host": "shop.example.com", "subsets": [
            {"name": "v9", "labels": {"version": "v9"}}]})],
        [SHOP, SHOP_V1, _doc(NET, "DestinationRule", "d", {"host": "shop.example.com", "subsets": [
            {"name": "v1", "labels": {"version": "v1"}}]})],
    ),
    "IST0174": (
        [SHOP, _doc(NET, "DestinationRule", "d", {"host": "nope.example.com"})],
        [SHOP, _doc(NET, "DestinationRule", "d", {"host": "shop.example.com"})],
    ),
    "MA0001": (
        [SHOP, se("shop-tcp", "shop.example.com", protocol="TCP")],
        [se("shop", "shop.example.com", exportTo=["."]),
         se("shop-tcp", "shop.example.com", protocol="TCP", exportTo=["."]).replace(
            "namespace: default", "namespace: other")],
    ),
    "MA0002": (
        [se("db", "db.example.com", 5432, protocol=None)],
        [se("db", "db.example.com", 5432, protocol="TCP")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_code_is_reported_when_it_applies_and_not_otherwise(tmp_path: Path, code: str) -> None:
    positive, negative = CASES[code]
    found = run(tmp_path, *positive)
    assert code in codes(found), [str(m) for m in found]
    assert all(m.location.startswith(str(tmp_path)) for m in found if m.code == code)
    (tmp_path / "mesh.yaml").unlink()
    clean = run(tmp_path, *negative)
    assert code not in codes(clean), [str(m) for m in clean]


def test_every_code_but_the_documented_exceptions_has_a_case() -> None:
    # IST0001 (a check's bug), IST0118 (Kubernetes Services only): tested below.
    assert set(TYPES) - set(CASES) == {"IST0001", "IST0118"}


def test_rival_sidecars_are_one_specific_message_each_not_also_a_schema_warning(
    tmp_path: Path,
) -> None:
    found = run(tmp_path, sidecar("a"), sidecar("b"))
    assert codes(found) == ["IST0111", "IST0111"]
    assert found[1].text.startswith('The Sidecars [a b] in namespace "default" have no workload')


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (_doc(SEC, "PeerAuthentication", "p", {"selector": {"matchLabels": {"app": "pay"}},
                                               "mtls": {"mode": "STRICT"}}),
         "spec.selector.matchLabels"),
        (_doc(SEC, "RequestAuthentication", "p", {"selector": {"matchLabels": {"app": "pay"}},
                                                  "jwtRules": [{"issuer": "https://i",
                                                                "jwksUri": "https://i/keys"}]}),
         "spec.selector.matchLabels"),
        (sidecar("s", {"app": "pay"}), "spec.workloadSelector.labels"),
        (_doc(NET, "DestinationRule", "d", {"host": "shop.example.com",
                                           "workloadSelector": {"matchLabels": {"app": "pay"}}}),
         "spec.workloadSelector.matchLabels"),
    ],
    ids=["PeerAuthentication", "RequestAuthentication", "Sidecar", "DestinationRule"],
)  # fmt: skip
def test_every_policy_kind_that_selects_nothing_is_ist0127(
    tmp_path: Path, document: str, field: str
) -> None:
    found = [m for m in run(tmp_path, SHOP, SHOP_V1, document) if m.code == "IST0127"]
    assert [(m.field, m.text) for m in found] == [
        (field, "No matching workloads for this resource with the following labels: app=pay")
    ]
    (tmp_path / "mesh.yaml").unlink()
    assert codes(run(tmp_path, SHOP, SHOP_V1, document.replace("app: pay", "app: shop"))) == []


def test_root_namespace_policies_match_workloads_of_every_namespace(tmp_path: Path) -> None:
    policy = _doc(SEC, "AuthorizationPolicy", "p", {
        "selector": {"matchLabels": {"app": "shop"}}, "action": "DENY", "rules": [{}]},
        namespace="istio-system")  # fmt: skip
    assert codes(run(tmp_path, SHOP, SHOP_V1, policy)) == []
    other = policy.replace("namespace: istio-system", "namespace: other")
    (tmp_path / "mesh.yaml").unlink()
    assert codes(run(tmp_path, SHOP, SHOP_V1, other)) == ["IST0127"]


def test_matches_told_apart_by_fields_the_model_does_not_keep_are_not_compared(
    tmp_path: Path,
) -> None:
    # Istio's own example (routing via an egress gateway): the rules differ by match.gateways
    http = [
        {"match": [{"gateways": [g]}], "route": route("shop.example.com")} for g in ("mesh", "eg")
    ]
    found = run(tmp_path, SHOP, shop_vs("v", http, gateways=["mesh"]))
    assert not {"IST0130", "IST0131"} & set(codes(found)), [str(m) for m in found]
    # and by sourceNamespace, which meshagent does not implement (a schema warning says so)
    (tmp_path / "mesh.yaml").unlink()
    http = [
        {"match": [{"sourceNamespace": ns}], "route": route("shop.example.com")}
        for ns in ("a", "b")
    ]
    found = run(tmp_path, SHOP, shop_vs("v", http))
    assert not {"IST0130", "IST0131"} & set(codes(found)), [str(m) for m in found]
    # while the same match gateways make a duplicate
    (tmp_path / "mesh.yaml").unlink()
    http = [{"match": [{"gateways": ["mesh"]}], "route": route("shop.example.com")}] * 2
    found = run(tmp_path, SHOP, shop_vs("v", http, gateways=["mesh"]))
    assert "IST0131" in codes(found)


def test_a_gateway_selecting_no_proxy_is_ist0101_and_the_router_node_counts(tmp_path: Path) -> None:
    gw = _doc(NET, "Gateway", "g", {"selector": {"istio": "edge"}, "servers": [
        {"port": HTTP80, "hosts": ["*"]}]})  # fmt: skip
    found = run(tmp_path, gw)
    assert [m.text for m in found] == ['Referenced selector not found: "istio=edge"']
    assert found[0].location == f"{tmp_path / 'mesh.yaml'}:8"  # the selector's label
    config = tmp_path.parent / f"{tmp_path.name}-agent.yaml"
    config.write_text(
        f"node: {{id: gw-1, type: router, labels: {{istio: edge}}}}\nstate_dir: {tmp_path}/s\n"
        f"sources: {{files: {{paths: [{tmp_path}]}}}}\n"
    )
    assert main(["analyze", "--config", str(config)]) == 0


def test_a_virtual_service_bound_to_a_missing_gateway_is_ist0101(tmp_path: Path) -> None:
    found = run(tmp_path, SHOP, shop_vs("v", to_shop(), gateways=["edge"]))
    assert [(m.code, m.field, m.text) for m in found] == [
        ("IST0101", "spec.gateways[0]", 'Referenced gateway not found: "default/edge"')
    ]


def _kube_service(port: dict[str, object]) -> RawResource:
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [port]}}  # fmt: skip
    prov = Provenance("kubernetes", "resourceVersion 7", "Service", "shop", "web")
    return RawResource("kubernetes", "Service", "v1", "shop", "web", body, prov)


def test_kubernetes_service_ports_without_a_protocol_name_are_ist0118() -> None:
    bad = _kube_service({"name": "web", "port": 80, "targetPort": 8080})
    good = _kube_service({"name": "http-web", "port": 80})
    found = analyze(AnalysisInput(MeshSnapshot(), documents={bad.key: bad}))
    assert [(m.code, m.origin, m.location) for m in found] == [
        ("IST0118", "Service shop/web", "resourceVersion 7")
    ]
    assert "Port name web (port: 80, targetPort: 8080)" in found[0].text
    assert analyze(AnalysisInput(MeshSnapshot(), documents={good.key: good})) == []
    for port in ({"name": "tcp-db", "port": 5432}, {"name": "x", "appProtocol": "grpc"}):
        fine = _kube_service(port)
        assert analyze(AnalysisInput(MeshSnapshot(), documents={fine.key: fine})) == []
    odd = _kube_service({"name": "x", "port": 81, "appProtocol": "kubernetes.io/other"})
    assert codes(analyze(AnalysisInput(MeshSnapshot(), documents={odd.key: odd}))) == ["IST0118"]


def test_a_failing_check_is_one_internal_error_and_the_others_still_run() -> None:
    def broken(_: AnalysisInput) -> Iterator[Message]:
        raise RuntimeError("boom")
        yield  # pragma: no cover

    def fine(_: AnalysisInput) -> Iterator[Message]:
        yield Message("IST0133", "Schema validation warning: x")

    found = analyze(AnalysisInput(MeshSnapshot()), [("broken", broken), ("fine", fine)])
    assert codes(found) == ["IST0001", "IST0133"]
    assert "check broken" in found[0].text
    assert analyze(AnalysisInput(MeshSnapshot()), [("fine", fine)])[0].code == "IST0133"


# --- exit codes, formats, thresholds, suppressions ------------------------------------------


def _write(tmp_path: Path, *docs: str) -> str:
    (tmp_path / "mesh.yaml").write_text("---\n".join(docs))
    return str(tmp_path)


def test_exit_codes_follow_istioctl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = _write(tmp_path / "clean" if (tmp_path / "clean").mkdir() is None else tmp_path, SHOP)
    assert main(["analyze", clean]) == 0
    assert "No validation issues found" in capsys.readouterr().err
    warn = tmp_path / "warn"
    warn.mkdir()
    _write(warn, SHOP, _doc(NET, "DestinationRule", "d", {"host": "nope.example.com"}))
    assert main(["analyze", str(warn)]) == 0  # default threshold: Error
    assert main(["analyze", "--failure-threshold", "warning", str(warn)]) == 79
    error = tmp_path / "error"
    error.mkdir()
    _write(
        error,
        SHOP,
        shop_vs("v", [{"route": route("x.example.com")}]),
    )
    assert main(["analyze", str(error)]) == 79
    # the output threshold hides messages, never the exit code (as istioctl)
    capsys.readouterr()
    assert main(["analyze", "--output-threshold", "Error", str(warn)]) == 0
    assert capsys.readouterr().out == ""
    assert (
        main(["analyze", "--output-threshold", "Error", "--failure-threshold", "Info", str(warn)])
        == 79
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.yaml").write_text("kind: [unclosed\n")
    assert main(["analyze", str(broken)]) == 65
    assert "error: " in capsys.readouterr().err
    assert main(["analyze", "--output", "xml", clean]) == 64
    assert main(["analyze", "--failure-threshold", "fatal", clean]) == 64
    assert main(["analyze", "-S", "nonsense", clean]) == 64
    monkeypatch.delenv("MESHAGENT_CONFIG", raising=False)
    assert main(["analyze"]) == 64  # (no /etc/meshagent/agent.yaml on a test machine)
    monkeypatch.setenv("MESHAGENT_CONFIG", str(ROOT / "examples" / "quickstart" / "agent.yaml"))
    assert main(["analyze"]) == 0
    assert main(["analyze", str(tmp_path / "missing")]) == 2  # as every meshagent command


def test_suppressions_accept_both_resource_forms_and_wildcards(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        SHOP,
        shop_vs("v", [{"route": route("x.example.com")}]),
    )
    assert main(["analyze", path]) == 79
    assert main(["analyze", "-S", "IST0101=VirtualService default/v", path]) == 0
    assert main(["analyze", "-S", "IST0101=VirtualService v.default", path]) == 0
    assert main(["analyze", "-S", "IST01*=VirtualService *", path]) == 0
    assert main(["analyze", "-S", "IST0101=VirtualService other/v", path]) == 79


def test_json_and_yaml_output_carry_istioctl_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        SHOP,
        shop_vs("v", [{"route": route("x.example.com")}]),
    )
    assert main(["analyze", "-o", "json", path]) == 79
    (found,) = json.loads(capsys.readouterr().out)
    assert found["code"] == "IST0101" and found["level"] == "Error"
    assert found["origin"] == "VirtualService default/v"
    assert found["reference"] == f"{tmp_path / 'mesh.yaml'}:{found['reference'].rsplit(':', 1)[1]}"
    assert found["documentationUrl"].endswith("/analysis/ist0101/")
    assert main(["analyze", "-o", "yaml", path]) == 79
    assert yaml.safe_load(capsys.readouterr().out) == [found]
    assert main(["analyze", path]) == 79
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"Error [IST0101] (VirtualService default/v {tmp_path / 'mesh.yaml'}:")
    assert main(["analyze", "-o", "json", str(tmp_path / "mesh.yaml")]) == 79  # a file works too
    capsys.readouterr()
    clean = tmp_path / "clean"
    clean.mkdir()
    _write(clean, SHOP)
    assert main(["analyze", "-o", "json", str(clean)]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_a_path_of_dash_reads_standard_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "---\n".join([SHOP, shop_vs("v", [{"route": route("x.example.com")}])])
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["analyze", "-"]) == 79
    assert "(VirtualService default/v -:" in capsys.readouterr().out


def test_list_codes_names_every_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--list-codes"]) == 0
    out = capsys.readouterr().out
    assert all(code in out for code in TYPES)


# --- zero messages on the quickstart and on bookinfo ----------------------------------------


def test_the_quickstart_has_no_messages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--config", str(ROOT / "examples" / "quickstart" / "agent.yaml")]) == 0
    assert capsys.readouterr().out == ""


def _bookinfo_files() -> list[object]:
    if not BOOKINFO.is_dir():
        reason = "corpus absent: ../shared/corpus/istio/bookinfo not found"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    return sorted(BOOKINFO.glob("*.yaml"))


# Istio reports this one too (its VirtualService validation, analyzeUnreachableHTTPRules, and
# the IST0130 documentation's own example are this shape): the sample's second rule is dead.
BOOKINFO_KNOWN = "IST0130=VirtualService default/details"


@pytest.mark.parametrize("path", _bookinfo_files(), ids=lambda p: p.name if p else "-")
def test_each_bookinfo_file_has_no_messages(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Each file is one step of the sample, applied (as its docs say) with the services it
    # assumes deployed and destination-rule-all.yaml in place, unless it brings its own rules.
    paths = [str(path), str(BOOKINFO_SERVICES)]
    if "kind: DestinationRule" not in path.read_text():
        paths.append(str(BOOKINFO / "destination-rule-all.yaml"))
    code = main(["analyze", "-S", BOOKINFO_KNOWN, "--failure-threshold", "Info", *paths])
    assert (code, capsys.readouterr().out) == (0, "")


def test_the_known_bookinfo_finding_is_the_dead_rule_istio_also_reports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not BOOKINFO.is_dir():
        pytest.skip("corpus absent: ../shared/corpus/istio/bookinfo not found")
    path = BOOKINFO / "fault-injection-details-v1.yaml"
    assert main(["analyze", str(path), str(BOOKINFO_SERVICES)]) == 0  # a Warning
    assert capsys.readouterr().out.splitlines() == [
        f"Warning [IST0130] (VirtualService default/details {path}:18) VirtualService rule #1 "
        "not used (only the last rule can have no matches)."
    ]


def test_with_a_consul_source_the_registry_checks_are_skipped_and_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given files routing to a Consul service, which the offline command cannot see
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    _write(mesh, shop_vs("v", [{"route": route("web.service.consul")}]))
    config = tmp_path / "agent.yaml"
    config.write_text(
        "node: {id: vm-1}\nstate_dir: state\n"
        "sources: {files: {paths: [mesh]}, consul: {address: 127.0.0.1:8500}}\n"
    )
    # then no false IST0101, and a note names what was skipped and why
    assert main(["analyze", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "sources consul are not read offline" in err and "--agent" in err
    # while without the Consul source the missing host is an error
    config.write_text("node: {id: vm-1}\nstate_dir: state\nsources: {files: {paths: [mesh]}}\n")
    assert main(["analyze", "--config", str(config)]) == 79
