"""The schemas of Gateway, Sidecar and WorkloadGroup (networking.istio.io).

These are validated field by field like the other kinds. Gateways become model Gateways
(normalize/convert/gateway.py); WorkloadGroup is read by WorkloadEntry auto-registration,
not by the translator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshagent.model.gateway import valid_cipher_suite
from meshagent.normalize.schema.common import (
    DESTINATION,
    DNS_LABEL,
    ISTIO_HEADER_NAME,
    LABELS,
    PORT,
    STR_MAP,
    WORKLOAD_SELECTOR,
    HostName,
    domain_problem,
    is_ip,
)
from meshagent.normalize.schema.core import Bool, Enum, F, Int, Issues, ListOf, Obj, Str, join
from meshagent.normalize.schema.destinationrule import CONNECTION_POOL
from meshagent.normalize.schema.serviceentry import PROTOCOLS
from meshagent.normalize.schema.targetref import workload_selector_rule
from meshagent.normalize.schema.workloadentry import (
    UNIX_PREFIX,
    WORKLOAD_ENTRY,
    unix_path_problem,
)

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


_TERMINATING = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")


def _server_tls_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """Istio's validateTLSOptions, with its messages."""
    mode = value.get("mode") or "PASSTHROUGH"
    certificates = value.get("tlsCertificates") or []
    ciphers = [str(c) for c in value.get("cipherSuites") or ()]
    if value.get("minProtocolVersion") in ("TLSV1_0", "TLSV1_1") and not ciphers:
        issues.warn(
            join(path, "minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they "
            "no longer include compatible ciphers.",
        )
    invalid = sorted({c for c in ciphers if not valid_cipher_suite(c)})
    if invalid:
        issues.warn(join(path, "cipherSuites"), f"ignoring invalid cipher suites: {invalid}")
    valid = [c for c in ciphers if valid_cipher_suite(c)]
    duplicate = sorted({c for i, c in enumerate(valid) if c in valid[:i]})
    if duplicate:
        issues.warn(join(path, "cipherSuites"), f"ignoring duplicate cipher suites: {duplicate}")
    if mode == "ISTIO_MUTUAL":
        for key, what in (
            ("serverCertificate", "server certificate"),
            ("privateKey", "private key"),
            ("caCertificates", "CA bundle"),
            ("tlsCertificates", "tlsCertificates"),
            ("credentialName", "credentialName"),
            ("credentialNames", "credentialNames"),
        ):
            if value.get(key):
                issues.error(join(path, key), f"ISTIO_MUTUAL TLS cannot have associated {what}")
        return
    keys = ("caCrl", "serverCertificate", "privateKey", "caCertificates", "tlsCertificates")
    if mode in ("PASSTHROUGH", "AUTO_PASSTHROUGH") and any(
        value.get(k) for k in (*keys, "credentialName", "credentialNames")
    ):
        issues.warn(path, f"{mode} mode does not use certificates, they will be ignored")
    sources = [
        bool(value.get("serverCertificate") and value.get("privateKey")),
        bool(value.get("credentialName")),
        bool(value.get("credentialNames")),
        bool(certificates),
    ]
    if sum(sources) > 1:
        issues.error(
            path,
            "only one of credential_name, credential_names, server_certificate/private_key, "
            "tls_certificates should be specified",
        )
    named = value.get("credentialName") or value.get("credentialNames")
    if mode in _TERMINATING and named:
        return  # the certificates come from the credential
    if mode in _TERMINATING:
        prefix = "SIMPLE TLS" if mode == "SIMPLE" else "MUTUAL TLS"
        if mode != "SIMPLE" and not value.get("caCertificates"):
            issues.error(join(path, "caCertificates"), f"{prefix} requires a client CA bundle")
        if len(certificates) > 2:
            issues.warn(
                join(path, "tlsCertificates"), f"{prefix} can support up to 2 server certificates"
            )
        pairs = [(join(path, f"tlsCertificates[{i}]"), c) for i, c in enumerate(certificates)]
        for where, cert in pairs or [(path, value)]:
            if not cert.get("serverCertificate"):
                issues.error(
                    join(where, "serverCertificate"), f"{prefix} requires a server certificate"
                )
            if not cert.get("privateKey"):
                issues.error(join(where, "privateKey"), f"{prefix} requires a private key")
    if value.get("caCrl"):
        if value.get("credentialName"):
            issues.error(
                join(path, "caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the "
                "credential",
            )
        if mode == "SIMPLE":
            issues.error(join(path, "caCrl"), "CRL is not supported with SIMPLE TLS")


TLS_CERTIFICATE = Obj(
    {"serverCertificate": F(Str()), "privateKey": F(Str()), "caCertificates": F(Str())}
)
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
        "tlsCertificates": F(ListOf(TLS_CERTIFICATE)),
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
        issues.error(
            join(path, "protocol"),
            f"invalid protocol {protocol!r}, supported protocols are HTTP, HTTP2, GRPC, "
            "GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
        )
    if value.get("targetPort"):
        issues.error(join(path, "targetPort"), "targetPort has no impact on Gateways")


GATEWAY_PORT = Obj(
    {
        "number": F(PORT, required=True),
        "protocol": F(Str(non_empty=True), required=True),
        "name": F(Str(), required=True),
        "targetPort": F(Int(0, 65535)),
    },
    rules=[_gateway_port_rule],
)

_HTTP_PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "GRPC-WEB")
_TLS_PROTOCOLS = ("HTTPS", "TLS")


_NAMESPACE_LABEL = re.compile(r"[a-zA-Z0-9](?:[-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?")


def gateway_host_problem(entry: str) -> str:
    """Why a server host is not one Istio accepts (its ValidateNamespaceSlashWildcardHostname
    for gateways), or "": a DNS name (`*` and `*.` prefixes allowed), or `namespace/name`
    with a namespace of `*`, `.` or a DNS label and a fully qualified name, `*` or an IP."""
    namespace, slash, name = entry.partition("/")
    if not slash:
        return domain_problem(entry)
    if not namespace or not name:
        return "config namespace and dnsName in host entry cannot be empty"
    if namespace not in ("*", ".") and not _NAMESPACE_LABEL.fullmatch(namespace):
        return f"invalid namespace value {namespace!r} in gateway"
    if name != "*" and "." not in name:
        return "short names (non FQDN) are not allowed"
    if domain_problem(name) and not is_ip(name):
        return domain_problem(name)
    return ""


def _server_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """Istio's validateServer: hosts, and TLS settings exactly where the port protocol needs
    them."""
    for i, entry in enumerate(value.get("hosts") or ()):
        if isinstance(entry, str) and (problem := gateway_host_problem(entry)):
            issues.error(f"{join(path, 'hosts')}[{i}]", problem)
    bind = value.get("bind") or ""
    if isinstance(bind, str) and bind.startswith(UNIX_PREFIX):
        # Istio's hidden unix:// binds (port 0): a router here listens on IP addresses only.
        issues.error(join(path, "bind"), "unix domain socket binds are not supported on gateways")
    elif isinstance(bind, str) and bind and not is_ip(bind):  # Istio's validateServerBind
        issues.error(join(path, "bind"), f"{bind!r} is not a valid IP address")
    protocol = str((value.get("port") or {}).get("protocol") or "").upper()
    tls = value.get("tls")
    if protocol in _TLS_PROTOCOLS and tls is None:
        issues.error(join(path, "tls"), "server must have TLS settings for HTTPS/TLS protocols")
    elif protocol not in _TLS_PROTOCOLS and tls is not None:
        plain_redirect = protocol in _HTTP_PROTOCOLS and not any(
            tls.get(k) for k in ("caCertificates", "privateKey", "serverCertificate")
        )
        if protocol not in _HTTP_PROTOCOLS:
            issues.error(
                join(path, "tls"), "server cannot have TLS settings for non HTTPS/TLS ports"
            )
        elif not plain_redirect or (tls.get("mode") or "PASSTHROUGH") != "PASSTHROUGH":
            issues.error(
                join(path, "tls"), "server cannot have TLS settings for plain text HTTP ports"
            )


SERVER = Obj(
    {
        "port": F(GATEWAY_PORT, required=True),
        "bind": F(Str()),
        "hosts": F(ListOf(Str(non_empty=True), non_empty=True), required=True),
        "tls": F(SERVER_TLS),
        "defaultEndpoint": F(Str()),
        "name": F(Str()),
    },
    rules=[_server_rule],
)


def _gateway_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    servers = value.get("servers") or []
    if not servers:
        issues.error(join(path, "servers"), "gateway must have at least one server")
    names: set[Any] = set()
    for i, server in enumerate(servers):
        port = server.get("port") or {}
        name = port.get("name")
        if name in names:
            issues.error(
                f"{join(path, 'servers')}[{i}].port.name",
                f"port names in servers must be unique: duplicate name {name}",
            )
        names.add(name)
        protocol = str(port.get("protocol") or "").upper()
        if protocol not in _HTTP_PROTOCOLS and (server.get("tls") or {}).get("httpsRedirect"):
            issues.warn(
                f"{join(path, 'servers')}[{i}].tls.httpsRedirect",
                "tls.httpsRedirect should only be used with http servers",
            )


GATEWAY = Obj({"selector": F(STR_MAP), "servers": F(ListOf(SERVER))}, rules=[_gateway_rule])

CAPTURE_MODES = ("DEFAULT", "IPTABLES", "NONE")


def _egress_hosts_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    seen: dict[str, set[str]] = {}  # Istio's duplicate checks (warnings)
    for i, host in enumerate(value.get("hosts") or ()):
        namespace, slash, name = str(host).partition("/")
        if slash:
            known = seen.setdefault(namespace, set())
            if (name in known or "*" in known) if name != "*" else known:
                issues.warn(f"{join(path, 'hosts')}[{i}]", f"duplicated egress host: {host}")
            known.add(name)
        if not slash or not namespace:
            issues.error(f"{join(path, 'hosts')}[{i}]", f"{host!r} must be namespace/dnsName")
        elif name != "*" and not name.startswith("*."):
            problems = Issues()
            HostName().check(name, f"{join(path, 'hosts')}[{i}]", problems)
            issues.extend(problems)
    if "*" in seen.get("*", ()) and len(seen) != 1:
        issues.warn(
            join(path, "hosts"), "`*/*` host select all resources, no other hosts can be added"
        )


def _sidecar_port_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    protocol = value.get("protocol")
    if protocol and protocol.upper() not in PROTOCOLS:
        issues.error(join(path, "protocol"), f"unsupported protocol: {protocol}")
    if value.get("targetPort"):
        issues.error(join(path, "targetPort"), "targetPort has no impact on Sidecars")


# istio/api SidecarPort: unlike a ServicePort, its name is optional (validated when set).
SIDECAR_PORT = Obj(
    {
        "number": F(Int(0, 65535)),
        "protocol": F(Str()),
        "name": F(Str(pattern=DNS_LABEL, what="port name")),
        "targetPort": F(Int(0, 65535)),
    },
    rules=[_sidecar_port_rule],
)


def _ingress_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    number = (value.get("port") or {}).get("number") or 0
    if not 1 <= number <= 65535:
        issues.error(join(path, "port.number"), "port number must be in range 1..65535")
    bind = value.get("bind") or ""
    if bind and not is_ip(bind):
        issues.error(join(path, "bind"), f"{bind!r} is not a valid IP address")
    endpoint = value.get("defaultEndpoint") or ""
    if endpoint and (problem := _default_endpoint_problem(endpoint)):
        issues.error(join(path, "defaultEndpoint"), problem)
    tls = value.get("tls") or {}
    for key, reason in (
        ("subjectAltNames", "sidecar: subjectAltNames is not supported in ingress tls"),
        ("httpsRedirect", "sidecar: httpsRedirect is not supported"),
        ("credentialName", "sidecar: credentialName is not currently supported"),
        ("credentialNames", "sidecar: credentialNames is not currently supported"),
        ("tlsCertificates", "sidecar: tls_certificates is not currently supported"),
    ):
        if tls.get(key):
            issues.error(join(path, f"tls.{key}"), reason)
    protocol = str((value.get("port") or {}).get("protocol") or "").upper()
    if value.get("tls") is not None and protocol not in _TLS_PROTOCOLS:
        issues.error(join(path, "tls"), "server cannot have TLS settings for non HTTPS/TLS ports")
    if tls.get("mode") in ("ISTIO_MUTUAL", "AUTO_PASSTHROUGH"):
        issues.error(
            join(path, "tls.mode"), f"cannot set mode to {tls['mode']} in sidecar ingress tls"
        )


_LOOPBACK_OR_ANY = ("", "127.0.0.1", "0.0.0.0", "::1", "::")


def _default_endpoint_problem(endpoint: str) -> str:
    """Why an ingress defaultEndpoint is not one Istio accepts, or ""."""
    if endpoint.startswith(UNIX_PREFIX):
        return unix_path_problem(endpoint[len(UNIX_PREFIX) :])
    host, colon, port = endpoint.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or host not in _LOOPBACK_OR_ANY:
        return (
            "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,"
            "[::1]:port,[::]:port,unix://filepath or unset"
        )
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"sidecar: defaultEndpoint port ({port}) is not a valid port"
    return ""


def _egress_port_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    port = value.get("port")
    if port is None:
        return
    bind = value.get("bind") or ""
    if not port.get("number"):
        if not bind.startswith(UNIX_PREFIX):
            issues.error(
                join(path, "bind"),
                "ports with 0 value must have a unix domain socket bind address",
            )
        elif problem := unix_path_problem(bind[len(UNIX_PREFIX) :]):
            issues.error(join(path, "bind"), problem)
        if value.get("captureMode") not in (None, "DEFAULT", "NONE"):
            issues.error(
                join(path, "captureMode"),
                "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
            )
    elif bind and not is_ip(bind):
        issues.error(join(path, "bind"), f"{bind!r} is not a valid IP address")


INGRESS_LISTENER = Obj(
    {
        "port": F(SIDECAR_PORT, required=True),
        "bind": F(Str()),
        "captureMode": F(Enum(CAPTURE_MODES)),
        "defaultEndpoint": F(Str()),
        "tls": F(SERVER_TLS),
        "connectionPool": F(CONNECTION_POOL),
    },
    rules=[_ingress_rule],
)
EGRESS_LISTENER = Obj(
    {
        "port": F(SIDECAR_PORT),
        "bind": F(Str()),
        "captureMode": F(Enum(CAPTURE_MODES)),
        "hosts": F(ListOf(Str(non_empty=True), non_empty=True), required=True),
    },
    rules=[_egress_hosts_rule, _egress_port_rule],
)


def _sidecar_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    keys = ("egress", "ingress", "outboundTrafficPolicy", "inboundConnectionPool")
    if not any(value.get(k) for k in keys):
        issues.error(path, "sidecar: empty configuration provided")
    numbers = [
        (listener.get("port") or {}).get("number") for listener in value.get("ingress") or ()
    ]
    for i, number in enumerate(numbers):
        if number in numbers[:i]:
            issues.error(
                f"{join(path, 'ingress')}[{i}].port.number",
                "sidecar: ports on IP bound listeners must be unique",
            )
    egress = value.get("egress") or []
    for i, listener in enumerate(egress):
        if listener.get("port") is None and i != len(egress) - 1:
            issues.error(
                f"{join(path, 'egress')}[{i}]",
                "sidecar: the egress listener with empty port should be the last listener in "
                "the list",
            )
    numbers = [(listener.get("port") or {}).get("number") for listener in egress]
    for i, number in enumerate(numbers):
        if number and number in numbers[:i]:
            issues.error(
                f"{join(path, 'egress')}[{i}].port.number",
                "sidecar: ports on IP bound listeners must be unique",
            )
    policy = value.get("outboundTrafficPolicy") or {}
    if policy.get("egressProxy") is not None:
        if policy.get("mode") != "ALLOW_ANY":
            issues.error(
                join(path, "outboundTrafficPolicy.egressProxy"),
                "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy "
                "mode",
            )
        elif policy["egressProxy"].get("port") is None:
            issues.error(
                join(path, "outboundTrafficPolicy.egressProxy.port"),
                "sidecar: egress_proxy port must be non-nil",
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
    },
    rules=[_sidecar_rule, workload_selector_rule("workloadSelector", "labels")],
)

_SECONDS = Int(0, 2**31 - 1)
_PROBE_HEADER = Str(pattern=ISTIO_HEADER_NAME, non_empty=True, what="header name")
HTTP_GET = Obj(
    {
        "path": F(Str()),
        "port": F(PORT, required=True),
        "host": F(Str()),
        "scheme": F(Enum(("HTTP", "HTTPS"))),  # Istio: httpGet.scheme must be one of them
        # Header names as Istio's ValidateHTTPHeaderName takes them.
        "httpHeaders": F(ListOf(Obj({"name": F(_PROBE_HEADER, required=True), "value": F(Str())}))),
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
