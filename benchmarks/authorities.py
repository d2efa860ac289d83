"""Time a rotation of all three CAs (cluster, etcd, front proxy) and measure what clients see.

    .venv/bin/python benchmarks/authorities.py [--cases 1x50 3x3] [--repeats 1] [--logs DIR]

Each case ``CPxW`` gets a sandbox of its own, ``CP`` control planes (each with a stacked
etcd member and an apiserver) and ``W`` kwok workers, started with the aggregated
apiserver (`sandbox up --extension-apiserver`, k8s.io/sample-apiserver behind
v1alpha1.wardle.example.com). Each repeat raises ``clusterCA``, ``etcdCA`` and
``frontProxyCA``'s rotation counters together, saves the plan (`careconcile plan SPEC
--out FILE`, not timed) and runs `careconcile apply SPEC --auto-approve` as a subprocess,
as a user does (lock, observe, plan, then the three authorities one after another). While
it runs, in this process:

- an **API poller**: two clients, each reading the sandbox's kubeconfig afresh for every
  request and going round-robin over its contexts, one per apiserver (the integration
  tests' ``Poller``), reading ``/api/v1/namespaces/kube-system``; with several control
  planes they go through the sandbox's load balancer instead (HAProxy, which goes round
  the apiservers and takes a stopping one out), as an HA cluster's clients do;
- an **aggregated API poller**, the same reading
  ``/apis/wardle.example.com/v1alpha1/namespaces/default/flunders`` through the
  aggregation layer;
- an **etcd sampler**: every 0.5 s it asks every member's ``/health`` at once, with the
  first control plane's ``etcd/healthcheck-client`` certificate and trusting its
  ``etcd/ca.crt``, read afresh for every sample (the rotation replaces them). A sample
  without quorum is one in which fewer than a majority of the members answered
  ``{"health":"true"}``. A sample for which the files did not make a usable client (a
  certificate written, its key not yet) is counted apart, as unreadable.

Reported per case (medians, with the range, when ``--repeats`` is above 1): the apply's
wall time; per authority and phase the wall time, from the phase's first action's start
to its last one's end in the authority's ``apply.log`` (`careconcile-workspace/<cluster>/
log/apply-*/`; ``plan`` is from the subprocess' start to the first log line: start-up,
lock, observing, planning); restarts per component (the plan's ``restart`` actions, by
``params.component``), and the outages it announced (restarts whose ``reason`` says
``outage:``) against what was measured. For each poller: requests, failed requests, the
longest time in which no request succeeded (a failed request is no answer), and the time
with failures: per apiserver, each run of failed requests to it (no success to that
apiserver between them) from its first request's start to its last one's end, added up
over the runs and the apiservers. Every failure window is also printed with the actions
that ran in it. Sandboxes live in a temporary directory and are torn down at the end, on
an error and on Ctrl-C (or SIGTERM); a failed apply is reported with its error and the
log lines around it, and the other cases still run. ``--logs DIR`` keeps every
``apply.log`` and saved plan (neither holds a private key) in DIR.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import _script  # benchmarks/_script.py, beside this script
from reconciler import sandbox
from reconciler.core import extension_apiserver as extension
from reconciler.core.plan import PHASES
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths
from reconciler.sandbox.binaries import KUBERNETES_VERSION, require_binaries, require_extension_apiserver

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.integration.rotation import (  # noqa: E402  (the tests' clients, and counter edit)
    EtcdSampler, Poller, set_rotation, through_load_balancer,
)

AUTHORITIES = ("clusterCA", "etcdCA", "frontProxyCA")
FLUNDERS = extension.flunders_path("default")
ETCD_INTERVAL = 0.5
SETTLE_SECONDS = 120.0  # how long the pollers go on after the apply while requests fail
# "<stamp> start ID: reason", "<stamp> done ID (1.234s)", "<stamp> failed ID (1.234s): error";
# an id has no spaces (targets such as node:/etc/kubernetes/pki/ca.crt have colons).
LOG_LINE = re.compile(r"^(\S+) (start|done|failed) (\S+)")


def parse_case(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or int(match[1]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a case is CONTROL_PLANESxWORKERS, such as 1x50 or 3x3")
    return int(match[1]), int(match[2])


# --- what clients see ----------------------------------------------------------------------

@dataclass
class Request:
    start: float  # time.time(), to set beside the apply log's timestamps
    end: float
    server: str | None
    ok: bool
    error: str = ""


class RecordingPoller(Poller):
    """The tests' Poller, recording each request's start, end, apiserver and outcome; the
    request itself is the Poller's (the kubeconfig read afresh, a context in turn)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.outcomes: list[Request] = []

    def _run(self, turn: int) -> None:
        from reconciler.core import kubeconfig
        from reconciler.shell.kube import KubeClient, kubeconfig_target

        while not self._stop.is_set():
            server, ok, started, error = None, False, time.time(), ""
            try:
                text = self._text()
                document = kubeconfig.parse(text, source=str(self.kubeconfig))
                servers = {c["name"]: c["cluster"]["server"] for c in document["clusters"]}
                contexts = [c["name"] for c in document["contexts"]
                            if servers.get(c["context"]["cluster"]) in self.servers]
                context = contexts[turn % len(contexts)]
                turn += 1
                target = kubeconfig_target(text, source=str(self.kubeconfig), context=context,
                                           base=self.kubeconfig.parent)
                server = target.server
                with KubeClient(target, timeout=10) as client:
                    client.get(self.path)
                ok = True
            except Exception as exc:  # every failure counts, whatever its kind
                error = f"{type(exc).__name__}: {exc}"
                self.failures.append(f"{time.strftime('%H:%M:%S')} {server} {error}")
            with self._count:
                self.requests += 1
                self.finished.append(time.monotonic())
                self.outcomes.append(Request(started, time.time(), server, ok, error))
                if ok:
                    self.per_server[server] = self.per_server.get(server, 0) + 1
            self._stop.wait(self.interval)

    def longest_without_success(self, span: tuple[float, float]) -> float:
        """The longest time in ``span`` (time.time()) in which no request succeeded."""
        start, end = self.without_success(span)
        return end - start

    def without_success(self, span: tuple[float, float]) -> tuple[float, float]:
        """Where that longest time is: (from, to)."""
        times = [span[0], *sorted(r.end for r in self.outcomes if r.ok), span[1]]
        return max(zip(times, times[1:]), key=lambda pair: pair[1] - pair[0])

    def failure_windows(self) -> list[tuple[str | None, float, float, int]]:
        """Per apiserver, each run of failed requests to it with no success to it between:
        (server, first start, last end, failed requests)."""
        windows = []
        for server in sorted({r.server or "" for r in self.outcomes}):
            run: list[Request] = []
            for request in sorted((r for r in self.outcomes if (r.server or "") == server), key=lambda r: r.end):
                if request.ok:
                    if run:
                        windows.append((server or None, run[0].start, max(r.end for r in run), len(run)))
                    run = []
                else:
                    run.append(request)
            if run:
                windows.append((server or None, run[0].start, max(r.end for r in run), len(run)))
        return sorted(windows, key=lambda window: window[1])


