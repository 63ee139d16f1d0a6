"""Collectors for tests, demos and benchmarks: an OTLP/gRPC trace receiver and a Zipkin v2
receiver, both on loopback, keeping the spans Envoy sends them.

The OTLP receiver is a real gRPC server (grpcio) of
`opentelemetry.proto.collector.trace.v1.TraceService/Export`, with the messages of the
opentelemetry-proto definitions (the `opentelemetry.proto` modules, which xds-protos ships and
the opentelemetry-proto package provides too), served through a generic method handler so
that no generated gRPC stub is needed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@dataclass(frozen=True, slots=True)
class Span:
    """What the tests look at in a span, whichever protocol brought it."""

    trace_id: str  # lowercase hex
    name: str
    tags: dict[str, str] = field(default_factory=dict)


def _otlp_value(value: Any) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


class _Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self.requests = 0

    def add(self, spans: list[Span]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()


class OtlpTraceReceiver:
    """An OTLP/gRPC trace collector on 127.0.0.1:port (0: a free port)."""

    def __init__(self, port: int = 0) -> None:
        self._store = _Store()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(
            self._export,
            request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
        )
        service, method = EXPORT_METHOD[1:].split("/")
        generic = grpc.method_handlers_generic_handler(service, {method: handler})
        self._server.add_generic_rpc_handlers((generic,))
        self.port = int(self._server.add_insecure_port(f"127.0.0.1:{port}"))

    def _export(self, request: Any, context: Any) -> Any:
        spans = []
        for resource in request.resource_spans:
            # `scope_spans` in current OTLP; the older definitions (as xds-protos ships them)
            # name the same field (number 2, same wire shape) instrumentation_library_spans.
            scopes = getattr(resource, "scope_spans", None)
            if scopes is None:
                scopes = resource.instrumentation_library_spans
            for scope in scopes:
                for span in scope.spans:
                    tags = {a.key: _otlp_value(a.value) for a in span.attributes}
                    spans.append(Span(span.trace_id.hex(), span.name, tags))
        self._store.add(spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> OtlpTraceReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    @property
    def spans(self) -> list[Span]:
        """Every span received so far (a copy)."""
        return self._store.spans()

    def clear(self) -> None:
        self._store.clear()


class ZipkinReceiver:
    """A Zipkin v2 collector (`POST /api/v2/spans`, JSON) on 127.0.0.1:port (0: free)."""

    def __init__(self, port: int = 0) -> None:
        self._store = _Store()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _zipkin_handler(self._store.add))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])

    def start(self) -> ZipkinReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def spans(self) -> list[Span]:
        return self._store.spans()

    def clear(self) -> None:
        self._store.clear()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, by content-length or chunked (as Envoy's collector requests are)."""
    if "chunked" not in (handler.headers.get("transfer-encoding") or "").lower():
        return handler.rfile.read(int(handler.headers.get("content-length") or 0))
    out = b""
    while True:
        size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            handler.rfile.readline()  # the blank line after the last chunk (no trailers)
            return out
        out += handler.rfile.read(size)
        handler.rfile.readline()


def _zipkin_handler(add: Callable[[list[Span]], None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = _read_body(self)
            try:
                items = json.loads(body or b"[]")
                spans = [
                    Span(
                        str(s.get("traceId", "")),
                        str(s.get("name", "")),
                        {str(k): str(v) for k, v in (s.get("tags") or {}).items()},
                    )
                    for s in items
                ]
            except (ValueError, AttributeError):
                self.send_response(400)
                self.end_headers()
                return
            add(spans)
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
