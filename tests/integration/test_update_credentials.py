"""`careconcile update credentials --cluster-ca` and `update credentials
certificate-authorities rotate` as a new user runs them: from a directory that holds only
the admin cluster's kubeconfig, against a user sandbox registered in an admin sandbox whose
nodes are reached over SSH."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from ruamel.yaml import YAML

from reconciler.core import kubeconfig, pki
from reconciler.core.authorities import AUTHORITIES
from reconciler.errors import APINotFoundError
from reconciler.shell.executor import CRASH_AFTER_ENV
from reconciler.shell.kube import KubeClient, KubeconfigClient, kubeconfig_target, load_kubeconfig
from reconciler.shell.lock import current_lock
from reconciler.shell.specfile import load_spec

from . import exec_plugin
from .helpers import wait_until
from .rotation import (
    POLL_GAP_SECONDS, Poller, assert_no_private_key, assert_no_private_key_in_files, assert_nodes_trust_only,
    bundle_fingerprints, careconcile, record_ca, rejects_client_of,
)
from .sshd import require_sshd

pytestmark = pytest.mark.integration

ADMIN, USER = "ucadmin", "ucuser"
NAMESPACE = f"cluster-{USER}"
SECRETS = f"/api/v1/namespaces/{NAMESPACE}/secrets"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"


@pytest.fixture(scope="module")
def admin(start_sandbox):
    return start_sandbox(ADMIN, control_planes=1, workers=0)


@pytest.fixture(scope="module")
def user(start_sandbox, admin):
    require_sshd()
    return start_sandbox(USER, control_planes=1, workers=2, admin=ADMIN, ssh=True)


@pytest.fixture
def newcomer(admin, tmp_path) -> Path:
    """A fresh directory with nothing but the admin kubeconfig, whose user authenticates as
    most admin clusters' users do: through an exec credential plugin (a real script beside
    it, which hands out the admin sandbox's client certificate)."""
    directory = tmp_path / "operator"
    exec_plugin.plugin_kubeconfig(Path(admin.kubeconfig), Path(admin.kubeconfig), directory, name="admin-kubeconfig")
    return directory


CLUSTER_CA_ONLY = ("--cluster-ca", "--cluster-name", USER)
ALL_THREE = ("certificate-authorities", "rotate", "--cluster", USER)


def update_credentials(directory: Path, form: tuple[str, ...] = CLUSTER_CA_ONLY, *,
                       kubeconfig: tuple[str, ...] = ("--kubeconfig", "admin-kubeconfig"), **popen) -> subprocess.Popen:
    """The command exactly as the docs give it (``form``: the cluster CA alone, or
    certificate-authorities rotate), run in ``directory``, with no CARECONCILE_WORKSPACE:
    the workspace is ./careconcile-workspace there."""
    env = {key: value for key, value in os.environ.items() if key not in ("CARECONCILE_WORKSPACE", "KUBECONFIG")}
    env.update(popen.pop("env", {}))
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "update", "credentials", *form, *kubeconfig],
        cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert_no_private_key((stdout + stderr).encode(), "output of update credentials")
    return process.returncode, stdout, stderr


def admin_secret(admin, name: str) -> dict:
    with KubeconfigClient(Path(admin.kubeconfig)) as client:
        return client.get(f"{SECRETS}/{name}")


def secret_kubeconfig(admin) -> str:
    return base64.b64decode(admin_secret(admin, f"{USER}-kubeconfig")["data"]["value"]).decode()


def plain_spec(user) -> Path:
    """The user sandbox's spec without admin mode: its control plane's admin.conf as kubeconfig.
    Beside the original, whose node keyFile is relative to its directory."""
    yaml = YAML()
    document = yaml.load(Path(user.spec).read_text())
    cluster = document["spec"]["clusters"][0]
    del cluster["management"]
    cluster["kubeconfig"] = str(Path(user.nodes[0].root) / "etc/kubernetes/admin.conf")
    path = Path(user.spec).parent / "plain-spec.yaml"
    with path.open("w") as handle:
        yaml.dump(document, handle)
    return path


def assert_admin_cluster_holds(admin, ca: pki.KeyPair) -> None:
    """<user>-ca holds ``ca`` alone with its key; <user>-kubeconfig trusts only it and its
    client certificate comes from it."""
    secret = admin_secret(admin, f"{USER}-ca")
    certs = pki.load_certificates(base64.b64decode(secret["data"]["tls.crt"]), source="tls.crt")
    assert [pki.fingerprint(c) for c in certs] == [pki.fingerprint(ca.cert)]
    assert pki.key_pem_matches_cert(base64.b64decode(secret["data"]["tls.key"]), ca.cert, source="tls.key")
    document = kubeconfig.parse(secret_kubeconfig(admin), source="kubeconfig Secret")
    for pem in kubeconfig.ca_certificates(document, source="kubeconfig Secret"):
        assert bundle_fingerprints(pem, "kubeconfig Secret") == [pki.fingerprint(ca.cert)]
    for user, cert_pem, _ in kubeconfig.embedded_credentials(document):
        assert pki.is_signed_by(pki.load_certificates(cert_pem, source=user)[0], ca.cert), user


