"""Admin (management) cluster mode without a cluster: the spec's `management`, the node
inventory, the observed Secrets in diff and plan, and the client that follows the
kubeconfig Secret."""

from __future__ import annotations

import dataclasses
import json
import ssl
import textwrap
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from reconciler.core import admin
from reconciler.core.diff import diff
from reconciler.core.observed import NEW_CA, ObservedBundle, ObservedLeaf, ObservedRecord
from reconciler.core.plan import Action, ClusterPlan
from reconciler.core.sites import ManagementSecret
from reconciler.core.schemas import schemas
from reconciler.core.spec import ClusterSpec, NodeAccess
from reconciler.errors import AdminClusterError, APIForbiddenError, SpecError
from reconciler.shell import kube, management
from reconciler.shell.kube import KubeTarget
from reconciler.shell.specfile import load_spec
from tests.unit.test_diff import CP, NOW, ca, cert_fp, desired, in_progress, leaf, observation, plan
from tests.unit.spec_helpers import schema_accepts

NAMES = admin.ManagementNames("c1", "cluster-c1")
CA_SECRET = NAMES.secret_id("c1-ca")
KUBECONFIG_SECRET = NAMES.secret_id("c1-kubeconfig")


# --- the spec --------------------------------------------------------------------------------

def spec_file(tmp_path: Path, cluster: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text("apiVersion: careconcile.dev/v1alpha1\nkind: CASpec\nmetadata:\n  name: t\nspec:\n  clusters:\n"
                    + textwrap.indent(cluster, "    "))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as error:
        load_spec(path)
    return [line.split(": ", 1)[1] for line in error.value.problems]


def test_management_replaces_the_kubeconfig_and_defaults_its_namespace(tmp_path):
    path = spec_file(tmp_path, "- name: user1\n  management:\n    kubeconfig: admin.conf\n")
    loaded = load_spec(path)
    cluster = loaded.document.spec.clusters[0]
    assert cluster.kubeconfig is None and cluster.management_namespace == "cluster-user1"
    assert loaded.kubeconfig_path(cluster) is None
    assert loaded.management_kubeconfig_path(cluster) == tmp_path / "admin.conf"  # relative to the spec
    assert schema_accepts(path)


def test_management_with_a_kubeconfig_of_its_own_and_a_namespace(tmp_path):
    path = spec_file(tmp_path, "- name: user1\n  kubeconfig: user1.conf\n  context: admin@user1\n"
                               "  management: {kubeconfig: /a/admin.conf, context: admin@a, namespace: fleet}\n")
    cluster = load_spec(path).document.spec.clusters[0]
    assert (cluster.kubeconfig, cluster.management_namespace) == ("user1.conf", "fleet")
    assert schema_accepts(path)


@pytest.mark.parametrize("body, message", [
    ("- name: user1\n", "kubeconfig: required field is missing (or set inCluster: true, or name a management cluster)"),
    ("- name: user1\n  management: {kubeconfig: a.conf}\n  context: x\n",
     "context names a context of kubeconfig; without kubeconfig careconcile uses the current context of the "
     "Secret user1-kubeconfig"),
    ("- name: user1\n  management: {kubeconfig: a.conf}\n  stateStore: {secret: {}}\n",
     "with management, the state is the Secret user1-careconcile-state in the management namespace; stateStore "
     "may only be `workspace: {}`"),
    ("- name: user1\n  management: {kubeconfig: a.conf, namespace: Not_A_Label}\n",
     "management.namespace: String should match pattern"),
    ("- name: " + "a" * 60 + "\n  management: {kubeconfig: a.conf}\n",
     "is longer than 63 characters; set management.namespace"),
    ("- name: user1\n  management: {namespace: x}\n", "management.kubeconfig: required field is missing"),
])
def test_management_mistakes_are_reported(tmp_path, body, message):
    found = problems(spec_file(tmp_path, body))
    assert len(found) == 1 and message in found[0], found


def test_the_schema_rejects_no_way_in_and_two_ways_in(tmp_path):
    assert not schema_accepts(spec_file(tmp_path, "- name: user1\n"))
    assert not schema_accepts(spec_file(tmp_path, "- name: u\n  inCluster: true\n  kubeconfig: k\n"
                                                  "  management: {kubeconfig: a}\n"))
    assert schema_accepts(spec_file(tmp_path, "- name: u\n  inCluster: true\n  management: {kubeconfig: a}\n"))


def test_a_workspace_state_store_stays_allowed_with_management():
    cluster = ClusterSpec.model_validate({"name": "u", "management": {"kubeconfig": "a"},
                                          "stateStore": {"workspace": {}}}, by_name=False)
    assert cluster.state_store.workspace is not None


# --- the inventory ---------------------------------------------------------------------------

def test_node_options_parse_into_inventory_entries():
    node = admin.parse_node_option("cp-1=control-plane,10.0.0.5,user=ubuntu,port=2222")
    assert (node.name, node.role, node.address, node.transport) == ("cp-1", "control-plane", "10.0.0.5", "ssh")
    assert (node.ssh.user, node.ssh.port, node.ssh.root) == ("ubuntu", 2222, "/")
    local = admin.parse_node_option("w-1=worker,root=/srv/nodes/w-1")
    assert (local.transport, local.local.root, local.ssh) == ("local", "/srv/nodes/w-1", None)
    over_ssh = admin.parse_node_option("w-2=worker,127.0.0.1,access=ssh,root=/srv/w-2")
    assert (over_ssh.transport, over_ssh.ssh.root, over_ssh.local) == ("ssh", "/srv/w-2", None)


@pytest.mark.parametrize("value, message", [
    ("cp-1", "expected NAME=ROLE"), ("cp-1=boss,1.2.3.4", "role"), ("w=worker", "access ssh needs an address"),
    ("w=worker,a,b", "two addresses"), ("w=worker,a,port=x", "is not a number"), ("w=worker,a,color=red", "unknown"),
    ("w=worker,root=relative", "absolute"),
])
def test_bad_node_options_say_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        admin.parse_node_option(value)


def test_the_inventory_is_versioned_yaml_that_reads_back_the_same():
    value = admin.inventory("c1", [admin.parse_node_option("cp=control-plane,root=/n/cp"),
                                   admin.parse_node_option("w=worker,10.0.0.6,user=core")])
    text = admin.dump_inventory(value)
    assert text.startswith("apiVersion: careconcile.dev/v1alpha1\nkind: NodeInventory\ncluster: c1\n")
    assert "access: local" in text and "access: ssh" in text  # the transport is always written out
    assert admin.parse_inventory(text, source="x") == value
    jsonschema.validate(YAML(typ="safe").load(text), schemas()["inventory.schema.json"])
    with pytest.raises(AdminClusterError, match="apiVersion 'careconcile.dev/v2'; this careconcile reads"):
        admin.parse_inventory(text.replace("v1alpha1", "v2"), source="x")
    with pytest.raises(AdminClusterError, match="no control-plane node"):
        admin.inventory("c1", [admin.parse_node_option("w=worker,10.0.0.6")])
    with pytest.raises(AdminClusterError, match="repeated: w"):
        admin.inventory("c1", [admin.parse_node_option("cp=control-plane,root=/a"),
                               admin.parse_node_option("w=worker,root=/b"), admin.parse_node_option("w=worker,root=/c")])


@pytest.mark.parametrize("name", ["../../etc", "cp/1", "Node1", "a_b", "-cp", "cp-", "a..b", "", "a" * 254,
                                  "cp\n1", "cp 1"])
def test_node_names_in_an_inventory_are_dns_names(name):
    """A node's name becomes file names and API paths: an inventory (and --node) takes only
    a DNS subdomain, as a Node's name is."""
    text = json.dumps({"apiVersion": "careconcile.dev/v1alpha1", "kind": "NodeInventory", "cluster": "c1",
                       "nodes": [{"name": name, "role": "control-plane", "local": {"root": "/n"}}]})
    with pytest.raises(AdminClusterError, match="nodes.0.name"):
        admin.parse_inventory(text, source="Secret ns/c1-careconcile-nodes")
    with pytest.raises(ValueError):
        admin.parse_node_option(f"{name}=control-plane,root=/n")


def test_inventory_entries_become_spec_nodes():
    local = admin.node_spec_of(admin.parse_node_option("cp=control-plane,root=/n/cp"), cluster="c1")
    assert local.access.local.root == "/n/cp" and local.role == "control-plane"
    entry = admin.parse_node_option("w=worker,10.0.0.6,user=core,port=2200")
    with pytest.raises(AdminClusterError, match="needs the private key"):
        admin.node_spec_of(entry, cluster="c1")
    if "ssh" not in NodeAccess.model_fields:
        pytest.skip("no SSH transport in this tree")
    with pytest.raises(AdminClusterError, match="needs its host key"):
        admin.node_spec_of(entry, cluster="c1", ssh_key_file="/k/id")
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    with_key = admin.parse_node_option(f"w=worker,10.0.0.6,user=core,port=2200,host-key={host_key}")
    ssh = admin.node_spec_of(with_key, cluster="c1", ssh_key_file="/k/id").access.ssh
    assert (ssh.host, ssh.user, ssh.port, ssh.key_file) == ("10.0.0.6", "core", 2200, "/k/id")
    assert admin.inventory_node_of(admin.node_spec_of(with_key, cluster="c1", ssh_key_file="/k/id")).ssh.host_key \
        == host_key


def test_the_capi_kubeconfig_names_the_cluster_and_its_admin():
    document = admin.capi_kubeconfig("c1", "https://127.0.0.1:6443", b"CA", cert_pem=b"C", key_pem=b"K")
    assert [c["name"] for c in document["clusters"]] == ["c1"]
    assert document["users"][0]["name"] == "c1-admin" and document["current-context"] == "c1-admin@c1"
    assert set(document["users"][0]["user"]) == {"client-certificate-data", "client-key-data"}
    assert set(document["clusters"][0]["cluster"]) == {"server", "certificate-authority-data"}
    # registered from a kubeconfig that reaches the cluster by tls-server-name through a proxy: both kept
    kept = admin.capi_kubeconfig("c1", "https://127.0.0.1:6443", b"CA", token="t", tls_server_name="kubernetes",
                                 proxy_url="http://127.0.0.1:3128")["clusters"][0]["cluster"]
    assert (kept["tls-server-name"], kept["proxy-url"]) == ("kubernetes", "http://127.0.0.1:3128")


def test_register_refuses_to_store_a_proxy_password_in_the_secret():
    from reconciler.shell.admin import capi_kubeconfig_from

    authority = ca("old")
    target = KubeTarget(name="kubeconfig k context c", server="https://127.0.0.1:6443", ca_pem=authority.cert_pem,
                        token="t", proxy_url="http://bob:s3cret@127.0.0.1:3128")
    with pytest.raises(AdminClusterError, match="proxy-url holds a password.*Secret c1-kubeconfig") as error:
        capi_kubeconfig_from("c1", target, authority)
    assert "s3cret" not in str(error.value) + (error.value.hint or "")
    kept = capi_kubeconfig_from("c1", dataclasses.replace(target, proxy_url="http://127.0.0.1:3128"), authority)
    assert kept["clusters"][0]["cluster"]["proxy-url"] == "http://127.0.0.1:3128"


# --- observed Secrets in diff and plan -------------------------------------------------------

def admin_observation(*, secret: str | None = "old", kubeconfig_trust: tuple[str, ...] = ("old",),
                      kubeconfig_leaf: str = "old", **changes):
    """The c1 model of test_diff, in admin mode: the Secret c1-ca holds ``secret`` (None: its
    key matches no certificate), the Secret c1-kubeconfig trusts ``kubeconfig_trust`` and its
    client certificate comes from ``kubeconfig_leaf``."""
    base = observation(**changes)
    record = ObservedRecord(node=CA_SECRET, kind="secret", key_spec="ECDSA-P256",
                            cert=ca(secret).cert if secret else None,
                            secret=ManagementSecret(namespace=NAMES.namespace, name="c1-ca", holds="authority"))
    site = ManagementSecret(namespace=NAMES.namespace, name="c1-kubeconfig", holds="kubeconfig")
    bundle = ObservedBundle(site, tuple(ca(name).cert for name in kubeconfig_trust))
    client = ObservedLeaf(site, leaf(kubeconfig_leaf, "c1-admin").cert, key_matches=True)
    return dataclasses.replace(base, records=base.records + (record,), bundles=base.bundles + (bundle,),
                               leaves=base.leaves + (client,))


def actions_on(result: ClusterPlan, target: str) -> list[Action]:
    return [action for action in result.actions if action.target == target]


def test_an_admin_mode_rotation_moves_the_secrets_in_the_right_phases():
    result = plan(desired(rotation=1), admin_observation())
    assert result.operation == "rotate"
    kubeconfig = [(a.phase, a.kind, a.change.before, a.change.after) for a in actions_on(result, KUBECONFIG_SECRET)]
    assert kubeconfig == [
        (2, "update-bundle", [cert_fp("old")], [cert_fp("old"), NEW_CA]),
        (3, "reissue", [cert_fp("old")], [NEW_CA]),
        (4, "update-bundle", [cert_fp("old"), NEW_CA], [NEW_CA]),
    ]
    record = actions_on(result, CA_SECRET)
    assert [(a.phase, a.kind, a.node, a.change.after) for a in record] == [(3, "switch-signer", None, [NEW_CA])]
    # The management cluster's record is switched first, before the nodes sign with the new CA.
    switches = [a.target for a in result.actions if a.kind == "switch-signer"]
    assert switches == [CA_SECRET, f"{CP}:signer"]
    # It has no signer files: no stage-signer, no remove-signer for it.
    assert {a.target for a in result.actions if a.kind in ("stage-signer", "remove-signer")} == {f"{CP}:signer"}
    # The key never appears in a plan: only fingerprints do.
    assert "PRIVATE KEY" not in result.model_dump_json()


def test_a_steady_admin_mode_cluster_plans_nothing_and_its_secrets_count_for_staleness():
    observed = admin_observation()
    result = plan(desired(), observed)
    assert result.operation == "none" and result.actions == []
    assert f"{CA_SECRET}:record" in result.observed_items
    assert f"{KUBECONFIG_SECRET}#trusts" in result.observed_items and f"{KUBECONFIG_SECRET}#cert" in result.observed_items


def test_resuming_after_the_secret_was_switched_does_not_switch_it_again():
    # Died in phase 3 right after the Secret took the new CA, before the node did.
    observed = admin_observation(secret="new", kubeconfig_trust=("old", "new"), trust=("old", "new"), signer="old",
                                 cm_signing="signer", state=in_progress(2))
    result = plan(desired(rotation=1), observed)
    assert result.operation == "resume"
    assert [a.target for a in result.actions if a.kind == "switch-signer"] == [f"{CP}:signer"]
    assert not [a for a in result.actions if a.phase == 2]


def test_a_rollback_writes_the_old_ca_back_into_the_secret():
    observed = admin_observation(secret="new", kubeconfig_trust=("old", "new"), kubeconfig_leaf="new",
                                 trust=("old", "new"), record="new", signer="new", cm_signing="signer",
                                 leaves_from="new", state=in_progress(3))
    result = plan(desired(rotation=1), observed, rollback=True)
    record = actions_on(result, CA_SECRET)
    assert [(a.phase, a.kind, a.change.before, a.change.after) for a in record] == [
        (3, "switch-signer", [cert_fp("new")], [cert_fp("old")])]
    assert [(a.phase, a.kind) for a in actions_on(result, KUBECONFIG_SECRET)] == [(3, "reissue"), (4, "update-bundle")]


def test_a_secret_that_disagrees_with_the_nodes_blocks():
    findings = diff(desired(rotation=1), admin_observation(secret="foreign"), now=NOW)
    assert [(f.code, f.blocking) for f in findings] == [("records-disagree", True)]
    assert "control-plane nodes and the management cluster hold different CAs of record" in findings[0].message
    assert CA_SECRET in findings[0].message


def test_a_secret_whose_key_matches_no_certificate_blocks():
    findings = diff(desired(), admin_observation(secret=None), now=NOW)
    assert [(f.code, f.blocking) for f in findings] == [("record-missing", True)]
    assert CA_SECRET in findings[0].message and "tls.key" in findings[0].message


def test_a_secret_alone_is_no_record_without_control_plane_nodes():
    observed = dataclasses.replace(admin_observation(), records=admin_observation().records[-1:])
    findings = diff(desired(), observed, now=NOW)
    assert [f.code for f in findings] == ["record-missing"] and "no control-plane nodes" in findings[0].message


# --- the client that follows the kubeconfig Secret ---------------------------------------------

class FakeTransport:
    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.sent = 0

    def request(self, method, url_path, headers, body):
        self.sent += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        status, document = answer
        return status, {}, json.dumps(document).encode()

    def close(self):
        pass


class FakeManagement:
    """Hands out a new target (another client certificate) each time the Secret is read."""

    def __init__(self) -> None:
        self.reads = 0

    def user_target(self) -> KubeTarget:
        self.reads += 1
        return KubeTarget(name=f"Secret cluster-c1/c1-kubeconfig read {self.reads}", server="https://127.0.0.1:6443",
                          ca_pem=b"CA", cert_pem=f"CERT{self.reads}".encode(), key_pem=b"KEY")


@pytest.fixture
def transports(monkeypatch):
    """Each TLS connection the clients open gets the next fake transport."""
    queue: list[FakeTransport] = []
    opened: list[KubeTarget] = []

    def transport(server, context, *, timeout, **reach):
        return queue.pop(0)

    def context(**material):
        opened.append(material["cert_pem"])
        return None

    monkeypatch.setattr(kube._client, "HTTPSTransport", transport)  # where the one client opens connections
    monkeypatch.setattr(kube._client, "tls_context", context)
    return queue, opened


@pytest.mark.parametrize("failure", [
    (401, {"kind": "Status", "reason": "Unauthorized", "code": 401}),
    "tls",
], ids=["401", "tls"])
def test_a_rejected_request_reloads_the_secret_once_and_is_sent_again(transports, failure):
    queue, opened = transports
    if failure == "tls":  # the server's certificate is from a CA the loaded kubeconfig does not trust yet
        failure = ssl.SSLCertVerificationError(1, "certificate verify failed")
        failure.verify_message = "unable to get local issuer certificate"
    first, second = FakeTransport(failure), FakeTransport((200, {"kind": "APIVersions"}))
    queue += [first, second]
    source = FakeManagement()
    client = management.SecretKubeconfigClient(source)
    assert client.get("/api") == {"kind": "APIVersions"}
    assert source.reads == 2 and opened == [b"CERT1", b"CERT2"]  # the credentials the Secret holds now
    assert client.target.cert_pem == b"CERT2"


def test_other_failures_are_not_retried_and_a_second_rejection_is_final(transports):
    queue, _ = transports
    queue += [FakeTransport((403, {"kind": "Status", "reason": "Forbidden", "code": 403}))]
    source = FakeManagement()
    with pytest.raises(APIForbiddenError):
        management.SecretKubeconfigClient(source).get("/api")
    assert source.reads == 1
    unauthorized = (401, {"kind": "Status", "reason": "Unauthorized", "code": 401})
    queue += [FakeTransport(unauthorized), FakeTransport(unauthorized)]
    with pytest.raises(Exception, match="401"):
        management.SecretKubeconfigClient(FakeManagement()).get("/api")


def test_reload_refuses_to_follow_the_secret_to_another_server(transports):
    queue, _ = transports
    queue += [FakeTransport()]
    source = FakeManagement()
    client = management.SecretKubeconfigClient(source)
    source.user_target = lambda: KubeTarget(name="moved", server="https://10.0.0.9:6443", ca_pem=b"CA")
    with pytest.raises(Exception, match="not following it to another cluster"):
        client.reload()


# --- the register command's usage ------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["register", "user1", "--admin-kubeconfig", "a"], "missing --kubeconfig, --ca-cert, --node"),
    (["register", "User_1", "--from-spec", "s.yaml"], "is not a DNS label"),
    (["register", "user1", "--namespace", "Not_A_Label", "--from-spec", "s.yaml"], "namespace 'Not_A_Label'"),
    (["register", "user1", "--ca-cert", "c"], "--ca-cert and --ca-key go together"),
    (["register", "user1", "--from-spec", "s.yaml", "--node", "n=worker,root=/n"], "exclude each other"),
])
def test_register_usage_errors_exit_64(argv, message, capsys):
    from reconciler.cli import main

    assert main(argv) == 64
    assert message in capsys.readouterr().err


