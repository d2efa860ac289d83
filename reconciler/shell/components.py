"""Restarting the components that read their files only at start, and seeing them run again.

A static pod restarts when its manifest changes: careconcile records the digest of its
inputs in the manifest (and, for the controller-manager, which CA files it signs from). A
node service (the kubelet) restarts by the node's command; a marker file on the node
records the restart.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from typing import Callable

from reconciler._time import parse_time, utcnow
from reconciler.core import kubeadm
from reconciler.core.authorities import NodeServiceComponent, StaticPodComponent, manifest_path
from reconciler.core.leases import NOT_RENEWED, kubelet_lease_problem, lease_duration, lease_spec, renewal_stored_at
from reconciler.core.observed import ObservedComponent
from reconciler.core.plan import Action, RestartParams
from reconciler.core.sites import pair_files
from reconciler.errors import APIError, ClusterUnreachableError, RotationError
from reconciler.shell.formats import (
    dump_manifest, inputs_digest, load_manifest, restart_marker, start_time, with_flags, with_restart,
)
from reconciler.shell.kube import KubeClient, KubeTarget
from reconciler.shell.observe import ClusterAccess, instance_server

NODE_LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
LEADER_LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
# How long a node's restart command (systemctl restart kubelet) may take.
RESTART_COMMAND_TIMEOUT = 120.0
# How often a restart asks whether an instance runs (again): its /readyz, /health or Lease.
POLL_SECONDS = 0.25
# How long the other instances must have answered without a break before one of them is
# restarted: what sees an instance answer first (careconcile) is not what routes clients to
# it (a load balancer's health check, a Service's endpoints), which follows a moment later.
# Without this, a restarted instance answered, the next one stopped at once, and a load
# balancer that had not yet put the first back had none to send requests to (seen with two
# aggregated apiservers behind HAProxy, which checks every 0.25 s).
SETTLE_SECONDS = 1.0
# Prometheus' process collector: when the process serving /metrics started (Unix seconds).
_PROCESS_START = re.compile(r"^process_start_time_seconds\s+(\S+)$", re.M)
# etcd: one line per peer it is connected to; the members of its cluster (gRPC gateway).
_ACTIVE_PEER = re.compile(r"^etcd_network_active_peers\{[^}]*\}\s+1(\.0+)?$", re.M)
ETCD_MEMBER_LIST = "/v3/cluster/member/list"


# How much earlier than its restart by the API server's clock a new process may seem to
# have started: process_start_time_seconds counts from the kernel's boot time, which Linux
# gives in whole seconds (seen 0.96 s early), and the node's clock is not the server's. Used
# only when the restart could not record the replaced process's start (node clock on both
# sides).
START_TIME_SLACK = 2.0
# How much younger the same process may seem from one scrape of its /metrics to the next:
# the kernel's boot time, which its start is counted from, is recomputed at each read in
# whole seconds, and a step of the clock moves it. A new process never starts within a
# second of the one it replaced.
BOOT_TIME_JITTER = 1.0


def process_start(metrics: str) -> float | None:
    """When the process that serves ``metrics`` started (Unix seconds), None when the text
    does not say; ValueError (its message quoting nothing) when it says something that is
    not a time."""
    found = _PROCESS_START.search(metrics)
    if found is None:
        return None
    started = start_time(found.group(1))
    if started is None:
        raise ValueError("its /metrics has a process_start_time_seconds that is not a time")
    return started


class ComponentRestarts:
    def __init__(self, access: ClusterAccess, *, heartbeat: Callable[[], None] = lambda: None,
                 timeout: float = 300.0) -> None:
        self.access = access
        self.heartbeat = heartbeat
        self.timeout = timeout

    def restart(self, action: Action) -> None:
        params = action.params
        assert isinstance(params, RestartParams)
        layout = self.access.layout
        service = next((s for s in layout.node_services if s.name == params.component), None)
        if service is not None:
            self._restart_service(action, service)
            return
        files = self.access.nodes[action.node]
        component = next((c for c in layout.components if c.name == params.component), None)
        if component is None:
            raise RotationError(f"{files.describe()}: {params.component} is not a component of {layout.name}")
        path = manifest_path(params.component)
        before: float | None = None
        if component.one_at_a_time:
            # The other instances first: after a crash during the wait for one of them, this
            # run must not take a second member of quorum (or a second apiserver) down.
            for other in self._instances(component.name):
                if other != action.node:
                    self._wait(component, other, None, "run", settle=SETTLE_SECONDS)
            before = self._start_time(component, action.node)
        # The manifest and the inputs it is restarted for, read together: over SSH one
        # pipelined read, 3 round trips in all instead of 3 per file.
        with files.batch((path, *component.inputs)):
            manifest = load_manifest(files, params.component)
            if manifest is None:
                raise RotationError(f"{files.describe()}: {path} disappeared")
            restarted_for = inputs_digest(files, component.inputs)
        # The API server's clock, which the phase check compares with times of the cluster's
        # (a process's start, a leader Lease's acquireTime); never this machine's.
        restarted_at = self.access.client.server_now() or utcnow()
        manifest = with_restart(manifest, restarted_for, restarted_at, before)
        if params.signing and layout.signer is not None:
            cert, key = ((layout.signer_cert, layout.signer_key) if params.signing == "signer"
                         else (layout.record_cert, layout.record_key))
            manifest = with_flags(manifest, {layout.signer.cert_flag: cert, layout.signer.key_flag: key})
        files.write(path, dump_manifest(manifest), 0o600, keep_mode=True)
        if component.one_at_a_time:
            # Restarted: its process is another than the one seen just before (the node's own
            # clock on both sides), and it answers.
            self._wait(component, action.node, before, "run again")

    def _instances(self, name: str) -> list[str]:
        return [node for node in self.access.control_planes() if load_manifest(self.access.nodes[node], name)]

    def _wait(self, component: StaticPodComponent, node: str, before: float | None, what: str, *,
              settle: float = 0.0) -> None:
        """Wait until this node's instance answers (and, with ``before``, runs a process that
        started after that start time) before anything else restarts; with ``settle``, until
        it has answered for that many seconds without a break."""
        deadline = time.monotonic() + self.timeout
        answering_since: float | None = None
        while True:
            self.heartbeat()
            problem = self._instance_problem(component, node, before=before)
            now = time.monotonic()
            if problem is None:
                answering_since = now if answering_since is None else answering_since
                if now - answering_since >= settle:
                    return
            else:
                answering_since = None
            if now > deadline:
                raise RotationError(f"{node}:{component.name} did not {what} within {self.timeout:.0f}s: "
                                    f"{problem or f'it did not answer for {settle:.0f}s without a break'}",
                                    hint="nothing after this restart ran; fix the cause and run apply again to resume")
            time.sleep(POLL_SECONDS)

    def _client(self, component: StaticPodComponent, node: str) -> KubeClient | None:
        """A client of this node's instance, as its health checks ask it; None when its
        manifest names no server."""
        files = self.access.nodes[node]
        server = instance_server(files, component)
        if component.readiness == "etcd-member":
            cert_file, key_file = pair_files(component.probe_pair)
            target = KubeTarget(name=f"etcd member on {node}", server=server or "",
                                ca_pem=files.read(component.probe_trust), cert_pem=files.read(cert_file),
                                key_pem=files.read(key_file))
        else:
            own = bool(component.probe_trust)  # a server with a certificate of its own CA and names
            trust = files.read(component.probe_trust) if own else self.access.client.target.ca_pem
            # The kubeconfig's tls-server-name is the apiservers' name, not such a server's.
            target = dataclasses.replace(self.access.client.target, name=f"{component.name} on {node}",
                                         server=server or "", ca_pem=trust,
                                         tls_server_name=None if own else self.access.client.target.tls_server_name)
        return KubeClient(target, timeout=5, backoff_budget=0) if server else None

    def _start_time(self, component: StaticPodComponent, node: str) -> float | None:
        """When the instance's process started (Unix seconds, its node's clock); None when it
        cannot be asked now."""
        try:
            client = self._client(component, node)
            if client is None:
                return None
            with client:
                return process_start(client.get_text("/metrics"))
        except (ClusterUnreachableError, APIError, ValueError):
            return None

    def _instance_problem(self, component: StaticPodComponent, node: str, *, before: float | None = None,
                          since: dt.datetime | None = None) -> str | None:
        """Why this node's instance does not run (a process that started after ``before`` by
        the node's clock, or after ``since``) and answer; None when it does."""
        try:
            client = self._client(component, node)
            if client is None:
                return f"{self.access.nodes[node].describe()}: its {component.name} manifest names no server"
            with client:
                metrics = client.get_text("/metrics")
                started = process_start(metrics)
                if started is None:
                    return "no process_start_time_seconds in its /metrics"
                if (before is not None and started <= before + BOOT_TIME_JITTER) or \
                        (since is not None and started < since.timestamp() - START_TIME_SLACK):
                    return f"still the process started {dt.datetime.fromtimestamp(started, dt.timezone.utc):%H:%M:%S}"
                if component.readiness == "etcd-member":
                    if (client.get("/health") or {}).get("health") != "true":
                        return "its /health does not answer true (no leader)"
                    # /health is true with quorum even while a link to a peer is refused.
                    members = client.request("POST", ETCD_MEMBER_LIST, {}).get("members") or []
                    if not isinstance(members, list):
                        return f"its {ETCD_MEMBER_LIST} answer holds no list of members"
                    linked = len(_ACTIVE_PEER.findall(metrics))
                    if linked < len(members) - 1:
                        return f"linked to {linked} of its {len(members) - 1} peers (etcd_network_active_peers)"
                elif client.get_text("/readyz").strip() != "ok":
                    return "its /readyz does not answer ok"
        except (ClusterUnreachableError, APIError, ValueError) as exc:
            return getattr(exc, "message", None) or str(exc)
        return None

    def _restart_service(self, action: Action, service: NodeServiceComponent) -> None:
        """Restart a node service (the kubelet) with the node's restart command, then record
        it in the marker file: the digest of its inputs, when, the node's Lease renewTime
        just after the restart, which the phase check waits to see renewed, and the API
        server's time then (when the Lease could not be read, the check waits for a renewal
        the server stored after it)."""
        files = self.access.nodes[action.node]
        command = self.access.kubelet_restart(action.node)
        if not command:
            raise RotationError(f"{files.describe()}: the spec names no command to restart its {service.name} "
                                "(kubeletRestart)", hint="plan again: the spec changed since this plan was made")
        restarted_for = inputs_digest(files, service.inputs)
        files.run(list(command), timeout=RESTART_COMMAND_TIMEOUT)
        restarted_at = utcnow()
        renewed = self._node_lease_renewed(action.node)
        files.write(service.marker, restart_marker(restarted_for, restarted_at, renewed, self.access.client.server_now()),
                    kubeadm.PUBLIC)

    def _node_lease_renewed(self, node: str) -> dt.datetime | None:
        """The renewTime of the node's Lease, None when it has none (or cannot be read now)."""
        try:
            lease = self.access.client.get(f"{NODE_LEASES}/{node}")
        except (APIError, ClusterUnreachableError):
            return None
        return parse_time(lease_spec(lease).get("renewTime"))

    # --- running again -------------------------------------------------------------------

    def not_ready(self, components: tuple[ObservedComponent, ...]) -> list[str]:
        """Each restarted component runs again: its leader Lease was acquired after the
        restart, or it renewed its nodes' Leases after it. The restart's time is the API
        server's (see :meth:`restart`), compared with the cluster's own times; a manifest
        restarted by an older careconcile carries this machine's time instead."""
        problems = []
        client = self.access.client
        by_name: dict[str, list] = {}
        for component in components:
            if component.restarted_at is not None and component.restart == "manifest":
                by_name.setdefault(component.name, []).append(component)
        problems += self.services_not_ready([c for c in components
                                             if c.restarted_at is not None and c.restart == "command"])
        layouts = {c.name: c for c in self.access.layout.components}
        for name, instances in by_name.items():
            restarted = min(c.restarted_at for c in instances)
            if layouts[name].readiness in ("etcd-member", "apiserver-readyz"):
                # The start of the process the restart replaced, on the node's clock as the
                # new one's; the restart's time by the server's clock only when it is unknown.
                problems += [f"{c.id}: {problem}" for c in instances
                             if (problem := self._instance_problem(
                                 layouts[name], c.node, before=c.replaced_start,
                                 since=c.restarted_at if c.replaced_start is None else None))]
            elif layouts[name].readiness == "leader-lease":
                lease = client.get(f"{LEADER_LEASES}/{name}")
                server_now = client.server_now()  # the clock of the GET just answered
                spec = lease_spec(lease)
                acquired, renewed = parse_time(spec.get("acquireTime")), parse_time(spec.get("renewTime"))
                duration = lease_duration(spec, 15)
                # Renewed lately: when the API server stored the renewal, by its own clock (the
                # renewTime is the leader's clock, careconcile's machine a third one).
                stored = renewal_stored_at(lease)
                if not spec.get("holderIdentity") or acquired is None or acquired < restarted or renewed is None \
                        or (stored is not None and server_now is not None and server_now - stored > duration * 2):
                    problems.append(f"{name} has not taken its leader lease since its restart at {restarted:%H:%M:%S}")
            else:
                stale = [_name(lease) for lease in client.list(NODE_LEASES)
                         if (parse_time(lease_spec(lease).get("renewTime")) or restarted) <= restarted]
                if stale:
                    problems.append(f"{name} has not renewed the leases of {len(stale)} node(s) since its restart "
                                    f"({', '.join(stale[:3])})")
        return problems

    def services_not_ready(self, restarted: list[ObservedComponent]) -> list[str]:
        """Each restarted kubelet runs again: its node's Lease was renewed after the restart
        and lately, each judged on one clock (:func:`reconciler.core.leases.kubelet_lease_problem`)."""
        if not restarted:
            return []
        client = self.access.client
        leases = {_name(lease): lease for lease in client.list(NODE_LEASES)}
        server_now = client.server_now()  # the clock of the list just answered
        problems = []
        for component in restarted:
            lease = leases.get(component.node)
            if lease is None:
                problems.append(f"{component.id}: node {component.node} has no Lease in kube-node-lease; its "
                                f"{component.name} has not registered the node")
                continue
            problem = kubelet_lease_problem(lease, renewed_at_restart=component.lease_renewed_at_restart,
                                            server_at_restart=component.server_time_at_restart, server_now=server_now)
            if problem == NOT_RENEWED:
                problems.append(f"{component.id}: the node's Lease {problem} at {component.restarted_at:%H:%M:%S}")
            elif problem is not None:
                problems.append(f"{component.id}: the node's Lease {problem}")
        return problems


# --- Leases as the API answers them, read as untrusted -------------------------------------

def _name(lease: dict) -> str:
    metadata = lease.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else "(unnamed)"


