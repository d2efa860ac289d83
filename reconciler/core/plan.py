"""From findings to an ordered plan of actions in five phases (pure).

The phase a cluster is in is read from the live state, not from a journal: a phase is
done once its verification is recorded in the cluster's state store, and every action
is planned only while the live state still differs from what the action makes. Planning
again halfway through a rotation therefore yields exactly the remaining actions, with
the same ids.

These pydantic models are also the saved plan's format; schemas/plan.schema.json is
generated from :class:`PlanDocument`.
"""

from __future__ import annotations

import shlex
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from reconciler.core import pki
from reconciler.core.diff import REPAIRABLE, ROTATION_TRIGGERS, Finding, workload_decisions
from reconciler.core.observed import NEW_CA, ClusterObservation, ObservedBundle, fp, short
from reconciler.core.sites import (
    ApiField, Component, LocalKubeconfig, ManagementSecret, NodeFile, NodeSigner, PhaseCheck, Site, StateRecord,
    AtSite, Workload,
)
from reconciler.core.spec import DNS_LABEL, PRIMARY_AUTHORITY, ResolvedWorkloads
from reconciler.core.workloads import reason as workload_reason
from reconciler.errors import RollbackRefusedError

if TYPE_CHECKING:
    from reconciler.core.spec import ResolvedAuthority

# 2: typed sites and params per action kind (1 had string targets, node, path and params).
# 3: the spec's text is in the plan, with the spec's path relative to plan's working
#    directory (2 named the spec by its absolute path, which apply read again).
FORMAT_VERSION = 3

PHASES = {1: "prepare", 2: "trust-both", 3: "reissue", 4: "distrust-old", 5: "verify"}
ROLLBACK_TITLES = {
    1: "prepare: make the old CA the target again",
    2: "trust both: every bundle trusts both CAs (already so)",
    3: "reissue: every certificate from the old CA again",
    4: "distrust the abandoned CA: bundles hold only the old CA",
    5: "verify",
}
PHASE_TITLES = {
    1: "prepare: make the new CA and store it durably",
    2: "trust both: every bundle trusts old and new",
    3: "reissue: every certificate from the new CA",
    4: "distrust old: bundles hold only the new CA",
    5: "verify",
}

