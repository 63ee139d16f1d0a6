"""The merged scrape (/stats/prometheus) against fake Envoy and application endpoints on
loopback: what it merges, how a failing part is reported, its bounds and its formats."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from structlog.testing import capture_logs

from meshagent.agent.admin import AdminServer
from meshagent.agent.config import AgentConfig, parse_config
from meshagent.agent.metrics import AgentMetrics
from meshagent.agent.metrics_merge import (
    check_exposition,
    install_merged_scrape,
    keep_new_families,
)
from meshagent.errors import ConfigError
from tests.ca_helpers import make_cacerts

ENVOY_BODY = (
    b"# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n"
    b"# TYPE envoy_cluster_upstream_rq_total counter\n"
    b'envoy_cluster_upstream_rq_total{envoy_cluster_name="a"} 7\n'
    b"# TYPE envoy_cluster_upstream_rq counter\n"
    b'envoy_cluster_upstream_rq{envoy_cluster_name="a",envoy_response_code="200"} 7\n'
)
APP_BODY = (
    b"# HELP shop_orders_total Orders.\n# TYPE shop_orders_total counter\n"
    b'shop_orders_total{kind="book"} 3.0\n'
    b"# HELP process_cpu_seconds_total CPU.\n# TYPE process_cpu_seconds_total counter\n"
    b"process_cpu_seconds_total 1.5\n"
)
OM_APP_BODY = (
    b"# HELP shop_orders Orders.\n# TYPE shop_orders counter\n"
    b'shop_orders_total{kind="book"} 3.0\n# EOF\n'
)
OM_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Upstream:
    """A loopback HTTP endpoint whose answer the test sets; it records request heads."""

    body: bytes = b""
    content_type: str = "text/plain; version=0.0.4"
    status: int = 200
    chunked: bool = False
    hang: bool = False  # accept, read the request, never answer
    endless: bool = False  # answer with a body that never ends
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            if self.hang:
                await asyncio.sleep(60)
            head = f"HTTP/1.1 {self.status} X\r\nContent-Type: {self.content_type}\r\n"
            if self.endless:
                writer.write(head.encode() + b"\r\n")
                while True:
                    writer.write(b"x_padding 1\n" * 4096)
                    await writer.drain()
            if self.chunked:
                writer.write(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
                for piece in (self.body[:10], self.body[10:]):
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(head.encode() + f"Content-Length: {len(self.body)}\r\n\r\n".encode())
                writer.write(self.body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    envoy, app = Upstream(body=ENVOY_BODY), Upstream(body=APP_BODY)
    servers = []
    for up in (envoy, app):
        server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
        up.port = server.sockets[0].getsockname()[1]
        servers.append(server)
    yield envoy, app
    for server in servers:
        server.close()


class Host:
    """An admin server with the merged scrape over a config the test may replace."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.admin = AdminServer("127.0.0.1", 0, {})
        install_merged_scrape(self.admin, self.metrics, lambda: self.config)

    async def scrape(
        self, path: str = "/stats/prometheus", **headers: str
    ) -> tuple[int, dict[str, str], str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.admin.port)
        extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 15)
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), fields, body.decode()


def config_text(envoy: Upstream, app: Upstream | None, extra: str = "") -> str:
    app_line = f"  app: {{port: {app.port}}}\n" if app else ""
    return (
        f"state_dir: /tmp/unused\nenvoy: {{admin_port: {envoy.port}}}\n"
        f"metrics:\n  timeout: 500ms\n{app_line}{extra}"
    )


@pytest.fixture
async def host(upstreams: tuple[Upstream, Upstream]) -> AsyncIterator[Host]:
    envoy, app = upstreams
    h = Host(parse_config(config_text(envoy, app), "agent.yaml"))
    await h.admin.start()
    yield h
    await h.admin.stop()


def families(text: str) -> set[str]:
    """The family names prometheus_client's parser reads; fails on a family declared twice.
    (Not on the parser's names: it strips `_total`, so Envoy's own pair envoy_x and
    envoy_x_total meet there.)"""
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(declared) == len(set(declared)), "a family declared twice"
    return {family.name for family in parse_text(text)}


