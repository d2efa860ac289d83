"""plan_cluster(): the five-phase plan from hand-built observations (see test_diff for the model)."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter

import pytest

from reconciler.core.diff import diff
from reconciler.core.observed import NEW_CA, StoredState, item_digests
from reconciler.core.plan import Action, ClusterPlan, plan_cluster, summary_counts, summary_line
from reconciler.errors import RollbackRefusedError
from tests.unit.test_diff import (
    APISERVER, CA_CRT, CLUSTER, CLUSTER_INFO, CM, CM_CONF, COMPONENTS, CP, EXTENSION_AUTH, KUBELET_CONF, KUBELET_PEM,
    LEAVES, LOCAL_KUBECONFIG, MANAGED_BUNDLES, NOW, ROOT_CA, SCHED, SCHED_CONF, WORKER, WORKSPACE_KUBECONFIG, cert_fp,
    desired, in_progress, observation, plan,
)

FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
FILE_KINDS = ("update-bundle", "reissue")


def ids(cluster_plan: ClusterPlan) -> list[str]:
    return [action.id for action in cluster_plan.actions]


def select(cluster_plan: ClusterPlan, *, phase: int | None = None, kind: str | None = None) -> list[Action]:
    return [a for a in cluster_plan.actions if (phase is None or a.phase == phase) and (kind is None or a.kind == kind)]


def phases(cluster_plan: ClusterPlan) -> set[int]:
    return {action.phase for action in cluster_plan.actions}


# Mid-rotation observations, each consistent with what the phases before it leave behind.

def after_trust_both(**changes):
    """Phase 2 verified: bundles trust old and new, cp1 signs from the staged old CA."""
    return observation(**{"trust": ("old", "new"), "signer": "old", "cm_signing": "signer",
                          "state": in_progress(2), **changes})


def after_reissue(**changes):
    """Phase 3 verified: ca.key and the signer are the new CA's, every leaf is from it."""
    return observation(**{"trust": ("old", "new"), "record": "new", "signer": "new", "cm_signing": "signer",
                          "leaves_from": "new", "state": in_progress(3), **changes})


def rotation_plan() -> ClusterPlan:
    return plan(desired(rotation=1), observation())


# --- steady --------------------------------------------------------------------------------


def test_steady_cluster_plans_nothing():
    observed = observation()
    result = plan(desired(), observed)
    assert result.operation == "none"
    assert result.actions == [] and result.findings == []
    assert summary_line(result.actions) == "No changes. The clusters match the spec."
    assert result.observed_digest == observed.digest()
    assert result.observed_items == item_digests(observed)


def test_steady_cluster_after_a_rotation_was_applied_plans_nothing():
    result = plan(desired(rotation=3), observation(state=StoredState(applied_rotation=3), workspace="old"))
    assert result.operation == "none" and result.actions == []


# --- a rotation ----------------------------------------------------------------------------


def test_rotation_runs_phases_in_order_and_finalizes_last():
    result = rotation_plan()
    assert result.operation == "rotate"
    assert result.old_ca == cert_fp("old") and result.new_ca == NEW_CA
    numbers = [action.phase for action in result.actions]
    assert numbers == sorted(numbers)
    assert set(numbers) == {1, 2, 3, 4, 5}
    assert result.actions[-1].kind == "finalize" and result.actions[-1].phase == 5
    assert [a.kind for a in result.actions].count("finalize") == 1


def test_within_a_phase_signers_come_before_files_restarts_and_the_check_last():
    order = ["create-ca", "stage-signer", "switch-signer", "update-bundle", "reissue", "write-kubeconfig", "restart",
             "remove-signer", "verify", "finalize"]
    result = rotation_plan()
    for phase in (1, 2, 3, 4, 5):
        kinds = [a.kind for a in select(result, phase=phase)]
        assert kinds == sorted(kinds, key=order.index), phase
    for phase in (2, 3, 4):
        assert select(result, phase=phase)[-1].kind == "verify"