# --- the apply log and the plan ------------------------------------------------------------

@dataclass
class Event:
    when: float  # time.time()
    kind: str  # start, done, failed
    action: str
    authority: str
    phase: int
    line: str


def parse_action(action_id: str) -> tuple[str, int]:
    """(authority, phase) of an action id: CLUSTER/PHASE/... is the cluster CA's,
    CLUSTER/AUTHORITY/PHASE/... another's."""
    parts = action_id.split("/")
    if parts[1].isdigit():
        return "clusterCA", int(parts[1])
    return parts[1], int(parts[2])


def stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_logs(paths: list[Path]) -> tuple[list[Event], float | None]:
    """Every start/done/failed event of these apply logs, in time order, and the time of
    the first line of any (the first authority's header)."""
    events, first = [], None
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            when = stamp(line.split(" ", 1)[0])
            first = when if first is None else min(first, when)
            match = LOG_LINE.match(line)
            if match:
                action = match[3].removesuffix(":")
                authority, phase = parse_action(action)
                events.append(Event(when, match[2], action, authority, phase, line))
    return sorted(events, key=lambda event: event.when), first


def phase_walls(events: list[Event]) -> dict[tuple[str, int], float]:
    """(authority, phase): from the phase's first start to its last done or failed."""
    spans: dict[tuple[str, int], list[float]] = {}
    for event in events:
        spans.setdefault((event.authority, event.phase), []).append(event.when)
    return {key: max(times) - min(times) for key, times in spans.items()}


