"""Time a full cluster-CA rotation of 1 control plane with 3 and with 50 workers, per phase.

    .venv/bin/python benchmarks/rotate.py [--repeats 3] [--workers 3 50] [--transport local ssh ssh-latency]
                                          [--latency 20]
                                          [--lease-handover fast kubeadm] [--workloads 0 200]
                                          [--max-concurrent 1 4 16]

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
(check, read, mode, write, remove) and, over SSH, the SFTP requests sent, by kind, and the
round trips they took (``reconciler.shell.ssh.REQUESTS``); counting costs about 0.3 us a
call, a few hundredths of a second in a rotation of 50 workers.

``ssh-latency`` is ``ssh`` through toxiproxy (``make toxiproxy``): the run starts one
toxiproxy server on 127.0.0.1, and a proxy per sandbox in front of its sshd that delays
each direction by ``--latency`` milliseconds (default 20: a round trip costs 40 ms more);
a copy of the sandbox's spec names the proxy's port. With ``ssh`` too, both rotate the
same sandbox in turn as above, and the ratio ssh-latency/ssh of the medians follows.

``--lease-handover`` (default ``fast``) is the sandboxes' `sandbox up --lease-handover`:
with both, each worker count gets a sandbox of each, and their rotations take turns the
same way (the order reversed every other repeat), so both are measured under the same
load; the table then has a lease-handover column and the ratio fast/kubeadm follows it.

``--workloads`` (default ``0``) is the sandboxes' `sandbox up --workloads`: N sample
namespaces, each a Deployment of 2 behind a PodDisruptionBudget (and a StatefulSet in
app-1), beside kubeadm's add-ons (CoreDNS, and kube-proxy on every worker), whose pods
read the cluster CA too. Before phase 3 reissues anything a rotation restarts every one
of them (restart-workload actions, ``workloads.maxConcurrent`` controllers at a time).
With several counts each gets a sandbox of its own and their rotations take turns as
above; the table then has a workloads column, and each count is compared with the
smallest (its total, and phase 3, against that count's).

``--max-concurrent`` sets ``workloads.maxConcurrent`` on each cluster of a copy of the
sandbox's spec, one copy per value, so that one sandbox is rotated at every value in turn
(after the warm-up rotation, as with both transports; it uses the highest value, the
quickest). It applies to sandboxes with sample workloads; one without (``--workloads 0``)
keeps the spec's default (careconcile's built-in 4), at which its two add-ons restart at
once. Without it every spec keeps the default.

For the workload restarts the table has four columns. ``trust wait`` is the time the
executor spends before restarting any: it checks that no PodDisruptionBudget forbids them,
then waits out the margin after the bundles were seen trusting both CAs (``TRUST_MARGIN``,
5 s, rounded up to a whole second, less the time since the phase 2 check). ``restarts wall`` runs from the start of
the first restart-workload action to the end of the last; ``restarts summed`` adds up
their own times, as the apply log and the RunReport give them, which exceeds the wall time
when several run at once; ``workload restarts`` counts them. Phase 3's column is wall time
too: the executor adds up its actions' times, so the script puts the wait and the restarts'
wall time in place of their sum.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from ruamel.yaml import YAML

import _script  # benchmarks/_script.py, beside this script
from reconciler import sandbox
from reconciler.core.plan import PHASES
from reconciler.core.spec import ResolvedWorkloads
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths
from reconciler.sandbox.binaries import KUBERNETES_VERSION, require_binaries
from reconciler.shell import session
from reconciler.shell.executor import Executor, RunReport
from reconciler.shell.nodes import LocalNodeFiles
from reconciler.shell.restarts import WorkloadRestarter
from reconciler.shell.specfile import load_spec

COLUMNS = ["plan", *(f"{number} {name}" for number, name in PHASES.items()), "total", "actions"]
WORKLOAD_COLUMNS = ["trust wait", "restarts wall", "restarts summed", "workload restarts"]
COUNTS = ("actions", "workload restarts")  # whole numbers: the median alone
TRANSPORTS = ("local", "ssh", "ssh-latency")
NODE_OPERATIONS = ("check", "read", "mode", "write", "remove", "remove_directory")
LOGIN_LINE = "Accepted publickey for "
RESTART_WORKLOAD = "restart-workload"
DEFAULT_MAX_CONCURRENT = ResolvedWorkloads().max_concurrent  # careconcile's built-in default


class Variant(NamedTuple):
    """One configuration measured: a sandbox (its lease handover and sample workloads) and
    the spec it is rotated with (its transport and workloads.maxConcurrent; None: the
    spec's default)."""

    handover: str
    workloads: int
    transport: str
    max_concurrent: int | None


# Table column, Variant field: the dimensions a run may vary.
DIMENSIONS = (("lease handover", "handover"), ("workloads", "workloads"), ("transport", "transport"),
              ("max concurrent", "max_concurrent"))


Counter_ = collections.Counter


class Counter:
    """A thread-safe count (observation reads several nodes at a time)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


class Intervals:
    """When the calls of a method ran, (start, end) in monotonic seconds; thread-safe
    (workload restarts run several at once)."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def add(self, start: float, end: float) -> None:
        with self._lock:
            self.spans.append((start, end))


NODE_CALLS = Counter()  # NodeFiles calls, either transport
RESTART_STEPS = Intervals()  # the executor's steps that restart a run of workloads, each
RESTART_CALLS = Intervals()  # one workload's restart, each (the restart-workload action's work)


def _counted(method, counter: Counter):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        counter.add()
        return method(*args, **kwargs)
    return wrapper


def _timed(method, intervals: Intervals):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            return method(*args, **kwargs)
        finally:
            intervals.add(started, time.monotonic())
    return wrapper


def install_counters(transports: list[str]) -> None:
    classes = [LocalNodeFiles]
    if any(transport.startswith("ssh") for transport in transports):
        from reconciler.shell.ssh import SSHNodeFiles

        classes.append(SSHNodeFiles)
    for cls in classes:
        for name in NODE_OPERATIONS:
            setattr(cls, name, _counted(getattr(cls, name), NODE_CALLS))


def sftp_requests() -> Counter_:
    """The SFTP requests sent so far, by kind (the SSH transport counts them)."""
    if "reconciler.shell.ssh" not in sys.modules:
        return Counter_()
    from reconciler.shell.ssh import REQUESTS

    return REQUESTS.snapshot()


def install_restart_timers() -> None:
    """Time the executor's step that restarts a run of restart-workload actions, several at
    once, and each restart in it: the RunReport has each action's time, not when it ran."""
    Executor._restart_workloads = _timed(Executor._restart_workloads, RESTART_STEPS)
    WorkloadRestarter.restart = _timed(WorkloadRestarter.restart, RESTART_CALLS)


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
    if "ssh-latency" in transports:
        specs["ssh-latency"] = through_toxiproxy(Path(info.spec), info)
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


TOXIPROXY = None  # the run's toxiproxy server, started for the ssh-latency transport
LATENCY_MS = 0


def through_toxiproxy(spec: Path, info) -> Path:
    """A copy of the sandbox's spec beside it whose nodes reach the sandbox's sshd through
    a toxiproxy proxy that delays each direction by LATENCY_MS (the host key is pinned by
    key, so the other port changes nothing else)."""
    port = TOXIPROXY.delay(f"sshd-{Path(info.spec).parent.name}", int(info.ssh["port"]), LATENCY_MS)
    yaml = YAML()
    yaml.width = 4096
    document = yaml.load(spec.read_text())
    for cluster in document["spec"]["clusters"]:
        for node in cluster["nodes"]:
            node["access"]["ssh"]["port"] = port
    out = io.StringIO()
    yaml.dump(document, out)
    copy = spec.with_name("spec-ssh-latency.yaml")
    copy.write_text(out.getvalue())
    return copy


def with_max_concurrent(spec: Path, max_concurrent: int | None) -> Path:
    """A copy of ``spec`` beside it whose clusters restart ``max_concurrent`` workloads at
    once (``workloads.maxConcurrent``); None: ``spec`` itself, at the spec's default."""
    if max_concurrent is None:
        return spec
    yaml = YAML()
    yaml.width = 4096
    document = yaml.load(spec.read_text())
    for cluster in document["spec"]["clusters"]:
        cluster.setdefault("workloads", {})["maxConcurrent"] = max_concurrent
    out = io.StringIO()
    yaml.dump(document, out)
    copy = spec.with_name(f"{spec.stem}-max-concurrent-{max_concurrent}.yaml")
    copy.write_text(out.getvalue())
    load_spec(copy)  # a copy careconcile rejects fails here, before any rotation
    return copy


def concurrencies(workloads: int, max_concurrent: list[int]) -> list[int | None]:
    """The maxConcurrent values a sandbox with ``workloads`` sample namespaces is rotated at."""
    return list(max_concurrent) if workloads > 0 and max_concurrent else [None]


def variants_of(handovers: list[str], workload_counts: list[int], transports: list[str],
                max_concurrent: list[int]) -> list[Variant]:
    return [Variant(handover, workloads, transport, concurrent)
            for handover in handovers for workloads in workload_counts for transport in transports
            for concurrent in concurrencies(workloads, max_concurrent)]


def warm_up_variant(variants: list[Variant]) -> Variant:
    """The spec a sandbox's unmeasured first rotation uses: the one that restarts the most
    workloads at once (the quickest), else the first."""
    return max(variants, key=lambda variant: variant.max_concurrent or DEFAULT_MAX_CONCURRENT)


def sandbox_name(workers: int, handover: str, workloads: int, variants: list[Variant]) -> str:
    """rotate-<workers>, then -<handover> and -w<workloads> when the run has several."""
    name = f"rotate-{workers}"
    if len({variant.handover for variant in variants}) > 1:
        name += f"-{handover}"
    if len({variant.workloads for variant in variants}) > 1:
        name += f"-w{workloads}"
    return name


def shown(field: str, value) -> str:
    if field == "max_concurrent" and value is None:
        return f"default ({DEFAULT_MAX_CONCURRENT})"
    return str(value)


def varied(variants: list[Variant]) -> list[tuple[str, str]]:
    """The dimensions (column, field) in which the variants differ: the table's label columns."""
    return [(column, field) for column, field in DIMENSIONS if len({getattr(v, field) for v in variants}) > 1]


def label(variant: Variant, dimensions: list[tuple[str, str]]) -> str:
    """The variant by the dimensions that vary, for lines of text: "fast, 200 workloads"."""
    parts = []
    for column, field in dimensions:
        value = shown(field, getattr(variant, field))
        parts.append(f"{column} {value}" if field == "max_concurrent" else
                     f"{value} workloads" if field == "workloads" else value)
    return ", ".join(parts)


def restart_times(steps: list[tuple[float, float]], calls: list[tuple[float, float]]) -> tuple[float, float]:
    """(trust wait, restarts wall) of one rotation, from the intervals of its restart steps
    and of the restarts in them: the wait is what the steps spent before any restart ran."""
    if not calls:
        return sum(end - start for start, end in steps), 0.0
    wall = max(end for _, end in calls) - min(start for start, _ in calls)
    return sum(end - start for start, end in steps) - wall, wall


def phase_wall_seconds(report: RunReport, restarting: float) -> dict[int, float]:
    """Each phase's wall time. The executor adds up its actions' times (a group of node
    writes counts its wall time), and the workload restarts run several at once: in their
    phase ``restarting``, the wall time of their step (the trust wait, then the restarts),
    replaces their sum."""
    seconds = dict(report.phase_seconds)
    restarts = [done for done in report.done if done.action.kind == RESTART_WORKLOAD]
    if restarts:
        phase = restarts[0].action.phase
        seconds[phase] += restarting - sum(done.seconds for done in restarts)
    return seconds


def action_times(report) -> str:
    """Per phase and kind of action: how many, and their own times added up (actions that
    run on several nodes at once add up to more than the phase's wall time)."""
    summed: dict[tuple[int, str], list] = {}
    for done in report.done:
        entry = summed.setdefault((done.action.phase, done.action.kind), [0, 0.0])
        entry[0] += 1
        entry[1] += done.seconds
    return "actions (phase kind: count, seconds summed): " + "; ".join(
        f"{phase} {kind}: {count}, {seconds:.1f}" for (phase, kind), (count, seconds) in sorted(summed.items()))


def rotate_once(spec: Path, rotation: int, workspace: Path) -> dict[str, float]:
    spec.write_text(re.sub(r"(clusterCA:\n\s+rotation: )\d+", rf"\g<1>{rotation}", spec.read_text()))
    calls, requests = NODE_CALLS.value, sftp_requests()
    steps, restarts_before = len(RESTART_STEPS.spans), len(RESTART_CALLS.spans)
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
    restarts = [done for done in report.done if done.action.kind == RESTART_WORKLOAD]
    wait, wall = restart_times(RESTART_STEPS.spans[steps:], RESTART_CALLS.spans[restarts_before:])
    sample = {"plan": planned, "total": total, "actions": float(len(report.done)),
              "trust wait": wait, "restarts wall": wall, "restarts summed": sum(done.seconds for done in restarts),
              "workload restarts": float(len(restarts)),
              "connections": float(connections), "node calls": float(NODE_CALLS.value - calls),
              "sftp requests": float(sum((sftp_requests() - requests).values()))}
    kinds = sftp_requests() - requests
    if kinds:
        print("    SFTP requests by kind: " + ", ".join(f"{kind} {count}" for kind, count in kinds.most_common()),
              file=sys.stderr)
    print("    " + action_times(report), file=sys.stderr)
    phases = phase_wall_seconds(report, wait + wall)
    for number, name in PHASES.items():
        sample[f"{number} {name}"] = phases.get(number, 0.0)
    return sample


def measure(workers: int, repeats: int, workspace: Path, variants: list[Variant]
            ) -> dict[Variant, dict[str, list[float]]]:
    """Samples per variant: one sandbox per lease handover and workload count, each rotated
    with every spec of it (transport, maxConcurrent); the variants take turns, the order
    reversed every other repeat."""
    extra = ["connections", "logins", "node calls", "sftp requests"]
    samples = {variant: {column: [] for column in COLUMNS + WORKLOAD_COLUMNS + extra} for variant in variants}
    sandboxes = list(dict.fromkeys((variant.handover, variant.workloads) for variant in variants))
    names = {key: sandbox_name(workers, *key, variants) for key in sandboxes}
    ssh = any(variant.transport.startswith("ssh") for variant in variants)
    try:
        infos, specs, rotation = {}, {}, {}
        for key in sandboxes:
            handover, workloads = key
            infos[key] = sandbox.up(names[key], control_planes=1, workers=workers, ssh=ssh,
                                    lease_handover=handover, workloads=workloads)
            print(f"  {names[key]}: up in {infos[key].startup_seconds:.1f}s", file=sys.stderr)
            mine = [variant for variant in variants if (variant.handover, variant.workloads) == key]
            by_transport = write_specs(infos[key], list(dict.fromkeys(v.transport for v in mine)))
            specs.update({variant: with_max_concurrent(by_transport[variant.transport], variant.max_concurrent)
                          for variant in mine})
            rotation[key] = 0
            if len(mine) > 1:
                # The first rotation of a sandbox differs (it writes the workspace kubeconfig,
                # which later rotations update and reissue: 2 actions more); unmeasured, so
                # every measured rotation of any spec starts from the same kind of state.
                rotation[key] += 1
                warm_up = warm_up_variant(mine)
                warm = rotate_once(specs[warm_up], rotation[key], workspace)
                print(f"  {names[key]}: warm-up rotation ({label(warm_up, varied(variants)) or warm_up.transport}, "
                      f"not measured): {warm['total']:.1f}s", file=sys.stderr)
        for attempt in range(repeats):
            for variant in (variants if attempt % 2 == 0 else variants[::-1]):
                key = (variant.handover, variant.workloads)
                info = infos[key]
                rotation[key] += 1
                logins = sshd_logins(info)
                sample = rotate_once(specs[variant], rotation[key], workspace)
                sample["logins"] = float(sshd_logins(info) - logins)
                for column in samples[variant]:
                    samples[variant][column].append(sample[column])
                text = label(variant, varied(variants))
                detail = f"{sample['node calls']:.0f} node-file calls"
                if variant.transport.startswith("ssh"):
                    detail += (f", {sample['sftp requests']:.0f} SFTP requests, {sample['connections']:.0f} SSH "
                               f"connections ({sample['logins']:.0f} logins in the sshd log)")
                detail += (f"; {sample['workload restarts']:.0f} workload restarts: trust wait "
                           f"{sample['trust wait']:.1f}s, wall {sample['restarts wall']:.1f}s, "
                           f"summed {sample['restarts summed']:.1f}s")
                print(f"  workers={workers}{' ' + text if text else ''} rotation {attempt + 1}: "
                      f"{sample['total']:.1f}s ({detail})", file=sys.stderr)
    finally:
        for name in names.values():
            _script.teardown(SandboxPaths.named(name))
    return samples


def cell(column: str, values: list[float]) -> str:
    if column in COUNTS:
        return f"{statistics.median(values):.0f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def ratios(numerator: dict[str, list[float]], denominator: dict[str, list[float]]) -> str:
    return ", ".join(f"{column} {statistics.median(numerator[column]) / statistics.median(denominator[column]):.2f}"
                     for column in COLUMNS[:-1] if statistics.median(denominator[column]) > 0)


def against(samples: dict[str, list[float]], baseline: dict[str, list[float]]) -> str:
    """What a variant adds to its baseline: the medians' difference in total and in phase 3,
    and the ratio of the median totals."""
    total, base = statistics.median(samples["total"]), statistics.median(baseline["total"])
    phase3 = f"3 {PHASES[3]}"
    return (f"total {total - base:+.1f}s ({total / base:.2f}x), phase 3 "
            f"{statistics.median(samples[phase3]) - statistics.median(baseline[phase3]):+.1f}s")


def comparisons(workers: int, by_variant: dict[Variant, dict[str, list[float]]]) -> list[str]:
    """ssh/local and fast/kubeadm of the medians, and each workload count against the smallest."""
    variants = list(by_variant)
    dimensions = varied(variants)
    lines = []
    for variant, samples in by_variant.items():
        local, kubeadm = variant._replace(transport="local"), variant._replace(handover="kubeadm")
        direct = variant._replace(transport="ssh")
        if variant.transport == "ssh-latency" and direct in by_variant:
            text = label(variant, [d for d in dimensions if d[1] != "transport"])
            lines.append(f"- {workers} workers{', ' + text if text else ''}, ssh-latency ({LATENCY_MS} ms each way)"
                         f"/ssh of the medians: " + ratios(samples, by_variant[direct]))
        if variant.transport == "ssh" and local in by_variant:
            text = label(variant, [d for d in dimensions if d[1] != "transport"])
            lines.append(f"- {workers} workers{', ' + text if text else ''}, ssh/local of the medians: "
                         + ratios(samples, by_variant[local]))
        if variant.handover == "fast" and kubeadm in by_variant:
            text = label(variant, [d for d in dimensions if d[1] != "handover"])
            lines.append(f"- {workers} workers{', ' + text if text else ''}, fast/kubeadm of the medians: "
                         + ratios(samples, by_variant[kubeadm]))
    fewest = min(variant.workloads for variant in variants)
    for variant, samples in by_variant.items():
        baseline = next((v for v in variants if v.workloads == fewest and v.handover == variant.handover
                         and v.transport == variant.transport
                         and v.max_concurrent in (variant.max_concurrent, None)), None)
        if variant.workloads == fewest or baseline is None:
            continue
        restarts = statistics.median(samples["workload restarts"])
        per_restart = statistics.median(samples["restarts wall"]) / restarts if restarts else 0.0
        lines.append(f"- {workers} workers, {label(variant, dimensions)} against {label(baseline, dimensions)}, "
                     f"medians: {against(samples, by_variant[baseline])}; restarts wall per workload restart "
                     f"{per_restart:.2f}s")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[3, 50])
    parser.add_argument("--transport", nargs="+", choices=TRANSPORTS, default=["local"],
                        help="how the node files are reached: local, ssh or both (default: local)")
    parser.add_argument("--latency", type=int, default=20, metavar="MS",
                        help="for the ssh-latency transport: the delay toxiproxy adds to each direction between "
                             "careconcile and the sandbox's sshd (default: 20)")
    parser.add_argument("--lease-handover", nargs="+", choices=sandbox.LEASE_HANDOVERS, default=["fast"],
                        help="the sandboxes' lease handover (`sandbox up --lease-handover`): fast, kubeadm or "
                             "both (default: fast)")
    parser.add_argument("--workloads", type=int, nargs="+", default=[0], metavar="N",
                        help="the sandboxes' sample namespaces (`sandbox up --workloads`), one sandbox per count "
                             "(default: 0)")
    parser.add_argument("--max-concurrent", type=int, nargs="+", default=[], metavar="N",
                        help="workloads.maxConcurrent (1-100) written into copies of the spec of each sandbox "
                             f"with sample workloads, one rotation each per turn (default: the spec's, "
                             f"{DEFAULT_MAX_CONCURRENT})")
    args = parser.parse_args()
    if min(args.workloads) < 0:
        parser.error("--workloads cannot be negative")
    if not all(1 <= value <= 100 for value in args.max_concurrent):
        parser.error("--max-concurrent must be 1-100, as workloads.maxConcurrent")
    transports = list(dict.fromkeys(args.transport))
    variants = variants_of(list(dict.fromkeys(args.lease_handover)), list(dict.fromkeys(args.workloads)),
                           transports, list(dict.fromkeys(args.max_concurrent)))
    require_binaries()
    global TOXIPROXY, LATENCY_MS
    if "ssh-latency" in transports:
        from reconciler.sandbox.toxiproxy import Toxiproxy

        TOXIPROXY, LATENCY_MS = Toxiproxy(), args.latency
    install_counters(transports)
    install_restart_timers()
    with tempfile.TemporaryDirectory(prefix="careconcile-bench-") as root:
        os.environ[ROOT_ENV] = root
        workspace = Path(root, "workspace")
        try:
            results = {workers: measure(workers, args.repeats, workspace, variants) for workers in args.workers}
        finally:
            if TOXIPROXY is not None:
                TOXIPROXY.stop()
    dimensions = varied(variants)
    fixed = ", ".join(f"{column} {shown(field, getattr(variants[0], field))}"
                      for column, field in DIMENSIONS if (column, field) not in dimensions)
    print(f"Kubernetes {KUBERNETES_VERSION}, {os.cpu_count()} cores, {args.repeats} rotations each, seconds "
          "(median, min-max); a phase's time includes its check on the live cluster"
          + (f"; {fixed}" if fixed else "") + ". Phase 3's workload restarts: trust wait, before the first; "
          "restarts wall, from the first one's start to the last one's end; restarts summed, their actions' "
          "times added up.\n")
    columns = COLUMNS + WORKLOAD_COLUMNS
    print("| workers | " + "".join(f"{column} | " for column, _ in dimensions) + " | ".join(columns) + " |")
    print("|---:|" + "---|" * len(dimensions) + "---:|" * len(columns))
    for workers, by_variant in results.items():
        for variant, samples in by_variant.items():
            cells = [cell(column, samples[column]) for column in columns]
            print(f"| {workers} | " + "".join(f"{shown(field, getattr(variant, field))} | " for _, field in dimensions)
                  + " | ".join(cells) + " |")
    lines = [line for workers, by_variant in results.items() for line in comparisons(workers, by_variant)]
    if lines:
        print()
        print("\n".join(lines))
    by_transport = len(transports) > 1
    for workers, by_variant in results.items():
        for variant, samples in by_variant.items():
            others = label(variant, [d for d in dimensions if d[1] != "transport"])
            text = f"{workers} workers" + (f", {others}" if others else "")
            if variant.transport.startswith("ssh"):
                print(f"- {text} over {variant.transport}, per rotation: SSH connections "
                      f"{'/'.join(f'{v:.0f}' for v in samples['connections'])} (the transport's count), "
                      f"{'/'.join(f'{v:.0f}' for v in samples['logins'])} (sshd log, \"{LOGIN_LINE.strip()}\"); "
                      f"SFTP requests {'/'.join(f'{v:.0f}' for v in samples['sftp requests'])}")
            if by_transport or variant.transport == "ssh":
                print(f"- {text} over {variant.transport}, node-file calls per rotation: "
                      f"{'/'.join(f'{v:.0f}' for v in samples['node calls'])}")
    return 0


if __name__ == "__main__":
    _script.run(main)