def test_rotation_creates_exactly_one_ca_as_the_spec_describes_it():
    result = rotation_plan()
    created = select(result, kind="create-ca")
    assert len(created) == 1
    action = created[0]
    assert action.phase == 1 and action.target == "state"
    assert action.change.before == [cert_fp("old")] and action.change.after == [NEW_CA]
    assert action.params.model_dump() == {"key": "ECDSA-P256", "validity": "3650d", "common_name": "kubernetes",
                                          "rotation": 1}
    assert "rotation counter raised (0 -> 1)" in action.reason


def test_rotation_trusts_both_cas_then_only_the_new_one_in_every_managed_bundle():
    result = rotation_plan()
    trust_both = Counter(a.target for a in select(result, phase=2, kind="update-bundle"))
    distrust = Counter(a.target for a in select(result, phase=4, kind="update-bundle"))
    # The apiserver adds the CAs it trusts to extension-apiserver-authentication by itself;
    # careconcile need not (but may) write it in phase 2. Every other managed bundle is written.
    assert set(trust_both) >= set(MANAGED_BUNDLES) - {EXTENSION_AUTH}
    assert set(trust_both) <= set(MANAGED_BUNDLES) and max(trust_both.values()) == 1
    assert distrust == Counter(list(MANAGED_BUNDLES))
    for action in select(result, phase=2, kind="update-bundle"):
        assert action.change.before == [cert_fp("old")]
        assert action.change.after == [cert_fp("old"), NEW_CA]
    for action in select(result, phase=4, kind="update-bundle"):
        assert action.change.after == [NEW_CA]
        assert action.change.before == ([cert_fp("old"), NEW_CA] if action.target in trust_both else [cert_fp("old")])
    for action in select(result, kind="update-bundle"):
        assert action.site == MANAGED_BUNDLES[action.target]


def test_rotation_never_writes_bundles_their_owners_rewrite():
    assert ROOT_CA not in {action.target for action in rotation_plan().actions}


def test_rotation_reissues_every_leaf_once_in_phase_3():
    reissued = select(rotation_plan(), kind="reissue")
    assert Counter(a.target for a in reissued) == Counter(list(LEAVES))
    for action in reissued:
        assert action.phase == 3
        assert action.change.before == [cert_fp("old")] and action.change.after == [NEW_CA]
        assert FINGERPRINT.match(action.params.certificate)
        site, common_name = LEAVES[action.target]
        assert action.site == site
        assert action.params.subject == f"CN={common_name}"


def test_rotation_stages_switches_and_removes_the_signer():
    result = rotation_plan()
    staged, switched, removed = (select(result, kind=kind) for kind in ("stage-signer", "switch-signer",
                                                                           "remove-signer"))
    assert [(a.phase, a.target, a.change.after) for a in staged] == [(2, f"{CP}:signer", [cert_fp("old")])]
    assert [(a.phase, a.target, a.change.after) for a in switched] == [(3, f"{CP}:signer", [NEW_CA])]
    assert [(a.phase, a.target) for a in removed] == [(4, f"{CP}:signer")]


def test_rotation_writes_the_workspace_kubeconfig_in_phase_4():
    written = select(rotation_plan(), kind="write-kubeconfig")
    assert [(a.phase, a.target, a.path, a.change.after) for a in written] == [
        (4, f"local:{WORKSPACE_KUBECONFIG}", WORKSPACE_KUBECONFIG, [NEW_CA])]


def test_rotation_restarts_exactly_the_components_whose_inputs_change_or_whose_signer_moves():
    result = rotation_plan()
    for phase in (2, 3, 4):
        touched = {(a.node, a.path) for a in select(result, phase=phase) if a.kind in FILE_KINDS}
        restarted = {a.target for a in select(result, phase=phase, kind="restart")}
        expected = {component_id for component_id, (name, inputs) in COMPONENTS.items()
                    if any((CP, path) in touched for path in inputs)}
        assert restarted == expected | {CM}, phase  # the controller-manager changes signer in phases 2 and 4
        for action in select(result, phase=phase, kind="restart"):
            assert action.node == CP and action.params.component == COMPONENTS[action.target][0]


