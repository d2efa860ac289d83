"""The `careconcile` command line. Each command group lives in a module of its own that
registers its parser; errors become exit codes here and only here."""

from __future__ import annotations

import argparse
import sys

from reconciler import __version__
from reconciler.cli import apply as apply_command
from reconciler.cli import drift as drift_command
from reconciler.cli import pin as pin_command
from reconciler.cli import plan as plan_command
from reconciler.cli import register as register_command
from reconciler.cli import sandbox as sandbox_command
from reconciler.cli import schema as schema_command
from reconciler.cli import unlock as unlock_command
from reconciler.cli import update as update_command
from reconciler.cli import validate as validate_command
from reconciler.errors import EXIT_USAGE, CareconcileError, exit_code_for


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="careconcile",
        description="Keeps the certificate authorities of Kubernetes clusters in a declared state.",
    )
    parser.add_argument("--version", action="version", version=f"careconcile {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    plan_command.register(commands)
    apply_command.register(commands)
    drift_command.register(commands)
    unlock_command.register(commands)
    update_command.register(commands)
    register_command.register(commands)
    sandbox_command.register(commands)
    validate_command.register(commands)
    pin_command.register(commands)
    schema_command.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage; 2 means "changes" to careconcile
        return EXIT_USAGE if exc.code not in (0, None) else 0
    try:
        return args.handler(args)
    except CareconcileError as exc:
        print(f"careconcile: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt as exc:
        print("careconcile: interrupted", file=sys.stderr)
        return exit_code_for(exc)
