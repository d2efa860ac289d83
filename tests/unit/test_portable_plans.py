"""Saved plans that travel (issue 14): the plan holds the spec's text and digest, apply plans
from that text, and the spec's relative paths resolve against the spec's directory as found
at apply time (``--spec FILE``, or the spec's path from the directory `plan` ran in, taken
from apply's working directory). The same with real clusters and two git clones is
tests/integration/test_rotation.py's over_ssh fixture."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.core import render
from reconciler.core.plan import FORMAT_VERSION
from reconciler.errors import PlanFileError, StalePlanError
from reconciler.shell import session
from reconciler.shell.nodes import node_files
from reconciler.shell.specfile import load_spec

SPEC = """\
apiVersion: careconcile.dev/v1alpha1
kind: CASpec
metadata: {name: portable}
spec:
  clusters:
  - name: c1
    kubeconfig: ../secrets/c1.kubeconfig   # relative: to this file's directory, specs/
    management: null
    nodes:
    - name: w1
      role: worker
      access:
        ssh:
          host: 10.0.12.9
          user: deploy
          keyFile: keys/id_ed25519
          knownHostsFile: known_hosts
          root: /
  - name: c2
    kubeconfig: ~/.kube/c2.yaml
"""


def _checkout(root: Path) -> Path:
    """A checkout of the spec repository: specs/fleet.yaml, with the files it names beside it."""
    (root / "specs").mkdir(parents=True)
    (root / "specs" / "fleet.yaml").write_text(SPEC)
    return root / "specs" / "fleet.yaml"


def _saved_plan(checkout: Path, monkeypatch) -> Path:
    """`plan specs/fleet.yaml --out plan.json` at the top of ``checkout`` (no cluster is
    reached: a plan of no cluster holds the spec all the same)."""
    spec = _checkout(checkout)
    monkeypatch.chdir(checkout)
    plan = session.make_plan(load_spec(Path("specs/fleet.yaml")), {})
    planfile = checkout / "plan.json"
    planfile.write_text(render.as_json(plan))
    assert spec.is_file()
    return planfile


def test_the_plan_holds_the_specs_bytes_and_their_digest_and_its_path_from_the_working_directory(tmp_path,
                                                                                                  monkeypatch):
    planfile = _saved_plan(tmp_path / "a", monkeypatch)
    saved = json.loads(planfile.read_text())
    assert saved["format_version"] == FORMAT_VERSION == 3
    assert saved["spec_text"].encode() == (tmp_path / "a/specs/fleet.yaml").read_bytes()
    assert saved["spec_digest"] == "sha256:" + hashlib.sha256(SPEC.encode()).hexdigest()
    assert saved["spec_relative_path"] == "specs/fleet.yaml"
    assert saved["spec_path"] == str(tmp_path / "a/specs/fleet.yaml")


def test_a_plan_made_in_one_checkout_resolves_relative_paths_in_another(tmp_path, monkeypatch):
    planfile = _saved_plan(tmp_path / "a", monkeypatch)
    _checkout(tmp_path / "b")
    shutil.copy(planfile, tmp_path / "b" / "plan.json")
    shutil.rmtree(tmp_path / "a")  # nothing of the first checkout is left
    monkeypatch.chdir(tmp_path / "b")
    plan = session.load_plan(Path("plan.json"))
    loaded = session.saved_spec(plan, Path("plan.json"))
    assert loaded.path == tmp_path / "b/specs/fleet.yaml" and loaded.digest == plan.spec_digest
    c1, c2 = loaded.document.spec.clusters
    assert loaded.kubeconfig_path(c1) == tmp_path / "b/specs/../secrets/c1.kubeconfig"
    assert loaded.kubeconfig_path(c2) == Path.home() / ".kube/c2.yaml"  # '~' expands, wherever the spec is
    ssh = node_files(c1.nodes[0], loaded.base)
    assert ssh.key_file == tmp_path / "b/specs/keys/id_ed25519"
    assert ssh.known_hosts_file == tmp_path / "b/specs/known_hosts"


def test_spec_names_the_directory_relative_paths_resolve_against(tmp_path, monkeypatch):
    planfile = _saved_plan(tmp_path / "a", monkeypatch)
    elsewhere = tmp_path / "elsewhere" / "fleet.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(SPEC)
    monkeypatch.chdir(tmp_path)  # no spec at ./specs/fleet.yaml from here
    plan = session.load_plan(planfile)
    loaded = session.saved_spec(plan, planfile, elsewhere)
    assert loaded.resolve("keys/id_ed25519") == tmp_path / "elsewhere/keys/id_ed25519"


def test_a_spec_given_with_spec_that_is_not_the_plans_is_refused_naming_both_digests(tmp_path, monkeypatch, capsys):
    planfile = _saved_plan(tmp_path / "a", monkeypatch)
    other = tmp_path / "other.yaml"
    other.write_text(SPEC.replace("c2", "c3"))
    other_digest = "sha256:" + hashlib.sha256(other.read_bytes()).hexdigest()
    planned = json.loads(planfile.read_text())["spec_digest"]
    assert main(["apply", str(planfile), "--spec", str(other), "--workspace", str(tmp_path / "ws")]) == 1
    err = capsys.readouterr().err
    assert f"{other}: not the spec the plan {planfile} was made from" in err
    assert other_digest in err and planned in err
    assert not (tmp_path / "ws").exists()  # refused before anything was opened


def test_a_spec_file_at_the_specs_place_that_is_another_spec_makes_the_plan_stale(tmp_path, monkeypatch):
    planfile = _saved_plan(tmp_path / "a", monkeypatch)
    (tmp_path / "a/specs/fleet.yaml").write_text(SPEC + "# a later commit\n")
    plan = session.load_plan(planfile)
    with pytest.raises(StalePlanError, match=r"the spec .*/a/specs/fleet.yaml \(digest sha256:[0-9a-f]{64}\) is not "
                                             r"the one the plan .* was made from \(digest sha256:"):
        session.saved_spec(plan, planfile)


def test_relative_paths_with_no_spec_at_its_place_are_refused(tmp_path, monkeypatch):
    planfile = _saved_plan(tmp_path / "a", monkeypatch)
    monkeypatch.chdir(tmp_path)  # not the top of a checkout
    plan = session.load_plan(planfile)
    with pytest.raises(PlanFileError, match=r"relative paths \(c1/kubeconfig: \.\./secrets/c1.kubeconfig, "
                                            r"c1/w1.keyFile: keys/id_ed25519, c1/w1.knownHostsFile: known_hosts\)"
                                            rf".* not at {tmp_path}/specs/fleet.yaml") as refused:
        session.saved_spec(plan, planfile)
    assert "pass --spec FILE" in refused.value.hint


def test_without_relative_paths_the_plan_needs_no_spec_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.split("  - name: c1")[0] + "  - name: c2\n    kubeconfig: /etc/c2.yaml\n")
    plan = session.make_plan(load_spec(spec), {})
    spec.unlink()
    assert session.saved_spec(plan, tmp_path / "plan.json").document.spec.clusters[0].kubeconfig == "/etc/c2.yaml"


def test_an_edited_embedded_spec_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    planfile = _saved_plan(tmp_path / "a", monkeypatch)
    saved = json.loads(planfile.read_text())
    saved["spec_text"] = saved["spec_text"].replace("10.0.12.9", "10.0.12.66")
    planfile.write_text(json.dumps(saved))
    edited = "sha256:" + hashlib.sha256(saved["spec_text"].encode()).hexdigest()
    for command in (["apply", str(planfile), "--workspace", str(tmp_path / "ws")], ["show", str(planfile)]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert (f"{planfile}: the spec embedded in the plan (spec_text) does not match its digest: its text hashes "
                f"to {edited}, spec_digest says {saved['spec_digest']}; the plan file was edited") in err
    assert not (tmp_path / "ws").exists()


def test_a_plan_of_format_2_is_refused_with_why_and_what_to_do(tmp_path, monkeypatch):
    planfile = _saved_plan(tmp_path / "a", monkeypatch)
    saved = json.loads(planfile.read_text())
    for key in ("spec_text", "spec_relative_path"):
        del saved[key]
    saved["format_version"] = 2
    planfile.write_text(json.dumps(saved))
    with pytest.raises(PlanFileError, match="plan format_version 2; this careconcile reads format_version 3; a plan "
                                            "of format 2 names its spec by an absolute path") as refused:
        session.load_plan(planfile)
    assert "plan again" in refused.value.hint


def test_show_says_where_relative_paths_resolve_from_here(tmp_path, monkeypatch, capsys):
    planfile = _saved_plan(tmp_path / "a", monkeypatch)
    _checkout(tmp_path / "b")
    monkeypatch.chdir(tmp_path / "b")
    assert main(["show", str(planfile)]) == 0
    out = capsys.readouterr().out
    assert (f"made from {tmp_path}/a/specs/fleet.yaml. It has 3 relative paths; `apply` run from here resolves them "
            f"against {tmp_path}/b/specs (the directory of specs/fleet.yaml") in out
    assert "the spec file is there)" in out


def test_spec_goes_with_a_saved_plan_only(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    assert main(["apply", str(spec), "--spec", str(spec), "--workspace", str(tmp_path / "ws")]) == 64
    assert f"--spec goes with a saved plan; {spec} is a spec" in capsys.readouterr().err


def test_an_embedded_spec_over_the_specs_size_limit_is_refused(tmp_path, monkeypatch):
    planfile = _saved_plan(tmp_path / "a", monkeypatch)
    saved = json.loads(planfile.read_text())
    saved["spec_text"] = SPEC + "#" * (4 * 1024 * 1024)
    saved["spec_digest"] = "sha256:" + hashlib.sha256(saved["spec_text"].encode()).hexdigest()
    planfile.write_text(json.dumps(saved))
    with pytest.raises(PlanFileError, match=r"the spec embedded in the plan \(spec_text\) is 4,194,[0-9]{3} bytes; a "
                                            r"spec may be at most 4,194,304 bytes"):
        session.load_plan(planfile)
