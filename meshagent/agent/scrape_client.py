"""A bounded HTTP/1.1 GET for the merged scrape: one request, one deadline, one size cap.

urllib's timeout bounds each socket read, not the whole fetch, and reads whatever size comes:
an application that drips bytes, or sends a gigabyte, would hold a thread or the memory.
Here the whole fetch runs under one deadline and reading stops past `max_bytes`, whatever the
framing (Content-Length, chunked, or until close). No compression is asked for. Redirects
are followed on the same host only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

MAX_HEAD_BYTES = 65536
MAX_REDIRECTS = 5  # requests in all, the first included
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchError(Exception):
    """The part could not be fetched; str() says why, for the log and the status."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """A 200 response: its Content-Type and body."""

    content_type: str
    body: bytes


async def fetch(
    url: str, *, headers: Mapping[str, str], timeout_s: float, max_bytes: int
) -> Fetched:
    """GET url; FetchError when it fails, answers other than 200, is larger than max_bytes,
    or takes longer than timeout_s in all."""
    try:
        async with asyncio.timeout(timeout_s):
            for _ in range(MAX_REDIRECTS):
                answer = await _fetch(url, headers, max_bytes)
                if isinstance(answer, Fetched):
                    return answer
                url = _redirect(url, answer)
            raise FetchError(f"more than {MAX_REDIRECTS - 1} redirects")
    except TimeoutError:
        raise FetchError(f"no complete answer within {timeout_s:g}s") from None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise FetchError(_describe(exc)) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed in the middle of the answer"
    if isinstance(exc, asyncio.LimitOverrunError):
        return "answer headers too large"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _redirect(url: str, location: str) -> str:
    """Where a redirect leads: only elsewhere on the same scheme, host and port (as Prometheus
    follows them; never to another host, which would make the agent fetch anything)."""
    target = urllib.parse.urljoin(url, location)
    here, there = urllib.parse.urlsplit(url), urllib.parse.urlsplit(target)
    if (here.scheme, here.netloc) != (there.scheme, there.netloc):
        raise FetchError(f"redirected to another host or scheme: {target}")
    return target


async def _fetch(url: str, headers: Mapping[str, str], max_bytes: int) -> Fetched | str:
    """The 200 answer, or the Location of a redirect."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    tls = _insecure_tls() if parts.scheme == "https" else None
    port = port or (443 if tls else 80)
    reader, writer = await asyncio.open_connection(host, port, ssl=tls, limit=MAX_HEAD_BYTES)
    try:
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        authority = f"[{host}]" if ":" in host else host
        lines = [f"GET {target} HTTP/1.1", f"Host: {authority}:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        status, head = await _read_head(reader)
        if status in REDIRECTS and head.get("location"):
            return head["location"]
        if status != 200:
            raise FetchError(f"HTTP {status}")
        if head.get("content-encoding", "identity").lower() != "identity":
            raise FetchError(f"unsupported Content-Encoding {head['content-encoding']}")
        body = await _read_body(reader, head, max_bytes)
        return Fetched(head.get("content-type", ""), body)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _insecure_tls() -> ssl.SSLContext:
    # The application's own endpoint on this host, as kubelet probes HTTPS: not verified.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = raw.decode("latin-1").split("\r\n")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        raise FetchError("not an HTTP/1.x answer")
    head: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            head[name.strip().lower()] = value.strip()
    return int(fields[1]), head


async def _read_body(reader: asyncio.StreamReader, head: dict[str, str], cap: int) -> bytes:
    too_large = FetchError(f"answer larger than {cap} bytes (metrics.max_bytes)")
    if "chunked" in head.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, cap, too_large)
    if "content-length" in head:
        try:
            length = int(head["content-length"])
        except ValueError:
            raise FetchError("bad Content-Length") from None
        if length > cap:
            raise too_large
        return await reader.readexactly(length)
    body = await reader.read(cap + 1)
    while len(body) <= cap:
        more = await reader.read(cap + 1 - len(body))
        if not more:
            return body
        body += more
    raise too_large


async def _read_chunked(reader: asyncio.StreamReader, cap: int, too_large: FetchError) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise FetchError("bad chunk size") from None
        if size == 0:
            return b"".join(chunks)  # trailers, if any, are left unread
        total += size
        if total > cap:
            raise too_large
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk
