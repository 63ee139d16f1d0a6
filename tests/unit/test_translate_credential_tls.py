"""DestinationRule `tls.credentialName`: TLS origination with a credential over SDS, where Istio
honours it (gateways; sidecars only from a rule with a workloadSelector)."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshagent.model import (
    ClientTls,
    DestinationRule,
    ProxySpec,
    Resolution,
    Service,
    ServicePort,
    TrafficPolicy,
)
from meshagent.model.proxy import ROUTER
from meshagent.xds.translate.policy import plan_clusters
from meshagent.xds.translate.tls import upstream_transport_socket

SERVICE = Service("api.example.com", "ns", (ServicePort(443, "tls", "TLS"),), Resolution.DNS,
                  mesh_external=True)  # fmt: skip
ROUTER_PROXY = ProxySpec("gw", proxy_type=ROUTER)
SIDECAR_PROXY = ProxySpec("vm")


def _rule(tls: ClientTls, *, selector: bool = False) -> DestinationRule:
    return DestinationRule(
        "api", "ns", SERVICE.host, TrafficPolicy(tls=tls),
        workload_selector=(("app", "client"),) if selector else None,
    )  # fmt: skip


def _context(rule: DestinationRule, proxy: ProxySpec) -> tls_pb2.UpstreamTlsContext:
    (plan,) = plan_clusters(SERVICE, rule, proxy)
    socket = upstream_transport_socket(plan)
    assert socket is not None
    context = tls_pb2.UpstreamTlsContext()
    assert socket.typed_config.Unpack(context)
    return context


def test_mutual_at_a_gateway_presents_the_credential_and_checks_with_its_ca() -> None:
    tls = ClientTls("MUTUAL", credential_name="client", subject_alt_names=("api.example.com",))
    context = _context(_rule(tls), ROUTER_PROXY)
    common = context.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["kubernetes://client"]
    assert not common.tls_certificates  # nothing inline: rotation changes only the secret
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "kubernetes://client-cacert"
    sans = combined.default_validation_context.match_typed_subject_alt_names
    assert [m.matcher.exact for m in sans] == ["api.example.com"]
    assert context.sni == "api.example.com"


def test_simple_verifies_with_the_credential_ca_and_presents_nothing() -> None:
    context = _context(_rule(ClientTls("SIMPLE", credential_name="ca", sni="x.io")), ROUTER_PROXY)
    common = context.common_tls_context
    assert not common.tls_certificate_sds_secret_configs and context.sni == "x.io"
    validation = common.combined_validation_context.validation_context_sds_secret_config
    assert validation.name == "kubernetes://ca-cacert"


def test_insecure_skip_verify_skips_the_ca() -> None:
    tls = ClientTls("MUTUAL", credential_name="client", insecure_skip_verify=True)
    common = _context(_rule(tls), ROUTER_PROXY).common_tls_context
    assert not common.HasField("combined_validation_context")
    assert common.tls_certificate_sds_secret_configs[0].name == "kubernetes://client"


def test_a_sidecar_ignores_credential_name_unless_the_rule_selects_workloads() -> None:
    tls = ClientTls("MUTUAL", "/etc/c.pem", "/etc/k.pem", credential_name="client")
    common = _context(_rule(tls), SIDECAR_PROXY).common_tls_context
    assert not common.tls_certificate_sds_secret_configs  # the rule's files, as in Istio
    assert common.tls_certificates[0].certificate_chain.filename == "/etc/c.pem"
    scoped = _context(_rule(tls, selector=True), SIDECAR_PROXY).common_tls_context
    assert scoped.tls_certificate_sds_secret_configs[0].name == "kubernetes://client"


# -- the secrets those clusters reference, through the Translator ----------------------------

EGRESS = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: edge}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: edge}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: client}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: edge}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: MUTUAL, credentialName: client}
"""


def _secrets_of(gateway: bool) -> tuple[list[str], list[object]]:
    from meshagent.adapters.yamldocs import load_documents
    from meshagent.model.source import SourceEvent
    from meshagent.normalize import Normalizer
    from meshagent.xds import typeurls
    from meshagent.xds.consistency import ConsistencyChecker
    from meshagent.xds.translate import Translator
    from tests.credential_helpers import CA_PEM, kube_secret, server_cert

    text = (
        EGRESS
        if gateway
        else EGRESS.split("---\napiVersion: networking.istio.io/v1\nkind: Gateway")[0]
    )
    resources, problems = load_documents(text, "mesh.yaml")
    assert not problems
    pem = server_cert()
    secret = kube_secret("client", "edge", tls_crt=pem.cert, tls_key=pem.key, ca_crt=CA_PEM)
    snap, _ = Normalizer().apply(
        [SourceEvent("files", tuple(resources)), SourceEvent("kubernetes", (secret,))]
    )
    proxy = ProxySpec("gw", namespace="edge", proxy_type=ROUTER,
                      labels=(("istio", "egressgateway"),))  # fmt: skip
    out = Translator().generate(snap, proxy)
    return sorted(out.of(typeurls.SECRET)), ConsistencyChecker().check(out)


def test_a_router_serves_the_secrets_its_rule_credentials_need() -> None:
    secrets, problems = _secrets_of(gateway=False)
    assert secrets == ["kubernetes://client", "kubernetes://client-cacert"] and not problems


def test_a_credential_both_a_gateway_and_a_rule_use_is_served_once() -> None:
    secrets, problems = _secrets_of(gateway=True)
    assert secrets == ["kubernetes://client", "kubernetes://client-cacert"] and not problems


def test_a_rule_credential_that_cannot_be_served_is_a_located_warning() -> None:
    from dataclasses import replace
    from types import MappingProxyType

    from meshagent.model import Credential, MeshSnapshot
    from meshagent.model.source import Provenance
    from meshagent.xds.translate.credential_secrets import credential_problems
    from tests.credential_helpers import CA_PEM

    prov = Provenance("files", "mesh.yaml:3", "DestinationRule", "ns", "api")
    rule = replace(_rule(ClientTls("MUTUAL", credential_name="client")), provenance=prov)
    snapshot = MeshSnapshot(destination_rules=MappingProxyType({SERVICE.host: rule}))
    router = ProxySpec("gw", namespace="ns", proxy_type=ROUTER)
    (found,) = credential_problems(snapshot, router)
    assert (found.location, found.name, found.field) == (
        "mesh.yaml:3",
        "ns/api",
        "spec.trafficPolicy.tls.credentialName",
    )
    assert "'ns/client' not found" in found.reason
    assert credential_problems(snapshot, ProxySpec("vm", namespace="ns")) == []  # not honoured
    served = MappingProxyType({"ns/client": Credential("ns", "client", "C", "K", CA_PEM)})
    assert credential_problems(replace(snapshot, credentials=served), router) == []
    no_ca = MappingProxyType({"ns/client": Credential("ns", "client", "C", "K")})
    (found,) = credential_problems(replace(snapshot, credentials=no_ca), router)
    assert "no CA bundle" in found.reason
