"""The pods that read the cluster CA when they start, and how a rotation restarts them (pure).

A pod's in-cluster client reads ``ca.crt`` from its ``kube-root-ca.crt`` volume once, when it
starts, and trusts that CA alone from then on. The phase 2 check records in the state store
when every namespace's ``kube-root-ca.crt`` was seen holding both CAs (plus a margin for
the kubelet's ConfigMap cache): a pod started after that trusts both, one started before
trusts only the CA that the bundles held alone before the rotation. Before phase 3 makes
the apiservers present certificates from the new CA, every pod of the second kind is
restarted the way its owner expects: a Deployment, StatefulSet or DaemonSet rolls (the
``kubectl rollout restart`` annotation), other pods are evicted through the Eviction API so
that PodDisruptionBudgets hold, and a running Job is waited for.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

from reconciler._time import parse_time
from reconciler.core.spec import ResolvedWorkloads

# What `kubectl rollout restart` sets on a pod template; the controller rolls its pods.
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# Beside it, the rotation a restart was for: a resumed run neither restarts a controller
# twice for one rotation nor skips one.
RESTARTED_FOR = "careconcile.dev/restarted-for-rotation"
MIRROR_POD = "kubernetes.io/config.mirror"
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
PKI_DIR = "/etc/kubernetes/pki"
# A pod that started this long after the bundles were seen holding both CAs read both: the
# kubelet's ConfigMap watch delivers a change within about a second; the rest is clock skew.
TRUST_MARGIN = dt.timedelta(seconds=5)

WorkloadKind = Literal["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod", "Owned"]
Method = Literal["rollout", "evict", "wait"]


@dataclass(frozen=True)
class ObservedPod:
    namespace: str
    name: str
    uid: str
    started: dt.datetime | None  # status.startTime; None while the pod has not started (it read nothing)
    reads: str  # how it reads the CA, for plans: "kube-root-ca.crt (projected)", ...
    terminating: bool = False
    node: str | None = None

    @property
    def id(self) -> str:
        return f"pod/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ObservedBudget:
    """A PodDisruptionBudget that selects pods of a workload, as its status says now."""

    namespace: str
    name: str
    expected_pods: int
    desired_healthy: int
    current_healthy: int
    disruptions_allowed: int

    @property
    def never_allows(self) -> bool:
        """It forbids a disruption even with every pod healthy (minAvailable = replicas,
        maxUnavailable 0): nothing may restart these pods without its owner changing it."""
        return self.expected_pods > 0 and self.desired_healthy >= self.expected_pods

    def describe(self) -> str:
        return (f"PodDisruptionBudget {self.namespace}/{self.name} (desiredHealthy {self.desired_healthy} "
                f"of {self.expected_pods} pods, {self.disruptions_allowed} disruption(s) allowed)")


@dataclass(frozen=True)
class ObservedWorkload:
    """The pods of one controller (a Deployment through its ReplicaSets, a StatefulSet, a
    DaemonSet, a ReplicaSet of its own, a Job, or an owner careconcile has no rollout for:
    ``Owned``), or one bare pod (``Pod``), that read the cluster CA."""

    kind: WorkloadKind
    namespace: str
    name: str
    pods: tuple[ObservedPod, ...]
    replicas: int | None = None
    owner_kind: str | None = None  # kind "Owned": the owner's own kind (a custom resource's)
    restarted_for: str | None = None  # the template's RESTARTED_FOR annotation
    rolls_on_annotation: bool = True  # False for an OnDelete update strategy or a partitioned StatefulSet
    paused: bool = False
    budgets: tuple[ObservedBudget, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.kind.lower()}/{self.namespace}/{self.name}"

    @property
    def method(self) -> Method:
        if self.kind == "Job":
            return "wait"
        if self.kind in ("Deployment", "StatefulSet", "DaemonSet") and self.rolls_on_annotation:
            return "rollout"
        return "evict"

    def describe(self) -> str:
        if self.kind == "Owned":
            return f"pods of {self.owner_kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodTrust:
    """What the pods of a cluster trust, from the state store: a pod started before
    ``since`` trusts ``alone``; one started after trusts ``alone`` and the other CA.
    ``since`` None: the bundles have not been seen trusting both CAs yet."""

    alone: str | None
    since: dt.datetime | None

    def trusts_only_old(self, pod: ObservedPod) -> bool:
        """A pod that has not started has read nothing yet: it reads the bundles as they are
        when it starts (one pending for want of a node must not hold up a rotation)."""
        if pod.started is None:
            return False
        return self.since is None or pod.started < self.since


def trusted_since(checked_at: dt.datetime) -> dt.datetime:
    """When pods start trusting both CAs, for bundles seen trusting both at ``checked_at``:
    after the margin, rounded up to a whole second, since a pod's startTime has whole
    seconds (a pod started at 10:00:05.4 reads 10:00:05, before a since of 10:00:05.1)."""
    moment = checked_at + TRUST_MARGIN
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + dt.timedelta(seconds=1)


def excluded(workload: ObservedWorkload, patterns: tuple[str, ...]) -> str | None:
    """The spec's exclude pattern that names ``workload``, if one does."""
    for pattern in patterns:
        parts = pattern.split("/")
        if len(parts) == 1 and fnmatch.fnmatchcase(workload.namespace, pattern):
            return pattern
        # The pods of an owner careconcile has no rollout for are named by the owner's name,
        # and only by the kind "*": the spec knows no kind for them.
        if len(parts) == 3 and fnmatch.fnmatchcase(workload.namespace, parts[0]) and \
                (parts[1] == "*" or (workload.kind != "Owned" and fnmatch.fnmatchcase(workload.kind, parts[1]))) and \
                fnmatch.fnmatchcase(workload.name, parts[2]):
            return pattern
    return None


