"""kubeadm's on-disk layout: which files a node holds and what they contain.

Pure: functions return the files (absolute paths as they are on a real node, contents and
modes) and the static-pod manifests; the caller decides where the node's root is and
writes them. Paths and flags follow what `kubeadm init` writes, so code that reads or
rotates these files works the same on the sandbox and on a real kubeadm node.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from reconciler.core import kubeconfig, pki
from reconciler.core.pki import KeyPair, KeySpec, LeafRequest

KUBERNETES_DIR = "/etc/kubernetes"
PKI_DIR = f"{KUBERNETES_DIR}/pki"
MANIFESTS_DIR = f"{KUBERNETES_DIR}/manifests"
KUBELET_CLIENT_CERT = "/var/lib/kubelet/pki/kubelet-client-current.pem"
# Not kubeadm's: careconcile records here when it last restarted the node's kubelet, and for
# which digest of its input files (JSON: restartedFor, restartedAt, leaseRenewTime).
KUBELET_RESTART_MARKER = "/var/lib/kubelet/careconcile-restarted-for"
ETCD_DATA_DIR = "/var/lib/etcd"

CLUSTER_CA_CERT = f"{PKI_DIR}/ca.crt"
CLUSTER_CA_KEY = f"{PKI_DIR}/ca.key"

# The name the apiserver presents to aggregated apiservers, and the only one it accepts as
# the front proxy (--requestheader-allowed-names).
FRONT_PROXY_CLIENT = "front-proxy-client"

# kubeadm's names for the clients that authenticate with certificates signed by the cluster CA.
CLUSTER_ADMINS_GROUP = "kubeadm:cluster-admins"
SYSTEM_MASTERS_GROUP = "system:masters"


@dataclass(frozen=True)
class ClientIdentity:
    """Who a client certificate says its holder is: its CN (also the kubeconfig's user name)
    and its organizations (the groups)."""

    user: str
    groups: tuple[str, ...]


# admin.conf's identity (kubeadm 1.29+); the kubeconfig careconcile writes to the workspace
# after a rotation is the same admin.
ADMIN = ClientIdentity("kubernetes-admin", (CLUSTER_ADMINS_GROUP,))

# The sandbox's stand-in for kubelets: one kwok process fakes every worker's kubelet.
KWOK_KUBECONFIG = f"{KUBERNETES_DIR}/kwok.conf"
KWOK_STAGES = f"{KUBERNETES_DIR}/kwok/stages.yaml"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

SERVICE_CIDR = "10.96.0.0/12"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
LOOPBACK = "127.0.0.1"
# A sandbox whose apiserver certificates leave out 127.0.0.1 (`sandbox up --no-loopback-san`):
# its kubeconfigs reach https://127.0.0.1:PORT with this tls-server-name, a SAN the certificate has.
APISERVER_SERVER_NAME = "kubernetes"

PRIVATE = 0o600
PUBLIC = 0o644


@dataclass(frozen=True)
class NodeFile:
    """One file on a node: its absolute path there, its bytes and its mode."""

    path: str
    content: bytes
    mode: int = PUBLIC


@dataclass(frozen=True)
class ClusterAuthorities:
    """The CAs and the service-account key pair that every control-plane node shares."""

    cluster: KeyPair
    etcd: KeyPair
    front_proxy: KeyPair
    service_account_key: pki.PrivateKey


@dataclass(frozen=True)
class ControlPlanePorts:
    """The loopback ports of one control-plane node's components."""

    apiserver: int
    controller_manager: int
    scheduler: int


@dataclass(frozen=True)
class EtcdPorts:
    client: int
    peer: int


def new_authorities(*, now: dt.datetime, key: KeySpec) -> ClusterAuthorities:
    """CAs named as kubeadm names them."""
    return ClusterAuthorities(
        cluster=pki.new_ca("kubernetes", now=now, key=key),
        etcd=pki.new_ca("etcd-ca", now=now, key=key),
        front_proxy=pki.new_ca("front-proxy-ca", now=now, key=key),
        service_account_key=pki.generate_key(KeySpec("RSA", 2048)),
    )


def _pair(base: str, pair: KeyPair) -> list[NodeFile]:
    return [NodeFile(f"{base}.crt", pair.cert_pem), NodeFile(f"{base}.key", pair.key_pem, PRIVATE)]


def _url(port: int) -> str:
    return f"https://{LOOPBACK}:{port}"


def _endpoint(name: str, port: int, server_name: str | None) -> kubeconfig.Endpoint:
    """A kubeconfig's apiserver on 127.0.0.1; ``server_name`` its tls-server-name, if any."""
    return kubeconfig.Endpoint(name, _url(port), tls_server_name=server_name)


def _admin_kubeconfig(
    authorities: ClusterAuthorities, *, cluster_name: str, server_ports: list[int], cn: str, group: str,
    now: dt.datetime, key: KeySpec, server_name: str | None = None,
) -> bytes:
    client = pki.issue_leaf(
        authorities.cluster, LeafRequest(cn, organizations=(group,), client=True, key=key), now=now
    )
    endpoints = [
        _endpoint(cluster_name if i == 0 else f"{cluster_name}-apiserver-{i + 1}", port, server_name)
        for i, port in enumerate(server_ports)
    ]
    document = kubeconfig.build(
        endpoints=endpoints,
        ca_pem=authorities.cluster.cert_pem,
        user=cn,
        credentials=kubeconfig.ClientCredentials(cert_pem=client.cert_pem, key_pem=client.key_pem),
    )
    return kubeconfig.dump(document).encode()


def admin_kubeconfig(
    authorities: ClusterAuthorities, *, cluster_name: str, server_ports: list[int], now: dt.datetime,
    key: KeySpec, server_name: str | None = None,
) -> bytes:
    """An admin kubeconfig (kubeadm 1.29+: group kubeadm:cluster-admins), one context per apiserver."""
    return _admin_kubeconfig(
        authorities, cluster_name=cluster_name, server_ports=server_ports, cn=ADMIN.user,
        group=ADMIN.groups[0], now=now, key=key, server_name=server_name,
    )


def _component_kubeconfig(
    authorities: ClusterAuthorities, *, cluster_name: str, port: int, cn: str, organizations: tuple[str, ...],
    now: dt.datetime, key: KeySpec, server_name: str | None = None,
) -> bytes:
    client = pki.issue_leaf(
        authorities.cluster, LeafRequest(cn, organizations=organizations, client=True, key=key), now=now
    )
    document = kubeconfig.build(
        endpoints=[_endpoint(cluster_name, port, server_name)],
        ca_pem=authorities.cluster.cert_pem,
        user=cn,
        credentials=kubeconfig.ClientCredentials(cert_pem=client.cert_pem, key_pem=client.key_pem),
    )
    return kubeconfig.dump(document).encode()


def kubelet_files(
    authorities: ClusterAuthorities, *, node_name: str, cluster_name: str, server_port: int,
    now: dt.datetime, key: KeySpec, server_name: str | None = None,
) -> list[NodeFile]:
    """kubelet.conf as kubeadm leaves it after TLS bootstrap: the CA embedded, the client
    certificate and key in one rotating PEM file under /var/lib/kubelet/pki."""
    client = pki.issue_leaf(
        authorities.cluster,
        LeafRequest(f"system:node:{node_name}", organizations=("system:nodes",), client=True, key=key),
        now=now,
    )
    document = kubeconfig.build(
        endpoints=[_endpoint(cluster_name, server_port, server_name)],
        ca_pem=authorities.cluster.cert_pem,
        user=f"system:node:{node_name}",
        credentials=kubeconfig.ClientCredentials(cert_path=KUBELET_CLIENT_CERT, key_path=KUBELET_CLIENT_CERT),
    )
    return [
        NodeFile(f"{KUBERNETES_DIR}/kubelet.conf", kubeconfig.dump(document).encode(), PRIVATE),
        NodeFile(KUBELET_CLIENT_CERT, client.cert_pem + client.key_pem, PRIVATE),
    ]


def worker_files(
    authorities: ClusterAuthorities, *, node_name: str, cluster_name: str, server_port: int,
    now: dt.datetime, key: KeySpec, server_name: str | None = None,
) -> list[NodeFile]:
    """What `kubeadm join` leaves on a worker: the cluster CA and the kubelet's credentials."""
    return [NodeFile(CLUSTER_CA_CERT, authorities.cluster.cert_pem)] + kubelet_files(
        authorities, node_name=node_name, cluster_name=cluster_name, server_port=server_port, now=now, key=key,
        server_name=server_name,
    )


def control_plane_files(
    authorities: ClusterAuthorities, *, node_name: str, cluster_name: str, ports: ControlPlanePorts,
    all_apiserver_ports: list[int], now: dt.datetime, key: KeySpec, server_name: str | None = None,
) -> list[NodeFile]:
    """The full kubeadm PKI directory and kubeconfigs of one control-plane node.

    Components on the node talk to their local apiserver, as kubeadm configures them;
    admin.conf lists every apiserver, the local one first. With ``server_name``
    (:data:`APISERVER_SERVER_NAME`) the apiserver's certificate leaves out 127.0.0.1 and
    every kubeconfig names the apiserver by that tls-server-name.
    """
    def leaf(ca: KeyPair, request: LeafRequest) -> KeyPair:
        return pki.issue_leaf(ca, request, now=now)

    local_names = ("localhost", node_name)
    cluster_ca, etcd_ca = authorities.cluster, authorities.etcd
    files: list[NodeFile] = []
    files += _pair(f"{PKI_DIR}/ca", cluster_ca)
    files += _pair(f"{PKI_DIR}/etcd/ca", etcd_ca)
    files += _pair(f"{PKI_DIR}/front-proxy-ca", authorities.front_proxy)
    files += [
        NodeFile(f"{PKI_DIR}/sa.key", pki.private_key_pem(authorities.service_account_key), PRIVATE),
        NodeFile(f"{PKI_DIR}/sa.pub", pki.public_key_pem(authorities.service_account_key)),
    ]
    files += _pair(f"{PKI_DIR}/apiserver", leaf(cluster_ca, LeafRequest(
        "kube-apiserver", server=True, key=key,
        dns_names=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                   "kubernetes.default.svc.cluster.local", *local_names),
        ip_addresses=("10.96.0.1",) if server_name else ("10.96.0.1", LOOPBACK),
    )))
    files += _pair(f"{PKI_DIR}/apiserver-kubelet-client", leaf(cluster_ca, LeafRequest(
        "kube-apiserver-kubelet-client", organizations=(CLUSTER_ADMINS_GROUP,), client=True, key=key)))
    files += _pair(f"{PKI_DIR}/apiserver-etcd-client", leaf(etcd_ca, LeafRequest(
        "kube-apiserver-etcd-client", client=True, key=key)))
    files += _pair(f"{PKI_DIR}/front-proxy-client", leaf(authorities.front_proxy, LeafRequest(
        FRONT_PROXY_CLIENT, client=True, key=key)))
    files += _pair(f"{PKI_DIR}/etcd/server", leaf(etcd_ca, LeafRequest(
        node_name, server=True, client=True, dns_names=local_names, ip_addresses=(LOOPBACK, "::1"), key=key)))
    files += _pair(f"{PKI_DIR}/etcd/peer", leaf(etcd_ca, LeafRequest(
        node_name, server=True, client=True, dns_names=local_names, ip_addresses=(LOOPBACK, "::1"), key=key)))
    files += _pair(f"{PKI_DIR}/etcd/healthcheck-client", leaf(etcd_ca, LeafRequest(
        "kube-etcd-healthcheck-client", client=True, key=key)))

    others = [p for p in all_apiserver_ports if p != ports.apiserver]
    admin_ports = [ports.apiserver, *others]
    common = dict(cluster_name=cluster_name, now=now, key=key, server_name=server_name)
    files.append(NodeFile(f"{KUBERNETES_DIR}/admin.conf", admin_kubeconfig(
        authorities, server_ports=admin_ports, **common), PRIVATE))
    files.append(NodeFile(f"{KUBERNETES_DIR}/super-admin.conf", _admin_kubeconfig(
        authorities, server_ports=admin_ports, cn="kubernetes-super-admin", group=SYSTEM_MASTERS_GROUP,
        **common), PRIVATE))
    files.append(NodeFile(f"{KUBERNETES_DIR}/controller-manager.conf", _component_kubeconfig(
        authorities, port=ports.apiserver, cn="system:kube-controller-manager", organizations=(), **common),
        PRIVATE))
    files.append(NodeFile(f"{KUBERNETES_DIR}/scheduler.conf", _component_kubeconfig(
        authorities, port=ports.apiserver, cn="system:kube-scheduler", organizations=(), **common), PRIVATE))
    files += kubelet_files(authorities, node_name=node_name, server_port=ports.apiserver, **common)
    return files


