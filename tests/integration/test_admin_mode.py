"""Admin (management) cluster mode on real control planes: a sandbox `admin` and a sandbox
`user1` registered in it (`sandbox up --name user1 --admin admin`), each with 1 control
plane and 2 workers.

The tests run in file order and build on each other: registration, then a rotation of
user1 through the management cluster alone, then a second cluster in the same namespace.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.core import kubeconfig, pki
from reconciler.core.admin import (
    CAPI_SECRET_TYPE, CLUSTER_NAME_LABEL, INVENTORY_SECRET_TYPE, parse_inventory,
)
from reconciler.errors import AdminClusterError, APINotFoundError
from reconciler.shell.admin import cluster_from_admin
from reconciler.shell.executor import CRASH_AFTER_ENV
from reconciler.shell.kube import KubeClient, KubeconfigClient, kubeconfig_target
from reconciler.shell.lock import ClusterLock
from reconciler.shell.specfile import load_spec

from .rotation import (
    assert_no_private_key_in_files, assert_nodes_trust_only, bundle_fingerprints, careconcile, record_ca,
    rejects_client_of, set_rotation,
)

pytestmark = pytest.mark.integration

NAMESPACE = "cluster-user1"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
SECRETS = "/api/v1/namespaces/{namespace}/secrets"
CONFIGMAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"


@pytest.fixture(scope="module")
def admin(start_sandbox):
    return start_sandbox("admin", control_planes=1, workers=2)


@pytest.fixture(scope="module")
def user1(start_sandbox, admin):
    return start_sandbox("user1", control_planes=1, workers=2, admin="admin")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("admin-workspace")


def admin_client(admin) -> KubeconfigClient:
    return KubeconfigClient(Path(admin.kubeconfig), "kubernetes-admin@admin")


def get(client: KubeClient, path: str) -> dict | None:
    try:
        return client.get(path)
    except APINotFoundError:
        return None


def secret(admin, name: str, namespace: str = NAMESPACE) -> dict:
    with admin_client(admin) as client:
        return client.get(f"{SECRETS.format(namespace=namespace)}/{name}")


def data(item: dict, key: str) -> bytes:
    return base64.b64decode(item["data"][key])


def ca_in_secret(admin, cluster: str, namespace: str = NAMESPACE) -> pki.KeyPair:
    """The CA in <cluster>-ca, checked: one certificate, its key matches (never printed)."""
    item = secret(admin, f"{cluster}-ca", namespace)
    assert item["type"] == CAPI_SECRET_TYPE
    assert item["metadata"]["labels"][CLUSTER_NAME_LABEL] == cluster
    certs = pki.load_certificates(data(item, "tls.crt"), source=f"{cluster}-ca tls.crt")
    key = pki.load_private_key(data(item, "tls.key"), source=f"{cluster}-ca tls.key")
    assert len(certs) == 1, "tls.crt holds the CA alone"
    assert pki.key_matches_cert(key, certs[0]), f"{cluster}-ca: tls.key does not belong to tls.crt"
    return pki.KeyPair(certs[0], key)


def kubeconfig_in_secret(admin, cluster: str, namespace: str = NAMESPACE) -> str:
    item = secret(admin, f"{cluster}-kubeconfig", namespace)
    assert item["type"] == CAPI_SECRET_TYPE
    assert item["metadata"]["labels"][CLUSTER_NAME_LABEL] == cluster
    return data(item, "value").decode()


def assert_kubeconfig_works(text: str, info, ca) -> None:
    """The kubeconfig trusts exactly ``ca``, holds a client certificate from it, and works."""
    document = kubeconfig.parse(text, source="kubeconfig Secret")
    for pem in kubeconfig.ca_certificates(document, source="kubeconfig Secret"):
        assert bundle_fingerprints(pem, "kubeconfig Secret") == [pki.fingerprint(ca)]
    [(_, cert_pem, _)] = kubeconfig.embedded_credentials(document)
    assert pki.is_signed_by(pki.load_certificates(cert_pem, source="client")[0], ca)
    target = kubeconfig_target(text, source="kubeconfig Secret")
    assert target.server in info.apiservers
    with KubeClient(target) as client:
        assert client.get("/api/v1/namespaces/kube-system")["metadata"]["name"] == "kube-system"


def careconcile_objects_on(info, target) -> list[str]:
    """careconcile's own state Secret and lock Lease in the user cluster's kube-system."""
    with KubeClient(target) as client:
        found = [f"Secret {item['metadata']['name']}" for item in client.list(SECRETS.format(namespace="kube-system"))
                 if item["metadata"]["name"].startswith("careconcile")]
        found += [f"Lease {item['metadata']['name']}" for item in client.list(LEASES.format(namespace="kube-system"))
                  if item["metadata"]["name"].startswith("careconcile")]
    return found


# --- (a) registration ------------------------------------------------------------------------

def test_register_wrote_the_ca_the_kubeconfig_and_the_inventory(admin, user1, workspace):
    live = record_ca(user1)
    stored = ca_in_secret(admin, "user1")
    assert stored.cert == live.cert and pki.fingerprint(stored.cert) == pki.fingerprint(live.cert)
    assert_kubeconfig_works(kubeconfig_in_secret(admin, "user1"), user1, live.cert)

    with admin_client(admin) as client:
        stored = client.get(f"{SECRETS.format(namespace=NAMESPACE)}/user1-careconcile-nodes")
        assert stored["type"] == INVENTORY_SECRET_TYPE
        assert get(client, f"{CONFIGMAPS}/user1-careconcile-nodes") is None  # no inventory in a ConfigMap
        inventory = parse_inventory(data(stored, "nodes.yaml").decode(), source="inventory")
        assert inventory.cluster == "user1"
        assert [(n.name, n.role, n.transport, n.local.root) for n in inventory.nodes] == \
            [(n.name, n.role, "local", n.root) for n in user1.nodes]
        # What the admin cluster holds is enough for a spec cluster (for `update credentials`).
        cluster = cluster_from_admin(client, "user1")
    assert cluster.kubeconfig is None and cluster.management_namespace == NAMESPACE
    assert cluster.nodes == load_spec(Path(user1.spec)).document.spec.clusters[0].nodes

    # The sandbox's spec is in admin mode: no kubeconfig of its own.
    spec = load_spec(Path(user1.spec)).document.spec.clusters[0]
    assert spec.kubeconfig is None and spec.management.kubeconfig == admin.kubeconfig

    # `careconcile register` with the same inputs, by hand, finds everything in place.
    cp = Path(user1.nodes[0].root) / "etc/kubernetes/pki"
    nodes = [f"--node={node.name}={node.role},root={node.root}" for node in user1.nodes]
    again = careconcile("register", "user1", "--admin-kubeconfig", admin.kubeconfig, "--admin-context",
                        "kubernetes-admin@admin", "--kubeconfig", user1.kubeconfig, "--context",
                        "kubernetes-admin@user1", "--ca-cert", str(cp / "ca.crt"), "--ca-key", str(cp / "ca.key"),
                        *nodes, workspace=workspace)
    assert again.returncode == 0, again.stderr
    lines = [line.strip() for line in again.stdout.splitlines() if line.startswith("  ")]
    assert [line.split(":")[0] for line in lines] == [
        "Namespace cluster-user1", "Secret cluster-user1/user1-ca", "Secret cluster-user1/user1-kubeconfig",
        "Secret cluster-user1/user1-careconcile-nodes"]
    assert all(": unchanged (" in line for line in lines), again.stdout

    # A kubeconfig of another CA is refused before anything is written.
    wrong = careconcile("register", "user1", "--admin-kubeconfig", admin.kubeconfig, "--kubeconfig", admin.kubeconfig,
                        "--ca-cert", str(cp / "ca.crt"), "--ca-key", str(cp / "ca.key"), *nodes, workspace=workspace)
    assert wrong.returncode == 1 and "does not trust the CA being registered" in wrong.stderr


def hostile_inventory_configmap(user1, tmp_path: Path) -> dict:
    """The ConfigMap <name>-careconcile-nodes as someone allowed only to edit ConfigMaps in
    the namespace would write it: a restart command that runs on careconcile's machine, a
    worker moved to a directory of theirs, and a control-plane node of theirs over SSH."""
    cp, worker, *_ = user1.nodes
    nodes = [
        {"name": cp.name, "role": cp.role, "access": "local",
         "local": {"root": cp.root, "kubeletRestart": ["sh", "-c", f"touch {tmp_path / 'ran-from-configmap'}"]}},
        {"name": worker.name, "role": worker.role, "access": "local", "local": {"root": str(tmp_path / "theirs")}},
        {"name": "attacker-cp", "role": "control-plane", "access": "ssh", "address": "127.0.0.2",
         "ssh": {"port": 2222, "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx4yDDVQ3bcd7xiVgF0TU2wYGk0KW6Nid8bJCfxGgtL"}},
    ]
    document = {"apiVersion": "careconcile.dev/v1alpha1", "kind": "NodeInventory", "cluster": "user1", "nodes": nodes}
    parse_inventory(json.dumps(document), source="hostile")  # a valid inventory: only where it lives is wrong
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "user1-careconcile-nodes", "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/managed-by": "careconcile"}},
            "data": {"nodes.yaml": json.dumps(document)}}


def put(client: KubeClient, collection: str, body: dict) -> None:
    """Create ``body``, or replace the object of its name."""
    current = get(client, f"{collection}/{body['metadata']['name']}")
    if current is None:
        client.create(collection, body)
    else:
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        client.replace(f"{collection}/{body['metadata']['name']}", body)


def test_an_edited_inventory_configmap_changes_no_command_host_or_node(admin, user1, tmp_path):
    """Who may only edit ConfigMaps in the namespace cannot choose what careconcile runs,
    where its nodes' files are, or add a control-plane node: the nodes stay those registered."""
    registered = load_spec(Path(user1.spec)).document.spec.clusters[0].nodes
    with admin_client(admin) as client:
        put(client, CONFIGMAPS, hostile_inventory_configmap(user1, tmp_path))
        try:  # with a key file for SSH nodes, so that only the nodes decide
            cluster = cluster_from_admin(client, "user1", ssh_key_file=str(tmp_path / "ssh-key"))
        finally:
            client.delete(f"{CONFIGMAPS}/user1-careconcile-nodes")
    assert cluster.nodes == registered
    assert [node.kubelet_restart for node in cluster.nodes] == [()] * len(registered)
    assert "attacker-cp" not in [node.name for node in cluster.nodes]


