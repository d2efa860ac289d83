"""Workload restarts in a real rotation: every pod that read the old CA at start is restarted
safely before the apiservers switch CAs.

One sandbox (add-ons, 10 sample namespaces, a StatefulSet) gets a Deployment whose budget
allows no disruption, and two bare pods behind a budget, one reading the CA (evicted: the
spec opts in) and one not. One module-scoped scenario then runs, with a recorder watching
throughout: apply stops before phase 3 on the budget, drift is read while the rotation is
held there, the budget is relaxed, apply is killed during the restarts and run again, drift
is read once more, a second rotation is rolled back after phase 3, and a third runs with
restarts turned off, the control that shows the recorder catches what it should. The tests
assert on what the scenario recorded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.core import pki
from reconciler.core.workloads import RESTARTED_FOR
from reconciler.sandbox._workloads import budget, sample_deployment
from reconciler.shell.executor import CRASH_AFTER_ENV
from reconciler.shell.kube import KubeconfigClient

from .helpers import wait_until
from .recorder import TrustRecorder
from .rotation import CLIResult, careconcile, record_ca, set_rotation

pytestmark = pytest.mark.integration

NAME = "wl"
SAMPLES = 10
APPS = "/apis/apps/v1"
CONTROLLERS = ("deployments", "statefulsets", "daemonsets")
# How many actions the killed apply completes: all of them restart-workload actions.
KILLED_AFTER = 3


@dataclass
class Scenario:
    info: object
    spec: Path
    workspace: Path
    old_ca: str = ""
    new_ca: str = ""
    plan_text: str = ""
    blocked: CLIResult | None = None
    blocked_presented: str = ""
    apiserver_crt_before: bytes = b""
    apiserver_crt_after_block: bytes = b""
    drift_held: dict = field(default_factory=dict)
    killed: CLIResult | None = None
    killed_log: str = ""
    resumed: CLIResult | None = None
    generations_before: dict[str, int] = field(default_factory=dict)
    generations_after: dict[str, int] = field(default_factory=dict)
    annotations_after: dict[str, str | None] = field(default_factory=dict)
    drift_after: dict = field(default_factory=dict)
    rotation: TrustRecorder | None = None
    consumers_before: set[str] = field(default_factory=set)
    rollback_until_3: CLIResult | None = None
    rollback: CLIResult | None = None
    rollback_recorder: TrustRecorder | None = None
    abandoned_ca: str = ""
    bare_consumer_left: bool = True
    lone_pods_before: set[str] = field(default_factory=set)
    lone_pods_after: set[str] = field(default_factory=set)
    unrestarted_apply: CLIResult | None = None
    unrestarted: TrustRecorder | None = None
    drift_unrestarted: dict = field(default_factory=dict)


def client(info) -> KubeconfigClient:
    return KubeconfigClient(Path(info.kubeconfig))


def bare_pod(name: str, *, reads_ca: bool) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"role": "bare"}},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
                     "automountServiceAccountToken": reads_ca, "terminationGracePeriodSeconds": 1}}


def add_test_workloads(info) -> None:
    """A Deployment whose budget allows no disruption; a ReplicaSet of its own; two bare pods
    behind a budget of minAvailable 1 (a budget over pods with no controller must be an
    integer minAvailable)."""
    with client(info) as api:
        api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "frozen"}})
        api.create(f"{APPS}/namespaces/frozen/deployments", sample_deployment("frozen"))
        api.create("/apis/policy/v1/namespaces/frozen/poddisruptionbudgets", budget("frozen", "web", 2))
        # A ReplicaSet of its own: no rollout to trigger, so its pods are evicted one at a time.
        lone = sample_deployment("default")
        lone.update(kind="ReplicaSet", metadata={"name": "lone", "namespace": "default"})
        lone["spec"]["selector"] = {"matchLabels": {"k8s-app": "lone"}}
        lone["spec"]["template"]["metadata"]["labels"] = {"k8s-app": "lone"}
        api.create(f"{APPS}/namespaces/default/replicasets", lone)
        for name, reads in (("bare-consumer", True), ("bare-keeper", False)):
            api.create("/api/v1/namespaces/default/pods", bare_pod(name, reads_ca=reads))
        api.create("/apis/policy/v1/namespaces/default/poddisruptionbudgets", {
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "bare", "namespace": "default"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"role": "bare"}}}})

        def settled() -> bool:
            frozen = api.get("/apis/policy/v1/namespaces/frozen/poddisruptionbudgets/web").get("status") or {}
            bare = api.get("/apis/policy/v1/namespaces/default/poddisruptionbudgets/bare").get("status") or {}
            lone_status = api.get(f"{APPS}/namespaces/default/replicasets/lone").get("status") or {}
            return (frozen.get("currentHealthy") == 2 and bare.get("currentHealthy") == 2
                    and lone_status.get("readyReplicas") == 2)
        wait_until("the test workloads are up", settled, timeout=60)


def lone_pods(pods: list[dict]) -> set[str]:
    return {pod["metadata"]["name"] for pod in pods if pod["metadata"]["name"].startswith("lone-")
            and not pod["metadata"].get("deletionTimestamp")}


def set_workloads(spec: Path, settings: dict) -> None:
    yaml = YAML()
    document = yaml.load(spec.read_text())
    document["spec"]["clusters"][0]["workloads"] = settings
    with spec.open("w") as handle:
        yaml.dump(document, handle)


def generations(info) -> dict[str, int]:
    with client(info) as api:
        return {f"{kind}/{item['metadata']['namespace']}/{item['metadata']['name']}": item["metadata"]["generation"]
                for kind in CONTROLLERS for item in api.list(f"{APPS}/{kind}")}


def restart_annotations(info) -> dict[str, str | None]:
    with client(info) as api:
        return {f"{kind}/{item['metadata']['namespace']}/{item['metadata']['name']}":
                ((item["spec"]["template"].get("metadata") or {}).get("annotations") or {}).get(RESTARTED_FOR)
                for kind in CONTROLLERS for item in api.list(f"{APPS}/{kind}")}


def drift(spec: Path, workspace: Path) -> tuple[int, dict]:
    result = careconcile("drift", str(spec), "--format", "json", workspace=workspace)
    return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def scenario(start_sandbox, tmp_path_factory) -> Scenario:
    info = start_sandbox(NAME, control_planes=1, workers=3, workloads=SAMPLES)
    run = Scenario(info=info, spec=Path(info.spec), workspace=tmp_path_factory.mktemp("workloads"))
    add_test_workloads(info)
    set_workloads(run.spec, {"evictBarePods": True})
    set_rotation(run.spec, 1)
    old = record_ca(info)
    run.old_ca = pki.fingerprint(old.cert)
    apiserver_crt = Path(info.nodes[0].root) / "etc/kubernetes/pki/apiserver.crt"
    run.apiserver_crt_before = apiserver_crt.read_bytes()
    args = (str(run.spec),)

    recorder = TrustRecorder(Path(info.kubeconfig), list(info.apiservers))
    with recorder:
        wait_until("the recorder's first poll", lambda: recorder.polls > 0, timeout=30)
        run.consumers_before = set(recorder.pods)
        run.plan_text = careconcile("plan", *args, workspace=run.workspace).stdout
        # 1. The frozen budget stops apply before phase 3.
        run.blocked = careconcile("apply", *args, "--auto-approve", workspace=run.workspace)
        run.apiserver_crt_after_block = apiserver_crt.read_bytes()
        # 2. Held after phase 2: drift.
        _, run.drift_held = drift(run.spec, run.workspace)
        # 3. The budget allows a disruption again; apply is killed during the restarts, then resumed.
        with client(info) as api:
            api.patch("/apis/policy/v1/namespaces/frozen/poddisruptionbudgets/web", {"spec": {"minAvailable": 1}})
            wait_until("the frozen budget allows a disruption", lambda: (api.get(
                "/apis/policy/v1/namespaces/frozen/poddisruptionbudgets/web").get("status") or {}).get(
                "disruptionsAllowed", 0) >= 1, timeout=30)
        run.generations_before = generations(info)
        with client(info) as api:
            run.lone_pods_before = lone_pods(api.list("/api/v1/namespaces/default/pods"))
        run.killed = careconcile("apply", *args, "--auto-approve", workspace=run.workspace,
                                 env={CRASH_AFTER_ENV: str(KILLED_AFTER)})
        logs = sorted((run.workspace / NAME / "log").glob("apply-*/apply.log"))
        run.killed_log = logs[-1].read_text()
        run.resumed = careconcile("apply", *args, "--auto-approve", workspace=run.workspace)
    run.rotation = recorder
    run.generations_after = generations(info)
    run.annotations_after = restart_annotations(info)
    run.new_ca = pki.fingerprint(record_ca(info).cert)
    with client(info) as api:
        pods = api.list("/api/v1/namespaces/default/pods")
        run.bare_consumer_left = any(pod["metadata"]["name"] == "bare-consumer" for pod in pods)
        run.lone_pods_after = lone_pods(pods)
    _, run.drift_after = drift(run.spec, run.workspace)

    # 4. A second rotation, rolled back after phase 3.
    set_rotation(run.spec, 2)
    rollback_recorder = TrustRecorder(Path(info.kubeconfig), list(info.apiservers))
    with rollback_recorder:
        wait_until("the recorder's first poll", lambda: rollback_recorder.polls > 0, timeout=30)
        run.rollback_until_3 = careconcile("apply", *args, "--auto-approve", "--until", "3", workspace=run.workspace)
        state = json.loads(careconcile("plan", *args, "--format", "json", workspace=run.workspace).stdout)
        run.abandoned_ca = state["clusters"][0]["new_ca"]
        run.rollback = careconcile("rollback", *args, "--auto-approve", workspace=run.workspace)
    run.rollback_recorder = rollback_recorder

    # 5. The control: a rotation with restarts turned off, which the recorder must catch.
    set_workloads(run.spec, {"restart": False})
    set_rotation(run.spec, 3)
    unrestarted = TrustRecorder(Path(info.kubeconfig), list(info.apiservers))
    with unrestarted:
        wait_until("the recorder's first poll", lambda: unrestarted.polls > 0, timeout=30)
        run.unrestarted_apply = careconcile("apply", *args, "--auto-approve", workspace=run.workspace)
    run.unrestarted = unrestarted
    _, run.drift_unrestarted = drift(run.spec, run.workspace)
    return run


def test_apply_stops_before_phase_3_on_a_budget_that_allows_no_disruption(scenario):
    assert re.search(r"warning: deployment/frozen/web: .*PodDisruptionBudget frozen/web .*allows no disruption",
                     scenario.plan_text), scenario.plan_text
    assert "restart-workload deployment/frozen/web" in scenario.plan_text
    blocked = scenario.blocked
    assert blocked.returncode == 1, blocked.stdout[-2000:] + blocked.stderr
    assert "PodDisruptionBudget frozen/web" in blocked.stderr and "nothing was restarted or reissued" in blocked.stderr
    assert "Traceback" not in blocked.stderr
    # Phase 2 ran, nothing of phase 3 did: the serving certificate is the old one, no workload was touched.
    assert "verify phase-2: done" in blocked.stdout
    assert not re.search(r"(reissue|switch-signer) .*: done", blocked.stdout)
    assert not re.search(r"restart-workload .*: done", blocked.stdout)
    assert scenario.apiserver_crt_after_block == scenario.apiserver_crt_before


def test_drift_reports_pods_started_with_only_the_old_ca_while_the_rotation_is_held(scenario):
    report = scenario.drift_held
    pending = {f["subject"] for f in report["clusters"][0]["findings"] if f["kind"] == "workload-restart-pending"}
    # Every workload, the bare pod created by hand before the rotation included.
    assert {"pod/default/bare-consumer", "deployment/frozen/web", "deployment/kube-system/coredns",
            "daemonset/kube-system/kube-proxy", "statefulset/app-1/db"} <= pending
    assert {f"deployment/app-{index}/web" for index in range(1, SAMPLES + 1)} <= pending
    assert "replicaset/default/lone" in pending
    assert "pod/default/bare-keeper" not in pending  # it does not read the CA
    assert report["totals"]["by_kind"]["rotation-half-done"] == 1


def test_no_running_pod_ever_trusts_only_a_ca_an_apiserver_does_not_present(scenario):
    recorder = scenario.rotation
    restarted = recorder.restarted(scenario.consumers_before)
    print(f"invariant: {recorder.polls} polls, {len(recorder.pods)} consumer pods seen, {restarted} started during "
          f"the rotation, {len(recorder.errors)} polls failed")
    assert recorder.violations == []
    assert recorder.polls > 50
    assert restarted >= 2 * SAMPLES + 4  # every sample Deployment's 2 pods, CoreDNS's 2, ...
    # The end: every consumer pod running trusts the new CA, and the apiserver presents a chain to it.
    assert recorder.running and all(scenario.new_ca in seen.trusts for seen in recorder.running.values())
    assert scenario.resumed.returncode == 0, scenario.resumed.stdout[-3000:] + scenario.resumed.stderr


def test_no_pod_disruption_budget_drops_below_its_desired_healthy(scenario):
    assert scenario.rotation.budget_violations == []
    assert scenario.rollback_recorder.budget_violations == []


def test_a_run_killed_during_the_restarts_and_resumed_restarts_each_controller_once(scenario):
    killed = scenario.killed
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr
    done = re.findall(r"done \S+/3/restart-workload/", scenario.killed_log)
    started = re.findall(r"start \S+/3/restart-workload/", scenario.killed_log)
    assert len(done) == KILLED_AFTER and len(started) > KILLED_AFTER, scenario.killed_log[-3000:]
    assert scenario.resumed.returncode == 0
    before, after = scenario.generations_before, scenario.generations_after
    assert set(before) == set(after)
    # Each controller's template changed exactly once for the rotation, carrying its id.
    assert {name: after[name] - before[name] for name in before} == {name: 1 for name in before}
    assert set(scenario.annotations_after.values()) == {scenario.new_ca}
    # The opted-in bare pod was evicted (nothing brings it back); the one that does not read the CA stays.
    assert not scenario.bare_consumer_left
    # The ReplicaSet's pods were evicted one at a time and brought back by it.
    assert scenario.lone_pods_after and scenario.lone_pods_after.isdisjoint(scenario.lone_pods_before)
    assert len(scenario.lone_pods_after) == 2


def test_drift_is_clean_after_the_rotation(scenario):
    report = scenario.drift_after
    assert report["clusters"][0]["findings"] == [], report["clusters"][0]["findings"]


def test_a_rollback_after_phase_3_leaves_no_pod_trusting_only_the_abandoned_ca(scenario):
    assert scenario.rollback_until_3.returncode == 0, scenario.rollback_until_3.stderr
    assert scenario.rollback.returncode == 0, scenario.rollback.stdout[-2000:] + scenario.rollback.stderr
    recorder = scenario.rollback_recorder
    assert recorder.violations == []
    abandoned, kept = scenario.abandoned_ca, scenario.new_ca
    assert abandoned.startswith("sha256:") and abandoned != kept
    assert recorder.running
    # Every pod seen, whenever it started (the second rotation restarted them all before its
    # phase 3), trusts the CA the rollback returns to; the last poll's include some that
    # started during the second rotation, trusting both.
    assert all(kept in seen.trusts for seen in recorder.pods.values())
    assert any(abandoned in seen.trusts for seen in recorder.running.values())
    # The rollback restarted nothing: the pods trusted the CA it returns to already.
    assert "restart-workload" not in scenario.rollback.stdout


def test_the_recorder_catches_pods_left_unrestarted(scenario):
    """The control for the invariant: with `restart: false` the plan warns, nothing restarts,
    the recorder sees pods that cannot verify the apiserver, and drift names them after."""
    result = scenario.unrestarted_apply
    assert result.returncode == 0, result.stderr
    assert "warning: deployment/app-1/web:" in result.stdout and "workloads.restart: false" in result.stdout
    assert not re.search(r"restart-workload .*: done", result.stdout)
    assert scenario.unrestarted.violations, "the recorder saw no pod trusting only the old CA"
    pending = {f["subject"] for f in scenario.drift_unrestarted["clusters"][0]["findings"]
               if f["kind"] == "workload-restart-pending"}
    assert {"deployment/kube-system/coredns", "daemonset/kube-system/kube-proxy", "statefulset/app-1/db"} <= pending
