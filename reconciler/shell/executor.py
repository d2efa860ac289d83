"""Carrying out a cluster's plan against the live cluster, in plan order: the run loop.
Actions run one at a time, except runs of file writes to nodes reached over the network,
which go to several nodes at once (:meth:`Executor._run_by_node`), and workload restarts
(``maxConcurrent`` at once). Each kind of action has one handler in a table; the handlers live by job in
:mod:`custody` (the CA keys and the state store), :mod:`writers` (one writer per kind of
site), :mod:`components` (restarts), :mod:`restarts` (workloads) and :mod:`verification`.

Each action is idempotent and leaves the cluster in a state that planning reads back:
files are replaced atomically, a pair's key is written before its certificate, the new
CA is stored before anything uses it. A run killed between two actions therefore loses
nothing; planning again yields the remaining actions.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

from reconciler.core.diff import workload_decisions
from reconciler.core.observed import fp
from reconciler.core.plan import Action, ClusterPlan
from reconciler.core.sites import NodeFile
from reconciler.core.spec import ResolvedAuthority
from reconciler.errors import CareconcileError, RotationError, StalePlanError
from reconciler.shell.components import ComponentRestarts
from reconciler.shell.custody import Custody
from reconciler.shell.nodes import REMOTE_NODE_PARALLELISM
from reconciler.shell.observe import ClusterAccess, observe
from reconciler.shell.restarts import Stopped, WorkloadRestarter, seconds_until
from reconciler.shell.verification import Verifier
from reconciler.shell.writers import SiteWriters

# Test hook: SIGKILL this process after it completes this many actions (or send it the
# signal CRASH_SIGNAL_ENV names, such as SIGTERM). Unset, nothing differs; the
# crash-and-resume tests set it to stop a run at every action boundary.
CRASH_AFTER_ENV = "CARECONCILE_TEST_CRASH_AFTER_ACTIONS"
CRASH_SIGNAL_ENV = "CARECONCILE_TEST_CRASH_SIGNAL"

# Kinds of action that replace files on one node and nothing else. Over SSH each is a chain
# of round trips, so a run of them on such nodes goes to several nodes at once.
NODE_WRITES = frozenset({"update-bundle", "reissue"})
# After Ctrl-C or SIGTERM, how long the writes under way on other nodes may take to end
# before their connections are dropped: a write is a few round trips, and a hung one would
# hold the exit for the transport's own timeout (60 s).
INTERRUPTED_WRITES_SECONDS = 5.0


@dataclass
class ActionReport:
    action: Action
    seconds: float


@dataclass
class RunReport:
    cluster: str
    authority: str = ""
    done: list[ActionReport] = field(default_factory=list)
    phase_seconds: dict[int, float] = field(default_factory=dict)
    stopped_after_phase: int | None = None


class Executor:
    def __init__(self, access: ClusterAccess, desired: ResolvedAuthority, *,
                 on_event: Callable[[str, Action, dict[str, Any]], None],
                 heartbeat: Callable[[], None] = lambda: None, phase_timeout: float = 300.0) -> None:
        self.access = access
        self.desired = desired
        self.phase_timeout = phase_timeout
        crash_after = os.environ.get(CRASH_AFTER_ENV)
        self._crash_after = int(crash_after) if crash_after else None
        # Read only with the hook on: a stray value must not break every apply.
        self._crash_signal = signal.Signals[os.environ.get(CRASH_SIGNAL_ENV) or "SIGKILL"] if crash_after \
            else signal.SIGKILL
        self._completed = 0
        # Workload restarts run in threads: their events and lock renewals are serialised.
        self._events = threading.RLock()

        def locked_event(kind: str, action: Action, details: dict[str, Any]) -> None:
            with self._events:
                on_event(kind, action, details)

        def locked_heartbeat() -> None:
            with self._events:
                heartbeat()
        self.on_event, self.heartbeat = locked_event, locked_heartbeat
        self.custody = Custody(access, desired)
        self.components = ComponentRestarts(access, heartbeat=self.heartbeat, timeout=phase_timeout)
        self.verifier = Verifier(access, self.custody, self.components, heartbeat=self.heartbeat,
                                 phase_timeout=phase_timeout)
        self.writers = SiteWriters(access, self.custody, desired, heartbeat=self.heartbeat,
                                   phase_timeout=phase_timeout, accepting=self.verifier.accepting)
        # One handler per kind of action; restart-workload runs in groups (see run).
        self._handlers: dict[str, Callable[[Action], None]] = {
            "create-ca": self.custody.create_ca, "rollback-target": self.custody.rollback_target,
            "finalize": self.custody.finalize,
            "update-bundle": self.writers.update_bundle, "reissue": self.writers.reissue,
            "write-kubeconfig": self.writers.write_kubeconfig, "stage-signer": self.writers.stage_signer,
            "switch-signer": self.writers.switch_signer, "remove-signer": self.writers.remove_signer,
            "restart": self.components.restart, "verify": self.verifier.verify,
        }

    def problems(self, phase: int, new, old_fp: str) -> list[str]:
        """What still differs from the end state of ``phase`` (see :class:`Verifier`)."""
        return self.verifier.problems(phase, new, old_fp)

    # --- the run -------------------------------------------------------------------------

    def run(self, plan: ClusterPlan, *, until: int | None = None) -> RunReport:
        report = RunReport(plan.cluster, plan.authority)
        actions = [action for action in plan.actions if until is None or action.phase <= until]
        if len(actions) < len(plan.actions):
            report.stopped_after_phase = until
        index = 0
        while index < len(actions):
            if actions[index].phase == 3 and (index == 0 or actions[index - 1].phase < 3):
                self._check_restarts_planned(actions)
            spread = self._node_writes(actions[index:])
            if len(spread) > 1:
                self._run_by_node(spread, report)
                index += len(spread)
                continue
            if actions[index].kind == "restart-workload":  # a run of them, several at once
                group = list(itertools.takewhile(lambda a: a.kind == "restart-workload", actions[index:]))
                self._restart_workloads(group, report)
                index += len(group)
                continue
            self._run_one(actions[index], report)
            index += 1
        return report

    def _run_one(self, action: Action, report: RunReport,
                 dispatch: Callable[[Action], None] | None = None, *, in_node_group: bool = False) -> None:
        """``in_node_group``: one of :meth:`_run_by_node`'s actions, whose caller renews the
        lock and counts the group's wall time in the phase's, not each action's time."""
        if not in_node_group:
            self.heartbeat()
        self.on_event("start", action, {})
        started = time.monotonic()
        try:
            (dispatch or self._handlers[action.kind])(action)
        except CareconcileError as exc:
            self.on_event("failed", action, {"error": str(exc)})
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Something on a node or in an object is not as observed a moment ago.
            error = RotationError(f"action {action.id} failed: {type(exc).__name__}: {exc}",
                                  hint="plan again to see the state")
            self.on_event("failed", action, {"error": str(error)})
            raise error from exc
        seconds = time.monotonic() - started
        with self._events:  # one at a time, so that the crash hook kills after exactly its count
            report.done.append(ActionReport(action, seconds))
            if not in_node_group:
                report.phase_seconds[action.phase] = report.phase_seconds.get(action.phase, 0.0) + seconds
            self._completed += 1
            self.on_event("done", action, {"seconds": seconds})
            if self._crash_after is not None and self._completed >= self._crash_after:
                os.kill(os.getpid(), self._crash_signal)

    # --- file writes to remote nodes -------------------------------------------------------

    def _writes_remote_node(self, action: Action) -> bool:
        files = self.access.nodes.get(action.site.node) if isinstance(action.site, NodeFile) else None
        return action.kind in NODE_WRITES and files is not None and files.remote

    def _node_writes(self, actions: list[Action]) -> list[Action]:
        """The run of actions at the start of ``actions`` that :meth:`_run_by_node` may spread:
        of one kind and phase, each replacing files on one node reached over the network."""
        if not actions or not self._writes_remote_node(actions[0]):
            return []
        first = actions[0]
        return list(itertools.takewhile(
            lambda a: a.kind == first.kind and a.phase == first.phase and self._writes_remote_node(a), actions))

    def _run_by_node(self, actions: list[Action], report: RunReport) -> None:
        """Each node's actions in plan order, REMOTE_NODE_PARALLELISM nodes at a time. Any
        mix of these written and not is a state planning reads back, as after a crash
        between two actions: each file is replaced atomically, actions of one kind and phase
        do not depend on each other, and two node entries that reach the same files
        (``NodeFiles.place``) share one queue. This thread renews the lock meanwhile.
        The first failure stops the other nodes before their next action, and is raised.
        Ctrl-C or SIGTERM lets the writes under way end for INTERRUPTED_WRITES_SECONDS, then
        drops those nodes' connections (a write cut off there may leave its temp file)."""
        queues: dict[tuple[str, ...], list[Action]] = {}
        for action in actions:
            assert isinstance(action.site, NodeFile)
            queues.setdefault(self.access.nodes[action.site.node].place, []).append(action)
        stop = threading.Event()
        errors: list[BaseException] = []

        def one_node(queue: list[Action]) -> None:
            for action in queue:
                if stop.is_set():
                    return
                try:
                    self._run_one(action, report, in_node_group=True)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    with self._events:
                        errors.append(exc)
                    stop.set()
                    return

        started = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=min(REMOTE_NODE_PARALLELISM, len(queues)), thread_name_prefix="node")
        futures = [pool.submit(one_node, queue) for queue in queues.values()]
        try:
            pending = set(futures)
            while pending:
                self.heartbeat()  # the lock, from this thread alone (a client keeps a connection per thread)
                _, pending = wait(pending, timeout=1.0)
        except BaseException:
            stop.set()
            _, pending = wait(futures, timeout=INTERRUPTED_WRITES_SECONDS)
            if pending:
                for node in dict.fromkeys(action.site.node for action in actions):  # type: ignore[union-attr]
                    self.access.nodes[node].abort()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            phase = actions[0].phase
            report.phase_seconds[phase] = report.phase_seconds.get(phase, 0.0) + time.monotonic() - started
        if errors:
            raise errors[0]

    # --- workloads -----------------------------------------------------------------------

    def _check_restarts_planned(self, actions: list[Action]) -> None:
        """Before phase 3 changes anything, from one reading of the workloads once a pod that
        starts now trusts both CAs (the recorded time has passed):

        - every workload whose pods trust only the old CA is one the plan restarts; one made
          since the plan was (a Deployment, a Job, a bare pod) would fail once the apiservers
          switch: the plan is stale;
        - none that the plan restarts may be forbidden a restart now (a budget that allows
          no disruption, a paused Deployment).

        Either way apply stops here, with nothing restarted or reissued."""
        stored = self.custody.stored()
        state = stored.state
        if not (self.access.layout.pods_trust and state.in_progress):
            return
        if state.workloads_trusted_since is None:  # phase 2 verified by a careconcile that did not record it
            state = self.verifier.record_pod_trust(stored).state
        wait = seconds_until(state.workloads_trusted_since, self.access.client.server_now())
        while wait > 0:
            self.heartbeat()
            time.sleep(min(wait, 1.0))
            wait = seconds_until(state.workloads_trusted_since, self.access.client.server_now())
        planned = {action.target: action for action in actions if action.kind == "restart-workload"}
        decisions = workload_decisions(observe(self.access), fp(state.target), self.access.workloads)
        first = next(action for action in actions if action.phase == 3)
        unplanned = [decision for decision in decisions
                     if (decision.restarts or decision.blocked) and decision.workload.id not in planned]
        if unplanned:
            shown = "\n  ".join(decision.blocked or f"{decision.workload.describe()}: {len(decision.stale)} pod(s) "
                                 "trust only the old CA" for decision in unplanned[:8])
            error = StalePlanError(
                f"cluster {self.access.name} ({self.access.layout.name}): {len(unplanned)} workload(s) that the plan "
                f"does not restart trust only the old CA; phase 3 would break them, so nothing of it ran:\n  {shown}",
                hint="plan again (`careconcile apply SPEC`, or a new saved plan), which restarts them, or exclude "
                     "them in the spec's workloads.exclude")
            self.on_event("failed", first, {"error": str(error)})
            raise error
        forbidden = [decision for decision in decisions
                     if decision.restarts and decision.forbidden and decision.workload.id in planned]
        if forbidden:
            error = RotationError(
                f"cluster {self.access.name}: {len(forbidden)} workload(s) may not be restarted, so the apiservers "
                "must not switch to the new CA yet; nothing was restarted or reissued:\n  "
                + "\n  ".join(decision.forbidden for decision in forbidden),
                hint="let the PodDisruptionBudget allow a disruption (or resume the Deployment), or exclude the "
                     "workload in the spec's workloads.exclude; then run apply again to resume")
            self.on_event("failed", planned[forbidden[0].workload.id], {"error": str(error)})
            raise error

    def _restart_workloads(self, actions: list[Action], report: RunReport) -> None:
        """Restart these workloads, ``maxConcurrent`` at a time (the recorded time has passed,
        and nothing forbids them: see :meth:`_check_restarts_planned`). Ctrl-C stops the
        restarts at their next poll."""
        state = self.custody.stored().state
        settings = self.access.workloads
        stop = threading.Event()
        restarter = WorkloadRestarter(self.access.client, settings, rotation=fp(state.target),
                                      trust=state.pod_trust(), heartbeat=self.heartbeat, stop=stop)
        errors: list[BaseException] = []

        def one(action: Action) -> None:
            if stop.is_set():
                return
            try:
                self._run_one(action, report, dispatch=restarter.restart)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                with self._events:
                    errors.append(exc)
                stop.set()

        pool = ThreadPoolExecutor(max_workers=settings.max_concurrent, thread_name_prefix="restart")
        try:
            list(pool.map(one, actions))
        except BaseException:  # Ctrl-C: the restarts stop waiting before the lock is released
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        first = next((e for e in errors if not isinstance(e, Stopped)), errors[0] if errors else None)
        if first is not None:
            raise first
