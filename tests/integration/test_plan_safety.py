"""Saved plans that went stale, concurrent applies, --until and rollback, on one sandbox.

careconcile reaches it as most managed clusters are reached: through an exec credential
plugin (a real script), which hands out the client certificate of the control plane's
admin.conf, so that when a rotation reissues that certificate the plugin gives the new one
(after a 401, careconcile runs it again). It acts as the user careconcile-busy
(impersonation, `as:`), for whom the API server's priority and fairness can be made to
answer 429."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.core.plan import FORMAT_VERSION
from reconciler.shell.kube import KubeconfigClient
from reconciler.shell.lock import ClusterLock

from . import busy_apiserver, exec_plugin
from .rotation import (
    assert_cluster_trusts_only, assert_no_private_key_in_files, careconcile, plan_json, record_ca, rejects_client_of,
    set_rotation,
)

pytestmark = pytest.mark.integration

BUSY_USER = "careconcile-busy"


@pytest.fixture(scope="module")
def undo(start_sandbox):
    info = start_sandbox("undo", control_planes=1, workers=2)
    spec = Path(info.spec)
    busy_apiserver.grant_cluster_admin(Path(info.kubeconfig), BUSY_USER)
    through_plugin = exec_plugin.plugin_kubeconfig(
        Path(info.kubeconfig), Path(info.nodes[0].root) / "etc/kubernetes/admin.conf", spec.parent,
        user_fields={"as": BUSY_USER})
    text = spec.read_text()
    assert f"kubeconfig: {info.kubeconfig}\n" in text
    spec.write_text(text.replace(f"kubeconfig: {info.kubeconfig}\n", f"kubeconfig: {through_plugin}\n"))
    return info, record_ca(info)


def plugin_runs(info) -> int:
    return exec_plugin.runs(Path(info.spec).parent / "exec-kubeconfig")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("workspace")


def test_a_saved_plan_is_refused_once_the_cluster_changed(undo, workspace):
    info, _ = undo
    spec = Path(info.spec)
    set_rotation(spec, 1)
    planfile = workspace / "rotate.plan.json"
    saved = careconcile("plan", str(spec), "--out", str(planfile), "--detailed-exitcode", workspace=workspace)
    assert saved.returncode == 2, saved.stderr
    assert "Plan: 1 CA to create" in saved.stdout
    shown = careconcile("show", str(planfile), "--format", "markdown", workspace=workspace)
    assert shown.returncode == 0 and shown.stdout.startswith("### careconcile apply plan")
    assert json.loads(planfile.read_text())["format_version"] == FORMAT_VERSION == 3

    # The cluster moves on without this plan: phase 1 makes a CA the plan knows nothing of.
    moved = careconcile("apply", str(spec), "--auto-approve", "--until", "prepare", workspace=workspace)
    assert moved.returncode == 0, moved.stderr
    assert "Stopped after phase 1" in moved.stdout
    before = plan_json(spec, workspace)["clusters"][0]["observed_digest"]

    refused = careconcile("apply", str(planfile), workspace=workspace)
    assert refused.returncode == 1
    assert "saved plan is stale" in refused.stderr and "state" in refused.stderr
    assert plan_json(spec, workspace)["clusters"][0]["observed_digest"] == before  # nothing changed


def test_a_second_apply_is_refused_by_the_lock(undo, workspace):
    info, _ = undo
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        with ClusterLock(client, info.name, operation="held-by-test") as held:
            refused = careconcile("apply", info.spec, "--auto-approve", workspace=workspace)
            assert refused.returncode == 1
            assert "is locked" in refused.stderr and "held-by-test" in refused.stderr and held.id in refused.stderr
            wrong = careconcile("force-unlock", info.name, "not-the-id", "--spec", info.spec, workspace=workspace)
            assert wrong.returncode == 1 and held.id in wrong.stderr
        # released: the next apply may take it (checked by the rollback test that follows)


def test_rollback_after_phase_3_returns_the_cluster_to_the_old_ca(undo, workspace):
    info, old = undo
    spec = Path(info.spec)
    before = plugin_runs(info)
    earlier = set(workspace.glob(f"{info.name}/log/apply-*/apply.log"))

    def run_log() -> str:
        new_logs = set(workspace.glob(f"{info.name}/log/apply-*/apply.log")) - earlier
        return next(iter(new_logs)).read_text() if new_logs else ""

    # Once the run has begun its actions, the API server answers every request of careconcile's
    # user with 429 (its priority level has no seats) until the log shows careconcile waiting.
    with busy_apiserver.Rejecting(Path(info.kubeconfig), BUSY_USER, start=lambda: " start " in run_log(),
                                  done=lambda: "429 TooManyRequests; waiting" in run_log()) as busy:
        reissued = careconcile("apply", str(spec), "--auto-approve", "--until", "reissue", workspace=workspace)
    assert reissued.returncode == 0, reissued.stdout[-2000:] + reissued.stderr
    waits = [line for line in run_log().splitlines() if "429 TooManyRequests; waiting" in line]
    assert waits and "(Retry-After)" in waits[0] and busy.rejected_for is not None and busy.rejected_for < 20, \
        run_log()[-3000:]
    print(f"\n429s for {busy.rejected_for:.1f} s; careconcile waited {len(waits)} times, e.g. {waits[0]}")
    new = record_ca(info)
    assert new.cert != old.cert  # phase 3 done: the cluster signs with the new CA
    # Through the plugin: it ran (its stderr is in the apply's log or on stderr, never stdout).
    assert plugin_runs(info) > before
    assert "sandbox-plugin" not in reissued.stdout
    logs = sorted(workspace.glob(f"{info.name}/log/apply-*/apply.log"))
    assert "sandbox-plugin: handing out" in reissued.stderr + logs[-1].read_text()

    rolled = careconcile("rollback", str(spec), "--auto-approve", workspace=workspace)
    assert rolled.returncode == 0, rolled.stdout[-2000:] + rolled.stderr
    assert record_ca(info).cert == old.cert
    assert_cluster_trusts_only(info, old.cert)
    assert rejects_client_of(info, new, trust=old.cert)
    assert not rejects_client_of(info, old, trust=old.cert)
    # The rolled-back rotation counts as consumed: the spec's rotation 1 asks for nothing more.
    again = careconcile("plan", str(spec), "--detailed-exitcode", workspace=workspace)
    assert again.returncode == 0, again.stdout + again.stderr
    drift = careconcile("drift", str(spec), workspace=workspace)  # drift, too, through the plugin
    assert drift.returncode == 0, drift.stdout + drift.stderr
    assert_no_private_key_in_files(workspace)


def test_a_plugin_that_fails_is_an_error_naming_it_and_its_install_hint(undo, tmp_path):
    info, _ = undo
    failing = exec_plugin.plugin_kubeconfig(Path(info.kubeconfig), Path(info.kubeconfig), tmp_path, fail=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(Path(info.spec).read_text().replace(str(Path(info.spec).parent / "exec-kubeconfig"), str(failing)))
    planned = careconcile("plan", str(spec), workspace=tmp_path / "ws")
    assert planned.returncode == 1, planned.stdout + planned.stderr
    assert f"exec credential plugin '{tmp_path / 'exec-kubeconfig-plugin'}'" in planned.stderr
    assert "exited with status 1" in planned.stderr and "no credential for you" in planned.stderr
    assert f"hint: {exec_plugin.INSTALL_HINT}" in planned.stderr
    assert "Traceback" not in planned.stderr and "no credential for you" not in planned.stdout


def test_rollback_without_a_rotation_in_progress_is_refused(undo, workspace):
    info, _ = undo
    refused = careconcile("rollback", info.spec, "--auto-approve", workspace=workspace)
    assert refused.returncode == 1 and "nothing to roll back" in refused.stderr


def test_rollback_right_after_prepare_returns_to_the_ca_of_record(undo, workspace):
    # Nothing trusts the new CA yet: the rollback must not wait for consumers to trust it.
    info, _ = undo
    spec = Path(info.spec)
    before = record_ca(info)
    set_rotation(spec, 2)
    prepared = careconcile("apply", str(spec), "--auto-approve", "--until", "prepare", workspace=workspace)
    assert prepared.returncode == 0, prepared.stderr
    rolled = careconcile("rollback", str(spec), "--auto-approve", "--phase-timeout", "120", workspace=workspace)
    assert rolled.returncode == 0, rolled.stdout[-2000:] + rolled.stderr
    assert "Rollback complete!" in rolled.stdout
    assert record_ca(info).cert == before.cert
    assert_cluster_trusts_only(info, before.cert)
