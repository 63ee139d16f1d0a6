"""CredentialsAdapter: a directory per credential, rotation by rename, partial writes, a
Kubernetes `..data` swap, a missing path, unreadable files; with inotify and polling only."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshagent.adapters.credentials import CredentialsAdapter
from meshagent.adapters.inotify import Inotify
from meshagent.model.source import SourceEvent
from meshagent.normalize import Normalizer
from tests.credential_helpers import CA_PEM, server_cert, swap_kube_volume, write_credential

DEADLINE_S = 5.0


@pytest.fixture(autouse=True, params=["inotify", "polling"])
def notification(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "polling":
        monkeypatch.setattr(Inotify, "open", classmethod(lambda cls: None))
    return str(request.param)


def adapter(*paths: Path, debounce_ms: int = 50) -> CredentialsAdapter:
    return CredentialsAdapter(list(paths), namespace="gw", debounce_ms=debounce_ms,
                              poll_interval_ms=20)  # fmt: skip


async def next_event(it: AsyncIterator[SourceEvent], timeout: float = DEADLINE_S) -> SourceEvent:
    return await asyncio.wait_for(anext(it), timeout)


def tls(pem: object) -> dict[str, str]:
    return {"tls.crt": pem.cert, "tls.key": pem.key}  # type: ignore[attr-defined]


async def test_first_listing_reads_each_credential_directory(tmp_path: Path) -> None:
    web, api = server_cert("web"), server_cert("api")
    write_credential(tmp_path, "web", {**tls(web), "ca.crt": CA_PEM, "README": "x"})
    write_credential(tmp_path, "api-cacert", {"cacert": CA_PEM})
    write_credential(tmp_path, ".hidden", tls(api))
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "stray.pem").write_text(api.cert)

    async with adapter(tmp_path) as source:
        event = await next_event(source.watch())

    assert event.synced and not event.errors and not event.unavailable
    by_name = {r.name: r for r in event.upserts}
    assert sorted(by_name) == ["api-cacert", "web"]
    web_raw = by_name["web"]
    assert web_raw.kind == "Secret" and web_raw.namespace == "gw"
    assert sorted(web_raw.body["stringData"]) == ["ca.crt", "tls.crt", "tls.key"]
    assert web_raw.provenance.location == str(tmp_path / "web")
    snap, found = Normalizer().apply([event])
    assert not found and snap.credentials["gw/web"].cert_chain_pem == web.cert
    assert snap.credentials["gw/api-cacert"].ca_cert_pem == CA_PEM


async def test_rotation_by_rename_is_one_upsert(tmp_path: Path) -> None:
    old, new = server_cert(), server_cert()
    write_credential(tmp_path, "web", tls(old))
    async with adapter(tmp_path) as source:
        events = source.watch()
        await next_event(events)
        write_credential(tmp_path, "web", tls(new))  # temporary file, then rename, each
        event = await next_event(events)
    assert [r.body["stringData"]["tls.crt"] for r in event.upserts] == [new.cert]
    assert event.upserts[0].body["stringData"]["tls.key"] == new.key


async def test_a_whole_directory_swapped_by_rename(tmp_path: Path) -> None:
    old, new = server_cert(), server_cert()
    write_credential(tmp_path, "web", tls(old))
    async with adapter(tmp_path) as source:
        events = source.watch()
        await next_event(events)
        write_credential(tmp_path, ".web.new", tls(new))
        os.rename(tmp_path / "web", tmp_path / ".web.old")
        os.rename(tmp_path / ".web.new", tmp_path / "web")
        event = await next_event(events)
    assert [r.body["stringData"]["tls.crt"] for r in event.upserts] == [new.cert]
    assert event.deletes == ()


async def test_a_partial_write_within_the_debounce_is_never_emitted(tmp_path: Path) -> None:
    old, new = server_cert(), server_cert()
    write_credential(tmp_path, "web", tls(old))
    async with adapter(tmp_path, debounce_ms=300) as source:
        events = source.watch()
        await next_event(events)
        (tmp_path / "web" / "tls.crt").write_text(new.cert[:100])  # in place, half written
        await asyncio.sleep(0.05)  # the writer's own pace, not a wait for the adapter
        (tmp_path / "web" / "tls.crt").write_text(new.cert)
        (tmp_path / "web" / "tls.key").write_text(new.key)
        event = await next_event(events)
    assert len(event.upserts) == 1
    assert event.upserts[0].body["stringData"] == {"tls.crt": new.cert, "tls.key": new.key}


async def test_a_kubernetes_data_symlink_swap(tmp_path: Path) -> None:
    old, new = server_cert(), server_cert()
    swap_kube_volume(tmp_path / "web", {**tls(old), "ca.crt": CA_PEM}, 1)
    async with adapter(tmp_path) as source:
        events = source.watch()
        first = await next_event(events)
        assert first.upserts[0].body["stringData"]["tls.crt"] == old.cert
        swap_kube_volume(tmp_path / "web", {**tls(new), "ca.crt": CA_PEM}, 2)
        event = await next_event(events)
    assert event.upserts[0].body["stringData"]["tls.crt"] == new.cert
    assert event.upserts[0].body["stringData"]["tls.key"] == new.key


async def test_the_same_content_rewritten_is_no_event(tmp_path: Path) -> None:
    pem, other = server_cert(), server_cert()
    write_credential(tmp_path, "web", tls(pem))
    write_credential(tmp_path, "api", tls(other))
    async with adapter(tmp_path) as source:
        events = source.watch()
        await next_event(events)
        write_credential(tmp_path, "web", tls(pem))  # same text, new inodes
        write_credential(tmp_path, "api", tls(pem))  # a real change after it
        event = await next_event(events)
    assert [r.name for r in event.upserts] == ["api"]


async def test_a_removed_credential_directory_is_deleted(tmp_path: Path) -> None:
    write_credential(tmp_path, "web", tls(server_cert()))
    write_credential(tmp_path, "api", tls(server_cert()))
    async with adapter(tmp_path) as source:
        events = source.watch()
        await next_event(events)
        shutil.rmtree(tmp_path / "api")
        event = await next_event(events)
    assert event.deletes == (("credentials", "Secret", "gw", "api"),)


async def test_a_missing_path_is_unavailable_not_empty(tmp_path: Path) -> None:
    root = tmp_path / "creds"
    write_credential(root, "web", tls(server_cert()))
    async with adapter(root) as source:
        events = source.watch()
        await next_event(events)
        os.rename(root, tmp_path / "creds.old")
        gone = await next_event(events)
        assert gone.deletes == () and gone.upserts == ()
        assert gone.unavailable == (f"{root} does not exist",)
        assert [e.location for e in gone.errors] == [str(root)]
        os.rename(tmp_path / "creds.old", root)
        back = await next_event(events)
    assert back.unavailable == () and back.errors == () and back.deletes == ()


async def test_a_path_missing_at_start_is_unavailable(tmp_path: Path) -> None:
    async with adapter(tmp_path / "nope") as source:
        event = await next_event(source.watch())
    assert event.synced and event.unavailable and not event.upserts


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
async def test_an_unreadable_key_is_an_error_of_its_credential(tmp_path: Path) -> None:
    pem = server_cert()
    write_credential(tmp_path, "web", tls(pem))
    async with adapter(tmp_path) as source:
        events = source.watch()
        await next_event(events)
        new = server_cert()
        write_credential(tmp_path, "web", tls(new))
        os.chmod(tmp_path / "web" / "tls.key", 0)
        event = await next_event(events)
        assert event.upserts == ()
        assert [(e.kind, e.name, e.location) for e in event.errors] == [
            ("Secret", "gw/web", str(tmp_path / "web" / "tls.key"))
        ]
        os.chmod(tmp_path / "web" / "tls.key", 0o600)
        fixed = await next_event(events)
    assert fixed.upserts[0].body["stringData"]["tls.key"] == new.key


def test_sources_credentials_in_the_agent_config(tmp_path: Path) -> None:
    from meshagent.agent.config import parse_config
    from meshagent.agent.daemon import build_adapters
    from meshagent.errors import ConfigError

    text = "node: {namespace: edge}\nsources:\n  credentials: {paths: [creds/]}\n"
    config = parse_config(text, tmp_path / "agent.yaml")
    (built,) = [a for a in build_adapters(config) if isinstance(a, CredentialsAdapter)]
    assert built._paths == (tmp_path / "creds",) and built._namespace == "edge"
    text = "sources:\n  credentials: {paths: [c], namespace: gw, debounce_ms: 5}\n"
    (built,) = [
        a
        for a in build_adapters(parse_config(text, tmp_path / "agent.yaml"))
        if isinstance(a, CredentialsAdapter)
    ]
    assert built._namespace == "gw" and built._debounce == 0.005
    for body, field in (("{paths: []}", "paths"), ("{paths: [c], bogus: 1}", "credentials")):
        with pytest.raises(ConfigError) as err:
            parse_config(f"sources:\n  credentials: {body}\n", tmp_path / "agent.yaml")
        assert "sources.credentials" in str(err.value) and field in str(err.value)


async def test_a_name_in_two_paths_serves_from_the_first_and_the_other_is_an_error(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    first, second = server_cert(), server_cert()
    write_credential(a, "web", tls(first))
    write_credential(b, "web", tls(second))
    async with adapter(a, b) as source:
        events = source.watch()
        event = await next_event(events)
        assert [r.body["stringData"]["tls.crt"] for r in event.upserts] == [first.cert]
        assert [e.location for e in event.errors] == [str(b / "web")]
        shutil.rmtree(a / "web")  # the other one takes over: no delete in between
        moved = await next_event(events)
    assert [r.body["stringData"]["tls.crt"] for r in moved.upserts] == [second.cert]
    assert moved.deletes == () and moved.errors == ()


def test_a_file_grown_since_its_stat_is_not_read_whole(tmp_path: Path) -> None:
    # the size check used the stat of the listing; a file rewritten larger in between (or a
    # symlink swapped to a huge file) was read whole into memory before the signature check
    from meshagent.adapters import credentials

    directory = tmp_path / "web"
    directory.mkdir()
    (directory / "tls.crt").write_bytes(b"x" * (credentials.MAX_FILE_BYTES * 3))
    stale = (os.stat(directory).st_ino, (("tls.crt", 1, 1, 10),))  # as stat'ed before it grew
    reads: list[int] = []
    real_open = Path.open

    def counting_open(self: Path, *args: object, **kwargs: object) -> object:
        f = real_open(self, *args, **kwargs)  # type: ignore[call-overload]
        real_read = f.read
        f.read = lambda n=-1: reads.append(n) or real_read(n)  # type: ignore[method-assign]
        return f

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "open", counting_open)
        mp.setattr(Path, "read_bytes", lambda self: reads.append(-1) or b"")
        with pytest.raises(ValueError, match="larger than"):
            credentials.read_credential(directory, stale)
    assert reads and all(0 < n <= credentials.MAX_FILE_BYTES + 1 for n in reads)
