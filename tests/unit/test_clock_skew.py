"""Clocks of different machines never meet in one comparison (issue 13, "the clock decides").

The lock's Lease is written and judged by the API server's clock (its Date header), and a
restarted kubelet's node Lease by the node's clock and the API server's: this machine's
clock may be off by any amount. The API server here is a fake transport that answers with
a Date header; the kubelet check is the pure :mod:`reconciler.core.leases`, and
``ComponentRestarts.services_not_ready`` over a client that answers with those Leases.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import time

import pytest

from reconciler._time import CLOCK_OFFSET_ENV, micro_time, parse_time, utcnow
from reconciler.core.authorities import CLUSTER_CA, ETCD_CA
from reconciler.core.leases import NOT_RENEWED, kubelet_lease_problem, renewal_stored_at
from reconciler.core.observed import ObservedComponent, StoredState
from reconciler.errors import LockHeldError
from reconciler.core import pki
from reconciler.core.workloads import TRUST_MARGIN
from reconciler.shell import components, restarts, verification
from reconciler.shell.restarts import seconds_until
from reconciler.shell.statestore import Stored, StoredKeys
from reconciler.shell.components import ComponentRestarts
from reconciler.shell.kube import KubeClient, KubeTarget
from reconciler.shell.lock import ClusterLock, LockInfo, lease_body

TARGET = KubeTarget(name="fake", server="https://127.0.0.1:6443", ca_pem=b"CA", token="t")


def real_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class DatedServer:
    """A fake API server whose clock runs ``skew`` off the real one: every answer carries its
    Date. Answers are canned (status, body); what was sent is recorded."""

    def __init__(self, skew: dt.timedelta, *answers: tuple[int, dict]) -> None:
        self.skew = skew
        self.answers = list(answers)
        self.sent: list[tuple[str, str, dict | None]] = []

    def now(self) -> dt.datetime:
        return real_now() + self.skew

    def request(self, method, url_path, headers, body):
        self.sent.append((method, url_path, json.loads(body) if body else None))
        status, document = self.answers.pop(0)
        date = email.utils.format_datetime(self.now(), usegmt=True)
        return status, {"content-type": "application/json", "date": date}, json.dumps(document).encode()

    def close(self):
        pass


def held_lease(renewed: dt.datetime, ttl: int = 900) -> dict:
    """A Lease another careconcile run holds, renewed at ``renewed`` (the server's clock)."""
    info = LockInfo(id="other-run", holder="someone@elsewhere", host="elsewhere", pid=4242, operation="apply",
                    version="0", created=micro_time(renewed), ttl=ttl, renewed=micro_time(renewed))
    lease = lease_body(info)
    lease["metadata"]["resourceVersion"] = "7"
    return lease


def dated_client(server: DatedServer) -> KubeClient:
    """A client that has had one answer from ``server`` (as a run has, by the time it locks)."""
    server.answers.insert(0, (200, {"major": "1"}))
    client = KubeClient(TARGET, transport=server)
    client.get("/version")
    return client


CONFLICT = (409, {"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": "exists"})


@pytest.mark.parametrize("skew_seconds", [-1000, -80, 80, 1000])
def test_a_live_lock_is_not_taken_over_whatever_this_machines_clock_says(skew_seconds):
    """The holder renewed 10 s ago by the API server's clock: held, with the server's clock
    1000 s (more than the TTL) or 80 s away from this machine's."""
    skew = dt.timedelta(seconds=skew_seconds)
    server = DatedServer(skew)
    client = dated_client(server)
    server.answers = [CONFLICT, (200, held_lease(server.now() - dt.timedelta(seconds=10))), (200, {})]
    with pytest.raises(LockHeldError, match="cluster c1 is locked"):
        ClusterLock(client, "c1", operation="apply").acquire()
    assert [method for method, _, _ in server.sent] == ["GET", "POST", "GET"]  # no takeover was tried


@pytest.mark.parametrize("skew_seconds", [-1000, 1000])
def test_a_lock_whose_ttl_ran_out_by_the_apiserver_clock_is_taken_over(skew_seconds):
    skew = dt.timedelta(seconds=skew_seconds)
    server = DatedServer(skew)
    client = dated_client(server)
    server.answers = [CONFLICT, (200, held_lease(server.now() - dt.timedelta(seconds=950))), (200, {})]
    with ClusterLock(client, "c1", operation="apply") as info:
        assert info.took_over_from is not None and info.took_over_from.id == "other-run"
        method, _, body = server.sent[3]
        assert method == "PUT" and body["metadata"]["resourceVersion"] == "7"
        server.answers += [(200, body), (200, {})]  # the release: read, delete


def test_the_lease_holds_the_apiserver_time_not_this_machines(monkeypatch):
    """A run on a machine whose clock is an hour off writes the server's time into the Lease,
    at acquire and at renew."""
    monkeypatch.setenv(CLOCK_OFFSET_ENV, "3600")
    assert utcnow() - real_now() > dt.timedelta(seconds=3590)  # the faked clock is in effect
    server = DatedServer(dt.timedelta(seconds=-80))
    server.answers = [(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "none"})]
    lock = ClusterLock(KubeClient(TARGET, transport=server), "c1", operation="apply")
    server.answers.append((201, {}))
    info = lock.acquire()
    created = server.sent[-1][2]
    for moment in (created["spec"]["renewTime"], created["spec"]["acquireTime"], info.renewed):
        assert abs(parse_time(moment) - server.now()) < dt.timedelta(seconds=2), moment
    server.answers += [(200, created), (200, created)]
    lock.renew()
    renewed = server.sent[-1][2]["spec"]["renewTime"]
    assert abs(parse_time(renewed) - server.now()) < dt.timedelta(seconds=2)


