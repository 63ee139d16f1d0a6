"""The capture ruleset: istio-iptables' rules for a set of options, in istio-iptables' order.

`build(options)` is pure: no I/O, no lookups. It follows Istio's tools/istio-iptables
(capture/run.go): chains ISTIO_INBOUND, ISTIO_IN_REDIRECT (-> the inbound capture port, 15006),
ISTIO_OUTPUT, ISTIO_REDIRECT (-> Envoy's outbound port, 15001), ISTIO_OUTPUT_DNS (-> 15053, with
conntrack zones in the raw table), ISTIO_DIVERT and ISTIO_TPROXY (mangle, TPROXY mode) and
ISTIO_DROP (--drop-invalid). Rules are kept per address family in the order istio-iptables
issues them, appends and inserts alike, so `iptables.render` can print exactly its dry run.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from meshagent.capture.options import (
    DNS_PORT,
    OUTBOUND_MARK,
    TPROXY,
    CaptureOptions,
    split,
    split_families,
)

BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
BUILTIN_TARGETS = BUILTIN_CHAINS | {"ACCEPT", "DROP", "RETURN"}
TABLE_ORDER = ("mangle", "nat", "raw")
V4, V6 = 4, 6
IP_SPECIFIC = "\0ip"  # replaced by the family's own value in versioned rules


@dataclass(frozen=True, slots=True)
class Rule:
    """One iptables rule: `-A chain params` or, with `position`, `-I chain position params`."""

    table: str
    chain: str
    params: tuple[str, ...]
    position: int = 0

    def command(self) -> str:
        """The rule as an iptables-restore line."""
        head = f"-I {self.chain} {self.position}" if self.position else f"-A {self.chain}"
        return " ".join([head, *self.params])

    def spec(self) -> tuple[str, ...]:
        """The rule's matches and target, as `iptables -C/-D CHAIN` takes them."""
        return self.params

    def target(self) -> str:
        """The `-j` target (a chain name for jumps)."""
        params = list(self.params)
        return params[params.index("-j") + 1] if "-j" in params else ""


@dataclass(frozen=True, slots=True)
class Ruleset:
    """The rules of each address family (`v6` is empty without dual stack)."""

    v4: tuple[Rule, ...]
    v6: tuple[Rule, ...]

    def family(self, version: int) -> tuple[Rule, ...]:
        """The rules of IPv4 (4) or IPv6 (6)."""
        return self.v4 if version == V4 else self.v6


def tables(rules: tuple[Rule, ...]) -> list[str]:
    """The tables these rules use, in iptables-restore order."""
    used = {r.table for r in rules}
    return [t for t in TABLE_ORDER if t in used]


def chains(rules: tuple[Rule, ...], table: str) -> list[str]:
    """The user-defined chains of a table, in the order istio-iptables creates them."""
    found: list[str] = []
    for rule in rules:
        if rule.table == table and rule.chain not in BUILTIN_CHAINS and rule.chain not in found:
            found.append(rule.chain)
    return found


def ordered(rules: tuple[Rule, ...], table: str, chain: str) -> list[Rule]:
    """A chain's rules in their final order, inserts placed where iptables puts them."""
    result: list[Rule] = []
    for rule in rules:
        if rule.table == table and rule.chain == chain:
            plain = Rule(rule.table, rule.chain, rule.params)
            if rule.position:
                result.insert(min(rule.position - 1, len(result)), plain)
            else:
                result.append(plain)
    return result


@dataclass
class _Builder:
    """Istio's rule builder: rules for both families, or one, with per-family values."""

    v4: list[Rule] = field(default_factory=list)
    v6: list[Rule] = field(default_factory=list)

    def add(self, table: str, chain: str, *params: str, pos: int = 0, only: int = 0) -> None:
        if only in (0, V4):
            self.v4.append(Rule(table, chain, tuple(params), pos))
        if only in (0, V6):
            self.v6.append(Rule(table, chain, tuple(params), pos))

    def versioned(self, v4: str, v6: str, table: str, chain: str, *params: str) -> None:
        """A rule for both families whose IP_SPECIFIC parameter differs per family."""
        self.v4.append(Rule(table, chain, tuple(v4 if p == IP_SPECIFIC else p for p in params)))
        self.v6.append(Rule(table, chain, tuple(v6 if p == IP_SPECIFIC else p for p in params)))


