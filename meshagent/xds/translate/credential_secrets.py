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

from meshagent.model import ClientTls, DestinationRule
from meshagent.model.credentials import Credential
from meshagent.model.proxy import ROUTER, ProxySpec
from meshagent.xds import names, typeurls
from meshagent.xds.resources import Resource
from meshagent.xds.translate.context import Context, proxy_rules
from meshagent.xds.translate.gateway import GatewayPlanCache
from meshagent.xds.translate.gateway_plan import _ca_of, credential_key
from meshagent.xds.translate.gateway_tls import credential_secret


def _tls_settings(rule: DestinationRule) -> Iterator[ClientTls]:
    policies = [rule.traffic_policy, *(s.traffic_policy for s in rule.subsets)]
    for policy in policies:
        if policy is None:
            continue
        if policy.tls is not None:
            yield policy.tls
        yield from (p.tls for p in policy.port_level if p.tls is not None)


def credential_references(
    rules: list[DestinationRule], proxy: ProxySpec
) -> dict[str, tuple[bool, bool]]:
    """credentialName -> (needs its certificate, needs its CA) over rules, where Istio
    honours credentialName: at routers, and at sidecars from rules with a workloadSelector
    (policy.py strips it from the clusters elsewhere)."""
    found: dict[str, tuple[bool, bool]] = {}
    for rule in rules:
        if proxy.proxy_type != ROUTER and rule.workload_selector is None:
            continue
        for tls in _tls_settings(rule):
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
                _ca_of(credentials, key, credential)
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