def test_the_client_keeps_the_servers_clock_from_any_answer():
    server = DatedServer(dt.timedelta(seconds=-300), (404, {"kind": "Status", "code": 404, "message": "none"}))
    client = KubeClient(TARGET, transport=server)
    assert client.server_now() is None
    with pytest.raises(Exception):
        client.get("/x")
    assert abs(client.server_now() - server.now()) < dt.timedelta(seconds=2)


# --- the kubelet's node Lease ----------------------------------------------------------------

def node_lease(name: str, renewed: dt.datetime, stored: dt.datetime | None) -> dict:
    """A node Lease: renewTime by the node's clock, the managedFields time by the server's."""
    metadata: dict = {"name": name}
    if stored is not None:
        metadata["managedFields"] = [
            {"manager": "kube-controller-manager", "operation": "Update", "time": micro_time(stored - dt.timedelta(hours=1)),
             "fieldsV1": {"f:metadata": {"f:ownerReferences": {}}}},
            {"manager": "kubelet", "operation": "Update", "time": micro_time(stored),
             "fieldsV1": {"f:spec": {"f:holderIdentity": {}, "f:renewTime": {}}}},
        ]
    return {"metadata": metadata, "spec": {"renewTime": micro_time(renewed), "leaseDurationSeconds": 40}}


def test_the_time_the_server_stored_a_renewal_is_the_entry_that_owns_renew_time():
    now = real_now().replace(microsecond=0)
    assert renewal_stored_at(node_lease("w1", now, now)) == now
    assert renewal_stored_at(node_lease("w1", now, None)) is None


@pytest.mark.parametrize("node_skew", [-3600, -100, -80, 80, 3600])
def test_a_renewed_kubelet_is_ready_whatever_the_nodes_clock(node_skew):
    server_now = real_now()
    node_now = server_now + dt.timedelta(seconds=node_skew)
    at_restart = node_now - dt.timedelta(seconds=15)
    lease = node_lease("w1", node_now - dt.timedelta(seconds=3), server_now - dt.timedelta(seconds=3))
    assert kubelet_lease_problem(lease, renewed_at_restart=at_restart, server_at_restart=None,
                                 server_now=server_now) is None
    # not renewed since the renewal seen at the restart, by the node's clock
    assert kubelet_lease_problem(lease, renewed_at_restart=node_now, server_at_restart=None,
                                 server_now=server_now) == NOT_RENEWED
    # renewed since, but not lately by the server's clock: the kubelet stopped again
    stopped = node_lease("w1", node_now - dt.timedelta(seconds=200), server_now - dt.timedelta(seconds=200))
    assert "200s ago by the API server's clock" in kubelet_lease_problem(
        stopped, renewed_at_restart=at_restart - dt.timedelta(seconds=300), server_at_restart=None,
        server_now=server_now)


