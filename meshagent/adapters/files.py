"""The files adapter: mesh configuration from YAML files and directories, watched by polling.

Polling compares each file's (inode, mtime_ns, size) and, when those change, its content hash.
It needs no platform support and is safe with every way editors save a file: write-in-place,
write-temp-then-rename, and vim's backup-then-rename (the file is briefly missing). A change is
acted on only once the files have been quiet for the debounce window, so a burst of writes
becomes one SourceEvent.

Ownership: the adapter keeps, per file, the resources that file last contributed. A resource
disappears (a delete is emitted) only when no file defines it any more, so a resource moved from
one file to another is updated, not deleted. A file that fails to parse keeps contributing its
last good resources; only its errors are reported. So does a file with a document whose identity
cannot be read, or a second document of one resource (the first one wins; both are named).

A configured path that does not exist or cannot be listed (a typo, or `mv mesh mesh.old` while a
tool replaces it) is not an empty directory: the resources last read from under it keep serving,
no delete is emitted for them, and the event's `unavailable` names the path until it is back;
then what it holds is diffed against what was served. A file deleted inside a configured
directory that is there still deletes its resources.

After a restart, `restore()` hands the adapter what its files served before (the agent's
persisted last-known-good): a file that has errors when first read, or that lies under a missing
configured path, serves that instead of nothing. A file that is gone is not brought back.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from meshagent.adapters.yamldocs import MAX_TEXT_CHARS, duplicate_error
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
Ident = tuple[str, str, str]  # (kind, namespace with the default applied, name)
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
    return list_config_files(paths)[0]


def list_config_files(paths: Iterable[Path]) -> tuple[list[Path], dict[Path, str]]:
    """find_config_files, and why each path that could not be listed was not (path -> reason)."""
    found: list[Path] = []
    unavailable: dict[Path, str] = {}
    for root in paths:
        try:
            mode = root.stat().st_mode
        except FileNotFoundError:
            unavailable[root] = f"{root} does not exist"
            continue
        except OSError as exc:
            unavailable[root] = f"{root} cannot be read: {exc.strerror or exc}"
            continue
        if not stat.S_ISDIR(mode):
            found.append(root)
            continue
        failures: list[OSError] = []
        files = _walk(root, failures.append)
        if failures:  # e.g. renamed away during the walk: not the same as empty
            failed = failures[0]
            unavailable[root] = f"{failed.filename} cannot be listed: {failed.strerror or failed}"
        else:
            found.extend(files)
    return found, unavailable


def _walk(root: Path, onerror: Callable[[OSError], None]) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_config_file(Path(f)))
    return found


def _under(path: Path, roots: Iterable[Path]) -> bool:
    text = str(path)
    return any(text == str(r) or text.startswith(str(r).rstrip(os.sep) + os.sep) for r in roots)


@dataclass(slots=True)
class _Scan:
    """One look at the configured paths: the files found and the paths that could not be read."""

    sigs: dict[Path, Sig]
    unavailable: dict[Path, str]  # configured path -> reason (naming it)

    def frozen(self, path: Path) -> bool:
        """True for a known file this scan could not see because its configured path is out."""
        return bool(self.unavailable) and path not in self.sigs and _under(path, self.unavailable)


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
    does not exist is watched too and picked up when it appears; meanwhile it is unavailable
    (module docstring). missing_ok: a path that has never existed is empty instead (for a
    default path nobody configured); once it has existed, its disappearance is unavailable.
    default_namespace: the namespace of a document without one (the normalizer's), so that
    `namespace: default` and no namespace are found to be the same resource.
    """

    name = SOURCE

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        debounce_ms: int = 100,
        poll_interval_ms: int = 200,
        loader: Loader | None = None,
        missing_ok: bool = False,
        default_namespace: str = "default",
    ) -> None:
        self._paths = tuple(Path(p) for p in paths)
        self._debounce = max(debounce_ms, 0) / 1000
        self._poll = max(poll_interval_ms, 10) / 1000
        self._load = loader or _default_loader
        self._files: dict[Path, _FileState] = {}
        self._view: dict[Key, RawResource] = {}
        self._racy: set[Path] = set()
        self._reported_duplicates: set[tuple[Ident, Path]] = set()
        self._errored: set[Path] = set()  # files whose last read had an error
        self._unavailable: dict[Path, str] = {}
        self._missing_ok = missing_ok
        self._seen_roots: set[Path] = set()  # configured paths that existed at some scan
        self._default_namespace = default_namespace
        self._owner: dict[Ident, Path] = {}  # the file each served resource comes from
        self._previous: dict[Path, dict[Key, RawResource]] = {}  # restore(), until first listing
        self._listed = False
        self._stop = asyncio.Event()

    @property
    def paths(self) -> tuple[Path, ...]:
        return self._paths

    def restore(self, resources: Iterable[RawResource]) -> None:
        """What this source served before (the persisted last-known-good), for the first
        listing only: see the module docstring. Call before watch()."""
        previous: dict[Path, dict[Key, RawResource]] = {}
        for raw in resources:
            if raw.source == SOURCE:
                path = Path(raw.provenance.location.rsplit(":", 1)[0])
                previous.setdefault(path, {})[raw.key] = raw
        self._previous = previous

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
        scan = await asyncio.to_thread(self._scan)
        yield await asyncio.to_thread(self._process, scan)
        while not self._stop.is_set():
            if await self._sleep(self._poll):
                return
            scan = await asyncio.to_thread(self._scan)
            if not await asyncio.to_thread(self._has_changes, scan):
                continue
            settled = await self._settle(scan)
            if settled is None:
                return
            before = self._unavailable
            event = await asyncio.to_thread(self._process, settled)
            changed = event.upserts or event.deletes or event.errors or event.fixed
            if changed or self._unavailable != before:
                yield event

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; True when stopped."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _settle(self, sigs: _Scan) -> _Scan | None:
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

    def _scan(self) -> _Scan:
        found, unavailable = list_config_files(self._paths)
        self._seen_roots.update(p for p in self._paths if p not in unavailable)
        if self._missing_ok:
            unavailable = {
                p: why for p, why in unavailable.items() if p in self._seen_roots or p.exists()
            }
        sigs: dict[Path, Sig] = {}
        for path in found:
            try:
                st = path.stat()
            except OSError:
                continue  # vanished between listing and stat: seen as missing this round
            sigs[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return _Scan(sigs, unavailable)

    def _has_changes(self, scan: _Scan) -> bool:
        if scan.unavailable != self._unavailable:
            return True
        sigs = scan.sigs
        known: Iterable[Path] = self._files.keys()
        if scan.unavailable:
            known = {p for p in known if not scan.frozen(p)}
        if sigs.keys() != known:  # dict_keys == set compares as sets
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

    def _process(self, scan: _Scan) -> SourceEvent:
        """Reload what changed and diff the whole view against the last one emitted."""
        errors = [
            _file_error(root, f"{reason}; what was read from it keeps serving")
            for root, reason in scan.unavailable.items()
            if self._unavailable.get(root) != reason
        ]
        # a configured path back in view: its error no longer holds
        fixed = [str(root) for root in self._unavailable if root not in scan.unavailable]
        sigs = scan.sigs
        for path in [p for p in self._files if p not in sigs and not scan.frozen(p)]:
            del self._files[path]
            self._racy.discard(path)
            if path in self._errored:
                self._errored.discard(path)
                fixed.append(str(path))
        restored = self._restore_missing(scan) if not self._listed else set()
        reread: set[Path] = set()
        for path, sig in sigs.items():
            state = self._files.get(path)
            if state is None or state.sig != sig or path in self._racy:
                reread.add(path)
                problems = self._reload(path, sig, state)
                errors.extend(problems)
                if self._now_clean(path, state, problems):
                    fixed.append(str(path))
        self._listed, self._previous = True, {}
        self._unavailable = dict(scan.unavailable)
        view, duplicates, resolved = self._merged_view(reread)
        fixed.extend(str(p) for p in sorted(resolved - self._errored))
        upserts = tuple(r for k, r in view.items() if self._view.get(k) != r)
        deletes = tuple(k for k in (*self._view, *sorted(restored)) if k not in view)
        self._view = view
        unavailable = tuple(scan.unavailable[root] for root in sorted(scan.unavailable))
        return SourceEvent(
            SOURCE, upserts, deletes, True, (*errors, *duplicates), tuple(fixed), unavailable
        )

    def _restore_missing(self, scan: _Scan) -> set[Key]:
        """First listing after restore(): files under a missing configured path serve what
        they served; the keys of every restored file under a configured path are returned,
        so that those no file has any more are deleted (a file deleted meanwhile is gone)."""
        keys: set[Key] = set()
        for path, resources in self._previous.items():
            if scan.frozen(path):
                self._files[path] = _FileState((0, 0, 0), b"", dict(resources))
            if _under(path, self._paths):
                keys.update(resources)
        return keys

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
        # A file read for the first time since a restart falls back on what it served before.
        old = state.resources if state is not None else self._previous.get(path, {})
        if sig[2] > MAX_TEXT_CHARS:
            self._files[path] = _FileState(sig, b"", old)
            return [_file_error(path, f"larger than {MAX_TEXT_CHARS} bytes; file rejected")]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []  # gone after the scan: the next scan sees it missing
        except OSError as exc:
            return [_file_error(path, f"cannot read: {exc.strerror or exc}")]
        if sig[1] >= time.time_ns() - RACY_NS:
            self._racy.add(path)
        digest = hashlib.blake2b(data).digest()
        if state is not None and state.digest == digest:
            self._files[path] = _FileState(sig, digest, old)
            return []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._files[path] = _FileState(sig, digest, old)
            return [_file_error(path, f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        resources, loaded = self._load(text, str(path))
        diagnostics = list(loaded)
        parsed: dict[Key, RawResource] = {}
        seen: dict[Ident, RawResource] = {}
        # A document whose text did not change keeps its object: the normalizer holds that
        # one, and a fresh equal copy would double the memory of every re-read file's
        # documents. Not for what was restored from last-good (digest b""): the agent tells a
        # restored document from one read since by its identity.
        kept = state.resources if state is not None and state.digest else {}
        for raw in resources:
            first = seen.setdefault(self._ident(raw.key), raw)
            if first is not raw:  # the same resource twice in one file: the first one wins
                diagnostics.append(duplicate_error(raw, first.provenance.location))
            else:
                before = kept.get(raw.key)
                parsed[raw.key] = before if before == raw else raw
        if any(d.severity == "error" for d in diagnostics):
            # Last-known-good: what parsed is applied, nothing the file had is dropped.
            parsed = {**old, **parsed}
        self._files[path] = _FileState(sig, digest, parsed)
        return diagnostics

    def _merged_view(
        self, reread: set[Path]
    ) -> tuple[dict[Key, RawResource], list[Diagnostic], set[Path]]:
        """All resources, the duplicate errors to report, and the files whose copies are gone.

        When two files define one resource, the file that served it keeps serving it, else the
        first path (sorted); the other copy is an error of its file, reported when it appears
        and whenever that file is re-read (which clears the file's errors)."""
        held: dict[Ident, tuple[RawResource, Path]] = {}
        duplicates: list[Diagnostic] = []
        copies: set[tuple[Ident, Path]] = set()
        for path in sorted(self._files):
            for key, raw in self._files[path].resources.items():
                ident = self._ident(key)
                first = held.setdefault(ident, (raw, path))
                if first[0] is raw:
                    continue
                (winner, _), (loser, loser_path) = first, (raw, path)
                if self._owner.get(ident) == path:  # it was serving: the newcomer is the copy
                    (winner, _), (loser, loser_path) = (raw, path), first
                    held[ident] = (raw, path)
                copies.add((ident, loser_path))
                if (ident, loser_path) not in self._reported_duplicates or loser_path in reread:
                    duplicates.append(duplicate_error(loser, winner.provenance.location))
        self._owner = {ident: path for ident, (_, path) in held.items()}
        gone = {path for _, path in self._reported_duplicates - copies}
        self._reported_duplicates = copies
        resolved = gone - {path for _, path in copies}
        return {raw.key: raw for raw, _ in held.values()}, duplicates, resolved

    def _ident(self, key: Key) -> Ident:
        return key[1], key[2] or self._default_namespace, key[3]
