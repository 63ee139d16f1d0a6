"""EnvoyFilter BOOTSTRAP patches: merged into the bootstrap Envoy starts with.

As Istio's bootstrap generator does (pilot/pkg/xds/bootstrapds.go): each BOOTSTRAP patch that
applies to the proxy, in EnvoyFilter order, is protobuf-merged into the generated bootstrap
(set scalars overwrite, messages merge, repeated fields append); other operations do nothing
there and are reported here. A bootstrap is read once, when Envoy starts: a change of these
patches takes effect at the next Envoy start, never over xDS.

Pure: bootstrap in, bootstrap out. Whether Envoy accepts the result is the caller's check
(`envoy --mode validate`, agent/bootstrap_patch.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from google.protobuf import json_format

from meshagent.envoy_types import load_type, type_urls
from meshagent.xds.envoyfilter.merge import MergeError, decode
from meshagent.xds.envoyfilter.select import Applied


@dataclass(frozen=True, slots=True)
class BootstrapPatched:
    """The outcome: the bootstrap (the input itself when nothing was merged), the patches
    merged into it, and those left out with the reason."""

    bootstrap: Mapping[str, Any]
    merged: tuple[Applied, ...]
    left_out: tuple[tuple[Applied, str], ...]


def as_message(bootstrap: Mapping[str, Any]) -> Bootstrap:
    """A JSON bootstrap (as build_bootstrap makes it) as the Envoy message."""
    for type_url in type_urls(bootstrap):
        load_type(type_url)
    message = Bootstrap()
    json_format.ParseDict(dict(bootstrap), message)
    return message


def as_json(message: Bootstrap) -> dict[str, Any]:
    """The Envoy message as a JSON-able bootstrap (proto field names, as Envoy reads them)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def patch_bootstrap(bootstrap: Mapping[str, Any], patches: Sequence[Applied]) -> BootstrapPatched:
    """Merge the MERGE patches of patches into bootstrap, in order."""
    if not patches:
        return BootstrapPatched(bootstrap, (), ())
    message = as_message(bootstrap)
    merged: list[Applied] = []
    left_out: list[tuple[Applied, str]] = []
    flush_on_admin_asked = False
    for applied in patches:
        patch = applied.patch
        if patch.operation != "MERGE":
            left_out.append((applied, f"{patch.operation} does nothing on BOOTSTRAP (only MERGE)"))
            continue
        if not patch.value_type:
            left_out.append((applied, "a MERGE without a value"))
            continue
        try:
            value = decode(patch.value_type, patch.value)
            message.MergeFrom(value)
        except (MergeError, TypeError) as exc:
            left_out.append((applied, f"cannot merge: {exc}"))
            continue
        flush_on_admin_asked |= getattr(value, "stats_flush_on_admin", False) is True
        merged.append(applied)
    if not merged:
        return BootstrapPatched(bootstrap, (), tuple(left_out))
    if not flush_on_admin_asked:
        _periodic_flush_when_asked(message)
    return BootstrapPatched(as_json(message), tuple(merged), tuple(left_out))


def _periodic_flush_when_asked(message: Bootstrap) -> None:
    """The generated bootstrap flushes statistics on admin queries only (xds/bootstrap.py);
    a patch that sets a flush interval (which Envoy refuses beside stats_flush_on_admin) or
    adds stats sinks (which need the periodic flush) gets Envoy's timer back."""
    if message.HasField("stats_flush_interval") or len(message.stats_sinks) > 0:
        message.ClearField("stats_flush_on_admin")
