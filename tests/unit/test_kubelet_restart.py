"""The kubelet as a component restarted by a command: the spec's kubeletRestart, the plan's
``restart <node>:kubelet`` actions, and the local transport's run, observation and marker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from reconciler._time import micro_time
from reconciler.core import kubeadm
from reconciler.core.admin import dump_inventory, inventory, inventory_node_of, node_spec_of, parse_inventory
from reconciler.core.authorities import CLUSTER_CA
from reconciler.core.observed import ClusterObservation, ObservedComponent, digest_of
from reconciler.core.pki import KeySpec
from reconciler.core.plan import Action, RestartParams, summary_counts
from reconciler.core.sites import Component
from reconciler.core.schemas import schemas
from reconciler.core.spec import ClusterSpec, NodeSpec
from reconciler.errors import NodeUnreachableError, SpecError
from reconciler.shell.executor import Executor
from reconciler.shell.nodes import LocalNodeFiles
from reconciler.shell.formats import inputs_digest, read_restart_marker
from reconciler.shell.observe import ClusterAccess, _observe_node
from reconciler.shell.specfile import load_spec
from tests.unit.test_diff import (
    CA_CRT, CLUSTER, CP, KUBELET_CONF, KUBELET_PEM, NOW, STALE, WORKER, desired, in_progress, observation, plan,
)
from tests.unit.test_plan import after_reissue, after_trust_both, select
from tests.unit.spec_helpers import schema_accepts

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILR+4lw2fJJCUPlp0KF2czsVDT2VGyQ5te1c2og0lXvO"
KUBELET_INPUTS = (KUBELET_CONF, CA_CRT, KUBELET_PEM)
SYSTEMCTL = ("systemctl", "restart", "kubelet")

# --- the spec ----------------------------------------------------------------------------


def _node(access: dict) -> NodeSpec:
    return NodeSpec.model_validate({"name": "n1", "role": "worker", "access": access})


def _ssh(**extra) -> dict:
    return {"ssh": {"host": "n1.example", "user": "root", "keyFile": "keys/k", "hostKey": HOST_KEY, **extra}}


def test_an_ssh_node_restarts_its_kubelet_with_systemctl_unless_the_spec_says_otherwise():
    assert _node(_ssh()).kubelet_restart == SYSTEMCTL
    assert _node(_ssh(kubeletRestart=["sudo", "-n", "systemctl", "restart", "kubelet"])).kubelet_restart == (
        "sudo", "-n", "systemctl", "restart", "kubelet")
    assert _node(_ssh(kubeletRestart=[])).kubelet_restart == ()  # no kubelet to restart


def test_a_local_node_restarts_no_kubelet_unless_the_spec_names_a_command():
    assert _node({"local": {"root": "/x/nodes/n1"}}).kubelet_restart == ()
    assert _node({"local": {"root": "/", "kubeletRestart": list(SYSTEMCTL)}}).kubelet_restart == SYSTEMCTL


SPEC = """\
apiVersion: careconcile.dev/v1alpha1
kind: CASpec
metadata: {{name: kubelet}}
spec:
  clusters:
    - name: one
      kubeconfig: kubeconfig
      nodes:
        - name: n1
          role: worker
          access:
            ssh:
              host: n1.example
              user: root
              keyFile: keys/k
              hostKey: {host_key}
{restart}
"""


def _spec(tmp_path: Path, restart: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(host_key=HOST_KEY, restart=textwrap.indent(restart, " " * 14)))
    return path


@pytest.mark.parametrize("restart", ["kubeletRestart: [sudo, systemctl, restart, kubelet]", "kubeletRestart: []", ""])
def test_the_spec_and_its_schema_accept_a_list_of_arguments(tmp_path, restart):
    path = _spec(tmp_path, restart)
    load_spec(path)
    assert schema_accepts(path)


@pytest.mark.parametrize("restart, message", [
    ("kubeletRestart: systemctl restart kubelet", "must be a list of arguments, such as [systemctl, restart, kubelet]"),
    ("kubeletRestart: [systemctl, '', kubelet]", "at least 1 character"),
])
def test_a_command_line_as_one_string_or_an_empty_argument_is_refused(tmp_path, restart, message):
    path = _spec(tmp_path, restart)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert any("kubeletRestart" in problem and message in problem for problem in error.value.problems), \
        error.value.problems
    assert not schema_accepts(path)


@pytest.mark.parametrize("extra", [{}, {"kubeletRestart": []}, {"kubeletRestart": ["sudo", "systemctl", "restart",
                                                                                    "kubelet"]}])
def test_the_admin_inventory_carries_the_command_only_when_the_spec_sets_it(extra):
    node = NodeSpec.model_validate({"name": "cp", "role": "control-plane", "access": _ssh(**extra)})
    text = dump_inventory(inventory("c1", [inventory_node_of(node)]))
    assert ("kubeletRestart" in text) == bool("kubeletRestart" in extra)
    jsonschema.validate(YAML(typ="safe").load(text), schemas()["inventory.schema.json"])
    again = node_spec_of(parse_inventory(text, source="x").nodes[0], cluster="c1", ssh_key_file="/k")
    assert again.kubelet_restart == node.kubelet_restart


# --- the plan ----------------------------------------------------------------------------


def test_the_cluster_ca_layout_names_the_kubelet_and_its_inputs():
    (kubelet,) = CLUSTER_CA.node_services
    assert kubelet.name == "kubelet" and kubelet.inputs == KUBELET_INPUTS
    assert kubelet.marker == "/var/lib/kubelet/careconcile-restarted-for"
    assert set(kubelet.roles) == {"control-plane", "worker"}


def _digest(observed: ClusterObservation, node: str) -> str:
    """What the kubelet's files hold in the hand-built model: what each trusts and which leaf."""
    bundles = {bundle.id: list(bundle.fingerprints) for bundle in observed.bundles}
    leaves = {leaf.id: leaf.fingerprint for leaf in observed.leaves}
    return digest_of({path: [bundles.get(f"{node}:{path}"), leaves.get(f"{node}:{path}")]
                      for path in KUBELET_INPUTS})


