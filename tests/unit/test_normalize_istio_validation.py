"""Issue 13, validation: what Istio's webhook and CRDs accept, meshagent accepts; what they
reject, meshagent rejects at the same field (istio/istio pkg/config/validation and its CRD
test data under testdata/crds, whose cases several of these mirror)."""

from __future__ import annotations

import pytest

from meshagent.normalize import validate_resource
from meshagent.normalize.convert import NOT_TRANSLATED
from tests.unit.normalize_helpers import diagnostics


def _doc(kind: str, spec: str, api: str = "networking.istio.io/v1", name: str = "x") -> str:
    body = "".join(f"  {line}\n" for line in spec.strip("\n").splitlines())
    head = f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: ns\n"
    return f"{head}spec:\n{body}"


def error_fields(text: str) -> list[str]:
    return [d.field for d in diagnostics(text) if d.severity == "error"]


def warning_reasons(text: str) -> list[str]:
    return [f"{d.field}: {d.reason}" for d in diagnostics(text) if d.severity == "warning"]


def _check(text: str, field: str | None) -> None:
    found = error_fields(text)
    if field is None:
        assert found == [], found
    else:
        assert field in found, found


# -- 6. ServiceEntry ----------------------------------------------------------------------

SE_CASES = [
    # Istio requires hosts, not ports (ValidateServiceEntry has no port requirement).
    ("hosts: [a.example.com]", None),
    ("hosts: [a.example.com]\nresolution: DNS", None),
    ("hosts: [a.example.com]\naddresses: [10.0.0.0/16]\nresolution: STATIC", None),
    ("hosts: [a.example.com]\naddresses: [10.0.0.0/16]", None),  # NONE by default
    ("hosts: [a.example.com]\naddresses: [1.2.3.4/16]\nresolution: DNS", "spec.addresses[0]"),
    (
        "hosts: [a.example.com]\naddresses: [1.2.3.4, 10.0.0.0/8]\nresolution: DNS_ROUND_ROBIN",
        "spec.addresses[1]",
    ),
    ("hosts: [a.example.com]\naddresses: [1.2.3.4]\nresolution: DNS", None),
    ("hosts: [a.example.com]\nexportTo: ['*', ns2]", "spec.exportTo"),
    ("hosts: [a.example.com]\nexportTo: [foo, .]", None),
    # several hosts need ports that carry the host, unless resolution is NONE
    ("hosts: [a.example.com, b.example.com]\nports: [{number: 5432, name: pg}]", None),
    (
        "hosts: [a.example.com, b.example.com]\nports: [{number: 5432, name: pg}]\nresolution: DNS",
        "spec.ports[0].protocol",
    ),
    (
        "hosts: [a.example.com, b.example.com]\nresolution: STATIC\nports:\n"
        "- {number: 80, name: http, protocol: HTTP}\n- {number: 5432, name: pg, protocol: TCP}\n"
        "endpoints: [{address: 10.0.0.1}]",
        "spec.ports[1].protocol",
    ),
    (
        "hosts: [a.example.com, b.example.com]\nresolution: DNS\n"
        "ports: [{number: 443, name: tls, protocol: TLS}, {number: 80, name: h, protocol: http}]",
        None,
    ),
]


@pytest.mark.parametrize(("spec", "field"), SE_CASES)
def test_service_entry_ports_and_cidr_addresses(spec: str, field: str | None) -> None:
    _check(_doc("ServiceEntry", spec), field)


def test_cidr_with_dns_says_what_istio_says() -> None:
    text = _doc("ServiceEntry", "hosts: [a.example.com]\naddresses: [1.2.3.4/16]\nresolution: DNS")
    reasons = [d.reason for d in diagnostics(text) if d.severity == "error"]
    assert reasons == ["CIDR addresses are allowed only for NONE/STATIC resolution types"]


# -- 7. WorkloadEntry unix:// addresses ---------------------------------------------------

