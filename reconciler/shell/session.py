"""A plan/apply session: reach the spec's clusters, lock them, plan, run the plan.

The CLI commands are thin over this module, and so are the benchmarks and tests that
drive a rotation without a subprocess.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO

from pydantic import ValidationError

from reconciler import __version__
from reconciler._files import read_limited
from reconciler.core import yamldoc
from reconciler.core.admin import ManagementNames
from reconciler.core.authorities import CLUSTER_CA, AuthorityLayout
from reconciler.core.diff import diff
from reconciler.core.observed import item_digests
from reconciler.core.plan import FORMAT_VERSION, Action, ClusterPlan, PlanDocument, plan_cluster, summary_counts
from reconciler.core.schemas import schemas
from reconciler.core.spec import ClusterSpec, managed_authorities, relative_paths, resolve_authority, resolve_workloads
from reconciler.errors import (
    APIError, CareconcileError, ClusterUnreachableError, PlanFileError, RollbackRefusedError, RotationError,
    StalePlanError, UsageError,
)
from reconciler._time import utcnow
from reconciler.shell.executor import Executor, RunReport
from reconciler.shell.fleet import DEFAULT_PARALLELISM, map_bounded
from reconciler.shell.foreign import observe_foreign
from reconciler.shell.kube import InClusterClient, KubeClient, KubeconfigClient
from reconciler.shell.lock import ClusterLock, LockSet
from reconciler.shell.management import ManagementAccess, SecretKubeconfigClient
from reconciler.shell.nodes import open_nodes
from reconciler.shell.observe import ClusterAccess, observe
from reconciler.shell.specfile import LoadedSpec, load_spec_text, spec_text_digest
from reconciler.shell.statestore import SecretStateStore, WorkspaceStateStore

if TYPE_CHECKING:
    import jsonschema

WORKSPACE_ENV = "CARECONCILE_WORKSPACE"
WORKSPACE_DIR = "careconcile-workspace"


def workspace_root(option: str | None = None) -> Path:
    return Path(option or os.environ.get(WORKSPACE_ENV) or Path.cwd() / WORKSPACE_DIR)


def open_cluster(loaded: LoadedSpec, cluster: ClusterSpec, workspace: Path,
                 layout: AuthorityLayout = CLUSTER_CA, *, check_nodes: bool = True) -> ClusterAccess:
    """Reach a cluster's API and nodes; nothing is read or changed yet beyond the
    kubeconfig and the nodes' root directories."""
    nodes = open_nodes(cluster.nodes, loaded.base, check=check_nodes)  # SSH: connects, several at once
    kubeconfig_path = loaded.kubeconfig_path(cluster)
    management = open_management(loaded, cluster)
    client: KubeClient
    if kubeconfig_path is not None:
        client = KubeconfigClient(kubeconfig_path, cluster.context)
    elif cluster.in_cluster or management is None:
        client = InClusterClient()
    else:  # admin mode without a kubeconfig of its own: the one in the Secret <name>-kubeconfig
        client = SecretKubeconfigClient(management)
    directory = workspace / cluster.name
    store_spec = cluster.state_store
    if store_spec.workspace is not None:
        store = WorkspaceStateStore(directory / "state")
    elif management is not None:  # admin mode: state and lock in the cluster's management namespace
        store = SecretStateStore(management.client, namespace=management.namespace,
                                 name=management.names.state_secret, keys_name=management.names.keys_secret)
    else:
        secret = store_spec.secret
        store = SecretStateStore(client, namespace=secret.namespace, name=secret.name, keys_name=secret.keys_name)
    access = ClusterAccess(cluster=cluster, layout=layout, client=client, kubeconfig_path=kubeconfig_path,
                           nodes=nodes, roles={node.name: node.role for node in cluster.nodes}, store=store,
                           workspace=directory, management=management,
                           workloads=resolve_workloads(cluster.workloads, loaded.document.spec.defaults.workloads))
    if management is not None:
        access.lock_client = management.client
        access.lock_namespace, access.lock_name = management.namespace, management.names.lock_lease
    return access


def open_management(loaded: LoadedSpec, cluster: ClusterSpec) -> ManagementAccess | None:
    """Admin mode: the cluster's management cluster, and where its objects live there."""
    path = loaded.management_kubeconfig_path(cluster)
    if path is None:
        return None
    client = KubeconfigClient(path, cluster.management.context)
    return ManagementAccess(client, ManagementNames(cluster.name, cluster.management_namespace))


