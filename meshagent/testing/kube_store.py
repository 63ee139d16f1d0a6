"""The object store behind the Kubernetes API simulator (kube_sim): kinds, versions, history.

One global resourceVersion counter (as etcd's revision), bumped by every write. Every write
is also appended to a history of (resourceVersion, type, object) that watches replay from;
`compact()` drops history, after which a watch that starts below the compacted revision gets
410 Gone, as from a real API server. Thread-safe: a lock guards everything, and a condition
wakes watchers.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshagent.adapters import deepjson


@dataclass(frozen=True, slots=True)
class KindInfo:
    """One resource type the simulator serves."""

    group: str  # "" for the core group
    versions: tuple[str, ...]
    kind: str
    plural: str
    namespaced: bool = True


def plural_of(kind: str) -> str:
    """The resource name of kind, as the CRDs spell it (WorkloadEntry -> workloadentries)."""
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "o", "u"):
        return lower[:-1] + "ies"
    return lower + "s"


ISTIO_NET_VERSIONS = ("v1", "v1beta1", "v1alpha3")
ISTIO_SEC_VERSIONS = ("v1", "v1beta1")

KINDS: tuple[KindInfo, ...] = (
    KindInfo("", ("v1",), "Service", "services"),
    KindInfo("", ("v1",), "Namespace", "namespaces", namespaced=False),
    KindInfo("", ("v1",), "Node", "nodes", namespaced=False),
    KindInfo("", ("v1",), "ConfigMap", "configmaps"),
    KindInfo("", ("v1",), "ServiceAccount", "serviceaccounts"),
    KindInfo("", ("v1",), "Secret", "secrets"),
    KindInfo("discovery.k8s.io", ("v1",), "EndpointSlice", "endpointslices"),
    *(
        KindInfo("networking.istio.io", ISTIO_NET_VERSIONS, k, plural_of(k))
        for k in (
            "VirtualService",
            "DestinationRule",
            "ServiceEntry",
            "WorkloadEntry",
            "WorkloadGroup",
            "Gateway",
            "Sidecar",
        )
    ),
    *(
        KindInfo("security.istio.io", ISTIO_SEC_VERSIONS, k, plural_of(k))
        for k in ("PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication")
    ),
    KindInfo("telemetry.istio.io", ("v1", "v1alpha1"), "Telemetry", "telemetries"),
)
BY_PLURAL: dict[tuple[str, str], KindInfo] = {(k.group, k.plural): k for k in KINDS}
BY_KIND: dict[str, KindInfo] = {k.kind: k for k in KINDS}


class ApiError(Exception):
    """An API failure answered as a metav1.Status (code, reason, message)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        """The metav1.Status body."""
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


# Field selectors the API server supports (for every kind: metadata.name and, namespaced,
# metadata.namespace; a few kinds add their own). All are immutable for these kinds, so a
# watch filters each event by its object, as the API server's answer would be.
KIND_FIELDS: dict[str, tuple[str, ...]] = {"Secret": ("type",)}
Selector = Callable[[Mapping[str, Any]], bool]


def field_selector(info: KindInfo, text: str) -> Selector:
    """A predicate for `fieldSelector` text (`a=b,c!=d`, also `==`); 400 for a field the
    API server does not index for this kind."""
    terms: list[tuple[str, bool, str]] = []
    for term in (t for t in text.split(",") if t):
        key, op, value = _split_term(term)
        if key not in ("metadata.name", "metadata.namespace", *KIND_FIELDS.get(info.kind, ())):
            raise ApiError(400, "BadRequest", f"field label not supported: {key}")
        terms.append((key, op == "!=", value))

    def matches(obj: Mapping[str, Any]) -> bool:
        return all((_field(obj, key) == value) != negate for key, negate, value in terms)

    return matches


def _split_term(term: str) -> tuple[str, str, str]:
    for op in ("!=", "==", "="):
        key, found, value = term.partition(op)
        if found:
            return key.strip(), op, value.strip()
    raise ApiError(400, "BadRequest", f"invalid field selector term {term!r}")


