"""The agent's admin HTTP server: health, readiness, metrics and debug pages.

Two listeners, one page table. The TCP port (loopback by default) serves only PUBLIC_PATHS,
for probes and Prometheus, to anyone who can reach it. The Unix socket (`admin.socket`, mode
0660: the agent's user and group) serves every page and action, the debug pages and POSTs
included: the kernel checks who connects, so no token has to be kept, rotated or leaked.
The CLI (`meshagent status`, `proxy-config`, `reload`) talks to the socket.

A deliberately tiny HTTP/1.1 server on asyncio streams: GET (and HEAD) and the registered
POST actions, one request per connection (`Connection: close`), bounded request size and
time. Anything malformed gets a 400; a failing page gets a 500 and a log line; the server
itself never stops on bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import structlog

from meshagent.errors import ConfigError

log = structlog.get_logger("meshagent.admin")

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# What the TCP port serves; everything else only on the Unix socket.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/stats/prometheus"})
SOCKET_MODE = 0o660


@dataclass(frozen=True, slots=True)
class Response:
    """What a page returns."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        return cls(
            status, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", "application/json"
        )


@dataclass(frozen=True, slots=True)
class Request:
    """What a request page gets: the method, the target (path and query) and the headers
    (names lower-cased; a repeated header keeps its last value)."""

    method: str
    target: str
    headers: Mapping[str, str]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


