"""The schemas of Gateway, Sidecar and WorkloadGroup (networking.istio.io).

These are validated field by field like the other kinds, but not translated yet: the
normalizer accepts them and warns that they have no effect (WorkloadGroup is read by WorkloadEntry
auto-registration, not by the translator).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.normalize.schema.common import (
    DESTINATION,
    LABELS,
    PORT,
    STR_MAP,
    WORKLOAD_SELECTOR,
    HostName,
)
from meshagent.normalize.schema.core import Bool, Enum, F, Int, Issues, ListOf, Obj, Str, join
from meshagent.normalize.schema.destinationrule import CONNECTION_POOL
from meshagent.normalize.schema.serviceentry import PROTOCOLS, SERVICE_PORT
from meshagent.normalize.schema.workloadentry import WORKLOAD_ENTRY

TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
SERVER_TLS_MODES = (
    "PASSTHROUGH",
    "SIMPLE",
    "MUTUAL",
    "AUTO_PASSTHROUGH",
    "ISTIO_MUTUAL",
    "OPTIONAL_MUTUAL",
)
_STRINGS = ListOf(Str())


def _server_tls_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    mode = value.get("mode") or "PASSTHROUGH"
    files = value.get("serverCertificate") or value.get("privateKey")
    if mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and not (
        value.get("credentialName") or files
    ):
        issues.error(
            join(path, "mode"), f"{mode} needs credentialName or serverCertificate + privateKey"
        )
    if bool(value.get("serverCertificate")) != bool(value.get("privateKey")) and files:
        issues.error(join(path, "privateKey"), "serverCertificate and privateKey go together")


SERVER_TLS = Obj(
    {
        "httpsRedirect": F(Bool()),
        "mode": F(Enum(SERVER_TLS_MODES)),
        "serverCertificate": F(Str()),
        "privateKey": F(Str()),
        "caCertificates": F(Str()),
        "caCrl": F(Str()),
        "credentialName": F(Str()),
        "credentialNames": F(_STRINGS),
        "subjectAltNames": F(_STRINGS),
        "verifyCertificateSpki": F(_STRINGS),
        "verifyCertificateHash": F(_STRINGS),
        "minProtocolVersion": F(Enum(TLS_VERSIONS)),
        "maxProtocolVersion": F(Enum(TLS_VERSIONS)),
        "cipherSuites": F(_STRINGS),
    },
    rules=[_server_tls_rule],
)


def _gateway_port_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    protocol = value.get("protocol")
    if isinstance(protocol, str) and protocol.upper() not in PROTOCOLS:
        issues.error(join(path, "protocol"), f"unrecognized protocol {protocol!r}")


GATEWAY_PORT = Obj(
    {
        "number": F(PORT, required=True),
        "protocol": F(Str(non_empty=True), required=True),
        "name": F(Str(), required=True),
        "targetPort": F(Int(0, 65535)),
    },
    rules=[_gateway_port_rule],
)

SERVER = Obj(
    {
        "port": F(GATEWAY_PORT, required=True),
        "bind": F(Str()),
        "hosts": F(ListOf(Str(non_empty=True), non_empty=True), required=True),
        "tls": F(SERVER_TLS),
        "defaultEndpoint": F(Str()),
        "name": F(Str()),
    }
)

GATEWAY = Obj({"selector": F(STR_MAP), "servers": F(ListOf(SERVER))})

CAPTURE_MODES = ("DEFAULT", "IPTABLES", "NONE")


def _egress_hosts_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    for i, host in enumerate(value.get("hosts") or ()):
        namespace, slash, name = str(host).partition("/")
        if not slash or not namespace:
            issues.error(f"{join(path, 'hosts')}[{i}]", f"{host!r} must be namespace/dnsName")
        elif name != "*" and not name.startswith("*."):
            problems = Issues()
            HostName().check(name, f"{join(path, 'hosts')}[{i}]", problems)
            issues.extend(problems)


INGRESS_LISTENER = Obj(
    {
        "port": F(SERVICE_PORT, required=True),
        "bind": F(Str()),
        "captureMode": F(Enum(CAPTURE_MODES)),
        "defaultEndpoint": F(Str()),
        "tls": F(SERVER_TLS),
        "connectionPool": F(CONNECTION_POOL),
    }
)
EGRESS_LISTENER = Obj(
    {
        "port": F(SERVICE_PORT),
        "bind": F(Str()),
        "captureMode": F(Enum(CAPTURE_MODES)),
        "hosts": F(ListOf(Str(non_empty=True), non_empty=True), required=True),
    },
    rules=[_egress_hosts_rule],
)
SIDECAR = Obj(
    {
        "workloadSelector": F(WORKLOAD_SELECTOR),
        "ingress": F(ListOf(INGRESS_LISTENER)),
        "egress": F(ListOf(EGRESS_LISTENER)),
        "inboundConnectionPool": F(CONNECTION_POOL),
        "outboundTrafficPolicy": F(
            Obj(
                {
                    "mode": F(Enum(("REGISTRY_ONLY", "ALLOW_ANY"))),
                    "egressProxy": F(DESTINATION),
                }
            )
        ),
    }
)

_SECONDS = Int(0, 2**31 - 1)
HTTP_GET = Obj(
    {
        "path": F(Str()),
        "port": F(PORT, required=True),
        "host": F(Str()),
        "scheme": F(Enum(("HTTP", "HTTPS", "http", "https"))),
        "httpHeaders": F(ListOf(Obj({"name": F(Str(non_empty=True)), "value": F(Str())}))),
    }
)


def _one_probe(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if not any(value.get(k) for k in ("httpGet", "tcpSocket", "exec", "grpc")):
        issues.error(path, "a probe needs one of httpGet, tcpSocket, exec, grpc")


PROBE = Obj(
    {
        "initialDelaySeconds": F(_SECONDS),
        "timeoutSeconds": F(_SECONDS),
        "periodSeconds": F(_SECONDS),
        "successThreshold": F(_SECONDS),
        "failureThreshold": F(_SECONDS),
        "httpGet": F(HTTP_GET),
        "tcpSocket": F(Obj({"host": F(Str()), "port": F(PORT, required=True)})),
        "exec": F(Obj({"command": F(ListOf(Str(), non_empty=True), required=True)})),
        "grpc": F(Obj({"port": F(PORT, required=True), "service": F(Str())})),
    },
    oneof=[("httpGet", "tcpSocket", "exec", "grpc")],
    rules=[_one_probe],
)

WORKLOAD_GROUP = Obj(
    {
        "metadata": F(Obj({"labels": F(LABELS), "annotations": F(STR_MAP)})),
        # A template has no address: each VM fills in its own.
        "template": F(Obj(WORKLOAD_ENTRY.fields), required=True),
        "probe": F(PROBE),
    }
)

SPECS = {"Gateway": GATEWAY, "Sidecar": SIDECAR, "WorkloadGroup": WORKLOAD_GROUP}
