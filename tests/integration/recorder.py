"""A recorder for the workloads invariant: at every poll, every running pod that read the
cluster CA when it started trusts a CA that verifies the chain each apiserver presents.

It knows nothing of careconcile's own bookkeeping. It keeps the history of each namespace's
``kube-root-ca.crt`` as it sees it change, gives each pod the content its namespace's
ConfigMap surely held when the pod started (content first seen within the second that
``status.startTime`` rounds down to counts as not yet there), and
asks each apiserver, with a real TLS handshake per distinct set of trusted CAs, whether it
verifies. It also checks every PodDisruptionBudget's currentHealthy against its
desiredHealthy.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core import pki
from reconciler.errors import CareconcileError
from reconciler.shell import probes
from reconciler.shell.kube import KubeconfigClient

ROOT_CA = "kube-root-ca.crt"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def reads_root_ca(pod: dict) -> bool:
    """The automounted kube-api-access volume or a configMap volume of kube-root-ca.crt."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if (volume.get("configMap") or {}).get("name") == ROOT_CA:
            return True
        if any((source.get("configMap") or {}).get("name") == ROOT_CA
               for source in (volume.get("projected") or {}).get("sources") or []):
            return True
    return False


@dataclass
class PodSeen:
    namespace: str
    name: str
    started: dt.datetime
    trusts: tuple[str, ...]  # fingerprints


@dataclass
class TrustRecorder:
    kubeconfig: Path
    apiservers: list[str]
    interval: float = 0.3
    polls: int = 0
    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    budget_violations: list[str] = field(default_factory=list)
    pods: dict[str, PodSeen] = field(default_factory=dict)  # by uid
    # Per namespace: (first seen at, PEM) for each content seen, oldest first.
    history: dict[str, list[tuple[dt.datetime, bytes]]] = field(default_factory=dict)
    # The last poll's running consumer pods and what each trusts.
    running: dict[str, PodSeen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._certs: dict[bytes, tuple[str, ...]] = {}

    def __enter__(self) -> "TrustRecorder":
        self._client = KubeconfigClient(self.kubeconfig)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except CareconcileError as exc:  # an apiserver restarting: not a violation, but counted
                self.errors.append(f"{time.strftime('%H:%M:%S')} {exc}")
            self._stop.wait(self.interval)

    def _fingerprints(self, pem: bytes) -> tuple[str, ...]:
        if pem not in self._certs:
            self._certs[pem] = tuple(pki.fingerprint(c) for c in pki.load_certificates(pem, source=ROOT_CA))
        return self._certs[pem]

    def _content_at(self, namespace: str, started: dt.datetime) -> bytes:
        """What the namespace's kube-root-ca.crt surely held when a pod started in the second
        ``started``: the newest content seen by then, else (a pod older than the recording)
        the first content seen."""
        history = self.history[namespace]
        held = history[0][1]
        for seen_at, pem in history:
            if seen_at <= started:
                held = pem
        return held

    def poll(self) -> None:
        now = utcnow()
        client = self._client
        for configmap in client.list("/api/v1/configmaps", field_selector=f"metadata.name={ROOT_CA}"):
            namespace = configmap["metadata"]["namespace"]
            pem = ((configmap.get("data") or {}).get("ca.crt") or "").encode()
            history = self.history.setdefault(namespace, [])
            if not history or history[-1][1] != pem:
                history.append((now, pem))
        running: dict[str, PodSeen] = {}
        for pod in client.list("/api/v1/pods"):
            meta, status = pod["metadata"], pod.get("status") or {}
            if status.get("phase") != "Running" or not reads_root_ca(pod) or not status.get("startTime"):
                continue
            uid = meta["uid"]
            if meta["namespace"] not in self.history:  # its namespace is newer than this poll's list
                continue
            if uid not in self.pods:
                started = dt.datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
                content = self._content_at(meta["namespace"], started)
                self.pods[uid] = PodSeen(meta["namespace"], meta["name"], started, self._fingerprints(content))
            running[uid] = self.pods[uid]
        by_trust: dict[tuple[str, ...], list[PodSeen]] = {}
        for seen in running.values():
            by_trust.setdefault(seen.trusts, []).append(seen)
        pems = {fps: pem for pem, fps in self._certs.items()}
        for server in self.apiservers:
            for trusts, pods in by_trust.items():
                if not probes.serves_chain_to(server, pems[trusts]):
                    names = ", ".join(f"{p.namespace}/{p.name}" for p in pods[:4])
                    self.violations.append(f"{now:%H:%M:%S.%f} {server}: {len(pods)} running pod(s) trusting "
                                           f"{[f[:19] for f in trusts]} cannot verify it ({names})")
        for budget in client.list("/apis/policy/v1/poddisruptionbudgets"):
            status = budget.get("status") or {}
            current, desired = status.get("currentHealthy", 0), status.get("desiredHealthy", 0)
            if status.get("expectedPods", 0) and current < desired:
                meta = budget["metadata"]
                self.budget_violations.append(f"{now:%H:%M:%S.%f} PodDisruptionBudget {meta['namespace']}/"
                                              f"{meta['name']}: currentHealthy {current} < desiredHealthy {desired}")
        self.running = running
        self.polls += 1

    def restarted(self, before: set[str]) -> int:
        """How many consumer pods were seen that were not running when ``before`` was taken."""
        return len(set(self.pods) - before)
