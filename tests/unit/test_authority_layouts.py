"""The etcd and front-proxy CAs as layouts: what their plans restart and when, what they
announce, and how their ids stay apart from the cluster CA's (pure: no cluster)."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.cli import build_parser
from reconciler.core.authorities import AUTHORITIES, ETCD_CA, FRONT_PROXY_CA
from reconciler.core.observed import (
    ClusterObservation, ObservedBundle, ObservedComponent, ObservedLeaf, ObservedRecord, StoredState,
)
from reconciler.core.render import restart_counts
from reconciler.core.sites import NodeFile
from reconciler.core.spec import PRIMARY_AUTHORITY
from reconciler.shell import credentials
from reconciler.shell.components import _ACTIVE_PEER, _PROCESS_START
from tests.unit.test_diff import CLUSTER, FAST, NOW, ca, desired, leaf, plan
from tests.unit.test_plan import select


def _observation(layout, nodes: tuple[str, ...]) -> ClusterObservation:
    """A cluster whose authority ``layout`` is all on the CA "old", every component
    restarted for its current inputs."""
    bundles = tuple(ObservedBundle(NodeFile(node=node, path=site.path, form=site.form), (ca("old").cert,))
                    for node in nodes for site in layout.bundles)
    leaves = tuple(ObservedLeaf(NodeFile(node=node, path=site.path, form=site.form), leaf("old", "x").cert, True)
                   for node in nodes for site in layout.leaves)
    components = tuple(ObservedComponent(
        id=f"{node}:{component.name}", node=node, name=component.name, inputs=component.inputs,
        inputs_digest="sha256:now", restarted_for="sha256:now", restarted_at=NOW,
        outage_when_alone=component.outage_when_alone) for node in nodes for component in layout.components)
    return ClusterObservation(
        cluster=CLUSTER, authority=layout.name, records=tuple(ObservedRecord(node, ca("old").cert, str(FAST))
                                                               for node in nodes),
        bundles=bundles, leaves=leaves, components=components, endpoints=(), state=StoredState(), node_names=nodes,
        has_signer=layout.signer is not None)


def _rotation(layout, nodes=("cp1",)):
    return plan(dataclasses.replace(desired(rotation=1), name=layout.name, key=FAST), _observation(layout, nodes))


def test_an_etcd_rotation_restarts_etcd_and_the_apiserver_where_etcd_ca_crt_changes_one_node_at_a_time():
    result = _rotation(ETCD_CA, ("cp1", "cp2", "cp3"))
    restarts = [(a.phase, a.target) for a in select(result, kind="restart")]
    # phases 2 and 4 change etcd/ca.crt; phase 3's new certificates are read per handshake
    assert restarts == [(phase, f"{node}:{name}") for phase in (2, 4) for node in ("cp1", "cp2", "cp3")
                        for name in ("etcd", "kube-apiserver")]
    assert all(ETCD_CA.components[0].one_at_a_time and c.one_at_a_time for c in ETCD_CA.components)
    # the bundle on every node before any member restarts
    phase_2 = [a.kind for a in select(result, phase=2)]
    assert phase_2.index("restart") > max(i for i, kind in enumerate(phase_2) if kind == "update-bundle")
    assert restart_counts(result.actions) == ["etcd 2 times on each of cp1, cp2, cp3",
                                              "kube-apiserver 2 times on each of cp1, cp2, cp3"]
    # three members: no restart is an outage
    assert not any("outage" in a.reason for a in result.actions)


def test_one_control_plane_announces_each_restart_that_is_an_outage():
    result = _rotation(ETCD_CA)
    reasons = [a.reason for a in select(result, kind="restart")]
    assert len(reasons) == 4 and all("outage: the only" in reason for reason in reasons)


def test_an_authority_without_a_signer_gets_no_signer_files_and_ids_of_its_own():
    for layout in (ETCD_CA, FRONT_PROXY_CA):
        result = _rotation(layout)
        kinds = {a.kind for a in result.actions}
        assert "stage-signer" not in kinds and "remove-signer" not in kinds
        assert [a.reason for a in select(result, kind="switch-signer")] == ["make (new CA) the CA of record (its key)"]
        assert all(a.id.startswith(f"{CLUSTER}/{layout.name}/") for a in result.actions)
        assert "write-kubeconfig" not in kinds  # no kubeconfig on this machine trusts it


def test_the_front_proxy_rotation_restarts_nothing():
    result = _rotation(FRONT_PROXY_CA)
    assert not select(result, kind="restart") and restart_counts(result.actions) == []
    assert {a.target for a in select(result, kind="reissue")} == {"cp1:/etc/kubernetes/pki/front-proxy-client"}


def test_only_the_primary_authority_keeps_the_ids_of_earlier_plans():
    assert PRIMARY_AUTHORITY == "clusterCA" and list(AUTHORITIES) == ["clusterCA", "etcdCA", "frontProxyCA"]


def test_etcd_readiness_reads_the_start_time_and_the_peer_links_from_metrics():
    metrics = ("# HELP process_start_time_seconds Start time\n"
               "process_start_time_seconds 1.76480918712e+09\n"
               'etcd_network_active_peers{Local="a",Remote="b"} 1\n'
               'etcd_network_active_peers{Local="a",Remote="c"} 0\n')
    assert float(_PROCESS_START.search(metrics).group(1)) == pytest.approx(1764809187.12)
    assert len(_ACTIVE_PEER.findall(metrics)) == 1


@pytest.mark.parametrize("argv, authorities", [
    (["update", "credentials", "certificate-authorities", "rotate", "--cluster", "u1", "--kubeconfig", "k"],
     credentials.ALL_AUTHORITIES),
    (["update", "credentials", "--cluster-ca", "--cluster-name", "u1", "--kubeconfig", "k"], None),
    # options before the subcommand are kept
    (["update", "credentials", "--cluster-name", "u1", "--kubeconfig", "k", "certificate-authorities", "rotate"],
     credentials.ALL_AUTHORITIES),
])
def test_update_credentials_takes_bmctls_two_forms(argv, authorities):
    args = build_parser().parse_args(argv)
    assert (args.cluster_name, str(args.kubeconfig), args.authorities) == ("u1", "k", authorities)


def test_update_credentials_refuses_both_forms_at_once(capsys):
    from reconciler.cli import main

    code = main(["update", "credentials", "--cluster-ca", "certificate-authorities", "rotate", "--cluster", "u1",
                 "--kubeconfig", "k"])
    assert code == 64 and "give one of them" in capsys.readouterr().err


def test_a_lock_renewal_waits_out_a_restart_of_the_only_apiserver_but_not_a_lost_lock(monkeypatch):
    from reconciler.errors import APIError, ClusterUnreachableError, LockError
    from reconciler.shell import session

    clock = [1000.0]
    monkeypatch.setattr(session.time, "monotonic", lambda: clock[0])
    answers: list = []

    def renew():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer

    heartbeat = session._throttled(renew, every=20.0, tolerate=300.0)
    clock[0] += 21
    answers[:] = [ClusterUnreachableError("connection refused"), APIError("forbidden", status=403), None]
    heartbeat()  # refused: tried again in 5 s, not at once
    heartbeat()
    assert len(answers) == 2
    clock[0] += 5
    heartbeat()  # 403 while the authorizer syncs
    clock[0] += 5
    heartbeat()  # renewed
    assert answers == []
    clock[0] += 21
    answers[:] = [LockError("taken over")]
    with pytest.raises(LockError):
        heartbeat()
    clock[0] += 21
    answers[:] = [ClusterUnreachableError("refused")] * 100
    with pytest.raises(ClusterUnreachableError):
        for _ in range(100):
            clock[0] += 5
            heartbeat()


# --- messages name the authority they are about ---------------------------------------------


def _etcd_rollback(observed: ClusterObservation):
    return plan(dataclasses.replace(desired(rotation=1), name=ETCD_CA.name, key=FAST), observed, rollback=True)


def test_a_refused_rollback_names_the_authority():
    from reconciler.errors import RollbackRefusedError

    observed = _observation(ETCD_CA, ("cp1",))
    with pytest.raises(RollbackRefusedError, match=r"cluster c1 \(etcdCA\): no rotation in progress"):
        _etcd_rollback(observed)
    midway = StoredState(rotation=1, target=ca("new").cert, previous=ca("old").cert, verified_phase=3,
                         has_previous_key=False)
    with pytest.raises(RollbackRefusedError, match=r"cluster c1 \(etcdCA\): the state store no longer holds"):
        _etcd_rollback(dataclasses.replace(observed, state=midway))
    distrusted = dataclasses.replace(observed, state=dataclasses.replace(midway, has_previous_key=True), bundles=tuple(
        dataclasses.replace(bundle, certs=(ca("new").cert,)) for bundle in observed.bundles))
    with pytest.raises(RollbackRefusedError, match=r"cluster c1 \(etcdCA\): the old CA .* is no longer trusted"):
        _etcd_rollback(distrusted)


def test_a_rollback_refused_for_a_reason_is_reported_before_an_authority_with_nothing_to_roll_back():
    from reconciler.errors import RollbackRefusedError
    from reconciler.shell.session import _raise_rollback_refusal

    idle = RollbackRefusedError("cluster c1 (clusterCA): no rotation in progress", nothing_in_progress=True)
    distrusted = RollbackRefusedError("cluster c1 (etcdCA): the old CA is no longer trusted")
    with pytest.raises(RollbackRefusedError) as refused:
        _raise_rollback_refusal("c1", {"clusterCA": idle, "etcdCA": distrusted}, planned=False)
    assert refused.value is distrusted
    # Nothing in progress anywhere: one message that names every authority.
    with pytest.raises(RollbackRefusedError, match=r"cluster c1: no rotation in progress \(clusterCA, etcdCA\)"):
        _raise_rollback_refusal("c1", {"clusterCA": idle, "etcdCA": idle}, planned=False)
    _raise_rollback_refusal("c1", {"clusterCA": idle}, planned=True)  # another authority rolls back


def test_a_stale_plan_and_the_log_header_name_the_authority(tmp_path, monkeypatch):
    from reconciler.core.plan import FORMAT_VERSION, PlanDocument, summary_counts
    from reconciler.errors import StalePlanError
    from reconciler.shell import session
    from reconciler.shell.specfile import LoadedSpec

    etcd = _rotation(ETCD_CA)
    assert etcd.authority == "etcdCA"
    assert session.log_header("apply", etcd, None).startswith(f"apply cluster {CLUSTER} (etcdCA): {len(etcd.actions)} "
                                                             "actions, from sha256:")
    spec = tmp_path / "spec.yaml"
    spec.write_text("spec\n")

    def document(cluster_plan):
        return PlanDocument(format_version=FORMAT_VERSION, careconcile_version="0", created="2026-12-04T00:00:00+00:00",
                            operation="apply", spec_path=str(spec), spec_relative_path="spec.yaml",
                            spec_digest=session.spec_digest(spec), spec_text="spec\n", clusters=[cluster_plan], summary=summary_counts(cluster_plan.actions))

    changed = etcd.model_copy(update={"observed_digest": "sha256:" + "0" * 64})
    monkeypatch.setattr(session, "make_plan", lambda *args, **kwargs: document(changed))
    with pytest.raises(StalePlanError, match=rf"cluster {CLUSTER} \(etcdCA\) changed since the plan was made"):
        session.check_not_stale(document(etcd), LoadedSpec(path=spec, document=None, text="spec\n"),
                                {CLUSTER: None})


def test_a_failed_authority_keeps_and_prints_the_reports_of_those_finished_before_it(monkeypatch):
    """Two clusters, each rotating the cluster CA then the etcd CA; c1's etcd CA fails. The
    cluster CA of c1 did rotate: the run says so, and keeps its report."""
    import io

    from reconciler.core.plan import FORMAT_VERSION, PlanDocument, summary_counts
    from reconciler.errors import RotationError
    from reconciler.shell import session
    from reconciler.shell.executor import ActionReport, RunReport

    cluster_ca = plan(desired(rotation=1), _observation(AUTHORITIES["clusterCA"], ("cp1",)))
    plans = [cluster_plan.model_copy(update={"cluster": name}) for name in ("c1", "c2")
             for cluster_plan in (cluster_ca, _rotation(ETCD_CA))]
    document = PlanDocument(format_version=FORMAT_VERSION, careconcile_version="0", created="2026-12-04T00:00:00+00:00",
                            operation="apply", spec_path="/s.yaml", spec_relative_path="s.yaml",
                            spec_digest="sha256:" + "1" * 64, spec_text="", clusters=plans,
                            summary=summary_counts([a for p in plans for a in p.actions]))

    def run_cluster(plan_document, cluster, loaded, access, **kwargs):
        if (cluster.cluster, cluster.authority) == ("c1", "etcdCA"):
            raise RotationError("c1: etcd did not come back")
        return RunReport(cluster.cluster, cluster.authority,
                         done=[ActionReport(action, 0.1) for action in cluster.actions])

    class Access:
        def for_authority(self, name):
            return self

    monkeypatch.setattr(session, "_run_cluster", run_cluster)
    out = io.StringIO()
    with pytest.raises(RotationError) as failed:
        session.run_plan(document, None, {"c1": Access(), "c2": Access()}, stream=out, keep_going=True)
    assert f"c1 (clusterCA): finished before the failure, {len(plans[0].actions)} actions done." in out.getvalue()
    assert "c2 (" not in out.getvalue()  # c2 did not fail: its reports are the finished list
    assert "1 of 2 clusters failed" in failed.value.message
    assert failed.value.message.splitlines()[-1] == "  finished: c2"


@pytest.mark.parametrize("verified", [2, 3])
def test_an_etcd_rollback_before_the_distrust_phase_reissues_what_the_new_ca_signed_and_restarts_in_phase_4(verified):
    """After trust-both (2) no leaf comes from the new CA yet; after reissue (3) the server,
    peer and client certificates do, and the rollback reissues them from the old CA while
    both are still trusted. Either way etcd and the apiserver restart once, when their
    bundle drops the new CA (the integration test rolls back after phase 3, the superset)."""
    from tests.unit.test_diff import in_progress

    observed = _observation(ETCD_CA, ("cp1",))
    observed = dataclasses.replace(observed, state=in_progress(verified), bundles=tuple(
        dataclasses.replace(bundle, certs=(ca("old").cert, ca("new").cert)) for bundle in observed.bundles))
    if verified == 3:
        observed = dataclasses.replace(
            observed, records=tuple(dataclasses.replace(record, cert=ca("new").cert) for record in observed.records),
            leaves=tuple(dataclasses.replace(site, cert=leaf("new", "x").cert) for site in observed.leaves))
    result = _etcd_rollback(observed)
    assert result.operation == "rollback"
    reissued = {a.target for a in select(result, kind="reissue")}
    assert reissued == (set() if verified == 2 else {f"cp1:{site.path}" for site in ETCD_CA.leaves})
    assert all(a.phase == 3 for a in select(result, kind="reissue"))
    assert [(a.phase, a.target) for a in select(result, kind="restart")] == [(4, "cp1:etcd"), (4, "cp1:kube-apiserver")]
    assert [a.change.after for a in select(result, kind="update-bundle")] == [[result.new_ca]]


def test_the_spec_update_credentials_writes_names_the_form_that_wrote_it():
    document = {"apiVersion": "v", "kind": "CASpec"}
    assert credentials._spec_text(document, credentials.ALL_LOCK_OPERATION).startswith(
        "# Written by `careconcile update credentials certificate-authorities rotate` from")
    assert credentials._spec_text(document).startswith("# Written by `careconcile update credentials --cluster-ca` from")
