"""The spec: the CA state a platform team declares for its clusters.

These pydantic models are the source of truth for the spec format (the JSON Schema in
``schemas/`` is generated from them). A spec says what each cluster is (how to reach its
API, its nodes and how to reach them, where careconcile keeps its state) and what each of
its authorities should be: key, lifetimes, subject, an optional pinned fingerprint and the
rotation counter. ``spec.defaults.authorities`` fills what a cluster leaves unset, and
:func:`resolve_authority` turns the layers into one :class:`ResolvedAuthority`.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass, replace
import posixpath
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from reconciler.core import pki

API_VERSION = "careconcile.dev/v1alpha1"
KIND = "CASpec"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
FINGERPRINT = r"^sha256:[0-9a-f]{64}$"


def dns_label(value: str, what: str) -> str:
    """``value`` when it is a DNS-1123 label, as Kubernetes names namespaces (and careconcile
    names clusters, whose names go into API paths and workspace directories); else a
    ValueError naming ``what``."""
    if len(value) > 63 or not re.fullmatch(DNS_LABEL, value):
        raise ValueError(f"{what} {value!r} is not a DNS label: at most 63 lowercase letters, digits and '-', "
                         "starting and ending with a letter or digit")
    return value
# A whole, non-zero number of hours or days: "87600h", "3650d".
DURATION = r"^0*[1-9][0-9]*[hd]$"

# Must agree with pki.KeySpec, which generates the keys (a unit test checks it); kept here
# so that the spec can say which sizes its algorithm allows.
KEY_SIZES: dict[str, tuple[int, ...]] = {"RSA": (2048, 3072, 4096), "ECDSA": (256, 384)}

_DURATION_UNITS = {"h": dt.timedelta(hours=1), "d": dt.timedelta(days=1)}
_LONGEST = dt.timedelta(days=36500)


def parse_duration(value: Any) -> dt.timedelta:
    """``"87600h"`` or ``"3650d"`` as a timedelta. A timedelta of whole hours passes
    through, so Python callers may use one."""
    if isinstance(value, dt.timedelta):
        if value <= dt.timedelta(0) or value % _DURATION_UNITS["h"]:
            raise ValueError(f"must be a positive whole number of hours; got {value}")
        return value
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,7}[hd]", value):
        shown = repr(value) if isinstance(value, str) and len(value) <= 20 else "another value"
        raise ValueError(f"must be a whole number of hours or days, such as '87600h' or '3650d', of at most 7 "
                         f"digits; got {shown}")
    amount = int(value[:-1])
    if amount == 0:
        raise ValueError(f"must be longer than zero; got {value!r}")
    duration = amount * _DURATION_UNITS[value[-1]]
    if duration > _LONGEST:  # a certificate's notAfter must stay a date (before the year 10000)
        raise ValueError(f"must be at most {_LONGEST.days}d (100 years); got {value!r}")
    return duration


def format_duration(value: dt.timedelta) -> str:
    """The shortest spec form of a duration: days when whole, else hours."""
    hours = value // _DURATION_UNITS["h"]
    return f"{hours // 24}d" if hours % 24 == 0 else f"{hours}h"


Duration = Annotated[
    dt.timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION}),
]


def _repeated(names: list[str]) -> str:
    return ", ".join(sorted({name for name in names if names.count(name) > 1}))


def _path_text(value: str) -> str:
    """A path holds no NUL (no file system takes one; Python raises ValueError) and no other
    control character (a path with one is a mistake or a trick on a terminal)."""
    if any(ord(char) < 0x20 or ord(char) == 0x7f for char in value):
        raise ValueError("a path with a control character (NUL, a line break, an escape) in it")
    return value


def _absolute_path(value: str) -> str:
    if not posixpath.isabs(_path_text(value)):
        raise ValueError("must be an absolute path")
    return value


# A directory on a node that stands for its '/'.
AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
# A file on the machine careconcile runs on (a kubeconfig, a key, a known_hosts file).
FilePath = Annotated[str, Field(min_length=1), AfterValidator(_path_text)]


class _Strict(BaseModel):
    # Unknown fields are errors: a typo in a spec must not silently mean "default".
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class _ExactlyOne(_Strict):
    """A choice among the fields: exactly one is set. More options become more fields."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})
    choice: ClassVar[str]  # what is chosen, for the error message

    @model_validator(mode="after")
    def _exactly_one(self) -> "_ExactlyOne":
        fields = type(self).model_fields
        chosen = [name for name in fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            options = ", ".join(field.alias or name for name, field in fields.items())
            raise ValueError(f"set exactly one {self.choice} (one of: {options})")
        return self


# The command that restarts a node's kubelet, as a list of arguments. The kubelet
# reads its kubeconfig's CA and its client certificate only when it starts, so careconcile
# runs this after each phase that changes them. An empty list: the node has no kubelet to
# restart (the sandbox, where kwok stands in for the kubelets).
KUBELET_RESTART_SSH = ("systemctl", "restart", "kubelet")


def _argument_list(value: Any) -> Any:
    if isinstance(value, str):  # a whole command line in one string: careconcile splits nothing
        raise ValueError(f"must be a list of arguments, such as [systemctl, restart, kubelet]; got the string {value!r}")
    return value


# A restart command is a few words; the limits keep a spec of a million arguments out.
Command = Annotated[tuple[Annotated[str, Field(min_length=1, max_length=4096)], ...], Field(max_length=64),
                    BeforeValidator(_argument_list)]
_KUBELET_RESTART_HELP = (
    "The command that restarts the node's kubelet, as a list of arguments, each passed to the program as written "
    "(no shell syntax); it must return once the old kubelet has stopped. careconcile runs it after each phase of a "
    "rotation that changes the kubelet's kubeconfig, CA file or client certificate. [] means the node has no "
    "kubelet to restart.")


class LocalAccess(_Strict):
    """The node's filesystem is reachable here, under a root directory (the sandbox's
    node directories, or "/" when careconcile runs on the node itself)."""

    root: AbsolutePath = Field(description="Absolute directory that stands for the node's '/'.")
    kubelet_restart: Command = Field(
        default=(), alias="kubeletRestart",
        description=_KUBELET_RESTART_HELP + " Default [] (a local root is usually a sandbox node directory, whose "
                    "kubelet does not exist); careconcile running on the node itself with root '/' sets "
                    "[systemctl, restart, kubelet].")


# The public key types OpenSSH offers as host keys, as a known_hosts line names them.
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_OTHER_KEY_TYPES = ("ssh-dss", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
HOST_KEY = r"^(" + "|".join(HOST_KEY_TYPES) + r") [A-Za-z0-9+/]+={0,2}( .*)?$"


def _host_key_line(value: str) -> str:
    """``ssh-ed25519 AAAA...`` (a comment may follow): the type must be the one the key's
    own bytes name, so a line cut short or pasted from another key is caught here."""
    value = value.strip()
    parts = value.split()
    if len(parts) < 2 or parts[0] not in HOST_KEY_TYPES:
        raise ValueError(f"must be a public key line such as 'ssh-ed25519 AAAA...' (types: {', '.join(HOST_KEY_TYPES)})")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        length = int.from_bytes(blob[:4], "big")
        named = blob[4:4 + length].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the key after the type is not valid base64") from None
    if named != parts[0]:
        # The bytes are named only when they are a key type: whatever else they decode to
        # (a pasted private key, say) is not for an error message.
        shown = named if named in HOST_KEY_TYPES + _OTHER_KEY_TYPES else "malformed"
        raise ValueError(f"the key is a {shown} key, not {parts[0]}")
    return " ".join(parts[:2])


# A host name or IP address to connect to: no space, user, path or brackets, and no leading
# dash (which a tool given the name as an argument would take for an option).
HOST = r"^[^\s@/\[\]-][^\s@/\[\]]*$"
# A host key as a known_hosts line has it, checked as the spec's hostKey is.
HostKeyLine = Annotated[str, AfterValidator(_host_key_line)]


class SSHAccess(_Strict):
    """The node's files are reached over SSH (SFTP), with a private key, from a server whose
    host key is known beforehand: careconcile never trusts a host key on first use."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["hostKey"], "not": {"required": ["knownHostsFile"]}},
        {"required": ["knownHostsFile"], "not": {"required": ["hostKey"]}},
    ]})

    host: str = Field(min_length=1, max_length=253, pattern=HOST, description="The node's host name or IP address.")
    port: StrictInt = Field(default=22, ge=1, le=65535, description="The SSH port.")
    user: str = Field(min_length=1, pattern=r"^[^\s@:]+$",
                      description="The user to log in as; it must be able to write the node's CA files (root on a "
                                  "kubeadm node).")
    # The private key's source. keyFile is the only one today; a key in a Secret
    # (keySecret, for the admin-cluster mode) becomes its alternative, chosen like the
    # host-key policy below.
    key_file: FilePath = Field(
        alias="keyFile", min_length=1,
        description="Path to the private key to log in with (OpenSSH or PEM format, unencrypted); a relative path "
                    "is relative to the spec file's directory, '~' expands.")
    # The host-key policy: exactly one of the two.
    host_key: Annotated[str, AfterValidator(_host_key_line)] | None = Field(
        default=None, alias="hostKey", json_schema_extra={"pattern": HOST_KEY},  # the validator's message is clearer
        description="Pins the node's public host key, as a known_hosts line has it: 'ssh-ed25519 AAAA...'. "
                    "Exactly one of hostKey and knownHostsFile.")
    known_hosts_file: FilePath | None = Field(
        default=None, alias="knownHostsFile", min_length=1,
        description="Path to a known_hosts file that holds the node's host key, under 'host' or '[host]:port' "
                    "(hashed entries work); relative to the spec file's directory, '~' expands. Exactly one of "
                    "hostKey and knownHostsFile.")
    root: AbsolutePath = Field(default="/", description="Absolute directory on the node that stands for its '/'.")
    kubelet_restart: Command = Field(
        default=KUBELET_RESTART_SSH, alias="kubeletRestart",
        description=_KUBELET_RESTART_HELP + " Run over the node's SSH connection as `user`; default "
                    "[systemctl, restart, kubelet], as on a kubeadm node.")

    @model_validator(mode="after")
    def _one_host_key_policy(self) -> "SSHAccess":
        if self.host_key is None and self.known_hosts_file is None:
            raise ValueError("set hostKey (the node's public host key, as `ssh-keyscan -p PORT HOST` prints it) or "
                             "knownHostsFile: careconcile never trusts a host key on first use")
        if self.host_key is not None and self.known_hosts_file is not None:
            raise ValueError("set either hostKey or knownHostsFile, not both")
        return self


class NodeAccess(_ExactlyOne):
    """How careconcile reaches a node's files. Exactly one transport is set."""

    choice: ClassVar[str] = "access transport"

    local: LocalAccess | None = Field(default=None, description="The node's files are on this machine.")
    ssh: SSHAccess | None = Field(default=None, description="The node's files are reached over SSH (SFTP).")


class NodeSpec(_Strict):
    """A node of the cluster whose CA files careconcile reads and writes."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="The node's name (its Node object's name).")
    role: Literal["control-plane", "worker"] = Field(
        description="'control-plane' for a node that runs the control plane's static pods, 'worker' otherwise.",
    )
    access: NodeAccess = Field(description="How careconcile reaches the node's files.")

    @property
    def kubelet_restart(self) -> tuple[str, ...]:
        """The command that restarts the node's kubelet; empty when it has none to restart."""
        chosen = self.access.local if self.access.local is not None else self.access.ssh
        return tuple(chosen.kubelet_restart) if chosen is not None else ()


class KeySettings(_Strict):
    """The private key of a CA: RSA 2048/3072/4096 or ECDSA P-256/P-384."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"properties": {"algorithm": {"const": algorithm}, "size": {"enum": list(sizes)}}}
        for algorithm, sizes in KEY_SIZES.items()
    ]})

    algorithm: Literal["RSA", "ECDSA"] = Field(description="The key algorithm.")
    size: StrictInt = Field(description="Bits for RSA (2048, 3072, 4096); the curve for ECDSA (256 for P-256, 384 for P-384).")

    @field_validator("size")
    @classmethod
    def _allowed_for_algorithm(cls, size: int, info: ValidationInfo) -> int:
        algorithm = info.data.get("algorithm")  # absent when the algorithm itself is invalid
        allowed = KEY_SIZES.get(algorithm, ())
        if allowed and size not in allowed:
            choices = " or ".join([", ".join(map(str, allowed[:-1])), str(allowed[-1])])
            raise ValueError(f"{algorithm} keys have size {choices}; got {size}")
        return size

    def to_key_spec(self) -> pki.KeySpec:
        return pki.KeySpec(self.algorithm, self.size)


class Subject(_Strict):
    """The subject name of a CA certificate."""

    common_name: str = Field(default="kubernetes", min_length=1, alias="commonName",
                             description="The CN; kubeadm names the cluster CA 'kubernetes'.")
    organizations: list[str] = Field(default_factory=list, description="O entries, in order.")


def _lifetime_problems(validity: dt.timedelta | None, renew_before: dt.timedelta | None,
                       leaf_validity: dt.timedelta | None) -> list[str]:
    """What is wrong between an authority's lifetimes; a lifetime that is None is unknown
    here and not compared."""
    problems = []
    if validity and renew_before and renew_before >= validity:
        problems.append(f"renewBefore ({format_duration(renew_before)}) must be shorter than "
                        f"validity ({format_duration(validity)})")
    if validity and leaf_validity and leaf_validity > validity:
        problems.append(f"leafValidity ({format_duration(leaf_validity)}) must not exceed "
                        f"validity ({format_duration(validity)})")
    if renew_before and leaf_validity and renew_before >= leaf_validity:
        # renewBefore is also when a leaf is renewed: a leaf would be due as soon as it was issued.
        problems.append(f"renewBefore ({format_duration(renew_before)}) must be shorter than "
                        f"leafValidity ({format_duration(leaf_validity)}): certificates are renewed that long "
                        "before they expire")
    return problems


class AuthoritySettings(_Strict):
    """What a CA should be like. Every field is optional: unset here, it comes from
    spec.defaults.authorities, then from careconcile's built-in default. Each field is
    taken whole from the first place that sets it (a key or subject is never merged)."""

    key: KeySettings | None = Field(default=None, description="The CA's private key; built-in default RSA 2048.")
    validity: Duration | None = Field(
        default=None, description="How long a new CA certificate is valid, e.g. '3650d' or '87600h'; "
                                  "built-in default 3650d (kubeadm's ten years).")
    renew_before: Duration | None = Field(
        default=None, alias="renewBefore",
        description="A CA with less than this left of its validity is due for rotation; shorter than "
                    "validity; built-in default 90d.")
    leaf_validity: Duration | None = Field(
        default=None, alias="leafValidity",
        description="How long the leaf certificates the CA signs are valid; at most validity; "
                    "built-in default 365d (kubeadm's one year).")
    subject: Subject | None = Field(default=None, description="The CA certificate's subject; built-in default CN=kubernetes.")

    @model_validator(mode="after")
    def _lifetimes_agree(self) -> "AuthoritySettings":
        problems = _lifetime_problems(self.validity, self.renew_before, self.leaf_validity)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class AuthoritySpec(AuthoritySettings):
    """One authority (CA) of a cluster: the settings, a rotation counter and an optional pin."""

    rotation: StrictInt = Field(
        default=0,
        ge=0,
        le=2**31 - 1,  # kept in annotations and JSON that other tools read: an int32
        description="Raise above the value last applied to force a rotation of this authority.",
    )
    fingerprint: str | None = Field(
        default=None, pattern=FINGERPRINT,
        description="Pins the CA: the SHA-256 fingerprint of the DER certificate the cluster must run, "
                    "written sha256:<64 lowercase hex digits>.")


class Authorities(_Strict):
    """The authorities of a cluster, by name. Each is an :class:`AuthoritySpec`. The cluster
    CA is always managed; the etcd and front-proxy CAs only when the spec lists them, since
    rotating them restarts etcd and the apiservers."""

    cluster_ca: AuthoritySpec = Field(default_factory=AuthoritySpec, alias="clusterCA",
                                      description="The cluster CA (kubeadm's pki/ca.crt).")
    etcd_ca: AuthoritySpec | None = Field(
        default=None, alias="etcdCA",
        description="The etcd CA (kubeadm's pki/etcd/ca.crt): etcd's serving and peer certificates and the "
                    "apiserver's etcd client certificate. Managed only when listed.")
    front_proxy_ca: AuthoritySpec | None = Field(
        default=None, alias="frontProxyCA",
        description="The front-proxy CA (kubeadm's pki/front-proxy-ca.crt): the client certificate the "
                    "apiserver presents to aggregated apiservers. Managed only when listed.")


class SecretStateStore(_Strict):
    """careconcile's rotation state is two Secrets on the cluster itself: the public record,
    and the CA keys during a rotation."""

    namespace: str = Field(default="kube-system", pattern=DNS_LABEL, max_length=63,
                           description="The namespace of both Secrets.")
    name: str = Field(default="careconcile-state", pattern=DNS_SUBDOMAIN, max_length=253,
                      description="The public record's Secret (rotation counters, phase, CA certificates; no "
                                  "private key): what drift reads.")
    keys_name: str = Field(default="careconcile-keys", alias="keysName", pattern=DNS_SUBDOMAIN, max_length=253,
                           description="The Secret that holds the two CAs' private keys during a rotation; only "
                                       "apply and rollback read it.")

    @model_validator(mode="after")
    def _two_secrets(self) -> "SecretStateStore":
        if self.keys_name == self.name:
            raise ValueError(f"name and keysName are both {self.name!r}; the keys must be in a Secret of their "
                             "own, apart from the public record")
        return self


class WorkspaceStateStore(_Strict):
    """careconcile's rotation state is a file in the local workspace directory, not on the cluster."""


class StateStore(_ExactlyOne):
    """Where careconcile keeps a cluster's rotation state between runs. Exactly one is set."""

    choice: ClassVar[str] = "state store"

    secret: SecretStateStore | None = Field(default=None, description="In a Secret on the cluster.")
    workspace: WorkspaceStateStore | None = Field(default=None, description="In the local workspace directory.")


# A whole, non-zero number of seconds, minutes or hours: "90s", "5m", "1h".
TIMEOUT = r"^0*[1-9][0-9]*[smh]$"
_TIMEOUT_UNITS = {"s": dt.timedelta(seconds=1), "m": dt.timedelta(minutes=1), "h": dt.timedelta(hours=1)}


def parse_timeout(value: Any) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        if value <= dt.timedelta(0):
            raise ValueError(f"must be longer than zero; got {value}")
        return value
    if not isinstance(value, str) or not re.fullmatch(TIMEOUT, value):
        raise ValueError(f"must be a whole number of seconds, minutes or hours, such as '90s', '5m' or '1h'; "
                         f"got {value!r}")
    return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]


def format_timeout(value: dt.timedelta) -> str:
    seconds = int(value.total_seconds())
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


Timeout = Annotated[
    dt.timedelta,
    BeforeValidator(parse_timeout),
    PlainSerializer(format_timeout, return_type=str),
    WithJsonSchema({"type": "string", "pattern": TIMEOUT}),
]

# The kinds an exclude pattern may name: the controllers careconcile restarts pods through.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod")
_GLOB = r"[a-zA-Z0-9.*?\[\]-]+"
EXCLUDE = rf"^{_GLOB}(/({'|'.join(WORKLOAD_KINDS)}|\*)/{_GLOB})?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"


def _exclude_pattern(value: str) -> str:
    if not re.fullmatch(EXCLUDE, value):
        raise ValueError(f"must be NAMESPACE or NAMESPACE/KIND/NAME (shell-style wildcards allowed; KIND one of "
                         f"{', '.join(WORKLOAD_KINDS)} or *); got {value!r}")
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key, label in value.items():
        if not re.fullmatch(LABEL_KEY, key) or len(key) > 317:
            raise ValueError(f"{key!r} is not a label key")
        if not isinstance(label, str) or not re.fullmatch(LABEL_VALUE, label):
            raise ValueError(f"the value {label!r} of {key!r} is not a label value")
    return value


class LabelSelector(_Strict):
    """Pods that read the cluster CA some way careconcile cannot see in their spec."""

    match_labels: Annotated[dict[str, str], AfterValidator(_labels)] = Field(
        alias="matchLabels", min_length=1, description="Labels a pod must all carry, as a LabelSelector's matchLabels.")


class WorkloadSettings(_Strict):
    """How careconcile restarts the pods that read the cluster CA when they start, after every
    bundle trusts both CAs and before any certificate is reissued. Every field is optional:
    unset here, it comes from spec.defaults.workloads, then from the built-in default."""

    restart: StrictBool | None = Field(
        default=None, description="Restart the pods that read the cluster CA at start (built-in default true). "
                                  "false: the plan only warns about them.")
    max_concurrent: StrictInt | None = Field(
        default=None, alias="maxConcurrent", ge=1, le=100,
        description="How many controllers roll at once; built-in default 4.")
    timeout: Timeout | None = Field(
        default=None, description="How long one workload's restart may take (a rollout, an eviction refused "
                                  "by its PodDisruptionBudget, a running Job); built-in default 10m.")
    exclude: list[Annotated[str, AfterValidator(_exclude_pattern)]] | None = Field(
        default=None, json_schema_extra={"items": {"pattern": EXCLUDE}},
        description="Workloads never restarted: NAMESPACE or NAMESPACE/KIND/NAME, shell-style wildcards "
                    "allowed (kube-system, app-*/Deployment/web, */Job/*). The plan warns about each.")
    evict_bare_pods: StrictBool | None = Field(
        default=None, alias="evictBarePods",
        description="Evict pods that no controller owns (nothing brings them back). Built-in default false: "
                    "such a pod blocks the plan unless excluded.")
    selector: LabelSelector | None = Field(
        default=None, description="Pods that read the cluster CA at start some way careconcile cannot see in "
                                  "their spec (from the API, from a node file it updates): restarted like the pods "
                                  "that mount kube-root-ca.crt. A restart cannot help a pod whose CA is a copy in "
                                  "its image or a Secret nobody updates.")


@dataclass(frozen=True)
class ResolvedWorkloads:
    restart: bool = True
    max_concurrent: int = 4
    timeout: dt.timedelta = dt.timedelta(minutes=10)
    exclude: tuple[str, ...] = ()
    evict_bare_pods: bool = False
    selector: tuple[tuple[str, str], ...] = ()


def resolve_workloads(cluster: WorkloadSettings | None, defaults: WorkloadSettings | None) -> ResolvedWorkloads:
    """Each field from the cluster, else from spec.defaults.workloads, else built in."""
    built_in = ResolvedWorkloads()

    def pick(field: str) -> Any:
        for layer in (cluster, defaults):
            if layer is not None and getattr(layer, field) is not None:
                return getattr(layer, field)
        return None

    restart, concurrent, timeout = pick("restart"), pick("max_concurrent"), pick("timeout")
    exclude, evict, selector = pick("exclude"), pick("evict_bare_pods"), pick("selector")
    return ResolvedWorkloads(
        restart=built_in.restart if restart is None else restart,
        max_concurrent=concurrent or built_in.max_concurrent,
        timeout=timeout or built_in.timeout,
        exclude=tuple(exclude or ()),
        evict_bare_pods=built_in.evict_bare_pods if evict is None else evict,
        selector=tuple(sorted(selector.match_labels.items())) if selector is not None else (),
    )


MANAGEMENT_NAMESPACE = "cluster-{name}"  # Cluster API's habit; the default of management.namespace


class ManagementSpec(_Strict):
    """A management (admin) cluster that holds this cluster the way Cluster API does: its CA
    of record in the Secret ``<name>-ca``, its kubeconfig in the Secret ``<name>-kubeconfig``,
    and careconcile's rotation state and lock, all in one namespace there."""

    kubeconfig: FilePath = Field(
        description="Path to a kubeconfig of the management cluster, with rights on Secrets and Leases in the "
                    "namespace; a relative path is relative to the spec file's directory, '~' expands.")
    context: str | None = Field(default=None, description="Context in that kubeconfig; its current one if unset.")
    namespace: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=63,
        description="The namespace in the management cluster that holds the cluster; cluster-<name> if unset.")


