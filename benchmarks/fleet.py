"""Time `careconcile drift` over fleets of 1, 4 and 8 sandbox clusters, one cluster at a time
against several at once.

    .venv/bin/python benchmarks/fleet.py [--sizes 1 4 8] [--repeats 5] [--workers 3] [--latency MS]

Starts max(--sizes) sandboxes once (1 control plane, --workers workers each) in a temporary
CARECONCILE_SANDBOX_ROOT, and merges the first N sandbox specs into one fleet spec per size
(tests/integration/fleet.py). Each run is what `careconcile drift FLEETSPEC` does without
the interpreter's start-up: `load_spec` and `reconciler.shell.drift.check`, in this process
(the Python API, not a subprocess), with `parallelism=1` (sequential, `--parallelism 1`)
or the default (`DEFAULT_PARALLELISM`). One unmeasured warm-up run per size and mode, then
the modes alternate, so noise falls on both alike. Every run must find every cluster in
sync. With ``--latency MS`` the sandboxes are reached the way distant clusters are: each
one's nodes over SSH (`sandbox up --ssh`) and both its sshd and its apiserver (the
kubeconfig's server) through toxiproxy (``make toxiproxy``) on 127.0.0.1, which delays
each direction by MS milliseconds; the apiserver certificate's TLS probe (the address in
its manifest) goes direct. Prints a markdown table of medians (min-max) from this one run; the sandboxes are
stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from ruamel.yaml import YAML

import _script  # benchmarks/_script.py, beside this script
from reconciler import sandbox
from reconciler.sandbox._paths import ROOT_ENV
from reconciler.sandbox.binaries import KUBERNETES_VERSION, require_binaries
from reconciler.shell import drift
from reconciler.shell.fleet import DEFAULT_PARALLELISM
from reconciler.shell.specfile import load_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.fleet import merge_specs  # noqa: E402  (one fleet-spec merger for tests and benchmarks)

MODES = {"sequential": 1, "parallel": DEFAULT_PARALLELISM}


def through_toxiproxy(info, proxy, latency_ms: int) -> Path:
    """A copy of the sandbox's spec in its directory whose nodes' sshd and whose apiserver
    are reached through ``proxy`` with ``latency_ms`` each way (keyFile made absolute, so
    that the merged fleet spec elsewhere still finds it)."""
    spec, yaml = Path(info.spec), YAML()
    yaml.width = 4096
    document = yaml.load(spec.read_text())
    [cluster] = document["spec"]["clusters"]
    kubeconfig_path = Path(cluster["kubeconfig"])
    kubeconfig_path = kubeconfig_path if kubeconfig_path.is_absolute() else spec.parent / kubeconfig_path
    kubeconfig = yaml.load(kubeconfig_path.read_text())
    for entry in kubeconfig["clusters"]:
        server = urlsplit(entry["cluster"]["server"])
        port = proxy.delay(f"apiserver-{info.name}-{server.port}", server.port, latency_ms)
        entry["cluster"]["server"] = f"https://{server.hostname}:{port}"
    delayed_kubeconfig = kubeconfig_path.with_name("kubeconfig-latency")
    with delayed_kubeconfig.open("w") as out:
        yaml.dump(kubeconfig, out)
    delayed_kubeconfig.chmod(0o600)
    cluster["kubeconfig"] = str(delayed_kubeconfig)
    sshd = proxy.delay(f"sshd-{info.name}", int(info.ssh["port"]), latency_ms)
    for node in cluster["nodes"]:
        access = node["access"]["ssh"]
        access["port"] = sshd
        access["keyFile"] = str((spec.parent / access["keyFile"]).resolve())
    copy = spec.with_name("spec-latency.yaml")
    with copy.open("w") as out:
        yaml.dump(document, out)
    return copy


def drift_once(spec: Path, workspace: Path, parallelism: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of one drift of the fleet."""
    wall, cpu = time.monotonic(), time.process_time()
    report = drift.check([load_spec(spec)], workspace, parallelism=parallelism)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    if report.totals.in_sync != report.totals.clusters:
        raise SystemExit(f"{spec}: not every cluster is in sync, the timing would mean nothing: "
                         + "; ".join(f"{c.cluster}: {c.status} {c.error or ''}" for c in report.clusters
                                     if c.status != "in-sync"))
    return wall, cpu


