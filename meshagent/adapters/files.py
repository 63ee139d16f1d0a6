"""The files adapter: mesh configuration from YAML files and directories, watched by polling.

Polling compares each file's (inode, mtime_ns, size) and, when those change, its content hash.
It needs no platform support and is safe with every way editors save a file: write-in-place,
write-temp-then-rename, and vim's backup-then-rename (the file is briefly missing). A change is
acted on only once the files have been quiet for the debounce window, so a burst of writes
becomes one SourceEvent.

Ownership: the adapter keeps, per file, the resources that file last contributed. A resource
disappears (a delete is emitted) only when no file defines it any more, so a resource moved from
one file to another is updated, not deleted. A file that fails to parse keeps contributing its
last good resources; only its errors are reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from meshagent.model.source import Diagnostic, RawResource, SourceEvent

SOURCE = "files"
SUFFIXES = (".yaml", ".yml")
# A file modified this recently may change again within the same mtime tick without its size
# changing; such files are re-hashed on every poll until they age out (git's "racy" check).
RACY_NS = 2_000_000_000
# However busy the files are, an event is produced at least this many debounce windows after
# the first change was seen, so that a file rewritten forever cannot starve the mesh.
MAX_DEBOUNCE_WINDOWS = 20

Key = tuple[str, str, str, str]
Sig = tuple[int, int, int]  # (inode, mtime_ns, size)
# (text, path) -> (resources, diagnostics); load_documents from adapters.yamldocs by default.
Loader = Callable[[str, str], tuple[list[RawResource], list[Diagnostic]]]


def _default_loader(text: str, path: str) -> tuple[list[RawResource], list[Diagnostic]]:
    from meshagent.adapters.yamldocs import load_documents

    return load_documents(text, path, source=SOURCE)


def is_config_file(path: Path) -> bool:
    """True for *.yaml/*.yml that are not editor scratch files (hidden, lock, backup)."""
    name = path.name
    if name.startswith((".", "#")) or name.endswith("~"):
        return False
    return name.endswith(SUFFIXES)


def find_config_files(paths: Iterable[Path]) -> list[Path]:
    """Every config file named by paths: files as given, directories searched recursively."""
    found: list[Path] = []
    for root in paths:
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found.extend(
                    Path(dirpath) / f for f in sorted(filenames) if is_config_file(Path(f))
                )
        elif root.is_file():
            found.append(root)
    return found


@dataclass(slots=True)
class _FileState:
    sig: Sig
    digest: bytes
    resources: dict[Key, RawResource] = field(default_factory=dict)


def _file_error(path: Path, reason: str) -> Diagnostic:
    return Diagnostic("error", SOURCE, str(path), "", "", "", reason)


class FilesAdapter:
    """Watches YAML files and directories; see the module docstring for the semantics.

    paths: files and directories (searched recursively for *.yaml and *.yml). A path that
    does not exist yet is watched too and picked up when it appears.
    """

    name = SOURCE

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        debounce_ms: int = 100,
        poll_interval_ms: int = 200,
        loader: Loader | None = None,
    ) -> None:
        self._paths = tuple(Path(p) for p in paths)
        self._debounce = max(debounce_ms, 0) / 1000
        self._poll = max(poll_interval_ms, 10) / 1000
        self._load = loader or _default_loader
        self._files: dict[Path, _FileState] = {}
        self._view: dict[Key, RawResource] = {}
        self._racy: set[Path] = set()
        self._reported_duplicates: set[tuple[Key, Path]] = set()
        self._errored: set[Path] = set()  # files whose last read had an error
        self._stop = asyncio.Event()

    @property
    def paths(self) -> tuple[Path, ...]:
        return self._paths

    async def __aenter__(self) -> FilesAdapter:
        self._stop.clear()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()

    async def watch(self) -> AsyncIterator[SourceEvent]:
        """The full listing first (synced), then one event per settled burst of changes."""
        sigs = await asyncio.to_thread(self._scan)
        yield await asyncio.to_thread(self._process, sigs)
        while not self._stop.is_set():
            if await self._sleep(self._poll):
                return
            sigs = await asyncio.to_thread(self._scan)
            if not await asyncio.to_thread(self._has_changes, sigs):
                continue
            settled = await self._settle(sigs)
            if settled is None:
                return
            event = await asyncio.to_thread(self._process, settled)
            if event.upserts or event.deletes or event.errors or event.fixed:
                yield event

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; True when stopped."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _settle(self, sigs: dict[Path, Sig]) -> dict[Path, Sig] | None:
        """Wait until the files stop changing for one debounce window (bounded); None on stop."""
        loop = asyncio.get_running_loop()
        quiet_since = started = loop.time()
        limit = started + max(self._debounce * MAX_DEBOUNCE_WINDOWS, self._poll)
        step = min(self._poll, self._debounce) if self._debounce > 0 else 0
        while loop.time() - quiet_since < self._debounce and loop.time() < limit:
            if await self._sleep(step):
                return None
            current = await asyncio.to_thread(self._scan)
            if current != sigs:
                sigs, quiet_since = current, loop.time()
        return sigs

    def _scan(self) -> dict[Path, Sig]:
        sigs: dict[Path, Sig] = {}
        for path in find_config_files(self._paths):
            try:
                st = path.stat()
            except OSError:
                continue  # vanished between listing and stat: seen as missing this round
            sigs[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return sigs

    def _has_changes(self, sigs: dict[Path, Sig]) -> bool:
        if sigs.keys() != self._files.keys():
            return True
        if any(self._files[p].sig != s for p, s in sigs.items()):
            return True
        return any(self._content_changed(p) for p in list(self._racy))

    def _content_changed(self, path: Path) -> bool:
        state = self._files.get(path)
        if state is None or state.sig[1] < time.time_ns() - RACY_NS:
            self._racy.discard(path)
            return False
        try:
            return hashlib.blake2b(path.read_bytes()).digest() != state.digest
        except OSError:
            return True

    def _process(self, sigs: dict[Path, Sig]) -> SourceEvent:
        """Reload what changed and diff the whole view against the last one emitted."""
        errors: list[Diagnostic] = []
        fixed: list[str] = []
        for path in [p for p in self._files if p not in sigs]:
            del self._files[path]
            self._racy.discard(path)
            if path in self._errored:
                self._errored.discard(path)
                fixed.append(str(path))
        for path, sig in sigs.items():
            state = self._files.get(path)
            if state is None or state.sig != sig or path in self._racy:
                problems = self._reload(path, sig, state)
                errors.extend(problems)
                if self._now_clean(path, state, problems):
                    fixed.append(str(path))
        view, duplicates = self._merged_view()
        upserts = tuple(r for k, r in view.items() if self._view.get(k) != r)
        deletes = tuple(k for k in self._view if k not in view)
        self._view = view
        return SourceEvent(SOURCE, upserts, deletes, True, (*errors, *duplicates), tuple(fixed))

    def _now_clean(self, path: Path, before: _FileState | None, problems: list[Diagnostic]) -> bool:
        """Whether path had errors and its new content has none (the agent clears them)."""
        after = self._files.get(path)
        if after is None or (before is not None and before.digest == after.digest):
            return False  # not re-read: what was wrong with it still is
        if any(d.severity == "error" for d in problems):
            self._errored.add(path)
            return False
        if path not in self._errored:
            return False
        self._errored.discard(path)
        return True

    def _reload(self, path: Path, sig: Sig, state: _FileState | None) -> list[Diagnostic]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []  # gone after the scan: the next scan sees it missing
        except OSError as exc:
            return [_file_error(path, f"cannot read: {exc.strerror or exc}")]
        if sig[1] >= time.time_ns() - RACY_NS:
            self._racy.add(path)
        digest = hashlib.blake2b(data).digest()
        old = state.resources if state is not None else {}
        if state is not None and state.digest == digest:
            self._files[path] = _FileState(sig, digest, old)
            return []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._files[path] = _FileState(sig, digest, old)
            return [_file_error(path, f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        resources, diagnostics = self._load(text, str(path))
        parsed = {r.key: r for r in resources}
        if any(d.severity == "error" for d in diagnostics):
            # Last-known-good: what parsed is applied, nothing the file had is dropped.
            parsed = {**old, **parsed}
        self._files[path] = _FileState(sig, digest, parsed)
        return list(diagnostics)

    def _merged_view(self) -> tuple[dict[Key, RawResource], list[Diagnostic]]:
        """All resources; when two files define one resource, the first path (sorted) wins."""
        view: dict[Key, RawResource] = {}
        owner: dict[Key, Path] = {}
        duplicates: list[Diagnostic] = []
        for path in sorted(self._files):
            for key, raw in self._files[path].resources.items():
                if key not in view:
                    view[key], owner[key] = raw, path
                elif (key, path) not in self._reported_duplicates:
                    self._reported_duplicates.add((key, path))
                    duplicates.append(_duplicate(raw, owner[key]))
        return view, duplicates


def _duplicate(raw: RawResource, first: Path) -> Diagnostic:
    return Diagnostic(
        "warning",
        SOURCE,
        raw.provenance.location,
        raw.kind,
        raw.name,
        "metadata.name",
        f"duplicate of the resource in {first}; this copy is ignored",
    )