ActionKind = Literal[
    "create-ca", "rollback-target", "update-bundle", "stage-signer", "switch-signer", "reissue", "restart",
    "write-kubeconfig", "remove-signer", "verify", "finalize", "restart-workload",
]
Operation = Literal["none", "rotate", "resume", "repair", "rollback"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Change(_Model):
    """Before and after, as certificate fingerprints (``sha256:...``) or ``(new CA)``;
    never key material."""

    before: list[str]
    after: list[str]


class CreateCAParams(_Model):
    key: str
    validity: str
    common_name: str
    rotation: int


class ReissueParams(_Model):
    certificate: str = Field(description="Fingerprint of the certificate reissued.")
    subject: str


class RestartParams(_Model):
    component: str
    command: str | None = Field(default=None, description="What runs on the node (a node service's restart).")
    signing: Literal["signer", "record"] | None = Field(
        default=None, description="Which CA files the controller-manager signs from after the restart.")


class RestartWorkloadParams(_Model):
    method: Literal["rollout", "evict", "wait"]
    pods: int = Field(ge=0, description="Pods that trust only the old CA.")
    replicas: int | None = None


class CheckParams(_Model):
    expect: str
    old: str


class FinalizeParams(_Model):
    expect: str


Params = CreateCAParams | ReissueParams | RestartParams | RestartWorkloadParams | CheckParams | FinalizeParams

# What each kind of action acts on and is told: a plan whose action names another kind of
# site or other parameters is refused when it is read.
ACTION_SITES: dict[str, tuple[type, ...]] = {
    "create-ca": (StateRecord,), "rollback-target": (StateRecord,), "finalize": (StateRecord,),
    "update-bundle": (NodeFile, LocalKubeconfig, ApiField, ManagementSecret),
    "reissue": (NodeFile, LocalKubeconfig, ManagementSecret),
    "write-kubeconfig": (LocalKubeconfig,),
    "stage-signer": (NodeSigner,), "remove-signer": (NodeSigner,), "switch-signer": (NodeSigner, ManagementSecret),
    "restart": (Component,), "restart-workload": (Workload,), "verify": (PhaseCheck,),
}
ACTION_PARAMS: dict[str, type[_Model] | None] = {
    "create-ca": CreateCAParams, "reissue": ReissueParams, "restart": RestartParams,
    "restart-workload": RestartWorkloadParams, "verify": CheckParams, "finalize": FinalizeParams,
}


class Action(AtSite, _Model):
    id: str = Field(description="Stable id: cluster/phase/kind/target.")
    phase: int = Field(ge=1, le=5)
    kind: ActionKind
    site: Site = Field(description="What the action writes, restarts or checks.")
    change: Change | None = None
    reason: str
    params: Params | None = None

    @computed_field(description="The site's id, as people read it: node:path, kind/namespace/name, a component.")
    @property
    def target(self) -> str:
        return self.site.label

    @model_validator(mode="wrap")
    @classmethod
    def _consistent(cls, data: Any, handler: Any) -> "Action":
        """A plan file's action is read as a whole: its site is of a kind this action writes,
        its params are this kind's, and its target and id say what its site is."""
        shown = None
        if isinstance(data, dict) and "target" in data:
            data = dict(data)
            shown = data.pop("target")
        if isinstance(data, dict) and isinstance(data.get("params"), dict):
            model = ACTION_PARAMS.get(data.get("kind"))  # type: ignore[arg-type]
            if model is None:
                raise ValueError(f"a {data.get('kind')} action takes no params")
            data = {**data, "params": model.model_validate(data["params"])}
        action = handler(data)
        if not isinstance(action.site, ACTION_SITES[action.kind]):
            raise ValueError(f"a {action.kind} action cannot act on a {action.site.kind} site")
        wanted = ACTION_PARAMS.get(action.kind)
        if (wanted is None) != (action.params is None) or (wanted is not None and type(action.params) is not wanted):
            raise ValueError(f"a {action.kind} action needs {wanted.__name__ if wanted else 'no'} params")
        if isinstance(action.params, RestartParams) and action.params.component != action.site.name:
            raise ValueError(f"restarts {action.params.component} at the site of {action.site.name}")
        if isinstance(action.site, PhaseCheck) and action.site.phase != action.phase:
            raise ValueError(f"checks phase {action.site.phase} in phase {action.phase}")
        if shown is not None and shown != action.target:
            raise ValueError(f"target {shown!r} is not its site {action.target!r}")
        if not action.id.endswith(f"/{action.phase}/{action.kind}/{action.target}"):
            raise ValueError(f"id {action.id!r} does not name phase {action.phase}, {action.kind} and {action.target}")
        return action


class ClusterPlan(_Model):
    cluster: str = Field(pattern=DNS_LABEL, max_length=63, description="The cluster's name, as the spec has it.")
    authority: Literal["clusterCA", "etcdCA", "frontProxyCA"]
    operation: Operation
    old_ca: str | None = None
    new_ca: str | None = None
    observed_digest: str = Field(description="Digest of the observed state this plan was made against.")
    observed_items: dict[str, str] = Field(description="Digest per observed item, to name what changed.")
    findings: list[Finding]
    actions: list[Action]


class PlanDocument(_Model):
    format_version: Literal[3]
    careconcile_version: str
    created: str
    operation: Literal["apply", "rollback"]
    # a path: no NUL, no line break, no escape
    spec_path: str = Field(pattern=r"^[^\x00-\x1f\x7f]+$",
                           description="Where the spec was when the plan was made (absolute); shown, never read.")
    spec_relative_path: str = Field(
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The spec's path relative to the working directory `plan` ran in. Without --spec, apply "
                    "takes the spec to be there relative to its own working directory, and resolves the spec's "
                    "relative paths against that file's directory.")
    spec_digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="SHA-256 of the spec's bytes.")
    spec_text: str = Field(description="The spec's text, exactly the bytes read (UTF-8): what apply plans from.")
    clusters: list[ClusterPlan]
    summary: dict[str, int] = Field(description="Actions per kind, as the summary line counts them.")

    def actions(self) -> list[Action]:
        return [action for cluster in self.clusters for action in cluster.actions]