WE_CASES = [
    ("address: unix:///var/run/app.sock", None),
    ("address: unix://@abstract", None),
    ("address: unix:///dir/", "spec.address"),  # Istio: "UDS may not be a dir"
    ("address: unix://relative", "spec.address"),  # absolute path or abstract socket
    ("address: 'unix://'", "spec.address"),  # empty path
    ("address: unix://@foo\nports: {http: 80}", "spec.ports"),  # UDS may not include ports
    ("address: 1.1.1.1\nports: {http: 80}", None),
]


@pytest.mark.parametrize(("spec", "field"), WE_CASES)
def test_workload_entry_unix_addresses(spec: str, field: str | None) -> None:
    _check(_doc("WorkloadEntry", spec), field)


def test_service_entry_endpoint_unix_rules_are_the_workload_entry_ones() -> None:
    spec = (
        "hosts: [a.example.com]\nports: [{number: 80, name: http, protocol: HTTP}]\n"
        "resolution: STATIC\nendpoints:\n- address: unix://relative.sock"
    )
    _check(_doc("ServiceEntry", spec), "spec.endpoints[0].address")


# -- 8. WorkloadGroup probe headers -------------------------------------------------------

WG_CASES = [
    ("template: {}\nprobe:\n  httpGet:\n    port: 80\n    httpHeaders: [{name: x-probe_1}]", None),
    (
        "template: {}\nprobe:\n  httpGet:\n    port: 80\n    httpHeaders: [{name: '**'}]",
        "spec.probe.httpGet.httpHeaders[0].name",
    ),
    (
        "template: {}\nprobe:\n  httpGet:\n    port: 80\n    httpHeaders: [{name: 'a b'}]",
        "spec.probe.httpGet.httpHeaders[0].name",
    ),
    (
        "template: {}\nprobe:\n  httpGet:\n    port: 80\n    httpHeaders: [{value: v}]",
        "spec.probe.httpGet.httpHeaders[0].name",
    ),
    ("template: {}\nprobe:\n  tcpSocket: {port: 65536}", "spec.probe.tcpSocket.port"),
]


@pytest.mark.parametrize(("spec", "field"), WG_CASES)
def test_workload_group_probe_header_names(spec: str, field: str | None) -> None:
    _check(_doc("WorkloadGroup", spec, api="networking.istio.io/v1alpha3"), field)


# -- 9. RequestAuthentication ------------------------------------------------------------

RA = "security.istio.io/v1"
RA_CASES = [
    # every current JWTRule field (Istio's reqauth-valid.yaml, plus presence)
    (
        "targetRefs: [{group: '', kind: Service, name: foo}]\n"
        "jwtRules:\n- issuer: example.com\n  jwksUri: https://example.com/.well-known/jwks.json\n"
        "  forwardOriginalToken: true\n  fromCookies: [foo]\n"
        "  fromHeaders: [{name: foo, prefix: baz}]\n  fromParams: [tok]\n"
        "  outputClaimToHeaders: [{claim: abc, header: def}]\n  timeout: 5s\n"
        "  outputPayloadToHeader: header\n  spaceDelimitedClaims: [custom_scope]\n"
        "  presence: REQUIRED",
        None,
    ),
    ("jwtRules: [{issuer: a, presence: OPTIONAL}]", None),
    ("jwtRules: [{issuer: a, presence: MANDATORY}]", "spec.jwtRules[0].presence"),
    (
        "targetRefs: [{group: '', kind: Service, name: foo}]\n"
        "targetRef: {group: '', kind: Service, name: foo}",
        "spec.targetRefs",
    ),
    (
        "selector: {matchLabels: {a: b}}\ntargetRef: {group: '', kind: Service, name: foo}",
        "spec.targetRef",
    ),
    ("targetRef: {group: '', kind: Service}", "spec.targetRef.name"),
    ("targetRef: {group: '', name: foo}", "spec.targetRef.kind"),
    ("targetRef: {kind: Service, name: foo, namespace: bar}", "spec.targetRef.namespace"),
    ("targetRef: {group: '__', kind: Service, name: foo}", "spec.targetRef.group"),
    ("targetRef: {group: '', kind: Serv_ice, name: foo}", "spec.targetRef.kind"),
    ("targetRef: {group: '', kind: Gateway, name: foo}", "spec.targetRef.kind"),
    ("targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}", None),
    ("targetRef: {group: networking.istio.io, kind: ServiceEntry, name: se}", None),
    ("targetRefs: [{group: core, kind: Service, name: foo}]", None),
    (
        "jwtRules: [{issuer: a, outputClaimToHeaders: [{claim: x, header: ':authority'}]}]",
        "spec.jwtRules[0].outputClaimToHeaders[0].header",
    ),
    (
        "jwtRules: [{issuer: a, spaceDelimitedClaims: ['']}]",
        "spec.jwtRules[0].spaceDelimitedClaims[0]",
    ),
]


