"""The sandbox against real etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and kwok processes, checked through the Kubernetes Python client and raw TLS."""

from __future__ import annotations

import datetime as dt
import os
import signal
import ssl
import uuid
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from reconciler import sandbox
from reconciler.core import kubeadm, kubeconfig, pki
from reconciler.errors import APIError
from reconciler.sandbox import _workloads
from reconciler.sandbox._api import Client
from reconciler.sandbox._paths import SandboxPaths
from reconciler.shell.kube import KubeconfigClient

from .helpers import (client_cert, cluster_ca, core_api, is_listening, listening_ports, node_file,
                      process_alive, request_as, supervisor_state, wait_until)

pytestmark = pytest.mark.integration


def test_every_worker_is_a_ready_node(cluster):
    nodes = core_api(cluster.kubeconfig).list_node().items
    ready = {n.metadata.name for n in nodes
             if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])}
    assert ready == {"it-worker-1", "it-worker-2", "it-worker-3"}


def test_node_directories_follow_kubeadms_layout(cluster):
    control_plane = Path(cluster.nodes[0].root)
    for name in ("ca.crt", "ca.key", "apiserver.crt", "front-proxy-ca.crt", "sa.pub", "etcd/ca.crt",
                 "etcd/server.crt"):
        assert (control_plane / "etc/kubernetes/pki" / name).is_file(), name
    for name in ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf"):
        assert (control_plane / "etc/kubernetes" / name).stat().st_mode & 0o777 == 0o600, name
    assert (control_plane / "etc/kubernetes/pki/ca.key").stat().st_mode & 0o777 == 0o600
    manifests = sorted(p.name for p in (control_plane / "etc/kubernetes/manifests").iterdir())
    assert manifests == ["etcd.yaml", "kube-apiserver.yaml", "kube-controller-manager.yaml",
                         "kube-scheduler.yaml", "kwok.yaml"]
    ca_crt = (control_plane / "etc/kubernetes/pki/ca.crt").read_bytes()
    for worker in cluster.nodes[1:]:
        root = Path(worker.root)
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
            "etc/kubernetes/kubelet.conf", "etc/kubernetes/pki/ca.crt",
            "var/lib/kubelet/pki/kubelet-client-current.pem"]
        assert (root / "etc/kubernetes/pki/ca.crt").read_bytes() == ca_crt


def test_root_ca_configmap_in_a_new_namespace_equals_the_sandbox_ca(cluster):
    api = core_api(cluster.kubeconfig)
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    api.create_namespace({"metadata": {"name": namespace}})
    try:
        def published():
            try:
                return api.read_namespaced_config_map("kube-root-ca.crt", namespace).data["ca.crt"]
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        ca_crt = wait_until("kube-root-ca.crt in the new namespace", published, timeout=30)
        assert ca_crt == node_file(cluster, 0, kubeadm.CLUSTER_CA_CERT).read_text()
    finally:
        api.delete_namespace(namespace)


def test_cluster_info_carries_the_cluster_ca_for_kubeadm_join(cluster):
    configmap = core_api(cluster.kubeconfig).read_namespaced_config_map("cluster-info", "kube-public")
    document = kubeconfig.parse(configmap.data["kubeconfig"], source="cluster-info")
    assert kubeconfig.cluster_ca_pem(document, "", source="cluster-info") == \
        node_file(cluster, 0, kubeadm.CLUSTER_CA_CERT).read_bytes()


