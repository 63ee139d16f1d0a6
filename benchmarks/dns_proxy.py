"""Benchmark: the DNS proxy's answers per second and latency, for a mesh name and for a
forwarded name, next to asking the upstream resolver directly.

  mesh       A queries for one of the mesh's names (a table of `--services` ServiceEntry
             hosts with automatic VIPs), answered by the proxy from its table.
  forwarded  A queries for a name the mesh does not know: the proxy forwards each one to the
             upstream (UDP, loopback) and relays its answer.
  direct     the same queries as `forwarded`, sent to the upstream itself: the baseline a
             host's resolver gives without the proxy.
The upstream is meshagent.testing.fake_dns.FakeResolver (Python, asyncio) on loopback, in a
process of its own; the proxy runs in another process, as in the agent; the client, in this
process, is a plain UDP socket keeping `--window` queries in flight, each answer followed by
the next query. For each case: answers per second, and latency p50/p99 (ms), over at most
`--seconds` or `--queries`, whichever comes first, after a short warm-up.
The machine's cores are shared by the three processes (the client costs about as much as
the proxy), so the absolute figures are lower bounds; the ratios are the point.

Usage: python benchmarks/dns_proxy.py [--seconds 2] [--queries 40000] [--window 16]
                                      [--services 1000]
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import struct
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dns.message

LOOP = "127.0.0.1"
OUTSIDE = "www.outside.test"


def _serve_upstream(conn: Connection) -> None:
    from meshagent.testing.fake_dns import FakeResolver

    async def main() -> None:
        resolver = FakeResolver({f"{OUTSIDE}.": ["192.0.2.10"]})
        await resolver.start()
        conn.send(resolver.port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await resolver.stop()

    asyncio.run(main())


def _mesh_snapshot(services: int) -> Any:
    from meshagent.adapters.yamldocs import load_documents
    from meshagent.model.source import SourceEvent
    from meshagent.normalize import Normalizer

    docs = "".join(
        f"---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata: {{name: s{i}, namespace: demo}}\nspec:\n  hosts: [s{i}.example.com]\n"
        f"  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n"
        for i in range(services)
    )
    resources, _ = load_documents(docs, "bench.yaml")
    snapshot, _ = Normalizer().apply([SourceEvent("files", upserts=tuple(resources))])
    return snapshot


def _serve_proxy(conn: Connection, upstream_port: int, services: int) -> None:
    from meshagent.agent.logs import configure_logging
    from meshagent.dns import DnsProxy, NameTable, Server, TableOptions, Upstreams

    configure_logging("warning", "json")  # stdout is the JSON result's

    async def main() -> None:
        snapshot = _mesh_snapshot(services)
        table = NameTable(TableOptions(namespace="demo"))
        started = time.perf_counter()
        table.update(snapshot)
        build_ms = (time.perf_counter() - started) * 1000
        upstreams = Upstreams([Server(LOOP, upstream_port)], timeout=2.0)
        proxy = DnsProxy(table, upstreams, address=LOOP, port=0)
        await proxy.start()
        conn.send((proxy.port, build_ms, len(table)))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await proxy.stop()

    asyncio.run(main())


def _drive(port: int, name: str, seconds: float, limit: int, window: int) -> dict[str, Any]:
    """Closed loop: window queries in flight; per answer, the latency and the next query."""
    wires = [bytearray(dns.message.make_query(name, "A").to_wire()) for _ in range(window)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((LOOP, port))
    sock.settimeout(2.0)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    next_id = 0

    def send(slot: int) -> None:
        nonlocal next_id
        wire = wires[slot]
        next_id = (next_id + 1) & 0xFFFF
        struct.pack_into("!H", wire, 0, next_id)
        sent_at[next_id] = time.perf_counter()
        sock.send(wire)

    for warm in (True, False):
        latencies.clear()
        sent_at.clear()
        for slot in range(window):
            send(slot)
        started = time.perf_counter()
        deadline = started + (0.3 if warm else seconds)
        count, lost = 0, 0
        while count < (2000 if warm else limit) and time.perf_counter() < deadline:
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                lost += 1
                for slot in range(window):
                    send(slot)
                continue
            ident = struct.unpack_from("!H", reply)[0]
            at = sent_at.pop(ident, None)
            if at is None:
                continue
            latencies.append(time.perf_counter() - at)
            count += 1
            send(count % window)
        elapsed = time.perf_counter() - started
        # drain what is still in flight before the next phase
        sock.settimeout(0.2)
        try:
            while sent_at:
                sent_at.pop(struct.unpack_from("!H", sock.recv(4096))[0], None)
        except TimeoutError:
            pass
        sock.settimeout(2.0)
    sock.close()
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000, 3)

    return {
        "answers": len(latencies),
        "seconds": round(elapsed, 3),
        "answers_per_s": round(len(latencies) / elapsed),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "timeouts": lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--queries", type=int, default=40_000)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--services", type=int, default=1000)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    up_parent, up_child = ctx.Pipe()
    upstream = ctx.Process(target=_serve_upstream, args=(up_child,))
    upstream.start()
    upstream_port = up_parent.recv()
    px_parent, px_child = ctx.Pipe()
    proxy = ctx.Process(target=_serve_proxy, args=(px_child, upstream_port, args.services))
    proxy.start()
    proxy_port, build_ms, names = px_parent.recv()
    try:
        bounds = (args.seconds, args.queries, args.window)
        mesh = _drive(proxy_port, f"s{args.services // 2}.example.com", *bounds)
        forwarded = _drive(proxy_port, OUTSIDE, *bounds)
        direct = _drive(upstream_port, OUTSIDE, *bounds)
    finally:
        px_parent.send("stop")
        up_parent.send("stop")
        proxy.join(10)
        upstream.join(10)
    result = {
        "services": args.services,
        "table_names": names,
        "table_build_ms": round(build_ms, 1),
        "window": args.window,
        "mesh": mesh,
        "forwarded": forwarded,
        "direct_upstream": direct,
        "forwarded_vs_direct_rate": round(forwarded["answers_per_s"] / direct["answers_per_s"], 2),
        "forwarded_extra_p99_ms": round(forwarded["p99_ms"] - direct["p99_ms"], 3),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
