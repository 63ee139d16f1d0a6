"""Operator commands of `meshagent`: status, proxy-config, reload, drain-envoy, bug-report,
completion.

They talk to a running agent over its admin socket (`admin.socket` in the agent config: root
and the agent's group may connect) and, for drain-envoy and `--from envoy`, to Envoy's admin.
Failures are one line (MeshAgentError), exit 2.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from meshagent.agent import envoyview
from meshagent.agent.configpath import CONFIG_HELP, config_path
from meshagent.errors import MeshAgentError

PROXY_CONFIG_KINDS = {"clusters": "cds", "listeners": "lds", "routes": "rds",
                      "endpoints": "eds", "secrets": "sds"}  # fmt: skip
ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


def add_ops_commands(sub: Any) -> None:
    """Add the operator subcommands to the `meshagent` subparsers."""

    def with_config(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=text)
        p.add_argument("--config", "-c", type=Path, default=None, help=CONFIG_HELP)
        return p

    with_config("status", "sources, Envoy's xDS state and certificates of a running agent")
    pc = with_config("proxy-config", "what the agent serves the local Envoy, or what Envoy has")
    pc.add_argument("kind", choices=[*sorted(PROXY_CONFIG_KINDS), "log"])
    pc.add_argument("-o", "--output", choices=("short", "json", "yaml"), default="short")
    pc.add_argument("--from", dest="origin", choices=("agent", "envoy"), default="agent",
                    help="what the agent serves (default) or what Envoy applied, read from "
                    "Envoy's admin (works while the agent is down)")  # fmt: skip
    for flag, text in (("--fqdn", "only this host (or its prefix, as istioctl)"),
                       ("--port", "only this port"), ("--subset", "only this subset"),
                       ("--direction", "inbound or outbound")):  # fmt: skip
        pc.add_argument(flag, default=None, help=text)
    pc.add_argument("--level", default=None,
                    help="proxy-config log: set Envoy's log level (LEVEL, or "
                    "LOGGER:LEVEL,... for single loggers)")  # fmt: skip
    with_config("reload", "make a running agent re-read its config (as SIGHUP does)")
    with_config("drain-envoy", "drain Envoy's listeners gracefully (before stopping it)")
    from meshagent.agent.bugreport import add_parser as add_bug_report

    add_bug_report(with_config("bug-report", "collect config, dumps, logs and versions"))
    comp = sub.add_parser("completion", help="print a shell completion script")
    comp.add_argument("shell", choices=("bash", "zsh"))


def run_ops_command(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    out: TextIO) -> int | None:  # fmt: skip
    """Run args.command if it is an operator command; None when it is not one."""
    if args.command == "completion":
        out.write(completion_script(parser, args.shell))
        return 0
    from meshagent.agent.bugreport import bug_report

    handlers = {"status": _status, "proxy-config": _proxy_config, "reload": _reload,
                "drain-envoy": _drain_envoy, "bug-report": bug_report}  # fmt: skip
    handler = handlers.get(args.command)
    if handler is None:
        return None
    from meshagent.agent.config import load_config

    return handler(load_config(config_path(args.config)), args, out)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket (the agent's admin socket)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def admin_request(
    socket_path: Path | str, path: str, *, method: str = "GET", timeout: float = 5.0
) -> tuple[int, bytes]:
    """Status and body of one request to the agent's admin socket; OSError when unreachable."""
    connection = _UnixHTTPConnection(str(socket_path), timeout)
    try:
        connection.request(method, path, body=b"" if method == "POST" else None)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def fetch_admin(config: Any, path: str, *, method: str = "GET") -> bytes:
    """The body of a 2xx answer of the agent's admin socket; MeshAgentError (one line) else."""
    where = config.admin.socket
    try:
        status, body = admin_request(where, path, method=method)
    except PermissionError:
        raise MeshAgentError(
            f"cannot reach the agent's admin socket {where}: permission denied "
            "(run as root or as a member of the agent's group)"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        hint = " (is the agent running?)" if getattr(exc, "errno", None) in _NOT_RUNNING else ""
        raise MeshAgentError(
            f"cannot reach the agent's admin socket {where}: {reason}{hint}"
        ) from None
    if not 200 <= status < 300:
        raise MeshAgentError(f"{where} {path}: HTTP {status} {body.decode().strip()}")
    return body


_NOT_RUNNING = (errno.ENOENT, errno.ECONNREFUSED)


def fetch(url: str, *, method: str = "GET", timeout: float = 5.0) -> bytes:
    """The body of a 2xx answer; MeshAgentError (one line) otherwise."""
    data = b"" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        raise MeshAgentError(f"{url}: HTTP {exc.code} {exc.read().decode().strip()}") from None
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MeshAgentError(f"cannot reach {url}: {reason}") from None


def _status(config: Any, args: argparse.Namespace, out: TextIO) -> int:
    report = json.loads(fetch_admin(config, "/debug/status"))
    out.write(f"node {report['node']}: ")
    out.write("ready\n" if not report["not_ready"] else "NOT READY\n")
    for reason in report["not_ready"]:
        out.write(f"  - {reason}\n")
    if report.get("agent"):
        out.write(_agent_line(report["agent"]))
    for s in report["sources"]:
        out.write(f"source {s['name']}: {'synced' if s['synced'] else 'syncing'}\n")
    xds = report["xds"]
    out.write(
        f"envoy: {'connected (' + xds['stream'] + ')' if xds['connected'] else 'not connected'}\n"
    )
    for kind, t in xds["types"].items():
        state = (
            "ACK"
            if t["in_sync"]
            else ("NACK " + (t["nack_error"] or "") if t["nacked"] == t["sent"] else "pending")
        )
        if t.get("rejected") and t["nacked"] != t["sent"]:
            names = ", ".join(t["rejected"][:5])
            state = f"not applied {names}: {(t['nack_error'] or '').strip()} (retrying)"
        out.write(f"  {kind}: sent {t['sent']} acked {t['acked']} {state}\n")
    problems = report.get("diagnostics", [])
    out.write(f"config errors: {len(problems) or 'none'}\n")
    for d in problems:
        out.write(f"  {d['message']} (since {d.get('first_seen', '?')})\n")
    counts = report.get("analysis", {}).get("counts", {})
    if counts:  # `meshagent analyze` of what is served (agent/analysis_runtime.py)
        from meshagent.agent.statuspage import analysis_counts

        out.write(f"analysis: {analysis_counts(counts)} (meshagent analyze --agent)\n")
    for c in report["certificates"]:
        out.write(f"certificate {c['identity']}: expires {c['not_after']} ({c['expires_in_s']}s)\n")
    if not report["certificates"]:
        out.write("certificates: none\n")
    return 0 if not report["not_ready"] else 1


def _agent_line(agent: dict[str, Any]) -> str:
    """The line of `status` on the agent: "agent 0.1.0, up 2h 5m, Envoy restarts 0, ..."."""
    reload = agent.get("last_reload")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reload["at"])) if reload else ""
    restarts = agent["envoy_restarts"] if agent.get("envoy_managed") else "- (not managed)"
    return (
        f"agent {agent['version']}, up {envoyview.duration_text(agent['uptime_s'])}, "
        f"Envoy restarts {restarts}, last reload "
        + (f"{reload['result']} at {when}" if reload else "none since start")
        + "\n"
    )


