"""Saved plans that went stale, concurrent applies, --until and rollback, on one sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.core.plan import FORMAT_VERSION
from reconciler.shell.kube import KubeconfigClient
from reconciler.shell.lock import ClusterLock

from .rotation import (
    assert_cluster_trusts_only, assert_no_private_key_in_files, careconcile, plan_json, record_ca, rejects_client_of,
    set_rotation,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def undo(start_sandbox):
    info = start_sandbox("undo", control_planes=1, workers=2)
    return info, record_ca(info)


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
    reissued = careconcile("apply", str(spec), "--auto-approve", "--until", "reissue", workspace=workspace)
    assert reissued.returncode == 0, reissued.stdout[-2000:] + reissued.stderr
    new = record_ca(info)
    assert new.cert != old.cert  # phase 3 done: the cluster signs with the new CA

    rolled = careconcile("rollback", str(spec), "--auto-approve", workspace=workspace)
    assert rolled.returncode == 0, rolled.stdout[-2000:] + rolled.stderr
    assert record_ca(info).cert == old.cert
    assert_cluster_trusts_only(info, old.cert)
    assert rejects_client_of(info, new, trust=old.cert)
    assert not rejects_client_of(info, old, trust=old.cert)
    # The rolled-back rotation counts as consumed: the spec's rotation 1 asks for nothing more.
    again = careconcile("plan", str(spec), "--detailed-exitcode", workspace=workspace)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_no_private_key_in_files(workspace)


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
