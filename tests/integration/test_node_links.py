"""A write through a symbolic link replaces the file the link points to and keeps the link,
over both transports: kubeadm nodes keep kubelet-client-current.pem as a link, and the
kubelet stops rotating its certificate if the link becomes a plain file. And no path
leaves the node's root: not by a '..' component, not through a link to a directory
elsewhere, not at the end of a chain of links too long to follow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.core.spec import NodeSpec
from reconciler.errors import NodePathError
from reconciler.shell.nodes import MAX_LINKS, link_destination, node_files
from reconciler.shell.sftp_pipeline import Pipeline

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
        for _ in range(2):  # the second batch reads the link ahead with the other paths it read
            with files.batch():
                assert files.read(CURRENT) == b"new pair\n"
                assert files.read(DATED) == b"new pair\n"
        assert sorted(p.name for p in link.parent.iterdir()) == sorted([link.name, os.path.basename(DATED)])
    finally:
        files.close()


def test_link_destinations_are_node_paths():
    assert link_destination(CURRENT, DATED) == DATED
    assert link_destination(CURRENT, "kubelet-client-x.pem") == "/var/lib/kubelet/pki/kubelet-client-x.pem"
    assert link_destination(CURRENT, "../other/x.pem") == "/var/lib/kubelet/other/x.pem"


# --- confined to the node's root -------------------------------------------------------

CA_CRT = "/etc/kubernetes/pki/ca.crt"
CA_KEY = "/etc/kubernetes/pki/ca.key"


def _outside(tmp_path: Path) -> Path:
    """A directory beside the node's root with a file in it, as an attacker would aim at."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "ca.crt").write_bytes(b"not the node's\n")
    return outside


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _refused(files, call, path: str) -> str:
    with pytest.raises(NodePathError) as caught:
        call()
    message = str(caught.value)
    assert "node n1" in message and path in message, message
    return message