def measure(spec: Path, workspace: Path, repeats: int) -> dict[str, dict[str, list[float]]]:
    samples = {mode: {"wall": [], "cpu": []} for mode in MODES}
    for parallelism in MODES.values():
        drift_once(spec, workspace, parallelism)  # warm-up: imports, first connections
    for _ in range(repeats):
        for mode, parallelism in MODES.items():
            wall, cpu = drift_once(spec, workspace, parallelism)
            samples[mode]["wall"].append(wall)
            samples[mode]["cpu"].append(cpu)
    return samples


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--latency", type=int, default=0, metavar="MS",
                        help="reach each sandbox's sshd and apiserver through toxiproxy, MS milliseconds each way")
    args = parser.parse_args()
    require_binaries()
    results = {}
    proxy = None
    if args.latency:
        from reconciler.sandbox.toxiproxy import Toxiproxy

        proxy = Toxiproxy()
    with tempfile.TemporaryDirectory(prefix="careconcile-bench-fleet-") as root:
        os.environ[ROOT_ENV] = root
        workspace = Path(root, "workspace")
        try:
            specs = []
            for index in range(max(args.sizes)):
                started = time.monotonic()
                info = sandbox.up(f"fleet-{index + 1}", control_planes=1, workers=args.workers,
                                  ssh=bool(args.latency))
                specs.append(through_toxiproxy(info, proxy, args.latency) if proxy is not None else info.spec)
                print(f"  sandbox fleet-{index + 1} up in {time.monotonic() - started:.1f}s", file=sys.stderr)
            for size in args.sizes:
                spec = merge_specs(specs[:size], Path(root, f"fleet-{size}.yaml"), name=f"fleet-{size}")
                results[size] = measure(spec, workspace, args.repeats)
                print(f"  {size} clusters: sequential {statistics.median(results[size]['sequential']['wall']):.2f}s, "
                      f"parallel {statistics.median(results[size]['parallel']['wall']):.2f}s", file=sys.stderr)
        finally:  # also on Ctrl-C, and for a sandbox whose `up` was interrupted
            for paths in sandbox.list_sandboxes():
                try:
                    sandbox.down(paths)
                except Exception as exc:  # stop the others all the same
                    print(f"  could not stop {paths.name}: {exc}", file=sys.stderr)
            if proxy is not None:
                proxy.stop()
    print(f"Kubernetes {KUBERNETES_VERSION}, {os.cpu_count()} cores, sandboxes of 1 control plane and "
          f"{args.workers} workers"
          + (f", nodes over SSH, sshd and apiserver through toxiproxy at {args.latency} ms each way"
             if args.latency else "") + f"; drift through the Python API, {args.repeats} runs per cell; seconds, "
          f"median (min-max). CPU is this process's CPU time (all threads) in the parallel runs.\n")
    print(f"| clusters | sequential (`--parallelism 1`) | parallel (default, {DEFAULT_PARALLELISM}) "
          "| parallel / sequential | sequential per cluster | CPU, parallel |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, samples in results.items():
        sequential, parallel = samples["sequential"]["wall"], samples["parallel"]["wall"]
        ratio = statistics.median(parallel) / statistics.median(sequential)
        print(f"| {size} | {cell(sequential)} | {cell(parallel)} | {ratio:.2f} | "
              f"{statistics.median(sequential) / size:.2f} | {cell(samples['parallel']['cpu'])} |")
    return 0


if __name__ == "__main__":
    _script.run(main)
