"""diff(): desired authority versus a hand-built ClusterObservation.

This module also holds the small cluster model the plan and render tests build their
observations from (one control plane ``cp1``, one worker ``w1``); CAs and leaves are
ECDSA P-256 and made once per session.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from functools import cache

from reconciler.core import pki
from reconciler.core.authorities import CLUSTER_CA, CLUSTER_INFO_SITE, EXTENSION_AUTH_SITE
from reconciler.core.diff import diff
from reconciler.core.observed import (
    ClusterObservation, ObservedBundle, ObservedComponent, ObservedLeaf, ObservedRecord, StoredState, digest_of, fp,
    item_digests,
)
from reconciler.core.pki import KeyPair, KeySpec, LeafRequest
from reconciler.core.plan import ClusterPlan, plan_cluster
from reconciler.core.sites import ApiField, LocalKubeconfig, NodeFile
from reconciler.core.spec import ResolvedAuthority

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
FAST = KeySpec("ECDSA", 256)
CLUSTER = "c1"

# --- certificates, made once -------------------------------------------------------------


@cache
def ca(name: str) -> KeyPair:
    """CAs by role: "old" (the CA of record), "new" (a rotation's target), "foreign"."""
    if name == "expiring":
        return pki.new_ca("kubernetes", now=NOW - dt.timedelta(days=3600), key=FAST, validity=dt.timedelta(days=3630))
    if name == "rsa":
        return pki.new_ca("kubernetes", now=NOW, key=KeySpec("RSA", 2048))
    return pki.new_ca("kubernetes", now=NOW - dt.timedelta(days=1), key=FAST)


@cache
def leaf(ca_name: str, common_name: str) -> KeyPair:
    return pki.issue_leaf(ca(ca_name), LeafRequest(common_name, client=True, key=FAST), now=NOW)


def cert_fp(name: str) -> str:
    return fp(ca(name).cert)


# --- the cluster model -------------------------------------------------------------------

CP, WORKER = "cp1", "w1"
CA_CRT = "/etc/kubernetes/pki/ca.crt"
CM_CONF = "/etc/kubernetes/controller-manager.conf"
SCHED_CONF = "/etc/kubernetes/scheduler.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
APISERVER = "/etc/kubernetes/pki/apiserver"
KUBELET_PEM = "/var/lib/kubelet/pki/kubelet-client-current.pem"
LOCAL_KUBECONFIG = "/specs/c1-admin.conf"
WORKSPACE_KUBECONFIG = "/workspace/c1/c1-kubeconfig"
CLUSTER_INFO = "configmap/kube-public/cluster-info"
EXTENSION_AUTH = "configmap/kube-system/extension-apiserver-authentication"
ROOT_CA = "configmap/default/kube-root-ca.crt"
CM = f"{CP}:kube-controller-manager"
SCHED = f"{CP}:kube-scheduler"

BUNDLE_SITES = (
    NodeFile(node=CP, path=CA_CRT, form="pem"),
    NodeFile(node=CP, path=CM_CONF, form="kubeconfig"),
    NodeFile(node=CP, path=SCHED_CONF, form="kubeconfig"),
    NodeFile(node=WORKER, path=CA_CRT, form="pem"),
    NodeFile(node=WORKER, path=KUBELET_CONF, form="kubeconfig"),
    LocalKubeconfig(path=LOCAL_KUBECONFIG),
    CLUSTER_INFO_SITE,
    EXTENSION_AUTH_SITE,
)
MANAGED_BUNDLES = {site.label: site for site in BUNDLE_SITES}
ROOT_CA_SITE = ApiField(resource="configmap", namespace="default", name="kube-root-ca.crt", field="ca.crt", form="pem",
                        published_by="controller-manager")
# id -> (site, common name)
LEAVES = {site.label: (site, cn) for site, cn in (
    (NodeFile(node=CP, path=APISERVER, form="pair"), "kube-apiserver"),
    (NodeFile(node=CP, path=CM_CONF, form="kubeconfig"), "system:kube-controller-manager"),
    (NodeFile(node=CP, path=SCHED_CONF, form="kubeconfig"), "system:kube-scheduler"),
    (NodeFile(node=WORKER, path=KUBELET_PEM, form="combined"), "system:node:w1"),
    (LocalKubeconfig(path=LOCAL_KUBECONFIG), "kubernetes-admin"),
)}
COMPONENTS = {
    CM: ("kube-controller-manager", (CM_CONF, CA_CRT)),
    SCHED: ("kube-scheduler", (SCHED_CONF,)),
}
STALE = "sha256:" + "0" * 64  # a restarted-for digest that matches no inputs


def desired(**changes) -> ResolvedAuthority:
    base = ResolvedAuthority(
        name="clusterCA", rotation=0, fingerprint=None, key=FAST, validity=dt.timedelta(days=3650),
        renew_before=dt.timedelta(days=90), leaf_validity=dt.timedelta(days=365), common_name="kubernetes",
        organizations=(),
    )
    return dataclasses.replace(base, **changes)


def in_progress(verified: int, *, target: str = "new", previous: str = "old", **changes) -> StoredState:
    """The state store during a rotation from ``previous`` to ``target``."""
    return StoredState(**{
        "applied_rotation": 0, "rotation": 1, "target": ca(target).cert, "previous": ca(previous).cert,
        "has_target_key": True, "has_previous_key": True, "verified_phase": verified,
        "started": "2026-11-28T11:00:00+00:00", **changes,
    })


def observation(
    *,
    trust: tuple[str, ...] = ("old",),
    bundles: dict[str, tuple[str, ...]] | None = None,
    unmanaged_trust: tuple[str, ...] | None = None,
    leaves_from: str = "old",
    leaves: dict[str, str] | None = None,
    key_mismatch: tuple[str, ...] = (),
    records: tuple[tuple[str, str | None], ...] | None = None,
    record: str = "old",
    signer: str | None = None,
    cm_signing: str = "record",
    stale: tuple[str, ...] = (),
    never_restarted: tuple[str, ...] = (),
    state: StoredState | None = None,
    workspace: str | None = None,
) -> ClusterObservation:
    """A cluster where every managed bundle trusts ``trust`` (``bundles`` overrides by id),
    every leaf is signed by ``leaves_from`` (``leaves`` overrides by id), cp1's CA of
    record is ``record`` and its staged signer ``signer``; the controller-manager signs
    from the record files or from the staged signer (``cm_signing``). A component is
    restarted for its current inputs unless it is ``stale`` or ``never_restarted``."""
    trusts = {bundle_id: (bundles or {}).get(bundle_id, trust) for bundle_id in MANAGED_BUNDLES}
    observed_bundles = [
        ObservedBundle(site, tuple(ca(name).cert for name in trusts[bundle_id]))
        for bundle_id, site in MANAGED_BUNDLES.items()
    ]
    observed_bundles.append(ObservedBundle(
        ROOT_CA_SITE, tuple(ca(name).cert for name in (unmanaged_trust or trusts[f"{CP}:{CA_CRT}"])), managed=False))
    issuers = {leaf_id: (leaves or {}).get(leaf_id, leaves_from) for leaf_id in LEAVES}
    observed_leaves = tuple(
        ObservedLeaf(site, leaf(issuers[leaf_id], cn).cert, key_matches=leaf_id not in key_mismatch)
        for leaf_id, (site, cn) in LEAVES.items()
    )

    def inputs_digest(inputs: tuple[str, ...]) -> str:
        return digest_of({path: [list(trusts.get(f"{CP}:{path}", ())), issuers.get(f"{CP}:{path}")]
                          for path in inputs})

    components = []
    for component_id, (name, inputs) in COMPONENTS.items():
        now_digest = inputs_digest(inputs)
        restarted_for = None if component_id in never_restarted else STALE if component_id in stale else now_digest
        signs = name == "kube-controller-manager"
        components.append(ObservedComponent(
            id=component_id, node=CP, name=name, inputs=inputs, inputs_digest=now_digest,
            restarted_for=restarted_for, restarted_at=NOW - dt.timedelta(hours=1) if restarted_for else None,
            signer_cert=(CA_CRT if cm_signing == "record" else CLUSTER_CA.signer_cert) if signs else None,
            signer_key=(CLUSTER_CA.record_key if cm_signing == "record" else CLUSTER_CA.signer_key) if signs else None,
            signing=cm_signing if signs else None,
        ))
    if records is None:
        records = ((CP, record),)
    observed_records = tuple(
        ObservedRecord(node=node, cert=ca(name).cert if name else None, key_spec=str(FAST),
                       signer=ca(signer).cert if signer else None, signer_key_matches=signer is not None)
        for node, name in records
    )
    workspace_leaf = None
    if workspace is not None:
        workspace_leaf = ObservedLeaf(LocalKubeconfig(path=WORKSPACE_KUBECONFIG),
                                      leaf(workspace, "kubernetes-admin").cert, key_matches=True)
    return ClusterObservation(
        cluster=CLUSTER, authority="clusterCA", records=observed_records, bundles=tuple(observed_bundles),
        leaves=observed_leaves, components=tuple(components), endpoints=(), state=state or StoredState(),
        workspace_kubeconfig=workspace_leaf, workspace_kubeconfig_path=WORKSPACE_KUBECONFIG,
        node_names=(CP, WORKER),
    )


def plan(wanted: ResolvedAuthority, observed: ClusterObservation, *, rollback: bool = False) -> ClusterPlan:
    findings = diff(wanted, observed, now=NOW)
    return plan_cluster(wanted, observed, findings, rollback=rollback, digest=observed.digest(),
                        items=item_digests(observed))


def codes(findings) -> list[str]:
    return sorted(finding.code for finding in findings)


# --- tests -------------------------------------------------------------------------------


def test_steady_cluster_has_no_findings():
    assert diff(desired(), observation(), now=NOW) == []


def test_raised_rotation_counter_is_requested():
    findings = diff(desired(rotation=1), observation(), now=NOW)
    assert codes(findings) == ["rotation-requested"]
    assert findings[0].subject == "clusterCA" and not findings[0].blocking
    assert "0 -> 1" in findings[0].message


def test_counter_at_or_below_applied_rotation_requests_nothing():
    assert diff(desired(rotation=2), observation(state=StoredState(applied_rotation=2)), now=NOW) == []
    assert diff(desired(rotation=1), observation(state=StoredState(applied_rotation=2)), now=NOW) == []


def test_counter_equal_to_rolled_back_rotation_is_not_requested_again():
    rolled_back = StoredState(applied_rotation=0, rolled_back_rotation=1)
    assert diff(desired(rotation=1), observation(state=rolled_back), now=NOW) == []
    assert codes(diff(desired(rotation=2), observation(state=rolled_back), now=NOW)) == ["rotation-requested"]


def test_ca_inside_renew_before_is_expiring():
    observed = observation(record="expiring", trust=("expiring",), leaves_from="expiring")
    findings = diff(desired(), observed, now=NOW)
    # Its leaves cannot outlive it, so they are due as well.
    assert codes(findings) == ["ca-expiring"] + ["leaf-expiring"] * len(LEAVES)
    assert "inside renewBefore 90d" in findings[0].message
    # With a shorter renewBefore the same CA is not due yet.
    assert diff(desired(renew_before=dt.timedelta(days=10)), observed, now=NOW) == []


def test_ca_key_other_than_the_spec_is_a_key_mismatch():
    observed = observation(record="rsa", trust=("rsa",), leaves_from="rsa")
    findings = diff(desired(key=FAST), observed, now=NOW)
    assert codes(findings) == ["key-mismatch"]
    assert "RSA-2048" in findings[0].message and "ECDSA-P256" in findings[0].message


def test_pin_to_another_ca_is_blocking():
    findings = diff(desired(fingerprint=cert_fp("foreign")), observation(), now=NOW)
    assert codes(findings) == ["pin-mismatch"]
    assert findings[0].blocking


def test_pin_to_the_current_ca_is_fine_without_a_rotation():
    assert diff(desired(fingerprint=cert_fp("old")), observation(), now=NOW) == []


def test_pin_to_the_current_ca_with_a_rotation_requested_is_blocking():
    findings = diff(desired(fingerprint=cert_fp("old"), rotation=1), observation(), now=NOW)
    assert codes(findings) == ["pin-mismatch", "rotation-requested"]
    assert [f.blocking for f in findings if f.code == "pin-mismatch"] == [True]
    assert "remove the pin" in next(f.message for f in findings if f.code == "pin-mismatch")


def test_pin_to_neither_ca_of_a_rotation_in_progress_is_blocking():
    observed = observation(trust=("old", "new"), signer="old", cm_signing="signer", state=in_progress(2))
    findings = diff(desired(fingerprint=cert_fp("foreign")), observed, now=NOW)
    assert codes(findings) == ["pin-mismatch", "rotation-in-progress"]
    assert all(f.blocking == (f.code == "pin-mismatch") for f in findings)
    for pinned in ("old", "new"):
        assert codes(diff(desired(fingerprint=cert_fp(pinned)), observed, now=NOW)) == ["rotation-in-progress"]


def test_control_planes_with_different_records_disagree_and_block():
    observed = observation(records=((CP, "old"), ("cp2", "foreign")))
    findings = diff(desired(rotation=1), observed, now=NOW)
    assert codes(findings) == ["records-disagree"]
    assert findings[0].blocking
    assert f"cp2={cert_fp('foreign')}" in findings[0].message


def test_control_plane_without_a_matching_record_blocks():
    findings = diff(desired(), observation(records=((CP, "old"), ("cp2", None))), now=NOW)
    assert codes(findings) == ["record-missing"]
    assert findings[0].blocking and "cp2" in findings[0].message


def test_no_control_plane_at_all_is_a_missing_record():
    findings = diff(desired(), observation(records=()), now=NOW)
    assert codes(findings) == ["record-missing"] and findings[0].blocking


def test_managed_bundle_with_a_foreign_ca_is_out_of_step():
    observed = observation(bundles={f"{WORKER}:{CA_CRT}": ("foreign",)})
    findings = diff(desired(), observed, now=NOW)
    assert codes(findings) == ["bundle-out-of-step"]
    assert findings[0].subject == f"{WORKER}:{CA_CRT}" and not findings[0].blocking


def test_a_bundle_trusting_an_extra_ca_is_out_of_step():
    findings = diff(desired(), observation(bundles={CLUSTER_INFO: ("old", "foreign")}), now=NOW)
    assert [(f.code, f.subject) for f in findings] == [("bundle-out-of-step", CLUSTER_INFO)]


def test_unmanaged_bundles_are_not_diffed():
    assert diff(desired(), observation(unmanaged_trust=("foreign",)), now=NOW) == []


def test_leaf_from_another_ca_or_with_a_wrong_key_is_out_of_step():
    observed = observation(leaves={f"{CP}:{APISERVER}": "foreign"}, key_mismatch=(f"{WORKER}:{KUBELET_PEM}",))
    findings = diff(desired(), observed, now=NOW)
    assert [(f.code, f.subject) for f in findings] == [
        ("leaf-out-of-step", f"{CP}:{APISERVER}"), ("leaf-out-of-step", f"{WORKER}:{KUBELET_PEM}")]
    assert "not signed by the CA of record" in findings[0].message
    assert "private key does not match" in findings[1].message


def test_component_restarted_for_other_inputs_is_pending_a_restart():
    findings = diff(desired(), observation(stale=(SCHED,)), now=NOW)
    assert [(f.code, f.subject) for f in findings] == [("restart-pending", SCHED)]


def test_component_careconcile_never_restarted_is_not_pending():
    assert diff(desired(), observation(never_restarted=(CM, SCHED)), now=NOW) == []


def test_rotation_in_progress_is_reported_and_stops_the_diff():
    # Leaves and bundles differ from the record mid-rotation: that is the rotation, not drift.
    observed = observation(trust=("old", "new"), signer="old", cm_signing="signer", state=in_progress(2))
    findings = diff(desired(rotation=1), observed, now=NOW)
    assert codes(findings) == ["rotation-in-progress"]
    assert "phase 2 of 5 verified" in findings[0].message and cert_fp("new") in findings[0].message
    rolling_back = in_progress(2, target="old", previous="new", rolling_back=True)
    assert "a rollback to" in diff(desired(), observation(state=rolling_back), now=NOW)[0].message


# --- the observation digest ----------------------------------------------------------------


def test_digest_is_deterministic():
    assert observation().digest() == observation().digest()
    assert observation().digest().startswith("sha256:")


def test_digest_changes_with_a_managed_bundle_and_item_digests_name_it():
    before = observation()
    after = observation(bundles={f"{WORKER}:{KUBELET_CONF}": ("old", "new")})
    assert before.digest() != after.digest()
    old_items, new_items = item_digests(before), item_digests(after)
    assert old_items.keys() == new_items.keys()
    assert [key for key in old_items if old_items[key] != new_items[key]] == [f"{WORKER}:{KUBELET_CONF}#trusts"]


def test_digest_ignores_unmanaged_bundles():
    before = observation()
    after = observation(unmanaged_trust=("old", "foreign"))
    assert before.digest() == after.digest()
    assert item_digests(before) == item_digests(after)
    assert not [key for key in item_digests(before) if key.startswith(ROOT_CA)]


def test_digest_changes_with_state_leaves_records_and_components():
    base = item_digests(observation())
    changed = {
        "state": observation(state=StoredState(applied_rotation=1)),
        f"{CP}:{APISERVER}#cert": observation(leaves={f"{CP}:{APISERVER}": "new"}),
        f"{CP}:record": observation(signer="old"),
        SCHED: observation(stale=(SCHED,)),
    }
    for item, observed in changed.items():
        now = item_digests(observed)
        assert [key for key in base if base[key] != now[key]] == [item], item


def test_a_kubeconfigs_trust_and_its_credentials_are_digested_apart():
    # One id names both the kubeconfig's CA data and its client certificate; a change of
    # either must make a saved plan stale.
    site = f"{CP}:{CM_CONF}"
    before = item_digests(observation())
    trust_changed = item_digests(observation(bundles={site: ("old", "new")}))
    cert_changed = item_digests(observation(leaves={site: "new"}))
    # (the controller-manager reads that file, so its inputs change with it)
    changed_by_trust = {key for key in before if before[key] != trust_changed[key]}
    changed_by_cert = {key for key in before if before[key] != cert_changed[key]}
    assert f"{site}#trusts" in changed_by_trust and f"{site}#cert" not in changed_by_trust
    assert f"{site}#cert" in changed_by_cert and f"{site}#trusts" not in changed_by_cert


def test_leaves_inside_renew_before_are_due_under_the_ca_they_have():
    later = NOW + dt.timedelta(days=300)  # the CA has years left, the one-year leaves 65 days
    findings = diff(desired(), observation(), now=later)
    assert codes(findings) == ["leaf-expiring"] * len(LEAVES)
    assert {finding.subject for finding in findings} == set(LEAVES)
    assert all("inside renewBefore 90d" in finding.message for finding in findings)
    assert diff(desired(renew_before=dt.timedelta(days=30)), observation(), now=later) == []
    expired = diff(desired(), observation(), now=NOW + dt.timedelta(days=400))
    assert all("it has expired" in finding.message for finding in expired)


def test_a_rotation_warns_of_unmanaged_certificates_the_old_ca_signed():
    from dataclasses import replace

    from reconciler.core.observed import ForeignCertificate

    ours = ForeignCertificate(id="secret/default/web-tls", cert=leaf("old", "web.example").cert)
    theirs = ForeignCertificate(id="secret/default/other-tls", cert=leaf("foreign", "other.example").cert)
    managed_copy = ForeignCertificate(id="certificatesigningrequest/csr-1",
                                      cert=leaf("old", "system:node:w1").cert)  # the same cert as a managed leaf
    observed = replace(observation(), foreign=(ours, theirs, managed_copy))
    rotating = diff(desired(rotation=1), observed, now=NOW)
    warnings = [finding for finding in rotating if finding.warning]
    assert [(w.code, w.subject) for w in warnings] == [("unmanaged-certificate", "secret/default/web-tls")]
    assert "web.example" in warnings[0].message and "phase 4" in warnings[0].message
    assert not warnings[0].blocking
    # Nothing to warn about when the old CA stays.
    assert [f for f in diff(desired(), observed, now=NOW) if f.warning] == []
    # Mid-rotation the CA being left is the stored previous one.
    midway = replace(observation(trust=("old", "new"), state=in_progress(2)), foreign=(ours,))
    assert [f.subject for f in diff(desired(rotation=1), midway, now=NOW) if f.warning] == ["secret/default/web-tls"]
    # Once expired, it no longer matters.
    assert [f for f in diff(desired(rotation=1), observed, now=NOW + dt.timedelta(days=400)) if f.warning] == []
    # The plan stays a rotation; the warning changes no action.
    assert plan(desired(rotation=1), observed).actions == plan(desired(rotation=1), observation()).actions


def test_a_rollback_about_to_start_warns_of_certificates_the_abandoned_target_signed():
    from dataclasses import replace

    from reconciler.core.observed import ForeignCertificate

    by_old = ForeignCertificate(id="secret/default/old-tls", cert=leaf("old", "old.example").cert)
    by_new = ForeignCertificate(id="secret/default/new-tls", cert=leaf("new", "new.example").cert)
    midway = replace(observation(trust=("old", "new"), state=in_progress(2)), foreign=(by_old, by_new))
    warned = lambda findings: [f.subject for f in findings if f.warning]  # noqa: E731
    assert warned(diff(desired(rotation=1), midway, now=NOW)) == ["secret/default/old-tls"]
    assert warned(diff(desired(rotation=1), midway, now=NOW, rollback=True)) == ["secret/default/new-tls"]
    # A rollback already running has swapped target and previous in the state store.
    rolling = replace(midway, state=in_progress(2, target="old", previous="new", rolling_back=True))
    assert warned(diff(desired(rotation=1), rolling, now=NOW)) == ["secret/default/new-tls"]
