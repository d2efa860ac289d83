"""Full cluster-CA rotations on real control planes, with a client polling the API throughout."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from reconciler.core import kubeconfig, pki
from reconciler.shell.kube import KubeconfigClient

from .rotation import (
    Poller, assert_cluster_trusts_only, assert_no_private_key_in_files, careconcile, record_ca,
    rejects_client_of, set_rotation,
)

pytestmark = pytest.mark.integration


def _add_foreign_cluster(kubeconfig_path: Path) -> dict:
    """A user's kubeconfig often reaches other clusters too; a rotation must leave them be."""
    document = kubeconfig.parse(kubeconfig_path.read_text(), source=str(kubeconfig_path))
    other = pki.new_ca("other-cluster", now=dt.datetime.now(dt.timezone.utc), key=pki.KeySpec("ECDSA", 256))
    client = pki.issue_leaf(other, pki.LeafRequest("me", client=True, key=pki.KeySpec("ECDSA", 256)),
                            now=dt.datetime.now(dt.timezone.utc))
    foreign = kubeconfig.build(endpoints=[kubeconfig.Endpoint("elsewhere", "https://127.0.0.1:1")],
                               ca_pem=other.cert_pem, user="me-elsewhere",
                               credentials=kubeconfig.ClientCredentials(cert_pem=client.cert_pem,
                                                                        key_pem=client.key_pem))
    for key in ("clusters", "users", "contexts"):
        document[key] = document[key] + foreign[key]
    kubeconfig_path.write_text(kubeconfig.dump(document))
    return {key: foreign[key] for key in ("clusters", "users", "contexts")}


WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


def _add_webhook_trusting(info, ca: pki.KeyPair) -> pki.KeyPair:
    """A webhook whose caBundle holds the cluster CA beside its own CA, as tools that copy
    the cluster CA into webhooks leave it. Its rules match nothing, so it is never called."""
    own = pki.new_ca("webhook-ca", now=dt.datetime.now(dt.timezone.utc), key=pki.KeySpec("ECDSA", 256))
    bundle = base64.b64encode(ca.cert_pem + own.cert_pem).decode()
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        client.create(WEBHOOKS, {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "rotation-test"},
            "webhooks": [{
                "name": "widgets.careconcile.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Ignore",
                "clientConfig": {"url": "https://127.0.0.1:1/validate", "caBundle": bundle},
                "rules": [{"apiGroups": ["careconcile.test"], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["widgets"]}],
            }],
        })
    return own


def _webhook_bundle(info) -> list[str]:
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        hook = client.get(f"{WEBHOOKS}/rotation-test")["webhooks"][0]
    pem = base64.b64decode(hook["clientConfig"]["caBundle"])
    return [pki.fingerprint(cert) for cert in pki.load_certificates(pem, source="caBundle")]


def _rotate_under_load(info, workspace: Path) -> tuple[Poller, pki.KeyPair, pki.KeyPair]:
    spec = Path(info.spec)
    old = record_ca(info)
    set_rotation(spec, 1)
    with Poller(Path(info.kubeconfig), set(info.apiservers)) as poller:
        result = careconcile("apply", str(spec), "--auto-approve", workspace=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Apply complete!" in result.stdout
    new = record_ca(info)
    print(f"\n{info.name}: {poller.requests} requests during the rotation, {len(poller.failures)} failed, "
          f"per apiserver {poller.per_server}")
    return poller, old, new


@pytest.mark.parametrize("control_planes", [1, 2], ids=["1-apiserver", "2-apiservers"])
def test_full_rotation_leaves_only_the_new_ca_and_fails_no_request(start_sandbox, tmp_path, control_planes):
    info = start_sandbox(f"rot{control_planes}", control_planes=control_planes, workers=3 if control_planes == 1 else 1)
    foreign = _add_foreign_cluster(Path(info.kubeconfig))
    webhook_ca = _add_webhook_trusting(info, record_ca(info))
    if control_planes == 2:  # keep this rotation's state in the workspace instead of a Secret
        spec = Path(info.spec)
        spec.write_text(spec.read_text().replace("    authorities:\n", "    stateStore: {workspace: {}}\n    authorities:\n"))
    poller, old, new = _rotate_under_load(info, tmp_path)
    after = kubeconfig.parse(Path(info.kubeconfig).read_text(), source=info.kubeconfig)
    for key, entries in foreign.items():
        assert all(entry in after[key] for entry in entries), f"the other cluster's {key} changed"

    assert poller.failures == [], "\n".join(poller.failures[:10])
    assert poller.requests > 100
    assert len(poller.per_server) == control_planes  # the client really went to every apiserver
    assert pki.fingerprint(new.cert) != pki.fingerprint(old.cert)
    workspace_kubeconfig = tmp_path / info.name / f"{info.name}-kubeconfig"
    assert workspace_kubeconfig.stat().st_mode & 0o777 == 0o600
    assert_cluster_trusts_only(info, new.cert, workspace_kubeconfig)
    assert _webhook_bundle(info) == [pki.fingerprint(new.cert), pki.fingerprint(webhook_ca.cert)]
    assert rejects_client_of(info, old, trust=new.cert), "a client certificate from the old CA is still accepted"
    assert not rejects_client_of(info, new, trust=new.cert)

    again = careconcile("plan", info.spec, "--detailed-exitcode", workspace=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout
    logs = list((tmp_path / info.name / "log").glob("apply-*/apply.log"))
    assert logs and "finished" in logs[0].read_text()
    assert_no_private_key_in_files(tmp_path)
    state_file = tmp_path / info.name / "state" / "state.json"
    if control_planes == 2:
        # finalize dropped the keys; the applied rotation stays on record
        entries = json.loads(state_file.read_text())
        assert list(entries) == ["clusterCA.json"]
        assert json.loads(base64.b64decode(entries["clusterCA.json"]))["appliedRotation"] == 1
    else:
        assert not state_file.exists()
