"""Benchmark: certificates issued per second through the CreateCertificate gRPC API, next to
the in-process signing rate, in the same run on the same machine.

  in_process_per_s   CertificateAuthority.issue() in a loop on one thread, one pre-made CSR,
                     mean of a run before and one after the gRPC run: CSR PEM parse +
                     signature check + identity check + certificate build + sign (ECDSA
                     P-256) + PEM. No token check, no rate limit, no protobuf, no network.
  grpc_per_s         the same CSR-to-chain work through the gRPC API over loopback TLS, plus
                     what each call costs the server on top: bearer token check (ES256; each
                     token is verified once, then served from the verifier's cache), rate
                     limiter (set high enough never to refuse), protobuf, HTTP/2, TLS.
                     The server is the agent's own (ca.serve.workers = `--workers`: this
                     process plus workers-1 spawned processes sharing the port with
                     SO_REUSEPORT, each with its own copy of the CA loaded from the CA dir).
                     The clients run in `--processes` separate processes, each with
                     `--channels` grpc.aio channels (one TCP+TLS connection each, so that
                     the kernel can spread them over the workers) and `--clients` calls in
                     flight in total. Client CSRs, tokens, serialized requests and metadata
                     are made before timing; each call still deserializes its response.
                     Counted from the first call after every channel has connected.
  server_cpu_us_per_call / client_cpu_us_per_call   CPU time (user + system, all threads)
                     of the server processes / client processes during the timed run,
                     divided by the certificates issued.
  h2load_per_s       the same server driven by h2load (nghttp2's HTTP/2 load generator, C;
                     Debian package nghttp2-client), when it is on PATH: `--connections`
                     TLS connections with `--streams` calls in flight each, all sending one
                     pre-made request (one identity, one CSR: the server still parses and
                     verifies it and signs a new certificate every time). Only calls the
                     server counted as issued are counted (h2load's own count of 2xx is
                     printed beside it: gRPC errors are 200s with a grpc-status trailer).
                     A load generator that costs little CPU shows the server's rate, where
                     Python clients on the same 2 cores take a third of them.
  ratio              h2load_per_s (else grpc_per_s) / in_process_per_s (target >= 0.5);
                     ratio_python_clients: grpc_per_s / in_process_per_s.
Clients and server share the machine's cores, which the in-process figure has to itself.

Usage: python benchmarks/ca_issue.py [--seconds 3] [--clients 128] [--processes 1]
                                     [--channels 16] [--workers 2]
                                     [--connections 4] [--streams 32]
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshagent.agent.logs import configure_logging
from meshagent.ca.authority import CertificateAuthority
from meshagent.ca.keys import generate_key, make_csr
from meshagent.ca.service import CertificateServer
from meshagent.ca.settings import CaConfig, CaServeConfig
from meshagent.ca.setup import build_service
from meshagent.ca.state import load_self_signed, token_key
from meshagent.ca.tokens import create_token
from meshagent.ca.workers import WorkerPool, WorkerSpec
from meshagent.model.identity import Identity

TD = "cluster.local"
TTL = 3600


def in_process_rate(ca: CertificateAuthority, seconds: float) -> float:
    """Certificates per second from ca.issue() on one core."""
    identity = Identity(TD, "bench", "sa0")
    csr = make_csr(generate_key(), identity)
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            ca.issue(csr, identity, TTL)
        count += 50
    return count / (time.perf_counter() - start)


def client_process(args: dict[str, Any]) -> tuple[int, int, float, float]:
    """One client process: (issued, failed, seconds, client CPU seconds)."""
    return asyncio.run(_clients(**args))


async def _clients(
    port: int,
    roots: bytes,
    tokens: list[str],
    csrs: list[str],
    seconds: float,
    inflight: int,
    channels: int,
) -> tuple[int, int, float, float]:
    import grpc

    from meshagent.ca.proto.messages import (
        METHOD,
        IstioCertificateRequest,
        IstioCertificateResponse,
    )

    creds = grpc.ssl_channel_credentials(roots)
    # A local subchannel pool gives each channel its own connection (else they share one).
    opts = [("grpc.use_local_subchannel_pool", 1)]
    chans = [
        grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=opts) for _ in range(channels)
    ]
    calls = [
        c.unary_unary(
            METHOD,
            request_serializer=_identity_bytes,
            response_deserializer=IstioCertificateResponse.FromString,
        )
        for c in chans
    ]
    requests = [
        IstioCertificateRequest(csr=csr, validity_duration=TTL).SerializeToString() for csr in csrs
    ]
    metadata = [(("authorization", f"Bearer {t}"),) for t in tokens]
    await asyncio.gather(*(call(requests[0], metadata=metadata[0]) for call in calls))
    counts = [0, 0]
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        call, request, md = calls[i % channels], requests[i % len(csrs)], metadata[i % len(tokens)]
        while time.perf_counter() < deadline:
            try:
                response = await call(request, metadata=md)
                counts[0 if response.cert_chain else 1] += 1
            except grpc.aio.AioRpcError:
                counts[1] += 1

    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(inflight)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    for c in chans:
        await c.close()
    return counts[0], counts[1], elapsed, cpu


def _identity_bytes(data: bytes) -> bytes:
    return data


async def grpc_rate(
    ca_dir: Path, ca: CertificateAuthority, opts: argparse.Namespace
) -> dict[str, Any]:
    """Serve with the agent's own server (and workers), drive it from client processes."""
    serve = CaServeConfig(address="127.0.0.1:0", rate=1e9, burst=1_000_000_000)
    config = CaConfig(mode="self-signed", dir=ca_dir, trust_domain=TD, serve=serve)
    service = build_service(config, ca, workers=opts.workers)  # measure issuing, not limits
    server = CertificateServer(service, reuse_port=opts.workers > 1)
    port = await server.start("127.0.0.1:0")
    pool = WorkerPool(
        WorkerSpec(config, f"127.0.0.1:{port}", True, None, ("localhost",), opts.workers)
    )
    await pool.start()
    identities = [Identity(TD, "bench", f"sa{i}") for i in range(opts.clients)]
    tokens = [create_token(token_key(ca_dir), i, 3600) for i in identities]
    csrs = [make_csr(generate_key(), i) for i in identities]
    jobs = [
        dict(
            port=port,
            roots=ca.roots_pem.encode(),
            tokens=tokens[p :: opts.processes],
            csrs=csrs[p :: opts.processes],
            seconds=opts.seconds,
            inflight=max(1, opts.clients // opts.processes),
            channels=opts.channels,
        )
        for p in range(opts.processes)
    ]
    ctx = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with ctx.Pool(opts.processes) as pool_:
        # Server CPU: this process (worker 0, idle but for serving) plus the other workers.
        cpu = time.process_time() + _cpu_seconds(pool.pids.values())
        results = await loop.run_in_executor(None, pool_.map, client_process, jobs)
        cpu = time.process_time() + _cpu_seconds(pool.pids.values()) - cpu
    await pool.stop()
    await server.stop(0)
    issued = sum(r[0] for r in results)
    return {
        "grpc_per_s": round(issued / max(r[2] for r in results), 1),
        "grpc_issued": issued,
        "grpc_failed": sum(r[1] for r in results),
        "server_cpu_us_per_call": round(cpu / max(1, issued) * 1e6),
        "client_cpu_us_per_call": round(sum(r[3] for r in results) / max(1, issued) * 1e6),
    }


async def h2load_rate(
    ca_dir: Path, ca: CertificateAuthority, opts: argparse.Namespace
) -> dict[str, Any]:
    """The agent's server (and workers) driven by h2load; see the module docstring."""
    from meshagent.ca.proto.messages import METHOD, IstioCertificateRequest

    serve = CaServeConfig(address="127.0.0.1:0", rate=1e9, burst=1_000_000_000)
    config = CaConfig(mode="self-signed", dir=ca_dir, trust_domain=TD, serve=serve)
    issued = [0]

    def observe(outcome: str, reason: str) -> None:
        issued[0] += outcome == "issued"

    service = build_service(config, ca, workers=opts.workers, observe=observe)
    server = CertificateServer(service, reuse_port=opts.workers > 1)
    port = await server.start("127.0.0.1:0")
    spec = WorkerSpec(config, f"127.0.0.1:{port}", True, None, ("localhost",), opts.workers)
    pool = WorkerPool(spec, observe=observe)
    await pool.start()
    identity = Identity(TD, "bench", "sa0")
    token = create_token(token_key(ca_dir), identity, 3600)
    message = IstioCertificateRequest(csr=make_csr(generate_key(), identity), validity_duration=TTL)
    body = message.SerializeToString()
    request = ca_dir.parent / "request.grpc"
    request.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)  # gRPC message frame
    command = [
        "h2load", "-D", str(int(opts.seconds)), "-c", str(opts.connections),
        "-m", str(opts.streams), "-t", "1", "-d", str(request),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-H", f"authorization: Bearer {token}", f"https://127.0.0.1:{port}{METHOD}",
    ]
    loop = asyncio.get_running_loop()
    before = issued[0]
    cpu = time.process_time() + _cpu_seconds(pool.pids.values())
    start = time.perf_counter()
    done = await loop.run_in_executor(
        None, lambda: subprocess.run(command, capture_output=True, text=True, timeout=120)
    )
    elapsed = time.perf_counter() - start
    cpu = time.process_time() + _cpu_seconds(pool.pids.values()) - cpu
    for _ in range(5):  # workers report their counts about once a second: collect the last
        seen = issued[0]
        await asyncio.sleep(1.5)
        if issued[0] == seen:
            break
    await pool.stop()
    await server.stop(0)
    count = issued[0] - before
    succeeded = re.search(r"(\d+) succeeded", done.stdout)
    return {
        "h2load_per_s": round(count / elapsed, 1),
        "h2load_issued": count,
        "h2load_2xx": int(succeeded.group(1)) if succeeded else None,
        "h2load_server_cpu_us_per_call": round(cpu / max(1, count) * 1e6),
    }