def test_controller_manager_signs_from_the_signer_while_two_cas_are_trusted_then_from_the_record():
    restarts = {a.phase: a for a in select(rotation_plan(), kind="restart") if a.target == CM}
    assert {phase: a.params.signing for phase, a in restarts.items()} == {2: "signer", 3: "signer", 4: "record"}
    assert "signs from the signer files" in restarts[2].reason
    assert "signs from the record files" in restarts[4].reason
    assert all(a.params.signing is None for a in select(rotation_plan(), kind="restart") if a.target == SCHED)


def test_rotation_verifies_phases_2_to_5():
    checks = select(rotation_plan(), kind="verify")
    assert [(a.phase, a.target) for a in checks] == [(2, "phase-2"), (3, "phase-3"), (4, "phase-4"), (5, "phase-5")]
    assert all(a.params.model_dump() == {"expect": NEW_CA, "old": cert_fp("old")} for a in checks)


def test_rotation_changes_name_only_fingerprints_or_the_new_ca():
    for action in rotation_plan().actions:
        if action.change is not None:
            for value in action.change.before + action.change.after:
                assert value == NEW_CA or FINGERPRINT.match(value), (action.id, value)


def test_rotation_summary_line_counts_what_changes():
    result = rotation_plan()
    counts = summary_counts(result.actions)
    bundles = len(select(result, kind="update-bundle"))
    assert counts == {"create-ca": 1, "rollback-target": 0, "update-bundle": bundles, "reissue": len(LEAVES),
                      "write-kubeconfig": 1, "restart": 6, "restart-workload": 0}
    assert summary_line(result.actions) == (
        f"Plan: 1 CA to create, {bundles} bundles to update, {len(LEAVES)} certificates to reissue, "
        "1 kubeconfig to write, 6 restarts.")


def test_action_ids_are_cluster_phase_kind_target_unique_and_stable():
    first, again = rotation_plan(), rotation_plan()
    assert ids(first) == ids(again)
    assert len(set(ids(first))) == len(ids(first))
    for action in first.actions:
        assert action.id == f"{CLUSTER}/{action.phase}/{action.kind}/{action.target}"


def test_expiring_ca_triggers_a_rotation_without_a_counter_change():
    result = plan(desired(), observation(record="expiring", trust=("expiring",), leaves_from="expiring"))
    assert result.operation == "rotate"
    assert [f.code for f in result.findings if f.code != "leaf-expiring"] == ["ca-expiring"]
    assert len(select(result, kind="create-ca")) == 1
    assert select(result, kind="create-ca")[0].params.rotation == 0


def test_key_mismatch_triggers_a_rotation_to_the_specs_key():
    result = plan(desired(), observation(record="rsa", trust=("rsa",), leaves_from="rsa"))
    assert result.operation == "rotate"
    assert [f.code for f in result.findings] == ["key-mismatch"]
    assert select(result, kind="create-ca")[0].params.key == "ECDSA-P256"


# --- blocking findings -----------------------------------------------------------------------


@pytest.mark.parametrize("wanted,observed,code", [
    (desired(fingerprint=cert_fp("foreign")), observation(), "pin-mismatch"),
    (desired(fingerprint=cert_fp("old"), rotation=1), observation(), "pin-mismatch"),
    (desired(rotation=1), observation(records=((CP, "old"), ("cp2", "foreign"))), "records-disagree"),
    (desired(rotation=1), observation(records=((CP, "old"), ("cp2", None))), "record-missing"),
    (desired(fingerprint=cert_fp("foreign")), after_trust_both(), "pin-mismatch"),
], ids=["pin-other-ca", "pin-and-rotation", "records-disagree", "record-missing", "pin-mid-rotation"])
def test_blocking_finding_plans_nothing(wanted, observed, code):
    result = plan(wanted, observed)
    assert result.operation == "none" and result.actions == []
    assert [f.code for f in result.findings if f.blocking] == [code]
    assert summary_line(result.actions).startswith("No changes")


