"""Multi-network with real Envoys: host A (the VM, network vm-net) reaches B's pod on pod-net
only through an east-west gateway, a third Envoy routing by SNI to B: TLS is not terminated
there, so A's mTLS reaches B's inbound listener intact. First with a static Envoy config (an
AUTO_PASSTHROUGH stand-in), then with a meshagent router serving Istio's east-west Gateway
(`tls.mode: AUTO_PASSTHROUGH`, SNI `outbound_.<port>_.<subset>_.<host>`)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.envoy_helpers import EnvoyProcess
from tests.integration.mesh_harness import mesh_harness, wait_until
from tests.integration.mtls_hosts import B_ADDRESS, ECHO, envoy_available, meshagent, workload
from tests.net_helpers import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not envoy_available(), reason="no Envoy binary"),
]
SNI = f"outbound_.8080_._.{ECHO}"
UNREACHABLE = "127.0.0.9"  # the pod's own address: nothing listens there on this host


def gateway_bootstrap(port: int, pod_port: int) -> dict[str, Any]:
    """An Envoy that forwards TLS by SNI, untouched, to B's inbound listener."""
    tcp_proxy = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "eastwest",
        "cluster": "pod",
    }
    inspector = (
        "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
    )
    pod = {"socket_address": {"address": B_ADDRESS, "port_value": pod_port}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "eastwest",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "listener_filters": [
                        {"name": "tls_inspector", "typed_config": {"@type": inspector}}
                    ],
                    "filter_chains": [
                        {
                            "filter_chain_match": {"server_names": [SNI]},
                            "filters": [{"name": "tcp_proxy", "typed_config": tcp_proxy}],
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "pod",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "pod",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": pod}}]}],
                    },
                }
            ],
        },
    }


def remote_entry(inbound_port: int) -> str:
    """The echo ServiceEntry as A sees it: its endpoint on pod-net, at an address A cannot reach."""
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: echo, namespace: default}\n"
        f"spec:\n  hosts: [{ECHO}]\n"
        "  ports: [{number: 8080, name: http, protocol: HTTP}]\n"
        "  resolution: STATIC\n  location: MESH_INTERNAL\n"
        f"  endpoints:\n  - {{address: {UNREACHABLE}, network: pod-net,"
        f" ports: {{http: {inbound_port}}}, serviceAccount: echo}}\n"
    )


def test_pods_on_another_network_are_reached_through_the_gateway(tmp_path: Path) -> None:
    # given: one mesh CA; B's pod behind its inbound listener; the east-west gateway; A on
    # vm-net that knows pod-net's gateway (and never had a direct path to B)
    ca = {"mode": "self-signed", "dir": str(tmp_path / "ca")}
    meshagent("ca", "init", "--dir", ca["dir"])
    inbound_port, port = free_port(B_ADDRESS), free_port("127.0.0.1")
    networks = {"pod-net": {"gateways": [{"address": "127.0.0.1", "port": port}]}}
    with (
        EnvoyProcess(gateway_bootstrap(port, inbound_port), tmp_path) as gateway,
        mesh_harness(
            tmp_path / "a",
            node_id="host-a",
            ca=ca,
            workloads=[workload("client")],
            network="vm-net",
            networks=networks,
        ) as a,
        mesh_harness(tmp_path / "b", node_id="host-b", ca=ca, inbound={"address": B_ADDRESS}) as b,
    ):
        app = b.start_app("echo", "echo", "v1")
        b.configure(workloads=[workload("echo", inbound_port, app.port)])
        a.configure(outbound={"ports": {8080: a.outbound_port}})
        a.apply(remote_entry(inbound_port))
        for h in (b, a):
            h.start_agent()
            h.start_envoy()
        # when: A's application calls echo
        wait_until(lambda: a.request(ECHO).status == 200, what="request via gateway", timeout=30)
        # then: A's Envoy has only the gateway as echo's endpoint, and traffic went through it
        clusters = a.envoy_admin("/clusters").body.decode()
        assert f"127.0.0.1:{port}" in clusters and UNREACHABLE not in clusters
        for _ in range(5):
            reply = a.request(ECHO)
            assert reply.status == 200, reply.body
        stats = gateway.admin_get("/stats?filter=eastwest.downstream_cx_total").body
        assert int(stats.strip().rpartition(": ")[2]) >= 1, stats


EAST_WEST_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: cross-network-gateway, namespace: istio-system}}
spec:
  selector: {{istio: eastwestgateway}}
  servers:
  - port: {{number: {port}, name: tls, protocol: TLS}}
    bind: 127.0.0.1
    hosts: ["*.local"]
    tls: {{mode: AUTO_PASSTHROUGH}}
"""


def local_entry(inbound_port: int) -> str:
    """The echo ServiceEntry as the east-west gateway (on pod-net) sees it: B's inbound."""
    return remote_entry(inbound_port).replace(UNREACHABLE, B_ADDRESS)


def test_a_meshagent_router_is_the_east_west_gateway_with_auto_passthrough(
    tmp_path: Path,
) -> None:
    # given: as above, but the east-west gateway is a meshagent router on pod-net that
    # serves Istio's cross-network Gateway (AUTO_PASSTHROUGH on *.local); it has no
    # certificate: it never terminates the mTLS it forwards
    ca = {"mode": "self-signed", "dir": str(tmp_path / "ca")}
    meshagent("ca", "init", "--dir", ca["dir"])
    inbound_port, port = free_port(B_ADDRESS), free_port("127.0.0.1")
    networks = {"pod-net": {"gateways": [{"address": "127.0.0.1", "port": port}]}}
    router = {
        "id": "eastwest",
        "cluster": "meshagent",
        "namespace": "istio-system",
        "type": "router",
        "labels": {"istio": "eastwestgateway"},
    }
    with (
        mesh_harness(tmp_path / "gw", node_id="eastwest", node=router, network="pod-net") as gw,
        mesh_harness(
            tmp_path / "a",
            node_id="host-a",
            ca=ca,
            workloads=[workload("client")],
            network="vm-net",
            networks=networks,
        ) as a,
        mesh_harness(tmp_path / "b", node_id="host-b", ca=ca, inbound={"address": B_ADDRESS}) as b,
    ):
        app = b.start_app("echo", "echo", "v1")
        b.configure(workloads=[workload("echo", inbound_port, app.port)])
        a.configure(outbound={"ports": {8080: a.outbound_port}})
        a.apply(remote_entry(inbound_port))
        gw.apply(local_entry(inbound_port) + "---\n" + EAST_WEST_GATEWAY.format(port=port))
        for h in (gw, b, a):
            h.start_agent()
            h.start_envoy()
        # when: A's application calls echo
        wait_until(lambda: a.request(ECHO).status == 200, what="request via router", timeout=30)
        # then: the router matched A's SNI and forwarded to its SNI-DNAT cluster
        for _ in range(3):
            reply = a.request(ECHO)
            assert reply.status == 200, reply.body
        stats = gw.envoy_admin(f"/stats?filter=cluster.{SNI}.upstream_cx_total").body.decode()
        assert int(stats.strip().rpartition(": ")[2]) >= 1, stats
        listeners = gw.envoy_admin("/listeners").body.decode()
        assert f"127.0.0.1_{port}" in listeners
        # and a TLS client that is not the mesh (no Istio ALPN) matches no chain there
        assert _plain_tls_refused(port, SNI)


def _plain_tls_refused(port: int, sni: str) -> bool:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=sni),
        ):
            return False
    except (ssl.SSLError, OSError):
        return True
