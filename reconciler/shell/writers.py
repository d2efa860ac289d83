"""The writers: one per kind of site, for the trust a site holds (``update-bundle``), the
credentials it holds (``reissue``), the CA files a node signs from and the admin
kubeconfig careconcile writes.

A writer takes its site as typed data (a node file and its form, an API object's field, a
Secret of the management cluster); it never tells what to write from the shape of an id.
"""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Callable

from cryptography import x509

from reconciler._files import atomic_write
from reconciler._time import utcnow
from reconciler.core import kubeadm, kubeconfig, pki
from reconciler.core.authorities import SIGNER_DIR
from reconciler.core.kubeconfig import ClientCredentials
from reconciler.core.observed import fp
from reconciler.core.pki import KeyPair, LeafRequest
from reconciler.core.plan import Action
from reconciler.core.sites import ApiField, LocalKubeconfig, ManagementSecret, NodeFile, NodeSigner, pair_files
from reconciler.core.spec import ResolvedAuthority
from reconciler.errors import APIConflictError, RotationError
from reconciler.shell import polling
from reconciler.shell.custody import Custody
from reconciler.shell.formats import ca_bundle_fields, set_ca_bundle
from reconciler.shell.management import SecretKubeconfigClient
from reconciler.shell.observe import ClusterAccess, local_kubeconfig_scope

# How often a read-change-replace of an API object is tried when others write it too.
REPLACE_ATTEMPTS = 5

_LOCAL_FILE_LOCKS: dict[Path, threading.Lock] = {}
_LOCAL_FILE_LOCKS_GUARD = threading.Lock()


def _local_file_lock(path: Path) -> threading.Lock:
    """One lock per file on this machine, for the executors of a wave's clusters (threads)."""
    with _LOCAL_FILE_LOCKS_GUARD:
        return _LOCAL_FILE_LOCKS.setdefault(path, threading.Lock())


Fresh = Callable[[x509.Certificate], KeyPair]