class ClusterSpec(_Strict):
    """A cluster whose authorities careconcile keeps in the declared state."""

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="The cluster's name in this spec.")
    # inCluster comes before kubeconfig: pydantic validates fields in order, and the
    # kubeconfig's check reads it, so that its error points at `kubeconfig`.
    in_cluster: StrictBool = Field(
        default=False, alias="inCluster",
        description="true: reach the API as the pod careconcile runs in, with its ServiceAccount token "
                    "(KUBERNETES_SERVICE_HOST/PORT, /var/run/secrets/kubernetes.io/serviceaccount); "
                    "the alternative to kubeconfig.")
    # management, too, comes before kubeconfig: with it, kubeconfig may be left out.
    management: ManagementSpec | None = Field(
        default=None,
        description="A management cluster that holds this cluster's CA of record (Secret <name>-ca), its "
                    "kubeconfig (Secret <name>-kubeconfig) and careconcile's state and lock, as Cluster API "
                    "keeps a cluster. The cluster's name is its name there.")
    kubeconfig: FilePath | None = Field(
        default=None, validate_default=True,
        description="Path to a kubeconfig with admin rights on the cluster; a relative path is relative to "
                    "the spec file's directory, '~' expands. Required unless inCluster is true or a management "
                    "cluster is named (careconcile then uses the kubeconfig in the Secret <name>-kubeconfig).")
    context: str | None = Field(default=None, description="Context in the kubeconfig; its current one if unset.")
    nodes: list[NodeSpec] = Field(default_factory=list, description="The nodes whose CA files careconcile manages.")
    state_store: StateStore = Field(
        default=StateStore(secret=SecretStateStore()), alias="stateStore",
        # as written in a spec; pydantic's own rendering would list `workspace: null` too
        json_schema_extra={"default": {"secret": {}}},
        description="Where careconcile keeps its rotation state for this cluster; a Secret "
                    "kube-system/careconcile-state (and the keys during a rotation in "
                    "kube-system/careconcile-keys) if unset, or with management the Secrets "
                    "<name>-careconcile-state and <name>-careconcile-keys in the management namespace. "
                    "With management only "
                    "`workspace: {}` may be set here.")
    authorities: Authorities = Field(default_factory=Authorities, description="The cluster's authorities.")
    workloads: WorkloadSettings | None = Field(
        default=None, description="How the pods that read the cluster CA at start are restarted during a rotation.")

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["kubeconfig"], "not": {"required": ["inCluster"], "properties": {"inCluster": {"const": True}}}},
        {"required": ["inCluster"], "properties": {"inCluster": {"const": True}}, "not": {"required": ["kubeconfig"]}},
        {"required": ["management"], "not": {"anyOf": [
            {"required": ["kubeconfig"]}, {"required": ["inCluster"], "properties": {"inCluster": {"const": True}}},
        ]}},
    ]})

    @field_validator("kubeconfig")
    @classmethod
    def _kubeconfig_or_in_cluster(cls, kubeconfig: str | None, info: ValidationInfo) -> str | None:
        if "in_cluster" not in info.data or "management" not in info.data:
            return kubeconfig  # inCluster or management itself is invalid; that error says enough
        in_cluster = info.data["in_cluster"]
        if kubeconfig is None and not in_cluster and info.data["management"] is None:
            raise ValueError("required field is missing (or set inCluster: true, or name a management cluster)")
        if kubeconfig is not None and in_cluster:
            raise ValueError("set either kubeconfig or inCluster: true, not both")
        return kubeconfig

    @model_validator(mode="after")
    def _context_needs_kubeconfig(self) -> "ClusterSpec":
        if self.in_cluster and self.context is not None:
            raise ValueError("context names a kubeconfig context; a cluster with inCluster: true has none")
        if self.management is not None and self.kubeconfig is None and self.context is not None:
            raise ValueError(f"context names a context of kubeconfig; without kubeconfig careconcile uses the "
                             f"current context of the Secret {self.name}-kubeconfig")
        return self

    @model_validator(mode="after")
    def _management_holds_the_state(self) -> "ClusterSpec":
        if self.management is None:
            return self
        if "state_store" in self.model_fields_set and self.state_store.secret is not None:
            raise ValueError(f"with management, the state is the Secret {self.name}-careconcile-state in the "
                             "management namespace; stateStore may only be `workspace: {}`")
        if self.management.namespace is None and len(MANAGEMENT_NAMESPACE.format(name=self.name)) > 63:
            raise ValueError(f"the default management namespace {MANAGEMENT_NAMESPACE.format(name=self.name)!r} "
                             "is longer than 63 characters; set management.namespace")
        return self

    @property
    def management_namespace(self) -> str | None:
        """The namespace in the management cluster that holds this cluster, None without one."""
        if self.management is None:
            return None
        return self.management.namespace or MANAGEMENT_NAMESPACE.format(name=self.name)

    @model_validator(mode="after")
    def _unique_nodes(self) -> "ClusterSpec":
        repeated = _repeated([node.name for node in self.nodes])
        if repeated:
            raise ValueError(f"node names must be unique; repeated: {repeated}")
        return self


