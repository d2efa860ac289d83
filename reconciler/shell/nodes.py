"""Reaching a node's files: the transport seam between careconcile and the nodes.

A transport reads, writes and removes files by their absolute path on the node. ``local``
maps them under a root directory (the sandbox's node directories, or "/" on the node
itself); ``ssh`` (:mod:`reconciler.shell.ssh`) does the same over SFTP, with one reused
connection per node. Restarting a component is a write of its manifest, so files are all
a transport needs.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable, Protocol

from reconciler._files import atomic_write
from reconciler.core.spec import NodeSpec
from reconciler.errors import NodeUnreachableError
from reconciler.shell.fleet import map_bounded

# How many nodes of one cluster are connected to, checked or read at once.
NODE_PARALLELISM = 8


class NodeFiles(Protocol):
    node: str

    def describe(self) -> str: ...

    def check(self) -> None:
        """Raise NodeUnreachableError when the node's files cannot be reached at all."""

    def read(self, path: str) -> bytes | None:
        """The file's bytes, None when it does not exist."""

    def mode(self, path: str) -> int | None: ...

    def write(self, path: str, content: bytes, mode: int) -> None:
        """Replace the file atomically: a reader sees the old bytes or the new, never half."""

    def remove(self, path: str) -> None: ...

    def remove_directory(self, path: str) -> None:
        """Remove a directory careconcile made, once it is empty; a non-empty one stays."""

    def close(self) -> None:
        """Let go of any connection; a later call opens it again."""


class LocalNodeFiles:
    def __init__(self, node: str, root: str) -> None:
        self.node = node
        self.root = Path(root)

    def describe(self) -> str:
        return f"node {self.node} (local root {self.root})"

    def _where(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def check(self) -> None:
        if not self.root.is_dir():
            raise NodeUnreachableError(f"{self.describe()}: the root directory does not exist",
                                       hint="check spec.clusters[].nodes[].access.local.root")

    def read(self, path: str) -> bytes | None:
        try:
            return self._where(path).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NodeUnreachableError(f"{self.describe()}: cannot read {path}: {exc.strerror}") from exc

    def mode(self, path: str) -> int | None:
        try:
            return self._where(path).stat().st_mode & 0o777
        except FileNotFoundError:
            return None

    def write(self, path: str, content: bytes, mode: int) -> None:
        try:
            atomic_write(self._where(path), content, mode)
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

    def remove_directory(self, path: str) -> None:
        try:
            os.rmdir(self._where(path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise NodeUnreachableError(f"{self.describe()}: cannot remove {path}: {exc.strerror}") from exc


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
