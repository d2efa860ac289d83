import datetime as dt

import pytest
from pydantic import ValidationError

from reconciler.core import pki, spec
from reconciler.core.spec import SpecDocument
from reconciler.errors import PKIError
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


# --- authority settings, defaults and their resolution ---------------------------------

def _with(authority=None, defaults=None, cluster_extra=None):
    body = _valid()
    cluster = body["spec"]["clusters"][0]
    if authority is not None:
        cluster["authorities"] = {"clusterCA": authority}
    if defaults is not None:
        body["spec"]["defaults"] = {"authorities": defaults}
    cluster.update(cluster_extra or {})
    return body


@pytest.mark.parametrize(("text", "expected"), [
    ("87600h", dt.timedelta(days=3650)),
    ("3650d", dt.timedelta(days=3650)),
    ("1h", dt.timedelta(hours=1)),
    ("007d", dt.timedelta(days=7)),
])
def test_durations_are_whole_hours_or_days(text, expected):
    assert spec.parse_duration(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("0d", "must be longer than zero"),
    ("0h", "must be longer than zero"),
    ("10y", "whole number of hours or days"),
    ("1.5d", "whole number of hours or days"),
    ("-1d", "whole number of hours or days"),
    ("d", "whole number of hours or days"),
    (365, "whole number of hours or days"),
])
def test_bad_durations_are_rejected(text, message):
    with pytest.raises(ValueError, match=message):
        spec.parse_duration(text)


def test_durations_print_in_the_shortest_spec_form():
    assert spec.format_duration(dt.timedelta(days=3650)) == "3650d"
    assert spec.format_duration(dt.timedelta(hours=36)) == "36h"
    document = SpecDocument.model_validate(_with({"validity": "87600h", "renewBefore": "36h"}))
    dumped = document.model_dump(by_alias=True)["spec"]["clusters"][0]["authorities"]["clusterCA"]
    assert (dumped["validity"], dumped["renewBefore"]) == ("3650d", "36h")


def test_the_allowed_key_sizes_are_exactly_those_pki_generates():
    for algorithm in ("RSA", "ECDSA"):
        for size in (256, 384, 521, 1024, 2048, 3072, 4096, 8192):
            try:
                key_spec = pki.KeySpec(algorithm, size)
            except PKIError:
                assert size not in spec.KEY_SIZES[algorithm]
            else:
                assert spec.KeySettings(algorithm=algorithm, size=size).to_key_spec() == key_spec


@pytest.mark.parametrize(("algorithm", "size", "message"), [
    ("RSA", 1024, "RSA keys have size 2048, 3072 or 4096; got 1024"),
    ("ECDSA", 521, "ECDSA keys have size 256 or 384; got 521"),
    ("ECDSA", 2048, "ECDSA keys have size 256 or 384; got 2048"),
])
def test_key_sizes_are_checked_per_algorithm(algorithm, size, message):
    with pytest.raises(ValidationError, match=message):
        SpecDocument.model_validate(_with({"key": {"algorithm": algorithm, "size": size}}))


def test_fingerprints_must_be_sha256_lowercase_hex():
    good = "sha256:" + "ab" * 32
    assert spec.resolve_authority(*_document_and_cluster(_with({"fingerprint": good}))).fingerprint == good
    for bad in ("sha256:" + "AB" * 32, "sha1:" + "ab" * 20, "sha256:abc"):
        with pytest.raises(ValidationError, match="fingerprint"):
            SpecDocument.model_validate(_with({"fingerprint": bad}))


def _document_and_cluster(body):
    document = SpecDocument.model_validate(body)
    return document, document.spec.clusters[0]


def test_built_in_defaults_are_kubeadms():
    resolved = spec.resolve_authority(*_document_and_cluster(_valid()))
    assert resolved == spec.ResolvedAuthority(
        name="clusterCA", rotation=0, fingerprint=None, key=pki.KeySpec("RSA", 2048),
        validity=pki.CA_VALIDITY, renew_before=dt.timedelta(days=90), leaf_validity=pki.LEAF_VALIDITY,
        common_name="kubernetes", organizations=())


def test_the_cluster_wins_over_spec_defaults_which_win_over_built_ins():
    defaults = {"key": {"algorithm": "ECDSA", "size": 256}, "validity": "1000d", "renewBefore": "100d",
                "subject": {"commonName": "fleet-ca", "organizations": ["platform"]}}
    cluster = {"rotation": 3, "validity": "2000d", "subject": {"commonName": "eu-ca"}}
    resolved = spec.resolve_authority(*_document_and_cluster(_with(cluster, defaults)))
    assert resolved.rotation == 3
    assert resolved.validity == dt.timedelta(days=2000)  # the cluster's
    assert resolved.key == pki.KeySpec("ECDSA", 256)  # the defaults'
    assert resolved.renew_before == dt.timedelta(days=100)  # the defaults'
    assert resolved.leaf_validity == pki.LEAF_VALIDITY  # built in
    # A subject is taken whole from one layer: the cluster's has no organizations.
    assert (resolved.common_name, resolved.organizations) == ("eu-ca", ())


