"""The Consul simulator's per-client connection limit (Consul's
limits.http_max_conns_per_client) and the Consul adapter within its connection budget: with more
services than connections, every service still arrives and every kind of change converges,
and the simulator never refuses the adapter a connection. Loopback only, no Envoy."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from meshagent.adapters.consul import (
    MIN_CONNECTIONS,
    READ_RESERVE,
    ConsulAdapter,
    ConsulOptions,
    changed_checks,
    check_map,
)
from meshagent.model.source import SourceEvent
from meshagent.testing.consul_sim import ConsulSimulator
from meshagent.testing.consul_state import CHECKS_KEY, SERVICES_KEY, service_key
from tests.polling import async_wait_for, wait_for

NODE = "sim-node"


@pytest.fixture
def limited() -> Iterator[ConsulSimulator]:
    """A simulator that lets one client IP hold 20 connections at once."""
    simulator = ConsulSimulator(max_wait_s=30.0, max_conns_per_client=20).start()
    yield simulator
    simulator.stop()


def test_connections_over_the_per_client_limit_are_refused_with_429() -> None:
    sim = ConsulSimulator(max_conns_per_client=3).start()
    held: list[socket.socket] = []
    try:
        for _ in range(3):
            held.append(socket.create_connection(("127.0.0.1", sim.port), timeout=5))
        wait_for(lambda: sim.connections["127.0.0.1"] == 3, what="three connections held")
        with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as extra:
            answer = b""
            while chunk := extra.recv(4096):  # written at once, then closed (as Consul does)
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
        assert b"Connection: close" in answer
        assert answer.endswith(b"too many concurrent connections, please rate limit your calls\n")
        assert sim.refused == 1
        held.pop().close()  # one freed: the next connection is served
        wait_for(lambda: sim.connections["127.0.0.1"] == 2, what="a connection freed")
        with urllib.request.urlopen(f"http://{sim.address}/v1/catalog/services", timeout=5) as r:
            assert r.status == 200
    finally:
        for s in held:
            s.close()
        sim.stop()


def test_health_state_lists_every_check_and_blocks_on_any_check(limited: ConsulSimulator) -> None:
    sim = limited
    sim.state.register_service(NODE, {"ID": "w1", "Service": "web", "Port": 80}, [{}])
    sim.state.register_service(NODE, {"ID": "d1", "Service": "db", "Port": 5432}, [])

    def get(path: str) -> tuple[Any, int]:
        with urllib.request.urlopen(f"http://{sim.address}{path}", timeout=10) as resp:
            return json.loads(resp.read()), int(resp.headers["X-Consul-Index"])

    checks, index = get("/v1/health/state/any")
    assert [(c["Node"], c["CheckID"], c["ServiceName"]) for c in checks] == [
        (NODE, "serfHealth", ""),
        (NODE, "service:w1", "web"),
    ]
    assert checks[1]["Status"] == "critical" and index == sim.state.index_of(CHECKS_KEY)
    critical, _ = get("/v1/health/state/critical")
    assert [c["CheckID"] for c in critical] == ["service:w1"]
    # A check-less registration moves the catalog's index, not the checks' one.
    sim.state.register_service(NODE, {"ID": "d2", "Service": "db", "Port": 5433}, [])
    assert sim.state.index_of(CHECKS_KEY) == index
    sim.state.set_check("service:w1", "passing")
    checks, after = get(f"/v1/health/state/any?index={index}&wait=5s")
    assert after > index and checks[1]["Status"] == "passing"
    assert checks[1]["ModifyIndex"] == after


async def next_matching(
    it: AsyncIterator[SourceEvent], predicate: Any, timeout: float = 15.0
) -> SourceEvent:
    async def find() -> SourceEvent:
        async for event in it:
            assert not event.errors, event.errors  # e.g. a refused connection
            if predicate(event):
                return event
        raise AssertionError("adapter stopped")

    return await asyncio.wait_for(find(), timeout)


def register_checked(sim: ConsulSimulator, count: int = 60) -> None:
    """`count` services svc<i>, one instance s<i> each, with a passing check c<i>."""
    for i in range(count):
        body = {"ID": f"s{i}", "Service": f"svc{i}", "Port": 1000 + i}
        sim.state.register_service(NODE, body, [{"CheckID": f"c{i}", "Status": "passing"}])


def instances(event: SourceEvent, name: str) -> list[str] | None:
    for r in event.upserts:
        if r.kind == "ConsulService" and r.name == name:
            return sorted(i["Service"]["ID"] for i in r.body["Instances"])
    return None


def changed_to(name: str, ids: list[str]) -> Any:
    return lambda e: instances(e, name) == ids


async def test_more_services_than_connections_all_arrive_and_every_change_converges(
    limited: ConsulSimulator,
) -> None:
    """60 services, a budget of 16 connections (4 services get their own watch) against a
    Consul that refuses a client's 21st connection: the first listing has them all, and
    registrations (with and without checks), check changes, a node's check, new and removed
    services all come through, with no refused connection and no error."""
    sim = limited
    register_checked(sim)
    options = ConsulOptions(
        address=sim.address, wait_s=20.0, max_connections=MIN_CONNECTIONS, backoff_cap_s=0.2
    )
    async with ConsulAdapter(options) as adapter:
        assert adapter._slots() == MIN_CONNECTIONS - READ_RESERVE - 2 - 6  # 4
        it = adapter.watch()
        first = await next_matching(it, lambda e: e.synced)
        services = {r.name for r in first.upserts if r.kind == "ConsulService"}
        assert services == {f"svc{i}" for i in range(60)}
        await async_wait_for(lambda: sim.blocked[CHECKS_KEY] > 0, what="the checks' watch")

        # an instance with a check: its new check names the service
        body = {"ID": "s7b", "Service": "svc7", "Port": 2007}
        sim.state.register_service(NODE, body, [{"CheckID": "c7b", "Status": "passing"}])
        await next_matching(it, changed_to("svc7", ["s7", "s7b"]))
        # a check going critical
        sim.state.set_check("c8", "critical")
        await next_matching(it, changed_to("svc8", []))
        # an instance without checks: only the catalog's index moves (a sweep finds it)
        sweeps = adapter.sweeps
        sim.state.register_service(NODE, {"ID": "s9b", "Service": "svc9", "Port": 2009}, [])
        await next_matching(it, changed_to("svc9", ["s9", "s9b"]))
        assert adapter.sweeps > sweeps
        # a new service, and one removed
        body = {"ID": "n1", "Service": "fresh", "Port": 3000}
        sim.state.register_service(NODE, body, [{"CheckID": "n1c", "Status": "passing"}])
        await next_matching(it, changed_to("fresh", ["n1"]))
        sim.state.deregister_service(NODE, "s5")
        gone = await next_matching(it, lambda e: e.deletes)
        assert gone.deletes == (("consul", "ConsulService", "", "svc5"),)
        # services changed in turn: each takes a watch of its own, the least recently changed
        # gives its up, and a change to either kind of service still arrives
        for i in range(10, 20):
            sim.state.set_check(f"c{i}", "critical")
            await next_matching(it, changed_to(f"svc{i}", []))
        assert len(adapter._pool) == adapter._slots()
        assert set(adapter._pool) == {f"svc{i}" for i in range(16, 20)}
        for i in (19, 10):  # with a watch of its own; without
            sim.state.set_check(f"c{i}", "passing")
            await next_matching(it, changed_to(f"svc{i}", [f"s{i}"]))
        # the node's own check fails: every service on it loses its instances
        sim.state.set_check("serfHealth", "critical")
        await next_matching(it, changed_to("svc30", []))

    assert sim.refused == 0
    assert sim.peak_connections <= MIN_CONNECTIONS


async def test_a_catalog_that_fits_has_a_watch_per_service_and_no_checks_watch(
    limited: ConsulSimulator,
) -> None:
    sim = limited
    for i in range(3):
        sim.state.register_service(NODE, {"ID": f"s{i}", "Service": f"svc{i}", "Port": 80}, [{}])
    options = ConsulOptions(address=sim.address, wait_s=20.0, max_connections=MIN_CONNECTIONS)
    async with ConsulAdapter(options) as adapter:
        it = adapter.watch()
        await next_matching(it, lambda e: e.synced)
        assert set(adapter._pool) == {"svc0", "svc1", "svc2"} and not adapter._detector
        sim.state.register_service(NODE, {"ID": "s3", "Service": "svc3", "Port": 80}, [])
        await next_matching(it, changed_to("svc3", ["s3"]))
        # the fifth service does not fit: the checks' watch starts, the pool stays at 4
        sim.state.register_service(NODE, {"ID": "s4", "Service": "svc4", "Port": 80}, [])
        await next_matching(it, changed_to("svc4", ["s4"]))
        await async_wait_for(lambda: adapter._detector, what="the checks' watch")
        assert len(adapter._pool) == 4
        sim.state.register_service(NODE, {"ID": "s0b", "Service": "svc0", "Port": 81}, [{}])
        await next_matching(it, lambda e: instances(e, "svc0") is not None)
    assert sim.refused == 0


def _check(node: str, cid: str, service: str, modified: int, **extra: Any) -> dict[str, Any]:
    return {
        "Node": node,
        "CheckID": cid,
        "Name": "c",
        "Status": "passing",
        "Output": "",
        "ServiceID": service,
        "ServiceName": service,
        "ServiceTags": [],
        "Definition": {},
        "CreateIndex": modified,
        "ModifyIndex": modified,
        **extra,
    }


@pytest.mark.parametrize("compact", [True, False])
def test_changed_checks_are_found_without_decoding_the_whole_answer(compact: bool) -> None:
    """The quick scan of a /v1/health/state/any answer finds exactly the checks modified since
    the last index, whatever their text holds, and gives up (None: decode it all) when a check
    went away."""
    seps = (",", ":") if compact else (", ", ": ")
    before = [_check("n1", f"c{i}", f"s{i}", 10 + i) for i in range(5)]
    previous = check_map(before)
    tricky = 'Output: {"ModifyIndex": 99},{"Node": "x"} }, {"'  # quotes are escaped in JSON
    after = [dict(c) for c in before]
    after[2] = _check("n1", "c2", "s2", 40, Output=tricky)
    after.append(_check("n2", "serfHealth", "", 41))
    text = json.dumps(after, separators=seps)
    assert changed_checks(text, previous, 14) == {
        ("n1", "c2"): ("s2", 40),
        ("n2", "serfHealth"): ("", 41),
    }
    assert changed_checks(json.dumps(before, separators=seps), previous, 14) == {}
    gone = json.dumps([c for c in after if c["CheckID"] != "c4"], separators=seps)
    assert changed_checks(gone, previous, 14) is None  # c4 went away: decode it all
    assert check_map(json.loads(gone))[("n1", "c2")] == ("s2", 40)


async def test_with_no_room_for_service_watches_the_checks_watch_follows_every_service(
    limited: ConsulSimulator,
) -> None:
    """Ten config kinds take the whole budget of 16 (4 kept for reads, catalog and checks):
    a service that appears later is still followed, through the checks watch."""
    sim = limited
    kinds = tuple(f"kind-{i}" for i in range(10))
    options = ConsulOptions(
        address=sim.address, wait_s=20.0, max_connections=MIN_CONNECTIONS, config_kinds=kinds
    )
    async with ConsulAdapter(options) as adapter:
        assert adapter._slots() == 0
        it = adapter.watch()
        await next_matching(it, lambda e: e.synced)
        body = {"ID": "w1", "Service": "web", "Port": 80}
        sim.state.register_service(NODE, body, [{"CheckID": "wc", "Status": "passing"}])
        await next_matching(it, changed_to("web", ["w1"]))
        await async_wait_for(lambda: sim.blocked[CHECKS_KEY] > 0, what="the checks' watch")
        assert not adapter._pool
        sim.state.set_check("wc", "critical")
        await next_matching(it, changed_to("web", []))
    assert sim.refused == 0


async def test_a_checkless_change_coalesced_with_a_checked_one_still_arrives(
    limited: ConsulSimulator,
) -> None:
    """One read of the catalog coalesces two writes: an instance registered without a check
    (index A, only the catalog's index moves) and one with a check (index B > A, which the
    checks watch sees). B alone does not explain the move from before A: the services without
    a watch of their own are read again, and the checkless instance arrives."""
    sim = limited
    register_checked(sim)
    options = ConsulOptions(
        address=sim.address, wait_s=20.0, max_connections=MIN_CONNECTIONS, backoff_cap_s=0.2
    )
    async with ConsulAdapter(options) as adapter:
        it = adapter.watch()
        await next_matching(it, lambda e: e.synced)
        await async_wait_for(lambda: sim.blocked[CHECKS_KEY] > 0, what="the checks' watch")
        await async_wait_for(lambda: sim.blocked[SERVICES_KEY] > 0, what="the catalog watch")
        sweeps = adapter.sweeps
        with sim.hold(SERVICES_KEY):  # the catalog watch reads both writes at once
            sim.state.register_service(NODE, {"ID": "s40b", "Service": "svc40", "Port": 2040}, [])
            body = {"ID": "s41b", "Service": "svc41", "Port": 2041}
            sim.state.register_service(NODE, body, [{"CheckID": "c41b", "Status": "passing"}])
            await next_matching(it, changed_to("svc41", ["s41", "s41b"]))
            assert adapter._checks_index == sim.state.index_of(CHECKS_KEY)
        await next_matching(it, changed_to("svc40", ["s40", "s40b"]))
        assert adapter.sweeps == sweeps + 1
    assert sim.refused == 0


async def test_a_coalesced_move_that_every_index_accounts_for_sweeps_nothing(
    limited: ConsulSimulator,
) -> None:
    """Two registrations with checks in one catalog read: each index is a check change the
    checks watch followed, so nothing is swept; a config entry written in between (an index
    of another table) is accounted for by its config watch."""
    sim = limited
    register_checked(sim)
    options = ConsulOptions(address=sim.address, wait_s=20.0, max_connections=MIN_CONNECTIONS)
    async with ConsulAdapter(options) as adapter:
        it = adapter.watch()
        await next_matching(it, lambda e: e.synced)
        await async_wait_for(lambda: sim.blocked[SERVICES_KEY] > 0, what="the catalog watch")
        sweeps = adapter.sweeps
        with sim.hold(SERVICES_KEY):
            for i, n in ((42, "svc42"), (43, "svc43")):
                body = {"ID": f"s{i}b", "Service": n, "Port": 2000 + i}
                sim.state.register_service(NODE, body, [{"CheckID": f"c{i}b"}])
                await next_matching(it, lambda e, n=n: instances(e, n) is not None)
                if i == 42:
                    sim.state.put_config({"Kind": "service-resolver", "Name": "svc1"})
                    await next_matching(it, lambda e: bool(e.upserts))
        await async_wait_for(lambda: sim.blocked[SERVICES_KEY] > 0, what="the catalog again")
        await async_wait_for(lambda: not adapter._helpers, what="the move explained")
        assert adapter.sweeps == sweeps


async def test_a_suspect_move_is_swept_at_most_once_per_sweep_interval(
    limited: ConsulSimulator,
) -> None:
    """A move that a check explains but whose span an unseen write may hide (the case above)
    is swept at once the first time, then no sooner than sweep_interval after the last sweep;
    a checkless write at the catalog's own index is swept at once, whatever the interval."""
    sim = limited
    register_checked(sim)
    options = ConsulOptions(
        address=sim.address, wait_s=20.0, max_connections=MIN_CONNECTIONS, sweep_interval_s=5.0
    )
    async with ConsulAdapter(options) as adapter:
        it = adapter.watch()
        await next_matching(it, lambda e: e.synced)
        await async_wait_for(lambda: sim.blocked[CHECKS_KEY] > 0, what="the checks' watch")

        async def swept_for(i: int, suspect: bool) -> float:
            """When the sweep that found a checkless instance of svc{i} started."""
            await async_wait_for(lambda: sim.blocked[SERVICES_KEY] > 0, what="catalog watch")
            with sim.hold(SERVICES_KEY):
                body = {"ID": f"s{i}b", "Service": f"svc{i}", "Port": 2000 + i}
                sim.state.register_service(NODE, body, [])
                if suspect:  # a write with a check after it, read with it
                    body = {"ID": f"s{i + 1}b", "Service": f"svc{i + 1}", "Port": 2001 + i}
                    sim.state.register_service(NODE, body, [{"CheckID": f"c{i + 1}b"}])
                    await next_matching(it, lambda e: instances(e, f"svc{i + 1}") is not None)
            await next_matching(it, changed_to(f"svc{i}", [f"s{i}", f"s{i}b"]), 20.0)
            task = adapter._sweep_task
            await async_wait_for(lambda: task is not None and task.done(), what="sweep done")
            return adapter._last_sweep

        first = await swept_for(40, suspect=True)
        definite = await swept_for(42, suspect=False)
        again = await swept_for(44, suspect=True)
        assert adapter.sweeps == 3
        assert definite - first < 5.0 <= again - definite


