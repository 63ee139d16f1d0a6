"""FilesAdapter: listing, changes, debounce, editors' renames, last-known-good, recursion."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml

from meshagent.adapters.files import FilesAdapter, find_config_files
from meshagent.adapters.inotify import Inotify
from meshagent.model.source import Diagnostic, Provenance, RawResource, SourceEvent

DEADLINE_S = 5.0


@pytest.fixture(autouse=True, params=["inotify", "polling"])
def notification(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with inotify (where the platform has it) and with polling only."""
    if request.param == "polling":
        monkeypatch.setattr(Inotify, "open", classmethod(lambda cls: None))
    return str(request.param)


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


def _replace(target: Path, text: str) -> None:
    """Write `text` to `target` by a rename into place."""
    tmp = target.with_name(".mesh.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def _fresh_read(directory: Path) -> tuple[FilesAdapter, SourceEvent]:
    """What a newly started adapter reads of `directory`: the adapter and its first event."""
    fresh = FilesAdapter([directory])
    return fresh, fresh._process(fresh._scan())


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


async def test_missing_path_is_unavailable_then_picked_up(tmp_path: Path) -> None:
    target = tmp_path / "later.yaml"
    async with adapter(target) as files:
        it = files.watch()
        first = await next_event(it)
        target.write_text(doc("late"))
        second = await next_event(it)

    assert first.synced and first.upserts == ()
    assert first.unavailable == (f"{target} does not exist",)
    assert [(d.severity, d.location) for d in first.errors] == [("error", str(target))]
    assert names(second.upserts) == ["late"] and second.unavailable == ()


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


async def test_duplicate_resource_is_an_error_and_first_file_wins(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(doc("dup", value=1))
    (tmp_path / "b.yaml").write_text(doc("dup", value=2))
    async with adapter(tmp_path) as files:
        event = await next_event(files.watch())

    assert [r.body["spec"]["value"] for r in event.upserts] == [1]
    [error] = event.errors
    assert error.severity == "error" and error.location == f"{tmp_path / 'b.yaml'}:1"
    assert f"duplicate of the resource at {tmp_path / 'a.yaml'}:1" in error.reason


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


# --- a configured path that is missing is a source error, not an empty directory -----------


async def test_directory_renamed_away_keeps_serving_until_it_is_back(tmp_path: Path) -> None:
    # given a configured directory with two files
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "a.yaml").write_text(doc("a"))
    (mesh / "b.yaml").write_text(doc("b"))
    async with adapter(mesh, debounce_ms=50) as files:
        it = files.watch()
        await next_event(it)
        # when a tool renames it away (to replace it)
        mesh.rename(tmp_path / "mesh.old")
        gone = await next_event(it)
        # then comes back with a changed a.yaml and without b.yaml
        mesh.mkdir()
        (mesh / "a.yaml").write_text(doc("a", value=2))
        back = await next_event(it)

    # then nothing was deleted while it was missing, and the path was named
    assert gone.upserts == () and gone.deletes == ()
    assert gone.unavailable == (f"{mesh} does not exist",)
    assert "keeps serving" in gone.errors[0].reason and gone.errors[0].location == str(mesh)
    # and once back, it was diffed against what was served
    assert back.unavailable == ()
    assert names(back.upserts) == ["a"] and back.upserts[0].body["spec"]["value"] == 2
    assert back.deletes == (("files", "ServiceEntry", "default", "b"),)


async def test_missing_path_does_not_hold_back_other_paths(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.yaml").write_text(doc("a"))
    async with adapter(tmp_path / "one", tmp_path / "typo") as files:
        it = files.watch()
        first = await next_event(it)
        (tmp_path / "one" / "a.yaml").unlink()
        deleted = await next_event(it)

    assert names(first.upserts) == ["a"] and first.unavailable == (
        f"{tmp_path / 'typo'} does not exist",
    )
    assert deleted.deletes == (("files", "ServiceEntry", "default", "a"),)
    assert deleted.errors == ()  # the missing path is reported once, not on every event


# --- documents whose identity cannot be read, duplicates, and oversized files ---------------

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: {namespace}
spec:
  hosts: [reviews]
"""


async def test_unreadable_identity_keeps_the_resources_of_the_file(tmp_path: Path) -> None:
    # given a real-loader adapter serving a VirtualService in prod
    path = tmp_path / "vs.yaml"
    path.write_text(VS.format(namespace="prod"))
    files_ = FilesAdapter([tmp_path], debounce_ms=50, poll_interval_ms=20)
    async with files_ as files:
        it = files.watch()
        first = await next_event(it)
        # when its namespace becomes a number
        path.write_text(VS.format(namespace="5"))
        broken = await next_event(it)
        path.write_text(VS.format(namespace="Not_A_Name"))
        invalid = await next_event(it)

    assert [r.key for r in first.upserts] == [("files", "VirtualService", "prod", "reviews")]
    # then it is an error located at the field, and the served resource is not deleted
    assert broken.deletes == () and broken.upserts == ()
    assert [(d.location, d.severity) for d in broken.errors] == [(f"{path}:5", "error")]
    assert "metadata.namespace must be a string" in broken.errors[0].reason
    assert invalid.deletes == () and "not a valid Kubernetes namespace" in invalid.errors[0].reason


async def test_same_resource_twice_in_one_file_first_wins(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(doc("x", value=1) + doc("x", value=2))
    async with adapter(tmp_path) as files:
        event = await next_event(files.watch())

    assert [r.body["spec"]["value"] for r in event.upserts] == [1]
    assert [d.severity for d in event.errors] == ["error"]
    assert "duplicate of the resource at" in event.errors[0].reason


BILLION_LAUGHS = (
    "apiVersion: v1\nkind: X\nmetadata: {name: lol}\nspec:\n  l0: &l0 [lol, lol]\n"
    + "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
)


async def test_billion_laughs_file_is_rejected_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("apiVersion: v1\nkind: X\nmetadata: {name: lol}\nspec: {}\n")
    async with FilesAdapter([tmp_path], debounce_ms=50, poll_interval_ms=20) as files:
        it = files.watch()
        await next_event(it)
        path.write_text(BILLION_LAUGHS)
        event = await next_event(it)

    assert event.upserts == () and event.deletes == ()
    assert "billion laughs" in event.errors[0].reason
    assert event.errors[0].location.startswith(f"{path}:")


# --- restore(): what the files served before a restart ---------------------------------------


def served(path: Path, name: str, value: int) -> RawResource:
    body = {"kind": "ServiceEntry", "metadata": {"name": name}, "spec": {"value": value}}
    return RawResource(
        "files", "ServiceEntry", "v1", "default", name, body,
        Provenance("files", f"{path}:1", "ServiceEntry", "default", name),
    )  # fmt: skip


async def test_restore_serves_the_previous_version_of_a_broken_file_only(tmp_path: Path) -> None:
    # given what three files served before a restart
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    broken, fine, deleted = mesh / "broken.yaml", mesh / "fine.yaml", mesh / "deleted.yaml"
    broken.write_text("kind: [unclosed\n")
    fine.write_text(doc("fine", value=2))
    files = adapter(mesh)
    files.restore([served(broken, "b", 1), served(fine, "fine", 1), served(deleted, "d", 1)])
    # when the adapter starts with one file broken, one changed and one deleted
    async with files:
        it = files.watch()
        first = await next_event(it)
        # and later a file appears at the deleted one's path, broken
        deleted.write_text("kind: [unclosed\n")
        later = await next_event(it)

    # then the broken file serves its previous version; the deleted one is not resurrected
    assert {r.name: r.body["spec"]["value"] for r in first.upserts} == {"b": 1, "fine": 2}
    assert first.deletes == (("files", "ServiceEntry", "default", "d"),)
    assert later.upserts == () and later.errors


async def test_restore_serves_the_previous_resources_of_a_missing_path(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh"
    files = adapter(mesh, tmp_path / "other")
    files.restore([served(mesh / "a.yaml", "a", 1), served(tmp_path / "gone.yaml", "g", 1)])
    async with files:
        it = files.watch()
        first = await next_event(it)
        mesh.mkdir()
        back = await next_event(it)

    # (gone.yaml is under no configured path: the agent, not the adapter, decides about it)
    assert names(first.upserts) == ["a"] and len(first.unavailable) == 2
    assert first.deletes == ()
    assert back.deletes == (("files", "ServiceEntry", "default", "a"),)


async def test_duplicate_error_is_the_copys_file_and_is_fixed_when_it_goes(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(doc("dup", value=1))
    (tmp_path / "b.yaml").write_text(doc("dup", value=2) + doc("other"))
    async with adapter(tmp_path) as files:
        it = files.watch()
        first = await next_event(it)
        (tmp_path / "b.yaml").write_text(doc("other", value=2))
        gone = await next_event(it)

    [error] = first.errors
    assert (error.kind, error.name) == ("", "")  # the copy's file: nothing of the resource's
    assert error.reason.startswith("ServiceEntry/default/dup: duplicate of the resource at")
    assert gone.errors == () and gone.fixed == (str(tmp_path / "b.yaml"),)


async def test_duplicate_in_a_new_file_does_not_take_over(tmp_path: Path) -> None:
    # given b.yaml serving "dup"
    (tmp_path / "b.yaml").write_text(doc("dup", value=1))
    async with adapter(tmp_path) as files:
        it = files.watch()
        await next_event(it)
        # when a.yaml (sorted first) defines it too
        (tmp_path / "a.yaml").write_text(doc("dup", value=2))
        event = await next_event(it)

    # then the one serving keeps serving; the newcomer is the located duplicate
    assert event.upserts == () and event.deletes == ()
    [error] = event.errors
    assert error.location == f"{tmp_path / 'a.yaml'}:1"
    assert f"duplicate of the resource at {tmp_path / 'b.yaml'}:1" in error.reason


async def test_default_path_need_not_exist_but_may_not_vanish(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh"
    files = FilesAdapter([mesh], debounce_ms=20, poll_interval_ms=20, loader=fake_loader,
                         missing_ok=True)  # fmt: skip
    async with files:
        it = files.watch()
        first = await next_event(it)
        mesh.mkdir()
        (mesh / "a.yaml").write_text(doc("a"))
        created = await next_event(it)
        mesh.rename(tmp_path / "mesh.old")
        gone = await next_event(it)

    assert first.unavailable == () and first.errors == ()
    assert names(created.upserts) == ["a"]
    assert gone.deletes == () and gone.unavailable == (f"{mesh} does not exist",)


async def test_no_namespace_and_the_default_one_are_the_same_resource(tmp_path: Path) -> None:
    explicit = "kind: ServiceEntry\nmetadata: {name: x, namespace: default}\nspec: {value: 1}\n"
    implicit = "kind: ServiceEntry\nmetadata: {name: x, namespace: ''}\nspec: {value: 2}\n"
    (tmp_path / "a.yaml").write_text(explicit)
    (tmp_path / "b.yaml").write_text(implicit)
    files = FilesAdapter([tmp_path], debounce_ms=20, poll_interval_ms=20, loader=fake_loader,
                         default_namespace="default")  # fmt: skip
    async with files:
        event = await next_event(files.watch())

    assert [r.body["spec"]["value"] for r in event.upserts] == [1]
    assert [d.location for d in event.errors] == [f"{tmp_path / 'b.yaml'}:1"]


async def test_a_typo_in_an_istio_kind_keeps_what_the_file_served(tmp_path: Path) -> None:
    from meshagent.agent.daemon import mesh_file_loader  # the agent's loader for mesh files

    path = tmp_path / "vs.yaml"
    path.write_text(VS.format(namespace="prod"))
    files_ = FilesAdapter([tmp_path], debounce_ms=50, poll_interval_ms=20, loader=mesh_file_loader)
    async with files_ as files:
        it = files.watch()
        await next_event(it)
        path.write_text(VS.format(namespace="prod").replace("VirtualService", "VirtualServise"))
        typo = await next_event(it)

    assert typo.upserts == () and typo.deletes == ()
    [error] = typo.errors
    assert error.severity == "error" and error.location == f"{path}:2"
    assert "unknown kind 'VirtualServise' in networking.istio.io" in error.reason
    assert "did you mean VirtualService?" in error.reason


# --- the merged view is kept incrementally ---------------------------------------------------


@pytest.mark.parametrize("real", [False, True], ids=["fake-loader", "yamldocs"])
def test_incremental_view_matches_a_fresh_listing_after_random_changes(
    tmp_path: Path, real: bool
) -> None:
    """Only changed files are merged on each change; what has been emitted so far must always
    be what a fresh adapter lists (a duplicate may be served from either file defining it).
    With yamldocs, unchanged documents are reused as the very same objects."""
    import random

    def make() -> FilesAdapter:
        return FilesAdapter([tmp_path]) if real else adapter(tmp_path)

    def text(name: str, value: int) -> str:
        return _entry(name, f"10.0.0.{value}") + "---\n" if real else doc(name, value)

    rng = random.Random(17)
    files = [tmp_path / f"f{i}.yaml" for i in range(4)]
    live = make()
    served: dict[tuple[str, str, str, str], RawResource] = {}
    for step in range(150):
        target = rng.choice(files)
        if rng.random() < 0.2:
            target.unlink(missing_ok=True)
        else:
            chosen = rng.sample(range(6), rng.randint(0, 3))
            tmp = target.with_name(".tmp.yaml")
            tmp.write_text("".join(text(f"r{n}", rng.randint(1, 3)) for n in chosen))
            os.replace(tmp, target)
        event = live._process(live._scan())
        for key in event.deletes:
            served.pop(key, None)
        served.update((raw.key, raw) for raw in event.upserts)
        fresh = make()
        listing = {raw.key: raw for raw in fresh._process(fresh._scan()).upserts}
        assert served.keys() == listing.keys(), f"step {step}"
        for key, raw in served.items():
            definers = [f for f in files if f.exists() and f"name: {key[3]}" in f.read_text()]
            if len(definers) <= 1:
                assert raw == listing[key], f"step {step}: {key}"


def test_one_change_looks_at_the_changed_file_only(tmp_path: Path) -> None:
    """A change in a small file next to a big one costs the small file, not the mesh."""
    (tmp_path / "big.yaml").write_text("".join(doc(f"big{i}") for i in range(1000)))
    small = tmp_path / "small.yaml"
    small.write_text(doc("small", 1))
    files = adapter(tmp_path)
    files._process(files._scan())
    calls = 0
    ident = files._ident

    def counting(key: tuple[str, str, str, str]) -> tuple[str, str, str]:
        nonlocal calls
        calls += 1
        return ident(key)

    files._ident = counting  # type: ignore[method-assign]
    tmp = tmp_path / ".small.tmp"
    tmp.write_text(doc("small", 2))
    os.replace(tmp, small)
    event = files._process(files._scan())

    assert names(event.upserts) == ["small"]
    assert calls < 20


# --- only the documents whose text changed are read again ------------------------------------


def _entry(name: str, address: str, extra_lines: int = 0) -> str:
    labels = "".join(f"    l{i}: v{i}\n" for i in range(extra_lines))
    return (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        f"metadata:\n  name: {name}\n  namespace: ns\nspec:\n  address: {address}\n"
        f"  labels:\n    app: {name}\n{labels}"
    )


def test_reread_documents_match_a_whole_read_after_random_edits(tmp_path: Path) -> None:
    """Documents re-read alone are located where a whole read puts them (lines, locations)."""
    import random

    from meshagent.adapters.files import FilesAdapter

    rng = random.Random(17)
    target = tmp_path / "mesh.yaml"
    entries = [_entry(f"e{i}", f"10.0.0.{i}") for i in range(12)]
    live = FilesAdapter([tmp_path])
    for step in range(80):
        action = rng.random()
        index = rng.randrange(len(entries))
        if action < 0.5:
            entries[index] = _entry(f"e{index}", f"10.0.{step}.{index}")
        elif action < 0.8:
            entries[index] = _entry(f"e{index}", f"10.1.0.{index}", rng.randint(0, 3))
        elif action < 0.9:
            entries[index] = "kind: [unclosed\n"  # a syntax error: nothing of the file is read
        else:
            entries[index] = f"# a comment\n{_entry(f'e{index}', '10.2.0.1')}"
        _replace(target, "---\n".join(entries))
        got = live._process(live._scan())
        fresh, want = _fresh_read(tmp_path)
        if "[unclosed" in "".join(entries):  # the last good resources keep serving
            assert got.errors and want.errors and got.errors[0].location == want.errors[0].location
            entries[index] = _entry(f"e{index}", "10.3.0.1")
            continue
        assert live._files[target].resources == fresh._files[target].resources, f"step {step}"


def _edit_one_document(
    tmp_path: Path, count: int, index: int, edit: Callable[[str], str]
) -> tuple[Path, SourceEvent, list[int]]:
    """A file of count WorkloadEntries read, then document index edited (an atomic rename):
    the file, the event of the edit and the lengths of the texts the reader was given."""
    target = tmp_path / "mesh.yaml"
    entries = [_entry(f"e{i}", f"10.0.0.{i % 250}") for i in range(count)]
    target.write_text("---\n".join(entries))
    read: list[int] = []

    def loader(text: str, path: str) -> tuple[list[RawResource], list[Diagnostic]]:
        from meshagent.adapters.yamldocs import load_documents

        read.append(len(text))
        return load_documents(text, path, source="files")

    files = FilesAdapter([tmp_path], loader=loader)
    files._process(files._scan())
    entries[index] = edit(entries[index])
    _replace(target, "---\n".join(entries))
    return target, files._process(files._scan()), read[1:]


def test_one_changed_document_is_read_alone(tmp_path: Path) -> None:
    new = _entry("e150", "10.9.9.9")
    target, event, read = _edit_one_document(tmp_path, 300, 150, lambda _: new)
    assert [(r.name, r.provenance.location) for r in event.upserts] == [
        ("e150", f"{target}:{150 * 10 + 1}")
    ]
    assert read == [len(new)]


async def test_inotify_notices_a_rename_without_waiting_for_the_poll(
    tmp_path: Path, notification: str
) -> None:
    if notification == "polling":
        pytest.skip("about inotify: nothing to check in the polling variant")
    if Inotify.open() is None:
        pytest.skip("needs inotify (Linux)")
    (tmp_path / "sub").mkdir()
    target = tmp_path / "sub" / "a.yaml"
    target.write_text(doc("a", 1))
    files = FilesAdapter([tmp_path], debounce_ms=0, poll_interval_ms=60_000, loader=fake_loader)
    async with files:
        it = files.watch()
        await next_event(it)
        tmp = tmp_path / "sub" / ".a.tmp"
        tmp.write_text(doc("a", 2))
        os.replace(tmp, target)
        changed = await next_event(it)  # well before the 60 s poll
        (tmp_path / "new").mkdir()  # a directory created later is watched too
        (tmp_path / "new" / "b.yaml").write_text(doc("b"))
        added = await next_event(it)

    assert [r.body["spec"]["value"] for r in changed.upserts] == [2]
    assert names(added.upserts) == ["b"]


async def test_inotify_ignores_a_busy_sibling_of_a_configured_file(
    tmp_path: Path, notification: str
) -> None:
    if notification == "polling":
        pytest.skip("about inotify: nothing to check in the polling variant")
    if Inotify.open() is None:
        pytest.skip("needs inotify (Linux)")
    target = tmp_path / "mesh.yaml"
    target.write_text(doc("a", 1))
    files = FilesAdapter([target], debounce_ms=0, poll_interval_ms=60_000, loader=fake_loader)
    scans = 0
    scan = files._scan

    def counting(rewatch: bool = False) -> object:
        nonlocal scans
        scans += 1
        return scan(rewatch)

    files._scan = counting  # type: ignore[assignment,method-assign]
    async with files:
        it = files.watch()
        await next_event(it)
        waiting = asyncio.ensure_future(next_event(it))  # the adapter watches meanwhile
        with (tmp_path / "app.log").open("a") as log:  # the parent directory is watched
            for i in range(20):
                log.write(f"line {i}\n")
                log.flush()
                await asyncio.sleep(0.005)
        target.write_text(doc("a", 2))
        changed = await waiting

    assert [r.body["spec"]["value"] for r in changed.upserts] == [2]
    assert scans <= 4  # the listing, the change (and its settling): not one per log line


def test_a_changed_document_with_aliases_is_read_with_its_whole_file(tmp_path: Path) -> None:
    # yamldocs bounds what aliases expand to per text it reads: a document read alone would
    # get a budget of its own, so a file edited document by document could outgrow the bound.
    # (An anchor on the same line, so that the other documents stay where they were.)
    def anchor(text: str) -> str:
        return text.replace("  address: 10.0.0.20", "  address: &a 10.0.0.20", 1)

    target, _, read = _edit_one_document(tmp_path, 40, 20, anchor)
    assert read == [target.stat().st_size]


async def test_a_reread_file_keeps_the_objects_of_its_unchanged_documents(tmp_path: Path) -> None:
    # The normalizer holds what was upserted first; a fresh equal copy in the adapter would
    # double the memory of every re-read file (issue 17: RSS under churn).
    # (the real reader: per-document re-reading needs its line numbers, which the fake lacks)
    (tmp_path / "a.yaml").write_text(_entry("a", "10.0.0.1") + "---\n" + _entry("keep", "10.0.0.2"))
    async with FilesAdapter([tmp_path], poll_interval_ms=20) as files:
        it = files.watch()
        [first_a, first_keep] = sorted((await next_event(it)).upserts, key=lambda r: r.name)
        (tmp_path / "a.yaml").write_text(
            _entry("a", "10.0.0.9") + "---\n" + _entry("keep", "10.0.0.2")
        )
        changed = await next_event(it)
        held = files._files[tmp_path / "a.yaml"].resources  # what the adapter keeps

    assert names(changed.upserts) == ["a"]
    assert held[first_keep.key] is first_keep
    assert held[first_a.key] is changed.upserts[0]


async def test_a_fifo_or_device_named_like_a_config_file_is_an_error_not_a_hang(
    tmp_path: Path,
) -> None:
    # a FIFO named *.yaml blocked the source's reader forever (no config change was seen
    # again), and a symlink to /dev/zero was read until memory ran out
    (tmp_path / "a.yaml").write_text(doc("a"))
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    (tmp_path / "zero.yaml").symlink_to("/dev/null")  # a device (a harmless one here)
    try:
        async with adapter(tmp_path) as files:
            event = await next_event(files.watch())
    finally:
        with contextlib.suppress(OSError):  # before the fix: let a blocked reader go
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert names(event.upserts) == ["a"]
    assert sorted((d.location, d.reason) for d in event.errors) == [
        (str(fifo), "cannot read: not a regular file"),
        (str(tmp_path / "zero.yaml"), "cannot read: not a regular file"),
    ]


def test_config_files_are_read_bounded_and_only_when_regular(tmp_path: Path) -> None:
    from meshagent.adapters.yamldocs import read_config_bytes

    with pytest.raises(OSError, match="not a regular file"):
        read_config_bytes("/dev/zero")  # never read: it has no end
    big = tmp_path / "big.yaml"
    big.write_bytes(b"x" * 5000)
    assert len(read_config_bytes(big, 1000)) == 1001  # one more than the limit: "too large"


# --- settling by inotify event (a complete file need not wait the debounce window) ----------

SLOW_DEBOUNCE_MS = 4000  # far above what a complete change may take to be acted on


def _needs_inotify(notification: str) -> None:
    if notification == "polling":
        pytest.skip("about inotify: nothing to check in the polling variant")
    if Inotify.open() is None:
        pytest.skip("needs inotify (Linux)")


def _slow(*paths: Path, debounce_ms: int = SLOW_DEBOUNCE_MS) -> FilesAdapter:
    return FilesAdapter(
        list(paths), debounce_ms=debounce_ms, poll_interval_ms=60_000, loader=fake_loader
    )


async def _not_yet(waiting: asyncio.Future[SourceEvent], seconds: float = 0.3) -> bool:
    """True when no event came within seconds (a bounded wait: proving an absence)."""
    done, _ = await asyncio.wait({waiting}, timeout=seconds)
    return not done


def _values(event: SourceEvent) -> dict[str, int]:
    return {r.name: r.body["spec"]["value"] for r in event.upserts}


async def _rename_into_place(
    it: AsyncIterator[SourceEvent], target: Path, text: str
) -> tuple[SourceEvent, float]:
    """Write `text` beside `target` and rename it into place, as editors do: the event that
    follows, and the seconds it took."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    started = time.monotonic()
    os.replace(tmp, target)
    changed = await next_event(it)
    return changed, time.monotonic() - started


async def test_a_rename_into_place_is_acted_on_without_the_debounce(
    tmp_path: Path, notification: str
) -> None:
    _needs_inotify(notification)
    target = tmp_path / "mesh.yaml"
    target.write_text(doc("a", 1))
    async with (files := _slow(tmp_path)):
        it = files.watch()
        await next_event(it)
        changed, took = await _rename_into_place(it, target, doc("a", 2))
    assert _values(changed) == {"a": 2}
    assert took < SLOW_DEBOUNCE_MS / 1000 / 2, took


async def test_a_writer_closing_the_file_is_acted_on_without_the_debounce(
    tmp_path: Path, notification: str
) -> None:
    _needs_inotify(notification)
    target = tmp_path / "mesh.yaml"
    target.write_text(doc("a", 1))
    async with (files := _slow(tmp_path)):
        it = files.watch()
        await next_event(it)
        started = time.monotonic()
        target.write_text(doc("a", 2))  # in place: open, write, close
        changed = await next_event(it)
        took = time.monotonic() - started
    assert _values(changed) == {"a": 2}
    assert took < SLOW_DEBOUNCE_MS / 1000 / 2, took


async def test_a_file_still_being_written_waits_for_its_writer(
    tmp_path: Path, notification: str
) -> None:
    _needs_inotify(notification)
    target = tmp_path / "mesh.yaml"
    target.write_text(doc("a", 1))
    text = doc("a", 2) + doc("b", 3)
    async with (files := _slow(tmp_path)):
        it = files.watch()
        await next_event(it)
        waiting = asyncio.ensure_future(next_event(it))
        with target.open("w") as writer:  # writes, pauses, writes the rest, then closes
            writer.write(text[:30])
            writer.flush()
            assert await _not_yet(waiting)  # the truncated file is not read meanwhile
            writer.write(text[30:])
            writer.flush()
            assert await _not_yet(waiting)
        started = time.monotonic()
        changed = await waiting
        took = time.monotonic() - started
    assert _values(changed) == {"a": 2, "b": 3}
    assert took < SLOW_DEBOUNCE_MS / 1000 / 2, took  # acted on at the close


async def test_a_burst_of_renames_is_one_event(tmp_path: Path, notification: str) -> None:
    _needs_inotify(notification)
    (tmp_path / "a0.yaml").write_text(doc("a0", 0))
    async with (files := _slow(tmp_path)):
        it = files.watch()
        await next_event(it)
        for i in range(20):  # as ansible copying many files does: each renamed into place
            tmp = tmp_path / f".a{i}.yaml.tmp"
            tmp.write_text(doc(f"a{i}", 1))
            os.replace(tmp, tmp_path / f"a{i}.yaml")
        changed = await next_event(it)
    assert _values(changed) == {f"a{i}": 1 for i in range(20)}


async def test_a_vim_style_backup_rename_waits_the_debounce_for_the_new_file(
    tmp_path: Path, notification: str
) -> None:
    _needs_inotify(notification)
    target = tmp_path / "mesh.yaml"
    target.write_text(doc("a", 1))
    async with (files := _slow(tmp_path, debounce_ms=1000)):
        it = files.watch()
        await next_event(it)
        waiting = asyncio.ensure_future(next_event(it))
        os.rename(target, tmp_path / "mesh.yaml~")  # the file is missing for a while
        assert await _not_yet(waiting)
        target.write_text(doc("a", 2))
        changed = await waiting
    assert _values(changed) == {"a": 2}
    assert not changed.deletes


async def test_a_directory_swap_is_not_taken_for_deletes(tmp_path: Path, notification: str) -> None:
    _needs_inotify(notification)
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "a.yaml").write_text(doc("a", 1))
    (tmp_path / "mesh.new").mkdir()
    (tmp_path / "mesh.new" / "a.yaml").write_text(doc("a", 2))
    async with (files := _slow(mesh)):
        it = files.watch()
        await next_event(it)
        waiting = asyncio.ensure_future(next_event(it))
        os.rename(mesh, tmp_path / "mesh.old")
        assert await _not_yet(waiting, 0.2)  # the path missing: not settled meanwhile
        os.rename(tmp_path / "mesh.new", mesh)
        started = time.monotonic()
        changed = await waiting
        took = time.monotonic() - started
    assert _values(changed) == {"a": 2}
    assert not changed.deletes and not changed.unavailable
    assert took < SLOW_DEBOUNCE_MS / 1000 / 2, took


async def test_polling_keeps_the_debounce_after_a_rename(tmp_path: Path, notification: str) -> None:
    if notification != "polling":
        pytest.skip("polling only")
    target = tmp_path / "mesh.yaml"
    target.write_text(doc("a", 1))
    async with (files := adapter(tmp_path, debounce_ms=300)):
        it = files.watch()
        await next_event(it)
        tmp = tmp_path / ".mesh.yaml.tmp"
        tmp.write_text(doc("a", 2))
        started = time.monotonic()
        os.replace(tmp, target)
        changed = await next_event(it)
        took = time.monotonic() - started
    assert _values(changed) == {"a": 2}
    assert took >= 0.3


async def test_a_change_only_the_poll_sees_keeps_the_debounce(
    tmp_path: Path, notification: str
) -> None:
    _needs_inotify(notification)
    outside = tmp_path / "elsewhere"  # not watched: its writes raise no event for the adapter
    outside.mkdir()
    (outside / "mesh.yaml").write_text(doc("a", 1))
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "mesh.yaml").symlink_to(outside / "mesh.yaml")
    text = doc("a", 2) + doc("b", 3)
    files = FilesAdapter([mesh], debounce_ms=1000, poll_interval_ms=20, loader=fake_loader)
    async with files:
        it = files.watch()
        await next_event(it)
        waiting = asyncio.ensure_future(next_event(it))
        with (outside / "mesh.yaml").open("w") as writer:  # the poll sees a partial write
            writer.write(text[:30])
            writer.flush()
            assert await _not_yet(waiting)  # the truncated file is not read meanwhile
            writer.write(text[30:])
        changed = await waiting
    assert _values(changed) == {"a": 2, "b": 3}


