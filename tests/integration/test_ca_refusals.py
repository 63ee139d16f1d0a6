"""CreateCertificate over real loopback TLS: lifetimes above the maximum are refused as Istio
refuses them, a malformed request is INVALID_ARGUMENT, a token naming an invalid identity is
UNAUTHENTICATED; each issuance is logged once, refusals are counted by reason and logged at a
bounded rate; the agent's metrics count them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from meshagent.agent.config import parse_config
from meshagent.agent.daemon import Agent
from meshagent.ca.authority import CertificateAuthority, identity_of
from meshagent.ca.client import CertificateClient
from meshagent.ca.issuer import IssuanceService
from meshagent.ca.keys import generate_key, load_certs_pem, make_csr
from meshagent.ca.proto.messages import METHOD, IstioCertificateRequest
from meshagent.ca.ratelimit import LogBudget, TokenBucketLimiter
from meshagent.ca.service import CertificateServer
from meshagent.ca.state import load_self_signed, token_key
from meshagent.ca.tokens import TokenVerifier, create_token
from meshagent.model.identity import Identity
from tests.ca_helpers import FakeClock, forged_identity

TD = "cluster.local"
WEB = Identity(TD, "shop", "web")
MAX_TTL = 3600


class Served:
    """A CA server whose maximum lifetime is MAX_TTL, and what it observed."""

    def __init__(self, ca_dir: Path) -> None:
        self.ca_dir = ca_dir
        self.ca: CertificateAuthority = load_self_signed(ca_dir, TD, max_ttl=MAX_TTL)
        self.outcomes: list[tuple[str, str]] = []
        self.log_clock = FakeClock(0.0)
        self.service = IssuanceService(
            self.ca,
            TokenVerifier(token_key(ca_dir).public_key(), TD),
            TokenBucketLimiter(1000.0, 1000),
            observe=lambda outcome, reason: self.outcomes.append((outcome, reason)),
            log_budget=LogBudget(2, 60.0, clock=self.log_clock),
        )
        self.server = CertificateServer(self.service)

    def token(self, identity: Identity = WEB) -> str:
        return create_token(token_key(self.ca_dir), identity, 600)

    def client(self) -> CertificateClient:
        return CertificateClient(
            f"127.0.0.1:{self.server.port}", root_cert_pem=self.ca.roots_pem.encode()
        )

    def raw_call(self) -> tuple[grpc.aio.Channel, Any]:
        """A generic unary call that sends bytes as they are (no serializer)."""
        creds = grpc.ssl_channel_credentials(self.ca.roots_pem.encode())
        channel = grpc.aio.secure_channel(f"127.0.0.1:{self.server.port}", creds)
        return channel, channel.unary_unary(METHOD)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = Served(tmp_path / "ca")
    await s.server.start("127.0.0.1:0")
    yield s
    await s.server.stop(0)


async def _refusal(call: Any, *args: Any, **kwargs: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(*args, **kwargs)
    return info.value


async def test_a_lifetime_above_the_maximum_is_invalid_argument(served: Served) -> None:
    client = served.client()
    csr = make_csr(generate_key(), WEB)
    error = await _refusal(client.create_certificate, csr, MAX_TTL + 1, token=served.token())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requested lifetime 3601s (1h0m) is greater than the maximum 3600s" in error.details()
    error = await _refusal(client.create_certificate, csr, 2**62, token=served.token())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The maximum itself is granted; 0 asks for the default lifetime (24h here) ...
    chain = await client.create_certificate(csr, MAX_TTL, token=served.token())
    leaf = load_certs_pem(chain[0])[0]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == MAX_TTL + 60
    await client.close()
    assert served.outcomes == [
        ("refused", "LifetimeRejected"),
        ("refused", "LifetimeRejected"),
        ("issued", ""),
    ]


async def test_a_malformed_request_is_invalid_argument_and_counted(served: Served) -> None:
    channel, call = served.raw_call()
    metadata = (("authorization", f"Bearer {served.token()}"),)
    bad_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (csr, a proto3 string) with invalid UTF-8
    for raw in (b"\xff\xff\xff\xff", b"\x0a\x05ab", bad_utf8):
        error = await _refusal(call, raw, metadata=metadata, timeout=10)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not an IstioCertificateRequest" in error.details()
    # The same channel, well-formed bytes: issued.
    good = IstioCertificateRequest(csr=make_csr(generate_key(), WEB), validity_duration=600)
    reply = await call(good.SerializeToString(), metadata=metadata, timeout=10)
    assert b"BEGIN CERTIFICATE" in reply
    await channel.close()
    assert served.outcomes == [("refused", "MalformedRequest")] * 3 + [("issued", "")]


async def test_a_token_naming_an_invalid_identity_is_unauthenticated(served: Served) -> None:
    forged = forged_identity(TD, "x", "x/ns/client/sa/y")
    token = create_token(token_key(served.ca_dir), forged, 600)
    client = served.client()
    csr = make_csr(generate_key(), Identity(TD, "client", "y"))
    error = await _refusal(client.create_certificate, csr, 600, token=token)
    await client.close()
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "invalid identity" in error.details()
    assert served.outcomes == [("refused", "AuthenticationError")]


async def test_each_issuance_is_logged_once_with_identity_serial_expiry_and_peer(
    served: Served,
) -> None:
    client = served.client()
    with capture_logs() as logs:
        chain = await client.create_certificate(
            make_csr(generate_key(), WEB), 600, token=served.token()
        )
    await client.close()
    leaf = load_certs_pem(chain[0])[0]
    issued = [e for e in logs if e["event"] == "ca_certificate_issued"]
    assert len(issued) == 1, logs
    (event,) = issued
    assert event["identity"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert event["serial"] == format(leaf.serial_number, "x")
    assert event["not_after"] == leaf.not_valid_after_utc.isoformat()
    assert event["peer"].startswith("ipv4:127.0.0.1:")
    assert identity_of(leaf) == WEB


async def test_refusals_are_logged_at_a_bounded_rate_and_all_counted(served: Served) -> None:
    client = served.client()
    csr = make_csr(generate_key(), WEB)
    with capture_logs() as logs:
        for _ in range(10):
            await _refusal(client.create_certificate, csr, 600, token="not.a.token")
        await _refusal(client.create_certificate, csr, MAX_TTL * 2, token=served.token())
        served.log_clock.now += 60.0  # the next window
        await _refusal(client.create_certificate, csr, 600, token="not.a.token")
    await client.close()
    refused = [e for e in logs if e["event"] == "ca_request_refused"]
    assert [(e["reason"], e["suppressed"]) for e in refused] == [
        ("AuthenticationError", 0),
        ("AuthenticationError", 0),
        ("LifetimeRejected", 0),  # its own budget
        ("AuthenticationError", 8),  # the 8 held back are reported with the next line
    ]
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") and e["error"] for e in refused)
    assert served.outcomes.count(("refused", "AuthenticationError")) == 11


def test_log_budget() -> None:
    clock = FakeClock(100.0)
    budget = LogBudget(3, 10.0, clock=clock)
    assert [budget.take("a") for _ in range(5)] == [0, 0, 0, None, None]
    assert budget.take("b") == 0  # per key
    clock.now += 9.9
    assert budget.take("a") is None
    clock.now += 0.1
    assert budget.take("a") == 3
    assert [budget.take("a") for _ in range(3)] == [0, 0, None]


async def test_agent_config_sets_the_maximum_and_metrics_count_refusals_by_reason(
    tmp_path: Path,
) -> None:
    config = parse_config(
        f"""