def running_at(events: list[Event], start: float, end: float) -> list[str]:
    """The actions that ran at some time in [start, end]."""
    begun: dict[str, float] = {}
    overlapping = []
    for event in events:
        if event.kind == "start":
            begun[event.action] = event.when
        elif event.action in begun:
            if begun.pop(event.action) <= end and event.when >= start:
                overlapping.append(event.action)
    overlapping += [action for action, when in begun.items() if when <= end]  # never finished
    return overlapping


def listed(actions: list[str], most: int = 4) -> str:
    """The first ``most`` of these actions (without the cluster name), and how many more."""
    names = [short(action) for action in actions]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def short(action_id: str) -> str:
    """The action id without its cluster name."""
    return action_id.split("/", 1)[1]


@dataclass
class Announced:
    restarts: dict[str, dict[str, int]] = field(default_factory=dict)  # authority: component: count
    outages: list[str] = field(default_factory=list)  # action ids
    actions: int = 0


def announced(plan: dict) -> Announced:
    result = Announced()
    for cluster in plan["clusters"]:
        by_component = result.restarts.setdefault(cluster["authority"], {})
        for action in cluster["actions"]:
            result.actions += 1
            if action["kind"] != "restart":
                continue
            component = action["params"]["component"]
            by_component[component] = by_component.get(component, 0) + 1
            if "outage:" in action["reason"]:
                result.outages.append(action["id"])
    return result


# --- one case --------------------------------------------------------------------------------

def careconcile(args: list[str], workspace: Path, out: Path) -> tuple[int, float, float]:
    """The CLI as a subprocess, its output to ``out``: (exit code, start time.time(), seconds)."""
    started, clock = time.time(), time.monotonic()
    with out.open("w") as stream:
        code = subprocess.run([sys.executable, "-m", "reconciler", *args, "--workspace", str(workspace)],
                              stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                              timeout=3600).returncode
    return code, started, time.monotonic() - clock


def failure_report(events: list[Event], output: str, logs: list[Path]) -> str:
    """The apply's last output lines and, for its first failed action, the log lines around it."""
    lines = ["apply output (last 25 lines):", *("  " + line for line in output.splitlines()[-25:])]
    failed = next((event for event in events if event.kind == "failed"), None)
    if failed is not None:
        for path in logs:
            text = path.read_text().splitlines()
            if failed.line in text:
                index = text.index(failed.line)
                lines.append(f"{path} lines {max(0, index - 12) + 1}-{index + 1}:")
                lines += ["  " + line for line in text[max(0, index - 12):index + 1]]
    return "\n".join(lines)


def settle(api: RecordingPoller, aggregated: RecordingPoller, ended: float, quiet: float = 2.0,
           limit: float = SETTLE_SECONDS) -> float | None:
    """After the apply, poll on until neither poller has failed for ``quiet`` seconds (at
    least that long); the seconds after the apply's end until the last failure, or None if
    requests still failed ``limit`` seconds after it."""
    while True:
        now = time.time()
        last = max((r.end for p in (api, aggregated) for r in list(p.outcomes) if not r.ok and r.end >= ended),
                   default=ended)
        if now - last >= quiet and now - ended >= quiet:
            return last - ended
        if now - ended > limit:
            return None
        time.sleep(0.2)


def after_apply(settled: float | None) -> str:
    if settled is None:
        return f"requests still failed {SETTLE_SECONDS:.0f} s after the apply's end"
    if settled == 0:
        return "no request failed after the apply's end"
    return f"the last failed request ended {settled:.1f}s after the apply's end"


