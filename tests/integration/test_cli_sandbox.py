"""`careconcile sandbox` run as a user runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import sandbox_processes

pytestmark = pytest.mark.integration

CARECONCILE = str(Path(sys.executable).parent / "careconcile")
PEM_KEY_HEADERS = ("PRIVATE KEY-----",)


def run(*args: str, check_exit: int | None = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([CARECONCILE, *args], capture_output=True, text=True, timeout=300)
    for stream in (result.stdout, result.stderr):
        assert not any(header in stream for header in PEM_KEY_HEADERS), "a private key was printed"
    if check_exit is not None:
        assert result.returncode == check_exit, result.stderr
    return result


@pytest.mark.usefixtures("sandbox_root")
def test_up_json_then_down_twice_in_a_row_leaves_nothing_behind(start_sandbox):
    del start_sandbox  # only for its check that the binaries exist
    for attempt in (1, 2):
        up = run("sandbox", "up", "--name", "demo", "--workers", "3", "--output", "json")
        info = json.loads(up.stdout)
        assert {"name", "kubeconfig", "spec", "nodes_dir", "apiservers"} <= set(info)
        assert info["name"] == "demo" and len(info["apiservers"]) == 1
        assert Path(info["kubeconfig"]).is_file() and Path(info["spec"]).is_file()
        assert sorted(os.listdir(info["nodes_dir"])) == ["demo-control-plane-1", "demo-worker-1",
                                                          "demo-worker-2", "demo-worker-3"]
        assert info["startup_seconds"] < 60, f"attempt {attempt} took {info['startup_seconds']}s"
        assert sandbox_processes(info["directory"]), "the sandbox should be running"

        status = json.loads(run("sandbox", "status", "--name", "demo", "--output", "json").stdout)
        assert status["sandboxes"][0]["healthy"] and status["sandboxes"][0]["ready_nodes"] == 3

        again = run("sandbox", "up", "--name", "demo", check_exit=1)
        assert "sandbox 'demo' already exists" in again.stderr

        down = run("sandbox", "down", "--name", "demo")
        assert 'Sandbox "demo" stopped and removed.' in down.stdout
        assert sandbox_processes(info["directory"]) == []
        assert not Path(info["directory"]).exists()


@pytest.mark.usefixtures("sandbox_root")
def test_errors_name_the_sandbox_and_exit_nonzero():
    missing = run("sandbox", "down", "--name", "nope", check_exit=1)
    assert "no sandbox named 'nope'" in missing.stderr
    status = run("sandbox", "status", "--name", "nope", check_exit=1)
    assert "no sandbox named 'nope'" in status.stderr
    bad = run("sandbox", "up", "--name", "Not_A_Name", check_exit=64)
    assert "sandbox name 'Not_A_Name' is not valid" in bad.stderr
