"""Errors of the xDS protocol, split the h11 way: who broke the protocol, us or the proxy."""

from __future__ import annotations

from meshagent.errors import MeshAgentError


class XdsProtocolError(MeshAgentError):
    """A violation of the xDS protocol on one stream."""


class LocalProtocolError(XdsProtocolError):
    """This side tried something the protocol (or the stream's state) does not allow: a bug."""


class RemoteProtocolError(XdsProtocolError):
    """The proxy sent a request the protocol does not allow.

    The gRPC shell ends the stream with INVALID_ARGUMENT and this message; the server keeps
    serving every other stream.
    """
