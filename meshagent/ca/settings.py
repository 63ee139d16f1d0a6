"""The `ca:` section of the agent config, as frozen dataclasses (parsed by agent.config)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CA_MODES = ("self-signed", "plug-in", "upstream")


@dataclass(frozen=True, slots=True)
class CaUpstreamConfig:
    """A remote CA speaking CreateCertificate, and how to authenticate to it."""

    address: str
    token_file: Path
    root_cert: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class CaServeConfig:
    """Where this agent serves CreateCertificate to other hosts (None: not served)."""

    address: str | None = None
    tls: bool = True
    mtls_address: str | None = None
    rate: float = 10.0
    burst: int = 20
    workers: int = 1


@dataclass(frozen=True, slots=True)
class CaConfig:
    """Certificate authority settings; see README "Certificates"."""

    mode: str
    dir: Path
    trust_domain: str = "cluster.local"
    key_type: str = "ec-p256"
    workload_ttl_s: float = 24 * 3600.0
    max_workload_ttl_s: float = 90 * 86400.0  # longer CreateCertificate requests are refused
    plugin_dir: Path | None = None
    upstream: CaUpstreamConfig | None = None
    serve: CaServeConfig = CaServeConfig()
