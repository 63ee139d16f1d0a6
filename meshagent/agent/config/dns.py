"""The `dns` key of the agent config: the DNS proxy (meshagent/dns).

| key | default | meaning |
|---|---|---|
| `dns.enabled` | `false` | run the DNS proxy |
| `dns.address` | `127.0.0.1` | where it listens, UDP and TCP |
| `dns.port` | `15053` | its port (capture redirects port 53 here) |
| `dns.upstreams` | from `resolv_conf` | other names go here: `["10.0.0.2", "10.0.0.3:5353"]` |
| `dns.resolv_conf` | `/etc/resolv.conf` | read at start for `nameserver` and `search` |
| `dns.search_domains` | from `resolv_conf` | the host's search domains (the first expands names) |
| `dns.dual_stack` | `false` | answer AAAA with the automatic IPv6 VIPs too; listen on [::1] too |
| `dns.upstream_timeout_ms` | `2000` | how long each upstream resolver is given |
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from meshagent.agent.config.section import Section, ip


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """The DNS proxy's settings; upstreams and search_domains None: from resolv_conf."""

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 15053
    upstreams: tuple[tuple[str, int], ...] | None = None
    resolv_conf: Path = Path("/etc/resolv.conf")
    search_domains: tuple[str, ...] | None = None
    dual_stack: bool = False
    upstream_timeout_ms: int = 2000


def parse_dns(s: Section, base: Path) -> DnsConfig:
    """`dns:` (see the module docstring)."""
    s.only(
        "enabled",
        "address",
        "port",
        "upstreams",
        "resolv_conf",
        "search_domains",
        "dual_stack",
        "upstream_timeout_ms",
    )
    address = s.get("address", str, "127.0.0.1")
    ip(s, "address", address)
    upstreams = None
    if s.data.get("upstreams") is not None:
        upstreams = tuple(
            _upstream(s, i, item) for i, item in enumerate(s.get("upstreams", list, []))
        )
    search = None
    if s.data.get("search_domains") is not None:
        search = tuple(_domain(s, i, d) for i, d in enumerate(s.get("search_domains", list, [])))
    timeout = s.get("upstream_timeout_ms", int, 2000)
    if not 10 <= timeout <= 60_000:
        raise s.error("must be between 10 and 60000", "upstream_timeout_ms")
    return DnsConfig(
        enabled=s.get("enabled", bool, False),
        address=address,
        port=s.port("port", 15053, zero_ok=False),
        upstreams=upstreams,
        resolv_conf=(base / s.get("resolv_conf", str, "/etc/resolv.conf")).absolute(),
        search_domains=search,
        dual_stack=s.get("dual_stack", bool, False),
        upstream_timeout_ms=timeout,
    )


def _upstream(s: Section, index: int, item: object) -> tuple[str, int]:
    key = f"upstreams[{index}]"
    if not isinstance(item, str) or not item:
        raise s.error('must be "IP" or "IP:port"', key)
    try:
        return str(ipaddress.ip_address(item.strip("[]"))), 53
    except ValueError:
        pass
    host, sep, port = item.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise s.error(f'{item!r} is not "IP" or "IP:port"', key)
    ip(s, key, host.strip("[]"))
    return str(ipaddress.ip_address(host.strip("[]"))), int(port)


def _domain(s: Section, index: int, item: object) -> str:
    if not isinstance(item, str) or not item.strip(".") or any(c.isspace() for c in item):
        raise s.error("must be a domain name", f"search_domains[{index}]")
    return item.strip(".").lower()
