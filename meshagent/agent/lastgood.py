"""The last-known-good raw resources, kept in the state dir so that they survive a restart.

Owner: the daemon. After each change it saves the raw documents the normalizer accepted (of the
sources in PERSISTED_SOURCES); at start it loads them, so that a document that is invalid when
the agent starts (or a file under a configured path that is missing) serves its last good
version instead of vanishing. A document whose file was deleted meanwhile is not brought back:
the daemon seeds the normalizer with these, and the source's first full listing deletes what it
no longer has (see FilesAdapter.restore and Agent._admit).

The file is JSON, written atomically (temporary file, fsync, rename, fsync of the directory),
mode 0600, and at most MAX_BYTES; an unreadable or oversized file is ignored with a warning.
The documents' line maps are not kept (they would triple the size): a restored document is
located at its start.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from meshagent.gcpause import release_free_memory
from meshagent.model.source import Provenance, RawResource

log = structlog.get_logger("meshagent.agent.lastgood")

FILE_NAME = "last-good.json"
FORMAT = 1
MAX_BYTES = 64 * 1024 * 1024
# Sources whose documents are configuration people edit: a platform (Consul, Kubernetes) lists
# its current state on every start instead.
PERSISTED_SOURCES = ("files",)
# Kinds never written, whatever their source: a Secret holds a private key, which must not be
# copied to the state dir (credentials are read again from their files or the API at start).
NEVER_PERSISTED_KINDS = frozenset({"Secret"})


class LastGoodStore:
    """Saves and loads the last-known-good raw resources at path (see the module docstring)."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def load(self) -> list[RawResource]:
        """The saved resources; [] (with a warning) when there are none or they are unusable."""
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

    def save(self, resources: Iterable[RawResource]) -> None:
        """Replace the saved resources atomically; OSError when the state dir is not writable.

        Resources that JSON cannot carry (YAML binary values) are left out; when the whole is
        above max_bytes, the file is removed rather than left stale, with a warning.
        """
        # Streamed to the file: the whole text at once was three copies of the mesh (the
        # items, the text, its bytes), 60 MB of peak RSS at 10k services (issue 17).
        if not _write_atomically(self.path, self._chunks(resources), self.max_bytes):
            log.warning("last_good_too_large", path=str(self.path), max_bytes=self.max_bytes)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        release_free_memory()

    @staticmethod
    def _chunks(resources: Iterable[RawResource]) -> Iterator[bytes]:
        yield f'{{"format":{FORMAT},"resources":[\n'.encode()
        separator = b""
        for raw in sorted(resources, key=lambda r: r.key):
            if raw.kind in NEVER_PERSISTED_KINDS:
                continue  # key material stays in memory (re-read from its source at start)
            try:
                item = json.dumps(_encode(raw), separators=(",", ":")).encode("utf-8")
            except (TypeError, ValueError):
                log.warning("last_good_skipped", resource=raw.provenance.ref, reason="not JSON")
                continue
            yield separator + item
            separator = b",\n"
        yield b"\n]}\n"


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


def _write_atomically(path: Path, chunks: Iterable[bytes], max_bytes: int) -> bool:
    """The chunks at path, all or nothing, 0600: a crash leaves the old file or the new one.
    False (and path untouched) when they add up to more than max_bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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
