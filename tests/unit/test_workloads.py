"""The pods that read the cluster CA at start and their restart before phase 3 (pure code).

Pods, controllers and PodDisruptionBudgets are built here as the API returns them; the
cluster model of the plan tests (one control plane, one worker) comes from test_diff, and
a ClusterObservation gets its workloads with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from reconciler.core.diff import diff, workload_findings
from reconciler.core.observed import NEW_CA, StoredState, item_digests
from reconciler.core.plan import ClusterPlan, RestartWorkloadParams, plan_cluster, summary_counts, summary_line
from reconciler.core.sites import Workload
from reconciler.core.spec import (
    ResolvedWorkloads, WorkloadSettings, format_timeout, parse_timeout, resolve_authority, resolve_workloads,
)
from reconciler.core.workloads import (
    MIRROR_POD, RESTARTED_FOR, ObservedBudget, ObservedPod, ObservedWorkload, PodTrust, decide, excluded,
    TRUST_MARGIN, group_workloads, reads_cluster_ca, reason, rollout_complete, trusted_since,
)
from reconciler.shell.specfile import load_spec
from tests.unit.test_diff import CLUSTER, NOW, cert_fp, desired, in_progress, observation
from tests.unit.test_plan import after_reissue, after_trust_both, select
from tests.unit.test_spec_loader import VALID, problems_of, write

UTC = dt.timezone.utc
# Phase 2's check saw every kube-root-ca.crt trusting both CAs at 11:30 (margin included).
SINCE = dt.datetime(2026, 11, 28, 11, 30, tzinfo=UTC)
BEFORE = "2026-11-28T11:00:00Z"  # a pod that started then read the old CA alone
AFTER = "2026-11-28T11:45:00Z"  # one that started then read both
ALONE = cert_fp("old")
OLD = SINCE - dt.timedelta(hours=1)  # as observed values
NEWER = SINCE + dt.timedelta(minutes=10)

# --- API objects ---------------------------------------------------------------------------

KUBE_API_ACCESS = {  # what the ServiceAccount admission plugin adds to every pod
    "name": "kube-api-access-x7k2p",
    "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]},
}
EMPTY_DIR = {"name": "scratch", "emptyDir": {}}


def ref(kind: str, name: str, uid: str | None = None, *, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid or f"uid-{kind}-{name}",
            "controller": controller, "blockOwnerDeletion": True}


def pod(name: str, namespace: str = "app", *, owner: dict | None = None, volumes: list | None = None,
        labels: dict[str, str] | None = None, started: str | None = BEFORE, phase: str = "Running",
        annotations: dict[str, str] | None = None, extra_owners: tuple = (), deleting: bool = False,
        node: str = "w1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-pod-{namespace}-{name}",
                            "labels": labels or {}}
    owners = list(extra_owners) + ([owner] if owner else [])
    if owners:
        meta["ownerReferences"] = owners
    if annotations:
        meta["annotations"] = annotations
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T11:59:00Z"
    status: dict[str, Any] = {"phase": phase}
    if started is not None:
        status["startTime"] = started
    return {"metadata": meta, "spec": {"nodeName": node, "volumes": [KUBE_API_ACCESS] if volumes is None else volumes},
            "status": status}


def controller(kind: str, name: str, namespace: str = "app", *, replicas: int | None = 2, owner: dict | None = None,
               template_annotations: dict[str, str] | None = None, update_strategy: dict | None = None,
               paused: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {"metadata": {"labels": {"app": name}}, "spec": {}}}
    if replicas is not None:
        spec["replicas"] = replicas
    if template_annotations:
        spec["template"]["metadata"]["annotations"] = template_annotations
    if update_strategy is not None:
        spec["updateStrategy"] = update_strategy
    if paused:
        spec["paused"] = True
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{kind}-{name}"}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"metadata": meta, "spec": spec}


def pdb(name: str, namespace: str = "app", *, selector: dict | None, expected: int = 2, desired_healthy: int = 1,
        current: int = 2, allowed: int = 1) -> dict[str, Any]:
    spec = {"minAvailable": desired_healthy}
    if selector is not None:
        spec["selector"] = selector
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-pdb-{name}"}, "spec": spec,
            "status": {"expectedPods": expected, "desiredHealthy": desired_healthy, "currentHealthy": current,
                       "disruptionsAllowed": allowed, "observedGeneration": 1}}


def deployment_pods(name: str = "web", namespace: str = "app", *, pods: int = 2, rs_hash: str = "5d9f8",
                    labels: dict[str, str] | None = None, started: str = BEFORE, **options):
    """A Deployment, its ReplicaSet and its pods: (pods, replicasets, deployment)."""
    deployment = controller("Deployment", name, namespace, replicas=pods, **options)
    replicaset = controller("ReplicaSet", f"{name}-{rs_hash}", namespace, replicas=pods,
                            owner=ref("Deployment", name))
    owned = [pod(f"{name}-{rs_hash}-{index}", namespace, owner=ref("ReplicaSet", f"{name}-{rs_hash}"),
                 labels=labels or {"app": name}, started=started) for index in range(pods)]
    return owned, [replicaset], deployment


def group(pods, replicasets=(), *, deployments=(), statefulsets=(), daemonsets=(), jobs=(), budgets=(), selector=()):
    controllers = {"Deployment": list(deployments), "StatefulSet": list(statefulsets),
                   "DaemonSet": list(daemonsets), "Job": list(jobs)}
    return group_workloads(list(pods), list(replicasets), controllers, list(budgets), tuple(selector))


def by_id(workloads) -> dict[str, ObservedWorkload]:
    return {workload.id: workload for workload in workloads}


# --- observed values -------------------------------------------------------------------------


def opod(name: str, started: dt.datetime | None, namespace: str = "app") -> ObservedPod:
    return ObservedPod(namespace=namespace, name=name, uid=f"uid-{name}", started=started,
                       reads="kube-root-ca.crt (projected)")


def budget(name: str = "web", *, expected: int = 2, desired_healthy: int = 1, allowed: int = 1) -> ObservedBudget:
    return ObservedBudget(namespace="app", name=name, expected_pods=expected, desired_healthy=desired_healthy,
                          current_healthy=expected, disruptions_allowed=allowed)


def workload(kind: str = "Deployment", name: str = "web", namespace: str = "app", *,
             started: tuple[dt.datetime | None, ...] = (OLD,), **options) -> ObservedWorkload:
    pods = tuple(opod(f"{name}-{index}", moment, namespace) for index, moment in enumerate(started))
    replicas = options.pop("replicas", len(pods) if kind in ("Deployment", "StatefulSet", "ReplicaSet") else None)
    return ObservedWorkload(kind=kind, namespace=namespace, name=name, pods=pods, replicas=replicas, **options)


RECORDED = PodTrust(ALONE, SINCE)  # phase 2's check recorded when pods began trusting both
NO_RECORD_YET = PodTrust(ALONE, None)


def plan(wanted, observed, *, rollback: bool = False) -> ClusterPlan:
    """As the session plans: the findings of a rollback are a rollback's (diff with rollback=True)."""
    findings = diff(wanted, observed, now=NOW, rollback=rollback)
    return plan_cluster(wanted, observed, findings, rollback=rollback, digest=observed.digest(),
                        items=item_digests(observed))


def with_workloads(observed, *workloads: ObservedWorkload):
    return dataclasses.replace(observed, workloads=tuple(workloads))


