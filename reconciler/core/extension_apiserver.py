"""The sandbox's aggregated API server: k8s.io/sample-apiserver (group wardle.example.com)
behind the kube-apiserver's aggregation layer, with an etcd of its own.

Pure: the files it needs on the first control-plane node, its two static-pod manifests and
the API objects that register it. Not kubeadm's; it is there so that a rotation of the
front-proxy CA can be shown not to break requests through the aggregation layer.

- It authenticates the aggregator by the front-proxy CA, which it reads (and watches) in
  ``kube-system/extension-apiserver-authentication``: no ``--authentication-skip-lookup``
  and no ``--requestheader-client-ca-file``.
- It reaches the kube-apiserver (TokenReviews, SubjectAccessReviews, that ConfigMap,
  namespaces, admission configuration) with ``/etc/kubernetes/extension-apiserver.conf``,
  whose CA and client certificate come from the cluster CA, as the other components'
  kubeconfigs do. Like them it reads that file only when it starts.
- It serves with a certificate of its own small CA, which careconcile does not manage;
  the APIService's ``caBundle`` holds that CA.
- Its storage is an etcd of its own over plain HTTP on 127.0.0.1, so it shares nothing
  with the cluster's etcd CA.

Routing: the aggregator dials an APIService's Service. Endpoints and EndpointSlices refuse
loopback addresses and the sandbox has no kube-proxy, but the kube-apiserver (without
``--enable-aggregator-routing``) resolves a Service of ``type: ExternalName`` to
``https://<externalName>:<APIService port>`` (k8s.io/apiserver/pkg/util/proxy
ResolveCluster), and its availability check skips the endpoint checks for that type. It
verifies the serving certificate for ``<service>.<namespace>.svc`` either way.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

from reconciler.core import kubeconfig, pki
from reconciler.core.kubeadm import KUBERNETES_DIR, LOOPBACK, PRIVATE, ClusterAuthorities, NodeFile, static_pod
from reconciler.core.pki import KeyPair, KeySpec, LeafRequest

# The static pods, by their manifest names (and so the supervisor's component names).
COMPONENT = "extension-apiserver"
ETCD_COMPONENT = "extension-apiserver-etcd"
BINARY = "sample-apiserver"

KUBECONFIG = f"{KUBERNETES_DIR}/extension-apiserver.conf"
DIRECTORY = f"{KUBERNETES_DIR}/extension-apiserver"
SERVING_CA_CERT = f"{DIRECTORY}/serving-ca.crt"
SERVING_CERT = f"{DIRECTORY}/serving.crt"
SERVING_KEY = f"{DIRECTORY}/serving.key"
ETCD_DATA_DIR = "/var/lib/extension-apiserver-etcd"

# The client certificate's subject in extension-apiserver.conf; RBAC binds this user.
USER = "system:extension-apiserver"

GROUP = "wardle.example.com"
VERSION = "v1alpha1"
APISERVICE = f"{VERSION}.{GROUP}"
SERVICE_NAMESPACE = "kube-system"
SERVICE_NAME = "extension-apiserver"
# The name the aggregator verifies the serving certificate for.
SERVICE_DNS_NAME = f"{SERVICE_NAME}.{SERVICE_NAMESPACE}.svc"

AUTHENTICATION_CONFIGMAP = "extension-apiserver-authentication"
RBAC = "rbac.authorization.k8s.io"


@dataclass(frozen=True)
class Ports:
    """The extension apiserver's secure port and its etcd's client and peer ports, on 127.0.0.1."""

    secure: int
    etcd_client: int
    etcd_peer: int


def node_files(
    authorities: ClusterAuthorities, *, cluster_name: str, apiserver_port: int, now: dt.datetime, key: KeySpec,
) -> tuple[list[NodeFile], KeyPair]:
    """The kubeconfig, the serving CA's certificate (not its key: nothing signs with it
    again) and the serving pair; with the serving CA, whose certificate is the caBundle."""
    client = pki.issue_leaf(authorities.cluster, LeafRequest(USER, client=True, key=key), now=now)
    document = kubeconfig.build(
        endpoints=[kubeconfig.Endpoint(cluster_name, f"https://{LOOPBACK}:{apiserver_port}")],
        ca_pem=authorities.cluster.cert_pem,
        user=USER,
        credentials=kubeconfig.ClientCredentials(cert_pem=client.cert_pem, key_pem=client.key_pem),
    )
    serving_ca = pki.new_ca("extension-apiserver-serving-ca", now=now, key=key)
    serving = pki.issue_leaf(serving_ca, LeafRequest(
        SERVICE_NAME, server=True, dns_names=(SERVICE_DNS_NAME, "localhost"), ip_addresses=(LOOPBACK,), key=key,
    ), now=now)
    files = [
        NodeFile(KUBECONFIG, kubeconfig.dump(document).encode(), PRIVATE),
        NodeFile(SERVING_CA_CERT, serving_ca.cert_pem),
        NodeFile(SERVING_CERT, serving.cert_pem),
        NodeFile(SERVING_KEY, serving.key_pem, PRIVATE),
    ]
    return files, serving_ca


def etcd_manifest(ports: Ports) -> dict[str, Any]:
    """Plain HTTP on loopback: nothing of the cluster's etcd CA is involved."""
    client_url, peer_url = f"http://{LOOPBACK}:{ports.etcd_client}", f"http://{LOOPBACK}:{ports.etcd_peer}"
    return static_pod(ETCD_COMPONENT, [
        "etcd",
        f"--name={ETCD_COMPONENT}",
        f"--data-dir={ETCD_DATA_DIR}",
        f"--advertise-client-urls={client_url}",
        f"--listen-client-urls={client_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-cluster={ETCD_COMPONENT}={peer_url}",
        "--snapshot-count=10000",
        "--unsafe-no-fsync=true",
    ])