def _proxy_config(config: Any, args: argparse.Namespace, out: TextIO) -> int:
    if args.kind == "log":
        return _envoy_log(config, args, out)
    filters = {k: getattr(args, k) for k in ("fqdn", "port", "subset", "direction")}
    if args.origin == "envoy":  # Envoy's admin only: works while the agent is down
        if args.output == "short" and args.kind == "endpoints":
            return _endpoint_health(config, filters, out)
        dump = envoyview.get_json(config.envoy, "/config_dump?include_eds")
        # Short output needs no documents, but listener and route filters read them.
        decode = args.output != "short" or args.kind in ("listeners", "routes")
        applied = envoyview.dump_resources(dump, args.kind, decode=decode)
        items = envoyview.filter_items(applied, args.kind, filters)
        if args.output == "short":
            out.write(f"{'NAME':<60} VERSION\n")
            out.writelines(f"{i['name']:<60} {i['version'] or '-'}\n" for i in items)
            return 0
    else:
        served = json.loads(fetch_admin(config, "/debug/resources"))
        items = envoyview.filter_items(served.get(PROXY_CONFIG_KINDS[args.kind], []), args.kind,
                                       filters)  # fmt: skip
        if args.output == "short":
            _short_table(items, _envoy_applied(config, args.kind), out)
            return 0
    docs = [i["resource"] for i in items]
    if args.output == "json":
        out.write(json.dumps(docs, indent=2) + "\n")
    else:
        import yaml

        out.write(yaml.safe_dump(docs, sort_keys=False))
    return 0


def _short_table(items: list[Any], applied: dict[str, Any] | None, out: TextIO) -> None:
    """NAME, the served VERSION and whether Envoy has applied that version (SYNCED)."""
    out.write(f"{'NAME':<60} {'VERSION':<18} SYNCED\n")
    for i in items:
        if applied is None:
            synced = "unknown"  # Envoy's admin is unreachable
        elif i["name"] not in applied:
            synced = "missing"
        else:
            version = applied[i["name"]][0]
            synced = "yes" if version in (None, i["version"]) else f"no ({version})"
        out.write(f"{i['name']:<60} {i['version'] or '-'!s:<18} {synced}\n")


