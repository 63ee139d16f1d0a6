"""Client Status Discovery Service: what the agent serves each proxy, and whether it took it.

`client_status` is pure (cache in, ClientStatusResponse out); the servicer is a thin shell
registered on the ADS server. Status is known per type URL, not per resource, so every resource
of a type reports its type's state: SYNCED when the type's last response was ACKed, ERROR
when it was NACKed, STALE while it awaits an answer, NOT_SENT before anything was sent.
Resource contents are redacted (meshagent.xds.redact): CSDS never shows a private key.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from meshagent.xds.cache import SnapshotCache
from meshagent.xds.redact import redacted_any
from meshagent.xds.status import TypeStatus


def client_status(cache: SnapshotCache, request: Any) -> Any:
    """A ClientStatusResponse for the nodes the request's node_matchers select (all if none)."""
    response = csds_pb2.ClientStatusResponse()
    for node_id in cache.nodes():
        if _selected(node_id, request):
            _add_client(cache, node_id, response.config.add(), request.exclude_resource_contents)
    return response


def _selected(node_id: str, request: Any) -> bool:
    # Only node id matchers (exact or prefix) are supported; metadata matchers match nothing.
    matchers = list(request.node_matchers)
    if not matchers:
        return True
    for matcher in matchers:
        wanted = matcher.node_id
        if wanted.exact and wanted.exact == node_id:
            return True
        if wanted.prefix and node_id.startswith(wanted.prefix):
            return True
    return False


def _add_client(cache: SnapshotCache, node_id: str, config: Any, exclude_contents: bool) -> None:
    config.node.CopyFrom(base_pb2.Node(id=node_id))
    status = cache.status(node_id)
    _, resources = cache.get(node_id)
    for type_url in sorted(resources.by_type):
        state = _config_status(status.of(type_url))
        for name, resource in sorted(resources.of(type_url).items()):
            entry = config.generic_xds_configs.add(
                type_url=type_url, name=name, version_info=resource.version, config_status=state
            )
            if not exclude_contents:
                entry.xds_config.CopyFrom(redacted_any(resource.body))


def _config_status(status: TypeStatus) -> int:
    if status.last_sent_version is None:
        return int(csds_pb2.NOT_SENT)
    if status.acked:
        return int(csds_pb2.SYNCED)
    if status.last_nack_version == status.last_sent_version:
        return int(csds_pb2.ERROR)
    return int(csds_pb2.STALE)


class CsdsServicer(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    """FetchClientStatus over the cache; StreamClientStatus answers each request in turn."""

    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache

    async def FetchClientStatus(self, request: Any, context: Any) -> Any:
        """One status snapshot."""
        return client_status(self._cache, request)

    async def StreamClientStatus(self, request_iterator: Any, context: Any) -> Any:
        """A status snapshot per request on the stream."""
        async for request in request_iterator:
            yield client_status(self._cache, request)
