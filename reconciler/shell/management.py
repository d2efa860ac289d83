"""Admin mode's reach into the management cluster: a user cluster's CA Secret and
kubeconfig Secret, read and written the way Cluster API keeps them, and a client for the
user cluster that follows its kubeconfig Secret.

What lives where is in :mod:`reconciler.core.admin`; registering a cluster and reading
one back as a spec cluster is :mod:`reconciler.shell.admin`.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from typing import Any, Callable

from cryptography import x509

from reconciler.core import kubeconfig, pki
from reconciler.core.admin import (
    CA_CERT_KEY, CA_KEY_KEY, CLUSTER_NAME_LABEL, KUBECONFIG_KEY, ManagementNames, ca_secret_data,
)
from reconciler.core.pki import KeyPair
from reconciler.errors import (
    AdminClusterError, APIConflictError, APINotFoundError, APIUnauthorizedError, ClusterUnreachableError, PKIError,
)
from reconciler.shell.kube import KubeClient, KubeTarget, https_transport, kubeconfig_target

_ATTEMPTS = 5  # a Secret another writer changes in between is read and changed again


@dataclass
class ManagementAccess:
    """The management cluster, and where one user cluster's objects live in it."""

    client: KubeClient
    names: ManagementNames

    @property
    def cluster(self) -> str:
        return self.names.cluster

    @property
    def namespace(self) -> str:
        return self.names.namespace

    def describe(self) -> str:
        return f"management cluster {self.client.target.server}, namespace {self.namespace}"

    def secret_path(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{name}"

    def secret_id(self, name: str) -> str:
        return self.names.secret_id(name)

    def get_secret(self, name: str) -> dict[str, Any]:
        """The Secret, or an error that says how a cluster gets registered."""
        try:
            return self.client.get(self.secret_path(name))
        except APINotFoundError:
            raise AdminClusterError(
                f"cluster {self.cluster}: Secret {self.namespace}/{name} is missing in the {self.describe()}; "
                "in admin mode it holds the cluster's CA of record and kubeconfig",
                hint=f"register the cluster there first: careconcile register {self.cluster} --admin-kubeconfig "
                     "ADMIN --namespace NS ... (docs/admin-mode.md)") from None

    def secret_value(self, secret: dict[str, Any], key: str) -> bytes:
        name = (secret.get("metadata") or {}).get("name")
        value = (secret.get("data") or {}).get(key)
        if not value:
            raise AdminClusterError(f"cluster {self.cluster}: Secret {self.namespace}/{name} has no data key {key!r}")
        try:
            return base64.b64decode(value, validate=True)
        except (TypeError, ValueError):
            raise PKIError(f"Secret {self.namespace}/{name}: data {key!r} is not base64") from None

    def update_secret(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Read, change, replace with the resourceVersion read; again if someone wrote in
        between. The Secret's type and labels stay; the cluster-name label is kept on it."""
        path = self.secret_path(name)
        for _ in range(_ATTEMPTS):
            secret = self.get_secret(name)
            change(secret)
            secret.setdefault("metadata", {}).setdefault("labels", {})[CLUSTER_NAME_LABEL] = self.cluster
            try:
                self.client.replace(path, secret)
                return
            except APIConflictError:
                continue
        raise AdminClusterError(f"Secret {self.namespace}/{name} kept changing while being updated")

    # --- the CA of record: <name>-ca ------------------------------------------------------

    def has_secret(self, name: str) -> bool:
        try:
            self.client.get(self.secret_path(name))
        except APINotFoundError:
            return False
        return True

    def read_authority(self, suffix: str) -> tuple[tuple[x509.Certificate, ...], pki.PrivateKey]:
        """The certificates in ``tls.crt`` of ``<name>-<suffix>`` and the key in ``tls.key``."""
        name = self.names.authority_secret(suffix)
        secret = self.get_secret(name)
        source = f"Secret {self.namespace}/{name}"
        certs = pki.load_certificates(self.secret_value(secret, CA_CERT_KEY), source=f"{source} {CA_CERT_KEY}")
        if not certs:
            raise PKIError(f"{source} {CA_CERT_KEY}: holds no certificate")
        key = pki.load_private_key(self.secret_value(secret, CA_KEY_KEY), source=f"{source} {CA_KEY_KEY}")
        return tuple(certs), key

    def write_authority(self, suffix: str, pair: KeyPair) -> None:
        """``tls.crt`` becomes this CA alone and ``tls.key`` its key, as Cluster API keeps them."""
        def change(secret: dict[str, Any]) -> None:
            secret.setdefault("data", {}).update(ca_secret_data(pair.cert_pem, pair.key_pem))
        self.update_secret(self.names.authority_secret(suffix), change)

    # --- the kubeconfig: <name>-kubeconfig ------------------------------------------------

    @property
    def kubeconfig_source(self) -> str:
        return f"Secret {self.namespace}/{self.names.kubeconfig_secret} (data {KUBECONFIG_KEY})"

    def read_kubeconfig(self) -> str:
        secret = self.get_secret(self.names.kubeconfig_secret)
        return self.secret_value(secret, KUBECONFIG_KEY).decode("utf-8", "replace")

    def rewrite_kubeconfig(self, change: Callable[[dict], dict]) -> None:
        def rewrite(secret: dict[str, Any]) -> None:
            raw = self.secret_value(secret, KUBECONFIG_KEY).decode("utf-8", "replace")
            document = change(kubeconfig.parse(raw, source=self.kubeconfig_source))
            secret.setdefault("data", {})[KUBECONFIG_KEY] = base64.b64encode(kubeconfig.dump(document).encode()).decode()
        self.update_secret(self.names.kubeconfig_secret, rewrite)

    def user_target(self) -> KubeTarget:
        """The user cluster's server and credentials, from the kubeconfig Secret."""
        return kubeconfig_target(self.read_kubeconfig(), source=self.kubeconfig_source)

    def close(self) -> None:
        self.client.close()


class SecretKubeconfigClient(KubeClient):
    """A client of the user cluster that authenticates with the kubeconfig in the Secret
    ``<name>-kubeconfig`` of the management cluster. A rotation rewrites that Secret:
    careconcile calls :meth:`reload` after each write of its own, and a request that fails
    on TLS verification or with 401 reloads the Secret once and is sent again (neither
    reached the server's handlers, so sending again is safe)."""

    def __init__(self, management: ManagementAccess, *, timeout: float = 10.0) -> None:
        self.management = management
        super().__init__(management.user_target(), timeout=timeout)

    def reload(self) -> None:
        reloaded = self.management.user_target()
        if reloaded.server != self.target.server:
            raise ClusterUnreachableError(
                f"{reloaded.name}: the server changed from {self.target.server} to {reloaded.server} "
                "while careconcile was using it; not following it to another cluster")
        self.close()
        self.target = reloaded
        self.transport = https_transport(reloaded, timeout=self.timeout)

    def request(self, method: str, path: str, body: dict[str, Any] | list[Any] | None = None,
                content_type: str = "application/json") -> dict[str, Any]:
        try:
            return super().request(method, path, body, content_type)
        except APIUnauthorizedError:
            pass
        except ClusterUnreachableError as exc:
            # Only a failed certificate check says the request never reached a handler; an
            # SSL error while reading the answer could follow a write that was carried out.
            if not isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                raise
        self.reload()
        return super().request(method, path, body, content_type)