async def test_other_datacenters_watches_stay_within_the_budget(
    limited: ConsulSimulator,
) -> None:
    """Resolvers fail ten services over to dc2: with a budget of 16 (4 for reads, catalog,
    checks and 6 config kinds), four get a blocking watch in dc2, the other six are read
    again every sweep_interval; all ten arrive, a change to a read-again one too, and no
    more than four queries ever block in dc2."""
    sim = limited
    dc2 = sim.add_datacenter("dc2")
    dc2.ensure_node(NODE, "127.0.0.1")
    for i in range(10):
        body = {"ID": f"s{i}", "Service": f"svc{i}", "Port": 1000 + i}
        sim.state.register_service(NODE, body, [{"CheckID": f"c{i}", "Status": "passing"}])
        dc2.register_service(NODE, {"ID": f"r{i}", "Service": f"svc{i}", "Port": 3000 + i}, [])
        failover = {"*": {"Datacenters": ["dc2"]}}
        sim.state.put_config({"Kind": "service-resolver", "Name": f"svc{i}", "Failover": failover})
    options = ConsulOptions(
        address=sim.address, wait_s=20.0, max_connections=MIN_CONNECTIONS, sweep_interval_s=0.5
    )
    async with ConsulAdapter(options) as adapter:
        it = adapter.watch()
        await next_matching(it, lambda e: e.synced)
        remote: set[str] = set()

        def all_remote(event: SourceEvent) -> bool:
            remote.update(r.name for r in event.upserts if r.body.get("Remote"))
            return len(remote) == 10

        await next_matching(it, all_remote)
        assert remote == {f"dc2/svc{i}" for i in range(10)}
        assert len(adapter._remote_watched) == 4 and adapter._slots() == 0
        dc2.register_service(NODE, {"ID": "r9b", "Service": "svc9", "Port": 3100}, [])
        await next_matching(it, changed_to("dc2/svc9", ["r9", "r9b"]))
        assert max(n for k, n in sim.blocked.items() if k.startswith("dc2:")) <= 1
        assert sum(n for k, n in sim.blocked.items() if k.startswith("dc2:")) <= 4
        # a local service is still followed (by the checks watch)
        sim.state.set_check("c3", "critical")
        await next_matching(it, changed_to("svc3", []))
    assert sim.refused == 0
    assert sim.peak_connections <= MIN_CONNECTIONS


