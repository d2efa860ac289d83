"""A sandbox pair for admin mode: `sandbox up --name user1 --admin admin` starts user1 and
registers it in the running sandbox `admin`, its management cluster."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.core import kubeadm
from reconciler.errors import CareconcileError, SandboxError, SandboxNotFoundError
from reconciler.sandbox._paths import SandboxPaths, node_path

if TYPE_CHECKING:
    from reconciler.sandbox._lifecycle import SandboxInfo
    from reconciler.shell.admin import Written


def management_of(admin: str, name: str) -> dict[str, Any]:
    """Where ``name`` is registered in the sandbox ``admin``, which must be up: its
    kubeconfig, context and the namespace (``cluster-<name>``)."""
    from reconciler.sandbox._lifecycle import SandboxInfo, _supervisor_alive

    if admin == name:
        raise SandboxError(f"sandbox {name!r} cannot be its own management cluster (--admin)")
    paths = SandboxPaths.named(admin)
    if not paths.record.is_file():
        raise SandboxNotFoundError(f"no sandbox named {admin!r} to register {name!r} in (--admin)",
                                   hint=f"start it first: careconcile sandbox up --name {admin}")
    info = SandboxInfo.load(paths)
    if info.admin is not None:
        raise SandboxError(f"sandbox {admin!r} is itself managed by {info.admin['name']!r}; a management cluster "
                           "of its own is what --admin names")
    if not _supervisor_alive(paths):
        raise SandboxError(f"sandbox {admin!r} is not running; {name!r} cannot be registered in it",
                           hint=f"`careconcile sandbox status --name {admin}` says why")
    from reconciler.shell.admin import default_namespace

    return {"name": admin, "kubeconfig": info.kubeconfig, "context": f"kubernetes-admin@{admin}",
            "namespace": default_namespace(name)}


def register(info: "SandboxInfo", paths: SandboxPaths) -> "list[Written]":
    """Record the started sandbox in its management sandbox, as `careconcile register` does:
    its CA (from the first control-plane node), its kubeconfig, its nodes as the spec reaches
    them and, for a sandbox served over SSH, the SSH key."""
    from reconciler.core.admin import inventory_node_of
    from reconciler.core.spec import SpecDocument
    from reconciler.sandbox import _specfile
    from reconciler.shell import admin as admin_mode
    from reconciler.shell.kube import KubeconfigClient, load_kubeconfig

    management = info.admin
    root = Path(info.nodes[0].root)
    try:
        ca = admin_mode.read_ca(node_path(root, kubeadm.CLUSTER_CA_CERT), node_path(root, kubeadm.CLUSTER_CA_KEY))
        cluster = SpecDocument.model_validate(_specfile.document(info)).spec.clusters[0]
        registration = admin_mode.Registration(
            cluster=info.name, namespace=management["namespace"], ca=ca,
            kubeconfig=admin_mode.capi_kubeconfig_from(
                info.name, load_kubeconfig(paths.kubeconfig, f"kubernetes-admin@{info.name}"), ca),
            nodes=[inventory_node_of(node) for node in cluster.nodes],
            ssh_key_pem=Path(info.ssh["key_file"]).read_bytes() if info.ssh else None)
        with KubeconfigClient(Path(management["kubeconfig"]), management["context"]) as client:
            return admin_mode.register(client, registration)
    except CareconcileError as exc:
        raise SandboxError(f"sandbox {info.name!r}: registering it in sandbox {management['name']!r} failed: "
                           f"{exc.message}", hint=exc.hint) from exc
