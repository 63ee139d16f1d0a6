"""Benchmark: certificates issued per second through the CreateCertificate gRPC API, next to
the in-process signing rate, in the same run on the same machine.

  in_process_per_s   CertificateAuthority.issue() in a loop (mean of a run before and one
                     after the gRPC run): CSR parse + signature check + identity check +
                     build + sign (ECDSA P-256) + PEM
  grpc_per_s         the same through the gRPC API over loopback TLS with a bearer token:
                     `--clients` concurrent calls in flight, from `--processes` client
                     processes (so that the clients' CPU is not the server's)
  ratio              grpc_per_s / in_process_per_s (target >= 0.5)
Each client reuses one pre-made CSR (making keys is the client's cost, not the CA's).

Usage: python benchmarks/ca_issue.py [--seconds 3] [--clients 128] [--processes 1]
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshagent.agent.logs import configure_logging
from meshagent.ca.authority import CertificateAuthority
from meshagent.ca.issuer import IssuanceService
from meshagent.ca.keys import generate_key, make_csr
from meshagent.ca.ratelimit import TokenBucketLimiter
from meshagent.ca.service import CertificateServer
from meshagent.ca.state import load_self_signed, token_key
from meshagent.ca.tokens import TokenVerifier, create_token
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


def client_process(args: dict[str, Any]) -> tuple[int, int, float]:
    """One client process: (issued, failed, seconds) over args["seconds"]."""
    return asyncio.run(_clients(**args))


async def _clients(
    port: int, roots: bytes, tokens: list[str], csrs: list[str], seconds: float, inflight: int
) -> tuple[int, int, float]:
    from meshagent.ca.client import CertificateClient

    client = CertificateClient(f"127.0.0.1:{port}", root_cert_pem=roots)
    await client.create_certificate(csrs[0], TTL, token=tokens[0])  # connect + TLS first
    counts = [0, 0]
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        token, csr = tokens[i % len(tokens)], csrs[i % len(csrs)]
        while time.perf_counter() < deadline:
            try:
                await client.create_certificate(csr, TTL, token=token)
                counts[0] += 1
            except Exception:
                counts[1] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(inflight)))
    elapsed = time.perf_counter() - start
    await client.close()
    return counts[0], counts[1], elapsed


async def grpc_rate(
    ca_dir: Path, ca: CertificateAuthority, opts: argparse.Namespace
) -> dict[str, Any]:
    verifier = TokenVerifier(token_key(ca_dir).public_key(), TD)
    limiter = TokenBucketLimiter(rate=1e9, burst=1e9)  # measure issuing, not the limiter
    server = CertificateServer(IssuanceService(ca, verifier, limiter))
    port = await server.start("127.0.0.1:0")
    identities = [Identity(TD, "bench", f"sa{i}") for i in range(opts.clients)]
    tokens = [create_token(token_key(ca_dir), i, 3600) for i in identities]
    csrs = [make_csr(generate_key(), i) for i in identities]
    per_process = max(1, opts.clients // opts.processes)
    jobs = [
        dict(
            port=port,
            roots=ca.roots_pem.encode(),
            tokens=tokens[p :: opts.processes],
            csrs=csrs[p :: opts.processes],
            seconds=opts.seconds,
            inflight=per_process,
        )
        for p in range(opts.processes)
    ]
    ctx = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with ctx.Pool(opts.processes) as pool:
        results = await loop.run_in_executor(None, pool.map, client_process, jobs)
    await server.stop(0)
    issued = sum(r[0] for r in results)
    return {
        "grpc_per_s": round(issued / max(r[2] for r in results), 1),
        "grpc_issued": issued,
        "grpc_failed": sum(r[1] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=128, help="concurrent calls in flight")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    opts = parser.parse_args()
    configure_logging("warning", "json")
    with tempfile.TemporaryDirectory() as tmp:
        ca_dir = Path(tmp) / "ca"
        ca = load_self_signed(ca_dir, TD)
        # Measured before and after the gRPC run, as the machine may be shared and noisy.
        before = in_process_rate(ca, opts.seconds)
        remote = asyncio.run(grpc_rate(ca_dir, ca, opts))
        after = in_process_rate(ca, opts.seconds)
    local = (before + after) / 2
    result = {
        "key_type": "ec-p256",
        "cpus": os.cpu_count(),
        "clients": opts.clients,
        "client_processes": opts.processes,
        "in_process_per_s": round(local, 1),
        "in_process_before_after_per_s": [round(before, 1), round(after, 1)],
        **remote,
        "ratio": round(remote["grpc_per_s"] / local, 3),
        "target_ratio": 0.5,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
