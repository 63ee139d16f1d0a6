"""The mesh's CA, playing istiod: a meshagent CA serving CreateCertificate on loopback TLS.

Its root is the "mesh" root; hosts that join the mesh know it only through root-cert.pem and get
their certificates from this server with a token. `mesh_ca_server` starts it in the caller's
event loop (async tests); `running_mesh_ca` runs it on a thread of its own, for tests whose
agents are subprocesses.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from meshagent.agent.cli import main
from meshagent.ca.issuer import IssuanceService
from meshagent.ca.ratelimit import TokenBucketLimiter
from meshagent.ca.service import CertificateServer
from meshagent.ca.state import load_self_signed, token_key
from meshagent.ca.tokens import TokenVerifier

MESH_TD = "mesh.example"


@dataclass
class MeshCa:
    """The mesh CA's directory (root, token key), trust domain and TLS port."""

    dir: Path
    port: int
    trust_domain: str = MESH_TD

    @property
    def root(self) -> Path:
        """The mesh root certificate (what a joining VM gets as root-cert.pem)."""
        return self.dir / "root-cert.pem"

    def token(self, namespace: str, service_account: str) -> str:
        """A token from `meshagent token create`, as an operator would make one."""
        argv = ["token", "create", "--namespace", namespace, "--service-account", service_account]
        argv += ["--ca-dir", str(self.dir), "--trust-domain", self.trust_domain]
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(argv) == 0
        return out.getvalue().strip()

    def token_file(self, path: Path, namespace: str, service_account: str) -> Path:
        """token(namespace, service_account) written to path."""
        path.write_text(self.token(namespace, service_account))
        return path


def _server(ca_dir: Path, trust_domain: str) -> CertificateServer:
    ca = load_self_signed(ca_dir, trust_domain)
    verifier = TokenVerifier(token_key(ca_dir).public_key(), trust_domain)
    return CertificateServer(IssuanceService(ca, verifier, TokenBucketLimiter(100, 100)))


@asynccontextmanager
async def mesh_ca_server(
    ca_dir: Path, names: tuple[str, ...], trust_domain: str = MESH_TD
) -> AsyncIterator[MeshCa]:
    """The mesh CA on 127.0.0.1 (a free port), its TLS certificate naming `names`."""
    server = _server(ca_dir, trust_domain)
    port = await server.start("127.0.0.1:0", names=names)
    try:
        yield MeshCa(ca_dir, port, trust_domain)
    finally:
        await server.stop(0)


@contextmanager
def running_mesh_ca(
    ca_dir: Path, names: tuple[str, ...], trust_domain: str = MESH_TD
) -> Iterator[MeshCa]:
    """mesh_ca_server on an event loop thread of its own (gRPC aio needs a running loop)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mesh-ca", daemon=True)
    thread.start()
    context = mesh_ca_server(ca_dir, names, trust_domain)
    try:
        ca = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(timeout=30)
        try:
            yield ca
        finally:
            stop = context.__aexit__(None, None, None)
            asyncio.run_coroutine_threadsafe(stop, loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
