"""An automatic VIP reaches virtualOutbound: the DNS answer and the filter chain agree."""

from __future__ import annotations

from envoy.config.listener.v3.listener_pb2 import Listener

from meshagent.dns import TableOptions, build_table
from meshagent.model.proxy import ProxySpec
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.translate import Translator
from tests.unit.normalize_helpers import upsert

DB = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
  namespace: shop
spec:
  hosts: [db.partner.example]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
"""


def test_the_vip_dns_answers_has_a_virtual_outbound_chain() -> None:
    snapshot, _ = Normalizer().apply([upsert(DB)])
    record = build_table(snapshot, TableOptions(namespace="shop")).lookup("db.partner.example.")
    assert record is not None
    (vip,) = record.v4
    proxy = ProxySpec(node_id="vm-1", namespace="shop", capture=True)
    resources = Translator().generate(snapshot, proxy)
    listeners = [Listener.FromString(r.value) for r in resources.of(typeurls.LISTENER).values()]
    outbound = next(x for x in listeners if x.name == "virtualOutbound")
    matched = [
        chain.name
        for chain in outbound.filter_chains
        for prefix in chain.filter_chain_match.prefix_ranges
        if prefix.address_prefix == vip and chain.filter_chain_match.destination_port.value == 5432
    ]
    assert len(matched) == 1 and "db.partner.example" in matched[0]
