"""What every benchmark script does around its ``main``: SIGTERM tears its sandboxes down as
Ctrl-C does (each script stops them in a ``finally``), and either exits 130."""

from __future__ import annotations

import signal
import sys
from typing import Callable


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(main: Callable[[], int]) -> None:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the sandboxes were stopped", file=sys.stderr)
        sys.exit(130)
