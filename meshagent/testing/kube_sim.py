"""A simulator of the Kubernetes API server, for tests and demos (`meshagent dev kube-sim`).

It is not Kubernetes: no etcd, no controllers, no admission. It serves, as JSON over HTTP/1.1
with bearer-token auth, what a watching client depends on: discovery (/version, /api, /apis),
core/v1 Services and Secrets (and Namespaces, Nodes, ConfigMaps, ServiceAccounts),
discovery.k8s.io/v1 EndpointSlices, and the Istio CRDs (networking.istio.io
v1/v1beta1/v1alpha3, security.istio.io v1/v1beta1); namespaced and cluster-wide lists with a
list resourceVersion; watches streamed as chunked JSON lines (ADDED/MODIFIED/DELETED, BOOKMARK
with allowWatchBookmarks, timeoutSeconds, ERROR 410 "too old resource version" from a
compacted revision); create, replace, merge patch and delete of any kind, with
metadata.resourceVersion/uid/creationTimestamp/generation; `fieldSelector` on lists and
watches (metadata.name, metadata.namespace, and a Secret's type); Secrets stored as the API
server stores them (stringData into base64 data, type Opaque by default and immutable).
Objects of any nesting depth are stored and served (the API server accepts 10,000 levels in
free-form fields; Python's json stops near 1,000, so the simulator uses adapters/deepjson).

Faults for tests: `drop_watches()` cuts every open watch mid-stream, `faults.status` answers
an HTTP error to matching requests, `compact()` forces 410 Gone on the next watch restart,
`stop()` then `start()` takes the API down and brings it back on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from meshagent.testing.kube_store import (
    BY_PLURAL,
    KINDS,
    ApiError,
    KindInfo,
    KubeStore,
    kind_of,
)

MAX_WATCH_S = 1800.0


@dataclass(slots=True)
class KubeFaults:
    """Injected misbehaviour; every request reads it.

    status: answer this HTTP status (e.g. 500) instead of serving matching requests.
    path_prefix: only paths starting with it are affected. watches_only: only watch requests.
    """

    status: int | None = None
    path_prefix: str = "/"
    watches_only: bool = False

    def clear(self) -> None:
        """Back to a well-behaved server."""
        self.status, self.path_prefix, self.watches_only = None, "/", False


class KubeSim:
    """An in-memory Kubernetes API server on a background thread (see the module docstring)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = "kube-sim-token",
        bookmark_interval_s: float = 1.0,
    ) -> None:
        self.host, self.port, self.token = host, port, token
        self.bookmark_interval_s = bookmark_interval_s
        self.store = KubeStore()
        self.faults = KubeFaults()
        self.requests: list[str] = []  # "METHOD path?query", for tests
        self.watch_starts = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._drop_generation = 0
        self._running = False

    @property
    def url(self) -> str:
        """The server URL for a kubeconfig or the client's Configuration.host."""
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> KubeSim:
        """Serve (again, on the same port after a stop); returns self."""
        sim = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def get_request(self) -> tuple[socket.socket, Any]:
                conn, addr = super().get_request()
                with sim._conns_lock:
                    sim._conns.add(conn)
                return conn, addr

        self._server = Server((self.host, self.port), _handler(self))
        self.port = self._server.server_address[1]
        self._running = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection (the port can be reused by start())."""
        self._running = False
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._cut_connections()
        with self.store.lock:
            self.store.lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> KubeSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _cut_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = set(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # -- faults -----------------------------------------------------------------------------

    def drop_watches(self) -> None:
        """Cut every watch stream open now, without its terminating chunk."""
        with self.store.lock:
            self._drop_generation += 1
            self.store.lock.notify_all()

    def compact(self) -> int:
        """Drop the watch history: a watch resumed from an older revision gets 410 Gone."""
        return self.store.compact()

    # -- the test-side API --------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace obj (kind and metadata.namespace from the object)."""
        info = kind_of(str(obj.get("kind") or ""))
        ns = str((obj.get("metadata") or {}).get("namespace") or "")
        return self.store.apply(info, ns, obj)

    def delete(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        """Delete one object; kind is "Kind" or "group/version/Kind"."""
        return self.store.delete(kind_of(kind), ns, name)

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return self.store.get(kind_of(kind), ns, name)
        except ApiError:
            return None

    def list(self, kind: str, ns: str | None = None) -> list[dict[str, Any]]:
        """Objects of kind (in ns, or everywhere)."""
        return self.store.list(kind_of(kind), ns)[0]

    # -- serving ----------------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header carries the bearer token (always, without one)."""
        return self.token is None or header == f"Bearer {self.token}"

    def fault_for(self, path: str, watch: bool) -> int | None:
        """The injected status for a request, if any."""
        f = self.faults
        if f.status is None or not path.startswith(f.path_prefix):
            return None
        return None if f.watches_only and not watch else f.status


@dataclass(frozen=True, slots=True)
class Target:
    """What a resource path names."""

    info: KindInfo
    version: str
    namespace: str | None  # None: cluster-wide
    name: str | None


def parse_path(path: str) -> Target | None:
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 2:
        return None
    info = BY_PLURAL.get((group, rest[0]))
    if info is None or version not in info.versions:
        return None
    return Target(info, version, namespace, rest[1] if len(rest) == 2 else None)


def as_served(obj: dict[str, Any], target: Target) -> dict[str, Any]:
    """obj as the requested version (the simulator's versions share one schema)."""
    info = target.info
    obj["apiVersion"] = f"{info.group}/{target.version}" if info.group else target.version
    return obj


def discovery(path: str) -> dict[str, Any] | None:
    if path == "/version":
        return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-meshagent-sim"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    groups: dict[str, list[KindInfo]] = {}
    for info in KINDS:
        groups.setdefault(info.group, []).append(info)
    if path == "/apis":
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_group(g, infos) for g, infos in groups.items() if g],
        }
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) == 2:
        return _resource_list("v1", groups[""])
    if parts[:1] == ["apis"] and parts[1:2] and parts[1] in groups:
        if len(parts) == 2:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1], groups[parts[1]])}
        if len(parts) == 3 and parts[2] in groups[parts[1]][0].versions:
            return _resource_list(f"{parts[1]}/{parts[2]}", groups[parts[1]])
    return None


def _group(name: str, infos: list[KindInfo]) -> dict[str, Any]:
    versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in infos[0].versions]
    return {"name": name, "versions": versions, "preferredVersion": versions[0]}


def _resource_list(group_version: str, infos: list[KindInfo]) -> dict[str, Any]:
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    resources = [
        {"name": i.plural, "singularName": i.kind.lower(), "namespaced": i.namespaced,
         "kind": i.kind, "verbs": verbs}
        for i in infos
    ]  # fmt: skip
    return {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches: no list merging)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _handler(sim: KubeSim) -> type[BaseHTTPRequestHandler]:
    from meshagent.testing.kube_handler import make_handler

    return make_handler(sim)


def query_of(raw: str) -> dict[str, str]:
    """The last value of every query parameter."""
    return {k: v[-1] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}


__all__ = ["ApiError", "KubeFaults", "KubeSim", "merge_patch", "query_of"]
