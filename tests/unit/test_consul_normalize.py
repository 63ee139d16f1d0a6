"""Consul resources to the mesh model: services, config entries, precedence, the corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshagent.model.labels import labels_of
from meshagent.model.routing import MatchKind
from meshagent.model.security import AuthzAction, AuthzPolicy
from meshagent.model.services import Resolution, Service, ServicePort
from meshagent.model.source import Provenance, RawResource, SourceEvent
from meshagent.model.traffic import DestinationRule, LoadBalancer, Subset, TrafficPolicy
from meshagent.normalize.consul import ConsulMapping, convert_consul
from meshagent.normalize.consul.filters import FilterError, filter_labels
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds.translate.policy import plan_clusters
from tests.unit.normalize_helpers import raw as yaml_raw

CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus" / "consul"


def service(name: str, instances: list[Any]) -> RawResource:
    body = {"Name": name, "Datacenter": "dc1", "Instances": instances}
    return RawResource(
        "consul",
        "ConsulService",
        "consul/v1",
        "",
        name,
        body,
        Provenance("consul", "consul index 7"),
    )


def entry(body: dict[str, Any]) -> RawResource:
    name = f"{body['Kind']}/{body['Name']}"
    return RawResource(
        "consul",
        "ConsulConfigEntry",
        "consul/v1",
        "",
        name,
        body,
        Provenance("consul", "consul index 9"),
    )


def instance(
    sid: str,
    address: str = "",
    port: int = 8080,
    status: str = "passing",
    tags: tuple[str, ...] = (),
    meta: dict[str, str] | None = None,
    node_meta: dict[str, str] | None = None,
    **service: Any,
) -> dict[str, Any]:
    return {
        "Node": {
            "Node": "n1",
            "Address": "10.0.0.1",
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "10.0.0.1", "wan": "198.51.100.1"},
            "Meta": node_meta or {},
        },
        "Service": {
            "ID": sid,
            "Service": "web",
            "Tags": list(tags),
            "Address": address,
            "Port": port,
            "Meta": meta or {},
            "Weights": {"Passing": 10, "Warning": 2},
            **service,
        },
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing"},
            {"CheckID": f"service:{sid}", "Status": status},
        ],
    }


def convert(resource: RawResource, mapping: ConsulMapping | None = None) -> Any:
    converted, issues = convert_consul(resource, mapping or ConsulMapping())
    assert not issues.has_errors, issues
    return converted, issues


def test_service_maps_to_static_host_with_labelled_endpoints() -> None:
    given = service(
        "web",
        [
            instance(
                "a",
                "10.0.0.5",
                tags=("v1", "bad tag!"),
                meta={"version": "v1"},
                node_meta={"region": "eu", "zone": "eu-1a"},
            ),
            instance("b", "", 9090),  # no service address: the node's
        ],
    )
    converted, _ = convert(given)
    (svc,) = converted.services
    assert svc.host == "web.service.consul" and svc.resolution == "STATIC"
    assert [(p.number, p.protocol) for p in svc.ports] == [(8080, "HTTP")]
    a, b = converted.endpoints
    assert (a.address, a.ports, a.weight, a.locality) == (
        "10.0.0.5",
        (("http", 8080),),
        10,
        "eu/eu-1a",
    )
    assert dict(a.labels) == {"tag.v1": "true", "version": "v1", "consul.datacenter": "dc1"}
    assert (b.address, b.ports) == ("10.0.0.1", (("http", 9090),))


def test_health_status_warning_and_critical() -> None:
    given = service(
        "web",
        [instance("a", "10.0.0.5", status="warning"), instance("b", "10.0.0.6", status="critical")],
    )
    converted, _ = convert(given)
    assert converted.endpoints == ()
    converted, _ = convert(given, ConsulMapping(include_warning=True))
    assert [(e.address, e.weight) for e in converted.endpoints] == [("10.0.0.5", 2)]


def test_host_pattern_network_protocol_and_service_port() -> None:
    given = service(
        "web",
        [
            instance(
                "a",
                "10.0.0.5",
                meta={"protocol": "grpc"},
                Namespace="team",
                TaggedAddresses={"wan": {"Address": "203.0.113.9", "Port": 443}},
            )
        ],
    )
    mapping = ConsulMapping(
        host_pattern="{name}.{namespace}.svc.cluster.local", network="wan", service_port=80
    )
    converted, _ = convert(given, mapping)
    (svc,) = converted.services
    assert svc.host == "web.team.svc.cluster.local" and svc.namespace == "team"
    assert [(p.number, p.protocol) for p in svc.ports] == [(80, "GRPC")]
    (ep,) = converted.endpoints
    assert (ep.address, ep.ports) == ("203.0.113.9", (("grpc", 443),))


@pytest.mark.parametrize(
    ("expression", "labels"),
    [
        ("Service.Meta.version == v1", {"version": "v1"}),
        ('Service.Meta.version == "v 2"', {"version": "v 2"}),
        ('"canary" in Service.Tags', {"tag.canary": "true"}),
        (
            "Service.Tags contains blue and Service.Meta.zone == a",
            {"tag.blue": "true", "zone": "a"},
        ),
        ("", {}),
    ],
)
def test_resolver_filter_subset(expression: str, labels: dict[str, str]) -> None:
    assert dict(filter_labels(expression)) == labels


@pytest.mark.parametrize("expression", ["Service.Meta.v != 1", "a or b", "Node.Meta.x == y"])
def test_unsupported_filters_are_refused(expression: str) -> None:
    with pytest.raises(FilterError):
        filter_labels(expression)


def test_router_routes_with_matches_rewrite_timeout_retries() -> None:
    vs, _ = convert(
        entry(
            {
                "Kind": "service-router",
                "Name": "web",
                "Routes": [
                    {
                        "Match": {
                            "HTTP": {
                                "PathPrefix": "/admin",
                                "Methods": ["GET", "POST"],
                                "Header": [{"Name": "x-debug", "Exact": "1"}],
                                "QueryParam": [{"Name": "q", "Present": True}],
                            }
                        },
                        "Destination": {
                            "Service": "admin",
                            "ServiceSubset": "v2",
                            "PrefixRewrite": "/",
                            "RequestTimeout": "2s",
                            "NumRetries": 3,
                            "RetryOnConnectFailure": True,
                            "RetryOnStatusCodes": [503],
                        },
                    }
                ],
            }
        )
    )
    first, default = vs.http
    (match,) = first.matches
    assert match.uri is not None and match.uri.kind is MatchKind.PREFIX
    assert match.method is not None and match.method.value == "GET|POST"
    assert match.headers[0].name == "x-debug" and match.query_params[0].match is None
    dest = first.route[0].destination
    assert (dest.host, dest.subset) == ("admin.service.consul", "v2")
    assert first.rewrite is not None and first.rewrite.uri == "/" and first.timeout_ms == 2000
    assert first.retries is not None and first.retries.attempts == 3
    assert first.retries.retry_on == "connect-failure,503"
    assert default.route[0].destination.host == "web.service.consul"


def test_splitter_weights_and_headers() -> None:
    vs, _ = convert(
        entry(
            {
                "Kind": "service-splitter",
                "Name": "web",
                "Splits": [
                    {
                        "Weight": 33.33,
                        "ServiceSubset": "v1",
                        "ResponseHeaders": {"Set": {"x-v": "1"}},
                    },
                    {"Weight": 66.67, "Service": "web2"},
                ],
            }
        )
    )
    (route,) = vs.http
    assert [(w.destination.host, w.destination.subset, w.weight) for w in route.route] == [
        ("web.service.consul", "v1", 3333),
        ("web2.service.consul", "", 6667),
    ]
    assert route.route[0].headers.response_set == (("x-v", "1"),)
    _, issues = convert_consul(
        entry({"Kind": "service-splitter", "Name": "w", "Splits": [{"Weight": 60}]}),
        ConsulMapping(),
    )
    assert issues.has_errors


def test_resolver_subsets_timeout_and_hash_policy() -> None:
    rule, issues = convert(
        entry(
            {
                "Kind": "service-resolver",
                "Name": "web",
                "ConnectTimeout": "15s",
                "DefaultSubset": "v1",
                "Failover": {"*": {"Datacenters": ["dc2"]}},
                "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}},
                "LoadBalancer": {
                    "Policy": "ring_hash",
                    "HashPolicies": [{"Field": "cookie", "FieldValue": "s"}],
                },
            }
        )
    )
    assert isinstance(rule, DestinationRule) and rule.host == "web.service.consul"
    assert [(s.name, dict(s.labels)) for s in rule.subsets] == [("v1", {"version": "v1"})]
    policy = rule.traffic_policy
    assert policy is not None and policy.connection_pool is not None
    assert policy.connection_pool.tcp_connect_timeout_ms == 15000
    assert policy.load_balancer is not None and policy.load_balancer.consistent_hash is not None
    assert policy.load_balancer.consistent_hash.http_cookie_name == "s"
    # Another datacenter's service has a host of its own.
    assert not [i for i in issues if i.severity == "warning"]
    assert rule.default_subset == "v1"
    assert [t.host for f in rule.failover for t in f.targets] == ["web.service.dc2.consul"]


def test_resolver_default_subset_must_be_a_subset() -> None:
    _, issues = convert_consul(
        entry({"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v9"}), ConsulMapping()
    )
    assert [i.path for i in issues if i.severity == "error"] == ["DefaultSubset"]


def test_default_subset_narrows_the_whole_service_cluster() -> None:
    v1 = Subset("v1", labels_of({"version": "v1"}), TrafficPolicy(LoadBalancer(simple="RANDOM")))
    port = ServicePort(80, "http", "HTTP")
    service = Service("web.service.consul", "default", (port,), Resolution.STATIC)
    rule = DestinationRule("r", "default", service.host, subsets=(v1,), default_subset="v1")
    whole, subset = plan_clusters(service, rule)
    assert whole.subset == "" and dict(whole.labels) == {"version": "v1"}
    assert whole.policy.load_balancer == LoadBalancer(simple="RANDOM")
    assert subset.subset == "v1"
    plain, _ = plan_clusters(service, DestinationRule("r", "default", service.host, subsets=(v1,)))
    assert not plain.labels and plain.policy.load_balancer is None


def test_intentions_deny_and_allow() -> None:
    deny, _ = convert(
        entry(
            {
                "Kind": "service-intentions",
                "Name": "db",
                "Sources": [{"Name": "web", "Action": "deny"}],
            }
        )
    )
    assert isinstance(deny, AuthzPolicy) and deny.action is AuthzAction.DENY
    assert dict(deny.selector or ()) == {"app": "db"}
    assert deny.rules[0].sources[0].principals == ("*/ns/default/sa/web",)
    allow, _ = convert(
        entry(
            {
                "Kind": "service-intentions",
                "Name": "api",
                "Sources": [
                    {"Name": "web", "Action": "deny"},
                    {
                        "Name": "ops",
                        "Permissions": [
                            {"Action": "deny", "HTTP": {"PathExact": "/admin/secret"}},
                            {
                                "Action": "allow",
                                "HTTP": {"PathPrefix": "/admin", "Methods": ["GET"]},
                            },
                        ],
                    },
                ],
            }
        )
    )
    assert allow.action is AuthzAction.ALLOW
    (rule,) = allow.rules  # web is denied by omission
    (op,) = rule.operations
    assert (op.paths, op.not_paths, op.methods) == (("/admin*",), ("/admin/secret",), ("GET",))


def test_unknown_config_kind_is_a_warning() -> None:
    converted, issues = convert(entry({"Kind": "service-defaults", "Name": "web"}))
    assert converted is None and [i.severity for i in issues] == ["warning"]


SE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.service.consul]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 192.0.2.1}]
"""