# --- racy files (changed within RACY_NS of being read) ---------------------------------------


def _rewrite_keeping_sig(path: Path, text: str) -> None:
    """Replace path's text in place with one of the same size and restore its mtime: a
    change the stat signature cannot see (a second write within the clock's granularity)."""
    st = path.stat()
    assert len(text.encode()) == st.st_size
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("linked", [False, True])
def test_a_racy_file_is_read_again_on_a_poll_only_when_inotify_may_miss_its_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: bool
) -> None:
    import meshagent.adapters.files as files_module

    # given a file read just after it was written (racy), directly or through a symlink
    target = tmp_path / "real.yaml" if linked else tmp_path / "mesh" / "a.yaml"
    (tmp_path / "mesh").mkdir()
    target.write_text(doc("a", 1))
    if linked:
        (tmp_path / "mesh" / "a.yaml").symlink_to(target)
    files = adapter(tmp_path / "mesh")
    files._process(files._scan())
    reads: list[Path] = []
    read = files_module.read_config_bytes

    def counting(path: Path) -> bytes:
        reads.append(path)
        return read(path)

    monkeypatch.setattr(files_module, "read_config_bytes", counting)
    _rewrite_keeping_sig(target, doc("a", 2))
    scan = files._scan()
    # when inotify works and a poll (not inotify) wakes the adapter
    files._inotify = object()  # type: ignore[assignment]
    changed = files._has_changes(scan, False)
    # then a plain file is not read again (inotify tells of its every write), a symlink is
    assert changed is linked and len(reads) == int(linked)
    # and whatever wakes the adapter, without inotify or told by it, the change is found
    assert files._has_changes(scan, True)
    files._inotify = None
    assert files._has_changes(scan, False)


