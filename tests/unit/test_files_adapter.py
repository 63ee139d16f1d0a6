"""FilesAdapter: listing, changes, debounce, editors' renames, last-known-good, recursion."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from meshagent.adapters.files import FilesAdapter, find_config_files
from meshagent.model.source import Diagnostic, Provenance, RawResource, SourceEvent

DEADLINE_S = 5.0


def fake_loader(text: str, path: str) -> tuple[list[RawResource], list[Diagnostic]]:
    """A stand-in for yamldocs.load_documents: one RawResource per document."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        return [], [Diagnostic("error", "files", f"{path}:1", "", "", "", f"YAML: {exc}")]
    out = []
    for doc in docs:
        meta = doc.get("metadata", {})
        ns, name, kind = meta.get("namespace", "default"), meta["name"], doc["kind"]
        out.append(
            RawResource(
                "files", kind, doc.get("apiVersion", "v1"), ns, name, doc,
                Provenance("files", f"{path}:1", kind, ns, name),
            )
        )  # fmt: skip
    return out, []


def doc(name: str, value: int = 1, kind: str = "ServiceEntry") -> str:
    return f"kind: {kind}\nmetadata: {{name: {name}}}\nspec: {{value: {value}}}\n---\n"


def adapter(*paths: Path, debounce_ms: int = 100) -> FilesAdapter:
    return FilesAdapter(
        list(paths), debounce_ms=debounce_ms, poll_interval_ms=20, loader=fake_loader
    )


async def next_event(it: AsyncIterator[SourceEvent], timeout: float = DEADLINE_S) -> SourceEvent:
    return await asyncio.wait_for(anext(it), timeout)


def names(resources: tuple[RawResource, ...]) -> list[str]:
    return sorted(r.name for r in resources)


async def test_first_listing_is_synced_and_recursive(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "a.yaml").write_text(doc("a"))
    (tmp_path / "sub" / "deeper" / "b.yml").write_text(doc("b"))
    (tmp_path / "notes.txt").write_text(doc("ignored"))
    (tmp_path / ".hidden.yaml").write_text(doc("hidden"))
    (tmp_path / "c.yaml~").write_text(doc("backup"))

    async with adapter(tmp_path) as files:
        event = await next_event(files.watch())

    assert event.synced
    assert names(event.upserts) == ["a", "b"]
    assert event.deletes == ()


async def test_missing_path_gives_empty_synced_listing_then_picks_up_file(tmp_path: Path) -> None:
    target = tmp_path / "later.yaml"
    async with adapter(target) as files:
        it = files.watch()
        first = await next_event(it)
        target.write_text(doc("late"))
        second = await next_event(it)

    assert first.synced and first.upserts == ()
    assert names(second.upserts) == ["late"]


async def test_add_change_delete(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(doc("a") + doc("keep"))
    async with adapter(tmp_path) as files:
        it = files.watch()
        await next_event(it)

        (tmp_path / "b.yaml").write_text(doc("b"))
        added = await next_event(it)
        (tmp_path / "a.yaml").write_text(doc("a", value=2) + doc("keep"))
        changed = await next_event(it)
        (tmp_path / "b.yaml").unlink()
        deleted = await next_event(it)

    assert names(added.upserts) == ["b"] and added.deletes == ()
    assert names(changed.upserts) == ["a"]  # "keep" did not change, so it is not resent
    assert changed.upserts[0].body["spec"]["value"] == 2
    assert deleted.upserts == ()
    assert deleted.deletes == (("files", "ServiceEntry", "default", "b"),)


async def test_burst_of_writes_is_one_event(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(doc("a"))
    async with adapter(tmp_path, debounce_ms=400) as files:
        it = files.watch()
        await next_event(it)
        for value in range(2, 8):
            path.write_text(doc("a", value=value) + doc(f"extra{value}"))
            await asyncio.sleep(0.03)  # pacing the writes, not synchronization
        event = await next_event(it)
        with pytest.raises(TimeoutError):
            await next_event(it, timeout=0.8)

    assert names(event.upserts) == ["a", "extra7"]
    assert event.upserts[0].body["spec"]["value"] == 7


async def test_atomic_replace_never_deletes(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(doc("a"))
    async with adapter(tmp_path, debounce_ms=50) as files:
        it = files.watch()
        await next_event(it)
        for value in range(2, 6):
            tmp = tmp_path / f".a.yaml.tmp{value}"
            tmp.write_text(doc("a", value=value))
            os.replace(tmp, path)
            event = await next_event(it)
            assert event.deletes == ()
            assert event.upserts[0].body["spec"]["value"] == value


async def test_vim_style_backup_and_rename_does_not_delete(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(doc("a"))
    async with adapter(tmp_path, debounce_ms=300) as files:
        it = files.watch()
        await next_event(it)
        os.rename(path, tmp_path / "a.yaml~")  # the file is missing for a moment
        await asyncio.sleep(0.05)
        path.write_text(doc("a", value=9))
        (tmp_path / "a.yaml~").unlink()
        event = await next_event(it)

    assert event.deletes == ()
    assert event.upserts[0].body["spec"]["value"] == 9


async def test_parse_error_keeps_last_good_resources(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(doc("a"))
    async with adapter(tmp_path) as files:
        it = files.watch()
        await next_event(it)
        path.write_text("kind: [unclosed\n")
        broken = await next_event(it)
        path.write_text(doc("a", value=3))
        fixed = await next_event(it)

    assert broken.errors and broken.errors[0].severity == "error"
    assert broken.deletes == () and broken.upserts == ()
    assert fixed.deletes == () and fixed.upserts[0].body["spec"]["value"] == 3


async def test_resource_moved_between_files_is_not_deleted(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(doc("moving") + doc("stays"))
    async with adapter(tmp_path, debounce_ms=300) as files:
        it = files.watch()
        await next_event(it)
        (tmp_path / "b.yaml").write_text(doc("moving"))
        (tmp_path / "a.yaml").write_text(doc("stays"))
        event = await next_event(it)

    assert event.deletes == ()
    assert [r.provenance.location for r in event.upserts] == [f"{tmp_path / 'b.yaml'}:1"]


async def test_duplicate_resource_warns_and_first_file_wins(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(doc("dup", value=1))
    (tmp_path / "b.yaml").write_text(doc("dup", value=2))
    async with adapter(tmp_path) as files:
        event = await next_event(files.watch())

    assert [r.body["spec"]["value"] for r in event.upserts] == [1]
    assert [d.severity for d in event.errors] == ["warning"]


async def test_watch_ends_on_context_exit(tmp_path: Path) -> None:
    files = adapter(tmp_path)
    async with files:
        it = files.watch()
        await next_event(it)
        pending = asyncio.ensure_future(anext(it))
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, DEADLINE_S)


def test_find_config_files_accepts_explicit_files(tmp_path: Path) -> None:
    explicit = tmp_path / "mesh.conf"
    explicit.write_text("x")
    assert find_config_files([explicit, tmp_path / "missing"]) == [explicit]
