"""The DNS proxy over real UDP and TCP sockets on loopback, asked with dnspython's client.

Unknown names go to a fake upstream resolver on another loopback port (never the internet).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from meshagent.agent.config import parse_config
from meshagent.agent.dns_runtime import start_dns, upstream_servers
from meshagent.dns import DnsProxy, NameTable, Server, TableOptions, Upstreams
from meshagent.model.source import SourceEvent
from meshagent.normalize import Normalizer
from meshagent.testing.fake_dns import FakeResolver
from tests.unit.normalize_helpers import delete, upsert

LOOP = "127.0.0.1"
BIG = [f"192.0.2.{i}" for i in range(1, 60)]  # an answer over 512 bytes


def _se(name: str, host: str, extra: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: demo
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
{extra}"""


HELLO = _se("hello", "hello", "  resolution: STATIC\n  addresses: [10.10.0.1]\n")
V6 = _se("six", "six.example.com", "  resolution: STATIC\n  addresses: ['fd00::6']\n")
AUTO = _se("auto", "api.partner.com", "  resolution: DNS\n")


@dataclass
class Rig:
    proxy: DnsProxy
    upstream: FakeResolver
    normalizer: Normalizer

    async def ask(self, name: str, kind: str = "A", *, tcp: bool = False) -> dns.message.Message:
        query = dns.message.make_query(name, kind)
        ask = dns.query.tcp if tcp else dns.query.udp
        return await asyncio.to_thread(ask, query, LOOP, timeout=3, port=self.proxy.port)

    async def publish(self, *events: object) -> None:
        snapshot, diags = self.normalizer.apply(events)  # type: ignore[arg-type]
        assert [d for d in diags if d.severity == "error"] == []
        await self.proxy.follow(snapshot)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    upstream = FakeResolver({"www.outside.test.": ["192.0.2.10"], "big.outside.test.": BIG})
    await upstream.start()
    options = TableOptions(namespace="demo", search_domains=("corp.test",))
    upstreams = Upstreams([Server(LOOP, upstream.port)], timeout=2.0)
    proxy = DnsProxy(NameTable(options), upstreams, address=LOOP, port=0)
    await proxy.start()
    rig = Rig(proxy, upstream, Normalizer())
    try:
        yield rig
    finally:
        await proxy.stop()
        await upstream.stop()


def _addresses(response: dns.message.Message, kind: str = "A") -> list[str]:
    rdtype = dns.rdatatype.from_text(kind)
    return sorted(r.to_text() for rr in response.answer if rr.rdtype == rdtype for r in rr)


async def test_before_the_first_table_it_answers_servfail(rig: Rig) -> None:
    response = await rig.ask("www.outside.test")
    assert response.rcode() == dns.rcode.SERVFAIL
    assert not rig.proxy.ready and rig.upstream.udp_queries == 0


async def test_a_and_aaaa_of_mesh_names_over_udp_and_tcp(rig: Rig) -> None:
    await rig.publish(upsert(HELLO, V6, AUTO))
    for tcp in (False, True):
        a = await rig.ask("hello.demo.svc.cluster.local", tcp=tcp)
        assert a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA
        assert _addresses(a) == ["10.10.0.1"]
        assert a.answer[0].ttl == 30
        aaaa = await rig.ask("six.example.com", "AAAA", tcp=tcp)
        assert _addresses(aaaa, "AAAA") == ["fd00::6"] and aaaa.flags & dns.flags.AA
    auto = await rig.ask("api.partner.com")
    vip = rig.normalizer.snapshot.services["api.partner.com"].auto_addresses[0]
    assert _addresses(auto) == [vip] and vip.startswith("240.240.")
    assert rig.upstream.udp_queries == rig.upstream.tcp_queries == 0


async def test_a_known_name_of_a_type_it_lacks_is_noerror_and_empty(rig: Rig) -> None:
    await rig.publish(upsert(HELLO, V6))
    aaaa = await rig.ask("hello.demo.svc.cluster.local", "AAAA")
    a = await rig.ask("six.example.com", "A")
    for response in (aaaa, a):
        assert response.rcode() == dns.rcode.NOERROR and response.answer == []
        assert response.flags & dns.flags.AA
    assert rig.upstream.udp_queries == 0


