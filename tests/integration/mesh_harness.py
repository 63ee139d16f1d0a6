"""End-to-end harness: demo apps + `meshagent run` (a real subprocess) + a real Envoy.

The harness is meshagent/testing/mesh_harness.py (the benchmarks use it too); the integration
tests import it from here. Waits go through tests/polling.py's helper (wait_until here).
"""

from meshagent.testing.envoy_process import envoy_binary
from meshagent.testing.mesh_harness import (
    MESHAGENT,
    REPO,
    MeshHarness,
    Reply,
    count_served_by,
    healthy_ports,
    http_request,
    mesh_harness,
    urlopen_json,
    wait_for_ports,
    wait_until,
)

__all__ = [
    "MESHAGENT",
    "REPO",
    "MeshHarness",
    "Reply",
    "count_served_by",
    "envoy_binary",
    "healthy_ports",
    "http_request",
    "mesh_harness",
    "urlopen_json",
    "wait_for_ports",
    "wait_until",
]
