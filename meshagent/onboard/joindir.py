"""The join directory: what `istioctl x workload entry configure` (or `meshagent vm configure`)
wrote for this VM, read into one frozen JoinInfo.

cluster.env gives the namespace, service account, network, cluster ID, workload name, labels,
ports and (for revisioned control planes) CA_ADDR; mesh.yaml's defaultConfig gives the
discoveryAddress (the CA address otherwise) and the proxyMetadata; root-cert.pem is the mesh's
root, istio-token the credential for CreateCertificate, and hosts maps istiod's name to the
address that reaches it (the east-west gateway), as /etc/hosts would on an Istio VM.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshagent.errors import ConfigError
from meshagent.model.identity import Identity, config_identity

DEFAULT_CA_ADDRESS = "istiod.istio-system.svc:15012"


@dataclass(frozen=True, slots=True)
class JoinInfo:
    """The VM's place in the mesh, as its join directory describes it."""

    dir: Path
    namespace: str
    service_account: str
    trust_domain: str
    cluster_id: str
    network: str
    workload_name: str
    ca_address: str  # host:port as named by the mesh (e.g. istiod-rev-1.istio-system.svc:15012)
    ca_dial: str  # host:port actually dialled (the hosts file's address for that host)
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, int], ...] = ()  # (name, port); names may be "" from INBOUND_PORTS
    address: str = ""  # ISTIO_SVC_IP
    auto_register_group: str = ""
    mesh_id: str = ""

    @property
    def root_cert(self) -> Path:
        """The mesh root certificate (PEM)."""
        return self.dir / "root-cert.pem"

    @property
    def token_file(self) -> Path:
        """The token sent to the mesh CA."""
        return self.dir / "istio-token"

    @property
    def ca_host(self) -> str:
        """The CA's host name, which its TLS certificate must name."""
        return self.ca_address.rpartition(":")[0].strip("[]")


def parse_cluster_env(text: str, location: str) -> dict[str, str]:
    """KEY=value lines with shell quoting (as Istio writes them); # comments and blanks skipped."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, raw = line.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            raise ConfigError("expected KEY=value", location=f"{location}:{number}")
        try:
            env[key] = "".join(shlex.split(raw))
        except ValueError as exc:
            raise ConfigError(f"bad quoting: {exc}", location=f"{location}:{number}") from None
    return env


def parse_hosts(text: str) -> dict[str, str]:
    """host name -> address from /etc/hosts-style lines (the first address of a name wins)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or not _is_ip(fields[0]):
            continue
        for name in fields[1:]:
            found.setdefault(name, fields[0])
    return found


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _read(path: Path, *, required: bool = True) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError("is missing from the join directory", location=str(path)) from None
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", location=str(path)) from None


def _proxy_config(path: Path) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(_read(path, required=False)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", location=str(path)) from None
    config = data.get("defaultConfig") if isinstance(data, dict) else None
    return config if isinstance(config, dict) else {}


def _labels(env: Mapping[str, str], location: str) -> tuple[tuple[str, str], ...]:
    try:
        labels = json.loads(env.get("ISTIO_METAJSON_LABELS") or "{}")
    except json.JSONDecodeError:
        raise ConfigError("is not JSON", location=location, field="ISTIO_METAJSON_LABELS") from None
    if not isinstance(labels, dict):
        raise ConfigError("must be a JSON object", location=location, field="ISTIO_METAJSON_LABELS")
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def _ports(env: Mapping[str, str], location: str) -> tuple[tuple[str, int], ...]:
    """Named ports from ISTIO_META_POD_PORTS, else the numbers of ISTIO_INBOUND_PORTS."""
    try:
        if env.get("ISTIO_META_POD_PORTS"):
            pod_ports = json.loads(env["ISTIO_META_POD_PORTS"])
            return tuple((str(p.get("name", "")), int(p["containerPort"])) for p in pod_ports)
        inbound = env.get("ISTIO_INBOUND_PORTS", "*")
        if inbound in ("*", ""):
            return ()
        return tuple(("", int(p)) for p in inbound.split(",") if p.strip())
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ConfigError("bad port list", location=location, field="ports") from None


def _identity(meta: Mapping[str, str], namespace: str, location: str) -> Identity:
    """The VM's identity from cluster.env; ConfigError naming the variable when invalid."""
    namespace_key = "POD_NAMESPACE" if meta.get("POD_NAMESPACE") else "ISTIO_NAMESPACE"
    return config_identity(
        meta.get("TRUST_DOMAIN") or "cluster.local",
        namespace,
        meta.get("SERVICE_ACCOUNT") or "default",
        fields={
            "trust_domain": "TRUST_DOMAIN",
            "namespace": namespace_key,
            "service_account": "SERVICE_ACCOUNT",
        },
        location=location,
    )


def read_join_dir(directory: Path) -> JoinInfo:
    """Read the join directory; ConfigError naming the file when something is missing or wrong."""
    env_path = directory / "cluster.env"
    env = parse_cluster_env(_read(env_path), str(env_path))
    proxy = _proxy_config(directory / "mesh.yaml")
    meta = {**(proxy.get("proxyMetadata") or {}), **env}  # cluster.env wins, as on the VM
    for needed in ("root-cert.pem", "istio-token"):
        path = directory / needed
        if not path.is_file():
            raise ConfigError("is missing from the join directory", location=str(path))
    namespace = meta.get("POD_NAMESPACE") or meta.get("ISTIO_NAMESPACE") or ""
    if not namespace:
        raise ConfigError("POD_NAMESPACE is not set", location=str(env_path))
    identity = _identity(meta, namespace, str(env_path))
    ca_address = meta.get("CA_ADDR") or proxy.get("discoveryAddress") or DEFAULT_CA_ADDRESS
    host, _, port = str(ca_address).rpartition(":")
    hosts = parse_hosts(_read(directory / "hosts", required=False))
    dial = f"{hosts[host]}:{port}" if host in hosts else str(ca_address)
    return JoinInfo(
        dir=directory,
        namespace=identity.namespace,
        service_account=identity.service_account,
        trust_domain=identity.trust_domain,
        cluster_id=meta.get("ISTIO_META_CLUSTER_ID") or "Kubernetes",
        network=meta.get("ISTIO_META_NETWORK", ""),
        workload_name=meta.get("ISTIO_META_WORKLOAD_NAME") or meta.get("CANONICAL_SERVICE", ""),
        ca_address=str(ca_address),
        ca_dial=dial,
        labels=_labels(meta, str(env_path)),
        ports=_ports(meta, str(env_path)),
        address=meta.get("ISTIO_SVC_IP", ""),
        auto_register_group=meta.get("ISTIO_META_AUTO_REGISTER_GROUP", ""),
        mesh_id=meta.get("ISTIO_META_MESH_ID", ""),
    )
