"""The state-of-the-world ADS protocol, driven without sockets."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from meshagent.xds.errors import RemoteProtocolError
from meshagent.xds.protocol import Acked, Nacked
from meshagent.xds.resources import ResourceSet
from meshagent.xds.sotw import SotwStream, content_version
from meshagent.xds.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.xds_builders import cla, eds_cluster, http_listener, resource_set, route_config

NODE = base_pb2.Node(id="vm-1", cluster="web")


def request(type_url: str, names: tuple[str, ...] = (), **kw: object) -> DiscoveryRequest:
    return DiscoveryRequest(type_url=type_url, resource_names=list(names), **kw)


def ack(response: DiscoveryResponse, names: tuple[str, ...] = ()) -> DiscoveryRequest:
    return request(
        response.type_url, names, version_info=response.version_info, response_nonce=response.nonce
    )


def nack(response: DiscoveryResponse, names: tuple[str, ...] = ()) -> DiscoveryRequest:
    req = request(response.type_url, names, response_nonce=response.nonce)
    req.error_detail.code = 3
    req.error_detail.message = "rejected"
    return req


def names(response: DiscoveryResponse) -> list[str]:
    if response.type_url == ENDPOINT:
        message: object = endpoint_pb2.ClusterLoadAssignment
        key = "cluster_name"
    else:
        message, key = cluster_pb2.Cluster, "name"
    out = []
    for packed in response.resources:
        if response.type_url in (CLUSTER, ENDPOINT):
            decoded = message()  # type: ignore[operator]
            packed.Unpack(decoded)
            out.append(getattr(decoded, key))
        else:
            out.append(packed.type_url)
    return out


SNAP1 = resource_set(
    clusters=[eds_cluster("a"), eds_cluster("b")],
    endpoints=[cla("a", 1), cla("b", 2)],
    listeners=[http_listener("l", 80, "r")],
    routes=[route_config("r", upstream="a")],
)


def with_clusters(*clusters: str, timeout_ms: int = 1000, route_body: str = "") -> ResourceSet:
    return resource_set(
        clusters=[eds_cluster(c, timeout_ms=timeout_ms) for c in clusters],
        endpoints=[cla("a", 1), cla("b", 2)],
        listeners=[http_listener("l", 80, "r")],
        routes=[route_config("r", upstream="a", **({"body": route_body} if route_body else {}))],
    )


def connected(eds: tuple[str, ...] = ()) -> SotwStream:
    """CDS (wildcard) requested and ACKed on SNAP1; EDS requested for `eds` and ACKed."""
    stream = SotwStream()
    assert stream.on_request(request(CLUSTER, node=NODE)) == []
    [cds] = stream.on_snapshot(1, SNAP1)
    assert stream.on_request(ack(cds)) == []
    if eds:
        [response] = stream.on_request(request(ENDPOINT, eds))
        assert stream.on_request(ack(response, eds)) == []
    return stream


def test_wildcard_cds_gets_every_cluster_with_a_content_version() -> None:
    stream = SotwStream()
    stream.on_request(request(CLUSTER, node=NODE))
    [cds] = stream.on_snapshot(1, SNAP1)
    assert names(cds) == ["a", "b"]
    assert cds.version_info == content_version(SNAP1.of(CLUSTER))
    assert stream.is_wildcard(CLUSTER)


def test_eds_is_by_requested_name_and_an_ack_settles_it() -> None:
    stream = connected()
    [eds] = stream.on_request(request(ENDPOINT, ("b",)))
    assert names(eds) == ["b"]
    assert not stream.is_wildcard(ENDPOINT)
    assert stream.on_request(ack(eds, ("b",))) == []
    assert Acked(ENDPOINT, eds.version_info, eds.nonce) in stream.take_events()
    assert stream.in_flight == {}


def test_unchanged_content_is_not_resent() -> None:
    stream = connected(eds=("a", "b"))
    assert stream.on_snapshot(2, SNAP1) == []


def test_an_endpoint_change_sends_only_the_changed_cla() -> None:
    """EDS is by name: one changed ClusterLoadAssignment goes alone (not every cluster's, which
    at 40k clusters Envoy would decode and compare one by one), versioned as the whole set;
    CDS, LDS and RDS stay quiet."""
    stream = connected(eds=("a", "b"))
    [lds] = stream.on_request(request(LISTENER))
    stream.on_request(ack(lds))
    [rds] = stream.on_request(request(ROUTE, ("r",)))
    stream.on_request(ack(rds, ("r",)))
    changed = resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b")],
        endpoints=[cla("a", 1), cla("b", 5)],
        listeners=[http_listener("l", 80, "r")],
        routes=[route_config("r", upstream="a")],
    )
    [eds] = stream.on_snapshot(2, changed)
    assert (eds.type_url, names(eds)) == (ENDPOINT, ["b"])
    assert eds.version_info == content_version(changed.of(ENDPOINT))
    assert stream.on_request(ack(eds, ("a", "b"))) == []
    assert stream.sent_version(ENDPOINT) == eds.version_info
    # back to the old endpoints, with a rule change: the one CLA, and the route
    eds, route = stream.on_snapshot(3, with_clusters("a", "b", route_body="moved"))
    assert (eds.type_url, names(eds)) == (ENDPOINT, ["b"])
    assert route.type_url == ROUTE and len(route.resources) == 1


def test_a_cluster_type_is_resent_whole_when_one_cluster_changes() -> None:
    stream = connected(eds=("a", "b"))
    cds, eds = stream.on_snapshot(2, with_clusters("a", "b", timeout_ms=5))
    assert (cds.type_url, names(cds)) == (CLUSTER, ["a", "b"])
    assert eds.type_url == ENDPOINT  # the updated clusters warm on their endpoints again


def test_a_changed_eds_request_is_served_with_the_new_names() -> None:
    stream = connected()
    [eds_a] = stream.on_request(request(ENDPOINT, ("a",)))
    assert stream.on_request(ack(eds_a, ("a",))) == []
    grown = resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b"), eds_cluster("c")],
        endpoints=[cla("a", 1), cla("b", 2), cla("c", 3)],
    )
    [cds] = stream.on_snapshot(2, grown)
    assert stream.on_request(ack(cds)) == []

    [eds] = stream.on_request(
        request(ENDPOINT, ("a", "c"), version_info=eds_a.version_info, response_nonce=eds_a.nonce)
    )

    assert names(eds) == ["c"]  # "a" is held at its version already


def test_wildcard_deletion_keeps_the_old_cluster_until_the_listener_moved() -> None:
    stream = connected(eds=("a", "b"))
    [lds] = stream.on_request(request(LISTENER))
    stream.on_request(ack(lds))
    [rds] = stream.on_request(request(ROUTE, ("r",)))
    stream.on_request(ack(rds, ("r",)))
    moved = resource_set(
        clusters=[eds_cluster("a")],
        endpoints=[cla("a", 1)],
        listeners=[http_listener("l", 80, "r")],
        routes=[route_config("r", upstream="a", body="moved")],
    )

    bridge, route, final = stream.on_snapshot(2, moved)

    assert (bridge.type_url, names(bridge)) == (CLUSTER, ["a", "b"])
    # no EDS: "a" is unchanged, and "b" (requested, no longer there) goes with its cluster
    assert route.type_url == ROUTE
    assert (final.type_url, names(final)) == (CLUSTER, ["a"])
    assert final.version_info == stream.sent_version(CLUSTER)
    # Every response is answered before anything else is pushed.
    assert stream.on_request(ack(bridge)) == []
    assert stream.on_request(ack(route, ("r",))) == []
    assert stream.on_request(ack(final)) == []
    assert stream.in_flight == {}


def test_nack_is_recorded_and_not_resent_until_the_content_changes() -> None:
    stream = connected()
    bad = with_clusters("a", "b", timeout_ms=-1)
    [cds] = stream.on_snapshot(2, bad)
    stream.take_events()

    assert stream.on_request(nack(cds)) == []

    assert stream.take_events() == [Nacked(CLUSTER, cds.version_info, cds.nonce, "rejected")]
    assert stream.nacked_version(CLUSTER) == cds.version_info
    assert stream.on_snapshot(3, bad) == []
    [fixed] = stream.on_snapshot(4, with_clusters("a", "b", timeout_ms=3))
    assert fixed.version_info != cds.version_info


def test_endpoints_are_resent_after_a_cluster_update() -> None:
    stream = connected(eds=("a", "b"))
    cds, eds = stream.on_snapshot(2, with_clusters("a", "b", timeout_ms=2000))
    assert (cds.type_url, eds.type_url) == (CLUSTER, ENDPOINT)
    assert names(eds) == ["a", "b"]


def test_a_stale_nonce_is_ignored() -> None:
    stream = connected(eds=("a",))
    changed = resource_set(clusters=[eds_cluster("a"), eds_cluster("b")], endpoints=[cla("a", 8)])
    [eds] = stream.on_snapshot(2, changed)
    stream.take_events()
    stale = nack(eds, ("a", "zzz"))
    stale.response_nonce = "old-nonce"

    assert stream.on_request(stale) == []

    assert stream.take_events() == []
    assert stream.requested(ENDPOINT) == {"a"}
    assert set(stream.in_flight) == {eds.nonce}


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (DiscoveryRequest(type_url=CLUSTER), r"node\.id"),
        (DiscoveryRequest(node=NODE), "type_url"),
        (DiscoveryRequest(node=NODE, type_url="type.googleapis.com/x.Y"), "unsupported"),
    ],
)
def test_bad_requests_raise_remote_protocol_errors(req: DiscoveryRequest, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        SotwStream().on_request(req)


def test_a_transient_nack_is_resent_on_an_explicit_retry_only() -> None:
    stream = connected()
    [cds] = stream.on_snapshot(2, with_clusters("a", "b", timeout_ms=3))
    req = nack(cds)
    req.error_detail.message = "cannot bind '127.0.0.1:81': Address already in use"
    stream.on_request(req)
    assert stream.retryable == {CLUSTER}
    assert stream.on_snapshot(3, with_clusters("a", "b", timeout_ms=3)) == []

    [again] = stream.retry_rejected()

    assert again.version_info == cds.version_info
    stream.on_request(ack(again))
    assert stream.retryable == frozenset()


def test_a_nack_quoting_an_inline_key_is_recorded_redacted() -> None:
    # Envoy's validation errors quote the rejected message whole (ProtoValidationException:
    # DebugString): the NACK text reached /debug/status, the status page and config errors
    key = (
        "-----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\\n"
        "-----END PRIVATE KEY-----\\n"
    )
    stream = connected()
    [cds] = stream.on_snapshot(2, with_clusters("a", "b", timeout_ms=3))
    req = nack(cds)
    req.error_detail.message = (
        "Proto constraint validation failed (TlsCertificateValidationError.CertificateChain: "
        "value is required): tls_certificates {\n  private_key {\n    inline_string: "
        f'"{key}"\n  }}\n  password {{\n    inline_string: "hunter2"\n  }}\n}}\n'
    )
    stream.on_request(req)
    [event] = [e for e in stream.take_events() if isinstance(e, Nacked)]
    assert "MIGHAgEA" not in event.error and "hunter2" not in event.error
    assert "Proto constraint validation failed" in event.error and "[redacted]" in event.error


def _endpoints(a: int, b: int) -> ResourceSet:
    return resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b")], endpoints=[cla("a", a), cla("b", b)]
    )


def test_after_a_nack_the_next_endpoints_response_carries_every_requested_cla() -> None:
    """Envoy applies a rejected SotW response partly or not at all (its watches in order, up
    to the failing one): after a NACK whose error names none of the response's resources,
    the stream cannot tell which of them the proxy holds, so the next change is sent whole,
    not just what differs from the rejected response (else a resource changed beside the
    bad one stays stale)."""
    stream = connected(eds=("a", "b"))
    # when a change to "a" goes out with a bad "b", and the proxy rejects the response
    [eds] = stream.on_snapshot(2, _endpoints(7, 0))
    assert names(eds) == ["a", "b"]
    assert stream.on_request(nack(eds, ("a", "b"))) == []
    # and "b" is fixed
    [fixed] = stream.on_snapshot(3, _endpoints(7, 8))
    # then the response carries "a" again, and nothing is resent in a loop
    assert names(fixed) == ["a", "b"]
    assert stream.on_request(ack(fixed, ("a", "b"))) == []
    [later] = stream.on_snapshot(4, _endpoints(7, 9))
    assert names(later) == ["b"]


def test_after_an_unanswered_response_the_next_one_carries_every_requested_cla() -> None:
    """A response the stream stopped waiting for (the answer timeout) may never have been
    applied: the next change of its type goes whole."""
    stream = connected(eds=("a", "b"))
    [eds] = stream.on_snapshot(2, _endpoints(7, 2))
    assert names(eds) == ["a"]
    assert stream.abandon_in_flight() == []
    [after] = stream.on_snapshot(3, _endpoints(7, 8))
    assert names(after) == ["a", "b"]


def _nack_naming(response: DiscoveryResponse, names: tuple[str, ...], bad: str) -> DiscoveryRequest:
    req = nack(response, names)
    req.error_detail.message = f'Proto constraint validation failed: cluster_name: "{bad}" port 0'
    return req


def _three(a: int, b: int, c: int) -> ResourceSet:
    return resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b"), eds_cluster("c")],
        endpoints=[cla("a", a), cla("b", b), cla("c", c)],
    )


def test_after_a_nack_naming_the_bad_resource_the_others_go_again_with_the_next_change() -> None:
    """The error names the bad resource: the others of the rejected response go again with
    the next change, the bad one only once it changed, so that while it stays bad it does
    not get every later response rejected."""
    abc = ("a", "b", "c")
    stream = SotwStream()
    stream.on_request(request(CLUSTER, node=NODE))
    [cds] = stream.on_snapshot(1, _three(1, 2, 3))
    stream.on_request(ack(cds))
    [eds] = stream.on_request(request(ENDPOINT, abc))
    stream.on_request(ack(eds, abc))
    # when a change to "a" goes out with a bad "b", and the proxy rejects "b" by name
    [eds] = stream.on_snapshot(2, _three(7, 0, 3))
    assert names(eds) == ["a", "b"]
    assert stream.on_request(_nack_naming(eds, abc, "b")) == []
    # and "c" changes while "b" is still bad
    [later] = stream.on_snapshot(3, _three(7, 0, 9))
    # then the response carries "c" and "a" (which the proxy may not hold), not "b"
    assert names(later) == ["a", "c"]
    assert stream.on_request(ack(later, abc)) == []
    # and once "b" is fixed, it alone
    [fixed] = stream.on_snapshot(4, _three(7, 8, 9))
    assert names(fixed) == ["b"]