@pytest.mark.parametrize(("precedence", "winner"), [("files", "192.0.2.1"), ("consul", "10.0.0.5")])
def test_precedence_decides_and_the_loser_is_warned(precedence: str, winner: str) -> None:
    normalizer = Normalizer(consul=ConsulMapping(precedence=precedence))
    normalizer.apply([SourceEvent("files", upserts=(yaml_raw(SE),))])
    consul_event = SourceEvent("consul", upserts=(service("web", [instance("a", "10.0.0.5")]),))
    snapshot, diagnostics = normalizer.apply([consul_event])
    assert [e.address for e in snapshot.endpoints["web.service.consul"]] == [winner]
    loser = "files" if precedence == "consul" else "consul"
    (warning,) = [d for d in diagnostics if d.severity == "warning"]
    assert warning.source == loser and "already defined by" in warning.reason


# -- the corpus: Consul's own examples -----------------------------------------------------------


def _corpus(pattern: str) -> list[Path]:
    return sorted(CORPUS.glob(pattern)) if CORPUS.is_dir() else []


def _need_corpus() -> None:
    if not CORPUS.is_dir():
        pytest.skip("corpus absent: ../shared/corpus/consul not found")


EXPECTED_KIND = {
    "service-router": "VirtualService",
    "service-splitter": "VirtualService",
    "service-resolver": "DestinationRule",
    "service-intentions": "AuthzPolicy",
}