# --- summary -----------------------------------------------------------------------------

_COUNTED = (
    ("create-ca", "CA to create", "CAs to create"),
    ("rollback-target", "rollback to start", "rollbacks to start"),
    ("update-bundle", "bundle to update", "bundles to update"),
    ("reissue", "certificate to reissue", "certificates to reissue"),
    ("write-kubeconfig", "kubeconfig to write", "kubeconfigs to write"),
    ("restart", "restart", "restarts"),
    ("restart-workload", "workload restart", "workload restarts"),
)


def summary_counts(actions: list[Action]) -> dict[str, int]:
    counts = Counter(action.kind for action in actions)
    return {kind: counts.get(kind, 0) for kind, _, _ in _COUNTED}


def summary_line(actions: list[Action]) -> str:
    """Terraform's closing line: ``Plan: 1 CA to create, 14 bundles to update, ...``."""
    if not any(action.kind not in ("verify",) for action in actions):
        return "No changes. The clusters match the spec."
    counts = summary_counts(actions)
    parts = [f"{counts[kind]} {one if counts[kind] == 1 else many}" for kind, one, many in _COUNTED
             if counts[kind] or kind in ("update-bundle", "reissue", "restart")]
    return "Plan: " + ", ".join(parts) + "."


# --- planning ----------------------------------------------------------------------------

def _id_prefix(observed: ClusterObservation) -> str:
    """Action ids start with the cluster; another authority's with ``cluster/authority``,
    so that one plan may hold several authorities of a cluster (a component may restart
    in the same phase for two of them)."""
    return observed.cluster if observed.authority == PRIMARY_AUTHORITY else f"{observed.cluster}/{observed.authority}"


class _Builder:
    """Collects actions of one cluster; ids are stable so a replan names the same work."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.actions: list[Action] = []

    def add(self, phase: int, kind: ActionKind, site: Site, reason: str, *, change: Change | None = None,
            params: Params | None = None) -> None:
        self.actions.append(Action(
            id=f"{self.cluster}/{phase}/{kind}/{site.label}", phase=phase, kind=kind, site=site, change=change,
            reason=reason, params=params,
        ))

    def touched(self, phase: int, node: str, paths: tuple[str, ...]) -> bool:
        return any(action.phase == phase and action.node == node and isinstance(action.site, NodeFile)
                   and set(action.site.files) & set(paths)
                   and action.kind in ("update-bundle", "reissue") for action in self.actions)


def _in(cert_fp: str, bundle: ObservedBundle) -> bool:
    return cert_fp in bundle.fingerprints


def _issuer_label(cert: x509.Certificate, known: list[x509.Certificate]) -> str:
    for ca in known:
        if pki.is_signed_by(cert, ca):
            return fp(ca)
    return "unknown CA"


def plan_cluster(
    desired: "ResolvedAuthority", observed: ClusterObservation, findings: list[Finding], *,
    rollback: bool = False, digest: str, items: dict[str, str],
) -> ClusterPlan:
    """The actions that bring one cluster's authority to the spec, in phase order."""
    state = observed.state

    def result(operation: Operation, actions: list[Action], old: str | None = None,
               new: str | None = None) -> ClusterPlan:
        return ClusterPlan(cluster=observed.cluster, authority=observed.authority, operation=operation,
                           old_ca=old, new_ca=new, observed_digest=digest, observed_items=items,
                           findings=findings, actions=actions)

    if rollback:
        return _plan_rollback(observed, result, desired.workloads)
    if any(finding.blocking for finding in findings):
        return result("none", [])

    codes = {finding.code for finding in findings}
    if state.in_progress:
        old_cert, new_cert = state.previous, state.target
        operation: Operation = "resume"
    elif codes & ROTATION_TRIGGERS:
        old_cert, new_cert = observed.records[0].cert, None
        operation = "rotate"
    elif codes & REPAIRABLE:
        old_cert = new_cert = observed.records[0].cert
        operation = "repair"
    else:
        return result("none", [])

    builder = _Builder(_id_prefix(observed))
    if operation == "rotate":
        reasons = "; ".join(f.message for f in findings if f.code in ROTATION_TRIGGERS)
        builder.add(1, "create-ca", StateRecord(), f"rotate: {reasons}",
                    change=Change(before=[fp(old_cert)], after=[NEW_CA]),
                    params=CreateCAParams(key=str(desired.key), validity=f"{desired.validity.days}d",
                                          common_name=desired.common_name, rotation=desired.rotation))
    renew = {finding.subject: finding.message for finding in findings if finding.code == "leaf-expiring"}
    _plan_phases(builder, observed, old_cert, new_cert, operation=operation, renew=renew, workloads=desired.workloads)
    return result(operation, builder.actions, fp(old_cert), fp(new_cert) if new_cert else NEW_CA)


