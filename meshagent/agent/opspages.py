"""Operator pages of the admin server: the status page, JSON status, served resources, actions.

GET /                 HTML status page (meshagent.agent.statuspage), with Envoy's own view
                      (?refresh=S auto-refresh, 0 off; ?top=N rows per table; ?page=K)
GET /debug/status     the same report as JSON (`meshagent status`)
GET /debug/resources  what the agent serves the local Envoy, as JSON (`meshagent proxy-config`)
GET /envoy/stats      Envoy's own Prometheus stats (its admin /stats/prometheus), passed through
POST /reload          re-read the config file, as SIGHUP does (`meshagent reload`)
POST /logging?level=L change the agent's log level until the next reload or restart
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto

from meshagent.agent.admin import AdminServer, Request, Response
from meshagent.agent.config import LOG_LEVELS
from meshagent.agent.logs import configure_logging
from meshagent.agent.statuspage import DEFAULT_REFRESH_S, DEFAULT_TOP, render_html
from meshagent.xds.redact import redacted_any
from meshagent.xds.typeurls import SHORT_NAMES


class OpsAgent(Protocol):
    """What the pages need of the Agent."""

    config: Any

    @property
    def snapshot(self) -> Any: ...  # the MeshSnapshot, immutable

    def status_report(self, *, mesh: bool = True) -> dict[str, Any]: ...

    def served_resources(self) -> Any: ...

    def reload_in_background(self) -> None: ...


def install_ops_pages(admin: AdminServer, agent: OpsAgent) -> None:
    """Add the operator pages and actions to admin."""
    cache = EnvoyViewCache()
    admin.request_pages["/"] = lambda request: status_page(agent, request, cache)
    admin.pages["/debug/status"] = lambda: _debug_status(agent)
    admin.pages["/debug/resources"] = lambda: _debug_resources(agent)
    admin.pages["/envoy/stats"] = lambda: _envoy_stats(agent)
    admin.actions["/reload"] = lambda _: _reload(agent)
    admin.actions["/logging"] = lambda params: _logging(agent, params)


ENVOY_VIEW_TIMEOUT_S = 3.0  # the page shows what it has rather than hang on a stuck Envoy


class EnvoyViewCache:
    """Envoy's view, fetched by one page view at a time and kept for a while: at 10k clusters
    /clusters is ~70 MB of JSON (about 0.7 s to read and parse, on a thread, in steps that do
    not stall the loop), so viewers share one fetch, kept ten times as long as it took (at
    least MIN_AGE_S)."""

    MIN_AGE_S = 2.0

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._view: dict[str, Any] | None = None
        self._until = 0.0

    async def get(self, envoy: Any) -> dict[str, Any]:
        async with self._lock:
            loop = asyncio.get_running_loop()
            if self._view is not None and loop.time() < self._until:
                return self._view
            start = loop.time()
            view: dict[str, Any] = await asyncio.to_thread(_paused, envoy_view, envoy)
            self.invalidate()
            self._view, self._until = (
                view,
                loop.time() + max(self.MIN_AGE_S, 10 * (loop.time() - start)),
            )
            return view

    def invalidate(self) -> None:
        """Forget the kept view: the next get() fetches anew. Its memory is released on a
        worker thread (see _release)."""
        held, self._view, self._until = [self._view], None, 0.0
        asyncio.get_running_loop().run_in_executor(None, _release, held)


def _release(held: list[Any]) -> None:
    """Free the view in held, a cluster at a time. Dropped whole, 10k clusters' dicts go in
    one C call that holds the GIL ~35 ms (the loop would wait, even with the call on a worker
    thread); cluster by cluster, the interpreter can switch threads between them. Done only
    when nothing else holds the view (a page view still rendering it frees it when done)."""
    view = held.pop()
    box = [view.get("clusters")] if view is not None else []
    del view
    if box and isinstance(box[0], list):
        _dismantle(box)


def _paused(work: Any, *args: Any) -> Any:
    from meshagent.gcpause import paused_gc

    with paused_gc():  # millions of short-lived objects, no cycles: collections cost 10x
        return work(*args)


async def status_page(agent: OpsAgent, request: Request, cache: EnvoyViewCache) -> Response:
    """GET /: the agent's report and Envoy's view, rendered."""
    import urllib.parse

    query = dict(urllib.parse.parse_qsl(request.query))
    try:
        refresh = _bounded(query, "refresh", DEFAULT_REFRESH_S, 0, 3600)
        top = _bounded(query, "top", DEFAULT_TOP, 1, 100_000)
        page = _bounded(query, "page", 0, 0, 1_000_000)
    except ValueError as exc:
        return Response.text(400, f"{exc}\n")
    report = agent.status_report(mesh=False)
    snapshot = agent.snapshot
    envoy = await cache.get(agent.config.envoy)
    # At 10k services building the mesh table takes ~50 ms and rendering ~40 ms: on a thread,
    # so the loop is not held (the snapshot is immutable; the dicts are not changed after
    # they are made), and the page's dicts are freed there too.
    html = await asyncio.to_thread(_paused, _render, report, snapshot, envoy, refresh, top, page)
    return Response(200, html.encode(), "text/html; charset=utf-8")


async def _debug_status(agent: OpsAgent) -> Response:
    """GET /debug/status. At 10k services the mesh part is 100k endpoints: building it and
    encoding it (indented) took ~0.5 s on the loop; both run on a thread."""
    report = agent.status_report(mesh=False)
    snapshot = agent.snapshot
    response: Response = await asyncio.to_thread(_paused, _status_json, report, snapshot)
    return response


def _status_json(report: dict[str, Any], snapshot: Any) -> Response:
    from meshagent.agent.statuspage import mesh_report

    report["mesh"] = mesh_report(snapshot)
    try:
        return _json_response(report)
    finally:
        _dismantle([report.pop("mesh")["services"]])


def _json_response(data: Any) -> Response:
    """Response.json(200, data), its text joined a few thousand pieces at a time: at 10k
    services one join of the encoder's million pieces holds the GIL ~20 ms."""
    pieces: list[bytes] = []
    batch: list[str] = []
    for piece in json.JSONEncoder(indent=2, sort_keys=True).iterencode(data):
        batch.append(piece)
        if len(batch) >= 4096:
            pieces.append("".join(batch).encode())
            batch.clear()
    pieces.append("".join(batch).encode() + b"\n")
    return Response(200, b"".join(pieces), "application/json")


