"""The sandbox's kubelet for static pods: one process per sandbox that runs every
manifest found in each node's /etc/kubernetes/manifests.

Like a kubelet, it restarts a component when its manifest file changes and restarts a
crashed one after a back-off. Unlike a kubelet it hides nothing: every start, exit and
restart is counted in ``run/state.json``, which `careconcile sandbox status` reports.

Run as ``python -m reconciler.sandbox.supervisor SANDBOX_DIR``; SIGTERM stops every
component (workers' stand-ins first, etcd last; the components of one kind on every
node together, but etcd members one at a time) and then the supervisor.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

from reconciler._files import atomic_write_json
from reconciler.core.kubeadm import MANIFESTS_DIR
from reconciler.sandbox._paths import SandboxPaths, node_path

POLL_SECONDS = 0.25
STOP_GRACE_SECONDS = 15.0
BACKOFF_SECONDS = (1, 2, 4, 8, 16, 30)
# Lower stops first: what depends on the apiserver goes before it, etcd goes last.
# The extension apiserver (`up --extension-apiserver`) goes after the controller-manager:
# the controller-manager's garbage collector watches flunders through the aggregator, and
# sample-apiserver's shutdown waits for open watches until its request timeout (60 s; its
# manifest's grace period here, then SIGKILL). Its own etcd goes last, with the cluster's.
# The load balancer in front of the apiservers (`haproxy`, HA sandboxes) goes just before them.
_STOP_ORDER = {"kwok": 0, "kube-scheduler": 1, "kube-controller-manager": 1, "extension-apiserver": 1.5,
               "haproxy": 1.8, "kube-apiserver": 2, "etcd": 3, "extension-apiserver-etcd": 3}
# Components of one kind stop together, on every node at once, except these, one after the
# other: etcd members stopped together hand the leadership back and forth (a stopping leader
# transfers it to a peer, which is stopping too), and the last leader gives up only after
# etcd's request timeout, 7 s; one at a time, each hands it to a member that stays.
_STOP_ONE_AT_A_TIME = {"etcd"}
_PR_SET_PDEATHSIG = 1


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _die_with_supervisor() -> None:
    """Runs in the child before exec: if the supervisor dies, the kernel kills the child,
    so a killed supervisor never leaves orphaned control-plane processes behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class ComponentState:
    node: str
    component: str
    manifest: str
    status: str = "pending"  # pending | running | crashed | stopped | invalid
    pid: int | None = None
    started_at: str | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_at: str | None = None
    last_restart_reason: str | None = None
    message: str | None = None
    manifest_digest: str | None = None


@dataclass
class _Running:
    state: ComponentState
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    grace_seconds: float = STOP_GRACE_SECONDS
    process: subprocess.Popen | None = None
    next_start: float = 0.0
    crash_streak: int = 0
    started_monotonic: float = 0.0


class ManifestError(Exception):
    pass


@dataclass(frozen=True)
class Launch:
    """What a manifest asks to run, as a kubelet reads it: the argv, the container's
    environment, and how long a stop waits after SIGTERM before SIGKILL
    (`terminationGracePeriodSeconds`; the supervisor's own default when unset)."""

    command: list[str]
    env: dict[str, str]
    grace_seconds: float


