"""Label sets as sorted tuples, so that model objects stay hashable and comparisons are cheap."""

from __future__ import annotations

from collections.abc import Mapping

Labels = tuple[tuple[str, str], ...]

NO_LABELS: Labels = ()


def labels_of(mapping: Mapping[str, str] | None) -> Labels:
    """The canonical (sorted) form of a label mapping."""
    if not mapping:
        return NO_LABELS
    return tuple(sorted((str(k), str(v)) for k, v in mapping.items()))


def selector_matches(selector: Labels, labels: Labels) -> bool:
    """True when every key=value of selector is in labels (an empty selector matches all)."""
    if not selector:
        return True
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector)
