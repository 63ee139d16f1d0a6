"""Clusters serialized from templates: most clusters of a mesh differ only in their name.

A message's serialization is its fields' encodings in field-number order, so a cluster is
its name (field 1, first) followed by the encoding of the same cluster built without a
name. The template is build_cluster's own output (clusters.py), cut once per shape;
tests/unit/test_encode_equivalence.py checks the bytes against build_cluster's.
"""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster

from meshagent.xds.translate.clusters import ClusterInputs, build_cluster
from meshagent.xds.translate.encode.wire import field_number, string_field
from meshagent.xds.translate.policy import NO_POLICY, ClusterPlan, Discovery

_NAME = field_number(Cluster, "name")
assert min(f.number for f in Cluster.DESCRIPTOR.fields) == _NAME  # the name comes first


def _shared_shape(plan: ClusterPlan) -> tuple[object, ...] | None:
    """What an EDS or pass-through cluster without TLS is built from, besides its name; None
    for clusters that depend on more (DNS hosts, TLS SNI and the coming mesh mTLS)."""
    if plan.discovery not in (Discovery.EDS, Discovery.ORIGINAL_DST) or plan.policy.tls:
        return None
    # Hashing a policy runs Python code per field; hosts without a rule (most of a mesh) all
    # share NO_POLICY, which None stands for.
    policy = None if plan.policy is NO_POLICY else plan.policy
    if plan.locality is not None:
        # Distribute weights change the cluster; the plan is resolved for this proxy.
        return (plan.discovery, policy, plan.port.protocol.upper(), plan.locality)
    return (plan.discovery, policy, plan.port.protocol.upper())


class ClusterTemplates:
    """Serialized clusters by shape; one per full translation pass."""

    def __init__(self) -> None:
        self._by_shape: dict[tuple[object, ...], bytes] = {}

    def serialize(self, plan: ClusterPlan, inputs: ClusterInputs) -> bytes:
        """The deterministic serialization of build_cluster(plan, inputs)."""
        if inputs.mesh_tls is None:
            shared = self.shared(plan)
            if shared is not None:
                return shared
        whole: bytes = build_cluster(plan, inputs).SerializeToString(deterministic=True)
        return whole

    def shared(self, plan: ClusterPlan) -> bytes | None:
        """build_cluster(plan, no inputs) serialized, when clusters of its shape share every
        field but the name (they read neither endpoints nor TLS settings); else None."""
        shape = _shared_shape(plan)
        if shape is None:
            return None
        tail = self._by_shape.get(shape)
        if tail is None:
            unnamed = build_cluster(plan, ClusterInputs())
            unnamed.ClearField("name")
            tail = self._by_shape[shape] = unnamed.SerializeToString(deterministic=True)
        return string_field(_NAME, plan.name) + tail
