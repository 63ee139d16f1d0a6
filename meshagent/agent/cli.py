"""The `meshagent` command: run the agent, print the Envoy bootstrap, validate configuration.

Errors meant for operators are one line on stderr; exit codes: 0 success, 1 the validated
configuration has errors, 2 usage or configuration errors. Bad input never shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from meshagent import __version__
from meshagent.agent.configpath import CONFIG_HELP, config_path
from meshagent.errors import ConfigError, MeshAgentError
from meshagent.model.source import Diagnostic, RawResource, SourceEvent

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `meshagent`."""
    parser = argparse.ArgumentParser(
        prog="meshagent", description="Per-host service-mesh agent: mesh config in, xDS out."
    )
    parser.add_argument("--version", action="version", version=f"meshagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", "-c", type=Path, default=None, help=CONFIG_HELP)
    run.add_argument("--join", type=Path, help="join an Istio mesh from this join directory")

    boot = sub.add_parser("bootstrap", help="print the Envoy bootstrap for an agent config")
    boot.add_argument("--config", "-c", type=Path, default=None, help=CONFIG_HELP)
    boot.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    boot.add_argument("--mesh", type=Path, action="append", metavar="PATH",
                      help="mesh files whose EnvoyFilter BOOTSTRAP patches apply (repeatable; "
                      "default: the config's sources.files.paths)")  # fmt: skip

    val = sub.add_parser("validate", help="check mesh configuration files or an agent config")
    val.add_argument("paths", nargs="*", type=Path, help="YAML files or directories (recursive)")
    val.add_argument("--config", "-c", type=Path,
                     help="validate this agent config file (without PATHs: default $MESHAGENT_"
                     "CONFIG, else /etc/meshagent/agent.yaml)")  # fmt: skip
    val.add_argument(
        "--quiet", "-q", action="store_true", help="do not print warnings nor the summary"
    )
    val.add_argument("--domain-suffix", default="cluster.local", help="default: cluster.local")
    val.add_argument("--namespace", default="default", help="namespace of resources without one")
    from meshagent.agent.dev_cli import add_parsers as add_dev_parsers

    add_dev_parsers(sub)  # dev quickstart|consul-sim|kube-sim
    from meshagent.agent.ca_cli import add_parsers as add_ca_parsers

    add_ca_parsers(sub)  # ca init|issue|show, token create, certs
    from meshagent.agent.opscli import add_ops_commands

    add_ops_commands(sub)  # status, proxy-config, reload, drain-envoy, completion
    from meshagent.onboard.vm_cli import add_parsers as add_vm_parsers

    add_vm_parsers(sub)  # vm configure
    from meshagent.capture.cli import add_parsers as add_capture_parsers

    add_capture_parsers(sub)  # capture apply|remove|print
    from meshagent.insight.explain_cli import add_parsers as add_insight_parsers

    add_insight_parsers(sub)  # explain, diff
    from meshagent.insight.cli import add_parser as add_analyze_parser

    add_analyze_parser(sub)  # analyze
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from meshagent.agent.opscli import run_ops_command

        ops = run_ops_command(args, parser, sys.stdout)
        if ops is not None:
            return ops
        if args.command == "run":
            return _run(args)
        if args.command == "bootstrap":
            return _bootstrap(args)
        if args.command in ("ca", "token", "certs"):
            from meshagent.agent import ca_cli

            return ca_cli.run(args)
        if args.command == "vm":
            from meshagent.onboard import vm_cli

            return vm_cli.run(args, kube_source=_kube_source_options)
        if args.command in ("explain", "diff"):
            from meshagent.insight import explain_cli

            return explain_cli.run(args, sys.stdout, sys.stderr)
        if args.command == "dev":
            from meshagent.agent import dev_cli

            return dev_cli.run(args)
        if args.command == "analyze":
            from meshagent.insight import cli as analyze_cli

            return analyze_cli.run(args)
        if args.command == "capture":
            from meshagent.capture import cli as capture_cli

            return capture_cli.run(args)
        return _validate(args, sys.stdout)
    except MeshAgentError as exc:
        print(f"meshagent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"meshagent: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    from meshagent.agent.config import load_config
    from meshagent.agent.daemon import run_agent

    config = load_config(config_path(args.config))
    if args.join is not None:
        from meshagent.agent.config import join_from_dir

        config = join_from_dir(config, args.join)
    return run_agent(config)


def _bootstrap(args: argparse.Namespace) -> int:
    from meshagent.agent.bootstrap_patch import bootstrap_from_files
    from meshagent.agent.config import load_config

    config = load_config(config_path(args.config))
    bootstrap, notes = bootstrap_from_files(config, args.mesh)
    for note in notes:  # the bootstrap is still written (unpatched where Envoy refused)
        print(note, file=sys.stderr)
    text = json.dumps(bootstrap, indent=2, sort_keys=True) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return EXIT_OK


def _kube_source_options(path: Path) -> object | None:
    """The sources.kubernetes options of the agent config at path (None: no such source), for
    `vm configure --config`."""
    from meshagent.agent.config import load_config

    source = load_config(path).sources.kubernetes
    return None if source is None else source.options


def _validate(args: argparse.Namespace, out: TextIO) -> int:
    if not args.paths and args.config is None:
        from meshagent.agent.configpath import CONFIG_ENV, DEFAULT_CONFIG, config_path

        args.config = config_path(None)  # $MESHAGENT_CONFIG, else the default path if present
        if not args.config.exists() and args.config == DEFAULT_CONFIG:
            raise ConfigError(f"validate needs PATH... or --config FILE (or ${CONFIG_ENV})")
    if args.config is not None:
        from meshagent.agent.config import load_config

        load_config(args.config)  # raises ConfigError, reported as one line, exit 2
        if not args.paths:
            print(f"{args.config}: ok", file=out)
            return EXIT_OK
    diagnostics, resources, files = validate_tree(
        args.paths, domain_suffix=args.domain_suffix, default_namespace=args.namespace
    )
    errors = 0
    for d in diagnostics:
        errors += d.severity == "error"
        if d.severity == "error" or not args.quiet:
            print(d, file=out)
    if not errors and not args.quiet:
        print(validate_summary(resources, files, len(diagnostics)), file=out)
    return EXIT_INVALID if errors else EXIT_OK


def validate_summary(resources: Sequence[RawResource], files: int, warnings: int) -> str:
    """The line validate prints on success: "ok: 12 resources in 3 files (...), 0 warnings"."""
    kinds: dict[str, int] = {}
    for raw in resources:
        kinds[raw.kind] = kinds.get(raw.kind, 0) + 1
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    return (
        f"ok: {plural(len(resources), 'resource')} in {plural(files, 'file')}"
        + (f" ({detail})" if detail else "")
        + f", {plural(warnings, 'warning')}"
    )


def validate_paths(
    paths: Sequence[Path], *, domain_suffix: str, default_namespace: str
) -> list[Diagnostic]:
    """Load every YAML file under paths and validate each resource; all diagnostics, in order."""
    return validate_tree(paths, domain_suffix=domain_suffix, default_namespace=default_namespace)[0]


def validate_tree(
    paths: Sequence[Path], *, domain_suffix: str, default_namespace: str
) -> tuple[list[Diagnostic], list[RawResource], int]:
    """validate_paths, with the resources loaded and the number of files read."""
    from meshagent.adapters.files import find_config_files
    from meshagent.adapters.yamldocs import load_file
    from meshagent.normalize.validate import validate_resource

    missing = [p for p in paths if not p.exists()]
    if missing:
        raise ConfigError("no such file or directory", location=str(missing[0]))
    diagnostics: list[Diagnostic] = []
    loaded: list[RawResource] = []
    files = find_config_files(paths)
    for path in files:
        resources, problems = load_file(path)
        diagnostics.extend(problems)
        loaded.extend(resources)
        for raw in resources:
            diagnostics.extend(
                validate_resource(
                    raw, domain_suffix=domain_suffix, default_namespace=default_namespace
                )
            )
    warnings = reference_warnings(
        loaded, domain_suffix=domain_suffix, default_namespace=default_namespace
    )
    return diagnostics + warnings, loaded, len(files)


def reference_warnings(
    resources: Sequence[RawResource], *, domain_suffix: str, default_namespace: str
) -> list[Diagnostic]:
    """Routes and rules among resources that reference hosts or subsets none of them declare
    (normalize/references.py), as the agent would report them."""
    from meshagent.normalize.normalizer import Normalizer

    normalizer = Normalizer(domain_suffix=domain_suffix, default_namespace=default_namespace)
    by_source: dict[str, list[RawResource]] = {}
    for raw in resources:
        by_source.setdefault(raw.source, []).append(raw)
    normalizer.apply(SourceEvent(s, upserts=tuple(rs)) for s, rs in by_source.items())
    return normalizer.references()


if __name__ == "__main__":
    sys.exit(main())