def sample(text: str, name: str, **labels: str) -> float:
    for family in parse_text(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


async def test_merges_agent_envoy_and_application_series(
    host: Host, upstreams: tuple[Upstream, Upstream]
) -> None:
    status, head, body = await host.scrape()

    assert status == 200
    assert head["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert body.count("# TYPE envoy_cluster_upstream_rq") == 2  # Envoy's own pair, both kept
    names = families(body)  # parses, and no family twice
    assert {"meshagent_build_info", "envoy_server_live", "shop_orders"} <= set(names)
    assert sample(body, "envoy_cluster_upstream_rq_total", envoy_cluster_name="a") == 7
    assert sample(body, "shop_orders_total", kind="book") == 3
    assert sample(body, "meshagent_scrape_target_up", target="app") == 1
    assert sample(body, "meshagent_scrape_target_up", target="envoy") == 1
    # the agent's process metrics are its own names: the application's process_* stays
    assert sample(body, "process_cpu_seconds_total") == 1.5
    assert "meshagent_process_cpu_seconds_total" in body
    assert "_created" not in body


async def test_the_application_down_is_reported_not_fatal(
    host: Host, upstreams: tuple[Upstream, Upstream]
) -> None:
    envoy, app = upstreams
    app.port = _closed_port()
    host.config = parse_config(config_text(envoy, app), "agent.yaml")

    with capture_logs() as logs:
        for _ in range(3):
            status, _, body = await host.scrape()
            assert status == 200

    assert sample(body, "meshagent_scrape_target_up", target="app") == 0
    assert sample(body, "meshagent_scrape_failures_total", target="app") == 3
    assert sample(body, "envoy_server_live") == 1 and "meshagent_build_info" in body
    assert "shop_orders" not in body
    failed = [e for e in logs if e["event"] == "metrics_scrape_failed"]
    assert len(failed) == 1 and failed[0]["target"] == "app"  # once, not every scrape
    assert str(app.port) in failed[0]["error"]


async def test_envoy_down_keeps_the_agent_and_the_application(
    host: Host, upstreams: tuple[Upstream, Upstream]
) -> None:
    upstreams[0].status = 503

    status, _, body = await host.scrape()

    assert status == 200
    assert sample(body, "meshagent_scrape_target_up", target="envoy") == 0
    assert sample(body, "shop_orders_total", kind="book") == 3
    assert "envoy_server_live" not in body


async def test_a_hanging_application_is_bounded_by_the_timeout(
    host: Host, upstreams: tuple[Upstream, Upstream]
) -> None:
    upstreams[1].hang = True
    started = time.monotonic()

    status, _, body = await host.scrape()

    assert status == 200 and time.monotonic() - started < 3  # metrics.timeout: 500ms
    assert sample(body, "meshagent_scrape_target_up", target="app") == 0
    assert sample(body, "envoy_server_live") == 1


async def test_the_scrapers_timeout_header_lowers_the_bound(
    host: Host, upstreams: tuple[Upstream, Upstream]
) -> None:
    upstreams[1].hang = True
    host.config = parse_config(
        config_text(upstreams[0], upstreams[1]).replace("500ms", "30s"), "agent.yaml"
    )
    started = time.monotonic()

    status, _, _ = await host.scrape(X_Prometheus_Scrape_Timeout_Seconds="0.3")

    assert status == 200 and time.monotonic() - started < 5
    assert b"X-Prometheus-Scrape-Timeout-Seconds: 0.27" in upstreams[1].requests[-1]


@pytest.mark.parametrize("endless", [True, False], ids=["endless-body", "content-length"])
async def test_an_oversized_application_answer_is_dropped(
    upstreams: tuple[Upstream, Upstream], endless: bool
) -> None:
    envoy, app = upstreams
    app.endless = endless
    app.body = b"x 1\n" * 5000  # 20000 bytes, over max_bytes
    h = Host(parse_config(config_text(envoy, app, "  max_bytes: 8192\n"), "agent.yaml"))
    await h.admin.start()
    try:
        with capture_logs() as logs:
            status, _, body = await h.scrape()
    finally:
        await h.admin.stop()

    assert status == 200
    assert sample(body, "meshagent_scrape_target_up", target="app") == 0
    assert "x_padding" not in body and "\nx 1" not in body
    assert "larger than 8192 bytes" in logs[0]["error"]


async def test_a_chunked_application_answer_is_read(
    host: Host, upstreams: tuple[Upstream, Upstream]
) -> None:
    upstreams[1].chunked = True
    _, _, body = await host.scrape()
    assert sample(body, "shop_orders_total", kind="book") == 3


async def test_an_application_family_with_a_taken_name_is_left_out(
    host: Host, upstreams: tuple[Upstream, Upstream]
) -> None:
    upstreams[1].body = APP_BODY + (
        b"# TYPE envoy_server_live gauge\nenvoy_server_live 0\n"
        b'# TYPE meshagent_build_info gauge\nmeshagent_build_info{version="x"} 1\n'
    )

    with capture_logs() as logs:
        _, _, body = await host.scrape()

    families(body)  # still no family twice
    assert sample(body, "envoy_server_live") == 1  # Envoy's, not the application's
    assert 'version="x"' not in body
    assert sample(body, "shop_orders_total", kind="book") == 3
    _, _, again = await host.scrape()  # the first scrape's conflicts are counted now
    assert sample(again, "meshagent_scrape_conflicts_total", target="app") == 2
    conflict = next(e for e in logs if e["event"] == "metrics_merge_conflict")
    assert conflict["families"] == ["envoy_server_live", "meshagent_build_info"]


async def test_openmetrics_from_the_application_is_converted_when_envoy_is_merged(
    host: Host, upstreams: tuple[Upstream, Upstream]
) -> None:
    upstreams[1].body = OM_APP_BODY
    upstreams[1].content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"

    status, head, body = await host.scrape(Accept=OM_ACCEPT)

    assert status == 200 and head["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# EOF" not in body
    assert sample(body, "shop_orders_total", kind="book") == 3
    assert b"Accept: text/plain" in upstreams[1].requests[-1]  # Envoy has text only


async def test_openmetrics_when_asked_and_every_part_gives_it(
    upstreams: tuple[Upstream, Upstream],
) -> None:
    envoy, app = upstreams
    app.body = OM_APP_BODY
    app.content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    h = Host(parse_config(config_text(envoy, app, "  envoy: false\n"), "agent.yaml"))
    await h.admin.start()
    try:
        status, head, body = await h.scrape(Accept=OM_ACCEPT)
        _, plain_head, plain = await h.scrape()
    finally:
        await h.admin.stop()

    assert status == 200
    assert head["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert body.endswith("# EOF\n") and body.count("# EOF") == 1
    names = {f.name for f in parse_openmetrics(body)}  # the strict OpenMetrics parser
    assert {"shop_orders", "meshagent_build", "meshagent_scrape_target_up"} <= names
    assert plain_head["Content-Type"].startswith("text/plain")
    families(plain)


async def test_the_scrape_query_goes_to_envoy(
    host: Host, upstreams: tuple[Upstream, Upstream]
) -> None:
    await host.scrape("/stats/prometheus?usedonly&filter=cluster")
    assert (
        upstreams[0]
        .requests[-1]
        .startswith(b"GET /stats/prometheus?usedonly&filter=cluster HTTP/1.1")
    )
    assert upstreams[1].requests[-1].startswith(b"GET /metrics HTTP/1.1")


async def test_merge_off_answers_404(host: Host, upstreams: tuple[Upstream, Upstream]) -> None:
    host.config = parse_config(
        config_text(upstreams[0], upstreams[1], "  merge: false\n"), "agent.yaml"
    )
    status, _, _ = await host.scrape()
    assert status == 404
    assert upstreams[0].requests == []


def test_keep_new_families_groups_samples_under_their_family() -> None:
    taken = {"a", "b_total"}
    text = (
        '# HELP h Hist.\n# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n'
        "# TYPE b counter\nb_total 1\nlonely 2\n# TYPE a_total counter\na_total 3\n"
    )
    kept = keep_new_families(text, taken)
    assert kept.dropped == ["b", "a_total"]
    assert kept.kept.splitlines() == [
        "# HELP h Hist.", "# TYPE h histogram", 'h_bucket{le="1"} 1', "h_sum 1", "h_count 1",
        "lonely 2",
    ]  # fmt: skip
    assert {"h", "h_bucket", "lonely"} <= taken


@pytest.mark.parametrize(
    ("metrics", "error"),
    [
        ("{app: {port: 15020}}", "metrics.app.port: 15020 is the agent's admin port"),
        ("{app: {port: 15000}}", "metrics.app.port: 15000 is Envoy's admin port"),
        ("{app: {port: 15000, address: '::1'}}", "metrics.app.port: 15000 is Envoy's admin"),
        ("{app: {path: /m}}", "metrics.app.port: is required"),
        ("{app: {port: 80, path: 'm'}}", "metrics.app.path: must be a URL path"),
        ("{app: {port: 80, scheme: ftp}}", "metrics.app.scheme: must be one of: http, https"),
        ("{app: {port: 80, address: localhost}}", "metrics.app.address: 'localhost' is not"),
        ("{timeout: 1h}", "metrics.timeout: must be a duration from"),
        ("{merge: yes please}", "metrics.merge: must be true or false"),
        ("{nope: 1}", "metrics.nope: unknown key"),
    ],
)
def test_config_errors_are_located(metrics: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"state_dir: /tmp/x\nmetrics: {metrics}\n", "agent.yaml")
    assert f"agent.yaml:2: {error}" in str(caught.value)


def test_the_merged_endpoint_on_every_address_is_refused_as_the_application() -> None:
    with pytest.raises(ConfigError, match="the agent's admin port"):
        parse_config(
            "admin: {address: 0.0.0.0, allow_remote: true}\n"
            "metrics: {app: {port: 15020, address: 10.0.0.5}}\n",
            "agent.yaml",
        )


def test_config_defaults_and_an_application_on_another_address() -> None:
    config = parse_config(
        "metrics: {app: {port: 15020, address: 10.0.0.5, path: /q?x=1, scheme: https}}\n",
        "agent.yaml",
    )
    assert config.metrics.merge and config.metrics.envoy
    assert config.metrics.app is not None
    assert config.metrics.app.url() == "https://10.0.0.5:15020/q?x=1"
    assert parse_config("", "a.yaml").metrics.app is None


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_answer_that_is_not_an_exposition_fails_alone(
    host: Host, upstreams: tuple[Upstream, Upstream]
) -> None:
    # Given an application path that answers 200 with a web page
    upstreams[1].body = b"<html>\n<body>hello</body>\n</html>\n"
    upstreams[1].content_type = "text/html"

    with capture_logs() as logs:
        status, _, body = await host.scrape()

    # Then the scrape still parses, without the page, and says the application part failed
    assert status == 200 and "<html>" not in body
    families(body)
    assert sample(body, "meshagent_scrape_target_up", target="app") == 0
    assert "not a Prometheus exposition: line 1: '<html>'" in logs[0]["error"]


@pytest.mark.parametrize(
    "line",
    [
        "a " + "1" * 100_000 + "x",  # took minutes with an ambiguous number pattern
        "a{" + 'b="x"  ,  ' * 20_000 + " 1",
        'a{b="x"}' + " " * 100_000 + "1 " + " " * 100_000 + "x",
    ],
)
def test_checking_a_long_bad_line_takes_linear_time(line: str) -> None:
    started = time.monotonic()
    with pytest.raises(ValueError, match="line 1"):
        check_exposition(line.encode())
    assert time.monotonic() - started < 2


async def test_an_https_application_endpoint(tmp_path: Path) -> None:
    # Given an application that serves its metrics over TLS with its own certificate
    make_cacerts(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "ca-cert.pem", tmp_path / "ca-key.pem")
    envoy, app = Upstream(body=ENVOY_BODY), Upstream(body=APP_BODY)
    servers = [
        await asyncio.start_server(envoy.handle, "127.0.0.1", 0),
        await asyncio.start_server(app.handle, "127.0.0.1", 0, ssl=tls),
    ]
    envoy.port, app.port = (s.sockets[0].getsockname()[1] for s in servers)
    h = Host(
        parse_config(
            config_text(envoy, app, "  max_bytes: 65536\n").replace(
                f"port: {app.port}}}", f"port: {app.port}, scheme: https}}"
            ),
            "agent.yaml",
        )
    )
    await h.admin.start()
    try:
        status, _, body = await h.scrape()
    finally:
        await h.admin.stop()
        for server in servers:
            server.close()

    assert status == 200
    assert sample(body, "shop_orders_total", kind="book") == 3
    assert sample(body, "meshagent_scrape_target_up", target="app") == 1