async def test_a_service_a_sweep_finds_changed_gets_its_own_watch(
    limited: ConsulSimulator,
) -> None:
    """A checkless change found by a sweep gives its service a watch of its own: the next
    checkless change to it is followed there (its instance's ModifyIndex accounts for the
    catalog's move), without another sweep."""
    sim = limited
    register_checked(sim)
    options = ConsulOptions(address=sim.address, wait_s=20.0, max_connections=MIN_CONNECTIONS)
    async with ConsulAdapter(options) as adapter:
        it = adapter.watch()
        await next_matching(it, lambda e: e.synced)
        await async_wait_for(lambda: sim.blocked[CHECKS_KEY] > 0, what="the checks' watch")
        sim.state.register_service(NODE, {"ID": "s50b", "Service": "svc50", "Port": 2050}, [])
        await next_matching(it, changed_to("svc50", ["s50", "s50b"]))
        assert adapter.sweeps == 1
        await async_wait_for(lambda: sim.blocked[service_key("svc50")] > 0, what="its watch")
        sim.state.register_service(NODE, {"ID": "s50c", "Service": "svc50", "Port": 2051}, [])
        await next_matching(it, changed_to("svc50", ["s50", "s50b", "s50c"]))
        await async_wait_for(lambda: sim.blocked[SERVICES_KEY] > 0, what="the catalog again")
        await async_wait_for(lambda: not adapter._helpers, what="the move explained")
        assert adapter.sweeps == 1
    assert sim.refused == 0