def test_a_racy_file_is_no_longer_racy_after_racy_ns_whatever_woke_the_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshagent.adapters.files as files_module

    # given a racy file, read with inotify at work
    (tmp_path / "a.yaml").write_text(doc("a", 1))
    files = adapter(tmp_path)
    files._process(files._scan())
    assert files._racy
    files._inotify = object()  # type: ignore[assignment]
    # when RACY_NS has passed, and a poll inotify did not wake finds nothing changed
    monkeypatch.setattr(files_module, "RACY_NS", 0)
    assert not files._has_changes(files._scan(), False)
    # then it is not racy any more: the next change does not read it again
    assert not files._racy


def test_in_place_edits_of_a_big_file_read_only_the_edited_documents(tmp_path: Path) -> None:
    """A file rewritten with documents edited in place (no line added or removed, the common
    ansible/editor change) is read around the changed characters only, and ends up as a
    whole read of it: same resources, locations and events."""
    import random

    rng = random.Random(5)
    target = tmp_path / "mesh.yaml"
    entries = [_entry(f"e{i}", f"10.0.0.{i}") for i in range(40)]
    target.write_text("---\n".join(entries))
    read: list[int] = []

    def loader(text: str, path: str) -> tuple[list[RawResource], list[Diagnostic]]:
        from meshagent.adapters.yamldocs import load_documents

        read.append(len(text))
        return load_documents(text, path, source="files")

    live = FilesAdapter([tmp_path], loader=loader)
    live._process(live._scan())
    whole = len(target.read_text())
    looked_at: list[object] = []  # resources looked at one by one (their identity)
    ident = live._ident

    def counting(key: tuple[str, str, str, str]) -> tuple[str, str, str]:
        looked_at.append(key)
        return ident(key)

    live._ident = counting  # type: ignore[method-assign]
    for step in range(120):
        edited = set(rng.sample(range(len(entries)), rng.choice((1, 1, 2, 3))))
        if rng.random() < 0.2:
            edited |= {0, len(entries) - 1}  # the first and the last documents
        for i in edited:
            if rng.random() < 0.1:  # another name: the file is read the usual way
                entries[i] = _entry(f"r{step}x{i}", f"10.0.{step % 250}.{i}")
            else:
                entries[i] = _entry(
                    entries[i].split("name: ")[1].split("\n")[0], f"10.{step}.9.{i}"
                )
        read.clear()
        looked_at.clear()
        _replace(target, "---\n".join(entries))
        got = live._process(live._scan())
        fresh, _ = _fresh_read(tmp_path)
        assert live._files[target].resources == fresh._files[target].resources, step
        changed = {entries[i].split("name: ")[1].split("\n")[0] for i in edited}
        assert {r.name for r in got.upserts} <= changed and not got.errors, step
        if not any(n.startswith("r") for n in changed):
            assert {r.name for r in got.upserts} == changed, step
            assert whole not in read and sum(read) < whole / 4, (step, read)
        if len(edited) == 1 and not any(n.startswith("r") for n in changed):
            # (several edits far apart: what lies between them is looked at too)
            assert len(looked_at) <= 2, (step, len(looked_at))
    # and a file whose lines move is still read right
    entries[3] = _entry("e3", "10.7.7.7", extra_lines=2)
    target.write_text("---\n".join(entries))
    live._process(live._scan())
    fresh, _ = _fresh_read(tmp_path)
    assert live._files[target].resources == fresh._files[target].resources