# --- resuming ----------------------------------------------------------------------------------


def test_resume_after_trust_both_starts_at_reissue():
    result = plan(desired(rotation=1), after_trust_both())
    assert result.operation == "resume"
    assert (result.old_ca, result.new_ca) == (cert_fp("old"), cert_fp("new"))
    assert phases(result) == {3, 4, 5}
    assert not select(result, kind="create-ca") and not select(result, kind="stage-signer")
    assert [(a.target, a.change.after) for a in select(result, kind="switch-signer")] == [
        (f"{CP}:signer", [cert_fp("new")])]
    reissued = select(result, kind="reissue")
    assert Counter(a.target for a in reissued) == Counter(list(LEAVES))
    assert all(a.change.before == [cert_fp("old")] and a.change.after == [cert_fp("new")] for a in reissued)
    distrust = select(result, phase=4, kind="update-bundle")
    assert Counter(a.target for a in distrust) == Counter(list(MANAGED_BUNDLES))
    assert all(a.change.before == [cert_fp("old"), cert_fp("new")] and a.change.after == [cert_fp("new")]
               for a in distrust)
    assert [a.target for a in select(result, kind="verify")] == ["phase-3", "phase-4", "phase-5"]
    assert result.actions[-1].kind == "finalize"
    restarts = {(a.phase, a.target): a.params.signing for a in select(result, kind="restart")}
    assert restarts == {(3, CM): "signer", (3, SCHED): None, (4, CM): "record", (4, SCHED): None}


def test_resume_after_reissue_plans_only_distrust_and_the_final_checks():
    result = plan(desired(rotation=1), after_reissue())
    assert result.operation == "resume"
    assert phases(result) == {4, 5}
    assert not select(result, kind="reissue") and not select(result, kind="switch-signer")
    assert Counter(a.target for a in select(result, kind="update-bundle")) == Counter(list(MANAGED_BUNDLES))
    assert [a.kind for a in select(result, phase=5)] == ["verify", "finalize"]


def test_resume_after_distrust_plans_only_the_last_check_and_finalize():
    observed = observation(trust=("new",), record="new", leaves_from="new", workspace="new", state=in_progress(4))
    result = plan(desired(rotation=1), observed)
    assert [(a.phase, a.kind) for a in result.actions] == [(5, "verify"), (5, "finalize")]


def test_resume_reissues_only_the_leaves_still_from_the_old_ca():
    done = {f"{CP}:{APISERVER}": "new", f"{WORKER}:{KUBELET_PEM}": "new"}
    result = plan(desired(rotation=1), after_trust_both(leaves=done))
    assert {a.target for a in select(result, kind="reissue")} == set(LEAVES) - set(done)


def test_resume_distrusts_only_the_bundles_that_still_trust_the_old_ca():
    done = {f"{WORKER}:{CA_CRT}": ("new",), CLUSTER_INFO: ("new",)}
    result = plan(desired(rotation=1), after_reissue(bundles=done))
    assert {a.target for a in select(result, kind="update-bundle")} == set(MANAGED_BUNDLES) - set(done)


def test_the_workspace_kubeconfig_is_written_only_when_there_is_none():
    # Once written, the observer reports it as a bundle and a leaf, which later phases rotate.
    assert select(plan(desired(rotation=1), after_reissue()), kind="write-kubeconfig")
    assert not select(plan(desired(rotation=1), after_reissue(workspace="old")), kind="write-kubeconfig")


