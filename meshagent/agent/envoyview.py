"""Envoy's own view, read from its admin interface: cluster health, server info, config dump.

The status page and `meshagent proxy-config --from envoy` both use it; the CLI needs no agent
(the admin address comes from `envoy.admin_address` / `envoy.admin_port` of the agent config,
which is what the bootstrap sets). Parsing is pure (documents in, plain dicts out); only
`get_json` does I/O. The resources of a config dump are re-encoded through their protos, so
they carry the same field names as the agent's /debug/resources and the two can be diffed.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto

from meshagent.errors import MeshAgentError
from meshagent.xds.redact import redacted_any

# Host health flags of Envoy's admin (HostHealthStatus): each one takes a host out of balancing.
_FAILURE_FLAGS = (
    ("failed_outlier_check", "ejected"),
    ("failed_active_health_check", "failed health check"),
    ("failed_active_degraded_check", "degraded"),
    ("pending_dynamic_removal", "pending removal"),
    ("pending_active_hc", "pending health check"),
    ("excluded_via_immediate_hc_fail", "excluded"),
    ("active_hc_timeout", "health check timeout"),
)
HOST_COUNTERS = ("rq_active", "rq_total", "rq_success", "rq_error", "cx_connect_fail")


def admin_url(envoy: Any, path: str) -> str:
    """URL of path on the local Envoy's admin interface (from the envoy.* config)."""
    host = envoy.admin_address
    return f"http://{f'[{host}]' if ':' in host else host}:{envoy.admin_port}{path}"


def get_json(envoy: Any, path: str, *, timeout: float = 5.0) -> Any:
    """GET path of Envoy's admin as JSON; MeshAgentError (one line) when it cannot."""
    url = admin_url(envoy, path)
    with _admin_get(url, timeout) as response:
        return json.loads(response.read())


