"""`envoy.stats`: the bootstrap's stats_matcher (all stats by default, Istio's inclusion set
with the `istio` preset), validated with file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.agent.config import parse_config
from meshagent.agent.envoy import bootstrap_for
from meshagent.errors import ConfigError
from meshagent.xds.stats_tags import ISTIO_INCLUSION_PREFIXES


def _config(tmp_path: Path, stats: str) -> object:
    text = f"node: {{id: vm-1}}\nstate_dir: {tmp_path}\nenvoy:\n  stats:\n{stats}"
    return parse_config(text, tmp_path / "agent.yaml")


def test_default_keeps_every_stat(tmp_path: Path) -> None:
    config = parse_config(f"node: {{id: vm-1}}\nstate_dir: {tmp_path}\n", tmp_path / "a.yaml")
    assert config.envoy.stats.preset == "all"
    assert "stats_matcher" not in bootstrap_for(config)["stats_config"]


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
