"""The selector index answers as a full scan would, and a WorkloadEntry change touches only the
ServiceEntries that select it (before or after the change)."""

from __future__ import annotations

import random

from meshagent.model.labels import Labels, labels_of, selector_matches
from meshagent.normalize import Normalizer
from meshagent.normalize.selection import Key, SelectorIndex
from tests.unit.normalize_helpers import delete, upsert

VALUES = {"app": ("web", "db"), "version": ("v1", "v2"), "tier": ("a", "b")}


def _labels(rng: random.Random) -> Labels:
    return labels_of({k: rng.choice(v) for k, v in VALUES.items() if rng.random() < 0.6})


def test_index_matches_a_full_scan_through_random_churn() -> None:
    rng = random.Random(7)
    index = SelectorIndex()
    workloads: dict[Key, tuple[str, Labels]] = {}
    selectors: dict[Key, tuple[str, Labels]] = {}
    for step in range(3000):
        ns = rng.choice(("a", "b"))
        key = ("files", "X", ns, f"k{rng.randrange(40)}")
        table, add, remove = (
            (workloads, index.add_workload, index.remove_workload)
            if rng.random() < 0.6
            else (selectors, index.add_selector, index.remove_selector)
        )
        if key in table:
            remove(table[key][0], key)
            del table[key]
        if rng.random() < 0.7:
            labels = _labels(rng)
            add(ns, key, labels)
            table[key] = (ns, labels)
        if step % 50:
            continue
        for sel_ns, sel in [*selectors.values(), ("a", ()), ("b", ())]:
            want = sorted(
                k
                for k, (w_ns, lab) in workloads.items()
                if w_ns == sel_ns and selector_matches(sel, lab)
            )
            assert index.selected(sel_ns, sel) == want
        for w_ns, lab in workloads.values():
            want_keys = {
                k
                for k, (s_ns, sel) in selectors.items()
                if s_ns == w_ns and selector_matches(sel, lab)
            }
            assert index.selecting(w_ns, lab) == want_keys


SE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: vms}}
spec:
  hosts: [{name}.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector:
    labels: {selector}
"""
WE = (
    "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
    "metadata: {{name: {name}, namespace: vms}}\n"
    "spec: {{address: {ip}, labels: {labels}}}\n"
)


def _addresses(snap: object, host: str) -> list[str]:
    return [e.address for e in snap.endpoints.get(host, ())]  # type: ignore[attr-defined]


def test_a_relabelled_workload_entry_moves_between_services_and_nothing_else_changes() -> None:
    n = Normalizer()
    n.apply(
        [
            upsert(
                SE.format(name="web", selector="{app: web}"),
                SE.format(name="db", selector="{app: db}"),
                SE.format(name="all", selector="{}"),
                SE.format(name="canary", selector="{app: web, track: canary}"),
                WE.format(name="vm1", ip="10.0.0.1", labels="{app: web}"),
                WE.format(name="vm2", ip="10.0.0.2", labels="{app: db}"),
            )
        ]
    )
    snap, _ = n.apply(
        [upsert(WE.format(name="vm1", ip="10.0.0.1", labels="{app: db, track: canary}"))]
    )
    assert _addresses(snap, "web.example.com") == []
    assert _addresses(snap, "db.example.com") == ["10.0.0.1", "10.0.0.2"]
    assert _addresses(snap, "all.example.com") == ["10.0.0.1", "10.0.0.2"]
    # the canary selector wants app=web as well: still nothing
    assert _addresses(snap, "canary.example.com") == []
    assert snap.changes is not None
    assert snap.changes.endpoints == {"web.example.com", "db.example.com", "all.example.com"}

    snap, _ = n.apply(
        [upsert(WE.format(name="vm1", ip="10.0.0.1", labels="{app: web, track: canary}"))]
    )
    assert _addresses(snap, "canary.example.com") == ["10.0.0.1"]
    assert _addresses(snap, "web.example.com") == ["10.0.0.1"]


def test_a_service_entry_deleted_with_its_workloads_in_one_batch() -> None:
    n = Normalizer()
    se = SE.format(name="web", selector="{app: web}")
    we = WE.format(name="vm1", ip="10.0.0.1", labels="{app: web}")
    n.apply([upsert(se, we)])
    snap, _ = n.apply([delete(we), delete(se)])
    assert "web.example.com" not in snap.endpoints and "web.example.com" not in snap.services
    # and one whose selector changes takes its new workloads
    n.apply([upsert(se, we, WE.format(name="vm2", ip="10.0.0.2", labels="{app: db}"))])
    snap, _ = n.apply([upsert(SE.format(name="web", selector="{app: db}"))])
    assert _addresses(snap, "web.example.com") == ["10.0.0.2"]
