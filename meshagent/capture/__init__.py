"""Traffic capture: the netfilter rules that send a host's traffic through its Envoy.

`options` reads istio-iptables flags or cluster.env into `CaptureOptions`; `rules.build` turns
them into a `Ruleset` (a pure function, Istio's chains in Istio's order); `iptables` and `nft`
render it as iptables-restore text or an nftables script; `apply` programs the kernel with
iptables-restore/ip6tables-restore or nft and reads the result back. Nothing here knows about
the mesh model.
"""
