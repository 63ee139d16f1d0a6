"""The `extension_providers` list of the agent config: the external authorizers that
AuthorizationPolicies with action CUSTOM name (Istio's meshConfig.extensionProviders, in this
config's snake_case)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshagent.agent.config import _duration_ms, _hostname, _Section
from meshagent.model.proxy import ExtAuthzProvider

if TYPE_CHECKING:
    from collections.abc import Sequence

_KINDS = {"envoy_ext_authz_http": "http", "envoy_ext_authz_grpc": "grpc"}
_COMMON = (
    "service",
    "port",
    "timeout",
    "fail_open",
    "status_on_error",
    "include_request_headers_in_check",
)
_HTTP_ONLY = (
    "path_prefix",
    "headers_to_upstream_on_allow",
    "headers_to_downstream_on_allow",
    "headers_to_downstream_on_deny",
)


def parse_extension_providers(root: _Section) -> tuple[ExtAuthzProvider, ...]:
    """`extension_providers`, validated: unique names, one provider kind each."""
    out: list[ExtAuthzProvider] = []
    for i, item in enumerate(root.get("extension_providers", list, [])):
        s = _Section(item, root.path(f"extension_providers[{i}]"), root.lines, root.filename)
        s.only("name", *_KINDS)
        name = _hostname(s, "name", "")
        if any(p.name == name for p in out):
            raise s.error(f"provider {name!r} is defined twice", "name")
        kinds = [k for k in _KINDS if s.data.get(k) is not None]
        if len(kinds) != 1:
            raise s.error(f"needs exactly one of: {', '.join(_KINDS)}", kinds[1] if kinds else "")
        out.append(_provider(name, _KINDS[kinds[0]], s.section(kinds[0])))
    return tuple(out)


def _provider(name: str, kind: str, s: _Section) -> ExtAuthzProvider:
    s.only(*_COMMON, *(_HTTP_ONLY if kind == "http" else ()))
    if not s.data.get("service"):
        raise s.error("is required (the authorizer's mesh service host)", "service")
    timeout = _duration_ms(s, "timeout", "600ms", 1)
    status = s.get("status_on_error", int, 403)
    if not 200 <= status <= 599:
        raise s.error("must be an HTTP status (200-599)", "status_on_error")
    return ExtAuthzProvider(
        name=name,
        kind=kind,
        service=_hostname(s, "service", ""),
        port=s.port("port", 0, zero_ok=False),
        timeout_ms=timeout,
        fail_open=s.get("fail_open", bool, False),
        status_on_error=status,
        path_prefix=_path_prefix(s),
        include_headers=_names(s, "include_request_headers_in_check"),
        headers_to_upstream_on_allow=_names(s, "headers_to_upstream_on_allow"),
        headers_to_downstream_on_allow=_names(s, "headers_to_downstream_on_allow"),
        headers_to_downstream_on_deny=_names(s, "headers_to_downstream_on_deny"),
    )


def _path_prefix(s: _Section) -> str:
    value = s.get("path_prefix", str, "")
    if value and not value.startswith("/"):
        raise s.error('must start with "/"', "path_prefix")
    return value


def _names(s: _Section, key: str) -> tuple[str, ...]:
    values: Sequence[Any] = s.get(key, list, [])
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise s.error("must be a list of header names", key)
    return tuple(v.strip().lower() for v in values)
