"""The whole agent with a supervised real Envoy: files in, ACKed xDS out, /readyz 200."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meshagent.agent.config import load_config
from meshagent.agent.daemon import Agent
from tests.polling import async_wait_for

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "mesh"
DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


async def wait_status(port: int, path: str, status: int) -> str:
    def answered() -> tuple[str] | None:  # a tuple: truthy even when the body is empty
        code, body = get(port, path)
        return (body,) if code == status else None

    what = f"{path} answering {status}"
    return (await async_wait_for(answered, timeout=DEADLINE_S, what=what, blocking=True))[0]


@pytest.mark.envoy
async def test_agent_serves_envoy_until_ready(tmp_path: Path) -> None:
    shutil.copytree(QUICKSTART, tmp_path / "mesh")
    envoy_admin, offset_base = free_port(), 20000
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(
        f"node: {{id: it, namespace: demo}}\nstate_dir: state\nadmin: {{port: 0}}\n"
        f"envoy: {{manage: true, admin_port: {envoy_admin}, drain_seconds: 0}}\n"
        f"outbound: {{port_offset: {offset_base + free_port() % 20000}}}\n"
        "sources: {files: {paths: [mesh/], debounce_ms: 50}}\n"
    )
    agent = Agent(load_config(config_path), envoy_output=subprocess.DEVNULL)
    await agent.start()
    try:
        assert agent.admin is not None
        assert await wait_status(agent.admin.port, "/readyz", 200) == "ready\n"
        listeners = await wait_status(envoy_admin, "/listeners", 200)
        assert "127.0.0.1_" in listeners
        metrics = await wait_status(agent.admin.port, "/metrics", 200)
        assert 'meshagent_source_synced{source="files"} 1.0' in metrics
    finally:
        await asyncio.wait_for(agent.stop(), DEADLINE_S)


@pytest.mark.envoy
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_a_listener_port_taken_keeps_the_agent_not_ready_until_a_retry_binds_it(
    tmp_path: Path, delta: bool
) -> None:
    shutil.copytree(QUICKSTART, tmp_path / "mesh")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = int(blocker.getsockname()[1])
    if taken <= 8080:
        blocker.close()
        pytest.skip("the ephemeral port is below the quickstart's 8080 listener")
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(
        f"node: {{id: it, namespace: demo}}\nstate_dir: state\nadmin: {{port: 0}}\n"
        f"envoy: {{manage: true, admin_port: {free_port()}, drain_seconds: 0}}\n"
        f"outbound: {{port_offset: {taken - 8080}}}\n"  # the quickstart listens on 8080
        f"xds: {{delta: {str(delta).lower()}}}\n"
        "sources: {files: {paths: [mesh/], debounce_ms: 50}}\n"
    )
    agent = Agent(load_config(config_path), envoy_output=subprocess.DEVNULL)
    await agent.start()
    try:
        assert agent.admin is not None
        body = await wait_status(agent.admin.port, "/readyz", 503)
        while "cannot bind" not in body:  # first not connected, then the rejection
            body = await wait_status(agent.admin.port, "/readyz", 503)
        assert f"127.0.0.1:{taken}" in body and "Address already in use" in body
        errors = str(agent.config_errors())  # located: the file whose service made the listener
        assert "services.yaml" in errors and "cannot bind" in errors
        blocker.close()
        assert await wait_status(agent.admin.port, "/readyz", 200) == "ready\n"
        with socket.create_connection(("127.0.0.1", taken), timeout=2):
            pass  # Envoy listens there now
    finally:
        blocker.close()
        await asyncio.wait_for(agent.stop(), DEADLINE_S)
