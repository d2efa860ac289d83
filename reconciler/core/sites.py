"""Where careconcile reads and writes: one typed site per place, from observation to action.

A site says what the place is (a file on a node, an entry of a kubeconfig on this machine,
a field of an API object, a Secret in the management cluster, a component that restarts)
and, as data, what form its content has. The executor picks its writer by the site's
kind and form, never by parsing an id; ``label`` is the id people read in plans and
findings, unchanged from the string ids of earlier plan formats.

Pure: no I/O. The API paths of objects come from tables here, not from plan files.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from reconciler.core.spec import DNS_LABEL, DNS_SUBDOMAIN
from reconciler.core.workloads import WorkloadKind

# Names as Kubernetes gives them (and careconcile's spec and inventory take them): they go
# into API paths, file names and messages, so a plan file cannot carry "../x" or a "/" into
# any of them. Validated wherever a site is made, so when a plan file is read.
Namespace = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
ObjectName = Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]
NodeName = Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]


def _node_path(value: str) -> str:
    if ".." in value.split("/"):
        raise ValueError("a path on a node has no '..' component")
    return value


# An absolute path on a node, without '..': the transports confine it to the node's root.
NodePath = Annotated[str, Field(pattern=r"^/"), AfterValidator(_node_path)]


class _Site(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


FileForm = Literal["pem", "pair", "combined", "kubeconfig"]


def pair_files(path: str) -> tuple[str, str]:
    """The certificate and key files of a ``pair`` site, as kubeadm names them."""
    return f"{path}.crt", f"{path}.key"


class NodeFile(_Site):
    """A file on a node: a PEM bundle, a certificate/key ``pair`` (``path``.crt and .key), a
    ``combined`` PEM of certificate and key, or a kubeconfig (``user``: the one entry whose
    credentials are meant, when the file holds several)."""

    kind: Literal["node-file"] = "node-file"
    node: NodeName
    path: NodePath
    form: FileForm
    user: str | None = None

    @property
    def label(self) -> str:
        return f"{self.node}:{self.path}" + (f"#{self.user}" if self.user else "")

    @property
    def files(self) -> tuple[str, ...]:
        """The files it is on its node: a pair is two."""
        return pair_files(self.path) if self.form == "pair" else (self.path,)


class LocalKubeconfig(_Site):
    """A kubeconfig on this machine: the spec's own, or the one careconcile writes."""

    kind: Literal["local-kubeconfig"] = "local-kubeconfig"
    path: str
    user: str | None = None

    @property
    def label(self) -> str:
        return f"local:{self.path}" + (f"#{self.user}" if self.user else "")


# API objects careconcile reads and writes: resource -> (collection path, namespaced).
API_RESOURCES: dict[str, tuple[str, bool]] = {
    "configmap": ("/api/v1/namespaces/{namespace}/configmaps", True),
    "validatingwebhookconfiguration": ("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", False),
    "mutatingwebhookconfiguration": ("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", False),
    "apiservice": ("/apis/apiregistration.k8s.io/v1/apiservices", False),
    "customresourcedefinition": ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", False),
}

# The ConfigMap keys that ids leave out (the one key of their object careconcile ever wrote
# before it managed a second authority); other keys are named: ``configmap/ns/name#key``.
_UNNAMED_FIELDS = {"kubeconfig", "client-ca-file", "ca.crt"}

# How an API field holds trust: a PEM bundle (a ConfigMap key), a kubeconfig (a ConfigMap
# key holding one), or a base64 caBundle in which only the authority's CAs are careconcile's.
FieldForm = Literal["pem", "kubeconfig", "ca-bundle"]


