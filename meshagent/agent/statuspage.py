"""What the agent is doing, as JSON (/debug/status) and as one HTML page (GET /).

The report is built from the agent's own state: sources, the mesh snapshot (services,
endpoints, routes), certificates, Envoy's per-type xDS state and recent diagnostics. The page
has no external assets (no scripts, no stylesheets from elsewhere) and escapes every value.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from meshagent.xds.typeurls import SHORT_NAMES


def xds_report(status: Any) -> dict[str, Any]:
    """Envoy's connection and, per type, what was sent, ACKed and NACKed."""
    types = {}
    for type_url, st in sorted(status.types.items()):
        types[SHORT_NAMES.get(type_url, type_url)] = {
            "sent": st.last_sent_version,
            "acked": st.last_acked_version,
            "in_sync": st.acked and not st.rejected,
            "nacked": st.last_nack_version,
            "nack_error": st.last_nack_error,
            "rejected": list(st.rejected),  # not applied, resent on a backoff (a port taken)
        }
    return {"connected": status.connected, "stream": status.stream, "types": types}


def mesh_report(snapshot: Any) -> dict[str, Any]:
    """Services with their endpoints, and routes, from a MeshSnapshot (or None)."""
    if snapshot is None:
        return {"version": None, "services": [], "routes": [], "credentials": []}
    services = []
    for host, svc in sorted(snapshot.services.items()):
        endpoints = [
            {"address": e.address, "ports": dict(e.ports), "healthy": e.healthy}
            for e in snapshot.endpoints.get(host, ())
        ]
        ports = [f"{p.number}/{p.protocol}" for p in svc.ports]
        services.append({"host": host, "ports": ports, "endpoints": endpoints})
    routes = [
        {"name": key, "hosts": list(vs.hosts), "http": len(vs.http), "tcp": len(vs.tcp)}
        for key, vs in sorted(snapshot.virtual_services.items())
    ]
    credentials = [
        {
            "name": key,
            "from": c.provenance.location if c.provenance is not None else "",
            "certificate": bool(c.cert_chain_pem),
            "ca": bool(c.ca_cert_pem),
        }  # what serves and where it was read, never its material
        for key, c in sorted(getattr(snapshot, "credentials", {}).items())
    ]
    return {
        "version": snapshot.version,
        "services": services,
        "routes": routes,
        "credentials": credentials,
    }


def certificates_report(certificates: Iterable[Any], now: float | None = None) -> list[Any]:
    """Each workload certificate's identity, serial and expiry."""
    now = time.time() if now is None else now
    return [
        {
            "identity": str(getattr(c.identity, "spiffe_id", c.identity)),
            "serial": c.serial,
            "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.not_after)),
            "expires_in_s": int(c.not_after - now),
        }
        for c in certificates
    ]


# --- HTML --------------------------------------------------------------------------------

_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}.bad{color:#b00}"
    ".ok{color:#070}.note{color:#555;font-size:90%}"
)
DEFAULT_REFRESH_S = 10
DEFAULT_TOP = 50  # rows per table: the page stays cheap with 10k clusters


def plain(value: Any) -> str:
    """A value as a person reads it: no Python reprs (None, True, {...}, frozenset(...))."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return " ".join(f"{k}={plain(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(plain(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def analysis_report(report: Mapping[str, Any], limit: int = 50) -> dict[str, Any]:
    """The status page's view of /debug/analyze: counts and the first messages."""
    return {
        "counts": dict(report.get("counts", {})),
        "messages": [
            {k: m.get(k, "") for k in ("level", "code", "origin", "reference", "message")}
            for m in report.get("messages", [])[:limit]
        ],
        "more": max(0, len(report.get("messages", [])) - limit),
    }


def analysis_counts(counts: Mapping[str, int]) -> str:
    """ "2 errors, 1 warning" from {"Error": 2, "Warning": 1, "Info": 0}; "no messages"."""
    parts = [
        f"{n} {level.lower()}{'s' if n != 1 and level != 'Info' else ''}"
        for level, n in counts.items()
        if n
    ]
    return ", ".join(parts) or "no messages"


