"""Reaching a node's files: the transport seam between careconcile and the nodes.

A transport reads, writes and removes files by their absolute path on the node. ``local``
maps them under a root directory (the sandbox's node directories, or "/" on the node
itself); ``ssh`` (:mod:`reconciler.shell.ssh`) does the same over SFTP, with one reused
connection per node.

Every path stays inside the node's root: a path with a ``..`` component is refused
(:func:`node_path`), a symbolic link to a file is followed as a path on the node, so
under the root (:func:`link_destination`), and the directory a file is in must really
be inside the root once the links on the way are resolved: a link to a directory
elsewhere (``etc/kubernetes/pki -> /elsewhere``) is refused (:func:`inside`). Each
refusal is a :class:`NodePathError` naming the node and the path. Restarting a static pod is a write of its manifest; the one command
a transport runs (``run``) is the restart of a node's kubelet, which is a systemd service
on a kubeadm node, not a static pod.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shlex
import subprocess
from pathlib import Path
from typing import ContextManager, Iterable, Protocol

from reconciler._files import atomic_write
from reconciler.core.spec import NodeSpec
from reconciler.errors import NodePathError, NodeUnreachableError
from reconciler.shell.fleet import map_bounded

# How many nodes of one cluster are connected to and checked at once, and how many local
# nodes are read at once (system calls, bound by the CPU).
NODE_PARALLELISM = 8
# How many nodes reached over the network are read (observed) or written (by the executor)
# at once, on connections already open: their calls mostly wait for round trips. Connecting
# stays at NODE_PARALLELISM: opening 51 nodes on the sandbox's one sshd took 6.9-7.0 s 8 at
# a time and 7.4-7.9 s 16 at a time (key exchanges and sshd's sessions cost CPU), while
# reading them 20 ms away took 0.77 s instead of 1.10 s (benchmarks/ssh_nodes.py, see
# docs/performance.md). A connection that dropped is opened again by the call that needs
# it, so then up to this many at once.
REMOTE_NODE_PARALLELISM = 16


class NodeFiles(Protocol):
    node: str
    # Whether each call waits for a network round trip (ssh): the executor then writes the
    # files of several such nodes at once. Local calls are system calls, bound by the CPU.
    remote: bool

    @property
    def place(self) -> tuple[str, ...]:
        """Where the files are: two node entries with the same place reach the same files."""

    def abort(self) -> None:
        """From another thread, while a call may be under way: drop the connection without
        waiting for it, so that the call fails at once (nothing to do for a local node)."""

    def describe(self) -> str: ...

    def check(self) -> None:
        """Raise NodeUnreachableError when the node's files cannot be reached at all."""

    def read(self, path: str) -> bytes | None:
        """The file's bytes, None when it does not exist."""

    def mode(self, path: str) -> int | None: ...

    def write(self, path: str, content: bytes, mode: int, *, keep_mode: bool = False) -> None:
        """Replace the file atomically: a reader sees the old bytes or the new, never half.
        With ``keep_mode``, a file that exists keeps its own mode and ``mode`` is a new
        file's (known from the write's own look at the file, so no call of :meth:`mode`
        first). Content with a private key gets at most 0600 either way."""

    def remove(self, path: str) -> None: ...

    def remove_directory(self, path: str) -> None:
        """Remove a directory careconcile made, once it is empty; a non-empty one stays."""

    def close(self) -> None:
        """Let go of any connection; a later call opens it again."""

    def batch(self, expected: Iterable[str] = ()) -> ContextManager[None]:
        """A block of reads that may be served from one read of many files at its start
        (over SSH: pipelined, see SSHNodeFiles.batch; ``expected`` are the files the block
        expects to read); locally each read is a read."""

    def run(self, argv: list[str], timeout: float) -> None:
        """Run a command on the node (the restart of its kubelet), waiting at most ``timeout``
        seconds; raise NodeUnreachableError naming the node, the command, its exit status
        and the last lines of its stderr when it fails."""


# How many lines of a failed command's stderr its error quotes.
STDERR_LINES = 5