def _every_call_refused(files, path: str) -> None:
    _refused(files, lambda: files.read(path), path)
    _refused(files, lambda: files.mode(path), path)
    _refused(files, lambda: files.write(path, b"-----BEGIN PRIVATE KEY-----\n", 0o600), path)
    _refused(files, lambda: files.remove(path), path)
    for _ in range(2):  # the second batch reads it ahead, together with the other paths it read
        with files.batch():
            _refused(files, lambda: files.read(path), path)
            _refused(files, lambda: files.read(path), path)


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_a_path_with_dotdot_is_refused_and_nothing_outside_changes(server, tmp_path, transport):
    outside = _outside(tmp_path)
    root = tmp_path / "node"
    (root / "etc/kubernetes/pki").mkdir(parents=True)
    files = _transports(server, root)[transport]
    before = _tree(tmp_path)
    assert "elsewhere/ca.crt" in before and outside.is_dir()
    try:
        for path in ("/../elsewhere/ca.crt", "/etc/kubernetes/pki/../../../../elsewhere/ca.crt", "/etc/../etc/x"):
            _every_call_refused(files, path)
    finally:
        files.close()
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("transport", ["local", "ssh"])
@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_a_directory_link_out_of_the_root_is_refused_and_nothing_is_written_there(server, tmp_path, transport, how):
    """``pki -> /elsewhere`` put ca.key there; a link above it (``etc/kubernetes``) too."""
    outside = _outside(tmp_path)
    root = tmp_path / "node"
    (root / "etc/kubernetes").mkdir(parents=True)
    os.symlink(str(outside) if how == "absolute" else "../../../elsewhere", root / "etc/kubernetes/pki")
    files = _transports(server, root)[transport]
    before = _tree(tmp_path)
    try:
        for path in (CA_CRT, CA_KEY, "/etc/kubernetes/pki/careconcile/ca.key"):
            message = _refused(files, lambda: files.write(path, b"-----BEGIN PRIVATE KEY-----\n", 0o600), path)
            assert str(outside) in message, message
        _every_call_refused(files, CA_CRT)
        # One level up: the whole etc/kubernetes is a link out of the root.
        os.unlink(root / "etc/kubernetes/pki")
        os.rmdir(root / "etc/kubernetes")
        os.symlink(str(tmp_path), root / "etc/kubernetes")
        (tmp_path / "pki").mkdir()
        before = _tree(tmp_path)
        _every_call_refused(files, CA_KEY)
    finally:
        files.close()
    assert _tree(tmp_path) == before
    assert not (outside / "ca.key").exists() and not (tmp_path / "pki/ca.key").exists()


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_a_directory_made_a_link_out_of_the_root_after_a_write_there_is_refused_and_nothing_stays_there(
        server, tmp_path, transport, monkeypatch):
    """Over SSH a write into a directory the connection found inside the root creates its
    temp file with the location's requests, before their answers. When the node has made
    that directory a link out of the root since, the write is refused, the empty temp file
    it created there is removed, and no byte reaches either side; the next write there waits
    for the answers before creating anything."""
    outside = _outside(tmp_path)
    root = tmp_path / "node"
    pki = root / "etc/kubernetes/pki"
    pki.mkdir(parents=True)
    created: list[str] = []
    create = Pipeline.create
    monkeypatch.setattr(Pipeline, "create", lambda pipe, path, mode: created.append(path) or create(pipe, path, mode))
    files = _transports(server, root)[transport]
    try:
        files.write(CA_CRT, b"the node's\n", 0o644)
        created.clear()  # that write's own create (the directory not known yet): not through the link
        os.rename(pki, root / "etc/kubernetes/pki.old")
        os.symlink(str(outside), pki)
        before = _tree(tmp_path)
        for _ in range(2):
            message = _refused(files, lambda: files.write(CA_KEY, b"-----BEGIN PRIVATE KEY-----\n", 0o600), CA_KEY)
            assert str(outside) in message, message
    finally:
        files.close()
    assert _tree(tmp_path) == before
    assert not (outside / "ca.key").exists() and sorted(p.name for p in outside.iterdir()) == ["ca.crt"]
    if transport == "ssh":  # the case this is about: a temp file was created through the link
        assert len(created) == 1 and created[0].startswith(str(pki / ".ca.key.careconcile-")), created


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_a_directory_link_inside_the_root_still_works(server, tmp_path, transport):
    root = tmp_path / "node"
    (root / "etc/kubernetes").mkdir(parents=True)
    (root / "data/pki").mkdir(parents=True)
    os.symlink("../../data/pki", root / "etc/kubernetes/pki")  # relative, inside the root
    files = _transports(server, root)[transport]
    try:
        files.write(CA_KEY, b"-----BEGIN PRIVATE KEY-----\n", 0o600)
        assert files.read(CA_KEY) == b"-----BEGIN PRIVATE KEY-----\n"
        assert (root / "data/pki/ca.key").stat().st_mode & 0o777 == 0o600
        assert (root / "etc/kubernetes/pki").is_symlink()
    finally:
        files.close()


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_a_chain_of_links_too_long_to_follow_is_refused(server, tmp_path, transport):
    """Followed as node paths, links stay in the root; a chain longer than careconcile follows
    must not be handed to the OS, which reads an absolute link as this machine's path."""
    outside = _outside(tmp_path)
    root = tmp_path / "node"
    pki = root / "etc/kubernetes/pki"
    pki.mkdir(parents=True)
    names = [f"link-{index}" for index in range(MAX_LINKS + 1)]
    os.symlink(names[1], pki / "ca.crt")
    for name, following in zip(names[1:], names[2:]):
        os.symlink(following, pki / name)
    os.symlink(str(outside / "ca.crt"), pki / names[-1])  # the OS would follow it out of the root
    files = _transports(server, root)[transport]
    before = _tree(tmp_path)
    try:
        _refused(files, lambda: files.read(CA_CRT), CA_CRT)
        _refused(files, lambda: files.write(CA_CRT, b"new\n", 0o644), CA_CRT)
    finally:
        files.close()
    assert _tree(tmp_path) == before
