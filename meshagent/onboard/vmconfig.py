"""`meshagent vm configure`: the files `istioctl x workload entry configure` writes for a VM.

From a WorkloadGroup, the mesh config (the `mesh` key of istio-system/istio[-<rev>]), the mesh
root certificate and a token, it renders cluster.env, mesh.yaml, root-cert.pem, istio-token
and hosts with the same bytes istioctl writes: mesh.yaml is the mesh's defaultConfig with the
group's `proxy.istio.io/config` annotations applied and the VM's proxyMetadata added (go-yaml
v2 serialization); cluster.env is that proxyMetadata plus the VM's ports, namespace, service
and address, one `KEY='value'` per line sorted by line. `render` is pure; `write_files` does I/O.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshagent.errors import ConfigError
from meshagent.onboard import goyaml

PROXY_CONFIG_ANNOTATION = "proxy.istio.io/config"
CANONICAL_NAME, CANONICAL_REVISION = (
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
)
FILES = ("cluster.env", "mesh.yaml", "root-cert.pem", "istio-token", "hosts")
ISTIOD_PORT = 15012


@dataclass(frozen=True, slots=True)
class VmInputs:
    """Everything `render` needs; the byte strings are copied into the files as they are."""

    workload_group: Mapping[str, Any]
    mesh_config: Mapping[str, Any]
    root_cert: bytes = b""
    token: bytes = b""
    cluster_id: str = "Kubernetes"
    revision: str = ""
    internal_ip: str = ""
    external_ip: str = ""
    ingress_ip: str = ""
    istio_namespace: str = "istio-system"
    capture_dns: bool = True
    autoregister: bool = False


def is_revisioned(revision: str) -> bool:
    """Istio names revisioned control planes `istiod-<rev>`; "" and "default" are not."""
    return revision not in ("", "default")


def istiod_host(namespace: str, revision: str) -> str:
    """The istiod Service's host name for a revision."""
    name = f"istiod-{revision}" if is_revisioned(revision) else "istiod"
    return f"{name}.{namespace}.svc"


