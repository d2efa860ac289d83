"""What `sandbox up` does when a component cannot start, with stand-in binaries (shell
scripts) so that the failure is certain; no Kubernetes binaries needed."""

from __future__ import annotations


import pytest

from reconciler import sandbox
from reconciler.errors import SandboxError
from reconciler.sandbox import binaries
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths

from .helpers import process_alive, sandbox_processes


@pytest.fixture
def broken_binaries(tmp_path, monkeypatch):
    """Every binary sleeps, except kube-apiserver, which fails at once, every time."""
    bin_dir = tmp_path / "cache" / binaries.KUBERNETES_VERSION / "bin"
    bin_dir.mkdir(parents=True)
    for name in binaries.BINARIES:
        script = "echo 'listen tcp 127.0.0.1: bind: address already in use' >&2; exit 1" \
            if name == "kube-apiserver" else "exec sleep 300"
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / binaries.KWOK_STAGES).write_text("")
    monkeypatch.setenv(binaries.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "sandboxes"))


@pytest.mark.usefixtures("broken_binaries")
def test_a_crash_looping_component_fails_up_with_its_log_and_stops_everything():
    with pytest.raises(SandboxError) as error:
        sandbox.up("broken", workers=1)
    message = str(error.value)
    assert "broken-control-plane-1/kube-apiserver crashed (exit code 1)" in message
    assert "address already in use" in message  # the tail of the component's log
    assert "`careconcile sandbox down --name broken` removes it" in message
    paths = SandboxPaths.named("broken")
    assert not process_alive(int(paths.supervisor_pid.read_text()))
    assert (paths.logs / "broken-control-plane-1" / "kube-apiserver.log").is_file()
    assert sandbox_processes(paths.directory) == []
    sandbox.down(paths)
    assert not paths.directory.exists()
