"""A full cluster-CA rotation on a real control plane, with a client polling the API throughout:
1 control plane with 3 workers reached over SSH, from a saved plan (the tests of that
rotation each look at one side of it). The rotation on several control planes, of all three
CAs, is test_ha.py's."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.shell.kube import KubeconfigClient

from .rotation import (
    Poller, Rotated, assert_polled_without_failure, assert_rotated, careconcile, prepare_user_objects, record_ca,
    set_rotation,
)
from .sshd import require_sshd

pytestmark = pytest.mark.integration


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
    foreign, old, webhook_ca = prepare_user_objects(info)
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
    assert_polled_without_failure(rotated.poller, servers=1)
    assert_rotated(rotated)
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
