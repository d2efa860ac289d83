"""Restarting the workloads whose pods trust only the old CA, the way their owners expect.

A Deployment, StatefulSet or DaemonSet gets the pod-template annotation `kubectl rollout
restart` sets, beside one naming the rotation, and rolls at its own maxUnavailable and
maxSurge; careconcile waits until the rollout is complete and no pod from before is left.
Other pods (a bare pod, a ReplicaSet of its own, an owner careconcile has no rollout for)
are evicted one at a time through the Eviction API, which honours PodDisruptionBudgets:
a 429 is retried until the workload's timeout. A running Job is waited for.

Every step reads the live objects first, so a run killed halfway and run again patches
no template twice for one rotation and skips none.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Callable

from reconciler._time import rfc3339, utcnow
from reconciler.core.plan import Action
from reconciler.core.spec import ResolvedWorkloads, format_timeout
from reconciler.core.workloads import (
    RESTARTED_AT, RESTARTED_FOR, ObservedWorkload, PodTrust, rollout_complete,
)
from reconciler.errors import APIError, APINotFoundError, ClusterUnreachableError, RotationError
from reconciler.shell import polling
from reconciler.shell.kube import KubeClient
from reconciler.shell.workloads import APPS, observe_workloads

EVICTION_RETRY_SECONDS = 2.0


class Stopped(RotationError):
    """Another restart of the same run failed; this one stopped waiting."""


class WorkloadRestarter:
    def __init__(self, client: KubeClient, settings: ResolvedWorkloads, *, rotation: str, trust: PodTrust,
                 heartbeat: Callable[[], None], stop: threading.Event | None = None) -> None:
        self.client = client
        self.settings = settings
        self.rotation = rotation
        self.trust = trust
        self.heartbeat = heartbeat
        self.stop = stop or threading.Event()

    # --- reading ---------------------------------------------------------------------------

    def current(self, action: Action) -> ObservedWorkload | None:
        """The workload as it is now (None once it has no pod that reads the CA)."""
        found = observe_workloads(self.client, self.settings.selector, namespace=action.site.namespace)
        return next((w for w in found if w.id == action.target), None)

    def stale(self, workload: ObservedWorkload | None) -> list:
        return [] if workload is None else [pod for pod in workload.pods if self.trust.trusts_only_old(pod)]

    # --- restarting --------------------------------------------------------------------------

    def restart(self, action: Action) -> None:
        method = action.params.method
        if method == "rollout":
            self._rollout(action)
        elif method == "evict":
            self._evict_all(action)
        else:
            self._wait_for_job(action)

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.timeout.total_seconds()

    def _pause(self, seconds: float) -> None:
        self.heartbeat()
        if self.stop.wait(seconds):
            raise Stopped("stopped: another workload restart of this run failed")

    def _timeout(self, action: Action, what: str) -> RotationError:
        return RotationError(
            f"{action.site.workload} {action.site.namespace}/{action.site.name}: {what} within "
            f"{format_timeout(self.settings.timeout)} (workloads.timeout)",
            hint="nothing was reissued; fix the workload (or exclude it in the spec's workloads.exclude) and run "
                 "apply again to resume")

    def _rollout(self, action: Action) -> None:
        kind, namespace, name = action.site.workload, action.site.namespace, action.site.name
        path = f"{APPS}/namespaces/{namespace}/{kind.lower()}s/{name}"
        if not self.stale(self.current(action)):
            return  # its pods were replaced since the plan was made: nothing to roll
        item = self.client.get(path)
        annotations = (((item.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("annotations") or {}
        if annotations.get(RESTARTED_FOR) != self.rotation:  # else this rotation restarted it already
            self.client.patch(path, {"spec": {"template": {"metadata": {"annotations": {
                RESTARTED_AT: rfc3339(utcnow()), RESTARTED_FOR: self.rotation}}}}})
        deadline = self._deadline()
        pauses = polling.intervals()
        while True:
            try:
                done = rollout_complete(kind, self.client.get(path)) and not self.stale(self.current(action))
            except ClusterUnreachableError:
                done = False
            if done:
                return
            if time.monotonic() > deadline:
                left = self.stale(self.current(action))
                raise self._timeout(action, f"did not finish rolling out ({len(left)} pod(s) from before the "
                                            f"bundles trusted both CAs left: "
                                            f"{', '.join(pod.name for pod in left[:3]) or 'none'})")
            self._pause(next(pauses))

    def _evict_all(self, action: Action) -> None:
        """Evict the pods from before one at a time; an owner brings each back before the next."""
        deadline = self._deadline()
        pauses = polling.intervals()
        while True:
            workload = self.current(action)
            stale = [pod for pod in self.stale(workload) if not pod.terminating]
            if not stale:
                if not self.stale(workload):
                    return
                if time.monotonic() > deadline:
                    raise self._timeout(action, "did not finish evicting its pods")
                self._pause(next(pauses))  # the last one is still terminating
                continue
            running = sum(1 for pod in workload.pods if not pod.terminating and pod.started)
            pod = stale[0]
            self._evict(action, pod.namespace, pod.name, deadline)
            self._wait_gone(action, pod.namespace, pod.name, pod.uid, deadline)
            if workload.kind != "Pod":
                self._wait_replaced(action, running, deadline)
            if time.monotonic() > deadline:
                raise self._timeout(action, "did not finish evicting its pods")

    def _evict(self, action: Action, namespace: str, name: str, deadline: float) -> None:
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
        while True:
            try:
                # A refusal is asked again here, every EVICTION_RETRY_SECONDS with heartbeats
                # and the deadline, not waited out inside the client.
                self.client.create(f"/api/v1/namespaces/{namespace}/pods/{name}/eviction", body, wait_if_busy=False)
                return
            except APINotFoundError:
                return  # gone already
            except APIError as exc:
                if exc.status != 429:
                    raise
                if time.monotonic() > deadline:  # the budget did not allow it in time
                    raise self._timeout(action, f"pod {namespace}/{name} could not be evicted: {exc.message}") \
                        from exc
            self._pause(EVICTION_RETRY_SECONDS)

    def _wait_gone(self, action: Action, namespace: str, name: str, uid: str, deadline: float) -> None:
        pauses = polling.intervals()
        while True:
            try:
                pod = self.client.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
                if pod["metadata"].get("uid") != uid:
                    return
            except APINotFoundError:
                return
            if time.monotonic() > deadline:
                raise self._timeout(action, f"evicted pod {namespace}/{name} did not go away")
            self._pause(next(pauses))

    def _wait_replaced(self, action: Action, running: int, deadline: float) -> None:
        """Until the owner runs as many pods as before the eviction, all started."""
        pauses = polling.intervals()
        while True:
            workload = self.current(action)
            up = [] if workload is None else [p for p in workload.pods if not p.terminating and p.started]
            if len(up) >= running:
                return
            if time.monotonic() > deadline:
                raise self._timeout(action, f"its owner did not bring back its pods ({len(up)} of {running} running)")
            self._pause(next(pauses))

    def _wait_for_job(self, action: Action) -> None:
        deadline = self._deadline()
        pauses = polling.intervals()
        while self.stale(self.current(action)):
            if time.monotonic() > deadline:
                raise self._timeout(action, "is still running; a Job is not restarted, and it did not finish")
            self._pause(next(pauses))


def seconds_until(since: dt.datetime | None, now: dt.datetime | None = None) -> float:
    """Seconds still to wait until pods that start now trust both CAs; ``now`` is the clock
    ``since`` was recorded by, the API server's (this process's if unset)."""
    if since is None:
        return 0.0
    return max(0.0, (since - (now or utcnow())).total_seconds())
