"""What every benchmark script does around its ``main``: SIGTERM tears its sandboxes down as
Ctrl-C does (each script stops them in a ``finally``), and either exits 130."""

from __future__ import annotations

import signal
import sys
from typing import Callable

from reconciler import sandbox
from reconciler.sandbox._paths import SandboxPaths


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def teardown(paths: SandboxPaths) -> None:
    """Stop a sandbox (its sshd too) and remove it; a second Ctrl-C does not cut this short."""
    if not paths.directory.is_dir():
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sandbox.down(paths)
    finally:
        signal.signal(signal.SIGINT, previous)


def run(main: Callable[[], int]) -> None:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the sandboxes were stopped", file=sys.stderr)
        sys.exit(130)
