"""WasmPlugin as Envoy Wasm HTTP filters (extensions.istio.io/v1alpha1), inserted by the patch
stage into the HTTP connection managers of the traffic each plugin selects.

Placement follows the plugin's phase, as Istio's: AUTHN first, AUTHZ before the
authorization filters (RBAC, ext_authz; else before the router), STATS and unspecified
just before the router. Within a phase, higher priority runs first. Only local modules
(file:// URLs, absolute paths) are served: the agent does not fetch remote modules.

Whether the Envoy in use has a Wasm runtime is probed once by the agent
(`wasm_runtime_available`) and carried in ProxySpec.wasm_runtime; without one, no plugin is
translated and the agent reports each WasmPlugin as not available in this Envoy.

A plugin that selects the traffic but cannot be loaded (a remote module, which the agent does
not fetch, or no Wasm runtime) fails as its failStrategy says, as Istio's agent does when a
module cannot be fetched: FAIL_CLOSE (the default) puts a deny-all RBAC filter in its place,
so that an authentication or authorization plugin that is missing never lets requests
through; FAIL_OPEN leaves it out.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import wrappers_pb2

from meshagent.envoy_validate import run_validate
from meshagent.model.extensions import GATEWAY, SIDECAR_INBOUND, SIDECAR_OUTBOUND, WasmPlugin
from meshagent.model.proxy import ProxySpec
from meshagent.xds.envoyfilter.listeners import Touched, Where
from meshagent.xds.envoyfilter.select import Plan, selects

RUNTIME = "envoy.wasm.runtime.v8"
_PHASES = {"AUTHN": 0, "AUTHZ": 1, "STATS": 2, "UNSPECIFIED_PHASE": 3}
_AUTHZ_FILTERS = ("envoy.filters.http.rbac", "envoy.filters.http.ext_authz")
_ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"
# Istio's workloadModeForListenerClass: a gateway's listeners count as CLIENT traffic.
_MODE_OF = {SIDECAR_INBOUND: "SERVER", SIDECAR_OUTBOUND: "CLIENT", GATEWAY: "CLIENT"}


def plugins_for(plugins: Mapping[str, WasmPlugin], proxy: ProxySpec) -> tuple[WasmPlugin, ...]:
    """The plugins that apply to proxy, in insertion order: those it can load, and those it
    cannot that fail closed (each becomes a deny-all filter: `loadable`)."""
    if not plugins:
        return ()
    chosen = [
        p
        for p in plugins.values()
        if (loadable(p, proxy) or not p.fail_open)
        and p.plugin_type == "HTTP"
        and selects(p.namespace, p.selector, p.target_refs, proxy)
    ]
    root = proxy.root_namespace

    def rank(p: WasmPlugin) -> tuple[int, int, bool, str, str]:
        return (_PHASES.get(p.phase, 3), -p.priority, p.namespace != root, p.created, p.name)

    return tuple(sorted(chosen, key=rank))


def loadable(plugin: WasmPlugin, proxy: ProxySpec) -> bool:
    """Whether proxy's Envoy can run plugin: a local module and a Wasm runtime."""
    return bool(plugin.module) and proxy.wasm_runtime


def deny_all_filter(plugin: WasmPlugin) -> hcm_pb2.HttpFilter:
    """What stands in for a plugin that fails closed and cannot be loaded: an RBAC filter
    with no policy to allow, so every request gets 403 (Istio's agent serves one too)."""
    rules = rbac_config_pb2.RBAC(action=rbac_config_pb2.RBAC.ALLOW)
    out = hcm_pb2.HttpFilter(name=f"{plugin.namespace}.{plugin.name}")
    out.typed_config.Pack(rbac_pb2.RBAC(rules=rules))
    return out


def _selected(plugin: WasmPlugin, context: str, ports: Iterable[int]) -> bool:
    if not plugin.match:
        return True
    wanted = set(ports)
    for mode, numbers in plugin.match:
        if mode in ("SERVER", "CLIENT") and _MODE_OF.get(context) != mode:
            continue
        if not numbers or wanted.intersection(numbers):
            return True
    return False