def launch_from_manifest(text: str, *, node_root: Path, bin_dir: Path,
                         extra_bin_dirs: tuple[Path, ...] = ()) -> Launch:
    """The argv a manifest asks for, with the node's absolute paths (flag values and
    arguments of their own) mapped under its root, as a container's hostPath mounts map
    them on a real node. A command without a path is looked up in ``bin_dir``, then in
    ``extra_bin_dirs`` (the extension apiserver's, the load balancer's)."""
    try:
        pod = YAML(typ="safe", pure=True).load(text)
        container = pod["spec"]["containers"][0]
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        env = {item["name"]: item["value"] for item in container.get("env") or []}
        grace = pod["spec"].get("terminationGracePeriodSeconds")
    except (YAMLError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ManifestError(f"not a static-pod manifest with a container command: {exc}") from exc
    if not argv or not all(isinstance(arg, str) for arg in argv):
        raise ManifestError("the first container has no command")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ManifestError("the first container's env must map names to string values")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int) or grace < 0):
        raise ManifestError(f"terminationGracePeriodSeconds must be a whole number of seconds, not {grace!r}")
    if os.path.isabs(argv[0]):
        binary = argv[0]
    else:
        found = [d / argv[0] for d in (bin_dir, *extra_bin_dirs) if (d / argv[0]).exists()]
        binary = str(found[0] if found else bin_dir / argv[0])
    mapped = [binary]
    for arg in argv[1:]:
        flag, sep, value = arg.partition("=")
        if sep and value.startswith("/"):
            arg = f"{flag}={node_path(node_root, value)}"
        elif arg.startswith("/"):
            arg = str(node_path(node_root, arg))
        mapped.append(arg)
    return Launch(mapped, env, STOP_GRACE_SECONDS if grace is None else float(grace))


