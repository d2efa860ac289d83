"""The few Kubernetes API calls a sandbox needs to come up and to report its health."""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.core import kubeadm, kubeconfig
from reconciler.errors import (
    APIConflictError, APIError, APINotFoundError, CareconcileError, ClusterUnreachableError, SandboxError,
)
from reconciler.sandbox._paths import node_path
from reconciler.shell.kube import KubeClient, load_kubeconfig
from reconciler.shell.proxy import HTTPSConnection

RBAC = "/apis/rbac.authorization.k8s.io/v1"


def readyz(server: str, ca_file: Path, *, timeout: float = 2.0, server_name: str | None = None) -> bool:
    """Whether ``server``/readyz answers ok; /readyz is open to unauthenticated clients.
    ``server_name``: the name its certificate is checked for, when not the URL's host."""
    url = urlsplit(server)
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
        connection = HTTPSConnection(url.hostname, url.port, context=context, timeout=timeout, server_name=server_name)
        try:
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            return response.status == 200 and response.read().strip() == b"ok"
        finally:
            connection.close()
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False


class EtcdClient:
    """One etcd member's client URL, asked as kubeadm's health checks ask it: with the
    node's `etcd/healthcheck-client` certificate, trusting `etcd/ca.crt` (read from disk
    on each call)."""

    def __init__(self, url: str, node_root: Path, *, timeout: float = 2.0) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.pki = node_path(node_root, f"{kubeadm.PKI_DIR}/etcd")

    def _call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(self.pki / "healthcheck-client.crt", self.pki / "healthcheck-client.key")
        connection = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=self.timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    def healthy(self) -> bool:
        """/health answers {"health": "true"}: the member has a leader and serves a
        linearizable read, so its cluster has quorum."""
        try:
            status, body = self._call("GET", "/health")
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError):
            return False
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    def member_names(self) -> list[str]:
        """The names of the members (the gRPC gateway's member list), sorted; a member
        that has not started yet has no name. [] when the member does not answer."""
        try:
            status, body = self._call("POST", "/v3/cluster/member/list", b"{}")
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError):
            return []
        if status != 200 or not isinstance(body, dict):
            return []
        return sorted(member.get("name", "") for member in body.get("members", []))


class Client:
    """The sandbox's API access: careconcile's own client, with errors that name the sandbox
    step that failed. Keys stay in memory, unlike the ``kubernetes`` package's temp files."""

    def __init__(self, kubeconfig_path: Path, *, context: str | None = None, timeout: float = 10.0) -> None:
        self.source = str(kubeconfig_path)
        try:
            self.kube = KubeClient(load_kubeconfig(kubeconfig_path, context), timeout=timeout)
        except CareconcileError as exc:
            raise SandboxError(f"{kubeconfig_path}: cannot load kubeconfig: {exc.message}") from exc

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kube.close()

    def call(self, what: str, method: str, path: str, body: dict | None = None, *, exists_ok: bool = False,
             missing_ok: bool = False) -> Any:
        """Run one API call; wrap its failure in an error that names the call and the cluster.
        ``exists_ok`` turns 409 (re-creating an object) and ``missing_ok`` 404 into None."""
        try:
            return self.kube.request(method, path, body)
        except APIError as exc:
            if (exists_ok and isinstance(exc, APIConflictError)) or (missing_ok and isinstance(exc, APINotFoundError)):
                return None
            raise SandboxError(f"{what} failed via {self.source}: {exc.status} {exc.reason}") from exc
        except ClusterUnreachableError as exc:
            raise ClusterUnreachableError(f"{what}: API server of {self.source} unreachable: {exc.message}") from exc

    def create(self, what: str, path: str, body: dict) -> None:
        """Create an object, keeping one that already exists."""
        self.call(f"creating {what}", "POST", path, body, exists_ok=True)


def bootstrap_kubeadm_objects(client: Client, *, server: str, ca_pem: bytes) -> None:
    """What `kubeadm init` creates that later steps rely on: the binding that makes
    admin.conf's group cluster-admin, and kube-public/cluster-info readable anonymously."""
    client.create("ClusterRoleBinding kubeadm:cluster-admins", f"{RBAC}/clusterrolebindings", {
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
    client.create("ConfigMap kube-public/cluster-info", "/api/v1/namespaces/kube-public/configmaps",
                          {"metadata": {"name": "cluster-info", "namespace": "kube-public"},
                                          "data": {"kubeconfig": kubeconfig.dump(cluster_info)}})
    role = "kubeadm:bootstrap-signer-clusterinfo"
    client.create(f"Role kube-public/{role}", f"{RBAC}/namespaces/kube-public/roles", {
        "metadata": {"name": role, "namespace": "kube-public"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"],
                   "verbs": ["get"]}],
    })
    client.create(f"RoleBinding kube-public/{role}", f"{RBAC}/namespaces/kube-public/rolebindings", {
        "metadata": {"name": role, "namespace": "kube-public"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}],
    })


def create_kwok_nodes(client: Client, names: list[str]) -> None:
    """Register each worker as a Node that kwok manages (it then reports it Ready)."""
    for name in names:
        client.create(f"Node {name}", "/api/v1/nodes", {
            "metadata": {
                "name": name,
                "annotations": {kubeadm.KWOK_NODE_ANNOTATION: "fake"},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/worker": "", "type": "kwok"},
            },
        })


def ready_nodes(client: Client) -> set[str]:
    nodes = client.call("listing nodes", "GET", "/api/v1/nodes")
    return {
        node["metadata"]["name"]
        for node in nodes.get("items") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])
    }


def root_ca_configmap(client: Client, namespace: str) -> str | None:
    """The ca.crt of ``namespace``'s kube-root-ca.crt ConfigMap, None until it is published."""
    configmap = client.call(f"reading {namespace}/kube-root-ca.crt", "GET",
                            f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt", missing_ok=True)
    return None if configmap is None else (configmap.get("data") or {}).get("ca.crt")