def test_a_bad_node_option_is_a_usage_error(capsys):
    from reconciler.cli import main

    assert main(["register", "user1", "--node", "n=boss,1.2.3.4"]) == 64
    assert "role" in capsys.readouterr().err


def test_a_missing_ca_secret_is_a_clear_error():
    from reconciler.errors import APINotFoundError

    class Missing:
        target = KubeTarget(name="admin", server="https://127.0.0.1:7443")

        def get(self, path):
            raise APINotFoundError(f"GET {path}: 404 NotFound", status=404)

    access = management.ManagementAccess(Missing(), NAMES)
    with pytest.raises(AdminClusterError) as error:
        access.read_authority("ca")
    assert "Secret cluster-c1/c1-ca is missing in the management cluster https://127.0.0.1:7443, namespace " \
           "cluster-c1" in error.value.message
    assert "careconcile register c1" in error.value.hint


def test_register_refuses_ssh_nodes_without_a_host_key_before_touching_the_admin_cluster():
    import datetime as dt

    from reconciler.core import pki
    from reconciler.errors import AdminClusterError
    from reconciler.shell.admin import Registration, register

    class Untouched:
        def __getattr__(self, name):
            raise AssertionError(f"the admin cluster was used ({name})")

    ca = pki.new_ca("kubernetes", now=dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc),
                    key=pki.KeySpec("ECDSA", 256))
    nodes = [admin.parse_node_option("cp=control-plane,10.0.0.5,host-key=ssh-ed25519 "
                                     "AAAAC3NzaC1lZDI1NTE5AAAAIC+6tSmVWRNXvXgCx1Ybvg31+on0qiUAguY4rYnFsrYn"),
             admin.parse_node_option("w1=worker,10.0.0.6")]
    with pytest.raises(AdminClusterError, match=r"node\(s\) w1 are reached over SSH but have no host key") as error:
        register(Untouched(), Registration(cluster="c1", namespace="cluster-c1", ca=ca, kubeconfig=None, nodes=nodes))
    assert "ssh-keyscan" in (error.value.hint or "")
