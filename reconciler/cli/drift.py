"""`careconcile drift SPEC...`: does every cluster still match its spec? For scheduled jobs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler.cli._common import add_parallelism_option, add_workspace_option, write_output
from reconciler.core import drift_render, metrics
from reconciler.errors import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, UsageError
from reconciler.shell import drift, session
from reconciler.shell.specfile import load_spec

EPILOG = """\
exit codes: 0 every cluster matches its spec, 2 a cluster drifts, 1 a cluster could not be
read (or another error); the report covers every cluster either way.

metrics (--metrics-file, Prometheus text format, times as Unix seconds):
""" + "\n".join(f"  {name}: {help_text}" for name, (help_text, _) in metrics.METRICS.items())


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "drift", help="report how the clusters depart from their specs (read-only)",
        description="Read every cluster of the specs and report CA drift. Takes no lock and changes nothing.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", type=Path, nargs="+", metavar="SPEC")
    parser.add_argument("--format", choices=tuple(drift_render.FORMATS), default="text",
                        help="report format (default: text)")
    parser.add_argument("--metrics-file", type=Path, metavar="FILE",
                        help="also write Prometheus metrics to FILE (atomically: a temporary file, then a rename)")
    parser.add_argument("--cluster", metavar="NAME", help="only clusters of this name")
    add_parallelism_option(parser)
    add_workspace_option(parser)
    parser.set_defaults(handler=_drift)


def _drift(args: argparse.Namespace) -> int:
    paths = [path.resolve() for path in args.specs]
    if len(set(paths)) != len(paths):
        raise UsageError("a spec is named twice: " + ", ".join(str(p) for p in args.specs))
    specs = [load_spec(path) for path in args.specs]
    report = drift.check(specs, session.workspace_root(args.workspace), only=args.cluster,
                         parallelism=args.parallelism)
    sys.stdout.write(drift_render.FORMATS[args.format](report))
    sys.stdout.flush()
    if args.metrics_file is not None:
        try:
            previous = args.metrics_file.read_text(errors="replace")
        except OSError:
            previous = ""
        write_output(args.metrics_file, metrics.exposition(report, previous=previous))
    if report.totals.errors:
        return EXIT_ERROR
    return EXIT_CHANGES if report.totals.drifted else EXIT_OK
