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


async def test_a_reread_file_keeps_the_objects_of_its_unchanged_documents(tmp_path: Path) -> None:
    # The normalizer holds what was upserted first; a fresh equal copy in the adapter would
    # double the memory of every re-read file (issue 17: RSS under churn).
    (tmp_path / "a.yaml").write_text(doc("a") + doc("keep"))
    async with adapter(tmp_path) as files:
        it = files.watch()
        [first_a, first_keep] = sorted((await next_event(it)).upserts, key=lambda r: r.name)
        (tmp_path / "a.yaml").write_text(doc("a", value=2) + doc("keep"))
        changed = await next_event(it)
        held = files._files[tmp_path / "a.yaml"].resources  # what the adapter keeps

    assert names(changed.upserts) == ["a"]
    assert held[first_keep.key] is first_keep
    assert held[first_a.key] is changed.upserts[0]
