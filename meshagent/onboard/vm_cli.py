"""`meshagent vm configure -f WORKLOADGROUP.yaml -o DIR`: the VM's join files, from flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from meshagent.errors import ConfigError
from meshagent.onboard.vmconfig import VmInputs, render, write_files


def add_parsers(sub: Any) -> None:
    """Add `vm configure` to the `meshagent` subcommands."""
    vm = sub.add_parser("vm", help="onboard this VM into an Istio mesh")
    vm_sub = vm.add_subparsers(dest="vm_command", required=True, metavar="VM_COMMAND")
    c = vm_sub.add_parser(
        "configure",
        help="write cluster.env, mesh.yaml, root-cert.pem, istio-token, hosts for a VM",
    )
    c.add_argument("-f", "--file", required=True, type=Path, help="the WorkloadGroup (YAML)")
    c.add_argument("-o", "--output", required=True, type=Path, help="directory to write")
    c.add_argument("--mesh-config", type=Path, help="MeshConfig YAML (istio configmap's mesh)")
    c.add_argument("--root-cert", type=Path, help="the mesh root certificate (PEM)")
    c.add_argument("--token-file", type=Path, help="token for the mesh CA (istio-token)")
    c.add_argument("--internal-ip", default="", help="the VM's address inside the network")
    c.add_argument("--external-ip", default="", help="the VM's address seen from outside")
    c.add_argument("--ingress-ip", default="", help="address that reaches istiod (hosts)")
    c.add_argument("--cluster-id", default="Kubernetes", help="default: Kubernetes")
    c.add_argument("--revision", default="", help="istiod revision (istiod-<rev>)")
    c.add_argument("--istio-namespace", default="istio-system", help="default: istio-system")
    c.add_argument("--capture-dns", default="true", choices=("true", "false"))
    c.add_argument("--autoregister", action="store_true", help="ask for auto-registration")
    c.add_argument(
        "--config",
        "-c",
        type=Path,
        help="agent config whose sources.kubernetes is read for the mesh config and root cert",
    )


def _read(path: Path | None) -> bytes:
    return b"" if path is None else path.read_bytes()


def _yaml_file(path: Path | None, what: str) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"not valid YAML: {problem}", location=where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a YAML mapping", location=str(path))
    return data


KubeSourceLoader = Callable[[Path], Any]
"""Reads an agent config file and returns its sources.kubernetes options, or None when it has
no Kubernetes source. Given by the CLI layer, which owns the agent config: onboard sits below
the agent and does not import it."""


def run(args: argparse.Namespace, kube_source: KubeSourceLoader | None = None) -> int:
    """Run `vm configure`; ConfigError / OSError reach the CLI's one-line error handler.
    kube_source is needed only with --config."""
    group = _yaml_file(args.file, "a WorkloadGroup")
    if group.get("kind", "WorkloadGroup") != "WorkloadGroup":
        kind = group.get("kind")
        raise ConfigError(f"kind is {kind!r}, not WorkloadGroup", location=str(args.file))
    mesh, root, token = _from_cluster(args, group, kube_source) if args.config else ({}, b"", b"")
    inputs = VmInputs(
        workload_group=group,
        mesh_config=_yaml_file(args.mesh_config, "a MeshConfig") if args.mesh_config else mesh,
        root_cert=_read(args.root_cert) if args.root_cert else root,
        token=_read(args.token_file) if args.token_file else token,
        cluster_id=args.cluster_id,
        revision=args.revision,
        internal_ip=args.internal_ip,
        external_ip=args.external_ip,
        ingress_ip=args.ingress_ip,
        istio_namespace=args.istio_namespace,
        capture_dns=args.capture_dns == "true",
        autoregister=args.autoregister,
    )
    try:
        files = render(inputs)
    except ConfigError as exc:
        raise ConfigError(exc.reason, location=str(args.file), field=exc.field) from None
    write_files(files, args.output)
    if not inputs.ingress_ip:
        print("meshagent: warning: no --ingress-ip: hosts is empty", file=sys.stderr)
    print(f"wrote {', '.join(files)} to {args.output}")
    print(f"traffic capture: meshagent capture apply --cluster-env {args.output / 'cluster.env'}")
    return 0


def _from_cluster(
    args: argparse.Namespace, group: dict[str, Any], kube_source: KubeSourceLoader | None
) -> tuple[dict[str, Any], bytes, bytes]:
    """(mesh config, root cert, token) from the cluster of the agent config's Kubernetes source:
    istio-system/istio[-<rev>]'s `mesh`, the group namespace's istio-ca-root-cert, and a
    TokenRequest (audience istio-ca) for the group's service account unless --token-file."""
    from meshagent.onboard.cluster_inputs import read_cluster_inputs

    if kube_source is None:
        raise ConfigError("--config is not available here", location=str(args.config))
    options = kube_source(args.config)
    if options is None:
        raise ConfigError("has no sources.kubernetes", location=str(args.config))
    return read_cluster_inputs(
        options, group, args.istio_namespace, args.revision, need_token=not args.token_file
    )
