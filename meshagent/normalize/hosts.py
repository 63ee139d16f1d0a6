"""Istio's short-name rule: a host without dots is a Kubernetes-style service name."""

from __future__ import annotations


def resolve_host(host: str, namespace: str, domain_suffix: str) -> str:
    """host as an FQDN: "reviews" in "prod" is "reviews.prod.svc.<suffix>".

    Names with dots and wildcards ("*", "*.example.com") are already complete and stay as they are.
    """
    if "." in host or host.startswith("*"):
        return host
    return f"{host}.{namespace}.svc.{domain_suffix}"
