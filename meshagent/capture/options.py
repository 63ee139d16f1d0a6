"""Capture options: istio-iptables' flags and the cluster.env variables that feed them.

istio-iptables reads every flag also from the environment (viper with `-` -> `_`), which is how
a VM's cluster.env drives it: ISTIO_INBOUND_PORTS is `--istio-inbound-ports` (`-b`), and so on.
`from_env` maps those variable names; the CLI maps the flags; both end in one frozen
`CaptureOptions`, validated, so `rules.build` never sees a malformed value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from meshagent.errors import ConfigError

# Always excluded from inbound capture when every port is captured ("*"): SSH, and the ports of
# Istio's agent that istioctl and the injector always exclude (Envoy's Prometheus port, the
# health port, the status/admin port, which is also meshagent's admin port).
DEFAULT_INBOUND_EXCLUDE = ("22", "15090", "15021", "15020")
REDIRECT, TPROXY = "REDIRECT", "TPROXY"
DNS_PORT = "15053"  # Istio's agent DNS listener (and meshagent's DNS proxy)
OUTBOUND_MARK = "1338"  # TPROXY: Envoy's own connections to local apps


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """What istio-iptables' config holds, as strings in its own comma-list form.

    `proxy_uid`/`proxy_gid` are never empty here: the CLI resolves the default users first.
    `dns_servers` are the resolv.conf nameservers (used when `redirect_dns` without
    `capture_all_dns`); `dual_stack` adds the ip6tables rules.
    """

    proxy_port: str = "15001"
    inbound_capture_port: str = "15006"
    inbound_tunnel_port: str = "15008"
    proxy_uid: str = "1337"
    proxy_gid: str = "1337"
    mode: str = REDIRECT
    tproxy_mark: str = "1337"
    tproxy_route_table: str = "133"
    inbound_ports: str = ""
    inbound_exclude: str = ""
    exclude_interfaces: str = ""
    service_cidr: str = ""
    service_exclude_cidr: str = ""
    outbound_ports: str = ""
    outbound_exclude: str = ""
    virt_interfaces: str = ""
    owner_groups_include: str = "*"
    owner_groups_exclude: str = ""
    loopback_cidr: str = "127.0.0.1/32"
    redirect_dns: bool = False
    capture_all_dns: bool = False
    drop_invalid: bool = False
    dual_stack: bool = False
    dns_servers: tuple[str, ...] = ()

    def validated(self) -> CaptureOptions:
        """These options with the default exclusions merged in; ConfigError names a bad value."""
        for name in ("proxy_port", "inbound_capture_port", "inbound_tunnel_port"):
            _port(getattr(self, name), FLAG_OF[name])
        for name in ("inbound_exclude", "outbound_ports", "outbound_exclude"):
            for port in split(getattr(self, name)):
                _port(port, FLAG_OF[name])
        if self.inbound_ports != "*":
            for port in split(self.inbound_ports):
                _port(port, FLAG_OF["inbound_ports"])
        if self.mode not in (REDIRECT, TPROXY):
            raise ConfigError(f"must be REDIRECT or TPROXY, not {self.mode!r}", field="-m")
        _cidrs(self.service_cidr, "-i", wildcard=True)
        _cidrs(self.service_exclude_cidr, "-x", wildcard=False)
        _cidrs(self.loopback_cidr, "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", wildcard=False)
        if not ipaddress.ip_network(self.loopback_cidr, strict=False).is_loopback:
            raise ConfigError("must be a loopback range", field="ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR")
        for name in ("proxy_uid", "proxy_gid"):
            if not split(getattr(self, name)):
                raise ConfigError("must name at least one user or group", field=FLAG_OF[name])
        # Free-text values go into iptables-restore lines and nft scripts: names only.
        for value, where in (
            (self.proxy_uid, "-u"),
            (self.proxy_gid, "-g"),
            (self.owner_groups_include if self.owner_groups_include.strip() != "*" else "",
             "ISTIO_OUTBOUND_OWNER_GROUPS"),
            (self.owner_groups_exclude, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
        ):  # fmt: skip
            _names(value, where, _OWNER)
        _names(self.exclude_interfaces, "-c", _INTERFACE)
        _names(self.virt_interfaces, "-k", _INTERFACE)
        for mark in (self.tproxy_mark, self.tproxy_route_table):
            if not mark.isdigit():
                raise ConfigError(f"must be a number, not {mark!r}", field="-t/-r")
        if self.owner_groups_include != "*" and self.owner_groups_exclude:
            raise ConfigError(
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE applies only when "
                "ISTIO_OUTBOUND_OWNER_GROUPS is '*'"
            )
        for server in self.dns_servers:
            _address(server, "nameserver")
        return replace(self, inbound_exclude=merge_ports(self.inbound_exclude))


FLAG_OF = {
    "proxy_port": "-p",
    "inbound_capture_port": "-z",
    "inbound_tunnel_port": "-e",
    "proxy_uid": "-u",
    "proxy_gid": "-g",
    "inbound_ports": "-b",
    "inbound_exclude": "-d",
    "outbound_ports": "-q",
    "outbound_exclude": "-o",
}

# cluster.env / environment variable -> option (istio-iptables' viper names, plus the
# variables istio-iptables takes its defaults from).
ENV_STRINGS = {
    "ENVOY_PORT": "proxy_port",
    "INBOUND_CAPTURE_PORT": "inbound_capture_port",
    "INBOUND_TUNNEL_PORT": "inbound_tunnel_port",
    "PROXY_UID": "proxy_uid",
    "PROXY_GID": "proxy_gid",
    "ISTIO_INBOUND_INTERCEPTION_MODE": "mode",
    "ISTIO_INBOUND_TPROXY_MARK": "tproxy_mark",
    "ISTIO_INBOUND_TPROXY_ROUTE_TABLE": "tproxy_route_table",
    "ISTIO_INBOUND_PORTS": "inbound_ports",
    "ISTIO_LOCAL_EXCLUDE_PORTS": "inbound_exclude",
    "ISTIO_EXCLUDE_INTERFACES": "exclude_interfaces",
    "ISTIO_SERVICE_CIDR": "service_cidr",
    "ISTIO_SERVICE_EXCLUDE_CIDR": "service_exclude_cidr",
    "ISTIO_OUTBOUND_PORTS": "outbound_ports",
    "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE": "outbound_exclude",
    "KUBE_VIRT_INTERFACES": "virt_interfaces",
    "ISTIO_OUTBOUND_OWNER_GROUPS": "owner_groups_include",
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "owner_groups_exclude",
    "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "loopback_cidr",
}
# Later names win: REDIRECT_DNS (the flag's variable) over ISTIO_META_DNS_CAPTURE (its default).
ENV_BOOLS = {
    "ISTIO_META_DNS_CAPTURE": "redirect_dns",
    "REDIRECT_DNS": "redirect_dns",
    "CAPTURE_ALL_DNS": "capture_all_dns",
    "INVALID_DROP": "drop_invalid",
    "DROP_INVALID": "drop_invalid",
    "ISTIO_AGENT_DUAL_STACK": "dual_stack",
    "ISTIO_DUAL_STACK": "dual_stack",
    "DUAL_STACK": "dual_stack",
}


def from_env(env: Mapping[str, str], base: CaptureOptions | None = None) -> CaptureOptions:
    """Options from cluster.env-style variables over `base`; unknown variables are ignored."""
    changes: dict[str, object] = {}
    for key, name in ENV_STRINGS.items():
        if key in env:
            changes[name] = env[key].strip()
    for key, name in ENV_BOOLS.items():
        if key in env:
            changes[name] = parse_bool(env[key], key)
    if changes.get("mode") == "":
        changes["mode"] = REDIRECT
    return replace(base or CaptureOptions(), **changes)  # type: ignore[arg-type]


def parse_bool(value: str, where: str) -> bool:
    """Go's strconv.ParseBool, which istio's env package uses."""
    text = value.strip()
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("", "0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ConfigError(f"must be true or false, not {value!r}", field=where)


def split(value: str) -> list[str]:
    """istio-iptables' comma lists: blanks around and empty items are dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def merge_ports(exclude: str) -> str:
    """The user's exclusions, then the defaults they did not list (so istioctl's cluster.env,
    which lists them all, yields exactly istio-iptables' rules)."""
    ports = split(exclude)
    return ",".join(ports + [p for p in DEFAULT_INBOUND_EXCLUDE if p not in ports])


