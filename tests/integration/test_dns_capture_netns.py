"""An unchanged application's DNS, captured to the agent's DNS proxy, in network namespaces.

Host A runs `meshagent run` with the DNS proxy and `meshagent capture apply --redirect-dns
--capture-all-dns` (root, the agent's user, excluded); its application (uid nobody) asks the
C library (getaddrinfo), which sends to the host's resolver on port 53: capture hands the
query to the proxy, which answers mesh names (a ServiceEntry without addresses: its automatic
VIP) and forwards the rest to host B's resolver (a fake one on 10.81.0.2:53), its own query
not captured again. No Envoy is needed for DNS. (That `capture remove` restores direct
traffic is the capture tests'.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshagent.normalize.vips import home_slot, slot_addresses
from tests.integration.netns import NOBODY, Netns, namespaces, require_netns
from tests.polling import wait_for

pytestmark = pytest.mark.slow
B_IP = "10.81.0.2"
MESH = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hello, namespace: demo}
spec:
  hosts: [hello.demo.svc.cluster.local]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.81.0.2}]
"""
RESOLVE = r"""
import json, socket, sys
out = {}
for name in sys.argv[1:]:
    try:
        infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
        out[name] = sorted({i[4][0] for i in infos})
    except socket.gaierror as e:
        out[name] = str(e)
print(json.dumps(out))
"""


def _resolve(ns: Netns, *names: str) -> dict[str, object]:
    done = subprocess.run(
        ns.cmd([sys.executable, "-c", RESOLVE, *names], NOBODY),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _capture(ns: Netns, *argv: str) -> subprocess.CompletedProcess[str]:
    return ns.run(sys.executable, "-m", "meshagent.agent.cli", "capture", *argv, check=False)


def test_getaddrinfo_of_an_unchanged_app_goes_through_the_dns_proxy(tmp_path: Path) -> None:
    require_netns()
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "hello.yaml").write_text(MESH)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {B_IP}\n")
    (tmp_path / "agent.yaml").write_text(
        "node: {id: vm-a, namespace: demo}\nstate_dir: state\nadmin: {port: 0}\n"
        f"sources: {{files: {{paths: [mesh]}}}}\n"
        f"dns: {{enabled: true, resolv_conf: {resolv}}}\n"
    )
    with namespaces(2) as (a, b):
        resolver = b.start(
            [sys.executable, "-m", "meshagent.testing.fake_dns", B_IP, "53",
             "www.outside.test=192.0.2.10"],
            tmp_path / "resolver.log",
        )  # fmt: skip
        agent = a.start(
            [
                sys.executable,
                "-m",
                "meshagent.agent.cli",
                "run",
                "-c",
                str(tmp_path / "agent.yaml"),
            ],
            tmp_path / "agent.log",
        )
        vip = slot_addresses(home_slot("hello.demo.svc.cluster.local"))[0]

        def proxy_answers() -> bool:
            probe = a.run(
                sys.executable, "-c",
                "import dns.message,dns.query;"
                "r=dns.query.udp(dns.message.make_query('hello.demo','A'),'127.0.0.1',2,15053);"
                "print(r.answer[0][0].to_text() if r.answer else '')",
                check=False,
            )  # fmt: skip
            return probe.stdout.strip() == vip

        wait_for(proxy_answers, timeout=30, what=f"the DNS proxy (log: {tmp_path / 'agent.log'})")
        assert resolver.poll() is None and agent.poll() is None
        # given capture with DNS redirection (root: the agent, never captured)
        applied = _capture(a, "apply", "-u", "0", "-g", "0", "--redirect-dns",
                           "--capture-all-dns", "--resolv-conf", str(resolv))  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        try:
            # when the application resolves names with the C library
            got = _resolve(a, "hello.demo.svc.cluster.local", "hello", "www.outside.test")
            # then mesh names come from the proxy (the VIP), others from B's resolver
            assert got["hello.demo.svc.cluster.local"] == [vip]
            assert got["hello"] == [vip]  # short name in the node's namespace
            assert got["www.outside.test"] == ["192.0.2.10"]
        finally:
            removed = _capture(a, "remove", "-u", "0", "-g", "0", "--redirect-dns",
                               "--capture-all-dns", "--resolv-conf", str(resolv))  # fmt: skip
            assert removed.returncode == 0, removed.stderr
