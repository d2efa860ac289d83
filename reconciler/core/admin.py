"""Admin (management) cluster mode, the pure part: what careconcile keeps in a management
cluster for a user cluster, the way Cluster API keeps a workload cluster, and the format of
the node inventory.

In the namespace of the cluster (``cluster-<name>`` unless the spec or ``register`` names
another) live:

- Secret ``<name>-ca`` (type ``cluster.x-k8s.io/secret``, data ``tls.crt``/``tls.key``,
  label ``cluster.x-k8s.io/cluster-name``): the cluster CA and its key, a CA of record;
- Secret ``<name>-kubeconfig`` (same type and label, data ``value``): an admin kubeconfig
  of the cluster, a consumer of the cluster CA like any kubeconfig;
- Secrets ``<name>-careconcile-state`` (the public record) and ``<name>-careconcile-keys``
  (the CA keys during a rotation), and Lease ``<name>-careconcile-lock``: careconcile's
  rotation state and its lock, named after the cluster so that clusters sharing a
  namespace do not collide;
- Secret ``<name>-careconcile-nodes`` (type ``careconcile.dev/node-inventory``, data
  ``nodes.yaml``): the node inventory, a :class:`NodeInventory`. It says where careconcile
  connects, which host keys it trusts and which commands it runs, so it is a Secret: who
  may write it may write ``<name>-ca`` as well. Older careconcile kept it in a ConfigMap of
  the same name, which anyone allowed to edit ConfigMaps could have changed; that one is
  never read for nodes again.
- Secret ``<name>-ssh-key`` (type ``kubernetes.io/ssh-auth``, data ``ssh-privatekey``):
  the private key to reach the nodes over SSH, when registered with one.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator
from ruamel.yaml import YAML

from reconciler.core import yamldoc
from reconciler.core.spec import (API_VERSION, DNS_LABEL, DNS_SUBDOMAIN, AbsolutePath, Command, HOST, HostKeyLine,
                                  LocalAccess, NodeAccess, NodeSpec)
from reconciler.errors import AdminClusterError

CAPI_SECRET_TYPE = "cluster.x-k8s.io/secret"
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
KUBECONFIG_KEY = "value"  # Cluster API's data key of <name>-kubeconfig
CA_CERT_KEY, CA_KEY_KEY = "tls.crt", "tls.key"
SSH_AUTH_TYPE = "kubernetes.io/ssh-auth"
SSH_KEY_KEY = "ssh-privatekey"
INVENTORY_KEY = "nodes.yaml"
INVENTORY_KIND = "NodeInventory"
INVENTORY_SECRET_TYPE = "careconcile.dev/node-inventory"


@dataclass(frozen=True)
class ManagementNames:
    """Where a user cluster's objects live in its management cluster."""

    cluster: str
    namespace: str

    def authority_secret(self, suffix: str) -> str:
        """Cluster API's Secret of one CA: ``<name>-ca``, ``<name>-etcd``, ``<name>-proxy``."""
        return f"{self.cluster}-{suffix}"

    @property
    def ca_secret(self) -> str:
        return self.authority_secret("ca")

    @property
    def kubeconfig_secret(self) -> str:
        return f"{self.cluster}-kubeconfig"

    @property
    def state_secret(self) -> str:
        return f"{self.cluster}-careconcile-state"

    @property
    def keys_secret(self) -> str:
        return f"{self.cluster}-careconcile-keys"

    @property
    def lock_lease(self) -> str:
        return f"{self.cluster}-careconcile-lock"

    @property
    def inventory(self) -> str:
        return f"{self.cluster}-careconcile-nodes"

    @property
    def ssh_key_secret(self) -> str:
        return f"{self.cluster}-ssh-key"

    def secret_id(self, name: str) -> str:
        """The id plans and findings name a Secret of the management cluster by."""
        return f"secret/{self.namespace}/{name}"

    @property
    def labels(self) -> dict[str, str]:
        return {CLUSTER_NAME_LABEL: self.cluster}


# --- the node inventory ------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class InventorySSH(_Strict):
    """How to log in to a node over SSH; the key is the Secret ``<name>-ssh-key``."""

    user: str = Field(default="root", min_length=1, pattern=r"^[^\s@:]+$", description="The user to log in as.")
    port: StrictInt = Field(default=22, ge=1, le=65535, description="The SSH port.")
    host_key: HostKeyLine | None = Field(default=None, alias="hostKey",
                                         description="The node's public host key, as a known_hosts line has it.")
    root: AbsolutePath = Field(default="/", description="Absolute directory on the node that stands for its '/'.")
    kubelet_restart: Command | None = Field(
        default=None, alias="kubeletRestart",
        description="The command that restarts the node's kubelet, as the spec's access.ssh.kubeletRestart; "
                    "unset: [systemctl, restart, kubelet]; []: the node has no kubelet to restart.")


