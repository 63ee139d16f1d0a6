"""The real Envoy accepts what a Sidecar makes of the translation (`envoy --mode validate`):
ingress listeners with file TLS and each kind of defaultEndpoint, egress binds, and the
egressProxy catch-alls of capture mode."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from meshagent.model import LocalWorkload, MeshSnapshot, ProxySpec, frozen_map
from meshagent.model.sidecar import (
    EgressHost,
    EgressListener,
    EgressProxy,
    IngressListener,
    IngressTls,
    Sidecar,
    SidecarPort,
)
from meshagent.xds.translate import generate
from tests.unit.test_sidecar_scope import SERVICES
from tests.unit.test_translate_envoy import ENVOY, _write_certs, static_bootstrap
from tests.unit.translate_inputs import resources_as_dict

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(ENVOY is None, reason="envoy binary not installed"),
]


def _sidecar(certs: Path) -> Sidecar:
    tls = IngressTls(
        "MUTUAL",
        str(certs / "cert.pem"),
        str(certs / "key.pem"),
        str(certs / "ca.pem"),
        min_protocol_version="TLSV1_2",
    )
    ingress = (
        IngressListener(
            SidecarPort(9443, "HTTP", "https"), default_endpoint="127.0.0.1:7070", tls=tls
        ),
        IngressListener(
            SidecarPort(9080, "TCP", "tcp"), bind="127.0.0.1", default_endpoint="[::1]:7071"
        ),
        IngressListener(SidecarPort(9081, "", "any"), default_endpoint="unix:///run/app.sock"),
    )
    egress = (
        EgressListener((EgressHost("*", "*"),), SidecarPort(9090, "HTTP"), bind="127.0.0.9"),
        EgressListener((EgressHost(".", "*"),)),
    )
    return Sidecar(
        "s",
        "app",
        egress=egress,
        ingress=ingress,
        outbound_traffic_policy="ALLOW_ANY",
        egress_proxy=EgressProxy("squid.infra.svc.cluster.local", 3128),
    )


@pytest.mark.parametrize("capture", [False, True])
def test_envoy_accepts_a_sidecars_config(capture: bool, tmp_path: Path) -> None:
    _write_certs(tmp_path)
    snapshot = MeshSnapshot(
        version=1,
        services=frozen_map({s.host: s for s in SERVICES}),
        sidecars=frozen_map({"app/s": _sidecar(tmp_path)}),
    )
    proxy = ProxySpec(
        node_id="vm", namespace="app", capture=capture, workloads=(LocalWorkload("w", "app", "sa"),)
    )
    bootstrap = static_bootstrap(resources_as_dict(generate(snapshot, proxy)), tmp_path)
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(bootstrap, indent=1))
    assert ENVOY is not None
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
