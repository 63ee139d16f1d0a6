"""Loopback networking for tests, benchmarks and demos: free ports and plain HTTP GETs."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from dataclasses import dataclass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (loopback by default)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class HttpReply:
    """Status and body of one HTTP response."""

    status: int
    body: str


def http_get(url: str, timeout: float = 2.0) -> HttpReply:
    """GET `url` without proxies; HTTP errors are returned, connection errors raised."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return HttpReply(response.status, response.read().decode(errors="replace"))
    except urllib.error.HTTPError as error:
        return HttpReply(error.code, error.read().decode(errors="replace"))
