"""The drift CronJob recipe (docs/recipes/drift-cronjob.yaml) against a real API server.

Every object is sent with a server-side dry run and strict field validation, so a typo or
an invalid value in the recipe fails here; a broken copy is shown to be rejected. Then the
ServiceAccount and its RBAC are created for real, and `careconcile drift` runs as that
ServiceAccount (`inCluster: true`, with a token from the TokenRequest API): it must find
the cluster in sync, and the requests it makes must be exactly what the RBAC allows.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from reconciler.errors import APIError, APIForbiddenError, APINotFoundError
from reconciler.shell import drift
from reconciler.shell.kube import InClusterClient, KubeClient, load_kubeconfig
from reconciler.shell.specfile import load_spec

from . import drift_account
from .drift_account import collection, item, of_kind, recipe
from .rotation import careconcile

pytestmark = pytest.mark.integration

DRY_RUN = "?dryRun=All&fieldValidation=Strict"


@pytest.fixture(scope="module")
def admin(cluster):
    with KubeClient(load_kubeconfig(Path(cluster.kubeconfig))) as client:
        yield client


@pytest.fixture(scope="module")
def namespace(admin):
    """The recipe's Namespace, created for real: the namespaced objects need it to exist
    even in a dry run. Deleted (with what the tests created in it) at the end."""
    (obj,) = of_kind(recipe(), "Namespace")
    accepted = admin.create(collection(obj) + DRY_RUN, obj)
    assert accepted["metadata"]["name"] == obj["metadata"]["name"]
    with pytest.raises(APINotFoundError):  # a dry run stores nothing
        admin.get(item(obj))
    admin.create(collection(obj), obj)
    yield obj["metadata"]["name"]
    admin.delete(item(obj))


def test_the_recipe_holds_the_objects_docs_ci_describes():
    kinds = [obj["kind"] for obj in recipe()]
    assert kinds == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                     "Role", "RoleBinding", "ConfigMap", "CronJob"]


def test_the_api_server_accepts_every_object_in_a_dry_run_and_stores_none(admin, namespace):
    for obj in recipe():
        if obj["kind"] == "Namespace":
            continue  # dry-run in the fixture before it was created
        accepted = admin.create(collection(obj) + DRY_RUN, obj)
        assert (accepted["kind"], accepted["metadata"]["name"]) == (obj["kind"], obj["metadata"]["name"])
        with pytest.raises(APINotFoundError):
            admin.get(item(obj))
    # What the server made of the CronJob is what the recipe says, defaults aside.
    (cronjob,) = of_kind(recipe(), "CronJob")
    accepted = admin.create(collection(cronjob) + DRY_RUN, cronjob)
    pod = accepted["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert accepted["spec"]["concurrencyPolicy"] == "Forbid"
    assert pod["containers"][0]["command"] == cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"][0]["command"]


@pytest.mark.parametrize("breakage", ["a bad value", "a misspelt field"])
def test_a_broken_copy_of_the_cronjob_is_rejected(admin, namespace, breakage):
    (cronjob,) = of_kind(recipe(), "CronJob")
    broken = copy.deepcopy(cronjob)
    container = broken["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    if breakage == "a bad value":
        broken["spec"]["concurrencyPolicy"] = "Sometimes"
        expected = "concurrencyPolicy"
    else:
        container["securityContext"]["readOnlyRootFileSystem"] = container["securityContext"].pop(
            "readOnlyRootFilesystem")
        expected = "readOnlyRootFileSystem"
    with pytest.raises(APIError) as error:
        admin.create(collection(broken) + DRY_RUN, broken)
    assert error.value.status in (400, 422)
    assert expected in str(error.value)


# --- drift as the ServiceAccount ------------------------------------------------------

@pytest.fixture(scope="module")
def service_account(admin, namespace, tmp_path_factory, cluster):
    """The ServiceAccount and RBAC created for real; a token for it and the CA a pod of
    the namespace would get, in a directory laid out like the kubelet's mount."""
    with drift_account.service_account(admin, cluster.apiservers[0],
                                       tmp_path_factory.mktemp("serviceaccount")) as environment:
        yield environment


@pytest.fixture(scope="module")
def in_cluster_spec(cluster, tmp_path_factory) -> Path:
    """A copy of the sandbox's spec that reaches the API as a pod would (the sandbox's
    own spec stays as the other tests expect it)."""
    return drift_account.in_cluster_spec(Path(cluster.spec), tmp_path_factory.mktemp("in-cluster") / "spec.yaml")


