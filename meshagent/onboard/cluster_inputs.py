"""`vm configure` inputs read from the cluster (as istioctl reads them), through the
Kubernetes adapter's client settings."""

from __future__ import annotations

from typing import Any

import yaml

from meshagent.errors import ConfigError
from meshagent.onboard.vmconfig import is_revisioned

TOKEN_SECONDS = 3600


def read_cluster_inputs(
    options: Any, group: dict[str, Any], istio_namespace: str, revision: str, *, need_token: bool
) -> tuple[dict[str, Any], bytes, bytes]:
    """(mesh config, root cert PEM, token); ConfigError naming what could not be read."""
    from kubernetes import client

    from meshagent.adapters.kubernetes import api_client

    core = client.CoreV1Api(api_client(options))
    meta = group.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    name = f"istio-{revision}" if is_revisioned(revision) else "istio"
    mesh_text = _configmap(core, istio_namespace, name).get("mesh", "")
    try:
        mesh = yaml.safe_load(mesh_text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"configmap {istio_namespace}/{name}: mesh is not YAML: {exc}") from None
    root = _configmap(core, namespace, "istio-ca-root-cert").get("root-cert.pem", "")
    token = b""
    if need_token:
        account = str(
            ((group.get("spec") or {}).get("template") or {}).get("serviceAccount") or "default"
        )
        token = _token(core, namespace, account).encode()
    return (mesh if isinstance(mesh, dict) else {}), root.encode(), token


def _configmap(core: Any, namespace: str, name: str) -> dict[str, str]:
    try:
        data: dict[str, str] = core.read_namespaced_config_map(name, namespace).data or {}
    except Exception as exc:
        raise ConfigError(f"configmap {namespace}/{name}: {_reason(exc)}") from None
    return data


def _token(core: Any, namespace: str, account: str) -> str:
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=["istio-ca"], expiration_seconds=TOKEN_SECONDS)
    )
    try:
        answer = core.create_namespaced_service_account_token(account, namespace, request)
    except Exception as exc:
        raise ConfigError(
            f"token for {namespace}/{account}: {_reason(exc)} (or pass --token-file)"
        ) from None
    return str(answer.status.token)


def _reason(exc: Exception) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    return f"{status} {reason}" if status else str(exc) or type(exc).__name__
