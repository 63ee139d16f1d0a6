"""`meshagent capture print`: the rules istio-iptables applies, flag by flag, in its order.

The expected rule sets are written from Istio's documented behaviour (tools/istio-iptables:
ISTIO_INBOUND/ISTIO_IN_REDIRECT -> 15006, ISTIO_OUTPUT/ISTIO_REDIRECT -> 15001,
ISTIO_OUTPUT_DNS -> 15053 with conntrack zones in raw, ISTIO_DIVERT/ISTIO_TPROXY in mangle),
so a user can diff `capture print` against `istio-iptables --dry-run`.
"""

# ruff: noqa: E501  (each iptables rule stays on one line, as istio-iptables prints it)

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.agent.cli import main
from meshagent.capture.options import CaptureOptions, from_env, resolv_conf_servers
from meshagent.capture.rules import build, ordered
from meshagent.errors import ConfigError
from meshagent.onboard.vmconfig import VmInputs, render

OWNERS = ["-u", "1337", "-g", "1337"]

NAT_HEAD = """\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
"""
PROXY_1337 = """\
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
"""


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["capture", "print", *argv]) == 0
    return capsys.readouterr().out


def test_default_redirect_captures_outbound_nothing_inbound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = (
        "# iptables-restore --noflush\n" + NAT_HEAD + "-A OUTPUT -j ISTIO_OUTPUT\n" + PROXY_1337
        + "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\nCOMMIT\n"
    )  # fmt: skip
    assert printed(capsys, *OWNERS) == expected


def test_inbound_wildcard_excludes_ssh_and_agent_ports_and_outbound_cidrs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = printed(capsys, *OWNERS, "-b", "*", "-d", "8443", "-i", "*", "-x", "10.1.0.0/16")
    assert out == (
        "# iptables-restore --noflush\n" + NAT_HEAD
        + "-A PREROUTING -p tcp -j ISTIO_INBOUND\n"
        "-A ISTIO_INBOUND -p tcp --dport 8443 -j RETURN\n"
        "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN\n"
        "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN\n"
        "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN\n"
        "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN\n"
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n"
        "-A OUTPUT -j ISTIO_OUTPUT\n" + PROXY_1337
        + "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
        "-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN\n"
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"
        "COMMIT\n"
    )  # fmt: skip