def applied_rotation(admin) -> int:
    """The last rotation applied to the user cluster: 0 while it has no state Secret yet."""
    try:
        state = admin_secret(admin, f"{USER}-careconcile-state")
    except APINotFoundError:
        return 0
    public = json.loads(base64.b64decode(state["data"]["clusterCA.json"]))
    assert public["rotation"] is None and public["verifiedPhase"] == 0, "a rotation is in progress"
    return public["appliedRotation"]


def locks_held_by(admin, pid: int) -> bool:
    """Whether both Leases of update credentials' lock belong to process ``pid``: the one in
    the admin cluster and the user cluster's kube-system/careconcile-lock (reached with the
    kubeconfig the admin cluster holds, which trusts the CAs of a rotation in progress)."""
    with KubeconfigClient(Path(admin.kubeconfig)) as client:
        management = current_lock(client, namespace=NAMESPACE, name=f"{USER}-careconcile-lock")
    if management is None or management.pid != pid:
        return False
    with KubeClient(kubeconfig_target(secret_kubeconfig(admin), source="kubeconfig Secret")) as client:
        cluster = current_lock(client)
    return cluster is not None and cluster.pid == pid


def plant_inventory_configmap(admin, user, marker: Path) -> None:
    """The ConfigMap <user>-careconcile-nodes (where an older careconcile kept the inventory)
    as someone allowed only to edit ConfigMaps there writes it: a restart command of theirs on
    the control plane, a worker moved to another address, and a control-plane node of theirs."""
    nodes = []
    for node in load_spec(Path(user.spec)).document.spec.clusters[0].nodes:
        ssh = node.access.ssh
        entry = {"name": node.name, "role": node.role, "access": "ssh", "address": ssh.host,
                 "ssh": {"user": ssh.user, "port": ssh.port, "hostKey": ssh.host_key, "root": ssh.root}}
        if node.role == "control-plane":
            entry["ssh"]["kubeletRestart"] = ["sh", "-c", f"touch {marker}"]
        else:
            entry["address"] = "127.0.0.2"
        nodes.append(entry)
    nodes.append({**nodes[0], "name": "theirs-cp", "address": "127.0.0.3"})
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{USER}-careconcile-nodes"},
            "data": {"nodes.yaml": json.dumps({"apiVersion": "careconcile.dev/v1alpha1", "kind": "NodeInventory",
                                               "cluster": USER, "nodes": nodes})}}
    with KubeconfigClient(Path(admin.kubeconfig)) as client:
        path = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{USER}-careconcile-nodes"
        try:
            body["metadata"]["resourceVersion"] = client.get(path)["metadata"]["resourceVersion"]
            client.replace(path, body)
        except APINotFoundError:
            client.create(f"/api/v1/namespaces/{NAMESPACE}/configmaps", body)


