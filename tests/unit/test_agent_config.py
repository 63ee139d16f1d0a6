"""The agent config file: defaults, relative paths, located errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from meshagent.agent.config import load_config, parse_config
from meshagent.errors import ConfigError
from meshagent.model.proxy import ROUTER, SIDECAR, ProxySpec, TcpBinding


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))

    assert config.node.id == socket.gethostname()
    assert (config.node.cluster, config.node.namespace) == ("meshagent", "default")
    assert config.domain_suffix == "cluster.local"
    assert config.sources.files is not None
    assert config.sources.files.paths == (tmp_path / "mesh",)
    assert config.sources.files.debounce_ms == 100
    assert config.state_dir == Path("/var/lib/meshagent")
    assert config.xds.uds == Path("/var/lib/meshagent/xds.sock")
    assert config.xds.tcp is None and config.xds.delta
    assert (config.admin.address, config.admin.port) == ("127.0.0.1", 15020)
    assert config.admin.socket == Path("/var/lib/meshagent/admin.sock")
    assert not config.envoy.manage and config.envoy.base_id is None
    assert (config.log.level, config.log.format) == ("info", "auto")
    assert config.path == tmp_path / "agent.yaml"


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "state_dir: state\nsources:\n  files: {paths: [conf/, /etc/mesh.yaml]}\n"
            "xds: {tcp: '127.0.0.1:15010', delta: false}\n",
        )
    )

    assert config.state_dir == tmp_path / "state"
    assert config.xds.uds == tmp_path / "state" / "xds.sock"
    assert config.admin.socket == tmp_path / "state" / "admin.sock"
    assert config.sources.files is not None
    assert config.sources.files.paths == (tmp_path / "conf", Path("/etc/mesh.yaml"))
    assert config.xds.tcp == ("127.0.0.1", 15010) and not config.xds.delta


def test_proxy_spec_from_node_and_outbound(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
node: {id: vm-1, cluster: web, namespace: shop}
outbound:
  port_offset: 10000
  ports: {9080: 19080}
  tcp:
    - {host: db.example.com, port: 3306, listen: "127.0.0.1:13306"}
""",
        )
    )

    assert config.proxy_spec() == ProxySpec(
        node_id="vm-1",
        cluster="web",
        namespace="shop",
        port_offset=10000,
        port_overrides=((9080, 19080),),
        tcp_bindings=(TcpBinding("db.example.com", 3306, "127.0.0.1", 13306),),
    )


def test_a_router_node_has_its_type_and_labels(tmp_path: Path) -> None:
    text = "node: {id: gw-1, type: router, labels: {istio: ingressgateway, app: edge}}\n"
    proxy = load_config(write(tmp_path, text)).proxy_spec()

    assert proxy.proxy_type == ROUTER
    assert proxy.labels == (("app", "edge"), ("istio", "ingressgateway"))
    assert load_config(write(tmp_path, "")).proxy_spec().proxy_type == SIDECAR


def test_files_source_can_be_turned_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "sources: {files: null}\n")).sources.files is None


@pytest.mark.parametrize(
    ("text", "line", "field", "reason"),
    [
        ("node:\n  id: a\n  colour: blue\n", 3, "node.colour", "unknown key"),
        ("admin:\n  port: 99999\n", 2, "admin.port", "port"),
        ("envoy:\n  manage: yes please\n", 2, "envoy.manage", "true or false"),
        ("log: {level: loud}\n", 1, "log.level", "one of"),
        ("xds:\n  tcp: localhost\n", 2, "xds.tcp", "host:port"),
        ("xds:\n  tcp: '0.0.0.0:15010'\n", 2, "xds.tcp", "xds.allow_remote: true"),
        ("admin:\n  port: 1\n  address: 10.1.2.3\n", 3, "admin.address", "not a loopback"),
        ("admin: {address: '::', allow_remote: 1}\n", 1, "admin.allow_remote", "true or false"),
        (
            "outbound:\n  tcp:\n    - {host: db, port: 3306}\n",
            3,
            "outbound.tcp[0].listen",
            "required",
        ),
        ("bogus: 1\n", 1, "bogus", "unknown key"),
        ("node:\n  type: gateway\n", 2, "node.type", "one of: sidecar, router"),
        ("node:\n  labels: {app: 1}\n", 2, "node.labels", "strings to strings"),
    ],
)
def test_errors_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.location == f"{path}:{line}"
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{path}:{line}: {field}: ")


def test_remote_listeners_only_when_allowed(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "admin: {address: 0.0.0.0, allow_remote: true, socket: run/a.sock}\n"
            "xds: {tcp: '[::]:15010', allow_remote: true}\n",
        )
    )
    assert config.admin.address == "0.0.0.0" and config.admin.allow_remote
    assert config.admin.socket == tmp_path / "run" / "a.sock"
    assert config.xds.tcp == ("::", 15010) and config.xds.allow_remote
    ipv6 = load_config(write(tmp_path, "admin: {address: '::1'}\nxds: {tcp: '[::1]:1'}\n"))
    assert ipv6.admin.address == "::1" and ipv6.xds.tcp == ("::1", 1)


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("node:\n  id: [a\n", tmp_path / "x.yaml")
    assert caught.value.location.startswith(str(tmp_path / "x.yaml") + ":")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")