def _field(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


def kind_of(ref: str) -> KindInfo:
    """The KindInfo for "Kind", "group/version/Kind" or "plural"; KeyError when unknown."""
    name = ref.rsplit("/", 1)[-1]
    if name in BY_KIND:
        return BY_KIND[name]
    for info in KINDS:
        if info.plural == name:
            return info
    raise KeyError(ref)


Key = tuple[str, str, str]  # (kind, namespace, name)
History = list[tuple[int, str, dict[str, Any]]]  # (resourceVersion, event type, object)


class KubeStore:
    """Objects by (kind, namespace, name), with a global resourceVersion and a history."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.revision = 1
        self.compacted = 0  # watches from a revision below this get 410 Gone
        self.objects: dict[Key, dict[str, Any]] = {}
        self.history: list[tuple[int, str, dict[str, Any]]] = []

    def _write(self, event: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Record one write under the lock; the stored object (a copy goes to history)."""
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self.history.append((self.revision, event, deepjson.copy(obj)))
        self.lock.notify_all()
        return deepjson.copy(obj)

    def create(self, info: KindInfo, ns: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store a new object (409 AlreadyExists when the name is taken)."""
        body = _prepared(info, ns, obj)
        key = (info.kind, body["metadata"].get("namespace", ""), body["metadata"]["name"])
        with self.lock:
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{info.plural} "{key[2]}" already exists')
            meta = body["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            meta["generation"] = 1
            self.objects[key] = body
            return self._write("ADDED", body)

    def update(
        self, info: KindInfo, ns: str, obj: Mapping[str, Any], *, check_version: bool = True
    ) -> dict[str, Any]:
        """Replace an object (404 when missing, 409 Conflict on a stale resourceVersion)."""
        body = _prepared(info, ns, obj)
        key = (info.kind, body["metadata"].get("namespace", ""), body["metadata"]["name"])
        with self.lock:
            old = self.objects.get(key)
            if old is None:
                raise ApiError(404, "NotFound", f'{info.plural} "{key[2]}" not found')
            want = body["metadata"].get("resourceVersion")
            if check_version and want and want != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {info.plural} "{key[2]}": the object has '
                    "been modified; please apply your changes to the latest version and try again",
                )
            if info.kind == "Secret" and body.get("type") != old.get("type"):
                raise ApiError(422, "Invalid", f'Secret "{key[2]}": type: field is immutable')
            meta, old_meta = body["metadata"], old["metadata"]
            for field in ("uid", "creationTimestamp"):
                meta[field] = old_meta[field]
            spec_changed = _text(body.get("spec")) != _text(old.get("spec"))
            meta["generation"] = old_meta.get("generation", 1) + (1 if spec_changed else 0)
            self.objects[key] = body
            return self._write("MODIFIED", body)

    def apply(self, info: KindInfo, ns: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace (no version check): the test-side "kubectl apply"."""
        name = str((obj.get("metadata") or {}).get("name") or "")
        namespace = (obj.get("metadata") or {}).get("namespace") or ns
        with self.lock:
            exists = (info.kind, namespace if info.namespaced else "", name) in self.objects
            if exists:
                return self.update(info, ns, obj, check_version=False)
            return self.create(info, ns, obj)

    def delete(self, info: KindInfo, ns: str, name: str) -> dict[str, Any]:
        """Remove an object (404 when missing); the last state, with a new resourceVersion."""
        key = (info.kind, ns if info.namespaced else "", name)
        with self.lock:
            old = self.objects.pop(key, None)
            if old is None:
                raise ApiError(404, "NotFound", f'{info.plural} "{name}" not found')
            return self._write("DELETED", old)

    def get(self, info: KindInfo, ns: str, name: str) -> dict[str, Any]:
        """One object (404 when missing)."""
        with self.lock:
            found = self.objects.get((info.kind, ns if info.namespaced else "", name))
            if found is None:
                raise ApiError(404, "NotFound", f'{info.plural} "{name}" not found')
            return deepjson.copy(found)

    def list(self, info: KindInfo, ns: str | None) -> tuple[list[dict[str, Any]], int]:
        """Objects of info (in ns, or all when None), sorted, and the list's resourceVersion."""
        with self.lock:
            items = [
                deepjson.copy(o)
                for (kind, o_ns, _), o in sorted(self.objects.items())
                if kind == info.kind and (ns is None or o_ns == ns)
            ]
            return items, self.revision

    def compact(self) -> int:
        """Forget all history up to now: older watches get 410 Gone. The compacted revision."""
        with self.lock:
            self.revision += 1  # so that the current list revision is itself too old
            self.compacted = self.revision
            self.history.clear()
            self.lock.notify_all()
            return self.compacted

    def events_after(self, info: KindInfo, ns: str | None, since: int) -> History:
        """History entries of info (in ns) after revision since; caller holds the lock."""
        return [
            (rev, ev, deepjson.copy(obj))
            for rev, ev, obj in self.history
            if rev > since
            and obj.get("kind") == info.kind
            and (ns is None or obj["metadata"].get("namespace", "") == ns)
        ]


def _text(value: Any) -> str:
    """value as canonical JSON, for comparing objects of any depth (== recurses)."""
    return deepjson.dumps(value, sort_keys=True)


def _prepared(info: KindInfo, ns: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of obj with kind, apiVersion and metadata.namespace filled in and checked."""
    body = deepjson.copy(dict(obj))
    meta = body.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ApiError(422, "Invalid", f"{info.kind}: metadata.name: Required value")
    body["kind"] = info.kind
    version = str(body.get("apiVersion") or "").rpartition("/")[2] or info.versions[0]
    if version not in info.versions:
        version = info.versions[0]
    body["apiVersion"] = f"{info.group}/{version}" if info.group else version
    if info.kind == "Secret":
        _secret(body)
    if info.namespaced:
        meta_ns = meta.get("namespace") or ns or "default"
        if ns and meta_ns != ns:
            raise ApiError(
                400, "BadRequest", "the namespace of the object does not match the request"
            )
        meta["namespace"] = meta_ns
    else:
        meta.pop("namespace", None)
    return body


TLS_SECRET_KEYS = ("tls.crt", "tls.key")


def _secret(body: dict[str, Any]) -> None:
    """A Secret as the API server stores it: `stringData` merged into `data` (base64) and
    never returned, `type` Opaque by default, a kubernetes.io/tls Secret with its two keys."""
    data = body.get("data") or {}
    if not isinstance(data, dict):
        raise ApiError(400, "BadRequest", "Secret: data must be a map")
    for key, value in data.items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "BadRequest", f"Secret: data[{key}]: illegal base64") from None
    for key, value in (body.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    body["data"] = data
    body["type"] = body.get("type") or "Opaque"
    if body["type"] == "kubernetes.io/tls":
        missing = [k for k in TLS_SECRET_KEYS if k not in data]
        if missing:
            raise ApiError(422, "Invalid", f"Secret: data[{missing[0]}]: Required value")
