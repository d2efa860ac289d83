"""How long reading a spec takes on hostile files: comments, aliases, nesting.

    .venv/bin/python benchmarks/yaml_loading.py [--sizes 1,2,5,20] [--old DIR]

Each size is a valid spec followed by that many MB of comment lines; the loader's size limit
is raised for the run so that sizes above it are timed too (the CLI refuses them before
parsing). ``--old DIR`` times the loader of another checkout of careconcile (``git archive
REV | tar -x -C DIR``) the same way, in a subprocess with a 2 GiB address-space limit and a
time limit, to show where it went quadratic. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._script import run  # noqa: E402
from reconciler.core import yamldoc  # noqa: E402

SPEC = (ROOT / "specs/fleet-with-defaults.yaml").read_text()
COMMENT = "# " + "c" * 77 + "\n"  # 80 bytes


def comments(megabytes: float) -> str:
    return SPEC + COMMENT * int(megabytes * 1024 * 1024 / len(COMMENT))


def alias_bomb() -> str:
    """Nine levels of nine aliases each: 9**9 (387 million) strings from a 400-byte file."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


_OLD = """
import sys, time
from pathlib import Path
from reconciler.shell import specfile
path = Path(sys.argv[1])
start = time.perf_counter()
try:
    specfile._parse(path, path.read_text())
    outcome = "parsed"
except BaseException as exc:
    outcome = type(exc).__name__
print(f"{time.perf_counter() - start:.2f} {outcome}")
"""


def time_old(old: Path, text: str, limit_seconds: int) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        handle.write(text)
        handle.flush()

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

        try:
            result = subprocess.run([sys.executable, "-c", _OLD, handle.name], cwd=old, capture_output=True,
                                    text=True, timeout=limit_seconds, preexec_fn=limits)
        except subprocess.TimeoutExpired:
            return f"> {limit_seconds} s (stopped)"
        seconds, _, outcome = result.stdout.strip().partition(" ")
        return f"{seconds} s ({outcome or result.stderr.strip().splitlines()[-1]})"


def time_new(text: str) -> str:
    limits = dataclasses.replace(yamldoc.SPEC, max_bytes=1 << 30)
    start = time.perf_counter()
    try:
        yamldoc.load(text, limits)
        outcome = "parsed"
    except yamldoc.DocumentError as exc:
        outcome = f"refused: {exc.problem}"
    return f"{time.perf_counter() - start:.2f} s ({outcome})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,2,5", help="MB of comments, comma-separated")
    parser.add_argument("--old", type=Path, help="a checkout of an older careconcile to compare")
    parser.add_argument("--old-timeout", type=int, default=120)
    args = parser.parse_args()
    cases = [(f"{size} MB of comments", comments(float(size))) for size in args.sizes.split(",")]
    cases += [("alias bomb (9**9 nodes, 404 bytes)", alias_bomb()), ("nested 400 deep", nested(400))]
    print("| file | this checkout |" + (" old |" if args.old else ""))
    print("|---|---|" + ("---|" if args.old else ""))
    for name, text in cases:
        row = f"| {name} | {time_new(text)} |"
        if args.old:
            row += f" {time_old(args.old, text, args.old_timeout)} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    run(main)
