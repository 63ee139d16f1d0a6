"""The credentials adapter: TLS credentials from directories, one directory per credential.

`<path>/<name>/` holds a credential named `<name>` (what a Gateway's or DestinationRule's
`credentialName` names), in the configured namespace: `tls.crt` and `tls.key`, optionally
`ca.crt` and `ca.crl`; Istio's generic Secret names (`cert`, `key`, `cacert`, `crl`) work too.
A directory with only a CA bundle (e.g. `<name>-cacert/ca.crt`) is a CA-only credential. Each
is emitted as a RawResource shaped like a Kubernetes Secret (kind `Secret`, the files' text
under `stringData`): the normalizer converts and checks both sources with one converter
(normalize/credentials.py). Other files are not read.

Changes are found as the files adapter finds them: a poll of each file's (inode, mtime, size),
woken at once by inotify where it works, a debounce window so that a burst of writes (the
certificate, then the key) becomes one event, and content hashes so that a rewrite with the
same content is no change. A credential is read consistently: its files are stat'ed again after
reading and, if anything moved meanwhile (a rename, a Kubernetes `..data` symlink swap), read
again at the next look, never emitted half old, half new. Files are followed through symlinks,
so a Kubernetes Secret volume (`tls.crt -> ..data/tls.crt`) works as mounted.

A configured path that is missing or cannot be listed is not an empty set: its credentials keep
serving, no delete is emitted, and the event's `unavailable` names it until it is back. A
credential directory removed from a path that is there deletes its credential.

Private keys are kept in memory only: this source is not in the agent's persisted last good
(agent/lastgood.py), so after a restart the files are read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from meshagent.adapters.inotify import Inotify
from meshagent.adapters.notify import close_notify, nearest_existing_parent, wait_for_change
from meshagent.model.source import Diagnostic, Provenance, RawResource, SourceEvent

SOURCE = "credentials"
FILE_NAMES = ("tls.crt", "tls.key", "ca.crt", "ca.crl", "cert", "key", "cacert", "crl")
NOT_CREDENTIALS = frozenset({"lost+found"})  # what a mounted filesystem's root holds anyway
MAX_FILE_BYTES = 1 << 20  # a certificate chain or CRL far beyond any real one
RACY_NS = 2_000_000_000  # as the files adapter: recent files are hashed on every look
MAX_DEBOUNCE_WINDOWS = 20

Key = tuple[str, str, str, str]
FileSig = tuple[str, int, int, int]  # (name, inode, mtime_ns, size), through symlinks
DirSig = tuple[int, tuple[FileSig, ...]]  # (the directory's inode, its credential files)


@dataclass(slots=True)
class _Scan:
    dirs: dict[Path, DirSig]  # credential directory -> signature
    unavailable: dict[Path, str]  # configured path -> why it cannot be listed
    unreadable: dict[Path, str]  # credential directory -> why it cannot be listed
    # a credential directory whose name an earlier configured path has -> that directory
    duplicates: dict[Path, Path] = field(default_factory=dict)


@dataclass(slots=True)
class _Served:
    sig: DirSig
    digest: bytes
    racy: bool


def _file_sigs(directory: Path) -> tuple[FileSig, ...]:
    sigs: list[FileSig] = []
    with os.scandir(directory) as entries:  # one listing, then a stat of what is there
        present = {e.name for e in entries}
    for name in FILE_NAMES:
        if name not in present:
            continue
        try:
            st = os.stat(directory / name)  # through the ..data symlinks of a Secret volume
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            sigs.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(sigs)


def scan_paths(paths: Iterable[Path]) -> _Scan:
    """Look at every configured path's credential directories (hidden names skipped, and a
    filesystem's lost+found)."""
    out = _Scan({}, {}, {})
    first: dict[str, Path] = {}
    for root in paths:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except FileNotFoundError:
            out.unavailable[root] = f"{root} does not exist"
            continue
        except OSError as exc:
            out.unavailable[root] = f"{root} cannot be listed: {exc.strerror or exc}"
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name in NOT_CREDENTIALS:
                continue
            try:
                if not entry.is_dir():  # through a symlink too
                    continue
                directory = Path(entry.path)
                if first.setdefault(entry.name, directory) != directory:
                    out.duplicates[directory] = first[entry.name]
                    continue
                out.dirs[directory] = (os.stat(directory).st_ino, _file_sigs(directory))
            except FileNotFoundError:
                continue  # gone while looking: seen as gone
            except OSError as exc:
                out.unreadable[Path(entry.path)] = f"cannot be read: {exc.strerror or exc}"
    return out