def build(options: CaptureOptions) -> Ruleset:
    """The ruleset istio-iptables applies for these (validated) options."""
    b = _Builder()
    o = options
    lo4 = o.loopback_cidr
    exclude4, exclude6 = _ranges(o.service_exclude_cidr)
    include4, include6 = _ranges(o.service_cidr)
    wildcard = o.service_cidr.strip() == "*"
    dns4, dns6 = split_families(o.dns_servers)
    redirect_dns = o.redirect_dns and (o.capture_all_dns or bool(dns4 or dns6))
    tproxy = o.mode == TPROXY

    for nic in split(o.exclude_interfaces):
        b.add("nat", "PREROUTING", "-i", nic, "-j", "RETURN")
        b.add("nat", "OUTPUT", "-o", nic, "-j", "RETURN")
    if tproxy:
        for nic in split(o.exclude_interfaces):
            b.add("mangle", "PREROUTING", "-i", nic, "-j", "RETURN")
            b.add("mangle", "OUTPUT", "-o", nic, "-j", "RETURN")
    for nic in split(o.virt_interfaces):
        b.add("nat", "PREROUTING", "-i", nic, "-j", "RETURN", pos=1)
    if o.drop_invalid:
        b.add("mangle", "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", "ISTIO_DROP")
        b.add("mangle", "ISTIO_DROP", "-j", "DROP")
    b.add("nat", "ISTIO_INBOUND", "-p", "tcp", "--dport", o.inbound_tunnel_port, "-j", "RETURN")
    b.add("nat", "ISTIO_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", o.proxy_port)
    b.add(
        "nat", "ISTIO_IN_REDIRECT", "-p", "tcp", "-j", "REDIRECT",
        "--to-ports", o.inbound_capture_port,
    )  # fmt: skip
    _inbound(b, o)
    b.add("nat", "OUTPUT", "-j", "ISTIO_OUTPUT")
    for port in split(o.outbound_exclude):
        b.add("nat", "ISTIO_OUTPUT", "-p", "tcp", "--dport", port, "-j", "RETURN")
        b.add("nat", "ISTIO_OUTPUT", "-p", "udp", "--dport", port, "-j", "RETURN")
    b.versioned("127.0.0.6/32", "::6/128", "nat", "ISTIO_OUTPUT", "-o", "lo", "-s", IP_SPECIFIC,
                "-j", "RETURN")  # fmt: skip
    loopback_included = any(ipaddress.ip_network(c).is_loopback for c in include4 + include6)
    _proxy_owner(b, o, "--uid-owner", split(o.proxy_uid), redirect_dns, loopback_included)
    _proxy_owner(b, o, "--gid-owner", split(o.proxy_gid), redirect_dns, loopback_included)
    _owner_groups(b, o)
    if redirect_dns:
        _dns(b, o, dns4, dns6)
    b.versioned(lo4, "::1/128", "nat", "ISTIO_OUTPUT", "-d", IP_SPECIFIC, "-j", "RETURN")
    for cidr in exclude4:
        b.add("nat", "ISTIO_OUTPUT", "-d", cidr, "-j", "RETURN", only=V4)
    for cidr in exclude6:
        b.add("nat", "ISTIO_OUTPUT", "-d", cidr, "-j", "RETURN", only=V6)
    for port in split(o.outbound_ports):
        b.add("nat", "ISTIO_OUTPUT", "-p", "tcp", "--dport", port, "-j", "ISTIO_REDIRECT")
    _outbound_include(b, o, V4, wildcard, include4)
    _outbound_include(b, o, V6, wildcard, include6)
    if tproxy:
        _tproxy_marks(b, o)
    return Ruleset(tuple(b.v4), tuple(b.v6) if o.dual_stack else ())


