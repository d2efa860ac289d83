"""The workloads of a sandbox: kubeadm's add-ons and, on request, sample applications.

kubeadm deploys kube-proxy as a DaemonSet and CoreDNS as a Deployment of 2 replicas, each
with a ServiceAccount of its own. In the sandbox their pods run on the kwok workers: kwok
makes scheduled pods Running and Ready, and the real controller-manager rolls them as it
would real ones. Like every pod with an automounted ServiceAccount, they read the cluster
CA from ``kube-root-ca.crt`` through their ``kube-api-access-*`` volume when they start,
which is what a CA rotation must take care of. CoreDNS also gets a PodDisruptionBudget
(kubeadm makes none; many clusters add one), so that restarts must honour one.

``up --workloads N`` adds N namespaces ``app-1`` .. ``app-N``, each with a Deployment of 2
replicas behind a PodDisruptionBudget of minAvailable 1, and ``app-1`` a StatefulSet of 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.sandbox._api import Client
from reconciler.sandbox.binaries import KUBERNETES_VERSION

KUBE_PROXY_IMAGE = f"registry.k8s.io/kube-proxy:{KUBERNETES_VERSION}"
COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.14.6"  # kubeadm v1.37's CoreDNSVersion
SAMPLE_IMAGE = "registry.k8s.io/pause:3.10"
APPS = "/apis/apps/v1"
POLICY = "/apis/policy/v1"
SAMPLE_REPLICAS = 2


@dataclass(frozen=True)
class Workload:
    """A controller the sandbox creates, and how to tell that its pods are all up."""

    kind: str  # Deployment | DaemonSet | StatefulSet
    namespace: str
    name: str

    @property
    def path(self) -> str:
        return f"{APPS}/namespaces/{self.namespace}/{self.kind.lower()}s/{self.name}"


def _pod_template(app: str, image: str, *, service_account: str | None = None,
                  critical: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": app, "image": image}],
        # kwok plays every node; a real image never runs, so pulling never happens
        "terminationGracePeriodSeconds": 1,
    }
    if service_account is not None:
        spec["serviceAccountName"] = service_account
    if critical:  # as kubeadm runs its add-ons
        spec["priorityClassName"] = "system-node-critical" if app == "kube-proxy" else "system-cluster-critical"
        spec["tolerations"] = [{"operator": "Exists"}] if app == "kube-proxy" else [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    return {"metadata": {"labels": {"k8s-app": app}}, "spec": spec}


def _service_account(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}


def budget(namespace: str, app: str, min_available: int) -> dict[str, Any]:
    """A PodDisruptionBudget named after the pods' ``k8s-app`` label."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": app, "namespace": namespace},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"k8s-app": app}}}}


def addon_objects() -> list[tuple[str, dict[str, Any]]]:
    """kubeadm's add-ons: (collection path, object), in the order they are created."""
    proxy = _pod_template("kube-proxy", KUBE_PROXY_IMAGE, service_account="kube-proxy", critical=True)
    proxy["spec"]["hostNetwork"] = True
    dns = _pod_template("kube-dns", COREDNS_IMAGE, service_account="coredns", critical=True)
    return [
        ("/api/v1/namespaces/kube-system/serviceaccounts", _service_account("kube-system", "kube-proxy")),
        (f"{APPS}/namespaces/kube-system/daemonsets", {
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"k8s-app": "kube-proxy"}},
            "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}}, "template": proxy,
                     "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}},
        }),
        ("/api/v1/namespaces/kube-system/serviceaccounts", _service_account("kube-system", "coredns")),
        (f"{APPS}/namespaces/kube-system/deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"k8s-app": "kube-dns"}}, "template": dns,
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "10%"}}},
        }),
        (f"{POLICY}/namespaces/kube-system/poddisruptionbudgets", budget("kube-system", "kube-dns", 1)),
    ]


def sample_deployment(namespace: str) -> dict[str, Any]:
    """The Deployment ``web`` of a sample namespace: pods labelled ``k8s-app: web``."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": namespace},
            "spec": {"replicas": SAMPLE_REPLICAS, "selector": {"matchLabels": {"k8s-app": "web"}},
                     "template": _pod_template("web", SAMPLE_IMAGE)}}


def sample_objects(count: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` namespaces with a Deployment behind a PodDisruptionBudget each, and a
    StatefulSet in the first."""
    objects: list[tuple[str, dict[str, Any]]] = []
    for index in range(1, count + 1):
        namespace = f"app-{index}"
        objects.append(("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": namespace}}))
        objects.append((f"{APPS}/namespaces/{namespace}/deployments", sample_deployment(namespace)))
        objects.append((f"{POLICY}/namespaces/{namespace}/poddisruptionbudgets", budget(namespace, "web", 1)))
    if count:
        objects.append((f"{APPS}/namespaces/app-1/statefulsets", {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "app-1"},
            "spec": {"replicas": SAMPLE_REPLICAS, "serviceName": "db", "selector": {"matchLabels": {"k8s-app": "db"}},
                     "template": _pod_template("db", SAMPLE_IMAGE)},
        }))
    return objects


def workloads(count: int) -> list[Workload]:
    """Every controller :func:`create` makes for ``count`` sample namespaces."""
    return [Workload(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
            for _, obj in addon_objects() + sample_objects(count)
            if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]


def create(client: Client, count: int) -> None:
    for path, obj in addon_objects() + sample_objects(count):
        meta = obj["metadata"]
        where = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
        client.create(f"{obj['kind']} {where}", path, obj)


def rolled_out(client: Client, workload: Workload) -> bool:
    """Whether ``workload`` is rolled out, as `kubectl rollout status` judges it: the
    controller has seen the newest spec, every replica (a DaemonSet: every node it schedules
    to) runs the newest template and is available, and no old pod is left. Counts the API
    leaves out are 0."""
    item = client.call(f"reading {workload.kind} {workload.namespace}/{workload.name}", "GET", workload.path)
    spec, status = item.get("spec") or {}, item.get("status") or {}
    if status.get("observedGeneration", 0) < item["metadata"].get("generation", 0):
        return False
    if workload.kind == "DaemonSet":
        desired = status.get("desiredNumberScheduled", 0)
        return status.get("updatedNumberScheduled", 0) >= desired and status.get("numberAvailable", 0) >= desired
    replicas = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if workload.kind == "StatefulSet":
        return updated >= replicas and status.get("readyReplicas", 0) >= replicas
    return (updated >= replicas and status.get("replicas", 0) <= updated
            and status.get("availableReplicas", 0) >= updated)
