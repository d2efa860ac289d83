"""Checking a phase on the live cluster: its end state (:mod:`reconciler.core.phases`),
what each apiserver accepts in a TLS handshake, that the kubeconfigs careconcile wrote
work, and that every restarted component runs again."""

from __future__ import annotations

import time
from typing import Callable

from cryptography import x509

from reconciler._time import utcnow
from reconciler.core import aggregated, kubeadm, phases, pki
from reconciler.core.observed import ClusterObservation, fp
from reconciler.core.pki import KeyPair, LeafRequest
from reconciler.core.plan import PHASES, Action, CheckParams
from reconciler.core.workloads import trusted_since
from reconciler.errors import (APIError, APINotFoundError, CareconcileError, ClusterUnreachableError, PKIError,
                               RotationError, UntrustedServerError)
from reconciler.shell import polling, probes
from reconciler.shell.components import ComponentRestarts
from reconciler.shell.custody import Custody
from reconciler.shell.kube import KubeClient, load_kubeconfig
from reconciler.shell.observe import ClusterAccess, NodeObservations, apiserver_servers, observe, observe_nodes
from reconciler.shell.statestore import Stored, with_state

PROBE_USER = "careconcile:probe"
# How long a phase check's looks may go on with the node files an earlier look read, while
# they wait for the cluster; a file someone else changes meanwhile is seen after this long.
NODE_FILES_REUSE_SECONDS = 5.0
APISERVICES = "/apis/apiregistration.k8s.io/v1/apiservices"


