"""The SDS secrets of the credentials that DestinationRules' `tls.credentialName` name.

Clusters that originate TLS with a credential (tls.py) reference `kubernetes://<name>` (the
client certificate, MUTUAL) and `kubernetes://<name>-cacert` (the CA bundle that verifies the
server, unless insecureSkipVerify), as Istio names them. This generator serves those secrets
from the snapshot's credentials, resolved in the proxy's namespace, as the gateway servers'
secrets are (gateway_plan.py), and leaves out the names the gateway secrets already serve (the
same credential gives the same secret). A credential that is missing serves nothing: the
cluster's TLS waits for it, as Envoy does for any SDS secret.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshagent.model import ClientTls, DestinationRule, MeshSnapshot
from meshagent.model.credentials import Credential
from meshagent.model.proxy import ROUTER, ProxySpec
from meshagent.model.source import Diagnostic
from meshagent.xds import names, typeurls
from meshagent.xds.resources import Resource
from meshagent.xds.translate.context import Context, proxy_rules
from meshagent.xds.translate.gateway import GatewayPlanCache
from meshagent.xds.translate.gateway_plan import credential_ca, credential_key
from meshagent.xds.translate.gateway_tls import credential_secret


def _tls_settings(rule: DestinationRule) -> Iterator[tuple[str, ClientTls]]:
    """Each tls setting of rule, with the path of its credentialName field."""
    policies = [("spec.trafficPolicy", rule.traffic_policy)]
    policies += [(f"spec.subsets[{i}].trafficPolicy", s.traffic_policy)
                 for i, s in enumerate(rule.subsets)]  # fmt: skip
    for path, policy in policies:
        if policy is None:
            continue
        if policy.tls is not None:
            yield f"{path}.tls.credentialName", policy.tls
        for i, level in enumerate(policy.port_level):
            if level.tls is not None:
                yield f"{path}.portLevelSettings[{i}].tls.credentialName", level.tls


def _honoured(rule: DestinationRule, proxy: ProxySpec) -> bool:
    return proxy.proxy_type == ROUTER or rule.workload_selector is not None


def credential_references(
    rules: list[DestinationRule], proxy: ProxySpec
) -> dict[str, tuple[bool, bool]]:
    """credentialName -> (needs its certificate, needs its CA) over rules, where Istio
    honours credentialName: at routers, and at sidecars from rules with a workloadSelector
    (policy.py strips it from the clusters elsewhere)."""
    found: dict[str, tuple[bool, bool]] = {}
    for rule in rules:
        if not _honoured(rule, proxy):
            continue
        for _, tls in _tls_settings(rule):
            if not tls.credential_name or tls.mode not in ("SIMPLE", "MUTUAL"):
                continue
            cert, ca = found.get(tls.credential_name, (False, False))
            found[tls.credential_name] = (
                cert or tls.mode == "MUTUAL",
                ca or not tls.insecure_skip_verify,
            )
    return found


def credential_secrets(ctx: Context) -> list[tuple[str, Credential, bool]]:
    """(SDS name, credential, is CA) for every credential the proxy's rules reference."""
    credentials = ctx.snapshot.credentials
    rules = list(proxy_rules(ctx.snapshot, ctx.proxy).values())
    out: list[tuple[str, Credential, bool]] = []
    for name, (cert, ca) in sorted(credential_references(rules, ctx.proxy).items()):
        key = credential_key(name, ctx.proxy)
        credential = credentials.get(key)
        short = name.removeprefix(names.CREDENTIAL_PREFIX)
        if cert and credential is not None and credential.private_key_pem:
            out.append((names.credential_secret_name(short), credential, False))
        if ca:
            bundle = (
                credential_ca(credentials, key, credential)
                if credential is not None
                else credentials.get(key + names.CA_CREDENTIAL_SUFFIX)
            )
            if bundle is not None and bundle.ca_cert_pem:
                out.append((names.credential_ca_secret_name(short), bundle, True))
    return out


class ClusterCredentialSecretsGenerator:
    """The secrets of DestinationRule credentials not already served for gateway servers."""

    name = "cluster-credential-secrets"
    type_url = typeurls.SECRET

    def __init__(self, gateways: GatewayPlanCache) -> None:
        self._gateways = gateways
        self._key: tuple[object, ...] = ()
        self._last: list[Resource] = []

    def generate(self, ctx: Context) -> list[Resource]:
        snapshot = ctx.snapshot
        plan = self._gateways.plan(ctx)
        key = (
            snapshot.destination_rules,
            snapshot.workload_destination_rules,
            snapshot.credentials,
            ctx.proxy,
            plan,
        )
        if len(key) == len(self._key) and all(a is b for a, b in zip(key, self._key, strict=True)):
            return self._last
        served = {name for name, _, _ in plan.secrets}
        self._key = key
        self._last = [
            Resource.pack(n, credential_secret(n, c, ca))
            for n, c, ca in credential_secrets(ctx)
            if n not in served
        ]
        return self._last


CREDENTIAL_REFERENCES = "credential-references"  # the source of their diagnostics


def credential_problems(snapshot: MeshSnapshot, proxy: ProxySpec) -> list[Diagnostic]:
    """A located warning for each DestinationRule credentialName this proxy cannot serve
    (the credential is missing, has no certificate for MUTUAL, or no CA bundle to verify
    with): its clusters' TLS waits for a secret that does not come."""
    credentials = snapshot.credentials
    out: list[Diagnostic] = []
    for rule in proxy_rules(snapshot, proxy).values():
        if not _honoured(rule, proxy):
            continue
        for path, tls in _tls_settings(rule):
            if not tls.credential_name or tls.mode not in ("SIMPLE", "MUTUAL"):
                continue
            key = credential_key(tls.credential_name, proxy)
            credential = credentials.get(key)
            ca = credential_ca(credentials, key, credential) if credential is not None else (
                credentials.get(key + names.CA_CREDENTIAL_SUFFIX))  # fmt: skip
            if tls.mode == "MUTUAL" and (credential is None or not credential.private_key_pem):
                reason = f"credential {key!r} has no certificate and key"
                if credential is None:
                    reason = f"credential {key!r} not found"
            elif not tls.insecure_skip_verify and (ca is None or not ca.ca_cert_pem):
                reason = f"credential {key!r} has no CA bundle (ca.crt) to verify the server"
            else:
                continue
            prov = rule.provenance
            out.append(
                Diagnostic(
                    "warning",
                    CREDENTIAL_REFERENCES,
                    prov.location if prov is not None else "",
                    "DestinationRule",
                    f"{rule.namespace}/{rule.name}",
                    path,
                    f"{reason}: TLS to {rule.host} cannot start until it is there",
                )
            )
    return out
