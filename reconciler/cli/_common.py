"""What the plan/apply commands share: options, loading a spec or a plan, printing plans."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from reconciler._files import atomic_write, read_limited
from reconciler.core import render
from reconciler.core.effects import Places, places_of
from reconciler.core.plan import PHASES, PlanDocument
from reconciler.core.spec import dns_label, relative_paths
from reconciler.errors import CareconcileError, OutputFileError
from reconciler.shell.fleet import DEFAULT_PARALLELISM
from reconciler.shell.session import PLAN_MAX_BYTES, spec_digest, spec_place
from reconciler.shell.specfile import LoadedSpec, load_spec_text

FORMATS = {"text": render.text, "json": render.as_json, "markdown": render.markdown}


def dns_label_argument(what: str) -> Callable[[str], str]:
    """An argparse type for a name that goes into API paths or file paths: a DNS label."""
    def check(value: str) -> str:
        try:
            return dns_label(value, what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return check


def add_workspace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", metavar="DIR",
                        help="where logs, new kubeconfigs and workspace state go "
                             "(default: $CARECONCILE_WORKSPACE or ./careconcile-workspace)")


def add_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=tuple(FORMATS), default="text", help="output format (default: text)")


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return number


def add_parallelism_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parallelism", type=_positive, default=DEFAULT_PARALLELISM, metavar="N",
                        help=f"read at most N clusters at once (default: {DEFAULT_PARALLELISM})")


def add_max_parallel_clusters_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-parallel-clusters", type=_positive, default=1, metavar="N",
                        help="rotate up to N clusters at once, in waves (default: 1, one after the other)")
    parser.add_argument("--keep-going", action="store_true",
                        help="go on with the next waves after a cluster fails (default: stop after its wave)")


def print_plan(plan: PlanDocument, output_format: str, *, plan_file: Path | None = None,
               loaded: LoadedSpec | None = None, workspace: str | None = None) -> None:
    """``plan_file`` is the saved plan, which a markdown plan cut to a comment's size points to.
    ``loaded`` is the spec the plan was made from: text and markdown then show each node's
    paths with its root and transport; without it, from the spec the plan holds."""
    if output_format == "json":
        # JSON escapes control characters itself; a key in a plan file's text is left out here too.
        sys.stdout.write(render.printable(render.as_json(plan)))
    else:
        places = places_of(loaded.document, workspace) if loaded is not None else _places_of_saved(plan)
        if output_format == "markdown":
            sys.stdout.write(render.markdown(plan, plan_file=str(plan_file) if plan_file is not None else None,
                                             places=places))
        else:
            sys.stdout.write(render.text(plan, places))
    sys.stdout.flush()


def _places_of_saved(plan: PlanDocument) -> Places:
    """The places of a saved plan's spec, which the plan holds (apply plans from it)."""
    try:
        return places_of(load_spec_text(plan.spec_text, place=spec_place(plan), source="the plan's spec").document)
    except CareconcileError:  # a spec this careconcile no longer reads; apply says so
        print("careconcile: note: the plan's spec cannot be read; paths are shown as the nodes' own, without the "
              "node roots and transports the spec names", file=sys.stderr)
        return Places()


def where_relative_paths_resolve(plan: PlanDocument) -> str:
    """What `show` says of the spec's relative paths: which directory apply, run from here
    without --spec, resolves them against, and why."""
    place = spec_place(plan)
    relative = relative_paths(load_spec_text(plan.spec_text, place=place, source="the plan's spec").document)
    try:
        found = ("there" if spec_digest(place) == plan.spec_digest
                 else "there but another spec (apply refuses the plan as stale)")
    except OSError:
        found = ("not there (apply refuses the plan while the spec has relative paths)" if relative
                 else "not there (not needed: no relative path)")
    what = f"{len(relative)} relative path{'s' if len(relative) != 1 else ''}" if relative else "no relative path"
    return (f"Spec: embedded ({plan.spec_digest}), made from {plan.spec_path}. It has {what}; `apply` run from "
            f"here resolves them against {place.parent} (the directory of {plan.spec_relative_path}, the spec's path "
            f"from where `plan` ran, taken from here; the spec file is {found}); `apply --spec FILE` against FILE's "
            "directory.\n")


def phase_number(value: str) -> int:
    """``--until`` takes a phase number or name (trust-both, reissue, ...)."""
    names = {name: number for number, name in PHASES.items()}
    if value.isdigit() and int(value) in PHASES:
        return int(value)
    if value in names:
        return names[value]
    raise argparse.ArgumentTypeError(
        f"unknown phase {value!r}; use 1-5 or one of: {', '.join(PHASES.values())}")


def is_plan_file(path: Path) -> bool:
    """Telling a saved plan from a spec by content, not name: a plan is a JSON object with
    ``format_version``; a spec (YAML, in block or flow style, or JSON) has ``apiVersion`` and
    ``kind`` instead. A file that is not JSON, or cannot be read, is taken for a spec, whose
    loader then says what is wrong with it, unless it names ``format_version`` (a plan file
    cut short or edited into invalid JSON: the plan loader says where)."""
    try:
        raw = read_limited(path, PLAN_MAX_BYTES)
    except OSError:
        return False
    if not raw.lstrip().startswith(b"{"):
        return False
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return b'"format_version"' in raw
    return isinstance(document, dict) and "format_version" in document


def write_output(path: Path, content: str) -> None:
    """Write a file the user asked for (a saved plan, a metrics file) in one piece."""
    try:
        atomic_write(path, content.encode(), 0o644)
    except OSError as exc:
        raise OutputFileError(f"{path}: cannot write it: {exc.strerror or exc}") from exc
