"""What a route adds around its action: header edits, fault injection and CORS.

Fault and CORS are per-route configs of HTTP filters that every outbound listener carries, so a
route turns them on without the listener changing.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from google.protobuf import wrappers_pb2

from meshagent.model import CorsPolicy, Fault, HeaderOps
from meshagent.xds.translate import protos
from meshagent.xds.translate.route_match import string_matcher

_ADD = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
_SET = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# gRPC status codes by name, for aborts written as "UNAVAILABLE" rather than 14.
GRPC_STATUS = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


def header_options(
    set_: tuple[tuple[str, str], ...], add: tuple[tuple[str, str], ...]
) -> list[base_pb2.HeaderValueOption]:
    """`set` overwrites a header, `add` appends another value; sets first, as written."""
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=a)
        for pairs, a in ((set_, _SET), (add, _ADD))
        for k, v in pairs
    ]


def apply_header_ops(target: rc.Route | rc.WeightedCluster.ClusterWeight, ops: HeaderOps) -> None:
    """Request and response header edits on a route or on one weighted cluster."""
    if not ops:
        return
    target.request_headers_to_add.extend(header_options(ops.request_set, ops.request_add))
    target.request_headers_to_remove.extend(ops.request_remove)
    target.response_headers_to_add.extend(header_options(ops.response_set, ops.response_add))
    target.response_headers_to_remove.extend(ops.response_remove)


def merge_header_ops(first: HeaderOps, second: HeaderOps) -> HeaderOps:
    """first's edits followed by second's (a single destination's edits join the route's)."""
    return HeaderOps(
        request_set=first.request_set + second.request_set,
        request_add=first.request_add + second.request_add,
        request_remove=first.request_remove + second.request_remove,
        response_set=first.response_set + second.response_set,
        response_add=first.response_add + second.response_add,
        response_remove=first.response_remove + second.response_remove,
    )


def _grpc_status(value: str) -> int:
    return int(value) if value.isdigit() else GRPC_STATUS.get(value.upper(), 2)


def http_fault(fault: Fault) -> fault_pb2.HTTPFault:
    """The per-route config of the fault filter: a fixed delay and/or an abort."""
    out = fault_pb2.HTTPFault()
    if fault.delay is not None:
        out.delay.CopyFrom(
            common_fault.FaultDelay(
                fixed_delay=protos.duration(fault.delay.fixed_delay_ms),
                percentage=protos.fractional_percent(fault.delay.percent),
            )
        )
    abort = fault.abort
    if abort is not None:
        out.abort.percentage.CopyFrom(protos.fractional_percent(abort.percent))
        if abort.grpc_status is not None:
            out.abort.grpc_status = _grpc_status(abort.grpc_status)
        else:
            out.abort.http_status = abort.http_status or 500
    return out


def cors_policy(cors: CorsPolicy) -> cors_pb2.CorsPolicy:
    """The per-route config of the CORS filter."""
    out = cors_pb2.CorsPolicy(
        allow_origin_string_match=[string_matcher(o) for o in cors.allow_origins],
        allow_methods=",".join(cors.allow_methods),
        allow_headers=",".join(cors.allow_headers),
        expose_headers=",".join(cors.expose_headers),
        forward_not_matching_preflights=wrappers_pb2.BoolValue(
            value=cors.unmatched_preflights_forward
        ),
    )
    if cors.max_age_ms is not None:
        out.max_age = str(cors.max_age_ms // 1000)
    if cors.allow_credentials is not None:
        out.allow_credentials.value = cors.allow_credentials
    return out


def apply_filter_configs(route: rc.Route, fault: Fault | None, cors: CorsPolicy | None) -> None:
    """Turn on fault injection and CORS for this route."""
    if fault is not None and (fault.delay or fault.abort):
        route.typed_per_filter_config[protos.FAULT_FILTER].Pack(http_fault(fault))
    if cors is not None:
        route.typed_per_filter_config[protos.CORS_FILTER].Pack(cors_policy(cors))
