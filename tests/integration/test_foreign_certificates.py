"""A rotation's plan warns of certificates careconcile does not manage but the old CA signed:
a kubernetes.io/tls Secret and an approved CertificateSigningRequest, made for real."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from reconciler._time import utcnow
from reconciler.core import pki
from reconciler.core.pki import LeafRequest
from reconciler.shell.kube import KubeClient, load_kubeconfig

from .helpers import wait_until
from .rotation import careconcile, record_ca, set_rotation

pytestmark = pytest.mark.integration

SECRET = "careconcile-test-web-tls"
CSR = "careconcile-test-client"


def _csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "careconcile-test-user")])).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


def test_plan_of_a_rotation_names_tls_secrets_and_approved_csrs_the_old_ca_signed(cluster, tmp_path):
    info = cluster
    client = KubeClient(load_kubeconfig(Path(info.kubeconfig)))
    ca = record_ca(info)
    web = pki.issue_leaf(ca, LeafRequest("web.example", server=True, key=pki.KeySpec("ECDSA", 256)),
                         now=utcnow())
    secrets = "/api/v1/namespaces/default/secrets"
    csrs = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
    client.create(secrets, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64.b64encode(web.cert_pem).decode(), "tls.key": base64.b64encode(web.key_pem).decode()},
    })
    client.create(csrs, {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": CSR},
        "spec": {"request": base64.b64encode(_csr_pem()).decode(), "signerName": "kubernetes.io/kube-apiserver-client",
                 "usages": ["client auth"], "expirationSeconds": 3600},
    })
    try:
        csr = client.get(f"{csrs}/{CSR}")
        csr["status"] = {"conditions": [{"type": "Approved", "status": "True", "reason": "Test",
                                          "message": "approved by the careconcile tests"}]}
        client.replace(f"{csrs}/{CSR}/approval", csr)
        # The controller-manager signs it with the cluster CA.
        wait_until("the CSR is signed", lambda: (client.get(f"{csrs}/{CSR}").get("status") or {}).get("certificate"))

        spec = tmp_path / "spec.yaml"
        spec.write_text(Path(info.spec).read_text())
        set_rotation(spec, 1)
        result = careconcile("plan", str(spec), workspace=tmp_path / "ws")
        assert result.returncode == 0, result.stderr
        warnings = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("warning:")]
        assert any(line.startswith(f"warning: secret/default/{SECRET}:") and "web.example" in line
                   for line in warnings), result.stdout
        assert any(line.startswith(f"warning: certificatesigningrequest/{CSR}:") for line in warnings), result.stdout
        # The managed leaves are not warned about, and the plan is still a rotation.
        assert not any("kubelet" in line or "apiserver" in line for line in warnings), warnings
        assert "CA to create" in result.stdout.splitlines()[-1]

        # Without a rotation there is nothing to warn about.
        steady = careconcile("plan", info.spec, workspace=tmp_path / "ws")
        assert steady.returncode == 0 and "warning:" not in steady.stdout
    finally:
        client.delete(f"{secrets}/{SECRET}")
        client.delete(f"{csrs}/{CSR}")
