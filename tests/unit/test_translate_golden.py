"""Golden-file tests of the translator: NN-name.input.yaml in, NN-name.golden.yaml out.

After a reviewed change of the output, regenerate with `pytest --update-golden`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from meshagent.xds.translate import Translator, generate
from tests.unit.translate_inputs import load_case, resources_as_dict

TESTDATA = Path(__file__).parent / "testdata" / "translate"
CASES = sorted(TESTDATA.glob("*.input.yaml"))


def _golden_path(case: Path) -> Path:
    return case.with_name(case.name.replace(".input.yaml", ".golden.yaml"))


def _render(case: Path) -> str:
    snapshot, proxy = load_case(case)
    return yaml.safe_dump(resources_as_dict(generate(snapshot, proxy)), sort_keys=True, width=100)


@pytest.mark.parametrize("case", CASES, ids=[c.name.split(".")[0] for c in CASES])
def test_generate_matches_golden(case: Path, request: pytest.FixtureRequest) -> None:
    # given an input document, when it is translated, then the output is the reviewed one
    actual = _render(case)
    golden = _golden_path(case)
    if request.config.getoption("--update-golden"):
        golden.write_text(actual)
    assert golden.exists(), f"missing {golden.name}: run pytest --update-golden"
    assert actual == golden.read_text()


@pytest.mark.parametrize("case", CASES, ids=[c.name.split(".")[0] for c in CASES])
def test_generate_is_deterministic(case: Path) -> None:
    # given the same input twice (fresh and cached translators), the bytes are the same
    snapshot, proxy = load_case(case)
    first = generate(snapshot, proxy)
    again_snapshot, again_proxy = load_case(case)
    translator = Translator()
    translator.generate(again_snapshot, again_proxy)
    second = translator.generate(again_snapshot, again_proxy)
    assert first.by_type.keys() == second.by_type.keys()
    for type_url, group in first.by_type.items():
        other = second.of(type_url)
        assert list(group) == list(other)
        for name, resource in group.items():
            assert resource.body.SerializeToString(deterministic=True) == (
                other[name].body.SerializeToString(deterministic=True)
            )
            assert resource.version == other[name].version


def _deprecated_fields(message: Message, path: str) -> Iterator[str]:
    """Paths of every deprecated field set anywhere in message, looking inside Any too."""
    if isinstance(message, any_pb2.Any):
        descriptor = descriptor_pool.Default().FindMessageTypeByName(message.TypeName())
        inner = message_factory.GetMessageClass(descriptor)()
        message.Unpack(inner)
        yield from _deprecated_fields(inner, path)
        return
    for field, value in message.ListFields():
        here = f"{path}.{field.name}"
        if field.GetOptions().deprecated:
            yield here
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = (
                value.values() if field.message_type.fields_by_name["value"].message_type else []
            )
            for item in items:
                yield from _deprecated_fields(item, here)
        elif field.is_repeated:
            for item in value:
                yield from _deprecated_fields(item, here)
        else:
            yield from _deprecated_fields(value, here)


@pytest.mark.parametrize("case", CASES, ids=[c.name.split(".")[0] for c in CASES])
def test_generated_config_uses_no_deprecated_field(case: Path) -> None:
    # given any input, no generated resource sets a field Envoy marks deprecated
    snapshot, proxy = load_case(case)
    found = [
        p
        for group in generate(snapshot, proxy).by_type.values()
        for name, resource in group.items()
        for p in _deprecated_fields(resource.body, name)
    ]
    assert found == []
