"""What careconcile saw on a live cluster, as plain values (pure: the shell fills them in).

Every site has a stable id (``node:path`` for files, ``kind/namespace/name`` for API
objects) that plans, findings and stale-plan messages use to name it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography import x509

from reconciler.core import pki
from reconciler.core.sites import AtSite, Component, CredentialSite, ManagementSecret, NodeSigner, TrustSite
from reconciler.core.workloads import ObservedWorkload, PodTrust

NEW_CA = "(new CA)"  # stands for the fingerprint of a CA that apply has not made yet
RETIRED_KEPT = 20  # how many retired CA fingerprints the state store remembers


def fp(cert: x509.Certificate) -> str:
    return pki.fingerprint(cert)


def short(fingerprint: str) -> str:
    """``sha256:0123456789ab``: enough to tell CAs apart where people read; plans keep the full one."""
    return fingerprint[:19] if fingerprint.startswith("sha256:") else fingerprint


@dataclass(frozen=True)
class ObservedBundle(AtSite):
    """A set of trusted CA certificates at one site. ``managed`` bundles careconcile writes;
    the others (kube-root-ca.crt) their owners rewrite from the files careconcile manages,
    so they are checked, never written. A ``ca-bundle`` field (webhooks, APIServices, CRD
    conversion) lists only the authority's certificates; others in the same field are left
    as they are."""

    site: TrustSite
    certs: tuple[x509.Certificate, ...]
    managed: bool = True

    @property
    def id(self) -> str:
        return self.site.label

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(fp(cert) for cert in self.certs)

    @property
    def partial(self) -> bool:
        """Whether the site holds other certificates beside the authority's (a caBundle)."""
        return getattr(self.site, "form", None) == "ca-bundle"

    @property
    def published_by(self) -> str | None:
        """Who else writes it (see :class:`ApiField`)."""
        return getattr(self.site, "published_by", None)


@dataclass(frozen=True)
class ObservedLeaf(AtSite):
    """A certificate signed by the authority at one site, and whether the key beside it
    matches it."""

    site: CredentialSite
    cert: x509.Certificate
    key_matches: bool

    @property
    def id(self) -> str:
        return self.site.label

    @property
    def fingerprint(self) -> str:
        return fp(self.cert)


@dataclass(frozen=True)
class ObservedComponent:
    """A component that reads trust and credentials only at start: a static pod (restarted
    by rewriting its manifest) or a node service such as the kubelet (restarted by running
    ``command`` on the node).

    ``restarted_for`` is the digest of its inputs recorded when careconcile last restarted
    it (in the manifest, or in the kubelet's marker file); ``inputs_digest`` the digest of
    those inputs now. They differ when the component may still run with what its files
    held before."""

    id: str
    node: str
    name: str
    inputs: tuple[str, ...]
    inputs_digest: str
    restarted_for: str | None
    restarted_at: dt.datetime | None
    # The node-clock start time of the process a restart replaced, when it was known.
    replaced_start: float | None = None
    signer_cert: str | None = None  # the controller-manager's signing flags, as set now
    signer_key: str | None = None
    # Which CA files those flags name: the CA of record's, or the signer files staged
    # during a rotation. None for a component that does not sign.
    signing: Literal["record", "signer"] | None = None
    restart: Literal["manifest", "command"] = "manifest"
    command: tuple[str, ...] = ()
    # What a cluster with only this instance loses while it restarts (see StaticPodComponent).
    outage_when_alone: str | None = None  # restart "command": the arguments that restart it on its node
    # restart "command": the renewTime of the node's Lease read just after the restart; a
    # later renewal comes from the restarted kubelet (both times are the node's clock).
    lease_renewed_at_restart: dt.datetime | None = None
    # restart "command": the API server's clock just after the restart (its Date header).
    server_time_at_restart: dt.datetime | None = None

    @property
    def site(self) -> Component:
        return Component(node=self.node, name=self.name, restart=self.restart)


@dataclass(frozen=True)
class ObservedRecord:
    """A control-plane node's CA of record: its key file, and the certificate in its CA
    file that the key belongs to (None when the key matches none of them).

    In admin mode the management cluster's Secret ``<cluster>-ca`` is a CA of record too
    (``kind`` "secret", ``node`` its id ``secret/<namespace>/<name>``): it has no signer
    files, and must agree with the nodes like another node."""

    node: str
    cert: x509.Certificate | None
    key_spec: str
    signer: x509.Certificate | None = None  # the staged signer certificate, when one exists
    signer_key_matches: bool = False
    kind: Literal["node", "secret"] = "node"
    secret: ManagementSecret | None = None  # kind "secret": where it is

    @property
    def site(self) -> NodeSigner | ManagementSecret:
        """Where a new CA of record goes: the node's signer files, or the Secret."""
        return self.secret if self.secret is not None else NodeSigner(node=self.node)


@dataclass(frozen=True)
class ObservedEndpoint:
    """What an apiserver presents in a TLS handshake."""

    node: str
    server: str
    presented: x509.Certificate


@dataclass(frozen=True)
class ForeignCertificate:
    """A certificate in the cluster that careconcile does not manage (a kubernetes.io/tls
    Secret, an approved CertificateSigningRequest's certificate): never rewritten, only
    named when a rotation would leave it signed by a CA nobody trusts any more."""

    id: str  # secret/<namespace>/<name> or certificatesigningrequest/<name>
    cert: x509.Certificate