def _plan_rollback(observed: ClusterObservation, result, workloads: ResolvedWorkloads) -> ClusterPlan:
    state = observed.state
    if not state.in_progress:
        raise RollbackRefusedError(f"cluster {observed.cluster} ({observed.authority}): no rotation in progress, "
                                   "nothing to roll back",
                                   nothing_in_progress=True)
    if state.rolling_back:  # a rollback that was interrupted: resume it like any rotation
        builder = _Builder(_id_prefix(observed))
        _plan_phases(builder, observed, state.previous, state.target, operation="resume", workloads=workloads)
        return result("rollback", builder.actions, fp(state.previous), fp(state.target))
    if not state.has_previous_key:
        raise RollbackRefusedError(f"cluster {observed.cluster} ({observed.authority}): the state store no longer "
                                   "holds the old CA's key")
    old_fp = fp(state.previous)
    target_fp = fp(state.target)
    # A bundle that trusts neither CA of this rotation (a webhook left on a CA retired
    # earlier) says nothing about whether the old CA is still trusted.
    distrusting = [bundle.id for bundle in observed.bundles if bundle.managed and not _in(old_fp, bundle)
                   and (not bundle.partial or _in(target_fp, bundle))]
    if distrusting:
        raise RollbackRefusedError(
            f"cluster {observed.cluster} ({observed.authority}): the old CA {old_fp} is no longer trusted by "
            f"{len(distrusting)} bundle(s) ({', '.join(distrusting[:3])}{', ...' if len(distrusting) > 3 else ''}); "
            "a rollback is possible only until the old CA is distrusted",
            hint="finish the rotation with `careconcile apply SPEC` instead")
    builder = _Builder(_id_prefix(observed))
    builder.add(1, "rollback-target", StateRecord(), f"roll back from {short(fp(state.target))} to {short(old_fp)}",
                change=Change(before=[fp(state.target)], after=[old_fp]))
    # From here it is a rotation to the old CA that starts with both CAs trusted.
    _plan_phases(builder, observed, state.target, state.previous, operation="rollback", workloads=workloads)
    return result("rollback", builder.actions, fp(state.target), old_fp)


