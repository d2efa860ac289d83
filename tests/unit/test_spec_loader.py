import json
import textwrap
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.cli import schema as schema_command
from reconciler.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, SpecError
from reconciler.shell.specfile import load_spec

ROOT = Path(__file__).resolve().parents[2]

VALID = """\
apiVersion: careconcile.dev/v1alpha1
kind: CASpec
metadata:
  name: demo
spec:
  clusters:
    - name: one
      kubeconfig: kubeconfigs/one.yaml
      nodes:
        - name: cp
          role: control-plane
          access:
            local:
              root: /
        - name: w1
          role: worker
          access:
            local:
              root: /srv/w1
"""


def write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path):
    with pytest.raises(SpecError) as error:
        load_spec(path)
    return error.value.message, error.value.problems


def test_a_valid_spec_loads():
    path = ROOT / "specs/fleet-with-defaults.yaml"
    loaded = load_spec(path)
    assert loaded.path == path
    assert [cluster.name for cluster in loaded.document.spec.clusters] == ["prod-eu", "staging"]


def test_every_error_is_reported_at_its_line_and_column(tmp_path):
    text = VALID.replace("      kubeconfig: kubeconfigs/one.yaml\n", "      kubeconfg: kubeconfigs/one.yaml\n")
    text = text.replace("role: worker", "role: master")
    path = write(tmp_path, text)
    message, problems = problems_of(path)
    assert message == f"{path}: invalid spec (3 errors)"
    assert problems == [
        # missing: at the mapping that lacks the field (the cluster, line 7 after "- ")
        f"{path}:7:7: spec.clusters[0].kubeconfig: required field is missing (or set inCluster: true, or name a management cluster)",
        # unknown: at the unknown key itself
        f"{path}:8:7: spec.clusters[0].kubeconfg: unknown field; did you mean 'kubeconfig'?",
        # wrong value: at the value
        f"{path}:16:17: spec.clusters[0].nodes[1].role: must be 'control-plane' or 'worker'; got 'master'",
    ]


def test_errors_of_an_object_point_at_the_object(tmp_path):
    text = VALID.replace("        - name: w1\n", "        - name: cp\n")
    text = text.replace("          access:\n            local:\n              root: /srv/w1\n", "          access: {}\n")
    _, problems = problems_of(write(tmp_path, text))
    assert problems == [
        f"{tmp_path}/spec.yaml:17:19: spec.clusters[0].nodes[1].access: "
        "set exactly one access transport (one of: local, ssh)",
    ]
    text = VALID.replace("        - name: w1\n", "        - name: cp\n")
    _, problems = problems_of(write(tmp_path, text))
    assert problems == [f"{tmp_path}/spec.yaml:7:7: spec.clusters[0]: node names must be unique; repeated: cp"]


def test_lifetimes_that_clash_only_with_defaults_point_at_the_cluster(tmp_path):
    text = VALID.replace("spec:\n  clusters:\n", "spec:\n  defaults:\n    authorities:\n      renewBefore: 400d\n"
                                                 "  clusters:\n")
    text += "      authorities:\n        clusterCA:\n          validity: 365d\n"
    _, problems = problems_of(write(tmp_path, text))
    assert problems == [
        f"{tmp_path}/spec.yaml:10:7: spec.clusters[0]: authorities.clusterCA, with defaults applied: "
        "renewBefore (400d) must be shorter than validity (365d); renewBefore (400d) must be shorter than "
        "leafValidity (365d): certificates are renewed that long before they expire",
    ]


def test_python_field_names_are_not_spec_field_names(tmp_path):
    text = VALID + "      authorities:\n        clusterCA:\n          renew_before: 30d\n"
    _, problems = problems_of(write(tmp_path, text))
    assert problems == [f"{tmp_path}/spec.yaml:22:11: spec.clusters[0].authorities.clusterCA.renew_before: "
                        "unknown field; did you mean 'renewBefore'?"]


def test_unknown_fields_without_a_close_match_list_the_known_ones(tmp_path):
    text = VALID.replace("metadata:\n  name: demo\n", "metadata:\n  name: demo\n  labels: {}\n")
    _, problems = problems_of(write(tmp_path, text))
    assert problems == [f"{tmp_path}/spec.yaml:5:3: metadata.labels: unknown field (known here: name)"]


def test_an_empty_value_is_reported_at_its_key(tmp_path):
    _, problems = problems_of(write(tmp_path, VALID + "      stateStore:\n"))
    assert problems == [f"{tmp_path}/spec.yaml:20:7: spec.clusters[0].stateStore: must be a mapping; got an empty value"]


