"""References that cannot work (normalize/references.py): validate, the normalizer, the agent."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import meshagent.normalize.references as references
from meshagent.agent.cli import validate_paths
from meshagent.agent.config import load_config
from meshagent.agent.daemon import Agent
from meshagent.model.source import Diagnostic, SourceEvent
from meshagent.normalize import Normalizer
from tests.unit.normalize_helpers import upsert
from tests.unit.test_daemon import QueueAdapter, running, until, write_config

SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: prod}
spec:
  hosts: [reviews.prod.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: prod}
spec:
  hosts: ["*.example.com"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
"""

RULES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: prod}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ghost, namespace: prod}
spec:
  host: ghost
"""

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: prod}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 50
    mirror: {host: ratings}
  - route:
    - destination: {host: api.example.com}
      weight: 50
    - destination: {host: reviews, port: {number: 9080}}
      weight: 50
  tcp:
  - route: [{destination: {host: db.default.svc.cluster.local}}]
"""


def found(diagnostics: list[Diagnostic]) -> list[tuple[str, str, str]]:
    return [(d.location, d.field, d.reason) for d in diagnostics if d.severity == "warning"]


def test_validate_reports_each_reference_that_cannot_work(tmp_path: Path) -> None:
    for name, text in (("services", SERVICES), ("rules", RULES), ("routes", ROUTES)):
        (tmp_path / f"{name}.yaml").write_text(text)

    diagnostics = validate_paths([tmp_path], domain_suffix="cluster.local", default_namespace="d")

    routes, rules = tmp_path / "routes.yaml", tmp_path / "rules.yaml"
    assert found(diagnostics) == [
        (
            f"{routes}:11",
            "spec.http[0].route[1].destination.subset",
            "Referenced host+subset in destinationrule not found: "
            "'reviews.prod.svc.cluster.local+v3'",
        ),
        (
            f"{routes}:13",
            "spec.http[0].mirror.host",
            "Referenced host not found: 'ratings.prod.svc.cluster.local'",
        ),
        (
            f"{routes}:17",
            "spec.http[1].route[1].destination.port.number",
            "Referenced host:port not found: 'reviews.prod.svc.cluster.local:9080'",
        ),
        (
            f"{routes}:20",
            "spec.tcp[0].route[0].destination.host",
            "Referenced host not found: 'db.default.svc.cluster.local'",
        ),
        (
            f"{rules}:14",
            "spec.host",
            "Referenced host not found: 'ghost.prod.svc.cluster.local'",
        ),
    ]
    # api.example.com is declared by the wildcard ServiceEntry: no warning


def test_short_names_resolve_in_the_resource_namespace() -> None:
    other_namespace = SERVICES.replace("reviews.prod.svc", "reviews.default.svc")
    normalizer = Normalizer()
    _, diagnostics = normalizer.apply([upsert(*other_namespace.split("---"), ROUTES)])
    fields = [d.field for d in diagnostics if d.reason.startswith("Referenced host not")]
    assert "spec.http[0].route[0].destination.host" in fields


def assert_agrees_with_a_full_check(normalizer: Normalizer) -> None:
    kept = sorted(d.reason for d in normalizer.references())
    full = references.unresolved_references(normalizer.snapshot)
    assert kept == sorted(u.reason for u in full)


class _Reads(dict[str, Any]):
    """A snapshot's VirtualServices that note each one a ReferenceIndex looks up to check."""

    def __init__(self, items: Any, noted: list[str]) -> None:
        super().__init__(items)
        self.noted = noted

    def get(self, key: str, default: Any = None) -> Any:
        found = super().get(key, default)
        if found is not None:
            self.noted.append(found.name)
        return found


class _CheckedNormalizer(Normalizer):
    """A Normalizer beside a ReferenceIndex of its own (the public class the normalizer uses)
    that is fed every new snapshot; checked: the VirtualServices the index re-checked."""

    def __init__(self) -> None:
        super().__init__()
        self.index, self.checked, self._seen = references.ReferenceIndex(), list[str](), -1

    def apply(self, events: Any) -> Any:
        result = super().apply(events)
        snapshot = self.snapshot
        if snapshot.version != self._seen:
            self._seen, noted = snapshot.version, list[str]()
            reads = _Reads(snapshot.virtual_services, noted)
            self.index.update(dataclasses.replace(snapshot, virtual_services=reads))
            self.checked += noted
        return result


def test_warnings_come_once_and_only_what_names_a_changed_host_is_checked() -> None:
    other = ROUTES.replace("name: reviews", "name: other").replace("hosts: [reviews]", "hosts: [x]")
    other = other.replace("reviews", "unrelated")
    normalizer = _CheckedNormalizer()
    checked = normalizer.checked
    # Given the broken references, each reported once
    texts = (*SERVICES.split("---"), *RULES.split("---"), ROUTES, other)
    _, first = normalizer.apply([upsert(*texts)])
    assert len(found(first)) == 5 + 7 and sorted(checked) == ["other", "reviews"]
    # When only an endpoint moves, nothing is checked and nothing is repeated
    checked.clear()
    moved = SERVICES.split("---")[0].replace("10.0.0.1", "10.0.0.2")
    _, again = normalizer.apply([upsert(moved)])
    assert found(again) == [] and checked == []
    # When the rule for reviews gains subset v3, only the VirtualService routing to it is
    # checked, and the warning is gone from the current ones
    fixed = RULES.split("---")[0] + "  - {name: v3, labels: {version: v3}}\n"
    _, after = normalizer.apply([upsert(fixed)])
    assert found(after) == [] and checked == ["reviews"]
    assert len(normalizer.references()) == 4 + 7
    assert_agrees_with_a_full_check(normalizer)
    # And when it is lost again, it is reported again
    _, lost = normalizer.apply([upsert(RULES.split("---")[0])])
    assert [f for _, f, _ in found(lost)] == ["spec.http[0].route[1].destination.subset"]
    # A new wildcard service may declare any host: everything is checked again
    checked.clear()
    wildcard = SERVICES.split("---")[1].replace("*.example.com", "*.cluster.local")
    _, _ = normalizer.apply([upsert(wildcard.replace("name: external", "name: all"))])
    assert sorted(checked) == ["other", "reviews"]
    assert_agrees_with_a_full_check(normalizer)


async def test_the_agent_reports_and_counts_reference_warnings(tmp_path: Path) -> None:
    adapter = QueueAdapter()
    agent = Agent(load_config(write_config(tmp_path, "mesh")), adapter_factory=lambda _: [adapter])
    event = upsert(*SERVICES.split("---"), ROUTES, path="mesh/routes.yaml")

    async def body() -> None:
        await adapter.events.put(SourceEvent("files", upserts=event.upserts, synced=True))
        await until(lambda: agent.cache.get("vm-1")[0] == 1, "first publish")
        messages = [d["message"] for d in agent.config_errors()["diagnostics"]]
        assert any(
            "spec.http[0].route[1].destination.subset: warning: Referenced host+subset" in m
            for m in messages
        )
        # (no DestinationRule here: subsets v1 and v3 both fail, with ratings, 9080 and db)
        assert agent.metrics.config_warnings.labels(source="files")._value.get() == 5
        assert b'meshagent_config_warnings_total{source="files"} 5.0' in agent.metrics.exposition()

    await running(agent, body)
