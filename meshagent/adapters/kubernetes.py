"""The Kubernetes adapter: Services, EndpointSlices and the Istio kinds, by list+watch.

One stream (kube_watch.KubeStream, on its own daemon thread) per resource type and namespace
(or one cluster-wide stream per type when no namespace is configured). The first listing of
every stream is emitted as one synced SourceEvent; each later change as its own event.

Resources emitted (source "kubernetes"), each with the API object as body and provenance
"resourceVersion N" plus kind/namespace/name:
- `Service` (apiVersion v1) and `EndpointSlice` (discovery.k8s.io/v1), which the normalizer
  joins through the slices' `kubernetes.io/service-name` label (normalize/kubernetes);
- the Istio kinds (networking.istio.io, security.istio.io, telemetry.istio.io) as read,
  which go to the same normalizer as files. Each is watched at the first version the server
  serves of `istio_versions` (v1, then v1beta1, then v1alpha3; Telemetry: v1, then v1alpha1);
- `Secret` (v1), in `secret_namespaces` only, for credentialName (normalize/credentials.py);
  a 403 there is an error of the listing, not a failure of the whole source.

Credentials: a kubeconfig (and context), or a server URL with a token file (re-read when it
changes: projected tokens rotate) and a CA file, or, with neither, the in-cluster service
account. Faults never delete anything; see kube_watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from meshagent.adapters.consul import TokenFile
from meshagent.adapters.consul_watch import Backoff, run_blocking
from meshagent.adapters.kube_watch import (
    REJECTED,
    Gone,
    KubeStream,
    ObjKey,
    StreamSpec,
    obj_key,
)
from meshagent.model.source import Diagnostic, Provenance, RawResource, SourceEvent

SOURCE = "kubernetes"
log = structlog.get_logger("meshagent.adapters.kubernetes")

# (group, plural, kind); core and discovery kinds have one version.
CORE_KINDS: tuple[tuple[str, str, str], ...] = (
    ("", "services", "Service"),
    ("discovery.k8s.io", "endpointslices", "EndpointSlice"),
)
_NET = "networking.istio.io"
_SEC = "security.istio.io"
_TEL = "telemetry.istio.io"
TELEMETRY_VERSIONS = ("v1", "v1alpha1")  # Telemetry's own versions (not istio_versions)
ISTIO_KINDS: tuple[tuple[str, str, str], ...] = (
    (_NET, "virtualservices", "VirtualService"),
    (_NET, "destinationrules", "DestinationRule"),
    (_NET, "serviceentries", "ServiceEntry"),
    (_NET, "workloadentries", "WorkloadEntry"),
    (_NET, "workloadgroups", "WorkloadGroup"),
    (_NET, "gateways", "Gateway"),
    (_NET, "sidecars", "Sidecar"),
    (_SEC, "peerauthentications", "PeerAuthentication"),
    (_SEC, "authorizationpolicies", "AuthorizationPolicy"),
    (_SEC, "requestauthentications", "RequestAuthentication"),
    (_TEL, "telemetries", "Telemetry"),
)
ALL_KINDS = tuple(k for _, _, k in (*CORE_KINDS, *ISTIO_KINDS))
# Secrets (credentialName targets) are watched only in KubeOptions.secret_namespaces, and not
# those of types that never hold a credential: as Istio's credentials controller, the large
# and numerous ones (Helm releases, service account tokens) are left on the server.
SECRETS = ("", "secrets", "Secret")
NOT_CREDENTIAL_TYPES = (
    "helm.sh/release.v1",
    "kubernetes.io/service-account-token",
    "kubernetes.io/dockercfg",
    "kubernetes.io/dockerconfigjson",
    "bootstrap.kubernetes.io/token",
    "kubernetes.io/basic-auth",
    "kubernetes.io/ssh-auth",
)
SECRET_FIELD_SELECTOR = ",".join(f"type!={t}" for t in NOT_CREDENTIAL_TYPES)


@dataclass(frozen=True, slots=True)
class KubeOptions:
    """How to reach the API server and what to watch (agent config `sources.kubernetes`)."""

    kubeconfig: Path | None = None
    context: str | None = None
    server: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    kinds: tuple[str, ...] = ALL_KINDS
    secret_namespaces: tuple[str, ...] = ()  # where Secrets are watched (empty: nowhere)
    istio_versions: tuple[str, ...] = ("v1", "v1beta1", "v1alpha3")
    watch_timeout_s: int = 60
    resync_s: float = 0.0
    request_timeout_s: float = 10.0
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0


def api_client(options: KubeOptions) -> Any:
    """A kubernetes.client.ApiClient for options (see the module docstring for the order)."""
    from kubernetes import client, config

    cfg: Any = client.Configuration()
    if options.kubeconfig is not None:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(options.kubeconfig), context=options.context, client_configuration=cfg
        )
    elif options.server is None:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    if options.server is not None:
        cfg.host = options.server.rstrip("/")
    if options.ca_file is not None:
        cfg.ssl_ca_cert = str(options.ca_file)
    if options.insecure_skip_verify:
        cfg.verify_ssl = False
    if options.token_file is not None:
        token = TokenFile(options.token_file)

        def refresh(c: Any) -> None:  # called before every request: rotated tokens apply
            value = token.get()
            if value:
                c.api_key["authorization"] = value
                c.api_key_prefix["authorization"] = "Bearer"

        cfg.refresh_api_key_hook = refresh
        refresh(cfg)
    return client.ApiClient(cfg)


def _versions(group: str, istio_versions: tuple[str, ...]) -> tuple[str, ...]:
    """The versions of a group to try, first served first."""
    if group in ("", "discovery.k8s.io"):
        return ("v1",)
    return TELEMETRY_VERSIONS if group == _TEL else istio_versions


def resource_path(group: str, version: str, plural: str, namespace: str | None) -> str:
    """The API path of a collection (cluster-wide when namespace is None)."""
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def to_raw(obj: dict[str, Any]) -> RawResource:
    """One API object as a RawResource (see the module docstring)."""
    ns, name = obj_key(obj)
    kind = str(obj.get("kind") or "")
    provenance = Provenance(SOURCE, _location(obj), kind, ns, name)
    return RawResource(SOURCE, kind, str(obj.get("apiVersion") or ""), ns, name, obj, provenance)


def _location(obj: dict[str, Any]) -> str:
    return f"resourceVersion {(obj.get('metadata') or {}).get('resourceVersion') or ''}"


def accepted(objs: list[dict[str, Any]]) -> tuple[list[RawResource], list[Diagnostic]]:
    """objs as RawResources, and an error, located and named as the normalizer names its
    own, for each stand-in of an object the stream could not take (kube_watch.screened)."""
    raws, errors = [], []
    for obj in objs:
        if REJECTED not in obj:
            raws.append(to_raw(obj))
            continue
        ns, name = obj_key(obj)
        where, kind = _location(obj), str(obj.get("kind") or "")
        reason = f"{obj[REJECTED]}; its last accepted version (if any) keeps serving"
        errors.append(
            Diagnostic("error", SOURCE, where, kind, f"{ns}/{name}" if ns else name, "", reason)
        )
        log.warning("kubernetes_object_rejected", source=SOURCE, kind=kind, namespace=ns,
                    name=name, error=reason)  # fmt: skip
    return raws, errors


class KubernetesAdapter:
    """Watches one Kubernetes API server; see the module docstring for what it emits."""

    name = SOURCE

    def __init__(self, options: KubeOptions) -> None:
        self.options = options
        self.errors = 0  # failed requests, for tests
        self.streams: list[KubeStream] = []
        self._client: Any = None
        self._queue: asyncio.Queue[SourceEvent] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._synced = False
        self._kinds: dict[str, str] = {}  # stream label -> kind, for deletes
        self._listing_errors: list[Diagnostic] = []  # of the first listing, in its event

    async def __aenter__(self) -> KubernetesAdapter:
        self._client = None  # built by the first listing, so bad credentials are retried
        self._queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._synced = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for stream in self.streams:
            stream.close()
        self.streams = []
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.rest_client.pool_manager.clear()

    async def watch(self) -> AsyncIterator[SourceEvent]:
        """The first full listing (synced), then every change, until the context exits."""
        await self._initial_listing()
        for stream in self.streams:
            threading.Thread(
                target=stream.run, args=(self._thread_error,), name="kube-watch", daemon=True
            ).start()
        while True:
            yield await self._queue.get()

    # -- requests -------------------------------------------------------------------------

    def _request(self, path: str, query: dict[str, str], stream: bool) -> Any:
        """One GET through the client (auth, TLS, pool); the raw urllib3 response."""
        from kubernetes.client.exceptions import ApiException

        read = self.options.watch_timeout_s + 10 if stream else self.options.request_timeout_s
        request = self._client.param_serialize(
            "GET",
            path,
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        result = self._client.call_api(
            *request, _request_timeout=(self.options.request_timeout_s, read)
        )
        if not 200 <= result.status <= 299:
            result.read()
            if result.status == 410:
                raise Gone(str(result.reason))
            raise ApiException.from_response(http_resp=result, body=None, data=None)
        return result.response

    # -- the first listing --------------------------------------------------------------------

    async def _initial_listing(self) -> None:
        """List every stream once (retrying until the server answers), as one synced event."""
        backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        while True:
            try:
                if self._client is None:
                    self._client = api_client(self.options)  # kubeconfig, token, CA files
                upserts = await run_blocking(self._list_all)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                await self._queue_error("initial listing", exc, delay)
                await asyncio.sleep(delay)
        self._synced = True
        errors, self._listing_errors = tuple(self._listing_errors), []
        await self._queue.put(
            SourceEvent(SOURCE, upserts=tuple(upserts), synced=True, errors=errors)
        )

    def _list_all(self) -> list[RawResource]:
        self.streams, upserts, self._listing_errors = [], [], []
        namespaces: tuple[str | None, ...] = self.options.namespaces or (None,)
        for group, plural, kind in (*CORE_KINDS, *ISTIO_KINDS):
            if kind not in self.options.kinds:
                continue
            versions = _versions(group, self.options.istio_versions)
            for ns in namespaces:
                stream, items = self._first_list(group, plural, kind, versions, ns)
                if stream is not None:
                    self.streams.append(stream)
                    upserts += self._accepted(items)
        for ns in self.options.secret_namespaces:
            stream, items = self._first_list(*SECRETS, ("v1",), ns)
            if stream is not None:
                self.streams.append(stream)
                upserts += self._accepted(items)
        return upserts

    def _accepted(self, items: list[dict[str, Any]]) -> list[RawResource]:
        raws, errors = accepted(items)
        self._listing_errors += errors
        return raws

    def _first_list(
        self, group: str, plural: str, kind: str, versions: tuple[str, ...], ns: str | None
    ) -> tuple[KubeStream | None, list[dict[str, Any]]]:
        """The stream of the first version the server serves, with its listing."""
        from kubernetes.client.exceptions import ApiException

        for version in versions:
            label = f"{kind} in {ns or 'all namespaces'}"
            spec = StreamSpec(
                resource_path(group, version, plural, ns),
                label,
                self.options.watch_timeout_s,
                self.options.resync_s,
                (("fieldSelector", SECRET_FIELD_SELECTOR),) if kind == "Secret" else (),
            )
            backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
            stream = KubeStream(spec, self._request, self._emitter(kind), backoff, time.monotonic)
            try:
                items, _ = stream.list_once()
            except ApiException as exc:
                if exc.status == 404:
                    continue  # this version (or the whole CRD) is not served
                if exc.status == 403 and kind == "Secret":
                    self._forbidden_secrets(label)  # the rest of the mesh still syncs
                    return None, []
                raise
            return stream, items
        log.info("kubernetes_kind_not_served", source=SOURCE, kind=kind, versions=versions)
        return None, []

    def _forbidden_secrets(self, label: str) -> None:
        reason = (
            f"{label}: forbidden (RBAC: list and watch secrets); credentialName from "
            "Kubernetes Secrets does not resolve there"
        )
        log.warning("kubernetes_secrets_forbidden", source=SOURCE, error=reason)
        where = f"kubernetes {self.options.server or self.options.kubeconfig or 'in-cluster'}"
        self._listing_errors.append(Diagnostic("error", SOURCE, where, "", "", "", reason))

    # -- events from the stream threads ---------------------------------------------------------

    def _emitter(self, kind: str) -> Any:
        def emit(upserts: list[dict[str, Any]], deletes: list[ObjKey], _: str | None) -> None:
            raws, errors = accepted(upserts)
            event = SourceEvent(
                SOURCE,
                upserts=tuple(raws),
                deletes=tuple((SOURCE, kind, ns, name) for ns, name in deletes),
                errors=tuple(errors),
            )
            self._post(event)

        return emit

    def _post(self, event: SourceEvent) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed on shutdown
                loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def _thread_error(self, label: str, exc: Exception, delay: float) -> None:
        self.errors += 1
        reason = f"{label}: {type(exc).__name__}: {exc}"[:500]
        log.warning(
            "kubernetes_watch_failed", source=SOURCE, error=reason, retry_in_s=round(delay, 3)
        )
        where = f"kubernetes {self.options.server or self.options.kubeconfig or 'in-cluster'}"
        error = Diagnostic("error", SOURCE, where, "", "", "", reason)
        self._post(SourceEvent(SOURCE, synced=self._synced, errors=(error,)))

    async def _queue_error(self, what: str, exc: Exception, delay: float) -> None:
        self._thread_error(what, exc, delay)
