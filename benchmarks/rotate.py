"""Time a full cluster-CA rotation of 1 control plane with 3 and with 50 workers, per phase.

    .venv/bin/python benchmarks/rotate.py [--repeats 3] [--workers 3 50] [--transport local ssh]
                                          [--lease-handover fast kubeadm]

Each repeat raises the spec's rotation counter on the same sandbox and applies it, the
way `careconcile apply SPEC --auto-approve` does (lock, observe, plan, run). Prints a
markdown table of medians (and min/max) measured in this one run; the results in
docs/performance.md come from it. Sandboxes live in a temporary directory, and are torn
down at the end, on an error and on Ctrl-C (or SIGTERM).

``--transport`` (default ``local``) says how careconcile reaches the node files: ``local``
reads and writes the node directories directly, ``ssh`` goes through an OpenSSH server on
127.0.0.1 that serves every node directory of the sandbox (`sandbox up --ssh`; the sshd
from `hack/install-sshd.sh`). With both, each worker count gets one sandbox with an sshd,
and the same sandbox is rotated over one transport, then the other, alternating the order
from repeat to repeat (local, ssh; ssh, local; ...): each rotation starts from the state
the previous one left, whichever transport made it, after one unmeasured warm-up rotation
(the first rotation of a sandbox writes the workspace kubeconfig, and later ones have 2
actions more, for that kubeconfig). The table then has a transport column, and the ratio ssh/local of the medians follows it. For ``ssh`` it also reports the
SSH connections a rotation opened: counted by the transport, and from the sshd's log
("Accepted publickey" lines). Per rotation, stderr shows the node-file operations
(check, read, mode, write, remove) and, over SSH, the SFTP requests sent; counting them
costs about 0.3 us a call, a few hundredths of a second in a rotation of 50 workers.

``--lease-handover`` (default ``fast``) is the sandboxes' `sandbox up --lease-handover`:
with both, each worker count gets a sandbox of each, and their rotations take turns the
same way (the order reversed every other repeat), so both are measured under the same
load; the table then has a lease-handover column and the ratio fast/kubeadm follows it.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from ruamel.yaml import YAML

import _script  # benchmarks/_script.py, beside this script
from reconciler import sandbox
from reconciler.core.plan import PHASES
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths
from reconciler.sandbox.binaries import KUBERNETES_VERSION, require_binaries
from reconciler.shell import session
from reconciler.shell.nodes import LocalNodeFiles
from reconciler.shell.specfile import load_spec

COLUMNS = ["plan", *(f"{number} {name}" for number, name in PHASES.items()), "total", "actions"]
TRANSPORTS = ("local", "ssh")
NODE_OPERATIONS = ("check", "read", "mode", "write", "remove", "remove_directory")
LOGIN_LINE = "Accepted publickey for "


class Counter:
    """A thread-safe count (observation reads 8 nodes at a time)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


NODE_CALLS = Counter()  # NodeFiles calls, either transport
SFTP_REQUESTS = Counter()  # SFTP requests sent (each one a round trip to the sshd)


def _counted(method, counter: Counter):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        counter.add()
        return method(*args, **kwargs)
    return wrapper


def install_counters(transports: list[str]) -> None:
    classes = [LocalNodeFiles]
    if "ssh" in transports:
        import paramiko

        from reconciler.shell.ssh import SSHNodeFiles

        classes.append(SSHNodeFiles)
        paramiko.SFTPClient._async_request = _counted(paramiko.SFTPClient._async_request, SFTP_REQUESTS)
    for cls in classes:
        for name in NODE_OPERATIONS:
            setattr(cls, name, _counted(getattr(cls, name), NODE_CALLS))


def sshd_logins(info) -> int:
    """Logins the sandbox's sshd accepted so far, from its log."""
    try:
        return Path(info.ssh["directory"], "sshd.log").read_text(errors="replace").count(LOGIN_LINE)
    except (OSError, TypeError):
        return 0