class InventoryLocal(_Strict):
    """The node's files are on the machine careconcile runs on, under this root (the sandbox)."""

    root: AbsolutePath = Field(description="Absolute directory that stands for the node's '/'.")
    kubelet_restart: Command | None = Field(
        default=None, alias="kubeletRestart",
        description="The command that restarts the node's kubelet, as the spec's access.local.kubeletRestart; "
                    "unset: none.")


class InventoryNode(_Strict):
    """One node of the cluster: its name, role, address and how careconcile reaches its files."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="The node's name.")
    role: Literal["control-plane", "worker"] = Field(description="'control-plane' or 'worker'.")
    address: str | None = Field(default=None, min_length=1, max_length=253, pattern=HOST,
                                description="The node's host name or IP address.")
    ssh: InventorySSH | None = Field(default=None, description="SSH login; user root, port 22 if unset.")
    local: InventoryLocal | None = Field(default=None, description="Local files (the sandbox's node directories).")
    access: Literal["local", "ssh"] | None = Field(
        default=None, description="The transport careconcile uses: 'local' when local is set, else 'ssh'.")

    @model_validator(mode="after")
    def _reachable(self) -> "InventoryNode":
        access = self.transport
        if access == "local" and self.local is None:
            raise ValueError("access local needs local.root")
        if access == "ssh" and self.address is None:
            raise ValueError("access ssh needs an address")
        return self

    @property
    def transport(self) -> str:
        return self.access or ("local" if self.local is not None else "ssh")


class NodeInventory(_Strict):
    """The nodes of a registered cluster, as the Secret ``<name>-careconcile-nodes``
    holds them under ``nodes.yaml``. Versioned by apiVersion and kind like a spec."""

    api_version: Literal["careconcile.dev/v1alpha1"] = Field(alias="apiVersion", description="The format's version.")
    kind: Literal["NodeInventory"] = Field(description="Always NodeInventory.")
    cluster: str = Field(pattern=DNS_LABEL, max_length=63, description="The cluster's name.")
    nodes: list[InventoryNode] = Field(min_length=1, description="The nodes; names are unique.")

    @model_validator(mode="after")
    def _unique(self) -> "NodeInventory":
        names = [node.name for node in self.nodes]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"node names must be unique; repeated: {', '.join(repeated)}")
        if not any(node.role == "control-plane" for node in self.nodes):
            raise ValueError("lists no control-plane node; one holds the CA of record")
        return self


def inventory(cluster: str, nodes: list[InventoryNode]) -> NodeInventory:
    """The inventory of ``nodes``; each names its transport (``access``) explicitly."""
    nodes = [node.model_copy(update={"access": node.transport}) for node in nodes]
    try:
        return NodeInventory(api_version=API_VERSION, kind=INVENTORY_KIND, cluster=cluster, nodes=nodes)
    except ValidationError as exc:
        raise AdminClusterError(f"cluster {cluster}: invalid node inventory: {_first_error(exc)}") from None


def dump_inventory(value: NodeInventory) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # the models' field order: apiVersion, kind, ...; name first
    yaml.width = 4096  # a host key stays on one line
    out = io.StringIO()
    yaml.dump(value.model_dump(mode="json", by_alias=True, exclude_none=True), out)
    return out.getvalue()


def parse_inventory(text: str, *, source: str) -> NodeInventory:
    try:
        document = yamldoc.load(text, yamldoc.INVENTORY).data
    except yamldoc.DocumentError as exc:
        raise AdminClusterError(f"{source}: not YAML ({exc})") from None
    if isinstance(document, dict) and document.get("kind") == INVENTORY_KIND \
            and document.get("apiVersion") != API_VERSION:
        raise AdminClusterError(f"{source}: inventory apiVersion {document.get('apiVersion')!r}; this careconcile "
                                f"reads {API_VERSION}")
    try:
        return NodeInventory.model_validate(document, by_name=False)
    except ValidationError as exc:
        raise AdminClusterError(f"{source}: not a node inventory: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def parse_node_option(value: str) -> InventoryNode:
    """``NAME=ROLE[,ADDRESS][,user=U][,port=P][,root=DIR][,access=local|ssh][,host-key=LINE]``,
    as ``careconcile register --node`` takes it. ``root`` is the directory standing for the
    node's '/' for the transport used: local files (the default with root), or over SSH
    with ``access=ssh``."""
    head, _, rest = value.partition(",")
    name, equals, role = head.partition("=")
    if not equals:
        raise ValueError(f"{value!r}: expected NAME=ROLE,ADDRESS[,user=U][,port=P]")
    address = None
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, equals, option = item.partition("=")
        if not equals:
            if address is not None:
                raise ValueError(f"{value!r}: two addresses ({address}, {item})")
            address = item
        elif key in ("user", "port", "root", "access", "host-key"):
            options[key] = option
        else:
            raise ValueError(f"{value!r}: unknown option {key!r} (user, port, root, access, host-key)")
    ssh = None
    over_ssh = options.get("access") == "ssh"
    if over_ssh or {"user", "port", "host-key"} & set(options):
        try:
            port = int(options.get("port", "22"))
        except ValueError:
            raise ValueError(f"{value!r}: port {options['port']!r} is not a number") from None
        ssh = {"user": options.get("user", "root"), "port": port, "hostKey": options.get("host-key")}
        if over_ssh and "root" in options:
            ssh["root"] = options["root"]
    local = {"root": options["root"]} if "root" in options and not over_ssh else None
    try:
        return InventoryNode.model_validate({
            "name": name, "role": role, "address": address, "ssh": ssh, "local": local,
            "access": options.get("access"),
        }, by_name=False)
    except ValidationError as exc:
        raise ValueError(f"{value!r}: {_first_error(exc)}") from None


def inventory_node_of(node: NodeSpec) -> InventoryNode:
    """A spec's node as the inventory records it."""
    ssh = getattr(node.access, "ssh", None)
    # The restart command is recorded only when the spec sets it, so an unset one keeps
    # following careconcile's default.
    if ssh is not None:
        return InventoryNode(name=node.name, role=node.role, address=ssh.host, access="ssh",
                             ssh=InventorySSH(user=ssh.user, port=ssh.port, host_key=getattr(ssh, "host_key", None),
                                              root=getattr(ssh, "root", "/"), kubelet_restart=_set_restart(ssh)))
    if node.access.local is not None:
        return InventoryNode(name=node.name, role=node.role, access="local",
                             local=InventoryLocal(root=node.access.local.root,
                                                  kubelet_restart=_set_restart(node.access.local)))
    raise AdminClusterError(f"node {node.name}: no access transport careconcile can record")


