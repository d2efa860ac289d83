"""What an action of a plan writes, removes and runs, and where (pure).

A plan names each action by its site's label (``cp1:/etc/kubernetes/pki/apiserver``), which
is not always the file written: a ``pair`` is a certificate and a key, a signer is two
files in a directory of careconcile's, a restart writes a manifest or runs the node's
command and writes a marker. :func:`effects` lists them from the same tables the writers
use (the authority's layout, :func:`~reconciler.core.sites.pair_files`,
:func:`~reconciler.core.authorities.manifest_path`), so that ``show`` prints what ``apply``
does. :class:`Places` adds what the spec knows and the plan does not: where each node's
root is, how it is reached, and where the state store is.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Literal

from reconciler.core.admin import ManagementNames
from reconciler.core.authorities import AUTHORITIES, SIGNER_DIR, manifest_path
from reconciler.core.plan import Action, RestartParams, RestartWorkloadParams
from reconciler.core.sites import (
    ApiField, Component, LocalKubeconfig, ManagementSecret, NodeFile, NodeSigner, StateRecord, Workload,
)
from reconciler.core.spec import SpecDocument

Verb = Literal["writes", "removes", "runs", "replaces", "patches", "evicts"]
# Where it happens: a node's files or commands, a file on this machine, the cluster's API,
# the management cluster, the state store.
Scope = Literal["node", "local", "api", "management", "state", "keys"]


@dataclass(frozen=True)
class Effect:
    verb: Verb
    scope: Scope
    what: str  # a path on the node, a path here, an API object, a command line
    node: str | None = None


@dataclass(frozen=True)
class NodePlace:
    """How a node is reached (``local``, ``ssh root@10.0.12.4:22``) and where its '/' is there."""

    transport: str
    root: str = "/"
    runs_here: bool = False  # its commands run on this machine (access: local)

    def path(self, node_path: str) -> str:
        return posixpath.join(self.root, node_path.lstrip("/"))


@dataclass(frozen=True)
class Places:
    """What the spec says about where a plan's effects land: each cluster's nodes and its
    state store. Empty when the spec is not at hand (``show`` of a plan whose spec is gone
    or changed): effects are then shown as node paths."""

    nodes: dict[tuple[str, str], NodePlace] = field(default_factory=dict)  # (cluster, node) -> place
    state: dict[str, str] = field(default_factory=dict)  # cluster -> its state store's public record, in words
    keys: dict[str, str] = field(default_factory=dict)  # cluster -> where its state store keeps the CA keys


def places_of(document: SpecDocument, workspace: str | None = None) -> Places:
    """What ``document`` (the spec a plan was made from) says about where effects land.
    ``workspace``: the workspace directory, for a state store kept there. Nodes that come
    from an admin cluster's inventory are not in the spec, and so not in the places."""
    nodes: dict[tuple[str, str], NodePlace] = {}
    state: dict[str, str] = {}
    keys: dict[str, str] = {}
    for cluster in document.spec.clusters:
        for node in cluster.nodes:
            local, ssh = node.access.local, node.access.ssh
            if local is not None:
                nodes[(cluster.name, node.name)] = NodePlace("local", local.root, runs_here=True)
            elif ssh is not None:
                nodes[(cluster.name, node.name)] = NodePlace(f"ssh {ssh.user}@{ssh.host}:{ssh.port}", ssh.root)
        if cluster.state_store.workspace is not None:
            where = f" in {workspace}" if workspace else ""
            state[cluster.name] = f"the workspace state file {cluster.name}/state/state.json{where}"
            keys[cluster.name] = f"the workspace keys file {cluster.name}/state/keys.json{where}"
        elif cluster.management is not None:
            names = ManagementNames(cluster.name, cluster.management_namespace or "")
            state[cluster.name] = f"Secret {names.namespace}/{names.state_secret} in the management cluster"
            keys[cluster.name] = f"Secret {names.namespace}/{names.keys_secret} in the management cluster"
        elif cluster.state_store.secret is not None:
            secret = cluster.state_store.secret
            state[cluster.name] = f"Secret {secret.namespace}/{secret.name}"
            keys[cluster.name] = f"Secret {secret.namespace}/{secret.keys_name}"
    return Places(nodes=nodes, state=state, keys=keys)


