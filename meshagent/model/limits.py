"""Limits the data plane enforces, shared by validation (normalize) and the Envoy bootstrap
(xds), so that configuration that validates is configuration Envoy accepts.
"""

from __future__ import annotations

# Envoy's runtime key re2.max_program_size.error_level: a regex whose compiled RE2 program is
# larger is rejected (Envoy's default is 100). The bootstrap sets it as Istio's does.
RE2_MAX_PROGRAM_SIZE = 32768

# google.protobuf.Duration: seconds within +-315,576,000,000 (10,000 years).
MAX_DURATION_SECONDS = 315_576_000_000