def rotate(info, rotation: int, workspace: Path, scratch: Path, keep: Path | None, label: str) -> dict:
    spec = Path(info.spec)
    cluster = info.name
    set_rotation(spec, rotation, *AUTHORITIES)
    plan_file = scratch / f"plan-{label}.json"
    code, _, _ = careconcile(["plan", str(spec), "--out", str(plan_file)], workspace, scratch / f"plan-{label}.out")
    if code != 0:
        raise RuntimeError(f"careconcile plan failed ({code}):\n{(scratch / f'plan-{label}.out').read_text()}")
    plan = announced(json.loads(plan_file.read_text()))
    log_root = workspace / cluster / "log"
    before = set(log_root.glob("apply-*")) if log_root.is_dir() else set()
    kubeconfig = Path(info.kubeconfig)
    # Several control planes: through the load balancer, as an HA cluster's clients go.
    servers, read = ({info.load_balancer}, through_load_balancer(info)) if info.load_balancer else \
        (set(info.apiservers), None)
    api = RecordingPoller(kubeconfig, servers, read=read)
    aggregated = RecordingPoller(kubeconfig, servers, read=read, path=FLUNDERS)
    etcd = EtcdSampler(info.etcd, Path(info.nodes[0].root) / "etc/kubernetes/pki/etcd")
    with api, aggregated, etcd:
        time.sleep(1.0)  # a second of the cluster at rest before, to see the pollers work
        code, started, seconds = careconcile(["apply", str(spec), "--auto-approve"], workspace,
                                             scratch / f"apply-{label}.out")
        ended = time.time()
        settled = settle(api, aggregated, ended)
        stopped = time.time()
    logs = sorted(path / "apply.log" for path in set(log_root.glob("apply-*")) - before)
    events, first_line = read_logs(logs)
    output = (scratch / f"apply-{label}.out").read_text()
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(plan_file, keep / plan_file.name)
        shutil.copy(scratch / f"apply-{label}.out", keep / f"apply-{label}.out")
        for path in logs:
            shutil.copy(path, keep / f"{label}-{path.parent.name}.log")
    done_restarts: dict[str, dict[str, int]] = {}
    for event in events:
        if event.kind == "done" and "/restart/" in event.action:
            component = event.action.rsplit(":", 1)[1]
            counts = done_restarts.setdefault(event.authority, {})
            counts[component] = counts.get(component, 0) + 1
    span = (started, stopped)  # the apply, and the polling after it until no request failed
    sample = {
        "code": code, "total": seconds, "plan": (first_line - started) if first_line else float("nan"),
        "phases": phase_walls(events), "announced": plan, "done_restarts": done_restarts,
        "api": api, "aggregated": aggregated, "etcd": etcd, "span": span, "events": events, "settled": settled,
        "failure": failure_report(events, output, logs) if code != 0 else None,
    }
    return sample


def answers(failed: list[Request]) -> list[tuple[float, int, str]]:
    """Consecutive failures with the same answer, collapsed: (first start, how many, the
    answer: the error without the request's description)."""
    runs: list[tuple[float, int, str]] = []
    for request in failed:
        answer = request.error.split("): ", 1)[-1][:110]
        answer = f"{request.error.split(':', 1)[0]}: {answer}"
        if runs and runs[-1][2] == answer:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, answer)
        else:
            runs.append((request.start, 1, answer))
    return runs