def test_update_credentials_killed_then_certificate_authorities_rotate_finishes_it_and_rotates_all_three(
        admin, user, newcomer, tmp_path):
    """`update credentials --cluster-ca` is killed after 25 actions; `update credentials
    certificate-authorities rotate --cluster NAME --kubeconfig ADMIN`, from the same directory
    that holds only the admin kubeconfig, finishes that rotation (once, not twice) and then
    rotates the etcd and front-proxy CAs. A client that fetches the kubeconfig Secret for
    every request polls the user cluster throughout: nothing fails until the etcd CA's part
    (whose restarts of the only etcd member and apiserver are outages the plan announces).
    Other careconcile runs try to cut in. An inventory ConfigMap edited beforehand changes no
    command, address or node of either run."""
    marker = newcomer / "ran-from-configmap"
    plant_inventory_configmap(admin, user, marker)
    old = record_ca(user)
    assert_admin_cluster_holds(admin, old)
    before = applied_rotation(admin)
    others = {name: record_cert(user, layout) for name, layout in AUTHORITIES.items() if name != "clusterCA"}
    # The poller's own client of the admin cluster (a connection is not shared between threads).
    with KubeconfigClient(Path(admin.kubeconfig)) as poll:
        def read_secret_kubeconfig() -> str:
            secret = poll.get(f"{SECRETS}/{USER}-kubeconfig")
            return base64.b64decode(secret["data"]["value"]).decode()

        # A user who fetches the kubeconfig from the admin cluster for every request.
        with Poller(newcomer / "poller-kubeconfig", set(user.apiservers), read=read_secret_kubeconfig) as poller:
            killed = update_credentials(newcomer, env={CRASH_AFTER_ENV: "25"})
            returncode, killed_stdout, killed_stderr = finish(killed)
            assert returncode == -signal.SIGKILL, killed_stdout + killed_stderr
            assert "[25/" in killed_stdout and "[26/" not in killed_stdout
            assert locks_held_by(admin, killed.pid), "the killed run left its lock behind"

            # The second run without --kubeconfig: as kubectl, it reads the files KUBECONFIG lists
            # (empty and missing entries skipped).
            rerun = update_credentials(newcomer, ALL_THREE, kubeconfig=(),
                                       env={"KUBECONFIG": f"{newcomer / 'absent'}::admin-kubeconfig"})
            # Once the second run holds both Leases of the lock, a change to that cluster by
            # another careconcile command is refused, naming the rotation. The second run is
            # paused meanwhile (its lock held), so that it cannot finish before they are asked.
            wait_until("the second run takes both Leases of the lock over",
                       lambda: rerun.poll() is None and locks_held_by(admin, rerun.pid), timeout=120)
            rerun.send_signal(signal.SIGSTOP)
            try:
                competing = careconcile("apply", user.spec, "--auto-approve", workspace=newcomer / "other-ws")
                # The same cluster described by a plain spec (its own kubeconfig, no management)
                # is locked in its kube-system: refused as well.
                plain = careconcile("apply", str(plain_spec(user)), "--auto-approve",
                                    workspace=newcomer / "other-ws")
            finally:
                rerun.send_signal(signal.SIGCONT)
            returncode, stdout, stderr = finish(rerun)
    assert returncode == 0, stdout + stderr
    assert "Finishing the interrupted rotation of the CAs (clusterCA, etcdCA, frontProxyCA)" in stdout
    # Both runs reached the admin cluster through the plugin, whose stderr is never on stdout.
    assert exec_plugin.runs(newcomer / "admin-kubeconfig") >= 2
    assert "sandbox-plugin: handing out" in killed_stderr and "sandbox-plugin" not in killed_stdout + stdout
    assert "took over the stale lock" in stderr
    for refused in (competing, plain):
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "is locked" in refused.stderr and "update credentials certificate-authorities rotate" in refused.stderr

    new = record_ca(user)
    assert pki.fingerprint(new.cert) != pki.fingerprint(old.cert)
    assert f"The cluster CA of {USER} is now {pki.fingerprint(new.cert)} (was {pki.fingerprint(old.cert)})" in stdout
    assert_admin_cluster_holds(admin, new)
    assert_nodes_trust_only(user, new.cert)
    assert rejects_client_of(user, old, trust=new.cert), "an apiserver still accepts the old CA's client certificate"
    # One rotation of the cluster CA over both runs, not two.
    assert applied_rotation(admin) == before + 1
    for name, was in others.items():
        now = record_cert(user, AUTHORITIES[name])
        assert now != was, f"{name} did not change"
        assert f"The {name} of {USER} is now {pki.fingerprint(now)} (was {pki.fingerprint(was)})" in stdout
    # Every leaf of each authority verifies (openssl) against a CA file holding its new CA alone.
    for name, layout in AUTHORITIES.items():
        ca_file = tmp_path / f"{name}.crt"
        ca_file.write_bytes(pki.cert_pem(record_cert(user, layout)))
        leaves = leaf_certificates(user, layout)
        pairs = [f"{leaf.path}.crt" for leaf in layout.leaves if leaf.form == "pair"]
        assert all(any(where.endswith(pair) for where, _ in leaves) for pair in pairs), f"{name}: a leaf is missing"
        for where, cert_pem in leaves:
            verified = subprocess.run(["openssl", "verify", "-CAfile", str(ca_file)], input=cert_pem,
                                      capture_output=True)
            assert verified.returncode == 0 and verified.stdout.strip().endswith(b": OK"), \
                f"{name}: {where}: {verified.stdout!r} {verified.stderr!r}"

    workspace = newcomer / "careconcile-workspace" / USER
    new_kubeconfig = workspace / f"{USER}-kubeconfig"
    assert f"New kubeconfig: {new_kubeconfig}" in stdout
    with KubeClient(load_kubeconfig(new_kubeconfig)) as client:
        assert client.get("/api/v1/namespaces/kube-system")["metadata"]["name"] == "kube-system"
    logs = sorted(workspace.glob("log/update-credentials-*/update-credentials.log"))
    assert len(logs) == 2 and f"Log: {logs[0]}" in killed_stdout and f"Log: {logs[1]}" in stdout
    lines = logs[-1].read_text().splitlines()
    # One part per authority in the one log: a header, its actions, "finished".
    headers = [line for line in lines if f" cluster {USER}" in line and " actions, from " in line]
    assert len(headers) == 3 and sum(line.endswith(" finished") for line in lines) == 3, "\n".join(lines)
    assert all(f" cluster {USER} ({name}): " in header for header, name in zip(headers, AUTHORITIES)), headers
    assert any(f" {USER}/etcdCA/" in line for line in lines) and any(f" {USER}/frontProxyCA/" in line for line in lines)
    assert lines[-1].endswith(" finished")
    assert all((log.parent / "spec.yaml").is_file() for log in logs)
    # The registered nodes, at their registered addresses, and no command from the ConfigMap.
    registered = load_spec(Path(user.spec)).document.spec.clusters[0].nodes
    for log in logs:
        ran = load_spec(log.parent / "spec.yaml").document.spec.clusters[0].nodes
        assert [(n.name, n.access.ssh.host, n.access.ssh.port, n.kubelet_restart) for n in ran] == \
            [(n.name, n.access.ssh.host, n.access.ssh.port, n.kubelet_restart) for n in registered]
    assert not marker.exists(), "a restart command from the inventory ConfigMap ran"
    assert not any((workspace / "ssh").iterdir()), "the SSH key was left in the workspace"
    assert_no_private_key_in_files(workspace / "log")

    # Until the etcd CA's part began, no request failed (the cluster CA's rotation is one
    # without an outage); the etcd CA's restarts of the only etcd member and apiserver are.
    etcd_began = dt.datetime.fromisoformat(headers[1].split()[0].replace("Z", "+00:00")).timestamp()
    assert poller.requests > 100
    assert poller.longest_gap(until=etcd_began) < POLL_GAP_SECONDS, \
        f"no request for {poller.longest_gap(until=etcd_began):.1f}s"
    assert poller.failures_before(etcd_began) == [], poller.failures_before(etcd_began)[:5]
    assert set(poller.per_server) == set(user.apiservers)
    print(f"\nthe etcd and front-proxy CAs' part: {len(poller.failures)} requests failed, longest gap "
          f"{poller.longest_gap():.1f}s")

    # The lock is released: neither Lease is left.
    with KubeconfigClient(Path(admin.kubeconfig)) as client:
        assert not [lease for lease in client.list(LEASES) if lease["metadata"]["name"].endswith("careconcile-lock")]
    with KubeClient(load_kubeconfig(new_kubeconfig)) as client:
        assert current_lock(client) is None

    # The run's own spec planned again (with the sandbox's SSH key for the copy the run
    # removed): nothing is left to do for any of the three.
    yaml = YAML()
    document = yaml.load((logs[-1].parent / "spec.yaml").read_text())
    for node in document["spec"]["clusters"][0]["nodes"]:
        node["access"]["ssh"]["keyFile"] = user.ssh["key_file"]
    again_spec = tmp_path / "again.yaml"
    with again_spec.open("w") as handle:
        yaml.dump(document, handle)
    again = careconcile("plan", str(again_spec), "--detailed-exitcode", workspace=newcomer / "careconcile-workspace")
    assert again.returncode == 0 and "No changes." in again.stdout, again.stdout + again.stderr


def record_cert(user, layout) -> x509.Certificate:
    certs = pki.load_certificates((Path(user.nodes[0].root) / layout.record_cert.lstrip("/")).read_bytes(),
                                  source=layout.record_cert)
    assert len(certs) == 1, f"{layout.record_cert} holds {len(certs)} CAs"
    return certs[0]


def leaf_certificates(user, layout) -> list[tuple[str, bytes]]:
    """(where, PEM) of every leaf certificate of the authority on the user cluster's nodes."""
    found = []
    for node in user.nodes:
        for leaf in layout.leaves:
            if node.role not in leaf.roles:
                continue
            path = Path(node.root) / leaf.path.lstrip("/")
            if leaf.form == "pair":
                path = path.with_name(path.name + ".crt")
            if not path.is_file():
                continue
            if leaf.form == "kubeconfig":
                document = kubeconfig.parse(path.read_text(), source=str(path))
                found += [(f"{path} {name}", cert_pem) for name, cert_pem, _ in kubeconfig.embedded_credentials(document)]
            else:
                found.append((str(path), pki.cert_pem(pki.load_certificates(path.read_bytes(), source=str(path))[0])))
    return found