def _cpu_seconds(pids: Any) -> float:
    """User + system CPU seconds of the processes pids (Linux /proc; 0 where unreadable)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except (OSError, TypeError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=128, help="concurrent calls in flight")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--channels", type=int, default=16, help="channels per client process")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--connections", type=int, default=4, help="h2load connections")
    parser.add_argument("--streams", type=int, default=32, help="h2load calls per connection")
    opts = parser.parse_args()
    configure_logging("warning", "json")
    with tempfile.TemporaryDirectory() as tmp:
        ca_dir = Path(tmp) / "ca"
        ca = load_self_signed(ca_dir, TD)
        # Measured before and after the gRPC run, as the machine may be shared and noisy.
        before = in_process_rate(ca, opts.seconds)
        remote = asyncio.run(grpc_rate(ca_dir, ca, opts))
        if shutil.which("h2load"):
            remote.update(asyncio.run(h2load_rate(ca_dir, ca, opts)))
        after = in_process_rate(ca, opts.seconds)
    local = (before + after) / 2
    result = {
        "key_type": "ec-p256",
        "cpus": os.cpu_count(),
        "clients": opts.clients,
        "client_processes": opts.processes,
        "channels_per_client_process": opts.channels,
        "server_workers": opts.workers,
        "in_process_per_s": round(local, 1),
        "in_process_before_after_per_s": [round(before, 1), round(after, 1)],
        **remote,
        "ratio": round(remote.get("h2load_per_s", remote["grpc_per_s"]) / local, 3),
        "ratio_python_clients": round(remote["grpc_per_s"] / local, 3),
        "target_ratio": 0.5,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
