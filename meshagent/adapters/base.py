"""The Adapter protocol: how a platform's configuration reaches the normalizer.

An adapter is an async context manager. Inside the context, `watch()` yields SourceEvent
batches: the first full listing (with `synced=True`), then every change. Leaving the context
stops the watch; an adapter owns no state that outlives it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Protocol, runtime_checkable

from meshagent.model.source import SourceEvent


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
