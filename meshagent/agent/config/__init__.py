"""The agent's configuration file: `load_config(path)` gives an `AgentConfig`.

The package has one module per section of the file and one helper every section reads with:

    section.py    Section (a mapping with located errors) and the shared checks: durations,
                  ports, addresses, names, paths; imports nothing of this package
    core.py       AgentConfig, load_config/parse_config, the agent's own keys (node, sources,
                  xds, admin, outbound, log, workloads, inbound) and `join` applied
    ca.py  capture.py  dns.py  envoy.py  metrics.py  network.py  telemetry.py  authz.py
    consul.py  kube.py  join.py          the other sections, each from section.py only

Imports go one way: section.py <- the section modules <- core.py <- this module. A section's
own types are imported from its module (`meshagent.agent.config.dns.DnsConfig`); what the rest
of meshagent uses of the whole file is re-exported here.
"""

from __future__ import annotations

from meshagent.agent.config.core import (
    LOG_FORMATS,
    LOG_LEVELS,
    AdminConfig,
    AgentConfig,
    CredentialsSourceConfig,
    FilesSourceConfig,
    LogConfig,
    NodeConfig,
    OutboundConfig,
    SourcesConfig,
    XdsConfig,
    apply_join,
    default_config,
    join_from_dir,
    load_config,
    parse_config,
)

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "AdminConfig",
    "AgentConfig",
    "CredentialsSourceConfig",
    "FilesSourceConfig",
    "LogConfig",
    "NodeConfig",
    "OutboundConfig",
    "SourcesConfig",
    "XdsConfig",
    "apply_join",
    "default_config",
    "join_from_dir",
    "load_config",
    "parse_config",
]
