"""Multi-process CreateCertificate serving (`ca.serve.workers`): issuing through two processes
that share one port, the rate-limit share, crash restarts, and workers that never outlive the
agent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from meshagent.agent.config import parse_config
from meshagent.agent.daemon import Agent
from meshagent.ca.authority import identity_of
from meshagent.ca.keys import generate_key, load_certs_pem, make_csr
from meshagent.ca.proto.messages import METHOD, IstioCertificateRequest, IstioCertificateResponse
from meshagent.ca.service import CertificateServer
from meshagent.ca.settings import CaConfig, CaServeConfig
from meshagent.ca.setup import build_service, open_authority
from meshagent.ca.state import token_key
from meshagent.ca.tokens import create_token
from meshagent.ca.workers import WorkerPool, WorkerSpec
from meshagent.errors import ConfigError
from meshagent.model.identity import Identity
from tests.ca_helpers import verify_chain
from tests.polling import async_wait_for, wait_for

TD = "cluster.local"
WEB = Identity(TD, "shop", "web")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class TwoWorkers:
    """Worker 0 in this process, worker 1 spawned; what each of them issued."""

    config: CaConfig
    server: CertificateServer
    pool: WorkerPool
    here: list[str] = field(default_factory=list)
    there: list[str] = field(default_factory=list)

    async def issue_once(self) -> list[str]:
        """One call on a new connection (the kernel picks the worker per connection)."""
        roots = grpc.ssl_channel_credentials(self.server.service.ca.roots_pem.encode())
        options = [("grpc.use_local_subchannel_pool", 1)]
        channel = grpc.aio.secure_channel(f"127.0.0.1:{self.server.port}", roots, options)
        call = channel.unary_unary(
            METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=IstioCertificateResponse.FromString,
        )
        token = create_token(token_key(self.config.dir), WEB, 600)
        request = IstioCertificateRequest(csr=make_csr(generate_key(), WEB), validity_duration=600)
        try:
            response = await call(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
        finally:
            await channel.close()
        return list(response.cert_chain)


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[TwoWorkers]:
    serve = CaServeConfig(address="127.0.0.1:0", rate=100.0, burst=100, workers=2)
    config = CaConfig(mode="self-signed", dir=tmp_path / "ca", trust_domain=TD, serve=serve)
    ca = open_authority(config)
    assert ca is not None
    here: list[str] = []
    service = build_service(config, ca, observe=lambda o, r: here.append(o), workers=2)
    server = CertificateServer(service, reuse_port=True)
    port = await server.start("127.0.0.1:0")
    there: list[str] = []
    spec = WorkerSpec(config, f"127.0.0.1:{port}", True, None, ("localhost",), 2)
    pool = WorkerPool(spec, observe=lambda o, r: there.append(o))
    await pool.start()
    try:
        yield TwoWorkers(config, server, pool, here, there)
    finally:
        await asyncio.wait_for(pool.stop(), 15)
        await server.stop(0)


async def test_two_workers_share_the_port_and_issue_verified_chains(two: TwoWorkers) -> None:
    # 24 connections all landing on one worker has probability 2**-23.
    for _ in range(24):
        chain = await two.issue_once()
        verify_chain(chain, two.server.service.ca.roots_pem)
        assert identity_of(load_certs_pem(chain[0])[0]) == WEB
    await async_wait_for(
        lambda: len(two.here) + len(two.there) == 24 and two.here and two.there,
        timeout=10,
        what="both workers' issuances counted",
    )
    assert set(two.here) == set(two.there) == {"issued"}
    # Each of the two processes enforces half of the configured per-caller limit.
    limiter = two.server.service.limiter
    assert (limiter.rate, limiter.burst) == (50.0, 50.0)


async def test_a_crashed_worker_is_restarted_and_never_hangs_the_parent(
    two: TwoWorkers,
) -> None:
    old = two.pool.pids[1]
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await async_wait_for(lambda: not _running(old), timeout=15, what="worker 1 gone")
    # The survivor keeps serving the port meanwhile. A connection the kernel handed to the
    # dying socket just before it closed is reset (seen within ~10 ms of the kill): gRPC
    # clients retry UNAVAILABLE, and so does this one, a bounded number of times.
    failures = []
    for _ in range(5):
        try:
            chain = await two.issue_once()
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
            failures.append(exc)
    assert len(failures) < 5, failures
    verify_chain(chain, two.server.service.ca.roots_pem)
    new = await async_wait_for(
        lambda: (pid := two.pool.pids[1]) not in (None, old) and pid,
        timeout=15,
        what="worker 1 restarted",
    )
    await async_wait_for(lambda: two.pool._workers[1].ready.done(), timeout=15, what="ready")
    await asyncio.wait_for(two.pool.stop(), 15)
    assert not _running(new)


def test_workers_exit_when_the_parent_dies(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, sys
            sys.path.insert(0, {str(ROOT)!r})
            from pathlib import Path
            from meshagent.ca.settings import CaConfig
            from meshagent.ca.workers import WorkerPool, WorkerSpec

            async def main():
                config = CaConfig(mode="self-signed", dir=Path({str(tmp_path / "ca")!r}))
                spec = WorkerSpec(config, "127.0.0.1:0", False, None, ("localhost",), 2)
                pool = WorkerPool(spec)
                await pool.start()
                print("worker-pid", pool.pids[1], flush=True)
                await asyncio.sleep(60)

            if __name__ == "__main__":
                asyncio.run(main())
            """
        )
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert parent.stdout is not None
        lines = (parent.stdout.readline() for _ in range(50))  # the worker logs here too
        worker = int(next(line for line in lines if line.startswith("worker-pid")).split()[1])
        assert _running(worker)
        parent.kill()  # no clean-up in the parent: the worker sees EOF on its pipe
        parent.wait(10)
        wait_for(lambda: not _running(worker), timeout=15, what="orphaned worker exits")
    finally:
        parent.kill()
        parent.wait(10)


async def test_agent_with_two_workers_serves_and_stops_them(tmp_path: Path) -> None:
    config = parse_config(
        f"""
state_dir: {tmp_path}/state
admin: {{port: 0}}
sources: {{files: null}}
ca:
  mode: self-signed
  serve: {{address: "127.0.0.1:0", workers: 2}}
""",
        tmp_path / "agent.yaml",
    )
    assert config.ca is not None and config.ca.serve.workers == 2
    agent = Agent(config, adapter_factory=lambda cfg: [])
    await agent.start()
    try:
        pids = [p for p in agent.ca.workers.pids.values() if p]
        assert len(pids) == 1 and _running(pids[0])
    finally:
        await asyncio.wait_for(agent.stop(), 20)
    wait_for(lambda: not _running(pids[0]), timeout=10, what="worker stopped with the agent")


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_workers_config_is_bounded(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"ca\.serve\.workers"):
        parse_config(f"ca: {{serve: {{workers: {value}}}}}", tmp_path / "agent.yaml")


def _running(pid: int) -> bool:
    """Whether pid is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