def _endpoint_health(config: Any, filters: dict[str, Any], out: TextIO) -> int:
    """`proxy-config endpoints --from envoy`: each endpoint as Envoy sees it (/clusters)."""
    clusters = envoyview.fetch_cluster_health(config.envoy)
    out.write(f"{'ENDPOINT':<24} {'STATUS':<10} {'FLAGS':<12} {'ACTIVE':>6} {'5XX':>6} "
              f"{'CONNFAIL':>8}  CLUSTER\n")  # fmt: skip
    for cluster in clusters:
        if not envoyview.matches({"name": cluster["name"]}, "endpoints", filters):
            continue
        for e in cluster["endpoints"]:
            flags = ",".join(e["flags"]) or "-"
            counts = f"{e['rq_active']:>6} {e['rq_error']:>6} {e['cx_connect_fail']:>8}"
            out.write(
                f"{e['address']:<24} {e['health']:<10} {flags:<12} {counts}  {cluster['name']}\n"
            )
    return 0


def _envoy_applied(config: Any, kind: str) -> dict[str, tuple[str | None, Any]] | None:
    """name -> (version, resource) of what Envoy applied; None when Envoy cannot be asked."""
    try:
        dump = envoyview.get_json(config.envoy, "/config_dump?include_eds")
    except MeshAgentError:
        return None
    applied = envoyview.dump_resources(dump, kind, decode=False)
    return {r["name"]: (r["version"], r["resource"]) for r in applied}


def _envoy_log(config: Any, args: argparse.Namespace, out: TextIO) -> int:
    """`proxy-config log [--level L | --level logger:L,...]`: Envoy's /logging."""
    level = args.level
    if level is None:
        query = ""
    elif ":" in level:
        for pair in level.split(","):
            if pair.rpartition(":")[2] not in ENVOY_LOG_LEVELS:
                raise MeshAgentError(f"--level {pair}: level must be one of "
                                     f"{', '.join(ENVOY_LOG_LEVELS)}")  # fmt: skip
        query = "?paths=" + urllib.parse.quote(level, safe=":,")
    elif level in ENVOY_LOG_LEVELS:
        query = f"?level={level}"
    else:
        raise MeshAgentError(f"--level must be one of {', '.join(ENVOY_LOG_LEVELS)}")
    body = fetch(envoyview.admin_url(config.envoy, "/logging" + query), method="POST")
    out.write(body.decode("utf-8", "replace"))
    return 0


def _reload(config: Any, args: argparse.Namespace, out: TextIO) -> int:
    fetch_admin(config, "/reload", method="POST")
    out.write("reload requested\n")
    return 0


def _drain_envoy(config: Any, args: argparse.Namespace, out: TextIO) -> int:
    host = config.envoy.admin_address
    host = f"[{host}]" if ":" in host else host
    fetch(f"http://{host}:{config.envoy.admin_port}/drain_listeners?graceful", method="POST")
    # Envoy drains for drain_seconds; the caller (systemd's ExecStop) stops it afterwards.
    time.sleep(config.envoy.drain_seconds)
    return 0


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A completion script for shell, generated from the parser's subcommands and options."""
    words: dict[str, list[str]] = {}
    for action in parser._actions:  # argparse has no public API for walking its tree
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words[name] = sorted(
                    opt for a in sub._actions for opt in a.option_strings if opt.startswith("--")
                ) + sorted(c for a in sub._actions if a.choices and not a.option_strings
                           for c in a.choices)  # fmt: skip
    commands = " ".join(sorted(words))
    cases = "".join(f'    {cmd}) opts="{" ".join(w)}" ;;\n' for cmd, w in sorted(words.items()))
    body = (
        "_meshagent() {\n"
        '  local cur="${COMP_WORDS[COMP_CWORD]}" cmd="${COMP_WORDS[1]}" opts\n'
        f'  if [ "$COMP_CWORD" -eq 1 ]; then opts="{commands} --version --help"; else\n'
        '  case "$cmd" in\n' + cases + '    *) opts="" ;;\n  esac; fi\n'
        '  COMPREPLY=($(compgen -W "$opts" -- "$cur"))\n'
        '  case "$cur" in -*|"") ;;\n'
        '    *) [ -z "$COMPREPLY" ] && COMPREPLY=($(compgen -f -- "$cur")) ;; esac\n'
        "}\n"
    )
    if shell == "zsh":
        return (
            "autoload -U +X bashcompinit && bashcompinit\n"
            + body
            + "complete -F _meshagent meshagent\n"
        )
    return body + "complete -F _meshagent meshagent\n"
