"""Time a full cluster-CA rotation of 1 control plane with 3 and with 50 workers, per phase.

    .venv/bin/python benchmarks/rotate.py [--repeats 3] [--workers 3 50] [--transport local ssh]

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


def measure(workers: int, repeats: int, workspace: Path, transports: list[str]) -> dict[str, dict[str, list[float]]]:
    name = f"rotate-{workers}"
    paths = SandboxPaths.named(name)
    extra = ["connections", "logins", "node calls", "sftp requests"]
    samples = {t: {column: [] for column in COLUMNS + extra} for t in transports}
    try:
        info = sandbox.up(name, control_planes=1, workers=workers, ssh="ssh" in transports)
        specs = write_specs(info, transports)
        rotation = 0
        if len(transports) > 1:
            # The first rotation of a sandbox differs (it writes the workspace kubeconfig,
            # which later rotations update and reissue: 2 actions more); unmeasured, so
            # every measured rotation of either transport starts from the same kind of state.
            rotation += 1
            warm = rotate_once(specs[transports[0]], rotation, workspace)
            print(f"  workers={workers} warm-up rotation ({transports[0]}, not measured): {warm['total']:.1f}s",
                  file=sys.stderr)
        for attempt in range(repeats):
            order = transports if attempt % 2 == 0 else transports[::-1]
            for transport in order:
                rotation += 1
                logins = sshd_logins(info)
                sample = rotate_once(specs[transport], rotation, workspace)
                sample["logins"] = float(sshd_logins(info) - logins)
                for column in samples[transport]:
                    samples[transport][column].append(sample[column])
                label = f" {transport}" if len(transports) > 1 else ""
                detail = f"{sample['node calls']:.0f} node-file calls"
                if transport == "ssh":
                    detail += (f", {sample['sftp requests']:.0f} SFTP requests, {sample['connections']:.0f} SSH "
                               f"connections ({sample['logins']:.0f} logins in the sshd log)")
                print(f"  workers={workers}{label} rotation {attempt + 1}: {sample['total']:.1f}s ({detail})",
                      file=sys.stderr)
    finally:
        teardown(paths)
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


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def cell(column: str, values: list[float]) -> str:
    if column == "actions":
        return f"{statistics.median(values):.0f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[3, 50])
    parser.add_argument("--transport", nargs="+", choices=TRANSPORTS, default=["local"],
                        help="how the node files are reached: local, ssh or both (default: local)")
    args = parser.parse_args()
    transports = list(dict.fromkeys(args.transport))
    signal.signal(signal.SIGTERM, _terminated)  # tear down on `kill` too, not only on Ctrl-C
    require_binaries()
    install_counters(transports)
    with tempfile.TemporaryDirectory(prefix="careconcile-bench-") as root:
        os.environ[ROOT_ENV] = root
        workspace = Path(root, "workspace")
        results = {workers: measure(workers, args.repeats, workspace, transports) for workers in args.workers}
    print(f"Kubernetes {KUBERNETES_VERSION}, {os.cpu_count()} cores, {args.repeats} rotations each, seconds "
          "(median, min-max); a phase's time includes its check on the live cluster.\n")
    several = len(transports) > 1
    print("| workers | " + ("transport | " if several else "") + " | ".join(COLUMNS) + " |")
    print("|---:|" + ("---|" if several else "") + "---:|" * len(COLUMNS))
    for workers, by_transport in results.items():
        for transport, samples in by_transport.items():
            cells = [cell(column, samples[column]) for column in COLUMNS]
            print(f"| {workers} | " + (f"{transport} | " if several else "") + " | ".join(cells) + " |")
    if several:
        print()
        for workers, by_transport in results.items():
            local, ssh = by_transport["local"], by_transport["ssh"]
            ratios = ", ".join(
                f"{column} {statistics.median(ssh[column]) / statistics.median(local[column]):.2f}"
                for column in COLUMNS[:-1] if statistics.median(local[column]) > 0)
            print(f"- {workers} workers, ssh/local of the medians: {ratios}")
    for workers, by_transport in results.items():
        if "ssh" in by_transport:
            ssh = by_transport["ssh"]
            print(f"- {workers} workers over ssh, per rotation: SSH connections "
                  f"{'/'.join(f'{v:.0f}' for v in ssh['connections'])} (the transport's count), "
                  f"{'/'.join(f'{v:.0f}' for v in ssh['logins'])} (sshd log, \"{LOGIN_LINE.strip()}\"); "
                  f"SFTP requests {'/'.join(f'{v:.0f}' for v in ssh['sftp requests'])}")
        for transport, samples in by_transport.items():
            if several or transport == "ssh":
                print(f"- {workers} workers over {transport}, node-file calls per rotation: "
                      f"{'/'.join(f'{v:.0f}' for v in samples['node calls'])}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; sandboxes torn down", file=sys.stderr)
        sys.exit(130)