@pytest.mark.parametrize("in_place", [False, True], ids=["lines-added", "in-place"])
def test_a_byte_order_mark_inside_a_file_is_the_error_a_whole_read_finds(
    tmp_path: Path, in_place: bool
) -> None:
    """YAML skips a byte order mark only where the text starts (files concatenated from
    Windows editors' output carry one per document): a later document starting with one,
    read alone, must not be accepted when a whole read of the file (a restart) rejects it."""
    target = tmp_path / "mesh.yaml"
    entries = [_entry(f"e{i}", f"10.0.0.{i}") for i in range(8)]
    target.write_text("---\n".join(entries))
    live = FilesAdapter([tmp_path])
    live._process(live._scan())
    # when one document is rewritten with a byte order mark before it
    if in_place:
        entries[7] = "\ufeff" + _entry("e7", "10.0.0.9")
    else:
        entries[7] = "\ufeff" + _entry("e7", "10.0.0.9", extra_lines=1)
    _replace(target, "---\n".join(entries))
    got = live._process(live._scan())
    _, want = _fresh_read(tmp_path)
    # then the change is the error a fresh read finds, and the last good entry keeps serving
    assert want.errors and not want.upserts
    assert [(e.location, e.reason) for e in got.errors] == [
        (e.location, e.reason) for e in want.errors
    ]
    assert not got.upserts
    kept = {raw.name: raw.body for raw in live._files[target].resources.values()}
    assert kept["e7"]["spec"]["address"] == "10.0.0.7"


