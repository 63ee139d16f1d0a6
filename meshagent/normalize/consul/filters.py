"""The part of Consul's filter language (go-bexpr) that service-resolver subsets use.

Supported: `Service.Meta.<key> == <value>`, `Service.Meta.<key> != ...` is not (a label
selector can only require), `<value> in Service.Tags`, `Service.Tags contains <value>`, and
`and` between them; values quoted or bare. Each term becomes a required label, with tags as
`tag.<tag>: "true"` (see services.endpoint_labels). Anything else (or, not, other selectors)
is reported as unsupported: a selector that picks more endpoints than the filter would is
worse than no subset.
"""

from __future__ import annotations

import re

from meshagent.model.labels import Labels, labels_of
from meshagent.normalize.consul.options import TAG_LABEL_PREFIX

_VALUE = r'(?:"((?:[^"\\]|\\.)*)"|`([^`]*)`|([\w.\-/:]+))'
_META_EQ = re.compile(rf"^Service\.Meta\.([\w\-]+)\s*==\s*{_VALUE}$")
_TAG_IN = re.compile(rf"^{_VALUE}\s+in\s+Service\.Tags$")
_TAG_CONTAINS = re.compile(rf"^Service\.Tags\s+contains\s+{_VALUE}$")
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


class FilterError(ValueError):
    """A filter outside the supported subset."""


def _value(match: re.Match[str], first: int) -> str:
    quoted, raw, bare = match.group(first), match.group(first + 1), match.group(first + 2)
    if quoted is not None:
        return quoted.replace('\\"', '"')
    return raw if raw is not None else bare


def filter_labels(expression: str) -> Labels:
    """The labels an endpoint must carry to pass expression; FilterError when unsupported."""
    text = expression.strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if not text:
        return ()
    labels: dict[str, str] = {}
    for term in _AND.split(text):
        term = term.strip().strip("()").strip()
        if m := _META_EQ.match(term):
            labels[m.group(1)] = _value(m, 2)
        elif (m := _TAG_IN.match(term)) or (m := _TAG_CONTAINS.match(term)):
            labels[TAG_LABEL_PREFIX + _value(m, 1)] = "true"
        else:
            raise FilterError(
                f"filter term {term!r} is not supported (supported: Service.Meta.<key> == "
                "<value>, <tag> in Service.Tags, joined with and)"
            )
    return labels_of(labels)
