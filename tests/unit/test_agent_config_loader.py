"""The agent config is read by the loader of mesh files, and every duration key by one grammar."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.agent.config import AgentConfig, parse_config
from meshagent.ca.durations import parse_duration
from meshagent.durations import parse_duration_ns
from meshagent.errors import ConfigError
from meshagent.normalize.durations import parse_duration_ms


def parse(tmp_path: Path, text: str) -> AgentConfig:
    return parse_config(text, tmp_path / "agent.yaml")


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, text)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("outbound: {port_offset: 1}\nlog: {level: info}\noutbound: {port_offset: 2}\n", ":3:"),
        ("outbound:\n  port_offset: 1\n  port_offset: 2\n", ":3:"),
        ("outbound:\n  ports: {9080: 1, 9080: 2}\n", ":2:"),
    ],
)
def test_duplicate_keys_are_located_errors(tmp_path: Path, text: str, where: str) -> None:
    message = error(tmp_path, text)
    assert "duplicate key" in message and f"agent.yaml{where}" in message


def test_the_loader_refuses_what_mesh_files_refuse(tmp_path: Path) -> None:
    assert "recursive alias" in error(tmp_path, "node: &a {id: x, more: *a}\n")
    assert "one YAML document" in error(tmp_path, "node: {id: a}\n---\nnode: {id: b}\n")
    assert "must be a mapping" in error(tmp_path, "- a\n")
    assert "agent.yaml:3: YAML syntax error" in error(tmp_path, "node: {id: a}\nlog: [\n")
    # Integer keys read as in mesh files; outbound.ports still maps ports to ports.
    assert parse(tmp_path, "outbound: {ports: {9080: 19080}}\n").outbound.ports == ((9080, 19080),)


def test_every_duration_key_reads_the_one_grammar(tmp_path: Path) -> None:
    text = """\
sources:
  files: {debounce_ms: 1.5s, poll_interval_ms: 250ms}
  consul: {wait: 1m30s}
  kubernetes: {server: "http://127.0.0.1:1", watch_timeout: 2m, resync: 1d}
envoy: {drain_seconds: 1m}
ca: {workload_ttl: 7d}
extension_providers:
  - {name: ext, envoy_ext_authz_http: {service: authz.local, port: 80, timeout: 0.25s}}
dns: {upstream_timeout_ms: 1.5s}
"""
    config = parse(tmp_path, text)
    files, consul, kube = config.sources.files, config.sources.consul, config.sources.kubernetes
    assert files is not None and consul is not None and kube is not None and config.ca
    assert (files.debounce_ms, files.poll_interval_ms) == (1500, 250)
    assert consul.options.wait_s == 90
    assert (kube.options.watch_timeout_s, kube.options.resync_s) == (120, 86400)
    assert config.envoy.drain_seconds == 60
    assert config.ca.workload_ttl_s == 7 * 86400
    assert config.extension_providers[0].timeout_ms == 250
    assert config.dns.upstream_timeout_ms == 1500


def test_legacy_integer_forms_keep_working(tmp_path: Path) -> None:
    config = parse(tmp_path, "sources: {files: {debounce_ms: 50, poll_interval_ms: 20}}\n"
                   "envoy: {drain_seconds: 3}\ndns: {upstream_timeout_ms: 500}\n")  # fmt: skip
    assert config.sources.files is not None
    assert config.dns.upstream_timeout_ms == 500
    assert (config.sources.files.debounce_ms, config.sources.files.poll_interval_ms) == (50, 20)
    assert config.envoy.drain_seconds == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources: {consul: {wait: 300}}", "consul.wait: 300 is not a duration with a unit"),
        ("sources: {consul: {wait: 11m}}", "consul.wait: must be a duration from 1ms to 10m"),
        ("sources: {files: {debounce_ms: 2m}}", "debounce_ms: must be a duration from 0s to 1m"),
        ("sources: {files: {poll_interval_ms: soon}}", "'soon' is not a duration with a unit"),
        ("envoy: {drain_seconds: 1.5s}", "envoy.drain_seconds: must be whole seconds"),
        ("envoy: {drain_seconds: -1}", "envoy.drain_seconds: must be a duration from 0s to 1h"),
        ("ca: {workload_ttl: 0s}", "ca.workload_ttl: must be a duration from 1ms or more"),
        ("ca: {workload_ttl: -1h}", "ca.workload_ttl: '-1h' is not a duration"),
        ("dns: {upstream_timeout_ms: 2m}", "upstream_timeout_ms: must be a duration from 10ms"),
    ],
)
def test_duration_errors_are_located_and_alike(tmp_path: Path, text: str, message: str) -> None:
    assert message in error(tmp_path, "log: {level: info}\n" + text + "\n")


def test_one_grammar_behind_every_parser() -> None:
    # Go's syntax, as Istio accepts it, in every parser.
    for text, ns in (("1h30m", 5_400 * 10**9), ("1.5s", 1_500_000_000), (".5ms", 500_000),
                     ("10us", 10_000), ("0", 0)):  # fmt: skip
        assert parse_duration_ns(text) == ns
        assert parse_duration_ms(text) == ns // 1_000_000
    # Days only outside Istio resources (Go and Istio reject "1d").
    assert parse_duration_ns("7d") == 7 * 86400 * 10**9
    assert parse_duration_ms("7d") is None
    # The CA's CLI: what it accepted before, and now Go's forms too.
    assert parse_duration("1h30m") == parse_duration(" 90m ") == 5400
    assert parse_duration("500us") == 0.0005
    for bad in ("", "1", "-1s", "1 s", "1x", "s"):
        assert parse_duration_ns(bad) is None