@pytest.mark.parametrize(("spec", "field"), RA_CASES)
def test_request_authentication_fields_and_target_refs(spec: str, field: str | None) -> None:
    _check(_doc("RequestAuthentication", spec, api=RA), field)


def test_target_refs_are_limited_to_sixteen() -> None:
    refs = ", ".join(f"{{kind: Service, name: s{i}}}" for i in range(17))
    _check(_doc("RequestAuthentication", f"targetRefs: [{refs}]", api=RA), "spec.targetRefs")


# -- 10. VirtualService: delegates, faults, JWT claim headers ------------------------------

ROUTE = "http:\n- route:\n  - destination: {host: a}"


def _claims(where: str, key: str, gateways: str) -> str:
    match = f"- match: [{{{where}: {{{key}: {{exact: a}}}}}}]"
    return (
        f"hosts: [r]\ngateways: {gateways}\nhttp:\n{match}\n  route:\n  - destination: {{host: a}}"
    )


VS_CASES = [
    (ROUTE, None),  # no hosts: a delegate
    (f"gateways: [gw]\n{ROUTE}", "spec.gateways"),
    ("tcp:\n- route:\n  - destination: {host: a}", "spec.tcp"),
    ("http:\n- delegate: {name: other}", "spec.http[0].delegate"),
    (
        "http:\n- match: [{uri: {regex: '/a.*'}}]\n  route:\n  - destination: {host: a}",
        "spec.http[0].match[0].uri",
    ),
    (
        "http:\n- match: [{headers: {x-a: {regex: 'a.*'}}}]\n  route:\n  - destination: {host: a}",
        "spec.http[0].match[0].headers.x-a",
    ),
    # a root route: delegate only, no regex match
    ("hosts: [r]\nhttp:\n- delegate: {name: d, namespace: ns}", None),
    (
        "hosts: [r]\nhttp:\n- delegate: {name: d}\n  route:\n  - destination: {host: a}",
        "spec.http[0].route",
    ),
    ("hosts: [r]\nhttp:\n- delegate: {name: d}\n  redirect: {uri: /x}", "spec.http[0].redirect"),
    ("hosts: [r]\nhttp:\n- delegate: {name: d}\n  directResponse: {status: 503}", None),
    (
        "hosts: [r]\nhttp:\n- match: [{uri: {regex: '/a.*'}}]\n  delegate: {name: d}",
        "spec.http[0].match[0].uri",
    ),
    ("hosts: [r]\nhttp:\n- delegate: {namespace: ns}", "spec.http[0].delegate.name"),
    # faults as Istio takes them
    (f"hosts: [r]\n{ROUTE}\n  fault: {{delay: {{percentage: {{value: 5}}}}}}", None),
    (f"hosts: [r]\n{ROUTE}\n  fault: {{abort: {{percentage: {{value: 5}}}}}}", None),
    (
        f"hosts: [r]\n{ROUTE}\n  fault: {{delay: {{exponentialDelay: 1s}}}}",
        "spec.http[0].fault.delay.exponentialDelay",
    ),
    # header match names as Istio's ValidateHTTPHeaderName takes them
    (_claims("headers", "x-user_id", "[]"), None),
    (_claims("headers", "x.user", "[]"), "spec.http[0].match[0].headers.x.user"),
    (_claims("headers", "':authority'", "[]"), "spec.http[0].match[0].headers.:authority"),
    # JWT claim routing: a valid key, but only on gateways
    (_claims("headers", "'@request.auth.claims.group'", "[ns/gw]"), None),
    (_claims("headers", "'@request.auth.claims[a][b]'", "[ns/gw]"), None),
    (
        _claims("headers", "'@request.auth.claims.group'", "[]"),
        "spec.http[0].match[0].headers.@request.auth.claims.group",
    ),
    (
        _claims("withoutHeaders", "'@request.auth.claims.g'", "[ns/gw, mesh]"),
        "spec.http[0].match[0].withoutHeaders.@request.auth.claims.g",
    ),
    (
        _claims("headers", "'@request.auth.claimsx'", "[ns/gw]"),
        "spec.http[0].match[0].headers.@request.auth.claimsx",
    ),
]


