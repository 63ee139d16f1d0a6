"""Benchmark: one WorkloadEntry change in the mesh files -> Envoy serving it, beside Envoy's own
file-watched CDS fed the same clusters (issue 17).

The mesh has Istio's serviceentry-workloadentry shape, generated here: N ServiceEntries
(services.yaml), each with four ports (http 80, https 443, grpc 9090, tcp 3306; 4 clusters) and
`workloadSelector: {app: svc-<i>}`, and N WorkloadEntries (workloads.yaml) labelled
`app: svc-<i>`, every port targeting the "old" upstream on 127.0.0.1:P. A "new" upstream answers
on 127.0.0.2:P (same port), so one change is what ansible or an editor does to move a
workload: rewrite workloads.yaml whole (temporary file, then rename) with one entry's address
moved from 127.0.0.1 to 127.0.0.2 (or back).

Two data planes run in the same process tree, each an Envoy with --concurrency 1:
  agent   `meshagent run` with the files source, managing its Envoy (delta ADS)
  files   an Envoy whose CDS is a file (`cds_config.path_config_source`), every cluster STATIC
          with an inline load_assignment (the same 4N clusters, the same endpoints), the file
          rewritten whole and renamed on each change; a static listener routes by Host.
Each change is made in both, one after the other, and timed from the rename until a request
through that Envoy to the service is answered by the upstream the change points at (requests
back to back on new connections; no admin polling, which would load Envoy's main thread).
The agent side's stages of each change (`change_agent_stages`, from its log): from the rename
to the snapshot published, and to Envoy's ACK of the endpoints reaching the agent.

Initial load: from the process start (the agent's, or the file Envoy's) until Envoy is LIVE
(admin `/ready`, polled every 50 ms), has every cluster active (admin stats
`cluster_manager.active_clusters`, then checked once a second) and answers for the last
service; for the agent also when its /readyz first answers 200 (`agent_ready_s`: ready must
mean Envoy has the configuration, so never before the ACKs). meshagent's bytecode is compiled
before the agent starts, as an installed package has it (this machine sets
PYTHONDONTWRITEBYTECODE: compiling its ~240 modules added about 0.3 s to each start).
Memory: the agent's RSS after the load and after the changes, and both Envoys'
`server.memory_allocated` after the load. `cpu_ms_per_change` is each process's CPU over the
changes divided by their number; an Envoy's includes serving the probe requests, which go on
for as long as that side takes to converge.

Usage: python benchmarks/files_convergence.py [--services 1000] [--changes 100]
       [--debounce-ms 100] [--poll-ms 200] [--quick] [--shape S] [--stats-preset P]
       [--files-stats S] [--files-clusters C] [--sotw]
       [--keep DIR]
  --shape  serviceentry-workloadentry (above, default); http: one HTTP port per service, its
           endpoint inline in the ServiceEntry (Istio's http benchmark, without the VIPs);
           virtualservice: the same plus a VirtualService per service (prefix /foo or regex
           /bar, rewrite, one destination; probed on /foo). A change rewrites the file of
           WorkloadEntries, or that of ServiceEntries
  --sotw   the agent's Envoy uses state-of-the-world ADS instead of delta
  --stats-preset  the agent's `envoy.stats.preset` (standard, the default; all; istio)
  --files-stats   the file-CDS Envoy's stats_config: `envoy` (Envoy's defaults) or `agent`
           (the agent's bootstrap stats_config with --stats-preset's stats_matcher, deferred
           statistics and flush: like for like)
  --files-clusters  the file-CDS clusters: `minimal`, or `agent` (with the agent's circuit
           breakers and gRPC ports' HTTP/2 options; endpoints still inline)
  --agent-log  debug: the initial load's timeline also has when each type's first response went
           out (`push_Cluster`, ...), next to Envoy's ACK of it (`ack_Cluster`, ...)
  --keep   work in DIR and leave it: the agent's log, both bootstraps, the mesh files
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._envoy import (
    FastApp,
    cpu_s,
    envoy_binary,
    envoy_stats,
    free_port,
    http_get,
    percentile,
    rss_mb,
    wait_until,
)

REPO = Path(__file__).resolve().parents[1]
NS = "bench"
Port = tuple[str, int, str]  # name, number, protocol
PORTS: tuple[Port, ...] = (
    ("http", 80, "HTTP"),
    ("https", 443, "HTTPS"),
    ("grpc", 9090, "GRPC"),
    ("tcp", 3306, "TCP"),
)
HTTP_ONLY: tuple[Port, ...] = (("http", 80, "HTTP"),)
OLD, NEW = "127.0.0.1", "127.0.0.2"
LOAD_TIMEOUT_S = 1800.0
CHANGE_TIMEOUT_S = 600.0
ENVOY_ARGS = ("--use-dynamic-base-id", "--log-level", "warning", "--concurrency", "1")
ENVOY_STATS = (
    "cluster_manager.active_clusters",
    "cluster_manager.warming_clusters",
    "server.state",
    "server.memory_allocated",
    "server.memory_heap_size",
)


def host(i: int) -> str:
    return f"svc-{i}.{NS}.example"


def service_entry(i: int, ports: tuple[Port, ...] = PORTS, tail: str = "") -> str:
    """ServiceEntry svc-<i> with ports; tail ends its spec (default: the workloadSelector)."""
    listed = "".join(
        f"  - {{number: {number}, name: {name}, protocol: {protocol}}}\n"
        for name, number, protocol in ports
    )
    tail = tail or f"  workloadSelector: {{labels: {{app: svc-{i}}}}}\n"
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata: {{name: svc-{i}, namespace: {NS}}}\n"
        f"spec:\n  hosts: [{host(i)}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n"
        f"  ports:\n{listed}{tail}"
    )


def service_with_endpoint(i: int, address: str, port: int) -> str:
    """The http and virtualservice shapes: one HTTP port, one endpoint inline."""
    return service_entry(
        i, HTTP_ONLY, f"  endpoints:\n  - {{address: {address}, ports: {{http: {port}}}}}\n"
    )


def virtual_service(i: int) -> str:
    """The virtualservice shape: a prefix and a regex match, a rewrite, one destination."""
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: vs-{i}, namespace: {NS}}}\n"
        f"spec:\n  hosts: [{host(i)}]\n  http:\n  - name: match-route\n"
        "    match:\n    - uri: {prefix: /foo}\n    - uri: {regex: /bar}\n"
        "    rewrite: {uri: /new-url}\n"
        f"    route:\n    - destination: {{host: {host(i)}}}\n"
    )


@dataclasses.dataclass(frozen=True)
class Shape:
    """A generated mesh: the files written once, the file each change rewrites whole (one
    document per service, from `entry`), the ports (a cluster each) and the probe's path."""

    ports: tuple[Port, ...]
    fixed: dict[str, Callable[[int], str]]
    changing: str
    entry: Callable[[int, str, int], str]
    path: str = "/"


