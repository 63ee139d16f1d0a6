"""The Adapter protocol: how a platform's configuration reaches the normalizer.

An adapter is an async context manager. Inside the context, `watch()` yields SourceEvent
batches: the first full listing (with `synced=True`), then every change. Leaving the context
stops the watch; an adapter owns no state that outlives it. An adapter that cannot see part of
its configuration says so in SourceEvent.unavailable and emits no deletes for that part.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Protocol, runtime_checkable

from meshagent.model.source import RawResource, SourceEvent


@runtime_checkable
class Adapter(Protocol):
    """A source of RawResource upserts and deletes, e.g. files, Consul, Kubernetes."""

    name: str

    async def __aenter__(self) -> Adapter: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def watch(self) -> AsyncIterator[SourceEvent]:
        """Batches of changes until the context exits; the iterator then ends."""
        ...


@runtime_checkable
class Restorable(Protocol):
    """An adapter that can start from what it served before (the agent's persisted last good):
    a document it cannot read on its first listing serves that instead of vanishing."""

    def restore(self, resources: Iterable[RawResource]) -> None:
        """Called once, before watch(), with this source's resources as last accepted."""
        ...