@pytest.mark.parametrize(("spec", "field"), VS_CASES)
def test_virtual_service_delegates_faults_and_claims(spec: str, field: str | None) -> None:
    _check(_doc("VirtualService", spec), field)


def test_a_delay_without_fixed_delay_is_a_warning_and_no_fault() -> None:
    from meshagent.normalize.convert import convert
    from tests.unit.normalize_helpers import raw

    text = _doc("VirtualService", f"hosts: [r]\n{ROUTE}\n  fault: {{delay: {{percent: 5}}}}")
    assert any("injects no delay" in r for r in warning_reasons(text))
    converted, _ = convert(raw(text), domain_suffix="cluster.local", default_namespace="ns")
    assert converted is not None and converted.http[0].fault is None  # type: ignore[union-attr]


# -- 11. Sidecar ports, DestinationRule selector ------------------------------------------

SIDECAR_CASES = [
    ("ingress:\n- port: {number: 9080, protocol: HTTP}\n  defaultEndpoint: 127.0.0.1:8080", None),
    ("ingress:\n- port: {number: 9080, protocol: HTTP, name: http}", None),
    ("ingress:\n- port: {number: 9080, name: Bad_Name}", "spec.ingress[0].port.name"),
    ("ingress:\n- port: {number: 9080, protocol: FOO}", "spec.ingress[0].port.protocol"),
    ("ingress:\n- port: {number: 0}", "spec.ingress[0].port.number"),
    (
        "ingress:\n- port: {number: 9080}\n- port: {number: 9080}",
        "spec.ingress[1].port.number",
    ),
    ("egress:\n- port: {number: 0}\n  bind: unix:///var/run/out.sock\n  hosts: ['*/*']", None),
    ("egress:\n- port: {number: 0}\n  hosts: ['*/*']", "spec.egress[0].bind"),
    ("egress:\n- hosts: ['./*']", None),
    ("workloadSelector: {labels: {app: a}}", "spec"),  # empty configuration
    ("ingress:\n- port: {number: 80}\n  defaultEndpoint: '[::1]:8080'", None),
    ("ingress:\n- port: {number: 80}\n  defaultEndpoint: unix:///var/app.sock", None),
    (
        "ingress:\n- port: {number: 80}\n  defaultEndpoint: 10.0.0.1:80",
        "spec.ingress[0].defaultEndpoint",
    ),
    (
        "ingress:\n- port: {number: 80}\n  defaultEndpoint: 127.0.0.1:0",
        "spec.ingress[0].defaultEndpoint",
    ),
    ("ingress:\n- port: {number: 80}\n  tls: {mode: ISTIO_MUTUAL}", "spec.ingress[0].tls.mode"),
    ("egress:\n- hosts: ['./*']\n- port: {number: 80}\n  hosts: ['./*']", "spec.egress[0]"),
    (
        "egress:\n- port: {number: 80}\n  hosts: ['./*']\n- port: {number: 80}\n  hosts: ['*/*']",
        "spec.egress[1].port.number",
    ),
    (
        "outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: e.example.com}}",
        "spec.outboundTrafficPolicy.egressProxy",
    ),
]