def workload_entry(i: int, address: str, port: int) -> str:
    ports = ", ".join(f"{name}: {port}" for name, _, _ in PORTS)
    return (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        f"metadata: {{name: svc-{i}, namespace: {NS}}}\n"
        f"spec:\n  address: {address}\n  labels: {{app: svc-{i}, version: v1}}\n"
        f"  ports: {{{ports}}}\n"
    )


SHAPES = {
    # Istio's serviceentry-workloadentry benchmark: 4 ports, WorkloadEntries by selector
    "serviceentry-workloadentry": Shape(
        PORTS, {"services.yaml": service_entry}, "workloads.yaml", workload_entry
    ),
    # Istio's http benchmark: one HTTP port, the endpoint in the ServiceEntry
    "http": Shape(HTTP_ONLY, {}, "services.yaml", service_with_endpoint),
    # Istio's virtualservice benchmark: the same plus a VirtualService per service
    "virtualservice": Shape(
        HTTP_ONLY, {"vs.yaml": virtual_service}, "services.yaml", service_with_endpoint, "/foo"
    ),
}


def cluster_name(i: int, number: int) -> str:
    return f"outbound|{number}||{host(i)}"


# What the agent's clusters carry beyond a minimal one (Istio's defaults): circuit breakers
# with every threshold at its maximum and remaining-capacity gauges, HTTP/2 for gRPC ports.
AGENT_CIRCUIT_BREAKERS = {
    "thresholds": [
        {
            "max_connections": 4294967295,
            "max_pending_requests": 4294967295,
            "max_requests": 4294967295,
            "max_retries": 4294967295,
            "track_remaining": True,
        }
    ]
}
HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def static_clusters(
    i: int, address: str, port: int, ports: tuple[Port, ...] = PORTS, like_agent: bool = False
) -> list[str]:
    """Service i's clusters as a static-files user writes them (JSON text, one per port);
    like_agent: with the options the agent's clusters have (but endpoints inline)."""
    out = []
    for _, number, protocol in ports:
        name = cluster_name(i, number)
        endpoint = {"address": {"socket_address": {"address": address, "port_value": port}}}
        extra: dict[str, Any] = {}
        if like_agent:
            extra["circuit_breakers"] = AGENT_CIRCUIT_BREAKERS
            if protocol == "GRPC":
                extra["typed_extension_protocol_options"] = HTTP2_OPTIONS
        cluster = {
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": name,
            "type": "STATIC",
            "connect_timeout": "10s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
            },
            **extra,
        }
        out.append(json.dumps(cluster, separators=(",", ":")))
    return out


