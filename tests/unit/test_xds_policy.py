"""Per-listener serve policy of the sans-io streams: secrets never go to a TCP peer."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from meshagent.xds.delta import DeltaStream
from meshagent.xds.protocol import NO_SECRETS, Withheld
from meshagent.xds.resources import Resource, ResourceSet
from meshagent.xds.sotw import SotwStream
from meshagent.xds.typeurls import CLUSTER, SECRET
from tests.xds_builders import eds_cluster

NODE = base_pb2.Node(id="vm-1")
KEY = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"


def secret(name: str = "default") -> Resource:
    return Resource.pack(
        name,
        secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                private_key=base_pb2.DataSource(inline_string=KEY)
            ),
        ),
    )


def with_secret(*clusters: Resource) -> ResourceSet:
    return ResourceSet.build({SECRET: [secret()], CLUSTER: list(clusters)})


def test_delta_stream_under_no_secrets_answers_a_secret_as_absent() -> None:
    # Given a stream of the TCP listener and a snapshot holding the workload key
    stream = DeltaStream(policy=NO_SECRETS)
    stream.on_request(DeltaDiscoveryRequest(node=NODE, type_url=CLUSTER))
    stream.on_snapshot(1, with_secret(eds_cluster("a")))
    # When the proxy asks for the default secret
    responses = stream.on_request(
        DeltaDiscoveryRequest(type_url=SECRET, resource_names_subscribe=["default"])
    )
    # Then it is told the secret does not exist, and the refusal is reported once
    assert [(r.type_url, len(r.resources), list(r.removed_resources)) for r in responses] == [
        (SECRET, 0, ["default"])
    ]
    assert not any(KEY.encode() in r.SerializeToString() for r in responses)
    events = stream.take_events()
    assert [e for e in events if isinstance(e, Withheld)] == [Withheld(SECRET, NO_SECRETS.reason)]


def test_delta_stream_under_no_secrets_still_serves_changes_with_the_hint() -> None:
    stream = DeltaStream(policy=NO_SECRETS)
    first = with_secret(eds_cluster("a"), eds_cluster("b"))
    stream.on_request(DeltaDiscoveryRequest(node=NODE, type_url=CLUSTER))
    [cds] = stream.on_snapshot(1, first)
    assert sorted(r.name for r in cds.resources) == ["a", "b"]
    stream.on_request(DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=cds.nonce))
    # A set derived from the first with only "b" changed: only "b" goes out.
    changed = {
        **first.by_type,
        CLUSTER: {"a": first.of(CLUSTER)["a"], "b": eds_cluster("b", timeout_ms=7)},
    }
    second = ResourceSet.derive(first, changed, {CLUSTER: frozenset({"b"})})
    [update] = stream.on_snapshot(2, second)
    assert [r.name for r in update.resources] == ["b"]


def test_sotw_stream_under_no_secrets_sends_no_secret() -> None:
    stream = SotwStream(policy=NO_SECRETS)
    stream.on_snapshot(1, with_secret(eds_cluster("a")))
    [response] = stream.on_request(
        DiscoveryRequest(node=NODE, type_url=SECRET, resource_names=["default"])
    )
    assert response.type_url == SECRET and len(response.resources) == 0
    assert any(isinstance(e, Withheld) for e in stream.take_events())


def test_a_stream_of_the_unix_socket_serves_the_secret() -> None:
    stream = SotwStream()
    stream.on_snapshot(1, with_secret())
    [response] = stream.on_request(
        DiscoveryRequest(node=NODE, type_url=SECRET, resource_names=["default"])
    )
    assert KEY.encode() in response.SerializeToString()
    assert not any(isinstance(e, Withheld) for e in stream.take_events())


def test_withholding_keeps_the_change_hint_of_the_cache() -> None:
    # One changed cluster must cost O(1) on a TCP stream too: the set the stream works on
    # still says what changed since the previous one.
    stream = DeltaStream(policy=NO_SECRETS)
    first = with_secret(eds_cluster("a"))
    stream.on_snapshot(1, first)
    shown_first = stream._snapshot[1] if stream._snapshot else None
    changed = {**first.by_type, CLUSTER: {"a": eds_cluster("a", timeout_ms=7)}}
    stream.on_snapshot(2, ResourceSet.derive(first, changed, {CLUSTER: frozenset({"a"})}))
    assert stream._snapshot is not None and shown_first is not None
    assert stream._snapshot[1].changed_since(shown_first) == {CLUSTER: frozenset({"a"})}
    assert SECRET not in stream._snapshot[1].by_type