@pytest.mark.parametrize(("spec", "field"), SIDECAR_CASES)
def test_sidecar_ports_without_names(spec: str, field: str | None) -> None:
    _check(_doc("Sidecar", spec), field)


def test_destination_rule_workload_selector_is_validated() -> None:
    # istio.type.v1beta1.WorkloadSelector: matchLabels, not labels
    good = "host: a.example.com\nworkloadSelector: {matchLabels: {app: web}}"
    _check(_doc("DestinationRule", good), None)
    own = good + "\nexportTo: ['.']"
    _check(_doc("DestinationRule", own), None)
    old_form = "host: a.example.com\nworkloadSelector: {labels: {app: web}}"
    _check(_doc("DestinationRule", old_form), "spec.workloadSelector.labels")
    bad = "host: a.example.com\nworkloadSelector: {matchLabels: {app: '*'}}"
    _check(_doc("DestinationRule", bad), "spec.workloadSelector.matchLabels.app")
    wide = good + "\nexportTo: ['*']"
    _check(_doc("DestinationRule", wide), "spec.exportTo")


# -- 11. Kubernetes Gateway API kinds, List documents -------------------------------------

GATEWAY_API = """\
apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: x, namespace: ns}}
spec: {{}}
"""


def test_gateway_api_kinds_are_accepted_with_a_not_translated_warning() -> None:
    for kind in ("Gateway", "HTTPRoute", "GRPCRoute", "ReferenceGrant", "GatewayClass"):
        found = diagnostics(GATEWAY_API.format(kind=kind))
        assert [d.severity for d in found] == ["warning"], found
        assert "not translated" in found[0].reason


def test_a_gateway_api_gateway_does_not_replace_an_istio_one() -> None:
    from meshagent.normalize import Normalizer
    from tests.unit.normalize_helpers import upsert

    istio = _doc(
        "Gateway", "servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]"
    )
    snap, diags = Normalizer().apply([upsert(istio, GATEWAY_API.format(kind="Gateway"))])
    assert [(d.severity, d.kind) for d in diags] == [("warning", "Gateway")]
    assert "not translated" in diags[0].reason and list(snap.gateways) == ["ns/x"]


def test_a_kubernetes_list_is_read_item_by_item() -> None:
    from meshagent.adapters.yamldocs import load_documents

    text = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: networking.istio.io/v1\n  kind: WorkloadEntry\n"
        "  metadata: {name: a, namespace: ns}\n  spec: {address: 10.0.0.1}\n"
        "- apiVersion: networking.istio.io/v1\n  kind: WorkloadEntry\n"
        "  metadata: {name: b, namespace: ns}\n  spec: {address: 'unix://relative'}\n"
        "- not a resource\n"
    )
    resources, problems = load_documents(text, "list.yaml")
    assert [(r.name, r.provenance.location) for r in resources] == [
        ("a", "list.yaml:4"),
        ("b", "list.yaml:8"),
    ]
    assert [p.location for p in problems] == ["list.yaml:12"]
    # an item's error is located at its own line
    bad = [d for d in validate_resource(resources[1]) if d.severity == "error"]
    assert [(d.location, d.field) for d in bad] == [("list.yaml:11", "spec.address")]


