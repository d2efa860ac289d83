"""Checking a phase on the live cluster: its end state (:mod:`reconciler.core.phases`),
what each apiserver accepts in a TLS handshake, that the kubeconfigs careconcile wrote
work, and that every restarted component runs again."""

from __future__ import annotations

import time
from typing import Callable

from cryptography import x509

from reconciler._time import utcnow
from reconciler.core import pki, phases
from reconciler.core.observed import ClusterObservation, fp
from reconciler.core.pki import KeyPair, LeafRequest
from reconciler.core.plan import PHASES, Action, CheckParams
from reconciler.core.workloads import trusted_since
from reconciler.errors import APIError, CareconcileError, ClusterUnreachableError, RotationError
from reconciler.shell import probes
from reconciler.shell.components import ComponentRestarts
from reconciler.shell.custody import Custody
from reconciler.shell.kube import KubeClient, load_kubeconfig
from reconciler.shell.observe import ClusterAccess, apiserver_servers, observe
from reconciler.shell.statestore import Stored, with_state

PROBE_USER = "careconcile:probe"


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
        while True:
            self.heartbeat()
            try:
                problems = self.problems(phase, new, old_fp)
            except (ClusterUnreachableError, APIError) as exc:  # a restart in progress, a Lease not yet made
                problems = [f"cannot check yet: {exc.message}"]
            if not problems:
                break
            if time.monotonic() > deadline:
                shown = "\n  ".join(problems[:8]) + (f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else "")
                raise RotationError(
                    f"cluster {self.access.name}: phase {phase} ({PHASES[phase]}) did not show on the live cluster "
                    f"within {self.phase_timeout:.0f}s:\n  {shown}",
                    hint="nothing was rolled back; fix the cause and run apply again to resume")
            time.sleep(1.0)
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
        stored = with_state(stored, workloads_trusted_since=trusted_since(utcnow()),
                            workloads_trusted_alone=fp(alone))
        self.custody.save(stored)
        return stored

    def problems(self, phase: int, new: x509.Certificate, old_fp: str) -> list[str]:
        """What still differs from the end state of ``phase``; empty when it is reached."""
        observed = observe(self.access, with_workloads=phase in phases.WORKLOAD_PHASES)
        problems = phases.unmet(observed, phase, new, self.access.workloads)
        problems += self._probe_clients(phase, observed, new, old_fp)
        problems += self.components.not_ready(observed.components)
        if phase == 5:
            problems += self._nodes_ready()
        return problems

    def _probe_clients(self, phase: int, observed: ClusterObservation, new: x509.Certificate,
                       old_fp: str) -> list[str]:
        """Ask each apiserver, as a client would, whom it trusts now."""
        problems = []
        trust = pki.bundle_pem([new] + ([self.custody.cert(old_fp)] if phase < 4 and old_fp != fp(new) else []))
        if phase in (2, 5):
            probe = probe_certificate(self.custody.pair(fp(new)))
            for endpoint in observed.endpoints:
                if probes.accepts_client_certificate(endpoint.server, ca_pem=trust,
                                                     cert_pem=probe.cert_pem, key_pem=probe.key_pem) is None:
                    problems.append(f"apiserver {endpoint.server} does not yet accept client certificates "
                                    f"from the new CA")
        if phase >= 4 and old_fp != fp(new):
            problems += [f"apiserver {server} still accepts client certificates from the old CA {old_fp}"
                         for server in self.accepting([old_fp])]
            if self.access.workspace_kubeconfig.is_file():
                target = load_kubeconfig(self.access.workspace_kubeconfig)
                try:
                    with KubeClient(target, timeout=5) as client:
                        client.get("/api")
                except CareconcileError as exc:
                    problems.append(f"the new kubeconfig {self.access.workspace_kubeconfig} does not work: {exc}")
            management = self.access.management
            if management is not None and self.access.layout.management_kubeconfig:
                try:
                    with KubeClient(management.user_target(), timeout=5) as client:
                        client.get("/api")
                except CareconcileError as exc:
                    problems.append(f"the kubeconfig in {management.kubeconfig_source} does not work: {exc}")
        return problems

    def accepting(self, fingerprints: list[str]) -> list[str]:
        """The apiservers that still accept a client certificate from one of these CAs."""
        keys = self.custody.stored().keys
        known = [pair for pair in (keys.previous, keys.target) if pair is not None]
        trust = pki.bundle_pem([pair.cert for pair in known])
        probes_from = [probe_certificate(pair) for pair in known if fp(pair.cert) in fingerprints]
        return [f"{server} ({node})" for node, server in apiserver_servers(self.access)
                if any(probes.accepts_client_certificate(server, ca_pem=trust, cert_pem=probe.cert_pem,
                                                         key_pem=probe.key_pem) is not None
                       for probe in probes_from)]

    def _nodes_ready(self) -> list[str]:
        problems = []
        for node in self.access.client.list("/api/v1/nodes"):
            conditions = (node.get("status") or {}).get("conditions") or []
            if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                problems.append(f"node {node['metadata']['name']} is not Ready")
        return problems


def probe_certificate(ca: KeyPair) -> KeyPair:
    """A throwaway client certificate from ``ca``, to ask an apiserver whether it trusts ``ca``."""
    return pki.issue_leaf(ca, LeafRequest(PROBE_USER, client=True, key=pki.KeySpec("ECDSA", 256)), now=utcnow())