class Verifier:
    def __init__(self, access: ClusterAccess, custody: Custody, components: ComponentRestarts, *,
                 heartbeat: Callable[[], None], phase_timeout: float) -> None:
        self.access = access
        self.custody = custody
        self.components = components
        self.heartbeat = heartbeat
        self.phase_timeout = phase_timeout

    def verify(self, action: Action) -> None:
        assert isinstance(action.params, CheckParams)
        phase = action.site.phase
        new = self.custody.cert(action.params.expect)
        old_fp = action.params.old
        deadline = time.monotonic() + self.phase_timeout
        pauses = polling.intervals()
        # The node files as a look read them, at most NODE_FILES_REUSE_SECONDS ago. careconcile's
        # writes of this phase are done, so the looks that wait for the cluster (restarted
        # components, the certificates apiservers present and accept, kube-root-ca.crt, all
        # asked anew at each look) reuse them; a look that finds no problem with them is
        # repeated on files read again, and only that one ends the check. Over SSH each
        # reading is a round trip or more per node.
        nodes: NodeObservations | None = None
        read_at = 0.0
        while True:
            self.heartbeat()
            fresh = nodes is None or time.monotonic() - read_at > NODE_FILES_REUSE_SECONDS
            try:
                if fresh:
                    nodes, read_at = None, time.monotonic()
                    nodes = observe_nodes(self.access)
                problems = self.problems(phase, new, old_fp, nodes=nodes)
            except (ClusterUnreachableError, APIError) as exc:  # a restart in progress, a Lease not yet made
                problems = [f"cannot check yet: {exc.message}"]
            if not problems:
                if fresh:
                    break
                nodes = None
                continue
            if time.monotonic() > deadline:
                shown = "\n  ".join(problems[:8]) + (f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else "")
                raise RotationError(
                    f"cluster {self.access.name}: phase {phase} ({PHASES[phase]}) did not show on the live cluster "
                    f"within {self.phase_timeout:.0f}s:\n  {shown}",
                    hint="nothing was rolled back; fix the cause and run apply again to resume")
            time.sleep(next(pauses))
        stored = self.custody.stored()
        if stored.state.in_progress and phase == 2 and stored.state.workloads_trusted_since is None:
            # Every kube-root-ca.crt held both CAs when this check read them, before now: a pod
            # started (a margin) after now trusts both. Recorded once per rotation, never moved.
            stored = self.record_pod_trust(stored)
        if stored.state.in_progress and stored.state.verified_phase < phase:
            self.custody.save(with_state(stored, verified_phase=phase))

    def record_pod_trust(self, stored: Stored) -> Stored:
        state = stored.state
        alone = state.target if state.rolling_back else state.previous
        # The API server's clock, as the pods' startTimes are the cluster's (their nodes'), and
        # apply waits until it has passed by that clock too: never this machine's.
        stored = with_state(stored, workloads_trusted_since=trusted_since(self.access.client.server_now() or utcnow()),
                            workloads_trusted_alone=fp(alone))
        self.custody.save(stored)
        return stored

    def problems(self, phase: int, new: x509.Certificate, old_fp: str, *,
                 nodes: NodeObservations | None = None) -> list[str]:
        """What still differs from the end state of ``phase``; empty when it is reached.
        ``nodes``: the node files as :func:`observe_nodes` read them, else read now."""
        observed = observe(self.access, with_workloads=phase in phases.WORKLOAD_PHASES, nodes=nodes)
        problems = phases.unmet(observed, phase, new, self.access.workloads)
        problems += self._probe_clients(phase, observed, new, old_fp)
        problems += self.components.not_ready(observed.components)
        if phase == 5:
            problems += self._nodes_ready()
        return problems

    def _probe_clients(self, phase: int, observed: ClusterObservation, new: x509.Certificate,
                       old_fp: str) -> list[str]:
        """Ask each apiserver, as a client (or the front proxy) would, whom it trusts now."""
        problems = []
        layout = self.access.layout
        if layout.client_probe is not None and phase in (2, 5):
            problems += [f"apiserver {server} does not yet accept {self._as()} certificates from the new CA"
                         for server in self._not_accepting(fp(new))]
        if layout.client_probe == "requestheader" and phase in (2, 5):
            # The aggregated apiservers read the front-proxy CAs from a ConfigMap they watch,
            # at their own pace: ask them, before a certificate from the new CA is presented.
            problems += self._aggregated_not_accepting(self.custody.pair(fp(new)))
        if layout.client_probe is not None and phase >= 4 and old_fp != fp(new):
            problems += [f"apiserver {server} still accepts {self._as()} certificates from the old CA {old_fp}"
                         for server in self.accepting([old_fp])]
        if phase >= 4 and old_fp != fp(new):
            if layout.local_kubeconfigs and self.access.workspace_kubeconfig.is_file():
                target = load_kubeconfig(self.access.workspace_kubeconfig)
                try:
                    with KubeClient(target, timeout=5, backoff_budget=0) as client:
                        client.get("/api")
                except CareconcileError as exc:
                    problems.append(f"the new kubeconfig {self.access.workspace_kubeconfig} does not work: {exc}")
            management = self.access.management
            if management is not None and self.access.layout.management_kubeconfig:
                try:
                    with KubeClient(management.user_target(), timeout=5, backoff_budget=0) as client:
                        client.get("/api")
                except CareconcileError as exc:
                    problems.append(f"the kubeconfig in {management.kubeconfig_source} does not work: {exc}")
        return problems

    def _as(self) -> str:
        return "front-proxy" if self.access.layout.client_probe == "requestheader" else "client"

    def _server_trust(self) -> bytes:
        """What verifies the apiservers' serving certificates: for the cluster CA, the CAs of
        its rotation (the state store's, or the CA of record); for another authority, what
        careconcile's own client of the cluster trusts."""
        if self.access.layout.client_probe == "client-ca":
            keys = self.custody.stored().keys
            known = [pair.cert for pair in (keys.previous, keys.target) if pair is not None]
            return pki.bundle_pem(known or [self.custody.record_pair().cert])
        return self.access.client.target.ca_pem or b""

    def _accepts(self, server: str, ca: KeyPair) -> bool:
        probe = probe_certificate(ca, front_proxy=self.access.layout.client_probe == "requestheader")
        target = self.access.client.target  # its tls-server-name and proxy reach every apiserver
        return probes.accepts_client_certificate(
            server, ca_pem=self._server_trust(), cert_pem=probe.cert_pem, key_pem=probe.key_pem,
            server_name=target.tls_server_name, proxy_url=target.proxy_url,
            front_proxy_user=PROBE_USER if self.access.layout.client_probe == "requestheader" else None) is not None

    def _aggregated_not_accepting(self, ca: KeyPair) -> list[str]:
        """What keeps the aggregated apiservers (APIServices with a Service) from being known
        to authenticate a front-proxy certificate from ``ca``: one that answers 401, one whose
        serving certificate does not verify against its APIService's caBundle, one whose
        APIService or Service careconcile cannot make sense of. One whose Service cannot be
        reached from here (a ClusterIP from outside the cluster) cannot be asked and is passed
        over."""
        probe = probe_certificate(ca, front_proxy=True)
        problems = []
        for item in self.access.client.list(APISERVICES):
            name = aggregated.name_of(item)
            try:
                problem = self._ask_aggregated(name, item, probe)
            except ValueError as exc:  # a field that is not what the API would hold
                problem = f"APIService {name}: {exc}"
            if problem is not None:
                problems.append(problem)
        return problems

    def _ask_aggregated(self, name: str, item: dict, probe: KeyPair) -> str | None:
        """The problem with one APIService's server, None when it authenticates the probe or
        cannot be asked from here (or is served by kube-apiserver itself)."""
        endpoint = aggregated.endpoint(item)
        if endpoint is None:
            return None
        try:
            found = self.access.client.get(endpoint.service_path)
        except APINotFoundError:
            return None
        host = aggregated.host_of(found)
        if host is None:
            return None
        try:
            accepted = probes.authenticates_front_proxy(
                host, endpoint.port, server_name=endpoint.server_name, ca_pem=endpoint.ca_pem,
                cert_pem=probe.cert_pem, key_pem=probe.key_pem, user=PROBE_USER, path=endpoint.path)
        except UntrustedServerError as exc:
            return f"APIService {name}: {exc.message}"
        except PKIError:
            return f"APIService {name}: its caBundle holds no usable PEM certificate"
        except ClusterUnreachableError:
            return None
        return None if accepted else f"aggregated apiserver {name} does not yet accept front-proxy certificates " \
                                     "from the new CA"

    def _not_accepting(self, fingerprint: str) -> list[str]:
        ca = self.custody.pair(fingerprint)
        return [server for _, server in apiserver_servers(self.access) if not self._accepts(server, ca)]

    def accepting(self, fingerprints: list[str]) -> list[str]:
        """The apiservers that still accept a certificate from one of these CAs, as the layout
        probes them (a client certificate, or the front proxy's)."""
        keys = self.custody.stored().keys
        known = [pair for pair in (keys.previous, keys.target) if pair is not None and fp(pair.cert) in fingerprints]
        return [f"{server} ({node})" for node, server in apiserver_servers(self.access)
                if any(self._accepts(server, pair) for pair in known)]

    def _nodes_ready(self) -> list[str]:
        problems = []
        for node in self.access.client.list("/api/v1/nodes"):
            conditions = (node.get("status") or {}).get("conditions") or []
            if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                problems.append(f"node {node['metadata']['name']} is not Ready")
        return problems


def probe_certificate(ca: KeyPair, *, front_proxy: bool = False) -> KeyPair:
    """A throwaway client certificate from ``ca``, to ask an apiserver whether it trusts ``ca``:
    as a client, or as the front proxy (the name kubeadm allows in --requestheader-allowed-names)."""
    name = kubeadm.FRONT_PROXY_CLIENT if front_proxy else PROBE_USER
    return pki.issue_leaf(ca, LeafRequest(name, client=True, key=pki.KeySpec("ECDSA", 256)), now=utcnow())
