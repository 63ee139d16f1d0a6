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
from meshagent.model.source import Provenance, RawResource
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