def read_credential(directory: Path, sig: DirSig) -> dict[str, str] | None:
    """The text of each credential file, or None when the directory changed while it was
    read (look again later). OSError when a file cannot be read; ValueError when too large."""
    texts: dict[str, str] = {}
    for name, _, _, size in sig[1]:
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{directory / name}: larger than {MAX_FILE_BYTES} bytes")
        try:
            # Bounded even when the file grew after it was stat'ed (the signature check below
            # would only then see it): never a whole huge file read into memory.
            with (directory / name).open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"{directory / name}: larger than {MAX_FILE_BYTES} bytes")
        texts[name] = data.decode("utf-8", errors="replace")  # the converter wants ASCII PEM
    try:
        again = (os.stat(directory).st_ino, _file_sigs(directory))
    except FileNotFoundError:
        return None
    return texts if again == sig else None


def secret_of(directory: Path, namespace: str, texts: dict[str, str]) -> RawResource:
    """A credential directory as a Kubernetes-shaped Secret."""
    name = directory.name
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls" if "tls.crt" in texts else "Opaque",
        "stringData": dict(sorted(texts.items())),
    }
    provenance = Provenance(SOURCE, str(directory), "Secret", namespace, name)
    return RawResource(SOURCE, "Secret", "v1", namespace, name, body, provenance)