def replace(path: Path, text: str) -> float:
    """Write text to path editor-style (a temporary file renamed into place); the rename's time."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    start = time.perf_counter()
    os.replace(tmp, path)
    return start


def files_bootstrap(
    admin_port: int,
    listen_port: int,
    cds: Path,
    n: int,
    stats: str = "envoy",
    preset: str = "standard",
) -> dict[str, Any]:
    """The file-CDS Envoy's bootstrap. stats `envoy`: Envoy's default stats_config; `agent`:
    the agent's (its tags, the stats_matcher of `envoy.stats.preset` preset, deferred
    statistics, flush on admin), to compare like with like."""
    virtual_hosts = [
        {
            "name": host(i),
            "domains": [host(i)],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster_name(i, 80)}}],
        }
        for i in range(n)
    ]
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "outbound",
        "route_config": {"validate_clusters": False, "virtual_hosts": virtual_hosts},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": "outbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    return {
        "node": {"id": "filecds", "cluster": "filecds"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "dynamic_resources": {
            "cds_config": {"resource_api_version": "V3", "path_config_source": {"path": str(cds)}}
        },
        "static_resources": {"listeners": [listener]},
        **(agent_stats_bootstrap(preset) if stats == "agent" else {}),
    }


def agent_stats_bootstrap(preset: str = "standard") -> dict[str, Any]:
    """The statistics part of the bootstrap the agent gives its Envoy (the default config,
    with `envoy.stats.preset` preset)."""
    from meshagent.xds.bootstrap import build_bootstrap
    from meshagent.xds.stats_tags import preset_matcher

    agent = build_bootstrap(
        node_id="x",
        cluster="x",
        xds_uds_path="/x",
        deferred_stats=True,
        stats_matcher=preset_matcher(preset),
    )
    keys = ("stats_config", "stats_flush_on_admin", "deferred_stat_options")
    return {key: agent[key] for key in keys if key in agent}


class Plane:
    """One data plane under test: how to change service i, and where to send its traffic."""

    def __init__(self, name: str, listen_port: int, admin_port: int, path: str = "/") -> None:
        self.name = name
        self.listen_port = listen_port
        self.admin_port = admin_port
        self.path = path
        self.latencies: list[float] = []

    def served_by(self, i: int) -> str:
        """Who answered a request for service i through this Envoy ('' if none)."""
        try:
            status, headers, _ = http_get(self.listen_port, self.path, host(i), timeout=5)
        except OSError:
            return ""
        return headers.get("x-served-by", str(status))


def wait_loaded(plane: Plane, started: float, clusters: int, last: int) -> dict[str, float]:
    """Seconds from started until Envoy is LIVE with every cluster, then serving the last one.

    `/ready` is polled until LIVE (cheap), then the stats once a second: at 40k clusters one
    stats query walks millions of stats on Envoy's main thread, the thread that applies config,
    and querying them every 100 ms would slow down what is measured."""
    wait_until(
        lambda: http_get(plane.admin_port, "/ready", timeout=30)[0] == 200,
        timeout=LOAD_TIMEOUT_S,
        what=f"{plane.name}: Envoy LIVE",
        step=0.05,
    )
    live_s = time.perf_counter() - started

    def loaded() -> bool:
        stats = envoy_stats(plane.admin_port, *ENVOY_STATS)
        return (
            stats.get("cluster_manager.active_clusters", 0) >= clusters
            and stats.get("cluster_manager.warming_clusters", 1) == 0
        )

    wait_until(loaded, timeout=LOAD_TIMEOUT_S, what=f"{plane.name}: clusters", step=1.0)
    clusters_s = time.perf_counter() - started
    wait_until(
        lambda: plane.served_by(last) == "old",
        timeout=LOAD_TIMEOUT_S,
        what=f"{plane.name}: serving",
        step=0.01,
    )
    return {
        "live_s": round(live_s, 2),
        "clusters_s": round(clusters_s, 2),
        "serving_s": round(time.perf_counter() - started, 2),
    }


TIMELINE = {
    "agent_started": "agent_started",
    "source_synced": "files_read",
    "snapshot_published": "first_snapshot",
}


def log_events(log: Path) -> Iterator[tuple[dict[str, Any], float]]:
    """The agent's JSON log events, each with its timestamp (Unix seconds)."""
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
            at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError):
            continue
        yield event, at


