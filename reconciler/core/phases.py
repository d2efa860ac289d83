"""What the live state of an authority looks like at the end of each phase of a rotation
(pure): the one description that apply's checks and plan checks use.

Phase 2 (trust both): every bundle trusts the new CA. Phase 3 (reissue): besides, every
leaf is signed by the new CA with its key, every CA of record is the new CA, every
apiserver presents a certificate from it, and no pod that trusts only the old CA is left
in a workload careconcile restarts. Phase 4 (distrust old) and 5: every bundle trusts the
new CA alone. What needs the network (TLS probes, Leases) the shell adds.
"""

from __future__ import annotations

from cryptography import x509

from reconciler.core import pki
from reconciler.core.diff import workload_decisions
from reconciler.core.observed import ClusterObservation, fp, short
from reconciler.core.spec import ResolvedWorkloads

# The phases whose end state includes the workloads (observing pods costs a list of them).
WORKLOAD_PHASES = (3, 5)


def unmet(observed: ClusterObservation, phase: int, new: x509.Certificate,
          workloads: ResolvedWorkloads) -> list[str]:
    """What still differs from the end state of ``phase``; empty when it is reached."""
    new_fp = fp(new)
    problems: list[str] = []
    for bundle in observed.bundles:
        have = set(bundle.fingerprints)
        if phase in (2, 3) and new_fp not in have:
            problems.append(f"{bundle.id} does not trust {short(new_fp)} yet")
        if phase >= 4 and bundle.fingerprints != (new_fp,):
            problems.append(f"{bundle.id} still trusts {sorted(have - {new_fp}) or 'not the new CA'}")
    if phase >= 3:
        for leaf in observed.leaves:
            if not pki.is_signed_by(leaf.cert, new) or not leaf.key_matches:
                problems.append(f"{leaf.id} is not a certificate from the new CA with its key")
        for record in observed.records:
            if record.cert is None or fp(record.cert) != new_fp:
                problems.append(f"{record.node} does not hold the new CA's key as its CA of record")
        for endpoint in observed.endpoints:
            if not pki.is_signed_by(endpoint.presented, new):
                problems.append(f"apiserver {endpoint.server} on {endpoint.node} still presents a certificate "
                                f"not signed by the new CA")
    if phase in WORKLOAD_PHASES:
        for decision in workload_decisions(observed, new_fp, workloads):
            if decision.restarts:
                problems.append(f"{len(decision.stale)} pod(s) of {decision.workload.describe()} still trust only "
                                f"the old CA ({', '.join(pod.name for pod in decision.stale[:3])})")
    return problems