def kwok_kubeconfig(
    authorities: ClusterAuthorities, *, cluster_name: str, server_port: int, now: dt.datetime, key: KeySpec,
    server_name: str | None = None,
) -> NodeFile:
    """kwok updates the status of every fake node, more than the Node authorizer lets one
    kubelet do, so it authenticates as a cluster admin."""
    content = _component_kubeconfig(
        authorities, port=server_port, cn="kwok-controller", organizations=(CLUSTER_ADMINS_GROUP,),
        cluster_name=cluster_name, now=now, key=key, server_name=server_name,
    )
    return NodeFile(KWOK_KUBECONFIG, content, PRIVATE)


# --- static-pod manifests -------------------------------------------------------------

def static_pod(component: str, command: list[str], *, env: dict[str, str] | None = None,
               grace_seconds: int | None = None) -> dict[str, Any]:
    """A static-pod manifest as kubeadm writes one; the sandbox supervisor runs its command,
    with ``env``, and gives it ``grace_seconds`` (terminationGracePeriodSeconds) to stop."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": component,
            "namespace": "kube-system",
            "labels": {"component": component, "tier": "control-plane"},
        },
        "spec": {
            "hostNetwork": True,
            "priorityClassName": "system-node-critical",
            "containers": [{"name": component, "command": command}],
        },
    }
    if env:
        pod["spec"]["containers"][0]["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if grace_seconds is not None:
        pod["spec"]["terminationGracePeriodSeconds"] = grace_seconds
    return pod


def etcd_initial_cluster(members: dict[str, EtcdPorts]) -> str:
    """etcd's `--initial-cluster`: `name=peer-url` of every member, comma-separated."""
    return ",".join(f"{name}={_url(ports.peer)}" for name, ports in members.items())


