"""The WorkloadEntry schema; ServiceEntry endpoints reuse it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.model.identity import SERVICE_ACCOUNT_PATTERN
from meshagent.normalize.schema.common import (
    DNS_LABEL,
    DOTTED_QUAD,
    LABELS,
    PORT,
    UINT32,
    domain_problem,
    is_ip,
)
from meshagent.normalize.schema.core import F, Issues, MapOf, Obj, Str, clean_when, join

UNIX_PREFIX = "unix://"


def unix_path_problem(path: str) -> str:
    """Why path (after unix://) is not a socket Istio accepts (ValidateUnixAddress): an
    absolute path to a file (not ending in '/') or an abstract socket ("@name"), or ""."""
    if not path:
        return "unix address must not be empty"
    if path.startswith("@"):
        return ""
    if not path.startswith("/") or path.endswith("/"):
        return f"{path} is not an absolute path to a file"
    return ""


def address_problem(address: str) -> str:
    """Why address is not an IP, a DNS name or a unix:// socket path, or ""."""
    if address.startswith(UNIX_PREFIX):
        return unix_path_problem(address[len(UNIX_PREFIX) :])
    if is_ip(address):
        return ""
    if domain_problem(address, wildcard=False):
        return f"{address!r} is not an IP address, a host name or a unix:// path"
    return ""


def _ipv4_address(value: Mapping[str, Any]) -> bool:
    address = value.get("address")
    return type(address) is str and DOTTED_QUAD.fullmatch(address) is not None


@clean_when(_ipv4_address)
def _workload_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    address = value.get("address") or ""
    if not address:
        if not value.get("network"):
            issues.error(join(path, "address"), "address is required unless network is set")
        else:  # as Istio warns: reached through the network's gateway only
            issues.warn(
                join(path, "address"), f"address is unset with network {value['network']!r}"
            )
        return
    problem = address_problem(address)
    if problem:
        issues.error(join(path, "address"), problem)
    if address.startswith(UNIX_PREFIX) and value.get("ports"):
        issues.error(join(path, "ports"), f"unix endpoint {address} must not include ports")


WORKLOAD_ENTRY = Obj(
    {
        "address": F(Str()),
        "ports": F(MapOf(PORT, key=Str(pattern=DNS_LABEL, what="port name"))),
        "labels": F(LABELS),
        "network": F(Str()),
        "locality": F(Str()),
        "weight": F(UINT32),
        "serviceAccount": F(Str(pattern=SERVICE_ACCOUNT_PATTERN, what="service account")),
    },
    rules=[_workload_rule],
)

SPEC = WORKLOAD_ENTRY
