"""The agent's own configuration file (YAML), read into frozen dataclasses: the whole
`AgentConfig`, how a file becomes one, and the agent's own keys (the table below). Each other
section has its module in this package (dns.py, metrics.py, ca.py, ...); all of them read the
file through section.py.

Every key is optional; unknown keys are errors, reported with file:line and the field path.
The file is read by the mesh files' YAML loader (adapters/yamldocs.py): a duplicate key is an
error. Every duration key goes through `duration_ms` (the grammar of meshagent/durations.py).
Relative paths (`sources.files.paths`, `state_dir`, `xds.uds`, `envoy.binary` when it has a
slash) are relative to the directory of the config file.

| key | default | meaning |
|---|---|---|
| `node.id` | the host name | Envoy node id of the local proxy; the xDS cache is keyed by it |
| `node.cluster` | `meshagent` | Envoy node cluster (`--service-cluster`) |
| `node.namespace` | `default` | this host's namespace; default for resources without one |
| `node.locality` | `""` | this host's `region/zone/subzone` (zone, subzone optional): locality LB |
| `node.type` | `sidecar` | `sidecar`, or `router`: a gateway that serves the matching Gateways |
| `node.labels` | `{}` | proxy labels that `Gateway.selector` matches (`ISTIO_METAJSON_LABELS`) |
| `domain_suffix` | `cluster.local` | suffix of short host names (`<name>.<ns>.svc.<suffix>`) |
| `sources.files.paths` | `[mesh/]` | YAML files and directories (recursive); `null` files: off |
| `sources.files.debounce_ms` | `100` | quiet time before a burst of file writes is applied |
| `sources.files.poll_interval_ms` | `200` | how often the files are checked for changes |
| `xds.uds` | `<state_dir>/xds.sock` | Unix socket the ADS server listens on (Envoy connects here) |
| `xds.tcp` | `null` | also listen on TCP, e.g. `127.0.0.1:15010` (never serves secrets) |
| `xds.allow_remote` | `false` | `true` allows a non-loopback `xds.tcp` address |
| `xds.delta` | `true` | bootstrap uses `DELTA_GRPC`; `false` uses state-of-the-world `GRPC` |
| `admin.address` | `127.0.0.1` | agent admin HTTP on TCP: /healthz /readyz /metrics only |
| `admin.port` | `15020` | its port; `0` picks a free one |
| `admin.socket` | `<state_dir>/admin.sock` | the full admin API (debug pages, actions), mode 0660 |
| `admin.allow_remote` | `false` | `true` allows a non-loopback `admin.address` |
| `envoy.*` | unmanaged | the local Envoy and its bootstrap (agent/config/envoy.py) |
| `outbound.address` | `127.0.0.1` | address of the outbound listeners applications call |
| `outbound.port_offset` | `0` | outbound HTTP listener port = service port + offset |
| `outbound.ports` | `{}` | per service port overrides, e.g. `{9080: 19080}` |
| `outbound.tcp` | `[]` | TCP services: `[{host: db, port: 3306, listen: "127.0.0.1:13306"}]` |
| `capture.enabled` | `false` | traffic reaches Envoy by capture: virtualOutbound/virtualInbound |
| `capture.outbound_port` | `15001` | virtualOutbound's port (istio-iptables `-p`) |
| `capture.inbound_port` | `15006` | virtualInbound's port (istio-iptables `-z`) |
| `outbound_traffic_policy.mode` | `ALLOW_ANY` | unknown destinations: pass, or `REGISTRY_ONLY` |
| `state_dir` | `/var/lib/meshagent` | socket, bootstrap, `agent.lock` (one agent per dir) |
| `log.level` | `info` | `debug`, `info`, `warning`, `error` |
| `log.format` | `auto` | `console`, `json`, or `auto` (console on a TTY, JSON otherwise) |
| `dns.*` | off | the DNS proxy (agent/config/dns.py) |
| `metrics.*` | merged | `/stats/prometheus` on the admin port (agent/config/metrics.py) |
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshagent.agent.config.ca import identity_name, parse_ca
from meshagent.agent.config.capture import (
    CaptureConfig,
    parse_capture,
    parse_outbound_traffic_policy,
)
from meshagent.agent.config.dns import DnsConfig, parse_dns
from meshagent.agent.config.envoy import EnvoyConfig, parse_envoy
from meshagent.agent.config.metrics import MetricsConfig, check_metrics, parse_metrics
from meshagent.agent.config.network import parse_networks
from meshagent.agent.config.section import (
    Section,
    bounded,
    duration_ms,
    host_port,
    hostname,
    ip,
    is_locality,
    is_port,
    loopback_unless_allowed,
    resolve_path,
)
from meshagent.agent.config.telemetry import parse_default_providers, parse_telemetry_providers
from meshagent.ca.settings import CaConfig
from meshagent.errors import ConfigError
from meshagent.model.proxy import (
    ALLOW_ANY,
    DEFAULT_ISTIO_VERSION,
    PROXY_TYPES,
    SIDECAR,
    ExtAuthzProvider,
    InboundPort,
    LocalWorkload,
    ProxySpec,
    TcpBinding,
    is_istio_version,
)
from meshagent.model.services import KNOWN_PROTOCOLS
from meshagent.model.telemetry import BUILTIN_FILE_PROVIDER, TelemetryProvider

# consul.py, kube.py, authz.py and join.py are imported where their keys are read: they pull in
# the Consul and Kubernetes adapters, Envoy's protos, the join directory reader (0.15 s for
# Consul's), which a config without those keys never needs.
if TYPE_CHECKING:
    from meshagent.agent.config.consul import ConsulSourceConfig
    from meshagent.agent.config.join import JoinConfig
    from meshagent.agent.config.kube import KubeSourceConfig

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "console", "json")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The local Envoy's identity in xDS."""

    id: str
    cluster: str = "meshagent"
    namespace: str = "default"
    locality: str = ""  # "region/zone/subzone"; "" = unknown (joined: from the join labels)
    type: str = SIDECAR  # SIDECAR or ROUTER (a gateway)
    labels: tuple[tuple[str, str], ...] = ()  # sorted; Gateway selectors match them
    istio_version: str = DEFAULT_ISTIO_VERSION  # reported to EnvoyFilter proxyVersion matches