def etcd_manifest(node_name: str, ports: EtcdPorts, members: dict[str, EtcdPorts] | None = None) -> dict[str, Any]:
    """The stacked etcd member of one control-plane node. ``members`` is every member of
    the cluster by node name (this one included; alone when None). All members start
    together from the same `--initial-cluster`, etcd's static bootstrap: kubeadm ends up
    with the same members by adding one per `kubeadm join --control-plane`."""
    members = members or {node_name: ports}
    if members.get(node_name) != ports:
        raise ValueError(f"etcd member {node_name!r} is not in the cluster it is to join: {sorted(members)}")
    peer_url, client_url = _url(ports.peer), _url(ports.client)
    return static_pod("etcd", [
        "etcd",
        f"--name={node_name}",
        f"--data-dir={ETCD_DATA_DIR}",
        f"--advertise-client-urls={client_url}",
        f"--listen-client-urls={client_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-cluster={etcd_initial_cluster(members)}",
        "--client-cert-auth=true",
        f"--cert-file={PKI_DIR}/etcd/server.crt",
        f"--key-file={PKI_DIR}/etcd/server.key",
        f"--trusted-ca-file={PKI_DIR}/etcd/ca.crt",
        "--peer-client-cert-auth=true",
        f"--peer-cert-file={PKI_DIR}/etcd/peer.crt",
        f"--peer-key-file={PKI_DIR}/etcd/peer.key",
        f"--peer-trusted-ca-file={PKI_DIR}/etcd/ca.crt",
        "--snapshot-count=10000",
        # A sandbox is disposable; skipping fsync keeps etcd from dominating test time.
        "--unsafe-no-fsync=true",
    ])


