"""`careconcile pin`: fingerprints spliced into a spec's text with nothing else moved, and the CA it takes."""

from __future__ import annotations

import datetime as dt
import difflib
from pathlib import Path

import pytest

from reconciler.cli.pin import live_ca
from reconciler.core import pki
from reconciler.core.observed import ClusterObservation, ObservedRecord, StoredState
from reconciler.core.pinning import pin_fingerprints
from reconciler.errors import PlanConflictError, SpecError
from reconciler.shell.specfile import load_spec

OLD = "sha256:" + "0" * 64
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64

COMMENTED = f"""\
# yaml-language-server: $schema=../schemas/spec.schema.json
# The fleet's cluster CAs. Reviewed by the platform team; see RUNBOOK.md.

apiVersion: careconcile.dev/v1alpha1   # the format's version
kind: CASpec
metadata:
  name: "fleet"  # quoted on purpose

spec:
  # Settings every cluster shares.
  defaults:
    authorities:
      validity: '3650d'
      subject: {{commonName: "kubernetes", organizations: ['platform', "ops"]}}

  clusters:
    # Production, rotated every year.
    - name: prod
      kubeconfig: "kubeconfigs/prod.yaml"   # admin credentials

      nodes:
        - name: cp-1
          role: control-plane   # holds pki/ca.key
          access:
            local:
              root: /srv/nodes/cp-1
      authorities:
        clusterCA:
          rotation: 3   # raised on 2024-05-01
          fingerprint: {OLD}   # pinned after rotation 3
          # keep this comment below the pin

    # Staging has never been pinned.
    - name: staging
      kubeconfig: 'kubeconfigs/staging.yaml'
      stateStore:
        workspace: {{}}   # no Secret on staging

# end of the fleet
"""


def changed_lines(before: str, after: str) -> list[str]:
    """The lines that differ, as ndiff shows them ('- old' and '+ new'); every other line
    of ``after`` is the same line of ``before``, byte for byte."""
    return [line for line in difflib.ndiff(before.splitlines(keepends=True), after.splitlines(keepends=True))
            if line[:1] in "+-"]


def test_pin_changes_only_the_fingerprint_lines_of_a_commented_spec(tmp_path):
    pinned = pin_fingerprints(COMMENTED, "fleet.yaml", {"prod": A, "staging": B})
    assert changed_lines(COMMENTED, pinned) == [
        f"-           fingerprint: {OLD}   # pinned after rotation 3\n",
        f"+           fingerprint: {A}   # pinned after rotation 3\n",
        "+       authorities:\n",
        "+         clusterCA:\n",
        f"+           fingerprint: {B}\n",
    ]
    # The staging block lands after its last value, before the comments that close the file.
    assert pinned.endswith(f"        workspace: {{}}   # no Secret on staging\n"
                           f"      authorities:\n        clusterCA:\n          fingerprint: {B}\n\n# end of the fleet\n")
    # ... and the result is a valid spec that says what was pinned.
    spec = tmp_path / "fleet.yaml"
    spec.write_text(pinned)
    clusters = {c.name: c for c in load_spec(spec).document.spec.clusters}
    assert clusters["prod"].authorities.cluster_ca.fingerprint == A
    assert clusters["prod"].authorities.cluster_ca.rotation == 3
    assert clusters["staging"].authorities.cluster_ca.fingerprint == B


def test_pinning_again_changes_nothing():
    pinned = pin_fingerprints(COMMENTED, "fleet.yaml", {"prod": A, "staging": B})
    assert pin_fingerprints(pinned, "fleet.yaml", {"prod": A, "staging": B}) == pinned
    assert pin_fingerprints(pinned, "fleet.yaml", {"staging": B}) == pinned


def test_a_value_already_pinned_is_left_as_written():
    text = COMMENTED.replace(f"fingerprint: {OLD}", f"fingerprint: '{A}'")
    assert pin_fingerprints(text, "fleet.yaml", {"prod": A}) is text


def test_one_cluster_only_leaves_the_others_alone():
    pinned = pin_fingerprints(COMMENTED, "fleet.yaml", {"staging": B})
    assert changed_lines(COMMENTED, pinned) == [
        "+       authorities:\n", "+         clusterCA:\n", f"+           fingerprint: {B}\n"]


@pytest.mark.parametrize("quote", ["'", '"'])
def test_a_quoted_value_keeps_its_quotes_and_its_comment(quote):
    text = COMMENTED.replace(f"fingerprint: {OLD}", f"fingerprint: {quote}{OLD}{quote}")
    pinned = pin_fingerprints(text, "fleet.yaml", {"prod": A})
    assert changed_lines(text, pinned) == [
        f"-           fingerprint: {quote}{OLD}{quote}   # pinned after rotation 3\n",
        f"+           fingerprint: {quote}{A}{quote}   # pinned after rotation 3\n",
    ]


