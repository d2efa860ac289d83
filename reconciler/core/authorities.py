"""Where an authority lives on a kubeadm cluster: its CA of record, the bundles that trust
it, the leaf certificates it signs and the components that read it only at start.

Pure data. Observation, diff and plan work on these sites generically, so the etcd CA and
the front-proxy CA become further :class:`AuthorityLayout` values, not new code paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reconciler.core import extension_apiserver, kubeadm
from reconciler.core.kubeadm import KUBERNETES_DIR, PKI_DIR
from reconciler.core.sites import ApiField

Role = Literal["control-plane", "worker"]
ALL_ROLES: tuple[Role, ...] = ("control-plane", "worker")

# Where the controller-manager signs from while the cluster trusts two CAs: its signer
# must be a single certificate, and pki/ca.crt then holds both.
SIGNER_DIR = f"{PKI_DIR}/careconcile"


@dataclass(frozen=True)
class FileBundle:
    """A PEM file of trusted CA certificates (``pem``) or a kubeconfig's
    certificate-authority-data (``kubeconfig``) on every node of the given roles."""

    path: str
    form: Literal["pem", "kubeconfig"]
    roles: tuple[Role, ...]
    required: bool = False  # absent on a node of these roles: an error, not a skip


@dataclass(frozen=True)
class FileLeaf:
    """A certificate the authority signs: a ``pair`` (path.crt + path.key), a ``combined``
    PEM (certificate and key in one file, as the kubelet keeps it) or the client
    credentials embedded in a ``kubeconfig``."""

    path: str
    form: Literal["pair", "combined", "kubeconfig"]
    roles: tuple[Role, ...]


@dataclass(frozen=True)
class StaticPodComponent:
    """A component that reads these files only when it starts; careconcile restarts it by
    rewriting its static-pod manifest, as the kubelet restarts a pod whose manifest changed."""

    name: str
    inputs: tuple[str, ...]
    # How to see that a restarted instance is running again: a leader-election Lease in
    # kube-system, the node Leases the component renews for its nodes, an etcd member's
    # /health (it answers true only while the cluster has a leader), or an apiserver's /readyz.
    readiness: Literal["leader-lease", "node-leases", "etcd-member", "apiserver-readyz"]
    signs: bool = False  # it signs certificates with the CA, with the layout's SignerFlags
    # Restarted one node at a time, each only once the one before runs again (etcd keeps
    # quorum, an apiserver stays behind the others' backs), rather than all at once.
    one_at_a_time: bool = False
    # What a cluster with one instance loses while it restarts; the plan says so beforehand.
    outage_when_alone: str | None = None
    # readiness "etcd-member": the client certificate pair (path.crt, path.key) and the CA
    # file to ask the member with, as a health check does. "apiserver-readyz": the CA file
    # its serving certificate verifies against, when not the cluster CA (an aggregated
    # apiserver's own).
    probe_pair: str | None = None
    probe_trust: str | None = None


@dataclass(frozen=True)
class NodeServiceComponent:
    """A component that runs as a service on the node (the kubelet under systemd on a kubeadm
    node), not as a static pod: careconcile restarts it by running the node's restart command
    (``kubeletRestart`` in the spec) and records the restart in ``marker``, a small file on the
    node. Only nodes whose spec names a restart command have one. It is seen running again
    when the node's Lease in kube-node-lease is renewed after the restart."""

    name: str
    inputs: tuple[str, ...]
    marker: str
    roles: tuple[Role, ...]


@dataclass(frozen=True)
class SignerFlags:
    """The controller-manager flags that name the CA it signs with."""

    cert_flag: str
    key_flag: str