def test_a_list_of_another_api_version_or_an_empty_list() -> None:
    from meshagent.adapters.yamldocs import load_documents

    resources, problems = load_documents("apiVersion: v1\nkind: List\nitems: []\n", "l.yaml")
    assert resources == [] and problems == []
    other = "apiVersion: example.com/v2\nkind: List\nmetadata: {name: l}\nitems: []\n"
    resources, problems = load_documents(other, "l.yaml")
    assert [r.kind for r in resources] == ["List"] and problems == []


# -- 12. Istio kinds validated though not translated --------------------------------------

EF = "networking.istio.io/v1alpha3"
PATCH_VALUE = "patch: {operation: MERGE, value: {connect_timeout: 1s}}"
EXTENSION_CASES = [
    ("EnvoyFilter", EF, "workloadSelector: {labels: {app: c}}", None),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: CLUSTER\n  match: {context: SIDECAR_OUTBOUND, cluster: "
        "{service: a.example.com}}\n  " + PATCH_VALUE,
        None,
    ),
    ("EnvoyFilter", EF, "configPatches:\n- " + PATCH_VALUE, "spec.configPatches[0].applyTo"),
    ("EnvoyFilter", EF, "configPatches:\n- applyTo: CLUSTER", "spec.configPatches[0].patch"),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: CLUSTER\n  patch: {value: {a: 1}}",
        "spec.configPatches[0].patch.operation",
    ),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: CLUSTER\n  patch: {operation: MERGE}",
        "spec.configPatches[0].patch.value",
    ),
    ("EnvoyFilter", EF, "configPatches:\n- applyTo: CLUSTER\n  patch: {operation: REMOVE}", None),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: CLUSTERS\n  " + PATCH_VALUE,
        "spec.configPatches[0].applyTo",
    ),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: CLUSTER\n  match: {listener: {portNumber: 80}}\n  "
        + PATCH_VALUE,
        "spec.configPatches[0].match",
    ),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: HTTP_FILTER\n  match: {listener: {filterChain: {filter: "
        "{name: envoy.filters.network.tcp_proxy, subFilter: {name: x}}}}}\n  " + PATCH_VALUE,
        "spec.configPatches[0].match.listener.filterChain.filter.name",
    ),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: CLUSTER\n  match: {proxy: {proxyVersion: '(1.2'}}\n  "
        + PATCH_VALUE,
        "spec.configPatches[0].match.proxy.proxyVersion",
    ),
    (
        "EnvoyFilter",
        EF,
        "workloadSelector: {labels: {app: c}}\n"
        "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]",
        "spec.targetRefs",
    ),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: HTTP_FILTER\n  match: {context: SIDECAR_INBOUND, waypoint: "
        "{portNumber: 80}}\n  " + PATCH_VALUE,
        "spec.configPatches[0].match",
    ),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: HTTP_FILTER\n  match: {context: WAYPOINT, listener: "
        "{portNumber: 80}}\n  " + PATCH_VALUE,
        "spec.configPatches[0].match",
    ),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: HTTP_FILTER\n  match: {context: WAYPOINT, waypoint: "
        "{portNumber: 65536}}\n  " + PATCH_VALUE,
        "spec.configPatches[0].match.waypoint.portNumber",
    ),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: HTTP_FILTER\n  match: {context: WAYPOINT, waypoint: "
        "{filter: {name: envoy.filters.network.http_connection_manager, subFilter: "
        "{name: envoy.filters.http.router}}}}\n  patch: {operation: REMOVE}",
        None,
    ),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: CLUSTER\n  match: {context: WAYPOINT, waypoint: {}}\n"
        "  patch: {operation: REMOVE}",
        None,
    ),
    (
        "EnvoyFilter",
        EF,
        "configPatches:\n- applyTo: NETWORK_FILTER\n  match: {listener: {filterChain: "
        "{transportProtocol: tls}}}\n  patch: {operation: MERGE_AND_REPLACE_LIST, value: "
        "{name: envoy.filters.network.http_connection_manager}}",
        None,
    ),
    ("ProxyConfig", "networking.istio.io/v1beta1", "concurrency: 3", None),
    (
        "ProxyConfig",
        "networking.istio.io/v1beta1",
        "selector: {matchLabels: {'': bar}}",
        "spec.selector.matchLabels.",
    ),
    ("ProxyConfig", "networking.istio.io/v1beta1", "concurrency: -1", "spec.concurrency"),
    (
        "Telemetry",
        "telemetry.istio.io/v1",
        "tracing: [{providers: [{name: zipkin}], randomSamplingPercentage: 10,\n"
        "  customTags: {t: {literal: {value: v}}}}]\n"
        "metrics: [{overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER},\n"
        "  tagOverrides: {request_method: {operation: UPSERT, value: request.method},\n"
        "  response_code: {operation: REMOVE}}}]}]\n"
        "accessLogging: [{providers: [{name: envoy}],\n"
        "  filter: {expression: 'response.code >= 400'}}]",
        None,
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1alpha1",
        "tracing: [{randomSamplingPercentage: 101}]",
        "spec.tracing[0].randomSamplingPercentage",
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1",
        "accessLogging: [{providers: [{name: ''}]}]",
        "spec.accessLogging[0].providers[0].name",
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1",
        "metrics: [{overrides: [{tagOverrides: {a: {operation: UPSERT}}}]}]",
        "spec.metrics[0].overrides[0].tagOverrides.a.value",
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1",
        "metrics: [{overrides: [{tagOverrides: {a: {operation: REMOVE, value: x}}}]}]",
        "spec.metrics[0].overrides[0].tagOverrides.a.value",
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1",
        "selector: {matchLabels: {a: b}}\ntargetRef: {kind: Service, name: s}",
        "spec.targetRef",
    ),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: oci://ghcr.io/example/plugin:1.0\nphase: AUTHN\npluginConfig: {a: [1, 2]}\n"
        "vmConfig: {env: [{name: POD, valueFrom: HOST}, {name: X, value: y}]}\n"
        "match: [{mode: SERVER, ports: [{number: 80}]}]",
        None,
    ),
    ("WasmPlugin", "extensions.istio.io/v1alpha1", "url: example.com/plugin:1.0", None),
    ("WasmPlugin", "extensions.istio.io/v1alpha1", "phase: AUTHN", "spec.url"),
    ("WasmPlugin", "extensions.istio.io/v1alpha1", "url: ''", "spec.url"),
    ("WasmPlugin", "extensions.istio.io/v1alpha1", "url: '#%blah$#@'", "spec.url"),
    ("WasmPlugin", "extensions.istio.io/v1alpha1", "url: fake://example.com", "spec.url"),
    ("WasmPlugin", "extensions.istio.io/v1alpha1", "url: http://test", None),
    ("WasmPlugin", "extensions.istio.io/v1alpha1", "url: test", None),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: http://test\nvmConfig: {env: [{name: a, valueFrom: HOST}, "
        "{name: b, valueFrom: INLINE, value: x}, {name: c, value: y}]}",
        None,
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1alpha1",
        "metrics: [{overrides: [{tagOverrides: {m: {value: request.method}},\n"
        "  match: {customMetric: foo}, disabled: false}, {match: {metric: GRPC_REQUEST_MESSAGES},"
        " disabled: true}]}]",
        None,
    ),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: http://test\nimagePullSecret: ''",
        "spec.imagePullSecret",
    ),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: http://test\npluginName: ''",
        "spec.pluginName",
    ),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: http://test\nselector: {matchLabels: {istio: 'bar*'}}",
        "spec.selector.matchLabels.istio",
    ),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: http://test\nmatch: [{ports: [{}]}]",
        "spec.match[0].ports[0].number",
    ),
    (
        "Telemetry",
        "telemetry.istio.io/v1alpha1",
        "metrics: [{overrides: [{match: {customMetric: ''}}]}]",
        "spec.metrics[0].overrides[0].match.customMetric",
    ),
    ("WasmPlugin", "extensions.istio.io/v1alpha1", "url: ftp://example.com/p.wasm", "spec.url"),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: file:///opt/p.wasm\nsha256: abc",
        "spec.sha256",
    ),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: file:///opt/p.wasm\nvmConfig: {env: [{name: A, valueFrom: HOST, value: x}]}",
        "spec.vmConfig.env[0].value",
    ),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: file:///opt/p.wasm\nvmConfig: {env: [{name: A}, {name: A}]}",
        "spec.vmConfig.env[1].name",
    ),
    (
        "WasmPlugin",
        "extensions.istio.io/v1alpha1",
        "url: file:///opt/p.wasm\nmatch: [{ports: [{number: 0}]}]",
        "spec.match[0].ports[0].number",
    ),
]


