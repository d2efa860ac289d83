"""The spec: the CA state a platform team declares for its clusters.

These pydantic models are the source of truth for the spec format. This first version
holds what a cluster is (how to reach its API, its nodes and how to reach them) and the
rotation counter of each authority; the desired-state fields of an authority (pinned
fingerprint, key, validity, renewBefore) extend :class:`AuthoritySpec`.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

API_VERSION = "careconcile.dev/v1alpha1"
KIND = "CASpec"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _repeated(names: list[str]) -> str:
    return ", ".join(sorted({name for name in names if names.count(name) > 1}))


class _Strict(BaseModel):
    # Unknown fields are errors: a typo in a spec must not silently mean "default".
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class LocalAccess(_Strict):
    """The node's filesystem is reachable here, under a root directory (the sandbox's
    node directories, or "/" when careconcile runs on the node itself)."""

    root: str = Field(description="Absolute directory that stands for the node's '/'.")

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not PurePosixPath(value).is_absolute():
            raise ValueError("must be an absolute path")
        return value


class NodeAccess(_Strict):
    """How careconcile reaches a node's files. Exactly one transport is set; more
    transports (ssh) are added beside `local`."""

    local: LocalAccess | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "NodeAccess":
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one access transport (one of: {', '.join(type(self).model_fields)})")
        return self


class NodeSpec(_Strict):
    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    role: Literal["control-plane", "worker"]
    access: NodeAccess


class AuthoritySpec(_Strict):
    rotation: int = Field(
        default=0,
        ge=0,
        description="Raise above the value last applied to force a rotation of this authority.",
    )


class Authorities(_Strict):
    cluster_ca: AuthoritySpec = Field(default_factory=AuthoritySpec, alias="clusterCA")


class ClusterSpec(_Strict):
    name: str = Field(pattern=DNS_LABEL, max_length=63)
    kubeconfig: str = Field(description="Path to a kubeconfig with admin rights on the cluster.")
    context: str | None = Field(default=None, description="Context in the kubeconfig; its current one if unset.")
    nodes: list[NodeSpec] = Field(default_factory=list)
    authorities: Authorities = Field(default_factory=Authorities)

    @model_validator(mode="after")
    def _unique_nodes(self) -> "ClusterSpec":
        repeated = _repeated([node.name for node in self.nodes])
        if repeated:
            raise ValueError(f"node names must be unique; repeated: {repeated}")
        return self


class Metadata(_Strict):
    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)


class SpecBody(_Strict):
    clusters: list[ClusterSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_clusters(self) -> "SpecBody":
        repeated = _repeated([cluster.name for cluster in self.clusters])
        if repeated:
            raise ValueError(f"cluster names must be unique; repeated: {repeated}")
        return self


class SpecDocument(_Strict):
    api_version: Literal["careconcile.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["CASpec"]
    metadata: Metadata
    spec: SpecBody
