"""The merged scrape's HTTP client against raw loopback answers: framing, redirects, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from meshagent.agent.scrape_client import FetchError, fetch

# path -> the raw answer (the connection is closed after it)
ANSWERS = {
    b"/ok": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\na 1\n",
    b"/until-close": b"HTTP/1.0 200 OK\r\n\r\na 1\nb 2\n",
    b"/moved": b"HTTP/1.1 301 Moved\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n",
    b"/away": b"HTTP/1.1 302 Found\r\nLocation: http://192.0.2.1/metrics\r\n\r\n",
    b"/loop": b"HTTP/1.1 307 Again\r\nLocation: /loop\r\n\r\n",
    b"/short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\na 1\n",
    b"/garbage": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    b"/gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nxx",
    b"/missing": b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
}


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(ANSWERS[head.split(b" ")[1]])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()


async def get(port: int, path: str) -> bytes:
    url = f"http://127.0.0.1:{port}{path}"
    return (await fetch(url, headers={}, timeout_s=5, max_bytes=1000)).body


async def test_bodies_framed_by_length_or_by_close(port: int) -> None:
    assert await get(port, "/ok") == b"a 1\n"
    assert await get(port, "/until-close") == b"a 1\nb 2\n"


async def test_a_redirect_on_the_same_host_is_followed(port: int) -> None:
    assert await get(port, "/moved") == b"a 1\n"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/away", "redirected to another host or scheme: http://192.0.2.1/metrics"),
        ("/loop", "more than 4 redirects"),
        ("/short", "connection closed in the middle of the answer"),
        ("/garbage", "not an HTTP/1.x answer"),
        ("/gzip", "unsupported Content-Encoding gzip"),
        ("/missing", "HTTP 404"),
    ],
)
async def test_refusals_say_why(port: int, path: str, reason: str) -> None:
    with pytest.raises(FetchError) as caught:
        await get(port, path)
    assert str(caught.value) == reason