def with_kubelets(observed: ClusterObservation, *, stale: tuple[str, ...] = (),
                  never_restarted: tuple[str, ...] = (), nodes: tuple[str, ...] = (CP, WORKER)) -> ClusterObservation:
    """``observed`` with a kubelet restarted by systemctl on ``nodes``; its marker holds the
    digest of its files now unless the node is ``stale`` (older) or ``never_restarted``."""
    kubelets = []
    for node in nodes:
        now = _digest(observed, node)
        restarted_for = None if node in never_restarted else STALE if node in stale else now
        kubelets.append(ObservedComponent(
            id=f"{node}:kubelet", node=node, name="kubelet", inputs=KUBELET_INPUTS, inputs_digest=now,
            restarted_for=restarted_for, restarted_at=NOW - dt.timedelta(hours=1) if restarted_for else None,
            restart="command", command=SYSTEMCTL))
    return dataclasses.replace(observed, components=observed.components + tuple(kubelets))


def kubelet_restarts(result) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for action in select(result, kind="restart"):
        if action.params.component == "kubelet":
            found.setdefault(action.phase, []).append(action.target)
    return found


def test_a_rotation_restarts_each_kubelet_in_every_phase_that_changes_its_files():
    result = plan(desired(rotation=1), with_kubelets(observation()))
    # w1's kubelet.conf and ca.crt change in phases 2 and 4, its client certificate in 3;
    # cp1 holds only ca.crt of the kubelet's files in this model, which phase 3 leaves alone.
    assert kubelet_restarts(result) == {2: [f"{CP}:kubelet", f"{WORKER}:kubelet"], 3: [f"{WORKER}:kubelet"],
                                        4: [f"{CP}:kubelet", f"{WORKER}:kubelet"]}
    for action in select(result, kind="restart"):
        if action.params.component == "kubelet":
            assert action.id == f"{CLUSTER}/{action.phase}/restart/{action.target}"
            assert action.node == action.target.split(":")[0]
            assert action.params == RestartParams(component="kubelet", command="systemctl restart kubelet")
            assert action.reason == "its files change in this phase"
            # after the files it reads, before the phase's check
            kinds = [a.kind for a in select(result, phase=action.phase)]
            assert kinds.index("restart") > max(i for i, kind in enumerate(kinds) if kind in ("update-bundle",
                                                                                               "reissue"))
    assert summary_counts(result.actions)["restart"] == 6 + 5


def test_a_kubelet_restart_command_is_quoted_as_a_shell_would_read_it():
    observed = with_kubelets(observation(), nodes=(WORKER,))
    custom = tuple(dataclasses.replace(c, command=("sh", "-c", "systemctl restart kubelet && sleep 1"))
                   if c.name == "kubelet" else c for c in observed.components)
    result = plan(desired(rotation=1), dataclasses.replace(observed, components=custom))
    commands = {a.params.command for a in select(result, kind="restart") if a.params.component == "kubelet"}
    assert commands == {"sh -c 'systemctl restart kubelet && sleep 1'"}


def test_nodes_without_a_restart_command_have_no_kubelet_to_restart():
    result = plan(desired(rotation=1), observation())  # as the sandbox: kwok stands in
    assert kubelet_restarts(result) == {}


