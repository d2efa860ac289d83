"""Rendering plans (text, markdown, JSON) and reading saved plans back (session.load_plan)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from reconciler.core import render
from reconciler.core.plan import FORMAT_VERSION, PHASE_TITLES, ClusterPlan, PlanDocument, summary_counts, summary_line
from reconciler.core.schemas import schemas
from reconciler.core.sites import NodeFile
from reconciler.errors import PlanFileError
from reconciler.shell.session import load_plan
from reconciler.shell.specfile import spec_text_digest
from tests.unit.test_diff import cert_fp, desired, in_progress, observation, plan

SPEC_PATH = "/specs/fleet.yaml"
SPEC_TEXT = "apiVersion: careconcile.dev/v1alpha1\nkind: CASpec\n"  # not read by what these tests check


def document(*plans: ClusterPlan, operation: str = "apply") -> PlanDocument:
    actions = [action for cluster in plans for action in cluster.actions]
    return PlanDocument(
        format_version=FORMAT_VERSION, careconcile_version="0.0.0-test", created="2026-11-28T12:00:00+00:00",
        operation=operation, spec_path=SPEC_PATH, spec_relative_path="specs/fleet.yaml",
        spec_digest=spec_text_digest(SPEC_TEXT), spec_text=SPEC_TEXT, clusters=list(plans), summary=summary_counts(actions),
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


def test_text_of_a_fleet_gives_each_cluster_its_totals_and_names_the_clusters_that_change():
    rotating = rotation().clusters[0].model_copy(update={"cluster": "eu"})
    steady_one = steady().clusters[0].model_copy(update={"cluster": "us"})
    fleet = document(rotating, steady_one)
    out = render.text(fleet)
    assert f"  eu: {summary_line(rotating.actions).removeprefix('Plan: ')}" in out
    assert "  us: " not in out  # a cluster without actions has no totals line
    lines = out.splitlines()
    assert lines[-2] == "1 of 2 clusters change: eu."
    assert lines[-1] == summary_line(fleet.actions())
    # One cluster: no per-cluster line and no fleet line, as before.
    assert "clusters change" not in render.text(rotation())


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

CELL = re.compile(r"(?<!\\)\|")  # a cell boundary: a pipe that is not escaped


def fleet(clusters: int, workers: int = 1, *, kind=rotation) -> PlanDocument:
    """``clusters`` copies of a plan's cluster, each with ``workers`` copies of w1's actions
    (w1 has 5 in a rotation: two bundles in phases 2 and 4, a reissue in phase 3)."""
    base = kind().clusters[0]
    plans = []
    for index in range(clusters):
        name = f"cluster-{index:04d}"
        actions = []
        for action in base.actions:
            copies = [action] if action.node != "w1" else [
                action.model_copy(update={"node": f"w{n}", "target": action.target.replace("w1:", f"w{n}:", 1)})
                for n in range(1, workers + 1)]
            actions += [copy.model_copy(update={"id": f"{name}/{copy.phase}/{copy.kind}/{copy.target}"})
                        for copy in copies]
        plans.append(base.model_copy(update={"cluster": name, "actions": actions}))
    return document(*plans)


def summary_rows(output: str) -> list[list[str]]:
    """The cells of the summary table's rows: the first table, without its header."""
    lines = output.split("\n\n| cluster | operation |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return [[cell.strip() for cell in CELL.split(line)[1:-1]] for line in lines]


def assert_well_formed(output: str, limit: int = render.MARKDOWN_LIMIT) -> None:
    """Within the limit (characters and UTF-8 bytes); every <details> closed before the
    next opens; every table row has its header's cells; each phase block holds as many
    action rows as its summary says."""
    assert len(output.encode()) <= limit
    assert output.endswith("\n")
    tags = re.findall(r"^</?details>", output, flags=re.MULTILINE)
    assert tags == ["<details>", "</details>"] * (len(tags) // 2)
    for block in re.findall(r"^<details>.*?^</details>$", output, flags=re.MULTILINE | re.DOTALL):
        if "actions)</summary>" not in block and "action)</summary>" not in block:
            continue  # where the nodes are, not a phase
        count = int(re.search(r"\((\d+) actions?\)</summary>", block).group(1))
        assert sum(1 for line in block.splitlines() if line.startswith("| `")) == count
    for table in re.findall(r"(?:^\|.*\n)+", output, flags=re.MULTILINE):
        widths = {len(CELL.findall(line)) for line in table.splitlines()}
        assert len(widths) == 1, table


def test_markdown_starts_with_a_heading_the_bold_summary_and_the_table():
    plan_document = rotation()
    lines = render.markdown(plan_document).splitlines()
    assert lines[0] == "### careconcile apply plan"
    assert lines[1:4] == ["", f"**{summary_line(plan_document.actions())}**", ""]
    assert lines[4] == ("| cluster | operation | from | to | 1 prepare | 2 trust both | 3 reissue | "
                        "4 distrust old | 5 verify | total | changes |")


def test_markdown_summary_table_counts_actions_per_phase_per_cluster():
    plan_document = document(*rotation().clusters, *fleet(1, kind=steady).clusters)
    output = render.markdown(plan_document)
    rotating = plan_document.clusters[0]
    per_phase = [str(sum(1 for action in rotating.actions if action.phase == phase)) for phase in PHASE_TITLES]
    assert summary_rows(output) == [
        ["c1", "rotate", f"`{cert_fp('old')[:19]}`", "`(new CA)`", *per_phase, str(len(rotating.actions)), "yes"],
        ["cluster-0000", "none", "`-`", "`-`", "0", "0", "0", "0", "0", "0", "no changes"],
        ["**all 2 clusters**", "", "", "", *(f"**{n}**" for n in per_phase), f"**{len(rotating.actions)}**",
         "1 with changes"],
    ]


def test_markdown_of_a_single_cluster_has_no_totals_row():
    assert [row[0] for row in summary_rows(render.markdown(rotation()))] == ["c1"]


def test_markdown_of_a_rollback_names_the_rollback_phases_in_the_table():
    output = render.markdown(midway_rollback())
    assert output.startswith("### careconcile rollback plan\n")
    assert "| 4 distrust the abandoned CA |" in output
    assert summary_rows(output)[0][:2] == ["c1", "rollback"]


def test_markdown_folds_each_phase_in_details_with_its_action_count():
    plan_document = rotation()
    output = render.markdown(plan_document)
    cluster = plan_document.clusters[0]
    for phase, title in PHASE_TITLES.items():
        count = sum(1 for action in cluster.actions if action.phase == phase)
        noun = "action" if count == 1 else "actions"
        assert f"<details><summary>Phase {phase}: {title} ({count} {noun})</summary>" in output
    assert output.count("<details>") == output.count("</details>") == len(PHASE_TITLES)
    assert output.index("| cluster | operation |") < output.index("#### Cluster c1") < output.index("<details>")
    assert_well_formed(output)


def test_markdown_of_a_small_plan_is_whole_and_has_no_note():
    plan_document = rotation()
    output = render.markdown(plan_document, plan_file="rotate.plan.json")
    assert "Truncated" not in output
    assert sum(1 for line in output.splitlines() if line.startswith("| `")) == len(plan_document.actions())
    for action in plan_document.actions():
        assert f"| `{action.target}` |" in output


def test_markdown_of_a_steady_cluster_folds_nothing():
    output = render.markdown(steady())
    assert "<details>" not in output
    assert "**No changes. The clusters match the spec.**" in output
    assert summary_rows(output)[0][-1] == "no changes"


def test_markdown_shows_blocking_findings_above_the_table_and_marks_the_cluster():
    plan_document = document(*blocked().clusters, *fleet(1).clusters)
    output = render.markdown(plan_document)
    error = "**Error: 1 finding blocks this plan; nothing will change until it is resolved.**"
    assert output.index(error) < output.index("| cluster | operation |")
    assert output.index(f"- c1: `clusterCA`: spec pins {cert_fp('foreign')}") < output.index("| cluster | operation |")
    assert [row[-1] for row in summary_rows(output)[:2]] == ["**blocked**", "yes"]
    assert "- **blocking** `clusterCA`: spec pins" in output  # in the cluster's details as well


def test_markdown_escapes_pipes_and_html_in_cells():
    base = rotation().clusters[0]
    # Names are DNS names once a plan is read; the renderer escapes whatever it is given all the same.
    first = base.actions[0].model_copy(update={"site": NodeFile.model_construct(node="a|b", path="/x", form="pem"),
                                               "reason": "see <details> | here"})
    plan_document = document(base.model_copy(update={"cluster": "c|1", "actions": [first, *base.actions[1:]]}))
    output = render.markdown(plan_document)
    assert summary_rows(output)[0][0] == "c\\|1"
    assert "| `a\\|b:/x` |" in output
    assert "see &lt;details> \\| here |" in output
    assert_well_formed(output)


@pytest.mark.parametrize("shape", [
    {"clusters": 20, "workers": 50},                  # 5,000+ actions over many clusters
    {"clusters": 1, "workers": 3000},                 # one phase alone is over the limit
    {"clusters": 3000, "kind": steady},               # the table itself is over the limit
    {"clusters": 1500, "kind": blocked},              # so is the list of blocking findings
], ids=["many-clusters", "one-huge-cluster", "many-steady-clusters", "many-blocked-clusters"])
def test_markdown_of_a_huge_plan_stays_under_the_limit_and_says_what_it_left_out(shape):
    plan_document = fleet(**shape)
    output = render.markdown(plan_document, plan_file="fleet.plan.json")
    assert_well_formed(output)
    assert len(render.markdown(plan_document, limit=10**9)) > render.MARKDOWN_LIMIT  # it really was cut
    assert output.startswith(f"### careconcile apply plan\n\n**{summary_line(plan_document.actions())}**\n")
    shown = sum(1 for line in output.splitlines() if line.startswith("| `"))
    total = len(plan_document.actions())
    clusters = len(plan_document.clusters)
    note = re.search(r"^> \*\*Truncated\*\* to fit a pull-request comment \(65,000 characters\)\. Left out here: "
                     r"(?:([\d,]+) of ([\d,]+) actions, in )?([\d,]+) of ([\d,]+) clusters?\. The full plan is "
                     r"the saved plan file `fleet\.plan\.json`; `careconcile show fleet\.plan\.json` prints all "
                     r"of it\.\n\Z",
                     output, flags=re.MULTILINE)
    assert note, output[-600:]
    left_out, of_actions, _, of_clusters = (int((group or "0").replace(",", "")) for group in note.groups())
    assert (left_out, of_actions, of_clusters) == (total - shown, total, clusters)
    rows = summary_rows(output)
    if len(rows) - (clusters > 1) < clusters:  # the table was cut: one row says how many clusters it left out
        assert rows[-2][0] == f"... {clusters - (len(rows) - 2):,} more clusters, see the full plan"
    if clusters > 1:
        assert rows[-1][0] == f"**all {clusters:,} clusters**"
        assert rows[-1][-2] == f"**{total}**"


def test_markdown_summary_table_cut_keeps_the_clusters_that_change():
    quiet = fleet(3000, kind=steady).clusters
    changing = fleet(1).clusters[0].model_copy(update={"cluster": "the-one"})
    plan_document = document(*quiet[:2000], changing, *quiet[2000:])
    output = render.markdown(plan_document)
    assert_well_formed(output)
    rows = summary_rows(output)
    assert len(rows) < 3001
    assert ["the-one", "rotate"] == rows[[row[0] for row in rows].index("the-one")][:2]
    assert [row[0] for row in rows[:3]] == ["cluster-0000", "cluster-0001", "cluster-0002"]  # the plan's order
    assert rows[-1][-1] == "1 with changes"
    count = len(changing.actions)
    assert output.endswith(f"Left out here: {count} of {count} actions, in 3,001 of 3,001 clusters. To see all of "
                           "it, save the plan with `careconcile plan SPEC --out PLANFILE`, upload the file beside "
                           "this comment (for example as a CI artifact) and run `careconcile show PLANFILE`.\n")


def test_markdown_is_cut_only_when_the_whole_plan_does_not_fit():
    plan_document = fleet(4, workers=3)
    whole = render.markdown(plan_document, limit=10**9)
    assert "Truncated" not in whole
    assert render.markdown(plan_document, limit=len(whole)) == whole
    cut = render.markdown(plan_document, limit=len(whole) - 1)
    assert "> **Truncated**" in cut
    assert_well_formed(cut, limit=len(whole) - 1)
    # What it keeps is the whole plan's beginning, cut at a block's end.
    kept = cut.rsplit("\n> **Truncated**", 1)[0]
    assert whole.startswith(kept) and whole[len(kept):].startswith("\n")


def test_markdown_keeps_whole_blocks_under_any_limit():
    plan_document = fleet(3, workers=4)
    for limit in range(2000, 16000, 250):
        output = render.markdown(plan_document, limit=limit)
        assert_well_formed(output, limit=limit)
        assert ("> **Truncated**" in output) == (limit < len(render.markdown(plan_document, limit=10**9)))


def test_markdown_note_without_a_plan_file_says_how_to_save_one():
    output = render.markdown(fleet(1, workers=3000))
    assert output.endswith("To see all of it, save the plan with `careconcile plan SPEC --out PLANFILE`, upload the "
                           "file beside this comment (for example as a CI artifact) and run "
                           "`careconcile show PLANFILE`.\n")
    assert "saved plan file" not in output


def test_markdown_note_quotes_a_plan_file_with_spaces():
    output = render.markdown(fleet(1, workers=3000), plan_file="plans/my plan.json")
    assert ("the saved plan file `plans/my plan.json`; `careconcile show 'plans/my plan.json'` prints all of it."
            in output)


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
    data["format_version"] = 1  # string targets and params: what this careconcile no longer applies
    path = write(tmp_path, json.dumps(data))
    with pytest.raises(PlanFileError, match="format_version 1") as refused:
        load_plan(path)
    assert str(path) in refused.value.message
    assert "plan again" in refused.value.hint


def test_load_plan_refuses_a_plan_without_format_version(tmp_path):
    data = json.loads(render.as_json(rotation()))
    del data["format_version"]
    path = write(tmp_path, json.dumps(data))
    with pytest.raises(PlanFileError, match="format_version missing or not a number") as refused:
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
    with pytest.raises(PlanFileError, match=r"not a plan \(a JSON object with format_version\)") as refused:
        load_plan(path)
    assert str(path) in refused.value.message


def test_load_plan_of_a_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(PlanFileError, match="cannot read the plan") as refused:
        load_plan(path)
    assert str(path) in refused.value.message
