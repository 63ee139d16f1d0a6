"""meshagent/construct.py: positional constructors make the very objects the dataclass would."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from meshagent.construct import slots_constructor
from meshagent.model import Endpoint, Provenance
from meshagent.xds.resources import Resource


def test_objects_equal_the_dataclass_ones_and_stay_frozen() -> None:
    make = slots_constructor(Provenance, "source", "location", "kind", "namespace", "name")
    made = make("files", "a.yaml:3", "ServiceEntry", "ns", "web")
    assert made == Provenance("files", "a.yaml:3", "ServiceEntry", "ns", "web")
    assert hash(made) == hash(Provenance("files", "a.yaml:3", "ServiceEntry", "ns", "web"))
    with pytest.raises(AttributeError):
        made.name = "other"  # type: ignore[misc]
    resource = Resource.from_value("c", "type.googleapis.com/x.Y", b"\x08\x01")
    assert resource == Resource(resource.name, resource.version, resource.type_url, b"\x08\x01")
    assert resource.body.value == b"\x08\x01"  # the init=False field was set (to None) too


def test_a_changed_field_order_is_refused() -> None:
    with pytest.raises(TypeError, match="update the caller"):
        slots_constructor(Endpoint, "ports", "address")

    @dataclass(frozen=True)
    class NoSlots:
        a: int = 0
        b: list[int] = field(default_factory=list)

    with pytest.raises(TypeError, match="not a slots dataclass"):
        slots_constructor(NoSlots, "a", "b")
