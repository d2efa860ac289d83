"""Reading a live cluster into a :class:`ClusterObservation`: node files, API objects, TLS.

Every read names what it read in its errors (node and path, or the API object), so a
malformed certificate or an unreachable node is reported where it is.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from reconciler._time import parse_time
from reconciler.core import kubeconfig, pki
from reconciler.core.authorities import AUTHORITIES, AuthorityLayout, StaticPodComponent, manifest_path
from reconciler.core.observed import (
    ClusterObservation, ObservedBundle, ObservedComponent, ObservedEndpoint, ObservedLeaf, ObservedRecord,
    StoredState,
)
from reconciler.core.sites import ApiField, CredentialSite, LocalKubeconfig, ManagementSecret, NodeFile, pair_files
from reconciler.core.spec import ClusterSpec, ResolvedWorkloads
from reconciler.errors import APINotFoundError, NodeUnreachableError, PKIError
from reconciler.shell import probes
from reconciler.shell.kube import KubeClient
from reconciler.shell.fleet import map_bounded
from reconciler.shell.lock import LEASE_NAME, NAMESPACE as LOCK_NAMESPACE, ClusterLock, LockSet
from reconciler.shell.management import ManagementAccess
from reconciler.shell.formats import (
    CA_BUNDLE_OWNERS, RESTARTED_AT, RESTARTED_FOR, ca_bundle_fields, inputs_digest, load_manifest, manifest_flags,
    read_restart_marker, replaced_start,
)
from reconciler.shell.nodes import NODE_PARALLELISM, REMOTE_NODE_PARALLELISM, NodeFiles, close_nodes
from reconciler.shell.statestore import StateStore
from reconciler.shell.workloads import observe_workloads



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

    def for_authority(self, name: str) -> "ClusterAccess":
        """The same connections, for another authority of the cluster."""
        return self if name == self.layout.name else dataclasses.replace(self, layout=AUTHORITIES[name])

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


def _kubeconfig_leaves(raw: bytes, source: str, site: CredentialSite,
                       scope: kubeconfig.Scope = kubeconfig.EVERYTHING) -> list[ObservedLeaf]:
    """One leaf per embedded credential; a site names its user only where there are several."""
    leaves = []
    credentials = kubeconfig.embedded_credentials(_kubeconfig(raw, source), scope, source=source)
    for user, cert_pem, key_pem in credentials:
        cert = _certs(cert_pem, f"{source} user {user}")[0]
        matches = key_pem is not None and pki.key_pem_matches_cert(
            key_pem, cert, source=f"{source} user {user}")
        leaves.append(ObservedLeaf(site=site if len(credentials) == 1 else site.model_copy(update={"user": user}),
                                   cert=cert, key_matches=matches))
    return leaves


def _observe_node(access: ClusterAccess, name: str, role: str) -> tuple[list, list, list, ObservedRecord | None,
                                                                            list]:
    # In one batch: over SSH, the files this node's last observation read (the first time,
    # its bundles and leaves) are read ahead together, a few round trips for the node
    # instead of several per file.
    with access.nodes[name].batch(site_files(access.layout, role)):
        return _observe_node_files(access, name, role)


def site_files(layout: AuthorityLayout, role: str) -> list[str]:
    """The files an observation of a node of ``role`` reads, in the order read: its bundles
    and leaves; on a control plane the CA of record, the signer's files, the components'
    manifests and inputs; the restart markers of node services."""
    paths = [site.path for site in layout.bundles if role in site.roles]
    for site in layout.leaves:
        if role in site.roles:
            paths += pair_files(site.path) if site.form == "pair" else [site.path]
    if role == "control-plane":
        paths += [layout.record_cert, layout.record_key, layout.signer_cert, layout.signer_key]
        for component in layout.components:
            paths += [manifest_path(component.name), *component.inputs]
    for service in layout.node_services:
        if role in service.roles:
            paths += [service.marker, *service.inputs]
    return list(dict.fromkeys(paths))


def _observe_node_files(access: ClusterAccess, name: str, role: str
                        ) -> tuple[list, list, list, ObservedRecord | None, list]:
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
        bundles.append(ObservedBundle(NodeFile(node=name, path=site.path, form=site.form), certs))
    for site in layout.leaves:
        if role not in site.roles:
            continue
        source = f"{where} {site.path}"
        at = NodeFile(node=name, path=site.path, form=site.form)
        if site.form == "pair":
            cert_file, key_file = pair_files(site.path)
            cert_raw, key_raw = files.read(cert_file), files.read(key_file)
            if cert_raw is None:
                continue
            cert = _certs(cert_raw, f"{where} {cert_file}")[0]
            matches = key_raw is not None and pki.key_pem_matches_cert(
                key_raw, cert, source=f"{where} {key_file}")
            leaves.append(ObservedLeaf(at, cert, matches))
        elif site.form == "combined":
            raw = files.read(site.path)
            if raw is None:
                continue
            cert = _certs(raw, source)[0]
            matches = b"PRIVATE KEY-----" in raw and pki.key_pem_matches_cert(raw, cert, source=source)
            leaves.append(ObservedLeaf(at, cert, matches))
        else:
            raw = files.read(site.path)
            if raw is not None:
                leaves += _kubeconfig_leaves(raw, source, at)
    record = None
    if role == "control-plane":
        record = observe_record(files, layout, name)
        for component in layout.components:
            manifest = load_manifest(files, component.name)
            if manifest is None:
                continue
            annotations = (manifest.get("metadata") or {}).get("annotations") or {}
            flags = manifest_flags(manifest)
            signer = layout.signer if component.signs else None
            signer_cert = flags.get(signer.cert_flag) if signer else None
            components.append(ObservedComponent(
                id=f"{name}:{component.name}", node=name, name=component.name, inputs=component.inputs,
                inputs_digest=inputs_digest(files, component.inputs),
                restarted_for=annotations.get(RESTARTED_FOR),
                restarted_at=parse_time(annotations.get(RESTARTED_AT)),
                replaced_start=replaced_start(annotations),
                signer_cert=signer_cert, signer_key=flags.get(signer.key_flag) if signer else None,
                signing=None if signer is None else "record" if signer_cert == layout.record_cert else "signer",
                outage_when_alone=component.outage_when_alone,
            ))
        server = ENDPOINTS[layout.endpoints](files) if layout.endpoints else None
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
                lease_renewed_at_restart=marker.lease_renew_time, server_time_at_restart=marker.server_time,
            ))
    return bundles, leaves, components, record, endpoints


def apiserver_server(files: NodeFiles, component: str = "kube-apiserver") -> str | None:
    """The URL of the apiserver (or aggregated apiserver) a node runs, from its static-pod manifest."""
    manifest = load_manifest(files, component)
    if manifest is None:
        return None
    flags = manifest_flags(manifest)
    address = flags.get("--advertise-address") or flags.get("--bind-address") or "127.0.0.1"
    return f"https://{address}:{flags.get('--secure-port', '6443')}"


def etcd_server(files: NodeFiles, component: str = "etcd") -> str | None:
    """The client URL of the etcd member a node runs, from its static-pod manifest."""
    manifest = load_manifest(files, component)
    if manifest is None:
        return None
    urls = manifest_flags(manifest).get("--advertise-client-urls", "")
    return urls.split(",")[0] or None


# Where a layout's endpoints are, by kind: the URL of the server a node runs.
ENDPOINTS = {"apiserver": apiserver_server, "etcd": etcd_server}
# Where a component's instance answers its readiness check, by the readiness its layout declares.
_INSTANCE_SERVERS = {"etcd-member": etcd_server, "apiserver-readyz": apiserver_server}


def instance_server(files: NodeFiles, component: StaticPodComponent) -> str | None:
    """The URL of a node's instance of ``component``, from its own static-pod manifest."""
    return _INSTANCE_SERVERS[component.readiness](files, component.name)


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