# How long a stopping sandbox apiserver may take past its shutdown delay before SIGKILL (a
# kubelet's default terminationGracePeriodSeconds is 30 s). It stops listening at once and
# its other requests end within a second, but it then waits for watches proxied to an
# aggregated apiserver (the controller-manager's on flunders), which it does not end itself:
# 11-15 s, measured on v1.37.2. Past 2 s only such watches are left, and their clients
# watch again.
APISERVER_STOP_SECONDS = 2


def apiserver_manifest(ports: ControlPlanePorts, etcd: EtcdPorts, *, shutdown_delay_seconds: int = 0,
                       other_etcd: tuple[EtcdPorts, ...] = ()) -> dict[str, Any]:
    """``etcd`` is the node's own, stacked etcd member: kubeadm points each apiserver at its
    local member only (`--etcd-servers=https://127.0.0.1:2379`). ``other_etcd``: the other
    members too, after it, as kubeadm's external-etcd topology lists every member; then a
    restarting member's apiserver goes on with another one rather than failing requests
    until its /readyz takes it out of the load balancer. ``shutdown_delay_seconds``
    (behind a load balancer): on SIGTERM the apiserver fails /readyz but keeps serving that
    long, so that the load balancer's health check takes it out before it stops listening."""
    delay = [f"--shutdown-delay-duration={shutdown_delay_seconds}s"] if shutdown_delay_seconds else []
    return static_pod("kube-apiserver", [
        "kube-apiserver",
        f"--advertise-address={LOOPBACK}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={ports.apiserver}",
        "--allow-privileged=true",
        "--authorization-mode=Node,RBAC",
        f"--client-ca-file={PKI_DIR}/ca.crt",
        "--enable-admission-plugins=NodeRestriction",
        "--enable-bootstrap-token-auth=true",
        f"--etcd-cafile={PKI_DIR}/etcd/ca.crt",
        f"--etcd-certfile={PKI_DIR}/apiserver-etcd-client.crt",
        f"--etcd-keyfile={PKI_DIR}/apiserver-etcd-client.key",
        f"--etcd-servers={','.join(_url(member.client) for member in (etcd, *other_etcd))}",
        f"--kubelet-client-certificate={PKI_DIR}/apiserver-kubelet-client.crt",
        f"--kubelet-client-key={PKI_DIR}/apiserver-kubelet-client.key",
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
        f"--proxy-client-cert-file={PKI_DIR}/front-proxy-client.crt",
        f"--proxy-client-key-file={PKI_DIR}/front-proxy-client.key",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        f"--requestheader-client-ca-file={PKI_DIR}/front-proxy-ca.crt",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={PKI_DIR}/sa.pub",
        f"--service-account-signing-key-file={PKI_DIR}/sa.key",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--tls-cert-file={PKI_DIR}/apiserver.crt",
        f"--tls-private-key-file={PKI_DIR}/apiserver.key",
        # Every sandbox apiserver advertises 127.0.0.1 on its own port and there is no pod
        # network, so there is nothing the `kubernetes` Service's endpoints could route to.
        "--endpoint-reconciler-type=none",
        *delay,
    ], grace_seconds=shutdown_delay_seconds + APISERVER_STOP_SECONDS)


