"""VirtualService to the routing model, with every host resolved to an FQDN."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.model.labels import labels_of
from meshagent.model.routing import (
    CorsPolicy,
    Destination,
    DirectResponse,
    Fault,
    FaultAbort,
    FaultDelay,
    HeaderMatch,
    HeaderOps,
    HttpMatch,
    HttpRoute,
    L4Match,
    MatchKind,
    Mirror,
    Redirect,
    Retry,
    Rewrite,
    StringMatch,
    TcpRoute,
    VirtualService,
    WeightedDestination,
)
from meshagent.normalize.convert.context import Context, items, ms, percent, sub

_NO_HEADER_OPS = HeaderOps()


def string_match(spec: Mapping[str, Any] | None) -> StringMatch | None:
    """A StringMatch mapping as the model's; None when no kind is set."""
    if not spec:
        return None
    for kind in MatchKind:
        value = spec.get(kind.value)
        if value is not None:
            return StringMatch(kind, str(value))
    return None


def _header_matches(spec: Mapping[str, Any]) -> tuple[HeaderMatch, ...]:
    return tuple(HeaderMatch(str(name), string_match(m)) for name, m in spec.items())


def destination(spec: Mapping[str, Any], ctx: Context) -> Destination:
    """A Destination mapping with its host resolved."""
    port = sub(spec, "port").get("number")
    return Destination(
        host=ctx.host(str(spec["host"])),
        subset=str(spec.get("subset") or ""),
        port=int(port) if port else None,
    )


def header_ops(spec: Mapping[str, Any]) -> HeaderOps:
    """A Headers mapping (request/response set/add/remove) as HeaderOps."""
    if not spec:
        return _NO_HEADER_OPS
    req, resp = sub(spec, "request"), sub(spec, "response")
    return HeaderOps(
        request_set=tuple((str(k), str(v)) for k, v in sub(req, "set").items()),
        request_add=tuple((str(k), str(v)) for k, v in sub(req, "add").items()),
        request_remove=tuple(str(h) for h in items(req, "remove")),
        response_set=tuple((str(k), str(v)) for k, v in sub(resp, "set").items()),
        response_add=tuple((str(k), str(v)) for k, v in sub(resp, "add").items()),
        response_remove=tuple(str(h) for h in items(resp, "remove")),
    )


def weighted(routes: list[Any], ctx: Context) -> tuple[WeightedDestination, ...]:
    """Route destinations; a lone destination takes all traffic whatever its weight says."""
    single = len(routes) == 1
    return tuple(
        WeightedDestination(
            destination(r["destination"], ctx),
            100 if single else int(r.get("weight") or 0),
            header_ops(sub(r, "headers")),
        )
        for r in routes
    )


def _match(spec: Mapping[str, Any]) -> HttpMatch:
    return HttpMatch(
        name=str(spec.get("name") or ""),
        uri=string_match(spec.get("uri")),
        scheme=string_match(spec.get("scheme")),
        method=string_match(spec.get("method")),
        authority=string_match(spec.get("authority")),
        headers=_header_matches(sub(spec, "headers")),
        without_headers=_header_matches(sub(spec, "withoutHeaders")),
        query_params=_header_matches(sub(spec, "queryParams")),
        ignore_uri_case=bool(spec.get("ignoreUriCase")),
        port=spec.get("port") or None,
        source_labels=labels_of(sub(spec, "sourceLabels")),
        gateways=tuple(str(g) for g in items(spec, "gateways")),
    )


def _redirect(spec: Mapping[str, Any]) -> Redirect:
    return Redirect(
        uri=str(spec.get("uri") or ""),
        authority=str(spec.get("authority") or ""),
        port=spec.get("port") or None,
        derive_port=str(spec.get("derivePort") or ""),
        scheme=str(spec.get("scheme") or ""),
        code=int(spec.get("redirectCode") or 301),
    )


def _direct_response(spec: Mapping[str, Any]) -> DirectResponse:
    body = sub(spec, "body")
    if body.get("bytes") is not None:
        return DirectResponse(int(spec["status"]), str(body["bytes"]), body_is_bytes=True)
    text = body.get("string")
    return DirectResponse(int(spec["status"]), None if text is None else str(text))


def _rewrite(spec: Mapping[str, Any]) -> Rewrite:
    regex = sub(spec, "uriRegexRewrite")
    return Rewrite(
        uri=str(spec.get("uri") or ""),
        authority=str(spec.get("authority") or ""),
        uri_regex_match=str(regex.get("match") or ""),
        uri_regex_rewrite=str(regex.get("rewrite") or ""),
    )


def _retry(spec: Mapping[str, Any]) -> Retry:
    return Retry(
        attempts=int(spec.get("attempts") or 0),
        per_try_timeout_ms=ms(spec.get("perTryTimeout")),
        retry_on=str(spec.get("retryOn") or ""),
        retry_remote_localities=bool(spec.get("retryRemoteLocalities")),
    )


def _share(spec: Mapping[str, Any]) -> float:
    """A fault's share of requests: percentage, else the old integer percent, else all."""
    value = percent(spec)
    if value is None and spec.get("percent") is not None:
        value = float(spec["percent"])
    return 100.0 if value is None else value


