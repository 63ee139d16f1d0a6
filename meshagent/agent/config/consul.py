"""The `sources.consul` section of the agent config."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from meshagent.adapters.consul import MAX_CONNECTIONS, MIN_CONNECTIONS, ConsulOptions
from meshagent.agent.config.section import Section, duration_ms, optional_path
from meshagent.normalize.consul.options import ConsulMapping

KEYS = (
    "address",
    "scheme",
    "datacenter",
    "token_file",
    "tls",
    "host_pattern",
    "remote_host_pattern",
    "network",
    "service_port",
    "default_protocol",
    "include_warning",
    "rate_limit",
    "max_connections",
    "sweep_interval",
    "wait",
    "precedence",
    "register",
    "terminating_gateway_port",
    "gateway_bind",
)


@dataclass(frozen=True, slots=True)
class ConsulRegistration:
    """Registering the agent's local workloads in Consul (`sources.consul.register`)."""

    enabled: bool = False
    address: str = ""  # the address Consul clients reach the workloads on; "" = Consul's node's


@dataclass(frozen=True, slots=True)
class ConsulSourceConfig:
    """The Consul adapter's options and the normalizer's mapping choices."""

    options: ConsulOptions
    mapping: ConsulMapping
    register: ConsulRegistration = ConsulRegistration()


def parse_consul(s: Section, base: Path) -> ConsulSourceConfig:
    """sources.consul, validated; relative file paths resolve against base."""

    s.only(*KEYS)
    address = s.get("address", str, "127.0.0.1:8500")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise s.error("must be host:port", "address")
    tls = s.section("tls")
    tls.only("ca_file", "cert_file", "key_file")
    files = {k: optional_path(tls, k, base) for k in ("ca_file", "cert_file", "key_file")}
    if (files["cert_file"] is None) != (files["key_file"] is None):
        raise tls.error("cert_file and key_file go together", "cert_file")
    rate = s.section("rate_limit")
    rate.only("qps", "burst")
    qps = rate.get("qps", int, 20)
    burst = rate.get("burst", int, 20)
    if qps < 1 or burst < 1:
        raise rate.error("qps and burst must be at least 1", "qps")
    wait_ms = duration_ms(s, "wait", "5m", 1, 600_000)
    max_connections = s.get("max_connections", int, MAX_CONNECTIONS)
    if max_connections < MIN_CONNECTIONS:
        raise s.error(f"must be at least {MIN_CONNECTIONS}", "max_connections")
    sweep_ms = duration_ms(s, "sweep_interval", "1m", 0, 3_600_000)
    include_warning = s.get("include_warning", bool, False)
    datacenter = s.opt("datacenter", str)
    options = ConsulOptions(
        address=address,
        scheme=s.choice("scheme", "http", ("http", "https")),
        datacenter=datacenter,
        token_file=optional_path(s, "token_file", base),
        ca_file=files["ca_file"],
        cert_file=files["cert_file"],
        key_file=files["key_file"],
        include_warning=include_warning,
        qps=float(qps),
        burst=burst,
        wait_s=wait_ms / 1000,
        max_connections=max_connections,
        sweep_interval_s=sweep_ms / 1000,
    )
    return ConsulSourceConfig(options, _mapping(s, include_warning, datacenter), _register(s))


def _pattern(s: Section, key: str, default: str) -> str:
    pattern = s.get(key, str, default)
    try:
        pattern.format(name="n", namespace="ns", datacenter="dc", partition="p")
    except (KeyError, IndexError, ValueError) as exc:
        raise s.error(
            f"bad pattern ({exc}); use {{name}}, {{namespace}}, {{datacenter}}, {{partition}}",
            key,
        ) from exc
    return pattern


def _mapping(s: Section, include_warning: bool, datacenter: str | None) -> ConsulMapping:
    pattern = _pattern(s, "host_pattern", "{name}.service.consul")
    remote = _pattern(s, "remote_host_pattern", "{name}.service.{datacenter}.consul")
    if "{datacenter}" not in remote:
        raise s.error("must contain {datacenter}", "remote_host_pattern")
    port = s.get("service_port", int, 0)
    if not 0 <= port < 65536:
        raise s.error("must be a port number (0: each service's own)", "service_port")
    gateway_port = s.get("terminating_gateway_port", int, 8443)
    if not 0 < gateway_port < 65536:
        raise s.error("must be a port number", "terminating_gateway_port")
    bind = s.get("gateway_bind", str, "")
    if bind:
        try:
            ipaddress.ip_address(bind)
        except ValueError as exc:
            raise s.error("must be an IP address", "gateway_bind") from exc
    return ConsulMapping(
        host_pattern=pattern,
        remote_host_pattern=remote,
        network=s.choice("network", "", ("", "lan", "wan")),
        default_protocol=s.choice("default_protocol", "http", ("http", "http2", "grpc", "tcp")),
        include_warning=include_warning,
        precedence=s.choice("precedence", "files", ("files", "consul")),
        service_port=port,
        datacenter=datacenter or "",
        terminating_gateway_port=gateway_port,
        gateway_bind=bind,
    )


def _register(s: Section) -> ConsulRegistration:
    value = s.data.get("register")
    if value is None or isinstance(value, bool):
        return ConsulRegistration(enabled=bool(value))
    r = s.section("register")
    r.only("enabled", "address")
    return ConsulRegistration(r.get("enabled", bool, True), r.get("address", str, ""))
