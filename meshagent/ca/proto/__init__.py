"""Istio's CreateCertificate protocol: ca.proto and its message classes built at import time."""