def _ranges(value: str) -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) CIDRs of a comma list, as given (a bare address gets its full prefix)."""
    if value.strip() == "*":
        return [], []
    v4: list[str] = []
    v6: list[str] = []
    for item in split(value):
        net = ipaddress.ip_network(item, strict=False)
        text = item if "/" in item else f"{item}/{net.max_prefixlen}"
        (v4 if net.version == V4 else v6).append(text)
    return v4, v6


def _inbound(b: _Builder, o: CaptureOptions) -> None:
    """ISTIO_INBOUND: which inbound ports go to the inbound capture port (run.go's
    handleInboundPortsInclude)."""
    if not o.inbound_ports:
        return
    tproxy = o.mode == TPROXY
    table = "mangle" if tproxy else "nat"
    if tproxy:
        b.add("mangle", "ISTIO_DIVERT", "-j", "MARK", "--set-mark", o.tproxy_mark)
        b.add("mangle", "ISTIO_DIVERT", "-j", "ACCEPT")
        b.versioned(o.loopback_cidr, "::1/128", "mangle", "ISTIO_TPROXY", "!", "-d", IP_SPECIFIC,
                    "-p", "tcp", "-j", "TPROXY", "--tproxy-mark", f"{o.tproxy_mark}/0xffffffff",
                    "--on-port", o.inbound_capture_port)  # fmt: skip
    b.add(table, "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
    established = ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ISTIO_DIVERT")
    if o.inbound_ports == "*":
        for port in split(o.inbound_exclude):
            b.add(table, "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-j", "RETURN")
        if tproxy:
            b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", *established)
            b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "-j", "ISTIO_TPROXY")
        else:
            b.add("nat", "ISTIO_INBOUND", "-p", "tcp", "-j", "ISTIO_IN_REDIRECT")
        return
    for port in split(o.inbound_ports):
        if tproxy:
            b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "--dport", port, *established)
            b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-j", "ISTIO_TPROXY")
        else:
            b.add("nat", "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-j", "ISTIO_IN_REDIRECT")


def _proxy_owner(
    b: _Builder, o: CaptureOptions, owner: str, ids: list[str], dns: bool, loopback: bool
) -> None:
    """The proxy's own traffic: back through inbound when it calls this host's address over
    lo, never recaptured otherwise (run.go's uid and gid loops)."""
    for ident in ids:
        ports: tuple[str, ...]
        if dns and owner == "--uid-owner":
            ports = ("-m", "multiport", "!", "--dports", f"53,{o.inbound_tunnel_port}")
        else:
            ports = ("!", "--dport", o.inbound_tunnel_port)
        b.versioned(o.loopback_cidr, "::1/128", "nat", "ISTIO_OUTPUT", "-o", "lo", "!", "-d",
                    IP_SPECIFIC, "-p", "tcp", *ports, "-m", "owner", owner, ident,
                    "-j", "ISTIO_IN_REDIRECT")  # fmt: skip
        if not loopback:
            not_dns = ("-p", "tcp", "!", "--dport", "53") if dns else ()
            b.add("nat", "ISTIO_OUTPUT", "-o", "lo", *not_dns, "-m", "owner", "!", owner, ident,
                  "-j", "RETURN")  # fmt: skip
        b.add("nat", "ISTIO_OUTPUT", "-m", "owner", owner, ident, "-j", "RETURN")


def _owner_groups(b: _Builder, o: CaptureOptions) -> None:
    """ISTIO_OUTBOUND_OWNER_GROUPS(_EXCLUDE): capture only (or all but) these groups."""
    if o.owner_groups_include.strip() == "*":
        for group in split(o.owner_groups_exclude):
            b.add("nat", "ISTIO_OUTPUT", "-m", "owner", "--gid-owner", group, "-j", "RETURN")
        return
    matchers: list[str] = []
    for group in split(o.owner_groups_include):
        matchers += ["-m", "owner", "!", "--gid-owner", group]
    b.add("nat", "ISTIO_OUTPUT", *matchers, "-j", "RETURN")


def _dns(b: _Builder, o: CaptureOptions, dns4: list[str], dns6: list[str]) -> None:
    """DNS to the resolv.conf servers (or all port 53 with capture-all-dns) goes to 15053;
    conntrack zones keep the proxy's upstream queries apart from the clients' (run.go's
    SetupDNSRedir and addDNSConntrackZones)."""
    every = o.capture_all_dns
    b.add("raw", "OUTPUT", "-j", "ISTIO_OUTPUT_DNS")
    if every or dns4:
        b.add("nat", "ISTIO_OUTPUT", "-j", "ISTIO_OUTPUT_DNS", only=V4)
    if every or dns6:
        b.add("nat", "ISTIO_OUTPUT", "-j", "ISTIO_OUTPUT_DNS", only=V6)
    for proto, to in (("tcp", "--to-ports"), ("udp", "--to-port")):
        redirect = ("-j", "REDIRECT", to, DNS_PORT)
        if every:
            b.add("nat", "ISTIO_OUTPUT_DNS", "-p", proto, "--dport", "53", *redirect)
            continue
        for server in dns4:
            b.add("nat", "ISTIO_OUTPUT_DNS", "-p", proto, "--dport", "53", "-d", f"{server}/32",
                  *redirect, only=V4)  # fmt: skip
        for server in dns6:
            b.add("nat", "ISTIO_OUTPUT_DNS", "-p", proto, "--dport", "53", "-d", f"{server}/128",
                  *redirect, only=V6)  # fmt: skip
    ct = ("-j", "CT", "--zone")
    for owner, ids in (("--uid-owner", o.proxy_uid), ("--gid-owner", o.proxy_gid)):
        for ident in split(ids):
            match = ("-m", "owner", owner, ident)
            b.add("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--dport", "53", *match, *ct, "1")
            b.add("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--sport", DNS_PORT, *match, *ct, "2")
    _dns_zones(b, every, dns4, dns6)


def _dns_zones(b: _Builder, every: bool, dns4: list[str], dns6: list[str]) -> None:
    """Clients' queries to the servers in zone 2, the servers' answers in zone 1."""
    zone = ("-j", "CT", "--zone")
    if every:
        b.add("raw", "PREROUTING", "-j", "ISTIO_INBOUND")
        b.add("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--dport", "53", *zone, "2")
        b.add("raw", "ISTIO_INBOUND", "-p", "udp", "--sport", "53", *zone, "1")
        return
    for version, servers, bits in ((V4, dns4, 32), (V6, dns6, 128)):
        if servers:
            b.add("raw", "PREROUTING", "-j", "ISTIO_INBOUND", only=version)
        for server in servers:
            b.add("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--dport", "53", "-d",
                  f"{server}/{bits}", *zone, "2", only=version)  # fmt: skip
            b.add("raw", "ISTIO_INBOUND", "-p", "udp", "--sport", "53", "-s",
                  f"{server}/{bits}", *zone, "1", only=version)  # fmt: skip


def _outbound_include(
    b: _Builder, o: CaptureOptions, version: int, wildcard: bool, cidrs: list[str]
) -> None:
    """ISTIO_SERVICE_CIDR: everything ('*') or these ranges go to ISTIO_REDIRECT; traffic
    entering from the virtual interfaces counts as outbound."""
    add: Callable[..., None] = b.add
    if wildcard:
        add("nat", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT", only=version)
        for nic in split(o.virt_interfaces):
            add("nat", "PREROUTING", "-i", nic, "-j", "ISTIO_REDIRECT", pos=1, only=version)
        return
    for cidr in cidrs:
        for nic in split(o.virt_interfaces):
            add("nat", "PREROUTING", "-i", nic, "-d", cidr, "-j", "ISTIO_REDIRECT", pos=1,
                only=version)  # fmt: skip
        add("nat", "ISTIO_OUTPUT", "-d", cidr, "-j", "ISTIO_REDIRECT", only=version)


def _tproxy_marks(b: _Builder, o: CaptureOptions) -> None:
    """TPROXY: keep the mark on the connection, mark the proxy's own traffic to local apps,
    and never send marked, 127.0.0.6 or plain local traffic back into ISTIO_INBOUND."""
    mark = o.tproxy_mark
    b.add("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK",
          "--save-mark")  # fmt: skip
    b.add("mangle", "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j",
          "RETURN")  # fmt: skip
    for owner, ids in (("--uid-owner", o.proxy_uid), ("--gid-owner", o.proxy_gid)):
        for ident in split(ids):
            b.versioned(o.loopback_cidr, "::1/128", "mangle", "OUTPUT", "!", "-d", IP_SPECIFIC,
                        "-p", "tcp", "-o", "lo", "-m", "owner", owner, ident, "-j", "MARK",
                        "--set-mark", OUTBOUND_MARK)  # fmt: skip
    b.add("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK",
          "--restore-mark")  # fmt: skip
    b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN",
          pos=1)  # fmt: skip
    b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "-s", "127.0.0.6/32", "-i", "lo", "-j",
          "RETURN", pos=2, only=V4)  # fmt: skip
    b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "-s", "::6/128", "-i", "lo", "-j", "RETURN",
          pos=2, only=V6)  # fmt: skip
    b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark",
          OUTBOUND_MARK, "-j", "RETURN", pos=3)  # fmt: skip
