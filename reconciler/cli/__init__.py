"""The `careconcile` command line. Each command group lives in a module of its own that
registers its parser; errors become exit codes here and only here."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Iterator

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
from reconciler.core.render import printable
from reconciler.errors import EXIT_TERMINATED, EXIT_USAGE, CareconcileError, exit_code_for


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, which CI runners and Kubernetes send to stop a job: handled as Ctrl-C is, so
    the same cleanup runs (temp files removed, locks released); the exit code is 143, as a
    process killed by SIGTERM reports it."""

    exit_code = EXIT_TERMINATED


def _terminated(signum: int, frame: object) -> None:
    # Once: a second SIGTERM during the cleanup must not cut the cleanup short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """In the main thread only (where Python runs signal handlers); the previous handler
    comes back afterwards, for callers such as the tests that run ``main`` in-process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage; 2 means "changes" to careconcile
        return EXIT_USAGE if exc.code not in (0, None) else 0
    try:
        with _sigterm_as_interrupt():
            return args.handler(args)
    except CareconcileError as exc:
        # Messages carry names and text from files and clusters: no control character of
        # theirs reaches the terminal.
        print(f"careconcile: error: {printable(str(exc))}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"careconcile: {how}", file=sys.stderr)
        return exit_code_for(exc)