async def _debug_resources(agent: OpsAgent) -> Response:
    """GET /debug/resources, decoded and encoded on a thread (the set is read-only)."""
    resources = agent.served_resources()
    response: Response = await asyncio.to_thread(_paused, _resources_json_response, resources)
    return response


def _resources_json_response(resources: Any) -> Response:
    return _json_response(resources_json(resources))


def _render(
    report: dict[str, Any], snapshot: Any, envoy: Any, refresh: int, top: int, page: int
) -> str:
    from meshagent.agent.statuspage import mesh_report

    report["mesh"] = mesh_report(snapshot)
    try:
        return render_html(report, envoy, refresh=refresh, top=top, page=page)
    finally:
        _dismantle([report.pop("mesh")["services"]])


def _dismantle(box: list[list[Any]]) -> None:
    """Free the big list in box an item at a time when nothing else holds it: dropped whole,
    100k dicts go in one C call that holds the GIL for tens of ms (the loop would wait, even
    with the call on a worker thread); item by item, the interpreter can switch threads."""
    items = box.pop()
    if sys.getrefcount(items) == 2:  # this function's reference and the call's
        while items:
            items.pop()


def _bounded(query: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    if key not in query:
        return default
    try:
        value = int(query[key])
    except ValueError:
        raise ValueError(f"{key} must be a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"{key} must be between {low} and {high}")
    return value


def envoy_view(envoy: Any) -> dict[str, Any]:
    """Envoy's server info and per-cluster health from its admin; "error" when unreachable."""
    from meshagent.agent import envoyview
    from meshagent.errors import MeshAgentError

    try:
        info = envoyview.get_json(envoy, "/server_info", timeout=ENVOY_VIEW_TIMEOUT_S)
        clusters = envoyview.fetch_cluster_health(envoy, timeout=ENVOY_VIEW_TIMEOUT_S)
    except MeshAgentError as exc:
        return {"server": None, "clusters": None, "error": str(exc)}
    return {
        "server": envoyview.server_report(info),
        "clusters": clusters,
        "error": None,
        "at": time.time(),
    }


def resources_json(resources: Any) -> dict[str, Any]:
    """A ResourceSet as {"cds": [{"name", "version", "resource"}], ...}, decoded to dicts.

    Key material is shown as "[redacted]" (meshagent.xds.redact), as in Envoy's config dump.
    """
    out: dict[str, Any] = {}
    for type_url, by_name in sorted(resources.by_type.items()):
        out[SHORT_NAMES.get(type_url, type_url)] = [
            {"name": name, "version": r.version, "resource": _decode(r.body)}
            for name, r in sorted(by_name.items())
        ]
    return out


def _decode(body: AnyProto) -> Any:
    try:
        return json_format.MessageToDict(redacted_any(body))
    except (TypeError, KeyError, json_format.Error):  # a type this process cannot resolve
        return {"@type": body.type_url, "bytes": len(body.value)}


def envoy_admin_url(envoy: Any, path: str) -> str:
    """URL of path on the local Envoy's admin interface (from the envoy.* config)."""
    from meshagent.agent.envoyview import admin_url

    return admin_url(envoy, path)


async def _envoy_stats(agent: OpsAgent) -> Response:
    url = envoy_admin_url(agent.config.envoy, "/stats/prometheus")
    try:
        body = await asyncio.to_thread(_get, url)
    except (OSError, urllib.error.URLError) as exc:
        return Response.text(502, f"Envoy admin {url} unreachable: {exc}\n")
    return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")


def _get(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return bytes(response.read())


def _reload(agent: OpsAgent) -> Response:
    agent.reload_in_background()
    return Response.text(202, "reloading\n")


def _logging(agent: OpsAgent, params: dict[str, str]) -> Response:
    level = params.get("level", "")
    if level not in LOG_LEVELS:
        return Response.text(400, f"level must be one of {', '.join(LOG_LEVELS)}\n")
    configure_logging(level, agent.config.log.format)
    return Response.text(200, f"log level {level}\n")
