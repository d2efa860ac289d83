"""An API server that is too busy for one user, by its own API Priority and Fairness: a
PriorityLevelConfiguration of type Limited with no seats (nominalConcurrencyShares 0, nothing
borrowed) that rejects, a FlowSchema that sends that user's requests to it, and load from the
same user. A level lets one request through when nothing else of it executes (checked on
kube-apiserver v1.37.2: without load, no request got 429), so the load keeps it busy: a
request that arrives meanwhile gets 429, until the FlowSchema is deleted."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Callable

from reconciler.errors import APINotFoundError
from reconciler.shell.kube import KubeClient, load_kubeconfig

FLOWCONTROL = "/apis/flowcontrol.apiserver.k8s.io/v1"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
NAME = "careconcile-busy"
LOAD_THREADS = 3


def grant_cluster_admin(kubeconfig: Path, user: str) -> None:
    """``user`` may do everything (a ClusterRoleBinding to cluster-admin), as an
    impersonated admin identity that is not in system:masters (which APF exempts)."""
    with KubeClient(load_kubeconfig(kubeconfig)) as client:
        client.create(f"{RBAC}/clusterrolebindings", {
            "metadata": {"name": NAME},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


def _flow_schema(user: str) -> dict:
    return {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": NAME},
            "spec": {"priorityLevelConfiguration": {"name": NAME}, "matchingPrecedence": 450,
                     "distinguisherMethod": {"type": "ByUser"},
                     "rules": [{"subjects": [{"kind": "User", "user": {"name": user}}],
                                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                   "namespaces": ["*"], "clusterScope": True}],
                                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}}


class Rejecting:
    """From a thread: once ``start()`` says so, reject ``user``'s requests with 429 until
    ``done()`` says so (or ``longest`` seconds passed), then let them through again."""

    def __init__(self, kubeconfig: Path, user: str, *, start: Callable[[], bool], done: Callable[[], bool],
                 longest: float = 20.0) -> None:
        self.client = KubeClient(load_kubeconfig(kubeconfig))
        self.user, self.start, self.done, self.longest = user, start, done, longest
        self.rejected_for: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Rejecting":
        self.client.create(f"{FLOWCONTROL}/prioritylevelconfigurations", {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
            "metadata": {"name": NAME},
            "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 0, "lendablePercent": 0,
                                                    "borrowingLimitPercent": 0, "limitResponse": {"type": "Reject"}}}})
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set() and not self.start():
            time.sleep(0.05)
        if self._stop.is_set():
            return
        self.client.create(f"{FLOWCONTROL}/flowschemas", _flow_schema(self.user))
        began = time.monotonic()
        loaded = threading.Event()
        load = [threading.Thread(target=self._load, args=(loaded,), daemon=True) for _ in range(LOAD_THREADS)]
        for thread in load:
            thread.start()
        try:
            while not self._stop.is_set() and not self.done() and time.monotonic() - began < self.longest:
                time.sleep(0.05)
        finally:
            self._remove_flow_schema()
            self.rejected_for = time.monotonic() - began
            loaded.set()
            for thread in load:
                thread.join()

    def _load(self, stop: threading.Event) -> None:
        """The same user's requests, back to back, each answer ignored (most are 429s)."""
        target = dataclasses.replace(self.client.target, headers=(("Impersonate-User", self.user),))
        with KubeClient(target, backoff_budget=0) as client:
            while not stop.is_set():
                try:
                    client.list("/api/v1/namespaces/kube-system/configmaps")
                except Exception:  # noqa: BLE001 (a 429, or anything else: load only)
                    pass

    def _remove_flow_schema(self) -> None:
        try:
            self.client.delete(f"{FLOWCONTROL}/flowschemas/{NAME}")
        except APINotFoundError:
            pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._remove_flow_schema()
        try:
            self.client.delete(f"{FLOWCONTROL}/prioritylevelconfigurations/{NAME}")
        except APINotFoundError:
            pass
        self.client.close()
