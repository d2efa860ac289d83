"""Full cluster-CA rotations on real control planes, with a client polling the API throughout."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core import pki

from .rotation import (
    Poller, assert_cluster_trusts_only, assert_no_private_key_in_files, careconcile, plan_json, record_ca,
    rejects_client_of, set_rotation,
)

pytestmark = pytest.mark.integration


def _rotate_under_load(info, workspace: Path) -> tuple[Poller, pki.KeyPair, pki.KeyPair]:
    spec = Path(info.spec)
    old = record_ca(info)
    set_rotation(spec, 1)
    with Poller(Path(info.kubeconfig)) as poller:
        result = careconcile("apply", str(spec), "--auto-approve", workspace=workspace)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Apply complete!" in result.stdout
    new = record_ca(info)
    print(f"\n{info.name}: {poller.requests} requests during the rotation, {len(poller.failures)} failed, "
          f"per apiserver {poller.per_server}")
    return poller, old, new


@pytest.mark.parametrize("control_planes", [1, 2], ids=["1-apiserver", "2-apiservers"])
def test_full_rotation_leaves_only_the_new_ca_and_fails_no_request(start_sandbox, tmp_path, control_planes):
    info = start_sandbox(f"rot{control_planes}", control_planes=control_planes, workers=3 if control_planes == 1 else 1)
    poller, old, new = _rotate_under_load(info, tmp_path)

    assert poller.failures == [], "\n".join(poller.failures[:10])
    assert poller.requests > 100
    assert len(poller.per_server) == control_planes  # the client really went to every apiserver
    assert pki.fingerprint(new.cert) != pki.fingerprint(old.cert)
    workspace_kubeconfig = tmp_path / info.name / f"{info.name}-kubeconfig"
    assert workspace_kubeconfig.stat().st_mode & 0o777 == 0o600
    assert_cluster_trusts_only(info, new.cert, workspace_kubeconfig)
    assert rejects_client_of(info, old, trust=new.cert), "a client certificate from the old CA is still accepted"
    assert not rejects_client_of(info, new, trust=new.cert)

    again = careconcile("plan", info.spec, "--detailed-exitcode", workspace=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout
    logs = list((tmp_path / info.name / "log").glob("apply-*/apply.log"))
    assert logs and "finished" in logs[0].read_text()
    assert_no_private_key_in_files(tmp_path)