def test_without_the_renewal_seen_at_the_restart_the_servers_clock_decides():
    server_now = real_now()
    lease = node_lease("w1", server_now - dt.timedelta(days=1), server_now - dt.timedelta(seconds=5))
    assert kubelet_lease_problem(lease, renewed_at_restart=None, server_at_restart=server_now - dt.timedelta(seconds=9),
                                 server_now=server_now) is None
    assert kubelet_lease_problem(lease, renewed_at_restart=None, server_at_restart=server_now - dt.timedelta(seconds=2),
                                 server_now=server_now) == NOT_RENEWED


class NodeLeases:
    """The node Leases, as a client of an API server whose clock is the real one."""

    def __init__(self, *leases: dict) -> None:
        self.leases = list(leases)  # a list of the node Leases answers these

    def list(self, path: str, **_) -> list[dict]:
        return self.leases

    def server_now(self) -> dt.datetime:
        return real_now()


class Access:
    def __init__(self, client) -> None:
        self.client = client


def kubelet(restarted_at: dt.datetime, renewed_at_restart: dt.datetime | None) -> ObservedComponent:
    return ObservedComponent(id="w1:kubelet", node="w1", name="kubelet", inputs=(), inputs_digest="d",
                             restarted_for="d", restarted_at=restarted_at, restart="command", command=("true",),
                             lease_renewed_at_restart=renewed_at_restart)


@pytest.mark.parametrize("node_skew", [-100, -81])
def test_the_phase_check_passes_with_a_node_clock_more_than_80s_behind_careconciles(node_skew):
    """The finding: with the node's clock 80 s or more behind careconcile's, its Lease never
    looked renewed lately, and the phase check never passed."""
    server_now = real_now()
    node_now = server_now + dt.timedelta(seconds=node_skew)
    restarts = ComponentRestarts(Access(NodeLeases(node_lease("w1", node_now - dt.timedelta(seconds=2),
                                                              server_now - dt.timedelta(seconds=2)))))
    assert restarts.services_not_ready([kubelet(server_now - dt.timedelta(seconds=20),
                                                node_now - dt.timedelta(seconds=12))]) == []
    # and it still waits for a renewal after the restart
    assert restarts.services_not_ready([kubelet(server_now - dt.timedelta(seconds=20), node_now)]) == [
        f"w1:kubelet: the node's Lease {NOT_RENEWED} at {server_now - dt.timedelta(seconds=20):%H:%M:%S}"]


# --- the controller-manager's leader Lease ----------------------------------------------------

class LeaderLeases(NodeLeases):
    def __init__(self, lease: dict) -> None:
        super().__init__()
        self.lease = lease

    def get(self, path: str) -> dict:
        assert path.endswith("/kube-controller-manager"), path
        return self.lease


