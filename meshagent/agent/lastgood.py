"""The last-known-good raw resources, kept in the state dir so that they survive a restart.

Owner: the daemon. After each change it saves the raw documents the normalizer accepted (of the
sources in PERSISTED_SOURCES); at start it loads them, so that a document that is invalid when
the agent starts (or a file under a configured path that is missing) serves its last good
version instead of vanishing. A document whose file was deleted meanwhile is not brought back:
the daemon seeds the normalizer with these, and the source's first full listing deletes what it
no longer has (see FilesAdapter.restore and Agent._admit).

The save is off the critical path: after a change the daemon publishes first, and the keeper
writes SAVE_DELAY_S later (a burst of changes is one save, at most one save runs at a time, and
a stop writes at once), and not while the daemon says it is busy (Envoy applying the first
push, at most BUSY_WAIT_MAX_S). Each resource's JSON text is kept from one save to the next, so
a save re-encodes only the resources that changed.

The file is JSON, written atomically (temporary file, fsync, rename, fsync of the directory),
mode 0600, and at most MAX_BYTES; an unreadable or oversized file is ignored with a warning.
The documents' line maps are not kept (they would triple the size): a restored document is
located at its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from meshagent.gcpause import release_free_memory
from meshagent.model.source import Diagnostic, Provenance, RawResource, SourceEvent

log = structlog.get_logger("meshagent.agent.lastgood")
_agent_log = structlog.get_logger("meshagent.agent")  # the daemon's events, as before

FILE_NAME = "last-good.json"
FORMAT = 1
MAX_BYTES = 64 * 1024 * 1024
# How long after a change the save starts: it gathers a burst of changes into one write, and
# keeps the write (seconds of CPU at 10k services, before the text was kept) out of the way of
# the publish of the change and of the next ones (issue 17).
SAVE_DELAY_S = 1.0
# The longest a save waits for the daemon's busy() to clear (Envoy applying the first push of a
# start: the first save of a 10k-service mesh is a core's worth of CPU for a quarter second,
# which the push's responses need more).
BUSY_WAIT_MAX_S = 60.0
BUSY_POLL_S = 0.05
# Sources whose documents are configuration people edit: a platform (Consul, Kubernetes) lists
# its current state on every start instead.
PERSISTED_SOURCES = ("files",)
SAVE_BATCH = 256  # resources a block (a change joins its block again; one write a block)
# Kinds never written, whatever their source: a Secret holds a private key, which must not be
# copied to the state dir (credentials are read again from their files or the API at start).
NEVER_PERSISTED_KINDS = frozenset({"Secret"})

Key = tuple[str, str, str, str]  # RawResource.key


class LastGoodStore:
    """Saves and loads the last-known-good raw resources at path (see the module docstring)."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        # The text of the last save in blocks of SAVE_BATCH resources (keys in sorted order),
        # and where each resource's JSON text lies in them: (the resource, its block, start,
        # end; start == end: JSON cannot carry it). A resource's text is reused while it is the
        # same object: only what changed is encoded again. The text is kept once (the joined
        # blocks; per-resource copies beside them were ~10 MB more at 10k services).
        self._spans: dict[Key, tuple[RawResource, int, int, int]] = {}
        self._order: list[Key] = []
        self._index: dict[Key, int] = {}
        self._blocks: list[bytes] = []

    def load(self) -> list[RawResource]:
        """The saved resources; [] (with a warning) when there are none or they are unusable.

        Called by the agent at start (one agent per state dir): the temporary files of saves
        cut short by a crash (each as large as the file) are removed, so a crash loop does not
        fill the state dir."""
        _remove_leftovers(self.path)
        try:
            with self.path.open("rb") as f:
                data = f.read(self.max_bytes + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("last_good_unreadable", path=str(self.path), error=str(exc))
            return []
        if len(data) > self.max_bytes:
            log.warning("last_good_too_large", path=str(self.path), max_bytes=self.max_bytes)
            return []
        try:
            document = json.loads(data)
            if document.get("format") != FORMAT:
                raise ValueError(f"format {document.get('format')!r}, not {FORMAT}")
            return [_decode(item) for item in document["resources"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("last_good_unreadable", path=str(self.path), error=str(exc))
            return []

    def save(
        self,
        resources: Iterable[RawResource] | Mapping[Key, RawResource],
        changed: Collection[Key] | None = None,
    ) -> None:
        """Replace the saved resources (or a mapping of them by key) atomically; OSError when
        the state dir is not writable. changed: the keys that may differ from the last save
        (None: any): only their pieces of the text are made again.

        Resources that JSON cannot carry (YAML binary values) are left out; when the whole is
        above max_bytes, the file is removed rather than left stale, with a warning.
        """
        by_key = resources if isinstance(resources, Mapping) else {r.key: r for r in resources}
        try:
            self._update(by_key, changed)
        except BaseException:
            self._order = []  # the next save makes every block again (reusing what it can)
            raise
        # Streamed to the file, a block of SAVE_BATCH resources at a time: the whole text at
        # once was three copies of the mesh, 60 MB of peak RSS at 10k services.
        if not _write_atomically(self.path, _pieces(self._blocks), self.max_bytes):
            log.warning("last_good_too_large", path=str(self.path), max_bytes=self.max_bytes)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        release_free_memory()

    def _update(
        self, resources: Mapping[Key, RawResource], changed: Collection[Key] | None
    ) -> None:
        """The blocks (and spans) of resources in key order: the blocks of the last save,
        those that hold a changed key made again, while the keys are the same. The state is
        replaced whole at the end (an exception midway leaves the last one, consistent)."""
        same_keys = (
            changed is not None
            and bool(self._order)
            and len(resources) == len(self._order)
            and all((k in resources) == (k in self._spans) for k in changed)
        )
        if same_keys and changed is not None:
            order, index = self._order, self._index
            # (a key in neither, added and removed again since the last save: no block)
            dirty: Iterable[int] = sorted({index[k] for k in changed if k in index})
            blocks, spans = list(self._blocks), self._spans
            updates: dict[Key, tuple[RawResource, int, int, int]] = {}
        else:
            order = sorted(resources)
            index = {key: i // SAVE_BATCH for i, key in enumerate(order)}
            count = -(-len(order) // SAVE_BATCH)
            dirty, blocks, spans = range(count), [b""] * count, {}
            updates = spans
        for block in dirty:
            pieces: list[bytes | memoryview] = []
            position = 0
            for key in order[block * SAVE_BATCH : (block + 1) * SAVE_BATCH]:
                raw = resources[key]
                text = self._text(key, raw)
                if text is None:
                    updates[key] = (raw, block, position, position)
                    continue
                if pieces:
                    position += 2  # the ",\n" before it
                updates[key] = (raw, block, position, position + len(text))
                position += len(text)
                pieces.append(text)
            blocks[block] = b",\n".join(pieces)
        if updates is not spans:
            spans.update(updates)
        self._order, self._index, self._blocks, self._spans = order, index, blocks, spans

    def _text(self, key: Key, raw: RawResource) -> bytes | memoryview | None:
        """raw's JSON text (None: not written): from the last save's blocks while raw is the
        same object, else encoded."""
        kept = self._spans.get(key)
        if kept is not None and kept[0] is raw:
            _, block, start, end = kept
            return memoryview(self._blocks[block])[start:end] if end > start else None
        if raw.kind in NEVER_PERSISTED_KINDS:  # key material stays in memory
            return None
        return _encode_item(raw)


def _pieces(blocks: list[bytes]) -> Iterator[bytes]:
    yield f'{{"format":{FORMAT},"resources":[\n'.encode()
    first = True
    for block in blocks:
        if block:
            yield block if first else b",\n" + block
            first = False
    yield b"\n]}\n"


class LastGoodKeeper:
    """The daemon's bookkeeping around a LastGoodStore: what the store holds (saved), what was
    restored at start (reported once every persisted source has listed, where it still
    serves), and the background save (delay seconds after a change, see the module
    docstring). report() shows diagnostics among the current problems."""

    def __init__(
        self,
        store: LastGoodStore,
        report: Callable[[Sequence[Diagnostic]], None],
        *,
        delay: float = SAVE_DELAY_S,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self._report = report
        self._delay = delay
        self._busy = busy  # while True, a save waits (at most BUSY_WAIT_MAX_S; a stop does not)
        self._flush = asyncio.Event()  # set at stop: write now, without the delay
        # What the store holds: replaced after each apply that changed it, never mutated then.
        self.saved: dict[Key, RawResource] = {}
        # The keys that may differ between saved and the last save (None: not known).
        self._pending: set[Key] | None = None
        self._task: asyncio.Task[None] | None = None
        self._restored: dict[Key, RawResource] = {}  # loaded at start, until sources listed

    async def load(self, sources: set[str]) -> list[SourceEvent]:
        """The saved documents of those of sources that are persisted, an event a source."""
        loaded = await asyncio.to_thread(self.store.load)
        by_source: dict[str, list[RawResource]] = {}
        for raw in loaded:
            if raw.source in PERSISTED_SOURCES and raw.source in sources:
                by_source.setdefault(raw.source, []).append(raw)
        return [SourceEvent(s, tuple(rs), synced=False) for s, rs in by_source.items()]

    def restored(self, accepted: Iterable[Mapping[Key, RawResource]]) -> None:
        """What the normalizer accepted of the loaded documents (a mapping a source)."""
        for documents in accepted:
            self.saved.update(documents)
            self._restored.update(documents)
        self._pending = None
        _agent_log.info(
            "last_good_loaded", resources=len(self._restored), path=str(self.store.path)
        )

    def remember(
        self,
        accepted_of: Callable[[list[Key]], Mapping[Key, RawResource | None]],
        events: Sequence[SourceEvent],
        persisted_listed: Callable[[], bool],
    ) -> None:
        """Save what the normalizer now accepts (accepted_of) of the persisted sources, when it
        changed; once persisted_listed(), report what still serves from before the restart.
        Only the keys the events name can have changed: the cost follows the change."""
        keys = [
            key
            for e in events
            if e.source in PERSISTED_SOURCES
            for key in (*(r.key for r in e.upserts), *e.deletes)
        ]
        if not keys and not any(e.source in PERSISTED_SOURCES for e in events):
            return  # (most batches, on a busy Consul): nothing of theirs changed
        saved = self.saved
        changed = {k: r for k, r in accepted_of(keys).items() if saved.get(k) is not r}
        if changed:
            saved = dict(saved)  # a new mapping: a save in progress keeps the one it writes
            for key, raw in changed.items():
                if raw is None:
                    saved.pop(key, None)
                else:
                    saved[key] = raw
            self.saved = saved
            if self._pending is not None:
                self._pending.update(changed)
        if self._restored and persisted_listed():
            self._report_restored(saved)
        if changed and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._save())

    async def saved_all(self) -> None:
        """Write a pending save at once and wait for it to end (at stop)."""
        self._flush.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def _save(self) -> None:
        """Write the latest accepted set delay seconds after a change (sooner at stop), and
        again, as long after, while it changed during a write."""
        written: dict[Key, RawResource] | None = None
        while written is not self.saved:
            if not self._flush.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flush.wait(), self._delay)
                await self._wait_not_busy()
            written, changed, self._pending = self.saved, self._pending, set()
            try:
                await asyncio.to_thread(self.store.save, written, changed)
            except OSError as exc:
                _agent_log.warning(
                    "last_good_save_failed", path=str(self.store.path), error=str(exc)
                )
                return

    async def _wait_not_busy(self) -> None:
        """Wait while busy(), at most BUSY_WAIT_MAX_S, or until a stop asks for the save."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_WAIT_MAX_S
        while self._busy() and not self._flush.is_set() and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush.wait(), BUSY_POLL_S)

    def _report_restored(self, current: Mapping[Key, RawResource]) -> None:
        """Name each resource that serves the version saved before the restart (its document
        is invalid now, or lies under a configured path that is missing)."""
        restored, self._restored = self._restored, {}
        still = [r for k, r in sorted(restored.items()) if _serves(current.get(k), r)]
        if still:
            _agent_log.warning("last_good_serving", resources=len(still))
        self._report([_restored_warning(raw) for raw in still])


def _encode_item(raw: RawResource) -> bytes | None:
    """The resource's JSON text; None (with a warning) when JSON cannot carry it."""
    try:
        return json.dumps(_encode(raw), separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError):
        log.warning("last_good_skipped", resource=raw.provenance.ref, reason="not JSON")
        return None


def _serves(current: RawResource | None, restored: RawResource) -> bool:
    """True when current is still the restored document (not one read since: same body object)."""
    return current is not None and current.body is restored.body


def _restored_warning(raw: RawResource) -> Diagnostic:
    return Diagnostic(
        "warning",
        raw.source,
        raw.provenance.location,
        raw.kind,
        f"{raw.namespace}/{raw.name}" if raw.namespace else raw.name,
        "",
        "serving the last good version saved before the restart: its document is invalid, "
        "unreadable or missing now",
    )


def _encode(raw: RawResource) -> dict[str, Any]:
    return {
        "source": raw.source,
        "kind": raw.kind,
        "apiVersion": raw.api_version,
        "namespace": raw.namespace,
        "name": raw.name,
        "location": raw.provenance.location,
        "body": raw.body,
    }


def _decode(item: Mapping[str, Any]) -> RawResource:
    strings = [item[k] for k in ("source", "kind", "apiVersion", "namespace", "name", "location")]
    if not all(isinstance(s, str) for s in strings):
        raise ValueError("a resource's identity is not strings")
    source, kind, api_version, namespace, name, location = strings
    body = item["body"]
    if not isinstance(body, dict):
        raise ValueError(f"{kind}/{name}: body must be an object")
    provenance = Provenance(source, location, kind, namespace, name)
    return RawResource(source, kind, api_version, namespace, name, body, provenance)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _remove_leftovers(path: Path) -> None:
    """Remove the temporary files (_temporary) that saves of earlier processes left."""
    with contextlib.suppress(OSError):
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _write_atomically(path: Path, chunks: Iterable[bytes], max_bytes: int) -> bool:
    """The chunks at path, all or nothing, 0600: a crash leaves the old file or the new one.
    False (and path untouched) when they add up to more than max_bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when a leftover temporary file had another mode
        with os.fdopen(fd, "wb") as f:
            size = 0
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise _TooLarge
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, _TooLarge):
            return False
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


class _TooLarge(Exception):
    """The text went beyond max_bytes while being written."""


# The same JSON form, for other readers of documents (`meshagent diff` over the admin socket).
encode_resource = _encode
decode_resource = _decode
