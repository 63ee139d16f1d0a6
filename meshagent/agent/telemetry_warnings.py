"""Logging, once each, the Telemetry providers that configure nothing (a name that is not an
extension provider, a provider of the wrong kind, a collector that is not a mesh service):
Istio skips them with a log line, and so does the agent (`telemetry_provider_unusable`)."""

from __future__ import annotations

import structlog

from meshagent.model import MeshSnapshot, ProxySpec
from meshagent.xds.translate.telemetry import provider_problems

log = structlog.get_logger("meshagent.agent")


class TelemetryWarnings:
    """Remembers what was logged; check() is cheap when the inputs are the same objects."""

    def __init__(self) -> None:
        self._checked: tuple[object, ...] = ()
        self._logged: set[tuple[str, str]] = set()

    def check(self, snapshot: object, proxy: ProxySpec) -> None:
        """Log the problems of snapshot and proxy not logged before."""
        if not isinstance(snapshot, MeshSnapshot):
            return
        key = (snapshot.telemetries, snapshot.services, proxy)
        if len(key) == len(self._checked) and all(
            a is b for a, b in zip(key, self._checked, strict=True)
        ):
            return
        self._checked = key
        found = provider_problems(snapshot, proxy)
        for where, reason in sorted(found - self._logged):
            log.warning("telemetry_provider_unusable", resource=where, reason=reason)
        self._logged = found