def timeline(log: Path, start: float) -> dict[str, float]:
    """Seconds from start to the agent's first load milestones (from its JSON log): started,
    files read, first snapshot, and Envoy's ACK of each type (and, with --agent-log debug, the
    first response of each type sent)."""
    out: dict[str, float] = {}
    for event, at in log_events(log):
        name = TIMELINE.get(event.get("event", ""))
        if event.get("event") in ("xds_ack", "xds_pushed"):
            prefix = "ack_" if event["event"] == "xds_ack" else "push_"
            name = prefix + event.get("type_url", "").rsplit(".", 1)[-1]
        if name and name not in out:
            out[name] = round(at - start, 2)
    return out


class ReadyWatch:
    """When the agent's /readyz first answers 200 (polled every 100 ms from a thread), to
    check that ready means Envoy has the configuration: not before its clusters are active."""

    def __init__(self, admin_port: int, started: float) -> None:
        self.ready_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(admin_port, started), daemon=True)
        self._thread.start()

    def _poll(self, port: int, started: float) -> None:
        while not self._stop.is_set():
            try:
                if http_get(port, "/readyz", timeout=5)[0] == 200:
                    self.ready_s = round(time.perf_counter() - started, 2)
                    return
            except OSError:
                pass
            self._stop.wait(0.1)

    def result(self) -> float | None:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.ready_s


