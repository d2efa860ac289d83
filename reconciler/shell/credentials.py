"""`careconcile update credentials --cluster-ca`: one imperative rotation of a user cluster's
CA, from nothing but the admin cluster, on the same plan/apply machinery as `apply`.

What the admin cluster holds for the cluster (the Cluster API Secrets, the node inventory,
the SSH key) becomes a one-cluster spec, written into the run's log directory so the run
can be read back; its rotation counter is one above the last applied rotation, or the
counter of the rotation in progress, so a second run after an interruption finishes that
rotation instead of starting another.
"""

from __future__ import annotations

import base64
import io
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from ruamel.yaml import YAML

from reconciler._files import atomic_write
from reconciler.core.admin import SSH_KEY_KEY, ManagementNames
from reconciler.core.record import resolve_record
from reconciler.core.plan import summary_line
from reconciler.core.spec import API_VERSION, SpecDocument, dns_label
from reconciler.errors import APINotFoundError, PlanConflictError, UsageError
from reconciler.shell import session
from reconciler.shell.admin import cluster_from_admin, default_namespace
from reconciler.shell.kube import KubeconfigClient
from reconciler.shell.observe import ClusterAccess, observe_record
from reconciler.shell.specfile import LoadedSpec, load_spec

OPERATION = "update-credentials"
LOCK_OPERATION = "update credentials --cluster-ca"  # what a refused command names
ALL_LOCK_OPERATION = "update credentials certificate-authorities rotate"
ALL_AUTHORITIES = ("clusterCA", "etcdCA", "frontProxyCA")


@dataclass
class Outcome:
    cluster: str
    old_ca: str | None  # the cluster CA's
    new_ca: str | None
    kubeconfig: Path
    log: Path
    actions: int
    cas: dict[str, tuple[str | None, str | None]]  # per authority rotated: (before, after)


def _spec_text(document: dict, operation: str = LOCK_OPERATION) -> str:
    out = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = False
    out.write(f"# Written by `careconcile {operation}` from what the admin cluster holds.\n"
              "# A keyFile names this run's copy of the Secret <name>-ssh-key, removed when the run\n"
              "# ended: to use this spec again, write the key to a file and point keyFile at it.\n")
    yaml.dump(document, out)
    return out.getvalue()