class _RefusingInotify:
    """An inotify whose kernel refused a watch (fs.inotify.max_user_watches reached)."""

    def watch(self, directories: object) -> bool:
        return False

    def drain(self) -> list[object]:
        return []


def test_a_racy_file_in_a_directory_inotify_could_not_watch_is_read_again_on_a_poll(
    tmp_path: Path,
) -> None:
    # given a racy file read while inotify could not watch every directory (the per-user
    # watch limit reached: its writes raise no event)
    (tmp_path / "a.yaml").write_text(doc("a", 1))
    files = adapter(tmp_path)
    files._inotify = _RefusingInotify()  # type: ignore[assignment]
    files._process(files._scan(True))
    # when it is rewritten within its mtime tick, same size, and a poll looks
    _rewrite_keeping_sig(tmp_path / "a.yaml", doc("a", 2))
    # then the change is found
    scan = files._scan()
    assert files._has_changes(scan, False)
    # and a change inotify told of settles for the whole debounce window (a writer in the
    # unwatched directory is not known to have finished)
    files._notified = asyncio.Event()
    assert files._settle_until(scan, 0.0, True) == files._debounce


def test_a_racy_file_with_another_hard_link_is_read_again_on_a_poll(tmp_path: Path) -> None:
    # given a racy file that is also linked from outside the watched directory (its writes
    # through that name raise no event in the watched one)
    (tmp_path / "mesh").mkdir()
    target = tmp_path / "mesh" / "a.yaml"
    target.write_text(doc("a", 1))
    os.link(target, tmp_path / "elsewhere.yaml")
    files = adapter(tmp_path / "mesh")
    files._process(files._scan())
    files._inotify = object()  # type: ignore[assignment]
    # when it is rewritten through the other name within its mtime tick, same size
    _rewrite_keeping_sig(tmp_path / "elsewhere.yaml", doc("a", 2))
    # then a poll inotify did not wake finds the change
    assert files._has_changes(files._scan(), False)


