"""Envoy RouteMatch from a VirtualService HttpMatch: every condition ANDed."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from meshagent.model import HeaderMatch, HttpMatch, MatchKind, StringMatch


def regex(pattern: str) -> regex_pb2.RegexMatcher:
    """A RegexMatcher; RE2 is Envoy's default engine (naming it is deprecated)."""
    return regex_pb2.RegexMatcher(regex=pattern)


def string_matcher(match: StringMatch) -> string_pb2.StringMatcher:
    """StringMatch as Envoy's StringMatcher."""
    if match.kind is MatchKind.EXACT:
        return string_pb2.StringMatcher(exact=match.value)
    if match.kind is MatchKind.PREFIX:
        return string_pb2.StringMatcher(prefix=match.value)
    return string_pb2.StringMatcher(safe_regex=regex(match.value))


def header_matcher(header: HeaderMatch, *, invert: bool = False) -> rc.HeaderMatcher:
    """A header condition; no value means "present", invert means "must not match"."""
    out = rc.HeaderMatcher(name=header.name, invert_match=invert)
    if header.match is None:
        out.present_match = True
    else:
        out.string_match.CopyFrom(string_matcher(header.match))
    return out


def query_matcher(param: HeaderMatch) -> rc.QueryParameterMatcher:
    """A query parameter condition; no value means "present"."""
    out = rc.QueryParameterMatcher(name=param.name)
    if param.match is None:
        out.present_match = True
    else:
        out.string_match.CopyFrom(string_matcher(param.match))
    return out


def _configure_path(out: rc.RouteMatch, match: HttpMatch) -> None:
    uri = match.uri
    if uri is None:
        out.prefix = "/"
    elif uri.kind is MatchKind.EXACT:
        out.path = uri.value
    elif uri.kind is MatchKind.PREFIX:
        out.prefix = uri.value
    else:
        out.safe_regex.CopyFrom(regex(uri.value))
    if match.ignore_uri_case and uri is not None:
        out.case_sensitive.CopyFrom(wrappers_pb2.BoolValue(value=False))


def _pseudo_headers(match: HttpMatch) -> list[rc.HeaderMatcher]:
    # Method, authority and scheme are HTTP/2 pseudo-headers; Envoy exposes them for HTTP/1 too.
    pseudo = ((":method", match.method), (":authority", match.authority), (":scheme", match.scheme))
    return [header_matcher(HeaderMatch(name, value)) for name, value in pseudo if value]


def build_route_match(match: HttpMatch | None) -> rc.RouteMatch:
    """The RouteMatch of one HttpMatch (None: match every request)."""
    out = rc.RouteMatch()
    if match is None:
        out.prefix = "/"
        return out
    _configure_path(out, match)
    out.headers.extend(_pseudo_headers(match))
    out.headers.extend(header_matcher(h) for h in match.headers)
    out.headers.extend(header_matcher(h, invert=True) for h in match.without_headers)
    out.query_parameters.extend(query_matcher(q) for q in match.query_params)
    return out
