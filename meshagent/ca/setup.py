"""From a CaConfig to the working parts: the local CA, the workload Issuer, the issuing service."""

from __future__ import annotations

import time
from collections.abc import Callable

from meshagent.ca.authority import CertificateAuthority
from meshagent.ca.issuer import IssuanceService, IssueObserver, LocalIssuer
from meshagent.ca.ratelimit import TokenBucketLimiter
from meshagent.ca.settings import CaConfig
from meshagent.ca.state import load_plugin, load_self_signed, token_key
from meshagent.ca.tokens import TokenVerifier
from meshagent.ca.workload import TrustedIssuer
from meshagent.errors import ConfigError


def open_authority(
    config: CaConfig, *, clock: Callable[[], float] = time.time
) -> CertificateAuthority | None:
    """The CA this host signs with (None in upstream mode, where it has no CA keys)."""
    if config.mode == "self-signed":
        return load_self_signed(
            config.dir, config.trust_domain, clock=clock, max_ttl=config.max_workload_ttl_s
        )
    if config.mode == "plug-in":
        if config.plugin_dir is None:
            raise ConfigError("ca.plugin_dir is required in plug-in mode")
        return load_plugin(
            config.plugin_dir, config.trust_domain, clock=clock, max_ttl=config.max_workload_ttl_s
        )
    return None


def build_issuer(config: CaConfig, ca: CertificateAuthority | None) -> TrustedIssuer:
    """Where this host's workload certificates come from: its CA, or the upstream one."""
    if ca is not None:
        return LocalIssuer(ca)
    from meshagent.ca.client import CertificateClient, UpstreamIssuer

    upstream = config.upstream
    if upstream is None:
        raise ConfigError("ca.upstream is required in upstream mode")
    roots = b""
    if upstream.root_cert is not None:
        try:
            roots = upstream.root_cert.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read: {exc.strerror or exc}", location=str(upstream.root_cert)
            ) from exc
    client = CertificateClient(
        upstream.address, root_cert_pem=roots or None, server_name=upstream.server_name
    )
    return UpstreamIssuer(client, upstream.token_file, roots.decode("ascii", "replace"))


def build_service(
    config: CaConfig,
    ca: CertificateAuthority,
    *,
    observe: IssueObserver | None = None,
    clock: Callable[[], float] = time.time,
    workers: int = 1,
) -> IssuanceService:
    """The CreateCertificate logic for ca: tokens checked against the CA directory's key.

    With `workers` serving processes, this one enforces 1/workers of the rate and burst, so
    that together they never allow a caller more than the configured rate.
    """
    verifier = TokenVerifier(token_key(config.dir).public_key(), config.trust_domain, clock=clock)
    share = max(1, workers)
    limiter = TokenBucketLimiter(config.serve.rate / share, max(1.0, config.serve.burst / share))
    return IssuanceService(
        ca, verifier, limiter, default_ttl=config.workload_ttl_s, observe=observe
    )
