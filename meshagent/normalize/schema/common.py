"""Field types and rules shared by several Istio kinds: hosts, labels, string matches, ..."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from meshagent.model.regex import regex_problem
from meshagent.normalize.schema.core import (
    F,
    Float,
    Int,
    Issues,
    MapOf,
    Obj,
    Predicate,
    Str,
    Type,
    join,
)

DNS_LABEL = r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?"
_DNS_LABEL = re.compile(DNS_LABEL)
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What Istio's ValidateHTTPHeaderName accepts (stricter than an RFC 9110 token).
ISTIO_HEADER_NAME = r"[-_A-Za-z0-9]+"
# Istio's routing on JWT claims: "@request.auth.claims.a.b" or "@request.auth.claims[a][b]".
JWT_CLAIM_HEADER = "@request.auth.claims"

PORT = Int(1, 65535)
UINT32 = Int(0, 2**32 - 1)
INT32 = Int(-(2**31), 2**31 - 1)
NON_NEG_INT32 = Int(0, 2**31 - 1)
PERCENT = Obj({"value": F(Float(0.0, 100.0))})


# A dotted quad of 0-255 without leading zeros: what ipaddress accepts as IPv4. Most mesh
# addresses are such; the regex answers them ~10x faster, ipaddress decides the rest.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def is_ip(text: str) -> bool:
    """True for an IPv4 or IPv6 address (no prefix length)."""
    if DOTTED_QUAD.fullmatch(text):
        return True
    if ":" not in text:
        return False  # not a dotted quad, and every IPv6 form has a colon
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_cidr(text: str) -> bool:
    """True for an address or a CIDR block like 10.0.0.0/8."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


# A whole DNS name in one match: labels of 1-63 characters, as the per-label loop of
# domain_problem requires. It answers the usual host at once; the loop explains the rest.
_LABEL_63 = r"[a-zA-Z0-9](?:[-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL_63}(?:\.{_LABEL_63})*")


def domain_problem(host: str, *, wildcard: bool = True) -> str:
    """Why host is not a valid (optionally wildcard-prefixed) DNS name, or "" when it is."""
    if not host:
        return "host must not be empty"
    if len(host) > 255:
        return "host name is longer than 255 characters"
    if _DNS_NAME.fullmatch(host):
        return ""
    name = host
    if wildcard and host == "*":
        return ""
    if wildcard and host.startswith("*."):
        name = host[2:]
    elif wildcard and host.startswith("*"):
        name = host[1:]  # Istio accepts "*foo.com": a suffix match
    for label in name.split("."):
        if len(label) > 63 or not _DNS_LABEL.fullmatch(label):
            return f"{host!r} is not a valid host name"
    return ""


def label_key_problem(key: str) -> str:
    """Why key is not a valid Kubernetes label key ("prefix/name"), or ""."""
    prefix, _, name = key.rpartition("/")
    if prefix and domain_problem(prefix, wildcard=False):
        return f"label key prefix {prefix!r} is not a DNS subdomain"
    if not _LABEL_NAME.fullmatch(name):
        return f"{key!r} is not a valid label key"
    return ""


class LabelMap(Type):
    """map[string]string with Kubernetes label syntax for keys and values."""

    def __init__(self) -> None:
        # Label keys and values repeat across a mesh (version: v1, ...): the predicate checks
        # each once and remembers it here (plain strs only, at most 4096 of each), so that a
        # pair found in both sets is known to be valid.
        self.good_keys: set[str] = set()
        self.good_values: set[str] = set()

    def check(self, value: Any, path: str, issues: Issues) -> None:
        MapOf(Str()).check(value, path, issues)
        if not isinstance(value, Mapping):
            return
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                continue
            problem = label_key_problem(k)
            if problem:
                issues.error(join(path, k), problem)
            elif not _LABEL_VALUE.fullmatch(v):
                issues.error(join(path, k), f"{v!r} is not a valid label value")

    def compile_predicate(self) -> Predicate:
        value_ok = _LABEL_VALUE.fullmatch
        good_keys, good_values = self.good_keys, self.good_values

        def fast(value: Any) -> bool:
            if type(value) is not dict:
                return False
            for k, v in value.items():
                if type(k) is not str or type(v) is not str:
                    return False
                if v not in good_values:
                    if value_ok(v) is None:
                        return False
                    if len(good_values) < 4096:
                        good_values.add(v)
                if k not in good_keys:
                    if label_key_problem(k):
                        return False
                    if len(good_keys) < 4096:
                        good_keys.add(k)
            return True

        return fast


LABELS = LabelMap()
STR_MAP = MapOf(Str())