@dataclass(frozen=True)
class WorkloadDecision:
    """One workload whose pods trust only the old CA, and what a rotation does about it."""

    workload: ObservedWorkload
    stale: tuple[ObservedPod, ...]
    method: Method
    excluded_by: str | None = None  # an exclude pattern, or "restart: false"
    blocked: str | None = None  # why the plan cannot go on (a bare pod without evictBarePods)
    # Why nothing may restart it now (a budget that allows no disruption, a paused Deployment):
    # the plan warns, and apply stops before phase 3 while it holds.
    forbidden: str | None = None

    @property
    def restarts(self) -> bool:
        return self.excluded_by is None and self.blocked is None


def decide(workloads: tuple[ObservedWorkload, ...], trust: PodTrust, settings: ResolvedWorkloads
           ) -> list[WorkloadDecision]:
    """For each workload with a pod that trusts only the old CA: restart it, wait for it,
    exclude it (with a warning) or block on it."""
    decisions = []
    for workload in workloads:
        stale = tuple(pod for pod in workload.pods if trust.trusts_only_old(pod))
        if not stale:
            continue
        method = workload.method
        excluded_by = "workloads.restart: false" if not settings.restart else excluded(workload, settings.exclude)
        blocked = forbidden = None
        if excluded_by is None and workload.kind == "Pod" and not settings.evict_bare_pods:
            blocked = (f"bare pod {workload.namespace}/{workload.name} reads the cluster CA and no controller would "
                       "bring it back if evicted: set workloads.evictBarePods: true, or exclude "
                       f"{workload.namespace}/Pod/{workload.name} in workloads.exclude")
        if excluded_by is None and blocked is None:
            never = [budget for budget in workload.budgets if budget.never_allows]
            if never:
                forbidden = f"{workload.describe()}: {never[0].describe()} allows no disruption"
            elif workload.paused:
                forbidden = f"{workload.describe()} is paused: its pods cannot roll"
        decisions.append(WorkloadDecision(workload, stale, method, excluded_by, blocked, forbidden))
    return decisions