def test_a_client_cert_from_the_cluster_ca_authenticates_and_one_from_another_ca_is_rejected(cluster):
    server, ca_file = cluster.apiservers[0], node_file(cluster, 0, kubeadm.CLUSTER_CA_CERT)
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    trusted = client_cert(cluster_ca(cluster), "alice", ("dev",))
    status, body = request_as(server, ca_file, trusted, "POST",
                              "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    assert status == 201
    assert body["status"]["userInfo"]["username"] == "alice"
    assert "dev" in body["status"]["userInfo"]["groups"]

    stranger_ca = pki.new_ca("kubernetes", now=pki.dt.datetime.now(pki.dt.timezone.utc),
                             key=pki.KeySpec("ECDSA", 256))
    stranger = client_cert(stranger_ca, "alice", ("system:masters",))
    status, body = request_as(server, ca_file, stranger, "POST",
                              "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    assert status == 401, body


def test_the_apiserver_presents_a_serving_cert_signed_by_the_cluster_ca(cluster):
    port = int(cluster.apiservers[0].rsplit(":", 1)[1])
    presented = ssl.get_server_certificate(("127.0.0.1", port))
    cert = pki.load_certificates(presented.encode(), source="handshake")[0]
    assert pki.is_signed_by(cert, cluster_ca(cluster).cert)
    assert cert == pki.load_certificates(
        node_file(cluster, 0, f"{kubeadm.PKI_DIR}/apiserver.crt").read_bytes(), source="apiserver.crt")[0]


def _pids(name: str) -> dict[str, int]:
    return {key: c["pid"] for key, c in supervisor_state(name)["components"].items()}


def _healthy(name: str) -> bool:
    return sandbox.status(SandboxPaths.named(name))["healthy"]


def test_a_manifest_change_restarts_exactly_that_component(cluster):
    before = _pids("it")
    key = "it-control-plane-1/kube-scheduler"
    restarts_before = supervisor_state("it")["components"][key]["restarts"]
    manifest = node_file(cluster, 0, f"{kubeadm.MANIFESTS_DIR}/kube-scheduler.yaml")
    text = manifest.read_text()
    # An edit such as the rotation makes: same component, one flag more.
    manifest.write_text(text.replace("- --leader-elect=true", "- --leader-elect=true\n    - --v=1"))
    restarted = wait_until("the scheduler to restart", lambda: _pids("it")[key] not in (None, before[key]) and
                           supervisor_state("it")["components"][key]["status"] == "running")
    assert restarted
    after = _pids("it")
    assert {k: v for k, v in after.items() if k != key} == {k: v for k, v in before.items() if k != key}
    state = supervisor_state("it")["components"][key]
    assert state["last_restart_reason"] == "manifest changed" and state["restarts"] == restarts_before + 1
    assert not Path(f"/proc/{before[key]}").exists()
    wait_until("the sandbox to be healthy again", lambda: _healthy("it"), timeout=60)


def test_a_crashed_component_is_reported_then_restarted(cluster):
    key = "it-control-plane-1/kwok"
    before = supervisor_state("it")["components"][key]
    os.kill(before["pid"], signal.SIGKILL)
    report = wait_until("status to report the crash", lambda: (
        lambda r: r if r["components"][key]["last_exit_code"] == -signal.SIGKILL else None)(
            sandbox.status(SandboxPaths.named("it"))), timeout=10, interval=0.05)
    assert report["components"][key]["last_exit_code"] == -9
    wait_until("kwok to come back", lambda: supervisor_state("it")["components"][key]["status"] == "running"
               and supervisor_state("it")["components"][key]["pid"] != before["pid"], timeout=20)
    after = sandbox.status(SandboxPaths.named("it"))["components"][key]
    assert after["restarts"] == before["restarts"] + 1
    assert after["last_restart_reason"] == "crashed with exit code -9"
    wait_until("the sandbox to be healthy again", lambda: _healthy("it"), timeout=60)


def test_down_leaves_no_process_port_or_directory_and_keep_keeps_only_the_files(start_sandbox):
    start_sandbox("gone", control_planes=1, workers=1)
    paths = SandboxPaths.named("gone")
    pids = list(_pids("gone").values()) + [int(paths.supervisor_pid.read_text())]
    ports = set().union(*(listening_ports(pid) for pid in pids))
    assert len(ports) >= 5  # etcd client and peer, apiserver, controller-manager, scheduler
    sandbox.down(paths, keep=True)
    assert [pid for pid in pids if process_alive(pid)] == []
    assert sorted(p for p in ports if is_listening(p)) == []
    assert (paths.directory / "nodes/gone-control-plane-1/etc/kubernetes/pki/ca.key").is_file()
    assert not sandbox.status(paths)["healthy"]
    sandbox.down(paths)  # the kept directory goes with a second down
    assert not paths.directory.exists()


def test_a_killed_supervisor_takes_its_components_along_and_status_says_so(start_sandbox):
    start_sandbox("orphan", control_planes=1, workers=0)
    paths = SandboxPaths.named("orphan")
    components = list(_pids("orphan").values())
    os.kill(int(paths.supervisor_pid.read_text()), signal.SIGKILL)
    wait_until("components to exit with their supervisor",
               lambda: not any(process_alive(pid) for pid in components), timeout=15)
    report = sandbox.status(paths)
    assert not report["healthy"]
    assert "supervisor not running (sandbox stopped or crashed)" in report["problems"]
    sandbox.down(paths)
    assert not paths.directory.exists()


# --- workloads: kubeadm's add-ons and sample applications on kwok's nodes ---------------------

def _pods(client, namespace: str, app: str) -> list[dict]:
    return client.list(f"/api/v1/namespaces/{namespace}/pods", label_selector=f"k8s-app={app}")


def _ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _root_ca_volume(pod: dict) -> bool:
    """Whether the pod reads kube-root-ca.crt through the projected volume the ServiceAccount
    admission plugin adds (kube-api-access-*)."""
    return any(source.get("configMap", {}).get("name") == "kube-root-ca.crt"
               for volume in pod["spec"].get("volumes") or [] if volume["name"].startswith("kube-api-access-")
               for source in (volume.get("projected") or {}).get("sources") or [])


def test_addons_and_sample_workloads_run_on_the_workers_and_mount_the_root_ca(cluster):
    workers = {node.name for node in cluster.nodes if node.role == "worker"}
    assert cluster.workloads > 0, "the shared cluster is started with sample workloads"
    expected = _workloads.workloads(cluster.workloads)
    with _api_client(cluster) as api, KubeconfigClient(Path(cluster.kubeconfig)) as client:
        for workload in expected:
            assert _workloads.rolled_out(api, workload), workload
        proxies = _pods(client, "kube-system", "kube-proxy")
        assert sorted(pod["spec"]["nodeName"] for pod in proxies) == sorted(workers)  # one on every node
        pods = proxies + _pods(client, "kube-system", "kube-dns")
        for index in range(1, cluster.workloads + 1):
            pods += _pods(client, f"app-{index}", "web")
        pods += _pods(client, "app-1", "db")
        assert len(pods) == len(workers) + 2 + 2 * cluster.workloads + 2
        for pod in pods:
            where = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            assert _ready(pod) and pod["spec"]["nodeName"] in workers, where
            assert _root_ca_volume(pod), f"{where} does not mount kube-root-ca.crt"
        assert {pod["spec"]["serviceAccountName"] for pod in proxies} == {"kube-proxy"}


def test_a_rollout_restart_replaces_every_coredns_pod_keeping_one_ready(cluster):
    """What `kubectl rollout restart` does, and what careconcile will do to a Deployment:
    the template annotation; the real deployment controller rolls kwok's pods, one at a
    time (maxUnavailable 1). The shared cluster keeps the restarted CoreDNS."""
    coredns = _workloads.Workload("Deployment", "kube-system", "coredns")
    with _api_client(cluster) as api, KubeconfigClient(Path(cluster.kubeconfig)) as client:
        before = {pod["metadata"]["uid"] for pod in _pods(client, "kube-system", "kube-dns")}
        assert len(before) == 2
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        client.patch(coredns.path, {"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": stamp}}}}})
        ready_counts = []

        def done() -> bool:
            pods = _pods(client, "kube-system", "kube-dns")
            ready_counts.append(sum(1 for pod in pods if _ready(pod) and not pod["metadata"].get("deletionTimestamp")))
            now = {pod["metadata"]["uid"] for pod in pods}
            return (_workloads.rolled_out(api, coredns) and not (now & before) and len(now) == 2
                    and all(_ready(pod) for pod in pods))

        wait_until("coredns rolled out with new pods", done, timeout=120, interval=0.05)
        assert min(ready_counts) >= 1, f"no CoreDNS pod was Ready at some point: {ready_counts}"


