"""`careconcile validate SPEC...`: check spec files without touching any cluster."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reconciler.errors import EXIT_OK, SpecError
from reconciler.shell.specfile import load_spec


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "validate", help="check spec files; every problem is reported as FILE:LINE:COLUMN: field: message")
    parser.add_argument("specs", nargs="+", type=Path, metavar="SPEC", help="a spec file")
    parser.set_defaults(handler=_validate)


def _validate(args: argparse.Namespace) -> int:
    failures: list[SpecError] = []
    for path in args.specs:
        try:
            loaded = load_spec(path)
        except SpecError as exc:  # check the other files too, then report everything
            failures.append(exc)
            continue
        clusters = len(loaded.document.spec.clusters)
        print(f"{path}: valid ({clusters} cluster{'' if clusters == 1 else 's'})")
    if len(failures) == 1:
        raise failures[0]
    if failures:
        problems = [problem for failure in failures for problem in failure.problems]
        raise SpecError(f"{len(failures)} of {len(args.specs)} spec files are invalid ({len(problems)} errors)",
                        problems=problems)
    return EXIT_OK
