"""A write through a symbolic link replaces the file the link points to and keeps the link,
over both transports: kubeadm nodes keep kubelet-client-current.pem as a link, and the
kubelet stops rotating its certificate if the link becomes a plain file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.core.spec import NodeSpec
from reconciler.shell.nodes import link_destination, node_files

from .sshd import running_sshd, ssh_access

pytestmark = pytest.mark.integration

CURRENT = "/var/lib/kubelet/pki/kubelet-client-current.pem"
DATED = "/var/lib/kubelet/pki/kubelet-client-2026-11-28-10-00-00.pem"


@pytest.fixture(scope="module")
def server():
    with running_sshd() as started:
        yield started


def _node_with_links(tmp_path: Path, *, absolute: bool) -> Path:
    root = tmp_path / ("absolute" if absolute else "relative")
    pki_dir = root / "var/lib/kubelet/pki"
    pki_dir.mkdir(parents=True)
    (root / DATED.lstrip("/")).write_bytes(b"old pair\n")
    os.chmod(root / DATED.lstrip("/"), 0o600)
    # kubeadm's link is absolute (a path on the node); a relative one must work too.
    os.symlink(DATED if absolute else os.path.basename(DATED), root / CURRENT.lstrip("/"))
    return root


def _transports(server, root: Path):
    local = node_files(NodeSpec.model_validate({"name": "n1", "role": "worker", "access": {"local": {"root": str(root)}}}))
    ssh = node_files(NodeSpec.model_validate({"name": "n1", "role": "worker",
                                              "access": {"ssh": ssh_access(server, root)}}))
    return {"local": local, "ssh": ssh}


@pytest.mark.parametrize("transport", ["local", "ssh"])
@pytest.mark.parametrize("absolute", [True, False], ids=["absolute-link", "relative-link"])
def test_a_write_through_a_link_keeps_the_link_and_replaces_its_file(server, tmp_path, transport, absolute):
    root = _node_with_links(tmp_path, absolute=absolute)
    files = _transports(server, root)[transport]
    try:
        assert files.read(CURRENT) == b"old pair\n"
        files.write(CURRENT, b"new pair\n", 0o600)
        link = root / CURRENT.lstrip("/")
        assert link.is_symlink(), "the link was replaced by a file"
        assert os.readlink(link) == (DATED if absolute else os.path.basename(DATED))
        assert (root / DATED.lstrip("/")).read_bytes() == b"new pair\n"
        assert (root / DATED.lstrip("/")).stat().st_mode & 0o777 == 0o600
        assert files.read(CURRENT) == b"new pair\n"
        assert sorted(p.name for p in link.parent.iterdir()) == sorted([link.name, os.path.basename(DATED)])
    finally:
        files.close()


def test_link_destinations_are_node_paths():
    assert link_destination(CURRENT, DATED) == DATED
    assert link_destination(CURRENT, "kubelet-client-x.pem") == "/var/lib/kubelet/pki/kubelet-client-x.pem"
    assert link_destination(CURRENT, "../other/x.pem") == "/var/lib/kubelet/other/x.pem"
