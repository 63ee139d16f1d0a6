"""Envoy's view (agent/envoyview.py) and how the status page shows it, without processes."""

from __future__ import annotations

import argparse
import io
import re
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from meshagent.agent import envoyview
from meshagent.agent.bugreport import write_archive
from meshagent.agent.statuspage import cluster_state, plain, render_html
from meshagent.gcpause import paused_gc
from tests.unit.test_ops_surface import report

DEAD = "outbound|80||dead.ns.svc.cluster.local"


def host(address: str, port: int, health: dict[str, Any] | None = None,
         **stats: int) -> dict[str, Any]:  # fmt: skip
    """A host_statuses entry as Envoy 1.40's /clusters?format=json writes it (zeros omitted)."""
    counters = [
        {"name": k, **({"value": str(stats[k])} if stats.get(k) else {})}
        for k in ("cx_connect_fail", "rq_error", "rq_success", "rq_total")
    ]
    gauges = [{"type": "GAUGE", "name": "rq_active", **({"value": str(stats["rq_active"])}
              if stats.get("rq_active") else {})}]  # fmt: skip
    return {"address": {"socket_address": {"address": address, "port_value": port}},
            "stats": counters + gauges, "weight": 1,
            "health_status": health or {"eds_health_status": "HEALTHY"}}  # fmt: skip


def clusters_doc() -> dict[str, Any]:
    return {"cluster_statuses": [
        {"name": "outbound|80||ok.ns.svc.cluster.local",
         "host_statuses": [host("10.0.0.1", 80, rq_success=5, rq_total=5)]},
        {"name": DEAD, "host_statuses": [host("127.0.0.9", 80, cx_connect_fail=4, rq_error=4)]},
        {"name": "outbound|80|v2|mixed.ns.svc.cluster.local", "host_statuses": [
            host("10.0.0.2", 80, rq_success=3, rq_active=2),
            host("10.0.0.3", 80, {"eds_health_status": "HEALTHY", "failed_outlier_check": True},
                 rq_error=7)]},
    ]}  # fmt: skip


def test_cluster_health_reads_envoy_counters_and_flags() -> None:
    by_name = {c["name"]: c for c in envoyview.cluster_health(clusters_doc())}
    dead = by_name[DEAD]
    assert (dead["cx_connect_fail"], dead["rq_error"], dead["healthy"]) == (4, 4, 0)
    assert dead["endpoints"][0]["health"] == "failing" and cluster_state(dead) == "failing"
    mixed = by_name["outbound|80|v2|mixed.ns.svc.cluster.local"]
    assert mixed["ejected"] == 1 and mixed["rq_active"] == 2 and cluster_state(mixed) == "degraded"
    assert mixed["endpoints"][1]["flags"] == ["ejected"]
    assert cluster_state(by_name["outbound|80||ok.ns.svc.cluster.local"]) == "healthy"
    ranked = sorted(by_name.values(), key=envoyview.problem_rank)
    assert ranked[-1]["name"].startswith("outbound|80||ok.")  # the healthy one last


def test_server_info_and_readable_durations() -> None:
    info = {
        "version": "9e55/1.40.0/Clean/RELEASE/BoringSSL",
        "state": "LIVE",
        "uptime_current_epoch": "3725s",
        "command_line_options": {"restart_epoch": 0},
    }
    assert envoyview.server_report(info)["version"] == "1.40.0"
    assert envoyview.server_report(info)["uptime_s"] == 3725
    assert envoyview.duration_text(29 * 86400 + 23 * 3600 + 59) == "29d 23h"
    assert envoyview.duration_text(3725) == "1h 2m"
    assert envoyview.duration_text(42) == "42s"
    assert envoyview.duration_text(-120) == "expired 2m 0s ago"


def test_plain_values_have_no_python_reprs() -> None:
    assert plain(None) == "-" and plain(True) == "yes" and plain(False) == "no"
    assert plain({"http": 80}) == "http=80" and plain(frozenset({"a"})) == "a"
    assert plain(("a", "b")) == "a, b" and plain(1.5) == "1.5"


def page(**options: Any) -> str:
    envoy = {"server": envoyview.server_report({"version": "x/1.40.0/y", "state": "LIVE",
                                                "uptime_current_epoch": "10s"}),
             "clusters": envoyview.cluster_health(clusters_doc()), "error": None}  # fmt: skip
    facts = {"version": "0.1.0", "uptime_s": 90061, "envoy_managed": True, "envoy_up": True,
             "envoy_restarts": 2, "last_reload": {"at": 0.0, "result": "ok"}}  # fmt: skip
    certificates = [{"identity": "spiffe://cluster.local/ns/a/sa/b", "serial": "1f",
                     "not_after": "2027-01-01T00:00:00Z", "expires_in_s": 2588460}]  # fmt: skip
    return render_html(report(agent=facts, certificates=certificates), envoy, **options)


def test_status_page_shows_envoy_beside_the_agent_in_plain_values() -> None:
    html = page()
    clusters = html.split('id="clusters"', 1)[1].split("</section>", 1)[0]
    assert clusters.index(DEAD) < clusters.index("outbound|80||ok.")  # troubled first
    assert "<td>failing</td>" in clusters
    assert "29d 23h" in html and "1d 1h" in html  # certificate time left, agent uptime
    assert "ok at 1970-01-01T00:00:00Z" in html and "<td>2</td>" in html  # reload, restarts
    assert 'http-equiv="refresh" content="10"' in html
    for marker in (">None<", ">True<", ">False<", "frozenset(", "Provenance(", "{'"):
        assert marker not in html, marker
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)