async def test_a_checkless_change_read_with_an_index_that_went_backwards_is_swept_for(
    limited: ConsulSimulator,
) -> None:
    """Consul's index went backwards (a snapshot restore, a rebuilt cluster whose agents
    register their services again): the catalog's move spans no index this adapter saw, so
    it explains nothing. A checkless instance that arrived with it is found by a sweep, not
    missed until some later write happens to sweep."""
    sim = limited
    register_checked(sim)
    options = ConsulOptions(address=sim.address, wait_s=20.0, max_connections=MIN_CONNECTIONS)
    async with ConsulAdapter(options) as adapter:
        it = adapter.watch()
        await next_matching(it, lambda e: e.synced)
        await async_wait_for(lambda: sim.blocked[CHECKS_KEY] > 0, what="the checks' watch")
        await async_wait_for(lambda: sim.blocked[SERVICES_KEY] > 0, what="the catalog watch")
        name = next(f"svc{i}" for i in range(60) if f"svc{i}" not in adapter._pool)
        i = int(name[3:])
        with sim.hold(SERVICES_KEY):
            body = {"ID": f"s{i}b", "Service": name, "Port": 2000 + i}
            sim.state.register_service(NODE, body, [])
            sim.state.reset_indexes(1)
        await next_matching(it, changed_to(name, [f"s{i}", f"s{i}b"]), 10.0)