def test_a_cluster_registered_by_an_older_careconcile_is_refused_until_registered_again(admin, user1, workspace):
    """The old layout (the inventory in a ConfigMap, no Secret) is never read for nodes: a
    clear error says to register again; `register` writes the Secret and removes the ConfigMap."""
    with admin_client(admin) as client:
        stored = client.get(f"{SECRETS.format(namespace=NAMESPACE)}/user1-careconcile-nodes")
        client.delete(f"{SECRETS.format(namespace=NAMESPACE)}/user1-careconcile-nodes")
        put(client, CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "user1-careconcile-nodes", "namespace": NAMESPACE},
                                 "data": {"nodes.yaml": data(stored, "nodes.yaml").decode()}})
        with pytest.raises(AdminClusterError) as refused:
            cluster_from_admin(client, "user1")
    assert "ConfigMap cluster-user1/user1-careconcile-nodes, as an older careconcile wrote it" in refused.value.message
    assert "careconcile register user1" in refused.value.hint

    again = careconcile("register", "user1", "--from-spec", user1.spec, "--namespace", NAMESPACE, workspace=workspace)
    assert again.returncode == 0, again.stderr
    assert "Secret cluster-user1/user1-careconcile-nodes: created (3 nodes" in again.stdout
    assert "ConfigMap cluster-user1/user1-careconcile-nodes: removed" in again.stdout
    with admin_client(admin) as client:
        assert get(client, f"{CONFIGMAPS}/user1-careconcile-nodes") is None
        assert client.get(f"{SECRETS.format(namespace=NAMESPACE)}/user1-careconcile-nodes")["data"] == stored["data"]
        assert cluster_from_admin(client, "user1").nodes == load_spec(Path(user1.spec)).document.spec.clusters[0].nodes


