"""The HTTP request handler of the Kubernetes API simulator (kube_sim): routing and watches."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from meshagent.adapters import deepjson
from meshagent.testing.kube_store import ApiError, field_selector

if TYPE_CHECKING:
    from meshagent.testing.kube_sim import KubeSim, Target


def make_handler(sim: KubeSim) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to sim."""
    from meshagent.testing.kube_sim import (
        MAX_WATCH_S,
        as_served,
        discovery,
        merge_patch,
        parse_path,
        query_of,
    )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # a keep-alive client's delayed ACK would stall replies

        def log_message(self, format: str, *args: Any) -> None:
            return None  # tests read sim.requests instead

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            path, _, raw_query = self.path.partition("?")
            query = query_of(raw_query)
            sim.requests.append(f"{method} {self.path}")
            body = self._body()
            try:
                if not sim.authorized(self.headers.get("Authorization")):
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                watch = query.get("watch") in ("true", "1")
                status = sim.fault_for(path, watch)
                if status is not None:
                    raise ApiError(status, "InternalError", f"injected fault {status}")
                found = discovery(path) if method == "GET" else None
                if found is not None:
                    return self._json(200, found)
                target = parse_path(path)
                if target is None:
                    raise ApiError(404, "NotFound", f"the server could not find {path}")
                if method == "GET" and watch:
                    return self._watch(target, query)
                self._json(*self._crud(method, target, query, body))
            except ApiError as exc:
                self._json(exc.code, exc.status())

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            if not length:
                return None
            raw = self.rfile.read(length)
            try:
                return deepjson.loads(raw)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"body is not JSON: {exc}") from exc

        def _crud(
            self, method: str, t: Target, query: dict[str, str], body: Any
        ) -> tuple[int, dict[str, Any]]:
            store, ns = sim.store, t.namespace or ""
            if t.name is None and method == "GET":
                items, rev = store.list(t.info, t.namespace)
                selected = field_selector(t.info, query.get("fieldSelector") or "")
                items = [i for i in items if selected(i)]
                list_kind = f"{t.info.kind}List"
                api_version = f"{t.info.group}/{t.version}" if t.info.group else t.version
                return 200, {
                    "kind": list_kind,
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(rev)},
                    "items": [as_served(i, t) for i in items],
                }
            if t.name is None and method == "POST":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a create needs a JSON object")
                return 201, as_served(store.create(t.info, ns, body), t)
            if t.name is None:
                raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
            if method == "GET":
                return 200, as_served(store.get(t.info, ns, t.name), t)
            if method == "DELETE":
                return 200, as_served(store.delete(t.info, ns, t.name), t)
            if method == "PUT":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "an update needs a JSON object")
                meta = body.get("metadata") or {}
                if meta.get("name") != t.name:
                    raise ApiError(400, "BadRequest", "the name of the object does not match")
                return 200, as_served(store.update(t.info, ns, body), t)
            if method == "PATCH":
                if self.headers.get("Content-Type", "").startswith("application/json-patch"):
                    raise ApiError(415, "UnsupportedMediaType", "use a merge patch")
                with store.lock:
                    current = store.get(t.info, ns, t.name)
                    patched = merge_patch(current, body)
                    patched.setdefault("metadata", {})["name"] = t.name
                    return 200, as_served(store.update(t.info, ns, patched), t)
            raise ApiError(405, "MethodNotAllowed", method)

        def _json(self, code: int, body: dict[str, Any]) -> None:
            data = deepjson.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        # -- watches ------------------------------------------------------------------------

        def _chunk(self, event: str, obj: dict[str, Any]) -> None:
            line = deepjson.dumps({"type": event, "object": obj}).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()

        def _watch(self, t: Target, query: dict[str, str]) -> None:
            sim.watch_starts += 1
            store = sim.store
            timeout = min(float(query.get("timeoutSeconds") or MAX_WATCH_S), MAX_WATCH_S)
            deadline = time.monotonic() + timeout
            bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
            rv_text = query.get("resourceVersion") or "0"
            if not rv_text.isdigit():
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_text!r}")
            selected = field_selector(t.info, query.get("fieldSelector") or "")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self._stream(t, int(rv_text), deadline, bookmarks, store, selected)
            except OSError:
                self.close_connection = True

        def _stream(
            self,
            t: Target,
            since: int,
            deadline: float,
            bookmarks: bool,
            store: Any,
            selected: Any,
        ) -> None:
            with store.lock:
                generation = sim._drop_generation
                if since == 0:  # "any": the current state as synthetic ADDED events
                    items, since = store.list(t.info, t.namespace)
                    pending = [(since, "ADDED", i) for i in items]
                elif since < store.compacted:
                    pending = []
                    message = f"too old resource version: {since} ({store.compacted})"
                    gone = ApiError(410, "Expired", message).status()
                    self._chunk("ERROR", gone)
                    return self._end()
                else:
                    pending = store.events_after(t.info, t.namespace, since)
            last_bookmark = time.monotonic()
            while True:
                for rev, event, obj in pending:
                    if selected(obj):
                        self._chunk(event, as_served(obj, t))
                    since = max(since, rev)
                now = time.monotonic()
                if bookmarks and now - last_bookmark >= sim.bookmark_interval_s:
                    with store.lock:  # nothing of this kind is undelivered: jump ahead
                        if not store.events_after(t.info, t.namespace, since):
                            since = max(since, store.revision)
                    mark = {"kind": t.info.kind, "apiVersion": as_served({}, t)["apiVersion"],
                            "metadata": {"resourceVersion": str(since)}}  # fmt: skip
                    self._chunk("BOOKMARK", mark)
                    last_bookmark = now
                if now >= deadline:
                    return self._end()
                with store.lock:
                    wait = min(deadline - now, sim.bookmark_interval_s, 0.5)
                    store.lock.wait(timeout=max(wait, 0.01))
                    if not sim._running or sim._drop_generation != generation:
                        self.close_connection = True
                        return None  # cut without the final chunk: a dropped connection
                    pending = store.events_after(t.info, t.namespace, since)
                    if store.compacted > since and not pending:
                        since = max(since, store.compacted)

        def _end(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler
