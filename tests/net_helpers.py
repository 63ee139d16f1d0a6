"""Loopback networking for tests: free ports and plain HTTP GETs (meshagent/testing/loopback.py,
shared with the harness there and the benchmarks)."""

from meshagent.testing.loopback import HttpReply, free_port, http_get

__all__ = ["HttpReply", "free_port", "http_get"]
