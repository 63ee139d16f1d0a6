"""LastGoodStore: the persisted last-known-good documents (atomic, 0600, bounded, forgiving)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from meshagent.agent import lastgood
from meshagent.agent.lastgood import Key, LastGoodKeeper, LastGoodStore
from meshagent.model.source import Provenance, RawResource, SourceEvent
from tests.polling import async_wait_for

DEADLINE_S = 10.0


def resource(name: str, body_extra: object = None) -> RawResource:
    body = {"kind": "ServiceEntry", "metadata": {"name": name}, "spec": {"x": body_extra}}
    return RawResource(
        "files", "ServiceEntry", "networking.istio.io/v1", "prod", name, body,
        Provenance("files", f"/mesh/{name}.yaml:3", "ServiceEntry", "prod", name),
    )  # fmt: skip


def test_saved_resources_load_back_equal(tmp_path: Path) -> None:
    store = LastGoodStore(tmp_path / "state" / "last-good.json")
    saved = [resource("b", [1, 2.5, None, True]), resource("a", {"k": "v"})]
    store.save(saved)
    loaded = store.load()
    assert sorted(loaded, key=lambda r: r.name) == sorted(saved, key=lambda r: r.name)
    assert loaded[0].provenance.ref == "ServiceEntry/prod/a"
    assert (tmp_path / "state" / "last-good.json").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["last-good.json"]  # no temp


def test_save_replaces_and_keeps_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "last-good.json"
    path.write_text("{}")
    path.chmod(0o644)
    store = LastGoodStore(path)
    store.save([resource("a")])
    store.save([resource("c")])
    assert [r.name for r in store.load()] == ["c"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_unusable_files_load_as_nothing(tmp_path: Path) -> None:
    path = tmp_path / "last-good.json"
    store = LastGoodStore(path)
    assert store.load() == []  # absent
    for text in ("not json", "[]", '{"format": 99, "resources": []}', '{"format": 1}'):
        path.write_text(text)
        assert store.load() == [], text
    good = json.loads(_saved_text(tmp_path))
    good["resources"][0]["name"] = 5
    path.write_text(json.dumps(good))
    assert store.load() == []


def test_size_is_bounded_on_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "last-good.json"
    LastGoodStore(path).save([resource("a")])
    small = LastGoodStore(path, max_bytes=100)
    assert small.load() == []  # too large to trust: ignored
    small.save([resource("a"), resource("b")])
    assert not path.exists()  # not left stale


def test_values_json_cannot_carry_are_left_out(tmp_path: Path) -> None:
    store = LastGoodStore(tmp_path / "last-good.json")
    store.save([resource("bin", b"\x00\x01"), resource("ok")])
    assert [r.name for r in store.load()] == ["ok"]


def _saved_text(tmp_path: Path) -> str:
    path = tmp_path / "other.json"
    LastGoodStore(path).save([resource("a")])
    return path.read_text()


class _CountingBody(dict[str, Any]):
    """A body that records its name each time JSON encoding reads it."""

    def __init__(self, name: str, body: dict[str, Any], seen: list[str]) -> None:
        super().__init__(body)
        self.name, self.seen = name, seen

    def items(self) -> Any:  # what json's encoder calls for a dict subclass
        self.seen.append(self.name)
        return super().items()


def test_a_save_encodes_only_the_resources_that_changed(tmp_path: Path) -> None:
    encoded: list[str] = []

    def counted(name: str, body_extra: object = None) -> RawResource:
        raw = resource(name, body_extra)
        return dataclasses.replace(raw, body=_CountingBody(name, raw.body, encoded))

    store = LastGoodStore(tmp_path / "last-good.json")
    a, b, c = counted("a"), counted("b"), counted("c")
    store.save([a, b, c])
    assert sorted(encoded) == ["a", "b", "c"]
    encoded.clear()
    b2 = counted("b", "changed")
    store.save([a, b2, c])
    assert encoded == ["b"]  # a and c: the text kept from the last save
    assert {r.name: r.body for r in store.load()} == {"a": a.body, "b": b2.body, "c": c.body}


class _CountingStore(LastGoodStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.saves: list[tuple[float, list[str]]] = []

    def save(
        self,
        resources: Iterable[RawResource] | Mapping[Key, RawResource],
        changed: Collection[Key] | None = None,
    ) -> None:
        listed = resources.values() if isinstance(resources, Mapping) else resources
        names = sorted(r.name for r in listed)
        self.saves.append((time.monotonic(), names))
        super().save(resources, changed)


def _remember(keeper: LastGoodKeeper, *raws: RawResource) -> None:
    accepted = {r.key: r for r in raws}
    keeper.remember(
        lambda keys: {k: accepted.get(k) for k in keys},
        [SourceEvent("files", upserts=raws)],
        lambda: True,
    )


async def test_a_burst_of_changes_is_one_save_after_the_delay(tmp_path: Path) -> None:
    store = _CountingStore(tmp_path / "last-good.json")
    keeper = LastGoodKeeper(store, lambda _: None, delay=0.3)
    started = time.monotonic()
    for i in range(5):
        _remember(keeper, resource(f"r{i}"))
        await asyncio.sleep(0)  # (the loop runs between changes, as in the daemon)
    await async_wait_for(lambda: store.saves, timeout=DEADLINE_S)
    [(at, names)] = store.saves  # one save for the burst, with all of it
    assert names == [f"r{i}" for i in range(5)]
    assert at - started >= 0.3  # not while the changes are published
    assert [r.name for r in store.load()] == names


async def test_stop_writes_a_pending_save_at_once(tmp_path: Path) -> None:
    store = _CountingStore(tmp_path / "last-good.json")
    keeper = LastGoodKeeper(store, lambda _: None, delay=3600)
    _remember(keeper, resource("a"))
    await asyncio.wait_for(keeper.saved_all(), timeout=DEADLINE_S)
    assert [r.name for r in store.load()] == ["a"]


def test_a_save_after_changes_writes_what_a_fresh_store_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a store that saved (and keeps the order and the text of) seven resources, in
    # blocks of two
    monkeypatch.setattr(lastgood, "SAVE_BATCH", 2)
    store = LastGoodStore(tmp_path / "kept.json")
    current = {r.key: r for r in (resource(n) for n in "gfedcba")}
    store.save(current)
    changes = [
        {"c": resource("c", {"k": "changed"})},  # same keys, one changed: one block again
        {"a": resource("a", [2]), "g": resource("g", [3])},  # the first and the last block
        {"b": resource("b", b"\x00")},  # not JSON: left out
        {"f": resource("f")},  # a key added
        {"a": None},  # a key removed
        {"b": resource("b", [1]), "h": resource("h"), "e": None},
        {"d": resource("d", [4])},
    ]
    for change in changes:
        # when resources change and it saves again, told which keys changed
        keys = set()
        for name, raw in change.items():
            key = resource(name).key
            keys.add(key)
            if raw is None:
                current.pop(key)
            else:
                current[key] = raw
        store.save(current, keys)
        # then its file is what a store that never saved before writes, in key order
        fresh = LastGoodStore(tmp_path / "fresh.json")
        fresh.save(list(current.values()))
        kept_text = (tmp_path / "kept.json").read_bytes()
        assert kept_text == (tmp_path / "fresh.json").read_bytes()
        json.loads(kept_text)


def test_a_save_told_the_changed_keys_encodes_only_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lastgood, "SAVE_BATCH", 2)
    encoded: list[str] = []

    def counted(name: str, body_extra: object = None) -> RawResource:
        raw = resource(name, body_extra)
        return dataclasses.replace(raw, body=_CountingBody(name, raw.body, encoded))

    # given five resources saved (in blocks of two)
    store = LastGoodStore(tmp_path / "last-good.json")
    current = {r.key: r for r in (counted(n) for n in "abcde")}
    store.save(current)
    encoded.clear()
    # when one changes and the store is told which
    c2 = counted("c", "changed")
    current[c2.key] = c2
    store.save(current, {c2.key})
    # then only it is encoded again, and the file has it
    assert encoded == ["c"]
    assert {r.name: r.body for r in store.load()}["c"] == c2.body


def test_a_save_keeps_one_text_per_resource_not_a_joined_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a store that saved five resources in blocks of two
    monkeypatch.setattr(lastgood, "SAVE_BATCH", 2)
    store = LastGoodStore(tmp_path / "last-good.json")
    store.save([resource(n) for n in "abcde"])
    # then the bytes it keeps between saves are the resources' texts, once (the joined blocks
    # of the file were a second copy of the mesh's text, ~10 MB at 10k services)
    file_size = (tmp_path / "last-good.json").stat().st_size
    kept = [v for v in vars(store).values() if isinstance(v, (bytes, list, dict))]
    kept_bytes = sum(len(b) for b in _bytes_in(kept))
    assert kept_bytes < file_size


def _bytes_in(value: object) -> Iterable[bytes]:
    if isinstance(value, bytes):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _bytes_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _bytes_in(item)


class _FailingBody(dict[str, Any]):
    """A body whose encoding fails with an error the store does not expect."""

    def items(self) -> Any:
        raise RuntimeError("boom")


def test_a_save_that_fails_midway_leaves_the_next_save_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a store that saved five resources in blocks of two
    monkeypatch.setattr(lastgood, "SAVE_BATCH", 2)
    store = LastGoodStore(tmp_path / "kept.json")
    current = {r.key: r for r in (resource(n) for n in "abcde")}
    store.save(current)
    # when a save fails while encoding a changed resource (after another block was made)
    a2, d2 = resource("a", [1]), resource("d")
    d2 = dataclasses.replace(d2, body=_FailingBody(d2.body))
    current.update({a2.key: a2, d2.key: d2})
    with pytest.raises(RuntimeError):
        store.save(current, {a2.key, d2.key})
    # then the next save (told only of what changed since) writes what a fresh store writes
    d3 = resource("d", [3])
    current[d3.key] = d3
    store.save(current, {d3.key})
    fresh = LastGoodStore(tmp_path / "fresh.json")
    fresh.save(list(current.values()))
    assert (tmp_path / "kept.json").read_bytes() == (tmp_path / "fresh.json").read_bytes()


async def test_a_resource_added_and_removed_within_one_save_delay_leaves_the_save_right(
    tmp_path: Path,
) -> None:
    # given a keeper that saved two resources
    store = LastGoodStore(tmp_path / "last-good.json")
    keeper = LastGoodKeeper(store, lambda _: None, delay=0.05)
    a, b = resource("a"), resource("b")
    accepted: dict[Key, RawResource] = {}

    def change(*upserts: RawResource, deletes: tuple[Key, ...] = ()) -> None:
        accepted.update((r.key, r) for r in upserts)
        for key in deletes:
            accepted.pop(key, None)
        event = SourceEvent("files", upserts=upserts, deletes=deletes)
        keeper.remember(lambda keys: {k: accepted.get(k) for k in keys}, [event], lambda: True)

    change(a, b)
    await async_wait_for(lambda: len(store.load()) == 2, timeout=DEADLINE_S)
    # when, before the next save, one changes and another is added and removed again
    a2, c = resource("a", "v2"), resource("c")
    change(a2)
    change(c)
    change(deletes=(c.key,))
    await asyncio.wait_for(keeper.saved_all(), timeout=DEADLINE_S)
    # then the file holds what serves (the restart restores it), as a fresh store writes it
    assert {r.name: r.body for r in store.load()} == {"a": a2.body, "b": b.body}


def test_load_at_start_removes_what_saves_cut_short_by_a_crash_left(tmp_path: Path) -> None:
    # given a saved file and the temporary files of two saves a crash cut short
    store = LastGoodStore(tmp_path / "last-good.json")
    store.save([resource("a")])
    for pid in (101, 202):
        (tmp_path / f".last-good.json.{pid}.tmp").write_bytes(b'{"format":1,"resources":[')
    (tmp_path / "other.tmp").write_text("not ours")
    # when the agent starts and loads it
    loaded = LastGoodStore(tmp_path / "last-good.json").load()
    # then what was saved loads, and the leftovers are gone (a crash loop must not fill the
    # state dir with copies of the mesh)
    assert [r.name for r in loaded] == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-good.json", "other.tmp"]
