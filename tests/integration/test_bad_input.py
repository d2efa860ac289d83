"""Bad input fails with a message that names the file, node or server, exit 1, and changes nothing."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .rotation import careconcile, set_rotation

pytestmark = pytest.mark.integration


def _tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and "var/lib/etcd" not in str(path):
            digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def _copy_spec(cluster, tmp_path: Path, replace: dict[str, str]) -> Path:
    text = Path(cluster.spec).read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    set_rotation(spec, 1)  # a rotation is wanted, so apply would change things if it could
    return spec


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_spec_with_three_errors_reports_all_three_with_positions(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text(
        "apiVersion: careconcile.dev/v1alpha1\n"
        "kind: CASpec\n"
        "metadata:\n"
        "  name: broken\n"
        "spec:\n"
        "  clusters:\n"
        "  - name: one\n"
        "    nodes:\n"
        "    - name: n1\n"
        "      role: master\n"
        "      access: {local: {root: /tmp}}\n"
        "    colour: blue\n"
    )
    result = careconcile("plan", str(spec), workspace=tmp_path)
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(spec) + ":")]
    assert len(problems) == 3, result.stderr
    assert re.search(r":7:5: spec\.clusters\[0\]\.kubeconfig: required", result.stderr)  # missing field
    assert re.search(r":10:13: spec\.clusters\[0\]\.nodes\[0\]\.role: ", result.stderr)  # bad value
    assert re.search(r":12:5: spec\.clusters\[0\]\.colour: .*unknown", result.stderr)   # unknown field


def test_an_unreachable_api_fails_clearly_and_changes_nothing(cluster, tmp_path):
    before = _tree_digest(Path(cluster.nodes_dir))
    kubeconfig = tmp_path / "kubeconfig"
    server = cluster.apiservers[0]
    dead = f"https://127.0.0.1:{_closed_port()}"
    kubeconfig.write_text(Path(cluster.kubeconfig).read_text().replace(server, dead))
    spec = _copy_spec(cluster, tmp_path, {cluster.kubeconfig: str(kubeconfig)})
    for command in (["plan", str(spec)], ["apply", str(spec), "--auto-approve"]):
        result = careconcile(*command, workspace=tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "unreachable" in result.stderr and dead in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert _tree_digest(Path(cluster.nodes_dir)) == before


def test_a_missing_node_directory_fails_clearly_and_changes_nothing(cluster, tmp_path):
    before = _tree_digest(Path(cluster.nodes_dir))
    gone = tmp_path / "no-such-node"
    spec = _copy_spec(cluster, tmp_path, {cluster.nodes[-1].root: str(gone)})
    result = careconcile("apply", str(spec), "--auto-approve", workspace=tmp_path)
    assert result.returncode == 1
    assert cluster.nodes[-1].name in result.stderr and str(gone) in result.stderr and "does not exist" in result.stderr
    assert _tree_digest(Path(cluster.nodes_dir)) == before


def test_a_malformed_certificate_is_named_by_node_and_path(cluster, tmp_path):
    before = _tree_digest(Path(cluster.nodes_dir))
    broken = tmp_path / "broken-worker"
    (broken / "etc/kubernetes/pki").mkdir(parents=True)
    (broken / "etc/kubernetes/pki/ca.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    spec = _copy_spec(cluster, tmp_path, {cluster.nodes[-1].root: str(broken)})
    result = careconcile("plan", str(spec), workspace=tmp_path)
    assert result.returncode == 1
    assert cluster.nodes[-1].name in result.stderr and "/etc/kubernetes/pki/ca.crt" in result.stderr
    assert "Traceback" not in result.stderr
    assert _tree_digest(Path(cluster.nodes_dir)) == before


def test_a_node_directory_linked_out_of_the_node_root_is_refused_and_nothing_is_written(cluster, tmp_path):
    """A worker whose etc/kubernetes/pki is a link to a directory outside its root: apply
    stops naming the node and the path, exit 1, and writes nothing there or on the nodes."""
    before = _tree_digest(Path(cluster.nodes_dir))
    worker = cluster.nodes[-1]
    root = tmp_path / "worker"
    shutil.copytree(worker.root, root, symlinks=True, ignore=shutil.ignore_patterns("*.sock"))
    elsewhere = tmp_path / "elsewhere"
    shutil.move(root / "etc/kubernetes/pki", elsewhere)
    os.symlink(elsewhere, root / "etc/kubernetes/pki")
    outside = _tree_digest(elsewhere)
    spec = _copy_spec(cluster, tmp_path, {worker.root: str(root)})
    result = careconcile("apply", str(spec), "--auto-approve", workspace=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"node {worker.name}" in result.stderr and "/etc/kubernetes/pki/" in result.stderr, result.stderr
    assert str(elsewhere) in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert _tree_digest(elsewhere) == outside and sorted(p.name for p in elsewhere.iterdir()) == ["ca.crt"]
    assert _tree_digest(Path(cluster.nodes_dir)) == before


def test_apply_without_a_terminal_needs_auto_approve(cluster, tmp_path):
    spec = _copy_spec(cluster, tmp_path, {})
    result = careconcile("apply", str(spec), workspace=tmp_path)
    assert result.returncode == 64 and "--auto-approve" in result.stderr


def test_apply_on_a_terminal_asks_and_a_no_changes_nothing(cluster, tmp_path):
    before = _tree_digest(Path(cluster.nodes_dir))
    spec = _copy_spec(cluster, tmp_path, {})
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "reconciler", "apply", str(spec)], stdin=terminal,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "CARECONCILE_WORKSPACE": str(tmp_path)})
    os.close(terminal)
    try:
        os.write(controller, b"no\n")
        stdout, stderr = process.communicate(timeout=120)
    finally:
        os.close(controller)
    assert process.returncode == 0, stderr
    assert b"Do you want to perform these actions?" in stdout and b"Apply cancelled" in stderr
    assert _tree_digest(Path(cluster.nodes_dir)) == before