class SiteWriters:
    def __init__(self, access: ClusterAccess, custody: Custody, desired: ResolvedAuthority, *,
                 heartbeat: Callable[[], None], phase_timeout: float,
                 accepting: Callable[[list[str]], list[str]]) -> None:
        self.access = access
        self.custody = custody
        self.desired = desired
        self.heartbeat = heartbeat
        self.phase_timeout = phase_timeout
        # The apiservers that still accept a client certificate from one of these CAs.
        self.accepting = accepting
        self._trust = {"node-file": self._trust_node_file, "local-kubeconfig": self._trust_local_kubeconfig,
                       "api-field": self._trust_api_field, "management-secret": self._trust_management_secret}
        self._credentials = {"node-file": self._credentials_node_file,
                             "local-kubeconfig": self._credentials_local_kubeconfig,
                             "management-secret": self._credentials_management_secret}

    # --- trust (update-bundle) -----------------------------------------------------------

    def update_bundle(self, action: Action) -> None:
        certs = [self.custody.cert(value) for value in action.change.after]
        self._trust[action.site.kind](action.site, certs, action)

    def _trust_node_file(self, site: NodeFile, certs: list[x509.Certificate], action: Action) -> None:
        pem = pki.bundle_pem(certs)
        if site.form == "pem":
            files = self.access.nodes[site.node]
            files.write(site.path, pem, kubeadm.PUBLIC, keep_mode=True)
        else:
            self._rewrite_node_kubeconfig(site, lambda doc: kubeconfig.with_ca(doc, pem))

    def _trust_local_kubeconfig(self, site: LocalKubeconfig, certs: list[x509.Certificate], action: Action) -> None:
        pem = pki.bundle_pem(certs)
        scope = self._local_scope(site.path)
        self._rewrite_kubeconfig_file(self._local_path(site.path), lambda doc: kubeconfig.with_ca(doc, pem, scope))

    def _trust_management_secret(self, site: ManagementSecret, certs: list[x509.Certificate], action: Action) -> None:
        pem = pki.bundle_pem(certs)
        self._rewrite_kubeconfig_secret(lambda doc: kubeconfig.with_ca(doc, pem))

    def _trust_api_field(self, site: ApiField, certs: list[x509.Certificate], action: Action) -> None:
        if site.form == "ca-bundle":
            self._update_ca_bundle(site, certs, action)
            return
        pem = pki.bundle_pem(certs)
        if site.published_by == "apiserver":
            self._wait_until_no_apiserver_accepts(
                [value for value in action.change.before if value not in set(action.change.after)])

        def change(data: dict) -> None:
            if site.form == "kubeconfig":
                document = kubeconfig.parse(data[site.field], source=f"ConfigMap {site.namespace}/{site.name}")
                data[site.field] = kubeconfig.dump(kubeconfig.with_ca(document, pem))
            else:
                data[site.field] = pem.decode()
        self._replace(site, lambda item: change(item.setdefault("data", {})))

    def _wait_until_no_apiserver_accepts(self, dropped: list[str]) -> None:
        """Once no apiserver accepts the CA being removed any more, none adds it back to what
        it publishes, so wait for that before writing."""
        if not dropped:
            return
        deadline = time.monotonic() + self.phase_timeout
        pauses = polling.intervals()
        while True:
            self.heartbeat()
            accepting = self.accepting(dropped)
            if not accepting:
                return
            if time.monotonic() > deadline:
                raise RotationError(f"apiservers {', '.join(accepting)} still accept client certificates from "
                                    f"{', '.join(dropped)} after {self.phase_timeout:.0f}s")
            time.sleep(next(pauses))

    def _update_ca_bundle(self, site: ApiField, certs: list[x509.Certificate], action: Action) -> None:
        """Replace the authority's certificates in one caBundle field, keeping the others."""
        authority = set(action.change.before) | {fp(cert) for cert in certs}

        def change(item: dict) -> None:
            fields = dict(ca_bundle_fields(site.resource, item))
            current = pki.load_certificates(base64.b64decode(fields.get(site.field, "")),
                                            source=f"{site.label} caBundle")
            kept = [cert for cert in current if fp(cert) not in authority]
            set_ca_bundle(site.resource, item, site.field, base64.b64encode(pki.bundle_pem(certs + kept)).decode())
        self._replace(site, change)

    def _replace(self, site: ApiField, change: Callable[[dict], None]) -> None:
        """Read, change, replace with the resourceVersion read; again if someone wrote in between."""
        client = self.access.client
        for _ in range(REPLACE_ATTEMPTS):
            item = client.get(site.object_path)
            change(item)
            try:
                client.replace(site.object_path, item)
                return
            except APIConflictError:
                continue
        raise RotationError(f"{site.label} kept changing while being updated")

    # --- credentials (reissue) -----------------------------------------------------------

    def reissue(self, action: Action) -> None:
        ca = self.custody.pair(action.change.after[0])
        now = utcnow()

        def fresh(template: x509.Certificate) -> KeyPair:
            return pki.reissue(template, ca, key=self.desired.key, validity=self.desired.leaf_validity, now=now)
        self._credentials[action.site.kind](action.site, fresh)

    def _credentials_node_file(self, site: NodeFile, fresh: Fresh) -> None:
        files = self.access.nodes[site.node]
        where = f"{files.describe()} {site.path}"
        if site.form == "kubeconfig":
            self._rewrite_node_kubeconfig(site, lambda doc: _reissued_kubeconfig(doc, site, fresh))
        elif site.form == "combined":
            combined = files.read(site.path)
            if combined is None:
                raise RotationError(f"{where} disappeared")
            pair = fresh(pki.load_certificates(combined, source=where)[0])
            files.write(site.path, pair.cert_pem + pair.key_pem, kubeadm.PRIVATE)
        else:
            cert_file, key_file = pair_files(site.path)
            cert_raw = files.read(cert_file)
            if cert_raw is None:
                raise RotationError(f"{files.describe()} {cert_file} disappeared")
            pair = fresh(pki.load_certificates(cert_raw, source=f"{files.describe()} {cert_file}")[0])
            # Key before certificate: a component that reloads in between keeps what it has.
            files.write(key_file, pair.key_pem, kubeadm.PRIVATE)
            files.write(cert_file, pair.cert_pem, kubeadm.PUBLIC)

    def _credentials_local_kubeconfig(self, site: LocalKubeconfig, fresh: Fresh) -> None:
        scope = self._local_scope(site.path)
        self._rewrite_kubeconfig_file(self._local_path(site.path),
                                      lambda doc: _reissued_kubeconfig(doc, site, fresh, scope))

    def _credentials_management_secret(self, site: ManagementSecret, fresh: Fresh) -> None:
        self._rewrite_kubeconfig_secret(lambda doc: _reissued_kubeconfig(doc, site, fresh))

    # --- kubeconfigs -----------------------------------------------------------------------

    def _rewrite_node_kubeconfig(self, site: NodeFile, change: Callable[[dict], dict]) -> None:
        files = self.access.nodes[site.node]
        raw = files.read(site.path)
        if raw is None:
            raise RotationError(f"{files.describe()}: {site.path} disappeared")
        document = kubeconfig.parse(raw.decode(), source=f"{files.describe()} {site.path}")
        files.write(site.path, kubeconfig.dump(change(document)).encode(), kubeadm.PRIVATE, keep_mode=True)

    def _is_spec_kubeconfig(self, path: str) -> bool:
        """A local kubeconfig site names the spec's kubeconfig as the spec writes it (see
        observe.py); any other is the one careconcile writes in the workspace."""
        return self.access.kubeconfig_path is not None and path == self.access.cluster.kubeconfig

    def _local_path(self, path: str) -> str:
        return str(self.access.kubeconfig_path) if self._is_spec_kubeconfig(path) else path

    def _rewrite_kubeconfig_file(self, path: str, change: Callable[[dict], dict]) -> None:
        """Rewrite a kubeconfig on this machine in place: through a symlink to its target,
        with its owner and mode kept, so that its user can still read it."""
        target = Path(path).resolve()
        try:
            # Clusters of one wave may share this file (one kubeconfig, a context each): their
            # read-change-write must not interleave, or one cluster's change is lost.
            with _local_file_lock(target):
                document = kubeconfig.parse(target.read_text(), source=str(target))
                status = target.stat()
                atomic_write(target, kubeconfig.dump(change(document)).encode(), status.st_mode & 0o777,
                             owner=(status.st_uid, status.st_gid))
        except OSError as exc:
            raise RotationError(f"kubeconfig {path}: cannot rewrite it: {exc.strerror or exc}") from exc

    def _rewrite_kubeconfig_secret(self, change: Callable[[dict], dict]) -> None:
        """Rewrite the kubeconfig Secret of admin mode; careconcile's own client of the
        cluster, when it uses that Secret, follows it at once."""
        self.access.management.rewrite_kubeconfig(change)
        if isinstance(self.access.client, SecretKubeconfigClient):
            self.access.client.reload()

    def _local_scope(self, path: str | None = None) -> kubeconfig.Scope:
        """Which entries of a local kubeconfig are this cluster's: the spec's kubeconfig may
        reach other clusters too; the one careconcile wrote holds only this one."""
        if self.access.kubeconfig_path is None or (path is not None and not self._is_spec_kubeconfig(path)):
            return kubeconfig.EVERYTHING
        return local_kubeconfig_scope(self.access, self.access.kubeconfig_path.read_bytes())

    def write_kubeconfig(self, action: Action) -> None:
        ca = self.custody.pair(action.change.after[0])
        identity = self.access.layout.admin_identity
        admin = pki.issue_leaf(ca, LeafRequest(identity.user, organizations=identity.groups,
                                               client=True, key=self.desired.key,
                                               validity=self.desired.leaf_validity), now=utcnow())
        if self.access.kubeconfig_path is None:  # inCluster: true; the server careconcile reached it by
            target = self.access.client.target
            endpoints = [kubeconfig.Endpoint(self.access.name, target.server, target.tls_server_name, target.proxy_url)]
        else:
            source = kubeconfig.parse(self.access.kubeconfig_path.read_text(), source=str(self.access.kubeconfig_path))
            scope = self._local_scope()
            endpoints = [endpoint for endpoint in kubeconfig.servers(source)
                         if scope.clusters is None or endpoint.name in scope.clusters]
        document = kubeconfig.build(endpoints=endpoints, ca_pem=ca.cert_pem, user=identity.user,
                                    credentials=ClientCredentials(cert_pem=admin.cert_pem, key_pem=admin.key_pem))
        atomic_write(Path(action.path), kubeconfig.dump(document).encode(), kubeadm.PRIVATE)

    # --- the CA files a node signs from ------------------------------------------------------

    def stage_signer(self, action: Action) -> None:
        assert isinstance(action.site, NodeSigner)
        self._write_signer(action.site, self.custody.pair(action.change.after[0]), record_key=False)

    def switch_signer(self, action: Action) -> None:
        pair = self.custody.pair(action.change.after[0])
        if isinstance(action.site, ManagementSecret):
            # Admin mode: the management cluster's CA of record, <name>-ca, holds the CA alone.
            self.access.management.write_authority(self.access.layout.management_secret, pair)
            return
        self._write_signer(action.site, pair, record_key=True)

    def _write_signer(self, site: NodeSigner, pair: KeyPair, *, record_key: bool) -> None:
        files = self.access.nodes[site.node]
        layout = self.access.layout
        # Key before certificate: a controller-manager that reloads in between sees a
        # mismatched pair, keeps signing with what it has, and reloads again.
        if layout.signer is not None:  # else the record's key is all that names the CA
            files.write(layout.signer_key, pair.key_pem, kubeadm.PRIVATE)
            files.write(layout.signer_cert, pair.cert_pem, kubeadm.PUBLIC)
        if record_key:
            files.write(layout.record_key, pair.key_pem, kubeadm.PRIVATE)
            self.custody.forget_record()

    def remove_signer(self, action: Action) -> None:
        files = self.access.nodes[action.site.node]
        files.remove(self.access.layout.signer_cert)
        files.remove(self.access.layout.signer_key)
        files.remove_directory(SIGNER_DIR)


def _reissued_kubeconfig(document: dict, site: NodeFile | LocalKubeconfig | ManagementSecret, fresh: Fresh,
                         scope: kubeconfig.Scope = kubeconfig.EVERYTHING) -> dict:
    """The kubeconfig with fresh credentials for the site's user (every embedded one when
    the site names none: the file holds one)."""
    for user, cert_pem, _ in kubeconfig.embedded_credentials(document, scope):
        if site.user is None or user == site.user:
            pair = fresh(pki.load_certificates(cert_pem, source=f"{site.label} user {user}")[0])
            document = kubeconfig.with_credentials(document, user, pair.cert_pem, pair.key_pem)
    return document