def test_eviction_honours_a_budget_that_allows_no_disruption(cluster):
    """The Eviction API answers 429 while a PodDisruptionBudget allows no disruption, and
    evicts once it allows one; a new pod then takes the evicted one's place."""
    namespace = f"evict-{uuid.uuid4().hex[:6]}"
    web = _workloads.Workload("Deployment", namespace, "web")
    with _api_client(cluster) as api, KubeconfigClient(Path(cluster.kubeconfig)) as client:
        client.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
        try:
            client.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", _workloads.sample_deployment(namespace))
            # a budget that allows no disruption: every replica must stay available
            client.create(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
                          _workloads.budget(namespace, "web", _workloads.SAMPLE_REPLICAS))
            pdb = f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/web"
            wait_until("web rolled out and its budget observed", lambda: _workloads.rolled_out(api, web) and (
                client.get(pdb).get("status") or {}).get("observedGeneration") == client.get(pdb)["metadata"][
                "generation"], timeout=60)
            victim = _pods(client, namespace, "web")[0]["metadata"]["name"]
            eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                        "metadata": {"name": victim, "namespace": namespace}}
            evict = f"/api/v1/namespaces/{namespace}/pods/{victim}/eviction"
            with pytest.raises(APIError) as refused:
                client.create(evict, eviction)
            assert refused.value.status == 429, refused.value
            client.patch(pdb, {"spec": {"minAvailable": 1}})
            wait_until("the eviction is allowed", lambda: _evicted(client, evict, eviction), timeout=60)
            def replaced() -> bool:
                pods = _pods(client, namespace, "web")
                return (_workloads.rolled_out(api, web) and len(pods) == _workloads.SAMPLE_REPLICAS
                        and victim not in {pod["metadata"]["name"] for pod in pods} and all(map(_ready, pods)))

            wait_until("a new pod in the evicted one's place", replaced, timeout=60)
        finally:  # the shared cluster as it was: the namespace gone, not just Terminating
            client.delete(f"/api/v1/namespaces/{namespace}")
            wait_until(f"namespace {namespace} deleted", lambda: _gone(client, f"/api/v1/namespaces/{namespace}"),
                       timeout=120)


def _gone(client, path: str) -> bool:
    try:
        client.get(path)
        return False
    except APIError as exc:
        if exc.status == 404:
            return True
        raise


def _evicted(client, path: str, eviction: dict) -> bool:

    try:
        client.create(path, eviction)
        return True
    except APIError as exc:
        if exc.status == 429:  # the budget's new minimum not observed yet
            return False
        raise


def _api_client(info) -> Client:
    return Client(Path(info.kubeconfig))
