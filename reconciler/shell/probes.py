"""TLS probes: what an API server presents, and whether it trusts a client certificate.

The rotation uses these to check its work from the outside, the way a client sees it,
rather than by reading files back.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

from cryptography import x509

from reconciler.errors import APIUnauthorizedError, ClusterUnreachableError, UntrustedServerError
from reconciler.shell.kube import KubeClient, KubeTarget, tls_context

SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
# An HTTP status line is short; a server that sends an endless one is not read to its end.
_STATUS_LINE_MAX = 4096


def _address(server: str) -> tuple[str, int]:
    url = urlsplit(server)
    if url.scheme != "https" or not url.hostname:
        raise ClusterUnreachableError(f"server {server!r}: not an https:// URL")
    return url.hostname, url.port or 443


def _handshake(server: str, context: ssl.SSLContext, timeout: float, server_name: str | None = None) -> ssl.SSLSocket:
    host, port = _address(server)
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        return context.wrap_socket(sock, server_hostname=server_name or host)
    except BaseException:
        sock.close()
        raise


def presented_certificate(server: str, *, timeout: float = 5.0) -> x509.Certificate:
    """The leaf certificate ``server`` presents, without verifying anything."""
    try:
        with _handshake(server, tls_context(ca_pem=None, verify=False), timeout) as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise ClusterUnreachableError(f"server {server}: TLS handshake failed: {exc}") from exc
    if not der:
        raise ClusterUnreachableError(f"server {server}: presented no certificate")
    return x509.load_der_x509_certificate(der)


def serves_chain_to(server: str, ca_pem: bytes, *, timeout: float = 5.0, server_name: str | None = None) -> bool:
    """Whether ``server``'s certificate verifies against exactly ``ca_pem``, host name
    included (the sandbox's servers are https://127.0.0.1:PORT with an IP SAN), or
    ``server_name`` (a kubeconfig's tls-server-name) when given.

    False only for a verification failure; a server that cannot be reached raises."""
    try:
        with _handshake(server, tls_context(ca_pem=ca_pem), timeout, server_name):
            return True
    except ssl.SSLCertVerificationError:
        return False
    except OSError as exc:
        raise ClusterUnreachableError(f"server {server}: TLS handshake failed: {exc}") from exc


def accepts_client_certificate(
    server: str, *, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, timeout: float = 5.0,
    front_proxy_user: str | None = None, server_name: str | None = None, proxy_url: str | None = None,
) -> str | None:
    """The user name the API server sees for this client certificate, or None when it
    answers 401 (the certificate is not accepted). A SelfSubjectReview needs no RBAC
    grant beyond being authenticated. With ``front_proxy_user`` the certificate is shown
    as the front proxy's, asserting that user (X-Remote-User): the apiserver accepts it
    only when its requestheader CA trusts the certificate. ``server_name`` and ``proxy_url``:
    the cluster kubeconfig's tls-server-name and proxy-url, which reach every apiserver of it."""
    headers = (("X-Remote-User", front_proxy_user),) if front_proxy_user else ()
    target = KubeTarget(name=f"client certificate probe of {server}", server=server,
                        ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem, headers=headers,
                        tls_server_name=server_name, proxy_url=proxy_url)
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    with KubeClient(target, timeout=timeout, backoff_budget=0) as client:
        try:
            answer = client.create(SELF_SUBJECT_REVIEWS, review)
        except APIUnauthorizedError:
            return None
    username = ((answer.get("status") or {}).get("userInfo") or {}).get("username")
    if not username:
        raise ClusterUnreachableError(f"server {server}: SelfSubjectReview answer names no user")
    return username


def authenticates_front_proxy(host: str, port: int, *, server_name: str, ca_pem: bytes, cert_pem: bytes,
                              key_pem: bytes, user: str, path: str, timeout: float = 5.0) -> bool:
    """Whether an aggregated apiserver authenticates a request that comes as the front proxy
    with this client certificate, asserting ``user``: any answer but 401 (a 403 is an
    authenticated user without the right). Its serving certificate is verified against
    ``ca_pem`` (the APIService's caBundle) for ``server_name`` (the Service's DNS name),
    whatever address it is reached at."""
    where = f"aggregated apiserver {server_name} at {host}:{port}"
    context = tls_context(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
        with context.wrap_socket(sock, server_hostname=server_name) as tls:
            tls.sendall((f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nX-Remote-User: {user}\r\n"
                         "Accept: application/json\r\nConnection: close\r\n\r\n").encode())
            status_line = tls.makefile("rb").readline(_STATUS_LINE_MAX).decode("latin-1")
    except ssl.SSLCertVerificationError as exc:
        raise UntrustedServerError(f"{where}: its serving certificate does not verify against the caBundle "
                                   f"for {server_name} ({exc.verify_message})") from exc
    except OSError as exc:
        raise ClusterUnreachableError(f"{where}: {exc}") from exc
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ClusterUnreachableError(f"{where}: no HTTP answer")
    return int(parts[1]) != 401