class ApiField(_Site):
    """One field of one API object. ``field`` is the ConfigMap's data key, or for caBundles
    the place in the object (``/webhooks/<name>``, ``/conversion``, or empty for an APIService).
    ``published_by`` names who else writes the field: "apiserver" when every apiserver adds
    the CAs it trusts itself, so that careconcile only ever removes one, and only once no
    apiserver accepts it any more; "controller-manager" when it copies the field from its
    own files (kube-root-ca.crt), so that careconcile never writes it."""

    kind: Literal["api-field"] = "api-field"
    resource: Literal["configmap", "validatingwebhookconfiguration", "mutatingwebhookconfiguration", "apiservice",
                      "customresourcedefinition"]
    namespace: Namespace | None = None
    name: ObjectName
    field: str
    form: FieldForm
    published_by: Literal["apiserver", "controller-manager"] | None = None

    @property
    def object_path(self) -> str:
        collection, namespaced = API_RESOURCES[self.resource]
        if namespaced:
            return f"{collection.format(namespace=self.namespace)}/{self.name}"
        return f"{collection}/{self.name}"

    @property
    def label(self) -> str:
        if self.form == "ca-bundle":
            return f"{self.resource}/{self.name}{self.field}"
        base = f"{self.resource}/{self.namespace}/{self.name}"
        return base if self.field in _UNNAMED_FIELDS else f"{base}#{self.field}"


class ManagementSecret(_Site):
    """A Secret in the management cluster (admin mode): the CA of record (``authority``,
    tls.crt and tls.key) or the cluster's kubeconfig (``kubeconfig``, data key value)."""

    kind: Literal["management-secret"] = "management-secret"
    namespace: Namespace
    name: ObjectName
    holds: Literal["authority", "kubeconfig"]
    user: str | None = None

    @property
    def label(self) -> str:
        return f"secret/{self.namespace}/{self.name}" + (f"#{self.user}" if self.user else "")


class NodeSigner(_Site):
    """The single-certificate CA files a control-plane node's controller-manager signs from
    while its CA file holds two; the layout names them."""

    kind: Literal["node-signer"] = "node-signer"
    node: NodeName

    @property
    def label(self) -> str:
        return f"{self.node}:signer"


class Component(_Site):
    """A component that reads its files only at start: a static pod (restarted by rewriting
    its manifest) or a node service (restarted by the node's command)."""

    kind: Literal["component"] = "component"
    node: NodeName
    name: ObjectName  # a static pod's is the name of its manifest file
    restart: Literal["manifest", "command"] = "manifest"

    @property
    def label(self) -> str:
        return f"{self.node}:{self.name}"


class Workload(_Site):
    """Pods restarted through their controller (or evicted, when they have none)."""

    kind: Literal["workload"] = "workload"
    namespace: Namespace
    workload: WorkloadKind
    name: ObjectName

    @property
    def label(self) -> str:
        return f"{self.workload.lower()}/{self.namespace}/{self.name}"


class StateRecord(_Site):
    """The authority's rotation state in its state store."""

    kind: Literal["state"] = "state"

    @property
    def label(self) -> str:
        return "state"


class PhaseCheck(_Site):
    """A phase's end state, checked on the live cluster."""

    kind: Literal["check"] = "check"
    phase: int = Field(ge=1, le=5)

    @property
    def label(self) -> str:
        return f"phase-{self.phase}"


Site = Annotated[Union[NodeFile, LocalKubeconfig, ApiField, ManagementSecret, NodeSigner, Component, Workload,
                       StateRecord, PhaseCheck], Field(discriminator="kind")]
# The sites that hold trust (a bundle) or credentials (a leaf): what update-bundle and reissue write.
TrustSite = Annotated[Union[NodeFile, LocalKubeconfig, ApiField, ManagementSecret], Field(discriminator="kind")]
CredentialSite = Annotated[Union[NodeFile, LocalKubeconfig, ManagementSecret], Field(discriminator="kind")]
SignerSite = Annotated[Union[NodeSigner, ManagementSecret], Field(discriminator="kind")]


class AtSite:
    """Mixin for what has a ``site``: where it is, by the site's node and file."""

    @property
    def node(self) -> str | None:
        return node_of(self.site)  # type: ignore[attr-defined]

    @property
    def path(self) -> str | None:
        return path_of(self.site)  # type: ignore[attr-defined]


def node_of(site: _Site) -> str | None:
    """The node a site is on, None for a site that is not on a node."""
    return getattr(site, "node", None)


def path_of(site: _Site) -> str | None:
    """The file a site is, on its node or on this machine; None for the others."""
    return getattr(site, "path", None)