def test_an_empty_value_gets_the_fingerprint_before_its_comment():
    text = COMMENTED.replace(f"fingerprint: {OLD}", "fingerprint:")
    pinned = pin_fingerprints(text, "fleet.yaml", {"prod": A})
    assert changed_lines(text, pinned) == [
        "-           fingerprint:   # pinned after rotation 3\n",
        f"+           fingerprint: {A}   # pinned after rotation 3\n",
    ]


def test_a_missing_fingerprint_key_follows_the_mappings_last_line_at_its_indentation():
    text = COMMENTED.replace(f"          fingerprint: {OLD}   # pinned after rotation 3\n", "")
    pinned = pin_fingerprints(text, "fleet.yaml", {"prod": A})
    assert changed_lines(text, pinned) == [f"+           fingerprint: {A}\n"]
    assert f"rotation: 3   # raised on 2024-05-01\n          fingerprint: {A}\n          # keep" in pinned


def test_a_missing_clustera_key_uses_the_files_own_indentation_step():
    text = """\
spec:
    clusters:
      - name: wide
        kubeconfig: k.yaml
        stateStore:
            secret: {}
        authorities: {}
      - name: wider
        kubeconfig: k.yaml
        authorities:
            # no clusterCA yet
            other: 1
"""
    pinned = pin_fingerprints(text, "wide.yaml", {"wide": A, "wider": B})
    assert changed_lines(text, pinned) == [
        "-         authorities: {}\n",
        f"+         authorities: {{clusterCA: {{fingerprint: {A}}}}}\n",
        "+             clusterCA:\n",
        f"+                 fingerprint: {B}\n",
    ]


@pytest.mark.parametrize(("written", "pinned"), [
    ("clusterCA: {rotation: 2}", f"clusterCA: {{rotation: 2, fingerprint: {A}}}"),
    ("clusterCA: {rotation: 2, }", f"clusterCA: {{rotation: 2, fingerprint: {A}, }}"),
    ("clusterCA: {}", f"clusterCA: {{fingerprint: {A}}}"),
    (f"clusterCA: {{fingerprint: {OLD}, rotation: 2}}", f"clusterCA: {{fingerprint: {A}, rotation: 2}}"),
])
def test_a_flow_mapping_is_rewritten_inside_its_braces_only(written, pinned):
    text = f"spec:\n  clusters:\n    - name: c\n      authorities:\n        {written}   # flow\n"
    assert pin_fingerprints(text, "flow.yaml", {"c": A}) == text.replace(written, pinned)


def test_a_cluster_written_as_a_flow_mapping():
    text = "spec:\n  clusters:\n  - {name: c, kubeconfig: k.yaml}  # one line\n"
    assert pin_fingerprints(text, "flow.yaml", {"c": A}) == (
        f"spec:\n  clusters:\n  - {{name: c, kubeconfig: k.yaml, authorities: {{clusterCA: {{fingerprint: {A}}}}}}}"
        "  # one line\n")


def test_crlf_line_endings_stay_crlf():
    text = COMMENTED.replace("\n", "\r\n")
    pinned = pin_fingerprints(text, "fleet.yaml", {"prod": A, "staging": B})
    assert pinned == pin_fingerprints(COMMENTED, "fleet.yaml", {"prod": A, "staging": B}).replace("\n", "\r\n")
    assert "\n" not in pinned.replace("\r\n", "")


def test_a_file_without_a_final_line_break_gets_none():
    text = "spec:\n  clusters:\n    - name: c\n      authorities:\n        clusterCA:\n          rotation: 1"
    assert pin_fingerprints(text, "s.yaml", {"c": A}) == text + f"\n          fingerprint: {A}"


def test_a_block_scalar_is_the_last_value():
    text = ("spec:\n  clusters:\n    - name: c\n      authorities:\n        clusterCA:\n"
            "          subject:\n            commonName: |\n              kubernetes\n\n# end\n")
    pinned = pin_fingerprints(text, "s.yaml", {"c": A})
    assert changed_lines(text, pinned) == [f"+           fingerprint: {A}\n"]


def test_an_unknown_cluster_is_an_error_naming_it_and_the_file():
    with pytest.raises(SpecError) as error:
        pin_fingerprints(COMMENTED, "fleet.yaml", {"prod": A, "qa": B})
    assert "qa" in error.value.message and "fleet.yaml" in error.value.message
    assert error.value.problems == ["fleet.yaml:18:5: spec.clusters: no cluster named 'qa' (clusters: prod, staging)"]