class CredentialsAdapter:
    """Watches credential directories; see the module docstring."""

    name = SOURCE

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        namespace: str,
        debounce_ms: int = 100,
        poll_interval_ms: int = 200,
    ) -> None:
        self._paths = tuple(paths)
        self._namespace = namespace
        self._debounce = debounce_ms / 1000
        self._poll = poll_interval_ms / 1000
        self._served: dict[Path, _Served] = {}
        self._keys: dict[Path, Key] = {}
        self._unavailable: dict[Path, str] = {}
        self._unreadable: dict[Path, str] = {}
        self._duplicates: dict[Path, Path] = {}
        self._reported: tuple[Diagnostic, ...] = ()  # the errors of the last event
        self._stop = asyncio.Event()
        self._inotify: Inotify | None = None
        self._notified: asyncio.Event | None = None
        self.reads = 0  # credential directories read, for tests

    async def __aenter__(self) -> CredentialsAdapter:
        self._stop = asyncio.Event()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()

    async def watch(self) -> AsyncIterator[SourceEvent]:
        """The first listing (synced), then every change, until the context exits."""
        self._start_notify()
        try:
            scan = await asyncio.to_thread(self._scan, True)
            first = await asyncio.to_thread(self._process, scan, True)
            yield first if first is not None else SourceEvent(SOURCE)
            while not self._stop.is_set():
                woke = await self._wait(self._poll)
                if woke is None:
                    return
                scan = await asyncio.to_thread(self._scan, woke)
                if not self._has_changes(scan):
                    continue
                settled = await self._settle(scan)
                if settled is None:
                    return
                event = await asyncio.to_thread(self._process, settled, False)
                if event is not None:
                    yield event
        finally:
            self._stop_notify()

    # -- looking ---------------------------------------------------------------------------

    def _scan(self, rewatch: bool = False) -> _Scan:
        if rewatch and self._inotify is not None:
            self._inotify.watch(self._watched_directories())
        return scan_paths(self._paths)

    def _watched_directories(self) -> set[Path]:
        found: set[Path] = set()
        for root in self._paths:
            found.add(nearest_existing_parent(root))
            if root.is_dir():
                found.add(root)
                with contextlib.suppress(OSError):
                    found.update(
                        Path(e.path) for e in os.scandir(root) if not e.name.startswith(".")
                    )
        return found

    def _has_changes(self, scan: _Scan) -> bool:
        if scan.unavailable != self._unavailable or scan.unreadable != self._unreadable:
            return True
        if scan.duplicates != self._duplicates:
            return True
        visible = {d for d in self._served if not self._frozen(d, scan)}
        if scan.dirs.keys() != visible:
            return True
        if any(self._served[d].sig != s for d, s in scan.dirs.items()):
            return True
        return any(self._served[d].racy for d in scan.dirs)  # (re-hashed when processed)

    def _frozen(self, directory: Path, scan: _Scan) -> bool:
        """A known credential that this scan could not see: its configured path is out."""
        return directory.parent in scan.unavailable or directory in scan.unreadable

    async def _settle(self, scan: _Scan) -> _Scan | None:
        """Wait until nothing changes for one debounce window (bounded); None on stop."""
        loop = asyncio.get_running_loop()
        quiet_since = started = loop.time()
        limit = started + max(self._debounce * MAX_DEBOUNCE_WINDOWS, self._poll)
        while loop.time() - quiet_since < self._debounce and loop.time() < limit:
            step = max(0.0, min(self._poll, quiet_since + self._debounce - loop.time()))
            woke = await self._wait(step)
            if woke is None:
                return None
            current = await asyncio.to_thread(self._scan, woke)
            if current != scan:
                scan, quiet_since = current, loop.time()
        return scan

    # -- reading ---------------------------------------------------------------------------

    def _process(self, scan: _Scan, first: bool) -> SourceEvent | None:
        """Read the credentials that changed; the event (None: nothing to say)."""
        errors = [
            Diagnostic("error", SOURCE, str(root), "", "", "", f"{why}; its credentials serve")
            for root, why in sorted(scan.unavailable.items())
        ]
        upserts: list[RawResource] = []
        deletes: list[Key] = []
        for directory in [d for d in self._served if d not in scan.dirs]:
            if not self._frozen(directory, scan):
                del self._served[directory]
                deletes.append(self._keys.pop(directory))
        for directory, why in sorted(scan.unreadable.items()):
            errors.append(self._error(directory, "", why))
        for directory, serving in sorted(scan.duplicates.items()):
            why = f"the credential {directory.name!r} is {serving}; this directory is ignored"
            errors.append(self._error(directory, "", why))
        now = time.time_ns()
        for directory, sig in scan.dirs.items():
            served = self._served.get(directory)
            if served is not None and served.sig == sig and not served.racy:
                continue
            raw, problem = self._read(directory, sig)
            if problem is not None:
                errors.append(problem)
            if raw is None:
                continue
            digest = hashlib.blake2b(repr(sorted(raw.body["stringData"].items())).encode()).digest()
            racy = any(f[2] >= now - RACY_NS for f in sig[1])
            self._served[directory] = _Served(sig, digest, racy)
            if served is None or served.digest != digest:
                self._keys[directory] = raw.key
                upserts.append(raw)
        changed = scan.unavailable != self._unavailable or tuple(errors) != self._reported
        self._unavailable, self._unreadable = dict(scan.unavailable), dict(scan.unreadable)
        self._duplicates = dict(scan.duplicates)
        upserted = {raw.key for raw in upserts}  # (a name that moved to an earlier path)
        deletes = [key for key in deletes if key not in upserted]
        self._reported = tuple(errors)
        if not (first or upserts or deletes or changed):
            return None  # (an event repeats the errors that hold: the agent keeps those)
        unavailable = tuple(scan.unavailable[r] for r in sorted(scan.unavailable))
        return SourceEvent(
            SOURCE, tuple(upserts), tuple(deletes), True, tuple(errors), (), unavailable
        )

    def _read(self, directory: Path, sig: DirSig) -> tuple[RawResource | None, Diagnostic | None]:
        self.reads += 1
        try:
            texts = read_credential(directory, sig)
        except (OSError, ValueError) as exc:
            reason = f"cannot read: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            name = Path(exc.filename).name if isinstance(exc, OSError) and exc.filename else ""
            return None, self._error(directory, name, f"{reason}; the last good one serves")
        if texts is None:
            return None, None  # moved while read: the next look reads it again
        return secret_of(directory, self._namespace, texts), None

    def _error(self, directory: Path, file: str, reason: str) -> Diagnostic:
        where = str(directory / file) if file else str(directory)
        name = f"{self._namespace}/{directory.name}"
        return Diagnostic("error", SOURCE, where, "Secret", name, file, reason)

    # -- waking ----------------------------------------------------------------------------

    def _start_notify(self) -> None:
        self._stop_notify()
        notify = Inotify.open()
        if notify is None:
            return
        self._inotify, self._notified = notify, asyncio.Event()
        asyncio.get_running_loop().add_reader(notify.fd, self._on_notify)

    def _on_notify(self) -> None:
        if self._inotify is not None and self._notified is not None:
            self._inotify.drain()
            self._notified.set()

    def _stop_notify(self) -> None:
        close_notify(self._inotify)
        self._inotify = self._notified = None

    async def _wait(self, seconds: float) -> bool | None:
        """Wait for a notification (True), the timeout (False) or stop (None)."""
        return await wait_for_change(self._stop, self._notified, seconds)
