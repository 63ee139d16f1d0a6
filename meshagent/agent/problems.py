"""The problems of what the agent serves, reported after each publish while they last.

Owner: the daemon, which calls ServedProblems.check() after handing a ResourceSet to the cache:
CUSTOM AuthorizationPolicies that cannot reach an authorizer (logged once), DestinationRule
credentials the proxy cannot serve and Gateway servers a router leaves out (located warnings,
replaced when they change), WasmPlugins this Envoy cannot run (located warnings) and unusable
Telemetry providers (agent/telemetry_warnings.py). Each check is skipped when its inputs are
the same objects as last time. probe_wasm_runtime() is how the daemon learns whether the
Envoy in use has a Wasm runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from meshagent.agent.diagnostics import DiagnosticTable
from meshagent.agent.telemetry_warnings import TelemetryWarnings
from meshagent.errors import MeshAgentError
from meshagent.model.proxy import ROUTER, ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic

log = structlog.get_logger("meshagent.agent")


def _same(key: tuple[object, ...], old: tuple[object, ...]) -> bool:
    """Whether key holds the same objects as old (== would compare whole maps)."""
    return len(old) == len(key) and all(a is b for a, b in zip(key, old, strict=True))


class ServedProblems:
    """Remembers what was reported; report() shows diagnostics among the current problems
    (the daemon's), diagnostics is where a replaced set of problems is forgotten."""

    def __init__(
        self, diagnostics: DiagnosticTable, report: Callable[[Sequence[Diagnostic]], None]
    ) -> None:
        self._diagnostics = diagnostics
        self._report = report
        self._custom_problems: set[tuple[str, str]] = set()  # (workload, reason), logged once
        self._custom_checked: tuple[object, ...] = ()  # what _custom_problems was found from
        self._gateway_checked: tuple[object, ...] = ()  # what _gateway_problems was found from
        self._gateway_problems: tuple[Diagnostic, ...] = ()  # Gateway servers left out
        self._credentials_checked: tuple[object, ...] = ()  # what _credential_problems is of
        self._credential_problems: tuple[Diagnostic, ...] = ()  # DR credentials unserved
        self._wasm_warned: object = None  # the wasm_plugins map last warned about
        self._telemetry_warnings = TelemetryWarnings()  # unusable Telemetry providers, logged once

    def check(self, snapshot: object, proxy: ProxySpec, wasm_why: str) -> None:
        """Report the problems of snapshot as served to proxy; wasm_why: what the Wasm
        runtime probe found ("not probed" when it did not run)."""
        self._warn_unservable_custom_policies(snapshot, proxy)
        self._report_gateway_problems(snapshot, proxy)
        self._report_credential_problems(snapshot, proxy)
        self._warn_wasm_unavailable(snapshot, proxy, wasm_why)
        self._telemetry_warnings.check(snapshot, proxy)

    def _warn_unservable_custom_policies(self, snapshot: Any, proxy: ProxySpec) -> None:
        """Log once when CUSTOM AuthorizationPolicies cannot reach an authorizer, so their
        rules deny what they match (their provider is not in extension_providers, is invalid
        or not a mesh service, or they name several)."""
        from meshagent.xds.translate.ext_authz import provider_problem
        from meshagent.xds.translate.inbound import authz_policies

        if snapshot is None or not proxy.workloads:
            return
        key = (snapshot.authorization_policies, snapshot.services, proxy)
        if _same(key, self._custom_checked):
            return  # most publishes change none of them
        self._custom_checked = key
        problems = set()
        for w in proxy.workloads:
            policies = authz_policies(snapshot, proxy, w)
            reason = provider_problem(snapshot, proxy, policies)
            if reason:
                problems.add((f"{w.namespace}/{w.name}", reason))
        for workload, reason in sorted(problems - self._custom_problems):
            log.warning("authz_custom_rules_deny", workload=workload, reason=reason)
        invalid = {(f"provider:{p.name}", p.problem) for p in proxy.extension_providers}
        for provider, reason in sorted(i for i in invalid - self._custom_problems if i[1]):
            log.warning("extension_provider_invalid", provider=provider[9:], reason=reason)
        self._custom_problems = problems | invalid

    def _report_credential_problems(self, snapshot: object, proxy: ProxySpec) -> None:
        """Report each DestinationRule credentialName the proxy cannot serve, as a located
        warning, while it stays so (xds/translate/credential_secrets.py)."""
        from meshagent.xds.translate.credential_secrets import (
            CREDENTIAL_REFERENCES,
            credential_problems,
        )

        if not isinstance(snapshot, MeshSnapshot):
            return
        key = (
            snapshot.destination_rules,
            snapshot.workload_destination_rules,
            snapshot.credentials,
            proxy,
        )
        if _same(key, self._credentials_checked):
            return
        self._credentials_checked = key
        found = tuple(credential_problems(snapshot, proxy))
        if found != self._credential_problems:
            self._diagnostics.forget_source(CREDENTIAL_REFERENCES)
            self._credential_problems = found
            self._report(found)

    def _report_gateway_problems(self, snapshot: object, proxy: ProxySpec) -> None:
        """Report each Gateway server a router leaves out (a conflict, a missing credential)
        as a located warning, while it stays left out."""
        from meshagent.xds.translate.gateway import GATEWAY_SOURCE, gateway_problems
        from meshagent.xds.translate.gateway_plan import selected_gateways

        if not isinstance(snapshot, MeshSnapshot):
            return
        key = (snapshot.gateways, snapshot.credentials, proxy)
        if _same(key, self._gateway_checked):
            return
        self._gateway_checked = key
        router = proxy.proxy_type == ROUTER
        if router and snapshot.gateways and not selected_gateways(snapshot, proxy):
            # A router whose labels match no Gateway's selector serves nothing: say so.
            labels = dict(proxy.labels)
            log.warning("gateway_none_selected", labels=labels, gateways=len(snapshot.gateways))
        found = tuple(gateway_problems(snapshot, proxy))
        if found != self._gateway_problems:
            self._diagnostics.forget_source(GATEWAY_SOURCE)
            self._gateway_problems = found
            if found:
                self._report(found)

    def _warn_wasm_unavailable(self, snapshot: object, proxy: ProxySpec, why: str) -> None:
        """A located warning for each WasmPlugin when this Envoy has no Wasm runtime."""
        plugins = getattr(snapshot, "wasm_plugins", None)
        if not plugins or proxy.wasm_runtime or plugins is self._wasm_warned:
            return
        self._wasm_warned = plugins
        self._report(
            [
                Diagnostic(
                    severity="warning",
                    source="wasm",
                    location=p.provenance.location if p.provenance else "-",
                    kind="WasmPlugin",
                    name=key,
                    field="spec.url",
                    reason=f"WasmPlugin not available in this Envoy ({why}): "
                    + (
                        "failStrategy FAIL_OPEN, it is skipped"
                        if p.fail_open
                        else "it fails closed, the traffic it selects is denied (403)"
                    ),
                )
                for key, p in sorted(plugins.items())
            ]
        )


async def probe_wasm_runtime(envoy_binary: str | None) -> tuple[bool, str]:
    """Whether the Envoy the config's envoy.binary names (None: the one find_envoy_binary
    finds) has a Wasm runtime, and why: a validate-mode run, in a worker thread."""
    from meshagent.agent.envoy import find_envoy_binary
    from meshagent.xds.envoyfilter.wasm import wasm_runtime_available

    try:
        binary = find_envoy_binary(envoy_binary)
    except MeshAgentError as exc:
        probe = (False, str(exc))
    else:
        probe = await asyncio.to_thread(wasm_runtime_available, binary)
    log.info("wasm_runtime_probed", available=probe[0], why=probe[1])
    return probe
