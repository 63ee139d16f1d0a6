"""Starting the DNS proxy from the agent config: its upstreams (never itself) and names."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshagent.agent.admin import Response
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


async def start_dns(config: AgentConfig, registry: CollectorRegistry | None = None) -> DnsProxy:
    """A listening DnsProxy (no names yet: it answers SERVFAIL until the first update), its
    metrics in registry when given."""
    dns = config.dns
    servers, search = upstream_servers(config)
    if not servers:
        log.warning("dns_no_upstreams", resolv_conf=str(dns.resolv_conf))
    if not ipaddress.ip_address(dns.address).is_loopback:
        # It forwards for whoever asks: beyond loopback, keep it behind a firewall.
        log.warning("dns_listening_beyond_loopback", address=dns.address)
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
    if dns.address == "127.0.0.1" and (dns.dual_stack or any(":" in s.address for s in servers)):
        # IPv6 queries that capture redirects (ip6tables) arrive on [::1], as in Istio.
        try:
            await proxy.listen_also("::1")
        except OSError as exc:
            log.warning("dns_ipv6_loopback_unavailable", error=str(exc))
    log.info("dns_upstreams", servers=[str(s) for s in servers], search=list(search))
    if registry is not None:
        registry.register(DnsMetrics(proxy))
    return proxy


class DnsMetrics(Collector):
    """The DNS proxy's counters, read when scraped (the proxy only adds to plain ints)."""

    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        p = self.proxy
        for name, doc, value in (
            ("meshagent_dns_requests", "DNS queries received", p.queries),
            ("meshagent_dns_upstream_requests", "DNS queries forwarded upstream", p.forwarded),
            ("meshagent_dns_upstream_failures", "Forwarded queries no upstream answered",
             p.upstream_failures),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("meshagent_dns_names", "Names the DNS proxy answers", len(p.table))


def dns_page(proxy: DnsProxy) -> Callable[[], Response]:
    """`/debug/dns` (admin socket): where the proxy listens and forwards, its counters, and
    every name it answers with its addresses (or the name it is a CNAME of)."""

    def page() -> Response:
        names = {
            name: {"a": list(r.v4), "aaaa": list(r.v6), **({"cname": r.cname} if r.cname else {})}
            for name, r in proxy.table.items()
        }
        return Response.json(
            200,
            {
                "listening": f"{proxy.address}:{proxy.port}" if proxy.listening else None,
                "ready": proxy.ready,
                "upstreams": [str(s) for s in proxy.upstreams.servers],
                "search_domains": list(proxy.table.options.search_domains),
                "queries": proxy.queries,
                "forwarded": proxy.forwarded,
                "upstream_failures": proxy.upstream_failures,
                "names": names,
            },
        )

    return page