def test_a_leader_lease_taken_after_the_restart_passes_with_careconciles_clock_100s_ahead(monkeypatch):
    """The controller-manager took its Lease after the restart and renews it every 2 s (the
    cluster's clocks agree); careconcile's machine is 100 s ahead. Its renewal used to look
    100 s old, past twice the 15 s duration, and the phase check never passed."""
    ahead = dt.timedelta(seconds=100)
    monkeypatch.setenv(CLOCK_OFFSET_ENV, str(ahead.total_seconds()))
    monkeypatch.setattr(components, "utcnow", lambda: real_now() + ahead)  # the name the module reads it by
    cluster_now = real_now()
    lease = {"metadata": {"name": "kube-controller-manager", "managedFields": [
                 {"manager": "kube-controller-manager", "operation": "Update", "time": micro_time(cluster_now),
                  "fieldsV1": {"f:spec": {"f:acquireTime": {}, "f:holderIdentity": {}, "f:renewTime": {}}}}]},
             "spec": {"holderIdentity": "cp1_0b7c", "leaseDurationSeconds": 15,
                      "acquireTime": micro_time(cluster_now - dt.timedelta(seconds=10)),
                      "renewTime": micro_time(cluster_now - dt.timedelta(seconds=1))}}
    restarts = ComponentRestarts(Access(LeaderLeases(lease)))
    restarts.access.layout = CLUSTER_CA
    restarted = ObservedComponent(id="cp1:kube-controller-manager", node="cp1", name="kube-controller-manager",
                                  inputs=(), inputs_digest="d", restarted_for="d",
                                  restarted_at=cluster_now - dt.timedelta(seconds=20))
    assert restarts.not_ready((restarted,)) == []
    # A leader that stopped renewing 60 s ago by the API server's clock is not running again.
    lease["metadata"]["managedFields"][0]["time"] = micro_time(cluster_now - dt.timedelta(seconds=60))
    assert restarts.not_ready((restarted,)) == [
        f"kube-controller-manager has not taken its leader lease since its restart at "
        f"{restarted.restarted_at:%H:%M:%S}"]


def test_the_servers_clock_never_runs_backwards_within_a_second():
    """Dates have whole seconds: a second answer within the same second must not move the
    estimate back (a renew right after an acquire would write an earlier renewTime)."""
    server = DatedServer(dt.timedelta(0), (200, {}), (200, {}), (200, {}))
    second = real_now().replace(microsecond=0)
    server.now = lambda: second  # both answers within one second of the server's
    client = KubeClient(TARGET, transport=server)
    client.get("/a")
    time.sleep(0.05)
    before = client.server_now()
    client.get("/b")
    assert client.server_now() >= before
    server.now = lambda: real_now() - dt.timedelta(seconds=30)  # set back (or another server): followed
    client.get("/c")
    assert abs(client.server_now() - server.now()) < dt.timedelta(seconds=2)


# --- when pods trust both CAs ------------------------------------------------------------------

class Custody:
    def __init__(self) -> None:
        self.saved: list[Stored] = []

    def save(self, stored: Stored) -> None:
        self.saved.append(stored)


def test_the_time_pods_trust_both_cas_from_is_the_apiservers_and_so_is_the_wait(monkeypatch):
    """Pods' startTimes are the cluster's clock: the time from which a pod trusts both CAs is
    recorded, and waited for, by the API server's clock. With careconcile's clock an hour
    ahead it was an hour late (every pod looked stale), an hour behind an hour's wait."""
    ahead = dt.timedelta(hours=1)
    monkeypatch.setenv(CLOCK_OFFSET_ENV, str(ahead.total_seconds()))
    monkeypatch.setattr(verification, "utcnow", lambda: real_now() + ahead)  # the name the module reads it by
    old, new = pki.new_ca("old", now=real_now()), pki.new_ca("new", now=real_now())
    client = NodeLeases()  # an API server whose clock is the real one
    custody = Custody()
    verifier = verification.Verifier(Access(client), custody, None, heartbeat=lambda: None, phase_timeout=1)
    stored = verifier.record_pod_trust(Stored(StoredState(rotation=1, target=new.cert, previous=old.cert),
                                              StoredKeys()))
    since = stored.state.workloads_trusted_since
    assert dt.timedelta(0) < since - real_now() <= TRUST_MARGIN + dt.timedelta(seconds=1), since
    assert custody.saved == [stored]
    assert 0 < seconds_until(since, client.server_now()) <= 6
    behind = dt.timedelta(hours=-1)
    monkeypatch.setattr(restarts, "utcnow", lambda: real_now() + behind)
    assert seconds_until(since, client.server_now()) <= 6  # not the hour this machine's clock would wait


