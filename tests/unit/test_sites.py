"""Typed sites: a plan names what each action writes as data, the executor picks its
writer by the site's kind, and nothing that carries out a plan names an authority."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from reconciler.core.authorities import AUTHORITIES, CLUSTER_CA
from reconciler.core.plan import ACTION_PARAMS, ACTION_SITES, Action, ClusterPlan
from reconciler.core.sites import ApiField, LocalKubeconfig, ManagementSecret, NodeFile, Workload
from tests.unit.test_plan import rotation_plan

ROOT = Path(__file__).resolve().parents[2]
# What carries out a plan: the run loop and its handlers.
EXECUTION = ("executor.py", "custody.py", "writers.py", "components.py", "verification.py", "restarts.py")


def _dumped(action: Action) -> dict:
    return json.loads(action.model_dump_json())


def test_labels_are_the_ids_plans_always_printed():
    assert NodeFile(node="cp1", path="/etc/kubernetes/pki/ca.crt", form="pem").label == "cp1:/etc/kubernetes/pki/ca.crt"
    assert NodeFile(node="cp1", path="/etc/kubernetes/admin.conf", form="kubeconfig",
                    user="a").label == "cp1:/etc/kubernetes/admin.conf#a"
    assert LocalKubeconfig(path="/k/c.conf").label == "local:/k/c.conf"
    assert ApiField(resource="validatingwebhookconfiguration", name="hooks", field="/webhooks/w",
                    form="ca-bundle").label == "validatingwebhookconfiguration/hooks/webhooks/w"
    assert ApiField(resource="apiservice", name="v1.x", field="", form="ca-bundle").label == "apiservice/v1.x"
    assert ApiField(resource="configmap", namespace="kube-public", name="cluster-info", field="kubeconfig",
                    form="kubeconfig").label == "configmap/kube-public/cluster-info"
    assert ManagementSecret(namespace="ns", name="c1-kubeconfig", holds="kubeconfig").label == "secret/ns/c1-kubeconfig"
    assert Workload(namespace="app", workload="Deployment", name="web").label == "deployment/app/web"


def test_api_paths_come_from_the_site_kind_not_from_the_plan():
    assert ApiField(resource="configmap", namespace="kube-public", name="cluster-info", field="kubeconfig",
                    form="kubeconfig").object_path == "/api/v1/namespaces/kube-public/configmaps/cluster-info"
    assert ApiField(resource="apiservice", name="v1.x", field="", form="ca-bundle").object_path == \
        "/apis/apiregistration.k8s.io/v1/apiservices/v1.x"
    with pytest.raises(ValidationError):  # a resource careconcile does not write
        ApiField(resource="secret", namespace="kube-system", name="x", field="tls.key", form="pem")


def test_every_action_of_a_rotation_round_trips_through_its_json():
    for action in rotation_plan().actions:
        data = _dumped(action)
        assert data["target"] == action.site.label
        assert Action.model_validate(data) == action


def test_an_action_on_a_site_of_another_kind_is_refused():
    bundle = next(a for a in rotation_plan().actions if a.kind == "update-bundle" and a.site.kind == "node-file")
    data = _dumped(bundle)
    data.update(kind="restart", id=data["id"].replace("update-bundle", "restart"), params={"component": "x"})
    with pytest.raises(ValidationError, match="cannot act on a node-file site"):
        Action.model_validate(data)


def test_params_of_another_kind_are_refused():
    reissue = next(a for a in rotation_plan().actions if a.kind == "reissue")
    data = _dumped(reissue)
    data["params"] = {"component": "kube-apiserver"}
    with pytest.raises(ValidationError):
        Action.model_validate(data)
    data["params"] = None
    with pytest.raises(ValidationError, match="needs ReissueParams"):
        Action.model_validate(data)


def test_a_target_or_id_that_is_not_the_site_is_refused():
    bundle = next(a for a in rotation_plan().actions if a.kind == "update-bundle" and a.site.kind == "node-file")
    data = _dumped(bundle)
    data["site"]["path"] = "/root/.ssh/authorized_keys"
    with pytest.raises(ValidationError, match="is not its site"):
        Action.model_validate(data)  # the target still shows the reviewed path
    data["target"] = bundle.target.replace(bundle.site.path, data["site"]["path"])
    with pytest.raises(ValidationError, match="does not name"):
        Action.model_validate(data)  # the id still shows it


def test_every_action_kind_has_its_sites_and_params():
    kinds = set(Action.model_fields["kind"].annotation.__args__)
    assert set(ACTION_SITES) == kinds and set(ACTION_PARAMS) <= kinds


def test_the_kinds_of_site_in_a_plan_are_what_observation_found():
    result: ClusterPlan = rotation_plan()
    kinds = {(a.kind, a.site.kind) for a in result.actions}
    assert ("update-bundle", "api-field") in kinds and ("reissue", "node-file") in kinds
    assert {a.site.form for a in result.actions if a.site.kind == "node-file"} == {"pem", "pair", "combined",
                                                                                   "kubeconfig"}


# What names one component's static-pod manifest, or one of kubeadm's identities: readers of
# a fixed manifest (observe's, for its own endpoints) and the identities in core/kubeadm.py.
# The layouts carry them as data (a component's name, ``admin_identity``).
KUBEADM_NAMES = ("etcd_server", "apiserver_server", "ADMIN", "CLUSTER_ADMINS_GROUP", "SYSTEM_MASTERS_GROUP")


def _kubeadm_constants() -> set[str]:
    """Every component's name (each names its manifest, /etc/kubernetes/manifests/NAME.yaml)
    and every user and group kubeadm gives a client."""
    from reconciler.core import kubeadm

    names = {component.name for layout in AUTHORITIES.values()
             for component in (*layout.components, *layout.node_services)}
    return names | {kubeadm.ADMIN.user, *kubeadm.ADMIN.groups, kubeadm.CLUSTER_ADMINS_GROUP,
                    kubeadm.SYSTEM_MASTERS_GROUP, "kube-apiserver", "etcd"}


@pytest.mark.parametrize("module", EXECUTION)
def test_nothing_that_carries_out_a_plan_names_an_authority(module):
    """Adding an authority adds layout values and site kinds, not branches: the modules
    that carry out a plan name no authority, no layout, no kubeadm path, no component's
    manifest and no kubeadm identity, and tell no site by the shape of its id."""
    tree = ast.parse((ROOT / "reconciler/shell" / module).read_text())
    authority_names = set(AUTHORITIES) | {"clusterCA", "etcdCA", "frontProxyCA"}
    kubeadm_constants = _kubeadm_constants()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert node.value not in authority_names, f"{module}:{node.lineno} names {node.value}"
            assert "/etc/kubernetes" not in node.value and not node.value.endswith((".crt", ".key", ".conf")), \
                f"{module}:{node.lineno} names a file: {node.value!r}"
            assert node.value not in kubeadm_constants, f"{module}:{node.lineno} names {node.value!r} (kubeadm's)"
        if isinstance(node, ast.Name):
            assert node.id not in ("CLUSTER_CA", "AUTHORITIES", *KUBEADM_NAMES), f"{module}:{node.lineno} names {node.id}"
        if isinstance(node, ast.Attribute):
            assert node.attr not in KUBEADM_NAMES, f"{module}:{node.lineno} names {ast.unparse(node)}"
        if isinstance(node, ast.alias):
            assert node.name not in ("CLUSTER_CA", "AUTHORITIES", "kubeadm.CLUSTER_CA_CERT", *KUBEADM_NAMES), \
                f"{module} imports {node.name}"
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("startswith", "endswith", "split",
                                                                               "partition"):
            subject = ast.unparse(node.func.value)
            assert not any(word in subject for word in ("target", "path", ".id")), \
                f"{module}:{node.lineno} tells a site from its id: {ast.unparse(node)}"


def test_the_cluster_ca_layout_is_the_only_place_its_files_are_named():
    assert CLUSTER_CA.record_cert.endswith("/ca.crt") and any(c.signs for c in CLUSTER_CA.components)


@pytest.mark.parametrize("kind, item", [
    ("validatingwebhookconfiguration", {"webhooks": [{"name": "a.example", "clientConfig": {"caBundle": "QQ=="}},
                                                     {"name": "b.example", "clientConfig": {"caBundle": "Qg=="}}]}),
    ("mutatingwebhookconfiguration", {"webhooks": [{"name": "m.example", "clientConfig": {"caBundle": "QQ=="}}]}),
    ("apiservice", {"spec": {"caBundle": "QQ=="}}),
    ("customresourcedefinition", {"spec": {"conversion": {"webhook": {"clientConfig": {"caBundle": "QQ=="}}}}}),
])
def test_a_ca_bundle_field_is_written_where_observation_reads_it(kind, item):
    from reconciler.shell.formats import ca_bundle_fields, set_ca_bundle

    for field, _ in ca_bundle_fields(kind, item):
        set_ca_bundle(kind, item, field, f"new{field}")
    assert [value for _, value in ca_bundle_fields(kind, item)] == [f"new{field}" for field, _ in
                                                                   ca_bundle_fields(kind, item)]
    # the field names the site: its label is what plans printed before sites were typed
    fields = [field for field, _ in ca_bundle_fields(kind, item)]
    labels = [ApiField(resource=kind, name="o", field=field, form="ca-bundle").label for field in fields]
    assert labels[0].startswith(f"{kind}/o") and len(set(labels)) == len(labels)


def test_a_consistently_edited_action_is_not_the_one_planned_now():
    """Target, id and site edited together pass the model's own checks; apply compares each
    action with the one it plans again from the spec and the live cluster."""
    from reconciler.shell.session import _first_difference

    actions = rotation_plan().actions
    assert _first_difference(actions, actions) is None
    bundle = next(a for a in actions if a.kind == "update-bundle" and a.site.kind == "node-file")
    hostile_path = "/root/.ssh/authorized_keys"
    data = _dumped(bundle)
    data["site"]["path"] = hostile_path
    data["target"] = bundle.target.replace(bundle.site.path, hostile_path)
    data["id"] = bundle.id.replace(bundle.site.path, hostile_path)
    edited = Action.model_validate(data)
    tampered = [edited if a is bundle else a for a in actions]
    assert _first_difference(tampered, actions) == f"{edited.id} differs from the action planned now ({bundle.id})"
    assert _first_difference(actions[:-1], actions).endswith("is missing from it")
    assert _first_difference([*actions, edited], actions) == f"{edited.id} is not planned now"
    # a reason is words for people: it may differ
    reworded = [a.model_copy(update={"reason": "changed"}) for a in actions]
    assert _first_difference(reworded, actions) is None


def test_a_restart_of_one_component_cannot_name_another():
    restart = next(a for a in rotation_plan().actions if a.kind == "restart")
    data = _dumped(restart)
    data["params"]["component"] = "kube-scheduler" if restart.site.name != "kube-scheduler" else "kwok"
    with pytest.raises(ValidationError, match="restarts .* at the site of"):
        Action.model_validate(data)
    check = next(a for a in rotation_plan().actions if a.kind == "verify")
    data = _dumped(check)
    data["site"]["phase"] = 5 if check.phase != 5 else 4
    data["target"] = f"phase-{data['site']['phase']}"
    data["id"] = check.id.replace(check.target, data["target"])
    with pytest.raises(ValidationError, match="checks phase"):
        Action.model_validate(data)


# --- names and paths validated where a plan file enters ------------------------------------

def _saved_rotation(tmp_path: Path) -> dict:
    from reconciler.core import render
    from tests.unit.test_render import document

    return json.loads(render.as_json(document(rotation_plan())))


def _site(document: dict, kind: str) -> dict:
    return next(a["site"] for c in document["clusters"] for a in c["actions"] if a["site"]["kind"] == kind)


@pytest.mark.parametrize("edit, where", [
    (lambda d: _site(d, "api-field").update(namespace="../../../api/v1/namespaces/kube-system/secrets"), "namespace"),
    (lambda d: _site(d, "api-field").update(name="cluster-info/../../secrets/careconcile-state"), "name"),
    (lambda d: _site(d, "node-file").update(node="../cp1"), "node"),
    (lambda d: _site(d, "node-file").update(path="/etc/kubernetes/../../root/.ssh/authorized_keys"), "path"),
    (lambda d: _site(d, "node-file").update(path="etc/kubernetes/pki/ca.crt"), "path"),
    (lambda d: _site(d, "node-signer").update(node="cp1/../../x"), "node"),
    (lambda d: _site(d, "component").update(name="../../../tmp/x"), "name"),
    (lambda d: d["clusters"][0].update(cluster="../../tmp/x"), "cluster"),
    (lambda d: d["clusters"][0].update(cluster="Prod EU"), "cluster"),
], ids=["api-namespace", "api-name", "node", "dotdot-path", "relative-path", "signer-node", "component",
        "cluster-path", "cluster-not-dns"])
def test_a_plan_file_with_a_name_that_is_not_a_dns_name_or_a_path_that_leaves_is_refused(tmp_path, edit, where):
    """Names go into API paths, file names and workspace directories: a plan file carrying
    "../x" in one is refused when it is read, naming the field, never quoting the value."""
    from reconciler.errors import PlanFileError
    from reconciler.shell.session import load_plan

    document = _saved_rotation(tmp_path)
    edit(document)
    saved = tmp_path / "edited.plan.json"
    saved.write_text(json.dumps(document))
    with pytest.raises(PlanFileError) as caught:
        load_plan(saved)
    message = str(caught.value)
    assert str(saved) in message and where in message, message
    assert "../" not in message.replace(str(saved), "") and "Prod EU" not in message, message  # not quoted


def test_sites_made_anywhere_take_only_dns_names():
    for make in (lambda: ManagementSecret(namespace="cluster_user1", name="user1-ca", holds="authority"),
                 lambda: ManagementSecret(namespace="ns", name="../user1-ca", holds="authority"),
                 lambda: Workload(namespace="app", workload="Deployment", name="web/../x"),
                 lambda: Workload(namespace="App", workload="Deployment", name="web"),
                 lambda: Workload(namespace="app", workload="CronJob", name="web"),
                 lambda: ApiField(resource="configmap", namespace="kube-system", name="a" * 254, field="k", form="pem"),
                 lambda: NodeFile(node="cp1", path="/a/../b", form="pem")):
        with pytest.raises(ValidationError):
            make()
    # what kubeadm and the API have stays valid: subdomains with dots, caBundle fields
    assert ApiField(resource="apiservice", name="v1beta1.wardle.example.com", field="", form="ca-bundle")
    assert NodeFile(node="node-1.example.com", path="/etc/kubernetes/pki/ca.crt", form="pem")
