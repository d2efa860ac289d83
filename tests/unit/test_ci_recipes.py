"""The CI recipes in docs/recipes/: every careconcile command they run exists with those
flags, their shell steps do what docs/ci.md says, the CronJob's pieces fit together, and
docs/ci.md shows each recipe verbatim. (tests/integration/test_ci_recipes.py sends the
CronJob and its RBAC to a real API server.)"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.cli import build_parser
from reconciler.core import metrics
from reconciler.shell.specfile import load_spec

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "docs/recipes"
WORKFLOW = RECIPES / "github-actions.yaml"
CRONJOB = RECIPES / "drift-cronjob.yaml"
CI_DOC = ROOT / "docs/ci.md"

PLACEHOLDER = "PLACEHOLDER"
_OPERATORS = {"|", "||", "&&", ";", "&", "(", ")", "<", ">", ">>", "<<"}


def load(path: Path):
    return YAML(typ="safe").load(path.read_text())


def workflow_steps() -> list[tuple[str, dict]]:
    return [(job_name, step) for job_name, job in load(WORKFLOW)["jobs"].items() for step in job["steps"]]


def run_scripts() -> list[tuple[str, str, str]]:
    """(job, step name, script) of every `run:` step."""
    return [(job, step.get("name", ""), step["run"]) for job, step in workflow_steps() if "run" in step]


def substituted(script: str) -> str:
    """``${{ expr }}`` (GitHub's) and ``$VAR``/``${VAR}`` (the shell's) as placeholders."""
    script = re.sub(r"\$\{\{.*?\}\}", PLACEHOLDER, script)
    return re.sub(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)", PLACEHOLDER, script)


def simple_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script: lines joined at backslashes, split at
    operators, redirections and $(...) taken apart, leading VAR=value assignments dropped."""
    script = substituted(script).replace("\\\n", " ")
    script = script.replace("$(", " ( ")  # a command substitution holds a command of its own
    commands = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        redirect = False
        for token in list(lexer) + [";"]:
            if token in _OPERATORS or set(token) <= set("|&;()<>"):
                if token.endswith((">", "<")):
                    redirect = True  # the next word is a file, not an argument
                    continue
                if words:
                    commands.append(words)
                words = []
                continue
            if redirect:
                redirect = False
                continue
            if not words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", token):
                continue
            words.append(token)
    return commands