def write_specs(info, transports: list[str]) -> dict[str, Path]:
    """A spec per transport, beside the sandbox's own (so its relative keyFile still holds).
    The local spec is the sandbox's with each node's ``ssh`` access replaced by ``local``
    with the same root (and kubeletRestart): the same files, reached directly."""
    if info.ssh is None:
        return {"local": Path(info.spec)}
    specs = {"ssh": Path(info.spec)}
    if "local" in transports:
        yaml = YAML()
        yaml.width = 4096
        document = yaml.load(Path(info.spec).read_text())
        for cluster in document["spec"]["clusters"]:
            for node in cluster["nodes"]:
                ssh = node["access"]["ssh"]
                local = {"root": ssh["root"]}
                if "kubeletRestart" in ssh:  # the sandbox's [] (kwok stands in for the kubelets)
                    local["kubeletRestart"] = ssh["kubeletRestart"]
                node["access"] = {"local": local}
        out = io.StringIO()
        yaml.dump(document, out)
        specs["local"] = Path(info.spec).with_name("spec-local.yaml")
        specs["local"].write_text(out.getvalue())
    return specs


def rotate_once(spec: Path, rotation: int, workspace: Path) -> dict[str, float]:
    spec.write_text(re.sub(r"rotation: \d+", f"rotation: {rotation}", spec.read_text()))
    calls, requests = NODE_CALLS.value, SFTP_REQUESTS.value
    started = time.monotonic()
    loaded = load_spec(spec)
    accesses = session.open_clusters(loaded, workspace)
    try:
        with session.locked(accesses, "apply", lambda message: None) as locks:
            plan = session.make_plan(loaded, accesses)
            planned = time.monotonic() - started
            [report] = session.run_plan(plan, loaded, accesses, locks=locks, stream=io.StringIO())
        total = time.monotonic() - started
        connections = sum(getattr(files, "connections", 0) for access in accesses.values()
                          for files in access.nodes.values())
    finally:
        for access in accesses.values():
            access.close()  # the SSH connections; reopened by the next rotation
    sample = {"plan": planned, "total": total, "actions": float(len(report.done)),
              "connections": float(connections), "node calls": float(NODE_CALLS.value - calls),
              "sftp requests": float(SFTP_REQUESTS.value - requests)}
    for number, name in PHASES.items():
        sample[f"{number} {name}"] = report.phase_seconds.get(number, 0.0)
    return sample


