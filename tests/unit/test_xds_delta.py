"""The incremental ADS protocol, driven without sockets."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse
from google.protobuf import any_pb2

from meshagent.xds.delta import DeltaStream
from meshagent.xds.errors import RemoteProtocolError
from meshagent.xds.protocol import Acked, Nacked, Pushed
from meshagent.xds.resources import Resource, ResourceSet
from meshagent.xds.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.xds_builders import cla, eds_cluster, http_listener, resource_set, route_config

NODE = base_pb2.Node(id="vm-1", cluster="web")


def request(type_url: str, subscribe: tuple[str, ...] = (), **kw: object) -> DeltaDiscoveryRequest:
    return DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=list(subscribe), **kw)


def ack(response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest:
    return DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)


def nack(response: DeltaDiscoveryResponse, message: str = "bad") -> DeltaDiscoveryRequest:
    req = ack(response)
    req.error_detail.code = 3
    req.error_detail.message = message
    return req


def names(response: DeltaDiscoveryResponse) -> list[str]:
    return [r.name for r in response.resources]


def shape(responses: list[DeltaDiscoveryResponse]) -> list[tuple[str, list[str], list[str]]]:
    return [(r.type_url, names(r), list(r.removed_resources)) for r in responses]


SNAP1 = resource_set(
    clusters=[eds_cluster("a"), eds_cluster("b")],
    endpoints=[cla("a", 1), cla("b", 2)],
    listeners=[http_listener("l", 80, "r")],
    routes=[route_config("r", upstream="a")],
)


def clusters_with_a(timeout_ms: int) -> ResourceSet:
    return resource_set(clusters=[eds_cluster("a", timeout_ms=timeout_ms), eds_cluster("b")])


def connected() -> DeltaStream:
    """A stream whose proxy subscribed to CDS (wildcard) with SNAP1 published, CDS ACKed."""
    stream = DeltaStream()
    assert stream.on_request(request(CLUSTER, node=NODE)) == []
    [cds] = stream.on_snapshot(1, SNAP1)
    assert stream.on_request(ack(cds)) == []
    return stream


def test_nothing_is_sent_before_a_snapshot_and_cds_is_legacy_wildcard() -> None:
    stream = DeltaStream()
    assert stream.on_request(request(CLUSTER, node=NODE)) == []
    assert stream.node_id == "vm-1"
    assert stream.is_wildcard(CLUSTER)

    [cds] = stream.on_snapshot(1, SNAP1)

    assert (cds.type_url, names(cds), cds.system_version_info) == (CLUSTER, ["a", "b"], "1")
    assert cds.nonce
    assert isinstance(stream.take_events()[0], Pushed)


def test_named_subscription_gets_only_those_names_and_ack_is_recorded() -> None:
    stream = connected()
    stream.take_events()

    [eds] = stream.on_request(request(ENDPOINT, ("a",)))
    assert shape([eds]) == [(ENDPOINT, ["a"], [])]
    assert not stream.is_wildcard(ENDPOINT)
    assert stream.on_request(ack(eds)) == []
    events = stream.take_events()

    assert [type(e) for e in events] == [Pushed, Acked]
    assert events[1] == Acked(ENDPOINT, "1", eds.nonce)
    assert stream.in_flight == {}


def test_a_type_not_subscribed_is_never_sent() -> None:
    stream = connected()
    # SNAP1 has listeners and routes; the proxy asked for clusters only.
    assert stream.on_snapshot(2, SNAP1) == []
    assert stream.sent_versions(LISTENER) == {}


def test_only_changed_resources_are_sent() -> None:
    stream = connected()
    [eds] = stream.on_request(request(ENDPOINT, ("a", "b")))
    stream.on_request(ack(eds))
    changed = resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b")], endpoints=[cla("a", 1), cla("b", 9)]
    )

    responses = stream.on_snapshot(2, changed)

    assert shape(responses) == [(ENDPOINT, ["b"], [])]


def test_nack_is_recorded_and_never_resent_until_the_content_changes() -> None:
    stream = connected()
    bad = resource_set(clusters=[eds_cluster("a", timeout_ms=-1), eds_cluster("b")])
    [cds] = stream.on_snapshot(2, bad)
    assert names(cds) == ["a"]
    stream.take_events()

    assert stream.on_request(nack(cds, "connect_timeout must be > 0")) == []
    assert stream.take_events() == [Nacked(CLUSTER, "2", cds.nonce, "connect_timeout must be > 0")]
    # The same content again, under a new cache version: nothing is sent.
    assert stream.on_snapshot(3, bad) == []
    # A different content: only what changed goes out; the rejected "a" is not resent.
    fixed_b = resource_set(
        clusters=[eds_cluster("a", timeout_ms=-1), eds_cluster("b", timeout_ms=7)]
    )
    assert shape(stream.on_snapshot(4, fixed_b)) == [(CLUSTER, ["b"], [])]


def test_a_fixed_resource_is_sent_after_a_nack() -> None:
    stream = connected()
    [cds] = stream.on_snapshot(2, clusters_with_a(timeout_ms=-1))
    stream.on_request(nack(cds))
    fixed = clusters_with_a(timeout_ms=5)
    assert shape(stream.on_snapshot(3, fixed)) == [(CLUSTER, ["a"], [])]


def test_updates_go_in_push_order_and_removals_after_all_updates() -> None:
    stream = connected()
    for type_url, subscribe in ((ENDPOINT, ("a", "b")), (LISTENER, ()), (ROUTE, ("r",))):
        [response] = stream.on_request(request(type_url, subscribe))
        stream.on_request(ack(response))
    moved = resource_set(
        clusters=[eds_cluster("a"), eds_cluster("c")],
        endpoints=[cla("a", 1), cla("b", 2), cla("c", 3)],
        listeners=[http_listener("l", 80, "r")],
        routes=[route_config("r", upstream="c")],
    )

    responses = stream.on_snapshot(2, moved)

    assert shape(responses) == [
        (CLUSTER, ["c"], []),
        (ROUTE, ["r"], []),
        (CLUSTER, [], ["b"]),
    ]


def test_endpoints_are_resent_after_their_cluster_changes() -> None:
    stream = connected()
    [eds] = stream.on_request(request(ENDPOINT, ("a", "b")))
    stream.on_request(ack(eds))
    updated = resource_set(
        clusters=[eds_cluster("a", timeout_ms=2000), eds_cluster("b")],
        endpoints=[cla("a", 1), cla("b", 2)],
    )

    responses = stream.on_snapshot(2, updated)

    # The CLA of "a" did not change, but Envoy warms the new "a" only once it arrives.
    assert shape(responses) == [(CLUSTER, ["a"], []), (ENDPOINT, ["a"], [])]


def test_endpoints_follow_the_clusters_service_name() -> None:
    stream = connected()
    [eds] = stream.on_request(request(ENDPOINT, ("svc-a",)))
    stream.on_request(ack(eds))
    snap = resource_set(
        clusters=[eds_cluster("a", service_name="svc-a", timeout_ms=3)],
        endpoints=[cla("svc-a", 1)],
    )
    assert shape(stream.on_snapshot(2, snap)) == [
        (CLUSTER, ["a"], []),
        (ENDPOINT, ["svc-a"], []),
        (CLUSTER, [], ["b"]),
    ]


def test_reconnect_honours_initial_resource_versions() -> None:
    stream = DeltaStream()
    have = {"a": SNAP1.of(CLUSTER)["a"].version, "b": "old-version", "gone": "x"}
    stream.on_request(request(CLUSTER, node=NODE, initial_resource_versions=have))

    [updates, removals] = stream.on_snapshot(1, SNAP1)

    assert shape([updates, removals]) == [(CLUSTER, ["b"], []), (CLUSTER, [], ["gone"])]


def test_reconnect_with_everything_current_gets_an_empty_response_to_ack() -> None:
    stream = DeltaStream()
    have = {n: r.version for n, r in SNAP1.of(CLUSTER).items()}
    stream.on_request(request(CLUSTER, node=NODE, initial_resource_versions=have))
    assert shape(stream.on_snapshot(1, SNAP1)) == [(CLUSTER, [], [])]


def test_unsubscribed_names_are_forgotten_and_not_sent() -> None:
    stream = connected()
    [eds] = stream.on_request(request(ENDPOINT, ("a", "b")))
    stream.on_request(ack(eds))

    stream.on_request(request(ENDPOINT, resource_names_unsubscribe=["a"]))
    changed = resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b")], endpoints=[cla("a", 7), cla("b", 2)]
    )

    assert stream.subscribed(ENDPOINT) == {"b"}
    assert "a" not in stream.sent_versions(ENDPOINT)
    assert stream.on_snapshot(2, changed) == []


def test_a_requested_name_that_does_not_exist_is_reported_removed_once() -> None:
    stream = connected()
    [eds] = stream.on_request(request(ENDPOINT, ("nope",)))
    assert shape([eds]) == [(ENDPOINT, [], ["nope"])]
    stream.on_request(ack(eds))
    assert stream.on_snapshot(2, resource_set(clusters=[eds_cluster("a"), eds_cluster("b")])) == []


def test_explicit_wildcard_and_its_unsubscription() -> None:
    stream = connected()
    [lds] = stream.on_request(request(LISTENER, ("*",)))
    assert stream.is_wildcard(LISTENER)
    assert names(lds) == ["l"]
    stream.on_request(ack(lds))
    stream.on_request(request(LISTENER, resource_names_unsubscribe=["*"]))
    assert not stream.is_wildcard(LISTENER)
    assert stream.sent_versions(LISTENER) == {}


def test_a_stale_nonce_is_ignored_for_ack_and_nack() -> None:
    stream = connected()
    [cds] = stream.on_snapshot(2, clusters_with_a(timeout_ms=9))
    stream.take_events()

    stale = nack(cds)
    stale.response_nonce = "not-a-nonce-we-sent"
    assert stream.on_request(stale) == []

    assert stream.take_events() == []
    assert set(stream.in_flight) == {cds.nonce}


def test_a_new_push_waits_for_the_previous_one_to_be_answered() -> None:
    stream = connected()
    [cds] = stream.on_snapshot(2, clusters_with_a(timeout_ms=9))
    # Two more snapshots while CDS is unanswered: they coalesce into one push.
    assert stream.on_snapshot(3, clusters_with_a(timeout_ms=10)) == []
    assert stream.on_snapshot(4, clusters_with_a(timeout_ms=11)) == []

    [latest] = stream.on_request(ack(cds))

    assert latest.system_version_info == "4"


def test_abandoning_unanswered_responses_lets_the_next_push_go() -> None:
    stream = connected()
    [cds] = stream.on_snapshot(2, clusters_with_a(timeout_ms=9))
    assert stream.on_snapshot(3, clusters_with_a(timeout_ms=10)) == []

    [latest] = stream.abandon_in_flight()

    assert latest.system_version_info == "3"
    assert set(stream.in_flight) == {latest.nonce}
    assert cds.nonce != latest.nonce


def test_a_late_answer_to_an_abandoned_response_still_settles_it() -> None:
    """At 40k clusters Envoy takes longer than the answer timeout to apply one CDS response:
    its ACK, when it comes, must count (else the version never settles and /readyz stays
    red), unless a newer response of that type went out since."""
    stream = connected()
    [cds] = stream.on_snapshot(2, clusters_with_a(timeout_ms=9))
    stream.take_events()
    assert stream.abandon_in_flight() == []
    assert stream.settled_version == 2  # nothing is waited for any more

    assert stream.on_request(ack(cds)) == []

    assert [type(e) for e in stream.take_events()] == [Acked]


def test_a_late_answer_to_a_superseded_abandoned_response_is_stale() -> None:
    stream = connected()
    [old] = stream.on_snapshot(2, clusters_with_a(timeout_ms=9))
    stream.abandon_in_flight()
    [new] = stream.on_snapshot(3, clusters_with_a(timeout_ms=10))
    stream.take_events()

    stream.on_request(ack(old))

    assert stream.take_events() == []
    assert set(stream.in_flight) == {new.nonce}


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (DeltaDiscoveryRequest(type_url=CLUSTER), r"node\.id"),
        (DeltaDiscoveryRequest(node=NODE), "type_url"),
        (DeltaDiscoveryRequest(node=NODE, type_url="type.googleapis.com/x.Y"), "unsupported"),
    ],
)
def test_bad_first_requests_raise_remote_protocol_errors(
    req: DeltaDiscoveryRequest, message: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        DeltaStream().on_request(req)


def test_a_changed_node_id_is_a_protocol_error_and_changes_nothing() -> None:
    stream = connected()
    other = request(LISTENER, node=base_pb2.Node(id="vm-2"))
    with pytest.raises(RemoteProtocolError, match=r"node\.id changed"):
        stream.on_request(other)
    assert stream.node_id == "vm-1"
    assert stream.sent_versions(LISTENER) == {}


def test_endpoints_of_new_clusters_go_out_while_the_cluster_update_is_unanswered() -> None:
    # Envoy ACKs a cluster update only once the new clusters have warmed, and they warm only
    # when their endpoints arrive: EDS must not wait for that ACK.
    stream = connected()
    [eds] = stream.on_request(request(ENDPOINT, ("a", "b")))
    stream.on_request(ack(eds))
    with_c = resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b"), eds_cluster("c")],
        endpoints=[cla("a", 1), cla("b", 2), cla("c", 3)],
    )
    [cds] = stream.on_snapshot(2, with_c)
    assert names(cds) == ["c"]

    [eds_c] = stream.on_request(request(ENDPOINT, ("c",)))

    assert (eds_c.type_url, names(eds_c)) == (ENDPOINT, ["c"])
    assert cds.nonce in stream.in_flight


def test_listeners_and_routes_wait_while_a_cluster_update_is_unanswered() -> None:
    stream = connected()
    for response in stream.on_request(request(LISTENER)):
        stream.on_request(ack(response))
    listener_l = http_listener("l", 80, "r")
    clusters = [eds_cluster("a", timeout_ms=5), eds_cluster("b")]
    [cds] = stream.on_snapshot(2, resource_set(clusters=clusters, listeners=[listener_l]))

    two_listeners = [listener_l, http_listener("l2", 81, "r")]
    held = stream.on_snapshot(3, resource_set(clusters=clusters, listeners=two_listeners))

    assert held == []
    [lds] = stream.on_request(ack(cds))
    assert (lds.type_url, names(lds)) == (LISTENER, ["l2"])


def test_a_change_hint_gives_the_same_responses_as_a_full_comparison() -> None:
    # Given two streams in the same state, one fed a set derived from the last (with a hint),
    # the other an equal set without a hint
    hinted, plain = connected(), connected()
    for stream in (hinted, plain):
        [eds] = stream.on_request(request(ENDPOINT, ("a", "b")))
        stream.on_request(ack(eds))
    base = SNAP1
    changed_by_type = {ENDPOINT: frozenset({"b"}), CLUSTER: frozenset({"c"})}
    new_types = dict(base.by_type)
    new_types[ENDPOINT] = {**base.of(ENDPOINT), "b": cla("b", 9)}
    new_types[CLUSTER] = {**base.of(CLUSTER), "c": eds_cluster("c")}
    derived = ResourceSet.derive(base, new_types, changed_by_type)
    hinted.on_snapshot(1, base)  # the base is what the hinted stream last reconciled with
    unhinted = ResourceSet(by_type=derived.by_type)

    # When both get the change
    got_hinted = shape(hinted.on_snapshot(2, derived))
    got_plain = shape(plain.on_snapshot(2, unhinted))

    # Then they send the same thing: the new cluster, then the changed endpoints
    assert got_hinted == got_plain == [(CLUSTER, ["c"], []), (ENDPOINT, ["b"], [])]


def test_settled_version_waits_for_every_answer_of_a_snapshot() -> None:
    # Given a proxy that asked for clusters and endpoints
    stream = DeltaStream()
    assert stream.settled_version is None
    stream.on_request(request(CLUSTER, node=NODE))
    stream.on_request(request(ENDPOINT, subscribe=("a", "b")))
    # when snapshot 1 is published, nothing counts as applied until every response is answered
    sent = stream.on_snapshot(1, SNAP1)
    assert sent and stream.settled_version is None
    for response in sent[:-1]:
        stream.on_request(ack(response))
        assert stream.settled_version is None
    more = stream.on_request(ack(sent[-1]))
    while more:  # responses held back until the first answers came (make-before-break)
        assert stream.settled_version is None
        more = [r for response in more for r in stream.on_request(ack(response))]
    assert stream.settled_version == 1
    # and a NACK is an answer too (readiness reports the rejection itself)
    sent = stream.on_snapshot(2, clusters_with_a(999))
    assert sent and stream.settled_version is None
    for response in sent:
        stream.on_request(nack(response) if response.type_url == CLUSTER else ack(response))
    assert stream.settled_version == 2


BIND_ERROR = (
    "Error adding/updating listener(s) l2: cannot bind '127.0.0.1:81': Address already in use\n"
)


def listening(*listeners: tuple[str, int]) -> ResourceSet:
    return resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b")],
        endpoints=[cla("a", 1), cla("b", 2)],
        listeners=[http_listener(name, port, "r") for name, port in listeners],
        routes=[route_config("r", upstream="a")],
    )


def with_listeners(snapshot: ResourceSet) -> tuple[DeltaStream, DeltaDiscoveryResponse]:
    """A stream with CDS, EDS and LDS subscribed; returns it and the unanswered LDS response."""
    stream = DeltaStream()
    stream.on_request(request(CLUSTER, node=NODE))
    stream.on_request(request(ENDPOINT, ("a", "b")))
    stream.on_request(request(LISTENER))
    responses = stream.on_snapshot(1, snapshot)
    for response in responses[:-1]:
        stream.on_request(ack(response))
    lds = responses[-1]
    assert lds.type_url == LISTENER
    return stream, lds


def test_a_listener_envoy_could_not_bind_is_resent_only_on_an_explicit_retry() -> None:
    stream, lds = with_listeners(listening(("l1", 80), ("l2", 81)))
    assert stream.on_request(nack(lds, BIND_ERROR)) == []
    # Envoy applied l1 and names l2: only l2 counts as rejected, and it may pass by itself.
    assert stream.rejected(LISTENER) == {"l2": BIND_ERROR}
    assert stream.retryable == {LISTENER}
    assert stream.on_snapshot(2, listening(("l1", 80), ("l2", 81))) == []  # never in a loop

    [again] = stream.retry_rejected()

    assert (again.type_url, names(again)) == (LISTENER, ["l2"])
    stream.on_request(ack(again))
    assert stream.rejected(LISTENER) == {}
    assert stream.retryable == frozenset()


def test_a_later_ack_of_other_listeners_does_not_clear_a_rejected_one() -> None:
    stream, lds = with_listeners(listening(("l1", 80), ("l2", 81)))
    stream.on_request(nack(lds, BIND_ERROR))

    [lds2] = stream.on_snapshot(2, listening(("l1", 80), ("l2", 81), ("l3", 82)))
    assert names(lds2) == ["l3"]
    stream.on_request(ack(lds2))

    assert stream.rejected(LISTENER) == {"l2": BIND_ERROR}
    assert stream.retryable == {LISTENER}


def test_a_nack_that_cannot_pass_by_itself_is_not_retried() -> None:
    stream, lds = with_listeners(listening(("l1", 80)))
    stream.on_request(nack(lds, "Error adding/updating listener(s) l1: bad filter"))

    assert stream.rejected(LISTENER) == {"l1": "Error adding/updating listener(s) l1: bad filter"}
    assert stream.retryable == frozenset()


def _three(a: int, b: int, c: int) -> ResourceSet:
    return resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b"), eds_cluster("c")],
        endpoints=[cla("a", a), cla("b", b), cla("c", c)],
    )


def test_after_a_nack_naming_one_endpoint_the_others_go_again_with_the_next_change() -> None:
    """Envoy hands a delta EDS response to one watch per name and stops at the one that
    fails: the others of a rejected response may not be applied. They go again with the
    next endpoints response; the named bad one only once it changed."""
    stream = DeltaStream()
    stream.on_request(request(CLUSTER, node=NODE))
    [cds] = stream.on_snapshot(1, _three(1, 2, 3))
    stream.on_request(ack(cds))
    [eds] = stream.on_request(request(ENDPOINT, ("a", "b", "c")))
    stream.on_request(ack(eds))
    # when a change to "a" goes out with a bad "b", and the proxy rejects "b" by name
    [eds] = stream.on_snapshot(2, _three(7, 0, 3))
    assert names(eds) == ["a", "b"]
    assert stream.on_request(nack(eds, 'malformed: cluster_name: "b" port 0')) == []
    # and "c" changes while "b" is still bad
    [later] = stream.on_snapshot(3, _three(7, 0, 9))
    # then "a" goes again with it, "b" does not
    assert names(later) == ["a", "c"]
    stream.on_request(ack(later))
    [fixed] = stream.on_snapshot(4, _three(7, 8, 9))
    assert names(fixed) == ["b"]


def test_a_response_carries_each_resource_as_its_any() -> None:
    # given resources of every type, one of them with an empty value
    snapshot = resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b")],
        endpoints=[cla("a", 1), cla("b", 0)],
        listeners=[http_listener("l", 80, "r")],
        routes=[route_config("r", upstream="a")],
    )
    empty = Resource.from_value("e", ENDPOINT, b"")
    by_type = {t: dict(snapshot.of(t)) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)}
    by_type[ENDPOINT]["e"] = empty
    snapshot = ResourceSet.build({t: list(m.values()) for t, m in by_type.items()})
    stream = DeltaStream()
    stream.on_request(request(CLUSTER, node=NODE))
    stream.on_request(request(ENDPOINT, ("a", "b", "e")))
    stream.on_request(request(LISTENER))
    stream.on_request(request(ROUTE, ("r",)))
    # when it is pushed
    responses = stream.on_snapshot(1, snapshot)
    # then each response is the one built from each resource's Any
    for response in responses:
        sent = snapshot.of(response.type_url)
        expected = DeltaDiscoveryResponse(
            type_url=response.type_url, system_version_info="1", nonce=response.nonce
        )
        for name in names(response):
            expected.resources.add(name=name, version=sent[name].version).resource.CopyFrom(
                any_pb2.Any(type_url=sent[name].type_url, value=sent[name].value)
            )
        assert response == expected
        assert response.SerializeToString(deterministic=True) == expected.SerializeToString(
            deterministic=True
        )
    assert sorted(names(responses[1])) == ["a", "b", "e"]