def effects(action: Action, authority: str) -> tuple[Effect, ...]:
    """What ``action`` (of a plan of ``authority``) writes, removes and runs, in order.
    A check (``verify``) writes nothing."""
    site = action.site
    layout = AUTHORITIES[authority]
    if isinstance(site, StateRecord):
        # The public record, and the keys in their own object (create-ca stores the new CA's
        # key before the record names it; finalize drops both keys after recording the end).
        record = Effect("writes", "state", "rotation state (no key)")
        if action.kind == "create-ca":
            return (Effect("writes", "keys", "the new CA's key"), record)
        if action.kind == "finalize":
            return (record, Effect("removes", "keys", "the old and the new CA's keys"))
        return (record,)
    if isinstance(site, NodeFile):
        files = site.files
        if site.form == "pair":  # the key before the certificate, as the writer does
            files = tuple(reversed(files))
        return tuple(Effect("writes", "node", path, site.node) for path in files)
    if isinstance(site, LocalKubeconfig):
        return (Effect("writes", "local", site.path),)
    if isinstance(site, ApiField):
        return (Effect("replaces", "api", site.object_path + (f" ({site.field})" if site.field else "")),)
    if isinstance(site, ManagementSecret):
        return (Effect("writes", "management", f"Secret {site.namespace}/{site.name}"),)
    if isinstance(site, NodeSigner):
        signer = (layout.signer_key, layout.signer_cert) if layout.signer is not None else ()
        if action.kind == "remove-signer":
            return tuple(Effect("removes", "node", path, site.node)
                         for path in (layout.signer_cert, layout.signer_key, SIGNER_DIR))
        record = (layout.record_key,) if action.kind == "switch-signer" else ()
        return tuple(Effect("writes", "node", path, site.node) for path in signer + record)
    if isinstance(site, Component):
        params = action.params
        assert isinstance(params, RestartParams)
        service = next((s for s in layout.node_services if s.name == site.name), None)
        if service is not None:
            return (Effect("runs", "node", params.command or "(the node's kubeletRestart)", site.node),
                    Effect("writes", "node", service.marker, site.node))
        return (Effect("writes", "node", manifest_path(site.name), site.node),)
    if isinstance(site, Workload):
        params = action.params
        assert isinstance(params, RestartWorkloadParams)
        named = f"{site.workload} {site.namespace}/{site.name}"
        if params.method == "rollout":
            return (Effect("patches", "api", f"{named} (its pod template's restartedAt)"),)
        if params.method == "evict":
            return (Effect("evicts", "api", f"the pods of {named}, one at a time"),)
    return ()


def where(effect: Effect, cluster: str, places: Places) -> str:
    """Where an effect lands, in words: the node and how it is reached, this machine, the
    cluster's API, the management cluster, the state store."""
    if effect.scope == "node":
        place = places.nodes.get((cluster, effect.node or ""))
        if place is None:
            return f"on {effect.node}"
        if effect.verb == "runs" and place.runs_here:
            return f"on this machine, for {effect.node} ({place.transport})"
        return f"on {effect.node} ({place.transport})"
    if effect.scope == "local":
        return "on this machine"
    if effect.scope == "management":
        return "in the management cluster"
    if effect.scope == "state":
        return "to " + places.state.get(cluster, "the cluster's state store")
    if effect.scope == "keys":
        return ("from " if effect.verb == "removes" else "to ") + places.keys.get(cluster, "the state store's keys")
    return "through the cluster's API"


def lines(action: Action, cluster: str, authority: str, places: Places) -> list[str]:
    """What an action does, one line per verb and place: ``writes on cp1 (local): PATH, PATH``,
    ``runs on w1 (ssh root@10.0.12.4:22): systemctl restart kubelet``. A node's paths are
    the paths on the machine that holds them (its root joined in) when ``places`` knows the
    node, else the node's own."""
    shown: list[tuple[str, list[str]]] = []
    for effect in effects(action, authority):
        head = f"{effect.verb} {where(effect, cluster, places)}"
        place = places.nodes.get((cluster, effect.node or "")) if effect.scope == "node" else None
        what = place.path(effect.what) if place is not None and effect.verb != "runs" else effect.what
        if shown and shown[-1][0] == head and effect.verb != "runs":
            shown[-1][1].append(what)
        else:
            shown.append((head, [what]))
    return [f"{head}: {', '.join(whats)}" for head, whats in shown]