def open_clusters(loaded: LoadedSpec, workspace: Path, only: str | None = None, *,
                  names: set[str] | None = None) -> dict[str, ClusterAccess]:
    """The clusters of the spec (``only`` one of them, or those in ``names``), opened."""
    clusters = [c for c in loaded.document.spec.clusters
                if (only is None or c.name == only) and (names is None or c.name in names)]
    if not clusters:
        known = ", ".join(c.name for c in loaded.document.spec.clusters)
        raise UsageError(f"{loaded.path}: no cluster named {only!r} (clusters: {known})")
    return {cluster.name: open_cluster(loaded, cluster, workspace) for cluster in clusters}


def _raise_rollback_refusal(cluster: str, refused: dict[str, RollbackRefusedError], *, planned: bool) -> None:
    """Why a rollback of ``cluster`` is refused, if it is: a refusal for a reason (an
    authority's old CA already distrusted, its key gone) is the one to report, even when
    another authority has nothing to roll back; with no rotation in progress anywhere, the
    message names every authority. Authorities with nothing in progress beside one that
    rolls back are passed over."""
    reasons = [exc for exc in refused.values() if not exc.nothing_in_progress]
    if reasons:
        raise reasons[0]
    if planned:
        return
    if len(refused) == 1:
        raise next(iter(refused.values()))
    raise RollbackRefusedError(f"cluster {cluster}: no rotation in progress ({', '.join(refused)}), "
                               "nothing to roll back", nothing_in_progress=True)


def spec_digest(path: Path) -> str:
    """The spec file's digest, read as the spec loader reads it: a regular file within the
    spec's size limit (OSError otherwise; /dev/zero or a FIFO as spec_path never hangs)."""
    return "sha256:" + hashlib.sha256(read_limited(path, yamldoc.SPEC.max_bytes)).hexdigest()


def make_plan(loaded: LoadedSpec, accesses: dict[str, ClusterAccess], *, rollback: bool = False,
              parallelism: int = DEFAULT_PARALLELISM) -> PlanDocument:
    def plan_authority(access: ClusterAccess, foreign: tuple) -> ClusterPlan:
        desired = resolve_authority(loaded.document, access.cluster, access.layout.name)
        observed = dataclasses.replace(observe(access), foreign=foreign)
        findings = diff(desired, observed, now=utcnow(), rollback=rollback)
        return plan_cluster(desired, observed, findings, rollback=rollback, digest=observed.digest(),
                            items=item_digests(observed))

    def plan_one(access: ClusterAccess) -> list[ClusterPlan]:
        """One plan per authority the spec lists for the cluster, in order. A rollback
        undoes the authorities whose rotation is in progress; with none, it is refused."""
        foreign = observe_foreign(access.client)
        plans: list[ClusterPlan] = []
        refused: dict[str, RollbackRefusedError] = {}
        for name in managed_authorities(access.cluster):
            try:
                plans.append(plan_authority(access.for_authority(name), foreign))
            except RollbackRefusedError as exc:
                refused[name] = exc
        if refused:
            _raise_rollback_refusal(access.name, refused, planned=bool(plans))
        return plans

    plans = [plan for cluster_plans in map_bounded(plan_one, accesses.values(), parallelism)
             for plan in cluster_plans]
    actions = [action for plan in plans for action in plan.actions]
    return PlanDocument(
        format_version=FORMAT_VERSION, careconcile_version=__version__,
        created=utcnow().isoformat(timespec="seconds"), operation="rollback" if rollback else "apply",
        spec_path=str(loaded.path), spec_relative_path=os.path.relpath(loaded.path, Path.cwd()),
        spec_digest=loaded.digest, spec_text=loaded.text, clusters=plans, summary=summary_counts(actions),
    )


# --- saved plans -----------------------------------------------------------------------

# A saved plan of a 50-worker rotation is about 200 KiB; a fleet's stays far below this.
PLAN_MAX_BYTES = 64 * 1024 * 1024


