import pytest
from pydantic import ValidationError

from reconciler.core.spec import SpecDocument
from reconciler.sandbox._lifecycle import NodeInfo, SandboxInfo
from reconciler.sandbox import _specfile
from ruamel.yaml import YAML


def sandbox_info(workers=2):
    nodes = [NodeInfo("s-control-plane-1", "control-plane", "/x/nodes/s-control-plane-1")]
    nodes += [NodeInfo(f"s-worker-{i}", "worker", f"/x/nodes/s-worker-{i}") for i in range(1, workers + 1)]
    return SandboxInfo(name="s", directory="/x", kubeconfig="/x/kubeconfig", spec="/x/spec.yaml",
                       nodes_dir="/x/nodes", apiservers=["https://127.0.0.1:1"], kubernetes_version="v1",
                       control_planes=1, workers=workers, nodes=nodes)


def test_the_sandbox_spec_validates_and_states_the_rotation_counter():
    text = _specfile.render(sandbox_info())
    assert text.startswith("# careconcile spec")
    document = SpecDocument.model_validate(YAML(typ="safe").load(text))
    cluster = document.spec.clusters[0]
    assert cluster.authorities.cluster_ca.rotation == 0
    assert "rotation: 0" in text
    assert [(n.name, n.role, n.access.local.root) for n in cluster.nodes][1] == \
        ("s-worker-1", "worker", "/x/nodes/s-worker-1")


def _valid():
    return _specfile.document(sandbox_info(workers=1))


def test_unknown_fields_are_errors():
    body = _valid()
    body["spec"]["clusters"][0]["kubeconfg"] = "typo"
    with pytest.raises(ValidationError, match="kubeconfg"):
        SpecDocument.model_validate(body)


def test_relative_local_root_and_missing_access_are_both_reported():
    body = _valid()
    nodes = body["spec"]["clusters"][0]["nodes"]
    nodes[0]["access"]["local"]["root"] = "relative/dir"
    nodes[1] = {"name": "x", "role": "worker", "access": {}}
    with pytest.raises(ValidationError) as error:
        SpecDocument.model_validate(body)
    text = str(error.value)
    assert "must be an absolute path" in text
    assert "exactly one access transport" in text


def test_duplicate_node_names_are_errors():
    body = _valid()
    nodes = body["spec"]["clusters"][0]["nodes"]
    nodes.append(dict(nodes[1]))
    with pytest.raises(ValidationError, match="node names must be unique; repeated: s-worker-1"):
        SpecDocument.model_validate(body)
