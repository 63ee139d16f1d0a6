"""The `sources.kubernetes` section of the agent config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshagent.adapters.kubernetes import ALL_KINDS, KubeOptions
from meshagent.agent.config.section import Section, duration_ms, optional_path
from meshagent.normalize.kubernetes import KubeMapping

KEYS = (
    "kubeconfig",
    "context",
    "server",
    "token_file",
    "ca_file",
    "insecure_skip_verify",
    "namespaces",
    "kinds",
    "cluster_domain",
    "region",
    "resync",
    "watch_timeout",
    "precedence",
    "secrets",
)


@dataclass(frozen=True, slots=True)
class KubeSourceConfig:
    """The Kubernetes adapter's options and the normalizer's mapping choices."""

    options: KubeOptions
    mapping: KubeMapping
    # Where Secrets (credentialName) are watched; None: "auto", the node's namespace when the
    # node is a router (a gateway), else nowhere (secret_namespaces resolves it).
    secrets: tuple[str, ...] | None = None

    def secret_namespaces(self, node_type: str, node_namespace: str) -> tuple[str, ...]:
        """The namespaces whose Secrets the adapter watches."""
        if self.secrets is not None:
            return self.secrets
        return (node_namespace,) if node_type == "router" else ()


def parse_kubernetes(s: Section, base: Path) -> KubeSourceConfig:
    """sources.kubernetes, validated; relative file paths resolve against base."""
    s.only(*KEYS)
    kubeconfig, server = optional_path(s, "kubeconfig", base), s.opt("server", str)
    if server is not None and not server.startswith(("http://", "https://")):
        raise s.error("must be an http:// or https:// URL", "server")
    if kubeconfig is None and server is None and s.opt("token_file", str) is not None:
        raise s.error("a token_file needs a server (or use a kubeconfig)", "token_file")
    namespaces = s.get("namespaces", list, [])
    kinds = s.get("kinds", list, list(ALL_KINDS))
    for key, values in (("namespaces", namespaces), ("kinds", kinds)):
        for i, item in enumerate(values):
            if not isinstance(item, str) or not item:
                raise s.error("must be a non-empty name", f"{key}[{i}]")
    for i, kind in enumerate(kinds):
        if kind not in ALL_KINDS:
            raise s.error(f"unknown kind; one of {', '.join(ALL_KINDS)}", f"kinds[{i}]")
    options = KubeOptions(
        kubeconfig=kubeconfig,
        context=s.opt("context", str),
        server=server,
        token_file=optional_path(s, "token_file", base),
        ca_file=optional_path(s, "ca_file", base),
        insecure_skip_verify=s.get("insecure_skip_verify", bool, False),
        namespaces=tuple(namespaces),
        kinds=tuple(kinds),
        watch_timeout_s=max(duration_ms(s, "watch_timeout", "1m", 1_000, 3_600_000) // 1000, 1),
        resync_s=duration_ms(s, "resync", "0s", 0, 86_400_000) / 1000,
    )
    mapping = KubeMapping(
        cluster_domain=s.get("cluster_domain", str, "cluster.local"),
        region=s.get("region", str, ""),
        precedence=s.choice("precedence", "kubernetes", ("kubernetes", "files")),
    )
    return KubeSourceConfig(options, mapping, _secrets(s))


def _secrets(s: Section) -> tuple[str, ...] | None:
    """sources.kubernetes.secrets: "auto" (default), false (never), or namespaces."""
    value = s.data.get("secrets", "auto")
    if value == "auto":
        return None
    if value is False:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise s.error('must be "auto", false, or a list of namespaces', "secrets")
    return tuple(value)