@dataclass(frozen=True, slots=True)
class FilesSourceConfig:
    """The files adapter: absolute paths after loading."""

    paths: tuple[Path, ...]
    debounce_ms: int = 100
    poll_interval_ms: int = 200
    missing_ok: bool = False  # the default paths (not configured) need not exist


@dataclass(frozen=True, slots=True)
class CredentialsSourceConfig:
    """The credentials adapter (adapters/credentials.py): directories of credential
    directories; namespace None: the node's namespace."""

    paths: tuple[Path, ...]
    namespace: str | None = None
    debounce_ms: int = 100
    poll_interval_ms: int = 200


@dataclass(frozen=True, slots=True)
class SourcesConfig:
    """Configured adapters; None means that adapter is off."""

    files: FilesSourceConfig | None
    credentials: CredentialsSourceConfig | None = None  # sources.credentials
    consul: ConsulSourceConfig | None = None  # sources.consul (agent/config/consul.py)
    kubernetes: KubeSourceConfig | None = None  # sources.kubernetes (agent/config/kube.py)


@dataclass(frozen=True, slots=True)
class XdsConfig:
    """Where the ADS server listens and which protocol the bootstrap asks for."""

    uds: Path
    tcp: tuple[str, int] | None = None
    delta: bool = True
    allow_remote: bool = False


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The agent's admin HTTP listeners: public pages on TCP, everything on the Unix socket."""

    address: str = "127.0.0.1"
    port: int = 15020
    socket: Path = Path("/var/lib/meshagent/admin.sock")
    allow_remote: bool = False


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """How local applications reach mesh services through Envoy."""

    address: str = "127.0.0.1"
    port_offset: int = 0
    ports: tuple[tuple[int, int], ...] = ()
    tcp: tuple[TcpBinding, ...] = ()


