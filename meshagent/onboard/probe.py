"""One health probe of the local application, as a WorkloadGroup's `probe` describes it.

httpGet: a GET whose status is 200-399 is healthy (Kubernetes' rule); tcpSocket: a connection
that opens is healthy. `exec` and gRPC probes are not supported and report unhealthy with a
reason. timeoutSeconds (default 1) bounds each probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any


async def probe_once(probe: Mapping[str, Any], default_host: str) -> tuple[bool, str]:
    """(healthy, message) of one probe; never raises."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            return await asyncio.wait_for(_http(probe["httpGet"] or {}, default_host), timeout)
        if "tcpSocket" in probe:
            return await asyncio.wait_for(_tcp(probe["tcpSocket"] or {}, default_host), timeout)
    except TimeoutError:
        return False, f"probe timed out after {timeout:g}s"
    except (OSError, ValueError) as exc:
        return False, f"probe failed: {exc}"
    return False, "unsupported probe (only httpGet and tcpSocket)"


async def _tcp(spec: Mapping[str, Any], default_host: str) -> tuple[bool, str]:
    _, writer = await asyncio.open_connection(spec.get("host") or default_host, int(spec["port"]))
    writer.close()
    await writer.wait_closed()
    return True, ""


async def _http(spec: Mapping[str, Any], default_host: str) -> tuple[bool, str]:
    if str(spec.get("scheme", "HTTP")).upper() != "HTTP":
        return False, "only HTTP probes are supported"
    host = spec.get("host") or default_host
    reader, writer = await asyncio.open_connection(host, int(spec["port"]))
    try:
        headers = "".join(f"{h['name']}: {h['value']}\r\n" for h in spec.get("httpHeaders") or [])
        request = (
            f"GET {spec.get('path') or '/'} HTTP/1.1\r\nHost: {host}\r\n{headers}"
            "User-Agent: meshagent-probe\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        status_line = (await reader.readline()).decode("latin-1").split()
    finally:
        writer.close()
    if len(status_line) < 2 or not status_line[1].isdigit():
        return False, "not an HTTP response"
    code = int(status_line[1])
    return (200 <= code < 400), f"HTTP {code}"