def read_record(files: NodeFiles, layout: AuthorityLayout, *, to_sign: bool = True
                ) -> tuple[pki.PrivateKey, x509.Certificate | None]:
    """A control-plane node's CA key, and the certificate in its CA file that the key
    belongs to (None when it matches none of them). ``to_sign`` False, for a key only
    compared and measured, skips the checks a key to sign with gets (about 35 ms an RSA
    key; observation runs them at every phase check's poll otherwise)."""
    where = files.describe()
    cert_raw, key_raw = files.read(layout.record_cert), files.read(layout.record_key)
    if cert_raw is None or key_raw is None:
        missing = layout.record_cert if cert_raw is None else layout.record_key
        raise NodeUnreachableError(f"{where}: {missing} is missing; a control-plane node holds the CA of record")
    key = pki.load_private_key(key_raw, source=f"{where} {layout.record_key}", validate=to_sign)
    certs = _certs(cert_raw, f"{where} {layout.record_cert}")
    return key, next((cert for cert in certs if pki.key_matches_cert(key, cert)), None)


def observe_record(files: NodeFiles, layout: AuthorityLayout, node: str) -> ObservedRecord:
    where = files.describe()
    key, record = read_record(files, layout, to_sign=False)
    signer, signer_matches = None, False
    signer_raw, signer_key_raw = files.read(layout.signer_cert), files.read(layout.signer_key)
    if signer_raw is not None:
        signer = _certs(signer_raw, f"{where} {layout.signer_cert}")[0]
        signer_matches = signer_key_raw is not None and pki.key_pem_matches_cert(
            signer_key_raw, signer, source=f"{where} {layout.signer_key}")
    return ObservedRecord(node=node, cert=record, key_spec=str(pki.key_spec_of(key)), signer=signer,
                          signer_key_matches=signer_matches)


