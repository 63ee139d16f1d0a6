"""Gateway (networking.istio.io) to the model's Gateway."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.model.gateway import PASSTHROUGH, Gateway, GatewayServer, ServerTls, server_host
from meshagent.model.labels import labels_of
from meshagent.normalize.convert.context import Context, items, sub


def _strings(spec: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return tuple(str(v) for v in items(spec, key))


def server_tls(spec: Mapping[str, Any]) -> ServerTls:
    """A validated ServerTLSSettings mapping as the model's ServerTls."""
    return ServerTls(
        mode=str(spec.get("mode") or PASSTHROUGH),
        https_redirect=bool(spec.get("httpsRedirect")),
        credential_name=str(spec.get("credentialName") or ""),
        credential_names=_strings(spec, "credentialNames"),
        server_certificate=str(spec.get("serverCertificate") or ""),
        private_key=str(spec.get("privateKey") or ""),
        ca_certificates=str(spec.get("caCertificates") or ""),
        ca_crl=str(spec.get("caCrl") or ""),
        subject_alt_names=_strings(spec, "subjectAltNames"),
        verify_certificate_spki=_strings(spec, "verifyCertificateSpki"),
        verify_certificate_hash=_strings(spec, "verifyCertificateHash"),
        min_protocol_version=str(spec.get("minProtocolVersion") or ""),
        max_protocol_version=str(spec.get("maxProtocolVersion") or ""),
        cipher_suites=_strings(spec, "cipherSuites"),
        certificate_files=tuple(
            (str(c.get("serverCertificate") or ""), str(c.get("privateKey") or ""))
            for c in items(spec, "tlsCertificates")
            if isinstance(c, Mapping)
        ),
    )


def _server(index: int, spec: Mapping[str, Any], namespace: str) -> GatewayServer:
    port = sub(spec, "port")
    tls = spec.get("tls")
    return GatewayServer(
        port=int(port["number"]),
        protocol=str(port["protocol"]).upper(),
        hosts=tuple(server_host(str(h), namespace) for h in items(spec, "hosts")),
        port_name=str(port.get("name") or ""),
        target_port=int(port.get("targetPort") or 0),
        bind=str(spec.get("bind") or ""),
        tls=server_tls(tls) if isinstance(tls, Mapping) else None,
        default_endpoint=str(spec.get("defaultEndpoint") or ""),
        name=str(spec.get("name") or ""),
        index=index,
    )


def convert_gateway(name: str, spec: Mapping[str, Any], ctx: Context) -> Gateway:
    """A Gateway spec (validated) as the model's Gateway."""
    return Gateway(
        namespace=ctx.namespace,
        name=name,
        servers=tuple(_server(i, s, ctx.namespace) for i, s in enumerate(items(spec, "servers"))),
        selector=labels_of(sub(spec, "selector")),
        provenance=ctx.provenance,
    )
