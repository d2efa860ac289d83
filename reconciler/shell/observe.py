"""Reading a live cluster into a :class:`ClusterObservation`: node files, API objects, TLS.

Every read names what it read in its errors (node and path, or the API object), so a
malformed certificate or an unreachable node is reported where it is.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from ruamel.yaml import YAML, YAMLError

from reconciler._time import micro_time, parse_time
from reconciler.core import kubeconfig, pki
from reconciler.core.authorities import AuthorityLayout, manifest_path
from reconciler.core.observed import (
    ClusterObservation, ObservedBundle, ObservedComponent, ObservedEndpoint, ObservedLeaf, ObservedRecord,
)
from reconciler.core.spec import ClusterSpec, ResolvedWorkloads
from reconciler.errors import APINotFoundError, NodeUnreachableError, PKIError
from reconciler.shell import probes
from reconciler.shell.kube import KubeClient
from reconciler.shell.fleet import map_bounded
from reconciler.shell.lock import LEASE_NAME, NAMESPACE as LOCK_NAMESPACE, ClusterLock, LockSet
from reconciler.shell.management import ManagementAccess
from reconciler.shell.nodes import NODE_PARALLELISM, NodeFiles, close_nodes
from reconciler.shell.statestore import StateStore, Stored
from reconciler.shell.workloads import observe_workloads

RESTARTED_FOR = "careconcile.dev/restarted-for"
RESTARTED_AT = "careconcile.dev/restarted-at"
CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
EXTENSION_AUTH = "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication"
EXTENSION_AUTH_ID = "configmap/kube-system/extension-apiserver-authentication"


@dataclass
class ClusterAccess:
    """Everything careconcile uses to reach one cluster."""

    cluster: ClusterSpec
    layout: AuthorityLayout
    client: KubeClient
    kubeconfig_path: Path | None  # the spec's kubeconfig; None for inCluster: true
    nodes: dict[str, NodeFiles]
    roles: dict[str, str]
    store: StateStore
    workspace: Path  # careconcile-workspace/<cluster>
    # Admin mode: the management cluster that holds the cluster's CA Secret, kubeconfig
    # Secret, state and lock. The lock's Lease lives on lock_client (the cluster itself if None).
    management: ManagementAccess | None = None
    lock_client: KubeClient | None = None
    lock_namespace: str = LOCK_NAMESPACE
    lock_name: str = LEASE_NAME
    # How the cluster's pods are restarted (the spec's workloads, with defaults applied).
    workloads: ResolvedWorkloads = ResolvedWorkloads()

    @property
    def name(self) -> str:
        return self.cluster.name

    def lock(self, operation: str) -> ClusterLock | LockSet:
        """The cluster's lock for one operation (not taken yet). In admin mode it is two
        Leases: in the management namespace, and in the cluster's own kube-system, so that
        a run from a plain spec of the same cluster is refused too."""
        lock = ClusterLock(self.lock_client or self.client, self.name, operation=operation,
                           namespace=self.lock_namespace, name=self.lock_name)
        if self.lock_client is None:
            return lock
        return LockSet([lock, ClusterLock(self.client, self.name, operation=operation)])

    @property
    def workspace_kubeconfig(self) -> Path:
        return self.workspace / f"{self.cluster.name}-kubeconfig"

    def control_planes(self) -> list[str]:
        return [name for name, role in self.roles.items() if role == "control-plane"]

    def kubelet_restart(self, node: str) -> tuple[str, ...]:
        """The command that restarts ``node``'s kubelet (the spec's kubeletRestart); empty
        when the node has no kubelet for careconcile to restart."""
        return next((spec.kubelet_restart for spec in self.cluster.nodes if spec.name == node), ())

    def close(self) -> None:
        """Close the API client and the nodes' connections (SSH); a later call reopens them."""
        close_nodes(self.nodes)
        self.client.close()
        if self.management is not None:
            self.management.close()


