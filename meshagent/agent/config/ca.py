"""The `ca` section of the agent config."""

from __future__ import annotations

from pathlib import Path

from meshagent.agent.config.section import Section, bounded, duration_ms, ip, resolve_path
from meshagent.ca.settings import CA_MODES, CaConfig, CaServeConfig, CaUpstreamConfig
from meshagent.model.identity import InvalidIdentity, check_name


def parse_ca(s: Section, base: Path, state_dir: Path) -> CaConfig:
    """The `ca` section, validated; relative paths resolve against base."""
    from meshagent.ca.keys import KEY_TYPES
    from meshagent.durations import format_duration

    s.only(
        "mode",
        "dir",
        "trust_domain",
        "key_type",
        "workload_ttl",
        "max_workload_ttl",
        "plugin_dir",
        "upstream",
        "serve",
    )
    mode = s.choice("mode", "self-signed", CA_MODES)
    plugin_dir = s.opt("plugin_dir", str)
    if mode == "plug-in" and not plugin_dir:
        raise s.error("is required when mode is plug-in", "plugin_dir")
    if mode == "upstream" and s.data.get("upstream") is None:
        raise s.error("is required when mode is upstream", "upstream")
    ttl_ms = duration_ms(s, "workload_ttl", "24h", 1)
    max_ms = duration_ms(s, "max_workload_ttl", "90d", 1)
    if ttl_ms > max_ms:
        limit = format_duration(max_ms / 1000)
        raise s.error(f"is longer than ca.max_workload_ttl ({limit})", "workload_ttl")
    ca_dir = s.opt("dir", str)
    serve = _ca_serve(s.section("serve"))
    if mode == "upstream" and serve.address:
        raise s.error("needs a local CA: not available in upstream mode", "serve.address")
    return CaConfig(
        mode=mode,
        dir=resolve_path(base, ca_dir) if ca_dir else state_dir / "ca",
        trust_domain=identity_name(s, "trust_domain", "trust_domain", "cluster.local"),
        key_type=s.choice("key_type", "ec-p256", KEY_TYPES),
        workload_ttl_s=ttl_ms / 1000,
        max_workload_ttl_s=max_ms / 1000,
        plugin_dir=resolve_path(base, plugin_dir) if plugin_dir else None,
        upstream=_ca_upstream(s.section("upstream"), base) if mode == "upstream" else None,
        serve=serve,
    )


def identity_name(s: Section, key: str, part: str, default: str) -> str:
    """s[key] checked as an identity `part` ("trust_domain", "namespace", "service_account",
    see model/identity.py); a located ConfigError otherwise."""
    value = s.get(key, str, default)
    try:
        return check_name(part, value)
    except InvalidIdentity as exc:
        raise s.error(str(exc), key) from None


def _ca_upstream(s: Section, base: Path) -> CaUpstreamConfig:
    s.only("address", "token_file", "root_cert", "server_name")
    for key in ("address", "token_file"):
        if not s.data.get(key):
            raise s.error("is required", key)
    host, port = _host_port_name(s, "address", s.get("address", str, ""))
    root_cert = s.opt("root_cert", str)
    return CaUpstreamConfig(
        address=f"{host}:{port}",
        token_file=resolve_path(base, s.get("token_file", str, "")),
        root_cert=resolve_path(base, root_cert) if root_cert else None,
        server_name=s.opt("server_name", str),
    )


def _host_port_name(s: Section, key: str, value: str, *, zero_ok: bool = False) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 if zero_ok else 1) <= int(port) <= 65535:
        raise s.error('must be "host:port", e.g. "istiod.example.com:15012"', key)
    return host, int(port)


def _listen(s: Section, key: str) -> str | None:
    value = s.opt(key, str)
    if not value:
        return None
    host, port = _host_port_name(s, key, value, zero_ok=True)
    return f"{ip(s, key, host.strip('[]'))}:{port}"


def _ca_serve(s: Section) -> CaServeConfig:
    s.only("address", "tls", "mtls_address", "rate", "burst", "workers")
    rate = s.data.get("rate", 10.0)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or rate <= 0:
        raise s.error("must be a number above 0 (requests per second per caller)", "rate")
    return CaServeConfig(
        address=_listen(s, "address"),
        tls=s.get("tls", bool, True),
        mtls_address=_listen(s, "mtls_address"),
        rate=float(rate),
        burst=bounded(s, "burst", 20, 1, 100_000),
        workers=bounded(s, "workers", 1, 1, 64),
    )
