"""Translation of the security model: mTLS modes per port, rotation as a secret-only change."""

from __future__ import annotations

import dataclasses

import pytest

from meshagent.model import (
    Identity,
    InboundPort,
    LocalWorkload,
    MeshSnapshot,
    ProxySpec,
    WorkloadCertificate,
    frozen_map,
)
from meshagent.model.security import MtlsMode, PeerAuthn
from meshagent.xds import typeurls
from meshagent.xds.translate import Translator
from meshagent.xds.translate.inbound import mtls_mode

WORKLOAD = LocalWorkload(
    "cart", "shop", "cart", labels=(("app", "cart"),), ports=(InboundPort(9080, 8080),)
)
PORT = WORKLOAD.ports[0]


def _cert(serial: str) -> WorkloadCertificate:
    pem = f"-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n"
    return WorkloadCertificate(
        Identity("cluster.local", "shop", "cart"), pem, f"KEY{serial}", pem, 2e9, serial
    )


def _snapshot(*policies: PeerAuthn) -> MeshSnapshot:
    return MeshSnapshot(
        version=1,
        peer_authentications=frozen_map({f"{p.namespace}/{p.name}": p for p in policies}),
    )


MESH = PeerAuthn("default", "istio-system", MtlsMode.STRICT)
NAMESPACE = PeerAuthn("default", "shop", MtlsMode.DISABLE)
OWN = PeerAuthn("cart", "shop", MtlsMode.UNSET, (("app", "cart"),), ((8080, MtlsMode.PERMISSIVE),))
OTHER = PeerAuthn("other", "shop", MtlsMode.STRICT, (("app", "other"),))


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        ((), MtlsMode.PERMISSIVE),
        ((MESH,), MtlsMode.STRICT),
        ((MESH, NAMESPACE), MtlsMode.DISABLE),
        ((MESH, NAMESPACE, OWN), MtlsMode.PERMISSIVE),
        ((MESH, OTHER), MtlsMode.STRICT),
        ((dataclasses.replace(OWN, port_level=()), NAMESPACE), MtlsMode.DISABLE),
    ],
)
def test_mtls_mode_precedence(policies: tuple[PeerAuthn, ...], expected: MtlsMode) -> None:
    # given policies at mesh, namespace and workload level, the narrowest set mode wins
    proxy = ProxySpec(node_id="vm", workloads=(WORKLOAD,))
    assert mtls_mode(_snapshot(*policies), proxy, WORKLOAD, PORT) is expected


def test_a_rotation_changes_only_the_secrets() -> None:
    # given a proxy serving mTLS, when its certificate is replaced, then only SDS changes
    proxy = ProxySpec(node_id="vm", workloads=(WORKLOAD,), certificates=(_cert("1"),))
    snapshot = _snapshot(MESH)
    translator = Translator()
    before = translator.generate(snapshot, proxy)
    after = translator.generate(snapshot, dataclasses.replace(proxy, certificates=(_cert("2"),)))
    for type_url in typeurls.PUSH_ORDER:
        versions = {n: r.version for n, r in before.of(type_url).items()}
        changed = versions != {n: r.version for n, r in after.of(type_url).items()}
        assert changed == (type_url == typeurls.SECRET), type_url
    assert set(after.of(typeurls.SECRET)) == {"default", "ROOTCA"}
