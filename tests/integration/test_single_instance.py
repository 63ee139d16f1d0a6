"""One agent per state dir and per xDS socket: a second `meshagent run` refuses to start with
one line and a non-zero exit, and leaves the live agent's socket alone.

Real agent processes (no Envoy); a Unix socket path must stay short, hence the /tmp directory.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.net_helpers import free_port, http_get
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]


def write_config(root: Path, name: str, state_dir: str, uds: str) -> tuple[Path, int]:
    port = free_port()
    config = {
        "node": {"id": "single"}, "state_dir": state_dir, "xds": {"uds": uds},
        "admin": {"port": port}, "sources": {"files": {"paths": ["mesh"]}},
        "log": {"format": "json"},
    }  # fmt: skip
    path = root / name
    path.write_text(yaml.safe_dump(config))
    return path, port


def run(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "meshagent.agent.cli", "run", "-c", str(config)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.communicate(timeout=30)


@pytest.fixture
def root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ma-one", dir="/tmp") as tmp:
        (Path(tmp) / "mesh").mkdir()
        yield Path(tmp)


def assert_refused(proc: subprocess.Popen[str], what: str) -> None:
    output, _ = proc.communicate(timeout=30)
    lines = [line for line in output.splitlines() if line.strip()]
    assert proc.returncode != 0, output
    assert len(lines) == 1, output
    assert what in lines[0] and "Traceback" not in output, output


def test_second_agent_on_same_state_dir_or_socket_refuses(root: Path) -> None:
    sock = root / "xds.sock"
    first_config, first_port = write_config(root, "a.yaml", "state", str(sock))
    first = run(first_config)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{first_port}/healthz").status == 200,
                 timeout=30, what="first agent up")  # fmt: skip
        assert listening(sock)

        # Same state dir (and socket): the lock refuses.
        same_config, _ = write_config(root, "b.yaml", "state", str(sock))
        assert_refused(run(same_config), "another meshagent (pid ")
        # Another state dir, same socket: the live socket is not taken over.
        other_config, _ = write_config(root, "c.yaml", "state2", str(sock))
        assert_refused(run(other_config), "is listening on this socket")

        assert listening(sock), "the live agent's socket was removed"
        assert first.poll() is None
        assert http_get(f"http://127.0.0.1:{first_port}/healthz").status == 200
    finally:
        stop(first)

    # The lock died with its process: the next agent starts, on a fresh socket.
    again = run(first_config)
    try:
        wait_for(lambda: listening(sock), timeout=30, what="restarted agent listening")
    finally:
        stop(again)


def test_stale_socket_file_is_replaced(root: Path) -> None:
    sock = root / "xds.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))  # bound, never listening, closed: what a killed agent leaves
    stale.close()
    config, port = write_config(root, "a.yaml", "state", str(sock))
    proc = run(config)
    try:
        wait_for(lambda: listening(sock), timeout=30, what="agent listening on the socket")
        assert http_get(f"http://127.0.0.1:{port}/healthz").status == 200
    finally:
        stop(proc)