@pytest.mark.parametrize(("text", "where", "message"), [
    ("spec:\n  clusters:\n    - name: c\n      authorities:\n        clusterCA:\n          fingerprint: |\n"
     "            sha256:00\n", "s.yaml:6:24: spec.clusters[0].authorities.clusterCA.fingerprint", "block scalar"),
    ("x: &X {rotation: 1}\nspec:\n  clusters:\n    - name: c\n      authorities:\n        clusterCA: *X\n",
     "s.yaml:6:9: spec.clusters[0].authorities.clusterCA", "alias"),
    ("spec:\n  clusters:\n    - name: c\n      authorities: [1]\n",
     "s.yaml:4:20: spec.clusters[0].authorities", "must be a mapping"),
    # the clusters share one authorities mapping through an anchor: pinning one would pin both
    ("spec:\n  clusters:\n    - name: c\n      authorities: &shared\n        clusterCA:\n          rotation: 1\n"
     "    - name: d\n      authorities: *shared\n", "s.yaml:6:22", "could not edit this file safely"),
])
def test_what_pin_cannot_edit_safely_is_refused_with_a_position(text, where, message):
    with pytest.raises(SpecError) as error:
        pin_fingerprints(text, "s.yaml", {"c": A})
    [problem] = error.value.problems
    assert problem.startswith(where + ":") and message in problem


def test_a_merge_key_is_kept_and_overridden_by_the_pin():
    text = ("x: &X\n  rotation: 1\n  fingerprint: " + OLD + "\nspec:\n  clusters:\n    - name: c\n"
            "      authorities:\n        clusterCA:\n          <<: *X\n")
    pinned = pin_fingerprints(text, "s.yaml", {"c": A})
    assert changed_lines(text, pinned) == [f"+           fingerprint: {A}\n"]


def test_the_example_specs_pin_without_other_changes():
    for path in sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.yaml")):
        text = path.read_text()
        names = [c.name for c in load_spec(path).document.spec.clusters]
        pinned = pin_fingerprints(text, path.name, dict.fromkeys(names, A))
        assert all(line.startswith(("+", "-")) and ("fingerprint" in line or line.strip(" +-\n") in
                   ("authorities:", "clusterCA:")) for line in changed_lines(text, pinned)), path.name
        assert pin_fingerprints(pinned, path.name, dict.fromkeys(names, A)) == pinned


def test_a_malformed_fingerprint_is_a_programming_error():
    with pytest.raises(ValueError):
        pin_fingerprints(COMMENTED, "fleet.yaml", {"prod": "sha256:ABC"})


# --- the CA that `careconcile pin` takes from a cluster ---------------------------------

def _ca(name: str):
    return pki.new_ca(name, now=dt.datetime.now(dt.timezone.utc), key=pki.KeySpec("ECDSA", 256)).cert


def _observed(records, state=None) -> ClusterObservation:
    return ClusterObservation(cluster="prod", authority="clusterCA", records=tuple(records), bundles=(), leaves=(),
                              components=(), endpoints=(), state=state or StoredState())


def test_the_pinned_ca_is_the_one_every_control_plane_holds():
    ca = _ca("one")
    observed = _observed([ObservedRecord("cp-1", ca, "ECDSA-256"), ObservedRecord("cp-2", ca, "ECDSA-256")])
    assert live_ca(observed) == pki.fingerprint(ca)


@pytest.mark.parametrize(("case", "message"), [
    ("rotating", "a rotation is in progress"),
    ("disagree", "control-plane nodes hold different CAs of record: cp-1=sha256:"),
    ("no-match", "no control-plane node holds a CA key that matches its CA certificate: cp-2"),
    ("no-records", "no control-plane nodes in the spec"),
])
def test_no_ca_is_pinned_from_a_cluster_that_has_no_single_ca_of_record(case, message):
    one, two = _ca("one"), _ca("two")
    records = {
        "rotating": [ObservedRecord("cp-1", one, "ECDSA-256")],
        "disagree": [ObservedRecord("cp-1", one, "ECDSA-256"), ObservedRecord("cp-2", two, "ECDSA-256")],
        "no-match": [ObservedRecord("cp-1", one, "ECDSA-256"), ObservedRecord("cp-2", None, "ECDSA-256")],
        "no-records": [],
    }[case]
    state = StoredState(rotation=1, target=two, previous=one) if case == "rotating" else None
    with pytest.raises(PlanConflictError) as error:
        live_ca(_observed(records, state))
    assert message in str(error.value) and "cluster prod" in str(error.value)
