"""`envoy.stats`: the bootstrap's stats_matcher (all but the per-cluster bookkeeping by
default, every statistic with `all`, Istio's inclusion set with `istio`), validated with
file:line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import re2

from meshagent.agent.config import parse_config
from meshagent.agent.envoy import bootstrap_for
from meshagent.errors import ConfigError
from meshagent.model.regex import regex_problem
from meshagent.xds.stats_tags import ISTIO_INCLUSION_PREFIXES, standard_matcher


def _config(tmp_path: Path, stats: str) -> object:
    text = f"node: {{id: vm-1}}\nstate_dir: {tmp_path}\nenvoy:\n  stats:\n{stats}"
    return parse_config(text, tmp_path / "agent.yaml")


def test_default_is_the_standard_preset_an_exclusion_list(tmp_path: Path) -> None:
    """The default keeps every statistic but the per-cluster bookkeeping (issue 17)."""
    config = parse_config(f"node: {{id: vm-1}}\nstate_dir: {tmp_path}\n", tmp_path / "a.yaml")
    assert config.envoy.stats.preset == "standard"
    matcher = bootstrap_for(config)["stats_config"]["stats_matcher"]
    assert matcher == standard_matcher()
    assert list(matcher) == ["exclusion_list"]
    explicit = _config(tmp_path, "    preset: standard\n")
    assert bootstrap_for(explicit)["stats_config"]["stats_matcher"] == matcher  # type: ignore[arg-type]


def test_all_preset_keeps_every_stat(tmp_path: Path) -> None:
    config = _config(tmp_path, "    preset: all\n")
    assert config.envoy.stats.preset == "all"  # type: ignore[attr-defined]
    assert "stats_matcher" not in bootstrap_for(config)["stats_config"]  # type: ignore[arg-type]


def test_cluster_traffic_stats_are_deferred_by_default(tmp_path: Path) -> None:
    """Envoy makes a cluster's traffic statistics at its first use (issue 17: making them
    with each cluster was most of Envoy's time applying a first CDS response)."""
    config = parse_config(f"node: {{id: vm-1}}\nstate_dir: {tmp_path}\n", tmp_path / "a.yaml")
    assert config.envoy.stats.deferred
    options = bootstrap_for(config)["deferred_stat_options"]
    assert options == {"enable_deferred_creation_stats": True}
    eager = _config(tmp_path, "    deferred: false\n")
    assert "deferred_stat_options" not in bootstrap_for(eager)


def test_istio_preset_is_istios_default_inclusion_set_plus_extras(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "    preset: istio\n"
        "    inclusion_prefixes: [cluster.outbound]\n"
        "    inclusion_suffixes: [upstream_rq_total]\n"
        "    inclusion_regexps: ['^http\\..*\\.downstream_rq_[0-9]xx$']\n",
    )
    matcher = bootstrap_for(config)["stats_config"]["stats_matcher"]  # type: ignore[arg-type]
    patterns = matcher["inclusion_list"]["patterns"]
    prefixes = [p["prefix"] for p in patterns if "prefix" in p]
    suffixes = [p["suffix"] for p in patterns if "suffix" in p]
    regexps = [p["safe_regex"]["regex"] for p in patterns if "safe_regex" in p]
    assert prefixes == [*ISTIO_INCLUSION_PREFIXES, "cluster.outbound"]
    for required in ("cluster_manager", "listener_manager", "server", "cluster.meshagent-xds"):
        assert required in prefixes
    assert suffixes[-1] == "upstream_rq_total" and "rbac.allowed" in suffixes
    assert regexps == [r"vhost\..*\.route\..*", r"^http\..*\.downstream_rq_[0-9]xx$"]


@pytest.mark.parametrize(
    ("stats", "field", "reason"),
    [
        ("    preset: some\n", "envoy.stats.preset", "must be one of"),
        ("    inclusion_prefixes: [server]\n", "envoy.stats.inclusion_prefixes", "no effect"),
        (
            "    preset: all\n    inclusion_suffixes: [x]\n",
            "envoy.stats.inclusion_suffixes",
            "no effect with preset `all`",
        ),
        (
            "    preset: standard\n    inclusion_regexps: [x]\n",
            "envoy.stats.inclusion_regexps",
            "no effect with preset `standard`",
        ),
        (
            "    preset: istio\n    inclusion_regexps: ['(?=x)']\n",
            "envoy.stats.inclusion_regexps[0]",
            "RE2",
        ),
        (
            "    preset: istio\n    inclusion_suffixes: ['']\n",
            "envoy.stats.inclusion_suffixes[0]",
            "non-empty",
        ),
        ("    presets: istio\n", "envoy.stats.presets", "unknown key"),
        ("    deferred: yes please\n", "envoy.stats.deferred", "must be"),
    ],
)
def test_bad_stats_config_is_located(tmp_path: Path, stats: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, stats)
    assert err.value.field == field
    assert reason in str(err.value)
    assert "agent.yaml:" in str(err.value)