@dataclass(frozen=True)
class AuthorityLayout:
    name: str
    record_cert: str
    record_key: str
    bundles: tuple[FileBundle, ...]
    leaves: tuple[FileLeaf, ...]
    components: tuple[StaticPodComponent, ...]
    signer: SignerFlags | None
    # Fields of the cluster's own objects that trust it, which careconcile writes (or, when
    # the apiserver publishes them, checks and only distrusts from).
    api_sites: tuple[ApiField, ...] = ()
    # Whether every namespace's kube-root-ca.crt carries it (the controller-manager's copy).
    root_ca_configmaps: bool = False
    # Whether webhooks, APIServices and CRD conversions may carry it in a caBundle.
    ca_bundles: bool = False
    # Whether the kubeconfigs on this machine trust it (the spec's, and the admin kubeconfig
    # careconcile writes at the end of a rotation, as ``admin_identity``).
    local_kubeconfigs: bool = False
    admin_identity: kubeadm.ClientIdentity = kubeadm.ADMIN
    # Who presents a certificate it signs in a TLS handshake, to check after reissuing.
    endpoints: Literal["apiserver", "etcd"] | None = None
    # How to ask each apiserver whether it accepts a client certificate it signs: as a
    # client certificate (client-ca-file), or as the front proxy (requestheader-client-ca-file).
    client_probe: Literal["client-ca", "requestheader"] | None = None
    # In admin (management) mode: the suffix of the Cluster API Secret <cluster>-<suffix> in
    # the management namespace that holds this CA and its key (a CA of record beside the
    # control-plane nodes' files), and whether the Secret <cluster>-kubeconfig trusts it.
    management_secret: str | None = None
    management_kubeconfig: bool = False
    # Whether that Secret must exist: `careconcile register` writes the cluster CA's alone;
    # Cluster API makes the etcd and front-proxy CAs' too, and then they are records as well.
    management_secret_required: bool = True
    # Components that run as services on the nodes and are restarted by a command.
    node_services: tuple[NodeServiceComponent, ...] = ()
    # Whether pods trust it through kube-root-ca.crt (or node files under /etc/kubernetes/pki)
    # and must restart before the apiservers present certificates from a new one.
    pods_trust: bool = False

    @property
    def signer_cert(self) -> str:
        return f"{SIGNER_DIR}/{self.name}.crt"

    @property
    def signer_key(self) -> str:
        return f"{SIGNER_DIR}/{self.name}.key"


# The cluster's own objects that carry the cluster CA (``in_cluster_objects``).
CLUSTER_INFO_SITE = ApiField(resource="configmap", namespace="kube-public", name="cluster-info", field="kubeconfig",
                             form="kubeconfig")
# The apiservers publish the client CAs they trust here, for aggregated apiservers to read.
EXTENSION_AUTH_SITE = ApiField(resource="configmap", namespace="kube-system", name="extension-apiserver-authentication",
                               field="client-ca-file", form="pem", published_by="apiserver")

_CP: tuple[Role, ...] = ("control-plane",)
_KUBECONFIGS_CP = ("admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf")

CLUSTER_CA = AuthorityLayout(
    name="clusterCA",
    record_cert=kubeadm.CLUSTER_CA_CERT,
    record_key=kubeadm.CLUSTER_CA_KEY,
    bundles=(
        FileBundle(kubeadm.CLUSTER_CA_CERT, "pem", ALL_ROLES, required=True),
        *(FileBundle(f"{KUBERNETES_DIR}/{name}", "kubeconfig", _CP) for name in _KUBECONFIGS_CP),
        FileBundle(f"{KUBERNETES_DIR}/kubelet.conf", "kubeconfig", ALL_ROLES),
        FileBundle(kubeadm.KWOK_KUBECONFIG, "kubeconfig", _CP),
        FileBundle(extension_apiserver.KUBECONFIG, "kubeconfig", _CP),
    ),
    leaves=(
        FileLeaf(f"{PKI_DIR}/apiserver", "pair", _CP),
        FileLeaf(f"{PKI_DIR}/apiserver-kubelet-client", "pair", _CP),
        *(FileLeaf(f"{KUBERNETES_DIR}/{name}", "kubeconfig", _CP) for name in _KUBECONFIGS_CP),
        FileLeaf(kubeadm.KWOK_KUBECONFIG, "kubeconfig", _CP),
        FileLeaf(extension_apiserver.KUBECONFIG, "kubeconfig", _CP),
        FileLeaf(kubeadm.KUBELET_CLIENT_CERT, "combined", ALL_ROLES),
    ),
    components=(
        StaticPodComponent("kube-controller-manager",
                           (f"{KUBERNETES_DIR}/controller-manager.conf", kubeadm.CLUSTER_CA_CERT), "leader-lease",
                           signs=True),
        StaticPodComponent("kube-scheduler", (f"{KUBERNETES_DIR}/scheduler.conf",), "leader-lease"),
        StaticPodComponent("kwok", (kubeadm.KWOK_KUBECONFIG,), "node-leases"),
        # An aggregated apiserver that reads its kubeconfig at start (the sandbox's, with
        # --extension-apiserver); a node without its manifest has none.
        StaticPodComponent(extension_apiserver.COMPONENT, (extension_apiserver.KUBECONFIG,), "apiserver-readyz",
                           probe_trust=extension_apiserver.SERVING_CA_CERT, one_at_a_time=True,
                           outage_when_alone="the only aggregated apiserver: its API is unavailable until it runs "
                                             "again"),
    ),
    signer=SignerFlags("--cluster-signing-cert-file", "--cluster-signing-key-file"),
    api_sites=(CLUSTER_INFO_SITE, EXTENSION_AUTH_SITE),
    root_ca_configmaps=True,
    ca_bundles=True,
    local_kubeconfigs=True,
    endpoints="apiserver",
    client_probe="client-ca",
    pods_trust=True,
    management_secret="ca",  # Cluster API's <cluster>-ca; the etcd CA is <cluster>-etcd, front-proxy <cluster>-proxy
    management_kubeconfig=True,
    node_services=(
        NodeServiceComponent("kubelet", (f"{KUBERNETES_DIR}/kubelet.conf", kubeadm.CLUSTER_CA_CERT,
                                         kubeadm.KUBELET_CLIENT_CERT),
                             marker=kubeadm.KUBELET_RESTART_MARKER, roles=ALL_ROLES),
    ),
)

