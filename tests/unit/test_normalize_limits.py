"""Regexes and durations are checked against what Envoy accepts (model/limits.py)."""

from __future__ import annotations

import pytest

from meshagent.model.limits import RE2_MAX_PROGRAM_SIZE
from meshagent.model.regex import RE2, regex_problem
from tests.unit.normalize_helpers import diagnostics, errors

needs_re2 = pytest.mark.skipif(RE2 is None, reason="google-re2 is not installed")
OVER_LIMIT = "^" + "[a-z]{1000}" * 40 + "$"  # RE2 program size 40002


def virtual_service(match: str, extra: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: blobs, namespace: default}}
spec:
  hosts: [blobs.example.com]
  http:
  - match:
    - {match}
    route:
    - destination: {{host: blobs.example.com}}
    {extra}
"""


@needs_re2
def test_istio_accepted_regex_fits_the_bootstrap_limit() -> None:
    # Istio accepts it; Envoy's default limit of 100 rejects it (program size 132)
    assert regex_problem("^/blobs/sha256:[0-9a-f]{64}$") is None
    text = virtual_service('uri: {regex: "^/blobs/sha256:[0-9a-f]{64}$"}')
    assert errors(text) == []


@needs_re2
def test_regex_over_the_program_size_is_a_located_error() -> None:
    text = virtual_service(f'headers: {{x-id: {{regex: "{OVER_LIMIT}"}}}}')
    found = [d for d in diagnostics(text, "mesh/vs.yaml") if d.severity == "error"]
    assert [(d.location, d.field) for d in found] == [
        ("mesh/vs.yaml:9", "spec.http[0].match[0].headers.x-id.regex")
    ]
    assert "RE2 program size is 40002" in found[0].reason
    assert str(RE2_MAX_PROGRAM_SIZE) in found[0].reason


@needs_re2
def test_regex_that_only_python_accepts_is_an_error() -> None:
    # Lookahead is Python syntax, not RE2's: Envoy would NACK it
    assert "RE2 syntax" in (regex_problem("^/a(?=b)") or "")
    text = virtual_service('queryParams: {q: {regex: "a{1001}"}}')
    assert errors(text) == [("mesh.yaml:9", "spec.http[0].match[0].queryParams.q.regex")]


@needs_re2
def test_uri_regex_rewrite_is_checked() -> None:
    text = virtual_service(
        "uri: {prefix: /}", f'rewrite: {{uriRegexRewrite: {{match: "{OVER_LIMIT}", rewrite: /}}}}'
    )
    assert [f for _, f in errors(text)] == ["spec.http[0].rewrite.uriRegexRewrite.match"]


def test_durations_beyond_protobuf_range_are_errors() -> None:
    ok = virtual_service("uri: {prefix: /}", "timeout: 87600000h")  # 10,000 years less a bit
    too_long = virtual_service("uri: {prefix: /}", "timeout: 87700000h")
    assert errors(ok) == []
    found = [d for d in diagnostics(too_long) if d.severity == "error"]
    assert [d.field for d in found] == ["spec.http[0].timeout"]
    assert "315576000000 seconds" in found[0].reason


@needs_re2
def test_consul_router_regexes_and_durations_are_checked() -> None:
    from meshagent.normalize.consul import ConsulMapping, convert_consul
    from tests.unit.test_consul_normalize import entry

    http = {
        "PathRegex": "^/a(?=b)",
        "Header": [{"Name": "x-id", "Regex": OVER_LIMIT}],
        "QueryParam": [{"Name": "q", "Regex": "^/blobs/sha256:[0-9a-f]{64}$"}],
    }
    route = {
        "Match": {"HTTP": http},
        "Destination": {"Service": "b", "RequestTimeout": "100000000000h"},
    }
    body = {"Kind": "service-router", "Name": "web", "Routes": [route]}

    _, issues = convert_consul(entry(body), ConsulMapping())

    fields = sorted(i.path for i in issues if i.severity == "error")
    assert fields == [
        "Routes[0].Destination.RequestTimeout",
        "Routes[0].Match.HTTP.Header[0].Regex",
        "Routes[0].Match.HTTP.PathRegex",
    ]


def test_the_bootstrap_sets_the_limit_validation_uses() -> None:
    from meshagent.xds.bootstrap import build_bootstrap

    bootstrap = build_bootstrap(node_id="vm-1", cluster="c", xds_uds_path="/run/x.sock")
    [static, admin] = bootstrap["layered_runtime"]["layers"]
    assert static["static_layer"] == {"re2.max_program_size.error_level": RE2_MAX_PROGRAM_SIZE}
    assert RE2_MAX_PROGRAM_SIZE == 32768  # Istio's value (pkg/bootstrap/config.go)
    assert admin == {"name": "admin", "admin_layer": {}}