class StartedAt:
    """An apiserver instance whose /metrics say when its process started (node's clock)."""

    def __init__(self, started: float) -> None:
        self.started = started

    def get_text(self, path: str) -> str:
        return f"process_start_time_seconds {self.started}\n" if path == "/metrics" else "ok"

    def __enter__(self) -> "StartedAt":
        return self

    def __exit__(self, *exc) -> None:
        pass


def _apiserver_restarted(at: dt.datetime, replaced_start: float | None) -> ObservedComponent:
    return ObservedComponent(id="cp1:kube-apiserver", node="cp1", name="kube-apiserver", inputs=(),
                             inputs_digest="d", restarted_for="d", restarted_at=at, replaced_start=replaced_start)


@pytest.mark.parametrize("node_behind", [0.0, 1.5, 30.0])
def test_a_restarted_apiserver_is_judged_by_the_process_it_replaced_on_the_nodes_own_clock(monkeypatch, node_behind):
    """The restart was recorded at 12:00:10 by the API server's clock. The new process started
    just after it, but its process_start_time_seconds, counted from the kernel's boot time in
    whole seconds and on the node's clock, says up to ``node_behind`` s earlier (a CI run
    failed so, 1 s early: "still the process started"). The start of the process it replaced,
    recorded on the node's clock too, decides; the restart's time with a slack only when
    that start is unknown."""
    restarted_at = dt.datetime(2026, 12, 4, 12, 0, 10, tzinfo=dt.timezone.utc)
    new_start = restarted_at.timestamp() + 0.3 - node_behind
    old_start = restarted_at.timestamp() - 600 - node_behind
    restarts = ComponentRestarts(Access(NodeLeases()))
    restarts.access.layout = ETCD_CA  # its apiservers restart for the etcd CA
    restarts.access.nodes = {}
    monkeypatch.setattr(restarts, "_client", lambda component, node: StartedAt(new_start))
    assert restarts.not_ready((_apiserver_restarted(restarted_at, old_start),)) == []
    # Still the old process: not restarted, whatever the clocks.
    monkeypatch.setattr(restarts, "_client", lambda component, node: StartedAt(old_start))
    assert restarts.not_ready((_apiserver_restarted(restarted_at, old_start),)) == [
        f"cp1:kube-apiserver: still the process started "
        f"{dt.datetime.fromtimestamp(old_start, dt.timezone.utc):%H:%M:%S}"]
    # Unknown replaced process: the server's time, less START_TIME_SLACK (2 s).
    monkeypatch.setattr(restarts, "_client", lambda component, node: StartedAt(new_start))
    ready = restarts.not_ready((_apiserver_restarted(restarted_at, None),)) == []
    assert ready == (node_behind < components.START_TIME_SLACK)


def test_the_replaced_process_start_counts_only_for_the_restart_it_was_recorded_with():
    """An older careconcile rewrites restarted-at and keeps annotations it does not know: the
    start recorded beside an earlier restart must not be taken for the later one's. A value
    a node file makes up is no time at all."""
    from reconciler.shell.formats import REPLACED_START, RESTARTED_AT, replaced_start, with_restart

    at = dt.datetime(2026, 12, 4, 12, 0, 10, tzinfo=dt.timezone.utc)
    manifest = with_restart({"metadata": {}}, "digest", at, 1_796_000_000.25)
    annotations = manifest["metadata"]["annotations"]
    assert replaced_start(annotations) == 1_796_000_000.25
    older = dict(annotations, **{RESTARTED_AT: micro_time(at + dt.timedelta(minutes=5))})
    assert replaced_start(older) is None
    for made_up in ("nan for " + annotations[RESTARTED_AT], "1e400 for " + annotations[RESTARTED_AT], 5, None, ""):
        assert replaced_start(dict(annotations, **{REPLACED_START: made_up})) is None
    # A restart whose replaced process could not be asked leaves no value behind.
    assert REPLACED_START not in with_restart(manifest, "digest", at, None)["metadata"]["annotations"]
