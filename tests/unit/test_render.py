"""Rendering plans (text, markdown, JSON) and reading saved plans back (session.load_plan)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from reconciler.core import render
from reconciler.core.plan import FORMAT_VERSION, PHASE_TITLES, ClusterPlan, PlanDocument, summary_counts, summary_line
from reconciler.core.schemas import schemas
from reconciler.errors import PlanFileError
from reconciler.shell.session import load_plan
from tests.unit.test_diff import cert_fp, desired, in_progress, observation, plan

SPEC_PATH = "/specs/fleet.yaml"


def document(*plans: ClusterPlan, operation: str = "apply") -> PlanDocument:
    actions = [action for cluster in plans for action in cluster.actions]
    return PlanDocument(
        format_version=FORMAT_VERSION, careconcile_version="0.0.0-test", created="2026-11-28T12:00:00+00:00",
        operation=operation, spec_path=SPEC_PATH, spec_digest="sha256:" + "1" * 64, clusters=list(plans),
        summary=summary_counts(actions),
    )


def rotation() -> PlanDocument:
    return document(plan(desired(rotation=1), observation()))


def steady() -> PlanDocument:
    return document(plan(desired(), observation()))


def midway_rollback() -> PlanDocument:
    observed = observation(trust=("old", "new"), signer="old", cm_signing="signer", state=in_progress(2))
    return document(plan(desired(rotation=1), observed, rollback=True), operation="rollback")


def blocked() -> PlanDocument:
    return document(plan(desired(fingerprint=cert_fp("foreign")), observation()))


def repair() -> PlanDocument:
    return document(plan(desired(), observation(bundles={"w1:/etc/kubernetes/pki/ca.crt": ("foreign",)})))


ALL = {"rotation": rotation, "steady": steady, "rollback": midway_rollback, "blocked": blocked, "repair": repair}


# --- text --------------------------------------------------------------------------------------


def test_text_has_a_heading_per_phase_in_order_and_ends_with_the_summary():
    plan_document = rotation()
    output = render.text(plan_document)
    assert output.startswith(f"careconcile apply plan for {SPEC_PATH}\n")
    headings = [f"  Phase {phase}: {title}" for phase, title in PHASE_TITLES.items()]
    positions = [output.index(heading + "\n") for heading in headings]
    assert positions == sorted(positions)
    assert output.rstrip("\n").splitlines()[-1] == summary_line(plan_document.actions())
    assert summary_line(plan_document.actions()).startswith("Plan: 1 CA to create, ")


def test_text_names_the_cluster_operation_and_each_action_with_its_symbol():
    output = render.text(rotation())
    old_short = cert_fp("old")[:19]
    assert f"Cluster c1 (clusterCA): rotate from {old_short} to a new CA" in output
    assert "      + create-ca state" in output
    assert f"[{old_short}] -> [{old_short}, (new CA)]" in output  # a phase-2 bundle, shortened
    assert "    -/+ reissue cp1:/etc/kubernetes/pki/apiserver" in output
    assert "      r restart cp1:kube-controller-manager" in output
    assert "      ? verify phase-5" in output
    assert "rotation counter raised (0 -> 1)" in output  # the finding


def test_text_of_a_steady_cluster_says_no_changes():
    output = render.text(steady())
    assert "Cluster c1 (clusterCA): no changes" in output
    assert "Phase" not in output
    assert output.endswith("No changes. The clusters match the spec.\n")


def test_text_of_a_blocked_plan_shows_the_blocking_finding_and_an_error():
    output = render.text(blocked())
    assert f"  ! clusterCA: spec pins {cert_fp('foreign')}" in output
    assert "Error: 1 finding(s) block this plan; nothing will change until they are resolved." in output
    assert output.endswith("No changes. The clusters match the spec.\n")


def test_text_of_a_rollback_and_a_repair_say_what_they_do():
    assert f"roll back from {cert_fp('new')[:19]} to {cert_fp('old')[:19]}" in render.text(midway_rollback())
    assert render.text(midway_rollback()).startswith("careconcile rollback plan for ")
    assert f"repair consumers of {cert_fp('old')[:19]}" in render.text(repair())


# --- markdown ----------------------------------------------------------------------------------


def test_markdown_starts_with_a_heading_and_the_bold_summary():
    plan_document = rotation()
    lines = render.markdown(plan_document).splitlines()
    assert lines[0] == "### careconcile apply plan"
    assert [line for line in lines[1:] if line][0] == f"**{summary_line(plan_document.actions())}**"


def test_markdown_folds_each_phase_in_details_with_its_action_count():
    plan_document = rotation()
    output = render.markdown(plan_document)
    cluster = plan_document.clusters[0]
    for phase, title in PHASE_TITLES.items():
        count = sum(1 for action in cluster.actions if action.phase == phase)
        assert f"<details><summary>Phase {phase}: {title} ({count} actions)</summary>" in output
    assert output.count("<details>") == output.count("</details>") == len(PHASE_TITLES)
    assert f"| c1 | rotate | `{cert_fp('old')[:19]}` | `(new CA)` | {len(cluster.actions)} |" in output


def test_markdown_of_a_steady_cluster_folds_nothing():
    output = render.markdown(steady())
    assert "<details>" not in output
    assert "**No changes. The clusters match the spec.**" in output


def test_markdown_marks_blocking_findings():
    assert "- **blocking** `clusterCA`: spec pins" in render.markdown(blocked())


# --- JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
def test_json_round_trips_through_the_model(name):
    plan_document = ALL[name]()
    assert PlanDocument.model_validate_json(render.as_json(plan_document)) == plan_document


@pytest.mark.parametrize("name", sorted(ALL))
def test_json_validates_against_the_published_plan_schema(name):
    jsonschema.validate(json.loads(render.as_json(ALL[name]())), schemas()["plan.schema.json"])


def test_json_keeps_full_fingerprints_and_sorted_keys():
    output = render.as_json(rotation())
    assert f'"{cert_fp("old")}"' in output
    assert output.endswith("}\n")
    data = json.loads(output)
    assert list(data) == sorted(data)
    assert data["summary"]["create-ca"] == 1


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_rendering_contains_key_material(name):
    plan_document = ALL[name]()
    for output in (render.text(plan_document), render.markdown(plan_document), render.as_json(plan_document)):
        assert "PRIVATE KEY" not in output
        assert "-----BEGIN" not in output


# --- saved plans -------------------------------------------------------------------------------


def write(tmp_path, content: str):
    path = tmp_path / "saved.plan.json"
    path.write_text(content)
    return path


def test_load_plan_reads_what_as_json_wrote(tmp_path):
    plan_document = rotation()
    assert load_plan(write(tmp_path, render.as_json(plan_document))) == plan_document


def test_load_plan_refuses_another_format_version(tmp_path):
    data = json.loads(render.as_json(rotation()))
    data["format_version"] = 2
    path = write(tmp_path, json.dumps(data))
    with pytest.raises(PlanFileError, match="format_version 2") as refused:
        load_plan(path)
    assert str(path) in refused.value.message


def test_load_plan_refuses_a_plan_without_format_version(tmp_path):
    data = json.loads(render.as_json(rotation()))
    del data["format_version"]
    path = write(tmp_path, json.dumps(data))
    with pytest.raises(PlanFileError, match="format_version None") as refused:
        load_plan(path)
    assert str(path) in refused.value.message


def test_load_plan_refuses_invalid_json(tmp_path):
    path = write(tmp_path, render.as_json(rotation())[:-40])
    with pytest.raises(PlanFileError, match="not a JSON plan file") as refused:
        load_plan(path)
    assert refused.value.message.startswith(f"{path}: ")


def test_load_plan_refuses_a_schema_violation_and_says_where(tmp_path):
    data = json.loads(render.as_json(rotation()))
    data["clusters"][0]["actions"][0]["phase"] = 7
    path = write(tmp_path, json.dumps(data))
    with pytest.raises(PlanFileError, match=r"not a valid plan at clusters\.0\.actions\.0\.phase") as refused:
        load_plan(path)
    assert refused.value.message.startswith(f"{path}: ")


def test_load_plan_refuses_unknown_fields_and_action_kinds(tmp_path):
    data = json.loads(render.as_json(rotation()))
    data["clusters"][0]["actions"][0]["kind"] = "delete-everything"
    with pytest.raises(PlanFileError, match="kind"):
        load_plan(write(tmp_path, json.dumps(data)))
    data = json.loads(render.as_json(rotation()))
    data["extra"] = True
    with pytest.raises(PlanFileError, match="not a valid plan"):
        load_plan(write(tmp_path, json.dumps(data)))


def test_load_plan_refuses_a_document_that_is_not_an_object(tmp_path):
    path = write(tmp_path, "[1, 2]")
    with pytest.raises(PlanFileError, match=r"not a valid plan at \(top level\)") as refused:
        load_plan(path)
    assert str(path) in refused.value.message


def test_load_plan_of_a_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(PlanFileError, match="cannot read the plan") as refused:
        load_plan(path)
    assert str(path) in refused.value.message
