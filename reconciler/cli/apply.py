"""`careconcile apply SPEC|PLANFILE` and `careconcile rollback SPEC`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler.cli._common import (add_max_parallel_clusters_option, add_parallelism_option, add_workspace_option,
                                    is_plan_file, phase_number, print_plan)
from reconciler.core.plan import PHASES, PlanDocument, summary_line
from reconciler.errors import EXIT_OK, PlanConflictError, PlanFileError, UsageError
from reconciler.shell import session
from reconciler.shell.specfile import load_spec


def register(commands: Any) -> None:
    apply = commands.add_parser("apply", help="carry out a saved plan, or plan a spec and carry it out")
    apply.add_argument("target", type=Path, metavar="SPEC|PLANFILE")
    apply.add_argument("--auto-approve", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    apply.add_argument("--until", type=phase_number, metavar="PHASE",
                       help=f"stop after this phase ({', '.join(f'{n}={name}' for n, name in PHASES.items())})")
    apply.add_argument("--cluster", metavar="NAME", help="only this cluster of the spec")
    apply.add_argument("--spec", type=Path, metavar="FILE",
                       help="with a saved plan: the spec file it was made from (the same digest), whose directory "
                            "the spec's relative paths resolve against (default: the spec's path relative to the "
                            "directory plan ran in, from the working directory)")
    apply.add_argument("--phase-timeout", type=float, default=300.0, metavar="SECONDS",
                       help="how long a phase's check waits for the cluster to show its result (default: 300)")
    add_max_parallel_clusters_option(apply)
    add_parallelism_option(apply)
    add_workspace_option(apply)
    apply.set_defaults(handler=_apply, rollback=False)

    rollback = commands.add_parser("rollback", help="undo a rotation that has not yet distrusted the old CA")
    rollback.add_argument("target", type=Path, metavar="SPEC")
    rollback.add_argument("--auto-approve", action="store_true", help="do not ask for confirmation")
    rollback.add_argument("--cluster", metavar="NAME", help="only this cluster of the spec")
    rollback.add_argument("--phase-timeout", type=float, default=300.0, metavar="SECONDS")
    add_max_parallel_clusters_option(rollback)
    add_parallelism_option(rollback)
    add_workspace_option(rollback)
    rollback.set_defaults(handler=_apply, rollback=True, until=None, spec=None)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _confirm(plan: PlanDocument, auto_approve: bool) -> bool:
    if auto_approve:
        return True
    if not sys.stdin.isatty():
        raise UsageError("no terminal to confirm the plan on; review it and pass --auto-approve, "
                         "or apply a saved plan file")
    answer = input("\nDo you want to perform these actions? Only 'yes' will be accepted.\n  Enter a value: ")
    return answer.strip() == "yes"


def _apply(args: argparse.Namespace) -> int:
    workspace = session.workspace_root(args.workspace)
    if not args.rollback and is_plan_file(args.target):
        return _apply_saved(args, workspace)
    if getattr(args, "spec", None) is not None:
        raise UsageError(f"--spec goes with a saved plan; {args.target} is a spec")
    loaded = load_spec(args.target)
    accesses = session.open_clusters(loaded, workspace, args.cluster)
    operation = "rollback" if args.rollback else "apply"
    with session.locked(accesses, operation, _say) as locks:
        plan = session.make_plan(loaded, accesses, rollback=args.rollback, parallelism=args.parallelism)
        print_plan(plan, "text", loaded=loaded, workspace=str(workspace))
        blocking = [f for c in plan.clusters for f in c.findings if f.blocking]
        if blocking:
            raise PlanConflictError(f"{len(blocking)} finding(s) block the plan; nothing was changed")
        if not any(action.kind != "verify" for action in plan.actions()):
            return EXIT_OK
        if not _confirm(plan, args.auto_approve):
            _say("Apply cancelled; nothing was changed.")
            return EXIT_OK
        for lock in locks.values():  # the answer may have taken a while
            lock.renew()
        reports = session.run_plan(plan, loaded, accesses, until=args.until, phase_timeout=args.phase_timeout,
                                   locks=locks, max_parallel_clusters=args.max_parallel_clusters,
                                   keep_going=args.keep_going)
    _finished(plan, reports, args.until, saved=False)
    return EXIT_OK


def _apply_saved(args: argparse.Namespace, workspace: Path) -> int:
    plan = session.load_plan(args.target)
    if args.cluster is not None:
        if args.cluster not in {c.cluster for c in plan.clusters}:
            raise UsageError(f"{args.target}: the plan has no cluster named {args.cluster!r}")
        plan = plan.model_copy(update={"clusters": [c for c in plan.clusters if c.cluster == args.cluster]})
    loaded = session.saved_spec(plan, args.target, args.spec)  # the plan's own spec, never the file's text
    _say(f"Applying {args.target}: its spec (made from {plan.spec_path}) with relative paths resolved against "
         f"{loaded.base}.")
    planned = {c.cluster for c in plan.clusters}
    missing = planned - {c.name for c in loaded.document.spec.clusters}
    if missing:
        raise PlanFileError(f"{args.target}: the plan's spec does not name cluster(s) "
                            f"{', '.join(sorted(missing))}", hint="make a new plan")
    accesses = session.open_clusters(loaded, workspace, names=planned)  # the clusters the plan is for, no others
    with session.locked(accesses, plan.operation, _say) as locks:
        session.check_not_stale(plan, loaded, accesses, parallelism=args.parallelism)
        reports = session.run_plan(plan, loaded, accesses, until=args.until, phase_timeout=args.phase_timeout,
                                   locks=locks, max_parallel_clusters=args.max_parallel_clusters,
                                   keep_going=args.keep_going)
    _finished(plan, reports, args.until, saved=True)
    return EXIT_OK


def _finished(plan: PlanDocument, reports: list, until: int | None, *, saved: bool) -> None:
    done = sum(len(report.done) for report in reports)
    if until is not None and any(report.stopped_after_phase for report in reports):
        go_on = ("This saved plan is now stale: make a new plan, or run `careconcile apply SPEC`, to go on"
                 if saved else "Run apply again to go on")
        rotating = plan.operation == "apply" and any(c.operation in ("rotate", "resume") for c in plan.clusters)
        undo = "; `careconcile rollback SPEC` undoes the rotation" if rotating and until < 4 else ""
        print(f"\nStopped after phase {until} ({PHASES[until]}): {done} actions done. {go_on}{undo}.")
        return
    what = "Rollback" if plan.operation == "rollback" else "Apply"
    print(f"\n{what} complete! {done} actions done. {summary_line(plan.actions()).replace('Plan: ', 'Changed: ')}")