# An alpha gate (Kubernetes 1.36+, off by default): a stopping controller-manager gives up
# its leader Lease, so the one that replaces it leads at once instead of waiting out the
# Lease (15 s). The scheduler does so without a gate.
RELEASE_LEADER_LEASE_GATE = "ControllerManagerReleaseLeaderElectionLockOnExit"


@dataclass(frozen=True)
class LeaseHandover:
    """How a restarted controller-manager and kwok take their Leases over in a sandbox."""

    release_leader_lease: bool  # the controller-manager runs with RELEASE_LEADER_LEASE_GATE
    node_lease_seconds: int  # how long kwok's node Leases last


# "fast": the gate, and kwok's node Leases at 6 s; "kubeadm": the controller-manager as
# kubeadm runs it, and kwok's node Leases at 15 s, the sandbox's setting before "fast" (a
# kubelet's default is 40 s, but a restarted kubelet keeps its identity and renews at once).
LEASE_HANDOVERS = {
    "fast": LeaseHandover(release_leader_lease=True, node_lease_seconds=6),
    "kubeadm": LeaseHandover(release_leader_lease=False, node_lease_seconds=15),
}


def controller_manager_manifest(cluster_name: str, ports: ControlPlanePorts, *,
                                release_leader_lease: bool) -> dict[str, Any]:
    conf = f"{KUBERNETES_DIR}/controller-manager.conf"
    gates = [f"--feature-gates={RELEASE_LEADER_LEASE_GATE}=true"] if release_leader_lease else []
    return static_pod("kube-controller-manager", [
        "kube-controller-manager",
        f"--authentication-kubeconfig={conf}",
        f"--authorization-kubeconfig={conf}",
        f"--kubeconfig={conf}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={ports.controller_manager}",
        f"--client-ca-file={PKI_DIR}/ca.crt",
        f"--cluster-name={cluster_name}",
        f"--cluster-signing-cert-file={PKI_DIR}/ca.crt",
        f"--cluster-signing-key-file={PKI_DIR}/ca.key",
        "--controllers=*,bootstrapsigner,tokencleaner",
        *gates,
        "--leader-elect=true",
        f"--requestheader-client-ca-file={PKI_DIR}/front-proxy-ca.crt",
        f"--root-ca-file={PKI_DIR}/ca.crt",
        f"--service-account-private-key-file={PKI_DIR}/sa.key",
        "--use-service-account-credentials=true",
    ])