async def test_short_names_and_the_search_domain_form(rig: Rig) -> None:
    await rig.publish(upsert(HELLO))
    for name in ("hello", "hello.demo", "hello.demo.svc", "HeLLo.Demo.svc.cluster.local"):
        response = await rig.ask(name)
        assert _addresses(response) == ["10.10.0.1"], name
        assert (
            response.question[0].name.to_text()
            == dns.message.make_query(name, "A").question[0].name.to_text()
        )  # the question comes back as asked
    # the first search domain appended (as a resolver does first): CNAME + the addresses
    response = await rig.ask("hello.demo.svc.cluster.local.corp.test")
    assert response.answer[0].rdtype == dns.rdatatype.CNAME
    assert response.answer[0][0].target.to_text() == "hello.demo.svc.cluster.local."
    assert _addresses(response) == ["10.10.0.1"]


async def test_unknown_names_are_forwarded_and_truncation_falls_back_to_tcp(rig: Rig) -> None:
    await rig.publish(upsert(HELLO))
    response = await rig.ask("www.outside.test")
    assert _addresses(response) == ["192.0.2.10"] and not response.flags & dns.flags.AA
    missing = await rig.ask("nothing.outside.test")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    # a mesh name's other types go upstream too (the mesh knows only addresses)
    await rig.ask("hello.demo.svc.cluster.local", "TXT")
    assert rig.upstream.names[-1] == "hello.demo.svc.cluster.local."
    # an answer over 512 bytes: upstream truncates over UDP; for a TCP client the proxy asks
    # again over TCP and answers whole, a UDP client gets the truncated reply (and retries)
    whole = await rig.ask("big.outside.test", tcp=True)
    assert _addresses(whole) == sorted(BIG) and rig.upstream.tcp_queries >= 1
    tcp_before = rig.upstream.tcp_queries
    cut = await rig.ask("big.outside.test")
    assert cut.flags & dns.flags.TC and cut.answer == []
    assert rig.upstream.tcp_queries == tcp_before  # relayed as truncated: the client retries
    retried = await asyncio.to_thread(
        dns.query.udp_with_fallback,
        dns.message.make_query("big.outside.test", "A"),
        LOOP,
        3,
        rig.proxy.port,
    )
    assert _addresses(retried[0]) == sorted(BIG) and retried[1] is True


async def test_a_name_removed_from_the_mesh_stops_answering(rig: Rig) -> None:
    await rig.publish(upsert(HELLO))
    assert _addresses(await rig.ask("hello.demo")) == ["10.10.0.1"]
    await rig.publish(delete(HELLO))
    gone = await rig.ask("hello.demo")
    assert gone.rcode() == dns.rcode.NXDOMAIN and not gone.flags & dns.flags.AA  # upstream's
    assert rig.upstream.names[-1] == "hello.demo."


async def test_no_upstream_answer_is_servfail(rig: Rig) -> None:
    await rig.publish(upsert(HELLO))
    rig.proxy.upstreams.servers = [Server(LOOP, _free_udp_port())]
    rig.proxy.upstreams.timeout = 0.2
    response = await rig.ask("www.outside.test")
    assert response.rcode() == dns.rcode.SERVFAIL


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOP, 0))
        return int(s.getsockname()[1])


async def test_garbage_never_stops_the_server(rig: Rig) -> None:
    await rig.publish(upsert(HELLO))
    good = dns.message.make_query("hello.demo", "A").to_wire()
    bad = [
        b"",
        b"\x00",
        b"\x12\x34" + b"\xff" * 40,  # a header and nonsense
        good[:-3],  # truncated question
        good[:2] + b"\x80" + good[3:],  # a response, not a query: dropped
        good[:12] + b"\x3f" + b"a" * 10,  # a label running off the end
        good + b"trailing junk",
    ]

    def send_udp() -> list[bytes]:
        replies = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            for wire in bad:
                s.sendto(wire, (LOOP, rig.proxy.port))
                try:
                    replies.append(s.recv(4096))
                except TimeoutError:
                    replies.append(b"")
        return replies

    replies = await asyncio.to_thread(send_udp)
    for wire, reply in zip(bad, replies, strict=True):
        if reply:  # a reply to garbage is only ever a FORMERR with the query's id
            assert reply[:2] == wire[:2] and reply[3] & 0x0F == dns.rcode.FORMERR
    assert replies[0] == replies[1] == replies[4] == b""

    def send_tcp() -> None:
        with socket.create_connection((LOOP, rig.proxy.port), timeout=2) as s:
            s.sendall(b"\x00\x05abc")  # a length longer than what follows, then close

    await asyncio.to_thread(send_tcp)
    # and it still answers
    for tcp in (False, True):
        assert _addresses(await rig.ask("hello.demo", tcp=tcp)) == ["10.10.0.1"]