CLUSTER = "cluster.outbound|8080||hello.default.svc.cluster.local"
# What an operator reads: a cluster's traffic (made at its first request), health and TLS
# statistics, and every statistic outside clusters, xDS subscriptions' included.
KEPT = (
    f"{CLUSTER}.upstream_rq_total",
    f"{CLUSTER}.upstream_rq_200",
    f"{CLUSTER}.upstream_rq_5xx",
    f"{CLUSTER}.upstream_rq_time",
    f"{CLUSTER}.upstream_cx_active",
    f"{CLUSTER}.upstream_rq_pending_overflow",
    f"{CLUSTER}.external.upstream_rq_2xx",
    f"{CLUSTER}.membership_healthy",
    f"{CLUSTER}.membership_total",
    f"{CLUSTER}.outlier_detection.ejections_active",
    f"{CLUSTER}.outlier_detection.ejections_enforced_total",
    f"{CLUSTER}.health_check.healthy",
    f"{CLUSTER}.ssl.handshake",
    f"{CLUSTER}.ssl.fail_verify_san",
    # hidden: with deferred statistics, whether the cluster's traffic statistics were made,
    # which a cluster updated later reads to make them again (values kept across the update)
    f"{CLUSTER}.ClusterTrafficStats.initialized",
    "cluster.outbound|80||version.example.org.upstream_rq_total",
    "cluster.meshagent-xds.upstream_cx_connect_fail",
    "cluster_manager.active_clusters",
    "cluster_manager.cds.update_rejected",
    "cluster_manager.cds.update_success",
    "cluster_manager.cds.version",
    "cluster_manager.cds.init_fetch_timeout",
    "listener_manager.lds.update_attempt",
    "listener_manager.lds.version_text",
    "http.outbound_127.0.0.1_8080.rds.8080.update_empty",
    "http.outbound_127.0.0.1_8080.rds.8080.version",
    "http.outbound_127.0.0.1_8080.downstream_rq_2xx",
    "sds.default.update_rejected",
    "listener.127.0.0.1_8080.downstream_cx_total",
    "server.version",
    "server.memory_allocated",
    "vhost.hello.vcluster.other.upstream_rq_retry",
)
# Envoy's bookkeeping, made with every cluster before any request (51 for an EDS cluster).
DROPPED = tuple(
    f"{CLUSTER}.{name}"
    for name in (
        "assignment_stale",
        "assignment_timeout_received",
        "assignment_use_cached",
        "circuit_breakers.default.cx_open",
        "circuit_breakers.default.rq_pending_open",
        "circuit_breakers.default.remaining_rq",
        "circuit_breakers.high.rq_retry_open",
        "default.total_match_count",
        "init_fetch_timeout",
        "lb_healthy_panic",
        "lb_local_cluster_not_ok",
        "lb_recalculate_zone_structures",
        "lb_subsets_active",
        "lb_subsets_fallback_panic",
        "lb_zone_routing_cross_zone",
        "max_host_weight",
        "membership_change",
        "membership_degraded",
        "membership_excluded",
        "update_attempt",
        "update_empty",
        "update_failure",
        "update_no_rebuild",
        "update_rejected",
        "update_success",
        "update_time",
        "update_duration",
        "version",
        "version_text",
        "warming_state",
    )
)


def _envoy_drops(matcher: dict[str, Any], name: str) -> bool:
    """Envoy's StatsMatcher with an exclusion list: a statistic is not made when a pattern
    matches its name (suffix: the string's end; safe_regex: an RE2 full match)."""
    for pattern in matcher["exclusion_list"]["patterns"]:
        if "suffix" in pattern and name.endswith(pattern["suffix"]):
            return True
        if "safe_regex" in pattern and re2.fullmatch(pattern["safe_regex"]["regex"], name):
            return True
        assert set(pattern) <= {"suffix", "safe_regex"}, pattern
    return False


@pytest.mark.parametrize("name", KEPT)
def test_standard_preset_keeps_what_operators_read(name: str) -> None:
    assert not _envoy_drops(standard_matcher(), name)


@pytest.mark.parametrize("name", DROPPED)
def test_standard_preset_drops_per_cluster_bookkeeping(name: str) -> None:
    assert _envoy_drops(standard_matcher(), name)


def test_standard_preset_patterns_are_cheap_for_envoy() -> None:
    """Suffixes (a string compare) and RE2 regexes within Envoy's default program size, no
    std::regex: Envoy runs the matcher on every statistic it would make."""
    patterns = standard_matcher()["exclusion_list"]["patterns"]
    regexps = [p["safe_regex"]["regex"] for p in patterns if "safe_regex" in p]
    assert len(regexps) <= 1
    for regex in regexps:
        assert regex_problem(regex) is None
        assert re2.compile(regex).programsize <= 100  # Envoy's default limit
    assert all(set(p) <= {"suffix", "safe_regex"} for p in patterns)
