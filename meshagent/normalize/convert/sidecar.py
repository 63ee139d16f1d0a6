"""Sidecar to the model (meshagent.model.sidecar)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.model.labels import labels_of
from meshagent.model.services import HTTP_PROTOCOLS
from meshagent.model.sidecar import (
    EgressHost,
    EgressListener,
    EgressProxy,
    IngressListener,
    IngressTls,
    Sidecar,
    SidecarPort,
)
from meshagent.normalize.convert.context import Context, items, sub


def _port(spec: Mapping[str, Any]) -> SidecarPort:
    target = spec.get("targetPort")
    return SidecarPort(
        number=int(spec.get("number") or 0),
        protocol=str(spec.get("protocol") or "").upper(),
        name=str(spec.get("name") or ""),
        target_port=int(target) if target else None,
    )


def _egress(spec: Mapping[str, Any]) -> EgressListener:
    hosts = []
    for written in items(spec, "hosts"):
        namespace, _, host = str(written).partition("/")
        hosts.append(EgressHost(namespace, host.lower()))
    port = spec.get("port")
    return EgressListener(
        hosts=tuple(hosts),
        port=_port(port) if port is not None and port.get("number") else None,
        bind=str(spec.get("bind") or ""),
        capture_mode=str(spec.get("captureMode") or ""),
    )


def _tls(spec: Mapping[str, Any]) -> IngressTls | None:
    if not spec:
        return None
    return IngressTls(
        mode=str(spec.get("mode") or "PASSTHROUGH"),
        server_certificate=str(spec.get("serverCertificate") or ""),
        private_key=str(spec.get("privateKey") or ""),
        ca_certificates=str(spec.get("caCertificates") or ""),
        min_protocol_version=str(spec.get("minProtocolVersion") or ""),
        max_protocol_version=str(spec.get("maxProtocolVersion") or ""),
        cipher_suites=tuple(str(c) for c in items(spec, "cipherSuites")),
    )


def _ingress(spec: Mapping[str, Any]) -> IngressListener:
    return IngressListener(
        port=_port(sub(spec, "port")),
        bind=str(spec.get("bind") or ""),
        default_endpoint=str(spec.get("defaultEndpoint") or ""),
        capture_mode=str(spec.get("captureMode") or ""),
        tls=_tls(sub(spec, "tls")),
    )


def _egress_proxy(spec: Mapping[str, Any], ctx: Context) -> EgressProxy | None:
    if not spec:
        return None
    return EgressProxy(
        host=ctx.host(str(spec["host"])),
        port=int(sub(spec, "port").get("number") or 0),
        subset=str(spec.get("subset") or ""),
    )


def convert_sidecar(name: str, spec: Mapping[str, Any], ctx: Context) -> Sidecar:
    """A Sidecar spec (validated) as the model's Sidecar."""
    selector = spec.get("workloadSelector")
    policy = sub(spec, "outboundTrafficPolicy")
    return Sidecar(
        name=name,
        namespace=ctx.namespace,
        workload_selector=labels_of(sub(selector, "labels")) if selector is not None else None,
        egress=tuple(_egress(e) for e in items(spec, "egress")),
        ingress=tuple(_ingress(i) for i in items(spec, "ingress")),
        # Set without a mode: the proto's zero value, REGISTRY_ONLY (as in Istio).
        outbound_traffic_policy=str(policy.get("mode") or "REGISTRY_ONLY")
        if spec.get("outboundTrafficPolicy") is not None
        else "",
        egress_proxy=_egress_proxy(sub(policy, "egressProxy"), ctx),
        provenance=ctx.provenance,
    )


def untranslated(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field path, reason) for each valid field of a Sidecar that has no effect here."""
    out: list[tuple[str, str]] = []
    if spec.get("inboundConnectionPool"):
        out.append(("spec.inboundConnectionPool", "not translated yet: it has no effect"))
    for i, listener in enumerate(items(spec, "ingress")):
        if listener.get("connectionPool"):
            path = f"spec.ingress[{i}].connectionPool"
            out.append((path, "not translated yet: it has no effect"))
    for side in ("ingress", "egress"):
        for i, listener in enumerate(items(spec, side)):
            if listener.get("captureMode") not in (None, "DEFAULT"):
                path = f"spec.{side}[{i}].captureMode"
                out.append((path, "not translated yet: capture is the agent's `capture` setting"))
    for i, listener in enumerate(items(spec, "egress")):
        bind = str(listener.get("bind") or "")
        protocol = str(sub(listener, "port").get("protocol") or "").upper()
        if bind.startswith("unix://") or (bind and protocol not in HTTP_PROTOCOLS):
            out.append(
                (
                    f"spec.egress[{i}].bind",
                    "only HTTP egress ports get a listener on bind; its hosts are still scoped",
                )
            )
    return out