def shell_quote(value: str) -> str:
    """Istio's shell quoting of cluster.env values (its character class treats `\\w` as the
    two characters backslash and w, so nearly every value ends up single-quoted)."""
    if not value:
        return "''"
    if all(c in "\\w@%+=:,./-" for c in value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"


def go_json(value: Any) -> str:
    """Compact JSON as Go's encoding/json writes it (sorted keys, <, > and & escaped)."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def canonical_service(labels: Mapping[str, str], workload_name: str) -> tuple[str, str]:
    """Istio's canonical service name and revision from labels, else the workload name."""
    name = next(
        (labels[k] for k in (CANONICAL_NAME, "app.kubernetes.io/name", "app") if labels.get(k)),
        workload_name,
    )
    revision = next(
        (
            labels[k]
            for k in (CANONICAL_REVISION, "app.kubernetes.io/version", "version")
            if labels.get(k)
        ),
        "latest",
    )
    return name, revision


@dataclass(frozen=True, slots=True)
class _Group:
    """The parts of a WorkloadGroup that configure uses."""

    name: str
    namespace: str
    annotations: tuple[Mapping[str, Any], ...]
    labels: dict[str, str]
    template: Mapping[str, Any]
    probe: Any


def _group(wg: Mapping[str, Any]) -> _Group:
    meta = _mapping(wg.get("metadata"), "metadata")
    spec = _mapping(wg.get("spec"), "spec")
    spec_meta = _mapping(spec.get("metadata"), "spec.metadata")
    template = dict(_mapping(spec.get("template"), "spec.template"))
    template["serviceAccount"] = template.get("serviceAccount") or "default"
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name:
        raise ConfigError("is required", field="metadata.name")
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError("is required", field="metadata.namespace")
    labels = {
        str(k): str(v)
        for source in (spec_meta.get("labels"), template.get("labels"))
        for k, v in _mapping(source, "labels").items()
    }
    annotations = (
        _mapping(meta.get("annotations"), "metadata.annotations"),
        _mapping(spec_meta.get("annotations"), "spec.metadata.annotations"),
    )
    return _Group(name, namespace, annotations, labels, template, spec.get("probe"))


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError("must be a mapping", field=field)
    return value


def proxy_config(inputs: VmInputs, group: _Group) -> dict[str, Any]:
    """The VM's ProxyConfig (mesh.yaml's defaultConfig), with its proxyMetadata filled in."""
    config = dict(_mapping(inputs.mesh_config.get("defaultConfig"), "defaultConfig"))
    metadata = {str(k): str(v) for k, v in _mapping(config.get("proxyMetadata"), "").items()}
    if is_revisioned(inputs.revision) and not config.get("discoveryAddress"):
        config["discoveryAddress"] = f"{istiod_host(inputs.istio_namespace, inputs.revision)}:15012"
    for found in group.annotations:
        if PROXY_CONFIG_ANNOTATION in found:
            overlay = _annotation(found[PROXY_CONFIG_ANNOTATION])
            config.update(overlay)  # top-level fields replace; proxyMetadata merges below
            metadata.update({str(k): str(v) for k, v in overlay.get("proxyMetadata", {}).items()})
    if group.probe:
        config["readinessProbe"] = group.probe
    else:
        config.pop("readinessProbe", None)
    config["proxyMetadata"] = metadata
    metadata.update(_vm_metadata(inputs, group, config))
    return config


def _annotation(text: Any) -> dict[str, Any]:
    try:
        value = yaml.safe_load(str(text)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not YAML: {exc}", field=PROXY_CONFIG_ANNOTATION) from None
    if not isinstance(value, dict) or not isinstance(value.get("proxyMetadata", {}), dict):
        raise ConfigError("must be a ProxyConfig mapping", field=PROXY_CONFIG_ANNOTATION)
    return value


def _vm_metadata(inputs: VmInputs, group: _Group, config: Mapping[str, Any]) -> dict[str, str]:
    template = group.template
    service, revision = canonical_service(group.labels, group.name)
    labels = {**group.labels, CANONICAL_NAME: service, CANONICAL_REVISION: revision}
    md = {
        "CANONICAL_SERVICE": service,
        "CANONICAL_REVISION": revision,
        "POD_NAMESPACE": group.namespace,
        "SERVICE_ACCOUNT": str(template["serviceAccount"]),
        "TRUST_DOMAIN": str(inputs.mesh_config.get("trustDomain") or ""),
        "ISTIO_META_CLUSTER_ID": inputs.cluster_id,
        "ISTIO_META_MESH_ID": str(config.get("meshId") or ""),
        "ISTIO_META_NETWORK": str(template.get("network") or ""),
        "ISTIO_META_WORKLOAD_NAME": group.name,
        "ISTIO_METAJSON_LABELS": go_json(labels),
    }
    ports = _mapping(template.get("ports"), "spec.template.ports")
    if ports:
        md["ISTIO_META_POD_PORTS"] = go_json(
            [{"name": n, "containerPort": int(p)} for n, p in sorted(ports.items())]
        )
    if inputs.capture_dns:
        md["ISTIO_META_DNS_CAPTURE"] = "true"
    if inputs.autoregister:
        md["ISTIO_META_AUTO_REGISTER_GROUP"] = group.name
    return md


def cluster_env(inputs: VmInputs, group: _Group, config: Mapping[str, Any]) -> str:
    """cluster.env: the proxyMetadata, then the VM-specific values over it."""
    ports = _mapping(group.template.get("ports"), "spec.template.ports")
    status_port = int(config.get("statusPort") or 0)
    exclude = "22,15090,15021"
    if status_port not in (15090, 15021):
        exclude += f",{status_port or 15020}"
    env = dict(config.get("proxyMetadata", {}))
    env.update(
        {
            "ISTIO_INBOUND_PORTS": ",".join(str(p) for _, p in sorted(ports.items())) or "*",
            "ISTIO_NAMESPACE": group.namespace,
            "ISTIO_SERVICE": f"{group.name}.{group.namespace}",
            "ISTIO_SERVICE_CIDR": "*",
            "ISTIO_LOCAL_EXCLUDE_PORTS": exclude,
            "SERVICE_ACCOUNT": str(group.template["serviceAccount"]),
        }
    )
    if is_revisioned(inputs.revision):
        env["CA_ADDR"] = f"{istiod_host(inputs.istio_namespace, inputs.revision)}:{ISTIOD_PORT}"
    if inputs.internal_ip:
        env["ISTIO_SVC_IP"] = inputs.internal_ip
    elif inputs.external_ip:
        env["ISTIO_SVC_IP"] = inputs.external_ip
        env["REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION"] = "true"
    lines = sorted(f"{k}={shell_quote(str(v))}" for k, v in env.items())
    return "\n".join(lines) + "\n"


def hosts_file(inputs: VmInputs) -> str:
    """`<ingress IP> <istiod host>`, or nothing when the ingress IP is not an IP address."""
    try:
        ipaddress.ip_address(inputs.ingress_ip)
    except ValueError:
        return ""
    return f"{inputs.ingress_ip} {istiod_host(inputs.istio_namespace, inputs.revision)}\n"


def render(inputs: VmInputs) -> dict[str, bytes]:
    """The five files, by name; ConfigError (with the field) for a malformed WorkloadGroup."""
    if inputs.internal_ip and inputs.external_ip:
        raise ConfigError("--internal-ip and --external-ip are mutually exclusive")
    group = _group(inputs.workload_group)
    config = proxy_config(inputs, group)
    return {
        "cluster.env": cluster_env(inputs, group, config).encode(),
        "mesh.yaml": goyaml.dump({"defaultConfig": config}).encode(),
        "root-cert.pem": inputs.root_cert,
        "istio-token": inputs.token,
        "hosts": hosts_file(inputs).encode(),
    }


def write_files(files: Mapping[str, bytes], out_dir: Path) -> None:
    """Write the files into out_dir (created); the token is readable by its owner only."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = out_dir / name
        path.write_bytes(data)
        path.chmod(0o600 if name == "istio-token" else 0o644)
