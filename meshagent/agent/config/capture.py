"""The `capture` and `outbound_traffic_policy` keys of the agent config: transparent mode.

`capture: {enabled: true, outbound_port: 15001, inbound_port: 15006}` says that netfilter
rules (`meshagent capture apply`) redirect this host's traffic to Envoy, so the agent serves
Istio's virtualOutbound and virtualInbound listeners instead of per-port loopback listeners.
`outbound_traffic_policy: {mode: ALLOW_ANY | REGISTRY_ONLY}` is Istio's meshConfig key of the
same name: whether destinations outside the registry pass through or are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshagent.agent.config.section import Section
from meshagent.model.proxy import ALLOW_ANY, OUTBOUND_TRAFFIC_POLICIES

VIRTUAL_OUTBOUND_PORT = 15001  # Istio's
VIRTUAL_INBOUND_PORT = 15006


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """Whether traffic reaches Envoy by capture, and on which ports."""

    enabled: bool = False
    outbound_port: int = VIRTUAL_OUTBOUND_PORT
    inbound_port: int = VIRTUAL_INBOUND_PORT


def parse_capture(s: Section) -> CaptureConfig:
    """`capture:`; the two ports must differ."""
    s.only("enabled", "outbound_port", "inbound_port")
    config = CaptureConfig(
        enabled=s.get("enabled", bool, False),
        outbound_port=s.port("outbound_port", VIRTUAL_OUTBOUND_PORT, zero_ok=False),
        inbound_port=s.port("inbound_port", VIRTUAL_INBOUND_PORT, zero_ok=False),
    )
    if config.outbound_port == config.inbound_port:
        raise s.error("must differ from outbound_port", "inbound_port")
    return config


def parse_outbound_traffic_policy(s: Section) -> str:
    """`outbound_traffic_policy.mode`: ALLOW_ANY (the default, as Istio's) or REGISTRY_ONLY."""
    s.only("mode")
    mode = s.get("mode", str, ALLOW_ANY).upper()
    if mode not in OUTBOUND_TRAFFIC_POLICIES:
        raise s.error(f"must be one of: {', '.join(OUTBOUND_TRAFFIC_POLICIES)}", "mode")
    return mode
