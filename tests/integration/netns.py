"""Network namespaces as test "hosts": each has its own interfaces, netfilter and resolver.

Only root can make them; `require_netns()` skips a test with the reason otherwise. Names carry
the test process's pid so that parallel runs never meet, and `namespaces()` deletes every
namespace it made (and so every process left inside) whatever the test did. Addresses come from
a private range that exists only inside these namespaces; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534  # the uid of the "application": captured, unlike root's Envoy and agent


def require_netns() -> None:
    """Skip the calling test unless network namespaces and netfilter can be used here."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces and netfilter need root")
    for tool in ("ip", "iptables-restore", "iptables-save"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make system-deps installs iptables)")


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


@dataclass
class Netns:
    """One namespace; `procs` are the processes started in it (stopped by namespaces())."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cmd(self, args: Sequence[str], uid: int | None = None) -> list[str]:
        """args run in the namespace; as uid when given (`ip netns exec` itself needs root)."""
        if uid is not None:
            args = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *args]
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cmd(args), check=check, capture_output=True, text=True, timeout=60
        )

    def start(self, args: Sequence[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
        out = open(log, "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(  # type: ignore[call-overload]
            self.cmd(args), stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, **kwargs
        )
        self.procs.append(proc)
        return proc

    def http(
        self,
        url: str,
        *,
        host: str = "",
        uid: int | None = NOBODY,
        timeout: float = 5.0,
    ) -> tuple[int, str] | None:
        """GET url from inside the namespace as uid (the captured application by default);
        (status, body), or None when the connection failed."""
        script = (
            "import json,sys,urllib.request as u\n"
            "req=u.Request(sys.argv[1],headers={'Host':sys.argv[2]} if sys.argv[2] else {})\n"
            "op=u.build_opener(u.ProxyHandler({}))\n"
            "try:\n"
            f" r=op.open(req,timeout={timeout}); print(json.dumps([r.status,r.read().decode()]))\n"
            "except u.HTTPError as e: print(json.dumps([e.code,e.read().decode()]))\n"
            "except Exception: print(json.dumps(None))\n"
        )
        done = subprocess.run(
            self.cmd([sys.executable, "-c", script, url, host], uid),
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )
        found = json.loads(done.stdout or "null")
        return None if found is None else (int(found[0]), str(found[1]))

    def tcp_connects(self, address: str, port: int, *, uid: int | None = None) -> bool:
        """Whether a TCP connection from inside the namespace to address:port is accepted
        and not reset at once."""
        script = (
            "import socket,sys\n"
            "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n"
            "s.settimeout(1)\n"
            "try:\n"
            "  data=s.recv(64)\n"
            "  sys.exit(0 if data else 1)\n"
            "except socket.timeout: sys.exit(0)\n"
            "except OSError: sys.exit(1)\n"
        )
        done = subprocess.run(
            self.cmd([sys.executable, "-c", script, address, str(port)], uid),
            capture_output=True,
            timeout=30,
        )
        return done.returncode == 0


def _link(a: Netns, a_ip: str, b: Netns, b_ip: str, tag: str) -> None:
    """A veth pair between a and b with a_ip/24 and b_ip/24."""
    left, right = f"v{tag}a", f"v{tag}b"
    _run("ip", "link", "add", left, "type", "veth", "peer", "name", right)
    for ns, dev, ip in ((a, left, a_ip), (b, right, b_ip)):
        _run("ip", "link", "set", dev, "netns", ns.name)
        ns.run("ip", "addr", "add", f"{ip}/24", "dev", dev)
        ns.run("ip", "link", "set", dev, "up")


@contextmanager
def namespaces(count: int) -> Iterator[list[Netns]]:
    """count fresh namespaces, loopback up, the first linked to each other one: host 0 is
    10.<80+i>.0.1 and host i (i >= 1) is 10.<80+i>.0.2; host 0's default route goes to
    host 1. Deleted on exit."""
    base = f"ma{os.getpid() % 100000}"
    made: list[Netns] = []
    try:
        for i in range(count):
            ns = Netns(f"{base}n{i}")
            _run("ip", "netns", "add", ns.name)
            made.append(ns)
            ns.run("ip", "link", "set", "lo", "up")
        for i in range(1, count):
            _link(made[0], f"10.{80 + i}.0.1", made[i], f"10.{80 + i}.0.2", f"{base}{i}")
        if count > 1:  # as a VM has: any address is routable, so capture sees it
            made[0].run("ip", "route", "add", "default", "via", "10.81.0.2")
        yield made
    finally:
        for ns in made:
            for proc in ns.procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in ns.procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            pids = subprocess.run(
                ["ip", "netns", "pids", ns.name], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:  # anything a process left behind (Envoy of a killed agent)
                subprocess.run(["kill", "-9", pid], check=False)
            subprocess.run(["ip", "netns", "del", ns.name], check=False)
