"""Which WorkloadEntries a ServiceEntry's workloadSelector picks, indexed both ways.

A selector matches a workload of its own namespace when every key=value of the selector is
among the workload's labels (an empty selector matches every workload of the namespace).
The Normalizer needs both directions: the workloads a selector picks (to build a service's
endpoints) and the selectors that pick a workload (to know which services one WorkloadEntry
change touches). Scanning either side costs O(mesh) per change and O(mesh²) for a first load
of 10k entries; this index answers both from label postings, so the cost follows the size of
the answer. The Normalizer owns the only instance and keeps it in step with its entries.
"""

from __future__ import annotations

from meshagent.model.labels import Labels, selector_matches

Key = tuple[str, str, str, str]
Label = tuple[str, str]
_EMPTY: Label = ("", "")  # the posting of selectors with no labels: they match everything


class SelectorIndex:
    """Workload labels and ServiceEntry selectors of every namespace, with label postings."""

    def __init__(self) -> None:
        self._workloads: dict[str, dict[Key, Labels]] = {}
        self._workload_postings: dict[str, dict[Label, set[Key]]] = {}
        self._selectors: dict[str, dict[Key, Labels]] = {}
        # A selector is filed under its first label only: every workload it matches carries
        # that label, so the postings of a workload's labels reach all its candidates.
        self._selector_postings: dict[str, dict[Label, set[Key]]] = {}

    # -- workloads ---------------------------------------------------------------------

    def add_workload(self, namespace: str, key: Key, labels: Labels) -> None:
        """File workload key of namespace with its labels (remove its old labels first)."""
        self._workloads.setdefault(namespace, {})[key] = labels
        postings = self._workload_postings.setdefault(namespace, {})
        for label in labels:
            postings.setdefault(label, set()).add(key)

    def remove_workload(self, namespace: str, key: Key) -> None:
        """Forget workload key of namespace (no-op when unknown)."""
        labels = self._workloads.get(namespace, {}).pop(key, None)
        if labels is None:
            return
        postings = self._workload_postings[namespace]
        for label in labels:
            keys = postings.get(label)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del postings[label]

    def selected(self, namespace: str, selector: Labels) -> list[Key]:
        """The workloads of namespace that selector matches, sorted by key."""
        workloads = self._workloads.get(namespace)
        if not workloads:
            return []
        if not selector:
            return sorted(workloads)
        postings = self._workload_postings[namespace]
        candidates = min((postings.get(label, ()) for label in selector), key=len)
        if len(selector) == 1:
            return sorted(candidates)
        return sorted(k for k in candidates if selector_matches(selector, workloads[k]))

    # -- selectors ---------------------------------------------------------------------

    def add_selector(self, namespace: str, key: Key, selector: Labels) -> None:
        """File ServiceEntry key's selector (remove its old one first)."""
        self._selectors.setdefault(namespace, {})[key] = selector
        label = selector[0] if selector else _EMPTY
        self._selector_postings.setdefault(namespace, {}).setdefault(label, set()).add(key)

    def remove_selector(self, namespace: str, key: Key) -> None:
        """Forget ServiceEntry key's selector (no-op when unknown)."""
        selector = self._selectors.get(namespace, {}).pop(key, None)
        if selector is None:
            return
        postings = self._selector_postings[namespace]
        label = selector[0] if selector else _EMPTY
        keys = postings.get(label)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del postings[label]

    def selecting(self, namespace: str, labels: Labels) -> set[Key]:
        """The ServiceEntries of namespace whose selector matches a workload with labels."""
        postings = self._selector_postings.get(namespace)
        if not postings:
            return set()
        selectors = self._selectors[namespace]
        out = set(postings.get(_EMPTY, ()))
        for label in labels:
            for key in postings.get(label, ()):
                if selector_matches(selectors[key], labels):
                    out.add(key)
        return out
