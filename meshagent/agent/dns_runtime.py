"""Starting the DNS proxy from the agent config: its upstreams (never itself) and names."""

from __future__ import annotations

import ipaddress

import structlog

from meshagent.agent.config import AgentConfig
from meshagent.dns.resolvconf import read_resolv_conf
from meshagent.dns.server import DnsProxy
from meshagent.dns.table import NameTable, TableOptions
from meshagent.dns.upstream import Server, Upstreams
from meshagent.errors import ConfigError

log = structlog.get_logger("meshagent.dns")


def is_self(address: str, port: int, listen: str, listen_port: int) -> bool:
    """Whether address:port is where the proxy listens (a wildcard listen covers loopback)."""
    if port != listen_port:
        return False
    ip, bound = ipaddress.ip_address(address), ipaddress.ip_address(listen)
    return ip == bound or (bound.is_unspecified and ip.is_loopback)


def upstream_servers(config: AgentConfig) -> tuple[list[Server], tuple[str, ...]]:
    """The resolvers to forward to (config, else resolv.conf's, less this proxy) and the
    search domains (config, else resolv.conf's)."""
    dns = config.dns
    resolv = read_resolv_conf(dns.resolv_conf)
    pairs = dns.upstreams if dns.upstreams is not None else [(a, 53) for a in resolv.nameservers]
    servers = [Server(a, p) for a, p in pairs if not is_self(a, p, dns.address, dns.port)]
    skipped = len(pairs) - len(servers)
    if skipped:
        log.info("dns_upstream_self_skipped", skipped=skipped)
    search = dns.search_domains if dns.search_domains is not None else resolv.search
    return servers, search


async def start_dns(config: AgentConfig) -> DnsProxy:
    """A listening DnsProxy (no names yet: it answers SERVFAIL until the first update)."""
    dns = config.dns
    servers, search = upstream_servers(config)
    if not servers:
        log.warning("dns_no_upstreams", resolv_conf=str(dns.resolv_conf))
    options = TableOptions(
        namespace=config.node.namespace,
        domain_suffix=config.domain_suffix,
        search_domains=search,
        dual_stack=dns.dual_stack,
    )
    upstreams = Upstreams(servers, timeout=dns.upstream_timeout_ms / 1000)
    proxy = DnsProxy(NameTable(options), upstreams, address=dns.address, port=dns.port)
    try:
        await proxy.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {dns.address}:{dns.port}: {exc.strerror or exc}", field="dns"
        ) from exc
    log.info("dns_upstreams", servers=[str(s) for s in servers], search=list(search))
    return proxy
