"""The `network` and `networks` keys of the agent config (Istio's meshNetworks, for a VM).

`network` is this host's network (default: ISTIO_META_NETWORK from the join directory);
`networks: {<name>: {gateways: [{address: IP, port: 15443}]}}` names each network's east-west
gateways. Endpoints on a network other than ours are reached through its gateways.
"""

from __future__ import annotations

from meshagent.agent.config.section import Section, ip

NetworkGateways = tuple[tuple[str, tuple[tuple[str, int], ...]], ...]
DEFAULT_GATEWAY_PORT = 15443


def parse_networks(s: Section) -> NetworkGateways:
    """`networks:` as ((network, ((address, port), ...)), ...), sorted by network name."""
    out = []
    for name in sorted(s.data):
        if not isinstance(name, str) or not name:
            raise s.error("network names must be non-empty strings", str(name))
        net = s.section(name)
        net.only("gateways")
        gateways = net.get("gateways", list, [])
        out.append((name, tuple(_gateway(net, i, g) for i, g in enumerate(gateways))))
    return tuple(out)


def _gateway(net: Section, index: int, item: object) -> tuple[str, int]:
    g = net.child(f"gateways[{index}]", item)
    g.only("address", "port")
    address = ip(g, "address", g.get("address", str, ""))
    return address, g.port("port", DEFAULT_GATEWAY_PORT, zero_ok=False)
