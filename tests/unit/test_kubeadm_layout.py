import base64
import datetime as dt

import pytest
from cryptography import x509

from reconciler.core import kubeadm, kubeconfig, pki
from reconciler.core.kubeadm import ControlPlanePorts, EtcdPorts
from reconciler.core.pki import KeySpec

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
FAST = KeySpec("ECDSA", 256)

KUBEADM_PKI = {
    "ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "apiserver-kubelet-client.crt",
    "apiserver-kubelet-client.key", "apiserver-etcd-client.crt", "apiserver-etcd-client.key",
    "front-proxy-ca.crt", "front-proxy-ca.key", "front-proxy-client.crt", "front-proxy-client.key",
    "sa.key", "sa.pub", "etcd/ca.crt", "etcd/ca.key", "etcd/server.crt", "etcd/server.key",
    "etcd/peer.crt", "etcd/peer.key", "etcd/healthcheck-client.crt", "etcd/healthcheck-client.key",
}
KUBEADM_KUBECONFIGS = {"admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf",
                       "kubelet.conf"}


@pytest.fixture(scope="module")
def authorities():
    return kubeadm.new_authorities(now=NOW, key=FAST)


@pytest.fixture(scope="module")
def control_plane(authorities):
    files = kubeadm.control_plane_files(
        authorities, node_name="c-control-plane-1", cluster_name="c", ports=ControlPlanePorts(6443, 10257, 10259),
        all_apiserver_ports=[7443, 6443], now=NOW, key=FAST)
    return {f.path: f for f in files}


def test_control_plane_holds_kubeadms_full_pki_and_kubeconfigs(control_plane):
    pki_files = {p.removeprefix(kubeadm.PKI_DIR + "/") for p in control_plane if p.startswith(kubeadm.PKI_DIR)}
    assert pki_files == KUBEADM_PKI
    confs = {p.rsplit("/", 1)[1] for p in control_plane if p.endswith(".conf")}
    assert confs == KUBEADM_KUBECONFIGS
    assert kubeadm.KUBELET_CLIENT_CERT in control_plane


def test_every_file_with_a_private_key_is_0600(control_plane):
    for path, file in control_plane.items():
        if b"PRIVATE KEY" in file.content or b"client-key-data" in file.content:
            assert file.mode == 0o600, path


def test_leaves_are_signed_by_the_right_ca(authorities, control_plane):
    def cert(name):
        return pki.load_certificates(control_plane[f"{kubeadm.PKI_DIR}/{name}"].content, source=name)[0]

    for name in ("apiserver.crt", "apiserver-kubelet-client.crt"):
        assert pki.is_signed_by(cert(name), authorities.cluster.cert), name
    for name in ("apiserver-etcd-client.crt", "etcd/server.crt", "etcd/peer.crt", "etcd/healthcheck-client.crt"):
        assert pki.is_signed_by(cert(name), authorities.etcd.cert), name
    assert pki.is_signed_by(cert("front-proxy-client.crt"), authorities.front_proxy.cert)


def test_kubeconfigs_embed_the_cluster_ca_and_point_at_the_local_apiserver_first(authorities, control_plane):
    admin = kubeconfig.parse(control_plane["/etc/kubernetes/admin.conf"].content.decode(), source="admin.conf")
    servers = [c["cluster"]["server"] for c in admin["clusters"]]
    assert servers == ["https://127.0.0.1:6443", "https://127.0.0.1:7443"]
    assert kubeconfig.cluster_ca_pem(admin, "c", source="admin.conf") == authorities.cluster.cert_pem
    user = admin["users"][0]["user"]
    client = pki.load_certificates(base64.b64decode(user["client-certificate-data"]), source="admin")[0]
    assert pki.is_signed_by(client, authorities.cluster.cert)
    assert client.subject.rfc4514_string() == "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    scheduler = kubeconfig.parse(control_plane["/etc/kubernetes/scheduler.conf"].content.decode(), source="s")
    assert [c["cluster"]["server"] for c in scheduler["clusters"]] == ["https://127.0.0.1:6443"]


def test_worker_holds_ca_and_kubelet_credentials_as_kubeadm_join_leaves_them(authorities):
    files = {f.path: f for f in kubeadm.worker_files(
        authorities, node_name="c-worker-1", cluster_name="c", server_port=6443, now=NOW, key=FAST)}
    assert set(files) == {kubeadm.CLUSTER_CA_CERT, "/etc/kubernetes/kubelet.conf", kubeadm.KUBELET_CLIENT_CERT}
    kubelet = kubeconfig.parse(files["/etc/kubernetes/kubelet.conf"].content.decode(), source="kubelet.conf")
    assert kubelet["users"][0]["user"] == {"client-certificate": kubeadm.KUBELET_CLIENT_CERT,
                                           "client-key": kubeadm.KUBELET_CLIENT_CERT}
    client = pki.load_certificates(files[kubeadm.KUBELET_CLIENT_CERT].content, source="kubelet")[0]
    assert client.subject.rfc4514_string() == "CN=system:node:c-worker-1,O=system:nodes"


