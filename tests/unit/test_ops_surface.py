"""Operator surface without processes: status page HTML, admin actions, convergence, completion."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from meshagent.agent.admin import AdminServer, Response
from meshagent.agent.cli import build_parser
from meshagent.agent.convergence import ConvergenceTracker
from meshagent.agent.metrics import AgentMetrics
from meshagent.agent.opscli import completion_script
from meshagent.agent.statuspage import render_html
from meshagent.xds.status import ProxyStatus, TypeStatus

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def report(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "node": "vm-1", "not_ready": [], "sources": [{"name": "files", "synced": True}],
        "mesh": {"version": 3, "routes": [], "services": [
            {"host": "a.ns.svc.cluster.local", "ports": ["80/HTTP"],
             "endpoints": [{"address": "10.0.0.1", "ports": {"http": 80}, "healthy": False}]}]},
        "certificates": [], "diagnostics": [],
        "xds": {"connected": True, "stream": "delta", "types": {"cds": {
            "sent": "v1", "acked": "v1", "in_sync": True, "nacked": None, "nack_error": None,
            "rejected": []}}},
    }  # fmt: skip
    return {**base, **overrides}


def test_status_page_escapes_everything_and_needs_no_external_assets() -> None:
    evil = {
        "severity": "error", "location": "<b>x.yaml</b>:3", "kind": "ServiceEntry",
        "name": "<script>alert(1)</script>", "field": "spec", "reason": "bad & worse",
    }  # fmt: skip
    page = render_html(report(diagnostics=[evil], not_ready=["envoy <vm> not connected"]))
    assert "<script>" not in page and "&lt;script&gt;" in page and "bad &amp; worse" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "10.0.0.1" in page and "unhealthy" in page
    certificates = page.split('id="certificates"', 1)[1].split("</section>", 1)[0]
    assert "none" in certificates


async def test_post_actions_and_async_pages(tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    async def slow() -> Response:
        await asyncio.sleep(0)
        return Response.text(200, "later\n")

    admin = AdminServer("127.0.0.1", 0, {"/slow": slow}, socket_path=tmp_path / "admin.sock")
    admin.actions["/act"] = lambda params: seen.append(params) or Response.text(200, "done\n")
    await admin.start()
    try:

        async def call(raw: bytes) -> bytes:
            reader, writer = await asyncio.open_unix_connection(tmp_path / "admin.sock")
            writer.write(raw)
            data = await reader.read()
            writer.close()
            return data

        assert b"later" in await call(b"GET /slow HTTP/1.1\r\n\r\n")
        assert b" 200 " in await call(b"POST /act?level=debug HTTP/1.1\r\n\r\n")
        assert seen == [{"level": "debug"}]
        assert b" 405 " in await call(b"POST /slow HTTP/1.1\r\n\r\n")
    finally:
        await admin.stop()


def test_convergence_counts_a_change_once_everything_sent_after_it_is_acked() -> None:
    metrics = AgentMetrics()
    status = [ProxyStatus()]
    tracker = ConvergenceTracker(metrics, lambda: status[0])
    samples = lambda: metrics.convergence.collect()[0].samples  # noqa: E731
    count = lambda: next(s.value for s in samples() if s.name.endswith("_count"))  # noqa: E731

    tracker.changed()
    tracker.published(pushes=True)
    old = TypeStatus(last_sent_version="v0", last_acked_version="v0", sent_at=0.0)
    status[0] = ProxyStatus(connected=True, types={CDS: old})
    tracker.acked()  # an ACK of a push made before this change
    assert count() == 0
    new = TypeStatus(last_sent_version="v1", last_acked_version="v1", sent_at=1e12)
    status[0] = ProxyStatus(connected=True, types={CDS: new})
    tracker.acked()
    assert count() == 1

    tracker.changed()
    tracker.published(pushes=False)  # nothing new for Envoy: no sample
    tracker.acked()
    assert count() == 1


def test_completion_scripts_cover_the_commands() -> None:
    script = completion_script(build_parser(), "bash")
    assert "proxy-config) opts=" in script and "clusters" in script and "status" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    assert "bashcompinit" in completion_script(build_parser(), "zsh")


def test_proxy_config_short_table_marks_what_envoy_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshagent.agent import envoyview, opscli
    from meshagent.agent.cli import main
    from meshagent.errors import MeshAgentError

    # given the agent serves clusters a and b, and Envoy applied a at the served version
    served = {
        "cds": [{"name": n, "version": v, "resource": {}} for n, v in (("a", "v1"), ("b", "v2"))]
    }
    monkeypatch.setattr(opscli, "fetch_admin", lambda *_, **__: json.dumps(served).encode())
    dump = {
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "dynamic_active_clusters": [{"version_info": "v1", "cluster": {"name": "a"}}],
            }
        ]
    }
    monkeypatch.setattr(envoyview, "get_json", lambda *_, **__: dump)
    config = tmp_path / "agent.yaml"
    config.write_text("{}\n")
    assert main(["proxy-config", "clusters", "-c", str(config)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].endswith(" yes") and rows[2].endswith(" missing")

    # and when Envoy's admin cannot be asked, nothing is known of it
    def unreachable(*_: Any, **__: Any) -> Any:
        raise MeshAgentError("Envoy admin unreachable")

    monkeypatch.setattr(envoyview, "get_json", unreachable)
    assert main(["proxy-config", "clusters", "-c", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(" unknown")
