"""`meshagent capture` against real netfilter, in network namespaces this test creates.

Host A (the captured host) and host B are joined by a veth pair (192.0.2.1 and 192.0.2.2,
addresses that exist only inside these namespaces). Root only; skipped, saying why, when not
root or when iptables/nft/ip are missing. The namespaces are always deleted.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
A_IP, B_IP = "192.0.2.1", "192.0.2.2"
EXCLUDED_UID = "4242"
TOOLS = ("ip", "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore", "nft")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason="needs ip, iptables, ip6tables and nft (Debian: iproute2 iptables nftables; "
        "`make system-deps` installs them)",
    ),
]

SERVER = r"""
import selectors, socket, struct, sys
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    proto, addr, port, label = spec.split(",")
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if proto == "tproxy":  # IP_TRANSPARENT: accepts what TPROXY hands it
        sock.setsockopt(socket.SOL_IP, 19, 1)
        proto = "tcp"
    sock.bind((addr, int(port)))
    if proto == "tcp":
        sock.listen(16)
    sel.register(sock, selectors.EVENT_READ, (proto, label))
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        proto, label = key.data
        if proto == "udp":
            _, peer = key.fileobj.recvfrom(512)
            key.fileobj.sendto(label.encode(), peer)
            continue
        conn, _ = key.fileobj.accept()
        try:  # SO_ORIGINAL_DST: where the client meant to go, before REDIRECT
            port, ip = struct.unpack("!2xH4s8x", conn.getsockopt(socket.SOL_IP, 80, 16))
            dst = f"{socket.inet_ntoa(ip)}:{port}"
        except OSError:  # not NATed (nft without conntrack entry): the address reached
            dst = "%s:%d" % conn.getsockname()
        conn.sendall(f"{label} {dst}".encode())
        conn.close()
"""
CLIENT = r"""
import os, socket, sys
proto, host, port, uid, source = sys.argv[1:6]
if uid:
    os.setgroups([]); os.setgid(int(uid)); os.setuid(int(uid))
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
with socket.socket(socket.AF_INET, kind) as sock:
    sock.settimeout(5)
    if source:
        sock.bind((source, 0))
    if proto == "tcp":
        sock.connect((host, int(port)))
        print(sock.recv(200).decode())
    else:
        sock.sendto(b"q", (host, int(port)))
        print(sock.recv(200).decode())