def test_no_kubelet_restart_when_none_of_its_files_changes():
    assert plan(desired(), with_kubelets(observation())).actions == []
    # a repair of a controller-manager kubeconfig touches no kubelet file
    repair = plan(desired(), with_kubelets(observation(bundles={f"{CP}:/etc/kubernetes/controller-manager.conf":
                                                                ("foreign",)})))
    assert repair.operation == "repair" and kubelet_restarts(repair) == {}
    # in phase 4 only the bundles that still trust the old CA change: w1's are done already
    resumed = plan(desired(rotation=1), with_kubelets(after_reissue(bundles={
        f"{WORKER}:{CA_CRT}": ("new",), f"{WORKER}:{KUBELET_CONF}": ("new",)})))
    assert kubelet_restarts(resumed) == {4: [f"{CP}:kubelet"]}


def test_a_resumed_plan_restarts_a_kubelet_once_when_its_marker_is_older_than_its_files():
    # A run died after it reissued w1's client certificate in phase 3, before it restarted w1's kubelet.
    crashed = after_trust_both(leaves={f"{WORKER}:{KUBELET_PEM}": "new"})
    result = plan(desired(rotation=1), with_kubelets(crashed, stale=(WORKER,)))
    phase_3 = [a for a in select(result, phase=3, kind="restart") if a.params.component == "kubelet"]
    assert [a.target for a in phase_3] == [f"{WORKER}:kubelet"]
    assert "not been restarted since its files changed" in phase_3[0].reason
    assert kubelet_restarts(result) == {3: [f"{WORKER}:kubelet"], 4: [f"{CP}:kubelet", f"{WORKER}:kubelet"]}
    # with its marker up to date, phase 3 has nothing left to restart for it
    done = plan(desired(rotation=1), with_kubelets(crashed))
    assert kubelet_restarts(done) == {4: [f"{CP}:kubelet", f"{WORKER}:kubelet"]}
    # a kubelet careconcile never restarted counts as stale during a rotation
    never = plan(desired(rotation=1), with_kubelets(crashed, never_restarted=(WORKER,)))
    assert kubelet_restarts(never)[3] == [f"{WORKER}:kubelet"]


def test_the_same_ids_when_replanned_midway():
    full = plan(desired(rotation=1), with_kubelets(observation(state=in_progress(1))))
    later = plan(desired(rotation=1), with_kubelets(after_trust_both()))
    kubelet_ids = {a.id for a in later.actions if a.kind == "restart" and a.params.component == "kubelet"}
    assert kubelet_ids and kubelet_ids <= {a.id for a in full.actions}


def test_outside_a_rotation_a_stale_kubelet_is_a_pending_restart_that_a_repair_restarts():
    result = plan(desired(), with_kubelets(observation(), stale=(WORKER,)))
    assert [(f.code, f.subject) for f in result.findings] == [("restart-pending", f"{WORKER}:kubelet")]
    assert result.operation == "repair"
    assert [(a.kind, a.target) for a in result.actions] == [("restart", f"{WORKER}:kubelet"), ("verify", "phase-5")]


# --- the local transport, observation and the executor ---------------------------------------


def test_local_run_runs_the_command_and_a_failure_names_node_command_status_and_stderr(tmp_path):
    files = LocalNodeFiles("n1", str(tmp_path))
    files.run(["sh", "-c", f"echo ran >> {tmp_path}/ran"], timeout=10)
    assert (tmp_path / "ran").read_text() == "ran\n"
    with pytest.raises(NodeUnreachableError) as error:
        files.run(["sh", "-c", "for i in 1 2 3 4 5 6 7; do echo line $i >&2; done; exit 3"], timeout=10)
    message = str(error.value)
    assert message.startswith(f"node n1 (local root {tmp_path}): `sh -c ")
    assert "failed with exit status 3" in message
    assert "line 7" in message and "line 3" in message and "line 2" not in message  # the last five lines
    with pytest.raises(NodeUnreachableError, match="could not be started"):
        files.run(["/no/such/program"], timeout=10)
    with pytest.raises(NodeUnreachableError, match=r"`sleep 5` did not finish within 0s"):
        files.run(["sleep", "5"], timeout=0.2)