async def test_a_file_truncated_then_rewritten_is_not_read_empty_in_between(
    tmp_path: Path, notification: str
) -> None:
    """`: > mesh.yaml` then a second writer (a script's `>>` appends, a tool that truncates
    and reopens): the writer's close of the emptied file is no sign the change is complete.
    The resources of a file that became empty keep serving for the debounce window, so the
    rewrite lands before anything is deleted."""
    _needs_inotify(notification)
    target = tmp_path / "mesh.yaml"
    target.write_text(doc("a", 1) + doc("b", 1))
    async with (files := _slow(tmp_path)):
        it = files.watch()
        await next_event(it)
        waiting = asyncio.ensure_future(next_event(it))
        target.write_text("")  # truncated (open, close)
        assert await _not_yet(waiting)  # not read while empty
        with target.open("a") as writer:  # the rewrite, by another open
            writer.write(doc("a", 2) + doc("b", 2))
        changed = await waiting
    assert _values(changed) == {"a": 2, "b": 2} and not changed.deletes


async def test_a_symlink_created_in_the_directory_does_not_slow_later_changes(
    tmp_path: Path, notification: str
) -> None:
    """A symlink (a Kubernetes ConfigMap's `name -> ..data/name`, `ln -s`) is created but
    never opened for writing: no close follows its creation. Once the debounce window has
    passed, it must not make every later change wait the whole window."""
    _needs_inotify(notification)
    debounce_ms = 400
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    target = mesh / "mesh.yaml"
    target.write_text(doc("a", 1))
    (tmp_path / "b.yaml").write_text(doc("b", 1))
    async with (files := _slow(mesh, debounce_ms=debounce_ms)):
        it = files.watch()
        await next_event(it)
        (mesh / "b.yaml").symlink_to(tmp_path / "b.yaml")
        assert _values(await next_event(it)) == {"b": 1}
        changed, took = await _rename_into_place(it, target, doc("a", 2))
    assert _values(changed) == {"a": 2}
    assert took < debounce_ms / 1000 / 2, took


