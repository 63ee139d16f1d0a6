"""Consul ingress-gateway and terminating-gateway entries: conversion field by field, located
errors, the normalizer's bookkeeping, translation for a router, and the corpus's links."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshagent.model import Identity, ProxySpec, WorkloadCertificate
from meshagent.model.gateway import ISTIO_MUTUAL, SIMPLE, Gateway
from meshagent.model.proxy import ROUTER
from meshagent.model.routing import VirtualService
from meshagent.model.source import RawResource, SourceEvent
from meshagent.model.traffic import DestinationRule
from meshagent.normalize.consul import ConsulMapping, convert_consul
from meshagent.normalize.consul.gateways import GATEWAY_LABEL
from meshagent.normalize.normalizer import Normalizer
from meshagent.normalize.schema.core import Issues
from meshagent.xds import typeurls
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import generate
from meshagent.xds.translate.gateway import gateway_problems
from tests.unit.test_consul_normalize import entry, service

CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus" / "consul"
EDGE = (("consul.gateway", "edge"),)


def convert(body: dict[str, Any], mapping: ConsulMapping | None = None) -> tuple[Any, Issues]:
    return convert_consul(entry(body), mapping or ConsulMapping())


def ingress(*listeners: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"Kind": "ingress-gateway", "Name": "edge", "Listeners": list(listeners), **extra}


def terminating(*services: dict[str, Any]) -> dict[str, Any]:
    return {"Kind": "terminating-gateway", "Name": "edge", "Services": list(services)}


def parts(converted: Any) -> tuple[Gateway, list[VirtualService], list[DestinationRule]]:
    gateway, *rest = converted
    assert isinstance(gateway, Gateway)
    vss = [p for p in rest if isinstance(p, VirtualService)]
    rules = [p for p in rest if isinstance(p, DestinationRule)]
    return gateway, vss, rules


def errors(issues: Issues) -> dict[str, str]:
    return {i.path: i.reason for i in issues if i.severity == "error"}


def warnings(issues: Issues) -> dict[str, str]:
    return {i.path: i.reason for i in issues if i.severity == "warning"}


HTTP = {"Port": 8080, "Protocol": "http", "Services": [{"Name": "web"}]}


# -- ingress-gateway -----------------------------------------------------------------------


def test_an_http_listener_routes_consuls_default_host_to_the_service() -> None:
    converted, issues = convert(ingress(HTTP))
    assert not issues
    gateway, (vs,), rules = parts(converted)
    assert (gateway.key, gateway.selector) == ("default/consul-ingress-edge", EDGE)
    (server,) = gateway.servers
    assert (server.port, server.protocol, server.hosts, server.tls) == (
        8080,
        "HTTP",
        ("*/web.ingress.*",),
        None,
    )
    assert vs.gateways == ("default/consul-ingress-edge",) and not vs.applies_to_sidecars
    assert vs.hosts == ("web.ingress.*",)
    (route,) = vs.http
    assert route.matches[0].port == 8080  # this listener's port only
    assert route.route[0].destination.host == "web.service.consul"
    assert rules == []


def test_hosts_namespaces_and_headers() -> None:
    listener = {
        "Port": 8080,
        "Protocol": "http2",
        "Services": [
            {
                "Name": "api",
                "Namespace": "shop",
                "Hosts": ["api.example.com", "api.example.com:8080", "*.api.example.com"],
                "RequestHeaders": {"Add": {"x-edge": "1"}, "Remove": ["x-debug"]},
                "ResponseHeaders": {"Set": {"x-served": "edge"}},
            },
            {"Name": "web"},
        ],
    }
    mapping = ConsulMapping(host_pattern="{name}.{namespace}.svc.cluster.local")
    converted, issues = convert(ingress(listener), mapping)
    assert not issues
    gateway, (api, web), _ = parts(converted)
    assert gateway.servers[0].protocol == "HTTP2"
    assert gateway.servers[0].hosts == (
        "*/api.example.com",
        "*/*.api.example.com",
        "*/web.ingress.*",
    )
    assert api.hosts == ("api.example.com", "*.api.example.com")  # ports dropped, once
    assert api.http[0].route[0].destination.host == "api.shop.svc.cluster.local"
    assert web.http[0].route[0].destination.host == "web.default.svc.cluster.local"
    headers = api.http[0].headers
    assert headers.request_add == (("x-edge", "1"),)
    assert headers.request_remove == ("x-debug",)
    assert headers.response_set == (("x-served", "edge"),)


def test_tls_enabled_presents_the_workload_certificate() -> None:
    tls = {
        "Enabled": True,
        "TLSMinVersion": "TLSv1_2",
        "TLSMaxVersion": "TLSv1_3",
        "CipherSuites": ["ECDHE-ECDSA-AES128-GCM-SHA256"],
    }
    converted, issues = convert(ingress(HTTP, TLS=tls))
    assert not issues
    (server,) = parts(converted)[0].servers
    assert server.protocol == "HTTPS" and server.tls is not None
    assert (server.tls.mode, server.tls.workload_certificate) == (SIMPLE, True)
    assert server.tls.credential_name == ""
    assert (server.tls.min_protocol_version, server.tls.max_protocol_version) == (
        "TLSV1_2",
        "TLSV1_3",
    )
    assert server.tls.cipher_suites == ("ECDHE-ECDSA-AES128-GCM-SHA256",)


def test_sds_names_a_credential_and_a_listener_overrides_the_gateway() -> None:
    sds = {"SDS": {"ClusterName": "sds-cluster", "CertResource": "edge-cert"}}
    off = {**HTTP, "Port": 9090, "TLS": {"Enabled": False}}
    converted, issues = convert(ingress(HTTP, off, TLS=sds))
    assert not errors(issues)
    assert "ClusterName ignored" in warnings(issues)["TLS.SDS.ClusterName"]
    first, second = parts(converted)[0].servers
    assert first.tls is not None and first.tls.credential_name == "edge-cert"
    assert not first.tls.workload_certificate
    assert (second.port, second.protocol, second.tls) == (9090, "HTTP", None)
    # A null TLS (as some writers send for "unset") inherits the gateway's.
    converted, issues = convert(ingress({**HTTP, "TLS": None}, TLS={"Enabled": True}))
    assert not issues and parts(converted)[0].servers[0].protocol == "HTTPS"


def test_a_service_with_its_own_certificate_gets_a_server_matched_by_sni() -> None:
    own = {"Name": "api", "Hosts": ["api.example.com"], "TLS": {"SDS": {"CertResource": "api"}}}
    listener = {"Port": 8443, "Protocol": "http", "Services": [own, {"Name": "web"}]}
    converted, issues = convert(ingress(listener, TLS={"Enabled": True}))
    assert not issues
    shared, mine = parts(converted)[0].servers
    assert shared.hosts == ("*/*",) and shared.tls is not None  # no SNI match, as Consul
    assert shared.tls.workload_certificate
    assert mine.hosts == ("*/api.example.com",) and mine.tls is not None
    assert (mine.protocol, mine.tls.credential_name, mine.port_name) == ("HTTPS", "api", "8443-api")


def test_a_tcp_listener_sends_the_port_to_its_one_service() -> None:
    listener = {"Port": 5432, "Services": [{"Name": "db"}]}  # Protocol defaults to tcp
    converted, issues = convert(ingress(listener))
    assert not issues
    gateway, (vs,), _ = parts(converted)
    assert (gateway.servers[0].protocol, gateway.servers[0].hosts) == ("TCP", ("*/*",))
    assert vs.tcp[0].matches[0].port == 5432
    assert vs.tcp[0].route[0].destination.host == "db.service.consul"
    converted, issues = convert(ingress({**listener, "TLS": {"Enabled": True}}))
    assert parts(converted)[0].servers[0].protocol == "TLS"


@pytest.mark.parametrize(
    ("body", "path", "reason"),
    [
        (ingress({**HTTP, "Port": 0}), "Listeners[0].Port", "must be a port number"),
        (ingress({**HTTP, "Port": "80"}), "Listeners[0].Port", "must be a port number"),
        (ingress(HTTP, HTTP), "Listeners[1].Port", "already Listeners[0]'s"),
        (ingress({**HTTP, "Protocol": "udp"}), "Listeners[0].Protocol", "unknown protocol"),
        (ingress({**HTTP, "Services": [{}]}), "Listeners[0].Services[0].Name", "needs a Name"),
        (ingress({**HTTP, "Services": {"Name": "x"}}), "Listeners[0].Services", "must be a list"),
        (ingress(HTTP, TLS={"Enabled": True, "TLSMinVersion": "SSLv3"}), "TLS.TLSMinVersion", ""),
        (ingress(HTTP, TLS={"SDS": {"ClusterName": "c"}}), "TLS.SDS.CertResource", "needs"),
        (
            ingress({"Port": 1, "Services": [{"Name": "a"}, {"Name": "b"}]}),
            "Listeners[0].Services",
            "exactly one service",
        ),
        (
            ingress({"Port": 1, "Services": [{"Name": "a", "Hosts": ["a.example.com"]}]}),
            "Listeners[0].Services[0].Hosts",
            "http listeners only",
        ),
        (
            ingress({**HTTP, "Services": [{"Name": "a", "Hosts": ["a.*"]}]}),
            "Listeners[0].Services[0].Hosts[0]",
            "invalid host",
        ),
        (
            ingress({**HTTP, "Services": [{"Name": "a", "TLS": {"Enabled": True}}]}),
            "Listeners[0].Services[0].Hosts",
            "match by SNI",
        ),
        (
            terminating({"Name": "x", "CertFile": "c.pem", "CAFile": "ca"}),
            "Services[0].CertFile",
            "",
        ),
        (
            terminating({"Name": "x", "SNI": "x.example.com"}),
            "Services[0].CAFile",
            "needs a CAFile",
        ),
        (terminating({"Name": "x"}, {"Name": "x"}), "Services[1].Name", "linked twice"),
    ],
)
def test_bad_entries_are_located_errors(body: dict[str, Any], path: str, reason: str) -> None:
    _, issues = convert(body)
    assert path in errors(issues), issues
    assert reason in errors(issues)[path]


def test_what_is_not_supported_is_a_warning() -> None:
    listener = {**HTTP, "Services": [{"Name": "*"}, {"Name": "web", "MaxConnections": 5}]}
    converted, issues = convert(ingress(listener, Defaults={"MaxConnections": 10}))
    assert not errors(issues)
    found = warnings(issues)
    assert set(found) == {
        "Defaults",
        "Listeners[0].Services[0].Name",
        "Listeners[0].Services[1].MaxConnections",
    }
    assert len(parts(converted)[1]) == 1  # web is still exposed


# -- terminating-gateway ---------------------------------------------------------------------


LINKED = (
    {"Name": "billing", "CAFile": "/etc/ca.pem", "SNI": "billing.example.com"},
    {"Name": "ledger", "CAFile": "/etc/ca.pem", "CertFile": "/etc/c.pem", "KeyFile": "/etc/k.pem"},
    {"Name": "legacy"},
)


def test_a_terminating_gateway_terminates_mesh_mtls_and_originates_tls() -> None:
    converted, issues = convert(terminating(*LINKED), ConsulMapping(terminating_gateway_port=9443))
    assert not issues
    gateway, vss, rules = parts(converted)
    assert (gateway.key, gateway.selector) == ("default/consul-terminating-edge", EDGE)
    (server,) = gateway.servers
    assert (server.port, server.protocol) == (9443, "HTTPS")
    assert server.tls is not None and server.tls.mode == ISTIO_MUTUAL
    hosts = ("billing.service.consul", "ledger.service.consul", "legacy.service.consul")
    assert server.hosts == ("*/*",)  # HTTP is told apart by Host
    assert [vs.hosts for vs in vss] == [(h,) for h in hosts]
    assert all(vs.http[0].route[0].destination.host == vs.hosts[0] for vs in vss)
    own = [r for r in rules if r.workload_selector is not None]
    assert [r.workload_selector for r in own] == [EDGE] * 3  # the gateway's, not sidecars'
    via = [r for r in rules if r.workload_selector is None]
    assert [(r.host, r.redirect.host if r.redirect else "") for r in via] == [
        (h, "edge.service.consul") for h in hosts
    ]
    tls = [r.traffic_policy.tls for r in own if r.traffic_policy]
    billing, ledger, legacy = tls
    assert billing is not None and (billing.mode, billing.ca_certificates) == (
        SIMPLE,
        "/etc/ca.pem",
    )
    assert (billing.sni, billing.subject_alt_names) == (
        "billing.example.com",
        ("billing.example.com",),
    )
    assert ledger is not None and ledger.mode == "MUTUAL"
    assert (ledger.client_certificate, ledger.private_key) == ("/etc/c.pem", "/etc/k.pem")
    assert ledger.subject_alt_names == ()  # no SNI: Consul checks no SAN
    assert legacy is not None and legacy.mode == "DISABLE"


def test_tcp_linked_services_get_a_tls_server_and_tcp_routes() -> None:
    converted, _ = convert(terminating(LINKED[0]), ConsulMapping(default_protocol="tcp"))
    gateway, (vs,), (_, via) = parts(converted)
    assert gateway.servers[0].protocol == "TLS"
    assert gateway.servers[0].hosts == ("*/billing.service.consul",)  # told apart by SNI
    assert vs.tcp[0].route[0].destination.host == "billing.service.consul" and not vs.http
    # the sidecars send that SNI over mesh mTLS to the gateway
    assert via.redirect is not None and via.workload_selector is None
    assert via.traffic_policy is not None and via.traffic_policy.tls is not None
    assert (via.traffic_policy.tls.mode, via.traffic_policy.tls.sni) == (
        "ISTIO_MUTUAL",
        "billing.service.consul",
    )
    # HTTP is routed by Host: the sidecars' usual mesh SNI stays
    _, _, (_, http_via) = parts(convert(terminating(LINKED[0]))[0])
    assert http_via.traffic_policy is None


# -- the normalizer and the translator -------------------------------------------------------


def _apply(
    normalizer: Normalizer, *raws: RawResource, deletes: tuple[RawResource, ...] = ()
) -> Any:
    gone = tuple(r.key for r in deletes)
    snapshot, diagnostics = normalizer.apply([SourceEvent("consul", raws, gone)])
    assert [d for d in diagnostics if d.severity == "error"] == []
    return snapshot


def _instance(name: str, address: str, port: int) -> dict[str, Any]:
    return {
        "Node": {"Node": "n1", "Address": address, "Datacenter": "dc1"},
        "Service": {"ID": name, "Service": name, "Address": address, "Port": port},
        "Checks": [],
    }


def test_the_normalizer_files_every_object_of_an_entry_and_drops_them_together() -> None:
    normalizer = Normalizer()
    ing, term = entry(ingress(HTTP)), entry(terminating(*LINKED))
    snapshot = _apply(normalizer, ing, term)
    assert set(snapshot.gateways) == {
        "default/consul-ingress-edge",
        "default/consul-terminating-edge",
    }
    assert "default/consul-ingress-edge-8080-web" in snapshot.virtual_services
    assert len(snapshot.workload_destination_rules) == 3
    # Mesh-wide, only the redirect through the gateway; the origination is the gateway's.
    rule = snapshot.destination_rules["billing.service.consul"]
    assert rule.redirect is not None and rule.traffic_policy is None
    smaller = entry(terminating(LINKED[0]))
    snapshot = _apply(normalizer, smaller)
    assert len(snapshot.workload_destination_rules) == 1
    assert set(snapshot.destination_rules) == {"billing.service.consul"}
    snapshot = _apply(normalizer, deletes=(ing, smaller))
    assert not snapshot.gateways and not snapshot.workload_destination_rules
    assert not snapshot.destination_rules
    assert not [k for k in snapshot.virtual_services if k.startswith("default/consul-")]


def _certificate() -> WorkloadCertificate:
    return WorkloadCertificate(
        Identity("cluster.local", "default", "edge"), "CHAIN", "KEY", "ROOTS", 2e9
    )


ROUTER_PROXY = ProxySpec(
    node_id="edge-1", proxy_type=ROUTER, labels=EDGE, certificates=(_certificate(),)
)


def _unpack(resources: ResourceSet, type_url: str, name: str, message: Any) -> Any:
    out = message()
    resources.of(type_url)[name].body.Unpack(out)
    return out


def test_a_router_serves_the_ingress_by_host_with_its_workload_certificate() -> None:
    web = service("web", [_instance("web", "10.0.0.5", 8080)])
    snapshot = _apply(Normalizer(), web, entry(ingress(HTTP, TLS={"Enabled": True})))
    snapshot = replace(snapshot, changes=None)
    resources = generate(snapshot, ROUTER_PROXY)
    listener = _unpack(resources, typeurls.LISTENER, "0.0.0.0_8080", listener_pb2.Listener)
    (chain,) = listener.filter_chains
    assert list(chain.filter_chain_match.server_names) == []  # any SNI, as Consul
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    common = context.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert not context.require_client_certificate.value
    assert not common.HasField("combined_validation_context")  # one-way TLS, as Consul's
    # A sidecar gets none of it; a router of another gateway neither.
    other = replace(ROUTER_PROXY, labels=(("consul.gateway", "other"),))
    assert list(generate(snapshot, other).of(typeurls.LISTENER)) == []


def test_a_server_left_out_is_a_warning_at_the_entrys_field() -> None:
    snapshot = _apply(Normalizer(), entry(ingress(HTTP, TLS={"Enabled": True})))
    no_certificate = replace(ROUTER_PROXY, certificates=())
    (problem,) = gateway_problems(replace(snapshot, changes=None), no_certificate)
    assert (problem.kind, problem.field) == ("ConsulConfigEntry", "Listeners[0]")
    assert problem.location == "consul index 9"
    assert "needs one (ca: and a workload)" in problem.reason


def test_a_router_routes_an_http_ingress_listener_by_host() -> None:
    web = service("web", [_instance("web", "10.0.0.5", 8080)])
    snapshot = replace(_apply(Normalizer(), web, entry(ingress(HTTP))), changes=None)
    resources = generate(snapshot, ROUTER_PROXY)
    routes = _unpack(resources, typeurls.ROUTE, "http.8080", route_pb2.RouteConfiguration)
    (vhost,) = routes.virtual_hosts
    assert list(vhost.domains) == ["web.ingress.*"]
    assert vhost.routes[0].route.cluster == "outbound|8080||web.service.consul"


def test_the_terminating_router_originates_tls_and_sidecars_do_not() -> None:
    billing = service("billing", [_instance("billing", "127.0.0.9", 443)])
    snapshot = _apply(Normalizer(), billing, entry(terminating(LINKED[0])))
    snapshot = replace(snapshot, changes=None)
    name = "outbound|443||billing.service.consul"

    def upstream(proxy: ProxySpec) -> tls_pb2.UpstreamTlsContext | None:
        cluster = _unpack(generate(snapshot, proxy), typeurls.CLUSTER, name, cluster_pb2.Cluster)
        if not cluster.HasField("transport_socket"):
            return None
        out = tls_pb2.UpstreamTlsContext()
        cluster.transport_socket.typed_config.Unpack(out)
        return out

    context = upstream(ROUTER_PROXY)
    assert context is not None and context.sni == "billing.example.com"
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.filename == "/etc/ca.pem"
    sidecar = upstream(ProxySpec(node_id="app-1"))
    assert sidecar is None or sidecar.sni != "billing.example.com"


def test_sidecars_reach_a_linked_service_through_the_gateways_instances() -> None:
    billing = service("billing", [_instance("billing", "203.0.113.9", 443)])
    gateway = service("edge", [_instance("edge", "10.0.0.7", 8443)])
    snapshot = _apply(Normalizer(), billing, gateway, entry(terminating(LINKED[0])))
    snapshot = replace(snapshot, changes=None)

    def addresses(proxy: ProxySpec) -> set[tuple[str, int]]:
        name = "outbound|443||billing.service.consul"
        found = _unpack(
            generate(snapshot, proxy), typeurls.ENDPOINT, name, endpoint_pb2.ClusterLoadAssignment
        )
        return {
            (
                e.endpoint.address.socket_address.address,
                e.endpoint.address.socket_address.port_value,
            )
            for group in found.endpoints
            for e in group.lb_endpoints
        }

    assert addresses(ProxySpec(node_id="app-1")) == {("10.0.0.7", 8443)}  # the gateway
    assert addresses(ROUTER_PROXY) == {("203.0.113.9", 443)}  # the gateway: the service


# -- the corpus: Consul's own view of gateway links ------------------------------------------


def _links(name: str) -> list[dict[str, Any]]:
    if not CORPUS.is_dir():
        pytest.skip("corpus absent: ../shared/corpus/consul not found")
    return list(json.loads((CORPUS / name).read_text()))


def test_corpus_ingress_links_convert_to_what_consul_lists() -> None:
    """catalog/gateway-services lists what an ingress-gateway entry exposes; the entry
    written back from it converts to servers on those ports with those hosts."""
    links = _links("catalog-gateway-services-ingress.response.json")
    listeners = [
        {
            "Port": link["Port"],
            "Protocol": link["Protocol"],
            "Services": [
                {"Name": link["Service"]["Name"], "Namespace": link["Service"]["Namespace"]}
                | ({"Hosts": link["Hosts"]} if link.get("Hosts") else {})
            ],
        }
        for link in links
    ]
    body = ingress(*listeners) | {"Name": links[0]["Gateway"]["Name"]}
    mapping = ConsulMapping(host_pattern="{name}.{namespace}.consul")
    converted, issues = convert(body, mapping)
    assert not issues, issues
    gateway, vss, _ = parts(converted)
    assert [(s.port, s.protocol) for s in gateway.servers] == [(8888, "HTTP"), (8443, "TCP")]
    assert vss[0].hosts == ("api.mydomain.com",)
    assert vss[0].http[0].route[0].destination.host == "api.frontend.consul"
    assert vss[1].tcp[0].route[0].destination.host == "redis.ops.consul"


def test_corpus_terminating_links_convert_to_what_consul_lists() -> None:
    links = _links("catalog-gateway-services-terminating.response.json")
    fields = ("CAFile", "CertFile", "KeyFile", "SNI")
    services = [
        {"Name": link["Service"]["Name"], "Namespace": link["Service"]["Namespace"]}
        | {k: link[k] for k in fields if k in link}
        for link in links
    ]
    converted, issues = convert(terminating(*services) | {"Name": links[0]["Gateway"]["Name"]})
    assert not issues, issues
    _, _, (api, _, web, _) = parts(converted)
    assert api.traffic_policy is not None and api.traffic_policy.tls is not None
    assert (api.traffic_policy.tls.mode, api.traffic_policy.tls.sni) == ("MUTUAL", "api.my-domain")
    assert web.traffic_policy is not None and web.traffic_policy.tls is not None
    assert web.traffic_policy.tls.mode == "DISABLE"


def test_gateway_label_is_documented() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"{GATEWAY_LABEL}:" in readme and "terminating_gateway_port" in readme


@pytest.mark.parametrize("written", ["false", "False", "0", "f", "", 0])
def test_tls_enabled_written_as_a_false_string_is_off(written: Any) -> None:
    # given TLS.Enabled as some tools write it (a string or a number), read as Consul's weak
    # decoding reads it; when converted, then the listener stays plain HTTP
    converted, issues = convert(ingress(HTTP, TLS={"Enabled": written}))
    assert not issues
    (server,) = parts(converted)[0].servers
    assert (server.protocol, server.tls) == ("HTTP", None)


@pytest.mark.parametrize("written", ["true", "TRUE", "1", "t", 1])
def test_tls_enabled_written_as_a_true_string_is_on(written: Any) -> None:
    converted, issues = convert(ingress(HTTP, TLS={"Enabled": written}))
    assert not issues
    assert parts(converted)[0].servers[0].protocol == "HTTPS"


def test_tls_enabled_that_is_not_a_boolean_is_a_located_error() -> None:
    _, issues = convert(ingress({**HTTP, "TLS": {"Enabled": "yes please"}}))
    assert "must be true or false" in errors(issues)["Listeners[0].TLS.Enabled"]
