"""Time `sandbox up` and `sandbox down` for 1 control plane with 3 and with 50 workers.

    .venv/bin/python benchmarks/sandbox_startup.py [--repeats 3] [--workers 3 50]

Prints a markdown table of medians (and min/max) measured in this one run; the results
in docs/performance.md come from it. Sandboxes live in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from reconciler import sandbox
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths
from reconciler.sandbox.binaries import KUBERNETES_VERSION, require_binaries


def measure(workers: int, repeats: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"up": [], "layout": [], "apiservers_ready": [], "nodes_ready": [],
                                       "down": []}
    for attempt in range(repeats):
        name = f"bench-{workers}-{attempt}"
        info = sandbox.up(name, control_planes=1, workers=workers)
        samples["up"].append(info.startup_seconds)
        for key in ("layout", "apiservers_ready", "nodes_ready"):
            samples[key].append(info.timings[key])
        started = time.monotonic()
        sandbox.down(SandboxPaths.named(name))
        samples["down"].append(time.monotonic() - started)
        print(f"  workers={workers} attempt {attempt + 1}: up {info.startup_seconds:.1f}s", file=sys.stderr)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[3, 50])
    args = parser.parse_args()
    require_binaries()
    with tempfile.TemporaryDirectory(prefix="careconcile-bench-") as root:
        os.environ[ROOT_ENV] = root
        results = {workers: measure(workers, args.repeats) for workers in args.workers}
    print(f"Kubernetes {KUBERNETES_VERSION}, {os.cpu_count()} cores, {args.repeats} runs each, seconds "
          "(median, min-max); phases are time since `up` started.\n")
    print("| workers | up (ready) | layout (keys, files) | apiservers /readyz | nodes Ready | down |")
    print("|---:|---:|---:|---:|---:|---:|")
    for workers, samples in results.items():
        cells = [f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for v in samples.values()]
        print(f"| {workers} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