@pytest.mark.parametrize("path", _corpus("config-entry-*.json"), ids=lambda p: p.name)
def test_corpus_config_entries_convert_or_explain(path: Path) -> None:
    _need_corpus()
    body = json.loads(path.read_text())
    converted, issues = convert_consul(entry(body), ConsulMapping())
    assert not issues.has_errors, issues
    assert type(converted).__name__ == EXPECTED_KIND[body["Kind"]]
    for issue in issues:  # a warning always says what it could not do
        assert (issue.path and "not supported" in issue.reason) or "denied" in issue.reason


@pytest.mark.parametrize(
    "name", ["health-service.response.json", "agent-health-service-name.response.json"]
)
def test_corpus_health_responses_become_endpoints(name: str) -> None:
    _need_corpus()
    entries = json.loads((CORPUS / name).read_text())
    converted, _ = convert(service("svc", entries))
    passing = [e for e in entries if all(c["Status"] == "passing" for c in e.get("Checks") or [])]
    assert len(converted.endpoints) == len(passing) >= 1
    for ep in converted.endpoints:
        assert ep.address and ep.ports[0][1] > 0


def test_corpus_config_get_and_list_are_service_defaults_warnings() -> None:
    _need_corpus()
    listed = json.loads((CORPUS / "config-list.response.json").read_text())
    got = json.loads((CORPUS / "config-get.response.json").read_text())
    for body in [*listed, got]:
        converted, issues = convert_consul(entry(body), ConsulMapping())
        assert converted is None and "not supported yet: service-defaults" in issues[0].reason


