"""Reading the pods that consume the cluster CA, grouped by controller (see core.workloads)."""

from __future__ import annotations

import os

from reconciler.core.workloads import ObservedWorkload, group_workloads
from reconciler.shell.kube import KubeClient, serviceaccount_dir

APPS = "/apis/apps/v1"
CONTROLLER_COLLECTIONS = {
    "Deployment": f"{APPS}/deployments",
    "StatefulSet": f"{APPS}/statefulsets",
    "DaemonSet": f"{APPS}/daemonsets",
    "Job": "/apis/batch/v1/jobs",
}


def _in(path: str, namespace: str | None) -> str:
    """A cluster-wide collection path, narrowed to one namespace."""
    if namespace is None:
        return path
    group, resource = path.rsplit("/", 1)
    return f"{group}/namespaces/{namespace}/{resource}"


def own_pod() -> tuple[str, str] | None:
    """(namespace, name) of the pod careconcile runs in, if it runs in one: a pod's hostname
    is its name, and its ServiceAccount directory names its namespace."""
    name = os.environ.get("HOSTNAME")
    if not name or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    try:
        namespace = (serviceaccount_dir() / "namespace").read_text().strip()
    except OSError:
        return None
    return (namespace, name) if namespace else None


def observe_workloads(client: KubeClient, selector: tuple[tuple[str, str], ...] = (), *,
                      namespace: str | None = None) -> tuple[ObservedWorkload, ...]:
    """Every workload (or those of one namespace) with a pod that reads the cluster CA,
    careconcile's own pod left out."""
    pods = client.list(_in("/api/v1/pods", namespace))
    replicasets = client.list(_in(f"{APPS}/replicasets", namespace))
    controllers = {kind: client.list(_in(path, namespace)) for kind, path in CONTROLLER_COLLECTIONS.items()}
    budgets = client.list(_in("/apis/policy/v1/poddisruptionbudgets", namespace))
    return group_workloads(pods, replicasets, controllers, budgets, selector, skip=own_pod())
