"""WorkloadCertManager: issuance, 0600 persistence, reuse after restart, renewal at 50% with
jitter, retries, rotation callbacks. A fake clock drives time; nothing sleeps."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from meshagent.ca import certstore
from meshagent.ca.errors import UpstreamError
from meshagent.ca.issuer import LocalIssuer
from meshagent.ca.keys import load_certs_pem
from meshagent.ca.state import load_self_signed
from meshagent.ca.workload import WorkloadCertManager
from meshagent.model.identity import Identity, WorkloadCertificate
from tests.ca_helpers import FakeClock, verify_chain

TD = "cluster.local"
WEB, API = Identity(TD, "shop", "web"), Identity(TD, "shop", "api")
NOW = 1_900_000_000.0
TTL = 1000.0


class FlakyIssuer(LocalIssuer):
    """A LocalIssuer that fails while `failing` is set, and counts calls."""

    failing = False
    calls = 0

    async def issue(self, csr_pem: str, identity: Identity, ttl: float) -> list[str]:
        self.calls += 1
        if self.failing:
            raise UpstreamError("upstream CA unreachable")
        return await super().issue(csr_pem, identity, ttl)


def make(
    tmp_path: Path,
    clock: FakeClock,
    *,
    rand: float = 0.5,
    key_type: str = "ec-p256",
    identities: Sequence[Identity] = (WEB,),
) -> tuple[WorkloadCertManager, FlakyIssuer, list[tuple[WorkloadCertificate, ...]]]:
    ca = load_self_signed(tmp_path / "ca", TD, clock=clock)
    issuer = FlakyIssuer(ca)
    rotations: list[tuple[WorkloadCertificate, ...]] = []
    manager = WorkloadCertManager(
        identities,
        issuer,
        tmp_path / "certs",
        key_type=key_type,
        ttl=TTL,
        clock=clock,
        rand=lambda: rand,
        on_rotate=rotations.append,
    )
    return manager, issuer, rotations


async def test_issues_one_certificate_per_identity(tmp_path: Path) -> None:
    manager, _, rotations = make(tmp_path, FakeClock(NOW), identities=(WEB, API, WEB))
    assert await manager.renew_due() == 2
    certs = manager.certificates()
    assert [c.identity for c in certs] == [WEB, API]
    assert rotations == [certs]
    web = certs[0]
    assert web.not_after == NOW + TTL
    # The chain is leaf (+ intermediates); the root travels in the trust bundle.
    assert len(load_certs_pem(web.cert_chain_pem)) == 1
    verify_chain([web.cert_chain_pem], web.roots_pem, at=NOW)
    assert web.serial == format(load_certs_pem(web.cert_chain_pem)[0].serial_number, "x")


async def test_files_are_0600_and_reused_after_restart(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    manager, _, _ = make(tmp_path, clock)
    await manager.renew_due()
    where = certstore.identity_dir(tmp_path / "certs", WEB)
    for name in ("key.pem", "cert-chain.pem", "root-cert.pem"):
        assert stat.S_IMODE((where / name).stat().st_mode) == 0o600
    os.utime(where / "cert-chain.pem", (NOW, NOW))  # issued "now" on the fake clock
    clock.now = NOW + 100
    restarted, issuer, rotations = make(tmp_path, clock)
    assert restarted.load_stored() == 1
    assert await restarted.renew_due() == 0 and issuer.calls == 0 and rotations == []
    assert restarted.certificates() == manager.certificates()


async def test_expired_or_foreign_or_other_key_type_certs_are_reissued(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    manager, _, _ = make(tmp_path, clock)
    await manager.renew_due()
    clock.now = NOW + TTL + 1
    assert make(tmp_path, clock)[0].load_stored() == 0  # expired
    clock.now = NOW + 10
    assert make(tmp_path, clock, key_type="rsa-2048")[0].load_stored() == 0
    (tmp_path / "ca" / "root-key.pem").unlink()
    (tmp_path / "ca" / "root-cert.pem").unlink()
    assert make(tmp_path, clock)[0].load_stored() == 0  # another CA now
    where = certstore.identity_dir(tmp_path / "certs", WEB)
    (where / "cert-chain.pem").write_text("garbage")
    assert make(tmp_path, clock)[0].load_stored() == 0


@pytest.mark.parametrize(("rand", "fraction"), [(0.0, 0.45), (0.5, 0.5), (1.0, 0.55)])
async def test_renews_at_half_lifetime_with_jitter(
    tmp_path: Path, rand: float, fraction: float
) -> None:
    clock = FakeClock(NOW)
    manager, _issuer, rotations = make(tmp_path, clock, rand=rand)
    await manager.renew_due()
    due = NOW + TTL * fraction
    assert manager.next_renewal() == pytest.approx(due)
    clock.now = due - 0.001
    assert await manager.renew_due() == 0
    clock.now = due
    old = manager.certificates()[0]
    assert await manager.renew_due() == 1
    new = manager.certificates()[0]
    assert new.serial != old.serial and new.private_key_pem != old.private_key_pem
    assert len(rotations) == 2 and rotations[-1] == (new,)
    assert manager.next_renewal() == pytest.approx(due + TTL * fraction)


async def test_failures_are_retried_with_backoff_and_never_raise(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    manager, issuer, rotations = make(tmp_path, clock)
    issuer.failing = True
    assert await manager.renew_due() == 0
    assert manager.certificates() == () and rotations == []
    assert manager.next_renewal() == NOW + 1
    clock.now = NOW + 1
    await manager.renew_due()
    assert manager.next_renewal() == NOW + 3  # 1 s, then 2 s
    issuer.failing = False
    clock.now = NOW + 3
    assert await manager.renew_due() == 1 and len(rotations) == 1


async def test_loop_renews_using_the_injected_sleep(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    ca = load_self_signed(tmp_path / "ca", TD, clock=clock)
    slept: list[float] = []
    rotations: list[tuple[WorkloadCertificate, ...]] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        if len(slept) >= 3:
            raise _Done

    manager = WorkloadCertManager(
        [WEB],
        LocalIssuer(ca),
        tmp_path / "certs",
        ttl=TTL,
        clock=clock,
        rand=lambda: 0.5,
        sleep=fake_sleep,
        on_rotate=rotations.append,
    )
    await manager.start()
    assert manager._task is not None
    with pytest.raises(_Done):
        await manager._task
    assert slept == [pytest.approx(500.0)] * 3
    assert len(rotations) == 3  # the first issue + two renewals (the third sleep stopped it)


class _Done(Exception):
    pass
