"""The drift CronJob recipe's ServiceAccount on a real API server, for the tests that run
`careconcile drift` as it (test_ci_recipes.py on the shared sandbox, test_drift.py during a
rotation): its objects, the account with its RBAC created for real, and a spec that
reaches the API as the CronJob's pod would."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from ruamel.yaml import YAML

from reconciler.errors import APINotFoundError
from reconciler.shell.kube import SERVICEACCOUNT_DIR_ENV, KubeClient

from .helpers import wait_until
from .rotation import ROOT

RECIPE = ROOT / "docs/recipes/drift-cronjob.yaml"

# kind -> (API prefix, plural, namespaced): the kinds the recipe holds.
COLLECTIONS = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "CronJob": ("/apis/batch/v1", "cronjobs", True),
}
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def recipe() -> list[dict]:
    return [document for document in YAML(typ="safe").load_all(RECIPE.read_text()) if document]


def collection(obj: dict) -> str:
    prefix, plural, namespaced = COLLECTIONS[obj["kind"]]
    if namespaced:
        return f"{prefix}/namespaces/{obj['metadata']['namespace']}/{plural}"
    return f"{prefix}/{plural}"


def item(obj: dict) -> str:
    return f"{collection(obj)}/{obj['metadata']['name']}"


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


@contextlib.contextmanager
def service_account(admin: KubeClient, apiserver: str, directory: Path) -> Iterator[dict[str, str]]:
    """The recipe's ServiceAccount and RBAC created for real (and its Namespace, unless it
    exists); a token for it and the CA a pod of the namespace would get, in ``directory``
    laid out like the kubelet's mount. Yields the environment of a pod of the CronJob that
    reaches ``apiserver``; everything created is deleted at the end."""
    objects = recipe()
    (namespace,) = of_kind(objects, "Namespace")
    created = []
    try:
        try:
            admin.get(item(namespace))
        except APINotFoundError:
            admin.create(collection(namespace), namespace)
            created.append(namespace)
        for obj in objects:
            if obj["kind"] in RBAC_KINDS:
                admin.create(collection(obj), obj)
                created.append(obj)
        (account,) = of_kind(objects, "ServiceAccount")
        token = admin.create(f"{item(account)}/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600},
        })["status"]["token"]
        name = namespace["metadata"]["name"]
        root_ca = wait_until("kube-root-ca.crt in the recipe's namespace", lambda: _root_ca(admin, name))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "token").write_text(token)
        (directory / "ca.crt").write_text(root_ca)
        (directory / "namespace").write_text(name)
        yield {SERVICEACCOUNT_DIR_ENV: str(directory), "KUBERNETES_SERVICE_HOST": "127.0.0.1",
               "KUBERNETES_SERVICE_PORT": str(urlsplit(apiserver).port)}
    finally:
        for obj in reversed(created):
            admin.delete(item(obj))


def _root_ca(admin: KubeClient, namespace: str) -> str | None:
    try:
        return admin.get(f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt")["data"]["ca.crt"]
    except APINotFoundError:
        return None


def in_cluster_spec(spec: Path, out: Path) -> Path:
    """A copy of ``spec`` whose first cluster reaches the API as a pod would (``inCluster:
    true`` for kubeconfig and context)."""
    yaml = YAML()
    document = yaml.load(spec.read_text())
    entry = document["spec"]["clusters"][0]
    del entry["kubeconfig"]
    entry.pop("context", None)
    entry.insert(1, "inCluster", True)
    text = io.StringIO()
    yaml.dump(document, text)
    out.write_text(text.getvalue())
    return out
