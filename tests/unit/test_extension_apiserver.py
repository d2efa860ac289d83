"""The extension apiserver's files, manifests and API objects (reconciler/core/extension_apiserver.py)."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from reconciler.core import extension_apiserver as extension
from reconciler.core import kubeadm, kubeconfig, pki
from reconciler.core.kubeconfig import dump
from reconciler.core.pki import KeySpec
from reconciler.sandbox.supervisor import launch_from_manifest

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
KEY = KeySpec("ECDSA", 256)
PORTS = extension.Ports(secure=4443, etcd_client=12379, etcd_peer=12380)


@pytest.fixture(scope="module")
def authorities():
    return kubeadm.new_authorities(now=NOW, key=KEY)


@pytest.fixture(scope="module")
def laid_out(authorities):
    files, serving_ca = extension.node_files(authorities, cluster_name="c1", apiserver_port=6443, now=NOW, key=KEY)
    return {f.path: f for f in files}, serving_ca


def _cert(pem: bytes) -> x509.Certificate:
    return pki.load_certificates(pem, source="test")[0]


def test_the_kubeconfig_trusts_the_cluster_ca_and_authenticates_with_a_client_certificate_it_signed(
        authorities, laid_out):
    files, _ = laid_out
    conf = files[extension.KUBECONFIG]
    assert conf.mode == kubeadm.PRIVATE
    document = kubeconfig.parse(conf.content.decode(), source="extension-apiserver.conf")
    assert kubeconfig.servers(document) == [kubeconfig.Endpoint("c1", "https://127.0.0.1:6443")]
    assert kubeconfig.cluster_ca_pem(document, "c1", source="x") == authorities.cluster.cert_pem
    user = document["users"][0]["user"]
    client = _cert(base64.b64decode(user["client-certificate-data"]))
    assert pki.is_signed_by(client, authorities.cluster.cert)
    assert client.subject.rfc4514_string() == f"CN={extension.USER}"
    assert client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])


def test_the_serving_certificate_is_from_its_own_ca_for_the_name_the_aggregator_verifies(authorities, laid_out):
    files, serving_ca = laid_out
    serving = _cert(files[extension.SERVING_CERT].content)
    assert pki.is_signed_by(serving, serving_ca.cert)
    assert not pki.is_signed_by(serving, authorities.cluster.cert)
    assert serving_ca.cert.subject != authorities.front_proxy.cert.subject
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "extension-apiserver.kube-system.svc" in names.get_values_for_type(x509.DNSName)
    assert files[extension.SERVING_CA_CERT].content == serving_ca.cert_pem
    assert files[extension.SERVING_KEY].mode == kubeadm.PRIVATE
    assert pki.key_pem_matches_cert(files[extension.SERVING_KEY].content, serving, source="serving.key")
    # Only the CA's certificate goes to the node: nothing signs with its key again.
    assert not any(b"PRIVATE KEY" in f.content for p, f in files.items() if p != extension.SERVING_KEY
                   and p != extension.KUBECONFIG)


def test_the_manifest_reads_the_front_proxy_ca_from_the_cluster_and_uses_its_own_etcd():
    argv = launch_from_manifest(dump(extension.manifest(PORTS)), node_root=Path("/n"), bin_dir=Path("/b")).command
    assert argv[0] == "/b/sample-apiserver"
    flags = dict(arg.split("=", 1) for arg in argv[1:])
    for flag in ("--kubeconfig", "--authentication-kubeconfig", "--authorization-kubeconfig"):
        assert flags[flag] == "/n/etc/kubernetes/extension-apiserver.conf"
    assert flags["--etcd-servers"] == "http://127.0.0.1:12379"
    assert flags["--secure-port"] == "4443" and flags["--bind-address"] == "127.0.0.1"
    assert flags["--tls-cert-file"] == "/n/etc/kubernetes/extension-apiserver/serving.crt"
    # The front-proxy CA comes from (and follows) extension-apiserver-authentication.
    assert not {"--authentication-skip-lookup", "--requestheader-client-ca-file", "--client-ca-file"} & set(flags)
    assert not any(arg.startswith("--authentication-skip-lookup") for arg in argv)


def test_its_etcd_is_plain_http_on_loopback_without_the_cluster_etcd_ca():
    pod = extension.etcd_manifest(PORTS)
    assert pod["metadata"]["name"] == extension.ETCD_COMPONENT
    command = pod["spec"]["containers"][0]["command"]
    assert command[0] == "etcd"
    assert "--listen-client-urls=http://127.0.0.1:12379" in command
    assert "--listen-peer-urls=http://127.0.0.1:12380" in command
    assert "--unsafe-no-fsync=true" in command
    assert f"--data-dir={extension.ETCD_DATA_DIR}" in command
    assert not any("pki" in arg or "https" in arg for arg in command)


def test_the_apiservice_routes_to_an_external_name_service_on_loopback_with_the_serving_ca(laid_out):
    _, serving_ca = laid_out
    service = extension.service()
    assert service["spec"] == {"type": "ExternalName", "externalName": "127.0.0.1"}
    body = extension.apiservice(PORTS.secure, serving_ca.cert_pem)
    assert body["metadata"]["name"] == "v1alpha1.wardle.example.com"
    spec = body["spec"]
    assert (spec["group"], spec["version"]) == ("wardle.example.com", "v1alpha1")
    assert spec["service"] == {"namespace": service["metadata"]["namespace"], "name": service["metadata"]["name"],
                               "port": 4443}
    assert base64.b64decode(spec["caBundle"]) == serving_ca.cert_pem
    assert "insecureSkipTLSVerify" not in spec


def test_rbac_binds_the_kubeconfig_user_to_auth_delegation_and_the_authentication_reader():
    objects = extension.rbac_objects()
    refs = {(body["roleRef"]["kind"], body["roleRef"]["name"]): body for _, body in objects if "roleRef" in body}
    assert ("ClusterRole", "system:auth-delegator") in refs
    reader = refs[("Role", "extension-apiserver-authentication-reader")]
    assert reader["metadata"]["namespace"] == "kube-system"
    for body in refs.values():
        assert body["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": extension.USER}]
    for path, body in objects:
        assert path.endswith("/rolebindings" if body["kind"] == "RoleBinding" else
                             {"ClusterRoleBinding": "/clusterrolebindings", "ClusterRole": "/clusterroles"}[body["kind"]])


@pytest.mark.parametrize("conditions, expected", [
    ([{"type": "Available", "status": "True"}], True),
    ([{"type": "Available", "status": "False", "reason": "FailedDiscoveryCheck"}], False),
    ([], False),
])
def test_available_reads_the_condition(conditions, expected):
    assert extension.available({"status": {"conditions": conditions}}) is expected
    assert extension.available({}) is False