class HostName(Type):
    """A DNS name, optionally with a wildcard prefix; IP addresses allowed when ip_ok."""

    def __init__(self, *, wildcard: bool = True, ip_ok: bool = False) -> None:
        self.wildcard = wildcard
        self.ip_ok = ip_ok

    def check(self, value: Any, path: str, issues: Issues) -> None:
        Str().check(value, path, issues)
        if not isinstance(value, str) or (self.ip_ok and is_ip(value)):
            return
        problem = domain_problem(value, wildcard=self.wildcard)
        if problem:
            issues.error(path, problem)

    def compile_predicate(self) -> Predicate:
        wildcard, ip_ok = self.wildcard, self.ip_ok
        return lambda value: (
            type(value) is str
            and ((ip_ok and is_ip(value)) or not domain_problem(value, wildcard=wildcard))
        )


class HeaderName(Str):
    """An HTTP header name (an RFC 7230 token)."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        Str().check(value, path, issues)
        if isinstance(value, str) and not _HEADER_NAME.fullmatch(value):
            issues.error(path, f"{value!r} is not a valid header name")

    def compile_predicate(self) -> Predicate:
        match = _HEADER_NAME.fullmatch
        return lambda value: type(value) is str and match(value) is not None


def jwt_claim_path(name: str) -> tuple[str, ...] | None:
    """The claim names of a "@request.auth.claims" header key (Istio's ToRoutingClaim), or
    None when name is an ordinary header."""
    if not name.lower().startswith(JWT_CLAIM_HEADER):
        return None
    rest = name[len(JWT_CLAIM_HEADER) :]
    if rest.startswith("."):
        return tuple(rest[1:].split("."))
    if rest.startswith("[") and rest.endswith("]"):
        return tuple(rest[1:-1].split("]["))
    return None


_ISTIO_HEADER_NAME = re.compile(ISTIO_HEADER_NAME)


class HeaderNameOrClaim(HeaderName):
    """A header match key: a header name as Istio's ValidateHTTPHeaderName takes it (letters,
    digits, '-' and '_'), or Istio's "@request.auth.claims..." form."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        Str().check(value, path, issues)
        if not isinstance(value, str) or jwt_claim_path(value) is not None:
            return
        if not _ISTIO_HEADER_NAME.fullmatch(value):
            issues.error(path, f"header name {value} is not a valid header name")

    def compile_predicate(self) -> Predicate:
        match = _ISTIO_HEADER_NAME.fullmatch
        return lambda value: (
            type(value) is str and (match(value) is not None or jwt_claim_path(value) is not None)
        )


class ExportTo(Type):
    """exportTo: ".", "*", "~" or namespace names, without duplicates."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, list):
            issues.error(path, "expected list")
            return
        seen: set[str] = set()
        for i, item in enumerate(value):
            sub = f"{path}[{i}]"
            if not isinstance(item, str):
                issues.error(sub, "expected string")
            elif item not in (".", "*", "~") and not _DNS_LABEL.fullmatch(item):
                issues.error(sub, f"{item!r} is not a namespace, '.', '*' or '~'")
            elif item in seen:
                issues.error(sub, f"duplicate exportTo entry {item!r}")
            seen.add(str(item))
        if "~" in seen and len(seen) > 1:
            issues.error(path, "'~' (export to none) cannot be combined with other entries")
        elif "*" in seen and len(value) > 1:
            issues.error(
                path, "cannot have both public (*) and non-public exportTo values for a resource"
            )


def _regex_compiles(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    regex = value.get("regex")
    if regex is None:
        return
    problem = regex_problem(regex) if isinstance(regex, str) else None
    if problem:
        issues.error(join(path, "regex"), problem)


STRING_MATCH = Obj(
    {"exact": F(Str()), "prefix": F(Str()), "regex": F(Str())},
    oneof=[("exact", "prefix", "regex")],
    rules=[_regex_compiles],
)

WORKLOAD_SELECTOR = Obj({"labels": F(LABELS)})


def port_number_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """A PortSelector's number is a real port when set."""
    number = value.get("number")
    if number is not None and not 1 <= number <= 65535:
        issues.error(join(path, "number"), f"port number {number} is out of range [1, 65535]")


PORT_SELECTOR = Obj({"number": F(UINT32)}, rules=[port_number_rule])

SUBSET_NAME = Str(pattern=DNS_LABEL, what="subset name")


def _destination_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if value.get("host") == "*":
        issues.error(join(path, "host"), "destination host must not be '*'")


DESTINATION = Obj(
    {
        "host": F(HostName(), required=True),
        "subset": F(SUBSET_NAME),
        "port": F(PORT_SELECTOR),
    },
    rules=[_destination_rule],
)

__all__ = [
    "DESTINATION",
    "DOTTED_QUAD",
    "INT32",
    "LABELS",
    "NON_NEG_INT32",
    "PERCENT",
    "PORT",
    "PORT_SELECTOR",
    "STRING_MATCH",
    "STR_MAP",
    "SUBSET_NAME",
    "UINT32",
    "WORKLOAD_SELECTOR",
    "ExportTo",
    "HeaderName",
    "HeaderNameOrClaim",
    "HostName",
    "domain_problem",
    "is_cidr",
    "is_ip",
]