def observe_api_sites(client: KubeClient, sites: tuple[ApiField, ...]) -> list[ObservedBundle]:
    """The fields of the cluster's own objects that trust the authority (cluster-info, which
    careconcile writes; the apiserver's published client CAs, which careconcile only
    distrusts from). An object or a field that is not there is not a consumer."""
    bundles = []
    for site in sites:
        try:
            item = client.get(site.object_path)
        except APINotFoundError:
            continue
        value = (item.get("data") or {}).get(site.field)
        if value is None:
            continue
        source = f"ConfigMap {site.namespace}/{site.name} {site.field}"
        raw = value.encode()
        certs = _kubeconfig_bundle(raw, source) if site.form == "kubeconfig" else _certs(raw, source)
        bundles.append(ObservedBundle(site, certs))
    return bundles


def observe_root_ca_configmaps(client: KubeClient) -> list[ObservedBundle]:
    """kube-root-ca.crt in every namespace: the controller-manager writes them from its
    --root-ca-file, so careconcile checks them and never writes one."""
    bundles = []
    for configmap in client.list("/api/v1/configmaps", field_selector="metadata.name=kube-root-ca.crt"):
        namespace = configmap["metadata"]["namespace"]
        pem = ((configmap.get("data") or {}).get("ca.crt") or "").encode()
        site = ApiField(resource="configmap", namespace=namespace, name="kube-root-ca.crt", field="ca.crt", form="pem",
                        published_by="controller-manager")
        bundles.append(ObservedBundle(site, _certs(pem, f"ConfigMap {namespace}/kube-root-ca.crt"), managed=False))
    return bundles


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
                site = ApiField(resource=kind, name=name, field=suffix, form="ca-bundle")
                try:
                    certs = _certs(base64.b64decode(data), f"{site.label} caBundle")
                except (PKIError, ValueError):
                    continue  # not ours to judge: it cannot hold one of our CAs in a readable form
                ours = tuple(cert for cert in certs if pki.fingerprint(cert) in authority_cas)
                if ours:
                    bundles.append(ObservedBundle(site, ours))
    return bundles


def observe_management(access: ClusterAccess) -> tuple[list[ObservedRecord], list[ObservedBundle],
                                                       list[ObservedLeaf]]:
    """Admin mode: the Secret <name>-ca, a CA of record beside the control-plane nodes' files,
    and the Secret <name>-kubeconfig, a bundle and a leaf like any kubeconfig (it holds this
    cluster alone, so all of its entries count). Both must exist."""
    management, layout = access.management, access.layout
    records, bundles, leaves = [], [], []
    secret_name = management.names.authority_secret(layout.management_secret or "")
    if layout.management_secret is not None and (layout.management_secret_required
                                                 or management.has_secret(secret_name)):
        certs, key = management.read_authority(layout.management_secret)
        secret = ManagementSecret(namespace=management.namespace,
                                  name=management.names.authority_secret(layout.management_secret), holds="authority")
        records.append(ObservedRecord(node=secret.label, kind="secret", key_spec=str(pki.key_spec_of(key)),
                                      cert=next((cert for cert in certs if pki.key_matches_cert(key, cert)), None),
                                      secret=secret))
    if layout.management_kubeconfig:
        raw = management.read_kubeconfig().encode()
        source = management.kubeconfig_source
        site = ManagementSecret(namespace=management.namespace, name=management.names.kubeconfig_secret,
                                holds="kubeconfig")
        references = kubeconfig.file_references(_kubeconfig(raw, source))
        if references:
            raise PKIError(f"{source}: {'; '.join(references)}: a kubeconfig in a Secret must embed its certificates")
        bundles.append(ObservedBundle(site, _kubeconfig_bundle(raw, source)))
        leaves += _kubeconfig_leaves(raw, source, site)
    return records, bundles, leaves


