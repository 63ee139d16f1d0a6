"""A small HTTP service for demos and tests: says who it is and can misbehave on request.

Paths:
  /                 JSON {service, version, method, path, headers}
  /status/<code>    answers with that status code
  /delay/<ms>       answers after ms milliseconds
  /flaky            fails with 503 on every other request (1st, 3rd, ...), else 200
  /_requests        JSON list of the paths this instance received (for mirror tests)
Setting `fail_with` on a running DemoApp makes every path but /_requests answer with that status.

Run one: `python -m meshagent.testing.demo_app --name hello --version v1 --listen 127.0.0.1:18081`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_DELAY_MS = 30_000


class DemoApp:
    """One demo service instance on a loopback address, served from a background thread."""

    def __init__(self, name: str, version: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self._flaky_count = 0
        self.requests: list[str] = []
        # When non-zero, every request (but /_requests) gets this status: an instance that went
        # bad while its connections stay open (tests of outlier detection and failover).
        self.fail_with = 0
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        host = self._server.server_address[0]
        return f"{host.decode() if isinstance(host, bytes) else host}:{self.port}"

    def start(self) -> DemoApp:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def next_flaky(self) -> bool:
        """True when this /flaky request must fail (odd-numbered ones)."""
        with self._lock:
            self._flaky_count += 1
            return self._flaky_count % 2 == 1

    def request_paths(self) -> list[str]:
        with self._lock:
            return list(self.requests)


def _handler_for(app: DemoApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The headers and the body go out in two writes: with Nagle's algorithm the body waits
        # for the ACK of the headers, which a keep-alive peer such as Envoy delays (about 40 ms
        # per response on loopback).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stdout
            return

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(min(length, 1 << 20))
            self._serve()

        do_PUT = do_DELETE = do_PATCH = do_POST

        def _serve(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/_requests":
                self._reply(200, app.request_paths())
                return
            app.record(self.path)
            status = 200
            if app.fail_with:
                status = app.fail_with
            elif path.startswith("/status/"):
                status = _int_or(path.removeprefix("/status/"), 200)
            elif path.startswith("/delay/"):
                time.sleep(min(_int_or(path.removeprefix("/delay/"), 0), MAX_DELAY_MS) / 1000)
            elif path == "/flaky" and app.next_flaky():
                status = 503
            self._reply(status, self._describe())

        def _describe(self) -> dict[str, Any]:
            return {
                "service": app.name,
                "version": app.version,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }

        def _reply(self, status: int, body: Any) -> None:
            data = (json.dumps(body, sort_keys=True) + "\n").encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-served-by", f"{app.name}-{app.version}")
            self.send_header("x-instance-port", str(app.port))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


@contextmanager
def running(name: str, version: str, host: str = "127.0.0.1", port: int = 0) -> Iterator[DemoApp]:
    """A started DemoApp, stopped on exit."""
    app = DemoApp(name, version, host, port).start()
    try:
        yield app
    finally:
        app.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshagent.testing.demo_app")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", default="v1")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (loopback)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    app = DemoApp(args.name, args.version, host or "127.0.0.1", int(port))
    print(f"{args.name} {args.version} listening on {app.address}", flush=True)
    with suppress(KeyboardInterrupt):
        app._server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
