"""Gateway config entries in the Consul API simulator: the checks Consul makes when an
ingress-gateway or terminating-gateway entry is written, and the links that
/v1/catalog/gateway-services/<gateway> lists (shape as ../shared/corpus/consul's
catalog-gateway-services-*.response.json).

Only what a client can observe is simulated: a refused write (Consul answers 500 with the
validation error) and the listing. The rules are those Consul documents for these entries;
the messages are the simulator's own.
"""

from __future__ import annotations

from typing import Any

GATEWAY_KINDS = ("ingress-gateway", "terminating-gateway")
KNOWN_KINDS = (
    "service-defaults",
    "proxy-defaults",
    "service-router",
    "service-splitter",
    "service-resolver",
    "service-intentions",
    "ingress-gateway",
    "terminating-gateway",
    "mesh",
    "exported-services",
    "sameness-group",
    "jwt-provider",
    "api-gateway",
    "http-route",
    "tcp-route",
    "inline-certificate",
    "file-system-certificate",
    "control-plane-request-limit",
    "rate-limit-ip-config",
)
GATEWAY_SERVICES_KEY = "gateway-services"  # the watch key of /v1/catalog/gateway-services/*
_L7 = ("http", "http2", "grpc")


def _listener_problem(i: int, listener: dict[str, Any]) -> str:
    protocol = str(listener.get("Protocol") or "tcp")
    if protocol not in ("tcp", *_L7):
        return f"Listeners[{i}]: protocol {protocol!r} is not supported"
    services = listener.get("Services") or []
    if protocol == "tcp" and len(services) > 1:
        return f"Listeners[{i}]: multiple services per listener need an L7 protocol"
    for service in services:
        if protocol == "tcp" and service.get("Name") == "*":
            return f"Listeners[{i}]: a wildcard service needs an L7 protocol"
        if service.get("Hosts") and (protocol == "tcp" or service.get("Name") == "*"):
            return f"Listeners[{i}]: Hosts need an L7 protocol and a named service"
    return ""


def entry_problem(entry: dict[str, Any]) -> str:
    """Why Consul would refuse to store entry ("" when it would store it)."""
    kind = str(entry.get("Kind") or "")
    if kind not in KNOWN_KINDS:
        return f"invalid config entry kind: {kind}"
    if kind == "ingress-gateway":
        ports: set[Any] = set()
        for i, listener in enumerate(entry.get("Listeners") or []):
            if listener.get("Port") in ports:
                return f"Listeners[{i}]: port {listener.get('Port')} is already used"
            ports.add(listener.get("Port"))
            problem = _listener_problem(i, listener)
            if problem:
                return problem
    if kind == "terminating-gateway":
        for i, service in enumerate(entry.get("Services") or []):
            if not service.get("Name"):
                return f"Services[{i}]: Name is required"
            if bool(service.get("CertFile")) != bool(service.get("KeyFile")):
                return f"Services[{i}]: CertFile and KeyFile must be set together"
    return ""


def _link(entry: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    namespace = str(entry.get("Namespace") or "default")
    return {
        "Gateway": {"Name": entry["Name"], "Namespace": namespace},
        "Service": {
            "Name": service.get("Name"),
            "Namespace": service.get("Namespace") or namespace,
        },
        "GatewayKind": entry["Kind"],
        "CreateIndex": entry.get("CreateIndex", 0),
        "ModifyIndex": entry.get("ModifyIndex", 0),
    }


def gateway_links(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The /v1/catalog/gateway-services rows of one gateway entry."""
    out = []
    if entry.get("Kind") == "ingress-gateway":
        for listener in entry.get("Listeners") or []:
            for service in listener.get("Services") or []:
                row = _link(entry, service)
                row["Port"] = listener.get("Port")
                row["Protocol"] = listener.get("Protocol") or "tcp"
                if service.get("Hosts"):
                    row["Hosts"] = list(service["Hosts"])
                out.append(row)
    else:
        for service in entry.get("Services") or []:
            row = _link(entry, service)
            for key in ("CAFile", "CertFile", "KeyFile", "SNI"):
                if service.get(key):
                    row[key] = service[key]
            out.append(row)
    return out
