"""The ready-to-use spec that `sandbox up` writes for its cluster."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

from ruamel.yaml import YAML

from reconciler.core.spec import API_VERSION, KIND, SpecDocument

if TYPE_CHECKING:
    from reconciler.sandbox._lifecycle import NodeInfo, SandboxInfo

HEADER = """\
# careconcile spec for the sandbox cluster {name!r}, written by `careconcile sandbox up`.
# Raising spec.clusters[0].authorities.clusterCA.rotation by one requests a rotation of the cluster CA;
# etcdCA and frontProxyCA likewise (their rotations restart etcd and the apiservers).
"""

ADMIN_HEADER = """\
# Admin mode: the cluster's CA, kubeconfig, rotation state and lock live in the sandbox {name!r},
# namespace {namespace!r} (see docs/admin-mode.md).
"""


def _access(info: "SandboxInfo", node: "NodeInfo") -> dict:
    if info.ssh is None:
        return {"local": {"root": node.root}}
    ssh = info.ssh
    # The key is given relative to the spec's directory (the sandbox's), as a spec kept
    # beside its keys would give it.
    key_file = os.path.relpath(ssh["key_file"], os.path.dirname(info.spec))
    # No kubelet runs on a sandbox node (kwok stands in for them all, and is restarted through
    # its manifest): without this, careconcile would run `systemctl restart kubelet` on this machine.
    return {"ssh": {"host": ssh["host"], "port": ssh["port"], "user": ssh["user"], "keyFile": key_file,
                    "hostKey": ssh["host_key"], "root": node.root, "kubeletRestart": []}}


def _reach(info: "SandboxInfo") -> dict:
    """How careconcile reaches the API: the sandbox's kubeconfig, or with `up --admin` the
    management sandbox, whose Secret <name>-kubeconfig holds the kubeconfig (admin mode)."""
    admin = getattr(info, "admin", None)
    if admin is None:
        return {"kubeconfig": info.kubeconfig, "context": f"kubernetes-admin@{info.name}"}
    return {"management": {"kubeconfig": admin["kubeconfig"], "context": admin["context"],
                           "namespace": admin["namespace"]}}


def document(info: "SandboxInfo") -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": f"sandbox-{info.name}"},
        "spec": {
            "clusters": [{
                "name": info.name,
                **_reach(info),
                "nodes": [{"name": node.name, "role": node.role, "access": _access(info, node)} for node in info.nodes],
                # Every authority a kubeadm cluster has; raise one's counter to rotate it.
                "authorities": {name: {"rotation": 0} for name in ("clusterCA", "etcdCA", "frontProxyCA")},
            }],
        },
    }


def render(info: "SandboxInfo") -> str:
    body = document(info)
    SpecDocument.model_validate(body)  # never write a spec our own model would reject
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # keep long node paths on one line
    out = io.StringIO()
    yaml.dump(body, out)
    header = HEADER.format(name=info.name)
    if getattr(info, "admin", None) is not None:
        header += ADMIN_HEADER.format(**info.admin)
    return header + out.getvalue()