def test_drift_as_the_service_account_finds_the_cluster_in_sync(service_account, in_cluster_spec, tmp_path):
    metrics = tmp_path / "textfile/careconcile.prom"
    metrics.parent.mkdir()
    result = careconcile("drift", str(in_cluster_spec), "--format", "json", "--metrics-file", str(metrics),
                         workspace=tmp_path / "ws", env=service_account, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [c["status"] for c in report["clusters"]] == ["in-sync"], report
    assert "careconcile_cluster_in_sync{" in metrics.read_text()
    assert not (tmp_path / "ws").exists()  # read-only: not even the workspace was made


def test_plan_works_with_the_same_rights(service_account, in_cluster_spec, tmp_path):
    result = careconcile("plan", str(in_cluster_spec), "--detailed-exitcode", workspace=tmp_path / "ws",
                         env=service_account, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rbac_allows_exactly_the_requests_drift_makes(service_account, in_cluster_spec, tmp_path, monkeypatch):
    """Each request drift sends as the ServiceAccount is allowed by a rule of the recipe,
    and each rule (every resource and name in it) is used by one of them: no rule too many."""
    for name, value in service_account.items():
        monkeypatch.setenv(name, value)
    sent: list[tuple[str, str]] = []
    original = KubeClient.request

    def recording(self, method, path, body=None, content_type="application/json"):
        if isinstance(self, InClusterClient):
            sent.append((method, path))
        return original(self, method, path, body, content_type)

    monkeypatch.setattr(KubeClient, "request", recording)
    report = drift.check([load_spec(in_cluster_spec)], tmp_path / "ws")
    assert [c.status for c in report.clusters] == ["in-sync"]

    requests = {_as_rbac_request(method, path) for method, path in sent}
    grants = _grants(recipe())
    unallowed = [request for request in requests if not any(_allows(grant, request) for grant in grants)]
    assert unallowed == []
    unused = [grant for grant in grants if not any(_allows(grant, request) for request in requests)]
    assert unused == []


def test_the_service_account_can_change_nothing_and_read_no_other_object(service_account, monkeypatch):
    for name, value in service_account.items():
        monkeypatch.setenv(name, value)
    with InClusterClient() as client:
        client.get("/api/v1/namespaces/kube-public/configmaps/cluster-info")  # what it may read
        client.list("/api/v1/configmaps", field_selector="metadata.name=kube-root-ca.crt")
        for method, path, body in [
            ("GET", "/api/v1/configmaps", None),  # every ConfigMap, not just kube-root-ca.crt
            ("GET", "/api/v1/namespaces/kube-system/secrets", None),
            ("GET", "/api/v1/namespaces/kube-system/secrets/careconcile-keys", None),  # the CA keys of a rotation
            ("GET", "/api/v1/namespaces/kube-system/configmaps/kubeadm-config", None),
            ("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/careconcile-lock", None),
            ("POST", "/api/v1/namespaces/kube-system/secrets",
             {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "careconcile-state"}}),
            ("PATCH", "/api/v1/namespaces/kube-public/configmaps/cluster-info", {"data": {}}),
            ("DELETE", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/x", None),
        ]:
            with pytest.raises(APIForbiddenError):
                client.request(method, path, body,
                               content_type="application/merge-patch+json" if method == "PATCH" else "application/json")


def _as_rbac_request(method: str, path: str) -> tuple[str, str, str | None, str | None, str]:
    """(apiGroup, resource, namespace, name, verb) of an API request, as RBAC sees it."""
    url = urlsplit(path)
    parts = url.path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    assert method == "GET", f"drift sent {method} {path}"
    if name is not None:
        return group, resource, namespace, name, "get"
    selector = parse_qs(url.query).get("fieldSelector", [""])[0]
    if selector.startswith("metadata.name="):  # RBAC checks a name-restricted list by it
        name = selector.removeprefix("metadata.name=")
    return group, resource, namespace, name, "list"


def _grants(objects: list[dict]) -> list[tuple[str, str, str | None, str | None, str]]:
    """Every (apiGroup, resource, namespace or None for cluster-wide, name or None for any,
    verb) the recipe's roles grant, one per combination."""
    grants = []
    for role in objects:
        if role["kind"] not in ("ClusterRole", "Role"):
            continue
        namespace = role["metadata"].get("namespace")
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            grants.append((group, resource, namespace, name, verb))
    return grants


def _allows(grant, request) -> bool:
    group, resource, namespace, name, verb = grant
    r_group, r_resource, r_namespace, r_name, r_verb = request
    return ((group, resource, verb) == (r_group, r_resource, r_verb)
            and (namespace is None or namespace == r_namespace)
            and (name is None or name == r_name))