def test_yaml_syntax_errors_have_a_position(tmp_path):
    path = write(tmp_path, VALID.replace("  name: demo\n", "  name: demo\n bad: indent\n"))
    message, problems = problems_of(path)
    assert message == f"{path}: invalid YAML"
    assert len(problems) == 1 and problems[0].startswith(f"{path}:5:2: expected <block end>")


def test_duplicate_keys_are_errors_at_the_second_key(tmp_path):
    path = write(tmp_path, VALID.replace("      kubeconfig: kubeconfigs/one.yaml\n",
                                         "      kubeconfig: kubeconfigs/one.yaml\n      kubeconfig: other\n"))
    _, problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith(f'{path}:9:7: found duplicate key "kubeconfig"')


@pytest.mark.parametrize(("text", "problem"), [
    ("", "1:1: the file holds no document; expected a CASpec mapping"),
    ("# only a comment\n", "1:1: the file holds no document; expected a CASpec mapping"),
    ("\n- a\n- b\n", "2:1: the document is a list; expected a CASpec mapping"),
    ("just text\n", "1:1: the document is a string; expected a CASpec mapping"),
])
def test_a_file_without_a_mapping_is_an_error(tmp_path, text, problem):
    path = write(tmp_path, text)
    _, problems = problems_of(path)
    assert problems == [f"{path}:{problem}"]


def test_an_unreadable_file_is_a_spec_error(tmp_path):
    path = tmp_path / "missing.yaml"
    message, problems = problems_of(path)
    assert message == f"{path}: cannot read the spec"
    assert problems == [f"{path}:1:1: cannot read: No such file or directory"]
    path.write_bytes(b"apiVersion: x\nkind: \xff\n")
    _, problems = problems_of(path)
    assert problems == [f"{path}:2:7: not UTF-8 text"]


def test_a_relative_kubeconfig_is_relative_to_the_spec_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    more_clusters = [
        "    - name: two",
        "      kubeconfig: ~/.kube/two.yaml",
        "    - name: three",
        "      kubeconfig: /etc/kubernetes/admin.conf",
    ]
    text = VALID + "\n".join(more_clusters) + "\n"
    (tmp_path / "specs").mkdir()
    write(tmp_path, text, "specs/spec.yaml")
    monkeypatch.chdir(tmp_path)
    loaded = load_spec(Path("specs/spec.yaml"))
    assert loaded.path == tmp_path / "specs/spec.yaml"
    monkeypatch.chdir("/")  # the spec's directory counts, not the working directory
    one, two, three = loaded.document.spec.clusters
    assert loaded.kubeconfig_path(one) == tmp_path / "specs/kubeconfigs/one.yaml"
    assert loaded.kubeconfig_path(two) == tmp_path / "home/.kube/two.yaml"
    assert loaded.kubeconfig_path(three) == Path("/etc/kubernetes/admin.conf")


# --- the commands ----------------------------------------------------------------------

def test_validate_prints_each_valid_spec(capsys):
    specs = sorted((ROOT / "specs").glob("*.yaml"))
    assert main(["validate", *map(str, specs)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{ROOT}/specs/fleet-with-defaults.yaml: valid (2 clusters)",
                                f"{ROOT}/specs/kubeadm-single-node.yaml: valid (1 cluster)"]
    assert err == ""


def test_validate_reports_every_problem_on_stderr_and_exits_1(tmp_path, capsys):
    bad = write(tmp_path, VALID.replace("role: worker", "role: master"))
    good = write(tmp_path, VALID, "good.yaml")
    assert main(["validate", str(bad), str(good)]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out == f"{good}: valid (1 cluster)\n"
    assert err.splitlines() == [
        f"careconcile: error: {bad}: invalid spec (1 error)",
        f"{bad}:16:17: spec.clusters[0].nodes[1].role: must be 'control-plane' or 'worker'; got 'master'",
    ]


def test_validate_gathers_the_problems_of_several_invalid_files(tmp_path, capsys):
    first = write(tmp_path, VALID.replace("role: worker", "role: master"), "first.yaml")
    second = write(tmp_path, "", "second.yaml")
    assert main(["validate", str(first), str(second)]) == EXIT_ERROR
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "careconcile: error: 2 of 2 spec files are invalid (2 errors)"
    assert [line.split(":")[0] for line in err[1:]] == [str(first), str(second)]


def test_schema_prints_the_checked_in_spec_schema(capsys):
    assert main(["schema"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert printed == (ROOT / "schemas/spec.schema.json").read_text()
    assert json.loads(printed)["$id"] == "https://careconcile.dev/schemas/spec.schema.json"
    assert main(["schema", "spec"]) == EXIT_OK
    assert capsys.readouterr().out == printed


def test_a_schema_not_in_the_registry_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(schema_command, "schemas", lambda: {})
    assert main(["schema", "plan"]) == EXIT_USAGE
    assert "the plan schema is not available" in capsys.readouterr().err