class Metadata(_Strict):
    """Identifies the spec."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="The spec's name.")


class Defaults(_Strict):
    """Settings that apply wherever a cluster leaves them unset."""

    authorities: AuthoritySettings = Field(default_factory=AuthoritySettings,
                                           description="Defaults for every authority of every cluster.")
    workloads: WorkloadSettings | None = Field(default=None, description="Defaults for every cluster's workloads.")


@dataclass(frozen=True)
class ResolvedAuthority:
    """An authority of one cluster with every layer applied: the cluster's own settings,
    then spec.defaults.authorities, then the built-in defaults."""

    name: str
    rotation: int
    fingerprint: str | None
    key: pki.KeySpec
    validity: dt.timedelta
    renew_before: dt.timedelta
    leaf_validity: dt.timedelta
    common_name: str
    organizations: tuple[str, ...]
    # How the cluster's pods are restarted; used by authorities whose layout says pods trust them.
    workloads: ResolvedWorkloads = ResolvedWorkloads()


BUILT_IN_AUTHORITY = AuthoritySettings(
    key=KeySettings(algorithm="RSA", size=2048),
    validity=pki.CA_VALIDITY,
    renew_before=dt.timedelta(days=90),
    leaf_validity=pki.LEAF_VALIDITY,
    subject=Subject(),
)

# The authority every cluster has; its plans' action ids start with the cluster alone.
PRIMARY_AUTHORITY = "clusterCA"
# Spec name of each authority ("clusterCA") -> its field on Authorities ("cluster_ca").
AUTHORITY_FIELDS = {field.alias or name: name for name, field in Authorities.model_fields.items()}
# The CN each authority's CA gets unless the spec sets a subject: kubeadm's names.
DEFAULT_COMMON_NAMES = {"clusterCA": "kubernetes", "etcdCA": "etcd-ca", "frontProxyCA": "front-proxy-ca"}


def managed_authorities(cluster: "ClusterSpec") -> list[str]:
    """The authorities careconcile keeps for ``cluster``, in the order they are planned."""
    return [name for name, field in AUTHORITY_FIELDS.items() if getattr(cluster.authorities, field) is not None]


def _resolve(name: str, authority: AuthoritySpec, defaults: AuthoritySettings) -> ResolvedAuthority:
    built_in = BUILT_IN_AUTHORITY.model_copy(update={"subject": Subject(commonName=DEFAULT_COMMON_NAMES[name])})

    def pick(field: str) -> Any:  # the built-in layer sets every field, so one layer always has it
        return next(value for layer in (authority, defaults, built_in)
                    if (value := getattr(layer, field)) is not None)

    subject = pick("subject")
    return ResolvedAuthority(
        name=name,
        rotation=authority.rotation,
        fingerprint=authority.fingerprint,
        key=pick("key").to_key_spec(),
        validity=pick("validity"),
        renew_before=pick("renew_before"),
        leaf_validity=pick("leaf_validity"),
        common_name=subject.common_name,
        organizations=tuple(subject.organizations),
    )


def _lifetimes_agree_with_defaults(cluster: ClusterSpec, info: ValidationInfo) -> ClusterSpec:
    # Runs per cluster so that the error names the cluster; each layer alone was checked already.
    defaults = info.data.get("defaults")  # absent when the defaults themselves are invalid
    if defaults is None:
        return cluster
    problems = []
    for name in managed_authorities(cluster):
        resolved = _resolve(name, getattr(cluster.authorities, AUTHORITY_FIELDS[name]), defaults.authorities)
        lifetimes = _lifetime_problems(resolved.validity, resolved.renew_before, resolved.leaf_validity)
        if lifetimes:
            problems.append(f"authorities.{name}, with defaults applied: {'; '.join(lifetimes)}")
    if problems:
        raise ValueError("; ".join(problems))
    return cluster


class SpecBody(_Strict):
    """The declared state: defaults and the clusters."""

    # `defaults` comes first: pydantic validates fields in order, and each cluster's
    # check reads the validated defaults.
    defaults: Defaults = Field(default_factory=Defaults, description="Settings for every cluster.")
    clusters: list[Annotated[ClusterSpec, AfterValidator(_lifetimes_agree_with_defaults)]] = Field(
        min_length=1, description="The clusters this spec manages.")

    @model_validator(mode="after")
    def _unique_clusters(self) -> "SpecBody":
        repeated = _repeated([cluster.name for cluster in self.clusters])
        if repeated:
            raise ValueError(f"cluster names must be unique; repeated: {repeated}")
        return self


class SpecDocument(_Strict):
    """A careconcile spec file."""

    api_version: Literal["careconcile.dev/v1alpha1"] = Field(alias="apiVersion", description="The spec format's version.")
    kind: Literal["CASpec"] = Field(description="Always CASpec.")
    metadata: Metadata = Field(description="Names the spec.")
    spec: SpecBody = Field(description="The declared state.")


def relative_paths(document: SpecDocument) -> list[str]:
    """The spec's paths on this machine that are relative (to the spec file's directory), as
    ``cluster/field: path``: a kubeconfig, a management kubeconfig, an SSH key or known_hosts
    file. A path that starts with '~' is not relative. Node roots are always absolute."""
    found = []
    for cluster in document.spec.clusters:
        paths = [("kubeconfig", cluster.kubeconfig)]
        if cluster.management is not None:
            paths.append(("management.kubeconfig", cluster.management.kubeconfig))
        for node in cluster.nodes:
            if node.access.ssh is not None:
                paths.append((f"{node.name}.keyFile", node.access.ssh.key_file))
                paths.append((f"{node.name}.knownHostsFile", node.access.ssh.known_hosts_file))
        found += [f"{cluster.name}/{where}: {path}" for where, path in paths
                  if path is not None and not path.startswith("~") and not posixpath.isabs(path)]
    return found


def resolve_authority(document: SpecDocument, cluster: ClusterSpec, name: str = "clusterCA") -> ResolvedAuthority:
    """The authority ``name`` of ``cluster`` as it should be: each field from the cluster,
    else from spec.defaults.authorities, else the built-in default (RSA 2048, 3650d
    validity, 90d renewBefore, 365d leafValidity, CN=kubernetes)."""
    if name not in AUTHORITY_FIELDS:
        raise ValueError(f"unknown authority {name!r}; known: {', '.join(AUTHORITY_FIELDS)}")
    authority = getattr(cluster.authorities, AUTHORITY_FIELDS[name])
    if authority is None:
        raise ValueError(f"cluster {cluster.name} does not list authorities.{name}")
    resolved = _resolve(name, authority, document.spec.defaults.authorities)
    return replace(resolved, workloads=resolve_workloads(cluster.workloads, document.spec.defaults.workloads))
