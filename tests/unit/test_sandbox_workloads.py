"""The sandbox's workloads as objects, and how it judges a rollout done."""

from __future__ import annotations

import pytest

from reconciler.sandbox import _workloads
from reconciler.sandbox._workloads import Workload, rolled_out


def test_addons_are_kubeadms_with_a_budget_for_coredns():
    objects = {(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]): obj
               for _, obj in _workloads.addon_objects()}
    proxy = objects[("DaemonSet", "kube-system", "kube-proxy")]["spec"]["template"]["spec"]
    assert proxy["serviceAccountName"] == "kube-proxy" and proxy["hostNetwork"] is True
    assert proxy["tolerations"] == [{"operator": "Exists"}]  # on every node, as kubeadm's
    dns = objects[("Deployment", "kube-system", "coredns")]
    assert dns["spec"]["replicas"] == 2 and dns["spec"]["template"]["spec"]["serviceAccountName"] == "coredns"
    budget = objects[("PodDisruptionBudget", "kube-system", "kube-dns")]["spec"]
    assert budget["selector"] == dns["spec"]["selector"] and budget["minAvailable"] == 1
    assert ("ServiceAccount", "kube-system", "kube-proxy") in objects
    assert ("ServiceAccount", "kube-system", "coredns") in objects
    # no pod opts out of the ServiceAccount token, so each mounts kube-root-ca.crt
    for _, obj in _workloads.addon_objects() + _workloads.sample_objects(2):
        template = obj.get("spec", {}).get("template")
        if template:
            assert "automountServiceAccountToken" not in template["spec"]


def test_n_sample_namespaces_each_with_a_deployment_and_budget_and_one_statefulset():
    assert _workloads.sample_objects(0) == []
    kinds = [(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
             for _, obj in _workloads.sample_objects(3)]
    for index in (1, 2, 3):
        assert ("Namespace", None, f"app-{index}") in kinds
        assert ("Deployment", f"app-{index}", "web") in kinds
        assert ("PodDisruptionBudget", f"app-{index}", "web") in kinds
    assert [k for k in kinds if k[0] == "StatefulSet"] == [("StatefulSet", "app-1", "db")]
    assert _workloads.workloads(3) == [
        Workload("DaemonSet", "kube-system", "kube-proxy"), Workload("Deployment", "kube-system", "coredns"),
        Workload("Deployment", "app-1", "web"), Workload("Deployment", "app-2", "web"),
        Workload("Deployment", "app-3", "web"), Workload("StatefulSet", "app-1", "db")]
    # each object goes to its own collection, in its own namespace
    collections = {}
    for path, obj in _workloads.addon_objects() + _workloads.sample_objects(3):
        collections.setdefault(obj["kind"], set()).add(path.rsplit("/", 1)[1])
        assert "namespace" not in obj["metadata"] or f"/namespaces/{obj['metadata']['namespace']}/" in path
    assert collections == {"ServiceAccount": {"serviceaccounts"}, "DaemonSet": {"daemonsets"},
                           "Deployment": {"deployments"}, "PodDisruptionBudget": {"poddisruptionbudgets"},
                           "Namespace": {"namespaces"}, "StatefulSet": {"statefulsets"}}


class _Reads:
    """Answers the one GET rolled_out makes with a canned object."""

    def __init__(self, item: dict) -> None:
        self.item = item
        self.paths: list[str] = []

    def call(self, what, method, path, body=None, **options):
        assert method == "GET"
        self.paths.append(path)
        return self.item


def _object(generation: int, spec: dict, status: dict) -> dict:
    return {"metadata": {"generation": generation}, "spec": spec, "status": status}


DEPLOYMENT = Workload("Deployment", "app-1", "web")


@pytest.mark.parametrize("status, done", [
    ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, True),
    ({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, False),  # not seen yet
    ({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 3}, False),  # surge pod
    ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}, False),  # old pod
    ({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}, False),  # not ready
    ({"observedGeneration": 2, "replicas": 2, "availableReplicas": 2}, False),  # no count of updated ones: 0
], ids=["done", "generation-not-observed", "surge-pod-left", "old-pod-left", "one-unavailable", "counts-left-out"])
def test_a_deployment_is_rolled_out_when_every_replica_is_updated_and_available(status, done):
    reads = _Reads(_object(2, {"replicas": 2}, status))
    assert rolled_out(reads, DEPLOYMENT) is done
    assert reads.paths == ["/apis/apps/v1/namespaces/app-1/deployments/web"]


def test_a_deployment_scaled_to_zero_is_rolled_out_though_the_api_leaves_its_counts_out():
    assert rolled_out(_Reads(_object(3, {"replicas": 0}, {"observedGeneration": 3})), DEPLOYMENT)


@pytest.mark.parametrize("status, done", [
    ({"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3}, True),
    ({"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 2, "numberAvailable": 3}, False),
    ({"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 2}, False),
    ({"observedGeneration": 1}, True),  # no node to run on: nothing to wait for, as kubectl judges it
    ({"observedGeneration": 0, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3}, False),
], ids=["done", "old-pod-left", "one-unavailable", "no-node", "generation-not-observed"])
def test_a_daemonset_is_rolled_out_on_every_node_it_schedules_to(status, done):
    reads = _Reads(_object(1, {}, status))
    assert rolled_out(reads, Workload("DaemonSet", "kube-system", "kube-proxy")) is done


def test_a_statefulset_counts_ready_replicas():
    status = {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}
    assert rolled_out(_Reads(_object(1, {"replicas": 2}, status)), Workload("StatefulSet", "app-1", "db"))
    assert not rolled_out(_Reads(_object(1, {"replicas": 2}, status | {"readyReplicas": 1})),
                          Workload("StatefulSet", "app-1", "db"))


@pytest.mark.parametrize("options, message", [
    ({"workloads": -1}, "--workloads cannot be negative"),
    ({"lease_handover": "instant"}, "--lease-handover must be one of fast, kubeadm, not 'instant'"),
])
def test_up_refuses_a_bad_option_before_it_makes_anything(tmp_path, monkeypatch, options, message):
    from reconciler import sandbox
    from reconciler.errors import SandboxError
    from reconciler.sandbox._paths import ROOT_ENV

    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    with pytest.raises(SandboxError) as error:
        sandbox.up("bad", **options)
    assert message in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no sandbox directory made