class FakeLeases:
    """The API as the kubelet's readiness check reads it: the node Leases."""

    def __init__(self) -> None:
        self.renewed: dict[str, dt.datetime] = {}

    def _lease(self, name: str) -> dict:
        return {"metadata": {"name": name}, "spec": {"renewTime": micro_time(self.renewed[name]),
                                                     "leaseDurationSeconds": 40}}

    def get(self, path: str) -> dict:
        from reconciler.errors import APINotFoundError

        name = path.rsplit("/", 1)[1]
        if name not in self.renewed:
            raise APINotFoundError(f"lease {name} not found")
        return self._lease(name)

    def list(self, path: str, **_) -> list[dict]:
        return [self._lease(name) for name in self.renewed]

    def server_now(self):  # a server that sends no Date: the check is made on the node's clock alone
        return None


def _worker(tmp_path: Path, command: list[str]) -> tuple[ClusterAccess, Path]:
    root = tmp_path / "nodes" / "w1"
    authorities = kubeadm.new_authorities(now=NOW, key=KeySpec("ECDSA", 256))
    for file in kubeadm.worker_files(authorities, node_name="w1", cluster_name="c1", server_port=6443, now=NOW,
                                     key=KeySpec("ECDSA", 256)):
        path = root / file.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(file.content)
    cluster = ClusterSpec.model_validate({"name": "c1", "kubeconfig": "k", "nodes": [
        {"name": "w1", "role": "worker", "access": {"local": {"root": str(root), "kubeletRestart": command}}}]})
    access = ClusterAccess(cluster=cluster, layout=CLUSTER_CA, client=FakeLeases(), kubeconfig_path=None,
                           nodes={"w1": LocalNodeFiles("w1", str(root))}, roles={"w1": "worker"}, store=None,
                           workspace=tmp_path / "workspace")
    return access, root


def test_a_node_without_a_command_has_no_kubelet_component(tmp_path):
    access, _ = _worker(tmp_path, [])
    components = _observe_node(access, "w1", "worker")[2]
    assert components == []


def test_the_executor_restarts_a_kubelet_by_its_command_and_records_it_in_the_marker(tmp_path):
    command = ("sh", "-c", f"date +%s >> {tmp_path}/restarts")
    access, root = _worker(tmp_path, list(command))
    (kubelet,) = _observe_node(access, "w1", "worker")[2]
    assert (kubelet.id, kubelet.restart, kubelet.command) == ("w1:kubelet", "command", command)
    assert kubelet.inputs == KUBELET_INPUTS
    assert kubelet.restarted_for is None and kubelet.restarted_at is None

    leases = access.client
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    leases.renewed["w1"] = before
    executor = Executor(access, desired(), on_event=lambda *_: None)
    executor.components.restart(Action(
        id="c1/2/restart/w1:kubelet", phase=2, kind="restart", site=Component(node="w1", name="kubelet", restart="command"),
        reason="its files change in this phase", params=RestartParams(component="kubelet", command="sh -c ...")))
    assert len((tmp_path / "restarts").read_text().splitlines()) == 1
    marker = json.loads((root / "var/lib/kubelet/careconcile-restarted-for").read_text())
    assert marker["restartedFor"] == inputs_digest(access.nodes["w1"], KUBELET_INPUTS)
    assert marker["leaseRenewTime"] == micro_time(before)

    (kubelet,) = _observe_node(access, "w1", "worker")[2]
    assert kubelet.restarted_for == kubelet.inputs_digest and kubelet.lease_renewed_at_restart == before
    # ready once the Lease is renewed after the renewal seen at the restart
    assert executor.components.services_not_ready([kubelet]) == [
        f"w1:kubelet: the node's Lease has not been renewed since the restart at {kubelet.restarted_at:%H:%M:%S}"]
    leases.renewed["w1"] = dt.datetime.now(dt.timezone.utc)
    assert executor.components.services_not_ready([kubelet]) == []
    del leases.renewed["w1"]
    assert "node w1 has no Lease in kube-node-lease" in executor.components.services_not_ready([kubelet])[0]

    # a file it reads changes: the marker no longer matches, as after a crash before the restart
    (root / CA_CRT.lstrip("/")).write_bytes((root / CA_CRT.lstrip("/")).read_bytes() + b"\n")
    (kubelet,) = _observe_node(access, "w1", "worker")[2]
    assert kubelet.restarted_for != kubelet.inputs_digest


def test_an_unreadable_marker_counts_as_no_restart_recorded(tmp_path):
    files = LocalNodeFiles("w1", str(tmp_path))
    marker = CLUSTER_CA.node_services[0].marker
    assert read_restart_marker(files, marker).restarted_for is None
    files.write(marker, b"not json", 0o644)
    assert read_restart_marker(files, marker).restarted_for is None
    files.write(marker, b'{"restartedFor": 3, "restartedAt": "yesterday"}', 0o644)
    assert read_restart_marker(files, marker) == type(read_restart_marker(files, marker))()