"""


@dataclass
class Hosts:
    """Two namespaces joined by a veth pair, and the servers started in them."""

    a: str
    b: str
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def sh(self, ns: str, *cmd: str, stdin: str | None = None) -> str:
        done = subprocess.run(["ip", "netns", "exec", ns, *cmd], input=stdin, text=True,
                              capture_output=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, f"{cmd}: {done.stderr}"
        return done.stdout

    def capture(self, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "meshagent.agent.cli",
             "capture", *argv],
            text=True, capture_output=True, timeout=60, env=env,
        )  # fmt: skip

    def save(self, ns: str, version: int) -> str:
        text = self.sh(ns, "iptables-save" if version == 4 else "ip6tables-save")
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

    def serve(self, ns: str, *specs: str) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, *specs],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.servers.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready and proc.stdout.readline().strip() == "ready", specs

    def ask(
        self, ns: str, host: str, port: int, *, proto: str = "tcp", uid: str = "", source: str = ""
    ) -> str:
        out = self.sh(ns, sys.executable, "-c", CLIENT, proto, host, str(port), uid, source)
        return out.strip()


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    tag = uuid.uuid4().hex[:8]
    h = Hosts(a=f"macap-{tag}-a", b=f"macap-{tag}-b")
    try:
        for ns in (h.a, h.b):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
        subprocess.run(["ip", "link", "add", "veth-a", "netns", h.a, "type", "veth", "peer",
                        "name", "veth-b", "netns", h.b], check=True, timeout=30)  # fmt: skip
        for ns, dev, ip in ((h.a, "veth-a", A_IP), (h.b, "veth-b", B_IP)):
            h.sh(ns, "ip", "link", "set", "lo", "up")
            h.sh(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            h.sh(ns, "ip", "link", "set", dev, "up")
        yield h
    finally:
        for proc in h.servers:
            proc.kill()
            proc.wait(timeout=10)
        for ns in (h.a, h.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _someone_elses_rules(h: Hosts) -> None:
    """Rules that are not ours, in every table we touch: capture must leave them alone."""
    for tool in ("iptables", "ip6tables"):
        h.sh(h.a, tool, "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN")
        h.sh(
            h.a, tool, "-t", "mangle", "-A", "FORWARD", "-p", "tcp", "--dport", "9", "-j", "RETURN"
        )
        h.sh(
            h.a, tool, "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "9", "-j", "RETURN"
        )
        h.sh(h.a, tool, "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")


def _state(h: Hosts) -> tuple[str, str, str, str]:
    rules = h.sh(h.a, "ip", "-4", "rule") + h.sh(h.a, "ip", "-6", "rule")
    return h.save(h.a, 4), h.save(h.a, 6), rules, h.sh(h.a, "ip", "-6", "addr", "show", "dev", "lo")


@pytest.mark.parametrize("mode", ["REDIRECT", "TPROXY"])
def test_iptables_apply_twice_is_a_no_op_and_remove_leaves_no_trace(
    hosts: Hosts, mode: str
) -> None:
    _someone_elses_rules(hosts)
    pristine = _state(hosts)
    flags = ["-u", EXCLUDED_UID, "-g", EXCLUDED_UID, "-m", mode, "-b", "*", "-i", "*",
             "-x", "10.1.0.0/16", "--redirect-dns", "--capture-all-dns", "--drop-invalid",
             "--dual-stack"]  # fmt: skip

    first = hosts.capture(hosts.a, "apply", *flags)
    assert first.returncode == 0, first.stderr
    applied = _state(hosts)
    v4, v6 = applied[0], applied[1]
    assert ":ISTIO_OUTPUT - [0:0]" in v4 and "-A OUTPUT -j ISTIO_OUTPUT" in v4
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in v4
    assert "-A ISTIO_OUTPUT_DNS -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053" in v4
    assert "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN" in v4
    assert ":ISTIO_OUTPUT - [0:0]" in v6 and "::6/128" in applied[3]
    assert "-A POSTROUTING -o lo -j RETURN" in v4  # someone else's rule is still there
    if mode == "TPROXY":
        assert ":ISTIO_TPROXY - [0:0]" in v4 and "fwmark 0x539 lookup 133" in applied[2]
    else:
        assert "ISTIO_TPROXY" not in v4 and "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT" in v4

    second = hosts.capture(hosts.a, "apply", *flags)
    assert second.returncode == 0, second.stderr
    assert _state(hosts) == applied

    removed = hosts.capture(hosts.a, "remove", *flags)
    assert removed.returncode == 0, removed.stderr
    assert _state(hosts) == pristine
    assert "ISTIO" not in "".join(_state(hosts))


def test_remove_without_flags_or_cluster_env_still_removes_every_istio_chain_and_jump(
    hosts: Hosts,
) -> None:
    _someone_elses_rules(hosts)
    pristine = _state(hosts)
    flags = ["-b", "*", "-i", "*", "--redirect-dns", "--capture-all-dns", "-m", "TPROXY",
             "--dual-stack"]  # fmt: skip
    assert hosts.capture(hosts.a, "apply", *flags).returncode == 0
    assert "ISTIO" in hosts.save(hosts.a, 4) and "CONNMARK" in hosts.save(hosts.a, 6)
    gone = hosts.capture(hosts.a, "remove", "--cluster-env", "/nonexistent/cluster.env")
    assert gone.returncode == 0 and "warning: /nonexistent/cluster.env" in gone.stderr
    assert _state(hosts) == pristine


def test_nft_apply_twice_is_a_no_op_and_remove_leaves_no_trace(hosts: Hosts) -> None:
    hosts.sh(hosts.a, "nft", "-f", "-", stdin=(
        "table inet someone-else {\n chain input {\n  type filter hook input priority 0;\n"
        "  tcp dport 9 accept\n }\n}\n"))  # fmt: skip
    pristine = hosts.sh(hosts.a, "nft", "list", "ruleset")
    flags = ["--backend", "nft", "-u", EXCLUDED_UID, "-b", "*", "-i", "*", "--redirect-dns",
             "--capture-all-dns", "--drop-invalid", "--dual-stack", "-m", "TPROXY"]  # fmt: skip

    assert hosts.capture(hosts.a, "apply", *flags).returncode == 0
    applied = hosts.sh(hosts.a, "nft", "list", "ruleset")
    assert "table ip meshagent-nat" in applied and "table ip6 meshagent-mangle" in applied
    assert "redirect to :15001" in applied and "tproxy to :15006" in applied
    assert "table inet someone-else" in applied

    assert hosts.capture(hosts.a, "apply", *flags).returncode == 0
    assert hosts.sh(hosts.a, "nft", "list", "ruleset") == applied

    assert hosts.capture(hosts.a, "remove", *flags).returncode == 0
    assert hosts.sh(hosts.a, "nft", "list", "ruleset") == pristine
    assert "fwmark" not in hosts.sh(hosts.a, "ip", "rule")


def test_switching_backends_leaves_one_set_of_rules(hosts: Hosts) -> None:
    flags = ["-u", EXCLUDED_UID, "-b", "*", "-i", "*"]
    assert hosts.capture(hosts.a, "apply", *flags).returncode == 0
    assert "ISTIO_OUTPUT" in hosts.save(hosts.a, 4)
    assert hosts.capture(hosts.a, "apply", "--backend", "nft", *flags).returncode == 0
    assert "ISTIO" not in hosts.save(hosts.a, 4)
    assert "meshagent-nat" in hosts.sh(hosts.a, "nft", "list", "tables")
    assert hosts.capture(hosts.a, "apply", *flags).returncode == 0
    assert "meshagent-" not in hosts.sh(hosts.a, "nft", "list", "tables")
    assert hosts.capture(hosts.a, "remove", "--backend", "nft").returncode == 0
    assert "ISTIO" not in hosts.save(hosts.a, 4)


@pytest.mark.parametrize("backend", ["iptables", "nft"])
def test_capture_redirects_real_traffic_but_not_the_proxy_ssh_or_agent_ports(
    hosts: Hosts, backend: str, tmp_path: Path
) -> None:
    """Outbound to B goes to 15001 (original destination kept), the excluded uid goes
    direct; inbound goes to 15006 except SSH and the agent's port; DNS to the resolv.conf
    server goes to 15053 except the proxy's own; `remove` restores direct traffic."""
    hosts.serve(hosts.b, f"tcp,{B_IP},8080,direct", f"udp,{B_IP},53,direct-dns")
    hosts.serve(hosts.a, "tcp,0.0.0.0,15001,outbound", "tcp,0.0.0.0,15006,inbound",
                "tcp,0.0.0.0,22,ssh", "tcp,0.0.0.0,15020,agent", "tcp,0.0.0.0,8000,app",
                "udp,127.0.0.1,15053,mesh-dns")  # fmt: skip
    (tmp_path / "resolv.conf").write_text(f"nameserver {B_IP}\n")
    (tmp_path / "cluster.env").write_text(  # what `vm configure` writes for a VM
        "ISTIO_INBOUND_PORTS='*'\nISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'\n"
        "ISTIO_SERVICE_CIDR='*'\nISTIO_META_DNS_CAPTURE='true'\n"
    )
    flags = ["--backend", backend, "--cluster-env", str(tmp_path / "cluster.env"),
             "--resolv-conf", str(tmp_path / "resolv.conf"), "-u", EXCLUDED_UID]  # fmt: skip
    assert hosts.ask(hosts.a, B_IP, 8080) == f"direct {B_IP}:8080"

    applied = hosts.capture(hosts.a, "apply", *flags)
    assert applied.returncode == 0, applied.stderr

    assert hosts.ask(hosts.a, B_IP, 8080) == f"outbound {B_IP}:8080"
    assert hosts.ask(hosts.a, B_IP, 8080, uid=EXCLUDED_UID) == f"direct {B_IP}:8080"
    assert hosts.ask(hosts.b, A_IP, 8000) == f"inbound {A_IP}:8000"
    assert hosts.ask(hosts.b, A_IP, 22) == f"ssh {A_IP}:22"
    assert hosts.ask(hosts.b, A_IP, 15020) == f"agent {A_IP}:15020"
    assert hosts.ask(hosts.a, B_IP, 53, proto="udp") == "mesh-dns"
    assert hosts.ask(hosts.a, B_IP, 53, proto="udp", uid=EXCLUDED_UID) == "direct-dns"
    # The proxy calling this host's app: through inbound (app -> VIP -> outbound -> inbound),
    # except from 127.0.0.6, the inbound passthrough's source, which goes to the app itself.
    assert hosts.ask(hosts.a, A_IP, 8000, uid=EXCLUDED_UID) == f"inbound {A_IP}:8000"
    passthrough = hosts.ask(hosts.a, A_IP, 8000, uid=EXCLUDED_UID, source="127.0.0.6")
    assert passthrough == f"app {A_IP}:8000"

    removed = hosts.capture(hosts.a, "remove", *flags)
    assert removed.returncode == 0, removed.stderr
    assert hosts.ask(hosts.a, B_IP, 8080) == f"direct {B_IP}:8080"
    assert hosts.ask(hosts.b, A_IP, 8000) == f"app {A_IP}:8000"
    assert hosts.ask(hosts.a, B_IP, 53, proto="udp") == "direct-dns"