def _set_restart(access: Any) -> tuple[str, ...] | None:
    return tuple(access.kubelet_restart) if "kubelet_restart" in access.model_fields_set else None


def node_spec_of(entry: InventoryNode, *, cluster: str, ssh_key_file: str | None = None) -> NodeSpec:
    """An inventory entry as a spec's node. An SSH node needs the private key as a file
    (``ssh_key_file``, the Secret ``<name>-ssh-key`` written out by the caller) and a host key."""
    if entry.transport == "local":
        restart = entry.local.kubelet_restart
        access = NodeAccess(local=LocalAccess(root=entry.local.root) if restart is None
                            else LocalAccess(root=entry.local.root, kubelet_restart=restart))
    else:
        ssh = entry.ssh or InventorySSH()
        if "ssh" not in NodeAccess.model_fields:
            raise AdminClusterError(f"cluster {cluster}: node {entry.name} is reached over SSH, and this careconcile "
                                    "has no SSH transport")
        if ssh_key_file is None or ssh.host_key is None:
            missing = "the private key (Secret <name>-ssh-key, as a file)" if ssh_key_file is None \
                else "its host key (inventory ssh.hostKey)"
            raise AdminClusterError(f"cluster {cluster}: node {entry.name} is reached over SSH and needs {missing}")
        try:
            login = {"host": entry.address, "port": ssh.port, "user": ssh.user, "keyFile": ssh_key_file,
                     "hostKey": ssh.host_key, "root": ssh.root}
            if ssh.kubelet_restart is not None:
                login["kubeletRestart"] = list(ssh.kubelet_restart)
            access = NodeAccess.model_validate({"ssh": login}, by_name=False)
        except ValidationError as exc:
            raise AdminClusterError(f"cluster {cluster}: node {entry.name}: {_first_error(exc)}") from None
    return NodeSpec(name=entry.name, role=entry.role, access=access)


# --- Cluster API's Secrets -----------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ca_secret_data(cert_pem: bytes, key_pem: bytes) -> dict[str, str]:
    return {CA_CERT_KEY: _b64(cert_pem), CA_KEY_KEY: _b64(key_pem)}


def secret_body(names: ManagementNames, name: str, data: dict[str, str], *,
                type_: str = CAPI_SECRET_TYPE) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": type_,
            "metadata": {"name": name, "namespace": names.namespace, "labels": dict(names.labels)}, "data": data}


def capi_kubeconfig(cluster: str, server: str, ca_pem: bytes, *, cert_pem: bytes | None = None,
                    key_pem: bytes | None = None, token: str | None = None, tls_server_name: str | None = None,
                    proxy_url: str | None = None) -> dict[str, Any]:
    """An admin kubeconfig as Cluster API writes ``<name>-kubeconfig``: one cluster named
    after the cluster, one user ``<name>-admin``, one context, every certificate embedded;
    the cluster keeps the tls-server-name and proxy-url it was reached with."""
    user: dict[str, str] = {}
    if cert_pem is not None and key_pem is not None:
        user = {"client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)}
    elif token:
        user = {"token": token}
    user_name, context = f"{cluster}-admin", f"{cluster}-admin@{cluster}"
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": cluster, "cluster": {
            "server": server, "certificate-authority-data": _b64(ca_pem),
            **({"tls-server-name": tls_server_name} if tls_server_name else {}),
            **({"proxy-url": proxy_url} if proxy_url else {})}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user_name}}],
        "current-context": context,
    }
