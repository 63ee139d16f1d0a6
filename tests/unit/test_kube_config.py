"""`sources.kubernetes` in the agent config."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.adapters.kubernetes import KubernetesAdapter
from meshagent.agent.config import parse_config
from meshagent.agent.daemon import build_adapters
from meshagent.errors import ConfigError

FULL = """\
sources:
  kubernetes:
    server: https://10.0.0.1:6443
    token_file: secrets/token
    ca_file: ca.pem
    namespaces: [shop, istio-system]
    kinds: [Service, EndpointSlice, VirtualService]
    cluster_domain: corp.local
    region: eu-west1
    resync: 10m
    watch_timeout: 30s
    precedence: files
"""


def test_every_key_is_read_and_the_adapter_is_built(tmp_path: Path) -> None:
    config = parse_config(FULL, tmp_path / "agent.yaml")
    kube = config.sources.kubernetes
    assert kube is not None
    o, m = kube.options, kube.mapping
    assert o.server == "https://10.0.0.1:6443" and o.token_file == tmp_path / "secrets" / "token"
    assert o.ca_file == tmp_path / "ca.pem" and o.namespaces == ("shop", "istio-system")
    assert o.kinds == ("Service", "EndpointSlice", "VirtualService")
    assert (o.resync_s, o.watch_timeout_s) == (600.0, 30)
    assert (m.cluster_domain, m.region, m.precedence) == ("corp.local", "eu-west1", "files")
    assert any(isinstance(a, KubernetesAdapter) for a in build_adapters(config))


def test_defaults(tmp_path: Path) -> None:
    config = parse_config("sources:\n  kubernetes: {kubeconfig: kc}\n", tmp_path / "a.yaml")
    kube = config.sources.kubernetes
    assert kube is not None and kube.options.kubeconfig == tmp_path / "kc"
    assert kube.options.namespaces == () and kube.mapping.precedence == "kubernetes"
    assert kube.mapping.cluster_domain == "cluster.local"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{server: ftp://x}", "sources.kubernetes.server"),
        ("{token_file: t}", "sources.kubernetes.token_file"),
        ("{server: 'http://x', kinds: [Pod]}", "sources.kubernetes.kinds[0]"),
        ("{server: 'http://x', precedence: consul}", "sources.kubernetes.precedence"),
        ("{server: 'http://x', resync: soon}", "sources.kubernetes.resync"),
        ("{server: 'http://x', bogus: 1}", "sources.kubernetes"),
    ],
)
def test_bad_values_are_located(tmp_path: Path, body: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"sources:\n  kubernetes: {body}\n", tmp_path / "agent.yaml")
    assert field in str(err.value)
