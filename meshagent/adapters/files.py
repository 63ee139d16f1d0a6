"""The files adapter: mesh configuration from YAML files and directories, watched by polling.

Polling compares each file's (inode, mtime_ns, size) and, when those change, its content hash.
It needs no platform support and is safe with every way editors save a file: write-in-place,
write-temp-then-rename, and vim's backup-then-rename (the file is briefly missing). A change is
acted on only once the files have been quiet for the debounce window, so a burst of writes
becomes one SourceEvent. On Linux, inotify (adapters.inotify) wakes the poll at once on a
change in a watched directory; it only says "look now", so the poll's semantics are kept, and
the poll still runs every poll interval as the fallback. The events also say when waiting the
whole window is needless: a file renamed into place (IN_MOVED_TO) or closed by its writer
(IN_CLOSE_WRITE) is complete, so once no watched file is open for writing (created or modified
and not yet closed), no file read before is missing (deleted or renamed away: vim's backup
rename, a directory swap under way) or emptied (truncated, to be written by another open) and
every configured path is there, the files need only be quiet for SETTLE_S, which gathers the
rest of a burst (see _settle_until). A file cut short otherwise by a writer that reopens it is
taken as it is when closed.

Cost follows the change: a file is re-read only when its signature changed, within it only the
documents ('---'-separated) whose text or first line changed are parsed again (see _parse), and
the merged view is updated for the resources that changed only (see _merged_view).

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
import bisect
import hashlib
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

from meshagent.adapters import yamldocs
from meshagent.adapters.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    Event,
    Inotify,
)
from meshagent.adapters.notify import close_notify, nearest_existing_parent, wait_for_change
from meshagent.adapters.yamldocs import MAX_TEXT_CHARS, duplicate_error, read_config_bytes
from meshagent.gcpause import paused_gc
from meshagent.model.source import Diagnostic, RawResource, SourceEvent

SOURCE = "files"
SUFFIXES = (".yaml", ".yml")
# A file modified this recently may change again within the same mtime tick without its size
# changing; such files are re-hashed on every poll until they age out (git's "racy" check).
RACY_NS = 2_000_000_000
# However busy the files are, an event is produced at least this many debounce windows after
# the first change was seen, so that a file rewritten forever cannot starve the mesh.
MAX_DEBOUNCE_WINDOWS = 20
# With inotify, how long the files must be quiet after changes that are complete (see the
# module docstring), instead of the debounce window: enough to gather a burst of renames.
SETTLE_S = 0.005

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


def _walk_directories(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / d for d in dirnames)
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


# (first line, 0-based; text) of one '---'-separated document -> the resources read from it
Chunks = dict[tuple[int, str], list[RawResource]]
# What each document built (yamldocs.tally): YAML nodes, and of them those built through an
# alias; a document missing counts none (a loader that is not yamldocs').
Counts = dict[tuple[int, str], tuple[int, int]]
_MARKER = re.compile(r"^---[ \t]*\r?$", re.MULTILINE)
# Lines that make splitting at '---' lines unsafe: directives, document ends, content on a
# marker line ('--- !tag', '--- |'): such texts are always read whole.
_UNSPLITTABLE = re.compile(r"^(?:%|\.\.\.|---[ \t]*[^ \t\r\n])", re.MULTILINE)
# A text with more changed documents than this share is read whole (faster in one go).
REPARSE_SHARE = 0.25
# An anchor or alias where YAML would take it as one (conservative: a false match only costs
# a whole read). yamldocs' per-text bounds (nodes, what aliases add) are kept by the counts of
# each document (_FileState.counts): a text whose re-read might pass them is read whole.
_ALIAS = re.compile(r"(?:^|[\s\[{,:-])[&*][^\s,\]}]")
_BOM = "\ufeff"


def _readable_alone(chunk: tuple[int, str]) -> bool:
    """Whether a document read alone reads as it does within its text: not when it has an
    alias (_ALIAS), nor when it starts with a byte order mark after the text's first line
    (YAML skips one only where the stream starts: within a text it is an error)."""
    line, body = chunk
    return not _ALIAS.search(body) and not (line and body.startswith(_BOM))


def split_documents(text: str) -> list[tuple[int, str]] | None:
    """The text's documents as (first line, 0-based; text) between '---' lines; None when
    the text cannot be split safely that way (_UNSPLITTABLE: a line that starts with '%',
    '...', or '---' and more). The lines that start with '---' are found with str.find (a
    MULTILINE regex over a 10k-document text took ~20 ms)."""
    return _split(text)[0]


def _split(text: str) -> tuple[list[tuple[int, str]] | None, bool]:
    """_split_documents, and whether text is plain (_split_plain: each document is followed
    by exactly '---' and a newline, but the last)."""
    directive_or_end = text.startswith(("%", "...")) or "\n%" in text or "\n..." in text
    if directive_or_end and _UNSPLITTABLE.search(text):
        return None, False
    fast = _split_plain(text)
    if fast is not None:
        return fast, True
    return _split_lines(text), False


def _split_lines(text: str) -> list[tuple[int, str]] | None:
    chunks: list[tuple[int, str]] = []
    start = line = 0
    find, count = text.find, text.count
    at_start = text.startswith("---")
    pos = 0 if at_start else find("\n---")
    if pos >= 0 and not at_start:
        pos += 1
    while pos >= 0:  # pos: a line that starts with '---'
        eol = find("\n", pos + 3)
        end = len(text) if eol < 0 else eol
        rest = text[pos + 3 : end].lstrip(" \t")
        if not rest or rest == "\r":  # a marker (_MARKER)
            chunks.append((line, text[start:pos]))
            line += count("\n", start, end) + 1
            start = end + 1
        elif rest[0] != "\r":
            return None  # '---' and content on one line (_UNSPLITTABLE)
        if eol < 0:
            break
        pos = find("\n---", eol)
        if pos >= 0:
            pos += 1
    chunks.append((line, text[start:]))
    return chunks


def _split_plain(text: str) -> list[tuple[int, str]] | None:
    """_split_documents of a text whose every line that starts with '---' is exactly '---'
    (what tools write), with str.split; None for any other text."""
    if "\r" in text or text.startswith("---") or text.endswith("\n---"):
        return None
    if text.count("\n---") != text.count("\n---\n"):
        return None  # '--- ' or '---x' or two markers in a row: the general way
    pieces = text.split("\n---\n")
    chunks: list[tuple[int, str]] = []
    line = 0
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        if i < last:
            chunks.append((line, piece + "\n"))
            line += piece.count("\n") + 2
        else:
            chunks.append((line, piece))
    return chunks


def _hint(state: _FileState | None, before: dict[Key, RawResource]) -> set[Key] | None:
    """The keys whose resource differs between before and state's (_patch), when state says
    so relative to before; None: compare them all."""
    if state is None or state.changed is None or state.base is not before:
        return None
    after = state.resources
    return state.changed if all(k in before and k in after for k in state.changed) else None


def _starts(order: list[tuple[int, str]]) -> list[int]:
    """Where each document of a plain text starts (each is followed by '---' and a newline)."""
    starts, at = [], 0
    for _, chunk in order:
        starts.append(at)
        at += len(chunk) + 4
    return starts


_BLOCK = 1 << 16


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of a and b (compared a block at a time, then
    by halves: C-speed comparisons, a few dozen of them)."""
    lo, most = 0, min(len(a), len(b))
    while lo < most and a[lo : lo + _BLOCK] == b[lo : lo + _BLOCK]:
        lo += _BLOCK
    hi = min(lo + _BLOCK, most)
    while hi - lo > 1:  # a[:lo] == b[:lo]; they differ before hi (or hi == most)
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return hi if hi == most and a[lo:hi] == b[lo:hi] else lo