def _analysis_section(analysis: Mapping[str, Any] | None) -> str:
    if analysis is None:
        return ""
    counts = analysis_counts(analysis["counts"])
    more = f"<p>and {analysis['more']} more (GET /debug/analyze)</p>" if analysis["more"] else ""
    rows = [
        (m["level"], m["code"], m["origin"], m["reference"], m["message"])
        for m in analysis["messages"]
    ]
    table = _table(("level", "code", "resource", "location", "message"), rows)
    summary = f"<p>{escape(counts)} (meshagent analyze)</p>"
    return _section("Analysis", "analysis", summary + table + more)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "none") -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(plain(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(title: str, ident: str, content: str) -> str:
    return f'<section id="{ident}"><h2>{escape(title)}</h2>{content}</section>'


def _capped(rows: Sequence[Any], top: int, what: str) -> tuple[Sequence[Any], str]:
    if len(rows) <= top:
        return rows, ""
    return rows[:top], f'<p class="note">{top} of {len(rows)} {escape(what)} shown (?top=N)</p>'


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _facts(report: Mapping[str, Any], envoy: Mapping[str, Any] | None) -> str:
    from meshagent.agent.envoyview import duration_text

    agent = report.get("agent") or {}
    server = (envoy or {}).get("server")
    reload = agent.get("last_reload")
    rows: list[tuple[str, Any]] = [
        ("agent version", agent.get("version")),
        ("agent uptime", duration_text(agent["uptime_s"]) if "uptime_s" in agent else None),
    ]
    if server:
        rows += [("Envoy version", server["version"]), ("Envoy state", server["state"]),
                 ("Envoy uptime", duration_text(server["uptime_s"]))]  # fmt: skip
    else:
        rows.append(("Envoy admin", (envoy or {}).get("error") or "not asked"))
    if agent.get("envoy_managed"):
        rows.append(("Envoy restarts by the agent", agent.get("envoy_restarts", 0)))
    else:
        rows.append(("Envoy restarts by the agent", "Envoy is not managed by the agent"))
    rows.append(("last reload", "none since start" if not reload
                 else f"{reload['result']} at {_when(reload['at'])}"))  # fmt: skip
    return _table(("", ""), rows)


def _agent_endpoints(mesh: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """host -> (healthy, total) endpoints in the agent's snapshot."""
    return {
        s["host"]: (sum(bool(e["healthy"]) for e in s["endpoints"]), len(s["endpoints"]))
        for s in mesh["services"]
    }


def _agent_endpoint_rows(mesh: Mapping[str, Any], top: int) -> tuple[list[Any], str]:
    """The agent's endpoints, unhealthy first, at most top of them (not 100k rows)."""
    bad: list[Any] = []
    good: list[Any] = []
    total = 0
    for s in mesh["services"]:
        for e in s["endpoints"]:
            total += 1
            if not e["healthy"]:
                bad.append((s["host"], e["address"], e["ports"], "unhealthy"))
            elif len(good) < top:
                good.append((s["host"], e["address"], e["ports"], "healthy"))
    rows = (bad + good)[:top]
    more = f'<p class="note">{top} of {total} endpoints shown (?top=N)</p>' if total > top else ""
    return rows, more


def cluster_state(cluster: Mapping[str, Any]) -> str:
    """One word for a cluster in Envoy: healthy, degraded, failing, unhealthy or no endpoints."""
    words = [e["health"] for e in cluster["endpoints"]]
    if not words:
        return "no endpoints"
    if all(w == "healthy" for w in words):
        return "healthy"
    if any(w == "healthy" for w in words):
        return "degraded"
    return "failing" if "failing" in words else "unhealthy"


def _clusters(report: Mapping[str, Any], envoy: Mapping[str, Any] | None, top: int,
              page: int) -> tuple[str, str]:  # fmt: skip
    """The per-cluster table (Envoy's view beside the agent's) and its endpoints' table."""
    from meshagent.agent.envoyview import cluster_name_parts, problem_rank

    clusters = (envoy or {}).get("clusters")
    if clusters is None:
        why = (envoy or {}).get("error") or "Envoy's admin was not asked"
        return f"<p>{escape(why)}</p>", "<p>-</p>"
    ranked = sorted(clusters, key=problem_rank)
    start = max(page, 0) * top
    shown = ranked[start : start + top]
    agent = _agent_endpoints(report["mesh"])
    rows: list[Any] = []
    for c in shown:
        healthy, total = agent.get(cluster_name_parts(c["name"])["fqdn"], (None, None))
        agent_view = "-" if total is None else f"{healthy}/{total} healthy"
        envoy_view = f"{c['healthy']}/{len(c['endpoints'])} healthy"
        rows.append((c["name"], agent_view, envoy_view, cluster_state(c), c["ejected"],
                     c["rq_active"], c["rq_error"], c["cx_connect_fail"]))  # fmt: skip
    note = (f'<p class="note">clusters {start + 1}-{start + len(shown)} of {len(ranked)}, the '
            f'most troubled first; <a href="?top={top}&amp;page={page + 1}">next</a></p>'
            if len(ranked) > start + len(shown) else "")  # fmt: skip
    at = (envoy or {}).get("at")
    if at:
        note += f'<p class="note">Envoy\'s view as of {escape(_when(at))}</p>'
    table = _table(("cluster", "agent: endpoints", "Envoy: endpoints", "Envoy: state",
                    "ejected", "active requests", "5xx and errors", "connect failures"),
                   rows) + note  # fmt: skip
    endpoint_rows: Sequence[Any] = [
        (c["name"], e["address"], e["health"], e["flags"], e["rq_active"], e["rq_total"],
         e["rq_error"], e["cx_connect_fail"])
        for c in shown for e in c["endpoints"]
    ]  # fmt: skip
    endpoint_rows, more = _capped(endpoint_rows, 10 * top, "endpoints")
    endpoints = _table(("cluster", "endpoint", "health", "flags", "active requests",
                        "requests", "5xx and errors", "connect failures"),
                       endpoint_rows) + more  # fmt: skip
    return table, endpoints


def render_html(
    report: Mapping[str, Any],
    envoy: Mapping[str, Any] | None = None,
    *,
    refresh: int = DEFAULT_REFRESH_S,
    top: int = DEFAULT_TOP,
    page: int = 0,
) -> str:
    """The status page for a report from Agent.status_report() and Envoy's view
    ({"server", "clusters", "error"}, from opspages.envoy_view); refresh 0 = no auto-refresh."""
    from meshagent.agent.envoyview import duration_text

    ready = not report["not_ready"]
    state = "ready" if ready else "not ready: " + "; ".join(report["not_ready"])
    mesh, xds = report["mesh"], report["xds"]
    endpoint_rows, more_endpoints = _agent_endpoint_rows(mesh, top)
    services, more_services = _capped(mesh["services"], top, "services")
    routes, more_routes = _capped(mesh["routes"], top, "routes")
    clusters, envoy_endpoints = _clusters(report, envoy, top, page)
    refresh_note = (f"refreshes every {refresh}s (?refresh=0 stops it)" if refresh > 0
                    else "auto-refresh off (?refresh=10 turns it on)")  # fmt: skip
    parts = [
        f"<h1>meshagent {escape(report['node'])}</h1>",
        f'<p class="{"ok" if ready else "bad"}" id="state">{escape(state)}</p>',
        f'<p class="note">{escape(refresh_note)}; generated {escape(_when(time.time()))}</p>',
        _section("Agent and Envoy", "versions", _facts(report, envoy)),
        _section("Sources", "sources", _table(
            ("source", "synced"), [(s["name"], s["synced"]) for s in report["sources"]])),
        _section("Upstream clusters: Envoy's view beside the agent's", "clusters", clusters),
        _section("Endpoints as Envoy sees them", "envoy-endpoints", envoy_endpoints),
        _section("Services", "services", _table(
            ("host", "ports", "endpoints"),
            [(s["host"], " ".join(s["ports"]), len(s["endpoints"])) for s in services])
            + more_services),
        _section("Endpoints (agent)", "endpoints", _table(
            ("service", "address", "ports", "health"), endpoint_rows) + more_endpoints),
        _section("Routes", "routes", _table(
            ("virtual service", "hosts", "http", "tcp"),
            [(r["name"], " ".join(r["hosts"]), r["http"], r["tcp"]) for r in routes])
            + more_routes),
        _section("Certificates", "certificates", _table(
            ("identity", "serial", "expires", "time left"),
            [(c["identity"], c["serial"], c["not_after"], duration_text(c["expires_in_s"]))
             for c in report["certificates"]])),
        _section("Envoy sync", "envoy", "<p>connected: "
                 + escape(f"{plain(xds['connected'])} ({xds['stream'] or 'no stream'})") + "</p>"
                 + _table(("type", "sent", "acked", "in sync", "NACKed", "error"),
                          [(t, v["sent"], v["acked"], v["in_sync"], v["nacked"],
                            v["nack_error"]) for t, v in xds["types"].items()])),
        _section("Configuration errors", "errors", _table(
            ("severity", "location", "resource", "field", "reason", "since"),
            [(d["severity"], d["location"], f"{d['kind']}/{d['name']}", d["field"], d["reason"],
              d.get("first_seen", "")) for d in report["diagnostics"]])),
    ]  # fmt: skip
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh > 0 else ""
    parts.append(_analysis_section(report.get("analysis")))
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>meshagent {escape(report['node'])}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
