"""Fast positional constructors for frozen slots dataclasses, for the few hot paths.

A frozen dataclass's __init__ sets each field through object.__setattr__ (to get past its
own __setattr__, which refuses): with defaults and keywords, building a Service or an Endpoint
costs ~1 µs, and a 10k-service mesh builds hundreds of thousands of model objects. The
constructor made here sets the slots through their descriptors instead, which is what
object.__setattr__ ends up doing, for about half the cost. It takes every field positionally,
in declaration order (init=False fields too): it knows no defaults, so callers say everything.
The object is the same as the dataclass's own __init__ would make (tests compare them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def slots_constructor(cls: type[T], *names: str) -> Callable[..., T]:
    """make(*values) -> cls instance, one value per field in declaration order.

    names: the fields in the order the caller passes them; if cls's fields differ (one was
    added, removed or moved), this raises TypeError, at import time of the caller, rather
    than building wrong objects.
    """
    params = dataclasses.fields(cls)  # type: ignore[arg-type]
    if not getattr(cls, "__slots__", None):
        raise TypeError(f"{cls.__name__} is not a slots dataclass")
    if tuple(f.name for f in params) != names:
        raise TypeError(f"{cls.__name__}'s fields are not {names}: update the caller")
    args = ", ".join(f"v{i}" for i in range(len(params)))
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = [f"def make({args}):", "    obj = new(cls)"]
    for i, field in enumerate(params):
        scope[f"set{i}"] = getattr(cls, field.name).__set__
        lines.append(f"    set{i}(obj, v{i})")
    lines.append("    return obj")
    exec("\n".join(lines), scope)  # the code is made from field positions only
    make: Callable[..., T] = scope["make"]
    make.__doc__ = f"A {cls.__name__} from all its fields, in order: {names}"
    return make
