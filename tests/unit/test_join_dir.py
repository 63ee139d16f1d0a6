"""The join directory (cluster.env, mesh.yaml, hosts) and the pure parts of auto-registration."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.errors import ConfigError
from meshagent.onboard.autoreg import entry_name, go_time, health_condition, parse_go_time
from meshagent.onboard.joindir import parse_cluster_env, parse_hosts, read_join_dir


def write(directory: Path, env: str, mesh: str = "", hosts: str = "") -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "cluster.env").write_text(env)
    (directory / "mesh.yaml").write_text(mesh)
    (directory / "hosts").write_text(hosts)
    (directory / "root-cert.pem").write_text("ROOT")
    (directory / "istio-token").write_text("")
    return directory


def test_cluster_env_quoting_as_istio_writes_it() -> None:
    env = parse_cluster_env("A='it'\"'\"'s'\nB=''\n# comment\nC=plain\n", "cluster.env")
    assert env == {"A": "it's", "B": "", "C": "plain"}


def test_a_bad_line_is_located() -> None:
    with pytest.raises(ConfigError, match=r"cluster.env:2: expected KEY=value"):
        parse_cluster_env("A='x'\nnot a line\n", "cluster.env")


def test_hosts_first_address_wins_and_comments_are_skipped() -> None:
    text = "# x\n10.0.0.1 istiod.istio-system.svc other\n10.0.0.2 istiod.istio-system.svc\n"
    assert parse_hosts(text) == {"istiod.istio-system.svc": "10.0.0.1", "other": "10.0.0.1"}


def test_ca_address_from_discovery_address_dialled_through_hosts(tmp_path: Path) -> None:
    mesh = "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n"
    env = "POD_NAMESPACE='ns'\nSERVICE_ACCOUNT='sa'\nISTIO_INBOUND_PORTS='8080,9090'\n"
    info = read_join_dir(write(tmp_path, env, mesh, "10.9.9.9 istiod.istio-system.svc\n"))
    assert info.ca_address == "istiod.istio-system.svc:15012"
    assert info.ca_dial == "10.9.9.9:15012" and info.ca_host == "istiod.istio-system.svc"
    assert info.trust_domain == "cluster.local" and info.network == ""
    assert info.ports == (("", 8080), ("", 9090))


def test_ca_addr_wins_and_without_hosts_it_is_dialled_by_name(tmp_path: Path) -> None:
    env = "POD_NAMESPACE='ns'\nCA_ADDR='istiod-r.istio-system.svc:15012'\nTRUST_DOMAIN='td'\n"
    info = read_join_dir(write(tmp_path, env, "defaultConfig: {discoveryAddress: x:1}\n"))
    assert info.ca_dial == info.ca_address == "istiod-r.istio-system.svc:15012"
    assert info.trust_domain == "td"


def test_without_namespace_the_join_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="POD_NAMESPACE is not set"):
        read_join_dir(write(tmp_path, "SERVICE_ACCOUNT='sa'\n"))


def test_entry_names_follow_istio() -> None:
    assert entry_name("g", "10.0.0.1") == "g-10.0.0.1"
    assert entry_name("g", "fd00::1", "net") == "g-fd00--1-net"
    assert len(entry_name("g" * 300, "10.0.0.1")) == 253


def test_go_time_round_trips() -> None:
    assert go_time(0.5) == "1970-01-01T00:00:00.5Z"
    assert go_time(1.0) == "1970-01-01T00:00:01Z"
    assert parse_go_time(go_time(1234.25)) == 1234.25


def test_health_transition_time_moves_only_on_change() -> None:
    first = health_condition(True, "t1", "", None)
    same = health_condition(True, "t2", "", [first])
    flipped = health_condition(False, "t3", "HTTP 503", [same])
    assert same["lastTransitionTime"] == "t1" and same["lastProbeTime"] == "t2"
    assert flipped["lastTransitionTime"] == "t3" and flipped["message"] == "HTTP 503"
