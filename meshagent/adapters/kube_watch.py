"""One list+watch stream of one Kubernetes resource type, run on its own thread.

The loop follows the API's contract for watches: list (remember the list's resourceVersion),
watch from it with allowWatchBookmarks and timeoutSeconds, resume each new watch from the last
resourceVersion seen (an event's or a bookmark's), and relist only when the server answers 410
Gone. A relist is diffed against what the stream knows, so it yields only real changes: an
object is deleted only when the API says so (a DELETED event, or a successful list without it),
never because a watch failed. Errors back off with jitter and never delete anything.

One object the agent cannot take (nested deeper than MAX_DEPTH: free-form fields of the Istio
kinds allow 10,000 levels, json.loads stops near 1,000) does not fail its listing or watch:
it is parsed anyway (adapters/deepjson) and kept in the stream's state as a small stand-in
(`screened`) that the adapter reports as a located error instead of emitting it.

The `kubernetes` client is synchronous. Each stream is a daemon thread that ends when `stop`
is set: the watch's timeoutSeconds and the read timeout bound how long that takes, and
`close()` shuts the open response so that it ends at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshagent.adapters import deepjson
from meshagent.adapters.consul_watch import Backoff
from meshagent.adapters.yamldocs import MAX_DEPTH

ObjKey = tuple[str, str]  # (namespace, name)
# Fields that change on every write without changing what the object means.
_VOLATILE = ("resourceVersion", "managedFields", "generation")


class Gone(Exception):
    """The server answered 410 Gone: the resourceVersion is too old; relist."""


def stable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """obj without the metadata fields that change on every write (for relist diffs)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _VOLATILE}
    return {**obj, "metadata": meta}


REJECTED = "meshagent.rejected"  # the key of a stand-in's reason (see screened)


