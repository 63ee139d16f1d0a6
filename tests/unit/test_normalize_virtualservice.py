"""VirtualService validation (located diagnostics) and conversion to the routing model."""

from __future__ import annotations

from meshagent.model.routing import MatchKind, StringMatch, VirtualService
from meshagent.normalize.convert import convert
from tests.unit.normalize_helpers import diagnostics, errors, raw, warnings

HEAD = """\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  namespace: prod
spec:
  hosts:
  - reviews
"""


def _vs(body: str) -> str:
    return HEAD + body


def _convert(text: str) -> VirtualService:
    vs, problems = convert(raw(text), domain_suffix="cluster.local", default_namespace="default")
    assert not problems and isinstance(vs, VirtualService)
    return vs


GOOD = _vs("""\
  http:
  - name: canary
    match:
    - uri:
        prefix: /api
      headers:
        end-user:
          exact: jason
      ignoreUriCase: true
    route:
    - destination:
        host: reviews
        subset: v2
        port:
          number: 9080
      weight: 75
    - destination:
        host: ratings.other.svc.cluster.local
      weight: 25
    timeout: 1.5s
    retries:
      attempts: 3
      perTryTimeout: 100ms
      retryOn: 5xx,connect-failure,503
    fault:
      delay:
        fixedDelay: 2s
        percentage:
          value: 10
    mirror:
      host: mirror
    mirrorPercentage:
      value: 5.5
  - redirect:
      uri: /new
      redirectCode: 308
  tcp:
  - match:
    - port: 3306
    route:
    - destination:
        host: mysql
""")


def test_valid_virtual_service_has_no_diagnostics() -> None:
    assert diagnostics(GOOD) == []


def test_valid_virtual_service_converts_with_fqdn_hosts_and_milliseconds() -> None:
    # given a valid VS in namespace prod; when converting
    vs = _convert(GOOD)
    # then short names resolve in the VS namespace, durations are ms
    assert vs.hosts == ("reviews.prod.svc.cluster.local",)
    route = vs.http[0]
    assert route.matches[0].uri == StringMatch(MatchKind.PREFIX, "/api")
    assert route.matches[0].headers[0].name == "end-user"
    assert route.matches[0].ignore_uri_case is True
    assert [
        (w.destination.host, w.destination.subset, w.destination.port, w.weight)
        for w in route.route
    ] == [
        ("reviews.prod.svc.cluster.local", "v2", 9080, 75),
        ("ratings.other.svc.cluster.local", "", None, 25),
    ]
    assert route.timeout_ms == 1500
    assert route.retries is not None and route.retries.per_try_timeout_ms == 100
    assert route.fault is not None and route.fault.delay is not None
    assert (route.fault.delay.fixed_delay_ms, route.fault.delay.percent) == (2000, 10.0)
    assert [(m.destination.host, m.percent) for m in route.mirrors] == [
        ("mirror.prod.svc.cluster.local", 5.5)
    ]
    assert vs.http[1].redirect is not None and vs.http[1].redirect.code == 308
    assert vs.tcp[0].matches[0].port == 3306
    assert vs.tcp[0].route[0].weight == 100  # a lone destination takes everything


def test_unknown_field_is_located_at_its_line() -> None:
    text = _vs("  http:\n  - route:\n    - destination:\n        host: a\n      wieght: 5\n")
    assert errors(text) == [("mesh.yaml:13", "spec.http[0].route[0].wieght")]


def test_wrong_type_is_located() -> None:
    text = _vs("  http:\n  - route:\n    - destination:\n        host: a\n      weight: heavy\n")
    found = diagnostics(text)
    assert [(d.location, d.field) for d in found] == [
        ("mesh.yaml:13", "spec.http[0].route[0].weight")
    ]
    assert found[0].reason == "expected integer, got string"
    assert found[0].kind == "VirtualService" and found[0].name == "prod/reviews"


def test_bad_duration_is_located() -> None:
    text = _vs("  http:\n  - route:\n    - destination:\n        host: a\n    timeout: 3 sec\n")
    assert errors(text) == [("mesh.yaml:13", "spec.http[0].timeout")]


def test_bad_enum_is_located() -> None:
    text = _vs("  http:\n  - redirect:\n      uri: /x\n      derivePort: FROM_NOWHERE\n")
    assert errors(text) == [("mesh.yaml:12", "spec.http[0].redirect.derivePort")]


def test_weights_of_several_destinations_must_not_all_be_zero() -> None:
    text = _vs("""\
  http:
  - route:
    - destination: {host: a}
    - destination: {host: b}
""")
    assert errors(text) == [("mesh.yaml:10", "spec.http[0].route")]


def test_weights_not_summing_to_100_are_relative_with_a_warning() -> None:
    # Istio treats weights as relative; a sum other than 100 is accepted but flagged
    text = _vs("""\
  http:
  - route:
    - destination: {host: a}
      weight: 30
    - destination: {host: b}
      weight: 30
""")
    assert errors(text) == []
    assert warnings(text) == ["spec.http[0].route"]


