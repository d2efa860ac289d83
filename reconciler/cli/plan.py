"""`careconcile plan SPEC` and `careconcile show PLANFILE`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler.cli._common import (add_format_option, add_parallelism_option, add_workspace_option, print_plan,
                                    where_relative_paths_resolve, write_output)
from reconciler.core import render
from reconciler.errors import EXIT_CHANGES, EXIT_OK, CareconcileError, PlanConflictError
from reconciler.shell import session
from reconciler.shell.specfile import load_spec


def register(commands: Any) -> None:
    plan = commands.add_parser("plan", help="show the actions that bring the clusters to the spec")
    plan.add_argument("spec", type=Path, metavar="SPEC")
    plan.add_argument("--out", type=Path, metavar="PLANFILE", help="save the plan for `careconcile apply PLANFILE`")
    plan.add_argument("--detailed-exitcode", action="store_true",
                      help="exit 0 when nothing changes, 2 when the plan has changes, 1 on error")
    plan.add_argument("--cluster", metavar="NAME", help="only this cluster of the spec")
    add_format_option(plan)
    add_parallelism_option(plan)
    add_workspace_option(plan)
    plan.set_defaults(handler=_plan)

    show = commands.add_parser("show", help="print a saved plan")
    show.add_argument("planfile", type=Path, metavar="PLANFILE")
    add_format_option(show)
    show.set_defaults(handler=_show)


def _plan(args: argparse.Namespace) -> int:
    loaded = load_spec(args.spec)
    accesses = session.open_clusters(loaded, session.workspace_root(args.workspace), args.cluster)
    plan = session.make_plan(loaded, accesses, parallelism=args.parallelism)
    blocking = [f for c in plan.clusters for f in c.findings if f.blocking]
    print_plan(plan, args.format, plan_file=args.out if not blocking else None,  # a blocked plan is not saved
               loaded=loaded, workspace=str(session.workspace_root(args.workspace)))
    if blocking:
        raise PlanConflictError(f"{len(blocking)} finding(s) block the plan: "
                                + "; ".join(f"{f.subject}: {f.message}" for f in blocking))
    if args.out:
        write_output(args.out, render.as_json(plan))
        print(f"\nSaved the plan to {args.out}. To carry it out: careconcile apply {args.out}", file=sys.stderr)
    changes = any(action.kind != "verify" for action in plan.actions())
    return EXIT_CHANGES if args.detailed_exitcode and changes else EXIT_OK


def _show(args: argparse.Namespace) -> int:
    plan = session.load_plan(args.planfile)
    print_plan(plan, args.format, plan_file=args.planfile)
    try:
        where = where_relative_paths_resolve(plan)
    except CareconcileError:
        return EXIT_OK  # the plan's spec cannot be read; print_plan said so
    # Text gets it after the plan; JSON and markdown stay what `plan --format` prints.
    out = sys.stdout if args.format == "text" else sys.stderr
    out.write(("\n" if out is sys.stdout else "") + render.printable(where))
    out.flush()
    return EXIT_OK
