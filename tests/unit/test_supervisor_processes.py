"""The supervisor's kubelet-like behaviour with a stand-in component (a shell script),
stepping its loop by hand: no Kubernetes binaries needed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from reconciler.core.kubeconfig import dump
from reconciler.core import kubeadm
from reconciler.sandbox import supervisor as supervisor_module
from reconciler._process import process_alive as _alive
from reconciler.sandbox._paths import SandboxPaths
from reconciler.sandbox.supervisor import Supervisor


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor_module, "BACKOFF_SECONDS", (0,))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sleeper = bin_dir / "sleeper"
    sleeper.write_text("#!/bin/sh\necho \"args: $*\"\nexec sleep 60\n")
    sleeper.chmod(0o755)
    root = tmp_path / "sb" / "nodes" / "n1"
    manifests = root / kubeadm.MANIFESTS_DIR.lstrip("/")
    manifests.mkdir(parents=True)
    paths = SandboxPaths(tmp_path / "sb")
    paths.record.write_text(json.dumps({"bin_dir": str(bin_dir), "nodes": [{"name": "n1", "root": str(root)}]}))
    sup = Supervisor(paths)
    yield sup, manifests, paths
    sup.stop_all()


def write(manifests: Path, name: str, *flags: str) -> None:
    (manifests / f"{name}.yaml").write_text(dump(kubeadm.static_pod(name, ["sleeper", *flags])))


def step(sup: Supervisor) -> dict:
    sup.scan()
    sup.reap()
    sup.write_state()
    return json.loads(sup.paths.state.read_text())["components"]


def test_start_restart_on_change_keep_on_invalid_and_stop_on_removal(setup):
    sup, manifests, paths = setup
    write(manifests, "a", "--config=/etc/a.conf")
    write(manifests, "b")
    first = step(sup)
    assert {k: v["status"] for k, v in first.items()} == {"n1/a": "running", "n1/b": "running"}
    time.sleep(0.3)
    assert "args: --config=" + str(paths.nodes / "n1" / "etc/a.conf") in (paths.logs / "n1/a.log").read_text()

    write(manifests, "a", "--config=/etc/a.conf", "--v=2")
    changed = step(sup)
    assert changed["n1/a"]["pid"] != first["n1/a"]["pid"] and changed["n1/a"]["restarts"] == 1
    assert changed["n1/a"]["last_restart_reason"] == "manifest changed"
    assert changed["n1/b"]["pid"] == first["n1/b"]["pid"] and changed["n1/b"]["restarts"] == 0

    (manifests / "a.yaml").write_text("spec: {containers: [")
    broken = step(sup)
    assert broken["n1/a"]["status"] == "running" and broken["n1/a"]["pid"] == changed["n1/a"]["pid"]
    assert "not a static-pod manifest" in broken["n1/a"]["message"]

    (manifests / "a.yaml").unlink()
    removed = step(sup)
    assert set(removed) == {"n1/b"}
    assert not _alive(changed["n1/a"]["pid"])


def test_a_crash_is_counted_and_restarted(setup):
    sup, manifests, _ = setup
    write(manifests, "c")
    pid = step(sup)["n1/c"]["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    crashed = step(sup)["n1/c"]
    assert crashed["status"] == "crashed" and crashed["last_exit_code"] == -9
    again = step(sup)["n1/c"]  # back-off is 0 in this test
    assert again["status"] == "running" and again["restarts"] == 1 and again["pid"] != pid
    assert again["last_restart_reason"] == "crashed with exit code -9"


def test_an_invalid_first_manifest_is_reported_and_started_once_fixed(setup):
    sup, manifests, _ = setup
    (manifests / "d.yaml").write_text("kind: Pod\n")
    assert step(sup)["n1/d"]["status"] == "invalid"
    write(manifests, "d")
    fixed = step(sup)["n1/d"]
    assert fixed["status"] == "running" and fixed["restarts"] == 0 and fixed["message"] is None


def test_stop_all_stops_kind_by_kind_etcd_last_apiservers_together_etcd_members_in_turn(tmp_path):
    """Two nodes, each with kwok (first node only), a kube-apiserver and an etcd stand-in;
    each takes 0.5 s to exit after SIGTERM and records when it got SIGTERM and when it exited."""
    bin_dir, events = tmp_path / "bin", tmp_path / "events"
    bin_dir.mkdir()
    for component in ("kwok", "kube-apiserver", "etcd"):
        script = bin_dir / component
        script.write_text(
            "#!/bin/sh\n"
            f"trap 'echo \"$NODE {component} term $(date +%s.%N)\" >> {events}; sleep 0.5; "
            f"echo \"$NODE {component} exit $(date +%s.%N)\" >> {events}; exit 0' TERM\n"
            "while :; do sleep 0.05; done\n")
        script.chmod(0o755)
    nodes = []
    for node in ("n1", "n2"):
        root = tmp_path / "sb" / "nodes" / node
        manifests = root / kubeadm.MANIFESTS_DIR.lstrip("/")
        manifests.mkdir(parents=True)
        for component in ("kube-apiserver", "etcd") + (("kwok",) if node == "n1" else ()):
            pod = kubeadm.static_pod(component, ["/bin/sh", "-c", f"NODE={node} exec {bin_dir / component}"])
            (manifests / f"{component}.yaml").write_text(dump(pod))
        nodes.append({"name": node, "root": str(root)})
    paths = SandboxPaths(tmp_path / "sb")
    paths.record.write_text(json.dumps({"bin_dir": str(bin_dir), "nodes": nodes}))
    sup = Supervisor(paths)
    try:
        assert {k: v["status"] for k, v in step(sup).items()} == dict.fromkeys(
            ["n1/etcd", "n1/kube-apiserver", "n1/kwok", "n2/etcd", "n2/kube-apiserver"], "running")
        time.sleep(0.3)  # the scripts have set their traps
        sup.stop_all()
    finally:
        sup.stop_all()
    seen: dict[tuple[str, str], dict[str, float]] = {}
    for line in events.read_text().splitlines():
        node, component, event, at = line.split()
        seen.setdefault((node, component), {})[event] = float(at)
    assert len(seen) == 5 and all(set(times) == {"term", "exit"} for times in seen.values()), seen

    def of(component: str) -> list[dict[str, float]]:
        return sorted((times for (_, c), times in seen.items() if c == component), key=lambda t: t["term"])

    assert max(t["exit"] for t in of("kwok")) <= min(t["term"] for t in of("kube-apiserver"))
    assert max(t["exit"] for t in of("kube-apiserver")) <= min(t["term"] for t in of("etcd"))
    # both apiservers got SIGTERM before either had exited: together
    assert max(t["term"] for t in of("kube-apiserver")) < min(t["exit"] for t in of("kube-apiserver"))
    # the second etcd member got SIGTERM only once the first had exited
    first, second = of("etcd")
    assert first["exit"] <= second["term"]
    assert {v["status"] for v in json.loads(paths.state.read_text())["components"].values()} == {"stopped"}