def test_negative_weight_is_an_error() -> None:
    text = _vs("""\
  http:
  - route:
    - destination: {host: a}
      weight: -10
    - destination: {host: b}
      weight: 110
""")
    assert errors(text) == [("mesh.yaml:12", "spec.http[0].route[0].weight")]


def test_route_and_redirect_are_mutually_exclusive() -> None:
    text = _vs("""\
  http:
  - route:
    - destination: {host: a}
    redirect:
      uri: /elsewhere
""")
    assert errors(text) == [("mesh.yaml:12", "spec.http[0].redirect")]


def test_route_and_direct_response_are_mutually_exclusive() -> None:
    text = _vs("""\
  http:
  - route:
    - destination: {host: a}
    directResponse:
      status: 503
""")
    assert errors(text) == [("mesh.yaml:12", "spec.http[0].directResponse")]


def test_string_match_kinds_are_a_oneof_and_regex_must_compile() -> None:
    text = _vs("""\
  http:
  - match:
    - uri:
        exact: /a
        prefix: /b
    - uri:
        regex: "(unclosed"
    route:
    - destination: {host: a}
""")
    assert errors(text) == [
        ("mesh.yaml:13", "spec.http[0].match[0].uri.prefix"),
        ("mesh.yaml:15", "spec.http[0].match[1].uri.regex"),
    ]


def test_without_hosts_it_is_a_valid_delegate() -> None:
    text = HEAD.replace("  hosts:\n  - reviews\n", "") + (
        "  http:\n  - route:\n    - destination: {host: a}\n"
    )
    assert errors(text) == []


def test_port_out_of_range() -> None:
    text = _vs("""\
  http:
  - route:
    - destination:
        host: a
        port: {number: 70000}
""")
    assert errors(text) == [("mesh.yaml:13", "spec.http[0].route[0].destination.port.number")]


def test_unimplemented_fields_are_warnings_only() -> None:
    text = _vs("""\
  gateways: [mesh, istio-system/ingress]
  http:
  - match:
    - sourceNamespace: other
    delegate:
      name: child
""")
    assert errors(text) == []
    assert warnings(text) == ["spec.http[0].match[0].sourceNamespace"]


def test_retry_on_must_name_known_policies() -> None:
    text = _vs("""\
  http:
  - route:
    - destination: {host: a}
    retries:
      attempts: 2
      retryOn: 5xx,sometimes
""")
    assert errors(text) == [("mesh.yaml:14", "spec.http[0].retries.retryOn")]


def test_fault_abort_status_range_and_conversion() -> None:
    bad = _vs("""\
  http:
  - route:
    - destination: {host: a}
    fault:
      abort:
        httpStatus: 99
""")
    assert errors(bad) == [("mesh.yaml:14", "spec.http[0].fault.abort.httpStatus")]
    good = bad.replace("httpStatus: 99", "httpStatus: 503\n        percentage: {value: 50}")
    vs = _convert(good)
    abort = vs.http[0].fault.abort if vs.http[0].fault else None
    assert abort is not None and (abort.http_status, abort.percent) == (503, 50.0)


def test_headers_cors_rewrite_and_direct_response_convert() -> None:
    text = _vs("""\
  http:
  - match:
    - uri: {prefix: /old}
    rewrite:
      uri: /new
      authority: new.example.com
    headers:
      request:
        set: {x-a: "1"}
        remove: [x-b]
      response:
        add: {x-c: "2"}
    corsPolicy:
      allowOrigins:
      - exact: https://a.example.com
      allowOrigin: [https://b.example.com]
      allowMethods: [GET]
      maxAge: 24h
      allowCredentials: false
    route:
    - destination: {host: a}
  - directResponse:
      status: 418
      body:
        string: teapot
""")
    assert [d for d in diagnostics(text) if d.severity == "error"] == []
    vs = _convert(text)
    route = vs.http[0]
    assert route.rewrite is not None and route.rewrite.uri == "/new"
    assert route.headers.request_set == (("x-a", "1"),)
    assert route.headers.request_remove == ("x-b",)
    assert route.headers.response_add == (("x-c", "2"),)
    assert route.cors is not None and route.cors.max_age_ms == 86_400_000
    assert [o.value for o in route.cors.allow_origins] == [
        "https://a.example.com",
        "https://b.example.com",
    ]
    assert route.cors.allow_credentials is False
    assert vs.http[1].direct_response is not None
    assert (vs.http[1].direct_response.status, vs.http[1].direct_response.body) == (418, "teapot")


def test_tls_routes_warn_only_where_sidecars_would_use_them() -> None:
    text = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass, namespace: shop}
spec:
  hosts: [secure.example.com]
  gateways: [edge/l4]
  tls:
  - match: [{sniHosts: [secure.example.com], gateways: [edge/l4]}]
    route: [{destination: {host: secure.shop.svc.cluster.local}}]
"""
    assert warnings(text) == []  # a gateway routes them by SNI
    assert warnings(text.replace("[edge/l4]\n  tls", "[edge/l4, mesh]\n  tls")) == ["spec.tls"]