def _ssh_key(admin: KubeconfigClient, names: ManagementNames, directory: Path) -> Path | None:
    """The cluster's SSH key Secret as a 0600 file for the run, or None when it has none."""
    try:
        secret = admin.get(f"/api/v1/namespaces/{names.namespace}/secrets/{names.ssh_key_secret}")
    except APINotFoundError:
        return None
    data = (secret.get("data") or {}).get(SSH_KEY_KEY)
    if not data:
        return None
    # A directory of this run's own: a second run (refused at the lock, or not) must not
    # remove the key under a running one.
    (directory / "ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=directory / "ssh"))
    path = run_dir / f"{names.cluster}-ssh-key"
    atomic_write(path, base64.b64decode(data), 0o600)
    return path


def update_cluster_ca(admin_kubeconfig: Path | None, name: str, *, context: str | None, namespace: str | None,
                      workspace: Path, phase_timeout: float, stream: TextIO = sys.stdout,
                      say: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
                      authorities: tuple[str, ...] = ("clusterCA",)) -> Outcome:
    for value, what in ((name, "cluster name"), (namespace, "namespace")):
        try:  # the CLI checked them; a name that is a path must never reach the workspace or an API path
            if value is not None:
                dns_label(value, what)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    names = ManagementNames(name, namespace or default_namespace(name))
    workspace = workspace.resolve()  # the generated spec names files in it by absolute paths
    admin = KubeconfigClient(admin_kubeconfig, context)  # None: KUBECONFIG's files, merged, or ~/.kube/config
    accesses: dict[str, ClusterAccess] = {}
    key_file = None
    try:
        key_file = _ssh_key(admin, names, workspace / name)
        cluster = cluster_from_admin(admin, name, names.namespace, ssh_key_file=str(key_file) if key_file else None)
        body = cluster.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        draft = LoadedSpec(path=workspace / name / "spec.yaml", document=SpecDocument.model_validate(
            _document(body), by_name=False))
        accesses = session.open_clusters(draft, workspace)
        access = accesses[name]
        lock_operation = LOCK_OPERATION if authorities == ("clusterCA",) else ALL_LOCK_OPERATION
        with session.locked(accesses, lock_operation, say) as locks:
            directory = session.log_directory(access, OPERATION)  # made once the lock is ours
            if key_file is not None:  # keys a killed run left behind; no other run holds the lock now
                for stale in key_file.parent.parent.glob("run-*"):
                    if stale != key_file.parent:
                        shutil.rmtree(stale, ignore_errors=True)
            log_path = directory / f"{OPERATION}.log"
            # Each counter: the rotation in progress (to finish it), else one above both the
            # last applied and the last rolled back (that counter is spent). The authorities
            # rotate in order, so one in progress means that a run of this command stopped
            # there: those before it were rotated by that run and stay as they are.
            states = {authority: access.store.load_state(authority) for authority in authorities}
            interrupted = next((index for index, state in enumerate(states.values()) if state.in_progress), None)
            body["authorities"] = {}
            for index, (authority, state) in enumerate(states.items()):
                spent = max(state.applied_rotation, state.rolled_back_rotation or 0)
                body["authorities"][authority] = {"rotation": (
                    state.rotation if state.in_progress and state.rotation is not None
                    else spent if interrupted is not None and index < interrupted else spent + 1)}
            state = next((s for s in states.values() if s.in_progress), next(iter(states.values())))
            spec_path = directory / "spec.yaml"  # the spec of this run, beside its log
            atomic_write(spec_path, _spec_text(_document(body), lock_operation).encode(), 0o644)
            loaded = load_spec(spec_path)
            access.cluster = loaded.document.spec.clusters[0]  # the same cluster, with its counter
            plan = session.make_plan(loaded, accesses)
            what = ("Finishing the interrupted rollback of" if state.rolling_back
                    else "Finishing the interrupted rotation of" if state.in_progress else "Rotating")
            which = "the cluster CA" if authorities == ("clusterCA",) else f"the CAs ({', '.join(authorities)})"
            stream.write(f"{what} {which} of {name} ({names.namespace} in the admin cluster).\n"
                         f"Log: {log_path}\n")
            for cluster_plan in plan.clusters:
                for finding in cluster_plan.findings:
                    marker = "error:" if finding.blocking else "warning:" if finding.warning else "*"
                    stream.write(f"  {marker} {finding.subject}: {finding.message}\n")
            blocking = [f for c in plan.clusters for f in c.findings if f.blocking]
            if blocking:
                raise PlanConflictError(f"cluster {name}: {len(blocking)} finding(s) block the rotation; "
                                        "nothing was changed")
            if not any(cluster_plan.actions for cluster_plan in plan.clusters):
                raise PlanConflictError(f"cluster {name}: the plan holds no rotation (operation "
                                        f"{plan.clusters[0].operation}); nothing was changed",
                                        hint=f"careconcile plan {spec_path} shows what careconcile sees")
            stream.write(summary_line(plan.actions()) + "\n")
            stream.flush()
            reports = session.run_plan(
                plan, loaded, accesses, phase_timeout=phase_timeout, stream=stream, locks=locks,
                open_log=lambda access, operation: session.ApplyLog(
                    access, operation, directory=directory, filename=f"{OPERATION}.log"))
        cas = {cluster_plan.authority: (cluster_plan.old_ca, _new_ca(access.for_authority(cluster_plan.authority)))
               for cluster_plan in plan.clusters}
        return Outcome(cluster=name, old_ca=cas["clusterCA"][0], new_ca=cas["clusterCA"][1],
                       kubeconfig=access.workspace_kubeconfig, log=log_path,
                       actions=sum(len(report.done) for report in reports), cas=cas)
    finally:
        for opened in accesses.values():
            opened.close()
        admin.close()
        if key_file is not None:
            shutil.rmtree(key_file.parent, ignore_errors=True)


def _document(cluster: dict) -> dict:
    return {"apiVersion": API_VERSION, "kind": "CASpec", "metadata": {"name": f"{OPERATION}-{cluster['name']}"},
            "spec": {"clusters": [cluster]}}


def _new_ca(access: ClusterAccess) -> str | None:
    """The CA of record after the run, as every control-plane node holds it (None if they do not agree)."""
    records = [observe_record(access.nodes[node], access.layout, node) for node in access.control_planes()]
    return resolve_record(records).fingerprint