def reason(decision: WorkloadDecision) -> str:
    """Why the plan restarts a workload, as a reviewer reads it."""
    workload, stale = decision.workload, decision.stale
    reads = sorted({pod.reads for pod in stale})
    total = len(workload.pods)
    how = {"rollout": "roll it as `kubectl rollout restart` does",
           "evict": "evict through the Eviction API (PodDisruptionBudgets hold)",
           "wait": "a running Job is not restarted: wait for it to finish"}[decision.method]
    text = f"{len(stale)} of {total} pod(s) trust only the old CA, read when they started ({', '.join(reads)}); {how}"
    if workload.budgets:
        text += "; " + ", ".join(f"PodDisruptionBudget {b.namespace}/{b.name}" for b in workload.budgets)
    return text


def rollout_complete(kind: str, item: dict[str, Any]) -> bool:
    """Whether a Deployment, StatefulSet or DaemonSet is rolled out, as `kubectl rollout
    status` judges it: the controller has seen the newest spec, every replica (a DaemonSet:
    every node it schedules to) runs the newest template and is available, and no old pod is
    left. Counts the API leaves out are 0."""
    spec, status = item.get("spec") or {}, item.get("status") or {}
    if status.get("observedGeneration", 0) < (item.get("metadata") or {}).get("generation", 0):
        return False
    if kind == "DaemonSet":
        desired = status.get("desiredNumberScheduled", 0)
        return status.get("updatedNumberScheduled", 0) >= desired and status.get("numberAvailable", 0) >= desired
    replicas = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if kind == "StatefulSet":
        return updated >= replicas and status.get("readyReplicas", 0) >= replicas
    return (updated >= replicas and status.get("replicas", 0) <= updated
            and status.get("availableReplicas", 0) >= updated)


# --- reading API objects (pure: the shell lists them) --------------------------------------

def reads_cluster_ca(pod: dict[str, Any], selector: tuple[tuple[str, str], ...] = ()) -> str | None:
    """How a pod reads the cluster CA at start, or None: a projected ``kube-root-ca.crt``
    source (the automounted ``kube-api-access-*`` volume), a ``kube-root-ca.crt`` configMap
    volume, a hostPath under /etc/kubernetes/pki, or the spec's selector."""
    for volume in _mapping(pod.get("spec")).get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        for source in _mapping(volume.get("projected")).get("sources") or []:
            if isinstance(source, dict) and _mapping(source.get("configMap")).get("name") == ROOT_CA_CONFIGMAP:
                return f"{ROOT_CA_CONFIGMAP} (projected)"
        if _mapping(volume.get("configMap")).get("name") == ROOT_CA_CONFIGMAP:
            return f"{ROOT_CA_CONFIGMAP} (configMap volume)"
        # The directory, one under it, or one above it short of '/' (a node-exporter's view
        # of the whole host does not read the CA at start).
        path = str(_mapping(volume.get("hostPath")).get("path") or "").rstrip("/")
        if path and (path == PKI_DIR or path.startswith(PKI_DIR + "/") or PKI_DIR.startswith(path + "/")):
            return f"hostPath {path}"
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if selector and all(labels.get(key) == value for key, value in selector):
        return "the spec's workloads.selector"
    return None


def _mapping(value: Any) -> dict[str, Any]:
    """A field that should hold an object; anything else reads as empty."""
    return value if isinstance(value, dict) else {}