def test_manifests_carry_kubeadms_flags():
    ports, etcd = ControlPlanePorts(6443, 10257, 10259), EtcdPorts(2379, 2380)
    apiserver = kubeadm.apiserver_manifest(ports, etcd)["spec"]["containers"][0]["command"]
    for flag in ("--client-ca-file=/etc/kubernetes/pki/ca.crt", "--authorization-mode=Node,RBAC",
                 "--service-account-key-file=/etc/kubernetes/pki/sa.pub", "--enable-bootstrap-token-auth=true",
                 "--requestheader-allowed-names=front-proxy-client", "--etcd-servers=https://127.0.0.1:2379",
                 "--secure-port=6443", "--bind-address=127.0.0.1"):
        assert flag in apiserver
    kcm = kubeadm.controller_manager_manifest("c", ports, release_leader_lease=False)["spec"]["containers"][0]["command"]
    for flag in ("--root-ca-file=/etc/kubernetes/pki/ca.crt", "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key",
                 "--controllers=*,bootstrapsigner,tokencleaner", "--use-service-account-credentials=true"):
        assert flag in kcm


def test_the_lease_handover_gate_and_kwoks_node_lease_are_chosen_explicitly():
    ports = ControlPlanePorts(6443, 10257, 10259)
    gate = f"--feature-gates={kubeadm.RELEASE_LEADER_LEASE_GATE}=true"

    def command(pod):
        return pod["spec"]["containers"][0]["command"]

    fast, slow = kubeadm.LEASE_HANDOVERS["fast"], kubeadm.LEASE_HANDOVERS["kubeadm"]
    # kubeadm's way: no gate, the next controller-manager waits out the Lease
    kcm = command(kubeadm.controller_manager_manifest("c", ports, release_leader_lease=slow.release_leader_lease))
    assert not any(flag.startswith("--feature-gates") for flag in kcm) and "--leader-elect=true" in kcm
    kcm = command(kubeadm.controller_manager_manifest("c", ports, release_leader_lease=fast.release_leader_lease))
    assert kcm.count(gate) == 1 and "--leader-elect=true" in kcm
    assert "--node-lease-duration-seconds=6" in command(kubeadm.kwok_manifest(node_lease_seconds=fast.node_lease_seconds))
    assert "--node-lease-duration-seconds=15" in command(kubeadm.kwok_manifest(node_lease_seconds=slow.node_lease_seconds))


def _flags(pod) -> dict[str, str]:
    command = pod["spec"]["containers"][0]["command"]
    return dict(arg.split("=", 1) for arg in command[1:])


def test_stacked_etcd_has_a_member_per_control_plane_and_each_apiserver_uses_its_own():
    members = {f"c-control-plane-{i}": EtcdPorts(2379 + 10 * i, 2380 + 10 * i) for i in (1, 2, 3)}
    etcd = {node: _flags(kubeadm.etcd_manifest(node, ports, members)) for node, ports in members.items()}
    initial = "c-control-plane-1=https://127.0.0.1:2390,c-control-plane-2=https://127.0.0.1:2400," \
              "c-control-plane-3=https://127.0.0.1:2410"
    for node, ports in members.items():
        flags = etcd[node]
        assert flags["--name"] == node
        assert flags["--initial-cluster"] == initial, "every member starts from the same member list"
        assert flags["--listen-peer-urls"] == flags["--initial-advertise-peer-urls"] == f"https://127.0.0.1:{ports.peer}"
        assert flags["--listen-client-urls"] == flags["--advertise-client-urls"] == f"https://127.0.0.1:{ports.client}"
        # peer TLS with the node's own pair, trusting the shared etcd CA, as kubeadm sets it
        assert flags["--peer-client-cert-auth"] == flags["--client-cert-auth"] == "true"
        assert flags["--peer-cert-file"] == "/etc/kubernetes/pki/etcd/peer.crt"
        assert flags["--peer-trusted-ca-file"] == flags["--trusted-ca-file"] == "/etc/kubernetes/pki/etcd/ca.crt"
        apiserver = _flags(kubeadm.apiserver_manifest(ControlPlanePorts(6443, 10257, 10259), ports))
        assert apiserver["--etcd-servers"] == f"https://127.0.0.1:{ports.client}", "kubeadm: the local member only"
    assert len({flags["--listen-peer-urls"] for flags in etcd.values()}) == 3
    assert len({flags["--listen-client-urls"] for flags in etcd.values()}) == 3
    # one control plane: a cluster of itself, as before
    alone = _flags(kubeadm.etcd_manifest("c-control-plane-1", EtcdPorts(2379, 2380)))
    assert alone["--initial-cluster"] == "c-control-plane-1=https://127.0.0.1:2380"
    with pytest.raises(ValueError, match="not in the cluster"):
        kubeadm.etcd_manifest("c-control-plane-4", EtcdPorts(1, 2), members)


def test_each_control_plane_has_its_own_etcd_server_and_peer_certificates_for_loopback(authorities):
    certs = {}
    for node in ("c-control-plane-1", "c-control-plane-2"):
        files = {f.path: f for f in kubeadm.control_plane_files(
            authorities, node_name=node, cluster_name="c", ports=ControlPlanePorts(6443, 10257, 10259),
            all_apiserver_ports=[6443], now=NOW, key=FAST)}
        for kind in ("server", "peer"):
            cert = pki.load_certificates(files[f"{kubeadm.PKI_DIR}/etcd/{kind}.crt"].content, source=kind)[0]
            assert pki.is_signed_by(cert, authorities.etcd.cert)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
            assert node in san.get_values_for_type(x509.DNSName)
            certs[node, kind] = pki.fingerprint(cert)
        assert files[f"{kubeadm.PKI_DIR}/etcd/ca.crt"].content == authorities.etcd.cert_pem  # shared
    assert len(set(certs.values())) == 4
