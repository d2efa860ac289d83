"""The executor's writes to several remote nodes at once (Executor._run_by_node): which
actions go together, each node's in plan order, and a failure that stops the others. The
handlers are stand-ins that record what ran: the SSH transport itself is exercised by
test_rotation.py's rotation over SSH."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.errors import RotationError
from reconciler.shell import executor as executor_module
from reconciler.shell.executor import Executor, RunReport
from tests.unit.test_render import rotation

PHASE_2 = [a for c in rotation().clusters for a in c.actions if a.phase == 2]


class Node:
    def __init__(self, name: str, remote: bool, place: str | None = None) -> None:
        self.node, self.remote, self.place, self.aborted = name, remote, ("test", place or name), False

    def abort(self) -> None:
        self.aborted = True


def executor(nodes: dict[str, Node], handler) -> tuple[Executor, list[tuple[str, str, str]]]:
    """An executor whose every action kind is ``handler``, recording (kind, id, thread)."""
    ran: list[tuple[str, str, str]] = []
    guard = threading.Lock()

    def record(action):
        with guard:
            ran.append((action.kind, action.id, threading.current_thread().name))
        handler(action)

    runner = Executor.__new__(Executor)
    runner.access = type("Access", (), {"nodes": nodes})()
    runner._events = threading.RLock()
    runner.on_event = lambda kind, action, details: None
    runner.heartbeat = lambda: None
    runner._crash_after, runner._completed = None, 0
    runner._handlers = {kind: record for kind in ("stage-signer", "update-bundle", "restart", "verify")}
    return runner, ran


def test_remote_node_writes_of_a_phase_run_per_node_at_once_each_node_in_plan_order():
    runner, ran = executor({"cp1": Node("cp1", True), "w1": Node("w1", True)}, lambda action: time.sleep(0.05))
    report = runner.run(type(rotation().clusters[0])(**{**rotation().clusters[0].__dict__, "actions": PHASE_2}))
    assert sorted(i for _, i, _ in ran) == sorted(a.id for a in PHASE_2) and len(report.done) == len(PHASE_2)
    grouped = [(i, thread) for kind, i, thread in ran if kind == "update-bundle" and ":/" in i.split("/", 3)[3]]
    assert {thread for _, thread in grouped} >= {"node_0", "node_1"}  # two nodes' threads
    for node in ("cp1", "w1"):
        mine = [i for i, _ in grouped if i.split("/", 3)[3].startswith(f"{node}:")]
        assert mine == [a.id for a in PHASE_2 if a.kind == "update-bundle" and a.target.startswith(f"{node}:")]
    # The others, and the local kubeconfig and API field of the same kind, run here, in order.
    here = [i for _, i, thread in ran if thread == threading.current_thread().name]
    assert here == [a.id for a in PHASE_2 if not (a.kind == "update-bundle" and a.site.kind == "node-file")]


def test_local_nodes_and_one_place_keep_one_action_at_a_time():
    for nodes in ({"cp1": Node("cp1", False), "w1": Node("w1", False)},
                  {"cp1": Node("cp1", True, place="same"), "w1": Node("w1", True, place="same")}):
        runner, ran = executor(nodes, lambda action: None)
        runner.run(type(rotation().clusters[0])(**{**rotation().clusters[0].__dict__, "actions": PHASE_2}))
        assert [i for _, i, _ in ran] == [a.id for a in PHASE_2]  # plan order exactly
        assert len({thread for _, _, thread in ran}) <= 2  # here, or one queue's thread


def test_a_failure_on_one_node_stops_the_others_before_their_next_action_and_is_raised():
    def handler(action):
        time.sleep(0.1 if action.target.startswith("cp1:") else 0.3)
        if action.target == "cp1:/etc/kubernetes/pki/ca.crt":
            raise RotationError("cp1 is gone")

    writes = [a for a in PHASE_2 if a.kind == "update-bundle" and a.site.kind == "node-file"]
    runner, ran = executor({"cp1": Node("cp1", True), "w1": Node("w1", True)}, handler)
    with pytest.raises(RotationError, match="cp1 is gone"):
        runner._run_by_node(writes, RunReport("c1"))
    targets = [i.split("/", 3)[3] for _, i, _ in ran]
    assert "cp1:/etc/kubernetes/pki/ca.crt" in targets
    # No node went on to its next write: cp1's others, w1's second.
    assert set(targets) <= {"cp1:/etc/kubernetes/pki/ca.crt", "w1:/etc/kubernetes/pki/ca.crt"}, targets


def test_ctrl_c_lets_the_writes_under_way_end_then_drops_the_connections_of_those_that_do_not(monkeypatch):
    monkeypatch.setattr(executor_module, "INTERRUPTED_WRITES_SECONDS", 0.5)
    release = threading.Event()

    def handler(action):
        if action.target.startswith("w1:"):
            release.wait(10)  # a hung write, until its connection is dropped

    nodes = {"cp1": Node("cp1", True), "w1": Node("w1", True)}
    runner, ran = executor(nodes, handler)

    def interrupt_then_drop():
        calls = {"n": 0}

        def heartbeat():
            calls["n"] += 1
            if calls["n"] == 2:  # the second renewal, a second into the group
                raise KeyboardInterrupt
        return heartbeat
    runner.heartbeat = interrupt_then_drop()
    original = Node.abort

    def abort(self):
        original(self)
        release.set()  # what dropping the connection does to the call under way
    Node.abort = abort
    try:
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            runner._run_by_node([a for a in PHASE_2 if a.kind == "update-bundle" and a.site.kind == "node-file"],
                                RunReport("c1"))
    finally:
        Node.abort = original
    assert nodes["w1"].aborted and 1.4 <= time.monotonic() - started < 5  # a renewal, then the grace
    assert [i.split("/", 3)[3] for _, i, _ in ran if i.split("/", 3)[3].startswith("w1:")] == \
        ["w1:/etc/kubernetes/pki/ca.crt"]  # stopped before its next write
