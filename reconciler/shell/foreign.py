"""Certificates in a cluster that careconcile does not manage but a rotation affects.

A plan names them as warnings (kubernetes.io/tls Secrets and approved
CertificateSigningRequests signed by the CA being replaced); careconcile never writes
them. Read for plans only: `drift` stays within its read-only RBAC, which lists no Secrets.
"""

from __future__ import annotations

import base64
import binascii

from cryptography import x509

from reconciler.core import pki
from reconciler.core.observed import ForeignCertificate
from reconciler.errors import APIForbiddenError, PKIError
from reconciler.shell.kube import KubeClient

TLS_SECRETS = "/api/v1/secrets"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


def _first_certificate(data: str, where: str) -> x509.Certificate | None:
    try:
        certs = pki.load_certificates(base64.b64decode(data), source=where)
    except (PKIError, binascii.Error, ValueError):
        return None  # not readable as a certificate: not ours to judge, and nothing to warn about
    return certs[0] if certs else None


def observe_foreign(client: KubeClient) -> tuple[ForeignCertificate, ...]:
    """Unmanaged certificates the client may list; a kind it may not list is skipped."""
    found: list[ForeignCertificate] = []
    try:
        for secret in client.list(TLS_SECRETS, field_selector="type=kubernetes.io/tls"):
            meta = secret["metadata"]
            site = f"secret/{meta['namespace']}/{meta['name']}"
            cert = _first_certificate((secret.get("data") or {}).get("tls.crt") or "", site)
            if cert is not None:
                found.append(ForeignCertificate(id=site, cert=cert))
    except APIForbiddenError:
        pass
    try:
        for csr in client.list(CSRS):
            status = csr.get("status") or {}
            approved = any(c.get("type") == "Approved" for c in status.get("conditions") or [])
            if not approved or not status.get("certificate"):
                continue
            site = f"certificatesigningrequest/{csr['metadata']['name']}"
            cert = _first_certificate(status["certificate"], site)
            if cert is not None:
                found.append(ForeignCertificate(id=site, cert=cert))
    except APIForbiddenError:
        pass
    return tuple(found)
