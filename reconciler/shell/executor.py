"""Carrying out a cluster's plan, one action at a time, against the live cluster.

Each action is idempotent and leaves the cluster in a state that planning reads back:
files are replaced atomically, a pair's key is written before its certificate, the new
CA is stored before anything uses it. A run killed between two actions therefore loses
nothing; planning again yields the remaining actions.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cryptography import x509

from reconciler._files import atomic_write
from reconciler._time import micro_time, parse_time, utcnow
from reconciler.core import kubeadm, kubeconfig, pki
from reconciler.core.authorities import SIGNER_DIR, NodeServiceComponent, manifest_path
from reconciler.core.kubeconfig import ClientCredentials
from reconciler.core.observed import (
    NEW_CA, RETIRED_KEPT, ClusterObservation, ObservedComponent, StoredState, fp, short,
)
from reconciler.core.pki import KeyPair, LeafRequest
from reconciler.core.plan import PHASES, Action, ClusterPlan
from reconciler.core.diff import workload_decisions
from reconciler.core.spec import ResolvedAuthority
from reconciler.core.workloads import trusted_since
from reconciler.errors import (
    APIConflictError, APIError, CareconcileError, ClusterUnreachableError, PKIError, RotationError, StalePlanError,
)
from reconciler.shell import probes
from reconciler.shell.kube import KubeClient, load_kubeconfig
from reconciler.shell.management import SecretKubeconfigClient
from reconciler.shell.observe import (
    CA_BUNDLE_OWNERS, CLUSTER_INFO, EXTENSION_AUTH, EXTENSION_AUTH_ID, RESTARTED_AT, RESTARTED_FOR, ClusterAccess,
    apiserver_servers, ca_bundle_fields, inputs_digest, load_manifest, local_kubeconfig_scope, observe, read_record,
    restart_marker,
)
from reconciler.shell.restarts import Stopped, WorkloadRestarter, seconds_until
from reconciler.shell.statestore import Stored, StoredKeys, with_state

# Test hook: SIGKILL this process after it completes this many actions. Unset, nothing
# differs; the crash-and-resume tests set it to kill a run at every action boundary.
CRASH_AFTER_ENV = "CARECONCILE_TEST_CRASH_AFTER_ACTIONS"
PROBE_USER = "careconcile:probe"
NODE_LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
# How long a node's restart command (systemctl restart kubelet) may take.
RESTART_COMMAND_TIMEOUT = 120.0


@dataclass
class ActionReport:
    action: Action
    seconds: float


@dataclass
class RunReport:
    cluster: str
    done: list[ActionReport] = field(default_factory=list)
    phase_seconds: dict[int, float] = field(default_factory=dict)
    stopped_after_phase: int | None = None


class Executor:
    def __init__(self, access: ClusterAccess, desired: ResolvedAuthority, *,
                 on_event: Callable[[str, Action, dict[str, Any]], None],
                 heartbeat: Callable[[], None] = lambda: None, phase_timeout: float = 300.0) -> None:
        self.access = access
        self.desired = desired
        self.on_event = on_event
        self.heartbeat = heartbeat
        self.phase_timeout = phase_timeout
        self._stored_cache: Stored | None = None
        self._record_cache: KeyPair | None = None
        crash_after = os.environ.get(CRASH_AFTER_ENV)
        self._crash_after = int(crash_after) if crash_after else None
        self._completed = 0
        # Workload restarts run in threads: their events and lock renewals are serialised.
        self._events = threading.RLock()
        on_event_unlocked, heartbeat_unlocked = on_event, heartbeat

        def locked_event(kind: str, action: Action, details: dict[str, Any]) -> None:
            with self._events:
                on_event_unlocked(kind, action, details)

        def locked_heartbeat() -> None:
            with self._events:
                heartbeat_unlocked()
        self.on_event, self.heartbeat = locked_event, locked_heartbeat

    # --- the run -------------------------------------------------------------------------

    def run(self, plan: ClusterPlan, *, until: int | None = None) -> RunReport:
        report = RunReport(plan.cluster)
        actions = [action for action in plan.actions if until is None or action.phase <= until]
        if len(actions) < len(plan.actions):
            report.stopped_after_phase = until
        index = 0
        while index < len(actions):
            if actions[index].phase == 3 and (index == 0 or actions[index - 1].phase < 3):
                self._check_restarts_planned(actions)
            if actions[index].kind == "restart-workload":  # a run of them, several at once
                group = list(itertools.takewhile(lambda a: a.kind == "restart-workload", actions[index:]))
                self._restart_workloads(group, report)
                index += len(group)
                continue
            self._run_one(actions[index], report)
            index += 1
        return report

    def _run_one(self, action: Action, report: RunReport,
                 dispatch: Callable[[Action], None] | None = None) -> None:
        self.heartbeat()
        self.on_event("start", action, {})
        started = time.monotonic()
        try:
            (dispatch or self._dispatch)(action)
        except CareconcileError as exc:
            self.on_event("failed", action, {"error": str(exc)})
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Something on a node or in an object is not as observed a moment ago.
            error = RotationError(f"action {action.id} failed: {type(exc).__name__}: {exc}",
                                  hint="nothing after this action ran; plan again to see the state")
            self.on_event("failed", action, {"error": str(error)})
            raise error from exc
        seconds = time.monotonic() - started
        with self._events:  # one at a time, so that the crash hook kills after exactly its count
            report.done.append(ActionReport(action, seconds))
            report.phase_seconds[action.phase] = report.phase_seconds.get(action.phase, 0.0) + seconds
            self._completed += 1
            self.on_event("done", action, {"seconds": seconds})
            if self._crash_after is not None and self._completed >= self._crash_after:
                os.kill(os.getpid(), signal.SIGKILL)

    def _dispatch(self, action: Action) -> None:
        handler = getattr(self, "_" + action.kind.replace("-", "_"))
        handler(action)

    # --- what the CAs are ---------------------------------------------------------------

    def _stored(self) -> Stored:
        """The state store's content. This run holds the lock, so only it writes the store:
        read once, then kept in step by :meth:`_save`."""
        if self._stored_cache is None:
            self._stored_cache = self.access.store.load(self.access.layout.name)
        return self._stored_cache

    def _save(self, stored: Stored) -> None:
        self.access.store.save(self.access.layout.name, stored)
        self._stored_cache = stored

    def _record_pair(self) -> KeyPair:
        if self._record_cache is None:
            self._record_cache = self._read_record_pair()
        return self._record_cache

    def _read_record_pair(self) -> KeyPair:
        """The CA of record with its key, read from the first control-plane node."""
        files = self.access.nodes[self.access.control_planes()[0]]
        layout = self.access.layout
        key, cert = read_record(files, layout)
        if cert is None:
            raise PKIError(f"{files.describe()}: {layout.record_key} matches no certificate in {layout.record_cert}")
        return KeyPair(cert, key)

    def _pair(self, fingerprint: str) -> KeyPair:
        """The CA with this fingerprint (or the new CA) and its key."""
        keys = self._stored().keys
        if fingerprint == NEW_CA:
            if keys.target is None:
                raise RotationError(f"cluster {self.access.name}: the new CA is not in the state store "
                                    f"({self.access.store.describe()}); run phase 1 first")
            return keys.target
        for pair in (keys.target, keys.previous):
            if pair is not None and fp(pair.cert) == fingerprint:
                return pair
        record = self._record_pair()
        if fp(record.cert) == fingerprint:
            return record
        raise RotationError(f"cluster {self.access.name}: no key for CA {fingerprint} in the state store "
                            f"or on the control-plane nodes")

    def _cert(self, fingerprint: str) -> x509.Certificate:
        return self._pair(fingerprint).cert

    # --- phase 1 -------------------------------------------------------------------------

    def _create_ca(self, action: Action) -> None:
        stored = self._stored()
        if stored.state.in_progress:
            raise RotationError(f"cluster {self.access.name}: a rotation is already in progress in "
                                f"{self.access.store.describe()}; plan again to resume it")
        previous = self._record_pair()
        desired = self.desired
        new = pki.new_ca(desired.common_name, now=utcnow(), key=desired.key, validity=desired.validity,
                         organizations=desired.organizations)
        state = stored.state
        self._save(Stored(
            StoredState(applied_rotation=state.applied_rotation, rotation=int(action.params["rotation"]),
                        target=new.cert, previous=previous.cert, has_target_key=True, has_previous_key=True,
                        verified_phase=1, rolled_back_rotation=state.rolled_back_rotation,
                        started=utcnow().isoformat(), retired=state.retired),
            StoredKeys(target=new, previous=previous)))

    def _rollback_target(self, action: Action) -> None:
        stored = self._stored()
        if stored.keys.previous is None or stored.keys.target is None:
            raise RotationError(f"cluster {self.access.name}: the state store holds no rotation to roll back")
        state = stored.state
        self._save(Stored(
            StoredState(applied_rotation=state.applied_rotation, rotation=state.rotation,
                        target=state.previous, previous=state.target, has_target_key=True, has_previous_key=True,
                        verified_phase=min(state.verified_phase, 2), rolling_back=True,
                        rolled_back_rotation=state.rolled_back_rotation, started=state.started,
                        retired=state.retired, workloads_trusted_since=state.workloads_trusted_since,
                        workloads_trusted_alone=state.workloads_trusted_alone),
            StoredKeys(target=stored.keys.previous, previous=stored.keys.target)))

    # --- files ---------------------------------------------------------------------------

    def _update_bundle(self, action: Action) -> None:
        certs = [self._cert(value) for value in action.change.after]
        pem = pki.bundle_pem(certs)
        target = action.target
        if "/" in target and target.split("/", 1)[0] in CA_BUNDLE_KINDS:
            self._update_ca_bundle(action, certs)
        elif target == EXTENSION_AUTH_ID:
            self._update_extension_auth(action, pem)
        elif target.startswith("configmap/"):
            self._update_cluster_info(pem)
        elif target.startswith("local:"):
            scope = self._local_scope(action.path)
            self._rewrite_kubeconfig_file(action.path, lambda doc: kubeconfig.with_ca(doc, pem, scope))
        elif target.startswith("secret/"):  # admin mode: <name>-kubeconfig in the management cluster
            self._rewrite_kubeconfig_secret(lambda doc: kubeconfig.with_ca(doc, pem))
        else:
            files = self.access.nodes[action.node]
            if action.path.endswith(".crt"):
                files.write(action.path, pem, files.mode(action.path) or kubeadm.PUBLIC)
            else:
                self._rewrite_node_kubeconfig(action.node, action.path, lambda doc: kubeconfig.with_ca(doc, pem))

    def _update_ca_bundle(self, action: Action, certs: list[x509.Certificate]) -> None:
        """Replace the authority's certificates in one caBundle field, keeping the others."""
        kind, rest = action.target.split("/", 1)
        name, _, suffix = rest.partition("/")
        path = f"{action.path}/{name}"
        authority = set(action.change.before) | {fp(cert) for cert in certs}
        client = self.access.client
        for _ in range(5):
            item = client.get(path)
            fields = dict(ca_bundle_fields(kind, item))
            current = pki.load_certificates(base64.b64decode(fields.get(f"/{suffix}" if suffix else "", "")),
                                            source=f"{action.target} caBundle")
            kept = [cert for cert in current if fp(cert) not in authority]
            bundle = base64.b64encode(pki.bundle_pem(certs + kept)).decode()
            _set_ca_bundle(kind, item, suffix, bundle)
            try:
                client.replace(path, item)  # carries the resourceVersion read
                return
            except APIConflictError:
                continue
        raise RotationError(f"{action.target} kept changing while being updated")

    def _update_cluster_info(self, pem: bytes) -> None:
        def trust(configmap: dict) -> None:
            data = configmap["data"]
            document = kubeconfig.parse(data["kubeconfig"], source="ConfigMap kube-public/cluster-info")
            data["kubeconfig"] = kubeconfig.dump(kubeconfig.with_ca(document, pem))
        self._replace_configmap(CLUSTER_INFO, "kube-public/cluster-info", trust)

    def _replace_configmap(self, path: str, name: str, change: Callable[[dict], None]) -> None:
        """Read, change, replace with the resourceVersion read; again if someone wrote in between."""
        client = self.access.client
        for _ in range(5):
            configmap = client.get(path)
            change(configmap)
            try:
                client.replace(path, configmap)
                return
            except APIConflictError:
                continue
        raise RotationError(f"ConfigMap {name} kept changing while being updated")

    def _update_extension_auth(self, action: Action, pem: bytes) -> None:
        """Only the client CAs in this ConfigMap change. Once no apiserver accepts the CA being
        removed any more, none adds it back, so wait for that before writing."""
        kept = set(action.change.after)
        dropped = [value for value in action.change.before if value not in kept]
        if dropped:
            deadline = time.monotonic() + self.phase_timeout
            while True:
                self.heartbeat()
                accepting = self._accepting_old(dropped)
                if not accepting:
                    break
                if time.monotonic() > deadline:
                    raise RotationError(f"apiservers {', '.join(accepting)} still accept client certificates from "
                                        f"{', '.join(dropped)} after {self.phase_timeout:.0f}s")
                time.sleep(1.0)
        self._replace_configmap(EXTENSION_AUTH, "kube-system/extension-apiserver-authentication",
                                lambda configmap: configmap.setdefault("data", {}).update({"client-ca-file": pem.decode()}))

    def _accepting_old(self, fingerprints: list[str]) -> list[str]:
        """The apiservers that still accept a client certificate from one of these CAs."""
        keys = self._stored().keys
        known = [pair for pair in (keys.previous, keys.target) if pair is not None]
        trust = pki.bundle_pem([pair.cert for pair in known])
        probes_from = [_probe_certificate(pair) for pair in known if fp(pair.cert) in fingerprints]
        return [f"{server} ({node})" for node, server in apiserver_servers(self.access)
                if any(probes.accepts_client_certificate(server, ca_pem=trust, cert_pem=probe.cert_pem,
                                                         key_pem=probe.key_pem) is not None
                       for probe in probes_from)]

    def _rewrite_node_kubeconfig(self, node: str, path: str, change: Callable[[dict], dict]) -> None:
        files = self.access.nodes[node]
        raw = files.read(path)
        if raw is None:
            raise RotationError(f"{files.describe()}: {path} disappeared")
        document = kubeconfig.parse(raw.decode(), source=f"{files.describe()} {path}")
        files.write(path, kubeconfig.dump(change(document)).encode(), files.mode(path) or kubeadm.PRIVATE)

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

    def _stage_signer(self, action: Action) -> None:
        self._write_signer(action.node, self._pair(action.change.after[0]), record_key=False)

    def _switch_signer(self, action: Action) -> None:
        pair = self._pair(action.change.after[0])
        if action.node is None and action.target.startswith("secret/"):
            # Admin mode: the management cluster's CA of record, <name>-ca, holds the CA alone.
            self.access.management.write_authority(self.access.layout.management_secret, pair)
            return
        self._write_signer(action.node, pair, record_key=True)

    def _rewrite_kubeconfig_secret(self, change: Callable[[dict], dict]) -> None:
        """Rewrite the kubeconfig Secret of admin mode; careconcile's own client of the
        cluster, when it uses that Secret, follows it at once."""
        self.access.management.rewrite_kubeconfig(change)
        if isinstance(self.access.client, SecretKubeconfigClient):
            self.access.client.reload()

    def _write_signer(self, node: str, pair: KeyPair, *, record_key: bool) -> None:
        files = self.access.nodes[node]
        layout = self.access.layout
        # Key before certificate: a controller-manager that reloads in between sees a
        # mismatched pair, keeps signing with what it has, and reloads again.
        files.write(layout.signer_key, pair.key_pem, kubeadm.PRIVATE)
        files.write(layout.signer_cert, pair.cert_pem, kubeadm.PUBLIC)
        if record_key:
            files.write(layout.record_key, pair.key_pem, kubeadm.PRIVATE)
            self._record_cache = None

    def _remove_signer(self, action: Action) -> None:
        files = self.access.nodes[action.node]
        files.remove(self.access.layout.signer_cert)
        files.remove(self.access.layout.signer_key)
        files.remove_directory(SIGNER_DIR)

    def _reissue(self, action: Action) -> None:
        ca = self._pair(action.change.after[0])
        now = utcnow()

        def fresh(template: x509.Certificate) -> KeyPair:
            return pki.reissue(template, ca, key=self.desired.key, validity=self.desired.leaf_validity, now=now)

        if action.target.startswith("local:"):
            scope = self._local_scope(action.path)
            self._rewrite_kubeconfig_file(action.path,
                                          lambda doc: self._reissued_kubeconfig(doc, action, fresh, scope))
            return
        if action.target.startswith("secret/"):
            self._rewrite_kubeconfig_secret(lambda doc: self._reissued_kubeconfig(doc, action, fresh))
            return
        files = self.access.nodes[action.node]
        where = f"{files.describe()} {action.path}"
        if action.target.endswith(".conf") or "#" in action.target:
            self._rewrite_node_kubeconfig(action.node, action.path,
                                          lambda doc: self._reissued_kubeconfig(doc, action, fresh))
            return
        combined = files.read(action.path)
        if combined is not None and action.path.endswith(".pem"):
            pair = fresh(pki.load_certificates(combined, source=where)[0])
            files.write(action.path, pair.cert_pem + pair.key_pem, kubeadm.PRIVATE)
            return
        cert_raw = files.read(f"{action.path}.crt")
        if cert_raw is None:
            raise RotationError(f"{where}.crt disappeared")
        pair = fresh(pki.load_certificates(cert_raw, source=f"{where}.crt")[0])
        files.write(f"{action.path}.key", pair.key_pem, kubeadm.PRIVATE)
        files.write(f"{action.path}.crt", pair.cert_pem, kubeadm.PUBLIC)

    def _local_scope(self, path: str | None = None) -> kubeconfig.Scope:
        """Which entries of a local kubeconfig are this cluster's: the spec's kubeconfig may
        reach other clusters too; the one careconcile wrote holds only this one."""
        if self.access.kubeconfig_path is None or (path is not None and Path(path) != self.access.kubeconfig_path):
            return kubeconfig.EVERYTHING
        return local_kubeconfig_scope(self.access, self.access.kubeconfig_path.read_bytes())

    @staticmethod
    def _reissued_kubeconfig(document: dict, action: Action, fresh: Callable[[x509.Certificate], KeyPair],
                             scope: kubeconfig.Scope = kubeconfig.EVERYTHING) -> dict:
        wanted_user = action.target.split("#", 1)[1] if "#" in action.target else None
        for user, cert_pem, _ in kubeconfig.embedded_credentials(document, scope):
            if wanted_user is None or user == wanted_user:
                pair = fresh(pki.load_certificates(cert_pem, source=f"{action.target} user {user}")[0])
                document = kubeconfig.with_credentials(document, user, pair.cert_pem, pair.key_pem)
        return document

    def _write_kubeconfig(self, action: Action) -> None:
        ca = self._pair(action.change.after[0])
        admin = pki.issue_leaf(ca, LeafRequest("kubernetes-admin", organizations=(kubeadm.CLUSTER_ADMINS_GROUP,),
                                               client=True, key=self.desired.key,
                                               validity=self.desired.leaf_validity), now=utcnow())
        if self.access.kubeconfig_path is None:  # inCluster: true; the server careconcile reached it by
            endpoints = [kubeconfig.Endpoint(self.access.name, self.access.client.target.server)]
        else:
            source = kubeconfig.parse(self.access.kubeconfig_path.read_text(), source=str(self.access.kubeconfig_path))
            scope = self._local_scope()
            endpoints = [endpoint for endpoint in kubeconfig.servers(source)
                         if scope.clusters is None or endpoint.name in scope.clusters]
        document = kubeconfig.build(endpoints=endpoints, ca_pem=ca.cert_pem, user="kubernetes-admin",
                                    credentials=ClientCredentials(cert_pem=admin.cert_pem, key_pem=admin.key_pem))
        atomic_write(Path(action.path), kubeconfig.dump(document).encode(), kubeadm.PRIVATE)

    # --- restarts ------------------------------------------------------------------------

    def _restart(self, action: Action) -> None:
        files = self.access.nodes[action.node]
        component = action.params["component"]
        service = next((s for s in self.access.layout.node_services if s.name == component), None)
        if service is not None:
            self._restart_service(action, service)
            return
        manifest = load_manifest(files, component)
        if manifest is None:
            raise RotationError(f"{files.describe()}: {manifest_path(component)} disappeared")
        inputs = next(c.inputs for c in self.access.layout.components if c.name == component)
        metadata = manifest.setdefault("metadata", {})
        annotations = metadata.setdefault("annotations", {}) or {}
        annotations[RESTARTED_FOR] = inputs_digest(files, inputs)
        annotations[RESTARTED_AT] = micro_time(utcnow())
        metadata["annotations"] = annotations
        signing = action.params.get("signing")
        if signing and self.access.layout.signer is not None:
            signer = self.access.layout.signer
            cert, key = ((self.access.layout.signer_cert, self.access.layout.signer_key) if signing == "signer"
                         else (self.access.layout.record_cert, self.access.layout.record_key))
            container = manifest["spec"]["containers"][0]
            container["command"] = [
                f"{signer.cert_flag}={cert}" if arg.startswith(signer.cert_flag + "=") else
                f"{signer.key_flag}={key}" if arg.startswith(signer.key_flag + "=") else arg
                for arg in container["command"]
            ]
        # The YAML writer the sandbox writes manifests with.
        files.write(manifest_path(component), kubeconfig.dump(manifest).encode(),
                    files.mode(manifest_path(component)) or 0o600)

    def _restart_service(self, action: Action, service: NodeServiceComponent) -> None:
        """Restart a node service (the kubelet) with the node's restart command, then record
        it in the marker file: the digest of its inputs, when, and the node's Lease renewTime
        just after the restart, which the phase check waits to see renewed."""
        files = self.access.nodes[action.node]
        command = self.access.kubelet_restart(action.node)
        if not command:
            raise RotationError(f"{files.describe()}: the spec names no command to restart its {service.name} "
                                "(kubeletRestart)", hint="plan again: the spec changed since this plan was made")
        restarted_for = inputs_digest(files, service.inputs)
        files.run(list(command), timeout=RESTART_COMMAND_TIMEOUT)
        restarted_at = utcnow()
        files.write(service.marker, restart_marker(restarted_for, restarted_at, self._node_lease_renewed(action.node)),
                    kubeadm.PUBLIC)

    def _check_restarts_planned(self, actions: list[Action]) -> None:
        """Before phase 3 changes anything, from one reading of the workloads once a pod that
        starts now trusts both CAs (the recorded time has passed):

        - every workload whose pods trust only the old CA is one the plan restarts; one made
          since the plan was (a Deployment, a Job, a bare pod) would fail once the apiservers
          switch: the plan is stale;
        - none that the plan restarts may be forbidden a restart now (a budget that allows
          no disruption, a paused Deployment).

        Either way apply stops here, with nothing restarted or reissued."""
        stored = self._stored()
        state = stored.state
        if not (self.access.layout.pods_trust and state.in_progress):
            return
        if state.workloads_trusted_since is None:  # phase 2 verified by a careconcile that did not record it
            state = self._record_pod_trust(stored, utcnow()).state
        wait = seconds_until(state.workloads_trusted_since)
        while wait > 0:
            self.heartbeat()
            time.sleep(min(wait, 1.0))
            wait = seconds_until(state.workloads_trusted_since)
        planned = {action.target: action for action in actions if action.kind == "restart-workload"}
        decisions = workload_decisions(observe(self.access), fp(state.target), self.access.workloads)
        first = next(action for action in actions if action.phase == 3)
        unplanned = [decision for decision in decisions
                     if (decision.restarts or decision.blocked) and decision.workload.id not in planned]
        if unplanned:
            shown = "\n  ".join(decision.blocked or f"{decision.workload.describe()}: {len(decision.stale)} pod(s) "
                                 "trust only the old CA" for decision in unplanned[:8])
            error = StalePlanError(
                f"cluster {self.access.name}: {len(unplanned)} workload(s) that the plan does not restart trust only "
                f"the old CA; phase 3 would break them, so nothing of it ran:\n  {shown}",
                hint="plan again (`careconcile apply SPEC`, or a new saved plan), which restarts them, or exclude "
                     "them in the spec's workloads.exclude")
            self.on_event("failed", first, {"error": str(error)})
            raise error
        forbidden = [decision for decision in decisions
                     if decision.restarts and decision.forbidden and decision.workload.id in planned]
        if forbidden:
            error = RotationError(
                f"cluster {self.access.name}: {len(forbidden)} workload(s) may not be restarted, so the apiservers "
                "must not switch to the new CA yet; nothing was restarted or reissued:\n  "
                + "\n  ".join(decision.forbidden for decision in forbidden),
                hint="let the PodDisruptionBudget allow a disruption (or resume the Deployment), or exclude the "
                     "workload in the spec's workloads.exclude; then run apply again to resume")
            self.on_event("failed", planned[forbidden[0].workload.id], {"error": str(error)})
            raise error

    def _restart_workloads(self, actions: list[Action], report: RunReport) -> None:
        """Restart these workloads, ``maxConcurrent`` at a time (the recorded time has passed,
        and nothing forbids them: see :meth:`_check_restarts_planned`). Ctrl-C stops the
        restarts at their next poll."""
        state = self._stored().state
        settings = self.access.workloads
        stop = threading.Event()
        restarter = WorkloadRestarter(self.access.client, settings, rotation=fp(state.target),
                                      trust=state.pod_trust(), heartbeat=self.heartbeat, stop=stop)
        errors: list[BaseException] = []

        def one(action: Action) -> None:
            if stop.is_set():
                return
            try:
                self._run_one(action, report, dispatch=restarter.restart)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                with self._events:
                    errors.append(exc)
                stop.set()

        pool = ThreadPoolExecutor(max_workers=settings.max_concurrent, thread_name_prefix="restart")
        try:
            list(pool.map(one, actions))
        except BaseException:  # Ctrl-C: the restarts stop waiting before the lock is released
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        first = next((e for e in errors if not isinstance(e, Stopped)), errors[0] if errors else None)
        if first is not None:
            raise first

    def _node_lease_renewed(self, node: str) -> dt.datetime | None:
        """The renewTime of the node's Lease, None when it has none (or cannot be read now)."""
        try:
            lease = self.access.client.get(f"{NODE_LEASES}/{node}")
        except (APIError, ClusterUnreachableError):
            return None
        return parse_time((lease.get("spec") or {}).get("renewTime"))

    # --- checks --------------------------------------------------------------------------

    def _verify(self, action: Action) -> None:
        phase = int(action.target.split("-", 1)[1])
        new = self._cert(action.params["expect"])
        old_fp = action.params["old"]
        deadline = time.monotonic() + self.phase_timeout
        while True:
            self.heartbeat()
            try:
                problems = self.problems(phase, new, old_fp)
            except (ClusterUnreachableError, APIError) as exc:  # a restart in progress, a Lease not yet made
                problems = [f"cannot check yet: {exc.message}"]
            if not problems:
                break
            if time.monotonic() > deadline:
                shown = "\n  ".join(problems[:8]) + (f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else "")
                raise RotationError(
                    f"cluster {self.access.name}: phase {phase} ({PHASES[phase]}) did not show on the live cluster "
                    f"within {self.phase_timeout:.0f}s:\n  {shown}",
                    hint="nothing was rolled back; fix the cause and run apply again to resume")
            time.sleep(1.0)
        stored = self._stored()
        if stored.state.in_progress and phase == 2 and stored.state.workloads_trusted_since is None:
            # Every kube-root-ca.crt held both CAs when this check read them, before now: a pod
            # started (a margin) after now trusts both. Recorded once per rotation, never moved.
            stored = self._record_pod_trust(stored, utcnow())
        if stored.state.in_progress and stored.state.verified_phase < phase:
            self._save(with_state(stored, verified_phase=phase))

    def _record_pod_trust(self, stored: Stored, checked_at: dt.datetime) -> Stored:
        state = stored.state
        alone = state.target if state.rolling_back else state.previous
        stored = with_state(stored, workloads_trusted_since=trusted_since(checked_at),
                            workloads_trusted_alone=fp(alone))
        self._save(stored)
        return stored

    def problems(self, phase: int, new: x509.Certificate, old_fp: str) -> list[str]:
        """What still differs from the end state of ``phase``; empty when it is reached."""
        observed = observe(self.access, with_workloads=phase in (3, 5))
        new_fp = fp(new)
        problems: list[str] = []
        for bundle in observed.bundles:
            have = set(bundle.fingerprints)
            if phase in (2, 3) and new_fp not in have:
                problems.append(f"{bundle.id} does not trust {short(new_fp)} yet")
            if phase >= 4 and bundle.fingerprints != (new_fp,):
                problems.append(f"{bundle.id} still trusts {sorted(have - {new_fp}) or 'not the new CA'}")
        if phase >= 3:
            for leaf in observed.leaves:
                if not pki.is_signed_by(leaf.cert, new) or not leaf.key_matches:
                    problems.append(f"{leaf.id} is not a certificate from the new CA with its key")
            for record in observed.records:
                if record.cert is None or fp(record.cert) != new_fp:
                    problems.append(f"{record.node} does not hold the new CA's key as its CA of record")
            for endpoint in observed.endpoints:
                if not pki.is_signed_by(endpoint.presented, new):
                    problems.append(f"apiserver {endpoint.server} on {endpoint.node} still presents a certificate "
                                    f"not signed by the new CA")
        if phase in (3, 5):
            for decision in workload_decisions(observed, new_fp, self.access.workloads):
                if decision.restarts:
                    problems.append(f"{len(decision.stale)} pod(s) of {decision.workload.describe()} still trust only "
                                    f"the old CA ({', '.join(pod.name for pod in decision.stale[:3])})")
        problems += self._probe_clients(phase, observed, new, old_fp)
        problems += self._components_ready(observed)
        if phase == 5:
            problems += self._nodes_ready()
        return problems

    def _probe_clients(self, phase: int, observed: ClusterObservation, new: x509.Certificate,
                       old_fp: str) -> list[str]:
        """Ask each apiserver, as a client would, whom it trusts now."""
        problems = []
        trust = pki.bundle_pem([new] + ([self._cert(old_fp)] if phase < 4 and old_fp != fp(new) else []))
        if phase in (2, 5):
            probe = _probe_certificate(self._pair(fp(new)))
            for endpoint in observed.endpoints:
                if probes.accepts_client_certificate(endpoint.server, ca_pem=trust,
                                                     cert_pem=probe.cert_pem, key_pem=probe.key_pem) is None:
                    problems.append(f"apiserver {endpoint.server} does not yet accept client certificates "
                                    f"from the new CA")
        if phase >= 4 and old_fp != fp(new):
            problems += [f"apiserver {server} still accepts client certificates from the old CA {old_fp}"
                         for server in self._accepting_old([old_fp])]
            if self.access.workspace_kubeconfig.is_file():
                target = load_kubeconfig(self.access.workspace_kubeconfig)
                try:
                    with KubeClient(target, timeout=5) as client:
                        client.get("/api")
                except CareconcileError as exc:
                    problems.append(f"the new kubeconfig {self.access.workspace_kubeconfig} does not work: {exc}")
            management = self.access.management
            if management is not None and self.access.layout.management_kubeconfig:
                try:
                    with KubeClient(management.user_target(), timeout=5) as client:
                        client.get("/api")
                except CareconcileError as exc:
                    problems.append(f"the kubeconfig in {management.kubeconfig_source} does not work: {exc}")
        return problems

    def _components_ready(self, observed: ClusterObservation) -> list[str]:
        """Each restarted component runs again: its leader Lease was acquired after the
        restart, or it renewed its nodes' Leases after it."""
        problems = []
        client = self.access.client
        by_name: dict[str, list] = {}
        for component in observed.components:
            if component.restarted_at is not None and component.restart == "manifest":
                by_name.setdefault(component.name, []).append(component)
        problems += self._node_services_ready([c for c in observed.components
                                               if c.restarted_at is not None and c.restart == "command"])
        readiness = {c.name: c.readiness for c in self.access.layout.components}
        now = utcnow()
        for name, instances in by_name.items():
            restarted = min(c.restarted_at for c in instances)
            if readiness[name] == "leader-lease":
                lease = client.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{name}")
                spec = lease.get("spec") or {}
                acquired, renewed = parse_time(spec.get("acquireTime")), parse_time(spec.get("renewTime"))
                duration = dt.timedelta(seconds=int(spec.get("leaseDurationSeconds") or 15))
                if not spec.get("holderIdentity") or acquired is None or acquired < restarted or \
                        renewed is None or now - renewed > duration * 2:
                    problems.append(f"{name} has not taken its leader lease since its restart at {restarted:%H:%M:%S}")
            else:
                stale = [lease["metadata"]["name"] for lease in
                         client.list("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
                         if (parse_time((lease.get("spec") or {}).get("renewTime")) or restarted) <= restarted]
                if stale:
                    problems.append(f"{name} has not renewed the leases of {len(stale)} node(s) since its restart "
                                    f"({', '.join(stale[:3])})")
        return problems

    def _node_services_ready(self, restarted: list[ObservedComponent]) -> list[str]:
        """Each restarted kubelet runs again: its node's Lease was renewed after the restart
        (after the renewTime read just after it, both the node's clock; else after the time
        of the restart) and lately."""
        if not restarted:
            return []
        leases = {lease["metadata"]["name"]: lease.get("spec") or {} for lease in self.access.client.list(NODE_LEASES)}
        now = utcnow()
        problems = []
        for component in restarted:
            spec = leases.get(component.node)
            if spec is None:
                problems.append(f"{component.id}: node {component.node} has no Lease in kube-node-lease; its "
                                f"{component.name} has not registered the node")
                continue
            renewed = parse_time(spec.get("renewTime"))
            after = component.lease_renewed_at_restart or component.restarted_at
            duration = dt.timedelta(seconds=int(spec.get("leaseDurationSeconds") or 40))
            if renewed is None or renewed <= after or now - renewed > duration * 2:
                problems.append(f"{component.id}: the node's Lease has not been renewed since the restart at "
                                f"{component.restarted_at:%H:%M:%S}")
        return problems

    def _nodes_ready(self) -> list[str]:
        problems = []
        for node in self.access.client.list("/api/v1/nodes"):
            conditions = (node.get("status") or {}).get("conditions") or []
            if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                problems.append(f"node {node['metadata']['name']} is not Ready")
        return problems

    # --- the end -------------------------------------------------------------------------

    def _finalize(self, action: Action) -> None:
        stored = self._stored()
        state = stored.state
        if not state.in_progress:
            return
        # The CA left behind is remembered (public fingerprint only) so that a caBundle still
        # carrying it is recognised as the cluster's and reported by drift.
        retired = tuple(dict.fromkeys((*state.retired, fp(state.previous))))[-RETIRED_KEPT:]
        # What pods trust is kept: drift finds a pod left trusting only the CA just distrusted.
        pods = {"workloads_trusted_since": state.workloads_trusted_since,
                "workloads_trusted_alone": state.workloads_trusted_alone}
        if state.rolling_back:
            final = StoredState(applied_rotation=state.applied_rotation, rolled_back_rotation=state.rotation,
                                retired=retired, **pods)
        else:
            final = StoredState(applied_rotation=state.rotation if state.rotation is not None
                                else state.applied_rotation, rolled_back_rotation=state.rolled_back_rotation,
                                retired=retired, **pods)
        self._save(Stored(final, StoredKeys()))


CA_BUNDLE_KINDS = {kind for kind, _ in CA_BUNDLE_OWNERS}

_LOCAL_FILE_LOCKS: dict[Path, threading.Lock] = {}
_LOCAL_FILE_LOCKS_GUARD = threading.Lock()


def _local_file_lock(path: Path) -> threading.Lock:
    """One lock per file on this machine, for the executors of a wave's clusters (threads)."""
    with _LOCAL_FILE_LOCKS_GUARD:
        return _LOCAL_FILE_LOCKS.setdefault(path, threading.Lock())


def _set_ca_bundle(kind: str, item: dict, suffix: str, bundle: str) -> None:
    if kind.endswith("webhookconfiguration"):
        hook_name = suffix.split("/", 1)[1]
        for hook in item.get("webhooks") or []:
            if hook.get("name") == hook_name:
                hook.setdefault("clientConfig", {})["caBundle"] = bundle
    elif kind == "apiservice":
        item["spec"]["caBundle"] = bundle
    else:
        item["spec"]["conversion"]["webhook"]["clientConfig"]["caBundle"] = bundle


def _probe_certificate(ca: KeyPair) -> KeyPair:
    """A throwaway client certificate from ``ca``, to ask an apiserver whether it trusts ``ca``."""
    return pki.issue_leaf(ca, LeafRequest(PROBE_USER, client=True, key=pki.KeySpec("ECDSA", 256)), now=utcnow())