def trusted(verified: int, **changes) -> StoredState:
    """The state store of a rotation whose phase 2 check recorded when pods began trusting both."""
    return in_progress(verified, workloads_trusted_since=SINCE, workloads_trusted_alone=ALONE, **changes)


# --- reads_cluster_ca -----------------------------------------------------------------------------


def test_the_automounted_projected_volume_reads_kube_root_ca():
    assert reads_cluster_ca(pod("p")) == "kube-root-ca.crt (projected)"


def test_a_projected_volume_of_other_sources_does_not():
    token_only = {"name": "token", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}}, {"configMap": {"name": "app-config"}}]}}
    assert reads_cluster_ca(pod("p", volumes=[token_only, EMPTY_DIR])) is None


def test_a_configmap_volume_of_kube_root_ca_reads_it():
    volume = {"name": "ca", "configMap": {"name": "kube-root-ca.crt"}}
    assert reads_cluster_ca(pod("p", volumes=[EMPTY_DIR, volume])) == "kube-root-ca.crt (configMap volume)"
    other = {"name": "conf", "configMap": {"name": "kube-root-ca.crt.bak"}}
    assert reads_cluster_ca(pod("p", volumes=[other])) is None


@pytest.mark.parametrize("path,reads", [
    ("/etc/kubernetes/pki", "hostPath /etc/kubernetes/pki"),
    ("/etc/kubernetes/pki/", "hostPath /etc/kubernetes/pki"),
    ("/etc/kubernetes/pki/etcd", "hostPath /etc/kubernetes/pki/etcd"),
    ("/etc/kubernetes/pki/ca.crt", "hostPath /etc/kubernetes/pki/ca.crt"),
    ("/etc/kubernetes", "hostPath /etc/kubernetes"),  # a parent holds the directory
    ("/etc", "hostPath /etc"),
    ("/etc/kubernetes/pki-backup", None),  # a prefix of the name, not of the path
    ("/etc/kubernetes/manifests", None),
    ("/var/lib/kubelet", None),
    ("/etc/kube", None),
])
def test_a_host_path_reads_the_ca_when_it_is_or_holds_or_is_under_the_pki_directory(path, reads):
    volume = {"name": "host", "hostPath": {"path": path, "type": "Directory"}}
    assert reads_cluster_ca(pod("p", volumes=[volume])) == reads


def test_the_specs_selector_names_pods_that_read_the_ca_another_way():
    plain = pod("p", volumes=[EMPTY_DIR], labels={"app": "web", "tier": "front", "extra": "x"})
    assert reads_cluster_ca(plain) is None
    assert reads_cluster_ca(plain, (("app", "web"), ("tier", "front"))) == "the spec's workloads.selector"
    # Every label of the selector must match.
    assert reads_cluster_ca(plain, (("app", "web"), ("tier", "back"))) is None
    assert reads_cluster_ca(plain, (("app", "web"), ("missing", "x"))) is None
    assert reads_cluster_ca(pod("p", volumes=[EMPTY_DIR]), (("app", "web"),)) is None


def test_a_volume_wins_over_the_selector_in_how_a_pod_reads():
    assert reads_cluster_ca(pod("p", labels={"app": "web"}), (("app", "web"),)) == "kube-root-ca.crt (projected)"


def test_a_pod_without_volumes_or_a_spec_reads_nothing():
    assert reads_cluster_ca(pod("p", volumes=[])) is None
    assert reads_cluster_ca({"metadata": {"name": "p"}}) is None
    assert reads_cluster_ca({"metadata": {"name": "p"}, "spec": None}) is None
    assert reads_cluster_ca({"metadata": {"name": "p"}, "spec": {"volumes": None}}) is None
    assert reads_cluster_ca({}, (("app", "web"),)) is None


def test_malformed_volumes_are_skipped_and_a_later_good_one_still_counts():
    malformed = [
        "not-a-mapping", None, 3, {},
        {"name": "a", "projected": None},
        {"name": "b", "projected": {"sources": None}},
        {"name": "c", "projected": {"sources": ["x", None, {"configMap": None}, {"configMap": {}}]}},
        {"name": "d", "configMap": None},
        {"name": "e", "configMap": {"name": None}},
        {"name": "f", "hostPath": None},
        {"name": "g", "hostPath": {}},
        {"name": "h", "hostPath": {"path": None}},
        {"name": "i", "hostPath": {"path": ""}},
    ]
    assert reads_cluster_ca(pod("p", volumes=malformed)) is None
    good = {"name": "ca", "configMap": {"name": "kube-root-ca.crt"}}
    assert reads_cluster_ca(pod("p", volumes=malformed + [good])) == "kube-root-ca.crt (configMap volume)"


@pytest.mark.parametrize("volume", [
    {"name": "a", "projected": "kube-root-ca.crt"},
    {"name": "b", "configMap": "kube-root-ca.crt"},
    {"name": "c", "hostPath": "/etc/kubernetes/pki"},
], ids=["projected", "configMap", "hostPath"])
def test_a_volume_field_of_the_wrong_type_is_skipped(volume):
    assert reads_cluster_ca(pod("p", volumes=[volume])) is None


# --- group_workloads ------------------------------------------------------------------------------


def test_pods_of_a_deployment_are_grouped_through_their_replicaset_under_the_deployment():
    pods, replicasets, deployment = deployment_pods("web", pods=3)
    # The ReplicaSet a rollout leaves behind still holds a pod for a moment: same Deployment.
    old_rs = controller("ReplicaSet", "web-old", replicas=0, owner=ref("Deployment", "web"))
    pods.append(pod("web-old-1", owner=ref("ReplicaSet", "web-old"), labels={"app": "web"}))
    [observed] = group(pods, replicasets + [old_rs], deployments=[deployment])
    assert (observed.kind, observed.namespace, observed.name) == ("Deployment", "app", "web")
    assert observed.id == "deployment/app/web"
    assert observed.method == "rollout"
    assert observed.replicas == 3  # the Deployment's, not a ReplicaSet's
    assert sorted(p.name for p in observed.pods) == ["web-5d9f8-0", "web-5d9f8-1", "web-5d9f8-2", "web-old-1"]
    first = next(p for p in observed.pods if p.name == "web-5d9f8-0")
    assert first == ObservedPod(namespace="app", name="web-5d9f8-0", uid="uid-pod-app-web-5d9f8-0",
                                started=dt.datetime(2026, 11, 28, 11, 0, tzinfo=UTC),
                                reads="kube-root-ca.crt (projected)", terminating=False, node="w1")


def test_a_statefulset_and_a_daemonset_roll_their_own_pods():
    sts = controller("StatefulSet", "db", replicas=2)
    ds = controller("DaemonSet", "agent", "kube-system", replicas=None)
    pods = [pod("db-0", owner=ref("StatefulSet", "db")), pod("db-1", owner=ref("StatefulSet", "db")),
            pod("agent-abcde", "kube-system", owner=ref("DaemonSet", "agent"))]
    workloads = by_id(group(pods, statefulsets=[sts], daemonsets=[ds]))
    assert set(workloads) == {"statefulset/app/db", "daemonset/kube-system/agent"}
    db, agent = workloads["statefulset/app/db"], workloads["daemonset/kube-system/agent"]
    assert (db.kind, db.method, db.replicas, len(db.pods)) == ("StatefulSet", "rollout", 2, 2)
    assert (agent.kind, agent.method, agent.replicas, len(agent.pods)) == ("DaemonSet", "rollout", None, 1)


