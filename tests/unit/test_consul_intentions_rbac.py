"""service-intentions through the normalizer and the RBAC translator, decided like Envoy would.

Here the Envoy RBAC generated for a Consul intention is evaluated directly
(tests/unit/rbac_eval.py); tests/integration/test_consul_mtls_e2e.py checks deny → 403 and
allow → 200 through real Envoys over mesh mTLS.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from meshagent.model.source import Provenance, RawResource, SourceEvent
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds.translate.rbac import rbac_by_action
from tests.unit.rbac_eval import Request, allowed


def filters_for(entry: dict[str, Any]) -> list[dict[str, Any]]:
    raw = RawResource(
        "consul",
        "ConsulConfigEntry",
        "consul/v1",
        "",
        f"{entry['Kind']}/{entry['Name']}",
        entry,
        Provenance("consul", "consul index 3"),
    )
    snapshot, diagnostics = Normalizer().apply([SourceEvent("consul", upserts=(raw,))])
    assert not [d for d in diagnostics if d.severity == "error"], diagnostics
    policies = list(snapshot.authorization_policies.values())
    return [json_format.MessageToDict(f.http_config()) for f in rbac_by_action(policies, http=True)]


def call(source: str, path: str = "/", method: str = "GET") -> Request:
    principal = f"spiffe://cluster.local/ns/default/sa/{source}"
    return Request(headers={":path": path, ":method": method}, principal=principal)


def test_l4_deny_is_403_for_that_source_only() -> None:
    rbac = filters_for(
        {"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Action": "deny"}]}
    )
    assert not allowed(rbac, call("web"))
    assert allowed(rbac, call("api"))


def test_allow_list_denies_everyone_else() -> None:
    rbac = filters_for(
        {
            "Kind": "service-intentions",
            "Name": "db",
            "Sources": [{"Name": "web", "Action": "deny"}, {"Name": "api", "Action": "allow"}],
        }
    )
    assert allowed(rbac, call("api"))
    assert not allowed(rbac, call("web"))
    assert not allowed(rbac, call("other"))


def test_l7_permissions_paths_methods_and_ordered_deny() -> None:
    rbac = filters_for(
        {
            "Kind": "service-intentions",
            "Name": "billing",
            "Sources": [
                {
                    "Name": "frontend",
                    "Permissions": [
                        {"Action": "deny", "HTTP": {"PathExact": "/billing/refund"}},
                        {
                            "Action": "allow",
                            "HTTP": {"PathPrefix": "/billing/", "Methods": ["POST"]},
                        },
                    ],
                },
            ],
        }
    )
    assert allowed(rbac, call("frontend", "/billing/pay", "POST"))
    assert not allowed(rbac, call("frontend", "/billing/pay", "GET"))
    assert not allowed(rbac, call("frontend", "/billing/refund", "POST"))
    assert not allowed(rbac, call("support", "/billing/pay", "POST"))


def test_wildcard_allow_with_an_exception() -> None:
    rbac = filters_for(
        {
            "Kind": "service-intentions",
            "Name": "db",
            "Sources": [{"Name": "*", "Action": "allow"}, {"Name": "web", "Action": "deny"}],
        }
    )
    assert allowed(rbac, call("anyone"))
    assert not allowed(rbac, call("web"))
