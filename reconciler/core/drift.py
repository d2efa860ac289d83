"""CA drift: how a live cluster departs from its spec, with what to do about each (pure).

``diff`` answers "what must a plan do"; drift answers "what is wrong, and who should act",
for a scheduled job that only reads. Each finding names the cluster, the object or file,
and a remedy. The report and its JSON Schema are the `careconcile drift --format json`
contract; metrics are derived from the same report.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field

from reconciler._time import rfc3339
from reconciler.core import pki
from reconciler.core.diff import span, workload_decisions
from reconciler.core.observed import ClusterObservation, ObservedBundle, fp, short
from reconciler.core.record import RECORD_PROBLEMS, resolve_record

if TYPE_CHECKING:
    from reconciler.core.spec import ResolvedAuthority

REPORT_FORMAT_VERSION = 1

DriftKind = Literal[
    "pin-mismatch", "ca-expiring", "ca-expired", "leaf-expiring", "leaf-expired", "key-mismatch",
    "bundle-missing-ca", "bundle-extra-ca", "leaf-wrong-issuer", "leaf-key-mismatch", "apiservers-disagree",
    "rotation-half-done", "ca-bundle-stale", "rotation-requested", "records-disagree", "record-missing",
    "restart-pending", "workload-restart-pending",
]
# Every kind, in the order reports and metrics list them.
DRIFT_KINDS: tuple[str, ...] = DriftKind.__args__  # type: ignore[attr-defined]

ClusterStatus = Literal["in-sync", "drift", "error"]

_APPLY = "run `careconcile plan SPEC` and `careconcile apply`"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DriftFinding(_Model):
    kind: DriftKind
    cluster: str
    authority: str
    subject: str = Field(description="The node file (node:path), API object (kind/namespace/name) or authority.")
    message: str
    remedy: str


class AuthorityStatus(_Model):
    """The live CA of record of one authority, for reports and the not-after metric."""

    authority: str
    fingerprint: str | None
    not_after: str | None = Field(description="RFC 3339, UTC.")
    key: str | None
    earliest_leaf: str | None = Field(default=None, description="Id of the leaf that expires first.")
    earliest_leaf_not_after: str | None = None


class ClusterDrift(_Model):
    spec: str = Field(description="The spec file that declares the cluster.")
    spec_name: str = Field(description="The spec's metadata.name.")
    cluster: str
    status: ClusterStatus
    checked_at: str
    seconds: float = Field(description="How long reading the cluster took.")
    error: str | None = None
    authorities: list[AuthorityStatus] = Field(default_factory=list)
    findings: list[DriftFinding] = Field(default_factory=list)


class DriftTotals(_Model):
    clusters: int
    in_sync: int
    drifted: int
    errors: int
    findings: int
    by_kind: dict[str, int]


class DriftReport(_Model):
    format_version: Literal[1]
    careconcile_version: str
    created: str
    specs: list[str]
    clusters: list[ClusterDrift]
    totals: DriftTotals


def totals(clusters: list[ClusterDrift]) -> DriftTotals:
    by_kind = {kind: 0 for kind in DRIFT_KINDS}
    for cluster in clusters:
        for finding in cluster.findings:
            by_kind[finding.kind] += 1
    return DriftTotals(
        clusters=len(clusters), in_sync=sum(c.status == "in-sync" for c in clusters),
        drifted=sum(c.status == "drift" for c in clusters), errors=sum(c.status == "error" for c in clusters),
        findings=sum(by_kind.values()), by_kind={kind: n for kind, n in by_kind.items() if n},
    )


_RECORD_REMEDIES = {
    "missing": "restore the CA's key and certificate on every control-plane node, and in admin mode in the "
               "management cluster's Secret",
    "disagree": "copy the intended CA to every holder of the CA of record, then run `careconcile drift` again",
}


def authority_status(observed: ClusterObservation) -> AuthorityStatus:
    resolved = resolve_record(observed.records)  # none while the holders disagree
    record, key = resolved.cert, resolved.key_spec
    leaves = sorted(observed.leaves, key=lambda leaf: leaf.cert.not_valid_after_utc)
    return AuthorityStatus(
        authority=observed.authority, fingerprint=fp(record) if record else None,
        not_after=rfc3339(record.not_valid_after_utc) if record else None, key=key,
        earliest_leaf=leaves[0].id if leaves else None,
        earliest_leaf_not_after=rfc3339(leaves[0].cert.not_valid_after_utc) if leaves else None,
    )


class _Findings:
    def __init__(self, observed: ClusterObservation) -> None:
        self.cluster = observed.cluster
        self.authority = observed.authority
        self.items: list[DriftFinding] = []

    def add(self, kind: str, subject: str, message: str, remedy: str) -> None:
        self.items.append(DriftFinding(kind=kind, cluster=self.cluster, authority=self.authority, subject=subject,
                                       message=message, remedy=remedy))


def detect(desired: "ResolvedAuthority", observed: ClusterObservation, *, now: dt.datetime) -> list[DriftFinding]:
    """Every way the cluster departs from ``desired``; empty when it matches."""
    found = _Findings(observed)
    state = observed.state
    authority = observed.authority
    if state.in_progress:
        # Mid-rotation the bundles trust two CAs on purpose: report the rotation, not its symptoms.
        verb = "rollback" if state.rolling_back else "rotation"
        found.add("rotation-half-done", authority,
                  f"a {verb} to {short(fp(state.target))} stopped after phase {state.verified_phase} of 5 "
                  f"(started {state.started or 'at an unknown time'})",
                  "finish it with `careconcile apply SPEC`, or undo it with `careconcile rollback SPEC` "
                  "while the old CA is still trusted")
        # The CA the cluster runs on until the rotation ends: the old one, or for a rollback the
        # one it returns to.
        _expiry(found, authority, "CA", state.target if state.rolling_back else state.previous, desired, now,
                ca=True)
        if state.verified_phase >= 2:
            _workloads(found, observed, fp(state.target), desired, finishing=True)
        return found.items

    resolved = resolve_record(observed.records)
    if resolved.problem is not None:
        found.add(RECORD_PROBLEMS[resolved.problem], authority, resolved.message, _RECORD_REMEDIES[resolved.problem])
        return found.items
    record_cert = resolved.cert
    record = fp(record_cert)

    if desired.fingerprint and desired.fingerprint != record:
        found.add("pin-mismatch", authority,
                  f"the live CA is {record}, the spec pins {desired.fingerprint}",
                  "if this CA is the one you rotated to, record it with `careconcile pin SPEC`; "
                  "otherwise find out who replaced the CA")
    # A pin holds the CA in place: a rotation needs it removed first (and `pin` again after).
    unpin = "remove the spec's `fingerprint` pin, then " if desired.fingerprint else ""
    if desired.rotation > state.applied_rotation and desired.rotation != state.rolled_back_rotation:
        found.add("rotation-requested", authority,
                  f"the spec's rotation counter is {desired.rotation}, the last rotation applied was "
                  f"{state.applied_rotation}", f"{unpin}{_APPLY} to rotate")
    _expiry(found, authority, "CA", record_cert, desired, now, ca=True, unpin=unpin)
    key = pki.key_spec_of(record_cert.public_key())
    if key != desired.key:
        found.add("key-mismatch", authority, f"the CA's key is {key}, the spec asks for {desired.key}",
                  f"{unpin}{_APPLY}: a rotation makes a CA with the spec's key")

    for bundle in observed.bundles:
        _bundle(found, bundle, record)
    for leaf in observed.leaves:
        if not pki.is_signed_by(leaf.cert, record_cert):
            found.add("leaf-wrong-issuer", leaf.id,
                      f"certificate {short(leaf.fingerprint)} (issuer {_issuer(leaf.cert)}) is not signed by the "
                      f"CA of record {short(record)}", f"{_APPLY}: it reissues the certificate from the CA of record")
        elif not leaf.key_matches:
            found.add("leaf-key-mismatch", leaf.id, "its private key does not match its certificate",
                      f"{_APPLY}: it reissues the certificate with a new key")
        if leaf.cert.not_valid_after_utc < record_cert.not_valid_after_utc:
            # A leaf cut off at the CA's own end cannot be renewed past it: the CA's finding covers it.
            _expiry(found, leaf.id, "certificate", leaf.cert, desired, now, ca=False)
    _endpoints(found, observed, record_cert)
    for component in observed.components:
        if component.restarted_for is not None and component.restarted_for != component.inputs_digest:
            found.add("restart-pending", component.id,
                      "its certificate files changed since careconcile last restarted it; it may still use the "
                      "old ones", f"{_APPLY}: it restarts the component")
    _workloads(found, observed, record, desired, finishing=False)
    return found.items


def _workloads(found: _Findings, observed: ClusterObservation, target: str, desired: "ResolvedAuthority", *,
               finishing: bool) -> None:
    """Pods that started before the bundles trusted both CAs of the last rotation, and so
    trust only the CA it left (nothing is known before careconcile's first rotation)."""
    trust = observed.state.pod_trust() if finishing else observed.state.last_pod_trust()
    if trust is None or trust.since is None:
        return
    since, alone = trust.since, trust.alone or "the old CA"
    for decision in workload_decisions(observed, target, desired.workloads, trust):
        workload, stale = decision.workload, decision.stale
        excluded = f"; excluded from restarts by {decision.excluded_by}" if decision.excluded_by else ""
        names = ", ".join(pod.name for pod in stale[:3]) + (", ..." if len(stale) > 3 else "")
        remedy = (f"{decision.blocked}; then finish the rotation with `careconcile apply SPEC`" if finishing
                  and decision.blocked else
                  "finish the rotation with `careconcile apply SPEC`: it restarts them before the apiservers "
                  "switch CAs" if finishing and not decision.excluded_by else
                  f"restart them (`kubectl rollout restart`, or delete a bare pod): their API clients fail on "
                  f"certificates from {short(target)}")
        found.add("workload-restart-pending", workload.id,
                  f"{len(stale)} pod(s) of {workload.describe()} ({names}) started before {rfc3339(since)}, when "
                  f"every kube-root-ca.crt held both CAs, and trust only {short(alone)}{excluded}",
                  remedy)


def _issuer(cert: x509.Certificate) -> str:
    return cert.issuer.rfc4514_string() or "(empty)"


def _expiry(found: _Findings, subject: str, what: str, cert: x509.Certificate | None,
            desired: "ResolvedAuthority", now: dt.datetime, *, ca: bool, unpin: str = "") -> None:
    if cert is None:
        return
    not_after = cert.not_valid_after_utc
    remaining = not_after - now
    prefix = "ca" if ca else "leaf"
    remedy = (f"{unpin}{_APPLY}: a CA inside renewBefore is rotated" if ca
              else f"{_APPLY}: certificates inside renewBefore are reissued from the CA of record")
    if remaining <= dt.timedelta(0):
        found.add(f"{prefix}-expired", subject, f"{what} {short(fp(cert))} expired on {rfc3339(not_after)}", remedy)
    elif remaining < desired.renew_before:
        found.add(f"{prefix}-expiring", subject,
                  f"{what} {short(fp(cert))} expires on {rfc3339(not_after)}, in {span(remaining)}, inside "
                  f"renewBefore {span(desired.renew_before)}", remedy)


def _bundle(found: _Findings, bundle: ObservedBundle, record: str) -> None:
    fingerprints = bundle.fingerprints
    if bundle.managed:
        remedy = f"{_APPLY}: it rewrites the bundle" + (", keeping the object's other CAs"
                                                        if bundle.partial else "")
    elif bundle.published_by == "controller-manager":
        remedy = ("kube-controller-manager publishes it from its --root-ca-file; check that file on the "
                  "control-plane nodes and restart the controller-manager")
    else:
        remedy = "its owner rewrites it; check the files it is made from"
    listed = ", ".join(short(f) for f in fingerprints) or "nothing"
    if record not in fingerprints and bundle.partial:
        # Only the authority's certificates are listed for a caBundle: they are earlier cluster CAs.
        found.add("ca-bundle-stale", bundle.id,
                  f"its caBundle carries the cluster's earlier CA {listed} but not the current one {short(record)}",
                  remedy)
    elif record not in fingerprints:
        found.add("bundle-missing-ca", bundle.id, f"trusts [{listed}] but not the CA of record {short(record)}",
                  remedy)
    extra = [f for f in fingerprints if f != record]
    if extra and record in fingerprints:
        found.add("bundle-extra-ca", bundle.id,
                  f"also trusts {', '.join(short(f) for f in extra)}, which is not the CA of record", remedy)


def _endpoints(found: _Findings, observed: ClusterObservation, record: x509.Certificate) -> None:
    chains: dict[str, list[str]] = {}
    for endpoint in observed.endpoints:
        issuer = "CA of record" if pki.is_signed_by(endpoint.presented, record) else _issuer(endpoint.presented)
        chains.setdefault(issuer, []).append(f"{endpoint.node} ({endpoint.server})")
        if issuer != "CA of record":
            found.add("leaf-wrong-issuer", f"apiserver/{endpoint.node}",
                      f"{endpoint.server} presents {short(fp(endpoint.presented))} issued by {issuer}, not by the "
                      f"CA of record {short(fp(record))}",
                      f"{_APPLY}: it reissues the serving certificate (the apiserver reloads it from disk)")
    if len(chains) > 1:
        found.add("apiservers-disagree", observed.authority,
                  "apiservers present certificates from different issuers: "
                  + "; ".join(f"{issuer}: {', '.join(nodes)}" for issuer, nodes in chains.items()),
                  "clients that trust one CA fail on the other apiservers; " + _APPLY)


def status_of(findings: list[DriftFinding]) -> ClusterStatus:
    return "drift" if findings else "in-sync"