_ETCD = f"{PKI_DIR}/etcd"
_APISERVER_ETCD_CLIENT = f"{PKI_DIR}/apiserver-etcd-client"
# etcd reads its trusted CA files only at start, and so does the apiserver its --etcd-cafile;
# certificates and keys (etcd's serving and peer pairs, the apiserver's etcd client pair) are
# read per handshake (docs/concepts.md, "What reloads without a restart (etcd CA)").
ETCD_MEMBER = StaticPodComponent(
    "etcd", (f"{_ETCD}/ca.crt",), "etcd-member", one_at_a_time=True,
    outage_when_alone="the only etcd member: the API cannot read or write until it runs again",
    probe_pair=f"{_ETCD}/healthcheck-client", probe_trust=f"{_ETCD}/ca.crt")
APISERVER_FOR_ETCD = StaticPodComponent(
    "kube-apiserver", (f"{_ETCD}/ca.crt",), "apiserver-readyz", one_at_a_time=True,
    outage_when_alone="the only apiserver: the API is unavailable until it runs again")

ETCD_CA = AuthorityLayout(
    name="etcdCA",
    record_cert=f"{_ETCD}/ca.crt",
    record_key=f"{_ETCD}/ca.key",
    bundles=(FileBundle(f"{_ETCD}/ca.crt", "pem", _CP, required=True),),
    leaves=(
        FileLeaf(f"{_ETCD}/server", "pair", _CP),
        FileLeaf(f"{_ETCD}/peer", "pair", _CP),
        FileLeaf(f"{_ETCD}/healthcheck-client", "pair", _CP),
        FileLeaf(_APISERVER_ETCD_CLIENT, "pair", _CP),
    ),
    components=(ETCD_MEMBER, APISERVER_FOR_ETCD),
    signer=None,
    endpoints="etcd",
    management_secret="etcd",  # Cluster API's <cluster>-etcd
    management_secret_required=False,
)

# The apiserver publishes what it trusts as the front proxy for aggregated apiservers here.
REQUESTHEADER_SITE = ApiField(resource="configmap", namespace="kube-system", name="extension-apiserver-authentication",
                              field="requestheader-client-ca-file", form="pem", published_by="apiserver")

FRONT_PROXY_CA = AuthorityLayout(
    name="frontProxyCA",
    record_cert=f"{PKI_DIR}/front-proxy-ca.crt",
    record_key=f"{PKI_DIR}/front-proxy-ca.key",
    bundles=(FileBundle(f"{PKI_DIR}/front-proxy-ca.crt", "pem", _CP, required=True),),
    leaves=(FileLeaf(f"{PKI_DIR}/front-proxy-client", "pair", _CP),),
    # The apiserver reloads --requestheader-client-ca-file and --proxy-client-cert-file.
    components=(),
    signer=None,
    api_sites=(REQUESTHEADER_SITE,),
    client_probe="requestheader",
    management_secret="proxy",  # Cluster API's <cluster>-proxy
    management_secret_required=False,
)

AUTHORITIES = {layout.name: layout for layout in (CLUSTER_CA, ETCD_CA, FRONT_PROXY_CA)}


def manifest_path(component: str) -> str:
    return f"{kubeadm.MANIFESTS_DIR}/{component}.yaml"