def _odd_entry(rng: random.Random, i: int, address: str) -> str:
    """A WorkloadEntry written one of the ways that make '---' splitting delicate: a block
    scalar holding '--- x' and '...', a comment with '---', flow style, a quoted string
    spanning a '---' line (a syntax error), a leading byte order mark, a List, an alias."""
    head = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
    meta = f"metadata:\n  name: e{i}\n  namespace: ns\n"
    forms = [
        f"{head}{meta}spec:\n  address: {address}\n",
        f"{head}{meta}  annotations:\n    note: |\n      --- x\n      ...\n"
        f"spec:\n  address: {address}\n",
        f"# a comment ---\n{head}metadata: {{name: e{i}, namespace: ns}}\n"
        f"spec: {{address: {address}}}\n",
        f'{head}{meta}spec:\n  address: {address}\n  labels: {{a: "x\n---\n y"}}\n',
        f"\ufeff{head}{meta}spec:\n  address: {address}\n",
        f"apiVersion: v1\nkind: List\nitems:\n- {head.replace(chr(10), chr(10) + '  ', 1)}"
        f"  metadata: {{name: e{i}, namespace: ns}}\n  spec: {{address: {address}}}\n",
        f"{head}{meta}spec:\n  address: {address}\n  labels:\n    a: &x v\n    b: *x\n",
        "# only a comment\n",
    ]
    return rng.choices(forms, [30, 4, 4, 1, 1, 2, 1, 2])[0]


@pytest.mark.parametrize("seed", range(6))
def test_reread_documents_of_odd_texts_match_a_fresh_read(tmp_path: Path, seed: int) -> None:
    """Random edits (in place, lines added, documents added and removed, other separators:
    '--- ', '--- # c', '...', CRLF) of a file written in delicate ways: what the adapter
    serves is always what a fresh adapter reads, and a text a fresh read rejects is
    rejected with the same errors (the last good resources keep serving meanwhile)."""
    rng = random.Random(seed)
    target = tmp_path / "mesh.yaml"
    docs = [_odd_entry(rng, i, "10.0.0.1") for i in range(rng.randint(2, 8))]
    seps = ["---\n"] * 12

    def text() -> str:
        return "".join(d + (seps[k] if k < len(docs) - 1 else "") for k, d in enumerate(docs))

    target.write_text(text())
    live = FilesAdapter([tmp_path])
    served = {r.key: r for r in live._process(live._scan()).upserts}
    last = text()
    for step in range(60):
        roll = rng.random()
        if roll < 0.6:
            i = rng.randrange(len(docs))
            docs[i] = (
                docs[i].replace("10.0.0.", f"10.0.{step}.", 1)
                if rng.random() < 0.5
                else (_odd_entry(rng, i, f"10.1.0.{step}"))
            )
        elif roll < 0.7 and len(docs) < 10:
            docs.insert(rng.randrange(len(docs) + 1), _odd_entry(rng, len(docs), "10.2.0.1"))
        elif roll < 0.8 and len(docs) > 1:
            docs.pop(rng.randrange(len(docs)))
        else:
            seps[rng.randrange(len(seps))] = rng.choice(
                ["---\n", "--- \n", "--- # c\n", "...\n---\n", "---\r\n"]
            )
        if text() == last:
            continue
        last = text()
        with open(target, "w", newline="") as f:  # in place, as an editor writes
            f.write(last)
        os.utime(target, ns=(0, time.time_ns() + step))  # a new signature, whatever the clock
        event = live._process(live._scan())
        for key in event.deletes:
            served.pop(key, None)
        served.update((r.key, r) for r in event.upserts)
        _, want = _fresh_read(tmp_path)
        wrong = [(e.location, e.reason) for e in want.errors if e.severity == "error"]
        if wrong:
            got = [(e.location, e.reason) for e in event.errors if e.severity == "error"]
            assert got == wrong, (seed, step, last)
            continue
        assert served == {r.key: r for r in want.upserts}, (seed, step, last)


