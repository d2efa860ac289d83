"""The etcd and front-proxy CAs, rotated on a real control plane with an aggregated apiserver
(k8s.io/sample-apiserver behind the aggregation layer): each alone, with clients polling the
API and the aggregated API throughout, then a rollback of each before it distrusts its old CA,
and a front-proxy rotation stopped by SIGTERM at every action boundary, and a rotation of all
three CAs killed (SIGKILL) at every action boundary.

One sandbox ("auth", 1 control plane, 2 workers, --extension-apiserver). On one control
plane an etcd rotation restarts the only etcd member and the only apiserver: the plan says
so beforehand, and the test measures the outage it announced."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.core import extension_apiserver as extension
from reconciler.core import pki
from reconciler.core.authorities import AUTHORITIES, ETCD_CA, FRONT_PROXY_CA, REQUESTHEADER_SITE
from reconciler.shell.kube import KubeconfigClient
from reconciler.shell.lock import LEASE_NAME, LEASES

from .helpers import require_extension_apiserver
from .rotation import (
    Poller, assert_cluster_trusts_only, assert_no_private_key_in_files, careconcile, plan_json, record_ca,
    rejects_client_of, set_rotation, stop_at_every_action_boundary,
)

pytestmark = pytest.mark.integration

NAME = "auth"
FLUNDERS = extension.flunders_path("default")


@pytest.fixture(scope="module")
def auth(start_sandbox):
    require_extension_apiserver()
    return start_sandbox(NAME, control_planes=1, workers=2, extension_apiserver=True)


def _pki(info) -> Path:
    return Path(info.nodes[0].root) / "etc/kubernetes/pki"


def _node_path(info, absolute: str) -> Path:
    return Path(info.nodes[0].root) / absolute.lstrip("/")


def _certs(path: Path) -> list:
    return pki.load_certificates(path.read_bytes(), source=str(path))


def _leaves_verify_against_only(info, layout, ca_file: Path) -> None:
    """Every leaf of the authority verifies (openssl) against its CA file, which holds one CA."""
    assert len(_certs(ca_file)) == 1, f"{ca_file} holds more than one CA"
    for leaf in layout.leaves:
        cert = _node_path(info, f"{leaf.path}.crt")
        verified = subprocess.run(["openssl", "verify", "-CAfile", str(ca_file), str(cert)], capture_output=True,
                                  text=True)
        assert verified.returncode == 0 and verified.stdout.strip().endswith(": OK"), verified.stdout + verified.stderr


def _pollers(info, **polling) -> tuple[Poller, Poller]:
    """A client of the API and one of the aggregated API (through kube-apiserver)."""
    kubeconfig = Path(info.kubeconfig)
    with KubeconfigClient(kubeconfig) as client:
        servers = {client.target.server}
    return Poller(kubeconfig, servers, **polling), Poller(kubeconfig, servers, path=FLUNDERS, **polling)


def _rotate(info, workspace: Path, *authorities: str, **polling) -> tuple[str, Poller, Poller]:
    """``polling``: the Pollers' ``interval`` and ``clients``, for a rotation without
    restarts, which lasts about a second."""
    spec = Path(info.spec)
    set_rotation(spec, 1, *authorities)
    planned = careconcile("plan", str(spec), workspace=workspace)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    api, aggregated = _pollers(info, **polling)
    with api, aggregated:
        applied = careconcile("apply", str(spec), "--auto-approve", workspace=workspace)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return planned.stdout, api, aggregated


def _steady(info, workspace: Path) -> None:
    spec = Path(info.spec)
    again = careconcile("plan", str(spec), "--detailed-exitcode", workspace=workspace)
    assert again.returncode == 0 and "No changes." in again.stdout, again.stdout + again.stderr
    drift = careconcile("drift", str(spec), workspace=workspace)
    assert drift.returncode == 0, drift.stdout + drift.stderr
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        assert client.get(FLUNDERS)["kind"] == "FlunderList"


def test_the_etcd_ca_rotates_with_the_outage_the_plan_announced(auth, tmp_path):
    info = auth
    before = _certs(_pki(info) / "etcd/ca.crt")[0]
    plan, api, aggregated = _rotate(info, tmp_path, "etcdCA")
    etcd_part = plan.split("(etcdCA)")[1]
    # One control plane: the plan says, restart by restart, that the API goes away.
    # Both read etcd/ca.crt only at start, and their certificates per handshake: they restart
    # when the bundle gains the new CA and when it loses the old one, not for new certificates.
    assert etcd_part.count("outage: the only etcd member") == 2
    assert etcd_part.count("outage: the only apiserver") == 2
    assert "Restarts: etcd 2 times on auth-control-plane-1; kube-apiserver 2 times on auth-control-plane-1" \
        in etcd_part
    ca_file = _pki(info) / "etcd/ca.crt"
    _leaves_verify_against_only(info, ETCD_CA, ca_file)
    assert _certs(ca_file)[0] != before
    # The outage measured against the one announced: requests fail only while etcd or the
    # apiserver restarts; print the figures for docs/performance.md.
    print(f"etcd CA on 1 control plane: API {api.requests} requests, {len(api.failures)} failed, longest gap "
          f"{api.longest_gap():.2f}s; aggregated API {aggregated.requests} requests, {len(aggregated.failures)} failed")
    assert api.requests > 20 and api.longest_gap() < 60
    _steady(info, tmp_path)


def test_the_front_proxy_ca_rotates_without_a_restart_or_a_failed_request_through_the_aggregator(auth, tmp_path):
    """Right after the etcd CA's rotation restarted the apiserver: the aggregated apiserver's
    watch of extension-apiserver-authentication may lag, and the front-proxy certificate
    from the new CA must not reach it before it trusts that CA (phase 2 asks it)."""
    info = auth
    before = _certs(_pki(info) / "front-proxy-ca.crt")[0]
    plan, api, aggregated = _rotate(info, tmp_path, "frontProxyCA", interval=0.05, clients=4)
    assert "Cluster auth (frontProxyCA): rotate" in plan and "Restarts:" not in plan.split("(frontProxyCA)")[1]
    assert "#requestheader-client-ca-file" in plan  # the apiserver-published copy is narrowed at the end
    # No component restarts for the front proxy, so nothing may fail, through the aggregator either.
    assert api.requests > 20 and not api.failures, api.failures[:5]
    assert aggregated.requests > 20 and not aggregated.failures, aggregated.failures[:5]
    assert aggregated.longest_gap() < 3.0
    ca_file = _pki(info) / "front-proxy-ca.crt"
    _leaves_verify_against_only(info, FRONT_PROXY_CA, ca_file)
    new = _certs(ca_file)[0]
    assert new != before
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        published = client.get(REQUESTHEADER_SITE.object_path)["data"][REQUESTHEADER_SITE.field]
    assert [pki.fingerprint(c) for c in pki.load_certificates(published.encode(), source="configmap")] == \
        [pki.fingerprint(new)]
    _steady(info, tmp_path)
    assert_no_private_key_in_files(tmp_path)


# Each is rolled back after its certificates were reissued from the new CA (phase 3), the
# last moment a rollback is allowed and the harder case: for etcd, the server, peer and
# client certificates come from the new CA, and the rollback reissues them from the old
# one while both are trusted, then restarts etcd and the apiserver once (phase 4). A
# rollback after trust-both (phase 2) runs the same actions less phase 3's reissues
# (test_authority_layouts.py plans both).
@pytest.mark.parametrize("authority, layout, until", [("frontProxyCA", FRONT_PROXY_CA, 3), ("etcdCA", ETCD_CA, 3)],
                         ids=["frontProxyCA", "etcdCA"])
def test_a_rotation_rolled_back_before_it_distrusts_returns_to_the_old_ca(auth, tmp_path, authority, layout, until):
    info = auth
    spec = Path(info.spec)
    ca_file = _node_path(info, layout.record_cert)
    old = _certs(ca_file)[0]
    set_rotation(spec, 2, authority)
    stopped = careconcile("apply", str(spec), "--auto-approve", "--until", str(until), workspace=tmp_path)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert [pki.fingerprint(c) for c in _certs(ca_file)][0] == pki.fingerprint(old) and len(_certs(ca_file)) == 2
    if until == 3:  # every leaf from the new CA (etcd: its peer certificate too): the rollback reissues them
        new = _certs(ca_file)[1]
        for site in layout.leaves:
            assert pki.is_signed_by(_certs(_node_path(info, f"{site.path}.crt"))[0], new), site.path
    rollback = careconcile("rollback", str(spec), "--auto-approve", workspace=tmp_path)
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert f"({authority}): roll back" in rollback.stdout
    assert _certs(ca_file) == [old]
    _leaves_verify_against_only(info, layout, ca_file)
    _steady(info, tmp_path)


def _remaining(spec: Path, workspace: Path, authority: str | None = None) -> list[str]:
    """The ids of every action a plan made now holds (of ``authority``'s alone if given),
    authority after authority."""
    document = plan_json(spec, workspace, in_process=True)
    return [action["id"] for cluster in document["clusters"] if authority in (None, cluster["authority"])
            for action in cluster["actions"]]


def _temp_files(*directories: Path) -> list[Path]:
    """What careconcile's writes leave while they are under way: a local write's
    ``.NAME.XXXX.tmp`` beside its file, an SFTP write's ``.NAME.careconcile-XXXX.tmp``
    (etcd's own ``wal/0.tmp`` is not one)."""
    return [path for directory in directories for path in directory.rglob(".*.tmp")]


def test_a_front_proxy_rotation_terminated_at_every_action_boundary_cleans_up_and_resumes_at_once(auth, tmp_path):
    """SIGTERM, as CI runners and Kubernetes stop a job, after every action in turn: each run
    exits 143 having removed its temp files and released its Lease, so the next run starts
    at once (no stale lock to take over), and planning again yields exactly the actions that
    were left. (SIGKILL at every boundary, which leaves the lock for the next run to take
    over, is the test below's, on all three CAs; both stop a run at the same point, right
    after an action is done.)"""
    info = auth
    spec = Path(info.spec)
    ca_file = _pki(info) / "front-proxy-ca.crt"
    old = _certs(ca_file)[0]
    set_rotation(spec, 3, "frontProxyCA")
    planned = _remaining(spec, tmp_path, "frontProxyCA")
    assert len(planned) > 8 and all(action_id.startswith(f"{NAME}/frontProxyCA/") for action_id in planned)
    roots = [Path(node.root) / "etc" for node in info.nodes]

    def cleaned_up(result, action_id: str) -> None:
        assert result.stderr.rstrip().endswith("careconcile: terminated (SIGTERM)"), result.stderr[-2000:]
        assert "took over the stale lock" not in result.stderr, f"the run before {action_id} left its lock"
        assert _temp_files(*roots, tmp_path) == [], f"temp files left after {action_id}"
        with KubeconfigClient(Path(info.kubeconfig)) as client:
            leases = client.list(LEASES)
        assert [lease["metadata"]["name"] for lease in leases if lease["metadata"]["name"] == LEASE_NAME] == [], \
            f"the Lease {LEASE_NAME} is still held after {action_id}"

    stop_at_every_action_boundary(spec, tmp_path, planned, lambda: _remaining(spec, tmp_path, "frontProxyCA"),
                                  signal_name="SIGTERM", after_each=cleaned_up)
    assert _certs(ca_file)[0] != old
    _leaves_verify_against_only(info, FRONT_PROXY_CA, ca_file)
    _steady(info, tmp_path)


def test_all_three_cas_killed_at_every_action_boundary_resume_to_the_same_end_state(auth, tmp_path):
    """One apply of all three CAs, killed with SIGKILL (lock held) after every single action:
    each time, planning again yields exactly the actions that were left, whatever moment the
    run died at; the last run reaches the end state of an uninterrupted rotation. The
    authorities run one after the other, so this kills each of them at each of its boundaries
    too: the cluster CA's (its workload restarts one at a time, so that each run completes
    exactly one action), the etcd CA's (restarts of etcd and the apiserver included) and the
    front proxy's."""
    info = auth
    spec = Path(info.spec)
    files = {name: _node_path(info, layout.record_cert) for name, layout in AUTHORITIES.items()}
    old = {name: _certs(path)[0] for name, path in files.items()}
    old_cluster = record_ca(info)
    set_rotation(spec, 1, "clusterCA")
    set_rotation(spec, 3, "etcdCA")  # 1 and 2 were the tests' above
    set_rotation(spec, 4, "frontProxyCA")  # and 3 the SIGTERM test's
    with spec.open("a") as handle:
        handle.write("    workloads:\n      maxConcurrent: 1\n")
    remaining = _remaining(spec, tmp_path)
    planned = len(remaining)
    # The cluster CA's ids name no authority (they kept their shape); the others' do.
    counts = {name: sum(f"{NAME}/{name}/" in action_id for action_id in remaining) for name in ("etcdCA", "frontProxyCA")}
    counts["clusterCA"] = planned - sum(counts.values())
    assert counts["clusterCA"] > 40 and counts["etcdCA"] > 10 and counts["frontProxyCA"] > 8, counts
    stop_at_every_action_boundary(spec, tmp_path, remaining, lambda: _remaining(spec, tmp_path))
    for name, path in files.items():
        assert pki.fingerprint(_certs(path)[0]) != pki.fingerprint(old[name]), name
    _leaves_verify_against_only(info, ETCD_CA, files["etcdCA"])
    _leaves_verify_against_only(info, FRONT_PROXY_CA, files["frontProxyCA"])
    new_cluster = record_ca(info)
    assert_cluster_trusts_only(info, new_cluster.cert, tmp_path / info.name / f"{info.name}-kubeconfig")
    assert rejects_client_of(info, old_cluster, trust=new_cluster.cert)
    _steady(info, tmp_path)
    assert_no_private_key_in_files(tmp_path)