def test_inbound_port_list_and_outbound_port_include_exclude(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = printed(capsys, *OWNERS, "-b", "9080,9090", "-q", "3306", "-o", "25,465")
    assert out == (
        "# iptables-restore --noflush\n" + NAT_HEAD
        + "-A PREROUTING -p tcp -j ISTIO_INBOUND\n"
        "-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT\n"
        "-A ISTIO_INBOUND -p tcp --dport 9090 -j ISTIO_IN_REDIRECT\n"
        "-A OUTPUT -j ISTIO_OUTPUT\n"
        "-A ISTIO_OUTPUT -p tcp --dport 25 -j RETURN\n"
        "-A ISTIO_OUTPUT -p udp --dport 25 -j RETURN\n"
        "-A ISTIO_OUTPUT -p tcp --dport 465 -j RETURN\n"
        "-A ISTIO_OUTPUT -p udp --dport 465 -j RETURN\n" + PROXY_1337
        + "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
        "-A ISTIO_OUTPUT -p tcp --dport 3306 -j ISTIO_REDIRECT\n"
        "COMMIT\n"
    )  # fmt: skip


def test_tproxy_uses_mangle_divert_and_marks(capsys: pytest.CaptureFixture[str]) -> None:
    out = printed(capsys, *OWNERS, "-m", "TPROXY", "-b", "9080", "-i", "10.0.0.0/8")
    assert out == (
        "# iptables-restore --noflush\n"
        "* mangle\n"
        "-N ISTIO_DIVERT\n"
        "-N ISTIO_TPROXY\n"
        "-N ISTIO_INBOUND\n"
        "-A ISTIO_DIVERT -j MARK --set-mark 1337\n"
        "-A ISTIO_DIVERT -j ACCEPT\n"
        "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006\n"
        "-A PREROUTING -p tcp -j ISTIO_INBOUND\n"
        "-A ISTIO_INBOUND -p tcp --dport 9080 -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT\n"
        "-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_TPROXY\n"
        "-A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark\n"
        "-A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN\n"
        "-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338\n"
        "-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338\n"
        "-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark\n"
        "-I ISTIO_INBOUND 1 -p tcp -m mark --mark 1337 -j RETURN\n"
        "-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN\n"
        "-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN\n"
        "COMMIT\n" + NAT_HEAD
        + "-A OUTPUT -j ISTIO_OUTPUT\n" + PROXY_1337
        + "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\n"
        "COMMIT\n"
    )  # fmt: skip
    # The inserts land where iptables puts them: the three guards first.
    mangle = [
        r.params[-1]
        for r in ordered(
            build(_opts(mode="TPROXY", inbound_ports="9080")).v4, "mangle", "ISTIO_INBOUND"
        )
    ]
    assert mangle == ["RETURN", "RETURN", "RETURN", "ISTIO_DIVERT", "ISTIO_TPROXY"]


def test_dual_stack_adds_the_ip6tables_rules(capsys: pytest.CaptureFixture[str]) -> None:
    out = printed(capsys, "-u", "3,4", "-g", "1", "-b", "4000", "--dual-stack", "-i", "*",
                  "-x", "2001:db8::/32,10.9.0.0/16")  # fmt: skip
    v4, v6 = out.split("# ip6tables-restore --noflush\n")
    assert "-A ISTIO_OUTPUT -d 10.9.0.0/16 -j RETURN" in v4 and "2001:db8" not in v4
    assert v6 == (
        NAT_HEAD
        + "-A PREROUTING -p tcp -j ISTIO_INBOUND\n"
        "-A ISTIO_INBOUND -p tcp --dport 4000 -j ISTIO_IN_REDIRECT\n"
        "-A OUTPUT -j ISTIO_OUTPUT\n"
        "-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN\n"
        "-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT\n"
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 3 -j RETURN\n"
        "-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN\n"
        "-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --uid-owner 4 -j ISTIO_IN_REDIRECT\n"
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 4 -j RETURN\n"
        "-A ISTIO_OUTPUT -m owner --uid-owner 4 -j RETURN\n"
        "-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --gid-owner 1 -j ISTIO_IN_REDIRECT\n"
        "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1 -j RETURN\n"
        "-A ISTIO_OUTPUT -m owner --gid-owner 1 -j RETURN\n"
        "-A ISTIO_OUTPUT -d ::1/128 -j RETURN\n"
        "-A ISTIO_OUTPUT -d 2001:db8::/32 -j RETURN\n"
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"
        "COMMIT\n"
    )  # fmt: skip


def test_dns_redirect_to_resolv_conf_servers_with_uid_gid(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example.com\nnameserver 127.0.0.53\nnameserver ::127.0.0.53\n")
    out = printed(capsys, "-u", "3", "-g", "1", "--redirect-dns", "--dual-stack",
                  "--resolv-conf", str(resolv))  # fmt: skip
    v4, v6 = out.split("# ip6tables-restore --noflush\n")
    assert v4 == (
        "# iptables-restore --noflush\n"
        "* nat\n"
        "-N ISTIO_INBOUND\n-N ISTIO_REDIRECT\n-N ISTIO_IN_REDIRECT\n-N ISTIO_OUTPUT\n"
        "-N ISTIO_OUTPUT_DNS\n"
        "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\n"
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"
        "-A OUTPUT -j ISTIO_OUTPUT\n"
        "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN\n"
        # The proxy's own DNS over TCP to a local resolver is not sent back into inbound.
        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT\n"
        "-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 3 -j RETURN\n"
        "-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN\n"
        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1 -j ISTIO_IN_REDIRECT\n"
        "-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 1 -j RETURN\n"
        "-A ISTIO_OUTPUT -m owner --gid-owner 1 -j RETURN\n"
        "-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS\n"
        "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d 127.0.0.53/32 -j REDIRECT --to-ports 15053\n"
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 127.0.0.53/32 -j REDIRECT --to-port 15053\n"
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"
        "COMMIT\n"
        "* raw\n"
        "-N ISTIO_OUTPUT_DNS\n"
        "-N ISTIO_INBOUND\n"
        "-A OUTPUT -j ISTIO_OUTPUT_DNS\n"
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 3 -j CT --zone 1\n"
        "-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 3 -j CT --zone 2\n"
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1 -j CT --zone 1\n"
        "-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1 -j CT --zone 2\n"
        "-A PREROUTING -j ISTIO_INBOUND\n"
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 127.0.0.53/32 -j CT --zone 2\n"
        "-A ISTIO_INBOUND -p udp --sport 53 -s 127.0.0.53/32 -j CT --zone 1\n"
        "COMMIT\n"
    )  # fmt: skip
    assert (
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d ::127.0.0.53/128 -j REDIRECT --to-port 15053"
        in v6
    )
    assert "-A ISTIO_INBOUND -p udp --sport 53 -s ::127.0.0.53/128 -j CT --zone 1" in v6


def test_capture_all_dns_needs_no_resolv_conf(capsys: pytest.CaptureFixture[str]) -> None:
    out = printed(capsys, *OWNERS, "--redirect-dns", "--capture-all-dns",
                  "--resolv-conf", "/nonexistent")  # fmt: skip
    assert "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053\n" in out
    assert "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053\n" in out
    assert "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2\n" in out
    assert "-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1\n" in out


def test_redirect_dns_without_servers_is_disabled_as_in_istio(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "resolv.conf").write_text("# no nameserver\n")
    assert main(["capture", "print", *OWNERS, "--redirect-dns", "--resolv-conf",
                 str(tmp_path / "resolv.conf")]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert "ISTIO_OUTPUT_DNS" not in out and "* raw" not in out
    assert "warning: no nameserver in" in err and "DNS is not captured" in err


def test_drop_invalid_and_interfaces(capsys: pytest.CaptureFixture[str]) -> None:
    out = printed(capsys, *OWNERS, "--drop-invalid", "-c", "eth9", "-k", "virt0", "-i", "*")
    assert out.startswith(
        "# iptables-restore --noflush\n"
        "* mangle\n"
        "-N ISTIO_DROP\n"
        "-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP\n"
        "-A ISTIO_DROP -j DROP\n"
        "COMMIT\n"
        "* nat\n"
    )
    nat = out.split("* nat\n", 1)[1]
    assert nat.index("-A PREROUTING -i eth9 -j RETURN") < nat.index(
        "-I PREROUTING 1 -i virt0 -j RETURN"
    )
    assert nat.rstrip().endswith(
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n-I PREROUTING 1 -i virt0 -j ISTIO_REDIRECT\nCOMMIT"
    )


def test_owner_groups_include_and_exclude() -> None:
    only = build(_opts(owner_groups_include="java,202")).v4
    assert ("-m", "owner", "!", "--gid-owner", "java", "-m", "owner", "!", "--gid-owner", "202",
            "-j", "RETURN") in [r.params for r in only]  # fmt: skip
    but = build(_opts(owner_groups_exclude="888")).v4
    assert ("-m", "owner", "--gid-owner", "888", "-j", "RETURN") in [r.params for r in but]


def test_cluster_env_from_vm_configure_drives_capture(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    group = {
        "metadata": {"name": "ratings", "namespace": "vm"},
        "spec": {"template": {"ports": {"http": 9080}, "serviceAccount": "ratings"}},
    }
    env = render(VmInputs(workload_group=group, mesh_config={}))["cluster.env"]
    (tmp_path / "cluster.env").write_bytes(env)
    (tmp_path / "resolv.conf").write_text("nameserver 10.0.0.2\n")
    out = printed(capsys, *OWNERS, "--cluster-env", str(tmp_path / "cluster.env"),
                  "--resolv-conf", str(tmp_path / "resolv.conf"))  # fmt: skip
    # ISTIO_INBOUND_PORTS=9080, ISTIO_SERVICE_CIDR=*, ISTIO_META_DNS_CAPTURE=true
    assert "-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT\n" in out
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n" in out
    assert (
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 10.0.0.2/32 -j REDIRECT --to-port 15053\n" in out
    )


def test_flags_win_over_cluster_env(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "cluster.env").write_text(
        "ISTIO_INBOUND_PORTS='*'\nISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'\n"
        "ISTIO_INBOUND_INTERCEPTION_MODE=TPROXY\nISTIO_SERVICE_CIDR='10.0.0.0/8'\n"
    )
    out = printed(capsys, *OWNERS, "--cluster-env", str(tmp_path / "cluster.env"), "-m", "REDIRECT")
    assert "* mangle" not in out and "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n" in out
    assert out.count("--dport 22 -j RETURN") == 1  # istioctl's list already names the defaults
    assert "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\n" in out


def test_env_variables_map_to_options() -> None:
    opts = from_env({
        "ISTIO_INBOUND_PORTS": "*", "ISTIO_LOCAL_EXCLUDE_PORTS": "22",
        "ISTIO_SERVICE_EXCLUDE_CIDR": "10.1.0.0/16", "ISTIO_META_DNS_CAPTURE": "true",
        "INVALID_DROP": "1", "ISTIO_AGENT_DUAL_STACK": "true", "ENVOY_PORT": "16001",
        "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE": "25", "ISTIO_OUTBOUND_PORTS": "3306",
        "ISTIO_INBOUND_INTERCEPTION_MODE": "TPROXY", "ISTIO_EXCLUDE_INTERFACES": "eth1",
    })  # fmt: skip
    assert (opts.inbound_ports, opts.inbound_exclude, opts.service_exclude_cidr) == (
        "*",
        "22",
        "10.1.0.0/16",
    )
    assert opts.redirect_dns and opts.drop_invalid and opts.dual_stack and opts.mode == "TPROXY"
    assert (opts.proxy_port, opts.outbound_exclude, opts.outbound_ports) == ("16001", "25", "3306")
    assert opts.exclude_interfaces == "eth1"
    assert (
        from_env({"REDIRECT_DNS": "false", "ISTIO_META_DNS_CAPTURE": "true"}).redirect_dns is False
    )


def test_resolv_conf_servers() -> None:
    text = (
        "# x\nnameserver 10.0.0.2 # y\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\n"
    )
    assert resolv_conf_servers(text) == ("10.0.0.2", "fe80::1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-p", "http"], "-p: 'http' is not a port number"),
        (["-b", "80,99999"], "-b: '99999' is not a port number"),
        (["-m", "MAGIC"], "-m: must be REDIRECT or TPROXY"),
        (["-i", "10.0.0.0/33"], "-i: '10.0.0.0/33' is not an address range"),
        (["-x", "*"], "-x: '*' is not allowed here"),
        (["--redirect-dns=maybe"], "--redirect-dns: must be true or false"),
        (["-c", "eth0 -j ACCEPT"], "-c: 'eth0 -j ACCEPT' is not a valid name"),
        (["-u", "1\n-A INPUT -j DROP"], "-u: '1\\n-A INPUT -j DROP' is not a valid name"),
    ],
)
def test_bad_flags_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["capture", "print", *OWNERS, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"meshagent capture: {message}") and err.count("\n") == 1, err


def test_a_missing_cluster_env_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture", "print", "--cluster-env", "/nonexistent/cluster.env"]) == 2
    err = capsys.readouterr().err
    assert "/nonexistent/cluster.env" in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_cluster_env_line_is_located(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "cluster.env").write_text("ISTIO_INBOUND_PORTS='*'\nnot a line\n")
    assert main(["capture", "print", "--cluster-env", str(tmp_path / "cluster.env")]) == 2
    assert f"{tmp_path / 'cluster.env'}:2: expected KEY=value" in capsys.readouterr().err


def test_validation_rejects_bad_option_values() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        CaptureOptions(loopback_cidr="10.0.0.0/8").validated()
    with pytest.raises(ConfigError, match="at least one"):
        CaptureOptions(proxy_uid=" , ").validated()


def _opts(**changes: str) -> CaptureOptions:
    from dataclasses import replace

    return replace(CaptureOptions(), **changes).validated()  # type: ignore[arg-type]


def test_vm_configure_names_the_capture_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    group = tmp_path / "wg.yaml"
    group.write_text(
        "kind: WorkloadGroup\nmetadata: {name: ratings, namespace: vm}\n"
        "spec: {template: {ports: {http: 9080}, serviceAccount: ratings}}\n"
    )
    (tmp_path / "mesh.yaml").write_text("trustDomain: cluster.local\n")
    (tmp_path / "root.pem").write_text("x")
    (tmp_path / "token").write_text("")
    out_dir = tmp_path / "out"
    assert main(["vm", "configure", "-f", str(group), "-o", str(out_dir), "--mesh-config",
                 str(tmp_path / "mesh.yaml"), "--root-cert", str(tmp_path / "root.pem"),
                 "--token-file", str(tmp_path / "token")]) == 0  # fmt: skip
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint == f"traffic capture: meshagent capture apply --cluster-env {out_dir}/cluster.env"
    argv = hint.split(": ", 1)[1].split()[1:]
    assert main([*argv, "-n", "-u", "1", "-g", "1", "--capture-all-dns"]) == 0
    assert "--dport 9080 -j ISTIO_IN_REDIRECT" in capsys.readouterr().out