class Supervisor:
    def __init__(self, paths: SandboxPaths) -> None:
        record = json.loads(paths.record.read_text())
        self.paths = paths
        self.bin_dir = Path(record["bin_dir"])
        self.extra_bin_dirs = tuple(Path(d) for d in record.get("extra_bin_dirs") or ())
        self.nodes = {node["name"]: Path(node["root"]) for node in record["nodes"]}
        self.components: dict[str, _Running] = {}
        self.stopping = False
        self.dirty = True
        # Components must not pick up the user's kubeconfig or proxy settings.
        self.env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",) and "proxy" not in k.lower()}

    # --- manifest scanning ---------------------------------------------------------
    def scan(self) -> None:
        seen: set[str] = set()
        for node, root in self.nodes.items():
            manifests = node_path(root, MANIFESTS_DIR)
            try:
                entries = sorted(manifests.iterdir())
            except FileNotFoundError:
                continue
            for path in entries:
                if path.suffix not in (".yaml", ".yml", ".json") or path.name.startswith("."):
                    continue
                key = f"{node}/{path.stem}"
                seen.add(key)
                try:
                    text = path.read_text()
                except OSError:
                    continue  # removed between listing and reading; the next scan sees it
                digest = hashlib.sha256(text.encode()).hexdigest()
                running = self.components.get(key)
                if running is not None and running.state.manifest_digest == digest:
                    continue
                self._manifest_changed(key, node, root, path, text, digest)
        for key in list(self.components):
            if key not in seen:
                self._stop(self.components[key], "manifest removed")
                del self.components[key]
                self.dirty = True

    def _manifest_changed(self, key: str, node: str, root: Path, path: Path, text: str, digest: str) -> None:
        running = self.components.get(key)
        if running is None:
            running = self.components[key] = _Running(ComponentState(node, path.stem, str(path)), [])
        running.state.manifest_digest = digest
        self.dirty = True
        try:
            launch = launch_from_manifest(text, node_root=root, bin_dir=self.bin_dir,
                                          extra_bin_dirs=self.extra_bin_dirs)
        except ManifestError as exc:
            # Keep what runs: a half-edited manifest must not take the component down.
            running.state.message = f"{path}: {exc}"
            if not running.command:
                running.state.status = "invalid"
            return
        running.state.message = None
        if not running.command:  # first valid manifest for this component
            running.command, running.env, running.grace_seconds = launch.command, launch.env, launch.grace_seconds
            self._start(running, reason=None)
            return
        self._stop(running, "manifest changed")  # with the grace period of the manifest it ran from
        running.command, running.env, running.grace_seconds = launch.command, launch.env, launch.grace_seconds
        running.crash_streak = 0
        running.state.restarts += 1
        self._start(running, reason="manifest changed")

    # --- processes --------------------------------------------------------------------
    def _log_path(self, state: ComponentState) -> Path:
        return self.paths.component_log(state.node, state.component)

    def _start(self, running: _Running, *, reason: str | None) -> None:
        state = running.state
        log_path = self._log_path(state)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"=== {_now()} supervisor: starting {state.component}"
                      f"{f' ({reason})' if reason else ''}\n".encode())
            log.flush()
            try:
                running.process = subprocess.Popen(
                    running.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.nodes[state.node],
                    env=self.env | running.env,
                    preexec_fn=_die_with_supervisor,
                )
            except OSError as exc:
                running.process = None
                state.status, state.pid, state.message = "crashed", None, f"cannot start: {exc}"
                self._schedule_restart(running)
                return
        state.status, state.pid, state.started_at = "running", running.process.pid, _now()
        running.started_monotonic = time.monotonic()
        state.last_restart_reason = reason or state.last_restart_reason
        self.dirty = True

    def _stop(self, running: _Running, reason: str) -> None:
        self._stop_together([running], reason)

    def _stop_together(self, group: list[_Running], reason: str) -> None:
        """SIGTERM to every process of ``group`` at once, then wait for them all (SIGKILL
        after each one's grace period): the apiservers of an HA sandbox, say, stop in the
        time of the slowest rather than of all of them in turn."""
        stopping = []
        for running in group:
            process = running.process
            if process is None or process.poll() is not None:
                running.process = None
                continue
            with open(self._log_path(running.state), "ab") as log:
                log.write(f"=== {_now()} supervisor: stopping {running.state.component} ({reason})\n".encode())
            process.terminate()
            stopping.append((running, process))
        signalled = time.monotonic()
        for running, process in stopping:
            try:
                process.wait(max(0.0, signalled + running.grace_seconds - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            running.process = None
            running.state.status, running.state.pid = "stopped", None
            self.dirty = True

    def _schedule_restart(self, running: _Running) -> None:
        delay = BACKOFF_SECONDS[min(running.crash_streak, len(BACKOFF_SECONDS) - 1)]
        running.crash_streak += 1
        running.next_start = time.monotonic() + delay
        self.dirty = True

    def reap(self) -> None:
        """Notice exits and restart crashed components after their back-off."""
        for running in self.components.values():
            process, state = running.process, running.state
            if process is not None:
                code = process.poll()
                if code is None:
                    # A component that stayed up a minute is healthy again: reset its back-off.
                    if running.crash_streak and time.monotonic() - running.started_monotonic > 60:
                        running.crash_streak = 0
                    continue
                running.process = None
                state.status, state.pid = "crashed", None
                state.last_exit_code, state.last_exit_at = code, _now()
                self._schedule_restart(running)
            elif state.status == "crashed" and running.command and time.monotonic() >= running.next_start:
                state.restarts += 1
                self._start(running, reason=f"crashed with exit code {state.last_exit_code}")

    def write_state(self) -> None:
        if not self.dirty:
            return
        atomic_write_json(self.paths.state, {
            "supervisor_pid": os.getpid(),
            "updated_at": _now(),
            "stopping": self.stopping,
            "components": {key: asdict(r.state) for key, r in sorted(self.components.items())},
        })
        self.dirty = False

    def stop_all(self) -> None:
        self.stopping = True
        for level in sorted({_STOP_ORDER.get(r.state.component, 0) for r in self.components.values()}):
            group = [r for r in self.components.values() if _STOP_ORDER.get(r.state.component, 0) == level]
            self._stop_together([r for r in group if r.state.component not in _STOP_ONE_AT_A_TIME],
                                "sandbox stopping")
            for running in group:
                if running.state.component in _STOP_ONE_AT_A_TIME:
                    self._stop(running, "sandbox stopping")
        self.dirty = True
        self.write_state()

    def run(self) -> None:
        def request_stop(signum: int, _frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        self.paths.run.mkdir(parents=True, exist_ok=True)
        self.paths.supervisor_pid.write_text(f"{os.getpid()}\n")
        try:
            while not self.stopping:
                self.scan()
                self.reap()
                self.write_state()
                time.sleep(POLL_SECONDS)
        finally:
            self.stop_all()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m reconciler.sandbox.supervisor SANDBOX_DIR", file=sys.stderr)
        return 64
    Supervisor(SandboxPaths(Path(argv[0]))).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