def fetch_cluster_health(envoy: Any, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """cluster_health of Envoy's /clusters?format=json, parsed one cluster at a time as the
    body arrives; MeshAgentError (one line) when it cannot.

    At 10k clusters the body is ~70 MB: json.loads of it is one call that holds the GIL for
    0.3 s or more, so the agent's event loop (xDS server, admin endpoints) stalled that long
    even with the parse on a thread. Parsed in steps of one cluster, the loop waits no longer
    than the interpreter's switch interval, and the whole document is never held at once.
    """
    url = admin_url(envoy, "/clusters?format=json")
    with _admin_get(url, timeout) as response:
        return [cluster_status(s) for s in json_array_items(response.read, "cluster_statuses")]


@contextlib.contextmanager
def _admin_get(url: str, timeout: float) -> Iterator[Any]:
    """The open response of a GET of url; its errors, and those of reading and parsing it
    inside the block, as MeshAgentError (one line)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            yield response
    except urllib.error.HTTPError as exc:
        raise MeshAgentError(f"Envoy admin {url}: HTTP {exc.code}") from None
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MeshAgentError(f"Envoy admin {url} unreachable: {reason}") from None
    except ValueError as exc:
        raise MeshAgentError(f"Envoy admin {url}: not JSON ({exc})") from None


# --- a JSON document read in steps -----------------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class _JsonReader:
    """A JSON text read CHUNK bytes at a time; values are decoded one at a time (json's own
    raw_decode, so each value means exactly what json.loads makes of it)."""

    CHUNK = 1 << 16

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pos = 0
        self._eof = False

    def _more(self) -> bool:
        """Read the next chunk (False at the end of the input)."""
        if self._eof:
            return False
        chunk = self._read(self.CHUNK)
        self._eof = not chunk
        self._text = self._text[self._pos :] + self._utf8.decode(chunk, final=self._eof)
        self._pos = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace; "" at the end of the input."""
        while True:
            self._pos = _WHITESPACE.match(self._text, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._text):
                return self._text[self._pos]
            if not self._more():
                return ""

    def take(self, char: str) -> None:
        """Consume char, the next character that is not whitespace; ValueError if it is not."""
        if self.peek() != char:
            raise ValueError(f"expected {char!r} at {self.peek()!r}")
        self._pos += 1

    def value(self) -> Any:
        """The next value. One that ends where the text read so far ends may go on (a number
        cut by a chunk), so it is taken only when more follows it or the input has ended."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, self._pos)
                if end < len(self._text) or self._eof:
                    self._pos = end
                    return value
            except json.JSONDecodeError:
                if self._eof:
                    raise
            self._more()


def json_array_items(read: Callable[[int], bytes], key: str) -> Iterator[Any]:
    """The items of the array under key of the JSON object read by read(n), one at a time;
    the object's other members are decoded and dropped. ValueError when the text is not JSON
    or not an object."""
    reader = _JsonReader(read)
    reader.take("{")
    more = reader.peek() != "}"
    while more:
        name = reader.value()
        if not isinstance(name, str):
            raise ValueError("expected a member name")
        reader.take(":")
        if name == key:
            yield from _array_items(reader)
        else:
            reader.value()
        more = reader.peek() == ","
        if more:
            reader.take(",")
    reader.take("}")
    if reader.peek():
        raise ValueError("extra data after the document")


def _array_items(reader: _JsonReader) -> Iterator[Any]:
    reader.take("[")
    more = reader.peek() != "]"
    while more:
        yield reader.value()
        more = reader.peek() == ","
        if more:
            reader.take(",")
    reader.take("]")


# --- /clusters?format=json -----------------------------------------------------------------


def cluster_health(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per cluster of Envoy's /clusters?format=json: its endpoints with health and counters,
    and the cluster's totals (rq_active, rq_error = 5xx and resets, cx_connect_fail, ejected)."""
    return [cluster_status(status) for status in doc.get("cluster_statuses", ())]


def cluster_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """One cluster of cluster_health, from one item of Envoy's cluster_statuses."""
    endpoints = [_endpoint(h) for h in status.get("host_statuses", ())]
    total = {k: sum(e[k] for e in endpoints) for k in HOST_COUNTERS}
    return {
        "name": status.get("name", ""),
        "endpoints": endpoints,
        "healthy": sum(e["health"] == "healthy" for e in endpoints),
        "ejected": sum("ejected" in e["flags"] for e in endpoints),
        **total,
    }


def _endpoint(host: Mapping[str, Any]) -> dict[str, Any]:
    counters = dict.fromkeys(HOST_COUNTERS, 0)
    for stat in host.get("stats", ()):
        value = stat.get("value")  # Envoy leaves out zeros
        if value is not None and stat.get("name") in counters:
            counters[stat["name"]] = int(value)
    health = host.get("health_status", {})
    flags = [label for key, label in _FAILURE_FLAGS if health.get(key)]
    eds = str(health.get("eds_health_status", "UNKNOWN")).lower()
    return {
        "address": _address(host.get("address", {})),
        "eds_health": eds,
        "flags": flags,
        "health": endpoint_state(eds, flags, counters),
        "weight": int(host.get("weight", 1)),
        **counters,
    }


def endpoint_state(eds: str, flags: list[str], counters: Mapping[str, int]) -> str:
    """One word for an endpoint as Envoy sees it. A host that EDS calls healthy but whose every
    connection failed or whose every request erred is "failing": Envoy only ejects it when
    outlier detection is on and max_ejection_percent allows."""
    if flags:
        return "unhealthy"
    failures = counters.get("cx_connect_fail", 0) + counters.get("rq_error", 0)
    if failures and not counters.get("rq_success", 0):
        return "failing"
    if eds in ("healthy", "unknown"):
        return "degraded" if failures else "healthy"
    return eds


def _address(address: Mapping[str, Any]) -> str:
    sock = address.get("socket_address")
    if sock:
        host, port = sock.get("address", ""), sock.get("port_value", 0)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    pipe = address.get("pipe")
    return f"unix:{pipe.get('path', '')}" if pipe else json.dumps(address, sort_keys=True)


def problem_rank(cluster: Mapping[str, Any]) -> tuple[int, int, str]:
    """Sort key: clusters with the most trouble first, then by name."""
    unhealthy = len(cluster["endpoints"]) - cluster["healthy"]
    trouble = cluster["rq_error"] + cluster["cx_connect_fail"] + 1000 * unhealthy
    return (-trouble, -cluster["rq_active"], cluster["name"])


# --- /server_info --------------------------------------------------------------------------


def server_report(info: Mapping[str, Any]) -> dict[str, Any]:
    """Envoy's version, state, uptime (seconds) and hot-restart epoch from /server_info."""
    version = str(info.get("version", ""))
    parts = version.split("/")
    options = info.get("command_line_options", {})
    return {
        "version": parts[1] if len(parts) > 2 else version,
        "build": version,
        "state": info.get("state", ""),
        "uptime_s": _seconds(info.get("uptime_current_epoch", "0s")),
        "restart_epoch": int(options.get("restart_epoch", 0) or 0),
    }


def _seconds(text: Any) -> int:
    try:
        return int(float(str(text).rstrip("s")))
    except ValueError:
        return 0


def duration_text(seconds: float) -> str:
    """A duration as people read it: "29d 23h", "5h 3m", "42s"; "expired 3m ago" if negative."""
    if seconds < 0:
        return f"expired {duration_text(-seconds)} ago"
    s = int(seconds)
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {s % 60}s" if minutes else f"{s}s"


# --- /config_dump --------------------------------------------------------------------------

# config_dump section per kind: (dump type, list key, key of the resource in an entry)
DUMP_SECTIONS = {
    "clusters": ("ClustersConfigDump", "dynamic_active_clusters", "cluster"),
    "listeners": ("ListenersConfigDump", "dynamic_listeners", "listener"),
    "routes": ("RoutesConfigDump", "dynamic_route_configs", "route_config"),
    "endpoints": ("EndpointsConfigDump", "dynamic_endpoint_configs", "endpoint_config"),
    "secrets": ("SecretsConfigDump", "dynamic_active_secrets", "secret"),
}


def dump_resources(
    dump: Mapping[str, Any], kind: str, *, decode: bool = True
) -> list[dict[str, Any]]:
    """What Envoy applied of kind, as [{"name", "version", "resource"}] sorted by name: the
    shape and field names of the agent's /debug/resources, key material redacted (decode=False:
    resource is None, for callers that need only names and versions)."""
    type_name, key, body_key = DUMP_SECTIONS[kind]
    found = []
    for section in dump.get("configs", ()):
        if not str(section.get("@type", "")).endswith("." + type_name):
            continue
        for entry in section.get(key, ()):
            state = entry.get("active_state", entry)  # listeners nest their state
            body = state.get(body_key) or {}
            name = entry.get("name") or body.get("name") or body.get("cluster_name", "")
            found.append(
                {
                    "name": name,
                    "version": state.get("version_info"),
                    "resource": _recode(body) if decode else None,
                }
            )
    return sorted(found, key=lambda r: str(r["name"]))


def _recode(body: Mapping[str, Any]) -> Any:
    """Envoy's JSON (proto field names) -> the agent's JSON (json_format's), redacted."""
    from meshagent.envoy_types import load_type, type_urls

    for type_url in type_urls(body):
        load_type(type_url)  # imports the generated modules of nested typed_configs too
    try:
        packed = json_format.ParseDict(dict(body), AnyProto(), ignore_unknown_fields=True)
        # json round trip: plain dicts (MessageToDict gives OrderedDicts for Anys)
        return json.loads(json.dumps(json_format.MessageToDict(redacted_any(packed))))
    except (TypeError, KeyError, ValueError, json_format.Error):
        return {"@type": body.get("@type", ""), "unparsed": True}  # a type this process lacks


# --- filters (as istioctl proxy-config cluster --fqdn --port --subset --direction) ---------


def cluster_name_parts(name: str) -> dict[str, str]:
    """direction, port, subset and fqdn of an Istio-style cluster name ("outbound|80|v1|h")."""
    parts = name.split("|")
    if len(parts) != 4:
        return {"direction": "", "port": "", "subset": "", "fqdn": name}
    return dict(zip(("direction", "port", "subset", "fqdn"), parts, strict=True))


def matches(item: Mapping[str, Any], kind: str, filters: Mapping[str, str | None]) -> bool:
    """Whether a resource ({"name", "resource"}) passes filters (fqdn, port, subset, direction;
    None = any). Clusters and endpoints match on their name's parts; listeners on their
    address's port and direction; routes on their virtual hosts' domains and their port."""
    wanted = {k: str(v) for k, v in filters.items() if v not in (None, "")}
    if not wanted:
        return True
    have = _facets(item, kind)
    return all(_facet_matches(have.get(k), k, v) for k, v in wanted.items())


def _facet_matches(have: Any, key: str, want: str) -> bool:
    if have is None:
        return False
    values = have if isinstance(have, list) else [have]
    if key == "fqdn":  # istioctl: a prefix of the host ("reviews" matches reviews.default...)
        return any(str(v) == want or str(v).startswith(want + ".") for v in values)
    return any(str(v) == want for v in values)


def _facets(item: Mapping[str, Any], kind: str) -> dict[str, Any]:
    name, body = str(item.get("name", "")), item.get("resource") or {}
    if kind in ("clusters", "endpoints"):
        return dict(cluster_name_parts(name))
    if kind == "listeners":
        sock = body.get("address", {}).get("socketAddress", {})
        direction = str(body.get("trafficDirection", "")).lower()
        if direction not in ("inbound", "outbound"):
            direction = "inbound" if name.lower().startswith("inbound") else "outbound"
        return {"port": str(sock.get("portValue", "")), "direction": direction}
    if kind == "routes":
        hosts = body.get("virtualHosts", [])
        domains = [d.rpartition(":")[0] or d for vh in hosts for d in vh.get("domains", [])]
        return {"fqdn": domains, "port": name if name.isdigit() else name.rpartition("_")[2]}
    return {"fqdn": name}


def filter_items(
    items: Iterable[Mapping[str, Any]], kind: str, filters: Mapping[str, str | None]
) -> list[Mapping[str, Any]]:
    """items that pass filters (see matches)."""
    return [i for i in items if matches(i, kind, filters)]