# A page may be a coroutine function, for pages that wait on I/O (e.g. /envoy/stats).
Page = Callable[[], Response | Awaitable[Response]]
# A page that reads the request (headers, query), e.g. the merged /stats/prometheus.
RequestPage = Callable[[Request], Awaitable[Response]]
# POST handlers get the query string's parameters (last value wins).
Action = Callable[[dict[str, str]], Response | Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class AdminServer:
    """Serves `pages` (path -> function returning a Response) and `actions` (POST).

    On address:port only PUBLIC_PATHS; on `socket_path` (when given) everything. port 0
    binds a free port; `port` tells which one once started.
    """

    def __init__(
        self, address: str, port: int, pages: dict[str, Page], socket_path: Path | None = None
    ) -> None:
        self.address = address
        self._requested_port = port
        self.socket_path = socket_path
        self.pages = dict(pages)
        self.actions: dict[str, Action] = {}
        self.request_pages: dict[str, RequestPage] = {}
        self._server: asyncio.Server | None = None
        self._unix: asyncio.Server | None = None
        self._socket_inode = 0

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start serving (the socket first: the CLI works once /readyz answers)."""
        if self.socket_path is not None:
            self._unix = await _start_unix(self.socket_path, self._handle_private)
            self._socket_inode = os.lstat(self.socket_path).st_ino
        try:
            self._server = await asyncio.start_server(
                self._handle_public, self.address, self._requested_port, limit=MAX_REQUEST_BYTES
            )
        except BaseException:
            await self.stop()
            raise
        log.info("admin_listening", address=self.address, port=self.port, socket=self.socket_path)

    async def stop(self) -> None:
        """Stop accepting and close the listeners."""
        for server in (self._server, self._unix):
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), timeout=2)
        if self._unix is not None and self.socket_path is not None:
            _remove_own_socket(self.socket_path, self._socket_inode)
        self._server = self._unix = None

    async def _handle_public(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._handle(reader, writer, public=True)

    async def _handle_private(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._handle(reader, writer, public=False)

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, public: bool
    ) -> None:
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
                method, path = request.method, request.target
                if public and _path_of(path) not in PUBLIC_PATHS:
                    response = self._not_public(_path_of(path))
                else:
                    response = await self._respond(request)
            except _BadRequest as exc:
                method, response = "GET", Response.text(exc.status, f"{exc}\n")
            except TimeoutError:
                method, response = "GET", Response.text(408, "request timeout\n")
            await _write(writer, response, head_only=method == "HEAD")
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        except Exception:
            log.exception("admin_handler_failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _not_public(self, path: str) -> Response:
        if path not in self.pages and path not in self.actions and path not in self.request_pages:
            return Response.text(404, "not found\n")
        where = f" {self.socket_path}" if self.socket_path is not None else ""
        return Response.text(
            403,
            f"{path} is served only on the agent's admin socket{where} (root or the agent's "
            "group); use `meshagent status` / `proxy-config`, or curl --unix-socket\n",
        )

    async def _respond(self, request: Request) -> Response:
        target = request.target
        answer = self._dispatch(request)
        if not inspect.isawaitable(answer):
            return answer
        try:
            return await answer
        except Exception:
            log.exception("admin_page_failed", path=target)
            return Response.text(500, "internal error\n")

    def _dispatch(self, request: Request) -> Response | Awaitable[Response]:
        method, target = request.method, request.target
        path, _, query = target.partition("?")
        if method == "POST" and path in self.actions:
            action = self.actions[path]
            params = dict(urllib.parse.parse_qsl(query))
            call: Page = lambda: action(params)  # noqa: E731
        elif method not in ("GET", "HEAD"):
            return Response.text(405, "only GET is supported here\n")
        elif path in self.pages:
            call = self.pages[path]
        elif path in self.request_pages:
            page = self.request_pages[path]
            call = lambda: page(request)  # noqa: E731
        else:
            return Response.text(404, "not found\n")
        try:
            return call()
        except Exception:
            log.exception("admin_page_failed", path=target)
            return Response.text(500, "internal error\n")


def _path_of(target: str) -> str:
    return target.partition("?")[0]


async def _start_unix(path: Path, handler: Any) -> asyncio.Server:
    """Serve handler on a Unix socket at path, mode SOCKET_MODE (the process's group)."""
    from meshagent.xds.server import remove_stale_socket  # one rule for stale sockets

    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    remove_stale_socket(str(path))
    # A new socket file gets the umask's mode until the chmod below; the state directory
    # (0750) and the service's UMask (0007) keep strangers out of that moment.
    try:
        server = await asyncio.start_unix_server(handler, str(path), limit=MAX_REQUEST_BYTES)
    except OSError as exc:
        reason = f"cannot listen on the admin socket: {exc.strerror or exc}"
        raise ConfigError(reason, location=str(path), field="admin.socket") from None
    try:
        os.chmod(path, SOCKET_MODE)
    except BaseException:
        server.close()
        raise
    return server


def _remove_own_socket(path: Path, inode: int) -> None:
    """Remove the socket file at path if it is still the one this server bound."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


async def _read_request(reader: asyncio.StreamReader) -> Request:
    """The method, target and headers of one request."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(431, "request too large") from None
    except asyncio.IncompleteReadError:
        raise _BadRequest(400, "incomplete request") from None
    request_line, *header_lines = head[:-4].split(b"\r\n")
    try:
        parts = request_line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise _BadRequest(400, "request line is not ASCII") from None
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _BadRequest(400, "malformed request line")
    if any(ord(c) <= 32 or ord(c) == 127 for c in parts[1]):
        raise _BadRequest(400, "malformed request target")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Request(parts[0], parts[1], headers)


async def _write(writer: asyncio.StreamWriter, response: Response, *, head_only: bool) -> None:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("ascii") + (b"" if head_only else response.body))
    await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)


def readiness_page(reasons: Callable[[], list[str]]) -> Page:
    """/readyz: 200 "ready" when reasons() is empty, else 503 with one reason per line."""

    def page() -> Response:
        pending = reasons()
        if not pending:
            return Response.text(200, "ready\n")
        return Response.text(503, "".join(f"{r}\n" for r in pending))

    return page


def standard_pages(
    *,
    ready_reasons: Callable[[], list[str]],
    metrics: Callable[[], bytes],
    config_errors: Callable[[], Any],
) -> dict[str, Page]:
    """The agent's pages: /healthz, /readyz, /metrics (public), /debug/config_errors."""
    return {
        "/healthz": lambda: Response.text(200, "ok\n"),
        "/readyz": readiness_page(ready_reasons),
        "/metrics": lambda: Response(200, metrics(), PROMETHEUS_TEXT),
        "/debug/config_errors": lambda: Response.json(200, config_errors()),
    }