@dataclass(frozen=True)
class StoredState:
    """Rotation state careconcile keeps in the cluster's state store (public part).

    ``target`` is the CA a rotation moves to and ``previous`` the one it leaves; both are
    kept, with their keys, until the rotation is final, so that a crashed run resumes and a
    rollback can sign with the old CA again."""

    applied_rotation: int = 0
    rotation: int | None = None  # the spec's counter the rotation in progress applies
    target: x509.Certificate | None = None
    previous: x509.Certificate | None = None
    has_target_key: bool = False
    has_previous_key: bool = False
    verified_phase: int = 0
    rolling_back: bool = False
    rolled_back_rotation: int | None = None
    started: str | None = None
    # Fingerprints of CAs this authority left behind (rotated away from, or rolled back from):
    # how a webhook's caBundle that still carries one is recognised as the cluster's.
    retired: tuple[str, ...] = ()
    # When every kube-root-ca.crt was seen trusting both CAs of the rotation (with a margin):
    # a pod started before then trusts only ``workloads_trusted_alone``. Kept after the
    # rotation, so that drift finds a pod left trusting the CA it distrusted.
    workloads_trusted_since: dt.datetime | None = None
    workloads_trusted_alone: str | None = None

    @property
    def in_progress(self) -> bool:
        return self.target is not None

    def public(self) -> dict[str, Any]:
        return {
            "appliedRotation": self.applied_rotation,
            "rotation": self.rotation,
            "target": fp(self.target) if self.target else None,
            "previous": fp(self.previous) if self.previous else None,
            "verifiedPhase": self.verified_phase,
            "rollingBack": self.rolling_back,
            "rolledBackRotation": self.rolled_back_rotation,
            "retired": list(self.retired),
            "workloadsTrustedSince": self.workloads_trusted_since.isoformat() if self.workloads_trusted_since else None,
            "workloadsTrustedAlone": self.workloads_trusted_alone,
        }

    def pod_trust(self, record: str | None = None) -> PodTrust:
        """What pods trust during the rotation in progress (see :class:`PodTrust`): until the
        bundles were seen trusting both CAs, the CA the rotation started from. With no
        rotation in progress, every pod may trust only ``record``, the CA of record."""
        if not self.in_progress:
            return PodTrust(record, None)
        if self.workloads_trusted_alone is not None:
            return PodTrust(self.workloads_trusted_alone, self.workloads_trusted_since)
        start = self.target if self.rolling_back else self.previous
        return PodTrust(fp(start), None)

    def last_pod_trust(self) -> PodTrust | None:
        """What pods trusted during the last rotation, kept after it: a pod started before
        ``since`` trusts only the CA it distrusted. None before careconcile's first rotation."""
        if self.workloads_trusted_since is None or self.workloads_trusted_alone is None:
            return None
        return PodTrust(self.workloads_trusted_alone, self.workloads_trusted_since)


@dataclass(frozen=True)
class ClusterObservation:
    cluster: str
    authority: str
    records: tuple[ObservedRecord, ...]
    bundles: tuple[ObservedBundle, ...]
    leaves: tuple[ObservedLeaf, ...]
    components: tuple[ObservedComponent, ...]
    endpoints: tuple[ObservedEndpoint, ...]
    state: StoredState
    workspace_kubeconfig: ObservedLeaf | None = None
    workspace_kubeconfig_path: str = ""
    node_names: tuple[str, ...] = field(default_factory=tuple)
    # Read for plans only, and not part of the digest: careconcile changes none of them.
    foreign: tuple[ForeignCertificate, ...] = ()
    # The pods that read the cluster CA at start, by controller (authorities pods trust only).
    workloads: tuple[ObservedWorkload, ...] = ()
    # Whether a component signs with the authority from the signer files during a rotation.
    has_signer: bool = True

    def items(self) -> dict[str, Any]:
        """Everything a plan acts on, by id, in public form: the input of the digest that
        a saved plan records and apply compares."""
        items: dict[str, Any] = {}
        for record in self.records:
            items[f"{record.node}:record"] = {
                "ca": fp(record.cert) if record.cert else None, "key": record.key_spec,
                "signer": fp(record.signer) if record.signer else None, "signerKey": record.signer_key_matches,
            }
        # A kubeconfig is a bundle and a leaf under one id: "#trusts" and "#cert" keep both.
        for bundle in self.bundles:
            if bundle.managed:
                items[f"{bundle.id}#trusts"] = list(bundle.fingerprints)
        for leaf in self.leaves:
            items[f"{leaf.id}#cert"] = {"cert": leaf.fingerprint, "keyMatches": leaf.key_matches}
        for component in self.components:
            items[component.id] = {"restartedFor": component.restarted_for, "inputs": component.inputs_digest,
                                   "signer": [component.signer_cert, component.signer_key]}
        # Workloads are not items: Jobs and Deployments come and go, and a saved plan would
        # go stale with them. Apply checks instead, before phase 3, that the plan restarts
        # every workload whose pods trust only the old CA by then.
        items["state"] = self.state.public()
        return items

    def digest(self) -> str:
        return digest_of(self.items())


def digest_of(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def item_digests(observation: ClusterObservation) -> dict[str, str]:
    return {key: digest_of(value) for key, value in observation.items().items()}
