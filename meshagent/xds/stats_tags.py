"""Envoy's stats tag extraction, as Istio's bootstrap sets it (`stats_config.stats_tags`).

Envoy's default extractors stop a name at its first dot, so a cluster named
`outbound|8080||hello.default.svc.cluster.local` leaves `default.svc.cluster.local` in the
metric name. Istio replaces the defaults (`use_all_default_tags: false`) with its own list,
under its own tag names (`cluster_name`, `tcp_prefix`, `response_code`, ...), which is what
Istio's dashboards query. The same facts here, with meshagent's names: the domain suffix of
the agent config, Consul's host patterns, and the stat prefixes of `xds/names.py`
(`outbound_<address>_<port>`, `inbound|<port>||`, a tcp_proxy's cluster name).

Envoy compiles these with std::regex (ECMAScript: lazy quantifiers and lookahead), not RE2.
The patterns avoid POSIX classes so that Python's `re` reads them the same way (the tests
check extraction with it, and with a real Envoy).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# Statistics Envoy keeps under `cluster.<name>.`: after the name comes a segment with an
# underscore (upstream_rq_total, circuit_breakers, outlier_detection, lb_subsets_active, ...)
# or one of these, which host names can also spell: they count only in the shape Envoy
# gives them. Anything else falls back to Envoy's rule, the first dot. The first ones are
# the start of what follows the name (anything may come after), the others all of it.
_CLUSTER_STAT_STARTS = (
    r"[^._]*_",  # upstream_rq_total, circuit_breakers.default.cx_open, ...
    r"zone\.[^.]+\.[^.]+\.[^.]*_",
    r"ssl\..",
)
_CLUSTER_STAT_TAILS = (
    r"version",
    r"http[123]\.[^.]+",  # the codec's: http2.trailers, http1.response_flood
    r"(?:internal|external|canary|retry)\.[^.]*_[^.]*",
    r"ratelimit\.(?:ok|error|over_limit|failure_mode_allowed)",
    r"grpc\..+\.(?:success|failure|total)",
)
# An address in a stat name: IPv4 with ports (`127.0.0.1_8080`), or Envoy's spelling of
# IPv6 (`[__1]_8080`), as Istio's listener regexes take them.
_ADDRESS = r"(?:[_.\d]*|[_\[\]a-fA-F\d]*)"
_DNS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def host_suffixes(domain_suffix: str, patterns: Iterable[str] = ()) -> tuple[str, ...]:
    """The name endings after which a cluster's host is known to end: Kubernetes'
    `svc.<domain_suffix>` (Istio's rule) and the literal tail of each host pattern
    (`{name}.service.consul` -> `service.consul`)."""
    found: list[str] = []
    for tail in (f"svc.{domain_suffix}", *(p.rsplit("}", 1)[-1].lstrip(".") for p in patterns)):
        # DNS names only: anything else would be regex syntax in Envoy's bootstrap
        if _DNS_NAME.fullmatch(tail) and tail not in found:
            found.append(tail)
    return tuple(found)


# The name grows a dot-separated segment at a time (`_NAME`), and at each dot it ends when a
# host suffix follows, or when a statistic follows and no host suffix comes later (which
# would take precedence). Envoy runs this with std::regex (libc++), whose backtracking
# copies its state at every step and sets up a new matcher for every lookahead it tries:
# the first form, three alternatives each scanning the name a character at a time, one
# trying a lookahead at every character, cost about 10 us per statistic, two thirds of
# Envoy's time applying a first CDS response (issue 17). The same names are chosen
# (tests/unit/test_xds_bootstrap.py compares with the first form).
_NAME = r".[^.]*(?:\.[^.]*)*?"


def cluster_name_regex(suffixes: Iterable[str]) -> str:
    """`cluster.<name>.`: the name ends at a known host suffix, else where one of Envoy's
    cluster statistics starts, else at the first dot (Envoy's default)."""
    ends = "|".join(s.replace(".", r"\.") for s in suffixes)
    starts = "|".join(_CLUSTER_STAT_STARTS)
    tails = "|".join(_CLUSTER_STAT_TAILS)
    statistic = rf"(?=\.(?:{starts}|(?:{tails})$))"
    if not ends:
        return rf"^cluster\.(({_NAME}{statistic}|[^.]+)\.)"
    return rf"^cluster\.(({_NAME}(?:\.(?:{ends})|{statistic}(?!.*\.(?:{ends})\.))|[^.]+)\.)"


# Envoy's own extractors, named without a regex (Envoy's defaults: RE2 with a substring
# pre-check, cheap). Istio's regexes for response codes are not anchored: Envoy runs them with
# std::regex on every statistic, which Istio affords because its stats_matcher keeps few
# statistics; with all of Envoy's kept they cost seconds of Envoy start-up per thousand
# clusters. So response codes keep Envoy's tag names (envoy_response_code, ..._class).
ENVOY_DEFAULT_TAGS = (
    "envoy.response_code",
    "envoy.response_code_class",
    "envoy.rds_route_config",
    "envoy.worker_id",
    "envoy.ssl_cipher",
)
# What Envoy's response code extractors match (for extract(); the others have no mirror here).
_DEFAULT_REGEXES = {
    "envoy.response_code": r"_rq(_(\d{3}))$",
    "envoy.response_code_class": r"_rq_(\d)xx$",  # upstream_rq_2xx -> upstream_rq_xx, "2"
}


def stats_tags(suffixes: Iterable[str]) -> list[dict[str, str]]:
    """The tag specifiers: Istio's tag names and facts, each regex anchored on its statistic's
    first word (Envoy then tries it only on those statistics), and Envoy's own extractors for
    the rest (ENVOY_DEFAULT_TAGS). Istio's `cache`, `component`, `tag` and `wasm_filter` tags
    are for the statistics of Istio's own proxy build, which stock Envoy does not have."""
    # outbound_<address>_<port> (the address has dots), else a prefix without dots
    # (`inbound|8080||`, `admin`).
    http_prefix = rf"(?:outbound|inbound)_{_ADDRESS}_\d+|[^.]+"
    return [
        {"tag_name": "cluster_name", "regex": cluster_name_regex(suffixes)},
        # tcp_proxy stats have one segment after the prefix: the prefix is all before it.
        {"tag_name": "tcp_prefix", "regex": r"^tcp\.((.*?)\.)\w+?$"},
        {
            "tag_name": "http_conn_manager_listener_prefix",
            "regex": rf"^listener(?=\.).*?\.http\.(({http_prefix})\.)",
        },
        {"tag_name": "http_conn_manager_prefix", "regex": rf"^http\.(({http_prefix})\.)"},
        {"tag_name": "listener_address", "regex": rf"^listener\.(({_ADDRESS})\.)"},
        {
            "tag_name": "mongo_prefix",
            "regex": r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$",
        },
        # HTTP RBAC: http.<prefix>.rbac.allowed, and the dry-run (shadow) rules Istio names
        # http.<prefix>.rbac.istio_dry_run_allow_shadow_denied.
        {"tag_name": "authz_enforce_result", "regex": r"^http\..*\.rbac(\.(allowed|denied))$"},
        {
            "tag_name": "authz_dry_run_action",
            "regex": r"^http\..*\.rbac(\.istio_dry_run_(allow|deny)_)",
        },
        {
            "tag_name": "authz_dry_run_result",
            "regex": r"^http\..*\.rbac\.istio_dry_run_(?:allow|deny)(_shadow_(allowed|denied))$",
        },
        *({"tag_name": name} for name in ENVOY_DEFAULT_TAGS),
    ]


# Istio's default stats inclusion list (istio/istio pkg/bootstrap/config.go: the required
# prefixes, the "reporter=" and "component" ones of its mesh metrics, the RBAC and draining
# suffixes and the VirtualService stat_prefix regex), plus the agent's own xDS cluster, which
# plays the part of Istio's `xds-grpc`.
ISTIO_INCLUSION_PREFIXES = (
    "reporter=",
    "cluster_manager",
    "listener_manager",
    "server",
    "cluster.xds-grpc",
    "wasm",
    "component",
    "cluster.meshagent-xds",
)
ISTIO_INCLUSION_SUFFIXES = (
    "rbac.allowed",
    "rbac.denied",
    "shadow_allowed",
    "shadow_denied",
    "downstream_cx_active",
)
ISTIO_INCLUSION_REGEXPS = (r"vhost\..*\.route\..*",)


def inclusion_matcher(
    prefixes: Iterable[str], suffixes: Iterable[str], regexps: Iterable[str]
) -> dict[str, Any]:
    """A `stats_matcher` keeping only the statistics whose name matches one of the patterns."""
    return {"inclusion_list": {"patterns": _patterns(prefixes, suffixes, regexps)}}


def _patterns(
    prefixes: Iterable[str], suffixes: Iterable[str], regexps: Iterable[str]
) -> list[dict[str, Any]]:
    patterns: list[dict[str, Any]] = [{"prefix": p} for p in dict.fromkeys(prefixes)]
    patterns += [{"suffix": s} for s in dict.fromkeys(suffixes)]
    patterns += [{"safe_regex": {"regex": r}} for r in dict.fromkeys(regexps)]
    return patterns


# The `standard` preset (the default): every statistic except the per-cluster ones Envoy makes
# with each cluster, before any request, that describe its own bookkeeping. What an operator
# asks of a cluster stays: its traffic (upstream_rq_*, upstream_cx_*, with response code tags;
# made at its first request with `envoy.stats.deferred`), membership_healthy and
# membership_total, and outlier_detection.*, health_check.*, ssl.* when it has them. A tripped
# circuit breaker counts in the traffic statistics (upstream_rq_pending_overflow,
# upstream_cx_overflow, upstream_rq_retry_overflow); panic routing is membership_healthy /
# membership_total below the threshold. Dropped (issue 17): 49 of the 51 statistics an EDS
# cluster is made with, each a std::regex run of the `cluster_name` tag at start-up and a
# series in every scrape (2M at 40,000 clusters). Envoy checks the matcher before it makes a
# statistic (ThreadLocalStoreImpl::ScopeImpl::safeMakeStat), so a dropped one costs no tag
# extraction; suffixes are a string compare, the regex RE2. Kept on purpose: the hidden gauge
# `<cluster>.ClusterTrafficStats.initialized` of deferred statistics: an updated cluster reads
# it to remake its traffic statistics at once, so that their values carry over.
#
# Suffixes for names only a cluster's statistics end with (Envoy compares them without a regex).
_BOOKKEEPING_SUFFIXES = (
    "assignment_stale",
    "assignment_timeout_received",
    "assignment_use_cached",
    *(
        f"circuit_breakers.{priority}.{gauge}"
        for priority in ("default", "high")
        for gauge in (
            "cx_open",
            "cx_pool_open",
            "rq_open",
            "rq_pending_open",
            "rq_retry_open",
            "remaining_cx",
            "remaining_cx_pools",
            "remaining_pending",
            "remaining_retries",
            "remaining_rq",
        )
    ),
    "total_match_count",  # <transport socket match>.total_match_count
    "lb_healthy_panic",  # panic: membership_healthy / membership_total below the threshold
    "lb_local_cluster_not_ok",
    "lb_recalculate_zone_structures",
    *(
        f"lb_subsets_{what}"
        for what in ("active", "created", "fallback", "fallback_panic", "removed", "selected")
    ),
    *(
        f"lb_zone_{what}"
        for what in (
            "cluster_too_small",
            "no_capacity_left",
            "routing_all_directly",
            "routing_cross_zone",
            "routing_sampled",
        )
    ),
    "max_host_weight",
    "membership_change",
    "membership_degraded",
    "membership_excluded",
    "warming_state",
)
STANDARD_EXCLUSION_SUFFIXES = tuple(f".{name}" for name in _BOOKKEEPING_SUFFIXES)
# A cluster's update and EDS subscription statistics (update_attempt, update_rejected,
# update_no_rebuild, version, ...), whose names the CDS, LDS, RDS and SDS ones share: RE2 (a
# full match), only after `cluster.` (cluster_manager.cds.update_rejected stays).
STANDARD_EXCLUSION_REGEXPS = (
    r"cluster\..+\.(?:update_[a-z_]+|version(?:_text)?|init_fetch_timeout)",
)


def standard_matcher() -> dict[str, Any]:
    """The `standard` preset's `stats_matcher`: an exclusion list (anything not named, such as
    a filter's statistics added by an EnvoyFilter, stays)."""
    patterns = _patterns((), STANDARD_EXCLUSION_SUFFIXES, STANDARD_EXCLUSION_REGEXPS)
    return {"exclusion_list": {"patterns": patterns}}


def preset_matcher(
    preset: str,
    prefixes: Iterable[str] = (),
    suffixes: Iterable[str] = (),
    regexps: Iterable[str] = (),
) -> dict[str, Any] | None:
    """`envoy.stats` as the bootstrap's stats_matcher: `all` none, `standard` the exclusion
    list above, `istio` Istio's default inclusion set plus the given patterns."""
    if preset == "all":
        return None
    if preset == "standard":
        return standard_matcher()
    return inclusion_matcher(
        (*ISTIO_INCLUSION_PREFIXES, *prefixes),
        (*ISTIO_INCLUSION_SUFFIXES, *suffixes),
        (*ISTIO_INCLUSION_REGEXPS, *regexps),
    )


def stats_config(
    suffixes: Iterable[str], matcher: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The bootstrap's `stats_config`: Istio's tags instead of Envoy's defaults, and `matcher`
    (from `envoy.stats`, see preset_matcher) as its `stats_matcher`; None: every statistic
    stays. Unlike Istio's default, the agent's (`standard`) keeps each cluster's traffic
    statistics: the mesh metrics of Istio's proxy do not exist in stock Envoy, so Envoy's own
    are all there is."""
    config: dict[str, Any] = {"use_all_default_tags": False, "stats_tags": stats_tags(suffixes)}
    if matcher is not None:
        config["stats_matcher"] = dict(matcher)
    return config


def extract(name: str, suffixes: Iterable[str]) -> tuple[str, dict[str, str]]:
    """What Envoy makes of a stat name: (the name without tags, {tag: value}). Mirrors
    Envoy's rule for tests: every specifier sees the whole name; the first group of a match
    is cut out, the second (else the first) is the value."""
    tags: dict[str, str] = {}
    cut: set[int] = set()
    for spec in stats_tags(suffixes):
        regex = spec.get("regex") or _DEFAULT_REGEXES.get(spec["tag_name"])
        match = re.search(regex, name) if regex else None
        if match is None:
            continue
        tags[spec["tag_name"]] = match.group(2) if match.re.groups >= 2 else match.group(1)
        cut.update(range(match.start(1), match.end(1)))
    return "".join(c for i, c in enumerate(name) if i not in cut), tags
