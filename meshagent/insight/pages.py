"""Admin-socket pages of explain and diff (served only on the admin Unix socket).

GET /debug/explain?resource=NAME[&kind=cluster|listener|route|endpoint]
    the inputs of one Envoy resource, as JSON (`meshagent explain`)
GET /debug/inputs?exclude=files
    the documents the agent serves now from its other sources (Consul, Kubernetes config),
    as the last-good file stores them, and the identities the proxy has certificates for:
    `meshagent diff` replays them beside candidate files
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, Protocol

from meshagent.agent.admin import AdminServer, Request, Response
from meshagent.agent.lastgood import encode_resource
from meshagent.insight.explain import KINDS, ExplainError, View, explain
from meshagent.model.proxy import ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.xds.resources import ResourceSet

# The normalizer may be applying a batch in its thread meanwhile: a read may need a retry.
ATTEMPTS = 3
WITHHELD_KINDS = frozenset({"Secret"})  # key material never leaves the agent this way


class InsightAgent(Protocol):
    """What the pages need of the Agent."""

    normalizer: Any

    @property
    def snapshot(self) -> MeshSnapshot: ...

    @property
    def proxy(self) -> ProxySpec: ...

    def served_resources(self) -> ResourceSet: ...


def install_insight_pages(admin: AdminServer, agent: InsightAgent) -> None:
    """Add /debug/explain and /debug/inputs to admin."""

    async def explain_page(request: Request) -> Response:
        # In a worker thread: explaining an endpoint reads every ClusterLoadAssignment, which
        # must not hold up the event loop (and xDS) on a large mesh.
        return await asyncio.to_thread(_explain, agent, _params(request))

    async def inputs_page(request: Request) -> Response:
        return _inputs(agent, _params(request))

    admin.request_pages["/debug/explain"] = explain_page
    admin.request_pages["/debug/inputs"] = inputs_page


def _params(request: Request) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(request.query))


def _explain(agent: InsightAgent, params: dict[str, str]) -> Response:
    name, kind = params.get("resource", ""), params.get("kind") or None
    if not name:
        return Response.text(400, "resource=NAME is required\n")
    if kind is not None and kind not in KINDS:
        return Response.text(400, f"kind must be one of {', '.join(KINDS)}\n")
    if not hasattr(agent.normalizer, "claimants"):
        return Response.text(501, "this agent's normalizer cannot explain\n")
    for _ in range(ATTEMPTS):
        view = View.scoped(agent.snapshot, agent.proxy, agent.served_resources(), agent.normalizer)
        try:
            return Response.json(200, explain(view, name, kind).to_json())
        except ExplainError as exc:
            return Response.text(404, f"{exc}\n")
        except RuntimeError:  # a map changed under us (the normalizer thread): try again
            continue
    return Response.text(503, "the configuration is changing; try again\n")


def _inputs(agent: InsightAgent, params: dict[str, str]) -> Response:
    excluded = set(filter(None, params.get("exclude", "").split(",")))
    accepted = getattr(agent.normalizer, "accepted", None)
    if accepted is None:
        return Response.text(501, "this agent's normalizer cannot list its inputs\n")
    sources = sorted({"consul", "kubernetes", "files"} - excluded)
    for _ in range(ATTEMPTS):
        try:
            docs = [
                encode_resource(r)
                for s in sources
                for _, r in sorted(accepted(s).items())
                if r.kind not in WITHHELD_KINDS
            ]
        except RuntimeError:
            continue
        identities = [c.identity.spiffe_id for c in agent.proxy.certificates]
        body = {"sources": sources, "resources": _redacted(docs), "identities": identities}
        return Response.json(200, body)
    return Response.text(503, "the configuration is changing; try again\n")


def _redacted(value: Any) -> Any:
    """value with every string that holds a private key replaced, as in config dumps."""
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, str) and "PRIVATE KEY" in value:
        return "[redacted]"
    return value
