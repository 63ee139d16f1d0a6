"""Private keys never leave memory: not in last-good.json, the admin pages, the diagnostics or
the logs, whatever source the credential came from."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

from meshagent.agent.config import load_config
from meshagent.agent.daemon import Agent
from meshagent.agent.logs import configure_logging, redact_text
from meshagent.agent.opscli import admin_request
from meshagent.model.credentials import Credential
from tests.credential_helpers import CA_PEM, kube_secret, server_cert, write_credential
from tests.unit.test_daemon import running, service_entry, until

MARKERS = ("PRIVATE KEY", "LS0tLS1CRUdJTiB")  # a PEM key, and one in base64


def _clean(text: str) -> bool:
    return not any(m in text for m in MARKERS)


SECRET_IN_MESH_FILES = """apiVersion: v1
kind: Secret
metadata: {{name: stray, namespace: default}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{cert}
  tls.key: |
{key}
"""


GATEWAY = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: web}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: out, namespace: edge}
spec:
  host: out.example.com
  trafficPolicy: {tls: {mode: MUTUAL, credentialName: nowhere}}
"""


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


async def test_no_private_key_in_last_good_admin_pages_diagnostics_or_logs(
    tmp_path: Path,
) -> None:
    log = io.StringIO()
    configure_logging("debug", "json", stream=log)
    good, other = server_cert(), server_cert()
    mesh, creds = tmp_path / "mesh", tmp_path / "creds"
    mesh.mkdir()
    (mesh / "a.yaml").write_text(service_entry("a"))
    stray = SECRET_IN_MESH_FILES.format(cert=_indent(good.cert), key=_indent(good.key))
    (mesh / "stray.yaml").write_text(stray)
    (mesh / "gateway.yaml").write_text(GATEWAY)
    write_credential(creds, "web", {"tls.crt": good.cert, "tls.key": good.key, "ca.crt": CA_PEM})
    write_credential(creds, "bad", {"tls.crt": good.cert, "tls.key": other.key})
    config = tmp_path / "agent.yaml"
    config.write_text(
        "node: {id: vm-1, namespace: edge, type: router, labels: {istio: ingressgateway}}\n"
        "state_dir: state\nadmin: {port: 0}\n"
        "sources:\n  files: {paths: [mesh], debounce_ms: 20, poll_interval_ms: 20}\n"
        "  credentials: {paths: [creds], debounce_ms: 20, poll_interval_ms: 20}\n"
    )
    agent = Agent(load_config(config))
    state = tmp_path / "state" / "last-good.json"

    async def body() -> None:
        await until(lambda: "edge/web" in agent.snapshot.credentials, "the credential")
        await until(lambda: state.exists() and "a.example.com" in state.read_text(), "saved")
        # the key serves from memory ...
        assert agent.snapshot.credentials["edge/web"].private_key_pem == good.key
        assert "default/stray" not in agent.snapshot.credentials  # mesh files hold no keys
        # ... and is nowhere else
        assert _clean(state.read_text())
        socket = agent.config.admin.socket
        for page in ("/debug/status", "/debug/resources", "/debug/config_errors", "/"):
            status, text = await asyncio.to_thread(admin_request, socket, page)
            assert status == 200 and _clean(text.decode()), page
        served = json.loads((await asyncio.to_thread(admin_request, socket, "/debug/resources"))[1])
        (secret,) = [s for s in served["sds"] if s["name"] == "kubernetes://web"]
        assert secret["resource"]["tlsCertificate"]["privateKey"] == {"inlineString": "[redacted]"}
        status_page = json.loads(
            (await asyncio.to_thread(admin_request, socket, "/debug/status"))[1]
        )
        names = [c["name"] for c in status_page["mesh"]["credentials"]]
        assert names == ["edge/web"]
        errors = agent.config_errors()["diagnostics"]
        assert any(d["location"] == str(creds / "bad" / "tls.key") for d in errors)
        assert _clean(json.dumps(errors))
        unserved = [d for d in errors if d["source"] == "credential-references"]
        assert [d["name"] for d in unserved] == ["edge/out"]

    await running(agent, body)
    assert _clean(log.getvalue()) and "does not match the certificate" in log.getvalue()


def test_logs_redact_keys_also_in_base64_and_in_a_credential_repr() -> None:
    pem = server_cert()
    secret = kube_secret("web", tls_crt=pem.cert, tls_key=pem.key)
    encoded_key = secret.body["data"]["tls.key"]
    assert encoded_key.startswith("LS0tLS1CRUdJTi")
    assert encoded_key not in redact_text(repr(secret))
    assert secret.body["data"]["tls.crt"] in redact_text(repr(secret))  # certificates stay
    assert redact_text(base64.b64encode(b"-----BEGIN EC").decode()) == "[redacted]"  # cut short
    assert pem.key not in repr(Credential("ns", "web", pem.cert, pem.key))


def test_last_good_never_writes_a_secret_whatever_its_source(tmp_path: Path) -> None:
    import dataclasses

    from meshagent.agent.lastgood import LastGoodStore

    pem = server_cert()
    secret = dataclasses.replace(kube_secret("web", tls_crt=pem.cert, tls_key=pem.key),
                                 source="files")  # fmt: skip
    store = LastGoodStore(tmp_path / "last-good.json")
    store.save([secret])
    assert _clean((tmp_path / "last-good.json").read_text()) and store.load() == []


def test_a_key_in_line_wrapped_base64_is_redacted_whole(tmp_path: Path) -> None:
    # `base64 tls.key` wraps at 76 columns: in a mesh YAML Secret (a block scalar), a log line
    # or JSON ("\n" escapes) only the first line was redacted, the key's body was left
    import tarfile

    from meshagent.agent.bugreport import write_archive

    pem = server_cert()
    wrapped = base64.encodebytes(pem.key.encode()).decode()
    cert = base64.encodebytes(pem.cert.encode()).decode()
    body = lambda text: "".join(f"    {line}\n" for line in text.splitlines())  # noqa: E731
    doc = f"data:\n  tls.key: |\n{body(wrapped)}  tls.crt: |\n{body(cert)}  other: x\n"
    key_lines = wrapped.splitlines()
    assert len(key_lines) > 3
    for text in (doc, json.dumps({"data": {"tls.key": wrapped}}), repr(wrapped)):
        out = redact_text(text)
        assert not any(line in out for line in key_lines), out
    out = redact_text(doc)
    assert cert.splitlines()[-1] in out and "  other: x\n" in out  # the certificate stays
    archive = tmp_path / "report.tar.gz"
    write_archive(archive, {"config/mesh/secret.yaml": doc}, prefix="r")
    with tarfile.open(archive) as tar:
        member = tar.extractfile("r/config/mesh/secret.yaml")
        assert member is not None
        text = member.read().decode()
    assert not any(line in text for line in key_lines) and "[redacted]" in text