def describe_windows(name: str, poller: RecordingPoller, events: list[Event], origin: float,
                     span: tuple[float, float]) -> list[str]:
    lines = []
    for server, start, end, count in poller.failure_windows():
        actions = running_at(events, start, end)
        failed = sorted((r for r in poller.outcomes if r.server == server and not r.ok
                         and start <= r.start and r.end <= end), key=lambda r: r.end)
        lines.append(f"    {name} {server}: {count} failed from +{start - origin:.1f}s to +{end - origin:.1f}s "
                     f"({end - start:.1f}s); running: {listed(actions) or '(no action, after the apply)'}")
        lines += [f"      from +{first - origin:.1f}s, {number} x {answer}" for first, number, answer in answers(failed)]
    start, end = poller.without_success(span)
    lines.append(f"    {name} longest without a success: {end - start:.1f}s from +{start - origin:.1f}s; running: "
                 f"{listed(running_at(events, start, end)) or '(no action)'}")
    kinds: dict[str, int] = {}
    for failure in poller.failures:
        kind = failure.split(" ", 2)[2].split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    if kinds:
        lines.append(f"    {name} failures by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    return lines


def describe_quorum(etcd: EtcdSampler, events: list[Event], origin: float) -> list[str]:
    lines, run = [], []
    for when, healthy in etcd.samples + [(float("inf"), len(etcd.urls))]:
        if healthy < etcd.quorum:
            run.append(when)
        elif run:
            actions = running_at(events, run[0], run[-1])
            lines.append(f"    etcd without quorum: {len(run)} samples from +{run[0] - origin:.1f}s to "
                         f"+{run[-1] - origin:.1f}s; running: {listed(actions) or '(no action)'}")
            run = []
    if etcd.errors:
        lines.append("    etcd member errors by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(etcd.errors.items())))
    return lines


def measure(control_planes: int, workers: int, repeats: int, root: Path, keep: Path | None) -> list[dict]:
    name = f"auth-{control_planes}x{workers}"
    workspace = root / f"workspace-{name}"
    scratch = root / f"scratch-{name}"
    scratch.mkdir()
    samples = []
    try:
        started = time.monotonic()
        info = sandbox.up(name, control_planes=control_planes, workers=workers, extension_apiserver=True)
        print(f"  {name}: up in {time.monotonic() - started:.1f}s", file=sys.stderr)
        for attempt in range(repeats):
            sample = rotate(info, attempt + 1, workspace, scratch, keep, f"{name}-{attempt + 1}")
            samples.append(sample)
            origin = sample["span"][0]
            api, aggregated, etcd = sample["api"], sample["aggregated"], sample["etcd"]
            print(f"  {name} rotation {attempt + 1}: exit {sample['code']}, {sample['total']:.1f}s; API "
                  f"{api.requests} requests, {len(api.failures)} failed; aggregated {aggregated.requests}, "
                  f"{len(aggregated.failures)} failed; etcd {len(etcd.samples)} samples, "
                  f"{len(etcd.without_quorum())} without quorum, {etcd.unreadable} unreadable; "
                  + after_apply(sample["settled"]), file=sys.stderr)
            for line in (describe_windows("API", api, sample["events"], origin, sample["span"])
                         + describe_windows("aggregated", aggregated, sample["events"], origin, sample["span"])
                         + describe_quorum(etcd, sample["events"], origin)):
                print(line, file=sys.stderr)
            planned = {authority: r for authority, r in sample["announced"].restarts.items() if r}
            if planned != sample["done_restarts"] and sample["code"] == 0:
                print(f"    restarts done {sample['done_restarts']} differ from the saved plan's "
                      f"{sample['announced'].restarts}", file=sys.stderr)
            if sample["failure"]:
                print(f"  {name} rotation {attempt + 1} FAILED (exit {sample['code']}):\n{sample['failure']}",
                      file=sys.stderr)
                break  # later rotations would resume this one, not measure a rotation
    except Exception as exc:  # the case failed before or between rotations: report it, run the others
        print(f"  {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        samples.append({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        _script.teardown(SandboxPaths.named(name))
    return samples


# --- the tables ------------------------------------------------------------------------------

def cell(values: list[float], digits: int = 1) -> str:
    values = [v for v in values if v == v]  # not NaN
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def count(values: list[float]) -> str:
    return cell(values, 0) if len(set(values)) > 1 else f"{values[0]:.0f}"


def restarts_text(restarts: dict[str, dict[str, int]]) -> str:
    totals: dict[str, int] = {}
    for by_component in restarts.values():
        for component, number in by_component.items():
            totals[component] = totals.get(component, 0) + number
    return ", ".join(f"{component} {number}" for component, number in sorted(totals.items(), key=lambda i: -i[1]))


def time_with_failures(poller: RecordingPoller) -> float:
    return sum(end - start for _, start, end, _ in poller.failure_windows())


def tables(results: dict[tuple[int, int], list[dict]], repeats: int) -> None:
    print(f"Kubernetes {KUBERNETES_VERSION}, {os.cpu_count()} cores, {repeats} rotation(s) of all three CAs per case, "
          "`careconcile apply SPEC --auto-approve` as a subprocess; seconds"
          + (", median (min-max)" if repeats > 1 else "") + ". A phase's time is its wall time in the "
          "authority's apply.log (first start to last done), its check included; plan: from the apply's "
          "start to its first log line.\n")
    phase_columns = [f"{number} {name}" for number, name in PHASES.items()]
    print("| case | authority | " + " | ".join(phase_columns) + " | authority total |")
    print("|---|---|" + "---:|" * (len(phase_columns) + 1))
    for (control_planes, workers), samples in results.items():
        good = [s for s in samples if "error" not in s and s["code"] == 0]
        case = f"{control_planes} cp, {workers} workers"
        if not good:
            print(f"| {case} | (failed: see below) |" + " |" * (len(phase_columns) + 1))
            continue
        print(f"| {case} | plan (start-up, lock, observe, plan) |" + " |" * len(phase_columns)
              + f" {cell([s['plan'] for s in good])} |")
        for authority in AUTHORITIES:
            phases = [cell([s["phases"][(authority, n)] for s in good if (authority, n) in s["phases"]])
                      for n in PHASES]
            totals = [sum(v for (a, _), v in s["phases"].items() if a == authority) for s in good]
            print(f"| {case} | {authority} | " + " | ".join(phases) + f" | {cell(totals)} |")
        print(f"| {case} | **apply, all three** |" + " |" * len(phase_columns)
              + f" **{cell([s['total'] for s in good])}** |")
    print()
    print("| case | actions | restarts (plan) | outages announced | API requests | API failed | API longest "
          "without success | API time with failures | aggregated requests | aggregated failed | aggregated "
          "longest without success | aggregated time with failures | etcd samples | etcd without quorum |")
    print("|---|---:|---|---:|" + "---:|" * 10)
    for (control_planes, workers), samples in results.items():
        good = [s for s in samples if "error" not in s]
        case = f"{control_planes} cp, {workers} workers"
        if not good:
            print(f"| {case} | failed: {samples[0]['error']} |" + " |" * 12)
            continue
        first = good[0]
        cells = [count([s["announced"].actions for s in good]), restarts_text(first["announced"].restarts),
                 count([len(s["announced"].outages) for s in good])]
        for name in ("api", "aggregated"):
            cells += [count([s[name].requests for s in good]), count([len(s[name].failures) for s in good]),
                      cell([s[name].longest_without_success(s["span"]) for s in good]),
                      cell([time_with_failures(s[name]) for s in good])]
        cells += [count([len(s["etcd"].samples) for s in good]), count([len(s["etcd"].without_quorum()) for s in good])]
        print(f"| {case}{' (apply FAILED)' if any(s['code'] for s in good) else ''} | " + " | ".join(cells) + " |")
    print()
    for (control_planes, workers), samples in results.items():
        for index, sample in enumerate(samples):
            prefix = f"- {control_planes} cp, {workers} workers, rotation {index + 1}:"
            if "error" in sample:
                print(f"{prefix} {sample['error']}")
                continue
            by_authority = "; ".join(f"{authority} {restarts_text({authority: r})}"
                                     for authority, r in sample["announced"].restarts.items() if r)
            print(f"{prefix} restarts by authority: {by_authority}; outages announced: "
                  + (", ".join(short(a) for a in sample["announced"].outages) or "none")
                  + f"; etcd samples unreadable: {sample['etcd'].unreadable}; API longest gap (no request ended): "
                  f"{sample['api'].longest_gap():.2f}s, aggregated {sample['aggregated'].longest_gap():.2f}s; "
                  + after_apply(sample["settled"]))
            if sample["failure"]:
                print(f"{prefix} apply FAILED (exit {sample['code']}):\n```\n{sample['failure']}\n```")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=parse_case, nargs="+", default=[(1, 50), (3, 3)], metavar="CPxW",
                        help="control planes x workers, a sandbox each (default: 1x50 3x3)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--logs", type=Path, metavar="DIR",
                        help="keep every apply.log, saved plan and apply output here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    require_binaries()
    require_extension_apiserver()
    with tempfile.TemporaryDirectory(prefix="careconcile-bench-") as root:
        os.environ[ROOT_ENV] = root
        results = {case: measure(*case, args.repeats, Path(root), args.logs) for case in args.cases}
    tables(results, args.repeats)
    return 0 if all("error" not in s and s["code"] == 0 for samples in results.values() for s in samples) else 1


if __name__ == "__main__":
    _script.run(main)
