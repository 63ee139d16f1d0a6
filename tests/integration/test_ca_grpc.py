"""The CreateCertificate service over real loopback TLS: Istio's wire format, status codes for
every refusal (and nothing issued), mTLS renewal, upstream mode from another event loop, and
the daemon wiring."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshagent.agent.config import parse_config
from meshagent.agent.daemon import Agent
from meshagent.ca.authority import CertificateAuthority, identity_of
from meshagent.ca.client import CertificateClient, UpstreamIssuer
from meshagent.ca.issuer import IssuanceService
from meshagent.ca.keys import generate_key, key_to_pem, load_certs_pem, make_csr
from meshagent.ca.ratelimit import TokenBucketLimiter
from meshagent.ca.service import CertificateServer
from meshagent.ca.state import load_self_signed, token_key
from meshagent.ca.tokens import TokenVerifier, create_token
from meshagent.ca.workload import WorkloadCertManager
from meshagent.model.identity import Identity
from tests.ca_helpers import verify_chain
from tests.polling import async_wait_for

TD = "cluster.local"
WEB = Identity(TD, "shop", "web")


class Served:
    """A running server, its CA, and what it issued or refused."""

    def __init__(self, ca_dir: Path, burst: int = 50) -> None:
        self.ca_dir = ca_dir
        self.ca: CertificateAuthority = load_self_signed(ca_dir, TD)
        self.outcomes: list[tuple[str, str]] = []
        verifier = TokenVerifier(token_key(ca_dir).public_key(), TD)
        self.service = IssuanceService(
            self.ca,
            verifier,
            TokenBucketLimiter(0.001, burst),
            observe=lambda outcome, reason: self.outcomes.append((outcome, reason)),
        )
        self.server = CertificateServer(self.service, max_message_bytes=16 * 1024)

    def token(self, identity: Identity = WEB, ttl: float = 600, now: float | None = None) -> str:
        return create_token(token_key(self.ca_dir), identity, ttl, now=now)

    def client(self, port: int | None = None, **kwargs: Any) -> CertificateClient:
        return CertificateClient(
            f"127.0.0.1:{port or self.server.port}",
            root_cert_pem=self.ca.roots_pem.encode(),
            **kwargs,
        )

    def issued(self) -> int:
        return sum(outcome == "issued" for outcome, _ in self.outcomes)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = Served(tmp_path / "ca")
    await s.server.start("127.0.0.1:0", mtls_address="127.0.0.1:0")
    yield s
    await s.server.stop(0)


async def call_status(client: CertificateClient, csr: str, token: str | None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.create_certificate(csr, 600, token=token)
    return info.value.code()


async def test_good_request_returns_chain_leaf_first_root_last(served: Served) -> None:
    client = served.client()
    chain = await client.create_certificate(
        make_csr(generate_key(), WEB), 600, token=served.token()
    )
    await client.close()
    leaf = load_certs_pem(chain[0])[0]
    assert identity_of(leaf) == WEB
    assert load_certs_pem(chain[-1])[0] == served.ca.roots[0]
    verify_chain(chain, served.ca.roots_pem)
    lifetime = leaf.not_valid_after_utc.timestamp() - time.time()
    assert 590 < lifetime <= 600
    assert served.outcomes == [("issued", "")]


async def test_refusals_have_clear_status_codes_and_issue_nothing(served: Served) -> None:
    client = served.client()
    good_csr = make_csr(generate_key(), WEB)
    cases = [
        ("not a csr", served.token(), grpc.StatusCode.INVALID_ARGUMENT),
        (good_csr, served.token(now=time.time() - 7200, ttl=60), grpc.StatusCode.UNAUTHENTICATED),
        (good_csr, create_token(generate_key(), WEB, 600), grpc.StatusCode.UNAUTHENTICATED),  # type: ignore[arg-type]
        (good_csr, None, grpc.StatusCode.UNAUTHENTICATED),
        (
            make_csr(generate_key(), Identity(TD, "shop", "admin")),
            served.token(),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (good_csr + "x" * 20_000, served.token(), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ]
    for csr, token, expected in cases:
        assert await call_status(client, csr, token) == expected, expected
    await client.close()
    assert served.issued() == 0
    reasons = [reason for _, reason in served.outcomes]
    assert reasons == [
        "CsrRejected",
        "AuthenticationError",
        "AuthenticationError",
        "AuthenticationError",
        "IdentityMismatch",
    ]  # the oversized request never reaches the service


async def test_error_messages_say_what_is_wrong(served: Served) -> None:
    client = served.client()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.create_certificate(
            make_csr(generate_key(), Identity(TD, "shop", "admin")), token=served.token()
        )
    assert "spiffe://cluster.local/ns/shop/sa/admin" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.create_certificate("x", token=served.token(now=time.time() - 7200, ttl=60))
    assert "expired" in (info.value.details() or "")
    await client.close()


async def test_rate_limit_per_caller(tmp_path: Path) -> None:
    s = Served(tmp_path / "ca", burst=3)
    await s.server.start("127.0.0.1:0")
    client = s.client()
    csr = make_csr(generate_key(), WEB)
    for _ in range(3):
        await client.create_certificate(csr, token=s.token())
    assert await call_status(client, csr, s.token()) == grpc.StatusCode.RESOURCE_EXHAUSTED
    other = Identity(TD, "shop", "api")
    await client.create_certificate(make_csr(generate_key(), other), token=s.token(other))
    await client.close()
    await s.server.stop(0)
    assert s.issued() == 4


async def test_renewal_with_a_client_certificate_of_this_ca(served: Served) -> None:
    key = generate_key()
    chain = served.ca.issue(make_csr(key, WEB), WEB, 600)
    client = served.client(
        served.server.mtls_port, client_cert=(key_to_pem(key).encode(), "".join(chain).encode())
    )
    renewed = await client.create_certificate(make_csr(generate_key(), WEB), 600)
    assert identity_of(load_certs_pem(renewed[0])[0]) == WEB
    other = make_csr(generate_key(), Identity(TD, "shop", "admin"))
    assert await call_status(client, other, None) == grpc.StatusCode.PERMISSION_DENIED
    await client.close()


async def test_foreign_client_certificate_is_refused_at_the_handshake(
    served: Served, tmp_path: Path
) -> None:
    foreign = load_self_signed(tmp_path / "foreign", TD)
    key = generate_key()
    chain = foreign.issue(make_csr(key, WEB), WEB, 600)
    client = served.client(
        served.server.mtls_port, client_cert=(key_to_pem(key).encode(), "".join(chain).encode())
    )
    client.timeout = 3.0
    assert await call_status(client, make_csr(key, WEB), None) in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await client.close()
    assert served.issued() == 0


@pytest.fixture
def server_in_another_loop(tmp_path: Path) -> Iterator[Served]:
    """A CA server running on its own event loop in a thread (as another host's agent)."""
    s = Served(tmp_path / "remote-ca")
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(s.server.start("127.0.0.1:0"))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield s
    asyncio.run_coroutine_threadsafe(s.server.stop(0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


async def test_upstream_mode_gets_certificates_with_a_token(
    server_in_another_loop: Served, tmp_path: Path
) -> None:
    remote = server_in_another_loop
    token_file = tmp_path / "token"
    token_file.write_text(remote.token() + "\n")
    issuer = UpstreamIssuer(remote.client(), token_file, remote.ca.roots_pem)
    manager = WorkloadCertManager([WEB], issuer, tmp_path / "certs", ttl=600)
    await manager.start()
    await manager.stop()
    (cert,) = manager.certificates()
    assert cert.identity == WEB
    verify_chain([cert.cert_chain_pem], cert.roots_pem)
    assert load_certs_pem(cert.roots_pem) == [remote.ca.roots[0]]
    # A token for another service account cannot get this identity: retried, never issued.
    token_file.write_text(remote.token(Identity(TD, "shop", "api")))
    failing = WorkloadCertManager([WEB], issuer, tmp_path / "other", ttl=600)
    assert await failing.renew_due() == 0 and failing.certificates() == ()
    await issuer.close()
    assert remote.issued() == 1


async def test_agent_serves_certificates_and_the_ca(tmp_path: Path) -> None:
    config = parse_config(
        f"""
state_dir: {tmp_path}/state
admin: {{port: 0}}
sources: {{files: null}}
ca:
  mode: self-signed
  workload_ttl: 1h
  serve: {{address: "127.0.0.1:0"}}
workloads:
  - {{name: web, namespace: shop, service_account: web, ports: [{{port: 9080}}]}}
""",
        tmp_path / "agent.yaml",
    )
    agent = Agent(config, adapter_factory=lambda cfg: [])
    await agent.start()
    try:
        (cert,) = agent._proxy.certificates
        assert cert.identity == WEB and cert.not_after - time.time() > 3500
        port = agent.ca.server.port
        ca_dir = tmp_path / "state" / "ca"
        client = CertificateClient(
            f"127.0.0.1:{port}", root_cert_pem=(ca_dir / "root-cert.pem").read_bytes()
        )
        token = create_token(token_key(ca_dir), WEB, 600)
        chain = await client.create_certificate(make_csr(generate_key(), WEB), token=token)
        await client.close()
        assert identity_of(load_certs_pem(chain[0])[0]) == WEB
        text = agent.metrics.exposition().decode()
        assert 'meshagent_ca_issued_total{kind="workload"} 1.0' in text
        assert 'meshagent_ca_issued_total{kind="served"} 1.0' in text
        # A rotation reaches the ProxySpec (and so the translator) through the callback.
        manager = agent.ca.manager
        for state in manager._states.values():
            state.renew_at = 0.0
        assert await manager.renew_due() == 1
        (rotated,) = agent._proxy.certificates
        assert rotated.serial != cert.serial and rotated.identity == WEB
        cert = rotated
        assert (
            'meshagent_cert_expiry_seconds{identity="spiffe://cluster.local/ns/shop/sa/web"}'
            in text
        )
    finally:
        await agent.stop()
    restarted = Agent(config, adapter_factory=lambda cfg: [])
    await restarted.start()
    try:
        assert restarted._proxy.certificates == (cert,)  # reused, not reissued
    finally:
        await restarted.stop()
    await async_wait_for(lambda: restarted.ca is None, what="CA runtime stopped")
