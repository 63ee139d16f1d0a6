"""How Consul's catalog maps onto the mesh model (agent config `sources.consul`)."""

from __future__ import annotations

from dataclasses import dataclass

TAG_LABEL_PREFIX = "tag."


@dataclass(frozen=True, slots=True)
class ConsulMapping:
    """Choices the normalizer makes for Consul resources.

    host_pattern: the mesh host of a Consul service; `{name}`, `{namespace}`, `{datacenter}`
    and `{partition}` are filled in ("{name}.service.consul" by default, or e.g.
    "{name}.{namespace}.svc.cluster.local").
    network: which TaggedAddresses entry gives an endpoint's address ("lan", "wan"), or ""
    for Service.Address (falling back to Node.Address).
    default_protocol: the port protocol when Service.Meta has no `protocol`.
    include_warning: serve instances whose checks warn, with their Weights.Warning.
    precedence: "consul" or "files": which source wins when both define the same host.
    service_port: the port every Consul service is reached on through the mesh (0: the lowest
    port of its instances); each endpoint keeps its own port.
    remote_host_pattern: the mesh host of a service in another datacenter (a failover or
    redirect target), "{name}.service.{datacenter}.consul" by default, like Consul's DNS.
    datacenter: the watched (local) datacenter, "" when not configured.
    terminating_gateway_port: the port a terminating gateway listens on for the mesh (Consul
    takes it from the gateway service's registration).
    gateway_bind: the address a Consul gateway's listeners bind ("" = all addresses).
    """

    host_pattern: str = "{name}.service.consul"
    network: str = ""
    default_protocol: str = "http"
    include_warning: bool = False
    precedence: str = "files"
    service_port: int = 0
    datacenter: str = ""
    remote_host_pattern: str = "{name}.service.{datacenter}.consul"
    terminating_gateway_port: int = 8443
    gateway_bind: str = ""

    def host(
        self,
        name: str,
        namespace: str = "default",
        datacenter: str = "",
        partition: str = "default",
    ) -> str:
        """The mesh host of Consul service name."""
        return self.host_pattern.format(
            name=name,
            namespace=namespace or "default",
            datacenter=datacenter or self.datacenter,
            partition=partition or "default",
        )

    def remote_host(self, name: str, namespace: str, datacenter: str) -> str:
        """The mesh host of Consul service name in another datacenter."""
        return self.remote_host_pattern.format(
            name=name, namespace=namespace or "default", datacenter=datacenter, partition="default"
        )