def screened(obj: dict[str, Any]) -> dict[str, Any]:
    """obj, or when it nests deeper than MAX_DEPTH (the files adapter's bound too), a
    stand-in: its kind, apiVersion, metadata name/namespace/resourceVersion, and the reason
    under REJECTED. The stream keeps and compares stand-ins like objects (a repeat says
    nothing); the adapter reports them instead of emitting them, so the last accepted version
    of the object keeps serving."""
    if not deepjson.exceeds_depth(obj, MAX_DEPTH):
        return obj
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    fields = ("name", "namespace", "resourceVersion")
    return {
        "kind": _text(obj.get("kind")),
        "apiVersion": _text(obj.get("apiVersion")),
        "metadata": {f: _text(meta.get(f)) for f in fields if meta.get(f)},
        REJECTED: f"nested deeper than {MAX_DEPTH} levels; object rejected",
    }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def obj_key(obj: Mapping[str, Any]) -> ObjKey:
    """(namespace, name) of an API object."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


@dataclass(slots=True)
class StreamState:
    """What one stream knows: the objects by key, and the resourceVersion to resume from."""

    resource_version: str = ""
    objects: dict[ObjKey, dict[str, Any]] = field(default_factory=dict)

    def relist(
        self, items: list[dict[str, Any]], resource_version: str
    ) -> tuple[list[dict[str, Any]], list[ObjKey]]:
        """Replace the state with a full list; the (upserts, deletes) that really changed."""
        fresh = {obj_key(o): o for o in items}
        upserts = [
            o
            for k, o in sorted(fresh.items())
            if k not in self.objects or stable(self.objects[k]) != stable(o)
        ]
        deletes = sorted(set(self.objects) - set(fresh))
        self.objects, self.resource_version = fresh, resource_version
        return upserts, deletes

    def event(self, kind: str, obj: dict[str, Any]) -> tuple[list[dict[str, Any]], list[ObjKey]]:
        """Apply one watch event; the (upserts, deletes) it makes (none for a repeat)."""
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if version:
            self.resource_version = version
        if kind == "BOOKMARK":
            return [], []
        key = obj_key(obj)
        if kind == "DELETED":
            return ([], [key]) if self.objects.pop(key, None) is not None else ([], [])
        old = self.objects.get(key)
        self.objects[key] = obj
        if old is not None and stable(old) == stable(obj):
            return [], []  # e.g. the synthetic ADDED of a resumed watch
        return [obj], []


Emit = Callable[[list[dict[str, Any]], list[ObjKey], str | None], None]


@dataclass(slots=True)
class StreamSpec:
    """How to list and watch one resource type in one namespace (or all: namespace None)."""

    path: str  # e.g. /apis/networking.istio.io/v1/namespaces/ns/virtualservices
    label: str  # for logs: "VirtualService in ns"
    watch_timeout_s: int = 60
    resync_s: float = 0.0  # relist this often even without 410 (0: never)
    query: tuple[tuple[str, str], ...] = ()  # on lists and watches, e.g. a fieldSelector


class KubeStream:
    """The list+watch loop of one StreamSpec; emits through a callback (see module docstring).

    request(path, query, stream) performs one GET and returns the urllib3 response; it raises
    on an HTTP error status (the caller maps 410 to Gone).
    """

    def __init__(
        self,
        spec: StreamSpec,
        request: Callable[[str, dict[str, str], bool], Any],
        emit: Emit,
        backoff: Backoff,
        clock: Callable[[], float],
    ) -> None:
        self.spec, self._request, self._emit, self._backoff = spec, request, emit, backoff
        self._clock = clock
        self.state = StreamState()
        self.stop = threading.Event()
        self.relists = 0
        self._response: Any = None

    def list_once(self) -> tuple[list[dict[str, Any]], list[ObjKey]]:
        """One full list into the state; the changes. Raises on failure."""
        response = self._request(self.spec.path, dict(self.spec.query), False)
        try:
            body = deepjson.loads(response.data)
        finally:
            response.release_conn()
        items = [i for i in body.get("items") or () if isinstance(i, dict)]
        kind = str(body.get("kind") or "").removesuffix("List")
        api_version = str(body.get("apiVersion") or "")
        for item in items:  # list items may omit kind and apiVersion
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
        items = [screened(i) for i in items]
        self.relists += 1
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        return self.state.relist(items, version)

    def run(self, on_error: Callable[[str, Exception, float], None]) -> None:
        """Watch until stop is set; relist on Gone (and every resync_s); back off on errors."""
        listed_at = self._clock()
        need_list = not self.state.resource_version
        while not self.stop.is_set():
            try:
                if need_list or (
                    self.spec.resync_s and self._clock() - listed_at >= self.spec.resync_s
                ):
                    upserts, deletes = self.list_once()
                    listed_at, need_list = self._clock(), False
                    if upserts or deletes:  # a relist that changed nothing says nothing
                        self._emit(upserts, deletes, None)
                self._watch_once()
                self._backoff.reset()
            except Gone:
                need_list = True
            except Exception as exc:
                if self.stop.is_set():
                    return
                delay = self._backoff.next_delay()
                on_error(self.spec.label, exc, delay)
                self.stop.wait(delay)

    def _watch_once(self) -> None:
        query = {
            **dict(self.spec.query),
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.state.resource_version,
            "timeoutSeconds": str(self.spec.watch_timeout_s),
        }
        response = self._request(self.spec.path, query, True)
        self._response = response
        try:
            for kind, obj in _interruptible(_events(response)):
                if self.stop.is_set():
                    return
                if kind == "ERROR":
                    code = int(obj.get("code") or 0)
                    if code == 410:
                        raise Gone(str(obj.get("message") or "410 Gone"))
                    raise RuntimeError(f"watch error {code}: {obj.get('message')}")
                upserts, deletes = self.state.event(kind, obj)
                if upserts or deletes:
                    self._emit(upserts, deletes, None)
        finally:
            self._response = None
            response.release_conn()

    def close(self) -> None:
        """Ask the loop to end, and cut its open watch so that it ends now."""
        self.stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # an already closed or finished response
                response.shutdown()


def _interruptible(
    events: Iterator[tuple[str, dict[str, Any]]],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """events, ended quietly when the connection drops mid-stream: a watch that was open ends
    like one that timed out (the next resumes from the last resourceVersion), as client-go's
    watchers do; only a failure to open the next watch counts as an error."""
    from urllib3.exceptions import ProtocolError, ReadTimeoutError

    try:
        yield from events
    except (ProtocolError, ReadTimeoutError):
        return


def _events(response: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, object) of every JSON line of a watch response."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield _event(line)
    if pending.strip():
        yield _event(pending)


def _event(line: bytes) -> tuple[str, dict[str, Any]]:
    event = deepjson.loads(line)
    return str(event.get("type") or ""), screened(dict(event.get("object") or {}))