def command_failed(where: str, argv: list[str], what: str, stderr: bytes = b"") -> NodeUnreachableError:
    """The error of a command that failed on a node: ``what`` says how (an exit status, a
    timeout), then the last lines of its stderr."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    tail = "; stderr: " + " | ".join(lines[-STDERR_LINES:]) if lines else ""
    return NodeUnreachableError(f"{where}: `{shlex.join(argv)}` {what}{tail}",
                                hint="check the node's kubeletRestart command in the spec, and the node itself")


# How many symbolic links a path may go through to its file: kubeadm's kubelet certificate
# is one; a longer chain, or a loop, is refused rather than left to the OS to follow.
MAX_LINKS = 8


def node_path(where: str, path: str) -> str:
    """``path`` as the absolute, normalised path on the node it names (``//`` and ``.``
    collapse). A ``..`` component is refused: no file careconcile manages has one, and
    normalised it would name another file than the one a reviewer reads. ``where`` (the
    transport's description) goes into the error, which names the node and the path."""
    if ".." in path.split("/"):
        raise NodePathError(f"{where}: refusing the path {path}: it has a '..' component; careconcile reads and "
                            "writes only the node's own paths, inside its root")
    return posixpath.normpath("/" + path.lstrip("/"))


def inside(real: str, root: str) -> bool:
    """Whether the resolved path ``real`` is ``root`` (resolved too) or under it."""
    return real == root or real.startswith(root.rstrip("/") + "/")


def outside_root(where: str, path: str, real: str, *, dangling: bool = False) -> NodePathError:
    """The error for a directory on the way to ``path`` that really is ``real``, outside the
    root, or (``dangling``) a link on the way to ``real``, which does not exist."""
    to = f"to {real}, which does not exist" if dangling else f"outside the node's root, to {real}"
    return NodePathError(f"{where}: refusing the path {path}: a symbolic link on the way to its directory "
                         f"{posixpath.dirname(path)} leads {to}",
                         hint="careconcile follows links to files, but never a link to a directory outside the "
                              "node's root; make the directory a real one, or a link inside the root")


def too_many_links(where: str, path: str) -> NodePathError:
    return NodePathError(f"{where}: refusing the path {path}: it goes through more than {MAX_LINKS} symbolic links "
                         "(a loop?)")


def link_destination(path: str, link: str) -> str:
    """The node path a symbolic link at ``path`` points to. kubeadm nodes keep the kubelet's
    client certificate as a link (kubelet-client-current.pem -> kubelet-client-<date>.pem),
    and the kubelet stops rotating it if the link becomes a file, so careconcile writes
    through such a link, never over it. An absolute link is a path on the node, so under
    the node's root."""
    return posixpath.normpath(link if link.startswith("/") else posixpath.join(posixpath.dirname(path), link))


class LocalNodeFiles:
    remote = False

    def __init__(self, node: str, root: str) -> None:
        self.node = node
        self.root = Path(root)

    def describe(self) -> str:
        return f"node {self.node} (local root {self.root})"

    @property
    def place(self) -> tuple[str, ...]:
        return ("local", str(self.root.resolve()))

    def abort(self) -> None:
        pass  # a local call is a system call: it ends on its own

    def _where(self, path: str) -> Path:
        """Where the node path ``path`` is on this machine, once its directory is known to be
        inside the root: the links on the way are resolved (a missing directory is made later,
        inside it) and must stay in the root; the last component is not resolved (a link to a
        file is followed as a node path by :meth:`_through_links`)."""
        path = node_path(self.describe(), path)
        where = self.root / path.lstrip("/")
        if path == "/" or str(self.root) == "/":  # nothing on the machine is outside "/"
            return where
        directory = where.parent
        while not directory.exists():  # it follows links: a link that leads nowhere does not exist
            if directory.is_symlink():
                raise outside_root(self.describe(), path, os.readlink(directory), dangling=True)
            directory = directory.parent
        real = os.path.realpath(directory)
        if not inside(real, os.path.realpath(self.root)):
            raise outside_root(self.describe(), path, real)
        return where

    def check(self) -> None:
        if not self.root.is_dir():
            raise NodeUnreachableError(f"{self.describe()}: the root directory does not exist",
                                       hint="check spec.clusters[].nodes[].access.local.root")

    def _through_links(self, path: str) -> Path:
        """Where ``path`` really is: links are followed inside the node's root."""
        asked = path
        for _ in range(MAX_LINKS + 1):  # a chain of links, but not a loop
            where = self._where(path)
            if not where.is_symlink():
                return where
            path = link_destination(path, os.readlink(where))
        raise too_many_links(self.describe(), asked)

    def read(self, path: str) -> bytes | None:
        try:
            return self._through_links(path).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NodeUnreachableError(f"{self.describe()}: cannot read {path}: {exc.strerror}") from exc

    def mode(self, path: str) -> int | None:
        try:
            return self._through_links(path).stat().st_mode & 0o777
        except FileNotFoundError:
            return None

    def write(self, path: str, content: bytes, mode: int, *, keep_mode: bool = False) -> None:
        try:
            existing = self._through_links(path)
            owner = None
            with contextlib.suppress(FileNotFoundError):
                info = existing.stat()
                owner = (info.st_uid, info.st_gid)
                if keep_mode:
                    mode = info.st_mode & 0o777 or mode  # as `mode(path) or mode` did
            atomic_write(existing, content, mode, owner=owner)
        except OSError as exc:
            raise NodeUnreachableError(f"{self.describe()}: cannot write {path}: {exc.strerror}") from exc

    def remove(self, path: str) -> None:
        try:
            os.unlink(self._where(path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise NodeUnreachableError(f"{self.describe()}: cannot remove {path}: {exc.strerror}") from exc

    def close(self) -> None:
        pass

    def batch(self, expected: Iterable[str] = ()) -> ContextManager[None]:
        return contextlib.nullcontext()

    def remove_directory(self, path: str) -> None:
        try:
            os.rmdir(self._where(path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise NodeUnreachableError(f"{self.describe()}: cannot remove {path}: {exc.strerror}") from exc

    def run(self, argv: list[str], timeout: float) -> None:
        """Run the command on this machine (careconcile runs on the node itself); the
        executor calls it only for a node whose spec names a command."""
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise command_failed(self.describe(), argv, f"did not finish within {timeout:.0f}s",
                                 exc.stderr or b"") from exc
        except OSError as exc:
            raise command_failed(self.describe(), argv, f"could not be started: {exc.strerror or exc}") from exc
        if result.returncode != 0:
            status = (f"was killed by signal {-result.returncode}" if result.returncode < 0
                      else f"failed with exit status {result.returncode}")
            raise command_failed(self.describe(), argv, status, result.stderr)


def _spec_path(value: str, base: Path) -> Path:
    """A path from the spec: '~' expands, a relative one is relative to the spec's directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def node_files(node: NodeSpec, base: Path | None = None) -> NodeFiles:
    """The transport of ``node``'s access; ``base`` is the spec file's directory, which
    relative paths in the access (an SSH key file, a known_hosts file) are relative to.
    Nothing is connected yet."""
    base = base if base is not None else Path.cwd()
    if node.access.local is not None:
        return LocalNodeFiles(node.name, node.access.local.root)
    if node.access.ssh is not None:
        from reconciler.shell.ssh import SSHNodeFiles  # paramiko is loaded only for nodes that need it

        ssh = node.access.ssh
        return SSHNodeFiles(node.name, ssh, key_file=_spec_path(ssh.key_file, base),
                            known_hosts_file=_spec_path(ssh.known_hosts_file, base) if ssh.known_hosts_file else None)
    raise NodeUnreachableError(f"node {node.name}: no supported access transport")


def open_nodes(nodes: Iterable[NodeSpec], base: Path | None = None, *, check: bool = True,
               parallelism: int = NODE_PARALLELISM) -> dict[str, NodeFiles]:
    """Every node's transport, by name, checked (connected, for SSH) ``parallelism`` at a
    time when ``check``. If a check fails, every transport is closed and the first failure,
    in the nodes' order, is raised."""
    opened = {node.name: node_files(node, base) for node in nodes}
    if check:
        try:
            map_bounded(lambda files: files.check(), opened.values(), parallelism)
        except BaseException:
            close_nodes(opened)
            raise
    return opened


def close_nodes(nodes: dict[str, NodeFiles]) -> None:
    for files in nodes.values():
        files.close()