@dataclass(frozen=True, slots=True)
class LogConfig:
    """The agent's own logs."""

    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The whole agent configuration; `path` is the file it came from (None when built in code)."""

    node: NodeConfig
    sources: SourcesConfig
    xds: XdsConfig
    state_dir: Path
    domain_suffix: str = "cluster.local"
    admin: AdminConfig = field(default_factory=AdminConfig)
    envoy: EnvoyConfig = field(default_factory=EnvoyConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: Path | None = None
    ca: CaConfig | None = None
    workloads: tuple[LocalWorkload, ...] = ()
    inbound_address: str = "0.0.0.0"  # `inbound.address`: where mesh traffic arrives
    root_namespace: str = "istio-system"  # security policies here without selector: mesh-wide
    join: JoinConfig | None = None  # `join:` (agent/config/join.py): joined an Istio mesh
    network: str = ""  # `network`: this host's network (agent/config/network.py)
    networks: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()  # east-west gateways
    # `extension_providers` (agent/config/authz.py): CUSTOM AuthorizationPolicy authorizers
    extension_providers: tuple[ExtAuthzProvider, ...] = ()
    trust_domain_aliases: tuple[str, ...] = ()  # `trust_domain_aliases` (config/authz.py)
    # Access log and tracing providers of `extension_providers`, and `default_providers`
    # (agent/config/telemetry.py): what Telemetry resources name.
    telemetry_providers: tuple[TelemetryProvider, ...] = ()
    default_access_logging: tuple[str, ...] = ()
    default_tracing: tuple[str, ...] = ()
    # `capture`, `outbound_traffic_policy` (agent/config/capture.py): transparent mode
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    outbound_traffic_policy: str = ALLOW_ANY
    dns: DnsConfig = field(default_factory=DnsConfig)  # `dns:` (agent/config/dns.py)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # agent/config/metrics.py

    def proxy_spec(self) -> ProxySpec:
        """What the translator needs to know about the local Envoy."""
        return ProxySpec(
            node_id=self.node.id,
            cluster=self.node.cluster,
            namespace=self.node.namespace,
            outbound_address=self.outbound.address,
            port_offset=self.outbound.port_offset,
            port_overrides=self.outbound.ports,
            tcp_bindings=self.outbound.tcp,
            trust_domain=self.ca.trust_domain if self.ca else "cluster.local",
            workloads=self.workloads,
            inbound_address=self.inbound_address,
            root_namespace=self.root_namespace,
            network=self.network,
            network_gateways=self.networks,
            extension_providers=self.extension_providers,
            trust_domain_aliases=self.trust_domain_aliases,
            telemetry_providers=self.telemetry_providers,
            default_access_logging=self.default_access_logging,
            default_tracing=self.default_tracing,
            locality=self.node.locality,
            capture=self.capture.enabled,
            virtual_outbound_port=self.capture.outbound_port,
            virtual_inbound_port=self.capture.inbound_port,
            outbound_traffic_policy=self.outbound_traffic_policy,
            proxy_type=self.node.type,
            labels=self.node.labels,
            istio_version=self.node.istio_version,
        )


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the config file; ConfigError (with file:line) when it is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", location=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("config is not UTF-8 text", location=str(path)) from exc
    return parse_config(text, path)


def parse_config(text: str, path: str | Path) -> AgentConfig:
    """Validate config text; relative paths resolve against path's directory."""
    path = Path(path).absolute()
    data, lines = _parse_yaml(text, str(path))
    root = Section(data, "", lines, str(path))
    return _build(root, path.parent, path)


def default_config(base_dir: Path) -> AgentConfig:
    """The configuration of an empty file in base_dir."""
    return _build(Section({}, "", {}, str(base_dir / "<defaults>")), base_dir, None)


# --- YAML with line numbers -------------------------------------------------------------