def test_resumed_plan_ids_are_a_subset_of_the_full_plans_ids():
    midway = after_trust_both()
    resumed = set(ids(plan(desired(rotation=1), midway)))
    # The same observation planned as if no phase were verified yet ...
    from_start = plan(desired(rotation=1), after_trust_both(state=in_progress(0)))
    assert resumed <= set(ids(from_start))
    # ... and the rotation planned before it started name the same remaining work.
    assert resumed <= set(ids(rotation_plan()))
    later = set(ids(plan(desired(rotation=1), after_reissue())))
    assert later <= resumed


def test_replanning_midway_gives_the_same_ids():
    assert ids(plan(desired(rotation=1), after_trust_both())) == ids(plan(desired(rotation=1), after_trust_both()))


def test_restart_lost_in_a_crash_after_trust_both_files_is_planned_in_phase_2():
    # Rotation just started (phase 1 verified), every phase-2 file and the signer are done,
    # the controller-manager was restarted, the scheduler was not.
    observed = observation(trust=("old", "new"), signer="old", cm_signing="signer", stale=(SCHED,),
                           state=in_progress(1))
    result = plan(desired(rotation=1), observed)
    assert result.operation == "resume"
    phase_2 = select(result, phase=2)
    assert [(a.kind, a.target) for a in phase_2] == [("restart", SCHED), ("verify", "phase-2")]
    assert "not been restarted since its files changed" in phase_2[0].reason


def test_no_restart_is_planned_when_the_phase_2_files_and_restarts_are_done():
    observed = observation(trust=("old", "new"), signer="old", cm_signing="signer", state=in_progress(1))
    result = plan(desired(rotation=1), observed)
    assert [(a.kind, a.target) for a in select(result, phase=2)] == [("verify", "phase-2")]


def test_restart_lost_in_a_crash_after_reissue_is_planned_in_phase_3():
    result = plan(desired(rotation=1), after_reissue(state=in_progress(2), stale=(SCHED,)))
    assert [(a.kind, a.target) for a in select(result, phase=3)] == [("restart", SCHED), ("verify", "phase-3")]


# --- rolling back --------------------------------------------------------------------------------


def test_rollback_is_refused_when_no_rotation_is_in_progress():
    with pytest.raises(RollbackRefusedError, match="no rotation in progress"):
        plan(desired(), observation(), rollback=True)


def test_rollback_is_refused_once_a_managed_bundle_distrusts_the_previous_ca():
    observed = after_reissue(bundles={f"{WORKER}:{KUBELET_CONF}": ("new",)})
    with pytest.raises(RollbackRefusedError) as refused:
        plan(desired(rotation=1), observed, rollback=True)
    assert f"{WORKER}:{KUBELET_CONF}" in refused.value.message
    assert cert_fp("old") in refused.value.message
    assert refused.value.hint and "apply" in refused.value.hint


def test_rollback_ignores_a_ca_bundle_left_on_a_ca_retired_before_this_rotation():
    from dataclasses import replace

    from reconciler.core.observed import ObservedBundle
    from reconciler.core.sites import ApiField
    from tests.unit.test_diff import ca

    # A webhook re-installed with a CA retired long ago trusts neither CA of this rotation.
    webhook = ObservedBundle(ApiField(resource="validatingwebhookconfiguration", name="hook", field="/webhooks/h",
                                      form="ca-bundle"), (ca("foreign").cert,))
    observed = after_trust_both()
    assert plan(desired(rotation=1), replace(observed, bundles=observed.bundles + (webhook,)),
                rollback=True).operation == "rollback"
    # One that moved to the new CA alone does say the old CA is no longer trusted there.
    moved = replace(webhook, certs=(ca("new").cert,))
    with pytest.raises(RollbackRefusedError, match="validatingwebhookconfiguration/hook"):
        plan(desired(rotation=1), replace(observed, bundles=observed.bundles + (moved,)), rollback=True)


def test_rollback_is_refused_without_the_previous_key():
    with pytest.raises(RollbackRefusedError, match="old CA's key"):
        plan(desired(rotation=1), after_trust_both(state=in_progress(2, has_previous_key=False)), rollback=True)