def wasm_filter(plugin: WasmPlugin) -> hcm_pb2.HttpFilter:
    """The Envoy Wasm HTTP filter of plugin."""
    vm = wasm_pb2.VmConfig(runtime=RUNTIME, vm_id=f"{plugin.namespace}.{plugin.name}")
    vm.code.local.filename = plugin.module
    if plugin.env or plugin.host_env:
        vm.environment_variables.key_values.update(dict(plugin.env))
        vm.environment_variables.host_env_keys.extend(plugin.host_env)
    config = wasm_pb2.PluginConfig(
        name=f"{plugin.namespace}.{plugin.name}",
        root_id=plugin.plugin_name,
        vm_config=vm,
        fail_open=plugin.fail_open,
    )
    if plugin.config_json:
        config.configuration.Pack(wrappers_pb2.StringValue(value=plugin.config_json))
    out = hcm_pb2.HttpFilter(name=f"{plugin.namespace}.{plugin.name}")
    out.typed_config.Pack(http_wasm_pb2.Wasm(config=config))
    return out


def _position(filters: list[hcm_pb2.HttpFilter], phase: str, first_free: int) -> int:
    names = [f.name for f in filters]
    router = names.index(_ROUTER) if _ROUTER in names else len(names)
    if phase == "AUTHN":
        return first_free
    if phase == "AUTHZ":
        found = [names.index(n) for n in _AUTHZ_FILTERS if n in names]
        return min(found) if found else router
    return router


def insert_wasm_filters(
    manager: hcm_pb2.HttpConnectionManager, plan: Plan, where: Where, touched: Touched
) -> None:
    """Insert the plan's Wasm plugins selected for this listener into manager."""
    plugins = plan.wasm
    if not plugins:
        return
    context, ports = where.context, where.ports
    filters = list(manager.http_filters)
    authn = 0
    for plugin in plugins:
        assert isinstance(plugin, WasmPlugin)
        if not _selected(plugin, context, ports):
            continue
        at = _position(filters, plugin.phase, authn)
        runs = loadable(plugin, where.proxy)
        filters.insert(at, wasm_filter(plugin) if runs else deny_all_filter(plugin))
        if plugin.phase == "AUTHN":
            authn += 1
        ref = ref_of_plugin(plugin)
        if ref not in touched.refs:
            touched.refs.append(ref)
    del manager.http_filters[:]
    manager.http_filters.extend(filters)


def ref_of_plugin(plugin: WasmPlugin) -> str:
    prov = plugin.provenance
    ref = f"WasmPlugin/{plugin.namespace}/{plugin.name}"
    return f"{ref} ({prov.location})" if prov is not None else ref


# The smallest Wasm module: the magic and version, no Proxy-Wasm ABI. An Envoy with a V8
# runtime loads it and then refuses it for its ABI; one without says it has no runtime.
_EMPTY_MODULE = base64.b64encode(b"\0asm\x01\0\0\0").decode()
_NO_RUNTIME = ("Didn't find a registered implementation", "compiled without support", "runtime")


def _probe_bootstrap() -> dict[str, object]:
    wasm_url = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    hcm_url = (
        "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    )
    manager = {
        "@type": hcm_url,
        "stat_prefix": "probe",
        "route_config": {"name": "probe"},
        "http_filters": [
            {
                "name": "probe",
                "typed_config": {
                    "@type": wasm_url,
                    "config": {
                        "vm_config": {
                            "runtime": RUNTIME,
                            "code": {"local": {"inline_bytes": _EMPTY_MODULE}},
                        }
                    },
                },
            },
            {
                "name": _ROUTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    listener = {
        "name": "probe",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [
            {"filters": [{"name": HCM, "typed_config": manager}]},
        ],
    }
    return {"static_resources": {"listeners": [listener]}}


def wasm_runtime_available(envoy_binary: str, timeout_s: float = 30.0) -> tuple[bool, str]:
    """Whether envoy_binary has the V8 Wasm runtime, by a validate-mode probe: (answer, why)."""
    done = run_validate(
        envoy_binary,
        _probe_bootstrap(),
        timeout_s=timeout_s,
        prefix="meshagent-wasm-probe-",
        file_name="probe.json",
    )
    if isinstance(done, str):
        return False, done
    output = done.stdout + done.stderr
    if "Proxy-Wasm ABI" in output or "Wasm VM failed" in output or done.returncode == 0:
        return True, f"{RUNTIME} present"
    if RUNTIME in output or any(m in output for m in _NO_RUNTIME[:2]):
        return False, f"{envoy_binary} has no Wasm runtime ({RUNTIME})"
    return False, f"Wasm probe of {envoy_binary} inconclusive: {output.strip()[-200:]}"


__all__ = [
    "RUNTIME",
    "deny_all_filter",
    "insert_wasm_filters",
    "loadable",
    "plugins_for",
    "ref_of_plugin",
    "wasm_filter",
    "wasm_runtime_available",
]
