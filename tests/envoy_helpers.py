"""A real Envoy process for tests (meshagent/testing/envoy_process.py, shared with the harness
there and the benchmarks): the one way tests start an Envoy of their own.

    with EnvoyProcess(bootstrap, tmp_path) as envoy:
        envoy.wait_live()
        envoy.config_dump()
"""

from meshagent.testing.envoy_process import (
    EnvoyProcess,
    envoy_binary,
    kill_managed_envoy,
    validate_bootstrap,
)

__all__ = ["EnvoyProcess", "envoy_binary", "kill_managed_envoy", "validate_bootstrap"]
