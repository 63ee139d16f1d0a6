"""The admin-socket pages of explain and diff: /debug/explain and /debug/inputs."""

from __future__ import annotations

import json
from pathlib import Path

from meshagent.agent.admin import AdminServer, Request
from meshagent.insight.offline import build
from meshagent.insight.pages import install_insight_pages
from meshagent.model.identity import Identity
from meshagent.model.proxy import ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Provenance, RawResource, SourceEvent
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds.resources import ResourceSet
from tests.unit.test_insight_explain import HOST, RULE, SERVICE, mesh

KEY = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"


class Agent:
    def __init__(self, normalizer: Normalizer, snapshot: MeshSnapshot, proxy: ProxySpec,
                 resources: ResourceSet) -> None:  # fmt: skip
        self.normalizer, self.snapshot, self.proxy = normalizer, snapshot, proxy
        self.resources = resources

    def served_resources(self) -> ResourceSet:
        return self.resources


def pages(agent: Agent) -> AdminServer:
    admin = AdminServer("127.0.0.1", 0, {})
    install_insight_pages(admin, agent)
    return admin


async def get(admin: AdminServer, target: str) -> tuple[int, bytes]:
    response = await admin._respond(Request("GET", target, {}))
    return response.status, response.body


async def test_explain_page(tmp_path: Path) -> None:
    built = build([mesh(tmp_path, se=SERVICE, dr=RULE)], None)
    admin = pages(Agent(built.normalizer, built.snapshot, built.proxy, built.resources))
    status, body = await get(admin, f"/debug/explain?resource=outbound%7C9080%7Cv1%7C{HOST}")
    assert (
        status == 200 and json.loads(body)["inputs"][1]["ref"] == "DestinationRule/default/reviews"
    )
    assert (await get(admin, "/debug/explain"))[0] == 400
    assert (await get(admin, "/debug/explain?resource=x&kind=nope"))[0] == 400
    assert (await get(admin, "/debug/explain?resource=nothing"))[0] == 404


async def test_inputs_page_withholds_keys() -> None:
    def doc(kind: str, body: dict[str, object]) -> RawResource:
        prov = Provenance("kubernetes", "resourceVersion 3", kind, "default", "x")
        return RawResource("kubernetes", kind, "v1", "default", "x", body, prov)

    secret = doc("Secret", {"kind": "Secret", "data": {"tls.key": KEY}})
    odd = doc("ServiceEntry", {"kind": "ServiceEntry", "spec": {"note": KEY}})

    class Documents(Normalizer):
        def accepted(self, source: str) -> dict[tuple[str, str, str, str], RawResource]:
            return {secret.key: secret, odd.key: odd} if source == "kubernetes" else {}

    normalizer = Documents()
    identity = Identity("cluster.local", "default", "web")
    from meshagent.insight.offline import stand_ins

    proxy = ProxySpec(node_id="n", certificates=stand_ins([identity]))
    admin = pages(Agent(normalizer, MeshSnapshot(), proxy, ResourceSet()))
    status, body = await get(admin, "/debug/inputs?exclude=files")
    assert status == 200 and b"PRIVATE KEY" not in body
    data = json.loads(body)
    assert [r["kind"] for r in data["resources"]] == ["ServiceEntry"]
    assert data["resources"][0]["body"]["spec"]["note"] == "[redacted]"
    assert data["identities"] == ["spiffe://cluster.local/ns/default/sa/web"]


async def test_inputs_page_redacts_keys_in_base64_and_envoy_filters() -> None:
    # a PEM key in base64 (as a Secret's data or an inline_bytes holds one) and the sensitive
    # fields of an EnvoyFilter's patch values (a transport socket's inline key and password,
    # a generic secret) were shown as written; redacted, the EnvoyFilter still reads back
    import base64

    from meshagent.agent.lastgood import decode_resource

    key_b64 = base64.b64encode(KEY.encode()).decode()
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "tls_certificates": [
                {
                    "certificate_chain": {"inline_string": "CHAIN"},
                    "private_key": {"inline_bytes": key_b64},
                    "password": {"inline_string": "hunter2"},
                }
            ]
        },
    }
    patches = [
        {
            "applyTo": "CLUSTER",
            "patch": {
                "operation": "MERGE",
                "value": {"transport_socket": {"name": "tls", "typed_config": tls}},
            },
        },
        {  # not an Envoy message: redacted by field name
            "applyTo": "CLUSTER",
            "patch": {"operation": "MERGE", "value": {"bogus": {"secretAccessKey": "AKIA-SECRET"}}},
        },
        {
            "applyTo": "CLUSTER",
            "patch": {"operation": "MERGE", "value": {"connect_timeout": "3s"}},
        },
    ]
    body = {"kind": "EnvoyFilter", "metadata": {"name": "x"}, "spec": {"configPatches": patches}}
    prov = Provenance("kubernetes", "resourceVersion 3", "EnvoyFilter", "default", "x")
    ef = RawResource(
        "kubernetes", "EnvoyFilter", "networking.istio.io/v1alpha3", "default", "x", body, prov
    )
    prov = Provenance("kubernetes", "resourceVersion 3", "ServiceEntry", "default", "se")
    se = RawResource(
        "kubernetes", "ServiceEntry", "v1", "default", "se", {"spec": {"note": key_b64}}, prov
    )

    class Documents(Normalizer):
        def accepted(self, source: str) -> dict[tuple[str, str, str, str], RawResource]:
            return {ef.key: ef, se.key: se} if source == "kubernetes" else {}

    admin = pages(Agent(Documents(), MeshSnapshot(), ProxySpec(node_id="n"), ResourceSet()))
    status, text = await get(admin, "/debug/inputs?exclude=files")
    assert status == 200
    for secret in (b"PRIVATE KEY", key_b64[:40].encode(), b"hunter2", b"AKIA-SECRET"):
        assert secret not in text
    data = json.loads(text)
    assert b"CHAIN" in text and data["resources"][1]["body"]["spec"]["note"] == "[redacted]"
    replayed = decode_resource(data["resources"][0])
    assert replayed.body["spec"]["configPatches"][2] == patches[2]  # nothing to redact: as is
    _, diagnostics = Normalizer().apply([SourceEvent("kubernetes", (replayed,))])
    # the replayed filter reads as written: the unknown field is dropped with a warning, as Istio
    assert [d.field for d in diagnostics if d.severity == "error"] == []
    warned = [d.field for d in diagnostics if d.severity == "warning"]
    assert "spec.configPatches[1].patch.value" in warned