def scheduler_manifest(ports: ControlPlanePorts) -> dict[str, Any]:
    conf = f"{KUBERNETES_DIR}/scheduler.conf"
    return static_pod("kube-scheduler", [
        "kube-scheduler",
        f"--authentication-kubeconfig={conf}",
        f"--authorization-kubeconfig={conf}",
        f"--kubeconfig={conf}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={ports.scheduler}",
        "--leader-elect=true",
    ])


# kwok renews its node Leases every quarter of their duration, and a restarted kwok takes
# them over, and plays the nodes' kubelets again, only once they have run out: it is a new
# holder each time it starts. So their duration bounds the wait after each restart of kwok.
def kwok_manifest(*, node_lease_seconds: int) -> dict[str, Any]:
    """kwok plays the kubelet of every node annotated kwok.x-k8s.io/node=fake, and like a
    kubelet it keeps each node's Lease in kube-node-lease renewed (kwok makes none unless
    told how long one lasts): that renewal is how careconcile sees a restarted kubelet, or
    kwok, running again."""
    return static_pod("kwok", [
        "kwok",
        f"--kubeconfig={KWOK_KUBECONFIG}",
        f"--config={KWOK_STAGES}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        f"--node-ip={LOOPBACK}",
        "--server-address=",
        f"--node-lease-duration-seconds={node_lease_seconds}",
    ])