def read_plan_json(path: Path) -> Any:
    """The JSON in a saved plan file, read within :data:`PLAN_MAX_BYTES` from a regular file."""
    try:
        return json.loads(read_limited(path, PLAN_MAX_BYTES))
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read the plan: {exc.strerror}") from exc
    except RecursionError:
        raise PlanFileError(f"{path}: not a JSON plan file (nested too deep)") from None
    except ValueError as exc:  # JSONDecodeError's message gives the place, never the text
        raise PlanFileError(f"{path}: not a JSON plan file ({exc})") from None


def load_plan(path: Path) -> PlanDocument:
    document = read_plan_json(path)
    if not isinstance(document, dict):
        raise PlanFileError(f"{path}: not a plan (a JSON object with format_version)")
    if document.get("format_version") != FORMAT_VERSION:
        shown = document.get("format_version")
        why = ("; a plan of format 2 names its spec by an absolute path, where format 3 holds the spec itself"
               if shown == 2 else "")
        raise PlanFileError(f"{path}: plan format_version {shown if isinstance(shown, int) else 'missing or not a number'}"
                            f"; this careconcile reads format_version {FORMAT_VERSION}{why}",
                            hint="plan again with this careconcile (`careconcile plan SPEC --out FILE`)")
    import jsonschema  # here: a tenth of the start-up of every command, and only a plan file needs it

    # Messages name the place and the rule, not the value found there.
    try:
        # The first error, not jsonschema.validate's "best" one, which it picks from every
        # error: a plan of 200,000 bad entries would take minutes.
        schema = schemas()["plan.schema.json"]
        first = next(jsonschema.validators.validator_for(schema)(schema).iter_errors(document), None)
        if first is not None:
            raise first
        plan = PlanDocument.model_validate(document)
    except jsonschema.ValidationError as exc:
        exc = _in_its_own_kind(exc)
        where = ".".join(str(part) for part in exc.absolute_path) or "(top level)"
        raise PlanFileError(f"{path}: not a valid plan at {where}: fails the schema's {exc.validator!r} rule") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise PlanFileError(f"{path}: not a valid plan at {where}: {error['msg']}") from None
    except RecursionError:
        raise PlanFileError(f"{path}: not a valid plan (nested too deep)") from None
    try:
        size = len(plan.spec_text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, written as \ud800 in the JSON
        raise PlanFileError(f"{path}: the spec embedded in the plan (spec_text) is not UTF-8 text") from None
    if size > yamldoc.SPEC.max_bytes:
        raise PlanFileError(f"{path}: the spec embedded in the plan (spec_text) is {size:,} bytes; a spec may be at "
                            f"most {yamldoc.SPEC.max_bytes:,} bytes")
    embedded = spec_text_digest(plan.spec_text)
    if embedded != plan.spec_digest:
        raise PlanFileError(f"{path}: the spec embedded in the plan (spec_text) does not match its digest: its "
                            f"text hashes to {embedded}, spec_digest says {plan.spec_digest}; the plan file was "
                            "edited", hint="make a new plan with `careconcile plan SPEC --out PLANFILE`")
    return plan


def spec_place(plan: PlanDocument, spec: Path | None = None) -> Path:
    """Where apply takes a saved plan's spec to be, whose directory the spec's relative paths
    are relative to: ``spec`` (``apply --spec FILE``), else the spec's path relative to the
    working directory the plan was made in, taken from the working directory now. A plan
    made at the top of one checkout thus finds its spec, and the files beside it, at the top
    of another, as `plan` did."""
    return (spec if spec is not None else Path(plan.spec_relative_path)).absolute()


def saved_spec(plan: PlanDocument, planfile: Path, spec: Path | None = None) -> LoadedSpec:
    """The spec embedded in a saved plan, at its place (:func:`spec_place`); the spec file
    found there is never parsed. ``spec`` (``apply --spec FILE``) must be the spec the plan
    was made from (the same digest). Without it, a spec file at the place must be that spec
    too (a different one is a checkout that moved on since the plan), and must be there at
    all when the spec has relative paths, which would otherwise resolve against a directory
    that does not hold the spec."""
    place = spec_place(plan, spec)
    try:
        digest: str | None = spec_digest(place)
    except OSError as exc:
        if spec is not None:
            raise PlanFileError(f"{spec}: cannot read the spec given with --spec: {exc.strerror or exc}") from exc
        digest = None
    if spec is not None and digest != plan.spec_digest:
        raise PlanFileError(f"{spec}: not the spec the plan {planfile} was made from: its digest is {digest}, "
                            f"the plan's spec has {plan.spec_digest}",
                            hint="give --spec the spec file the plan was made from, or make a new plan")
    if digest is not None and digest != plan.spec_digest:
        raise StalePlanError(f"saved plan is stale: the spec {place} (digest {digest}) is not the one the plan "
                             f"{planfile} was made from (digest {plan.spec_digest}); nothing was changed",
                             hint="make a new plan from this spec, or pass --spec FILE with the spec the plan "
                                  "was made from")
    loaded = load_spec_text(plan.spec_text, place=place, source=f"{planfile} (the spec embedded in it)")
    relative = relative_paths(loaded.document)
    if digest is None and relative:
        shown = ", ".join(relative[:3]) + (f" and {len(relative) - 3} more" if len(relative) > 3 else "")
        raise PlanFileError(f"{planfile}: the plan's spec has relative paths ({shown}), which resolve against the "
                            f"spec file's directory, and its spec is not at {place} (its path "
                            f"{plan.spec_relative_path} from the directory `plan` ran in, taken from here)",
                            hint="run apply from the directory you ran plan from, in a checkout that holds the "
                                 "spec, or pass --spec FILE")
    return loaded


def _in_its_own_kind(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For a site that fails its ``oneOf`` of site kinds, the error of the kind it says it is
    (a ``kind`` the others' ``const`` refuses), so the message names the field at fault
    (``site.namespace``) rather than the site as a whole."""
    while error.validator == "oneOf" and error.context:
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.schema_path[0], []).append(sub)
        own = [errors for errors in branches.values()
               if not any(list(e.relative_path) == ["kind"] for e in errors)]
        if len(own) != 1:
            break
        error = max(own[0], key=lambda e: len(e.relative_path))  # the deepest: the field itself
    return error


def check_not_stale(plan: PlanDocument, loaded: LoadedSpec, accesses: dict[str, ClusterAccess], *,
                    parallelism: int = DEFAULT_PARALLELISM) -> None:
    """Refuse a saved plan when the spec or a cluster changed since it was made, naming what,
    or when its actions are not the ones careconcile plans now from the spec and the live
    clusters: a plan file is a contract that apply derives again, not a script it trusts.
    Only workload restarts may be fewer than planned now (workloads come and go; the check
    before phase 3 stops a run that would leave one behind)."""
    hint = "make a new plan with `careconcile plan SPEC --out PLANFILE`"
    if loaded.digest != plan.spec_digest:
        raise StalePlanError(f"saved plan is stale: the spec {loaded.path} is not the one the plan was made from "
                             f"(digest {loaded.digest}, the plan's {plan.spec_digest})", hint=hint)
    fresh = make_plan(loaded, {name: accesses[name] for name in dict.fromkeys(c.cluster for c in plan.clusters)},
                      rollback=plan.operation == "rollback", parallelism=parallelism)
    now_by_key = {(c.cluster, c.authority): c for c in fresh.clusters}
    seen: set[tuple[str, str]] = set()
    for cluster in plan.clusters:
        key = (cluster.cluster, cluster.authority)
        now = now_by_key.get(key)
        if now is None or key in seen:
            raise StalePlanError(f"saved plan is stale: it holds {'twice ' if key in seen else ''}the authority "
                                 f"{cluster.authority} of cluster {cluster.cluster}, which careconcile does not plan "
                                 "now; nothing was changed", hint=hint)
        seen.add(key)
        if now.observed_digest != cluster.observed_digest:
            changed = sorted(item for item in set(now.observed_items) | set(cluster.observed_items)
                             if now.observed_items.get(item) != cluster.observed_items.get(item))
            shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
            raise StalePlanError(
                f"saved plan is stale: cluster {cluster.cluster} ({cluster.authority}) changed since the plan was "
                f"made ({shown}); "
                "nothing was changed", hint=hint)
        different = _first_difference(cluster.actions, now.actions)
        if different is not None:
            raise StalePlanError(
                f"saved plan is not what careconcile plans for cluster {cluster.cluster} ({cluster.authority}) "
                f"from the spec and the live cluster: {different}; nothing was changed",
                hint="make a new plan with `careconcile plan SPEC --out PLANFILE`, review it, and apply that")


def _first_difference(saved: list[Action], now: list[Action]) -> str | None:
    """The first action of ``saved`` that is not the one planned now (workload restarts may
    be fewer), or None when they agree. Reasons are words for people (a "due in N days"
    moves with the clock), so everything but them must be equal."""
    def what(action: Action) -> dict:
        return action.model_dump(exclude={"reason"})

    planned_workloads = {action.id: what(action) for action in now if action.kind == "restart-workload"}
    for action in saved:
        if action.kind == "restart-workload" and planned_workloads.get(action.id) != what(action):
            return f"{action.id} is not planned now"
    rest = [action for action in saved if action.kind != "restart-workload"]
    expected = [action for action in now if action.kind != "restart-workload"]
    for ours, theirs in zip(rest, expected):
        if what(ours) != what(theirs):
            return f"{ours.id} differs from the action planned now ({theirs.id})"
    if len(rest) != len(expected):
        extra = (rest if len(rest) > len(expected) else expected)[min(len(rest), len(expected))]
        return f"{extra.id} is {'not planned now' if len(rest) > len(expected) else 'missing from it'}"
    return None


# --- running ---------------------------------------------------------------------------

@contextlib.contextmanager
def locked(accesses: dict[str, ClusterAccess], operation: str,
           say: Callable[[str], None]) -> Iterator[dict[str, ClusterLock | LockSet]]:
    """Hold every cluster's lock for the whole operation; release them however it ends."""
    locks: dict[str, ClusterLock | LockSet] = {}
    try:
        for name, access in accesses.items():
            lock = access.lock(operation)
            info = lock.acquire()
            if info.took_over_from is not None:
                say(f"cluster {name}: took over the stale lock {info.took_over_from.describe()}")
            locks[name] = lock
        yield locks
    finally:
        for lock in locks.values():
            with contextlib.suppress(Exception):
                lock.release()


def log_directory(access: ClusterAccess, operation: str) -> Path:
    """careconcile-workspace/<cluster>/log/<operation>-<TIMESTAMP>/, made now."""
    directory = access.workspace / "log" / f"{operation}-{utcnow().strftime('%Y%m%dT%H%M%S.%fZ')}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class ApplyLog:
    """careconcile-workspace/<cluster>/log/apply-<TIMESTAMP>/apply.log: one line per event.
    A command with a log of its own (update credentials) passes its directory and file name."""

    def __init__(self, access: ClusterAccess, operation: str, *, directory: Path | None = None,
                 filename: str = "apply.log") -> None:
        self.directory = directory or log_directory(access, operation)
        self.path = self.directory / filename
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, message: str) -> None:
        stamp = utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._file.write(f"{stamp} {message}\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class Progress:
    """Per-action progress: counters and phase headings on a terminal, plain lines otherwise.
    Clusters of one wave report from their own threads, so each event is written whole."""

    total: int
    stream: TextIO = sys.stdout
    # Actions ended (done or failed): several may be under way at once (writes to several
    # nodes, workload restarts), so a line's number is its place among the ended ones.
    count: int = 0
    phase: tuple[str, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def terminal(self) -> bool:
        return self.stream.isatty()

    def event(self, cluster: str, kind: str, action: Action, details: dict) -> None:
        with self._lock:
            self._event(cluster, kind, action, details)

    def _event(self, cluster: str, kind: str, action: Action, details: dict) -> None:
        if kind == "start":
            if self.terminal and (cluster, action.phase) != self.phase:
                self.stream.write(f"\n{cluster}: phase {action.phase}\n")
            self.phase = (cluster, action.phase)
            if action.kind == "verify" and self.terminal:  # a check runs alone
                self.stream.write(f"  [{self.count + 1}/{self.total}] checking {action.target} ...\n")
            self.stream.flush()
            return
        self.count += 1
        if kind == "done":
            line = f"{action.kind} {action.target}: done in {details['seconds']:.2f}s"
        else:
            line = f"{action.kind} {action.target}: FAILED"
        prefix = f"  [{self.count}/{self.total}] " if self.terminal else f"{cluster}: [{self.count}/{self.total}] "
        self.stream.write(prefix + line + "\n")
        self.stream.flush()


@dataclass
class FleetOutcome:
    """How each cluster of an apply ended: done, failed (with its error) or never started."""

    reports: list[RunReport] = field(default_factory=list)
    failed: dict[str, CareconcileError] = field(default_factory=dict)
    not_started: list[str] = field(default_factory=list)


def run_plan(plan: PlanDocument, loaded: LoadedSpec, accesses: dict[str, ClusterAccess], *,
             until: int | None = None, phase_timeout: float = 300.0, stream: TextIO = sys.stdout,
             locks: dict[str, ClusterLock | LockSet] | None = None, max_parallel_clusters: int = 1,
             keep_going: bool = False,
             open_log: Callable[[ClusterAccess, str], ApplyLog] = ApplyLog) -> list[RunReport]:
    """Run every cluster's actions in order, ``max_parallel_clusters`` clusters at a time
    (a wave). After a wave in which a cluster failed, later waves start only with
    ``keep_going``. The caller holds the locks. Raises when any cluster failed."""
    progress = Progress(total=sum(1 for a in plan.actions() if until is None or a.phase <= until), stream=stream)
    # A cluster's authorities run one after another, under its one lock.
    by_cluster: dict[str, list[ClusterPlan]] = {}
    for cluster_plan in plan.clusters:
        if cluster_plan.actions:
            by_cluster.setdefault(cluster_plan.cluster, []).append(cluster_plan)
    pending = list(by_cluster.values())
    waves = [pending[i:i + max_parallel_clusters] for i in range(0, len(pending), max_parallel_clusters)]
    outcome = FleetOutcome()
    # Set on Ctrl-C during a wave: the wave's other clusters stop before their next action,
    # so that no cluster is changed after the locks are released.
    interrupted = threading.Event()

    def run_one(authorities: list[ClusterPlan]) -> tuple[list[RunReport], CareconcileError | None]:
        """The reports of the cluster's authorities that finished, and its failure if one
        failed: those before it stay done, and are reported as such."""
        reports = []
        for cluster in authorities:
            try:
                access = accesses[cluster.cluster].for_authority(cluster.authority)
                reports.append(_run_cluster(plan, cluster, loaded, access, until=until,
                                            phase_timeout=phase_timeout, progress=progress,
                                            lock=(locks or {}).get(cluster.cluster), interrupted=interrupted,
                                            open_log=open_log))
            except CareconcileError as exc:  # this cluster's failure; the others of its wave finish
                return reports, exc
        return reports, None

    for index, wave in enumerate(waves):
        if outcome.failed and not keep_going:
            outcome.not_started += [cluster[0].cluster for later in waves[index:] for cluster in later]
            break
        for authorities, (reports, error) in zip(wave, map_bounded(run_one, wave, max_parallel_clusters,
                                                                   interrupted=interrupted)):
            outcome.reports += reports
            if error is not None:
                outcome.failed[authorities[0].cluster] = error
    if outcome.failed:
        finished = [report for report in outcome.reports if report.cluster in outcome.failed]
        if finished:  # what a failed cluster did get done, before the error is printed
            stream.write("\n" + "".join(
                f"{report.cluster} ({report.authority}): {_report_result(report)} before the failure, "
                f"{len(report.done)} actions done.\n" for report in finished))
            stream.flush()
        raise _fleet_failure(outcome, len(pending))
    return outcome.reports


def _report_result(report: RunReport) -> str:
    return f"stopped after phase {report.stopped_after_phase}" if report.stopped_after_phase else "finished"


def _fleet_failure(outcome: FleetOutcome, clusters: int) -> CareconcileError:
    if clusters == 1:
        return next(iter(outcome.failed.values()))
    lines = [f"{len(outcome.failed)} of {clusters} clusters failed:"]
    lines += [f"  {name}: {error}" for name, error in outcome.failed.items()]
    finished = [name for name in dict.fromkeys(report.cluster for report in outcome.reports)
                if name not in outcome.failed]
    if finished:
        lines.append("  finished: " + ", ".join(finished))
    if outcome.not_started:
        lines.append("  not started (an earlier wave failed): " + ", ".join(outcome.not_started))
    error = RotationError("\n".join(lines), hint="fix the failed clusters, then plan again: `careconcile plan SPEC` "
                          "resumes each cluster where it stopped")
    error.__cause__ = next(iter(outcome.failed.values()))
    return error


PLANNED_PREFIX = "planned: "


def log_header(operation: str, cluster: ClusterPlan, until: int | None) -> str:
    """The first line an authority's run writes to the log: the cluster, the authority (one
    log holds every authority of a run), how many actions, from which CA to which."""
    return (f"{operation} cluster {cluster.cluster} ({cluster.authority}): {len(cluster.actions)} actions, "
            f"from {cluster.old_ca} to {cluster.new_ca}" + (f", until phase {until}" if until else ""))


def _run_cluster(plan: PlanDocument, cluster: ClusterPlan, loaded: LoadedSpec, access: ClusterAccess, *,
                 until: int | None, phase_timeout: float, progress: Progress,
                 lock: ClusterLock | LockSet | None, interrupted: threading.Event | None = None,
                 open_log: Callable[[ClusterAccess, str], ApplyLog] = ApplyLog) -> RunReport:
    if lock is not None:
        # The lock was taken before the first wave and is renewed only by its own cluster's
        # run: a cluster of a later wave may have waited past its TTL. Renewing it first
        # fails this cluster, before any change, if another run took the lock over meanwhile.
        lock.renew()
    desired = resolve_authority(loaded.document, access.cluster, access.layout.name)
    log = open_log(access, plan.operation)
    log.write(log_header(plan.operation, cluster, until))
    # What this run re-derived and set out to do, in order: a run that dies leaves a record
    # of what it meant to do after its last "done" line.
    log.write(f"{PLANNED_PREFIX}{json.dumps([action.id for action in cluster.actions])}")

    def on_event(kind: str, action: Action, details: dict) -> None:
        if kind == "start":
            change = f" [{', '.join(action.change.before)}] -> [{', '.join(action.change.after)}]" \
                if action.change else ""
            log.write(f"start {action.id}{change}: {action.reason}")
        else:
            log.write(f"{kind} {action.id}" + (f" ({details['seconds']:.3f}s)" if "seconds" in details else "")
                      + (f": {details['error']}" if "error" in details else ""))
        progress.event(cluster.cluster, kind, action, details)

    renew = _throttled(lock.renew) if lock is not None else (lambda: None)

    def heartbeat() -> None:  # the executor calls it before every action and while it waits
        if interrupted is not None and interrupted.is_set():
            raise RotationError(f"cluster {cluster.cluster}: interrupted; stopped before its next action",
                                hint="plan again to see where it stopped; apply resumes it")
        renew()

    executor = Executor(access, desired, on_event=on_event, phase_timeout=phase_timeout, heartbeat=heartbeat)
    # What the API clients have to say (a busy server's backoff, an exec plugin's stderr)
    # goes to this run's log while it runs.
    clients = {id(c): c for c in (access.client, access.lock_client,
                                  access.management.client if access.management is not None else None)
               if isinstance(c, KubeClient)}
    before = {key: client.log for key, client in clients.items()}
    for client in clients.values():
        client.log = lambda message: log.write(f"api: {message}")
    try:
        report = executor.run(cluster, until=until)
        log.write("stopped after phase %d" % until if report.stopped_after_phase else "finished")
    finally:
        for key, client in clients.items():
            client.log = before[key]
        log.close()
    return report


# While a renewal fails for want of the API, how soon it is tried again.
RENEW_RETRY_SECONDS = 5.0


def _throttled(renew: Callable[[], object], every: float = 20.0, tolerate: float = 300.0) -> Callable[[], None]:
    """Renew the lock at most every ``every`` seconds; its TTL is minutes. While the API
    cannot be reached (a restart of the only etcd member or apiserver), or answers 401, 403
    or 429 as an apiserver does while it starts (its authorizer not yet synced), a renewal
    is tried again at the next heartbeat, for up to ``tolerate`` seconds."""
    last = [time.monotonic()]
    failing_since: list[float | None] = [None]

    def heartbeat() -> None:
        now = time.monotonic()
        if now - last[0] < every:
            return
        try:
            renew()
        except (ClusterUnreachableError, APIError) as exc:
            if isinstance(exc, APIError) and exc.status < 500 and exc.status not in (401, 403, 429):
                raise
            failing_since[0] = failing_since[0] or now
            if now - failing_since[0] > tolerate:
                raise
            last[0] = now - every + RENEW_RETRY_SECONDS  # not at every heartbeat: each try may wait its timeout
            return
        last[0], failing_since[0] = time.monotonic(), None
    return heartbeat