def _fault(spec: Mapping[str, Any]) -> Fault | None:
    """The fault, as Istio translates it: a delay without fixedDelay and an abort without a
    status are dropped; nothing left, no fault."""
    delay, abort = spec.get("delay") or {}, spec.get("abort") or {}
    fixed = delay.get("fixedDelay")
    status, grpc = abort.get("httpStatus"), abort.get("grpcStatus")
    if fixed is None and status is None and grpc is None:
        return None
    return Fault(
        delay=FaultDelay(ms(fixed) or 0, _share(delay)) if fixed is not None else None,
        abort=FaultAbort(http_status=status, grpc_status=grpc, percent=_share(abort))
        if status is not None or grpc is not None
        else None,
    )


def _delegate(spec: Mapping[str, Any], ctx: Context) -> tuple[str, str] | None:
    """(namespace, name) of a route's delegate; the namespace defaults to the root's."""
    delegate = spec.get("delegate")
    if delegate is None:
        return None
    return (str(delegate.get("namespace") or ctx.namespace), str(delegate["name"]))


def _mirrors(spec: Mapping[str, Any], ctx: Context) -> tuple[Mirror, ...]:
    out = [Mirror(destination(m["destination"], ctx), percent(m)) for m in items(spec, "mirrors")]
    if spec.get("mirror") is not None:
        share = percent(spec, "mirrorPercentage")
        legacy = spec.get("mirrorPercent", spec.get("mirror_percent"))
        if share is None and legacy is not None:
            share = float(legacy)
        out.append(Mirror(destination(spec["mirror"], ctx), share))
    return tuple(out)


def _cors(spec: Mapping[str, Any]) -> CorsPolicy:
    origins = [string_match(o) for o in items(spec, "allowOrigins")]
    origins += [StringMatch(MatchKind.EXACT, str(o)) for o in items(spec, "allowOrigin")]
    return CorsPolicy(
        allow_origins=tuple(o for o in origins if o is not None),
        allow_methods=tuple(str(m) for m in items(spec, "allowMethods")),
        allow_headers=tuple(str(h) for h in items(spec, "allowHeaders")),
        expose_headers=tuple(str(h) for h in items(spec, "exposeHeaders")),
        max_age_ms=ms(spec.get("maxAge")),
        allow_credentials=spec.get("allowCredentials"),
        unmatched_preflights_forward=spec.get("unmatchedPreflights") != "IGNORE",
    )


def _opt(spec: Mapping[str, Any], key: str, build: Any) -> Any:
    value = spec.get(key)
    return build(value) if value is not None else None


def http_route(spec: Mapping[str, Any], ctx: Context) -> HttpRoute:
    """One validated HTTPRoute mapping as the model's HttpRoute."""
    return HttpRoute(
        name=str(spec.get("name") or ""),
        matches=tuple(_match(m) for m in items(spec, "match")),
        route=weighted(items(spec, "route"), ctx),
        redirect=_opt(spec, "redirect", _redirect),
        direct_response=_opt(spec, "directResponse", _direct_response),
        rewrite=_opt(spec, "rewrite", _rewrite),
        timeout_ms=ms(spec.get("timeout")),
        retries=_opt(spec, "retries", _retry),
        fault=_opt(spec, "fault", _fault),
        mirrors=_mirrors(spec, ctx),
        headers=header_ops(sub(spec, "headers")),
        cors=_opt(spec, "corsPolicy", _cors),
        delegate=_delegate(spec, ctx),
    )


def _l4_match(spec: Mapping[str, Any]) -> L4Match:
    return L4Match(
        port=spec.get("port") or None,
        destination_subnets=tuple(str(s) for s in items(spec, "destinationSubnets")),
        sni_hosts=tuple(str(s) for s in items(spec, "sniHosts")),
        source_labels=labels_of(sub(spec, "sourceLabels")),
        gateways=tuple(str(g) for g in items(spec, "gateways")),
    )


def l4_route(spec: Mapping[str, Any], ctx: Context) -> TcpRoute:
    """A validated TCPRoute or TLSRoute mapping as the model's TcpRoute."""
    return TcpRoute(
        matches=tuple(_l4_match(m) for m in items(spec, "match")),
        route=weighted(items(spec, "route"), ctx),
    )


def convert_virtual_service(name: str, spec: Mapping[str, Any], ctx: Context) -> VirtualService:
    """A VirtualService spec (validated) as the model's VirtualService."""
    return VirtualService(
        name=name,
        namespace=ctx.namespace,
        hosts=tuple(ctx.host(str(h)) for h in items(spec, "hosts")),
        gateways=tuple(str(g) for g in items(spec, "gateways")),
        http=tuple(http_route(r, ctx) for r in items(spec, "http")),
        tcp=tuple(l4_route(r, ctx) for r in items(spec, "tcp")),
        tls=tuple(l4_route(r, ctx) for r in items(spec, "tls")),
        export_to=tuple(str(e) for e in items(spec, "exportTo")),
        provenance=ctx.provenance,
    )
