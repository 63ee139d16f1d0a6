"""The proxy's answers without sockets: the hand-written fast path equals dnspython's, and no
input makes answer() raise."""

from __future__ import annotations

import random
from types import MappingProxyType

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from meshagent.dns import DnsProxy, TableOptions, Upstreams, build_table
from meshagent.dns.server import Forward
from meshagent.dns.wire import read_plain_query
from meshagent.model.services import Resolution, Service, ServicePort
from meshagent.model.snapshot import MeshSnapshot

PORTS = (ServicePort(80, "http", "HTTP"),)


def _proxy() -> DnsProxy:
    services = [
        Service("hello.demo.svc.cluster.local", "demo", PORTS, Resolution.STATIC,
                addresses=("10.10.0.1", "10.10.0.2", "fd00::1")),
        Service("v4.example.com", "demo", PORTS, Resolution.STATIC, addresses=("10.0.0.4",)),
    ]  # fmt: skip
    snapshot = MeshSnapshot(version=1, services=MappingProxyType({s.host: s for s in services}))
    table = build_table(snapshot, TableOptions(namespace="demo", search_domains=("corp.test",)))
    return DnsProxy(table, Upstreams([]))


QUERIES = [
    ("hello.demo.svc.cluster.local", "A", {}),
    ("HeLLo.demo", "AAAA", {}),
    ("hello", "A", {"use_edns": 0, "payload": 4096}),
    ("v4.example.com", "AAAA", {"use_edns": 0}),  # known name, type it lacks
    ("V4.Example.Com", "A", {"use_edns": 0, "want_dnssec": True}),
]


@pytest.mark.parametrize(("name", "kind", "options"), QUERIES)
@pytest.mark.parametrize("tcp", [False, True])
def test_fast_path_equals_the_dnspython_path(
    name: str, kind: str, options: dict[str, object], tcp: bool
) -> None:
    proxy = _proxy()
    query = dns.message.make_query(name, kind, **options)  # type: ignore[arg-type]
    wire = query.to_wire()
    assert read_plain_query(wire) is not None
    fast = proxy.answer(wire, tcp)
    assert isinstance(fast, bytes)
    record = proxy.table.lookup(name.lower() + ".")
    assert record is not None
    slow = proxy._local(dns.message.from_wire(wire), record, tcp)
    got, want = dns.message.from_wire(fast), dns.message.from_wire(slow)
    assert got == want  # id, flags, question, answer (order and TTL), EDNS
    assert got.flags & dns.flags.AA and got.rcode() == dns.rcode.NOERROR
    assert got.question[0].name.to_text() == query.question[0].name.to_text()  # case kept
    assert got.edns == want.edns and got.payload == want.payload


def test_other_types_and_unknown_names_are_forwarded_with_the_client_size() -> None:
    proxy = _proxy()
    txt = dns.message.make_query("hello.demo", "TXT").to_wire()
    assert proxy.answer(txt, False) == Forward(512)
    other = dns.message.make_query("www.example.org", "A", use_edns=0, payload=4000).to_wire()
    assert proxy.answer(other, False) == Forward(4000)
    assert proxy.answer(other, True) == Forward(65535)


def test_search_domain_form_answers_a_cname_chain() -> None:
    proxy = _proxy()
    wire = dns.message.make_query("hello.demo.corp.test", "A").to_wire()
    reply = dns.message.from_wire(proxy.answer(wire, False))  # type: ignore[arg-type]
    assert [rr.rdtype for rr in reply.answer] == [5, 1]  # CNAME, then A
    assert reply.answer[1].name.to_text() == "hello.demo."


def test_no_input_makes_answer_raise() -> None:
    proxy = _proxy()
    seeds = [m[0] for m in QUERIES]
    wires = [dns.message.make_query(n, "A", use_edns=0).to_wire() for n in seeds]
    rnd = random.Random(12)
    for _ in range(5_000):
        wire = bytearray(rnd.choice(wires))
        for _ in range(rnd.randint(1, 4)):
            action = rnd.random()
            if action < 0.5 and wire:
                wire[rnd.randrange(len(wire))] = rnd.randrange(256)
            elif action < 0.75:
                del wire[rnd.randrange(len(wire) + 1) :]
            else:
                wire += bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        for tcp in (False, True):
            reply = proxy.answer(bytes(wire), tcp)
            if isinstance(reply, bytes):
                dns.message.from_wire(reply, ignore_trailing=True)  # a reply that parses


def test_several_addresses_rotate_between_answers() -> None:
    proxy = _proxy()
    wire = dns.message.make_query("hello.demo", "A").to_wire()
    firsts = set()
    for _ in range(4):
        reply = dns.message.from_wire(proxy.answer(wire, False))  # type: ignore[arg-type]
        firsts.add(reply.answer[0][0].to_text())
        assert sorted(r.to_text() for r in reply.answer[0]) == ["10.10.0.1", "10.10.0.2"]
    assert firsts == {"10.10.0.1", "10.10.0.2"}