def test_a_replicaset_no_deployment_owns_is_evicted():
    replicaset = controller("ReplicaSet", "legacy", replicas=2)
    pods = [pod(f"legacy-{i}", owner=ref("ReplicaSet", "legacy")) for i in range(2)]
    [observed] = group(pods, [replicaset])
    assert (observed.kind, observed.name, observed.method, observed.replicas) == ("ReplicaSet", "legacy", "evict", 2)


def test_a_replicaset_whose_deployment_is_not_listed_stays_a_replicaset():
    # Its owner reference names a Deployment that is gone (or not a Deployment careconcile listed).
    replicaset = controller("ReplicaSet", "orphan-1", replicas=1, owner=ref("Deployment", "orphan"))
    [observed] = group([pod("orphan-1-a", owner=ref("ReplicaSet", "orphan-1"))], [replicaset])
    assert (observed.kind, observed.name, observed.method) == ("ReplicaSet", "orphan-1", "evict")


def test_pods_of_a_job_are_waited_for():
    job = controller("Job", "migrate", replicas=None)
    [observed] = group([pod("migrate-x1", owner=ref("Job", "migrate"))], jobs=[job])
    assert (observed.kind, observed.id, observed.method, observed.replicas) == ("Job", "job/app/migrate", "wait", None)


def test_pods_of_an_owner_careconcile_has_no_rollout_for_are_owned_and_evicted():
    # A custom resource's controller (an Argo Rollout, a CloudNativePG Cluster) brings them back.
    pods = [pod("pg-1", owner=ref("Cluster", "pg")), pod("pg-2", owner=ref("Cluster", "pg"))]
    [observed] = group(pods)
    assert (observed.kind, observed.name, observed.owner_kind, observed.method) == ("Owned", "pg", "Cluster", "evict")
    assert observed.id == "owned/app/pg"
    assert observed.describe() == "pods of Cluster app/pg"
    assert len(observed.pods) == 2 and observed.replicas is None


def test_a_bare_pod_is_its_own_workload():
    # An owner reference that is not the controller does not make the pod owned.
    [observed] = group([pod("debug", extra_owners=(ref("ConfigMap", "x", controller=False),))])
    assert (observed.kind, observed.id, observed.method) == ("Pod", "pod/app/debug", "evict")
    assert observed.describe() == "Pod app/debug"


def test_mirror_pods_and_finished_pods_are_left_out():
    pods = [
        pod("kube-apiserver-cp1", "kube-system", annotations={MIRROR_POD: "abc123"},
            owner=ref("Node", "cp1"), volumes=[{"name": "k8s-certs", "hostPath": {"path": "/etc/kubernetes/pki"}}]),
        pod("done", phase="Succeeded"),
        pod("crashed", phase="Failed"),
        pod("pending", phase="Pending", started=None),
        pod("running"),
    ]
    assert [w.id for w in group(pods)] == ["pod/app/pending", "pod/app/running"]


def test_pods_that_do_not_read_the_ca_are_left_out_and_a_selector_brings_them_in():
    pods = [pod("static-site", volumes=[EMPTY_DIR], labels={"app": "site"}), pod("reader")]
    assert [w.id for w in group(pods)] == ["pod/app/reader"]
    workloads = group(pods, selector=(("app", "site"),))
    assert [w.id for w in workloads] == ["pod/app/reader", "pod/app/static-site"]
    assert workloads[1].pods[0].reads == "the spec's workloads.selector"


def test_a_terminating_pod_is_marked_and_keeps_its_node():
    [observed] = group([pod("leaving", deleting=True, node="w2")])
    assert observed.pods[0].terminating and observed.pods[0].node == "w2"
    [staying] = group([pod("staying")])
    assert not staying.pods[0].terminating


@pytest.mark.parametrize("strategy,method", [
    ({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}, "rollout"),
    ({"type": "RollingUpdate"}, "rollout"),
    ({"type": "OnDelete"}, "evict"),
    ({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}, "evict"),
])
def test_a_statefulset_that_would_not_roll_on_its_template_is_evicted(strategy, method):
    sts = controller("StatefulSet", "db", replicas=2, update_strategy=strategy)
    [observed] = group([pod("db-0", owner=ref("StatefulSet", "db"))], statefulsets=[sts])
    assert observed.method == method
    assert observed.rolls_on_annotation == (method == "rollout")


def test_a_daemonset_on_delete_is_evicted():
    ds = controller("DaemonSet", "agent", replicas=None, update_strategy={"type": "OnDelete"})
    [observed] = group([pod("agent-x", owner=ref("DaemonSet", "agent"))], daemonsets=[ds])
    assert (observed.kind, observed.method) == ("DaemonSet", "evict")


def test_the_template_annotation_says_which_rotation_a_controller_was_restarted_for():
    pods, replicasets, deployment = deployment_pods(template_annotations={
        RESTARTED_FOR: "sha256:" + "ab" * 32, "kubectl.kubernetes.io/restartedAt": "2026-11-28T11:40:00Z"})
    [observed] = group(pods, replicasets, deployments=[deployment])
    assert observed.restarted_for == "sha256:" + "ab" * 32
    plain_pods, plain_rs, plain = deployment_pods("api")
    assert group(plain_pods, plain_rs, deployments=[plain])[0].restarted_for is None


def test_a_paused_deployment_is_marked_paused():
    pods, replicasets, deployment = deployment_pods(paused=True)
    assert group(pods, replicasets, deployments=[deployment])[0].paused
    pods, replicasets, deployment = deployment_pods()
    assert not group(pods, replicasets, deployments=[deployment])[0].paused


def test_workloads_come_sorted_by_kind_namespace_and_name():
    pods = [pod("z", "b"), pod("a", "b"), pod("m", "a"), pod("db-0", owner=ref("StatefulSet", "db"))]
    ids = [w.id for w in group(pods, statefulsets=[controller("StatefulSet", "db")])]
    assert ids == ["pod/a/m", "pod/b/a", "pod/b/z", "statefulset/app/db"]


def test_pods_of_the_same_names_in_two_namespaces_are_two_workloads():
    web_a, rs_a, dep_a = deployment_pods("web", "team-a")
    web_b, rs_b, dep_b = deployment_pods("web", "team-b", rs_hash="77c4d")
    # Controllers of the same name in two namespaces differ by uid in the API; keep them apart here.
    dep_b["metadata"]["uid"] = "uid-Deployment-web-b"
    rs_b[0]["metadata"]["ownerReferences"] = [ref("Deployment", "web", "uid-Deployment-web-b")]
    workloads = by_id(group(web_a + web_b, rs_a + rs_b, deployments=[dep_a, dep_b]))
    assert set(workloads) == {"deployment/team-a/web", "deployment/team-b/web"}
    assert {p.namespace for p in workloads["deployment/team-b/web"].pods} == {"team-b"}


# --- PodDisruptionBudgets ---------------------------------------------------------------------


def budgets_of(selector, *, labels=None, namespace="app", pdb_namespace="app"):
    pods, replicasets, deployment = deployment_pods("web", namespace, labels=labels or {"app": "web", "tier": "front"})
    [observed] = group(pods, replicasets, deployments=[deployment],
                       budgets=[pdb("web-pdb", pdb_namespace, selector=selector)])
    return [b.name for b in observed.budgets]


