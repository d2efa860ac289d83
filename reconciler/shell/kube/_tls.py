"""The SSL context of a connection to an API server, built in memory: the client key never
touches the disk (anonymous memory files, gone with the process even under SIGKILL).

Seam for ``tls-server-name``: the name a certificate is checked against is the
``server_hostname`` the transport passes to ``wrap_socket`` (:mod:`._transport`); this
context stays the same for any name.
"""

from __future__ import annotations

import os
import ssl

from reconciler.errors import PKIError


def tls_context(
    *,
    ca_pem: bytes | None,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """An SSL context built in memory: the CA from ``cadata``, the client certificate and
    key through anonymous memory files, so that no key ever touches the disk.

    ``ca_pem=None`` with ``verify=True`` trusts the system's CAs. ``verify=False`` checks
    nothing (CERT_NONE), for probes that only look at what a server presents.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if ca_pem is None:
            context.load_default_certs()
        else:
            try:
                context.load_verify_locations(cadata=ca_pem.decode("ascii"))
            except (ssl.SSLError, ValueError) as exc:
                raise PKIError(f"CA bundle holds no usable PEM certificate ({exc})") from exc
        # Like Go's x509 pool: any certificate in the bundle is a trust anchor, also an
        # intermediate, so "verifies against exactly this CA" means what it says.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if (cert_pem is None) != (key_pem is None):
        raise PKIError("a client certificate needs its key and a key its certificate")
    if cert_pem is not None and key_pem is not None:
        _load_client_chain(context, cert_pem, key_pem)
    return context


def _memory_file(name: str, content: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]
    return fd


def _refuse_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise PKIError("the client key is encrypted; careconcile needs an unencrypted key")


def _load_client_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """load_cert_chain only takes paths: give it /proc/self/fd paths of memfds, which
    vanish with the process, even under SIGKILL."""
    cert_fd = _memory_file("careconcile-client-cert", cert_pem)
    try:
        key_fd = _memory_file("careconcile-client-key", key_pem)
        try:
            context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}",
                                    password=_refuse_passphrase)
        except ssl.SSLError as exc:
            # OpenSSL's reason only (e.g. KEY_VALUES_MISMATCH); never the key itself.
            raise PKIError(f"client certificate and key cannot be used together ({exc.reason or exc})") from exc
        finally:
            os.close(key_fd)
    finally:
        os.close(cert_fd)