@pytest.mark.parametrize("backend", ["iptables", "nft"])
def test_tproxy_mode_hands_inbound_connections_to_a_transparent_listener(
    hosts: Hosts, backend: str
) -> None:
    hosts.serve(hosts.a, "tproxy,0.0.0.0,15006,inbound", "tcp,0.0.0.0,22,ssh",
                "tcp,0.0.0.0,8000,app")  # fmt: skip
    flags = ["--backend", backend, "-m", "TPROXY", "-b", "*", "-u", EXCLUDED_UID]
    applied = hosts.capture(hosts.a, "apply", *flags)
    assert applied.returncode == 0, applied.stderr

    # The listener sees the original destination as its own address (no NAT).
    assert hosts.ask(hosts.b, A_IP, 8000) == f"inbound {A_IP}:8000"
    assert hosts.ask(hosts.b, A_IP, 22) == f"ssh {A_IP}:22"
    passthrough = hosts.ask(hosts.a, A_IP, 8000, uid=EXCLUDED_UID, source="127.0.0.6")
    assert passthrough == f"app {A_IP}:8000"

    assert hosts.capture(hosts.a, "remove", *flags).returncode == 0
    assert hosts.ask(hosts.b, A_IP, 8000) == f"app {A_IP}:8000"


@pytest.mark.parametrize("backend", ["iptables", "nft"])
def test_if_applied_adds_dns_only_where_capture_is_in_place(hosts: Hosts, backend: str) -> None:
    # The agent unit's ExecStartPost: DNS capture once the DNS proxy answers, only on a host
    # whose capture unit applied the rest (with its backend); elsewhere nothing, cluster.env
    # not even read.
    flags = ["-u", EXCLUDED_UID, "-b", "*", "-i", "*", "--capture-all-dns"]
    later = ["apply", "--if-applied", "--cluster-env", "/nonexistent/cluster.env", *flags]

    def rules() -> str:
        return hosts.save(hosts.a, 4) + hosts.sh(hosts.a, "nft", "list", "ruleset")

    pristine = rules()
    assert hosts.capture(hosts.a, *later, "--redirect-dns").returncode == 0
    assert rules() == pristine
    first = hosts.capture(hosts.a, "apply", "--backend", backend, *flags, "--redirect-dns", "false")
    assert first.returncode == 0 and "ISTIO_OUTPUT_DNS" not in rules()
    done = hosts.capture(hosts.a, "apply", "--if-applied", *flags, "--redirect-dns")
    assert done.returncode == 0 and f"applied ({backend})" in done.stderr
    assert "ISTIO_OUTPUT_DNS" in rules()
    assert hosts.capture(hosts.a, "remove", "--backend", backend).returncode == 0