def test_status_page_refresh_off_and_top_n() -> None:
    html = page(refresh=0, top=1)
    assert "http-equiv" not in html and "clusters 1-1 of 3" in html
    assert 'href="?top=1&amp;page=1"' in html
    second = page(refresh=0, top=1, page=1).split('id="clusters"', 1)[1].split("</section>")[0]
    assert DEAD not in second


def test_status_page_without_envoy_says_why() -> None:
    why = "Envoy admin http://127.0.0.1:1/ unreachable"
    html = render_html(report(), {"server": None, "clusters": None, "error": why})
    assert "unreachable" in html.split('id="clusters"', 1)[1].split("</section>")[0]


def test_status_page_is_cheap_with_10k_clusters() -> None:
    doc = {"cluster_statuses": [
        {"name": f"outbound|80||s{i}.ns.svc.cluster.local",
         "host_statuses": [host(f"10.{i // 250}.{i % 250}.{j}", 80, rq_success=1)
                           for j in range(10)]}
        for i in range(10_000)]}  # fmt: skip
    services = [{"host": f"s{i}.ns.svc.cluster.local", "ports": ["80/HTTP"],
                 "endpoints": [{"address": f"10.0.{j}.{i % 250}", "ports": {"http": 80},
                                "healthy": True} for j in range(10)]}
                for i in range(10_000)]  # fmt: skip
    base = report()
    start = time.perf_counter()
    with paused_gc():  # as the agent parses it (opspages._paused)
        envoy = {"server": None, "clusters": envoyview.cluster_health(doc), "error": None}
        mesh = {**base["mesh"], "services": services}  # type: ignore[dict-item]
        html = render_html(report(mesh=mesh), envoy)
    elapsed = time.perf_counter() - start
    assert len(html) < 200_000 and "50 of 10000 services shown" in html
    assert elapsed < 3.0, elapsed  # about 0.4 s on the 2-core test machine


def test_filters_as_istioctl() -> None:
    item = {"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "resource": {}}
    assert envoyview.matches(item, "clusters", {"fqdn": "reviews", "port": "9080"})
    assert envoyview.matches(item, "clusters", {"subset": "v1", "direction": "outbound"})
    assert not envoyview.matches(item, "clusters", {"subset": "v2"})
    assert not envoyview.matches(item, "clusters", {"fqdn": "review"})
    listener = {"name": "inbound_10.0.0.1_8080",
                "resource": {"address": {"socketAddress": {"portValue": 8080}}}}  # fmt: skip
    assert envoyview.matches(listener, "listeners", {"port": "8080", "direction": "inbound"})
    route = {"name": "8080", "resource": {"virtualHosts": [{"domains": ["a.b", "a.b:8080"]}]}}
    assert envoyview.matches(route, "routes", {"fqdn": "a.b", "port": "8080"})


def test_dump_resources_names_versions_and_recoded_fields() -> None:
    dump = {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                         "dynamic_active_clusters": [{"version_info": "v7", "cluster": {
                             "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                             "name": "c1", "connect_timeout": "1s"}}]}]}  # fmt: skip
    (item,) = envoyview.dump_resources(dump, "clusters")
    assert (item["name"], item["version"]) == ("c1", "v7")
    assert item["resource"]["connectTimeout"] == "1s"  # the agent's (json_format's) names


KEY = (
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIDk0Y2Vq0bqQzO9fZ0aM1Yq3xqZ8n2vJzJjL3W4nKx1Yo\n"
    "-----END EC PRIVATE KEY-----\n"
)


def test_bug_report_archive_redacts_keys(tmp_path: Path) -> None:
    import base64

    b64 = base64.b64encode(KEY.encode()).decode()
    files = {"config/mesh/secret.yaml": f"data:\n  tls.key: {b64}\n",
             "logs/agent.log": f"oops {KEY} end", "versions.json": "{}"}  # fmt: skip
    target = tmp_path / "r.tar.gz"
    write_archive(target, files, prefix="report")
    with tarfile.open(target) as tar:
        text = "".join(tar.extractfile(m).read().decode() for m in tar.getmembers())  # type: ignore[union-attr]
    assert "PRIVATE KEY" not in text and b64[:40] not in text and "[redacted]" in text
    assert target.stat().st_mode & 0o077 == 0


def test_bug_report_notes_what_it_could_not_reach(tmp_path: Path) -> None:
    from meshagent.agent.bugreport import bug_report
    from meshagent.agent.config import parse_config

    config = parse_config(
        f"node: {{id: n1}}\nstate_dir: {tmp_path}/state\nenvoy: {{admin_port: 1}}\n",
        tmp_path / "agent.yaml",
    )
    (tmp_path / "agent.yaml").write_text("node: {id: n1}\n")
    out = io.StringIO()
    args = argparse.Namespace(output=tmp_path / "b.tar.gz", log=[], journal_lines=10)
    assert bug_report(config, args, out) == 0
    assert "not collected: agent/status.json" in out.getvalue()
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
    assert {"config/agent.yaml", "versions.json", "errors.txt"} <= names


@pytest.mark.parametrize("level", ["debug", "upstream:info,router:debug"])
def test_envoy_log_level_query(
    level: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshagent.agent import opscli
    from meshagent.agent.cli import main

    seen: list[str] = []
    monkeypatch.setattr(opscli, "fetch", lambda url, **kw: seen.append(url) or b"active loggers\n")
    config = tmp_path / "agent.yaml"
    config.write_text("envoy: {admin_port: 9}\n")
    assert main(["proxy-config", "log", "--level", level, "-c", str(config)]) == 0
    assert capsys.readouterr().out == "active loggers\n"
    assert seen == [
        "http://127.0.0.1:9/logging" + ("?level=debug" if ":" not in level else f"?paths={level}")
    ]
