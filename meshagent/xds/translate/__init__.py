"""The translator: the mesh model in, Envoy resources out.

`generate(snapshot, proxy) -> ResourceSet` is pure and deterministic: the same inputs give the
same bytes. No I/O, no clock, no asyncio, no gRPC. A `Translator` keeps caches between calls so
that a small model change costs about as much as the change, not the mesh.

The generators run in GENERATOR_ORDER; each produces one resource type. An exception inside
one is re-raised as TranslationError naming it (ConfigError from bad agent config passes
through, with the generator named in its message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from meshagent.errors import ConfigError, MeshAgentError
from meshagent.model import MeshSnapshot, ProxySpec
from meshagent.model.proxy import ROUTER
from meshagent.xds import typeurls
from meshagent.xds.envoyfilter import PatchStage
from meshagent.xds.resources import Resource, ResourceSet
from meshagent.xds.translate.assemble import Assembler, Output
from meshagent.xds.translate.context import Context, MeshIndex, changes_between
from meshagent.xds.translate.credential_secrets import ClusterCredentialSecretsGenerator
from meshagent.xds.translate.gateway import (
    GatewayClustersGenerator,
    GatewayListenersGenerator,
    GatewayPlanCache,
    GatewayRoutesGenerator,
    GatewaySecretsGenerator,
)
from meshagent.xds.translate.generators import (
    ClustersGenerator,
    EndpointsGenerator,
    Generator,
    IncrementalGenerator,
    PlanCache,
)
from meshagent.xds.translate.inbound import InboundClustersGenerator, InboundListenersGenerator
from meshagent.xds.translate.jwt import JwksClustersGenerator
from meshagent.xds.translate.outbound_generators import (
    HttpListenersGenerator,
    RoutesGenerator,
    TcpListenersGenerator,
)
from meshagent.xds.translate.scope import ScopedView
from meshagent.xds.translate.secrets import SecretsGenerator
from meshagent.xds.translate.transparent import (
    PassthroughClustersGenerator,
    VirtualListenersGenerator,
)

__all__ = ["GENERATOR_ORDER", "TranslationError", "Translator", "generate"]


class TranslationError(MeshAgentError):
    """A generator failed on input the model allowed: a bug, named after the generator."""

    def __init__(self, generator: str, cause: BaseException) -> None:
        super().__init__(f"generator {generator!r} failed: {cause!r}")
        self.generator = generator


def _generators() -> list[Generator]:
    plans = PlanCache()
    gateways = GatewayPlanCache()
    return [
        SecretsGenerator(),
        GatewaySecretsGenerator(gateways),
        ClusterCredentialSecretsGenerator(gateways),
        ClustersGenerator(plans),
        GatewayClustersGenerator(gateways),
        InboundClustersGenerator(),
        PassthroughClustersGenerator(),
        JwksClustersGenerator(),
        EndpointsGenerator(plans),
        HttpListenersGenerator(),
        TcpListenersGenerator(),
        InboundListenersGenerator(),
        VirtualListenersGenerator(),
        GatewayListenersGenerator(gateways),
        RoutesGenerator(),
        GatewayRoutesGenerator(gateways),
    ]


# What only a sidecar gets: a router (a gateway) has no local workloads and no outbound
# listeners of its own; it listens where its Gateways say (gateway.py), as Istio's router.
SIDECAR_ONLY = frozenset(
    {
        "inbound-clusters",
        "passthrough-clusters",
        "jwks-clusters",
        "http-listeners",
        "tcp-listeners",
        "inbound-listeners",
        "virtual-listeners",
        "routes",
    }
)
_NOTHING: list[Resource] = []  # one object: the assembler compares lists by identity


GENERATOR_ORDER: tuple[str, ...] = tuple(g.name for g in _generators())


class Translator:
    """Holds per-object caches so a small model change costs O(change).

    Not thread-safe: one Translator per proxy, called from one task at a time.
    """

    def __init__(self, make_generators: Callable[[], list[Generator]] = _generators) -> None:
        self._make_generators = make_generators
        self._generators = make_generators()
        self._index: MeshIndex | None = None
        self._assembler = Assembler()
        self._patches = PatchStage()  # EnvoyFilters and WasmPlugins, after assembly
        self._snapshot: MeshSnapshot | None = None
        self._proxy: ProxySpec | None = None
        self._scope = ScopedView()

    def generate(self, snapshot: MeshSnapshot, proxy: ProxySpec) -> ResourceSet:
        """Every resource for proxy, given snapshot (as the Sidecar that applies to proxy
        scopes it: xds/translate/scope.py)."""
        snapshot, proxy = self._scope.view(snapshot, proxy)
        proxy_changed = proxy != self._proxy
        if proxy_changed and self._proxy is not None:
            # Names, ports and domains depend on the proxy: start from clean caches.
            self._generators = self._make_generators()
        changes = changes_between(self._snapshot, snapshot, proxy_changed)
        self._index = MeshIndex.update(self._index, snapshot, changes, proxy)
        ctx = Context(snapshot=snapshot, proxy=proxy, index=self._index, changes=changes)
        outputs: dict[str, list[Output]] = {t: [] for t in typeurls.PUSH_ORDER}
        router = proxy.proxy_type == ROUTER
        for generator in self._generators:
            skip = router and generator.name in SIDECAR_ONLY
            outputs.setdefault(generator.type_url, []).append(
                _NOTHING if skip else _run(generator, ctx)
            )
        result = self._assembler.assemble(outputs)
        try:
            result = self._patches.apply(result, snapshot, proxy)
        except Exception as error:
            raise TranslationError("envoyfilter", error) from error
        self._snapshot, self._proxy = snapshot, proxy
        return result


def _run(generator: Generator, ctx: Context) -> Output:
    try:
        # A plain attribute test: isinstance on a runtime Protocol costs more than a change.
        if hasattr(generator, "generate_patch"):
            return cast(IncrementalGenerator, generator).generate_patch(ctx)
        return generator.generate(ctx)
    except ConfigError as error:
        raise ConfigError(
            f"{generator.name}: {error.reason}", location=error.location, field=error.field
        ) from error
    except Exception as error:
        raise TranslationError(generator.name, error) from error


def generate(snapshot: MeshSnapshot, proxy: ProxySpec) -> ResourceSet:
    """generate() with a fresh Translator: no caches, same result."""
    return Translator().generate(snapshot, proxy)
