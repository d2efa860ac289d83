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