async def test_agent_runtime_skips_itself_and_reads_resolv_conf(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\nnameserver 127.0.0.2\nsearch a.test b.test\n")
    config = parse_config(
        f"node: {{id: n1, namespace: demo}}\nsources: {{files: null}}\n"
        f"dns: {{enabled: true, port: 53, resolv_conf: {resolv}}}\n",
        tmp_path / "agent.yaml",
    )
    servers, search = upstream_servers(config)
    assert servers == [Server("127.0.0.2", 53)] and search == ("a.test", "b.test")
    # and a port already taken is a clear error, not a traceback
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOP, 0))
        taken = s.getsockname()[1]
        config = parse_config(
            f"sources: {{files: null}}\ndns: {{enabled: true, port: {taken}, "
            f"resolv_conf: {resolv}}}\n",
            tmp_path / "agent.yaml",
        )
        with pytest.raises(Exception, match=f"dns: cannot listen on 127.0.0.1:{taken}"):
            await start_dns(config)


def _free_port() -> int:
    """A port free for UDP and TCP on loopback right now (the agent binds it next)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((LOOP, 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((LOOP, port))
                except OSError:
                    continue
                return port
    raise AssertionError("no free port")


async def test_agent_serves_dns_after_its_first_table_and_readyz_waits(tmp_path: Path) -> None:
    from meshagent.agent.daemon import Agent
    from tests.polling import async_wait_for
    from tests.unit.normalize_helpers import raw
    from tests.unit.test_daemon import QueueAdapter

    upstream = FakeResolver({"www.outside.test.": ["192.0.2.10"]})
    await upstream.start()
    port = _free_port()
    config = parse_config(
        "node: {id: vm-1, namespace: demo}\nstate_dir: state\nadmin: {port: 0}\n"
        f"dns: {{enabled: true, port: {port}, upstreams: ['127.0.0.1:{upstream.port}']}}\n",
        tmp_path / "agent.yaml",
    )
    adapter = QueueAdapter()
    agent = Agent(config, adapter_factory=lambda _: [adapter])
    await agent.start()
    try:
        assert "dns proxy has no name table yet" in agent.ready_reasons()
        query = dns.message.make_query("hello.demo", "A")
        early = await asyncio.to_thread(dns.query.udp, query, LOOP, 3, port)
        assert early.rcode() == dns.rcode.SERVFAIL  # no mesh name may go upstream yet
        await adapter.events.put(SourceEvent("files", upserts=(raw(HELLO),), synced=True))
        await async_wait_for(
            lambda: "dns proxy has no name table yet" not in agent.ready_reasons(),
            what="the first table",
        )
        answer = await asyncio.to_thread(dns.query.tcp, query, LOOP, 3, port)
        assert _addresses(answer) == ["10.10.0.1"]
        outside = dns.message.make_query("www.outside.test", "A")
        forwarded = await asyncio.to_thread(dns.query.udp, outside, LOOP, 3, port)
        assert _addresses(forwarded) == ["192.0.2.10"]
        metrics = agent.metrics.exposition().decode()
        assert "meshagent_dns_requests_total 3.0" in metrics
        assert "meshagent_dns_upstream_requests_total 1.0" in metrics
        assert "meshagent_dns_names " in metrics
        assert agent.admin is not None
        page = agent.admin.pages["/debug/dns"]()
        assert page.status == 200
        shown = json.loads(page.body)
        assert shown["names"]["hello.demo."] == {"a": ["10.10.0.1"], "aaaa": []}
        assert shown["ready"] and shown["forwarded"] == 1
    finally:
        await agent.stop()
        await upstream.stop()


async def test_a_large_change_is_built_aside_while_the_old_table_answers(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshagent.dns.server as server

    await rig.publish(upsert(HELLO))
    first = rig.proxy.table
    monkeypatch.setattr(server, "REBUILD_HOSTS", 0)  # every change counts as large
    await rig.publish(upsert(V6), delete(HELLO))
    assert rig.proxy.table is not first  # a new table, swapped in whole
    assert _addresses(await rig.ask("six.example.com", "AAAA"), "AAAA") == ["fd00::6"]
    assert (await rig.ask("hello.demo")).rcode() == dns.rcode.NXDOMAIN  # upstream's answer


async def test_a_dead_upstream_is_skipped_without_waiting_for_its_timeout(rig: Rig) -> None:
    await rig.publish(upsert(HELLO))
    live = rig.proxy.upstreams.servers[0]
    rig.proxy.upstreams.servers = [Server(LOOP, _free_udp_port()), live]
    rig.proxy.upstreams.timeout = 10.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await rig.ask("www.outside.test")
    assert _addresses(response) == ["192.0.2.10"]
    assert loop.time() - started < 5.0  # the closed port refused at once (ICMP)


async def test_a_forwarding_loop_is_cut_at_once(rig: Rig) -> None:
    # given an upstream that is the proxy itself (as when capture also redirects the agent's
    # own queries to port 53 back to it)
    await rig.publish(upsert(HELLO))
    rig.proxy.upstreams.servers = [Server(LOOP, rig.proxy.port)]
    rig.proxy.upstreams.timeout = 10.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await rig.ask("www.outside.test")
    # then the looped query is refused at its first return, not bounced until timeouts
    assert response.rcode() == dns.rcode.SERVFAIL
    assert loop.time() - started < 5.0
    assert rig.proxy.forwarded <= 2


async def test_dual_stack_also_listens_on_ipv6_loopback(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback ([::1]) on this host")
    port = _free_port()
    config = parse_config(
        "node: {id: n1, namespace: demo}\nsources: {files: null}\n"
        f"dns: {{enabled: true, port: {port}, dual_stack: true, upstreams: []}}\n",
        tmp_path / "agent.yaml",
    )
    proxy = await start_dns(config)
    try:
        snapshot, _ = Normalizer().apply([upsert(HELLO)])
        await proxy.follow(snapshot)
        query = dns.message.make_query("hello.demo", "A")
        for ask in (dns.query.udp, dns.query.tcp):
            answer = await asyncio.to_thread(ask, query, "::1", 3, port)
            assert _addresses(answer) == ["10.10.0.1"]
    finally:
        await proxy.stop()


async def test_forwarded_queries_change_source_port_and_id(rig: Rig) -> None:
    # RFC 5452: a spoofer must guess the source port as well as the id
    import meshagent.dns.upstream as upstream

    await rig.publish(upsert(HELLO))
    count = upstream.ROTATE_AFTER * 3 + 5

    def ask_many() -> list[list[str]]:
        query = dns.message.make_query("www.outside.test", "A")
        return [_addresses(dns.query.udp(query, LOOP, 3, rig.proxy.port)) for _ in range(count)]

    answers = await asyncio.to_thread(ask_many)
    assert answers == [["192.0.2.10"]] * count
    assert len(rig.upstream.source_ports) >= 4
    channels = rig.proxy.upstreams._retiring
    assert all(c.closed for c in channels) and len(channels) <= 1  # old sockets are closed


async def test_names_resolve_even_when_the_first_translation_fails(tmp_path: Path) -> None:
    from meshagent.agent.daemon import Agent
    from tests.polling import async_wait_for
    from tests.unit.normalize_helpers import raw
    from tests.unit.test_daemon import FakeTranslator, QueueAdapter

    port = _free_port()
    config = parse_config(
        "node: {id: vm-1, namespace: demo}\nstate_dir: state\nadmin: {port: 0}\n"
        f"dns: {{enabled: true, port: {port}, upstreams: []}}\n",
        tmp_path / "agent.yaml",
    )
    adapter, translator = QueueAdapter(), FakeTranslator()
    translator.fail = True  # a translator bug: nothing is published to Envoy
    agent = Agent(config, adapter_factory=lambda _: [adapter], translator=translator)
    await agent.start()
    try:
        await adapter.events.put(SourceEvent("files", upserts=(raw(HELLO),), synced=True))
        await async_wait_for(lambda: agent.dns.ready, what="the first table")  # type: ignore[union-attr]
        query = dns.message.make_query("hello.demo", "A")
        answer = await asyncio.to_thread(dns.query.udp, query, LOOP, 3, port)
        assert _addresses(answer) == ["10.10.0.1"]
    finally:
        await agent.stop()
