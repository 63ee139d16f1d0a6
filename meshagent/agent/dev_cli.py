"""`meshagent dev quickstart|consul-sim|kube-sim`: the CLI wiring of the demos and simulators.

The simulators and the demo app live in meshagent.testing (test support that the package ships);
this module, in the CLI layer, is the only production module that imports them, so nothing
else that runs in production does (tests/unit/test_import_edges.py checks it).

quickstart: demo services + the agent + a managed Envoy, on loopback. The demo services come
from demo-apps.yaml next to the agent config; the agent config and the mesh files it points at
are ordinary meshagent configuration (see examples/quickstart/). With `--consul-sim DATA.json`
a Consul API simulator, seeded from DATA.json, also runs at the agent config's
sources.consul.address (see examples/quickstart-consul/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from meshagent.agent.config import AgentConfig, load_config
from meshagent.agent.configpath import CONFIG_ENV
from meshagent.agent.logs import configure_logging
from meshagent.errors import ConfigError

# The agent and the simulators are imported by the commands that run them: building the
# `meshagent` argument parser (every command, `--help` too) does not pay for their imports.
if TYPE_CHECKING:
    from meshagent.agent.daemon import Agent
    from meshagent.testing.consul_sim import ConsulSimulator

READY_TIMEOUT_S = 60.0


def add_parsers(sub: Any) -> None:
    """Add `dev quickstart|consul-sim|kube-sim` to the `meshagent` subcommands."""
    dev = sub.add_parser("dev", help="demos and simulators for trying meshagent on one machine")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="DEV_COMMAND")
    quick = dev_sub.add_parser(
        "quickstart", help="demo services + agent + managed Envoy on loopback (Ctrl-C stops)"
    )
    quick.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("examples/quickstart/agent.yaml"),
        help="agent config; demo-apps.yaml beside it lists the demo services",
    )
    quick.add_argument(
        "--consul-sim",
        type=Path,
        default=None,
        metavar="DATA.json",
        help="also run a Consul simulator at sources.consul.address, seeded from this file",
    )
    consul = dev_sub.add_parser("consul-sim", help="a Consul HTTP API simulator (not Consul)")
    consul.add_argument(
        "--listen", default="127.0.0.1:8500", help="HOST:PORT (default 127.0.0.1:8500)"
    )
    consul.add_argument("--acl-token", default=None, help="require this ACL token on every request")
    consul.add_argument(
        "--data",
        default=None,
        help='JSON file to start from: {"register": [catalog bodies], "config": [entries]}',
    )
    consul.add_argument(
        "--config-entries",
        default=None,
        metavar="DIR",
        help="also load the config entries in DIR/*.json (`consul config write` JSON files)",
    )
    consul.add_argument(
        "--max-conns-per-client",
        type=int,
        default=200,
        metavar="N",
        help="refuse a client IP's connections beyond N at once with 429, as Consul's "
        "limits.http_max_conns_per_client does (default 200, Consul's; 0: no limit)",
    )
    kube = dev_sub.add_parser("kube-sim", help="a Kubernetes API server simulator (not Kubernetes)")
    kube.add_argument(
        "--listen", default="127.0.0.1:6443", help="HOST:PORT (default 127.0.0.1:6443)"
    )
    kube.add_argument(
        "--token", default="", help="require this bearer token on every request (default: none)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the `dev` subcommand args name; the exit code."""
    if args.dev_command == "consul-sim":
        return run_consul_sim(args)
    if args.dev_command == "kube-sim":
        return run_kube_sim(args)
    return run_quickstart(args.config, consul_data=args.consul_sim)


def _listen(value: str, what: str) -> tuple[str, int]:
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--listen must be HOST:PORT", location=what)
    return host, int(port)


def run_consul_sim(args: argparse.Namespace) -> int:
    """`meshagent dev consul-sim`: serve until Ctrl-C; the exit code."""
    from meshagent.testing.consul_sim import load_config_entries, run_simulator

    host, port = _listen(args.listen, "consul-sim")
    data = None
    if args.data:
        try:
            data = json.loads(Path(args.data).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read --data: {exc}", location=str(args.data)) from exc
    if args.config_entries:
        data = dict(data or {})
        entries = load_config_entries(Path(args.config_entries))
        data["config"] = [*(data.get("config") or []), *entries]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_simulator(
                host,
                port,
                acl_token=args.acl_token,
                data=data,
                max_conns_per_client=args.max_conns_per_client,
            )
        )
    return 0


