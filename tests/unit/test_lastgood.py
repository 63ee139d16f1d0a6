"""LastGoodStore: the persisted last-known-good documents (atomic, 0600, bounded, forgiving)."""

from __future__ import annotations

import json
from pathlib import Path

from meshagent.agent.lastgood import LastGoodStore
from meshagent.model.source import Provenance, RawResource


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
