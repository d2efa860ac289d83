"""Full cluster-CA rotations on real control planes, with a client polling the API throughout.

Two rotations: 1 control plane with 3 workers reached over SSH, from a saved plan (the
tests of that rotation each look at one side of it), and 2 apiservers with 1 worker over
local files, from the spec, keeping its state in the workspace."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.core import kubeconfig, pki
from reconciler.shell.kube import KubeconfigClient

from .rotation import (
    POLL_GAP_SECONDS, Poller, assert_cluster_trusts_only, assert_no_private_key_in_files, careconcile, record_ca,
    rejects_client_of, set_rotation,
)
from .sshd import require_sshd

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


@dataclass
class Rotated:
    info: object
    workspace: Path
    poller: Poller
    old: pki.KeyPair
    new: pki.KeyPair
    foreign: dict
    webhook_ca: pki.KeyPair


def _prepare(info) -> tuple[dict, pki.KeyPair, pki.KeyPair]:
    """What a user's cluster has beside careconcile's sites: another cluster in the same
    kubeconfig and a webhook that trusts the cluster CA."""
    foreign = _add_foreign_cluster(Path(info.kubeconfig))
    old = record_ca(info)
    return foreign, old, _add_webhook_trusting(info, old)


def _assert_rotated(rotated: Rotated, apiservers: int) -> None:
    """No request failed; only the new CA is trusted anywhere; the old CA's clients are
    rejected; the other cluster and the webhook's own CA are untouched; nothing is left to do."""
    info, workspace, poller, old, new = rotated.info, rotated.workspace, rotated.poller, rotated.old, rotated.new
    after = kubeconfig.parse(Path(info.kubeconfig).read_text(), source=info.kubeconfig)
    for key, entries in rotated.foreign.items():
        assert all(entry in after[key] for entry in entries), f"the other cluster's {key} changed"

    assert poller.failures == [], "\n".join(poller.failures[:10])
    assert poller.requests > 100
    assert poller.longest_gap() < POLL_GAP_SECONDS, f"no request for {poller.longest_gap():.1f}s"
    assert len(poller.per_server) == apiservers  # the client really went to every apiserver
    assert pki.fingerprint(new.cert) != pki.fingerprint(old.cert)
    workspace_kubeconfig = workspace / info.name / f"{info.name}-kubeconfig"
    assert workspace_kubeconfig.stat().st_mode & 0o777 == 0o600
    assert_cluster_trusts_only(info, new.cert, workspace_kubeconfig)
    assert _webhook_bundle(info) == [pki.fingerprint(new.cert), pki.fingerprint(rotated.webhook_ca.cert)]
    assert rejects_client_of(info, old, trust=new.cert), "a client certificate from the old CA is still accepted"
    assert not rejects_client_of(info, new, trust=new.cert)

    again = careconcile("plan", info.spec, "--detailed-exitcode", workspace=workspace)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout
    logs = list((workspace / info.name / "log").glob("apply-*/apply.log"))
    assert logs and "finished" in logs[0].read_text()
    assert_no_private_key_in_files(workspace)


# --- 1 control plane, 3 workers, over SSH, from a saved plan ------------------------------

def _set_kubelet_restart(spec: Path, commands: dict[str, list[str]]) -> None:
    """Give the spec's nodes these kubeletRestart commands (by node name)."""
    yaml = YAML()
    yaml.width = 4096
    document = yaml.load(spec.read_text())
    for node in document["spec"]["clusters"][0]["nodes"]:
        if node["name"] in commands:
            node["access"]["ssh"]["kubeletRestart"] = commands[node["name"]]
    with spec.open("w") as out:
        yaml.dump(document, out)


def _kubelet_restart_logs(info) -> dict[str, Path]:
    """Where each worker's stand-in kubelet restart command records that it ran."""
    return {node.name: Path(node.root) / "var/lib/kubelet/restarts" for node in info.nodes if node.role == "worker"}