def run_kube_sim(args: argparse.Namespace) -> int:
    """`meshagent dev kube-sim`: serve until Ctrl-C; the exit code."""
    from meshagent.testing.kube_sim import KubeSim

    host, port = _listen(args.listen, "kube-sim")
    sim = KubeSim(host, port, token=args.token or None)
    sim.start()
    print(f"kubernetes API simulator listening on {sim.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


@dataclass(frozen=True, slots=True)
class DemoSpec:
    name: str
    version: str
    host: str
    port: int


def load_demo_apps(path: Path) -> list[DemoSpec]:
    """The demo services to start: a YAML list of {name, version, listen: HOST:PORT}."""
    try:
        items = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read demo apps: {exc}", location=str(path)) from exc
    if not isinstance(items, list):
        raise ConfigError("expected a list of demo apps", location=str(path))
    specs = []
    for i, item in enumerate(items):
        try:
            host, _, port = str(item["listen"]).rpartition(":")
            specs.append(
                DemoSpec(str(item["name"]), str(item.get("version", "v1")), host, int(port))
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"bad demo app entry: {exc}", location=str(path), field=f"[{i}]"
            ) from exc
    return specs


def banner(config: AgentConfig, hosts: list[str], routed: list[str], port: int) -> str:
    """What to curl, for the services the mesh files declare (routed: hosts with rules)."""
    lines = ["", "meshagent quickstart is up. Try:", ""]
    for host in hosts:
        lines.append(f"  curl -s -H 'Host: {host}' http://127.0.0.1:{port}/")
    for host in routed:
        lines.append(f"  curl -s -H 'Host: {host}' -H 'x-canary: true' http://127.0.0.1:{port}/")
    admin = f"http://{config.admin.address}:{config.admin.port}"
    lines += [
        f"  curl -s {admin}/readyz",
        f"  curl -s {admin}/metrics | grep meshagent_",
        f"  export {CONFIG_ENV}={Path(config.path or '').resolve()}",
        f"  meshagent status    # {CONFIG_ENV} names the config; the debug API is on "
        f"{config.admin.socket}",
        "  meshagent proxy-config endpoints --from envoy    # Envoy's own view of the endpoints",
        f"  curl -s http://{config.envoy.admin_address}:{config.envoy.admin_port}/clusters",
        "",
        "Edit the files under the agent's mesh paths and watch routing change. Ctrl-C stops.",
        "",
    ]
    return "\n".join(lines)


def start_consul_sim(config: AgentConfig, data_path: Path) -> ConsulSimulator:
    """A Consul simulator where the agent config expects Consul, seeded from data_path."""
    from meshagent.testing.consul_sim import ConsulSimulator, load_data

    consul = config.sources.consul
    if consul is None:
        raise ConfigError("--consul-sim needs sources.consul in the agent config", field="sources")
    try:
        data = json.loads(data_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read Consul data: {exc}", location=str(data_path)) from exc
    host, _, port = consul.options.address.rpartition(":")
    sim = ConsulSimulator(host, int(port))
    try:
        load_data(sim, data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"bad Consul data: {exc}", location=str(data_path)) from exc
    try:
        return sim.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {consul.options.address}: {exc}", field="sources.consul.address"
        ) from exc


async def _run(config: AgentConfig, specs: list[DemoSpec], out: TextIO) -> int:
    from meshagent.agent.daemon import Agent
    from meshagent.testing.demo_app import DemoApp

    apps = [DemoApp(s.name, s.version, s.host, s.port).start() for s in specs]
    agent = Agent(config)
    runner = asyncio.create_task(agent.run(), name="agent")
    try:
        if not await _wait_ready(agent, runner):
            print(
                "quickstart: the agent did not become ready: " + "; ".join(agent.ready_reasons()),
                file=sys.stderr,
            )
        else:
            snapshot = agent.snapshot
            hosts = sorted(snapshot.services)
            routed = sorted({h for vs in snapshot.virtual_services.values() for h in vs.hosts})
            port = config.proxy_spec().outbound_port(8080)
            print(banner(config, hosts, routed, port), file=out, flush=True)
        return await runner
    finally:
        for app in apps:
            app.stop()


async def _wait_ready(agent: Agent, runner: asyncio.Task[int]) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while loop.time() < deadline and not runner.done():
        if agent.admin is not None and not agent.ready_reasons():
            return True
        await asyncio.sleep(0.1)
    return False


def run_quickstart(
    config_path: Path, out: TextIO = sys.stdout, consul_data: Path | None = None
) -> int:
    """Entry point of `meshagent dev quickstart`; returns the exit code."""
    config = load_config(config_path)
    os.environ[CONFIG_ENV] = str(config_path.resolve())  # for commands this process starts
    specs = load_demo_apps(config_path.parent / "demo-apps.yaml")
    configure_logging(config.log.level, config.log.format)
    sim = start_consul_sim(config, consul_data) if consul_data is not None else None
    if sim is not None:
        print(
            f"Consul simulator (not Consul) on http://{sim.address}: try "
            f"curl -s http://{sim.address}/v1/catalog/services",
            file=out,
            flush=True,
        )
    try:
        return asyncio.run(_run(config, specs, out))
    except KeyboardInterrupt:
        return 0
    finally:
        if sim is not None:
            sim.stop()