async def test_a_garbled_index_is_a_reported_error_and_every_watch_goes_on(
    limited: ConsulSimulator,
) -> None:
    """An X-Consul-Index that is not a number (a broken proxy in front of Consul) is a
    reported error of the query, retried: no watch dies of it, so changes still arrive once
    the index is sane again."""
    sim = limited
    register_checked(sim)
    options = ConsulOptions(
        address=sim.address, wait_s=20.0, max_connections=MIN_CONNECTIONS, backoff_cap_s=0.2
    )
    async with ConsulAdapter(options) as adapter:
        it = adapter.watch()
        await next_matching(it, lambda e: e.synced)
        await async_wait_for(lambda: sim.blocked[SERVICES_KEY] > 0, what="the catalog watch")
        sim.faults.index_text = "not-a-number"
        sim.state.register_service(NODE, {"ID": "n1", "Service": "new1", "Port": 3000}, [])
        await asyncio.wait_for(_until_error(it, "X-Consul-Index"), 15.0)
        sim.faults.clear()
        # a service that appears now is still found: the catalog watch lives
        sim.state.register_service(NODE, {"ID": "n2", "Service": "new2", "Port": 3001}, [])
        await asyncio.wait_for(_until_listed(it, "new2"), 15.0)


async def _until_listed(it: AsyncIterator[SourceEvent], name: str) -> None:
    async for event in it:
        if instances(event, name) is not None:
            return


async def _until_error(it: AsyncIterator[SourceEvent], text: str) -> None:
    async for event in it:
        if any(text in d.reason for d in event.errors):
            return
