"""KubeClient, the TLS probes and the cluster lock against a real kube-apiserver.

One sandbox of its own ("kube", 1 control plane, 1 worker): the lock tests write a Lease
into kube-system, which the shared "it" sandbox should not see. The cluster CA is never
changed here."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from reconciler._time import CLOCK_OFFSET_ENV, micro_time, parse_time
from reconciler.core import pki
from reconciler.errors import (APIConflictError, APINotFoundError, ClusterUnreachableError, LockError,
                               LockHeldError)
from reconciler.core.leases import renewal_stored_at
from reconciler.core.observed import ObservedComponent
from reconciler.shell import components
from reconciler.shell import lock as cluster_lock
from reconciler.shell.components import NODE_LEASES, ComponentRestarts
from reconciler.shell.kube import KubeClient, KubeTarget, load_kubeconfig
from reconciler.shell.lock import LEASE, ClusterLock, LockInfo, current_lock, force_unlock, lease_body
from reconciler.shell.probes import accepts_client_certificate, presented_certificate, serves_chain_to

from .helpers import client_cert, cluster_ca, node_file

pytestmark = pytest.mark.integration

CLUSTER = "kube"


@pytest.fixture(scope="module")
def kube(start_sandbox):
    return start_sandbox(CLUSTER, control_planes=1, workers=1)


@pytest.fixture(scope="module")
def target(kube) -> KubeTarget:
    return load_kubeconfig(kube.kubeconfig)


@pytest.fixture
def client(target):
    with KubeClient(target) as client:
        yield client


@pytest.fixture
def no_lock(client):
    """Each lock test starts and ends without a lock on the cluster."""
    _remove_lease(client)
    yield
    _remove_lease(client)


def _remove_lease(client: KubeClient) -> None:
    try:
        client.delete(LEASE)
    except APINotFoundError:
        pass


def _foreign_ca() -> pki.KeyPair:
    return pki.new_ca("kubernetes", now=dt.datetime.now(dt.timezone.utc), key=pki.KeySpec("ECDSA", 256))


# --- the client ------------------------------------------------------------------------------

def test_configmap_create_get_list_patch_delete(kube, client, target):
    name = f"kc-{uuid.uuid4().hex[:8]}"
    collection = "/api/v1/namespaces/default/configmaps"
    path = f"{collection}/{name}"
    created = client.create(collection, {"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": name, "labels": {"test": name}},
                                         "data": {"a": "1", "u": "✓"}})
    assert created["metadata"]["uid"] and created["data"] == {"a": "1", "u": "✓"}
    assert client.get(path)["metadata"]["uid"] == created["metadata"]["uid"]
    assert [c["metadata"]["name"] for c in client.list(collection, label_selector=f"test={name}")] == [name]
    assert client.list(collection, field_selector=f"metadata.name={name}")[0]["data"]["a"] == "1"

    patched = client.patch(path, {"data": {"a": None, "b": "2"}})
    assert patched["data"] == {"b": "2", "u": "✓"}
    patched = client.patch(path, [{"op": "add", "path": "/data/c", "value": "3"}], merge=False)
    assert patched["data"]["c"] == "3"

    stale = dict(created)  # carries the first resourceVersion: a conditional replace must fail
    with pytest.raises(APIConflictError, match=rf"PUT {path} on kubeconfig .* 409 Conflict: .*modified"):
        client.replace(path, stale)

    client.delete(path)
    with pytest.raises(APINotFoundError) as error:
        client.get(path)
    message = str(error.value)
    assert message.startswith(f"GET {path} on kubeconfig {kube.kubeconfig} context kubernetes-admin@{CLUSTER} ")
    assert f"({target.server}): 404 NotFound: configmaps \"{name}\" not found" in message


def test_an_unreachable_port_is_cluster_unreachable_naming_the_server(target):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = f"https://127.0.0.1:{port}"
    down = KubeTarget(name="kubeconfig x context y", server=server, ca_pem=target.ca_pem)
    with KubeClient(down, timeout=2) as client, pytest.raises(ClusterUnreachableError) as error:
        client.get("/version")
    assert f"GET /version on kubeconfig x context y ({server}): connection refused" == str(error.value)
    assert isinstance(error.value.__cause__, ConnectionRefusedError)


# --- TLS probes ----------------------------------------------------------------------------

def test_presented_certificate_is_the_nodes_apiserver_crt(kube):
    on_disk = pki.load_certificates(node_file(kube, 0, "/etc/kubernetes/pki/apiserver.crt").read_bytes(),
                                    source="apiserver.crt")[0]
    assert presented_certificate(kube.apiservers[0]) == on_disk


def test_accepts_client_certificate_from_the_cluster_ca_only(kube, target):
    server = kube.apiservers[0]
    ours = client_cert(cluster_ca(kube), "careconcile-probe", ("probers",))
    assert accepts_client_certificate(server, ca_pem=target.ca_pem, cert_pem=ours.cert_pem,
                                      key_pem=ours.key_pem) == "careconcile-probe"
    foreign = client_cert(_foreign_ca(), "careconcile-probe")
    assert accepts_client_certificate(server, ca_pem=target.ca_pem, cert_pem=foreign.cert_pem,
                                      key_pem=foreign.key_pem) is None


def test_serves_chain_to_the_cluster_ca_and_not_to_a_foreign_one(kube, target):
    server = kube.apiservers[0]
    assert serves_chain_to(server, target.ca_pem)
    assert not serves_chain_to(server, _foreign_ca().cert_pem)


# --- the lock ------------------------------------------------------------------------------

def test_lock_is_exclusive_and_force_unlock_needs_the_right_id(client, target, no_lock):
    first = ClusterLock(client, CLUSTER, operation="apply")
    info = first.acquire()
    assert current_lock(client) == LockInfo.from_lease(client.get(LEASE))
    assert current_lock(client).id == info.id and current_lock(client).operation == "apply"
    lease = client.get(LEASE)
    assert lease["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "careconcile"}
    assert lease["spec"]["leaseDurationSeconds"] == 900
    assert lease["metadata"]["annotations"]["careconcile.dev/lock-pid"] == str(info.pid)

    with KubeClient(target) as other_client:
        with pytest.raises(LockHeldError) as held:
            ClusterLock(other_client, CLUSTER, operation="plan").acquire()
    message = str(held.value)
    assert info.id in message and info.holder in message and "operation apply" in message
    assert info.created in message and f"careconcile force-unlock {CLUSTER} {info.id}" in message

    with pytest.raises(LockError, match=rf"{info.id}.*not lock wrong-id") as wrong:
        force_unlock(client, CLUSTER, "wrong-id")
    assert info.holder in str(wrong.value)
    assert force_unlock(client, CLUSTER, info.id).id == info.id
    assert current_lock(client) is None
    with pytest.raises(LockError, match=rf"cluster {CLUSTER}: not locked"):
        force_unlock(client, CLUSTER, info.id)
    first.release()  # already gone: nothing to do, no error


def test_context_manager_acquires_and_releases(client, no_lock):
    with ClusterLock(client, CLUSTER, operation="apply", ttl=60) as info:
        assert current_lock(client).id == info.id and current_lock(client).ttl == 60
    assert current_lock(client) is None


def test_renew_moves_renew_time_and_notices_a_takeover(client, target, no_lock):
    lock = ClusterLock(client, CLUSTER, operation="apply", ttl=60)
    info = lock.acquire()
    before = client.get(LEASE)["spec"]["renewTime"]
    renewed = lock.renew()
    assert renewed.renewed > before and client.get(LEASE)["spec"]["renewTime"] == renewed.renewed
    # Another run force-unlocks and takes the lock: renew and release must both refuse.
    force_unlock(client, CLUSTER, info.id)
    with KubeClient(target) as other_client:
        thief = ClusterLock(other_client, CLUSTER, operation="apply").acquire()
    with pytest.raises(LockError, match="lock was taken over") as error:
        lock.renew()
    assert thief.id in str(error.value)
    with pytest.raises(LockError, match="lock was taken over"):
        lock.release()
    assert current_lock(client).id == thief.id  # release left the other run's lock alone


def _write_lease(client: KubeClient, info: LockInfo) -> None:
    client.create("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases", lease_body(info))


def test_a_lock_whose_process_on_this_host_is_gone_is_taken_over(client, no_lock):
    dead_pid = _dead_pid()
    stale = LockInfo(id=str(uuid.uuid4()), holder="someone@here", host=socket.gethostname(), pid=dead_pid,
                     operation="apply", version="0.0.1", created="2026-01-01T00:00:00Z", ttl=900,
                     renewed=micro_time(dt.datetime.now(dt.timezone.utc)),
                     process_space=cluster_lock.process_space())
    _write_lease(client, stale)
    with ClusterLock(client, CLUSTER, operation="apply") as info:
        assert info.took_over_from is not None and info.took_over_from.id == stale.id
        assert info.took_over_from.pid == dead_pid
        lease = client.get(LEASE)
        assert lease["spec"]["holderIdentity"] == info.id and lease["spec"]["leaseTransitions"] == 1
    assert current_lock(client) is None


def test_a_dead_pid_of_another_pid_namespace_proves_nothing(client, no_lock):
    # Another container with the same host name: its pids are not ours to check.
    elsewhere = LockInfo(id=str(uuid.uuid4()), holder="someone@here", host=socket.gethostname(), pid=_dead_pid(),
                         operation="apply", version="0.0.1", created="2026-01-01T00:00:00Z", ttl=900,
                         renewed=micro_time(dt.datetime.now(dt.timezone.utc)),
                         process_space="another-boot/pid:[4026531836]")
    _write_lease(client, elsewhere)
    with pytest.raises(LockHeldError, match=elsewhere.id):
        ClusterLock(client, CLUSTER, operation="apply").acquire()
    force_unlock(client, CLUSTER, elsewhere.id)


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()  # reaped: the pid is dead (and reuse within the test is improbable)
    return process.pid


def test_a_lock_on_this_host_whose_process_lives_is_held(client, no_lock):
    alive = LockInfo(id=str(uuid.uuid4()), holder="someone@here", host=socket.gethostname(), pid=1,
                     operation="apply", version="0.0.1", created="2026-01-01T00:00:00Z", ttl=900,
                     renewed=micro_time(dt.datetime.now(dt.timezone.utc)))
    _write_lease(client, alive)
    with pytest.raises(LockHeldError, match=alive.id):
        ClusterLock(client, CLUSTER, operation="apply").acquire()


def test_an_expired_lock_is_taken_over_by_exactly_one_of_several_runs(target, client, no_lock):
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    expired = LockInfo(id=str(uuid.uuid4()), holder="someone@elsewhere", host="elsewhere", pid=1,
                       operation="apply", version="0.0.1", created="2026-01-01T00:00:00Z", ttl=60,
                       renewed=micro_time(long_ago))
    _write_lease(client, expired)
    outcomes: list[object] = []

    def contend() -> None:
        with KubeClient(target) as own_client:
            try:
                outcomes.append(ClusterLock(own_client, CLUSTER, operation="apply").acquire())
            except LockHeldError as error:
                outcomes.append(error)

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if isinstance(o, LockInfo)]
    assert len(winners) == 1 and len(outcomes) == 4, outcomes
    assert winners[0].took_over_from.id == expired.id
    assert current_lock(client).id == winners[0].id


def test_a_run_whose_clock_is_1000s_behind_holds_its_lock_against_a_run_with_a_true_clock(
        target, client, no_lock, monkeypatch):
    """The clock decides nothing: a run on a machine whose clock is 1000 s behind (more than
    the 900 s TTL) writes the API server's time into the Lease, so that a run on a machine
    with a true clock does not take its live lock over. The skew is faked in careconcile's
    clock alone (the process's, and the name the lock module reads it by), never the system's."""
    monkeypatch.setenv(CLOCK_OFFSET_ENV, "-1000")
    monkeypatch.setattr(cluster_lock, "utcnow", lambda: dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1000))
    with KubeClient(target) as behind_client:
        behind = ClusterLock(behind_client, CLUSTER, operation="apply")
        info = behind.acquire()
    lease = client.get(LEASE)
    # Both the API server's clock: the renewTime written, and the creationTimestamp it set.
    created = parse_time(lease["metadata"]["creationTimestamp"])
    assert abs(parse_time(lease["spec"]["renewTime"]) - created) < dt.timedelta(seconds=3), lease["spec"]
    monkeypatch.undo()
    with KubeClient(target) as true_client:
        with pytest.raises(LockHeldError, match=info.id):
            ClusterLock(true_client, CLUSTER, operation="apply").acquire()
    assert current_lock(client).id == info.id


def test_a_renewed_node_lease_passes_the_kubelet_check_with_careconciles_clock_100s_ahead(kube, client, monkeypatch):
    """The kubelet check against the sandbox's real node Leases (kwok renews them, 6 s
    duration): careconcile's clock faked 100 s ahead, the Lease renewed after the renewTime
    read "at the restart" passes, judged by the node's clock and by when the API server
    stored the renewal (its managedFields), never by careconcile's clock."""
    ahead = dt.timedelta(seconds=100)
    monkeypatch.setenv(CLOCK_OFFSET_ENV, str(ahead.total_seconds()))
    monkeypatch.setattr(components, "utcnow", lambda: dt.datetime.now(dt.timezone.utc) + ahead)
    node = kube.nodes[-1].name
    lease = client.get(f"{NODE_LEASES}/{node}")
    assert renewal_stored_at(lease) is not None, lease["metadata"]  # the API server keeps when it stored it
    seen = parse_time(lease["spec"]["renewTime"])
    kubelet = ObservedComponent(id=f"{node}:kubelet", node=node, name="kubelet", inputs=(), inputs_digest="d",
                                restarted_for="d", restarted_at=dt.datetime.now(dt.timezone.utc), restart="command",
                                command=("true",), lease_renewed_at_restart=seen)
    check = ComponentRestarts(SimpleNamespace(client=client))
    problems = check.services_not_ready([kubelet])
    deadline = time.monotonic() + 20
    while problems and time.monotonic() < deadline:
        time.sleep(0.5)
        problems = check.services_not_ready([kubelet])
    assert problems == []
    assert parse_time(client.get(f"{NODE_LEASES}/{node}")["spec"]["renewTime"]) > seen
