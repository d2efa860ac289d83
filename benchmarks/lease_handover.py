"""How long a restarted component takes to hold its Leases again, per lease handover.

    .venv/bin/python benchmarks/lease_handover.py [--repeats 3] [--lease-handover fast kubeadm]

For each lease handover (`sandbox up --lease-handover`) the script starts a sandbox of 1
control plane and 3 workers, then restarts the controller-manager, the scheduler and kwok
the way careconcile does (their static-pod manifest rewritten with a new annotation; the
sandbox's supervisor restarts a component whose manifest changed, with SIGTERM, as a
kubelet does) and polls every 0.2 s until the restarted process holds its Leases: a new
holder of its leader Lease in kube-system, or, for kwok, of every node Lease in
kube-node-lease. These are the waits in the checks of phases 2, 3 and 4 of a rotation.
Prints a markdown table of medians (min-max) in seconds; the handovers take turns.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

import _script  # benchmarks/_script.py, beside this script
from reconciler import sandbox
from reconciler._files import atomic_write
from reconciler.core.kubeadm import MANIFESTS_DIR
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths, node_path
from reconciler.sandbox.binaries import KUBERNETES_VERSION, require_binaries
from reconciler.shell.kube import KubeconfigClient

COMPONENTS = ("kube-controller-manager", "kube-scheduler", "kwok")
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
POLL_SECONDS = 0.2
TIMEOUT_SECONDS = 120.0


def holders(client, component: str) -> dict[str, str | None]:
    """Who holds the Leases that show ``component`` running: lease name -> holder."""
    if component == "kwok":
        leases = client.list(LEASES.format(namespace="kube-node-lease"))
    else:
        leases = [client.get(f"{LEASES.format(namespace='kube-system')}/{component}")]
    return {lease["metadata"]["name"]: (lease.get("spec") or {}).get("holderIdentity") for lease in leases}


def restart(info, component: str) -> None:
    """Rewrite the component's manifest with a fresh annotation, as careconcile's restart does."""
    path = node_path(Path(info.nodes[0].root), f"{MANIFESTS_DIR}/{component}.yaml")
    yaml = YAML()
    manifest = yaml.load(path.read_text())
    manifest["metadata"].setdefault("annotations", {})["benchmark.careconcile.dev/restarted-at"] = str(time.time())
    out = io.StringIO()
    yaml.dump(manifest, out)
    atomic_write(path, out.getvalue().encode(), 0o600)  # the supervisor never reads half a manifest


def handover_seconds(info, component: str) -> float:
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        before = holders(client, component)
        started = time.monotonic()
        restart(info, component)
        while time.monotonic() - started < TIMEOUT_SECONDS:
            try:
                now = holders(client, component)
                if all(now.get(name) not in (None, holder) for name, holder in before.items()):
                    return time.monotonic() - started
            except Exception:  # the apiserver is fine; a Lease may be between holders
                pass
            time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{info.name}: {component} held no new Lease within {TIMEOUT_SECONDS:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lease-handover", nargs="+", choices=sandbox.LEASE_HANDOVERS,
                        default=list(sandbox.LEASE_HANDOVERS))
    args = parser.parse_args()
    handovers = list(dict.fromkeys(args.lease_handover))
    require_binaries()
    samples = {(handover, component): [] for handover in handovers for component in COMPONENTS}
    with tempfile.TemporaryDirectory(prefix="careconcile-bench-") as root:
        os.environ[ROOT_ENV] = root
        infos = {}
        try:
            for handover in handovers:
                infos[handover] = sandbox.up(f"lease-{handover}", workers=3, lease_handover=handover)
            for attempt in range(args.repeats):
                for handover in (handovers if attempt % 2 == 0 else handovers[::-1]):
                    for component in COMPONENTS:
                        seconds = handover_seconds(infos[handover], component)
                        samples[(handover, component)].append(seconds)
                        print(f"  {handover} {component} restart {attempt + 1}: {seconds:.1f}s", file=sys.stderr)
        finally:
            for handover in infos:
                sandbox.down(SandboxPaths.named(f"lease-{handover}"))
    print(f"Kubernetes {KUBERNETES_VERSION}, {os.cpu_count()} cores, {args.repeats} restarts each, seconds from the "
          "manifest's rewrite to new holders of its Leases (median, min-max).\n")
    print("| lease handover | " + " | ".join(COMPONENTS) + " |")
    print("|---|" + "---:|" * len(COMPONENTS))
    for handover in handovers:
        cells = [f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
                 for v in (samples[(handover, component)] for component in COMPONENTS)]
        print(f"| {handover} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    _script.run(main)
