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
    ".ok{color:#070}"
)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "none") -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(title: str, ident: str, content: str) -> str:
    return f'<section id="{ident}"><h2>{escape(title)}</h2>{content}</section>'


def render_html(report: Mapping[str, Any]) -> str:
    """The status page for a report from Agent.status_report()."""
    ready = not report["not_ready"]
    state = "ready" if ready else "not ready: " + "; ".join(report["not_ready"])
    mesh, xds = report["mesh"], report["xds"]
    endpoint_rows = [
        (s["host"], e["address"], e["ports"], "healthy" if e["healthy"] else "unhealthy")
        for s in mesh["services"]
        for e in s["endpoints"]
    ]
    parts = [
        f"<h1>meshagent {escape(report['node'])}</h1>",
        f'<p class="{"ok" if ready else "bad"}" id="state">{escape(state)}</p>',
        _section("Sources", "sources", _table(
            ("source", "synced"), [(s["name"], s["synced"]) for s in report["sources"]])),
        _section("Services", "services", _table(
            ("host", "ports", "endpoints"),
            [(s["host"], " ".join(s["ports"]), len(s["endpoints"])) for s in mesh["services"]])),
        _section("Endpoints", "endpoints", _table(
            ("service", "address", "ports", "health"), endpoint_rows)),
        _section("Routes", "routes", _table(
            ("virtual service", "hosts", "http", "tcp"),
            [(r["name"], " ".join(r["hosts"]), r["http"], r["tcp"]) for r in mesh["routes"]])),
        _section("Certificates", "certificates", _table(
            ("identity", "serial", "expires", "seconds left"),
            [(c["identity"], c["serial"], c["not_after"], c["expires_in_s"])
             for c in report["certificates"]])),
        _section("Envoy sync", "envoy", "<p>connected: "
                 + escape(f"{xds['connected']} ({xds['stream'] or 'no stream'})") + "</p>"
                 + _table(("type", "sent", "acked", "in sync", "NACKed", "error"),
                          [(t, v["sent"], v["acked"], v["in_sync"], v["nacked"],
                            v["nack_error"] or "") for t, v in xds["types"].items()])),
        _section("Configuration errors", "errors", _table(
            ("severity", "location", "resource", "field", "reason", "since"),
            [(d["severity"], d["location"], f"{d['kind']}/{d['name']}", d["field"], d["reason"],
              d.get("first_seen", "")) for d in report["diagnostics"]])),
    ]  # fmt: skip
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>meshagent {escape(report['node'])}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
