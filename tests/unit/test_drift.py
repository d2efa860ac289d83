"""detect(), totals(), the JSON report and its schema, and the Prometheus metrics, on
hand-built observations (the cluster model of test_diff: control plane ``cp1``, worker ``w1``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from functools import cache
from pathlib import Path

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.core import drift_render, metrics, pki
from reconciler.core.drift import (
    DRIFT_KINDS, ClusterDrift, DriftFinding, DriftReport, authority_status, detect, status_of, totals,
)
from reconciler.core.observed import (
    ClusterObservation, ObservedBundle, ObservedEndpoint, ObservedRecord, StoredState, short,
)
from reconciler.core.pki import KeyPair, LeafRequest
from reconciler.core.sites import ApiField
from reconciler.core.workloads import ObservedPod, ObservedWorkload
from reconciler.core.schemas import schemas
from tests.unit.test_diff import (
    CA_CRT, CLUSTER, CM, CP, FAST, KUBELET_PEM, LEAVES, NOW, ROOT_CA, WORKER, ca, cert_fp, desired, in_progress, leaf,
    observation,
)

ROOT = Path(__file__).resolve().parents[2]
DAY = dt.timedelta(days=1)
WEBHOOK_SITE = ApiField(resource="validatingwebhookconfiguration", name="hooks", field="/webhooks/widgets.example.test",
                        form="ca-bundle")
WEBHOOK = WEBHOOK_SITE.label


@cache
def expired_ca() -> KeyPair:
    return pki.new_ca("kubernetes", now=NOW - 3700 * DAY, key=FAST, validity=3650 * DAY)


def on_ca(authority: KeyPair) -> ClusterObservation:
    """The steady cluster of test_diff, but with ``authority`` as its CA everywhere."""
    base = observation()
    issued = min(NOW, authority.cert.not_valid_after_utc - 30 * DAY)  # leaves were made while it was valid
    return dataclasses.replace(
        base,
        records=tuple(dataclasses.replace(r, cert=authority.cert) for r in base.records),
        bundles=tuple(dataclasses.replace(b, certs=(authority.cert,)) for b in base.bundles),
        leaves=tuple(dataclasses.replace(
            leaf_, cert=pki.issue_leaf(authority, LeafRequest(LEAVES[leaf_.id][1], client=True, key=FAST),
                                       now=issued).cert) for leaf_ in base.leaves),
    )


def with_leaf(observed: ClusterObservation, leaf_id: str, cert) -> ClusterObservation:
    return dataclasses.replace(observed, leaves=tuple(
        dataclasses.replace(item, cert=cert) if item.id == leaf_id else item for item in observed.leaves))


def with_pods_from_before_the_last_rotation() -> ClusterObservation:
    """A rotation from "foreign" to "old" left the pods of Deployment app/web trusting only
    "foreign": they started before the bundles trusted both."""
    since = NOW - dt.timedelta(days=1)
    stale = ObservedPod("app", "web-1", "u1", since - dt.timedelta(minutes=1), "kube-root-ca.crt (projected)")
    fresh = ObservedPod("app", "web-2", "u2", since, "kube-root-ca.crt (projected)")
    return dataclasses.replace(
        observation(),
        state=StoredState(applied_rotation=1, workloads_trusted_since=since, workloads_trusted_alone=cert_fp("foreign")),
        workloads=(ObservedWorkload("Deployment", "app", "web", (stale,), replicas=1),
                   ObservedWorkload("Deployment", "app", "api", (fresh,), replicas=1)))


def with_bundle(observed: ClusterObservation, bundle: ObservedBundle) -> ClusterObservation:
    return dataclasses.replace(observed, bundles=observed.bundles + (bundle,))


def endpoints(**issuers: str) -> tuple[ObservedEndpoint, ...]:
    """One apiserver per node, presenting a serving certificate from the named CA."""
    return tuple(ObservedEndpoint(node=node, server=f"https://127.0.0.1:{6443 + i}",
                                  presented=leaf(issuer, "kube-apiserver").cert)
                 for i, (node, issuer) in enumerate(issuers.items()))


def expired_kubelet_leaf():
    return pki.issue_leaf(ca("old"), LeafRequest("system:node:w1", client=True, key=FAST, validity=30 * DAY),
                          now=NOW - 60 * DAY).cert


KUBELET = f"{WORKER}:{KUBELET_PEM}"
WORKER_CA = f"{WORKER}:{CA_CRT}"
EVERY_LEAF = sorted(LEAVES)

# kind -> (desired settings, observation, the subjects its findings name)
CASES = {
    "pin-mismatch": (dict(fingerprint=cert_fp("foreign")), observation, ["clusterCA"]),
    "ca-expiring": ({}, lambda: observation(record="expiring", trust=("expiring",), leaves_from="expiring"),
                    ["clusterCA"]),
    "ca-expired": ({}, lambda: on_ca(expired_ca()), ["clusterCA"]),
    "leaf-expiring": (dict(renew_before=400 * DAY), observation, EVERY_LEAF),
    "leaf-expired": ({}, lambda: with_leaf(observation(), KUBELET, expired_kubelet_leaf()), [KUBELET]),
    "key-mismatch": (dict(key=FAST), lambda: observation(record="rsa", trust=("rsa",), leaves_from="rsa"),
                     ["clusterCA"]),
    "bundle-missing-ca": ({}, lambda: observation(bundles={WORKER_CA: ("foreign",)}), [WORKER_CA]),
    "bundle-extra-ca": ({}, lambda: observation(bundles={WORKER_CA: ("old", "foreign")}), [WORKER_CA]),
    "leaf-wrong-issuer": ({}, lambda: observation(leaves={KUBELET: "foreign"}), [KUBELET]),
    "leaf-key-mismatch": ({}, lambda: observation(key_mismatch=(KUBELET,)), [KUBELET]),
    "rotation-half-done": ({}, lambda: observation(trust=("old", "new"), signer="old", cm_signing="signer",
                                                   state=in_progress(2)), ["clusterCA"]),
    "ca-bundle-stale": ({}, lambda: with_bundle(
        observation(state=StoredState(applied_rotation=1, retired=(cert_fp("retired"),))),
        ObservedBundle(WEBHOOK_SITE, (ca("retired").cert,))), [WEBHOOK]),
    "rotation-requested": (dict(rotation=1), observation, ["clusterCA"]),
    "records-disagree": ({}, lambda: observation(records=((CP, "old"), ("cp2", "new"))), ["clusterCA"]),
    "record-missing": ({}, lambda: observation(records=((CP, None),)), ["clusterCA"]),
    "restart-pending": ({}, lambda: observation(stale=(CM,)), [CM]),
    "workload-restart-pending": ({}, with_pods_from_before_the_last_rotation, ["deployment/app/web"]),
}

# What each kind's remedy must name: the command that repairs it, where there is one.
REMEDY_COMMANDS = {
    "pin-mismatch": ["careconcile pin SPEC"],
    "rotation-half-done": ["careconcile apply SPEC", "careconcile rollback SPEC"],
    "records-disagree": ["careconcile drift"],
    "record-missing": [],  # a person restores the files; no command does
    "apiservers-disagree": ["careconcile plan SPEC", "careconcile apply"],
    # after a rotation no careconcile command restarts them (mid-rotation `apply` does: tested below)
    "workload-restart-pending": ["kubectl rollout restart"],
}


def kinds(findings: list[DriftFinding]) -> set[str]:
    return {finding.kind for finding in findings}


def check_remedies(findings: list[DriftFinding]) -> None:
    for finding in findings:
        assert finding.remedy.strip(), finding
        assert finding.message.strip(), finding
        for command in REMEDY_COMMANDS.get(finding.kind, ["careconcile plan SPEC", "careconcile apply"]):
            assert command in finding.remedy, (finding.kind, finding.remedy)


# --- detect() --------------------------------------------------------------------------


def test_workload_restart_pending_names_the_pods_and_what_they_trust():
    [finding] = detect(desired(), with_pods_from_before_the_last_rotation(), now=NOW)
    assert "web-1" in finding.message and short(cert_fp("foreign")) in finding.message
    assert "api" not in finding.subject  # its pod started when the bundles trusted both


def test_mid_rotation_workload_restart_pending_says_apply_restarts_them():
    observed = dataclasses.replace(with_pods_from_before_the_last_rotation(),
                                   state=dataclasses.replace(in_progress(2), workloads_trusted_since=NOW,
                                                             workloads_trusted_alone=cert_fp("old")))
    found = [f for f in detect(desired(), observed, now=NOW) if f.kind == "workload-restart-pending"]
    assert {f.subject for f in found} == {"deployment/app/web", "deployment/app/api"}
    assert all("careconcile apply SPEC" in f.remedy for f in found)
    # Before phase 2 was verified nothing is known of what the pods read: the rotation itself is the finding.
    early = dataclasses.replace(observed, state=in_progress(1))
    assert "workload-restart-pending" not in kinds(detect(desired(), early, now=NOW))


def test_steady_cluster_has_no_drift():
    assert detect(desired(), observation(), now=NOW) == []
    assert detect(desired(fingerprint=cert_fp("old")), observation(), now=NOW) == []
    clean = dataclasses.replace(observation(), endpoints=endpoints(cp1="old", cp2="old"))
    assert detect(desired(), clean, now=NOW) == []
    assert status_of([]) == "in-sync"


def test_every_kind_has_a_case():
    assert set(CASES) | {"apiservers-disagree"} == set(DRIFT_KINDS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_case_triggers_exactly_its_kind(kind):
    settings, make, subjects = CASES[kind]
    findings = detect(desired(**settings), make(), now=NOW)
    assert kinds(findings) == {kind}, [(f.kind, f.subject, f.message) for f in findings]
    assert sorted(f.subject for f in findings) == sorted(subjects)
    assert all(f.cluster == CLUSTER and f.authority == "clusterCA" for f in findings)
    check_remedies(findings)
    assert status_of(findings) == "drift"


def test_apiservers_that_disagree_name_the_odd_one_out():
    observed = dataclasses.replace(observation(), endpoints=endpoints(cp1="old", cp2="foreign"))
    findings = detect(desired(), observed, now=NOW)
    assert sorted((f.kind, f.subject) for f in findings) == [
        ("apiservers-disagree", "clusterCA"), ("leaf-wrong-issuer", "apiserver/cp2")]
    disagree = next(f for f in findings if f.kind == "apiservers-disagree")
    assert "cp1 (https://127.0.0.1:6443)" in disagree.message and "cp2 (https://127.0.0.1:6444)" in disagree.message
    check_remedies(findings)


def test_a_half_done_rotation_reports_the_rotation_not_its_bundles():
    # Every phase leaves bundles trusting two CAs and leaves from either: none of it is reported.
    for verified, extra in ((1, dict(trust=("old",))), (2, dict(trust=("old", "new"), signer="old")),
                            (3, dict(trust=("old", "new"), record="new", signer="new", leaves_from="new")),
                            (4, dict(trust=("new",), record="new", leaves_from="new", leaves={KUBELET: "old"}))):
        observed = observation(state=in_progress(verified), **extra)
        findings = detect(desired(rotation=1), observed, now=NOW)
        assert [(f.kind, f.subject) for f in findings] == [("rotation-half-done", "clusterCA")], verified
        assert f"after phase {verified} of 5" in findings[0].message
    rollback = detect(desired(), observation(trust=("old", "new"), state=in_progress(2, rolling_back=True)), now=NOW)
    assert kinds(rollback) == {"rotation-half-done"} and "a rollback" in rollback[0].message


def test_a_half_done_rotation_still_reports_the_old_ca_expiring():
    observed = observation(record="expiring", trust=("expiring", "new"), leaves_from="expiring",
                           state=in_progress(2, previous="expiring"))
    assert sorted(kinds(detect(desired(), observed, now=NOW))) == ["ca-expiring", "rotation-half-done"]


def test_leaves_that_end_with_their_ca_are_covered_by_the_cas_finding():
    observed = observation(record="expiring", trust=("expiring",), leaves_from="expiring")
    assert all(f.cert.not_valid_after_utc == ca("expiring").cert.not_valid_after_utc for f in observed.leaves)
    assert kinds(detect(desired(), observed, now=NOW)) == {"ca-expiring"}
    # A leaf that ends before its CA is due on its own.
    short_lived = pki.issue_leaf(ca("expiring"), LeafRequest("system:node:w1", client=True, key=FAST,
                                                             validity=10 * DAY), now=NOW).cert
    findings = detect(desired(), with_leaf(observed, KUBELET, short_lived), now=NOW)
    assert sorted((f.kind, f.subject) for f in findings) == [("ca-expiring", "clusterCA"), ("leaf-expiring", KUBELET)]


def test_expiry_messages_name_the_date_and_the_window():
    findings = detect(desired(renew_before=400 * DAY), observation(), now=NOW)
    kubelet = next(f for f in findings if f.subject == KUBELET)
    end = leaf("old", "system:node:w1").cert.not_valid_after_utc
    assert end.strftime("%Y-%m-%dT%H:%M:%SZ") in kubelet.message and "inside renewBefore 400d" in kubelet.message


def test_ca_bundle_with_the_current_and_a_retired_ca_has_an_extra_ca():
    state = StoredState(applied_rotation=1, retired=(cert_fp("retired"),))
    observed = with_bundle(observation(state=state), ObservedBundle(WEBHOOK_SITE, (ca("old").cert, ca("retired").cert)))
    findings = detect(desired(rotation=1), observed, now=NOW)
    assert [(f.kind, f.subject) for f in findings] == [("bundle-extra-ca", WEBHOOK)]
    assert "keeping the object's other CAs" in findings[0].remedy


def test_the_published_root_ca_is_checked_but_its_owner_rewrites_it():
    findings = detect(desired(), observation(unmanaged_trust=("foreign",)), now=NOW)
    assert [(f.kind, f.subject) for f in findings] == [("bundle-missing-ca", ROOT_CA)]
    assert "--root-ca-file" in findings[0].remedy and "controller-manager" in findings[0].remedy


def test_a_rotation_rolled_back_is_not_requested_again():
    state = StoredState(applied_rotation=0, rolled_back_rotation=1)
    assert detect(desired(rotation=1), observation(state=state), now=NOW) == []
    assert kinds(detect(desired(rotation=2), observation(state=state), now=NOW)) == {"rotation-requested"}


# --- reports -----------------------------------------------------------------------------

CHECKED = "2026-11-28T12:00:05Z"


def cluster_drift(observed: ClusterObservation, findings: list[DriftFinding], *, name: str = CLUSTER,
                  spec_name: str = "fleet") -> ClusterDrift:
    return ClusterDrift(spec=f"/specs/{spec_name}.yaml", spec_name=spec_name, cluster=name,
                        status=status_of(findings), checked_at=CHECKED, seconds=0.25,
                        authorities=[authority_status(observed)], findings=findings)


def unreachable(name: str, spec_name: str = "fleet") -> ClusterDrift:
    return ClusterDrift(spec=f"/specs/{spec_name}.yaml", spec_name=spec_name, cluster=name, status="error",
                        checked_at=CHECKED, seconds=10.0, error=f"{name}: cannot reach https://127.0.0.1:1")


def report(clusters: list[ClusterDrift], created: str = "2026-11-28T12:00:00Z") -> DriftReport:
    return DriftReport(format_version=1, careconcile_version="0.1.0", created=created,
                       specs=sorted({c.spec for c in clusters}), clusters=clusters, totals=totals(clusters))


def sample_report() -> DriftReport:
    steady = observation()
    drifting = observation(bundles={WORKER_CA: ("old", "foreign")}, leaves={KUBELET: "foreign"})
    return report([
        cluster_drift(steady, detect(desired(), steady, now=NOW), name="steady"),
        cluster_drift(drifting, detect(desired(rotation=1), drifting, now=NOW), name="drifting"),
        unreachable("gone"),
    ])


def test_totals_count_clusters_by_status_and_findings_by_kind():
    result = sample_report().totals
    assert (result.clusters, result.in_sync, result.drifted, result.errors) == (3, 1, 1, 1)
    assert result.findings == 3
    assert result.by_kind == {"bundle-extra-ca": 1, "leaf-wrong-issuer": 1, "rotation-requested": 1}
    assert list(result.by_kind) == [k for k in DRIFT_KINDS if k in result.by_kind]  # the kinds' order
    empty = totals([])
    assert (empty.clusters, empty.findings, empty.by_kind) == (0, 0, {})


def test_authority_status_names_the_live_ca_and_the_first_leaf_to_expire():
    observed = with_leaf(observation(), KUBELET, expired_kubelet_leaf())
    status = authority_status(observed)
    assert status.fingerprint == cert_fp("old") and status.key == str(FAST)
    assert status.not_after == ca("old").cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status.earliest_leaf == KUBELET
    assert authority_status(observation(records=((CP, None),))).fingerprint is None


def test_json_report_validates_against_the_checked_in_schema():
    document = json.loads(drift_render.as_json(sample_report()))
    assert "drift-report.schema.json" in schemas()
    checked_in = json.loads((ROOT / "schemas/drift-report.schema.json").read_text())
    assert checked_in == schemas()["drift-report.schema.json"]
    jsonschema.validate(document, checked_in)
    assert DriftReport.model_validate(document) == sample_report()
    # The schema is a contract: an unknown kind or status is not a report.
    bad = json.loads(json.dumps(document))
    bad["clusters"][1]["findings"][0]["kind"] = "something-else"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, checked_in)
    bad = json.loads(json.dumps(document))
    bad["clusters"][0]["status"] = "fine"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, checked_in)


def test_text_and_markdown_show_every_finding_and_error():
    result = sample_report()
    for render in (drift_render.text, drift_render.markdown):
        out = render(result)
        for cluster in result.clusters:
            assert cluster.cluster in out
            for finding in cluster.findings:
                assert finding.kind in out and finding.subject in out
        assert "cannot reach https://127.0.0.1:1" in out
    assert "Drift: 3 clusters checked, 1 in sync, 1 drifted, 1 unreachable or failed; 3 findings" \
        in drift_render.text(result)


# --- metrics ---------------------------------------------------------------------------


def families(text: str) -> dict[str, object]:
    parsed = {family.name: family for family in text_string_to_metric_families(text)}
    assert len(parsed) == len(list(text_string_to_metric_families(text))), "a family appears twice"
    return parsed


def samples(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for s in families(text)[name].samples}


def test_every_family_has_help_and_type_and_parses():
    text = metrics.exposition(sample_report())
    parsed = families(text)
    assert set(parsed) == set(metrics.METRICS)
    lines = text.splitlines()
    for name, family in parsed.items():
        help_text, kind = metrics.METRICS[name]
        assert family.documentation == help_text and family.type == kind == "gauge"
        assert lines.count(f"# HELP {name} {help_text}") == 1 and lines.count(f"# TYPE {name} gauge") == 1
        first_sample = next(i for i, line in enumerate(lines) if line.startswith(name) and not line.startswith("#"))
        assert lines[first_sample - 2:first_sample] == [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        assert all(s.timestamp is None for s in family.samples)  # the textfile collector refuses timestamps
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_times_are_absolute_unix_seconds():
    result = sample_report()
    text = metrics.exposition(result)
    steady = (("cluster", "steady"), ("spec", "fleet"))
    authority = (("authority", "clusterCA"), ("cluster", "steady"), ("spec", "fleet"))
    assert samples(text, "careconcile_drift_run_timestamp_seconds") == {
        (): dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc).timestamp()}
    assert samples(text, metrics.LAST_SUCCESS)[steady] == dt.datetime(2026, 11, 28, 12, 0, 5,
                                                                      tzinfo=dt.timezone.utc).timestamp()
    assert samples(text, "careconcile_ca_not_after_timestamp_seconds")[authority] == \
        ca("old").cert.not_valid_after_utc.timestamp()
    earliest = min(leaf_.cert.not_valid_after_utc for leaf_ in observation().leaves)
    assert samples(text, "careconcile_leaf_earliest_not_after_timestamp_seconds")[authority] == earliest.timestamp()
    info = samples(text, "careconcile_ca_info")
    assert info[(*authority[:2], ("fingerprint", cert_fp("old")), ("key", str(FAST)), ("spec", "fleet"))] == 1


def test_findings_are_listed_per_kind_with_zeros_and_sync_per_cluster():
    text = metrics.exposition(sample_report())
    findings = samples(text, "careconcile_drift_findings")
    for cluster, counts in (("steady", {}), ("drifting", {"bundle-extra-ca": 1, "leaf-wrong-issuer": 1,
                                                           "rotation-requested": 1})):
        for kind in DRIFT_KINDS:
            assert findings[(("cluster", cluster), ("kind", kind), ("spec", "fleet"))] == counts.get(kind, 0)
    assert len(findings) == 2 * len(DRIFT_KINDS)
    in_sync = samples(text, "careconcile_cluster_in_sync")
    assert in_sync == {(("cluster", "steady"), ("spec", "fleet")): 1, (("cluster", "drifting"), ("spec", "fleet")): 0}


def test_an_unreachable_cluster_keeps_its_last_success_from_the_previous_file():
    steady = observation()
    before = metrics.exposition(report([cluster_drift(steady, [], name="gone")], created="2026-11-27T12:00:00Z"))
    gone = (("cluster", "gone"), ("spec", "fleet"))
    last = samples(before, metrics.LAST_SUCCESS)[gone]
    assert samples(before, "careconcile_cluster_reachable")[gone] == 1

    now = metrics.exposition(sample_report(), previous=before)
    assert samples(now, "careconcile_cluster_reachable")[gone] == 0
    assert samples(now, metrics.LAST_SUCCESS)[gone] == last
    assert gone not in samples(now, "careconcile_cluster_in_sync")
    assert not any(("cluster", "gone") in labels for labels in samples(now, "careconcile_drift_findings"))
    assert not any(("cluster", "gone") in labels for labels in samples(now, "careconcile_ca_not_after_timestamp_seconds"))
    # Carried on through runs that still cannot read it, and absent when it was never read.
    later = metrics.exposition(sample_report(), previous=now)
    assert samples(later, metrics.LAST_SUCCESS)[gone] == last
    first = metrics.exposition(sample_report())
    assert gone not in samples(first, metrics.LAST_SUCCESS)
    assert samples(first, "careconcile_cluster_reachable")[gone] == 0
    # A run whose only cluster is unreachable still writes a file that parses.
    alone = metrics.exposition(report([unreachable("gone")]), previous=before)
    assert set(families(alone)) == {"careconcile_drift_run_timestamp_seconds", "careconcile_cluster_reachable",
                                    metrics.LAST_SUCCESS}


def test_a_previous_file_that_does_not_parse_is_ignored():
    text = metrics.exposition(report([unreachable("gone")]), previous="garbage\n\x00{\n" + metrics.LAST_SUCCESS + "{x\n")
    assert metrics.LAST_SUCCESS not in families(text)


@pytest.mark.parametrize("name", ['quote"d', "back\\slash", "new\nline", 'all "\\\n" of \\n them', "trailing\\"])
def test_label_values_round_trip_through_the_parser(name):
    steady = observation()
    first = metrics.exposition(report([cluster_drift(steady, [], name=name, spec_name=name + "-spec")]))
    labels = (("cluster", name), ("spec", name + "-spec"))
    assert samples(first, "careconcile_cluster_reachable") == {labels: 1}
    last = samples(first, metrics.LAST_SUCCESS)[labels]
    # Read back from the file's text by careconcile itself when the cluster cannot be read.
    assert metrics.last_successes(first) == {(name + "-spec", name): last}
    second = metrics.exposition(report([unreachable(name, spec_name=name + "-spec")]), previous=first)
    assert samples(second, metrics.LAST_SUCCESS) == {labels: last}
    assert samples(second, "careconcile_cluster_reachable") == {labels: 0}


def test_a_cluster_without_a_ca_of_record_has_no_ca_samples():
    observed = observation(records=((CP, None),))
    text = metrics.exposition(report([cluster_drift(observed, detect(desired(), observed, now=NOW))]))
    assert "careconcile_ca_not_after_timestamp_seconds" not in families(text)
    assert "careconcile_ca_info" not in families(text)
    assert samples(text, "careconcile_drift_findings")[(("cluster", CLUSTER), ("kind", "record-missing"),
                                                         ("spec", "fleet"))] == 1


def test_record_fixture_helpers_are_consistent():
    # Guards the helpers above: on_ca() builds a cluster with no other drift than its CA's age.
    fresh = pki.new_ca("kubernetes", now=NOW - DAY, key=FAST)
    assert detect(desired(), on_ca(fresh), now=NOW) == []
    assert isinstance(on_ca(fresh).records[0], ObservedRecord)


def test_two_spec_files_declaring_the_same_named_cluster_are_refused_before_any_cluster_is_read(tmp_path):
    from reconciler.errors import UsageError
    from reconciler.shell import drift as drift_check
    from reconciler.shell.specfile import load_spec
    from tests.unit.test_spec_loader import VALID

    first = tmp_path / "a" / "spec.yaml"
    second = tmp_path / "b" / "spec.yaml"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text(VALID)
    with pytest.raises(UsageError, match="declared in both .*a/spec.yaml and .*b/spec.yaml"):
        drift_check.check([load_spec(first), load_spec(second)], tmp_path / "workspace")
    assert not (tmp_path / "workspace").exists()


def test_an_unforeseen_error_of_one_cluster_is_that_clusters_result(tmp_path, monkeypatch):
    from reconciler.shell import drift as drift_check
    from reconciler.shell.specfile import load_spec
    from tests.unit.test_spec_loader import VALID

    path = tmp_path / "spec.yaml"
    path.write_text(VALID)

    def broken(*args, **kwargs):
        raise ValueError("Incorrect padding")

    monkeypatch.setattr(drift_check, "open_cluster", broken)
    report = drift_check.check([load_spec(path)], tmp_path / "workspace")
    [cluster] = report.clusters
    assert cluster.status == "error" and cluster.error == "ValueError: Incorrect padding"
    assert report.totals.errors == 1


def test_markdown_report_keeps_an_error_with_html_inside_its_fold():
    from reconciler.core import drift_render

    broken = unreachable("web").model_copy(update={
        "error": "GET /api: 502 <html><body>Bad gateway</body></html> | </details> & more\nsecond line"})
    out = drift_render.markdown(report([broken]))
    assert out.count("<details>") == out.count("</details>") == 1
    assert "&lt;/details>" in out and "\\|" in out and "&amp; more second line" in out