state_dir: {tmp_path}/state
admin: {{port: 0}}
sources: {{files: null}}
ca:
  workload_ttl: 30m
  max_workload_ttl: 1h
  serve: {{address: "127.0.0.1:0"}}
""",
        tmp_path / "agent.yaml",
    )
    assert config.ca is not None and config.ca.max_workload_ttl_s == 3600
    agent = Agent(config, adapter_factory=lambda cfg: [])
    await agent.start()
    try:
        ca_dir = tmp_path / "state" / "ca"
        client = CertificateClient(
            f"127.0.0.1:{agent.ca.server.port}",
            root_cert_pem=(ca_dir / "root-cert.pem").read_bytes(),
        )
        token = create_token(token_key(ca_dir), WEB, 600)
        csr = make_csr(generate_key(), WEB)
        error = await _refusal(client.create_certificate, csr, 7200, token=token)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        await _refusal(client.create_certificate, csr, 600, token="x.y.z")
        await client.create_certificate(csr, 3600, token=token)
        await client.close()
        text = agent.metrics.exposition().decode()
        assert 'meshagent_ca_failures_total{kind="served",reason="LifetimeRejected"} 1.0' in text
        assert 'meshagent_ca_failures_total{kind="served",reason="AuthenticationError"} 1.0' in text
        assert 'meshagent_ca_issued_total{kind="served"} 1.0' in text
    finally:
        await agent.stop()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ca: {max_workload_ttl: soon}", "ca.max_workload_ttl: 'soon' is not a duration"),
        (
            "ca: {workload_ttl: 2h, max_workload_ttl: 1h}",
            "ca.workload_ttl: is longer than ca.max_workload_ttl (1h0m)",
        ),
        ("ca: {workload_ttl: 91d}", "ca.workload_ttl: is longer than ca.max_workload_ttl"),
    ],
)
def test_max_workload_ttl_config_errors(tmp_path: Path, text: str, message: str) -> None:
    from meshagent.errors import ConfigError

    with pytest.raises(ConfigError, match=None) as info:
        parse_config(text, tmp_path / "agent.yaml")
    assert message in str(info.value)


def test_max_workload_ttl_default_is_90_days(tmp_path: Path) -> None:
    config = parse_config("ca: {}\n", tmp_path / "agent.yaml")
    assert config.ca is not None and config.ca.max_workload_ttl_s == 90 * 86400