def _common_suffix(a: str, b: str, most: int) -> int:
    """The length of the longest common suffix of a and b, at most most."""
    la, lb = len(a), len(b)
    lo = 0
    while lo < most:
        size = min(lo + _BLOCK, most)
        if a[la - size : la - lo] != b[lb - size : lb - lo]:
            break
        lo = size
    hi = min(lo + _BLOCK, most)
    while hi - lo > 1:  # the last lo characters are common; not the last hi (or hi == most)
        mid = (lo + hi) // 2
        if a[la - mid : la - lo] == b[lb - mid : lb - lo]:
            lo = mid
        else:
            hi = mid
    return hi if hi > lo and a[la - hi : la - lo] == b[lb - hi : lb - lo] else lo


def _shift(raw: RawResource, lines: int) -> RawResource:
    """raw, read from a document alone, located where that document starts in its file."""
    path, _, line = raw.provenance.location.rpartition(":")
    if not path or not line.isdigit():
        return raw
    provenance = replace(raw.provenance, location=f"{path}:{int(line) + lines}")
    moved = {field: number + lines for field, number in raw.lines.items()}
    return replace(raw, provenance=provenance, lines=moved)


def _line(raw: RawResource) -> int:
    line = raw.provenance.location.rpartition(":")[2]
    return int(line) if line.isdigit() else 0