@pytest.mark.parametrize("selector,matches", [
    ({"matchLabels": {"app": "web"}}, True),
    ({"matchLabels": {"app": "web", "tier": "front"}}, True),
    ({"matchLabels": {"app": "web", "tier": "back"}}, False),
    ({"matchLabels": {"app": "db"}}, False),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}, False),
    ({"matchExpressions": [{"key": "missing", "operator": "In", "values": ["x"]}]}, False),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, False),
    ({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["x"]}]}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}, False),
    ({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
    # matchLabels and matchExpressions are ANDed
    ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["back"]}]},
     False),
    ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
    ({}, True),  # policy/v1: an empty selector selects every pod of the namespace
    (None, False),  # no selector selects nothing
])
def test_a_budget_selects_a_workload_by_its_pods_labels(selector, matches):
    assert budgets_of(selector) == (["web-pdb"] if matches else [])


def test_an_empty_selector_selects_pods_of_its_own_namespace_only():
    assert budgets_of({}, pdb_namespace="app") == ["web-pdb"]
    assert budgets_of({}, pdb_namespace="other") == []
    assert budgets_of({"matchLabels": {"app": "web"}}, pdb_namespace="other") == []


def test_a_budget_is_read_from_its_status():
    pods, replicasets, deployment = deployment_pods("web", pods=3)
    item = pdb("web-pdb", selector={"matchLabels": {"app": "web"}}, expected=3, desired_healthy=3, current=3,
               allowed=0)
    unrelated = pdb("db-pdb", selector={"matchLabels": {"app": "db"}})
    [observed] = group(pods, replicasets, deployments=[deployment], budgets=[unrelated, item])
    assert observed.budgets == (ObservedBudget(namespace="app", name="web-pdb", expected_pods=3, desired_healthy=3,
                                               current_healthy=3, disruptions_allowed=0),)
    assert observed.budgets[0].never_allows


def test_a_budget_without_a_status_yet_counts_zeros():
    item = pdb("fresh", selector={}, expected=0)
    del item["status"]
    [observed] = group([pod("p")], budgets=[item])
    assert observed.budgets == (ObservedBudget("app", "fresh", 0, 0, 0, 0),)
    assert not observed.budgets[0].never_allows


# --- PodTrust and ObservedBudget ------------------------------------------------------------------


def test_with_no_time_recorded_every_pod_trusts_only_the_old_ca():
    trust = PodTrust(ALONE, None)
    for started in (OLD, NEWER, NOW + dt.timedelta(days=1)):
        assert trust.trusts_only_old(opod("p", started))


def test_a_pod_trusts_both_cas_when_it_started_at_or_after_the_recorded_time():
    trust = PodTrust(ALONE, SINCE)
    assert trust.trusts_only_old(opod("p", SINCE - dt.timedelta(microseconds=1)))
    assert not trust.trusts_only_old(opod("p", SINCE))
    assert not trust.trusts_only_old(opod("p", NEWER))


def test_a_pod_that_has_not_started_has_read_nothing_and_needs_no_restart():
    assert not PodTrust(ALONE, SINCE).trusts_only_old(opod("p", None))
    assert not PodTrust(ALONE, None).trusts_only_old(opod("p", None))
    assert decide((workload("Deployment", "idle", started=(None, None)),), PodTrust(ALONE, None),
                  ResolvedWorkloads()) == []


def test_pod_trust_of_the_state_store():
    assert trusted(2).pod_trust() == PodTrust(ALONE, SINCE)
    # Before phase 2's check recorded it, pods trust the CA the rotation started from ...
    assert in_progress(1).pod_trust() == PodTrust(cert_fp("old"), None)
    # ... which, once a rollback swapped the two, is the target of the state store.
    assert in_progress(1, target="old", previous="new", rolling_back=True).pod_trust() == PodTrust(cert_fp("old"), None)


@pytest.mark.parametrize("expected,desired_healthy,allowed,never", [
    (3, 3, 0, True),  # minAvailable = replicas (or maxUnavailable 0)
    (3, 4, 0, True),  # minAvailable above replicas
    (3, 2, 1, False),  # one may go
    (3, 2, 0, False),  # none may go now (a pod is unhealthy) but one could once it is back
    (0, 0, 0, False),  # selects no pod
])
def test_a_budget_never_allows_a_disruption_only_when_every_expected_pod_must_stay_healthy(
        expected, desired_healthy, allowed, never):
    observed = ObservedBudget("app", "b", expected_pods=expected, desired_healthy=desired_healthy,
                              current_healthy=desired_healthy + allowed, disruptions_allowed=allowed)
    assert observed.never_allows is never


def test_a_budget_describes_itself_with_its_numbers():
    assert budget("web-pdb", expected=3, desired_healthy=3, allowed=0).describe() == (
        "PodDisruptionBudget app/web-pdb (desiredHealthy 3 of 3 pods, 0 disruption(s) allowed)")


# --- excluded() and decide() ----------------------------------------------------------------------


@pytest.mark.parametrize("patterns,kind,namespace,name,hit", [
    (("kube-system",), "DaemonSet", "kube-system", "kube-proxy", "kube-system"),
    (("kube-*",), "Deployment", "kube-public", "x", "kube-*"),
    (("kube-system",), "Deployment", "app", "web", None),
    (("app/Deployment/web",), "Deployment", "app", "web", "app/Deployment/web"),
    (("app/Deployment/web",), "StatefulSet", "app", "web", None),  # another kind
    (("app/Deployment/web",), "Deployment", "app", "web-2", None),  # no implicit wildcard
    (("app-*/Deployment/web*",), "Deployment", "app-1", "web-canary", "app-*/Deployment/web*"),
    (("*/Job/*",), "Job", "batch", "nightly", "*/Job/*"),
    (("*/Job/*",), "Deployment", "batch", "nightly", None),
    (("app/*/db-?",), "StatefulSet", "app", "db-1", "app/*/db-?"),
    (("app/*/db-?",), "StatefulSet", "app", "db-10", None),
    (("app/Pod/debug",), "Pod", "app", "debug", "app/Pod/debug"),
    (("App",), "Deployment", "app", "web", None),  # case-sensitive, as Kubernetes names are
    # the first pattern that names it
    (("other", "app/Deployment/web", "app"), "Deployment", "app", "web", "app/Deployment/web"),
])
def test_excluded_names_the_pattern_that_excludes_a_workload(patterns, kind, namespace, name, hit):
    assert excluded(workload(kind, name, namespace), patterns) == hit


def test_a_pattern_of_any_kind_excludes_pods_of_an_owner_without_a_rollout():
    owned = workload("Owned", "pg", owner_kind="Cluster")
    assert excluded(owned, ("app/*/pg",)) == "app/*/pg"
    assert excluded(owned, ("app/Deployment/pg",)) is None
    # The spec knows no kind "Owned": such pods are named by their owner's name, with kind "*" only.
    assert excluded(owned, ("app/Pod/pg",)) is None


def test_decide_restarts_each_controller_the_way_it_rolls():
    workloads = (workload("Deployment", "web"), workload("Job", "migrate"), workload("ReplicaSet", "legacy"))
    decisions = decide(workloads, RECORDED, ResolvedWorkloads())
    assert [(d.workload.name, d.method, d.restarts) for d in decisions] == [
        ("web", "rollout", True), ("migrate", "wait", True), ("legacy", "evict", True)]
    assert all(d.excluded_by is None and d.blocked is None and d.forbidden is None for d in decisions)


def test_decide_counts_only_the_pods_that_started_before_the_bundles_trusted_both():
    mixed = workload(started=(OLD, NEWER, None))
    [decision] = decide((mixed,), RECORDED, ResolvedWorkloads())
    assert [p.name for p in decision.stale] == ["web-0"]  # web-2 has not started: it has read nothing