def test_router_booleans_written_as_strings_read_as_consul_reads_them() -> None:
    # given Invert, CaseInsensitive and RetryOnConnectFailure written as "false" (Consul's weak
    # decoding reads them as false), then the header match is not inverted, the path match keeps
    # its case and no connect-failure retry is added
    route = {
        "Match": {"HTTP": {"PathPrefix": "/a", "CaseInsensitive": "false",
                           "Header": [{"Name": "x-user", "Exact": "1", "Invert": "false"}]}},
        "Destination": {"Service": "admin", "NumRetries": 2, "RetryOnConnectFailure": "false"},
    }  # fmt: skip
    vs, _ = convert(entry({"Kind": "service-router", "Name": "web", "Routes": [route]}))
    (match,) = vs.http[0].matches
    assert [h.name for h in match.headers] == ["x-user"] and match.without_headers == ()
    assert not match.ignore_uri_case
    assert vs.http[0].retries is not None and "connect-failure" not in vs.http[0].retries.retry_on


def test_a_router_boolean_that_is_not_one_is_a_located_error() -> None:
    route = {"Match": {"HTTP": {"Header": [{"Name": "x", "Exact": "1", "Invert": "maybe"}]}}}
    issues = convert_consul(entry({"Kind": "service-router", "Name": "web", "Routes": [route]}),
                            ConsulMapping())[1]  # fmt: skip
    assert {i.path for i in issues if i.severity == "error"} == {
        "Routes[0].Match.HTTP.Header[0].Invert"
    }


def test_intention_header_invert_written_as_false_keeps_the_condition() -> None:
    # given an allow permission whose header match says Invert: "false", then the header is a
    # condition of the rule (read as inverted, it was dropped with a warning: a wider allow)
    perm = {"Action": "allow", "HTTP": {"PathPrefix": "/a",
            "Header": [{"Name": "x-team", "Exact": "ops", "Invert": "false"}]}}  # fmt: skip
    body = {"Kind": "service-intentions", "Name": "api",
            "Sources": [{"Name": "ops", "Permissions": [perm]}]}  # fmt: skip
    allow, issues = convert(entry(body))
    assert not list(issues)
    (rule,) = allow.rules
    assert [(c.key, c.values) for c in rule.conditions] == [("request.headers[x-team]", ("ops",))]