@dataclass(slots=True)
class _FileState:
    sig: Sig
    digest: bytes
    resources: dict[Key, RawResource] = field(default_factory=dict)
    chunks: Chunks = field(default_factory=dict)  # of the last text read cleanly
    # A plain text (_split_plain) read cleanly, each of its resources once: the text, its
    # documents in order and where each starts (for _patched: "" when not so).
    text: str = ""
    order: list[tuple[int, str]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    # The keys whose resource is not the very object of base (the resources this state
    # replaced), for _merged_view; None: not known.
    base: dict[Key, RawResource] | None = None
    changed: set[Key] | None = None
    # What the documents of chunks built (Counts), and the text's totals.
    counts: Counts = field(default_factory=dict)
    nodes: int = 0
    expanded: int = 0


def _beyond(nodes: int, expanded: int) -> bool:
    """Whether a text of these totals may be beyond yamldocs' bounds, which a whole read
    checks as it goes (_Budget): more nodes than MAX_NODES, or enough built through aliases
    that a shorter text before them could pass the alias budget. Such a text is read whole,
    so that it is rejected (or not) exactly as a fresh read of it."""
    return nodes > yamldocs.MAX_NODES or expanded > yamldocs.ALIAS_FLOOR


def _other_links(path: Path) -> bool:
    """Whether path has other hard links: a write through one of them (outside the watched
    directories, maybe) raises no inotify event in path's directory."""
    try:
        return os.stat(path).st_nlink > 1
    except OSError:
        return False


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
        # read through a symlink, or with other hard links (see _has_changes)
        self._linked: set[Path] = set()
        # The merged view, kept up to date by _merged_view from the files that changed:
        self._merged: dict[Path, dict[Key, RawResource]] = {}  # each file's resources, merged
        self._definers: dict[Ident, dict[Path, RawResource]] = {}  # the files defining each
        self._held: dict[Ident, tuple[RawResource, Path]] = {}  # what serves, from which file
        self._copies: dict[Ident, set[Path]] = {}  # the files holding an ignored copy
        self._copied: dict[Path, set[Ident]] = {}  # each file's ignored copies
        self._errored: set[Path] = set()  # files whose last read had an error
        self._unavailable: dict[Path, str] = {}
        self._missing_ok = missing_ok
        self._seen_roots: set[Path] = set()  # configured paths that existed at some scan
        self._default_namespace = default_namespace
        self._previous: dict[Path, dict[Key, RawResource]] = {}  # restore(), until first listing
        self._listed = False
        self._stop = asyncio.Event()
        self._inotify: Inotify | None = None
        # Whether inotify watches every directory that was asked (not when the kernel refused
        # one, e.g. at the per-user watch limit): only then are its events the whole story.
        self._watching_all = True
        self._notified: asyncio.Event | None = None  # set by inotify, cleared when looked at
        self._names: set[str] = set()
        # What inotify told of the writers (see _note): the files open for writing, as
        # (watch, name) -> when (loop time) they were last written, and when events were last
        # lost (queue overflow).
        self._writing: dict[tuple[int, str], float] = {}
        self._lost_at = float("-inf")

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
        self._start_notify()
        try:
            scan = await asyncio.to_thread(self._scan, True)
            yield await asyncio.to_thread(self._process_paused, scan)
            while not self._stop.is_set():
                woke = await self._wait(self._poll)
                if woke is None:
                    return
                scan = await asyncio.to_thread(self._scan, woke)
                if not await asyncio.to_thread(self._has_changes, scan, woke):
                    continue
                settled = await self._settle(scan, told=woke)
                if settled is None:
                    return
                before = self._unavailable
                event = await asyncio.to_thread(self._process_paused, settled)
                changed = event.upserts or event.deletes or event.errors or event.fixed
                if changed or self._unavailable != before:
                    yield event
        finally:
            self._stop_notify()

    def _start_notify(self) -> None:
        """Wake on inotify where it works; the poll runs all the same (the fallback)."""
        self._stop_notify()
        notify = Inotify.open()
        if notify is None:
            return
        self._inotify, self._notified = notify, asyncio.Event()
        self._writing, self._lost_at = {}, float("-inf")
        self._names = {p.absolute().name for p in self._paths}  # configured, seen from parents
        asyncio.get_running_loop().add_reader(notify.fd, self._on_notify)

    def _on_notify(self) -> None:
        if self._inotify is None or self._notified is None:
            return
        events = self._inotify.drain()
        if events is None:  # (lost events) unknown writers: settle the whole window
            self._writing.clear()
            self._lost_at = asyncio.get_running_loop().time()
            self._notified.set()
        elif self._note(events, asyncio.get_running_loop().time()):
            self._notified.set()

    def _note(self, events: list[Event], now: float) -> bool:
        """Keep track of the files open for writing (created or modified, not yet closed);
        True when one of the events may change what is read."""
        relevant = False
        for event in events:
            mask, at = event.mask, (event.wd, event.name)
            if mask & IN_IGNORED:  # the watch is gone, and what it saw open with it
                self._writing = {w: t for w, t in self._writing.items() if w[0] != event.wd}
                continue
            if not self._relevant(event):
                continue
            relevant = True
            if not event.name or mask & IN_ISDIR:
                continue
            if mask & (IN_CREATE | IN_MODIFY):
                self._writing[at] = now
            elif mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE):
                self._writing.pop(at, None)  # complete, or no longer read under this name
        return relevant

    def _relevant(self, event: Event) -> bool:
        """Whether an event may change what is read: not one about an editor's scratch file
        or, in a configured path's parent directory, a sibling (a busy log next to mesh.yaml
        must not make the adapter look at the files on every write)."""
        name = event.name
        if not name or event.mask & IN_ISDIR or name.startswith(".."):  # ..data: ConfigMap swap
            return True
        return is_config_file(Path(name)) or name in self._names

    def _stop_notify(self) -> None:
        close_notify(self._inotify)
        self._inotify = self._notified = None

    async def _wait(self, seconds: float) -> bool | None:
        """Wait for a change notification (True), the timeout (False) or stop (None)."""
        return await wait_for_change(self._stop, self._notified, seconds)

    async def _settle(self, sigs: _Scan, *, told: bool = False) -> _Scan | None:
        """Wait until the files stop changing for one debounce window (bounded), or SETTLE_S
        when inotify says the changes are complete (_settle_until); None on stop.

        With inotify the files are looked at again when told of a change (or after a poll
        interval), so the window ends one debounce after the last change; without, they are
        looked at every min(poll, debounce). told: inotify told of the change; a change only
        the poll saw (a symlink's target outside the watched directories) gets the whole
        window, as does one seen so while settling."""
        loop = asyncio.get_running_loop()
        quiet_since = started = loop.time()
        limit = started + max(self._debounce * MAX_DEBOUNCE_WINDOWS, self._poll)
        step = min(self._poll, self._debounce) if self._debounce > 0 else 0
        while (now := loop.time()) < limit:
            until = self._settle_until(sigs, quiet_since, told)
            if now >= until:
                break
            if self._notified is not None:
                step = max(0.0, min(self._poll, until - now))
            woke = await self._wait(step)
            if woke is None:
                return None
            current = await asyncio.to_thread(self._scan, woke)
            if current != sigs:
                sigs, quiet_since, told = current, loop.time(), told and woke
        return sigs

    def _settle_until(self, sigs: _Scan, quiet_since: float, told: bool) -> float:
        """When the files, quiet since quiet_since, are settled: one debounce window later,
        unless inotify says the changes are complete (module docstring): SETTLE_S later then."""
        full = quiet_since + self._debounce
        if not told or self._inotify is None or self._notified is None or sigs.unavailable:
            return full
        if not self._watching_all:
            return full
        self._on_notify()  # (the events not yet read: a writer that just began)
        if self._writing_now() or self._vanished(sigs) or self._emptied(sigs):
            return full
        return min(full, max(quiet_since + SETTLE_S, self._lost_at + self._debounce))

    def _writing_now(self) -> bool:
        """Whether a file is open for writing and was written within the debounce window.
        A created entry that is never closed (a symlink, a hard link: no open for writing)
        or a writer quiet for the window (polling takes its file as it is then) is let go,
        so that it does not make every later change wait the whole window."""
        if self._writing:
            since = asyncio.get_running_loop().time() - self._debounce
            self._writing = {w: t for w, t in self._writing.items() if t > since}
        return bool(self._writing)

    def _vanished(self, scan: _Scan) -> bool:
        """Whether a file that was read is missing (deleted, or renamed away as vim does
        before writing the new version): its replacement may be on its way."""
        return any(p not in scan.sigs and not scan.frozen(p) for p in self._files)

    def _emptied(self, scan: _Scan) -> bool:
        """Whether a file that was read with content is empty now: truncated (`: > f`, a
        tool that truncates and reopens), its new text may be on its way by another open."""
        files = self._files
        return any(
            sig[2] == 0 and (state := files.get(path)) is not None and state.sig[2] > 0
            for path, sig in scan.sigs.items()
        )

    def _scan(self, rewatch: bool = False) -> _Scan:
        """Look at the files; rewatch: also bring the inotify watches up to date first."""
        if rewatch and self._inotify is not None:
            self._watching_all = self._inotify.watch(self._watched_directories())
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

    def _watched_directories(self) -> set[Path]:
        """The directories whose changes can change what is read: every (non-hidden) directory
        under a configured one, and the nearest existing parent of each configured path (it
        sees the path created, renamed or swapped)."""
        found: set[Path] = set()
        for root in self._paths:
            found.add(nearest_existing_parent(root))
            if root.is_dir():
                found.add(root)
                found.update(_walk_directories(root))
        return found

    def _has_changes(self, scan: _Scan, told: bool = True) -> bool:
        """Whether scan differs from what was read, or a racy file's text changed. told:
        inotify woke us; on a poll it did not, a racy file inotify sees every write of (no
        symlink or other hard link: a write through a name outside the watched directories
        is seen by the poll only; every directory watched) is not read again (a 10k-entry
        file: ~3 ms a poll for RACY_NS after a change)."""
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
        old = time.time_ns() - RACY_NS
        self._racy = {p for p in self._racy if p in self._files and self._files[p].sig[1] >= old}
        trusted = self._inotify is not None and self._watching_all
        racy = [p for p in self._racy if told or not trusted or p in self._linked]
        return any(self._content_changed(p) for p in racy)

    def _content_changed(self, path: Path) -> bool:
        state = self._files.get(path)
        if state is None or state.sig[1] < time.time_ns() - RACY_NS:
            self._racy.discard(path)
            return False
        try:
            return hashlib.blake2b(read_config_bytes(path)).digest() != state.digest
        except OSError:
            return True

    def _process_paused(self, scan: _Scan) -> SourceEvent:
        """_process with the cyclic GC paused (meshagent.gcpause: re-reading a 10k-document
        file makes tens of thousands of objects, none in a cycle)."""
        with paused_gc():
            return self._process(scan)

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
            self._linked.discard(path)
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
        upserts, deletes, duplicates, resolved = self._merged_view(reread)
        fixed.extend(str(p) for p in sorted(resolved - self._errored))
        deletes += [k for k in sorted(restored) if k not in self._view and k not in deletes]
        unavailable = tuple(scan.unavailable[root] for root in sorted(scan.unavailable))
        reported = (*errors, *duplicates)
        return SourceEvent(
            SOURCE, tuple(upserts), tuple(deletes), True, reported, tuple(fixed), unavailable
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
            # Bounded, and from a regular file only: a FIFO named *.yaml would block the
            # source forever, a symlink to /dev/zero would fill the memory.
            data = read_config_bytes(path)
        except FileNotFoundError:
            return []  # gone after the scan: the next scan sees it missing
        except OSError as exc:
            return [_file_error(path, f"cannot read: {exc.strerror or exc}")]
        if len(data) > MAX_TEXT_CHARS:  # it grew after the scan's stat
            self._files[path] = _FileState(sig, b"", old)
            return [_file_error(path, f"larger than {MAX_TEXT_CHARS} bytes; file rejected")]
        if sig[1] >= time.time_ns() - RACY_NS:
            self._racy.add(path)
            if os.path.islink(path) or _other_links(path):
                self._linked.add(path)
            else:
                self._linked.discard(path)
        digest = hashlib.blake2b(data).digest()
        if state is not None and state.digest == digest:
            self._files[path] = replace(state, sig=sig, base=None, changed=None)  # same text
            return []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._files[path] = _FileState(sig, digest, old)
            return [_file_error(path, f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        patched = self._patched(text, str(path), state)
        if patched is not None:
            self._files[path] = replace(patched, sig=sig, digest=digest)
            return []
        resources, loaded, chunks, counts, plain = self._parse(text, str(path), state)
        diagnostics = list(loaded)
        parsed: dict[Key, RawResource] = {}
        seen: dict[Ident, RawResource] = {}
        # A document whose text did not change keeps its object: the normalizer holds that
        # one, and a fresh equal copy would double the memory of every re-read file's
        # documents. Not for what was restored from last-good (digest b""): the agent tells a
        # restored document from one read since by its identity.
        kept = state.resources if state is not None and state.digest else {}
        ident = self._ident
        for raw in resources:
            key = raw.key
            first = seen.setdefault(ident(key), raw)
            if first is not raw:  # the same resource twice in one file: the first one wins
                diagnostics.append(duplicate_error(raw, first.provenance.location))
            else:
                before = kept.get(key)
                parsed[key] = before if before is raw or before == raw else raw
        if any(d.severity == "error" for d in diagnostics):
            # Last-known-good: what parsed is applied, nothing the file had is dropped.
            parsed = {**old, **parsed}
        nodes = sum(n for n, _ in counts.values())
        expanded = sum(e for _, e in counts.values())
        new = _FileState(sig, digest, parsed, chunks, counts=counts, nodes=nodes, expanded=expanded)
        if plain and not diagnostics and chunks and len(parsed) == len(resources):
            order = list(chunks)  # (in the text's order: see _parse)
            new = replace(new, text=text, order=order, starts=_starts(order))
        self._files[path] = new
        return diagnostics

    def _load_counted(
        self, text: str, path: str
    ) -> tuple[list[RawResource], list[Diagnostic], tuple[int, int]]:
        """The loader's reading of text, and what it built (nodes, of them through aliases)."""
        with yamldocs.tally() as tallied:
            resources, problems = self._load(text, path)
        return resources, problems, (sum(t[1] for t in tallied), sum(t[2] for t in tallied))

    def _patched(self, text: str, path: str, state: _FileState | None) -> _FileState | None:
        """The state of text when it is state's plain text with a few documents changed in
        place (their lines, and every other document, unchanged): the documents around the
        changed characters are read again, the others are state's, at the cost of the change
        (no pass over every document: a 10k-document file rewritten for one change). None
        when that does not hold: the caller reads the text the usual way."""
        if state is None or not state.text or not state.digest:
            return None
        old, starts, order = state.text, state.starts, state.order
        head = _common_prefix(old, text)
        tail = _common_suffix(old, text, min(len(old), len(text)) - head)
        if old.count("\n", head, len(old) - tail) != text.count("\n", head, len(text) - tail):
            return None  # lines added or removed: the documents after them move
        first = max(bisect.bisect_right(starts, head) - 2, 0)
        last = min(bisect.bisect_right(starts, len(old) - tail) + 1, len(order))  # kept
        end = starts[last] + len(text) - len(old) if last < len(order) else len(text)
        region = text[starts[first] : end]
        split, plain = _split(region)
        if split is None or not plain:
            return None
        if last < len(order):
            if split[-1][1] != "":
                return None
            split.pop()  # (what follows the region's last '---': the first document kept)
        if len(split) > max(1, int(len(order) * REPARSE_SHARE)):
            return None
        line = order[first][0]
        new_chunks = [(line + n, chunk) for n, chunk in split]
        gone = order[first:last]
        if [c[0] for c in new_chunks] != [c[0] for c in gone]:
            return None  # documents added or removed
        return self._patch(state, text, path, first, last, new_chunks)

    def _patch(
        self,
        state: _FileState,
        text: str,
        path: str,
        first: int,
        last: int,
        new_chunks: list[tuple[int, str]],
    ) -> _FileState | None:
        """state with its documents first..last-1 replaced by new_chunks (same lines), read;
        None when one of them has problems, aliases or other keys than before."""
        cached, gone = state.chunks, state.order[first:last]
        got: list[list[RawResource]] = []
        counted: list[tuple[int, int]] = []
        for chunk in new_chunks:
            found = cached.get(chunk)
            if found is None:
                if not _readable_alone(chunk):
                    return None
                resources, problems, count = self._load_counted(chunk[1], path)
                if problems or any(_line(raw) == 0 for raw in resources):
                    return None
                found = [_shift(raw, chunk[0]) for raw in resources]
            else:
                count = state.counts.get(chunk, (0, 0))
            got.append(found)
            counted.append(count)
        before = [raw.key for chunk in gone for raw in cached[chunk]]
        if [raw.key for found in got for raw in found] != before:
            return None
        # The text's totals as a whole read counts them. The documents read alone have no
        # aliases: past any point of the text, no more is built through aliases than in the
        # last text (which a whole read accepted), and no less in all when no document
        # shrank; only then can the alias budget not be passed midway.
        was = [state.counts.get(chunk, (0, 0)) for chunk in gone]
        nodes = state.nodes + sum(n for n, _ in counted) - sum(n for n, _ in was)
        expanded = state.expanded + sum(e for _, e in counted) - sum(e for _, e in was)
        if nodes > yamldocs.MAX_NODES:
            return None
        if expanded > yamldocs.ALIAS_FLOOR and any(
            new[0] < old[0] for new, old in zip(counted, was, strict=True)
        ):
            return None
        parsed, changed = dict(state.resources), set()
        for found in got:
            for raw in found:
                kept = parsed[raw.key]
                if kept is not raw and kept != raw:
                    parsed[raw.key] = raw
                    changed.add(raw.key)
        chunks = dict(cached)
        for chunk in gone:
            del chunks[chunk]
        chunks.update(zip(new_chunks, got, strict=True))
        counts = dict(state.counts)
        for chunk in gone:
            counts.pop(chunk, None)
        counts.update(zip(new_chunks, counted, strict=True))
        order = [*state.order[:first], *new_chunks, *state.order[last:]]
        starts = state.starts[: first + 1]
        for chunk in new_chunks[:-1]:
            starts.append(starts[-1] + len(chunk[1]) + 4)
        shift = len(text) - len(state.text)
        starts.extend(at + shift for at in state.starts[last:])
        return replace(
            state,
            resources=parsed,
            chunks=chunks,
            text=text,
            order=order,
            starts=starts,
            base=state.resources,
            changed=changed,
            counts=counts,
            nodes=nodes,
            expanded=expanded,
        )

    def _parse(
        self, text: str, path: str, state: _FileState | None
    ) -> tuple[list[RawResource], list[Diagnostic], Chunks, Counts, bool]:
        """The resources of text, reading again only the documents that changed since the
        last clean read (a document at the same line with the same text is not re-read);
        whether the text is plain (_split_plain).

        Any problem in a changed document, and every first read, reads the whole text (the
        per-text bounds of yamldocs apply to it, and a syntax error anywhere yields nothing);
        the documents of a clean read are kept for the next one, in the text's order, with
        what each built (a text whose totals might pass the bounds is read whole: _beyond)."""
        split, plain = _split(text)
        cached = state.chunks if state is not None else {}
        was = state.counts if state is not None else {}
        if split is not None and cached:
            misses = [chunk for chunk in split if chunk not in cached]
            alone = all(_readable_alone(chunk) for chunk in misses)
            if alone and len(misses) <= max(1, int(len(split) * REPARSE_SHARE)):
                chunks: Chunks = {}
                counts: Counts = {}
                for chunk in split:
                    got = cached.get(chunk)
                    if got is None:
                        resources, problems, count = self._load_counted(chunk[1], path)
                        if problems:
                            break
                        got = [_shift(raw, chunk[0]) for raw in resources]
                    else:
                        count = was.get(chunk, (0, 0))
                    chunks[chunk] = got
                    counts[chunk] = count
                else:
                    nodes = sum(n for n, _ in counts.values())
                    if not _beyond(nodes, sum(e for _, e in counts.values())):
                        found = [raw for got in chunks.values() for raw in got]
                        return found, [], chunks, counts, plain
        with yamldocs.tally() as tallied:
            resources, problems = self._load(text, path)
        if problems or split is None:
            return resources, problems, {}, {}, False
        if any(_line(raw) == 0 for raw in resources):
            return resources, problems, {}, {}, False  # no line to tell its document: read whole
        chunks = {chunk: [] for chunk in split}
        starts = [first for first, _ in split]
        for raw in resources:  # each resource to the document holding its first line
            index = bisect.bisect_left(starts, _line(raw)) - 1
            chunks[split[max(index, 0)]].append(raw)
        counts = {}
        for line, nodes, expanded in tallied:  # and what it built, the same way
            chunk = split[max(bisect.bisect_left(starts, line) - 1, 0)]
            n, e = counts.get(chunk, (0, 0))
            counts[chunk] = (n + nodes, e + expanded)
        return resources, problems, chunks, counts, plain

    def _merged_view(
        self, reread: set[Path]
    ) -> tuple[list[RawResource], list[Key], list[Diagnostic], set[Path]]:
        """The upserts and deletes since the last call, the duplicate errors to report, and
        the files whose copies are gone; only the resources that are not the very objects of
        the last call are looked at, and a re-read file's copies (cost follows the change,
        not the mesh nor the size of the changed file).

        When two files define one resource, the file that served it keeps serving it, else the
        first path (sorted); the other copy is an error of its file, reported when it appears
        and whenever that file is re-read (which clears the file's errors)."""
        changed = [
            path
            for path in sorted(self._merged.keys() | self._files.keys())
            if (self._files[path].resources if path in self._files else None)
            is not self._merged.get(path)
        ]
        affected: dict[Ident, None] = {}  # in path and document order
        for path in changed:  # only resources not the very same object as before
            before = self._merged.pop(path, {})
            state = self._files.get(path)
            after = state.resources if state is not None else {}
            hint = _hint(state, before)  # (the keys that can differ, when known)
            olds = before.items() if hint is None else [(k, before[k]) for k in hint]
            for key, raw in olds:
                if after.get(key) is not raw:
                    ident = self._ident(key)
                    definers = self._definers.get(ident)
                    if definers is not None and definers.get(path) is raw:
                        del definers[path]
                    affected[ident] = None
            if state is None:
                continue
            self._merged[path] = after
            news = after.items() if hint is None else [(k, after[k]) for k in hint]
            for key, raw in news:
                if before.get(key) is not raw:
                    ident = self._ident(key)
                    self._definers.setdefault(ident, {}).setdefault(path, raw)
                    affected[ident] = None
        for path in sorted(reread):  # a re-read file's copies are reported again
            affected.update(dict.fromkeys(sorted(self._copied.get(path, ()))))
        upserts: list[RawResource] = []
        deletes: list[Key] = []
        duplicates: list[Diagnostic] = []
        gone: set[Path] = set()
        for ident in affected:
            old = self._held.get(ident)
            definers = self._definers.get(ident) or {}
            old_copies = self._copies.pop(ident, set())
            for path in old_copies:
                self._copied[path].discard(ident)
            gone.update(old_copies)
            if not definers:
                self._definers.pop(ident, None)
                if old is not None:
                    del self._held[ident]
                    self._view.pop(old[0].key, None)
                    deletes.append(old[0].key)
                continue
            owner = old[1] if old is not None and old[1] in definers else min(definers)
            raw = definers[owner]
            self._held[ident] = (raw, owner)
            if old is not None and old[0].key != raw.key:
                self._view.pop(old[0].key, None)
                deletes.append(old[0].key)
            if self._view.get(raw.key) != raw:
                self._view[raw.key] = raw
                upserts.append(raw)
            copies = {path for path in definers if path != owner}
            for path in sorted(copies):
                self._copied.setdefault(path, set()).add(ident)
                if path not in old_copies or path in reread:
                    duplicates.append(duplicate_error(definers[path], raw.provenance.location))
            if copies:
                self._copies[ident] = copies
        resolved = {path for path in gone if not self._copied.get(path)}
        for path in resolved:
            self._copied.pop(path, None)
        return upserts, deletes, duplicates, resolved

    def _ident(self, key: Key) -> Ident:
        return key[1], key[2] or self._default_namespace, key[3]