def test_decide_leaves_out_workloads_whose_pods_all_started_after():
    fresh = workload("Deployment", "fresh", started=(NEWER, SINCE))
    stale = workload("Deployment", "stale", started=(OLD,))
    assert [d.workload.name for d in decide((fresh, stale), RECORDED, ResolvedWorkloads())] == ["stale"]
    # With no time recorded yet, every pod still needs its restart.
    assert [d.workload.name for d in decide((fresh, stale), NO_RECORD_YET, ResolvedWorkloads())] == ["fresh", "stale"]


def test_decide_excludes_by_namespace_and_by_namespace_kind_and_name():
    settings = ResolvedWorkloads(exclude=("kube-system", "app/StatefulSet/db-*"))
    workloads = (workload("DaemonSet", "kube-proxy", "kube-system"), workload("StatefulSet", "db-main"),
                 workload("Deployment", "db-main"))
    decisions = decide(workloads, RECORDED, settings)
    assert [(d.workload.id, d.excluded_by, d.restarts) for d in decisions] == [
        ("daemonset/kube-system/kube-proxy", "kube-system", False),
        ("statefulset/app/db-main", "app/StatefulSet/db-*", False),
        ("deployment/app/db-main", None, True)]


def test_restart_false_excludes_every_workload_even_a_bare_pod():
    workloads = (workload("Deployment", "web"), workload("Pod", "debug"))
    decisions = decide(workloads, RECORDED, ResolvedWorkloads(restart=False))
    assert [(d.excluded_by, d.blocked, d.restarts) for d in decisions] == [
        ("workloads.restart: false", None, False)] * 2


def test_a_bare_pod_blocks_unless_bare_pods_may_be_evicted():
    bare = workload("Pod", "debug", "tools")
    [decision] = decide((bare,), RECORDED, ResolvedWorkloads())
    assert not decision.restarts and decision.excluded_by is None
    assert "tools/debug" in decision.blocked
    assert "evictBarePods: true" in decision.blocked  # one remedy
    assert "tools/Pod/debug" in decision.blocked and "workloads.exclude" in decision.blocked  # the other
    [evicted] = decide((bare,), RECORDED, ResolvedWorkloads(evict_bare_pods=True))
    assert evicted.restarts and evicted.blocked is None and evicted.method == "evict"


def test_the_exclude_pattern_a_blocked_pod_suggests_does_exclude_it():
    bare = workload("Pod", "debug", "tools")
    [decision] = decide((bare,), RECORDED, ResolvedWorkloads())
    suggested = next(word for word in decision.blocked.split() if word.count("/") == 2)
    [again] = decide((bare,), RECORDED, ResolvedWorkloads(exclude=(suggested,)))
    assert again.excluded_by == suggested and again.blocked is None


def test_an_excluded_bare_pod_does_not_block():
    [decision] = decide((workload("Pod", "debug"),), RECORDED, ResolvedWorkloads(exclude=("app",)))
    assert decision.excluded_by == "app" and decision.blocked is None


def test_a_pod_of_an_owner_without_a_rollout_is_evicted_without_evict_bare_pods():
    [decision] = decide((workload("Owned", "pg", owner_kind="Cluster"),), RECORDED, ResolvedWorkloads())
    assert decision.restarts and decision.method == "evict" and decision.blocked is None


def test_a_budget_that_never_allows_a_disruption_warns_but_still_restarts():
    never = budget("web-pdb", expected=2, desired_healthy=2, allowed=0)
    [decision] = decide((workload(budgets=(budget("other"), never)),), RECORDED, ResolvedWorkloads())
    assert decision.restarts
    assert "Deployment app/web" in decision.forbidden and "PodDisruptionBudget app/web-pdb" in decision.forbidden
    assert "allows no disruption" in decision.forbidden
    [fine] = decide((workload(budgets=(budget("other"),)),), RECORDED, ResolvedWorkloads())
    assert fine.forbidden is None


def test_a_paused_deployment_warns():
    [decision] = decide((workload(paused=True),), RECORDED, ResolvedWorkloads())
    assert decision.restarts and "paused" in decision.forbidden and "Deployment app/web" in decision.forbidden


def test_an_excluded_workload_gets_no_budget_warning():
    never = budget(expected=2, desired_healthy=2, allowed=0)
    [decision] = decide((workload(budgets=(never,)),), RECORDED, ResolvedWorkloads(exclude=("app",)))
    assert decision.excluded_by == "app" and decision.forbidden is None


def test_reason_says_how_many_pods_how_they_read_the_ca_and_how_they_restart():
    pods = (opod("web-0", OLD), dataclasses.replace(opod("web-1", OLD), reads="hostPath /etc/kubernetes/pki"),
            dataclasses.replace(opod("web-2", NEWER), reads="the spec's workloads.selector"))
    observed = ObservedWorkload(kind="Deployment", namespace="app", name="web", pods=pods, replicas=3,
                                budgets=(budget("web-pdb"),))
    [decision] = decide((observed,), RECORDED, ResolvedWorkloads())
    text = reason(decision)
    assert text.startswith("2 of 3 pod(s) trust only the old CA, read when they started "
                           "(hostPath /etc/kubernetes/pki, kube-root-ca.crt (projected));")
    assert "kubectl rollout restart" in text
    assert text.endswith("; PodDisruptionBudget app/web-pdb")
    assert "selector" not in text  # how a pod that already trusts both reads the CA is beside the point
    [job] = decide((workload("Job", "migrate"),), RECORDED, ResolvedWorkloads())
    assert "wait for it to finish" in reason(job) and "PodDisruptionBudget" not in reason(job)
    [evicted] = decide((workload("ReplicaSet", "legacy"),), RECORDED, ResolvedWorkloads())
    assert "Eviction API" in reason(evicted)


# --- rollout_complete -----------------------------------------------------------------------------


def rollout(generation=2, observed_generation=2, spec_replicas=3, **status):
    return {"metadata": {"generation": generation}, "spec": {"replicas": spec_replicas},
            "status": {"observedGeneration": observed_generation, **status}}


def test_a_deployment_is_rolled_out_when_every_replica_is_new_and_available_and_no_old_one_is_left():
    done = dict(replicas=3, updatedReplicas=3, availableReplicas=3)
    assert rollout_complete("Deployment", rollout(**done))
    assert not rollout_complete("Deployment", rollout(observed_generation=1, **done))  # not seen yet
    assert not rollout_complete("Deployment", rollout(**{**done, "updatedReplicas": 2}))
    assert not rollout_complete("Deployment", rollout(**{**done, "replicas": 4}))  # an old pod still terminating
    assert not rollout_complete("Deployment", rollout(**{**done, "availableReplicas": 2}))
    # A Deployment scaled to zero has nothing to roll.
    assert rollout_complete("Deployment", rollout(spec_replicas=0))


def test_a_statefulset_is_rolled_out_when_every_replica_is_updated_and_ready():
    assert rollout_complete("StatefulSet", rollout(updatedReplicas=3, readyReplicas=3, replicas=3))
    assert not rollout_complete("StatefulSet", rollout(updatedReplicas=2, readyReplicas=3))
    assert not rollout_complete("StatefulSet", rollout(updatedReplicas=3, readyReplicas=2))
    assert not rollout_complete("StatefulSet", rollout(observed_generation=1, updatedReplicas=3, readyReplicas=3))