def _plan_phases(builder: _Builder, observed: ClusterObservation, old_cert: x509.Certificate,
                 new_cert: x509.Certificate | None, *, operation: Operation,
                 renew: dict[str, str] | None = None, workloads: ResolvedWorkloads | None = None) -> None:
    """``renew``: leaves due for renewal (id -> why), reissued from the CA they already have."""
    state = observed.state
    old_fp = fp(old_cert)
    new_fp = fp(new_cert) if new_cert is not None else NEW_CA
    same = new_fp == old_fp  # a repair under the CA of record
    # A rollback keeps "both trusted" (phase 2) and redoes the phases after it.
    verified = {"resume": state.verified_phase, "rollback": min(state.verified_phase, 2)}.get(operation, 0)
    managed = [bundle for bundle in observed.bundles if bundle.managed]
    splits_signer = not same
    known = [cert for cert in (new_cert, old_cert) if cert is not None]

    def open_phase(phase: int) -> bool:
        return verified < phase

    # Phase 2: trust both.
    if open_phase(2) and not same:
        for bundle in managed:
            if bundle.published_by == "apiserver":
                continue  # the apiserver adds the CAs it trusts itself; it only never removes one
            if not _in(new_fp, bundle) or new_cert is None:
                after = [old_fp, new_fp]
                builder.add(2, "update-bundle", bundle.site, f"trust {short(new_fp)} beside {short(old_fp)}",
                            change=Change(before=list(bundle.fingerprints), after=after))
        for record in observed.records if observed.has_signer else ():
            staged = record.signer is not None and record.signer_key_matches
            if not staged and record.cert is not None and record.kind == "node":
                # It goes on signing with the CA it signs with now, whichever way the rotation runs.
                builder.add(2, "stage-signer", record.site, (
                    "the controller-manager must sign from a single-certificate file while ca.crt holds two"),
                    change=Change(before=[], after=[fp(record.cert)]))
    # Phase 3: first the pods that trust only the old CA, then reissue.
    if open_phase(3) and not same:
        for decision in workload_decisions(observed, new_fp, workloads or ResolvedWorkloads()):
            if decision.restarts:
                workload = decision.workload
                builder.add(3, "restart-workload", Workload(namespace=workload.namespace, workload=workload.kind,
                                                            name=workload.name), workload_reason(decision),
                            params=RestartWorkloadParams(method=decision.method, pods=len(decision.stale),
                                                         replicas=workload.replicas))
    if open_phase(3):
        if not same:
            # The management cluster's record (admin mode) first: the new CA is uploaded there
            # before the nodes sign with it.
            for record in sorted(observed.records, key=lambda r: r.kind != "secret"):
                record_fp = fp(record.cert) if record.cert is not None else None
                staged_fp = fp(record.signer) if record.signer is not None else record_fp
                before = Change(before=[fp(record.cert) if record.cert else "none"], after=[new_fp])
                if record.kind == "secret" and (new_cert is None or record_fp != new_fp):
                    builder.add(3, "switch-signer", record.site,
                                f"make {short(new_fp)} the CA of record in the management cluster (tls.crt, tls.key)",
                                change=before)
                elif record.kind == "node" and (new_cert is None or record_fp != new_fp or staged_fp != new_fp):
                    builder.add(3, "switch-signer", record.site, f"sign certificates with {short(new_fp)} from now on"
                                if observed.has_signer else f"make {short(new_fp)} the CA of record (its key)",
                                change=before)
        for leaf in observed.leaves:
            due = (renew or {}).get(leaf.id)
            if new_cert is None or not pki.is_signed_by(leaf.cert, new_cert) or not leaf.key_matches or due:
                issuer = _issuer_label(leaf.cert, known)
                reason = ("its key does not match its certificate" if not leaf.key_matches
                          else due if due and same else f"issued by {short(issuer)}")
                builder.add(3, "reissue", leaf.site, reason, change=Change(before=[issuer], after=[new_fp]),
                            params=ReissueParams(certificate=leaf.fingerprint,
                                                 subject=leaf.cert.subject.rfc4514_string()))
    # Phase 4: distrust old.
    if open_phase(4):
        for bundle in managed:
            if new_cert is None or bundle.fingerprints != (new_fp,):
                trusting_both = next((a.change.after for a in builder.actions if a.phase == 2
                                      and a.kind == "update-bundle" and a.target == bundle.id), None)
                before = list(trusting_both or bundle.fingerprints)
                builder.add(4, "update-bundle", bundle.site,
                            f"distrust {short(old_fp)}" if not same else "trust only the CA of record",
                            change=Change(before=before, after=[new_fp]))
        # Once written, the workspace kubeconfig is a bundle and a leaf like any other.
        if not same and observed.workspace_kubeconfig_path and observed.workspace_kubeconfig is None:
            builder.add(4, "write-kubeconfig", LocalKubeconfig(path=observed.workspace_kubeconfig_path),
                        f"a fresh admin kubeconfig that trusts {short(new_fp)}", change=Change(before=[], after=[new_fp]))

    _plan_restarts(builder, observed, splits_signer=splits_signer, verified=verified, operation=operation)

    if open_phase(4) and not same and observed.has_signer:
        for record in (record for record in observed.records if record.kind == "node"):
            if record.signer is not None or \
                    any(a.kind == "stage-signer" and a.node == record.node for a in builder.actions):
                builder.add(4, "remove-signer", record.site,
                            "the controller-manager signs from ca.crt and ca.key again")

    for phase in (2, 3, 4):
        if open_phase(phase) and not same:
            builder.add(phase, "verify", PhaseCheck(phase=phase), f"check {PHASES[phase]} on the live cluster",
                        params=CheckParams(expect=new_fp, old=old_fp))
    if open_phase(5):
        builder.add(5, "verify", PhaseCheck(phase=5), f"check the whole cluster against {short(new_fp)}",
                    params=CheckParams(expect=new_fp, old=old_fp))
    if not same:
        builder.add(5, "finalize", StateRecord(), "record the rotation as applied and drop the keys from the state store",
                    params=FinalizeParams(expect=new_fp))
    builder.actions.sort(key=lambda action: (action.phase, _ORDER[action.kind]))