def _parse_yaml(text: str, filename: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The config's data and the line of each dotted field path; read by the loader of mesh
    files (adapters/yamldocs.py), so a duplicate key is an error here too."""
    from meshagent.adapters.yamldocs import load_mapping

    return load_mapping(text, filename)


# --- sections ---------------------------------------------------------------------------


def _build(root: Section, base: Path, path: Path | None) -> AgentConfig:
    root.only(
        "node",
        "domain_suffix",
        "sources",
        "xds",
        "admin",
        "envoy",
        "outbound",
        "state_dir",
        "log",
        "ca",
        "workloads",
        "inbound",
        "root_namespace",
        "join",
        "network",
        "networks",
        "extension_providers",
        "trust_domain_aliases",
        "default_providers",
        "capture",
        "outbound_traffic_policy",
        "dns",
        "metrics",
    )
    state_dir = resolve_path(base, root.get("state_dir", str, "/var/lib/meshagent"))
    config = AgentConfig(
        node=_node(root.section("node")),
        domain_suffix=hostname(root, "domain_suffix", "cluster.local"),
        sources=_sources(root.section("sources"), base),
        xds=_xds(root.section("xds"), base, state_dir),
        admin=_admin(root.section("admin"), base, state_dir),
        envoy=parse_envoy(root.section("envoy"), base),
        outbound=_outbound(root.section("outbound")),
        state_dir=state_dir,
        log=_log(root.section("log")),
        path=path,
        ca=_ca(root, base, state_dir),
        workloads=tuple(
            _workload(root, i, item) for i, item in enumerate(root.get("workloads", list, []))
        ),
        inbound_address=_inbound(root),
        root_namespace=hostname(root, "root_namespace", "istio-system"),
        network=root.get("network", str, ""),
        networks=_networks(root),
        extension_providers=_extension_providers(root),
        trust_domain_aliases=_trust_domain_aliases(root),
        **_telemetry(root, base),
        capture=parse_capture(root.section("capture")),
        outbound_traffic_policy=parse_outbound_traffic_policy(
            root.section("outbound_traffic_policy")
        ),
        dns=_dns(root, base),
        metrics=parse_metrics(root.section("metrics")),
    )
    admin, envoy = config.admin, config.envoy
    check_metrics(
        root.section("metrics"),
        config.metrics.app,
        (
            (admin.address, admin.port, "the agent's admin port (the merged endpoint)"),
            (envoy.admin_address, envoy.admin_port, "Envoy's admin port (merged already)"),
        ),
    )
    if root.data.get("join") is None:
        return config
    from meshagent.agent.config.join import parse_join

    return apply_join(config, parse_join(root.section("join"), base))


def apply_join(config: AgentConfig, join: JoinConfig) -> AgentConfig:
    """config with the join directory's CA, workload and namespace filled in."""
    from meshagent.agent.config.join import join_ca, join_locality, join_workload

    info = join.info
    node = config.node
    if node.namespace == "default":
        node = dataclasses.replace(node, namespace=info.namespace)
    if not node.locality:
        node = dataclasses.replace(node, locality=join_locality(info))
    return dataclasses.replace(
        config,
        node=node,
        network=config.network or info.network,
        ca=config.ca or join_ca(info, config.state_dir),
        workloads=config.workloads or (join_workload(info),),
        join=join,
    )


def join_from_dir(config: AgentConfig, directory: Path) -> AgentConfig:
    """`meshagent run --join DIR`: config joined through DIR (keeping its other join settings)."""
    from meshagent.agent.config.join import JoinConfig
    from meshagent.onboard.joindir import read_join_dir

    info = read_join_dir(directory.absolute())
    if config.join is not None:
        join = dataclasses.replace(config.join, info=info)
    else:
        join = JoinConfig(info=info, workload_group=info.auto_register_group, address=info.address)
    return apply_join(config, join)


def _ca(root: Section, base: Path, state_dir: Path) -> CaConfig | None:
    if root.data.get("ca") is None:
        return None
    return parse_ca(root.section("ca"), base, state_dir)


def _networks(root: Section) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
    return parse_networks(root.section("networks")) if root.data.get("networks") else ()


def _extension_providers(root: Section) -> tuple[ExtAuthzProvider, ...]:
    from meshagent.agent.config.authz import parse_extension_providers

    return parse_extension_providers(root)


def _telemetry(root: Section, base: Path) -> dict[str, Any]:
    providers = parse_telemetry_providers(root, base)
    logging, tracing = parse_default_providers(root)
    known = {p.name.lower() for p in providers} | {BUILTIN_FILE_PROVIDER}
    section = root.section("default_providers")
    for key, names in (("access_logging", logging), ("tracing", tracing)):
        missing = [n for n in names if n.lower() not in known]
        if missing:
            raise section.error(f"provider {missing[0]!r} is not in extension_providers", key)
    return {
        "telemetry_providers": providers,
        "default_access_logging": logging,
        "default_tracing": tracing,
    }


def _dns(root: Section, base: Path) -> DnsConfig:
    return parse_dns(root.section("dns"), base)


def _trust_domain_aliases(root: Section) -> tuple[str, ...]:
    from meshagent.agent.config.authz import parse_trust_domain_aliases

    return parse_trust_domain_aliases(root)


def _inbound(root: Section) -> str:
    """`inbound.address`; also checks that no two workload ports share an inbound port (one
    listener each). Runs after `workloads` parsed, so their shape is known to be right."""
    seen: set[int] = set()
    for i, workload in enumerate(root.data.get("workloads") or ()):
        for j, port in enumerate(workload.get("ports") or ()):
            if port["port"] in seen:
                raise root.error(
                    "inbound port already used by another workload port",
                    f"workloads[{i}].ports[{j}].port",
                )
            seen.add(port["port"])
    s = root.section("inbound")
    s.only("address")
    return ip(s, "address", s.get("address", str, "0.0.0.0"))


def _node(s: Section) -> NodeConfig:
    s.only("id", "cluster", "namespace", "locality", "type", "labels", "istio_version")
    labels = s.get("labels", dict, {})
    if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in labels.items()):
        raise s.error("must map non-empty strings to strings", "labels")
    version = s.get("istio_version", str, DEFAULT_ISTIO_VERSION)
    if not is_istio_version(version):
        raise s.error('must be an Istio version such as "1.28.0"', "istio_version")
    return NodeConfig(
        id=hostname(s, "id", socket.gethostname() or "localhost"),
        cluster=hostname(s, "cluster", "meshagent"),
        namespace=hostname(s, "namespace", "default"),
        locality=_locality(s, "locality"),
        type=s.choice("type", SIDECAR, PROXY_TYPES),
        labels=tuple(sorted(labels.items())),
        istio_version=version,
    )