@pytest.fixture(scope="module")
def over_ssh(start_sandbox, tmp_path_factory):
    """The sandbox's spec as `sandbox up --ssh` writes it, with a stand-in kubelet restart
    command on each worker, a plan saved with `plan --out` and that plan applied."""
    require_sshd()
    info = start_sandbox("rot1", control_planes=1, workers=3, ssh=True)
    workspace = tmp_path_factory.mktemp("rot1-workspace")
    spec = Path(info.spec)
    text = spec.read_text()
    assert "local:" not in text and text.count("ssh:") == 4 and "keyFile: ssh/client_key" in text
    assert text.count("kubeletRestart: []") == 4  # kwok stands in for the kubelets: none to restart

    # Kubelets restarted by a command over SSH: each worker's "restart" records that it ran.
    # kwok serves the workers and renews their Leases, which is what the check after a
    # kubelet's restart waits for. The control-plane node is no Node here, so it keeps [].
    _set_kubelet_restart(spec, {name: ["sh", "-c", f"date +%s >> {path}"]
                                for name, path in _kubelet_restart_logs(info).items()})
    foreign, old, webhook_ca = _prepare(info)
    set_rotation(spec, 1)
    plan_file = workspace / "rotate.plan.json"
    planned = careconcile("plan", str(spec), "--out", str(plan_file), workspace=workspace)
    assert planned.returncode == 0, planned.stdout + planned.stderr

    started = time.monotonic()
    with Poller(Path(info.kubeconfig), set(info.apiservers)) as poller:
        result = careconcile("apply", str(plan_file), workspace=workspace)
    print(f"\n{info.name}: rotation over SSH in {time.monotonic() - started:.1f}s; {poller.requests} requests "
          f"during it, {len(poller.failures)} failed, longest gap {poller.longest_gap():.2f}s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Apply complete!" in result.stdout
    rotated = Rotated(info, workspace, poller, old, record_ca(info), foreign, webhook_ca)
    return rotated, planned, json.loads(plan_file.read_text())


def test_a_rotation_over_ssh_fails_no_request_and_leaves_only_the_new_ca(over_ssh):
    rotated, _, _ = over_ssh
    _assert_rotated(rotated, apiservers=1)
    # the state went to the Secret, and finalize left no key there and no file here
    assert not (rotated.workspace / rotated.info.name / "state" / "state.json").exists()
    with KubeconfigClient(Path(rotated.info.kubeconfig)) as client:
        state = client.get("/api/v1/namespaces/kube-system/secrets/careconcile-state")
    assert list(state["data"]) == ["clusterCA.json"]
    assert json.loads(base64.b64decode(state["data"]["clusterCA.json"]))["appliedRotation"] == 1


def test_kubelets_are_restarted_by_command_once_per_phase_that_changed_their_files(over_ssh):
    rotated, planned, plan = over_ssh
    restarts = _kubelet_restart_logs(rotated.info)
    actions = plan["clusters"][0]["actions"]
    kubelet_restarts = sorted((a["phase"], a["target"]) for a in actions
                              if a["kind"] == "restart" and a["params"]["component"] == "kubelet")
    # each worker's kubelet.conf and ca.crt change in phases 2 and 4, its client certificate in 3
    assert kubelet_restarts == sorted((phase, f"{name}:kubelet") for phase in (2, 3, 4) for name in restarts)
    assert all(a["params"]["command"].startswith("sh -c 'date +%s >> ") for a in actions
               if a["kind"] == "restart" and a["params"]["component"] == "kubelet")
    for name in restarts:
        assert f"r restart {name}:kubelet" in planned.stdout
    # one restart of each worker's kubelet per phase that changed its files, each recorded on the node
    assert {name: len(path.read_text().splitlines()) for name, path in restarts.items()} == \
        {name: 3 for name in restarts}
    for node in rotated.info.nodes:
        marker = Path(node.root) / "var/lib/kubelet/careconcile-restarted-for"
        assert marker.is_file() == (node.name in restarts), node.name
        if node.name in restarts:
            assert json.loads(marker.read_text())["restartedFor"].startswith("sha256:")
    assert not (Path(rotated.info.nodes[0].root) / "var/lib/kubelet/restarts").exists()


def test_every_write_went_over_ssh_and_left_no_temp_file(over_ssh):
    rotated, _, _ = over_ssh
    # nothing half-written anywhere: no temp file of careconcile's is left on any node
    for node in rotated.info.nodes:
        leftovers = [str(path) for path in Path(node.root).rglob(".*.tmp")]
        assert leftovers == [], leftovers
    # every file careconcile wrote went over SSH: the sshd logged the logins of the runs
    log = Path(rotated.info.ssh["directory"]) / "sshd.log"
    assert "Accepted publickey for " in log.read_text()


# --- 2 apiservers, 1 worker, local files, from the spec -----------------------------------

def test_a_rotation_of_two_apiservers_fails_no_request_and_leaves_only_the_new_ca(start_sandbox, tmp_path):
    info = start_sandbox("rot2", control_planes=2, workers=1)
    foreign, old, webhook_ca = _prepare(info)
    spec = Path(info.spec)
    # keep this rotation's state in the workspace instead of a Secret
    spec.write_text(spec.read_text().replace("    authorities:\n", "    stateStore: {workspace: {}}\n    authorities:\n"))
    set_rotation(spec, 1)
    with Poller(Path(info.kubeconfig), set(info.apiservers)) as poller:
        result = careconcile("apply", str(spec), "--auto-approve", workspace=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Apply complete!" in result.stdout
    print(f"\n{info.name}: {poller.requests} requests during the rotation, {len(poller.failures)} failed, "
          f"per apiserver {poller.per_server}, longest gap {poller.longest_gap():.2f}s")
    _assert_rotated(Rotated(info, tmp_path, poller, old, record_ca(info), foreign, webhook_ca), apiservers=2)
    # finalize dropped the keys; the applied rotation stays on record
    entries = json.loads((tmp_path / info.name / "state" / "state.json").read_text())
    assert list(entries) == ["clusterCA.json"]
    assert json.loads(base64.b64decode(entries["clusterCA.json"]))["appliedRotation"] == 1
