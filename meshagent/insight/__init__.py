"""Operator insight: whole-configuration analysis (`meshagent analyze`, /debug/analyze).

It reads what the other layers produced (the MeshSnapshot, the provenance of its objects, the
accepted raw documents and the normalizer's diagnostics) and never re-implements translation.
"""