NodeObservations = list[tuple[list, list, list, "ObservedRecord | None", list]]


def observe_nodes(access: ClusterAccess) -> NodeObservations:
    """What every node's files hold, in the nodes' order: the part of :func:`observe` that
    reads node files."""
    # Nodes are read several at once (over SSH mostly waiting); results keep the nodes' order.
    remote = any(files.remote for files in access.nodes.values())
    return map_bounded(lambda node: _observe_node(access, *node), access.roles.items(),
                       REMOTE_NODE_PARALLELISM if remote else NODE_PARALLELISM)


def observe(access: ClusterAccess, state: StoredState | None = None, *,
            with_workloads: bool = True, nodes: NodeObservations | None = None) -> ClusterObservation:
    """``with_workloads`` False leaves the pods out (the checks that need no pods).
    ``nodes``: what :func:`observe_nodes` returned a moment ago, instead of reading the
    node files again; what each endpoint presents is asked again all the same (an
    apiserver loads a new serving certificate by itself)."""
    bundles, leaves, components, records, endpoints = [], [], [], [], []
    for node_bundles, node_leaves, node_components, record, node_endpoints in (
            observe_nodes(access) if nodes is None else nodes):
        bundles += node_bundles
        leaves += node_leaves
        components += node_components
        endpoints += node_endpoints if nodes is None else [
            dataclasses.replace(endpoint, presented=probes.presented_certificate(endpoint.server))
            for endpoint in node_endpoints]
        if record is not None:
            records.append(record)
    # The kubeconfig careconcile itself uses is a consumer like any other (a pod's
    # ServiceAccount CA is the kube-root-ca.crt ConfigMap, observed with the API objects).
    path = access.kubeconfig_path
    if path is not None and access.layout.local_kubeconfigs:
        raw = path.read_bytes()
        # Named as the spec writes it (relative to the spec's directory, or '~/...'), so that a
        # plan made in one checkout is the plan of another: apply derives the same site there.
        site = LocalKubeconfig(path=access.cluster.kubeconfig or str(path))
        scope = local_kubeconfig_scope(access, raw)
        bundles.append(ObservedBundle(site, _kubeconfig_bundle(raw, str(path), scope)))
        leaves += _kubeconfig_leaves(raw, str(path), site, scope=scope)
    if access.management is not None:  # admin mode: the CA of record and the kubeconfig Secrets
        management_records, management_bundles, management_leaves = observe_management(access)
        records += management_records
        bundles += management_bundles
        leaves += management_leaves
    # The public record only: observing (plan, drift) needs no right to read a CA key.
    state = state or access.store.load_state(access.layout.name)
    layout = access.layout
    bundles += observe_api_sites(access.client, layout.api_sites)
    if layout.root_ca_configmaps:
        bundles += observe_root_ca_configmaps(access.client)
    if layout.ca_bundles:
        authority_cas = {pki.fingerprint(cert) for cert in
                         [r.cert for r in records] + [state.target, state.previous] if cert is not None}
        authority_cas |= set(state.retired)
        bundles += observe_ca_bundles(access.client, authority_cas)
    workspace_leaf = None
    workspace_path = access.workspace_kubeconfig
    if layout.local_kubeconfigs and workspace_path.is_file():
        # The kubeconfig an earlier rotation wrote is a consumer like the spec's own.
        raw = workspace_path.read_bytes()
        site = LocalKubeconfig(path=str(workspace_path))
        found = _kubeconfig_leaves(raw, str(workspace_path), site)
        bundles.append(ObservedBundle(site, _kubeconfig_bundle(raw, str(workspace_path))))
        leaves += found
        workspace_leaf = found[0] if found else None
    workloads = ()
    if access.layout.pods_trust and with_workloads:
        workloads = observe_workloads(access.client, access.workloads.selector)
    return ClusterObservation(
        workloads=workloads,
        cluster=access.name, authority=access.layout.name, records=tuple(records), bundles=tuple(bundles),
        leaves=tuple(leaves), components=tuple(components), endpoints=tuple(endpoints), state=state,
        workspace_kubeconfig=workspace_leaf,
        workspace_kubeconfig_path=str(workspace_path) if layout.local_kubeconfigs else "",
        node_names=tuple(access.roles), has_signer=layout.signer is not None,
    )

