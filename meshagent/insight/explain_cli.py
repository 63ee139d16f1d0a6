"""The `meshagent explain` and `meshagent diff` commands.

explain asks the running agent (GET /debug/explain on its admin socket) or, given PATH... or
--offline, builds the config from files in-process. diff builds the candidate files in-process
and compares with the running agent's served config (/debug/resources) or, with --against,
with other files built the same way. diff exits 0 when nothing changes, 1 when something
does, 2 on an error (as diff(1) does).
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any, TextIO

from meshagent.errors import ConfigError, MeshAgentError

EXIT_SAME, EXIT_CHANGED, EXIT_ERROR = 0, 1, 2
# The keys of meshagent.insight.explain.KINDS (a unit test keeps them equal), spelt out so that
# building the argument parser does not import the explainer (0.4 s of every `meshagent` run).
KIND_NAMES = ("cluster", "endpoint", "listener", "route")


def add_parsers(sub: Any) -> None:
    """Add `explain` and `diff` to the `meshagent` subparsers."""
    ex = sub.add_parser("explain", help="every input that shaped one Envoy resource")
    ex.add_argument("resource", help="cluster, listener, route config[/VHOST[/ROUTE]] or IP:PORT")
    ex.add_argument("paths", nargs="*", type=Path, help="explain offline from these files")
    ex.add_argument("--kind", choices=KIND_NAMES, help="what RESOURCE is (default: guessed)")
    ex.add_argument(
        "--offline",
        action="store_true",
        help="build from files in-process (PATH..., else sources.files.paths)",
    )
    _common(ex)
    df = sub.add_parser("diff", help="what candidate files would change in this host's Envoy")
    df.add_argument("paths", nargs="+", type=Path, help="the candidate mesh files/directories")
    df.add_argument(
        "--against",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="compare with these files (offline), not the running agent",
    )
    _common(df)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        help="agent config (default $MESHAGENT_CONFIG, else "
        "/etc/meshagent/agent.yaml; offline without one: a default sidecar)",
    )
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run explain or diff; the exit code. MeshAgentError passes up (one line, exit 2)."""
    if args.command == "explain":
        return _explain(args, out)
    return _diff(args, out, err)


def _config(args: argparse.Namespace, *, required: bool) -> Any | None:
    from meshagent.agent.config import load_config
    from meshagent.agent.configpath import DEFAULT_CONFIG

    if args.config is not None:
        return load_config(args.config)
    default = Path(os.environ.get("MESHAGENT_CONFIG") or DEFAULT_CONFIG)
    if default.exists() or required:
        return load_config(default)
    return None


def _explain(args: argparse.Namespace, out: TextIO) -> int:
    from meshagent.insight.explain import View, explain, render

    if args.paths or args.offline:
        from meshagent.insight.offline import build, config_paths

        config = _config(args, required=False)
        built = build(args.paths or config_paths(config), config)
        view = View.scoped(built.snapshot, built.proxy, built.resources, built.normalizer)
        data = explain(view, args.resource, args.kind).to_json()
    else:
        from meshagent.agent.opscli import fetch_admin

        query = {"resource": args.resource, **({"kind": args.kind} if args.kind else {})}
        path = "/debug/explain?" + urllib.parse.urlencode(query)
        data = json.loads(fetch_admin(_config(args, required=True), path))
    if args.output == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(render(_from_json(data)))
    return 0


def _from_json(data: dict[str, Any]) -> Any:
    from meshagent.insight.documents import Field
    from meshagent.insight.explain import Conflict, Explanation, Input

    inputs = tuple(
        Input(
            i["role"],
            i["ref"],
            i["location"],
            tuple(Field(f["path"], f["line"], f["value"]) for f in i["fields"]),
            _file(i["location"]),
            i["note"],
        )
        for i in data["inputs"]
    )
    conflicts = tuple(
        Conflict(c["subject"], c["winner"], tuple(c["losers"]), c["rule"])
        for c in data["conflicts"]
    )
    return Explanation(
        data["kind"], data["name"], data["served"], inputs, conflicts, tuple(data["notes"])
    )


def _file(location: str) -> str:
    head, sep, line = location.rpartition(":")
    return head if sep and line.isdigit() else ""


def _diff(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from meshagent.insight.diff import diff_resources, render
    from meshagent.insight.offline import build

    try:
        if args.against:
            config = _config(args, required=False)
            before = _built_json(build(args.against, config), "baseline", err)
            others: list[Any] = []
            identities = None
        else:
            config = _config(args, required=True)
            before, others, identities = _running(config)
        candidate = build(args.paths, config, others, identities)
        after = _built_json(candidate, "candidate", err)
    except _Invalid:
        return EXIT_ERROR
    except MeshAgentError as exc:
        err.write(f"meshagent: {exc}\n")
        return EXIT_ERROR
    changes = diff_resources(before, after)
    if args.output == "json":
        out.write(json.dumps([c.to_json() for c in changes], indent=2) + "\n")
    else:
        out.write(render(changes))
    return EXIT_CHANGED if changes else EXIT_SAME


class _Invalid(Exception):
    """The files have errors (already printed)."""


def _built_json(built: Any, what: str, err: TextIO) -> dict[str, Any]:
    from meshagent.agent.opspages import resources_json

    if built.errors:
        for d in built.errors:
            err.write(f"{d}\n")
        err.write(f"meshagent: the {what} has {len(built.errors)} error(s); nothing compared\n")
        raise _Invalid
    return resources_json(built.resources)


def _running(config: Any) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """The running agent's served config, its documents from sources other than files and
    the identities its proxy has certificates for."""
    from meshagent.agent.lastgood import decode_resource
    from meshagent.agent.opscli import fetch_admin
    from meshagent.model.identity import Identity

    served = json.loads(fetch_admin(config, "/debug/resources"))
    inputs = json.loads(fetch_admin(config, "/debug/inputs?exclude=files"))
    try:
        others = [decode_resource(item) for item in inputs["resources"]]
        identities = [Identity.parse(uri) for uri in inputs["identities"]]
    except (KeyError, TypeError, ValueError) as exc:  # InvalidIdentity is a ValueError
        raise ConfigError(f"the agent's /debug/inputs is not understood: {exc}") from None
    return served, others, identities
