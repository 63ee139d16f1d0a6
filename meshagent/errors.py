"""The error hierarchy: bad input is a ConfigError (one line for users); anything else a bug."""

from __future__ import annotations


class MeshAgentError(Exception):
    """Base of every error meshagent raises on purpose."""


class ConfigError(MeshAgentError):
    """Bad input from a user or a platform; carries where it came from.

    `location` is "file:line" (or another source-specific place), `field` a dotted path.
    """

    def __init__(self, reason: str, *, location: str = "", field: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.location = location
        self.field = field

    def __str__(self) -> str:
        parts = [p for p in (self.location, self.field) if p]
        return ": ".join([*parts, self.reason])
