"""`meshagent dev quickstart`: demo services + the agent + a managed Envoy, on loopback.

The demo services come from demo-apps.yaml next to the agent config; the agent config and the
mesh files it points at are ordinary meshagent configuration (see examples/quickstart/).
With `--consul-sim DATA.json` a Consul API simulator, seeded from DATA.json, also runs at the
agent config's sources.consul.address (see examples/quickstart-consul/).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from meshagent.agent.config import AgentConfig, load_config
from meshagent.agent.configpath import CONFIG_ENV
from meshagent.agent.daemon import Agent
from meshagent.agent.logs import configure_logging
from meshagent.errors import ConfigError
from meshagent.testing.consul_sim import ConsulSimulator, load_data
from meshagent.testing.demo_app import DemoApp

READY_TIMEOUT_S = 60.0


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
