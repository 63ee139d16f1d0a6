"""`meshagent analyze [PATH...] [--config AGENT.yaml]`: whole-configuration checks, offline.

The files are read as the running agent's files source reads them (mesh_file_loader: the same
parse, duplicate and unknown-kind errors), normalized by the same Normalizer the agent builds
from its config, and analyzed (meshagent.insight.analysis). Consul and Kubernetes sources are
not contacted: their messages are on the running agent's /debug/analyze.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from meshagent.agent.configpath import CONFIG_ENV, DEFAULT_CONFIG, config_path
from meshagent.errors import ConfigError
from meshagent.insight.messages import TYPES, Level, Message
from meshagent.insight.report import (
    EXIT_USAGE,
    FORMATS,
    Suppression,
    at_least,
    exit_code,
    render,
    suppressed,
)
from meshagent.model.source import Diagnostic, RawResource, SourceEvent

# The checks (and the normalizer and translator they import) load when an analysis runs, not
# when the `meshagent` argument parser is built for every command.
if TYPE_CHECKING:
    from meshagent.insight.analysis import Check

HELP = """\
Check mesh configuration as a whole, beyond single-resource validation: references to
unknown hosts, subsets and gateways, subsets that select no endpoint, VirtualServices that
claim one host, rules and matches that earlier ones shadow, Gateways that select no proxy,
ServiceEntries with conflicting or missing protocols, policies that select nothing and
deprecated fields. Each message has a stable code (Istio's IST codes where the meaning is
the same, MA codes for meshagent's own), a level and the resource's file:line.

exit codes: 0 nothing at or above --failure-threshold; 79 a message at or above it;
65 a file could not be parsed (and nothing reached the threshold); 64 usage errors.
"""

EPILOG = """\
examples:
  meshagent analyze mesh/
  kubectl get vs,dr,se -A -o yaml | meshagent analyze -        # documents from stdin
  meshagent analyze --config /etc/meshagent/agent.yaml        # the agent's files source
  meshagent analyze -o json --failure-threshold Warning mesh/
  meshagent analyze -S "IST0101=VirtualService default/reviews" -S "IST0127=* *.legacy" mesh/
  meshagent analyze --config /etc/meshagent/agent.yaml --agent   # what the agent serves
  meshagent analyze --list-codes
"""


def add_parser(sub: Any) -> None:
    """Register `analyze` on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "analyze",
        help="check mesh configuration as a whole (istioctl analyze's checks and codes)",
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="YAML files or directories (recursive); - reads standard input",
    )
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        help="agent config: its files source (when no PATH), node labels, workloads, "
        f"domain suffix and root namespace (without PATH: default ${CONFIG_ENV}, else "
        f"{DEFAULT_CONFIG})",
    )
    p.add_argument(
        "--output", "-o", default="text", metavar="FORMAT", help="text (default), json or yaml"
    )
    p.add_argument(
        "--failure-threshold",
        default="Error",
        metavar="LEVEL",
        help="the level at which to exit 79: Info, Warning, Error (default)",
    )
    p.add_argument(
        "--output-threshold",
        default="Info",
        metavar="LEVEL",
        help="the lowest level printed: Info (default), Warning, Error",
    )
    p.add_argument(
        "--suppress",
        "-S",
        action="append",
        default=[],
        metavar="CODE=RESOURCE",
        help='do not report CODE for RESOURCE ("Kind namespace/name" or istioctl\'s '
        '"Kind name.namespace"; * matches anything); repeatable',
    )
    p.add_argument(
        "--agent",
        action="store_true",
        help="ask the running agent (its admin socket, from the agent config) for the "
        "messages of what it serves, from every source, instead of reading files",
    )
    p.add_argument("--list-codes", "-L", action="store_true", help="list the message codes")
    p.add_argument(
        "--domain-suffix", default=None, metavar="S", help="default: the config's, or cluster.local"
    )
    p.add_argument(
        "--namespace",
        default=None,
        metavar="NS",
        help="namespace of resources without one (default: the config's node.namespace, "
        "or default)",
    )


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run `analyze`; the exit code. out and err default to sys.stdout and sys.stderr."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.list_codes:
        for t in TYPES.values():
            print(f"{t.code}  {t.level.title:<7}  {t.name}: {t.description}", file=out)
        return 0
    try:
        output = args.output.lower()
        if output not in FORMATS:
            raise ValueError(f"--output must be one of {', '.join(FORMATS)}, not {args.output!r}")
        failure = Level.parse(args.failure_threshold)
        shown = Level.parse(args.output_threshold)
        rules = [Suppression.parse(s) for s in args.suppress]
        if args.agent and args.paths:
            raise ValueError("--agent reads no PATH: it asks the agent of --config")
        if not args.paths and args.config is None:
            args.config = config_path(None)  # $MESHAGENT_CONFIG, else the default path
            if args.config == DEFAULT_CONFIG and not args.config.exists():
                raise ValueError(f"needs PATH... or --config FILE (or ${CONFIG_ENV})")
    except ValueError as exc:
        print(f"meshagent analyze: {exc}", file=err)
        return EXIT_USAGE
    for rule in rules:
        if not rule.known_code:
            print(f"warning: suppression code {rule.code!r} is not a known code", file=err)
    if args.agent:
        messages, parse_errors, target = running_agent_messages(args.config)
    else:
        messages, parse_errors, target = analyze_command_input(args)
    for d in parse_errors:
        print(f"error: {d}", file=err)
    kept = suppressed(messages, rules)
    printed = at_least(kept, shown)
    if printed or output != "text":
        out.write(render(printed, output))
    if not printed:
        extra = f" (but {len(parse_errors)} file(s) could not be parsed)" if parse_errors else ""
        print(f"No validation issues found when analyzing {target}{extra}.", file=err)
    return exit_code(kept, failure, len(parse_errors))