def _locality(s: Section, key: str) -> str:
    """A locality "region/zone/subzone" (zone and subzone may be omitted), or ""."""
    value = s.get(key, str, "")
    if value and not is_locality(value):
        raise s.error('must be "region", "region/zone" or "region/zone/subzone"', key)
    return value


def _sources(s: Section, base: Path) -> SourcesConfig:
    s.only("files", "consul", "kubernetes", "credentials")
    consul = kubernetes = None
    credentials = _credentials(s, base) if s.data.get("credentials") is not None else None
    if s.data.get("consul") is not None:
        from meshagent.agent.config.consul import parse_consul

        consul = parse_consul(s.section("consul"), base)
    if s.data.get("kubernetes") is not None:
        from meshagent.agent.config.kube import parse_kubernetes

        kubernetes = parse_kubernetes(s.section("kubernetes"), base)
    if "files" in s.data and s.data["files"] is None:
        return SourcesConfig(None, credentials, consul=consul, kubernetes=kubernetes)
    f = s.section("files")
    f.only("paths", "debounce_ms", "poll_interval_ms")
    raw_paths = f.get("paths", list, ["mesh/"])
    for i, item in enumerate(raw_paths):
        if not isinstance(item, str) or not item:
            raise f.error("must be a non-empty path", f"paths[{i}]")
    return SourcesConfig(
        files=FilesSourceConfig(
            paths=tuple(resolve_path(base, p) for p in raw_paths),
            debounce_ms=duration_ms(f, "debounce_ms", "100ms", 0, 60_000, bare_ms=1),
            poll_interval_ms=duration_ms(f, "poll_interval_ms", "200ms", 10, 60_000, bare_ms=1),
            missing_ok="paths" not in f.data,
        ),
        credentials=credentials,
        consul=consul,
        kubernetes=kubernetes,
    )


def _credentials(parent: Section, base: Path) -> CredentialsSourceConfig:
    s = parent.section("credentials")
    s.only("paths", "namespace", "debounce_ms", "poll_interval_ms")
    raw_paths = s.get("paths", list, [])
    if not raw_paths:
        raise s.error("must name at least one directory of credential directories", "paths")
    for i, item in enumerate(raw_paths):
        if not isinstance(item, str) or not item:
            raise s.error("must be a non-empty path", f"paths[{i}]")
    namespace = hostname(s, "namespace", "-") if "namespace" in s.data else None
    return CredentialsSourceConfig(
        paths=tuple(resolve_path(base, p) for p in raw_paths),
        namespace=namespace,
        debounce_ms=duration_ms(s, "debounce_ms", "100ms", 0, 60_000, bare_ms=1),
        poll_interval_ms=duration_ms(s, "poll_interval_ms", "200ms", 10, 60_000, bare_ms=1),
    )


