"""Automatic VIPs (normalize/vips.py): deterministic by host name, fleet-wide, and who gets one."""

from __future__ import annotations

import hashlib
import ipaddress
import random

import pytest

from meshagent.model.services import Resolution, Service, ServicePort
from meshagent.model.source import Provenance, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.normalize.vips import (
    SLOTS,
    VipAllocator,
    allocate,
    home_slot,
    slot_addresses,
    wants_vip,
)
from tests.unit.normalize_helpers import delete, raw, upsert


def _se(name: str, hosts: str, resolution: str = "DNS", extra: str = "") -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: ns
spec:
  hosts: [{hosts}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: {resolution}
{extra}"""


def _service(host: str, **kw: object) -> Service:
    return Service(host, "ns", (ServicePort(80, "http", "HTTP"),), Resolution.DNS, **kw)  # type: ignore[arg-type]


def test_slot_addresses_cover_the_ranges_without_0_or_255() -> None:
    v4 = ipaddress.ip_network("240.240.0.0/16")
    v6 = ipaddress.ip_network("2001:2::/48")
    assert slot_addresses(0) == ("240.240.0.1", "2001:2::f0f0:1")
    assert slot_addresses(253) == ("240.240.0.254", "2001:2::f0f0:fe")
    assert slot_addresses(254) == ("240.240.1.1", "2001:2::f0f0:101")
    assert slot_addresses(SLOTS - 1) == ("240.240.255.254", "2001:2::f0f0:fffe")
    seen4, seen6 = set(), set()
    for slot in range(SLOTS):
        a4, a6 = slot_addresses(slot)
        ip4, ip6 = ipaddress.ip_address(a4), ipaddress.ip_address(a6)
        assert ip4 in v4 and ip6 in v6 and str(ip6) == a6  # canonical text
        assert a4.rsplit(".", 1)[1] not in ("0", "255")
        seen4.add(a4)
        seen6.add(a6)
    assert len(seen4) == len(seen6) == SLOTS


def test_home_slot_is_a_fixed_function_of_the_lower_cased_name() -> None:
    # Fixed values: another implementation of the documented rule must agree with these.
    assert home_slot("hello.demo.svc.cluster.local") == home_slot("Hello.Demo.svc.cluster.local")
    digest = hashlib.sha256(b"api.example.com").digest()
    assert home_slot("api.example.com") == int.from_bytes(digest[:8], "big") % 65024
    # Pinned: agents of different versions must agree, so the rule never changes silently.
    assert home_slot("api.example.com") == 10138
    assert slot_addresses(10138) == ("240.240.39.233", "2001:2::f0f0:27e9")
    assert slot_addresses(home_slot("hello.demo.svc.cluster.local")) == (
        "240.240.255.212",
        "2001:2::f0f0:ffd4",
    )


def test_who_gets_a_vip() -> None:
    kube = Provenance("kubernetes", "Service ns/a", "Service", "ns", "a")
    assert wants_vip(_service("a.example.com"))
    assert wants_vip(replace_res(_service("a.example.com"), Resolution.STATIC))
    assert not wants_vip(replace_res(_service("a.example.com"), Resolution.NONE))
    assert not wants_vip(_service("*.example.com"))
    assert not wants_vip(_service("a.example.com", addresses=("10.0.0.1",)))
    assert not wants_vip(_service("a.example.com", addresses=("10.0.0.0/24",)))
    assert not wants_vip(_service("a.ns.svc.cluster.local", provenance=kube))
    consul = Provenance("consul", "consul service web", "Service", "default", "web")
    assert wants_vip(_service("web.service.consul", provenance=consul))


def replace_res(service: Service, resolution: Resolution) -> Service:
    import dataclasses

    return dataclasses.replace(service, resolution=resolution)


def test_collisions_the_smaller_name_keeps_the_slot_whatever_the_order() -> None:
    # given names that share home slots in a tiny table
    slots = 7
    names = [f"svc{i}.example.com" for i in range(6)]
    reference = allocate(names, slots)
    assert sorted(reference.values()) == sorted(set(reference.values()))  # all distinct
    # when they arrive (and leave) in any order, then the table is the reference's
    for seed in range(50):
        order = names[:]
        random.Random(seed).shuffle(order)
        alloc = VipAllocator(slots)
        for n in order:
            alloc.place(_small(n))
        assert {n: alloc.slot(n) for n in names} == reference
        gone = order[seed % len(order)]
        alloc.release(gone)
        rest = [n for n in names if n != gone]
        assert {n: alloc.slot(n) for n in rest} == allocate(rest, slots)


def test_two_real_hosts_sharing_a_home_slot() -> None:
    # given two host names whose home slots collide in the real table (found by search)
    seen: dict[int, str] = {}
    for i in range(100_000):
        name = f"svc{i}.example.com"
        other = seen.setdefault(home_slot(name), name)
        if other != name:
            break
    small, large = sorted((other, name))
    home = home_slot(small)
    # when both are allocated, in either order, then the smaller name keeps the home slot
    for order in ((small, large), (large, small)):
        alloc = VipAllocator()
        vips = {h: alloc.place(_service(h)).auto_addresses for h in order}
        vips.update({h: alloc.place(_service(h)).auto_addresses for h in alloc.take_moved()})
        assert vips[small] == slot_addresses(home)
        assert vips[large] == slot_addresses((home + 1) % SLOTS)


def _small(host: str) -> Service:
    return _service(host)


def test_incremental_table_equals_the_reference_under_random_churn() -> None:
    for trial in range(200):
        rnd = random.Random(trial)
        slots = rnd.choice([3, 5, 8, 13])
        alloc, live = VipAllocator(slots), set[str]()
        names = [f"h{i}" for i in range(20)]
        for _ in range(40):
            name = rnd.choice(names)
            if name in live and rnd.random() < 0.5:
                alloc.release(name)
                live.discard(name)
            elif len(live) < slots:
                alloc.place(_service(name))
                live.add(name)
            assert {n: alloc.slot(n) for n in live} == allocate(sorted(live), slots)


def test_a_full_table_gives_no_vip_and_no_error() -> None:
    alloc = VipAllocator(2)
    got = [alloc.place(_service(h)).auto_addresses for h in ("a", "b", "c")]
    assert [bool(a) for a in got] == [True, True, False]


def test_normalizer_gives_the_same_vips_on_every_host_whatever_the_order() -> None:
    docs = [_se(f"se{i}", f"s{i}.example.com") for i in range(30)]
    first, second = Normalizer(), Normalizer()
    snap1, _ = first.apply([upsert(*docs)])
    for doc in reversed(docs):  # another host, another order, one at a time
        snap2, _ = second.apply([upsert(doc)])
    vips1 = {h: s.auto_addresses for h, s in snap1.services.items()}
    vips2 = {h: s.auto_addresses for h, s in snap2.services.items()}
    assert vips1 == vips2 and len(vips1) == 30
    assert all(len(v) == 2 for v in vips1.values())
    assert len({v[0] for v in vips1.values()}) == 30
    assert vips1["s3.example.com"][0] == slot_addresses(home_slot("s3.example.com"))[0]


def test_normalizer_allocates_only_for_eligible_entries() -> None:
    n = Normalizer()
    snap, diags = n.apply(
        [
            upsert(
                _se("dns", "dns.example.com"),
                _se(
                    "static", "static.example.com", "STATIC", "  endpoints: [{address: 1.1.1.1}]\n"
                ),
                _se("none", "none.example.com", "NONE"),
                _se("wild", '"*.wild.example.com"', "NONE"),
                _se("given", "given.example.com", "STATIC", "  addresses: [10.1.2.3]\n"),
            )
        ]
    )
    assert [d for d in diags if d.severity == "error"] == []
    auto = {h: s.auto_addresses for h, s in snap.services.items()}
    assert auto["dns.example.com"] and auto["static.example.com"]
    assert auto["none.example.com"] == auto["*.wild.example.com"] == ()
    assert auto["given.example.com"] == ()


def test_vip_follows_edits_and_unchanged_services_keep_their_object() -> None:
    n = Normalizer()
    snap, _ = n.apply([upsert(_se("a", "a.example.com"))])
    svc = snap.services["a.example.com"]
    assert svc.auto_addresses
    # an unrelated change keeps the Service object (the translator caches by identity)
    snap, _ = n.apply([upsert(_se("b", "b.example.com"))])
    assert snap.services["a.example.com"] is svc
    # given addresses, the VIP goes; without them again, the same VIP comes back
    snap, _ = n.apply([upsert(_se("a", "a.example.com", extra="  addresses: [10.9.9.9]\n"))])
    assert snap.services["a.example.com"].auto_addresses == ()
    snap, _ = n.apply([upsert(_se("a", "a.example.com"))])
    assert snap.services["a.example.com"].auto_addresses == svc.auto_addresses
    snap, _ = n.apply([delete(_se("a", "a.example.com"))])
    assert "a.example.com" not in snap.services


def test_kubernetes_services_keep_their_cluster_ip() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"clusterIP": "None", "ports": [{"name": "tcp", "port": 5432}]},
    }
    base = raw(_se("x", "x.example.com"))
    events = [
        SourceEvent(
            "kubernetes",
            upserts=tuple(
                type(base)(
                    "kubernetes",
                    "Service",
                    "v1",
                    "shop",
                    body["metadata"]["name"],  # type: ignore[index]
                    body,
                    Provenance("kubernetes", "resourceVersion 1", "Service", "shop", "x"),
                )
                for body in (service, headless)
            ),
        )
    ]
    snap, _ = Normalizer().apply(events)
    web = snap.services["web.shop.svc.cluster.local"]
    db = snap.services["db.shop.svc.cluster.local"]
    assert web.addresses == ("10.96.0.10",) and web.auto_addresses == ()
    assert db.addresses == () and db.auto_addresses == ()


def test_normalizer_snapshots_match_the_reference_under_churn_and_collisions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a tiny table (7 slots), so that hosts collide and move each other
    import meshagent.normalize.normalizer as normalizer_module

    monkeypatch.setattr(normalizer_module, "VipAllocator", lambda: VipAllocator(7))
    monkeypatch.setattr("meshagent.normalize.vips.SLOTS", 7)
    rnd = random.Random(5)
    n = Normalizer()
    live: dict[str, str] = {}
    for _ in range(120):
        # when ServiceEntries come, go and change (a batch of 1-3 edits at a time)
        events = []
        for _ in range(rnd.randint(1, 3)):
            name = f"se{rnd.randrange(9)}"
            if name in live and rnd.random() < 0.4:
                events.append(delete(live.pop(name)))
                continue
            resolution = rnd.choice(["DNS", "STATIC", "NONE"])
            extra = "  addresses: [10.0.0.1]\n" if rnd.random() < 0.15 else ""
            if len([d for d in live.values() if "NONE" not in d]) >= 6:
                resolution = "NONE"  # never more eligible hosts than slots
            live[name] = _se(name, f"{name}.example.com", resolution, extra)
            events.append(upsert(live[name]))
        snap, _ = n.apply(events)
        # then every Service carries the VIP of the reference table of the eligible hosts
        eligible = [h for h, s in snap.services.items() if wants_vip(s)]
        reference = allocate(eligible, 7)
        for host, service in snap.services.items():
            want = slot_addresses(reference[host]) if host in reference else ()
            assert service.auto_addresses == want, host
