"""The ready-to-use spec that `sandbox up` writes for its cluster."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from ruamel.yaml import YAML

from reconciler.core.spec import API_VERSION, KIND, SpecDocument

if TYPE_CHECKING:
    from reconciler.sandbox._lifecycle import SandboxInfo

HEADER = """\
# careconcile spec for the sandbox cluster {name!r}, written by `careconcile sandbox up`.
# Raising spec.clusters[0].authorities.clusterCA.rotation by one requests a rotation of the cluster CA.
"""


def document(info: "SandboxInfo") -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": f"sandbox-{info.name}"},
        "spec": {
            "clusters": [{
                "name": info.name,
                "kubeconfig": info.kubeconfig,
                "context": f"kubernetes-admin@{info.name}",
                "nodes": [
                    {"name": node.name, "role": node.role, "access": {"local": {"root": node.root}}}
                    for node in info.nodes
                ],
                "authorities": {"clusterCA": {"rotation": 0}},
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
    return HEADER.format(name=info.name) + out.getvalue()
