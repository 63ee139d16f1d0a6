"""The `join:` section of the agent config: join an Istio mesh from a join directory.

`apply_join` (core.py) turns the directory's facts into the settings the rest of the agent already
understands: `ca` in upstream mode (the mesh CA's address, istio-token, root-cert.pem; the trust
domain from cluster.env), one workload with the VM's namespace, service account, labels and
ports, the node's namespace, and its locality (from the `topology.istio.io/locality` or
`istio-locality` label). Explicit `ca:`, `workloads:` or `node.locality` keys win over the
derived ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from meshagent.agent.config.section import Section, duration_ms, ip, is_locality, resolve_path
from meshagent.ca.settings import CaConfig, CaUpstreamConfig
from meshagent.errors import ConfigError
from meshagent.model.proxy import InboundPort, LocalWorkload
from meshagent.model.services import KNOWN_PROTOCOLS
from meshagent.onboard.joindir import JoinInfo, read_join_dir

KEYS = ("dir", "workload_group", "cleanup_grace", "address", "ca_address", "kubernetes")


@dataclass(frozen=True, slots=True)
class KubeApiConfig:
    """Where the Kubernetes API is, for WorkloadEntry registration."""

    server: str = ""
    token_file: Path | None = None
    ca_file: Path | None = None
    kubeconfig: Path | None = None


@dataclass(frozen=True, slots=True)
class JoinConfig:
    """`join:` after loading: the settings plus what the join directory says."""

    info: JoinInfo
    workload_group: str = ""  # "" = no auto-registration
    cleanup_grace_s: float = 10.0
    address: str = ""  # the VM's IP in its WorkloadEntry
    kubernetes: KubeApiConfig | None = None


def parse_join(s: Section, base: Path) -> JoinConfig:
    """Read `join:` and its directory; ConfigError with file:line and field when wrong."""
    s.only(*KEYS)
    directory = resolve_path(base, s.get("dir", str, "/etc/istio-join"))
    try:
        info = read_join_dir(directory)
    except ConfigError as exc:
        raise s.error(str(exc), "dir") from None
    override = s.opt("ca_address", str)
    if override:
        info = dataclasses.replace(info, ca_address=override, ca_dial=override)
    grace_ms = duration_ms(s, "cleanup_grace", "10s", 0)
    address = s.opt("address", str) or info.address
    return JoinConfig(
        info=info,
        workload_group=s.get("workload_group", str, info.auto_register_group),
        cleanup_grace_s=grace_ms / 1000.0,
        address=ip(s, "address", address) if address else "",
        kubernetes=_kube(s.section("kubernetes"), base) if s.data.get("kubernetes") else None,
    )


def _kube(s: Section, base: Path) -> KubeApiConfig:

    s.only("server", "token_file", "ca_file", "kubeconfig")
    paths = {k: s.opt(k, str) for k in ("token_file", "ca_file", "kubeconfig")}
    if not s.opt("server", str) and not paths["kubeconfig"]:
        raise s.error("needs server (with token_file) or kubeconfig", "server")
    return KubeApiConfig(
        server=s.get("server", str, ""),
        **{k: resolve_path(base, v) if v else None for k, v in paths.items()},
    )


def join_workload(info: JoinInfo) -> LocalWorkload:
    """The VM's workload: identity, labels and ports from cluster.env."""
    ports = tuple(
        InboundPort(port=p, target_port=p, protocol=_protocol(name), name=name)
        for name, p in info.ports
    )
    return LocalWorkload(
        name=info.workload_name or info.service_account,
        namespace=info.namespace,
        service_account=info.service_account,
        labels=info.labels,
        ports=ports,
    )


# Labels that carry a workload's locality in Istio, first wins; label values cannot hold "/",
# so the parts are joined by "." there ("region.zone.subzone").
LOCALITY_LABELS = ("topology.istio.io/locality", "istio-locality")


def join_locality(info: JoinInfo) -> str:
    """The VM's locality from its join labels ("" when none, or not a valid locality)."""

    labels = dict(info.labels)
    for key in LOCALITY_LABELS:
        value = labels.get(key, "").replace(".", "/")
        if value:
            return value if is_locality(value) else ""
    return ""


def _protocol(port_name: str) -> str:
    """Istio's protocol selection by port name (`http`, `grpc-web`, `tcp-db`, ...); "" (sniffed
    from the first bytes, as Istio does) for a name that names no protocol."""
    name = port_name.upper()
    for protocol in sorted(KNOWN_PROTOCOLS, key=len, reverse=True):  # GRPC-WEB before GRPC
        if name == protocol or name.startswith(protocol + "-"):
            return protocol
    return ""


def join_ca(info: JoinInfo, state_dir: Path) -> CaConfig:
    """Upstream mode against the mesh CA: the token and root from the join directory."""
    dialled_elsewhere = info.ca_dial != info.ca_address
    return CaConfig(
        mode="upstream",
        dir=state_dir / "ca",
        trust_domain=info.trust_domain,
        upstream=CaUpstreamConfig(
            address=info.ca_dial,
            token_file=info.token_file,
            root_cert=info.root_cert,
            server_name=info.ca_host if dialled_elsewhere else None,
        ),
    )