def careconcile_invocations(commands: list[list[str]]) -> list[list[str]]:
    """The arguments of each command that runs careconcile (by name or by path)."""
    return [words[1:] for words in commands if words and Path(words[0]).name == "careconcile"]


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def assert_is_a_real_invocation(arguments: list[str], where: str) -> argparse.Namespace:
    """parse_args accepts it, and every flag is spelled as the subcommand defines it
    (argparse would also take an abbreviation such as --auto)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            namespace = build_parser().parse_args(arguments)
    except SystemExit:
        raise AssertionError(f"{where}: `careconcile {' '.join(arguments)}` does not parse: "
                             f"{stderr.getvalue().strip()}") from None
    options = {option for action in subcommand_parsers()[arguments[0]]._actions for option in action.option_strings}
    for argument in arguments[1:]:
        if argument.startswith("-"):
            flag = argument.split("=", 1)[0]
            assert flag in options, f"{where}: careconcile {arguments[0]} has no option {flag}"
    return namespace


# --- the shell-splitting itself --------------------------------------------------------

def test_invocations_are_found_through_operators_redirections_and_substitutions():
    script = textwrap.dedent("""
        set +e
        X=1 careconcile plan spec.yaml --format markdown > plan.md  # a comment
        code=$(careconcile drift a.yaml b.yaml || true)
        "$RUNNER_TEMP/venv/bin/careconcile" apply ${{ env.PLAN }} \\
          --auto-approve && echo done
    """)
    assert careconcile_invocations(simple_commands(script)) == [
        ["plan", "spec.yaml", "--format", "markdown"],
        ["drift", "a.yaml", "b.yaml"],
        ["apply", PLACEHOLDER, "--auto-approve"],
    ]


def test_a_misspelt_or_abbreviated_flag_is_caught():
    assert_is_a_real_invocation(["apply", "plan.json", "--auto-approve"], "ok")
    for wrong in (["apply", "plan.json", "--auto"], ["apply", "plan.json", "--auto-aprove"],
                  ["plan", "spec.yaml", "--format", "html"], ["plan"]):
        with pytest.raises(AssertionError):
            assert_is_a_real_invocation(wrong, "test")


# --- the GitHub Actions workflow -------------------------------------------------------

def test_every_careconcile_command_of_the_workflow_exists_with_its_flags():
    found = {}
    for job, name, script in run_scripts():
        for arguments in careconcile_invocations(simple_commands(script)):
            namespace = assert_is_a_real_invocation(arguments, f"{WORKFLOW.name} job {job} step {name!r}")
            found[(job, arguments[0])] = namespace
    assert set(found) == {("plan", "plan"), ("apply", "apply")}
    plan = found[("plan", "plan")]
    assert (plan.format, str(plan.out), plan.detailed_exitcode) == ("markdown", "plan.json", True)
    apply = found[("apply", "apply")]
    assert (str(apply.target), apply.auto_approve) == ("plan.json", True)


def test_the_applied_plan_is_the_artifact_the_pull_request_uploaded():
    steps = dict(((job, step.get("uses", "").split("@")[0]), step) for job, step in workflow_steps())
    upload = steps[("plan", "actions/upload-artifact")]["with"]
    assert "plan.json" in upload["path"].split()
    download = next(step["run"] for job, step in workflow_steps() if job == "apply" and "gh run download" in
                    step.get("run", ""))
    assert f"--name {upload['name']} " in download
    assert "--event pull_request" in download and "--status success" in download
    workflow = load(WORKFLOW)
    events = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as true
    assert set(events) == {"pull_request", "push"}
    assert events["push"]["branches"] == ["main"]
    assert "github.event_name == 'push'" in workflow["jobs"]["apply"]["if"]


def _step(job: str, name: str) -> str:
    return next(script for j, n, script in run_scripts() if j == job and n == name)


def test_the_kubeconfig_from_the_secret_is_a_0600_file(tmp_path):
    script = _step("plan", "Write the kubeconfig the spec names")
    content = "apiVersion: v1\nkind: Config\n"
    subprocess.run(["bash", "-e", "-c", script], check=True, env={
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "KUBECONFIG_CONTENT": content})
    written = tmp_path / ".kube/careconcile.yaml"
    assert written.read_text() == content + "\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / ".kube").stat().st_mode) == 0o700
    assert _step("apply", "Write the kubeconfig the spec names") == script


@pytest.mark.parametrize(("exit_code", "step_succeeds"), [(0, True), (2, True), (1, False), (64, False)])
def test_the_plan_step_fails_only_when_careconcile_fails(tmp_path, exit_code, step_succeeds):
    """Run the step as GitHub does (bash -e), with a careconcile that exits as told."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "careconcile"
    fake.write_text(f"#!/bin/sh\necho '# plan'\nexit {exit_code}\n")
    fake.chmod(0o755)
    result = subprocess.run(["bash", "-e", "-c", _step("plan", "Plan")], cwd=tmp_path, capture_output=True,
                            text=True, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert (result.returncode == 0) == step_succeeds, result.stdout + result.stderr
    assert (tmp_path / "plan.md").read_text() == "# plan\n"


# --- the CronJob ----------------------------------------------------------------------

def cronjob_objects() -> list[dict]:
    return [obj for obj in YAML(typ="safe").load_all(CRONJOB.read_text()) if obj]


def one(kind: str) -> dict:
    (obj,) = [obj for obj in cronjob_objects() if obj["kind"] == kind]
    return obj


def pod_spec() -> dict:
    return one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_the_cronjob_runs_drift_with_real_flags():
    (container,) = pod_spec()["containers"]
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    assert Path(argv[0]).name == "careconcile"
    namespace = assert_is_a_real_invocation(argv[1:], f"{CRONJOB.name} CronJob")
    assert namespace.command == "drift"
    assert [str(p) for p in namespace.specs] == ["/config/spec.yaml"]
    assert (namespace.format, str(namespace.metrics_file)) == ("json", "/textfile/careconcile.prom")


def test_the_rbac_only_reads():
    for obj in cronjob_objects():
        for rule in obj.get("rules") or []:
            assert set(rule["verbs"]) <= {"get", "list"}, rule
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule


def test_every_binding_names_the_cronjobs_service_account_and_a_role_of_the_recipe():
    account = one("ServiceAccount")["metadata"]
    roles = {(obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))
             for obj in cronjob_objects() if obj["kind"] in ("Role", "ClusterRole")}
    bindings = [obj for obj in cronjob_objects() if obj["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert len(bindings) == len(roles)
    for binding in bindings:
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], ref["name"], namespace) in roles
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                        "namespace": account["namespace"]}]
    assert pod_spec()["serviceAccountName"] == account["name"]
    assert one("CronJob")["metadata"]["namespace"] == account["namespace"]


def test_the_spec_in_the_configmap_is_valid_in_cluster_and_matches_the_pods_mounts(tmp_path):
    configmap = one("ConfigMap")
    path = tmp_path / "spec.yaml"
    path.write_text(configmap["data"]["spec.yaml"])
    (cluster,) = load_spec(path).document.spec.clusters
    assert cluster.in_cluster and cluster.kubeconfig is None
    (node,) = cluster.nodes
    assert node.role == "control-plane"
    pod = pod_spec()
    assert pod["nodeSelector"]["kubernetes.io/hostname"] == node.name
    assert "node-role.kubernetes.io/control-plane" in pod["nodeSelector"]
    assert any(t["key"] == "node-role.kubernetes.io/control-plane" for t in pod["tolerations"])
    (container,) = pod["containers"]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    root = node.access.local.root
    for host_dir in ("/etc/kubernetes", "/var/lib/kubelet/pki"):  # the node's files careconcile reads
        mount = mounts[root + host_dir]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["hostPath"]["path"] == host_dir
    spec_mount = mounts["/config"]
    assert volumes[spec_mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "hostPath" in volumes[mounts["/textfile"]["name"]]  # node-exporter's directory on the node


def test_the_pod_is_as_tight_as_reading_root_owned_keys_allows():
    pod = pod_spec()
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert sorted(writable) == ["/textfile", "/workspace"]
    assert one("CronJob")["spec"]["concurrencyPolicy"] == "Forbid"


# --- docs/ci.md -----------------------------------------------------------------------

@pytest.mark.parametrize("recipe", [WORKFLOW, CRONJOB], ids=lambda p: p.name)
def test_docs_ci_shows_each_recipe_verbatim(recipe):
    assert f"```yaml\n{recipe.read_text()}```\n" in CI_DOC.read_text()


def test_every_metric_docs_ci_names_is_one_drift_writes():
    named = set(re.findall(r"careconcile_[a-z_]+", CI_DOC.read_text()))
    assert named and named <= set(metrics.METRICS)


def test_the_readme_links_the_ci_recipes():
    assert "(docs/ci.md)" in (ROOT / "README.md").read_text()