def _yaml_totals(text: str) -> tuple[int, int]:
    """The YAML nodes a whole read of text builds, and of them those built through aliases."""
    from meshagent.adapters.yamldocs import load_documents, tally

    with tally() as counts:
        _, problems = load_documents(text, "t.yaml")
    assert not problems
    return sum(c[1] for c in counts), sum(c[2] for c in counts)


@pytest.mark.parametrize("in_place", [True, False])
def test_a_file_edited_past_the_node_limit_is_rejected_live_as_at_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_place: bool
) -> None:
    """yamldocs' MAX_NODES bounds a file, not each document: a file whose documents, re-read
    alone after an edit (in place, or lines added), together pass it is rejected live with
    the error a fresh read gives, and the last good resources keep serving."""
    from meshagent.adapters import yamldocs

    target = tmp_path / "mesh.yaml"
    entries = [_entry(f"e{i}", f"10.0.0.{i}") for i in range(16)]
    text = "---\n".join(entries)
    nodes, _ = _yaml_totals(text)
    monkeypatch.setattr(yamldocs, "MAX_NODES", nodes + 10)
    target.write_text(text)
    live = FilesAdapter([tmp_path])
    first = live._process(live._scan())
    assert len(first.upserts) == 16 and not first.errors
    served = dict(live._files[target].resources)
    at = 15 if not in_place else 5  # lines added: in the last document (the others stay)
    grown = "[" + ", ".join(f"a{i}" for i in range(30)) + "]"
    if in_place:
        entries[at] = entries[at].replace("    app: e5\n", f"    app: {grown}\n")
    else:
        entries[at] += f"    more: {grown}\n    other: {{x: y}}\n"
    _replace(target, "---\n".join(entries))
    got = live._process(live._scan())
    _, restarted = _fresh_read(tmp_path)
    assert restarted.errors and "YAML nodes; file rejected" in restarted.errors[0].reason
    assert [(d.location, d.reason) for d in got.errors] == [
        (d.location, d.reason) for d in restarted.errors
    ]
    assert not got.upserts and not got.deletes
    assert live._files[target].resources == served  # the last good keeps serving


def test_a_file_edited_past_the_alias_budget_is_rejected_live_as_at_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias budget counts what the text before an alias built: a document edited in
    place to build fewer nodes (lines turned to comments) can put a later document's aliases
    over it. Live, as a fresh read, the file is rejected and the last good keeps serving."""
    from meshagent.adapters import yamldocs

    monkeypatch.setattr(yamldocs, "ALIAS_FLOOR", 10)
    target = tmp_path / "mesh.yaml"
    entries = [_entry("big", "10.0.0.1", extra_lines=150)]
    entries += [_entry(f"e{i}", f"10.0.0.{i}") for i in range(2, 17)]
    entries.append(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        "metadata:\n  name: aliased\n  namespace: ns\nspec:\n"
        "  a: &x [1, 2, 3, 4, 5, 6, 7, 8]\n  b: [" + ", ".join(["*x"] * 45) + "]\n"
    )
    text = "---\n".join(entries)
    nodes, expanded = _yaml_totals(text)
    assert expanded > 10 and 2 * expanded < nodes  # within the budget
    target.write_text(text)
    live = FilesAdapter([tmp_path])
    first = live._process(live._scan())
    assert len(first.upserts) == 17 and not first.errors
    served = dict(live._files[target].resources)
    # the big document's labels become comments: same lines, far fewer nodes
    entries[0] = re.sub(r"(?m)^    (l\d+): v\d+$", r"    # \1", entries[0])
    _replace(target, "---\n".join(entries))
    got = live._process(live._scan())
    _, restarted = _fresh_read(tmp_path)
    assert restarted.errors and "aliases expand" in restarted.errors[0].reason
    assert [(d.location, d.reason) for d in got.errors] == [
        (d.location, d.reason) for d in restarted.errors
    ]
    assert not got.upserts and not got.deletes
    assert live._files[target].resources == served


def test_in_place_edits_around_the_node_limit_read_as_a_fresh_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeded in-place edits that grow and shrink documents across MAX_NODES: after each,
    the live adapter reports the errors a fresh read reports, and serves what it serves (or,
    rejected, what it served before)."""
    from meshagent.adapters import yamldocs

    rng = random.Random(11)
    target = tmp_path / "mesh.yaml"
    entries = [_entry(f"e{i}", f"10.0.0.{i}") for i in range(20)]
    nodes, _ = _yaml_totals("---\n".join(entries))
    monkeypatch.setattr(yamldocs, "MAX_NODES", nodes + 40)
    target.write_text("---\n".join(entries))
    live = FilesAdapter([tmp_path])
    live._process(live._scan())
    rejected = 0
    for step in range(60):
        i = rng.randrange(len(entries))
        size = rng.choice((0, 0, 5, 20, 40))
        app = f"[{', '.join(f'a{n}' for n in range(size))}]" if size else f"e{i}"
        entries[i] = _entry(f"e{i}", f"10.0.0.{i}").replace(f"    app: e{i}\n", f"    app: {app}\n")
        served = dict(live._files[target].resources)
        if "---\n".join(entries) == target.read_text():
            continue  # no change: nothing read again (a rejected file's errors were told)
        _replace(target, "---\n".join(entries))
        got = live._process(live._scan())
        fresh, restarted = _fresh_read(tmp_path)
        where = [(d.location, d.reason) for d in restarted.errors]
        assert [(d.location, d.reason) for d in got.errors] == where, step
        if where:
            rejected += 1
            assert live._files[target].resources == served, step
        else:
            assert live._files[target].resources == fresh._files[target].resources, step
    assert 5 < rejected < 55  # both sides of the limit were met
