"""The certificate authority (Citadel-like): keys, roots, issuing, rotation, tokens, and Istio's
CreateCertificate service and client.

authority   issue(csr, identity, ttl) -> chain; the identity comes from the caller's credential
state       CA state on disk: self-signed root (created once), plug-in cacerts, token key
tokens      ES256 bootstrap tokens; ratelimit: per-caller token buckets
issuer      IssuanceService (authenticate, rate-limit, issue) and the Issuer protocol
workload    WorkloadCertManager: this host's certificates, persisted, renewed at 50%
service, client   the gRPC server and client (the only modules that import grpc)
"""