def test_rollback_ignores_bundles_their_owners_rewrite():
    result = plan(desired(rotation=1), after_trust_both(unmanaged_trust=("new",)), rollback=True)
    assert result.operation == "rollback"


def test_rollback_after_trust_both_moves_every_bundle_back_to_the_previous_ca():
    result = plan(desired(rotation=1), after_trust_both(), rollback=True)
    assert result.operation == "rollback"
    assert (result.old_ca, result.new_ca) == (cert_fp("new"), cert_fp("old"))
    first = result.actions[0]
    assert (first.phase, first.kind, first.target) == (1, "rollback-target", "state")
    assert first.change.before == [cert_fp("new")] and first.change.after == [cert_fp("old")]
    assert not select(result, kind="create-ca") and not select(result, phase=2)
    distrust = select(result, phase=4, kind="update-bundle")
    assert Counter(a.target for a in distrust) == Counter(list(MANAGED_BUNDLES))
    assert all(a.change.after == [cert_fp("old")] for a in distrust)
    assert all(a.params.expect == cert_fp("old") for a in select(result, kind="verify"))
    assert result.actions[-1].kind == "finalize"


def test_rollback_after_reissue_reissues_and_signs_with_the_previous_ca_again():
    result = plan(desired(rotation=1), after_reissue(), rollback=True)
    assert result.actions[0].kind == "rollback-target"
    assert not select(result, phase=2)  # both CAs stay trusted while the leaves move back
    assert [a.change.after for a in select(result, kind="switch-signer")] == [[cert_fp("old")]]
    reissued = select(result, kind="reissue")
    assert Counter(a.target for a in reissued) == Counter(list(LEAVES))
    assert all(a.change.before == [cert_fp("new")] and a.change.after == [cert_fp("old")] for a in reissued)
    assert all(a.change.after == [cert_fp("old")] for a in select(result, phase=4, kind="update-bundle"))


def test_interrupted_rollback_resumes_without_a_second_rollback_target():
    rolling_back = in_progress(2, target="old", previous="new", rolling_back=True)
    result = plan(desired(rotation=1), after_trust_both(state=rolling_back), rollback=True)
    assert result.operation == "rollback"
    assert not select(result, kind="rollback-target")
    assert all(a.change.after == [cert_fp("old")] for a in select(result, phase=4, kind="update-bundle"))


def test_interrupted_rollback_is_resumed_by_a_plain_plan_too():
    rolling_back = in_progress(2, target="old", previous="new", rolling_back=True)
    result = plan(desired(rotation=1), after_trust_both(state=rolling_back))
    assert result.operation == "resume"
    assert all(a.change.after == [cert_fp("old")] for a in select(result, phase=4, kind="update-bundle"))


def test_rollback_before_trust_both_keeps_signing_with_the_ca_of_record():
    result = plan(desired(rotation=1), observation(state=in_progress(1)), rollback=True)
    for action in select(result, kind="stage-signer") + select(result, kind="switch-signer"):
        assert action.change.after == [cert_fp("old")], action.id


# --- repairs -------------------------------------------------------------------------------------


def test_repair_puts_a_foreign_worker_bundle_back_to_the_record():
    result = plan(desired(), observation(bundles={f"{WORKER}:{CA_CRT}": ("foreign",)}))
    assert result.operation == "repair"
    assert result.old_ca == result.new_ca == cert_fp("old")
    updates = select(result, kind="update-bundle")
    assert [(a.target, a.change.before, a.change.after) for a in updates] == [
        (f"{WORKER}:{CA_CRT}", [cert_fp("foreign")], [cert_fp("old")])]
    kinds = {a.kind for a in result.actions}
    assert kinds == {"update-bundle", "verify"}
    assert [a.target for a in select(result, kind="verify")] == ["phase-5"]
    assert summary_line(result.actions) == "Plan: 1 bundle to update, 0 certificates to reissue, 0 restarts."