def test_a_daemonset_is_rolled_out_when_every_scheduled_pod_is_updated_and_available():
    item = {"metadata": {"generation": 4}, "spec": {},
            "status": {"observedGeneration": 4, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3,
                       "numberAvailable": 3}}
    assert rollout_complete("DaemonSet", item)
    for key in ("updatedNumberScheduled", "numberAvailable"):
        assert not rollout_complete("DaemonSet", {**item, "status": {**item["status"], key: 2}}), key
    assert not rollout_complete("DaemonSet", {**item, "status": {**item["status"], "observedGeneration": 3}})


def test_counts_and_fields_the_api_leaves_out_are_zero_and_replicas_defaults_to_one():
    seen = {"metadata": {"generation": 1}, "spec": {}, "status": {"observedGeneration": 1}}
    assert not rollout_complete("Deployment", seen)  # spec.replicas 1, nothing updated yet
    ready = {**seen, "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}}
    assert rollout_complete("Deployment", ready)
    assert not rollout_complete("DaemonSet", {**seen, "status": {"observedGeneration": 1, "desiredNumberScheduled": 1}})
    assert rollout_complete("DaemonSet", seen)  # scheduled to no node
    # No generation at all (a hand-made object) is not "not yet observed".
    assert rollout_complete("StatefulSet", {"spec": {"replicas": 1}, "status": {"updatedReplicas": 1,
                                                                                 "readyReplicas": 1}})


# --- the plan -------------------------------------------------------------------------------------

WEB = workload("Deployment", "web", started=(OLD, OLD))
DB = workload("StatefulSet", "db", started=(OLD, NEWER))
AGENT = workload("DaemonSet", "agent", "kube-system", started=(NEWER, NEWER, NEWER))
DEBUG = workload("Pod", "debug", "tools")


def rotation(*workloads: ObservedWorkload, **settings) -> ClusterPlan:
    return plan(desired(rotation=1, workloads=ResolvedWorkloads(**settings)), with_workloads(observation(), *workloads))


def restarts(result: ClusterPlan):
    return select(result, kind="restart-workload")


def test_a_rotation_restarts_every_workload_that_reads_the_ca_first_thing_in_phase_3():
    result = rotation(WEB, DB, AGENT)
    restarted = restarts(result)
    # Nothing recorded yet: every pod read the old CA alone, whenever it started.
    assert [a.target for a in restarted] == ["deployment/app/web", "statefulset/app/db", "daemonset/kube-system/agent"]
    assert [a.id for a in restarted] == [f"{CLUSTER}/3/restart-workload/{a.target}" for a in restarted]
    assert {a.phase for a in restarted} == {3}
    kinds = [a.kind for a in select(result, phase=3)]
    assert kinds[:3] == ["restart-workload"] * 3
    assert kinds.index("switch-signer") > 2 and kinds.index("reissue") > 2
    assert "restart-workload" not in kinds[3:]
    assert not [a for a in result.actions if a.kind == "restart-workload" and a.phase != 3]


def test_a_restart_action_carries_what_the_executor_and_a_reviewer_need():
    restarted = {a.target: a for a in restarts(rotation(WEB, AGENT, workload("Job", "migrate", "batch")))}
    web, agent = restarted["deployment/app/web"], restarted["daemonset/kube-system/agent"]
    assert (web.site, web.params) == (Workload(namespace="app", workload="Deployment", name="web"),
                                      RestartWorkloadParams(method="rollout", pods=2, replicas=2))
    # A DaemonSet (or Job) has no replica count.
    assert (agent.site, agent.params) == (Workload(namespace="kube-system", workload="DaemonSet", name="agent"),
                                          RestartWorkloadParams(method="rollout", pods=3))
    assert restarted["job/batch/migrate"].params.method == "wait"
    assert restarted["deployment/app/web"].reason.startswith("2 of 2 pod(s) trust only the old CA")
    assert all(a.node is None and a.path is None and a.change is None for a in restarted.values())


def test_the_summary_line_counts_workload_restarts():
    result = rotation(WEB, AGENT)
    assert summary_counts(result.actions)["restart-workload"] == 2
    line = summary_line(result.actions)
    assert line.endswith(", 2 workload restarts.")
    assert summary_line(rotation(WEB).actions).endswith(", 1 workload restart.")
    assert "workload restart" not in summary_line(rotation().actions)


def test_a_resumed_rotation_restarts_only_workloads_with_pods_started_before_both_cas_were_trusted():
    observed = with_workloads(after_trust_both(state=trusted(2)), WEB, DB, AGENT)
    result = plan(desired(rotation=1), observed)
    assert result.operation == "resume"
    restarted = {a.target: a.params.pods for a in restarts(result)}
    assert restarted == {"deployment/app/web": 2, "statefulset/app/db": 1}
    assert select(result, phase=3)[0].kind == "restart-workload"


def test_a_resume_after_phase_2_without_a_recorded_time_restarts_every_workload():
    observed = with_workloads(after_trust_both(state=in_progress(2)), WEB, AGENT)
    assert [a.target for a in restarts(plan(desired(rotation=1), observed))] == [
        "deployment/app/web", "daemonset/kube-system/agent"]


def test_once_phase_3_is_verified_no_workload_is_restarted_or_reported():
    result = plan(desired(rotation=1), with_workloads(after_reissue(state=trusted(3)), WEB, DEBUG))
    assert not restarts(result)
    assert not [f for f in result.findings if f.code.startswith("workload-")]


def test_a_repair_restarts_no_workload():
    observed = with_workloads(observation(bundles={"w1:/etc/kubernetes/pki/ca.crt": ("foreign",)}), WEB, DEBUG)
    result = plan(desired(), observed)
    assert result.operation == "repair"
    assert not restarts(result) and not [f for f in result.findings if f.code.startswith("workload-")]


def test_a_steady_cluster_says_nothing_about_workloads():
    result = plan(desired(), with_workloads(observation(), WEB, DEBUG))
    assert result.operation == "none" and result.findings == []


@pytest.mark.parametrize("state", [
    trusted(2),
    in_progress(1),
], ids=["after-trust-both", "before-trust-both"])
def test_a_rollback_restarts_no_workload(state):
    # Every pod trusts the CA the rollback returns to: it started before or during the rotation.
    observed = with_workloads(after_trust_both(state=state), WEB, DB, DEBUG)
    forward = plan(desired(rotation=1, workloads=ResolvedWorkloads(evict_bare_pods=True)), observed)
    assert len(restarts(forward)) == 3  # the same observation, resumed forward, does restart them
    result = plan(desired(rotation=1), observed, rollback=True)
    assert result.operation == "rollback"
    assert not restarts(result)
    assert not [f for f in result.findings if f.code.startswith("workload-")]  # DEBUG does not block a rollback


@pytest.mark.parametrize("state", [
    trusted(2, target="old", previous="new", rolling_back=True),
    in_progress(1, target="old", previous="new", rolling_back=True),
], ids=["recorded", "not-recorded"])
def test_an_interrupted_rollback_resumed_restarts_no_workload(state):
    # The state store swapped the two: its target is the CA pods trusted alone.
    observed = with_workloads(after_trust_both(state=state), WEB, DB)
    for rollback in (True, False):
        result = plan(desired(rotation=1), observed, rollback=rollback)
        assert result.operation == ("rollback" if rollback else "resume")
        assert select(result, phase=4, kind="update-bundle")
        assert not restarts(result), rollback


def test_a_bare_pod_blocks_the_rotation():
    result = rotation(WEB, DEBUG)
    assert result.operation == "none" and result.actions == []
    blocking = [f for f in result.findings if f.blocking]
    assert [(f.code, f.subject) for f in blocking] == [("workload-unrestartable", "pod/tools/debug")]
    assert "evictBarePods" in blocking[0].message and "tools/Pod/debug" in blocking[0].message


def test_a_bare_pod_blocks_a_resumed_rotation_too():
    result = plan(desired(rotation=1), with_workloads(after_trust_both(state=trusted(2)), WEB, DEBUG))
    assert result.actions == []
    assert [f.code for f in result.findings if f.blocking] == ["workload-unrestartable"]


def test_a_bare_pod_that_started_after_both_cas_were_trusted_blocks_nothing():
    fresh = workload("Pod", "debug", "tools", started=(NEWER,))
    result = plan(desired(rotation=1), with_workloads(after_trust_both(state=trusted(2)), WEB, fresh))
    assert result.operation == "resume"
    assert [a.target for a in restarts(result)] == ["deployment/app/web"]


def test_a_bare_pod_is_evicted_when_the_spec_allows_it():
    result = rotation(WEB, DEBUG, evict_bare_pods=True)
    assert not [f for f in result.findings if f.blocking]
    restarted = {a.target: a.params.method for a in restarts(result)}
    assert restarted == {"deployment/app/web": "rollout", "pod/tools/debug": "evict"}


def test_an_excluded_workload_is_a_warning_and_no_action():
    result = rotation(WEB, AGENT, exclude=("kube-system",))
    assert [a.target for a in restarts(result)] == ["deployment/app/web"]
    warnings = [f for f in result.findings if f.code.startswith("workload-")]
    assert [(f.code, f.subject, f.warning, f.blocking) for f in warnings] == [
        ("workload-excluded", "daemonset/kube-system/agent", True, False)]
    assert "3 pod(s) of DaemonSet kube-system/agent" in warnings[0].message
    assert "(kube-system)" in warnings[0].message


def test_restart_false_warns_about_every_workload_and_restarts_none():
    result = rotation(WEB, DEBUG, restart=False)
    assert result.operation == "rotate" and not restarts(result)
    assert [(f.code, f.subject) for f in result.findings if f.code.startswith("workload-")] == [
        ("workload-excluded", "deployment/app/web"), ("workload-excluded", "pod/tools/debug")]
    assert all("workloads.restart: false" in f.message for f in result.findings if f.code == "workload-excluded")


def test_a_budget_that_never_allows_a_disruption_is_a_warning_and_the_restart_stays_planned():
    guarded = dataclasses.replace(WEB, budgets=(budget("web-pdb", expected=2, desired_healthy=2, allowed=0),))
    result = rotation(guarded)
    assert [a.target for a in restarts(result)] == ["deployment/app/web"]
    assert [(f.code, f.subject, f.warning, f.blocking) for f in result.findings if f.code.startswith("workload-")] == [
        ("workload-disruption-forbidden", "deployment/app/web", True, False)]


def test_workload_findings_against_a_target_pods_already_trust_alone_are_empty():
    observed = with_workloads(observation(), WEB, DEBUG)
    assert [f.code for f in workload_findings(observed, NEW_CA, ResolvedWorkloads())] == ["workload-unrestartable"]
    assert workload_findings(observed, cert_fp("old"), ResolvedWorkloads()) == []


def test_a_rotation_after_an_earlier_one_restarts_pods_started_since_that_one():
    # The first rotation (foreign -> old) kept what its pods trusted, for drift. Every pod
    # running now read "old" alone, however long after that rotation it started; planning
    # the next rotation must not take the old rotation's time for this one's.
    finished = StoredState(applied_rotation=1, retired=(cert_fp("foreign"),), workloads_trusted_since=SINCE,
                           workloads_trusted_alone=cert_fp("foreign"))
    observed = with_workloads(observation(state=finished), WEB, AGENT)
    result = plan(desired(rotation=2), observed)
    assert result.operation == "rotate"
    assert [a.target for a in restarts(result)] == ["deployment/app/web", "daemonset/kube-system/agent"]
    assert "workload restart" in summary_line(result.actions)


# --- items(): what a saved plan is checked against ------------------------------------------------


def test_workloads_are_not_items_so_a_saved_plan_survives_their_churn():
    """Jobs and Deployments come and go; apply checks before phase 3 that the plan restarts
    every workload that needs it (an integration test kills and resumes around it)."""
    state = trusted(2)
    before = item_digests(with_workloads(after_trust_both(state=state), WEB, AGENT))
    joined = item_digests(with_workloads(after_trust_both(state=state), WEB, AGENT, workload("Job", "migrate")))
    assert joined == before == item_digests(after_trust_both(state=state))
    result = plan(desired(rotation=1), with_workloads(after_trust_both(state=trusted(2)), WEB, AGENT))
    assert not [key for key in result.observed_items if "deployment/" in key or "#restart" in key]


# --- the spec -------------------------------------------------------------------------------------

WORKLOADS_AT_LINE = 20  # the first line after VALID


def workloads_block(tmp_path, block: str, *, defaults: str | None = None):
    """VALID with ``block`` (indented for the cluster) as the cluster's workloads."""
    text = VALID + "      workloads:\n" + "".join(f"        {line}\n" for line in block.splitlines())
    if defaults is not None:
        text = text.replace("spec:\n  clusters:\n", "spec:\n  defaults:\n    workloads:\n" + "".join(
            f"      {line}\n" for line in defaults.splitlines()) + "  clusters:\n")
    return write(tmp_path, text)


@pytest.mark.parametrize("block,line,column,problem", [
    ("exclude: [kube-system, app/Deploy/web]", 21, 32,
     "spec.clusters[0].workloads.exclude[1]: must be NAMESPACE or NAMESPACE/KIND/NAME (shell-style wildcards allowed; "
     "KIND one of Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, Pod or *); got 'app/Deploy/web'"),
    ("exclude:\n  - app/web", 22, 13,
     "spec.clusters[0].workloads.exclude[0]: must be NAMESPACE or NAMESPACE/KIND/NAME (shell-style wildcards allowed; "
     "KIND one of Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, Pod or *); got 'app/web'"),
    ("timeout: 5x", 21, 18,
     "spec.clusters[0].workloads.timeout: must be a whole number of seconds, minutes or hours, such as '90s', '5m' or "
     "'1h'; got '5x'"),
    ("restart: true\nmaxConcurrent: 0", 22, 24, "spec.clusters[0].workloads.maxConcurrent: "),
    ("restrat: false", 21, 9, "spec.clusters[0].workloads.restrat: unknown field; did you mean 'restart'?"),
    ("selector:\n  matchLabels:\n    'bad key!': x", 23, 13,
     "spec.clusters[0].workloads.selector.matchLabels: 'bad key!' is not a label key"),
], ids=["exclude-kind", "exclude-two-parts", "timeout", "max-concurrent", "unknown-key", "label-key"])
def test_a_bad_workloads_field_is_an_error_at_its_position(tmp_path, block, line, column, problem):
    path = workloads_block(tmp_path, block)
    message, problems = problems_of(path)
    assert message == f"{path}: invalid spec (1 error)"
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:{line}:{column}: {problem}")


def test_max_concurrent_out_of_range_says_the_bound(tmp_path):
    _, [problem] = problems_of(workloads_block(tmp_path, "maxConcurrent: 0"))
    assert problem.endswith("greater than or equal to 1")
    _, [problem] = problems_of(workloads_block(tmp_path, "maxConcurrent: 101"))
    assert problem.endswith("less than or equal to 100")


def test_a_bad_workloads_default_is_an_error_at_its_position(tmp_path):
    path = workloads_block(tmp_path, "restart: true", defaults="timeout: 0s")
    _, problems = problems_of(path)
    assert problems == [f"{path}:8:16: spec.defaults.workloads.timeout: must be a whole number of seconds, minutes or "
                        "hours, such as '90s', '5m' or '1h'; got '0s'"]


def test_every_bad_workloads_field_is_reported(tmp_path):
    path = workloads_block(tmp_path, "timeout: 1d\nexclude: ['a/b/c/d']\nevictBarePods: yes please")
    message, problems = problems_of(path)
    assert message == f"{path}: invalid spec (3 errors)"
    assert [problem.split(": ")[1] for problem in problems] == [
        "spec.clusters[0].workloads.timeout", "spec.clusters[0].workloads.exclude[0]",
        "spec.clusters[0].workloads.evictBarePods"]
    assert [problem.split(":")[1] for problem in problems] == ["21", "22", "23"]


def test_a_bad_label_value_is_an_error(tmp_path):
    _, [problem] = problems_of(workloads_block(tmp_path, "selector:\n  matchLabels:\n    app: 'not ok!'"))
    assert ("spec.clusters[0].workloads.selector.matchLabels: the value 'not ok!' of 'app' is not a label value"
            in problem)
    _, [problem] = problems_of(workloads_block(tmp_path, "selector:\n  matchLabels: {}"))
    assert "spec.clusters[0].workloads.selector.matchLabels" in problem


def test_a_valid_workloads_block_resolves_into_the_authority(tmp_path):
    path = workloads_block(tmp_path, "\n".join([
        "restart: true", "maxConcurrent: 2", "timeout: 90s",
        "exclude: [kube-system, 'app-*/Deployment/web*', '*/Job/*']",
        "evictBarePods: true", "selector:", "  matchLabels:", "    example.com/reads-ca: 'true'", "    app: web"]))
    loaded = load_spec(path)
    [cluster] = loaded.document.spec.clusters
    resolved = resolve_authority(loaded.document, cluster).workloads
    assert resolved == ResolvedWorkloads(
        restart=True, max_concurrent=2, timeout=dt.timedelta(seconds=90),
        exclude=("kube-system", "app-*/Deployment/web*", "*/Job/*"), evict_bare_pods=True,
        selector=(("app", "web"), ("example.com/reads-ca", "true")))


def test_defaults_workloads_fill_what_a_cluster_leaves_unset_field_by_field(tmp_path):
    path = workloads_block(tmp_path, "maxConcurrent: 8\nexclude: [monitoring]",
                           defaults="maxConcurrent: 2\ntimeout: 5m\nrestart: false\nexclude: [kube-system]\n"
                                    "selector:\n  matchLabels:\n    ca: reader")
    loaded = load_spec(path)
    resolved = resolve_authority(loaded.document, loaded.document.spec.clusters[0]).workloads
    assert resolved == ResolvedWorkloads(
        restart=False,  # from the defaults
        max_concurrent=8,  # the cluster's
        timeout=dt.timedelta(minutes=5),  # from the defaults
        exclude=("monitoring",),  # the cluster's list replaces the defaults' list
        evict_bare_pods=False,  # built in
        selector=(("ca", "reader"),))  # from the defaults


def test_a_cluster_without_workloads_takes_the_defaults_and_then_the_built_in_values(tmp_path):
    loaded = load_spec(write(tmp_path, VALID))
    assert resolve_authority(loaded.document, loaded.document.spec.clusters[0]).workloads == ResolvedWorkloads()
    assert ResolvedWorkloads() == ResolvedWorkloads(restart=True, max_concurrent=4, timeout=dt.timedelta(minutes=10),
                                                    exclude=(), evict_bare_pods=False, selector=())
    text = VALID.replace("spec:\n  clusters:\n", "spec:\n  defaults:\n    workloads:\n      evictBarePods: true\n"
                                                 "  clusters:\n")
    loaded = load_spec(write(tmp_path, text))
    assert resolve_authority(loaded.document, loaded.document.spec.clusters[0]).workloads == ResolvedWorkloads(
        evict_bare_pods=True)


def test_false_in_a_cluster_overrides_true_in_the_defaults_and_an_empty_exclude_list_clears_theirs():
    cluster = WorkloadSettings(restart=False, evictBarePods=False, exclude=[])
    defaults = WorkloadSettings(restart=True, evictBarePods=True, exclude=["kube-system"], maxConcurrent=3)
    resolved = resolve_workloads(cluster, defaults)
    assert (resolved.restart, resolved.evict_bare_pods, resolved.exclude, resolved.max_concurrent) == (
        False, False, (), 3)
    assert resolve_workloads(None, None) == ResolvedWorkloads()


@pytest.mark.parametrize("text,delta", [
    ("90s", dt.timedelta(seconds=90)), ("5m", dt.timedelta(minutes=5)), ("1h", dt.timedelta(hours=1)),
    ("010m", dt.timedelta(minutes=10)),
])
def test_timeouts_parse(text, delta):
    assert parse_timeout(text) == delta


@pytest.mark.parametrize("text", ["5x", "0s", "00m", "1.5m", "-5m", "5", "m", "", " 5m", "5 m", "1d", 5])
def test_bad_timeouts_are_refused(text):
    with pytest.raises(ValueError):
        parse_timeout(text)


def test_a_timeout_is_written_back_in_minutes_when_whole_else_in_seconds():
    assert format_timeout(dt.timedelta(seconds=90)) == "90s"
    assert format_timeout(dt.timedelta(minutes=5)) == "5m"
    assert format_timeout(dt.timedelta(hours=1)) == "60m"
    assert parse_timeout(format_timeout(dt.timedelta(hours=1))) == dt.timedelta(hours=1)


def test_trusted_since_is_after_the_margin_rounded_up_to_a_whole_second():
    checked = dt.datetime(2026, 12, 3, 10, 0, 0, 100_000, tzinfo=dt.timezone.utc)
    since = trusted_since(checked)
    assert since == dt.datetime(2026, 12, 3, 10, 0, 6, tzinfo=dt.timezone.utc)
    assert since - checked >= TRUST_MARGIN
    # A pod restarted in the second the margin ends reads that second as its startTime: after, not before.
    assert not PodTrust("sha256:old", since).trusts_only_old(ObservedPod("ns", "p", "u", since, "x"))
    exact = dt.datetime(2026, 12, 3, 9, 59, 55, tzinfo=dt.timezone.utc)
    assert trusted_since(exact) == exact + TRUST_MARGIN


def test_the_pod_careconcile_runs_in_is_left_out(tmp_path, monkeypatch):
    from reconciler.shell.workloads import own_pod

    pods = [pod("careconcile-apply-x7"), pod("careconcile-apply-x7", "other"), pod("web")]
    assert [w.id for w in group_workloads(pods, [], {}, [], skip=("app", "careconcile-apply-x7"))] == [
        "pod/app/web", "pod/other/careconcile-apply-x7"]
    (tmp_path / "namespace").write_text("app\n")
    monkeypatch.setenv("CARECONCILE_SERVICEACCOUNT_DIR", str(tmp_path))
    monkeypatch.setenv("HOSTNAME", "careconcile-apply-x7")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert own_pod() is None  # not in a pod
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert own_pod() == ("app", "careconcile-apply-x7")
