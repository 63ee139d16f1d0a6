"""The `extension_providers` list of the agent config: the external authorizers that
AuthorizationPolicies with action CUSTOM name (Istio's meshConfig.extensionProviders, in this
config's snake_case), and `trust_domain_aliases` (meshConfig.trustDomainAliases).

As in Istio, a provider entry that is wrong does not stop the agent: it is kept, with the
reason, as an unusable provider, and only the CUSTOM policies naming it are affected (their
rules deny what they match; the daemon logs `extension_provider_invalid`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from envoy.type.v3 import http_status_pb2

from meshagent.agent.config.section import Section, duration_ms, hostname
from meshagent.agent.config.telemetry import is_telemetry_entry
from meshagent.errors import ConfigError
from meshagent.model.identity import InvalidIdentity, check_name
from meshagent.model.proxy import ExtAuthzProvider, RequestBody

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
    "include_request_body_in_check",
)
_HTTP_ONLY = (
    "path_prefix",
    "include_headers_in_check",  # deprecated in Istio: used when the field above is empty
    "include_additional_headers_in_check",
    "headers_to_upstream_on_allow",
    "headers_to_downstream_on_allow",
    "headers_to_downstream_on_deny",
)
_BODY = ("max_request_bytes", "allow_partial_message", "pack_as_bytes")
_STATUS_CODES = frozenset(http_status_pb2.StatusCode.values()) - {0}
DEFAULT_TIMEOUT = "600s"  # Istio's default


def parse_extension_providers(root: Section) -> tuple[ExtAuthzProvider, ...]:
    """`extension_providers`: the valid entries, and the invalid ones with their problem."""
    out: list[ExtAuthzProvider] = []
    for i, item in enumerate(root.get("extension_providers", list, [])):
        if is_telemetry_entry(item):  # access log and tracing kinds: telemetry.py
            continue
        name = str(item.get("name") or "") if isinstance(item, dict) else ""
        try:
            s = root.child(f"extension_providers[{i}]", item)
            provider = _entry(s, [p.name for p in out])
        except ConfigError as exc:
            provider = ExtAuthzProvider(name=name, kind="", problem=str(exc))
        out.append(provider)
    return tuple(out)


def _entry(s: Section, seen: Sequence[str]) -> ExtAuthzProvider:
    s.only("name", *_KINDS)
    name = hostname(s, "name", "")
    if name in seen:  # Istio keeps the last entry, marked invalid
        raise s.error(f"provider {name!r} is defined twice", "name")
    kinds = [k for k in _KINDS if s.data.get(k) is not None]
    if len(kinds) != 1:
        raise s.error(f"needs exactly one of: {', '.join(_KINDS)}", kinds[1] if kinds else "")
    return _provider(name, _KINDS[kinds[0]], s.section(kinds[0]))


def _provider(name: str, kind: str, s: Section) -> ExtAuthzProvider:
    s.only(*_COMMON, *(_HTTP_ONLY if kind == "http" else ()))
    if not s.data.get("service"):
        raise s.error(
            "is required (the authorizer's mesh service: host or namespace/host)", "service"
        )
    timeout = duration_ms(s, "timeout", DEFAULT_TIMEOUT, 1)
    headers = _names(s, "include_request_headers_in_check") or _names(s, "include_headers_in_check")
    return ExtAuthzProvider(
        name=name,
        kind=kind,
        service=hostname(s, "service", ""),
        port=_port(s),
        timeout_ms=timeout,
        fail_open=s.get("fail_open", bool, False),
        status_on_error=_status(s),
        path_prefix=_path_prefix(s),
        include_headers=headers,
        headers_to_upstream_on_allow=_names(s, "headers_to_upstream_on_allow"),
        headers_to_downstream_on_allow=_names(s, "headers_to_downstream_on_allow"),
        headers_to_downstream_on_deny=_names(s, "headers_to_downstream_on_deny"),
        additional_headers=_additional(s),
        request_body=_body(s),
    )


def _port(s: Section) -> int:
    """Istio's uint32 port, given as a number or a string of digits (as in meshConfig)."""
    value = s.data.get("port")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise s.error("must be a port number (1-65535)", "port")
    return value


def _status(s: Section) -> int | None:
    """statusOnError: a string in Istio (`"503"`); a number is taken too. It must be one of
    Envoy's HTTP status codes. Not set: Envoy's default (403)."""
    value = s.data.get("status_on_error")
    if value is None or value == "":
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) not in _STATUS_CODES:
        raise s.error(
            f"unsupported status {value!r} (an HTTP status code Envoy knows)", "status_on_error"
        )
    return int(text)


def _path_prefix(s: Section) -> str:
    value = s.get("path_prefix", str, "")
    if value and not value.startswith("/"):
        raise s.error('must start with "/"', "path_prefix")
    return value


def _names(s: Section, key: str) -> tuple[str, ...]:
    """Header names; `x-*` and `*-y` are prefix and suffix patterns, `*` alone is refused."""
    values: Sequence[Any] = s.get(key, list, [])
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise s.error("must be a list of header names", key)
    if any(v.strip() == "*" for v in values):
        raise s.error('a single wildcard ("*") is not supported: use a prefix or suffix', key)
    return tuple(v.strip() for v in values)


def _additional(s: Section) -> tuple[tuple[str, str], ...]:
    values = s.get("include_additional_headers_in_check", dict, {})
    if not all(isinstance(k, str) and k.strip() and isinstance(v, str) for k, v in values.items()):
        raise s.error(
            "must map header names to string values", "include_additional_headers_in_check"
        )
    return tuple(sorted((k.strip(), v) for k, v in values.items()))


def _body(s: Section) -> RequestBody | None:
    if s.data.get("include_request_body_in_check") is None:
        return None
    body = s.section("include_request_body_in_check")
    body.only(*_BODY)
    size = body.get("max_request_bytes", int, 0)
    if size < 0 or size > 2**32 - 1:
        raise body.error("must be a byte count (0 to 4294967295)", "max_request_bytes")
    return RequestBody(
        max_request_bytes=size,
        allow_partial_message=body.get("allow_partial_message", bool, False),
        pack_as_bytes=body.get("pack_as_bytes", bool, False),
    )


def parse_trust_domain_aliases(root: Section) -> tuple[str, ...]:
    """`trust_domain_aliases`: trust domains that count as this mesh's in authorization."""
    values = root.get("trust_domain_aliases", list, [])
    out: list[str] = []
    for i, value in enumerate(values):
        try:
            out.append(check_name("trust_domain", value))
        except InvalidIdentity as exc:
            raise root.error(str(exc), f"trust_domain_aliases[{i}]") from exc
    return tuple(out)
