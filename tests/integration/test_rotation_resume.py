"""A rotation killed with SIGKILL at every action boundary resumes from what the cluster shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from .rotation import (
    assert_cluster_trusts_only, assert_no_private_key_in_files, careconcile, plan_json, record_ca,
    rejects_client_of, set_rotation, stop_at_every_action_boundary,
)

pytestmark = pytest.mark.integration


def test_killed_at_every_action_boundary_resumes_to_the_same_end_state(start_sandbox, tmp_path):
    info = start_sandbox("crash", control_planes=1, workers=3)
    spec = Path(info.spec)
    old = record_ca(info)
    set_rotation(spec, 1)
    # One workload restart at a time, so that each run completes exactly one action (a kill
    # during concurrent restarts is test_workloads.py's).
    with spec.open("a") as handle:
        handle.write("    workloads:\n      maxConcurrent: 1\n")

    def remaining(in_process: bool = True) -> list[str]:
        # (The first plan runs as a command; the ones after each kill run the same entry point
        # in this process, to save an interpreter.)
        return [action["id"] for action in plan_json(spec, tmp_path, in_process=in_process)["clusters"][0]["actions"]]

    planned = remaining(in_process=False)
    assert len(planned) > 40
    # Each run carries out one action and is then killed, lock held, mid-flight.
    stop_at_every_action_boundary(spec, tmp_path, planned, remaining)
    new = record_ca(info)
    assert new.cert != old.cert
    assert_cluster_trusts_only(info, new.cert, tmp_path / info.name / f"{info.name}-kubeconfig")
    assert rejects_client_of(info, old, trust=new.cert)
    final = careconcile("apply", str(spec), "--auto-approve", workspace=tmp_path)
    assert final.returncode == 0 and "No changes." in final.stdout
    assert_no_private_key_in_files(tmp_path)
