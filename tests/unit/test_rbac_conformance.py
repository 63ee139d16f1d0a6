"""AuthorizationPolicy conformance with Istio: the RBAC meshagent generates decides requests
like the RBAC Istio generates (../shared/corpus/istio/authz/http/*-in.yaml and *-out*.yaml).

Decisions, not bytes, are compared: both sides go through tests/unit/rbac_eval.py on requests
derived from the policy's own values (each value made concrete, plus values that miss).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from meshagent.adapters.yamldocs import load_file
from meshagent.model.security import AuthzPolicy
from meshagent.model.source import SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds.translate.rbac import rbac_by_action
from tests.unit.rbac_eval import Request, allowed

AUTHZ = Path(__file__).parents[2] / ".." / "shared" / "corpus" / "istio" / "authz" / "http"
REQUESTS_PER_CASE = 400
_CLAIM_KEYS = {"request.auth.audiences": ("aud",), "request.auth.presenter": ("azp",)}


def _cases() -> list[Any]:
    inputs = sorted(AUTHZ.glob("*-in.yaml")) if AUTHZ.is_dir() else []
    if not inputs:
        reason = "corpus absent: ../shared/corpus/istio/authz/http not found"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    return inputs


def _policies(path: Path) -> list[AuthzPolicy]:
    resources, problems = load_file(path)
    assert problems == []
    snapshot, diagnostics = Normalizer().apply([SourceEvent("files", upserts=tuple(resources))])
    assert [str(d) for d in diagnostics if d.severity == "error"] == []
    return [snapshot.authorization_policies[k] for k in sorted(snapshot.authorization_policies)]


def _expected_filters(case: Path) -> list[dict[str, Any]]:
    stem = case.name[: -len("-in.yaml")]
    outputs = sorted(case.parent.glob(f"{stem}-out*.yaml"))
    assert outputs, f"no expected output for {case.name}"
    return [yaml.safe_load(p.read_text())["typedConfig"] for p in outputs]


def _our_filters(policies: list[AuthzPolicy]) -> list[dict[str, Any]]:
    return [json_format.MessageToDict(f.http_config()) for f in rbac_by_action(policies, http=True)]


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(field, value) for every string of a policy spec; `when` values under their key."""
    if isinstance(value, dict):
        if "key" in value:
            for field in ("values", "notValues"):
                for item in value.get(field) or ():
                    yield value["key"], str(item)
            return
        for k, v in value.items():
            yield from _strings(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)
    elif value is not None:
        yield key, str(value)


def _concrete(text: str) -> str:
    return text.replace("{**}", "a/b").replace("{*}", "seg").replace("*", "x")


def _ips(text: str) -> list[str]:
    network = ipaddress.ip_network(text, strict=False)
    return [str(network.network_address), str(network.network_address + 1)]


class Pools:
    """Candidate values per request attribute, from the policies' specs."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        self.principal: list[str | None] = [None, "spiffe://cluster.local/ns/foo/sa/sleep"]
        self.host = ["example.com", "other.org"]
        self.method = ["GET", "POST"]
        self.path = ["/", "/other"]
        self.port = [80, 8080]
        self.ip = ["127.0.0.1", "8.8.8.8"]
        self.headers: dict[str, list[str | None]] = {}
        self.sni = ["", "sni.example.com"]
        # JWT payload candidates; a request carries no token, or one built from these
        self.iss = ["https://issuer.example", "other-issuer"]
        self.sub = ["", "user", "other/user"]
        self.claims: dict[tuple[str, ...], list[str]] = {("aud",): ["aud"], ("azp",): ["azp"]}
        for spec in specs:
            for field, value in _strings(spec):
                self._add(field, value, spec)

    def _add(self, field: str, value: str, spec: dict[str, Any]) -> None:
        bare = field[3].lower() + field[4:] if field.startswith("not") else field
        concrete = _concrete(value)
        if bare in ("principals", "source.principal"):
            self.principal.append("spiffe://" + concrete)
        elif bare in ("namespaces", "source.namespace"):
            self.principal.append(f"spiffe://cluster.local/ns/{concrete}/sa/x")
        elif bare == "serviceAccounts":
            ns, _, sa = concrete.rpartition("/")
            self.principal.append(f"spiffe://cluster.local/ns/{ns or 'foo'}/sa/{sa}")
        elif bare == "hosts":
            self.host.append(concrete)
        elif bare == "methods":
            self.method.append(concrete)
        elif bare == "paths":
            self.path.append(concrete if concrete.startswith("/") else "/" + concrete)
        elif bare in ("ports", "destination.port"):
            self.port.append(int(value))
        elif bare in ("ipBlocks", "remoteIpBlocks") or bare.endswith(".ip"):
            self.ip.extend(_ips(value))
        elif bare.startswith("request.headers["):
            self.headers.setdefault(bare[len("request.headers[") : -1].lower(), [None]).append(
                concrete
            )
        elif bare == "connection.sni":
            self.sni.append(concrete)
        elif bare in ("requestPrincipals", "request.auth.principal"):
            iss, slash, sub = concrete.rpartition("/")
            self.iss.append(iss if slash else concrete)
            self.sub.append(sub if slash else "")
        elif bare.startswith("request.auth."):
            path = _CLAIM_KEYS.get(bare) or tuple(
                bare[len("request.auth.claims[") : -1].split("][")
            )
            self.claims.setdefault(path, []).append(concrete)

    def jwt(self, rnd: random.Random) -> dict[str, Any] | None:
        """No token (one time in four), or a payload from the candidates; a claim may be
        missing, a string, or a list holding a candidate."""
        if rnd.random() < 0.25:
            return None
        payload: dict[str, Any] = {"iss": rnd.choice(self.iss), "sub": rnd.choice(self.sub)}
        for path, values in sorted(self.claims.items()):
            shape, value = rnd.randrange(3), rnd.choice(values)
            if shape == 0:
                continue
            into = payload
            for key in path[:-1]:
                into = into.setdefault(key, {}) if isinstance(into.get(key, {}), dict) else {}
            into[path[-1]] = value if shape == 1 else ["unrelated", value]
        return payload

    def request(self, rnd: random.Random) -> Request:
        headers = {":authority": rnd.choice(self.host), ":method": rnd.choice(self.method)}
        headers[":path"] = rnd.choice(self.path)
        for name, values in sorted(self.headers.items()):
            chosen = rnd.choice(values)
            if chosen is not None:
                headers[name] = chosen
        return Request(
            headers=headers,
            principal=rnd.choice(self.principal),
            direct_remote_ip=rnd.choice(self.ip),
            remote_ip=rnd.choice(self.ip),
            destination_ip=rnd.choice(self.ip),
            destination_port=rnd.choice(self.port),
            sni=rnd.choice(self.sni),
            jwt=self.jwt(rnd),
        )


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.name[: -len("-in.yaml")] if p else "-")
def test_generated_rbac_decides_like_istio(case: Path) -> None:
    # given Istio's policy and Istio's RBAC for it, when both decide the same requests,
    # then every decision agrees, and both outcomes occur where the policy can go both ways
    policies = _policies(case)
    ours, istio = _our_filters(policies), _expected_filters(case)
    specs = [d.get("spec") or {} for d in yaml.safe_load_all(case.read_text()) if d]
    pools, rnd = Pools(specs), random.Random(case.name)
    decisions = set()
    for _ in range(REQUESTS_PER_CASE):
        request = pools.request(rnd)
        expected = allowed(istio, request)
        assert allowed(ours, request) == expected, request
        decisions.add(expected)
    assert decisions  # at least one request was decided