def measure(workers: int, repeats: int, workspace: Path, transports: list[str],
            handovers: list[str]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Samples per (lease handover, transport): one sandbox per lease handover, each rotated
    over every transport; the variants take turns, the order reversed every other repeat."""
    extra = ["connections", "logins", "node calls", "sftp requests"]
    variants = [(handover, transport) for handover in handovers for transport in transports]
    samples = {variant: {column: [] for column in COLUMNS + extra} for variant in variants}
    names = {handover: f"rotate-{workers}" + (f"-{handover}" if len(handovers) > 1 else "") for handover in handovers}
    try:
        infos, specs, rotation = {}, {}, {}
        for handover in handovers:
            infos[handover] = sandbox.up(names[handover], control_planes=1, workers=workers,
                                         ssh="ssh" in transports, lease_handover=handover)
            specs[handover] = write_specs(infos[handover], transports)
            rotation[handover] = 0
            if len(transports) > 1:
                # The first rotation of a sandbox differs (it writes the workspace kubeconfig,
                # which later rotations update and reissue: 2 actions more); unmeasured, so
                # every measured rotation of either transport starts from the same kind of state.
                rotation[handover] += 1
                warm = rotate_once(specs[handover][transports[0]], rotation[handover], workspace)
                print(f"  workers={workers} {handover} warm-up rotation ({transports[0]}, not measured): "
                      f"{warm['total']:.1f}s", file=sys.stderr)
        for attempt in range(repeats):
            for handover, transport in (variants if attempt % 2 == 0 else variants[::-1]):
                info = infos[handover]
                rotation[handover] += 1
                logins = sshd_logins(info)
                sample = rotate_once(specs[handover][transport], rotation[handover], workspace)
                sample["logins"] = float(sshd_logins(info) - logins)
                for column in samples[(handover, transport)]:
                    samples[(handover, transport)][column].append(sample[column])
                label = f" {handover}" if len(handovers) > 1 else ""
                label += f" {transport}" if len(transports) > 1 else ""
                detail = f"{sample['node calls']:.0f} node-file calls"
                if transport == "ssh":
                    detail += (f", {sample['sftp requests']:.0f} SFTP requests, {sample['connections']:.0f} SSH "
                               f"connections ({sample['logins']:.0f} logins in the sshd log)")
                print(f"  workers={workers}{label} rotation {attempt + 1}: {sample['total']:.1f}s ({detail})",
                      file=sys.stderr)
    finally:
        for name in names.values():
            teardown(SandboxPaths.named(name))
    return samples


def teardown(paths: SandboxPaths) -> None:
    """Stop the sandbox (its sshd too) and remove it; a second Ctrl-C does not cut this short."""
    if not paths.directory.is_dir():
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sandbox.down(paths)
    finally:
        signal.signal(signal.SIGINT, previous)


def cell(column: str, values: list[float]) -> str:
    if column == "actions":
        return f"{statistics.median(values):.0f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def ratios(numerator: dict[str, list[float]], denominator: dict[str, list[float]]) -> str:
    return ", ".join(f"{column} {statistics.median(numerator[column]) / statistics.median(denominator[column]):.2f}"
                     for column in COLUMNS[:-1] if statistics.median(denominator[column]) > 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[3, 50])
    parser.add_argument("--transport", nargs="+", choices=TRANSPORTS, default=["local"],
                        help="how the node files are reached: local, ssh or both (default: local)")
    parser.add_argument("--lease-handover", nargs="+", choices=sandbox.LEASE_HANDOVERS, default=["fast"],
                        help="the sandboxes' lease handover (`sandbox up --lease-handover`): fast, kubeadm or "
                             "both (default: fast)")
    args = parser.parse_args()
    transports = list(dict.fromkeys(args.transport))
    handovers = list(dict.fromkeys(args.lease_handover))
    require_binaries()
    install_counters(transports)
    with tempfile.TemporaryDirectory(prefix="careconcile-bench-") as root:
        os.environ[ROOT_ENV] = root
        workspace = Path(root, "workspace")
        results = {workers: measure(workers, args.repeats, workspace, transports, handovers)
                   for workers in args.workers}
    print(f"Kubernetes {KUBERNETES_VERSION}, {os.cpu_count()} cores, {args.repeats} rotations each, seconds "
          "(median, min-max); a phase's time includes its check on the live cluster.\n")
    by_handover, by_transport = len(handovers) > 1, len(transports) > 1
    print("| workers | " + ("lease handover | " if by_handover else "") + ("transport | " if by_transport else "")
          + " | ".join(COLUMNS) + " |")
    print("|---:|" + ("---|" if by_handover else "") + ("---|" if by_transport else "") + "---:|" * len(COLUMNS))
    for workers, by_variant in results.items():
        for (handover, transport), samples in by_variant.items():
            cells = [cell(column, samples[column]) for column in COLUMNS]
            print(f"| {workers} | " + (f"{handover} | " if by_handover else "")
                  + (f"{transport} | " if by_transport else "") + " | ".join(cells) + " |")
    if by_handover or by_transport:
        print()
    for workers, by_variant in results.items():
        for handover in handovers:
            if by_transport:
                print(f"- {workers} workers, {handover}, ssh/local of the medians: "
                      + ratios(by_variant[(handover, "ssh")], by_variant[(handover, "local")]))
        for transport in transports:
            if by_handover:
                print(f"- {workers} workers, {transport}, fast/kubeadm of the medians: "
                      + ratios(by_variant[("fast", transport)], by_variant[("kubeadm", transport)]))
    for workers, by_variant in results.items():
        for (handover, transport), samples in by_variant.items():
            label = f"{workers} workers" + (f", {handover}" if by_handover else "")
            if transport == "ssh":
                print(f"- {label} over ssh, per rotation: SSH connections "
                      f"{'/'.join(f'{v:.0f}' for v in samples['connections'])} (the transport's count), "
                      f"{'/'.join(f'{v:.0f}' for v in samples['logins'])} (sshd log, \"{LOGIN_LINE.strip()}\"); "
                      f"SFTP requests {'/'.join(f'{v:.0f}' for v in samples['sftp requests'])}")
            if by_transport or transport == "ssh":
                print(f"- {label} over {transport}, node-file calls per rotation: "
                      f"{'/'.join(f'{v:.0f}' for v in samples['node calls'])}")
    return 0


if __name__ == "__main__":
    _script.run(main)
