"""The few Kubernetes API calls a sandbox needs to come up and to report its health."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from reconciler.core import kubeadm, kubeconfig
from reconciler.errors import ClusterUnreachableError, SandboxError


def readyz(server: str, ca_file: Path, *, timeout: float = 2.0) -> bool:
    """Whether ``server``/readyz answers ok; /readyz is open to unauthenticated clients."""
    url = urlsplit(server)
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
        connection = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=timeout)
        try:
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            return response.status == 200 and response.read().strip() == b"ok"
        finally:
            connection.close()
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False


class Client:
    """A Kubernetes API client from a kubeconfig file, closed on exit."""

    def __init__(self, kubeconfig_path: Path, *, context: str | None = None, timeout: float = 10.0) -> None:
        self.source = str(kubeconfig_path)
        self.timeout = timeout
        try:
            self.api_client = k8s_config.new_client_from_config(config_file=str(kubeconfig_path), context=context)
        except (ConfigException, OSError) as exc:
            raise SandboxError(f"{kubeconfig_path}: cannot load kubeconfig: {exc}") from exc
        self.core = k8s.CoreV1Api(self.api_client)
        self.rbac = k8s.RbacAuthorizationV1Api(self.api_client)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.api_client.close()

    def call(self, what: str, method: Any, *args: Any, exists_ok: bool = False, missing_ok: bool = False,
             **kwargs: Any) -> Any:
        """Run one API call; wrap its failure in an error that names the call and the cluster.
        ``exists_ok`` turns 409 (re-creating an object) and ``missing_ok`` 404 into None."""
        try:
            return method(*args, _request_timeout=self.timeout, **kwargs)
        except ApiException as exc:
            if (exists_ok and exc.status == 409) or (missing_ok and exc.status == 404):
                return None
            raise SandboxError(f"{what} failed via {self.source}: {exc.status} {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnreachableError(f"{what}: API server of {self.source} unreachable: {exc}") from exc

    def create(self, what: str, method: Any, *args: Any) -> None:
        """Create an object, keeping one that already exists."""
        self.call(f"creating {what}", method, *args, exists_ok=True)


def bootstrap_kubeadm_objects(client: Client, *, server: str, ca_pem: bytes) -> None:
    """What `kubeadm init` creates that later steps rely on: the binding that makes
    admin.conf's group cluster-admin, and kube-public/cluster-info readable anonymously."""
    client.create("ClusterRoleBinding kubeadm:cluster-admins", client.rbac.create_cluster_role_binding, {
        "metadata": {"name": kubeadm.CLUSTER_ADMINS_GROUP},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                      "name": kubeadm.CLUSTER_ADMINS_GROUP}],
    })
    info = kubeconfig.build(endpoints=[kubeconfig.Endpoint("", server)], ca_pem=ca_pem, user="",
                            credentials=kubeconfig.ClientCredentials())
    # cluster-info carries only the cluster: no users, no contexts, as kubeadm writes it.
    cluster_info = {"apiVersion": "v1", "kind": "Config", "clusters": info["clusters"], "contexts": [],
                    "users": [], "preferences": {}, "current-context": ""}
    client.create("ConfigMap kube-public/cluster-info", client.core.create_namespaced_config_map,
                          "kube-public", {"metadata": {"name": "cluster-info", "namespace": "kube-public"},
                                          "data": {"kubeconfig": kubeconfig.dump(cluster_info)}})
    role = "kubeadm:bootstrap-signer-clusterinfo"
    client.create(f"Role kube-public/{role}", client.rbac.create_namespaced_role, "kube-public", {
        "metadata": {"name": role, "namespace": "kube-public"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"],
                   "verbs": ["get"]}],
    })
    client.create(f"RoleBinding kube-public/{role}", client.rbac.create_namespaced_role_binding,
                          "kube-public", {
        "metadata": {"name": role, "namespace": "kube-public"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}],
    })


def create_kwok_nodes(client: Client, names: list[str]) -> None:
    """Register each worker as a Node that kwok manages (it then reports it Ready)."""
    for name in names:
        client.create(f"Node {name}", client.core.create_node, {
            "metadata": {
                "name": name,
                "annotations": {kubeadm.KWOK_NODE_ANNOTATION: "fake"},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/worker": "", "type": "kwok"},
            },
        })


def ready_nodes(client: Client) -> set[str]:
    nodes = client.call("listing nodes", client.core.list_node)
    return {
        node.metadata.name
        for node in nodes.items
        if any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
    }


def root_ca_configmap(client: Client, namespace: str) -> str | None:
    """The ca.crt of ``namespace``'s kube-root-ca.crt ConfigMap, None until it is published."""
    configmap = client.call(f"reading {namespace}/kube-root-ca.crt", client.core.read_namespaced_config_map,
                            "kube-root-ca.crt", namespace, missing_ok=True)
    return None if configmap is None else (configmap.data or {}).get("ca.crt")