def test_resolving_an_unknown_authority_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown authority 'serviceAccountCA'; known: clusterCA, etcdCA, frontProxyCA"):
        spec.resolve_authority(*_document_and_cluster(_valid()), "serviceAccountCA")


def test_the_etcd_and_front_proxy_cas_are_managed_only_when_listed():
    unlisted = _valid()
    unlisted["spec"]["clusters"][0]["authorities"] = {"clusterCA": {"rotation": 0}}
    document, cluster = _document_and_cluster(unlisted)
    assert spec.managed_authorities(cluster) == ["clusterCA"]
    with pytest.raises(ValueError, match="does not list authorities.etcdCA"):
        spec.resolve_authority(document, cluster, "etcdCA")
    listed = _valid()
    listed["spec"]["clusters"][0]["authorities"] = {"etcdCA": {"rotation": 2}, "frontProxyCA": {}}
    document, cluster = _document_and_cluster(listed)
    assert spec.managed_authorities(cluster) == ["clusterCA", "etcdCA", "frontProxyCA"]
    etcd = spec.resolve_authority(document, cluster, "etcdCA")
    # kubeadm's names unless the spec sets a subject
    assert (etcd.rotation, etcd.common_name) == (2, "etcd-ca")
    assert spec.resolve_authority(document, cluster, "frontProxyCA").common_name == "front-proxy-ca"
    assert spec.resolve_authority(document, cluster, "clusterCA").common_name == "kubernetes"


@pytest.mark.parametrize(("authority", "message"), [
    ({"validity": "90d", "renewBefore": "90d"}, r"renewBefore \(90d\) must be shorter than validity \(90d\)"),
    ({"validity": "30d", "leafValidity": "31d"}, r"leafValidity \(31d\) must not exceed validity \(30d\)"),
])
def test_lifetimes_that_contradict_each_other_are_rejected(authority, message):
    with pytest.raises(ValidationError, match=message):
        SpecDocument.model_validate(_with(authority))
    with pytest.raises(ValidationError, match=message):  # the same within the defaults
        SpecDocument.model_validate(_with(defaults=authority))


def test_lifetimes_are_checked_after_defaults_apply():
    # Neither layer is wrong alone; together the renewBefore outlasts the validity.
    body = _with({"validity": "60d"}, {"renewBefore": "90d"})
    with pytest.raises(ValidationError) as error:
        SpecDocument.model_validate(body)
    (problem,) = error.value.errors()
    assert problem["loc"] == ("spec", "clusters", 0)
    assert "authorities.clusterCA, with defaults applied: renewBefore (90d) must be shorter than validity (60d)" \
        in problem["msg"]
    # ...and a built-in default counts too: leafValidity 365d against validity 60d.
    with pytest.raises(ValidationError, match=r"leafValidity \(365d\) must not exceed validity \(60d\)"):
        SpecDocument.model_validate(_with({"validity": "60d", "renewBefore": "10d"}))


def test_leaf_validity_may_equal_validity():
    resolved = spec.resolve_authority(*_document_and_cluster(_with({"validity": "365d"})))
    assert resolved.leaf_validity == resolved.validity


def test_rotation_and_fingerprint_are_not_defaults():
    for field in ({"rotation": 1}, {"fingerprint": "sha256:" + "ab" * 32}):
        with pytest.raises(ValidationError, match="Extra inputs"):
            SpecDocument.model_validate(_with(defaults=field))


def test_the_state_store_is_a_secret_in_kube_system_unless_stated():
    document, cluster = _document_and_cluster(_valid())
    assert cluster.state_store.secret == spec.SecretStateStore(namespace="kube-system", name="careconcile-state")
    assert cluster.state_store.workspace is None
    _, cluster = _document_and_cluster(_with(cluster_extra={"stateStore": {"workspace": {}}}))
    assert cluster.state_store.secret is None and cluster.state_store.workspace is not None
    for choice in ({}, {"workspace": {}, "secret": {}}):
        with pytest.raises(ValidationError, match="set exactly one state store"):
            SpecDocument.model_validate(_with(cluster_extra={"stateStore": choice}))


def test_the_state_stores_keys_are_a_secret_of_their_own_named_like_the_state():
    _, cluster = _document_and_cluster(_valid())
    assert (cluster.state_store.secret.name, cluster.state_store.secret.keys_name) == (
        "careconcile-state", "careconcile-keys")
    _, cluster = _document_and_cluster(_with(cluster_extra={"stateStore": {"secret": {
        "namespace": "ops", "name": "ca-state", "keysName": "ca-keys"}}}))
    assert cluster.state_store.secret == spec.SecretStateStore(namespace="ops", name="ca-state", keys_name="ca-keys")
    for store in ({"name": "careconcile-keys"}, {"name": "x", "keysName": "x"}):
        with pytest.raises(ValidationError, match="the keys must be in a Secret of their own"):
            SpecDocument.model_validate(_with(cluster_extra={"stateStore": {"secret": store}}))
    with pytest.raises(ValidationError, match="keysName"):
        SpecDocument.model_validate(_with(cluster_extra={"stateStore": {"secret": {"keysName": "Not_A_Name"}}}))