# Its terminationGracePeriodSeconds. Told to stop, sample-apiserver stops listening at once,
# ends its other requests, then waits for its open watches until its request timeout (60 s):
# a kubelet would kill it after 30 s, the sandbox after 3.
STOP_SECONDS = 3


def manifest(ports: Ports) -> dict[str, Any]:
    return static_pod(COMPONENT, [
        BINARY,
        f"--bind-address={LOOPBACK}",
        f"--secure-port={ports.secure}",
        f"--tls-cert-file={SERVING_CERT}",
        f"--tls-private-key-file={SERVING_KEY}",
        f"--etcd-servers=http://{LOOPBACK}:{ports.etcd_client}",
        f"--kubeconfig={KUBECONFIG}",
        f"--authentication-kubeconfig={KUBECONFIG}",
        f"--authorization-kubeconfig={KUBECONFIG}",
        # No --requestheader-client-ca-file and no --authentication-skip-lookup: the
        # front-proxy CA, the allowed names and the headers come from (and follow) the
        # ConfigMap kube-system/extension-apiserver-authentication.
    ], grace_seconds=STOP_SECONDS)


def rbac_objects() -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object): what sample-apiserver's own artifacts grant its
    ServiceAccount, granted to the kubeconfig's user instead."""
    subject = [{"apiGroup": RBAC, "kind": "User", "name": USER}]
    base = f"/apis/{RBAC}/v1"
    reader = "extension-apiserver-authentication-reader"
    own_role = "careconcile:extension-apiserver"
    return [
        (f"{base}/clusterrolebindings", {
            "apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "careconcile:extension-apiserver:auth-delegator"},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": subject,
        }),
        (f"{base}/namespaces/kube-system/rolebindings", {
            "apiVersion": f"{RBAC}/v1", "kind": "RoleBinding",
            "metadata": {"name": "careconcile:extension-apiserver:authentication-reader", "namespace": "kube-system"},
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": reader},
            "subjects": subject,
        }),
        # Its admission plugins (NamespaceLifecycle, the webhook and policy plugins) and its
        # API priority and fairness read these.
        (f"{base}/clusterroles", {
            "apiVersion": f"{RBAC}/v1", "kind": "ClusterRole",
            "metadata": {"name": own_role},
            "rules": [
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "watch", "list"]},
                {"apiGroups": ["admissionregistration.k8s.io"],
                 "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations",
                               "validatingadmissionpolicies", "validatingadmissionpolicybindings",
                               "mutatingadmissionpolicies", "mutatingadmissionpolicybindings"],
                 "verbs": ["get", "watch", "list"]},
                {"apiGroups": ["flowcontrol.apiserver.k8s.io"],
                 "resources": ["prioritylevelconfigurations", "flowschemas"], "verbs": ["list", "watch"]},
            ],
        }),
        (f"{base}/clusterrolebindings", {
            "apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": own_role},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": own_role},
            "subjects": subject,
        }),
    ]


def service() -> dict[str, Any]:
    """An ExternalName Service: the aggregator dials its externalName at the APIService's
    port. 127.0.0.1 is a valid DNS-1123 subdomain, and needs no name lookup."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE_NAME, "namespace": SERVICE_NAMESPACE},
        "spec": {"type": "ExternalName", "externalName": LOOPBACK},
    }


def apiservice(port: int, serving_ca_pem: bytes) -> dict[str, Any]:
    """``port``: where the Service leads, the extension apiserver's own or a load balancer's."""
    return {
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": APISERVICE},
        "spec": {
            "group": GROUP,
            "version": VERSION,
            "groupPriorityMinimum": 1000,
            "versionPriority": 15,
            "service": {"namespace": SERVICE_NAMESPACE, "name": SERVICE_NAME, "port": port},
            "caBundle": base64.b64encode(serving_ca_pem).decode(),
        },
    }


def available(apiservice_object: dict[str, Any]) -> bool:
    """Whether an APIService's Available condition is True."""
    conditions = (apiservice_object.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)


def flunders_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/flunders"