def load_manifest(files: NodeFiles, component: str) -> dict[str, Any] | None:
    raw = files.read(manifest_path(component))
    if raw is None:
        return None
    try:
        document = YAML(typ="safe", pure=True).load(raw)
    except YAMLError as exc:
        raise PKIError(f"{files.describe()}: {manifest_path(component)} is not YAML ({exc})") from exc
    if not isinstance(document, dict):
        raise PKIError(f"{files.describe()}: {manifest_path(component)} is not a Pod manifest")
    return document


def manifest_flags(manifest: dict[str, Any]) -> dict[str, str]:
    containers = ((manifest.get("spec") or {}).get("containers") or [{}])
    flags = {}
    for argument in (containers[0].get("command") or []) + (containers[0].get("args") or []):
        if argument.startswith("--") and "=" in argument:
            name, value = argument.split("=", 1)
            flags[name] = value
    return flags


def inputs_digest(files: NodeFiles, inputs: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in inputs:
        content = files.read(path) or b""
        digest.update(f"{path}\0{hashlib.sha256(content).hexdigest()}\n".encode())
    return "sha256:" + digest.hexdigest()


def _certs(pem: bytes, source: str) -> tuple[x509.Certificate, ...]:
    certs = pki.load_certificates(pem, source=source)
    if not certs:
        raise PKIError(f"{source}: holds no certificate")
    return tuple(certs)


def _kubeconfig(raw: bytes, source: str) -> dict[str, Any]:
    return kubeconfig.parse(raw.decode(errors="replace"), source=source)


def _kubeconfig_bundle(raw: bytes, source: str, scope: kubeconfig.Scope = kubeconfig.EVERYTHING
                       ) -> tuple[x509.Certificate, ...]:
    pems = kubeconfig.ca_certificates(_kubeconfig(raw, source), source=source, scope=scope)
    certs: list[x509.Certificate] = []
    for pem in pems:
        certs += [cert for cert in _certs(pem, source) if cert not in certs]
    return tuple(certs)


def _kubeconfig_leaves(raw: bytes, source: str, *, site: str, kind: str, node: str | None,
                       path: str, scope: kubeconfig.Scope = kubeconfig.EVERYTHING) -> list[ObservedLeaf]:
    leaves = []
    credentials = kubeconfig.embedded_credentials(_kubeconfig(raw, source), scope, source=source)
    for user, cert_pem, key_pem in credentials:
        cert = _certs(cert_pem, f"{source} user {user}")[0]
        matches = key_pem is not None and pki.key_pem_matches_cert(
            key_pem, cert, source=f"{source} user {user}")
        leaves.append(ObservedLeaf(id=site if len(credentials) == 1 else f"{site}#{user}", kind=kind, cert=cert,
                                   key_matches=matches, node=node, path=path, user=user))
    return leaves


def _observe_node(access: ClusterAccess, name: str, role: str) -> tuple[list, list, list, ObservedRecord | None,
                                                                            list]:
    files = access.nodes[name]
    layout = access.layout
    files.check()
    where = files.describe()
    bundles, leaves, components, endpoints = [], [], [], []
    for site in layout.bundles:
        if role not in site.roles:
            continue
        raw = files.read(site.path)
        if raw is None:
            if site.required:
                raise NodeUnreachableError(f"{where}: {site.path} is missing")
            continue
        source = f"{where} {site.path}"
        certs = _certs(raw, source) if site.form == "pem" else _kubeconfig_bundle(raw, source)
        kind = "node-pem" if site.form == "pem" else "node-kubeconfig"
        bundles.append(ObservedBundle(id=f"{name}:{site.path}", kind=kind, certs=certs, node=name, path=site.path))
    for site in layout.leaves:
        if role not in site.roles:
            continue
        source = f"{where} {site.path}"
        site_id = f"{name}:{site.path}"
        if site.form == "pair":
            cert_raw, key_raw = files.read(f"{site.path}.crt"), files.read(f"{site.path}.key")
            if cert_raw is None:
                continue
            cert = _certs(cert_raw, f"{source}.crt")[0]
            matches = key_raw is not None and pki.key_pem_matches_cert(
                key_raw, cert, source=f"{source}.key")
            leaves.append(ObservedLeaf(id=site_id, kind="node-pair", cert=cert, key_matches=matches, node=name,
                                       path=site.path))
        elif site.form == "combined":
            raw = files.read(site.path)
            if raw is None:
                continue
            cert = _certs(raw, source)[0]
            matches = b"PRIVATE KEY-----" in raw and pki.key_pem_matches_cert(raw, cert, source=source)
            leaves.append(ObservedLeaf(id=site_id, kind="node-combined", cert=cert, key_matches=matches, node=name,
                                       path=site.path))
        else:
            raw = files.read(site.path)
            if raw is not None:
                leaves += _kubeconfig_leaves(raw, source, site=site_id, kind="node-kubeconfig", node=name,
                                             path=site.path)
    record = None
    if role == "control-plane":
        record = _observe_record(files, layout, name)
        for component in layout.components:
            manifest = load_manifest(files, component.name)
            if manifest is None:
                continue
            annotations = (manifest.get("metadata") or {}).get("annotations") or {}
            flags = manifest_flags(manifest)
            signer = layout.signer if component.name == "kube-controller-manager" else None
            components.append(ObservedComponent(
                id=f"{name}:{component.name}", node=name, name=component.name, inputs=component.inputs,
                inputs_digest=inputs_digest(files, component.inputs),
                restarted_for=annotations.get(RESTARTED_FOR),
                restarted_at=parse_time(annotations.get(RESTARTED_AT)),
                signer_cert=flags.get(signer.cert_flag) if signer else None,
                signer_key=flags.get(signer.key_flag) if signer else None,
            ))
        server = apiserver_server(files)
        if server is not None:
            endpoints.append(ObservedEndpoint(node=name, server=server,
                                              presented=probes.presented_certificate(server)))
    command = access.kubelet_restart(name)
    for service in layout.node_services:
        if command and role in service.roles:
            marker = read_restart_marker(files, service.marker)
            components.append(ObservedComponent(
                id=f"{name}:{service.name}", node=name, name=service.name, inputs=service.inputs,
                inputs_digest=inputs_digest(files, service.inputs), restarted_for=marker.restarted_for,
                restarted_at=marker.restarted_at, restart="command", command=command,
                lease_renewed_at_restart=marker.lease_renew_time,
            ))
    return bundles, leaves, components, record, endpoints


@dataclass(frozen=True)
class RestartMarker:
    """What careconcile wrote on a node when it last restarted a node service (the kubelet)."""

    restarted_for: str | None = None
    restarted_at: dt.datetime | None = None
    lease_renew_time: dt.datetime | None = None  # the node's Lease renewTime read just after the restart


def read_restart_marker(files: NodeFiles, path: str) -> RestartMarker:
    """The marker file as careconcile wrote it. One that is missing or unreadable counts as
    no restart recorded: during a rotation the next plan restarts the service, which
    writes it again."""
    raw = files.read(path)
    if raw is None:
        return RestartMarker()
    try:
        document = json.loads(raw)
        restarted_for = document.get("restartedFor")
        return RestartMarker(restarted_for=restarted_for if isinstance(restarted_for, str) else None,
                             restarted_at=parse_time(document.get("restartedAt")),
                             lease_renew_time=parse_time(document.get("leaseRenewTime")))
    except (ValueError, TypeError, AttributeError):
        return RestartMarker()


def restart_marker(restarted_for: str, restarted_at: dt.datetime, lease_renew_time: dt.datetime | None) -> bytes:
    return (json.dumps({"restartedFor": restarted_for, "restartedAt": micro_time(restarted_at),
                        "leaseRenewTime": micro_time(lease_renew_time) if lease_renew_time else None},
                       indent=2) + "\n").encode()


def apiserver_server(files: NodeFiles) -> str | None:
    """The URL of the apiserver a node runs, from its static-pod manifest."""
    manifest = load_manifest(files, "kube-apiserver")
    if manifest is None:
        return None
    flags = manifest_flags(manifest)
    return f"https://{flags.get('--advertise-address', '127.0.0.1')}:{flags.get('--secure-port', '6443')}"


def apiserver_servers(access: ClusterAccess) -> list[tuple[str, str]]:
    found = []
    for node in access.control_planes():
        server = apiserver_server(access.nodes[node])
        if server is not None:
            found.append((node, server))
    return found


def local_kubeconfig_scope(access: ClusterAccess, raw: bytes) -> kubeconfig.Scope:
    """The entries of the spec's kubeconfig that belong to this cluster."""
    document = _kubeconfig(raw, str(access.kubeconfig_path))
    servers = {server for _, server in apiserver_servers(access)}
    scope = kubeconfig.scope_for(document, servers=servers, context=access.cluster.context)
    references = kubeconfig.file_references(document, scope)
    if references:
        raise PKIError(f"kubeconfig {access.kubeconfig_path}: {'; '.join(references)}: careconcile rotates "
                       "certificates a kubeconfig embeds, not files it points at",
                       hint="embed them: kubectl config set-cluster/set-credentials ... --embed-certs")
    return scope


def read_record(files: NodeFiles, layout: AuthorityLayout) -> tuple[pki.PrivateKey, x509.Certificate | None]:
    """A control-plane node's CA key, and the certificate in its CA file that the key
    belongs to (None when it matches none of them)."""
    where = files.describe()
    cert_raw, key_raw = files.read(layout.record_cert), files.read(layout.record_key)
    if cert_raw is None or key_raw is None:
        missing = layout.record_cert if cert_raw is None else layout.record_key
        raise NodeUnreachableError(f"{where}: {missing} is missing; a control-plane node holds the CA of record")
    key = pki.load_private_key(key_raw, source=f"{where} {layout.record_key}")
    certs = _certs(cert_raw, f"{where} {layout.record_cert}")
    return key, next((cert for cert in certs if pki.key_matches_cert(key, cert)), None)


def _observe_record(files: NodeFiles, layout: AuthorityLayout, node: str) -> ObservedRecord:
    where = files.describe()
    key, record = read_record(files, layout)
    signer, signer_matches = None, False
    signer_raw, signer_key_raw = files.read(layout.signer_cert), files.read(layout.signer_key)
    if signer_raw is not None:
        signer = _certs(signer_raw, f"{where} {layout.signer_cert}")[0]
        signer_matches = signer_key_raw is not None and pki.key_pem_matches_cert(
            signer_key_raw, signer, source=f"{where} {layout.signer_key}")
    return ObservedRecord(node=node, cert=record, key_spec=str(pki.key_spec_of(key)), signer=signer,
                          signer_key_matches=signer_matches)


def observe_api_bundles(client: KubeClient) -> list[ObservedBundle]:
    """cluster-info (careconcile writes it), kube-root-ca.crt in every namespace and the
    apiserver's published client CA (their owners write them)."""
    bundles = []
    try:
        info = client.get(CLUSTER_INFO)
    except APINotFoundError:
        info = None
    if info is not None:
        raw = ((info.get("data") or {}).get("kubeconfig") or "").encode()
        bundles.append(ObservedBundle(id="configmap/kube-public/cluster-info", kind="cluster-info",
                                      certs=_kubeconfig_bundle(raw, "ConfigMap kube-public/cluster-info")))
    for configmap in client.list("/api/v1/configmaps", field_selector="metadata.name=kube-root-ca.crt"):
        namespace = configmap["metadata"]["namespace"]
        pem = ((configmap.get("data") or {}).get("ca.crt") or "").encode()
        bundles.append(ObservedBundle(id=f"configmap/{namespace}/kube-root-ca.crt", kind="configmap",
                                      certs=_certs(pem, f"ConfigMap {namespace}/kube-root-ca.crt"), managed=False))
    try:
        auth = client.get(EXTENSION_AUTH)
        pem = ((auth.get("data") or {}).get("client-ca-file") or "").encode()
        # The apiserver adds its client CAs to this ConfigMap but never removes one until it
        # expires, so aggregated apiservers and the controller-manager would go on trusting
        # an old CA for years: careconcile distrusts it here itself.
        bundles.append(ObservedBundle(id=EXTENSION_AUTH_ID, kind="extension-auth",
                                      certs=_certs(pem, "ConfigMap kube-system/extension-apiserver-authentication")))
    except APINotFoundError:
        pass
    return bundles


# Objects that carry a caBundle for the apiserver to verify a webhook or an aggregated
# apiserver with: (kind for ids, list path, where in each item the caBundles are).
CA_BUNDLE_OWNERS = (
    ("validatingwebhookconfiguration", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"),
    ("mutatingwebhookconfiguration", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"),
    ("apiservice", "/apis/apiregistration.k8s.io/v1/apiservices"),
    ("customresourcedefinition", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
)


def ca_bundle_fields(kind: str, item: dict[str, Any]) -> list[tuple[str, str]]:
    """(id suffix, base64 caBundle) of every caBundle field in one object."""
    spec = item.get("spec") or {}
    if kind.endswith("webhookconfiguration"):
        return [(f"/webhooks/{hook.get('name')}", (hook.get("clientConfig") or {}).get("caBundle") or "")
                for hook in item.get("webhooks") or []]
    if kind == "apiservice":
        return [("", spec.get("caBundle") or "")]
    webhook = ((spec.get("conversion") or {}).get("webhook") or {})
    return [("/conversion", (webhook.get("clientConfig") or {}).get("caBundle") or "")]


def observe_ca_bundles(client: KubeClient, authority_cas: set[str]) -> list[ObservedBundle]:
    """caBundles that trust one of the authority's CAs. Only those certificates are the
    authority's business; others in the same bundle (a webhook's own CA) are kept as they are."""
    bundles = []
    for kind, path in CA_BUNDLE_OWNERS:
        for item in client.list(path):
            name = item["metadata"]["name"]
            for suffix, data in ca_bundle_fields(kind, item):
                if not data:
                    continue
                site = f"{kind}/{name}{suffix}"
                try:
                    certs = _certs(base64.b64decode(data), f"{site} caBundle")
                except (PKIError, ValueError):
                    continue  # not ours to judge: it cannot hold one of our CAs in a readable form
                ours = tuple(cert for cert in certs if pki.fingerprint(cert) in authority_cas)
                if ours:
                    bundles.append(ObservedBundle(id=site, kind="ca-bundle", certs=ours, path=path))
    return bundles


def observe_management(access: ClusterAccess) -> tuple[list[ObservedRecord], list[ObservedBundle],
                                                       list[ObservedLeaf]]:
    """Admin mode: the Secret <name>-ca, a CA of record beside the control-plane nodes' files,
    and the Secret <name>-kubeconfig, a bundle and a leaf like any kubeconfig (it holds this
    cluster alone, so all of its entries count). Both must exist."""
    management, layout = access.management, access.layout
    records, bundles, leaves = [], [], []
    if layout.management_secret is not None:
        certs, key = management.read_authority(layout.management_secret)
        site = management.secret_id(management.names.authority_secret(layout.management_secret))
        records.append(ObservedRecord(node=site, kind="secret", key_spec=str(pki.key_spec_of(key)),
                                      cert=next((cert for cert in certs if pki.key_matches_cert(key, cert)), None)))
    if layout.management_kubeconfig:
        raw = management.read_kubeconfig().encode()
        source = management.kubeconfig_source
        site = management.secret_id(management.names.kubeconfig_secret)
        references = kubeconfig.file_references(_kubeconfig(raw, source))
        if references:
            raise PKIError(f"{source}: {'; '.join(references)}: a kubeconfig in a Secret must embed its certificates")
        bundles.append(ObservedBundle(id=site, kind="secret-kubeconfig", certs=_kubeconfig_bundle(raw, source)))
        leaves += _kubeconfig_leaves(raw, source, site=site, kind="secret-kubeconfig", node=None, path=None)
    return records, bundles, leaves


def observe(access: ClusterAccess, stored: Stored | None = None, *, with_workloads: bool = True) -> ClusterObservation:
    """``with_workloads`` False leaves the pods out (the checks that need no pods)."""
    bundles, leaves, components, records, endpoints = [], [], [], [], []
    # Nodes are read several at once (over SSH mostly waiting); results keep the nodes' order.
    observed_nodes = map_bounded(lambda node: _observe_node(access, *node), access.roles.items(), NODE_PARALLELISM)
    for node_bundles, node_leaves, node_components, record, node_endpoints in observed_nodes:
        bundles += node_bundles
        leaves += node_leaves
        components += node_components
        endpoints += node_endpoints
        if record is not None:
            records.append(record)
    # The kubeconfig careconcile itself uses is a consumer like any other (a pod's
    # ServiceAccount CA is the kube-root-ca.crt ConfigMap, observed with the API objects).
    path = access.kubeconfig_path
    if path is not None:
        raw = path.read_bytes()
        site = f"local:{path}"
        scope = local_kubeconfig_scope(access, raw)
        bundles.append(ObservedBundle(id=site, kind="local-kubeconfig",
                                      certs=_kubeconfig_bundle(raw, str(path), scope), path=str(path)))
        leaves += _kubeconfig_leaves(raw, str(path), site=site, kind="local-kubeconfig", node=None, path=str(path),
                                     scope=scope)
    if access.management is not None:  # admin mode: the CA of record and the kubeconfig Secrets
        management_records, management_bundles, management_leaves = observe_management(access)
        records += management_records
        bundles += management_bundles
        leaves += management_leaves
    stored = stored or access.store.load(access.layout.name)
    if access.layout.in_cluster_objects:
        bundles += observe_api_bundles(access.client)
        authority_cas = {pki.fingerprint(cert) for cert in
                         [r.cert for r in records] + [stored.state.target, stored.state.previous] if cert is not None}
        authority_cas |= set(stored.state.retired)
        bundles += observe_ca_bundles(access.client, authority_cas)
    workspace_leaf = None
    workspace_path = access.workspace_kubeconfig
    if workspace_path.is_file():
        # The kubeconfig an earlier rotation wrote is a consumer like the spec's own.
        raw = workspace_path.read_bytes()
        site = f"local:{workspace_path}"
        found = _kubeconfig_leaves(raw, str(workspace_path), site=site, kind="local-kubeconfig", node=None,
                                   path=str(workspace_path))
        bundles.append(ObservedBundle(id=site, kind="local-kubeconfig",
                                      certs=_kubeconfig_bundle(raw, str(workspace_path)), path=str(workspace_path)))
        leaves += found
        workspace_leaf = found[0] if found else None
    workloads = ()
    if access.layout.pods_trust and with_workloads:
        workloads = observe_workloads(access.client, access.workloads.selector)
    return ClusterObservation(
        workloads=workloads,
        cluster=access.name, authority=access.layout.name, records=tuple(records), bundles=tuple(bundles),
        leaves=tuple(leaves), components=tuple(components), endpoints=tuple(endpoints), state=stored.state,
        workspace_kubeconfig=workspace_leaf, workspace_kubeconfig_path=str(workspace_path),
        node_names=tuple(access.roles),
    )