def analyze_command_input(args: argparse.Namespace) -> tuple[list[Message], list[Diagnostic], str]:
    """The messages of the command's files, the file-level errors, and what was analyzed."""
    config = None
    if args.config is not None:
        from meshagent.agent.config import load_config

        config = load_config(args.config)
    paths: Sequence[Path] = args.paths
    if not paths:
        if config is None or config.sources.files is None:
            raise ConfigError("analyze needs PATH... or --config FILE with a files source")
        paths = config.sources.files.paths
    skipped = platform_sources(config)
    if skipped:
        print(
            f"note: sources {', '.join(skipped)} are not read offline, so the checks that need "
            f"every host and workload ({', '.join(REGISTRY_CHECKS)}) are skipped; "
            "--agent analyzes what the running agent serves",
            file=sys.stderr,
        )
    messages, parse_errors = analyze_paths(
        paths,
        config=config,
        domain_suffix=args.domain_suffix,
        namespace=args.namespace,
        checks=[c for c in all_checks() if c[0] not in REGISTRY_CHECKS] if skipped else None,
    )
    return messages, parse_errors, " ".join(str(p) for p in paths)


# Checks that report what is missing from the whole registry: wrong when sources the offline
# command does not read (Consul, Kubernetes) define hosts and workloads.
REGISTRY_CHECKS = ("references", "subsets", "selectors", "gateway_selectors")


def all_checks() -> Sequence[tuple[str, Check]]:
    """Every check of the analysis (analysis.CHECKS), imported on first use."""
    from meshagent.insight.analysis import CHECKS

    return CHECKS


def platform_sources(config: Any) -> list[str]:
    """The config's sources other than files (not read offline)."""
    if config is None:
        return []
    return [n for n in ("consul", "kubernetes") if getattr(config.sources, n) is not None]