@pytest.mark.parametrize(("kind", "api", "spec", "field"), EXTENSION_CASES)
def test_untranslated_istio_kinds_are_validated(
    kind: str, api: str, spec: str, field: str | None
) -> None:
    text = _doc(kind, spec, api=api)
    _check(text, field)
    if field is None and kind == "Telemetry":  # translated; its metrics are not (README)
        assert any("metrics are not supported" in r for r in warning_reasons(text))
    elif field is None and kind in NOT_TRANSLATED:  # valid: accepted, warned to have no effect
        assert any("not translated" in r for r in warning_reasons(text))


def test_an_invalid_untranslated_kind_is_rejected_and_keeps_the_last_good_one() -> None:
    from meshagent.normalize import Normalizer
    from tests.unit.normalize_helpers import upsert

    bad = _doc("WasmPlugin", "phase: AUTHN", api="extensions.istio.io/v1alpha1")
    _, diags = Normalizer().apply([upsert(bad)])
    assert [(d.severity, d.field) for d in diags] == [("error", "spec.url")]


def test_untranslated_kinds_need_their_own_api_versions() -> None:
    _check(_doc("EnvoyFilter", "priority: 1", api="networking.istio.io/v1"), "apiVersion")
    _check(_doc("WasmPlugin", "url: a.wasm", api="networking.istio.io/v1alpha3"), "apiVersion")


