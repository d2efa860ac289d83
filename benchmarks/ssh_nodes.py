"""Time connecting to a sandbox's nodes over SSH, and reading them, at several parallelisms.

    .venv/bin/python benchmarks/ssh_nodes.py [--repeats 3] [--workers 50] [--parallelism 8 16]
                                             [--latency 20]

Starts one sandbox of 1 control plane and ``--workers`` kwok workers with an sshd
(`sandbox up --ssh`) and a toxiproxy server (``make toxiproxy``) whose proxy delays each
direction between careconcile and that sshd by ``--latency`` milliseconds. Then, per
repeat and for each transport (``ssh``: the sshd on 127.0.0.1; ``ssh-latency``: through
the proxy) and each parallelism, taking turns (the order reversed every other repeat):
opens every node of the sandbox's spec ``N`` at a time (``reconciler.shell.nodes.
open_nodes``: the SSH connection, the SFTP session and the root's check), then reads the
files a node's first cluster-CA observation reads (``read_many``, ``N`` nodes at a time),
and closes them. Prints a markdown table of medians (min-max) measured in this one run:
opening, reading, and both. ``NODE_PARALLELISM`` (connecting) and
``REMOTE_NODE_PARALLELISM`` (reading nodes reached over the network; the executor writes
them as many at a time, which this script does not time: see ``rotate.py``) of
``reconciler/shell/nodes.py`` were chosen by it. The sandbox and toxiproxy are stopped at
the end, on an error and on Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _script  # benchmarks/_script.py, beside this script
import rotate  # for its spec through toxiproxy
from reconciler import sandbox
from reconciler.core.authorities import CLUSTER_CA
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths
from reconciler.sandbox.binaries import KUBERNETES_VERSION, require_binaries
from reconciler.shell.fleet import map_bounded
from reconciler.shell.nodes import close_nodes, open_nodes
from reconciler.shell.observe import site_files
from reconciler.shell.specfile import load_spec

SANDBOX = "ssh-nodes"


def open_and_read(spec: Path, parallelism: int) -> tuple[float, float]:
    """Seconds to open every node of the spec's one cluster, and then to read its files."""
    loaded = load_spec(spec)
    [cluster] = loaded.document.spec.clusters
    roles = {node.name: node.role for node in cluster.nodes}
    started = time.monotonic()
    nodes = open_nodes(cluster.nodes, loaded.path.parent, parallelism=parallelism)
    try:
        opened = time.monotonic()
        map_bounded(lambda name: nodes[name].read_many(site_files(CLUSTER_CA, roles[name])), list(nodes),
                    parallelism)
        return opened - started, time.monotonic() - opened
    finally:
        close_nodes(nodes)


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--parallelism", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--latency", type=int, default=20, metavar="MS",
                        help="the delay toxiproxy adds to each direction (default: 20)")
    args = parser.parse_args()
    if args.repeats < 1 or args.workers < 0 or min(args.parallelism) < 1:
        parser.error("--repeats and --parallelism must be at least 1, --workers at least 0")
    require_binaries()
    from reconciler.sandbox.toxiproxy import Toxiproxy

    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="careconcile-bench-") as root:
        os.environ[ROOT_ENV] = root
        rotate.TOXIPROXY, rotate.LATENCY_MS = Toxiproxy(), args.latency
        try:
            info = sandbox.up(SANDBOX, control_planes=1, workers=args.workers, ssh=True)
            specs = {"ssh": Path(info.spec), "ssh-latency": rotate.through_toxiproxy(Path(info.spec), info)}
            turns = [(transport, parallelism) for transport in specs for parallelism in args.parallelism]
            for attempt in range(args.repeats):
                for transport, parallelism in (turns if attempt % 2 == 0 else turns[::-1]):
                    opening, reading = open_and_read(specs[transport], parallelism)
                    samples.setdefault((transport, parallelism), []).append((opening, reading))
                    print(f"  {transport}, {parallelism} at a time: open {opening:.2f}s, read {reading:.2f}s",
                          file=sys.stderr)
        finally:
            try:
                _script.teardown(SandboxPaths.named(SANDBOX))
            finally:
                rotate.TOXIPROXY.stop()
    print(f"Kubernetes {KUBERNETES_VERSION}, {os.cpu_count()} cores, 1 control plane and {args.workers} workers, "
          f"{args.repeats} repeats, seconds (median, min-max); ssh-latency: {args.latency} ms each way.\n")
    print("| transport | nodes at a time | open | read | both |")
    print("|---|---:|---:|---:|---:|")
    for (transport, parallelism), values in samples.items():
        print(f"| {transport} | {parallelism} | {cell([v[0] for v in values])} | {cell([v[1] for v in values])} | "
              f"{cell([v[0] + v[1] for v in values])} |")
    return 0


if __name__ == "__main__":
    _script.run(main)
