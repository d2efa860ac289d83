"""Admin (management) cluster mode: registering a user cluster in its management cluster,
and reading a registered cluster back as a spec cluster.

``register`` records, in the cluster's namespace of the management cluster, what Cluster
API keeps for a workload cluster (Secrets ``<name>-ca`` and ``<name>-kubeconfig``) and what
careconcile needs beside it (the node inventory, Secret ``<name>-careconcile-nodes``, and
the SSH key ``<name>-ssh-key``), so that the management cluster alone is enough to rotate the cluster.
:func:`cluster_from_admin` turns that back into a :class:`ClusterSpec`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.core import kubeconfig, pki
from reconciler.core.admin import (
    INVENTORY_KEY, INVENTORY_SECRET_TYPE, KUBECONFIG_KEY, MANAGED_BY_LABEL, SSH_AUTH_TYPE, SSH_KEY_KEY, InventoryNode,
    ManagementNames, NodeInventory, ca_secret_data, capi_kubeconfig, dump_inventory, inventory, inventory_node_of,
    node_spec_of, parse_inventory, secret_body,
)
from reconciler.core.authorities import CLUSTER_CA
from reconciler.core.observed import fp, short
from reconciler.core.pki import KeyPair
from reconciler.core.spec import MANAGEMENT_NAMESPACE, ClusterSpec, NodeSpec
from reconciler.errors import (
    AdminClusterError, APIConflictError, APIForbiddenError, APINotFoundError, CareconcileError,
)
from reconciler.shell.kube import KubeClient, KubeconfigClient, KubeTarget, load_kubeconfig
from reconciler.shell.nodes import node_files
from reconciler.shell.observe import read_record
from reconciler.shell.statestore import SecretStateStore

MANAGED_BY = {MANAGED_BY_LABEL: "careconcile"}


def default_namespace(cluster: str) -> str:
    return MANAGEMENT_NAMESPACE.format(name=cluster)


@dataclass(frozen=True)
class Registration:
    """What ``register`` writes for one cluster. ``kubeconfig`` None keeps the kubeconfig
    Secret as it is (it must exist): a cluster already in admin mode has no other."""

    cluster: str
    namespace: str
    ca: KeyPair
    kubeconfig: dict[str, Any] | None
    nodes: list[InventoryNode]
    ssh_key_pem: bytes | None = field(default=None, repr=False)

    @property
    def names(self) -> ManagementNames:
        return ManagementNames(self.cluster, self.namespace)


@dataclass(frozen=True)
class Written:
    """One object ``register`` wrote: ``outcome`` is created, updated, unchanged, kept or removed."""

    kind: str
    namespace: str
    name: str
    outcome: str
    detail: str

    def describe(self) -> str:
        where = self.name if self.kind == "Namespace" else f"{self.namespace}/{self.name}"
        return f"{self.kind} {where}: {self.outcome} ({self.detail})"


# --- what to register ----------------------------------------------------------------------

def read_ca(cert_path: Path, key_path: Path) -> KeyPair:
    """The CA of ``--ca-cert``/``--ca-key``: the certificate in the file that the key belongs to."""
    try:
        cert_pem, key_pem = Path(cert_path).read_bytes(), Path(key_path).read_bytes()
    except OSError as exc:
        raise AdminClusterError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    key = pki.load_private_key(key_pem, source=str(key_path))
    certs = pki.load_certificates(cert_pem, source=str(cert_path))
    cert = next((cert for cert in certs if pki.key_matches_cert(key, cert)), None)
    if cert is None:
        raise AdminClusterError(f"the CA key {key_path} matches no certificate in {cert_path}")
    return KeyPair(cert, key)


def read_ca_from_node(node: NodeSpec, base: Path | None) -> KeyPair:
    """The CA of record on a control-plane node: its ca.crt certificate that ca.key belongs to."""
    files = node_files(node, base)
    try:
        files.check()
        key, cert = read_record(files, CLUSTER_CA)
    finally:
        files.close()
    if cert is None:
        raise AdminClusterError(f"{files.describe()}: {CLUSTER_CA.record_key} matches no certificate in "
                                f"{CLUSTER_CA.record_cert}")
    return KeyPair(cert, key)


def capi_kubeconfig_from(cluster: str, target: KubeTarget, ca: KeyPair) -> dict[str, Any]:
    """The kubeconfig for ``<name>-kubeconfig`` from a context of a user kubeconfig, checked
    against the CA being registered: it must trust it, and a client certificate in it must
    come from it (else the Secrets would not belong together)."""
    ca_fp = fp(ca.cert)
    trusted = [fp(cert) for cert in pki.load_certificates(target.ca_pem or b"", source=target.name)]
    if ca_fp not in trusted:
        raise AdminClusterError(f"{target.name} does not trust the CA being registered ({short(ca_fp)}); "
                                "the kubeconfig and the CA must be the same cluster's")
    if target.cert_pem is not None:
        client = pki.load_certificates(target.cert_pem, source=f"{target.name} client certificate")[0]
        if not pki.is_signed_by(client, ca.cert):
            raise AdminClusterError(f"{target.name}: its client certificate is not signed by the CA being "
                                    f"registered ({short(ca_fp)})")
    elif not target.token:
        raise AdminClusterError(f"{target.name}: no client certificate or token to authenticate with")
    if target.proxy_url and urlsplit(target.proxy_url).password is not None:
        raise AdminClusterError(f"{target.name}: its cluster's proxy-url holds a password, which register would "
                                f"store in the Secret {cluster}-kubeconfig of the management cluster",
                                hint="register from a kubeconfig without the proxy-url, and set HTTPS_PROXY (with its "
                                     "user and password) where careconcile runs")
    return capi_kubeconfig(cluster, target.server, target.ca_pem, cert_pem=target.cert_pem,
                           key_pem=target.key_pem, token=target.token, tls_server_name=target.tls_server_name,
                           proxy_url=target.proxy_url)


def registration_from_files(cluster: str, namespace: str | None, *, kubeconfig_path: Path, context: str | None,
                            ca_cert: Path, ca_key: Path, nodes: list[InventoryNode],
                            ssh_key: Path | None = None) -> Registration:
    ca = read_ca(ca_cert, ca_key)
    return Registration(
        cluster=cluster, namespace=namespace or default_namespace(cluster), ca=ca,
        kubeconfig=capi_kubeconfig_from(cluster, load_kubeconfig(kubeconfig_path, context), ca),
        nodes=nodes, ssh_key_pem=_read_key(ssh_key) if ssh_key else None)


def registration_from_spec(loaded: Any, cluster: ClusterSpec, namespace: str | None, *,
                           kubeconfig_path: Path | None = None, context: str | None = None,
                           ca_cert: Path | None = None, ca_key: Path | None = None,
                           ssh_key: Path | None = None) -> Registration:
    """A spec's cluster (a :class:`LoadedSpec`'s): its nodes, its kubeconfig (unless the
    spec is in admin mode already and has none) and the CA of record of its first
    control-plane node, each unless given."""
    if ca_cert is not None and ca_key is not None:
        ca = read_ca(ca_cert, ca_key)
    else:
        control_planes = [node for node in cluster.nodes if node.role == "control-plane"]
        if not control_planes:
            raise AdminClusterError(f"{loaded.path}: cluster {cluster.name} lists no control-plane node to read the "
                                    "CA from", hint="give --ca-cert and --ca-key")
        ca = read_ca_from_node(control_planes[0], loaded.base)
    path = kubeconfig_path or loaded.kubeconfig_path(cluster)
    document = None
    if path is not None:
        document = capi_kubeconfig_from(cluster.name, load_kubeconfig(path, context or cluster.context), ca)
    if ssh_key is None:  # the one key the spec's SSH nodes log in with, if they share one
        keys = {loaded.resolve(node.access.ssh.key_file) for node in cluster.nodes
                if getattr(node.access, "ssh", None) is not None}
        ssh_key = keys.pop() if len(keys) == 1 else None
    return Registration(
        cluster=cluster.name, namespace=namespace or cluster.management_namespace or default_namespace(cluster.name),
        ca=ca, kubeconfig=document, nodes=[inventory_node_of(node) for node in cluster.nodes],
        ssh_key_pem=_read_key(ssh_key) if ssh_key else None)


def _read_key(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AdminClusterError(f"cannot read the SSH key {path}: {exc.strerror}") from exc


# --- writing it ----------------------------------------------------------------------------

def register(admin: KubeClient, registration: Registration) -> list[Written]:
    """Create or update the cluster's objects in the management cluster; idempotent: an
    object that already holds what it should is left alone. Refused while a rotation of the
    cluster is in progress (its Secrets are the rotation's to change then)."""
    unpinned = [node.name for node in registration.nodes
                if node.transport == "ssh" and (node.ssh is None or node.ssh.host_key is None)]
    if unpinned:
        # careconcile never trusts an SSH host key on first use: without one recorded, the
        # registration could never be used to reach these nodes.
        raise AdminClusterError(
            f"cluster {registration.cluster}: node(s) {', '.join(unpinned)} are reached over SSH but have no "
            "host key to pin", hint="give each one: --node NAME=ROLE,ADDRESS,host-key='ssh-ed25519 AAAA...' "
                                    "(ssh-keyscan ADDRESS shows it; check it out of band), or hostKey in the spec")
    names = registration.names
    ns = names.namespace
    store = SecretStateStore(admin, namespace=ns, name=names.state_secret, keys_name=names.keys_secret)
    state = store.load_state(CLUSTER_CA.name)  # empty while the Secret (or the namespace) does not exist
    if state.in_progress:
        raise AdminClusterError(
            f"cluster {registration.cluster}: a rotation to {short(fp(state.target))} is in progress "
            f"({store.describe()}); registering now would overwrite what it is changing",
            hint="finish it with `careconcile apply SPEC` (or undo it with `careconcile rollback SPEC`) first")
    inventory_document = inventory(registration.cluster, registration.nodes)
    written = [_namespace(admin, ns)]
    ca = registration.ca
    written.append(_apply(admin, secret_body(names, names.ca_secret, ca_secret_data(ca.cert_pem, ca.key_pem)),
                          f"CA {fp(ca.cert)}, its key in tls.key"))
    if registration.kubeconfig is not None:
        text = kubeconfig.dump(registration.kubeconfig)
        server = registration.kubeconfig["clusters"][0]["cluster"]["server"]
        user = registration.kubeconfig["users"][0]["name"]
        written.append(_apply(admin, secret_body(names, names.kubeconfig_secret,
                                                 {KUBECONFIG_KEY: base64.b64encode(text.encode()).decode()}),
                              f"server {server}, user {user}"))
    else:
        try:
            admin.get(f"/api/v1/namespaces/{ns}/secrets/{names.kubeconfig_secret}")
        except APINotFoundError:
            raise AdminClusterError(f"cluster {registration.cluster}: no kubeconfig to register, and Secret "
                                    f"{ns}/{names.kubeconfig_secret} does not exist",
                                    hint="give --kubeconfig (and --context)") from None
        written.append(Written("Secret", ns, names.kubeconfig_secret, "kept", "no kubeconfig given"))
    written.append(_apply(admin, _inventory_secret(names, inventory_document),
                          f"{len(inventory_document.nodes)} nodes: " + ", ".join(
                              f"{node.name} ({node.role}, {node.transport})" for node in inventory_document.nodes)))
    old = _remove_old_inventory(admin, names)
    if old is not None:
        written.append(old)
    if registration.ssh_key_pem is not None:
        body = secret_body(names, names.ssh_key_secret,
                           {SSH_KEY_KEY: base64.b64encode(registration.ssh_key_pem).decode()}, type_=SSH_AUTH_TYPE)
        body["metadata"]["labels"].update(MANAGED_BY)
        written.append(_apply(admin, body, "the nodes' SSH private key"))
    return written


def _inventory_secret(names: ManagementNames, value: NodeInventory) -> dict[str, Any]:
    body = secret_body(names, names.inventory, {INVENTORY_KEY: base64.b64encode(dump_inventory(value).encode()).decode()},
                       type_=INVENTORY_SECRET_TYPE)
    body["metadata"]["labels"].update(MANAGED_BY)
    return body


def _old_inventory_path(names: ManagementNames) -> str:
    return f"/api/v1/namespaces/{names.namespace}/configmaps/{names.inventory}"


def _remove_old_inventory(admin: KubeClient, names: ManagementNames) -> Written | None:
    """The inventory ConfigMap an older careconcile wrote, removed now that the Secret holds
    the inventory; None when there is none. Without the right to delete it, it stays: no
    careconcile reads it for nodes any more."""
    path = _old_inventory_path(names)
    try:
        admin.get(path)
        admin.delete(path)
    except APINotFoundError:
        return None
    except APIForbiddenError:
        return Written("ConfigMap", names.namespace, names.inventory, "kept",
                       "the old inventory; not allowed to delete it, and careconcile no longer reads it")
    return Written("ConfigMap", names.namespace, names.inventory, "removed",
                   f"the old inventory; careconcile reads Secret {names.namespace}/{names.inventory} instead")


def _namespace(admin: KubeClient, namespace: str) -> Written:
    try:
        admin.get(f"/api/v1/namespaces/{namespace}")
        return Written("Namespace", "", namespace, "unchanged", "exists")
    except APINotFoundError:
        pass
    try:
        admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": namespace, "labels": dict(MANAGED_BY)}})
    except APIConflictError:
        return Written("Namespace", "", namespace, "unchanged", "exists")
    return Written("Namespace", "", namespace, "created", "for the cluster's objects")


def _apply(admin: KubeClient, body: dict[str, Any], detail: str) -> Written:
    """Create the object, or bring an existing one's data, type and our labels to ``body``;
    its other labels, annotations and owners stay."""
    kind, metadata = body["kind"], body["metadata"]
    collection = f"/api/v1/namespaces/{metadata['namespace']}/{kind.lower()}s"
    path = f"{collection}/{metadata['name']}"
    for _ in range(5):
        try:
            current = admin.get(path)
        except APINotFoundError:
            try:
                admin.create(collection, body)
            except APIConflictError:
                continue  # created in between: compare with it
            return Written(kind, metadata["namespace"], metadata["name"], "created", detail)
        if kind == "Secret" and current.get("type", "Opaque") != body["type"]:
            raise AdminClusterError(f"Secret {metadata['namespace']}/{metadata['name']} has type "
                                    f"{current.get('type')!r}, not {body['type']!r}; careconcile does not change a "
                                    "Secret's type", hint="remove the Secret, then register again")
        labels = (current.get("metadata") or {}).get("labels") or {}
        if current.get("data") == body["data"] and all(labels.get(k) == v for k, v in metadata["labels"].items()):
            return Written(kind, metadata["namespace"], metadata["name"], "unchanged", detail)
        current["data"] = body["data"]
        current.setdefault("metadata", {})["labels"] = {**labels, **metadata["labels"]}
        try:
            admin.replace(path, current)  # carries the resourceVersion read
        except APIConflictError:
            continue
        return Written(kind, metadata["namespace"], metadata["name"], "updated", detail)
    raise AdminClusterError(f"{kind} {metadata['namespace']}/{metadata['name']} kept changing while being written")


# --- reading it back ----------------------------------------------------------------------

def read_inventory(admin: KubeClient, names: ManagementNames) -> NodeInventory:
    """The inventory in the Secret ``<name>-careconcile-nodes``. Never from a ConfigMap: the
    one an older careconcile wrote is only looked for to say that the cluster must be
    registered again (anyone allowed to edit ConfigMaps there could have changed its hosts,
    host keys and commands)."""
    source = f"Secret {names.namespace}/{names.inventory}"
    register_again = (f"register the cluster again from what you know of its nodes: careconcile register "
                      f"{names.cluster} --node ... or --from-spec SPEC (docs/admin-mode.md); it writes the "
                      "inventory into that Secret and removes the old ConfigMap")
    try:
        secret = admin.get(f"/api/v1/namespaces/{names.namespace}/secrets/{names.inventory}")
    except APINotFoundError:
        try:
            admin.get(_old_inventory_path(names))
        except (APINotFoundError, APIForbiddenError):
            raise AdminClusterError(f"cluster {names.cluster}: {source} (the node inventory) is missing in the "
                                    "management cluster", hint=f"register the cluster: careconcile register "
                                    f"{names.cluster} ... (docs/admin-mode.md)") from None
        raise AdminClusterError(
            f"cluster {names.cluster}: the node inventory is in ConfigMap {names.namespace}/{names.inventory}, as an "
            f"older careconcile wrote it, not in {source}; careconcile no longer takes node addresses, host keys or "
            "restart commands from a ConfigMap, which anyone allowed to edit ConfigMaps in the namespace could "
            "have changed", hint=register_again) from None
    if secret.get("type") != INVENTORY_SECRET_TYPE:
        raise AdminClusterError(f"{source} has type {secret.get('type')!r}, not {INVENTORY_SECRET_TYPE!r}; "
                                "it is not a node inventory careconcile wrote", hint=register_again)
    encoded = (secret.get("data") or {}).get(INVENTORY_KEY)
    if not encoded:
        raise AdminClusterError(f"{source}: no data key {INVENTORY_KEY!r}", hint=register_again)
    try:
        text = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (TypeError, ValueError):
        raise AdminClusterError(f"{source}: data {INVENTORY_KEY!r} is not base64 of UTF-8 text",
                                hint=register_again) from None
    found = parse_inventory(text, source=source)
    if found.cluster != names.cluster:
        raise AdminClusterError(f"{source}: the inventory is cluster {found.cluster!r}'s, not {names.cluster!r}'s")
    return found


def cluster_from_admin(admin_client: KubeconfigClient, name: str, namespace: str | None = None, *,
                       ssh_key_file: str | None = None) -> ClusterSpec:
    """The spec cluster that what the management cluster holds for ``name`` describes: in
    admin mode (``management`` names ``admin_client``'s kubeconfig, context and the
    namespace), without a kubeconfig of its own, its nodes from the inventory. Its
    authorities are the defaults (rotation 0). Nodes reached over SSH need the private key
    as a file (``ssh_key_file``: the Secret ``<name>-ssh-key`` written out by the caller)."""
    names = ManagementNames(name, namespace or default_namespace(name))
    nodes = read_inventory(admin_client, names).nodes
    for secret in (names.ca_secret, names.kubeconfig_secret):
        try:
            admin_client.get(f"/api/v1/namespaces/{names.namespace}/secrets/{secret}")
        except APINotFoundError:
            raise AdminClusterError(f"cluster {name}: Secret {names.namespace}/{secret} is missing in the management "
                                    "cluster", hint=f"register the cluster: careconcile register {name} ...") from None
    path, context = getattr(admin_client, "path", None), getattr(admin_client, "context", None)
    if path is None:
        files = getattr(admin_client, "paths", None)
        raise AdminClusterError("cluster_from_admin needs a client made from a kubeconfig file; the spec names the "
                                "management cluster by its kubeconfig" + (
                                    f", and the context {context!r} with its cluster and user is not in one of "
                                    f"{', '.join(map(str, files))}" if files else ""),
                                hint="give --kubeconfig with the file that holds the context" if files else None)
    try:
        return ClusterSpec.model_validate({
            "name": name,
            "management": {"kubeconfig": str(Path(path).absolute()), "context": context, "namespace": names.namespace},
            "nodes": [node_spec_of(entry, cluster=name, ssh_key_file=ssh_key_file) for entry in nodes],
        }, by_name=False)
    except CareconcileError:
        raise
    except ValueError as exc:  # pydantic's ValidationError is one
        raise AdminClusterError(f"cluster {name}: what the management cluster holds is not a valid cluster: {exc}") \
            from None
