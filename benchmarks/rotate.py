"""Time a full cluster-CA rotation of 1 control plane with 3 and with 50 workers, per phase.

    .venv/bin/python benchmarks/rotate.py [--repeats 3] [--workers 3 50]

Each repeat raises the spec's rotation counter on the same sandbox and applies it, the
way `careconcile apply SPEC --auto-approve` does (lock, observe, plan, run). Prints a
markdown table of medians (and min/max) measured in this one run; the results in
docs/performance.md come from it. Sandboxes live in a temporary directory.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from reconciler import sandbox
from reconciler.core.plan import PHASES
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths
from reconciler.sandbox.binaries import KUBERNETES_VERSION, require_binaries
from reconciler.shell import session
from reconciler.shell.specfile import load_spec

COLUMNS = ["plan", *(f"{number} {name}" for number, name in PHASES.items()), "total", "actions"]


def rotate_once(spec: Path, rotation: int, workspace: Path) -> dict[str, float]:
    spec.write_text(re.sub(r"rotation: \d+", f"rotation: {rotation}", spec.read_text()))
    started = time.monotonic()
    loaded = load_spec(spec)
    accesses = session.open_clusters(loaded, workspace)
    with session.locked(accesses, "apply", lambda message: None) as locks:
        plan = session.make_plan(loaded, accesses)
        planned = time.monotonic() - started
        [report] = session.run_plan(plan, loaded, accesses, locks=locks, stream=io.StringIO())
    sample = {"plan": planned, "total": time.monotonic() - started, "actions": float(len(report.done))}
    for number, name in PHASES.items():
        sample[f"{number} {name}"] = report.phase_seconds.get(number, 0.0)
    return sample


def measure(workers: int, repeats: int, workspace: Path) -> dict[str, list[float]]:
    name = f"rotate-{workers}"
    info = sandbox.up(name, control_planes=1, workers=workers)
    samples: dict[str, list[float]] = {column: [] for column in COLUMNS}
    try:
        for attempt in range(repeats):
            sample = rotate_once(Path(info.spec), attempt + 1, workspace)
            for column in COLUMNS:
                samples[column].append(sample[column])
            print(f"  workers={workers} rotation {attempt + 1}: {sample['total']:.1f}s", file=sys.stderr)
    finally:
        sandbox.down(SandboxPaths.named(name))
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[3, 50])
    args = parser.parse_args()
    require_binaries()
    with tempfile.TemporaryDirectory(prefix="careconcile-bench-") as root:
        os.environ[ROOT_ENV] = root
        workspace = Path(root, "workspace")
        results = {workers: measure(workers, args.repeats, workspace) for workers in args.workers}
    print(f"Kubernetes {KUBERNETES_VERSION}, {os.cpu_count()} cores, {args.repeats} rotations each, seconds "
          "(median, min-max); a phase's time includes its check on the live cluster.\n")
    print("| workers | " + " | ".join(COLUMNS) + " |")
    print("|---:|" + "---:|" * len(COLUMNS))
    for workers, samples in results.items():
        cells = [f"{statistics.median(v):.0f}" if column == "actions" else
                 f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for column, v in samples.items()]
        print(f"| {workers} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
