"""Operator insight: what the configuration means for this host's Envoy (analyze, explain,
diff). Reads the snapshot, its provenance, the accepted documents and the ResourceSet; never
translates on its own."""