# --- (b) a rotation through the management cluster alone ------------------------------------

def test_a_spec_in_admin_mode_rotates_the_cluster_ca_and_both_secrets_follow(admin, user1, workspace):
    spec = Path(user1.spec)
    old = record_ca(user1)
    set_rotation(spec, 1)
    planned = careconcile("plan", str(spec), "--detailed-exitcode", workspace=workspace)
    assert planned.returncode == 2, planned.stdout + planned.stderr
    assert "switch-signer secret/cluster-user1/user1-ca" in planned.stdout
    assert "reissue secret/cluster-user1/user1-kubeconfig" in planned.stdout

    # A run that dies after its first action (create-ca) leaves its lock and the new CA in
    # the management namespace; in user1's kube-system only the second Lease of its lock,
    # which refuses a run from a plain spec of the same cluster, and no state.
    crashed = careconcile("apply", str(spec), "--auto-approve", workspace=workspace, env={CRASH_AFTER_ENV: "1"})
    assert crashed.returncode == -9, crashed.stdout[-2000:] + crashed.stderr
    with admin_client(admin) as client:
        lease = client.get(f"{LEASES.format(namespace=NAMESPACE)}/user1-careconcile-lock")
        assert lease["spec"]["holderIdentity"]
        state = client.get(f"{SECRETS.format(namespace=NAMESPACE)}/user1-careconcile-state")
        assert {"clusterCA.json", "clusterCA.target.crt", "clusterCA.previous.crt"} <= set(state["data"])
        assert not any(name.endswith(".key") for name in state["data"])  # the keys are kept apart
        uploaded = pki.load_certificates(data(state, "clusterCA.target.crt"), source="target")[0]
        keys = client.get(f"{SECRETS.format(namespace=NAMESPACE)}/user1-careconcile-keys")
        assert pki.key_pem_matches_cert(data(keys, f"clusterCA.{pki.fingerprint(uploaded)[7:]}.key"), uploaded,
                                        source="the new CA's key")
    assert uploaded != old.cert  # the new CA is in the management cluster before any node has it
    assert careconcile_objects_on(user1, kubeconfig_target(kubeconfig_in_secret(admin, "user1"), source="s")) == [
        "Lease careconcile-lock"]

    result = careconcile("apply", str(spec), "--auto-approve", workspace=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "took over the stale lock" in result.stderr and "Apply complete!" in result.stdout

    new = record_ca(user1)
    assert new.cert == uploaded and new.cert != old.cert
    stored = ca_in_secret(admin, "user1")  # type, label, one certificate, its key
    assert stored.cert == new.cert
    text = kubeconfig_in_secret(admin, "user1")
    assert_kubeconfig_works(text, user1, new.cert)
    assert_nodes_trust_only(user1, new.cert)
    assert rejects_client_of(user1, old, trust=new.cert), "a client certificate from the old CA is still accepted"

    with admin_client(admin) as client:
        state = client.get(f"{SECRETS.format(namespace=NAMESPACE)}/user1-careconcile-state")
        assert list(state["data"]) == ["clusterCA.json"]  # finalize dropped the keys
        assert not client.get(f"{SECRETS.format(namespace=NAMESPACE)}/user1-careconcile-keys").get("data")
        assert json.loads(data(state, "clusterCA.json"))["appliedRotation"] == 1
        assert get(client, f"{LEASES.format(namespace=NAMESPACE)}/user1-careconcile-lock") is None  # released
    assert careconcile_objects_on(user1, kubeconfig_target(text, source="s")) == []

    again = careconcile("plan", str(spec), "--detailed-exitcode", workspace=workspace)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout
    assert_no_private_key_in_files(workspace)


# --- (c) a second cluster in the same namespace ----------------------------------------------

def admin_mode_spec(path: Path, clusters: list[tuple[object, int]], admin) -> Path:
    """A spec of these sandboxes in admin mode, all in the namespace cluster-user1."""
    body = {"apiVersion": "careconcile.dev/v1alpha1", "kind": "CASpec", "metadata": {"name": "admin-pair"},
            "spec": {"clusters": [{
                "name": info.name,
                "management": {"kubeconfig": admin.kubeconfig, "context": "kubernetes-admin@admin",
                               "namespace": NAMESPACE},
                "nodes": [{"name": n.name, "role": n.role, "access": {"local": {"root": n.root}}} for n in info.nodes],
                "authorities": {"clusterCA": {"rotation": rotation}},
            } for info, rotation in clusters]}}
    YAML().dump(body, path)
    return path


def test_a_second_cluster_in_the_same_namespace_does_not_collide(start_sandbox, admin, user1, workspace, tmp_path):
    user2 = start_sandbox("user2", control_planes=1, workers=0)
    registered = careconcile("register", "user2", "--from-spec", user2.spec, "--admin-kubeconfig", admin.kubeconfig,
                             "--namespace", NAMESPACE, workspace=workspace)
    assert registered.returncode == 0, registered.stderr
    assert "Secret cluster-user1/user2-ca: created" in registered.stdout
    assert "Secret cluster-user1/user2-careconcile-nodes: created (1 nodes" in registered.stdout

    user1_ca = ca_in_secret(admin, "user1")
    user1_state = secret(admin, "user1-careconcile-state")["data"]
    old2 = record_ca(user2)
    spec = admin_mode_spec(tmp_path / "pair.yaml", [(user1, 1), (user2, 1)], admin)
    with admin_client(admin) as client:
        # user1's lock is held all along: user2's run takes its own, beside it.
        with ClusterLock(client, "user1", operation="held-by-test", namespace=NAMESPACE,
                         name="user1-careconcile-lock") as held:
            planned = careconcile("plan", str(spec), "--detailed-exitcode", workspace=workspace)
            assert planned.returncode == 2, planned.stdout + planned.stderr
            assert "Cluster user1 (clusterCA): no changes" in planned.stdout
            result = careconcile("apply", str(spec), "--cluster", "user2", "--auto-approve", workspace=workspace)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr
            refused = careconcile("apply", str(spec), "--cluster", "user1", "--auto-approve", workspace=workspace)
            assert refused.returncode == 1 and "cluster user1 is locked" in refused.stderr
            # force-unlock finds the lock where admin mode keeps it.
            unlocked = careconcile("force-unlock", "user1", held.id, "--spec", str(spec), workspace=workspace)
            assert unlocked.returncode == 0, unlocked.stderr
            assert get(client, f"{LEASES.format(namespace=NAMESPACE)}/user1-careconcile-lock") is None

    new2 = record_ca(user2)
    assert new2.cert != old2.cert and ca_in_secret(admin, "user2").cert == new2.cert
    assert_kubeconfig_works(kubeconfig_in_secret(admin, "user2"), user2, new2.cert)
    assert_nodes_trust_only(user2, new2.cert)
    # user1's objects in the shared namespace are as they were.
    assert ca_in_secret(admin, "user1").cert == user1_ca.cert == record_ca(user1).cert
    assert secret(admin, "user1-careconcile-state")["data"] == user1_state
    state2 = secret(admin, "user2-careconcile-state")
    assert json.loads(data(state2, "clusterCA.json"))["appliedRotation"] == 1

    again = careconcile("plan", str(spec), "--detailed-exitcode", workspace=workspace)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_no_private_key_in_files(workspace)