def resolv_conf_servers(text: str) -> tuple[str, ...]:
    """The `nameserver` addresses of a resolv.conf, in order (zone suffixes dropped)."""
    servers = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            address = fields[1].split("%", 1)[0]
            try:
                ipaddress.ip_address(address)
            except ValueError:
                continue
            servers.append(address)
    return tuple(servers)


def split_families(servers: Sequence[str]) -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) addresses, each in the given order."""
    v4 = [s for s in servers if ipaddress.ip_address(s).version == 4]
    v6 = [s for s in servers if ipaddress.ip_address(s).version == 6]
    return v4, v6


_OWNER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?")
_INTERFACE = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}")


def _names(value: str, flag: str, pattern: re.Pattern[str]) -> None:
    for item in split(value):
        if not pattern.fullmatch(item):
            raise ConfigError(f"{item!r} is not a valid name", field=flag)


def _port(value: str, flag: str) -> None:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"{value!r} is not a port number (1-65535)", field=flag)


def _cidrs(value: str, flag: str, *, wildcard: bool) -> None:
    if value.strip() == "*":
        if not wildcard:
            raise ConfigError("'*' is not allowed here", field=flag)
        return
    for item in split(value):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{item!r} is not an address range (CIDR)", field=flag) from None


def _address(value: str, what: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not an IP address", field=what) from None