def envoy_pid(state_dir: Path) -> int | None:
    """The pid of the Envoy the agent manages (its pid file: "<pid> <start time>")."""
    try:
        return int((state_dir / "envoy.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_served(plane: Plane, i: int, who: str, start: float) -> None:
    deadline = start + CHANGE_TIMEOUT_S
    while plane.served_by(i) != who:
        if time.perf_counter() > deadline:
            raise SystemExit(f"{plane.name}: change of svc-{i} not served in {CHANGE_TIMEOUT_S}s")
    plane.latencies.append(1000 * (time.perf_counter() - start))


def envoy_memory(admin_port: int) -> dict[str, float]:
    stats = envoy_stats(admin_port, "server.memory_allocated", "server.memory_heap_size")
    return {
        "allocated_mb": round(stats.get("server.memory_allocated", 0) / 2**20, 1),
        "heap_mb": round(stats.get("server.memory_heap_size", 0) / 2**20, 1),
    }


def summary(plane: Plane) -> dict[str, float]:
    values = plane.latencies
    return {
        "p50_ms": percentile(values, 0.5),
        "p99_ms": percentile(values, 0.99),
        "max_ms": round(max(values), 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


def change_stages(log: Path, renames: list[float]) -> dict[str, float]:
    """Where the agent side's time goes, from its JSON log: for each change (its rename on the
    wall clock), ms until the agent published the new snapshot (files read, normalized,
    translated, checked) and until Envoy's ACK of the endpoints reached the agent; p50/p99."""
    marks: dict[str, list[float]] = {"snapshot_published": [], "xds_ack": []}
    for event, at in log_events(log):
        name = event.get("event", "")
        if name == "snapshot_published" or event.get("type_url", "").endswith("Assignment"):
            marks["snapshot_published" if name == "snapshot_published" else "xds_ack"].append(at)
    out: dict[str, float] = {}
    for name, times in marks.items():
        delays = [1000 * (next(t for t in times if t >= r) - r) for r in renames if times[-1] >= r]
        if delays:
            out[f"{name}_p50_ms"] = percentile(delays, 0.5)
            out[f"{name}_p99_ms"] = percentile(delays, 0.99)
    return out


def start_apps() -> tuple[FastApp, FastApp]:
    """ "old" on 127.0.0.1:P and "new" on 127.0.0.2:P, the same port P."""
    for _ in range(20):
        old = FastApp("old", OLD)
        try:
            return old, FastApp("new", NEW, old.port)
        except OSError:  # P is taken on 127.0.0.2
            old.close()
    raise SystemExit("no port free on both 127.0.0.1 and 127.0.0.2")


def workdir(keep: str | None) -> contextlib.AbstractContextManager[str]:
    """A temporary directory, or keep (created, left in place: logs and files to read after)."""
    if keep is None:
        return tempfile.TemporaryDirectory()
    Path(keep).mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(keep)


def run(
    n: int,
    changes: int,
    debounce_ms: int,
    poll_ms: int,
    pause: float,
    keep: str | None = None,
    sotw: bool = False,
    shape_name: str = "serviceentry-workloadentry",
    stats_preset: str = "standard",
    files_stats: str = "envoy",
    files_clusters: str = "minimal",
    agent_log: str = "info",
) -> dict[str, Any]:
    shape = SHAPES[shape_name]
    per_service = len(shape.ports)
    old, new = start_apps()
    port = old.port
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {
        "shape": shape_name,
        "envoy_stats_preset": stats_preset,
        "files_envoy_stats": files_stats,
        "files_clusters": files_clusters,
        "services": n,
        "clusters": per_service * n,
        "changes": changes,
        "debounce_ms": debounce_ms,
        "poll_interval_ms": poll_ms,
        "xds": "sotw" if sotw else "delta",
        "pause_between_changes_s": pause,
        "load_average_at_start": os.getloadavg()[0],
    }
    try:
        with workdir(keep) as tmp:
            root = Path(tmp)
            # -- Envoy's own file-watched CDS ----------------------------------------------
            cds = root / "cds.json"
            like = files_clusters == "agent"
            clusters = [static_clusters(i, OLD, port, shape.ports, like) for i in range(n)]

            def cds_text() -> str:
                body = ",".join(c for per in clusters for c in per)
                return f'{{"version_info":"{time.time_ns()}","resources":[{body}]}}'

            cds.write_text(cds_text())
            files = Plane("files", free_port(), free_port(), shape.path)
            bootstrap = root / "filecds-bootstrap.json"
            bootstrap.write_text(
                json.dumps(
                    files_bootstrap(
                        files.admin_port, files.listen_port, cds, n, files_stats, stats_preset
                    )
                )
            )
            log = open(root / "filecds-envoy.log", "ab")  # noqa: SIM115 - the process owns it
            started = time.perf_counter()
            procs.append(
                subprocess.Popen(
                    [envoy_binary(), "-c", str(bootstrap), *ENVOY_ARGS], stdout=log, stderr=log
                )
            )
            result["initial_load_files"] = wait_loaded(files, started, per_service * n, n - 1)
            result["initial_load_files"]["envoy_cpu_s"] = cpu_s(procs[0].pid)
            result["envoy_memory_files"] = envoy_memory(files.admin_port)

            # -- meshagent, files source, managed Envoy ------------------------------------
            mesh = root / "mesh"
            mesh.mkdir()
            for fixed, document in shape.fixed.items():
                (mesh / fixed).write_text("---\n".join(document(i) for i in range(n)))
            entries = [shape.entry(i, OLD, port) for i in range(n)]
            workloads = mesh / shape.changing
            workloads.write_text("---\n".join(entries))
            agent = Plane("agent", free_port(), free_port(), shape.path)
            agent_admin = free_port()
            config = {
                "node": {"id": "bench", "cluster": "meshagent", "namespace": NS},
                "sources": {
                    "files": {
                        "paths": ["mesh/"],
                        "debounce_ms": debounce_ms,
                        "poll_interval_ms": poll_ms,
                    }
                },
                "state_dir": "state",
                "xds": {"delta": not sotw},
                "admin": {"address": "127.0.0.1", "port": agent_admin},
                "envoy": {
                    "manage": True,
                    "admin_port": agent.admin_port,
                    "concurrency": 1,
                    "log_level": "warning",
                    "stats": {"preset": stats_preset},
                },
                "outbound": {
                    "address": "127.0.0.1",
                    "ports": {80: agent.listen_port, 9090: free_port()},
                },
                "log": {"level": agent_log, "format": "json"},
            }
            (root / "agent.yaml").write_text(yaml.safe_dump(config))
            compileall.compile_dir(REPO / "meshagent", quiet=1)  # as pip install does
            log = open(root / "agent.log", "ab")  # noqa: SIM115 - the process owns it
            started = time.perf_counter()
            agent_proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "meshagent.agent.cli",
                    "run",
                    "--config",
                    str(root / "agent.yaml"),
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            procs.append(agent_proc)
            wall = time.time() - (time.perf_counter() - started)  # the start, on the wall clock
            ready = ReadyWatch(agent_admin, started)
            result["initial_load_agent"] = wait_loaded(agent, started, per_service * n, n - 1)
            loaded = result["initial_load_agent"]
            wait_until(lambda: ready.ready_s, timeout=60, what="agent /readyz 200", step=0.1)
            loaded["agent_ready_s"] = ready.result()
            loaded["timeline_s"] = timeline(root / "agent.log", wall)
            loaded["agent_cpu_s"] = cpu_s(agent_proc.pid)
            loaded["envoy_cpu_s"] = cpu_s(envoy_pid(root / "state"))
            result["envoy_memory_agent"] = envoy_memory(agent.admin_port)
            result["agent_rss_mb_loaded"] = rss_mb(agent_proc.pid)

            # -- changes, one at a time, each in both planes -------------------------------
            at = [OLD] * n
            agent_envoy = envoy_pid(root / "state")
            cpu_before = [cpu_s(p) for p in (agent_proc.pid, agent_envoy, procs[0].pid)]
            renames: list[float] = []  # the agent side's, on the wall clock
            for k in range(changes):
                i = (k * 7919) % n  # spread over the mesh
                at[i] = NEW if at[i] == OLD else OLD
                who = "new" if at[i] == NEW else "old"
                time.sleep(pause)  # both Envoys finish the previous change's work first
                entries[i] = shape.entry(i, at[i], port)
                renames.append(time.time())
                start = replace(workloads, "---\n".join(entries))
                wait_served(agent, i, who, start)
                clusters[i] = static_clusters(i, at[i], port, shape.ports, like)
                start = replace(cds, cds_text())
                wait_served(files, i, who, start)
            result["agent_rss_mb_after_changes"] = rss_mb(agent_proc.pid)
            cpu_after = [cpu_s(p) for p in (agent_proc.pid, agent_envoy, procs[0].pid)]
            spent = zip(cpu_after, cpu_before, strict=True)
            per_change = [round(1000 * (a - b) / changes, 1) for a, b in spent]
            result["cpu_ms_per_change"] = dict(
                zip(("agent", "agent_envoy", "files_envoy"), per_change, strict=True)
            )
            result["change_agent"] = summary(agent)
            result["change_agent_stages"] = change_stages(root / "agent.log", renames)
            result["change_files"] = summary(files)
            result["load_average_at_end"] = os.getloadavg()[0]
            for proc in reversed(procs):  # the agent stops its Envoy
                proc.terminate()
                proc.wait(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        old.close()
        new.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--debounce-ms", type=int, default=100, help="sources.files.debounce_ms")
    parser.add_argument("--poll-ms", type=int, default=200, help="sources.files.poll_interval_ms")
    parser.add_argument(
        "--pause-ms", type=int, help="quiet time before each change (default: 50 + N/20 ms)"
    )
    parser.add_argument("--quick", action="store_true", help="100 services, 10 changes")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="serviceentry-workloadentry")
    parser.add_argument(
        "--stats-preset",
        choices=("standard", "all", "istio"),
        default="standard",
        help="envoy.stats.preset",
    )
    parser.add_argument(
        "--files-stats",
        choices=("envoy", "agent"),
        default="envoy",
        help="the file-CDS Envoy's stats_config: Envoy's default, or the agent's",
    )
    parser.add_argument(
        "--files-clusters",
        choices=("minimal", "agent"),
        default="minimal",
        help="the file-CDS clusters: minimal, or with the agent's cluster options",
    )
    parser.add_argument("--sotw", action="store_true", help="the agent serves SotW, not delta")
    parser.add_argument(
        "--agent-log",
        choices=("info", "debug"),
        default="info",
        help="the agent's log level (debug: the timeline has each type's first response)",
    )
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and leave it (logs, files)")
    args = parser.parse_args()
    if args.quick:
        args.services, args.changes = 100, 10
    # Envoy's file CDS re-reads every cluster on each change (seconds at 10k services): the
    # pause keeps that work from landing on the next measurement (either side's).
    pause_ms = args.pause_ms if args.pause_ms is not None else 50 + args.services // 20
    result = run(
        args.services,
        args.changes,
        args.debounce_ms,
        args.poll_ms,
        pause_ms / 1000,
        args.keep,
        args.sotw,
        args.shape,
        args.stats_preset,
        args.files_stats,
        args.files_clusters,
        args.agent_log,
    )
    print(json.dumps({"benchmark": "files_convergence", **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