def test_repair_reissues_a_leaf_from_another_ca_and_restarts_its_reader():
    result = plan(desired(), observation(leaves={f"{CP}:{SCHED_CONF}": "foreign"}))
    assert result.operation == "repair"
    assert [(a.phase, a.target, a.change.after) for a in select(result, kind="reissue")] == [
        (3, f"{CP}:{SCHED_CONF}", [cert_fp("old")])]
    assert [(a.phase, a.target) for a in select(result, kind="restart")] == [(3, SCHED)]
    assert not {"create-ca", "stage-signer", "switch-signer", "remove-signer", "finalize"} & {
        a.kind for a in result.actions}


def test_repair_restarts_a_component_whose_files_changed_since_its_restart():
    result = plan(desired(), observation(stale=(SCHED,)))
    assert result.operation == "repair"
    assert [(a.kind, a.target) for a in result.actions] == [("restart", SCHED), ("verify", "phase-5")]


def test_repair_keeps_the_controller_manager_on_the_record_files():
    result = plan(desired(), observation(bundles={f"{CP}:{CA_CRT}": ("old", "foreign")}))
    assert [(a.phase, a.target, a.params.signing) for a in select(result, kind="restart")] == [
        (4, CM, "record")]


def test_repair_shows_what_a_bundle_trusts_now_even_when_the_same_kubeconfig_is_reissued():
    observed = observation(bundles={f"{CP}:{CM_CONF}": ("foreign",)}, leaves={f"{CP}:{CM_CONF}": "foreign"})
    result = plan(desired(), observed)
    [update] = select(result, kind="update-bundle")
    assert update.change.before == [cert_fp("foreign")]


# --- the summary line ------------------------------------------------------------------------------


def test_summary_line_of_checks_only_is_no_changes():
    checks = [a for a in rotation_plan().actions if a.kind == "verify"]
    assert summary_line(checks) == "No changes. The clusters match the spec."


def test_summary_line_counts_a_rollback_start():
    result = plan(desired(rotation=1), after_trust_both(), rollback=True)
    line = summary_line(result.actions)
    assert line.startswith("Plan: 1 rollback to start, ")
    assert "CA to create" not in line


def test_plan_records_the_findings_and_observation_it_was_made_from():
    observed = observation()
    findings = diff(desired(rotation=1), observed, now=NOW)
    result = plan_cluster(desired(rotation=1), observed, findings, digest="sha256:abc", items={"x": "sha256:def"})
    assert result.findings == findings
    assert result.observed_digest == "sha256:abc" and result.observed_items == {"x": "sha256:def"}
    assert (result.cluster, result.authority) == (CLUSTER, "clusterCA")


def test_local_kubeconfig_is_updated_and_reissued_by_path():
    result = rotation_plan()
    local = [a for a in result.actions if a.target == f"local:{LOCAL_KUBECONFIG}"]
    assert {(a.phase, a.kind) for a in local} == {(2, "update-bundle"), (3, "reissue"), (4, "update-bundle")}
    assert all(a.path == LOCAL_KUBECONFIG and a.node is None for a in local)


def test_leaves_inside_renew_before_are_reissued_from_the_ca_of_record_without_a_rotation():
    later = NOW + dt.timedelta(days=300)
    observed = observation()
    result = plan_cluster(desired(), observed, diff(desired(), observed, now=later), digest=observed.digest(),
                          items=item_digests(observed))
    assert result.operation == "repair"
    assert not select(result, kind="create-ca") and not select(result, kind="switch-signer")
    reissued = select(result, kind="reissue")
    assert {action.target for action in reissued} == set(LEAVES)
    assert all(action.change.after == [cert_fp("old")] for action in reissued)
    assert all("renewBefore" in action.reason for action in reissued)
    # Nothing else changes trust: the bundles already trust only the CA of record.
    assert not select(result, kind="update-bundle")