def test_a_workload_entry_without_address_but_with_a_network_is_a_warning() -> None:
    text = _doc("WorkloadEntry", "network: net")
    assert error_fields(text) == []
    assert warning_reasons(text) == ["spec.address: address is unset with network 'net'"]


GATEWAY_CASES = [
    ("servers: []", "spec.servers"),
    (
        "servers:\n- {port: {number: 443, name: https, protocol: HTTPS}, hosts: [a]}",
        "spec.servers[0].tls",
    ),
    (
        "servers:\n- {port: {number: 80, name: http, protocol: HTTP}, hosts: [a], "
        "tls: {httpsRedirect: true}}",
        None,
    ),
    (
        "servers:\n- {port: {number: 80, name: http, protocol: HTTP}, hosts: [a], "
        "tls: {mode: SIMPLE, credentialName: c}}",
        "spec.servers[0].tls",
    ),
    (
        "servers:\n- {port: {number: 31400, name: tcp, protocol: TCP}, hosts: [a], "
        "tls: {httpsRedirect: true}}",
        "spec.servers[0].tls",
    ),
    (
        "servers:\n- {port: {number: 80, name: p, protocol: HTTP}, hosts: [a]}\n"
        "- {port: {number: 81, name: p, protocol: HTTP}, hosts: [b]}",
        "spec.servers[1].port.name",
    ),
]


@pytest.mark.parametrize(("spec", "field"), GATEWAY_CASES)
def test_istio_gateway_servers(spec: str, field: str | None) -> None:
    _check(_doc("Gateway", spec), field)