def _xds(s: Section, base: Path, state_dir: Path) -> XdsConfig:
    s.only("uds", "tcp", "delta", "allow_remote")
    uds = s.opt("uds", str)
    tcp = s.opt("tcp", str)
    allow_remote = s.get("allow_remote", bool, False)
    address = host_port(s, "tcp", tcp) if tcp else None
    if address is not None:
        loopback_unless_allowed(s, "tcp", address[0], allow_remote)
    return XdsConfig(
        uds=resolve_path(base, uds) if uds else state_dir / "xds.sock",
        tcp=address,
        delta=s.get("delta", bool, True),
        allow_remote=allow_remote,
    )


def _admin(s: Section, base: Path, state_dir: Path) -> AdminConfig:
    s.only("address", "port", "socket", "allow_remote")
    address = ip(s, "address", s.get("address", str, "127.0.0.1"))
    allow_remote = s.get("allow_remote", bool, False)
    loopback_unless_allowed(s, "address", address, allow_remote)
    sock = s.opt("socket", str)
    return AdminConfig(
        address=address,
        port=s.port("port", 15020),
        socket=resolve_path(base, sock) if sock else state_dir / "admin.sock",
        allow_remote=allow_remote,
    )


def _outbound(s: Section) -> OutboundConfig:
    s.only("address", "port_offset", "ports", "tcp")
    ports = s.get("ports", dict, {})
    overrides: list[tuple[int, int]] = []
    for key, local in ports.items():
        # Mapping keys are strings, as in mesh files and JSON ("9080" for 9080).
        port = int(key) if isinstance(key, str) and key.isdigit() else key
        if not is_port(port) or not is_port(local):
            raise s.error("service port and local port must both be 1-65535", f"ports.{key}")
        overrides.append((port, local))
    return OutboundConfig(
        address=ip(s, "address", s.get("address", str, "127.0.0.1")),
        port_offset=bounded(s, "port_offset", 0, -65535, 65535),
        ports=tuple(sorted(overrides)),
        tcp=tuple(_tcp_binding(s, i, item) for i, item in enumerate(s.get("tcp", list, []))),
    )


def _tcp_binding(parent: Section, index: int, item: Any) -> TcpBinding:
    s = parent.child(f"tcp[{index}]", item)
    s.only("host", "port", "listen")
    for key in ("host", "port", "listen"):
        if key not in s.data:
            raise s.error("is required", key)
    address, port = host_port(s, "listen", s.get("listen", str, ""))
    return TcpBinding(
        host=hostname(s, "host", ""),
        port=s.port("port", 0, zero_ok=False),
        listen_address=address,
        listen_port=port,
    )


def _log(s: Section) -> LogConfig:
    s.only("level", "format")
    return LogConfig(
        level=s.choice("level", "info", LOG_LEVELS),
        format=s.choice("format", "auto", LOG_FORMATS),
    )


# --- local workloads (issue 3; the `ca` section is agent/config/ca.py) ----------------


def _workload(parent: Section, index: int, item: Any) -> LocalWorkload:
    s = parent.child(f"workloads[{index}]", item)
    s.only("name", "namespace", "service_account", "labels", "ports")
    if not s.data.get("name"):
        raise s.error("is required", "name")
    labels = s.get("labels", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise s.error("must map strings to strings", "labels")
    return LocalWorkload(
        name=hostname(s, "name", ""),
        namespace=identity_name(s, "namespace", "namespace", "default"),
        service_account=identity_name(s, "service_account", "service_account", "default"),
        labels=tuple(sorted(labels.items())),
        ports=tuple(_inbound_port(s, i, p) for i, p in enumerate(s.get("ports", list, []))),
    )


def _inbound_port(parent: Section, index: int, item: Any) -> InboundPort:
    s = parent.child(f"ports[{index}]", item)
    s.only("port", "target_port", "protocol", "name")
    if "port" not in s.data:
        raise s.error("is required", "port")
    port = s.port("port", 0, zero_ok=False)
    return InboundPort(
        port=port,
        target_port=s.port("target_port", port, zero_ok=False),
        protocol=_protocol(s),
        name=s.get("name", str, ""),
    )


def _protocol(s: Section) -> str:
    """A workload port's protocol: Istio's names, or "" to have it sniffed (HTTP or not)."""
    protocol = s.get("protocol", str, "HTTP").upper()
    if protocol and protocol not in KNOWN_PROTOCOLS:
        known = ", ".join(sorted(KNOWN_PROTOCOLS))
        raise s.error(f'must be one of {known}, or "" to detect it', "protocol")
    return protocol
