"""The agent's admin HTTP server: health, readiness, metrics and debug pages on loopback.

A deliberately tiny HTTP/1.1 server on asyncio streams: GET (and HEAD) only, one request per
connection (`Connection: close`), bounded request size and time. Anything malformed gets a 400;
a failing page gets a 500 and a log line; the server itself never stops on bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import structlog

log = structlog.get_logger("meshagent.admin")

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


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


# A page may be a coroutine function, for pages that wait on I/O (e.g. /envoy/stats).
Page = Callable[[], Response | Awaitable[Response]]
# POST handlers get the query string's parameters (last value wins).
Action = Callable[[dict[str, str]], Response | Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class AdminServer:
    """Serves `pages` (path -> function returning a Response) on address:port.

    port 0 binds a free port; `port` tells which one once started.
    """

    def __init__(self, address: str, port: int, pages: dict[str, Page]) -> None:
        self.address = address
        self._requested_port = port
        self.pages = dict(pages)
        self.actions: dict[str, Action] = {}
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start serving."""
        self._server = await asyncio.start_server(
            self._handle, self.address, self._requested_port, limit=MAX_REQUEST_BYTES
        )
        log.info("admin_listening", address=self.address, port=self.port)

    async def stop(self) -> None:
        """Stop accepting and close the listener."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
                response = await self._respond(method, path)
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

    async def _respond(self, method: str, target: str) -> Response:
        answer = self._dispatch(method, target)
        if not inspect.isawaitable(answer):
            return answer
        try:
            return await answer
        except Exception:
            log.exception("admin_page_failed", path=target)
            return Response.text(500, "internal error\n")

    def _dispatch(self, method: str, target: str) -> Response | Awaitable[Response]:
        path, _, query = target.partition("?")
        if method == "POST" and path in self.actions:
            action = self.actions[path]
            params = dict(urllib.parse.parse_qsl(query))
            call: Page = lambda: action(params)  # noqa: E731
        elif method not in ("GET", "HEAD"):
            return Response.text(405, "only GET is supported here\n")
        elif path in self.pages:
            call = self.pages[path]
        else:
            return Response.text(404, "not found\n")
        try:
            return call()
        except Exception:
            log.exception("admin_page_failed", path=target)
            return Response.text(500, "internal error\n")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and target of one request; its headers are read and ignored."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(431, "request too large") from None
    except asyncio.IncompleteReadError:
        raise _BadRequest(400, "incomplete request") from None
    try:
        request_line = head.split(b"\r\n", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest(400, "request line is not ASCII") from None
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _BadRequest(400, "malformed request line")
    return parts[0], parts[1]


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
    """The agent's pages: /healthz, /readyz, /metrics, /debug/config_errors."""
    return {
        "/healthz": lambda: Response.text(200, "ok\n"),
        "/readyz": readiness_page(ready_reasons),
        "/metrics": lambda: Response(200, metrics(), PROMETHEUS_TEXT),
        "/debug/config_errors": lambda: Response.json(200, config_errors()),
    }
