"""A fleet of three sandboxes in one spec: drift reads them all, an unreachable one does not
stop the others, a saved plan rotates all three in one wave, and a failed wave stops the
later ones unless --keep-going.

The tests run in file order on the same three clusters: (c) rotates them all, (d) leaves
the later two after phase 1 of another rotation. The sandboxes are stopped at the end of
the module. About 2.5 minutes on 2 cores, most of it (c) and starting the sandboxes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from reconciler.core import pki
from reconciler.errors import APIError
from reconciler.sandbox._paths import SandboxPaths
from reconciler.shell.kube import KubeconfigClient

from .fleet import closed_port, merge_specs, set_cluster_rotation, unreachable_copy
from .rotation import CLIResult, assert_cluster_trusts_only, careconcile, record_ca, set_rotation

pytestmark = pytest.mark.integration

NAMES = ("fleet-a", "fleet-b", "fleet-c")  # spec order; fleet-a comes first in every wave order


@pytest.fixture(scope="module")
def fleet(start_sandbox, tmp_path_factory):
    infos = {name: start_sandbox(name, control_planes=1, workers=2) for name in NAMES}
    directory = tmp_path_factory.mktemp("fleet")
    spec = merge_specs([info.spec for info in infos.values()], directory / "fleet.yaml", name="fleet")
    yield infos, spec, directory / "workspace"
    from reconciler import sandbox

    for name in NAMES:  # nothing after this module needs them; free the two cores early
        paths = SandboxPaths.named(name)
        if paths.directory.exists():
            sandbox.down(paths)


def drift(spec: Path, workspace: Path, *extra: str) -> tuple[CLIResult, dict]:
    result = careconcile("drift", str(spec), "--format", "json", *extra, workspace=workspace, timeout=120)
    assert result.returncode in (0, 1, 2), result.stdout + result.stderr
    return result, json.loads(result.stdout)


def by_cluster(report: dict) -> dict[str, dict]:
    return {entry["cluster"]: entry for entry in report["clusters"]}


def kinds(entry: dict) -> list[str]:
    return [finding["kind"] for finding in entry["findings"]]


def fingerprint(info) -> str:
    return pki.fingerprint(record_ca(info).cert)


def apply_logs(workspace: Path, cluster: str) -> list[Path]:
    return sorted((workspace / cluster / "log").glob("apply-*/apply.log"))


def log_span(path: Path) -> tuple[dt.datetime, dt.datetime]:
    lines = path.read_text().splitlines()
    stamp = lambda line: dt.datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00"))  # noqa: E731
    return stamp(lines[0]), stamp(lines[-1])


def test_drift_reads_every_cluster_in_spec_order(fleet):
    infos, spec, workspace = fleet
    result, report = drift(spec, workspace)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [entry["cluster"] for entry in report["clusters"]] == list(NAMES)
    assert report["specs"] == [str(spec)]
    assert report["totals"] == {"clusters": 3, "in_sync": 3, "drifted": 0, "errors": 0, "findings": 0,
                                "by_kind": {}}
    for name, entry in by_cluster(report).items():
        assert entry["status"] == "in-sync" and entry["error"] is None and entry["findings"] == [], entry
        assert entry["spec_name"] == "fleet"
        assert [a["authority"] for a in entry["authorities"]] == ["clusterCA", "etcdCA", "frontProxyCA"]
        assert entry["authorities"][0]["fingerprint"] == fingerprint(infos[name])

    # One at a time: the same report, cluster for cluster.
    sequential, one_by_one = drift(spec, workspace, "--parallelism", "1")
    assert sequential.returncode == 0, sequential.stdout + sequential.stderr
    assert [(e["cluster"], e["status"], e["authorities"]) for e in one_by_one["clusters"]] == \
        [(e["cluster"], e["status"], e["authorities"]) for e in report["clusters"]]


def test_an_unreachable_cluster_is_an_error_and_the_others_are_checked(fleet, tmp_path):
    infos, spec, workspace = fleet
    with contextlib.closing(closed_port()) as sock:
        port = sock.getsockname()[1]
        broken = unreachable_copy(spec, "fleet-b", port, tmp_path)
        # fleet-c is asked to rotate in the copy, so that it has a finding to report.
        set_cluster_rotation(broken, "fleet-c", 1)
        started = time.monotonic()
        result, report = drift(broken, workspace)
        took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert [entry["cluster"] for entry in report["clusters"]] == list(NAMES)
    clusters = by_cluster(report)

    down = clusters["fleet-b"]
    assert down["status"] == "error" and down["findings"] == [] and down["authorities"] == []
    assert f"127.0.0.1:{port}" in down["error"] and "fleet-b" in down["error"], down["error"]
    assert "refused" in down["error"].lower(), down["error"]

    assert clusters["fleet-a"]["status"] == "in-sync" and clusters["fleet-a"]["error"] is None
    assert clusters["fleet-a"]["authorities"][0]["fingerprint"] == fingerprint(infos["fleet-a"])
    assert clusters["fleet-c"]["status"] == "drift" and clusters["fleet-c"]["error"] is None
    assert kinds(clusters["fleet-c"]) == ["rotation-requested"]
    assert clusters["fleet-c"]["authorities"][0]["fingerprint"] == fingerprint(infos["fleet-c"])
    assert report["totals"]["errors"] == 1 and report["totals"]["drifted"] == 1 and report["totals"]["in_sync"] == 1
    assert took < 60, f"a refused connection should not hold the run up ({took:.0f}s)"


def test_a_saved_fleet_plan_rotates_every_cluster_in_one_wave(fleet):
    infos, spec, workspace = fleet
    before = {name: record_ca(info) for name, info in infos.items()}
    set_rotation(spec, 1)  # every cluster's counter
    planfile = workspace.parent / "fleet.plan.json"
    planned = careconcile("plan", str(spec), "--out", str(planfile), workspace=workspace)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    # the cluster CA's part of each cluster first, then its etcd and front-proxy CAs' (no changes)
    assert [(c["cluster"], c["authority"]) for c in json.loads(planfile.read_text())["clusters"]] == \
        [(name, authority) for name in NAMES for authority in ("clusterCA", "etcdCA", "frontProxyCA")]

    applied = careconcile("apply", str(planfile), "--auto-approve", "--max-parallel-clusters", "3",
                          "--phase-timeout", "240", workspace=workspace)
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr
    assert "Apply complete!" in applied.stdout

    for name, info in infos.items():
        after = record_ca(info)
        assert after.cert != before[name].cert, f"{name}: the CA did not change"
        assert_cluster_trusts_only(info, after.cert)
    # One wave: every cluster started before any finished.
    spans = [log_span(apply_logs(workspace, name)[-1]) for name in NAMES]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans

    result, report = drift(spec, workspace)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [e["status"] for e in report["clusters"]] == ["in-sync"] * 3
    again = careconcile("plan", str(spec), "--detailed-exitcode", workspace=workspace)
    assert again.returncode == 0, again.stdout + again.stderr


POLICIES = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
BINDINGS = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
FROZEN = "fleet-test-frozen-state"
PROBE = "fleet-test-probe"


@contextlib.contextmanager
def state_store_frozen(info) -> Iterator[None]:
    """Make ``info``'s cluster refuse writes to careconcile's state Secret, so that the first
    action of a rotation (create-ca, which stores the new CA) fails and nothing changes.

    The tests run as root, so a read-only node directory would not stop a write; an
    admission policy stops it on the API server, for every user (system:masters too)."""
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        client.create(POLICIES, {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": FROZEN},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                        "operations": ["CREATE", "UPDATE"],
                                                        "resources": ["secrets"]}]},
                "validations": [{"expression": f"!(object.metadata.name in ['careconcile-state', '{PROBE}'])",
                                 "message": "the fleet test freezes careconcile's state on this cluster"}],
            },
        })
        client.create(BINDINGS, {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": FROZEN},
            "spec": {"policyName": FROZEN, "validationActions": ["Deny"]},
        })
        try:
            deadline = time.monotonic() + 60
            while True:  # the policy takes effect a moment after it is created
                try:
                    client.create("/api/v1/namespaces/kube-system/secrets?dryRun=All",
                                  {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": PROBE, "namespace": "kube-system"}})
                except APIError as exc:
                    if FROZEN in str(exc):
                        break
                    raise
                assert time.monotonic() < deadline, "the admission policy did not take effect within 60s"
                time.sleep(0.2)
            yield
        finally:
            client.delete(f"{BINDINGS}/{FROZEN}")
            client.delete(f"{POLICIES}/{FROZEN}")


def test_a_failed_wave_stops_the_later_ones_unless_keep_going(fleet):
    infos, spec, workspace = fleet
    set_rotation(spec, 2)
    before = {name: fingerprint(info) for name, info in infos.items()}
    logs = {name: apply_logs(workspace, name) for name in NAMES}

    with state_store_frozen(infos["fleet-a"]):
        stopped = careconcile("apply", str(spec), "--auto-approve", "--max-parallel-clusters", "1",
                              workspace=workspace)
        assert stopped.returncode == 1, stopped.stdout[-3000:] + stopped.stderr
        assert "1 of 3 clusters failed:" in stopped.stderr, stopped.stderr
        assert any(line.startswith("  fleet-a: ") and "careconcile-state" in line and FROZEN in line
                   for line in stopped.stderr.splitlines()), stopped.stderr
        assert "not started (an earlier wave failed): fleet-b, fleet-c" in stopped.stderr, stopped.stderr
        assert "finished:" not in stopped.stderr
        # fleet-a failed at its first action; fleet-b and fleet-c were never touched.
        assert {name: fingerprint(info) for name, info in infos.items()} == before
        assert apply_logs(workspace, "fleet-b") == logs["fleet-b"]
        assert apply_logs(workspace, "fleet-c") == logs["fleet-c"]
        result, report = drift(spec, workspace)
        assert result.returncode == 2, result.stdout + result.stderr
        assert {e["cluster"]: kinds(e) for e in report["clusters"]} == \
            {name: ["rotation-requested"] for name in NAMES}

        # --keep-going: the later waves run although the first failed. Phase 1 only (it
        # stores the new CA and nothing else), to keep the test short.
        going = careconcile("apply", str(spec), "--auto-approve", "--max-parallel-clusters", "1", "--keep-going",
                            "--until", "prepare", workspace=workspace)
        assert going.returncode == 1, going.stdout[-3000:] + going.stderr
        assert "1 of 3 clusters failed:" in going.stderr, going.stderr
        assert "finished: fleet-b, fleet-c" in going.stderr, going.stderr
        assert "not started" not in going.stderr
        assert "fleet-b: [" in going.stdout and "fleet-c: [" in going.stdout
        result, report = drift(spec, workspace)
        assert result.returncode == 2, result.stdout + result.stderr
        assert {e["cluster"]: kinds(e) for e in report["clusters"]} == {
            "fleet-a": ["rotation-requested"], "fleet-b": ["rotation-half-done"], "fleet-c": ["rotation-half-done"]}
    assert {name: fingerprint(info) for name, info in infos.items()} == before  # phase 1 changes no CA of record