def running_agent_messages(config_path: Path) -> tuple[list[Message], list[Diagnostic], str]:
    """The running agent's messages (GET /debug/analyze on its admin socket)."""
    import json

    from meshagent.agent.config import load_config
    from meshagent.agent.opscli import fetch_admin

    config = load_config(config_path)
    report = json.loads(fetch_admin(config, "/debug/analyze"))
    messages = [Message.from_json(m) for m in report.get("messages", [])]
    return messages, [], f"the agent at {config.admin.socket}"


def analyze_paths(
    paths: Sequence[Path],
    *,
    config: Any = None,
    domain_suffix: str | None = None,
    namespace: str | None = None,
    checks: Sequence[tuple[str, Check]] | None = None,
) -> tuple[list[Message], list[Diagnostic]]:
    """Analyze the mesh files under paths; (messages, file-level errors). checks: by default
    every check (analysis.CHECKS)."""
    from meshagent.adapters.files import find_config_files
    from meshagent.agent.daemon import mesh_file_loader
    from meshagent.insight.analysis import CHECKS, analyze
    from meshagent.insight.context import AnalysisInput
    from meshagent.insight.offline import normalizer_for

    missing = [p for p in paths if not p.exists() and str(p) != STDIN]
    if missing:
        raise ConfigError("no such file or directory", location=str(missing[0]))
    files = find_config_files([p for p in paths if str(p) != STDIN])
    if any(str(p) == STDIN for p in paths):
        files.append(Path(STDIN))
    resources, diagnostics = _load(files, mesh_file_loader)
    file_errors = _unparsed(diagnostics)
    normalizer = normalizer_for(config)  # as the agent of config sets up its own
    if domain_suffix:
        normalizer.domain_suffix = domain_suffix
    if namespace:
        normalizer.default_namespace = namespace
    snapshot, found = normalizer.apply([SourceEvent("files", upserts=tuple(resources))])
    inp = AnalysisInput(
        snapshot=snapshot,
        documents=normalizer.accepted("files"),
        references=normalizer.references(),
        diagnostics=[*(d for d in diagnostics if d not in file_errors), *found],
        **config_facts(config),
    )
    return analyze(inp, CHECKS if checks is None else checks), file_errors


STDIN = "-"  # a PATH of "-" reads documents from standard input (reported as "-:LINE")


def _load(files: Sequence[Path], loader: Any) -> tuple[list[RawResource], list[Diagnostic]]:
    """Every file's resources, the first definition of each resource winning (as the files
    source does: a later copy is a duplicate error of its file)."""
    from meshagent.adapters.yamldocs import duplicate_error, read_config_text

    resources: dict[tuple[str, str, str, str], RawResource] = {}
    diagnostics: list[Diagnostic] = []
    for path in files:
        try:
            text = sys.stdin.read() if str(path) == STDIN else read_config_text(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            diagnostics.append(
                Diagnostic("error", "files", f"{path}:1", "", "", "", f"cannot read file: {exc}")
            )
            continue
        loaded, problems = loader(text, str(path))
        diagnostics.extend(problems)
        for raw in loaded:
            first = resources.setdefault(raw.key, raw)
            if first is not raw:
                diagnostics.append(duplicate_error(raw, first.provenance.location))
    return list(resources.values()), diagnostics


def _unparsed(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """The errors of files that could not be read or parsed (istioctl's exit 65), not those
    that name a resource (a duplicate, an unknown kind: those are IST0106 messages)."""
    return [
        d
        for d in diagnostics
        if not d.kind and d.severity == "error" and d.field not in ("metadata.name", "kind")
    ]


def config_facts(config: Any) -> dict[str, Any]:
    """What the agent config tells the analysis about this host (context.AnalysisInput)."""
    if config is None:
        return {}
    from meshagent.model.proxy import ROUTER

    node = config.node
    routers = ((node.namespace, node.labels),) if node.type == ROUTER else ()
    local = [(w.namespace, w.labels) for w in config.workloads]
    if node.labels:
        local.append((node.namespace, node.labels))
    return {
        "routers": routers,
        "local_workloads": tuple(local),
        "root_namespace": config.root_namespace,
    }
