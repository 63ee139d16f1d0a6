"""CEL syntax check of Telemetry access log filters (Istio's validateTelemetryFilter)."""

from __future__ import annotations

import pytest

from meshagent.normalize.schema.cel import cel_syntax_problem
from tests.unit.normalize_helpers import diagnostics

VALID = [
    "response.code >= 400",
    "response.code >= 500 || connection.mtls",
    "request.headers['x-request-id'] == 'abc'",
    "has(request.headers.foo) && !has(request.headers.bar)",
    "xds.cluster_name.startsWith('outbound')",
    "size(request.path) > 0u",
    "request.method in ['GET', 'POST',]",
    "a ? b : c ? d : e",
    "{'a': 1, 'b': 2.5e3}['a'] == 1",
    "-1 < 0 && 0x1F == 31",
    "r'raw\\d' != b\"bytes\"",
    "'''multi\nline''' != ''",
    "google.protobuf.Duration{seconds: 1} == duration('1s')",
    "response.code >= 400 // trailing comment",
]
INVALID = [
    "response.code >=",
    "",
    "(response.code",
    "response code",
    "a &&",
    "'unterminated",
    "a..b",
    "request.headers['x'",
    "if == 1",
    "a ? b",
    "1 +* 2",
    "@x",
]


@pytest.mark.parametrize("expression", VALID)
def test_valid_cel_expressions_are_accepted(expression: str) -> None:
    assert cel_syntax_problem(expression) == ""


@pytest.mark.parametrize("expression", INVALID)
def test_invalid_cel_expressions_say_why(expression: str) -> None:
    assert cel_syntax_problem(expression) != ""


def test_deep_nesting_is_a_problem_not_a_crash() -> None:
    assert cel_syntax_problem("(" * 5000 + "1" + ")" * 5000) != ""


def test_a_telemetry_filter_that_is_not_cel_is_an_error_at_its_field() -> None:
    telemetry = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: logs, namespace: ns}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: %s}
"""
    assert diagnostics(telemetry % "'response.code >= 500'") == []
    (found,) = diagnostics(telemetry % "'response.code >='")
    assert (found.severity, found.field) == ("error", "spec.accessLogging[0].filter.expression")
    assert found.reason.startswith("must be a valid CEL expression")
