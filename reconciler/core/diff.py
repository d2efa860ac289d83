"""Desired versus observed: findings, each with the reason a user reads in the plan (pure)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from pydantic import BaseModel, ConfigDict

from reconciler.core import pki
from reconciler.core.observed import NEW_CA, ClusterObservation, fp, short
from reconciler.core.record import RECORD_PROBLEMS, resolve_record
from reconciler.core.spec import ResolvedWorkloads
from reconciler.core.workloads import PodTrust, WorkloadDecision, decide

if TYPE_CHECKING:
    from reconciler.core.spec import ResolvedAuthority

FindingCode = Literal[
    "rotation-requested", "ca-expiring", "key-mismatch", "pin-mismatch", "records-disagree", "record-missing",
    "bundle-out-of-step", "leaf-out-of-step", "leaf-expiring", "rotation-in-progress", "restart-pending",
    "unmanaged-certificate", "workload-unrestartable", "workload-excluded", "workload-disruption-forbidden",
]

# Findings that a rotation to a new CA resolves.
ROTATION_TRIGGERS = {"rotation-requested", "ca-expiring", "key-mismatch"}
# Findings that repairs under the CA of record resolve (no new CA needed).
REPAIRABLE = {"bundle-out-of-step", "leaf-out-of-step", "leaf-expiring", "restart-pending"}


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: FindingCode
    subject: str
    message: str
    blocking: bool = False  # nothing careconcile can plan resolves it; the plan stops here
    warning: bool = False  # changes nothing in the plan, but someone should act on it


def span(delta: dt.timedelta) -> str:
    """A duration as plans and drift reports give it: ``90d``, or ``5.5h`` under a day."""
    days = delta.total_seconds() / 86400
    return f"{days:.0f}d" if abs(days) >= 1 else f"{delta.total_seconds() / 3600:.1f}h"


def diff(desired: "ResolvedAuthority", observed: ClusterObservation, *, now: dt.datetime,
         rollback: bool = False) -> list[Finding]:
    """``rollback``: the findings of a rollback about to start, which distrusts the rotation's
    target rather than its previous CA."""
    findings: list[Finding] = []
    authority = observed.authority
    state = observed.state
    if state.in_progress:
        target = fp(state.target)
        findings.append(Finding(
            code="rotation-in-progress", subject=authority,
            message=(f"a {'rollback' if state.rolling_back else 'rotation'} to {target} is half done "
                     f"(phase {state.verified_phase} of 5 verified)"),
        ))
        if desired.fingerprint and desired.fingerprint not in (target, fp(state.previous)):
            findings.append(Finding(code="pin-mismatch", subject=authority, blocking=True, message=(
                f"spec pins {desired.fingerprint}, but the rotation in progress moves to {target}")))
        # The CA that ends up distrusted: the previous one, unless a rollback is about to
        # turn back (once it runs, the state store has swapped the two).
        leaving = state.target if rollback and not state.rolling_back else state.previous
        heading = state.previous if rollback and not state.rolling_back else state.target
        if state.verified_phase < 3 or (rollback and not state.rolling_back):
            findings += workload_findings(observed, fp(heading), desired.workloads)
        return findings + _left_behind(observed, leaving, now)

    resolved = resolve_record(observed.records)
    if resolved.problem is not None:
        findings.append(Finding(code=RECORD_PROBLEMS[resolved.problem], subject=authority, blocking=True,
                                message=resolved.message))
        return findings
    record = resolved.cert
    record_fp = fp(record)

    if desired.rotation > state.applied_rotation and desired.rotation != state.rolled_back_rotation:
        findings.append(Finding(code="rotation-requested", subject=authority, message=(
            f"rotation counter raised ({state.applied_rotation} -> {desired.rotation})")))
    remaining = record.not_valid_after_utc - now
    if remaining < desired.renew_before:
        findings.append(Finding(code="ca-expiring", subject=authority, message=(
            f"CA {record_fp} expires {record.not_valid_after_utc:%Y-%m-%d}, in {span(remaining)}, "
            f"inside renewBefore {span(desired.renew_before)}")))
    key = pki.key_spec_of(record.public_key())
    if key != desired.key:
        findings.append(Finding(code="key-mismatch", subject=authority, message=(
            f"CA key is {key}, the spec asks for {desired.key}")))
    rotating = any(finding.code in ROTATION_TRIGGERS for finding in findings)
    if desired.fingerprint and desired.fingerprint != record_fp:
        findings.append(Finding(code="pin-mismatch", subject=authority, blocking=True, message=(
            f"spec pins {desired.fingerprint}, the cluster's CA is {record_fp}"
            + ("; a rotation makes a new CA that cannot match a pin: remove the pin to rotate" if rotating else ""))))
    elif desired.fingerprint and rotating:
        findings.append(Finding(code="pin-mismatch", subject=authority, blocking=True, message=(
            f"spec pins the current CA {record_fp} and also asks for a rotation; remove the pin to rotate")))

    for bundle in observed.bundles:
        # Bundles their owners rewrite (kube-root-ca.crt, ...) follow the managed ones.
        if bundle.managed and bundle.fingerprints != (record_fp,):
            findings.append(Finding(code="bundle-out-of-step", subject=bundle.id, message=(
                f"trusts [{', '.join(bundle.fingerprints) or 'nothing'}], the CA of record is {record_fp}")))
    for leaf in observed.leaves:
        if not pki.is_signed_by(leaf.cert, record):
            findings.append(Finding(code="leaf-out-of-step", subject=leaf.id, message=(
                f"certificate {leaf.fingerprint} is not signed by the CA of record {record_fp}")))
        elif not leaf.key_matches:
            findings.append(Finding(code="leaf-out-of-step", subject=leaf.id, message=(
                "its private key does not match its certificate")))
        elif leaf.cert.not_valid_after_utc - now < desired.renew_before:
            left = leaf.cert.not_valid_after_utc - now
            findings.append(Finding(code="leaf-expiring", subject=leaf.id, message=(
                f"certificate {short(leaf.fingerprint)} expires {leaf.cert.not_valid_after_utc:%Y-%m-%d}, "
                + (f"in {span(left)}, inside renewBefore {span(desired.renew_before)}"
                   if left > dt.timedelta(0) else "it has expired"))))
    for component in observed.components:
        if component.restarted_for is not None and component.restarted_for != component.inputs_digest:
            findings.append(Finding(code="restart-pending", subject=component.id, message=(
                "its files changed since it was last restarted; it may still hold the old ones")))
    if rotating:
        findings += workload_findings(observed, NEW_CA, desired.workloads)
        findings += _left_behind(observed, record, now)
    return findings


def workload_findings(observed: ClusterObservation, target: str, settings: "ResolvedWorkloads") -> list[Finding]:
    """What the plan says about workloads it cannot or may not restart before phase 3."""
    findings = []
    for decision in workload_decisions(observed, target, settings):
        workload, stale = decision.workload, len(decision.stale)
        if decision.blocked:
            findings.append(Finding(code="workload-unrestartable", subject=workload.id, blocking=True,
                                    message=decision.blocked))
        elif decision.excluded_by:
            findings.append(Finding(code="workload-excluded", subject=workload.id, warning=True, message=(
                f"{stale} pod(s) of {workload.describe()} trust only the old CA and are not restarted "
                f"({decision.excluded_by}); their API clients fail once phase 3 switches the apiservers' "
                "certificates, until they restart")))
        elif decision.forbidden:
            findings.append(Finding(code="workload-disruption-forbidden", subject=workload.id, warning=True,
                                    message=f"{decision.forbidden}; apply stops before restarting any workload "
                                            "while it holds"))
    return findings


def _left_behind(observed: ClusterObservation, old: x509.Certificate, now: dt.datetime) -> list[Finding]:
    """Certificates careconcile does not manage that the rotation leaves signed by the old CA."""
    managed = {leaf.fingerprint for leaf in observed.leaves}
    return [
        Finding(code="unmanaged-certificate", subject=foreign.id, warning=True, message=(
            f"certificate {short(fp(foreign.cert))} ({foreign.cert.subject.rfc4514_string() or 'no subject'}, "
            f"until {foreign.cert.not_valid_after_utc:%Y-%m-%d}) is signed by the old CA {short(fp(old))}; "
            "careconcile does not manage it, and clients stop trusting it when phase 4 distrusts the old CA: "
            "reissue it from the new CA before then"))
        for foreign in observed.foreign
        if fp(foreign.cert) not in managed and foreign.cert.not_valid_after_utc > now
        and pki.is_signed_by(foreign.cert, old)
    ]


def workload_decisions(observed: ClusterObservation, target: str, settings: ResolvedWorkloads,
                       trust: PodTrust | None = None) -> list[WorkloadDecision]:
    """The workloads whose pods may not trust ``target`` (a fingerprint, or NEW_CA): none
    when the pods already trust it alone, as in a rollback to the CA they started with.
    ``trust``: what pods trust, if not that of the rotation in progress."""
    record = next((fp(r.cert) for r in observed.records if r.cert is not None), None)
    trust = trust or observed.state.pod_trust(record)
    if trust.alone == target:
        return []
    return decide(observed.workloads, trust, settings)
