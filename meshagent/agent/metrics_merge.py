"""The merged scrape, GET /stats/prometheus on the admin TCP port, as Istio's agent on 15020.

One answer holds three parts, in this order: the agent's own metrics, Envoy's (its admin
`/stats/prometheus`, the scrape's query string passed on as Istio does: `?usedonly`,
`?filter=`), and the application's (`metrics.app`). Envoy and the application are fetched
at the same time, each bounded in time and size (agent/scrape_client.py). A part that fails
is left out and reported, never the whole scrape: `meshagent_scrape_target_up{target}` is 0
in the same answer, `meshagent_scrape_failures_total{target}` counts, and one log line says
why when a part goes down (and one when it comes back), not one per scrape.

No family twice: a metric family whose name (or one of its samples' names) an earlier part
already used is left out of the later part, counted in `meshagent_scrape_conflicts_total`
and logged. The agent's names are `meshagent_*` and Envoy's `envoy_*`, so in practice only
the application can clash (with `envoy_*` or `meshagent_*` names).

Format: Prometheus text 0.0.4. OpenMetrics 1.0.0 when the scraper asks for it (Accept) and
every part can give it: the agent can, the application when it answers OpenMetrics, Envoy
never (it has no OpenMetrics output), so only with `metrics.envoy: false`. An application
that answers OpenMetrics when the answer is text is converted (prometheus_client's parser).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics import parser as om_parser

from meshagent import __version__
from meshagent.agent.admin import AdminServer, Request, Response
from meshagent.agent.config.metrics import MetricsConfig
from meshagent.agent.metrics import AgentMetrics
from meshagent.agent.opspages import envoy_admin_url
from meshagent.agent.scrape_client import Fetched, FetchError, fetch

log = structlog.get_logger("meshagent.metrics")

PATH = "/stats/prometheus"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
ASK_TEXT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
ASK_OPENMETRICS = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
TIMEOUT_HEADER = "x-prometheus-scrape-timeout-seconds"
CONCURRENT_SCRAPES = 2  # each holds up to 2 x max_bytes; more scrapes wait their turn
# Suffixes a sample name may add to its family's name (text format and OpenMetrics).
SUFFIXES = ("_total", "_created", "_bucket", "_sum", "_count", "_gcount", "_gsum", "_info")
_TYPE_LINE = re.compile(rb"^# TYPE (\S+)", re.MULTILINE)
_QUERY_OK = re.compile(r"[!-~]*")  # printable ASCII, no space: passed on to Envoy's admin


def install_merged_scrape(
    admin: AdminServer, metrics: AgentMetrics, config: Callable[[], Any]
) -> MergedScrape:
    """Serve the merged scrape at PATH; `config()` gives the current AgentConfig (a reload
    changes what is merged)."""
    merged = MergedScrape(metrics, config, _envoy_stats_url)
    admin.request_pages[PATH] = merged.page
    return merged


@dataclass(frozen=True, slots=True)
class _Part:
    target: str  # "envoy" or "app"
    fetched: Fetched | None
    error: str = ""


class MergedScrape:
    """The page and the per-part up/down state it logs transitions of."""

    def __init__(
        self,
        metrics: AgentMetrics,
        config: Callable[[], Any],
        envoy_stats_url: Callable[[Any], str],
    ) -> None:
        self.metrics = metrics
        self._config = config
        self._envoy_url = envoy_stats_url
        self._down: dict[str, str] = {}  # target -> why, while it is down (for the logs)
        self._conflicts: dict[str, tuple[str, ...]] = {}
        self._slots = asyncio.Semaphore(CONCURRENT_SCRAPES)

    async def page(self, request: Request) -> Response:
        config = self._config()
        settings: MetricsConfig = config.metrics
        if not settings.merge:
            return Response.text(404, "the merged scrape is off (metrics.merge: false)\n")
        timeout = _timeout_s(settings, request.headers.get(TIMEOUT_HEADER, ""))
        try:  # a pile of scrapes waits its turn for a while, not forever
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            return Response.text(503, "busy: other scrapes are running\n")
        try:
            return await self._scrape(request, config, settings, timeout)
        finally:
            self._slots.release()

    async def _scrape(
        self, request: Request, config: Any, settings: MetricsConfig, timeout: float
    ) -> Response:
        self.metrics.scrapes.inc()
        want_om = not settings.envoy and wants_openmetrics(request.headers.get("accept", ""))
        fetches = []
        if settings.envoy:
            url = self._envoy_url(config) + _query(request)
            fetches.append(self._get("envoy", url, ASK_TEXT, timeout, settings.max_bytes))
        if settings.app is not None:
            ask = ASK_OPENMETRICS if want_om else ASK_TEXT
            fetches.append(self._get("app", settings.app.url(), ask, timeout, settings.max_bytes))
        parts = list(await asyncio.gather(*fetches))
        # Reading megabytes of lines is CPU work: off the event loop, which serves xDS.
        return await asyncio.to_thread(self._answer, parts, want_om)

    def _answer(self, parts: list[_Part], want_om: bool) -> Response:
        app = next((p.fetched for p in parts if p.target == "app" and p.fetched), None)
        as_om = want_om and (app is None or is_openmetrics(app.content_type))
        parts = [_as_format(p, as_om) for p in parts]
        self._report(parts, configured={p.target for p in parts})
        return Response(200, self._render(parts, as_om), OPENMETRICS if as_om else TEXT)

    async def _get(self, target: str, url: str, accept: str, timeout: float, cap: int) -> _Part:
        headers = {
            "Accept": accept,
            "User-Agent": f"meshagent/{__version__}",
            "X-Prometheus-Scrape-Timeout-Seconds": f"{timeout:g}",
        }
        try:
            fetched = await fetch(url, headers=headers, timeout_s=timeout, max_bytes=cap)
        except FetchError as exc:
            return _Part(target, None, f"{url}: {exc}")
        except Exception as exc:  # a surprise in one part must not cost the others
            log.exception("metrics_scrape_bug", target=target)
            return _Part(target, None, f"{url}: {type(exc).__name__}: {exc}")
        return _Part(target, fetched)

    def _report(self, parts: list[_Part], configured: set[str]) -> None:
        """Set the up gauges (before the agent's part is rendered, so that this very answer
        says it), count failures, and log each part going down or coming back once."""
        for target in ("envoy", "app"):
            if target not in configured:  # no longer configured (a reload): no series
                with contextlib.suppress(KeyError):
                    self.metrics.scrape_target_up.remove(target)
        for part in parts:
            up = part.fetched is not None
            self.metrics.scrape_target_up.labels(target=part.target).set(1 if up else 0)
            if up:
                if self._down.pop(part.target, None) is not None:
                    log.info("metrics_scrape_recovered", target=part.target)
                continue
            self.metrics.scrape_failures.labels(target=part.target).inc()
            if part.target not in self._down:
                log.warning("metrics_scrape_failed", target=part.target, error=part.error)
            self._down[part.target] = part.error

    def _render(self, parts: list[_Part], as_om: bool) -> bytes:
        taken: set[str] = set()
        generate = om_exposition.generate_latest if as_om else generate_latest
        agent = generate(self.metrics.registry).decode()
        out = [keep_new_families(agent, taken, drop_eof=True).kept.encode()]
        for part in parts:
            if part.fetched is None:
                continue
            body = part.fetched.body
            if part.target == "envoy" and not _clashes(body, taken):
                taken.update(_family_keys(m.decode() for m in _TYPE_LINE.findall(body)))
                out.append(_with_newline(body))
                continue
            merged = keep_new_families(body.decode("utf-8", "replace"), taken, drop_eof=True)
            self._log_conflicts(part.target, merged.dropped)
            out.append(merged.kept.encode())
        if as_om:
            out.append(b"# EOF\n")
        return b"".join(out)

    def _log_conflicts(self, target: str, dropped: list[str]) -> None:
        if dropped:
            self.metrics.scrape_conflicts.labels(target=target).inc(len(dropped))
        names = tuple(dropped[:20])
        if names != self._conflicts.get(target, ()):
            self._conflicts[target] = names
            if names:
                log.warning("metrics_merge_conflict", target=target, families=list(names))


def _as_format(part: _Part, as_om: bool) -> _Part:
    """The part in the answer's format: an OpenMetrics body converted when the answer is
    text. The application's answer is checked line by line: one that is not an exposition
    (an HTML page, a typo'd path answering 200) would make the scraper refuse the whole
    answer, so it fails alone instead."""
    fetched = part.fetched
    if fetched is None or part.target == "envoy":
        return part
    try:
        if not as_om and is_openmetrics(fetched.content_type):
            return _Part(part.target, Fetched(TEXT, openmetrics_to_text(fetched.body)))
        check_exposition(fetched.body)
    except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
        return _Part(part.target, None, f"not a Prometheus exposition: {exc}")
    return part


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# Each piece matches one way only (no `\d+\.?\d*`, no `\s*,?\s*`): a long line that does
# not match must fail in linear time, not backtrack for minutes.
_LABELS = r'\{\s*(?:[a-zA-Z_][a-zA-Z0-9_]*\s*=\s*"(?:\\.|[^"\\])*"\s*(?:,\s*)?)*\}'
_NUMBER = r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|Inf|inf|NaN|nan)"
_EXEMPLAR = rf"(?:\s+#\s+{_LABELS}\s+{_NUMBER}(?:\s+{_NUMBER})?)?"
_SAMPLE = re.compile(rf"{_NAME}(?:{_LABELS})?[ \t]+{_NUMBER}(?:[ \t]+{_NUMBER})?{_EXEMPLAR}\s*")


def check_exposition(body: bytes) -> None:
    """ValueError naming the first line that is neither a comment nor a sample."""
    for number, line in enumerate(body.decode("utf-8").splitlines(), 1):
        if line.strip() and not line.startswith("#") and not _SAMPLE.fullmatch(line):
            raise ValueError(f"line {number}: {line[:80]!r}")


def _envoy_stats_url(config: Any) -> str:
    return envoy_admin_url(config.envoy, PATH)


def _timeout_s(settings: MetricsConfig, header: str) -> float:
    """The configured bound, lowered within the scraper's own timeout when it says one: a
    tenth is left for the rest of the answer, so that a slow part is left out rather than
    the scraper giving up on the whole answer."""
    timeout = settings.timeout_ms / 1000
    try:
        asked = float(header)
    except ValueError:
        return timeout
    return max(0.05, min(timeout, asked * 0.9)) if asked > 0 else timeout


def _query(request: Request) -> str:
    query = request.query
    return f"?{query}" if query and _QUERY_OK.fullmatch(query) else ""


def wants_openmetrics(accept: str) -> bool:
    """True when the Accept header prefers OpenMetrics to the text format."""
    best: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        best[media] = max(best.get(media, 0.0), q)
    om = best.get("application/openmetrics-text", 0.0)
    return om > 0 and om >= best.get("text/plain", 0.0)


def is_openmetrics(content_type: str) -> bool:
    """Whether a Content-Type says OpenMetrics."""
    return content_type.split(";", 1)[0].strip().lower() == "application/openmetrics-text"


class _Families:
    """A collector over parsed families, for prometheus_client's generate_latest."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)


def openmetrics_to_text(body: bytes) -> bytes:
    """An OpenMetrics exposition in the text format 0.0.4 (ValueError when unparseable)."""
    text = body.decode("utf-8")
    families = list(om_parser.text_string_to_metric_families(text))  # type: ignore[no-untyped-call]
    return generate_latest(_Families(families))


@dataclass(frozen=True, slots=True)
class Kept:
    """What keep_new_families kept (text) and the names of the families it left out."""

    kept: str
    dropped: list[str]


def keep_new_families(text: str, taken: set[str], *, drop_eof: bool = False) -> Kept:
    """The families of an exposition (text or OpenMetrics) whose names earlier parts did not
    take (`taken`); then adds the kept ones' names to `taken`. A family is its metadata lines
    (# HELP, # TYPE, # UNIT) and the samples that follow with its name or its name plus one
    of SUFFIXES. Names are compared with and without those suffixes; within one part, though,
    families are the part's own business (Envoy has both envoy_cluster_upstream_rq and
    envoy_cluster_upstream_rq_total)."""
    kept: list[str] = []
    dropped: list[str] = []
    mine: set[str] = set()
    for name, lines in _families(text, drop_eof):
        keys = _family_keys([name, *(_sample_name(x) for x in lines if not x.startswith("#"))])
        if keys & taken:
            dropped.append(name)
            continue
        mine.update(keys)
        kept.extend(lines)
    taken.update(mine)
    return Kept("".join(f"{line}\n" for line in kept), dropped)


def _families(text: str, drop_eof: bool) -> Iterator[tuple[str, list[str]]]:
    name, lines = "", list[str]()
    for line in text.splitlines():
        if not line.strip() or (drop_eof and line.strip() == "# EOF"):
            continue
        if line.startswith("#"):
            fields = line.split(None, 3)
            meta = len(fields) >= 3 and fields[1] in ("HELP", "TYPE", "UNIT")
            if meta and fields[2] != name:
                if lines:
                    yield name, lines
                name, lines = fields[2], []
            lines.append(line)
            continue
        sample = _sample_name(line)
        if sample != name and not (sample.startswith(name) and sample[len(name) :] in SUFFIXES):
            if lines:
                yield name, lines
            name, lines = sample, []
        lines.append(line)
    if lines:
        yield name, lines


def _sample_name(line: str) -> str:
    end = len(line)
    for stop in ("{", " ", "\t"):
        at = line.find(stop)
        if 0 <= at < end:
            end = at
    return line[:end]


def _family_keys(names: Iterable[str]) -> set[str]:
    keys = set()
    for name in names:
        if not name:
            continue
        keys.add(name)
        for suffix in SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                keys.add(name[: -len(suffix)])
    return keys


def _clashes(body: bytes, taken: set[str]) -> bool:
    """Whether a body declares a family whose name is taken (a fast look at # TYPE lines)."""
    return any(k in taken for k in _family_keys(m.decode() for m in _TYPE_LINE.findall(body)))


def _with_newline(body: bytes) -> bytes:
    return body if not body or body.endswith(b"\n") else body + b"\n"