def _controller(item: dict[str, Any]) -> dict[str, Any] | None:
    for owner in (item.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(owner, dict) and owner.get("controller"):
            return owner
    return None


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a pod's labels. An empty
    selector in a PodDisruptionBudget selects every pod of its namespace (policy/v1)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _budget(item: dict[str, Any]) -> ObservedBudget:
    status = item.get("status") or {}
    meta = item["metadata"]
    return ObservedBudget(namespace=meta["namespace"], name=meta["name"],
                          expected_pods=int(status.get("expectedPods") or 0),
                          desired_healthy=int(status.get("desiredHealthy") or 0),
                          current_healthy=int(status.get("currentHealthy") or 0),
                          disruptions_allowed=int(status.get("disruptionsAllowed") or 0))


def group_workloads(pods: list[dict[str, Any]], replicasets: list[dict[str, Any]],
                    controllers: dict[str, list[dict[str, Any]]], budgets: list[dict[str, Any]],
                    selector: tuple[tuple[str, str], ...] = (), *,
                    skip: tuple[str, str] | None = None) -> tuple[ObservedWorkload, ...]:
    """The pods that read the cluster CA, grouped by the controller that restarts them.
    ``controllers``: the Deployments, StatefulSets, DaemonSets and Jobs, by kind. Mirror
    pods (static pods: careconcile restarts them through their manifests) and finished pods
    are left out, and so is ``skip`` (namespace, name): the pod careconcile itself runs in,
    whose API client follows ca.crt as it changes and which must not wait on itself."""
    by_uid = {item["metadata"].get("uid"): (kind, item) for kind, items in controllers.items() for item in items}
    rs_by_uid = {rs["metadata"].get("uid"): rs for rs in replicasets}
    grouped: dict[tuple[str, str, str], list[ObservedPod]] = {}
    owners: dict[tuple[str, str, str], tuple[dict[str, Any] | None, str | None]] = {}
    labels_of: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if MIRROR_POD in (meta.get("annotations") or {}) or status.get("phase") in ("Succeeded", "Failed"):
            continue
        if skip is not None and (meta.get("namespace"), meta.get("name")) == skip:
            continue
        reads = reads_cluster_ca(pod, selector)
        if reads is None:
            continue
        namespace = meta["namespace"]
        observed = ObservedPod(namespace=namespace, name=meta["name"], uid=meta.get("uid", ""),
                               started=parse_time(status.get("startTime")), reads=reads,
                               terminating=bool(meta.get("deletionTimestamp")),
                               node=(pod.get("spec") or {}).get("nodeName"))
        owner = _controller(pod)
        item, owner_kind = None, None
        if owner is None:
            key = ("Pod", namespace, meta["name"])
        elif owner.get("kind") == "ReplicaSet" and owner.get("uid") in rs_by_uid:
            replicaset = rs_by_uid[owner["uid"]]
            deployment = _controller(replicaset)
            if deployment is not None and deployment.get("kind") == "Deployment" and deployment.get("uid") in by_uid:
                item = by_uid[deployment["uid"]][1]
                key = ("Deployment", namespace, deployment["name"])
            else:
                item = replicaset
                key = ("ReplicaSet", namespace, replicaset["metadata"]["name"])
        elif owner.get("uid") in by_uid:
            kind, item = by_uid[owner["uid"]]
            key = (kind, namespace, owner.get("name", ""))
        else:
            owner_kind = str(owner.get("kind") or "owner")
            key = ("Owned", namespace, str(owner.get("name") or ""))
        grouped.setdefault(key, []).append(observed)
        owners[key] = (item, owner_kind)
        labels_of.setdefault(key, []).append(meta.get("labels") or {})
    budget_items = [(item, _budget(item)) for item in budgets]
    workloads = []
    for key in sorted(grouped):
        kind, namespace, name = key
        item, owner_kind = owners[key]
        spec = (item or {}).get("spec") or {}
        template = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
        strategy = spec.get("updateStrategy") or {}
        partitioned = bool((strategy.get("rollingUpdate") or {}).get("partition"))
        matching = tuple(budget for pdb, budget in budget_items if budget.namespace == namespace and any(
            _matches((pdb.get("spec") or {}).get("selector"), labels) for labels in labels_of[key]))
        workloads.append(ObservedWorkload(
            kind=kind, namespace=namespace, name=name, pods=tuple(grouped[key]),
            replicas=spec.get("replicas") if kind in ("Deployment", "StatefulSet", "ReplicaSet") else None,
            owner_kind=owner_kind, restarted_for=template.get(RESTARTED_FOR),
            rolls_on_annotation=strategy.get("type") != "OnDelete" and not partitioned,
            paused=bool(spec.get("paused")), budgets=matching,
        ))
    return tuple(workloads)
