"""Operator pages of the admin server: the status page, JSON status, served resources, actions.

GET /                 HTML status page (meshagent.agent.statuspage)
GET /debug/status     the same report as JSON (`meshagent status`)
GET /debug/resources  what the agent serves the local Envoy, as JSON (`meshagent proxy-config`)
GET /envoy/stats      Envoy's own Prometheus stats (its admin /stats/prometheus), passed through
POST /reload          re-read the config file, as SIGHUP does (`meshagent reload`)
POST /logging?level=L change the agent's log level until the next reload or restart
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto

from meshagent.agent.admin import AdminServer, Response
from meshagent.agent.config import LOG_LEVELS
from meshagent.agent.logs import configure_logging
from meshagent.agent.statuspage import render_html
from meshagent.xds.redact import redacted_any
from meshagent.xds.typeurls import SHORT_NAMES


class OpsAgent(Protocol):
    """What the pages need of the Agent."""

    config: Any

    def status_report(self) -> dict[str, Any]: ...

    def served_resources(self) -> Any: ...

    def reload_in_background(self) -> None: ...


def install_ops_pages(admin: AdminServer, agent: OpsAgent) -> None:
    """Add the operator pages and actions to admin."""
    admin.pages["/"] = lambda: Response(
        200, render_html(agent.status_report()).encode(), "text/html; charset=utf-8"
    )
    admin.pages["/debug/status"] = lambda: Response.json(200, agent.status_report())
    admin.pages["/debug/resources"] = lambda: Response.json(
        200, resources_json(agent.served_resources())
    )
    admin.pages["/envoy/stats"] = lambda: _envoy_stats(agent)
    admin.actions["/reload"] = lambda _: _reload(agent)
    admin.actions["/logging"] = lambda params: _logging(agent, params)


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
    host = envoy.admin_address
    return f"http://{f'[{host}]' if ':' in host else host}:{envoy.admin_port}{path}"


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