# Within a phase: state, then workloads (phase 3 restarts them before anything is
# reissued), signers, files, restarts, clean-up, and the check last.
_ORDER = {kind: index for index, kind in enumerate((
    "create-ca", "rollback-target", "restart-workload", "stage-signer", "switch-signer", "update-bundle", "reissue", "write-kubeconfig",
    "restart", "remove-signer", "verify", "finalize"))}


def _plan_restarts(builder: _Builder, observed: ClusterObservation, *, splits_signer: bool, verified: int,
                   operation: Operation) -> None:
    """Restart a component in each phase that changes what it reads only at start or, for
    the controller-manager, which CA file it signs from; and, after a crash between a file
    change and its restart, in the current phase. A static pod and a node's kubelet alike:
    only the executor tells a manifest rewrite from a restart command."""
    rotating = observed.state.in_progress or operation in ("rotate", "rollback")
    current = verified + 1 if verified >= 1 else 2
    for component in observed.components:
        stale = component.restarted_for != component.inputs_digest and (
            component.restarted_for is not None or rotating)
        signs = component.signing is not None
        signing_now = component.signing or "record"
        for phase in (2, 3, 4):
            if verified >= phase:
                continue
            reasons = []
            if builder.touched(phase, component.node, component.inputs):
                reasons.append("its files change in this phase")
            # A node service's command is shown so that a reviewer sees what runs.
            command = shlex.join(component.command) if component.restart == "command" else None
            wanted = None
            if signs:
                wanted = "signer" if splits_signer and phase in (2, 3) else "record"
                if wanted != signing_now:
                    reasons.append(f"it signs from the {wanted} files from now on")
            if phase == current and stale and not reasons:
                reasons.append("it has not been restarted since its files changed")
            if reasons and component.outage_when_alone and \
                    sum(1 for other in observed.components if other.name == component.name) == 1:
                reasons.append(f"outage: {component.outage_when_alone}")
            if reasons:
                builder.add(phase, "restart", component.site, "; ".join(reasons),
                            params=RestartParams(component=component.name, command=command, signing=wanted))
                signing_now = wanted or signing_now
